//! The ZFS backend (OpenZFS 2.1 command line; `zpool status -j` does not exist there, so the text
//! of `zpool status -P -p` is parsed). State from `zpool list -Hp`, `zpool status -P -p`,
//! `zpool get -Hp` and `zfs get -Hp`; plans for `zpool create` with vdev groups (stripe, mirror,
//! raidz1-3, special, log, cache, spare), pool properties, datasets and zvols with properties,
//! growth (`zpool add` of new vdev groups, a larger `volsize`), and the NFS / iSCSI exports
//! (`crate::exports`).
//!
//! Refused: removing or changing a data or special vdev (`RemovalRefused`, `ReshapeRefused`),
//! changing `ashift` or a zvol's `volblocksize`, shrinking a zvol (`ShrinkRefused`), and any new
//! device carrying a signature unless `devicePolicy: Wipe`. Log, cache and spare devices hold no
//! unique data: ones the spec no longer lists are removed with `zpool remove`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tessera_crds::storage_pool::{
    Capacity, DevicePolicy, LogBias, MemberStatus, Operation, OperationKind, SyncMode, VdevType,
    VolMode, ZfsDataset, ZfsPoolSpec, ZfsVolume,
};

use crate::error::{Error, Result};
use crate::exports::{self, ChapCredentials};
use crate::plan::{Observed, Plan, Step, parse_size, quantity_bytes, vet_new_device};
use crate::runner::Runner;

/// Allocation class of a top-level vdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Data,
    Special,
    Dedup,
    Log,
    Cache,
    Spare,
}

impl Class {
    fn keyword(self) -> Option<&'static str> {
        match self {
            Class::Data => None,
            Class::Special => Some("special"),
            Class::Dedup => Some("dedup"),
            Class::Log => Some("log"),
            Class::Cache => Some("cache"),
            Class::Spare => Some("spare"),
        }
    }
}

/// A leaf device in `zpool status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Path (with `-P`), or the `was /dev/...` path of a missing device.
    pub path: String,
    pub state: String,
}

/// A top-level vdev in `zpool status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopVdev {
    pub class: Class,
    /// `stripe` (a single device), `mirror`, `raidz1`, `raidz2`, `raidz3`, `draid...`.
    pub kind: String,
    /// Name as `zpool` shows it (`mirror-0`, or the device path of a single-device vdev).
    pub name: String,
    pub state: String,
    pub leaves: Vec<Leaf>,
}

/// A scrub or resilver, from the `scan:` lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub kind: OperationKind,
    pub in_progress: bool,
    pub percent: Option<f64>,
    /// `HH:MM:SS to go`, when ZFS estimates it.
    pub eta: Option<String>,
}

/// `zpool status -P -p POOL`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    pub name: String,
    pub state: String,
    pub scan: Option<Scan>,
    pub vdevs: Vec<TopVdev>,
}

fn perr(what: &str, message: impl Into<String>) -> Error {
    Error::Parse {
        what: what.into(),
        message: message.into(),
    }
}

fn vdev_kind(name: &str) -> Option<String> {
    // mirror-0, raidz1-0, raidz2-3, raidz-0 (older), draid2:4d:8c:1s-0
    let (base, idx) = name.rsplit_once('-')?;
    idx.parse::<u32>().ok()?;
    match base {
        "mirror" | "raidz1" | "raidz2" | "raidz3" => Some(base.to_string()),
        "raidz" => Some("raidz1".into()),
        b if b.starts_with("draid") => Some(b.to_string()),
        _ => None,
    }
}

fn parse_scan(lines: &[&str]) -> Option<Scan> {
    let text = lines.join(" ");
    let kind = if text.contains("resilver") {
        OperationKind::Resilver
    } else if text.contains("scrub") {
        OperationKind::Scrub
    } else {
        return None;
    };
    let in_progress = text.contains("in progress");
    let percent = text.split_whitespace().find_map(|w| {
        w.strip_suffix("%")
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|_| text.contains("% done"))
    });
    let eta = text
        .find(" to go")
        .and_then(|i| text[..i].split_whitespace().last())
        .filter(|t| t.contains(':'))
        .map(str::to_string);
    Some(Scan {
        kind,
        in_progress,
        percent,
        eta,
    })
}

