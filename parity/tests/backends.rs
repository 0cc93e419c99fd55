//! Property tests: every available backend produces the scalar reference's bytes, for random
//! geometries, lengths that are not multiples of any vector width, and unaligned buffers.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use proptest::prelude::*;
use tessera_parity::util::{AlignedBuf, fill_seeded};
use tessera_parity::{Backend, Matrix, Member, Pq, ReedSolomon, Xor};

fn bufs(n: usize, len: usize, misalign: usize, seed: u64) -> Vec<AlignedBuf> {
    (0..n)
        .map(|i| {
            let mut b = AlignedBuf::new(len, (misalign + 7 * i) % 64);
            fill_seeded(b.as_mut_slice(), seed.wrapping_add(i as u64));
            b
        })
        .collect()
}

fn simd_backends() -> Vec<Backend> {
    let v: Vec<Backend> = Backend::all_available()
        .into_iter()
        .filter(|b| *b != Backend::Scalar)
        .collect();
    if v.is_empty() {
        println!("skipped: no SIMD backend on this CPU, only scalar is tested");
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn xor_and_pq_match_scalar(k in 1usize..24, len in 0usize..2100, mis in 0usize..64, seed: u64) {
        let data = bufs(k, len, mis, seed);
        let d: Vec<&[u8]> = data.iter().map(|b| b.as_slice()).collect();
        let mut rx = vec![0u8; len];
        Xor::with_backend(Backend::Scalar).unwrap().encode(&d, &mut rx).unwrap();
        let (mut rp, mut rq) = (vec![0u8; len], vec![0u8; len]);
        Pq::with_backend(k, Backend::Scalar).unwrap().encode(&d, &mut rp, &mut rq).unwrap();
        for b in simd_backends() {
            let mut out = bufs(3, len, mis + 3, 0);
            let [x, p, q] = &mut out[..] else { unreachable!() };
            Xor::with_backend(b).unwrap().encode(&d, x.as_mut_slice()).unwrap();
            prop_assert_eq!(x.as_slice(), &rx[..], "xor backend {}", b);
            Pq::with_backend(k, b).unwrap().encode(&d, p.as_mut_slice(), q.as_mut_slice()).unwrap();
            prop_assert_eq!(p.as_slice(), &rp[..], "P backend {}", b);
            prop_assert_eq!(q.as_slice(), &rq[..], "Q backend {}", b);
        }
    }

    #[test]
    fn rs_encode_and_decode_match_scalar(k in 1usize..20, m in 1usize..11, len in 0usize..2100,
                                         mis in 0usize..64, seed: u64, cauchy: bool, lost_seed: u64) {
        let matrix = if cauchy { Matrix::Cauchy } else { Matrix::Vandermonde };
        let data = bufs(k, len, mis, seed);
        let d: Vec<&[u8]> = data.iter().map(|b| b.as_slice()).collect();
        let reference = ReedSolomon::with_backend(k, m, matrix, Backend::Scalar).unwrap();
        let mut rpar = vec![vec![0u8; len]; m];
        {
            let mut r: Vec<&mut [u8]> = rpar.iter_mut().map(|v| &mut v[..]).collect();
            reference.encode(&d, &mut r).unwrap();
        }
        // A random erasure pattern of 1..=m shards.
        let nlost = 1 + (lost_seed % m as u64) as usize;
        let mut lost: Vec<usize> = Vec::new();
        let mut s = lost_seed;
        while lost.len() < nlost {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let c = (s >> 33) as usize % (k + m);
            if !lost.contains(&c) { lost.push(c); }
        }
        for b in Backend::all_available() {
            let codec = ReedSolomon::with_backend(k, m, matrix, b).unwrap();
            let mut par = bufs(m, len, mis + 5, 1);
            {
                let mut p: Vec<&mut [u8]> = par.iter_mut().map(|v| v.as_mut_slice()).collect();
                codec.encode(&d, &mut p).unwrap();
            }
            for j in 0..m {
                prop_assert_eq!(par[j].as_slice(), &rpar[j][..], "RS parity {} backend {}", j, b);
            }
            // Decode: wipe the lost shards and rebuild them. Vandermonde is not MDS for every pattern.
            let mut all: Vec<Vec<u8>> = d.iter().map(|x| x.to_vec()).chain(rpar.iter().cloned()).collect();
            let orig = all.clone();
            for &l in &lost { all[l].iter_mut().for_each(|x| *x = 0xa5); }
            let mut sh: Vec<&mut [u8]> = all.iter_mut().map(|v| &mut v[..]).collect();
            match codec.reconstruct(&mut sh, &lost) {
                Ok(()) => prop_assert_eq!(&all, &orig, "decode {:?} backend {}", lost, b),
                Err(e) => prop_assert!(matrix == Matrix::Vandermonde, "cauchy decode failed: {e}"),
            }
        }
    }
}

#[test]
fn raid6_every_loss_case_and_location() {
    let (k, len) = (7, 4096 + 77);
    let data = bufs(k, len, 3, 99);
    let d: Vec<&[u8]> = data.iter().map(|b| b.as_slice()).collect();
    for b in Backend::all_available() {
        let pq = Pq::with_backend(k, b).unwrap();
        let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
        pq.encode(&d, &mut p, &mut q).unwrap();
        let orig: Vec<Vec<u8>> = d
            .iter()
            .map(|x| x.to_vec())
            .chain([p.clone(), q.clone()])
            .collect();
        // 1 data; 2 data; data+P; data+Q; P+Q; P; Q.
        let cases: &[&[usize]] = &[
            &[3],
            &[0, 6],
            &[2, 5],
            &[4, k],
            &[1, k + 1],
            &[k, k + 1],
            &[k],
            &[k + 1],
        ];
        for lost in cases {
            let mut all = orig.clone();
            for &l in *lost {
                all[l].fill(0);
            }
            let mut sh: Vec<&mut [u8]> = all.iter_mut().map(|v| &mut v[..]).collect();
            pq.reconstruct(&mut sh, lost).unwrap();
            assert_eq!(all, orig, "lost {lost:?} backend {b}");
        }
        assert!(
            pq.reconstruct(
                &mut orig
                    .clone()
                    .iter_mut()
                    .map(|v| &mut v[..])
                    .collect::<Vec<_>>(),
                &[0, 1, 2]
            )
            .is_err()
        );
        // Consistent data verifies clean; one corrupted member per stripe is located.
        assert!(pq.verify(&d, &p, &q, 4096).unwrap().is_empty());
        let mut bad = orig.clone();
        bad[5][100] ^= 0x40;
        bad[5][101] ^= 0x07;
        bad[k][4096 + 3] ^= 1;
        let dd: Vec<&[u8]> = bad[..k].iter().map(|v| &v[..]).collect();
        let r = pq.verify(&dd, &bad[k], &bad[k + 1], 4096).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].offset, r[0].member), (0, Some(Member::Data(5))));
        assert_eq!((r[1].offset, r[1].member), (4096, Some(Member::P)));
        let mut bad = orig.clone();
        bad[k + 1][9] ^= 0xff;
        bad[0][10] ^= 0x01; // two members wrong in one stripe: detected, not locatable
        let dd: Vec<&[u8]> = bad[..k].iter().map(|v| &v[..]).collect();
        let r = pq.verify(&dd, &bad[k], &bad[k + 1], 4096).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].member, None);
    }
}

