//! The Linux MD backend: state from `mdadm --detail --export` and `/sys/block/mdX/md/*`, plans
//! for `mdadm --create`, growing, spares and bitmaps.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tessera_crds::storage_pool::{
    Capacity, DevicePolicy, MdArraySpec, MdBitmap, MemberStatus, Operation, OperationKind,
};

use crate::error::{Error, Result};
use crate::plan::{Observed, Plan, Step, vet_new_device};
use crate::runner::Runner;

/// An array as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MdState {
    pub level: String,
    pub raid_devices: u32,
    pub metadata: String,
    pub uuid: String,
    /// Member device -> role (`0`, `1`, ... or `spare`, `faulty`).
    pub members: BTreeMap<String, String>,
    /// Kernel name, e.g. `md127`.
    pub kernel_name: String,
}

/// Parse `mdadm --detail --export /dev/md/NAME`.
pub fn parse_detail_export(text: &str) -> Result<MdState> {
    let kv: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| kv.get(k).map(|v| v.trim().to_string());
    let level = get("MD_LEVEL").ok_or_else(|| Error::Parse {
        what: "mdadm --detail --export".into(),
        message: "no MD_LEVEL".into(),
    })?;
    let mut members = BTreeMap::new();
    for (k, v) in &kv {
        if let Some(rest) = k
            .strip_prefix("MD_DEVICE_")
            .and_then(|r| r.strip_suffix("_DEV"))
        {
            let role = kv
                .get(format!("MD_DEVICE_{rest}_ROLE").as_str())
                .map(|r| r.trim().to_string())
                .unwrap_or_default();
            members.insert(v.trim().to_string(), role);
        }
    }
    Ok(MdState {
        level,
        raid_devices: get("MD_DEVICES").and_then(|d| d.parse().ok()).unwrap_or(0),
        metadata: get("MD_METADATA").unwrap_or_default(),
        uuid: get("MD_UUID").unwrap_or_default(),
        members,
        kernel_name: get("MD_DEVNAME").unwrap_or_default(),
    })
}

/// Current state of array `name`, or `None` when it does not exist.
pub fn state(r: &dyn Runner, name: &str) -> Result<Option<MdState>> {
    let dev = format!("/dev/md/{name}");
    let out = r.run("mdadm", &["--detail", "--export", &dev])?;
    if !out.success {
        return Ok(None);
    }
    let mut st = parse_detail_export(&out.stdout)?;
    // MD_DEVNAME is the /dev/md/ name; the kernel name comes from the symlink target.
    let target = r.canonical(&dev);
    if target != dev
        && let Some(n) = target.rsplit('/').next()
    {
        st.kernel_name = n.to_string();
    }
    Ok(Some(st))
}

/// Health and progress from sysfs: (degraded member count, sync action, percent done).
pub fn sysfs_status(r: &dyn Runner, kernel_name: &str) -> Result<(u32, String, Option<f64>)> {
    let base = format!("/sys/block/{kernel_name}/md");
    let degraded = r
        .read(&format!("{base}/degraded"))?
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let action = r
        .read(&format!("{base}/sync_action"))?
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "idle".into());
    // sync_completed: "done / total" in sectors, or "none".
    let progress = r.read(&format!("{base}/sync_completed"))?.and_then(|s| {
        let (a, b) = s.trim().split_once('/')?;
        let (a, b): (f64, f64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (b > 0.0).then(|| (a / b * 1000.0).round() / 10.0)
    });
    Ok((degraded, action, progress))
}

/// Map an MD sync action to the status operation kind.
pub fn operation_kind(action: &str) -> Option<OperationKind> {
    match action {
        "resync" => Some(OperationKind::Resync),
        "recover" => Some(OperationKind::Rebuild),
        "check" | "repair" => Some(OperationKind::Check),
        "reshape" => Some(OperationKind::Resync),
        _ => None,
    }
}

/// State of member `device` from `/sys/block/mdX/md/dev-NAME/state` (`faulty`, `in_sync`,
/// `spare`, `write_mostly`, ... comma-separated). `mdadm --detail --export` reports a failed member's
/// role as `spare`, so the kernel's word is the one that counts: `faulty` when it says so, `active`
/// for `in_sync`, else the kernel's first word (or the role when sysfs has nothing).
pub fn member_state(r: &dyn Runner, kernel_name: &str, device: &str, role: &str) -> Result<String> {
    let name = device.rsplit('/').next().unwrap_or(device);
    let path = format!("/sys/block/{kernel_name}/md/dev-{name}/state");
    let Some(text) = r.read(&path)? else {
        return Ok(if role == "faulty" { "faulty" } else { "active" }.into());
    };
    let words: Vec<&str> = text.trim().split(',').collect();
    Ok(if words.contains(&"faulty") {
        "faulty".into()
    } else if words.contains(&"in_sync") {
        "active".into()
    } else {
        words.first().copied().unwrap_or("unknown").to_string()
    })
}