/// Parse `zpool status -P -p POOL` (one pool).
pub fn parse_status(text: &str) -> Result<PoolStatus> {
    let what = "zpool status";
    let lines: Vec<&str> = text.lines().collect();
    let field = |key: &str| {
        lines.iter().find_map(|l| {
            l.trim_start()
                .strip_prefix(key)
                .map(|v| v.trim().to_string())
        })
    };
    let name = field("pool:").ok_or_else(|| perr(what, "no `pool:` line"))?;
    let state = field("state:").unwrap_or_default();
    // scan: its first line and the indented continuation lines.
    let mut scan_lines: Vec<&str> = Vec::new();
    if let Some(i) = lines
        .iter()
        .position(|l| l.trim_start().starts_with("scan:"))
    {
        scan_lines.push(lines[i].trim_start().trim_start_matches("scan:"));
        // continuation lines are indented with a tab; `config:` and the like are not
        for l in lines[i + 1..].iter().take_while(|l| l.starts_with('\t')) {
            scan_lines.push(l.trim());
        }
    }
    let scan = parse_scan(&scan_lines);

    let start = lines
        .iter()
        .position(|l| l.trim() == "config:")
        .ok_or_else(|| perr(what, "no `config:` section"))?;
    let mut vdevs: Vec<TopVdev> = Vec::new();
    let mut class = Class::Data;
    let mut seen_header = false;
    let mut seen_pool = false;
    for l in &lines[start + 1..] {
        let body = l.strip_prefix('\t').unwrap_or(l);
        let trimmed = body.trim();
        if trimmed.is_empty() {
            if seen_pool {
                // a blank line ends the config tree (before `errors:`)
                if vdevs.is_empty() {
                    continue;
                }
                break;
            }
            continue;
        }
        if trimmed.starts_with("errors:") {
            break;
        }
        let cols: Vec<&str> = trimmed.split_whitespace().collect();
        if !seen_header {
            if cols.first() == Some(&"NAME") {
                seen_header = true;
            }
            continue;
        }
        let depth = (body.len() - body.trim_start().len()) / 2;
        let name = cols[0];
        let st = cols.get(1).copied().unwrap_or("").to_string();
        if depth == 0 {
            if !seen_pool {
                seen_pool = true; // the pool's own line
                continue;
            }
            class = match name {
                "special" => Class::Special,
                "dedup" => Class::Dedup,
                "logs" => Class::Log,
                "cache" => Class::Cache,
                "spares" => Class::Spare,
                other => return Err(perr(what, format!("unknown section {other}"))),
            };
            continue;
        }
        // A missing device shows its guid and `was /dev/...`.
        let path = match trimmed.find(" was ") {
            Some(i) => trimmed[i + 5..]
                .split_whitespace()
                .next()
                .unwrap_or(name)
                .to_string(),
            None => name.to_string(),
        };
        if depth == 1 {
            match vdev_kind(name) {
                Some(kind) => vdevs.push(TopVdev {
                    class,
                    kind,
                    name: name.to_string(),
                    state: st,
                    leaves: Vec::new(),
                }),
                None => vdevs.push(TopVdev {
                    class,
                    kind: "stripe".into(),
                    name: path.clone(),
                    state: st.clone(),
                    leaves: vec![Leaf { path, state: st }],
                }),
            }
        } else if let Some(top) = vdevs.last_mut() {
            // replacing-N / spare-N group the old and new device of one slot: keep the leaves.
            if name.starts_with("replacing-") || name.starts_with("spare-") {
                continue;
            }
            top.leaves.push(Leaf { path, state: st });
        }
    }
    if !seen_pool {
        return Err(perr(what, "no pool line in config"));
    }
    Ok(PoolStatus {
        name,
        state,
        scan,
        vdevs,
    })
}

/// `zpool list -Hp -o name,size,allocated,free,capacity,health POOL`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolList {
    pub name: String,
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    pub capacity_percent: u64,
    pub health: String,
}

/// Parse one line of `zpool list -Hp -o name,size,allocated,free,capacity,health`.
pub fn parse_list(text: &str) -> Result<PoolList> {
    let line = text
        .lines()
        .next()
        .ok_or_else(|| perr("zpool list", "empty"))?;
    let c: Vec<&str> = line.split('\t').collect();
    if c.len() < 6 {
        return Err(perr("zpool list", format!("expected 6 columns: {line}")));
    }
    let n = |s: &str| s.trim().trim_end_matches('%').parse::<u64>().unwrap_or(0);
    Ok(PoolList {
        name: c[0].into(),
        size: n(c[1]),
        allocated: n(c[2]),
        free: n(c[3]),
        capacity_percent: n(c[4]),
        health: c[5].trim().into(),
    })
}

/// Parse `zpool get -Hp -o property,value ...` or `zfs get -Hp -o property,value ...` into a map.
pub fn parse_get(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut c = l.split('\t');
            let k = c.next()?.trim();
            let v = c.next()?.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Properties whose values `-p` prints in bytes and the spec writes as sizes (`1M`, `32K`).
const SIZE_PROPS: &[&str] = &[
    "recordsize",
    "special_small_blocks",
    "volblocksize",
    "volsize",
    "quota",
    "refquota",
    "reservation",
    "refreservation",
];

/// Whether the current value `have` already is the desired `want`.
fn same_value(prop: &str, want: &str, have: &str) -> bool {
    if SIZE_PROPS.contains(&prop) {
        // `none` quota is 0 with -p
        let w = if want == "none" {
            Some(0)
        } else {
            parse_size(want)
        };
        let h = if have == "none" || have == "-" {
            Some(0)
        } else {
            parse_size(have)
        };
        return w.is_some() && w == h;
    }
    want == have
}

fn sync_str(s: SyncMode) -> &'static str {
    match s {
        SyncMode::Standard => "standard",
        SyncMode::Always => "always",
        SyncMode::Disabled => "disabled",
    }
}

