//! Fetching one piece: pick a source, transfer, verify, store.
//!
//! Sources, in order of preference: a parent that holds the piece (a plain
//! peer before the root, so the root's uplink is kept for pieces nobody
//! else has), then the root (which fetches from the origin on demand), then
//! the origin itself when this host is the root or no parent can deliver.

use super::task::{ParentView, PieceResult, Task};
use super::{Engine, EngineError, origin_fetch};
use crate::upload::client::FetchError;
use crate::upload::protocol::{PieceRequest, Status};
use api::digest::PieceDigest;
use api::piece::Bitmap;
use api::proto::{BadParent, ParentSpeed, Priority};
use rand::seq::IndexedRandom;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Attempts at one piece before its waiters get an error.
const MAX_ATTEMPTS: u32 = 12;
/// Root failures after which this host goes to the origin itself.
const ROOT_FAILURES_BEFORE_ORIGIN: u32 = 3;
/// Parent lists younger than this are not refreshed again.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How long a parent that failed is left alone.
const BLOCK_AFTER_ERROR: Duration = Duration::from_secs(5);
const BLOCK_AFTER_DOWN: Duration = Duration::from_secs(30);
const BLOCK_AFTER_BUSY: Duration = Duration::from_millis(500);
const BLOCK_AFTER_CORRUPT: Duration = Duration::from_secs(600);

/// Runs the fetch that owns piece `n` and tells its waiters the result.
pub(super) async fn run(
    engine: Engine,
    task: Arc<Task>,
    n: u32,
    priority: Arc<AtomicU8>,
    via: Option<ParentView>,
    done: watch::Sender<PieceResult>,
) {
    let result = fetch_piece(&engine, &task, n, &priority, via).await;
    if let Err(e) = &result {
        tracing::warn!(task = %task.id, piece = n, "piece failed: {e}");
        metrics::counter!("dffs_piece_failures_total", "reason" => "exhausted").increment(1);
    }
    task.finish_fetch(n);
    done.send_replace(Some(result));
}

enum Source {
    Parent(ParentView),
    Origin,
    /// Someone can serve it but has all the requests it takes from this
    /// host in flight: wait for one to finish.
    Busy,
    /// Nobody known can serve it: ask the scheduler again, then retry.
    Refresh,
}

/// Longest wait for a busy parent before looking again.
const BUSY_WAIT: Duration = Duration::from_millis(100);

async fn fetch_piece(
    engine: &Engine,
    task: &Arc<Task>,
    n: u32,
    priority: &Arc<AtomicU8>,
    mut via: Option<ParentView>,
) -> Result<(), EngineError> {
    let mut attempts = 0;
    let mut root_failures = 0;
    let mut idle_rounds = 0u32;
    let mut last_error = None;
    loop {
        if task.has_piece(n) {
            if let Some(parent) = via.take() {
                release_parent(task, &parent.host_id);
            }
            return Ok(());
        }
        if attempts >= MAX_ATTEMPTS {
            return Err(last_error.unwrap_or_else(|| {
                EngineError::Unavailable(format!(
                    "piece {n} of task {}: no parent and no origin delivered it",
                    task.id
                ))
            }));
        }
        let fallback_to_origin = root_failures >= ROOT_FAILURES_BEFORE_ORIGIN;
        // A parent the caller picked (and counted) goes first.
        let source = match via.take() {
            Some(parent) => Source::Parent(parent),
            None => choose_source(engine, task, n, fallback_to_origin),
        };
        match source {
            Source::Parent(parent) => {
                // A download slot is held only while bytes move. A fetch
                // that held one while waiting for a busy parent could wait
                // forever on fetches that hold that parent's requests but
                // wait for a slot themselves.
                let slot = engine.inner.slots.acquire(priority.clone()).await;
                let level = priority.load(Ordering::Relaxed);
                let mut counted = Counted::new(task, &parent.host_id);
                let result = from_parent(engine, task, n, &parent, level, &mut counted).await;
                drop(slot);
                drop(counted);
                match result {
                    Ok(()) => return Ok(()),
                    Err(e) if !e.is_retryable() => return Err(e),
                    Err(e) => {
                        attempts += 1;
                        if parent.is_root {
                            root_failures += 1;
                        }
                        last_error = Some(e);
                        tokio::time::sleep(backoff(attempts)).await;
                    }
                }
            }
            Source::Origin => {
                let slot = engine.inner.slots.acquire(priority.clone()).await;
                let result = origin_fetch::fetch(engine, task, n, priority).await;
                drop(slot);
                match result {
                    Ok(()) => return Ok(()),
                    Err(e) if !e.is_retryable() => return Err(e),
                    Err(e) => {
                        attempts += 1;
                        last_error = Some(e);
                        tokio::time::sleep(backoff(attempts)).await;
                    }
                }
            }
            Source::Busy => {
                metrics::counter!("dffs_fetch_waits_total", "why" => "busy_parent").increment(1);
                let _ = tokio::time::timeout(BUSY_WAIT, task.capacity.notified()).await;
            }
            Source::Refresh => match refresh_parents(engine, task).await {
                Ok(()) => {
                    metrics::counter!("dffs_fetch_waits_total", "why" => "no_source").increment(1);
                    idle_rounds += 1;
                    if idle_rounds > 1 {
                        // Nobody has it yet and no root can fetch it; the
                        // piece may be on its way to a parent.
                        tokio::time::sleep(Duration::from_millis(
                            50 * u64::from(idle_rounds.min(10)),
                        ))
                        .await;
                    }
                    if idle_rounds > 200 {
                        root_failures = ROOT_FAILURES_BEFORE_ORIGIN;
                    }
                }
                Err(e) => {
                    tracing::warn!(task = %task.id, "scheduler unavailable, going to the origin: {e}");
                    root_failures = ROOT_FAILURES_BEFORE_ORIGIN;
                    last_error = Some(e);
                }
            },
        }
    }
}

