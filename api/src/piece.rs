//! Piece arithmetic.
//!
//! A task is cut into pieces of one power-of-two length (the last piece may
//! be shorter). Pieces are the unit of transfer, verification and
//! bookkeeping: a piece is either present and verified, or absent.

use std::ops::Range;

/// The smallest piece length. A host passes a piece on only once it holds
/// and has verified all of it, so every hop of a piece through the swarm
/// costs one piece's transfer time: at 100 Mbit/s, 1 MiB pieces of a
/// 128 MiB file made 24 hosts finish at 1.6x the line-rate bound and
/// 256 KiB pieces at 1.3x (bench/fanout; 128 KiB was worse again, as
/// per-request costs take over). Small pieces also keep a random 4 KiB
/// read cheap.
pub const MIN_PIECE_LENGTH: u64 = 256 << 10;
/// Pieces stay this small only while a task has at most
/// `SMALL_PIECES_UP_TO` of them, then grow to 1 MiB: at GB/s on loopback
/// the cost per piece starts to show (a 1 GiB task in 256 KiB pieces was
/// copied about 15% slower than in 1 MiB pieces).
const SMALL_PIECES_UP_TO: u64 = 1024;
/// Past 1 MiB, pieces grow only as needed to stay under this count, which
/// keeps digest lists and bitmaps small.
pub const TARGET_MAX_PIECES: u64 = 8192;
/// The largest piece length, reached only by tasks over 512 GiB.
pub const MAX_PIECE_LENGTH: u64 = 64 << 20;

/// The piece length used for a task of `content_length` bytes.
pub fn piece_length_for(content_length: u64) -> u64 {
    let small = content_length
        .div_ceil(SMALL_PIECES_UP_TO)
        .next_power_of_two()
        .min(1 << 20);
    let bounded = content_length
        .div_ceil(TARGET_MAX_PIECES)
        .next_power_of_two();
    small.max(bounded).clamp(MIN_PIECE_LENGTH, MAX_PIECE_LENGTH)
}

/// The layout of one task's pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub content_length: u64,
    pub piece_length: u64,
}

/// Most pieces a task may have: 64 TiB in 64 MiB pieces. A layout comes
/// from the network, and every daemon sizes per-task tables by it, so an
/// unbounded count would let one message make a daemon allocate without
/// limit (one with 2^32 pieces once aborted the scheduler).
pub const MAX_PIECES: u64 = 1 << 20;

/// Why a layout from the network was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadLayout {
    #[error("invalid piece length {0}: must be a power of two between 256 KiB and 64 MiB")]
    PieceLength(u64),
    #[error(
        "a content length of {content_length} bytes in pieces of {piece_length} makes more than {MAX_PIECES} pieces; dffs handles objects up to 64 TiB"
    )]
    TooManyPieces {
        content_length: u64,
        piece_length: u64,
    },
}

impl Layout {
    /// A layout checked for sanity, since it may come from the network.
    pub fn new(content_length: u64, piece_length: u64) -> Result<Self, BadLayout> {
        let valid = piece_length.is_power_of_two()
            && (MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&piece_length);
        if !valid {
            return Err(BadLayout::PieceLength(piece_length));
        }
        if content_length.div_ceil(piece_length) > MAX_PIECES {
            return Err(BadLayout::TooManyPieces {
                content_length,
                piece_length,
            });
        }
        Ok(Layout {
            content_length,
            piece_length,
        })
    }

    /// The layout dffs picks for a new task.
    pub fn for_length(content_length: u64) -> Self {
        Layout {
            content_length,
            piece_length: piece_length_for(content_length),
        }
    }

    pub fn piece_count(&self) -> u32 {
        self.content_length.div_ceil(self.piece_length) as u32
    }

    /// The byte range of piece `number` within the task.
    pub fn piece_range(&self, number: u32) -> Range<u64> {
        let start = u64::from(number) * self.piece_length;
        let end = (start + self.piece_length).min(self.content_length);
        start..end.max(start)
    }

    pub fn piece_len(&self, number: u32) -> u64 {
        let r = self.piece_range(number);
        r.end - r.start
    }

