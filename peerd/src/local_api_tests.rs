//! The local API over a real Unix socket, driven by the real client, with
//! a real engine and a real HTTP origin; the scheduler is absent, so the
//! engine falls back to the origin (as it does when the scheduler is down).

use super::*;
use crate::engine::{EngineParts, EngineSettings};
use crate::link::SchedulerLink;
use crate::origin::Origin;
use crate::ratelimit::HostLimits;
use crate::storage::Store;
use crate::upload::client::PieceClient;
use api::error::ErrorKind;
use api::local::LocalClient;
use api::task::TaskId;
use std::time::Duration;

const BODY_LEN: usize = (1 << 20) + 12345;

fn body() -> Vec<u8> {
    (0..BODY_LEN).map(|i| (i % 251) as u8).collect()
}

/// Serves `body()` at /f on loopback (no Range support: the engine then
/// streams the whole object once), requiring nothing.
async fn origin() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/f", axum::routing::get(|| async { body() }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/f")
}

/// peerd's local API on a socket in `dir`, with no scheduler to reach.
async fn local_api(dir: &std::path::Path) -> LocalClient {
    let socket = serve_local_api(dir).await;
    LocalClient::connect(&socket).await.unwrap()
}

/// Starts the local API on `dir/peerd.sock` and returns the socket's path.
async fn serve_local_api(dir: &std::path::Path) -> std::path::PathBuf {
    let store = Store::open(&dir.join("data")).unwrap();
    let host = HostInfo {
        host_id: "test-host".into(),
        upload_addr: "127.0.0.1:9".into(),
        ..Default::default()
    };
    let nowhere = "127.0.0.1:9".parse().unwrap();
    let engine = Engine::new(EngineParts {
        store,
        link: Arc::new(SchedulerLink::new(
            &[nowhere],
            host,
            api::identity::HostIdentity::generate(),
        )),
        pieces: PieceClient::new(Duration::from_secs(1), Default::default()),
        origin: Origin::new(Duration::from_secs(1)),
        limits: HostLimits::default(),
        settings: EngineSettings {
            requests_per_parent: 8,
            origin_requests_per_task: 4,
            bulk_window: 32,
            upload_port: 9,
            commit_interval: Duration::from_millis(50),
            download_slots: 32,
            seed: false,
        },
    });
    let socket = dir.join("peerd.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let service = api::proto::peer_server::PeerServer::new(LocalApi::new(engine));
    tokio::spawn(
        api::transport::grpc_server()
            .add_service(service)
            .serve_with_incoming(api::transport::unix_incoming(listener)),
    );
    socket
}

#[tokio::test]
async fn a_client_waiting_for_peerd_gets_its_answer_once_peerd_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let client = LocalClient::lazy(&dir.path().join("peerd.sock"));
    let path = dir.path().to_path_buf();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        serve_local_api(&path).await;
    });
    let listed = client.list(Duration::from_secs(10)).await;
    assert_eq!(listed.expect("peerd came up within the deadline").len(), 0);
}

#[tokio::test]
async fn a_download_streams_progress_and_leaves_the_exact_bytes_in_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let client = local_api(dir.path()).await;
    let request = DownloadRequest {
        source: Some(TaskSource {
            url: origin().await,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stream = client
        .download(request, Duration::from_secs(30))
        .await
        .unwrap();
    let mut announced = Vec::new();
    let last = loop {
        let message = stream.message().await.unwrap().expect("a final message");
        announced.extend(message.new_pieces.iter().copied());
        if message.done {
            break message;
        }
    };
    let info = last.task.expect("task info");
    assert!(info.complete);
    assert_eq!(last.completed_bytes, BODY_LEN as u64);
    let piece_length = info.meta.as_ref().unwrap().piece_length as usize;
    let pieces = BODY_LEN.div_ceil(piece_length) as u32;
    announced.sort_unstable();
    assert_eq!(
        announced,
        (0..pieces).collect::<Vec<_>>(),
        "each piece announced once"
    );
    assert_eq!(std::fs::read(&info.content_path).unwrap(), body());
    let listed = client.list(Duration::from_secs(5)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].meta, info.meta);
}

#[tokio::test]
async fn bad_requests_are_refused_with_their_kind_and_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let client = local_api(dir.path()).await;
    let t = Duration::from_secs(5);
    let header = |name: &str| Header {
        name: name.into(),
        value: "v".into(),
    };
    let source = TaskSource {
        url: "http://127.0.0.1:9/f".into(),
        ..Default::default()
    };
    let err = client
        .register(source.clone(), vec![header("Bad Name")], t)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(err.message.contains("'Bad Name'"), "{}", err.message);
    let err = client
        .register(source, vec![header("Range")], t)
        .await
        .unwrap_err();
    assert!(
        err.message.contains("dffs sets this header itself"),
        "{}",
        err.message
    );
    let url = TaskSource {
        url: "ftp://h/f".into(),
        ..Default::default()
    };
    let err = client.register(url, Vec::new(), t).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    let missing = TaskId::from_source("http://h/nothing", "", "").unwrap();
    let err = client.stat(missing, t).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Scheduler, "{err:?}");
}

#[tokio::test]
async fn an_origin_refusal_reaches_the_caller_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let client = local_api(dir.path()).await;
    let url = origin().await.replace("/f", "/missing");
    let source = TaskSource {
        url,
        ..Default::default()
    };
    let err = client
        .register(source, Vec::new(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.http_status),
        (ErrorKind::Origin, 404),
        "{err:?}"
    );
}
