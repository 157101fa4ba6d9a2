//! Errors that cross a process boundary.
//!
//! Every dffs service attaches an [`ErrorDetail`] to the statuses it
//! returns: what kind of failure it is, the origin's HTTP status if the
//! origin failed, whether asking again may help, and what to do. Callers
//! decide on [`RemoteError::kind`], never on the text of a message, and the
//! one mapping from a failure to a gRPC code lives here ([`code_for`]).
//!
//! A status without the detail was made by a library (tonic, hyper): the
//! connection failed, a deadline passed, a message was too large. Its kind
//! is read from the gRPC code alone (see [`RemoteError::from_status`]).

pub use crate::proto::{ErrorDetail, ErrorKind};
use prost::Message;
use tonic::{Code, Status};

/// A failure as one side of a call reports it and the other receives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub kind: ErrorKind,
    /// The origin's HTTP status for [`ErrorKind::Origin`], else 0.
    pub http_status: u32,
    pub retryable: bool,
    pub message: String,
    /// What to do about it, when the failing side knows; may be empty.
    pub hint: String,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            http_status: 0,
            retryable: retryable_by_default(kind),
            message: message.into(),
            hint: String::new(),
        }
    }

    /// An origin failure; `http_status` is 0 when no response came.
    pub fn origin(http_status: u32, retryable: bool, message: impl Into<String>) -> RemoteError {
        RemoteError {
            http_status,
            retryable,
            ..RemoteError::new(ErrorKind::Origin, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> RemoteError {
        self.hint = hint.into();
        self
    }

    pub fn from_detail(detail: ErrorDetail) -> RemoteError {
        RemoteError {
            kind: detail.kind(),
            http_status: detail.http_status,
            retryable: detail.retryable,
            message: detail.message,
            hint: detail.hint,
        }
    }

    pub fn to_detail(&self) -> ErrorDetail {
        ErrorDetail {
            kind: self.kind as i32,
            http_status: self.http_status,
            retryable: self.retryable,
            message: self.message.clone(),
            hint: self.hint.clone(),
        }
    }

    /// The status to answer with: the code from [`code_for`], the message,
    /// and the detail.
    pub fn to_status(&self) -> Status {
        let detail = self.to_detail().encode_to_vec();
        Status::with_details(
            code_for(self.kind, self.http_status),
            self.message.clone(),
            detail.into(),
        )
    }

    /// Reads a status received from a call. With no detail attached, the
    /// status came from the transport or a library, and only its code is
    /// known: `Unavailable`, `Unknown` and `Cancelled` then mean that no
    /// answer came (the connection failed or broke).
    pub fn from_status(status: &Status) -> RemoteError {
        let detail = (!status.details().is_empty())
            .then(|| ErrorDetail::decode(status.details()).ok())
            .flatten();
        if let Some(detail) = detail {
            let mut error = RemoteError::from_detail(detail);
            if error.message.is_empty() {
                error.message = status.message().to_string();
            }
            return error;
        }
        let kind = match status.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled => ErrorKind::Transport,
            Code::DeadlineExceeded => ErrorKind::Timeout,
            Code::NotFound => ErrorKind::NotFound,
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::Invalid,
            Code::PermissionDenied | Code::Unauthenticated => ErrorKind::Denied,
            Code::ResourceExhausted | Code::Aborted => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        RemoteError::new(kind, status.message())
    }

    /// No answer came at all: the peer is down or the connection broke.
    pub fn is_transport(&self) -> bool {
        self.kind == ErrorKind::Transport
    }
}

impl From<RemoteError> for Status {
    fn from(e: RemoteError) -> Status {
        e.to_status()
    }
}

/// Whether a failure of this kind is worth retrying when nothing more is
/// known about it.
fn retryable_by_default(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Transport
            | ErrorKind::Timeout
            | ErrorKind::Unavailable
            | ErrorKind::Scheduler
            | ErrorKind::ShuttingDown
            | ErrorKind::UnknownHost
    )
}

/// The gRPC code a failure is answered with. For the origin, by its HTTP
/// status: gone or missing is `NotFound`, refused credentials
/// `PermissionDenied`, no answer or a server error `Unavailable` (try
/// again), any other client error `FailedPrecondition` (asking again the
/// same way will not help).
pub fn code_for(kind: ErrorKind, http_status: u32) -> Code {
    match kind {
        ErrorKind::Origin => match http_status {
            404 | 410 => Code::NotFound,
            401 | 403 | 407 => Code::PermissionDenied,
            0 | 500..=599 => Code::Unavailable,
            _ => Code::FailedPrecondition,
        },
        ErrorKind::Unspecified | ErrorKind::Internal => Code::Internal,
        ErrorKind::Transport
        | ErrorKind::Unavailable
        | ErrorKind::Scheduler
        | ErrorKind::ShuttingDown => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::DiskFull => Code::ResourceExhausted,
        ErrorKind::Disk => Code::Internal,
        ErrorKind::UnknownHost => Code::FailedPrecondition,
        ErrorKind::Denied => Code::PermissionDenied,
    }
}

/// Parses a task-id field of a request, refusing a malformed one with a
/// status that names it.
pub fn parse_task_id(text: &str) -> Result<crate::task::TaskId, Status> {
    text.parse()
        .map_err(|e: crate::task::TaskError| invalid(e.to_string()))
}

/// The status for a failure of `kind`, with its detail attached.
pub fn status(kind: ErrorKind, message: impl Into<String>) -> Status {
    RemoteError::new(kind, message).to_status()
}

/// Shorthand for the common case of answering a bad request.
pub fn invalid(message: impl Into<String>) -> Status {
    status(ErrorKind::Invalid, message)
}

/// A request with a deadline; the server sees it as `grpc-timeout`.
pub fn timed<T>(message: T, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_survives_the_trip_through_a_status() {
        let sent = RemoteError::origin(404, false, "origin returned 404 for u").with_hint("check");
        let status = sent.to_status();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(RemoteError::from_status(&status), sent);
    }

    #[test]
    fn a_bare_status_is_read_from_its_code() {
        let kind = |s: Status| RemoteError::from_status(&s).kind;
        // The text of the message plays no part.
        assert_eq!(kind(Status::unavailable("origin")), ErrorKind::Transport);
        assert_eq!(kind(Status::unknown("anything")), ErrorKind::Transport);
        assert_eq!(kind(Status::deadline_exceeded("x")), ErrorKind::Timeout);
        assert_eq!(kind(Status::not_found("x")), ErrorKind::NotFound);
        assert_eq!(kind(Status::internal("transport")), ErrorKind::Internal);
        // A service's own Unavailable is not a transport failure.
        let busy = RemoteError::new(ErrorKind::Unavailable, "busy").to_status();
        assert_eq!(busy.code(), Code::Unavailable);
        assert!(!RemoteError::from_status(&busy).is_transport());
    }

    #[test]
    fn origin_statuses_map_to_one_code_each() {
        let code = |http| code_for(ErrorKind::Origin, http);
        assert_eq!(code(404), Code::NotFound);
        assert_eq!(code(410), Code::NotFound);
        assert_eq!(code(401), Code::PermissionDenied);
        assert_eq!(code(403), Code::PermissionDenied);
        assert_eq!(code(0), Code::Unavailable);
        assert_eq!(code(503), Code::Unavailable);
        assert_eq!(code(416), Code::FailedPrecondition);
    }

    #[test]
    fn garbage_details_fall_back_to_the_code() {
        let status = Status::with_details(Code::NotFound, "gone", vec![0xff, 0xff].into());
        assert_eq!(RemoteError::from_status(&status).kind, ErrorKind::NotFound);
    }
}
