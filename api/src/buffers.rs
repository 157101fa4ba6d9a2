//! Reusable byte buffers.
//!
//! peerd receives every piece from a peer into memory, verifies it, then
//! writes it to the cache; dffs reads every cached range into memory to
//! reply to the kernel. Reusing a few buffers keeps that memory warm
//! instead of allocating (and faulting in, and zeroing) a fresh megabyte
//! for every piece or read.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept for reuse; more than the transfers or reads in flight at
/// once is waste.
const MAX_IDLE: usize = 64;

#[derive(Default)]
pub struct BufferPool {
    idle: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// An empty pool, usable as a `static`.
    pub const fn new() -> Self {
        BufferPool {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified).
    pub fn take(&self, len: usize) -> PooledBuffer<'_> {
        let mut buf = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        buf.resize(len, 0);
        PooledBuffer { buf, pool: self }
    }
}

pub struct PooledBuffer<'a> {
    buf: Vec<u8>,
    pool: &'a BufferPool,
}

impl Deref for PooledBuffer<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for PooledBuffer<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PooledBuffer<'_> {
    fn drop(&mut self) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(std::mem::take(&mut self.buf));
        }
    }
}
