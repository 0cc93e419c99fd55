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
//!   per-byte lookups); XORs of planes shared by several equations of a source are computed
//!   once. A [`Plan`] shapes the launch: sources staged by cp.async or preloaded, the transpose
//!   form, programmatic dependent launch, or the sources split among warp groups.

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

    /// Complete CUDA C source of this job's kernel with the default plan (one thread group).
    pub fn source(&self) -> String {
        self.source_with(Plan::default())
    }

    /// Complete CUDA C source of this job's kernel for `plan`. A matrix job with
    /// `plan.split > 1` gets the split kernel ([`Plan`]); other jobs ignore the split.
    pub fn source_with(&self, plan: Plan) -> String {
        if let Job::Matrix { k, m, rows } = self
            && plan.split > 1
        {
            return matrix_split_source(*k, *m, rows, plan);
        }
        let mut s = String::from(PRELUDE);
        match self {
            Job::Xor { k } => {
                s += &format!("#define K {k}\n{}", pdl_defines(plan));
                s += PDL_FUNCS;
                s += XOR;
            }
            Job::Pq { k } => {
                s += &format!("#define K {k}\n{}", pdl_defines(plan));
                s += PDL_FUNCS;
                s += PQ;
            }
            Job::Matrix { k, m, rows } => {
                s += &format!(
                    "#define K {k}\n#define M {m}\n#define BX {}\n{}",
                    plan.block_x(*k, *m),
                    pdl_defines(plan)
                );
                s += "__device__ const unsigned char COEF[M * K] = {";
                s += &rows
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                s += "};\n";
                s += PDL_FUNCS;
                s += MATRIX_FUNCS;
                s += MATRIX_HEAD;
                s += &source_terms(*k, *m, rows, 0..*k, plan);
                let t = if plan.select {
                    "transpose8s"
                } else {
                    "transpose8"
                };
                for j in 0..*m {
                    s += &format!("    {t}(a{j}, km); store32(p.dst[{j}], u, h, a{j});\n");
                }
                s += MATRIX_TAIL;
            }
        }
        s
    }
}

/// How a launch is shaped. `split` > 1 (matrix jobs only): the k sources are divided into
/// `split` groups handled by different warps of a block (`threadIdx.y` = group), each group
/// accumulates its partial products for all m outputs in bit-plane form, the partials meet in
/// shared memory, and output j is finished (summed, transposed back, stored) by group j % split.
/// Same arithmetic as one group, spread over `split` times more threads: at small shards (1 MiB
/// = 32 K units of 32 bytes) the single-group kernel has too few warps per SM to hide latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct Plan {
    /// Source groups per unit (1 = the plain kernel).
    pub split: usize,
    /// Matrix jobs: issue the loads of all of the group's sources before any arithmetic (more
    /// bytes in flight per warp, more registers).
    pub preload: bool,
    /// Matrix jobs: the bit transpose as selects, one LOP3 per word and half-swap, with the
    /// shifts done as multiplies (FMA pipe) instead of the XOR-swap form (integer pipe only).
    pub select: bool,
    /// Matrix jobs with preload: a branch on all loaded words keeps ptxas from sinking the
    /// loads into the arithmetic (it does so to save registers).
    pub fence: bool,
    /// Matrix jobs, one group: sources staged in shared memory by cp.async, one commit group
    /// per source, each waited for just before its arithmetic.
    pub stage: bool,
    /// Threads per block of a one-group kernel (0 = the default).
    pub block: usize,
    /// Programmatic dependent launch (sm_90+): a launch right after another kernel of the
    /// stream is set up while that one drains, and waits for it in `griddepcontrol.wait` before
    /// touching memory.
    pub pdl: bool,
    /// With `pdl`: release the next launch as soon as this one has started (its blocks may then
    /// be placed on the SMs while this one runs; they still wait for it to finish before
    /// touching memory) instead of at the end.
    pub early: bool,
}

impl Plan {
    /// One group, no preload, XOR-swap transpose: the original kernel.
    pub const PLAIN: Plan = Plan {
        split: 1,
        preload: false,
        select: false,
        fence: false,
        stage: false,
        block: 0,
        pdl: false,
        early: false,
    };

