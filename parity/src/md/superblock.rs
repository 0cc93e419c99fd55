//! Linux MD superblocks: 0.90 (4 KiB, in the last 64 KiB-aligned 64 KiB of the device, host-endian,
//! little-endian assumed) and 1.x (`struct mdp_superblock_1`, little-endian; 1.0 at the end rounded
//! down to 4 KiB, 1.1 at offset 0, 1.2 at 4 KiB). Field offsets are those of `include/uapi/linux/raid/md_p.h`.

use serde::Serialize;

use crate::error::ParityError;

pub const MD_MAGIC: u32 = 0xa92b_4efc;
const SB_090_RESERVED: u64 = 64 * 1024;
const SB_090_SIZE: usize = 4096;
/// Role of a spare in `dev_roles`.
pub const ROLE_SPARE: u16 = 0xffff;
/// Role of a faulty device in `dev_roles`.
pub const ROLE_FAULTY: u16 = 0xfffe;

/// The superblock facts Tessera needs, whatever the on-disk version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Superblock {
    /// "0.90", "1.0", "1.1" or "1.2".
    pub version: String,
    /// Byte offset of the superblock on the member.
    pub sb_offset: u64,
    pub array_uuid: String,
    pub name: String,
    pub level: i32,
    pub layout: u32,
    pub chunk_bytes: u64,
    pub raid_disks: u32,
    /// Byte offset of the data area on the member.
    pub data_offset: u64,
    /// Bytes of each member used by the array (from `size`).
    pub data_size: u64,
    pub events: u64,
    /// This member's role (slot), `None` for a spare or faulty device.
    pub role: Option<u32>,
    /// Roles of all devices as recorded in this superblock (1.x: `dev_roles`; 0.90: disk descriptors).
    pub dev_roles: Vec<u16>,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    (le32(b, o) as u64) | ((le32(b, o + 4) as u64) << 32)
}
fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn uuid_str(b: &[u8]) -> String {
    // mdadm prints 1.x UUIDs as four 8-hex-digit groups separated by ':'.
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}:{}:{}:{}",
        h[0..4].concat(),
        h[4..8].concat(),
        h[8..12].concat(),
        h[12..16].concat()
    )
}

/// Where each version keeps its superblock on a device of `size` bytes.
pub fn candidate_offsets(size: u64) -> Vec<(&'static str, u64)> {
    let mut v = vec![("1.2", 4096), ("1.1", 0)];
    if size >= 16 * 512 {
        v.push(("1.0", (size - 16 * 512) & !(4096 - 1)));
    }
    if size >= 2 * SB_090_RESERVED {
        v.push(("0.90", (size & !(SB_090_RESERVED - 1)) - SB_090_RESERVED));
    }
    v
}

/// Parses a 1.x superblock (`buf` holds at least 4 KiB from `sb_offset`).
pub fn parse_v1(buf: &[u8], version: &str, sb_offset: u64) -> Result<Superblock, String> {
    if buf.len() < 1024 {
        return Err("short superblock".into());
    }
    if le32(buf, 0) != MD_MAGIC {
        return Err("no md magic".into());
    }
    if le32(buf, 4) != 1 {
        return Err(format!(
            "major version {} at {version} offset",
            le32(buf, 4)
        ));
    }
    let super_offset = le64(buf, 144) * 512;
    if super_offset != sb_offset {
        return Err(format!(
            "super_offset {super_offset} does not match position {sb_offset}"
        ));
    }
    let max_dev = le32(buf, 220) as usize;
    if 256 + 2 * max_dev > buf.len() {
        return Err(format!("max_dev {max_dev} does not fit the superblock"));
    }
    let dev_roles: Vec<u16> = (0..max_dev).map(|i| le16(buf, 256 + 2 * i)).collect();
    let dev_number = le32(buf, 160) as usize;
    let role = dev_roles
        .get(dev_number)
        .copied()
        .filter(|r| *r < 0xff00)
        .map(u32::from);
    let name_raw = &buf[32..64];
    let name =
        String::from_utf8_lossy(&name_raw[..name_raw.iter().position(|&c| c == 0).unwrap_or(32)])
            .into_owned();
    Ok(Superblock {
        version: version.to_string(),
        sb_offset,
        array_uuid: uuid_str(&buf[16..32]),
        name,
        level: le32(buf, 72) as i32,
        layout: le32(buf, 76),
        chunk_bytes: le32(buf, 88) as u64 * 512,
        raid_disks: le32(buf, 92),
        data_offset: le64(buf, 128) * 512,
        data_size: le64(buf, 80) * 512,
        events: le64(buf, 200),
        role,
        dev_roles,
    })
}

/// Parses a 0.90 superblock (`buf` holds the 4 KiB at `sb_offset`).
pub fn parse_v090(buf: &[u8], sb_offset: u64) -> Result<Superblock, String> {
    if buf.len() < SB_090_SIZE {
        return Err("short superblock".into());
    }
    let w = |i: usize| le32(buf, 4 * i);
    if w(0) != MD_MAGIC {
        return Err("no md magic".into());
    }
    if w(1) != 0 || w(2) != 90 {
        return Err(format!("version {}.{}", w(1), w(2)));
    }
    let mut uuid = Vec::with_capacity(16);
    for i in [5, 13, 14, 15] {
        uuid.extend_from_slice(&w(i).to_le_bytes());
    }
    let raid_disks = w(10);
    // Disk descriptors: 27 of 32 words from word 128; this_disk at word 992. Fields: number, major,
    // minor, raid_disk, state.
    let mut dev_roles = Vec::new();
    for d in 0..27usize {
        let base = 128 + 32 * d;
        let state = w(base + 4);
        let faulty = state & 1 != 0;
        let active = state & 2 != 0;
        dev_roles.push(if faulty {
            ROLE_FAULTY
        } else if active {
            w(base + 3) as u16
        } else {
            ROLE_SPARE
        });
    }
    let this_state = w(992 + 4);
    let role = (this_state & 1 == 0 && this_state & 2 != 0).then(|| w(992 + 3));
    Ok(Superblock {
        version: "0.90".into(),
        sb_offset,
        array_uuid: uuid_str(&uuid),
        name: String::new(),
        level: w(7) as i32,
        layout: w(64),
        chunk_bytes: w(65) as u64,
        raid_disks,
        data_offset: 0,
        data_size: w(8) as u64 * 1024,
        events: (w(40) as u64) << 32 | w(39) as u64,
        role,
        dev_roles,
    })
}

