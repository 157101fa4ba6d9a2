//! How long an origin run is, and how many a root keeps in flight.
//!
//! A root that wants a whole task fetches it from the origin in runs of
//! consecutive pieces, one ranged GET each, rather than one request per
//! piece (see `origin_run` for why). These numbers are shared by the run
//! driver, the whole-task planner and the read-ahead of a root.

use api::piece::Layout;

/// Bytes one run asks for: at 100 Mbit/s about two thirds of a second,
/// long enough that a request's round trip is a small share of it, short
/// enough that a reader's urgent piece need not wait behind much.
pub(super) const RUN_BYTES: u64 = 8 << 20;

/// Runs a root keeps in flight: two, so the next run's request is on its
/// way while the last one's bytes still arrive.
pub(super) const ROOT_RUNS: usize = 2;

/// Pieces in one run of a task with this layout.
pub(super) fn run_pieces(layout: Layout) -> u32 {
    u32::try_from((RUN_BYTES / layout.piece_length).max(1)).unwrap_or(u32::MAX)
}

/// How far past the root's lowest missing piece a host asks it for pieces
/// it must still fetch: the pieces of the runs a root keeps in flight.
pub(super) fn root_window(layout: Layout) -> u32 {
    (ROOT_RUNS as u32).saturating_mul(run_pieces(layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_eight_mib_of_pieces_and_never_empty() {
        let layout = |piece| Layout::new(1 << 30, piece).expect("layout");
        assert_eq!(run_pieces(layout(256 << 10)), 32);
        assert_eq!(run_pieces(layout(4 << 20)), 2);
        assert_eq!(run_pieces(layout(16 << 20)), 1);
        assert_eq!(root_window(layout(256 << 10)), 64);
    }
}
