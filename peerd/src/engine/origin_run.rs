//! Origin runs: one ranged GET for many consecutive pieces.
//!
//! A root that wants a whole task fetches it from the origin in runs of
//! consecutive pieces rather than one request per piece. With a request
//! per piece, the bytes asked for at any moment are capped at requests ×
//! piece length. A root's uplink is busy sending pieces to its children,
//! so its requests and TCP acknowledgements wait in that queue, the round
//! trip to the origin grows to a hundred milliseconds or more, and the cap
//! falls below what the link holds in one round trip: the origin's link
//! idles between responses. A run keeps one flow busy for megabytes, so
//! the flow's window, not the request count, covers the round trip.
//!
//! Each piece of a run is stored, published and handed to its waiters as
//! soon as its last byte arrives, not when the run ends. A piece the run
//! cannot deliver (the origin failed or cut the body short) goes back to an
//! ordinary per-piece fetch, which retries it. How long a run is lives in
//! `runs`.

use super::context::Context;
use super::cutter::PieceCutter;
use super::error::EngineError;
use super::origin_body::OriginBody;
use super::runs::run_pieces;
use super::task::{Claim, Task};
use super::{fetcher, labels, landing, origin_fetch};
use crate::origin::Body;
use std::iter::Peekable;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::vec::IntoIter;

/// Keeps a root's origin stream up to a run ahead of a child that reads in
/// order, without waiting for the child to ask.
///
/// A root fetches what its children ask for. Lazy readers ask one window
/// at a time, and at the start of a swarm their windows are small and the
/// first pieces reach them only after a hop or two: the root's origin link
/// sat idle between asks (0.44 s early in a 24-host `cp` through dffs).
/// A child asking for the piece right after one the root holds or is
/// fetching reads in order, so the root runs on to `RUN_BYTES` past it. A
/// random reader's pieces are not adjacent and pull nothing extra, and a
/// reader that stops leaves at most one run fetched for nothing.
pub(super) fn read_ahead(ctx: &Arc<Context>, task: &Arc<Task>, n: u32) {
    let run = run_pieces(task.layout);
    let end = n
        .saturating_add(1)
        .saturating_add(run)
        .min(task.layout.piece_count());
    let Some(gap) = task.run_ahead_gap(n, end) else {
        return;
    };
    // Runs shorter than a quarter run would each cost a request for little;
    // a short gap between pieces on their way is left to per-piece asks.
    if gap.len() < (run / 4).max(1) as usize {
        return;
    }
    let claims = task.claim_run(gap.start, gap.end, run, api::proto::Priority::Prefetch);
    if !claims.is_empty() {
        tokio::spawn(fetch(ctx.clone(), task.clone(), claims));
    }
}

/// Fetches the claimed pieces, which must be consecutive, with one
/// request. Every claim ends: delivered here, or handed to a per-piece
/// fetch.
pub(super) async fn fetch(ctx: Arc<Context>, task: Arc<Task>, claims: Vec<Claim>) {
    let (Some(first), Some(last)) = (claims.first(), claims.last()) else {
        return;
    };
    let range = task.layout.piece_range(first.n).start..task.layout.piece_range(last.n).end;
    let priority = first.priority.clone();
    let label = labels::priority(priority.load(Ordering::Relaxed));
    let _slot = ctx.slots.acquire(priority.clone()).await;
    let _permit = task.origin_gate.acquire(priority).await;
    let mut pending = claims.into_iter().peekable();
    let credentials = task.credentials();
    let answer = ctx.origin.get(&task.meta, &credentials, range.clone());
    let result = match answer.await {
        Ok(Body::Range(response)) => {
            let url = origin_fetch::source_url(&task);
            let mut body = OriginBody::new(&ctx, response, &url, label);
            receive(&ctx, &task, &mut body, &mut pending).await
        }
        // The origin said it serves ranges, or once did, and now sends the
        // whole object: that one answer serves every piece, and the claims
        // then find their pieces present.
        Ok(Body::Whole(response)) => {
            origin_fetch::stream_whole_once(&ctx, &task, response, label).await
        }
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result
        && pending.peek().is_some()
    {
        tracing::debug!(task = %task.id, "origin run ended early, fetching the rest piece by piece: {e}");
    }
    for claim in pending {
        fetcher::spawn(&ctx, &task, claim, None);
    }
}

/// Reads a run's body, ending each claim as its piece completes.
async fn receive(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    body: &mut OriginBody<'_>,
    pending: &mut Peekable<IntoIter<Claim>>,
) -> Result<(), EngineError> {
    let Some(first) = pending.peek().map(|c| c.n) else {
        return Ok(());
    };
    let mut cutter = PieceCutter::new(task.layout, first..first + pending.len() as u32);
    while let Some(n) = cutter.next_piece(body).await? {
        // The cutter stops at the run's last piece, so a claim is left.
        let Some(claim) = pending.next() else { break };
        debug_assert_eq!(claim.n, n);
        let result = landing::keep_from_origin(ctx, task, n, cutter.piece()).map(drop);
        task.finish_fetch(n);
        claim.done.send_replace(Some(result.clone()));
        result?;
    }
    Ok(())
}
