//! The LVM backend: state from `pvs` / `vgs` / `lvs --reportformat json --units b --nosuffix`,
//! plans for `pvcreate`, `vgcreate` / `vgextend` and `lvcreate` / `lvextend` (linear, striped and
//! dm-raid levels). Every command goes through the `lvm` multiplexer (`lvm pvs ...`), which works
//! on hosts whose `pvs`/`lvcreate`... symlinks are missing.
//!
//! Growing is allowed (a new PV is added with `vgextend`, a larger size runs `lvextend`).
//! Removing a PV, shrinking an LV and changing an LV's type, stripes or stripe size are refused:
//! they move or destroy data.

use std::collections::BTreeMap;

use serde::Deserialize;
use tessera_crds::storage_pool::{
    Capacity, DevicePolicy, LogicalVolume, LvType, LvmSpec, MemberStatus, Operation, OperationKind,
};

use crate::error::{Error, Result};
use crate::plan::{Observed, Plan, Step, quantity_bytes, vet_new_device};
use crate::runner::Runner;

/// Fields asked of `pvs`.
pub const PV_FIELDS: &str = "pv_name,vg_name,pv_size,pv_free,pv_attr";
/// Fields asked of `vgs`.
pub const VG_FIELDS: &str =
    "vg_name,vg_size,vg_free,vg_extent_size,pv_count,lv_count,vg_missing_pv_count";
/// Fields asked of `lvs` (segment fields make one row per segment; the first one is kept).
pub const LV_FIELDS: &str = "lv_name,vg_name,segtype,data_stripes,stripe_size,lv_size,lv_attr,lv_health_status,copy_percent,raid_sync_action";

/// A physical volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Pv {
    pub pv_name: String,
    #[serde(default)]
    pub vg_name: String,
    #[serde(default)]
    pub pv_size: String,
    #[serde(default)]
    pub pv_free: String,
    #[serde(default)]
    pub pv_attr: String,
}

impl Pv {
    /// `pv_attr` third character `m`: the PV is missing.
    pub fn missing(&self) -> bool {
        self.pv_attr.chars().nth(2) == Some('m')
    }
}

/// A volume group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Vg {
    pub vg_name: String,
    #[serde(default)]
    pub vg_size: String,
    #[serde(default)]
    pub vg_free: String,
    #[serde(default)]
    pub vg_extent_size: String,
    #[serde(default)]
    pub pv_count: String,
    #[serde(default)]
    pub lv_count: String,
    #[serde(default)]
    pub vg_missing_pv_count: String,
}

/// A logical volume (its first segment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Lv {
    pub lv_name: String,
    #[serde(default)]
    pub vg_name: String,
    #[serde(default)]
    pub segtype: String,
    #[serde(default)]
    pub data_stripes: String,
    #[serde(default)]
    pub stripe_size: String,
    #[serde(default)]
    pub lv_size: String,
    #[serde(default)]
    pub lv_attr: String,
    #[serde(default)]
    pub lv_health_status: String,
    #[serde(default)]
    pub copy_percent: String,
    #[serde(default)]
    pub raid_sync_action: String,
}

impl Lv {
    /// Reduced redundancy: `lv_health_status` `partial` / `refresh needed` / `degraded`, or the
    /// health character of `lv_attr` (9th) `p` (partial) / `r` (refresh needed).
    pub fn degraded(&self) -> bool {
        let h = self.lv_health_status.trim();
        matches!(h, "partial" | "refresh needed" | "degraded")
            || matches!(self.lv_attr.chars().nth(8), Some('p' | 'r'))
    }

    /// Sync progress in percent for RAID LVs still synchronising (`copy_percent` < 100).
    pub fn sync_percent(&self) -> Option<f64> {
        let p: f64 = self.copy_percent.trim().parse().ok()?;
        (p < 100.0).then_some(p)
    }
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}
#[derive(Deserialize)]
struct PvSection {
    #[serde(default)]
    pv: Vec<Pv>,
}
#[derive(Deserialize)]
struct VgSection {
    #[serde(default)]
    vg: Vec<Vg>,
}
#[derive(Deserialize)]
struct LvSection {
    #[serde(default)]
    lv: Vec<Lv>,
}

