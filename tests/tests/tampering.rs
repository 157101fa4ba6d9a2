//! A parent that serves corrupt bytes cannot corrupt a child: the child
//! detects it, reports the parent, and gets the piece elsewhere.

use tests::Cluster;
use tests::tamper::start_tamper_proxy;

#[test]
fn a_lying_parent_is_caught_and_avoided() {
    let mut cluster = Cluster::start(false, 0);
    let size = 6 << 20;
    let (origin, expected) = cluster.serve_file("t.bin", size, &[]);
    let url = origin.url("t.bin");

    // The liar: a real peerd, advertised to the cluster through a proxy
    // that flips a byte in every piece it relays.
    let liar_port = tests::free_port();
    let proxy = start_tamper_proxy(format!("127.0.0.1:{liar_port}"));
    let liar = cluster.spawn_peer(
        "peerd",
        "liar",
        &[
            "--upload-addr",
            &format!("127.0.0.1:{liar_port}"),
            "--advertise-addr",
            &format!("127.0.0.1:{proxy}"),
        ],
    );
    let warm = liar.dfget(&url, &liar.dir.join("t.out"), &[]);
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    cluster.peers.push(liar);

    let child = cluster.spawn_peer("peerd", "child", &[]);
    // The child's output must match the origin.
    child.dfget_verified(&url, "t.out", &expected);
    let corrupt = child.metric("dffs_piece_failures_total", "reason=\"corrupt\"");
    assert!(
        corrupt >= 1.0,
        "the child should have caught the corrupt piece"
    );
    let from_peer = child.metric("dffs_download_bytes_total", "source=\"peer\"");
    assert_eq!(from_peer, 0.0, "nothing from the liar may have been kept");
}
