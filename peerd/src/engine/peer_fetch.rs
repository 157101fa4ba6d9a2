//! Fetching one piece from a parent: the transfer (following a redirect
//! to a host the parent fanned the piece out to, see `fanout`), the check
//! against the root's digest, and what a failure says about the parent.

use super::context::Context;
use super::error::EngineError;
use super::task::{ParentView, Task};
use super::{labels, landing, refresh};
use crate::upload::client::FetchError;
use crate::upload::protocol::{PieceRequest, ReplyStatus};
use api::digest::PieceDigest;
use api::piece::Bitmap;
use api::proto::{BadParent, ParentSpeed, Priority};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a parent that failed is left alone.
const BLOCK_AFTER_ERROR: Duration = Duration::from_secs(5);
const BLOCK_AFTER_DOWN: Duration = Duration::from_secs(30);
const BLOCK_AFTER_BUSY: Duration = Duration::from_millis(500);
const BLOCK_AFTER_CORRUPT: Duration = Duration::from_secs(600);

pub(super) fn release_parent(task: &Task, host_id: &str) {
    let mut state = task.lock();
    if let Some(load) = state.load.get_mut(host_id) {
        *load = load.saturating_sub(1);
    }
    drop(state);
    task.capacity.notify_waiters();
}

/// One request counted in a parent's load (see `State::load`), given
/// back exactly once: when the request ends, or earlier when the parent
/// redirects it, since a redirected request no longer costs that parent
/// anything while it waits at the holder.
pub(super) struct Counted<'a> {
    task: &'a Task,
    host_id: Option<String>,
}

impl<'a> Counted<'a> {
    pub(super) fn new(task: &'a Task, host_id: &str) -> Self {
        Counted {
            task,
            host_id: Some(host_id.to_string()),
        }
    }

