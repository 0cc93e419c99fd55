//! Chunk placement checked against arrays the real kernel wrote (`make e2e-md`): the fixtures hold the
//! first 16 bytes of every member chunk of the first 2n rows (hack/parity/capture-layout-fixtures.py).
//! The payload is regenerated from its seed, so each data chunk, P and Q is predicted by Tessera's
//! layout code and compared with what md put on disk.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::collections::HashMap;
use tessera_parity::gf;
use tessera_parity::md::Geometry;
use tessera_parity::util::pattern_mib;

struct Payload {
    seed: u64,
    mibs: HashMap<u64, Vec<u8>>,
}

impl Payload {
    fn bytes(&mut self, off: u64) -> [u8; 16] {
        let seed = self.seed;
        let mib = self.mibs.entry(off >> 20).or_insert_with(|| {
            let mut b = vec![0u8; 1 << 20];
            pattern_mib(seed, off >> 20, &mut b);
            b
        });
        let o = (off & ((1 << 20) - 1)) as usize;
        mib[o..o + 16].try_into().unwrap()
    }
}

fn field(header: &str, key: &str) -> u64 {
    let mut it = header.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next().unwrap().parse().unwrap();
        }
    }
    panic!("{key} missing in {header}");
}

#[test]
fn placement_matches_kernel_made_arrays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut n_files = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("layout-") {
            continue;
        }
        n_files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let header = text.lines().next().unwrap();
        let (level, layout, chunk, disks) = (
            field(header, "level") as u32,
            field(header, "layout") as u32,
            field(header, "chunk"),
            field(header, "disks") as usize,
        );
        let base = field(header, "pattern_offset");
        let mut pay = Payload {
            seed: field(header, "seed"),
            mibs: HashMap::new(),
        };
        let g = Geometry::new(level, layout, disks).unwrap();
        let dd = g.data_disks() as u64;
        let mut seen = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let w: Vec<&str> = line.split_whitespace().collect();
            let (role, row): (usize, u64) = (w[0].parse().unwrap(), w[1].parse().unwrap());
            let on_disk: Vec<u8> = (0..16)
                .map(|i| u8::from_str_radix(&w[2][2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let map = g.row(row);
            let data: Vec<[u8; 16]> = (0..dd)
                .map(|d| pay.bytes(base + (row * dd + d) * chunk))
                .collect();
            let expect: [u8; 16] = if let Some(d) = map.data.iter().position(|&m| m == role) {
                data[d]
            } else if role == map.p {
                let mut p = [0u8; 16];
                for c in &data {
                    p.iter_mut().zip(c).for_each(|(a, b)| *a ^= b);
                }
                p
            } else {
                assert_eq!(
                    Some(role),
                    map.q,
                    "{name}: role {role} row {row} is neither data, P nor Q"
                );
                // Q = sum of 2^slot * D over the kernel's syndrome slots.
                let mut q = [0u8; 16];
                for (slot, m) in map.slot_member.iter().enumerate() {
                    if let Some(m) = m {
                        let d = map.data.iter().position(|x| x == m).unwrap();
                        for (a, b) in q.iter_mut().zip(&data[d]) {
                            *a ^= gf::mul(gf::pow2(slot), *b);
                        }
                    }
                }
                q
            };
            assert_eq!(on_disk, expect, "{name}: role {role} row {row}");
            seen += 1;
        }
        assert_eq!(seen, 2 * disks * disks, "{name}: fixture rows");
    }
    assert_eq!(n_files, 11, "layout fixtures in {}", dir.display());
}
