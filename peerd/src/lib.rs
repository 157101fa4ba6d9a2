//! peerd: the daemon on every host of a dffs cluster.
//!
//! - [`storage`]: the on-disk piece cache.
//! - [`engine`]: tasks and pieces: the one download engine every caller uses.
//! - [`origin`]: back-to-source HTTP.
//! - [`upload`]: the peer-to-peer data plane.
//! - [`local_api`]: the gRPC service dfget and dffs use.
//! - [`daemon`]: wiring it all together; [`seed`]: seed mode.

pub mod config;
pub mod daemon;
pub mod dfget;
pub mod engine;
pub mod local_api;
pub mod origin;
pub mod ratelimit;
pub mod seed;
pub mod storage;
pub mod upload;
