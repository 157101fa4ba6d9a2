//! Helpers for the end-to-end tests: start real daemons and a real origin
//! as child processes on loopback, each with its own ports, sockets and
//! directories, and tear them down when the test ends.
//!
//! The binaries must be built first (`cargo build --workspace --bins`);
//! they are looked up next to the test executable.

pub mod fuse;
pub mod hostile;
pub mod origin;
pub mod tamper;

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use origin::Origin;

/// Path of a workspace binary, built into the same target directory as the
/// running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} is missing; run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// Ports each test process picks from (see `free_port`).
const PORT_BLOCK: u16 = 40;
/// Blocks between 10000 and 30000, below Linux's ephemeral range.
const PORT_BLOCKS: u32 = 500;

/// A free TCP port on loopback for a daemon to listen on.
///
/// A port the kernel hands out for port 0 comes from the ephemeral range,
/// and may be handed again to some other test's outgoing connection before
/// the daemon binds it (CI once saw a seed fail to start that way). Ports
/// below that range are never handed out on their own, so each test
/// process takes its own block of them, chosen by pid, and skips any port
/// that is in use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let block = 10_000 + (std::process::id() % PORT_BLOCKS) as u16 * PORT_BLOCK;
    for _ in 0..PORT_BLOCK {
        let port = block + NEXT.fetch_add(1, Ordering::Relaxed) % PORT_BLOCK;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Writes `size` random bytes to `path` and returns their SHA-256 (hex).
/// The bytes come from the kernel, which is fast even in a debug build.
pub fn write_random_file(path: &Path, size: usize) -> String {
    let mut random = File::open("/dev/urandom").expect("open /dev/urandom");
    let mut file = File::create(path).expect("create random file");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        random.read_exact(&mut buf[..n]).expect("read /dev/urandom");
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).expect("write random file");
        left -= n;
    }
    hex::encode(hasher.finalize())
}

