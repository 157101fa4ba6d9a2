//! The fetch of one piece, from claim to result: pick a source (see
//! `choose`), transfer from a parent (`peer_fetch`) or the origin
//! (`origin_fetch`), retry elsewhere on failure, and tell every waiter the
//! outcome. Concurrent askers for a piece share one fetch.

use super::choose::{self, Source};
use super::context::Context;
use super::error::EngineError;
use super::peer_fetch::{self, Counted};
use super::task::{Asked, Claim, ParentView, PieceResult, Task};
use super::{origin_fetch, refresh};
use api::proto::Priority;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Attempts at one piece before its waiters get an error.
const MAX_ATTEMPTS: u32 = 12;
/// Root failures after which this host goes to the origin itself.
const ROOT_FAILURES_BEFORE_ORIGIN: u32 = 3;
/// Longest wait for a busy parent before looking again.
const BUSY_WAIT: Duration = Duration::from_millis(100);
/// Rounds with nobody to ask after which this host goes to the origin.
const IDLE_ROUNDS_BEFORE_ORIGIN: u32 = 200;

/// Makes every piece in `pieces` present, fetching the missing ones at
/// `priority`. Concurrent callers share fetches: a piece is fetched once.
pub(super) async fn ensure(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    pieces: impl IntoIterator<Item = u32>,
    priority: Priority,
) -> Result<(), EngineError> {
    for done in start_all(ctx, task, pieces, priority) {
        wait(done).await?;
    }
    Ok(())
}

/// Waits for a fetch's result.
pub(super) async fn wait(mut done: watch::Receiver<PieceResult>) -> Result<(), EngineError> {
    let result = done
        .wait_for(Option::is_some)
        .await
        .map_err(|_| EngineError::ShuttingDown)?
        .clone();
    result.unwrap_or(Err(EngineError::ShuttingDown))
}

/// Starts a fetch of every missing piece of `pieces` that none runs for,
/// and returns what to wait on for each piece that is not present.
pub(super) fn start_all(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    pieces: impl IntoIterator<Item = u32>,
    priority: Priority,
) -> Vec<watch::Receiver<PieceResult>> {
    task.ask_all(pieces, priority)
        .into_iter()
        .filter_map(|asked| started(ctx, task, asked, None))
        .collect()
}

/// Starts fetching piece `n` from `via`, for which the caller has already
/// counted one request in the parent's load. If the piece is present or
/// already being fetched, that count is given back.
pub(super) fn start_via(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    n: u32,
    priority: Priority,
    via: ParentView,
) -> Option<watch::Receiver<PieceResult>> {
    let asked = task.ask(n, priority);
    if !matches!(asked, Asked::Claimed(_)) {
        peer_fetch::release_parent(task, &via.host_id);
    }
    started(ctx, task, asked, Some(via))
}

fn started(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    asked: Asked,
    via: Option<ParentView>,
) -> Option<watch::Receiver<PieceResult>> {
    match asked {
        Asked::Present => None,
        Asked::Coming(done) => Some(done),
        Asked::Claimed(claim) => {
            let done = claim.done.subscribe();
            spawn(ctx, task, claim, via);
            Some(done)
        }
    }
}

/// Runs the ordinary fetch that ends `claim`: for a fresh claim, or for a
/// piece an origin run could not deliver, with the same waiters.
pub(super) fn spawn(ctx: &Arc<Context>, task: &Arc<Task>, claim: Claim, via: Option<ParentView>) {
    tokio::spawn(run(ctx.clone(), task.clone(), claim, via));
}

async fn run(ctx: Arc<Context>, task: Arc<Task>, claim: Claim, via: Option<ParentView>) {
    let Claim { n, priority, done } = claim;
    let result = fetch_piece(&ctx, &task, n, &priority, via).await;
    if let Err(e) = &result {
        tracing::warn!(task = %task.id, piece = n, "piece failed: {e}");
        metrics::counter!("dffs_piece_failures_total", "reason" => "exhausted").increment(1);
    }
    task.finish_fetch(n);
    done.send_replace(Some(result));
}

/// How one fetch has fared so far.
#[derive(Default)]
struct Attempts {
    failed: u32,
    root_failures: u32,
    idle_rounds: u32,
    last_error: Option<EngineError>,
}

