//! Engine errors. They are cloneable because one failed piece fetch may
//! have many waiters, and each gets the same error.

use crate::origin::OriginError;
use api::error::{ErrorKind, RemoteError};
use tonic::Status;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The origin refused or failed; `http_status` is 0 when no response came.
    #[error("{message}")]
    Origin {
        http_status: u32,
        message: String,
        /// False when asking again cannot help (a 4xx, a changed object).
        retryable: bool,
    },
    #[error("the task is unknown: {0}")]
    NotFound(String),
    #[error("cannot reach the scheduler: {0}")]
    Scheduler(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "no space left on the device of peerd's data directory ({0}); free space or move --data-dir"
    )]
    DiskFull(String),
    #[error("peerd's cache failed: {0}")]
    Disk(String),
    #[error("peerd is shutting down")]
    ShuttingDown,
}

impl From<OriginError> for EngineError {
    fn from(e: OriginError) -> Self {
        let retryable = match &e {
            OriginError::Status { status, .. } => !status.is_client_error(),
            OriginError::Unreachable { .. } | OriginError::WrongRange { .. } => true,
            OriginError::Changed { .. }
            | OriginError::NoLength { .. }
            | OriginError::BadHeader { .. } => false,
        };
        EngineError::Origin {
            http_status: e.http_status(),
            message: e.to_string(),
            retryable,
        }
    }
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            EngineError::DiskFull(e.to_string())
        } else {
            EngineError::Disk(e.to_string())
        }
    }
}

impl From<crate::storage::StoreError> for EngineError {
    fn from(e: crate::storage::StoreError) -> Self {
        let full = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC));
        if full {
            EngineError::DiskFull(e.to_string())
        } else {
            EngineError::Disk(e.to_string())
        }
    }
}

impl EngineError {
    /// Whether another attempt might succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Origin { retryable, .. } => *retryable,
            EngineError::DiskFull(_)
            | EngineError::Disk(_)
            | EngineError::Invalid(_)
            | EngineError::NotFound(_) => false,
            EngineError::Scheduler(_) | EngineError::Unavailable(_) | EngineError::ShuttingDown => {
                true
            }
        }
    }

    /// Rebuilds an error that crossed the scheduler as a gRPC status, by
    /// the kind of failure it carries.
    pub fn from_scheduler(status: &Status) -> EngineError {
        EngineError::from_remote(RemoteError::from_status(status))
    }

    pub fn from_remote(error: RemoteError) -> EngineError {
        let message = error.message;
        match error.kind {
            ErrorKind::Origin => EngineError::Origin {
                http_status: error.http_status,
                message,
                retryable: error.retryable,
            },
            ErrorKind::NotFound => EngineError::NotFound(message),
            ErrorKind::Invalid => EngineError::Invalid(message),
            // No answer, or the scheduler's own answer that it is not there
            // for this host yet: the caller may degrade to the origin.
            ErrorKind::Transport | ErrorKind::Timeout | ErrorKind::Scheduler => {
                EngineError::Scheduler(message)
            }
            _ => EngineError::Unavailable(message),
        }
    }

    /// The error as it crosses to dfget and dffs.
    pub fn to_remote(&self) -> RemoteError {
        let message = self.to_string();
        match self {
            EngineError::Origin {
                http_status,
                retryable,
                ..
            } => RemoteError::origin(*http_status, *retryable, message),
            EngineError::NotFound(_) => RemoteError::new(ErrorKind::NotFound, message),
            EngineError::Invalid(_) => RemoteError::new(ErrorKind::Invalid, message),
            EngineError::DiskFull(_) => RemoteError::new(ErrorKind::DiskFull, message),
            EngineError::Disk(_) => RemoteError::new(ErrorKind::Disk, message),
            EngineError::Scheduler(_) => RemoteError::new(ErrorKind::Scheduler, message),
            EngineError::Unavailable(_) => RemoteError::new(ErrorKind::Unavailable, message),
            EngineError::ShuttingDown => RemoteError::new(ErrorKind::ShuttingDown, message),
        }
    }

    /// The status dfget and dffs receive.
    pub fn to_status(&self) -> Status {
        self.to_remote().to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_failure_keeps_its_http_status_across_the_scheduler() {
        let sent = RemoteError::origin(403, false, "origin returned 403 Forbidden for u");
        let got = EngineError::from_scheduler(&sent.to_status());
        assert!(matches!(
            got,
            EngineError::Origin {
                http_status: 403,
                retryable: false,
                ..
            }
        ));
        assert_eq!(got.to_status().code(), tonic::Code::PermissionDenied);
        assert_eq!(RemoteError::from_status(&got.to_status()).http_status, 403);
    }

    #[test]
    fn a_scheduler_that_does_not_answer_is_told_apart_from_one_that_refuses() {
        let gone = EngineError::from_scheduler(&Status::unavailable("connection refused"));
        assert!(matches!(gone, EngineError::Scheduler(_)));
        // Worded like an origin failure, but not one: the text decides nothing.
        let said = RemoteError::new(ErrorKind::Unavailable, "origin of the task is resolving");
        let got = EngineError::from_scheduler(&said.to_status());
        assert!(matches!(got, EngineError::Unavailable(_)));
    }
}
