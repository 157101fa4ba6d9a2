use super::*;
use api::proto::{BadParent, PieceDigest, ReportPiecesRequest};

const MIB: u64 = 1 << 20;

fn host(id: &str) -> HostInfo {
    HostInfo {
        host_id: id.into(),
        hostname: id.into(),
        upload_addr: format!("{id}:1"),
        ..Default::default()
    }
}

fn source(url: &str) -> TaskSource {
    TaskSource {
        url: url.into(),
        ..Default::default()
    }
}

fn meta_for(url: &str, length: u64) -> (TaskId, TaskMeta) {
    let id = TaskId::from_source(url, "", "").unwrap();
    let meta = TaskMeta {
        task_id: id.to_string(),
        source: Some(source(url)),
        content_length: length,
        piece_length: MIB,
        ..Default::default()
    };
    (id, meta)
}

fn cluster_with(hosts: &[&str]) -> Cluster {
    let mut c = Cluster::new(SchedulerSettings::default());
    for h in hosts {
        c.announce_host(host(h), Instant::now());
    }
    c
}

fn register(c: &mut Cluster, host: &str, url: &str) -> Registration {
    register_as(c, host, url, false)
}

/// Registers `host` for `url`, saying whether it has origin headers of its
/// own for it.
fn register_as(c: &mut Cluster, host: &str, url: &str, private_source: bool) -> Registration {
    let (id, _) = meta_for(url, 0);
    c.register_peer(
        RegisterRequest {
            host_id: host,
            task_id: id,
            source: Some(source(url)),
            want_whole: true,
            bitmap: None,
            meta: None,
            private_source,
        },
        Instant::now(),
    )
    .unwrap()
}

fn done(r: Registration) -> RegisterPeerResponse {
    match r {
        Registration::Done(resp) => resp,
        Registration::Wait(_) => panic!("expected a response, got a wait"),
    }
}

fn report(
    c: &mut Cluster,
    host: &str,
    id: TaskId,
    pieces: &[u32],
    digests: &[u32],
) -> Result<(), Status> {
    let req = ReportPiecesRequest {
        host_id: host.into(),
        task_id: id.to_string(),
        pieces: pieces.to_vec(),
        digests: digests
            .iter()
            .map(|&n| PieceDigest {
                number: n,
                blake3: vec![n as u8; 32],
            })
            .collect(),
        ..Default::default()
    };
    c.report_pieces(&req, id, Instant::now())
}

#[test]
fn without_a_seed_the_first_peer_resolves_and_others_wait() {
    let url = "http://origin/file";
    let (id, meta) = meta_for(url, 4 * MIB);
    let mut c = cluster_with(&["a", "b"]);
    let first = done(register(&mut c, "a", url));
    assert!(first.must_resolve && first.is_root);
    let Registration::Wait(mut rx) = register(&mut c, "b", url) else {
        panic!("second peer should wait for the resolver");
    };
    c.report_task_meta("a", id, Ok(meta.clone())).unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), Resolution::Ready(meta.clone()));
    let second = done(register(&mut c, "b", url));
    assert_eq!(second.meta, Some(meta));
    assert!(!second.is_root && !second.must_resolve);
}

/// Connects a seed named "seed"; its commands arrive on the receiver.
fn attach_seed(c: &mut Cluster) -> mpsc::Receiver<Result<SeedCommand, Status>> {
    let (tx, rx) = mpsc::channel(8);
    c.attach_seed(
        HostInfo {
            is_seed: true,
            ..host("seed")
        },
        tx,
        Instant::now(),
    );
    rx
}

#[test]
fn a_connected_seed_resolves_and_roots_new_tasks() {
    let url = "http://origin/seeded";
    let (id, meta) = meta_for(url, 2 * MIB);
    let mut c = cluster_with(&["a"]);
    let mut rx = attach_seed(&mut c);
    assert!(matches!(register(&mut c, "a", url), Registration::Wait(_)));
    let command = rx.try_recv().unwrap().unwrap();
    assert_eq!(command.task_id, id.to_string());
    assert!(command.meta.is_none() && command.whole);
    c.report_task_meta("seed", id, Ok(meta)).unwrap();
    let resp = done(register(&mut c, "a", url));
    assert!(!resp.is_root);
    let parents = c.get_parents("a", id, &[], Instant::now()).unwrap();
    assert_eq!(parents.parents.len(), 1);
    assert!(parents.parents[0].is_root);
    assert_eq!(parents.parents[0].host_id, "seed");
}

#[test]
fn an_origin_failure_reaches_waiters_and_forgets_the_task() {
    let url = "http://origin/missing";
    let (id, _) = meta_for(url, 0);
    let mut c = cluster_with(&["a", "b"]);
    done(register(&mut c, "a", url));
    let Registration::Wait(rx) = register(&mut c, "b", url) else {
        panic!("expected a wait");
    };
    let error = api::error::RemoteError::origin(404, false, "origin returned 404");
    c.report_task_meta("a", id, Err(error.clone())).unwrap();
    assert_eq!(*rx.borrow(), Resolution::Failed(error));
    assert!(c.stat_task(&id).is_err());
}

