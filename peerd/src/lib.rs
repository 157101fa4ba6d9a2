//! peerd: the daemon on every host of a dffs cluster.
//!
//! - [`storage`]: the on-disk piece cache.
//! - [`engine`]: tasks and pieces: the one download engine every caller uses.
//! - [`link`]: the scheduler client: which scheduler a task belongs to,
//!   failover, batched reports.
//! - [`origin`]: back-to-source HTTP.
//! - [`upload`]: the peer-to-peer data plane.
//! - [`local_api`]: the gRPC service dfget and dffs use.
//! - [`daemon`]: wiring it all together and the order of shutdown;
//!   [`background`]: its loops; [`seed`]: seed mode.

pub mod background;
pub mod config;
pub mod daemon;
pub mod dfget;
pub mod engine;
pub mod link;
pub mod local_api;
pub mod origin;
pub mod ratelimit;
pub mod seed;
pub mod storage;
pub mod upload;
