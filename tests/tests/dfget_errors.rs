//! Every way dfget can fail ends with one clear line, a distinct exit
//! code, and no output file (not even a temporary one).

use std::path::Path;
use std::process::{Command, Output};
use tests::{Cluster, Origin, write_random_file};

const USAGE: i32 = 2;
const PEERD_UNREACHABLE: i32 = 3;
const ORIGIN: i32 = 4;
const DIGEST_MISMATCH: i32 = 5;
const OUTPUT: i32 = 6;

struct Setup {
    cluster: Cluster,
    origin: Origin,
    out_dir: std::path::PathBuf,
}

fn setup() -> Setup {
    let cluster = Cluster::start(true, 1);
    let root = cluster.dir.path().join("origin");
    std::fs::create_dir_all(&root).unwrap();
    write_random_file(&root.join("f.bin"), 3 << 20);
    let origin = Origin::start(&root, &[]);
    let out_dir = cluster.dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    Setup {
        cluster,
        origin,
        out_dir,
    }
}

/// Asserts the exit code, that stderr is one line naming `needle`, and
/// that `dir` holds no file at all afterwards.
fn assert_failed(result: &Output, code: i32, needle: &str, dir: &Path) {
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.starts_with("dfget: "), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn origin_and_input_errors_are_reported_clearly() {
    let s = setup();
    let peer = &s.cluster.peers[0];
    let out = s.out_dir.join("o");
    let zero_digest = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(String, Vec<&str>, i32, &str)> = vec![
        ("not a url".into(), vec![], USAGE, "invalid URL 'not a url'"),
        (
            "ftp://host/file".into(),
            vec![],
            USAGE,
            "only http:// and https://",
        ),
        (s.origin.url("missing.bin"), vec![], ORIGIN, "404"),
        (
            format!("http://{}/status/403", s.origin.addr),
            vec![],
            ORIGIN,
            "403",
        ),
        (
            format!("http://{}/status/503", s.origin.addr),
            vec![],
            ORIGIN,
            "503",
        ),
        (
            format!("http://127.0.0.1:{}/f.bin", tests::free_port()),
            vec![],
            ORIGIN,
            "cannot reach origin",
        ),
        (
            s.origin.url("f.bin"),
            vec!["-H", "no colon here"],
            USAGE,
            "invalid header 'no colon here'",
        ),
        (
            s.origin.url("f.bin"),
            vec!["--digest", &zero_digest],
            DIGEST_MISMATCH,
            "digest mismatch",
        ),
    ];
    for (url, extra, code, needle) in cases {
        let result = peer.dfget(&url, &out, &extra);
        assert_failed(&result, code, needle, &s.out_dir);
    }
}

#[test]
fn a_malformed_digest_is_refused_before_any_download() {
    let s = setup();
    let result = s.cluster.peers[0].dfget(
        &s.origin.url("f.bin"),
        &s.out_dir.join("o"),
        &["--digest", "md5:abc"],
    );
    assert_eq!(result.status.code(), Some(USAGE));
    assert!(String::from_utf8_lossy(&result.stderr).contains("md5:abc"));
    assert_eq!(s.origin.requests(), 0);
}

#[test]
fn peerd_not_running_is_named_with_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let result = Command::new(tests::bin("dfget"))
        .args(["http://127.0.0.1:9/f", "-O"])
        .arg(out_dir.join("o"))
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert_failed(
        &result,
        PEERD_UNREACHABLE,
        &socket.display().to_string(),
        &out_dir,
    );
    assert!(String::from_utf8_lossy(&result.stderr).contains("is peerd running?"));
}

/// Mounts a tiny tmpfs, or returns None when this process may not mount.
fn tiny_fs(at: &Path, size: &str) -> Option<TmpfsGuard> {
    std::fs::create_dir_all(at).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| TmpfsGuard(at.to_path_buf()))
}

struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_output_disk_is_reported_and_cleaned_up() {
    let s = setup();
    let small = s.cluster.dir.path().join("small");
    let Some(_fs) = tiny_fs(&small, "1m") else {
        panic!("this test needs root to mount a tmpfs; run the suite as root (CI does)");
    };
    let result = s.cluster.peers[0].dfget(&s.origin.url("f.bin"), &small.join("o"), &[]);
    assert_failed(&result, OUTPUT, "no space left on device", &small);
}

#[test]
fn a_full_peerd_cache_is_reported() {
    let s = setup();
    let small = s.cluster.dir.path().join("smallcache");
    let Some(_fs) = tiny_fs(&small, "1m") else {
        panic!("this test needs root to mount a tmpfs; run the suite as root (CI does)");
    };
    let peer = s.cluster.spawn_peer(
        "peerd",
        "cramped",
        &["--data-dir", &small.display().to_string()],
    );
    let result = peer.dfget(&s.origin.url("f.bin"), &s.out_dir.join("o"), &[]);
    assert_failed(&result, OUTPUT, "no space left", &s.out_dir);
}
