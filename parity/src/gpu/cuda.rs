//! The CUDA backend: cudarc with dynamic loading (no link-time CUDA), kernels from NVRTC.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg, result,
};
use rayon::prelude::*;

use super::source::{Job, MAX_DST, MAX_SRC, Plan};
use super::{GpuBackend, GpuInfo, HostShards, STAGING_LANES, ShardStorage};
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

/// A staging lane: one stream, a pinned host buffer and a device buffer of the same size, and
/// the events that order the zero-copy pipeline's use of the device buffer (a chunk slot):
/// `done[0]` its H2D, `done[1]` its kernel, `done[2]` its D2H.
struct Lane {
    stream: Arc<CudaStream>,
    pinned: Option<PinnedHostSlice<u8>>,
    dev: Option<CudaSlice<u8>>,
    done: [CudaEvent; 3],
}

/// One GPU with its compiled kernels and staging lanes.
pub struct CudaParity {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    lanes: Mutex<Vec<Lane>>,
    funcs: Mutex<HashMap<Job, Vec<(Plan, CudaFunction)>>>,
    fault: AtomicU8,
    info: GpuInfo,
    sms: u32,
    arch: String,
    /// Programmatic dependent launch is available (sm_90+).
    pdl: bool,
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
                let ev = || ctx.new_event(None).map_err(cu);
                Ok(Lane {
                    stream: ctx.new_stream().map_err(cu)?,
                    pinned: None,
                    dev: None,
                    done: [ev()?, ev()?, ev()?],
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
            fault: AtomicU8::new(0),
            info,
            sms,
            arch: format!("compute_{maj}{min}"),
            pdl: maj >= 9,
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The engine's own stream (used by the safe device API).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Streaming multiprocessors of the device.
    pub fn sms(&self) -> u32 {
        self.sms
    }

    /// Makes later operations fail with a genuine CUDA error (tests of the fallback path):
    /// [`Fault::Launch`] launches with an invalid block shape (the driver answers
    /// `CUDA_ERROR_INVALID_VALUE`), [`Fault::Alloc`] asks the driver for an impossible staging
    /// allocation (`CUDA_ERROR_OUT_OF_MEMORY`). Neither error is sticky: after
    /// `inject_fault(None)` the context works again.
    pub fn inject_fault(&self, fault: Option<Fault>) {
        let v = match fault {
            None => 0,
            Some(Fault::Launch) => 1,
            Some(Fault::Alloc) => 2,
        };
        self.fault.store(v, Ordering::SeqCst);
    }

    fn fault(&self) -> Option<Fault> {
        match self.fault.load(Ordering::Relaxed) {
            1 => Some(Fault::Launch),
            2 => Some(Fault::Alloc),
            _ => None,
        }
    }

    /// The kernel of `job` with the default plan (compiled by NVRTC on first use, cached).
    pub fn function(&self, job: &Job) -> Result<CudaFunction, ParityError> {
        self.function_plan(job, Plan::PLAIN)
    }

    /// The kernel of `job` for `plan`, compiled by NVRTC on first use and cached per shape and
    /// plan (the lookup hashes the job, no string is built per launch).
    pub fn function_plan(&self, job: &Job, plan: Plan) -> Result<CudaFunction, ParityError> {
        let plan = normalise(job, plan);
        let mut funcs = self
            .funcs
            .lock()
            .map_err(|_| ParityError::Gpu("kernel cache lock poisoned".into()))?;
        if let Some(f) = funcs
            .get(job)
            .and_then(|v| v.iter().find(|(p, _)| *p == plan))
        {
            return Ok(f.1.clone());
        }
        job.check()?;
        let t = std::time::Instant::now();
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![
                format!("--gpu-architecture={}", self.arch),
                "-std=c++17".into(),
            ],
            ..Default::default()
        };
        let key = job.key();
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(job.source_with(plan), opts)
            .map_err(|e| ParityError::Gpu(format!("NVRTC ({key}, {plan:?}): {e}")))?;
        let module = self.ctx.load_module(ptx).map_err(cu)?;
        let f = module.load_function(job.entry()).map_err(cu)?;
        tracing::debug!("compiled {key} {plan:?} in {:?}", t.elapsed());
        funcs
            .entry(job.clone())
            .or_default()
            .push((plan, f.clone()));
        Ok(f)
    }

    /// Launches `job` on raw device pointers: `dsts[j]` (len bytes) = output j of `srcs`, with
    /// the plan [`Plan::choose`] picks for this size.
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
        let plan = Plan::choose(job, len, self.sms);
        // SAFETY: same contract.
        unsafe { self.launch_raw_plan(job, plan, srcs, dsts, len, stream) }
    }

