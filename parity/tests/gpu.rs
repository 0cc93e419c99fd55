//! GPU correctness: CPU and GPU bytes equal for every code, random sizes and every reconstruct
//! case, through the device-resident API, the host API and the engine. Needs the `cuda` feature
//! and a GPU; elsewhere it prints one `skipped:` line.

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
    use tessera_parity::gpu::{
        CalPoint, Calibration, Code, CudaParity, Engine, GpuBackend, Job, Policy, Route,
    };
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
    let always_gpu = Calibration {
        gpu: Some(gpu.info()),
        cpu_threads: 1,
        points: ["xor", "pq", "matrix"]
            .iter()
            .map(|c| CalPoint {
                class: (*c).into(),
                shard_bytes: 1 << 20,
                cpu_gbps: 0.0,
                gpu_gbps: 1.0,
            })
            .collect(),
    };
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