    /// The pieces that cover `length` bytes from `offset`, clipped to the
    /// end of the task. Empty when the range starts at or past the end.
    pub fn pieces_covering(&self, offset: u64, length: u64) -> Range<u32> {
        let end = offset.saturating_add(length).min(self.content_length);
        if offset >= end {
            return 0..0;
        }
        let first = offset / self.piece_length;
        let last = (end - 1) / self.piece_length;
        first as u32..(last + 1) as u32
    }
}

/// The positions of the set bits in `words`, laid out as `Bitmap::words`
/// lays them out, in order.
pub fn ones_in(words: impl IntoIterator<Item = u64>) -> impl Iterator<Item = u32> {
    words.into_iter().zip(0u32..).flat_map(|(mut word, index)| {
        std::iter::from_fn(move || {
            (word != 0).then(|| {
                let bit = word.trailing_zeros();
                word &= word - 1;
                index * 64 + bit
            })
        })
    })
}

/// Words (as `Bitmap::words` lays them out) with the bits of `range` set,
/// for a map of `len` bits.
pub fn range_words(range: Range<u32>, len: u32) -> impl Iterator<Item = u64> {
    let end = range.end.min(len);
    let start = range.start.min(end);
    (0..len.div_ceil(64)).map(move |index| {
        let (low, high) = (index * 64, index * 64 + 64);
        let (from, to) = (start.clamp(low, high) - low, end.clamp(low, high) - low);
        let below = |bits: u32| {
            if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            }
        };
        below(to) & !below(from)
    })
}

/// One bit per piece, LSB-first within each byte, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitmap {
    bits: Vec<u8>,
    len: u32,
    ones: u32,
}

impl Bitmap {
    pub fn new(len: u32) -> Self {
        Bitmap {
            bits: vec![0; (len as usize).div_ceil(8)],
            len,
            ones: 0,
        }
    }