    /// [`CudaParity::launch_raw`] with an explicit plan (tuning, tests).
    ///
    /// # Safety
    /// As [`CudaParity::launch_raw`].
    pub unsafe fn launch_raw_plan(
        &self,
        job: &Job,
        plan: Plan,
        srcs: &[CUdeviceptr],
        dsts: &[CUdeviceptr],
        len: usize,
        stream: &CudaStream,
    ) -> Result<(), ParityError> {
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
        let plan = normalise(job, plan);
        let f = self.function_plan(job, plan)?;
        let mut p = Params {
            src: [0; MAX_SRC],
            dst: [0; MAX_DST],
            len: len as u64,
        };
        p.src[..srcs.len()].copy_from_slice(srcs);
        p.dst[..dsts.len()].copy_from_slice(dsts);
        let items = (len / job.unit()).max(1) as u64;
        let (bx, by) = (plan.block_x(job.k(), job.m()) as u32, plan.split as u32);
        // Enough blocks to fill every SM several times; grid-stride beyond that.
        let blocks = items
            .div_ceil(bx as u64)
            .clamp(1, self.sms as u64 * (16 / by as u64).max(4)) as u32;
        let mut cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (bx, by, 1),
            shared_mem_bytes: 0,
        };
        if self.fault() == Some(Fault::Launch) {
            // More threads per block than any CUDA device allows: the driver refuses the launch.
            cfg.block_dim = (4096, 1, 1);
        }
        if plan.pdl && self.pdl {
            return pdl_launch(&self.ctx, &f, cfg, &mut p, stream);
        }
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
        if self.fault() == Some(Fault::Alloc) {
            // An allocation no device has room for: the driver answers CUDA_ERROR_OUT_OF_MEMORY.
            // SAFETY: never used; dropped (freed) at once if the driver ever grants it.
            let huge = unsafe { lanes[0].stream.alloc::<u8>(1 << 52) }.map_err(cu)?;
            drop(huge);
        }
        for l in lanes.iter_mut() {
            if l.dev.as_ref().is_none_or(|d| d.len() < bytes) {
                l.stream.synchronize().map_err(cu)?;
                l.dev = None;
                l.pinned = None;
                // SAFETY: u8 has no invalid values; staging is written before it is read.
                l.dev = Some(unsafe { l.stream.alloc::<u8>(bytes) }.map_err(cu)?);
                l.pinned = Some(pinned_alloc(&self.ctx, bytes)?);
            }
        }
        Ok(())
    }
}

/// A genuine CUDA failure to inject ([`CudaParity::inject_fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Kernel launches are refused by the driver (invalid block shape).
    Launch,
    /// Staging allocations fail in the driver (out of device memory).
    Alloc,
}

/// `cuLaunchKernelEx` with programmatic stream serialization: the kernel may be placed on the
/// GPU before the previous kernel of the stream has finished; it waits for it in
/// `griddepcontrol.wait` before touching memory (`pdl_start` in the kernel source).
fn pdl_launch(
    ctx: &CudaContext,
    f: &CudaFunction,
    cfg: LaunchConfig,
    p: &mut Params,
    stream: &CudaStream,
) -> Result<(), ParityError> {
    use cudarc::driver::sys;
    ctx.bind_to_thread().map_err(cu)?;
    // SAFETY: all-zero is a valid value of this plain C union.
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.programmaticStreamSerializationAllowed = 1;
    let mut attr = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    };
    let lc = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    let mut args = [p as *mut Params as *mut std::ffi::c_void];
    // SAFETY: one kernel parameter (the Params block, by value) as the kernel declares;
    // the config and attribute outlive the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &lc,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(cu)
}

