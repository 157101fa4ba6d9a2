//! The inode table: one inode per task-id this mount has seen.
//!
//! Task content never changes, so what is learnt about a task (its length,
//! which pieces are present) stays true, and is kept here to answer reads
//! without asking peerd again.

use api::piece::{Bitmap, Layout};
use api::proto::TaskInfo;
use api::task::TaskId;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub const ROOT_INO: u64 = 1;

pub struct Node {
    pub ino: u64,
    pub id: TaskId,
    pub layout: Layout,
    pub mtime: SystemTime,
    content_path: Mutex<String>,
    content: Mutex<Option<Arc<File>>>,
    /// The content file's mtime when it was opened.
    opened_mtime: Mutex<Option<SystemTime>>,
    present: Mutex<Bitmap>,
    complete: AtomicBool,
    /// How the inode is open; the kernel forbids mixing the two modes.
    pub io: Mutex<IoMode>,
}

/// Open handles of an inode. The kernel refuses (EIO) a passthrough open
/// while cached opens exist and the other way round, so a task that
/// completes while open keeps being served through dffs until every handle
/// of it is closed.
#[derive(Default)]
pub struct IoMode {
    pub cached: u32,
    /// The backing registration, and how many handles use it.
    pub passthrough: Option<(Arc<fuser::BackingId>, u32)>,
    /// The passthrough file is a copy of peerd's that changed since: it
    /// serves the handles already open on it, and the task has moved to a
    /// fresh inode (see `Nodes::succeed`).
    pub stale: bool,
}

impl Node {
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Records what peerd said about the task.
    pub fn learn(&self, info: &TaskInfo) {
        if !info.content_path.is_empty() {
            *self.content_path.lock().unwrap_or_else(|e| e.into_inner()) =
                info.content_path.clone();
        }
        if info.complete {
            self.mark_complete();
        }
    }

    pub fn set_content_path(&self, path: &str) {
        if !path.is_empty() {
            *self.content_path.lock().unwrap_or_else(|e| e.into_inner()) = path.to_string();
        }
    }

    pub fn mark_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// Records pieces peerd said are present (ids out of range ignored).
    pub fn mark_present(&self, pieces: impl IntoIterator<Item = u32>) {
        let mut present = self.present.lock().unwrap_or_else(|e| e.into_inner());
        let count = present.len();
        for n in pieces.into_iter().filter(|&n| n < count) {
            present.set(n);
        }
        if present.is_full() {
            self.mark_complete();
        }
    }

    /// Whether every piece of `pieces` is known to be present.
    pub fn has_all(&self, pieces: Range<u32>) -> bool {
        if self.is_complete() {
            return true;
        }
        let present = self.present.lock().unwrap_or_else(|e| e.into_inner());
        pieces.into_iter().all(|n| present.get(n))
    }

    /// Forgets what is cached about the content file if peerd no longer
    /// uses it: it was replaced (peerd dropped and refetched the task), or,
    /// for a complete task, written since it was opened (a user edited a
    /// download that shares its bytes). Reads then go through peerd again.
    /// Returns whether it did.
    pub fn revalidate(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mut slot = self.content.lock().unwrap_or_else(|e| e.into_inner());
        let Some(file) = slot.as_ref() else {
            return false;
        };
        let path = self
            .content_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (Ok(opened), current) = (file.metadata(), std::fs::metadata(&path)) else {
            return false;
        };
        let replaced = current.map_or(true, |c| (c.dev(), c.ino()) != (opened.dev(), opened.ino()));
        let written = self.is_complete()
            && opened.modified().ok()
                != *self.opened_mtime.lock().unwrap_or_else(|e| e.into_inner());
        if replaced || written {
            tracing::info!(task = %self.id, "peerd's copy changed; reading through peerd again");
            *slot = None;
            *self.present.lock().unwrap_or_else(|e| e.into_inner()) =
                Bitmap::new(self.layout.piece_count());
            self.complete
                .store(self.layout.piece_count() == 0, Ordering::Release);
        }
        replaced || written
    }

