//! Tessera vs ISA-L in one run: single-thread rows per codec and block size, then all-thread rows
//! over a working set of at least 1 GiB next to the machine's memory read bandwidth, measured here too.
//!
//! Throughput counts data bytes (k x block) per second, 1 GB = 1e9 bytes. Each side runs in
//! alternating timed rounds and keeps its best round, so both see the same machine noise.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::codec::{Decoder, Matrix, Pq, ReedSolomon, Xor};
use crate::error::ParityError;
use crate::gf;
use crate::isal::Isal;
use crate::kernels::Backend;
use crate::util::{AlignedBuf, fill_seeded};

/// One table row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// `xor`, `pq`, `rs-encode`, `rs-decode2`.
    pub op: String,
    /// `k+m`.
    pub geometry: String,
    /// Bytes per shard.
    pub block: usize,
    pub threads: usize,
    pub tessera_gbs: f64,
    pub isal_gbs: Option<f64>,
    /// tessera / isal.
    pub ratio: Option<f64>,
    /// tessera / memory read bandwidth (all-thread rows only).
    pub of_mem_bw: Option<f64>,
}

/// The whole report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub backend: Backend,
    pub isal: String,
    pub threads: usize,
    pub mem_read_gbs: Option<f64>,
    pub rows: Vec<Row>,
}

/// Knobs of a run.
#[derive(Clone, Debug)]
pub struct Options {
    pub threads: usize,
    /// Seconds per timed round (three rounds per side).
    pub round: f64,
    /// Working set of the all-thread rows.
    pub big_bytes: usize,
    pub backend: Backend,
    /// Only rows whose `op k+m` contains this text (all when `None`).
    pub only: Option<String>,
    /// Skip the all-thread rows and the memory bandwidth.
    pub single_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            round: 0.15,
            big_bytes: 1 << 30,
            backend: Backend::best(),
            only: None,
            single_only: false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Xor,
    Pq,
    RsEnc,
    RsDec2,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Xor => "xor",
            Op::Pq => "pq",
            Op::RsEnc => "rs-encode",
            Op::RsDec2 => "rs-decode2",
        }
    }
}

/// Buffers and prepared codecs of one (op, k, m, block) case.
struct Case {
    op: Op,
    k: usize,
    data: Vec<AlignedBuf>,
    out: Vec<AlignedBuf>,
    xor: Xor,
    pq: Pq,
    rs: Option<ReedSolomon>,
    dec: Option<Decoder>,
    /// Shards (k data + m parity) for the decode rows, survivors read and lost written.
    shards: Vec<AlignedBuf>,
    isal_tables: Vec<u8>,
    isal_dec_tables: Vec<u8>,
}

const LOST: [usize; 2] = [0, 1];

impl Case {
    fn new(
        op: Op,
        k: usize,
        m: usize,
        block: usize,
        b: Backend,
        isal: Option<&Isal>,
    ) -> Result<Case, ParityError> {
        let data: Vec<AlignedBuf> = (0..k)
            .map(|i| {
                let mut a = AlignedBuf::new(block, 0);
                fill_seeded(a.as_mut_slice(), 1000 + i as u64);
                a
            })
            .collect();
        let out = (0..m).map(|_| AlignedBuf::new(block, 0)).collect();
        let mut c = Case {
            op,
            k,
            data,
            out,
            xor: Xor::with_backend(b)?,
            pq: Pq::with_backend(k, b)?,
            rs: None,
            dec: None,
            shards: Vec::new(),
            isal_tables: Vec::new(),
            isal_dec_tables: Vec::new(),
        };
        if matches!(op, Op::RsEnc | Op::RsDec2) {
            let rs = ReedSolomon::with_backend(k, m, Matrix::Cauchy, b)?;
            if let Some(isal) = isal {
                c.isal_tables = isal.ec_init_tables(k, m, &rs.generator()[k * k..])?;
            }
            if matches!(op, Op::RsDec2) {
                // Full stripe, encoded once, then the decoders for two lost data shards.
                let mut shards: Vec<AlignedBuf> = (0..k + m)
                    .map(|i| {
                        let mut a = AlignedBuf::new(block, 0);
                        if i < k {
                            a.as_mut_slice().copy_from_slice(c.data[i].as_slice());
                        }
                        a
                    })
                    .collect();
                {
                    let (d, p) = shards.split_at_mut(k);
                    let d: Vec<&[u8]> = d.iter().map(|x| x.as_slice()).collect();
                    let mut p: Vec<&mut [u8]> = p.iter_mut().map(|x| x.as_mut_slice()).collect();
                    rs.encode(&d, &mut p)?;
                }
                c.shards = shards;
                let dec = rs.decoder(&LOST)?;
                if let Some(isal) = isal {
                    c.isal_dec_tables =
                        isal.ec_init_tables(k, LOST.len(), &decode_matrix(&rs, &LOST)?)?;
                }
                c.dec = Some(dec);
            }
            c.rs = Some(rs);
        }
        Ok(c)
    }

