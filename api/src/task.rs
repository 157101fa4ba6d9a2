//! Task identity.
//!
//! A task is one remote object. Its id is the lower-case hex SHA-256 of the
//! normalised URL, the tag and the application, so every host computes the
//! same id for the same request without asking anyone, and the same URL with
//! another tag is another task.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Why a URL or task-id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaskError {
    #[error("invalid URL '{url}': {reason}")]
    BadUrl { url: String, reason: String },
    #[error("invalid task-id '{0}': expected 64 lower-case hex characters")]
    BadTaskId(String),
}

/// The 32-byte id of a task, shown as 64 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId([u8; 32]);

impl TaskId {
    /// The id of `url` with the given tag and application. The URL is
    /// normalised first (see [`normalize_url`]).
    pub fn from_source(url: &str, tag: &str, application: &str) -> Result<Self, TaskError> {
        let url = normalize_url(url)?;
        let mut hasher = Sha256::new();
        // Length prefixes keep ("a", "bc") and ("ab", "c") apart.
        for field in [url.as_str(), tag, application] {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        Ok(TaskId(hasher.finalize().into()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TaskId(bytes)
    }

    /// Two hex characters, used to fan task directories out on disk.
    pub fn shard(&self) -> String {
        hex::encode(&self.0[..1])
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({self})")
    }
}

impl FromStr for TaskId {
    type Err = TaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(TaskError::BadTaskId(s.to_string()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| TaskError::BadTaskId(s.to_string()))?;
        Ok(TaskId(bytes))
    }
}

/// Checks that `url` is an absolute http(s) URL and puts it in canonical
/// form: lower-case scheme and host, no default port, no fragment.
pub fn normalize_url(url: &str) -> Result<String, TaskError> {
    let bad = |reason: &str| TaskError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let mut parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// URLs are supported"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    parsed.set_fragment(None);
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_makes_equivalent_urls_one_task() {
        let a = TaskId::from_source("HTTP://Example.COM:80/a/b?x=1#frag", "", "").unwrap();
        let b = TaskId::from_source("http://example.com/a/b?x=1", "", "").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn tag_and_application_make_other_tasks() {
        let base = TaskId::from_source("http://h/f", "", "").unwrap();
        let tagged = TaskId::from_source("http://h/f", "v2", "").unwrap();
        let app = TaskId::from_source("http://h/f", "", "v2").unwrap();
        assert_ne!(base, tagged);
        assert_ne!(tagged, app);
    }

    #[test]
    fn bad_urls_are_named_in_the_error() {
        for url in ["ftp://h/f", "not a url", "/relative/path", "http://"] {
            let err = TaskId::from_source(url, "", "").unwrap_err();
            assert!(err.to_string().contains(url), "{err}");
        }
    }

    #[test]
    fn task_id_round_trips_through_text() {
        let id = TaskId::from_source("http://h/f", "", "").unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<TaskId>().unwrap(), id);
        assert!("ABC".parse::<TaskId>().is_err());
        assert!(text.to_uppercase().parse::<TaskId>().is_err());
    }
}
