//! The files of one cached task: its content file and its piece log.

use api::digest::PieceDigest;
use api::piece::{Bitmap, Layout};
use api::proto::TaskMeta;
use api::task::TaskId;
use prost::Message;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Piece log record: piece number (u32 LE), BLAKE3 digest (32 bytes), and
/// a 4-byte check over both, so a torn last record is recognised.
const RECORD_LEN: usize = 40;

pub struct TaskFile {
    dir: PathBuf,
    content: File,
    log: Mutex<File>,
    /// Buffered writes to one file serialise on its inode lock anyway;
    /// waiting here sleeps instead of spinning in the kernel.
    write_lock: Mutex<()>,
    /// The content file's mtime when the task was complete; a different
    /// mtime later means someone else wrote to it (see [`TaskFile::seal`]).
    sealed: Mutex<Option<SystemTime>>,
}

/// A task found in the cache at start-up.
pub struct LoadedTask {
    pub meta: TaskMeta,
    pub layout: Layout,
    pub file: TaskFile,
    pub present: Bitmap,
    pub digests: Vec<Option<PieceDigest>>,
    pub last_access: SystemTime,
}

impl TaskFile {
    pub(super) fn create(dir: PathBuf, layout: Layout) -> io::Result<TaskFile> {
        let content = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("content"))?;
        // ftruncate(2) touches the mtime even when the size is unchanged,
        // which would break the seal of a complete task.
        if content.metadata()?.len() != layout.content_length {
            content.set_len(layout.content_length)?;
        }
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("pieces"))?;
        let sealed = std::fs::read_to_string(dir.join("sealed"))
            .ok()
            .and_then(|t| parse_time(&t));
        Ok(TaskFile {
            dir,
            content,
            log: Mutex::new(log),
            write_lock: Mutex::new(()),
            sealed: Mutex::new(sealed),
        })
    }

    pub(super) fn load(dir: PathBuf) -> io::Result<Option<LoadedTask>> {
        let meta_bytes = match std::fs::read(dir.join("meta.pb")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = TaskMeta::decode(meta_bytes.as_slice()).map_err(io::Error::other)?;
        let id_ok = meta
            .task_id
            .parse::<TaskId>()
            .is_ok_and(|id| dir.ends_with(id.to_string()));
        if !id_ok {
            return Err(io::Error::other("meta.pb names another task"));
        }
        let layout =
            Layout::new(meta.content_length, meta.piece_length).map_err(io::Error::other)?;
        let last_access = std::fs::metadata(dir.join("meta.pb"))?.modified()?;
        let content_ok =
            std::fs::metadata(dir.join("content")).is_ok_and(|m| m.len() == layout.content_length);
        let (present, digests) = if content_ok {
            read_log(&dir.join("pieces"), layout.piece_count())?
        } else {
            // Without its content file, the log describes nothing.
            let _ = std::fs::remove_file(dir.join("pieces"));
            (
                Bitmap::new(layout.piece_count()),
                vec![None; layout.piece_count() as usize],
            )
        };
        let file = TaskFile::create(dir, layout)?;
        Ok(Some(LoadedTask {
            meta,
            layout,
            file,
            present,
            digests,
            last_access,
        }))
    }

    pub fn content_path(&self) -> PathBuf {
        self.dir.join("content")
    }

    pub fn content(&self) -> &File {
        &self.content
    }

    pub fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let _one_writer = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        for (i, chunk) in bytes.chunks(WRITE_STEP).enumerate() {
            self.content
                .write_all_at(chunk, offset + (i * WRITE_STEP) as u64)?;
        }
        Ok(())
    }

    /// Records that the content is complete as of now. A complete content
    /// file may be hard-linked to a user's output (see dfget), so a later
    /// change of its mtime means someone wrote to it outside peerd.
    pub fn seal(&self) -> io::Result<()> {
        let mtime = self.content.metadata()?.modified()?;
        std::fs::write(self.dir.join("sealed"), format_time(mtime))?;
        *self.sealed.lock().unwrap_or_else(|e| e.into_inner()) = Some(mtime);
        Ok(())
    }

    /// True when the task was sealed and its content changed since.
    pub fn modified_since_seal(&self) -> bool {
        let sealed = *self.sealed.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sealed) = sealed else { return false };
        self.content
            .metadata()
            .and_then(|m| m.modified())
            .map_or(true, |now| now != sealed)
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.content.read_exact_at(buf, offset)
    }

    /// Makes written pieces durable, then logs them as present.
    pub fn commit(&self, pieces: &[(u32, PieceDigest)]) -> io::Result<()> {
        self.content.sync_data()?;
        let mut buf = Vec::with_capacity(pieces.len() * RECORD_LEN);
        for (number, digest) in pieces {
            buf.extend_from_slice(&encode_record(*number, digest));
        }
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&buf)
    }

    /// Records an access (the meta file's mtime), for LRU eviction.
    pub fn touch(&self) -> io::Result<()> {
        let meta = OpenOptions::new()
            .write(true)
            .open(self.dir.join("meta.pb"))?;
        meta.set_modified(SystemTime::now())
    }
}

