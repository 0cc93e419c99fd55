//! aarch64 NEON kernels: `tbl` nibble tables for products, shift-and-reduce for x2.
//! Compiled for aarch64 only; not run in this project's CI (x86-64), see the README.

use core::arch::aarch64::*;

use super::{CoefTables, scalar};

/// # Safety
/// NEON available; buffers as in `scalar::xor`.
#[target_feature(enable = "neon")]
pub unsafe fn xor(srcs: &[&[u8]], off: usize, len: usize, dst: *mut u8) {
    let mut pos = 0;
    // SAFETY: pointers stay inside off..off+len of their buffers.
    unsafe {
        while pos + 16 <= len {
            let mut a = vld1q_u8(srcs[0].as_ptr().add(off + pos));
            for s in &srcs[1..] {
                a = veorq_u8(a, vld1q_u8(s.as_ptr().add(off + pos)));
            }
            vst1q_u8(dst.add(off + pos), a);
            pos += 16;
        }
        scalar::xor(srcs, off + pos, len - pos, dst);
    }
}

/// # Safety
/// NEON available; buffers as in `scalar::pq`.
#[target_feature(enable = "neon")]
pub unsafe fn pq(srcs: &[&[u8]], off: usize, len: usize, p: *mut u8, q: *mut u8) {
    let k = srcs.len();
    let mut pos = 0;
    // SAFETY: pointers stay inside off..off+len of their buffers.
    unsafe {
        let poly = vdupq_n_u8(0x1d);
        while pos + 16 <= len {
            let mut pv = vld1q_u8(srcs[k - 1].as_ptr().add(off + pos));
            let mut qv = pv;
            for s in srcs[..k - 1].iter().rev() {
                let x = vld1q_u8(s.as_ptr().add(off + pos));
                pv = veorq_u8(pv, x);
                // Bytes with the top bit set (arithmetic shift gives 0xff) get the reduction.
                let hi = vreinterpretq_u8_s8(vshrq_n_s8::<7>(vreinterpretq_s8_u8(qv)));
                qv = veorq_u8(veorq_u8(vshlq_n_u8::<1>(qv), vandq_u8(hi, poly)), x);
            }
            vst1q_u8(p.add(off + pos), pv);
            vst1q_u8(q.add(off + pos), qv);
            pos += 16;
        }
        scalar::pq(srcs, off + pos, len - pos, p, q);
    }
}

/// # Safety
/// NEON available; buffers as in `scalar::encode`.
#[target_feature(enable = "neon")]
pub unsafe fn encode(t: &CoefTables, srcs: &[&[u8]], off: usize, len: usize, dsts: &[*mut u8]) {
    let k = srcs.len();
    let mut pos = 0;
    // SAFETY: table index j*k+i < rows*cols; data pointers inside off..off+len.
    unsafe {
        let mask = vdupq_n_u8(0x0f);
        while pos + 16 <= len {
            for (j, d) in dsts.iter().enumerate() {
                let mut acc = vdupq_n_u8(0);
                for (i, s) in srcs.iter().enumerate() {
                    let x = vld1q_u8(s.as_ptr().add(off + pos));
                    let c = t.nib.as_ptr().add((j * k + i) * 64);
                    let tl = vld1q_u8(c);
                    let th = vld1q_u8(c.add(32));
                    let lo = vandq_u8(x, mask);
                    let hi = vshrq_n_u8::<4>(x);
                    acc = veorq_u8(acc, veorq_u8(vqtbl1q_u8(tl, lo), vqtbl1q_u8(th, hi)));
                }
                vst1q_u8(d.add(off + pos), acc);
            }
            pos += 16;
        }
        scalar::encode(t, 0, srcs, off + pos, len - pos, dsts);
    }
}