    /// Threads per group (blockDim.x): the shared partials (split x m x 8 words per thread) or
    /// the staged sources must fit shared memory, and a block has at most 256 threads.
    pub fn block_x(&self, k: usize, m: usize) -> usize {
        let g = self.split.max(1);
        if g == 1 {
            let bx = if self.block > 0 {
                self.block
            } else if self.stage {
                128
            } else {
                256
            };
            if self.stage {
                // the staged sources (k x 32 bytes per thread) must fit 48 KiB
                return bx.min((49152 / (k * 32)) / 32 * 32).clamp(32, 256);
            }
            return bx.clamp(32, 256);
        }
        ((8192 / (g * m * 8)) / 32 * 32).clamp(32, (256 / g) / 32 * 32)
    }

    /// Largest split the kernel supports (shared partials stay within 48 KiB).
    pub const MAX_SPLIT: usize = 4;

    /// The plan for a launch of `job` over `len` bytes per shard on a GPU of `sms` SMs. Matrix
    /// jobs: up to ~4 MiB per shard on an H200 (units < sms x 1024, at most about one unit per
    /// thread) the sources are staged by cp.async and each is used as soon as it lands; above
    /// that, jobs of 3 or more outputs preload (fenced) and those of 1-2 outputs keep the
    /// plain preload; the first two with select transposes and programmatic dependent launch.
    /// Measured on an H200 (`bench --gpu [--gpu-explore]`, 2026-11-22), RS 10+4 encode vs d2d:
    /// 1 MiB 0.64-0.76 (split 2, before) -> 0.87-0.95, 4 MiB 0.79 -> 1.04, 64 MiB 0.90 -> 0.98;
    /// 10+2 decode at 1 MiB 0.80-0.86 -> 0.87-1.04. P+Q and XOR run the plain kernel with
    /// programmatic dependent launch (the next launch is set up while this one drains): at
    /// 1 MiB, P+Q 16+2 0.94 -> 1.17-1.23, 8+2 1.02 -> 1.23-1.29, XOR 8+1 0.95-1.07 -> 1.19-1.23
    /// (GPU time in a CUDA graph 3.72 -> 3.47 us against 3.44 us for the copy, 16+2); released
    /// at the start instead (`early`) it measured the same or worse.
    pub fn choose(job: &Job, len: usize, sms: u32) -> Plan {
        let units = len / 32;
        match job {
            Job::Matrix { .. } if units < sms as usize * 1024 => Plan {
                stage: true,
                select: true,
                pdl: true,
                ..Plan::PLAIN
            },
            Job::Matrix { m, .. } if *m >= 3 => Plan {
                preload: true,
                fence: true,
                select: true,
                pdl: true,
                ..Plan::PLAIN
            },
            Job::Matrix { .. } => Plan {
                preload: true,
                ..Plan::PLAIN
            },
            Job::Pq { .. } | Job::Xor { .. } => Plan {
                pdl: true,
                ..Plan::PLAIN
            },
        }
    }

    /// Sources of group `g` when k sources are split `split` ways (balanced, in order).
    pub fn group_range(&self, k: usize, g: usize) -> std::ops::Range<usize> {
        let n = self.split.max(1);
        (g * k / n)..((g + 1) * k / n)
    }
}

/// The plane-XOR lines of the sources `range` into the accumulators a0.. of all m outputs.
fn source_terms(
    k: usize,
    m: usize,
    rows: &[u8],
    range: std::ops::Range<usize>,
    plan: Plan,
) -> String {
    let mut s = String::new();
    let t = if plan.select {
        "transpose8s"
    } else {
        "transpose8"
    };
    if plan.stage && plan.split <= 1 {
        s += &format!("    __shared__ uint4 stg[{k}][2][BX];\n");
        for i in range.clone() {
            s += &format!(
                "    cpa(&stg[{i}][0][threadIdx.x], p.src[{i}], u); cpa(&stg[{i}][1][threadIdx.x], p.src[{i}], u + h); commit();\n"
            );
        }
        let last = range.end - 1;
        for i in range {
            s += &format!(
                "    {{ wait<{}>(); u32 w[8]; unstage(stg[{i}][0][threadIdx.x], stg[{i}][1][threadIdx.x], w); {t}(w, km);\n",
                last - i
            );
            s += &source_products(&column(rows, k, m, i), "w");
            s += "    }\n";
        }
        return s;
    }
    if plan.preload {
        for i in range.clone() {
            s += &format!("    u32 w{i}[8]; load32(p.src[{i}], u, h, w{i});\n");
        }
        if plan.fence {
            // never taken (len < 2^63), so the barriers of the split kernel after it are safe
            let all: Vec<String> = range
                .clone()
                .map(|i| format!("w{i}[0] ^ w{i}[4]"))
                .collect();
            s += &format!(
                "    {{ const u32 d = (u32)(p.len >> 63) & ({}); if (d) {{ ((u32*)p.dst[0])[0] = d; return; }} }}\n",
                all.join(" ^ ")
            );
        }
    }
    for i in range {
        if plan.preload {
            s += &format!("    {{ u32* w = w{i}; {t}(w, km);\n");
        } else {
            s += &format!("    {{ u32 w[8]; load32(p.src[{i}], u, h, w); {t}(w, km);\n");
        }
        s += &source_products(&column(rows, k, m, i), "w");
        s += "    }\n";
    }
    s
}

