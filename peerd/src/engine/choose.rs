//! Where one piece should come from next.
//!
//! In order of preference: a parent that holds the piece (a plain peer
//! before the root, so the root's uplink is kept for pieces nobody else
//! has), then the root (which fetches from the origin on demand), then the
//! origin itself when this host is the root or no parent can deliver.
//! Among equals, the least loaded, at random.

use super::task::{ParentView, State};
use rand::seq::IndexedRandom;
use std::time::Instant;

#[derive(Debug)]
pub(super) enum Source {
    Parent(ParentView),
    Origin,
    /// Someone can serve it but has all the requests it takes from this
    /// host in flight: wait for one to finish.
    Busy,
    /// Nobody known can serve it: ask the scheduler again, then retry.
    Refresh,
}

/// Picks a source for piece `n`, and counts a request to a chosen parent
/// in its load. `cap` is the requests a parent takes from this host at
/// once; `to_origin` says the root failed often enough that this host
/// goes to the origin itself.
pub(super) fn choose(state: &mut State, n: u32, cap: u32, to_origin: bool, now: Instant) -> Source {
    state.blocked.retain(|_, until| *until > now);
    let chosen = {
        let state = &*state;
        let distrusted = |p: &ParentView| p.is_root && state.root_corrupt;
        let usable = |p: &ParentView| !state.blocked.contains_key(&p.host_id) && !distrusted(p);
        let has_room = |p: &ParentView| usable(p) && state.load_of(&p.host_id) < cap;
        let holders: Vec<&ParentView> = state
            .parents
            .iter()
            .filter(|p| p.bitmap.get(n) && has_room(p))
            .collect();
        let plain: Vec<&ParentView> = holders.iter().copied().filter(|p| !p.is_root).collect();
        let roots = || -> Vec<&ParentView> {
            state
                .parents
                .iter()
                .filter(|p| p.is_root && has_room(p))
                .collect()
        };
        let fetch_here = state.is_root || to_origin || state.root_corrupt;
        let chosen = least_loaded(state, &plain)
            .or_else(|| least_loaded(state, &holders))
            .or_else(|| {
                (!fetch_here)
                    .then(|| least_loaded(state, &roots()))
                    .flatten()
            });
        match chosen {
            Some(parent) => Ok(parent),
            None if fetch_here => Err(Source::Origin),
            None => {
                // Someone could serve it, were it not for its load.
                let saturated = state
                    .parents
                    .iter()
                    .any(|p| (p.bitmap.get(n) || p.is_root) && usable(p));
                Err(if saturated {
                    Source::Busy
                } else {
                    Source::Refresh
                })
            }
        }
    };
    match chosen {
        Ok(parent) => {
            *state.load.entry(parent.host_id.clone()).or_default() += 1;
            Source::Parent(parent)
        }
        Err(source) => source,
    }
}

/// One of the least loaded parents of `list`, at random.
fn least_loaded(state: &State, list: &[&ParentView]) -> Option<ParentView> {
    let min = list.iter().map(|p| state.load_of(&p.host_id)).min()?;
    let best: Vec<&&ParentView> = list
        .iter()
        .filter(|p| state.load_of(&p.host_id) == min)
        .collect();
    best.choose(&mut rand::rng()).map(|p| (**p).clone())
}

#[cfg(test)]
#[path = "choose_tests.rs"]
mod tests;
