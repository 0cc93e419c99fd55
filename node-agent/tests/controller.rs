//! Controller mode against a real apiserver, in dry run on this machine's real tools: the node's
//! TesseraNode gets its inventory, pools resolved to the node get the agent's status with a clear
//! reason, and a GpuRaidPolicy selecting the node gets this node's entry marked applied.

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tessera_crds::{GpuRaidPolicy, StoragePool, TesseraNode};
use tessera_e2e::apply::{apply_file, install_crds};
use tessera_e2e::harness::cluster;
use tessera_e2e::repo_root;
use tessera_node_agent::controller::{Config, pass};
use tessera_node_agent::runner::SystemRunner;
use tessera_node_agent::smart::Thresholds;

/// A client of the shared local control plane, with the CRDs installed.
async fn client_with_crds() -> kube::Client {
    let c = cluster().await.unwrap();
    let client = c.client().await.unwrap();
    install_crds(&client, &repo_root().join("charts/tessera/crds"))
        .await
        .unwrap();
    client
}

/// An MD StoragePool `name` as the operator leaves it: `metadata` and `spec` as given, and
/// `status.nodeName` resolved to `node`.
async fn md_pool_on(
    sps: &Api<StoragePool>,
    name: &str,
    node: &str,
    metadata: serde_json::Value,
    spec: serde_json::Value,
) {
    let obj = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "StoragePool",
        "metadata": metadata, "spec": spec});
    sps.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
    let st = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "StoragePool", "status": {"nodeName": node}});
    sps.patch_status(
        name,
        &PatchParams::apply("tessera-operator").force(),
        &Patch::Apply(&st),
    )
    .await
    .unwrap();
}

/// The agent's configuration for `node` (no HTTP server).
fn config(node: &str, dry_run: bool) -> Config {
    Config {
        node_name: node.into(),
        dry_run,
        interval: Duration::from_secs(30),
        thresholds: Thresholds::default(),
        chap: Vec::new(),
        listen: None,
    }
}

#[tokio::test]
async fn agent_publishes_inventory_and_reports_pools_and_policies() {
    let client = client_with_crds().await;
    let node = "storage-01";
    let cfg = config(node, true);

    // Pools as the operator leaves them: status.nodeName resolved to this node.
    let sps: Api<StoragePool> = Api::all(client.clone());
    for f in ["storagepool-md.yaml", "storagepool-llm.yaml"] {
        apply_file(&client, &repo_root().join("deploy/samples").join(f), None)
            .await
            .unwrap();
    }
    for name in ["scratch-raid6", "llm"] {
        let st = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "StoragePool", "status": {"nodeName": node}});
        sps.patch_status(
            name,
            &PatchParams::apply("tessera-operator").force(),
            &Patch::Apply(&st),
        )
        .await
        .unwrap();
    }
    // A policy the operator resolved to this node.
    apply_file(
        &client,
        &repo_root().join("deploy/samples/gpuraidpolicy.yaml"),
        None,
    )
    .await
    .unwrap();
    let grps: Api<GpuRaidPolicy> = Api::all(client.clone());
    let st = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "GpuRaidPolicy", "status": {"nodes": [{"nodeName": node, "gpus": ["GPU-x"]}]}});
    grps.patch_status(
        "default",
        &PatchParams::apply("tessera-operator").force(),
        &Patch::Apply(&st),
    )
    .await
    .unwrap();

    pass(&client, &SystemRunner, &cfg).await.unwrap();

    let tn = Api::<TesseraNode>::all(client.clone())
        .get(node)
        .await
        .unwrap();
    let status = tn.status.unwrap();
    let inv = status.inventory.unwrap();
    assert!(
        !inv.block_devices.is_empty(),
        "lsblk found this machine's disks"
    );
    assert_eq!(
        inv.agent_version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    let md = sps.get("scratch-raid6").await.unwrap();
    let applied = md
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Applied")
        .unwrap()
        .clone();
    assert_eq!(applied.status, "False", "{applied:?}");
    // mdadm missing here -> ToolMissing; with mdadm, the sample's by-id disks do not exist here.
    assert!(
        ["ToolMissing", "DeviceNotFound"].contains(&applied.reason.as_str()),
        "{applied:?}"
    );
    assert_eq!(applied.observed_generation, md.metadata.generation);
    assert_eq!(
        md.status.as_ref().unwrap().node_name.as_deref(),
        Some(node),
        "operator's field kept"
    );
    let llm = sps.get("llm").await.unwrap();
    let applied = llm
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Applied")
        .unwrap();
    // zpool missing here -> ToolMissing; with zpool, the sample's by-id disks do not exist here.
    assert!(
        ["ToolMissing", "DeviceNotFound"].contains(&applied.reason.as_str()),
        "{applied:?}"
    );

    let p = grps.get("default").await.unwrap();
    let entry = p
        .status
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.node_name == node)
        .unwrap();
    assert_eq!(entry.applied, Some(true));
    assert_eq!(
        entry.gpus,
        ["GPU-x"],
        "the operator's gpus stay beside the agent's applied"
    );

    // A second pass reports the same.
    let before = md
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Applied")
        .unwrap()
        .reason;
    pass(&client, &SystemRunner, &cfg).await.unwrap();
    let again = sps.get("scratch-raid6").await.unwrap();
    let after = again
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Applied")
        .unwrap()
        .reason;
    assert_eq!(before, after);
}

