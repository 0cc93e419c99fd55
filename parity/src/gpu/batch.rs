//! Batching of small stripes into large launches (issue 4: the host API "batches small stripes
//! into large launches").
//!
//! A GPU launch (with its H2D and D2H) costs tens of microseconds whatever its size, so a 4 KiB
//! stripe on its own never pays. [`StripeQueue`] collects stripes of one code and one job (same
//! k, same loss pattern for rebuilds) and, once `batch_bytes` of data are pending (or on
//! [`StripeQueue::flush`]), packs them side by side: row i of the batch is the concatenation of
//! shard i of every stripe, at offsets given by [`pack_offsets`]. The kernels compute byte by
//! byte, so the packed rows give every stripe's parity at the same offsets; one launch (one
//! H2D, one kernel, one D2H on the engine's pinned staging) serves the whole batch, and the
//! outputs are copied back to each stripe. The batch is routed like any request of its total
//! size (calibration, GpuRaidPolicy, CPU fallback); on the CPU route the stripes are computed
//! in place, in parallel, without packing.

use rayon::prelude::*;

use super::{Code, CpuRun, Engine, HostShards, Job, Rebuild, Route};
use crate::ParityError;

/// Default data bytes (k x shard bytes, summed over the stripes) per launch.
pub const DEFAULT_BATCH_BYTES: usize = 32 << 20;

/// Offsets of stripes of shard lengths `lens` packed side by side, and the packed row length.
pub fn pack_offsets(lens: &[usize]) -> (Vec<usize>, usize) {
    let mut off = Vec::with_capacity(lens.len());
    let mut total = 0usize;
    for &l in lens {
        off.push(total);
        total += l;
    }
    (off, total)
}

/// Counters of a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Stripes pushed.
    pub stripes: u64,
    /// Batches run (each is one launch on the GPU route).
    pub batches: u64,
    /// Batches that ran on the GPU.
    pub gpu_batches: u64,
}

struct Stripe<'a> {
    srcs: Vec<&'a [u8]>,
    dsts: Vec<&'a mut [u8]>,
}

/// What the pending stripes compute.
enum Kind {
    Encode,
    Rebuild(Rebuild),
}

/// A queue of small stripes of one code, run in large batches. Pending stripes borrow the
/// caller's buffers; their outputs are written when a batch runs, so call
/// [`StripeQueue::finish`] (or `flush`) before reading them. Dropping a queue with pending
/// stripes leaves their outputs unwritten (logged at debug level).
pub struct StripeQueue<'e, 'a> {
    engine: &'e Engine,
    code: Code,
    batch_bytes: usize,
    job: Option<(Job, Kind)>,
    pending: Vec<Stripe<'a>>,
    pending_bytes: usize,
    staging: Option<HostShards>,
    stats: QueueStats,
}

