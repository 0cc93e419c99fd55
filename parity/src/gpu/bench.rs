//! `tessera-raid bench --gpu`: GPU kernels against the device's own copy rate, the host path
//! against pinned H2D, the CPU engine on all cores and the `auto` dispatcher, all in one run.
//!
//! Units (1 GB = 1e9 B):
//! - kernel "moved" = bytes read + bytes written = (k + m) x shard per operation; its peer is a
//!   `cuMemcpyDtoD` of (k + m) x shard / 2 bytes, counted the same way (read + write = 2 x size);
//! - host / cpu / auto rows count data bytes = k x shard per operation (what the caller asked to
//!   protect); the host rows' peer is a pinned H2D copy of the same k x shard bytes, and the
//!   pageable row is also shown against a parallel CPU memcpy of those bytes into pinned memory
//!   (its physical limit: pageable memory reaches the GPU only through such a copy).
//! - kernel and d2d are timed with CUDA events around batches of back-to-back operations, in
//!   alternating rounds (best round of each), so both see the same clocks.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, result};
use rayon::prelude::*;
use serde::Serialize;

use super::{
    Code, CudaParity, Engine, GpuBackend, HostShards, Job, Plan, Policy, Route, Schedule, Trace,
};
use crate::{Matrix, ParityError, Pq, ReedSolomon, Xor};

#[derive(Debug, Serialize)]
pub struct GpuRow {
    pub op: String,
    pub k: usize,
    pub m: usize,
    pub shard_bytes: usize,
    /// GPU output equals the CPU engine's, byte for byte (kernel, pageable, pinned, both autos).
    pub equal: bool,
    pub kernel_moved_gbps: f64,
    pub d2d_moved_gbps: f64,
    pub kernel_vs_d2d: f64,
    /// Host API on the caller's pageable buffers (`GpuBackend::run_host`), data GB/s.
    pub host_data_gbps: f64,
    pub h2d_gbps: f64,
    pub host_vs_h2d: f64,
    /// Parallel CPU memcpy of the k data shards from pageable into pinned memory (all threads).
    pub memcpy_gbps: f64,
    pub host_vs_memcpy: f64,
    /// Zero-copy host API (shards in engine-allocated pinned memory, `run_pinned`), data GB/s.
    pub pinned_data_gbps: f64,
    pub pinned_vs_h2d: f64,
    /// `run_pinned_many`: this many stripes of the row's shape per call, one pipeline.
    pub pinned_batch_stripes: usize,
    pub pinned_batch_gbps: f64,
    pub pinned_batch_vs_h2d: f64,
    pub cpu_data_gbps: f64,
    /// The CPU engine on the engine-allocated pinned shards (the same memory autoP works on).
    pub cpu_pinned_gbps: f64,
    /// `Engine::encode` / `reconstruct` on pageable buffers.
    pub auto_data_gbps: f64,
    pub auto_route: Route,
    /// auto / max(cpu, host GPU).
    pub auto_vs_best: f64,
    /// `Engine::encode_shards` / `reconstruct_shards` on engine-allocated (pinned) shards.
    pub auto_pinned_gbps: f64,
    pub auto_pinned_route: Route,
    /// auto pinned / max(cpu on the pinned shards, pinned GPU).
    pub auto_pinned_vs_best: f64,
}

#[derive(Debug, Serialize)]
pub struct GpuReport {
    pub gpu: String,
    pub driver: i32,
    pub cpu_threads: usize,
    pub calibration: super::Calibration,
    pub rows: Vec<GpuRow>,
}

fn cu(e: impl std::fmt::Display) -> ParityError {
    ParityError::Gpu(e.to_string())
}

type Step<'a> = &'a mut dyn FnMut() -> Result<(), ParityError>;

/// Best seconds per iteration of `f` (batches of `iters`, each closed by `end`, best of `rounds`).
fn best_of(rounds: usize, iters: usize, f: Step<'_>, end: Step<'_>) -> Result<f64, ParityError> {
    f()?; // warm-up (kernel compile, page faults)
    end()?;
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        end()?;
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    Ok(best)
}

struct Case {
    op: &'static str,
    code: Code,
    /// lost shards for a reconstruct row
    lost: Option<Vec<usize>>,
}

fn cases() -> Result<Vec<Case>, ParityError> {
    let rs = ReedSolomon::new(10, 4, Matrix::Cauchy)?;
    Ok(vec![
        Case {
            op: "xor",
            code: Code::Xor(Xor::new()),
            lost: None,
        },
        Case {
            op: "pq",
            code: Code::Pq(Pq::new(8)?),
            lost: None,
        },
        Case {
            op: "pq",
            code: Code::Pq(Pq::new(16)?),
            lost: None,
        },
        Case {
            op: "rs-encode",
            code: Code::Rs(rs.clone()),
            lost: None,
        },
        Case {
            op: "rs-decode2",
            code: Code::Rs(rs),
            lost: Some(vec![0, 1]),
        },
    ])
}

fn k_of(c: &Case) -> usize {
    match &c.code {
        Code::Xor(_) => 8,
        Code::Pq(p) => p.k(),
        Code::Rs(r) => r.k(),
    }
}

pub fn run(shard_sizes: &[usize], progress: &dyn Fn(&str)) -> Result<GpuReport, ParityError> {
    let gpu = Arc::new(CudaParity::open(0)?);
    let info = gpu.info();
    progress("calibrating auto");
    let engine = Engine::calibrated(gpu.clone(), Policy::default());
    let stream = gpu.stream().clone();
    let mut rows = Vec::new();
    for case in cases()? {
        for &shard in shard_sizes {
            let k = k_of(&case);
            progress(&format!("{} {k} x {shard}", case.op));
            let row = one_row(&gpu, &engine, &stream, &case, shard)?;
            rows.push(row);
        }
    }
    Ok(GpuReport {
        gpu: info.name,
        driver: info.driver,
        cpu_threads: rayon::current_num_threads(),
        calibration: engine.calibration().clone(),
        rows,
    })
}

