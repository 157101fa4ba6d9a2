//! Shared definitions of dffs: the protobuf services between the parts, and
//! the small pieces of logic more than one part needs.
//!
//! - [`proto`]: generated gRPC clients and servers.
//! - [`task`]: how a URL (plus tag and application) names a task.
//! - [`piece`]: piece sizes, piece arithmetic and piece bitmaps.
//! - [`digest`]: piece digests and whole-file digest checks.
//! - [`config`]: `--config FILE` support for every daemon.
//! - [`uds`]: a gRPC channel over a Unix socket.
//! - [`telemetry`]: logging and the Prometheus `/metrics` endpoint.
//! - [`buffers`]: reusable byte buffers for the data path.

pub mod buffers;
pub mod cli;
pub mod config;
pub mod digest;
pub mod piece;
pub mod task;
pub mod telemetry;
pub mod uds;

/// Generated protobuf messages and gRPC services (`proto/dffs.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("dffs.v1");
}
