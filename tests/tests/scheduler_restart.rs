//! A scheduler that restarts (here: killed and started again, knowing
//! nothing) loses nothing: the hosts report what they hold again, the
//! seed's digests come back with it, and a new host downloads a task the
//! cluster holds without the origin serving it again.

use std::time::Duration;
use tests::Cluster;

const SIZE: usize = 8 << 20;

#[test]
fn after_a_scheduler_restart_a_new_host_gets_a_held_task_from_the_cluster() {
    let mut cluster = Cluster::start(true, 2);
    let (origin, digest) = cluster.serve_file("held.bin", SIZE, &[]);
    let url = origin.url("held.bin");
    cluster.peers[0].dfget_verified(&url, "first.bin", &digest);
    let served_once = origin.bytes_served();
    assert!(served_once >= SIZE as u64);

    cluster.restart_scheduler();
    // Hosts announce every second in tests and re-report what they hold
    // when the scheduler does not know them.
    std::thread::sleep(Duration::from_secs(3));

    cluster.peers[1].dfget_verified(&url, "second.bin", &digest);
    let again = origin.bytes_served() - served_once;
    assert!(
        again <= (SIZE as u64) / 8,
        "the origin served {again} more bytes after the restart ({SIZE}-byte file)"
    );
}
