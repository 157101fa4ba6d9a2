//! Mounting: daemonising, and running the FUSE session.
//!
//! `dffs mount DIR` and `mount -t dffs dffs DIR -o ...` (which runs
//! `mount.dffs`) end up here, their options parsed by `options`. Unless
//! asked to stay in the foreground, the process forks; the parent waits
//! until the child has mounted (or failed) and exits with that outcome, so
//! `mount` returns only once `/dfly` works.

use crate::fs::{DffsFs, FsSettings};
pub use crate::options::MountArgs;
use anyhow::Context;
use api::local::LocalClient;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

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
    if let Some(addr) = args.metrics_addr.0
        && let Err(e) = runtime.block_on(api::telemetry::serve_metrics(addr))
    {
        tracing::warn!("dffs runs without metrics: {e}");
    }
    let settings = FsSettings {
        timeout: Duration::from_secs_f64(args.timeout),
        readahead_max: args.readahead_mib << 20,
        whole_after: args.whole_after_mib,
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
