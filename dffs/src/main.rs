//! dffs: the lazy P2P filesystem. `/dfly/<task-id>` reads like an ordinary
//! file; only the pieces a reader touches are fetched from the cluster.
//!
//! The same binary is the mount helper: installed (or linked) as
//! `/sbin/mount.dffs`, it is what `mount -t dffs dffs /dfly -o socket=...`
//! runs.

mod client;
mod fs;
mod mount;
mod nodes;
mod readahead;

use api::cli::{Failure, exit, fail};
use api::proto::TaskSource;
use clap::{Parser, Subcommand};
use mount::MountArgs;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "dffs", version, about = "dffs: the lazy P2P filesystem")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount the filesystem (stays in the background unless -f).
    Mount {
        mountpoint: PathBuf,
        /// peerd's Unix socket.
        #[arg(long, default_value = "/run/dffs/peerd.sock")]
        socket: PathBuf,
        /// Stay in the foreground, logging to stderr.
        #[arg(short, long)]
        foreground: bool,
        /// Seconds a read may wait for its bytes before failing with EIO.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Largest read-ahead window for sequential readers, in MiB (0: off).
        #[arg(long, default_value_t = 128)]
        readahead_mib: u64,
        /// Serve complete tasks through dffs even if the kernel offers passthrough.
        #[arg(long)]
        no_passthrough: bool,
        /// Prometheus metrics at http://ADDR/metrics ("none" to disable).
        #[arg(long, default_value = "127.0.0.1:65009")]
        metrics_addr: String,
        /// Where a background mount logs.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// More options, comma-separated, as with mount -o.
        #[arg(short = 'o')]
        options: Option<String>,
    },
    /// Register a URL with the cluster without downloading it; prints its task-id.
    Add {
        url: String,
        #[arg(long, default_value = "/run/dffs/peerd.sock", env = "DFFS_SOCKET")]
        socket: PathBuf,
        /// Header sent to the origin, 'Name: value' (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        #[arg(long, default_value = "")]
        tag: String,
        #[arg(long, default_value = "")]
        application: String,
    },
}

/// `mount.dffs SPEC DIR [-sfnv] [-o OPTIONS]`, as mount(8) calls it.
#[derive(Parser, Debug)]
#[command(name = "mount.dffs")]
struct MountHelper {
    /// The source ("dffs"); unused.
    _spec: String,
    mountpoint: PathBuf,
    #[arg(short = 'o')]
    options: Option<String>,
    /// Sloppy, fake, no-mtab, verbose: accepted from mount(8), ignored.
    #[arg(short = 's', hide = true)]
    _sloppy: bool,
    #[arg(short = 'f', hide = true)]
    _fake: bool,
    #[arg(short = 'n', hide = true)]
    _no_mtab: bool,
    #[arg(short = 'v', hide = true)]
    _verbose: bool,
}

fn main() {
    let invoked_as = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let result = if invoked_as == "mount.dffs" {
        mount_helper(MountHelper::parse())
    } else {
        match Cli::parse().command {
            Command::Add {
                url,
                socket,
                headers,
                tag,
                application,
            } => add(url, socket, headers, tag, application),
            Command::Mount {
                mountpoint,
                socket,
                foreground,
                timeout,
                readahead_mib,
                no_passthrough,
                metrics_addr,
                log_file,
                options,
            } => {
                let mut args = MountArgs::new(mountpoint);
                args.socket = socket;
                args.foreground = foreground;
                args.timeout = timeout;
                args.readahead_mib = readahead_mib;
                args.passthrough = !no_passthrough;
                args.log_file = log_file;
                let mut extra = format!("metrics_addr={metrics_addr}");
                if let Some(o) = options {
                    extra = format!("{extra},{o}");
                }
                args.apply_options(&extra)
                    .map_err(|e| fail(exit::USAGE, e))
                    .and_then(|()| run_mount(args))
            }
        }
    };
    if let Err(failure) = result {
        eprintln!("dffs: {}", failure.message);
        std::process::exit(failure.code);
    }
}

fn mount_helper(helper: MountHelper) -> Result<(), Failure> {
    let mut args = MountArgs::new(helper.mountpoint);
    if let Some(options) = &helper.options {
        args.apply_options(options)
            .map_err(|e| fail(exit::USAGE, e))?;
    }
    run_mount(args)
}

fn run_mount(args: MountArgs) -> Result<(), Failure> {
    mount::mount(args).map_err(|e| fail(exit::OTHER, format!("{e:#}")))
}

fn add(
    url: String,
    socket: PathBuf,
    headers: Vec<String>,
    tag: String,
    application: String,
) -> Result<(), Failure> {
    api::task::TaskId::from_source(&url, &tag, &application)
        .map_err(|e| fail(exit::USAGE, e.to_string()))?;
    let source = TaskSource {
        url: url.clone(),
        headers: api::cli::parse_headers(&headers)?,
        tag,
        application,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(exit::OTHER, e.to_string()))?;
    runtime.block_on(async {
        api::uds::connect(&socket)
            .await
            .map_err(|e| api::cli::peerd_unreachable(&socket, &e))?;
        let peerd = client::Peerd::new(&socket);
        let info = peerd
            .register(source, Duration::from_secs(120))
            .await
            .map_err(|s| api::cli::from_status(&s, &url))?;
        println!("{}", info.meta.unwrap_or_default().task_id);
        Ok(())
    })
}