/// The priority a piece was fetched at, as a metrics label, so bytes
/// fetched on behalf of blocked readers can be told from bulk work.
pub(super) fn priority_label(level: u8) -> &'static str {
    match level {
        l if l >= Priority::Read as u8 => "read",
        l if l >= Priority::Prefetch as u8 => "prefetch",
        _ => "bulk",
    }
}

fn backoff(attempts: u32) -> Duration {
    Duration::from_millis(20 * u64::from(attempts.min(10)))
}

fn choose_source(engine: &Engine, task: &Task, n: u32, fallback_to_origin: bool) -> Source {
    let cap = engine.inner.settings.requests_per_parent;
    let now = Instant::now();
    let mut state = task.lock();
    state.blocked.retain(|_, until| *until > now);
    let usable = |p: &ParentView| {
        !state.blocked.contains_key(&p.host_id)
            && state.load.get(&p.host_id).copied().unwrap_or(0) < cap
    };
    let holders: Vec<&ParentView> = state
        .parents
        .iter()
        .filter(|p| p.bitmap.get(n) && usable(p))
        .collect();
    let least_loaded = |list: &[&ParentView]| -> Option<ParentView> {
        let min = list
            .iter()
            .map(|p| state.load.get(&p.host_id).copied().unwrap_or(0))
            .min()?;
        let best: Vec<&&ParentView> = list
            .iter()
            .filter(|p| state.load.get(&p.host_id).copied().unwrap_or(0) == min)
            .collect();
        best.choose(&mut rand::rng()).map(|p| (**p).clone())
    };
    let plain: Vec<&ParentView> = holders.iter().copied().filter(|p| !p.is_root).collect();
    let chosen = least_loaded(&plain)
        .or_else(|| least_loaded(&holders))
        .or_else(|| {
            if state.is_root || fallback_to_origin {
                return None;
            }
            let roots: Vec<&ParentView> = state
                .parents
                .iter()
                .filter(|p| p.is_root && usable(p))
                .collect();
            least_loaded(&roots)
        });
    let saturated = || {
        state.parents.iter().any(|p| {
            (p.bitmap.get(n) || p.is_root)
                && !state.blocked.contains_key(&p.host_id)
                && state.load.get(&p.host_id).copied().unwrap_or(0) >= cap
        })
    };
    match chosen {
        Some(parent) => {
            *state.load.entry(parent.host_id.clone()).or_default() += 1;
            Source::Parent(parent)
        }
        None if state.is_root || fallback_to_origin => Source::Origin,
        None if saturated() => Source::Busy,
        None => Source::Refresh,
    }
}

fn release_parent(task: &Task, host_id: &str) {
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
struct Counted<'a> {
    task: &'a Task,
    host_id: Option<String>,
}

