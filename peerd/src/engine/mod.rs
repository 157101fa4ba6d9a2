//! The task and piece engine: the one place where tasks are opened, pieces
//! fetched, verified and stored. dfget, dffs, the seed and preheat all call
//! it; none has a download path of its own.

mod bulk;
mod error;
mod fanout;
mod fetch;
pub mod gc;
pub mod link;
mod origin_fetch;
mod origin_run;
mod publish;
mod serve;
pub mod slots;
pub mod task;

pub use bulk::Order;
pub use error::EngineError;
use link::SchedulerLink;
pub use task::Task;

use crate::origin::{Credentials, Origin};
use crate::ratelimit::HostLimits;
use crate::storage::{Journal, Store};
use crate::upload::client::PeerClient;
use api::error::RemoteError;
use api::piece::Layout;
use api::proto::{
    Priority, RegisterPeerRequest, SeedCommand, TaskInfo, TaskMeta, TaskSource,
    report_task_meta_request,
};
use api::task::TaskId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use task::LoadedState;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Piece requests in flight to one parent at a time.
    pub requests_per_parent: u32,
    /// Ranged GETs in flight to the origin per task.
    pub origin_requests_per_task: usize,
    /// Pieces a whole-task download keeps in flight.
    pub bulk_window: usize,
    /// This host's upload port, sent with piece requests so a root can
    /// point later requesters here (see `fanout`).
    pub upload_port: u16,
    /// Longest a downloaded piece waits to be synced and logged.
    pub commit_interval: Duration,
}

pub struct Inner {
    pub store: Store,
    pub journal: Journal,
    pub link: SchedulerLink,
    pub peers: PeerClient,
    pub origin: Origin,
    pub slots: Arc<slots::Slots>,
    pub buffers: api::buffers::BufferPool,
    pub limits: HostLimits,
    pub settings: Settings,
    /// Seed mode: roots new tasks and answers children about tasks it has
    /// not opened yet.
    pub seed: bool,
    tasks: Mutex<HashMap<TaskId, Arc<Task>>>,
    /// Serialises opening the same task, so concurrent callers create it once.
    opening: Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
}

/// How often a read-ahead waiting on a whole-task download checks that the
/// download still runs.
const WHOLE_DOWNLOAD_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Counts a running whole-task download in the task's state while alive.
struct WholeDownload(Arc<Task>);

impl WholeDownload {
    fn start(task: &Arc<Task>) -> WholeDownload {
        task.lock().whole_downloads += 1;
        WholeDownload(task.clone())
    }
}

impl Drop for WholeDownload {
    fn drop(&mut self) {
        self.0.lock().whole_downloads -= 1;
    }
}

/// A cheap handle on the engine.
#[derive(Clone)]
pub struct Engine {
    pub inner: Arc<Inner>,
}

pub struct Parts {
    pub store: Store,
    pub link: SchedulerLink,
    pub peers: PeerClient,
    pub origin: Origin,
    pub download_slots: usize,
    pub limits: HostLimits,
    pub settings: Settings,
    pub seed: bool,
}

impl Engine {
    /// Builds the engine and loads every task already in the cache.
    pub fn new(parts: Parts) -> Engine {
        let engine = Engine {
            inner: Arc::new(Inner {
                store: parts.store,
                journal: Journal::start(parts.settings.commit_interval),
                link: parts.link,
                peers: parts.peers,
                origin: parts.origin,
                slots: slots::Slots::new(parts.download_slots),
                buffers: api::buffers::BufferPool::new(),
                limits: parts.limits,
                settings: parts.settings,
                seed: parts.seed,
                tasks: Mutex::new(HashMap::new()),
                opening: Mutex::new(HashMap::new()),
            }),
        };
        for loaded in engine.inner.store.load_all() {
            let Ok(id) = loaded.meta.task_id.parse::<TaskId>() else {
                continue;
            };
            let state = LoadedState {
                present: loaded.present,
                digests: loaded.digests,
                last_access: loaded.last_access,
            };
            let task = Task::new(id, loaded.meta, loaded.layout, loaded.file, Some(state));
            engine.tasks_map().insert(id, task);
        }
        let count = engine.tasks_map().len();
        tracing::info!(tasks = count, "piece cache loaded");
        metrics::gauge!("dffs_tasks").set(count as f64);
        engine
    }

