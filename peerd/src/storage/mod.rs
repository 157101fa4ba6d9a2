//! peerd's on-disk piece cache.
//!
//! ```text
//! DATA_DIR/host-secret                  this host's secret (mode 0600)
//! DATA_DIR/host-id                      its id, derived from the secret
//! DATA_DIR/tasks/<aa>/<task-id>/meta.pb     the task's metadata (protobuf);
//!                                           its mtime is the last access
//! DATA_DIR/tasks/<aa>/<task-id>/content     the object, each piece at its own offset
//! DATA_DIR/tasks/<aa>/<task-id>/pieces      append-only log of verified pieces
//! ```
//!
//! A piece counts as present only once its log record is written, and the
//! record is written only after the content file has been synced (see
//! [`journal`]), so after a crash the log never claims bytes the disk lacks.

pub mod journal;
pub mod task_file;

use api::identity::HostIdentity;
use api::piece::Layout;
use api::proto::TaskMeta;
use api::task::TaskId;
pub use journal::Journal;
use prost::Message;
use std::io;
use std::path::{Path, PathBuf};
pub use task_file::{LoadedTask, TaskFile};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot use data directory {path}: {source}; check the path and its permissions or pass --data-dir"
    )]
    DataDir { path: PathBuf, source: io::Error },
    #[error("task {task}: {source}")]
    Task { task: TaskId, source: io::Error },
}

pub struct Store {
    data_dir: PathBuf,
    tasks_dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the cache under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let tasks_dir = data_dir.join("tasks");
        std::fs::create_dir_all(&tasks_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Ok(Store {
            data_dir: data_dir.to_path_buf(),
            tasks_dir,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// This host's identity: a secret made once and kept (readable by root
    /// only), from which its id is derived, so a restarted peerd is the same
    /// host to the scheduler and can prove it (see `api::identity`). The id
    /// is also written to `host-id`, for people.
    pub fn host_identity(&self) -> Result<HostIdentity, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.data_dir.join("host-secret");
        let wrap = |source| StoreError::DataDir {
            path: path.clone(),
            source,
        };
        let stored = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| HostIdentity::from_hex(&text).ok());
        let identity = match stored {
            Some(identity) => identity,
            None => {
                let identity = HostIdentity::generate();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(wrap)?;
                std::io::Write::write_all(&mut file, identity.secret_hex().as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(wrap)?;
                identity
            }
        };
        let id_path = self.data_dir.join("host-id");
        if std::fs::read_to_string(&id_path).ok().as_deref() != Some(identity.id()) {
            std::fs::write(&id_path, identity.id()).map_err(|source| StoreError::DataDir {
                path: id_path,
                source,
            })?;
        }
        Ok(identity)
    }

    fn task_dir(&self, id: &TaskId) -> PathBuf {
        self.tasks_dir.join(id.shard()).join(id.to_string())
    }

    /// Creates the files of a new task, or reopens them if present.
    pub fn create(
        &self,
        id: TaskId,
        meta: &TaskMeta,
        layout: Layout,
    ) -> Result<TaskFile, StoreError> {
        let dir = self.task_dir(&id);
        let wrap = |source| StoreError::Task { task: id, source };
        std::fs::create_dir_all(&dir).map_err(wrap)?;
        std::fs::write(dir.join("meta.pb"), meta.encode_to_vec()).map_err(wrap)?;
        TaskFile::create(dir, layout).map_err(wrap)
    }

    /// Every task in the cache, for a restarted peerd. Tasks whose files are
    /// unreadable are skipped with a warning rather than failing start-up.
    pub fn load_all(&self) -> Vec<LoadedTask> {
        let mut loaded = Vec::new();
        for dir in task_dirs(&self.tasks_dir) {
            match TaskFile::load(dir.clone()) {
                Ok(Some(task)) => loaded.push(task),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "skipping unreadable cached task: {e}")
                }
            }
        }
        loaded
    }

    /// Deletes a task's files.
    pub fn remove(&self, id: &TaskId) -> io::Result<()> {
        std::fs::remove_dir_all(self.task_dir(id))
    }
}

fn task_dirs(tasks_dir: &Path) -> Vec<PathBuf> {
    let read = |p: &Path| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
    };
    read(tasks_dir)
        .filter(|p| p.is_dir())
        .flat_map(|shard| read(&shard).collect::<Vec<_>>())
        .collect()
}
