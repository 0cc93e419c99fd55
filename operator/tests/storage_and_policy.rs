//! StoragePool and GpuRaidPolicy reconciled by a real operator process against a real apiserver.
//! The node agent is not built yet, so this test writes the node agent's share of the status
//! itself (field manager `tessera-node-agent`), exactly as the agent will.

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tessera_crds::storage_pool::PoolPhase;
use tessera_crds::{GpuRaidPolicy, StoragePool};
use tessera_e2e::apply::{apply_file, install_crds};
use tessera_e2e::harness::cluster;
use tessera_e2e::repo_root;

async fn node(client: &Client, name: &str, labels: serde_json::Value) {
    let api: Api<Node> = Api::all(client.clone());
    let n =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&n))
        .await
        .unwrap();
}

async fn wait_for<T, F>(what: &str, mut f: F) -> T
where
    F: AsyncFnMut() -> Option<T>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn cond<'a>(
    sp: &'a StoragePool,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    sp.status.as_ref()?.conditions.iter().find(|c| c.type_ == t)
}

async fn agent_reports(
    api: &Api<StoragePool>,
    name: &str,
    conds: serde_json::Value,
    extra: serde_json::Value,
) {
    let mut status = json!({"conditions": conds});
    if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let patch =
        json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "StoragePool", "status": status});
    api.patch_status(
        name,
        &PatchParams::apply("tessera-node-agent").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
}

