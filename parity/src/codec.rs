//! The codecs: [`Xor`] (RAID5), [`Pq`] (Linux RAID6) and [`ReedSolomon`] (ISA-L-compatible k+m).
//!
//! All work on caller buffers. The only allocations are at construction (tables) and when building a
//! [`Decoder`] for an erasure pattern (a k x k inversion); `encode`, `Decoder::apply` and the parallel
//! variants allocate nothing per byte. `verify` allocates only its result list.

use rayon::prelude::*;

use crate::error::ParityError;
use crate::gf;
use crate::kernels::{self, Backend, CoefTables, MAX_OUT};

/// Most shards (data + parity) of one codec, the GF(2^8) limit.
pub const MAX_SHARDS: usize = 255;
/// Byte granularity of the parallel split: big enough to amortise a task, small enough to balance.
const PAR_CHUNK: usize = 128 * 1024;
/// Scratch piece for verify (on the stack).
const PIECE: usize = 512;

/// A member of a RAID6 stripe that `verify` blames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Member {
    Data(usize),
    P,
    Q,
}

/// One inconsistent stripe found by `verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BadStripe {
    /// Byte offset of the stripe in the shards.
    pub offset: usize,
    /// The single member that explains the mismatch (RAID6 only), `None` when not locatable.
    pub member: Option<Member>,
}

fn check_len(shards: &[&[u8]], len: usize) -> Result<(), ParityError> {
    if let Some((i, s)) = shards.iter().enumerate().find(|(_, s)| s.len() != len) {
        return Err(ParityError::Length(format!(
            "shard {i} has {} bytes, expected {len}",
            s.len()
        )));
    }
    Ok(())
}

/// Raw destination pointers, shareable across rayon tasks that write disjoint ranges.
#[derive(Clone, Copy)]
struct Dsts {
    p: [*mut u8; MAX_OUT],
    n: usize,
}
// SAFETY: tasks write disjoint byte ranges of the destinations; the borrow of the destination slices
// outlives the parallel section.
unsafe impl Send for Dsts {}
// SAFETY: as above.
unsafe impl Sync for Dsts {}

impl Dsts {
    fn new(d: &mut [&mut [u8]], len: usize) -> Result<Dsts, ParityError> {
        if d.len() > MAX_OUT {
            return Err(ParityError::Geometry(format!(
                "{} outputs, at most {MAX_OUT}",
                d.len()
            )));
        }
        let mut p = [std::ptr::null_mut(); MAX_OUT];
        for (i, s) in d.iter_mut().enumerate() {
            if s.len() != len {
                return Err(ParityError::Length(format!(
                    "output {i} has {} bytes, expected {len}",
                    s.len()
                )));
            }
            p[i] = s.as_mut_ptr();
        }
        Ok(Dsts { p, n: d.len() })
    }
    fn get(&self) -> &[*mut u8] {
        &self.p[..self.n]
    }
}

/// Runs `f(off, len)` over `0..len`, serially or split across the current rayon pool.
fn run_ranges(len: usize, parallel: bool, f: impl Fn(usize, usize) + Sync) {
    if !parallel || len <= PAR_CHUNK {
        f(0, len);
        return;
    }
    // A few tasks per thread for balance; big ranges so large batches stream (see kernels::x86::NT_MIN).
    let chunk = (len / (4 * rayon::current_num_threads().max(1)))
        .clamp(PAR_CHUNK, 16 << 20)
        .next_multiple_of(4096);
    let n = len.div_ceil(chunk);
    (0..n).into_par_iter().for_each(|c| {
        let off = c * chunk;
        f(off, chunk.min(len - off));
    });
}

// ---------------------------------------------------------------- XOR

/// RAID5 parity: P = XOR of the data shards.
#[derive(Clone, Debug)]
pub struct Xor {
    backend: Backend,
}