fn parse_err(what: &str, e: serde_json::Error) -> Error {
    Error::Parse {
        what: what.into(),
        message: e.to_string(),
    }
}

/// Parse `pvs --reportformat json`.
pub fn parse_pvs(json: &str) -> Result<Vec<Pv>> {
    let r: Report<PvSection> = serde_json::from_str(json).map_err(|e| parse_err("pvs", e))?;
    Ok(r.report.into_iter().flat_map(|s| s.pv).collect())
}

/// Parse `vgs --reportformat json`.
pub fn parse_vgs(json: &str) -> Result<Vec<Vg>> {
    let r: Report<VgSection> = serde_json::from_str(json).map_err(|e| parse_err("vgs", e))?;
    Ok(r.report.into_iter().flat_map(|s| s.vg).collect())
}

/// Parse `lvs --reportformat json`; with segment fields LVM prints one row per segment, the first
/// row of each LV is kept (type, stripes and stripe size of an LV are those of its first segment).
pub fn parse_lvs(json: &str) -> Result<Vec<Lv>> {
    let r: Report<LvSection> = serde_json::from_str(json).map_err(|e| parse_err("lvs", e))?;
    let mut out: Vec<Lv> = Vec::new();
    for lv in r.report.into_iter().flat_map(|s| s.lv) {
        if !out
            .iter()
            .any(|o| o.lv_name == lv.lv_name && o.vg_name == lv.vg_name)
        {
            out.push(lv);
        }
    }
    Ok(out)
}

/// The volume group, its PVs and LVs as LVM reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LvmState {
    pub vg: Option<Vg>,
    /// Every PV on the node (also those of other VGs or of none).
    pub pvs: Vec<Pv>,
    /// LVs of the VG (internal `[..._rimage_N]` sub-LVs are not listed without `-a`).
    pub lvs: Vec<Lv>,
}

pub(crate) fn report_args<'a>(cmd: &'a str, fields: &'a str) -> [&'a str; 8] {
    [
        cmd,
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        fields,
    ]
}

/// Read the state of volume group `vg`.
pub fn state(r: &dyn Runner, vg: &str) -> Result<LvmState> {
    let pvs = parse_pvs(&r.check("lvm", &report_args("pvs", PV_FIELDS))?)?;
    let mut args = report_args("vgs", VG_FIELDS).to_vec();
    args.push(vg);
    let out = r.run("lvm", &args)?;
    if !out.success {
        // `vgs NAME` fails when the VG does not exist ("Volume group "x" not found").
        return Ok(LvmState {
            vg: None,
            pvs,
            lvs: Vec::new(),
        });
    }
    let vg_row = parse_vgs(&out.stdout)?
        .into_iter()
        .find(|v| v.vg_name == vg);
    let mut args = report_args("lvs", LV_FIELDS).to_vec();
    args.push(vg);
    let lvs = parse_lvs(&r.check("lvm", &args)?)?;
    Ok(LvmState {
        vg: vg_row,
        pvs,
        lvs,
    })
}

fn segtype(t: LvType) -> &'static str {
    match t {
        LvType::Linear => "linear",
        LvType::Striped => "striped",
        LvType::Raid1 => "raid1",
        LvType::Raid5 => "raid5",
        LvType::Raid6 => "raid6",
        LvType::Raid10 => "raid10",
    }
}

/// LVM reports raid5 as `raid5` (its default left-symmetric layout, also `raid5_ls`) and raid6 as
/// `raid6` (`raid6_zr`); a plain one-stripe LV as `linear`.
fn segtype_matches(want: LvType, have: &str) -> bool {
    let w = segtype(want);
    have == w || have.starts_with(&format!("{w}_"))
}

fn num(s: &str) -> Option<u64> {
    s.trim().parse::<f64>().ok().map(|f| f as u64)
}

