//! CUDA C source of the GPU kernels, generated per job shape and compiled by NVRTC at run time.
//!
//! Three kernels, all memory-bound, grid-stride, 16-byte (`uint4`) coalesced loads through the
//! read-only path and streaming (`__stcs`) stores:
//! - `xor`: P = D_0 ^ ... ^ D_{k-1};
//! - `pq`: Linux RAID6, P = xor, Q by Horner's rule Q = ((D_{k-1}*2 ^ D_{k-2})*2 ^ ...) ^ D_0 with a
//!   packed "multiply by 2" (xtime) on four bytes per 32-bit word;
//! - `matrix`: outputs = M (m x k) times sources, for RS encode (generator rows) and every
//!   reconstruct (the CPU decoder's matrix). Each thread takes 32 bytes per source, transposes them
//!   into 8 bit planes (an 8x8 bit transpose per byte lane), and multiplies by the constant
//!   coefficients as XORs of planes: the coefficients are baked into the source, so the compiler
//!   emits only the XORs of the set bits of each coefficient's 8x8 GF(2) matrix (no tables, no
//!   per-byte lookups).

use crate::gf;

/// What a kernel computes; the host side of a launch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    /// One output: the XOR of the k sources.
    Xor { k: usize },
    /// Two outputs P, Q of Linux RAID6 over k sources.
    Pq { k: usize },
    /// m outputs: `rows` (m x k, row-major) times the k sources over GF(2^8)/0x11d.
    Matrix { k: usize, m: usize, rows: Vec<u8> },
}

/// Most sources and outputs of one launch (sizes of the kernel parameter block).
pub const MAX_SRC: usize = 32;
pub const MAX_DST: usize = 8;

impl Job {
    pub fn k(&self) -> usize {
        match self {
            Job::Xor { k } | Job::Pq { k } | Job::Matrix { k, .. } => *k,
        }
    }
    pub fn m(&self) -> usize {
        match self {
            Job::Xor { .. } => 1,
            Job::Pq { .. } => 2,
            Job::Matrix { m, .. } => *m,
        }
    }
    /// The calibration class ("xor", "pq", "matrix").
    pub fn class(&self) -> &'static str {
        match self {
            Job::Xor { .. } => "xor",
            Job::Pq { .. } => "pq",
            Job::Matrix { .. } => "matrix",
        }
    }
    /// Bytes a thread handles per source in one step (the vector unit of the kernel).
    pub fn unit(&self) -> usize {
        match self {
            Job::Matrix { .. } => 32,
            _ => 16,
        }
    }
    /// Checks the shape against the kernel limits.
    pub fn check(&self) -> Result<(), crate::ParityError> {
        let (k, m) = (self.k(), self.m());
        if k == 0 || k > MAX_SRC || m == 0 || m > MAX_DST {
            return Err(crate::ParityError::Geometry(format!(
                "GPU job needs 1..={MAX_SRC} sources and 1..={MAX_DST} outputs, got {k} and {m}"
            )));
        }
        if let Job::Matrix { rows, .. } = self
            && rows.len() != k * m
        {
            return Err(crate::ParityError::Geometry(format!(
                "matrix has {} coefficients, expected {m} x {k}",
                rows.len()
            )));
        }
        Ok(())
    }
    /// Module cache key: the source depends on exactly these.
    pub fn key(&self) -> String {
        match self {
            Job::Xor { k } => format!("xor{k}"),
            Job::Pq { k } => format!("pq{k}"),
            Job::Matrix { k, m, rows } => {
                let hex: String = rows.iter().map(|b| format!("{b:02x}")).collect();
                format!("mat{k}x{m}_{hex}")
            }
        }
    }
    /// Name of the `extern "C"` kernel in [`Job::source`].
    pub fn entry(&self) -> &'static str {
        match self {
            Job::Xor { .. } => "tessera_xor",
            Job::Pq { .. } => "tessera_pq",
            Job::Matrix { .. } => "tessera_matrix",
        }
    }

    /// Complete CUDA C source of this job's kernel.
    pub fn source(&self) -> String {
        let mut s = String::from(PRELUDE);
        match self {
            Job::Xor { k } => {
                s += &format!("#define K {k}\n");
                s += XOR;
            }
            Job::Pq { k } => {
                s += &format!("#define K {k}\n");
                s += PQ;
            }
            Job::Matrix { k, m, rows } => {
                s += &format!("#define K {k}\n#define M {m}\n");
                s += "__device__ const unsigned char COEF[M * K] = {";
                s += &rows
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                s += "};\n";
                s += MATRIX_HEAD;
                for i in 0..*k {
                    s += &format!("    {{ u32 w[8]; load32(p.src[{i}], u, h, w); transpose8(w);\n");
                    for j in 0..*m {
                        s += &plane_xors(rows[j * k + i], &format!("a{j}"), "w");
                    }
                    s += "    }\n";
                }
                for j in 0..*m {
                    s += &format!("    transpose8(a{j}); store32(p.dst[{j}], u, h, a{j});\n");
                }
                s += MATRIX_TAIL;
            }
        }
        s
    }
}