/// The split of a matrix job never exceeds its source count or [`Plan::MAX_SPLIT`] (staging
/// is for one group, the fence for preloads); other jobs run one group and keep only the
/// block size and dependent launch.
fn normalise(job: &Job, plan: Plan) -> Plan {
    match job {
        Job::Matrix { k, .. } => {
            let split = plan.split.clamp(1, Plan::MAX_SPLIT.min(*k));
            Plan {
                split,
                stage: plan.stage && split == 1,
                fence: plan.fence && plan.preload,
                early: plan.early && plan.pdl,
                ..plan
            }
        }
        _ => Plan {
            block: plan.block,
            pdl: plan.pdl,
            early: plan.early && plan.pdl,
            ..Plan::PLAIN
        },
    }
}

/// Page-locked, cacheable host memory. (cudarc's `alloc_pinned` asks for write-combined memory,
/// which the CPU reads at a fraction of the normal rate: wrong for staging that is copied out
/// and for shards the caller reads.)
pub(super) fn pinned_alloc(
    ctx: &Arc<CudaContext>,
    bytes: usize,
) -> Result<PinnedHostSlice<u8>, ParityError> {
    // SAFETY: u8 has no invalid values; callers write before they read.
    unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes.max(1), 0) }.map_err(cu)
}

/// Consecutive runs of `idx`: (position in idx, first shard, count) with shard numbers
/// increasing by one inside a run, so that one 2D copy moves a whole run.
pub(super) fn runs(idx: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &s) in idx.iter().enumerate() {
        match out.last_mut() {
            Some((_, first, n)) if *first + *n == s => *n += 1,
            _ => out.push((i, s, 1)),
        }
    }
    out
}

/// Checks the arguments of a zero-copy call; returns the shape (k, m).
fn check_pinned(
    jobs: &[&Job],
    stripes: &[&mut HostShards],
    src_idx: &[usize],
    dst_idx: &[usize],
) -> Result<(usize, usize), ParityError> {
    let Some(job0) = jobs.first() else {
        return Err(ParityError::Geometry("no job given".into()));
    };
    if jobs.len() != 1 && jobs.len() != stripes.len() {
        return Err(ParityError::Geometry(format!(
            "{} jobs for {} stripes",
            jobs.len(),
            stripes.len()
        )));
    }
    let (k, m) = (job0.k(), job0.m());
    for j in jobs {
        j.check()?;
        if (j.k(), j.m()) != (k, m) {
            return Err(ParityError::Geometry("jobs of different shapes".into()));
        }
    }
    if src_idx.len() != k || dst_idx.len() != m {
        return Err(ParityError::Geometry(format!(
            "{} sources and {} outputs named, job needs {k} and {m}",
            src_idx.len(),
            dst_idx.len()
        )));
    }
    for sh in stripes.iter() {
        let n_shards = sh.count();
        if let Some(i) = src_idx.iter().chain(dst_idx).find(|&&i| i >= n_shards) {
            return Err(ParityError::Geometry(format!(
                "shard {i} out of range 0..{n_shards}"
            )));
        }
    }
    if dst_idx.iter().any(|d| src_idx.contains(d)) {
        return Err(ParityError::Geometry("an output is also a source".into()));
    }
    Ok((k, m))
}

/// (pinned base, stride, shard length) of every stripe; heap shards are refused.
fn pinned_hosts(
    stripes: &mut [&mut HostShards],
) -> Result<Vec<(*mut u8, usize, usize)>, ParityError> {
    let mut hosts = Vec::with_capacity(stripes.len());
    for sh in stripes.iter_mut() {
        let (st, len) = (sh.stride(), sh.shard_len());
        match sh.storage_mut() {
            ShardStorage::Pinned(buf) => hosts.push((buf.as_mut_ptr().map_err(cu)?, st, len)),
            ShardStorage::Heap(_) => {
                return Err(ParityError::Geometry(
                    "run_pinned needs engine-allocated pinned shards".into(),
                ));
            }
        }
    }
    Ok(hosts)
}

/// How the zero-copy path cuts a call into chunks ([`CudaParity::run_pinned_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Bytes per shard per chunk (`None`: [`CudaParity::pinned_chunk`]).
    pub chunk: Option<usize>,
    /// The last stripe of a call ends in chunks halving down to this many bytes per shard, so
    /// that little is left to compute and copy back after its last byte has arrived (0:
    /// chunks of equal size).
    pub tail: usize,
}

