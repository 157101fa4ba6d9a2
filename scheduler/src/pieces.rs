//! Who holds which pieces: parents for a child, and what peers report.

use crate::ranking::{self, Candidate};
use crate::state::{Cluster, Task, unknown_task};
use api::error::{ErrorKind, invalid, status};
use api::proto::{
    BadParent, GetParentsResponse, Parent, ParentSpeed, PieceDigest, ReportPiecesRequest,
};
use api::task::TaskId;
use std::time::Instant;
use tonic::Status;

impl Cluster {
    pub fn get_parents(
        &mut self,
        host_id: &str,
        task_id: TaskId,
        want_digests: &[u32],
        now: Instant,
    ) -> Result<GetParentsResponse, Status> {
        self.known_host(host_id)?;
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or_else(|| unknown_task(&task_id))?;
        if task.meta.is_none() {
            return Err(status(
                ErrorKind::Unavailable,
                format!("task {task_id} is still being resolved"),
            ));
        }
        task.add_peer(host_id);
        let root = self.ensure_root(task_id, host_id, false, now);
        let task = &self.tasks[&task_id];
        let child = &task.peers[host_id].bitmap;
        let candidates = task
            .peers
            .iter()
            .filter(|(id, _)| id.as_str() != host_id)
            .filter_map(|(id, peer)| {
                let host = self.hosts.get(id).filter(|h| !h.is_isolated(now))?;
                Some(Candidate {
                    host,
                    bitmap: &peer.bitmap,
                    is_root: *id == root,
                })
            });
        let chosen = ranking::rank(child, candidates, self.settings.max_parents);
        let parents = chosen
            .into_iter()
            .map(|c| Parent {
                host_id: c.host.info.host_id.clone(),
                upload_addr: c.host.info.upload_addr.clone(),
                is_root: c.is_root,
                bitmap: c.bitmap.as_bytes().to_vec(),
            })
            .collect();
        let digests = want_digests
            .iter()
            .filter_map(|&n| {
                let digest = *task.digests.get(&n)?;
                Some(PieceDigest {
                    number: n,
                    blake3: digest.to_vec(),
                })
            })
            .collect();
        Ok(GetParentsResponse {
            parents,
            digests,
            is_root: root == host_id,
        })
    }

    /// Applies a host's report: pieces it now holds, digests (from the
    /// root only), parents that failed it and how fast others delivered.
    /// A report with any bad part is refused whole, before anything of it
    /// is applied.
    pub fn report_pieces(
        &mut self,
        req: &ReportPiecesRequest,
        task_id: TaskId,
        now: Instant,
    ) -> Result<(), Status> {
        let host_id = req.host_id.as_str();
        self.known_host(host_id)?;
        let task = self
            .tasks
            .get(&task_id)
            .ok_or_else(|| unknown_task(&task_id))?;
        let digests = checked_digests(task, task_id, host_id, &req.digests)?;
        self.record_bad_parents(host_id, &req.bad_parents, now);
        self.record_speeds(&req.speeds);
        let task = self.tasks.get_mut(&task_id).expect("looked up above");
        task.digests.extend(digests);
        let count = task.piece_count();
        let peer = task.add_peer(host_id);
        for &n in req.pieces.iter().filter(|&&n| n < count) {
            peer.bitmap.set(n);
        }
        Ok(())
    }

    /// Counts failures against parents. A corrupt-piece report isolates a
    /// parent only once `isolation_quorum` distinct hosts have sent one
    /// within the isolation period: a single host could otherwise isolate
    /// anyone, the seed included, with one message.
    fn record_bad_parents(&mut self, reporter: &str, bad_parents: &[BadParent], now: Instant) {
        let (isolation, quorum) = (self.settings.isolation, self.settings.isolation_quorum);
        for bad in bad_parents.iter().filter(|b| b.host_id != reporter) {
            let Some(parent) = self.hosts.get_mut(&bad.host_id) else {
                continue;
            };
            parent.failures += 1.0;
            if !bad.corrupt {
                continue;
            }
            parent.corrupt_reports.insert(reporter.to_string(), now);
            parent
                .corrupt_reports
                .retain(|_, at| now.duration_since(*at) < isolation);
            let reporters = parent.corrupt_reports.len();
            tracing::warn!(parent = %bad.host_id, reporter = %reporter, piece = bad.piece, reporters, "a host reports a corrupt piece from this parent");
            if reporters >= quorum.max(1) && !parent.is_isolated(now) {
                tracing::warn!(parent = %bad.host_id, reporters, "parent isolated: several hosts got corrupt pieces from it");
                metrics::counter!("scheduler_isolations_total").increment(1);
                parent.isolated_until = Some(now + isolation);
            }
        }
    }

    fn record_speeds(&mut self, speeds: &[ParentSpeed]) {
        for speed in speeds.iter().filter(|s| s.micros > 0) {
            if let Some(parent) = self.hosts.get_mut(&speed.host_id) {
                let sample = speed.bytes as f64 / (speed.micros as f64 / 1e6);
                parent.speed = if parent.speed == 0.0 {
                    sample
                } else {
                    0.7 * parent.speed + 0.3 * sample
                };
            }
        }
    }
}

/// The digests of a report, checked: only the task's root reports them,
/// each for a piece the task has, 32 bytes long, and never different from
/// one reported before: the first report stands, and a conflicting one is
/// refused, not silently kept or dropped.
fn checked_digests(
    task: &Task,
    task_id: TaskId,
    host_id: &str,
    digests: &[PieceDigest],
) -> Result<Vec<(u32, [u8; 32])>, Status> {
    if digests.is_empty() {
        return Ok(Vec::new());
    }
    if task.root.as_deref() != Some(host_id) {
        return Err(status(
            ErrorKind::Denied,
            format!("host {host_id} is not the root of task {task_id} and may not report digests"),
        ));
    }
    let count = task.piece_count();
    digests
        .iter()
        .map(|d| {
            if d.number >= count {
                return Err(invalid(format!("piece {} is out of range", d.number)));
            }
            let digest: [u8; 32] = d
                .blake3
                .as_slice()
                .try_into()
                .map_err(|_| invalid("a piece digest must be 32 bytes"))?;
            match task.digests.get(&d.number) {
                Some(known) if *known != digest => Err(status(
                    ErrorKind::Denied,
                    format!(
                        "piece {} of task {task_id} already has another digest; the first report stands",
                        d.number
                    ),
                )),
                _ => Ok((d.number, digest)),
            }
        })
        .collect()
}
