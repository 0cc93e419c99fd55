//! RAID5/6 chunk placement, implemented from the semantics of the kernel's `raid5_compute_sector`
//! (drivers/md/raid5.c) and its Q-syndrome slot order (`raid6_d0` / `raid6_idx_to_slot`).
//!
//! A "row" is the stripe of one chunk on every member: logical chunk `c` lives in row
//! `c / data_disks`, at member offset `row * chunk`.

use serde::Serialize;

use crate::error::ParityError;

pub const LEFT_ASYMMETRIC: u32 = 0;
pub const RIGHT_ASYMMETRIC: u32 = 1;
pub const LEFT_SYMMETRIC: u32 = 2;
pub const RIGHT_SYMMETRIC: u32 = 3;
pub const PARITY_0: u32 = 4;
pub const PARITY_N: u32 = 5;
pub const ROTATING_ZERO_RESTART: u32 = 8;
pub const ROTATING_N_RESTART: u32 = 9;
pub const ROTATING_N_CONTINUE: u32 = 10;
pub const LEFT_ASYMMETRIC_6: u32 = 16;
pub const RIGHT_ASYMMETRIC_6: u32 = 17;
pub const LEFT_SYMMETRIC_6: u32 = 18;
pub const RIGHT_SYMMETRIC_6: u32 = 19;
pub const PARITY_0_6: u32 = 20;

/// Names accepted on the command line: mdadm's, LVM dm-raid's, and the number.
const NAMES: &[(&str, u32)] = &[
    ("left-asymmetric", LEFT_ASYMMETRIC),
    ("la", LEFT_ASYMMETRIC),
    ("raid5_la", LEFT_ASYMMETRIC),
    ("raid6_la_6", LEFT_ASYMMETRIC_6),
    ("right-asymmetric", RIGHT_ASYMMETRIC),
    ("ra", RIGHT_ASYMMETRIC),
    ("raid5_ra", RIGHT_ASYMMETRIC),
    ("raid6_ra_6", RIGHT_ASYMMETRIC_6),
    ("left-symmetric", LEFT_SYMMETRIC),
    ("ls", LEFT_SYMMETRIC),
    ("raid5_ls", LEFT_SYMMETRIC),
    ("raid6_ls_6", LEFT_SYMMETRIC_6),
    ("right-symmetric", RIGHT_SYMMETRIC),
    ("rs", RIGHT_SYMMETRIC),
    ("raid5_rs", RIGHT_SYMMETRIC),
    ("raid6_rs_6", RIGHT_SYMMETRIC_6),
    ("parity-first", PARITY_0),
    ("raid5_0", PARITY_0),
    ("parity-last", PARITY_N),
    ("raid5_n", PARITY_N),
    ("raid6_n_6", PARITY_N),
    ("raid6_0_6", PARITY_0_6),
    ("ddf-zero-restart", ROTATING_ZERO_RESTART),
    ("raid6_zr", ROTATING_ZERO_RESTART),
    ("ddf-N-restart", ROTATING_N_RESTART),
    ("raid6_nr", ROTATING_N_RESTART),
    ("ddf-N-continue", ROTATING_N_CONTINUE),
    ("raid6_nc", ROTATING_N_CONTINUE),
    ("left-asymmetric-6", LEFT_ASYMMETRIC_6),
    ("right-asymmetric-6", RIGHT_ASYMMETRIC_6),
    ("left-symmetric-6", LEFT_SYMMETRIC_6),
    ("right-symmetric-6", RIGHT_SYMMETRIC_6),
    ("parity-first-6", PARITY_0_6),
];

/// Parses a layout name or number.
pub fn parse_layout(s: &str) -> Result<u32, ParityError> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s))
        .map(|(_, v)| *v)
        .ok_or_else(|| ParityError::UnknownLayout(s.to_string()))
}

/// mdadm-style name of a layout number.
pub fn layout_name(l: u32) -> &'static str {
    NAMES
        .iter()
        .find(|(n, v)| *v == l && n.contains('-'))
        .map_or("unknown", |(n, _)| n)
}

/// The array shape the mapping needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Geometry {
    pub level: u32,
    pub layout: u32,
    pub raid_disks: usize,
}

/// Where everything of one row lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RowMap {
    /// Member (role) holding logical data chunk d of the row.
    pub data: Vec<usize>,
    /// Parity member.
    pub p: usize,
    /// Q member (RAID6).
    pub q: Option<usize>,
    /// RAID6: Q-syndrome slot of each member; `syndrome_disks` slots in all (DDF layouts leave P and
    /// Q's slots empty, md layouts number data members from the one after Q).
    pub slot_member: Vec<Option<usize>>,
}