/// Seconds per operation of `iters` back-to-back operations on `stream`, CUDA events around them.
fn event_time(
    stream: &Arc<CudaStream>,
    iters: usize,
    f: &mut dyn FnMut() -> Result<(), ParityError>,
) -> Result<f64, ParityError> {
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags).map_err(cu)?;
    for _ in 0..iters {
        f()?;
    }
    let end = stream.record_event(flags).map_err(cu)?;
    let ms = start.elapsed_ms(&end).map_err(cu)?;
    Ok(ms as f64 / 1e3 / iters as f64)
}

/// Kernel of `job` (with `plan`, `None` = the engine's choice) vs a d2d copy of the same bytes
/// moved, in alternating rounds; returns (kernel s, d2d s, outputs of the last kernel).
fn kernel_vs_copy(
    gpu: &CudaParity,
    stream: &Arc<CudaStream>,
    job: &Job,
    plan: Option<Plan>,
    srcs: &[&[u8]],
    shard: usize,
) -> Result<(f64, f64, Vec<Vec<u8>>), ParityError> {
    let (k, m) = (job.k(), job.m());
    let dsrc: Vec<CudaSlice<u8>> = srcs
        .iter()
        .map(|s| stream.clone_htod(*s).map_err(cu))
        .collect::<Result<_, _>>()?;
    let mut ddst: Vec<CudaSlice<u8>> = (0..m)
        .map(|_| stream.alloc_zeros::<u8>(shard).map_err(cu))
        .collect::<Result<_, _>>()?;
    let copy_bytes = ((k + m) * shard / 2).next_multiple_of(256);
    let csrc = stream.alloc_zeros::<u8>(copy_bytes).map_err(cu)?;
    let mut cdst = stream.alloc_zeros::<u8>(copy_bytes).map_err(cu)?;
    let iters = (8usize << 30).div_ceil((k + m) * shard).clamp(3, 400);
    let mut kernel = || -> Result<(), ParityError> {
        let mut sp = Vec::with_capacity(k);
        let mut guards = Vec::new();
        for s in &dsrc {
            let (p, g) = s.device_ptr(stream);
            sp.push(p);
            guards.push(g);
        }
        let mut dp = Vec::with_capacity(m);
        for d in ddst.iter_mut() {
            let (p, g) = d.device_ptr_mut(stream);
            dp.push(p);
            guards.push(g);
        }
        // SAFETY: device buffers of `shard` bytes owned here, used on this stream only.
        unsafe {
            match plan {
                Some(p) => gpu.launch_raw_plan(job, p, &sp, &dp, shard, stream),
                None => gpu.launch_raw(job, &sp, &dp, shard, stream),
            }
        }
    };
    let mut copy = || -> Result<(), ParityError> {
        let (sp, _g1) = csrc.device_ptr(stream);
        let (dp, _g2) = cdst.device_ptr_mut(stream);
        // SAFETY: both buffers are copy_bytes long, owned here, used on this stream only.
        unsafe { result::memcpy_dtod_async(dp, sp, copy_bytes, stream.cu_stream()) }.map_err(cu)
    };
    kernel()?; // warm-up: NVRTC compile, module load
    copy()?;
    stream.synchronize().map_err(cu)?;
    let (mut ks, mut cs) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        ks = ks.min(event_time(stream, iters, &mut kernel)?);
        cs = cs.min(event_time(stream, iters, &mut copy)?);
    }
    let outs = ddst
        .iter()
        .map(|d| stream.clone_dtoh(d).map_err(cu))
        .collect::<Result<Vec<_>, _>>()?;
    // bytes: kernel (k+m) x shard, copy 2 x copy_bytes (read + write): the same within 256 B
    Ok((
        ks,
        cs * ((k + m) * shard) as f64 / (2 * copy_bytes) as f64,
        outs,
    ))
}