fn logbias_str(l: LogBias) -> &'static str {
    match l {
        LogBias::Latency => "latency",
        LogBias::Throughput => "throughput",
    }
}

fn volmode_str(v: VolMode) -> &'static str {
    match v {
        VolMode::Default => "default",
        VolMode::Full => "full",
        VolMode::Geom => "geom",
        VolMode::Dev => "dev",
        VolMode::None => "none",
    }
}

fn onoff(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// The properties a dataset spec sets, in `zfs` names and values.
pub fn dataset_props(d: &ZfsDataset) -> Result<Vec<(String, String)>> {
    let mut p: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| p.push((k.to_string(), v));
    if let Some(v) = &d.recordsize {
        put("recordsize", v.clone());
    }
    if let Some(v) = &d.compression {
        put("compression", v.clone());
    }
    if let Some(v) = d.sync {
        put("sync", sync_str(v).into());
    }
    if let Some(v) = d.logbias {
        put("logbias", logbias_str(v).into());
    }
    if let Some(v) = d.atime {
        put("atime", onoff(v).into());
    }
    if let Some(v) = &d.special_small_blocks {
        put("special_small_blocks", v.clone());
    }
    for (k, q) in [("quota", &d.quota), ("reservation", &d.reservation)] {
        if let Some(q) = q {
            let b = quantity_bytes(q).ok_or_else(|| {
                Error::InvalidPool(format!("{k} {} of {} is not a quantity", q.0, d.name))
            })?;
            put(k, b.to_string());
        }
    }
    for (k, v) in &d.properties {
        put(k, v.clone());
    }
    Ok(p)
}

/// The properties a volume spec sets besides `volsize` (and `volblocksize`, fixed at creation).
fn volume_props(v: &ZfsVolume) -> Vec<(String, String)> {
    let mut p = Vec::new();
    if let Some(s) = v.sync {
        p.push(("sync".to_string(), sync_str(s).to_string()));
    }
    if let Some(m) = v.volmode {
        p.push(("volmode".into(), volmode_str(m).into()));
    }
    if let Some(c) = &v.compression {
        p.push(("compression".into(), c.clone()));
    }
    p
}

/// A spec vdev expanded the way `zpool` shows it: a `stripe` of N devices is N single-device vdevs.
#[derive(Debug, Clone)]
struct Want<'a> {
    class: Class,
    kind: &'static str,
    devices: Vec<&'a str>,
}

fn kind_str(t: VdevType) -> &'static str {
    match t {
        VdevType::Stripe => "stripe",
        VdevType::Mirror => "mirror",
        VdevType::Raidz1 => "raidz1",
        VdevType::Raidz2 => "raidz2",
        VdevType::Raidz3 => "raidz3",
    }
}

fn wanted(spec: &ZfsPoolSpec) -> Vec<Want<'_>> {
    let mut out = Vec::new();
    for (class, list) in [
        (Class::Data, &spec.vdevs),
        (Class::Special, &spec.special),
        (Class::Log, &spec.log),
    ] {
        for v in list {
            if v.vdev_type == VdevType::Stripe {
                for d in &v.devices {
                    out.push(Want {
                        class,
                        kind: "stripe",
                        devices: vec![d.as_str()],
                    });
                }
            } else {
                out.push(Want {
                    class,
                    kind: kind_str(v.vdev_type),
                    devices: v.devices.iter().map(String::as_str).collect(),
                });
            }
        }
    }
    for d in &spec.cache {
        out.push(Want {
            class: Class::Cache,
            kind: "stripe",
            devices: vec![d.as_str()],
        });
    }
    for d in &spec.spares {
        out.push(Want {
            class: Class::Spare,
            kind: "stripe",
            devices: vec![d.as_str()],
        });
    }
    out
}

/// Whether the device `zpool` shows (`have`) is the spec's device (`want`). A whole disk given to
/// `zpool` shows as its first partition (`/dev/sdb1`, `...-part1`, `/dev/nvme0n1p1`).
fn same_device(r: &dyn Runner, want: &str, have: &str) -> bool {
    if want == have {
        return true;
    }
    let (cw, ch) = (r.canonical(want), r.canonical(have));
    if cw == ch {
        return true;
    }
    [want, cw.as_str()].iter().any(|w| {
        [format!("{w}1"), format!("{w}-part1"), format!("{w}p1")]
            .iter()
            .any(|p| p == have || *p == ch)
    })
}