impl Schedule {
    /// What `run_pinned` and `run_pinned_many` use.
    pub const DEFAULT: Schedule = Schedule {
        chunk: None,
        tail: 64 << 10,
    };
}

/// (offset, length) of the chunks of one stripe of `len` bytes per shard: `chunk` bytes each
/// while more than two are left, then (with `tail` > 0) halving down to `tail`.
pub fn chunk_schedule(len: usize, chunk: usize, tail: usize) -> Vec<(usize, usize)> {
    let chunk = chunk.max(1);
    let mut out = Vec::new();
    let mut off = 0;
    while off < len {
        let rest = len - off;
        let n = if tail == 0 || rest > 2 * chunk {
            chunk.min(rest)
        } else if rest <= tail {
            rest
        } else {
            (rest / 2)
                .next_multiple_of(4096)
                .clamp(tail, chunk)
                .min(rest)
        };
        out.push((off, n));
        off += n;
    }
    out
}

/// A traced point: (chunk, stage 0 = start / 1 = H2D / 2 = kernel / 3 = D2H done, bytes per
/// shard, microseconds since the start).
pub type Mark = (usize, u8, usize, f64);

/// Timing events of zero-copy calls (tuning): the start, and for every chunk the end of its
/// H2D, of its kernel and of its D2H.
pub struct Trace {
    events: Vec<CudaEvent>,
    /// (chunk, stage 0..=3, bytes per shard) of each recorded event, in order
    marks: Vec<(usize, u8, usize)>,
}

impl Trace {
    /// Room for `n` marks (1 + 3 per chunk).
    pub fn new(gpu: &CudaParity, n: usize) -> Result<Trace, ParityError> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let events = (0..n)
            .map(|_| gpu.ctx.new_event(flags).map_err(cu))
            .collect::<Result<_, _>>()?;
        Ok(Trace {
            events,
            marks: Vec::new(),
        })
    }

    fn mark(
        &mut self,
        stream: &CudaStream,
        chunk: usize,
        stage: u8,
        n: usize,
    ) -> Result<(), ParityError> {
        if let Some(e) = self.events.get(self.marks.len()) {
            e.record(stream).map_err(cu)?;
            self.marks.push((chunk, stage, n));
        }
        Ok(())
    }

    /// Every mark of the call (after it), and clears them.
    pub fn take(&mut self) -> Result<Vec<Mark>, ParityError> {
        let mut out = Vec::with_capacity(self.marks.len());
        if let Some(t0) = self.events.first() {
            for (i, &(c, st, n)) in self.marks.iter().enumerate() {
                let ms = t0.elapsed_ms(&self.events[i]).map_err(cu)?;
                out.push((c, st, n, f64::from(ms) * 1e3));
            }
        }
        self.marks.clear();
        Ok(out)
    }
}

/// One zero-copy call's chunking: jobs, stripes (pinned base, stride, shard length), runs of
/// consecutive source and output shards, shape, chunk and device row pitch, tail.
struct Pipe<'a> {
    jobs: &'a [&'a Job],
    hosts: &'a [(*mut u8, usize, usize)],
    src_runs: Vec<(usize, usize, usize)>,
    dst_runs: Vec<(usize, usize, usize)>,
    k: usize,
    m: usize,
    chunk: usize,
    cstride: usize,
    tail: usize,
}

impl Pipe<'_> {
    /// Device rows of the sources and outputs in a slot at `base`.
    fn slot_ptrs(&self, base: u64, sp: &mut [u64], dp: &mut [u64]) {
        for (i, p) in sp.iter_mut().enumerate() {
            *p = base + (i * self.cstride) as u64;
        }
        for (j, p) in dp.iter_mut().enumerate() {
            *p = base + ((self.k + j) * self.cstride) as u64;
        }
    }

    /// The pitched copies of one chunk (bytes off..off+n of every source shard to the device,
    /// or of every output shard back to the host), one per run of consecutive shards.
    ///
    /// # Safety
    /// As [`copy_2d`]: host rows of the stripe at `hp` (stride `st`) and the device rows `dev`
    /// valid until the copy completes on `stream`.
    unsafe fn copy(
        &self,
        to_device: bool,
        (hp, st): (*mut u8, usize),
        (off, n): (usize, usize),
        dev: &[u64],
        stream: &CudaStream,
    ) -> Result<(), ParityError> {
        let runs = if to_device {
            &self.src_runs
        } else {
            &self.dst_runs
        };
        for &(pos, first, cnt) in runs {
            let rows = Rows {
                // SAFETY: inside the stripe's buffer per the contract.
                host: unsafe { hp.add(first * st + off) },
                host_pitch: st,
                dev: dev[pos],
                dev_pitch: self.cstride,
                width: n,
                height: cnt,
            };
            // SAFETY: per the contract.
            unsafe { copy_2d(to_device, rows, stream)? };
        }
        Ok(())
    }
}

