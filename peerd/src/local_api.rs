//! The Peer gRPC service on peerd's Unix socket, used by dfget and dffs.

use crate::engine::{Engine, EngineError, Order, Task, labels};
use api::error::{invalid, parse_task_id};
use api::piece::Bitmap;
use api::proto::peer_server::Peer;
use api::proto::*;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Progress messages are sent at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

pub struct LocalApi {
    engine: Engine,
}

impl LocalApi {
    pub fn new(engine: Engine) -> Self {
        LocalApi { engine }
    }
}

fn source(source: Option<TaskSource>) -> Result<TaskSource, Status> {
    source.ok_or_else(|| invalid("a source URL is required"))
}

fn credentials(headers: &[Header]) -> Result<crate::origin::Credentials, Status> {
    crate::origin::Credentials::parse(headers).map_err(|e| invalid(e.to_string()))
}

fn status(e: EngineError) -> Status {
    e.to_status()
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<DownloadProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for LocalApi {
    type DownloadStream = ProgressStream;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let req = request.into_inner();
        let task = match req.source {
            Some(source) => {
                let credentials = credentials(&req.headers)?;
                self.engine.open_source(source, credentials, true).await
            }
            None if !req.task_id.is_empty() => {
                let task = self.engine.open_id(parse_task_id(&req.task_id)?).await;
                if let Ok(task) = &task {
                    self.engine.announce_wanted_whole(task);
                }
                task
            }
            None => {
                return Err(invalid("a source URL or a task-id is required"));
            }
        }
        .map_err(status)?;
        if task.is_complete() {
            metrics::counter!("dffs_download_bytes_total", "source" => labels::FROM_CACHE, "priority" => "bulk")
                .increment(task.layout.content_length);
        }
        let (tx, rx) = mpsc::channel(16);
        let engine = self.engine.clone();
        let order = if req.in_order {
            Order::InOrder
        } else {
            Order::Spread
        };
        tokio::spawn(async move { report_progress(engine, task, order, tx).await });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn register_task(
        &self,
        request: Request<RegisterTaskRequest>,
    ) -> Result<Response<TaskInfo>, Status> {
        let req = request.into_inner();
        let credentials = credentials(&req.headers)?;
        let source = source(req.source)?;
        let task = self
            .engine
            .open_source(source, credentials, false)
            .await
            .map_err(status)?;
        Ok(Response::new(task.info()))
    }

    async fn stat_task(
        &self,
        request: Request<StatLocalTaskRequest>,
    ) -> Result<Response<TaskInfo>, Status> {
        let id = parse_task_id(&request.into_inner().task_id)?;
        Ok(Response::new(self.engine.stat(id).await.map_err(status)?))
    }

    async fn list_tasks(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let tasks = self.engine.tasks().iter().map(|t| t.info()).collect();
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn ensure_range(
        &self,
        request: Request<EnsureRangeRequest>,
    ) -> Result<Response<EnsureRangeResponse>, Status> {
        let req = request.into_inner();
        let id = parse_task_id(&req.task_id)?;
        let priority = Priority::try_from(req.priority).unwrap_or(Priority::Read);
        let task = self.engine.open_id(id).await.map_err(status)?;
        task.touch();
        let pieces = task.layout.pieces_covering(req.offset, req.length);
        let fetched = if priority == Priority::Prefetch {
            self.engine.prefetch(&task, pieces).await
        } else {
            self.engine.ensure(&task, pieces, priority).await
        };
        fetched.map_err(status)?;
        Ok(Response::new(EnsureRangeResponse {
            complete: task.is_complete(),
            content_path: task.file.content_path().to_string_lossy().into_owned(),
        }))
    }
}

/// Streams progress until the download ends, then a final message or the
/// error. A caller that goes away does not stop the download: the pieces
/// are still useful to this host and to others.
async fn report_progress(
    engine: Engine,
    task: Arc<Task>,
    order: Order,
    tx: mpsc::Sender<Result<DownloadProgress, Status>>,
) {
    let download = {
        let engine = engine.clone();
        let task = task.clone();
        tokio::spawn(async move { engine.download_all(&task, order).await })
    };
    let mut progress = task.subscribe();
    let mut sent = Bitmap::new(task.layout.piece_count());
    let mut download = std::pin::pin!(download);
    // Progress goes out at most every PROGRESS_INTERVAL, but the end of the
    // download is reported at once.
    let mut next_report = tokio::time::Instant::now();
    loop {
        let finished = tokio::select! {
            result = &mut download => Some(result.unwrap_or(Err(EngineError::ShuttingDown))),
            _ = async {
                tokio::time::sleep_until(next_report).await;
                let _ = progress.changed().await;
            } => None,
        };
        let done = finished.as_ref().is_some_and(Result::is_ok);
        let message = progress_message(&task, &mut sent, done);
        match finished {
            Some(Err(e)) => {
                let _ = tx.send(Err(e.to_status())).await;
                return;
            }
            Some(Ok(())) => {
                let _ = tx.send(Ok(message)).await;
                return;
            }
            None => {
                if tx.send(Ok(message)).await.is_err() {
                    // Nobody listens; let the download finish on its own.
                    return;
                }
                next_report = tokio::time::Instant::now() + PROGRESS_INTERVAL;
            }
        }
    }
}

fn progress_message(task: &Task, sent: &mut Bitmap, done: bool) -> DownloadProgress {
    let info = task.info();
    let present = task.lock().present.clone();
    let new_pieces: Vec<u32> = present.iter_ones().filter(|&n| !sent.get(n)).collect();
    for &n in &new_pieces {
        sent.set(n);
    }
    DownloadProgress {
        completed_bytes: info.completed_bytes,
        task: Some(info),
        done,
        new_pieces,
    }
}

#[cfg(test)]
#[path = "local_api_tests.rs"]
mod tests;