/// Parallel copy of the shards into pinned memory (the pageable path's unavoidable first step).
fn memcpy_rate(gpu: &CudaParity, srcs: &[&[u8]], rounds: usize) -> Result<f64, ParityError> {
    let shard = srcs.first().map_or(0, |s| s.len());
    let mut pin = gpu.alloc_pinned_shards(srcs.len(), shard)?;
    let mut best = f64::MAX;
    for _ in 0..=rounds {
        let t = Instant::now();
        {
            let all: Vec<usize> = (0..srcs.len()).collect();
            let (_, mut rows) = pin.split(&[], &all)?;
            rows.par_iter_mut().zip(srcs.par_iter()).for_each(|(d, s)| {
                d.par_chunks_mut(1 << 20)
                    .zip(s.par_chunks(1 << 20))
                    .for_each(|(d, s)| d.copy_from_slice(s));
            });
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((srcs.len() * shard) as f64 / best / 1e9)
}

/// The job, sources and outputs of a bench case (lost shards for a reconstruct).
fn case_job(
    case: &Case,
    kd: usize,
    n_total: usize,
) -> Result<(Job, Vec<usize>, Vec<usize>), ParityError> {
    Ok(match &case.lost {
        None => (
            super::Code::encode_job(&case.code, kd),
            (0..kd).collect(),
            (kd..n_total).collect(),
        ),
        Some(lost) => {
            let dec = case
                .code
                .decoder(lost)?
                .ok_or_else(|| ParityError::Geometry("xor decode row".into()))?;
            (
                Job::Matrix {
                    k: dec.survivors().len(),
                    m: dec.lost().len(),
                    rows: dec.matrix().to_vec(),
                },
                dec.survivors().to_vec(),
                dec.lost().to_vec(),
            )
        }
    })
}

fn n_total_of(case: &Case) -> usize {
    let kd = k_of(case);
    match &case.code {
        Code::Xor(_) => kd + 1,
        Code::Pq(_) => kd + 2,
        Code::Rs(r) => r.k() + r.m(),
    }
}

/// A full stripe (data seeded, parity from the CPU engine).
fn stripe(case: &Case, shard: usize) -> Result<Vec<Vec<u8>>, ParityError> {
    let kd = k_of(case);
    let mut shards: Vec<Vec<u8>> = (0..n_total_of(case))
        .map(|i| {
            let mut v = vec![0u8; shard];
            if i < kd {
                crate::util::fill_seeded(&mut v, 1000 + i as u64);
            }
            v
        })
        .collect();
    let (d, p) = shards.split_at_mut(kd);
    let srcs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
    let mut par: Vec<&mut [u8]> = p.iter_mut().map(|v| v.as_mut_slice()).collect();
    case.code.encode_cpu(&srcs, &mut par)?;
    Ok(shards)
}

fn pinned_copy(gpu: &CudaParity, shards: &[Vec<u8>]) -> Result<HostShards, ParityError> {
    let shard = shards.first().map_or(0, |s| s.len());
    let mut ps = gpu.alloc_pinned_shards(shards.len(), shard)?;
    for (i, v) in shards.iter().enumerate() {
        ps.shard_mut(i)?.copy_from_slice(v);
    }
    Ok(ps)
}

fn one_row(
    gpu: &Arc<CudaParity>,
    engine: &Engine,
    stream: &Arc<CudaStream>,
    case: &Case,
    shard: usize,
) -> Result<GpuRow, ParityError> {
    let kd = k_of(case);
    let shards = stripe(case, shard)?;
    let (job, src_idx, dst_idx) = case_job(case, kd, shards.len())?;
    let (k, m) = (job.k(), job.m());
    let srcs: Vec<&[u8]> = src_idx.iter().map(|&i| shards[i].as_slice()).collect();
    let want: Vec<&[u8]> = dst_idx.iter().map(|&i| shards[i].as_slice()).collect();

    // --- device-resident kernel vs d2d copy of the same bytes moved
    let (kernel_s, d2d_s, outs) = kernel_vs_copy(gpu, stream, &job, None, &srcs, shard)?;
    let mut equal = outs.iter().zip(&want).all(|(o, w)| o.as_slice() == *w);
    let moved = ((k + m) * shard) as f64;

    // --- pinned H2D of the k data shards (cacheable pinned memory, as the engine's)
    let data_bytes = k * shard;
    let pin = super::cuda::pinned_alloc(gpu.context(), data_bytes)?;
    let mut dbuf = stream.alloc_zeros::<u8>(data_bytes).map_err(cu)?;
    let h_iters = (4usize << 30).div_ceil(data_bytes).clamp(2, 100);
    let h2d_s = best_of(
        3,
        h_iters,
        &mut || {
            let (dp, _g) = dbuf.device_ptr_mut(stream);
            let src = pin.as_slice().map_err(cu)?;
            // SAFETY: dbuf holds data_bytes; pinned buffer lives until after the sync.
            unsafe { result::memcpy_htod_async(dp, src, stream.cu_stream()) }.map_err(cu)
        },
        &mut || stream.synchronize().map_err(cu),
    )?;
    drop((pin, dbuf));
    let memcpy = memcpy_rate(gpu, &srcs, 3)?;

    // --- host end-to-end: pageable (staging lanes), zero-copy pinned
    let it = h_iters.min(20);
    let mut out: Vec<Vec<u8>> = (0..m).map(|_| vec![0u8; shard]).collect();
    let host_s = best_of(
        3,
        it,
        &mut || {
            let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
            gpu.run_host(&job, &srcs, &mut d, None)
        },
        &mut || Ok(()),
    )?;
    equal &= out.iter().zip(&want).all(|(o, w)| o.as_slice() == *w);
    let mut ps = pinned_copy(gpu, &shards)?;
    for &d in &dst_idx {
        ps.shard_mut(d)?.fill(0);
    }
    let pinned_s = best_of(
        3,
        it,
        &mut || gpu.run_pinned(&job, &mut ps, &src_idx, &dst_idx, None),
        &mut || Ok(()),
    )?;
    for (j, &d) in dst_idx.iter().enumerate() {
        equal &= ps.shard(d)? == want[j];
    }
    // several stripes per call through one pipeline (as many as fit 64 MiB per shard, <= 8)
    let nb = ((64usize << 20) / shard).clamp(1, 8);
    let mut batch: Vec<HostShards> = (0..nb)
        .map(|_| pinned_copy(gpu, &shards))
        .collect::<Result<_, _>>()?;
    for b in batch.iter_mut() {
        for &d in &dst_idx {
            b.shard_mut(d)?.fill(0);
        }
    }
    let batch_s = best_of(
        3,
        it.div_ceil(nb).max(2),
        &mut || {
            let mut refs: Vec<&mut HostShards> = batch.iter_mut().collect();
            gpu.run_pinned_many(&[&job], &mut refs, &src_idx, &dst_idx, None)
        },
        &mut || Ok(()),
    )? / nb as f64;
    for b in &batch {
        for (j, &d) in dst_idx.iter().enumerate() {
            equal &= b.shard(d)? == want[j];
        }
    }
    drop(batch);
    let dec = match &case.lost {
        Some(l) => case.code.decoder(l)?,
        None => None,
    };
    // CPU and auto on pageable buffers, CPU and auto on the pinned shards, in rounds of one
    // counted call of each (>= 30 calls and ~4 GiB of data each; the order of the rounds a
    // balanced Latin square), each right after an uncounted call of the same function, median
    // call of each; so all four see the same machine state, and auto is compared with the very
    // code it routes to on the very same buffers (CPU rebuilds write into `work` as auto
    // does). The calibration measures the same way. Median, not best: with all 16 threads, the
    // best of 300 calls of ~100 us of the very same CPU code differed by up to 23% between two
    // series (a rare lucky call), the medians by 3% (`--gpu-explore`'s dispatch check); routing
    // adds 0.3 us per call. The uncounted call first: a zero-copy call right after a CPU call
    // on the same shards finds them in the CPU's caches (half the rate at 1 MiB, 16 threads);
    // after one of its own it runs as the `pinned` column does. (Blocks of 10 calls in a row
    // did the same for the GPU but let slow drifts hit one block: identical CPU calls then
    // differed by up to 7%.)
    let work = RefCell::new(shards.clone());
    let out = RefCell::new(out);
    let ps = RefCell::new(ps);
    let (route, route_p) = (Cell::new(Route::Cpu), Cell::new(Route::Cpu));
    let samples = (4usize << 30).div_ceil(data_bytes).clamp(30, 300);
    let mut cpu_f = || cpu_call(case, dec.as_ref(), &srcs, &src_idx, &dst_idx, &work, &out);
    let mut auto_f = || {
        route.set(auto_call(engine, case, &srcs, &work, &out)?);
        Ok(())
    };
    let mut cpup_f = || {
        let mut ps = ps.borrow_mut();
        let (s, mut d) = ps.split(&src_idx, &dst_idx)?;
        match &dec {
            Some(dec) => dec.apply_split_par(&s, &mut d),
            None => case.code.encode_cpu(&s, &mut d),
        }
    };
    let mut autop_f = || {
        let mut ps = ps.borrow_mut();
        route_p.set(match &case.lost {
            None => engine.encode_shards(&case.code, &mut ps)?,
            Some(lost) => engine.reconstruct_shards(&case.code, &mut ps, lost)?,
        });
        Ok(())
    };
    let t = paired(
        samples,
        &mut [&mut cpu_f, &mut auto_f, &mut cpup_f, &mut autop_f],
        true,
        true,
    )?;
    let (cpu_s, auto_s, cpup_s, autop_s) = (t[0].1, t[1].1, t[2].1, t[3].1);
    let (route, route_p) = (route.get(), route_p.get());
    let (work, out, ps) = (work.into_inner(), out.into_inner(), ps.into_inner());
    equal &= work == shards;
    if case.lost.is_none() {
        equal &= out.iter().zip(&want).all(|(o, w)| o.as_slice() == *w);
    }
    for (j, &d) in dst_idx.iter().enumerate() {
        equal &= ps.shard(d)? == want[j];
    }
    let g = |bytes: f64, s: f64| bytes / s / 1e9;
    let db = data_bytes as f64;
    let (kernel, d2d) = (g(moved, kernel_s), g(moved, d2d_s));
    let (host, h2d, cpu) = (g(db, host_s), g(db, h2d_s), g(db, cpu_s));
    let (pinned, auto, autop) = (g(db, pinned_s), g(db, auto_s), g(db, autop_s));
    let (pbatch, cpup) = (g(db, batch_s), g(db, cpup_s));
    Ok(GpuRow {
        op: case.op.into(),
        k,
        m,
        shard_bytes: shard,
        equal,
        kernel_moved_gbps: kernel,
        d2d_moved_gbps: d2d,
        kernel_vs_d2d: kernel / d2d,
        host_data_gbps: host,
        h2d_gbps: h2d,
        host_vs_h2d: host / h2d,
        memcpy_gbps: memcpy,
        host_vs_memcpy: host / memcpy,
        pinned_data_gbps: pinned,
        pinned_vs_h2d: pinned / h2d,
        pinned_batch_stripes: nb,
        pinned_batch_gbps: pbatch,
        pinned_batch_vs_h2d: pbatch / h2d,
        cpu_data_gbps: cpu,
        cpu_pinned_gbps: cpup,
        auto_data_gbps: auto,
        auto_route: route,
        auto_vs_best: auto / cpu.max(host),
        auto_pinned_gbps: autop,
        auto_pinned_route: route_p,
        auto_pinned_vs_best: autop / cpup.max(pinned),
    })
}

/// Best and median seconds per call of each of `fns`: `rounds` rounds of one counted call of
/// each (with `rotate`, a multiple of the number of functions); `warm`: each counted call
/// right after an uncounted call of the same function, so that it finds the caches as a run
/// of such calls leaves them, not as the previous function did. `rotate`: the order of round
/// r is row r of a balanced Latin square, so that every function starts a round and follows
/// every other one equally often (in a fixed order one function always followed the same
/// other one). A first, uncounted round covers the warm-up (decoder cache, page faults).
fn paired(
    rounds: usize,
    fns: Step2<'_, '_>,
    rotate: bool,
    warm: bool,
) -> Result<Vec<(f64, f64)>, ParityError> {
    let n = fns.len();
    let rounds = if rotate {
        rounds.next_multiple_of(n.max(1))
    } else {
        rounds
    };
    let mut all: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); n];
    for r in 0..=rounds {
        for j in 0..n {
            let i = if rotate { super::latin(n, r, j) } else { j };
            if warm {
                (fns[i])()?;
            }
            let t = Instant::now();
            (fns[i])()?;
            let dt = t.elapsed().as_secs_f64();
            if r > 0 {
                all[i].push(dt);
            }
        }
    }
    Ok(all
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            (
                v.first().copied().unwrap_or(f64::MAX),
                v.get(v.len() / 2).copied().unwrap_or(f64::MAX),
            )
        })
        .collect())
}