/// The split matrix kernel (see [`Plan`]).
fn matrix_split_source(k: usize, m: usize, rows: &[u8], plan: Plan) -> String {
    let g = plan.split.min(k).max(1);
    let plan = Plan { split: g, ..plan };
    let t = if plan.select {
        "transpose8s"
    } else {
        "transpose8"
    };
    let bx = plan.block_x(k, m);
    let mut s = String::from(PRELUDE);
    s += &format!(
        "#define K {k}\n#define M {m}\n#define G {g}\n#define BX {bx}\n{}",
        pdl_defines(plan)
    );
    s += "__device__ const unsigned char COEF[M * K] = {";
    s += &rows
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    s += "};\n";
    s += PDL_FUNCS;
    s += MATRIX_FUNCS;
    s += SPLIT_HEAD;
    for j in 0..m {
        s += &format!("    u32 a{j}[8] = {{0, 0, 0, 0, 0, 0, 0, 0}};\n");
    }
    s += "    if (ok) {\n";
    for gi in 0..g {
        let r = plan.group_range(k, gi);
        s += &format!("    if (gy == {gi}) {{\n");
        s += &source_terms(k, m, rows, r, plan);
        s += "    }\n";
    }
    s += "    }\n";
    // Partials of the outputs this group does not own go to shared memory.
    for j in 0..m {
        s += &format!(
            "    if (gy != {o}) {{\n#pragma unroll\n      for (int r = 0; r < 8; r++) part[gy][{j}][r][tx] = a{j}[r];\n    }}\n",
            o = j % g
        );
    }
    s += "    __syncthreads();\n";
    for j in 0..m {
        s += &format!(
            "    if (gy == {o}) {{\n      for (int q = 0; q < G; q++) if (q != {o}) {{\n#pragma unroll\n        for (int r = 0; r < 8; r++) a{j}[r] ^= part[q][{j}][r][tx];\n      }}\n      if (ok) {{ {t}(a{j}, km); store32(p.dst[{j}], u, h, a{j}); }}\n    }}\n",
            o = j % g
        );
    }
    s += "    __syncthreads();\n  }\n";
    s += SPLIT_TAIL;
    s
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

/// The m coefficients of source i (column i of the m x k matrix).
fn column(rows: &[u8], k: usize, m: usize, i: usize) -> Vec<u8> {
    (0..m).map(|j| rows[j * k + i]).collect()
}

/// Shared terms and equations of one source (see [`source_equations`]).
type Equations = (Vec<Vec<usize>>, Vec<(usize, usize, Vec<usize>)>);

/// One source's plane equations for all outputs (`(j, r, symbols)`: `a{j}[r] ^=` the XOR of
/// the symbols) and the shared terms they use: symbols 0..8 are the input planes, 8 + n is
/// shared term n (the XOR of its two or three symbols). Greedy: the pair or triple that
/// occurs in the most equations becomes a shared term while that saves XORs (each equation
/// costs about half a LOP3 per symbol, a shared term one LOP3).
fn source_equations(coefs: &[u8]) -> Equations {
    let mut eqs: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    for (j, &c) in coefs.iter().enumerate() {
        for (r, t) in plane_terms(c).into_iter().enumerate() {
            if !t.is_empty() {
                eqs.push((j, r, t));
            }
        }
    }
    let mut shared: Vec<Vec<usize>> = Vec::new();
    loop {
        let mut uses: std::collections::BTreeMap<Vec<usize>, usize> = Default::default();
        for (_, _, t) in &eqs {
            for a in 0..t.len() {
                for b in a + 1..t.len() {
                    *uses.entry(vec![t[a], t[b]]).or_default() += 1;
                    for c in b + 1..t.len() {
                        *uses.entry(vec![t[a], t[b], t[c]]).or_default() += 1;
                    }
                }
            }
        }
        // saving in half-LOP3 units: (size - 1) per use, minus 2 for the shared term itself
        let best = uses
            .into_iter()
            .map(|(c, n)| ((c.len() - 1) * n, c))
            .filter(|(g, _)| *g > 2)
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let Some((_, c)) = best else { break };
        let id = 8 + shared.len();
        for (_, _, t) in eqs.iter_mut() {
            if c.iter().all(|x| t.contains(x)) {
                t.retain(|x| !c.contains(x));
                t.push(id);
            }
        }
        shared.push(c);
    }
    (shared, eqs)
}

/// `a{j}[r] ^= ...` lines of one source's products (with its shared terms) on planes `input`.
fn source_products(coefs: &[u8], input: &str) -> String {
    let (shared, eqs) = source_equations(coefs);
    let sym = |x: usize| {
        if x < 8 {
            format!("{input}[{x}]")
        } else {
            format!("x{}", x - 8)
        }
    };
    let mut s = String::new();
    for (n, c) in shared.iter().enumerate() {
        let rhs: Vec<String> = c.iter().map(|&x| sym(x)).collect();
        s += &format!("      const u32 x{n} = {};\n", rhs.join(" ^ "));
    }
    for (j, r, t) in &eqs {
        let rhs: Vec<String> = t.iter().map(|&x| sym(x)).collect();
        s += &format!("      a{j}[{r}] ^= {};\n", rhs.join(" ^ "));
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

const PDL_FUNCS: &str = r#"
// Programmatic dependent launch (no-ops without the launch attribute or before sm_90): wait for
// the previous kernel of the stream before any memory access; release the next one at the end
// (EARLY: right after the wait; released early, matrix launches ran ahead of their turn and
// crowded the SMs: measured slower). The next kernel's own wait still covers this one's
// completion and memory, wherever the release is.
__device__ __forceinline__ void pdl_start() {
#if PDL && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#if EARLY
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
#endif
}
__device__ __forceinline__ void pdl_end() {
#if PDL && !EARLY && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
"#;

/// `#define PDL` / `EARLY` lines of a plan.
fn pdl_defines(plan: Plan) -> String {
    format!(
        "#define PDL {}\n#define EARLY {}\n",
        u8::from(plan.pdl),
        u8::from(plan.pdl && plan.early)
    )
}

const XOR: &str = r#"
extern "C" __global__ void __launch_bounds__(256) tessera_xor(const Params p) {
  pdl_start();
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
  pdl_end();
}
"#;

const PQ: &str = r#"
extern "C" __global__ void __launch_bounds__(256) tessera_pq(const Params p) {
  pdl_start();
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
  pdl_end();
}
"#;

const MATRIX_FUNCS: &str = r#"
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
// Shift multipliers kept opaque (z is 0 for any real length) so that ptxas emits IMAD / IMAD.HI
// (FMA pipe) for the shifts of transpose8s instead of SHF on the busier integer pipe.
struct Mul { u32 l4, l2, l1, r4, r2, r1; };
__device__ __forceinline__ Mul muls(u64 len) {
  const u32 z = (u32)(len >> 63);
  Mul m; m.l4 = 16u + z; m.l2 = 4u + z; m.l1 = 2u + z; m.r4 = (1u << 28) + z; m.r2 = (1u << 30) + z; m.r1 = (1u << 31) + z;
  return m;
}
// (p & MK) | (q & ~MK) as one LOP3 (ptxas splits the C form in two).
template <u32 MK> __device__ __forceinline__ u32 sel(u32 p, u32 q) {
  u32 d;
  asm("lop3.b32 %0, %1, %2, %3, 0xE4;" : "=r"(d) : "r"(p), "r"(q), "n"(MK));
  return d;
}
template <u32 MK> __device__ __forceinline__ void swap2(u32& a, u32& b, u32 l, u32 r) {
  const u32 x = a, y = b;
  a = sel<MK>(x, y * l);
  b = sel<MK>(__umulhi(x, r), y);
}
// The same transpose as selects: per half-swap two multiplies (the shifts) and two LOP3.
__device__ __forceinline__ void transpose8s(u32 w[8], const Mul& k) {
#pragma unroll
  for (int i = 0; i < 4; i++) swap2<0x0f0f0f0fu>(w[i], w[i + 4], k.l4, k.r4);
#pragma unroll
  for (int i = 0; i < 8; i++) if (!(i & 2)) swap2<0x33333333u>(w[i], w[i + 2], k.l2, k.r2);
#pragma unroll
  for (int i = 0; i < 8; i += 2) swap2<0x55555555u>(w[i], w[i + 1], k.l1, k.r1);
}
__device__ __forceinline__ void transpose8(u32 w[8], const Mul&) { transpose8(w); }
// A unit of 32 bytes per source: uint4 number u and u + h (both halves coalesced across a warp).
__device__ __forceinline__ void load32(u64 base, u64 u, u64 h, u32 w[8]) {
  uint4 a = ld(base, u), b = ld(base, u + h);
  w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w; w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}
// cp.async staging (sm_80+): 16 bytes of uint4 number i of base into shared memory.
__device__ __forceinline__ void cpa(uint4* d, u64 base, u64 i) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"((u32)__cvta_generic_to_shared(d)), "l"(((const uint4*)base) + i));
#else
  *d = ld(base, i);
#endif
}
__device__ __forceinline__ void commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}
__device__ __forceinline__ void unstage(uint4 a, uint4 b, u32 w[8]) {
  w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w; w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}
__device__ __forceinline__ void store32(u64 base, u64 u, u64 h, const u32 w[8]) {
  st(base, u, make_uint4(w[0], w[1], w[2], w[3]));
  st(base, u + h, make_uint4(w[4], w[5], w[6], w[7]));
}
"#;

const MATRIX_HEAD: &str = r#"
extern "C" __global__ void __launch_bounds__(256) tessera_matrix(const Params p) {
  pdl_start();
  const Mul km = muls(p.len);
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
  pdl_end();
}
"#;

// Block (BX, G): threadIdx.y is the source group (warp-uniform, so its branches do not diverge).
// Every thread of a block runs the same number of iterations (the loop bound is block-uniform)
// because of the barriers.
const SPLIT_HEAD: &str = r#"
extern "C" __global__ void __launch_bounds__(BX * G) tessera_matrix(const Params p) {
  __shared__ u32 part[G][M][8][BX];
  pdl_start();
  const Mul km = muls(p.len);
  const u64 h = p.len / 32;
  const int tx = threadIdx.x, gy = threadIdx.y;
  for (u64 base = (u64)blockIdx.x * BX; base < h; base += (u64)gridDim.x * BX) {
    const u64 u = base + tx;
    const bool ok = u < h;
"#;

const SPLIT_TAIL: &str = r#"
  if (gy == 0) {
    for (u64 b = h * 32 + (u64)blockIdx.x * BX + tx; b < p.len; b += (u64)gridDim.x * BX) {
      for (int j = 0; j < M; j++) {
        u8 acc = 0;
        for (int s = 0; s < K; s++) acc ^= gmul(COEF[j * K + s], ((const u8*)p.src[s])[b]);
        ((u8*)p.dst[j])[b] = acc;
      }
    }
  }
  pdl_end();
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

    /// The shared-term equations of a source expand to the plane equations of its coefficients.
    #[test]
    fn shared_terms_expand_to_plane_equations() {
        let mut x = 7u32;
        for m in 1..=8usize {
            for _ in 0..40 {
                let coefs: Vec<u8> = (0..m)
                    .map(|_| {
                        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (x >> 24) as u8
                    })
                    .collect();
                let (shared, eqs) = source_equations(&coefs);
                // every symbol as a bit set of planes
                let mut val: Vec<u8> = (0..8).map(|b| 1u8 << b).collect();
                for c in &shared {
                    assert!((2..=3).contains(&c.len()));
                    val.push(c.iter().fold(0, |a, &s| a ^ val[s]));
                }
                let mut got = vec![[0u8; 8]; m];
                for (j, r, t) in &eqs {
                    got[*j][*r] ^= t.iter().fold(0, |a, &s| a ^ val[s]);
                }
                for (j, &c) in coefs.iter().enumerate() {
                    for (r, terms) in plane_terms(c).iter().enumerate() {
                        let want = terms.iter().fold(0u8, |a, &b| a ^ (1 << b));
                        assert_eq!(got[j][r], want, "c={c} r={r}");
                    }
                }
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
        // the select form of the kernel (transpose8s) computes the same permutation
        fn transpose8s(w: &mut [u32; 8]) {
            for (s, m, pairs) in [
                (
                    4u32,
                    0x0f0f_0f0fu32,
                    [(0usize, 4usize), (1, 5), (2, 6), (3, 7)],
                ),
                (2, 0x3333_3333, [(0, 2), (1, 3), (4, 6), (5, 7)]),
                (1, 0x5555_5555, [(0, 1), (2, 3), (4, 5), (6, 7)]),
            ] {
                for (i, j) in pairs {
                    let (a, b) = (w[i], w[j]);
                    w[i] = (a & m) | ((b << s) & !m);
                    w[j] = ((a >> s) & m) | (b & !m);
                }
            }
        }
        let mut x = orig;
        transpose8(&mut w);
        transpose8s(&mut x);
        assert_eq!(w, x);
    }

    /// Split plans: every source in exactly one group, each group's loads in its own branch,
    /// every output finished by one group; the shared partials fit 32 KiB.
    #[test]
    fn split_plans_cover_every_source_once() {
        for k in 1..=32usize {
            for m in 1..=8usize {
                for split in 1..=Plan::MAX_SPLIT {
                    let plan = Plan {
                        split,
                        ..Plan::PLAIN
                    };
                    let mut seen = vec![0; k];
                    for g in 0..split {
                        for i in plan.group_range(k, g) {
                            seen[i] += 1;
                        }
                    }
                    assert!(seen.iter().all(|&c| c == 1), "k={k} split={split}");
                    let bx = plan.block_x(k, m);
                    assert!(
                        bx.is_multiple_of(32) && bx * split <= 256,
                        "m={m} split={split} bx={bx}"
                    );
                    if split > 1 {
                        assert!(
                            split * m * 8 * bx * 4 <= 32 << 10,
                            "k={k} m={m} split={split}"
                        );
                    }
                }
            }
        }
        let rows: Vec<u8> = (1..=40).collect();
        let job = Job::Matrix { k: 10, m: 4, rows };
        let src = job.source_with(Plan {
            split: 3,
            preload: true,
            select: true,
            ..Plan::PLAIN
        });
        assert!(src.contains("transpose8s(w, km)") && !src.contains("transpose8(w, km)"));
        for i in 0..10 {
            assert_eq!(
                src.matches(&format!("load32(p.src[{i}],")).count(),
                1,
                "source {i}"
            );
        }
        assert!(src.contains("#define G 3") && src.contains("__syncthreads"));
        for j in 0..4 {
            assert_eq!(src.matches(&format!("store32(p.dst[{j}],")).count(), 1);
        }
        // staged sources: one cp.async pair and one wait per source, waited in order
        let st = job.source_with(Plan {
            stage: true,
            select: true,
            pdl: true,
            ..Plan::PLAIN
        });
        for i in 0..10 {
            assert_eq!(st.matches(&format!("cpa(&stg[{i}][0]")).count(), 1);
            assert_eq!(st.matches(&format!("wait<{}>()", 9 - i)).count(), 1);
        }
        assert!(st.contains("#define PDL 1") && st.contains("#define BX 128"));
        let fenced = job.source_with(Plan {
            preload: true,
            fence: true,
            ..Plan::PLAIN
        });
        assert!(fenced.contains("(u32)(p.len >> 63) & (w0[0] ^ w0[4]"));
        // small matrix jobs stage their sources, large ones preload, other kernels run plain
        assert!(Plan::choose(&job, 1 << 20, 132).stage);
        let big = Plan::choose(&job, 64 << 20, 132);
        assert!(big.preload && big.fence && !big.stage && big.split == 1);
        assert_eq!(Plan::choose(&Job::Pq { k: 16 }, 1 << 20, 132).split, 1);
        // P+Q and XOR launch with programmatic dependent launch, released at the end
        for j in [Job::Pq { k: 16 }, Job::Xor { k: 8 }] {
            let p = Plan::choose(&j, 1 << 20, 132);
            assert!(p.pdl && !p.early);
            let src = j.source_with(p);
            assert!(src.contains("#define PDL 1") && src.contains("#define EARLY 0"));
            assert!(src.contains("  pdl_start();") && src.contains("  pdl_end();"));
        }
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
