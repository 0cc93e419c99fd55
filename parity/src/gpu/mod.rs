//! The GPU side of the parity engine and the dispatcher between CPU and GPU.
//!
//! - [`source`]: CUDA C kernels, generated per job shape, compiled by NVRTC at run time;
//! - `cuda` (feature `cuda`): [`CudaParity`], the backend over cudarc with dynamic loading, with a
//!   device-resident API and a host API that stages through pinned memory on several streams;
//! - [`Engine`]: routes each request to the backend measured faster for its code and size
//!   (calibrated once per GPU UUID + driver version, cached on disk), honours [`Policy`]
//!   (GpuRaidPolicy), and falls back to the CPU on any CUDA error, counting it in
//!   `parity_fallbacks_total` ([`Engine::fallbacks_total`]).

#[cfg(feature = "cuda")]
pub mod bench;
#[cfg(feature = "cuda")]
mod cuda;
pub mod source;

#[cfg(feature = "cuda")]
pub use cuda::{CudaParity, PinnedShards};
pub use source::Job;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// What the engine needs from a GPU backend: the host API (caller's host buffers in and out).
/// A trait so that the routing and fallback logic is unit-tested without a GPU.
pub trait GpuBackend: Send + Sync {
    fn info(&self) -> GpuInfo;
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

/// One measured point: data GB/s (k x shard bytes per second) of both backends, host data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalPoint {
    pub class: String,
    pub shard_bytes: u64,
    pub cpu_gbps: f64,
    pub gpu_gbps: f64,
}

/// The calibration of one machine (GPU + CPU threads).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub gpu: Option<GpuInfo>,
    pub cpu_threads: usize,
    pub points: Vec<CalPoint>,
}

impl Calibration {
    /// Whether the GPU measured faster for this class near this shard size (nearest calibrated
    /// size in log scale; a class never measured goes to the CPU).
    pub fn gpu_faster(&self, class: &str, shard_bytes: u64) -> bool {
        let lg = |b: u64| (b.max(1) as f64).log2();
        self.points
            .iter()
            .filter(|p| p.class == class)
            .min_by(|a, b| {
                let da = (lg(a.shard_bytes) - lg(shard_bytes)).abs();
                let db = (lg(b.shard_bytes) - lg(shard_bytes)).abs();
                da.total_cmp(&db)
            })
            .is_some_and(|p| p.gpu_gbps > p.cpu_gbps)
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

    pub fn load(path: &std::path::Path) -> Option<Calibration> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
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

    /// Measures CPU (all rayon threads) and GPU host end-to-end on a small fixed set of shapes:
    /// xor 8+1, pq 8+2, matrix 10x4 at 256 KiB and 8 MiB per shard, best of 3 after a warm-up.
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
        for (code, job) in &shapes {
            for shard in [256usize << 10, 8 << 20] {
                let (k, m) = (job.k(), job.m());
                let data: Vec<Vec<u8>> = (0..k)
                    .map(|i| {
                        let mut v = vec![0u8; shard];
                        crate::util::fill_seeded(&mut v, i as u64 + 1);
                        v
                    })
                    .collect();
                let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
                let mut out: Vec<Vec<u8>> = (0..m).map(|_| vec![0u8; shard]).collect();
                let best = |f: &mut dyn FnMut() -> Result<(), ParityError>| {
                    let mut best = f64::MAX;
                    for round in 0..4 {
                        let t = Instant::now();
                        f()?;
                        if round > 0 {
                            best = best.min(t.elapsed().as_secs_f64());
                        }
                    }
                    Ok::<f64, ParityError>((k * shard) as f64 / best / 1e9)
                };
                let cpu = best(&mut || {
                    let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
                    code.encode_cpu(&srcs, &mut d)
                })?;
                let gpu_rate = best(&mut || {
                    let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
                    gpu.run_host(job, &srcs, &mut d, policy.max_vram_bytes)
                })?;
                points.push(CalPoint {
                    class: job.class().into(),
                    shard_bytes: shard as u64,
                    cpu_gbps: cpu,
                    gpu_gbps: gpu_rate,
                });
            }
        }
        Ok(Calibration {
            gpu: Some(gpu.info()),
            cpu_threads: rayon::current_num_threads(),
            points,
        })
    }
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

    fn decoder(&self, lost: &[usize]) -> Result<Option<Decoder>, ParityError> {
        match self {
            Code::Xor(_) => Ok(None),
            Code::Pq(p) => p.decoder(lost).map(Some),
            Code::Rs(r) => r.decoder(lost).map(Some),
        }
    }
}

/// The CPU side of a dispatched request: (sources, outputs).
type CpuRun<'a> = dyn FnMut(&[&[u8]], &mut [&mut [u8]]) -> Result<(), ParityError> + 'a;

/// The dispatcher: CPU always, GPU where it measured faster and the policy allows.
pub struct Engine {
    gpu: Option<Arc<dyn GpuBackend>>,
    calibration: Calibration,
    policy: Policy,
    fallbacks: AtomicU64,
    gpu_runs: AtomicU64,
    cpu_runs: AtomicU64,
    no_gpu_reason: Option<String>,
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

