//! Opening a task: from the cache when it is there (no network at all),
//! else by joining it at the scheduler, which tells this host the task's
//! metadata and whether it is the root; the first host to ask (or a seed)
//! resolves the metadata at the origin and reports it for everyone.

use super::error::EngineError;
use super::handle::Engine;
use super::task::Task;
use crate::origin::Credentials;
use api::piece::Layout;
use api::proto::{RegisterPeerRequest, TaskInfo, TaskMeta, TaskSource, report_task_meta_request};
use api::task::TaskId;
use std::sync::Arc;

impl Engine {
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
        let _opening = self.registry.opening(id).await;
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
        let (meta, is_root) = match self.ctx.link.register_peer(&id, request).await {
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
        task.set_root(is_root);
        Ok(task)
    }

    /// Opens a task known only by id (a dffs lookup): from the cache, or by
    /// joining it at the scheduler, which must know it.
    pub async fn open_id(&self, id: TaskId) -> Result<Arc<Task>, EngineError> {
        if let Some(task) = self.task(&id) {
            return Ok(task);
        }
        let _opening = self.registry.opening(id).await;
        if let Some(task) = self.task(&id) {
            return Ok(task);
        }
        let request = RegisterPeerRequest::default();
        let resp = self
            .ctx
            .link
            .register_peer(&id, request)
            .await
            .map_err(|s| EngineError::from_scheduler(&s))?;
        let meta = resp.meta.ok_or_else(|| {
            EngineError::Unavailable(format!("task {id} is still being resolved; try again"))
        })?;
        let task = self.insert_new(id, meta)?;
        task.set_root(resp.is_root);
        Ok(task)
    }

    /// A task's metadata and local state, asking the scheduler about tasks
    /// this host has not seen, without joining them.
    pub async fn stat(&self, id: TaskId) -> Result<TaskInfo, EngineError> {
        if let Some(task) = self.task(&id) {
            return Ok(task.info());
        }
        let meta = self
            .ctx
            .link
            .stat_task(&id)
            .await
            .map_err(|s| EngineError::from_scheduler(&s))?;
        Ok(TaskInfo {
            meta: Some(meta),
            ..Default::default()
        })
    }

    pub(super) fn insert_new(&self, id: TaskId, meta: TaskMeta) -> Result<Arc<Task>, EngineError> {
        if meta.task_id != id.to_string() {
            return Err(EngineError::Invalid(format!(
                "metadata for task {id} names task {}",
                meta.task_id
            )));
        }
        let layout = Layout::new(meta.content_length, meta.piece_length)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let file = self.ctx.store.create(id, &meta, layout)?;
        let ranges = meta.accepts_ranges;
        let (task, count) = self
            .registry
            .insert(Task::new(id, meta, layout, file, None));
        metrics::gauge!("dffs_tasks").set(count as f64);
        if ranges {
            task.learned_ranges_work(self.ctx.settings.origin_requests_per_task);
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
        let resolved = self.ctx.origin.resolve(source, credentials).await?;
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
    pub(super) async fn resolve_or_report(
        &self,
        id: TaskId,
        source: &TaskSource,
        credentials: &Credentials,
    ) -> Result<TaskMeta, EngineError> {
        let error = match self.resolve(id, source, credentials).await {
            Ok(meta) => return Ok(meta),
            Err(error) => error,
        };
        let report = error.to_remote();
        let _ = self
            .ctx
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
    pub(super) async fn report_meta(&self, id: TaskId, meta: &TaskMeta) -> Result<(), EngineError> {
        self.ctx
            .link
            .report_task_meta(&id, report_task_meta_request::Result::Meta(meta.clone()))
            .await
            .map_err(|s| EngineError::from_scheduler(&s))
    }
}