impl Xor {
    pub fn new() -> Xor {
        Xor {
            backend: Backend::best(),
        }
    }
    pub fn with_backend(backend: Backend) -> Result<Xor, ParityError> {
        Ok(Xor {
            backend: backend.check()?,
        })
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn run(&self, data: &[&[u8]], parity: &mut [u8], parallel: bool) -> Result<(), ParityError> {
        if data.is_empty() || data.len() >= MAX_SHARDS {
            return Err(ParityError::Geometry(format!(
                "xor needs 1..{} data shards, got {}",
                MAX_SHARDS - 1,
                data.len()
            )));
        }
        let len = parity.len();
        check_len(data, len)?;
        let d = Dsts::new(&mut [parity], len)?;
        let b = self.backend;
        run_ranges(len, parallel, |off, n| {
            // SAFETY: lengths checked above; ranges are disjoint; the backend was checked available.
            unsafe { kernels::xor(b, data, off, n, d.get()[0]) }
        });
        Ok(())
    }

    /// parity = XOR of data.
    pub fn encode(&self, data: &[&[u8]], parity: &mut [u8]) -> Result<(), ParityError> {
        self.run(data, parity, false)
    }

    /// As [`Xor::encode`], split across the current rayon pool.
    pub fn encode_par(&self, data: &[&[u8]], parity: &mut [u8]) -> Result<(), ParityError> {
        self.run(data, parity, true)
    }

    /// Stripes (of `stripe` bytes) where parity is not the XOR of data.
    pub fn verify(
        &self,
        data: &[&[u8]],
        parity: &[u8],
        stripe: usize,
    ) -> Result<Vec<BadStripe>, ParityError> {
        let len = parity.len();
        check_len(data, len)?;
        let mut bad = Vec::new();
        let mut scratch = [0u8; PIECE];
        let mut sub: [&[u8]; MAX_SHARDS] = [&[]; MAX_SHARDS];
        for s_off in (0..len).step_by(stripe.max(1)) {
            let s_end = (s_off + stripe.max(1)).min(len);
            let mut ok = true;
            for off in (s_off..s_end).step_by(PIECE) {
                let n = PIECE.min(s_end - off);
                for (i, d) in data.iter().enumerate() {
                    sub[i] = &d[off..off + n];
                }
                self.encode(&sub[..data.len()], &mut scratch[..n])?;
                ok &= scratch[..n] == parity[off..off + n];
            }
            if !ok {
                bad.push(BadStripe {
                    offset: s_off,
                    member: None,
                });
            }
        }
        Ok(bad)
    }

    /// Rebuilds `shards[lost]` (data or parity) from the others.
    pub fn reconstruct(&self, shards: &mut [&mut [u8]], lost: usize) -> Result<(), ParityError> {
        if lost >= shards.len() || shards.len() < 2 {
            return Err(ParityError::Geometry(format!(
                "lost shard {lost} of {}",
                shards.len()
            )));
        }
        let (before, rest) = shards.split_at_mut(lost);
        let (target, after) = rest.split_at_mut(1);
        let mut srcs: [&[u8]; MAX_SHARDS] = [&[]; MAX_SHARDS];
        let mut n = 0;
        for s in before.iter().chain(after.iter()) {
            if n == MAX_SHARDS {
                return Err(ParityError::Geometry("too many shards".into()));
            }
            srcs[n] = s;
            n += 1;
        }
        self.encode(&srcs[..n], target[0])
    }
}

impl Default for Xor {
    fn default() -> Self {
        Xor::new()
    }
}

// ---------------------------------------------------------------- erasure decoding (shared)

/// A precomputed recovery for one erasure pattern: lost shards as linear combinations of k survivors.
#[derive(Clone, Debug)]
pub struct Decoder {
    k: usize,
    n: usize,
    lost: Vec<usize>,
    survivors: Vec<usize>,
    /// lost x k recovery matrix over `survivors` (kept for the GPU engine, which bakes it into a kernel).
    rows: Vec<u8>,
    tables: CoefTables,
    backend: Backend,
}

impl Decoder {
    /// `genm` is the n x k generator matrix (identity on top).
    fn new(
        genm: &[u8],
        n: usize,
        k: usize,
        lost: &[usize],
        backend: Backend,
    ) -> Result<Decoder, ParityError> {
        let m = n - k;
        let mut lost_sorted = lost.to_vec();
        lost_sorted.sort_unstable();
        lost_sorted.dedup();
        if lost_sorted.len() != lost.len() {
            return Err(ParityError::Geometry(format!(
                "duplicate lost shards {lost:?}"
            )));
        }
        if let Some(&bad) = lost.iter().find(|&&i| i >= n) {
            return Err(ParityError::Geometry(format!(
                "lost shard {bad} out of range 0..{n}"
            )));
        }
        if lost.len() > m {
            return Err(ParityError::TooManyLost {
                lost: lost.len(),
                max: m,
            });
        }
        if lost.len() > MAX_OUT {
            return Err(ParityError::TooManyLost {
                lost: lost.len(),
                max: MAX_OUT,
            });
        }
        let survivors: Vec<usize> = (0..n).filter(|i| !lost.contains(i)).take(k).collect();
        let mut b = vec![0u8; k * k];
        for (r, &s) in survivors.iter().enumerate() {
            b[r * k..(r + 1) * k].copy_from_slice(&genm[s * k..(s + 1) * k]);
        }
        let binv = gf::invert_matrix(&b, k)?;
        let mut rows = vec![0u8; lost.len() * k];
        for (r, &l) in lost.iter().enumerate() {
            // Lost row l = genm[l] * B^-1 (for a data shard genm[l] is a unit row, so this picks a row).
            for j in 0..k {
                let mut acc = 0u8;
                for t in 0..k {
                    acc ^= gf::mul(genm[l * k + t], binv[t * k + j]);
                }
                rows[r * k + j] = acc;
            }
        }
        Ok(Decoder {
            k,
            n,
            lost: lost.to_vec(),
            survivors,
            tables: CoefTables::new(&rows, lost.len(), k),
            rows,
            backend,
        })
    }

