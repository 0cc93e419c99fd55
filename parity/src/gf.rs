//! GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d), the field of Linux raid6 and ISA-L.
//!
//! Tables are built at compile time so the scalar reference needs no initialisation.

use crate::error::ParityError;

/// The reduction polynomial (without the x^8 bit it is 0x1d).
pub const POLY: u16 = 0x11d;

const fn build_exp() -> [u8; 512] {
    let mut t = [0u8; 512];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        t[i] = x as u8;
        t[i + 255] = x as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= POLY;
        }
        i += 1;
    }
    // Entries 510/511 are never reached by log sums (max 254 + 254 = 508) but keep them defined.
    t[510] = t[0];
    t[511] = t[1];
    t
}

const fn build_log(exp: &[u8; 512]) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 255 {
        t[exp[i] as usize] = i as u8;
        i += 1;
    }
    t
}

/// `EXP[i] = 2^i`, doubled so `EXP[log a + log b]` needs no modulo.
pub static EXP: [u8; 512] = build_exp();
/// `LOG[x]` for x != 0 (LOG[0] is meaningless and set to 0).
pub static LOG: [u8; 256] = build_log(&build_exp());

const fn build_mul() -> [[u8; 256]; 256] {
    let exp = build_exp();
    let log = build_log(&exp);
    let mut t = [[0u8; 256]; 256];
    let mut a = 1;
    while a < 256 {
        let mut b = 1;
        while b < 256 {
            t[a][b] = exp[log[a] as usize + log[b] as usize];
            b += 1;
        }
        a += 1;
    }
    t
}

/// Full 64 KiB product table: the scalar reference backend indexes it directly.
pub static MUL: [[u8; 256]; 256] = build_mul();

/// a * b in GF(2^8).
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    MUL[a as usize][b as usize]
}

/// Multiplicative inverse; `inv(0)` is 0 (as ISA-L's `gf_inv`), callers never need it.
#[inline]
pub fn inv(a: u8) -> u8 {
    if a == 0 {
        0
    } else {
        EXP[255 - LOG[a as usize] as usize]
    }
}

/// 2^e for any e (reduced mod 255).
#[inline]
pub fn pow2(e: usize) -> u8 {
    EXP[e % 255]
}

/// a / b, b != 0.
#[inline]
pub fn div(a: u8, b: u8) -> u8 {
    if a == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + 255 - LOG[b as usize] as usize]
    }
}

/// The 8x8 bit matrix of "multiply by c", in the qword layout `gf2p8affineqb` expects:
/// result bit i = parity(matrix.byte[7 - i] & x), so byte 7-i holds, for each input bit j,
/// bit i of c * 2^j.
pub fn affine_matrix(c: u8) -> u64 {
    let mut m = 0u64;
    for i in 0..8 {
        let mut row = 0u8;
        for j in 0..8 {
            if mul(c, 1 << j) & (1 << i) != 0 {
                row |= 1 << j;
            }
        }
        m |= (row as u64) << (8 * (7 - i));
    }
    m
}

/// Low/high nibble product tables of c (the `pshufb` method): `[c*0..c*15, c*0x00..c*0xf0]`,
/// the same 32-byte layout ISA-L's `ec_init_tables` writes per coefficient.
pub fn nibble_tables(c: u8) -> [u8; 32] {
    let mut t = [0u8; 32];
    for x in 0..16u8 {
        t[x as usize] = mul(c, x);
        t[16 + x as usize] = mul(c, x << 4);
    }
    t
}

/// ISA-L `gf_gen_rs_matrix(a, rows, k)`: identity on top, then row i (i >= k) is
/// `[1, g, g^2, ...]` with g = 2^(i-k). Only MDS for small k+m (ISA-L documents the same caveat).
pub fn gen_rs_matrix(rows: usize, k: usize) -> Vec<u8> {
    let mut a = vec![0u8; rows * k];
    for i in 0..k {
        a[k * i + i] = 1;
    }
    let mut genm: u8 = 1;
    for i in k..rows {
        let mut p: u8 = 1;
        for j in 0..k {
            a[k * i + j] = p;
            p = mul(p, genm);
        }
        genm = mul(genm, 2);
    }
    a
}

