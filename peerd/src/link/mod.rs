//! peerd's side of the scheduler protocol.
//!
//! - [`set`]: which scheduler a task belongs to, by canonical address.
//! - [`reports`]: piece reports batched on their way out.
//!
//! Every call about a task goes to the task's home scheduler, and fails
//! over to the next in the task's order while a scheduler does not answer.
//! A scheduler that says it does not know this host (it restarted) is
//! announced to and asked again. The set of schedulers can change while
//! peerd runs ([`SchedulerLink::replace`]).

pub mod reports;
pub mod set;

use api::error::{ErrorKind, RemoteError, status, timed};
use api::identity::HostIdentity;
use api::proto::scheduler_client::SchedulerClient;
use api::proto::*;
use api::task::TaskId;
use reports::Reports;
pub use set::{BadSchedulerAddr, SchedulerName};
use std::net::SocketAddr;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tonic::Status;
use tonic::transport::Channel;

/// How often batched reports go out.
const REPORT_INTERVAL: Duration = Duration::from_millis(20);
/// RegisterPeer may wait while another host resolves the task.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(75);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted (parents with bitmaps of huge tasks).
const MAX_MESSAGE: usize = 64 << 20;

/// One scheduler: its canonical address and a client for it.
#[derive(Clone)]
struct Scheduler {
    addr: SocketAddr,
    client: SchedulerClient<Channel>,
}

impl Scheduler {
    fn new(addr: SocketAddr) -> Scheduler {
        let channel = api::transport::scheduler_channel(addr);
        Scheduler {
            addr,
            client: SchedulerClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
        }
    }
}

pub struct SchedulerLink {
    /// Sorted by address.
    schedulers: RwLock<Vec<Scheduler>>,
    host: Mutex<HostInfo>,
    /// Signs every request, so the scheduler knows it is this host's.
    identity: HostIdentity,
    pub reports: Reports,
}

/// How the set of schedulers changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetChange {
    pub before: Vec<SocketAddr>,
    pub after: Vec<SocketAddr>,
}

impl SetChange {
    /// Whether `task`'s home is another scheduler now.
    pub fn moved(&self, task: &TaskId) -> bool {
        set::home(task, &self.before) != set::home(task, &self.after)
    }
}

impl SchedulerLink {
    /// A link for the host `host` describes; its id is `identity`'s.
    pub fn new(addrs: &[SocketAddr], mut host: HostInfo, identity: HostIdentity) -> SchedulerLink {
        host.host_id = identity.id().to_string();
        let link = SchedulerLink {
            schedulers: RwLock::new(Vec::new()),
            host: Mutex::new(host),
            identity,
            reports: Reports::default(),
        };
        link.replace(addrs.to_vec());
        link
    }

    fn list(&self) -> Vec<Scheduler> {
        self.schedulers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The schedulers' canonical addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.list().iter().map(|s| s.addr).collect()
    }

    /// Makes `addrs` the set of schedulers: new ones are added, missing
    /// ones dropped, and the clients of those that stay are kept. Returns
    /// the change, None when the set is the same.
    pub fn replace(&self, addrs: Vec<SocketAddr>) -> Option<SetChange> {
        let after = set::canonical(addrs);
        let mut schedulers = self.schedulers.write().unwrap_or_else(|e| e.into_inner());
        let before: Vec<SocketAddr> = schedulers.iter().map(|s| s.addr).collect();
        if before == after {
            return None;
        }
        let kept: Vec<Scheduler> = after
            .iter()
            .map(|addr| {
                schedulers
                    .iter()
                    .find(|s| s.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| Scheduler::new(*addr))
            })
            .collect();
        *schedulers = kept;
        tracing::info!(?before, ?after, "scheduler set changed");
        Some(SetChange { before, after })
    }

