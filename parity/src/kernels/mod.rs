//! Backends and their kernels. The codecs call [`xor`], [`pq`] and [`encode`], which dispatch on a
//! [`Backend`] chosen at run time.

use std::sync::OnceLock;

use crate::error::ParityError;
use crate::gf;

#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

/// Most output rows one encode call may produce (parity shards of a codec, or lost shards of a decode).
pub const MAX_OUT: usize = 32;

/// A SIMD instruction set for the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Byte-at-a-time reference.
    Scalar,
    /// x86-64 AVX2, `vpshufb` nibble tables.
    Avx2,
    /// x86-64 AVX-512F/BW, `vpshufb` nibble tables on zmm.
    Avx512,
    /// GFNI `gf2p8affineqb` on ymm (VEX encoding, no AVX-512 needed).
    GfniAvx2,
    /// GFNI `gf2p8affineqb` on zmm.
    GfniAvx512,
    /// aarch64 NEON `tbl` nibble tables.
    Neon,
}

impl Backend {
    pub const ALL: [Backend; 6] = [
        Backend::Scalar,
        Backend::Avx2,
        Backend::Avx512,
        Backend::GfniAvx2,
        Backend::GfniAvx512,
        Backend::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512bw",
            Backend::GfniAvx2 => "gfni-avx2",
            Backend::GfniAvx512 => "gfni-avx512",
            Backend::Neon => "neon",
        }
    }

    pub fn from_name(s: &str) -> Result<Backend, ParityError> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| ParityError::Geometry(format!("unknown backend {s:?}")))
    }

    /// Whether this CPU can run the backend.
    pub fn available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::GfniAvx2 => {
                std::is_x86_feature_detected!("gfni") && std::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::GfniAvx512 => {
                std::is_x86_feature_detected!("gfni")
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every backend this CPU can run, best last.
    pub fn all_available() -> Vec<Backend> {
        Backend::ALL.into_iter().filter(|b| b.available()).collect()
    }

    /// The fastest available backend, or the one named by `TESSERA_PARITY_BACKEND` when it is available.
    pub fn best() -> Backend {
        static BEST: OnceLock<Backend> = OnceLock::new();
        *BEST.get_or_init(|| {
            if let Ok(name) = std::env::var("TESSERA_PARITY_BACKEND") {
                match Backend::from_name(&name) {
                    Ok(b) if b.available() => return b,
                    _ => tracing::warn!(%name, "TESSERA_PARITY_BACKEND not usable here, auto-selecting"),
                }
            }
            [
                Backend::GfniAvx512,
                Backend::Avx512,
                Backend::GfniAvx2,
                Backend::Avx2,
                Backend::Neon,
            ]
            .into_iter()
            .find(|b| b.available())
            .unwrap_or(Backend::Scalar)
        })
    }

    /// Error unless available: backends are only ever run after this check.
    pub fn check(self) -> Result<Backend, ParityError> {
        if self.available() {
            Ok(self)
        } else {
            Err(ParityError::BackendUnavailable(self.name()))
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Precomputed per-coefficient tables of a `rows x cols` matrix: raw coefficients (scalar),
/// 64-byte `[lo16 lo16 hi16 hi16]` nibble tables (pshufb/tbl) and GFNI affine matrices.
#[derive(Clone, Debug)]
pub struct CoefTables {
    pub rows: usize,
    pub cols: usize,
    pub coef: Vec<u8>,
    pub nib: Vec<u8>,
    pub aff: Vec<u64>,
}

impl CoefTables {
    pub fn new(matrix: &[u8], rows: usize, cols: usize) -> CoefTables {
        assert_eq!(matrix.len(), rows * cols, "matrix shape");
        let mut nib = vec![0u8; rows * cols * 64];
        let mut aff = vec![0u64; rows * cols];
        for (n, &c) in matrix.iter().enumerate() {
            let t = gf::nibble_tables(c);
            let o = n * 64;
            nib[o..o + 16].copy_from_slice(&t[..16]);
            nib[o + 16..o + 32].copy_from_slice(&t[..16]);
            nib[o + 32..o + 48].copy_from_slice(&t[16..]);
            nib[o + 48..o + 64].copy_from_slice(&t[16..]);
            aff[n] = gf::affine_matrix(c);
        }
        CoefTables {
            rows,
            cols,
            coef: matrix.to_vec(),
            nib,
            aff,
        }
    }
}

/// Affine matrices of 2^i, for the GFNI P+Q kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) fn pow2_affine() -> &'static [u64; 256] {
    static T: OnceLock<[u64; 256]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = gf::affine_matrix(gf::pow2(i));
        }
        t
    })
}

/// dst = XOR of srcs over `off..off + len`.
///
/// # Safety
/// `b` is available; every source holds `off + len` bytes; `dst` is valid for `off + len` bytes and
/// does not overlap a source.
pub unsafe fn xor(b: Backend, srcs: &[&[u8]], off: usize, len: usize, dst: *mut u8) {
    // SAFETY: forwarded contract; the backend was checked available by the caller.
    unsafe {
        match b {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 | Backend::GfniAvx2 => x86::xor_avx2(srcs, off, len, dst),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 | Backend::GfniAvx512 => x86::xor_avx512(srcs, off, len, dst),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => neon::xor(srcs, off, len, dst),
            _ => scalar::xor(srcs, off, len, dst),
        }
    }
}

/// P and Q of Linux raid6 over `off..off + len`.
///
/// # Safety
/// As [`xor`], for `p` and `q`.
pub unsafe fn pq(b: Backend, srcs: &[&[u8]], off: usize, len: usize, p: *mut u8, q: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe {
        match b {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => x86::pq_avx2(srcs, off, len, p, q),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => x86::pq_avx512(srcs, off, len, p, q),
            #[cfg(target_arch = "x86_64")]
            Backend::GfniAvx2 => x86::pq_gfni_avx2(srcs, off, len, p, q),
            #[cfg(target_arch = "x86_64")]
            Backend::GfniAvx512 => x86::pq_gfni_avx512(srcs, off, len, p, q),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => neon::pq(srcs, off, len, p, q),
            _ => scalar::pq(srcs, off, len, p, q),
        }
    }
}

/// dsts[j] = sum_i t[j][i] * srcs[i] for all `t.rows` rows, over `off..off + len`.
///
/// # Safety
/// As [`xor`]; `dsts.len() == t.rows`, `srcs.len() == t.cols`.
pub unsafe fn encode(
    b: Backend,
    t: &CoefTables,
    srcs: &[&[u8]],
    off: usize,
    len: usize,
    dsts: &[*mut u8],
) {
    debug_assert_eq!(dsts.len(), t.rows);
    debug_assert_eq!(srcs.len(), t.cols);
    // SAFETY: forwarded contract.
    unsafe {
        match b {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => x86::encode_avx2(t, srcs, off, len, dsts),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => x86::encode_avx512(t, srcs, off, len, dsts),
            #[cfg(target_arch = "x86_64")]
            Backend::GfniAvx2 => x86::encode_gfni_avx2(t, srcs, off, len, dsts),
            #[cfg(target_arch = "x86_64")]
            Backend::GfniAvx512 => x86::encode_gfni_avx512(t, srcs, off, len, dsts),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => neon::encode(t, srcs, off, len, dsts),
            _ => scalar::encode(t, 0, srcs, off, len, dsts),
        }
    }
}