/// Finds and parses the superblock of a member, trying every version's position.
pub fn probe(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    size: u64,
) -> Result<Superblock, ParityError> {
    let mut errs = Vec::new();
    let mut buf = vec![0u8; 4096];
    for (ver, off) in candidate_offsets(size) {
        if off + 4096 > size {
            continue;
        }
        read_at(off, &mut buf).map_err(|e| ParityError::Array(format!("read at {off}: {e}")))?;
        if le32(&buf, 0) != MD_MAGIC {
            continue;
        }
        let r = if ver == "0.90" {
            parse_v090(&buf, off)
        } else {
            parse_v1(&buf, ver, off)
        };
        match r {
            Ok(sb) => return Ok(sb),
            Err(e) => errs.push(format!("{ver}: {e}")),
        }
    }
    Err(ParityError::Array(if errs.is_empty() {
        "no md superblock (0.90, 1.0, 1.1, 1.2)".into()
    } else {
        format!("no valid md superblock: {}", errs.join("; "))
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// Builds a 1.x superblock image with the md_p.h field offsets, for the parser tests.
    #[allow(clippy::too_many_arguments)] // mirrors the superblock fields
    pub(crate) fn build_v1(
        sb_offset: u64,
        level: u32,
        layout: u32,
        chunk_sectors: u32,
        raid_disks: u32,
        data_offset_sectors: u64,
        size_sectors: u64,
        dev_number: u32,
        events: u64,
    ) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&MD_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        for (i, x) in b[16..32].iter_mut().enumerate() {
            *x = i as u8 + 1;
        }
        b[32..36].copy_from_slice(b"t:r6");
        b[72..76].copy_from_slice(&level.to_le_bytes());
        b[76..80].copy_from_slice(&layout.to_le_bytes());
        b[80..88].copy_from_slice(&size_sectors.to_le_bytes());
        b[88..92].copy_from_slice(&chunk_sectors.to_le_bytes());
        b[92..96].copy_from_slice(&raid_disks.to_le_bytes());
        b[128..136].copy_from_slice(&data_offset_sectors.to_le_bytes());
        b[144..152].copy_from_slice(&(sb_offset / 512).to_le_bytes());
        b[160..164].copy_from_slice(&dev_number.to_le_bytes());
        b[200..208].copy_from_slice(&events.to_le_bytes());
        b[220..224].copy_from_slice(&raid_disks.to_le_bytes());
        for i in 0..raid_disks as usize {
            b[256 + 2 * i..258 + 2 * i].copy_from_slice(&(i as u16).to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_v1_fields() {
        let b = build_v1(4096, 6, 2, 128, 6, 2048, 100_000, 3, 42);
        let sb = parse_v1(&b, "1.2", 4096).unwrap();
        assert_eq!(
            (sb.level, sb.layout, sb.chunk_bytes, sb.raid_disks),
            (6, 2, 65536, 6)
        );
        assert_eq!(
            (sb.data_offset, sb.data_size, sb.events, sb.role),
            (1 << 20, 100_000 * 512, 42, Some(3))
        );
        assert_eq!(sb.array_uuid, "01020304:05060708:090a0b0c:0d0e0f10");
        assert_eq!(sb.name, "t:r6");
        // Position mismatch (a 1.1 superblock read as 1.2) is rejected.
        assert!(parse_v1(&b, "1.1", 0).is_err());
    }

    #[test]
    fn parses_v090_fields() {
        let mut b = vec![0u8; 4096];
        let mut put = |i: usize, v: u32| b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        put(0, MD_MAGIC);
        put(2, 90);
        put(5, 0x11111111);
        put(7, 5);
        put(8, 65536);
        put(10, 4);
        put(39, 7);
        put(40, 1);
        put(64, 0);
        put(65, 65536);
        for d in 0..4 {
            put(128 + 32 * d + 3, d as u32);
            put(128 + 32 * d + 4, 6);
        }
        put(992 + 3, 2);
        put(992 + 4, 6);
        let sb = parse_v090(&b, 0).unwrap();
        assert_eq!(
            (sb.level, sb.layout, sb.chunk_bytes, sb.raid_disks),
            (5, 0, 65536, 4)
        );
        assert_eq!(
            (sb.events, sb.role, sb.data_size),
            ((1 << 32) | 7, Some(2), 64 << 20)
        );
        assert_eq!(&sb.dev_roles[..4], &[0, 1, 2, 3]);
    }

    #[test]
    fn candidate_positions() {
        let size = 64u64 << 20;
        let c = candidate_offsets(size + 12345);
        assert!(c.contains(&("1.2", 4096)));
        assert!(c.contains(&("1.1", 0)));
        assert!(c.contains(&("1.0", (size + 12345 - 8192) & !4095)));
        assert!(c.contains(&("0.90", size - 65536)));
    }
}
