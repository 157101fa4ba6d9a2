//! The dffs scheduler.
//!
//! It keeps, in memory, every task, the hosts that hold its pieces and which
//! pieces each holds. Peers ask it for parents; seeds keep a stream open to
//! it and receive the tasks they should root. Losing a scheduler loses no
//! data: peers announce themselves again and re-report what they hold.

mod limits;
mod pieces;
pub mod ranking;
mod registration;
pub mod service;
pub mod state;

use api::proto::scheduler_server::SchedulerServer;
use clap::Parser;
use state::{Cluster, SchedulerSettings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Every flag is also a key of the `--config` TOML file.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "scheduler",
    version,
    about = "dffs scheduler: picks parents for every downloading peer"
)]
pub struct Args {
    /// TOML file whose keys are these flags' long names.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// gRPC address peers and seeds connect to.
    #[arg(long, default_value = "0.0.0.0:8002")]
    pub listen: SocketAddr,
    /// Prometheus metrics at http://ADDR/metrics.
    #[arg(long, default_value = "127.0.0.1:8003")]
    pub metrics_addr: SocketAddr,
    /// Parents offered to a peer per request.
    #[arg(long, default_value_t = 20)]
    pub max_parents: usize,
    /// Seconds between host keepalives.
    #[arg(long, default_value_t = 5)]
    pub keepalive_seconds: u64,
    /// Seconds of silence after which a host and its peers are dropped.
    #[arg(long, default_value_t = 20)]
    pub host_timeout_seconds: u64,
    /// Seconds a host that served corrupt pieces stays out of parent lists.
    #[arg(long, default_value_t = 600)]
    pub isolation_seconds: u64,
    /// Log filter when RUST_LOG is unset.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl Args {
    fn settings(&self) -> SchedulerSettings {
        SchedulerSettings {
            max_parents: self.max_parents.max(1),
            keepalive: Duration::from_secs(self.keepalive_seconds.max(1)),
            host_timeout: Duration::from_secs(self.host_timeout_seconds.max(2)),
            isolation: Duration::from_secs(self.isolation_seconds),
            ..SchedulerSettings::default()
        }
    }
}

/// Runs the scheduler until the process is stopped.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // One connection per host: a fleet needs more than the default 1024.
    let open_files = api::telemetry::raise_open_files_limit();
    tracing::debug!(open_files, "open files limit");
    api::telemetry::serve_metrics(args.metrics_addr).await?;
    let cluster = Arc::new(Mutex::new(Cluster::new(args.settings())));
    let stop = CancellationToken::new();
    let expiry = tokio::spawn(expire_every_second(cluster.clone(), stop.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e}; choose another with --listen",
                args.listen
            )
        })?;
    tracing::info!(addr = %args.listen, "scheduler listening");
    let service = SchedulerServer::new(service::SchedulerService::new(cluster));
    api::telemetry::serve_until_signal(|stop| {
        api::transport::grpc_server()
            .add_service(service)
            .serve_with_incoming_shutdown(api::transport::tcp_incoming(listener), stop)
    })
    .await?;
    stop.cancel();
    let _ = expiry.await;
    Ok(())
}

/// Drops silent hosts and stale tasks once a second, until `stop`.
async fn expire_every_second(cluster: Arc<Mutex<Cluster>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(Instant::now());
    }
}
