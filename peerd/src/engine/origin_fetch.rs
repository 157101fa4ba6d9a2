//! Fetching pieces from the origin, for a root or a host with no parent
//! able to deliver.

use super::task::{OriginMode, Task};
use super::{Engine, EngineError};
use crate::origin::Body;
use api::digest::PieceDigest;
use api::piece::Layout;
use api::proto;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Fetches piece `n` from the origin. When the origin turns out to ignore
/// Range, the one full response is used for every piece instead.
pub(super) async fn fetch(
    engine: &Engine,
    task: &Arc<Task>,
    n: u32,
    priority_level: &Arc<AtomicU8>,
) -> Result<(), EngineError> {
    let priority = super::fetch::priority_label(priority_level.load(Ordering::Relaxed));
    loop {
        if task.has_piece(n) {
            return Ok(());
        }
        if task.lock().origin == OriginMode::Streaming {
            wait_for_stream(task, n).await;
            continue;
        }
        let permit = task.origin_gate.acquire(priority_level.clone()).await;
        if task.has_piece(n) || task.lock().origin == OriginMode::Streaming {
            continue;
        }
        let range = task.layout.piece_range(n);
        let started = Instant::now();
        let credentials = task.credentials();
        match engine
            .inner
            .origin
            .get(&task.meta, &credentials, range.clone())
            .await?
        {
            Body::Range(response) => {
                learned_ranges_work(engine, task);
                let bytes = read_exact(
                    engine,
                    response,
                    range.end - range.start,
                    &task.meta,
                    priority,
                )
                .await?;
                // The next origin request need not wait for this piece to
                // be stored.
                drop(permit);
                if keep(engine, task, n, &bytes)? {
                    metrics::histogram!("dffs_piece_seconds", "source" => "origin")
                        .record(started.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            Body::Whole(response) => stream_whole_once(engine, task, response, priority).await?,
        }
    }
}

/// From now on the task's origin is fetched in ranges, several at a time
/// and in runs (see `origin_run`).
pub(super) fn learned_ranges_work(engine: &Engine, task: &Task) {
    let mut state = task.lock();
    if state.origin == OriginMode::Unknown {
        state.origin = OriginMode::Ranged;
        drop(state);
        let more = engine
            .inner
            .settings
            .origin_requests_per_task
            .saturating_sub(1);
        task.origin_gate.add_permits(more);
    }
}

async fn wait_for_stream(task: &Task, n: u32) {
    let mut progress = task.subscribe();
    while !task.has_piece(n) && task.lock().origin == OriginMode::Streaming {
        let _ = tokio::time::timeout(Duration::from_millis(200), progress.changed()).await;
    }
}

/// Reads a ranged body that must be exactly `len` bytes.
async fn read_exact(
    engine: &Engine,
    mut response: reqwest::Response,
    len: u64,
    meta: &proto::TaskMeta,
    priority: &'static str,
) -> Result<Vec<u8>, EngineError> {
    let url = meta.source.as_ref().map_or("", |s| s.url.as_str());
    let mut bytes = Vec::with_capacity(len as usize);
    while let Some(chunk) = next_counted_chunk(engine, &mut response, url, priority).await? {
        if bytes.len() + chunk.len() > len as usize {
            return Err(short_or_long(url, "more"));
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != len {
        return Err(short_or_long(url, "fewer"));
    }
    Ok(bytes)
}

fn short_or_long(url: &str, which: &str) -> EngineError {
    EngineError::Origin {
        http_status: 0,
        message: format!("origin sent {which} bytes than it announced for {url}"),
        retryable: true,
    }
}

async fn next_chunk(
    response: &mut reqwest::Response,
    url: &str,
) -> Result<Option<bytes::Bytes>, EngineError> {
    response.chunk().await.map_err(|e| EngineError::Origin {
        http_status: 0,
        message: format!(
            "reading from origin {url} failed: {}",
            crate::origin::describe(&e)
        ),
        retryable: true,
    })
}

/// Uses a whole-object answer to a ranged request (the origin ignores
/// Range) for every piece, unless another fetch already streams the object:
/// then this answer is dropped and its fetch waits on that stream.
pub(super) async fn stream_whole_once(
    engine: &Engine,
    task: &Arc<Task>,
    response: reqwest::Response,
    priority: &'static str,
) -> Result<(), EngineError> {
    {
        let mut state = task.lock();
        if state.origin == OriginMode::Streaming {
            return Ok(());
        }
        state.origin = OriginMode::Streaming;
    }
    tracing::info!(task = %task.id, "origin ignores Range; streaming the whole object once");
    let result = stream_whole(engine, task, response, priority).await;
    task.lock().origin = OriginMode::Unknown;
    result
}

/// Consumes a whole-object response, storing each piece as it completes.
async fn stream_whole(
    engine: &Engine,
    task: &Arc<Task>,
    mut response: reqwest::Response,
    priority: &'static str,
) -> Result<(), EngineError> {
    let url = task.meta.source.as_ref().map_or("", |s| s.url.as_str());
    let mut cutter = PieceCutter::new(task.layout, 0..task.layout.piece_count());
    while let Some(n) = cutter
        .next_piece(engine, &mut response, url, priority)
        .await?
    {
        keep(engine, task, n, cutter.piece())?;
    }
    Ok(())
}

/// Cuts an origin body that starts at a piece's first byte into whole
/// pieces, so each can be stored as soon as its last byte arrives.
pub(super) struct PieceCutter {
    layout: Layout,
    next: u32,
    end: u32,
    buf: Vec<u8>,
    /// What is left of the body's last chunk.
    rest: bytes::Bytes,
}

impl PieceCutter {
    pub(super) fn new(layout: Layout, pieces: Range<u32>) -> Self {
        PieceCutter {
            layout,
            next: pieces.start,
            end: pieces.end,
            buf: Vec::with_capacity(layout.piece_length as usize),
            rest: bytes::Bytes::new(),
        }
    }

    /// Reads `response` until the next piece is complete and returns its
    /// number (its bytes are in `piece()` until the next call); None once
    /// the body ended with every piece complete. A body that ends early or
    /// runs past the last piece is an error.
    pub(super) async fn next_piece(
        &mut self,
        engine: &Engine,
        response: &mut reqwest::Response,
        url: &str,
        priority: &'static str,
    ) -> Result<Option<u32>, EngineError> {
        loop {
            let chunk = std::mem::take(&mut self.rest);
            let mut rest = &chunk[..];
            let done = self
                .fill(&mut rest)
                .ok_or_else(|| short_or_long(url, "more"))?;
            self.rest = chunk.slice(chunk.len() - rest.len()..);
            if done.is_some() {
                return Ok(done);
            }
            match next_counted_chunk(engine, response, url, priority).await? {
                Some(chunk) => self.rest = chunk,
                None => return self.check_done(url).map(|()| None),
            }
        }
    }

    /// Moves bytes from the front of `rest` into the current piece. Returns
    /// `Some(Some(n))` when piece `n` is complete (its bytes are in
    /// `piece()` until the next call), `Some(None)` when `rest` ran out
    /// first, and None when `rest` holds bytes past the last piece.
    fn fill(&mut self, rest: &mut &[u8]) -> Option<Option<u32>> {
        if self.next < self.end && self.buf.len() as u64 == self.layout.piece_len(self.next) {
            self.buf.clear();
            self.next += 1;
        }
        if rest.is_empty() {
            return Some(None);
        }
        if self.next >= self.end {
            return None;
        }
        let want = self.layout.piece_len(self.next) as usize - self.buf.len();
        let (take, left) = rest.split_at(want.min(rest.len()));
        self.buf.extend_from_slice(take);
        *rest = left;
        Some((take.len() == want).then_some(self.next))
    }

    pub(super) fn piece(&self) -> &[u8] {
        &self.buf
    }

    /// Errors unless every piece was completed (a piece counts once the
    /// `fill` after it has run, which `next_piece` always does).
    fn check_done(&self, url: &str) -> Result<(), EngineError> {
        if self.next >= self.end {
            Ok(())
        } else {
            Err(short_or_long(url, "fewer"))
        }
    }
}

/// The next chunk of an origin body, after the host's download limit and
/// counted in the metrics.
async fn next_counted_chunk(
    engine: &Engine,
    response: &mut reqwest::Response,
    url: &str,
    priority: &'static str,
) -> Result<Option<bytes::Bytes>, EngineError> {
    let chunk = next_chunk(response, url).await?;
    if let Some(chunk) = &chunk {
        engine.inner.limits.download.take(chunk.len()).await;
        metrics::counter!("dffs_download_bytes_total", "source" => "origin", "priority" => priority)
            .increment(chunk.len() as u64);
    }
    Ok(chunk)
}

/// Stores a piece fetched from the origin and tells the scheduler. Returns
/// false when the piece was already present (a concurrent fetch won).
pub(super) fn keep(
    engine: &Engine,
    task: &Arc<Task>,
    n: u32,
    bytes: &[u8],
) -> Result<bool, EngineError> {
    let digest = PieceDigest::of(bytes);
    if !task.store_piece(engine, n, bytes, digest)? {
        return Ok(false);
    }
    tracing::trace!(task = %task.id, piece = n, "piece fetched from the origin");
    metrics::counter!("dffs_download_pieces_total", "source" => "origin").increment(1);
    publish(engine, task, n, digest);
    Ok(true)
}

/// Tells the scheduler about pieces fetched from the origin. A root's
/// digests go out at once, since children verify against them, and the
/// upload server holds each piece until its report is acknowledged (see
/// `publish`); a host that is not the root may not publish digests.
fn publish(engine: &Engine, task: &Arc<Task>, n: u32, digest: PieceDigest) {
    if task.lock().is_root {
        super::publish::queue(engine, task, n, digest);
    } else {
        engine.inner.link.report_piece_later(task.id, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 256 << 10;

    /// Feeds `body` in `chunk`-byte chunks; returns the pieces cut, whether
    /// the body ran past the last piece, and whether all pieces came.
    fn cut(pieces: Range<u32>, body: &[u8], chunk: usize) -> (Vec<(u32, Vec<u8>)>, bool, bool) {
        let layout = Layout::new(2 * PIECE + 5, PIECE).expect("layout");
        let mut cutter = PieceCutter::new(layout, pieces);
        let mut out = Vec::new();
        for part in body.chunks(chunk) {
            let mut rest = part;
            loop {
                match cutter.fill(&mut rest) {
                    Some(Some(n)) => out.push((n, cutter.piece().to_vec())),
                    Some(None) => break,
                    None => return (out, true, false),
                }
            }
        }
        (out, false, cutter.check_done("u").is_ok())
    }

    #[test]
    fn a_body_is_cut_at_piece_boundaries_whatever_its_chunks() {
        let body: Vec<u8> = (0..2 * PIECE + 5).map(|i| (i % 251) as u8).collect();
        for chunk in [1000, 65536, 300_000, body.len()] {
            let (pieces, overrun, complete) = cut(0..3, &body, chunk);
            assert!(!overrun && complete, "chunk {chunk}");
            let sizes: Vec<usize> = pieces.iter().map(|(_, b)| b.len()).collect();
            assert_eq!(sizes, [PIECE as usize, PIECE as usize, 5], "chunk {chunk}");
            let joined: Vec<u8> = pieces.iter().flat_map(|(_, b)| b.clone()).collect();
            assert_eq!(joined, body);
            assert_eq!(pieces.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1, 2]);
        }
        // A run that starts at piece 1.
        let (pieces, overrun, complete) = cut(1..3, &body[PIECE as usize..], 4096);
        assert!(!overrun && complete);
        assert_eq!(pieces.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_body_too_long_or_too_short_is_caught() {
        let long = vec![7u8; (2 * PIECE + 6) as usize];
        let (_, overrun, _) = cut(0..3, &long, 65536);
        assert!(overrun, "a byte past the last piece went unnoticed");
        let short = vec![7u8; (2 * PIECE) as usize];
        let (pieces, overrun, complete) = cut(0..3, &short, 65536);
        assert_eq!((pieces.len(), overrun, complete), (2, false, false));
    }
}
