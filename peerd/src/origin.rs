//! Back-to-source: talking HTTP to the origin.
//!
//! Pieces are fetched with ranged GETs, and every `206` is checked against
//! the range asked for, so a confused origin or proxy can never make peerd
//! store bytes at the wrong offset. An origin that ignores `Range` answers
//! `200` with the whole object; the caller then consumes that one response
//! for every piece instead of asking again.

use api::proto::{Header, TaskMeta, TaskSource};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::ops::Range;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin returned {status} for {url}")]
    Status { url: String, status: StatusCode },
    #[error("cannot reach origin for {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("origin sent a wrong range for {url}: asked for bytes {asked}, got {got}")]
    WrongRange {
        url: String,
        asked: String,
        got: String,
    },
    #[error(
        "the object at {url} changed while it was being distributed ({what}); download it again"
    )]
    Changed { url: String, what: String },
    #[error("origin gave no length for {url}; dffs needs Content-Length or Content-Range")]
    NoLength { url: String },
    #[error("invalid header '{name}': {reason}")]
    BadHeader { name: String, reason: String },
}

impl OriginError {
    /// The HTTP status to report to the scheduler, 0 when there was none.
    pub fn http_status(&self) -> u32 {
        match self {
            OriginError::Status { status, .. } => u32::from(status.as_u16()),
            _ => 0,
        }
    }
}

/// What a resolve learns about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub content_length: u64,
    pub etag: String,
    pub last_modified: String,
    /// The origin says it serves byte ranges.
    pub accepts_ranges: bool,
}

/// A GET's body, and whether it is the range asked for or the whole object.
pub enum Body {
    Range(reqwest::Response),
    Whole(reqwest::Response),
}

#[derive(Clone)]
pub struct Origin {
    client: reqwest::Client,
}

impl Origin {
    pub fn new(connect_timeout: Duration) -> Origin {
        let client = reqwest::Client::builder()
            // peerd may itself be the host's proxy; never loop back into it.
            .no_proxy()
            .connect_timeout(connect_timeout)
            .read_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("dffs-peerd/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("building the HTTP client");
        Origin { client }
    }

    /// Learns the object's length and validators without its body: a HEAD,
    /// or a one-byte ranged GET when HEAD gives no length.
    pub async fn resolve(
        &self,
        source: &TaskSource,
        credentials: &Credentials,
    ) -> Result<Resolved, OriginError> {
        let headers = credentials.0.clone();
        let head = self
            .send(
                self.client.head(&source.url).headers(headers.clone()),
                &source.url,
            )
            .await?;
        if head.status().is_success() {
            if let Some(length) = header_u64(head.headers(), header::CONTENT_LENGTH) {
                let ranges = says_it_serves_ranges(head.headers());
                return Ok(resolved(length, head.headers(), ranges));
            }
        } else if !matches!(
            head.status(),
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
        ) {
            return Err(status_error(&source.url, head.status()));
        }
        let probe = self
            .client
            .get(&source.url)
            .headers(headers)
            .header(header::RANGE, "bytes=0-0");
        let response = self.send(probe, &source.url).await?;
        let length = match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                parse_content_range(response.headers()).map(|(_, total)| total)
            }
            StatusCode::OK => header_u64(response.headers(), header::CONTENT_LENGTH),
            // An empty object cannot satisfy bytes=0-0.
            StatusCode::RANGE_NOT_SATISFIABLE => Some(0),
            status => return Err(status_error(&source.url, status)),
        };
        let length = length.ok_or_else(|| OriginError::NoLength {
            url: source.url.clone(),
        })?;
        let ranges = response.status() == StatusCode::PARTIAL_CONTENT;
        Ok(resolved(length, response.headers(), ranges))
    }

    /// GETs `range` of the task's object.
    pub async fn get(
        &self,
        meta: &TaskMeta,
        credentials: &Credentials,
        range: Range<u64>,
    ) -> Result<Body, OriginError> {
        let url = meta.source.as_ref().map_or("", |s| s.url.as_str());
        let url = &url.to_string();
        let mut request = self.client.get(url).headers(credentials.0.clone()).header(
            header::RANGE,
            format!("bytes={}-{}", range.start, range.end - 1),
        );
        if !meta.etag.is_empty() && !meta.etag.starts_with("W/") {
            request = request.header(header::IF_MATCH, &meta.etag);
        }
        let response = self.send(request, url).await?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let asked = format!("{}-{}/{}", range.start, range.end - 1, meta.content_length);
                match parse_content_range(response.headers()) {
                    Some((got, total)) if got == range && total == meta.content_length => {
                        Ok(Body::Range(response))
                    }
                    Some((got, total)) => Err(OriginError::WrongRange {
                        url: url.clone(),
                        asked,
                        got: format!("{}-{}/{}", got.start, got.end.saturating_sub(1), total),
                    }),
                    None => Err(OriginError::WrongRange {
                        url: url.clone(),
                        asked,
                        got: "a 206 without a valid Content-Range".into(),
                    }),
                }
            }
            StatusCode::OK => match header_u64(response.headers(), header::CONTENT_LENGTH) {
                Some(len) if len != meta.content_length => Err(OriginError::Changed {
                    url: url.clone(),
                    what: format!("length was {}, is now {len}", meta.content_length),
                }),
                _ => Ok(Body::Whole(response)),
            },
            StatusCode::PRECONDITION_FAILED => Err(OriginError::Changed {
                url: url.clone(),
                what: "its ETag no longer matches".into(),
            }),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(OriginError::Changed {
                url: url.clone(),
                what: "it is now shorter".into(),
            }),
            status => Err(status_error(url, status)),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, OriginError> {
        request.send().await.map_err(|e| OriginError::Unreachable {
            url: url.to_string(),
            reason: describe(&e),
        })
    }
}