impl<'a> Counted<'a> {
    fn new(task: &'a Task, host_id: &str) -> Self {
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

async fn from_parent(
    engine: &Engine,
    task: &Arc<Task>,
    n: u32,
    parent: &ParentView,
    level: u8,
    counted: &mut Counted<'_>,
) -> Result<(), EngineError> {
    let inner = &engine.inner;
    let request = PieceRequest {
        task: task.id,
        piece: n,
        urgent: level >= Priority::Read as u8,
        wait: false,
        no_redirect: false,
        reply_port: inner.settings.upload_port,
    };
    let expected = task.layout.piece_len(n);
    let started = Instant::now();
    tracing::trace!(task = %task.id, piece = n, to = %parent.addr, "piece requested");
    let mut buf = inner.buffers.take(expected as usize);
    metrics::gauge!("dffs_transfers_in_flight").increment(1.0);
    let source = transfer(engine, task, n, parent, request, &mut buf, counted).await;
    metrics::gauge!("dffs_transfers_in_flight").decrement(1.0);
    let (source, received) = source?;
    let elapsed = started.elapsed();
    let digest = match task.digest(n) {
        Some(d) => d,
        None => wait_for_digest(engine, task, n).await?,
    };
    if received != digest {
        tracing::warn!(task = %task.id, piece = n, parent = %source.addr, "parent sent a corrupt piece; isolating it");
        metrics::counter!("dffs_piece_failures_total", "reason" => "corrupt").increment(1);
        block_parent(task, &source.host_id, BLOCK_AFTER_CORRUPT);
        inner.link.report_bad_parent_later(
            task.id,
            BadParent {
                host_id: source.host_id.clone(),
                piece: n,
                corrupt: true,
            },
        );
        return Err(EngineError::Unavailable(format!(
            "piece {n} from {} failed verification",
            source.addr
        )));
    }
    tracing::trace!(task = %task.id, piece = n, from = %source.addr, ms = elapsed.as_millis() as u64, "piece received");
    if task.store_piece(engine, n, &buf, digest)? {
        let label = priority_label(level);
        metrics::counter!("dffs_download_bytes_total", "source" => "peer", "priority" => label)
            .increment(expected);
        metrics::counter!("dffs_download_pieces_total", "source" => "peer").increment(1);
        metrics::histogram!("dffs_piece_seconds", "source" => "peer").record(elapsed.as_secs_f64());
        inner.link.report_piece_later(task.id, n);
        inner.link.report_speed_later(
            task.id,
            ParentSpeed {
                host_id: source.host_id.clone(),
                bytes: expected,
                micros: elapsed.as_micros() as u64,
            },
        );
    }
    Ok(())
}

/// Receives piece `n` into `buf` from `parent`, following one redirect
/// (see `fanout`). Returns the host the bytes came from and their digest.
async fn transfer(
    engine: &Engine,
    task: &Task,
    n: u32,
    parent: &ParentView,
    request: PieceRequest,
    buf: &mut [u8],
    counted: &mut Counted<'_>,
) -> Result<(ParentView, PieceDigest), EngineError> {
    let peers = &engine.inner.peers;
    let redirect_to = match peers.fetch(&parent.addr, request, buf).await {
        Ok(digest) => return Ok((parent.clone(), digest)),
        Err(FetchError::Refused {
            status: Status::Redirect,
            reason,
            ..
        }) => reason,
        Err(e) => return Err(parent_failed(engine, task, n, parent, e)),
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
        Err(e) => Err(parent_failed(engine, task, n, parent, e)),
    }
}

fn parent_failed(
    engine: &Engine,
    task: &Task,
    n: u32,
    parent: &ParentView,
    error: FetchError,
) -> EngineError {
    let (block, report) = match &error {
        // Its bitmap was stale; not its fault.
        FetchError::Refused {
            status: Status::NotFound,
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
            status: Status::Busy,
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
        engine.inner.link.report_bad_parent_later(
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

/// A root reports a piece's digest before serving it, so a missing digest
/// is at most a report in flight: ask a few times, then give up.
async fn wait_for_digest(
    engine: &Engine,
    task: &Arc<Task>,
    n: u32,
) -> Result<PieceDigest, EngineError> {
    for attempt in 0..5u64 {
        refresh(engine, task, Some(n)).await?;
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

/// Asks the scheduler for the task's parents and the digests still
/// missing. Concurrent callers share one request.
pub(super) async fn refresh_parents(engine: &Engine, task: &Arc<Task>) -> Result<(), EngineError> {
    refresh(engine, task, None).await
}

/// Like `refresh_parents`, but a caller holding piece `needed_digest`
/// without its digest asks at once rather than after the usual interval:
/// a piece a root has just fetched arrives before the next refresh would,
/// and waiting out the interval capped lazy reads from a cold cluster at a
/// few pieces per 100 ms.
async fn refresh(
    engine: &Engine,
    task: &Arc<Task>,
    needed_digest: Option<u32>,
) -> Result<(), EngineError> {
    let _one_at_a_time = task.refresh.lock().await;
    let want_digests: Vec<u32> = {
        let state = task.lock();
        let satisfied = match needed_digest {
            // Another caller's refresh may have brought it meanwhile.
            Some(n) => state.digests.get(n as usize).is_some_and(Option::is_some),
            None => state
                .parents_at
                .is_some_and(|t| t.elapsed() < REFRESH_MIN_INTERVAL),
        };
        if satisfied {
            return Ok(());
        }
        (0..task.layout.piece_count())
            .filter(|&i| state.digests[i as usize].is_none())
            .collect()
    };
    let link = &engine.inner.link;
    let response = match link.get_parents(&task.id, want_digests.clone()).await {
        Ok(r) => r,
        // The scheduler forgot the task (it restarted): register again.
        Err(status) if status.code() == tonic::Code::NotFound => {
            engine.register_existing(task).await?;
            link.get_parents(&task.id, want_digests)
                .await
                .map_err(|s| EngineError::from_scheduler(&s))?
        }
        Err(status) => return Err(EngineError::from_scheduler(&status)),
    };
    let count = task.layout.piece_count();
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
    for d in response.digests {
        let slot = state.digests.get_mut(d.number as usize);
        if let (Some(slot @ None), Some(digest)) = (slot, PieceDigest::from_slice(&d.blake3)) {
            *slot = Some(digest);
        }
    }
    state.is_root = response.is_root;
    state.parents_at = Some(Instant::now());
    drop(state);
    task.capacity.notify_waiters();
    Ok(())
}
