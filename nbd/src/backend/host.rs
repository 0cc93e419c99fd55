//! Sparse host-memory store: chunks are allocated on first write, so a large export costs nothing
//! until it is written; trimming a whole chunk frees it.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, StoreError, pieces};

/// Default chunk: large enough that lock and lookup cost vanish next to the copy, small enough
/// that sparse use stays cheap.
pub const DEFAULT_CHUNK: u64 = 1 << 20;

pub struct HostMemory {
    size: u64,
    chunk: u64,
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
    allocated: AtomicU64,
}

impl HostMemory {
    pub fn new(size: u64) -> Self {
        Self::with_chunk(size, DEFAULT_CHUNK)
    }

    /// `chunk` must be a power of two; it is clamped to at least 4 KiB.
    pub fn with_chunk(size: u64, chunk: u64) -> Self {
        let chunk = chunk.max(4096).next_power_of_two();
        let n = size.div_ceil(chunk) as usize;
        let chunks = (0..n).map(|_| RwLock::new(None)).collect();
        Self {
            size,
            chunk,
            chunks,
            allocated: AtomicU64::new(0),
        }
    }

    fn chunk_len(&self, idx: usize) -> usize {
        let start = idx as u64 * self.chunk;
        (self.size - start).min(self.chunk) as usize
    }
}

// A poisoned lock only means another request panicked mid-copy; the bytes are still memory, so keep serving.
fn rd<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn wr<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Backend for HostMemory {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let mut at = 0usize;
        for (idx, within, n) in pieces(offset, buf.len() as u64, self.chunk) {
            let dst = &mut buf[at..at + n];
            match rd(&self.chunks[idx]).as_deref() {
                Some(c) => dst.copy_from_slice(&c[within..within + n]),
                None => dst.fill(0),
            }
            at += n;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut at = 0usize;
        for (idx, within, n) in pieces(offset, data.len() as u64, self.chunk) {
            let mut g = wr(&self.chunks[idx]);
            let c = match &mut *g {
                Some(c) => c,
                slot => {
                    let len = self.chunk_len(idx);
                    // Zeroed allocation (calloc/mmap): pages are only touched as they are written.
                    let v = vec![0u8; len].into_boxed_slice();
                    self.allocated.fetch_add(len as u64, Ordering::Relaxed);
                    slot.insert(v)
                }
            };
            c[within..within + n].copy_from_slice(&data[at..at + n]);
            at += n;
        }
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64, may_free: bool) -> Result<(), StoreError> {
        for (idx, within, n) in pieces(offset, len, self.chunk) {
            let mut g = wr(&self.chunks[idx]);
            let whole = within == 0 && n == self.chunk_len(idx);
            if whole && may_free {
                if let Some(c) = g.take() {
                    self.allocated.fetch_sub(c.len() as u64, Ordering::Relaxed);
                }
            } else if let Some(c) = &mut *g {
                c[within..within + n].fill(0);
            }
            // An unallocated chunk already reads as zeros: nothing to do, and nothing allocated.
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn blocking(&self) -> bool {
        false
    }

    fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!(
            "host memory, {} bytes, sparse chunks of {} KiB",
            self.size,
            self.chunk / 1024
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_until_written_and_trim_frees() {
        let m = HostMemory::with_chunk(1 << 30, 1 << 20);
        assert_eq!(m.allocated(), 0);
        let mut buf = vec![0xffu8; 8192];
        m.read(5 << 20, &mut buf).expect("read");
        assert!(buf.iter().all(|&b| b == 0));
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 + 1) as u8).collect();
        let off = (1 << 20) - 4096; // spans two chunks
        m.write(off, &data).expect("write");
        assert_eq!(m.allocated(), 2 << 20);
        let mut back = vec![0u8; data.len()];
        m.read(off, &mut back).expect("read");
        assert_eq!(back, data);
        // Partial zero keeps the chunk, whole-chunk trim frees it.
        m.zero(off, 4096, true).expect("zero");
        m.read(off, &mut back).expect("read");
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert_eq!(&back[4096..], &data[4096..]);
        m.zero(1 << 20, 1 << 20, true).expect("trim");
        assert_eq!(m.allocated(), 1 << 20);
        m.read(off, &mut back).expect("read");
        assert!(back.iter().all(|&b| b == 0));
        // NO_HOLE style zeroing keeps storage.
        m.write(0, &data).expect("write");
        m.zero(0, 1 << 20, false).expect("zero");
        assert_eq!(m.allocated(), 1 << 20);
    }

    #[test]
    fn odd_size_tail_chunk() {
        let m = HostMemory::with_chunk(10_000, 4096);
        let data = vec![9u8; 10_000];
        m.write(0, &data).expect("write");
        assert_eq!(m.allocated(), 10_000);
        let mut back = vec![0u8; 10_000];
        m.read(0, &mut back).expect("read");
        assert_eq!(back, data);
    }
}
