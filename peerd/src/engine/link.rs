//! peerd's side of the scheduler protocol.
//!
//! With several schedulers, each task belongs to one of them by rendezvous
//! hashing of its id, so every host asks the same scheduler about the same
//! task; when that scheduler is unreachable, the next one in the task's
//! order takes over. Piece reports are batched for a few milliseconds,
//! except a root's digests, which must reach the scheduler before any child
//! can verify the piece.

use api::error::{ErrorKind, RemoteError, status, timed};
use api::proto::scheduler_client::SchedulerClient;
use api::proto::*;
use api::task::TaskId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// How often batched reports go out.
const REPORT_INTERVAL: Duration = Duration::from_millis(20);
/// RegisterPeer may wait while another host resolves the task.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(75);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

struct Endpointed {
    addr: String,
    client: SchedulerClient<Channel>,
}

#[derive(Default)]
struct PendingReport {
    pieces: Vec<u32>,
    bad_parents: Vec<BadParent>,
    speeds: Vec<ParentSpeed>,
}

pub struct SchedulerLink {
    schedulers: Vec<Endpointed>,
    host: Mutex<HostInfo>,
    pending: Mutex<HashMap<TaskId, PendingReport>>,
    wake: Notify,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid scheduler address '{addr}': {reason}; use HOST:PORT")]
pub struct BadSchedulerAddr {
    pub addr: String,
    pub reason: String,
}

impl SchedulerLink {
    pub fn new(addrs: &[String], host: HostInfo) -> Result<SchedulerLink, BadSchedulerAddr> {
        let mut schedulers = Vec::new();
        for addr in addrs.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            let uri = if addr.contains("://") {
                addr.to_string()
            } else {
                format!("http://{addr}")
            };
            let endpoint = Endpoint::from_shared(uri).map_err(|e| BadSchedulerAddr {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
            let channel = endpoint
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .connect_lazy();
            schedulers.push(Endpointed {
                addr: addr.to_string(),
                client: SchedulerClient::new(channel).max_decoding_message_size(64 << 20),
            });
        }
        if schedulers.is_empty() {
            return Err(BadSchedulerAddr {
                addr: addrs.join(","),
                reason: "no scheduler address given".into(),
            });
        }
        Ok(SchedulerLink {
            schedulers,
            host: Mutex::new(host),
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
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

    pub fn scheduler_count(&self) -> usize {
        self.schedulers.len()
    }

    /// Schedulers in the order a task uses them.
    fn order(&self, task: &TaskId) -> Vec<&Endpointed> {
        let mut list: Vec<&Endpointed> = self.schedulers.iter().collect();
        list.sort_by_key(|s| {
            let mut h = blake3::Hasher::new();
            h.update(task.as_bytes());
            h.update(s.addr.as_bytes());
            std::cmp::Reverse(*h.finalize().as_bytes())
        });
        list
    }

    /// Whether `task` belongs to scheduler number `index` first.
    pub fn is_home(&self, task: &TaskId, index: usize) -> bool {
        self.order(task)
            .first()
            .is_some_and(|s| std::ptr::eq(*s, &self.schedulers[index]))
    }

    /// Calls the task's scheduler, failing over while schedulers are unreachable.
    async fn call<T, F, Fut>(&self, task: &TaskId, timeout: Duration, f: F) -> Result<T, Status>
    where
        F: Fn(SchedulerClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = status(ErrorKind::Scheduler, "no scheduler configured");
        for scheduler in self.order(task) {
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
                    tracing::debug!(scheduler = %scheduler.addr, "scheduler unreachable: {}", failed.message());
                    last = status(
                        ErrorKind::Scheduler,
                        format!(
                            "scheduler {} is unreachable: {}",
                            scheduler.addr,
                            failed.message()
                        ),
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
            let req = timed(req.clone(), t);
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
                let req = timed(req.clone(), t);
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
            let req = timed(req.clone(), t);
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
            let req = timed(req.clone(), t);
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
            let req = timed(req.clone(), t);
            async move { c.report_pieces(req).await }
        })
        .await
        .map(drop)
    }

    fn pending(&self, task: TaskId, f: impl FnOnce(&mut PendingReport)) {
        f(self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task)
            .or_default());
        self.wake.notify_one();
    }

    pub fn report_piece_later(&self, task: TaskId, piece: u32) {
        self.pending(task, |p| p.pieces.push(piece));
    }

    pub fn report_bad_parent_later(&self, task: TaskId, bad: BadParent) {
        self.pending(task, |p| p.bad_parents.push(bad));
    }

    pub fn report_speed_later(&self, task: TaskId, speed: ParentSpeed) {
        self.pending(task, |p| p.speeds.push(speed));
    }

    /// Sends batched reports until the process ends.
    pub async fn run_reporter(&self) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(REPORT_INTERVAL).await;
            self.flush_reports().await;
        }
    }

    pub async fn flush_reports(&self) {
        let batch: Vec<(TaskId, PendingReport)> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (task, report) in batch {
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
                let req = timed(req.clone(), t);
                async move { c.leave_task(req).await }
            })
            .await;
    }

    /// Announces this host to every scheduler; returns the indexes of those
    /// that did not know it and need the host's tasks again.
    pub async fn announce(&self) -> (Vec<usize>, Option<Duration>) {
        let req = AnnounceHostRequest {
            host: Some(self.host_info()),
        };
        let mut resync = Vec::new();
        let mut keepalive = None;
        for (i, s) in self.schedulers.iter().enumerate() {
            match s
                .client
                .clone()
                .announce_host(timed(req.clone(), CALL_TIMEOUT))
                .await
            {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    if resp.resync {
                        resync.push(i);
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

    async fn announce_to(&self, scheduler: &Endpointed) {
        let req = AnnounceHostRequest {
            host: Some(self.host_info()),
        };
        if let Err(e) = scheduler
            .client
            .clone()
            .announce_host(timed(req, CALL_TIMEOUT))
            .await
        {
            tracing::warn!(scheduler = %scheduler.addr, "cannot announce this host: {}", e.message());
        }
    }

    pub async fn leave_host(&self) {
        let req = LeaveHostRequest {
            host_id: self.host_id(),
        };
        for s in &self.schedulers {
            let _ = s
                .client
                .clone()
                .leave_host(timed(req.clone(), Duration::from_secs(2)))
                .await;
        }
    }

    /// Opens scheduler `index`'s command stream for a seed.
    pub async fn seed_session(
        &self,
        index: usize,
    ) -> Result<tonic::Streaming<SeedCommand>, Status> {
        let req = SeedSessionRequest {
            host: Some(self.host_info()),
        };
        let mut client = self.schedulers[index].client.clone();
        Ok(client.seed_session(req).await?.into_inner())
    }

    pub fn scheduler_addr(&self, index: usize) -> &str {
        &self.schedulers[index].addr
    }
}
