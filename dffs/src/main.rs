//! dffs: the lazy P2P filesystem. `/dfly/<task-id>` reads like an ordinary
//! file; only the pieces a reader touches are fetched from the cluster.
//!
//! The same binary is the mount helper: installed (or linked) as
//! `/sbin/mount.dffs`, it is what `mount -t dffs dffs /dfly -o socket=...`
//! runs.

use api::cli::{Failure, exit, fail};
use api::config::ConfigError;
use api::local::LocalClient;
use api::proto::TaskSource;
use clap::{Parser, Subcommand};
use dffs::mount::{self, MountArgs};
use dffs::options::BadMountArgs;
use std::ffi::OsString;
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
    /// Mount the filesystem (stays in the background unless -f); see
    /// `dffs mount --help` for its options.
    #[command(disable_help_flag = true)]
    Mount {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
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

fn main() {
    let invoked_as = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let result = if invoked_as == "mount.dffs" {
        mount_with(MountArgs::parse_helper(std::env::args_os().skip(1)))
    } else {
        match Cli::parse().command {
            Command::Add {
                url,
                socket,
                headers,
                tag,
                application,
            } => add(url, socket, headers, tag, application),
            Command::Mount { args } => mount_with(MountArgs::parse(args)),
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

fn mount_with(args: Result<MountArgs, BadMountArgs>) -> Result<(), Failure> {
    let args = match args {
        Ok(args) => args,
        // Help and clap's own errors print as clap prints them.
        Err(BadMountArgs::Parse(ConfigError::Clap(e))) => e.exit(),
        Err(e) => return Err(fail(exit::USAGE, e.to_string())),
    };
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
