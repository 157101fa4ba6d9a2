//! What the command-line tools (dfget, `dffs add`) share: exit codes, the
//! `-H 'Name: value'` syntax, and turning peerd's errors into one line that
//! says what to do.

use crate::error::{ErrorKind, RemoteError};
use crate::proto::Header;

/// Exit codes, so scripts can tell failures apart.
pub mod exit {
    pub const OTHER: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PEERD_UNREACHABLE: i32 = 3;
    pub const ORIGIN: i32 = 4;
    pub const DIGEST_MISMATCH: i32 = 5;
    pub const OUTPUT: i32 = 6;
}

/// A failure: the exit code and one line for the user.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

pub fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Parses repeated `-H 'Name: value'` arguments.
pub fn parse_headers(raw: &[String]) -> Result<Vec<Header>, Failure> {
    raw.iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .filter(|(n, _)| !n.trim().is_empty())
                .ok_or_else(|| {
                    fail(
                        exit::USAGE,
                        format!("invalid header '{h}': expected 'Name: value'"),
                    )
                })?;
            Ok(Header {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
            })
        })
        .collect()
}

/// The failure for not reaching peerd's socket at all.
pub fn peerd_unreachable(socket: &std::path::Path, error: &tonic::transport::Error) -> Failure {
    let why = std::error::Error::source(error).map_or_else(|| error.to_string(), |s| s.to_string());
    fail(
        exit::PEERD_UNREACHABLE,
        format!(
            "cannot reach peerd at {} ({why}); is peerd running? Start it, or point --socket at its socket",
            socket.display()
        ),
    )
}

/// A status from peerd as one line with a hint of what to do, chosen by
/// the kind of failure it carries (see [`crate::error`]).
pub fn from_status(status: &tonic::Status, url: &str) -> Failure {
    from_remote(&RemoteError::from_status(status), url)
}

/// Like [`from_status`], for a failure already read.
pub fn from_remote(error: &RemoteError, url: &str) -> Failure {
    let message = error.message.as_str();
    let with_hint = |default: &str| {
        let hint = if error.hint.is_empty() {
            default
        } else {
            &error.hint
        };
        format!("{message}; {hint}")
    };
    match error.kind {
        ErrorKind::Origin => {
            let hint = match error.http_status {
                404 | 410 => "check the URL",
                401 | 403 | 407 => "check the credentials sent with -H",
                0 | 500..=599 => "check that the origin is up and reachable",
                _ => "check the URL and what the origin expects",
            };
            fail(exit::ORIGIN, with_hint(hint))
        }
        ErrorKind::NotFound => fail(exit::ORIGIN, with_hint("check the URL")),
        ErrorKind::Invalid => fail(exit::USAGE, message),
        ErrorKind::DiskFull => fail(exit::OUTPUT, message),
        ErrorKind::Transport => fail(
            exit::PEERD_UNREACHABLE,
            format!(
                "lost the connection to peerd while working on {url} ({message}); is peerd still running?"
            ),
        ),
        _ if error.hint.is_empty() => fail(exit::OTHER, format!("{url}: {message}")),
        _ => fail(exit::OTHER, format!("{url}: {message}; {}", error.hint)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_need_a_name_and_a_colon() {
        let ok = parse_headers(&["Authorization: Bearer a:b".into()]).unwrap();
        assert_eq!(ok[0].name, "Authorization");
        assert_eq!(ok[0].value, "Bearer a:b");
        for bad in ["no colon", ": no name"] {
            let err = parse_headers(&[bad.into()]).unwrap_err();
            assert_eq!(err.code, exit::USAGE);
            assert!(err.message.contains(bad));
        }
    }

    #[test]
    fn origin_errors_get_a_hint() {
        let origin = |http| RemoteError::origin(http, false, "origin said no").to_status();
        let f = from_status(&origin(404), "u");
        assert_eq!(f.code, exit::ORIGIN);
        assert!(f.message.ends_with("check the URL"));
        let f = from_status(&origin(403), "u");
        assert!(f.message.ends_with("check the credentials sent with -H"));
        // A 503 from the origin is not peerd going away, whatever the code.
        let f = from_status(&origin(503), "u");
        assert_eq!(f.code, exit::ORIGIN);
    }

    #[test]
    fn a_broken_connection_is_told_apart_from_an_answer() {
        let f = from_status(&tonic::Status::unavailable("h2 protocol error"), "u");
        assert_eq!(f.code, exit::PEERD_UNREACHABLE);
        let busy = RemoteError::new(ErrorKind::Unavailable, "try later").to_status();
        assert_eq!(from_status(&busy, "u").code, exit::OTHER);
        let full = RemoteError::new(ErrorKind::DiskFull, "no space left").to_status();
        assert_eq!(from_status(&full, "u").code, exit::OUTPUT);
    }
}