    pub fn lost(&self) -> &[usize] {
        &self.lost
    }

    /// The k shards the lost ones are computed from, in the column order of [`Decoder::matrix`].
    pub fn survivors(&self) -> &[usize] {
        &self.survivors
    }

    /// The lost x k recovery matrix, row-major: lost shard `lost()[r]` = sum_j m[r*k+j] * survivor j.
    pub fn matrix(&self) -> &[u8] {
        &self.rows
    }

    fn run(&self, shards: &mut [&mut [u8]], parallel: bool) -> Result<(), ParityError> {
        if shards.len() != self.n {
            return Err(ParityError::Geometry(format!(
                "{} shards given, codec has {}",
                shards.len(),
                self.n
            )));
        }
        let len = shards[0].len();
        if let Some((i, s)) = shards.iter().enumerate().find(|(_, s)| s.len() != len) {
            return Err(ParityError::Length(format!(
                "shard {i} has {} bytes, expected {len}",
                s.len()
            )));
        }
        // Split the shards into read-only survivors and written lost ones without copying: distinct
        // `&mut` slices never overlap, so shared views of survivors and raw writes to lost are sound.
        let mut ptrs = [std::ptr::null_mut::<u8>(); MAX_SHARDS];
        for (i, s) in shards.iter_mut().enumerate() {
            ptrs[i] = s.as_mut_ptr();
        }
        let mut srcs: [&[u8]; MAX_SHARDS] = [&[]; MAX_SHARDS];
        for (r, &s) in self.survivors.iter().enumerate() {
            // SAFETY: ptrs[s] is shard s, len bytes, not written during this call (it is not lost).
            srcs[r] = unsafe { std::slice::from_raw_parts(ptrs[s], len) };
        }
        let mut d = Dsts {
            p: [std::ptr::null_mut(); MAX_OUT],
            n: self.lost.len(),
        };
        for (r, &l) in self.lost.iter().enumerate() {
            d.p[r] = ptrs[l];
        }
        let srcs = &srcs[..self.k];
        let (b, t) = (self.backend, &self.tables);
        run_ranges(len, parallel, |off, n| {
            // SAFETY: all shards are len bytes; ranges disjoint; lost shards are not sources.
            unsafe { kernels::encode(b, t, srcs, off, n, d.get()) }
        });
        Ok(())
    }

