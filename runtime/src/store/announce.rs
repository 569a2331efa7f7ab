//! Config change announcements between server instances sharing a Redis (pub/sub on the channel
//! `<key_prefix>config`).
//!
//! When this instance loads a changed configuration it publishes its instance name; every other
//! instance that receives it re-reads its own config files at once (instead of waiting for a
//! file event that may never arrive on a shared network volume). Re-reading unchanged files
//! changes nothing, so announcements cannot loop. A lost Redis connection is retried every
//! [`RETRY`]; nothing here affects sessions.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreConfig};

/// The channel name, after the key prefix.
pub const CHANNEL: &str = "config";
/// Wait before reconnecting after the subscription fails.
pub const RETRY: Duration = Duration::from_secs(2);

/// Publishes the configs this instance loads (`configs`) and calls `on_announcement` with the
/// name of any other instance that announces one (the server passes
/// [`ConfigCheck::check_now`](crate::config::watch::ConfigCheck::check_now)), until `shutdown`.
pub fn spawn(
    store: &StoreConfig,
    instance: Arc<str>,
    mut configs: watch::Receiver<Arc<Config>>,
    on_announcement: impl Fn(&str) + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = redis::Client::open(store.url.as_str())?;
    let channel = format!("{}{CHANNEL}", store.key_prefix);

    // Publisher: every config this instance loads is announced.
    let (publisher, name, topic, stop) = (client.clone(), Arc::clone(&instance), channel.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = configs.changed() => if changed.is_err() { return },
            }
            let sent = async {
                let mut conn = publisher.get_multiplexed_async_connection().await?;
                redis::cmd("PUBLISH").arg(&topic).arg(name.as_ref()).query_async::<i64>(&mut conn).await
            };
            match tokio::time::timeout(RETRY, sent).await {
                Ok(Ok(receivers)) => {
                    tracing::info!("config change announced to {} other instance(s)", receivers.saturating_sub(1));
                }
                Ok(Err(e)) => tracing::warn!("cannot announce the config change: {e}"),
                Err(_) => tracing::warn!("cannot announce the config change: Redis did not answer"),
            }
        }
    });

    // Subscriber: another instance's announcement makes this one re-read its files.
    tokio::spawn(async move {
        loop {
            let listened = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let from: String = message.get_payload().unwrap_or_default();
                    if from != instance.as_ref() {
                        tracing::info!("instance {from} changed its config; re-reading the config files");
                        on_announcement(&from);
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = listened => match result {
                    Ok(()) => tracing::warn!("config announcements: the subscription ended; resubscribing"),
                    Err(e) => tracing::warn!("config announcements: {e}; retrying"),
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    });
    Ok(())
}
