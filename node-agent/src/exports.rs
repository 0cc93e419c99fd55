//! NFS (`exportfs`, kernel nfsd) and iSCSI (`targetcli`, LIO) exports of a ZFS pool's datasets
//! and zvols. Planned after the pool and its datasets, so a new pool's exports are created in the
//! same apply.
//!
//! NFS: current exports from `exportfs -s`; a missing or different `host(options)` for a dataset's
//! mountpoint becomes `exportfs -o OPTIONS HOST:PATH` (the kernel table; the agent re-applies it
//! every pass, `/etc/exports` is not edited). iSCSI: the current tree from `targetcli ls /`; a
//! missing block backstore, target, LUN or ACL becomes the matching `targetcli ... create`, CHAP is
//! set on a new ACL from the credentials of `chapSecretRef`, then `targetcli saveconfig`. Without
//! the credentials an export that asks for CHAP is skipped (never created open), with a reason.
//! A missing `exportfs` / `targetcli` skips that kind of export with reason `ToolMissing`; the pool
//! itself is still applied.

use std::collections::BTreeSet;
use std::path::Path;

use tessera_crds::storage_pool::{ZfsExports, ZfsPoolSpec};

use crate::error::{Error, Result};
use crate::plan::{Plan, Refusal, Step};
use crate::runner::Runner;

/// CHAP credentials of an iSCSI export (a Secret's `username`, `password`, and optionally
/// `mutualUsername`, `mutualPassword`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChapCredentials {
    pub username: String,
    pub password: String,
    pub mutual_username: Option<String>,
    pub mutual_password: Option<String>,
}

/// Read CHAP credentials from a directory laid out like a mounted Secret volume:
/// `DIR/<namespace>/<name>/{username,password[,mutualUsername,mutualPassword]}`.
pub fn chap_from_dir(dir: &Path) -> Result<Vec<(String, ChapCredentials)>> {
    let mut out = Vec::new();
    let read_dir = |p: &Path| {
        std::fs::read_dir(p).map_err(|source| Error::Read {
            path: p.display().to_string(),
            source,
        })
    };
    for ns in read_dir(dir)?.flatten() {
        if !ns.path().is_dir() {
            continue;
        }
        for name in read_dir(&ns.path())?.flatten() {
            let p = name.path();
            let get = |f: &str| {
                std::fs::read_to_string(p.join(f))
                    .ok()
                    .map(|s| s.trim_end_matches('\n').to_string())
            };
            if let (Some(username), Some(password)) = (get("username"), get("password")) {
                out.push((
                    format!(
                        "{}/{}",
                        ns.file_name().to_string_lossy(),
                        name.file_name().to_string_lossy()
                    ),
                    ChapCredentials {
                        username,
                        password,
                        mutual_username: get("mutualUsername"),
                        mutual_password: get("mutualPassword"),
                    },
                ));
            }
        }
    }
    Ok(out)
}

/// Parse `exportfs -s` (or `-v`): `(path, client, options)` for each client of each export. Long
/// paths put the clients on the next line, indented.
pub fn parse_exportfs(text: &str) -> Vec<(String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut path: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let rest: Vec<&str> = if line.starts_with(char::is_whitespace) {
            words.collect()
        } else {
            path = words.next().map(str::to_string);
            words.collect()
        };
        let Some(p) = &path else { continue };
        for c in rest {
            let (host, opts) = match c.split_once('(') {
                Some((h, o)) => (h, o.trim_end_matches(')')),
                None => (c, ""),
            };
            let opts: BTreeSet<String> = opts
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_string)
                .collect();
            out.push((p.clone(), host.to_string(), opts));
        }
    }
    out
}

/// Parse the tree of `targetcli ls /` into the set of paths it shows (`/iscsi/IQN/tpg1/luns/lun0`).
pub fn parse_targetcli_ls(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(pos) = line.find("o- ") else {
            continue;
        };
        let depth = pos / 2;
        let name = line[pos + 3..]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        stack.truncate(depth);
        stack.push(name);
        // stack[0] is the root `/`
        if depth >= 1 && stack.len() == depth + 1 {
            out.insert(format!("/{}", stack[1..].join("/")));
        }
    }
    out
}

