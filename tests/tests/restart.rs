//! A peerd killed in the middle of a download resumes without fetching
//! again the pieces it had, and produces the same bytes.

use std::time::Duration;
use tests::{Cluster, Origin, sha256_file, wait_until, write_random_file};

const SIZE: u64 = 32 << 20;
const MIB: u64 = 1 << 20;

#[test]
fn a_killed_peerd_resumes_where_it_stopped() {
    // No seed, so this peerd is the task's root and every piece it holds
    // came from the origin: origin bytes count its fetches exactly.
    let mut cluster = Cluster::start(false, 1);
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
    // Let the journal commit what completed, then crash.
    std::thread::sleep(Duration::from_millis(200));
    peer.daemon.kill();
    let before_kill = origin.bytes_served();
    let first = first.wait_with_output().unwrap();
    assert!(!first.status.success(), "dfget should fail when peerd dies");
    assert!(!out.exists(), "a failed dfget must leave no output");

    peer.restart();
    let second = peer.dfget(&url, &out, &[]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(sha256_file(&out), expected);
    let total = origin.bytes_served();
    // Pieces in flight when it died (4 ranged GETs) may be fetched again;
    // nothing that was complete may be.
    let refetched = total - SIZE;
    assert!(
        refetched <= 5 * MIB,
        "{refetched} bytes fetched twice (had {before_kill} before the kill)"
    );
    assert!(
        before_kill < SIZE,
        "the kill came too late to test anything"
    );
}
