//! Engine errors. They are cloneable because one failed piece fetch may
//! have many waiters, and each gets the same error.

use crate::origin::OriginError;
use tonic::{Code, Status};

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

    /// Rebuilds an error that crossed the scheduler as a gRPC status.
    pub fn from_scheduler(status: &Status) -> EngineError {
        let message = status.message().to_string();
        // Origin failures found by another host arrive with the origin's
        // own wording ("origin returned 404 ...", "cannot reach origin ...").
        let from_origin =
            message.starts_with("origin") || message.starts_with("cannot reach origin");
        let origin = |http_status| EngineError::Origin {
            http_status,
            retryable: status.code() == Code::Unavailable,
            message: message.clone(),
        };
        match status.code() {
            Code::NotFound if from_origin => origin(404),
            Code::PermissionDenied if from_origin => origin(403),
            _ if from_origin => origin(0),
            Code::NotFound => EngineError::NotFound(message),
            Code::InvalidArgument => EngineError::Invalid(message),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                EngineError::Scheduler(message)
            }
            _ => EngineError::Unavailable(message),
        }
    }

    /// The status dfget and dffs receive.
    pub fn to_status(&self) -> Status {
        let code = match self {
            EngineError::Origin { http_status, .. } => match http_status {
                404 | 410 => Code::NotFound,
                401 | 403 => Code::PermissionDenied,
                _ => Code::Unavailable,
            },
            EngineError::NotFound(_) => Code::NotFound,
            EngineError::Invalid(_) => Code::InvalidArgument,
            EngineError::DiskFull(_) => Code::ResourceExhausted,
            EngineError::Disk(_) => Code::Internal,
            EngineError::Scheduler(_) | EngineError::Unavailable(_) | EngineError::ShuttingDown => {
                Code::Unavailable
            }
        };
        Status::new(code, self.to_string())
    }
}