impl<'e, 'a> StripeQueue<'e, 'a> {
    pub fn new(engine: &'e Engine, code: Code, batch_bytes: usize) -> StripeQueue<'e, 'a> {
        StripeQueue {
            engine,
            code,
            batch_bytes: if batch_bytes == 0 {
                DEFAULT_BATCH_BYTES
            } else {
                batch_bytes
            },
            job: None,
            pending: Vec::new(),
            pending_bytes: 0,
            staging: None,
            stats: QueueStats::default(),
        }
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Stripes waiting for the next batch.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues the encode of one stripe: `parity` = the code's parity of `data`. Runs a batch
    /// when enough data is pending; a stripe of another k first flushes the pending ones.
    pub fn push_encode(
        &mut self,
        data: Vec<&'a [u8]>,
        parity: Vec<&'a mut [u8]>,
    ) -> Result<(), ParityError> {
        let len = data.first().map_or(0, |s| s.len());
        let lens = data
            .iter()
            .map(|s| s.len())
            .chain(parity.iter().map(|s| s.len()));
        let job = Engine::check_encode(&self.code, data.len(), parity.len(), len, lens)?;
        if !matches!(&self.job, Some((j, Kind::Encode)) if *j == job) {
            self.flush()?;
            self.job = Some((job, Kind::Encode));
        }
        self.add(Stripe {
            srcs: data,
            dsts: parity,
        })
    }

    /// Queues the rebuild of the `lost` shards of one stripe (all of its shards, data then
    /// parity). Stripes with the same loss pattern share batches; another pattern first
    /// flushes the pending ones.
    pub fn push_rebuild(
        &mut self,
        shards: Vec<&'a mut [u8]>,
        lost: &[usize],
    ) -> Result<(), ParityError> {
        let n = shards.len();
        let rb = self.engine.rebuild(&self.code, n, lost)?;
        let len = shards.first().map_or(0, |s| s.len());
        if let Some((i, s)) = shards.iter().enumerate().find(|(_, s)| s.len() != len) {
            return Err(ParityError::Length(format!(
                "shard {i} has {} bytes, expected {len}",
                s.len()
            )));
        }
        if let Some(&i) = rb.survivors.iter().chain(&rb.lost).find(|&&i| i >= n) {
            return Err(ParityError::Geometry(format!(
                "shard {i} out of range 0..{n}"
            )));
        }
        let mut slots: Vec<Option<&'a mut [u8]>> = shards.into_iter().map(Some).collect();
        let mut dsts = Vec::with_capacity(rb.lost.len());
        for &l in &rb.lost {
            dsts.push(
                slots[l]
                    .take()
                    .ok_or_else(|| ParityError::Geometry(format!("lost shard {l} listed twice")))?,
            );
        }
        let mut srcs: Vec<&'a [u8]> = Vec::with_capacity(rb.survivors.len());
        for &s in &rb.survivors {
            let x: &'a mut [u8] = slots[s]
                .take()
                .ok_or_else(|| ParityError::Geometry(format!("survivor {s} is also lost")))?;
            srcs.push(x);
        }
        if !matches!(&self.job, Some((j, Kind::Rebuild(_))) if *j == rb.job) {
            self.flush()?;
            self.job = Some((rb.job.clone(), Kind::Rebuild(rb)));
        }
        self.add(Stripe { srcs, dsts })
    }

    fn add(&mut self, s: Stripe<'a>) -> Result<(), ParityError> {
        let len = s.srcs.first().map_or(0, |x| x.len());
        self.pending_bytes += len * s.srcs.len();
        self.pending.push(s);
        self.stats.stripes += 1;
        if self.pending_bytes >= self.batch_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Runs the pending stripes now (one launch on the GPU route).
    pub fn flush(&mut self) -> Result<(), ParityError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some((job, kind)) = &self.job else {
            return Err(ParityError::Geometry(
                "pending stripes without a job".into(),
            ));
        };
        let mut stripes = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let lens: Vec<usize> = stripes
            .iter()
            .map(|s| s.srcs.first().map_or(0, |x| x.len()))
            .collect();
        let (offs, total) = pack_offsets(&lens);
        let code = &self.code;
        let mut cpu = |s: &[&[u8]], d: &mut [&mut [u8]]| -> Result<(), ParityError> {
            match kind {
                Kind::Encode => code.encode_cpu(s, d),
                Kind::Rebuild(rb) => rb.cpu(s, d),
            }
        };
        self.stats.batches += 1;
        let pinned = self.engine.has_gpu();
        if self.engine.route_on(job, total as u64, pinned) == Route::Cpu {
            // No packing on the CPU: every stripe in place, stripes in parallel.
            // (the codecs' parallel entry points run small shards inline)
            stripes.par_iter_mut().try_for_each(|s| match kind {
                Kind::Encode => code.encode_cpu(&s.srcs, &mut s.dsts),
                Kind::Rebuild(rb) => rb.cpu(&s.srcs, &mut s.dsts),
            })?;
            return Ok(());
        }
        let (k, m) = (job.k(), job.m());
        let staging = match self.staging.take() {
            Some(st) if st.capacity() >= total && st.count() == k + m => st,
            _ => {
                let cap = total.max(self.batch_bytes.div_ceil(k.max(1)));
                self.engine.alloc_shards(k + m, cap)?
            }
        };
        let staging = self.staging.insert(staging);
        staging.set_len(total)?;
        {
            let all: Vec<usize> = (0..k).collect();
            let (_, mut rows) = staging.split(&[], &all)?;
            rows.par_iter_mut().enumerate().for_each(|(i, row)| {
                for (s, &o) in stripes.iter().zip(&offs) {
                    let src = s.srcs[i];
                    row[o..o + src.len()].copy_from_slice(src);
                }
            });
        }
        let (si, di): (Vec<usize>, Vec<usize>) = ((0..k).collect(), (k..k + m).collect());
        let route =
            self.engine
                .run_job_shards(job, staging, &si, &di, &mut cpu as &mut CpuRun<'_>)?;
        if route == Route::Gpu {
            self.stats.gpu_batches += 1;
        }
        let (outs, _) = staging.split(&di, &[])?;
        stripes
            .par_iter_mut()
            .zip(offs.par_iter())
            .for_each(|(s, &o)| {
                for (d, out) in s.dsts.iter_mut().zip(&outs) {
                    let n = d.len();
                    d.copy_from_slice(&out[o..o + n]);
                }
            });
        Ok(())
    }

    /// Flushes and returns the counters.
    pub fn finish(mut self) -> Result<QueueStats, ParityError> {
        self.flush()?;
        Ok(self.stats)
    }
}

impl Drop for StripeQueue<'_, '_> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            tracing::debug!(
                "stripe queue dropped with {} stripes not run",
                self.pending.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{CalPoint, Calibration, GpuBackend, GpuInfo, Policy};
    use crate::{Matrix, Pq, ReedSolomon, gf};
    use std::sync::{Arc, Mutex};

    /// A GPU double that computes the real bytes on the CPU (scalar GF arithmetic from the job
    /// alone), so packing and unpacking are checked byte for byte, and records each launch.
    #[derive(Default)]
    struct CpuGpu {
        launches: Mutex<Vec<(String, usize)>>,
    }

    impl GpuBackend for CpuGpu {
        fn info(&self) -> GpuInfo {
            GpuInfo {
                name: "cpu-double".into(),
                uuid: "GPU-double".into(),
                driver: 1,
            }
        }
        fn run_host(
            &self,
            job: &Job,
            srcs: &[&[u8]],
            dsts: &mut [&mut [u8]],
            _max_vram: Option<u64>,
        ) -> Result<(), ParityError> {
            let len = srcs[0].len();
            self.launches
                .lock()
                .map_err(|_| ParityError::Gpu("lock".into()))?
                .push((job.class().into(), len));
            let k = srcs.len();
            let coef = |j: usize, i: usize| -> u8 {
                match job {
                    Job::Xor { .. } => 1,
                    Job::Pq { .. } => {
                        if j == 0 {
                            1
                        } else {
                            (0..i).fold(1u8, |a, _| gf::mul(a, 2))
                        }
                    }
                    Job::Matrix { rows, .. } => rows[j * k + i],
                }
            };
            for (j, d) in dsts.iter_mut().enumerate() {
                for b in 0..len {
                    d[b] = (0..k).fold(0u8, |a, i| a ^ gf::mul(coef(j, i), srcs[i][b]));
                }
            }
            Ok(())
        }
    }

    fn gpu_engine(batch_min: u64) -> (Engine, Arc<CpuGpu>) {
        let g = Arc::new(CpuGpu::default());
        let cal = Calibration {
            version: crate::gpu::CALIBRATION_VERSION,
            gpu: None,
            cpu_threads: 1,
            points: ["xor", "pq", "matrix"]
                .iter()
                .map(|c| CalPoint {
                    class: (*c).into(),
                    shard_bytes: 1 << 20,
                    cpu_gbps: 1.0,
                    gpu_gbps: 2.0,
                    gpu_pinned_gbps: 2.0,
                    cpu_pinned_gbps: 1.0,
                })
                .collect(),
        };
        let policy = Policy {
            min_stripe_bytes: batch_min,
            ..Policy::default()
        };
        (Engine::with_gpu(g.clone(), cal, policy), g)
    }

    fn seeded(n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut v = vec![0u8; len];
                crate::util::fill_seeded(&mut v, seed * 100 + i as u64);
                v
            })
            .collect()
    }

