//! Fetches pieces from parents, reusing connections.

use super::protocol::{PieceRequest, RESPONSE_LEN, ReplyStatus, ResponseHeader};
use crate::ratelimit::{ByteLimit, CHUNK};
use api::digest::{PieceDigest, PieceHasher};
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections kept per parent.
const MAX_IDLE_PER_PARENT: usize = 16;
/// Longest reads are allowed to make no progress before the parent is
/// considered stuck.
const READ_STALL: Duration = Duration::from_secs(15);
/// Longest a root may take to fetch a missing piece from the origin
/// before it starts sending.
const FIRST_BYTE: Duration = Duration::from_secs(60);
/// Bytes read before they are hashed: small enough to hash while they are
/// still in the CPU's cache, which at GB/s costs a fraction of hashing a
/// whole piece after it has left it.
const HASH_STEP: usize = 128 * 1024;
/// Bytes the kernel queues on a piece's connection before it wakes the
/// reader. A rate-shaped link delivers a piece one packet at a time, and a
/// wake-up per packet (an epoll return, a task poll and a recv each) is
/// paid by every host for every piece: in a 24-host fan-out sharing 2
/// cores, this mark took the peerds from 1.30-1.34 cores to 1.19-1.22.
/// Kernels before 6.18 clamp the advertised window to the mark when it
/// needs more room than the receive buffer has (about twice the mark, at
/// the usual ratio of payload to buffer): 32 KiB keeps well clear of the
/// 128 KiB a buffer starts with.
const WAKE_BYTES: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to parent {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("transfer from parent {addr} failed: {source}")]
    Io { addr: String, source: io::Error },
    #[error("parent {addr} refused piece ({status:?}): {reason}")]
    Refused {
        addr: String,
        status: ReplyStatus,
        reason: String,
    },
    #[error("parent {addr} announced {got} bytes for a piece of {expected}")]
    WrongLength {
        addr: String,
        expected: u64,
        got: u64,
    },
}

pub struct PieceClient {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
    connect_timeout: Duration,
    limit: ByteLimit,
}

impl PieceClient {
    pub fn new(connect_timeout: Duration, limit: ByteLimit) -> Self {
        PieceClient {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            limit,
        }
    }

    /// Fetches one piece from the parent at `addr` into `dest`, which must
    /// be exactly the piece's length, and returns the digest of what came.
    /// The bytes are not verified here; the caller compares the digest.
    pub async fn fetch(
        &self,
        addr: &str,
        request: PieceRequest,
        dest: &mut [u8],
    ) -> Result<PieceDigest, FetchError> {
        let expected = dest.len() as u64;
        let io_err = |source| FetchError::Io {
            addr: addr.to_string(),
            source,
        };
        let (mut stream, reused) = self.checkout(addr).await?;
        let result = exchange(&mut stream, request, dest, &self.limit).await;
        let result = match result {
            // A pooled connection may have been closed by the parent while
            // idle; one fresh attempt tells that apart from a real failure.
            Err(Exchange::Io(_)) if reused => {
                stream = self.connect(addr).await?;
                exchange(&mut stream, request, dest, &self.limit).await
            }
            other => other,
        };
        match result {
            Ok((digest, reusable)) => {
                if reusable {
                    self.checkin(addr, stream);
                }
                Ok(digest)
            }
            Err(Exchange::Refused(status, reason)) => {
                self.checkin(addr, stream);
                Err(FetchError::Refused {
                    addr: addr.to_string(),
                    status,
                    reason,
                })
            }
            Err(Exchange::WrongLength(got)) => Err(FetchError::WrongLength {
                addr: addr.to_string(),
                expected,
                got,
            }),
            Err(Exchange::Io(e)) => Err(io_err(e)),
        }
    }

    async fn checkout(&self, addr: &str) -> Result<(TcpStream, bool), FetchError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)
            .and_then(Vec::pop);
        match pooled {
            Some(stream) => Ok((stream, true)),
            None => Ok((self.connect(addr).await?, false)),
        }
    }

    fn checkin(&self, addr: &str, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < MAX_IDLE_PER_PARENT {
            list.push(stream);
        }
    }

    async fn connect(&self, addr: &str) -> Result<TcpStream, FetchError> {
        let connect_err = |source| FetchError::Connect {
            addr: addr.to_string(),
            source,
        };
        api::transport::dial_data(addr, self.connect_timeout)
            .await
            .map_err(connect_err)
    }
}

enum Exchange {
    Io(io::Error),
    Refused(ReplyStatus, String),
    WrongLength(u64),
}

impl From<io::Error> for Exchange {
    fn from(e: io::Error) -> Self {
        Exchange::Io(e)
    }
}

/// One request and its answer on `stream`: the digest of the piece read
/// into `dest`, and whether the connection may go back to the pool.
async fn exchange(
    stream: &mut TcpStream,
    request: PieceRequest,
    dest: &mut [u8],
    limit: &ByteLimit,
) -> Result<(PieceDigest, bool), Exchange> {
    let expected = dest.len() as u64;
    stream.write_all(&request.encode()).await?;
    let mut header = [0u8; RESPONSE_LEN];
    within(FIRST_BYTE, stream.read_exact(&mut header)).await?;
    let header = ResponseHeader::decode(&header).map_err(|e| Exchange::Io(io::Error::other(e)))?;
    if header.status != ReplyStatus::Ok {
        let mut reason = vec![0u8; (header.length as usize).min(4096)];
        within(READ_STALL, stream.read_exact(&mut reason)).await?;
        return Err(Exchange::Refused(
            header.status,
            String::from_utf8_lossy(&reason).into_owned(),
        ));
    }
    if u64::from(header.length) != expected {
        return Err(Exchange::WrongLength(u64::from(header.length)));
    }
    let step = if limit.is_limited() { CHUNK } else { HASH_STEP };
    let mut hasher = PieceHasher::default();
    let mut wake = WakeMark::KERNEL_DEFAULT;
    let mut left = dest.len();
    for chunk in dest.chunks_mut(step) {
        limit.take(chunk.len()).await;
        let mut filled = 0;
        while filled < chunk.len() {
            // Never ask to be woken for more than the piece still owes:
            // the parent sends nothing after it until the next request.
            wake.set(stream, left.min(WAKE_BYTES))?;
            let n = within(READ_STALL, stream.read(&mut chunk[filled..])).await?;
            if n == 0 {
                return Err(Exchange::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            filled += n;
            left -= n;
        }
        hasher.update(chunk);
    }
    // The next exchange on this connection starts with a 16-byte header;
    // a connection whose mark cannot be lowered again is not reused.
    let reusable = wake.set(stream, 1).is_ok();
    Ok((hasher.finish(), reusable))
}

/// The connection's receive low-water mark (SO_RCVLOWAT), set only when it
/// changes. Every exchange leaves it at the kernel's default of one byte,
/// so a pooled connection starts there too.
struct WakeMark {
    current: usize,
}

impl WakeMark {
    const KERNEL_DEFAULT: WakeMark = WakeMark { current: 1 };

    fn set(&mut self, stream: &TcpStream, bytes: usize) -> io::Result<()> {
        let bytes = bytes.max(1);
        if bytes == self.current {
            return Ok(());
        }
        use std::os::fd::AsRawFd;
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: the fd is the stream's open socket, and the option value
        // points at a c_int that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.current = bytes;
        Ok(())
    }
}

async fn within<T>(limit: Duration, fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no progress for {}s", limit.as_secs()),
        )
    })?
}
