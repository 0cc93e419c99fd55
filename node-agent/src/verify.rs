//! Parity verify of an MD array, or of an LVM raid5/raid6 LV, with the Tessera parity engine
//! (`tessera-parity`), the job a GpuRaidPolicy's `verifySchedule` runs: the array is put read-only
//! (`mdadm --readonly`, `lvchange --permission r`) so that nothing changes under the check, its
//! members are read directly and every row's parity is recomputed and compared, then the array
//! goes back to read-write (also when the check fails).
//!
//! With `repair`, pages that RAID6's syndrome blames on one member are then rewritten on that
//! member from the others (the rebuild job of the policy, page by page, like mdadm's `raid6check
//! --repair`), still read-only; md's stripe cache is cycled and the device's buffers are flushed
//! so that nothing serves the old bytes, and the array is verified again. Pages no single member
//! explains (RAID5, two bad members) are reported, never guessed at. Rebuilding a whole replaced
//! member stays with the kernel (`mdadm --add`, `lvconvert --repair`).
//!
//! The members are read with the CPU engine's best SIMD backend, and the report says which. The
//! data of these jobs is host data read from disks, where the CPU wins: in the same H200 bench run
//! the CPU engine computes P+Q 8+2 at 90-91 GB/s on all threads while the GPU's path for pageable
//! host buffers reaches 11-38 GB/s (1 MiB / 64 MiB shards), so `Engine::auto` would pick the CPU.
//! The agent is therefore built without the `cuda` feature.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use tessera_crds::storage_pool::{LvType, LvmSpec, MdArraySpec};
use tessera_parity::md::{Array, Overrides, parse_layout};
use tessera_parity::{Backend, Pq};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::md;
use crate::plan::Step;
use crate::runner::Runner;

/// What one verify found.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOutcome {
    pub array: String,
    /// `raid6 4+2`, `raid5 3+1`.
    pub code: String,
    pub backend: String,
    pub stripes: u64,
    /// Inconsistent 4 KiB pages.
    pub mismatches: u64,
    /// Members blamed by the RAID6 syndrome (device paths), when one member explains a page.
    pub blamed: Vec<String>,
    pub seconds: f64,
    /// Data bytes per second / 10^9.
    pub gb_per_second: f64,
    /// Pages rewritten by the repair (`/dev/vdd@16781312 data`), when one ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
    /// Inconsistent pages the repair could not attribute to one member.
    pub unrepairable: u64,
    /// Inconsistent pages found by the verify after the repair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatches_after_repair: Option<u64>,
}

/// What the verify core needs of an array, whichever tool made it.
struct Target {
    /// Name in logs and the report (`data`, `tvg/r6`).
    name: String,
    /// The array's block device (`/dev/md/data`, `/dev/tvg/r6`).
    dev: String,
    /// Member devices by role (`missing` for a gone LVM leg) and their names in the report.
    members: Vec<(usize, String)>,
    overrides: Overrides,
    read_only: Step,
    read_write: Step,
    /// The md kernel name (`md127`) whose stripe cache is cycled after a repair; dm-raid's md
    /// instance has no sysfs directory.
    md_kernel_name: Option<String>,
}

/// Verify array `spec`. `dry_run`: only the read-only switch is skipped (reading changes nothing),
/// so a dry run still reports the real parity state.
pub fn verify_md(
    r: &dyn Runner,
    spec: &MdArraySpec,
    dry_run: bool,
    repair: bool,
) -> Result<VerifyOutcome> {
    let st = md::state(r, &spec.name)?.ok_or_else(|| {
        Error::InvalidPool(format!("array {} does not exist on this node", spec.name))
    })?;
    // Active members in role order (spares and faulty members carry no data of the array).
    let mut active: Vec<(usize, String)> = st
        .members
        .iter()
        .filter_map(|(d, role)| role.parse::<usize>().ok().map(|n| (n, d.clone())))
        .collect();
    active.sort();
    let dev = format!("/dev/md/{}", spec.name);
    let target = Target {
        name: spec.name.clone(),
        read_only: Step::new(
            format!("put {} read-only for the parity verify", spec.name),
            &["mdadm", "--readonly", &dev],
        ),
        read_write: Step::new(
            format!("put {} back read-write", spec.name),
            &["mdadm", "--readwrite", &dev],
        ),
        dev,
        members: active,
        overrides: Overrides::default(),
        md_kernel_name: Some(st.kernel_name.clone()),
    };
    verify_target(r, &target, dry_run, repair)
}