    /// peerd's content file, opened read-only once and shared.
    pub fn content(&self) -> std::io::Result<Arc<File>> {
        let mut slot = self.content.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = slot.as_ref() {
            return Ok(file.clone());
        }
        let path = self
            .content_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if path.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "peerd has not created the content file yet",
            ));
        }
        let file = Arc::new(File::open(&path)?);
        *self.opened_mtime.lock().unwrap_or_else(|e| e.into_inner()) =
            file.metadata().and_then(|m| m.modified()).ok();
        *slot = Some(file.clone());
        Ok(file)
    }

    pub fn attr(&self, uid: u32, gid: u32) -> fuser::FileAttr {
        fuser::FileAttr {
            ino: fuser::INodeNo(self.ino),
            size: self.layout.content_length,
            blocks: self.layout.content_length.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind: fuser::FileType::RegularFile,
            perm: 0o444,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }
}

#[derive(Default)]
pub struct Nodes {
    by_ino: RwLock<HashMap<u64, Arc<Node>>>,
    by_id: RwLock<HashMap<TaskId, u64>>,
    next: AtomicU64,
}

/// Why a task's metadata was refused.
#[derive(Debug, thiserror::Error)]
#[error("peerd sent unusable metadata for task {id}: {reason}")]
pub struct BadInfo {
    pub id: TaskId,
    pub reason: String,
}

impl Nodes {
    pub fn new() -> Nodes {
        Nodes {
            next: AtomicU64::new(ROOT_INO + 1),
            ..Default::default()
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.by_ino
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned()
    }

    pub fn by_id(&self, id: &TaskId) -> Option<Arc<Node>> {
        let ino = *self
            .by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)?;
        self.get(ino)
    }

