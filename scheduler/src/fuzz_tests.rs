//! Fuzzing of the scheduler's rules with whatever hosts may send: any
//! sequence of registrations, metadata and reports leaves the cluster
//! consistent and never panics (`bench/fuzz.sh` runs this longer).

use crate::state::{Cluster, RegisterRequest, SchedulerSettings};
use api::proto::*;
use api::task::TaskId;
use proptest::prelude::*;
use std::time::Instant;

const HOSTS: [&str; 3] = ["a", "b", "c"];
const URLS: [&str; 2] = ["http://o/x", "http://o/y"];

#[derive(Debug, Clone)]
enum Call {
    Register {
        host: usize,
        url: usize,
        with_meta: Option<(u64, u64)>,
        bitmap: Vec<u8>,
        private: bool,
    },
    Meta {
        host: usize,
        url: usize,
        length: u64,
        piece: u64,
    },
    Report {
        host: usize,
        url: usize,
        pieces: Vec<u32>,
        digests: Vec<(u32, Vec<u8>)>,
        bad: Option<(usize, bool)>,
    },
    Parents {
        host: usize,
        url: usize,
        want: Vec<u32>,
    },
    Leave {
        host: usize,
        url: usize,
    },
    Expire,
}

fn call() -> impl Strategy<Value = Call> {
    let length = prop_oneof![Just(0u64), 1u64..(64 << 20), any::<u64>()];
    let piece = prop_oneof![Just(256u64 << 10), Just(1u64 << 20), any::<u64>()];
    prop_oneof![
        (
            0..3usize,
            0..2usize,
            proptest::option::of((length.clone(), piece.clone())),
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<bool>()
        )
            .prop_map(|(host, url, with_meta, bitmap, private)| Call::Register {
                host,
                url,
                with_meta,
                bitmap,
                private
            }),
        (0..3usize, 0..2usize, length, piece).prop_map(|(host, url, length, piece)| Call::Meta {
            host,
            url,
            length,
            piece
        }),
        (
            0..3usize,
            0..2usize,
            proptest::collection::vec(0u32..300, 0..20),
            proptest::collection::vec(
                (0u32..300, proptest::collection::vec(any::<u8>(), 30..34)),
                0..6
            ),
            proptest::option::of((0..3usize, any::<bool>()))
        )
            .prop_map(|(host, url, pieces, digests, bad)| Call::Report {
                host,
                url,
                pieces,
                digests,
                bad
            }),
        (
            0..3usize,
            0..2usize,
            proptest::collection::vec(any::<u32>(), 0..10)
        )
            .prop_map(|(host, url, want)| Call::Parents { host, url, want }),
        (0..3usize, 0..2usize).prop_map(|(host, url)| Call::Leave { host, url }),
        Just(Call::Expire),
    ]
}

fn meta(url: &str, length: u64, piece: u64) -> TaskMeta {
    TaskMeta {
        task_id: TaskId::from_source(url, "", "").unwrap().to_string(),
        source: Some(TaskSource {
            url: url.into(),
            ..Default::default()
        }),
        content_length: length,
        piece_length: piece,
        ..Default::default()
    }
}

fn apply(c: &mut Cluster, call: Call) {
    let now = Instant::now();
    let id = |url: usize| TaskId::from_source(URLS[url], "", "").unwrap();
    match call {
        Call::Register {
            host,
            url,
            with_meta,
            bitmap,
            private,
        } => {
            let meta = with_meta.map(|(l, p)| meta(URLS[url], l, p));
            let request = RegisterRequest {
                host_id: HOSTS[host],
                task_id: id(url),
                source: Some(TaskSource {
                    url: URLS[url].into(),
                    ..Default::default()
                }),
                want_whole: false,
                bitmap: Some(&bitmap),
                meta,
                private_source: private,
            };
            let _ = c.register_peer(request, now);
        }
        Call::Meta {
            host,
            url,
            length,
            piece,
        } => {
            let _ = c.report_task_meta(HOSTS[host], id(url), Ok(meta(URLS[url], length, piece)));
        }
        Call::Report {
            host,
            url,
            pieces,
            digests,
            bad,
        } => {
            let request = ReportPiecesRequest {
                host_id: HOSTS[host].into(),
                task_id: id(url).to_string(),
                pieces,
                digests: digests
                    .into_iter()
                    .map(|(number, blake3)| PieceDigest { number, blake3 })
                    .collect(),
                bad_parents: bad
                    .into_iter()
                    .map(|(h, corrupt)| BadParent {
                        host_id: HOSTS[h].into(),
                        piece: 0,
                        corrupt,
                    })
                    .collect(),
                speeds: Vec::new(),
            };
            let _ = c.report_pieces(&request, id(url), now);
        }
        Call::Parents { host, url, want } => {
            let _ = c.get_parents(HOSTS[host], id(url), &want, now);
        }
        Call::Leave { host, url } => c.leave_task(HOSTS[host], id(url), now),
        Call::Expire => c.expire(now),
    }
}

proptest! {
    #[test]
    fn any_calls_keep_the_cluster_consistent(calls in proptest::collection::vec(call(), 1..40)) {
        let mut c = Cluster::new(SchedulerSettings::default());
        for h in HOSTS {
            c.announce_host(HostInfo { host_id: h.into(), upload_addr: "127.0.0.1:1".into(), ..Default::default() }, Instant::now());
        }
        for call in calls {
            apply(&mut c, call);
        }
        for task in c.tasks.values() {
            let count = task.piece_count();
            prop_assert!(u64::from(count) <= api::piece::MAX_PIECES);
            prop_assert!(task.digests.keys().all(|&n| n < count));
            for peer in task.peers.values() {
                prop_assert_eq!(peer.bitmap.len(), count);
            }
        }
    }
}
