//! The scheduler's picture of the cluster: hosts, tasks, and which host
//! holds which pieces of which task. Everything here is plain data behind
//! one lock, with no I/O, so the rules can be unit-tested directly; the
//! gRPC layer (`service.rs`) only translates.

use crate::ranking::{self, Candidate};
use api::piece::{Bitmap, Layout};
use api::proto::{
    GetParentsResponse, HostInfo, OriginError, Parent, PieceDigest, RegisterPeerResponse,
    ReportPiecesRequest, SeedCommand, TaskMeta, TaskSource,
};
use api::task::TaskId;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Tunables, all settable from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_parents: usize,
    pub keepalive: Duration,
    /// A host silent for this long is dropped with all its peers.
    pub host_timeout: Duration,
    /// How long a host that served corrupt bytes is kept out of parent lists.
    pub isolation: Duration,
    /// How long a task with no peers keeps its metadata.
    pub task_ttl: Duration,
    /// How long a resolver may take before another host is asked.
    pub resolve_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_parents: 20,
            keepalive: Duration::from_secs(5),
            host_timeout: Duration::from_secs(20),
            isolation: Duration::from_secs(600),
            task_ttl: Duration::from_secs(600),
            resolve_timeout: Duration::from_secs(30),
        }
    }
}

pub type SeedSender = mpsc::Sender<Result<SeedCommand, Status>>;

pub struct Host {
    pub info: HostInfo,
    pub last_seen: Instant,
    /// Open while a seed keeps its command stream.
    pub seed_commands: Option<SeedSender>,
    pub isolated_until: Option<Instant>,
    /// Failures reported by children, halved every keepalive.
    pub failures: f64,
    /// Recent delivery speed in bytes per second (moving average).
    pub speed: f64,
}

impl Host {
    fn new(info: HostInfo, now: Instant) -> Self {
        Host {
            info,
            last_seen: now,
            seed_commands: None,
            isolated_until: None,
            failures: 0.0,
            speed: 0.0,
        }
    }

    fn is_isolated(&self, now: Instant) -> bool {
        self.isolated_until.is_some_and(|t| t > now)
    }
}

/// How a task's metadata stands; waiters watch it.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Pending,
    Ready(TaskMeta),
    Failed(OriginError),
}

pub struct Peer {
    pub bitmap: Bitmap,
}

pub struct Task {
    pub source: Option<TaskSource>,
    pub meta: Option<TaskMeta>,
    layout: Option<Layout>,
    /// The host resolving the metadata, and since when.
    resolving: Option<(String, Instant)>,
    resolution: watch::Sender<Resolution>,
    pub digests: Vec<Option<[u8; 32]>>,
    pub peers: HashMap<String, Peer>,
    /// The host that fetches from the origin what nobody holds.
    pub root: Option<String>,
    whole_requested: bool,
    empty_since: Option<Instant>,
}

impl Task {
    fn new() -> Self {
        Task {
            source: None,
            meta: None,
            layout: None,
            resolving: None,
            resolution: watch::channel(Resolution::Pending).0,
            digests: Vec::new(),
            peers: HashMap::new(),
            root: None,
            whole_requested: false,
            empty_since: None,
        }
    }

    fn set_meta(&mut self, meta: TaskMeta) -> Result<(), Status> {
        let layout = Layout::new(meta.content_length, meta.piece_length)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.digests = vec![None; layout.piece_count() as usize];
        for peer in self.peers.values_mut() {
            peer.bitmap = Bitmap::new(layout.piece_count());
        }
        self.layout = Some(layout);
        if self.source.is_none() {
            self.source = meta.source.clone();
        }
        self.resolving = None;
        self.resolution
            .send_replace(Resolution::Ready(meta.clone()));
        self.meta = Some(meta);
        Ok(())
    }

    fn piece_count(&self) -> u32 {
        self.layout.map_or(0, |l| l.piece_count())
    }

    fn add_peer(&mut self, host_id: &str) -> &mut Peer {
        let count = self.piece_count();
        self.empty_since = None;
        self.peers
            .entry(host_id.to_string())
            .or_insert_with(|| Peer {
                bitmap: Bitmap::new(count),
            })
    }
}

