//! Byte equality with ISA-L (Debian libisal2) on the same inputs. Skips with one line when the
//! library is absent.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tessera_parity::isal::Isal;
use tessera_parity::util::{AlignedBuf, fill_seeded};
use tessera_parity::{Backend, Matrix, Pq, ReedSolomon, Xor, gf};

fn isal() -> Option<&'static Isal> {
    match Isal::get() {
        Ok(i) => Some(i),
        Err(e) => {
            println!("skipped: {}", tessera_parity::isal::skip_reason(&e));
            None
        }
    }
}

fn data(k: usize, len: usize, seed: u64) -> Vec<AlignedBuf> {
    (0..k)
        .map(|i| {
            let mut b = AlignedBuf::new(len, 0);
            fill_seeded(b.as_mut_slice(), seed * 1000 + i as u64);
            b
        })
        .collect()
}

#[test]
fn generator_matrices_equal_isal() {
    let Some(isal) = isal() else { return };
    for k in 1..=32 {
        for m in 1..=8 {
            assert_eq!(
                gf::gen_cauchy1_matrix(k + m, k),
                isal.gf_gen_cauchy1_matrix(k + m, k),
                "cauchy {k}+{m}"
            );
            assert_eq!(
                gf::gen_rs_matrix(k + m, k),
                isal.gf_gen_rs_matrix(k + m, k),
                "rs {k}+{m}"
            );
        }
    }
    // Our inversion agrees with gf_invert_matrix on a decode submatrix.
    let g = gf::gen_cauchy1_matrix(14, 10);
    let sub: Vec<u8> = g[4 * 10..14 * 10].to_vec();
    assert_eq!(
        gf::invert_matrix(&sub, 10).ok(),
        isal.gf_invert_matrix(&sub, 10)
    );
}

#[test]
fn nibble_tables_equal_ec_init_tables() {
    let Some(isal) = isal() else { return };
    let coefs: Vec<u8> = (0..=255u8).collect();
    let t = isal.ec_init_tables(256, 1, &coefs).unwrap();
    for c in 0..=255u8 {
        assert_eq!(
            &t[c as usize * 32..c as usize * 32 + 32],
            &gf::nibble_tables(c)[..],
            "c={c}"
        );
    }
}

#[test]
fn xor_and_pq_equal_isal() {
    let Some(isal) = isal() else { return };
    for (k, len) in [
        (2, 64),
        (3, 4096),
        (4, 65536),
        (8, 4160),
        (16, 1 << 16),
        (31, 640),
    ] {
        let d = data(k, len, k as u64);
        let s: Vec<&[u8]> = d.iter().map(|b| b.as_slice()).collect();
        let mut ip = AlignedBuf::new(len, 0);
        let mut iq = AlignedBuf::new(len, 0);
        isal.xor_gen(&s, ip.as_mut_slice()).unwrap();
        for b in Backend::all_available() {
            let mut p = vec![0u8; len];
            Xor::with_backend(b).unwrap().encode(&s, &mut p).unwrap();
            assert_eq!(p, ip.as_slice(), "xor {k} {len} {b}");
        }
        isal.pq_gen(&s, ip.as_mut_slice(), iq.as_mut_slice())
            .unwrap();
        for b in Backend::all_available() {
            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            Pq::with_backend(k, b)
                .unwrap()
                .encode(&s, &mut p, &mut q)
                .unwrap();
            assert_eq!(p, ip.as_slice(), "P {k} {len} {b}");
            assert_eq!(q, iq.as_slice(), "Q {k} {len} {b}");
        }
    }
}