#[test]
fn metadata_for_another_task_is_refused() {
    let (id, _) = meta_for("http://origin/x", 0);
    let (_, other) = meta_for("http://origin/y", MIB);
    let mut c = cluster_with(&["a"]);
    done(register(&mut c, "a", "http://origin/x"));
    let err = c.report_task_meta("a", id, Ok(other)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[test]
fn parents_hold_useful_pieces_and_isolated_hosts_are_left_out() {
    let url = "http://origin/f";
    let (id, meta) = meta_for(url, 4 * MIB);
    let mut c = cluster_with(&["root", "full", "empty", "bad", "child"]);
    done(register(&mut c, "root", url));
    c.report_task_meta("root", id, Ok(meta)).unwrap();
    for h in ["full", "empty", "bad", "child"] {
        done(register(&mut c, h, url));
    }
    report(&mut c, "root", id, &[0, 1, 2, 3], &[0, 1, 2, 3]).unwrap();
    report(&mut c, "full", id, &[0, 1, 2, 3], &[]).unwrap();
    report(&mut c, "bad", id, &[0, 1, 2, 3], &[]).unwrap();
    // Two independent hosts got corrupt bytes from "bad".
    for reporter in ["child", "full"] {
        c.report_pieces(&corrupt_report(reporter, "bad", id), id, Instant::now())
            .unwrap();
    }
    let resp = c
        .get_parents("child", id, &[0, 3, 9], Instant::now())
        .unwrap();
    let names: Vec<&str> = resp.parents.iter().map(|p| p.host_id.as_str()).collect();
    assert_eq!(
        names,
        ["full", "root"],
        "root is last, the empty and the isolated host are left out"
    );
    assert_eq!(
        resp.digests.iter().map(|d| d.number).collect::<Vec<_>>(),
        [0, 3]
    );
}

fn corrupt_report(reporter: &str, parent: &str, id: TaskId) -> ReportPiecesRequest {
    ReportPiecesRequest {
        host_id: reporter.into(),
        task_id: id.to_string(),
        bad_parents: vec![BadParent {
            host_id: parent.into(),
            piece: 0,
            corrupt: true,
        }],
        ..Default::default()
    }
}

#[test]
fn one_host_alone_cannot_isolate_another() {
    let url = "http://origin/iso";
    let (id, meta) = meta_for(url, MIB);
    let mut c = cluster_with(&["seed", "liar", "other"]);
    done(register(&mut c, "seed", url));
    c.report_task_meta("seed", id, Ok(meta)).unwrap();
    done(register(&mut c, "liar", url));
    let now = Instant::now();
    for _ in 0..5 {
        c.report_pieces(&corrupt_report("liar", "seed", id), id, now)
            .unwrap();
    }
    // Reporting oneself counts for nothing either.
    c.report_pieces(&corrupt_report("seed", "seed", id), id, now)
        .unwrap();
    assert!(
        !c.hosts["seed"].is_isolated(now),
        "one liar isolated the seed"
    );
    c.report_pieces(&corrupt_report("other", "seed", id), id, now)
        .unwrap();
    assert!(c.hosts["seed"].is_isolated(now), "two hosts are evidence");
}

#[test]
fn a_conflicting_digest_is_refused_and_the_first_stands() {
    let url = "http://origin/c";
    let (id, meta) = meta_for(url, 2 * MIB);
    let mut c = cluster_with(&["root"]);
    done(register(&mut c, "root", url));
    c.report_task_meta("root", id, Ok(meta)).unwrap();
    report(&mut c, "root", id, &[0], &[0]).unwrap();
    let forged = ReportPiecesRequest {
        host_id: "root".into(),
        task_id: id.to_string(),
        pieces: vec![1],
        digests: vec![
            PieceDigest {
                number: 1,
                blake3: vec![1; 32],
            },
            PieceDigest {
                number: 0,
                blake3: vec![9; 32],
            },
        ],
        ..Default::default()
    };
    let err = c.report_pieces(&forged, id, Instant::now()).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("piece 0"), "{}", err.message());
    let task = &c.tasks[&id];
    assert_eq!(task.digests[&0], [0; 32], "the first digest stands");
    assert!(
        !task.digests.contains_key(&1),
        "a refused report is applied in no part"
    );
    assert!(!task.peers["root"].bitmap.get(1));
}

/// A host re-reporting a task it holds whole, with its metadata.
fn resync(host: &str, id: TaskId, meta: TaskMeta) -> RegisterRequest<'_> {
    RegisterRequest {
        host_id: host,
        task_id: id,
        source: None,
        want_whole: false,
        bitmap: Some(&[0xff]),
        meta: Some(meta),
        private_source: false,
    }
}