    /// Recomputes the lost shards in place from the survivors (all `shards` have equal length).
    pub fn apply(&self, shards: &mut [&mut [u8]]) -> Result<(), ParityError> {
        self.run(shards, false)
    }

    /// As [`Decoder::apply`], split across the current rayon pool.
    pub fn apply_par(&self, shards: &mut [&mut [u8]]) -> Result<(), ParityError> {
        self.run(shards, true)
    }

    /// The lost shards (`out`, in [`Decoder::lost`] order) from the survivors (`srcs`, in
    /// [`Decoder::survivors`] order) held in separate buffers; split across the rayon pool.
    pub fn apply_split_par(
        &self,
        srcs: &[&[u8]],
        out: &mut [&mut [u8]],
    ) -> Result<(), ParityError> {
        if srcs.len() != self.k || out.len() != self.lost.len() {
            return Err(ParityError::Geometry(format!(
                "{} survivors and {} outputs given, decoder needs {} and {}",
                srcs.len(),
                out.len(),
                self.k,
                self.lost.len()
            )));
        }
        let len = srcs[0].len();
        check_len(srcs, len)?;
        let d = Dsts::new(out, len)?;
        let (b, t) = (self.backend, &self.tables);
        run_ranges(len, true, |off, n| {
            // SAFETY: lengths checked; disjoint ranges; outputs are distinct &mut buffers.
            unsafe { kernels::encode(b, t, srcs, off, n, d.get()) }
        });
        Ok(())
    }
}

// ---------------------------------------------------------------- P+Q

/// Linux MD RAID6: P = XOR, Q = sum of 2^i * D_i.
#[derive(Clone, Debug)]
pub struct Pq {
    k: usize,
    genm: Vec<u8>,
    backend: Backend,
}

impl Pq {
    pub fn new(k: usize) -> Result<Pq, ParityError> {
        Pq::with_backend(k, Backend::best())
    }
    pub fn with_backend(k: usize, backend: Backend) -> Result<Pq, ParityError> {
        if k == 0 || k + 2 > MAX_SHARDS {
            return Err(ParityError::Geometry(format!(
                "raid6 needs 1..={} data shards, got {k}",
                MAX_SHARDS - 2
            )));
        }
        Ok(Pq {
            k,
            genm: gf::gen_pq_matrix(k),
            backend: backend.check()?,
        })
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn run(
        &self,
        data: &[&[u8]],
        p: &mut [u8],
        q: &mut [u8],
        parallel: bool,
    ) -> Result<(), ParityError> {
        if data.len() != self.k {
            return Err(ParityError::Geometry(format!(
                "{} data shards given, codec has {}",
                data.len(),
                self.k
            )));
        }
        let len = p.len();
        check_len(data, len)?;
        let d = Dsts::new(&mut [p, q], len)?;
        let b = self.backend;
        run_ranges(len, parallel, |off, n| {
            // SAFETY: lengths checked; disjoint ranges; backend available.
            unsafe { kernels::pq(b, data, off, n, d.get()[0], d.get()[1]) }
        });
        Ok(())
    }

    pub fn encode(&self, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> Result<(), ParityError> {
        self.run(data, p, q, false)
    }

    pub fn encode_par(
        &self,
        data: &[&[u8]],
        p: &mut [u8],
        q: &mut [u8],
    ) -> Result<(), ParityError> {
        self.run(data, p, q, true)
    }

    /// Stripes (of `stripe` bytes) where P or Q is inconsistent; for each, the single member that
    /// explains every wrong byte when there is one (syndrome Q'/P' = 2^z names data member z).
    pub fn verify(
        &self,
        data: &[&[u8]],
        p: &[u8],
        q: &[u8],
        stripe: usize,
    ) -> Result<Vec<BadStripe>, ParityError> {
        let len = p.len();
        check_len(data, len)?;
        check_len(&[q], len)?;
        if data.len() != self.k {
            return Err(ParityError::Geometry(format!(
                "{} data shards given, codec has {}",
                data.len(),
                self.k
            )));
        }
        let stripe = stripe.max(1);
        let mut bad = Vec::new();
        let (mut pp, mut qq) = ([0u8; PIECE], [0u8; PIECE]);
        let mut sub: [&[u8]; MAX_SHARDS] = [&[]; MAX_SHARDS];
        for s_off in (0..len).step_by(stripe) {
            let s_end = (s_off + stripe).min(len);
            // None: consistent so far; Some(Some(m)): all wrong bytes blame m; Some(None): no single member.
            let mut blame: Option<Option<Member>> = None;
            for off in (s_off..s_end).step_by(PIECE) {
                let n = PIECE.min(s_end - off);
                for (i, d) in data.iter().enumerate() {
                    sub[i] = &d[off..off + n];
                }
                self.encode(&sub[..self.k], &mut pp[..n], &mut qq[..n])?;
                for x in 0..n {
                    let sp = pp[x] ^ p[off + x];
                    let sq = qq[x] ^ q[off + x];
                    if sp == 0 && sq == 0 {
                        continue;
                    }
                    let who = match (sp, sq) {
                        (_, 0) => Some(Member::P),
                        (0, _) => Some(Member::Q),
                        _ => {
                            let z = (gf::LOG[sq as usize] as usize + 255
                                - gf::LOG[sp as usize] as usize)
                                % 255;
                            (z < self.k).then_some(Member::Data(z))
                        }
                    };
                    blame = match blame {
                        None => Some(who),
                        Some(prev) if prev == who => Some(prev),
                        Some(_) => Some(None),
                    };
                }
            }
            if let Some(member) = blame {
                bad.push(BadStripe {
                    offset: s_off,
                    member,
                });
            }
        }
        Ok(bad)
    }

    /// A decoder for the lost shard indices (0..k data, k = P, k+1 = Q): every RAID6 case.
    pub fn decoder(&self, lost: &[usize]) -> Result<Decoder, ParityError> {
        Decoder::new(&self.genm, self.k + 2, self.k, lost, self.backend)
    }

    /// Rebuilds the `lost` shards of `shards` (`k` data, P, Q) in place.
    pub fn reconstruct(&self, shards: &mut [&mut [u8]], lost: &[usize]) -> Result<(), ParityError> {
        self.decoder(lost)?.apply(shards)
    }
}

// ---------------------------------------------------------------- Reed-Solomon

/// Which ISA-L generator matrix a [`ReedSolomon`] codec uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Matrix {
    /// `gf_gen_cauchy1_matrix`: every k x k submatrix invertible (MDS).
    Cauchy,
    /// `gf_gen_rs_matrix`: Vandermonde-like, MDS only for small k+m.
    Vandermonde,
}

/// Systematic Reed-Solomon k+m with ISA-L's generator matrices: shards interchangeable with ISA-L's.
#[derive(Clone, Debug)]
pub struct ReedSolomon {
    k: usize,
    m: usize,
    genm: Vec<u8>,
    tables: CoefTables,
    backend: Backend,
}

impl ReedSolomon {
    pub fn new(k: usize, m: usize, matrix: Matrix) -> Result<ReedSolomon, ParityError> {
        ReedSolomon::with_backend(k, m, matrix, Backend::best())
    }

