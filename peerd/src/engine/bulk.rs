//! Downloads of many pieces at once (dfget, the seed, preheat, a lazy
//! reader's read-ahead window): the loop that keeps requests in flight.
//!
//! Which piece next, and from whom, is `plan`'s choice; this module asks
//! for fresh parents, starts the planned fetches, waits for any to land and
//! plans again. A host that is itself the root fetches everything from the
//! origin, in order, in runs (see `origin_run`).

use super::context::Context;
use super::error::EngineError;
use super::plan::{self, Order};
use super::task::{OriginMode, PieceResult, Task};
use super::{fetcher, origin_run, refresh, runs};
use api::piece::Bitmap;
use api::proto::Priority;
use futures::stream::{FuturesUnordered, StreamExt};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a download asks for fresh parent bitmaps. `fetch` skips a
/// refresh younger than its own 100 ms minimum, so this only decides how
/// soon after that minimum the next one goes out: at 100 ms, bitmaps were
/// up to 200 ms old, and hosts learned late what their parents had.
const REFRESH_EVERY: Duration = Duration::from_millis(50);
/// How long to wait for news (a finished piece, fresh parents) when no
/// request can be planned.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// How a download ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every wanted piece is present.
    Done,
    /// A read-ahead stopped planning because a whole-task download started,
    /// which plans every piece anyway; its own fetches still run.
    WholeTookOver,
}

/// Fetches every missing piece of `wanted` at `priority`.
pub(super) async fn download(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    wanted: Range<u32>,
    priority: Priority,
    order: Order,
) -> Result<Outcome, EngineError> {
    let window = ctx.settings.bulk_window.max(1);
    let mut waiting = FuturesUnordered::new();
    let mut chosen = Bitmap::new(task.layout.piece_count());
    let mut refreshed: Option<Instant> = None;
    while !task.has_all(wanted.clone()) {
        // A host whose root sent corrupt bytes fetches from the origin
        // itself, as the root does.
        let (is_root, whole_running) = {
            let state = task.lock();
            (
                state.is_root || state.root_corrupt,
                state.whole_downloads > 0,
            )
        };
        if priority == Priority::Prefetch && whole_running {
            return Ok(Outcome::WholeTookOver);
        }
        if !is_root && refreshed.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
            refreshed = Some(Instant::now());
            let (ctx, task) = (ctx.clone(), task.clone());
            tokio::spawn(async move {
                let _ = refresh::parents(&ctx, &task).await;
            });
        }
        let started = if is_root {
            root_starts(ctx, task, &wanted, &mut chosen, waiting.len(), priority)
        } else {
            let room = window.saturating_sub(waiting.len());
            let plan = Plan {
                wanted: &wanted,
                room,
                priority,
                order,
            };
            peer_starts(ctx, task, &plan, &mut chosen)
        };
        waiting.extend(started.into_iter().map(fetcher::wait));
        if waiting.is_empty() {
            // Nothing to ask anyone yet (no parents known, or all busy).
            let _ = tokio::time::timeout(IDLE_WAIT, task.capacity.notified()).await;
            continue;
        }
        // Re-plan when a piece lands, or when a parent frees up or the
        // parents change.
        tokio::select! {
            result = waiting.next() => {
                if let Some(result) = result {
                    result?;
                }
            }
            _ = tokio::time::timeout(IDLE_WAIT, task.capacity.notified()) => {}
        }
    }
    Ok(Outcome::Done)
}

/// What one round of planning asks for.
struct Plan<'a> {
    wanted: &'a Range<u32>,
    /// Requests the download may add now.
    room: usize,
    priority: Priority,
    order: Order,
}

/// What a host that is not the root starts next: the requests `plan`
/// gives parents with room.
fn peer_starts(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    round: &Plan<'_>,
    chosen: &mut Bitmap,
) -> Vec<watch::Receiver<PieceResult>> {
    let cap = ctx.settings.requests_per_parent;
    let planned = {
        let mut state = task.lock();
        let (wanted, room, order) = (round.wanted, round.room, round.order);
        plan::plan(&mut state, task.layout, wanted, chosen, cap, room, order)
    };
    planned
        .into_iter()
        .filter_map(|(n, via)| fetcher::start_via(ctx, task, n, round.priority, via))
        .collect()
}

/// What a root starts next, in piece order. Once the origin has shown it
/// honours Range, missing pieces go out in runs of consecutive pieces, one
/// request each; until then one piece at a time finds out. A piece another
/// fetch already has on its way (a child asked for it) is waited on.
fn root_starts(
    ctx: &Arc<Context>,
    task: &Arc<Task>,
    wanted: &Range<u32>,
    chosen: &mut Bitmap,
    in_flight: usize,
    priority: Priority,
) -> Vec<watch::Receiver<PieceResult>> {
    let mut started = Vec::new();
    if task.lock().origin != OriginMode::Ranged {
        if in_flight == 0 {
            let first = plan::missing(&task.lock(), wanted, chosen).next();
            if let Some(n) = first {
                chosen.set(n);
                started.extend(fetcher::start_all(ctx, task, [n], priority));
            }
        }
        return started;
    }
    let run = runs::run_pieces(task.layout) as usize;
    let mut room = (runs::ROOT_RUNS * run).saturating_sub(in_flight);
    while room > 0 {
        let (next, left) = {
            let state = task.lock();
            let mut ahead = plan::missing(&state, wanted, chosen);
            (ahead.next(), ahead.take(run).count() + 1)
        };
        let Some(n) = next else { break };
        // A short run would split the task into more requests than needed.
        if room < run && left > room {
            break;
        }
        let claims = task.claim_run(n, wanted.end, room.min(run) as u32, priority);
        if claims.is_empty() {
            // Present or being fetched already: wait on that.
            chosen.set(n);
            room -= 1;
            started.extend(fetcher::start_all(ctx, task, [n], priority));
            continue;
        }
        for claim in &claims {
            chosen.set(claim.n);
            started.push(claim.done.subscribe());
        }
        room -= claims.len();
        tokio::spawn(origin_run::fetch(ctx.clone(), task.clone(), claims));
    }
    started
}
