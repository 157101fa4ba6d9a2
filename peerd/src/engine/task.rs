//! One task as peerd sees it: which pieces are present, which are being
//! fetched, who may serve the rest, and how waiters learn of progress.
//!
//! This is state only: nothing here starts a fetch or talks to anyone. The
//! drivers (`fetcher`, `origin_run`, `bulk`) claim pieces here, and
//! `landing` records them as present.

use super::error::EngineError;
use super::fanout::Fanout;
use super::publisher::Publisher;
use super::slots::Slots;
use crate::origin::Credentials;
use crate::storage::TaskFile;
use api::digest::PieceDigest;
use api::piece::{Bitmap, Layout};
use api::proto::{Priority, TaskInfo, TaskMeta};
use api::task::TaskId;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The result of one piece fetch, shared by all its waiters.
pub type PieceResult = Option<Result<(), EngineError>>;

pub struct Task {
    pub id: TaskId,
    pub meta: TaskMeta,
    pub layout: Layout,
    pub file: Arc<TaskFile>,
    state: Mutex<State>,
    /// Present bytes; bumped whenever a piece becomes present.
    progress: watch::Sender<u64>,
    /// Signalled when a parent request ends or the parents change, for
    /// fetches waiting on a busy parent.
    pub(super) capacity: tokio::sync::Notify,
    /// One parent refresh at a time per task; the others reuse its result.
    pub(super) refresh: tokio::sync::Mutex<()>,
    /// Concurrent origin requests for this task, granted by priority (a
    /// child or reader waiting on a piece goes before bulk work). It starts
    /// at one, until the origin shows it honours Range, so an origin that
    /// ignores Range is not asked for the whole object several times at once.
    pub(super) origin_gate: Arc<Slots>,
    /// Digests this host, as root, has yet to report.
    pub(super) publisher: Publisher,
    /// The origin headers a local caller gave for this task, in memory
    /// only (see `origin::Credentials`).
    credentials: Mutex<Credentials>,
}

