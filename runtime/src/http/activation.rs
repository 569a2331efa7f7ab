//! Device activation: which devices are bound, and the 6-digit codes of those waiting.
//!
//! With `activation.enabled`, the OTA answer of a device that is not bound carries an `activation`
//! section with a code; the device shows and speaks it and polls `/xiaozhi/ota/activate` until the
//! owner runs `xiaozhi-server bind <code>`, which moves the device from `pending` to `bound`.
//!
//! The state is `<data_dir>/activation.json`:
//! `{"bound":{device_id:{"bound_at":ts}},"pending":{code:{"device_id","created":ts}}}` (Unix
//! seconds). It is small, so it is read on every request and rewritten whole, atomically (a
//! temporary file in the same directory, then a rename), so readers never see a half-written file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Name of the state file inside the data directory.
pub const FILE_NAME: &str = "activation.json";

/// Serializes read-modify-write cycles of the state file inside this process. OTA checks of
/// several devices run concurrently (on blocking threads); without this, two of them could read
/// the same state, each add its own code, and the second rename would drop the first code. The
/// lock does not cover other processes: a `bind` run from the CLI at the very moment a device gets
/// a new code can drop that code, and the device is then simply given a fresh one on its next check.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// Attempts at drawing a code not already pending before giving up.
const CODE_ATTEMPTS: usize = 1000;

/// Why the activation state could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// Reading or writing the state file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state file is not the expected JSON.
    #[error("{} is not valid activation state: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// `bind` was given a code that no device is waiting with.
    #[error("no device is waiting with activation code {0:?} (the code is shown on the device after its OTA check)")]
    UnknownCode(String),
    /// Every code drawn was already pending (a million devices waiting).
    #[error("could not find a free activation code")]
    NoFreeCode,
}

/// A bound device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundDevice {
    /// When it was bound (Unix seconds).
    pub bound_at: u64,
}

/// A device waiting to be bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCode {
    /// The device (its `Device-Id`, the MAC address).
    pub device_id: String,
    /// When the code was created (Unix seconds).
    pub created: u64,
}

/// The whole activation state, as stored in `activation.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bindings {
    /// Bound devices by device id.
    pub bound: BTreeMap<String, BoundDevice>,
    /// Waiting devices by their 6-digit code.
    pub pending: BTreeMap<String, PendingCode>,
}

impl Bindings {
    /// The state file of `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Reads the state of `data_dir`; a missing file is the empty state.
    pub fn load(data_dir: &Path) -> Result<Self, ActivationError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ActivationError::Io { path, source }),
        };
        serde_json::from_slice(&text).map_err(|e| ActivationError::Corrupt { path, message: e.to_string() })
    }

    /// Writes the state of `data_dir` atomically, creating the directory if needed.
    pub fn save(&self, data_dir: &Path) -> Result<(), ActivationError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ActivationError::Io { path, source }
        };
        std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| ActivationError::Corrupt { path: path.clone(), message: e.to_string() })?;
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        });
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(ActivationError::Io { path: tmp, source });
        }
        std::fs::rename(&tmp, &path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            ActivationError::Io { path: path.clone(), source }
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    // The guarded data is `()`, so a panic elsewhere cannot leave it inconsistent.
    WRITE_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether `device_id` is bound. An unreadable state file counts as "not bound" (and is logged),
/// so a broken file keeps devices in activation rather than letting them in.
pub fn is_bound(data_dir: &Path, device_id: &str) -> bool {
    match Bindings::load(data_dir) {
        Ok(b) => b.bound.contains_key(device_id),
        Err(e) => {
            tracing::error!("activation state unreadable: {e}");
            false
        }
    }
}

/// The activation code of `device_id`: its pending code if it has one, otherwise a new random
/// 6-digit code, unique among pending codes, which is stored. The code stays the same until the
/// device is bound.
pub fn pending_code(data_dir: &Path, device_id: &str) -> Result<String, ActivationError> {
    let _guard = lock();
    let mut bindings = Bindings::load(data_dir)?;
    if let Some(code) = bindings.pending.iter().find(|(_, p)| p.device_id == device_id).map(|(code, _)| code) {
        return Ok(code.clone());
    }
    let code = (0..CODE_ATTEMPTS)
        .map(|_| format!("{:06}", rand::random_range(0..1_000_000u32)))
        .find(|code| !bindings.pending.contains_key(code))
        .ok_or(ActivationError::NoFreeCode)?;
    bindings.pending.insert(code.clone(), PendingCode { device_id: device_id.to_string(), created: now_secs() });
    bindings.save(data_dir)?;
    Ok(code)
}

/// Binds the device waiting with `code` and returns its device id. Any other code pending for the
/// same device is dropped.
pub fn bind(data_dir: &Path, code: &str) -> Result<String, ActivationError> {
    let code = code.trim();
    let _guard = lock();
    let mut bindings = Bindings::load(data_dir)?;
    let pending = bindings.pending.remove(code).ok_or_else(|| ActivationError::UnknownCode(code.to_string()))?;
    bindings.pending.retain(|_, p| p.device_id != pending.device_id);
    bindings.bound.insert(pending.device_id.clone(), BoundDevice { bound_at: now_secs() });
    bindings.save(data_dir)?;
    Ok(pending.device_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_stable_until_bound() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(!is_bound(&data, "aa:bb"));
        let code = pending_code(&data, "aa:bb").unwrap();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(pending_code(&data, "aa:bb").unwrap(), code);
        let other = pending_code(&data, "cc:dd").unwrap();
        assert_ne!(other, code);

        assert_eq!(bind(&data, &format!(" {code}\n")).unwrap(), "aa:bb");
        assert!(is_bound(&data, "aa:bb"));
        assert!(!is_bound(&data, "cc:dd"));
        let state = Bindings::load(&data).unwrap();
        assert!(!state.pending.contains_key(&code));
        assert_eq!(state.pending[&other].device_id, "cc:dd");
        assert!(state.bound["aa:bb"].bound_at > 0);
    }

    #[test]
    fn file_has_the_documented_shape() {
        let dir = tempfile::tempdir().unwrap();
        let code = pending_code(dir.path(), "aa:bb").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(v["pending"][&code]["device_id"], "aa:bb");
        assert!(v["pending"][&code]["created"].is_u64());
        assert!(v["bound"].as_object().unwrap().is_empty());
        bind(dir.path(), &code).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join(FILE_NAME)).unwrap()).unwrap();
        assert!(v["bound"]["aa:bb"]["bound_at"].is_u64());
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unknown_code_and_corrupt_file_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = bind(dir.path(), "123456").unwrap_err();
        assert!(matches!(err, ActivationError::UnknownCode(ref c) if c == "123456"));
        assert!(err.to_string().contains("123456"));
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        assert!(matches!(pending_code(dir.path(), "aa"), Err(ActivationError::Corrupt { .. })));
        assert!(!is_bound(dir.path(), "aa"));
    }

    #[test]
    fn concurrent_requests_keep_every_code() {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let data = dir.path().to_path_buf();
                std::thread::spawn(move || pending_code(&data, &format!("dev{i}")).unwrap())
            })
            .collect();
        let codes: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let state = Bindings::load(dir.path()).unwrap();
        assert_eq!(state.pending.len(), 16);
        for (i, code) in codes.iter().enumerate() {
            assert_eq!(state.pending[code].device_id, format!("dev{i}"));
        }
    }
}
