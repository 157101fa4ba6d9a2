//! Starting and stopping peerd (and the seed, which is peerd in seed mode).

use crate::config::{Advertise, PeerdArgs};
use crate::engine::link::SchedulerLink;
use crate::engine::{Engine, Parts, Settings};
use crate::local_api::LocalApi;
use crate::origin::Origin;
use crate::ratelimit::{ByteLimit, HostLimits};
use crate::storage::Store;
use crate::upload::client::PeerClient;
use crate::upload::server::UploadServer;
use anyhow::Context;
use api::proto::HostInfo;
use api::proto::peer_server::PeerServer;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};

pub async fn run(args: PeerdArgs) -> anyhow::Result<()> {
    let role = if args.seed { "seed" } else { "peerd" };
    api::telemetry::serve_metrics(args.metrics_addr).await?;
    let store = Store::open(&args.data_dir)?;
    let host_id = store.host_id()?;
    let upload = TcpListener::bind(args.upload_addr).await.with_context(|| {
        format!(
            "cannot listen on upload address {}; choose another with --upload-addr",
            args.upload_addr
        )
    })?;
    let advertised = advertised_addr(&args, upload.local_addr()?);
    let host = HostInfo {
        host_id: host_id.clone(),
        hostname: hostname(),
        upload_addr: advertised.to_string(),
        is_seed: args.seed,
        upload_limit: args.upload_rate_limit,
        uploads_in_flight: 0,
    };
    let link = SchedulerLink::new(&args.scheduler, host)?;
    let limits = HostLimits {
        download: ByteLimit::new(args.download_rate_limit),
        upload: ByteLimit::new(args.upload_rate_limit),
    };
    let connect_timeout = Duration::from_secs(args.connect_timeout_seconds.max(1));
    let engine = Engine::new(Parts {
        store,
        link,
        peers: PeerClient::new(connect_timeout, limits.download.clone()),
        origin: Origin::new(connect_timeout),
        download_slots: args.download_slots,
        limits: limits.clone(),
        settings: Settings {
            requests_per_parent: args.requests_per_parent.max(1),
            origin_requests_per_task: args.origin_requests_per_task.max(1),
            bulk_window: args.download_slots,
            upload_port: advertised.port(),
            commit_interval: Duration::from_millis(args.commit_interval_ms),
        },
        seed: args.seed,
    });

    let uploads = Arc::new(UploadServer::new(
        Arc::new(engine.clone()),
        limits.upload.clone(),
        args.max_uploads,
    ));
    let in_flight = uploads.in_flight();
    tokio::spawn(uploads.serve(upload));
    let socket = bind_socket(&args.socket).await?;
    tracing::info!(role, host = %host_id, upload = %advertised, socket = %args.socket.display(), data = %args.data_dir.display(), "started");

    let reporter = engine.clone();
    tokio::spawn(async move { reporter.inner.link.run_reporter().await });
    let announcer = engine.clone();
    tokio::spawn(async move {
        loop {
            announcer
                .inner
                .link
                .set_uploads_in_flight(in_flight.load(Ordering::Relaxed));
            let (resync, keepalive) = announcer.inner.link.announce().await;
            for index in resync {
                announcer.resync(index).await;
            }
            tokio::time::sleep(keepalive.unwrap_or(Duration::from_secs(5))).await;
        }
    });
    let quota = crate::engine::gc::Quota {
        max_bytes: args.cache_max_bytes,
        disk_high_percent: args.disk_high_percent,
        disk_low_percent: args.disk_low_percent.min(args.disk_high_percent),
        interval: Duration::from_secs(args.gc_interval_seconds.max(1)),
        keep_recent: Duration::from_secs(args.gc_keep_recent_seconds),
    };
    tokio::spawn(crate::engine::gc::run(engine.clone(), quota));
    if args.seed {
        for index in 0..engine.inner.link.scheduler_count() {
            tokio::spawn(crate::seed::run_session(engine.clone(), index));
        }
    }

    let api = PeerServer::new(LocalApi::new(engine.clone()));
    api::telemetry::serve_until_signal(|stop| {
        tonic::transport::Server::builder()
            .add_service(api)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(socket),
                stop,
            )
    })
    .await?;
    tracing::info!("shutting down");
    engine.shutdown().await;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// Binds the local API socket, replacing a stale one left by a crash but
/// refusing to steal the socket of a peerd that is still running.
async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another daemon is already serving {}; stop it or choose another --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on socket {}", path.display()))?;
    // Any local user may ask for downloads, as with a package cache.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// The address peers dial: the configured IP, else the listening IP,
/// else the local IP on the route to the first scheduler.
fn advertised_addr(args: &PeerdArgs, bound: SocketAddr) -> SocketAddr {
    let first_scheduler = args
        .scheduler
        .first()
        .map_or("127.0.0.1:8002", String::as_str);
    let ip = match args.advertise_addr {
        Some(Advertise::Addr(addr)) => return addr,
        Some(Advertise::Ip(ip)) => ip,
        None if !bound.ip().is_unspecified() => bound.ip(),
        None => route_ip(first_scheduler).unwrap_or(IpAddr::from([127, 0, 0, 1])),
    };
    SocketAddr::new(ip, bound.port())
}

/// The source IP the kernel would use toward `target` (no packet is sent).
fn route_ip(target: &str) -> Option<IpAddr> {
    use std::net::ToSocketAddrs;
    let target = target.split("://").last()?.to_socket_addrs().ok()?.next()?;
    let socket = UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
