//! Linux MD on-disk compatibility: superblocks, RAID4/5/6 layouts (md and LVM dm-raid names), and
//! offline verify / read / rebuild over member devices or images.

pub mod array;
pub mod layout;
pub mod superblock;

pub use array::{
    Array, Overrides, RepairReport, RepairedPage, VerifyReport, check_out_not_member, examine,
};
pub use layout::{Geometry, parse_layout};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::superblock::tests::build_v1;
    use super::*;
    use crate::codec::{Pq, Xor};
    use crate::util::fill_seeded;
    use std::path::PathBuf;

    /// Lays out `data` onto member images with this crate's own layout code plus 1.2 superblocks.
    /// Only a self-consistency check; byte compatibility with the kernel is `make e2e-md`'s job.
    fn synth(
        dir: &std::path::Path,
        level: u32,
        layout: u32,
        n: usize,
        chunk: usize,
        rows: usize,
        data: &[u8],
    ) -> Vec<PathBuf> {
        let g = Geometry::new(level, layout, n).unwrap();
        let doff = 1 << 20;
        let mut imgs = vec![vec![0u8; doff + rows * chunk + 8192]; n];
        for (i, img) in imgs.iter_mut().enumerate() {
            let sb = build_v1(
                4096,
                level,
                layout,
                (chunk / 512) as u32,
                n as u32,
                (doff / 512) as u64,
                (rows * chunk / 512) as u64,
                i as u32,
                9,
            );
            img[4096..8192].copy_from_slice(&sb);
        }
        let dd = g.data_disks();
        for r in 0..rows {
            let m = g.row(r as u64);
            let at = |_role: usize| doff + r * chunk..doff + (r + 1) * chunk;
            for (d, &role) in m.data.iter().enumerate() {
                let src = &data[(r * dd + d) * chunk..(r * dd + d + 1) * chunk];
                imgs[role][at(role)].copy_from_slice(src);
            }
            let zero = vec![0u8; chunk];
            let mut p = vec![0u8; chunk];
            if level == 6 {
                let srcs: Vec<Vec<u8>> = m
                    .slot_member
                    .iter()
                    .map(|s| s.map_or(zero.clone(), |role| imgs[role][at(role)].to_vec()))
                    .collect();
                let s: Vec<&[u8]> = srcs.iter().map(|v| &v[..]).collect();
                let mut q = vec![0u8; chunk];
                Pq::new(s.len())
                    .unwrap()
                    .encode(&s, &mut p, &mut q)
                    .unwrap();
                let qr = m.q.unwrap();
                imgs[qr][at(qr)].copy_from_slice(&q);
            } else {
                let srcs: Vec<Vec<u8>> = m
                    .data
                    .iter()
                    .map(|&role| imgs[role][at(role)].to_vec())
                    .collect();
                let s: Vec<&[u8]> = srcs.iter().map(|v| &v[..]).collect();
                Xor::new().encode(&s, &mut p).unwrap();
            }
            imgs[m.p][at(m.p)].copy_from_slice(&p);
        }
        imgs.iter()
            .enumerate()
            .map(|(i, img)| {
                let p = dir.join(format!("m{i}.img"));
                std::fs::write(&p, img).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn verify_read_rebuild_locate_on_synthetic_arrays() {
        let dir = tempfile::tempdir().unwrap();
        for (level, layout, n) in [
            (6u32, 2u32, 6usize),
            (6, 0, 5),
            (6, 8, 6),
            (6, 10, 5),
            (5, 0, 4),
            (5, 3, 5),
            (6, 18, 6),
        ] {
            let (chunk, rows) = (16384, 13);
            let dd = n - if level == 6 { 2 } else { 1 };
            let mut data = vec![0u8; rows * dd * chunk];
            fill_seeded(&mut data, (level * 100 + layout) as u64);
            let paths = synth(dir.path(), level, layout, n, chunk, rows, &data);
            let arr = Array::open(&paths, &Overrides::default()).unwrap();
            assert_eq!(
                arr.verify(&|_| {}).unwrap().mismatches.len(),
                0,
                "layout {layout}"
            );
            let mut out = Vec::new();
            arr.read_to(&mut out, &|_| {}).unwrap();
            assert_eq!(out, data, "read layout {layout}");
            // Rebuild each single member, then two at once for RAID6.
            let original: Vec<Vec<u8>> = paths
                .iter()
                .map(|p| std::fs::read(p).unwrap()[1 << 20..(1 << 20) + rows * chunk].to_vec())
                .collect();
            for (role, orig) in original.iter().enumerate() {
                let others: Vec<PathBuf> = paths
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != role && (level == 5 || *i != (role + 1) % n))
                    .map(|(_, p)| p.clone())
                    .collect();
                let mut arr = Array::open(&others, &Overrides::default()).unwrap();
                let mut out = Vec::new();
                arr.rebuild_to(role, &mut out, &|_| {}).unwrap();
                assert_eq!(&out, orig, "rebuild role {role} layout {layout}");
                let mut r = Vec::new();
                arr.read_to(&mut r, &|_| {}).unwrap();
                assert_eq!(r, data, "degraded read layout {layout}");
            }
            // Degraded verify: RAID6 with one member missing still checks its last redundancy.
            if level == 6 {
                let arr = Array::open(&paths[1..], &Overrides::default()).unwrap();
                assert_eq!(
                    arr.verify(&|_| {}).unwrap().mismatches.len(),
                    0,
                    "degraded layout {layout}"
                );
            } else {
                assert!(
                    Array::open(&paths[1..], &Overrides::default())
                        .unwrap()
                        .verify(&|_| {})
                        .is_err()
                );
            }
            // Corrupt one byte of one member: detected; located for RAID6.
            let victim = 1;
            let mut img = std::fs::read(&paths[victim]).unwrap();
            img[(1 << 20) + 3 * chunk + 5000] ^= 0x5a;
            std::fs::write(&paths[victim], &img).unwrap();
            let arr = Array::open(&paths, &Overrides::default()).unwrap();
            let rep = arr.verify(&|_| {}).unwrap();
            assert_eq!(rep.mismatches.len(), 1, "layout {layout}");
            assert_eq!(rep.mismatches[0].member_offset, 3 * chunk as u64 + 4096);
            if level == 6 {
                assert_eq!(rep.mismatches[0].bad_role, Some(victim), "layout {layout}");
                // Still detected with another member missing (not locatable then).
                let others: Vec<PathBuf> = paths
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 4)
                    .map(|(_, p)| p.clone())
                    .collect();
                let rep = Array::open(&others, &Overrides::default())
                    .unwrap()
                    .verify(&|_| {})
                    .unwrap();
                assert_eq!(
                    rep.mismatches.len(),
                    1,
                    "degraded corrupted layout {layout}"
                );
                assert_eq!(rep.mismatches[0].member_offset, 3 * chunk as u64 + 4096);
            }
        }
    }

    #[test]
    fn repair_rewrites_exactly_the_blamed_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (chunk, rows, n) = (16384usize, 9usize, 6usize);
        let mut data = vec![0u8; rows * (n - 2) * chunk];
        fill_seeded(&mut data, 77);
        let paths = synth(dir.path(), 6, 2, n, chunk, rows, &data);
        let pristine: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
        // One bad page on three members, at rows where they hold data, P and Q in turn.
        let g = Geometry::new(6, 2, n).unwrap();
        let mut hits = Vec::new();
        for (row, kind) in [(1u64, "data"), (4, "P"), (7, "Q")] {
            let m = g.row(row);
            let role = match kind {
                "data" => m.data[1],
                "P" => m.p,
                _ => m.q.unwrap(),
            };
            let at = (1 << 20) + row as usize * chunk + 8192;
            let mut img = std::fs::read(&paths[role]).unwrap();
            img[at + 17] ^= 0xa5;
            img[at + 4000] ^= 0x3c;
            std::fs::write(&paths[role], &img).unwrap();
            hits.push((role, kind, at as u64));
        }
        let arr = Array::open(&paths, &Overrides::default()).unwrap();
        let rep = arr.verify(&|_| {}).unwrap();
        assert_eq!(rep.mismatches.len(), 3);
        let fixed = arr.repair(&rep.mismatches).unwrap();
        assert_eq!(fixed.unrepairable, 0);
        let mut got: Vec<(usize, &str, u64)> = fixed
            .repaired
            .iter()
            .map(|r| (r.role, r.kind, r.device_offset))
            .collect();
        got.sort();
        hits.sort();
        assert_eq!(got, hits);
        for (p, orig) in paths.iter().zip(&pristine) {
            assert!(
                std::fs::read(p).unwrap() == *orig,
                "{} restored",
                p.display()
            );
        }
        assert!(arr.verify(&|_| {}).unwrap().mismatches.is_empty());
        // A second repair with the old report finds the pages consistent and writes nothing.
        assert!(arr.repair(&rep.mismatches).unwrap().repaired.is_empty());

        // RAID5 cannot tell which member is wrong: nothing is written.
        let d5 = tempfile::tempdir().unwrap();
        let p5 = synth(d5.path(), 5, 2, 4, chunk, rows, &data[..rows * 3 * chunk]);
        let mut img = std::fs::read(&p5[2]).unwrap();
        img[(1 << 20) + chunk + 100] ^= 1;
        std::fs::write(&p5[2], &img).unwrap();
        let arr5 = Array::open(&p5, &Overrides::default()).unwrap();
        let rep5 = arr5.verify(&|_| {}).unwrap();
        assert_eq!(rep5.mismatches.len(), 1);
        let r5 = arr5.repair(&rep5.mismatches).unwrap();
        assert!(r5.repaired.is_empty());
        assert_eq!(r5.unrepairable, 1);
        assert_eq!(std::fs::read(&p5[2]).unwrap(), img);
    }

    #[test]
    fn bad_input_names_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let (chunk, rows) = (4096, 4);
        let data = vec![7u8; rows * 3 * chunk];
        let paths = synth(dir.path(), 5, 2, 4, chunk, rows, &data);
        // Truncated image.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[2])
            .unwrap();
        f.set_len((1 << 20) + chunk as u64).unwrap();
        let e = Array::open(&paths, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("m2.img") && e.contains("truncated"), "{e}");
        // Diverging events.
        let paths = synth(dir.path(), 5, 2, 4, chunk, rows, &data);
        let mut img = std::fs::read(&paths[1]).unwrap();
        img[4096 + 200] = 10;
        std::fs::write(&paths[1], &img).unwrap();
        let e = Array::open(&paths, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("m") && e.contains("event count"), "{e}");
        // Different array UUID.
        let paths = synth(dir.path(), 5, 2, 4, chunk, rows, &data);
        let mut img = std::fs::read(&paths[3]).unwrap();
        img[4096 + 16] ^= 0xff;
        std::fs::write(&paths[3], &img).unwrap();
        let e = Array::open(&paths, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m3.img") && e.contains("belongs to array"),
            "{e}"
        );
        // Too many missing.
        let paths = synth(dir.path(), 5, 2, 4, chunk, rows, &data);
        let e = Array::open(&paths[..2], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("too many missing"), "{e}");
        // Unknown layout in a superblock.
        let mut img = std::fs::read(&paths[0]).unwrap();
        img[4096 + 76] = 7;
        std::fs::write(&paths[0], &img).unwrap();
        assert!(Array::open(&paths, &Overrides::default()).is_err());
        // --out that is a member.
        assert!(check_out_not_member(&paths[1], &[paths[1].as_path()]).is_err());
        assert!(check_out_not_member(&dir.path().join("new.img"), &[paths[1].as_path()]).is_ok());
    }
}
