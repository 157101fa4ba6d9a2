//! dfget into targets that are not regular files: standard output, a pipe
//! and a character device. They must receive exactly the verified bytes and
//! must never be replaced by a regular file (renaming over `/dev/null`
//! would break the whole machine).

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;
use tests::{Cluster, Peer, bin, sha256_hex};

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs dfget with `-O -` and `extra` flags.
fn dfget_to_stdout(peer: &Peer, url: &str, extra: &[&str]) -> std::process::Output {
    Command::new(bin("dfget"))
        .args([url, "-O", "-", "--quiet", "--socket"])
        .arg(&peer.socket)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn dfget_streams_to_stdout_pipes_and_devices_without_replacing_them() {
    let cluster = Cluster::start(true, 1);
    let (origin, digest) = cluster.serve_file("f.bin", 5 << 20, &[]);
    let url = origin.url("f.bin");
    let peer = &cluster.peers[0];

    // `-O -`: the bytes on stdout, and only them.
    let result = dfget_to_stdout(peer, &url, &[]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(sha256_hex(&result.stdout), digest);

    // A wrong --digest writes nothing at all to stdout.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let result = dfget_to_stdout(peer, &url, &["--digest", &wrong]);
    assert_eq!(result.status.code(), Some(5));
    assert!(
        result.stdout.is_empty(),
        "bytes written before verification"
    );

    // A named pipe: read by another thread, still a pipe afterwards.
    let dir = cluster.dir.path().join("special");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::fs::File::open(fifo)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            bytes
        })
    };
    let result = peer.dfget(&url, &fifo, &[]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(sha256_hex(&reader.join().unwrap()), digest);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

    // A private null device, standing in for /dev/null.
    let null = dir.join("null");
    let made = Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod needs root, which the tests require");
    let result = peer.dfget(&url, &null, &[]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let kind = std::fs::metadata(&null).unwrap().file_type();
    assert!(kind.is_char_device(), "the device was replaced: {kind:?}");
    assert_eq!(entries(&dir), ["null", "pipe"], "temporary files left");
}
