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

#[tokio::test]
async fn agent_publishes_inventory_and_reports_pools_and_policies() {
    let c = cluster().await.unwrap();
    let client = c.client().await.unwrap();
    install_crds(&client, &repo_root().join("charts/tessera/crds"))
        .await
        .unwrap();
    let node = "storage-01";
    let cfg = Config {
        node_name: node.into(),
        dry_run: true,
        interval: Duration::from_secs(30),
        thresholds: Thresholds::default(),
        chap: Vec::new(),
        listen: None,
    };

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