fn agent_cond(t: &str, s: &str, reason: &str, generation: i64) -> serde_json::Value {
    json!({"type": t, "status": s, "reason": reason, "message": format!("{t}: {reason}"),
           "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

#[tokio::test]
async fn storage_pools_and_policies_are_reconciled() {
    let c = cluster().await.unwrap();
    let client = c.client().await.unwrap();
    install_crds(&client, &repo_root().join("charts/tessera/crds"))
        .await
        .unwrap();
    let ns = c.namespace("tessera-system").await.unwrap();
    let log = c.dir.join("operator-sp.log");
    let op = common::start_operator_with(
        &c.kubeconfig,
        &ns,
        "op-sp",
        &log,
        &[
            "--node-agent-image=registry.example/tessera-node-agent:0.1.0",
            "--node-agent-node-selector=tessera.dev/storage=true",
        ],
    );
    let sps: Api<StoragePool> = Api::all(client.clone());

    // The node-agent DaemonSet matches the operator's configuration.
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let ds = wait_for("node-agent DaemonSet", async || {
        dss.get_opt("tessera-node-agent").await.unwrap()
    })
    .await;
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/tessera-node-agent:0.1.0")
    );
    assert_eq!(pod.node_selector.unwrap()["tessera.dev/storage"], "true");
    assert!(
        pod.tolerations
            .unwrap()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists"))
    );

    // The LLM pool before its node exists: accepted (with the special-vdev warning), NodeNotFound.
    apply_file(
        &client,
        &repo_root().join("deploy/samples/storagepool-llm.yaml"),
        None,
    )
    .await
    .unwrap();
    let sp = wait_for("llm NodeNotFound", async || {
        let sp = sps.get("llm").await.unwrap();
        (cond(&sp, "Ready").map(|c| c.reason.as_str()) == Some("NodeNotFound")).then_some(sp)
    })
    .await;
    let accepted = cond(&sp, "Accepted").unwrap();
    assert_eq!(accepted.status, "True");
    assert!(
        accepted.message.contains("single device"),
        "{}",
        accepted.message
    );
    assert!(
        sp.finalizers()
            .iter()
            .any(|f| f == "tessera.dev/storagepool-protection")
    );
    assert_eq!(sp.status.unwrap().phase, Some(PoolPhase::Pending));

    // The node appears: resolved, waiting for the node agent.
    node(
        &client,
        "storage-01",
        json!({"tessera.dev/storage": "true"}),
    )
    .await;
    let sp = wait_for("llm waiting for agent", async || {
        let sp = sps.get("llm").await.unwrap();
        (cond(&sp, "Ready").map(|c| c.reason.as_str()) == Some("WaitingForNodeAgent")).then_some(sp)
    })
    .await;
    assert_eq!(
        sp.status.as_ref().unwrap().node_name.as_deref(),
        Some("storage-01")
    );
    let generation = sp.metadata.generation.unwrap();

    // The agent reports the pool applied -> Ready; then a faulted member -> Degraded.
    agent_reports(
        &sps,
        "llm",
        json!([agent_cond("Applied", "True", "Applied", generation)]),
        json!({"health": "ONLINE", "capacity": {"size": "7Ti", "free": "7Ti"}}),
    )
    .await;
    wait_for("llm Ready", async || {
        let sp = sps.get("llm").await.unwrap();
        (sp.status.as_ref()?.phase == Some(PoolPhase::Ready)
            && cond(&sp, "Ready")?.status == "True")
            .then_some(())
    })
    .await;
    agent_reports(
        &sps,
        "llm",
        json!([
            agent_cond("Applied", "True", "Applied", generation),
            agent_cond("Degraded", "True", "MemberFaulted", generation)
        ]),
        json!({"health": "DEGRADED"}),
    )
    .await;
    let sp = wait_for("llm Degraded", async || {
        let sp = sps.get("llm").await.unwrap();
        (sp.status.as_ref()?.phase == Some(PoolPhase::Degraded)).then_some(sp)
    })
    .await;
    assert_eq!(
        sp.status.as_ref().unwrap().health.as_deref(),
        Some("DEGRADED"),
        "agent fields kept"
    );
    let (ok, out, _) = c
        .kubectl(&["get", "events", "-A", "-o", "custom-columns=REASON:.reason"])
        .unwrap();
    assert!(
        ok && out.contains("SpecWarning") && out.contains("PoolDegraded"),
        "{out}"
    );

    // A selector matching two nodes is ambiguous.
    node(
        &client,
        "lvm-a",
        json!({"tessera.dev/storage-node": "lvm-01"}),
    )
    .await;
    node(
        &client,
        "lvm-b",
        json!({"tessera.dev/storage-node": "lvm-01"}),
    )
    .await;
    apply_file(
        &client,
        &repo_root().join("deploy/samples/storagepool-lvm.yaml"),
        None,
    )
    .await
    .unwrap();
    wait_for("lvm ambiguous", async || {
        let sp = sps.get("datasets-lvm").await.unwrap();
        (cond(&sp, "Ready")?.reason == "NodeSelectorAmbiguous").then_some(())
    })
    .await;

    // An agent refusal (a device with a signature) makes the pool Failed with the agent's reason.
    let generation = sps
        .get("datasets-lvm")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    node(&client, "lvm-b", json!({})).await;
    agent_reports(
        &sps,
        "datasets-lvm",
        json!([agent_cond(
            "Applied",
            "False",
            "DeviceHasSignature",
            generation
        )]),
        json!({}),
    )
    .await;
    wait_for("lvm failed", async || {
        let sp = sps.get("datasets-lvm").await.unwrap();
        (sp.status.as_ref()?.phase == Some(PoolPhase::Failed)
            && cond(&sp, "Ready")?.reason == "DeviceHasSignature")
            .then_some(())
    })
    .await;

    // Retain: the object goes at once, the pool stays (the agent is not involved).
    sps.delete("datasets-lvm", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("retained pool object gone", async || {
        sps.get_opt("datasets-lvm")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // Destroy: the finalizer holds the object until the agent confirms.
    sps.patch("llm", &PatchParams::apply("test-destroy").force(),
        &Patch::Apply(json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "StoragePool", "spec": {"deletionPolicy": "Destroy"}})))
        .await
        .unwrap();
    sps.delete("llm", &DeleteParams::default()).await.unwrap();
    wait_for("llm Deleting", async || {
        let sp = sps.get("llm").await.unwrap();
        (sp.status.as_ref()?.phase == Some(PoolPhase::Deleting)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        sps.get_opt("llm").await.unwrap().is_some(),
        "held until the agent confirms"
    );
    agent_reports(
        &sps,
        "llm",
        json!([agent_cond("Destroyed", "True", "PoolDestroyed", generation)]),
        json!({}),
    )
    .await;
    wait_for("destroyed pool object gone", async || {
        sps.get_opt("llm").await.unwrap().is_none().then_some(())
    })
    .await;

    // GpuRaidPolicy: selects the H100 of node storage-01 from its TesseraNode inventory.
    let tn = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "TesseraNode", "metadata": {"name": "storage-01"}, "spec": {"nodeName": "storage-01"}});
    let tns: Api<tessera_crds::TesseraNode> = Api::all(client.clone());
    tns.patch(
        "storage-01",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&tn),
    )
    .await
    .unwrap();
    let inv = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "TesseraNode", "status": {"inventory": {"gpus": [
        {"index": 0, "uuid": "GPU-h100", "model": "NVIDIA H100 80GB HBM3", "memory": "80Gi"},
        {"index": 1, "uuid": "GPU-l4", "model": "NVIDIA L4", "memory": "24Gi"}]}}});
    tns.patch_status(
        "storage-01",
        &PatchParams::apply("tessera-node-agent").force(),
        &Patch::Apply(&inv),
    )
    .await
    .unwrap();
    apply_file(
        &client,
        &repo_root().join("deploy/samples/gpuraidpolicy.yaml"),
        None,
    )
    .await
    .unwrap();
    let grps: Api<GpuRaidPolicy> = Api::all(client.clone());
    let p = wait_for("policy resolved", async || {
        let p = grps.get("default").await.unwrap();
        (p.status.as_ref()?.node_count == Some(1)).then_some(p)
    })
    .await;
    let st = p.status.unwrap();
    assert_eq!(
        st.nodes[0].gpus,
        ["GPU-h100"],
        "model selector 'H' matches H100, not L4"
    );
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    );
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Applied" && c.reason == "WaitingForNodeAgents")
    );
    // The node's agent marks its own entry applied.
    let mine = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "GpuRaidPolicy", "status": {"nodes": [{"nodeName": "storage-01", "applied": true}]}});
    grps.patch_status(
        "default",
        &PatchParams::apply("tessera-node-agent-storage-01").force(),
        &Patch::Apply(&mine),
    )
    .await
    .unwrap();
    grps.patch("default", &PatchParams::apply("poke").force(),
        &Patch::Apply(json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "GpuRaidPolicy", "metadata": {"annotations": {"poke": "1"}}})))
        .await
        .unwrap();
    wait_for("policy applied", async || {
        let p = grps.get("default").await.unwrap();
        p.status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Applied" && c.status == "True")
            .then_some(())
    })
    .await;
    let p = grps.get("default").await.unwrap();
    assert_eq!(
        p.status.unwrap().nodes[0].gpus,
        ["GPU-h100"],
        "operator's fields kept beside the agent's"
    );
    drop(op);
}
