//! VGpuClaim allocation by a real operator process against a real apiserver: best fit, no
//! over-commit when 50 claims arrive at once, release once the reserving pod is deleted.

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tessera_crds::vgpu_claim::ClaimPhase;
use tessera_crds::{TesseraNode, VGpuClaim, parse_quantity};
use tessera_e2e::apply::install_crds;
use tessera_e2e::harness::cluster;
use tessera_e2e::repo_root;
use tessera_operator::allocator::{LEDGER_ANNOTATION, Ledger};

const GI: u128 = 1 << 30;

async fn make_node(client: &Client, name: &str, gpus: &[(u32, &str, &str)]) {
    let api: Api<TesseraNode> = Api::all(client.clone());
    let obj = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "TesseraNode",
        "metadata": {"name": name}, "spec": {"nodeName": name}});
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
    let gpus: Vec<_> = gpus
        .iter()
        .map(|(i, mem, model)| json!({"index": i, "uuid": format!("GPU-{name}-{i}"), "model": model, "memory": mem}))
        .collect();
    let status = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "TesseraNode",
        "status": {"inventory": {"gpus": gpus, "agentVersion": "test"}, "summary": {"disks": 0, "gpus": gpus.len()}}});
    api.patch_status(
        name,
        &PatchParams::apply("test-agent").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
}

async fn make_claim(api: &Api<VGpuClaim>, name: &str, memory: &str, share: u8) {
    let obj = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "VGpuClaim",
        "metadata": {"name": name}, "spec": {"memory": memory, "computeShare": share}});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap();
}

