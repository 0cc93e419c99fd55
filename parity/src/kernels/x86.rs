//! x86-64 kernels: AVX2 and AVX-512BW (`pshufb` nibble tables, shift-and-reduce for x2), and GFNI
//! on ymm and zmm (`gf2p8affineqb` with the 8x8 bit matrix of each coefficient).
//!
//! Each kernel handles whole vectors (two per iteration for ILP, then one) and hands the tail that
//! does not fill a vector to the scalar reference. Loads and stores are unaligned, so any offset works.
//! Conventions as in `scalar.rs`: read `srcs[i][off..off+len]`, write `dst.add(off..off+len)`.

use core::arch::x86_64::*;

use super::{CoefTables, pow2_affine, scalar};

/// Ranges at least this long use non-temporal stores (when the destinations are 64-byte aligned):
/// the output of a large encode is not read back soon, and streaming skips the read-for-ownership.
/// Below it (a 1 MiB block, say) the output stays in L2, which measured better.
/// `TESSERA_PARITY_NT_MIN` overrides it (bytes; a huge value disables streaming).
pub const NT_MIN: usize = 4 << 20;

fn nt_min() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("TESSERA_PARITY_NT_MIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(NT_MIN)
    })
}

fn use_nt(dsts: &[*mut u8], off: usize, len: usize) -> bool {
    len >= nt_min() && dsts.iter().all(|d| (*d as usize + off).is_multiple_of(64))
}

/// Software prefetch distance in bytes for the zmm kernels (`TESSERA_PARITY_PF` overrides; 0 = off).
pub const PF_DIST: usize = 512;

fn pf_dist() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("TESSERA_PARITY_PF")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PF_DIST)
    })
}

/// Prefetch the two cache lines `pf` bytes ahead of `p` (no fault past the end: prefetch never traps).
#[inline(always)]
fn pf2(p: *const u8, pf: usize) {
    if pf != 0 {
        let a = p.wrapping_add(pf);
        // SAFETY: prefetch is a hint; it never faults, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(a.cast());
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(64).cast());
        }
    }
}

/// Store a zmm, streaming when `nt` (then `p` is 64-byte aligned: checked by `use_nt`).
#[inline(always)]
unsafe fn st512(p: *mut u8, v: __m512i, nt: bool) {
    // SAFETY: caller passes a writable 64-byte range, aligned when nt.
    unsafe {
        if nt {
            _mm512_stream_si512(p.cast(), v)
        } else {
            _mm512_storeu_si512(p.cast(), v)
        }
    }
}

// ---------------------------------------------------------------- XOR

/// # Safety
/// AVX2 available; buffers as in `scalar::xor`.
#[target_feature(enable = "avx2")]
pub unsafe fn xor_avx2(srcs: &[&[u8]], off: usize, len: usize, dst: *mut u8) {
    let mut pos = 0;
    // SAFETY: every pointer below stays inside off..off+len of its buffer (loop bounds).
    unsafe {
        while pos + 64 <= len {
            let s = srcs[0].as_ptr().add(off + pos);
            let mut a = _mm256_loadu_si256(s.cast());
            let mut b = _mm256_loadu_si256(s.add(32).cast());
            for src in &srcs[1..] {
                let s = src.as_ptr().add(off + pos);
                a = _mm256_xor_si256(a, _mm256_loadu_si256(s.cast()));
                b = _mm256_xor_si256(b, _mm256_loadu_si256(s.add(32).cast()));
            }
            let d = dst.add(off + pos);
            _mm256_storeu_si256(d.cast(), a);
            _mm256_storeu_si256(d.add(32).cast(), b);
            pos += 64;
        }
        scalar::xor(srcs, off + pos, len - pos, dst);
    }
}

