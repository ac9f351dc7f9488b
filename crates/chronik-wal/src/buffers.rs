//! Read buffers reused across reads. A read fills one buffer and hands out `Bytes` slices of it (the
//! batches go to the caller, e.g. straight into a Fetch response); when the last slice is dropped the
//! buffer comes back here instead of being freed, so steady reads neither allocate nor fault in fresh
//! zeroed pages. Bounded in count and in the size of buffer kept.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

/// Buffers kept for reuse.
const MAX_POOLED: usize = 32;
/// Larger buffers (one huge read) are freed, not kept.
const MAX_POOLED_SIZE: usize = 8 << 20;

#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// A buffer of exactly `len` bytes, contents unspecified (the caller overwrites them).
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let reused = if len > MAX_POOLED_SIZE {
            None // would not be kept: leave the pooled ones for reads that fit
        } else {
            let mut free = self.free.lock();
            // Prefer one that is already big enough; else any (growing it is still cheaper than a new one).
            match free.iter().position(|b| b.capacity() >= len) {
                Some(i) => Some(free.swap_remove(i)),
                None => free.pop(),
            }
        };
        let mut buf = reused.unwrap_or_default();
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        PooledBuf {
            buf,
            pool: Arc::downgrade(self),
        }
    }

    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.free.lock().len()
    }
}

/// A buffer on loan from a [`BufferPool`]; it goes back when dropped.
#[derive(Debug)]
pub(crate) struct PooledBuf {
    buf: Vec<u8>,
    pool: Weak<BufferPool>,
}

impl PooledBuf {
    /// Shares the buffer as `Bytes`; it returns to the pool when the last slice is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else { return };
        if self.buf.capacity() > MAX_POOLED_SIZE {
            return;
        }
        let mut free = pool.free.lock();
        if free.len() < MAX_POOLED {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_when_the_last_slice_drops_and_are_reused() {
        let pool = Arc::new(BufferPool::default());
        let mut b = pool.take(4096);
        b[..3].copy_from_slice(b"abc");
        let ptr = b.as_ptr();
        let bytes = b.freeze();
        let slice = bytes.slice(0..3);
        drop(bytes);
        assert_eq!(pool.pooled(), 0, "a slice still holds it");
        assert_eq!(&slice[..], b"abc");
        drop(slice);
        assert_eq!(pool.pooled(), 1);
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), ptr, "the same memory is reused");
        assert_eq!(again.len(), 1000);
        assert_eq!(pool.pooled(), 0);
    }

    #[test]
    fn the_pool_is_bounded() {
        let pool = Arc::new(BufferPool::default());
        let loans: Vec<_> = (0..MAX_POOLED + 5).map(|_| pool.take(10)).collect();
        drop(loans);
        assert_eq!(pool.pooled(), MAX_POOLED);
        drop(pool.take(MAX_POOLED_SIZE + 1));
        assert_eq!(pool.pooled(), MAX_POOLED, "oversized buffers are not kept");
    }
}