/// Default data stripes of `lvcreate --type T` without `-i`.
fn default_stripes(t: LvType) -> u32 {
    match t {
        LvType::Linear | LvType::Raid1 => 1,
        LvType::Striped | LvType::Raid5 | LvType::Raid10 => 2,
        LvType::Raid6 => 3,
    }
}

fn lv_create_step(vg: &str, lv: &LogicalVolume, bytes: u64) -> Step {
    let size = format!("{bytes}b");
    let mut cmd: Vec<String> = vec![
        "lvm".into(),
        "lvcreate".into(),
        "--yes".into(),
        "--type".into(),
        segtype(lv.lv_type).into(),
    ];
    if let Some(i) = lv.stripes
        && lv.lv_type != LvType::Linear
        && lv.lv_type != LvType::Raid1
    {
        cmd.extend(["--stripes".into(), i.to_string()]);
    }
    if let Some(sz) = &lv.stripe_size {
        cmd.extend(["--stripesize".into(), sz.clone()]);
    }
    cmd.extend([
        "--size".into(),
        size,
        "--name".into(),
        lv.name.clone(),
        vg.into(),
    ]);
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    Step::new(
        format!(
            "create {} LV {vg}/{} of {bytes} bytes",
            segtype(lv.lv_type),
            lv.name
        ),
        &refs,
    )
}

/// Plan volume group `spec` on this node.
pub fn plan(r: &dyn Runner, spec: &LvmSpec, policy: DevicePolicy) -> Result<Plan> {
    let st = state(r, &spec.vg_name)?;
    plan_from_state(r, spec, policy, &st)
}

