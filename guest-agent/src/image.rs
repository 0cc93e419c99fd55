//! `cuModuleLoadData` gets a pointer without a size. The size follows from the image kind:
//! ELF cubin (section/program header tables end), fatbin (header + payload size), else PTX text
//! (NUL-terminated).

/// Length of the image at `p`, reading only as much as its headers say.
///
/// # Safety
/// `p` must point to a valid module image as the CUDA driver API requires.
pub unsafe fn image_len(p: *const u8) -> usize {
    // SAFETY: every image kind is at least 4 bytes long (a PTX string of fewer bytes ends with
    // its NUL inside them, which we check byte by byte first).
    unsafe {
        for i in 0..4 {
            if *p.add(i) == 0 {
                return i;
            }
        }
        let head = std::slice::from_raw_parts(p, 4);
        if head == b"\x7fELF" {
            let h = std::slice::from_raw_parts(p, 64);
            return elf64_len(h);
        }
        if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == FATBIN_MAGIC {
            let h = std::slice::from_raw_parts(p, 16);
            return fatbin_len(h);
        }
        libc::strlen(p.cast())
    }
}

pub const FATBIN_MAGIC: u32 = 0xba55_ed50;

/// Size of an ELF64 file from its header: the furthest end of the section and program header
/// tables (cubins place the section table last).
pub fn elf64_len(h: &[u8]) -> usize {
    let r16 = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]) as u64;
    let r64 = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let ph_end = r64(0x20).saturating_add(r16(0x36).saturating_mul(r16(0x38)));
    let sh_end = r64(0x28).saturating_add(r16(0x3a).saturating_mul(r16(0x3c)));
    ph_end.max(sh_end).max(64) as usize
}

/// Fatbin: u32 magic, u16 version, u16 header size, u64 payload size.
pub fn fatbin_len(h: &[u8]) -> usize {
    let header = u16::from_le_bytes([h[6], h[7]]) as u64;
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[8..16]);
    header.saturating_add(u64::from_le_bytes(b)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_is_nul_terminated() {
        let ptx = b".version 8.0\n.target sm_90\n\0garbage";
        // SAFETY: NUL-terminated buffer.
        assert_eq!(unsafe { image_len(ptx.as_ptr()) }, 27);
        // SAFETY: as above.
        assert_eq!(unsafe { image_len(c"ab".as_ptr().cast()) }, 2);
    }

    #[test]
    fn fatbin_and_elf_sizes_come_from_headers() {
        let mut f = vec![0u8; 16];
        f[..4].copy_from_slice(&FATBIN_MAGIC.to_le_bytes());
        f[6..8].copy_from_slice(&16u16.to_le_bytes());
        f[8..16].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(fatbin_len(&f), 1016);
        // SAFETY: header-sized buffer; only the header is read.
        assert_eq!(unsafe { image_len(f.as_ptr()) }, 1016);

        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[0x28..0x30].copy_from_slice(&5000u64.to_le_bytes()); // e_shoff
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        e[0x3c..0x3e].copy_from_slice(&10u16.to_le_bytes()); // e_shnum
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(elf64_len(&e), 5640);
    }
}