/// Observe the array after apply: health, members, resync / check progress.
pub fn observe(r: &dyn Runner, spec: &MdArraySpec) -> Result<Option<Observed>> {
    let Some(st) = state(r, &spec.name)? else {
        return Ok(None);
    };
    let (degraded, action, progress) = sysfs_status(r, &st.kernel_name)?;
    let mut members = Vec::new();
    for (d, role) in &st.members {
        let state = member_state(r, &st.kernel_name, d, role)?;
        members.push(MemberStatus {
            device: d.clone(),
            role: Some(role.clone()),
            state: Some(state),
            smart: None,
        });
    }
    let faulty = members
        .iter()
        .filter(|m| m.state.as_deref() == Some("faulty"))
        .count() as u32;
    let missing = degraded.max(faulty);
    let size = r
        .read(&format!("/sys/block/{}/size", st.kernel_name))?
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|sectors| sectors * 512);
    Ok(Some(Observed {
        health: if missing > 0 { "degraded" } else { "clean" }.into(),
        degraded: missing > 0,
        degraded_reason: if missing > 0 {
            "MembersMissing"
        } else {
            "AllMembersActive"
        }
        .into(),
        degraded_message: format!("{missing} member(s) missing or faulty"),
        members,
        capacity: size.map(|b| Capacity {
            size: Some(Quantity(b.to_string())),
            allocated: None,
            free: None,
        }),
        operation: operation_kind(&action).map(|kind| Operation {
            kind,
            progress: progress.map(|p| format!("{p}")),
            eta: None,
        }),
        size_bytes: size,
        allocated_bytes: None,
        conditions: Vec::new(),
    }))
}

/// Steps that destroy array `spec` (deletionPolicy Destroy): stop it, then erase the MD superblock
/// of every member it has now, so that no member assembles again. Empty when it does not exist.
pub fn destroy_plan(r: &dyn Runner, spec: &MdArraySpec) -> Result<Plan> {
    let mut plan = Plan::default();
    let Some(st) = state(r, &spec.name)? else {
        return Ok(plan);
    };
    let dev = format!("/dev/md/{}", spec.name);
    plan.steps.push(
        Step::new(
            format!("stop array {} (uuid {})", spec.name, st.uuid),
            &["mdadm", "--stop", &dev],
        )
        .destructive(&dev),
    );
    for d in st.members.keys() {
        plan.steps.push(
            Step::new(
                format!("erase the MD superblock of {d} (member of {})", spec.name),
                &["mdadm", "--zero-superblock", d],
            )
            .destructive(d),
        );
    }
    Ok(plan)
}

/// The command that starts a parity check of the array (on `scrubSchedule` or `--scrub-now`).
pub fn scrub_steps(spec: &MdArraySpec) -> Vec<Step> {
    if spec.level == 0 {
        return Vec::new();
    }
    let dev = format!("/dev/md/{}", spec.name);
    vec![Step::new(
        format!("start a parity check of {}", spec.name),
        &["mdadm", "--action=check", &dev],
    )]
}

fn level_name(level: u8) -> String {
    format!("raid{level}")
}