/// Plan from an already read state (unit tests feed fixtures here).
pub fn plan_from_state(
    r: &dyn Runner,
    spec: &LvmSpec,
    policy: DevicePolicy,
    st: &LvmState,
) -> Result<Plan> {
    let mut plan = Plan::default();
    let vg = spec.vg_name.as_str();
    let canon = |d: &str| r.canonical(d);
    let pv_of = |d: &str| st.pvs.iter().find(|p| canon(&p.pv_name) == canon(d));

    // Devices that must become PVs of this VG.
    let mut new_pvs: Vec<&str> = Vec::new();
    for d in &spec.pvs {
        match pv_of(d) {
            Some(p) if p.vg_name == vg => {}
            Some(p) if !p.vg_name.is_empty() => plan.refuse(
                "DeviceInUse",
                format!(
                    "{d} is a physical volume of volume group {}; moving it is refused",
                    p.vg_name
                ),
            ),
            // A PV of no VG carries an LVM2_member signature: treated like any signature.
            _ => {
                if vet_new_device(r, &mut plan, d, policy)? {
                    new_pvs.push(d);
                }
            }
        }
    }
    // PVs of the VG that the spec no longer lists.
    for p in st.pvs.iter().filter(|p| p.vg_name == vg) {
        if !spec.pvs.iter().any(|d| canon(d) == canon(&p.pv_name)) {
            plan.refuse(
                "RemovalRefused",
                format!(
                    "{} is a physical volume of {vg} but not in the spec; removing physical volumes is refused",
                    p.pv_name
                ),
            );
        }
    }
    for d in &new_pvs {
        plan.steps.push(
            Step::new(
                format!("initialise {d} as an LVM physical volume"),
                &["lvm", "pvcreate", "--yes", d],
            )
            .destructive(d),
        );
    }
    match &st.vg {
        None => {
            let mut cmd = vec!["lvm", "vgcreate", "--yes", vg];
            cmd.extend(new_pvs.iter().copied());
            plan.steps.push(Step::new(
                format!("create volume group {vg} over {} PVs", new_pvs.len()),
                &cmd,
            ));
        }
        Some(_) if !new_pvs.is_empty() => {
            let mut cmd = vec!["lvm", "vgextend", "--yes", vg];
            cmd.extend(new_pvs.iter().copied());
            plan.steps.push(Step::new(
                format!("grow volume group {vg} by {} PVs", new_pvs.len()),
                &cmd,
            ));
        }
        Some(_) => {}
    }

    // Extent size: from the VG, or LVM's default of 4 MiB for a new one.
    let extent = st
        .vg
        .as_ref()
        .and_then(|v| num(&v.vg_extent_size))
        .filter(|e| *e > 0)
        .unwrap_or(4 << 20);
    for lv in &spec.logical_volumes {
        let Some(want) = quantity_bytes(&lv.size) else {
            return Err(Error::InvalidPool(format!(
                "size {} of LV {} is not a quantity",
                lv.size.0, lv.name
            )));
        };
        let Some(have) = st.lvs.iter().find(|l| l.lv_name == lv.name) else {
            plan.steps.push(lv_create_step(vg, lv, want));
            continue;
        };
        let full = format!("{vg}/{}", lv.name);
        if !segtype_matches(lv.lv_type, &have.segtype) {
            plan.refuse(
                "ReshapeRefused",
                format!(
                    "LV {full} is {}, the spec asks for {}; converting a volume that holds data is refused",
                    have.segtype,
                    segtype(lv.lv_type)
                ),
            );
            continue;
        }
        let stripes = num(&have.data_stripes).unwrap_or(1);
        let want_stripes = lv.stripes.unwrap_or_else(|| default_stripes(lv.lv_type)) as u64;
        if lv.stripes.is_some() && stripes != want_stripes {
            plan.refuse(
                "ReshapeRefused",
                format!(
                    "LV {full} has {stripes} data stripes, the spec asks for {want_stripes}; reshaping is refused"
                ),
            );
            continue;
        }
        if let Some(sz) = &lv.stripe_size {
            let want_sz = crate::plan::parse_size(sz);
            let have_sz = num(&have.stripe_size);
            if want_sz.is_some() && have_sz.is_some_and(|h| h > 0) && want_sz != have_sz {
                plan.refuse(
                    "ReshapeRefused",
                    format!(
                        "LV {full} has stripe size {} bytes, the spec asks for {sz}; reshaping is refused",
                        have.stripe_size
                    ),
                );
                continue;
            }
        }
        let have_bytes = num(&have.lv_size).unwrap_or(0);
        // lvcreate/lvextend round up to whole extents across all data stripes.
        let granule = extent * stripes.max(1);
        let want_rounded = want.div_ceil(granule) * granule;
        if want_rounded < have_bytes {
            plan.refuse(
                "ShrinkRefused",
                format!(
                    "LV {full} is {have_bytes} bytes, the spec asks for {want}; shrinking a volume that holds data is refused"
                ),
            );
        } else if want_rounded > have_bytes {
            let size = format!("{want}b");
            plan.steps.push(Step::new(
                format!("grow LV {full} from {have_bytes} to {want} bytes"),
                &["lvm", "lvextend", "--yes", "--size", &size, &full],
            ));
        }
    }
    Ok(plan.finish())
}

/// Observe the VG after apply: health, members, capacity, RAID sync progress.
/// Steps that destroy volume group `spec` (deletionPolicy Destroy): remove the VG with its logical
/// volumes, then the PV labels of its physical volumes. Empty when the VG does not exist.
pub fn destroy_plan(r: &dyn Runner, spec: &LvmSpec) -> Result<Plan> {
    let st = state(r, &spec.vg_name)?;
    let mut plan = Plan::default();
    if st.vg.is_none() {
        return Ok(plan);
    }
    let vg = spec.vg_name.as_str();
    let lvs: Vec<&str> = st.lvs.iter().map(|l| l.lv_name.as_str()).collect();
    plan.steps.push(
        Step::new(
            format!("remove volume group {vg} and its logical volumes {lvs:?}"),
            &["lvm", "vgremove", "--force", "--yes", vg],
        )
        .destructive(&format!("/dev/{vg}")),
    );
    for pv in st.pvs.iter().filter(|p| p.vg_name == vg) {
        plan.steps.push(
            Step::new(
                format!("erase the LVM label of {} (PV of {vg})", pv.pv_name),
                &["lvm", "pvremove", "--yes", &pv.pv_name],
            )
            .destructive(&pv.pv_name),
        );
    }
    Ok(plan)
}