type Step2<'a, 'b> = &'a mut [&'b mut dyn FnMut() -> Result<(), ParityError>];

/// The CPU engine on a bench case (all threads): encode into `out`, or rebuild into `work`.
fn cpu_call(
    case: &Case,
    dec: Option<&crate::Decoder>,
    srcs: &[&[u8]],
    src_idx: &[usize],
    dst_idx: &[usize],
    work: &RefCell<Vec<Vec<u8>>>,
    out: &RefCell<Vec<Vec<u8>>>,
) -> Result<(), ParityError> {
    match dec {
        Some(dec) => {
            let mut work = work.borrow_mut();
            let mut slots: Vec<Option<&mut [u8]>> =
                work.iter_mut().map(|v| Some(v.as_mut_slice())).collect();
            let mut d = Vec::with_capacity(dst_idx.len());
            for &l in dst_idx {
                d.push(
                    slots[l]
                        .take()
                        .ok_or_else(|| ParityError::Geometry("lost shard listed twice".into()))?,
                );
            }
            let s: Vec<&[u8]> = src_idx
                .iter()
                .filter_map(|&i| slots[i].take().map(|x| &*x))
                .collect();
            dec.apply_split_par(&s, &mut d)
        }
        None => {
            let mut out = out.borrow_mut();
            let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
            case.code.encode_cpu(srcs, &mut d)
        }
    }
}

