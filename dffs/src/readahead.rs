//! Per-handle read-ahead for sequential readers.
//!
//! A reader that keeps asking for the bytes right after its last read is
//! sequential: dffs asks peerd, at prefetch priority, for a window beyond
//! it, doubling the window up to a limit. A reader that jumps resets the
//! window to nothing, so random reads never pull more than the pieces they
//! touch.
//!
//! A reader that has read a long way in order from the very start (`cp`,
//! `sha256sum`, unpacking a layer) almost surely reads it all: peerd is then
//! asked to fetch the whole task in the background, as dfget does, so the
//! reader runs at download speed rather than one window at a time, and the
//! cluster's seed streams the task from the origin instead of trickling
//! it piece by piece.

use crate::nodes::Node;
use api::local::LocalClient;
use api::proto::Priority;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The first window once a reader looks sequential.
const INITIAL_WINDOW: u64 = 2 << 20;

/// When a reader reading in order from the start gets the whole task
/// fetched in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeAfter {
    Never,
    /// Once it has read this many bytes.
    Bytes(u64),
    /// Once it has read 1/64 of the task, but at least 2 MiB and at most
    /// 8 MiB. Until then the reader is served one read-ahead window at a
    /// time, which costs a swarm of readers starting together a slow
    /// start of about the same length for any task (at 8 MiB, hosts on
    /// 100 Mbit/s links fell about half a second of line rate behind), so
    /// small tasks should leave it early; a reader that stops
    /// right after the threshold wastes the rest of the task, so large
    /// tasks should leave it late. 24 hosts copying a 128 MiB task took
    /// 1.23 times the line-rate bound with 2 MiB and 1.25 with 8 (medians
    /// of 21 interleaved runs; 2 MiB was faster in 19).
    Auto,
}

impl WholeAfter {
    const AUTO_MIN: u64 = 2 << 20;
    const AUTO_MAX: u64 = 8 << 20;

    /// Parses a mount option value: MiB, `0` for never, or `auto`.
    pub fn parse_mib(value: &str) -> Option<WholeAfter> {
        if value == "auto" {
            return Some(WholeAfter::Auto);
        }
        match value.parse::<u64>().ok()?.checked_mul(1 << 20)? {
            0 => Some(WholeAfter::Never),
            bytes => Some(WholeAfter::Bytes(bytes)),
        }
    }

    /// Bytes read in order from the start of a task of `length` bytes
    /// that earn the whole task, if any do.
    fn threshold(self, length: u64) -> Option<u64> {
        match self {
            WholeAfter::Never => None,
            WholeAfter::Bytes(bytes) => Some(bytes),
            WholeAfter::Auto => Some((length / 64).clamp(Self::AUTO_MIN, Self::AUTO_MAX)),
        }
    }
}

/// The mount option value `parse_mib` reads back.
impl std::fmt::Display for WholeAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WholeAfter::Never => f.write_str("0"),
            WholeAfter::Bytes(bytes) => write!(f, "{}", bytes >> 20),
            WholeAfter::Auto => f.write_str("auto"),
        }
    }
}

/// How far a read may start from where the last one ended and still count
/// as in order: the kernel's own read-ahead sends
/// several requests at once, up to about 12 MiB apart, and two FUSE threads
/// may handle them out of order.
const REORDER_SLACK: u64 = 16 << 20;

struct Handle {
    passthrough: bool,
    next_expected: u64,
    window: u64,
    prefetched_until: u64,
    /// Bytes read in the current sequential run.
    run_bytes: u64,
    /// The current sequential run began at offset 0.
    run_from_start: bool,
    /// This handle already asked for the whole task.
    asked_whole: bool,
}

/// What to ask peerd for after a read.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadAhead {
    pub range: Range<u64>,
    /// Also fetch the whole task in the background.
    pub whole: bool,
}

pub struct Handles {
    open: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
    max_window: u64,
    whole_after: WholeAfter,
}

