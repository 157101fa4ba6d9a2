//! Mounting: options, daemonising, and running the FUSE session.
//!
//! `dffs mount DIR` and `mount -t dffs dffs DIR -o ...` (which runs
//! `mount.dffs`) end up here. Unless asked to stay in the foreground, the
//! process forks; the parent waits until the child has mounted (or failed)
//! and exits with that outcome, so `mount` returns only once `/dfly` works.

use crate::fs::{DffsFs, Settings};
use crate::readahead::WholeAfter;
use anyhow::Context;
use api::local::LocalClient;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    pub socket: PathBuf,
    pub foreground: bool,
    /// Seconds a read may wait for its bytes before failing with EIO.
    pub timeout: f64,
    /// Largest read-ahead window, in MiB (0 turns read-ahead off).
    pub readahead_mib: u64,
    /// How far a reader reads in order from the start before the whole
    /// task is fetched in the background.
    pub whole_after: WholeAfter,
    /// The kernel's own read-ahead for the mount, in KiB.
    pub read_ahead_kb: u32,
    pub passthrough: bool,
    pub direct_io: bool,
    pub metrics_addr: Option<SocketAddr>,
    pub log_file: Option<PathBuf>,
}

impl MountArgs {
    pub fn new(mountpoint: PathBuf) -> MountArgs {
        MountArgs {
            mountpoint,
            socket: PathBuf::from("/run/dffs/peerd.sock"),
            foreground: false,
            timeout: 60.0,
            readahead_mib: 128,
            whole_after: WholeAfter::Auto,
            read_ahead_kb: 4096,
            passthrough: true,
            direct_io: true,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 65009))),
            log_file: None,
        }
    }

    /// Applies `-o` options (comma-separated `key=value` or flags). The
    /// generic options mount(8) passes along are accepted and ignored.
    pub fn apply_options(&mut self, options: &str) -> Result<(), String> {
        for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let bad = |what: &str| format!("mount option '{option}': {what}");
            match key {
                "socket" if !value.is_empty() => self.socket = PathBuf::from(value),
                "timeout" => {
                    self.timeout = value
                        .parse()
                        .ok()
                        .filter(|t: &f64| *t > 0.0)
                        .ok_or_else(|| bad("expected seconds > 0"))?
                }
                "readahead_mib" => {
                    self.readahead_mib =
                        value.parse().map_err(|_| bad("expected a number of MiB"))?
                }
                "whole_after_mib" => {
                    self.whole_after = WholeAfter::parse_mib(value)
                        .ok_or_else(|| bad("expected a number of MiB, 0 for never, or auto"))?
                }
                "read_ahead_kb" => {
                    self.read_ahead_kb =
                        value.parse().map_err(|_| bad("expected a number of KiB"))?
                }
                "passthrough" => self.passthrough = !matches!(value, "0" | "false" | "no" | "off"),
                "direct_io" => self.direct_io = !matches!(value, "0" | "false" | "no" | "off"),
                "nopassthrough" => self.passthrough = false,
                "metrics_addr" if value.is_empty() || value == "none" => self.metrics_addr = None,
                "metrics_addr" => {
                    self.metrics_addr =
                        Some(value.parse().map_err(|_| bad("expected IP:PORT or none"))?)
                }
                "log_file" if !value.is_empty() => self.log_file = Some(PathBuf::from(value)),
                "config" if !value.is_empty() => self.apply_config_file(Path::new(value))?,
                "foreground" => self.foreground = true,
                // Passed by mount(8) or fstab; meaningless or implied here.
                "rw"
                | "ro"
                | "defaults"
                | "auto"
                | "noauto"
                | "user"
                | "nouser"
                | "users"
                | "nofail"
                | "_netdev"
                | "nosuid"
                | "suid"
                | "nodev"
                | "dev"
                | "exec"
                | "noexec"
                | "atime"
                | "noatime"
                | "relatime"
                | "allow_other"
                | "default_permissions" => {}
                _ if key.starts_with("x-") || key.starts_with("comment=") => {}
                _ => {
                    return Err(bad(
                        "unknown option; known: socket, timeout, readahead_mib, whole_after_mib, read_ahead_kb, passthrough, direct_io, metrics_addr, log_file, config",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl MountArgs {
    /// Applies a TOML file whose keys are the mount options
    /// (`socket = "/run/dffs/peerd.sock"`, `timeout = 30`, ...).
    pub fn apply_config_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            format!(
                "config file {} is not valid TOML: {}",
                path.display(),
                e.message()
            )
        })?;
        for (key, value) in table {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Boolean(b) => (if b { "1" } else { "0" }).to_string(),
                other => other.to_string(),
            };
            let key = key.replace('-', "_");
            self.apply_options(&format!("{key}={value}"))
                .map_err(|e| format!("config file {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Mounts and serves until unmounted.
pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    let mountpoint = std::fs::canonicalize(&args.mountpoint).with_context(|| {
        format!(
            "mount point {} does not exist; create it first",
            args.mountpoint.display()
        )
    })?;
    anyhow::ensure!(
        mountpoint.is_dir(),
        "mount point {} is not a directory",
        mountpoint.display()
    );
    if args.foreground {
        api::telemetry::init_logging("info");
        return serve(&args, &mountpoint, None);
    }
    let (read_end, write_end) = pipe()?;
    // SAFETY: no threads exist yet (no runtime, no logging thread), so the
    // child may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("cannot fork the mount daemon"),
        0 => {
            drop(read_end);
            detach(args.log_file.as_deref())?;
            api::telemetry::init_logging("info");
            let result = serve(&args, &mountpoint, Some(write_end));
            if let Err(e) = &result {
                tracing::error!("dffs stopped: {e:#}");
            }
            result
        }
        _child => {
            drop(write_end);
            wait_for_child(read_end)
        }
    }
}

/// The parent side: one status byte from the child, then its message.
fn wait_for_child(read_end: OwnedFd) -> anyhow::Result<()> {
    let mut pipe = std::fs::File::from(read_end);
    let mut report = Vec::new();
    let _ = pipe.read_to_end(&mut report);
    match report.split_first() {
        Some((0, _)) => Ok(()),
        Some((_, message)) => anyhow::bail!("{}", String::from_utf8_lossy(message)),
        None => anyhow::bail!("the mount daemon exited before mounting; see its log"),
    }
}

fn serve(args: &MountArgs, mountpoint: &Path, report: Option<OwnedFd>) -> anyhow::Result<()> {
    let mut report = report.map(std::fs::File::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("dffs-io")
        .build()?;
    let _entered = runtime.enter();
    if let Some(addr) = args.metrics_addr
        && let Err(e) = runtime.block_on(api::telemetry::serve_metrics(addr))
    {
        tracing::warn!("dffs runs without metrics: {e}");
    }
    let settings = Settings {
        timeout: Duration::from_secs_f64(args.timeout),
        readahead_max: args.readahead_mib << 20,
        whole_after: args.whole_after,
        passthrough: args.passthrough,
        direct_io: args.direct_io,
        // SAFETY: getuid/getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
    };
    let fs = DffsFs::new(
        LocalClient::lazy(&args.socket),
        runtime.handle().clone(),
        settings,
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("dffs".into()),
        fuser::MountOption::Subtype("dffs".into()),
        fuser::MountOption::RO,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::DefaultPermissions,
    ];
    // Containers and other users read /dfly too.
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(2);
    config.clone_fd = true;
    let session = match fuser::Session::new(fs, mountpoint, &config) {
        Ok(session) => session,
        Err(e) => {
            let message = format!("cannot mount dffs at {}: {e}", mountpoint.display());
            if let Some(pipe) = report.as_mut() {
                let _ = pipe
                    .write_all(&[1])
                    .and_then(|()| pipe.write_all(message.as_bytes()));
            }
            anyhow::bail!(message);
        }
    };
    set_bdi_read_ahead(mountpoint, args.read_ahead_kb);
    tracing::info!(mountpoint = %mountpoint.display(), socket = %args.socket.display(), "dffs mounted");
    if let Some(mut pipe) = report.take() {
        let _ = pipe.write_all(&[0]);
    }
    session.run().context("the FUSE session failed")?;
    tracing::info!(mountpoint = %mountpoint.display(), "dffs unmounted");
    Ok(())
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Leaves the terminal behind: new session, stdin from /dev/null, output
/// to the log file (or nowhere).
fn detach(log_file: Option<&Path>) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };
    let null = std::fs::File::open("/dev/null")?;
    let log = match log_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?,
        None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
    };
    // SAFETY: dup2 onto the standard descriptors, which stay valid.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}

/// Raises the kernel's read-ahead for the mount, so sequential readers
/// send large requests. Failure only costs speed. The mount's device is
/// found in /proc/self/mountinfo: a stat of the mount point would wait for
/// this very process to answer it.
fn set_bdi_read_ahead(mountpoint: &Path, kb: u32) {
    let Some(device) = mount_device(mountpoint) else {
        tracing::info!(
            "cannot find {} in /proc/self/mountinfo; the kernel's default read-ahead applies",
            mountpoint.display()
        );
        return;
    };
    let path = format!("/sys/class/bdi/{device}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        tracing::info!("cannot set {path} to {kb}: {e}; the kernel's default read-ahead applies");
    }
}

/// "MAJOR:MINOR" of the last mount at `mountpoint`.
fn mount_device(mountpoint: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = mountpoint.to_str()?;
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&wanted)).then(|| fields.get(2).map(|d| d.to_string()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_mount_are_understood() {
        let mut args = MountArgs::new(PathBuf::from("/dfly"));
        args.apply_options(
            "rw,socket=/run/x.sock,timeout=2.5,nosuid,x-systemd.automount,metrics_addr=none",
        )
        .unwrap();
        assert_eq!(args.socket, PathBuf::from("/run/x.sock"));
        assert_eq!(args.timeout, 2.5);
        assert_eq!(args.metrics_addr, None);
        assert_eq!(args.whole_after, WholeAfter::Auto, "the default");
        args.apply_options("whole_after_mib=16").unwrap();
        assert_eq!(args.whole_after, WholeAfter::Bytes(16 << 20));
        args.apply_options("whole_after_mib=auto").unwrap();
        assert_eq!(args.whole_after, WholeAfter::Auto);
    }

    #[test]
    fn a_config_file_sets_options() {
        let dir = std::env::temp_dir().join(format!("dffs-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dffs.toml");
        std::fs::write(
            &file,
            "socket = \"/run/y.sock\"\ntimeout = 7\npassthrough = false\nwhole_after_mib = \"auto\"\n",
        )
        .unwrap();
        let mut args = MountArgs::new(PathBuf::from("/dfly"));
        args.apply_options(&format!("config={}", file.display()))
            .unwrap();
        assert_eq!(args.socket, PathBuf::from("/run/y.sock"));
        assert_eq!(args.timeout, 7.0);
        assert!(!args.passthrough);
        assert_eq!(args.whole_after, WholeAfter::Auto);
        std::fs::write(&file, "whole_after_mib = 3\n").unwrap();
        args.apply_options(&format!("config={}", file.display()))
            .unwrap();
        assert_eq!(args.whole_after, WholeAfter::Bytes(3 << 20));
        std::fs::write(&file, "speed = 1\n").unwrap();
        let err = args
            .apply_options(&format!("config={}", file.display()))
            .unwrap_err();
        assert!(
            err.contains("'speed=1'") && err.contains("dffs.toml"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_options_are_named() {
        let mut args = MountArgs::new(PathBuf::from("/dfly"));
        let err = args.apply_options("socket=/x,speed=fast").unwrap_err();
        assert!(err.contains("'speed=fast'"), "{err}");
        let err = args.apply_options("timeout=-1").unwrap_err();
        assert!(err.contains("'timeout=-1'"), "{err}");
        let err = args.apply_options("whole_after_mib=soon").unwrap_err();
        assert!(
            err.contains("'whole_after_mib=soon'") && err.contains("or auto"),
            "{err}"
        );
    }
}
