//! The lazy filesystem end to end: real FUSE mounts over real peerds, read
//! with ordinary tools (cp, sha256sum, dd, cat).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tests::fuse::{DffsMount, is_mounted};
use tests::{Cluster, Origin, sha256_file, wait_until, write_random_file};

const MIB: u64 = 1 << 20;

fn origin_with(cluster: &Cluster, name: &str, size: u64, extra: &[&str]) -> (Origin, String) {
    cluster.serve_file(name, size as usize, extra)
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn sha256sum(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "sha256sum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn copies_on_two_hosts_match_and_the_origin_serves_once() {
    let cluster = Cluster::start(true, 2);
    let size = 48 * MIB;
    let (origin, digest) = origin_with(&cluster, "data.bin", size, &[]);
    let a = DffsMount::start(&cluster.peers[0], &cluster.dir.path().join("mnt-a"), &[]);
    let b = DffsMount::start(&cluster.peers[1], &cluster.dir.path().join("mnt-b"), &[]);

    // Lazy from the start: registering fetches no content.
    let id = cluster.peers[0].dffs_add(&origin.url("data.bin"));
    assert_eq!(origin.bytes_served(), 0, "dffs add must not download");

    let out = cluster.dir.path().join("copy.bin");
    let cp = run(
        "cp",
        &[a.path(&id).to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(
        cp.status.success(),
        "cp failed: {}",
        String::from_utf8_lossy(&cp.stderr)
    );
    assert_eq!(sha256_file(&out), digest, "cp on host A");
    assert_eq!(sha256sum(&b.path(&id)), digest, "sha256sum on host B");

    let served = origin.bytes_served();
    assert!(
        served as f64 <= 1.05 * size as f64,
        "origin served {served} bytes for {size}"
    );
    let b_from_peers = cluster.peers[1].metric("dffs_download_bytes_total", "source=\"peer\"");
    let b_from_origin = cluster.peers[1].metric("dffs_download_bytes_total", "source=\"origin\"");
    assert_eq!(b_from_origin, 0.0, "host B must not go to the origin");
    assert_eq!(b_from_peers, size as f64, "host B's bytes come from peers");
    let reads = b.metric("dffs_fs_reads_total", "");
    assert!(reads > 0.0, "dffs on B counts its reads");
}

#[test]
fn a_task_added_on_one_host_is_readable_on_another() {
    let cluster = Cluster::start(true, 2);
    let size = 24 * MIB + 777;
    let (origin, digest) = origin_with(&cluster, "lazy.bin", size, &[]);
    let b = DffsMount::start(&cluster.peers[1], &cluster.dir.path().join("mnt-b"), &[]);
    let id = cluster.peers[0].dffs_add(&origin.url("lazy.bin"));
    let listing = std::fs::metadata(b.path(&id)).expect("the task appears on host B");
    assert_eq!(listing.len(), size, "the file has the task's exact length");
    assert_eq!(sha256sum(&b.path(&id)), digest);
    let served = origin.bytes_served();
    assert!(
        served as f64 <= 1.05 * size as f64,
        "origin served {served} bytes for {size}"
    );
}

#[test]
fn random_reads_fetch_only_what_they_touch() {
    let cluster = Cluster::start(true, 1);
    let size = 512 * MIB;
    let root = cluster.dir.path().join("origin");
    std::fs::create_dir_all(&root).unwrap();
    let file = root.join("huge.bin");
    write_random_file(&file, size as usize);
    let origin = Origin::start(&root, &[]);
    let window_mib = 32;
    let mnt = DffsMount::start(
        &cluster.peers[0],
        &cluster.dir.path().join("mnt"),
        &["--readahead-mib", &window_mib.to_string()],
    );
    let id = cluster.peers[0].dffs_add(&origin.url("huge.bin"));

    let original = std::fs::File::open(&file).unwrap();
    let reads = 20u64;
    for i in 0..reads {
        let block = (i * 7919 + 13) % (size / 4096);
        let dd = run(
            "dd",
            &[
                &format!("if={}", mnt.path(&id).display()),
                "bs=4096",
                "count=1",
                &format!("skip={block}"),
                "status=none",
            ],
        );
        assert!(
            dd.status.success(),
            "dd failed: {}",
            String::from_utf8_lossy(&dd.stderr)
        );
        let at = block * 4096;
        let mut expected = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&original, &mut expected, at).unwrap();
        assert_eq!(dd.stdout, expected, "bytes at offset {at}");
    }
    let moved = cluster.peers[0].metric("dffs_download_bytes_total", "source=");
    let origin_bytes = origin.bytes_served() as f64;
    let bound = (reads * (MIB + window_mib * MIB)) as f64;
    eprintln!(
        "20 random 4 KiB reads moved {moved} bytes to the reader and {origin_bytes} from the origin: {:.0}x the bytes read (bound {:.0}x)",
        moved / (reads * 4096) as f64,
        bound / (reads * 4096) as f64
    );
    assert!(moved <= bound, "moved {moved} bytes, bound {bound}");
    assert!(
        origin_bytes <= bound,
        "origin served {origin_bytes} bytes, bound {bound}"
    );
    assert!(
        moved < (size / 4) as f64,
        "random reads must not pull the file"
    );
}

#[test]
fn failures_are_enoent_eio_and_recover_after_a_peerd_restart() {
    let mut cluster = Cluster::start(true, 1);
    let size = 4 * MIB;
    let (origin, digest) = origin_with(&cluster, "f.bin", size, &[]);
    let id = cluster.peers[0].dffs_add(&origin.url("f.bin"));
    let mnt = DffsMount::start(
        &cluster.peers[0],
        &cluster.dir.path().join("mnt"),
        &["--timeout", "3"],
    );

    // Unknown task-id, and a name that is no task-id at all.
    let unknown = "0".repeat(64);
    let err = std::fs::metadata(mnt.path(&unknown)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    let err = std::fs::metadata(mnt.dir.join("not-a-task")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    // A read past the end returns nothing.
    let dd = run(
        "dd",
        &[
            &format!("if={}", mnt.path(&id).display()),
            "bs=4096",
            "count=1",
            &format!("skip={}", size / 4096 + 10),
            "status=none",
        ],
    );
    assert!(dd.status.success());
    assert!(
        dd.stdout.is_empty(),
        "read past the end returned {} bytes",
        dd.stdout.len()
    );

    // peerd dies: a read of bytes not yet local fails with EIO in time.
    cluster.peers[0].daemon.kill();
    let started = Instant::now();
    let cat = run("cat", &[mnt.path(&id).to_str().unwrap()]);
    let took = started.elapsed();
    assert!(!cat.status.success(), "cat should fail while peerd is down");
    assert!(
        String::from_utf8_lossy(&cat.stderr).contains("Input/output error"),
        "expected EIO, got: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert!(
        took < Duration::from_secs(8),
        "EIO took {took:?}, timeout is 3s"
    );

    // peerd comes back: the same mount works again.
    cluster.peers[0].restart();
    let out = cluster.dir.path().join("after.bin");
    let cp = run(
        "cp",
        &[mnt.path(&id).to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    assert_eq!(sha256_file(&out), digest);
}

#[test]
fn umount_during_a_slow_read_does_not_hang() {
    let cluster = Cluster::start(true, 1);
    let size = 16 * MIB;
    // 64 KiB/s: the first piece takes longer than the read timeout, so the
    // read is in flight when the mount goes away.
    let (origin, _) = origin_with(&cluster, "slow.bin", size, &["--rate", "65536"]);
    let id = cluster.peers[0].dffs_add(&origin.url("slow.bin"));
    let mut mnt = DffsMount::start(
        &cluster.peers[0],
        &cluster.dir.path().join("mnt"),
        &["--timeout", "3"],
    );
    let mut reader = Command::new("cat")
        .arg(mnt.path(&id))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let busy = run("umount", &[mnt.dir.to_str().unwrap()]);
    assert!(
        !busy.status.success(),
        "a plain umount of a busy mount must refuse, not hang"
    );
    let umount = run("umount", &["-l", mnt.dir.to_str().unwrap()]);
    assert!(
        umount.status.success(),
        "umount -l failed: {}",
        String::from_utf8_lossy(&umount.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "umount took {:?}",
        started.elapsed()
    );
    assert!(!is_mounted(&mnt.dir));
    // The reader gets its answer (EIO after the 3 s timeout), and dffs
    // exits once the last file is closed.
    wait_until("the reader to end", Duration::from_secs(20), || {
        reader.try_wait().unwrap().is_some()
    });
    wait_until("dffs to exit", Duration::from_secs(20), || {
        mnt.daemon.child.try_wait().unwrap().is_some()
    });
}

/// Points /sbin/mount.dffs at the dffs under test for as long as it lives.
struct HelperInstalled {
    backup: Option<std::path::PathBuf>,
}

const HELPER: &str = "/sbin/mount.dffs";

impl HelperInstalled {
    fn install() -> HelperInstalled {
        let backup = Path::new(HELPER).exists().then(|| {
            let to = std::path::PathBuf::from(format!("{HELPER}.before-test"));
            std::fs::rename(HELPER, &to).expect("move the installed helper aside");
            to
        });
        std::os::unix::fs::symlink(tests::bin("dffs"), HELPER)
            .expect("install mount.dffs (needs root)");
        HelperInstalled { backup }
    }
}

impl Drop for HelperInstalled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
        if let Some(backup) = &self.backup {
            let _ = std::fs::rename(backup, HELPER);
        }
    }
}

#[test]
fn mount_t_dffs_and_umount_work() {
    let cluster = Cluster::start(true, 1);
    let (origin, digest) = origin_with(&cluster, "m.bin", 3 * MIB, &[]);
    let id = cluster.peers[0].dffs_add(&origin.url("m.bin"));
    let _helper = HelperInstalled::install();
    let dir = cluster.dir.path().join("dfly");
    std::fs::create_dir_all(&dir).unwrap();
    let options = format!(
        "socket={},metrics_addr=none,log_file={}",
        cluster.peers[0].socket.display(),
        cluster.dir.path().join("mount.log").display()
    );
    let mount = run(
        "mount",
        &["-t", "dffs", "dffs", dir.to_str().unwrap(), "-o", &options],
    );
    assert!(
        mount.status.success(),
        "mount -t dffs failed: {}",
        String::from_utf8_lossy(&mount.stderr)
    );
    assert!(is_mounted(&dir));
    assert_eq!(sha256sum(&dir.join(&id)), digest);
    let listing: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(listing.contains(&id), "ls shows the task: {listing:?}");
    let umount = run("umount", &[dir.to_str().unwrap()]);
    assert!(
        umount.status.success(),
        "umount failed: {}",
        String::from_utf8_lossy(&umount.stderr)
    );
    assert!(!is_mounted(&dir));
    let bad = run(
        "mount",
        &["-t", "dffs", "dffs", dir.to_str().unwrap(), "-o", "bogus=1"],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bogus=1"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// A file downloaded with dfget on a peer with dffs mounted: the cluster,
/// origin and mount (kept alive), the download, its path under the mount,
/// and its digest.
struct Downloaded {
    mnt: DffsMount,
    _origin: Origin,
    _cluster: Cluster,
    out: std::path::PathBuf,
    path: std::path::PathBuf,
    digest: String,
}

fn download_under_mount() -> Downloaded {
    let cluster = Cluster::start(true, 1);
    let (origin, digest) = origin_with(&cluster, "e.bin", 3 * MIB, &[]);
    let url = origin.url("e.bin");
    let peer = &cluster.peers[0];
    let mnt = DffsMount::start(peer, &cluster.dir.path().join("mnt"), &[]);
    let out = peer.dir.join("e.out");
    assert!(peer.dfget(&url, &out, &[]).status.success());
    let id = String::from_utf8(run(tests::bin("dfget").to_str().unwrap(), &["--id", &url]).stdout)
        .unwrap();
    let path = mnt.path(id.trim());
    Downloaded {
        mnt,
        _origin: origin,
        _cluster: cluster,
        out,
        path,
        digest,
    }
}

#[test]
fn an_edited_download_is_not_served_through_the_mount() {
    let download = download_under_mount();
    let (out, path, digest) = (&download.out, &download.path, download.digest.as_str());
    assert_eq!(sha256sum(path), digest);
    // The download may share its bytes with peerd's cache; edit it. The
    // first reader's release may still be on its way (FUSE delivers it
    // after close() returns); either way, see the next test.
    std::thread::sleep(Duration::from_millis(100));
    let mut file = std::fs::OpenOptions::new().write(true).open(out).unwrap();
    std::io::Write::write_all(&mut file, b"edited").unwrap();
    drop(file);
    assert_eq!(
        sha256sum(path),
        digest,
        "the mount must not serve the edited bytes"
    );
}

#[test]
fn an_edited_download_is_not_served_to_new_opens_while_an_old_reader_holds_it() {
    let download = download_under_mount();
    let (out, path, digest) = (&download.out, &download.path, download.digest.as_str());
    // A reader keeps the complete file open (through passthrough) while
    // the download, which shares peerd's bytes (a hard link), is edited.
    let held = std::fs::File::open(path).unwrap();
    assert_eq!(sha256sum(path), digest);
    assert_eq!(
        download
            .mnt
            .metric("dffs_fs_opens_total", "mode=\"passthrough\""),
        2.0,
        "a complete task should open for passthrough (this kernel has it)"
    );
    std::thread::sleep(Duration::from_millis(20));
    let edit = b"edited by its owner";
    let mut file = std::fs::OpenOptions::new().write(true).open(out).unwrap();
    std::io::Write::write_all(&mut file, edit).unwrap();
    drop(file);
    // The kernel binds an inode open for passthrough to that one file; a
    // new open while the old reader holds it must still succeed (it once
    // failed with EIO) and must get the origin's bytes, not the edit.
    assert_eq!(
        sha256sum(path),
        digest,
        "a new open while the old reader holds the edited file"
    );
    drop(held);
    assert_eq!(sha256sum(path), digest);
    let kept = std::fs::read(out).unwrap();
    assert_eq!(&kept[..edit.len()], edit, "the owner's edit was undone");
}

#[test]
fn dffs_add_errors_are_one_clear_line() {
    let cluster = Cluster::start(true, 1);
    let (origin, _) = origin_with(&cluster, "present.bin", MIB, &[]);
    let peer = &cluster.peers[0];
    let add = |url: &str| {
        Command::new(tests::bin("dffs"))
            .args(["add", url, "--socket"])
            .arg(&peer.socket)
            .output()
            .unwrap()
    };
    let cases = [
        ("not a url".to_string(), 2, "invalid URL 'not a url'"),
        (origin.url("absent.bin"), 4, "404"),
        (
            format!("http://127.0.0.1:{}/x", tests::free_port()),
            4,
            "cannot reach origin",
        ),
    ];
    for (url, code, needle) in cases {
        let out = add(&url);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{url}: {stderr}");
        assert!(
            stderr.starts_with("dffs: ") && stderr.contains(needle),
            "{url}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty(), "no task-id on failure");
    }
    let ok = add(&origin.url("present.bin"));
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim().len(), 64);
}
