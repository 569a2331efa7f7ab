//! A private `mosquitto` broker (the Debian package; `tests/run.sh` installs it) on a free
//! loopback port, for the MQTT fleet tests. Stopped with SIGTERM, then SIGKILL after a grace
//! period, when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `mosquitto`.
pub struct Mosquitto {
    /// The loopback port it listens on.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` on a free port: anonymous clients allowed (loopback only), no
    /// persistence; waits until it listens.
    pub fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\n"),
        )?;
        let mut command = Command::new("mosquitto");
        command.arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
        let child = command.spawn().context("cannot run mosquitto (apt-get install mosquitto; tests/run.sh does)")?;
        let broker = Self { port, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(broker);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("mosquitto did not listen on port {port} within 10 s")
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