impl Geometry {
    pub fn new(level: u32, layout: u32, raid_disks: usize) -> Result<Geometry, ParityError> {
        let g = Geometry {
            level,
            layout,
            raid_disks,
        };
        let min = match level {
            4 | 5 => 2,
            6 => 4,
            _ => {
                return Err(ParityError::Geometry(format!(
                    "level {level} is not RAID4/5/6"
                )));
            }
        };
        if raid_disks < min || raid_disks > 255 {
            return Err(ParityError::Geometry(format!(
                "raid{level} with {raid_disks} devices"
            )));
        }
        let ok = match level {
            4 => true,
            5 => layout <= PARITY_N,
            _ => layout <= PARITY_N || (8..=10).contains(&layout) || (16..=20).contains(&layout),
        };
        if !ok {
            return Err(ParityError::UnknownLayout(format!(
                "{layout} for raid{level}"
            )));
        }
        Ok(g)
    }

    pub fn parity_disks(&self) -> usize {
        if self.level == 6 { 2 } else { 1 }
    }

    pub fn data_disks(&self) -> usize {
        self.raid_disks - self.parity_disks()
    }

    /// `raid5_compute_sector` for data chunk index `dd` (0..data_disks) of row `row`:
    /// returns (member of that chunk, P member, Q member, ddf flag).
    fn compute(&self, row: u64, dd: usize) -> (usize, usize, Option<usize>, bool) {
        let n = self.raid_disks;
        let data_disks = self.data_disks();
        let mut dd = dd;
        let rot = |m: usize| (row % m as u64) as usize;
        if self.level == 4 {
            return (dd, data_disks, None, false);
        }
        if self.level == 5 {
            let pd = match self.layout {
                LEFT_ASYMMETRIC => {
                    let pd = data_disks - rot(n);
                    if dd >= pd {
                        dd += 1;
                    }
                    pd
                }
                RIGHT_ASYMMETRIC => {
                    let pd = rot(n);
                    if dd >= pd {
                        dd += 1;
                    }
                    pd
                }
                LEFT_SYMMETRIC => {
                    let pd = data_disks - rot(n);
                    dd = (pd + 1 + dd) % n;
                    pd
                }
                RIGHT_SYMMETRIC => {
                    let pd = rot(n);
                    dd = (pd + 1 + dd) % n;
                    pd
                }
                PARITY_0 => {
                    dd += 1;
                    0
                }
                _ => data_disks, // PARITY_N
            };
            return (dd, pd, None, false);
        }
        // RAID6
        let asym = |pd: usize, dd: &mut usize| -> usize {
            if pd == n - 1 {
                *dd += 1;
                0
            } else {
                if *dd >= pd {
                    *dd += 2;
                }
                pd + 1
            }
        };
        let (pd, qd, ddf) = match self.layout {
            LEFT_ASYMMETRIC => {
                let pd = n - 1 - rot(n);
                (pd, asym(pd, &mut dd), false)
            }
            RIGHT_ASYMMETRIC => {
                let pd = rot(n);
                (pd, asym(pd, &mut dd), false)
            }
            LEFT_SYMMETRIC => {
                let pd = n - 1 - rot(n);
                dd = (pd + 2 + dd) % n;
                (pd, (pd + 1) % n, false)
            }
            RIGHT_SYMMETRIC => {
                let pd = rot(n);
                dd = (pd + 2 + dd) % n;
                (pd, (pd + 1) % n, false)
            }
            PARITY_0 => {
                dd += 2;
                (0, 1, false)
            }
            PARITY_N => (data_disks, data_disks + 1, false),
            ROTATING_ZERO_RESTART => {
                let pd = rot(n);
                (pd, asym(pd, &mut dd), true)
            }
            ROTATING_N_RESTART => {
                let pd = n - 1 - ((row + 1) % n as u64) as usize;
                (pd, asym(pd, &mut dd), true)
            }
            ROTATING_N_CONTINUE => {
                let pd = n - 1 - rot(n);
                dd = (pd + 1 + dd) % n;
                (pd, (pd + n - 1) % n, true)
            }
            LEFT_ASYMMETRIC_6 => {
                let pd = data_disks - rot(n - 1);
                if dd >= pd {
                    dd += 1;
                }
                (pd, n - 1, false)
            }
            RIGHT_ASYMMETRIC_6 => {
                let pd = rot(n - 1);
                if dd >= pd {
                    dd += 1;
                }
                (pd, n - 1, false)
            }
            LEFT_SYMMETRIC_6 => {
                let pd = data_disks - rot(n - 1);
                dd = (pd + 1 + dd) % (n - 1);
                (pd, n - 1, false)
            }
            RIGHT_SYMMETRIC_6 => {
                let pd = rot(n - 1);
                dd = (pd + 1 + dd) % (n - 1);
                (pd, n - 1, false)
            }
            _ => {
                // PARITY_0_6
                dd += 1;
                (0, n - 1, false)
            }
        };
        (dd, pd, Some(qd), ddf)
    }

