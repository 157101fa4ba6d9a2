//! The engine as the upload server's source of pieces.

use super::Engine;
use crate::upload::protocol::{PieceRequest, Status};
use crate::upload::server::{PieceLocation, PieceProvider, Refusal};
use api::proto::Priority;

impl PieceProvider for Engine {
    async fn locate(&self, request: PieceRequest) -> Result<PieceLocation, Refusal> {
        let refuse = |status, reason: String| Refusal { status, reason };
        let task = match self.task(&request.task) {
            Some(task) => task,
            // A seed may hear from a child before its own command arrives.
            None if self.inner.seed => self
                .open_id(request.task)
                .await
                .map_err(|e| refuse(Status::NotFound, e.to_string()))?,
            None => {
                return Err(refuse(
                    Status::NotFound,
                    format!("task {} is not held here", request.task),
                ));
            }
        };
        let n = request.piece;
        if n >= task.layout.piece_count() {
            return Err(refuse(
                Status::NotFound,
                format!("task {} has no piece {n}", task.id),
            ));
        }
        if !task.has_piece(n) {
            if !task.lock().is_root {
                return Err(refuse(
                    Status::NotFound,
                    format!("piece {n} is not held here"),
                ));
            }
            // As the root, fetch it from the origin for the child.
            let priority = if request.urgent {
                Priority::Read
            } else {
                Priority::Prefetch
            };
            task.ensure(self, n..n + 1, priority)
                .await
                .map_err(|e| refuse(Status::Failed, e.to_string()))?;
        }
        let range = task.layout.piece_range(n);
        Ok(PieceLocation {
            file: task.file.clone(),
            offset: range.start,
            length: (range.end - range.start) as u32,
        })
    }
}
