//! Test support (not used by the server itself): a private `redis-server` on a free loopback
//! port, which tests can stop and restart to simulate an outage. `tests/run.sh` installs
//! `redis-server` from Debian.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A `redis-server` child process; killed when dropped.
pub struct RedisServer {
    /// The loopback port it listens on.
    pub port: u16,
    dir: tempfile_dir::Dir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port (no persistence) and waits until it answers.
    ///
    /// # Errors
    /// `redis-server` is not installed or does not come up within 10 s.
    pub fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self { port, dir: tempfile_dir::Dir::new()?, child: None };
        server.restart()?;
        Ok(server)
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the process (an outage); [`RedisServer::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port (empty: it keeps nothing) and waits for it.
    ///
    /// # Errors
    /// It does not come up within 10 s.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run redis-server (install it: apt-get install redis-server; tests/run.sh does)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not listen on port {} within 10 s", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scratch directory removed on drop (the server's `--dir`).
mod tempfile_dir {
    use super::PathBuf;

    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new() -> std::io::Result<Self> {
            let path = std::env::temp_dir().join(format!("xiaozhi-redis-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
