//! Seed mode: keep a command stream open to each scheduler and root the
//! tasks it hands over. The streams follow the set of schedulers: one is
//! opened for a scheduler that joins the set, and closed for one that
//! leaves it.

use crate::engine::Engine;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How often the sessions are checked against the set of schedulers.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Pause before reopening a session that failed.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Keeps one session per scheduler until `stop` is cancelled.
pub async fn run(engine: Engine, stop: CancellationToken) {
    let mut sessions: JoinSet<()> = JoinSet::new();
    let mut open: HashMap<SocketAddr, AbortHandle> = HashMap::new();
    loop {
        let wanted = engine.link().addrs();
        open.retain(|addr, handle| {
            let keep = wanted.contains(addr) && !handle.is_finished();
            if !keep {
                handle.abort();
            }
            keep
        });
        for addr in wanted {
            open.entry(addr)
                .or_insert_with(|| sessions.spawn(session(engine.clone(), addr)));
        }
        // Reap what ended, so the set does not grow.
        while sessions.try_join_next().is_some() {}
        tokio::select! {
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
            () = stop.cancelled() => break,
        }
    }
    sessions.shutdown().await;
}

/// Holds the command stream of the scheduler at `addr` open, reopening it
/// after failures, and carries out each command it sends.
async fn session(engine: Engine, addr: SocketAddr) {
    let link = engine.link().clone();
    loop {
        match link.seed_session(addr).await {
            Ok(mut commands) => {
                tracing::info!(scheduler = %addr, "seed session open");
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
                            tracing::warn!(scheduler = %addr, "seed session lost: {}", e.message());
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(scheduler = %addr, "cannot open seed session: {}", e.message())
            }
        }
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}
