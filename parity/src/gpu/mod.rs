//! The GPU side of the parity engine and the dispatcher between CPU and GPU.
//!
//! - [`source`]: CUDA C kernels, generated per job shape, compiled by NVRTC at run time;
//! - `cuda` (feature `cuda`): [`CudaParity`], the backend over cudarc with dynamic loading, with a
//!   device-resident API and a host API that stages through pinned memory on several streams;
//! - [`HostShards`]: engine-allocated host shards (pinned when there is a GPU: the zero-copy path);
//! - [`batch`]: [`StripeQueue`], small stripes packed into large launches;
//! - [`Engine`]: routes each request to the backend measured faster for its code and size
//!   (calibrated once per GPU UUID + driver version, cached on disk), honours [`Policy`]
//!   (GpuRaidPolicy), and falls back to the CPU on any CUDA error, counting it in
//!   `parity_fallbacks_total` ([`Engine::fallbacks_total`]).

pub mod batch;
#[cfg(feature = "cuda")]
pub mod bench;
#[cfg(feature = "cuda")]
mod cuda;
pub mod source;

pub use batch::StripeQueue;
#[cfg(feature = "cuda")]
pub use cuda::{CudaParity, Fault, Schedule, Trace, chunk_schedule};
pub use source::{Job, Plan};

/// The zero-copy API's shards (engine-allocated pinned memory): the same type as [`HostShards`].
pub type PinnedShards = HostShards;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{Decoder, ParityError, Pq, ReedSolomon, Xor};

/// Identity of a GPU for the calibration cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    pub uuid: String,
    pub driver: i32,
}

/// Where the bytes of [`HostShards`] live.
pub(crate) enum ShardStorage {
    /// Ordinary (pageable) heap memory: CPU engines, or no GPU.
    Heap(Vec<u8>),
    /// Page-locked memory of the GPU's context: the GPU reads and writes it by DMA directly.
    #[cfg(feature = "cuda")]
    Pinned(cudarc::driver::PinnedHostSlice<u8>),
}

/// n shards of `len` bytes in one host buffer (shard i at i x stride, stride a multiple of
/// 4 KiB), allocated by the engine ([`Engine::alloc_shards`]): pinned when the engine has a GPU,
/// so the GPU route moves them by DMA with no CPU copy (zero-copy host API), plain heap memory
/// otherwise. The CPU route computes on them in place either way.
pub struct HostShards {
    storage: ShardStorage,
    n: usize,
    len: usize,
    stride: usize,
}

impl HostShards {
    /// n zeroed shards of `len` bytes on the heap.
    pub fn heap(n: usize, len: usize) -> HostShards {
        let stride = len.max(1).next_multiple_of(4096);
        HostShards::from_storage(ShardStorage::Heap(vec![0u8; n * stride]), n, len, stride)
    }

    pub(crate) fn from_storage(
        storage: ShardStorage,
        n: usize,
        len: usize,
        stride: usize,
    ) -> HostShards {
        HostShards {
            storage,
            n,
            len,
            stride,
        }
    }

    pub fn count(&self) -> usize {
        self.n
    }
    pub fn shard_len(&self) -> usize {
        self.len
    }
    #[cfg(feature = "cuda")]
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }
    /// Whether the shards are page-locked memory of a GPU (the zero-copy route applies).
    pub fn is_pinned(&self) -> bool {
        !matches!(self.storage, ShardStorage::Heap(_))
    }
    /// Bytes each shard can hold (the logical length can be set up to this).
    pub fn capacity(&self) -> usize {
        self.stride
    }
    /// Sets the logical shard length (at most [`HostShards::capacity`]); the bytes are kept.
    pub fn set_len(&mut self, len: usize) -> Result<(), ParityError> {
        if len > self.stride {
            return Err(ParityError::Length(format!(
                "shard length {len} beyond the capacity {}",
                self.stride
            )));
        }
        self.len = len;
        Ok(())
    }
    #[cfg(feature = "cuda")]
    pub(crate) fn storage_mut(&mut self) -> &mut ShardStorage {
        &mut self.storage
    }

    fn bytes(&self) -> Result<&[u8], ParityError> {
        match &self.storage {
            ShardStorage::Heap(v) => Ok(v),
            #[cfg(feature = "cuda")]
            ShardStorage::Pinned(p) => p.as_slice().map_err(|e| ParityError::Gpu(e.to_string())),
        }
    }
    fn bytes_mut(&mut self) -> Result<&mut [u8], ParityError> {
        match &mut self.storage {
            ShardStorage::Heap(v) => Ok(v),
            #[cfg(feature = "cuda")]
            ShardStorage::Pinned(p) => p
                .as_mut_slice()
                .map_err(|e| ParityError::Gpu(e.to_string())),
        }
    }
    fn check(&self, i: usize) -> Result<(), ParityError> {
        if i >= self.n {
            return Err(ParityError::Geometry(format!(
                "shard {i} out of range 0..{}",
                self.n
            )));
        }
        Ok(())
    }
    pub fn shard(&self, i: usize) -> Result<&[u8], ParityError> {
        self.check(i)?;
        let (st, len) = (self.stride, self.len);
        Ok(&self.bytes()?[i * st..i * st + len])
    }
    pub fn shard_mut(&mut self, i: usize) -> Result<&mut [u8], ParityError> {
        self.check(i)?;
        let (st, len) = (self.stride, self.len);
        Ok(&mut self.bytes_mut()?[i * st..i * st + len])
    }

    /// Sources `src_idx` (read) and outputs `dst_idx` (written) as slices, in the given orders.
    pub fn split(
        &mut self,
        src_idx: &[usize],
        dst_idx: &[usize],
    ) -> Result<SplitShards<'_>, ParityError> {
        for &i in src_idx.iter().chain(dst_idx) {
            self.check(i)?;
        }
        let (st, len, n) = (self.stride, self.len, self.n);
        let bytes = self.bytes_mut()?;
        let mut slots: Vec<Option<&mut [u8]>> = bytes
            .chunks_mut(st)
            .take(n)
            .map(|c| Some(&mut c[..len]))
            .collect();
        let mut dsts = Vec::with_capacity(dst_idx.len());
        for &d in dst_idx {
            dsts.push(
                slots[d]
                    .take()
                    .ok_or_else(|| ParityError::Geometry(format!("shard {d} named twice")))?,
            );
        }
        let mut srcs = Vec::with_capacity(src_idx.len());
        for &s in src_idx {
            srcs.push(
                slots[s]
                    .take()
                    .map(|x| &*x)
                    .ok_or_else(|| ParityError::Geometry(format!("shard {s} named twice")))?,
            );
        }
        Ok((srcs, dsts))
    }
}