/// `Engine::encode` / `reconstruct` on a bench case's pageable buffers.
fn auto_call(
    engine: &Engine,
    case: &Case,
    srcs: &[&[u8]],
    work: &RefCell<Vec<Vec<u8>>>,
    out: &RefCell<Vec<Vec<u8>>>,
) -> Result<Route, ParityError> {
    match &case.lost {
        None => {
            let mut out = out.borrow_mut();
            let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
            engine.encode(&case.code, srcs, &mut d)
        }
        Some(lost) => {
            let mut work = work.borrow_mut();
            let mut refs: Vec<&mut [u8]> = work.iter_mut().map(|v| v.as_mut_slice()).collect();
            engine.reconstruct(&case.code, &mut refs, lost)
        }
    }
}

fn size_label(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{}MiB", b >> 20)
    } else {
        format!("{}KiB", b >> 10)
    }
}

fn route_label(r: Route) -> &'static str {
    match r {
        Route::Cpu => "cpu",
        Route::Gpu => "gpu",
    }
}

pub fn render(r: &GpuReport) -> String {
    let mut s = format!(
        "gpu {}  driver {}  cpu threads {}\n\
         kernel/d2d: GB/s moved (read+write), CUDA events; all other columns: GB/s of data (k x shard)\n\
         pageable = run_host on the caller's heap buffers (CPU copies through pinned lanes), vs h2d\n\
         and vs memcpy (all-thread copy of the same bytes into pinned memory, its ceiling);\n\
         pinned = run_pinned, zero-copy on engine-allocated pinned shards, vs h2d (pinned H2D);\n\
         xN = run_pinned_many, N such stripes per call in one pipeline, vs h2d\n\
         cpu = CPU engine, all threads, pageable buffers; cpuP = the same on the pinned shards\n\
         (cpu, cpuP, auto, autoP: median call, in turn, each after one of its own; other host columns: best of 3 rounds)\n\
         auto = Engine on pageable buffers, /best = auto / max(cpu, pageable);\n\
         autoP = Engine on engine-allocated pinned shards, /best = autoP / max(cpuP, pinned)\n",
        r.gpu, r.driver, r.cpu_threads
    );
    s += &format!(
        "{:<10} {:>5} {:>6} {:>3} {:>7} {:>7} {:>5} | {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>5} {:>3} {:>5} | {:>6} {:>6} | {:>6} {:>3} {:>5} | {:>6} {:>3} {:>5}\n",
        "op",
        "k+m",
        "shard",
        "eq",
        "kernel",
        "d2d",
        "ratio",
        "pageab",
        "h2d",
        "/h2d",
        "memcpy",
        "/mcpy",
        "pinned",
        "/h2d",
        "xN",
        "/h2d",
        "cpu",
        "cpuP",
        "auto",
        "to",
        "/best",
        "autoP",
        "to",
        "/best"
    );
    for w in &r.rows {
        s += &format!(
            "{:<10} {:>5} {:>6} {:>3} {:>7.0} {:>7.0} {:>5.2} | {:>6.1} {:>6.1} {:>5.2} {:>6.1} {:>5.2} | {:>6.1} {:>5.2} {:>3} {:>5.2} | {:>6.1} {:>6.1} | {:>6.1} {:>3} {:>5.2} | {:>6.1} {:>3} {:>5.2}\n",
            w.op,
            format!("{}+{}", w.k, w.m),
            size_label(w.shard_bytes),
            if w.equal { "ok" } else { "BAD" },
            w.kernel_moved_gbps,
            w.d2d_moved_gbps,
            w.kernel_vs_d2d,
            w.host_data_gbps,
            w.h2d_gbps,
            w.host_vs_h2d,
            w.memcpy_gbps,
            w.host_vs_memcpy,
            w.pinned_data_gbps,
            w.pinned_vs_h2d,
            format!("x{}", w.pinned_batch_stripes),
            w.pinned_batch_vs_h2d,
            w.cpu_data_gbps,
            w.cpu_pinned_gbps,
            w.auto_data_gbps,
            route_label(w.auto_route),
            w.auto_vs_best,
            w.auto_pinned_gbps,
            route_label(w.auto_pinned_route),
            w.auto_pinned_vs_best
        );
    }
    s
}

