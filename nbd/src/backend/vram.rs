//! VRAM store through cudarc: device memory is allocated lazily in large chunks (4 MiB by default)
//! and sliced into blocks; whole chunks that are trimmed go back to the driver, and a chunk is
//! scrubbed (memset to zero on the device) whenever it is (re)allocated, so freed regions read zeros.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, PinnedHostSlice};

use super::{Backend, StoreError, pieces};
use crate::error::{Error, Result};

pub const DEFAULT_CHUNK: u64 = 4 << 20;
/// Copy lanes (a stream plus a pinned staging buffer of one chunk): concurrent requests copy in
/// parallel, one per lane.
const LANES: usize = 16;

/// A stream and its pinned staging buffer. Copies go through pinned memory because the driver
/// DMAs straight from it, while pageable memory costs a hidden, slower staged copy.
struct Lane {
    stream: Arc<CudaStream>,
    pinned: PinnedHostSlice<u8>,
}

/// How to size and place the VRAM export.
#[derive(Debug, Clone)]
pub struct VramOptions {
    pub device: usize,
    /// Export size; `None` = free VRAM minus `reserve`.
    pub size: Option<u64>,
    /// Left free for other users of the GPU when sizing automatically.
    pub reserve: u64,
    /// Hard cap (GpuRaidPolicy.maxVramBytes or a VGpuClaim's memory); `None` = no cap.
    pub max_bytes: Option<u64>,
    pub chunk: u64,
}

impl Default for VramOptions {
    fn default() -> Self {
        Self {
            device: 0,
            size: None,
            reserve: 1 << 30,
            max_bytes: None,
            chunk: DEFAULT_CHUNK,
        }
    }
}

pub struct Vram {
    size: u64,
    chunk: u64,
    ctx: Arc<CudaContext>,
    lanes: Vec<Mutex<Lane>>,
    next: AtomicUsize,
    chunks: Vec<RwLock<Option<CudaSlice<u8>>>>,
    allocated: AtomicU64,
    name: String,
}

fn cuda_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("CUDA: {e}"))
}

/// Whether a CUDA driver library can be loaded at all (dynamic loading: absent on CI machines).
fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library and reports whether that worked.
    let found = std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() });
    matches!(found, Ok(true))
}

impl Vram {
    pub fn open(opts: &VramOptions) -> Result<Self> {
        if !driver_present() {
            return Err(Error::NoCuda(
                "the CUDA driver library (libcuda.so) cannot be loaded".into(),
            ));
        }
        let n = CudaContext::device_count().map_err(|e| Error::NoCuda(e.to_string()))?;
        if n <= 0 || opts.device >= n as usize {
            return Err(Error::NoCuda(format!(
                "device {} requested, {n} present",
                opts.device
            )));
        }
        let ctx = CudaContext::new(opts.device).map_err(|e| Error::Cuda(e.to_string()))?;
        // Every copy is synchronised before its request completes and each chunk has its own lock,
        // so cudarc's cross-stream event tracking would only add overhead.
        // SAFETY: no slice is shared between streams without the chunk lock plus a completed sync.
        unsafe { ctx.disable_event_tracking() };
        let (free, total) = ctx.mem_get_info().map_err(|e| Error::Cuda(e.to_string()))?;
        let chunk = opts.chunk.max(1 << 16).next_power_of_two();
        // Explicit sizes above the cap are refused; an automatic size is clamped to it.
        let size = match (opts.size, opts.max_bytes) {
            (Some(s), Some(cap)) if s > cap => {
                return Err(Error::Config(format!(
                    "VRAM export of {s} bytes exceeds the cap of {cap} bytes (max_bytes)"
                )));
            }
            (Some(s), _) => s,
            (None, cap) => {
                let auto = (free as u64).saturating_sub(opts.reserve) / chunk * chunk;
                cap.map_or(auto, |c| auto.min(c))
            }
        };
        if size == 0 {
            return Err(Error::Config(format!(
                "VRAM export size is 0 (free {free} bytes, reserve {} bytes)",
                opts.reserve
            )));
        }
        if size > free as u64 {
            return Err(Error::Config(format!(
                "VRAM export of {size} bytes is larger than the free VRAM ({free} of {total} bytes)"
            )));
        }
        let lanes = (0..LANES)
            .map(|_| {
                let stream = ctx.new_stream()?;
                // SAFETY: u8 has no invalid bit patterns and the buffer is always written before it is read.
                let pinned = unsafe { ctx.alloc_pinned::<u8>(chunk as usize) }?;
                Ok(Mutex::new(Lane { stream, pinned }))
            })
            .collect::<Result<Vec<_>, cudarc::driver::DriverError>>()
            .map_err(|e| Error::Cuda(e.to_string()))?;
        let n_chunks = size.div_ceil(chunk) as usize;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        tracing::info!(device = opts.device, %name, size, free, total, chunk, "VRAM store opened");
        Ok(Self {
            size,
            chunk,
            ctx,
            lanes,
            next: AtomicUsize::new(0),
            chunks: (0..n_chunks).map(|_| RwLock::new(None)).collect(),
            allocated: AtomicU64::new(0),
            name,
        })
    }

