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
//! A receiver's uplink is shared by every piece it was sent askers for, so
//! "soonest" counts those too: each receiver is busy until the sends this
//! host already gave it are done, whatever the piece. Counted per piece,
//! the hosts that happened to ask first for several pieces in a row were
//! made to feed all of them while others idled (a 24-host swarm ran at
//! 1.24 of the line-rate bound; 1.22 counting the load across pieces).
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
/// The transfer time assumed before any has been measured: a 256 KiB
/// piece at 100 Mbit/s.
const FIRST_TRANSFER_GUESS: Duration = Duration::from_millis(20);
/// New pieces asked for closer together than this came in one burst.
const BURST: Duration = Duration::from_millis(1);
/// Gaps between new pieces longer than this are pauses, not transfers.
const LONGEST_TRANSFER: Duration = Duration::from_millis(500);

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
    /// When it will hold the piece.
    ready_at: Instant,
}

struct PieceTree {
    since: Instant,
    receivers: Vec<Receiver>,
}

#[derive(Default)]
pub struct Fanout {
    pieces: HashMap<u32, PieceTree>,
    /// When each receiver will be done with the sends it was given here,
    /// for any piece.
    busy_until: HashMap<SocketAddr, Instant>,
    /// The same for this host's own sends.
    own_busy_until: Option<Instant>,
    transfer: TransferClock,
}

/// How long one piece takes to cross a link, estimated from how often
/// askers start new pieces here: a swarm that keeps up asks for new
/// pieces as fast as links carry them. Only the ratio of times to it
/// matters, so an estimate off by some factor still builds the same trees.
#[derive(Default)]
struct TransferClock {
    estimate: Option<Duration>,
    last_new_piece: Option<Instant>,
}

impl TransferClock {
    fn new_piece(&mut self, now: Instant) {
        if let Some(last) = self.last_new_piece {
            let gap = now.duration_since(last);
            // Askers that start many pieces at once (a swarm starting, a
            // window opening) say nothing about the link.
            if gap < BURST {
                return;
            }
            let gap = gap.min(LONGEST_TRANSFER);
            let old = self.estimate.unwrap_or(gap);
            self.estimate = Some((old * 7 + gap) / 8);
        }
        self.last_new_piece = Some(now);
    }

    fn transfer(&self) -> Duration {
        // Never zero: gaps under `BURST` are not counted.
        self.estimate.unwrap_or(FIRST_TRANSFER_GUESS)
    }
}

impl Fanout {
    /// Starts a fresh tree for `piece` unless a live one exists, sweeping
    /// old trees once there are many.
    fn start_tree(&mut self, piece: u32, now: Instant) {
        if self.pieces.len() >= SWEEP_AT {
            self.pieces.retain(|_, t| now.duration_since(t.since) < TTL);
            self.busy_until.retain(|_, until| *until > now);
        }
        let expired = self
            .pieces
            .get(&piece)
            .is_none_or(|t| now.duration_since(t.since) >= TTL);
        if expired {
            self.transfer.new_piece(now);
            let tree = PieceTree {
                since: now,
                receivers: Vec::new(),
            };
            self.pieces.insert(piece, tree);
        }
    }

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
        self.start_tree(piece, now);
        let transfer = self.transfer.transfer();
        let Some(tree) = self.pieces.get_mut(&piece) else {
            return Decision::Serve;
        };
        // Asking again means its source failed it: serve it here.
        if tree.receivers.iter().any(|r| r.addr == requester) {
            return Decision::Serve;
        }
        let free_at = |until: Option<&Instant>| until.copied().unwrap_or(now).max(now);
        let own = (ask == Ask::MustServe || tree.receivers.is_empty() || !is_root)
            .then(|| free_at(self.own_busy_until.as_ref()) + transfer);
        // This host wins ties, then the earliest receiver: the tree stays
        // shallow.
        let other = match ask {
            Ask::MustServe => None,
            Ask::Redirectable => tree
                .receivers
                .iter()
                .map(|r| {
                    let start = r.ready_at.max(free_at(self.busy_until.get(&r.addr)));
                    (r.addr, start + transfer)
                })
                .min_by_key(|(_, at)| *at)
                .filter(|(_, at)| own.is_none_or(|mine| *at < mine)),
        };
        let (decision, ready_at) = match other {
            Some((addr, at)) => {
                self.busy_until.insert(addr, at);
                (Decision::Redirect(addr), at)
            }
            None => {
                // `other` is None only where `own` is set; the fallback
                // keeps this total.
                let at = own.unwrap_or(now + transfer);
                self.own_busy_until = Some(at);
                (Decision::Serve, at)
            }
        };
        tree.receivers.push(Receiver {
            addr: requester,
            ready_at,
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
    fn a_late_asker_goes_to_a_receiver_that_is_free_now() {
        let mut f = Fanout::default();
        let start = Instant::now();
        let redirect = |f: &mut Fanout, piece, i, now| match f.decide(
            piece,
            addr(i),
            Ask::Redirectable,
            ROOT,
            now,
        ) {
            Decision::Redirect(to) => Some(to),
            Decision::Serve => None,
        };
        // Hosts 1 to 4 get piece 0; host 1 feeds two of the others.
        for i in 1..=4 {
            redirect(&mut f, 0, i, start);
        }
        // Well after, all four hold it, and host 1 is first to ask for
        // piece 1 and feeds hosts 5 to 7 with it.
        let later = start + Duration::from_millis(200);
        assert_eq!(redirect(&mut f, 1, 1, later), None);
        for i in 5..=7 {
            redirect(&mut f, 1, i, later);
        }
        // Counted within piece 0 alone, host 1 (first to hold it) would
        // feed a late asker too; it is still busy with piece 1.
        let to = redirect(&mut f, 0, 8, later).expect("the root sends piece 0 once");
        assert_ne!(to, addr(1).unwrap(), "sent to the busiest receiver");
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
