//! Keeping the cache within bounds: when it outgrows its quota, or the
//! disk under it fills up, the least recently used tasks are deleted.
//! Tasks with a fetch in progress, or used lately, are kept.

use super::handle::Engine;
use super::task::Task;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub struct Quota {
    /// Most bytes the cache may hold; 0 for no limit.
    pub max_bytes: u64,
    /// Start deleting when the data directory's disk is this full (%).
    pub disk_high_percent: u8,
    /// ... and stop once it is down to this.
    pub disk_low_percent: u8,
    pub interval: Duration,
    /// Tasks used more recently than this are never collected, so a
    /// download just finished is not deleted under its reader.
    pub keep_recent: Duration,
}

/// Collects every `quota.interval` until `stop` is cancelled.
pub async fn run(engine: Engine, quota: Quota, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(quota.interval) => {}
            () = stop.cancelled() => return,
        }
        collect(&engine, &quota);
    }
}

/// One collection; returns how many tasks were deleted.
pub fn collect(engine: &Engine, quota: &Quota) -> usize {
    let tasks = engine.tasks();
    let mut cached: u64 = tasks.iter().map(|t| t.lock().present_bytes).sum();
    metrics::gauge!("dffs_cache_bytes").set(cached as f64);
    let disk = DiskUse::of(engine.ctx.store.data_dir());
    let mut freed_on_disk = 0u64;
    let over = |cached: u64, freed: u64, limit_percent: u8| {
        let over_quota = quota.max_bytes > 0 && cached > quota.max_bytes;
        let over_disk = disk.is_some_and(|d| d.percent_after(freed) > f64::from(limit_percent));
        over_quota || over_disk
    };
    if !over(cached, 0, quota.disk_high_percent) {
        return 0;
    }
    let now = SystemTime::now();
    let mut candidates: Vec<(SystemTime, Arc<Task>)> = tasks
        .into_iter()
        .filter_map(|t| {
            let state = t.lock();
            let recent = now
                .duration_since(state.last_access)
                .map_or(true, |age| age < quota.keep_recent);
            (!recent && !state.has_fetches()).then(|| (state.last_access, t.clone()))
        })
        .collect();
    candidates.sort_by_key(|(at, _)| *at);
    let mut evicted = 0;
    for (_, task) in candidates {
        if !over(cached, freed_on_disk, quota.disk_low_percent) {
            break;
        }
        let bytes = task.lock().present_bytes;
        engine.evict(&task, "quota");
        cached = cached.saturating_sub(bytes);
        freed_on_disk += bytes;
        evicted += 1;
    }
    metrics::gauge!("dffs_cache_bytes").set(cached as f64);
    evicted
}

#[derive(Clone, Copy)]
struct DiskUse {
    total: u64,
    used: u64,
}

impl DiskUse {
    fn of(path: &std::path::Path) -> Option<DiskUse> {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs fills the zeroed struct and reads a valid C string.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        // As df(1) counts: blocks reserved for root are neither used nor
        // available.
        let block = stat.f_frsize;
        let used = (stat.f_blocks - stat.f_bfree) * block;
        let total = used + stat.f_bavail * block;
        (total > 0).then_some(DiskUse { total, used })
    }

    fn percent_after(&self, freed: u64) -> f64 {
        100.0 * self.used.saturating_sub(freed) as f64 / self.total as f64
    }
}
