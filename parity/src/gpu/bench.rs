//! `tessera-raid bench --gpu`: GPU kernels against the device's own copy rate, the host path
//! against pinned H2D, the CPU engine on all cores and the `auto` dispatcher, all in one run.
//!
//! Units (1 GB = 1e9 B):
//! - kernel "moved" = bytes read + bytes written = (k + m) x shard per operation; its peer is a
//!   `cuMemcpyDtoD` of (k + m) x shard / 2 bytes, counted the same way (read + write = 2 x size);
//! - host / cpu / auto rows count data bytes = k x shard per operation (what the caller asked to
//!   protect); the host row's peer is a pinned H2D copy of the same k x shard bytes.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, result};
use serde::Serialize;

use super::{Code, CudaParity, Engine, GpuBackend, Job, Policy, Route};
use crate::{Matrix, ParityError, Pq, ReedSolomon, Xor};

#[derive(Debug, Serialize)]
pub struct GpuRow {
    pub op: String,
    pub k: usize,
    pub m: usize,
    pub shard_bytes: usize,
    /// GPU output equals the CPU engine's, byte for byte.
    pub equal: bool,
    pub kernel_moved_gbps: f64,
    pub d2d_moved_gbps: f64,
    pub kernel_vs_d2d: f64,
    pub host_data_gbps: f64,
    pub h2d_gbps: f64,
    pub host_vs_h2d: f64,
    /// Zero-copy host API (shards in engine-allocated pinned memory), data GB/s and vs H2D.
    pub pinned_data_gbps: f64,
    pub pinned_vs_h2d: f64,
    pub cpu_data_gbps: f64,
    pub auto_data_gbps: f64,
    pub auto_route: Route,
    /// auto / max(cpu, host GPU).
    pub auto_vs_best: f64,
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

fn one_row(
    gpu: &Arc<CudaParity>,
    engine: &Engine,
    stream: &Arc<cudarc::driver::CudaStream>,
    case: &Case,
    shard: usize,
) -> Result<GpuRow, ParityError> {
    let kd = k_of(case);
    let n_total = match &case.code {
        Code::Xor(_) => kd + 1,
        Code::Pq(_) => kd + 2,
        Code::Rs(r) => r.k() + r.m(),
    };
    // Full stripe on the host: data, then parity from the CPU engine.
    let mut shards: Vec<Vec<u8>> = (0..n_total)
        .map(|i| {
            let mut v = vec![0u8; shard];
            if i < kd {
                crate::util::fill_seeded(&mut v, 1000 + i as u64);
            }
            v
        })
        .collect();
    {
        let (d, p) = shards.split_at_mut(kd);
        let srcs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
        let mut par: Vec<&mut [u8]> = p.iter_mut().map(|v| v.as_mut_slice()).collect();
        case.code.encode_cpu(&srcs, &mut par)?;
    }
    // The job, its sources and the CPU reference outputs.
    let (job, src_idx, dst_idx): (Job, Vec<usize>, Vec<usize>) = match &case.lost {
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
    };
    let (k, m) = (job.k(), job.m());
    let srcs: Vec<&[u8]> = src_idx.iter().map(|&i| shards[i].as_slice()).collect();
    let want: Vec<&[u8]> = dst_idx.iter().map(|&i| shards[i].as_slice()).collect();

    // --- device-resident kernel vs d2d copy of the same bytes moved
    let dsrc: Vec<CudaSlice<u8>> = srcs
        .iter()
        .map(|s| stream.clone_htod(*s).map_err(cu))
        .collect::<Result<_, _>>()?;
    let mut ddst: Vec<CudaSlice<u8>> = (0..m)
        .map(|_| stream.alloc_zeros::<u8>(shard).map_err(cu))
        .collect::<Result<_, _>>()?;
    let moved = ((k + m) * shard) as f64;
    let iters = (8usize << 30).div_ceil((k + m) * shard).clamp(3, 200);
    let kernel_s = best_of(
        3,
        iters,
        &mut || {
            let s: Vec<&CudaSlice<u8>> = dsrc.iter().collect();
            let mut d: Vec<&mut CudaSlice<u8>> = ddst.iter_mut().collect();
            gpu.launch(&job, &s, &mut d, shard, stream)
        },
        &mut || stream.synchronize().map_err(cu),
    )?;
    let mut equal = true;
    for (j, d) in ddst.iter().enumerate() {
        let got = stream.clone_dtoh(d).map_err(cu)?;
        equal &= got.as_slice() == want[j];
    }
    let copy_bytes = ((k + m) * shard / 2).next_multiple_of(256);
    let csrc = stream.alloc_zeros::<u8>(copy_bytes).map_err(cu)?;
    let mut cdst = stream.alloc_zeros::<u8>(copy_bytes).map_err(cu)?;
    let d2d_s = best_of(
        3,
        iters,
        &mut || {
            let (sp, _g1) = csrc.device_ptr(stream);
            let (dp, _g2) = cdst.device_ptr_mut(stream);
            // SAFETY: both buffers are copy_bytes long, owned here, used on this stream only.
            unsafe { result::memcpy_dtod_async(dp, sp, copy_bytes, stream.cu_stream()) }.map_err(cu)
        },
        &mut || stream.synchronize().map_err(cu),
    )?;
    drop((dsrc, ddst, csrc, cdst));

    // --- pinned H2D of the k data shards
    let data_bytes = k * shard;
    // SAFETY: u8, written before read by the copy below.
    let mut pin = unsafe { gpu.context().alloc_pinned::<u8>(data_bytes) }.map_err(cu)?;
    pin.as_mut_slice().map_err(cu)?.fill(1);
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

    // --- host end-to-end through the staging lanes, CPU on all cores, auto
    let mut out: Vec<Vec<u8>> = (0..m).map(|_| vec![0u8; shard]).collect();
    let host_s = best_of(
        3,
        h_iters.min(20),
        &mut || {
            let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
            gpu.run_host(&job, &srcs, &mut d, None)
        },
        &mut || Ok(()),
    )?;
    for (j, o) in out.iter().enumerate() {
        equal &= o.as_slice() == want[j];
    }
    // zero-copy host API on pinned shards
    let mut ps = gpu.alloc_pinned_shards(n_total, shard)?;
    for (i, v) in shards.iter().enumerate() {
        ps.shard_mut(i)?.copy_from_slice(v);
    }
    for &d in &dst_idx {
        ps.shard_mut(d)?.fill(0);
    }
    let pinned_s = best_of(
        3,
        h_iters.min(20),
        &mut || gpu.run_pinned(&job, &mut ps, &src_idx, &dst_idx, None),
        &mut || Ok(()),
    )?;
    for (j, &d) in dst_idx.iter().enumerate() {
        equal &= ps.shard(d)? == want[j];
    }
    drop(ps);
    let dec = match &case.lost {
        Some(l) => case.code.decoder(l)?,
        None => None,
    };
    // CPU and auto alternate round by round (best of 5 each), so that both see the same
    // machine state; auto runs on the same buffers' shapes as the CPU row.
    let mut route = Route::Cpu;
    let mut work: Vec<Vec<u8>> = shards.clone();
    let (mut cpu_s, mut auto_s) = (f64::MAX, f64::MAX);
    let it = h_iters.min(20);
    for _ in 0..5 {
        cpu_s = cpu_s.min(best_of(
            1,
            it,
            &mut || {
                let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
                match &dec {
                    Some(dec) => dec.apply_split_par(&srcs, &mut d),
                    None => case.code.encode_cpu(&srcs, &mut d),
                }
            },
            &mut || Ok(()),
        )?);
        auto_s = auto_s.min(match &case.lost {
            None => best_of(
                1,
                it,
                &mut || {
                    let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
                    route = engine.encode(&case.code, &srcs, &mut d)?;
                    Ok(())
                },
                &mut || Ok(()),
            )?,
            Some(lost) => best_of(
                1,
                it,
                &mut || {
                    let mut refs: Vec<&mut [u8]> =
                        work.iter_mut().map(|v| v.as_mut_slice()).collect();
                    route = engine.reconstruct(&case.code, &mut refs, lost)?;
                    Ok(())
                },
                &mut || Ok(()),
            )?,
        });
    }
    let g = |bytes: f64, s: f64| bytes / s / 1e9;
    let kernel = g(moved, kernel_s);
    let d2d = g(2.0 * copy_bytes as f64, d2d_s);
    let host = g(data_bytes as f64, host_s);
    let h2d = g(data_bytes as f64, h2d_s);
    let cpu = g(data_bytes as f64, cpu_s);
    let pinned = g(data_bytes as f64, pinned_s);
    let auto = g(data_bytes as f64, auto_s);
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
        pinned_data_gbps: pinned,
        pinned_vs_h2d: pinned / h2d,
        cpu_data_gbps: cpu,
        auto_data_gbps: auto,
        auto_route: route,
        auto_vs_best: auto / cpu.max(host),
    })
}

