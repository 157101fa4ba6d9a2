//! A reader that reads a task in order from its start (`cp`, `sha256sum`)
//! has the whole task fetched in the background, as dfget would; a reader
//! that starts elsewhere keeps only its bounded read-ahead, and the seed
//! runs a bounded stretch ahead of it.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::time::Duration;
use tests::fuse::DffsMount;
use tests::{Cluster, Origin, sha256_file, wait_until};

const MIB: usize = 1 << 20;
const SIZE: usize = 64 * MIB;
const READ: usize = 12 * MIB;

/// Reads `READ` bytes from `start` in 1 MiB blocks, `pause` apart, and
/// checks them.
fn read_in_order(mnt: &DffsMount, id: &str, original: &[u8], start: usize, pause: Duration) {
    let file = std::fs::File::open(mnt.path(id)).unwrap();
    read_blocks(&file, original, start..start + READ, pause);
}

/// Reads `range` of `file` in 1 MiB blocks, `pause` apart, and checks them
/// against `original`.
fn read_blocks(file: &File, original: &[u8], range: Range<usize>, pause: Duration) {
    let mut block = vec![0u8; MIB];
    for at in range.step_by(MIB) {
        file.read_exact_at(&mut block, at as u64).unwrap();
        assert!(block == original[at..at + MIB], "wrong bytes at {at}");
        std::thread::sleep(pause);
    }
}

/// A seed, one peer with dffs mounted (2 MiB read-ahead, whole task after
/// 8 MiB), and a 64 MiB file registered with `dffs add`.
fn setup() -> Setup {
    setup_with(&["--readahead-mib", "2", "--whole-after-mib", "8"])
}

struct Setup {
    // Dropped last: the mount goes before the cluster it reads from.
    mnt: DffsMount,
    cluster: Cluster,
    origin: Origin,
    digest: String,
    original: Vec<u8>,
    id: String,
}

/// As `setup`, with the mount's flags given.
fn setup_with(mount_flags: &[&str]) -> Setup {
    let cluster = Cluster::start(true, 1);
    let (origin, digest) = cluster.serve_file("f.bin", SIZE, &[]);
    let original = std::fs::read(cluster.origin_root().join("f.bin")).unwrap();
    let mnt = DffsMount::start(
        &cluster.peers[0],
        &cluster.dir.path().join("mnt"),
        mount_flags,
    );
    let id = cluster.peers[0].dffs_add(&origin.url("f.bin"));
    Setup {
        mnt,
        cluster,
        origin,
        digest,
        original,
        id,
    }
}

fn downloaded(cluster: &Cluster) -> f64 {
    cluster.peers[0].metric("dffs_download_bytes_total", "source=")
}

/// Waits for the host to hold the whole task, which the origin must have
/// served about once.
fn wait_for_whole_task(cluster: &Cluster, origin: &Origin) {
    wait_until(
        "the whole task on the host",
        Duration::from_secs(30),
        || downloaded(cluster) >= SIZE as f64,
    );
    let served = origin.bytes_served() as f64;
    assert!(
        served <= 1.05 * SIZE as f64,
        "origin served {served} bytes for {SIZE}"
    );
}

#[test]
fn a_reader_that_reads_from_the_start_gets_the_whole_task_fetched() {
    let Setup {
        cluster,
        origin,
        digest,
        original,
        mnt,
        id,
    } = setup();

    read_in_order(&mnt, &id, &original, 0, Duration::ZERO);
    // The reader stopped at 12 MiB with a 2 MiB window, yet the host gets
    // all 64 MiB.
    wait_for_whole_task(&cluster, &origin);
    // The rest is now read from the host's cache, and right.
    let copy = cluster.dir.path().join("copy");
    std::fs::copy(mnt.path(&id), &copy).unwrap();
    assert_eq!(sha256_file(&copy), digest);
    assert_eq!(downloaded(&cluster), SIZE as f64, "bytes fetched twice");
}

#[test]
fn a_reader_that_starts_mid_file_keeps_a_bounded_read_ahead() {
    let Setup {
        cluster,
        origin,
        original,
        mnt,
        id,
        ..
    } = setup();

    // A slow reader: each of the seed's origin runs lands before the child
    // asks for its pieces, so the seed must keep running ahead on asks for
    // pieces it already holds.
    read_in_order(&mnt, &id, &original, 32 * MIB, Duration::from_millis(100));
    // Time for a whole download to show, had one started.
    std::thread::sleep(Duration::from_secs(2));
    let moved = downloaded(&cluster);
    // What was read, the 2 MiB window past it, and a piece at each edge.
    let bound = (READ + 2 * MIB + 2 * MIB) as f64;
    assert!(
        moved <= bound,
        "a mid-file reader moved {moved} bytes (bound {bound})"
    );
    // The seed, which fetches for its children, runs up to one origin run
    // (8 MiB) past the pieces an in-order child asks for, so the child's
    // next windows are there when asked for; no further. It tops up in
    // steps of at least a quarter run, so after the child's last ask it
    // holds at least three quarters of a run past it.
    let asked = (READ + 2 * MIB) as f64;
    let run = (8 * MIB) as f64;
    let served = origin.bytes_served() as f64;
    assert!(
        served >= asked + 0.75 * run,
        "the seed did not run ahead of an in-order reader: the origin served {served} bytes for {asked} asked"
    );
    let piece = (256 << 10) as f64;
    assert!(
        served <= asked + run + 2.0 * piece,
        "the seed ran too far ahead: the origin served {served} bytes for {asked} asked"
    );
}

#[test]
fn by_default_a_short_read_from_the_start_stays_lazy_and_a_longer_one_does_not() {
    // The automatic threshold of a 64 MiB task is its floor, 2 MiB. The
    // setup is kept whole: its origin must outlive the reads.
    let setup = setup_with(&["--readahead-mib", "2"]);
    let file = File::open(setup.mnt.path(&setup.id)).unwrap();
    read_blocks(&file, &setup.original, 0..MIB, Duration::ZERO);
    // Time for a whole download to show, had one started.
    std::thread::sleep(Duration::from_secs(2));
    let moved = downloaded(&setup.cluster);
    // The MiB read and the 2 MiB window past it.
    let bound = (3 * MIB) as f64;
    assert!(
        moved <= bound,
        "one 1 MiB read from the start moved {moved} bytes (bound {bound})"
    );
    // On to 3 MiB read in order from the start, on the same handle.
    read_blocks(&file, &setup.original, MIB..3 * MIB, Duration::ZERO);
    wait_for_whole_task(&setup.cluster, &setup.origin);
}