    fn tasks_map(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<Task>>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A task held here. A complete task whose content file was written
    /// outside peerd (it may be hard-linked to a user's output, which the
    /// user may edit) is dropped instead, and fetched afresh when asked
    /// for: the user keeps the edited file, the cache never serves it.
    pub fn task(&self, id: &TaskId) -> Option<Arc<Task>> {
        let task = self.tasks_map().get(id).cloned()?;
        if task.file.modified_since_seal() {
            tracing::warn!(task = %task.id, "its cached content was modified outside peerd");
            self.evict(&task, "modified");
            return None;
        }
        Some(task)
    }

    /// Forgets a task and deletes its files (hard links to them elsewhere
    /// keep their bytes).
    pub fn evict(&self, task: &Arc<Task>, why: &'static str) {
        tracing::info!(task = %task.id, "dropping the cached task: {why}");
        metrics::counter!("dffs_cache_evictions_total", "reason" => why).increment(1);
        self.tasks_map().remove(&task.id);
        if let Err(e) = self.inner.store.remove(&task.id) {
            tracing::warn!(task = %task.id, "cannot delete the task's files: {e}");
        }
        let engine = self.clone();
        let id = task.id;
        tokio::spawn(async move { engine.inner.link.leave_task(&id).await });
    }

    pub fn tasks(&self) -> Vec<Arc<Task>> {
        self.tasks_map().values().cloned().collect()
    }

    fn open_lock(&self, id: TaskId) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .opening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }

    /// Opens the task for a URL: from the cache when it is there (no
    /// network at all), else by joining it at the scheduler, resolving the
    /// metadata at the origin if this host is the first to ask.
    /// `credentials` (the caller's origin headers) stay on this host: the
    /// scheduler learns only that they exist, and roots the task here
    /// rather than at a seed that lacks them.
    pub async fn open_source(
        &self,
        source: TaskSource,
        credentials: Credentials,
        want_whole: bool,
    ) -> Result<Arc<Task>, EngineError> {
        let id = TaskId::from_source(&source.url, &source.tag, &source.application)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        if let Some(task) = self.task(&id) {
            task.offer_credentials(&credentials);
            return Ok(task);
        }
        let lock = self.open_lock(id);
        let _opening = lock.lock().await;
        if let Some(task) = self.task(&id) {
            task.offer_credentials(&credentials);
            return Ok(task);
        }
        let request = RegisterPeerRequest {
            source: Some(source.clone()),
            want_whole,
            private_source: !credentials.is_empty(),
            ..Default::default()
        };
        let (meta, is_root) = match self.inner.link.register_peer(&id, request).await {
            Ok(resp) if resp.must_resolve => (
                self.resolve_and_report(id, &source, &credentials).await?,
                true,
            ),
            Ok(resp) => (
                resp.meta
                    .ok_or_else(|| EngineError::Scheduler("no metadata in the answer".into()))?,
                resp.is_root,
            ),
            Err(status) => match EngineError::from_scheduler(&status) {
                EngineError::Scheduler(why) => {
                    // Degrade to a plain download rather than fail.
                    tracing::warn!(task = %id, "scheduler unavailable ({why}); fetching from the origin directly");
                    (self.resolve(id, &source, &credentials).await?, true)
                }
                other => return Err(other),
            },
        };
        let task = self.insert_new(id, meta)?;
        task.offer_credentials(&credentials);
        task.lock().is_root = is_root;
        Ok(task)
    }

    /// Opens a task known only by id (a dffs lookup): from the cache, or by
    /// joining it at the scheduler, which must know it.
    pub async fn open_id(&self, id: TaskId) -> Result<Arc<Task>, EngineError> {
        if let Some(task) = self.task(&id) {
            return Ok(task);
        }
        let lock = self.open_lock(id);
        let _opening = lock.lock().await;
        if let Some(task) = self.task(&id) {
            return Ok(task);
        }
        let request = RegisterPeerRequest::default();
        let resp = self
            .inner
            .link
            .register_peer(&id, request)
            .await
            .map_err(|s| EngineError::from_scheduler(&s))?;
        let meta = resp.meta.ok_or_else(|| {
            EngineError::Unavailable(format!("task {id} is still being resolved; try again"))
        })?;
        let task = self.insert_new(id, meta)?;
        task.lock().is_root = resp.is_root;
        Ok(task)
    }

    /// A task's metadata and local state, asking the scheduler about tasks
    /// this host has not seen, without joining them.
    pub async fn stat(&self, id: TaskId) -> Result<TaskInfo, EngineError> {
        if let Some(task) = self.task(&id) {
            return Ok(task.info());
        }
        let meta = self
            .inner
            .link
            .stat_task(&id)
            .await
            .map_err(|s| EngineError::from_scheduler(&s))?;
        Ok(TaskInfo {
            meta: Some(meta),
            ..Default::default()
        })
    }

