//! peerd's (and the seed's) flags. Every flag is also a `--config` key.

use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "peerd",
    version,
    about = "dffs peer daemon: piece cache, P2P downloads and uploads"
)]
pub struct PeerdArgs {
    /// TOML file whose keys are these flags' long names.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Scheduler addresses, HOST:PORT, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8002")]
    pub scheduler: Vec<String>,
    /// Where the piece cache lives.
    #[arg(long, default_value = "/var/lib/dffs/peerd")]
    pub data_dir: PathBuf,
    /// Unix socket of the local API (dfget, dffs).
    #[arg(long, default_value = "/run/dffs/peerd.sock")]
    pub socket: PathBuf,
    /// Where other peers fetch pieces from this host. Port 0 picks a free one.
    #[arg(long, default_value = "0.0.0.0:65002")]
    pub upload_addr: SocketAddr,
    /// IP (or IP:PORT) other peers should use to reach this host; by
    /// default the address this host uses to reach the scheduler, and the
    /// upload port.
    #[arg(long, value_parser = parse_advertise)]
    pub advertise_addr: Option<Advertise>,
    /// Prometheus metrics at http://ADDR/metrics.
    #[arg(long, default_value = "127.0.0.1:65003")]
    pub metrics_addr: SocketAddr,
    /// Host-wide download limit in bytes per second (K, M, G suffixes; 0 = none).
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub download_rate_limit: u64,
    /// Host-wide upload limit in bytes per second (K, M, G suffixes; 0 = none).
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub upload_rate_limit: u64,
    /// Piece downloads in flight at once on this host. In a busy swarm a
    /// piece takes a few hundred milliseconds to arrive, and 32 requests
    /// keep a 100 Mbit/s link full where 16 did not.
    #[arg(long, default_value_t = 32)]
    pub download_slots: usize,
    /// Piece requests in flight to one parent at once. A parent holding
    /// many pieces this host lacks is kept busy with a deeper queue: with 8
    /// rather than 4, 24 hosts on 100 Mbit/s links kept their downlinks
    /// 89-94% full instead of 84-91%, and dfget finished at a median 1.19
    /// of the line-rate bound instead of 1.22 (16 did worse again: 1.21).
    #[arg(long, default_value_t = 8)]
    pub requests_per_parent: u32,
    /// Ranged GETs in flight to the origin per task.
    #[arg(long, default_value_t = 4)]
    pub origin_requests_per_task: usize,
    /// Pieces sent to other peers at once; further requests queue.
    #[arg(long, default_value_t = 64)]
    pub max_uploads: u32,
    /// Most bytes the piece cache may hold (K, M, G suffixes; 0 = no limit).
    /// Least recently used tasks are deleted past it.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub cache_max_bytes: u64,
    /// Delete least recently used tasks when the data directory's disk is
    /// this full (percent)...
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub disk_high_percent: u8,
    /// ... until it is down to this (percent).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub disk_low_percent: u8,
    /// Seconds between cache collections.
    #[arg(long, default_value_t = 10)]
    pub gc_interval_seconds: u64,
    /// Tasks used in the last this many seconds are never collected.
    #[arg(long, default_value_t = 60)]
    pub gc_keep_recent_seconds: u64,
    /// Longest a downloaded piece waits before it is synced to disk and
    /// recorded in the piece log (milliseconds). After a crash, pieces not
    /// yet recorded are fetched again. Short intervals sync while downloads
    /// run, and that writeback took a fifth of a cold read's speed.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub commit_interval_ms: u64,
    /// Seconds allowed for connecting to a parent or the origin.
    #[arg(long, default_value_t = 5)]
    pub connect_timeout_seconds: u64,
    /// Run as a seed: the root of new tasks, fetching from the origin.
    #[arg(long)]
    pub seed: bool,
    /// Log filter when RUST_LOG is unset.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// What peerd tells others about where it uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    Ip(IpAddr),
    Addr(SocketAddr),
}

fn parse_advertise(text: &str) -> Result<Advertise, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Advertise::Addr(addr));
    }
    text.parse::<IpAddr>()
        .map(Advertise::Ip)
        .map_err(|_| format!("'{text}' is neither an IP nor IP:PORT"))
}

/// Parses a byte rate such as `0`, `1048576`, `100M`, `1.5G` or `512KiB`
/// (powers of 1024).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a byte rate such as 100M or 1G"))?;
    let scale: u64 = match unit
        .trim()
        .trim_end_matches("/s")
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit '{other}' in '{text}'; use K, M or G")),
    };
    Ok((number * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("100M"), Ok(100 << 20));
        assert_eq!(parse_rate("512KiB"), Ok(512 << 10));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert!(parse_rate("fast").unwrap_err().contains("'fast'"));
        assert!(parse_rate("10X").unwrap_err().contains("'x'"));
    }
}
