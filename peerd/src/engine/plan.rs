//! Which pieces a many-piece download asks for next, and from whom.
//!
//! Requests are planned per parent, like a BitTorrent client pipelines
//! requests per peer: every parent with room for another request from this
//! host is given the rarest piece it holds that this host still lacks.
//! Rarest first spreads pieces so that every host soon has something the
//! others want. Plain peers are used before the root, whose uplink is kept
//! for pieces nobody else has; the root is asked for pieces it holds first,
//! then for any piece, which it fetches from the origin on demand. Ties are
//! broken at random, so hosts that start together ask for different pieces
//! and can trade them.
//!
//! Everything here is a pure function of a task's state; `bulk` drives it.

use super::runs;
use super::task::{ParentView, State};
use api::piece::{Bitmap, Layout, ones_in, range_words};
use rand::Rng;
use rand::seq::SliceRandom;
use std::ops::Range;
use std::time::Instant;

/// Pieces per parent that an in-order download treats as one step: within
/// a step, order is random, so hosts reading in step still fetch different
/// pieces and trade them.
const IN_ORDER_REGION: u32 = 64;

/// The step of an in-order download with `parents` usable parents. It
/// grows with the parents: with one parent (a reader on a fast link) a
/// short step keeps the download just ahead of the reader, while in a
/// swarm every host would otherwise want the same few pieces at once.
/// With 64 pieces a step, 24 hosts on 100 Mbit/s links took 1.33 times the
/// line-rate bound; with a step per parent, 1.27 (random order: 1.29).
fn in_order_region(parents: usize) -> u32 {
    IN_ORDER_REGION.saturating_mul(u32::try_from(parents.max(1)).unwrap_or(u32::MAX))
}

/// Which of the pieces equally rare in the swarm go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// At random, so hosts that start together fetch different pieces and
    /// can trade them (dfget, a seed).
    Spread,
    /// Earliest first, for a reader that follows the download: a read-ahead
    /// window, or a whole-task fetch started for a sequential reader. At
    /// random, most pieces a reader reached would still be missing.
    InOrder,
}

/// The pieces of `wanted` that are neither present nor chosen, as words
/// (see `Bitmap::words`): `plan` runs each time a piece lands, and bit by
/// bit this scan was most of its cost.
pub(super) fn open_words(state: &State, wanted: &Range<u32>, chosen: &Bitmap) -> Vec<u64> {
    range_words(wanted.clone(), state.present.len())
        .zip(state.present.words())
        .zip(chosen.words())
        .map(|((want, present), chosen)| want & !present & !chosen)
        .collect()
}

/// The pieces of `wanted` that are neither present nor chosen, in order.
pub(super) fn missing(
    state: &State,
    wanted: &Range<u32>,
    chosen: &Bitmap,
) -> impl Iterator<Item = u32> {
    ones_in(open_words(state, wanted, chosen))
}

/// Requests for parents with room, at most `room` of them, each counted
/// in the parent's load at once.
///
/// This runs every time a piece lands, in every download on the host, so
/// the missing pieces are ranked once per call (see `Candidate`) and each
/// parent takes the first it can serve.
pub(super) fn plan(
    state: &mut State,
    layout: Layout,
    wanted: &Range<u32>,
    chosen: &mut Bitmap,
    cap: u32,
    room: usize,
    order: Order,
) -> Vec<(u32, ParentView)> {
    let now = Instant::now();
    let usable = |p: &&ParentView| {
        state
            .blocked
            .get(&p.host_id)
            .is_none_or(|until| *until <= now)
    };
    let has_room = |p: &ParentView| load(state, p) < cap && (room > 0 || p.is_root);
    if !state.parents.iter().filter(usable).any(has_room) {
        return Vec::new();
    }
    let mut asked: Vec<usize> = (0..state.parents.len())
        .filter(|&i| usable(&&state.parents[i]))
        .collect();
    let open = open_words(state, wanted, chosen);
    let ranked = rank(state, layout, &open, order, asked.len(), usable);
    if ranked.is_empty() {
        return Vec::new();
    }
    asked.shuffle(&mut rand::rng());
    // Plain peers first, within the room; the root after them, outside
    // it. New pieces exist only at the root, and a host whose room is
    // full of requests to busy peers would otherwise ask for them late:
    // the whole swarm then trails the root, and the root's uplink idles.
    asked.sort_by_key(|&i| state.parents[i].is_root);
    let window = runs::root_window(layout);
    let mut plans = Vec::new();
    for parent in asked.into_iter().map(|i| &state.parents[i]) {
        let mut load = load(state, parent);
        let before = plans.len();
        while (plans.len() < room || parent.is_root) && load < cap {
            let Some(n) = best_piece(&ranked, parent, chosen, window) else {
                break;
            };
            chosen.set(n);
            load += 1;
            plans.push((n, parent.clone()));
        }
        // Written back only for parents given work: this runs on every
        // landed piece, and most parents get nothing.
        if plans.len() > before {
            state.load.insert(parent.host_id.clone(), load);
        }
    }
    plans
}