    fn tessera(&mut self, par: bool) -> Result<(), ParityError> {
        let d: Vec<&[u8]> = self.data.iter().map(|x| x.as_slice()).collect();
        match self.op {
            Op::Xor => {
                let o = self.out[0].as_mut_slice();
                if par {
                    self.xor.encode_par(&d, o)
                } else {
                    self.xor.encode(&d, o)
                }
            }
            Op::Pq => {
                let (p, q) = self.out.split_at_mut(1);
                let (p, q) = (p[0].as_mut_slice(), q[0].as_mut_slice());
                if par {
                    self.pq.encode_par(&d, p, q)
                } else {
                    self.pq.encode(&d, p, q)
                }
            }
            Op::RsEnc => {
                let rs = self.rs.as_ref().ok_or(ParityError::Singular)?;
                let mut o: Vec<&mut [u8]> = self.out.iter_mut().map(|x| x.as_mut_slice()).collect();
                if par {
                    rs.encode_par(&d, &mut o)
                } else {
                    rs.encode(&d, &mut o)
                }
            }
            Op::RsDec2 => {
                let dec = self.dec.as_ref().ok_or(ParityError::Singular)?;
                let mut s: Vec<&mut [u8]> =
                    self.shards.iter_mut().map(|x| x.as_mut_slice()).collect();
                if par {
                    dec.apply_par(&mut s)
                } else {
                    dec.apply(&mut s)
                }
            }
        }
    }

    /// ISA-L on the whole block, or (par) on `PAR` byte ranges spread across the rayon pool.
    fn isal(&mut self, isal: &Isal, par: bool) -> Result<(), ParityError> {
        let len = self.data[0].as_slice().len();
        // Same split as Tessera's parallel entry points.
        let chunk = if par {
            (len / (4 * rayon::current_num_threads().max(1)))
                .clamp(128 * 1024, 16 << 20)
                .next_multiple_of(4096)
        } else {
            len
        };
        let (k, op) = (self.k, self.op);
        let data: Vec<&[u8]> = self.data.iter().map(|x| x.as_slice()).collect();
        let outs: Vec<usize> = self
            .out
            .iter_mut()
            .map(|x| x.as_mut_slice().as_mut_ptr() as usize)
            .collect();
        let shards: Vec<usize> = self
            .shards
            .iter_mut()
            .map(|x| x.as_mut_slice().as_mut_ptr() as usize)
            .collect();
        let (tables, dtables) = (&self.isal_tables, &self.isal_dec_tables);
        let run = |off: usize| -> Result<(), ParityError> {
            let n = chunk.min(len - off);
            let d: Vec<&[u8]> = data.iter().map(|x| &x[off..off + n]).collect();
            // SAFETY: each range [off, off+n) of the outputs is written by exactly one task.
            let o =
                |p: usize| unsafe { std::slice::from_raw_parts_mut((p as *mut u8).add(off), n) };
            match op {
                Op::Xor => isal.xor_gen(&d, o(outs[0])),
                Op::Pq => isal.pq_gen(&d, o(outs[0]), o(outs[1])),
                Op::RsEnc => {
                    let mut v: Vec<&mut [u8]> = outs.iter().map(|&p| o(p)).collect();
                    isal.ec_encode_data(tables, &d, &mut v)
                }
                Op::RsDec2 => {
                    // SAFETY: survivors are only read in this call.
                    let srv: Vec<&[u8]> = (LOST.len()..LOST.len() + k)
                        .map(|i| unsafe {
                            std::slice::from_raw_parts((shards[i] as *const u8).add(off), n)
                        })
                        .collect();
                    let mut v: Vec<&mut [u8]> = LOST.iter().map(|&l| o(shards[l])).collect();
                    isal.ec_encode_data(dtables, &srv, &mut v)
                }
            }
        };
        if par {
            (0..len.div_ceil(chunk))
                .into_par_iter()
                .try_for_each(|c| run(c * chunk))
        } else {
            run(0)
        }
    }
}