/// The SHA-256 (hex) of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> String {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Polls `check` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Daemon {
        let out = File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log handle");
        let child = command
            .env(
                "RUST_LOG",
                std::env::var("DFFS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Stops the process at once, like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// The log's last `lines` lines, leaving out backtrace frames so that
    /// the error above a long backtrace stays in view.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !is_backtrace_frame(l)).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// `   3: some::function` or `      at ./src/file.rs:12:5`.
fn is_backtrace_frame(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.len() < line.len()
        && (trimmed.starts_with("at ")
            || trimmed
                .split_once(": ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        }
        self.kill();
    }
}

fn start_scheduler(args: &[String], log: &Path, addr: &str) -> Daemon {
    let mut command = Command::new(bin("scheduler"));
    command.args(args);
    let scheduler = Daemon::spawn("scheduler", command, log.to_path_buf());
    wait_until("scheduler port", Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    scheduler
}

/// One peerd (or seed) with its own directory, socket and ports.
pub struct Peer {
    pub daemon: Daemon,
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub upload_port: u16,
    pub metrics_port: u16,
    args: Vec<String>,
    binary: &'static str,
}

impl Peer {
    fn command(binary: &str, args: &[String]) -> Command {
        let mut command = Command::new(bin(binary));
        command.args(args);
        command
    }

    /// Restarts the daemon with the same flags and directories.
    pub fn restart(&mut self) {
        self.daemon.kill();
        let log = self.dir.join(format!("{}.restarted.log", self.name));
        self.daemon = Daemon::spawn(&self.name, Self::command(self.binary, &self.args), log);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        wait_until(
            &format!("{} socket", self.name),
            Duration::from_secs(20),
            || std::os::unix::net::UnixStream::connect(&self.socket).is_ok(),
        );
    }

    /// Runs dfget against this peer.
    pub fn dfget(&self, url: &str, output: &Path, extra: &[&str]) -> Output {
        Command::new(bin("dfget"))
            .arg(url)
            .arg("-O")
            .arg(output)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--quiet")
            .args(extra)
            .output()
            .expect("run dfget")
    }

    /// Runs dfget into `name` in this peer's directory, asserting that it
    /// succeeds and that the output has the SHA-256 `expected`.
    pub fn dfget_verified(&self, url: &str, name: &str, expected: &str) -> PathBuf {
        let out = self.dir.join(name);
        let result = self.dfget(url, &out, &[]);
        assert!(
            result.status.success(),
            "dfget failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert_eq!(
            sha256_file(&out),
            expected,
            "{} differs from the origin",
            out.display()
        );
        out
    }

    /// One value of this daemon's Prometheus metrics, summed over labels
    /// that contain `labels` (e.g. `source="peer"`).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_at(self.metrics_port, name, labels)
    }

    /// Registers `url` with `dffs add` through this peer; returns the task-id.
    pub fn dffs_add(&self, url: &str) -> String {
        let out = Command::new(bin("dffs"))
            .args(["add", url, "--socket"])
            .arg(&self.socket)
            .output()
            .expect("run dffs add");
        assert!(
            out.status.success(),
            "dffs add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 task-id")
            .trim()
            .to_string()
    }
}

/// One Prometheus value from the metrics at 127.0.0.1:`port`, summed over
/// the series whose labels contain `labels` (e.g. `source="peer"`).
pub fn metric_at(port: u16, name: &str, labels: &str) -> f64 {
    let text = http_get(&format!("127.0.0.1:{port}"), "/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.0 GET, enough to read metrics and origin stats.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

/// A scheduler, optionally a seed, and any number of peerds, in one
/// temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub scheduler: Daemon,
    pub scheduler_addr: String,
    /// The scheduler's flags, for restarting it the same way.
    scheduler_args: Vec<String>,
    pub seed: Option<Peer>,
    pub peers: Vec<Peer>,
}

impl Cluster {
    pub fn start(with_seed: bool, peers: usize) -> Cluster {
        Self::start_with(with_seed, peers, &[])
    }

    /// Like [`Cluster::start`], passing `peer_args` to every peerd.
    pub fn start_with(with_seed: bool, peers: usize, peer_args: &[&str]) -> Cluster {
        Self::start_full(with_seed, peers, peer_args, &[])
    }

    /// Like [`Cluster::start_with`], also passing `scheduler_args`, which
    /// come after (and so override) the test defaults.
    pub fn start_full(
        with_seed: bool,
        peers: usize,
        peer_args: &[&str],
        scheduler_args: &[&str],
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let scheduler_addr = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            scheduler_addr.clone(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        args.extend(["--keepalive-seconds", "1", "--host-timeout-seconds", "5"].map(String::from));
        args.extend(scheduler_args.iter().map(|a| a.to_string()));
        let scheduler = start_scheduler(&args, &dir.path().join("scheduler.log"), &scheduler_addr);
        let mut cluster = Cluster {
            dir,
            scheduler,
            scheduler_addr,
            scheduler_args: args,
            seed: None,
            peers: Vec::new(),
        };
        if with_seed {
            cluster.seed = Some(cluster.spawn_peer("seed", "seed", &[]));
        }
        for i in 0..peers {
            let peer = cluster.spawn_peer("peerd", &format!("peer{i}"), peer_args);
            cluster.peers.push(peer);
        }
        cluster
    }

    /// Kills the scheduler (as a crash would) and starts a new one with the
    /// same flags, which knows nothing of the cluster.
    pub fn restart_scheduler(&mut self) {
        self.scheduler.kill();
        let log = self.dir.path().join("scheduler.restarted.log");
        self.scheduler = start_scheduler(&self.scheduler_args, &log, &self.scheduler_addr);
    }

    /// The origin's directory, created on first use.
    pub fn origin_root(&self) -> PathBuf {
        let root = self.dir.path().join("origin");
        std::fs::create_dir_all(&root).expect("origin dir");
        root
    }

    /// Writes `size` random bytes as `name` in the origin's directory and
    /// starts an origin (with `flags`) serving it; returns the origin and
    /// the file's SHA-256.
    pub fn serve_file(&self, name: &str, size: usize, flags: &[&str]) -> (Origin, String) {
        let root = self.origin_root();
        let digest = write_random_file(&root.join(name), size);
        (Origin::start(&root, flags), digest)
    }

    /// Starts one more peerd (or seed, with `binary = "seed"`).
    pub fn spawn_peer(&self, binary: &'static str, name: &str, extra: &[&str]) -> Peer {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("peer dir");
        let socket = dir.join("peerd.sock");
        let upload_port = free_port();
        let metrics_port = free_port();
        let mut args: Vec<String> = vec![
            "--scheduler".into(),
            self.scheduler_addr.clone(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--upload-addr".into(),
            format!("127.0.0.1:{upload_port}"),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let daemon = Daemon::spawn(
            name,
            Peer::command(binary, &args),
            dir.join(format!("{name}.log")),
        );
        let peer = Peer {
            daemon,
            name: name.to_string(),
            dir,
            socket,
            upload_port,
            metrics_port,
            args,
            binary,
        };
        peer.wait_ready();
        peer
    }
}
