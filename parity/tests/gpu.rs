//! GPU correctness: CPU and GPU bytes equal for every code, random sizes and every reconstruct
//! case, through the device-resident API, the host API and the engine; every split plan of the
//! matrix kernel; the batching queue; and the CPU fallback on genuine CUDA errors. Needs the
//! `cuda` feature and a GPU; elsewhere each test prints one `skipped:` line.

#[cfg(feature = "cuda")]
mod common {
    use tessera_parity::gpu::{CALIBRATION_VERSION, CalPoint, Calibration, GpuInfo};

    /// A calibration that sends every class to the GPU, on both host paths.
    pub fn always_gpu(info: GpuInfo) -> Calibration {
        Calibration {
            version: CALIBRATION_VERSION,
            gpu: Some(info),
            cpu_threads: 1,
            points: ["xor", "pq", "matrix"]
                .iter()
                .map(|c| CalPoint {
                    class: (*c).into(),
                    shard_bytes: 1 << 20,
                    cpu_gbps: 0.0,
                    gpu_gbps: 1.0,
                    gpu_pinned_gbps: 1.0,
                    cpu_pinned_gbps: 0.0,
                })
                .collect(),
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_matches_cpu() {
    println!("skipped: no CUDA device (built without the cuda feature)");
}

#[cfg(feature = "cuda")]
#[test]
fn gpu_matches_cpu() {
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;
    use tessera_parity::gpu::{Code, CudaParity, Engine, GpuBackend, Job, Plan, Policy, Route};
    use tessera_parity::{Matrix, ParityError, Pq, ReedSolomon, Xor};

    let gpu = match CudaParity::open(0) {
        Ok(g) => Arc::new(g),
        Err(ParityError::NoGpu(why)) => {
            println!("skipped: no CUDA device ({why})");
            return;
        }
        Err(e) => panic!("CUDA present but unusable: {e}"),
    };
    let t0 = std::time::Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e55e4a);
    let stream = gpu.stream().clone();
    let mut checks = 0usize;

    let rand_shards = |rng: &mut rand::rngs::StdRng, n: usize, len: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let mut v = vec![0u8; len];
                rng.fill(&mut v[..]);
                v
            })
            .collect()
    };
    // Runs `job` on the GPU through both APIs and returns (device outputs, host outputs).
    let run_both = |job: &Job, srcs: &[&[u8]], len: usize| -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let dsrc: Vec<_> = srcs
            .iter()
            .map(|s| {
                if len == 0 {
                    stream.alloc_zeros::<u8>(1).expect("alloc")
                } else {
                    stream.clone_htod(*s).expect("htod")
                }
            })
            .collect();
        let mut ddst: Vec<_> = (0..job.m())
            .map(|_| stream.alloc_zeros::<u8>(len.max(1)).expect("alloc"))
            .collect();
        {
            let s: Vec<_> = dsrc.iter().collect();
            let mut d: Vec<_> = ddst.iter_mut().collect();
            gpu.launch(job, &s, &mut d, len, &stream)
                .expect("device launch");
        }
        stream.synchronize().expect("sync");
        let dev: Vec<Vec<u8>> = ddst
            .iter()
            .map(|d| stream.clone_dtoh(d).expect("dtoh")[..len].to_vec())
            .collect();
        let mut host: Vec<Vec<u8>> = (0..job.m()).map(|_| vec![0xa5u8; len]).collect();
        {
            let mut d: Vec<&mut [u8]> = host.iter_mut().map(|v| v.as_mut_slice()).collect();
            gpu.run_host(job, srcs, &mut d, None).expect("host run");
        }
        (dev, host)
    };

    // Random sizes: vector-unit edges, odd tails, and one multi-chunk host run.
    let mut sizes = vec![1usize, 15, 16, 17, 31, 32, 33, 4095, 65_536 + 7, 1 << 20];
    for _ in 0..4 {
        sizes.push(rng.random_range(1..3 << 20));
    }
    sizes.push((33 << 20) + 5);

    // --- encode: XOR, P+Q, RS (Cauchy and Vandermonde)
    for &len in &sizes {
        for k in [1usize, 2, 3, 8, 17, 32] {
            let data = rand_shards(&mut rng, k, len);
            let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
            let mut want = vec![0u8; len];
            Xor::new().encode(&srcs, &mut want).expect("cpu xor");
            let (dev, host) = run_both(&Job::Xor { k }, &srcs, len);
            assert!(dev[0] == want && host[0] == want, "xor k={k} len={len}");
            checks += 2;
        }
        for k in [2usize, 3, 8, 16, 31] {
            let data = rand_shards(&mut rng, k, len);
            let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            Pq::new(k)
                .expect("pq")
                .encode(&srcs, &mut p, &mut q)
                .expect("cpu pq");
            let (dev, host) = run_both(&Job::Pq { k }, &srcs, len);
            assert!(dev[0] == p && dev[1] == q, "pq k={k} len={len} (device)");
            assert!(host[0] == p && host[1] == q, "pq k={k} len={len} (host)");
            checks += 2;
        }
        for (k, m, mat) in [
            (10usize, 4usize, Matrix::Cauchy),
            (4, 2, Matrix::Vandermonde),
            (
                rng.random_range(1..=24),
                rng.random_range(1..=8),
                Matrix::Cauchy,
            ),
        ] {
            let rs = ReedSolomon::new(k, m, mat).expect("rs");
            let data = rand_shards(&mut rng, k, len);
            let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
            let mut want: Vec<Vec<u8>> = (0..m).map(|_| vec![0u8; len]).collect();
            {
                let mut d: Vec<&mut [u8]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
                rs.encode(&srcs, &mut d).expect("cpu rs");
            }
            let job = Job::Matrix {
                k,
                m,
                rows: rs.generator()[k * k..].to_vec(),
            };
            let (dev, host) = run_both(&job, &srcs, len);
            assert!(dev == want && host == want, "rs {k}+{m} {mat:?} len={len}");
            checks += 2;
        }
    }

    // --- every plan of the matrix kernel (split, preload, fence, staged, select, dependent
    //     launch; the engine picks one by size), odd lengths too
    for &len in &[32usize, 4096 + 5, (1 << 20) + 13, (5 << 20) + 32] {
        for (k, m) in [
            (10usize, 4usize),
            (10, 2),
            (7, 3),
            (rng.random_range(4..=32), rng.random_range(1..=8)),
        ] {
            let rs = ReedSolomon::new(k, m, Matrix::Cauchy).expect("rs");
            let data = rand_shards(&mut rng, k, len);
            let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
            let mut want: Vec<Vec<u8>> = (0..m).map(|_| vec![0u8; len]).collect();
            {
                let mut d: Vec<&mut [u8]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
                rs.encode(&srcs, &mut d).expect("cpu rs");
            }
            let job = Job::Matrix {
                k,
                m,
                rows: rs.generator()[k * k..].to_vec(),
            };
            let dsrc: Vec<_> = srcs
                .iter()
                .map(|s| stream.clone_htod(*s).expect("htod"))
                .collect();
            let staged = |select, pdl, block| Plan {
                stage: true,
                select,
                pdl,
                block,
                ..Plan::PLAIN
            };
            let fenced = |pdl| Plan {
                preload: true,
                fence: true,
                select: true,
                pdl,
                ..Plan::PLAIN
            };
            let plans = (1..=Plan::MAX_SPLIT)
                .flat_map(|split| {
                    [(false, false), (true, false), (true, true)].map(|(preload, select)| Plan {
                        split,
                        preload,
                        select,
                        ..Plan::PLAIN
                    })
                })
                .chain([
                    staged(false, false, 0),
                    staged(true, true, 0),
                    staged(true, true, 64),
                    fenced(false),
                    fenced(true),
                    Plan {
                        split: 2,
                        ..fenced(true)
                    },
                    Plan::choose(&job, len, gpu.sms()),
                ]);
            for plan in plans {
                let mut ddst: Vec<_> = (0..m)
                    .map(|_| stream.alloc_zeros::<u8>(len).expect("alloc"))
                    .collect();
                {
                    use cudarc::driver::{DevicePtr, DevicePtrMut};
                    let mut g = Vec::new();
                    let sp: Vec<u64> = dsrc
                        .iter()
                        .map(|s| {
                            let (p, x) = s.device_ptr(&stream);
                            g.push(x);
                            p
                        })
                        .collect();
                    let dp: Vec<u64> = ddst
                        .iter_mut()
                        .map(|d| {
                            let (p, x) = d.device_ptr_mut(&stream);
                            g.push(x);
                            p
                        })
                        .collect();
                    // SAFETY: buffers of len bytes owned here; synchronised below.
                    unsafe {
                        gpu.launch_raw_plan(&job, plan, &sp, &dp, len, &stream)
                            .expect("launch plan")
                    };
                }
                stream.synchronize().expect("sync");
                for (j, d) in ddst.iter().enumerate() {
                    assert!(
                        stream.clone_dtoh(d).expect("dtoh") == want[j],
                        "rs {k}+{m} {plan:?} len {len} output {j}"
                    );
                }
                checks += 1;
            }
        }
    }

    // --- P+Q and XOR plans (dependent launch, early release, block size) in chains of
    //     back-to-back launches where each launch reads the previous one's output: a launch
    //     that ran ahead of its wait would read stale (poisoned) bytes
    for &len in &[16usize, 4096 + 5, (1 << 20) + 13, (3 << 20) + 48] {
        for k in [2usize, 8, 16] {
            let data = rand_shards(&mut rng, k, len);
            let dsrc: Vec<_> = data
                .iter()
                .map(|s| stream.clone_htod(s).expect("htod"))
                .collect();
            for plan in [
                Plan::PLAIN,
                Plan {
                    pdl: true,
                    ..Plan::PLAIN
                },
                Plan {
                    pdl: true,
                    early: true,
                    ..Plan::PLAIN
                },
                Plan {
                    pdl: true,
                    early: true,
                    block: 128,
                    ..Plan::PLAIN
                },
                Plan::choose(&Job::Pq { k }, len, gpu.sms()),
            ] {
                // 4 links: outputs (P, Q) of link i, poisoned first, are sources 0 and 1 of
                // link i + 1; the CPU follows the same chain
                let mut want: Vec<Vec<u8>> = data.clone();
                let mut links: Vec<Vec<_>> = (0..4)
                    .map(|_| {
                        (0..2)
                            .map(|_| stream.clone_htod(&vec![0xa5u8; len]).expect("poison"))
                            .collect()
                    })
                    .collect();
                stream.synchronize().expect("sync");
                for i in 0..4 {
                    let (done, rest) = links.split_at_mut(i);
                    let mut srcs: Vec<&_> = dsrc.iter().collect();
                    if let Some(prev) = done.last() {
                        srcs[0] = &prev[0];
                        srcs[1] = &prev[1];
                    }
                    use cudarc::driver::{DevicePtr, DevicePtrMut};
                    let sp: Vec<u64> = srcs.iter().map(|s| s.device_ptr(&stream).0).collect();
                    let dp: Vec<u64> = rest[0]
                        .iter_mut()
                        .map(|d| d.device_ptr_mut(&stream).0)
                        .collect();
                    let job = Job::Pq { k };
                    // SAFETY: buffers of len bytes owned here (event tracking is off in
                    // CudaParity::open, the guards are not needed); synchronised below.
                    unsafe {
                        gpu.launch_raw_plan(&job, plan, &sp, &dp, len, &stream)
                            .expect("pq launch")
                    };
                    let srcs_cpu: Vec<&[u8]> = want.iter().map(|v| v.as_slice()).collect();
                    let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
                    Pq::new(k)
                        .expect("pq")
                        .encode(&srcs_cpu, &mut p, &mut q)
                        .expect("cpu pq");
                    want[0] = p;
                    want[1] = q;
                }
                stream.synchronize().expect("sync");
                let got: Vec<Vec<u8>> = links[3]
                    .iter()
                    .map(|d| stream.clone_dtoh(d).expect("dtoh"))
                    .collect();
                assert!(
                    got[0] == want[0] && got[1] == want[1],
                    "pq {k} chain {plan:?} len {len}"
                );
                // XOR with the same plan, one launch
                let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
                let mut x = vec![0u8; len];
                Xor::new().encode(&srcs, &mut x).expect("cpu xor");
                let mut dx = stream.clone_htod(&vec![0xa5u8; len]).expect("poison");
                {
                    use cudarc::driver::{DevicePtr, DevicePtrMut};
                    let sp: Vec<u64> = dsrc.iter().map(|s| s.device_ptr(&stream).0).collect();
                    let dp = [dx.device_ptr_mut(&stream).0];
                    // SAFETY: as above.
                    unsafe {
                        gpu.launch_raw_plan(&Job::Xor { k }, plan, &sp, &dp, len, &stream)
                            .expect("xor launch")
                    };
                }
                assert!(
                    stream.clone_dtoh(&dx).expect("dtoh") == x,
                    "xor {k} {plan:?}"
                );
                checks += 2;
            }
        }
    }

    // --- reconstruct: every case of RAID6 (k = 4, 8) and RS 6+3, a sample of RS 10+4
    let mut patterns: Vec<(Code, usize, Vec<usize>)> = Vec::new();
    for k in [4usize, 8] {
        let n = k + 2;
        for a in 0..n {
            patterns.push((Code::Pq(Pq::new(k).expect("pq")), n, vec![a]));
            for b in a + 1..n {
                patterns.push((Code::Pq(Pq::new(k).expect("pq")), n, vec![a, b]));
            }
        }
    }
    let rs63 = ReedSolomon::new(6, 3, Matrix::Cauchy).expect("rs");
    for mask in 1u32..(1 << 9) {
        if mask.count_ones() <= 3 {
            let lost: Vec<usize> = (0..9).filter(|i| mask >> i & 1 == 1).collect();
            patterns.push((Code::Rs(rs63.clone()), 9, lost));
        }
    }
    let rs104 = ReedSolomon::new(10, 4, Matrix::Cauchy).expect("rs");
    for _ in 0..40 {
        let nl = rng.random_range(1..=4);
        let mut lost: Vec<usize> = Vec::new();
        while lost.len() < nl {
            let x = rng.random_range(0..14);
            if !lost.contains(&x) {
                lost.push(x);
            }
        }
        patterns.push((Code::Rs(rs104.clone()), 14, lost));
    }
    // An engine that sends everything to the GPU (calibration says it is faster, no minimum).
    let always_gpu = common::always_gpu(gpu.info());
    let engine = Engine::with_gpu(
        gpu.clone(),
        always_gpu,
        Policy {
            min_stripe_bytes: 0,
            ..Policy::default()
        },
    );
    let cases = patterns.len();
    for (code, n, lost) in patterns {
        let len = [65_536 + 13, 4096, 100][rng.random_range(0..3)];
        let k = match &code {
            Code::Pq(p) => p.k(),
            Code::Rs(r) => r.k(),
            Code::Xor(_) => n - 1,
        };
        let mut shards = rand_shards(&mut rng, n, len);
        {
            let (d, p) = shards.split_at_mut(k);
            let srcs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
            let mut par: Vec<&mut [u8]> = p.iter_mut().map(|v| v.as_mut_slice()).collect();
            code.encode_cpu(&srcs, &mut par).expect("cpu encode");
        }
        let want = shards.clone();
        for &l in &lost {
            shards[l].fill(0xcc);
        }
        let mut refs: Vec<&mut [u8]> = shards.iter_mut().map(|v| v.as_mut_slice()).collect();
        let route = engine
            .reconstruct(&code, &mut refs, &lost)
            .expect("reconstruct");
        assert_eq!(route, Route::Gpu, "{lost:?}");
        assert!(
            shards == want,
            "reconstruct {lost:?} of {n} shards, len {len}"
        );
        checks += 1;
    }
    // XOR (RAID5) rebuild of every member of a 5+1 through the engine.
    for lost in 0..6 {
        let mut shards = rand_shards(&mut rng, 6, 70_001);
        {
            let (d, p) = shards.split_at_mut(5);
            let srcs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
            Xor::new().encode(&srcs, &mut p[0]).expect("xor");
        }
        let want = shards.clone();
        shards[lost].fill(0);
        let mut refs: Vec<&mut [u8]> = shards.iter_mut().map(|v| v.as_mut_slice()).collect();
        assert_eq!(
            engine
                .reconstruct(&Code::Xor(Xor::new()), &mut refs, &[lost])
                .expect("xor rebuild"),
            Route::Gpu
        );
        assert!(shards == want, "xor rebuild of {lost}");
        checks += 1;
    }
    assert_eq!(engine.fallbacks_total(), 0);
    // Zero-copy host API on pinned shards: encode and a reconstruct, several sizes (multi-chunk too).
    for len in [1usize, 33, (3 << 20) + 5, 9 << 20] {
        let rs = ReedSolomon::new(10, 4, Matrix::Cauchy).expect("rs");
        let mut host = rand_shards(&mut rng, 14, len);
        {
            let (d, p) = host.split_at_mut(10);
            let srcs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
            let mut par: Vec<&mut [u8]> = p.iter_mut().map(|v| v.as_mut_slice()).collect();
            rs.encode(&srcs, &mut par).expect("cpu rs");
        }
        let mut ps = gpu.alloc_pinned_shards(14, len).expect("pinned");
        for (i, h) in host.iter().enumerate().take(10) {
            ps.shard_mut(i).expect("shard").copy_from_slice(h);
        }
        let enc = Job::Matrix {
            k: 10,
            m: 4,
            rows: rs.generator()[100..].to_vec(),
        };
        gpu.run_pinned(
            &enc,
            &mut ps,
            &(0..10).collect::<Vec<_>>(),
            &[10, 11, 12, 13],
            None,
        )
        .expect("pinned encode");
        for (i, want) in host.iter().enumerate() {
            assert_eq!(
                ps.shard(i).expect("shard"),
                want.as_slice(),
                "pinned encode shard {i} len {len}"
            );
        }
        let dec = rs.decoder(&[2, 7, 11]).expect("decoder");
        for &l in dec.lost() {
            ps.shard_mut(l).expect("shard").fill(0);
        }
        let job = Job::Matrix {
            k: 10,
            m: 3,
            rows: dec.matrix().to_vec(),
        };
        gpu.run_pinned(&job, &mut ps, dec.survivors(), dec.lost(), None)
            .expect("pinned decode");
        for (i, want) in host.iter().enumerate() {
            assert_eq!(
                ps.shard(i).expect("shard"),
                want.as_slice(),
                "pinned decode shard {i} len {len}"
            );
        }
        checks += 2;
    }
    // Zero-copy schedules: uniform and tapered chunks, device slots reused many times under a
    // small maxVramBytes (the H2D stream waits for each slot's D2H), RS 10+4 encode.
    {
        use tessera_parity::gpu::{Schedule, chunk_schedule};
        let rs = ReedSolomon::new(10, 4, Matrix::Cauchy).expect("rs");
        let enc = Job::Matrix {
            k: 10,
            m: 4,
            rows: rs.generator()[100..].to_vec(),
        };
        for len in [4096usize + 3, (1 << 20) + 77, 5 << 20] {
            let host = rand_shards(&mut rng, 10, len);
            let srcs: Vec<&[u8]> = host.iter().map(|v| v.as_slice()).collect();
            let mut want = vec![vec![0u8; len]; 4];
            {
                let mut w: Vec<&mut [u8]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
                rs.encode(&srcs, &mut w).expect("cpu rs");
            }
            let mut ps = gpu.alloc_pinned_shards(14, len).expect("pinned");
            for (i, h) in host.iter().enumerate() {
                ps.shard_mut(i).expect("shard").copy_from_slice(h);
            }
            let sc = |chunk, tail| Schedule { chunk, tail };
            for (sched, vram) in [
                (Schedule::DEFAULT, None),
                (sc(None, 0), None),
                (sc(Some(64 << 10), 0), None),
                (sc(Some(256 << 10), 4096), None),
                (sc(Some(64 << 10), 8192), Some(3 * 14 * (64u64 << 10))),
                (sc(Some(4096), 0), Some(3 * 14 * 4096)),
            ] {
                for j in 10..14 {
                    ps.shard_mut(j).expect("shard").fill(0xee);
                }
                gpu.run_pinned_with(
                    &[&enc],
                    &mut [&mut ps],
                    &(0..10).collect::<Vec<_>>(),
                    &[10, 11, 12, 13],
                    vram,
                    sched,
                    None,
                )
                .expect("pinned schedule");
                for (j, w) in want.iter().enumerate() {
                    assert!(
                        ps.shard(10 + j).expect("shard") == w.as_slice(),
                        "{sched:?} len {len} parity {j}"
                    );
                }
                checks += 1;
            }
        }
        // the schedule covers every byte once, in order, chunks within [tail, chunk]
        for (len, chunk, tail) in [
            (1usize << 20, 512usize << 10, 64usize << 10),
            ((64 << 20) + 5, 8 << 20, 64 << 10),
            (100_003, 65536, 4096),
            (7, 4096, 0),
        ] {
            let sch = chunk_schedule(len, chunk, tail);
            let mut at = 0;
            for &(off, n) in &sch {
                assert!(
                    off == at && n > 0 && n <= chunk,
                    "{len} {chunk} {tail}: {sch:?}"
                );
                at += n;
            }
            assert_eq!(at, len);
            if tail > 0 {
                let last = sch.last().expect("chunks").1;
                assert!(last <= tail, "{len} {chunk} {tail}: {sch:?}");
            }
        }
    }
    // Misaligned device pointers are refused, not computed wrong.
    let a = stream.alloc_zeros::<u8>(64).expect("alloc");
    let mut b = stream.alloc_zeros::<u8>(64).expect("alloc");
    {
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let (pa, _g) = a.device_ptr(&stream);
        let (pb, _h) = b.device_ptr_mut(&stream);
        // SAFETY: both buffers are 64 bytes; the call is refused before any launch.
        let r = unsafe { gpu.launch_raw(&Job::Xor { k: 1 }, &[pa + 1], &[pb], 32, &stream) };
        assert!(matches!(r, Err(ParityError::Geometry(_))));
    }
    println!(
        "gpu: {} checks equal ({cases} reconstruct patterns), {:.1} s",
        checks,
        t0.elapsed().as_secs_f64()
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_fallback_on_real_cuda_errors() {
    println!("skipped: no CUDA device (built without the cuda feature)");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_batches_small_stripes() {
    println!("skipped: no CUDA device (built without the cuda feature)");
}

#[cfg(feature = "cuda")]
fn open_gpu() -> Option<std::sync::Arc<tessera_parity::gpu::CudaParity>> {
    use tessera_parity::ParityError;
    match tessera_parity::gpu::CudaParity::open(0) {
        Ok(g) => Some(std::sync::Arc::new(g)),
        Err(ParityError::NoGpu(why)) => {
            println!("skipped: no CUDA device ({why})");
            None
        }
        Err(e) => panic!("CUDA present but unusable: {e}"),
    }
}

/// A genuine CUDA failure on the GPU route (the driver refuses a launch; the driver cannot
/// allocate the staging): with `fallback: cpu` the engine recomputes on the CPU, bytes equal,
/// the fallback counter grows; with `fallback: fail` the CUDA error is returned. Then the fault
/// is removed and the same engine runs on the GPU again.
#[cfg(feature = "cuda")]
#[test]
fn gpu_fallback_on_real_cuda_errors() {
    use rand::{Rng, SeedableRng};
    use tessera_parity::gpu::{Code, Engine, Fallback, Fault, GpuBackend, Job, Policy, Route};
    use tessera_parity::{Matrix, ParityError, ReedSolomon};

    let Some(gpu) = open_gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xfa11);
    let (k, m, len) = (10usize, 4usize, (1usize << 20) + 3);
    let rs = ReedSolomon::new(k, m, Matrix::Cauchy).expect("rs");
    let code = Code::Rs(rs.clone());
    let job = Job::Matrix {
        k,
        m,
        rows: rs.generator()[k * k..].to_vec(),
    };
    let data: Vec<Vec<u8>> = (0..k)
        .map(|_| {
            let mut v = vec![0u8; len];
            rng.fill(&mut v[..]);
            v
        })
        .collect();
    let srcs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
    let mut want: Vec<Vec<u8>> = (0..m).map(|_| vec![0u8; len]).collect();
    {
        let mut d: Vec<&mut [u8]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
        rs.encode(&srcs, &mut d).expect("cpu");
    }
    let policy = |fallback| Policy {
        min_stripe_bytes: 0,
        fallback,
        max_vram_bytes: None,
    };
    let cal = common::always_gpu(gpu.info());
    let engine = Engine::with_gpu(gpu.clone(), cal.clone(), policy(Fallback::Cpu));
    let failing = Engine::with_gpu(gpu.clone(), cal, policy(Fallback::Fail));
    let mut pinned = engine.alloc_shards(k + m, len).expect("pinned shards");
    assert!(pinned.is_pinned());
    for (i, d) in data.iter().enumerate() {
        pinned.shard_mut(i).expect("shard").copy_from_slice(d);
    }
    let encode = |e: &Engine, out: &mut Vec<Vec<u8>>| {
        for o in out.iter_mut() {
            o.fill(0xee);
        }
        let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
        e.encode(&code, &srcs, &mut d)
    };
    let mut out: Vec<Vec<u8>> = (0..m).map(|_| vec![0u8; len]).collect();
    assert_eq!(encode(&engine, &mut out).expect("gpu"), Route::Gpu);
    assert_eq!(out, want);

    for (fault, expect) in [
        (Fault::Launch, "CUDA_ERROR_INVALID_VALUE"),
        (Fault::Alloc, "CUDA_ERROR_"),
    ] {
        gpu.inject_fault(Some(fault));
        // The backend itself fails with the driver's error...
        {
            let mut d: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
            let err = gpu.run_host(&job, &srcs, &mut d, None).expect_err("fault");
            println!("{fault:?}: {err}");
            assert!(
                matches!(&err, ParityError::Gpu(msg) if msg.contains(expect)),
                "{fault:?}: {err}"
            );
        }
        // ... fallback: cpu recomputes on the CPU, counted, same bytes (pageable and pinned).
        let before = engine.fallbacks_total();
        assert_eq!(encode(&engine, &mut out).expect("fallback"), Route::Cpu);
        assert_eq!(out, want, "{fault:?}: CPU result after the fallback");
        assert_eq!(engine.fallbacks_total(), before + 1);
        for j in k..k + m {
            pinned.shard_mut(j).expect("shard").fill(0xee);
        }
        assert_eq!(
            engine.encode_shards(&code, &mut pinned).expect("fallback"),
            Route::Cpu
        );
        for (j, w) in want.iter().enumerate() {
            assert_eq!(pinned.shard(k + j).expect("shard"), w.as_slice());
        }
        pinned.shard_mut(3).expect("shard").fill(0);
        pinned.shard_mut(11).expect("shard").fill(0);
        assert_eq!(
            engine
                .reconstruct_shards(&code, &mut pinned, &[3, 11])
                .expect("fallback"),
            Route::Cpu
        );
        assert_eq!(pinned.shard(3).expect("shard"), data[3].as_slice());
        assert_eq!(pinned.shard(11).expect("shard"), want[1].as_slice());
        assert_eq!(engine.fallbacks_total(), before + 3);
        // ... fallback: fail returns the CUDA error and counts nothing.
        let err = encode(&failing, &mut out).expect_err("fail policy");
        assert!(
            matches!(&err, ParityError::Gpu(msg) if msg.contains(expect)),
            "{err}"
        );
        assert_eq!(failing.fallbacks_total(), 0);
        // The errors are not sticky: without the fault the GPU route works again.
        gpu.inject_fault(None);
        assert_eq!(encode(&engine, &mut out).expect("gpu again"), Route::Gpu);
        assert_eq!(out, want);
        for j in k..k + m {
            pinned.shard_mut(j).expect("shard").fill(0xee);
        }
        assert_eq!(
            engine.encode_shards(&code, &mut pinned).expect("gpu"),
            Route::Gpu
        );
        for (j, w) in want.iter().enumerate() {
            assert_eq!(pinned.shard(k + j).expect("shard"), w.as_slice());
        }
    }
    println!(
        "gpu fallback: {} fallbacks counted, GPU route works after the faults",
        engine.fallbacks_total()
    );
}

/// Many small stripes (4..64 KiB, RS 10+4 encode and P+Q 8+2 rebuilds) through the batching
/// queue on the GPU: few launches, every stripe's bytes equal to the CPU's.
#[cfg(feature = "cuda")]
#[test]
fn gpu_batches_small_stripes() {
    use rand::{Rng, SeedableRng};
    use tessera_parity::gpu::{Code, Engine, GpuBackend, Policy};
    use tessera_parity::{Matrix, Pq, ReedSolomon};

    let Some(gpu) = open_gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xba7c);
    let engine = Engine::with_gpu(
        gpu.clone(),
        common::always_gpu(gpu.info()),
        Policy {
            min_stripe_bytes: 0,
            ..Policy::default()
        },
    );
    let rs = ReedSolomon::new(10, 4, Matrix::Cauchy).expect("rs");
    let lens: Vec<usize> = (0..500).map(|_| rng.random_range(4096..=65536)).collect();
    let data: Vec<Vec<Vec<u8>>> = lens
        .iter()
        .map(|&l| {
            (0..10)
                .map(|_| {
                    let mut v = vec![0u8; l];
                    rng.fill(&mut v[..]);
                    v
                })
                .collect()
        })
        .collect();
    let mut parity: Vec<Vec<Vec<u8>>> = lens.iter().map(|&l| vec![vec![0xeeu8; l]; 4]).collect();
    let code = Code::Rs(rs.clone());
    let t = std::time::Instant::now();
    let mut q = engine.queue(&code, 16 << 20);
    for (d, p) in data.iter().zip(parity.iter_mut()) {
        q.push_encode(
            d.iter().map(|v| v.as_slice()).collect(),
            p.iter_mut().map(|v| v.as_mut_slice()).collect(),
        )
        .expect("push");
    }
    let stats = q.finish().expect("finish");
    let el = t.elapsed().as_secs_f64();
    let bytes: usize = lens.iter().map(|l| l * 10).sum();
    println!(
        "queue: {} stripes in {} batches ({} on the GPU), {:.1} GB/s of data",
        stats.stripes,
        stats.batches,
        stats.gpu_batches,
        bytes as f64 / el / 1e9
    );
    assert_eq!(stats.stripes, 500);
    assert!(stats.batches >= 2 && stats.batches <= (bytes as u64).div_ceil(16 << 20) + 1);
    assert_eq!(stats.gpu_batches, stats.batches);
    for (i, (d, p)) in data.iter().zip(&parity).enumerate() {
        let srcs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
        let mut want = vec![vec![0u8; lens[i]]; 4];
        let mut w: Vec<&mut [u8]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
        rs.encode(&srcs, &mut w).expect("cpu");
        assert!(p == &want, "stripe {i} of {} bytes", lens[i]);
    }
    // P+Q 8+2 rebuilds of two data shards, all stripes one pattern: one batch.
    let pq = Pq::new(8).expect("pq");
    let code = Code::Pq(pq.clone());
    let mut stripes: Vec<Vec<Vec<u8>>> = (0..200)
        .map(|_| {
            let l = rng.random_range(4096..=32768);
            let mut v: Vec<Vec<u8>> = (0..10)
                .map(|_| {
                    let mut x = vec![0u8; l];
                    rng.fill(&mut x[..]);
                    x
                })
                .collect();
            let (d, p) = v.split_at_mut(8);
            let srcs: Vec<&[u8]> = d.iter().map(|x| x.as_slice()).collect();
            let (p0, q0) = p.split_at_mut(1);
            pq.encode(&srcs, &mut p0[0], &mut q0[0]).expect("pq");
            v
        })
        .collect();
    let want = stripes.clone();
    let mut q = engine.queue(&code, 0);
    for s in stripes.iter_mut() {
        s[2].fill(0);
        s[6].fill(0);
        q.push_rebuild(s.iter_mut().map(|v| v.as_mut_slice()).collect(), &[2, 6])
            .expect("push");
    }
    let stats = q.finish().expect("finish");
    assert_eq!((stats.batches, stats.gpu_batches), (1, 1));
    assert!(stripes == want, "P+Q rebuilds through the queue");
    assert_eq!(engine.fallbacks_total(), 0);

    // Zero-copy batch: several pinned stripes of different lengths in one pipeline.
    let enc = tessera_parity::gpu::Job::Matrix {
        k: 10,
        m: 4,
        rows: rs.generator()[100..].to_vec(),
    };
    let lens = [1usize, 4096, 100_003, (3 << 20) + 5, 65_536, 7];
    let mut pinned: Vec<_> = lens
        .iter()
        .map(|&l| {
            let mut p = gpu.alloc_pinned_shards(14, l).expect("pinned");
            for i in 0..10 {
                rng.fill(p.shard_mut(i).expect("shard"));
            }
            for i in 10..14 {
                p.shard_mut(i).expect("shard").fill(0xee);
            }
            p
        })
        .collect();
    {
        let mut refs: Vec<_> = pinned.iter_mut().collect();
        gpu.run_pinned_many(
            &[&enc],
            &mut refs,
            &(0..10).collect::<Vec<_>>(),
            &[10, 11, 12, 13],
            None,
        )
        .expect("pinned batch");
    }
    for (p, &l) in pinned.iter().zip(&lens) {
        let srcs: Vec<&[u8]> = (0..10).map(|i| p.shard(i).expect("shard")).collect();
        let mut want = vec![vec![0u8; l]; 4];
        let mut w: Vec<&mut [u8]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
        rs.encode(&srcs, &mut w).expect("cpu");
        for (j, w) in want.iter().enumerate() {
            assert!(
                p.shard(10 + j).expect("shard") == w.as_slice(),
                "len {l} parity {j}"
            );
        }
    }
}