/// Sources (read) and outputs (written) of [`HostShards::split`].
pub type SplitShards<'a> = (Vec<&'a [u8]>, Vec<&'a mut [u8]>);

/// What the engine needs from a GPU backend: the host APIs (caller's host buffers in and out,
/// and engine-allocated shards). A trait so that the routing, fallback and batching logic is
/// unit-tested without a GPU.
pub trait GpuBackend: Send + Sync {
    fn info(&self) -> GpuInfo;
    /// n shards of `len` bytes the backend moves fastest (pinned memory on a GPU).
    fn alloc_shards(&self, n: usize, len: usize) -> Result<HostShards, ParityError> {
        Ok(HostShards::heap(n, len))
    }
    /// Runs `job` with sources `src_idx` of `shards` into the shards `dst_idx` (zero-copy when
    /// the shards are the backend's pinned memory).
    fn run_shards(
        &self,
        job: &Job,
        shards: &mut HostShards,
        src_idx: &[usize],
        dst_idx: &[usize],
        max_vram: Option<u64>,
    ) -> Result<(), ParityError> {
        let (srcs, mut dsts) = shards.split(src_idx, dst_idx)?;
        self.run_host(job, &srcs, &mut dsts, max_vram)
    }
    /// Runs `job` over host buffers: `dsts[j]` = output j of the k `srcs` (all of equal length),
    /// using at most `max_vram` bytes of device memory for staging.
    fn run_host(
        &self,
        job: &Job,
        srcs: &[&[u8]],
        dsts: &mut [&mut [u8]],
        max_vram: Option<u64>,
    ) -> Result<(), ParityError>;
}

/// What to do when the GPU fails (GpuRaidPolicy.fallback).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Recompute on the CPU and count the fallback.
    Cpu,
    /// Return the CUDA error.
    Fail,
}

/// GpuRaidPolicy: `minStripeBytes`, `fallback`, `maxVramBytes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Requests with fewer data bytes (k x shard length) always run on the CPU.
    pub min_stripe_bytes: u64,
    pub fallback: Fallback,
    /// Device memory the engine may take for staging; `None` = the backend's default.
    pub max_vram_bytes: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_stripe_bytes: 1 << 20,
            fallback: Fallback::Cpu,
            max_vram_bytes: None,
        }
    }
}

/// Smallest staging area that makes a GPU launch worth it: lanes x (k+m) x 64 KiB.
pub fn min_vram_for(job: &Job) -> u64 {
    (STAGING_LANES * (job.k() + job.m())) as u64 * (64 << 10)
}

/// Staging lanes (stream + pinned buffer + device buffer) of the host API.
pub const STAGING_LANES: usize = 3;

/// Where a request ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Cpu,
    Gpu,
}

/// One measured point: data GB/s (k x shard bytes per second) of the CPU and of the GPU's two
/// host paths (pageable caller buffers; engine-allocated pinned shards).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalPoint {
    pub class: String,
    pub shard_bytes: u64,
    pub cpu_gbps: f64,
    /// GPU host path on pageable buffers (staged through pinned lanes).
    pub gpu_gbps: f64,
    /// GPU zero-copy path on engine-allocated pinned shards.
    #[serde(default)]
    pub gpu_pinned_gbps: f64,
    /// The CPU on engine-allocated shards (the peer of `gpu_pinned_gbps`; 0 = not measured,
    /// `cpu_gbps` stands in).
    #[serde(default)]
    pub cpu_pinned_gbps: f64,
}

/// Format of the calibration cache; a file of another version is measured again (3: median
/// calls, each after one of its own path, where 2 kept the best of interleaved calls).
pub const CALIBRATION_VERSION: u32 = 3;

/// The calibration of one machine (GPU + CPU threads).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    #[serde(default)]
    pub version: u32,
    pub gpu: Option<GpuInfo>,
    pub cpu_threads: usize,
    pub points: Vec<CalPoint>,
}

/// Shard sizes the calibration measures.
pub const CALIBRATION_SHARDS: [usize; 3] = [256 << 10, 1 << 20, 8 << 20];

impl Calibration {
    /// Whether the GPU's pageable host path measured faster for this class near this shard size.
    pub fn gpu_faster(&self, class: &str, shard_bytes: u64) -> bool {
        self.gpu_faster_on(class, shard_bytes, false)
    }

    /// Whether the GPU measured faster for this class near this shard size (nearest calibrated
    /// size in log scale; a class never measured goes to the CPU), on pinned shards or on
    /// pageable buffers.
    pub fn gpu_faster_on(&self, class: &str, shard_bytes: u64, pinned: bool) -> bool {
        let lg = |b: u64| (b.max(1) as f64).log2();
        self.points
            .iter()
            .filter(|p| p.class == class)
            .min_by(|a, b| {
                let da = (lg(a.shard_bytes) - lg(shard_bytes)).abs();
                let db = (lg(b.shard_bytes) - lg(shard_bytes)).abs();
                da.total_cmp(&db)
            })
            .is_some_and(|p| {
                if pinned {
                    let cpu = if p.cpu_pinned_gbps > 0.0 {
                        p.cpu_pinned_gbps
                    } else {
                        p.cpu_gbps
                    };
                    p.gpu_pinned_gbps > cpu
                } else {
                    p.gpu_gbps > p.cpu_gbps
                }
            })
    }

    /// Cache file of a GPU: `<dir>/<uuid>-driver<version>-cpu<threads>.json`.
    pub fn cache_path(dir: &std::path::Path, gpu: &GpuInfo, threads: usize) -> PathBuf {
        dir.join(format!(
            "{}-driver{}-cpu{threads}.json",
            gpu.uuid.replace(['/', ' '], "_"),
            gpu.driver
        ))
    }