    /// A bitmap of `len` bits from wire bytes; bits past `len` are ignored
    /// and missing bytes read as zero, so a short or long peer message
    /// cannot cause a panic.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Self {
        let mut map = Bitmap::new(len);
        let copied = map.bits.len().min(bytes.len());
        map.bits[..copied].copy_from_slice(&bytes[..copied]);
        if !len.is_multiple_of(8)
            && let Some(last) = map.bits.last_mut()
        {
            *last &= (1u8 << (len % 8)) - 1;
        }
        map.ones = map.bits.iter().map(|b| b.count_ones()).sum();
        map
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Sets bit `i`; returns true when it was not set before.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bits[(i / 8) as usize] |= 1 << (i % 8);
        self.ones += 1;
        true
    }

    pub fn clear(&mut self, i: u32) {
        if self.get(i) {
            self.bits[(i / 8) as usize] &= !(1 << (i % 8));
            self.ones -= 1;
        }
    }

    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        ones_in(self.words())
    }

    /// The bits as 64-bit words: bit `i` of the map is bit `i % 64` of word
    /// `i / 64`, and bits past the end are zero. Set operations across maps
    /// then cost a word, not a bit, at a time: a download plans its next
    /// requests against every parent's map each time a piece lands.
    pub fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.chunks(8).map(|chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(word)
        })
    }

    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_views_agree_with_bit_views() {
        let mut map = Bitmap::new(130);
        for i in [0, 1, 63, 64, 100, 129] {
            map.set(i);
        }
        assert_eq!(map.words().count(), 3);
        assert_eq!(
            map.iter_ones().collect::<Vec<_>>(),
            [0, 1, 63, 64, 100, 129]
        );
        assert_eq!(
            ones_in(range_words(62..101, 130)).collect::<Vec<_>>(),
            (62..101).collect::<Vec<_>>()
        );
        assert_eq!(ones_in(range_words(0..200, 130)).count(), 130);
        assert_eq!(ones_in(range_words(64..64, 130)).count(), 0);
        let both: Vec<u32> = ones_in(
            map.words()
                .zip(range_words(1..100, 130))
                .map(|(a, b)| a & b),
        )
        .collect();
        assert_eq!(both, [1, 63, 64]);
    }

    #[test]
    fn piece_length_grows_with_size_and_stays_a_power_of_two() {
        assert_eq!(piece_length_for(0), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(1024), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(256 << 20), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for((256 << 20) + 1), 512 << 10);
        assert_eq!(piece_length_for(1 << 30), 1 << 20);
        assert_eq!(piece_length_for(8 << 30), 1 << 20);
        assert_eq!(piece_length_for((8 << 30) + 1), 2 << 20);
        assert_eq!(piece_length_for(u64::MAX / 2), MAX_PIECE_LENGTH);
    }

    #[test]
    fn layout_covers_every_byte_exactly_once() {
        let layout = Layout::new(5 * MIN_PIECE_LENGTH + 7, MIN_PIECE_LENGTH).unwrap();
        assert_eq!(layout.piece_count(), 6);
        let total: u64 = (0..6).map(|i| layout.piece_len(i)).sum();
        assert_eq!(total, layout.content_length);
        assert_eq!(layout.piece_len(5), 7);
    }

    #[test]
    fn covering_pieces_clip_at_the_end() {
        let layout = Layout::new(3 * MIN_PIECE_LENGTH, MIN_PIECE_LENGTH).unwrap();
        assert_eq!(layout.pieces_covering(0, 1), 0..1);
        assert_eq!(layout.pieces_covering(MIN_PIECE_LENGTH - 1, 2), 0..2);
        assert_eq!(layout.pieces_covering(0, u64::MAX), 0..3);
        assert_eq!(layout.pieces_covering(3 * MIN_PIECE_LENGTH, 10), 0..0);
        assert_eq!(layout.pieces_covering(5, 0), 0..0);
    }

    #[test]
    fn empty_task_has_no_pieces() {
        let layout = Layout::for_length(0);
        assert_eq!(layout.piece_count(), 0);
        assert_eq!(layout.pieces_covering(0, 10), 0..0);
    }

    #[test]
    fn bad_piece_lengths_are_refused() {
        assert!(Layout::new(10, 0).is_err());
        assert!(Layout::new(10, 3 << 20).is_err());
        assert!(Layout::new(10, 1 << 30).is_err());
    }

    #[test]
    fn layouts_too_large_to_hold_are_refused_and_the_largest_legal_one_is_not() {
        // The message that aborted the scheduler: (2^32 - 1) pieces of 256 KiB.
        let huge = Layout::new(((1u64 << 32) - 1) * MIN_PIECE_LENGTH, MIN_PIECE_LENGTH);
        assert!(matches!(huge, Err(BadLayout::TooManyPieces { .. })));
        assert!(
            Layout::new(1 << 40, MIN_PIECE_LENGTH).is_err(),
            "1 TiB in 256 KiB pieces"
        );
        let largest = Layout::new(MAX_PIECES * MAX_PIECE_LENGTH, MAX_PIECE_LENGTH).unwrap();
        assert_eq!(u64::from(largest.piece_count()), MAX_PIECES);
        // Every object dffs picks a layout for itself fits.
        for length in [0, 1, 1 << 30, 1 << 40, 64 << 40] {
            let layout = Layout::for_length(length);
            assert!(Layout::new(length, layout.piece_length).is_ok(), "{length}");
        }
    }

    #[test]
    fn bitmap_round_trips_and_tolerates_bad_wire_bytes() {
        let mut map = Bitmap::new(11);
        assert!(map.set(0));
        assert!(map.set(10));
        assert!(!map.set(10));
        assert!(!map.set(99));
        assert_eq!(map.count_ones(), 2);
        let copy = Bitmap::from_bytes(11, map.as_bytes());
        assert_eq!(copy, map);
        let short = Bitmap::from_bytes(11, &[0xff]);
        assert_eq!(short.count_ones(), 8);
        let long = Bitmap::from_bytes(3, &[0xff, 0xff, 0xff]);
        assert!(long.is_full());
        assert_eq!(
            long.words().collect::<Vec<_>>(),
            [0b111],
            "bits past the end stay clear"
        );
        assert_eq!(long.iter_zeros().count(), 0);
    }
}
