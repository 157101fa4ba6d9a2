//! dffs: the lazy P2P filesystem, as a library, so that other parts (the
//! containerd snapshotter, tests) can embed the filesystem, its inode
//! table and its read-ahead.
//!
//! Layout, from the bottom up:
//! - [`nodes`]: the inode table: one node per task, with what is known to
//!   be present and where peerd keeps its bytes.
//! - [`readahead`]: per-handle read-ahead windows and when a reader earns
//!   the whole task.
//! - [`fs`]: the FUSE filesystem itself, answering the kernel from the
//!   inode table and asking peerd (through [`api::local::LocalClient`])
//!   for anything it lacks, never on a FUSE thread.
//! - [`options`]: mount options, flags and the config file, one definition.
//! - [`mount`]: daemonising and the FUSE session.
//!
//! The `dffs` binary (`src/main.rs`) is only the command line on top.

pub mod fs;
pub mod mount;
pub mod nodes;
pub mod options;
pub mod readahead;