    #[test]
    fn offsets_are_prefix_sums() {
        assert_eq!(pack_offsets(&[]), (vec![], 0));
        assert_eq!(
            pack_offsets(&[4096, 100, 0, 7]),
            (vec![0, 4096, 4196, 4196], 4203)
        );
    }

    /// 60 RS 10+4 stripes of 4..64 KiB: few launches, each of the packed length, and every
    /// stripe's parity equal to its own CPU encode.
    #[test]
    fn small_stripes_share_launches_and_match_cpu() {
        let (engine, g) = gpu_engine(0);
        let rs = ReedSolomon::new(10, 4, Matrix::Cauchy).expect("rs");
        let code = Code::Rs(rs.clone());
        let lens: Vec<usize> = (0..60)
            .map(|i| (4 << 10) + (i * 7919) % (60 << 10))
            .collect();
        let data: Vec<Vec<Vec<u8>>> = lens
            .iter()
            .enumerate()
            .map(|(s, &l)| seeded(10, l, s as u64))
            .collect();
        let mut parity: Vec<Vec<Vec<u8>>> =
            lens.iter().map(|&l| vec![vec![0xeeu8; l]; 4]).collect();
        let batch = 4 << 20; // data bytes per launch
        let mut q = engine.queue(&code, batch);
        for (d, p) in data.iter().zip(parity.iter_mut()) {
            q.push_encode(
                d.iter().map(|v| v.as_slice()).collect(),
                p.iter_mut().map(|v| v.as_mut_slice()).collect(),
            )
            .expect("push");
        }
        let stats = q.finish().expect("finish");
        let launches = g.launches.lock().expect("lock").clone();
        let total: usize = lens.iter().sum();
        assert_eq!(stats.stripes, 60);
        assert_eq!(stats.batches as usize, launches.len());
        assert_eq!(stats.gpu_batches, stats.batches);
        // every byte went through exactly one launch, in few launches
        assert_eq!(launches.iter().map(|l| l.1).sum::<usize>(), total);
        assert!(
            launches.len() <= (10 * total).div_ceil(batch) + 1,
            "{launches:?}"
        );
        assert!(launches.len() >= 2);
        for (i, (d, p)) in data.iter().zip(&parity).enumerate() {
            let srcs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
            let mut want = vec![vec![0u8; lens[i]]; 4];
            let mut w: Vec<&mut [u8]> = want.iter_mut().map(|v| v.as_mut_slice()).collect();
            rs.encode(&srcs, &mut w).expect("cpu");
            assert_eq!(p, &want, "stripe {i}");
        }
    }