/// For a constant c: for each output bit plane r, the input planes i whose XOR gives it
/// (bit r of c * 2^i): the 8x8 GF(2) matrix of "multiply by c".
pub fn plane_terms(c: u8) -> [Vec<usize>; 8] {
    let mut t: [Vec<usize>; 8] = Default::default();
    for i in 0..8 {
        let col = gf::mul(c, 1 << i);
        for (r, terms) in t.iter_mut().enumerate() {
            if col >> r & 1 == 1 {
                terms.push(i);
            }
        }
    }
    t
}

/// `acc[r] ^= in[i] ^ ...` lines of one coefficient.
fn plane_xors(c: u8, acc: &str, input: &str) -> String {
    let mut s = String::new();
    for (r, terms) in plane_terms(c).iter().enumerate() {
        if terms.is_empty() {
            continue;
        }
        let rhs: Vec<String> = terms.iter().map(|i| format!("{input}[{i}]")).collect();
        s += &format!("      {acc}[{r}] ^= {};\n", rhs.join(" ^ "));
    }
    s
}

const PRELUDE: &str = r#"
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;
struct Params { u64 src[32]; u64 dst[8]; u64 len; };

// GF(2^8)/0x11d multiply by 2 of four packed bytes.
__device__ __forceinline__ u32 xt(u32 w) {
  return ((w & 0x7f7f7f7fu) << 1) ^ (((w >> 7) & 0x01010101u) * 0x1du);
}
__device__ __forceinline__ uint4 xt4(uint4 v) {
  return make_uint4(xt(v.x), xt(v.y), xt(v.z), xt(v.w));
}
__device__ __forceinline__ uint4 x4(uint4 a, uint4 b) {
  return make_uint4(a.x ^ b.x, a.y ^ b.y, a.z ^ b.z, a.w ^ b.w);
}
__device__ __forceinline__ u8 gmul(u8 a, u8 b) {
  u8 r = 0;
  for (int i = 0; i < 8; i++) {
    if (b & 1) r ^= a;
    u8 hi = a & 0x80; a = (u8)(a << 1); if (hi) a ^= 0x1d; b >>= 1;
  }
  return r;
}
__device__ __forceinline__ uint4 ld(u64 base, u64 i) { return __ldg(((const uint4*)base) + i); }
__device__ __forceinline__ void st(u64 base, u64 i, uint4 v) { __stcs(((uint4*)base) + i, v); }
"#;

const XOR: &str = r#"
extern "C" __global__ void __launch_bounds__(256) tessera_xor(const Params p) {
  const u64 nv = p.len / 16, stride = (u64)gridDim.x * blockDim.x;
  const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  for (u64 i = t; i < nv; i += stride) {
    uint4 a = ld(p.src[0], i);
#pragma unroll
    for (int s = 1; s < K; s++) a = x4(a, ld(p.src[s], i));
    st(p.dst[0], i, a);
  }
  for (u64 b = nv * 16 + t; b < p.len; b += stride) {
    u8 a = 0;
    for (int s = 0; s < K; s++) a ^= ((const u8*)p.src[s])[b];
    ((u8*)p.dst[0])[b] = a;
  }
}
"#;

const PQ: &str = r#"
extern "C" __global__ void __launch_bounds__(256) tessera_pq(const Params p) {
  const u64 nv = p.len / 16, stride = (u64)gridDim.x * blockDim.x;
  const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  for (u64 i = t; i < nv; i += stride) {
    uint4 d[K];
#pragma unroll
    for (int s = 0; s < K; s++) d[s] = ld(p.src[s], i);
    uint4 P = d[K - 1], Q = d[K - 1];
#pragma unroll
    for (int s = K - 2; s >= 0; s--) { P = x4(P, d[s]); Q = x4(xt4(Q), d[s]); }
    st(p.dst[0], i, P);
    st(p.dst[1], i, Q);
  }
  for (u64 b = nv * 16 + t; b < p.len; b += stride) {
    u8 P = 0, Q = 0;
    for (int s = K - 1; s >= 0; s--) {
      u8 d = ((const u8*)p.src[s])[b];
      P ^= d; Q = gmul(Q, 2) ^ d;
    }
    ((u8*)p.dst[0])[b] = P;
    ((u8*)p.dst[1])[b] = Q;
  }
}
"#;