    pub fn with_backend(
        k: usize,
        m: usize,
        matrix: Matrix,
        backend: Backend,
    ) -> Result<ReedSolomon, ParityError> {
        if k == 0 || m == 0 || k + m > MAX_SHARDS || m > MAX_OUT {
            return Err(ParityError::Geometry(format!(
                "reed-solomon needs k >= 1, 1 <= m <= {MAX_OUT}, k + m <= {MAX_SHARDS}; got {k}+{m}"
            )));
        }
        let genm = match matrix {
            Matrix::Cauchy => gf::gen_cauchy1_matrix(k + m, k),
            Matrix::Vandermonde => gf::gen_rs_matrix(k + m, k),
        };
        let tables = CoefTables::new(&genm[k * k..], m, k);
        Ok(ReedSolomon {
            k,
            m,
            genm,
            tables,
            backend: backend.check()?,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn m(&self) -> usize {
        self.m
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The (k+m) x k generator matrix, row-major, identical to ISA-L's.
    pub fn generator(&self) -> &[u8] {
        &self.genm
    }

    fn run(
        &self,
        data: &[&[u8]],
        parity: &mut [&mut [u8]],
        parallel: bool,
    ) -> Result<(), ParityError> {
        if data.len() != self.k || parity.len() != self.m {
            return Err(ParityError::Geometry(format!(
                "{}+{} shards given, codec is {}+{}",
                data.len(),
                parity.len(),
                self.k,
                self.m
            )));
        }
        let len = data[0].len();
        check_len(data, len)?;
        let d = Dsts::new(parity, len)?;
        let (b, t) = (self.backend, &self.tables);
        run_ranges(len, parallel, |off, n| {
            // SAFETY: lengths checked; disjoint ranges; backend available.
            unsafe { kernels::encode(b, t, data, off, n, d.get()) }
        });
        Ok(())
    }

    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), ParityError> {
        self.run(data, parity, false)
    }

    pub fn encode_par(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), ParityError> {
        self.run(data, parity, true)
    }

    /// Stripes (of `stripe` bytes) whose parity does not match the data.
    pub fn verify(
        &self,
        data: &[&[u8]],
        parity: &[&[u8]],
        stripe: usize,
    ) -> Result<Vec<BadStripe>, ParityError> {
        if data.len() != self.k || parity.len() != self.m {
            return Err(ParityError::Geometry("shard count".into()));
        }
        let len = data[0].len();
        check_len(data, len)?;
        check_len(parity, len)?;
        let stripe = stripe.max(1);
        let mut scratch = [[0u8; PIECE]; MAX_OUT];
        let mut sub: [&[u8]; MAX_SHARDS] = [&[]; MAX_SHARDS];
        let mut bad = Vec::new();
        for s_off in (0..len).step_by(stripe) {
            let s_end = (s_off + stripe).min(len);
            let mut ok = true;
            for off in (s_off..s_end).step_by(PIECE) {
                let n = PIECE.min(s_end - off);
                for (i, d) in data.iter().enumerate() {
                    sub[i] = &d[off..off + n];
                }
                let mut outs: [&mut [u8]; MAX_OUT] = Default::default();
                for (o, s) in outs.iter_mut().zip(scratch.iter_mut()) {
                    *o = &mut s[..n];
                }
                self.encode(&sub[..self.k], &mut outs[..self.m])?;
                for (j, par) in parity.iter().enumerate() {
                    ok &= outs[j][..] == par[off..off + n];
                }
            }
            if !ok {
                bad.push(BadStripe {
                    offset: s_off,
                    member: None,
                });
            }
        }
        Ok(bad)
    }

    /// A decoder for the lost shard indices (0..k data, k..k+m parity).
    pub fn decoder(&self, lost: &[usize]) -> Result<Decoder, ParityError> {
        Decoder::new(&self.genm, self.k + self.m, self.k, lost, self.backend)
    }

    /// Rebuilds the `lost` shards of `shards` (k data then m parity) in place.
    pub fn reconstruct(&self, shards: &mut [&mut [u8]], lost: &[usize]) -> Result<(), ParityError> {
        self.decoder(lost)?.apply(shards)
    }
}
