//! Plans: the steps that take a node from what it has to what a StoragePool asks for.
//!
//! A plan is computed from machine-readable state only, before anything is written. Steps that
//! can destroy data are marked, logged with their device when run, and only planned when the pool
//! allows them (`devicePolicy: Wipe`). Anything that would destroy data without that permission,
//! or reshape what holds data, becomes a refusal instead of a step: the whole plan is then not run.

use serde::Serialize;
use tessera_crds::storage_pool::DevicePolicy;

use crate::error::Result;
use crate::inventory::signatures;
use crate::runner::Runner;

/// One command of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What it does, in words.
    pub description: String,
    /// The command (program and arguments, no shell). Serialized with secrets masked.
    #[serde(serialize_with = "masked")]
    pub command: Vec<String>,
    /// Whether it can destroy data on `device`.
    pub destructive: bool,
    /// The device it writes to, when there is one.
    pub device: Option<String>,
    /// A device node the command needs that udev creates asynchronously after an earlier step
    /// (`/dev/zvol/POOL/VOL` after `zfs create -V`): the step waits for it to appear first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<String>,
}

fn mask(a: &str) -> String {
    match a.split_once('=') {
        Some((k, _)) if k.ends_with("password") => format!("{k}=***"),
        _ => a.to_string(),
    }
}

fn masked<S: serde::Serializer>(cmd: &[String], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(cmd.iter().map(|a| mask(a)))
}

impl Step {
    pub fn new(description: impl Into<String>, command: &[&str]) -> Step {
        Step {
            description: description.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            destructive: false,
            device: None,
            wait_for: None,
        }
    }

    /// Wait for `path` to exist before running (see [`Step::wait_for`]).
    pub fn after_device(mut self, path: &str) -> Step {
        self.wait_for = Some(path.to_string());
        self
    }

    /// The command as it may be logged: values of `password=` / `mutual_password=` arguments
    /// (CHAP secrets) are masked.
    pub fn shown(&self) -> String {
        self.command
            .iter()
            .map(|a| mask(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A write of `value` to the sysfs / module parameter `path` (no program runs: the agent writes
    /// the file itself; the command reads `sysfs-write PATH VALUE` in logs and reports).
    pub fn sysfs(description: impl Into<String>, path: &str, value: &str) -> Step {
        Step::new(description, &[SYSFS_WRITE, path, value])
    }

    pub fn destructive(mut self, device: &str) -> Step {
        self.destructive = true;
        self.device = Some(device.to_string());
        self
    }
}

/// The pseudo-program of [`Step::sysfs`].
pub const SYSFS_WRITE: &str = "sysfs-write";

/// Why a plan cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// CamelCase reason for conditions and Events, e.g. `DeviceHasSignature`.
    pub reason: String,
    pub message: String,
}

/// A plan: steps to run in order, or refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub refusals: Vec<Refusal>,
    /// Parts of the spec that were left out of this plan without blocking the rest (for example an
    /// iSCSI export whose CHAP secret is not available); reported as a condition.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Refusal>,
}

impl Plan {
    pub fn refuse(&mut self, reason: &str, message: impl Into<String>) {
        self.refusals.push(Refusal {
            reason: reason.into(),
            message: message.into(),
        });
    }

    /// Nothing to do (the node already matches).
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty() && self.refusals.is_empty()
    }

    /// Refusals win: when anything is refused, nothing runs.
    pub fn finish(mut self) -> Plan {
        if !self.refusals.is_empty() {
            self.steps.clear();
        }
        self
    }
}

/// Vet a device that is about to become part of a pool: it must exist, and carry no signature
/// (filesystem, partition table, RAID or LVM or ZFS label) unless the pool says `devicePolicy:
/// Wipe`, in which case a destructive `wipefs --all` step for it is planned. Returns whether the
/// device may be used (after the planned wipe).
pub fn vet_new_device(
    r: &dyn Runner,
    plan: &mut Plan,
    device: &str,
    policy: DevicePolicy,
) -> Result<bool> {
    if !r.exists(device) {
        plan.refuse(
            "DeviceNotFound",
            format!("{device} does not exist on this node"),
        );
        return Ok(false);
    }
    let sigs = signatures(r, device)?;
    if sigs.is_empty() {
        return Ok(true);
    }
    match policy {
        DevicePolicy::Refuse => {
            plan.refuse(
                "DeviceHasSignature",
                format!(
                    "{device} carries {} and devicePolicy is Refuse; nothing was written",
                    sigs.join(", ")
                ),
            );
            Ok(false)
        }
        DevicePolicy::Wipe => {
            plan.steps.push(
                Step::new(
                    format!("wipe signatures {} from {device}", sigs.join(", ")),
                    &["wipefs", "--all", device],
                )
                .destructive(device),
            );
            Ok(true)
        }
    }
}

/// What a backend observes of a pool after apply: the agent's share of the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Health in the backend's words (ZFS `ONLINE`/`DEGRADED`, MD `clean`/`degraded`, LVM ...).
    pub health: String,
    /// Whether redundancy is reduced (a member missing, faulted or offline).
    pub degraded: bool,
    /// Why (a CamelCase reason) and in words.
    pub degraded_reason: String,
    pub degraded_message: String,
    pub members: Vec<tessera_crds::storage_pool::MemberStatus>,
    pub capacity: Option<tessera_crds::storage_pool::Capacity>,
    pub operation: Option<tessera_crds::storage_pool::Operation>,
    /// Size and allocated bytes (for metrics), when known.
    pub size_bytes: Option<u64>,
    pub allocated_bytes: Option<u64>,
    /// Further conditions: (type, status, reason, message), e.g. `CapacityHigh`.
    pub conditions: Vec<(String, bool, String, String)>,
}

/// Parse a size as the tools and the CRD write it: `1048576`, `64K`, `1M`, `16k`, `1.5G`, `2Ti`,
/// `500Gi` (binary multiples; `Ki`/`K`/`k` are all 1024). `None` when it is not a size.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim().trim_end_matches(['i', 'B', 'b']);
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        "P" | "p" => 1 << 50,
        _ => return None,
    };
    Some((n * mult as f64).round() as u64)
}

/// Bytes of a Kubernetes quantity (`2Ti`, `500Gi`, `64Mi`, `1G`, `1000`).
pub fn quantity_bytes(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<u64> {
    tessera_crds::common::quantity_bytes(q)
        .ok()
        .and_then(|b| u64::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_the_tools_write_them() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("16k"), Some(16384));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("2Ti"), Some(2 << 40));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("lz4"), None);
    }
}
