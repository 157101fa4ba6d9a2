//! The engine as the upload server's source of pieces.

use super::fanout::{Ask, Decision};
use super::handle::Engine;
use super::task::Task;
use super::{fetcher, origin_run};
use crate::upload::protocol::{PieceRequest, ReplyStatus};
use crate::upload::server::{PieceLocation, PieceProvider, Refusal};
use api::proto::Priority;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a redirected request waits here for a piece on its way.
const WAIT_FOR_INCOMING: Duration = Duration::from_secs(10);

fn refuse(status: ReplyStatus, reason: String) -> Refusal {
    Refusal { status, reason }
}

impl PieceProvider for Engine {
    async fn locate(
        &self,
        request: PieceRequest,
        from: SocketAddr,
    ) -> Result<PieceLocation, Refusal> {
        let task = self.task_to_serve(&request).await?;
        let n = request.piece;
        let is_root = task.is_root();
        if is_root {
            // Every in-order ask tops the origin stream up, also one for a
            // piece already here: once a run lands before the child asks
            // for its pieces, topping up only on asks for missing pieces
            // left the stream stalled until the child caught up.
            origin_run::read_ahead(&self.ctx, &task, n);
        }
        // A root spreads every piece; another host only what it holds (it
        // cannot answer for a piece it is not getting).
        if is_root || task.has_piece(n) {
            redirect_if_sooner(&task, &request, from, is_root)?;
        }
        if !task.has_piece(n) {
            self.obtain(&task, &request, is_root).await?;
        }
        if is_root {
            // Children verify against the digest this root reports.
            task.publisher.wait_reported(n).await;
        }
        let range = task.layout.piece_range(n);
        Ok(PieceLocation {
            file: task.file.clone(),
            offset: range.start,
            length: (range.end - range.start) as u32,
        })
    }
}

impl Engine {
    /// The task a request names, if this host may serve it.
    async fn task_to_serve(&self, request: &PieceRequest) -> Result<Arc<Task>, Refusal> {
        let task = match self.task(&request.task) {
            Some(task) => task,
            // A seed may hear from a child before its own command arrives.
            None if self.is_seed() => self
                .open_id(request.task)
                .await
                .map_err(|e| refuse(ReplyStatus::NotFound, e.to_string()))?,
            None => {
                return Err(refuse(
                    ReplyStatus::NotFound,
                    format!("task {} is not held here", request.task),
                ));
            }
        };
        if request.piece >= task.layout.piece_count() {
            return Err(refuse(
                ReplyStatus::NotFound,
                format!("task {} has no piece {}", task.id, request.piece),
            ));
        }
        Ok(task)
    }

    /// Gets a piece this host lacks for the asker: a root fetches it (from
    /// the origin); another host waits for one on its way, if asked to.
    async fn obtain(
        &self,
        task: &Arc<Task>,
        request: &PieceRequest,
        is_root: bool,
    ) -> Result<(), Refusal> {
        let n = request.piece;
        if is_root {
            let priority = if request.urgent {
                Priority::Read
            } else {
                Priority::Prefetch
            };
            return fetcher::ensure(&self.ctx, task, n..n + 1, priority)
                .await
                .map_err(|e| refuse(ReplyStatus::Failed, e.to_string()));
        }
        if request.wait && task.wait_for_piece(n, WAIT_FOR_INCOMING).await {
            return Ok(());
        }
        Err(refuse(
            ReplyStatus::NotFound,
            format!("piece {n} is not held here"),
        ))
    }
}

/// Sends the asker to an earlier receiver of the piece when that gets it
/// the piece sooner than this host would (see `fanout`).
fn redirect_if_sooner(
    task: &Task,
    request: &PieceRequest,
    from: SocketAddr,
    is_root: bool,
) -> Result<(), Refusal> {
    let requester =
        (request.reply_port != 0).then(|| SocketAddr::new(from.ip(), request.reply_port));
    // A reader blocked on a piece is not sent on a detour by a plain peer;
    // the root's uplink is too scarce to spare.
    let ask = if request.no_redirect || request.wait || (request.urgent && !is_root) {
        Ask::MustServe
    } else {
        Ask::Redirectable
    };
    let decision =
        task.lock()
            .fanout
            .decide(request.piece, requester, ask, is_root, Instant::now());
    if let Decision::Redirect(to) = decision {
        metrics::counter!("dffs_upload_redirects_total").increment(1);
        return Err(refuse(ReplyStatus::Redirect, to.to_string()));
    }
    Ok(())
}
