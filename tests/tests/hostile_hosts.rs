//! A host that joins the cluster (it may: anyone can announce a host) and
//! then lies to the scheduler cannot poison a download, crash the
//! scheduler, or isolate another host. Each test plays one attack found on
//! `aa59e70` with a real scheduler, seed and peers, and a hostile gRPC
//! client of its own (see `tests::hostile`).

use api::proto::*;
use api::task::TaskId;
use std::time::Duration;
use tests::Cluster;
use tests::hostile::{Hostile, host_id_of, rss_kib};

const SIZE: usize = 4 << 20;

fn task_id(url: &str) -> String {
    TaskId::from_source(url, "", "").unwrap().to_string()
}

fn source(url: &str) -> TaskSource {
    TaskSource {
        url: url.into(),
        ..Default::default()
    }
}

#[test]
fn a_host_cannot_report_digests_in_the_roots_name() {
    let cluster = Cluster::start(true, 1);
    let (origin, digest) = cluster.serve_file("v.bin", SIZE, &[]);
    let url = origin.url("v.bin");
    let id = task_id(&url);
    let attacker = Hostile::join(&cluster.scheduler_addr);
    attacker.join_task(&url).expect("anyone may join a task");
    let parents = attacker.get_parents(&id).expect("parents");
    let root = parents
        .parents
        .iter()
        .find(|p| p.is_root)
        .expect("the seed roots the task")
        .host_id
        .clone();
    assert_eq!(
        root,
        host_id_of(&cluster.seed.as_ref().unwrap().dir.join("data"))
    );
    let forged = |host_id: &str| ReportPiecesRequest {
        host_id: host_id.into(),
        task_id: id.clone(),
        pieces: (0..16).collect(),
        digests: (0..16)
            .map(|n| PieceDigest {
                number: n,
                blake3: vec![0xee; 32],
            })
            .collect(),
        ..Default::default()
    };
    let spoofed = attacker
        .report(forged(&root))
        .expect_err("spoofing the root");
    assert_eq!(spoofed.code(), tonic::Code::PermissionDenied, "{spoofed:?}");
    let own = attacker
        .report(forged(&attacker.id()))
        .expect_err("not the root");
    assert_eq!(own.code(), tonic::Code::PermissionDenied, "{own:?}");
    // The victim gets the origin's bytes.
    cluster.peers[0].dfget_verified(&url, "v.bin", &digest);
}

#[test]
fn metadata_sent_with_a_registration_cannot_bind_a_task_to_another_url() {
    let cluster = Cluster::start(true, 1);
    let root = cluster.origin_root();
    let digest = tests::write_random_file(&root.join("v.bin"), SIZE);
    tests::write_random_file(&root.join("evil.bin"), SIZE);
    let origin = tests::Origin::start(&root, &[]);
    let (url, evil_url) = (origin.url("v.bin"), origin.url("evil.bin"));
    let attacker = Hostile::join(&cluster.scheduler_addr);
    let rebind = attacker.register(RegisterPeerRequest {
        host_id: attacker.id(),
        task_id: task_id(&url),
        bitmap: vec![0xff; 2],
        meta: Some(TaskMeta {
            task_id: task_id(&url),
            source: Some(source(&evil_url)),
            content_length: SIZE as u64,
            piece_length: 256 << 10,
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = rebind.expect_err("metadata of another URL");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    cluster.peers[0].dfget_verified(&url, "v.bin", &digest);
}

#[test]
fn a_task_too_large_to_hold_is_refused_and_the_scheduler_lives_on() {
    // No seed: the first host to ask resolves the task, and reports its
    // metadata, which a liar can make up.
    let cluster = Cluster::start(false, 1);
    let (origin, digest) = cluster.serve_file("f.bin", SIZE, &[]);
    let attacker = Hostile::join(&cluster.scheduler_addr);
    let before = rss_kib(cluster.scheduler.child.id());
    for (n, length) in [(0u32, 1u64 << 40), (1, ((1u64 << 32) - 1) * (256 << 10))] {
        let url = format!("http://127.0.0.1:9/huge{n}.bin");
        let id = task_id(&url);
        let resp = attacker.join_task(&url).expect("registered");
        assert!(resp.must_resolve, "without a seed the first asker resolves");
        let meta = TaskMeta {
            task_id: id.clone(),
            source: Some(source(&url)),
            content_length: length,
            piece_length: 256 << 10,
            ..Default::default()
        };
        let err = attacker
            .report_meta(ReportTaskMetaRequest {
                host_id: attacker.id(),
                task_id: id,
                result: Some(report_task_meta_request::Result::Meta(meta)),
            })
            .expect_err("a layout of more pieces than any task may have");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("pieces"), "{}", err.message());
    }
    let grown = rss_kib(cluster.scheduler.child.id()).saturating_sub(before);
    assert!(grown < 50 << 10, "the scheduler grew by {grown} KiB");
    // Alive and serving.
    cluster.peers[0].dfget_verified(&origin.url("f.bin"), "f.bin", &digest);
}

#[test]
fn one_host_cannot_isolate_the_seed_or_make_it_leave() {
    let cluster = Cluster::start(true, 2);
    let (origin, digest) = cluster.serve_file("s.bin", SIZE, &[]);
    let url = origin.url("s.bin");
    let id = task_id(&url);
    cluster.peers[0].dfget_verified(&url, "first.bin", &digest);
    let seed_id = host_id_of(&cluster.seed.as_ref().unwrap().dir.join("data"));
    let attacker = Hostile::join(&cluster.scheduler_addr);
    attacker.join_task(&url).expect("joined");
    for piece in 0..8 {
        attacker
            .report(ReportPiecesRequest {
                host_id: attacker.id(),
                task_id: id.clone(),
                bad_parents: vec![BadParent {
                    host_id: seed_id.clone(),
                    piece,
                    corrupt: true,
                }],
                ..Default::default()
            })
            .expect("a report of its own is taken");
    }
    let err = attacker
        .leave_host(&seed_id)
        .expect_err("another host's id");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // The seed is still the root everyone asks, so the second peer gets
    // the task from the cluster and the origin serves it only once.
    let parents = attacker.get_parents(&id).expect("parents");
    assert!(
        parents
            .parents
            .iter()
            .any(|p| p.is_root && p.host_id == seed_id),
        "the seed is no longer offered: {parents:?}"
    );
    cluster.peers[1].dfget_verified(&url, "second.bin", &digest);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        origin.bytes_served() <= SIZE as u64 + (1 << 20),
        "the origin served {} bytes for a {SIZE}-byte file",
        origin.bytes_served()
    );
}