/// Plan array `spec` on this node.
pub fn plan(r: &dyn Runner, spec: &MdArraySpec, policy: DevicePolicy) -> Result<Plan> {
    let mut plan = Plan::default();
    let dev = format!("/dev/md/{}", spec.name);
    match state(r, &spec.name)? {
        None => {
            // New array: every member must be free of signatures unless the pool allows wiping.
            for d in spec.devices.iter().chain(&spec.spares) {
                vet_new_device(r, &mut plan, d, policy)?;
            }
            let level = format!("--level={}", spec.level);
            let n = format!("--raid-devices={}", spec.devices.len());
            let meta = format!("--metadata={}", spec.metadata.as_deref().unwrap_or("1.2"));
            let name = format!("--name={}", spec.name);
            let bitmap = match spec.bitmap {
                MdBitmap::Internal if spec.level != 0 => "--bitmap=internal",
                _ => "--bitmap=none",
            };
            let mut cmd: Vec<String> = [
                "mdadm", "--create", &dev, "--run", &level, &n, &meta, &name, bitmap,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(c) = &spec.chunk {
                cmd.push(format!("--chunk={c}"));
            }
            if let Some(l) = &spec.layout {
                cmd.push(format!("--layout={l}"));
            }
            if !spec.spares.is_empty() {
                cmd.push(format!("--spare-devices={}", spec.spares.len()));
            }
            cmd.extend(spec.devices.iter().cloned());
            cmd.extend(spec.spares.iter().cloned());
            let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let mut step = Step::new(
                format!(
                    "create RAID{} array {} over {} devices",
                    spec.level,
                    spec.name,
                    spec.devices.len()
                ),
                &refs,
            );
            step.destructive = true;
            step.device = Some(spec.devices.join(","));
            plan.steps.push(step);
        }
        Some(st) => {
            if st.level != level_name(spec.level) {
                plan.refuse("ReshapeRefused", format!("array {} is {}, the spec asks for {}; changing the level of an array that holds data is refused", spec.name, st.level, level_name(spec.level)));
            }
            let active: Vec<&String> = st
                .members
                .iter()
                .filter(|(_, role)| role.parse::<u32>().is_ok())
                .map(|(d, _)| d)
                .collect();
            let canon = |d: &str| r.canonical(d);
            let present: Vec<String> = st.members.keys().map(|d| canon(d)).collect();
            for m in &active {
                if !spec.devices.iter().any(|d| canon(d) == canon(m)) {
                    plan.refuse("RemovalRefused", format!("{m} is an active member of {} but not in the spec; removing members is refused", spec.name));
                }
            }
            let mut grow = 0;
            for d in spec.devices.iter().chain(&spec.spares) {
                if present.contains(&canon(d)) {
                    continue;
                }
                if !vet_new_device(r, &mut plan, d, policy)? {
                    continue;
                }
                plan.steps.push(
                    Step::new(
                        format!("add {d} to {}", spec.name),
                        &["mdadm", "--add", &dev, d],
                    )
                    .destructive(d),
                );
                if spec.devices.contains(d) {
                    grow += 1;
                }
            }
            if grow > 0 {
                let n = format!("--raid-devices={}", st.raid_devices + grow);
                plan.steps.push(Step::new(
                    format!(
                        "grow {} to {} devices (kernel reshape)",
                        spec.name,
                        st.raid_devices + grow
                    ),
                    &["mdadm", "--grow", &dev, &n],
                ));
            }
        }
    }
    Ok(plan.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    const DETAIL: &str = include_str!("../tests/fixtures/mdadm-detail-export.txt");

    fn spec(devices: &[&str]) -> MdArraySpec {
        serde_yaml::from_str(&format!(
            "{{name: data, level: 6, chunk: 64K, layout: left-symmetric, devices: [{}]}}",
            devices.join(", ")
        ))
        .unwrap()
    }

    #[test]
    fn destroy_stops_the_array_and_erases_every_member_superblock() {
        let r = ScriptedRunner::default();
        r.ok("mdadm --detail --export /dev/md/data", DETAIL);
        let p = destroy_plan(&r, &spec(&["/dev/vda"])).unwrap();
        let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
        assert_eq!(cmds[0], "mdadm --stop /dev/md/data");
        // The members the array has now (from mdadm), not the spec's list.
        assert_eq!(cmds.len(), 1 + 6, "{cmds:?}");
        assert!(cmds.contains(&"mdadm --zero-superblock /dev/vdc".to_string()));
        assert!(p.steps.iter().all(|s| s.destructive));
        let r = ScriptedRunner::default();
        r.fail("mdadm --detail", "mdadm: cannot open /dev/md/data");
        assert!(
            destroy_plan(&r, &spec(&["/dev/vda"]))
                .unwrap()
                .steps
                .is_empty()
        );
    }

    #[test]
    fn detail_export_parses_members_and_roles() {
        let st = parse_detail_export(DETAIL).unwrap();
        assert_eq!(st.level, "raid6");
        assert_eq!(st.raid_devices, 6);
        assert_eq!(st.members.len(), 6);
        assert_eq!(st.members["/dev/vdc"], "2");
    }

    #[test]
    fn new_array_on_clean_disks_is_created_with_the_spec() {
        let r = ScriptedRunner::default();
        r.fail("mdadm --detail", "mdadm: cannot open /dev/md/data");
        r.ok("wipefs", "");
        let p = plan(
            &r,
            &spec(&["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"]),
            DevicePolicy::Refuse,
        )
        .unwrap();
        assert!(p.refusals.is_empty());
        assert_eq!(p.steps.len(), 1);
        let cmd = p.steps[0].command.join(" ");
        assert_eq!(
            cmd,
            "mdadm --create /dev/md/data --run --level=6 --raid-devices=4 --metadata=1.2 --name=data --bitmap=internal --chunk=64K --layout=left-symmetric /dev/vda /dev/vdb /dev/vdc /dev/vdd"
        );
        assert!(p.steps[0].destructive);
    }

    #[test]
    fn a_disk_with_a_filesystem_is_refused_without_wipe_and_wiped_with_it() {
        let r = ScriptedRunner::default();
        r.fail("mdadm --detail", "no such array");
        r.ok(
            "wipefs --no-act --json /dev/vdb",
            r#"{"signatures":[{"type":"ext4","offset":"0x438"}]}"#,
        );
        r.ok("wipefs", "");
        let devs = ["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"];
        let p = plan(&r, &spec(&devs), DevicePolicy::Refuse).unwrap();
        assert!(p.steps.is_empty(), "nothing runs when anything is refused");
        assert_eq!(p.refusals[0].reason, "DeviceHasSignature");
        assert!(
            p.refusals[0]
                .message
                .contains("/dev/vdb carries ext4@0x438")
        );
        let p = plan(&r, &spec(&devs), DevicePolicy::Wipe).unwrap();
        assert_eq!(p.steps[0].command, ["wipefs", "--all", "/dev/vdb"]);
        assert_eq!(p.steps[0].device.as_deref(), Some("/dev/vdb"));
    }

    #[test]
    fn a_missing_device_is_refused() {
        let r = ScriptedRunner::default();
        r.fail("mdadm --detail", "no such array");
        r.ok("wipefs", "");
        r.missing("/dev/vdc");
        let p = plan(
            &r,
            &spec(&["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"]),
            DevicePolicy::Wipe,
        )
        .unwrap();
        assert!(p.steps.is_empty());
        assert_eq!(p.refusals[0].reason, "DeviceNotFound");
    }

    #[test]
    fn existing_matching_array_is_a_noop_and_reshapes_are_refused() {
        let r = ScriptedRunner::default();
        r.ok("mdadm --detail --export /dev/md/data", DETAIL);
        let all = [
            "/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd", "/dev/vde", "/dev/vdf",
        ];
        assert!(
            plan(&r, &spec(&all), DevicePolicy::Refuse)
                .unwrap()
                .is_noop()
        );
        let p = plan(&r, &spec(&all[..5]), DevicePolicy::Refuse).unwrap();
        assert_eq!(p.refusals[0].reason, "RemovalRefused");
        let mut s5 = spec(&all);
        s5.level = 5;
        assert_eq!(
            plan(&r, &s5, DevicePolicy::Refuse).unwrap().refusals[0].reason,
            "ReshapeRefused"
        );
    }

    #[test]
    fn adding_a_member_grows_the_array() {
        let r = ScriptedRunner::default();
        r.ok("mdadm --detail --export /dev/md/data", DETAIL);
        r.ok("wipefs", "");
        let all = [
            "/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd", "/dev/vde", "/dev/vdf", "/dev/vdg",
        ];
        let p = plan(&r, &spec(&all), DevicePolicy::Refuse).unwrap();
        let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
        assert_eq!(
            cmds,
            [
                "mdadm --add /dev/md/data /dev/vdg",
                "mdadm --grow /dev/md/data --raid-devices=7"
            ]
        );
    }

    #[test]
    fn a_failed_member_is_faulty_though_mdadm_calls_it_spare() {
        let degraded = include_str!("../tests/fixtures/mdadm-detail-export-degraded.txt");
        let st = parse_detail_export(degraded).unwrap();
        assert_eq!(
            st.members["/dev/vdb"], "spare",
            "what mdadm 4.2 reports after --fail"
        );
        let r = ScriptedRunner::default();
        r.ok("mdadm --detail --export /dev/md/data", degraded);
        r.file("/sys/block/data/md/degraded", "1\n")
            .file("/sys/block/data/md/sync_action", "idle\n")
            .file("/sys/block/data/md/dev-vdb/state", "faulty\n")
            .file("/sys/block/data/md/dev-vda/state", "in_sync\n");
        let o = observe(&r, &spec(&["/dev/vda"])).unwrap().unwrap();
        assert!(o.degraded);
        assert_eq!(o.health, "degraded");
        let state = |d: &str| {
            o.members
                .iter()
                .find(|m| m.device == d)
                .and_then(|m| m.state.clone())
        };
        assert_eq!(state("/dev/vdb").as_deref(), Some("faulty"));
        assert_eq!(state("/dev/vda").as_deref(), Some("active"));
        assert!(o.operation.is_none());
    }

    #[test]
    fn sysfs_progress_and_degraded() {
        let r = ScriptedRunner::default();
        r.file("/sys/block/md127/md/degraded", "1\n")
            .file("/sys/block/md127/md/sync_action", "recover\n")
            .file("/sys/block/md127/md/sync_completed", "262144 / 1048576\n");
        let (deg, action, progress) = sysfs_status(&r, "md127").unwrap();
        assert_eq!((deg, action.as_str(), progress), (1, "recover", Some(25.0)));
        assert_eq!(operation_kind(&action), Some(OperationKind::Rebuild));
    }
}