/// Rows of the two-loss decode matrix exactly as ISA-L users build it (first k survivors).
fn decode_matrix(rs: &ReedSolomon, lost: &[usize]) -> Result<Vec<u8>, ParityError> {
    let (k, n) = (rs.k(), rs.k() + rs.m());
    let g = rs.generator();
    let surv: Vec<usize> = (0..n).filter(|i| !lost.contains(i)).take(k).collect();
    let mut b = vec![0u8; k * k];
    for (r, &s) in surv.iter().enumerate() {
        b[r * k..(r + 1) * k].copy_from_slice(&g[s * k..(s + 1) * k]);
    }
    let inv = gf::invert_matrix(&b, k)?;
    let mut out = vec![0u8; lost.len() * k];
    for (r, &l) in lost.iter().enumerate() {
        for j in 0..k {
            out[r * k + j] = (0..k).fold(0u8, |a, t| a ^ gf::mul(g[l * k + t], inv[t * k + j]));
        }
    }
    Ok(out)
}

/// Best GB/s of each side over many short alternating rounds (`round` seconds per side in all):
/// on a shared machine, fine interleaving gives both sides the same chance at quiet moments.
fn best_rate(
    bytes_per_call: usize,
    round: f64,
    mut a: impl FnMut() -> Result<(), ParityError>,
    mut b: Option<&mut dyn FnMut() -> Result<(), ParityError>>,
) -> Result<(f64, Option<f64>), ParityError> {
    const ROUNDS: u32 = 15;
    let slice = Duration::from_secs_f64(round * 3.0 / ROUNDS as f64);
    let time = |f: &mut dyn FnMut() -> Result<(), ParityError>| -> Result<f64, ParityError> {
        let start = Instant::now();
        let mut calls = 0u64;
        while calls == 0 || start.elapsed() < slice {
            f()?;
            calls += 1;
        }
        Ok(calls as f64 * bytes_per_call as f64 / start.elapsed().as_secs_f64() / 1e9)
    };
    // Warm caches and page tables of both sides first.
    a()?;
    if let Some(f) = b.as_mut() {
        f()?;
    }
    let (mut ra, mut rb) = (0f64, None::<f64>);
    for _ in 0..ROUNDS {
        ra = ra.max(time(&mut a)?);
        if let Some(f) = b.as_mut() {
            let r = time(*f)?;
            rb = Some(rb.map_or(r, |x| x.max(r)));
        }
    }
    Ok((ra, rb))
}

