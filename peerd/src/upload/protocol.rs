//! The peer-to-peer data plane's wire format.
//!
//! Piece bytes move over plain TCP rather than gRPC so that the sender can
//! hand them to the kernel with sendfile(2) straight from the page cache.
//! A connection carries one request at a time and is reused:
//!
//! ```text
//! request  (48 bytes): "DFP1" | kind u8 | flags u8 | reply port u16 LE | task-id [32] | piece u32 LE | 0 u32
//! response (16 bytes): status u8 | 0 [3] | length u32 LE | 0 u64
//! then `length` bytes: the piece when status is OK, the address to ask
//! instead when it is REDIRECT, else a UTF-8 reason.
//! ```
//!
//! The reply port is the requester's own upload port: with the address the
//! request came from, it tells a root where this requester will soon hold
//! the piece, so later requesters can be sent there (see `engine::fanout`).

use api::task::TaskId;

pub const MAGIC: [u8; 4] = *b"DFP1";
pub const REQUEST_LEN: usize = 48;
pub const RESPONSE_LEN: usize = 16;
const KIND_GET_PIECE: u8 = 1;
/// A reader is blocked on this piece: a root fetching it from the origin
/// gives it top priority.
const FLAG_URGENT: u8 = 1;
/// Sent after a redirect: wait for the piece if it is on its way here.
const FLAG_WAIT: u8 = 2;
/// Do not redirect: the requester already followed one that failed.
const FLAG_NO_REDIRECT: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRequest {
    pub task: TaskId,
    pub piece: u32,
    pub urgent: bool,
    pub wait: bool,
    pub no_redirect: bool,
    /// The requester's upload port, 0 when unknown.
    pub reply_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyStatus {
    Ok = 0,
    /// The parent does not hold the task or the piece.
    NotFound = 1,
    /// The parent is at its upload limit; try another.
    Busy = 2,
    /// The parent tried and failed (e.g. its origin fetch failed).
    Failed = 3,
    /// Ask the peer at the address in the body: it holds the piece or is
    /// receiving it.
    Redirect = 4,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("not a dffs data-plane message (bad magic)")]
    BadMagic,
    #[error("unknown request kind {0}")]
    UnknownKind(u8),
    #[error("unknown response status {0}")]
    UnknownStatus(u8),
}

impl PieceRequest {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut buf = [0u8; REQUEST_LEN];
        buf[..4].copy_from_slice(&MAGIC);
        buf[4] = KIND_GET_PIECE;
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        buf[5] = flag(self.urgent, FLAG_URGENT)
            | flag(self.wait, FLAG_WAIT)
            | flag(self.no_redirect, FLAG_NO_REDIRECT);
        buf[6..8].copy_from_slice(&self.reply_port.to_le_bytes());
        buf[8..40].copy_from_slice(self.task.as_bytes());
        buf[40..44].copy_from_slice(&self.piece.to_le_bytes());
        buf
    }

    pub fn decode(buf: &[u8; REQUEST_LEN]) -> Result<Self, ProtocolError> {
        if buf[..4] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        if buf[4] != KIND_GET_PIECE {
            return Err(ProtocolError::UnknownKind(buf[4]));
        }
        Ok(PieceRequest {
            task: TaskId::from_bytes(buf[8..40].try_into().expect("32 bytes")),
            piece: u32::from_le_bytes(buf[40..44].try_into().expect("4 bytes")),
            urgent: buf[5] & FLAG_URGENT != 0,
            wait: buf[5] & FLAG_WAIT != 0,
            no_redirect: buf[5] & FLAG_NO_REDIRECT != 0,
            reply_port: u16::from_le_bytes(buf[6..8].try_into().expect("2 bytes")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub status: ReplyStatus,
    pub length: u32,
}

impl ResponseHeader {
    pub fn encode(&self) -> [u8; RESPONSE_LEN] {
        let mut buf = [0u8; RESPONSE_LEN];
        buf[0] = self.status as u8;
        buf[4..8].copy_from_slice(&self.length.to_le_bytes());
        buf
    }

    pub fn decode(buf: &[u8; RESPONSE_LEN]) -> Result<Self, ProtocolError> {
        let status = match buf[0] {
            0 => ReplyStatus::Ok,
            1 => ReplyStatus::NotFound,
            2 => ReplyStatus::Busy,
            3 => ReplyStatus::Failed,
            4 => ReplyStatus::Redirect,
            other => return Err(ProtocolError::UnknownStatus(other)),
        };
        Ok(ResponseHeader {
            status,
            length: u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let req = PieceRequest {
            task: TaskId::from_bytes([9; 32]),
            piece: 77,
            urgent: true,
            wait: true,
            no_redirect: false,
            reply_port: 65002,
        };
        assert_eq!(PieceRequest::decode(&req.encode()), Ok(req));
    }

    #[test]
    fn garbage_is_refused() {
        let mut buf = [0u8; REQUEST_LEN];
        assert_eq!(PieceRequest::decode(&buf), Err(ProtocolError::BadMagic));
        buf[..4].copy_from_slice(&MAGIC);
        buf[4] = 9;
        assert_eq!(
            PieceRequest::decode(&buf),
            Err(ProtocolError::UnknownKind(9))
        );
        let mut resp = [0u8; RESPONSE_LEN];
        resp[0] = 200;
        assert_eq!(
            ResponseHeader::decode(&resp),
            Err(ProtocolError::UnknownStatus(200))
        );
    }
}

/// Fuzzing of the wire format: any bytes a peer sends are either refused
/// or read back as what was sent (`bench/fuzz.sh` runs these longer).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_request_bytes_decode_without_panicking(bytes in proptest::array::uniform32(any::<u8>()), tail in proptest::array::uniform16(any::<u8>())) {
            let mut buf = [0u8; REQUEST_LEN];
            buf[..32].copy_from_slice(&bytes);
            buf[32..].copy_from_slice(&tail);
            let _ = PieceRequest::decode(&buf);
            buf[..4].copy_from_slice(&MAGIC);
            buf[4] = KIND_GET_PIECE;
            prop_assert!(PieceRequest::decode(&buf).is_ok());
        }

        #[test]
        fn a_request_survives_the_wire(task in any::<[u8; 32]>(), piece in any::<u32>(), flags in 0u8..8, port in any::<u16>()) {
            let request = PieceRequest {
                task: TaskId::from_bytes(task),
                piece,
                urgent: flags & 1 != 0,
                wait: flags & 2 != 0,
                no_redirect: flags & 4 != 0,
                reply_port: port,
            };
            prop_assert_eq!(PieceRequest::decode(&request.encode()), Ok(request));
        }

        #[test]
        fn any_response_bytes_decode_without_panicking(bytes in proptest::array::uniform16(any::<u8>())) {
            match ResponseHeader::decode(&bytes) {
                Ok(header) => {
                    let again = header.encode();
                    prop_assert_eq!((again[0], &again[4..8]), (bytes[0], &bytes[4..8]));
                }
                Err(e) => prop_assert!(bytes[0] > 4, "{e}"),
            }
        }
    }
}
