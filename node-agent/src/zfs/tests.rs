use super::*;
use crate::runner::ScriptedRunner;

const STATUS: &str = include_str!("../../tests/fixtures/zpool-status.txt");
const STATUS_DEGRADED: &str = include_str!("../../tests/fixtures/zpool-status-degraded.txt");
const STATUS_SCRUB: &str = include_str!("../../tests/fixtures/zpool-status-scrub.txt");
const LIST: &str = include_str!("../../tests/fixtures/zpool-list.txt");
const GET: &str = include_str!("../../tests/fixtures/zpool-get.txt");
const ZFS_GET_INFERENCE: &str = include_str!("../../tests/fixtures/zfs-get-inference.txt");
const ZFS_GET_ZVOL: &str = include_str!("../../tests/fixtures/zfs-get-zvol.txt");
const POOL: &str = include_str!("../../../hack/storage/pools/zfs-llm.yaml");

fn spec() -> ZfsPoolSpec {
    let sp: tessera_crds::StoragePool = serde_yaml::from_str(POOL).unwrap();
    let mut z = sp.spec.zfs.unwrap();
    z.exports = None;
    z
}

/// A runner that knows the created pool: status, properties, and every dataset / zvol as the
/// kernel lane reported them.
fn existing(status: &str) -> ScriptedRunner {
    let r = ScriptedRunner::default();
    r.ok("zpool status -P -p llm", status);
    r.ok("zpool get -Hp -o property,value ashift,autotrim llm", GET);
    r.ok("zpool list -Hp", LIST);
    // Datasets other than inference: answer with the values the spec asks for.
    r.ok(
        "zfs get -Hp -o property,value recordsize,logbias,special_small_blocks llm/training",
        "recordsize\t1048576\nlogbias\tthroughput\nspecial_small_blocks\t32768\n",
    );
    r.ok(
        "zfs get -Hp -o property,value recordsize,sync,special_small_blocks llm/tmp",
        "recordsize\t131072\nsync\tdisabled\nspecial_small_blocks\t32768\n",
    );
    r.ok(
        "zfs get -Hp -o property,value recordsize,compression,special_small_blocks llm/backup",
        "recordsize\t1048576\ncompression\tlz4\nspecial_small_blocks\t32768\n",
    );
    r.ok(
        "zfs get -Hp -o property,value special_small_blocks llm/vm",
        "special_small_blocks\t32768\n",
    );
    r.ok(
        "zfs get -Hp -o property,value recordsize,atime,special_small_blocks llm/inference",
        ZFS_GET_INFERENCE,
    );
    r.ok(
        "zfs get -Hp -o property,value volsize,volblocksize,sync,volmode llm/vm/iscsi0",
        ZFS_GET_ZVOL,
    );
    r
}

#[test]
fn status_parses_groups_classes_and_leaves() {
    let st = parse_status(STATUS).unwrap();
    assert_eq!(st.name, "llm");
    assert_eq!(st.state, "ONLINE");
    let kinds: Vec<(Class, &str, usize)> = st
        .vdevs
        .iter()
        .map(|v| (v.class, v.kind.as_str(), v.leaves.len()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Class::Data, "mirror", 2),
            (Class::Data, "mirror", 2),
            (Class::Special, "stripe", 1),
            (Class::Log, "stripe", 1),
            (Class::Cache, "stripe", 1),
        ]
    );
    assert_eq!(st.vdevs[0].leaves[0].path, "/dev/vdm1");
    assert_eq!(st.vdevs[2].leaves[0].path, "/dev/vdq1");
}

#[test]
fn degraded_status_marks_the_offline_member() {
    let st = parse_status(STATUS_DEGRADED).unwrap();
    assert_eq!(st.state, "DEGRADED");
    let mut list = parse_list(LIST).unwrap();
    list.health = "DEGRADED".into();
    let o = observe_state(&spec(), &list, &st);
    assert!(o.degraded);
    assert_eq!(o.degraded_reason, "PoolDegraded");
    assert!(
        o.degraded_message.contains("/dev/vdn1 OFFLINE"),
        "{}",
        o.degraded_message
    );
    let m = o.members.iter().find(|m| m.device == "/dev/vdn1").unwrap();
    assert_eq!(m.state.as_deref(), Some("OFFLINE"));
    assert_eq!(m.role.as_deref(), Some("data mirror-0"));
}

#[test]
fn scrub_progress_becomes_the_operation() {
    let st = parse_status(STATUS_SCRUB).unwrap();
    let scan = st.scan.clone().unwrap();
    assert_eq!(scan.kind, OperationKind::Scrub);
    assert!(scan.in_progress);
    let o = observe_state(&spec(), &parse_list(LIST).unwrap(), &st);
    let op = o.operation.unwrap();
    assert_eq!(op.kind, OperationKind::Scrub);
    assert!(op.progress.is_some());
}

