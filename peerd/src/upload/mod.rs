//! The data plane between peers: a TCP server that sends pieces with
//! sendfile(2), and a pooled client that fetches them.

pub mod client;
pub mod protocol;
pub mod server;
