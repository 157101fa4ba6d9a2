//! The one client of peerd's local API (its Unix socket), used by dfget,
//! `dffs add`, the FUSE filesystem and, later, the snapshotter.
//!
//! Every call has a deadline. While peerd cannot be reached (it is down or
//! restarting) a call is tried again until its deadline, so a long-lived
//! caller such as a mount picks up a restarted peerd without being told.
//! Answers, including failures, are returned at once.

use crate::error::{ErrorKind, RemoteError, timed};
use crate::proto::peer_client::PeerClient;
use crate::proto::*;
use crate::task::TaskId;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;

/// Pause between attempts while peerd is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Largest answer accepted (a list of many tasks, a long progress message).
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Clone)]
pub struct LocalClient {
    client: PeerClient<Channel>,
    socket: PathBuf,
}

impl LocalClient {
    /// A client that dials on first use and redials after peerd restarts.
    pub fn lazy(socket: &Path) -> LocalClient {
        LocalClient::over(crate::transport::connect_local_lazy(socket), socket)
    }

    /// Connects now, failing at once when nothing listens on `socket`
    /// (see [`crate::cli::peerd_unreachable`] for the message to show).
    pub async fn connect(socket: &Path) -> Result<LocalClient, tonic::transport::Error> {
        Ok(LocalClient::over(
            crate::transport::connect_local(socket).await?,
            socket,
        ))
    }

    fn over(channel: Channel, socket: &Path) -> LocalClient {
        LocalClient {
            client: PeerClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
            socket: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Calls `f` until it answers or `timeout` passes, trying again only
    /// while peerd cannot be reached. `f` gets the time left, for the
    /// request's own deadline.
    async fn call<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, RemoteError>
    where
        F: Fn(PeerClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::time::timeout(left, f(self.client.clone(), left)).await;
            let failure = match attempt {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => RemoteError::from_status(&status),
                Err(_) => RemoteError::new(ErrorKind::Timeout, "peerd did not answer in time"),
            };
            let retry = failure.is_transport() && Instant::now() + RETRY_PAUSE < deadline;
            if !retry {
                return Err(self.no_answer(failure, started));
            }
            tracing::debug!(socket = %self.socket.display(), "peerd unreachable: {}", failure.message);
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Names the socket and the time spent in a failure that is peerd's
    /// silence rather than its answer.
    fn no_answer(&self, mut failure: RemoteError, started: Instant) -> RemoteError {
        if matches!(failure.kind, ErrorKind::Transport | ErrorKind::Timeout) {
            failure.message = format!(
                "no answer from peerd at {} within {:.1}s: {}",
                self.socket.display(),
                started.elapsed().as_secs_f64(),
                failure.message
            );
        }
        failure
    }

    /// A task's metadata and local state, asking the scheduler if peerd
    /// does not know it.
    pub async fn stat(&self, id: TaskId, timeout: Duration) -> Result<TaskInfo, RemoteError> {
        let req = StatLocalTaskRequest {
            task_id: id.to_string(),
        };
        self.call(timeout, |mut c, t| {
            let req = timed(req.clone(), t);
            async move { c.stat_task(req).await }
        })
        .await
    }

    /// The tasks peerd holds.
    pub async fn list(&self, timeout: Duration) -> Result<Vec<TaskInfo>, RemoteError> {
        self.call(timeout, |mut c, t| async move {
            c.list_tasks(timed(Empty {}, t)).await
        })
        .await
        .map(|r| r.tasks)
    }

    /// Makes `length` bytes from `offset` present in peerd's cache.
    pub async fn ensure(
        &self,
        id: TaskId,
        offset: u64,
        length: u64,
        priority: Priority,
        timeout: Duration,
    ) -> Result<EnsureRangeResponse, RemoteError> {
        let req = EnsureRangeRequest {
            task_id: id.to_string(),
            offset,
            length,
            priority: priority as i32,
        };
        self.call(timeout, |mut c, t| {
            let req = timed(req.clone(), t);
            async move { c.ensure_range(req).await }
        })
        .await
    }

    /// Starts a download of the whole task and returns its progress stream.
    /// Only starting it is bounded by `timeout`: the download itself takes
    /// as long as the task's size and the network make it.
    pub async fn download(
        &self,
        request: DownloadRequest,
        timeout: Duration,
    ) -> Result<tonic::Streaming<DownloadProgress>, RemoteError> {
        self.call(timeout, |mut c, _| {
            let req = request.clone();
            async move { c.download(req).await }
        })
        .await
    }

    /// Registers a URL without downloading it (`dffs add`).
    pub async fn register(
        &self,
        source: TaskSource,
        headers: Vec<Header>,
        timeout: Duration,
    ) -> Result<TaskInfo, RemoteError> {
        let req = RegisterTaskRequest {
            source: Some(source),
            headers,
        };
        self.call(timeout, |mut c, t| {
            let req = timed(req.clone(), t);
            async move { c.register_task(req).await }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_peerd_is_retried_until_the_deadline_and_then_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let client = LocalClient::lazy(&socket);
        let started = std::time::Instant::now();
        let err = client
            .list(Duration::from_millis(700))
            .await
            .expect_err("nothing listens");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "gave up after {waited:?}"
        );
        assert!(matches!(
            err.kind,
            ErrorKind::Transport | ErrorKind::Timeout
        ));
        assert!(err.message.contains("absent.sock"), "{}", err.message);
    }
}