    /// `$TESSERA_PARITY_CALIBRATION_DIR`, else `~/.cache/tessera/parity-calibration`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("TESSERA_PARITY_CALIBRATION_DIR") {
            return Some(PathBuf::from(d));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tessera/parity-calibration"))
    }

    /// The cached calibration, if the file exists and is of the current format.
    pub fn load(path: &std::path::Path) -> Option<Calibration> {
        let text = std::fs::read_to_string(path).ok()?;
        let c: Calibration = serde_json::from_str(&text).ok()?;
        (c.version == CALIBRATION_VERSION).then_some(c)
    }

    pub fn save(&self, path: &std::path::Path) -> Result<(), ParityError> {
        let io = |source| ParityError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        // Write then rename: concurrent engines never read half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Measures CPU (all rayon threads) and both GPU host paths (pageable buffers, pinned
    /// shards), each against the CPU on the same kind of buffer, on a small fixed set of shapes:
    /// xor 8+1, pq 8+2, matrix 10x4 at [`CALIBRATION_SHARDS`]. The four are timed in turn (the
    /// rounds in a balanced order), each counted call right after an uncounted one of the same
    /// path (24 counted calls of each up to 1 MiB, 8 above), and the median call of each is
    /// kept: the same method as the bench, so that routing and bench agree near the crossover.
    /// Median: the best call of an all-thread CPU call of ~100 us is a rare lucky one (two
    /// series of the very same call differed by up to 23% by best call, 3% by median; H200
    /// host, 16 threads). The uncounted call: a zero-copy call right after a CPU call on the
    /// same shards found them in the CPU's caches and ran at half its rate (1 MiB, 16 threads:
    /// 22-25 GB/s against 44 after one of its own).
    pub fn measure(gpu: &dyn GpuBackend, policy: &Policy) -> Result<Calibration, ParityError> {
        let rs = ReedSolomon::new(10, 4, crate::Matrix::Cauchy)?;
        let shapes: Vec<(Code, Job)> = vec![
            (Code::Xor(Xor::new()), Job::Xor { k: 8 }),
            (Code::Pq(Pq::new(8)?), Job::Pq { k: 8 }),
            (
                Code::Rs(rs.clone()),
                Job::Matrix {
                    k: 10,
                    m: 4,
                    rows: rs.generator()[100..].to_vec(),
                },
            ),
        ];
        let mut points = Vec::new();
        let max = CALIBRATION_SHARDS.iter().copied().max().unwrap_or(1 << 20);
        let time1 = |f: &mut dyn FnMut() -> Result<(), ParityError>| {
            let t = Instant::now();
            f()?;
            Ok::<f64, ParityError>(t.elapsed().as_secs_f64())
        };
        for (code, job) in &shapes {
            let (k, m) = (job.k(), job.m());
            let data: Vec<Vec<u8>> = (0..k)
                .map(|i| {
                    let mut v = vec![0u8; max];
                    crate::util::fill_seeded(&mut v, i as u64 + 1);
                    v
                })
                .collect();
            let mut out: Vec<Vec<u8>> = (0..m).map(|_| vec![0u8; max]).collect();
            let (si, di): (Vec<usize>, Vec<usize>) = ((0..k).collect(), (k..k + m).collect());
            for shard in CALIBRATION_SHARDS {
                // shards allocated at this size, as a caller's would be (same stride)
                let mut shards = gpu.alloc_shards(k + m, shard)?;
                for (i, d) in data.iter().enumerate() {
                    shards.shard_mut(i)?.copy_from_slice(&d[..shard]);
                }
                let srcs: Vec<&[u8]> = data.iter().map(|v| &v[..shard]).collect();
                let mut times: [Vec<f64>; 4] = Default::default();
                // 24 counted calls of each path up to 1 MiB, 8 above
                let rounds = if shard <= 1 << 20 { 24 } else { 8 };
                let mut call = |path: usize| -> Result<f64, ParityError> {
                    time1(&mut || match path {
                        0 => {
                            let mut d: Vec<&mut [u8]> =
                                out.iter_mut().map(|v| &mut v[..shard]).collect();
                            code.encode_cpu(&srcs, &mut d)
                        }
                        1 => {
                            let mut d: Vec<&mut [u8]> =
                                out.iter_mut().map(|v| &mut v[..shard]).collect();
                            gpu.run_host(job, &srcs, &mut d, policy.max_vram_bytes)
                        }
                        2 => {
                            let (s, mut d) = shards.split(&si, &di)?;
                            code.encode_cpu(&s, &mut d)
                        }
                        _ => gpu.run_shards(job, &mut shards, &si, &di, policy.max_vram_bytes),
                    })
                };
                for round in 0..=rounds {
                    for j in 0..4 {
                        let path = latin(4, round, j);
                        // one uncounted call first (warm-up, compile, the previous path's
                        // traces in the caches); round 0 is all warm-up
                        call(path)?;
                        let t = call(path)?;
                        if round > 0 {
                            times[path].push(t);
                        }
                    }
                }
                let best = times.map(|mut v| {
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2).copied().unwrap_or(f64::MAX)
                });
                let rate = |s: f64| (k * shard) as f64 / s / 1e9;
                points.push(CalPoint {
                    class: job.class().into(),
                    shard_bytes: shard as u64,
                    cpu_gbps: rate(best[0]),
                    gpu_gbps: rate(best[1]),
                    gpu_pinned_gbps: rate(best[3]),
                    cpu_pinned_gbps: rate(best[2]),
                });
            }
        }
        Ok(Calibration {
            version: CALIBRATION_VERSION,
            gpu: Some(gpu.info()),
            cpu_threads: rayon::current_num_threads(),
            points,
        })
    }
}

/// Entry j of row r of a balanced Latin square of order n (Williams design: row r is r plus
/// the offsets 0, 1, n-1, 2, n-2, ... mod n); for even n, over n rows every element comes
/// first once and right after every other element exactly once.
pub(crate) fn latin(n: usize, r: usize, j: usize) -> usize {
    let off = if j % 2 == 1 { j.div_ceil(2) } else { n - j / 2 };
    (r + off) % n
}

/// A code the engine runs: the CPU codec, from which the GPU job is derived.
#[derive(Clone, Debug)]
pub enum Code {
    Xor(Xor),
    Pq(Pq),
    Rs(ReedSolomon),
}

impl Code {
    fn encode_job(&self, k: usize) -> Job {
        match self {
            Code::Xor(_) => Job::Xor { k },
            Code::Pq(p) => Job::Pq { k: p.k() },
            Code::Rs(r) => Job::Matrix {
                k: r.k(),
                m: r.m(),
                rows: r.generator()[r.k() * r.k()..].to_vec(),
            },
        }
    }

    /// Encode on the CPU across the rayon pool.
    pub fn encode_cpu(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), ParityError> {
        match (self, parity) {
            (Code::Xor(x), [p]) => x.encode_par(data, p),
            (Code::Pq(c), [p, q]) => c.encode_par(data, p, q),
            (Code::Rs(r), parity) => r.encode_par(data, parity),
            (_, parity) => Err(ParityError::Geometry(format!(
                "{} parity shards given for this code",
                parity.len()
            ))),
        }
    }