    /// The node of the task `info` describes, created on first sight.
    pub fn insert(&self, info: &TaskInfo) -> Result<Arc<Node>, BadInfo> {
        let meta = info.meta.clone().unwrap_or_default();
        let id: TaskId = meta
            .task_id
            .parse()
            .map_err(|e: api::task::TaskError| BadInfo {
                id: TaskId::from_bytes([0; 32]),
                reason: e.to_string(),
            })?;
        if let Some(node) = self.by_id(&id) {
            node.learn(info);
            return Ok(node);
        }
        let layout = Layout::new(meta.content_length, meta.piece_length).map_err(|e| BadInfo {
            id,
            reason: e.to_string(),
        })?;
        let mtime = httpdate::parse_http_date(&meta.last_modified).unwrap_or(UNIX_EPOCH);
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&ino) = by_id.get(&id) {
            drop(by_id);
            let node = self.get(ino).expect("inode tables agree");
            node.learn(info);
            return Ok(node);
        }
        let node = self.fresh(id, layout, mtime);
        node.learn(info);
        by_id.insert(id, node.ino);
        Ok(node)
    }

    /// Moves `old`'s task to a fresh inode that knows nothing yet of the
    /// content file, so that new opens are not bound to the file `old`'s
    /// open handles use. `old` stays for those handles. Returns the node
    /// the task now has (someone else's successor if one came first).
    pub fn succeed(&self, old: &Node) -> Arc<Node> {
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        let current = by_id.get(&old.id).filter(|&&ino| ino != old.ino);
        if let Some(node) = current.and_then(|&ino| self.get(ino)) {
            return node;
        }
        let node = self.fresh(old.id, old.layout, old.mtime);
        node.set_content_path(&old.content_path.lock().unwrap_or_else(|e| e.into_inner()));
        by_id.insert(old.id, node.ino);
        node
    }

    /// A new inode for a task, entered in the inode table.
    fn fresh(&self, id: TaskId, layout: Layout, mtime: SystemTime) -> Arc<Node> {
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Node {
            ino,
            id,
            layout,
            mtime,
            content_path: Mutex::new(String::new()),
            content: Mutex::new(None),
            opened_mtime: Mutex::new(None),
            present: Mutex::new(Bitmap::new(layout.piece_count())),
            complete: AtomicBool::new(layout.piece_count() == 0),
            io: Mutex::new(IoMode::default()),
        });
        self.by_ino
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino, node.clone());
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::proto::TaskMeta;

    const PIECE: u64 = 1 << 20;

    fn info(url: &str, length: u64, content_path: &str) -> TaskInfo {
        TaskInfo {
            meta: Some(TaskMeta {
                task_id: TaskId::from_source(url, "", "").unwrap().to_string(),
                content_length: length,
                piece_length: PIECE,
                last_modified: "Wed, 02 Dec 2026 10:00:00 GMT".into(),
                ..Default::default()
            }),
            content_path: content_path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_gets_one_inode_however_often_it_is_seen() {
        let nodes = Nodes::new();
        let a = nodes.insert(&info("http://h/a", 3 * PIECE, "")).unwrap();
        let again = nodes.insert(&info("http://h/a", 3 * PIECE, "/p")).unwrap();
        let b = nodes.insert(&info("http://h/b", PIECE, "")).unwrap();
        assert_eq!(a.ino, again.ino);
        assert_ne!(a.ino, b.ino);
        assert!(a.ino > ROOT_INO && b.ino > ROOT_INO);
        assert_eq!(nodes.get(a.ino).unwrap().id, a.id);
        assert_eq!(nodes.by_id(&b.id).unwrap().ino, b.ino);
        assert!(a.mtime > UNIX_EPOCH, "Last-Modified becomes the mtime");
    }

    #[test]
    fn pieces_become_present_and_all_of_them_make_the_task_complete() {
        let nodes = Nodes::new();
        let node = nodes.insert(&info("http://h/a", 3 * PIECE, "")).unwrap();
        node.mark_present([0, 2, 99]);
        assert!(node.has_all(0..1) && node.has_all(2..3));
        assert!(!node.has_all(0..3));
        assert!(!node.is_complete());
        node.mark_present([1]);
        assert!(node.is_complete());
        let empty = nodes.insert(&info("http://h/empty", 0, "")).unwrap();
        assert!(empty.is_complete(), "an empty task has nothing to fetch");
    }

    #[test]
    fn unusable_metadata_is_refused_with_the_reason() {
        let nodes = Nodes::new();
        let mut bad = info("http://h/a", 3 * PIECE, "");
        bad.meta.as_mut().unwrap().piece_length = 3;
        let err = nodes.insert(&bad).err().expect("a piece length of 3");
        assert!(err.to_string().contains(&err.id.to_string()), "{err}");
        let mut no_id = info("http://h/a", PIECE, "");
        no_id.meta.as_mut().unwrap().task_id = "zz".into();
        assert!(nodes.insert(&no_id).is_err());
    }

    #[test]
    fn a_successor_inode_knows_the_path_but_not_the_pieces() {
        let nodes = Nodes::new();
        let old = nodes.insert(&info("http://h/a", 2 * PIECE, "/c")).unwrap();
        old.mark_present([0, 1]);
        let new = nodes.succeed(&old);
        assert_ne!(new.ino, old.ino);
        assert!(!new.has_all(0..1), "the successor must ask peerd again");
        assert_eq!(nodes.by_id(&old.id).unwrap().ino, new.ino);
        assert_eq!(nodes.succeed(&old).ino, new.ino, "one successor only");
        assert!(
            nodes.get(old.ino).is_some(),
            "open handles keep the old one"
        );
    }

    #[test]
    fn a_replaced_content_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("content");
        std::fs::write(&path, vec![1u8; PIECE as usize]).unwrap();
        let nodes = Nodes::new();
        let node = nodes
            .insert(&info("http://h/a", PIECE, &path.display().to_string()))
            .unwrap();
        node.mark_present([0]);
        node.content().expect("opened");
        assert!(!node.revalidate(), "nothing changed");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![2u8; PIECE as usize]).unwrap();
        assert!(node.revalidate(), "peerd replaced the file");
        assert!(!node.has_all(0..1));
    }
}