impl Handles {
    pub fn new(max_window: u64, whole_after: WholeAfter) -> Handles {
        Handles {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            max_window,
            whole_after,
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
            run_bytes: 0,
            run_from_start: true,
            asked_whole: false,
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

    /// Records a read of `start..end` and returns what to prefetch, if the
    /// reader is sequential and the window needs topping up.
    pub fn advance(&self, fh: u64, start: u64, end: u64, length: u64) -> Option<ReadAhead> {
        if self.max_window == 0 {
            return None;
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let h = open.get_mut(&fh)?;
        // A run starts only where the last read ended; once running, it
        // tolerates the kernel's reordering.
        let sequential = if h.run_bytes == 0 {
            start == h.next_expected
        } else {
            start.abs_diff(h.next_expected) <= REORDER_SLACK
        };
        if !sequential {
            h.next_expected = end;
            h.window = 0;
            h.prefetched_until = 0;
            h.run_bytes = 0;
            h.run_from_start = false;
            return None;
        }
        h.next_expected = h.next_expected.max(end);
        h.run_bytes += end - start;
        // Asked once per handle, even when the window already reaches the
        // end: the whole download also tells the cluster to stream the task.
        let whole = h.run_from_start
            && !h.asked_whole
            && self
                .whole_after
                .threshold(length)
                .is_some_and(|after| h.run_bytes >= after)
            && end < length;
        h.asked_whole |= whole;
        h.window = (h.window * 2).clamp(INITIAL_WINDOW, self.max_window);
        let target = (end + h.window).min(length);
        let from = h.prefetched_until.max(end);
        // Top up only when half the window is used, to ask in big steps.
        let top_up = target > from && (target - from >= h.window / 2 || target == length);
        if top_up {
            h.prefetched_until = target;
        }
        let range = if top_up { from..target } else { end..end };
        (top_up || whole).then_some(ReadAhead { range, whole })
    }
}

/// Asks peerd for a read-ahead window at prefetch priority (and, when the
/// reader earned it, for the whole task), without anyone waiting.
pub fn prefetch(
    runtime: &tokio::runtime::Handle,
    peerd: &LocalClient,
    node: &Arc<Node>,
    ahead: ReadAhead,
    timeout: Duration,
) {
    let ReadAhead { range, whole } = ahead;
    if whole && !node.is_complete() {
        runtime.spawn(follow_whole_download(peerd.clone(), node.clone(), timeout));
    }
    let pieces = node
        .layout
        .pieces_covering(range.start, range.end - range.start);
    if range.is_empty() || node.has_all(pieces.clone()) {
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

/// Has peerd download the whole task, and marks pieces present as they
/// land, so the reader finds them without asking peerd again.
async fn follow_whole_download(peerd: LocalClient, node: Arc<Node>, timeout: Duration) {
    let request = api::proto::DownloadRequest {
        task_id: node.id.to_string(),
        in_order: true,
        ..Default::default()
    };
    let mut progress = match peerd.download(request, timeout).await {
        Ok(progress) => progress,
        Err(e) => return tracing::debug!(task = %node.id, "cannot start the whole-task fetch: {e}"),
    };
    tracing::debug!(task = %node.id, "a reader reads the task in order: fetching all of it");
    loop {
        match progress.message().await {
            Ok(Some(message)) => {
                if let Some(info) = &message.task {
                    node.learn(info);
                }
                node.mark_present(message.new_pieces.iter().copied());
                if message.done {
                    return node.mark_complete();
                }
            }
            Ok(None) => return,
            Err(status) => {
                return tracing::debug!(task = %node.id, "whole-task fetch failed: {}", status.message());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn window(h: &Handles, fh: u64, start: u64, end: u64) -> Option<Range<u64>> {
        h.advance(fh, start, end, GIB).map(|a| a.range)
    }

    #[test]
    fn sequential_reads_grow_the_window_and_random_reads_get_none() {
        let handles = Handles::new(16 * MIB, WholeAfter::Never);
        let fh = handles.open(2, false);
        assert_eq!(window(&handles, fh, 0, MIB), Some(MIB..3 * MIB));
        // Inside the window already fetched: nothing new yet.
        assert_eq!(
            window(&handles, fh, MIB, MIB + 4096),
            Some(3 * MIB..MIB + 4096 + 4 * MIB)
        );
        assert_eq!(window(&handles, fh, 500 * MIB, 500 * MIB + 4096), None);
        assert_eq!(window(&handles, fh, 7 * MIB, 7 * MIB + 4096), None);
    }

    #[test]
    fn requests_handled_slightly_out_of_order_still_count_as_sequential() {
        let handles = Handles::new(16 * MIB, WholeAfter::Bytes(8 * MIB));
        let fh = handles.open(2, false);
        // The first read is the reader's own; then the kernel's read-ahead
        // asks for four 1 MiB blocks at a time, which arrive shuffled.
        let mut asked_whole = 0;
        assert!(handles.advance(fh, 0, MIB, GIB).is_some());
        for batch in 0..8u64 {
            for i in [2, 1, 4, 3] {
                let start = (batch * 4 + i) * MIB;
                if let Some(a) = handles.advance(fh, start, start + MIB, GIB) {
                    asked_whole += usize::from(a.whole);
                }
            }
        }
        assert_eq!(
            asked_whole, 1,
            "a shuffled read from the start is still a whole read"
        );
        let fh = handles.open(2, false);
        assert_eq!(whole_asks(&handles, fh, 0, 2), 0);
        assert_eq!(window(&handles, fh, 100 * MIB, 100 * MIB + 4096), None);
    }

    #[test]
    fn one_read_near_the_start_is_neither_a_run_nor_a_whole_read() {
        let handles = Handles::new(16 * MIB, WholeAfter::Bytes(8 * MIB));
        // `dd skip=... count=1`: a new handle, one 4 KiB read at 10 MiB.
        let fh = handles.open(2, false);
        assert_eq!(handles.advance(fh, 10 * MIB, 10 * MIB + 4096, GIB), None);
    }

    #[test]
    fn the_window_stops_at_the_end_and_at_the_limit() {
        let handles = Handles::new(4 * MIB, WholeAfter::Never);
        let fh = handles.open(2, false);
        let mut end = 0;
        let mut last = None;
        while end < 64 * MIB {
            if let Some(a) = handles.advance(fh, end, end + MIB, 64 * MIB) {
                let r = a.range;
                assert!(r.end - r.start <= 4 * MIB + MIB, "{r:?}");
                assert!(r.end <= 64 * MIB);
                assert!(!a.whole, "asked for the whole task with whole_after=0");
                last = Some(r);
            }
            end += MIB;
        }
        assert_eq!(last.unwrap().end, 64 * MIB);
    }

    /// Reads `count` MiB in order from `start` and returns how many
    /// read-aheads asked for the whole task.
    fn whole_asks(h: &Handles, fh: u64, start: u64, count: u64) -> usize {
        (0..count)
            .filter_map(|i| h.advance(fh, start + i * MIB, start + (i + 1) * MIB, GIB))
            .filter(|a| a.whole)
            .count()
    }

    #[test]
    fn a_long_read_from_the_start_asks_for_the_whole_task_once() {
        let handles = Handles::new(16 * MIB, WholeAfter::Bytes(8 * MIB));
        let fh = handles.open(2, false);
        assert_eq!(whole_asks(&handles, fh, 0, 7), 0, "asked before 8 MiB");
        assert_eq!(whole_asks(&handles, fh, 7 * MIB, 100), 1);
    }

    /// MiB read in order from the start of a task of `length` bytes
    /// before the whole task is asked for.
    fn read_before_whole_ask(whole_after: WholeAfter, length: u64) -> Option<u64> {
        let handles = Handles::new(16 * MIB, whole_after);
        let fh = handles.open(2, false);
        (0..length / MIB)
            .find(|&i| {
                handles
                    .advance(fh, i * MIB, (i + 1) * MIB, length)
                    .is_some_and(|a| a.whole)
            })
            .map(|i| i + 1)
    }

    #[test]
    fn the_automatic_threshold_grows_with_the_task_within_bounds() {
        assert_eq!(read_before_whole_ask(WholeAfter::Auto, 32 * MIB), Some(2));
        assert_eq!(read_before_whole_ask(WholeAfter::Auto, 128 * MIB), Some(2));
        assert_eq!(read_before_whole_ask(WholeAfter::Auto, 320 * MIB), Some(5));
        assert_eq!(read_before_whole_ask(WholeAfter::Auto, 4 * GIB), Some(8));
        let explicit = WholeAfter::Bytes(3 * MIB);
        assert_eq!(read_before_whole_ask(explicit, 4 * GIB), Some(3));
        assert_eq!(read_before_whole_ask(WholeAfter::Never, 128 * MIB), None);
    }

    #[test]
    fn whole_after_parses_mib_zero_and_auto() {
        assert_eq!(WholeAfter::parse_mib("auto"), Some(WholeAfter::Auto));
        assert_eq!(WholeAfter::parse_mib("0"), Some(WholeAfter::Never));
        assert_eq!(WholeAfter::parse_mib("00"), Some(WholeAfter::Never));
        assert_eq!(
            WholeAfter::parse_mib("12"),
            Some(WholeAfter::Bytes(12 * MIB))
        );
        assert_eq!(WholeAfter::parse_mib("-1"), None);
        assert_eq!(WholeAfter::parse_mib("lots"), None);
        assert_eq!(WholeAfter::parse_mib("99999999999999999"), None);
        for value in ["auto", "0", "12"] {
            let parsed = WholeAfter::parse_mib(value).unwrap();
            assert_eq!(parsed.to_string(), value, "round trip");
        }
    }

    #[test]
    fn a_file_the_window_covers_early_still_gets_the_whole_ask() {
        // 128 MiB: after a few reads the window reaches the end, yet the
        // cluster must still hear that the task is wanted whole.
        let handles = Handles::new(128 * MIB, WholeAfter::Bytes(8 * MIB));
        let fh = handles.open(2, false);
        let length = 128 * MIB;
        let asks: Vec<ReadAhead> = (0..128)
            .filter_map(|i| handles.advance(fh, i * MIB, (i + 1) * MIB, length))
            .collect();
        assert_eq!(asks.iter().filter(|a| a.whole).count(), 1, "{asks:?}");
        assert_eq!(asks.iter().map(|a| a.range.end).max(), Some(length));
    }

    #[test]
    fn reads_that_did_not_start_at_zero_never_ask_for_the_whole_task() {
        let handles = Handles::new(16 * MIB, WholeAfter::Bytes(8 * MIB));
        // A long read of a file inside a blob, away from its start.
        let fh = handles.open(2, false);
        assert_eq!(whole_asks(&handles, fh, 300 * MIB, 200), 0);
        // A reader that jumps, then reads on from there.
        let fh = handles.open(2, false);
        assert_eq!(whole_asks(&handles, fh, 0, 4), 0);
        assert_eq!(window(&handles, fh, 600 * MIB, 600 * MIB + 4096), None);
        assert_eq!(whole_asks(&handles, fh, 600 * MIB + 4096, 100), 0);
        // And the option turned off.
        let handles = Handles::new(16 * MIB, WholeAfter::Never);
        let fh = handles.open(2, false);
        assert_eq!(whole_asks(&handles, fh, 0, 100), 0);
    }
}
