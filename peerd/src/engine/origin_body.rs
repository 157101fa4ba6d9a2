//! Reading an origin response's body: each chunk waits for the host's
//! download limit and is counted in the metrics, and a body that is longer
//! or shorter than announced is an error that names the URL.

use super::context::Context;
use super::error::EngineError;
use super::labels;

pub(super) struct OriginBody<'a> {
    ctx: &'a Context,
    response: reqwest::Response,
    url: String,
    /// The priority label its bytes are counted under.
    label: &'static str,
}

impl<'a> OriginBody<'a> {
    pub(super) fn new(
        ctx: &'a Context,
        response: reqwest::Response,
        url: &str,
        label: &'static str,
    ) -> Self {
        OriginBody {
            ctx,
            response,
            url: url.to_string(),
            label,
        }
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// The next chunk, None at the end of the body.
    pub(super) async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, EngineError> {
        let chunk = self
            .response
            .chunk()
            .await
            .map_err(|e| EngineError::Origin {
                http_status: 0,
                message: format!(
                    "reading from origin {} failed: {}",
                    self.url,
                    crate::origin::describe(&e)
                ),
                retryable: true,
            })?;
        if let Some(chunk) = &chunk {
            self.ctx.limits.download.take(chunk.len()).await;
            metrics::counter!("dffs_download_bytes_total", "source" => labels::FROM_ORIGIN, "priority" => self.label)
                .increment(chunk.len() as u64);
        }
        Ok(chunk)
    }

    /// The whole body, which must be exactly `len` bytes.
    pub(super) async fn read_exact(mut self, len: u64) -> Result<Vec<u8>, EngineError> {
        let mut bytes = Vec::with_capacity(len as usize);
        while let Some(chunk) = self.chunk().await? {
            if bytes.len() + chunk.len() > len as usize {
                return Err(wrong_length(&self.url, "more"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != len {
            return Err(wrong_length(&self.url, "fewer"));
        }
        Ok(bytes)
    }
}

/// The origin sent `which` ("more", "fewer") bytes than it announced.
pub(super) fn wrong_length(url: &str, which: &str) -> EngineError {
    EngineError::Origin {
        http_status: 0,
        message: format!("origin sent {which} bytes than it announced for {url}"),
        retryable: true,
    }
}