impl Attempts {
    fn to_origin(&self) -> bool {
        self.root_failures >= ROOT_FAILURES_BEFORE_ORIGIN
    }

    /// Records a failed transfer; Err when the error is final.
    fn failed(&mut self, error: EngineError, from_root: bool) -> Result<Duration, EngineError> {
        if !error.is_retryable() {
            return Err(error);
        }
        self.failed += 1;
        self.root_failures += u32::from(from_root);
        self.last_error = Some(error);
        Ok(Duration::from_millis(20 * u64::from(self.failed.min(10))))
    }

    fn exhausted(&mut self, task: &Task, n: u32) -> EngineError {
        self.last_error.take().unwrap_or_else(|| {
            EngineError::Unavailable(format!(
                "piece {n} of task {}: no parent and no origin delivered it",
                task.id
            ))
        })
    }
}

async fn fetch_piece(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    n: u32,
    priority: &Arc<AtomicU8>,
    mut via: Option<ParentView>,
) -> Result<(), EngineError> {
    let mut attempts = Attempts::default();
    loop {
        if task.has_piece(n) {
            if let Some(parent) = via.take() {
                peer_fetch::release_parent(task, &parent.host_id);
            }
            return Ok(());
        }
        if attempts.failed >= MAX_ATTEMPTS {
            return Err(attempts.exhausted(task, n));
        }
        // A parent the caller picked (and counted) goes first.
        let source = match via.take() {
            Some(parent) => Source::Parent(parent),
            None => {
                let cap = ctx.settings.requests_per_parent;
                let mut state = task.lock();
                choose::choose(&mut state, n, cap, attempts.to_origin(), Instant::now())
            }
        };
        match source {
            Source::Parent(parent) => {
                // A download slot is held only while bytes move. A fetch
                // that held one while waiting for a busy parent could wait
                // forever on fetches that hold that parent's requests but
                // wait for a slot themselves.
                let slot = ctx.slots.acquire(priority.clone()).await;
                let level = priority.load(Ordering::Relaxed);
                let mut counted = Counted::new(task, &parent.host_id);
                let result =
                    peer_fetch::from_parent(ctx, task, n, &parent, level, &mut counted).await;
                drop((slot, counted));
                match result {
                    Ok(()) => return Ok(()),
                    Err(e) => tokio::time::sleep(attempts.failed(e, parent.is_root)?).await,
                }
            }
            Source::Origin => {
                let slot = ctx.slots.acquire(priority.clone()).await;
                let result = origin_fetch::fetch(ctx, task, n, priority).await;
                drop(slot);
                match result {
                    Ok(()) => return Ok(()),
                    Err(e) => tokio::time::sleep(attempts.failed(e, false)?).await,
                }
            }
            Source::Busy => {
                metrics::counter!("dffs_fetch_waits_total", "why" => "busy_parent").increment(1);
                let _ = tokio::time::timeout(BUSY_WAIT, task.capacity.notified()).await;
            }
            Source::Refresh => look_again(ctx, task, &mut attempts).await,
        }
    }
}

/// Nobody known can serve the piece: ask the scheduler again, waiting
/// longer each round, since the piece may be on its way to a parent.
async fn look_again(ctx: &Arc<Context>, task: &Arc<Task>, attempts: &mut Attempts) {
    match refresh::parents(ctx, task).await {
        Ok(()) => {
            metrics::counter!("dffs_fetch_waits_total", "why" => "no_source").increment(1);
            attempts.idle_rounds += 1;
            if attempts.idle_rounds > 1 {
                let rounds = u64::from(attempts.idle_rounds.min(10));
                tokio::time::sleep(Duration::from_millis(50 * rounds)).await;
            }
            if attempts.idle_rounds > IDLE_ROUNDS_BEFORE_ORIGIN {
                attempts.root_failures = ROOT_FAILURES_BEFORE_ORIGIN;
            }
        }
        Err(e) => {
            tracing::warn!(task = %task.id, "scheduler unavailable, going to the origin: {e}");
            attempts.root_failures = ROOT_FAILURES_BEFORE_ORIGIN;
            attempts.last_error = Some(e);
        }
    }
}