/// The backstore name of a zvol: `pool-vol-path` with `/` as `-`.
pub fn backstore_name(pool: &str, volume: &str) -> String {
    format!("{pool}-{volume}").replace('/', "-")
}

fn skip(plan: &mut Plan, reason: &str, message: String) {
    plan.skipped.push(Refusal {
        reason: reason.into(),
        message,
    });
}

/// Plan the exports of `spec` (after the pool, datasets and volumes).
/// The paths of `targetcli ls /`, or `None` when targetcli is not installed.
fn targetcli_tree(r: &dyn Runner) -> Result<Option<BTreeSet<String>>> {
    match r.run("targetcli", &["ls", "/"]) {
        Err(Error::ToolMissing(_)) => Ok(None),
        Err(e) => Err(e),
        Ok(out) if !out.success => Err(Error::Command {
            cmd: "targetcli ls /".into(),
            status: out.status,
            stderr: out.stderr,
        }),
        Ok(out) => Ok(Some(parse_targetcli_ls(&out.stdout))),
    }
}

/// Where dataset `ds` of pool `pool` is mounted (its `mountpoint` property, else ZFS's default).
fn dataset_path(pool: &str, ds: &tessera_crds::storage_pool::ZfsDataset) -> String {
    ds.properties
        .get("mountpoint")
        .cloned()
        .unwrap_or_else(|| format!("/{pool}/{}", ds.name))
}

/// Steps that undo the exports of `spec` that exist now (before the pool is destroyed): NFS
/// `exportfs -u` for every client of an exported dataset's path, iSCSI target and backstore
/// deletion, then `targetcli saveconfig`. A missing tool means nothing of that kind to undo.
pub fn teardown(
    r: &dyn Runner,
    spec: &ZfsPoolSpec,
    ex: &ZfsExports,
    plan: &mut Plan,
) -> Result<()> {
    let pool = spec.pool_name.as_str();
    if !ex.nfs.is_empty() {
        match r.run("exportfs", &["-s"]) {
            Err(Error::ToolMissing(_)) => {}
            Err(e) => return Err(e),
            Ok(out) => {
                let current = parse_exportfs(&out.stdout);
                for e in &ex.nfs {
                    let Some(ds) = spec.datasets.iter().find(|d| d.name == e.dataset) else {
                        continue;
                    };
                    let path = dataset_path(pool, ds);
                    for (p, h, _) in current.iter().filter(|(p, _, _)| *p == path) {
                        plan.steps.push(Step::new(
                            format!("stop exporting {pool}/{} to {h}", ds.name),
                            &["exportfs", "-u", &format!("{h}:{p}")],
                        ));
                    }
                }
            }
        }
    }
    if !ex.iscsi.is_empty() {
        // A missing targetcli: nothing of LIO to undo.
        if let Some(have) = targetcli_tree(r)? {
            let mut changed = false;
            for e in &ex.iscsi {
                let iqn = e.target_iqn.as_str();
                if have.contains(&format!("/iscsi/{iqn}")) {
                    plan.steps.push(Step::new(
                        format!("delete iSCSI target {iqn}"),
                        &["targetcli", "/iscsi", "delete", iqn],
                    ));
                    changed = true;
                }
                let bs = backstore_name(pool, &e.volume);
                if have.contains(&format!("/backstores/block/{bs}")) {
                    plan.steps.push(Step::new(
                        format!("delete iSCSI backstore {bs}"),
                        &["targetcli", "/backstores/block", "delete", &bs],
                    ));
                    changed = true;
                }
            }
            if changed {
                plan.steps.push(Step::new(
                    "save the LIO configuration",
                    &["targetcli", "saveconfig"],
                ));
            }
        }
    }
    Ok(())
}