pub fn observe(r: &dyn Runner, spec: &LvmSpec) -> Result<Option<Observed>> {
    let st = state(r, &spec.vg_name)?;
    Ok(observe_state(spec, &st))
}

/// Observation from a state (unit tests feed fixtures here).
pub fn observe_state(spec: &LvmSpec, st: &LvmState) -> Option<Observed> {
    let vg = st.vg.as_ref()?;
    let missing_pvs = num(&vg.vg_missing_pv_count).unwrap_or(0);
    let degraded_lvs: Vec<&Lv> = st.lvs.iter().filter(|l| l.degraded()).collect();
    let degraded = missing_pvs > 0 || !degraded_lvs.is_empty();
    let mut o = Observed {
        health: if degraded { "degraded" } else { "ok" }.into(),
        degraded,
        ..Default::default()
    };
    if degraded {
        o.degraded_reason = "MembersMissing".into();
        let mut parts = Vec::new();
        if missing_pvs > 0 {
            parts.push(format!("{missing_pvs} physical volume(s) missing"));
        }
        for l in &degraded_lvs {
            let h = if l.lv_health_status.trim().is_empty() {
                format!("attr {}", l.lv_attr)
            } else {
                l.lv_health_status.trim().to_string()
            };
            parts.push(format!("LV {}/{}: {h}", spec.vg_name, l.lv_name));
        }
        o.degraded_message = parts.join("; ");
    } else {
        o.degraded_reason = "AllMembersActive".into();
        o.degraded_message = format!(
            "{} PV(s), {} LV(s) healthy",
            vg.pv_count.trim(),
            vg.lv_count.trim()
        );
    }
    o.members = st
        .pvs
        .iter()
        .filter(|p| p.vg_name == spec.vg_name)
        .map(|p| MemberStatus {
            device: p.pv_name.clone(),
            role: Some("pv".into()),
            state: Some(if p.missing() { "missing" } else { "active" }.into()),
            smart: None,
        })
        .collect();
    let size = num(&vg.vg_size);
    let free = num(&vg.vg_free);
    o.size_bytes = size;
    o.allocated_bytes = size.zip(free).map(|(s, f)| s.saturating_sub(f));
    o.capacity = Some(Capacity {
        size: size.map(|b| k8s_openapi::apimachinery::pkg::api::resource::Quantity(b.to_string())),
        allocated: o
            .allocated_bytes
            .map(|b| k8s_openapi::apimachinery::pkg::api::resource::Quantity(b.to_string())),
        free: free.map(|b| k8s_openapi::apimachinery::pkg::api::resource::Quantity(b.to_string())),
    });
    // The slowest RAID LV still synchronising, or a check / repair in progress.
    let mut ops: BTreeMap<String, (OperationKind, Option<f64>)> = BTreeMap::new();
    for l in &st.lvs {
        let action = l.raid_sync_action.trim();
        let kind = match action {
            "check" | "repair" => Some(OperationKind::Check),
            "recover" => Some(OperationKind::Rebuild),
            "resync" | "reshape" => Some(OperationKind::Resync),
            _ => l.sync_percent().map(|_| OperationKind::Resync),
        };
        if let Some(k) = kind {
            ops.insert(l.lv_name.clone(), (k, l.sync_percent()));
        }
    }
    o.operation = ops
        .values()
        .min_by(|a, b| {
            a.1.unwrap_or(0.0)
                .partial_cmp(&b.1.unwrap_or(0.0))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(kind, p)| Operation {
            kind: *kind,
            progress: p.map(|p| format!("{p}")),
            eta: None,
        });
    Some(o)
}

/// Commands that start a scrub (`lvchange --syncaction check`) of every RAID LV of the spec.
pub fn scrub_steps(spec: &LvmSpec) -> Vec<Step> {
    spec.logical_volumes
        .iter()
        .filter(|l| {
            matches!(
                l.lv_type,
                LvType::Raid1 | LvType::Raid5 | LvType::Raid6 | LvType::Raid10
            )
        })
        .map(|l| {
            let full = format!("{}/{}", spec.vg_name, l.name);
            Step::new(
                format!("start a parity check of {full}"),
                &["lvm", "lvchange", "--syncaction", "check", &full],
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    const PVS: &str = include_str!("../tests/fixtures/lvm-pvs.json");
    const VGS: &str = include_str!("../tests/fixtures/lvm-vgs.json");
    const LVS: &str = include_str!("../tests/fixtures/lvm-lvs.json");
    const LVS_DEGRADED: &str = include_str!("../tests/fixtures/lvm-lvs-degraded.json");
    const VGS_DEGRADED: &str = include_str!("../tests/fixtures/lvm-vgs-degraded.json");

    fn spec(pvs: &[&str], lvs: &str) -> LvmSpec {
        serde_yaml::from_str(&format!(
            "{{vgName: tvg, pvs: [{}], logicalVolumes: {lvs}}}",
            pvs.join(", ")
        ))
        .unwrap()
    }

    const SIX: [&str; 6] = [
        "/dev/vdg", "/dev/vdh", "/dev/vdi", "/dev/vdj", "/dev/vdk", "/dev/vdl",
    ];
    const LVS_SPEC: &str = "[{name: r6, type: raid6, stripes: 4, stripeSize: 64K, size: 64Mi}, {name: r5, type: raid5, stripes: 3, stripeSize: 64K, size: 48Mi}]";

    fn existing() -> LvmState {
        LvmState {
            vg: parse_vgs(VGS).unwrap().into_iter().next(),
            pvs: parse_pvs(PVS).unwrap(),
            lvs: parse_lvs(LVS).unwrap(),
        }
    }

    #[test]
    fn destroy_removes_the_vg_then_the_labels_of_its_pvs_only() {
        let r = ScriptedRunner::default();
        r.ok("lvm pvs", PVS).ok("lvm vgs", VGS).ok("lvm lvs", LVS);
        let p = destroy_plan(&r, &spec(&SIX, LVS_SPEC)).unwrap();
        let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
        assert_eq!(cmds[0], "lvm vgremove --force --yes tvg");
        assert_eq!(cmds.len(), 1 + 6);
        assert_eq!(cmds[1], "lvm pvremove --yes /dev/vdg");
        assert!(p.steps.iter().all(|s| s.destructive && s.device.is_some()));
        assert!(
            p.steps[0].description.contains("r6"),
            "{}",
            p.steps[0].description
        );
        // Gone already: nothing to do.
        let r = ScriptedRunner::default();
        r.ok("lvm pvs", PVS)
            .fail("lvm vgs", "Volume group \"tvg\" not found");
        assert!(
            destroy_plan(&r, &spec(&SIX, LVS_SPEC))
                .unwrap()
                .steps
                .is_empty()
        );
    }

    #[test]
    fn reports_parse_from_the_kernel_lane() {
        let st = existing();
        let vg = st.vg.as_ref().unwrap();
        assert_eq!(vg.vg_name, "tvg");
        assert_eq!(vg.pv_count.trim(), "6");
        assert_eq!(st.pvs.iter().filter(|p| p.vg_name == "tvg").count(), 6);
        let r6 = st.lvs.iter().find(|l| l.lv_name == "r6").unwrap();
        assert_eq!(r6.segtype, "raid6");
        assert_eq!(num(&r6.data_stripes), Some(4));
        assert_eq!(num(&r6.stripe_size), Some(65536));
        assert!(!r6.degraded());
    }

    #[test]
    fn new_vg_creates_pvs_vg_and_raid_lvs() {
        let r = ScriptedRunner::default();
        r.ok("wipefs", "");
        let st = LvmState::default();
        let p = plan_from_state(&r, &spec(&SIX, LVS_SPEC), DevicePolicy::Refuse, &st).unwrap();
        assert!(p.refusals.is_empty(), "{p:?}");
        let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
        assert_eq!(cmds.len(), 6 + 1 + 2);
        assert_eq!(cmds[0], "lvm pvcreate --yes /dev/vdg");
        assert!(p.steps[0].destructive);
        assert_eq!(p.steps[0].device.as_deref(), Some("/dev/vdg"));
        assert_eq!(
            cmds[6],
            "lvm vgcreate --yes tvg /dev/vdg /dev/vdh /dev/vdi /dev/vdj /dev/vdk /dev/vdl"
        );
        assert_eq!(
            cmds[7],
            "lvm lvcreate --yes --type raid6 --stripes 4 --stripesize 64K --size 67108864b --name r6 tvg"
        );
        assert_eq!(
            cmds[8],
            "lvm lvcreate --yes --type raid5 --stripes 3 --stripesize 64K --size 50331648b --name r5 tvg"
        );
    }

    #[test]
    fn second_apply_on_the_created_vg_is_a_noop() {
        let r = ScriptedRunner::default();
        let p =
            plan_from_state(&r, &spec(&SIX, LVS_SPEC), DevicePolicy::Refuse, &existing()).unwrap();
        assert!(p.is_noop(), "{p:?}");
        assert!(
            r.history().is_empty(),
            "no device was probed: {:?}",
            r.history()
        );
    }

    #[test]
    fn a_signature_is_refused_without_wipe_and_wiped_with_it() {
        let r = ScriptedRunner::default();
        r.ok("wipefs", "");
        r.ok(
            "wipefs --no-act --json /dev/vdh",
            r#"{"signatures":[{"device":"vdh","offset":"0x438","type":"ext4"}]}"#,
        );
        let st = LvmState::default();
        let s = spec(&SIX, LVS_SPEC);
        let p = plan_from_state(&r, &s, DevicePolicy::Refuse, &st).unwrap();
        assert!(p.steps.is_empty());
        assert_eq!(p.refusals[0].reason, "DeviceHasSignature");
        assert!(
            p.refusals[0]
                .message
                .contains("/dev/vdh carries ext4@0x438")
        );
        let p = plan_from_state(&r, &s, DevicePolicy::Wipe, &st).unwrap();
        let wipe = p.steps.iter().find(|s| s.command[0] == "wipefs").unwrap();
        assert_eq!(wipe.command, ["wipefs", "--all", "/dev/vdh"]);
        assert_eq!(wipe.device.as_deref(), Some("/dev/vdh"));
        assert!(wipe.destructive);
    }

    #[test]
    fn growth_adds_a_pv_and_extends_an_lv() {
        let r = ScriptedRunner::default();
        r.ok("wipefs", "");
        let mut pvs = SIX.to_vec();
        pvs.push("/dev/vdm");
        let lvs = LVS_SPEC.replace("size: 64Mi", "size: 128Mi");
        let p = plan_from_state(&r, &spec(&pvs, &lvs), DevicePolicy::Refuse, &existing()).unwrap();
        let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
        assert_eq!(
            cmds,
            [
                "lvm pvcreate --yes /dev/vdm",
                "lvm vgextend --yes tvg /dev/vdm",
                "lvm lvextend --yes --size 134217728b tvg/r6",
            ]
        );
    }

    #[test]
    fn shrink_removal_and_reshape_are_refused() {
        let r = ScriptedRunner::default();
        let st = existing();
        let small = LVS_SPEC.replace("size: 64Mi", "size: 32Mi");
        let p = plan_from_state(&r, &spec(&SIX, &small), DevicePolicy::Refuse, &st).unwrap();
        assert_eq!(p.refusals[0].reason, "ShrinkRefused");
        assert!(p.steps.is_empty());
        let p = plan_from_state(&r, &spec(&SIX[..5], LVS_SPEC), DevicePolicy::Refuse, &st).unwrap();
        assert_eq!(p.refusals[0].reason, "RemovalRefused");
        assert!(p.refusals[0].message.contains("/dev/vdl"));
        let r5_as_r6 = LVS_SPEC.replace("type: raid5, stripes: 3", "type: raid6, stripes: 3");
        let p = plan_from_state(&r, &spec(&SIX, &r5_as_r6), DevicePolicy::Refuse, &st).unwrap();
        assert_eq!(p.refusals[0].reason, "ReshapeRefused");
        let wider = LVS_SPEC.replace("stripes: 4", "stripes: 3");
        let p = plan_from_state(&r, &spec(&SIX, &wider), DevicePolicy::Refuse, &st).unwrap();
        assert_eq!(p.refusals[0].reason, "ReshapeRefused");
        assert!(p.refusals[0].message.contains("4 data stripes"));
    }

    #[test]
    fn a_pv_of_another_vg_is_refused_even_with_wipe() {
        let r = ScriptedRunner::default();
        let mut st = existing();
        st.vg = None;
        st.lvs.clear();
        let s: LvmSpec = serde_yaml::from_str("{vgName: other, pvs: [/dev/vdg]}").unwrap();
        let p = plan_from_state(&r, &s, DevicePolicy::Wipe, &st).unwrap();
        assert_eq!(p.refusals[0].reason, "DeviceInUse");
    }

    #[test]
    fn observation_reports_capacity_health_and_sync() {
        let st = existing();
        let o = observe_state(&spec(&SIX, LVS_SPEC), &st).unwrap();
        assert!(!o.degraded);
        assert_eq!(o.members.len(), 6);
        assert!(o.size_bytes.unwrap() > 0);
        assert!(o.allocated_bytes.unwrap() > 0);
        // Captured after one raid6 leg was replaced by the dm error target: "refresh needed".
        let st = LvmState {
            vg: parse_vgs(VGS_DEGRADED).unwrap().into_iter().next(),
            pvs: st.pvs,
            lvs: parse_lvs(LVS_DEGRADED).unwrap(),
        };
        let o = observe_state(&spec(&SIX, LVS_SPEC), &st).unwrap();
        assert!(o.degraded, "{o:?}");
        assert_eq!(o.health, "degraded");
        assert!(
            o.degraded_message.contains("LV tvg/r6"),
            "{}",
            o.degraded_message
        );
    }

    #[test]
    fn a_missing_pv_or_a_partial_lv_is_degraded() {
        let mut st = existing();
        let o = observe_state(&spec(&SIX, LVS_SPEC), &st).unwrap();
        assert!(!o.degraded);
        if let Some(vg) = st.vg.as_mut() {
            vg.vg_missing_pv_count = "1".into();
        }
        st.pvs[5].pv_attr = "a-m".into();
        st.lvs[0].lv_health_status = "partial".into();
        let o = observe_state(&spec(&SIX, LVS_SPEC), &st).unwrap();
        assert!(o.degraded);
        assert!(o.degraded_message.contains("1 physical volume(s) missing"));
        assert!(o.degraded_message.contains("LV tvg/r5: partial"));
        assert_eq!(o.members[5].state.as_deref(), Some("missing"));
    }

    #[test]
    fn sync_progress_becomes_the_operation() {
        let lv = |name: &str, pct: &str, action: &str| Lv {
            lv_name: name.into(),
            segtype: "raid6".into(),
            copy_percent: pct.into(),
            raid_sync_action: action.into(),
            ..Default::default()
        };
        let st = LvmState {
            vg: Some(Vg {
                vg_name: "tvg".into(),
                ..Default::default()
            }),
            pvs: Vec::new(),
            lvs: vec![lv("r6", "42.50", "resync"), lv("r5", "100.00", "idle")],
        };
        let o = observe_state(&spec(&SIX, LVS_SPEC), &st).unwrap();
        let op = o.operation.unwrap();
        assert_eq!(op.kind, OperationKind::Resync);
        assert_eq!(op.progress.as_deref(), Some("42.5"));
    }

    #[test]
    fn scrub_checks_only_raid_lvs() {
        let s = spec(
            &SIX,
            "[{name: a, type: raid6, size: 1Gi}, {name: b, type: linear, size: 1Gi}]",
        );
        let steps = scrub_steps(&s);
        assert_eq!(steps.len(), 1);
        assert_eq!(
            steps[0].command.join(" "),
            "lvm lvchange --syncaction check tvg/a"
        );
    }
}