/// Device address of every lane's staging buffer.
fn lane_bases(lanes: &mut [Lane]) -> Result<Vec<u64>, ParityError> {
    lanes
        .iter_mut()
        .map(|l| {
            let stream = l.stream.clone();
            let dev = l
                .dev
                .as_mut()
                .ok_or_else(|| ParityError::Gpu("lane without staging".into()))?;
            // event tracking is off (CudaParity::open): the pointer needs no guard
            Ok(dev.device_ptr_mut(&stream).0)
        })
        .collect()
}

/// Rows of a pitched (2D) copy: `height` rows of `width` bytes, at `pitch` apart on each side.
#[derive(Clone, Copy)]
struct Rows {
    host: *mut u8,
    host_pitch: usize,
    dev: CUdeviceptr,
    dev_pitch: usize,
    width: usize,
    height: usize,
}

/// One pitched copy between pinned host rows and device rows.
///
/// # Safety
/// Host and device ranges must be valid for the rows at their pitches until the copy
/// completes on `stream`.
unsafe fn copy_2d(to_device: bool, r: Rows, stream: &CudaStream) -> Result<(), ParityError> {
    use cudarc::driver::sys::{CUDA_MEMCPY2D, CUmemorytype};
    let (host_t, dev_t) = (
        CUmemorytype::CU_MEMORYTYPE_HOST,
        CUmemorytype::CU_MEMORYTYPE_DEVICE,
    );
    let c = CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: if to_device { host_t } else { dev_t },
        srcHost: r.host as *const std::ffi::c_void,
        srcDevice: r.dev,
        srcArray: std::ptr::null_mut(),
        srcPitch: if to_device { r.host_pitch } else { r.dev_pitch },
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: if to_device { dev_t } else { host_t },
        dstHost: r.host as *mut std::ffi::c_void,
        dstDevice: r.dev,
        dstArray: std::ptr::null_mut(),
        dstPitch: if to_device { r.dev_pitch } else { r.host_pitch },
        WidthInBytes: r.width,
        Height: r.height,
    };
    // SAFETY: per the contract; the struct lives until the call returns (the driver copies it).
    unsafe { cudarc::driver::sys::cuMemcpy2DAsync_v2(&c, stream.cu_stream()) }
        .result()
        .map_err(cu)
}

impl CudaParity {
    /// Allocates `n` pinned shards of `len` bytes (zeroed), for the zero-copy host API.
    pub fn alloc_pinned_shards(&self, n: usize, len: usize) -> Result<HostShards, ParityError> {
        let stride = len.max(1).next_multiple_of(4096);
        let mut buf = pinned_alloc(&self.ctx, n * stride)?;
        buf.as_mut_slice().map_err(cu)?.fill(0);
        Ok(HostShards::from_storage(
            ShardStorage::Pinned(buf),
            n,
            len,
            stride,
        ))
    }

    /// Zero-copy host API: outputs `dst_idx` of `shards` from sources `src_idx`, with no CPU
    /// copies: chunks go H2D straight from the pinned shards, through the kernel, and D2H
    /// straight back ([`Schedule`]: the H2D copies back to back on one stream, kernels on a
    /// second, D2H copies on a third, ordered by events, so the copy engines never wait for
    /// the host). One pitched (2D) copy per run of consecutive shards and direction, so a chunk
    /// costs a handful of driver calls whatever k.
    pub fn run_pinned(
        &self,
        job: &Job,
        shards: &mut HostShards,
        src_idx: &[usize],
        dst_idx: &[usize],
        max_vram: Option<u64>,
    ) -> Result<(), ParityError> {
        self.run_pinned_with(
            &[job],
            &mut [shards],
            src_idx,
            dst_idx,
            max_vram,
            Schedule::DEFAULT,
            None,
        )
    }