/// # Safety
/// AVX-512F/BW available; buffers as in `scalar::xor`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn xor_avx512(srcs: &[&[u8]], off: usize, len: usize, dst: *mut u8) {
    let k = srcs.len();
    let mut pos = 0;
    let nt = use_nt(&[dst], off, len);
    // SAFETY: pointers stay inside off..off+len of their buffers.
    unsafe {
        let ld = |p: *const u8, o: usize| _mm512_loadu_si512(p.add(o).cast());
        // Four vectors (256 bytes) per step: one pointer fetch per source feeds four loads.
        while pos + 256 <= len {
            let s = srcs[0].as_ptr().add(off + pos);
            let mut v = [ld(s, 0), ld(s, 64), ld(s, 128), ld(s, 192)];
            let mut i = 1;
            // Three-way XOR in one instruction: two sources per step.
            while i + 2 <= k {
                let s0 = srcs.get_unchecked(i).as_ptr().add(off + pos);
                let s1 = srcs.get_unchecked(i + 1).as_ptr().add(off + pos);
                for (l, a) in v.iter_mut().enumerate() {
                    *a = _mm512_ternarylogic_epi64::<0x96>(*a, ld(s0, 64 * l), ld(s1, 64 * l));
                }
                i += 2;
            }
            if i < k {
                let s0 = srcs.get_unchecked(i).as_ptr().add(off + pos);
                for (l, a) in v.iter_mut().enumerate() {
                    *a = _mm512_xor_si512(*a, ld(s0, 64 * l));
                }
            }
            let d = dst.add(off + pos);
            for (l, a) in v.iter().enumerate() {
                st512(d.add(64 * l), *a, nt);
            }
            pos += 256;
        }
        if nt {
            _mm_sfence();
        }
        xor_avx2(srcs, off + pos, len - pos, dst);
    }
}

// ---------------------------------------------------------------- P+Q

/// # Safety
/// AVX2 available; buffers as in `scalar::pq`.
#[target_feature(enable = "avx2")]
pub unsafe fn pq_avx2(srcs: &[&[u8]], off: usize, len: usize, p: *mut u8, q: *mut u8) {
    let k = srcs.len();
    let poly = _mm256_set1_epi8(0x1d);
    let zero = _mm256_setzero_si256();
    // q * 2: shift left and reduce the bytes whose top bit was set.
    let mul2 = |v: __m256i| {
        _mm256_xor_si256(
            _mm256_add_epi8(v, v),
            _mm256_and_si256(_mm256_cmpgt_epi8(zero, v), poly),
        )
    };
    let mut pos = 0;
    // SAFETY: pointers stay inside off..off+len of their buffers.
    unsafe {
        while pos + 64 <= len {
            // Horner from the highest index: Q = ((D[k-1]*2 + D[k-2])*2 + ...) + D[0].
            let s = srcs[k - 1].as_ptr().add(off + pos);
            let mut p0 = _mm256_loadu_si256(s.cast());
            let mut p1 = _mm256_loadu_si256(s.add(32).cast());
            let (mut q0, mut q1) = (p0, p1);
            for src in srcs[..k - 1].iter().rev() {
                let s = src.as_ptr().add(off + pos);
                let x0 = _mm256_loadu_si256(s.cast());
                let x1 = _mm256_loadu_si256(s.add(32).cast());
                p0 = _mm256_xor_si256(p0, x0);
                p1 = _mm256_xor_si256(p1, x1);
                q0 = _mm256_xor_si256(mul2(q0), x0);
                q1 = _mm256_xor_si256(mul2(q1), x1);
            }
            _mm256_storeu_si256(p.add(off + pos).cast(), p0);
            _mm256_storeu_si256(p.add(off + pos + 32).cast(), p1);
            _mm256_storeu_si256(q.add(off + pos).cast(), q0);
            _mm256_storeu_si256(q.add(off + pos + 32).cast(), q1);
            pos += 64;
        }
        scalar::pq(srcs, off + pos, len - pos, p, q);
    }
}

