//! Python tool servers for the MCP tests: a Python with PyPI packages, and child process groups
//! that die with the test.

use std::path::PathBuf;

/// A child process that leads its own process group (spawned with `process_group(0)`), killed
/// with the whole group when dropped, so no process a test starts outlives it.
pub struct Group(pub tokio::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        // Only a real child's own group: never a pid of 0 or 1 (which would name every process).
        if let Some(pid) = self.0.id().filter(|&pid| pid > 1) {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    }
}

impl Group {
    /// Spawns `command` with no stdio, as the leader of its own process group.
    pub fn spawn(command: &mut tokio::process::Command) -> anyhow::Result<Self> {
        use std::process::Stdio;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self(child))
    }
}

/// A Python that has `packages` installed: `XIAOZHI_MCP_PYTHON` when set (it must have them),
/// else a venv made in a temporary directory (returned, removed when dropped) and filled from
/// PyPI.
pub async fn python_with(packages: &[&str]) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    if let Ok(python) = std::env::var("XIAOZHI_MCP_PYTHON") {
        return Ok((PathBuf::from(python), None));
    }
    let dir = tempfile::tempdir()?;
    let venv = dir.path().join("venv");
    let status = tokio::process::Command::new("python3").arg("-m").arg("venv").arg(&venv).status().await?;
    anyhow::ensure!(status.success(), "python3 -m venv failed");
    let python = venv.join("bin/python");
    let status =
        tokio::process::Command::new(&python).args(["-m", "pip", "install", "--quiet"]).args(packages).status().await?;
    anyhow::ensure!(status.success(), "pip install {packages:?} failed");
    Ok((python, Some(dir)))
}

/// Whether `pid` is a live process whose command line mentions `needle` (so a test signals only
/// the process it started).
pub fn is_process_of(pid: u32, needle: &str) -> bool {
    pid > 1
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
}