    fn release(&mut self) {
        if let Some(host_id) = self.host_id.take() {
            release_parent(self.task, &host_id);
        }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

fn block_parent(task: &Task, host_id: &str, for_how_long: Duration) {
    task.lock()
        .blocked
        .insert(host_id.to_string(), Instant::now() + for_how_long);
}

/// Fetches piece `n` from `parent`, verifies it and stores it.
pub(super) async fn from_parent(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    n: u32,
    parent: &ParentView,
    level: u8,
    counted: &mut Counted<'_>,
) -> Result<(), EngineError> {
    let request = PieceRequest {
        task: task.id,
        piece: n,
        urgent: level >= Priority::Read as u8,
        wait: false,
        no_redirect: false,
        reply_port: ctx.settings.upload_port,
    };
    let expected = task.layout.piece_len(n);
    let started = Instant::now();
    tracing::trace!(task = %task.id, piece = n, to = %parent.addr, "piece requested");
    let mut buf = ctx.buffers.take(expected as usize);
    metrics::gauge!("dffs_transfers_in_flight").increment(1.0);
    let source = transfer(ctx, task, n, parent, request, &mut buf, counted).await;
    metrics::gauge!("dffs_transfers_in_flight").decrement(1.0);
    let (source, received) = source?;
    let elapsed = started.elapsed();
    let digest = match task.digest(n) {
        Some(d) => d,
        None => refresh::digest(ctx, task, n).await?,
    };
    if received != digest {
        return Err(corrupt(ctx, task, n, &source));
    }
    tracing::trace!(task = %task.id, piece = n, from = %source.addr, ms = elapsed.as_millis() as u64, "piece received");
    if landing::store(ctx, task, n, &buf, digest)? {
        let label = labels::priority(level);
        metrics::counter!("dffs_download_bytes_total", "source" => labels::FROM_PEER, "priority" => label)
            .increment(expected);
        metrics::counter!("dffs_download_pieces_total", "source" => labels::FROM_PEER).increment(1);
        metrics::histogram!("dffs_piece_seconds", "source" => labels::FROM_PEER)
            .record(elapsed.as_secs_f64());
        ctx.link.report_piece_later(task.id, n);
        let speed = ParentSpeed {
            host_id: source.host_id.clone(),
            bytes: expected,
            micros: elapsed.as_micros() as u64,
        };
        ctx.link.report_speed_later(task.id, speed);
    }
    Ok(())
}

/// A parent sent bytes that fail the root's digest: it is kept away from
/// this task for long, and reported.
fn corrupt(ctx: &Context, task: &Task, n: u32, source: &ParentView) -> EngineError {
    tracing::warn!(task = %task.id, piece = n, parent = %source.addr, "parent sent a corrupt piece; isolating it");
    metrics::counter!("dffs_piece_failures_total", "reason" => "corrupt").increment(1);
    block_parent(task, &source.host_id, BLOCK_AFTER_CORRUPT);
    if source.is_root {
        task.lock().root_corrupt = true;
    }
    let bad = BadParent {
        host_id: source.host_id.clone(),
        piece: n,
        corrupt: true,
    };
    ctx.link.report_bad_parent_later(task.id, bad);
    EngineError::Unavailable(format!(
        "piece {n} from {} failed verification",
        source.addr
    ))
}

/// Receives piece `n` into `buf` from `parent`, following one redirect
/// (see `fanout`). Returns the host the bytes came from and their digest.
async fn transfer(
    ctx: &Context,
    task: &Task,
    n: u32,
    parent: &ParentView,
    request: PieceRequest,
    buf: &mut [u8],
    counted: &mut Counted<'_>,
) -> Result<(ParentView, PieceDigest), EngineError> {
    let peers = &ctx.pieces;
    let redirect_to = match peers.fetch(&parent.addr, request, buf).await {
        Ok(digest) => return Ok((parent.clone(), digest)),
        Err(FetchError::Refused {
            status: ReplyStatus::Redirect,
            reason,
            ..
        }) => reason,
        Err(e) => return Err(parent_failed(ctx, task, n, parent, e)),
    };
    // The parent can take another request from this host at once; the
    // root's few request slots would otherwise sit on waits elsewhere.
    counted.release();
    // The holder is known only by address; it stands for itself.
    let holder = ParentView {
        host_id: redirect_to.clone(),
        addr: redirect_to,
        is_root: false,
        bitmap: Bitmap::default(),
    };
    let blocked = task.lock().blocked.contains_key(&holder.host_id);
    if !blocked {
        // Redirected once, answered there: a chain of redirects could
        // go round in a circle.
        let wait = PieceRequest {
            wait: true,
            no_redirect: true,
            ..request
        };
        match peers.fetch(&holder.addr, wait, buf).await {
            Ok(digest) => {
                metrics::counter!("dffs_redirects_followed_total", "result" => "ok").increment(1);
                return Ok((holder, digest));
            }
            Err(e) => {
                tracing::debug!(task = %task.id, piece = n, "redirect to {} failed: {e}", holder.addr);
                metrics::counter!("dffs_redirects_followed_total", "result" => "failed")
                    .increment(1);
                block_parent(task, &holder.host_id, BLOCK_AFTER_BUSY);
            }
        }
    }
    let direct = PieceRequest {
        no_redirect: true,
        ..request
    };
    match peers.fetch(&parent.addr, direct, buf).await {
        Ok(digest) => Ok((parent.clone(), digest)),
        Err(e) => Err(parent_failed(ctx, task, n, parent, e)),
    }
}

fn parent_failed(
    ctx: &Context,
    task: &Task,
    n: u32,
    parent: &ParentView,
    error: FetchError,
) -> EngineError {
    let (block, report) = match &error {
        // Its bitmap was stale; not its fault.
        FetchError::Refused {
            status: ReplyStatus::NotFound,
            ..
        } => {
            let mut state = task.lock();
            if let Some(p) = state
                .parents
                .iter_mut()
                .find(|p| p.host_id == parent.host_id)
            {
                p.bitmap.clear(n);
            }
            (None, false)
        }
        FetchError::Refused {
            status: ReplyStatus::Busy,
            ..
        } => (Some(BLOCK_AFTER_BUSY), false),
        // Nothing listens there: the peer is down until it says otherwise.
        FetchError::Connect { .. } => (Some(BLOCK_AFTER_DOWN), true),
        _ => (Some(BLOCK_AFTER_ERROR), true),
    };
    tracing::debug!(task = %task.id, piece = n, "parent failed: {error}");
    metrics::counter!("dffs_piece_failures_total", "reason" => "parent").increment(1);
    if let Some(d) = block {
        block_parent(task, &parent.host_id, d);
    }
    if report {
        ctx.link.report_bad_parent_later(
            task.id,
            BadParent {
                host_id: parent.host_id.clone(),
                piece: n,
                corrupt: false,
            },
        );
    }
    EngineError::Unavailable(error.to_string())
}