/// # Safety
/// AVX-512F/BW available; buffers as in `scalar::pq`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn pq_avx512(srcs: &[&[u8]], off: usize, len: usize, p: *mut u8, q: *mut u8) {
    let k = srcs.len();
    let poly = _mm512_set1_epi8(0x1d);
    // q * 2 ^ x in three instructions: add, sign-bit mask, masked-constant three-way XOR.
    let nt = use_nt(&[p, q], off, len);
    let mul2_xor = |v: __m512i, x: __m512i| {
        _mm512_ternarylogic_epi64::<0x96>(
            _mm512_add_epi8(v, v),
            _mm512_maskz_mov_epi8(_mm512_movepi8_mask(v), poly),
            x,
        )
    };
    let mut pos = 0;
    // SAFETY: pointers stay inside off..off+len of their buffers.
    unsafe {
        while pos + 128 <= len {
            let s = srcs[k - 1].as_ptr().add(off + pos);
            let mut p0 = _mm512_loadu_si512(s.cast());
            let mut p1 = _mm512_loadu_si512(s.add(64).cast());
            let (mut q0, mut q1) = (p0, p1);
            for src in srcs[..k - 1].iter().rev() {
                let s = src.as_ptr().add(off + pos);
                let x0 = _mm512_loadu_si512(s.cast());
                let x1 = _mm512_loadu_si512(s.add(64).cast());
                p0 = _mm512_xor_si512(p0, x0);
                p1 = _mm512_xor_si512(p1, x1);
                q0 = mul2_xor(q0, x0);
                q1 = mul2_xor(q1, x1);
            }
            st512(p.add(off + pos), p0, nt);
            st512(p.add(off + pos + 64), p1, nt);
            st512(q.add(off + pos), q0, nt);
            st512(q.add(off + pos + 64), q1, nt);
            pos += 128;
        }
        if nt {
            _mm_sfence();
        }
        pq_avx2(srcs, off + pos, len - pos, p, q);
    }
}

