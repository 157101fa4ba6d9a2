//! Shared definitions of dffs: the protobuf services between the parts, and
//! the small pieces of logic more than one part needs.
//!
//! - [`proto`]: generated gRPC clients and servers.
//! - [`task`]: how a URL (plus tag and application) names a task.
//! - [`piece`]: piece sizes, piece arithmetic and piece bitmaps.
//! - [`digest`]: piece digests and whole-file digest checks.
//! - [`error`]: the structured error every service attaches to a status.
//! - [`identity`]: host secrets, and proving a call comes from its host.
//! - [`config`]: `--config FILE` support for every daemon.
//! - [`local`]: the client of peerd's local API (dfget, dffs).
//! - [`transport`]: where every connection is made and accepted.
//! - [`telemetry`]: logging and the Prometheus `/metrics` endpoint.
//! - [`buffers`]: reusable byte buffers for the data path.

pub mod buffers;
pub mod cli;
pub mod config;
pub mod digest;
pub mod error;
pub mod identity;
pub mod local;
pub mod piece;
pub mod task;
pub mod telemetry;
pub mod transport;

/// Generated protobuf messages and gRPC services (`proto/*.proto`, all in
/// package `dffs.v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("dffs.v1");
}

#[cfg(test)]
mod fuzz_tests;
