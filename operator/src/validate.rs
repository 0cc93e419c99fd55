//! Checks that CEL cannot make (or makes poorly): cron syntax, cross-references inside a spec,
//! and layouts that are legal but risky (warnings).

use std::collections::BTreeSet;

use tessera_crds::StoragePoolSpec;
use tessera_crds::gpu_raid_policy::GpuRaidPolicySpec;
use tessera_crds::storage_pool::VdevType;

/// Problems found in a spec: errors make it unusable, warnings are reported and tolerated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Validate a 5-field cron expression (minute hour day-of-month month day-of-week), with `*`,
/// numbers, ranges `a-b`, steps `*/n` or `a-b/n`, and lists `a,b`.
pub fn cron(expr: &str) -> Result<(), String> {
    const BOUNDS: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "cron schedule {expr:?} needs 5 fields, has {}",
            fields.len()
        ));
    }
    for (field, (name, lo, hi)) in fields.iter().zip(BOUNDS) {
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(s) = step {
                match s.parse::<u32>() {
                    Ok(n) if n >= 1 && n <= hi => {}
                    _ => return Err(format!("cron {name} step {s:?} in {expr:?} is not 1-{hi}")),
                }
            }
            if range == "*" {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let parse = |v: &str| v.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n));
            match (parse(a), parse(b)) {
                (Some(x), Some(y)) if x <= y => {}
                _ => {
                    return Err(format!(
                        "cron {name} {range:?} in {expr:?} is not within {lo}-{hi}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks of a StoragePool spec beyond its CEL rules.
pub fn storage_pool(spec: &StoragePoolSpec) -> Findings {
    let mut f = Findings::default();
    if let Some(s) = &spec.scrub_schedule
        && let Err(e) = cron(s)
    {
        f.errors.push(format!("scrubSchedule: {e}"));
    }
    for d in spec.devices() {
        if !d.starts_with("/dev/") {
            f.errors.push(format!("device {d:?} is not a /dev path"));
        } else if !d.starts_with("/dev/disk/by-")
            && !d.starts_with("/dev/md")
            && !d.starts_with("/dev/mapper/")
        {
            f.warnings.push(format!(
                "device {d} is a kernel name that can change across reboots; prefer /dev/disk/by-id/..."
            ));
        }
    }
    if let Some(z) = &spec.zfs {
        for v in &z.special {
            if v.vdev_type == VdevType::Stripe && v.devices.len() == 1 {
                f.warnings.push(format!(
                    "special vdev {} is a single device: losing it loses the whole pool; mirror it in production",
                    v.devices[0]
                ));
            }
        }
        let datasets: BTreeSet<&str> = z.datasets.iter().map(|d| d.name.as_str()).collect();
        let volumes: BTreeSet<&str> = z.volumes.iter().map(|v| v.name.as_str()).collect();
        for ds in z.datasets.iter().chain(std::iter::empty()) {
            if let Some(s) = &ds.snapshots
                && let Err(e) = cron(&s.schedule)
            {
                f.errors.push(format!("dataset {} snapshots: {e}", ds.name));
            }
        }
        for v in &z.volumes {
            if let Some(s) = &v.snapshots
                && let Err(e) = cron(&s.schedule)
            {
                f.errors.push(format!("volume {} snapshots: {e}", v.name));
            }
            // A zvol's parent datasets are created implicitly; the zvol itself must not shadow a dataset.
            if datasets.contains(v.name.as_str()) {
                f.errors
                    .push(format!("volume {} has the name of a dataset", v.name));
            }
        }
        if let Some(ex) = &z.exports {
            for n in &ex.nfs {
                if !datasets.contains(n.dataset.as_str()) {
                    f.errors.push(format!(
                        "NFS export of {} names no dataset in spec.zfs.datasets",
                        n.dataset
                    ));
                }
            }
            for i in &ex.iscsi {
                if !volumes.contains(i.volume.as_str()) {
                    f.errors.push(format!(
                        "iSCSI export of {} names no volume in spec.zfs.volumes",
                        i.volume
                    ));
                }
                if i.chap_secret_ref.is_none() {
                    f.warnings.push(format!(
                        "iSCSI target {} has no CHAP: only for fully trusted networks",
                        i.target_iqn
                    ));
                }
            }
        }
        if z.capacity_warning_percent.is_some_and(|p| p > 90) {
            f.warnings.push(
                "capacityWarningPercent above 90: ZFS latency degrades sharply when nearly full"
                    .into(),
            );
        }
    }
    if let Some(m) = &spec.md
        && let Some(c) = &m.chunk
    {
        let kib =
            c[..c.len() - 1].parse::<u64>().unwrap_or(0) * if c.ends_with('M') { 1024 } else { 1 };
        if !(4..=65536).contains(&kib) || !kib.is_power_of_two() {
            f.errors.push(format!(
                "md chunk {c} must be a power of two from 4K to 64M"
            ));
        }
    }
    f
}

/// Checks of a GpuRaidPolicy spec beyond its CEL rules.
pub fn gpu_raid_policy(spec: &GpuRaidPolicySpec) -> Findings {
    let mut f = Findings::default();
    if let Some(s) = &spec.verify_schedule
        && let Err(e) = cron(s)
    {
        f.errors.push(format!("verifySchedule: {e}"));
    }
    let min = spec
        .min_stripe_bytes
        .as_ref()
        .map(|q| tessera_crds::parse_quantity(&q.0));
    let max = spec
        .max_vram_bytes
        .as_ref()
        .map(|q| tessera_crds::parse_quantity(&q.0));
    if let Some(Err(e)) = &min {
        f.errors.push(format!("minStripeBytes: {e}"));
    }
    if let Some(Err(e)) = &max {
        f.errors.push(format!("maxVramBytes: {e}"));
    }
    if let (Some(Ok(min)), Some(Ok(max))) = (min, max)
        && max < min
    {
        f.errors.push(format!(
            "maxVramBytes ({max}) is smaller than minStripeBytes ({min}): no request could run"
        ));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_accepts_common_forms_and_rejects_garbage() {
        for ok in [
            "0 3 1 * *",
            "*/15 * * * *",
            "0 0-6/2 * * 1-5",
            "5,35 * * 1,7 0",
        ] {
            assert!(cron(ok).is_ok(), "{ok}");
        }
        for bad in [
            "monthly",
            "0 3 1 *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
        ] {
            assert!(cron(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn llm_sample_warns_about_its_single_device_special_vdev_only() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/samples/storagepool-llm.yaml"
        ))
        .unwrap();
        let sp: tessera_crds::StoragePool = serde_yaml::from_str(&text).unwrap();
        let f = storage_pool(&sp.spec);
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(f.warnings[0].contains("single device"));
    }

    #[test]
    fn dangling_export_and_bad_chunk_are_errors() {
        let y = r#"
backend: zfs
nodeName: n
zfs:
  poolName: p
  vdevs: [{type: mirror, devices: [/dev/disk/by-id/a, /dev/disk/by-id/b]}]
  exports:
    nfs: [{dataset: missing, clients: [{host: "*"}]}]
"#;
        let spec: StoragePoolSpec = serde_yaml::from_str(y).unwrap();
        let f = storage_pool(&spec);
        assert_eq!(f.errors.len(), 1, "{f:?}");
        let y = "backend: md\nnodeName: n\nmd: {name: a, level: 1, chunk: 3K, devices: [/dev/sda, /dev/sdb]}\n";
        let spec: StoragePoolSpec = serde_yaml::from_str(y).unwrap();
        let f = storage_pool(&spec);
        assert_eq!(f.errors.len(), 1, "{f:?}");
        assert_eq!(f.warnings.len(), 2, "kernel names warned: {f:?}");
    }
}