/// `tessera-raid bench --gpu --gpu-explore`: the tuning sweep behind the engine's choices
/// (matrix kernel split per size, pinned-path chunk, batching of small stripes), as a table.
pub fn explore(shard_sizes: &[usize], progress: &dyn Fn(&str)) -> Result<String, ParityError> {
    let gpu = Arc::new(CudaParity::open(0)?);
    let stream = gpu.stream().clone();
    let mut s = format!("gpu {}  sms {}\n", gpu.info().name, gpu.sms());
    s += "kernel plans: GB/s moved, ratio to d2d of the same bytes (events, best of 5); 'auto' = Plan::choose;\n\
          graph = us per launch of 50 back-to-back launches in a CUDA graph, kernel/d2d (GPU time without launch gaps)\n\
          plan name: s<split> p=preload f=fence a=staged (cp.async) t=select transpose d=dependent launch e=early release b<threads>\n";
    let all = cases()?;
    for case in &all {
        let kd = k_of(case);
        for &shard in shard_sizes {
            progress(&format!("explore kernel {} {kd} {shard}", case.op));
            let shards = stripe(case, shard)?;
            let (job, src_idx, dst_idx) = case_job(case, kd, shards.len())?;
            let srcs: Vec<&[u8]> = src_idx.iter().map(|&i| shards[i].as_slice()).collect();
            let moved = ((job.k() + job.m()) * shard) as f64;
            let p = |split, preload, fence, stage, select, pdl| {
                Some(Plan {
                    split,
                    preload,
                    fence,
                    stage,
                    select,
                    pdl,
                    ..Plan::PLAIN
                })
            };
            let d = |pdl, early, block| {
                Some(Plan {
                    pdl,
                    early,
                    block,
                    ..Plan::PLAIN
                })
            };
            let plans: Vec<Option<Plan>> = match job {
                Job::Matrix { .. } => vec![
                    None,
                    p(1, true, false, false, false, false),
                    p(1, true, true, false, true, false),
                    p(1, true, true, false, true, true),
                    p(1, false, false, true, false, false),
                    p(1, false, false, true, true, false),
                    p(1, false, false, true, true, true),
                    p(2, true, false, false, true, false),
                    p(2, true, true, false, true, true),
                ],
                Job::Pq { .. } => vec![
                    None,
                    d(false, false, 0),
                    d(true, false, 0),
                    d(true, true, 0),
                    d(false, false, 128),
                    d(true, false, 128),
                    d(true, true, 128),
                ],
                Job::Xor { .. } => vec![
                    None,
                    d(false, false, 0),
                    d(true, false, 0),
                    d(true, true, 0),
                ],
            };
            let mut line = format!(
                "{:<10} {:>5} {:>6}",
                case.op,
                format!("{}+{}", job.k(), job.m()),
                size_label(shard)
            );
            for plan in plans {
                let (ks, cs, outs) = kernel_vs_copy(&gpu, &stream, &job, plan, &srcs, shard)?;
                let ok = outs
                    .iter()
                    .zip(&dst_idx)
                    .all(|(o, &d)| o.as_slice() == shards[d].as_slice());
                let pl = plan.unwrap_or_else(|| Plan::choose(&job, shard, gpu.sms()));
                let (regs, blocks, threads) = gpu.kernel_info(&job, pl)?;
                let name = format!(
                    "{}s{}{}{}{}{}{}{}b{}[r{regs} b{blocks}x{threads}]",
                    if plan.is_none() { "auto:" } else { "" },
                    pl.split,
                    if pl.preload { "p" } else { "" },
                    if pl.fence { "f" } else { "" },
                    if pl.stage { "a" } else { "" },
                    if pl.select { "t" } else { "" },
                    if pl.pdl { "d" } else { "" },
                    if pl.early { "e" } else { "" },
                    pl.block_x(job.k(), job.m()),
                );
                let (gk, gc) = graph_times(&gpu, &stream, &job, pl, &srcs, shard)?;
                line += &format!(
                    "\n    {name} {:.0}/{:.0}={:.2}{} graph {:.2}/{:.2}={:.2}",
                    moved / ks / 1e9,
                    moved / cs / 1e9,
                    cs / ks,
                    if ok { "" } else { " BAD" },
                    gk * 1e6,
                    gc * 1e6,
                    gc / gk
                );
            }
            s += &line;
            s += "\n";
        }
    }
    s += "pinned path: data GB/s by schedule, vs pinned H2D of the same bytes (h2d: back-to-back copies;\n\
          h2d1: one copy per synchronised call; duplex: the data H2D with the parity D2H beside it on another stream, per call)\n\
          schedule: <chunk per shard>[/t<tail>: the last chunks halve down to this]\n";
    for case in all.iter().filter(|c| c.lost.is_none()) {
        let kd = k_of(case);
        for &shard in shard_sizes {
            progress(&format!("explore pinned {} {kd} {shard}", case.op));
            let shards = stripe(case, shard)?;
            let (job, src_idx, dst_idx) = case_job(case, kd, shards.len())?;
            let data_bytes = job.k() * shard;
            let (h2d, h2d1, duplex) = copy_probe(&gpu, &stream, data_bytes, job.m() * shard)?;
            let mut ps = pinned_copy(&gpu, &shards)?;
            let mut line = format!(
                "{:<10} {:>5} {:>6} h2d {:.1} h2d1 {:.2} duplex {:.2}\n   ",
                case.op,
                format!("{}+{}", job.k(), job.m()),
                size_label(shard),
                data_bytes as f64 / h2d / 1e9,
                h2d / h2d1,
                h2d / duplex,
            );
            let def = CudaParity::pinned_chunk(shard, usize::MAX);
            let sc = |chunk: usize, tail: usize| Schedule {
                chunk: Some(chunk),
                tail,
            };
            let mut scheds = vec![("default", Schedule::DEFAULT), ("", sc(def, 0))];
            for tail in [256usize << 10, 128 << 10, 32 << 10] {
                scheds.push(("", sc(def, tail)));
            }
            for div in [4usize, 8] {
                scheds.push(("", sc(shard / div, 64 << 10)));
            }
            for (name, sched) in scheds {
                let t = best_of(
                    3,
                    10,
                    &mut || {
                        gpu.run_pinned_with(
                            &[&job],
                            &mut [&mut ps],
                            &src_idx,
                            &dst_idx,
                            None,
                            sched,
                            None,
                        )
                    },
                    &mut || Ok(()),
                )?;
                let ok = dst_idx
                    .iter()
                    .all(|&d| ps.shard(d).is_ok_and(|x| x == shards[d].as_slice()));
                let chunk = sched.chunk.unwrap_or(def);
                line += &format!(
                    " {name}{}{}{} {:.1}={:.2}{}",
                    if name.is_empty() { "" } else { ":" },
                    size_label(chunk),
                    if sched.tail > 0 {
                        format!("/t{}", size_label(sched.tail))
                    } else {
                        String::new()
                    },
                    data_bytes as f64 / t / 1e9,
                    h2d / t,
                    if ok { "" } else { " BAD" }
                );
            }
            s += &line;
            s += "\n";
            if shard <= 4 << 20 && matches!(job, Job::Matrix { .. }) {
                for (name, sched) in [("default", Schedule::DEFAULT), ("uniform", sc(def, 0))] {
                    s += &trace_call(&gpu, &job, &mut ps, &src_idx, &dst_idx, sched, name)?;
                }
            }
        }
    }
    s += "auto vs cpu (dispatch check): best and median GB/s of the CPU engine and of Engine on the same\n\
          pageable buffers, one call each per round; fixed order (cpu then auto), rotated, and cpu vs cpu\n";
    let engine = Engine::calibrated(gpu.clone(), Policy::default());
    for case in &all {
        let kd = k_of(case);
        for &shard in shard_sizes {
            progress(&format!("explore auto {} {kd} {shard}", case.op));
            let shards = stripe(case, shard)?;
            let (job, src_idx, dst_idx) = case_job(case, kd, shards.len())?;
            let srcs: Vec<&[u8]> = src_idx.iter().map(|&i| shards[i].as_slice()).collect();
            let dec = match &case.lost {
                Some(l) => case.code.decoder(l)?,
                None => None,
            };
            let work = RefCell::new(shards.clone());
            let out = RefCell::new(vec![vec![0u8; shard]; job.m()]);
            let data = (job.k() * shard) as f64;
            let samples = (4usize << 30).div_ceil(job.k() * shard).clamp(30, 300);
            let mut line = format!(
                "{:<10} {:>5} {:>6}",
                case.op,
                format!("{}+{}", job.k(), job.m()),
                size_label(shard)
            );
            for (name, aa, rotate) in [
                ("fixed", false, false),
                ("rotated", false, true),
                ("cpu/cpu", true, false),
            ] {
                let mut c1 =
                    || cpu_call(case, dec.as_ref(), &srcs, &src_idx, &dst_idx, &work, &out);
                let mut c2 =
                    || cpu_call(case, dec.as_ref(), &srcs, &src_idx, &dst_idx, &work, &out);
                let mut a = || auto_call(&engine, case, &srcs, &work, &out).map(|_| ());
                let t = if aa {
                    paired(samples, &mut [&mut c1, &mut c2], rotate, false)?
                } else {
                    paired(samples, &mut [&mut c1, &mut a], rotate, false)?
                };
                line += &format!(
                    "  {name}: best {:.0}/{:.0}={:.2} med {:.0}/{:.0}={:.2}",
                    data / t[1].0 / 1e9,
                    data / t[0].0 / 1e9,
                    t[0].0 / t[1].0,
                    data / t[1].1 / 1e9,
                    data / t[0].1 / 1e9,
                    t[0].1 / t[1].1
                );
            }
            s += &line;
            s += "\n";
        }
    }
    Ok(s)
}

