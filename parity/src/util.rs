//! Small helpers shared by tests, the benchmark and the CLI.

/// A heap buffer whose usable part starts at a chosen offset from a 64-byte boundary
/// (ISA-L wants 32/64-byte aligned vectors; property tests want deliberately unaligned ones).
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes starting `misalign` bytes after a 64-byte boundary.
    pub fn new(len: usize, misalign: usize) -> AlignedBuf {
        let raw = vec![0u8; len + 64 + misalign];
        let addr = raw.as_ptr() as usize;
        let start = (64 - addr % 64) % 64 + misalign;
        AlignedBuf { raw, start, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Deterministic pseudo-random bytes (SplitMix64): seeded test and benchmark data without a blob.
pub fn fill_seeded(buf: &mut [u8], seed: u64) {
    let mut s = seed;
    for chunk in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// One MiB of the `tessera-raid pattern` payload: MiB number `mib` of the stream for `seed` (each MiB
/// has its own SplitMix64 seed, so any slice can be regenerated alone). `buf` is at most 1 MiB.
pub fn pattern_mib(seed: u64, mib: u64, buf: &mut [u8]) {
    fill_seeded(buf, seed ^ mib.wrapping_mul(0x9e37_79b9));
}
