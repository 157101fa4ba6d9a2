//! The tasks this host knows, by id, and the lock that makes concurrent
//! callers opening the same task create it once.

use super::task::Task;
use api::task::TaskId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
pub(super) struct Registry {
    tasks: Mutex<HashMap<TaskId, Arc<Task>>>,
    opening: Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Registry {
    fn tasks(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, id: &TaskId) -> Option<Arc<Task>> {
        self.tasks().get(id).cloned()
    }

    /// Adds `task` unless one with its id is there already; returns the one
    /// kept, and how many tasks there are now.
    pub(super) fn insert(&self, task: Arc<Task>) -> (Arc<Task>, usize) {
        let mut tasks = self.tasks();
        let kept = tasks.entry(task.id).or_insert(task).clone();
        (kept, tasks.len())
    }

    pub(super) fn remove(&self, id: &TaskId) {
        self.tasks().remove(id);
    }

    pub(super) fn all(&self) -> Vec<Arc<Task>> {
        self.tasks().values().cloned().collect()
    }

    /// Holds the open lock of task `id` until the guard drops. The lock's
    /// entry goes once nobody holds or waits for it.
    pub(super) async fn opening(&self, id: TaskId) -> OpenGuard<'_> {
        let lock = self
            .opening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        OpenGuard {
            registry: self,
            id,
            _guard: guard,
            lock,
        }
    }
}

pub(super) struct OpenGuard<'a> {
    registry: &'a Registry,
    id: TaskId,
    _guard: tokio::sync::OwnedMutexGuard<()>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let mut opening = self
            .registry
            .opening
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Held here, by this guard and its owned guard: nobody else waits.
        if Arc::strong_count(&self.lock) <= 3 {
            opening.remove(&self.id);
        }
    }
}
