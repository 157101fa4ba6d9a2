//! What every driver of the engine works with: the cache, the scheduler
//! link, the data-plane client, the origin, the host-wide slots and limits,
//! and the settings. Built once by `Engine::new`; its fields are visible
//! to the engine's modules only.

use super::slots::Slots;
use crate::link::SchedulerLink;
use crate::origin::Origin;
use crate::ratelimit::HostLimits;
use crate::storage::{Journal, Store};
use crate::upload::client::PieceClient;
use api::buffers::BufferPool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Piece requests in flight to one parent at a time.
    pub requests_per_parent: u32,
    /// Ranged GETs in flight to the origin per task.
    pub origin_requests_per_task: usize,
    /// Pieces a whole-task download keeps in flight.
    pub bulk_window: usize,
    /// This host's upload port, sent with piece requests so a root can
    /// point later requesters here (see `fanout`).
    pub upload_port: u16,
    /// Longest a downloaded piece waits to be synced and logged.
    pub commit_interval: Duration,
    /// Piece downloads in flight at once on this host.
    pub download_slots: usize,
    /// Seed mode: root new tasks, and answer children about tasks not
    /// opened here yet.
    pub seed: bool,
}

pub(super) struct Context {
    pub(super) store: Store,
    pub(super) journal: Journal,
    pub(super) link: Arc<SchedulerLink>,
    pub(super) pieces: PieceClient,
    pub(super) origin: Origin,
    /// Host-wide download slots, by priority.
    pub(super) slots: Arc<Slots>,
    pub(super) buffers: BufferPool,
    pub(super) limits: HostLimits,
    pub(super) settings: EngineSettings,
}