    /// Parity shards of the code.
    pub fn m(&self) -> usize {
        match self {
            Code::Xor(_) => 1,
            Code::Pq(_) => 2,
            Code::Rs(r) => r.m(),
        }
    }

    /// Identity of the code for the decoder cache (kind, shape, backend, generator).
    fn fingerprint(&self) -> Vec<u8> {
        match self {
            Code::Xor(_) => vec![0],
            Code::Pq(p) => format!("pq{}{:?}", p.k(), p.backend()).into_bytes(),
            Code::Rs(r) => {
                let mut v = format!("rs{}+{}{:?}:", r.k(), r.m(), r.backend()).into_bytes();
                v.extend_from_slice(r.generator());
                v
            }
        }
    }

    fn decoder(&self, lost: &[usize]) -> Result<Option<Decoder>, ParityError> {
        match self {
            Code::Xor(_) => Ok(None),
            Code::Pq(p) => p.decoder(lost).map(Some),
            Code::Rs(r) => r.decoder(lost).map(Some),
        }
    }
}

/// The CPU side of a dispatched request: (sources, outputs).
pub(crate) type CpuRun<'a> = dyn FnMut(&[&[u8]], &mut [&mut [u8]]) -> Result<(), ParityError> + 'a;

/// The dispatcher: CPU always, GPU where it measured faster and the policy allows.
pub struct Engine {
    gpu: Option<Arc<dyn GpuBackend>>,
    calibration: Calibration,
    policy: Policy,
    fallbacks: AtomicU64,
    gpu_runs: AtomicU64,
    cpu_runs: AtomicU64,
    no_gpu_reason: Option<String>,
    /// Decoders per (code, lost pattern): building one inverts a matrix and allocates tables,
    /// which costs as much as reconstructing a few hundred KiB.
    decoders: Mutex<HashMap<DecoderKey, Arc<Decoder>>>,
}

/// (code fingerprint, lost shards) of a cached decoder.
type DecoderKey = (Vec<u8>, Vec<usize>);

/// Most decoders an engine keeps (the cache is emptied when full).
const DECODER_CACHE: usize = 256;

/// What a reconstruct runs: the job, survivors (sources), lost shards (outputs) and the CPU
/// decoder (`None` for XOR).
struct Rebuild {
    job: Job,
    survivors: Vec<usize>,
    lost: Vec<usize>,
    dec: Option<Arc<Decoder>>,
}

impl Rebuild {
    fn cpu(&self, s: &[&[u8]], d: &mut [&mut [u8]]) -> Result<(), ParityError> {
        match &self.dec {
            None => match d {
                [out] => Xor::new().encode_par(s, out),
                _ => Err(ParityError::Geometry("XOR rebuilds one shard".into())),
            },
            Some(dec) => dec.apply_split_par(s, d),
        }
    }
}

impl Engine {
    /// CPU only.
    pub fn cpu(policy: Policy) -> Engine {
        Engine {
            gpu: None,
            calibration: Calibration::default(),
            policy,
            fallbacks: AtomicU64::new(0),
            gpu_runs: AtomicU64::new(0),
            cpu_runs: AtomicU64::new(0),
            no_gpu_reason: None,
            decoders: Mutex::new(HashMap::new()),
        }
    }

    /// An engine over a given GPU backend and calibration (tests, or a caller that calibrated).
    pub fn with_gpu(gpu: Arc<dyn GpuBackend>, calibration: Calibration, policy: Policy) -> Engine {
        Engine {
            gpu: Some(gpu),
            calibration,
            ..Engine::cpu(policy)
        }
    }

    /// [`Engine::auto_with`] with the default policy.
    pub fn auto() -> Engine {
        Engine::auto_with(Policy::default())
    }