    fn insert_new(&self, id: TaskId, meta: TaskMeta) -> Result<Arc<Task>, EngineError> {
        if meta.task_id != id.to_string() {
            return Err(EngineError::Invalid(format!(
                "metadata for task {id} names task {}",
                meta.task_id
            )));
        }
        let layout = Layout::new(meta.content_length, meta.piece_length)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let file = self.inner.store.create(id, &meta, layout)?;
        let ranges = meta.accepts_ranges;
        let task = Task::new(id, meta, layout, file, None);
        let task = {
            let mut tasks = self.tasks_map();
            let task = tasks.entry(id).or_insert(task).clone();
            metrics::gauge!("dffs_tasks").set(tasks.len() as f64);
            task
        };
        if ranges {
            origin_fetch::learned_ranges_work(self, &task);
        }
        Ok(task)
    }

    /// Learns the object's metadata at the origin.
    async fn resolve(
        &self,
        id: TaskId,
        source: &TaskSource,
        credentials: &Credentials,
    ) -> Result<TaskMeta, EngineError> {
        let resolved = self.inner.origin.resolve(source, credentials).await?;
        Ok(TaskMeta {
            task_id: id.to_string(),
            source: Some(source.clone()),
            content_length: resolved.content_length,
            piece_length: api::piece::piece_length_for(resolved.content_length),
            etag: resolved.etag,
            last_modified: resolved.last_modified,
            accepts_ranges: resolved.accepts_ranges,
        })
    }

    /// Resolves at the origin as the scheduler asked, and tells it the
    /// outcome, which every host waiting on the task receives.
    async fn resolve_and_report(
        &self,
        id: TaskId,
        source: &TaskSource,
        credentials: &Credentials,
    ) -> Result<TaskMeta, EngineError> {
        let meta = self.resolve_or_report(id, source, credentials).await?;
        self.report_meta(id, &meta).await?;
        Ok(meta)
    }

    /// Resolves at the origin; a failure is reported to the scheduler,
    /// whose waiting hosts get it as their answer.
    async fn resolve_or_report(
        &self,
        id: TaskId,
        source: &TaskSource,
        credentials: &Credentials,
    ) -> Result<TaskMeta, EngineError> {
        let error = match self.resolve(id, source, credentials).await {
            Ok(meta) => return Ok(meta),
            Err(error) => error,
        };
        let report: RemoteError = error.to_remote();
        let _ = self
            .inner
            .link
            .report_task_meta(
                &id,
                report_task_meta_request::Result::Error(report.to_detail()),
            )
            .await;
        Err(error)
    }

    /// Tells the scheduler what a resolution found; the hosts waiting on
    /// the task learn it and their root from this.
    async fn report_meta(&self, id: TaskId, meta: &TaskMeta) -> Result<(), EngineError> {
        self.inner
            .link
            .report_task_meta(&id, report_task_meta_request::Result::Meta(meta.clone()))
            .await
            .map_err(|s| EngineError::from_scheduler(&s))
    }

    /// Joins a task this host already holds, telling the scheduler which
    /// pieces it has (after a scheduler restart, or a root change).
    pub async fn register_existing(&self, task: &Task) -> Result<(), EngineError> {
        let request = RegisterPeerRequest {
            bitmap: task.lock().present.as_bytes().to_vec(),
            meta: Some(task.meta.clone()),
            private_source: !task.credentials().is_empty(),
            ..Default::default()
        };
        let resp = self
            .inner
            .link
            .register_peer(&task.id, request)
            .await
            .map_err(|s| EngineError::from_scheduler(&s))?;
        task.lock().is_root = resp.is_root;
        Ok(())
    }

    /// Re-registers every task whose home is scheduler `index`.
    pub async fn resync(&self, index: usize) {
        let tasks: Vec<Arc<Task>> = self
            .tasks()
            .into_iter()
            .filter(|t| self.inner.link.is_home(&t.id, index))
            .collect();
        tracing::info!(scheduler = %self.inner.link.scheduler_addr(index), tasks = tasks.len(), "re-reporting held tasks");
        for task in tasks {
            if let Err(e) = self.register_existing(&task).await {
                tracing::warn!(task = %task.id, "cannot re-report task: {e}");
            }
        }
    }

