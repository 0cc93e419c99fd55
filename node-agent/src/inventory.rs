//! Inventory of a node: block devices (`lsblk --json`), existing signatures (`wipefs --json`),
//! SMART (`smartctl --json`), GPUs (`nvidia-smi`, which reads NVML), Xen (`/sys/hypervisor`).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize;
use tessera_crds::tessera_node::{BlockDevice, Gpu, Inventory, XenInfo};

use crate::error::{Error, Result};
use crate::runner::Runner;
use crate::smart::{Thresholds, evaluate};

#[derive(Deserialize)]
struct Lsblk {
    blockdevices: Vec<LsblkDev>,
}

#[derive(Deserialize)]
struct LsblkDev {
    path: String,
    size: Option<u64>,
    model: Option<String>,
    serial: Option<String>,
    rota: Option<bool>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    children: Vec<LsblkDev>,
}

/// Parse `lsblk --json -b -o PATH,SIZE,MODEL,SERIAL,ROTA,TYPE` into devices (disks and partitions).
pub fn parse_lsblk(json: &str) -> Result<Vec<BlockDevice>> {
    let l: Lsblk = serde_json::from_str(json).map_err(|e| Error::Parse {
        what: "lsblk --json".into(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    fn walk(d: &LsblkDev, out: &mut Vec<BlockDevice>) {
        // zram, loop and ROM devices are not storage candidates.
        let kind = d.kind.as_deref().unwrap_or("");
        if (kind == "disk" || kind == "part")
            && !d.path.starts_with("/dev/zram")
            && d.size.unwrap_or(0) > 0
        {
            out.push(BlockDevice {
                path: d.path.clone(),
                size: d.size.map(|s| Quantity(s.to_string())),
                model: d.model.as_ref().map(|m| m.trim().to_string()),
                serial: d.serial.clone(),
                rotational: d.rota,
                ..Default::default()
            });
        }
        for c in &d.children {
            walk(c, out);
        }
    }
    for d in &l.blockdevices {
        walk(d, &mut out);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Wipefs {
    #[serde(default)]
    signatures: Vec<WipefsSig>,
}

#[derive(Deserialize)]
struct WipefsSig {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
}

/// Signatures on a device, from `wipefs --no-act --json DEVICE` (empty output: none).
pub fn signatures(r: &dyn Runner, device: &str) -> Result<Vec<String>> {
    let out = r.check("wipefs", &["--no-act", "--json", device])?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let w: Wipefs = serde_json::from_str(&out).map_err(|e| Error::Parse {
        what: format!("wipefs {device}"),
        message: e.to_string(),
    })?;
    Ok(w.signatures
        .into_iter()
        .map(|s| format!("{}@{}", s.kind, s.offset))
        .collect())
}

/// by-id links of each device, from `/dev/disk/by-id`.
fn by_id_links() -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir("/dev/disk/by-id") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let target = std::fs::canonicalize(e.path()).ok()?;
            Some((target.display().to_string(), e.path().display().to_string()))
        })
        .collect()
}

/// Parse `nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv,noheader,nounits`.
pub fn parse_nvidia_smi(csv: &str) -> Result<Vec<Gpu>> {
    csv.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let bad = || Error::Parse {
                what: "nvidia-smi".into(),
                message: format!("unexpected line {l:?}"),
            };
            if f.len() != 5 {
                return Err(bad());
            }
            let mib: u64 = f[3].parse().map_err(|_| bad())?;
            Ok(Gpu {
                index: f[0].parse().map_err(|_| bad())?,
                uuid: f[1].to_string(),
                model: f[2].to_string(),
                memory: Quantity(format!("{mib}Mi")),
                driver: Some(f[4].to_string()),
            })
        })
        .collect()
}

/// Whether this node is a Xen dom0, and the hypervisor version.
pub fn xen(r: &dyn Runner) -> Result<XenInfo> {
    let kind = r.read("/sys/hypervisor/type")?.unwrap_or_default();
    if kind.trim() != "xen" {
        return Ok(XenInfo {
            present: false,
            version: None,
        });
    }
    let caps = r.read("/proc/xen/capabilities")?.unwrap_or_default();
    let major = r.read("/sys/hypervisor/version/major")?.unwrap_or_default();
    let minor = r.read("/sys/hypervisor/version/minor")?.unwrap_or_default();
    Ok(XenInfo {
        present: caps.contains("control_d"),
        version: Some(format!("{}.{}", major.trim(), minor.trim())),
    })
}

