//! Offline assembly of an MD RAID4/5/6 array from member devices or image files: examine, verify,
//! read (degraded allowed) and rebuild of one member. Members are opened read-only; `repair` alone
//! writes, one blamed page at a time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::layout::{Geometry, RowMap, layout_name};
use super::superblock::{self, Superblock};
use crate::codec::{Decoder, Member, Pq, Xor};
use crate::error::ParityError;

/// Geometry given on the command line, for members without a superblock (LVM rimage devices) or
/// to override what the superblock says.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub level: Option<u32>,
    pub layout: Option<u32>,
    pub chunk: Option<u64>,
    pub data_offset: Option<u64>,
    pub raid_disks: Option<usize>,
    /// Bytes of each member's data area that belong to the array (LVM: the rimage size).
    pub member_size: Option<u64>,
}

impl Overrides {
    fn raw(&self) -> bool {
        self.level.is_some() && self.chunk.is_some() && self.data_offset.is_some()
    }
}

/// One opened member.
#[derive(Debug)]
pub struct MemberDev {
    pub path: PathBuf,
    pub size: u64,
    pub role: usize,
    pub data_offset: u64,
    pub superblock: Option<Superblock>,
    file: File,
}

/// What `examine` prints per member.
#[derive(Clone, Debug, Serialize)]
pub struct MemberReport {
    pub path: PathBuf,
    pub size: u64,
    pub superblock: Option<Superblock>,
    pub layout_name: Option<&'static str>,
    pub error: Option<String>,
}

/// An assembled (possibly degraded) array.
#[derive(Debug)]
pub struct Array {
    pub geometry: Geometry,
    pub chunk: u64,
    /// Bytes of each member's data area used by the array (a whole number of chunks).
    pub member_data: u64,
    pub uuid: Option<String>,
    pub events: Option<u64>,
    /// Members by role; `None` for a missing one.
    pub members: Vec<Option<MemberDev>>,
}

/// Result of `verify`.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Rows (one chunk per member) checked.
    pub stripes_checked: u64,
    /// 4 KiB pages of each member checked (the kernel's stripe unit).
    pub pages_checked: u64,
    pub mismatches: Vec<Mismatch>,
}

/// One inconsistent 4 KiB page of a row.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    pub row: u64,
    /// Offset in each member's data area.
    pub member_offset: u64,
    /// Role of the member that explains the mismatch (RAID6 only, when one member does).
    pub bad_role: Option<usize>,
    /// "data", "P" or "Q" for the blamed member.
    pub bad_kind: Option<&'static str>,
}

/// The kernel's stripe unit: verify reports at this granularity.
pub const PAGE: usize = 4096;

