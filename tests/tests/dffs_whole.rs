//! A reader that reads a task in order from its start (`cp`, `sha256sum`)
//! has the whole task fetched in the background, as dfget would; a reader
//! that starts elsewhere keeps only its bounded read-ahead.

use std::os::unix::fs::FileExt;
use std::time::Duration;
use tests::fuse::DffsMount;
use tests::{Cluster, sha256_file, wait_until};

const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;
const READ: usize = 12 * MIB;

/// Reads `READ` bytes from `start` in 1 MiB blocks and checks them.
fn read_in_order(mnt: &DffsMount, id: &str, original: &[u8], start: usize) {
    let file = std::fs::File::open(mnt.path(id)).unwrap();
    let mut block = vec![0u8; MIB];
    for at in (start..start + READ).step_by(MIB) {
        file.read_exact_at(&mut block, at as u64).unwrap();
        assert!(block == original[at..at + MIB], "wrong bytes at {at}");
    }
}

fn downloaded(cluster: &Cluster) -> f64 {
    cluster.peers[0].metric("dffs_download_bytes_total", "source=")
}

#[test]
fn a_reader_that_reads_from_the_start_gets_the_whole_task_fetched() {
    let cluster = Cluster::start(true, 1);
    let (origin, digest) = cluster.serve_file("a.bin", SIZE, &[]);
    let original = std::fs::read(cluster.origin_root().join("a.bin")).unwrap();
    let mnt = DffsMount::start(
        &cluster.peers[0],
        &cluster.dir.path().join("mnt"),
        &["--readahead-mib", "2", "--whole-after-mib", "8"],
    );
    let id = cluster.peers[0].dffs_add(&origin.url("a.bin"));

    read_in_order(&mnt, &id, &original, 0);
    // The reader stopped at 12 MiB with a 2 MiB window, yet the host gets
    // all 64 MiB.
    wait_until(
        "the whole task on the host",
        Duration::from_secs(30),
        || downloaded(&cluster) >= SIZE as f64,
    );
    let served = origin.bytes_served() as f64;
    assert!(
        served <= 1.05 * SIZE as f64,
        "origin served {served} bytes for {SIZE}"
    );
    // The rest is now read from the host's cache, and right.
    let copy = cluster.dir.path().join("copy");
    std::fs::copy(mnt.path(&id), &copy).unwrap();
    assert_eq!(sha256_file(&copy), digest);
    assert_eq!(downloaded(&cluster), SIZE as f64, "bytes fetched twice");
}

#[test]
fn a_reader_that_starts_mid_file_keeps_a_bounded_read_ahead() {
    let cluster = Cluster::start(true, 1);
    let (origin, _) = cluster.serve_file("b.bin", SIZE, &[]);
    let original = std::fs::read(cluster.origin_root().join("b.bin")).unwrap();
    let mnt = DffsMount::start(
        &cluster.peers[0],
        &cluster.dir.path().join("mnt"),
        &["--readahead-mib", "2", "--whole-after-mib", "8"],
    );
    let id = cluster.peers[0].dffs_add(&origin.url("b.bin"));

    read_in_order(&mnt, &id, &original, 32 * MIB);
    // Time for a whole download to show, had one started.
    std::thread::sleep(Duration::from_secs(2));
    let moved = downloaded(&cluster);
    // What was read, the 2 MiB window past it, and a piece at each edge.
    let bound = (READ + 2 * MIB + 2 * MIB) as f64;
    assert!(
        moved <= bound,
        "a mid-file reader moved {moved} bytes (bound {bound})"
    );
}