/// Verify each raid5 / raid6 LV of an LVM pool: its `_rimage_N` sub-LVs are the members (dm-raid
/// keeps its superblock in the `_rmeta_N` LVs, so the geometry comes from `lvs`: segment type and
/// layout, stripe size, data stripes, data offset), the LV is made read-only (`lvchange
/// --permission r`) meanwhile. An LV still synchronising is not verified (its parity is not
/// written everywhere yet).
pub fn verify_lvm(
    r: &dyn Runner,
    spec: &LvmSpec,
    dry_run: bool,
    repair: bool,
) -> Result<Vec<VerifyOutcome>> {
    let mut out = Vec::new();
    for lv in &spec.logical_volumes {
        if !matches!(lv.lv_type, LvType::Raid5 | LvType::Raid6) {
            continue;
        }
        let target = lvm_target(r, &spec.vg_name, &lv.name)?;
        out.push(verify_target(r, &target, dry_run, repair)?);
    }
    Ok(out)
}

/// Fields of the raid LV that give its geometry.
const LV_GEOMETRY_FIELDS: &str =
    "lv_name,lv_attr,segtype,lv_layout,data_stripes,stripe_size,lv_size,data_offset,copy_percent";

fn lvm_target(r: &dyn Runner, vg: &str, lv: &str) -> Result<Target> {
    let name = format!("{vg}/{lv}");
    let mut args = crate::lvm::report_args("lvs", LV_GEOMETRY_FIELDS).to_vec();
    args.push(&name);
    let json = r.check("lvm", &args)?;
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| Error::Parse {
        what: format!("lvs {name}"),
        message: e.to_string(),
    })?;
    let row = &v["report"][0]["lv"][0];
    let field = |k: &str| row[k].as_str().unwrap_or("").trim().to_string();
    let num = |k: &str| field(k).parse::<f64>().ok().map(|f| f as u64);
    let bad = |what: &str| Error::Parse {
        what: format!("lvs {name}"),
        message: format!("no usable {what} in {row}"),
    };
    let segtype = field("segtype");
    let (level, default_layout) = if segtype.starts_with("raid6") {
        (6, "raid6_zr")
    } else if segtype.starts_with("raid5") {
        (5, "raid5_ls")
    } else {
        return Err(Error::InvalidPool(format!(
            "{name} is {segtype:?}, not a raid5/raid6 LV"
        )));
    };
    // An open LV (a mounted filesystem, a VM) would see its writes fail while it is read-only;
    // md refuses `--readonly` on an array in use for the same reason ("still in use").
    if field("lv_attr").chars().nth(5) == Some('o') {
        return Err(Error::InvalidPool(format!(
            "{name} is open (mounted or in use): parity verify skipped, it would make the LV read-only under its user"
        )));
    }
    if let Some(p) = field("copy_percent")
        .parse::<f64>()
        .ok()
        .filter(|p| *p < 100.0)
    {
        return Err(Error::InvalidPool(format!(
            "{name} is still synchronising ({p:.1}%): parity verify skipped"
        )));
    }
    // `lv_layout` reads like `raid,raid6,raid6_zr`: the most specific word names the layout.
    let layout_field = field("lv_layout");
    let layout_name = layout_field
        .split(',')
        .rfind(|w| w.starts_with(&format!("raid{level}_")))
        .unwrap_or(default_layout);
    let layout = parse_layout(layout_name).map_err(|e| Error::Parse {
        what: format!("layout of {name}"),
        message: e.to_string(),
    })?;
    let data_stripes = num("data_stripes")
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("data_stripes"))?;
    let chunk = num("stripe_size")
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("stripe_size"))?;
    let size = num("lv_size")
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("lv_size"))?;
    let raid_disks = data_stripes as usize + if level == 6 { 2 } else { 1 };
    // Device-mapper names double the dashes inside VG and LV names.
    let dm = |s: &str| s.replace('-', "--");
    // A leg whose device is gone is passed as `missing` (the members are positional here).
    let members: Vec<(usize, String)> = (0..raid_disks)
        .map(|i| {
            let p = format!("/dev/mapper/{}-{}_rimage_{i}", dm(vg), dm(lv));
            (i, if r.exists(&p) { p } else { "missing".into() })
        })
        .collect();
    let dev = format!("/dev/{vg}/{lv}");
    Ok(Target {
        read_only: Step::new(
            format!("make {name} read-only for the parity verify"),
            &["lvm", "lvchange", "--permission", "r", &name],
        ),
        read_write: Step::new(
            format!("make {name} read-write again"),
            &["lvm", "lvchange", "--permission", "rw", &name],
        ),
        name,
        dev,
        members,
        overrides: Overrides {
            level: Some(level),
            layout: Some(layout),
            chunk: Some(chunk),
            data_offset: Some(num("data_offset").unwrap_or(0)),
            raid_disks: Some(raid_disks),
            member_size: Some(size / data_stripes),
        },
        md_kernel_name: None,
    })
}