/// Seconds per call of: back-to-back pinned H2D copies of `data` bytes (one sync per batch),
/// one such copy per synchronised call, and one call doing that copy with a D2H of `parity`
/// bytes on a second stream beside it (both directions of the link at once).
fn copy_probe(
    gpu: &CudaParity,
    stream: &Arc<CudaStream>,
    data: usize,
    parity: usize,
) -> Result<(f64, f64, f64), ParityError> {
    let pin = super::cuda::pinned_alloc(gpu.context(), data)?;
    let mut back = super::cuda::pinned_alloc(gpu.context(), parity)?;
    let mut dbuf = stream.alloc_zeros::<u8>(data).map_err(cu)?;
    let pbuf = stream.alloc_zeros::<u8>(parity).map_err(cu)?;
    let other = gpu.context().new_stream().map_err(cu)?;
    let mut h2d = || {
        let (dp, _g) = dbuf.device_ptr_mut(stream);
        let src = pin.as_slice().map_err(cu)?;
        // SAFETY: dbuf holds `data` bytes; the pinned buffer lives until after the sync.
        unsafe { result::memcpy_htod_async(dp, src, stream.cu_stream()) }.map_err(cu)
    };
    let sync = || stream.synchronize().map_err(cu);
    let t_b2b = best_of(3, 10, &mut h2d, &mut || sync())?;
    let t_one = best_of(
        3,
        10,
        &mut || {
            h2d()?;
            sync()
        },
        &mut || Ok(()),
    )?;
    let t_dup = best_of(
        3,
        10,
        &mut || {
            h2d()?;
            let (pp, _g) = pbuf.device_ptr(&other);
            let dst = back.as_mut_slice().map_err(cu)?;
            // SAFETY: pbuf holds `parity` bytes; the pinned buffer lives until after the sync.
            unsafe { result::memcpy_dtoh_async(dst, pp, other.cu_stream()) }.map_err(cu)?;
            other.synchronize().map_err(cu)?;
            sync()
        },
        &mut || Ok(()),
    )?;
    Ok((t_b2b, t_one, t_dup))
}

