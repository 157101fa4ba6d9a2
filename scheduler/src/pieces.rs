//! Who holds which pieces: parents for a child, and what peers report.

use crate::ranking::{self, Candidate};
use crate::state::{Cluster, unknown_task};
use api::error::{ErrorKind, invalid, status};
use api::proto::{GetParentsResponse, Parent, PieceDigest, ReportPiecesRequest};
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
                let digest = task.digests.get(n as usize).copied().flatten()?;
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

    pub fn report_pieces(
        &mut self,
        req: &ReportPiecesRequest,
        task_id: TaskId,
        now: Instant,
    ) -> Result<(), Status> {
        let host_id = req.host_id.as_str();
        let (pieces, digests, bad_parents, speeds) =
            (&req.pieces, &req.digests, &req.bad_parents, &req.speeds);
        self.known_host(host_id)?;
        let isolation = self.settings.isolation;
        for bad in bad_parents {
            if let Some(parent) = self.hosts.get_mut(&bad.host_id) {
                parent.failures += 1.0;
                if bad.corrupt {
                    tracing::warn!(parent = %bad.host_id, reporter = %host_id, piece = bad.piece, "parent isolated: it served a corrupt piece");
                    metrics::counter!("scheduler_isolations_total").increment(1);
                    parent.isolated_until = Some(now + isolation);
                }
            }
        }
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
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or_else(|| unknown_task(&task_id))?;
        let is_root = task.root.as_deref() == Some(host_id);
        let count = task.piece_count();
        if !digests.is_empty() && !is_root {
            return Err(status(
                ErrorKind::Denied,
                format!(
                    "host {host_id} is not the root of task {task_id} and may not report digests"
                ),
            ));
        }
        for d in digests {
            let Some(slot) = task.digests.get_mut(d.number as usize) else {
                return Err(invalid(format!("piece {} is out of range", d.number)));
            };
            let digest: [u8; 32] = d
                .blake3
                .as_slice()
                .try_into()
                .map_err(|_| invalid("a piece digest must be 32 bytes"))?;
            match slot {
                Some(existing) if *existing != digest => {
                    tracing::warn!(task = %task_id, piece = d.number, "conflicting digest reported; keeping the first");
                }
                _ => *slot = Some(digest),
            }
        }
        let peer = task.add_peer(host_id);
        for &n in pieces.iter().filter(|&&n| n < count) {
            peer.bitmap.set(n);
        }
        Ok(())
    }
}
