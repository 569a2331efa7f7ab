//! ONNX Runtime initialisation.
//!
//! `ort` is built with `load-dynamic`: the runtime is a shared library (`libonnxruntime.so`,
//! fetched by `models/fetch.sh`) loaded once per process by [`init`]. Every model (Silero VAD,
//! local ASR or TTS) then starts from [`session_builder`], which carries the shared defaults.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

/// The loaded runtime: the library it came from and the process-wide environment.
struct Runtime {
    library: PathBuf,
    environment: Environment,
}

/// Set once by the first successful [`init`].
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Serialises [`init`] so two threads cannot both try to load the library.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Errors from loading ONNX Runtime or configuring a session.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The shared library is not there.
    #[error("ONNX Runtime library {0} not found: run models/fetch.sh")]
    LibraryMissing(PathBuf),
    /// The library exists but could not be loaded (wrong file, wrong version, missing symbols).
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load {
        /// The library path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// [`init`] was already called with another library; a process can load only one.
    #[error("ONNX Runtime is already loaded from {loaded}; cannot also load {requested}")]
    AlreadyLoaded {
        /// The library in use.
        loaded: PathBuf,
        /// The library asked for now.
        requested: PathBuf,
    },
    /// A session was requested before [`init`].
    #[error("ONNX Runtime is not initialised (call onnx::init with the path of libonnxruntime.so first)")]
    NotInitialised,
    /// Building a session failed. `ort`'s builder errors carry the builder and are not
    /// `Send + Sync`, so they are kept as text.
    #[error("ONNX Runtime session: {0}")]
    Session(String),
    /// Any other ONNX Runtime error.
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
}

/// Loads the ONNX Runtime shared library at `library` and creates the process-wide environment.
///
/// Idempotent: a second call with the same path is `Ok` and does nothing. A call with another
/// path after a successful one is [`OnnxError::AlreadyLoaded`]. A missing file is
/// [`OnnxError::LibraryMissing`], which names the file and says to run `models/fetch.sh`.
pub fn init(library: &Path) -> Result<(), OnnxError> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let requested = std::path::absolute(library).unwrap_or_else(|_| library.to_path_buf());
    // A missing file is named with its fix whether or not a library is loaded already.
    if !requested.is_file() {
        return Err(OnnxError::LibraryMissing(requested));
    }
    if let Some(runtime) = RUNTIME.get() {
        if same_file(&runtime.library, &requested) {
            return Ok(());
        }
        return Err(OnnxError::AlreadyLoaded { loaded: runtime.library.clone(), requested });
    }
    let load_err = |message: String| OnnxError::Load { path: requested.clone(), message };
    let environment = ort::init_from(&requested)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("xiaozhi-server")
        .with_telemetry(false)
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    tracing::info!(library = %requested.display(), "ONNX Runtime loaded");
    // Only this function sets RUNTIME, under INIT_LOCK, and it was empty above.
    let _ = RUNTIME.set(Runtime { library: requested, environment });
    Ok(())
}

/// Whether two paths name the same file (after resolving symlinks where possible).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Whether [`init`] has succeeded in this process.
pub fn is_initialised() -> bool {
    RUNTIME.get().is_some()
}

/// A session builder with the shared defaults: one intra-op thread, one inter-op thread and
/// graph optimisation level 3 (the models are small; one thread each keeps many sessions
/// from fighting over the cores).
///
/// Fails with [`OnnxError::NotInitialised`] before [`init`] (instead of letting `ort` try, and
/// panic, to load a library from its default location).
pub fn session_builder() -> Result<SessionBuilder, OnnxError> {
    let runtime = RUNTIME.get().ok_or(OnnxError::NotInitialised)?;
    let session_err = |e: ort::Error<SessionBuilder>| OnnxError::Session(e.to_string());
    Session::builder(&runtime.environment)?
        .with_intra_threads(1)
        .map_err(session_err)?
        .with_inter_threads(1)
        .map_err(session_err)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(session_err)
}

/// The library shipped in the repository (`models/lib/libonnxruntime.so`), for tests.
#[cfg(test)]
pub(crate) fn test_library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/lib/libonnxruntime.so")
}

/// Initialises ONNX Runtime from [`test_library`], panicking with a hint if it is missing.
#[cfg(test)]
pub(crate) fn init_for_tests() {
    let lib = test_library();
    assert!(lib.is_file(), "{} is missing: run models/fetch.sh", lib.display());
    if let Err(e) = init(&lib) {
        panic!("ONNX Runtime init failed ({e}): run models/fetch.sh");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_the_file_and_the_fix() {
        let missing = Path::new("/nonexistent/dir/libonnxruntime.so");
        // Before and after the real library is loaded (tests share the process), a missing path
        // is an error that names the file and the fix.
        for _ in 0..2 {
            let err = init(missing).unwrap_err();
            assert!(matches!(err, OnnxError::LibraryMissing(_)), "{err:?}");
            let err = err.to_string();
            assert!(err.contains("/nonexistent/dir/libonnxruntime.so"), "{err}");
            assert!(err.contains("run models/fetch.sh"), "{err}");
            init_for_tests();
        }
    }

    #[test]
    fn init_is_idempotent_and_builds_sessions() {
        init_for_tests();
        init(&test_library()).expect("second init with the same path is Ok");
        // Through the symlink's target too.
        let target = test_library().canonicalize().unwrap();
        init(&target).expect("same file through another path is Ok");
        let other = std::env::temp_dir().join("not-the-runtime.so");
        std::fs::write(&other, b"x").unwrap();
        assert!(matches!(init(&other), Err(OnnxError::AlreadyLoaded { .. })));
        let _ = std::fs::remove_file(&other);
        let builder = session_builder().expect("builder");
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/silero_vad.onnx");
        assert!(model.is_file(), "{} is missing: run models/fetch.sh", model.display());
        let mut builder = builder;
        let session = builder.commit_from_file(&model).expect("session");
        assert!(session.inputs().iter().any(|i| i.name() == "input"));
    }
}