fn member_err(path: &Path, msg: impl Into<String>) -> ParityError {
    ParityError::Member {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn open_ro(path: &Path) -> Result<(File, u64), ParityError> {
    let mut f = File::open(path).map_err(|e| member_err(path, format!("cannot open: {e}")))?;
    // Block devices report length 0 in metadata; seeking to the end works for both.
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| member_err(path, format!("cannot size: {e}")))?;
    Ok((f, size))
}

/// `examine`: the superblock of every member (errors per member, not fatal).
pub fn examine(paths: &[PathBuf]) -> Vec<MemberReport> {
    paths
        .iter()
        .map(|p| {
            let r = open_ro(p).and_then(|(f, size)| {
                let sb = superblock::probe(&mut |off, buf| f.read_exact_at(buf, off), size)
                    .map_err(|e| member_err(p, e.to_string()))?;
                Ok((size, sb))
            });
            match r {
                Ok((size, sb)) => MemberReport {
                    path: p.clone(),
                    size,
                    layout_name: Some(layout_name(sb.layout)),
                    superblock: Some(sb),
                    error: None,
                },
                Err(e) => MemberReport {
                    path: p.clone(),
                    size: 0,
                    superblock: None,
                    layout_name: None,
                    error: Some(e.to_string()),
                },
            }
        })
        .collect()
}

impl Array {
    /// Assembles from member paths. With superblocks, roles come from them; in raw mode (level,
    /// chunk and data offset given) the order of `paths` is the role order and the word `missing`
    /// stands for an absent member. `skip_roles` are treated as absent even if present.
    pub fn open(paths: &[PathBuf], ov: &Overrides) -> Result<Array, ParityError> {
        if ov.raw() {
            return Array::open_raw(paths, ov);
        }
        let mut devs: Vec<MemberDev> = Vec::new();
        for p in paths {
            let (f, size) = open_ro(p)?;
            let sb = superblock::probe(&mut |off, buf| f.read_exact_at(buf, off), size)
                .map_err(|e| member_err(p, format!("{e} (give --level/--layout/--chunk/--data-offset for members without a superblock)")))?;
            // Spares and faulty devices hold no array data: leave them out, say so.
            let Some(role) = sb.role else {
                tracing::warn!(path = %p.display(), "spare or faulty device: not used");
                continue;
            };
            let role = role as usize;
            devs.push(MemberDev {
                path: p.clone(),
                size,
                role,
                data_offset: ov.data_offset.unwrap_or(sb.data_offset),
                superblock: Some(sb),
                file: f,
            });
        }
        // The array is the UUID most members carry; a member with another one is the odd one out.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for d in &devs {
            if let Some(sb) = &d.superblock {
                *counts.entry(sb.array_uuid.as_str()).or_default() += 1;
            }
        }
        let uuid = counts
            .iter()
            .max_by_key(|(u, c)| (**c, std::cmp::Reverse(**u)))
            .map(|(u, _)| u.to_string())
            .unwrap_or_default();
        for d in &devs {
            let sb = d
                .superblock
                .as_ref()
                .ok_or_else(|| member_err(&d.path, "no superblock"))?;
            if sb.array_uuid != uuid {
                return Err(member_err(
                    &d.path,
                    format!(
                        "belongs to array {} but the other members belong to {uuid}",
                        sb.array_uuid
                    ),
                ));
            }
        }
        let max_events = devs
            .iter()
            .filter_map(|d| d.superblock.as_ref().map(|s| s.events))
            .max()
            .unwrap_or(0);
        for d in &devs {
            let sb = d
                .superblock
                .as_ref()
                .ok_or_else(|| member_err(&d.path, "no superblock"))?;
            if sb.events != max_events {
                return Err(member_err(
                    &d.path,
                    format!(
                        "event count {} diverges from the newest member's {max_events}: stale member",
                        sb.events
                    ),
                ));
            }
        }
        let first = devs
            .iter()
            .filter_map(|d| d.superblock.clone())
            .find(|s| s.array_uuid == uuid)
            .ok_or_else(|| ParityError::Array("no members given".into()))?;
        let level = ov.level.unwrap_or(first.level.max(0) as u32);
        let layout = ov.layout.unwrap_or(first.layout);
        let raid_disks = ov.raid_disks.unwrap_or(first.raid_disks as usize);
        let chunk = ov.chunk.unwrap_or(first.chunk_bytes);
        let geometry = Geometry::new(level, layout, raid_disks)?;
        let member_data = ov.member_size.unwrap_or(first.data_size);
        Array::finish(
            geometry,
            chunk,
            member_data,
            Some(first.array_uuid),
            Some(max_events),
            devs,
        )
    }

    fn open_raw(paths: &[PathBuf], ov: &Overrides) -> Result<Array, ParityError> {
        let raid_disks = ov.raid_disks.unwrap_or(paths.len());
        let level = ov.level.unwrap_or(6);
        let layout = ov.layout.unwrap_or(if level == 6 {
            super::layout::ROTATING_ZERO_RESTART
        } else {
            super::layout::LEFT_SYMMETRIC
        });
        let geometry = Geometry::new(level, layout, raid_disks)?;
        let chunk = ov.chunk.unwrap_or(65536);
        let data_offset = ov.data_offset.unwrap_or(0);
        if paths.len() != raid_disks {
            return Err(ParityError::Array(format!(
                "raw mode: {} paths given for {raid_disks} roles (write `missing` for an absent one)",
                paths.len()
            )));
        }
        let mut devs = Vec::new();
        let mut min_size = u64::MAX;
        for (role, p) in paths.iter().enumerate() {
            if p.as_os_str() == "missing" {
                continue;
            }
            let (f, size) = open_ro(p)?;
            if size <= data_offset {
                return Err(member_err(
                    p,
                    format!("truncated: {size} bytes, data offset is {data_offset}"),
                ));
            }
            min_size = min_size.min(size - data_offset);
            devs.push(MemberDev {
                path: p.clone(),
                size,
                role,
                data_offset,
                superblock: None,
                file: f,
            });
        }
        if devs.is_empty() {
            return Err(ParityError::Array("every member is missing".into()));
        }
        Array::finish(
            geometry,
            chunk,
            ov.member_size.unwrap_or(min_size),
            None,
            None,
            devs,
        )
    }

    fn finish(
        geometry: Geometry,
        chunk: u64,
        member_data: u64,
        uuid: Option<String>,
        events: Option<u64>,
        devs: Vec<MemberDev>,
    ) -> Result<Array, ParityError> {
        if chunk == 0 || !chunk.is_multiple_of(PAGE as u64) {
            return Err(ParityError::Geometry(format!(
                "chunk {chunk} is not a multiple of 4 KiB"
            )));
        }
        let member_data = member_data - member_data % chunk;
        let mut members: Vec<Option<MemberDev>> = (0..geometry.raid_disks).map(|_| None).collect();
        for d in devs {
            if d.role >= geometry.raid_disks {
                return Err(member_err(
                    &d.path,
                    format!("role {} outside 0..{}", d.role, geometry.raid_disks),
                ));
            }
            if d.size < d.data_offset + member_data {
                return Err(member_err(
                    &d.path,
                    format!(
                        "truncated: {} bytes, needs {} (data offset {} + data {})",
                        d.size,
                        d.data_offset + member_data,
                        d.data_offset,
                        member_data
                    ),
                ));
            }
            let role = d.role;
            if let Some(prev) = &members[role] {
                return Err(member_err(
                    &d.path,
                    format!("has role {role} like {}", prev.path.display()),
                ));
            }
            members[role] = Some(d);
        }
        let missing = members.iter().filter(|m| m.is_none()).count();
        if missing > geometry.parity_disks() {
            let list: Vec<usize> = (0..members.len())
                .filter(|&i| members[i].is_none())
                .collect();
            return Err(ParityError::Array(format!(
                "too many missing members: roles {list:?} missing, raid{} survives at most {}",
                geometry.level,
                geometry.parity_disks()
            )));
        }
        Ok(Array {
            geometry,
            chunk,
            member_data,
            uuid,
            events,
            members,
        })
    }

    pub fn rows(&self) -> u64 {
        self.member_data / self.chunk
    }

    /// Logical size of the array in bytes.
    pub fn size(&self) -> u64 {
        self.rows() * self.chunk * self.geometry.data_disks() as u64
    }

    pub fn missing(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_none())
            .collect()
    }

    /// Paths of the members (for the "--out is not a member" check).
    pub fn member_paths(&self) -> Vec<&Path> {
        self.members
            .iter()
            .flatten()
            .map(|m| m.path.as_path())
            .collect()
    }

    /// Reads rows `r0..r0+n` of every present member into `bufs[role]`.
    fn read_rows(&self, r0: u64, n: u64, bufs: &mut [Vec<u8>]) -> Result<(), ParityError> {
        let len = (n * self.chunk) as usize;
        for (role, m) in self.members.iter().enumerate() {
            if let Some(m) = m {
                bufs[role].resize(len, 0);
                m.file
                    .read_exact_at(&mut bufs[role][..len], m.data_offset + r0 * self.chunk)
                    .map_err(|e| member_err(&m.path, format!("read failed: {e}")))?;
            }
        }
        Ok(())
    }

    fn batch_rows(&self) -> u64 {
        ((8 << 20) / self.chunk).max(1)
    }

    /// Shard order of a row for the codecs: RAID5 `[data..., P]`, RAID6 `[Q slots..., P, Q]`
    /// (`None` is an all-zero slot of a DDF layout).
    fn shard_order(&self, map: &RowMap) -> Vec<Option<usize>> {
        if self.geometry.level == 6 {
            let mut v = map.slot_member.clone();
            v.push(Some(map.p));
            v.push(map.q);
            v
        } else {
            let mut v: Vec<Option<usize>> = map.data.iter().map(|&d| Some(d)).collect();
            v.push(Some(map.p));
            v
        }
    }

    /// Verifies every row (all members must be present).
    pub fn verify(&self, progress: &dyn Fn(u64)) -> Result<VerifyReport, ParityError> {
        let missing = self.missing();
        if !missing.is_empty() {
            if self.geometry.level == 6 && missing.len() == 1 {
                return self.verify_degraded(progress);
            }
            return Err(ParityError::Array(format!(
                "verify: roles {missing:?} missing, no redundancy left to check"
            )));
        }
        let chunk = self.chunk as usize;
        let zero = vec![0u8; chunk];
        let mut bufs = vec![Vec::new(); self.members.len()];
        let mut mismatches = Vec::new();
        let xor = Xor::new();
        let mut pq: Option<Pq> = None;
        let batch = self.batch_rows();
        let mut r0 = 0;
        while r0 < self.rows() {
            let n = batch.min(self.rows() - r0);
            self.read_rows(r0, n, &mut bufs)?;
            for i in 0..n {
                let row = r0 + i;
                let map = self.geometry.row(row);
                let order = self.shard_order(&map);
                let at = |role: usize| &bufs[role][i as usize * chunk..(i as usize + 1) * chunk];
                let shards: Vec<&[u8]> = order.iter().map(|o| o.map_or(&zero[..], at)).collect();
                let bad = if self.geometry.level == 6 {
                    let k = shards.len() - 2;
                    if pq.as_ref().is_none_or(|c| c.k() != k) {
                        pq = Some(Pq::new(k)?);
                    }
                    let c = pq.as_ref().ok_or(ParityError::Singular)?;
                    c.verify(&shards[..k], shards[k], shards[k + 1], PAGE)?
                } else {
                    let k = shards.len() - 1;
                    xor.verify(&shards[..k], shards[k], PAGE)?
                };
                for b in bad {
                    let (bad_role, bad_kind) = match b.member {
                        Some(Member::Data(slot)) => (order[slot], Some("data")),
                        Some(Member::P) => (Some(map.p), Some("P")),
                        Some(Member::Q) => (map.q, Some("Q")),
                        None => (None, None),
                    };
                    mismatches.push(Mismatch {
                        row,
                        member_offset: row * self.chunk + b.offset as u64,
                        bad_role,
                        bad_kind,
                    });
                }
            }
            r0 += n;
            progress(r0 * self.chunk * self.members.len() as u64);
        }
        Ok(VerifyReport {
            stripes_checked: self.rows(),
            pages_checked: self.rows() * self.chunk / PAGE as u64,
            mismatches,
        })
    }

    /// RAID6 with one member missing: rebuild it from the first k survivors, then check the one
    /// redundancy left (Q when a data member or P is missing, P when Q is). A mismatch cannot be
    /// blamed on a member: the rebuilt chunk absorbs part of the error.
    fn verify_degraded(&self, progress: &dyn Fn(u64)) -> Result<VerifyReport, ParityError> {
        let zero = vec![0u8; self.chunk as usize];
        let mut mismatches = Vec::new();
        let mut pq: Option<Pq> = None;
        self.for_each_row(&[], progress, |row, by_role| {
            let map = self.geometry.row(row);
            let order = self.shard_order(&map);
            let shards: Vec<&[u8]> = order
                .iter()
                .map(|o| o.map_or(&zero[..], |r| &by_role[r][..]))
                .collect();
            let k = shards.len() - 2;
            if pq.as_ref().is_none_or(|c| c.k() != k) {
                pq = Some(Pq::new(k)?);
            }
            let c = pq.as_ref().ok_or(ParityError::Singular)?;
            for b in c.verify(&shards[..k], shards[k], shards[k + 1], PAGE)? {
                mismatches.push(Mismatch {
                    row,
                    member_offset: row * self.chunk + b.offset as u64,
                    bad_role: None,
                    bad_kind: None,
                });
            }
            Ok(())
        })?;
        Ok(VerifyReport {
            stripes_checked: self.rows(),
            pages_checked: self.rows() * self.chunk / PAGE as u64,
            mismatches,
        })
    }

    /// Calls `sink(row, shards_by_role)` for every row with the chunks of `want` roles rebuilt
    /// when they are missing (or listed in `treat_missing`).
    fn for_each_row(
        &self,
        want_rebuilt: &[usize],
        progress: &dyn Fn(u64),
        mut sink: impl FnMut(u64, &[Vec<u8>]) -> Result<(), ParityError>,
    ) -> Result<(), ParityError> {
        let chunk = self.chunk as usize;
        let missing = self.missing();
        for w in want_rebuilt {
            if *w >= self.members.len() {
                return Err(ParityError::Array(format!(
                    "role {w} outside 0..{}",
                    self.members.len()
                )));
            }
        }
        let mut bufs = vec![Vec::new(); self.members.len()];
        // Per-row scratch: one chunk per shard of the codec's order.
        let nshards = if self.geometry.level == 6 {
            self.geometry.row(0).slot_member.len() + 2
        } else {
            self.geometry.raid_disks
        };
        let mut stripe = vec![vec![0u8; chunk]; nshards];
        let mut row_out = vec![Vec::new(); self.members.len()];
        let pq = if self.geometry.level == 6 {
            Some(Pq::new(nshards - 2)?)
        } else {
            None
        };
        let xor = Xor::new();
        let mut decoders: HashMap<Vec<usize>, Decoder> = HashMap::new();
        let batch = self.batch_rows();
        let mut r0 = 0;
        while r0 < self.rows() {
            let n = batch.min(self.rows() - r0);
            self.read_rows(r0, n, &mut bufs)?;
            for i in 0..n as usize {
                let row = r0 + i as u64;
                let map = self.geometry.row(row);
                let order = self.shard_order(&map);
                let mut lost = Vec::new();
                for (s, o) in order.iter().enumerate() {
                    match o {
                        None => stripe[s].fill(0),
                        Some(role) if missing.contains(role) => {
                            stripe[s].fill(0);
                            lost.push(s);
                        }
                        Some(role) => {
                            stripe[s].copy_from_slice(&bufs[*role][i * chunk..(i + 1) * chunk])
                        }
                    }
                }
                if !lost.is_empty() {
                    if let Some(pq) = &pq {
                        if !decoders.contains_key(&lost) {
                            decoders.insert(lost.clone(), pq.decoder(&lost)?);
                        }
                        let dec = decoders.get(&lost).ok_or(ParityError::Singular)?;
                        let mut sh: Vec<&mut [u8]> =
                            stripe.iter_mut().map(|v| &mut v[..]).collect();
                        dec.apply(&mut sh)?;
                    } else {
                        let mut sh: Vec<&mut [u8]> =
                            stripe.iter_mut().map(|v| &mut v[..]).collect();
                        xor.reconstruct(&mut sh, lost[0])?;
                    }
                }
                for (s, o) in order.iter().enumerate() {
                    if let Some(role) = o {
                        row_out[*role].clear();
                        row_out[*role].extend_from_slice(&stripe[s]);
                    }
                }
                sink(row, &row_out)?;
            }
            r0 += n;
            progress(r0 * self.chunk * self.members.len() as u64);
        }
        Ok(())
    }

    /// Writes the logical array (degraded members rebuilt on the fly) to `out`.
    pub fn read_to(&self, out: &mut dyn Write, progress: &dyn Fn(u64)) -> Result<u64, ParityError> {
        let mut written = 0u64;
        self.for_each_row(&[], progress, |row, by_role| {
            for &m in &self.geometry.row(row).data {
                out.write_all(&by_role[m]).map_err(|e| ParityError::Io {
                    path: PathBuf::from("--out"),
                    source: e,
                })?;
                written += self.chunk;
            }
            Ok(())
        })?;
        Ok(written)
    }

    /// Writes the data area of member `role` as the kernel had it (rebuilt from the others).
    pub fn rebuild_to(
        &mut self,
        role: usize,
        out: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> Result<u64, ParityError> {
        if role >= self.members.len() {
            return Err(ParityError::Array(format!(
                "role {role} outside 0..{}",
                self.members.len()
            )));
        }
        if let Some(m) = self.members[role].take() {
            tracing::info!(path = %m.path.display(), role, "member given for the role being rebuilt is ignored");
        }
        if self.missing().len() > self.geometry.parity_disks() {
            return Err(ParityError::Array(format!(
                "too many missing members: {:?} (raid{} survives {})",
                self.missing(),
                self.geometry.level,
                self.geometry.parity_disks()
            )));
        }
        let mut written = 0u64;
        self.for_each_row(&[role], progress, |_, by_role| {
            out.write_all(&by_role[role]).map_err(|e| ParityError::Io {
                path: PathBuf::from("--out"),
                source: e,
            })?;
            written += self.chunk;
            Ok(())
        })?;
        Ok(written)
    }
}