/// # Safety
/// GFNI and AVX2 available; buffers as in `scalar::pq`.
#[target_feature(enable = "gfni,avx,avx2")]
pub unsafe fn pq_gfni_avx2(srcs: &[&[u8]], off: usize, len: usize, p: *mut u8, q: *mut u8) {
    let pw = pow2_affine();
    let mut pos = 0;
    // SAFETY: pointers stay inside off..off+len of their buffers.
    unsafe {
        while pos + 64 <= len {
            let (mut p0, mut p1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let (mut q0, mut q1) = (p0, p1);
            // No dependency chain: Q accumulates 2^i * D[i] with one affine op per source vector.
            for (i, src) in srcs.iter().enumerate() {
                let s = src.as_ptr().add(off + pos);
                let x0 = _mm256_loadu_si256(s.cast());
                let x1 = _mm256_loadu_si256(s.add(32).cast());
                let c = _mm256_set1_epi64x(*pw.get_unchecked(i) as i64);
                p0 = _mm256_xor_si256(p0, x0);
                p1 = _mm256_xor_si256(p1, x1);
                q0 = _mm256_xor_si256(q0, _mm256_gf2p8affine_epi64_epi8::<0>(x0, c));
                q1 = _mm256_xor_si256(q1, _mm256_gf2p8affine_epi64_epi8::<0>(x1, c));
            }
            _mm256_storeu_si256(p.add(off + pos).cast(), p0);
            _mm256_storeu_si256(p.add(off + pos + 32).cast(), p1);
            _mm256_storeu_si256(q.add(off + pos).cast(), q0);
            _mm256_storeu_si256(q.add(off + pos + 32).cast(), q1);
            pos += 64;
        }
        scalar::pq(srcs, off + pos, len - pos, p, q);
    }
}

/// # Safety
/// GFNI and AVX-512F/BW available; buffers as in `scalar::pq`.
#[target_feature(enable = "gfni,avx512f,avx512bw")]
pub unsafe fn pq_gfni_avx512(srcs: &[&[u8]], off: usize, len: usize, p: *mut u8, q: *mut u8) {
    let k = srcs.len();
    let pw = pow2_affine();
    let nt = use_nt(&[p, q], off, len);
    let pf = pf_dist();
    let mut pos = 0;
    // SAFETY: pointers stay inside off..off+len of their buffers.
    unsafe {
        while pos + 128 <= len {
            let (mut p0, mut p1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let (mut q0, mut q1) = (p0, p1);
            let mut i = 0;
            while i + 2 <= k {
                let s0 = srcs.get_unchecked(i).as_ptr().add(off + pos);
                let s1 = srcs.get_unchecked(i + 1).as_ptr().add(off + pos);
                pf2(s0, pf);
                pf2(s1, pf);
                let (x0, x1) = (
                    _mm512_loadu_si512(s0.cast()),
                    _mm512_loadu_si512(s0.add(64).cast()),
                );
                let (y0, y1) = (
                    _mm512_loadu_si512(s1.cast()),
                    _mm512_loadu_si512(s1.add(64).cast()),
                );
                let cx = _mm512_set1_epi64(*pw.get_unchecked(i) as i64);
                let cy = _mm512_set1_epi64(*pw.get_unchecked(i + 1) as i64);
                p0 = _mm512_ternarylogic_epi64::<0x96>(p0, x0, y0);
                p1 = _mm512_ternarylogic_epi64::<0x96>(p1, x1, y1);
                q0 = _mm512_ternarylogic_epi64::<0x96>(
                    q0,
                    _mm512_gf2p8affine_epi64_epi8::<0>(x0, cx),
                    _mm512_gf2p8affine_epi64_epi8::<0>(y0, cy),
                );
                q1 = _mm512_ternarylogic_epi64::<0x96>(
                    q1,
                    _mm512_gf2p8affine_epi64_epi8::<0>(x1, cx),
                    _mm512_gf2p8affine_epi64_epi8::<0>(y1, cy),
                );
                i += 2;
            }
            if i < k {
                let s0 = srcs.get_unchecked(i).as_ptr().add(off + pos);
                pf2(s0, pf);
                let x0 = _mm512_loadu_si512(s0.cast());
                let x1 = _mm512_loadu_si512(s0.add(64).cast());
                let cx = _mm512_set1_epi64(*pw.get_unchecked(i) as i64);
                p0 = _mm512_xor_si512(p0, x0);
                p1 = _mm512_xor_si512(p1, x1);
                q0 = _mm512_xor_si512(q0, _mm512_gf2p8affine_epi64_epi8::<0>(x0, cx));
                q1 = _mm512_xor_si512(q1, _mm512_gf2p8affine_epi64_epi8::<0>(x1, cx));
            }
            st512(p.add(off + pos), p0, nt);
            st512(p.add(off + pos + 64), p1, nt);
            st512(q.add(off + pos), q0, nt);
            st512(q.add(off + pos + 64), q1, nt);
            pos += 128;
        }
        if nt {
            _mm_sfence();
        }
        pq_gfni_avx2(srcs, off + pos, len - pos, p, q);
    }
}

// ---------------------------------------------------------------- matrix encode

/// Runs a kernel generic over the number of rows per pass, in passes of at most `$max` rows, then the
/// scalar tail. Each pass reads every source once; more rows per pass means less memory traffic.
macro_rules! passes {
    ($kern:ident, $max:literal, $t:expr, $srcs:expr, $off:expr, $len:expr, $dsts:expr) => {{
        let mut row0 = 0;
        let mut done = 0;
        while row0 < $dsts.len() {
            let m = ($dsts.len() - row0).min($max);
            let d = &$dsts[row0..row0 + m];
            done = match m {
                1 => $kern::<1>($t, row0, $srcs, $off, $len, d),
                2 => $kern::<2>($t, row0, $srcs, $off, $len, d),
                3 => $kern::<3>($t, row0, $srcs, $off, $len, d),
                4 => $kern::<4>($t, row0, $srcs, $off, $len, d),
                5 => $kern::<5>($t, row0, $srcs, $off, $len, d),
                6 => $kern::<6>($t, row0, $srcs, $off, $len, d),
                7 => $kern::<7>($t, row0, $srcs, $off, $len, d),
                _ => $kern::<8>($t, row0, $srcs, $off, $len, d),
            };
            row0 += m;
        }
        scalar::encode($t, 0, $srcs, $off + done, $len - done, $dsts);
    }};
}

/// # Safety
/// AVX2 available; buffers as in `scalar::encode`.
#[target_feature(enable = "avx2")]
pub unsafe fn encode_avx2(
    t: &CoefTables,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) {
    // SAFETY: forwarded contract.
    unsafe { passes!(enc_avx2, 4, t, srcs, off, len, dsts) }
}

#[target_feature(enable = "avx2")]
unsafe fn enc_avx2<const M: usize>(
    t: &CoefTables,
    row0: usize,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) -> usize {
    let k = srcs.len();
    let mask = _mm256_set1_epi8(0x0f);
    let mut pos = 0;
    // SAFETY: table index (row0+j)*k+i < rows*cols; data pointers inside off..off+len.
    unsafe {
        let tb = t.nib.as_ptr().add(row0 * k * 64);
        while pos + 64 <= len {
            let mut a = [_mm256_setzero_si256(); M];
            let mut b = [_mm256_setzero_si256(); M];
            for i in 0..k {
                let s = srcs.get_unchecked(i).as_ptr().add(off + pos);
                let x0 = _mm256_loadu_si256(s.cast());
                let x1 = _mm256_loadu_si256(s.add(32).cast());
                let l0 = _mm256_and_si256(x0, mask);
                let h0 = _mm256_and_si256(_mm256_srli_epi64::<4>(x0), mask);
                let l1 = _mm256_and_si256(x1, mask);
                let h1 = _mm256_and_si256(_mm256_srli_epi64::<4>(x1), mask);
                for j in 0..M {
                    let c = tb.add((j * k + i) * 64);
                    let tl = _mm256_loadu_si256(c.cast());
                    let th = _mm256_loadu_si256(c.add(32).cast());
                    a[j] = _mm256_xor_si256(
                        a[j],
                        _mm256_xor_si256(_mm256_shuffle_epi8(tl, l0), _mm256_shuffle_epi8(th, h0)),
                    );
                    b[j] = _mm256_xor_si256(
                        b[j],
                        _mm256_xor_si256(_mm256_shuffle_epi8(tl, l1), _mm256_shuffle_epi8(th, h1)),
                    );
                }
            }
            for j in 0..M {
                let d = dsts.get_unchecked(j).add(off + pos);
                _mm256_storeu_si256(d.cast(), a[j]);
                _mm256_storeu_si256(d.add(32).cast(), b[j]);
            }
            pos += 64;
        }
    }
    pos
}

/// # Safety
/// AVX-512F/BW available; buffers as in `scalar::encode`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn encode_avx512(
    t: &CoefTables,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) {
    // SAFETY: forwarded contract.
    unsafe { passes!(enc_avx512, 8, t, srcs, off, len, dsts) }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn enc_avx512<const M: usize>(
    t: &CoefTables,
    row0: usize,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) -> usize {
    let k = srcs.len();
    let mask = _mm512_set1_epi8(0x0f);
    let nt = use_nt(dsts, off, len);
    let mut pos = 0;
    // SAFETY: as enc_avx2.
    unsafe {
        let tb = t.nib.as_ptr().add(row0 * k * 64);
        while pos + 128 <= len {
            let mut a = [_mm512_setzero_si512(); M];
            let mut b = [_mm512_setzero_si512(); M];
            for i in 0..k {
                let s = srcs.get_unchecked(i).as_ptr().add(off + pos);
                let x0 = _mm512_loadu_si512(s.cast());
                let x1 = _mm512_loadu_si512(s.add(64).cast());
                let l0 = _mm512_and_si512(x0, mask);
                let h0 = _mm512_and_si512(_mm512_srli_epi64::<4>(x0), mask);
                let l1 = _mm512_and_si512(x1, mask);
                let h1 = _mm512_and_si512(_mm512_srli_epi64::<4>(x1), mask);
                for j in 0..M {
                    let c = tb.add((j * k + i) * 64);
                    let tl = _mm512_broadcast_i32x4(_mm_loadu_si128(c.cast()));
                    let th = _mm512_broadcast_i32x4(_mm_loadu_si128(c.add(32).cast()));
                    a[j] = _mm512_ternarylogic_epi64::<0x96>(
                        a[j],
                        _mm512_shuffle_epi8(tl, l0),
                        _mm512_shuffle_epi8(th, h0),
                    );
                    b[j] = _mm512_ternarylogic_epi64::<0x96>(
                        b[j],
                        _mm512_shuffle_epi8(tl, l1),
                        _mm512_shuffle_epi8(th, h1),
                    );
                }
            }
            for j in 0..M {
                let d = dsts.get_unchecked(j).add(off + pos);
                st512(d, a[j], nt);
                st512(d.add(64), b[j], nt);
            }
            pos += 128;
        }
        if nt {
            _mm_sfence();
        }
    }
    pos
}

/// # Safety
/// GFNI and AVX2 available; buffers as in `scalar::encode`.
#[target_feature(enable = "gfni,avx,avx2")]
pub unsafe fn encode_gfni_avx2(
    t: &CoefTables,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) {
    // SAFETY: forwarded contract.
    unsafe { passes!(enc_gfni_avx2, 4, t, srcs, off, len, dsts) }
}

#[target_feature(enable = "gfni,avx,avx2")]
unsafe fn enc_gfni_avx2<const M: usize>(
    t: &CoefTables,
    row0: usize,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) -> usize {
    let k = srcs.len();
    let mut pos = 0;
    // SAFETY: as enc_avx2.
    unsafe {
        let aff = t.aff.as_ptr().add(row0 * k);
        while pos + 64 <= len {
            let mut a = [_mm256_setzero_si256(); M];
            let mut b = [_mm256_setzero_si256(); M];
            for i in 0..k {
                let s = srcs.get_unchecked(i).as_ptr().add(off + pos);
                let x0 = _mm256_loadu_si256(s.cast());
                let x1 = _mm256_loadu_si256(s.add(32).cast());
                for j in 0..M {
                    let c = _mm256_set1_epi64x(*aff.add(j * k + i) as i64);
                    a[j] = _mm256_xor_si256(a[j], _mm256_gf2p8affine_epi64_epi8::<0>(x0, c));
                    b[j] = _mm256_xor_si256(b[j], _mm256_gf2p8affine_epi64_epi8::<0>(x1, c));
                }
            }
            for j in 0..M {
                let d = dsts.get_unchecked(j).add(off + pos);
                _mm256_storeu_si256(d.cast(), a[j]);
                _mm256_storeu_si256(d.add(32).cast(), b[j]);
            }
            pos += 64;
        }
    }
    pos
}

/// # Safety
/// GFNI and AVX-512F/BW available; buffers as in `scalar::encode`.
#[target_feature(enable = "gfni,avx512f,avx512bw")]
pub unsafe fn encode_gfni_avx512(
    t: &CoefTables,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) {
    // SAFETY: forwarded contract.
    unsafe { passes!(enc_gfni_avx512, 8, t, srcs, off, len, dsts) }
}

#[target_feature(enable = "gfni,avx512f,avx512bw")]
unsafe fn enc_gfni_avx512<const M: usize>(
    t: &CoefTables,
    row0: usize,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) -> usize {
    let k = srcs.len();
    let nt = use_nt(dsts, off, len);
    let pf = pf_dist();
    let mut pos = 0;
    // SAFETY: as enc_avx2.
    unsafe {
        let aff = t.aff.as_ptr().add(row0 * k);
        while pos + 128 <= len {
            let mut a = [_mm512_setzero_si512(); M];
            let mut b = [_mm512_setzero_si512(); M];
            let mut i = 0;
            // Two sources per step so one three-way XOR folds two products into the accumulator.
            while i + 2 <= k {
                let s0 = srcs.get_unchecked(i).as_ptr().add(off + pos);
                let s1 = srcs.get_unchecked(i + 1).as_ptr().add(off + pos);
                pf2(s0, pf);
                pf2(s1, pf);
                let x0 = _mm512_loadu_si512(s0.cast());
                let x1 = _mm512_loadu_si512(s0.add(64).cast());
                let y0 = _mm512_loadu_si512(s1.cast());
                let y1 = _mm512_loadu_si512(s1.add(64).cast());
                for j in 0..M {
                    let cx = _mm512_set1_epi64(*aff.add(j * k + i) as i64);
                    let cy = _mm512_set1_epi64(*aff.add(j * k + i + 1) as i64);
                    a[j] = _mm512_ternarylogic_epi64::<0x96>(
                        a[j],
                        _mm512_gf2p8affine_epi64_epi8::<0>(x0, cx),
                        _mm512_gf2p8affine_epi64_epi8::<0>(y0, cy),
                    );
                    b[j] = _mm512_ternarylogic_epi64::<0x96>(
                        b[j],
                        _mm512_gf2p8affine_epi64_epi8::<0>(x1, cx),
                        _mm512_gf2p8affine_epi64_epi8::<0>(y1, cy),
                    );
                }
                i += 2;
            }
            if i < k {
                let s0 = srcs.get_unchecked(i).as_ptr().add(off + pos);
                let x0 = _mm512_loadu_si512(s0.cast());
                let x1 = _mm512_loadu_si512(s0.add(64).cast());
                for j in 0..M {
                    let cx = _mm512_set1_epi64(*aff.add(j * k + i) as i64);
                    a[j] = _mm512_xor_si512(a[j], _mm512_gf2p8affine_epi64_epi8::<0>(x0, cx));
                    b[j] = _mm512_xor_si512(b[j], _mm512_gf2p8affine_epi64_epi8::<0>(x1, cx));
                }
            }
            for j in 0..M {
                let d = dsts.get_unchecked(j).add(off + pos);
                st512(d, a[j], nt);
                st512(d.add(64), b[j], nt);
            }
            pos += 128;
        }
        if nt {
            _mm_sfence();
        }
    }
    pos
}

/// Memory read bandwidth probe: XOR-folds `buf` with four independent zmm accumulators.
///
/// # Safety
/// AVX-512F available.
#[target_feature(enable = "avx512f")]
pub unsafe fn read_fold_avx512(buf: &[u8]) -> u64 {
    let mut acc = [_mm512_setzero_si512(); 4];
    let mut pos = 0;
    // SAFETY: loads stay inside buf (loop bound).
    unsafe {
        while pos + 256 <= buf.len() {
            let p = buf.as_ptr().add(pos);
            for (l, a) in acc.iter_mut().enumerate() {
                *a = _mm512_xor_si512(*a, _mm512_loadu_si512(p.add(64 * l).cast()));
            }
            pos += 256;
        }
    }
    let v = _mm512_xor_si512(
        _mm512_xor_si512(acc[0], acc[1]),
        _mm512_xor_si512(acc[2], acc[3]),
    );
    let mut out = [0u64; 8];
    // SAFETY: out holds 64 bytes.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
    out.iter().fold(0, |a, b| a ^ b) ^ buf[pos..].iter().fold(0u64, |a, &b| a ^ b as u64)
}