/// A parent as last described by the scheduler.
#[derive(Debug, Clone)]
pub struct ParentView {
    pub host_id: String,
    pub addr: String,
    pub is_root: bool,
    pub bitmap: Bitmap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginMode {
    /// Not yet known whether the origin honours Range.
    Unknown,
    Ranged,
    /// One GET is streaming the whole object; wait for it.
    Streaming,
}

pub struct State {
    pub present: Bitmap,
    pub present_bytes: u64,
    pub digests: Vec<Option<PieceDigest>>,
    inflight: HashMap<u32, Inflight>,
    pub parents: Vec<ParentView>,
    pub parents_at: Option<Instant>,
    /// Parents not to ask again until the given time.
    pub blocked: HashMap<String, Instant>,
    /// Requests in flight per parent.
    pub load: HashMap<String, u32>,
    pub is_root: bool,
    pub origin: OriginMode,
    /// Where this host, as root, sent each piece lately.
    pub fanout: Fanout,
    pub last_access: SystemTime,
    last_touch: Option<Instant>,
    /// The scheduler was told this host wants the whole task.
    pub wanted_whole: bool,
    /// Whole-task downloads running (dfget, a seed, a sequential reader).
    pub whole_downloads: u32,
    /// The root sent this host bytes that failed the root's own digests
    /// (tampered with on the way, or its disk is bad): pieces nobody else
    /// holds are fetched from the origin here instead.
    pub root_corrupt: bool,
}

impl State {
    /// Whether any fetch of this task is in progress.
    pub fn has_fetches(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Whether piece `n` is present or being fetched.
    pub(super) fn present_or_coming(&self, n: u32) -> bool {
        self.present.get(n) || self.inflight.contains_key(&n)
    }

    /// Requests in flight to `host_id`.
    pub(super) fn load_of(&self, host_id: &str) -> u32 {
        self.load.get(host_id).copied().unwrap_or(0)
    }

    /// Records piece `n` as being fetched; whoever holds the claim ends it.
    fn claim(&mut self, n: u32, priority: Arc<AtomicU8>) -> Claim {
        let (done, rx) = watch::channel(None);
        let inflight = Inflight {
            priority: priority.clone(),
            done: rx,
        };
        self.inflight.insert(n, inflight);
        Claim { n, priority, done }
    }
}

struct Inflight {
    priority: Arc<AtomicU8>,
    done: watch::Receiver<PieceResult>,
}

/// A piece being fetched (by an ordinary fetch, or an origin run):
/// concurrent askers wait on it, and whoever ends it sends the result on
/// `done`.
pub(super) struct Claim {
    pub n: u32,
    pub priority: Arc<AtomicU8>,
    pub done: watch::Sender<PieceResult>,
}

/// What asking for a piece found.
pub(super) enum Asked {
    /// It is present.
    Present,
    /// A fetch of it runs already; wait on that one.
    Coming(watch::Receiver<PieceResult>),
    /// Nobody fetches it: the caller now must, and end the claim.
    Claimed(Claim),
}

pub struct LoadedState {
    pub present: Bitmap,
    pub digests: Vec<Option<PieceDigest>>,
    pub last_access: SystemTime,
}

impl Task {
    pub fn new(
        id: TaskId,
        meta: TaskMeta,
        layout: Layout,
        file: TaskFile,
        loaded: Option<LoadedState>,
    ) -> Arc<Task> {
        let count = layout.piece_count();
        let loaded = loaded.unwrap_or_else(|| LoadedState {
            present: Bitmap::new(count),
            digests: vec![None; count as usize],
            last_access: SystemTime::now(),
        });
        let present_bytes = loaded
            .present
            .iter_ones()
            .map(|n| layout.piece_len(n))
            .sum();
        Arc::new(Task {
            id,
            meta,
            layout,
            file: Arc::new(file),
            state: Mutex::new(State {
                present: loaded.present,
                present_bytes,
                digests: loaded.digests,
                inflight: HashMap::new(),
                parents: Vec::new(),
                parents_at: None,
                blocked: HashMap::new(),
                load: HashMap::new(),
                is_root: false,
                origin: OriginMode::Unknown,
                fanout: Fanout::default(),
                last_access: loaded.last_access,
                last_touch: None,
                wanted_whole: false,
                whole_downloads: 0,
                root_corrupt: false,
            }),
            progress: watch::channel(present_bytes).0,
            capacity: tokio::sync::Notify::new(),
            refresh: tokio::sync::Mutex::new(()),
            origin_gate: Slots::new(1),
            publisher: Publisher::default(),
            credentials: Mutex::default(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The headers to send to the origin for this task.
    pub fn credentials(&self) -> Credentials {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps the latest headers a local caller gave; an empty set leaves
    /// the ones held (a caller without them may still read the task).
    pub fn offer_credentials(&self, credentials: &Credentials) {
        if !credentials.is_empty() {
            *self.credentials.lock().unwrap_or_else(|e| e.into_inner()) = credentials.clone();
        }
    }

    pub fn is_complete(&self) -> bool {
        self.lock().present.is_full()
    }

    pub fn has_piece(&self, n: u32) -> bool {
        self.lock().present.get(n)
    }

    pub fn has_all(&self, pieces: Range<u32>) -> bool {
        let state = self.lock();
        pieces.into_iter().all(|n| state.present.get(n))
    }

    pub fn is_root(&self) -> bool {
        self.lock().is_root
    }

    pub fn set_root(&self, is_root: bool) {
        self.lock().is_root = is_root;
    }

    pub fn info(&self) -> TaskInfo {
        let state = self.lock();
        TaskInfo {
            meta: Some(self.meta.clone()),
            content_path: self.file.content_path().to_string_lossy().into_owned(),
            completed_bytes: state.present_bytes,
            complete: state.present.is_full(),
            last_access: state
                .last_access
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Records a read or download, for LRU eviction; the file's mtime is
    /// updated at most once a minute.
    pub fn touch(&self) {
        let mut state = self.lock();
        state.last_access = SystemTime::now();
        let due = state.last_touch.is_none_or(|t| t.elapsed().as_secs() >= 60);
        if due {
            state.last_touch = Some(Instant::now());
            drop(state);
            if let Err(e) = self.file.touch() {
                tracing::debug!(task = %self.id, "cannot record access time: {e}");
            }
        }
    }

    /// Asks for piece `n` at `priority`: present, coming (a running fetch,
    /// raised to `priority` if that is higher), or claimed for the caller.
    pub(super) fn ask(&self, n: u32, priority: Priority) -> Asked {
        let mut state = self.lock();
        self.ask_locked(&mut state, n, priority)
    }

    /// `ask` for many pieces under one lock.
    pub(super) fn ask_all(
        &self,
        pieces: impl IntoIterator<Item = u32>,
        priority: Priority,
    ) -> Vec<Asked> {
        let mut state = self.lock();
        pieces
            .into_iter()
            .map(|n| self.ask_locked(&mut state, n, priority))
            .collect()
    }

    fn ask_locked(&self, state: &mut State, n: u32, priority: Priority) -> Asked {
        let level = priority as u8;
        if state.present.get(n) {
            return Asked::Present;
        }
        if let Some(inflight) = state.inflight.get(&n) {
            inflight.priority.fetch_max(level, Ordering::Relaxed);
            return Asked::Coming(inflight.done.clone());
        }
        Asked::Claimed(state.claim(n, Arc::new(AtomicU8::new(level))))
    }

    /// Claims up to `max` consecutive pieces from `first`, stopping before
    /// `end` and before any piece that is present or being fetched, so one
    /// origin request can carry them all and nobody fetches them twice.
    pub(super) fn claim_run(
        &self,
        first: u32,
        end: u32,
        max: u32,
        priority: Priority,
    ) -> Vec<Claim> {
        let mut state = self.lock();
        let mut claims = Vec::new();
        // One level for the whole run: a reader that comes to need any of
        // its pieces raises the run's place in the origin queue.
        let priority = Arc::new(AtomicU8::new(priority as u8));
        for n in (first..end).take(max as usize) {
            if state.present_or_coming(n) {
                break;
            }
            claims.push(state.claim(n, priority.clone()));
        }
        claims
    }

    /// Called by whoever owned piece `n`'s claim when its fetch ends.
    pub(super) fn finish_fetch(&self, n: u32) {
        self.lock().inflight.remove(&n);
    }

    /// What a root should fetch ahead of a child that asked for piece `n`:
    /// the first stretch after `n`, below `end`, of pieces neither present
    /// nor on their way (empty when there is none). None when the child is
    /// not reading in order (the piece before `n` is neither), or the root
    /// has no need to run ahead: the origin has not shown it honours Range,
    /// or a whole-task download already fetches everything.
    pub(super) fn run_ahead_gap(&self, n: u32, end: u32) -> Option<Range<u32>> {
        let state = self.lock();
        let in_order = n.checked_sub(1).is_some_and(|m| state.present_or_coming(m));
        if !in_order || state.origin != OriginMode::Ranged || state.whole_downloads > 0 {
            return None;
        }
        let missing = |m: &u32| !state.present_or_coming(*m);
        let from = (n.saturating_add(1)..end).find(missing).unwrap_or(end);
        let stop = (from..end).find(|m| !missing(m)).unwrap_or(end);
        Some(from..stop)
    }

    /// From now on the task's origin is fetched in ranges, up to
    /// `requests` at a time (see `origin_run`).
    pub(super) fn learned_ranges_work(&self, requests: usize) {
        let mut state = self.lock();
        if state.origin == OriginMode::Unknown {
            state.origin = OriginMode::Ranged;
            drop(state);
            self.origin_gate.add_permits(requests.saturating_sub(1));
        }
    }

    /// Waits up to `limit` for piece `n` if a fetch of it is under way,
    /// raising that fetch to prefetch priority since another host now waits
    /// on it. True when the piece is present.
    pub async fn wait_for_piece(&self, n: u32, limit: std::time::Duration) -> bool {
        let mut receiver = {
            let state = self.lock();
            if state.present.get(n) {
                return true;
            }
            let Some(inflight) = state.inflight.get(&n) else {
                return false;
            };
            inflight
                .priority
                .fetch_max(Priority::Prefetch as u8, Ordering::Relaxed);
            inflight.done.clone()
        };
        let _ = tokio::time::timeout(limit, receiver.wait_for(Option::is_some)).await;
        self.has_piece(n)
    }

    /// Records a piece whose verified bytes are in the content file as
    /// present. `on_new` runs before waiters are told, with whether the
    /// task is now complete; nothing runs when the piece was present
    /// already (a concurrent fetch won), and then this returns false.
    pub(super) fn record_present(
        &self,
        n: u32,
        digest: PieceDigest,
        on_new: impl FnOnce(bool),
    ) -> bool {
        let mut state = self.lock();
        let Some(slot) = state.digests.get_mut(n as usize) else {
            return false;
        };
        *slot = Some(digest);
        if !state.present.set(n) {
            return false;
        }
        state.present_bytes += self.layout.piece_len(n);
        let present_bytes = state.present_bytes;
        let complete = state.present.is_full();
        drop(state);
        on_new(complete);
        self.progress.send_replace(present_bytes);
        true
    }

    /// The digest a piece must have, if known.
    pub fn digest(&self, n: u32) -> Option<PieceDigest> {
        self.lock().digests.get(n as usize).copied().flatten()
    }

    /// Takes digests learned from the scheduler for pieces that lack one;
    /// a digest already known is never replaced.
    pub(super) fn learn_digests(&self, digests: &[api::proto::PieceDigest]) {
        let mut state = self.lock();
        for d in digests {
            let slot = state.digests.get_mut(d.number as usize);
            if let (Some(slot @ None), Some(digest)) = (slot, PieceDigest::from_slice(&d.blake3)) {
                *slot = Some(digest);
            }
        }
    }

    /// Pieces whose digest this host still lacks.
    pub(super) fn missing_digests(&self) -> Vec<u32> {
        let state = self.lock();
        (0..self.layout.piece_count())
            .filter(|&i| state.digests[i as usize].is_none())
            .collect()
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;

/// A task of `pieces` pieces of 256 KiB, none present, with its files in
/// `dir`, for tests of the state and the policies over it.
#[cfg(test)]
pub(super) fn task_for_tests(dir: &std::path::Path, pieces: u32) -> Arc<Task> {
    let layout = Layout::new(u64::from(pieces) << 18, 1 << 18).expect("valid layout");
    let id = TaskId::from_bytes([0xab; 32]);
    let meta = TaskMeta {
        task_id: id.to_string(),
        content_length: layout.content_length,
        piece_length: layout.piece_length,
        ..Default::default()
    };
    let file = crate::storage::Store::open(dir)
        .expect("store")
        .create(id, &meta, layout)
        .expect("task file");
    Task::new(id, meta, layout, file, None)
}
