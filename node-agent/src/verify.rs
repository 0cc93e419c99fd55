//! Parity verify of an MD array with the Tessera parity engine (`tessera-parity`), the job a
//! GpuRaidPolicy's `verifySchedule` runs: the array is put read-only (`mdadm --readonly`) so that
//! nothing changes under the check, its members are read directly and every row's parity is
//! recomputed and compared, then the array goes back to read-write (also when the check fails).
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
}

/// Verify array `spec`. `dry_run`: only the read-only switch is skipped (reading changes nothing),
/// so a dry run still reports the real parity state.
pub fn verify_md(r: &dyn Runner, spec: &MdArraySpec, dry_run: bool) -> Result<VerifyOutcome> {
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
