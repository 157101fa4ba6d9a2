//! Mount options: one definition, three spellings.
//!
//! Every option is a long flag of [`MountArgs`] (`dffs mount DIR
//! --timeout 30`), a mount option (`mount -t dffs dffs DIR -o timeout=30`,
//! fstab), and a key of the `--config` TOML file (`timeout = 30`). Mount
//! options are turned into flags, and the whole command line is parsed by
//! `api::config`, so the three cannot drift apart and there is no second
//! list of options to keep. Precedence: the config file, then flags, then
//! `-o`.

use crate::readahead::WholeAfter;
use clap::{CommandFactory, Parser};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(name = "dffs mount", about = "Mount dffs at MOUNTPOINT")]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    /// TOML file whose keys are these options; flags and -o win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// peerd's Unix socket.
    #[arg(long, default_value = "/run/dffs/peerd.sock")]
    pub socket: PathBuf,
    /// Stay in the foreground, logging to stderr.
    #[arg(short, long)]
    pub foreground: bool,
    /// Seconds a read may wait for its bytes before failing with EIO.
    #[arg(long, default_value_t = 60.0, value_parser = positive_seconds)]
    pub timeout: f64,
    /// Largest read-ahead window for sequential readers, in MiB, 0 for none.
    #[arg(long, default_value_t = 128)]
    pub readahead_mib: u64,
    /// Fetch the whole task in the background once a reader has read this
    /// many MiB in order from the start: a number, 0 for never, or auto
    /// (1/64 of the task, 2 to 8 MiB).
    #[arg(long, default_value = "auto", value_parser = parse_whole_after)]
    pub whole_after_mib: WholeAfter,
    /// The kernel's own read-ahead for the mount, in KiB.
    #[arg(long, default_value_t = 4096)]
    pub read_ahead_kb: u32,
    /// Serve complete tasks by FUSE passthrough when the kernel offers it.
    #[arg(long, default_value = "true", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub passthrough: bool,
    /// Serve incomplete files with direct I/O, bypassing the page cache.
    #[arg(long, default_value = "true", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub direct_io: bool,
    /// Prometheus metrics at http://ADDR/metrics, "none" to disable.
    #[arg(long, default_value = "127.0.0.1:65009", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Where a background mount logs.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// More options, comma-separated, as with mount -o.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// Why mount arguments were refused.
#[derive(Debug, thiserror::Error)]
pub enum BadMountArgs {
    /// From clap: a bad flag or value, or a request for help.
    #[error(transparent)]
    Parse(#[from] api::config::ConfigError),
    #[error("{0}")]
    Option(String),
}

/// Where metrics are served, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// Options mount(8) and fstab pass along that mean nothing here (or are
/// implied: a dffs mount is always read-only, nosuid and nodev).
const GENERIC_MOUNT_OPTIONS: &[&str] = &[
    "rw",
    "ro",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "allow_other",
    "default_permissions",
];

impl MountArgs {
    /// Parses `dffs mount` arguments (everything after `mount`).
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<MountArgs, BadMountArgs> {
        let mut argv: Vec<OsString> = vec!["dffs mount".into()];
        let mut options = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let text = arg.to_string_lossy().into_owned();
            if text == "-o" {
                options.push(args.next().map(|v| v.to_string_lossy().into_owned()));
            } else if let Some(joined) = text.strip_prefix("-o") {
                options.push(Some(joined.to_string()));
            } else if text == "--no-passthrough" {
                // The flag of earlier releases.
                argv.push("--passthrough=false".into());
            } else {
                argv.push(arg);
            }
        }
        for list in options {
            let list = list.ok_or_else(|| {
                BadMountArgs::Option("-o needs a comma-separated list of options".into())
            })?;
            argv.extend(option_flags(&list).map_err(BadMountArgs::Option)?);
        }
        Ok(api::config::parse_from::<MountArgs, _>(argv)?)
    }

    /// Parses what mount(8) passes `mount.dffs`: `SPEC DIR [-sfnv] [-o
    /// OPTIONS]`. The source is unused, and -s, -f, -n, -v (sloppy, fake,
    /// no-mtab, verbose) are accepted and ignored.
    pub fn parse_helper(
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<MountArgs, BadMountArgs> {
        let mut args: Vec<OsString> = args.into_iter().collect();
        if args.len() < 2 {
            let usage = "usage: mount.dffs dffs MOUNTPOINT [-o OPTIONS]";
            return Err(BadMountArgs::Option(usage.into()));
        }
        args.remove(0);
        args.retain(|a| !matches!(a.to_str(), Some("-s" | "-f" | "-n" | "-v")));
        MountArgs::parse(args)
    }
}

/// The flags one `-o` list stands for.
fn option_flags(list: &str) -> Result<Vec<OsString>, String> {
    let command = MountArgs::command();
    let mut flags = Vec::new();
    for option in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        if GENERIC_MOUNT_OPTIONS.contains(&key) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        let (key, value) = match key {
            "nopassthrough" => ("passthrough", "false"),
            _ => (key, value),
        };
        let long = key.replace('_', "-");
        let known = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "help");
        let Some(arg) = known else {
            return Err(format!(
                "mount option '{option}': unknown option; known: {}",
                known_options(&command)
            ));
        };
        let takes_value = arg.get_action().takes_values();
        match (takes_value, value.is_empty()) {
            (true, true) => return Err(format!("mount option '{option}': a value is needed")),
            (true, false) => flags.push(format!("--{long}={value}").into()),
            (false, true) => flags.push(format!("--{long}").into()),
            (false, false) => {
                return Err(format!("mount option '{option}': takes no value"));
            }
        }
    }
    Ok(flags)
}

fn known_options(command: &clap::Command) -> String {
    command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(|l| l.replace('-', "_"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn positive_seconds(value: &str) -> Result<f64, String> {
    value
        .parse()
        .ok()
        .filter(|t: &f64| *t > 0.0 && t.is_finite())
        .ok_or_else(|| format!("'{value}' is not a number of seconds > 0"))
}

fn parse_whole_after(value: &str) -> Result<WholeAfter, String> {
    WholeAfter::parse_mib(value)
        .ok_or_else(|| format!("'{value}' is not a number of MiB, 0 for never, or auto"))
}

fn parse_switch(value: &str) -> Result<bool, String> {
    match value {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "'{value}' is not on or off (1/0, true/false, yes/no)"
        )),
    }
}

fn parse_metrics_addr(value: &str) -> Result<MetricsAddr, String> {
    if value.is_empty() || value == "none" {
        return Ok(MetricsAddr(None));
    }
    value
        .parse()
        .map(|addr| MetricsAddr(Some(addr)))
        .map_err(|_| format!("'{value}' is neither IP:PORT nor none"))
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