#[test]
fn finished_scrub_and_resilver_lines_are_not_operations() {
    let s =
        parse_scan(&[" scrub repaired 0B in 00:00:01 with 0 errors on Sun Nov 22 03:10:01 2026"])
            .unwrap();
    assert!(!s.in_progress);
    let s = parse_scan(&[
        " resilver in progress since Sun Nov 22 03:10:01 2026",
        "1048576 scanned at 1048576/s, 524288 issued at 524288/s, 2097152 total",
        "524288 resilvered, 25.00% done, 00:00:03 to go",
    ])
    .unwrap();
    assert_eq!(s.kind, OperationKind::Resilver);
    assert_eq!(s.percent, Some(25.0));
    assert_eq!(s.eta.as_deref(), Some("00:00:03"));
}

#[test]
fn list_and_capacity() {
    let l = parse_list(LIST).unwrap();
    assert_eq!(l.name, "llm");
    assert!(l.size > 0);
    let o = observe_state(&spec(), &l, &parse_status(STATUS).unwrap());
    assert!(!o.degraded);
    assert_eq!(o.health, "ONLINE");
    let high = o.conditions.iter().find(|c| c.0 == "CapacityHigh").unwrap();
    assert!(!high.1);
    assert!(
        o.conditions
            .iter()
            .any(|c| c.0 == "SpecialVdevNotRedundant" && c.1)
    );
}

#[test]
fn new_pool_is_created_with_groups_properties_datasets_and_zvol() {
    let r = ScriptedRunner::default();
    r.fail("zpool status", "cannot open 'llm': no such pool");
    r.ok("wipefs", "");
    let p = plan(&r, &spec(), DevicePolicy::Refuse, &[]).unwrap();
    assert!(p.refusals.is_empty(), "{p:?}");
    let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
    assert_eq!(
        cmds[0],
        "zpool create -f -o ashift=12 -o autotrim=on llm mirror /dev/vdm1 /dev/vdn1 mirror /dev/vdo1 /dev/vdp1 special /dev/vdq1 log /dev/vdq2 cache /dev/vdq3"
    );
    assert!(p.steps[0].destructive);
    assert!(p.steps[0].device.as_deref().unwrap().contains("/dev/vdq3"));
    assert!(cmds.contains(
        &"zfs create -p -o recordsize=1M -o atime=off -o special_small_blocks=32K llm/inference"
            .to_string()
    ));
    assert!(cmds.contains(
        &"zfs create -p -o recordsize=128K -o sync=disabled -o special_small_blocks=32K llm/tmp"
            .to_string()
    ));
    let last = cmds.last().unwrap();
    assert_eq!(
        last,
        "zfs create -p -V 33554432 -o volblocksize=16K -o sync=always -o volmode=dev llm/vm/iscsi0"
    );
    // the dataset vm comes before the volume inside it
    let vm = cmds.iter().position(|c| c.ends_with(" llm/vm")).unwrap();
    assert!(vm < cmds.len() - 1);
}

#[test]
fn a_redundant_layout_is_created_without_force() {
    let r = ScriptedRunner::default();
    r.fail("zpool status", "no such pool");
    r.ok("wipefs", "");
    let s: ZfsPoolSpec = serde_yaml::from_str(
        "{poolName: tank, vdevs: [{type: raidz2, devices: [/dev/a, /dev/b, /dev/c, /dev/d]}], spares: [/dev/e]}",
    )
    .unwrap();
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    assert_eq!(
        p.steps[0].command.join(" "),
        "zpool create -o ashift=12 tank raidz2 /dev/a /dev/b /dev/c /dev/d spare /dev/e"
    );
}

#[test]
fn reapplying_on_the_created_pool_is_a_noop() {
    let r = existing(STATUS);
    let p = plan(&r, &spec(), DevicePolicy::Refuse, &[]).unwrap();
    assert!(p.is_noop(), "{:#?}", p);
    assert!(
        !r.history().iter().any(|c| c.starts_with("wipefs")),
        "members of the pool are not probed again"
    );
}

#[test]
fn changed_dataset_properties_are_set() {
    let r = existing(STATUS);
    let mut s = spec();
    s.datasets[0].recordsize = Some("512K".into());
    s.datasets[0].compression = Some("zstd".into());
    r.ok(
        "zfs get -Hp -o property,value recordsize,compression,atime,special_small_blocks llm/inference",
        "recordsize\t1048576\ncompression\toff\natime\toff\nspecial_small_blocks\t32768\n",
    );
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
    assert_eq!(
        cmds,
        ["zfs set recordsize=512K compression=zstd llm/inference"]
    );
}

