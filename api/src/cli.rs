//! What the command-line tools (dfget, `dffs add`) share: exit codes, the
//! `-H 'Name: value'` syntax, and turning peerd's errors into one line that
//! says what to do.

use crate::proto::Header;
use tonic::Code;

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

/// A status from peerd as one line with a hint of what to do.
pub fn from_status(status: &tonic::Status, url: &str) -> Failure {
    let message = status.message();
    match status.code() {
        Code::NotFound => fail(exit::ORIGIN, format!("{message}; check the URL")),
        Code::PermissionDenied => fail(
            exit::ORIGIN,
            format!("{message}; check the credentials sent with -H"),
        ),
        Code::InvalidArgument => fail(exit::USAGE, message.to_string()),
        Code::ResourceExhausted => fail(exit::OUTPUT, message.to_string()),
        Code::Unavailable if message.contains("origin") => fail(
            exit::ORIGIN,
            format!("{message}; check that the origin is up and reachable"),
        ),
        Code::Unavailable | Code::Unknown
            if message.contains("transport") || message.contains("connect") =>
        {
            fail(
                exit::PEERD_UNREACHABLE,
                format!(
                    "lost the connection to peerd while working on {url} ({message}); is peerd still running?"
                ),
            )
        }
        _ => fail(exit::OTHER, format!("{url}: {message}")),
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
        let f = from_status(
            &tonic::Status::not_found("origin returned 404 Not Found for u"),
            "u",
        );
        assert_eq!(f.code, exit::ORIGIN);
        assert!(f.message.ends_with("check the URL"));
    }
}