#[test]
fn xor_reconstruct_and_verify() {
    let (k, len) = (5, 1000);
    let data = bufs(k, len, 1, 7);
    let d: Vec<&[u8]> = data.iter().map(|b| b.as_slice()).collect();
    let x = Xor::new();
    let mut p = vec![0u8; len];
    x.encode(&d, &mut p).unwrap();
    let mut all: Vec<Vec<u8>> = d.iter().map(|v| v.to_vec()).chain([p.clone()]).collect();
    let orig = all.clone();
    all[2].fill(0);
    let mut sh: Vec<&mut [u8]> = all.iter_mut().map(|v| &mut v[..]).collect();
    x.reconstruct(&mut sh, 2).unwrap();
    assert_eq!(all, orig);
    assert!(x.verify(&d, &p, 512).unwrap().is_empty());
    p[600] ^= 1;
    let r = x.verify(&d, &p, 512).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].offset, 512);
}

#[test]
fn parallel_entry_points_match_serial() {
    let (k, m, len) = (10, 4, 3 * 1024 * 1024 + 13);
    let data = bufs(k, len, 0, 42);
    let d: Vec<&[u8]> = data.iter().map(|b| b.as_slice()).collect();
    let rs = ReedSolomon::new(k, m, Matrix::Cauchy).unwrap();
    let mut a = vec![vec![0u8; len]; m];
    let mut b = vec![vec![0u8; len]; m];
    rs.encode(
        &d,
        &mut a.iter_mut().map(|v| &mut v[..]).collect::<Vec<_>>(),
    )
    .unwrap();
    rs.encode_par(
        &d,
        &mut b.iter_mut().map(|v| &mut v[..]).collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(a, b);
    let pq = Pq::new(k).unwrap();
    let (mut p1, mut q1, mut p2, mut q2) = (
        vec![0u8; len],
        vec![0u8; len],
        vec![0u8; len],
        vec![0u8; len],
    );
    pq.encode(&d, &mut p1, &mut q1).unwrap();
    pq.encode_par(&d, &mut p2, &mut q2).unwrap();
    assert_eq!((p1, q1), (p2, q2));
    let mut all: Vec<Vec<u8>> = d.iter().map(|v| v.to_vec()).chain(a.clone()).collect();
    let orig = all.clone();
    all[1].fill(0);
    all[k + 2].fill(0);
    let dec = rs.decoder(&[1, k + 2]).unwrap();
    dec.apply_par(&mut all.iter_mut().map(|v| &mut v[..]).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(all, orig);
}

#[test]
fn bad_geometry_is_an_error() {
    assert!(ReedSolomon::new(0, 2, Matrix::Cauchy).is_err());
    assert!(ReedSolomon::new(250, 10, Matrix::Cauchy).is_err());
    assert!(Pq::new(0).is_err());
    let rs = ReedSolomon::new(4, 2, Matrix::Cauchy).unwrap();
    assert!(rs.decoder(&[0, 1, 2]).is_err());
    assert!(rs.decoder(&[9]).is_err());
    let short = [0u8; 10];
    let long = [0u8; 11];
    let mut p = [0u8; 10];
    assert!(Xor::new().encode(&[&short, &long], &mut p).is_err());
}
