//! Cutting an origin body into pieces as it arrives, so each piece can be
//! stored and served as soon as its last byte is in.

use super::error::EngineError;
use super::origin_body::{OriginBody, wrong_length};
use api::piece::Layout;
use std::ops::Range;

/// Cuts an origin body that starts at a piece's first byte into whole
/// pieces, so each can be stored as soon as its last byte arrives.
pub(super) struct PieceCutter {
    layout: Layout,
    next: u32,
    end: u32,
    buf: Vec<u8>,
    /// What is left of the body's last chunk.
    rest: bytes::Bytes,
}

impl PieceCutter {
    pub(super) fn new(layout: Layout, pieces: Range<u32>) -> Self {
        PieceCutter {
            layout,
            next: pieces.start,
            end: pieces.end,
            buf: Vec::with_capacity(layout.piece_length as usize),
            rest: bytes::Bytes::new(),
        }
    }

    /// Reads `response` until the next piece is complete and returns its
    /// number (its bytes are in `piece()` until the next call); None once
    /// the body ended with every piece complete. A body that ends early or
    /// runs past the last piece is an error.
    pub(super) async fn next_piece(
        &mut self,
        body: &mut OriginBody<'_>,
    ) -> Result<Option<u32>, EngineError> {
        loop {
            let chunk = std::mem::take(&mut self.rest);
            let mut rest = &chunk[..];
            let done = self
                .fill(&mut rest)
                .ok_or_else(|| wrong_length(body.url(), "more"))?;
            self.rest = chunk.slice(chunk.len() - rest.len()..);
            if done.is_some() {
                return Ok(done);
            }
            match body.chunk().await? {
                Some(chunk) => self.rest = chunk,
                None => return self.check_done(body.url()).map(|()| None),
            }
        }
    }

    /// Moves bytes from the front of `rest` into the current piece. Returns
    /// `Some(Some(n))` when piece `n` is complete (its bytes are in
    /// `piece()` until the next call), `Some(None)` when `rest` ran out
    /// first, and None when `rest` holds bytes past the last piece.
    fn fill(&mut self, rest: &mut &[u8]) -> Option<Option<u32>> {
        if self.next < self.end && self.buf.len() as u64 == self.layout.piece_len(self.next) {
            self.buf.clear();
            self.next += 1;
        }
        if rest.is_empty() {
            return Some(None);
        }
        if self.next >= self.end {
            return None;
        }
        let want = self.layout.piece_len(self.next) as usize - self.buf.len();
        let (take, left) = rest.split_at(want.min(rest.len()));
        self.buf.extend_from_slice(take);
        *rest = left;
        Some((take.len() == want).then_some(self.next))
    }

    pub(super) fn piece(&self) -> &[u8] {
        &self.buf
    }

    /// Errors unless every piece was completed (a piece counts once the
    /// `fill` after it has run, which `next_piece` always does).
    fn check_done(&self, url: &str) -> Result<(), EngineError> {
        if self.next >= self.end {
            Ok(())
        } else {
            Err(wrong_length(url, "fewer"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 256 << 10;

    /// Feeds `body` in `chunk`-byte chunks; returns the pieces cut, whether
    /// the body ran past the last piece, and whether all pieces came.
    fn cut(pieces: Range<u32>, body: &[u8], chunk: usize) -> (Vec<(u32, Vec<u8>)>, bool, bool) {
        let layout = Layout::new(2 * PIECE + 5, PIECE).expect("layout");
        let mut cutter = PieceCutter::new(layout, pieces);
        let mut out = Vec::new();
        for part in body.chunks(chunk) {
            let mut rest = part;
            loop {
                match cutter.fill(&mut rest) {
                    Some(Some(n)) => out.push((n, cutter.piece().to_vec())),
                    Some(None) => break,
                    None => return (out, true, false),
                }
            }
        }
        (out, false, cutter.check_done("u").is_ok())
    }

    #[test]
    fn a_body_is_cut_at_piece_boundaries_whatever_its_chunks() {
        let body: Vec<u8> = (0..2 * PIECE + 5).map(|i| (i % 251) as u8).collect();
        for chunk in [1000, 65536, 300_000, body.len()] {
            let (pieces, overrun, complete) = cut(0..3, &body, chunk);
            assert!(!overrun && complete, "chunk {chunk}");
            let sizes: Vec<usize> = pieces.iter().map(|(_, b)| b.len()).collect();
            assert_eq!(sizes, [PIECE as usize, PIECE as usize, 5], "chunk {chunk}");
            let joined: Vec<u8> = pieces.iter().flat_map(|(_, b)| b.clone()).collect();
            assert_eq!(joined, body);
            assert_eq!(pieces.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1, 2]);
        }
        // A run that starts at piece 1.
        let (pieces, overrun, complete) = cut(1..3, &body[PIECE as usize..], 4096);
        assert!(!overrun && complete);
        assert_eq!(pieces.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_body_too_long_or_too_short_is_caught() {
        let long = vec![7u8; (2 * PIECE + 6) as usize];
        let (_, overrun, _) = cut(0..3, &long, 65536);
        assert!(overrun, "a byte past the last piece went unnoticed");
        let short = vec![7u8; (2 * PIECE) as usize];
        let (pieces, overrun, complete) = cut(0..3, &short, 65536);
        assert_eq!((pieces.len(), overrun, complete), (2, false, false));
    }
}
