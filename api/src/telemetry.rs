//! Logs, metrics and shutdown signals, handled the same way by every daemon.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` when set, else by `default`
/// (e.g. "info").
pub fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Latency buckets in seconds, from a page-cache hit to a slow origin.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen on metrics address {addr}: {source}; choose another with --metrics-addr"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
}

/// Installs the global metrics recorder and serves Prometheus text at
/// `http://addr/metrics`. Histograms whose name ends in `_seconds` get
/// real buckets, not summaries.
pub async fn serve_metrics(addr: SocketAddr) -> Result<PrometheusHandle, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let render = handle.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { render.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    Ok(handle)
}

/// How long requests still open at SIGTERM get to finish. Unary calls end
/// in milliseconds; a long stream (a download's progress, a peer's
/// scheduler session) would otherwise hold the daemon up until it ends,
/// which can be many minutes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs a server until SIGINT or SIGTERM, then stops accepting and gives
/// open requests [`SHUTDOWN_GRACE`] to finish before dropping them.
/// `serve` gets the future that tells the server to stop accepting.
pub async fn serve_until_signal<F, E>(
    serve: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve(Box::pin(async move {
        let _ = stop_rx.await;
    }));
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown_signal() => {}
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::info!(
                "requests still open {}s after the stop signal are cut off",
                SHUTDOWN_GRACE.as_secs()
            );
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Linux");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Raises this process's soft limit of open files to its hard limit. peerd
/// holds files per cached task and per connection, and the usual soft
/// limit (1024 under systemd) ran it out of descriptors at about 500
/// tasks. Returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
