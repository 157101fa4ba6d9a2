//! The FUSE filesystem: a flat, read-only directory of tasks.
//!
//! Handlers never wait on the network. Anything that needs peerd is moved
//! into a tokio task together with the reply object, and the FUSE thread
//! returns at once. Only two things happen on the FUSE thread itself:
//! answers from the inode table, and reads of pieces already known to be
//! present, which are a `pread` of peerd's content file.

use crate::nodes::{Node, Nodes, ROOT_INO};
use crate::readahead::{Handles, WholeAfter};
use api::buffers::{BufferPool, PooledBuffer};
use api::error::{ErrorKind, RemoteError};
use api::local::LocalClient;
use api::proto::Priority;
use api::task::TaskId;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, Request,
};
use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The error a FUSE caller sees for a failure of peerd: a task that does
/// not exist (unknown to the cluster, or gone at the origin) is `ENOENT`,
/// anything else (peerd down, the cluster or origin unreachable past the
/// timeout) is `EIO`.
pub(crate) fn errno(error: &RemoteError) -> Errno {
    let gone = match error.kind {
        ErrorKind::NotFound => true,
        ErrorKind::Origin => matches!(error.http_status, 404 | 410),
        _ => false,
    };
    if gone { Errno::ENOENT } else { Errno::EIO }
}

/// Task content never changes, so the kernel may cache what it learns
/// about a known task for long.
const ENTRY_TTL: Duration = Duration::from_secs(3600);
/// The directory's listing changes as tasks appear.
const DIR_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct FsSettings {
    /// Longest a read (or lookup) may wait before it fails with EIO.
    pub timeout: Duration,
    /// Largest read-ahead window for sequential readers.
    pub readahead_max: u64,
    /// When a reader reading in order from the start gets the whole task
    /// fetched in the background.
    pub whole_after: WholeAfter,
    /// Hand complete tasks to the kernel (FUSE passthrough) when possible.
    pub passthrough: bool,
    /// Serve incomplete tasks with direct I/O: reads skip the kernel's page
    /// cache for the file, so bytes are not copied into fresh memory twice
    /// (peerd's cache and the mount's), at the cost of no kernel read-ahead
    /// for small-block readers.
    pub direct_io: bool,
    pub uid: u32,
    pub gid: u32,
}

pub struct DffsFs {
    nodes: Arc<Nodes>,
    peerd: LocalClient,
    runtime: tokio::runtime::Handle,
    settings: FsSettings,
    handles: Arc<Handles>,
    /// The kernel accepted passthrough at init.
    passthrough: AtomicBool,
}

impl DffsFs {
    pub fn new(
        peerd: LocalClient,
        runtime: tokio::runtime::Handle,
        settings: FsSettings,
    ) -> DffsFs {
        DffsFs {
            nodes: Arc::new(Nodes::new()),
            peerd,
            runtime,
            handles: Arc::new(Handles::new(settings.readahead_max, settings.whole_after)),
            settings,
            passthrough: AtomicBool::new(false),
        }
    }

    fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(ROOT_INO),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.settings.uid,
            gid: self.settings.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Registers the content file for passthrough, sharing one backing id
    /// among all open handles of the inode; None when the handle must be
    /// a cached one (passthrough unavailable, task incomplete, or cached
    /// handles still open).
    fn open_handle(&self, node: &Node, reply: &ReplyOpen) -> Option<Arc<fuser::BackingId>> {
        let mut io = node.io.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, users)) = io.passthrough.as_mut() {
            *users += 1;
            return Some(id.clone());
        }
        let eligible = self.passthrough.load(Ordering::Relaxed)
            && node.is_complete()
            && io.cached == 0
            && io.passthrough.is_none();
        let backing = eligible
            .then(|| node.content().ok())
            .flatten()
            .and_then(|file| {
                reply
                    .open_backing(&*file)
                    .inspect_err(|e| {
                        tracing::warn!(
                            "FUSE passthrough refused ({e}); serving reads through dffs instead"
                        );
                        self.passthrough.store(false, Ordering::Relaxed);
                    })
                    .ok()
            });
        match backing {
            Some(id) => {
                let id = Arc::new(id);
                io.passthrough = Some((id.clone(), 1));
                Some(id)
            }
            None => {
                io.cached += 1;
                None
            }
        }
    }
}

