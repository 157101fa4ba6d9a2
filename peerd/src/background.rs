//! peerd's background loops, each until its stop token is cancelled:
//! keeping this host announced to its schedulers, and keeping the set of
//! schedulers in step with what their names resolve to.

use crate::engine::Engine;
use crate::link::SchedulerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often scheduler names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// Keepalive interval until a scheduler says otherwise.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);

/// Announces this host to every scheduler each keepalive, with its current
/// upload load, and re-reports held tasks to a scheduler that did not
/// know this host (it restarted).
pub async fn announce(engine: Engine, uploads: Arc<AtomicU32>, stop: CancellationToken) {
    let link = engine.link().clone();
    loop {
        link.set_uploads_in_flight(uploads.load(Ordering::Relaxed));
        let (resync, keepalive) = link.announce().await;
        for addr in resync {
            engine.resync(|task| link.is_home(task, addr)).await;
        }
        tokio::select! {
            () = tokio::time::sleep(keepalive.unwrap_or(DEFAULT_KEEPALIVE)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Resolves the configured scheduler names now, for the start: every
/// address each stands for. Errors name what failed; names that resolve
/// to nothing are an error only when none resolves.
pub fn resolve_names(names: &[SchedulerName]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        match name.resolve() {
            Ok(found) => addrs.extend(found),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if addrs.is_empty() {
        anyhow::bail!(
            "no scheduler address could be used: {}; check --scheduler",
            errors.join("; ")
        );
    }
    for e in errors {
        tracing::warn!("{e}; using the other schedulers");
    }
    Ok(addrs)
}

/// Resolves the scheduler names again every so often. When the addresses
/// change (a scheduler added behind a name, or gone), the link's set is
/// replaced and every held task whose home moved is reported to its new
/// home. A lookup that fails keeps the last set.
pub async fn follow_names(engine: Engine, names: Vec<SchedulerName>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RESOLVE_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let mut addrs = Vec::new();
        for name in &names {
            match name.resolve_async().await {
                Ok(found) => addrs.extend(found),
                Err(e) => {
                    tracing::debug!(
                        scheduler = name.as_str(),
                        "cannot resolve: {e}; keeping the last set"
                    );
                    addrs.clear();
                    break;
                }
            }
        }
        if addrs.is_empty() {
            continue;
        }
        if let Some(change) = engine.link().replace(addrs) {
            engine.resync(|task| change.moved(task)).await;
        }
    }
}
