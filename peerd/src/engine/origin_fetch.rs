//! Fetching one piece from the origin, for a root or for a host with no
//! parent able to deliver it. When the origin turns out to ignore Range,
//! the one whole-object answer is used for every piece instead.

use super::context::Context;
use super::cutter::PieceCutter;
use super::error::EngineError;
use super::origin_body::OriginBody;
use super::task::{OriginMode, Task};
use super::{labels, landing};
use crate::origin::Body;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Fetches piece `n` from the origin at the priority in `level`.
pub(super) async fn fetch(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    n: u32,
    level: &Arc<AtomicU8>,
) -> Result<(), EngineError> {
    let label = labels::priority(level.load(Ordering::Relaxed));
    let url = source_url(task);
    loop {
        if task.has_piece(n) {
            return Ok(());
        }
        if task.lock().origin == OriginMode::Streaming {
            wait_for_stream(task, n).await;
            continue;
        }
        let permit = task.origin_gate.acquire(level.clone()).await;
        if task.has_piece(n) || task.lock().origin == OriginMode::Streaming {
            continue;
        }
        let range = task.layout.piece_range(n);
        let started = Instant::now();
        let credentials = task.credentials();
        match ctx
            .origin
            .get(&task.meta, &credentials, range.clone())
            .await?
        {
            Body::Range(response) => {
                task.learned_ranges_work(ctx.settings.origin_requests_per_task);
                let body = OriginBody::new(ctx, response, &url, label);
                let bytes = body.read_exact(range.end - range.start).await?;
                // The next origin request need not wait for this piece to
                // be stored.
                drop(permit);
                if landing::keep_from_origin(ctx, task, n, &bytes)? {
                    metrics::histogram!("dffs_piece_seconds", "source" => labels::FROM_ORIGIN)
                        .record(started.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            Body::Whole(response) => stream_whole_once(ctx, task, response, label).await?,
        }
    }
}

/// The task's URL, for messages.
pub(super) fn source_url(task: &Task) -> String {
    task.meta
        .source
        .as_ref()
        .map_or_else(String::new, |s| s.url.clone())
}

async fn wait_for_stream(task: &Task, n: u32) {
    let mut progress = task.subscribe();
    while !task.has_piece(n) && task.lock().origin == OriginMode::Streaming {
        let _ = tokio::time::timeout(Duration::from_millis(200), progress.changed()).await;
    }
}

/// Uses a whole-object answer to a ranged request (the origin ignores
/// Range) for every piece, unless another fetch already streams the object:
/// then this answer is dropped and its fetch waits on that stream.
pub(super) async fn stream_whole_once(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    response: reqwest::Response,
    label: &'static str,
) -> Result<(), EngineError> {
    {
        let mut state = task.lock();
        if state.origin == OriginMode::Streaming {
            return Ok(());
        }
        state.origin = OriginMode::Streaming;
    }
    tracing::info!(task = %task.id, "origin ignores Range; streaming the whole object once");
    let mut body = OriginBody::new(ctx, response, &source_url(task), label);
    let result = stream_whole(ctx, task, &mut body).await;
    task.lock().origin = OriginMode::Unknown;
    result
}

/// Consumes a whole-object body, storing each piece as it completes.
async fn stream_whole(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    body: &mut OriginBody<'_>,
) -> Result<(), EngineError> {
    let mut cutter = PieceCutter::new(task.layout, 0..task.layout.piece_count());
    while let Some(n) = cutter.next_piece(body).await? {
        landing::keep_from_origin(ctx, task, n, cutter.piece())?;
    }
    Ok(())
}
