//! How a host spreads a piece without sending it to everyone itself.
//!
//! When many hosts want the same piece at once (everyone starts together,
//! a piece has just left the root, or readers move through a file in step),
//! a host that served each of them would upload the piece once per asker,
//! each at a fraction of its uplink, and the last would wait the longest.
//! Instead a host may redirect an asker to an earlier asker that holds the
//! piece or is receiving it, and that host answers once it has it.
//!
//! Each asker goes where it would get the piece soonest, counted in piece
//! transfer times: a host holds the piece at its depth in the tree and then
//! sends to its askers one after another. Always picking the least used
//! receiver would pick the newest one and build a chain as long as the
//! swarm; the soonest pick builds a binomial tree, so a piece reaches N
//! hosts in about log2(N) transfers and every host uploads a share.
//!
//! A root sends each piece itself only once: its uplink must keep pace
//! with the origin. Redirected requests are answered, never redirected
//! again, and go only to earlier askers, so the tree has no cycle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a piece's receivers are remembered. Past it, the next asker is
/// served here again, which also heals a tree whose members left.
const TTL: Duration = Duration::from_secs(10);
/// Pieces tracked before old entries are swept.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Serve,
    Redirect(SocketAddr),
}

/// What a request allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The asker follows a redirect.
    Redirectable,
    /// The asker was redirected here, or its redirect failed: serve it.
    MustServe,
}

struct Receiver {
    addr: SocketAddr,
    /// In piece transfer times after this host's first send, when this
    /// receiver will hold the piece.
    ready: u32,
    /// Askers sent to this receiver so far.
    fed: u32,
}

impl Receiver {
    /// When an asker sent here now would hold the piece.
    fn delivers_at(&self) -> u32 {
        self.ready + self.fed + 1
    }
}

struct PieceTree {
    since: Instant,
    /// Askers this host sends the piece to itself.
    sends: u32,
    receivers: Vec<Receiver>,
}

#[derive(Default)]
pub struct Fanout {
    pieces: HashMap<u32, PieceTree>,
}