#[test]
fn rs_encode_and_decode_equal_isal() {
    let Some(isal) = isal() else { return };
    for (k, m, len) in [
        (8, 2, 65536),
        (10, 4, 4097),
        (4, 3, 100),
        (12, 6, 1 << 16),
        (20, 8, 333),
    ] {
        for matrix in [Matrix::Cauchy, Matrix::Vandermonde] {
            let d = data(k, len, (k * m) as u64);
            let s: Vec<&[u8]> = d.iter().map(|b| b.as_slice()).collect();
            let genm = match matrix {
                Matrix::Cauchy => isal.gf_gen_cauchy1_matrix(k + m, k),
                Matrix::Vandermonde => isal.gf_gen_rs_matrix(k + m, k),
            };
            let tbl = isal.ec_init_tables(k, m, &genm[k * k..]).unwrap();
            let mut ipar = vec![vec![0u8; len]; m];
            isal.ec_encode_data(
                &tbl,
                &s,
                &mut ipar.iter_mut().map(|v| &mut v[..]).collect::<Vec<_>>(),
            )
            .unwrap();
            for b in Backend::all_available() {
                let rs = ReedSolomon::with_backend(k, m, matrix, b).unwrap();
                let mut par = vec![vec![0u8; len]; m];
                rs.encode(
                    &s,
                    &mut par.iter_mut().map(|v| &mut v[..]).collect::<Vec<_>>(),
                )
                .unwrap();
                assert_eq!(par, ipar, "RS {k}+{m} {matrix:?} {b}");
            }
            // Decode through ISA-L (first k survivors, gf_invert_matrix) and through Tessera.
            let lost = [1usize, k];
            let survivors: Vec<usize> = (0..k + m).filter(|i| !lost.contains(i)).take(k).collect();
            let mut sub = vec![0u8; k * k];
            for (r, &sv) in survivors.iter().enumerate() {
                sub[r * k..(r + 1) * k].copy_from_slice(&genm[sv * k..(sv + 1) * k]);
            }
            let Some(inv) = isal.gf_invert_matrix(&sub, k) else {
                continue;
            };
            let mut dm = vec![0u8; lost.len() * k];
            for (r, &l) in lost.iter().enumerate() {
                for j in 0..k {
                    dm[r * k + j] =
                        (0..k).fold(0u8, |a, t| a ^ gf::mul(genm[l * k + t], inv[t * k + j]));
                }
            }
            let all: Vec<Vec<u8>> = s
                .iter()
                .map(|x| x.to_vec())
                .chain(ipar.iter().cloned())
                .collect();
            let srv: Vec<&[u8]> = survivors.iter().map(|&i| &all[i][..]).collect();
            let dt = isal.ec_init_tables(k, lost.len(), &dm).unwrap();
            let mut rec = vec![vec![0u8; len]; lost.len()];
            isal.ec_encode_data(
                &dt,
                &srv,
                &mut rec.iter_mut().map(|v| &mut v[..]).collect::<Vec<_>>(),
            )
            .unwrap();
            assert_eq!(rec[0], all[1]);
            assert_eq!(rec[1], all[k]);
            let rs = ReedSolomon::new(k, m, matrix).unwrap();
            let mut mine = all.clone();
            mine[1].fill(0);
            mine[k].fill(0);
            rs.reconstruct(
                &mut mine.iter_mut().map(|v| &mut v[..]).collect::<Vec<_>>(),
                &lost,
            )
            .unwrap();
            assert_eq!(mine, all, "decode {k}+{m} {matrix:?}");
        }
    }
}

#[test]
fn isal_wrappers_reject_bad_arguments() {
    let Some(isal) = isal() else { return };
    let d = data(3, 100, 1);
    let s: Vec<&[u8]> = d.iter().map(|b| b.as_slice()).collect();
    let mut p = AlignedBuf::new(100, 0);
    assert!(
        isal.xor_gen(&s, p.as_mut_slice()).is_err(),
        "len 100 is not a multiple of 64"
    );
    let d = data(3, 128, 1);
    let s: Vec<&[u8]> = d.iter().map(|b| b.as_slice()).collect();
    let mut p = AlignedBuf::new(128, 8);
    assert!(
        isal.xor_gen(&s, p.as_mut_slice()).is_err(),
        "unaligned dest"
    );
}