fn vdev_args<'a>(w: &'a Want<'a>) -> Vec<&'a str> {
    let mut a = Vec::new();
    if w.kind != "stripe" {
        a.push(w.kind);
    }
    a.extend(w.devices.iter().copied());
    a
}

/// Redundancy of a vdev kind in the sense of `zpool`'s replication check (devices that may fail).
fn redundancy(kind: &str, width: usize) -> (usize, usize) {
    match kind {
        "mirror" => (width.saturating_sub(1), width),
        "raidz1" => (1, width),
        "raidz2" => (2, width),
        "raidz3" => (3, width),
        _ => (0, 1),
    }
}

/// The pool as ZFS reports it, or `None` when it does not exist.
pub fn status(r: &dyn Runner, pool: &str) -> Result<Option<PoolStatus>> {
    let out = r.run("zpool", &["status", "-P", "-p", pool])?;
    if !out.success {
        return Ok(None);
    }
    parse_status(&out.stdout).map(Some)
}

/// Plan pool `spec` on this node.
pub fn plan(
    r: &dyn Runner,
    spec: &ZfsPoolSpec,
    policy: DevicePolicy,
    chap: &[(String, ChapCredentials)],
) -> Result<Plan> {
    let st = status(r, &spec.pool_name)?;
    let mut plan = Plan::default();
    let pool = spec.pool_name.as_str();
    let want = wanted(spec);
    match &st {
        None => {
            for w in &want {
                for d in &w.devices {
                    vet_new_device(r, &mut plan, d, policy)?;
                }
            }
            let mut args: Vec<String> = vec!["zpool".into(), "create".into()];
            // zpool refuses a special vdev less redundant than the data vdevs ("mismatched
            // replication level") unless forced; the spec asked for that layout explicitly (the
            // operator warns about it), and every device was vetted above.
            let data: Vec<&Want<'_>> = want.iter().filter(|w| w.class == Class::Data).collect();
            let levels: Vec<(usize, usize)> = want
                .iter()
                .filter(|w| matches!(w.class, Class::Data | Class::Special))
                .map(|w| redundancy(w.kind, w.devices.len()))
                .collect();
            let mismatch = levels.windows(2).any(|p| p[0].0 != p[1].0);
            if mismatch {
                args.push("-f".into());
            }
            args.extend(["-o".into(), format!("ashift={}", spec.ashift.unwrap_or(12))]);
            if let Some(t) = spec.autotrim {
                args.extend(["-o".into(), format!("autotrim={}", onoff(t))]);
            }
            for (k, v) in &spec.properties {
                args.extend(["-o".into(), format!("{k}={v}")]);
            }
            args.push(pool.into());
            for w in &data {
                args.extend(vdev_args(w).iter().map(|s| s.to_string()));
            }
            for class in [Class::Special, Class::Log, Class::Cache, Class::Spare] {
                let ws: Vec<&Want<'_>> = want.iter().filter(|w| w.class == class).collect();
                if ws.is_empty() {
                    continue;
                }
                if let Some(k) = class.keyword() {
                    args.push(k.into());
                }
                for w in ws {
                    args.extend(vdev_args(w).iter().map(|s| s.to_string()));
                }
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let devices: Vec<&str> = want.iter().flat_map(|w| w.devices.clone()).collect();
            let mut step = Step::new(
                format!(
                    "create ZFS pool {pool} ({} data vdev(s){})",
                    data.len(),
                    if mismatch {
                        ", -f: mismatched replication level of the spec accepted"
                    } else {
                        ""
                    }
                ),
                &refs,
            );
            step.destructive = true;
            step.device = Some(devices.join(","));
            plan.steps.push(step);
        }
        Some(st) => plan_existing(r, spec, policy, st, &want, &mut plan)?,
    }
    if !plan.refusals.is_empty() {
        return Ok(plan.finish());
    }
    plan_datasets(r, spec, st.is_some(), &mut plan)?;
    if let Some(ex) = &spec.exports {
        exports::plan(r, spec, ex, chap, &mut plan)?;
    }
    plan_arc_max(r, spec, &mut plan)?;
    Ok(plan.finish())
}

/// The `zfs_arc_max` module parameter.
pub const ARC_MAX_PARAM: &str = "/sys/module/zfs/parameters/zfs_arc_max";

/// `arcMax`: write the module parameter when it differs (node-wide; a running ARC shrinks to it).
fn plan_arc_max(r: &dyn Runner, spec: &ZfsPoolSpec, plan: &mut Plan) -> Result<()> {
    let Some(q) = &spec.arc_max else {
        return Ok(());
    };
    let bytes = crate::plan::quantity_bytes(q)
        .ok_or_else(|| Error::InvalidPool(format!("arcMax {:?} is not a quantity", q.0)))?;
    let Some(have) = r.read(ARC_MAX_PARAM)? else {
        // The module is loaded by the pool's creation on first apply; the next pass sets it.
        return Ok(());
    };
    if have.trim() != bytes.to_string() {
        plan.steps.push(Step::sysfs(
            format!("cap the ZFS ARC at {} (arcMax; was {})", q.0, have.trim()),
            ARC_MAX_PARAM,
            &bytes.to_string(),
        ));
    }
    Ok(())
}

/// Prefix of the snapshots the agent takes (and the only ones its retention destroys).
pub const SNAPSHOT_PREFIX: &str = "tessera-";

/// Scheduled snapshots of the datasets in `due` (names relative to the pool) taken at `stamp`
/// (`20261122-071500`): `zfs snapshot POOL/DS@tessera-STAMP`, then the oldest `tessera-`
/// snapshots beyond the dataset's `keep` are destroyed (each logged as destructive). Snapshots
/// with any other name are never touched.
pub fn snapshot_steps(
    r: &dyn Runner,
    spec: &ZfsPoolSpec,
    due: &[String],
    stamp: &str,
) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for ds in &spec.datasets {
        let Some(policy) = &ds.snapshots else {
            continue;
        };
        if !due.contains(&ds.name) {
            continue;
        }
        let full = format!("{}/{}", spec.pool_name, ds.name);
        let listed = r.check(
            "zfs",
            &[
                "list",
                "-H",
                "-p",
                "-t",
                "snapshot",
                "-o",
                "name",
                "-s",
                "createtxg",
                "-d",
                "1",
                &full,
            ],
        )?;
        let ours: Vec<&str> = listed
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(&format!("{full}@{SNAPSHOT_PREFIX}")))
            .collect();
        let mut name = format!("{full}@{SNAPSHOT_PREFIX}{stamp}");
        let mut n = 2;
        while ours.contains(&name.as_str()) {
            name = format!("{full}@{SNAPSHOT_PREFIX}{stamp}-{n}");
            n += 1;
        }
        steps.push(Step::new(
            format!("scheduled snapshot of {full} (keep {})", policy.keep),
            &["zfs", "snapshot", &name],
        ));
        let excess = (ours.len() + 1).saturating_sub(policy.keep as usize);
        for old in ours.iter().take(excess) {
            steps.push(
                Step::new(
                    format!("retention of {full}: destroy {old} (keep {})", policy.keep),
                    &["zfs", "destroy", old],
                )
                .destructive(old),
            );
        }
    }
    Ok(steps)
}

