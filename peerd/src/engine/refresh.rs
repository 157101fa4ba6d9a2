//! Keeping a task's view of the swarm fresh: its parents and what each
//! holds, the digests it still lacks, and whether this host is the root.
//! A scheduler that forgot the task (it restarted, or the task's home
//! moved) is told about it again.

use super::context::Context;
use super::error::EngineError;
use super::landing;
use super::task::{ParentView, Task};
use api::digest::PieceDigest;
use api::error::{ErrorKind, RemoteError};
use api::piece::Bitmap;
use api::proto::{RegisterPeerRequest, report_task_meta_request};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parent lists younger than this are not refreshed again.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Asks the scheduler for the task's parents and the digests still
/// missing. Concurrent callers share one request.
pub(super) async fn parents(ctx: &Arc<Context>, task: &Arc<Task>) -> Result<(), EngineError> {
    refresh(ctx, task, None).await
}

/// The digest of piece `n`, which this host holds unverified. A root
/// reports a piece's digest before serving it, so a missing digest is at
/// most a report in flight: ask a few times, then give up.
pub(super) async fn digest(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    n: u32,
) -> Result<PieceDigest, EngineError> {
    for attempt in 0..5u64 {
        refresh(ctx, task, Some(n)).await?;
        if let Some(d) = task.digest(n) {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
    }
    Err(EngineError::Unavailable(format!(
        "the scheduler has no digest for piece {n} of task {}, so it cannot be verified",
        task.id
    )))
}

/// Like `parents`, but a caller holding piece `needed_digest` without its
/// digest asks at once rather than after the usual interval: a piece a
/// root has just fetched arrives before the next refresh would, and
/// waiting out the interval capped lazy reads from a cold cluster at a few
/// pieces per 100 ms.
async fn refresh(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    needed_digest: Option<u32>,
) -> Result<(), EngineError> {
    let _one_at_a_time = task.refresh.lock().await;
    let satisfied = match needed_digest {
        // Another caller's refresh may have brought it meanwhile.
        Some(n) => task.digest(n).is_some(),
        None => task
            .lock()
            .parents_at
            .is_some_and(|t| t.elapsed() < REFRESH_MIN_INTERVAL),
    };
    if satisfied {
        return Ok(());
    }
    let want_digests = task.missing_digests();
    let link = &ctx.link;
    let response = match link.get_parents(&task.id, want_digests.clone()).await {
        Ok(r) => r,
        Err(status) if RemoteError::from_status(&status).kind == ErrorKind::NotFound => {
            rejoin(ctx, task).await?;
            link.get_parents(&task.id, want_digests)
                .await
                .map_err(|s| EngineError::from_scheduler(&s))?
        }
        Err(status) => return Err(EngineError::from_scheduler(&status)),
    };
    let count = task.layout.piece_count();
    task.learn_digests(&response.digests);
    let mut state = task.lock();
    state.parents = response
        .parents
        .into_iter()
        .map(|p| ParentView {
            bitmap: Bitmap::from_bytes(count, &p.bitmap),
            host_id: p.host_id,
            addr: p.upload_addr,
            is_root: p.is_root,
        })
        .collect();
    state.is_root = response.is_root;
    state.parents_at = Some(Instant::now());
    drop(state);
    task.capacity.notify_waiters();
    Ok(())
}

/// Joins a task this host already holds, telling the scheduler which
/// pieces it has (after a scheduler restart, or when the task's home
/// scheduler changed). A scheduler that lost the task resolves it again;
/// when it asks this host to, the metadata this host holds is the answer.
/// A host that is (again) the task's root reports the digests of every
/// piece it holds, since children verify against them and a restarted
/// scheduler has none.
pub(super) async fn rejoin(ctx: &Arc<Context>, task: &Arc<Task>) -> Result<(), EngineError> {
    let request = RegisterPeerRequest {
        bitmap: task.lock().present.as_bytes().to_vec(),
        meta: Some(task.meta.clone()),
        private_source: !task.credentials().is_empty(),
        ..Default::default()
    };
    let resp = ctx
        .link
        .register_peer(&task.id, request)
        .await
        .map_err(|s| EngineError::from_scheduler(&s))?;
    if resp.must_resolve {
        let meta = report_task_meta_request::Result::Meta(task.meta.clone());
        ctx.link
            .report_task_meta(&task.id, meta)
            .await
            .map_err(|s| EngineError::from_scheduler(&s))?;
    }
    task.set_root(resp.is_root);
    if resp.is_root {
        landing::republish(ctx, task);
    }
    Ok(())
}
