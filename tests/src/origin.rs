//! The test origin (`dffs-test-origin`) as a child process.

use crate::{Daemon, bin, http_get};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Origin {
    pub daemon: Daemon,
    pub addr: String,
    pub root: PathBuf,
}

impl Origin {
    /// Serves `root` on a free loopback port; `extra` are origin flags such
    /// as `--ignore-range` or `--rate N`.
    pub fn start(root: &Path, extra: &[&str]) -> Origin {
        Self::start_on(root, "127.0.0.1:0", extra)
    }

    pub fn start_on(root: &Path, listen: &str, extra: &[&str]) -> Origin {
        let log = root.with_extension("origin.log");
        let mut command = Command::new(bin("dffs-test-origin"));
        command
            .arg("--root")
            .arg(root)
            .args(["--listen", listen])
            .args(extra);
        let mut daemon = Daemon::spawn("origin", command, log.clone());
        // The origin prints its address first; read it from the log.
        let addr = wait_for_line(&log, "listening on ", &mut daemon);
        Origin {
            daemon,
            addr,
            root: root.to_path_buf(),
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// Body bytes served so far.
    pub fn bytes_served(&self) -> u64 {
        self.stat("bytes_served")
    }

    /// Requests answered so far (HEAD included).
    pub fn requests(&self) -> u64 {
        self.stat("requests")
    }

    fn stat(&self, key: &str) -> u64 {
        let body = http_get(&self.addr, "/_stats").expect("origin stats");
        let json: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
        json[key].as_u64().expect("numeric stat")
    }
}

/// Waits for a line starting with `prefix` in `log` and returns the rest.
pub fn wait_for_line(log: &Path, prefix: &str, daemon: &mut Daemon) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(file) = std::fs::File::open(log) {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_string();
                }
            }
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!(
                "{} exited ({status}) before printing '{prefix}'",
                daemon.name
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never printed '{prefix}'",
            daemon.name
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