    /// [`CudaParity::run_pinned`] over several stripes in one pipeline: stripe i runs `jobs[i]`
    /// (or `jobs[0]` when one job is given; all jobs of one shape k+m), its chunks follow the
    /// previous stripe's through the lanes with no synchronisation in between, so the
    /// pipeline's fill and drain are paid once per call instead of once per stripe (small
    /// stripes batched into back-to-back launches without any CPU copy).
    pub fn run_pinned_many(
        &self,
        jobs: &[&Job],
        stripes: &mut [&mut HostShards],
        src_idx: &[usize],
        dst_idx: &[usize],
        max_vram: Option<u64>,
    ) -> Result<(), ParityError> {
        self.run_pinned_with(
            jobs,
            stripes,
            src_idx,
            dst_idx,
            max_vram,
            Schedule::DEFAULT,
            None,
        )
    }

    /// The chunk (bytes per shard per launch) of the zero-copy path: up to 8 chunks per stripe
    /// (H2D, kernel and D2H overlap; fill and drain are ~1/8 of the transfer), none under
    /// 512 KiB per shard (measured on an H200: smaller chunks lose more to per-copy costs than
    /// they gain in overlap) nor over the lane's room.
    pub fn pinned_chunk(len: usize, cap: usize) -> usize {
        (len / 8)
            .next_multiple_of(4096)
            .clamp(512 << 10, cap.max(4096))
            .min(len.next_multiple_of(256))
    }

