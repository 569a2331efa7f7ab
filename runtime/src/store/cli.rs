//! `xiaozhi-server data …`: export and import what the store holds about a device (JSON, see
//! [`DeviceExport`]), list the devices it knows, and find the instance holding a device. It opens
//! the store the configuration names, so it works beside a running server (the embedded SQLite
//! file allows several processes; Redis is shared anyway).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use super::{DeviceExport, device_instance, export_device, import_device};
use crate::config::{self, ConfigSource};

/// What `xiaozhi-server data` does.
#[derive(Debug, Clone, Subcommand)]
pub enum DataCommand {
    /// Print (or write to `--out`) a device's memory and chat history as JSON.
    Export {
        /// The device id (MAC address).
        device_id: String,
        /// Write the JSON to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Store a device's memory and history from an export (a file, or `-` for stdin); the
    /// history replaces the stored one, memory values replace those with the same key.
    Import {
        /// The export file.
        file: PathBuf,
        /// Import under this device id instead of the one in the file (moving a user to a new device).
        #[arg(long)]
        device_id: Option<String>,
    },
    /// List the devices the store holds memory or history for.
    Devices,
    /// Print the server instance that holds the device's connection now, if any.
    Locate {
        /// The device id.
        device_id: String,
    },
}

/// Runs a `data` subcommand against the store of the configuration in `source`.
///
/// # Errors
/// The configuration or the store cannot be opened, or the file is not an export.
pub async fn run(command: DataCommand, source: &ConfigSource, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let config = config::load(source)?.config;
    let store = super::open(&config.store, data_dir).await.context("opening the store")?;
    match command {
        DataCommand::Export { device_id, out } => {
            let export = export_device(store.as_ref(), &device_id).await?;
            let json = serde_json::to_string_pretty(&export)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "exported {} memory value(s) and {} history message(s) of {device_id} to {}",
                        export.kv.values().map(|v| v.len()).sum::<usize>(),
                        export.history.len(),
                        path.display()
                    );
                }
                None => println!("{json}"),
            }
        }
        DataCommand::Import { file, device_id } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let mut export: DeviceExport =
                serde_json::from_str(&text).with_context(|| format!("{} is not a device export", file.display()))?;
            if let Some(device_id) = device_id {
                export.device_id = device_id;
            }
            import_device(store.as_ref(), &export, config.store.history_limit).await?;
            eprintln!("imported {} history message(s) for {}", export.history.len(), export.device_id);
        }
        DataCommand::Devices => {
            for device in super::known_devices(store.as_ref()).await? {
                println!("{device}");
            }
        }
        DataCommand::Locate { device_id } => match device_instance(store.as_ref(), &device_id).await? {
            Some(instance) => println!("{instance}"),
            None => anyhow::bail!("no instance holds {device_id} now"),
        },
    }
    Ok(())
}