/// Timeline of one zero-copy call with `sched` (the fastest of 5 traced calls): per chunk its
/// size and the end of its H2D, kernel and D2H in us from the start, and the call's host time.
fn trace_call(
    gpu: &CudaParity,
    job: &Job,
    ps: &mut HostShards,
    src_idx: &[usize],
    dst_idx: &[usize],
    sched: Schedule,
    name: &str,
) -> Result<String, ParityError> {
    let mut trace = Trace::new(gpu, 256)?;
    let mut best: Option<(f64, Vec<super::cuda::Mark>)> = None;
    for _ in 0..6 {
        let t = Instant::now();
        gpu.run_pinned_with(
            &[job],
            &mut [&mut *ps],
            src_idx,
            dst_idx,
            None,
            sched,
            Some(&mut trace),
        )?;
        let host = t.elapsed().as_secs_f64() * 1e6;
        let marks = trace.take()?;
        if best.as_ref().is_none_or(|b| host < b.0) {
            best = Some((host, marks));
        }
    }
    let Some((host, marks)) = best else {
        return Ok(String::new());
    };
    let mut s = format!(
        "    trace {name}: host {host:.1} us; chunk size: h2d end / kernel end / d2h end (us)\n     "
    );
    let n = marks.iter().map(|m| m.0 + 1).max().unwrap_or(0);
    for c in 0..n {
        let at = |st: u8| {
            marks
                .iter()
                .find(|m| m.0 == c && m.1 == st)
                .map_or(f64::NAN, |m| m.3)
        };
        let size = marks
            .iter()
            .find(|m| m.0 == c && m.1 == 1)
            .map_or(0, |m| m.2);
        s += &format!(
            " #{c} {}: {:.1}/{:.1}/{:.1}",
            size_label(size),
            at(1),
            at(2),
            at(3)
        );
    }
    s += "\n";
    Ok(s)
}

/// Seconds per launch of the kernel of `job` with `plan` and of the d2d copy of the same bytes
/// moved, each as 50 back-to-back launches captured in a CUDA graph (GPU time, no launch gaps).
fn graph_times(
    gpu: &CudaParity,
    stream: &Arc<CudaStream>,
    job: &Job,
    plan: Plan,
    srcs: &[&[u8]],
    shard: usize,
) -> Result<(f64, f64), ParityError> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    const PER: usize = 50;
    let (k, m) = (job.k(), job.m());
    let dsrc: Vec<CudaSlice<u8>> = srcs
        .iter()
        .map(|s| stream.clone_htod(*s).map_err(cu))
        .collect::<Result<_, _>>()?;
    let ddst: Vec<CudaSlice<u8>> = (0..m)
        .map(|_| stream.alloc_zeros::<u8>(shard).map_err(cu))
        .collect::<Result<_, _>>()?;
    let copy_bytes = ((k + m) * shard / 2).next_multiple_of(256);
    let csrc = stream.alloc_zeros::<u8>(copy_bytes).map_err(cu)?;
    let cdst = stream.alloc_zeros::<u8>(copy_bytes).map_err(cu)?;
    // event tracking is off (CudaParity::open): the pointers need no guards here
    let sp: Vec<u64> = dsrc.iter().map(|s| s.device_ptr(stream).0).collect();
    let dp: Vec<u64> = ddst.iter().map(|s| s.device_ptr(stream).0).collect();
    let (cs, cd) = (csrc.device_ptr(stream).0, cdst.device_ptr(stream).0);
    // SAFETY: device buffers of `shard` / `copy_bytes` bytes owned here, used on this stream.
    let kernel = || unsafe { gpu.launch_raw_plan(job, plan, &sp, &dp, shard, stream) };
    let copy =
        || unsafe { result::memcpy_dtod_async(cd, cs, copy_bytes, stream.cu_stream()) }.map_err(cu);
    kernel()?; // compile and load before the capture
    stream.synchronize().map_err(cu)?;
    let time = |f: &dyn Fn() -> Result<(), ParityError>| -> Result<f64, ParityError> {
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(cu)?;
        let captured = (0..PER).try_for_each(|_| f());
        let graph = stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(cu)?
            .ok_or_else(|| cu("empty graph"))?;
        captured?;
        graph.launch().map_err(cu)?;
        stream.synchronize().map_err(cu)?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            best = best.min(event_time(stream, 4, &mut || graph.launch().map_err(cu))?);
        }
        Ok(best / PER as f64)
    };
    let gk = time(&kernel)?;
    let gc = time(&copy)?;
    Ok((gk, gc * ((k + m) * shard) as f64 / (2 * copy_bytes) as f64))
}