/// What a RegisterPeer call should do next.
pub enum Registration {
    Done(RegisterPeerResponse),
    /// Wait for the metadata (another host resolves it), then call again.
    Wait(watch::Receiver<Resolution>),
}

pub struct RegisterRequest<'a> {
    pub host_id: &'a str,
    pub task_id: TaskId,
    pub source: Option<TaskSource>,
    pub want_whole: bool,
    pub bitmap: Option<&'a [u8]>,
    pub meta: Option<TaskMeta>,
}

pub struct Cluster {
    pub settings: Settings,
    pub hosts: HashMap<String, Host>,
    pub tasks: HashMap<TaskId, Task>,
}

impl Cluster {
    pub fn new(settings: Settings) -> Self {
        Cluster {
            settings,
            hosts: HashMap::new(),
            tasks: HashMap::new(),
        }
    }

    /// Registers or refreshes a host; true when it was unknown.
    pub fn announce_host(&mut self, info: HostInfo, now: Instant) -> bool {
        match self.hosts.get_mut(&info.host_id) {
            Some(host) => {
                host.info = info;
                host.last_seen = now;
                false
            }
            None => {
                tracing::info!(host = %info.host_id, addr = %info.upload_addr, seed = info.is_seed, "host joined");
                self.hosts
                    .insert(info.host_id.clone(), Host::new(info, now));
                true
            }
        }
    }

    pub fn attach_seed(&mut self, info: HostInfo, commands: SeedSender, now: Instant) {
        self.announce_host(info.clone(), now);
        if let Some(host) = self.hosts.get_mut(&info.host_id) {
            host.seed_commands = Some(commands);
        }
    }

    pub fn remove_host(&mut self, host_id: &str, now: Instant) {
        if self.hosts.remove(host_id).is_none() {
            return;
        }
        tracing::info!(host = %host_id, "host left");
        for task in self.tasks.values_mut() {
            task.peers.remove(host_id);
            if task.root.as_deref() == Some(host_id) {
                task.root = None;
            }
            if task.peers.is_empty() && task.empty_since.is_none() {
                task.empty_since = Some(now);
            }
        }
    }

