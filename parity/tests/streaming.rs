//! The non-temporal store path of the zmm kernels (taken for ranges >= 4 MiB with 64-byte aligned
//! destinations). This binary lowers the threshold to 4 KiB before any kernel runs, so moderate
//! buffers exercise it, and checks every backend against the scalar reference, aligned and not.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tessera_parity::util::{AlignedBuf, fill_seeded};
use tessera_parity::{Backend, Matrix, Pq, ReedSolomon, Xor};

#[test]
fn streaming_stores_match_scalar() {
    // SAFETY: the only test of this binary, run before any thread reads the environment.
    unsafe { std::env::set_var("TESSERA_PARITY_NT_MIN", "4096") };
    let (k, m) = (9, 3);
    for (len, mis) in [(65536 + 77, 0), (65536, 0), (20000, 64), (20000, 5)] {
        let data: Vec<AlignedBuf> = (0..k)
            .map(|i| {
                let mut b = AlignedBuf::new(len, 0);
                fill_seeded(b.as_mut_slice(), 77 + i as u64);
                b
            })
            .collect();
        let d: Vec<&[u8]> = data.iter().map(|b| b.as_slice()).collect();
        let outs =
            |n: usize| -> Vec<AlignedBuf> { (0..n).map(|_| AlignedBuf::new(len, mis)).collect() };
        let run = |b: Backend| -> Vec<Vec<u8>> {
            let mut o = outs(1 + 2 + m);
            let (x, rest) = o.split_at_mut(1);
            let (pq, rs) = rest.split_at_mut(2);
            Xor::with_backend(b)
                .unwrap()
                .encode(&d, x[0].as_mut_slice())
                .unwrap();
            let (p, q) = pq.split_at_mut(1);
            Pq::with_backend(k, b)
                .unwrap()
                .encode(&d, p[0].as_mut_slice(), q[0].as_mut_slice())
                .unwrap();
            let mut r: Vec<&mut [u8]> = rs.iter_mut().map(|x| x.as_mut_slice()).collect();
            ReedSolomon::with_backend(k, m, Matrix::Cauchy, b)
                .unwrap()
                .encode(&d, &mut r)
                .unwrap();
            o.iter().map(|x| x.as_slice().to_vec()).collect()
        };
        let reference = run(Backend::Scalar);
        for b in Backend::all_available() {
            assert_eq!(run(b), reference, "backend {b} len {len} misalign {mis}");
        }
    }
}