fn plan_existing(
    r: &dyn Runner,
    spec: &ZfsPoolSpec,
    policy: DevicePolicy,
    st: &PoolStatus,
    want: &[Want<'_>],
    plan: &mut Plan,
) -> Result<()> {
    let pool = spec.pool_name.as_str();
    let props = parse_get(&r.check(
        "zpool",
        &[
            "get",
            "-Hp",
            "-o",
            "property,value",
            &pool_prop_names(spec),
            pool,
        ],
    )?);
    let ashift = spec.ashift.unwrap_or(12).to_string();
    if let Some(have) = props.get("ashift")
        && have != "0"
        && *have != ashift
    {
        plan.refuse(
            "ReshapeRefused",
            format!("pool {pool} has ashift {have}, the spec asks for {ashift}; ashift is fixed when a vdev is created"),
        );
    }
    let mut matched = vec![false; st.vdevs.len()];
    let mut new: Vec<&Want<'_>> = Vec::new();
    for w in want {
        let hit = st.vdevs.iter().enumerate().find(|(_, v)| {
            v.leaves.len() == w.devices.len()
                && w.devices
                    .iter()
                    .all(|d| v.leaves.iter().any(|l| same_device(r, d, &l.path)))
        });
        match hit {
            Some((i, v)) => {
                matched[i] = true;
                if v.kind != w.kind || v.class != w.class {
                    plan.refuse(
                        "ReshapeRefused",
                        format!(
                            "{} of pool {pool} is a {:?} {} vdev, the spec asks for a {:?} {}; changing a vdev is refused",
                            v.name, v.class, v.kind, w.class, w.kind
                        ),
                    );
                }
            }
            None => {
                let overlap = st.vdevs.iter().find(|v| {
                    w.devices
                        .iter()
                        .any(|d| v.leaves.iter().any(|l| same_device(r, d, &l.path)))
                });
                match overlap {
                    Some(v) => plan.refuse(
                        "ReshapeRefused",
                        format!(
                            "the spec's {} vdev {} overlaps {} of pool {pool}; changing a vdev's members is refused",
                            w.kind,
                            w.devices.join(" "),
                            v.name
                        ),
                    ),
                    None => new.push(w),
                }
            }
        }
    }
    for (i, v) in st.vdevs.iter().enumerate() {
        if matched[i] {
            continue;
        }
        match v.class {
            Class::Data | Class::Special | Class::Dedup => plan.refuse(
                "RemovalRefused",
                format!(
                    "{} ({}) of pool {pool} is not in the spec; removing a vdev that holds data is refused",
                    v.name,
                    v.leaves.iter().map(|l| l.path.as_str()).collect::<Vec<_>>().join(" ")
                ),
            ),
            Class::Spare if v.state == "INUSE" => plan.refuse(
                "RemovalRefused",
                format!("spare {} of pool {pool} is in use; it cannot be removed", v.name),
            ),
            Class::Log | Class::Cache | Class::Spare => plan.steps.push(Step::new(
                format!("remove {:?} device {} from pool {pool} (not in the spec; holds no unique data)", v.class, v.name),
                &["zpool", "remove", pool, &v.name],
            )),
        }
    }
    for w in new {
        let mut ok = true;
        for d in &w.devices {
            ok &= vet_new_device(r, plan, d, policy)?;
        }
        if !ok {
            continue;
        }
        let mut args: Vec<&str> = vec!["zpool", "add"];
        let data_level = st
            .vdevs
            .iter()
            .find(|v| v.class == Class::Data)
            .map(|v| redundancy(&v.kind, v.leaves.len()).0);
        let lvl = redundancy(w.kind, w.devices.len()).0;
        if matches!(w.class, Class::Data | Class::Special) && data_level.is_some_and(|d| d != lvl) {
            args.push("-f");
        }
        args.push(&spec.pool_name);
        if let Some(k) = w.class.keyword() {
            args.push(k);
        }
        args.extend(vdev_args(w));
        let mut step = Step::new(
            format!(
                "grow pool {pool}: add {:?} {} vdev {}",
                w.class,
                w.kind,
                w.devices.join(" ")
            ),
            &args,
        );
        step.destructive = true;
        step.device = Some(w.devices.join(","));
        plan.steps.push(step);
    }
    // Pool properties that differ.
    if let Some(t) = spec.autotrim
        && props.get("autotrim").map(String::as_str) != Some(onoff(t))
    {
        let kv = format!("autotrim={}", onoff(t));
        plan.steps.push(Step::new(
            format!("set {kv} on pool {pool}"),
            &["zpool", "set", &kv, pool],
        ));
    }
    for (k, v) in &spec.properties {
        if props.get(k) != Some(v) {
            let kv = format!("{k}={v}");
            plan.steps.push(Step::new(
                format!("set {kv} on pool {pool}"),
                &["zpool", "set", &kv, pool],
            ));
        }
    }
    Ok(())
}

fn pool_prop_names(spec: &ZfsPoolSpec) -> String {
    let mut names = vec!["ashift".to_string(), "autotrim".to_string()];
    names.extend(spec.properties.keys().cloned());
    names.join(",")
}

fn zfs_get(
    r: &dyn Runner,
    name: &str,
    props: &[String],
) -> Result<Option<BTreeMap<String, String>>> {
    let list = props.join(",");
    let out = r.run("zfs", &["get", "-Hp", "-o", "property,value", &list, name])?;
    if !out.success {
        return Ok(None);
    }
    Ok(Some(parse_get(&out.stdout)))
}

fn plan_datasets(
    r: &dyn Runner,
    spec: &ZfsPoolSpec,
    pool_exists: bool,
    plan: &mut Plan,
) -> Result<()> {
    let pool = spec.pool_name.as_str();
    let mut ds: Vec<&ZfsDataset> = spec.datasets.iter().collect();
    ds.sort_by_key(|d| d.name.matches('/').count());
    for d in ds {
        let full = format!("{pool}/{}", d.name);
        let props = dataset_props(d)?;
        let names: Vec<String> = props.iter().map(|(k, _)| k.clone()).collect();
        let have = if pool_exists {
            zfs_get(
                r,
                &full,
                &if names.is_empty() {
                    vec!["type".to_string()]
                } else {
                    names.clone()
                },
            )?
        } else {
            None
        };
        match have {
            None => {
                let mut args: Vec<String> = vec!["zfs".into(), "create".into(), "-p".into()];
                for (k, v) in &props {
                    args.extend(["-o".into(), format!("{k}={v}")]);
                }
                args.push(full.clone());
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                plan.steps
                    .push(Step::new(format!("create dataset {full}"), &refs));
            }
            Some(have) => {
                let diff: Vec<String> = props
                    .iter()
                    .filter(|(k, v)| !have.get(k).is_some_and(|h| same_value(k, v, h)))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if !diff.is_empty() {
                    let mut args: Vec<&str> = vec!["zfs", "set"];
                    args.extend(diff.iter().map(String::as_str));
                    args.push(&full);
                    plan.steps.push(Step::new(
                        format!("set {} on dataset {full}", diff.join(" ")),
                        &args,
                    ));
                }
            }
        }
    }
    for v in &spec.volumes {
        let full = format!("{pool}/{}", v.name);
        let want = quantity_bytes(&v.size).ok_or_else(|| {
            Error::InvalidPool(format!(
                "size {} of volume {} is not a quantity",
                v.size.0, v.name
            ))
        })?;
        let props = volume_props(v);
        let mut names: Vec<String> = vec!["volsize".into(), "volblocksize".into()];
        names.extend(props.iter().map(|(k, _)| k.clone()));
        let have = if pool_exists {
            zfs_get(r, &full, &names)?
        } else {
            None
        };
        match have {
            None => {
                let vbs = v
                    .volblocksize
                    .as_deref()
                    .and_then(parse_size)
                    .unwrap_or(16384);
                let size = (want.div_ceil(vbs) * vbs).to_string();
                let mut args: Vec<String> = vec!["zfs".into(), "create".into(), "-p".into()];
                if v.sparse == Some(true) {
                    args.push("-s".into());
                }
                args.extend(["-V".into(), size]);
                if let Some(b) = &v.volblocksize {
                    args.extend(["-o".into(), format!("volblocksize={b}")]);
                }
                for (k, val) in &props {
                    args.extend(["-o".into(), format!("{k}={val}")]);
                }
                args.push(full.clone());
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                plan.steps.push(Step::new(
                    format!("create volume {full} of {want} bytes"),
                    &refs,
                ));
            }
            Some(have) => {
                let have_vbs = have
                    .get("volblocksize")
                    .and_then(|s| parse_size(s))
                    .unwrap_or(16384);
                if let Some(b) = &v.volblocksize
                    && parse_size(b) != Some(have_vbs)
                {
                    plan.refuse(
                        "ReshapeRefused",
                        format!("volume {full} has volblocksize {have_vbs}, the spec asks for {b}; volblocksize is fixed at creation"),
                    );
                    continue;
                }
                let have_size = have.get("volsize").and_then(|s| parse_size(s)).unwrap_or(0);
                let rounded = want.div_ceil(have_vbs.max(1)) * have_vbs.max(1);
                if rounded < have_size {
                    plan.refuse(
                        "ShrinkRefused",
                        format!("volume {full} is {have_size} bytes, the spec asks for {want}; shrinking a volume that holds data is refused"),
                    );
                    continue;
                }
                let mut diff: Vec<String> = Vec::new();
                if rounded > have_size {
                    diff.push(format!("volsize={rounded}"));
                }
                diff.extend(
                    props
                        .iter()
                        .filter(|(k, val)| !have.get(k).is_some_and(|h| same_value(k, val, h)))
                        .map(|(k, val)| format!("{k}={val}")),
                );
                if !diff.is_empty() {
                    let mut args: Vec<&str> = vec!["zfs", "set"];
                    args.extend(diff.iter().map(String::as_str));
                    args.push(&full);
                    plan.steps.push(Step::new(
                        format!("set {} on volume {full}", diff.join(" ")),
                        &args,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Observe the pool: health, members, capacity, scrub / resilver progress.
/// Steps that destroy pool `spec` (deletionPolicy Destroy): its NFS and iSCSI exports first (a
/// zvol behind a LIO backstore is busy), then `zpool destroy`, then the ZFS labels of every leaf
/// it has now and the partition tables ZFS wrote on the whole disks of the spec, so that the
/// devices come back blank. Empty when the pool does not exist.
pub fn destroy_plan(r: &dyn Runner, spec: &ZfsPoolSpec) -> Result<Plan> {
    let mut plan = Plan::default();
    let Some(st) = status(r, &spec.pool_name)? else {
        return Ok(plan);
    };
    let pool = spec.pool_name.as_str();
    if let Some(ex) = &spec.exports {
        exports::teardown(r, spec, ex, &mut plan)?;
    }
    plan.steps.push(
        Step::new(format!("destroy pool {pool}"), &["zpool", "destroy", pool]).destructive(pool),
    );
    let leaves: Vec<&str> = st
        .vdevs
        .iter()
        .flat_map(|v| v.leaves.iter().map(|l| l.path.as_str()))
        .filter(|p| p.starts_with("/dev/"))
        .collect();
    for leaf in &leaves {
        plan.steps.push(
            Step::new(
                format!("clear the ZFS label of {leaf} (was in {pool})"),
                &["zpool", "labelclear", "-f", leaf],
            )
            .destructive(leaf),
        );
    }
    let spec_devices = wanted(spec)
        .into_iter()
        .flat_map(|w| w.devices)
        .collect::<Vec<&str>>();
    for d in spec_devices {
        // Whole disks given to ZFS got a GPT with the data partition; only those are wiped.
        let is_partition_of = |leaf: &str| {
            leaf.strip_prefix(d).is_some_and(|rest| {
                let n = rest.strip_prefix('p').unwrap_or(rest);
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
        };
        if leaves.iter().any(|l| is_partition_of(l)) {
            plan.steps.push(
                Step::new(
                    format!("wipe the partition table ZFS wrote on {d}"),
                    &["wipefs", "--all", d],
                )
                .destructive(d),
            );
        }
    }
    Ok(plan)
}

pub fn observe(r: &dyn Runner, spec: &ZfsPoolSpec) -> Result<Option<Observed>> {
    let out = r.run(
        "zpool",
        &[
            "list",
            "-Hp",
            "-o",
            "name,size,allocated,free,capacity,health",
            &spec.pool_name,
        ],
    )?;
    if !out.success {
        return Ok(None);
    }
    let list = parse_list(&out.stdout)?;
    let Some(st) = status(r, &spec.pool_name)? else {
        return Ok(None);
    };
    Ok(Some(observe_state(spec, &list, &st)))
}

/// Observation from parsed outputs (unit tests feed fixtures here).
pub fn observe_state(spec: &ZfsPoolSpec, list: &PoolList, st: &PoolStatus) -> Observed {
    let health = if list.health.is_empty() {
        st.state.clone()
    } else {
        list.health.clone()
    };
    let bad: Vec<String> = st
        .vdevs
        .iter()
        .flat_map(|v| v.leaves.iter())
        .filter(|l| !matches!(l.state.as_str(), "ONLINE" | "AVAIL" | ""))
        .map(|l| format!("{} {}", l.path, l.state))
        .collect();
    let degraded = health != "ONLINE"
        || st
            .vdevs
            .iter()
            .any(|v| v.class != Class::Spare && v.class != Class::Cache && v.state != "ONLINE");
    let mut o = Observed {
        health: health.clone(),
        degraded,
        degraded_reason: match health.as_str() {
            "ONLINE" if !degraded => "AllMembersOnline",
            "ONLINE" | "DEGRADED" => "PoolDegraded",
            "FAULTED" => "PoolFaulted",
            "SUSPENDED" => "PoolSuspended",
            _ => "PoolUnhealthy",
        }
        .into(),
        degraded_message: if bad.is_empty() {
            format!("pool {} is {health}", st.name)
        } else {
            format!("pool {} is {health}: {}", st.name, bad.join(", "))
        },
        size_bytes: Some(list.size),
        allocated_bytes: Some(list.allocated),
        ..Default::default()
    };
    let role = |c: Class| match c {
        Class::Data => "data",
        Class::Special => "special",
        Class::Dedup => "dedup",
        Class::Log => "log",
        Class::Cache => "cache",
        Class::Spare => "spare",
    };
    o.members = st
        .vdevs
        .iter()
        .flat_map(|v| {
            v.leaves.iter().map(move |l| MemberStatus {
                device: l.path.clone(),
                role: Some(if v.kind == "stripe" {
                    role(v.class).to_string()
                } else {
                    format!("{} {}", role(v.class), v.name)
                }),
                state: Some(l.state.clone()),
                smart: None,
            })
        })
        .collect();
    o.capacity = Some(Capacity {
        size: Some(Quantity(list.size.to_string())),
        allocated: Some(Quantity(list.allocated.to_string())),
        free: Some(Quantity(list.free.to_string())),
    });
    o.operation = st
        .scan
        .as_ref()
        .filter(|s| s.in_progress)
        .map(|s| Operation {
            kind: s.kind,
            progress: s.percent.map(|p| format!("{p}")),
            eta: s.eta.clone(),
        });
    let limit = u64::from(spec.capacity_warning_percent.unwrap_or(80));
    o.conditions.push((
        "CapacityHigh".into(),
        list.capacity_percent >= limit,
        if list.capacity_percent >= limit {
            "AboveWarningPercent"
        } else {
            "BelowWarningPercent"
        }
        .into(),
        format!("{}% used, warning at {limit}%", list.capacity_percent),
    ));
    let single_special = st
        .vdevs
        .iter()
        .any(|v| v.class == Class::Special && v.kind == "stripe");
    if single_special {
        o.conditions.push((
            "SpecialVdevNotRedundant".into(),
            true,
            "SingleDeviceSpecialVdev".into(),
            "a special vdev is a single device: losing it loses the pool; mirror it in production"
                .into(),
        ));
    }
    o
}

/// The command that starts a scrub of the pool.
pub fn scrub_steps(spec: &ZfsPoolSpec) -> Vec<Step> {
    vec![Step::new(
        format!("start a scrub of pool {}", spec.pool_name),
        &["zpool", "scrub", &spec.pool_name],
    )]
}

#[cfg(test)]
mod tests;
