//! How a root spreads a piece without sending it to everyone itself.
//!
//! When many children want the same piece at once (everyone starts
//! together, or readers move through a file in step), a root that served
//! each of them would upload the piece once per child and become the
//! bottleneck. Instead it sends a piece itself only to the first child that
//! asks; later askers are redirected to a child that already holds the
//! piece or is receiving it, and that child answers once it has it. The
//! least-used receiver is picked each time, so every piece spreads along a
//! balanced tree and every host uploads a share. Requests arrive in time
//! order and are only ever sent to earlier receivers, so the tree has no
//! cycle, and it always ends at the root.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a piece's receivers are remembered. Past it, the next asker is
/// served by the root again, which also heals a tree whose members left.
const TTL: Duration = Duration::from_secs(10);
/// Pieces tracked before old entries are swept.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Serve,
    Redirect(SocketAddr),
}

struct Receiver {
    addr: SocketAddr,
    /// Askers sent to this receiver so far.
    fed: u32,
}

struct PieceTree {
    since: Instant,
    receivers: Vec<Receiver>,
}

#[derive(Default)]
pub struct Fanout {
    pieces: HashMap<u32, PieceTree>,
}

impl Fanout {
    /// Whether the root should send `piece` to `requester` itself, or send
    /// it to an earlier receiver. `requester` is None when the asker did not
    /// say where it uploads from, and such an asker is always served.
    pub fn decide(&mut self, piece: u32, requester: Option<SocketAddr>, now: Instant) -> Decision {
        let Some(requester) = requester else {
            return Decision::Serve;
        };
        if self.pieces.len() >= SWEEP_AT {
            self.pieces.retain(|_, t| now.duration_since(t.since) < TTL);
        }
        let tree = self.pieces.entry(piece).or_insert_with(|| PieceTree {
            since: now,
            receivers: Vec::new(),
        });
        if now.duration_since(tree.since) >= TTL {
            tree.since = now;
            tree.receivers.clear();
        }
        // Asking again means its source failed it: serve it here.
        if tree.receivers.iter().any(|r| r.addr == requester) {
            return Decision::Serve;
        }
        let target = tree.receivers.iter_mut().min_by_key(|r| r.fed).map(|r| {
            r.fed += 1;
            r.addr
        });
        tree.receivers.push(Receiver {
            addr: requester,
            fed: 0,
        });
        match target {
            Some(addr) => Decision::Redirect(addr),
            None => Decision::Serve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, i], 65002)))
    }

    #[test]
    fn the_root_serves_the_first_asker_and_spreads_the_rest() {
        let mut f = Fanout::default();
        let now = Instant::now();
        assert_eq!(f.decide(7, addr(1), now), Decision::Serve);
        assert_eq!(
            f.decide(7, addr(2), now),
            Decision::Redirect(addr(1).unwrap())
        );
        // 1 fed one asker, 2 none: the next goes to 2.
        assert_eq!(
            f.decide(7, addr(3), now),
            Decision::Redirect(addr(2).unwrap())
        );
        assert_eq!(
            f.decide(7, addr(4), now),
            Decision::Redirect(addr(3).unwrap())
        );
        // Another piece starts its own tree.
        assert_eq!(f.decide(8, addr(4), now), Decision::Serve);
    }

    #[test]
    fn a_returning_asker_is_served_and_old_trees_expire() {
        let mut f = Fanout::default();
        let now = Instant::now();
        f.decide(1, addr(1), now);
        assert!(matches!(f.decide(1, addr(2), now), Decision::Redirect(_)));
        assert_eq!(
            f.decide(1, addr(2), now),
            Decision::Serve,
            "its redirect failed"
        );
        assert_eq!(
            f.decide(1, addr(3), now + TTL),
            Decision::Serve,
            "the tree expired"
        );
        assert_eq!(f.decide(1, None, now), Decision::Serve);
    }
}
