//! A root's piece digests on their way to the scheduler.
//!
//! Children verify every piece against the digest its root reported to
//! the scheduler, so a root must not serve a piece before that report is
//! acknowledged. It used to report each piece's digest as the piece was
//! stored, and awaited the answer before reading the origin's next bytes.
//! Under load the scheduler took 3 ms on median and up to 140 ms to answer
//! (a 24-host swarm through dffs, on 2 cores); the root stopped reading for
//! 6 s of an 11 s download, its origin flow's window closed, and the
//! origin's link sat idle.
//!
//! Now the origin is read without waiting: digests queue here, one report
//! at a time carries all that queued while the last was in flight, and
//! the upload server waits for a piece's report instead. This module is
//! the queue; `landing` sends it.

use api::digest::PieceDigest;
use api::proto;
use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// Digests stored but not yet acknowledged by the scheduler.
#[derive(Default)]
struct Pending {
    queue: Vec<proto::PieceDigest>,
    /// Pieces in `queue` or in the report in flight.
    unreported: HashSet<u32>,
    /// A report is in flight; its sender takes the next queue after it.
    sending: bool,
}

pub struct Publisher {
    pending: Mutex<Pending>,
    /// Bumped after every report, for servers waiting on a piece.
    reported: watch::Sender<u64>,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher {
            pending: Mutex::default(),
            reported: watch::channel(0).0,
        }
    }
}

impl Publisher {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until piece `n`'s digest, if this host queued one, has been
    /// reported (or its report failed).
    pub async fn wait_reported(&self, n: u32) {
        let mut reported = self.reported.subscribe();
        while self.lock().unreported.contains(&n) {
            if reported.changed().await.is_err() {
                return;
            }
        }
    }

    /// Holds reports back until `release`, by marking one in flight. A root
    /// that fetches before it has reported the task's metadata must: the
    /// scheduler sizes a task's digest table from its metadata, and refuses
    /// digests that come first.
    pub(super) fn hold(&self) {
        self.lock().sending = true;
    }

    /// Queues a digest; true when no report is in flight (or held), so the
    /// caller must start one.
    pub(super) fn push(&self, n: u32, digest: PieceDigest) -> bool {
        let mut pending = self.lock();
        pending.unreported.insert(n);
        pending.queue.push(proto::PieceDigest {
            number: n,
            blake3: digest.0.to_vec(),
        });
        !std::mem::replace(&mut pending.sending, true)
    }

    /// The queued digests, marking a report in flight; None (and no report
    /// in flight) when nothing is queued.
    pub(super) fn take(&self) -> Option<Vec<proto::PieceDigest>> {
        let mut pending = self.lock();
        if pending.queue.is_empty() {
            pending.sending = false;
            return None;
        }
        Some(std::mem::take(&mut pending.queue))
    }

    pub(super) fn done(&self, pieces: &[u32]) {
        let mut pending = self.lock();
        for n in pieces {
            pending.unreported.remove(n);
        }
        drop(pending);
        self.reported.send_modify(|count| *count += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn digest(n: u32) -> PieceDigest {
        PieceDigest::of(&n.to_le_bytes())
    }

    async fn reported_within(publisher: &Publisher, n: u32, limit: Duration) -> bool {
        tokio::time::timeout(limit, publisher.wait_reported(n))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_piece_waits_until_its_report_is_acknowledged() {
        let publisher = Publisher::default();
        assert!(reported_within(&publisher, 5, Duration::ZERO).await);
        assert!(
            publisher.push(5, digest(5)),
            "the first push starts a report"
        );
        assert!(!publisher.push(6, digest(6)), "one report at a time");
        assert!(!reported_within(&publisher, 5, Duration::from_millis(20)).await);
        let batch = publisher.take().expect("two digests queued");
        assert_eq!(batch.iter().map(|d| d.number).collect::<Vec<_>>(), [5, 6]);
        assert!(!reported_within(&publisher, 6, Duration::from_millis(20)).await);
        publisher.done(&[5, 6]);
        assert!(reported_within(&publisher, 5, Duration::from_millis(20)).await);
        assert!(reported_within(&publisher, 6, Duration::from_millis(20)).await);
        assert!(publisher.take().is_none(), "nothing left, the sender stops");
        assert!(
            publisher.push(7, digest(7)),
            "the next push starts one again"
        );
    }

    #[tokio::test]
    async fn a_held_publisher_starts_no_report() {
        let publisher = Publisher::default();
        publisher.hold();
        assert!(!publisher.push(1, digest(1)));
        // Releasing starts the sender, which finds what queued meanwhile.
        let batch = publisher.take().expect("queued while held");
        assert_eq!(batch[0].number, 1);
    }
}
