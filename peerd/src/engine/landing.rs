//! A verified piece lands: its bytes go to the content file, it becomes
//! present (and, in a batch, durable in the piece log), waiters are woken,
//! and the scheduler is told. A root's digests go out through the
//! publisher (see `publisher`), everyone else's pieces in the next batched
//! report.

use super::context::Context;
use super::error::EngineError;
use super::labels;
use super::task::Task;
use api::digest::PieceDigest;
use std::sync::Arc;

/// Stores a verified piece and makes it visible. Returns false when it was
/// present already (a concurrent fetch won).
pub(super) fn store(
    ctx: &Context,
    task: &Task,
    n: u32,
    bytes: &[u8],
    digest: PieceDigest,
) -> Result<bool, EngineError> {
    if task.has_piece(n) {
        return Ok(false);
    }
    task.file
        .write_at(bytes, task.layout.piece_range(n).start)?;
    let new = task.record_present(n, digest, |complete| {
        ctx.journal.record(task.file.clone(), n, digest);
        if complete && let Err(e) = task.file.seal() {
            tracing::warn!(task = %task.id, "cannot seal the completed task: {e}");
        }
    });
    Ok(new)
}

/// Stores a piece fetched from the origin and tells the scheduler. Returns
/// false when the piece was already present (a concurrent fetch won).
pub(super) fn keep_from_origin(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    n: u32,
    bytes: &[u8],
) -> Result<bool, EngineError> {
    let digest = PieceDigest::of(bytes);
    if !store(ctx, task, n, bytes, digest)? {
        return Ok(false);
    }
    tracing::trace!(task = %task.id, piece = n, "piece fetched from the origin");
    metrics::counter!("dffs_download_pieces_total", "source" => labels::FROM_ORIGIN).increment(1);
    // A root's digests go out at once, since children verify against them,
    // and the upload server holds each piece until its report is
    // acknowledged; a host that is not the root may not publish digests.
    if task.is_root() {
        if task.publisher.push(n, digest) {
            tokio::spawn(publish(ctx.clone(), task.clone()));
        }
    } else {
        ctx.link.report_piece_later(task.id, n);
    }
    Ok(true)
}

/// Queues the digest of every piece this host holds, for a root whose
/// scheduler lost them (it restarted) or that has just become the root.
pub(super) fn republish(ctx: &Arc<Context>, task: &Arc<Task>) {
    let held: Vec<(u32, PieceDigest)> = {
        let state = task.lock();
        state
            .present
            .iter_ones()
            .filter_map(|n| Some((n, state.digests.get(n as usize).copied().flatten()?)))
            .collect()
    };
    let mut start = false;
    for (n, digest) in held {
        start |= task.publisher.push(n, digest);
    }
    if start {
        tokio::spawn(publish(ctx.clone(), task.clone()));
    }
}

/// Ends a `Publisher::hold`, reporting whatever queued meanwhile.
pub(super) fn release_digests(ctx: &Arc<Context>, task: &Arc<Task>) {
    tokio::spawn(publish(ctx.clone(), task.clone()));
}

/// Reports queued digests until none are left. A failed report is not
/// retried: the pieces are served anyway, and a child that finds no digest
/// for one does not take it.
async fn publish(ctx: Arc<Context>, task: Arc<Task>) {
    while let Some(batch) = task.publisher.take() {
        let pieces: Vec<u32> = batch.iter().map(|d| d.number).collect();
        let started = std::time::Instant::now();
        if let Err(e) = ctx.link.report_digests(&task.id, batch).await {
            tracing::warn!(task = %task.id, "cannot report digests; children cannot verify these pieces yet: {}", e.message());
        }
        tracing::trace!(task = %task.id, pieces = pieces.len(), us = started.elapsed().as_micros() as u64, "digests reported");
        task.publisher.done(&pieces);
    }
}
