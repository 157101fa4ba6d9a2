//! `--config FILE` for every daemon.
//!
//! A config file is TOML whose keys are the daemon's long flags
//! (`data-dir = "/x"` or `data_dir = "/x"` both mean `--data-dir /x`). The
//! file's keys are turned into flags placed *before* the real command line,
//! and clap is told that a later flag overrides an earlier one. So every
//! config key is a flag, every flag is a config key, and the precedence is
//! command line over file over built-in default, with no second list of
//! options to keep in sync.

use clap::{ArgAction, Parser};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("config file {path}: unknown key '{key}'; valid keys are: {valid}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        valid: String,
    },
    #[error("config file {path}: key '{key}' has a value of the wrong kind: {reason}")]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// Parses the process's command line into `T`, applying `--config FILE`
/// first. On error, prints it and exits as clap does (status 2).
pub fn parse_args<T: Parser>() -> T {
    parse_args_with(|c| c)
}

/// Like [`parse_args`], letting the caller adjust the command first, e.g.
/// so that `seed` can reuse peerd's flags with its own defaults.
pub fn parse_args_with<T: Parser>(adjust: impl FnOnce(clap::Command) -> clap::Command) -> T {
    match parse_with(std::env::args_os(), adjust) {
        Ok(args) => args,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// Like [`parse_args`], from an explicit argv (the first item is the program).
pub fn parse_from<T: Parser, I>(argv: I) -> Result<T, ConfigError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    parse_with(argv, |c| c)
}

fn parse_with<T: Parser, I>(
    argv: I,
    adjust: impl FnOnce(clap::Command) -> clap::Command,
) -> Result<T, ConfigError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let command = adjust(T::command()).args_override_self(true);
    let mut full = argv.iter().take(1).cloned().collect::<Vec<_>>();
    if let Some(path) = find_config_flag(&argv[1.min(argv.len())..]) {
        full.extend(config_as_flags(&command, &path, &argv[1..])?);
    }
    full.extend(argv.iter().skip(1).cloned());
    let matches = command.try_get_matches_from(full)?;
    Ok(T::from_arg_matches(&matches)?)
}

/// The value of `--config`, scanning like clap would but without parsing.
fn find_config_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        } else if text == "--config" {
            found = iter.next().map(PathBuf::from);
        } else if let Some(value) = text.strip_prefix("--config=") {
            found = Some(PathBuf::from(value));
        }
    }
    found
}

/// True when `arg` appears in `args`, by its long or short name. Such
/// keys are left out of the file's flags: for list-valued flags clap would
/// otherwise append the command line's values to the file's.
fn given_on_command_line(arg: &clap::Arg, args: &[OsString]) -> bool {
    let long = arg.get_long().map(|l| format!("--{l}"));
    let short = arg.get_short().map(|s| format!("-{s}"));
    args.iter().map(|a| a.to_string_lossy()).any(|a| {
        let name = a.split('=').next().unwrap_or_default();
        Some(name) == long.as_deref() || short.as_deref().is_some_and(|s| a.starts_with(s))
    })
}

fn config_as_flags(
    command: &clap::Command,
    path: &Path,
    cli_args: &[OsString],
) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                valid: valid_keys(command),
            })?;
        if given_on_command_line(arg, cli_args) {
            continue;
        }
        let bad = |reason: &str| ConfigError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            reason: reason.to_string(),
        };
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        match value {
            toml::Value::Boolean(on) if is_switch => {
                if *on {
                    flags.push(format!("--{long}").into());
                }
            }
            _ if is_switch => return Err(bad("expected true or false")),
            toml::Value::Array(items) => {
                let parts = items
                    .iter()
                    .map(scalar_text)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("arrays may hold only strings and numbers"))?;
                flags.push(format!("--{long}={}", parts.join(",")).into());
            }
            other => {
                let text = scalar_text(other).ok_or_else(|| bad("expected a string or number"))?;
                flags.push(format!("--{long}={text}").into());
            }
        }
    }
    Ok(flags)
}

fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn valid_keys(command: &clap::Command) -> String {
    command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help" | "version"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Parser, Debug)]
    struct Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "/var/lib/x")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        parents: u32,
        #[arg(long, value_delimiter = ',')]
        scheduler: Vec<String>,
        #[arg(long)]
        verbose: bool,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn parse(args: &[&str]) -> Result<Demo, ConfigError> {
        parse_from::<Demo, _>(std::iter::once("demo").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let d = parse(&[]).unwrap();
        assert_eq!(d.data_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(d.parents, 4);
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let f = file(
            "data_dir = \"/from/file\"\nparents = 9\nscheduler = [\"a:1\", \"b:2\"]\nverbose = true\n",
        );
        let path = f.path().to_str().unwrap();
        let d = parse(&["--config", path]).unwrap();
        assert_eq!(d.data_dir, PathBuf::from("/from/file"));
        assert_eq!(d.parents, 9);
        assert_eq!(d.scheduler, vec!["a:1", "b:2"]);
        assert!(d.verbose);
        let d = parse(&["--parents", "2", "--config", path, "--scheduler=c:3"]).unwrap();
        assert_eq!(d.parents, 2);
        assert_eq!(d.scheduler, vec!["c:3"]);
    }

    #[test]
    fn unknown_key_is_named_with_the_valid_ones() {
        let f = file("data-dirr = \"/x\"\n");
        let err = parse(&["--config", f.path().to_str().unwrap()]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown key 'data-dirr'"), "{text}");
        assert!(text.contains("data-dir"), "{text}");
    }

    #[test]
    fn bad_toml_and_missing_file_are_reported() {
        let f = file("data_dir = \n");
        let err = parse(&["--config", f.path().to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("not valid TOML"), "{err}");
        let err = parse(&["--config=/no/such/file.toml"]).unwrap_err();
        assert!(err.to_string().contains("/no/such/file.toml"), "{err}");
    }

    #[test]
    fn wrong_kinds_are_refused() {
        let f = file("verbose = \"yes\"\n");
        let err = parse(&["--config", f.path().to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("'verbose'"), "{err}");
        let f = file("parents = \"many\"\n");
        let err = parse(&["--config", f.path().to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("many"), "{err}");
    }
}
