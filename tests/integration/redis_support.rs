//! A throw-away `redis-server` (Debian's package, installed by `bash .ci/test`) for the
//! fleet-mode tests: on a free loopback port, in a temporary directory, without
//! persistence, so a restart comes back empty as after a crash.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::agent_support::{free_port, wait_for};

pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.spawn();
        redis
    }

    /// Starts the server (again: empty, as after a crash without persistence).
    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install Debian's `redis-server` (bash .ci/test installs it)")
            });
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for(
            "redis-server to accept connections",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(&addr).is_ok(),
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli -p PORT ARGS`: its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