/// Buffers for replies to reads: a fresh megabyte for every read would be
/// faulted in and zeroed each time, which cost as much as the copy itself.
static READ_BUFFERS: BufferPool = BufferPool::new();

fn read_at(node: &Node, offset: u64, len: usize) -> std::io::Result<PooledBuffer<'static>> {
    let file = node.content()?;
    let mut buf = READ_BUFFERS.take(len);
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn record_read(bytes: usize, hit: bool, started: Instant) {
    metrics::counter!("dffs_fs_reads_total").increment(1);
    metrics::counter!("dffs_fs_read_bytes_total").increment(bytes as u64);
    let outcome = if hit { "hit" } else { "miss" };
    metrics::counter!("dffs_fs_read_outcomes_total", "outcome" => outcome).increment(1);
    metrics::histogram!("dffs_fs_read_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

impl Filesystem for DffsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ =
            config.set_max_readahead(self.settings.readahead_max.min(u64::from(u32::MAX)) as u32);
        // Raises the pages per request, so reads arrive in 1 MiB requests.
        let _ = config.set_max_write(1 << 20);
        if self.settings.direct_io {
            // Shared mappings of direct-I/O files need this; private ones
            // (executables, libraries) work without it.
            let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        }
        if self.settings.passthrough {
            let accepted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if accepted {
                tracing::info!(
                    "FUSE passthrough available: complete tasks are read at native speed"
                );
            } else {
                tracing::info!(
                    "the kernel offers no FUSE passthrough; complete tasks are served through dffs"
                );
            }
            self.passthrough.store(accepted, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let id = match (parent.0, name.to_str().map(str::parse::<TaskId>)) {
            (ROOT_INO, Some(Ok(id))) => id,
            _ => return reply.error(Errno::ENOENT),
        };
        let (uid, gid) = (self.settings.uid, self.settings.gid);
        if let Some(node) = self.nodes.by_id(&id) {
            return reply.entry(&ENTRY_TTL, &node.attr(uid, gid), Generation(0));
        }
        let (nodes, peerd, timeout) = (
            self.nodes.clone(),
            self.peerd.clone(),
            self.settings.timeout,
        );
        self.runtime.spawn(async move {
            match peerd.stat(id, timeout).await {
                Ok(info) => match nodes.insert(&info) {
                    Ok(node) => reply.entry(&ENTRY_TTL, &node.attr(uid, gid), Generation(0)),
                    Err(e) => {
                        tracing::warn!("{e}");
                        reply.error(Errno::EIO);
                    }
                },
                Err(e) => {
                    if errno(&e) != Errno::ENOENT {
                        tracing::warn!(task = %id, "lookup failed: {e}");
                    }
                    // An unknown task is not cached as absent: it may be
                    // registered a moment later.
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT_INO {
            return reply.attr(&DIR_TTL, &self.root_attr());
        }
        match self.nodes.get(ino.0) {
            Some(node) => reply.attr(&ENTRY_TTL, &node.attr(self.settings.uid, self.settings.gid)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some(node) = self.nodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let changed = node.revalidate();
        {
            let mut io = node.io.lock().unwrap_or_else(|e| e.into_inner());
            if io.passthrough.is_some() && (changed || io.stale) {
                // The kernel binds an inode open for passthrough to that
                // one file: every further open of it must use that file,
                // whose bytes changed. Handles already open keep it (a
                // release may still be on its way, as FUSE sends it after
                // close() returns). The task moves to a fresh inode, and
                // ESTALE makes the kernel look the name up again and open
                // that one instead, so the caller never sees an error.
                io.stale = true;
                drop(io);
                let fresh = self.nodes.succeed(&node);
                tracing::info!(task = %node.id, old = node.ino, new = fresh.ino, "peerd's copy changed while open for passthrough; new opens get a fresh inode");
                return reply.error(Errno::ESTALE);
            }
        }
        match self.open_handle(&node, &reply) {
            Some(backing) => {
                let fh = self.handles.open(node.ino, true);
                metrics::counter!("dffs_fs_opens_total", "mode" => "passthrough").increment(1);
                // The kernel accepts no other open flags with passthrough.
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
            }
            None => {
                let fh = self.handles.open(node.ino, false);
                metrics::counter!("dffs_fs_opens_total", "mode" => "fuse").increment(1);
                // Content never changes: pages the kernel cached stay valid.
                let flags = if self.settings.direct_io {
                    FopenFlags::FOPEN_DIRECT_IO
                } else {
                    FopenFlags::FOPEN_KEEP_CACHE
                };
                reply.opened(FileHandle(fh), flags);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let started = Instant::now();
        let Some(node) = self.nodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let length = node.layout.content_length;
        if offset >= length {
            return reply.data(&[]);
        }
        let len = (u64::from(size)).min(length - offset);
        let pieces = node.layout.pieces_covering(offset, len);
        if let Some(ahead) = self.handles.advance(fh.0, offset, offset + len, length) {
            crate::readahead::prefetch(
                &self.runtime,
                &self.peerd,
                &node,
                ahead,
                self.settings.timeout,
            );
        }
        if node.has_all(pieces.clone()) {
            match read_at(&node, offset, len as usize) {
                Ok(buf) => {
                    record_read(buf.len(), true, started);
                    return reply.data(&buf);
                }
                Err(e) => {
                    tracing::warn!(task = %node.id, "reading the cached copy failed, asking peerd: {e}")
                }
            }
        }
        let (peerd, timeout) = (self.peerd.clone(), self.settings.timeout);
        self.runtime.spawn(async move {
            tracing::trace!(task = %node.id, offset, len, "read miss: asking peerd");
            let result = peerd.ensure(node.id, offset, len, Priority::Read, timeout).await;
            tracing::trace!(task = %node.id, offset, ms = started.elapsed().as_millis() as u64, "read miss answered");
            match result {
                Ok(response) => {
                    node.set_content_path(&response.content_path);
                    node.mark_present(pieces);
                    if response.complete {
                        node.mark_complete();
                    }
                    match read_at(&node, offset, len as usize) {
                        Ok(buf) => {
                            record_read(buf.len(), false, started);
                            reply.data(&buf);
                        }
                        Err(e) => {
                            tracing::error!(task = %node.id, offset, "cannot read peerd's content file: {e}");
                            reply.error(Errno::EIO);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(task = %node.id, offset, len, "read failed: {e}");
                    metrics::counter!("dffs_fs_read_errors_total").increment(1);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let passthrough = self.handles.close(fh.0);
        if let Some(node) = self.nodes.get(ino.0) {
            let mut io = node.io.lock().unwrap_or_else(|e| e.into_inner());
            if passthrough {
                if let Some((_, users)) = io.passthrough.as_mut() {
                    *users -= 1;
                    if *users == 0 {
                        io.passthrough = None;
                    }
                }
            } else {
                io.cached = io.cached.saturating_sub(1);
            }
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let (nodes, peerd, timeout) = (
            self.nodes.clone(),
            self.peerd.clone(),
            self.settings.timeout,
        );
        self.runtime.spawn(async move {
            let tasks = match peerd.list(timeout).await {
                Ok(tasks) => tasks,
                Err(e) => {
                    tracing::warn!("listing tasks failed: {e}");
                    return reply.error(errno(&e));
                }
            };
            let mut entries: Vec<(u64, FileType, String)> = vec![
                (ROOT_INO, FileType::Directory, ".".into()),
                (ROOT_INO, FileType::Directory, "..".into()),
            ];
            let mut files: Vec<(u64, FileType, String)> = tasks
                .iter()
                .filter_map(|info| nodes.insert(info).ok())
                .map(|node| (node.ino, FileType::RegularFile, node.id.to_string()))
                .collect();
            files.sort_by_key(|(ino, _, _)| *ino);
            entries.extend(files);
            for (index, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
            {
                if reply.add(INodeNo(ino), (index + 1) as u64, kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_that_does_not_exist_is_enoent_and_anything_else_eio() {
        let kind = |kind| RemoteError::new(kind, "x");
        assert_eq!(errno(&kind(ErrorKind::NotFound)), Errno::ENOENT);
        assert_eq!(errno(&RemoteError::origin(404, false, "x")), Errno::ENOENT);
        assert_eq!(errno(&RemoteError::origin(410, false, "x")), Errno::ENOENT);
        assert_eq!(errno(&RemoteError::origin(403, false, "x")), Errno::EIO);
        assert_eq!(errno(&RemoteError::origin(0, true, "x")), Errno::EIO);
        assert_eq!(errno(&kind(ErrorKind::Transport)), Errno::EIO);
        assert_eq!(errno(&kind(ErrorKind::Timeout)), Errno::EIO);
    }
}