fn verify_target(r: &dyn Runner, t: &Target, dry_run: bool, repair: bool) -> Result<VerifyOutcome> {
    let paths: Vec<PathBuf> = t.members.iter().map(|(_, d)| PathBuf::from(d)).collect();
    if !dry_run {
        crate::apply::run_step(r, &t.read_only, false)?;
    }
    let result = (|| {
        let arr = Array::open(&paths, &t.overrides).map_err(|e| Error::Parse {
            what: format!("members of {}", t.name),
            message: e.to_string(),
        })?;
        let data_disks = arr.geometry.data_disks();
        let parity = arr.geometry.raid_disks - data_disks;
        let backend = if arr.geometry.level == 6 {
            Pq::new(data_disks)
                .map(|p| p.backend())
                .unwrap_or(Backend::best())
        } else {
            Backend::best()
        };
        let started = Instant::now();
        let rep = arr.verify(&|_| {}).map_err(|e| Error::Parse {
            what: format!("parity verify of {}", t.name),
            message: e.to_string(),
        })?;
        let seconds = started.elapsed().as_secs_f64();
        let data_bytes = arr.size() as f64;
        let mut blamed: Vec<String> = rep
            .mismatches
            .iter()
            .filter_map(|m| m.bad_role)
            .filter_map(|role| {
                t.members
                    .iter()
                    .find(|(n, _)| *n == role)
                    .map(|(_, d)| d.clone())
            })
            .collect();
        blamed.sort();
        blamed.dedup();
        let mut repaired = Vec::new();
        let mut unrepairable = 0;
        let mut mismatches_after_repair = None;
        if repair && !dry_run && !rep.mismatches.is_empty() {
            let fixed = arr.repair(&rep.mismatches).map_err(|e| Error::Parse {
                what: format!("parity repair of {}", t.name),
                message: e.to_string(),
            })?;
            for p in &fixed.repaired {
                warn!(array = %t.name, device = %p.path.display(), offset = p.device_offset,
                      kind = p.kind, "destructive step: rewrote one 4 KiB page from parity");
                repaired.push(format!(
                    "{}@{} {}",
                    p.path.display(),
                    p.device_offset,
                    p.kind
                ));
            }
            unrepairable = fixed.unrepairable;
            if !fixed.repaired.is_empty() {
                forget_cached_pages(r, t.md_kernel_name.as_deref(), &t.dev);
            }
            let again = arr.verify(&|_| {}).map_err(|e| Error::Parse {
                what: format!("parity verify of {} after the repair", t.name),
                message: e.to_string(),
            })?;
            mismatches_after_repair = Some(again.mismatches.len() as u64);
        }
        Ok(VerifyOutcome {
            array: t.name.clone(),
            code: format!("raid{} {data_disks}+{parity}", arr.geometry.level),
            backend: backend.name().to_string(),
            stripes: rep.stripes_checked,
            mismatches: rep.mismatches.len() as u64,
            blamed,
            seconds,
            gb_per_second: if seconds > 0.0 {
                data_bytes / seconds / 1e9
            } else {
                0.0
            },
            repaired,
            unrepairable,
            mismatches_after_repair,
        })
    })();
    if !dry_run && let Err(e) = crate::apply::run_step(r, &t.read_write, false) {
        warn!(array = %t.name, error = %e, "could not put the array back read-write");
        return Err(e);
    }
    if let Ok(o) = &result {
        info!(array = %o.array, code = %o.code, backend = %o.backend, stripes = o.stripes,
              mismatches = o.mismatches, gb_per_second = o.gb_per_second, "parity verify done");
    }
    result
}

