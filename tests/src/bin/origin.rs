//! A test origin: serves the files of a directory over HTTP, honours
//! `Range`, `HEAD` and `If-Match`, and counts every body byte it sends, so
//! tests can assert how often the cluster went back to the source.
//!
//! - `GET /_stats` returns `{"bytes_served": N, "requests": N}`;
//!   `POST /_reset` zeroes them. Neither counts.
//! - `/status/CODE` answers with that status (e.g. /status/403).
//! - `--ignore-range` answers every GET with the whole file (`200`), like
//!   an origin that does not support ranges.
//! - `--claim-ranges` still says `Accept-Ranges: bytes` when ignoring
//!   them, like a misconfigured proxy.
//! - `--rate BYTES` limits each response to about that many bytes a second.
//! - `--cut-after BYTES` breaks off every response body after that many
//!   bytes, like an origin or proxy that drops long transfers.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Directory whose files are served.
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on; port 0 picks one, printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long)]
    ignore_range: bool,
    #[arg(long)]
    claim_ranges: bool,
    /// Bytes per second per response, 0 for unlimited.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Body bytes after which a response is broken off, 0 for never.
    #[arg(long, default_value_t = 0)]
    cut_after: u64,
    /// 'Name: value' a request must carry, or it is refused with 401.
    #[arg(long)]
    require_header: Option<String>,
}

struct Origin {
    args: Args,
    bytes_served: AtomicU64,
    requests: AtomicU64,
}

const CHUNK: usize = 256 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let origin = Arc::new(Origin {
        args,
        bytes_served: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/_stats", axum::routing::get(stats))
        .route("/_reset", axum::routing::post(reset))
        .route("/status/{code}", axum::routing::any(status))
        .route("/{*path}", axum::routing::get(serve).head(serve))
        .with_state(origin);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn stats(State(origin): State<Arc<Origin>>) -> impl IntoResponse {
    let body = format!(
        "{{\"bytes_served\": {}, \"requests\": {}}}",
        origin.bytes_served.load(Ordering::Relaxed),
        origin.requests.load(Ordering::Relaxed)
    );
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn reset(State(origin): State<Arc<Origin>>) -> StatusCode {
    origin.bytes_served.store(0, Ordering::Relaxed);
    origin.requests.store(0, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn status(Path(code): Path<u16>) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Parses a single `bytes=` range against a file of `len` bytes.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, len.checked_sub(1)?),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.min(len.checked_sub(1)?),
        ),
    };
    (start <= end && end < len).then_some((start, end))
}

async fn serve(
    State(origin): State<Arc<Origin>>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    origin.requests.fetch_add(1, Ordering::Relaxed);
    if path.split('/').any(|part| part == "..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if let Some(required) = &origin.args.require_header {
        let (name, value) = required.split_once(':').unwrap_or((required, ""));
        let given = headers.get(name.trim()).and_then(|v| v.to_str().ok());
        if given != Some(value.trim()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    let file_path = origin.args.root.join(&path);
    let Ok(meta) = tokio::fs::metadata(&file_path).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !meta.is_file() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let len = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let etag = format!("\"{len:x}-{mtime:x}\"");
    if let Some(wanted) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && wanted.trim() != "*"
        && wanted.trim() != etag
    {
        return StatusCode::PRECONDITION_FAILED.into_response();
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(_) if origin.args.ignore_range => None,
        Some(value) => match parse_range(value, len) {
            Some(r) => Some(r),
            None => {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .body(Body::empty())
                    .expect("valid response");
            }
        },
        None => None,
    };
    let (status, start, end) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e + 1),
        None => (StatusCode::OK, 0, len),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ETAG, &etag);
    if !origin.args.ignore_range || origin.args.claim_ranges {
        builder = builder.header(header::ACCEPT_RANGES, "bytes");
    }
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    // One line per request, so a failing test's log shows what was asked.
    println!("{method} {path} bytes {start}-{end} {status}");
    if method == Method::HEAD {
        return builder.body(Body::empty()).expect("valid response");
    }
    let body = body_stream(origin.clone(), file_path, start, end);
    builder
        .body(Body::from_stream(body))
        .expect("valid response")
}

fn body_stream(
    origin: Arc<Origin>,
    path: PathBuf,
    start: u64,
    end: u64,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::unfold((None::<tokio::fs::File>, start), move |(file, pos)| {
        let origin = origin.clone();
        let path = path.clone();
        async move {
            if pos >= end {
                return None;
            }
            let cut = origin.args.cut_after;
            if cut > 0 && pos - start >= cut {
                let broken = std::io::Error::other("response broken off (--cut-after)");
                return Some((Err(broken), (None, end)));
            }
            let mut file = match file {
                Some(f) => f,
                None => {
                    let mut f = match tokio::fs::File::open(&path).await {
                        Ok(f) => f,
                        Err(e) => return Some((Err(e), (None, end))),
                    };
                    if let Err(e) = f.seek(std::io::SeekFrom::Start(pos)).await {
                        return Some((Err(e), (None, end)));
                    }
                    f
                }
            };
            let want = CHUNK.min((end - pos) as usize);
            let mut buf = vec![0u8; want];
            if let Err(e) = file.read_exact(&mut buf).await {
                return Some((Err(e), (None, end)));
            }
            if origin.args.rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(
                    want as f64 / origin.args.rate as f64,
                ))
                .await;
            }
            origin
                .bytes_served
                .fetch_add(want as u64, Ordering::Relaxed);
            Some((Ok(bytes::Bytes::from(buf)), (Some(file), pos + want as u64)))
        }
    })
}
