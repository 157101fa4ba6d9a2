//! Piece reports waiting to go to the scheduler. Ordinary reports (a piece
//! a peer now holds, a bad parent, a parent's speed) are batched for a few
//! milliseconds per task; a root's digests do not wait here (see
//! `SchedulerLink::report_digests`).

use api::proto::{BadParent, ParentSpeed};
use api::task::TaskId;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

#[derive(Default, Debug, PartialEq)]
pub struct PendingReport {
    pub pieces: Vec<u32>,
    pub bad_parents: Vec<BadParent>,
    pub speeds: Vec<ParentSpeed>,
}

#[derive(Default)]
pub struct Reports {
    pending: Mutex<HashMap<TaskId, PendingReport>>,
    /// Wakes the sender when the first report of a batch arrives.
    pub(super) wake: Notify,
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, PendingReport>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, task: TaskId, f: impl FnOnce(&mut PendingReport)) {
        f(self.lock().entry(task).or_default());
        self.wake.notify_one();
    }

    pub fn piece(&self, task: TaskId, piece: u32) {
        self.add(task, |p| p.pieces.push(piece));
    }

    pub fn bad_parent(&self, task: TaskId, bad: BadParent) {
        self.add(task, |p| p.bad_parents.push(bad));
    }

    pub fn speed(&self, task: TaskId, speed: ParentSpeed) {
        self.add(task, |p| p.speeds.push(speed));
    }

    /// Everything queued, per task, leaving nothing behind.
    pub fn drain(&self) -> Vec<(TaskId, PendingReport)> {
        self.lock().drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_batch_per_task_and_drain_once() {
        let reports = Reports::default();
        let (a, b) = (TaskId::from_bytes([1; 32]), TaskId::from_bytes([2; 32]));
        reports.piece(a, 1);
        reports.piece(a, 2);
        reports.piece(b, 7);
        reports.bad_parent(
            a,
            BadParent {
                host_id: "p".into(),
                piece: 2,
                corrupt: false,
            },
        );
        let mut batch = reports.drain();
        batch.sort_by_key(|(id, _)| *id);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].1.pieces, [1, 2]);
        assert_eq!(batch[0].1.bad_parents.len(), 1);
        assert_eq!(batch[1].1.pieces, [7]);
        assert!(reports.drain().is_empty());
    }
}
