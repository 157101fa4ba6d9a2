//! Parent ranking.
//!
//! A child is offered the parents most likely to deliver what it lacks
//! soon: those holding many pieces it lacks, with free upload capacity, a
//! good recent speed and few recent failures. A random term as large as
//! any of those spreads children that look alike over different parents:
//! in a swarm every peer looks about as good as the next, and ranking
//! them all the same way would pile every child onto the same few uplinks
//! while the rest stay idle. The task's root is always offered, because it
//! can fetch any piece from the origin.
//!
//! Parents never form a cycle for any piece: a peer serves only pieces it
//! already holds and has verified, and only the root fetches on demand, from
//! the origin. So every piece spreads along a tree rooted at the root, even
//! though two peers may each hold pieces the other lacks and trade them.

use crate::state::Host;
use api::piece::Bitmap;
use rand::Rng;

pub struct Candidate<'a> {
    pub host: &'a Host,
    pub bitmap: &'a Bitmap,
    pub is_root: bool,
}

/// Upload slots a parent is assumed to have; past this many uploads in
/// flight it counts as fully busy.
const UPLOAD_SLOTS: f64 = 16.0;
/// Speed at which the speed term reaches half its weight (bytes/s).
const SPEED_HALF: f64 = 50e6;

/// The best `max` candidates for `child`, best first. Candidates holding
/// nothing the child lacks are left out, except the root.
pub fn rank<'a>(
    child: &Bitmap,
    candidates: impl Iterator<Item = Candidate<'a>>,
    max: usize,
) -> Vec<Candidate<'a>> {
    let mut rng = rand::rng();
    let mut scored: Vec<(f64, Candidate<'a>)> = candidates
        .filter_map(|c| {
            let useful = useful_pieces(child, c.bitmap);
            if useful == 0 && !c.is_root {
                return None;
            }
            let score = score(child, &c, useful) + rng.random_range(0.0..1.0);
            Some((score, c))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut chosen: Vec<Candidate<'a>> = Vec::with_capacity(max);
    let mut root = None;
    for (_, c) in scored {
        if c.is_root {
            root = Some(c);
        } else if chosen.len() < max.saturating_sub(1) {
            chosen.push(c);
        }
    }
    chosen.extend(root);
    chosen
}

fn useful_pieces(child: &Bitmap, parent: &Bitmap) -> u32 {
    parent.iter_ones().filter(|&i| !child.get(i)).count() as u32
}

fn score(child: &Bitmap, c: &Candidate<'_>, useful: u32) -> f64 {
    let missing = (child.len() - child.count_ones()).max(1);
    let held = f64::from(useful) / f64::from(missing);
    let busy = (f64::from(c.host.info.uploads_in_flight) / UPLOAD_SLOTS).min(1.0);
    let speed = c.host.speed / (c.host.speed + SPEED_HALF);
    let failures = c.host.failures.min(10.0);
    held + (1.0 - busy) + 0.5 * speed - 0.3 * failures
}
