//! Per-handle read-ahead for sequential readers.
//!
//! A reader that keeps asking for the bytes right after its last read is
//! sequential: dffs asks peerd, at prefetch priority, for a window beyond
//! it, doubling the window up to a limit. A reader that jumps resets the
//! window to nothing, so random reads never pull more than the pieces they
//! touch.

use crate::client::Peerd;
use crate::nodes::Node;
use api::proto::Priority;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The first window once a reader looks sequential.
const INITIAL_WINDOW: u64 = 2 << 20;

struct Handle {
    passthrough: bool,
    next_expected: u64,
    window: u64,
    prefetched_until: u64,
}

pub struct Handles {
    open: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
    max_window: u64,
}

impl Handles {
    pub fn new(max_window: u64) -> Handles {
        Handles {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            max_window,
        }
    }

    /// A new handle; `passthrough` ones bypass dffs for reads.
    pub fn open(&self, _ino: u64, passthrough: bool) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            passthrough,
            next_expected: 0,
            window: 0,
            prefetched_until: 0,
        };
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, handle);
        fh
    }

    /// Forgets a handle; true when it was a passthrough one.
    pub fn close(&self, fh: u64) -> bool {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh)
            .is_some_and(|h| h.passthrough)
    }

    /// Records a read of `start..end` and returns the range to prefetch,
    /// if the reader is sequential and the window needs topping up.
    pub fn advance(&self, fh: u64, start: u64, end: u64, length: u64) -> Option<Range<u64>> {
        if self.max_window == 0 {
            return None;
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let h = open.get_mut(&fh)?;
        let sequential = start == h.next_expected;
        h.next_expected = end;
        if !sequential {
            h.window = 0;
            h.prefetched_until = 0;
            return None;
        }
        h.window = (h.window * 2).clamp(INITIAL_WINDOW, self.max_window);
        let target = (end + h.window).min(length);
        let from = h.prefetched_until.max(end);
        // Top up only when half the window is used, to ask in big steps.
        if target <= from || target - from < h.window / 2 && target != length {
            return None;
        }
        h.prefetched_until = target;
        Some(from..target)
    }
}

/// Asks peerd for `range` at prefetch priority, without anyone waiting.
pub fn prefetch(
    runtime: &tokio::runtime::Handle,
    peerd: &Peerd,
    node: &Arc<Node>,
    range: Range<u64>,
    timeout: Duration,
) {
    let pieces = node
        .layout
        .pieces_covering(range.start, range.end - range.start);
    if node.has_all(pieces.clone()) {
        return;
    }
    let (peerd, node) = (peerd.clone(), node.clone());
    runtime.spawn(async move {
        let length = range.end - range.start;
        match peerd
            .ensure(node.id, range.start, length, Priority::Prefetch, timeout)
            .await
        {
            Ok(response) => {
                node.set_content_path(&response.content_path);
                node.mark_present(pieces);
                if response.complete {
                    node.mark_complete();
                }
            }
            Err(e) => tracing::debug!(task = %node.id, "read-ahead failed: {e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sequential_reads_grow_the_window_and_random_reads_get_none() {
        let handles = Handles::new(16 * MIB);
        let fh = handles.open(2, false);
        let first = handles.advance(fh, 0, MIB, 1 << 30).unwrap();
        assert_eq!(first, MIB..3 * MIB);
        // Inside the window already fetched: nothing new yet.
        assert_eq!(
            handles.advance(fh, MIB, MIB + 4096, 1 << 30),
            Some(3 * MIB..MIB + 4096 + 4 * MIB)
        );
        assert_eq!(
            handles.advance(fh, 500 * MIB, 500 * MIB + 4096, 1 << 30),
            None
        );
        assert_eq!(handles.advance(fh, 7 * MIB, 7 * MIB + 4096, 1 << 30), None);
    }

    #[test]
    fn the_window_stops_at_the_end_and_at_the_limit() {
        let handles = Handles::new(4 * MIB);
        let fh = handles.open(2, false);
        let mut end = 0;
        let mut last = None;
        while end < 64 * MIB {
            if let Some(r) = handles.advance(fh, end, end + MIB, 64 * MIB) {
                assert!(r.end - r.start <= 4 * MIB + MIB, "{r:?}");
                assert!(r.end <= 64 * MIB);
                last = Some(r);
            }
            end += MIB;
        }
        assert_eq!(last.unwrap().end, 64 * MIB);
    }
}
