//! How a task gets its metadata and its root: the first registration of a
//! task has a seed (or, with no seed, the asking host) resolve it at the
//! origin while later askers wait; every task keeps a live root, the one
//! host that fetches from the origin what nobody holds.

use crate::state::{Cluster, RegisterRequest, Registration, Resolution, Task, unknown_task};
use api::error::{ErrorKind, RemoteError, invalid, status};
use api::piece::Bitmap;
use api::proto::{RegisterPeerResponse, SeedCommand, TaskMeta};
use api::task::TaskId;
use std::time::Instant;
use tonic::Status;

impl Cluster {
    /// Joins `req.host_id` to a task. Metadata a host sends along (when it
    /// re-reports a task it holds) never creates or changes a task: a new
    /// task's metadata comes only from resolving it at the origin, and a
    /// holder's pieces count only if its metadata describes the same object.
    pub fn register_peer(
        &mut self,
        req: RegisterRequest<'_>,
        now: Instant,
    ) -> Result<Registration, Status> {
        self.known_host(req.host_id)?;
        if let Some(meta) = &req.meta {
            check_meta_matches(&req.task_id, meta)?;
        }
        let source = req
            .source
            .clone()
            .or_else(|| req.meta.as_ref().and_then(|m| m.source.clone()));
        if !self.tasks.contains_key(&req.task_id) && source.is_none() {
            return Err(unknown_task(&req.task_id));
        }
        let task = self.tasks.entry(req.task_id).or_insert_with(Task::new);
        if req.private_source {
            task.private |= task.meta.is_none() && task.resolving.is_none();
            task.private_fetchers.insert(req.host_id.to_string());
        }
        if task.source.is_none() {
            task.source = source;
        }
        let Some(known) = task.meta.clone() else {
            return Ok(self.begin_resolution(req.task_id, req.host_id, req.want_whole, now));
        };
        let task = self
            .tasks
            .get_mut(&req.task_id)
            .expect("task inserted above");
        let peer = task.add_peer(req.host_id);
        let holds_this_object = req.meta.as_ref().is_some_and(|m| same_object(m, &known));
        if let Some(bytes) = req.bitmap.filter(|_| holds_this_object) {
            peer.bitmap = Bitmap::from_bytes(peer.bitmap.len(), bytes);
        }
        let root = self.ensure_root(req.task_id, req.host_id, req.want_whole, now);
        Ok(Registration::Done(RegisterPeerResponse {
            meta: Some(known),
            is_root: root == req.host_id,
            must_resolve: false,
        }))
    }

    /// Starts resolving unknown metadata, at a seed if one is connected,
    /// else at the asking host; later askers wait for the result.
    fn begin_resolution(
        &mut self,
        task_id: TaskId,
        host_id: &str,
        want_whole: bool,
        now: Instant,
    ) -> Registration {
        let timeout = self.settings.resolve_timeout;
        let hosts = &self.hosts;
        let task = self
            .tasks
            .get_mut(&task_id)
            .expect("caller inserted the task");
        let stalled = task.resolving.as_ref().is_some_and(|(h, since)| {
            !hosts.contains_key(h) || now.duration_since(*since) > timeout
        });
        if stalled {
            tracing::warn!(task = %task_id, "resolver went away; asking another host");
            task.resolving = None;
            task.root = None;
        }
        match &task.resolving {
            Some((resolver, _)) if resolver == host_id => {
                return Registration::Done(must_resolve());
            }
            Some(_) => return Registration::Wait(task.resolution.subscribe()),
            None => {}
        }
        let receiver = task.resolution.subscribe();
        let source = task.source.clone();
        let seed = if task.private {
            None
        } else {
            self.pick_seed(&task_id)
        };
        if let Some(seed) = seed {
            let command = SeedCommand {
                task_id: task_id.to_string(),
                source,
                meta: None,
                whole: want_whole,
            };
            if self.send_to_seed(&seed, command) {
                let task = self.tasks.get_mut(&task_id).expect("task exists");
                task.resolving = Some((seed.clone(), now));
                task.whole_requested = want_whole;
                task.root = Some(seed.clone());
                task.add_peer(&seed);
                return Registration::Wait(receiver);
            }
        }
        let task = self.tasks.get_mut(&task_id).expect("task exists");
        task.resolving = Some((host_id.to_string(), now));
        task.root = Some(host_id.to_string());
        task.add_peer(host_id);
        Registration::Done(must_resolve())
    }