#[test]
fn metadata_sent_along_cannot_create_or_rebind_a_task() {
    let (id, _) = meta_for("http://origin/v.bin", MIB);
    let (_, evil) = meta_for("http://origin/evil.bin", MIB);
    let mut c = cluster_with(&["attacker"]);
    let rebind = resync("attacker", id, evil);
    let err = c
        .register_peer(rebind, Instant::now())
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(c.tasks.is_empty());
    // Metadata for the right URL but with a made-up length: the task is
    // resolved at the origin, not taken from the message.
    let (_, mut forged) = meta_for("http://origin/v.bin", 5 * MIB);
    forged.etag = "\"forged\"".into();
    let create = resync("attacker", id, forged);
    let resp = done(c.register_peer(create, Instant::now()).unwrap());
    assert!(resp.must_resolve && resp.meta.is_none());
    assert!(
        c.tasks[&id].meta.is_none(),
        "the message's metadata was taken"
    );
}

#[test]
fn a_holder_of_another_version_is_not_offered_as_a_parent() {
    let url = "http://origin/h";
    let (id, meta) = meta_for(url, MIB);
    let mut c = cluster_with(&["root", "stale", "child"]);
    done(register(&mut c, "root", url));
    c.report_task_meta("root", id, Ok(meta.clone())).unwrap();
    let mut old = meta;
    old.etag = "\"older\"".into();
    let stale = resync("stale", id, old);
    done(c.register_peer(stale, Instant::now()).unwrap());
    done(register(&mut c, "child", url));
    let resp = c.get_parents("child", id, &[], Instant::now()).unwrap();
    assert!(
        resp.parents.iter().all(|p| p.host_id != "stale"),
        "pieces of another version were offered"
    );
}

#[test]
fn only_the_root_may_report_digests() {
    let url = "http://origin/d";
    let (id, meta) = meta_for(url, 2 * MIB);
    let mut c = cluster_with(&["root", "other"]);
    done(register(&mut c, "root", url));
    c.report_task_meta("root", id, Ok(meta)).unwrap();
    done(register(&mut c, "other", url));
    let err = report(&mut c, "other", id, &[0], &[0]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    report(&mut c, "root", id, &[0], &[0]).unwrap();
}

#[test]
fn a_task_fetched_with_private_headers_is_rooted_at_a_host_that_has_them() {
    let url = "http://origin/private";
    let (id, meta) = meta_for(url, MIB);
    let mut c = cluster_with(&["owner", "other", "late"]);
    let mut seed = attach_seed(&mut c);
    // The seed lacks the headers, so it is neither asked nor made root.
    let resp = done(register_as(&mut c, "owner", url, true));
    assert!(resp.must_resolve && resp.is_root);
    assert!(seed.try_recv().is_err(), "a seed was sent a private task");
    c.report_task_meta("owner", id, Ok(meta)).unwrap();
    assert!(!done(register(&mut c, "other", url)).is_root);
    assert!(!done(register_as(&mut c, "late", url, true)).is_root);
    assert!(seed.try_recv().is_err());
    // The owner leaves: the next root is the other host with headers, not
    // the seed and not the host without them.
    c.remove_host("owner", Instant::now());
    let resp = c.get_parents("other", id, &[], Instant::now()).unwrap();
    assert!(!resp.is_root);
    assert!(
        resp.parents
            .iter()
            .any(|p| p.is_root && p.host_id == "late")
    );
}

#[test]
fn a_task_first_registered_without_headers_stays_public() {
    let url = "http://origin/public";
    let mut c = cluster_with(&["a", "b"]);
    let mut seed = attach_seed(&mut c);
    assert!(matches!(register(&mut c, "a", url), Registration::Wait(_)));
    assert!(seed.try_recv().is_ok(), "the seed resolves a public task");
    assert!(matches!(
        register_as(&mut c, "b", url, true),
        Registration::Wait(_)
    ));
}

#[test]
fn a_silent_root_is_replaced_by_the_next_asker() {
    let url = "http://origin/r";
    let (id, meta) = meta_for(url, MIB);
    let mut c = cluster_with(&["root", "child"]);
    done(register(&mut c, "root", url));
    c.report_task_meta("root", id, Ok(meta)).unwrap();
    done(register(&mut c, "child", url));
    let later = Instant::now() + Duration::from_secs(60);
    c.hosts.get_mut("child").unwrap().last_seen = later;
    c.expire(later);
    assert!(!c.hosts.contains_key("root"));
    let resp = c.get_parents("child", id, &[], later).unwrap();
    assert!(
        resp.is_root,
        "with no seed and the root gone, the child becomes root"
    );
}

#[test]
fn unknown_hosts_and_tasks_get_clear_errors() {
    let mut c = cluster_with(&["a"]);
    let (id, _) = meta_for("http://origin/none", 0);
    let err = c.get_parents("ghost", id, &[], Instant::now()).unwrap_err();
    assert!(err.message().contains("ghost"));
    let err = c.get_parents("a", id, &[], Instant::now()).unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}
