//! Five peers download the same file at once through a seed; the origin
//! serves it about once, and a repeat download costs the origin nothing.

use std::time::Duration;
use tests::{Cluster, Origin, sha256_file};

const SIZE: usize = 64 << 20;

/// Serves `size` random bytes as `name` (origin `flags`), has every peer
/// of `cluster` download it and checks each copy; returns the origin.
fn fetched_by_every_peer(cluster: &Cluster, name: &str, size: usize, flags: &[&str]) -> Origin {
    let (origin, expected) = cluster.serve_file(name, size, flags);
    let url = origin.url(name);
    for peer in &cluster.peers {
        peer.dfget_verified(&url, &format!("{name}.out"), &expected);
    }
    origin
}

#[test]
fn five_peers_share_one_origin_copy() {
    let cluster = Cluster::start(true, 5);
    let (origin, expected) = cluster.serve_file("big.bin", SIZE, &[]);
    let url = origin.url("big.bin");

    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cluster
            .peers
            .iter()
            .map(|peer| {
                let url = url.clone();
                s.spawn(move || {
                    let out = peer.dir.join("big.out");
                    let result = peer.dfget(&url, &out, &[]);
                    (out, result)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (out, result) in &outputs {
        assert!(
            result.status.success(),
            "dfget failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert_eq!(
            sha256_file(out),
            expected,
            "{} differs from the origin",
            out.display()
        );
    }
    let served = origin.bytes_served();
    assert!(
        served as f64 <= 1.05 * SIZE as f64,
        "origin served {served} bytes for a {SIZE}-byte file: {:.2} copies",
        served as f64 / SIZE as f64
    );
    let from_peers: f64 = cluster
        .peers
        .iter()
        .map(|p| p.metric("dffs_download_bytes_total", "source=\"peer\""))
        .sum();
    assert!(
        from_peers >= 4.0 * SIZE as f64,
        "peers fetched only {from_peers} bytes from other peers"
    );

    // Everyone has it now: a second download is local, so the origin sees
    // no new request at all (not even a HEAD).
    let requests = origin.requests();
    for peer in &cluster.peers {
        peer.dfget_verified(&url, "again.out", &expected);
    }
    assert_eq!(
        origin.bytes_served(),
        served,
        "repeat downloads reached the origin"
    );
    assert_eq!(
        origin.requests(),
        requests,
        "repeat downloads sent requests to the origin"
    );
    let local = cluster.peers[0].metric("dffs_download_bytes_total", "source=\"local\"");
    assert_eq!(
        local, SIZE as f64,
        "a repeat download is served from the local cache"
    );
}

#[test]
fn peers_without_a_seed_still_share() {
    let cluster = Cluster::start(false, 3);
    let size = 8 << 20;
    let origin = fetched_by_every_peer(&cluster, "f.bin", size, &[]);
    assert_eq!(
        origin.bytes_served(),
        size as u64,
        "only the first peer went to the origin"
    );
}

#[test]
fn an_origin_that_ignores_range_still_yields_the_right_bytes() {
    let cluster = Cluster::start(true, 2);
    let size = (5 << 20) + 12345;
    let origin = fetched_by_every_peer(&cluster, "norange.bin", size, &["--ignore-range"]);
    let served = origin.bytes_served();
    assert!(
        served <= 2 * size as u64,
        "origin streamed the object {served} bytes, more than twice"
    );
}

#[test]
fn an_origin_that_claims_ranges_but_ignores_them_still_yields_the_right_bytes() {
    let cluster = Cluster::start(true, 2);
    // Long enough for the root to start more than one run at once.
    let size = (20 << 20) + 12345;
    let flags = ["--ignore-range", "--claim-ranges"];
    let origin = fetched_by_every_peer(&cluster, "liar.bin", size, &flags);
    // The root's first runs each get the whole object back: one streams
    // it, the others drop theirs after what was in flight.
    let served = origin.bytes_served();
    assert!(
        served as f64 <= 1.5 * size as f64,
        "origin served {served} bytes for a {size}-byte object"
    );
}

#[test]
fn a_root_fetches_a_whole_task_in_a_few_long_origin_requests() {
    let cluster = Cluster::start(true, 1);
    let size = 32 << 20;
    let origin = fetched_by_every_peer(&cluster, "runs.bin", size, &[]);
    // 128 pieces of 256 KiB: one request each would be 128 or more. The
    // HEAD says the origin serves ranges, so four runs of 8 MiB and the
    // HEAD would do; a child's ask that beats the runs to a piece splits
    // one.
    let requests = origin.requests();
    assert!(
        requests <= 8,
        "the seed sent {requests} requests to the origin for 128 pieces"
    );
    assert_eq!(origin.bytes_served(), size as u64);
}

#[test]
fn an_origin_that_breaks_off_long_responses_still_yields_the_right_bytes() {
    let cluster = Cluster::start(true, 2);
    let size = (32 << 20) + 4321;
    let cut_after = (3 << 20).to_string();
    let origin = fetched_by_every_peer(&cluster, "cut.bin", size, &["--cut-after", &cut_after]);
    let served = origin.bytes_served();
    assert!(
        served as f64 <= 1.3 * size as f64,
        "origin served {served} bytes for a {size}-byte file"
    );
    // Uncut, a few long requests would do; 3 MiB at a time needs more.
    let requests = origin.requests();
    assert!(
        requests > 10,
        "only {requests} requests: the origin never broke a response off"
    );
}

#[test]
fn writing_to_a_downloaded_file_does_not_corrupt_the_cache() {
    let cluster = Cluster::start(true, 1);
    let (origin, expected) = cluster.serve_file("w.bin", 3 << 20, &[]);
    let url = origin.url("w.bin");
    let peer = &cluster.peers[0];
    let out = peer.dir.join("w.out");
    assert!(peer.dfget(&url, &out, &[]).status.success());
    // The output may share its bytes with peerd's cache (a hard link); the
    // user edits it in place.
    std::thread::sleep(Duration::from_millis(20));
    let mut file = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    std::io::Write::write_all(&mut file, b"edited by the user").unwrap();
    drop(file);
    // The cache must not serve the user's edit.
    peer.dfget_verified(&url, "w.again", &expected);
    let edited = std::fs::read(&out).unwrap();
    assert!(
        edited.starts_with(b"edited by the user"),
        "the user's file keeps the edit"
    );
}

#[test]
fn a_dead_parent_still_listed_does_not_stall_a_download() {
    // The scheduler keeps silent hosts for a minute here, so it keeps
    // offering the dead parent; the child must route around it at once.
    let mut cluster = Cluster::start_full(false, 2, &[], &["--host-timeout-seconds", "60"]);
    let (origin, expected) = cluster.serve_file("d.bin", 16 << 20, &[]);
    let url = origin.url("d.bin");
    cluster.peers[0].dfget_verified(&url, "d.out", &expected);
    cluster.peers[1].dfget_verified(&url, "d.out", &expected);
    // The plain holder dies without leaving the cluster.
    cluster.peers[1].daemon.kill();
    let child = cluster.spawn_peer("peerd", "late", &[]);
    let started = std::time::Instant::now();
    child.dfget_verified(&url, "d.out", &expected);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the download waited {took:?} on a dead parent"
    );
}