/// The open pieces (as words, see `open_words`) in the order `plan` hands
/// them out: rarest among the usable plain parents first. A parent that is
/// blocked (down, or lying) must not keep the root from serving.
fn rank(
    state: &State,
    layout: Layout,
    open: &[u64],
    order: Order,
    usable_parents: usize,
    usable: impl Fn(&&ParentView) -> bool,
) -> Vec<Candidate> {
    let mut holders = vec![0u32; layout.piece_count() as usize];
    for p in state.parents.iter().filter(&usable).filter(|p| !p.is_root) {
        let held_and_open = p.bitmap.words().zip(open).map(|(held, open)| held & open);
        for n in ones_in(held_and_open) {
            holders[n as usize] += 1;
        }
    }
    let region_len = in_order_region(usable_parents);
    let mut rng = rand::rng();
    let mut ranked: Vec<Candidate> = ones_in(open.iter().copied())
        .map(|n| Candidate {
            holders: holders[n as usize],
            region: match order {
                Order::Spread => 0,
                Order::InOrder => n / region_len,
            },
            tie: rng.random(),
            n,
        })
        .collect();
    ranked.sort_unstable();
    ranked
}

/// A missing piece as `plan` ranks it: the fields compare in order, so
/// sorting puts the rarest first, then (for an in-order download) the
/// earliest region, then a random pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    /// Usable plain parents holding it.
    holders: u32,
    region: u32,
    tie: u32,
    n: u32,
}

fn load(state: &State, parent: &ParentView) -> u32 {
    state.load_of(&parent.host_id)
}