/// Take the whole inventory. Missing tools (no smartctl, no nvidia-smi) leave their part empty.
pub fn collect(r: &dyn Runner, thresholds: &Thresholds) -> Result<Inventory> {
    let lsblk = r.check(
        "lsblk",
        &["--json", "-b", "-o", "PATH,SIZE,MODEL,SERIAL,ROTA,TYPE"],
    )?;
    let mut devices = parse_lsblk(&lsblk)?;
    let links = by_id_links();
    for d in &mut devices {
        d.by_id = links
            .iter()
            .filter(|(t, _)| *t == d.path)
            .map(|(_, l)| l.clone())
            .collect();
        d.by_id.sort();
        d.signatures = signatures(r, &d.path).unwrap_or_else(|e| vec![format!("unknown ({e})")]);
        if let Ok(out) = r.run("smartctl", &["--json", "-a", &d.path])
            && !out.stdout.trim().is_empty()
        {
            d.smart = Some(evaluate(&out.stdout, thresholds).0);
        }
    }
    let gpus = match r.run(
        "nvidia-smi",
        &[
            "--query-gpu=index,uuid,name,memory.total,driver_version",
            "--format=csv,noheader,nounits",
        ],
    ) {
        Ok(o) if o.success => parse_nvidia_smi(&o.stdout)?,
        _ => Vec::new(),
    };
    Ok(Inventory {
        block_devices: devices,
        gpus,
        xen: Some(xen(r)?),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    const LSBLK: &str = include_str!("../tests/fixtures/lsblk.json");

    #[test]
    fn lsblk_keeps_disks_and_partitions_only() {
        let d = parse_lsblk(LSBLK).unwrap();
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/dev/sda", "/dev/sda1", "/dev/nvme0n1"]);
        assert_eq!(d[0].rotational, Some(true));
        assert_eq!(d[2].model.as_deref(), Some("SAMSUNG MZQL21T9HCJR-00A07"));
        assert_eq!(d[0].size.as_ref().unwrap().0, "4000787030016");
    }

    #[test]
    fn nvidia_smi_rows_become_gpus() {
        let g =
            parse_nvidia_smi("0, GPU-1234, NVIDIA H100 80GB HBM3, 81559, 580.159.04\n").unwrap();
        assert_eq!(g[0].uuid, "GPU-1234");
        assert_eq!(g[0].memory.0, "81559Mi");
        assert!(parse_nvidia_smi("garbage").is_err());
    }

    #[test]
    fn wipefs_json_lists_signatures() {
        let r = ScriptedRunner::default();
        r.ok("wipefs --no-act --json /dev/sdb", r#"{"signatures":[{"device":"sdb","offset":"0x438","type":"ext4","uuid":"x","label":null}]}"#);
        r.ok("wipefs --no-act --json /dev/sdc", "");
        assert_eq!(signatures(&r, "/dev/sdb").unwrap(), ["ext4@0x438"]);
        assert!(signatures(&r, "/dev/sdc").unwrap().is_empty());
    }

    #[test]
    fn xen_dom0_is_detected_from_sysfs() {
        let r = ScriptedRunner::default();
        assert!(!xen(&r).unwrap().present);
        r.file("/sys/hypervisor/type", "xen\n")
            .file("/proc/xen/capabilities", "control_d\n")
            .file("/sys/hypervisor/version/major", "4\n")
            .file("/sys/hypervisor/version/minor", "17\n");
        let x = xen(&r).unwrap();
        assert!(x.present);
        assert_eq!(x.version.as_deref(), Some("4.17"));
    }

    /// On this machine, the real tools: lsblk must work and list at least one disk.
    #[test]
    fn real_lsblk_parses() {
        let r = crate::runner::SystemRunner;
        match r.check(
            "lsblk",
            &["--json", "-b", "-o", "PATH,SIZE,MODEL,SERIAL,ROTA,TYPE"],
        ) {
            Ok(out) => assert!(!parse_lsblk(&out).unwrap().is_empty(), "{out}"),
            Err(e) => println!("skipped: lsblk unavailable: {e}"),
        }
    }
}
