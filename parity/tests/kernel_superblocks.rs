//! Superblocks written by the real kernel/mdadm in `make e2e-md` (4 KiB each, captured from the lane's
//! members into tests/fixtures). The expected values come from the guest script's `mdadm --create`
//! arguments and the kernel's array size (`blockdev --getsize64` / data disks), not from the parser.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::io::{Seek, SeekFrom, Write};
use tessera_parity::md::examine;

const MEMBER: u64 = 16 << 20; // the lane's 16 MiB slices

struct Case {
    file: &'static str,
    at: u64,
    version: &'static str,
    level: i32,
    layout: u32,
    chunk: u64,
    raid_disks: u32,
    role: u32,
    data_size: u64,
}

const CASES: &[Case] = &[
    // r5-ls-64k-1.2: array 47185920 bytes over 3 data disks
    Case {
        file: "sb-1.2-r5-ls-64k-role1.bin",
        at: 4096,
        version: "1.2",
        level: 5,
        layout: 2,
        chunk: 65536,
        raid_disks: 4,
        role: 1,
        data_size: 47185920 / 3,
    },
    // r6-la-128k-1.1: array 47185920 bytes over 3 data disks
    Case {
        file: "sb-1.1-r6-la-128k-role2.bin",
        at: 0,
        version: "1.1",
        level: 6,
        layout: 0,
        chunk: 131072,
        raid_disks: 5,
        role: 2,
        data_size: 47185920 / 3,
    },
    // r5-ra-128k-1.0: array 49938432 bytes over 3 data disks; 1.0 sits at (size - 8 KiB) & ~4 KiB
    Case {
        file: "sb-1.0-r5-ra-128k-role3.bin",
        at: MEMBER - 8192,
        version: "1.0",
        level: 5,
        layout: 1,
        chunk: 131072,
        raid_disks: 4,
        role: 3,
        data_size: 49938432 / 3,
    },
    // r5-pf-64k-0.90: array 50135040 bytes over 3 data disks; 0.90 sits in the last 64 KiB
    Case {
        file: "sb-0.90-r5-pf-64k-role0.bin",
        at: MEMBER - 65536,
        version: "0.90",
        level: 5,
        layout: 4,
        chunk: 65536,
        raid_disks: 4,
        role: 0,
        data_size: 50135040 / 3,
    },
];

fn member_with(sb: &[u8], at: u64) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(MEMBER).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(sb).unwrap();
    f
}

#[test]
fn kernel_written_superblocks_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for c in CASES {
        let sb = std::fs::read(dir.join(c.file)).unwrap();
        let f = member_with(&sb, c.at);
        let r = examine(&[f.path().to_path_buf()]);
        let got = r[0]
            .superblock
            .as_ref()
            .unwrap_or_else(|| panic!("{}: {:?}", c.file, r[0].error));
        assert_eq!(got.version, c.version, "{}", c.file);
        assert_eq!(got.sb_offset, c.at, "{}", c.file);
        assert_eq!(
            (got.level, got.layout, got.chunk_bytes, got.raid_disks),
            (c.level, c.layout, c.chunk, c.raid_disks),
            "{}",
            c.file
        );
        assert_eq!(got.role, Some(c.role), "{}", c.file);
        assert_eq!(got.data_size, c.data_size, "{}", c.file);
        assert!(got.data_offset + got.data_size <= MEMBER, "{}", c.file);
        // A broken magic is not a superblock.
        let mut bad = sb.clone();
        bad[0] ^= 0xff;
        let f = member_with(&bad, c.at);
        assert!(
            examine(&[f.path().to_path_buf()])[0].error.is_some(),
            "{}",
            c.file
        );
    }
}
