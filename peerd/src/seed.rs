//! Seed mode: keep a command stream open to each scheduler and root the
//! tasks it hands over.

use crate::engine::Engine;
use std::time::Duration;

/// Holds the command stream of scheduler `index` open for the life of the
/// process, reconnecting after failures.
pub async fn run_session(engine: Engine, index: usize) {
    let link = &engine.inner.link;
    loop {
        match link.seed_session(index).await {
            Ok(mut commands) => {
                tracing::info!(scheduler = %link.scheduler_addr(index), "seed session open");
                loop {
                    match commands.message().await {
                        Ok(Some(command)) => {
                            let engine = engine.clone();
                            tokio::spawn(async move {
                                let task = command.task_id.clone();
                                if let Err(e) = engine.handle_seed_command(command).await {
                                    tracing::warn!(%task, "seed command failed: {e}");
                                }
                            });
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(scheduler = %link.scheduler_addr(index), "seed session lost: {}", e.message());
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(scheduler = %link.scheduler_addr(index), "cannot open seed session: {}", e.message())
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