/// The piece to ask `parent` for, from `ranked` (rarest first): the rarest
/// it holds; from the root, only pieces no plain parent holds, one it
/// holds before one it must fetch from the origin.
fn best_piece(
    ranked: &[Candidate],
    parent: &ParentView,
    chosen: &Bitmap,
    root_window: u32,
) -> Option<u32> {
    let open = ranked.iter().filter(|c| !chosen.get(c.n));
    if !parent.is_root {
        return open.map(|c| c.n).find(|&n| parent.bitmap.get(n));
    }
    let must_fetch = || open.clone().take_while(|c| c.holders == 0).map(|c| c.n);
    let mut lowest = None;
    for n in must_fetch() {
        if parent.bitmap.get(n) {
            return Some(n);
        }
        lowest = Some(lowest.map_or(n, |m: u32| m.min(n)));
    }
    // Of the pieces the root must fetch, one of those its runs in flight
    // will bring, taken in rank order (at random among equals): they are
    // on their way already, and askers who meet on one are spread by the
    // root's fan-out rather than each costing it an origin request. Not
    // the lowest: then every host asked for the same few pieces, the host
    // that asked first was sent each of them first, and all the others
    // were sent to it; its links carried the start of the swarm (peers'
    // downlinks ran at 0.29 of line rate in the first second, 0.43 with
    // this window; 24 hosts took 1.25 of the bound, 1.24 with it, in
    // interleaved runs).
    let lowest = lowest?;
    must_fetch().find(|&n| n < lowest.saturating_add(root_window))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::task::Task;
    use crate::storage::Store;
    use api::proto::TaskMeta;
    use std::sync::Arc;

    /// A task of `pieces` pieces, none present, with one plain parent
    /// holding all of them.
    fn task_with_a_full_parent(dir: &std::path::Path, pieces: u32) -> Arc<Task> {
        let layout = Layout::new(u64::from(pieces) << 18, 1 << 18).expect("valid layout");
        let id = "ab".repeat(32).parse().expect("valid id");
        let meta = TaskMeta::default();
        let file = Store::open(dir)
            .expect("store")
            .create(id, &meta, layout)
            .expect("task file");
        let task = Task::new(id, meta, layout, file, None);
        let mut bitmap = Bitmap::new(pieces);
        for n in 0..pieces {
            bitmap.set(n);
        }
        task.lock().parents.push(ParentView {
            host_id: "parent".into(),
            addr: "127.0.0.1:1".into(),
            is_root: false,
            bitmap,
        });
        task
    }

    #[test]
    fn the_root_is_asked_for_a_piece_its_runs_will_bring_unless_it_holds_one_nobody_else_does() {
        let root = |held: &[u32]| {
            let mut bitmap = Bitmap::new(16);
            for &n in held {
                bitmap.set(n);
            }
            ParentView {
                host_id: "root".into(),
                addr: "127.0.0.1:1".into(),
                is_root: true,
                bitmap,
            }
        };
        // Sorted as `plan` sorts them: pieces 9, 4 and 12 are held by no
        // plain parent, 2 by one.
        let candidate = |holders, tie, n| Candidate {
            holders,
            region: 0,
            tie,
            n,
        };
        let ranked = [
            candidate(0, 5, 9),
            candidate(0, 7, 4),
            candidate(0, 9, 12),
            candidate(1, 1, 2),
        ];
        let chosen = Bitmap::new(16);
        assert_eq!(best_piece(&ranked, &root(&[]), &chosen, 1), Some(4));
        assert_eq!(best_piece(&ranked, &root(&[12]), &chosen, 1), Some(12));
        let mut taken = Bitmap::new(16);
        taken.set(4);
        assert_eq!(best_piece(&ranked, &root(&[]), &taken, 1), Some(9));
        // Within the window of the root's runs, the first in rank order:
        // hosts that rank at random ask for different pieces.
        assert_eq!(best_piece(&ranked, &root(&[]), &chosen, 6), Some(9));
        assert_eq!(best_piece(&ranked, &root(&[]), &chosen, 5), Some(4));
    }

    /// What `plan` asks for first, with `parents` parents that hold all of
    /// a 1024-piece task.
    fn first_planned(order: Order, parents: usize) -> Vec<u32> {
        let dir = tempfile::tempdir().expect("temp dir");
        let task = task_with_a_full_parent(dir.path(), 1024);
        let first = task.lock().parents[0].clone();
        for i in 1..parents {
            task.lock().parents.push(ParentView {
                host_id: format!("parent{i}"),
                ..first.clone()
            });
        }
        let mut chosen = Bitmap::new(1024);
        let planned = plan(
            &mut task.lock(),
            task.layout,
            &(0..1024),
            &mut chosen,
            32,
            32,
            order,
        );
        planned.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn in_order_plans_the_earliest_pieces_first_but_spread_does_not() {
        let in_order = first_planned(Order::InOrder, 1);
        assert_eq!(in_order.len(), 32);
        assert!(
            in_order.iter().all(|&n| n < IN_ORDER_REGION),
            "an in-order download planned pieces past its first region: {in_order:?}"
        );
        // 32 picks at random from 1024 all land in the first 64 with
        // probability about 1e-39.
        let spread = first_planned(Order::Spread, 1);
        assert!(
            spread.iter().any(|&n| n >= IN_ORDER_REGION),
            "a spread download planned only the first pieces: {spread:?}"
        );
    }

    #[test]
    fn an_in_order_step_grows_with_the_parents() {
        // Four parents: a step of 256 pieces. 32 picks from it all land in
        // the first 64 with probability about 1e-19.
        let planned = first_planned(Order::InOrder, 4);
        assert_eq!(planned.len(), 32);
        assert!(
            planned.iter().all(|&n| n < 4 * IN_ORDER_REGION),
            "planned past the first step: {planned:?}"
        );
        assert!(
            planned.iter().any(|&n| n >= IN_ORDER_REGION),
            "four parents still got a one-parent step: {planned:?}"
        );
    }
}
