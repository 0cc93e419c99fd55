//! Parity verify of an MD array with the Tessera parity engine (`tessera-parity`), the job a
//! GpuRaidPolicy's `verifySchedule` runs: the array is put read-only (`mdadm --readonly`) so that
//! nothing changes under the check, its members are read directly and every row's parity is
//! recomputed and compared, then the array goes back to read-write (also when the check fails).
//!
//! With `repair`, pages that RAID6's syndrome blames on one member are then rewritten on that
//! member from the others (the rebuild job of the policy, page by page, like mdadm's `raid6check
//! --repair`), still under `--readonly`; md's stripe cache is cycled and the device's buffers are
//! flushed so that nothing serves the old bytes, and the array is verified again. Pages no single
//! member explains (RAID5, two bad members) are reported, never guessed at. Rebuilding a whole
//! replaced member stays with the kernel (`mdadm --add`).
//!
//! The members are read with the CPU engine's best SIMD backend; the GPU engine is not wired into
//! the agent yet (it would need the `cuda` build of the agent on GPU nodes), and the report says
//! which backend ran.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use tessera_crds::storage_pool::MdArraySpec;
use tessera_parity::md::{Array, Overrides};
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
    let paths: Vec<PathBuf> = active.iter().map(|(_, d)| PathBuf::from(d)).collect();
    let dev = format!("/dev/md/{}", spec.name);
    let ro = Step::new(
        format!("put {} read-only for the parity verify", spec.name),
        &["mdadm", "--readonly", &dev],
    );
    let rw = Step::new(
        format!("put {} back read-write", spec.name),
        &["mdadm", "--readwrite", &dev],
    );
    if !dry_run {
        crate::apply::run_step(r, &ro, false)?;
    }
    let result = (|| {
        let arr = Array::open(&paths, &Overrides::default()).map_err(|e| Error::Parse {
            what: format!("members of {}", spec.name),
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
        let t = Instant::now();
        let rep = arr.verify(&|_| {}).map_err(|e| Error::Parse {
            what: format!("parity verify of {}", spec.name),
            message: e.to_string(),
        })?;
        let seconds = t.elapsed().as_secs_f64();
        let data_bytes = arr.size() as f64;
        let mut blamed: Vec<String> = rep
            .mismatches
            .iter()
            .filter_map(|m| m.bad_role)
            .filter_map(|role| {
                active
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
                what: format!("parity repair of {}", spec.name),
                message: e.to_string(),
            })?;
            for p in &fixed.repaired {
                warn!(array = %spec.name, device = %p.path.display(), offset = p.device_offset,
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
                forget_cached_pages(r, &st.kernel_name, &dev);
            }
            let again = arr.verify(&|_| {}).map_err(|e| Error::Parse {
                what: format!("parity verify of {} after the repair", spec.name),
                message: e.to_string(),
            })?;
            mismatches_after_repair = Some(again.mismatches.len() as u64);
        }
        Ok(VerifyOutcome {
            array: spec.name.clone(),
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
    if !dry_run && let Err(e) = crate::apply::run_step(r, &rw, false) {
        warn!(array = %spec.name, error = %e, "could not put the array back read-write");
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
fn forget_cached_pages(r: &dyn Runner, kernel_name: &str, dev: &str) {
    let attr = format!("/sys/block/{kernel_name}/md/stripe_cache_size");
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
    if let Err(e) = r.check("blockdev", &["--flushbufs", dev]) {
        warn!(%dev, error = %e, "could not flush the array's buffers");
    }
}

/// The smallest `stripe_cache_size` md accepts (raid5.c refuses 16 and below).
const STRIPE_CACHE_MIN: &str = "17";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    #[test]
    fn cached_pages_are_forgotten_then_the_cache_size_restored() {
        let r = ScriptedRunner::default();
        r.file("/sys/block/md127/md/stripe_cache_size", "256\n");
        r.ok("blockdev --flushbufs", "");
        forget_cached_pages(&r, "md127", "/dev/md/data");
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
