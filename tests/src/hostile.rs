//! A hostile host: a gRPC client of the scheduler that announces itself as
//! a host of its own (with a secret of its own) and then sends whatever a
//! test asks, including calls that name other hosts.

use api::identity::HostIdentity;
use api::proto::scheduler_client::SchedulerClient;
use api::proto::*;
use std::time::Duration;
use tonic::transport::Channel;

pub struct Hostile {
    pub identity: HostIdentity,
    client: SchedulerClient<Channel>,
    runtime: tokio::runtime::Runtime,
}

impl Hostile {
    /// Connects to the scheduler at `addr` and announces a new host.
    pub fn join(addr: &str) -> Hostile {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let addr = addr.parse().expect("scheduler address");
        // The channel's connector needs the runtime it will run on.
        let client = {
            let _entered = runtime.enter();
            SchedulerClient::new(api::transport::scheduler_channel(addr))
        };
        let hostile = Hostile {
            identity: HostIdentity::generate(),
            client,
            runtime,
        };
        let host = Some(hostile.host_info());
        hostile
            .call(
                |mut c, r| async move { c.announce_host(r).await },
                AnnounceHostRequest { host },
            )
            .expect("the hostile host may announce itself");
        hostile
    }

    pub fn id(&self) -> String {
        self.identity.id().to_string()
    }

    pub fn host_info(&self) -> HostInfo {
        HostInfo {
            host_id: self.id(),
            hostname: "hostile".into(),
            upload_addr: "127.0.0.1:9".into(),
            ..Default::default()
        }
    }

    /// Sends one call, signed with this host's own secret (whatever host
    /// the message names).
    pub fn call<T, R, F, Fut>(&self, f: F, message: T) -> Result<R, tonic::Status>
    where
        F: FnOnce(SchedulerClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_secs(20));
        self.identity.sign(&mut request);
        let client = self.client.clone();
        self.runtime
            .block_on(async move { f(client, request).await })
            .map(tonic::Response::into_inner)
    }

    pub fn register(
        &self,
        request: RegisterPeerRequest,
    ) -> Result<RegisterPeerResponse, tonic::Status> {
        self.call(|mut c, r| async move { c.register_peer(r).await }, request)
    }

    /// Joins the task of `url` as a plain peer would.
    pub fn join_task(&self, url: &str) -> Result<RegisterPeerResponse, tonic::Status> {
        let task_id = api::task::TaskId::from_source(url, "", "").expect("valid URL");
        self.register(RegisterPeerRequest {
            host_id: self.id(),
            task_id: task_id.to_string(),
            source: Some(TaskSource {
                url: url.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub fn get_parents(&self, task_id: &str) -> Result<GetParentsResponse, tonic::Status> {
        let request = GetParentsRequest {
            host_id: self.id(),
            task_id: task_id.into(),
            want_digests: Vec::new(),
        };
        self.call(|mut c, r| async move { c.get_parents(r).await }, request)
    }

    pub fn report(&self, request: ReportPiecesRequest) -> Result<Empty, tonic::Status> {
        self.call(|mut c, r| async move { c.report_pieces(r).await }, request)
    }

    pub fn report_meta(&self, request: ReportTaskMetaRequest) -> Result<Empty, tonic::Status> {
        self.call(
            |mut c, r| async move { c.report_task_meta(r).await },
            request,
        )
    }

    pub fn leave_host(&self, host_id: &str) -> Result<Empty, tonic::Status> {
        let request = LeaveHostRequest {
            host_id: host_id.into(),
        };
        self.call(|mut c, r| async move { c.leave_host(r).await }, request)
    }
}

/// The host-id a daemon keeps in its data dir.
pub fn host_id_of(data_dir: &std::path::Path) -> String {
    std::fs::read_to_string(data_dir.join("host-id"))
        .expect("the daemon's host-id")
        .trim()
        .to_string()
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