    /// [`CudaParity::run_pinned_many`] with an explicit [`Schedule`] and an optional [`Trace`]
    /// (tuning).
    #[allow(clippy::too_many_arguments)]
    pub fn run_pinned_with(
        &self,
        jobs: &[&Job],
        stripes: &mut [&mut HostShards],
        src_idx: &[usize],
        dst_idx: &[usize],
        max_vram: Option<u64>,
        sched: Schedule,
        trace: Option<&mut Trace>,
    ) -> Result<(), ParityError> {
        let (k, m) = check_pinned(jobs, stripes, src_idx, dst_idx)?;
        let len_max = stripes.iter().map(|s| s.shard_len()).max().unwrap_or(0);
        if len_max == 0 {
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
        let chunk = sched
            .chunk
            .map_or_else(|| Self::pinned_chunk(len_max, cap), |c| c.clamp(4096, cap))
            .min(len_max.next_multiple_of(256));
        let cstride = chunk.next_multiple_of(256);
        let hosts = pinned_hosts(stripes)?;
        let mut lanes = self
            .lanes
            .lock()
            .map_err(|_| ParityError::Gpu("staging lock poisoned".into()))?;
        self.grow(&mut lanes, (k + m) * cstride)?;
        let pipe = Pipe {
            jobs,
            hosts: &hosts,
            src_runs: runs(src_idx),
            dst_runs: runs(dst_idx),
            k,
            m,
            chunk,
            cstride,
            tail: sched.tail,
        };
        let result = self.pipe_flow(&mut lanes, &pipe, trace);
        // Always drain the lanes, also after an error: queued copies still use the shards.
        let mut synced = Ok(());
        for l in lanes.iter() {
            if let Err(e) = l.stream.synchronize() {
                synced = Err(cu(e));
            }
        }
        result.and(synced)
    }

    /// The zero-copy pipeline, ordered by events: H2D copies on lane 0's stream,
    /// back to back; kernels on lane 1's, each after its chunk's H2D; D2H copies on lane 2's,
    /// each after its kernel. Chunk c uses device slot c % 3 (the lanes' buffers), whose
    /// previous chunk's D2H the H2D stream waits for on the GPU: the host never blocks.
    fn pipe_flow(
        &self,
        lanes: &mut [Lane],
        p: &Pipe<'_>,
        mut trace: Option<&mut Trace>,
    ) -> Result<(), ParityError> {
        let nl = lanes.len();
        if nl < 3 {
            return Err(ParityError::Gpu("the pipeline needs 3 lanes".into()));
        }
        let bases = lane_bases(lanes)?;
        let (s_in, s_k, s_out) = (&lanes[0].stream, &lanes[1].stream, &lanes[2].stream);
        if let Some(t) = trace.as_deref_mut() {
            t.mark(s_in, 0, 0, 0)?;
        }
        let (mut sp, mut dp) = (vec![0u64; p.k], vec![0u64; p.m]);
        let mut c = 0usize; // chunks issued, over all stripes
        for (si, &(hp, st, len)) in p.hosts.iter().enumerate() {
            let job = p.jobs.get(si).unwrap_or(&p.jobs[0]);
            let tail = if si + 1 == p.hosts.len() { p.tail } else { 0 };
            for (off, n) in chunk_schedule(len, p.chunk, tail) {
                let slot = &lanes[c % nl];
                p.slot_ptrs(bases[c % nl], &mut sp, &mut dp);
                if c >= nl {
                    s_in.wait(&slot.done[2]).map_err(cu)?;
                }
                // Events order the streams; a dependent launch is for kernel-after-kernel.
                let plan = Plan {
                    pdl: false,
                    ..Plan::choose(job, n, self.sms)
                };
                // SAFETY: every host row is inside its stripe's pinned buffer (index < its
                // shard count, off + n <= len <= stride), device rows inside the slot's
                // (k+m)*cstride buffer, which no earlier chunk still uses (the H2D stream
                // waited for its D2H); outputs are disjoint from sources (checked); all copies
                // complete before run_pinned_with returns (final synchronisation) while the
                // stripes stay mutably borrowed.
                unsafe {
                    p.copy(true, (hp, st), (off, n), &sp, s_in)?;
                    slot.done[0].record(s_in).map_err(cu)?;
                    if let Some(t) = trace.as_deref_mut() {
                        t.mark(s_in, c, 1, n)?;
                    }
                    s_k.wait(&slot.done[0]).map_err(cu)?;
                    self.launch_raw_plan(job, plan, &sp, &dp, n, s_k)?;
                    slot.done[1].record(s_k).map_err(cu)?;
                    if let Some(t) = trace.as_deref_mut() {
                        t.mark(s_k, c, 2, n)?;
                    }
                    s_out.wait(&slot.done[1]).map_err(cu)?;
                    p.copy(false, (hp, st), (off, n), &dp, s_out)?;
                    slot.done[2].record(s_out).map_err(cu)?;
                    if let Some(t) = trace.as_deref_mut() {
                        t.mark(s_out, c, 3, n)?;
                    }
                }
                c += 1;
            }
        }
        Ok(())
    }

    /// Registers per thread, resident blocks per SM and threads per block of a job's kernel
    /// for `plan` (tuning reports).
    pub fn kernel_info(&self, job: &Job, plan: Plan) -> Result<(i32, u32, u32), ParityError> {
        let plan = normalise(job, plan);
        let f = self.function_plan(job, plan)?;
        let threads = (plan.block_x(job.k(), job.m()) * plan.split) as u32;
        let regs = f.num_regs().map_err(cu)?;
        let blocks = f
            .occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
            .map_err(cu)?;
        Ok((regs, blocks, threads))
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

    fn alloc_shards(&self, n: usize, len: usize) -> Result<HostShards, ParityError> {
        self.alloc_pinned_shards(n, len)
    }

    fn run_shards(
        &self,
        job: &Job,
        shards: &mut HostShards,
        src_idx: &[usize],
        dst_idx: &[usize],
        max_vram: Option<u64>,
    ) -> Result<(), ParityError> {
        if shards.is_pinned() {
            self.run_pinned(job, shards, src_idx, dst_idx, max_vram)
        } else {
            let (srcs, mut dsts) = shards.split(src_idx, dst_idx)?;
            self.run_host(job, &srcs, &mut dsts, max_vram)
        }
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
        // Several chunks per call so that one chunk's CPU copies overlap the others' transfers
        // and kernels (a single chunk serialises copy-in, H2D, kernel, D2H and copy-out).
        let chunk = (len / 8)
            .next_multiple_of(4096)
            .clamp(256 << 10, chunk_cap)
            .min(len.next_multiple_of(256));
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