/// A reqwest error with its causes, which hold the useful part
/// ("connection refused", "dns error").
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn status_error(url: &str, status: StatusCode) -> OriginError {
    OriginError::Status {
        url: url.to_string(),
        status,
    }
}

/// `Accept-Ranges: bytes` (RFC 9110 §14.3; `none` or no header says no).
fn says_it_serves_ranges(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_RANGES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"))
}

fn resolved(content_length: u64, headers: &HeaderMap, accepts_ranges: bool) -> Resolved {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    Resolved {
        content_length,
        etag: text(header::ETAG),
        last_modified: text(header::LAST_MODIFIED),
        accepts_ranges,
    }
}

fn header_u64(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Parses `Content-Range: bytes START-END/TOTAL` into (START..END+1, TOTAL).
fn parse_content_range(headers: &HeaderMap) -> Option<(Range<u64>, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end, total): (u64, u64, u64) =
        (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start..end + 1, total))
}

/// The headers a user gave for the origin (`dfget -H`), checked. They stay
/// in this process's memory: they are never written to disk, never sent to
/// another host, and never logged (`Debug` shows only their names).
#[derive(Clone, Default)]
pub struct Credentials(HeaderMap);

impl Credentials {
    /// Checks user headers, refusing ones that would break ranged fetching.
    pub fn parse(headers: &[Header]) -> Result<Credentials, OriginError> {
        request_headers(headers).map(Credentials)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

fn request_headers(headers: &[Header]) -> Result<HeaderMap, OriginError> {
    let mut map = HeaderMap::new();
    for h in headers {
        let bad = |reason: &str| OriginError::BadHeader {
            name: h.name.clone(),
            reason: reason.to_string(),
        };
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad("not a valid header name"))?;
        if name == header::RANGE || name == header::IF_MATCH {
            return Err(bad("dffs sets this header itself"));
        }
        let value =
            HeaderValue::from_str(&h.value).map_err(|_| bad("the value has invalid characters"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_a_bytes_unit_in_accept_ranges_says_ranges_are_served() {
        let says = |v: &str| says_it_serves_ranges(&headers(&[("accept-ranges", v)]));
        assert!(says("bytes"));
        assert!(says("Bytes"));
        assert!(says("none, bytes"));
        assert!(!says("none"));
        assert!(!says("bytesize"));
        assert!(!says_it_serves_ranges(&HeaderMap::new()));
    }

    #[test]
    fn content_range_parsing_is_strict() {
        let parse = |v| parse_content_range(&headers(&[("content-range", v)]));
        assert_eq!(parse("bytes 0-99/1000"), Some((0..100, 1000)));
        assert_eq!(parse("bytes 10-9/1000"), None);
        assert_eq!(parse("bytes 0-1000/1000"), None);
        assert_eq!(parse("bytes 0-99/*"), None);
        assert_eq!(parse("items 0-9/10"), None);
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        let h = |n: &str, v: &str| Header {
            name: n.into(),
            value: v.into(),
        };
        assert!(request_headers(&[h("Authorization", "Bearer x")]).is_ok());
        let err = request_headers(&[h("Range", "bytes=0-1")]).unwrap_err();
        assert!(err.to_string().contains("'Range'"));
        assert!(request_headers(&[h("Bad Name", "x")]).is_err());
        assert!(request_headers(&[h("X", "line\nbreak")]).is_err());
    }

    #[test]
    fn credentials_never_show_their_values() {
        let secret = Header {
            name: "Authorization".into(),
            value: "Bearer s3cr3t".into(),
        };
        let credentials = Credentials::parse(&[secret]).unwrap();
        let shown = format!("{credentials:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