pub fn plan(
    r: &dyn Runner,
    spec: &ZfsPoolSpec,
    ex: &ZfsExports,
    chap: &[(String, ChapCredentials)],
    plan: &mut Plan,
) -> Result<()> {
    let pool = spec.pool_name.as_str();
    if !ex.nfs.is_empty() {
        match r.run("exportfs", &["-s"]) {
            Err(Error::ToolMissing(t)) => skip(
                plan,
                "ToolMissing",
                format!("`{t}` is not installed: the NFS exports of {pool} were not applied"),
            ),
            Err(e) => return Err(e),
            Ok(out) => {
                let current = parse_exportfs(&out.stdout);
                for e in &ex.nfs {
                    let Some(ds) = spec.datasets.iter().find(|d| d.name == e.dataset) else {
                        skip(
                            plan,
                            "ExportUnknownDataset",
                            format!("NFS export of {}: not a dataset of the spec", e.dataset),
                        );
                        continue;
                    };
                    let path = dataset_path(pool, ds);
                    for c in &e.clients {
                        let opts: Vec<String> = if c.options.is_empty() {
                            ["ro", "sync", "no_subtree_check", "root_squash"]
                                .map(str::to_string)
                                .to_vec()
                        } else {
                            c.options.clone()
                        };
                        let present = current.iter().any(|(p, h, o)| {
                            *p == path && *h == c.host && opts.iter().all(|x| o.contains(x))
                        });
                        if present {
                            continue;
                        }
                        let o = opts.join(",");
                        let target = format!("{}:{path}", c.host);
                        plan.steps.push(Step::new(
                            format!("export {pool}/{} over NFS to {}", ds.name, c.host),
                            &["exportfs", "-o", &o, &target],
                        ));
                    }
                }
            }
        }
    }
    if !ex.iscsi.is_empty() {
        match targetcli_tree(r)? {
            None => skip(
                plan,
                "ToolMissing",
                format!(
                    "`targetcli` is not installed: the iSCSI exports of {pool} were not applied"
                ),
            ),
            Some(have) => {
                let mut changed = false;
                for e in &ex.iscsi {
                    if !spec.volumes.iter().any(|v| v.name == e.volume) {
                        skip(
                            plan,
                            "ExportUnknownVolume",
                            format!("iSCSI export of {}: not a volume of the spec", e.volume),
                        );
                        continue;
                    }
                    let creds = match &e.chap_secret_ref {
                        None => None,
                        Some(s) => {
                            let key = format!("{}/{}", s.namespace, s.name);
                            match chap.iter().find(|(k, _)| *k == key) {
                                Some((_, c)) => Some(c),
                                None => {
                                    skip(
                                        plan,
                                        "ChapSecretUnavailable",
                                        format!(
                                            "iSCSI export of {pool}/{} asks for CHAP from secret {key}, which the agent cannot read; the target was not created (never open)",
                                            e.volume
                                        ),
                                    );
                                    continue;
                                }
                            }
                        }
                    };
                    let bs = backstore_name(pool, &e.volume);
                    let dev = format!("/dev/zvol/{pool}/{}", e.volume);
                    let iqn = e.target_iqn.as_str();
                    let tpg = format!("/iscsi/{iqn}/tpg1");
                    let bs_path = format!("/backstores/block/{bs}");
                    if !have.contains(&bs_path) {
                        plan.steps.push(
                            Step::new(
                                format!("iSCSI block backstore {bs} on {dev}"),
                                &[
                                    "targetcli",
                                    "/backstores/block",
                                    "create",
                                    &format!("name={bs}"),
                                    &format!("dev={dev}"),
                                ],
                            )
                            .after_device(&dev),
                        );
                        changed = true;
                    }
                    if !have.contains(&format!("/iscsi/{iqn}")) {
                        plan.steps.push(Step::new(
                            format!("iSCSI target {iqn}"),
                            &["targetcli", "/iscsi", "create", iqn],
                        ));
                        changed = true;
                    }
                    if !have.contains(&format!("{tpg}/luns/lun{}", e.lun)) {
                        plan.steps.push(Step::new(
                            format!("LUN {} of {iqn} = {bs}", e.lun),
                            &[
                                "targetcli",
                                &format!("{tpg}/luns"),
                                "create",
                                &bs_path,
                                &format!("lun={}", e.lun),
                            ],
                        ));
                        changed = true;
                    }
                    for init in &e.allowed_initiators {
                        let acl = format!("{tpg}/acls/{init}");
                        if have.contains(&acl) {
                            continue;
                        }
                        plan.steps.push(Step::new(
                            format!("allow initiator {init} on {iqn}"),
                            &["targetcli", &format!("{tpg}/acls"), "create", init],
                        ));
                        if let Some(c) = creds {
                            let mut cmd: Vec<String> = vec![
                                "targetcli".into(),
                                acl.clone(),
                                "set".into(),
                                "auth".into(),
                                format!("userid={}", c.username),
                                format!("password={}", c.password),
                            ];
                            if let (Some(u), Some(p)) = (&c.mutual_username, &c.mutual_password) {
                                cmd.push(format!("mutual_userid={u}"));
                                cmd.push(format!("mutual_password={p}"));
                            }
                            let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
                            plan.steps.push(Step::new(
                                format!("CHAP for initiator {init} on {iqn}"),
                                &refs,
                            ));
                        }
                        changed = true;
                    }
                }
                if changed {
                    plan.steps.push(Step::new(
                        "persist the LIO configuration",
                        &["targetcli", "saveconfig"],
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    const TARGETCLI: &str = include_str!("../tests/fixtures/targetcli-ls.txt");
    /// Captured in the storage VM after the agent exported the lane pool's `inference`.
    const EXPORTFS: &str = include_str!("../tests/fixtures/exportfs-s.txt");
    /// Written from exportfs' format: two exports of the LLM sample, the second path on its own
    /// line (what exportfs prints for long paths).
    const EXPORTFS_WRAPPED: &str = include_str!("../tests/fixtures/exportfs-s-wrapped.txt");

    fn spec() -> ZfsPoolSpec {
        let sp: tessera_crds::StoragePool =
            serde_yaml::from_str(include_str!("../../deploy/samples/storagepool-llm.yaml"))
                .unwrap();
        sp.spec.zfs.unwrap()
    }

    fn lane_spec() -> ZfsPoolSpec {
        let sp: tessera_crds::StoragePool =
            serde_yaml::from_str(include_str!("../../hack/storage/pools/zfs-llm.yaml")).unwrap();
        sp.spec.zfs.unwrap()
    }

    fn chap() -> Vec<(String, ChapCredentials)> {
        vec![(
            "tessera-system/llm-iscsi-chap".into(),
            ChapCredentials {
                username: "hv01".into(),
                password: "s3cret-pass".into(),
                ..Default::default()
            },
        )]
    }

    #[test]
    fn targetcli_tree_parses_into_paths() {
        let p = parse_targetcli_ls(TARGETCLI);
        assert!(p.contains("/backstores/block/llm-vm-iscsi0"), "{p:?}");
        assert!(p.contains("/iscsi/iqn.2026-01.dev.tessera:llm-vm/tpg1/luns/lun0"));
        assert!(p.contains(
            "/iscsi/iqn.2026-01.dev.tessera:llm-vm/tpg1/acls/iqn.2026-01.lab.example:hypervisor-01"
        ));
    }

    #[test]
    fn exportfs_parses_captured_and_wrapped_lines() {
        let e = parse_exportfs(EXPORTFS);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "/llm/inference");
        assert!(e[0].2.contains("rw") && e[0].2.contains("no_subtree_check"));
        let e = parse_exportfs(EXPORTFS_WRAPPED);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "/llm/inference");
        assert_eq!(e[0].1, "10.20.0.0/24");
        assert!(e[0].2.contains("root_squash"));
        assert_eq!(e[1].0, "/llm/training");
    }

    #[test]
    fn missing_exports_are_created_with_chap_and_saved() {
        let r = ScriptedRunner::default();
        r.ok("exportfs -s", "");
        r.ok(
            "targetcli ls /",
            "o- / ..... [...]\n  o- backstores ... [...]\n  o- iscsi ..... [Targets: 0]\n",
        );
        let mut p = Plan::default();
        let s = spec();
        plan(&r, &s, s.exports.as_ref().unwrap(), &chap(), &mut p).unwrap();
        let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
        assert_eq!(
            cmds[..2],
            [
                "exportfs -o rw,sync,no_subtree_check,root_squash 10.20.0.0/24:/llm/inference",
                "exportfs -o rw,sync,no_subtree_check,root_squash 10.20.0.0/24:/llm/training",
            ]
        );
        assert_eq!(
            cmds[2],
            "targetcli /backstores/block create name=llm-vm-iscsi0 dev=/dev/zvol/llm/vm/iscsi0"
        );
        assert_eq!(
            cmds[3],
            "targetcli /iscsi create iqn.2026-01.dev.tessera:llm-vm"
        );
        assert_eq!(
            cmds[4],
            "targetcli /iscsi/iqn.2026-01.dev.tessera:llm-vm/tpg1/luns create /backstores/block/llm-vm-iscsi0 lun=0"
        );
        assert!(cmds[6].contains("set auth userid=hv01 password=s3cret-pass"));
        assert!(
            !p.steps[6].shown().contains("s3cret"),
            "secrets are masked when logged"
        );
        assert!(
            !serde_json::to_string(&p).unwrap().contains("s3cret"),
            "and in reports"
        );
        assert_eq!(cmds.last().unwrap(), "targetcli saveconfig");
    }

    #[test]
    fn present_exports_are_a_noop() {
        let r = ScriptedRunner::default();
        r.ok("exportfs -s", EXPORTFS_WRAPPED);
        r.ok("targetcli ls /", TARGETCLI);
        let mut p = Plan::default();
        let s = spec();
        plan(&r, &s, s.exports.as_ref().unwrap(), &chap(), &mut p).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        // The lane's pool against what the kernel lane's exportfs reported.
        let r = ScriptedRunner::default();
        r.ok("exportfs -s", EXPORTFS);
        r.ok("targetcli ls /", TARGETCLI);
        let mut p = Plan::default();
        let s = lane_spec();
        plan(&r, &s, s.exports.as_ref().unwrap(), &[], &mut p).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
    }

    #[test]
    fn without_chap_credentials_the_target_is_skipped_not_opened() {
        let r = ScriptedRunner::default();
        r.ok("exportfs -s", EXPORTFS_WRAPPED);
        r.ok("targetcli ls /", "o- / ... [...]\n");
        let mut p = Plan::default();
        let s = spec();
        plan(&r, &s, s.exports.as_ref().unwrap(), &[], &mut p).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert_eq!(p.skipped[0].reason, "ChapSecretUnavailable");
    }

    #[test]
    fn missing_tools_skip_the_exports_with_a_reason() {
        // The scripted runner answers unscripted commands with exit 127, the system runner with
        // ToolMissing; both must not fail the pool.
        struct NoTools;
        impl Runner for NoTools {
            fn run(&self, program: &str, _: &[&str]) -> Result<crate::runner::Output> {
                Err(Error::ToolMissing(program.into()))
            }
            fn read(&self, _: &str) -> Result<Option<String>> {
                Ok(None)
            }
        }
        let mut p = Plan::default();
        let s = spec();
        plan(&NoTools, &s, s.exports.as_ref().unwrap(), &chap(), &mut p).unwrap();
        assert_eq!(p.skipped.len(), 2);
        assert!(p.skipped.iter().all(|x| x.reason == "ToolMissing"));
    }
}