async fn wait_phase(
    api: &Api<VGpuClaim>,
    name: &str,
    want: ClaimPhase,
    timeout: Duration,
) -> VGpuClaim {
    let t0 = Instant::now();
    loop {
        let c = api.get(name).await.unwrap();
        if c.status.as_ref().and_then(|s| s.phase) == Some(want) {
            return c;
        }
        assert!(
            t0.elapsed() < timeout,
            "claim {name} not {want:?} after {timeout:?}: {:?}",
            c.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ledgers(client: &Client) -> BTreeMap<String, Ledger> {
    let api: Api<TesseraNode> = Api::all(client.clone());
    api.list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|n| {
            let l = n
                .annotations()
                .get(LEDGER_ANNOTATION)
                .map(|s| serde_json::from_str(s).unwrap())
                .unwrap_or_default();
            (n.name_any(), l)
        })
        .collect()
}

#[tokio::test]
async fn claims_are_allocated_best_fit_without_overcommit_and_released_after_their_pod() {
    let c = cluster().await.unwrap();
    let client = c.client().await.unwrap();
    install_crds(&client, &repo_root().join("charts/tessera/crds"))
        .await
        .unwrap();
    let ops_ns = c.namespace("tessera-system").await.unwrap();
    let log = c.dir.join("operator.log");
    let op = common::start_operator(&c.kubeconfig, &ops_ns, "op-a", &log);

    // Two nodes: an 80 GiB H100 and a 141 GiB H200 on node-a, a 40 GiB A100 on node-b.
    make_node(
        &client,
        "node-a",
        &[
            (0, "80Gi", "NVIDIA H100 80GB HBM3"),
            (1, "141Gi", "NVIDIA H200"),
        ],
    )
    .await;
    make_node(&client, "node-b", &[(0, "40Gi", "NVIDIA A100-SXM4-40GB")]).await;

    // Best fit: 30Gi fits tightest on the 40 GiB A100; 70Gi on the 80 GiB H100.
    let ns = c.namespace("fit").await.unwrap();
    let claims: Api<VGpuClaim> = Api::namespaced(client.clone(), &ns);
    make_claim(&claims, "small", "30Gi", 10).await;
    let small = wait_phase(
        &claims,
        "small",
        ClaimPhase::Allocated,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        small.status.unwrap().allocation.unwrap().gpu_uuid,
        "GPU-node-b-0"
    );
    make_claim(&claims, "large", "70Gi", 10).await;
    let large = wait_phase(
        &claims,
        "large",
        ClaimPhase::Allocated,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        large.status.unwrap().allocation.unwrap().gpu_uuid,
        "GPU-node-a-0"
    );
    assert!(small_finalizer_set(&claims, "small").await);

    // 50 claims at once, 10Gi each: free now is 10 (A100) + 10 (H100) + 141 (H200) = 161 GiB in
    // 10 GiB units -> 1 + 1 + 14 = 16 fit; the rest must stay Pending. Shares (2% each) never bind.
    let burst = c.namespace("burst").await.unwrap();
    let bapi: Api<VGpuClaim> = Api::namespaced(client.clone(), &burst);
    let creates = (0..50).map(|i| {
        let bapi = bapi.clone();
        async move { make_claim(&bapi, &format!("c{i:02}"), "10Gi", 2).await }
    });
    futures::future::join_all(creates).await;
    let t0 = Instant::now();
    let (allocated, pending) = loop {
        let list = bapi.list(&Default::default()).await.unwrap();
        let phase = |p| {
            list.iter()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase) == Some(p))
                .count()
        };
        let (a, p) = (phase(ClaimPhase::Allocated), phase(ClaimPhase::Pending));
        if a + p == 50 && a == 16 {
            break (a, p);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "burst not settled: {a} allocated, {p} pending"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!((allocated, pending), (16, 34));
    // The ledgers are the truth: no GPU over its memory or 100% share.
    let capacity: BTreeMap<&str, u128> = [
        ("GPU-node-a-0", 80 * GI),
        ("GPU-node-a-1", 141 * GI),
        ("GPU-node-b-0", 40 * GI),
    ]
    .into();
    let mut entries = 0;
    for l in ledgers(&client).await.values() {
        for (uuid, cap) in &capacity {
            let (mem, share) = l.used(uuid);
            assert!(
                mem <= *cap && share <= 100,
                "{uuid} over-committed: {mem} bytes, {share}%"
            );
        }
        entries += l.shares.len();
    }
    assert_eq!(entries, 2 + 16, "one ledger entry per allocated claim");
    // Each allocated claim's status agrees with the ledger.
    for cl in bapi.list(&Default::default()).await.unwrap() {
        if let Some(a) = cl.status.as_ref().and_then(|s| s.allocation.as_ref()) {
            assert_eq!(parse_quantity(&a.memory.0).unwrap(), 10 * GI);
        }
    }

    // Release: a pod reserves "small"; when the pod is deleted the allocation is released.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "inference", "annotations": {"tessera.dev/vgpu-claim": "small"}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}], "runtimeClassName": null}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let bound = wait_phase(&claims, "small", ClaimPhase::Bound, Duration::from_secs(30)).await;
    let rf = bound.status.unwrap().reserved_for;
    assert_eq!(rf.len(), 1);
    assert_eq!(rf[0].name, "inference");
    pods.delete(
        "inference",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let released = wait_phase(
        &claims,
        "small",
        ClaimPhase::Released,
        Duration::from_secs(30),
    )
    .await;
    assert!(released.status.unwrap().allocation.is_none());
    let ledger_b = &ledgers(&client).await["node-b"];
    assert!(
        ledger_b.find_claim(&small_uid(&claims).await).is_none(),
        "ledger entry released"
    );

    // Deleting an allocated claim frees its share (finalizer), and a pending claim can then fit.
    claims
        .delete("large", &DeleteParams::default())
        .await
        .unwrap();
    let t0 = Instant::now();
    while claims.get_opt("large").await.unwrap().is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "finalizer did not complete"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let m = common::metrics(&op).unwrap();
    assert_eq!(
        common::metric_value(&m, "tessera_operator_leader"),
        Some(1.0)
    );
    assert!(
        common::metric_value(&m, "tessera_operator_vgpu_allocations_total").unwrap_or(0.0) >= 18.0,
        "{m}"
    );
    // Events with CamelCase reasons were recorded.
    let (ok, out, _) = c
        .kubectl(&[
            "get",
            "events",
            "-n",
            &ns,
            "-o",
            "custom-columns=REASON:.reason",
        ])
        .unwrap();
    assert!(
        ok && out.contains("Allocated") && out.contains("Released"),
        "{out}"
    );
    drop(op);
    let _ = Api::<Namespace>::all(client)
        .delete(&burst, &DeleteParams::default())
        .await;
    let _ = ObjectMeta::default();
}

async fn small_finalizer_set(api: &Api<VGpuClaim>, name: &str) -> bool {
    api.get(name)
        .await
        .unwrap()
        .finalizers()
        .iter()
        .any(|f| f == "tessera.dev/vgpuclaim-protection")
}

async fn small_uid(api: &Api<VGpuClaim>) -> String {
    api.get("small").await.unwrap().uid().unwrap()
}
