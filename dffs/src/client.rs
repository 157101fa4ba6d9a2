//! dffs's connection to peerd. Every call has a deadline; while peerd is
//! unreachable (down, restarting) calls are retried until the deadline, so
//! a restarted peerd is picked up again without a remount.

use api::proto::peer_client::PeerClient;
use api::proto::*;
use api::task::TaskId;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("task {0} is unknown to the cluster")]
    NotFound(TaskId),
    #[error("no answer from peerd at {socket} within {seconds:.1}s: {last}")]
    TimedOut {
        socket: PathBuf,
        seconds: f64,
        last: String,
    },
    #[error("peerd failed: {0}")]
    Failed(String),
}

impl ClientError {
    pub fn errno(&self) -> fuser::Errno {
        match self {
            ClientError::NotFound(_) => fuser::Errno::ENOENT,
            ClientError::TimedOut { .. } | ClientError::Failed(_) => fuser::Errno::EIO,
        }
    }
}

#[derive(Clone)]
pub struct Peerd {
    client: PeerClient<Channel>,
    socket: PathBuf,
}

/// Pause between attempts while peerd is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

impl Peerd {
    pub fn new(socket: &Path) -> Peerd {
        Peerd {
            client: PeerClient::new(api::uds::connect_lazy(socket))
                .max_decoding_message_size(64 << 20),
            socket: socket.to_path_buf(),
        }
    }

    /// Calls `f` until it answers or `deadline` passes, retrying only
    /// while peerd cannot be reached.
    async fn call<T, F, Fut>(&self, deadline: Instant, f: F) -> Result<T, Status>
    where
        F: Fn(PeerClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded("deadline passed"));
            }
            let attempt = tokio::time::timeout(left, f(self.client.clone(), left)).await;
            match attempt {
                Err(_) => return Err(Status::deadline_exceeded("peerd did not answer in time")),
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if unreachable(&status) => {
                    tracing::debug!(socket = %self.socket.display(), "peerd unreachable: {}", status.message());
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(status);
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(status)) => return Err(status),
            }
        }
    }

    fn error(&self, id: Option<TaskId>, status: Status, started: Instant) -> ClientError {
        match (status.code(), id) {
            (Code::NotFound, Some(id)) => ClientError::NotFound(id),
            (Code::DeadlineExceeded | Code::Unavailable | Code::Unknown | Code::Cancelled, _) => {
                ClientError::TimedOut {
                    socket: self.socket.clone(),
                    seconds: started.elapsed().as_secs_f64(),
                    last: status.message().to_string(),
                }
            }
            _ => ClientError::Failed(status.message().to_string()),
        }
    }

    pub async fn stat(&self, id: TaskId, timeout: Duration) -> Result<TaskInfo, ClientError> {
        let started = Instant::now();
        let req = StatLocalTaskRequest {
            task_id: id.to_string(),
        };
        self.call(started + timeout, |mut c, t| {
            let req = timed(req.clone(), t);
            async move { c.stat_task(req).await }
        })
        .await
        .map_err(|s| self.error(Some(id), s, started))
    }

    pub async fn list(&self, timeout: Duration) -> Result<Vec<TaskInfo>, ClientError> {
        let started = Instant::now();
        self.call(started + timeout, |mut c, t| async move {
            c.list_tasks(timed(Empty {}, t)).await
        })
        .await
        .map(|r| r.tasks)
        .map_err(|s| self.error(None, s, started))
    }

    /// Makes `length` bytes from `offset` present in peerd's cache.
    pub async fn ensure(
        &self,
        id: TaskId,
        offset: u64,
        length: u64,
        priority: Priority,
        timeout: Duration,
    ) -> Result<EnsureRangeResponse, ClientError> {
        let started = Instant::now();
        let req = EnsureRangeRequest {
            task_id: id.to_string(),
            offset,
            length,
            priority: priority as i32,
        };
        self.call(started + timeout, |mut c, t| {
            let req = timed(req.clone(), t);
            async move { c.ensure_range(req).await }
        })
        .await
        .map_err(|s| self.error(Some(id), s, started))
    }

    /// Starts a download of the whole task and returns its progress stream.
    /// Only starting it is bounded by `timeout`: the download itself takes
    /// as long as the task's size and the network make it.
    pub async fn download(
        &self,
        id: TaskId,
        timeout: Duration,
    ) -> Result<tonic::Streaming<DownloadProgress>, ClientError> {
        let started = Instant::now();
        let req = DownloadRequest {
            source: None,
            task_id: id.to_string(),
            in_order: true,
        };
        self.call(started + timeout, |mut c, _| {
            let req = req.clone();
            async move { c.download(req).await }
        })
        .await
        .map_err(|s| self.error(Some(id), s, started))
    }

    /// Registers a URL without downloading it (`dffs add`).
    pub async fn register(
        &self,
        source: TaskSource,
        timeout: Duration,
    ) -> Result<TaskInfo, Status> {
        let req = RegisterTaskRequest {
            source: Some(source),
        };
        let mut client = self.client.clone();
        client
            .register_task(timed(req, timeout))
            .await
            .map(tonic::Response::into_inner)
    }
}

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(timeout);
    req
}

/// Connection failures (peerd down), as opposed to answers.
fn unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && (std::error::Error::source(status).is_some()
            || status.message().contains("transport")
            || status.message().contains("connect"))
}