pub fn render(r: &GpuReport) -> String {
    let mut s = format!(
        "gpu {}  driver {}  cpu threads {}\n\
         kernel/d2d: GB/s moved (read+write); host/h2d/pinned/cpu/auto: GB/s of data (k x shard)\n\
         host = pageable caller buffers staged through pinned lanes; pinned = zero-copy API on\n\
         engine-allocated pinned shards; auto routes pageable buffers (auto/best: vs max(cpu, host))\n",
        r.gpu, r.driver, r.cpu_threads
    );
    s += &format!(
        "{:<11} {:>5} {:>6} {:>3} {:>9} {:>9} {:>6} {:>8} {:>8} {:>6} {:>8} {:>6} {:>8} {:>8} {:>4} {:>6}\n",
        "op",
        "k+m",
        "shard",
        "eq",
        "kernel",
        "d2d",
        "ratio",
        "host",
        "h2d",
        "ratio",
        "pinned",
        "ratio",
        "cpu",
        "auto",
        "to",
        "/best"
    );
    for w in &r.rows {
        let shard = if w.shard_bytes >= 1 << 20 {
            format!("{}MiB", w.shard_bytes >> 20)
        } else {
            format!("{}KiB", w.shard_bytes >> 10)
        };
        s += &format!(
            "{:<11} {:>5} {:>6} {:>3} {:>9.1} {:>9.1} {:>6.2} {:>8.1} {:>8.1} {:>6.2} {:>8.1} {:>6.2} {:>8.1} {:>8.1} {:>4} {:>6.2}\n",
            w.op,
            format!("{}+{}", w.k, w.m),
            shard,
            if w.equal { "ok" } else { "BAD" },
            w.kernel_moved_gbps,
            w.d2d_moved_gbps,
            w.kernel_vs_d2d,
            w.host_data_gbps,
            w.h2d_gbps,
            w.host_vs_h2d,
            w.pinned_data_gbps,
            w.pinned_vs_h2d,
            w.cpu_data_gbps,
            w.auto_data_gbps,
            match w.auto_route {
                Route::Cpu => "cpu",
                Route::Gpu => "gpu",
            },
            w.auto_vs_best
        );
    }
    s
}