/// One page a repair rewrote.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RepairedPage {
    pub path: PathBuf,
    pub role: usize,
    /// "data", "P" or "Q".
    pub kind: &'static str,
    /// Offset in the member's data area.
    pub member_offset: u64,
    /// Offset on the member device (data offset included): where the bytes were written.
    pub device_offset: u64,
}

/// Result of `repair`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    pub repaired: Vec<RepairedPage>,
    /// Mismatches no single member explains (RAID5, or RAID6 pages with two bad members): left as
    /// they are, since nothing says which bytes are right.
    pub unrepairable: u64,
}

impl Array {
    /// Rewrites the pages that `verify` blamed on one member with what the other members say
    /// they hold (RAID6 syndrome decoding), like mdadm's `raid6check --repair`. The only write
    /// path of this module: each page is re-read and re-checked first (a page that is consistent
    /// by now, or no longer blamed on the same member, is left alone), written with the member
    /// opened write-only for that page, synced, then read back. The caller must keep the array
    /// from changing meanwhile (`mdadm --readonly` or stopped).
    pub fn repair(&self, mismatches: &[Mismatch]) -> Result<RepairReport, ParityError> {
        let mut report = RepairReport::default();
        if self.geometry.level != 6 || !self.missing().is_empty() {
            report.unrepairable = mismatches.len() as u64;
            return Ok(report);
        }
        let map0 = self.geometry.row(0);
        let k = map0.slot_member.len();
        let pq = Pq::new(k)?;
        let mut seen = std::collections::HashSet::new();
        for mm in mismatches {
            let Some(role) = mm.bad_role else {
                report.unrepairable += 1;
                continue;
            };
            if !seen.insert((role, mm.member_offset)) {
                continue;
            }
            let map = self.geometry.row(mm.row);
            let order = self.shard_order(&map);
            let Some(slot) = order.iter().position(|o| *o == Some(role)) else {
                report.unrepairable += 1;
                continue;
            };
            // The page of every member, in codec order.
            let mut pages = vec![vec![0u8; PAGE]; order.len()];
            for (s, o) in order.iter().enumerate() {
                if let Some(r) = o
                    && let Some(m) = &self.members[*r]
                {
                    m.file
                        .read_exact_at(&mut pages[s], m.data_offset + mm.member_offset)
                        .map_err(|e| member_err(&m.path, format!("read failed: {e}")))?;
                }
            }
            let still_blamed = {
                let sh: Vec<&[u8]> = pages.iter().map(|v| &v[..]).collect();
                pq.verify(&sh[..k], sh[k], sh[k + 1], PAGE)?
                    .iter()
                    .any(|b| match b.member {
                        Some(Member::Data(d)) => d == slot,
                        Some(Member::P) => slot == k,
                        Some(Member::Q) => slot == k + 1,
                        None => false,
                    })
            };
            if !still_blamed {
                continue;
            }
            {
                let mut sh: Vec<&mut [u8]> = pages.iter_mut().map(|v| &mut v[..]).collect();
                pq.decoder(&[slot])?.apply(&mut sh)?;
            }
            let sh: Vec<&[u8]> = pages.iter().map(|v| &v[..]).collect();
            if !pq.verify(&sh[..k], sh[k], sh[k + 1], PAGE)?.is_empty() {
                report.unrepairable += 1;
                continue;
            }
            let Some(m) = &self.members[role] else {
                report.unrepairable += 1;
                continue;
            };
            let at = m.data_offset + mm.member_offset;
            tracing::warn!(path = %m.path.display(), role, offset = at, "repair: rewriting one page from parity");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&m.path)
                .map_err(|e| member_err(&m.path, format!("cannot open for the repair: {e}")))?;
            f.write_all_at(&pages[slot], at)
                .and_then(|_| f.sync_all())
                .map_err(|e| member_err(&m.path, format!("repair write failed: {e}")))?;
            let mut back = vec![0u8; PAGE];
            m.file
                .read_exact_at(&mut back, at)
                .map_err(|e| member_err(&m.path, format!("read back failed: {e}")))?;
            if back != pages[slot] {
                return Err(member_err(
                    &m.path,
                    format!("repair: page at {at} reads back different from what was written"),
                ));
            }
            report.repaired.push(RepairedPage {
                path: m.path.clone(),
                role,
                kind: if slot < k {
                    "data"
                } else if slot == k {
                    "P"
                } else {
                    "Q"
                },
                member_offset: mm.member_offset,
                device_offset: at,
            });
        }
        Ok(report)
    }

    /// Copies the data area of member `role` as it is on disk (no parity math): the reference that
    /// `rebuild_to` is compared with.
    pub fn extract_to(
        &self,
        role: usize,
        out: &mut dyn Write,
        progress: &dyn Fn(u64),
    ) -> Result<u64, ParityError> {
        let m = self
            .members
            .get(role)
            .and_then(|m| m.as_ref())
            .ok_or_else(|| {
                ParityError::Array(format!("role {role} is not among the members given"))
            })?;
        let mut buf = vec![0u8; (self.batch_rows() * self.chunk) as usize];
        let mut off = 0u64;
        while off < self.member_data {
            let n = (buf.len() as u64).min(self.member_data - off) as usize;
            m.file
                .read_exact_at(&mut buf[..n], m.data_offset + off)
                .map_err(|e| member_err(&m.path, format!("read failed: {e}")))?;
            out.write_all(&buf[..n]).map_err(|e| ParityError::Io {
                path: PathBuf::from("--out"),
                source: e,
            })?;
            off += n as u64;
            progress(off);
        }
        Ok(off)
    }
}

/// Refuses an output path that is (or resolves to the same inode as) one of the members.
pub fn check_out_not_member(out: &Path, members: &[&Path]) -> Result<(), ParityError> {
    let canon = |p: &Path| -> Option<PathBuf> {
        p.canonicalize().ok().or_else(|| {
            let parent = p
                .parent()
                .filter(|x| !x.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Some(parent.canonicalize().ok()?.join(p.file_name()?))
        })
    };
    let out_c = canon(out);
    let out_meta = std::fs::metadata(out).ok();
    for m in members {
        let same_path = out_c.is_some() && out_c == canon(m);
        let same_inode = match (&out_meta, std::fs::metadata(m).ok()) {
            (Some(a), Some(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        // A block device node and its /dev/disk/by-* alias share the device number.
        let same_rdev = match (&out_meta, std::fs::metadata(m).ok()) {
            (Some(a), Some(b)) => a.rdev() != 0 && a.rdev() == b.rdev(),
            _ => false,
        };
        if same_path || same_inode || same_rdev {
            return Err(member_err(
                out,
                format!(
                    "--out is the member {}: members are never written",
                    m.display()
                ),
            ));
        }
    }
    Ok(())
}
