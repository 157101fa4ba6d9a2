//! Origin credentials stay on the host that was given them: after a
//! download that needed an `Authorization` header, the header's value is
//! in no file under any daemon's directory (data dirs, `meta.pb`, logs at
//! debug level), and no answer of the scheduler or of peerd carries it.

use api::local::LocalClient;
use api::proto::StatTaskRequest;
use api::proto::scheduler_client::SchedulerClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::Cluster;

const SECRET: &str = "s3cret-token-4c1f9e";
const SIZE: usize = 3 << 20;

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            let entries = std::fs::read_dir(&path).expect("read dir");
            pending.extend(entries.flatten().map(|e| e.path()));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn origin_credentials_are_never_written_sent_or_logged() {
    // Every daemon logs at debug level, so a header that reached any log
    // line would show.
    // SAFETY: set before any thread of this test process starts.
    unsafe { std::env::set_var("DFFS_TEST_LOG", "debug") };
    let cluster = Cluster::start(true, 2);
    let header = format!("Authorization: Bearer {SECRET}");
    let (origin, digest) = cluster.serve_file("private.bin", SIZE, &["--require-header", &header]);
    let url = origin.url("private.bin");

    // Without the header the origin refuses, and says so.
    let refused = cluster.peers[1].dfget(&url, &cluster.dir.path().join("no"), &[]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    let owner = &cluster.peers[0];
    let out = cluster.dir.path().join("owner.bin");
    let result = owner.dfget(&url, &out, &["-H", &header]);
    assert!(result.status.success(), "{result:?}");
    assert_eq!(tests::sha256_file(&out), digest);
    // Another host gets the bytes from the cluster, never the header.
    let other = cluster.peers[1].dfget_verified(&url, "other.bin", &digest);
    assert_eq!(tests::sha256_file(&other), digest);
    assert!(
        origin.bytes_served() <= SIZE as u64 + 4096,
        "the origin served {} bytes for a {SIZE}-byte file",
        origin.bytes_served()
    );

    let id = api::task::TaskId::from_source(&url, "", "")
        .expect("valid URL")
        .to_string();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answers = runtime.block_on(async {
        let addr = cluster.scheduler_addr.parse().expect("scheduler address");
        let mut scheduler = SchedulerClient::new(api::transport::scheduler_channel(addr));
        let stat = scheduler
            .stat_task(StatTaskRequest {
                task_id: id.clone(),
            })
            .await
            .expect("the scheduler knows the task")
            .into_inner();
        let local = LocalClient::connect(&owner.socket).await.expect("peerd");
        let listed = local.list(Duration::from_secs(10)).await.expect("list");
        format!("{stat:?} {listed:?}")
    });
    assert!(
        answers.contains(&id),
        "the answers are about the task: {answers}"
    );
    assert!(
        !answers.contains(SECRET),
        "an API returned the secret: {answers}"
    );

    // Logs are flushed as they are written; the data dirs hold meta.pb,
    // the piece logs and the content of every host, the seed's too.
    let files = files_under(cluster.dir.path());
    let needle = SECRET.as_bytes();
    let leaked: Vec<&PathBuf> = files
        .iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect();
    assert!(leaked.is_empty(), "the secret is in {leaked:?}");
    // The search covered the task's metadata on both hosts that hold it.
    // The seed, which lacks the header, was never made the task's root.
    let metas: Vec<&PathBuf> = files.iter().filter(|f| f.ends_with("meta.pb")).collect();
    assert_eq!(metas.len(), 2, "{metas:?}");
    let seed_dir = &cluster.seed.as_ref().expect("a seed").dir;
    assert!(metas.iter().all(|m| !m.starts_with(seed_dir)), "{metas:?}");
}
