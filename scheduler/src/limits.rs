//! Bounds on what a request may carry. Every field a host sends is kept in
//! the scheduler's memory for as long as the task lives, so none may be
//! larger than it needs to be; the message size limit alone (4 MiB) would
//! let one host make the scheduler keep megabytes per call.

use api::error::invalid;
use api::proto::{TaskMeta, TaskSource};
use tonic::Status;

/// Host names, tags, applications, validators.
pub const MAX_NAME: usize = 1024;
/// URLs, as browsers and most servers bound them.
pub const MAX_URL: usize = 8192;

/// The start of `text`, for messages about text too long to show whole.
pub fn shown(text: &str) -> String {
    text.chars().take(80).collect()
}

pub fn check_len(field: &str, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max {
        return Err(invalid(format!(
            "{field} is {} bytes long; at most {max} are accepted",
            text.len()
        )));
    }
    Ok(())
}

pub fn check_source(source: &TaskSource) -> Result<(), Status> {
    check_len("the source URL", &source.url, MAX_URL)?;
    check_len("the tag", &source.tag, MAX_NAME)?;
    check_len("the application", &source.application, MAX_NAME)
}

/// Sizes of metadata; its layout is checked where it is used
/// (`api::piece::Layout::new` bounds the piece count).
pub fn check_meta(meta: &TaskMeta) -> Result<(), Status> {
    if let Some(source) = &meta.source {
        check_source(source)?;
    }
    check_len("the ETag", &meta.etag, MAX_NAME)?;
    check_len("Last-Modified", &meta.last_modified, MAX_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_fields_are_refused_with_their_name_and_size() {
        let long = "x".repeat(MAX_URL + 1);
        let source = TaskSource {
            url: long.clone(),
            ..Default::default()
        };
        let err = check_source(&source).unwrap_err();
        assert!(
            err.message().contains("the source URL"),
            "{}",
            err.message()
        );
        assert!(err.message().contains(&(MAX_URL + 1).to_string()));
        let meta = TaskMeta {
            etag: long,
            ..Default::default()
        };
        assert!(check_meta(&meta).unwrap_err().message().contains("ETag"));
        assert_eq!(shown(&"é".repeat(200)).chars().count(), 80);
    }
}