/// ISA-L `gf_gen_cauchy1_matrix(a, rows, k)`: identity on top, then `a[i][j] = 1 / (i ^ j)`.
pub fn gen_cauchy1_matrix(rows: usize, k: usize) -> Vec<u8> {
    let mut a = vec![0u8; rows * k];
    for i in 0..k {
        a[k * i + i] = 1;
    }
    for i in k..rows {
        for j in 0..k {
            a[k * i + j] = inv((i ^ j) as u8);
        }
    }
    a
}

/// Linux raid6 as a generator matrix: identity, P = all ones, Q = 2^i.
pub fn gen_pq_matrix(k: usize) -> Vec<u8> {
    let mut a = vec![0u8; (k + 2) * k];
    for i in 0..k {
        a[k * i + i] = 1;
        a[k * k + i] = 1;
        a[k * (k + 1) + i] = pow2(i);
    }
    a
}

/// Gauss-Jordan inverse of an n x n matrix (row-major). Errors when singular.
pub fn invert_matrix(m: &[u8], n: usize) -> Result<Vec<u8>, ParityError> {
    let mut a = m.to_vec();
    let mut out = vec![0u8; n * n];
    for i in 0..n {
        out[i * n + i] = 1;
    }
    for col in 0..n {
        let pivot = (col..n)
            .find(|&r| a[r * n + col] != 0)
            .ok_or(ParityError::Singular)?;
        if pivot != col {
            for j in 0..n {
                a.swap(pivot * n + j, col * n + j);
                out.swap(pivot * n + j, col * n + j);
            }
        }
        let f = inv(a[col * n + col]);
        for j in 0..n {
            a[col * n + j] = mul(a[col * n + j], f);
            out[col * n + j] = mul(out[col * n + j], f);
        }
        for r in 0..n {
            if r != col && a[r * n + col] != 0 {
                let f = a[r * n + col];
                for j in 0..n {
                    a[r * n + j] ^= mul(f, a[col * n + j]);
                    out[r * n + j] ^= mul(f, out[col * n + j]);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn field_axioms_hold() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "a={a}");
            assert_eq!(div(mul(a, 7), 7), a);
        }
        // 2 generates the whole multiplicative group.
        let mut seen = [false; 256];
        for e in 0..255 {
            seen[pow2(e) as usize] = true;
        }
        assert_eq!(seen.iter().filter(|s| **s).count(), 255);
        // Known raid6 constant: 2^8 = 0x1d.
        assert_eq!(pow2(8), 0x1d);
    }

    #[test]
    fn affine_matrix_multiplies() {
        for c in [0u8, 1, 2, 0x1d, 0x8e, 0xff] {
            let m = affine_matrix(c);
            for x in 0..=255u8 {
                let mut r = 0u8;
                for i in 0..8 {
                    let row = (m >> (8 * (7 - i))) as u8;
                    if (row & x).count_ones() % 2 == 1 {
                        r |= 1 << i;
                    }
                }
                assert_eq!(r, mul(c, x), "c={c} x={x}");
            }
        }
    }

    #[test]
    fn inverse_of_cauchy_submatrix() {
        let (k, rows) = (6, 9);
        let g = gen_cauchy1_matrix(rows, k);
        // Take rows 3..9 and check A * A^-1 = I.
        let sub: Vec<u8> = g[3 * k..9 * k].to_vec();
        let invm = invert_matrix(&sub, k).expect("cauchy submatrix is invertible");
        for i in 0..k {
            for j in 0..k {
                let mut s = 0u8;
                for t in 0..k {
                    s ^= mul(sub[i * k + t], invm[t * k + j]);
                }
                assert_eq!(s, u8::from(i == j));
            }
        }
        assert!(invert_matrix(&[1, 1, 1, 1], 2).is_err());
    }
}