/// After pages were rewritten under the array: shrink md's stripe cache to its minimum and back
/// (dropping the cached stripes that may hold the old bytes) and flush the array device's buffers.
/// Best effort: a failure is logged, the verify that follows still reads the members directly.
fn forget_cached_pages(r: &dyn Runner, md_kernel_name: Option<&str>, dev: &str) {
    if let Some(k) = md_kernel_name {
        let attr = format!("/sys/block/{k}/md/stripe_cache_size");
        match r.read(&attr) {
            Ok(Some(size)) => {
                let size = size.trim();
                for v in [STRIPE_CACHE_MIN, size] {
                    if let Err(e) = r.write(&attr, v) {
                        warn!(%attr, value = v, error = %e, "could not resize the stripe cache");
                    }
                }
            }
            Ok(None) => {}
            Err(e) => warn!(%attr, error = %e, "could not read the stripe cache size"),
        }
    }
    if let Err(e) = r.check("blockdev", &["--flushbufs", dev]) {
        warn!(%dev, error = %e, "could not flush the array's buffers");
    }
}

/// The smallest `stripe_cache_size` md accepts (raid5.c refuses 16 and below).
const STRIPE_CACHE_MIN: &str = "17";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    const LVS_GEOMETRY: &str = include_str!("../tests/fixtures/lvm-lvs-geometry.json");

    #[test]
    fn lvm_raid6_geometry_comes_from_lvs_and_a_gone_leg_is_missing() {
        let r = ScriptedRunner::default();
        r.ok("lvm lvs", LVS_GEOMETRY);
        r.missing("/dev/mapper/tvg-r6_rimage_3");
        let t = lvm_target(&r, "tvg", "r6").unwrap();
        assert_eq!(t.overrides.level, Some(6));
        assert_eq!(
            t.overrides.layout,
            Some(parse_layout("raid6_zr").unwrap()),
            "lvcreate's default raid6 layout"
        );
        assert_eq!(t.overrides.chunk, Some(65536));
        assert_eq!(t.overrides.raid_disks, Some(6));
        assert_eq!(t.overrides.member_size, Some(64 << 20 >> 2));
        assert_eq!(t.members.len(), 6);
        assert_eq!(t.members[0].1, "/dev/mapper/tvg-r6_rimage_0");
        assert_eq!(t.members[3].1, "missing");
        assert_eq!(
            t.read_only.command,
            ["lvm", "lvchange", "--permission", "r", "tvg/r6"]
        );
        assert!(
            r.history()[0].ends_with("tvg/r6"),
            "asks lvs about that LV only: {:?}",
            r.history()
        );
    }

    #[test]
    fn an_open_lv_is_not_made_read_only() {
        let r = ScriptedRunner::default();
        let attr = LVS_GEOMETRY
            .split("\"lv_attr\":\"")
            .nth(1)
            .and_then(|x| x.get(..10))
            .unwrap();
        assert_eq!(attr.chars().nth(5), Some('-'), "the lane's LV is not open");
        let mut open = attr.to_string();
        open.replace_range(5..6, "o");
        r.ok("lvm lvs", &LVS_GEOMETRY.replace(attr, &open));
        let e = lvm_target(&r, "tvg", "r6").err().unwrap().to_string();
        assert!(e.contains("is open (mounted or in use)"), "{e}");
        assert_eq!(r.history().len(), 1, "no lvchange ran: {:?}", r.history());
    }

    #[test]
    fn an_lv_still_syncing_is_not_verified() {
        let r = ScriptedRunner::default();
        r.ok(
            "lvm lvs",
            &LVS_GEOMETRY.replace("\"copy_percent\":\"100.00\"", "\"copy_percent\":\"42.00\""),
        );
        let e = lvm_target(&r, "tvg", "r6").err().unwrap().to_string();
        assert!(e.contains("still synchronising (42.0%)"), "{e}");
    }

    #[test]
    fn cached_pages_are_forgotten_then_the_cache_size_restored() {
        let r = ScriptedRunner::default();
        r.file("/sys/block/md127/md/stripe_cache_size", "256\n");
        r.ok("blockdev --flushbufs", "");
        forget_cached_pages(&r, Some("md127"), "/dev/md/data");
        assert_eq!(
            r.history(),
            vec![
                "write /sys/block/md127/md/stripe_cache_size 17".to_string(),
                "write /sys/block/md127/md/stripe_cache_size 256".to_string(),
                "blockdev --flushbufs /dev/md/data".to_string(),
            ]
        );
    }
}
