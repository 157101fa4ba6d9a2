//! Host-wide byte-rate limits for downloads and uploads (off by default).

use leaky_bucket::RateLimiter;
use std::sync::Arc;
use std::time::Duration;

/// Bytes are taken from a limit in chunks of at most this size, so a large
/// piece waits in small steps and shares the host's rate fairly.
pub const CHUNK: usize = 64 * 1024;

/// One byte-rate limit, or none.
#[derive(Clone, Default)]
pub struct ByteLimit(Option<Arc<RateLimiter>>);

impl ByteLimit {
    /// A limit of `bytes_per_second`, or no limit when it is 0.
    pub fn new(bytes_per_second: u64) -> ByteLimit {
        if bytes_per_second == 0 {
            return ByteLimit(None);
        }
        // Refill ten times a second; the bucket holds a tenth of a second of
        // traffic, and at least one chunk so no request can outgrow it.
        let refill = (bytes_per_second / 10).max(1) as usize;
        let max = refill.max(CHUNK);
        let limiter = RateLimiter::builder()
            .max(max)
            .initial(max)
            .refill(refill)
            .interval(Duration::from_millis(100))
            .build();
        ByteLimit(Some(Arc::new(limiter)))
    }

    pub fn is_limited(&self) -> bool {
        self.0.is_some()
    }

    /// Waits until `bytes` may pass, taking them a chunk at a time.
    pub async fn take(&self, bytes: usize) {
        if let Some(limiter) = &self.0 {
            let mut left = bytes;
            while left > 0 {
                let step = left.min(CHUNK);
                limiter.acquire(step).await;
                left -= step;
            }
        }
    }
}

#[derive(Clone, Default)]
pub struct HostLimits {
    pub download: ByteLimit,
    pub upload: ByteLimit,
}
