//! Fetching pieces from the origin, for a root or a host with no parent
//! able to deliver.

use super::task::{OriginMode, Task};
use super::{Engine, EngineError};
use crate::origin::Body;
use api::digest::PieceDigest;
use api::proto;
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
        match engine.inner.origin.get(&task.meta, range.clone()).await? {
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
                // The next origin request need not wait for the scheduler
                // to take this piece's digest.
                drop(permit);
                let digest = PieceDigest::of(&bytes);
                tracing::trace!(task = %task.id, piece = n, ms = started.elapsed().as_millis() as u64, "piece fetched from the origin");
                if task.store_piece(engine, n, &bytes, digest)? {
                    metrics::histogram!("dffs_piece_seconds", "source" => "origin")
                        .record(started.elapsed().as_secs_f64());
                    publish(engine, task, vec![(n, digest)]).await;
                }
                return Ok(());
            }
            Body::Whole(response) => {
                tracing::info!(task = %task.id, "origin ignores Range; streaming the whole object once");
                task.lock().origin = OriginMode::Streaming;
                let result = stream_whole(engine, task, response, priority).await;
                task.lock().origin = OriginMode::Unknown;
                result?;
            }
        }
    }
}

fn learned_ranges_work(engine: &Engine, task: &Task) {
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
    while let Some(chunk) = next_chunk(&mut response, url).await? {
        engine.inner.limits.download.take(chunk.len()).await;
        metrics::counter!("dffs_download_bytes_total", "source" => "origin", "priority" => priority)
            .increment(chunk.len() as u64);
        if bytes.len() + chunk.len() > len as usize {
            return Err(short_or_long(url, "more"));
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != len {
        return Err(short_or_long(url, "fewer"));
    }
    metrics::counter!("dffs_download_pieces_total", "source" => "origin").increment(1);
    Ok(bytes)
}

pub(super) fn short_or_long(url: &str, which: &str) -> EngineError {
    EngineError::Origin {
        http_status: 0,
        message: format!("origin sent {which} bytes than it announced for {url}"),
        retryable: true,
    }
}

pub(super) async fn next_chunk(
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

/// Consumes a whole-object response, storing each piece as it completes.
async fn stream_whole(
    engine: &Engine,
    task: &Arc<Task>,
    mut response: reqwest::Response,
    priority: &'static str,
) -> Result<(), EngineError> {
    let url = task
        .meta
        .source
        .as_ref()
        .map_or("", |s| s.url.as_str())
        .to_string();
    let layout = task.layout;
    let mut piece = 0u32;
    let mut buf = Vec::with_capacity(layout.piece_len(0) as usize);
    let mut total = 0u64;
    while let Some(chunk) = next_chunk(&mut response, &url).await? {
        engine.inner.limits.download.take(chunk.len()).await;
        metrics::counter!("dffs_download_bytes_total", "source" => "origin", "priority" => priority)
            .increment(chunk.len() as u64);
        total += chunk.len() as u64;
        if total > layout.content_length {
            return Err(short_or_long(&url, "more"));
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let want = layout.piece_len(piece) as usize - buf.len();
            let take = want.min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() == layout.piece_len(piece) as usize {
                let digest = PieceDigest::of(&buf);
                if task.store_piece(engine, piece, &buf, digest)? {
                    metrics::counter!("dffs_download_pieces_total", "source" => "origin")
                        .increment(1);
                    publish(engine, task, vec![(piece, digest)]).await;
                }
                buf.clear();
                piece += 1;
            }
        }
    }
    if total != layout.content_length {
        return Err(short_or_long(&url, "fewer"));
    }
    Ok(())
}

/// Tells the scheduler about pieces fetched from the origin. A root's
/// digests are sent at once and awaited, since children verify against
/// them; a host that is not the root may not publish digests.
pub(super) async fn publish(engine: &Engine, task: &Task, pieces: Vec<(u32, PieceDigest)>) {
    let link = &engine.inner.link;
    if task.lock().is_root {
        let digests = pieces
            .iter()
            .map(|(n, d)| proto::PieceDigest {
                number: *n,
                blake3: d.0.to_vec(),
            })
            .collect();
        if let Err(e) = link.report_digests(&task.id, digests).await {
            tracing::warn!(task = %task.id, "cannot report digests; children cannot verify these pieces yet: {}", e.message());
        }
    } else {
        for (n, _) in pieces {
            link.report_piece_later(task.id, n);
        }
    }
}