    /// Makes sure the task has a live root and returns it: the current one,
    /// else a seed, else `asking` itself. Tells a seed root to fetch the
    /// whole task the first time someone wants all of it.
    pub(crate) fn ensure_root(
        &mut self,
        task_id: TaskId,
        asking: &str,
        want_whole: bool,
        now: Instant,
    ) -> String {
        let task = &self.tasks[&task_id];
        let alive = task
            .root
            .as_ref()
            .filter(|r| self.hosts.get(*r).is_some_and(|h| !h.is_isolated(now)))
            .cloned();
        let (root, newly_chosen) = match alive {
            Some(root) => (root, false),
            None if task.private => (self.private_root(task_id, asking, now), true),
            None => {
                let seed = self.pick_seed(&task_id);
                (seed.unwrap_or_else(|| asking.to_string()), true)
            }
        };
        let is_seed = self
            .hosts
            .get(&root)
            .is_some_and(|h| h.seed_commands.is_some());
        let task = self.tasks.get_mut(&task_id).expect("task exists");
        let tell_whole = want_whole && !task.whole_requested;
        if is_seed && (newly_chosen || tell_whole) {
            let command = SeedCommand {
                task_id: task_id.to_string(),
                source: task.source.clone(),
                meta: task.meta.clone(),
                whole: want_whole || task.whole_requested,
            };
            task.whole_requested |= want_whole;
            if !self.send_to_seed(&root, command) {
                return self.make_root(task_id, asking);
            }
        }
        self.make_root(task_id, &root)
    }

    /// A new root for a private task: a live host that has its own origin
    /// headers for it, `asking` first. With none left, `asking` itself: its
    /// origin requests then fail with the origin's own refusal, which is
    /// what that host's user must hear.
    fn private_root(&self, task_id: TaskId, asking: &str, now: Instant) -> String {
        let fetchers = &self.tasks[&task_id].private_fetchers;
        let live = |h: &&String| self.hosts.get(*h).is_some_and(|h| !h.is_isolated(now));
        if fetchers.contains(asking) {
            return asking.to_string();
        }
        fetchers
            .iter()
            .filter(live)
            .min()
            .cloned()
            .unwrap_or_else(|| asking.to_string())
    }

    fn make_root(&mut self, task_id: TaskId, host_id: &str) -> String {
        let task = self.tasks.get_mut(&task_id).expect("task exists");
        if task.root.as_deref() != Some(host_id) {
            tracing::info!(task = %task_id, root = %host_id, "task root chosen");
        }
        task.root = Some(host_id.to_string());
        task.add_peer(host_id);
        host_id.to_string()
    }

    /// The seed that roots `task_id`: rendezvous hashing spreads tasks over
    /// seeds and keeps a task on the same seed while that seed lives.
    fn pick_seed(&self, task_id: &TaskId) -> Option<String> {
        let now = Instant::now();
        self.hosts
            .values()
            .filter(|h| {
                h.seed_commands.as_ref().is_some_and(|tx| !tx.is_closed()) && !h.is_isolated(now)
            })
            .max_by_key(|h| rendezvous_weight(task_id, &h.info.host_id))
            .map(|h| h.info.host_id.clone())
    }

    fn send_to_seed(&mut self, seed: &str, command: SeedCommand) -> bool {
        let Some(host) = self.hosts.get_mut(seed) else {
            return false;
        };
        let sent = host
            .seed_commands
            .as_ref()
            .is_some_and(|tx| tx.try_send(Ok(command)).is_ok());
        if !sent {
            tracing::warn!(seed = %seed, "seed did not take a command; it is no longer used as a seed");
            host.seed_commands = None;
        }
        sent
    }

    pub fn report_task_meta(
        &mut self,
        host_id: &str,
        task_id: TaskId,
        result: Result<TaskMeta, RemoteError>,
    ) -> Result<(), Status> {
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or_else(|| unknown_task(&task_id))?;
        if task.meta.is_some() {
            return Ok(());
        }
        if task.resolving.as_ref().is_none_or(|(h, _)| h != host_id) {
            return Err(status(
                ErrorKind::Denied,
                format!("host {host_id} was not asked to resolve task {task_id}"),
            ));
        }
        match result {
            Ok(meta) => {
                check_meta_matches(&task_id, &meta)?;
                task.set_meta(meta)
            }
            Err(error) => {
                tracing::info!(task = %task_id, status = error.http_status, "origin refused task: {}", error.message);
                task.resolution.send_replace(Resolution::Failed(error));
                self.tasks.remove(&task_id);
                Ok(())
            }
        }
    }
}

fn must_resolve() -> RegisterPeerResponse {
    RegisterPeerResponse {
        meta: None,
        is_root: true,
        must_resolve: true,
    }
}

/// The metadata's source must hash to the task-id it claims, so a confused
/// or hostile resolver cannot bind one task-id to another URL.
fn check_meta_matches(task_id: &TaskId, meta: &TaskMeta) -> Result<(), Status> {
    let source = meta
        .source
        .as_ref()
        .ok_or_else(|| invalid("task metadata lacks its source"))?;
    let derived = TaskId::from_source(&source.url, &source.tag, &source.application)
        .map_err(|e| invalid(e.to_string()))?;
    if derived != *task_id || meta.task_id != task_id.to_string() {
        return Err(invalid(format!(
            "metadata for task {task_id} describes another task"
        )));
    }
    Ok(())
}

/// Whether two descriptions of a task are of the same bytes: the same
/// length, pieces and origin validators.
fn same_object(a: &TaskMeta, b: &TaskMeta) -> bool {
    (a.content_length, a.piece_length, &a.etag, &a.last_modified)
        == (b.content_length, b.piece_length, &b.etag, &b.last_modified)
}

fn rendezvous_weight(task_id: &TaskId, host_id: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(task_id.as_bytes());
    hasher.update(host_id.as_bytes());
    *hasher.finalize().as_bytes()
}