    /// A request with a deadline, signed by this host.
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = timed(message, timeout);
        self.identity.sign(&mut request);
        request
    }

    pub fn host_id(&self) -> String {
        self.host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .host_id
            .clone()
    }

    pub fn host_info(&self) -> HostInfo {
        self.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_uploads_in_flight(&self, n: u32) {
        self.host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .uploads_in_flight = n;
    }

    /// Whether `task`'s home scheduler is the one at `addr`.
    pub fn is_home(&self, task: &TaskId, addr: SocketAddr) -> bool {
        set::home(task, &self.addrs()) == Some(addr)
    }

    /// Calls the task's scheduler, failing over while schedulers are unreachable.
    async fn call<T, F, Fut>(&self, task: &TaskId, timeout: Duration, f: F) -> Result<T, Status>
    where
        F: Fn(SchedulerClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let schedulers = self.list();
        let mut last = status(ErrorKind::Scheduler, "no scheduler configured");
        for addr in set::order(task, &self.addrs()) {
            let Some(scheduler) = schedulers.iter().find(|s| s.addr == addr) else {
                continue;
            };
            let mut result = f(scheduler.client.clone(), timeout).await;
            if matches!(&result, Err(s) if RemoteError::from_status(s).kind == ErrorKind::UnknownHost)
            {
                // The scheduler restarted or has not heard from us yet.
                self.announce_to(scheduler).await;
                result = f(scheduler.client.clone(), timeout).await;
            }
            match result {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(failed) if RemoteError::from_status(&failed).is_transport() => {
                    tracing::debug!(scheduler = %addr, "scheduler unreachable: {}", failed.message());
                    last = status(
                        ErrorKind::Scheduler,
                        format!("scheduler {addr} is unreachable: {}", failed.message()),
                    );
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    pub async fn register_peer(
        &self,
        task: &TaskId,
        mut req: RegisterPeerRequest,
    ) -> Result<RegisterPeerResponse, Status> {
        req.host_id = self.host_id();
        req.task_id = task.to_string();
        self.call(task, REGISTER_TIMEOUT, |mut c, t| {
            let req = self.request(req.clone(), t);
            async move { c.register_peer(req).await }
        })
        .await
    }

    pub async fn stat_task(&self, task: &TaskId) -> Result<TaskMeta, Status> {
        let req = StatTaskRequest {
            task_id: task.to_string(),
        };
        let resp = self
            .call(task, CALL_TIMEOUT, |mut c, t| {
                let req = self.request(req.clone(), t);
                async move { c.stat_task(req).await }
            })
            .await?;
        resp.meta
            .ok_or_else(|| status(ErrorKind::Internal, "scheduler sent no metadata"))
    }

    pub async fn get_parents(
        &self,
        task: &TaskId,
        want_digests: Vec<u32>,
    ) -> Result<GetParentsResponse, Status> {
        let req = GetParentsRequest {
            host_id: self.host_id(),
            task_id: task.to_string(),
            want_digests,
        };
        self.call(task, CALL_TIMEOUT, |mut c, t| {
            let req = self.request(req.clone(), t);
            async move { c.get_parents(req).await }
        })
        .await
    }

    pub async fn report_task_meta(
        &self,
        task: &TaskId,
        result: report_task_meta_request::Result,
    ) -> Result<(), Status> {
        let req = ReportTaskMetaRequest {
            host_id: self.host_id(),
            task_id: task.to_string(),
            result: Some(result),
        };
        self.call(task, CALL_TIMEOUT, |mut c, t| {
            let req = self.request(req.clone(), t);
            async move { c.report_task_meta(req).await }
        })
        .await
        .map(drop)
    }

    /// Reports pieces fetched from the origin, with their digests, and
    /// returns once the scheduler has them.
    pub async fn report_digests(
        &self,
        task: &TaskId,
        digests: Vec<PieceDigest>,
    ) -> Result<(), Status> {
        let req = ReportPiecesRequest {
            host_id: self.host_id(),
            task_id: task.to_string(),
            pieces: digests.iter().map(|d| d.number).collect(),
            digests,
            ..Default::default()
        };
        self.send_report(task, req).await
    }

    async fn send_report(&self, task: &TaskId, req: ReportPiecesRequest) -> Result<(), Status> {
        self.call(task, CALL_TIMEOUT, |mut c, t| {
            let req = self.request(req.clone(), t);
            async move { c.report_pieces(req).await }
        })
        .await
        .map(drop)
    }

    pub fn report_piece_later(&self, task: TaskId, piece: u32) {
        self.reports.piece(task, piece);
    }

    pub fn report_bad_parent_later(&self, task: TaskId, bad: BadParent) {
        self.reports.bad_parent(task, bad);
    }

    pub fn report_speed_later(&self, task: TaskId, speed: ParentSpeed) {
        self.reports.speed(task, speed);
    }

    /// Sends batched reports as they come, until `stop` is cancelled.
    pub async fn run_reporter(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = self.reports.wake.notified() => {}
                () = stop.cancelled() => return,
            }
            tokio::time::sleep(REPORT_INTERVAL).await;
            self.flush_reports().await;
        }
    }

    pub async fn flush_reports(&self) {
        for (task, report) in self.reports.drain() {
            let req = ReportPiecesRequest {
                host_id: self.host_id(),
                task_id: task.to_string(),
                pieces: report.pieces,
                digests: Vec::new(),
                bad_parents: report.bad_parents,
                speeds: report.speeds,
            };
            if let Err(e) = self.send_report(&task, req).await {
                // The next resync repairs what the scheduler missed.
                tracing::debug!(%task, "piece report failed: {}", e.message());
            }
        }
    }

    pub async fn leave_task(&self, task: &TaskId) {
        let req = LeaveTaskRequest {
            host_id: self.host_id(),
            task_id: task.to_string(),
        };
        let _ = self
            .call(task, CALL_TIMEOUT, |mut c, t| {
                let req = self.request(req.clone(), t);
                async move { c.leave_task(req).await }
            })
            .await;
    }

    /// Announces this host to every scheduler; returns those that did not
    /// know it and need the host's tasks again, and the keepalive interval
    /// the schedulers ask for.
    pub async fn announce(&self) -> (Vec<SocketAddr>, Option<Duration>) {
        let req = AnnounceHostRequest {
            host: Some(self.host_info()),
        };
        let mut resync = Vec::new();
        let mut keepalive = None;
        for s in self.list() {
            match s
                .client
                .clone()
                .announce_host(self.request(req.clone(), CALL_TIMEOUT))
                .await
            {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    if resp.resync {
                        resync.push(s.addr);
                    }
                    if resp.keepalive_seconds > 0 {
                        keepalive = Some(Duration::from_secs(u64::from(resp.keepalive_seconds)));
                    }
                }
                Err(e) => {
                    tracing::warn!(scheduler = %s.addr, "cannot announce this host: {}", e.message())
                }
            }
        }
        (resync, keepalive)
    }

    async fn announce_to(&self, scheduler: &Scheduler) {
        let req = AnnounceHostRequest {
            host: Some(self.host_info()),
        };
        if let Err(e) = scheduler
            .client
            .clone()
            .announce_host(self.request(req, CALL_TIMEOUT))
            .await
        {
            tracing::warn!(scheduler = %scheduler.addr, "cannot announce this host: {}", e.message());
        }
    }

    pub async fn leave_host(&self) {
        let req = LeaveHostRequest {
            host_id: self.host_id(),
        };
        for s in self.list() {
            let _ = s
                .client
                .clone()
                .leave_host(self.request(req.clone(), Duration::from_secs(2)))
                .await;
        }
    }

    /// Opens the command stream of the scheduler at `addr`, for a seed.
    pub async fn seed_session(
        &self,
        addr: SocketAddr,
    ) -> Result<tonic::Streaming<SeedCommand>, Status> {
        let scheduler = self
            .list()
            .into_iter()
            .find(|s| s.addr == addr)
            .ok_or_else(|| {
                status(
                    ErrorKind::NotFound,
                    format!("scheduler {addr} left the set"),
                )
            })?;
        let req = SeedSessionRequest {
            host: Some(self.host_info()),
        };
        let mut client = scheduler.client;
        // A stream for the life of the seed: no deadline.
        let mut request = tonic::Request::new(req);
        self.identity.sign(&mut request);
        Ok(client.seed_session(request).await?.into_inner())
    }
}
