//! A dffs mount as a child process (`dffs mount -f`), unmounted and
//! stopped when dropped.

use crate::{Daemon, Peer, bin, free_port, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct DffsMount {
    pub daemon: Daemon,
    pub dir: PathBuf,
    pub metrics_port: u16,
}

/// Whether `dir` is a mount point now.
pub fn is_mounted(dir: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = dir.to_string_lossy();
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_ref()))
}

impl DffsMount {
    /// Mounts dffs for `peer` at `dir` (created if needed); `extra` are
    /// more `dffs mount` flags such as `--timeout 3`.
    pub fn start(peer: &Peer, dir: &Path, extra: &[&str]) -> DffsMount {
        std::fs::create_dir_all(dir).expect("mount dir");
        let dir = std::fs::canonicalize(dir).expect("canonical mount dir");
        let metrics_port = free_port();
        let mut command = Command::new(bin("dffs"));
        command
            .arg("mount")
            .arg(&dir)
            .arg("--socket")
            .arg(&peer.socket)
            .arg("-f")
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra);
        let log = peer.dir.join(format!(
            "dffs-{}.log",
            dir.file_name().unwrap().to_string_lossy()
        ));
        let mut daemon = Daemon::spawn("dffs", command, log);
        wait_until("the dffs mount", Duration::from_secs(20), || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "dffs exited ({status}) before mounting:\n{}",
                    daemon.log_tail(20)
                );
            }
            is_mounted(&dir)
        });
        DffsMount {
            daemon,
            dir,
            metrics_port,
        }
    }

    pub fn path(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        crate::metric_at(self.metrics_port, name, labels)
    }
}

impl Drop for DffsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