const MATRIX_HEAD: &str = r#"
// 8x8 bit transpose inside each byte lane across the 8 words: afterwards w[b] holds bit b of the
// 32 bytes (bit plane b). It is an involution, so the same function turns planes back into bytes.
__device__ __forceinline__ void transpose8(u32 w[8]) {
#pragma unroll
  for (int i = 0; i < 4; i++) { u32 t = ((w[i] >> 4) ^ w[i + 4]) & 0x0f0f0f0fu; w[i + 4] ^= t; w[i] ^= t << 4; }
#pragma unroll
  for (int i = 0; i < 8; i++) if (!(i & 2)) { u32 t = ((w[i] >> 2) ^ w[i + 2]) & 0x33333333u; w[i + 2] ^= t; w[i] ^= t << 2; }
#pragma unroll
  for (int i = 0; i < 8; i += 2) { u32 t = ((w[i] >> 1) ^ w[i + 1]) & 0x55555555u; w[i + 1] ^= t; w[i] ^= t << 1; }
}
// A unit of 32 bytes per source: uint4 number u and u + h (both halves coalesced across a warp).
__device__ __forceinline__ void load32(u64 base, u64 u, u64 h, u32 w[8]) {
  uint4 a = ld(base, u), b = ld(base, u + h);
  w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w; w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}
__device__ __forceinline__ void store32(u64 base, u64 u, u64 h, const u32 w[8]) {
  st(base, u, make_uint4(w[0], w[1], w[2], w[3]));
  st(base, u + h, make_uint4(w[4], w[5], w[6], w[7]));
}
extern "C" __global__ void __launch_bounds__(256) tessera_matrix(const Params p) {
  const u64 h = p.len / 32, stride = (u64)gridDim.x * blockDim.x;
  const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  for (u64 u = t; u < h; u += stride) {
#define ZERO8 {0, 0, 0, 0, 0, 0, 0, 0}
    u32 a0[8] = ZERO8;
#if M > 1
    u32 a1[8] = ZERO8;
#endif
#if M > 2
    u32 a2[8] = ZERO8;
#endif
#if M > 3
    u32 a3[8] = ZERO8;
#endif
#if M > 4
    u32 a4[8] = ZERO8;
#endif
#if M > 5
    u32 a5[8] = ZERO8;
#endif
#if M > 6
    u32 a6[8] = ZERO8;
#endif
#if M > 7
    u32 a7[8] = ZERO8;
#endif
"#;

const MATRIX_TAIL: &str = r#"
  }
  for (u64 b = h * 32 + t; b < p.len; b += stride) {
    for (int j = 0; j < M; j++) {
      u8 acc = 0;
      for (int s = 0; s < K; s++) acc ^= gmul(COEF[j * K + s], ((const u8*)p.src[s])[b]);
      ((u8*)p.dst[j])[b] = acc;
    }
  }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The plane equations multiply every byte by c exactly like the CPU field.
    #[test]
    fn plane_terms_multiply() {
        for c in 0..=255u8 {
            let t = plane_terms(c);
            for x in 0..=255u8 {
                let mut y = 0u8;
                for (r, terms) in t.iter().enumerate() {
                    let bit = terms.iter().fold(0, |a, &i| a ^ (x >> i & 1));
                    y |= bit << r;
                }
                assert_eq!(y, gf::mul(c, x), "c={c} x={x}");
            }
        }
    }

    /// The 8x8 transpose of the kernel, mirrored in Rust: planes are bit b of each byte, and the
    /// transform is its own inverse.
    #[test]
    fn transpose_is_bit_planes() {
        fn transpose8(w: &mut [u32; 8]) {
            for i in 0..4 {
                let t = ((w[i] >> 4) ^ w[i + 4]) & 0x0f0f_0f0f;
                w[i + 4] ^= t;
                w[i] ^= t << 4;
            }
            for i in (0..8).filter(|i| i & 2 == 0) {
                let t = ((w[i] >> 2) ^ w[i + 2]) & 0x3333_3333;
                w[i + 2] ^= t;
                w[i] ^= t << 2;
            }
            for i in (0..8).step_by(2) {
                let t = ((w[i] >> 1) ^ w[i + 1]) & 0x5555_5555;
                w[i + 1] ^= t;
                w[i] ^= t << 1;
            }
        }
        let mut w = [0u32; 8];
        let mut x = 0x9e37_79b9u32;
        for v in w.iter_mut() {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = x;
        }
        let orig = w;
        transpose8(&mut w);
        for (b, plane) in w.iter().enumerate() {
            for lane in 0..4 {
                for (j, word) in orig.iter().enumerate() {
                    let byte = (word >> (8 * lane)) as u8;
                    let bit = plane >> (8 * lane + j) & 1;
                    assert_eq!(bit as u8, byte >> b & 1);
                }
            }
        }
        transpose8(&mut w);
        assert_eq!(w, orig);
    }

    #[test]
    fn source_has_coefficients_and_checks_shape() {
        let job = Job::Matrix {
            k: 2,
            m: 1,
            rows: vec![1, 2],
        };
        job.check().expect("valid shape");
        let src = job.source();
        assert!(src.contains("#define K 2"));
        assert!(src.contains("COEF[M * K] = {1,2}"));
        assert!(
            Job::Matrix {
                k: 2,
                m: 1,
                rows: vec![1]
            }
            .check()
            .is_err()
        );
        assert!(Job::Xor { k: 33 }.check().is_err());
        assert_ne!(Job::Pq { k: 3 }.key(), Job::Pq { k: 4 }.key());
    }
}
