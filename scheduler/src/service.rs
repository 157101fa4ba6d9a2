//! The Scheduler gRPC service: checks and converts requests, then applies
//! them to the shared [`Cluster`].

use crate::limits;
use crate::state::{Cluster, RegisterRequest, Registration, Resolution};
use api::error::{ErrorKind, RemoteError, invalid, parse_task_id, status};
use api::proto::scheduler_server::Scheduler;
use api::proto::*;
use api::task::TaskId;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How long RegisterPeer waits for another host to resolve a task.
const RESOLVE_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct SchedulerService {
    cluster: Arc<Mutex<Cluster>>,
}

impl SchedulerService {
    pub fn new(cluster: Arc<Mutex<Cluster>>) -> Self {
        SchedulerService { cluster }
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        // A panic while holding the lock would be a bug; keep serving
        // rather than poisoning every later call.
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The task-id a RegisterPeer names: derived from the source when there is
/// one (and then it must agree with any task-id given), else the one given.
fn register_task_id(req: &RegisterPeerRequest) -> Result<TaskId, Status> {
    let Some(source) = &req.source else {
        return parse_task_id(&req.task_id);
    };
    let derived = TaskId::from_source(&source.url, &source.tag, &source.application)
        .map_err(|e| invalid(e.to_string()))?;
    if !req.task_id.is_empty() && parse_task_id(&req.task_id)? != derived {
        return Err(invalid("task_id does not match the source"));
    }
    Ok(derived)
}

/// The message of `request`, once it is proven to come from the host it
/// names (see `api::identity`): no host can act as another.
fn from_host<T>(request: Request<T>, host_id: impl Fn(&T) -> &str) -> Result<T, Status> {
    api::identity::verify(&request, host_id(request.get_ref()))?;
    Ok(request.into_inner())
}

/// A host's description, checked: an id of the right form, an address
/// peers can dial, and sizes that fit.
fn checked_host(host: Option<HostInfo>) -> Result<HostInfo, Status> {
    let host = host.ok_or_else(|| invalid("host is required"))?;
    if !api::identity::is_host_id(&host.host_id) {
        return Err(invalid("host_id must be 32 lower-case hex characters"));
    }
    if host.upload_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(format!(
            "upload_addr {:?} is not IP:PORT",
            limits::shown(&host.upload_addr)
        )));
    }
    limits::check_len("hostname", &host.hostname, limits::MAX_NAME)?;
    Ok(host)
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<SeedCommand, Status>> + Send>>;

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn announce_host(
        &self,
        request: Request<AnnounceHostRequest>,
    ) -> Result<Response<AnnounceHostResponse>, Status> {
        let host = checked_host(request.get_ref().host.clone())?;
        api::identity::verify(&request, &host.host_id)?;
        let mut cluster = self.lock();
        let resync = cluster.announce_host(host, Instant::now());
        Ok(Response::new(AnnounceHostResponse {
            resync,
            keepalive_seconds: cluster.settings.keepalive.as_secs() as u32,
        }))
    }

    async fn leave_host(
        &self,
        request: Request<LeaveHostRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = from_host(request, |r| &r.host_id)?;
        self.lock().remove_host(&req.host_id, Instant::now());
        Ok(Response::new(Empty {}))
    }

    async fn register_peer(
        &self,
        request: Request<RegisterPeerRequest>,
    ) -> Result<Response<RegisterPeerResponse>, Status> {
        metrics::counter!("scheduler_register_peer_total").increment(1);
        let req = from_host(request, |r| &r.host_id)?;
        let task_id = register_task_id(&req)?;
        if let Some(source) = &req.source {
            limits::check_source(source)?;
        }
        if let Some(meta) = &req.meta {
            limits::check_meta(meta)?;
        }
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        loop {
            let outcome = self.lock().register_peer(
                RegisterRequest {
                    host_id: &req.host_id,
                    task_id,
                    source: req.source.clone(),
                    want_whole: req.want_whole,
                    bitmap: (!req.bitmap.is_empty()).then_some(req.bitmap.as_slice()),
                    meta: req.meta.clone(),
                    private_source: req.private_source,
                },
                Instant::now(),
            )?;
            let mut waiting = match outcome {
                Registration::Done(response) => return Ok(Response::new(response)),
                Registration::Wait(receiver) => receiver,
            };
            // Wake at least every few seconds to notice a resolver that died.
            let wake = (tokio::time::Instant::now() + Duration::from_secs(3)).min(deadline);
            let _ = tokio::time::timeout_at(wake, waiting.changed()).await;
            if let Resolution::Failed(error) = &*waiting.borrow() {
                return Err(error.to_status());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(status(
                    ErrorKind::Timeout,
                    format!(
                        "task {task_id}: nobody resolved the metadata within {}s",
                        RESOLVE_WAIT.as_secs()
                    ),
                ));
            }
        }
    }

    async fn stat_task(
        &self,
        request: Request<StatTaskRequest>,
    ) -> Result<Response<StatTaskResponse>, Status> {
        let task_id = parse_task_id(&request.into_inner().task_id)?;
        let meta = self.lock().stat_task(&task_id)?;
        Ok(Response::new(StatTaskResponse { meta: Some(meta) }))
    }

    async fn get_parents(
        &self,
        request: Request<GetParentsRequest>,
    ) -> Result<Response<GetParentsResponse>, Status> {
        metrics::counter!("scheduler_get_parents_total").increment(1);
        let req = from_host(request, |r| &r.host_id)?;
        let task_id = parse_task_id(&req.task_id)?;
        let response =
            self.lock()
                .get_parents(&req.host_id, task_id, &req.want_digests, Instant::now())?;
        Ok(Response::new(response))
    }

    async fn report_pieces(
        &self,
        request: Request<ReportPiecesRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = from_host(request, |r| &r.host_id)?;
        let task_id = parse_task_id(&req.task_id)?;
        metrics::counter!("scheduler_pieces_reported_total").increment(req.pieces.len() as u64);
        self.lock().report_pieces(&req, task_id, Instant::now())?;
        Ok(Response::new(Empty {}))
    }

    async fn report_task_meta(
        &self,
        request: Request<ReportTaskMetaRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = from_host(request, |r| &r.host_id)?;
        let task_id = parse_task_id(&req.task_id)?;
        let result = match req.result {
            Some(report_task_meta_request::Result::Meta(meta)) => {
                limits::check_meta(&meta)?;
                Ok(meta)
            }
            Some(report_task_meta_request::Result::Error(error)) => {
                Err(RemoteError::from_detail(error))
            }
            None => return Err(invalid("a result is required")),
        };
        self.lock()
            .report_task_meta(&req.host_id, task_id, result)?;
        Ok(Response::new(Empty {}))
    }

    async fn leave_task(
        &self,
        request: Request<LeaveTaskRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = from_host(request, |r| &r.host_id)?;
        let task_id = parse_task_id(&req.task_id)?;
        self.lock()
            .leave_task(&req.host_id, task_id, Instant::now());
        Ok(Response::new(Empty {}))
    }

    type SeedSessionStream = CommandStream;

    async fn seed_session(
        &self,
        request: Request<SeedSessionRequest>,
    ) -> Result<Response<Self::SeedSessionStream>, Status> {
        let host = checked_host(request.get_ref().host.clone())?;
        api::identity::verify(&request, &host.host_id)?;
        let (tx, rx) = mpsc::channel(1024);
        tracing::info!(seed = %host.host_id, "seed connected");
        self.lock().attach_seed(host, tx, Instant::now());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
