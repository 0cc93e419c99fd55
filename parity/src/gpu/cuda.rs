//! The CUDA backend: cudarc with dynamic loading (no link-time CUDA), kernels from NVRTC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PinnedHostSlice, PushKernelArg, result,
};
use rayon::prelude::*;

use super::source::{Job, MAX_DST, MAX_SRC};
use super::{GpuBackend, GpuInfo, STAGING_LANES};
use crate::ParityError;

/// Kernel parameter block, by value (`struct Params` of the CUDA source).
#[repr(C)]
#[derive(Clone, Copy)]
struct Params {
    src: [u64; MAX_SRC],
    dst: [u64; MAX_DST],
    len: u64,
}
// SAFETY: plain #[repr(C)] integers, identical layout to the kernel's `struct Params`.
unsafe impl DeviceRepr for Params {}

/// Default device memory per staging lane of the host API (all lanes: 3 x 96 MiB).
const LANE_BYTES: u64 = 96 << 20;

fn cu(e: impl std::fmt::Display) -> ParityError {
    ParityError::Gpu(e.to_string())
}

/// Whether a CUDA driver library can be loaded at all (absent on CI machines).
fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library and reports whether that worked; cudarc
    // panics when it cannot, which is caught here.
    let found = std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() });
    matches!(found, Ok(true))
}

/// A staging lane: one stream, a pinned host buffer and a device buffer of the same size.
struct Lane {
    stream: Arc<CudaStream>,
    pinned: Option<PinnedHostSlice<u8>>,
    dev: Option<CudaSlice<u8>>,
}

/// One GPU with its compiled kernels and staging lanes.
pub struct CudaParity {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    lanes: Mutex<Vec<Lane>>,
    funcs: Mutex<HashMap<String, CudaFunction>>,
    info: GpuInfo,
    sms: u32,
    arch: String,
}