/// Memory read bandwidth in GB/s: every thread XOR-folds its share of a `bytes` buffer with wide
/// loads (AVX-512 where available), best of several passes.
pub fn memory_read_bandwidth(bytes: usize, round: f64) -> f64 {
    let mut buf = vec![0u8; bytes];
    buf.par_chunks_mut(1 << 20)
        .enumerate()
        .for_each(|(i, c)| fill_seeded(c, i as u64));
    let fold = |c: &[u8]| -> u64 {
        #[cfg(target_arch = "x86_64")]
        if Backend::Avx512.available() {
            // SAFETY: AVX-512F checked just above.
            return unsafe { crate::kernels::x86::read_fold_avx512(c) };
        }
        c.chunks(8).fold(0u64, |a, w| {
            a ^ w.iter().fold(0u64, |x, &b| x << 8 | b as u64)
        })
    };
    let pass = || buf.par_chunks(4 << 20).map(fold).reduce(|| 0, |a, b| a ^ b);
    std::hint::black_box(pass());
    let mut best = 0f64;
    let start = Instant::now();
    // As many passes as the codec rows get rounds, so both see the machine's quiet moments alike.
    while start.elapsed() < Duration::from_secs_f64(round * 12.0) || best == 0.0 {
        let t = Instant::now();
        std::hint::black_box(pass());
        best = best.max(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

const CASES: &[(Op, usize, usize)] = &[
    (Op::Xor, 4, 1),
    (Op::Xor, 8, 1),
    (Op::Xor, 16, 1),
    (Op::Pq, 4, 2),
    (Op::Pq, 8, 2),
    (Op::Pq, 16, 2),
    (Op::RsEnc, 8, 2),
    (Op::RsEnc, 10, 4),
    (Op::RsDec2, 8, 2),
    (Op::RsDec2, 10, 4),
];
const BIG_CASES: &[(Op, usize, usize)] = &[
    (Op::Xor, 8, 1),
    (Op::Pq, 8, 2),
    (Op::RsEnc, 10, 4),
    (Op::RsDec2, 10, 4),
];

/// Number of progress steps [`run`] reports.
pub fn steps() -> usize {
    CASES.len() * 2 + BIG_CASES.len() + 1
}

/// Runs the benchmark; `progress(done)` is called after each row.
pub fn run(opts: &Options, progress: &dyn Fn(usize)) -> Result<Report, ParityError> {
    let isal = Isal::get().ok();
    let b = opts.backend.check()?;
    let mut rows = Vec::new();
    let mut done = 0;
    let wanted = |op: Op, k: usize, m: usize| {
        opts.only
            .as_deref()
            .is_none_or(|f| format!("{} {k}+{m}", op.name()).contains(f))
    };
    for &(op, k, m) in CASES.iter().filter(|c| wanted(c.0, c.1, c.2)) {
        for block in [64 * 1024, 1024 * 1024] {
            let mut c = Case::new(op, k, m, block, b, isal)?;
            let mut c2 = Case::new(op, k, m, block, b, isal)?;
            let (t, i) = match isal {
                Some(lib) => {
                    let mut f = || c2.isal(lib, false);
                    best_rate(k * block, opts.round, || c.tessera(false), Some(&mut f))?
                }
                None => best_rate(k * block, opts.round, || c.tessera(false), None)?,
            };
            rows.push(Row {
                op: op.name().into(),
                geometry: format!("{k}+{m}"),
                block,
                threads: 1,
                tessera_gbs: t,
                isal_gbs: i,
                ratio: i.map(|i| t / i),
                of_mem_bw: None,
            });
            done += 1;
            progress(done);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| ParityError::Geometry(format!("thread pool: {e}")))?;
    if opts.single_only {
        return Ok(Report {
            backend: b,
            isal: if isal.is_some() {
                "libisal.so.2".into()
            } else {
                crate::isal::NOT_FOUND.into()
            },
            threads: opts.threads,
            mem_read_gbs: None,
            rows,
        });
    }
    let mem = pool.install(|| memory_read_bandwidth(opts.big_bytes, opts.round));
    done += 1;
    progress(done);
    for &(op, k, m) in BIG_CASES.iter().filter(|c| wanted(c.0, c.1, c.2)) {
        let block = opts.big_bytes.div_ceil(k).next_multiple_of(64);
        let (t, i) = pool.install(|| -> Result<_, ParityError> {
            let mut c = Case::new(op, k, m, block, b, isal)?;
            match isal {
                Some(lib) => {
                    // Same buffers for both sides: the working set, not the cache, is measured.
                    let cp: *mut Case = &mut c;
                    // SAFETY: the two closures run strictly one after the other, never concurrently.
                    let mut f = || unsafe { (*cp).isal(lib, true) };
                    best_rate(
                        k * block,
                        opts.round * 2.0,
                        || unsafe { (*cp).tessera(true) },
                        Some(&mut f),
                    )
                }
                None => best_rate(k * block, opts.round * 2.0, || c.tessera(true), None),
            }
        })?;
        rows.push(Row {
            op: op.name().into(),
            geometry: format!("{k}+{m}"),
            block,
            threads: opts.threads,
            tessera_gbs: t,
            isal_gbs: i,
            ratio: i.map(|i| t / i),
            of_mem_bw: Some(t / mem),
        });
        done += 1;
        progress(done);
    }
    Ok(Report {
        backend: b,
        isal: if isal.is_some() {
            "libisal.so.2".into()
        } else {
            crate::isal::NOT_FOUND.into()
        },
        threads: opts.threads,
        mem_read_gbs: Some(mem),
        rows,
    })
}

/// The human table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "backend {}  peer {}  threads {}  memory read bandwidth {}",
        r.backend,
        r.isal,
        r.threads,
        r.mem_read_gbs
            .map_or("not measured".into(), |m| format!("{m:.1} GB/s"))
    );
    let _ = writeln!(
        s,
        "{:<11} {:>6} {:>9} {:>7} {:>12} {:>10} {:>7} {:>8}",
        "op", "k+m", "block", "threads", "tessera GB/s", "isa-l GB/s", "ratio", "of mem"
    );
    for row in &r.rows {
        let block = if row.block >= 1 << 20 && row.block % (1 << 20) == 0 {
            format!("{}MiB", row.block >> 20)
        } else if row.block >= 1 << 20 {
            format!("{:.0}MiB", row.block as f64 / (1 << 20) as f64)
        } else {
            format!("{}KiB", row.block >> 10)
        };
        let _ = writeln!(
            s,
            "{:<11} {:>6} {:>9} {:>7} {:>12.2} {:>10} {:>7} {:>8}",
            row.op,
            row.geometry,
            block,
            row.threads,
            row.tessera_gbs,
            row.isal_gbs.map_or("-".into(), |v| format!("{v:.2}")),
            row.ratio.map_or("-".into(), |v| format!("{v:.2}x")),
            row.of_mem_bw.map_or("".into(), |v| format!("{:.2}", v)),
        );
    }
    s
}
