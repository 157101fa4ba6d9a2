//! The scheduler's picture of the cluster: hosts, tasks, and which host
//! holds which pieces of which task. Everything here is plain data behind
//! one lock, with no I/O, so the rules can be unit-tested directly; the
//! gRPC layer (`service.rs`) only translates.

use api::error::{ErrorKind, RemoteError, invalid, status};
use api::piece::{Bitmap, Layout};
use api::proto::{HostInfo, RegisterPeerResponse, SeedCommand, TaskMeta, TaskSource};
use api::task::TaskId;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Tunables, all settable from the command line.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub max_parents: usize,
    pub keepalive: Duration,
    /// A host silent for this long is dropped with all its peers.
    pub host_timeout: Duration,
    /// How long a host that served corrupt bytes is kept out of parent lists.
    pub isolation: Duration,
    /// Distinct hosts whose corrupt-piece reports isolate a parent.
    pub isolation_quorum: usize,
    /// How long a task with no peers keeps its metadata.
    pub task_ttl: Duration,
    /// How long a resolver may take before another host is asked.
    pub resolve_timeout: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            max_parents: 20,
            keepalive: Duration::from_secs(5),
            host_timeout: Duration::from_secs(20),
            isolation: Duration::from_secs(600),
            isolation_quorum: 2,
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
    /// Hosts that reported this one for a corrupt piece, and when. One
    /// report is no evidence (any host can send one); several independent
    /// ones isolate it.
    pub corrupt_reports: HashMap<String, Instant>,
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
            corrupt_reports: HashMap::new(),
            speed: 0.0,
        }
    }

    pub(crate) fn is_isolated(&self, now: Instant) -> bool {
        self.isolated_until.is_some_and(|t| t > now)
    }
}

/// How a task's metadata stands; waiters watch it.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Pending,
    Ready(TaskMeta),
    Failed(RemoteError),
}

pub struct Peer {
    pub bitmap: Bitmap,
}

pub struct Task {
    pub source: Option<TaskSource>,
    pub meta: Option<TaskMeta>,
    pub(crate) layout: Option<Layout>,
    /// The host resolving the metadata, and since when.
    pub(crate) resolving: Option<(String, Instant)>,
    pub(crate) resolution: watch::Sender<Resolution>,
    /// Digests the root reported, by piece; filled as reports come, so a
    /// task's size costs nothing until its pieces are fetched.
    pub digests: HashMap<u32, [u8; 32]>,
    pub peers: HashMap<String, Peer>,
    /// The host that fetches from the origin what nobody holds.
    pub root: Option<String>,
    pub(crate) whole_requested: bool,
    pub(crate) empty_since: Option<Instant>,
    /// Hosts that fetch this task from the origin with headers of their
    /// own, which no other host has. A task first registered that way is
    /// private: no seed roots it, only one of these hosts.
    pub(crate) private_fetchers: HashSet<String>,
    pub(crate) private: bool,
}

impl Task {
    pub(crate) fn new() -> Self {
        Task {
            source: None,
            meta: None,
            layout: None,
            resolving: None,
            resolution: watch::channel(Resolution::Pending).0,
            digests: HashMap::new(),
            peers: HashMap::new(),
            root: None,
            whole_requested: false,
            empty_since: None,
            private_fetchers: HashSet::new(),
            private: false,
        }
    }

    pub(crate) fn set_meta(&mut self, meta: TaskMeta) -> Result<(), Status> {
        let layout = Layout::new(meta.content_length, meta.piece_length)
            .map_err(|e| invalid(e.to_string()))?;
        self.digests.clear();
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

    pub(crate) fn piece_count(&self) -> u32 {
        self.layout.map_or(0, |l| l.piece_count())
    }

    pub(crate) fn add_peer(&mut self, host_id: &str) -> &mut Peer {
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
    /// The host has origin headers of its own for this task.
    pub private_source: bool,
}

pub struct Cluster {
    pub settings: SchedulerSettings,
    pub hosts: HashMap<String, Host>,
    pub tasks: HashMap<TaskId, Task>,
}

impl Cluster {
    pub fn new(settings: SchedulerSettings) -> Self {
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
            task.private_fetchers.remove(host_id);
            if task.root.as_deref() == Some(host_id) {
                task.root = None;
            }
            if task.peers.is_empty() && task.empty_since.is_none() {
                task.empty_since = Some(now);
            }
        }
    }

    pub(crate) fn known_host(&self, host_id: &str) -> Result<(), Status> {
        if self.hosts.contains_key(host_id) {
            Ok(())
        } else {
            Err(status(
                ErrorKind::UnknownHost,
                format!("host {host_id} has not announced itself to this scheduler"),
            ))
        }
    }

    pub fn stat_task(&self, task_id: &TaskId) -> Result<TaskMeta, Status> {
        self.tasks
            .get(task_id)
            .and_then(|t| t.meta.clone())
            .ok_or_else(|| unknown_task(task_id))
    }

    pub fn leave_task(&mut self, host_id: &str, task_id: TaskId, now: Instant) {
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.peers.remove(host_id);
            task.private_fetchers.remove(host_id);
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

pub fn unknown_task(task_id: &TaskId) -> Status {
    status(
        ErrorKind::NotFound,
        format!("task {task_id} is unknown to the cluster"),
    )
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod fuzz_tests;