    /// Opens GPU 0 when there is one (feature `cuda`), loads the calibration cached for its UUID,
    /// driver version and CPU thread count, or measures and caches it. Never fails: without a
    /// usable GPU the engine runs everything on the CPU and [`Engine::gpu_status`] says why.
    pub fn auto_with(policy: Policy) -> Engine {
        #[cfg(feature = "cuda")]
        {
            match CudaParity::open(0) {
                Ok(g) => {
                    let g: Arc<dyn GpuBackend> = Arc::new(g);
                    Engine::calibrated(g, policy)
                }
                Err(e) => {
                    tracing::info!("parity engine: CPU only ({e})");
                    let mut e0 = Engine::cpu(policy);
                    e0.no_gpu_reason = Some(e.to_string());
                    e0
                }
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let mut e = Engine::cpu(policy);
            e.no_gpu_reason = Some("built without the cuda feature".into());
            e
        }
    }

    /// Loads or measures the calibration of `gpu` (cache: [`Calibration::default_dir`]).
    pub fn calibrated(gpu: Arc<dyn GpuBackend>, policy: Policy) -> Engine {
        let threads = rayon::current_num_threads();
        let path =
            Calibration::default_dir().map(|d| Calibration::cache_path(&d, &gpu.info(), threads));
        let cached = path.as_deref().and_then(Calibration::load);
        let calibration = match cached {
            Some(c) => c,
            None => match Calibration::measure(gpu.as_ref(), &policy) {
                Ok(c) => {
                    if let Some(p) = &path
                        && let Err(e) = c.save(p)
                    {
                        tracing::warn!("calibration not cached: {e}");
                    }
                    c
                }
                Err(e) => {
                    tracing::warn!("GPU calibration failed, CPU only: {e}");
                    let mut e0 = Engine::cpu(policy);
                    e0.no_gpu_reason = Some(format!("calibration failed: {e}"));
                    return e0;
                }
            },
        };
        Engine::with_gpu(gpu, calibration, policy)
    }

    /// "GPU <name>" or "no GPU: <reason>".
    pub fn gpu_status(&self) -> String {
        match (&self.gpu, &self.no_gpu_reason) {
            (Some(g), _) => format!("GPU {}", g.info().name),
            (None, Some(r)) => format!("no GPU: {r}"),
            (None, None) => "no GPU: CPU engine".into(),
        }
    }

    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// `parity_fallbacks_total`: GPU requests that failed and were recomputed on the CPU.
    pub fn fallbacks_total(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
    /// Requests completed on the GPU / on the CPU.
    pub fn runs(&self) -> (u64, u64) {
        (
            self.gpu_runs.load(Ordering::Relaxed),
            self.cpu_runs.load(Ordering::Relaxed),
        )
    }

    /// Where a job over pageable shards of `shard_bytes` goes.
    pub fn route(&self, job: &Job, shard_bytes: u64) -> Route {
        self.route_on(job, shard_bytes, false)
    }

    /// Where a job over shards of `shard_bytes` goes; `pinned`: the shards are the engine's
    /// pinned memory ([`Engine::alloc_shards`]), so the GPU side is the zero-copy path.
    pub fn route_on(&self, job: &Job, shard_bytes: u64, pinned: bool) -> Route {
        if self.gpu.is_none() || job.check().is_err() {
            return Route::Cpu;
        }
        if (job.k() as u64).saturating_mul(shard_bytes) < self.policy.min_stripe_bytes {
            return Route::Cpu;
        }
        if self
            .policy
            .max_vram_bytes
            .is_some_and(|cap| cap < min_vram_for(job))
        {
            return Route::Cpu;
        }
        if self
            .calibration
            .gpu_faster_on(job.class(), shard_bytes, pinned)
        {
            Route::Gpu
        } else {
            Route::Cpu
        }
    }

    /// Whether a GPU backend is attached.
    pub fn has_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// n zeroed shards of `len` bytes: pinned memory of the GPU when the engine has one (the
    /// GPU route then moves them with no CPU copy), heap memory otherwise.
    pub fn alloc_shards(&self, n: usize, len: usize) -> Result<HostShards, ParityError> {
        match &self.gpu {
            Some(g) => g.alloc_shards(n, len),
            None => Ok(HostShards::heap(n, len)),
        }
    }

    /// Runs `gpu` under the fallback policy: `Ok(true)` done on the GPU, `Ok(false)` the GPU
    /// failed and the caller must recompute on the CPU (counted), `Err` with `fallback: fail`
    /// or for bad input.
    fn try_gpu(
        &self,
        job: &Job,
        gpu: impl FnOnce() -> Result<(), ParityError>,
    ) -> Result<bool, ParityError> {
        match gpu() {
            Ok(()) => {
                self.gpu_runs.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.is_bad_input() => Err(e),
            Err(e) => match self.policy.fallback {
                Fallback::Fail => Err(e),
                Fallback::Cpu => {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("GPU {} failed, recomputing on the CPU: {e}", job.class());
                    Ok(false)
                }
            },
        }
    }

    fn dispatch(
        &self,
        job: &Job,
        srcs: &[&[u8]],
        dsts: &mut [&mut [u8]],
        cpu: &mut CpuRun<'_>,
    ) -> Result<Route, ParityError> {
        let len = srcs.first().map_or(0, |s| s.len());
        if let (Route::Gpu, Some(g)) = (self.route(job, len as u64), &self.gpu)
            && self.try_gpu(job, || {
                g.run_host(job, srcs, dsts, self.policy.max_vram_bytes)
            })?
        {
            return Ok(Route::Gpu);
        }
        cpu(srcs, dsts)?;
        self.cpu_runs.fetch_add(1, Ordering::Relaxed);
        Ok(Route::Cpu)
    }

    fn dispatch_shards(
        &self,
        job: &Job,
        shards: &mut HostShards,
        src_idx: &[usize],
        dst_idx: &[usize],
        cpu: &mut CpuRun<'_>,
    ) -> Result<Route, ParityError> {
        let len = shards.shard_len() as u64;
        if let (Route::Gpu, Some(g)) = (self.route_on(job, len, shards.is_pinned()), &self.gpu)
            && self.try_gpu(job, || {
                g.run_shards(job, shards, src_idx, dst_idx, self.policy.max_vram_bytes)
            })?
        {
            return Ok(Route::Gpu);
        }
        let (s, mut d) = shards.split(src_idx, dst_idx)?;
        cpu(&s, &mut d)?;
        self.cpu_runs.fetch_add(1, Ordering::Relaxed);
        Ok(Route::Cpu)
    }

    /// Runs a prepared job over engine-allocated shards with the engine's routing and fallback
    /// (the batching queue uses it for its packed launches).
    pub(crate) fn run_job_shards(
        &self,
        job: &Job,
        shards: &mut HostShards,
        src_idx: &[usize],
        dst_idx: &[usize],
        cpu: &mut CpuRun<'_>,
    ) -> Result<Route, ParityError> {
        self.dispatch_shards(job, shards, src_idx, dst_idx, cpu)
    }

    fn check_encode(
        code: &Code,
        k: usize,
        m: usize,
        len: usize,
        lens: impl Iterator<Item = usize>,
    ) -> Result<Job, ParityError> {
        let job = code.encode_job(k);
        if m != job.m() {
            return Err(ParityError::Geometry(format!(
                "{m} parity shards given, the code has {}",
                job.m()
            )));
        }
        if let Some((i, _)) = lens.enumerate().find(|(_, l)| *l != len) {
            return Err(ParityError::Length(format!(
                "shard {i} differs from shard 0 ({len} bytes)"
            )));
        }
        Ok(job)
    }

    /// Computes the parity shards of `data`.
    pub fn encode(
        &self,
        code: &Code,
        data: &[&[u8]],
        parity: &mut [&mut [u8]],
    ) -> Result<Route, ParityError> {
        let len = data.first().map_or(0, |s| s.len());
        let lens = data
            .iter()
            .map(|s| s.len())
            .chain(parity.iter().map(|s| s.len()));
        let job = Self::check_encode(code, data.len(), parity.len(), len, lens)?;
        self.dispatch(&job, data, parity, &mut |s, d| code.encode_cpu(s, d))
    }

    /// Computes parity shards k.. of engine-allocated shards from data shards 0..k
    /// (k = count - m): on the GPU by the zero-copy path when they are pinned and the
    /// calibration of that path says the GPU is faster, else on the CPU in place.
    pub fn encode_shards(
        &self,
        code: &Code,
        shards: &mut HostShards,
    ) -> Result<Route, ParityError> {
        let (n, m) = (shards.count(), code.m());
        if n <= m {
            return Err(ParityError::Geometry(format!(
                "{n} shards for a code with {m} parity shards"
            )));
        }
        let k = n - m;
        let job = Self::check_encode(code, k, m, 0, std::iter::empty())?;
        let (si, di): (Vec<usize>, Vec<usize>) = ((0..k).collect(), (k..n).collect());
        self.dispatch_shards(&job, shards, &si, &di, &mut |s, d| code.encode_cpu(s, d))
    }

    fn cached_decoder(
        &self,
        code: &Code,
        lost: &[usize],
    ) -> Result<Option<Arc<Decoder>>, ParityError> {
        if let Code::Xor(_) = code {
            return Ok(None);
        }
        let key = (code.fingerprint(), lost.to_vec());
        if let Some(d) = self
            .decoders
            .lock()
            .map_err(|_| ParityError::Gpu("decoder cache lock poisoned".into()))?
            .get(&key)
        {
            return Ok(Some(d.clone()));
        }
        let Some(dec) = code.decoder(lost)? else {
            return Ok(None);
        };
        let dec = Arc::new(dec);
        let mut cache = self
            .decoders
            .lock()
            .map_err(|_| ParityError::Gpu("decoder cache lock poisoned".into()))?;
        if cache.len() >= DECODER_CACHE {
            cache.clear();
        }
        cache.insert(key, dec.clone());
        Ok(Some(dec))
    }

    /// The job, survivors and lost order of a reconstruct of `lost` among n shards.
    fn rebuild(&self, code: &Code, n: usize, lost: &[usize]) -> Result<Rebuild, ParityError> {
        match self.cached_decoder(code, lost)? {
            None => {
                if lost.len() != 1 || lost[0] >= n {
                    return Err(ParityError::Geometry(format!(
                        "XOR rebuilds exactly one shard in 0..{n}, asked for {lost:?}"
                    )));
                }
                Ok(Rebuild {
                    job: Job::Xor { k: n - 1 },
                    survivors: (0..n).filter(|&i| i != lost[0]).collect(),
                    lost: lost.to_vec(),
                    dec: None,
                })
            }
            Some(d) => Ok(Rebuild {
                job: Job::Matrix {
                    k: d.survivors().len(),
                    m: d.lost().len(),
                    rows: d.matrix().to_vec(),
                },
                survivors: d.survivors().to_vec(),
                lost: d.lost().to_vec(),
                dec: Some(d),
            }),
        }
    }

    /// Recomputes the `lost` shards (data then parity numbering, as the CPU codecs) in place.
    pub fn reconstruct(
        &self,
        code: &Code,
        shards: &mut [&mut [u8]],
        lost: &[usize],
    ) -> Result<Route, ParityError> {
        let n = shards.len();
        let rb = self.rebuild(code, n, lost)?;
        if let Some(&i) = rb.survivors.iter().chain(&rb.lost).find(|&&i| i >= n) {
            return Err(ParityError::Geometry(format!(
                "shard {i} out of range 0..{n}"
            )));
        }
        let len = shards.first().map_or(0, |s| s.len());
        if let Some((i, s)) = shards.iter().enumerate().find(|(_, s)| s.len() != len) {
            return Err(ParityError::Length(format!(
                "shard {i} has {} bytes, expected {len}",
                s.len()
            )));
        }
        // Survivors read-only, lost shards written: split the one &mut array without copying.
        let mut slots: Vec<Option<&mut [u8]>> = shards.iter_mut().map(|s| Some(&mut **s)).collect();
        let mut dsts: Vec<&mut [u8]> = Vec::with_capacity(rb.lost.len());
        for &l in &rb.lost {
            dsts.push(
                slots[l]
                    .take()
                    .ok_or_else(|| ParityError::Geometry(format!("lost shard {l} listed twice")))?,
            );
        }
        let mut srcs: Vec<&[u8]> = Vec::with_capacity(rb.survivors.len());
        for &s in &rb.survivors {
            srcs.push(
                slots[s]
                    .take()
                    .map(|x| &*x)
                    .ok_or_else(|| ParityError::Geometry(format!("survivor {s} is also lost")))?,
            );
        }
        self.dispatch(&rb.job, &srcs, &mut dsts, &mut |s, d| rb.cpu(s, d))
    }

    /// Recomputes the `lost` shards of engine-allocated shards in place (zero-copy GPU path
    /// when they are pinned and the GPU measured faster there, else the CPU).
    pub fn reconstruct_shards(
        &self,
        code: &Code,
        shards: &mut HostShards,
        lost: &[usize],
    ) -> Result<Route, ParityError> {
        let rb = self.rebuild(code, shards.count(), lost)?;
        self.dispatch_shards(&rb.job, shards, &rb.survivors, &rb.lost, &mut |s, d| {
            rb.cpu(s, d)
        })
    }

    /// A queue that packs many small stripes of `code` into large launches
    /// ([`StripeQueue`]); `batch_bytes` of data per launch (0 = the default, 64 MiB).
    pub fn queue<'e, 'a>(&'e self, code: &Code, batch_bytes: usize) -> StripeQueue<'e, 'a> {
        StripeQueue::new(self, code.clone(), batch_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Test double for the routing logic only: computes on the CPU, can fail on demand.
    struct FakeGpu {
        fail: bool,
        calls: Mutex<Vec<String>>,
    }

    impl GpuBackend for FakeGpu {
        fn info(&self) -> GpuInfo {
            GpuInfo {
                name: "fake".into(),
                uuid: "GPU-fake".into(),
                driver: 12080,
            }
        }
        fn run_host(
            &self,
            job: &Job,
            _srcs: &[&[u8]],
            dsts: &mut [&mut [u8]],
            _max_vram: Option<u64>,
        ) -> Result<(), ParityError> {
            self.calls
                .lock()
                .expect("test lock")
                .push(job.class().to_string());
            if self.fail {
                // Leave garbage, as a kernel that died halfway might.
                for d in dsts.iter_mut() {
                    d.fill(0xee);
                }
                return Err(ParityError::Gpu(
                    "CUDA_ERROR_LAUNCH_FAILED (injected)".into(),
                ));
            }
            for d in dsts.iter_mut() {
                d.fill(0x5a);
            }
            Ok(())
        }
    }

    fn cal(class: &str, cpu: f64, gpu: f64) -> Calibration {
        Calibration {
            version: CALIBRATION_VERSION,
            gpu: None,
            cpu_threads: 1,
            points: [1u64 << 16, 1 << 24]
                .iter()
                .map(|&s| CalPoint {
                    class: class.into(),
                    shard_bytes: s,
                    cpu_gbps: cpu,
                    gpu_gbps: gpu,
                    gpu_pinned_gbps: gpu,
                    cpu_pinned_gbps: 0.0,
                })
                .collect(),
        }
    }

    fn engine(fail: bool, c: Calibration, policy: Policy) -> (Engine, Arc<FakeGpu>) {
        let g = Arc::new(FakeGpu {
            fail,
            calls: Mutex::new(Vec::new()),
        });
        (Engine::with_gpu(g.clone(), c, policy), g)
    }

    fn stripes(k: usize, len: usize) -> Vec<Vec<u8>> {
        (0..k)
            .map(|i| {
                let mut v = vec![0u8; len];
                crate::util::fill_seeded(&mut v, i as u64 + 7);
                v
            })
            .collect()
    }

    /// The order of the paired rounds: every row a permutation, every function first once and
    /// right after every other one exactly once per n rows (n even).
    #[test]
    fn latin_square_is_balanced() {
        for n in [2usize, 4, 6] {
            let mut follows = vec![vec![0; n]; n];
            let mut firsts = vec![0; n];
            for r in 0..n {
                let row: Vec<usize> = (0..n).map(|j| latin(n, r, j)).collect();
                let mut seen = row.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n} row {row:?}");
                firsts[row[0]] += 1;
                for w in row.windows(2) {
                    follows[w[1]][w[0]] += 1;
                }
            }
            assert!(firsts.iter().all(|&f| f == 1), "n={n}");
            for (a, row) in follows.iter().enumerate() {
                for (b, &c) in row.iter().enumerate() {
                    assert_eq!(c, usize::from(a != b), "n={n} {a} after {b}");
                }
            }
        }
    }

    #[test]
    fn routes_by_calibration_and_policy() {
        let p = Policy {
            min_stripe_bytes: 1 << 20,
            fallback: Fallback::Cpu,
            max_vram_bytes: None,
        };
        let (e, _) = engine(false, cal("pq", 10.0, 20.0), p.clone());
        let job = Job::Pq { k: 8 };
        assert_eq!(e.route(&job, 1 << 20), Route::Gpu);
        // below minStripeBytes: 8 x 64 KiB = 512 KiB < 1 MiB
        assert_eq!(e.route(&job, 64 << 10), Route::Cpu);
        // a class never calibrated stays on the CPU
        assert_eq!(e.route(&Job::Xor { k: 8 }, 1 << 20), Route::Cpu);
        // CPU measured faster
        let (e, _) = engine(false, cal("pq", 30.0, 20.0), p.clone());
        assert_eq!(e.route(&job, 1 << 20), Route::Cpu);
        // maxVramBytes below the minimal staging area
        let tight = Policy {
            max_vram_bytes: Some(min_vram_for(&job) - 1),
            ..p.clone()
        };
        let (e, _) = engine(false, cal("pq", 10.0, 20.0), tight);
        assert_eq!(e.route(&job, 1 << 20), Route::Cpu);
        // no GPU at all
        assert_eq!(Engine::cpu(p).route(&job, 1 << 24), Route::Cpu);
    }

    #[test]
    fn nearest_size_decides() {
        let c = Calibration {
            version: CALIBRATION_VERSION,
            gpu: None,
            cpu_threads: 1,
            points: vec![
                CalPoint {
                    class: "xor".into(),
                    shard_bytes: 256 << 10,
                    cpu_gbps: 50.0,
                    gpu_gbps: 20.0,
                    gpu_pinned_gbps: 60.0,
                    cpu_pinned_gbps: 0.0,
                },
                CalPoint {
                    class: "xor".into(),
                    shard_bytes: 8 << 20,
                    cpu_gbps: 10.0,
                    gpu_gbps: 40.0,
                    gpu_pinned_gbps: 5.0,
                    cpu_pinned_gbps: 0.0,
                },
            ],
        };
        assert!(!c.gpu_faster("xor", 128 << 10));
        assert!(!c.gpu_faster("xor", 1 << 20));
        assert!(c.gpu_faster("xor", 4 << 20));
        assert!(c.gpu_faster("xor", 1 << 30));
        // the pinned path has its own numbers: here the opposite decision at both sizes
        assert!(c.gpu_faster_on("xor", 128 << 10, true));
        assert!(!c.gpu_faster_on("xor", 1 << 30, true));
        // where measured, the CPU on pinned shards is the pinned route's peer
        let mut c2 = c.clone();
        c2.points[0].cpu_pinned_gbps = 70.0;
        assert!(!c2.gpu_faster_on("xor", 128 << 10, true));
        assert!(
            c2.gpu_faster_on("xor", 128 << 10, true) != c.gpu_faster_on("xor", 128 << 10, true)
        );
    }

    /// A cache file of an older format is not used (it lacks the pinned numbers).
    #[test]
    fn old_calibration_is_measured_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.json");
        let mut c = cal("pq", 1.0, 2.0);
        c.version = 1;
        c.save(&path).expect("save");
        assert!(Calibration::load(&path).is_none());
        c.version = CALIBRATION_VERSION;
        c.save(&path).expect("save");
        assert_eq!(Calibration::load(&path), Some(c));
    }

    /// Engine-allocated shards take the pinned route's calibration; the fake's heap shards go
    /// through `run_shards` (and so the GPU double), the CPU route computes in place.
    #[test]
    fn shards_route_by_pinned_calibration() {
        let mut c = cal("pq", 10.0, 5.0);
        for p in c.points.iter_mut() {
            p.gpu_pinned_gbps = 20.0;
        }
        let (e, g) = engine(false, c, Policy::default());
        let job = Job::Pq { k: 8 };
        assert_eq!(e.route_on(&job, 1 << 20, false), Route::Cpu);
        assert_eq!(e.route_on(&job, 1 << 20, true), Route::Gpu);
        // the fake allocates heap shards: not pinned, so the pageable numbers decide (CPU)
        let code = Code::Pq(Pq::new(8).expect("pq"));
        let mut sh = e.alloc_shards(10, 1 << 20).expect("alloc");
        assert!(!sh.is_pinned());
        let data = stripes(8, 1 << 20);
        for (i, d) in data.iter().enumerate() {
            sh.shard_mut(i).expect("shard").copy_from_slice(d);
        }
        assert_eq!(e.encode_shards(&code, &mut sh).expect("enc"), Route::Cpu);
        assert!(g.calls.lock().expect("lock").is_empty());
        let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
        let (mut p, mut q) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        Pq::new(8)
            .expect("pq")
            .encode(&srcs, &mut p, &mut q)
            .expect("cpu");
        assert_eq!(sh.shard(8).expect("p"), p.as_slice());
        assert_eq!(sh.shard(9).expect("q"), q.as_slice());
        // rebuild two data shards in place on the CPU
        sh.shard_mut(2).expect("s").fill(0);
        sh.shard_mut(5).expect("s").fill(0);
        assert_eq!(
            e.reconstruct_shards(&code, &mut sh, &[2, 5])
                .expect("rebuild"),
            Route::Cpu
        );
        assert_eq!(sh.shard(2).expect("s"), data[2].as_slice());
        assert_eq!(sh.shard(5).expect("s"), data[5].as_slice());
        assert!(sh.shard(10).is_err());
    }

    /// Shards named twice, or out of range, are refused by `split`.
    #[test]
    fn host_shards_split_checks() {
        let mut sh = HostShards::heap(4, 100);
        assert!(sh.split(&[0, 1], &[1]).is_err());
        assert!(sh.split(&[0, 4], &[1]).is_err());
        let (s, d) = sh.split(&[3, 0], &[2]).expect("split");
        assert_eq!((s.len(), d.len(), s[0].len()), (2, 1, 100));
        assert!(sh.set_len(4097).is_err());
        sh.set_len(4096).expect("capacity");
        assert_eq!(sh.shard(3).expect("s").len(), 4096);
    }

    /// The decoder of a (code, loss pattern) is built once per engine.
    #[test]
    fn decoders_are_cached() {
        let e = Engine::cpu(Policy::default());
        let code = Code::Rs(ReedSolomon::new(4, 2, crate::Matrix::Cauchy).expect("rs"));
        let a = e.cached_decoder(&code, &[0, 3]).expect("d").expect("some");
        let b = e.cached_decoder(&code, &[0, 3]).expect("d").expect("some");
        assert!(Arc::ptr_eq(&a, &b));
        let c = e.cached_decoder(&code, &[1, 3]).expect("d").expect("some");
        assert!(!Arc::ptr_eq(&a, &c));
        let other = Code::Rs(ReedSolomon::new(4, 2, crate::Matrix::Vandermonde).expect("rs"));
        let d = e.cached_decoder(&other, &[0, 3]).expect("d").expect("some");
        assert!(!Arc::ptr_eq(&a, &d));
        assert_ne!(a.matrix(), d.matrix());
    }

    #[test]
    fn gpu_error_falls_back_to_cpu_and_counts() {
        let (e, g) = engine(true, cal("pq", 1.0, 2.0), Policy::default());
        let code = Code::Pq(Pq::new(4).expect("pq 4"));
        let data = stripes(4, 1 << 20);
        let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
        let (mut p, mut q) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        let r = e
            .encode(&code, &srcs, &mut [p.as_mut_slice(), q.as_mut_slice()])
            .expect("falls back");
        assert_eq!(r, Route::Cpu);
        assert_eq!(e.fallbacks_total(), 1);
        assert_eq!(g.calls.lock().expect("lock").len(), 1);
        // the CPU result overwrote the garbage
        let (mut p2, mut q2) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        Pq::new(4)
            .expect("pq")
            .encode(&srcs, &mut p2, &mut q2)
            .expect("cpu");
        assert!(p == p2 && q == q2);
    }

    #[test]
    fn gpu_error_with_fail_policy_is_returned() {
        let policy = Policy {
            fallback: Fallback::Fail,
            ..Policy::default()
        };
        let (e, _) = engine(true, cal("xor", 1.0, 2.0), policy);
        let data = stripes(8, 1 << 18);
        let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
        let mut p = vec![0u8; 1 << 18];
        let err = e
            .encode(&Code::Xor(Xor::new()), &srcs, &mut [p.as_mut_slice()])
            .expect_err("fail policy");
        assert!(matches!(err, ParityError::Gpu(_)));
        assert_eq!(e.fallbacks_total(), 0);
    }

    #[test]
    fn reconstruct_routes_matrix_job_and_splits_shards() {
        // GPU "wins" for matrix jobs: the fake writes 0x5a into exactly the lost shards.
        let (e, g) = engine(false, cal("matrix", 1.0, 2.0), Policy::default());
        let rs = ReedSolomon::new(4, 2, crate::Matrix::Cauchy).expect("rs");
        let mut shards = stripes(6, 1 << 19);
        let orig = shards.clone();
        let mut refs: Vec<&mut [u8]> = shards.iter_mut().map(|v| v.as_mut_slice()).collect();
        let r = e
            .reconstruct(&Code::Rs(rs.clone()), &mut refs, &[1, 4])
            .expect("gpu");
        assert_eq!(r, Route::Gpu);
        assert_eq!(g.calls.lock().expect("lock").as_slice(), ["matrix"]);
        for (i, s) in shards.iter().enumerate() {
            if i == 1 || i == 4 {
                assert!(s.iter().all(|&b| b == 0x5a));
            } else {
                assert_eq!(s, &orig[i]);
            }
        }
        // CPU route (no GPU) recomputes the real bytes
        let data: Vec<&[u8]> = orig[..4].iter().map(|v| v.as_slice()).collect();
        let (mut p0, mut p1) = (vec![0u8; 1 << 19], vec![0u8; 1 << 19]);
        rs.encode(&data, &mut [p0.as_mut_slice(), p1.as_mut_slice()])
            .expect("enc");
        let mut full: Vec<Vec<u8>> = orig[..4].to_vec();
        full.push(p0);
        full.push(p1);
        let want = full.clone();
        full[0].fill(0);
        full[5].fill(0);
        let mut refs: Vec<&mut [u8]> = full.iter_mut().map(|v| v.as_mut_slice()).collect();
        let cpu = Engine::cpu(Policy::default());
        assert_eq!(
            cpu.reconstruct(&Code::Rs(rs), &mut refs, &[0, 5])
                .expect("cpu"),
            Route::Cpu
        );
        assert_eq!(full, want);
    }

    #[test]
    fn calibration_cache_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = GpuInfo {
            name: "H100".into(),
            uuid: "GPU-1234".into(),
            driver: 12080,
        };
        let path = Calibration::cache_path(dir.path(), &info, 16);
        assert!(
            path.to_string_lossy()
                .contains("GPU-1234-driver12080-cpu16")
        );
        assert!(Calibration::load(&path).is_none());
        let mut c = cal("pq", 1.0, 2.0);
        c.gpu = Some(info);
        c.save(&path).expect("save");
        assert_eq!(Calibration::load(&path), Some(c));
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let e = Engine::cpu(Policy::default());
        let data = stripes(3, 100);
        let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
        let mut p = vec![0u8; 99];
        assert!(matches!(
            e.encode(&Code::Xor(Xor::new()), &srcs, &mut [p.as_mut_slice()]),
            Err(ParityError::Length(_))
        ));
        let mut shards = stripes(3, 100);
        let mut refs: Vec<&mut [u8]> = shards.iter_mut().map(|v| v.as_mut_slice()).collect();
        assert!(
            e.reconstruct(&Code::Xor(Xor::new()), &mut refs, &[0, 1])
                .is_err()
        );
    }
}
