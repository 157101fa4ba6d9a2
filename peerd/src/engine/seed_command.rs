//! Seed mode: the commands a scheduler sends its seeds. A seed roots the
//! task it is told about, resolving it at the origin first if nobody has,
//! and fetches all of it when a child wants the whole task.

use super::error::EngineError;
use super::handle::Engine;
use super::landing;
use super::plan::Order;
use crate::origin::Credentials;
use api::proto::SeedCommand;
use api::task::{TaskError, TaskId};

impl Engine {
    /// Carries out a seed command: root the task, resolving it first if
    /// nobody has, and fetch all of it when asked.
    pub async fn handle_seed_command(&self, command: SeedCommand) -> Result<(), EngineError> {
        let id: TaskId = command
            .task_id
            .parse()
            .map_err(|e: TaskError| EngineError::Invalid(e.to_string()))?;
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
        task.set_root(true);
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
            landing::release_digests(&self.ctx, &task);
            reported?;
        }
        self.register_existing(&task).await
    }
}
