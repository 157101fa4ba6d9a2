//! Host-wide download slots, handed out by priority.
//!
//! Every piece download holds a slot. When slots run out, waiters queue,
//! and a freed slot goes to the most urgent waiter (a blocked reader beats
//! read-ahead, which beats bulk work), oldest first. A waiter's priority can
//! rise while it waits, when a reader comes to need a piece that bulk work
//! had already queued.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub struct Slots {
    state: Mutex<State>,
}

struct State {
    free: usize,
    next_seq: u64,
    waiters: Vec<Waiter>,
}

struct Waiter {
    seq: u64,
    priority: Arc<AtomicU8>,
    wake: oneshot::Sender<Permit>,
}

/// A held slot; dropping it passes the slot on.
pub struct Permit {
    slots: Option<Arc<Slots>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }
}

impl Slots {
    pub fn new(count: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State {
                free: count.max(1),
                next_seq: 0,
                waiters: Vec::new(),
            }),
        })
    }

    /// Waits for a slot. `priority` is read when slots are handed out, so
    /// raising it later moves the waiter up the queue.
    pub async fn acquire(self: &Arc<Self>, priority: Arc<AtomicU8>) -> Permit {
        let rx = {
            let mut state = self.lock();
            if state.free > 0 {
                state.free -= 1;
                return Permit {
                    slots: Some(self.clone()),
                };
            }
            let (wake, rx) = oneshot::channel();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.waiters.push(Waiter {
                seq,
                priority,
                wake,
            });
            rx
        };
        // The sender lives in `waiters` until a slot is handed over, and
        // `release` never drops it unsent, so this cannot fail.
        rx.await.expect("slot queue dropped a waiter")
    }

    /// Adds `n` slots, handing them to waiters first.
    pub fn add_permits(self: &Arc<Self>, n: usize) {
        for _ in 0..n {
            self.release();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(self: &Arc<Self>) {
        let mut state = self.lock();
        loop {
            let best = state
                .waiters
                .iter()
                .enumerate()
                .max_by_key(|(_, w)| (w.priority.load(Ordering::Relaxed), std::cmp::Reverse(w.seq)))
                .map(|(i, _)| i);
            let Some(index) = best else {
                state.free += 1;
                return;
            };
            let waiter = state.waiters.swap_remove(index);
            let permit = Permit {
                slots: Some(self.clone()),
            };
            match waiter.wake.send(permit) {
                Ok(()) => return,
                // The waiter gave up; take the permit back without letting
                // its Drop re-enter this lock, and try the next waiter.
                Err(mut permit) => {
                    permit.slots = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prio(p: u8) -> Arc<AtomicU8> {
        Arc::new(AtomicU8::new(p))
    }

    #[tokio::test]
    async fn freed_slots_go_to_the_most_urgent_waiter() {
        let slots = Slots::new(1);
        let held = slots.acquire(prio(0)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for (name, p) in [("bulk", 0), ("read", 2), ("prefetch", 1)] {
            let slots = slots.clone();
            let order = order.clone();
            handles.push(tokio::spawn(async move {
                let _permit = slots.acquire(prio(p)).await;
                order.lock().unwrap().push(name);
            }));
            tokio::task::yield_now().await;
        }
        drop(held);
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["read", "prefetch", "bulk"]);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_leak_the_slot() {
        let slots = Slots::new(1);
        let held = slots.acquire(prio(0)).await;
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(prio(0)).await })
        };
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        let again =
            tokio::time::timeout(std::time::Duration::from_secs(1), slots.acquire(prio(0))).await;
        assert!(again.is_ok());
    }
}