    /// Fetches every missing piece of the task (see `bulk` for the order).
    pub async fn download_all(&self, task: &Arc<Task>, order: Order) -> Result<(), EngineError> {
        task.touch();
        let _running = WholeDownload::start(task);
        let all = 0..task.layout.piece_count();
        bulk::download(self, task, all, Priority::Bulk, order).await?;
        Ok(())
    }

    /// Tells the scheduler, once, that this host wants all of a task it
    /// opened for lazy reading: a seed root then streams the task from the
    /// origin at full speed instead of piece by piece as readers ask.
    pub fn announce_wanted_whole(&self, task: &Arc<Task>) {
        {
            let mut state = task.lock();
            if state.wanted_whole || state.is_root || state.present.is_full() {
                return;
            }
            state.wanted_whole = true;
        }
        let (engine, task) = (self.clone(), task.clone());
        tokio::spawn(async move {
            let request = RegisterPeerRequest {
                want_whole: true,
                // Lets a scheduler that restarted learn the task again.
                meta: Some(task.meta.clone()),
                private_source: !task.credentials().is_empty(),
                ..Default::default()
            };
            match engine.inner.link.register_peer(&task.id, request).await {
                Ok(resp) => task.lock().is_root = resp.is_root,
                Err(status) => {
                    tracing::debug!(task = %task.id, "cannot tell the scheduler the task is wanted whole: {}", status.message());
                    task.lock().wanted_whole = false;
                }
            }
        });
    }

    /// Fetches the pieces covering a read-ahead window, choosing among
    /// them like a whole-task download does, at prefetch priority.
    pub async fn prefetch(
        &self,
        task: &Arc<Task>,
        pieces: std::ops::Range<u32>,
    ) -> Result<(), EngineError> {
        // A whole-task download already plans every missing piece; a second
        // planner for the same pieces would only burn CPU. Wait for it, and
        // plan here again only if it ends (fails) first.
        let mut progress = task.subscribe();
        loop {
            while task.lock().whole_downloads > 0 {
                if task.has_all(pieces.clone()) {
                    return Ok(());
                }
                let _ = tokio::time::timeout(WHOLE_DOWNLOAD_CHECK, progress.changed()).await;
            }
            let outcome = bulk::download(
                self,
                task,
                pieces.clone(),
                Priority::Prefetch,
                Order::InOrder,
            )
            .await?;
            if outcome == bulk::Outcome::Done {
                return Ok(());
            }
        }
    }

    /// Carries out a seed command: root the task, resolving it first if
    /// nobody has, and fetch all of it when asked.
    pub async fn handle_seed_command(&self, command: SeedCommand) -> Result<(), EngineError> {
        let id: TaskId = command
            .task_id
            .parse()
            .map_err(|e: api::task::TaskError| EngineError::Invalid(e.to_string()))?;
        let (task, resolved_here) = match (self.task(&id), command.meta) {
            (Some(task), _) => (task, false),
            (None, Some(meta)) => (self.insert_new(id, meta)?, false),
            (None, None) => {
                let source = command
                    .source
                    .ok_or_else(|| EngineError::Invalid("seed command without a source".into()))?;
                let meta = self
                    .resolve_or_report(id, &source, &Credentials::default())
                    .await?;
                (self.insert_new(id, meta)?, true)
            }
        };
        // The scheduler sends its commands only to a task's root. A task
        // resolved here streams before the children learn where to ask:
        // each piece a child asks for before the stream has claimed it
        // costs the origin a request of its own, splitting the long runs.
        task.lock().is_root = true;
        if resolved_here {
            task.publisher.hold();
        }
        if command.whole && !task.is_complete() {
            tracing::debug!(task = %task.id, "a child wants the whole task: streaming it from the origin");
            let (engine, task) = (self.clone(), task.clone());
            tokio::spawn(async move {
                if let Err(e) = engine.download_all(&task, Order::Spread).await {
                    tracing::warn!(task = %task.id, "seed fetch of the whole task failed: {e}");
                }
            });
        }
        if resolved_here {
            let reported = self.report_meta(id, &task.meta).await;
            publish::release(self, &task);
            reported?;
        }
        self.register_existing(&task).await
    }

    /// Persists everything and leaves the cluster.
    pub async fn shutdown(&self) {
        let journal = self.inner.journal.clone();
        let _ = tokio::task::spawn_blocking(move || journal.flush()).await;
        self.inner.link.flush_reports().await;
        self.inner.link.leave_host().await;
    }
}
