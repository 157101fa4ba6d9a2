//! The task and piece engine: the one place where tasks are opened, pieces
//! fetched, verified and stored. dfget, dffs, the seed and preheat all call
//! it; none has a download path of its own.
//!
//! # Layers
//!
//! The modules below are listed in layer order. Each may use only modules
//! listed before it, so their imports form a DAG; `layering_tests` checks
//! this against the source and fails on a cycle or an upward import.
//!
//! State, with no I/O of its own:
//! - `error`: `EngineError`, and how it crosses to callers and back.
//! - `labels`: metrics labels, one spelling for each.
//! - `slots`: counted slots handed out by priority (host downloads, a
//!   task's origin requests).
//! - `fanout`: where a host sends the askers for a piece it is spreading.
//! - `publisher`: a root's digests waiting for the scheduler's answer.
//! - `task`: one task's pieces, claims, parents, digests and waiters.
//! - `registry`: the tasks held, by id, and the lock for opening one.
//!
//! Policies, pure functions of that state:
//! - `choose`: the source for one piece (a parent, the root, the origin).
//! - `runs`: how long an origin run is, and how many a root keeps going.
//! - `plan`: which pieces a many-piece download asks which parent for.
//!
//! Drivers, which do the I/O:
//! - `context`: the services drivers use (cache, link, origin, slots).
//! - `origin_body`: an origin response's body, counted and rate-limited.
//! - `cutter`: an origin body cut into pieces as it arrives.
//! - `landing`: a verified piece stored, made present, and reported.
//! - `refresh`: the task's parents and digests, fresh from the scheduler.
//! - `peer_fetch`: one piece from a parent, verified.
//! - `origin_fetch`: one piece from the origin.
//! - `fetcher`: one piece's fetch from claim to result, with retries.
//! - `origin_run`: many consecutive pieces with one origin request.
//! - `bulk`: many pieces at once, kept in flight as `plan` says.
//!
//! The handle and what extends it:
//! - `handle`: `Engine`, the registry and the entry points that drive pieces.
//! - `join`: opening a task, at the scheduler or the origin.
//! - `seed_command`: what a seed does when its scheduler sends it a task.
//! - `serve`: the engine as the upload server's source of pieces.
//! - `gc`: keeping the cache within its quota.

mod bulk;
mod choose;
mod context;
mod cutter;
mod error;
mod fanout;
mod fetcher;
pub mod gc;
mod handle;
mod join;
pub mod labels;
mod landing;
mod origin_body;
mod origin_fetch;
mod origin_run;
mod peer_fetch;
mod plan;
mod publisher;
mod refresh;
mod registry;
mod runs;
mod seed_command;
mod serve;
pub mod slots;
pub mod task;

#[cfg(test)]
mod layering_tests;

pub use context::EngineSettings;
pub use error::EngineError;
pub use handle::{Engine, EngineParts};
pub use plan::Order;
pub use task::Task;