/// deletionPolicy Destroy in controller mode: the operator's finalizer holds the deleted object;
/// the agent runs the destroy steps (here on a scripted runner playing an existing MD array, not
/// this machine's disks), confirms `Destroyed=True`, and a later pass finds nothing to destroy.
#[tokio::test]
async fn a_deleted_destroy_pool_is_destroyed_and_confirmed() {
    use tessera_node_agent::controller::{AgentState, reconcile_pool};
    use tessera_node_agent::runner::ScriptedRunner;

    let client = client_with_crds().await;
    let node = "storage-destroy";
    let sps: Api<StoragePool> = Api::all(client.clone());
    md_pool_on(
        &sps,
        "destroy-md",
        node,
        json!({"name": "destroy-md", "finalizers": ["tessera.dev/storagepool-protection"]}),
        json!({"nodeName": node, "backend": "md", "deletionPolicy": "Destroy",
                 "md": {"name": "data", "level": 6,
                        "devices": ["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd", "/dev/vde", "/dev/vdf"]}}),
    )
    .await;
    sps.delete("destroy-md", &Default::default()).await.unwrap();
    let pool = sps.get("destroy-md").await.unwrap();
    assert!(
        pool.metadata.deletion_timestamp.is_some(),
        "held by the finalizer"
    );

    let r = ScriptedRunner::default();
    r.ok(
        "mdadm --detail --export /dev/md/data",
        include_str!("fixtures/mdadm-detail-export.txt"),
    )
    .ok("mdadm --stop", "")
    .ok("mdadm --zero-superblock", "");
    let cfg = config(node, false);
    let mut state = AgentState::new(node);
    reconcile_pool(&client, &r, &cfg, &mut state, &pool)
        .await
        .unwrap();
    let calls = r.calls.lock().unwrap().clone();
    assert!(
        calls.contains(&"mdadm --stop /dev/md/data".to_string()),
        "{calls:?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("mdadm --zero-superblock"))
            .count(),
        6,
        "{calls:?}"
    );
    let destroyed = |p: &StoragePool| {
        p.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Destroyed")
            .cloned()
            .unwrap()
    };
    let d = destroyed(&sps.get("destroy-md").await.unwrap());
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "Destroyed"),
        "{d:?}"
    );

    // ... with an Event on the pool, published once.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let mine = |evs: Vec<k8s_openapi::api::events::v1::Event>| {
        evs.into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("destroy-md"))
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    let got = mine(events.list(&Default::default()).await.unwrap().items);
    assert_eq!(
        got,
        [("Normal".to_string(), "PoolDestroyed".to_string())],
        "{got:?}"
    );

    // The array is gone now: the next pass confirms again without a step.
    let r = ScriptedRunner::default();
    r.fail(
        "mdadm --detail --export /dev/md/data",
        "mdadm: cannot open /dev/md/data",
    );
    let pool = sps.get("destroy-md").await.unwrap();
    reconcile_pool(&client, &r, &cfg, &mut state, &pool)
        .await
        .unwrap();
    let later: Vec<String> = r.calls.lock().unwrap().clone();
    assert!(
        later
            .iter()
            .all(|c| !c.contains("--stop") && !c.contains("--zero")),
        "{later:?}"
    );
    let d = destroyed(&sps.get("destroy-md").await.unwrap());
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "NotPresent"),
        "{d:?}"
    );

    // What the operator does on Destroyed=True: drop the finalizer; the object goes.
    sps.patch(
        "destroy-md",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

/// A GpuRaidPolicy's verifySchedule in controller mode: when it fired, the agent verifies each MD
/// pool of the node and writes `lastVerify` into its own entry of the policy status (here the
/// array is absent, so the entry carries the error) and an Event on the pool.
#[tokio::test]
async fn a_due_verify_schedule_reports_into_the_policy_status() {
    use tessera_node_agent::controller::{AgentState, run_verify_jobs};
    use tessera_node_agent::runner::ScriptedRunner;

    let client = client_with_crds().await;
    let node = "storage-verify";
    let sps: Api<StoragePool> = Api::all(client.clone());
    md_pool_on(
        &sps,
        "verify-md",
        node,
        json!({"name": "verify-md"}),
        json!({"nodeName": node, "backend": "md",
                 "md": {"name": "vdata", "level": 6,
                        "devices": ["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"]}}),
    )
    .await;
    let grps: Api<GpuRaidPolicy> = Api::all(client.clone());
    let pol = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "GpuRaidPolicy",
        "metadata": {"name": "verify-hourly"}, "spec": {"verifySchedule": "0 * * * *"}});
    grps.patch(
        "verify-hourly",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&pol),
    )
    .await
    .unwrap();
    let st = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "GpuRaidPolicy",
        "status": {"nodes": [{"nodeName": node, "gpus": ["GPU-v"]}]}});
    grps.patch_status(
        "verify-hourly",
        &PatchParams::apply("tessera-operator").force(),
        &Patch::Apply(&st),
    )
    .await
    .unwrap();

    let cfg = config(node, false);
    let r = ScriptedRunner::default();
    r.fail(
        "mdadm --detail --export /dev/md/vdata",
        "mdadm: cannot open /dev/md/vdata",
    );
    // The agent started two hours ago: the hourly schedule has fired since.
    let started = k8s_openapi::jiff::Zoned::now()
        .datetime()
        .checked_sub(k8s_openapi::jiff::Span::new().hours(2))
        .unwrap();
    let mut state = AgentState::started_at(node, started);
    run_verify_jobs(&client, &r, &cfg, &mut state)
        .await
        .unwrap();

    let p = grps.get("verify-hourly").await.unwrap();
    let entry = p
        .status
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.node_name == node)
        .unwrap();
    assert_eq!(entry.gpus, ["GPU-v"], "the operator's field stays");
    let last = entry.last_verify.expect("lastVerify written");
    assert_eq!(last.pool, "verify-md");
    assert!(
        last.error
            .as_deref()
            .unwrap_or("")
            .contains("vdata does not exist"),
        "{last:?}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("verify-md"))
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(reasons, ["ParityVerifyFailed"]);

    // Not due again within the hour: nothing more runs.
    let n = r.calls.lock().unwrap().len();
    run_verify_jobs(&client, &r, &cfg, &mut state)
        .await
        .unwrap();
    assert_eq!(r.calls.lock().unwrap().len(), n);
}
