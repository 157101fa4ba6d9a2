//! A peerd stopped in the middle of a download resumes without fetching
//! again the pieces it had, and produces the same bytes.

use std::time::Duration;
use tests::{Cluster, Origin, sha256_file, wait_until, write_random_file};

const SIZE: u64 = 32 << 20;
const MIB: u64 = 1 << 20;

/// How the daemon goes down in the middle of the download.
enum Stop {
    /// SIGKILL, like a crash: only pieces already committed survive.
    Crash,
    /// SIGTERM: peerd commits everything before it exits.
    Graceful,
}

/// Starts a download, stops peerd a third of the way in, restarts it and
/// downloads again; returns the bytes the origin served twice.
fn refetched_after(stop: Stop, peer_args: &[&str]) -> u64 {
    // No seed, so this peerd is the task's root and every piece it holds
    // came from the origin: origin bytes count its fetches exactly.
    let mut cluster = Cluster::start_with(false, 1, peer_args);
    let root = cluster.dir.path().join("origin");
    std::fs::create_dir_all(&root).unwrap();
    let expected = write_random_file(&root.join("slow.bin"), SIZE as usize);
    // 8 MiB/s per response, 4 responses at a time: about a second per third.
    let origin = Origin::start(&root, &["--rate", &(2 * MIB).to_string()]);
    let url = origin.url("slow.bin");
    let peer = &mut cluster.peers[0];
    let out = peer.dir.join("slow.out");

    let first = std::process::Command::new(tests::bin("dfget"))
        .args([url.as_str(), "-O"])
        .arg(&out)
        .arg("--socket")
        .arg(&peer.socket)
        .arg("--quiet")
        .spawn()
        .unwrap();
    wait_until("a third of the file", Duration::from_secs(60), || {
        origin.bytes_served() >= SIZE / 3
    });
    match stop {
        Stop::Crash => {
            // Let the journal commit what completed, then crash.
            std::thread::sleep(Duration::from_millis(200));
            peer.daemon.kill();
        }
        Stop::Graceful => peer.daemon.terminate(),
    }
    let before_stop = origin.bytes_served();
    let first = first.wait_with_output().unwrap();
    assert!(
        !first.status.success(),
        "dfget should fail when peerd stops"
    );
    assert!(!out.exists(), "a failed dfget must leave no output");
    assert!(
        before_stop < SIZE,
        "the stop came too late to test anything"
    );

    peer.restart();
    let second = peer.dfget(&url, &out, &[]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(sha256_file(&out), expected);
    origin.bytes_served() - SIZE
}

#[test]
fn a_killed_peerd_resumes_where_its_last_commit_left_off() {
    // A short commit interval, so that what completed before the crash was
    // committed; the default (seconds) would leave this test nothing.
    let refetched = refetched_after(Stop::Crash, &["--commit-interval-ms", "50"]);
    // Pieces in flight when it died (4 ranged GETs) may be fetched again;
    // nothing that was committed may be.
    assert!(refetched <= 5 * MIB, "{refetched} bytes fetched twice");
}

#[test]
fn a_stopped_peerd_commits_everything_and_resumes_where_it_stopped() {
    // A commit interval far longer than the test: only the commit at
    // shutdown can save the pieces.
    let refetched = refetched_after(Stop::Graceful, &["--commit-interval-ms", "600000"]);
    assert!(refetched <= 5 * MIB, "{refetched} bytes fetched twice");
}
