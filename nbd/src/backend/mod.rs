//! Backing stores behind one trait: sparse host memory (everywhere) and VRAM through cudarc (`cuda` feature).

mod host;
#[cfg(feature = "cuda")]
mod vram;

pub use host::HostMemory;
#[cfg(feature = "cuda")]
pub use vram::{Vram, VramOptions};

use crate::proto;

/// Why a backing-store operation failed, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no space left in the backing store")]
    NoSpace,
    #[error("backing store i/o failed: {0}")]
    Io(String),
}

impl StoreError {
    /// The NBD error value sent for this failure.
    pub fn nbd_errno(&self) -> u32 {
        match self {
            StoreError::NoSpace => proto::ENOSPC,
            StoreError::Io(_) => proto::EIO,
        }
    }
}

/// A byte-addressed store of a fixed size. Callers check bounds before calling: every method may
/// assume `offset + len <= size()`.
///
/// Contract that makes `NBD_FLAG_CAN_MULTI_CONN` safe: each method returns only once its effect is
/// visible to every later call from any thread (no per-caller caches, no write-back queue), so a
/// reply sent after the call returns covers every connection's later reads and flushes.
pub trait Backend: Send + Sync + 'static {
    /// Export size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` with the bytes at `offset`; never-written or trimmed ranges read as zeros.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Store `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Make `len` bytes at `offset` read back as zeros; with `may_free`, storage of whole chunks
    /// inside the range is released (trim, or write-zeroes without NO_HOLE).
    fn zero(&self, offset: u64, len: u64, may_free: bool) -> Result<(), StoreError>;
    /// Persist completed writes. Both stores are volatile by design (RAM, VRAM): completed writes
    /// are already as durable as they will ever be, so this only waits for outstanding device work.
    fn flush(&self) -> Result<(), StoreError>;
    /// True when calls can block for long enough (device copies) to warrant a blocking section.
    fn blocking(&self) -> bool;
    /// Bytes of real storage currently held.
    fn allocated(&self) -> u64;
    /// One line for logs: kind, size, chunking.
    fn describe(&self) -> String;
}

/// Split `[offset, offset+len)` into per-chunk pieces: (chunk index, offset in chunk, piece length).
pub(crate) fn pieces(
    offset: u64,
    len: u64,
    chunk: u64,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let idx = pos / chunk;
        let within = pos % chunk;
        let n = (chunk - within).min(end - pos);
        pos += n;
        // Chunk sizes are at most a few MiB and chunk counts fit in memory: usize conversions hold.
        Some((idx as usize, within as usize, n as usize))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_range_exactly() {
        let v: Vec<_> = pieces(1000, 5000, 4096).collect();
        assert_eq!(v, vec![(0, 1000, 3096), (1, 0, 1904)]);
        let total: usize = pieces(7, 3 * 4096, 4096).map(|p| p.2).sum();
        assert_eq!(total, 3 * 4096);
        assert_eq!(pieces(0, 0, 4096).count(), 0);
    }
}