    /// Rebuilds with two loss patterns interleaved: a pattern change flushes, each batch holds
    /// one pattern, bytes equal the originals; P+Q and XOR stripes in the same way.
    #[test]
    fn rebuild_batches_per_pattern() {
        let (engine, g) = gpu_engine(0);
        let pq = Pq::new(6).expect("pq");
        let code = Code::Pq(pq.clone());
        let mut stripes: Vec<Vec<Vec<u8>>> = (0..12)
            .map(|s| {
                let mut v = seeded(8, 3000 + s * 17, s as u64 + 50);
                let (d, p) = v.split_at_mut(6);
                let srcs: Vec<&[u8]> = d.iter().map(|x| x.as_slice()).collect();
                let (p0, q0) = p.split_at_mut(1);
                pq.encode(&srcs, &mut p0[0], &mut q0[0]).expect("pq");
                v
            })
            .collect();
        let want = stripes.clone();
        let patterns = [vec![1usize, 6], vec![0, 3]];
        let mut q = engine.queue(&code, 1 << 30);
        for (s, st) in stripes.iter_mut().enumerate() {
            let lost = &patterns[(s / 3) % 2];
            for &l in lost {
                st[l].fill(0);
            }
            q.push_rebuild(st.iter_mut().map(|v| v.as_mut_slice()).collect(), lost)
                .expect("push");
        }
        let stats = q.finish().expect("finish");
        // patterns switch every 3 stripes: 4 batches of 3
        assert_eq!(stats.batches, 4);
        assert_eq!(g.launches.lock().expect("lock").len(), 4);
        assert_eq!(stripes, want);
    }

    /// Below minStripeBytes the batch runs on the CPU in place (no launch), same bytes.
    #[test]
    fn small_batch_stays_on_cpu() {
        let (engine, g) = gpu_engine(1 << 40);
        let code = Code::Xor(crate::Xor::new());
        let data = seeded(5, 4096, 9);
        let mut p = vec![0u8; 4096];
        let mut q = engine.queue(&code, 0);
        q.push_encode(
            data.iter().map(|v| v.as_slice()).collect(),
            vec![p.as_mut_slice()],
        )
        .expect("push");
        let stats = q.finish().expect("finish");
        assert_eq!(stats.gpu_batches, 0);
        assert!(g.launches.lock().expect("lock").is_empty());
        let want = data.iter().fold(vec![0u8; 4096], |a, d| {
            a.iter().zip(d).map(|(x, y)| x ^ y).collect()
        });
        assert_eq!(p, want);
    }
}
