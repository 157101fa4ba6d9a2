//! dffs: the lazy P2P filesystem. `/dfly/<task-id>` reads like an ordinary
//! file; only the pieces a reader touches are fetched from the cluster.
//!
//! The same binary is the mount helper: installed (or linked) as
//! `/sbin/mount.dffs`, it is what `mount -t dffs dffs /dfly -o socket=...`
//! runs.

use api::cli::{Failure, exit, fail};
use api::local::LocalClient;
use api::proto::TaskSource;
use clap::{Parser, Subcommand};
use dffs::mount::{self, MountArgs};
use dffs::readahead::WholeAfter;
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
    Mount(MountCli),
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

/// `dffs mount` flags. Each is also a mount option (`-o key=value`) and a
/// key of the `--config` file; unset flags leave the file's value.
#[derive(clap::Args, Debug)]
struct MountCli {
    mountpoint: PathBuf,
    /// peerd's Unix socket [default: /run/dffs/peerd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Stay in the foreground, logging to stderr.
    #[arg(short, long)]
    foreground: bool,
    /// Seconds a read may wait for its bytes before failing with EIO [default: 60].
    #[arg(long)]
    timeout: Option<f64>,
    /// Largest read-ahead window for sequential readers, in MiB, 0 for none [default: 128].
    #[arg(long)]
    readahead_mib: Option<u64>,
    /// Fetch the whole task in the background once a reader has read this
    /// many MiB in order from the start: a number, 0 for never, or auto
    /// (1/64 of the task, 2 to 8 MiB) [default: auto].
    #[arg(long, value_parser = parse_whole_after)]
    whole_after_mib: Option<WholeAfter>,
    /// Serve complete tasks through dffs even if the kernel offers passthrough.
    #[arg(long)]
    no_passthrough: bool,
    /// Prometheus metrics at http://ADDR/metrics, "none" to disable [default: 127.0.0.1:65009].
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Where a background mount logs.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// More options, comma-separated, as with mount -o.
    #[arg(short = 'o')]
    options: Option<String>,
    /// TOML file whose keys are the mount options; flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl MountCli {
    /// The options this command line sets, in the order they apply:
    /// the config file, then the flags, then -o.
    fn options(&self) -> Vec<String> {
        let mut options = Vec::new();
        if let Some(c) = &self.config {
            options.push(format!("config={}", c.display()));
        }
        if let Some(s) = &self.socket {
            options.push(format!("socket={}", s.display()));
        }
        if let Some(t) = self.timeout {
            options.push(format!("timeout={t}"));
        }
        if let Some(r) = self.readahead_mib {
            options.push(format!("readahead_mib={r}"));
        }
        if let Some(w) = self.whole_after_mib {
            options.push(format!("whole_after_mib={w}"));
        }
        if let Some(m) = &self.metrics_addr {
            options.push(format!("metrics_addr={m}"));
        }
        if let Some(l) = &self.log_file {
            options.push(format!("log_file={}", l.display()));
        }
        if self.no_passthrough {
            options.push("passthrough=0".into());
        }
        if self.foreground {
            options.push("foreground".into());
        }
        options.extend(self.options.iter().cloned());
        options
    }
}

fn parse_whole_after(value: &str) -> Result<WholeAfter, String> {
    WholeAfter::parse_mib(value)
        .ok_or_else(|| format!("'{value}' is not a number of MiB, 0 for never, or auto"))
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
            Command::Mount(cli) => {
                let mut args = MountArgs::new(cli.mountpoint.clone());
                cli.options()
                    .iter()
                    .try_for_each(|o| args.apply_options(o))
                    .map_err(|e| fail(exit::USAGE, e))
                    .and_then(|()| run_mount(args))
            }
        }
    };
    if let Err(failure) = result {
        exit_with(failure);
    }
}

fn exit_with(failure: Failure) -> ! {
    eprintln!("dffs: {}", failure.message);
    std::process::exit(failure.code)
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
    let headers = api::cli::parse_headers(&headers)?;
    let source = TaskSource {
        url: url.clone(),
        tag,
        application,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(exit::OTHER, e.to_string()))?;
    runtime.block_on(async {
        let peerd = LocalClient::connect(&socket)
            .await
            .map_err(|e| api::cli::peerd_unreachable(&socket, &e))?;
        let info = peerd
            .register(source, headers, Duration::from_secs(120))
            .await
            .map_err(|e| api::cli::from_remote(&e, &url))?;
        println!("{}", info.meta.unwrap_or_default().task_id);
        Ok(())
    })
}
