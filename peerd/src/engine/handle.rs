//! `Engine`, the cheap handle every caller holds: the task registry, and
//! the entry points that drive pieces (ensure, prefetch, whole-task
//! download). Opening tasks (`join`), seed commands (`seed_command`),
//! serving peers (`serve`) and cache collection (`gc`) extend it from
//! their own modules.

use super::bulk::{self, Outcome};
use super::context::{Context, EngineSettings};
use super::error::EngineError;
use super::plan::Order;
use super::registry::Registry;
use super::slots::Slots;
use super::task::{LoadedState, Task};
use super::{fetcher, refresh};
use crate::link::SchedulerLink;
use crate::origin::Origin;
use crate::ratelimit::HostLimits;
use crate::storage::{Journal, Store};
use crate::upload::client::PieceClient;
use api::buffers::BufferPool;
use api::proto::{Priority, RegisterPeerRequest};
use api::task::TaskId;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// How often a read-ahead waiting on a whole-task download checks that the
/// download still runs.
const WHOLE_DOWNLOAD_CHECK: Duration = Duration::from_millis(200);

/// What the engine is built from.
pub struct EngineParts {
    pub store: Store,
    pub link: Arc<SchedulerLink>,
    pub pieces: PieceClient,
    pub origin: Origin,
    pub limits: HostLimits,
    pub settings: EngineSettings,
}

#[derive(Clone)]
pub struct Engine {
    pub(super) ctx: Arc<Context>,
    pub(super) registry: Arc<Registry>,
}

impl Engine {
    /// Builds the engine and loads every task already in the cache.
    pub fn new(parts: EngineParts) -> Engine {
        let settings = parts.settings;
        let engine = Engine {
            ctx: Arc::new(Context {
                store: parts.store,
                journal: Journal::start(settings.commit_interval),
                link: parts.link,
                pieces: parts.pieces,
                origin: parts.origin,
                slots: Slots::new(settings.download_slots),
                buffers: BufferPool::new(),
                limits: parts.limits,
                settings,
            }),
            registry: Arc::default(),
        };
        let mut count = 0;
        for loaded in engine.ctx.store.load_all() {
            let Ok(id) = loaded.meta.task_id.parse::<TaskId>() else {
                continue;
            };
            let state = LoadedState {
                present: loaded.present,
                digests: loaded.digests,
                last_access: loaded.last_access,
            };
            let task = Task::new(id, loaded.meta, loaded.layout, loaded.file, Some(state));
            count = engine.registry.insert(task).1;
        }
        tracing::info!(tasks = count, "piece cache loaded");
        metrics::gauge!("dffs_tasks").set(count as f64);
        engine
    }

    pub fn link(&self) -> &Arc<SchedulerLink> {
        &self.ctx.link
    }

    pub fn is_seed(&self) -> bool {
        self.ctx.settings.seed
    }

    /// A task held here. A complete task whose content file was written
    /// outside peerd (it may be hard-linked to a user's output, which the
    /// user may edit) is dropped instead, and fetched afresh when asked
    /// for: the user keeps the edited file, the cache never serves it.
    pub fn task(&self, id: &TaskId) -> Option<Arc<Task>> {
        let task = self.registry.get(id)?;
        if task.file.modified_since_seal() {
            tracing::warn!(task = %task.id, "its cached content was modified outside peerd");
            self.evict(&task, "modified");
            return None;
        }
        Some(task)
    }

    pub fn tasks(&self) -> Vec<Arc<Task>> {
        self.registry.all()
    }

    /// Forgets a task and deletes its files (hard links to them elsewhere
    /// keep their bytes).
    pub fn evict(&self, task: &Arc<Task>, why: &'static str) {
        tracing::info!(task = %task.id, "dropping the cached task: {why}");
        metrics::counter!("dffs_cache_evictions_total", "reason" => why).increment(1);
        self.registry.remove(&task.id);
        if let Err(e) = self.ctx.store.remove(&task.id) {
            tracing::warn!(task = %task.id, "cannot delete the task's files: {e}");
        }
        let (link, id) = (self.ctx.link.clone(), task.id);
        tokio::spawn(async move { link.leave_task(&id).await });
    }

    /// Makes every piece in `pieces` present, fetching the missing ones at
    /// `priority`.
    pub async fn ensure(
        &self,
        task: &Arc<Task>,
        pieces: Range<u32>,
        priority: Priority,
    ) -> Result<(), EngineError> {
        fetcher::ensure(&self.ctx, task, pieces, priority).await
    }

    /// Fetches every missing piece of the task (see `plan` for the order).
    pub async fn download_all(&self, task: &Arc<Task>, order: Order) -> Result<(), EngineError> {
        task.touch();
        let _running = WholeDownload::start(task);
        let all = 0..task.layout.piece_count();
        bulk::download(&self.ctx, task, all, Priority::Bulk, order).await?;
        Ok(())
    }

    /// Fetches the pieces covering a read-ahead window, choosing among
    /// them like a whole-task download does, at prefetch priority.
    pub async fn prefetch(&self, task: &Arc<Task>, pieces: Range<u32>) -> Result<(), EngineError> {
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
            let (wanted, priority) = (pieces.clone(), Priority::Prefetch);
            let outcome = bulk::download(&self.ctx, task, wanted, priority, Order::InOrder).await?;
            if outcome == Outcome::Done {
                return Ok(());
            }
        }
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
        let (link, task) = (self.ctx.link.clone(), task.clone());
        tokio::spawn(async move {
            let request = RegisterPeerRequest {
                want_whole: true,
                // Lets a scheduler that restarted learn the task again.
                meta: Some(task.meta.clone()),
                private_source: !task.credentials().is_empty(),
                ..Default::default()
            };
            match link.register_peer(&task.id, request).await {
                Ok(resp) => task.set_root(resp.is_root),
                Err(status) => {
                    tracing::debug!(task = %task.id, "cannot tell the scheduler the task is wanted whole: {}", status.message());
                    task.lock().wanted_whole = false;
                }
            }
        });
    }

    /// Joins a task this host already holds, telling the scheduler which
    /// pieces it has.
    pub async fn register_existing(&self, task: &Arc<Task>) -> Result<(), EngineError> {
        refresh::rejoin(&self.ctx, task).await
    }

    /// Re-registers every task held here for which `moved` says its home
    /// scheduler is new: after that scheduler restarted, or after the set
    /// of schedulers changed.
    pub async fn resync(&self, moved: impl Fn(&TaskId) -> bool) {
        let tasks: Vec<Arc<Task>> = self.tasks().into_iter().filter(|t| moved(&t.id)).collect();
        if tasks.is_empty() {
            return;
        }
        tracing::info!(tasks = tasks.len(), "re-reporting held tasks");
        for task in tasks {
            if let Err(e) = self.register_existing(&task).await {
                tracing::warn!(task = %task.id, "cannot re-report task: {e}");
            }
        }
    }

    /// Persists every piece downloaded so far, then sends the reports
    /// still queued and leaves the cluster.
    pub async fn shutdown(&self) {
        let journal = self.ctx.journal.clone();
        let _ = tokio::task::spawn_blocking(move || journal.flush()).await;
        self.ctx.link.flush_reports().await;
        self.ctx.link.leave_host().await;
    }
}

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