/// Bytes per write(2) into the page cache. The kernel sizes page-cache
/// folios by the write, and large folios need large free blocks, which a
/// VM's free-page reporting hands back to the host: on such machines 1 MiB
/// writes measured 0.23-0.26 GB/s where 16 KiB writes reached 0.30-0.46
/// (bench/p2p.py). On bare metal the extra syscalls cost little.
const WRITE_STEP: usize = 16 << 10;

fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn parse_time(text: &str) -> Option<SystemTime> {
    let (secs, nanos) = text.trim().split_once('.')?;
    let d = std::time::Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
    Some(std::time::UNIX_EPOCH + d)
}

fn record_check(number: u32, digest: &PieceDigest) -> [u8; 4] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&number.to_le_bytes());
    hasher.update(&digest.0);
    let hash = hasher.finalize();
    hash.as_bytes()[..4].try_into().expect("4 bytes")
}

fn encode_record(number: u32, digest: &PieceDigest) -> [u8; RECORD_LEN] {
    let mut rec = [0u8; RECORD_LEN];
    rec[..4].copy_from_slice(&number.to_le_bytes());
    rec[4..36].copy_from_slice(&digest.0);
    rec[36..].copy_from_slice(&record_check(number, digest));
    rec
}

/// Reads the piece log, stopping at the first damaged record and cutting
/// the file there so later appends stay aligned.
fn read_log(path: &Path, piece_count: u32) -> io::Result<(Bitmap, Vec<Option<PieceDigest>>)> {
    let mut present = Bitmap::new(piece_count);
    let mut digests = vec![None; piece_count as usize];
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((present, digests)),
        Err(e) => return Err(e),
    };
    let mut valid = 0;
    for rec in bytes.chunks_exact(RECORD_LEN) {
        let number = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes"));
        let digest = PieceDigest(rec[4..36].try_into().expect("32 bytes"));
        if rec[36..] != record_check(number, &digest) || number >= piece_count {
            break;
        }
        present.set(number);
        digests[number as usize] = Some(digest);
        valid += RECORD_LEN;
    }
    if valid != bytes.len() {
        tracing::warn!(path = %path.display(), "piece log has a damaged tail; dropping it");
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(valid as u64)?;
    }
    Ok((present, digests))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;

    fn meta(len: u64) -> (TaskId, TaskMeta, Layout) {
        let id = TaskId::from_source("http://o/f", "", "").unwrap();
        let layout = Layout::for_length(len);
        let meta = TaskMeta {
            task_id: id.to_string(),
            content_length: len,
            piece_length: layout.piece_length,
            ..Default::default()
        };
        (id, meta, layout)
    }

    #[test]
    fn pieces_survive_a_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (id, meta, layout) = meta(3 << 20);
        let file = store.create(id, &meta, layout).unwrap();
        let piece = vec![7u8; 1 << 20];
        file.write_at(&piece, 1 << 20).unwrap();
        file.commit(&[(1, PieceDigest::of(&piece))]).unwrap();
        // A crash in the middle of the next record.
        file.log.lock().unwrap().write_all(&[1, 2, 3]).unwrap();
        drop(file);

        let loaded = store.load_all();
        assert_eq!(loaded.len(), 1);
        let task = &loaded[0];
        assert_eq!(task.present.iter_ones().collect::<Vec<_>>(), [1]);
        assert_eq!(task.digests[1], Some(PieceDigest::of(&piece)));
        let mut back = vec![0u8; 1 << 20];
        task.file.read_at(&mut back, 1 << 20).unwrap();
        assert_eq!(back, piece);
        let log_len = std::fs::metadata(task.file.dir.join("pieces"))
            .unwrap()
            .len();
        assert_eq!(log_len, RECORD_LEN as u64);
    }

    #[test]
    fn a_missing_content_file_forgets_the_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (id, meta, layout) = meta(1 << 20);
        let file = store.create(id, &meta, layout).unwrap();
        file.commit(&[(0, PieceDigest([0; 32]))]).unwrap();
        std::fs::remove_file(file.content_path()).unwrap();
        let loaded = store.load_all();
        assert_eq!(loaded[0].present.count_ones(), 0);
    }

    #[test]
    fn a_write_after_the_seal_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (id, meta, layout) = meta(1 << 20);
        let file = store.create(id, &meta, layout).unwrap();
        file.write_at(&[1; 16], 0).unwrap();
        assert!(!file.modified_since_seal(), "nothing sealed yet");
        file.seal().unwrap();
        assert!(!file.modified_since_seal());
        drop(file);
        let loaded = store.load_all();
        assert!(
            !loaded[0].file.modified_since_seal(),
            "the seal survives a restart"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut outside = OpenOptions::new()
            .write(true)
            .open(loaded[0].file.content_path())
            .unwrap();
        outside.write_all(b"tampered").unwrap();
        assert!(loaded[0].file.modified_since_seal());
    }

    #[test]
    fn host_id_is_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store.host_identity().unwrap();
        let again = Store::open(dir.path()).unwrap().host_identity().unwrap();
        assert_eq!(again.id(), first.id());
        let secret = std::fs::metadata(dir.path().join("host-secret")).unwrap();
        assert_eq!(
            secret.permissions().mode() & 0o077,
            0,
            "the secret is private"
        );
        let shown = std::fs::read_to_string(dir.path().join("host-id")).unwrap();
        assert_eq!(shown, first.id());
    }
}
