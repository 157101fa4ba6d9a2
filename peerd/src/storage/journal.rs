//! Batches piece-log commits off the download path.
//!
//! Syncing the content file before logging a piece is what makes the log
//! trustworthy after a crash, but a sync per piece would cap throughput at
//! the disk's sync rate. A single thread instead gathers everything that
//! completed within one commit interval and commits it per task, with one
//! sync per task per batch. Pieces are servable as soon as they are written;
//! only their persistence lags, so a crash costs at most one interval of
//! re-fetching.
//!
//! The interval is long (seconds) on purpose. A sync forces writeback of
//! everything written since the last one, and doing that every few
//! milliseconds while a download runs took a fifth of a cold read's speed
//! (ext4 block allocation and writeback competing with the download for
//! the CPU). With a long interval a download of a few GiB finishes before
//! the first sync, and the writeback happens after it, when the CPU is
//! free.

use super::TaskFile;
use api::digest::PieceDigest;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

enum Entry {
    Piece(Arc<TaskFile>, u32, PieceDigest),
    /// Everything sent before this is committed when the sender is dropped.
    Barrier(Sender<()>),
}

#[derive(Clone)]
pub struct Journal {
    tx: Sender<Entry>,
}

impl Journal {
    /// Starts the journal thread. A piece is committed at most `interval`
    /// after it was recorded.
    pub fn start(interval: Duration) -> Journal {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("piece-journal".into())
            .spawn(move || run(rx, interval))
            .expect("spawning the journal thread");
        Journal { tx }
    }

    pub fn record(&self, file: Arc<TaskFile>, number: u32, digest: PieceDigest) {
        let _ = self.tx.send(Entry::Piece(file, number, digest));
    }

    /// Waits until everything recorded so far is on disk.
    pub fn flush(&self) {
        let (done_tx, done_rx) = channel();
        if self.tx.send(Entry::Barrier(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }
}

/// Pieces to commit, per task file (keyed by the file's address).
type Batch = HashMap<usize, (Arc<TaskFile>, Vec<(u32, PieceDigest)>)>;

fn run(rx: Receiver<Entry>, interval: Duration) {
    let mut batch = Batch::new();
    let mut barriers = Vec::new();
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + interval;
        let mut next = Some(first);
        while let Some(entry) = next.take() {
            match entry {
                Entry::Piece(file, number, digest) => {
                    let key = Arc::as_ptr(&file) as usize;
                    batch
                        .entry(key)
                        .or_insert_with(|| (file, Vec::new()))
                        .1
                        .push((number, digest));
                }
                Entry::Barrier(done) => {
                    barriers.push(done);
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            next = match rx.recv_timeout(left) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => None,
            };
        }
        for (_, (file, pieces)) in batch.drain() {
            if let Err(e) = file.commit(&pieces) {
                tracing::error!(path = %file.content_path().display(), "cannot record pieces; they will be fetched again after a restart: {e}");
            }
        }
        barriers.clear();
    }
}
