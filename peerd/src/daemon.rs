//! Starting and stopping peerd (and the seed, which is peerd in seed mode).

use crate::background;
use crate::config::{Advertise, PeerdArgs};
use crate::engine::{Engine, EngineParts, EngineSettings};
use crate::link::{SchedulerLink, SchedulerName};
use crate::local_api::LocalApi;
use crate::origin::Origin;
use crate::ratelimit::{ByteLimit, HostLimits};
use crate::storage::Store;
use crate::upload::client::PieceClient;
use crate::upload::server::UploadServer;
use anyhow::Context;
use api::proto::HostInfo;
use api::proto::peer_server::PeerServer;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub async fn run(args: PeerdArgs) -> anyhow::Result<()> {
    let role = if args.seed { "seed" } else { "peerd" };
    let open_files = api::telemetry::raise_open_files_limit();
    tracing::debug!(open_files, "open files limit");
    api::telemetry::serve_metrics(args.metrics_addr).await?;
    let store = Store::open(&args.data_dir)?;
    let identity = store.host_identity()?;
    let host_id = identity.id().to_string();
    let upload = TcpListener::bind(args.upload_addr).await.with_context(|| {
        format!(
            "cannot listen on upload address {}; choose another with --upload-addr",
            args.upload_addr
        )
    })?;
    let names = args
        .scheduler
        .iter()
        .filter(|a| !a.trim().is_empty())
        .map(|a| SchedulerName::parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    let schedulers = background::resolve_names(&names)?;
    let advertised = advertised_addr(&args, upload.local_addr()?, schedulers[0]);
    let host = HostInfo {
        host_id: host_id.clone(),
        hostname: hostname(),
        upload_addr: advertised.to_string(),
        is_seed: args.seed,
        upload_limit: args.upload_rate_limit,
        uploads_in_flight: 0,
    };
    let link = Arc::new(SchedulerLink::new(&schedulers, host, identity));
    let limits = HostLimits {
        download: ByteLimit::new(args.download_rate_limit),
        upload: ByteLimit::new(args.upload_rate_limit),
    };
    let engine = engine(&args, store, link, &limits, advertised.port());
    let uploads = Arc::new(UploadServer::new(
        Arc::new(engine.clone()),
        limits.upload.clone(),
        args.max_uploads,
    ));
    let socket = bind_socket(&args.socket).await?;
    let loops = Loops::start(&args, &engine, uploads, upload, names);
    tracing::info!(role, host = %host_id, upload = %advertised, socket = %args.socket.display(), data = %args.data_dir.display(), "started");

    let api = PeerServer::new(LocalApi::new(engine.clone()));
    api::telemetry::serve_until_signal(|stop| {
        api::transport::grpc_server()
            .add_service(api)
            .serve_with_incoming_shutdown(api::transport::unix_incoming(socket), stop)
    })
    .await?;
    tracing::info!("shutting down");
    loops.stop(&engine).await;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

fn engine(
    args: &PeerdArgs,
    store: Store,
    link: Arc<SchedulerLink>,
    limits: &HostLimits,
    upload_port: u16,
) -> Engine {
    let connect_timeout = Duration::from_secs(args.connect_timeout_seconds.max(1));
    Engine::new(EngineParts {
        store,
        link,
        pieces: PieceClient::new(connect_timeout, limits.download.clone()),
        origin: Origin::new(connect_timeout),
        limits: limits.clone(),
        settings: EngineSettings {
            requests_per_parent: args.requests_per_parent.max(1),
            origin_requests_per_task: args.origin_requests_per_task.max(1),
            bulk_window: args.download_slots,
            upload_port,
            commit_interval: Duration::from_millis(args.commit_interval_ms),
            download_slots: args.download_slots,
            seed: args.seed,
        },
    })
}

/// peerd's background loops, under two stop tokens, so shutdown runs in
/// this order: the local API stops taking calls (the signal), then the
/// control loops stop (announcing, seed sessions, following scheduler
/// names, cache collection), then the upload server stops accepting
/// (children mid-piece had the API's grace period to finish), then the
/// engine commits every piece, sends the reports still queued and leaves
/// the cluster, and last the reporter stops.
struct Loops {
    control: CancellationToken,
    control_loops: JoinSet<()>,
    data: CancellationToken,
    data_loops: JoinSet<()>,
    reporter: tokio::task::JoinHandle<()>,
}

impl Loops {
    fn start(
        args: &PeerdArgs,
        engine: &Engine,
        uploads: Arc<UploadServer<Engine>>,
        upload: TcpListener,
        names: Vec<SchedulerName>,
    ) -> Loops {
        let (control, data) = (CancellationToken::new(), CancellationToken::new());
        let mut data_loops = JoinSet::new();
        let in_flight = uploads.in_flight();
        data_loops.spawn(uploads.serve(upload, data.clone()));
        let link = engine.link().clone();
        let reporter = tokio::spawn({
            let stop = data.clone();
            async move { link.run_reporter(stop).await }
        });
        let mut control_loops = JoinSet::new();
        let stop = || control.clone();
        control_loops.spawn(background::announce(engine.clone(), in_flight, stop()));
        control_loops.spawn(background::follow_names(engine.clone(), names, stop()));
        control_loops.spawn(crate::engine::gc::run(engine.clone(), quota(args), stop()));
        if args.seed {
            control_loops.spawn(crate::seed::run(engine.clone(), stop()));
        }
        Loops {
            control,
            control_loops,
            data,
            data_loops,
            reporter,
        }
    }

    async fn stop(mut self, engine: &Engine) {
        self.control.cancel();
        while self.control_loops.join_next().await.is_some() {}
        self.data.cancel();
        while self.data_loops.join_next().await.is_some() {}
        engine.shutdown().await;
        self.reporter.abort();
    }
}

fn quota(args: &PeerdArgs) -> crate::engine::gc::Quota {
    crate::engine::gc::Quota {
        max_bytes: args.cache_max_bytes,
        disk_high_percent: args.disk_high_percent,
        disk_low_percent: args.disk_low_percent.min(args.disk_high_percent),
        interval: Duration::from_secs(args.gc_interval_seconds.max(1)),
        keep_recent: Duration::from_secs(args.gc_keep_recent_seconds),
    }
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
/// else the local IP on the route to a scheduler.
fn advertised_addr(args: &PeerdArgs, bound: SocketAddr, scheduler: SocketAddr) -> SocketAddr {
    let ip = match args.advertise_addr {
        Some(Advertise::Addr(addr)) => return addr,
        Some(Advertise::Ip(ip)) => ip,
        None if !bound.ip().is_unspecified() => bound.ip(),
        None => route_ip(scheduler).unwrap_or(IpAddr::from([127, 0, 0, 1])),
    };
    SocketAddr::new(ip, bound.port())
}

/// The source IP the kernel would use toward `target` (no packet is sent).
fn route_ip(target: SocketAddr) -> Option<IpAddr> {
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
