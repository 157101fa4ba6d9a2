//! Serves pieces to other peers.

use super::protocol::{PieceRequest, REQUEST_LEN, ReplyStatus, ResponseHeader};
use crate::ratelimit::{ByteLimit, CHUNK};
use crate::storage::TaskFile;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// An idle connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a send keeps its turn while its receiver takes nothing.
const HOLD_WHILE_STALLED: Duration = Duration::from_secs(2);
/// Longest a receiver may take nothing before its connection is dropped.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Largest sendfile(2) call when no upload limit applies.
const SENDFILE_STEP: usize = 4 << 20;

/// Where the bytes of a piece are.
pub struct PieceLocation {
    pub file: Arc<TaskFile>,
    pub offset: u64,
    pub length: u32,
}

/// Why a piece is not served.
pub struct Refusal {
    pub status: ReplyStatus,
    pub reason: String,
}

/// What the server asks of the engine.
pub trait PieceProvider: Send + Sync + 'static {
    /// Locates a verified piece, fetching it first when this host is the
    /// task's root and does not hold it yet.
    /// `from` is the address the request came from.
    fn locate(
        &self,
        request: PieceRequest,
        from: std::net::SocketAddr,
    ) -> impl Future<Output = Result<PieceLocation, Refusal>> + Send;
}

pub struct UploadServer<P> {
    provider: Arc<P>,
    limit: ByteLimit,
    /// Pieces being sent at once. Few sends at full speed finish each
    /// piece sooner than many slow ones, so a receiver can pass it on
    /// sooner; the other requests queue for their turn.
    sending: Arc<tokio::sync::Semaphore>,
    /// Requests answered or queued; past `max_queued` they are refused.
    in_flight: Arc<AtomicU32>,
    max_queued: u32,
}

/// Requests a host queues before it answers Busy.
const MAX_QUEUED: u32 = 512;

impl<P: PieceProvider> UploadServer<P> {
    pub fn new(provider: Arc<P>, limit: ByteLimit, max_uploads: u32) -> Self {
        UploadServer {
            provider,
            limit,
            sending: Arc::new(tokio::sync::Semaphore::new(max_uploads.max(1) as usize)),
            in_flight: Arc::new(AtomicU32::new(0)),
            max_queued: MAX_QUEUED.max(max_uploads),
        }
    }

    /// Uploads in progress, reported to the scheduler as load.
    pub fn in_flight(&self) -> Arc<AtomicU32> {
        self.in_flight.clone()
    }

    /// Accepts connections until `stop` is cancelled. Each connection runs
    /// on its own until its peer closes it or it idles out.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = api::transport::accept_data(&listener) => accepted,
                () = stop.cancelled() => return,
            };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.connection(stream, peer).await {
                    tracing::debug!(%peer, "upload connection ended: {e}");
                }
            });
        }
    }

    async fn connection(
        &self,
        mut stream: TcpStream,
        peer: std::net::SocketAddr,
    ) -> io::Result<()> {
        loop {
            let mut buf = [0u8; REQUEST_LEN];
            match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut buf)).await {
                Err(_) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(r) => r?,
            };
            let request = PieceRequest::decode(&buf).map_err(io::Error::other)?;
            self.answer(&mut stream, request, peer).await?;
        }
    }

    async fn answer(
        &self,
        stream: &mut TcpStream,
        request: PieceRequest,
        peer: std::net::SocketAddr,
    ) -> io::Result<()> {
        let busy = self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_queued;
        let _guard = InFlight(&self.in_flight);
        if busy {
            return refuse(stream, ReplyStatus::Busy, "upload queue full").await;
        }
        let location = match self.provider.locate(request, peer).await {
            Ok(location) => location,
            Err(refusal) => return refuse(stream, refusal.status, &refusal.reason).await,
        };
        let header = ResponseHeader {
            status: ReplyStatus::Ok,
            length: location.length,
        };
        within_write_stall(stream.write_all(&header.encode())).await?;
        let started = std::time::Instant::now();
        send_file(stream, &location, &self.limit, &self.sending).await?;
        tracing::trace!(task = %request.task, piece = request.piece, to = %peer, "piece sent");
        metrics::counter!("dffs_upload_bytes_total").increment(u64::from(location.length));
        metrics::counter!("dffs_upload_pieces_total").increment(1);
        metrics::histogram!("dffs_upload_piece_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn refuse(stream: &mut TcpStream, status: ReplyStatus, reason: &str) -> io::Result<()> {
    let header = ResponseHeader {
        status,
        length: reason.len() as u32,
    };
    let mut reply = header.encode().to_vec();
    reply.extend_from_slice(reason.as_bytes());
    within_write_stall(stream.write_all(&reply)).await
}

/// A write that must make progress within `WRITE_STALL`.
async fn within_write_stall(write: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    tokio::time::timeout(WRITE_STALL, write)
        .await
        .map_err(|_| stalled())?
}

fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the receiver took nothing for {}s", WRITE_STALL.as_secs()),
    )
}

/// Sends the piece with sendfile(2): the bytes go from the page cache to
/// the socket without passing through this process.
///
/// Bytes move only while the send holds one of the host's send turns
/// (`sending`). A receiver that stops taking bytes (a dead host, or one
/// that pipelines requests and never reads) would keep its turn from
/// everyone else, so a send gives its turn up once its socket has stayed
/// full for `HOLD_WHILE_STALLED`, waits without it, and takes one again
/// when the receiver drains; after `WRITE_STALL` without progress the
/// connection is dropped.
async fn send_file(
    stream: &TcpStream,
    location: &PieceLocation,
    limit: &ByteLimit,
    sending: &tokio::sync::Semaphore,
) -> io::Result<()> {
    let file_fd = location.file.content().as_raw_fd();
    let socket_fd = stream.as_raw_fd();
    let mut offset = location.offset as libc::off_t;
    let end = offset + libc::off_t::from(location.length);
    let step = if limit.is_limited() {
        CHUNK
    } else {
        SENDFILE_STEP
    };
    let mut turn = Some(take_turn(sending).await);
    let mut last_progress = Instant::now();
    while offset < end {
        let want = step.min((end - offset) as usize);
        limit.take(want).await;
        let mut sent = 0;
        while sent < want {
            let wait = match turn {
                Some(_) => HOLD_WHILE_STALLED,
                None => WRITE_STALL.saturating_sub(last_progress.elapsed()),
            };
            match tokio::time::timeout(wait, stream.writable()).await {
                Ok(ready) => ready?,
                Err(_) if turn.is_some() => {
                    metrics::counter!("dffs_upload_stalls_total").increment(1);
                    turn = None;
                    continue;
                }
                Err(_) => return Err(stalled()),
            }
            if turn.is_none() {
                turn = Some(take_turn(sending).await);
            }
            let result = stream.try_io(Interest::WRITABLE, || {
                // SAFETY: both descriptors are open for the whole call (the
                // file through `location`, the socket through `stream`) and
                // `offset` is a valid pointer to a local.
                let n = unsafe { libc::sendfile(socket_fd, file_fd, &mut offset, want - sent) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "content file is shorter than the piece",
                    ));
                }
                Ok(n) => {
                    sent += n;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

async fn take_turn(sending: &tokio::sync::Semaphore) -> tokio::sync::SemaphorePermit<'_> {
    sending
        .acquire()
        .await
        .expect("the semaphore is never closed")
}