impl Fanout {
    /// Whether this host (the task's root or not) should send `piece` to
    /// `requester` itself, or send it to an earlier receiver. `requester`
    /// is None when the asker did not say where it uploads from, and such
    /// an asker is always served.
    pub fn decide(
        &mut self,
        piece: u32,
        requester: Option<SocketAddr>,
        ask: Ask,
        is_root: bool,
        now: Instant,
    ) -> Decision {
        let Some(requester) = requester else {
            return Decision::Serve;
        };
        if self.pieces.len() >= SWEEP_AT {
            self.pieces.retain(|_, t| now.duration_since(t.since) < TTL);
        }
        let tree = self.pieces.entry(piece).or_insert_with(|| PieceTree {
            since: now,
            sends: 0,
            receivers: Vec::new(),
        });
        if now.duration_since(tree.since) >= TTL {
            tree.since = now;
            tree.sends = 0;
            tree.receivers.clear();
        }
        // Asking again means its source failed it: serve it here.
        if tree.receivers.iter().any(|r| r.addr == requester) {
            return Decision::Serve;
        }
        let own = (ask == Ask::MustServe || tree.receivers.is_empty() || !is_root)
            .then_some(tree.sends + 1);
        // This host wins ties, then the earliest receiver: the tree stays
        // shallow.
        let other = match ask {
            Ask::MustServe => None,
            Ask::Redirectable => tree
                .receivers
                .iter_mut()
                .enumerate()
                .min_by_key(|(_, r)| r.delivers_at())
                .filter(|(_, r)| own.is_none_or(|at| r.delivers_at() < at))
                .map(|(i, r)| (i, r.delivers_at())),
        };
        let (decision, ready) = match other {
            Some((i, at)) => {
                let receiver = &mut tree.receivers[i];
                receiver.fed += 1;
                (Decision::Redirect(receiver.addr), at)
            }
            None => {
                tree.sends += 1;
                (Decision::Serve, tree.sends)
            }
        };
        tree.receivers.push(Receiver {
            addr: requester,
            ready,
            fed: 0,
        });
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: bool = true;
    const PEER: bool = false;

    fn addr(i: u8) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, i], 65002)))
    }

    #[test]
    fn the_root_serves_the_first_asker_and_spreads_the_rest() {
        let mut f = Fanout::default();
        let now = Instant::now();
        assert_eq!(
            f.decide(7, addr(1), Ask::Redirectable, ROOT, now),
            Decision::Serve
        );
        assert_eq!(
            f.decide(7, addr(2), Ask::Redirectable, ROOT, now),
            Decision::Redirect(addr(1).unwrap())
        );
        // 1 holds it at 1 and feeds 2 by 2; it can feed 3 by 3, as soon as
        // 2 could (2 + 1), and the earlier receiver wins the tie.
        assert_eq!(
            f.decide(7, addr(3), Ask::Redirectable, ROOT, now),
            Decision::Redirect(addr(1).unwrap())
        );
        // 1 is busy until 3, 2 and 3 hold it at 2 and 3: 2 feeds 4 by 3.
        assert_eq!(
            f.decide(7, addr(4), Ask::Redirectable, ROOT, now),
            Decision::Redirect(addr(2).unwrap())
        );
        // Another piece starts its own tree.
        assert_eq!(
            f.decide(8, addr(4), Ask::Redirectable, ROOT, now),
            Decision::Serve
        );
    }

    #[test]
    fn a_piece_reaches_many_askers_in_logarithmic_depth() {
        let mut f = Fanout::default();
        let now = Instant::now();
        let mut depth: HashMap<SocketAddr, u32> = HashMap::new();
        for i in 1..=64u8 {
            let me = addr(i).unwrap();
            let d = match f.decide(3, Some(me), Ask::Redirectable, ROOT, now) {
                Decision::Serve => 1,
                Decision::Redirect(parent) => depth[&parent] + 1,
            };
            depth.insert(me, d);
        }
        let deepest = depth.values().max().copied().unwrap();
        // A chain would be 64 deep; a binomial tree of 64 is 7.
        assert!(deepest <= 7, "64 askers reached depth {deepest}");
        let root_sends = depth.values().filter(|&&d| d == 1).count();
        assert_eq!(root_sends, 1, "the root sends each piece once");
    }

    #[test]
    fn a_returning_asker_is_served_and_old_trees_expire() {
        let mut f = Fanout::default();
        let now = Instant::now();
        f.decide(1, addr(1), Ask::Redirectable, ROOT, now);
        assert!(matches!(
            f.decide(1, addr(2), Ask::Redirectable, ROOT, now),
            Decision::Redirect(_)
        ));
        assert_eq!(
            f.decide(1, addr(2), Ask::Redirectable, ROOT, now),
            Decision::Serve,
            "its redirect failed"
        );
        assert_eq!(
            f.decide(1, addr(3), Ask::Redirectable, ROOT, now + TTL),
            Decision::Serve,
            "the tree expired"
        );
        assert_eq!(
            f.decide(1, None, Ask::Redirectable, ROOT, now),
            Decision::Serve
        );
    }

    #[test]
    fn a_plain_peer_serves_while_that_is_soonest_and_never_redirects_the_redirected() {
        let mut f = Fanout::default();
        let now = Instant::now();
        let ask = Ask::Redirectable;
        // Sends at 1 and 2; the third would wait until 3 here but gets it
        // from the first by 2.
        assert_eq!(f.decide(5, addr(1), ask, PEER, now), Decision::Serve);
        assert_eq!(f.decide(5, addr(2), ask, PEER, now), Decision::Serve);
        assert_eq!(
            f.decide(5, addr(3), ask, PEER, now),
            Decision::Redirect(addr(1).unwrap())
        );
        assert_eq!(
            f.decide(5, addr(4), Ask::MustServe, PEER, now),
            Decision::Serve
        );
        let mut depth: HashMap<SocketAddr, u32> = HashMap::new();
        let mut f = Fanout::default();
        for i in 1..=64u8 {
            let me = addr(i).unwrap();
            let d = match f.decide(9, Some(me), ask, PEER, now) {
                Decision::Serve => 1,
                Decision::Redirect(parent) => depth[&parent] + 1,
            };
            depth.insert(me, d);
        }
        let direct = depth.values().filter(|&&d| d == 1).count();
        assert!(direct <= 7, "served {direct} of 64 itself");
        assert!(depth.values().all(|&d| d <= 7));
    }
}