#[test]
fn growth_adds_a_mirror_and_grows_the_zvol() {
    let r = existing(STATUS);
    r.ok("wipefs", "");
    let mut s = spec();
    s.vdevs
        .push(serde_yaml::from_str("{type: mirror, devices: [/dev/vdu1, /dev/vdv1]}").unwrap());
    s.volumes[0].size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into());
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
    assert_eq!(
        cmds,
        [
            "zpool add llm mirror /dev/vdu1 /dev/vdv1",
            "zfs set volsize=67108864 llm/vm/iscsi0"
        ]
    );
    assert!(p.steps[0].destructive);
}

#[test]
fn removal_reshape_and_shrink_are_refused() {
    let r = existing(STATUS);
    let mut s = spec();
    s.vdevs.pop();
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    assert!(p.steps.is_empty());
    assert_eq!(p.refusals[0].reason, "RemovalRefused");
    assert!(p.refusals[0].message.contains("mirror-1"));

    let mut s = spec();
    s.vdevs[1] = serde_yaml::from_str("{type: stripe, devices: [/dev/vdo1, /dev/vdp1]}").unwrap();
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    assert_eq!(p.refusals[0].reason, "ReshapeRefused");

    let mut s = spec();
    s.vdevs[1] = serde_yaml::from_str("{type: mirror, devices: [/dev/vdo1, /dev/vdx1]}").unwrap();
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    assert_eq!(p.refusals[0].reason, "ReshapeRefused");

    let mut s = spec();
    s.ashift = Some(13);
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    assert_eq!(p.refusals[0].reason, "ReshapeRefused");
    assert!(p.refusals[0].message.contains("ashift"));

    let mut s = spec();
    s.volumes[0].size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("16Mi".into());
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    assert_eq!(p.refusals[0].reason, "ShrinkRefused");
}

#[test]
fn log_and_cache_no_longer_in_the_spec_are_removed() {
    let r = existing(STATUS);
    let mut s = spec();
    s.cache.clear();
    s.log.clear();
    let p = plan(&r, &s, DevicePolicy::Refuse, &[]).unwrap();
    let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
    assert_eq!(
        cmds,
        ["zpool remove llm /dev/vdq2", "zpool remove llm /dev/vdq3"]
    );
    assert!(p.steps.iter().all(|s| !s.destructive));
}

#[test]
fn a_signature_on_a_new_device_is_refused_unless_wipe() {
    let r = ScriptedRunner::default();
    r.fail("zpool status", "no such pool");
    r.ok("wipefs", "");
    r.ok(
        "wipefs --no-act --json /dev/vdq1",
        r#"{"signatures":[{"device":"vdq1","offset":"0x438","type":"ext4"}]}"#,
    );
    let p = plan(&r, &spec(), DevicePolicy::Refuse, &[]).unwrap();
    assert!(p.steps.is_empty());
    assert_eq!(p.refusals[0].reason, "DeviceHasSignature");
    let p = plan(&r, &spec(), DevicePolicy::Wipe, &[]).unwrap();
    assert_eq!(p.steps[0].command, ["wipefs", "--all", "/dev/vdq1"]);
    assert!(
        p.steps[1]
            .command
            .starts_with(&["zpool".into(), "create".into()])
    );
}

#[test]
fn whole_disks_match_their_first_partition() {
    let r = ScriptedRunner::default();
    assert!(same_device(&r, "/dev/sdb", "/dev/sdb1"));
    assert!(same_device(
        &r,
        "/dev/disk/by-id/ata-X",
        "/dev/disk/by-id/ata-X-part1"
    ));
    assert!(same_device(&r, "/dev/nvme0n1", "/dev/nvme0n1p1"));
    assert!(!same_device(&r, "/dev/sdb", "/dev/sdc1"));
}

#[test]
fn zfs_get_values_compare_as_sizes() {
    let have = parse_get(ZFS_GET_INFERENCE);
    assert!(same_value("recordsize", "1M", &have["recordsize"]));
    assert!(same_value(
        "special_small_blocks",
        "32K",
        &have["special_small_blocks"]
    ));
    assert!(same_value("atime", "off", &have["atime"]));
    let z = parse_get(ZFS_GET_ZVOL);
    assert_eq!(parse_size(&z["volsize"]), Some(32 << 20));
    assert_eq!(parse_size(&z["volblocksize"]), Some(16384));
}