    fn known_host(&self, host_id: &str) -> Result<(), Status> {
        if self.hosts.contains_key(host_id) {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "host {host_id} has not announced itself to this scheduler"
            )))
        }
    }

    pub fn register_peer(
        &mut self,
        req: RegisterRequest<'_>,
        now: Instant,
    ) -> Result<Registration, Status> {
        self.known_host(req.host_id)?;
        let task_known = self.tasks.contains_key(&req.task_id);
        if !task_known && req.source.is_none() && req.meta.is_none() {
            return Err(unknown_task(&req.task_id));
        }
        let task = self.tasks.entry(req.task_id).or_insert_with(Task::new);
        if task.source.is_none() {
            task.source = req
                .source
                .clone()
                .or_else(|| req.meta.as_ref().and_then(|m| m.source.clone()));
        }
        if task.meta.is_none()
            && let Some(meta) = req.meta.clone()
        {
            task.set_meta(meta)?;
        }
        if task.meta.is_none() {
            return Ok(self.begin_resolution(req.task_id, req.host_id, req.want_whole, now));
        }
        let task = self
            .tasks
            .get_mut(&req.task_id)
            .expect("task inserted above");
        let peer = task.add_peer(req.host_id);
        if let Some(bytes) = req.bitmap {
            peer.bitmap = Bitmap::from_bytes(peer.bitmap.len(), bytes);
        }
        let root = self.ensure_root(req.task_id, req.host_id, req.want_whole, now);
        let task = &self.tasks[&req.task_id];
        Ok(Registration::Done(RegisterPeerResponse {
            meta: task.meta.clone(),
            is_root: root == req.host_id,
            must_resolve: false,
        }))
    }

    /// Starts resolving unknown metadata, at a seed if one is connected,
    /// else at the asking host; later askers wait for the result.
    fn begin_resolution(
        &mut self,
        task_id: TaskId,
        host_id: &str,
        want_whole: bool,
        now: Instant,
    ) -> Registration {
        let timeout = self.settings.resolve_timeout;
        let hosts = &self.hosts;
        let task = self
            .tasks
            .get_mut(&task_id)
            .expect("caller inserted the task");
        let stalled = task.resolving.as_ref().is_some_and(|(h, since)| {
            !hosts.contains_key(h) || now.duration_since(*since) > timeout
        });
        if stalled {
            tracing::warn!(task = %task_id, "resolver went away; asking another host");
            task.resolving = None;
            task.root = None;
        }
        match &task.resolving {
            Some((resolver, _)) if resolver == host_id => {
                return Registration::Done(must_resolve());
            }
            Some(_) => return Registration::Wait(task.resolution.subscribe()),
            None => {}
        }
        let receiver = task.resolution.subscribe();
        let source = task.source.clone();
        if let Some(seed) = self.pick_seed(&task_id) {
            let command = SeedCommand {
                task_id: task_id.to_string(),
                source,
                meta: None,
                whole: want_whole,
            };
            if self.send_to_seed(&seed, command) {
                let task = self.tasks.get_mut(&task_id).expect("task exists");
                task.resolving = Some((seed.clone(), now));
                task.whole_requested = want_whole;
                task.root = Some(seed.clone());
                task.add_peer(&seed);
                return Registration::Wait(receiver);
            }
        }
        let task = self.tasks.get_mut(&task_id).expect("task exists");
        task.resolving = Some((host_id.to_string(), now));
        task.root = Some(host_id.to_string());
        task.add_peer(host_id);
        Registration::Done(must_resolve())
    }

    /// Makes sure the task has a live root and returns it: the current one,
    /// else a seed, else `asking` itself. Tells a seed root to fetch the
    /// whole task the first time someone wants all of it.
    fn ensure_root(
        &mut self,
        task_id: TaskId,
        asking: &str,
        want_whole: bool,
        now: Instant,
    ) -> String {
        let task = &self.tasks[&task_id];
        let alive = task
            .root
            .as_ref()
            .filter(|r| self.hosts.get(*r).is_some_and(|h| !h.is_isolated(now)))
            .cloned();
        let (root, newly_chosen) = match alive {
            Some(root) => (root, false),
            None => {
                let seed = self.pick_seed(&task_id);
                (seed.unwrap_or_else(|| asking.to_string()), true)
            }
        };
        let is_seed = self
            .hosts
            .get(&root)
            .is_some_and(|h| h.seed_commands.is_some());
        let task = self.tasks.get_mut(&task_id).expect("task exists");
        let tell_whole = want_whole && !task.whole_requested;
        if is_seed && (newly_chosen || tell_whole) {
            let command = SeedCommand {
                task_id: task_id.to_string(),
                source: task.source.clone(),
                meta: task.meta.clone(),
                whole: want_whole || task.whole_requested,
            };
            task.whole_requested |= want_whole;
            if !self.send_to_seed(&root, command) {
                return self.make_root(task_id, asking);
            }
        }
        self.make_root(task_id, &root)
    }

    fn make_root(&mut self, task_id: TaskId, host_id: &str) -> String {
        let task = self.tasks.get_mut(&task_id).expect("task exists");
        if task.root.as_deref() != Some(host_id) {
            tracing::info!(task = %task_id, root = %host_id, "task root chosen");
        }
        task.root = Some(host_id.to_string());
        task.add_peer(host_id);
        host_id.to_string()
    }

    /// The seed that roots `task_id`: rendezvous hashing spreads tasks over
    /// seeds and keeps a task on the same seed while that seed lives.
    fn pick_seed(&self, task_id: &TaskId) -> Option<String> {
        let now = Instant::now();
        self.hosts
            .values()
            .filter(|h| {
                h.seed_commands.as_ref().is_some_and(|tx| !tx.is_closed()) && !h.is_isolated(now)
            })
            .max_by_key(|h| rendezvous_weight(task_id, &h.info.host_id))
            .map(|h| h.info.host_id.clone())
    }

    fn send_to_seed(&mut self, seed: &str, command: SeedCommand) -> bool {
        let Some(host) = self.hosts.get_mut(seed) else {
            return false;
        };
        let sent = host
            .seed_commands
            .as_ref()
            .is_some_and(|tx| tx.try_send(Ok(command)).is_ok());
        if !sent {
            tracing::warn!(seed = %seed, "seed did not take a command; it is no longer used as a seed");
            host.seed_commands = None;
        }
        sent
    }

    pub fn report_task_meta(
        &mut self,
        host_id: &str,
        task_id: TaskId,
        result: Result<TaskMeta, OriginError>,
    ) -> Result<(), Status> {
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or_else(|| unknown_task(&task_id))?;
        if task.meta.is_some() {
            return Ok(());
        }
        if task.resolving.as_ref().is_none_or(|(h, _)| h != host_id) {
            return Err(Status::failed_precondition(format!(
                "host {host_id} was not asked to resolve task {task_id}"
            )));
        }
        match result {
            Ok(meta) => {
                check_meta_matches(&task_id, &meta)?;
                task.set_meta(meta)
            }
            Err(error) => {
                tracing::info!(task = %task_id, status = error.http_status, "origin refused task: {}", error.message);
                task.resolution.send_replace(Resolution::Failed(error));
                self.tasks.remove(&task_id);
                Ok(())
            }
        }
    }

    pub fn stat_task(&self, task_id: &TaskId) -> Result<TaskMeta, Status> {
        self.tasks
            .get(task_id)
            .and_then(|t| t.meta.clone())
            .ok_or_else(|| unknown_task(task_id))
    }

    pub fn get_parents(
        &mut self,
        host_id: &str,
        task_id: TaskId,
        want_digests: &[u32],
        now: Instant,
    ) -> Result<GetParentsResponse, Status> {
        self.known_host(host_id)?;
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or_else(|| unknown_task(&task_id))?;
        if task.meta.is_none() {
            return Err(Status::unavailable(format!(
                "task {task_id} is still being resolved"
            )));
        }
        task.add_peer(host_id);
        let root = self.ensure_root(task_id, host_id, false, now);
        let task = &self.tasks[&task_id];
        let child = &task.peers[host_id].bitmap;
        let candidates = task
            .peers
            .iter()
            .filter(|(id, _)| id.as_str() != host_id)
            .filter_map(|(id, peer)| {
                let host = self.hosts.get(id).filter(|h| !h.is_isolated(now))?;
                Some(Candidate {
                    host,
                    bitmap: &peer.bitmap,
                    is_root: *id == root,
                })
            });
        let chosen = ranking::rank(child, candidates, self.settings.max_parents);
        let parents = chosen
            .into_iter()
            .map(|c| Parent {
                host_id: c.host.info.host_id.clone(),
                upload_addr: c.host.info.upload_addr.clone(),
                is_root: c.is_root,
                bitmap: c.bitmap.as_bytes().to_vec(),
            })
            .collect();
        let digests = want_digests
            .iter()
            .filter_map(|&n| {
                let digest = task.digests.get(n as usize).copied().flatten()?;
                Some(PieceDigest {
                    number: n,
                    blake3: digest.to_vec(),
                })
            })
            .collect();
        Ok(GetParentsResponse {
            parents,
            digests,
            is_root: root == host_id,
        })
    }

    pub fn report_pieces(
        &mut self,
        req: &ReportPiecesRequest,
        task_id: TaskId,
        now: Instant,
    ) -> Result<(), Status> {
        let host_id = req.host_id.as_str();
        let (pieces, digests, bad_parents, speeds) =
            (&req.pieces, &req.digests, &req.bad_parents, &req.speeds);
        self.known_host(host_id)?;
        let isolation = self.settings.isolation;
        for bad in bad_parents {
            if let Some(parent) = self.hosts.get_mut(&bad.host_id) {
                parent.failures += 1.0;
                if bad.corrupt {
                    tracing::warn!(parent = %bad.host_id, reporter = %host_id, piece = bad.piece, "parent isolated: it served a corrupt piece");
                    metrics::counter!("scheduler_isolations_total").increment(1);
                    parent.isolated_until = Some(now + isolation);
                }
            }
        }
        for speed in speeds.iter().filter(|s| s.micros > 0) {
            if let Some(parent) = self.hosts.get_mut(&speed.host_id) {
                let sample = speed.bytes as f64 / (speed.micros as f64 / 1e6);
                parent.speed = if parent.speed == 0.0 {
                    sample
                } else {
                    0.7 * parent.speed + 0.3 * sample
                };
            }
        }
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or_else(|| unknown_task(&task_id))?;
        let is_root = task.root.as_deref() == Some(host_id);
        let count = task.piece_count();
        if !digests.is_empty() && !is_root {
            return Err(Status::permission_denied(format!(
                "host {host_id} is not the root of task {task_id} and may not report digests"
            )));
        }
        for d in digests {
            let Some(slot) = task.digests.get_mut(d.number as usize) else {
                return Err(Status::invalid_argument(format!(
                    "piece {} is out of range",
                    d.number
                )));
            };
            let digest: [u8; 32] = d
                .blake3
                .as_slice()
                .try_into()
                .map_err(|_| Status::invalid_argument("a piece digest must be 32 bytes"))?;
            match slot {
                Some(existing) if *existing != digest => {
                    tracing::warn!(task = %task_id, piece = d.number, "conflicting digest reported; keeping the first");
                }
                _ => *slot = Some(digest),
            }
        }
        let peer = task.add_peer(host_id);
        for &n in pieces.iter().filter(|&&n| n < count) {
            peer.bitmap.set(n);
        }
        Ok(())
    }

    pub fn leave_task(&mut self, host_id: &str, task_id: TaskId, now: Instant) {
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.peers.remove(host_id);
            if task.root.as_deref() == Some(host_id) {
                task.root = None;
            }
            if task.peers.is_empty() {
                task.empty_since = Some(now);
            }
        }
    }

    /// Drops silent hosts and long-empty tasks, and lets failure counts
    /// fade so a host recovers from a bad spell.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.settings.host_timeout;
        let dead: Vec<String> = self
            .hosts
            .values()
            .filter(|h| now.duration_since(h.last_seen) > timeout)
            .map(|h| h.info.host_id.clone())
            .collect();
        for host in dead {
            tracing::warn!(host = %host, "host missed its keepalives; dropping it and its peers");
            self.remove_host(&host, now);
        }
        for host in self.hosts.values_mut() {
            host.failures *= 0.5;
        }
        let ttl = self.settings.task_ttl;
        self.tasks.retain(|_, t| {
            t.resolving.is_some()
                || t.empty_since
                    .is_none_or(|since| now.duration_since(since) < ttl)
        });
        metrics::gauge!("scheduler_hosts").set(self.hosts.len() as f64);
        metrics::gauge!("scheduler_tasks").set(self.tasks.len() as f64);
    }
}

fn must_resolve() -> RegisterPeerResponse {
    RegisterPeerResponse {
        meta: None,
        is_root: true,
        must_resolve: true,
    }
}

pub fn unknown_task(task_id: &TaskId) -> Status {
    Status::not_found(format!("task {task_id} is unknown to the cluster"))
}

/// The metadata's source must hash to the task-id it claims, so a confused
/// or hostile resolver cannot bind one task-id to another URL.
fn check_meta_matches(task_id: &TaskId, meta: &TaskMeta) -> Result<(), Status> {
    let source = meta
        .source
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("task metadata lacks its source"))?;
    let derived = TaskId::from_source(&source.url, &source.tag, &source.application)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if derived != *task_id || meta.task_id != task_id.to_string() {
        return Err(Status::invalid_argument(format!(
            "metadata for task {task_id} describes another task"
        )));
    }
    Ok(())
}

fn rendezvous_weight(task_id: &TaskId, host_id: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(task_id.as_bytes());
    hasher.update(host_id.as_bytes());
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