    /// Where a job over shards of `shard_bytes` goes.
    pub fn route(&self, job: &Job, shard_bytes: u64) -> Route {
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
        if self.calibration.gpu_faster(job.class(), shard_bytes) {
            Route::Gpu
        } else {
            Route::Cpu
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
        if let (Route::Gpu, Some(g)) = (self.route(job, len as u64), &self.gpu) {
            match g.run_host(job, srcs, dsts, self.policy.max_vram_bytes) {
                Ok(()) => {
                    self.gpu_runs.fetch_add(1, Ordering::Relaxed);
                    return Ok(Route::Gpu);
                }
                Err(e) if e.is_bad_input() => return Err(e),
                Err(e) => match self.policy.fallback {
                    Fallback::Fail => return Err(e),
                    Fallback::Cpu => {
                        self.fallbacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("GPU {} failed, recomputing on the CPU: {e}", job.class());
                    }
                },
            }
        }
        cpu(srcs, dsts)?;
        self.cpu_runs.fetch_add(1, Ordering::Relaxed);
        Ok(Route::Cpu)
    }

    /// Computes the parity shards of `data`.
    pub fn encode(
        &self,
        code: &Code,
        data: &[&[u8]],
        parity: &mut [&mut [u8]],
    ) -> Result<Route, ParityError> {
        let job = code.encode_job(data.len());
        if parity.len() != job.m() {
            return Err(ParityError::Geometry(format!(
                "{} parity shards given, the code has {}",
                parity.len(),
                job.m()
            )));
        }
        let len = data.first().map_or(0, |s| s.len());
        if let Some((i, _)) = data
            .iter()
            .map(|s| s.len())
            .chain(parity.iter().map(|s| s.len()))
            .enumerate()
            .find(|(_, l)| *l != len)
        {
            return Err(ParityError::Length(format!(
                "shard {i} differs from shard 0 ({len} bytes)"
            )));
        }
        self.dispatch(&job, data, parity, &mut |s, d| code.encode_cpu(s, d))
    }

    /// Recomputes the `lost` shards (data then parity numbering, as the CPU codecs) in place.
    pub fn reconstruct(
        &self,
        code: &Code,
        shards: &mut [&mut [u8]],
        lost: &[usize],
    ) -> Result<Route, ParityError> {
        let n = shards.len();
        let dec = code.decoder(lost)?;
        let (job, survivors, lost_order): (Job, Vec<usize>, Vec<usize>) = match &dec {
            None => {
                if lost.len() != 1 || lost[0] >= n {
                    return Err(ParityError::Geometry(format!(
                        "XOR rebuilds exactly one shard in 0..{n}, asked for {lost:?}"
                    )));
                }
                let surv = (0..n).filter(|&i| i != lost[0]).collect();
                (Job::Xor { k: n - 1 }, surv, lost.to_vec())
            }
            Some(d) => (
                Job::Matrix {
                    k: d.survivors().len(),
                    m: d.lost().len(),
                    rows: d.matrix().to_vec(),
                },
                d.survivors().to_vec(),
                d.lost().to_vec(),
            ),
        };
        let len = shards.first().map_or(0, |s| s.len());
        if let Some((i, s)) = shards.iter().enumerate().find(|(_, s)| s.len() != len) {
            return Err(ParityError::Length(format!(
                "shard {i} has {} bytes, expected {len}",
                s.len()
            )));
        }
        // Survivors read-only, lost shards written: split the one &mut array without copying.
        let mut slots: Vec<Option<&mut [u8]>> = shards.iter_mut().map(|s| Some(&mut **s)).collect();
        let mut dsts: Vec<&mut [u8]> = Vec::with_capacity(lost_order.len());
        for &l in &lost_order {
            dsts.push(
                slots[l]
                    .take()
                    .ok_or_else(|| ParityError::Geometry(format!("lost shard {l} listed twice")))?,
            );
        }
        let mut srcs: Vec<&[u8]> = Vec::with_capacity(survivors.len());
        for &s in &survivors {
            srcs.push(
                slots[s]
                    .take()
                    .map(|x| &*x)
                    .ok_or_else(|| ParityError::Geometry(format!("survivor {s} is also lost")))?,
            );
        }
        let mut cpu = |s: &[&[u8]], d: &mut [&mut [u8]]| -> Result<(), ParityError> {
            match &dec {
                None => match d {
                    [out] => Xor::new().encode_par(s, out),
                    _ => Err(ParityError::Geometry("XOR rebuilds one shard".into())),
                },
                Some(dec) => dec.apply_split_par(s, d),
            }
        };
        self.dispatch(&job, &srcs, &mut dsts, &mut cpu)
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
            gpu: None,
            cpu_threads: 1,
            points: [1u64 << 16, 1 << 24]
                .iter()
                .map(|&s| CalPoint {
                    class: class.into(),
                    shard_bytes: s,
                    cpu_gbps: cpu,
                    gpu_gbps: gpu,
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
            gpu: None,
            cpu_threads: 1,
            points: vec![
                CalPoint {
                    class: "xor".into(),
                    shard_bytes: 256 << 10,
                    cpu_gbps: 50.0,
                    gpu_gbps: 20.0,
                },
                CalPoint {
                    class: "xor".into(),
                    shard_bytes: 8 << 20,
                    cpu_gbps: 10.0,
                    gpu_gbps: 40.0,
                },
            ],
        };
        assert!(!c.gpu_faster("xor", 128 << 10));
        assert!(!c.gpu_faster("xor", 1 << 20));
        assert!(c.gpu_faster("xor", 4 << 20));
        assert!(c.gpu_faster("xor", 1 << 30));
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