#[test]
fn a_finished_scrub_in_the_captured_status_is_no_operation() {
    let st = parse_status(include_str!(
        "../../tests/fixtures/zpool-status-scrubbed.txt"
    ))
    .unwrap();
    let scan = st.scan.clone().unwrap();
    assert_eq!(scan.kind, OperationKind::Scrub);
    assert!(!scan.in_progress);
    let o = observe_state(&spec(), &parse_list(LIST).unwrap(), &st);
    assert!(o.operation.is_none());
    assert!(!o.degraded);
}

#[test]
fn destroy_destroys_the_pool_then_clears_every_leaf_label() {
    let r = existing(STATUS);
    let p = destroy_plan(&r, &spec()).unwrap();
    let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
    assert_eq!(cmds[0], "zpool destroy llm");
    for leaf in [
        "/dev/vdm1",
        "/dev/vdn1",
        "/dev/vdo1",
        "/dev/vdp1",
        "/dev/vdq1",
        "/dev/vdq2",
        "/dev/vdq3",
    ] {
        assert!(
            cmds.contains(&format!("zpool labelclear -f {leaf}")),
            "{leaf}: {cmds:?}"
        );
    }
    // The spec names partitions, so no partition table is wiped.
    assert!(!cmds.iter().any(|c| c.starts_with("wipefs")), "{cmds:?}");
    assert!(p.steps.iter().all(|s| s.destructive));

    // Whole disks: ZFS partitioned them, and the tables go too.
    let mut whole = spec();
    for v in whole.vdevs.iter_mut() {
        for d in v.devices.iter_mut() {
            *d = d.trim_end_matches('1').to_string();
        }
    }
    let p = destroy_plan(&r, &whole).unwrap();
    let cmds: Vec<String> = p.steps.iter().map(|s| s.command.join(" ")).collect();
    assert!(
        cmds.contains(&"wipefs --all /dev/vdm".to_string()),
        "{cmds:?}"
    );
    assert!(
        !cmds.contains(&"wipefs --all /dev/vdq".to_string()),
        "{cmds:?}"
    );

    let gone = ScriptedRunner::default();
    gone.fail("zpool status", "cannot open 'llm': no such pool");
    assert!(destroy_plan(&gone, &spec()).unwrap().steps.is_empty());
}

#[test]
fn arc_max_is_written_when_it_differs_and_left_alone_when_it_matches() {
    let mut z = spec();
    z.arc_max = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
        "11Gi".into(),
    ));
    let r = existing(STATUS);
    r.file(ARC_MAX_PARAM, "0\n");
    let p = plan(&r, &z, DevicePolicy::Refuse, &[]).unwrap();
    assert_eq!(
        p.steps
            .iter()
            .map(|s| s.command.clone())
            .collect::<Vec<_>>(),
        vec![vec![
            crate::plan::SYSFS_WRITE.to_string(),
            ARC_MAX_PARAM.to_string(),
            (11u64 << 30).to_string()
        ]]
    );
    let r = existing(STATUS);
    r.file(ARC_MAX_PARAM, &format!("{}\n", 11u64 << 30));
    assert!(
        plan(&r, &z, DevicePolicy::Refuse, &[])
            .unwrap()
            .steps
            .is_empty()
    );
}

#[test]
fn scheduled_snapshots_keep_only_the_newest_of_their_own() {
    let z = spec();
    let policy = z
        .datasets
        .iter()
        .find(|d| d.name == "inference")
        .and_then(|d| d.snapshots.clone())
        .expect("the lane's pool snapshots llm/inference");
    assert_eq!(policy.keep, 2);
    let r = ScriptedRunner::default();
    r.ok(
        "zfs list -H -p -t snapshot",
        "llm/inference@manual\nllm/inference@tessera-20261120-020000\nllm/inference@tessera-20261121-020000\n",
    );
    let steps = snapshot_steps(&r, &z, &["inference".to_string()], "20261122-020000").unwrap();
    let cmds: Vec<String> = steps.iter().map(|s| s.command.join(" ")).collect();
    assert_eq!(
        cmds,
        vec![
            "zfs snapshot llm/inference@tessera-20261122-020000",
            "zfs destroy llm/inference@tessera-20261120-020000",
        ]
    );
    assert!(!steps[0].destructive && steps[1].destructive);
    // A name taken in the same second gets a suffix; datasets not due are left alone.
    let r = ScriptedRunner::default();
    r.ok(
        "zfs list -H -p -t snapshot",
        "llm/inference@tessera-20261122-020000\n",
    );
    let steps = snapshot_steps(&r, &z, &["inference".to_string()], "20261122-020000").unwrap();
    assert_eq!(
        steps[0].command.join(" "),
        "zfs snapshot llm/inference@tessera-20261122-020000-2"
    );
    assert!(
        snapshot_steps(&r, &z, &["tmp".to_string()], "x")
            .unwrap()
            .is_empty()
    );
}
