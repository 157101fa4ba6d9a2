//! The schedulers this host uses, keyed by canonical address.
//!
//! Each task belongs to one scheduler by rendezvous hashing of its id with
//! each scheduler's address, so every host asks the same scheduler about
//! the same task. The hash uses the resolved `ip:port`, never the name as
//! configured: two hosts given `sched:8002` and `10.0.0.1:8002` must agree
//! on a task's home. The set can change at run time (a name that resolves
//! to other addresses, a manager that adds or removes schedulers); a task
//! whose home changed must then be reported to its new home.

use api::task::TaskId;
use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, thiserror::Error)]
#[error("invalid scheduler address '{addr}': {reason}; use HOST:PORT")]
pub struct BadSchedulerAddr {
    pub addr: String,
    pub reason: String,
}

/// A scheduler address as configured: a name or IP with a port, with an
/// optional `http://` in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerName(String);

impl SchedulerName {
    pub fn parse(text: &str) -> Result<SchedulerName, BadSchedulerAddr> {
        let bad = |reason: &str| BadSchedulerAddr {
            addr: text.to_string(),
            reason: reason.to_string(),
        };
        let bare = text.trim();
        let bare = bare.strip_prefix("http://").unwrap_or(bare);
        if bare.contains("://") {
            return Err(bad(
                "only plain HOST:PORT (or http://HOST:PORT) is supported",
            ));
        }
        let bare = bare.trim_end_matches('/');
        let (host, port) = bare
            .rsplit_once(':')
            .ok_or_else(|| bad("the port is missing"))?;
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        Ok(SchedulerName(bare.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Every address the name stands for now (blocking: a DNS lookup).
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, BadSchedulerAddr> {
        let addrs: Vec<SocketAddr> = self
            .0
            .to_socket_addrs()
            .map_err(|e| BadSchedulerAddr {
                addr: self.0.clone(),
                reason: format!("cannot resolve it: {e}"),
            })?
            .collect();
        Ok(addrs)
    }

    /// Like `resolve`, off the runtime's threads.
    pub async fn resolve_async(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host(self.0.as_str()).await?.collect())
    }
}

/// The canonical set: sorted, without duplicates.
pub fn canonical(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    addrs
}

/// `addrs` in the order `task` uses them: its home first, then the next
/// to fail over to.
pub fn order(task: &TaskId, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut list = addrs.to_vec();
    list.sort_by_cached_key(|addr| std::cmp::Reverse(weight(task, addr)));
    list
}

/// The scheduler `task` belongs to, among `addrs`.
pub fn home(task: &TaskId, addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs.iter().copied().max_by_key(|addr| weight(task, addr))
}

fn weight(task: &TaskId, addr: &SocketAddr) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(task.as_bytes());
    h.update(addr.to_string().as_bytes());
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> TaskId {
        TaskId::from_source(&format!("http://h/{n}"), "", "").unwrap()
    }

    fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
        ports
            .iter()
            .map(|p| SocketAddr::from(([10, 0, 0, 1], *p)))
            .collect()
    }

    #[test]
    fn names_are_checked_and_resolved_to_the_same_key_as_their_ip() {
        let named = SchedulerName::parse("localhost:8002").unwrap();
        let ip = SchedulerName::parse("http://127.0.0.1:8002/").unwrap();
        let resolved = named.resolve().unwrap();
        assert!(resolved.contains(&"127.0.0.1:8002".parse().unwrap()));
        assert_eq!(ip.resolve().unwrap(), ["127.0.0.1:8002".parse().unwrap()]);
        for bad in ["nohost", ":8002", "h:0", "h:x", "grpc://h:1"] {
            let err = SchedulerName::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn every_order_of_the_same_set_gives_a_task_the_same_home() {
        let set = addrs(&[1, 2, 3, 4]);
        let mut reversed = set.clone();
        reversed.reverse();
        for n in 0..50 {
            assert_eq!(home(&id(n), &set), home(&id(n), &reversed));
            assert_eq!(order(&id(n), &set)[0], home(&id(n), &set).unwrap());
        }
        assert_eq!(canonical(reversed), set);
    }

    #[test]
    fn removing_a_scheduler_moves_only_its_own_tasks() {
        let before = addrs(&[1, 2, 3, 4]);
        let gone = before[2];
        let after: Vec<SocketAddr> = before.iter().copied().filter(|a| *a != gone).collect();
        let mut moved = 0;
        for n in 0..400 {
            let (old, new) = (home(&id(n), &before), home(&id(n), &after));
            if old != new {
                assert_eq!(
                    old,
                    Some(gone),
                    "task {n} moved from a scheduler that stayed"
                );
                moved += 1;
            }
        }
        // About a quarter of the tasks lived on the one that went.
        assert!((50..150).contains(&moved), "{moved} of 400 moved");
    }
}
