//! Byte-at-a-time reference kernels. Every SIMD backend must match these bytes exactly, and the SIMD
//! kernels call them for the tail that does not fill a vector.
//!
//! Conventions shared by all kernels: `srcs[i][off..off + len]` are read, `dst.add(off..off + len)` are
//! written; destinations never alias sources.

use super::CoefTables;
use crate::gf::{MUL, pow2};

/// dst = XOR of srcs.
///
/// # Safety
/// Every source holds `off + len` bytes; `dst` is valid for writes of `off + len` bytes.
pub unsafe fn xor(srcs: &[&[u8]], off: usize, len: usize, dst: *mut u8) {
    for x in off..off + len {
        let mut v = 0u8;
        for s in srcs {
            v ^= s[x];
        }
        // SAFETY: the caller guarantees dst covers off + len bytes.
        unsafe { *dst.add(x) = v };
    }
}

/// P = XOR of srcs, Q = sum of 2^i * srcs[i] (Linux raid6).
///
/// # Safety
/// As [`xor`], for both `p` and `q`.
pub unsafe fn pq(srcs: &[&[u8]], off: usize, len: usize, p: *mut u8, q: *mut u8) {
    for x in off..off + len {
        let (mut pv, mut qv) = (0u8, 0u8);
        for (i, s) in srcs.iter().enumerate() {
            pv ^= s[x];
            qv ^= MUL[pow2(i) as usize][s[x] as usize];
        }
        // SAFETY: the caller guarantees p and q cover off + len bytes.
        unsafe {
            *p.add(x) = pv;
            *q.add(x) = qv;
        }
    }
}

/// dsts[j] = sum over i of coef[row0 + j][i] * srcs[i].
///
/// # Safety
/// Every destination is valid for writes of `off + len` bytes; `row0 + dsts.len() <= t.rows`.
pub unsafe fn encode(
    t: &CoefTables,
    row0: usize,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) {
    let k = srcs.len();
    for (j, d) in dsts.iter().enumerate() {
        let row = &t.coef[(row0 + j) * k..(row0 + j + 1) * k];
        for x in off..off + len {
            let mut v = 0u8;
            for (i, s) in srcs.iter().enumerate() {
                v ^= MUL[row[i] as usize][s[x] as usize];
            }
            // SAFETY: the caller guarantees each destination covers off + len bytes.
            unsafe { *d.add(x) = v };
        }
    }
}
