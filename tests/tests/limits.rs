//! Host-wide rate limits hold: a download cannot beat the configured rate.
//! (Only a lower bound on time is asserted; a slow machine cannot fail it.)

use std::time::Instant;
use tests::{Cluster, Origin, sha256_file, write_random_file};

#[test]
fn the_download_rate_limit_caps_a_download() {
    let cluster = Cluster::start_with(false, 1, &["--download-rate-limit", "4M"]);
    let size = 10 << 20;
    let (origin, expected) = cluster.serve_file("l.bin", size, &[]);
    let peer = &cluster.peers[0];
    let started = Instant::now();
    peer.dfget_verified(&origin.url("l.bin"), "l.out", &expected);
    let took = started.elapsed().as_secs_f64();
    // 10 MiB at 4 MiB/s, less the bucket's initial tenth of a second.
    assert!(took >= 2.0, "10 MiB at 4 MiB/s took only {took:.2}s");
}

#[test]
fn the_upload_rate_limit_caps_what_a_parent_serves() {
    let mut cluster = Cluster::start(false, 0);
    let size = 10 << 20;
    let (origin, expected) = cluster.serve_file("u.bin", size, &[]);
    let parent = cluster.spawn_peer("peerd", "parent", &["--upload-rate-limit", "4M"]);
    assert!(
        parent
            .dfget(&origin.url("u.bin"), &parent.dir.join("u.out"), &[])
            .status
            .success()
    );
    cluster.peers.push(parent);
    let child = cluster.spawn_peer("peerd", "child", &[]);
    let started = Instant::now();
    child.dfget_verified(&origin.url("u.bin"), "u.out", &expected);
    let took = started.elapsed().as_secs_f64();
    assert_eq!(
        origin.bytes_served(),
        size as u64,
        "the child got it from the parent"
    );
    assert!(
        took >= 2.0,
        "10 MiB from a parent limited to 4 MiB/s took only {took:.2}s"
    );
}

#[test]
fn the_cache_quota_deletes_the_least_recently_used_task() {
    let quota = [
        "--cache-max-bytes",
        "9M",
        "--gc-interval-seconds",
        "1",
        "--gc-keep-recent-seconds",
        "0",
        // Only the byte quota, whatever the test machine's disk holds.
        "--disk-high-percent",
        "100",
        "--disk-low-percent",
        "100",
    ];
    let cluster = Cluster::start_with(false, 1, &quota);
    let root = cluster.dir.path().join("origin");
    std::fs::create_dir_all(&root).unwrap();
    for name in ["a", "b", "c"] {
        write_random_file(&root.join(name), 4 << 20);
    }
    let origin = Origin::start(&root, &[]);
    let peer = &cluster.peers[0];
    for name in ["a", "b", "c"] {
        // Outputs elsewhere than the cache's filesystem would be copies;
        // these are hard links, which keep their bytes after eviction.
        let out = peer.dir.join(format!("{name}.out"));
        assert!(peer.dfget(&origin.url(name), &out, &[]).status.success());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tests::wait_until(
        "the collector to run",
        std::time::Duration::from_secs(10),
        || peer.metric("dffs_cache_evictions_total", "reason=\"quota\"") >= 1.0,
    );
    assert!(peer.metric("dffs_cache_bytes", "") <= (9 << 20) as f64);
    // The oldest task went: fetching it again reaches the origin; the
    // newest stayed: fetching it does not.
    let before = origin.bytes_served();
    assert!(
        peer.dfget(&origin.url("c"), &peer.dir.join("c2"), &[])
            .status
            .success()
    );
    assert_eq!(
        origin.bytes_served(),
        before,
        "the newest task is still cached"
    );
    assert!(
        peer.dfget(&origin.url("a"), &peer.dir.join("a2"), &[])
            .status
            .success()
    );
    assert!(
        origin.bytes_served() > before,
        "the oldest task was deleted"
    );
    assert_eq!(
        sha256_file(&peer.dir.join("a2")),
        sha256_file(&root.join("a"))
    );
}