    /// Placement of row `row`.
    pub fn row(&self, row: u64) -> RowMap {
        let n = self.raid_disks;
        let mut data = Vec::with_capacity(self.data_disks());
        let (mut p, mut q, mut ddf) = (0, None, false);
        for d in 0..self.data_disks() {
            let (m, pd, qd, f) = self.compute(row, d);
            data.push(m);
            (p, q, ddf) = (pd, qd, f);
        }
        let mut slot_member = Vec::new();
        if let Some(qd) = q {
            // Walk the members from d0 (0 for DDF, else the one after Q) and number them as
            // raid6_idx_to_slot does: DDF counts every member, md only data members.
            let syndrome = if ddf { n } else { n - 2 };
            slot_member = vec![None; syndrome];
            let d0 = if ddf || qd == n - 1 { 0 } else { qd + 1 };
            let mut count = 0;
            let mut i = d0;
            loop {
                let slot = count;
                if ddf {
                    count += 1;
                }
                if i != p && i != qd {
                    if !ddf {
                        count += 1;
                    }
                    slot_member[slot] = Some(i);
                }
                i = (i + 1) % n;
                if i == d0 {
                    break;
                }
            }
        }
        RowMap {
            data,
            p,
            q,
            slot_member,
        }
    }

    /// `raid5_compute_sector`: logical byte offset -> (member, byte offset in the member's data area).
    pub fn map(&self, chunk: u64, logical: u64) -> (usize, u64) {
        let chunk_no = logical / chunk;
        let within = logical % chunk;
        let row = chunk_no / self.data_disks() as u64;
        let dd = (chunk_no % self.data_disks() as u64) as usize;
        let (m, _, _, _) = self.compute(row, dd);
        (m, row * chunk + within)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Render rows as mdadm-style pictures: data chunk numbers, P, Q.
    fn picture(g: &Geometry, rows: u64) -> Vec<String> {
        (0..rows)
            .map(|r| {
                let m = g.row(r);
                let mut cells = vec![String::new(); g.raid_disks];
                for (d, &mem) in m.data.iter().enumerate() {
                    cells[mem] = format!("{}", r as usize * g.data_disks() + d);
                }
                cells[m.p] = "P".into();
                if let Some(q) = m.q {
                    cells[q] = "Q".into();
                }
                cells.join(" ")
            })
            .collect()
    }

    #[test]
    fn raid5_layouts_match_the_md_pictures() {
        // The classic 4-disk diagrams (md(4), "RAID5 layouts").
        let g = Geometry::new(5, LEFT_SYMMETRIC, 4).unwrap();
        assert_eq!(
            picture(&g, 4),
            ["0 1 2 P", "4 5 P 3", "8 P 6 7", "P 9 10 11"]
        );
        let g = Geometry::new(5, LEFT_ASYMMETRIC, 4).unwrap();
        assert_eq!(
            picture(&g, 4),
            ["0 1 2 P", "3 4 P 5", "6 P 7 8", "P 9 10 11"]
        );
        let g = Geometry::new(5, RIGHT_SYMMETRIC, 4).unwrap();
        assert_eq!(
            picture(&g, 4),
            ["P 0 1 2", "5 P 3 4", "7 8 P 6", "9 10 11 P"]
        );
        let g = Geometry::new(5, RIGHT_ASYMMETRIC, 4).unwrap();
        assert_eq!(
            picture(&g, 4),
            ["P 0 1 2", "3 P 4 5", "6 7 P 8", "9 10 11 P"]
        );
        let g = Geometry::new(5, PARITY_0, 4).unwrap();
        assert_eq!(picture(&g, 2), ["P 0 1 2", "P 3 4 5"]);
        let g = Geometry::new(5, PARITY_N, 4).unwrap();
        assert_eq!(picture(&g, 2), ["0 1 2 P", "3 4 5 P"]);
    }

    #[test]
    fn raid6_layouts_match_the_md_pictures() {
        let g = Geometry::new(6, LEFT_SYMMETRIC, 5).unwrap();
        assert_eq!(
            picture(&g, 5),
            [
                "Q 0 1 2 P",
                "3 4 5 P Q",
                "7 8 P Q 6",
                "11 P Q 9 10",
                "P Q 12 13 14"
            ]
        );
        let g = Geometry::new(6, LEFT_ASYMMETRIC, 5).unwrap();
        assert_eq!(
            picture(&g, 5),
            [
                "Q 0 1 2 P",
                "3 4 5 P Q",
                "6 7 P Q 8",
                "9 P Q 10 11",
                "P Q 12 13 14"
            ]
        );
        let g = Geometry::new(6, RIGHT_ASYMMETRIC, 5).unwrap();
        assert_eq!(
            picture(&g, 5),
            [
                "P Q 0 1 2",
                "3 P Q 4 5",
                "6 7 P Q 8",
                "9 10 11 P Q",
                "Q 12 13 14 P"
            ]
        );
        // raid6_zr (LVM's default) places like right-asymmetric; raid6_nr starts "D D D P Q".
        let g = Geometry::new(6, ROTATING_ZERO_RESTART, 5).unwrap();
        assert_eq!(picture(&g, 2), ["P Q 0 1 2", "3 P Q 4 5"]);
        let g = Geometry::new(6, ROTATING_N_RESTART, 5).unwrap();
        assert_eq!(picture(&g, 2), ["0 1 2 P Q", "3 4 P Q 5"]);
        // raid6_nc: left-symmetric with Q before P.
        let g = Geometry::new(6, ROTATING_N_CONTINUE, 5).unwrap();
        assert_eq!(picture(&g, 3), ["0 1 2 Q P", "4 5 Q P 3", "8 Q P 6 7"]);
        let g = Geometry::new(6, LEFT_SYMMETRIC_6, 5).unwrap();
        assert_eq!(
            picture(&g, 4),
            ["0 1 2 P Q", "4 5 P 3 Q", "8 P 6 7 Q", "P 9 10 11 Q"]
        );
        let g = Geometry::new(6, PARITY_0_6, 5).unwrap();
        assert_eq!(picture(&g, 1), ["P 0 1 2 Q"]);
    }

    #[test]
    fn q_slots_follow_the_kernel_walk() {
        // md layouts: data members numbered from the member after Q.
        let g = Geometry::new(6, LEFT_SYMMETRIC, 5).unwrap();
        // Row 0 "Q 0 1 2 P": Q is member 0, walk from 1. Row 2 "7 8 P Q 6": walk from member 4.
        assert_eq!(g.row(0).slot_member, vec![Some(1), Some(2), Some(3)]);
        assert_eq!(g.row(2).slot_member, vec![Some(4), Some(0), Some(1)]);
        let g = Geometry::new(6, LEFT_ASYMMETRIC, 5).unwrap();
        // Row 2 "6 7 P Q 8": after Q is member 4 (chunk 8), so Q's order differs from the chunk order.
        assert_eq!(g.row(2).slot_member, vec![Some(4), Some(0), Some(1)]);
        // DDF layouts: slots are member numbers, P and Q slots empty.
        let g = Geometry::new(6, ROTATING_ZERO_RESTART, 5).unwrap();
        assert_eq!(
            g.row(1).slot_member,
            vec![Some(0), None, None, Some(3), Some(4)]
        );
    }

    #[test]
    fn map_agrees_with_rows() {
        for (level, layouts) in [
            (5u32, vec![0u32, 1, 2, 3, 4, 5]),
            (6, vec![0, 1, 2, 3, 4, 5, 8, 9, 10, 16, 17, 18, 19, 20]),
        ] {
            for layout in layouts {
                for n in [4usize, 5, 7] {
                    let g = Geometry::new(level, layout, n).unwrap();
                    let chunk = 4096u64;
                    let mut seen = std::collections::HashSet::new();
                    for c in 0..(g.data_disks() as u64 * 3 * n as u64) {
                        let (m, off) = g.map(chunk, c * chunk + 7);
                        let row = g.row(c / g.data_disks() as u64);
                        assert_eq!(row.data[(c % g.data_disks() as u64) as usize], m);
                        assert_ne!(m, row.p);
                        assert_ne!(Some(m), row.q);
                        assert_eq!(off % chunk, 7);
                        assert!(
                            seen.insert((m, off)),
                            "layout {layout} n {n}: two chunks on one place"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn layout_names() {
        assert_eq!(parse_layout("raid6_zr").unwrap(), 8);
        assert_eq!(parse_layout("raid6_nr").unwrap(), 9);
        assert_eq!(parse_layout("raid6_nc").unwrap(), 10);
        assert_eq!(parse_layout("left-symmetric").unwrap(), 2);
        assert_eq!(parse_layout("raid5_la").unwrap(), 0);
        assert!(parse_layout("diagonal").is_err());
        assert!(Geometry::new(5, 8, 4).is_err());
        assert!(Geometry::new(6, 3, 3).is_err());
        assert_eq!(layout_name(2), "left-symmetric");
    }
}