impl CudaParity {
    /// Opens GPU `ordinal`; `ParityError::NoGpu` where there is no driver or no device.
    pub fn open(ordinal: usize) -> Result<CudaParity, ParityError> {
        if !driver_present() {
            return Err(ParityError::NoGpu(
                "the CUDA driver library (libcuda.so) cannot be loaded".into(),
            ));
        }
        let n = CudaContext::device_count().map_err(|e| ParityError::NoGpu(e.to_string()))?;
        if n <= 0 || ordinal >= n as usize {
            return Err(ParityError::NoGpu(format!(
                "device {ordinal} requested, {n} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cu)?;
        // Every buffer handed to a stream here is synchronised explicitly (lane sync before reuse,
        // caller's stream for the device API), so cudarc's event tracking would only add overhead.
        // SAFETY: see above; no slice is used on two streams without a sync in between.
        unsafe { ctx.disable_event_tracking() };
        let uuid = ctx.uuid().map_err(cu)?;
        let uuid = format!(
            "GPU-{}",
            uuid.bytes
                .iter()
                .map(|b| format!("{:02x}", *b as u8))
                .collect::<String>()
        );
        let mut driver = 0i32;
        // SAFETY: writes one int.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }
            .result()
            .map_err(cu)?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cu)? as u32;
        let (maj, min) = ctx.compute_capability().map_err(cu)?;
        let stream = ctx.new_stream().map_err(cu)?;
        let lanes = (0..STAGING_LANES)
            .map(|_| {
                Ok(Lane {
                    stream: ctx.new_stream().map_err(cu)?,
                    pinned: None,
                    dev: None,
                })
            })
            .collect::<Result<Vec<_>, ParityError>>()?;
        let info = GpuInfo {
            name: ctx.name().map_err(cu)?,
            uuid,
            driver,
        };
        tracing::info!(
            "parity GPU {} ({}), {sms} SMs, sm_{maj}{min}, driver {driver}",
            info.name,
            info.uuid
        );
        Ok(CudaParity {
            ctx,
            stream,
            lanes: Mutex::new(lanes),
            funcs: Mutex::new(HashMap::new()),
            info,
            sms,
            arch: format!("compute_{maj}{min}"),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The engine's own stream (used by the safe device API).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The kernel of `job`, compiled by NVRTC on first use and cached per shape.
    pub fn function(&self, job: &Job) -> Result<CudaFunction, ParityError> {
        job.check()?;
        let key = job.key();
        let mut funcs = self
            .funcs
            .lock()
            .map_err(|_| ParityError::Gpu("kernel cache lock poisoned".into()))?;
        if let Some(f) = funcs.get(&key) {
            return Ok(f.clone());
        }
        let t = std::time::Instant::now();
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![
                format!("--gpu-architecture={}", self.arch),
                "-std=c++17".into(),
            ],
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(job.source(), opts)
            .map_err(|e| ParityError::Gpu(format!("NVRTC ({key}): {e}")))?;
        let module = self.ctx.load_module(ptx).map_err(cu)?;
        let f = module.load_function(job.entry()).map_err(cu)?;
        tracing::debug!("compiled {key} in {:?}", t.elapsed());
        funcs.insert(key, f.clone());
        Ok(f)
    }

    /// Launches `job` on raw device pointers: `dsts[j]` (len bytes) = output j of `srcs`.
    ///
    /// # Safety
    /// Every pointer must address `len` bytes of device memory of this context, valid until the
    /// launch completes on `stream`; outputs must not overlap sources or each other.
    pub unsafe fn launch_raw(
        &self,
        job: &Job,
        srcs: &[CUdeviceptr],
        dsts: &[CUdeviceptr],
        len: usize,
        stream: &CudaStream,
    ) -> Result<(), ParityError> {
        job.check()?;
        if srcs.len() != job.k() || dsts.len() != job.m() {
            return Err(ParityError::Geometry(format!(
                "{} sources and {} outputs given, job needs {} and {}",
                srcs.len(),
                dsts.len(),
                job.k(),
                job.m()
            )));
        }
        if let Some(p) = srcs.iter().chain(dsts).find(|&&p| p % 16 != 0) {
            return Err(ParityError::Geometry(format!(
                "device buffer {p:#x} is not 16-byte aligned"
            )));
        }
        if len == 0 {
            return Ok(());
        }
        let items = (len / job.unit()).max(1) as u64;
        let f = self.function(job)?;
        let mut p = Params {
            src: [0; MAX_SRC],
            dst: [0; MAX_DST],
            len: len as u64,
        };
        p.src[..srcs.len()].copy_from_slice(srcs);
        p.dst[..dsts.len()].copy_from_slice(dsts);
        // Enough blocks to fill every SM several times; grid-stride beyond that.
        let blocks = items.div_ceil(256).clamp(1, self.sms as u64 * 8) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&f);
        b.arg(&p);
        // SAFETY: the parameter block matches the kernel signature; pointers per the contract.
        unsafe { b.launch(cfg) }.map_err(cu)?;
        Ok(())
    }

    /// Device-resident API: `dsts[j][..len]` = output j of `srcs[..][..len]`, queued on `stream`
    /// (the caller synchronises). Buffers must start 16-byte aligned (cudaMalloc'd slices do).
    pub fn launch(
        &self,
        job: &Job,
        srcs: &[&CudaSlice<u8>],
        dsts: &mut [&mut CudaSlice<u8>],
        len: usize,
        stream: &CudaStream,
    ) -> Result<(), ParityError> {
        if let Some(s) = srcs
            .iter()
            .map(|s| s.len())
            .chain(dsts.iter().map(|d| d.len()))
            .find(|&l| l < len)
        {
            return Err(ParityError::Length(format!(
                "device buffer of {s} bytes, {len} needed"
            )));
        }
        let mut guards = Vec::new();
        let mut sp = Vec::with_capacity(srcs.len());
        for s in srcs {
            let (p, g) = s.device_ptr(stream);
            sp.push(p);
            guards.push(g);
        }
        let mut dp = Vec::with_capacity(dsts.len());
        for d in dsts.iter_mut() {
            let (p, g) = d.device_ptr_mut(stream);
            dp.push(p);
            guards.push(g);
        }
        // SAFETY: the slices are borrowed for the call and long enough; the guards record the
        // use on `stream` (when event tracking is on) after the launch is queued.
        let r = unsafe { self.launch_raw(job, &sp, &dp, len, stream) };
        drop(guards);
        r
    }

    /// Makes every lane's buffers at least `bytes` long.
    fn grow(&self, lanes: &mut [Lane], bytes: usize) -> Result<(), ParityError> {
        for l in lanes.iter_mut() {
            if l.dev.as_ref().is_none_or(|d| d.len() < bytes) {
                l.stream.synchronize().map_err(cu)?;
                l.dev = None;
                l.pinned = None;
                // SAFETY: u8 has no invalid values; staging is written before it is read.
                l.dev = Some(unsafe { l.stream.alloc::<u8>(bytes) }.map_err(cu)?);
                // SAFETY: as above.
                l.pinned = Some(unsafe { self.ctx.alloc_pinned::<u8>(bytes) }.map_err(cu)?);
            }
        }
        Ok(())
    }
}

/// n shards of `len` bytes in one pinned (page-locked) host buffer, allocated by the engine: the
/// zero-copy host API ([`CudaParity::run_pinned`]) DMAs straight from and into it.
pub struct PinnedShards {
    buf: PinnedHostSlice<u8>,
    n: usize,
    len: usize,
    stride: usize,
}

impl PinnedShards {
    pub fn count(&self) -> usize {
        self.n
    }
    pub fn shard_len(&self) -> usize {
        self.len
    }
    pub fn shard(&self, i: usize) -> Result<&[u8], ParityError> {
        let s = self.buf.as_slice().map_err(cu)?;
        Ok(&s[i * self.stride..i * self.stride + self.len])
    }
    pub fn shard_mut(&mut self, i: usize) -> Result<&mut [u8], ParityError> {
        let (st, len) = (self.stride, self.len);
        let s = self.buf.as_mut_slice().map_err(cu)?;
        Ok(&mut s[i * st..i * st + len])
    }
}

impl CudaParity {
    /// Allocates `n` pinned shards of `len` bytes (zeroed).
    pub fn alloc_pinned_shards(&self, n: usize, len: usize) -> Result<PinnedShards, ParityError> {
        let stride = len.max(1).next_multiple_of(4096);
        // SAFETY: u8 has no invalid values; zeroed right below.
        let mut buf = unsafe { self.ctx.alloc_pinned::<u8>(n * stride) }.map_err(cu)?;
        buf.as_mut_slice().map_err(cu)?.fill(0);
        Ok(PinnedShards {
            buf,
            n,
            len,
            stride,
        })
    }

    /// Zero-copy host API: outputs `dst_idx` of `shards` from sources `src_idx`, with no CPU
    /// copies: chunks go H2D straight from the pinned shards, through the kernel, and D2H
    /// straight back, round-robin over the staging lanes so the H2D engine, the kernels and the
    /// D2H engine work on different chunks at once.
    pub fn run_pinned(
        &self,
        job: &Job,
        shards: &mut PinnedShards,
        src_idx: &[usize],
        dst_idx: &[usize],
        max_vram: Option<u64>,
    ) -> Result<(), ParityError> {
        job.check()?;
        let (k, m) = (job.k(), job.m());
        if src_idx.len() != k || dst_idx.len() != m {
            return Err(ParityError::Geometry(format!(
                "{} sources and {} outputs named, job needs {k} and {m}",
                src_idx.len(),
                dst_idx.len()
            )));
        }
        if let Some(i) = src_idx.iter().chain(dst_idx).find(|&&i| i >= shards.n) {
            return Err(ParityError::Geometry(format!(
                "shard {i} out of range 0..{}",
                shards.n
            )));
        }
        if dst_idx.iter().any(|d| src_idx.contains(d)) {
            return Err(ParityError::Geometry("an output is also a source".into()));
        }
        let len = shards.len;
        if len == 0 {
            return Ok(());
        }
        let lane_bytes =
            max_vram.map_or(LANE_BYTES, |v| (v / STAGING_LANES as u64).min(LANE_BYTES));
        let cap = (lane_bytes as usize / (k + m)) / 4096 * 4096;
        if cap < 4096 {
            return Err(ParityError::Gpu(format!(
                "maxVramBytes {lane_bytes} per lane is too small for {k}+{m} shards"
            )));
        }
        // Several chunks per call so that transfers and kernels overlap; large enough launches.
        let chunk = (len / 8)
            .next_multiple_of(4096)
            .clamp(256 << 10, cap)
            .min(len.next_multiple_of(256));
        let cstride = chunk.next_multiple_of(256);
        let mut lanes = self
            .lanes
            .lock()
            .map_err(|_| ParityError::Gpu("staging lock poisoned".into()))?;
        self.grow(&mut lanes, (k + m) * cstride)?;
        let nl = lanes.len();
        let st = shards.stride;
        let host = shards.buf.as_mut_slice().map_err(cu)?;
        let hp = host.as_mut_ptr();
        for c in 0..len.div_ceil(chunk) {
            let lane = &mut lanes[c % nl];
            // The lane's device buffer is reused: its previous chunk must be done.
            if c >= nl {
                lane.stream.synchronize().map_err(cu)?;
            }
            let off = c * chunk;
            let n = chunk.min(len - off);
            let stream = lane.stream.clone();
            let dev = lane
                .dev
                .as_mut()
                .ok_or_else(|| ParityError::Gpu("lane without staging".into()))?;
            let (base, _g) = dev.device_ptr_mut(&stream);
            // SAFETY: every host range is inside the pinned buffer (index < n shards, off + n <=
            // len <= stride) and outputs are disjoint from sources (checked); device ranges are
            // inside the lane's (k+m)*cstride buffer; all copies complete before this function
            // returns (final synchronisation) while `shards` stays mutably borrowed.
            unsafe {
                for (i, &s) in src_idx.iter().enumerate() {
                    let src = std::slice::from_raw_parts(hp.add(s * st + off), n);
                    result::memcpy_htod_async(base + (i * cstride) as u64, src, stream.cu_stream())
                        .map_err(cu)?;
                }
                let sp: Vec<u64> = (0..k).map(|i| base + (i * cstride) as u64).collect();
                let dp: Vec<u64> = (0..m).map(|j| base + ((k + j) * cstride) as u64).collect();
                self.launch_raw(job, &sp, &dp, n, &stream)?;
                for (j, &d) in dst_idx.iter().enumerate() {
                    let dst = std::slice::from_raw_parts_mut(hp.add(d * st + off), n);
                    result::memcpy_dtoh_async(
                        dst,
                        base + ((k + j) * cstride) as u64,
                        stream.cu_stream(),
                    )
                    .map_err(cu)?;
                }
            }
        }
        for l in lanes.iter() {
            l.stream.synchronize().map_err(cu)?;
        }
        Ok(())
    }
}

/// Parallel copy of one large slice (the staging copies are CPU memcpy, so use every core).
fn par_copy(dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 1 << 20;
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

impl GpuBackend for CudaParity {
    fn info(&self) -> GpuInfo {
        self.info.clone()
    }

    /// Host API: chunks of every shard go host -> pinned (parallel memcpy) -> device (async H2D)
    /// -> kernel -> pinned (async D2H) -> host, round-robin over the staging lanes, so the
    /// copies of one lane overlap the kernel and transfers of the others. Large shards make
    /// large launches (up to the lane size divided by k+m per shard).
    fn run_host(
        &self,
        job: &Job,
        srcs: &[&[u8]],
        dsts: &mut [&mut [u8]],
        max_vram: Option<u64>,
    ) -> Result<(), ParityError> {
        job.check()?;
        let (k, m) = (job.k(), job.m());
        if srcs.len() != k || dsts.len() != m {
            return Err(ParityError::Geometry(format!(
                "{} sources and {} outputs given, job needs {k} and {m}",
                srcs.len(),
                dsts.len()
            )));
        }
        let len = srcs[0].len();
        if let Some(l) = srcs
            .iter()
            .map(|s| s.len())
            .chain(dsts.iter().map(|d| d.len()))
            .find(|&l| l != len)
        {
            return Err(ParityError::Length(format!(
                "shard of {l} bytes, expected {len}"
            )));
        }
        if len == 0 {
            return Ok(());
        }
        let lane_bytes =
            max_vram.map_or(LANE_BYTES, |v| (v / STAGING_LANES as u64).min(LANE_BYTES));
        let chunk_cap = (lane_bytes as usize / (k + m)) / 4096 * 4096;
        if chunk_cap < 4096 {
            return Err(ParityError::Gpu(format!(
                "maxVramBytes {lane_bytes} per lane is too small for {k}+{m} shards"
            )));
        }
        let chunk = chunk_cap.min(len.next_multiple_of(256));
        let stride = chunk.next_multiple_of(256);
        let mut lanes = self
            .lanes
            .lock()
            .map_err(|_| ParityError::Gpu("staging lock poisoned".into()))?;
        self.grow(&mut lanes, (k + m) * stride)?;
        let nchunks = len.div_ceil(chunk);
        let mut pending: Vec<Option<(usize, usize)>> = vec![None; lanes.len()];
        let drain = |lane: &mut Lane,
                     off: usize,
                     n: usize,
                     dsts: &mut [&mut [u8]]|
         -> Result<(), ParityError> {
            lane.stream.synchronize().map_err(cu)?;
            let pin = lane
                .pinned
                .as_ref()
                .ok_or_else(|| ParityError::Gpu("lane without staging".into()))?
                .as_slice()
                .map_err(cu)?;
            dsts.par_iter_mut().enumerate().for_each(|(j, d)| {
                let at = (k + j) * stride;
                par_copy(&mut d[off..off + n], &pin[at..at + n]);
            });
            Ok(())
        };
        for c in 0..nchunks {
            let li = c % lanes.len();
            let lane = &mut lanes[li];
            if let Some((off, n)) = pending[li].take() {
                drain(lane, off, n, dsts)?;
            }
            let off = c * chunk;
            let n = chunk.min(len - off);
            {
                let pin = lane
                    .pinned
                    .as_mut()
                    .ok_or_else(|| ParityError::Gpu("lane without staging".into()))?
                    .as_mut_slice()
                    .map_err(cu)?;
                pin[..k * stride]
                    .par_chunks_mut(stride)
                    .zip(srcs.par_iter())
                    .for_each(|(p, s)| par_copy(&mut p[..n], &s[off..off + n]));
            }
            let stream = lane.stream.clone();
            let dev = lane
                .dev
                .as_mut()
                .ok_or_else(|| ParityError::Gpu("lane without staging".into()))?;
            let (base, _g) = dev.device_ptr_mut(&stream);
            let pin = lane
                .pinned
                .as_mut()
                .ok_or_else(|| ParityError::Gpu("lane without staging".into()))?;
            let pin = pin.as_mut_slice().map_err(cu)?;
            // SAFETY: pinned and device buffers are (k+m)*stride bytes, owned by this lane and
            // only reused after the lane's stream is synchronised.
            unsafe {
                result::memcpy_htod_async(base, &pin[..k * stride], stream.cu_stream())
                    .map_err(cu)?;
                let sp: Vec<u64> = (0..k).map(|i| base + (i * stride) as u64).collect();
                let dp: Vec<u64> = (0..m).map(|j| base + ((k + j) * stride) as u64).collect();
                self.launch_raw(job, &sp, &dp, n, &stream)?;
                result::memcpy_dtoh_async(
                    &mut pin[k * stride..(k + m) * stride],
                    base + (k * stride) as u64,
                    stream.cu_stream(),
                )
                .map_err(cu)?;
            }
            pending[li] = Some((off, n));
        }
        for (li, p) in pending.iter_mut().enumerate() {
            if let Some((off, n)) = p.take() {
                drain(&mut lanes[li], off, n, dsts)?;
            }
        }
        Ok(())
    }
}