    fn lane(&self) -> std::sync::MutexGuard<'_, Lane> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn chunk_len(&self, idx: usize) -> usize {
        let start = idx as u64 * self.chunk;
        (self.size - start).min(self.chunk) as usize
    }

    /// Free VRAM and total VRAM of the device now.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| Error::Cuda(e.to_string()))
    }
}

impl Drop for Vram {
    fn drop(&mut self) {
        // The chunks are freed right after this, possibly on a thread that never used CUDA:
        // make the context current there first.
        if let Err(e) = self.ctx.bind_to_thread() {
            tracing::warn!(error = %e, "cannot bind the CUDA context to free VRAM chunks");
        }
    }
}

fn rd<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn wr<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Backend for Vram {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let mut at = 0usize;
        let mut lane = self.lane();
        let Lane { stream, pinned } = &mut *lane;
        for (idx, within, n) in pieces(offset, buf.len() as u64, self.chunk) {
            let g = rd(&self.chunks[idx]);
            let dst = &mut buf[at..at + n];
            match g.as_ref() {
                Some(c) => {
                    let stage = &mut pinned.as_mut_slice().map_err(cuda_err)?[..n];
                    stream
                        .memcpy_dtoh(&c.slice(within..within + n), stage)
                        .map_err(cuda_err)?;
                    // The lock must cover the copy: a trim could free the chunk under it.
                    stream.synchronize().map_err(cuda_err)?;
                    dst.copy_from_slice(stage);
                }
                None => dst.fill(0),
            }
            at += n;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut at = 0usize;
        let mut lane = self.lane();
        let Lane { stream, pinned } = &mut *lane;
        for (idx, within, n) in pieces(offset, data.len() as u64, self.chunk) {
            let mut g = wr(&self.chunks[idx]);
            if g.is_none() {
                let len = self.chunk_len(idx);
                // alloc_zeros = allocate + device memset: the scrub that makes reused VRAM read zeros.
                let c = stream.alloc_zeros::<u8>(len).map_err(|e| {
                    tracing::warn!(error = %e, len, "VRAM allocation failed");
                    StoreError::NoSpace
                })?;
                self.allocated.fetch_add(len as u64, Ordering::Relaxed);
                *g = Some(c);
            }
            if let Some(c) = g.as_mut() {
                let stage = &mut pinned.as_mut_slice().map_err(cuda_err)?[..n];
                stage.copy_from_slice(&data[at..at + n]);
                let mut view = c.slice_mut(within..within + n);
                stream.memcpy_htod(&*stage, &mut view).map_err(cuda_err)?;
                // Wait, so that a reply (and a flush on any connection) only ever covers data in VRAM;
                // the staging buffer is reused right after, too.
                stream.synchronize().map_err(cuda_err)?;
            }
            at += n;
        }
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64, may_free: bool) -> Result<(), StoreError> {
        let lane = self.lane();
        let stream = &lane.stream;
        for (idx, within, n) in pieces(offset, len, self.chunk) {
            let mut g = wr(&self.chunks[idx]);
            let whole = within == 0 && n == self.chunk_len(idx);
            if whole && may_free {
                if let Some(c) = g.take() {
                    stream.synchronize().map_err(cuda_err)?;
                    drop(c);
                    self.allocated.fetch_sub(n as u64, Ordering::Relaxed);
                }
            } else if let Some(c) = g.as_mut() {
                let mut view = c.slice_mut(within..within + n);
                stream.memset_zeros(&mut view).map_err(cuda_err)?;
                stream.synchronize().map_err(cuda_err)?;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.ctx.synchronize().map_err(cuda_err)
    }

    fn blocking(&self) -> bool {
        true
    }

    fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!(
            "VRAM on {}, {} bytes, chunks of {} MiB allocated on first write",
            self.name,
            self.size,
            self.chunk >> 20
        )
    }
}
