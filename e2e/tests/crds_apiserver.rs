//! The CRDs against a real kube-apiserver: they become Established, the valid samples apply with
//! server-side apply, every invalid sample is rejected with its expected message, the status
//! subresource works, and `kubectl get` shows the print columns.

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

use std::path::{Path, PathBuf};

use kube::api::{Api, Patch, PatchParams};
use tessera_crds::storage_pool::{Capacity, PoolPhase};
use tessera_crds::{StoragePool, StoragePoolStatus};
use tessera_e2e::apply::{apply_file, apply_object, install_crds, parse_documents};
use tessera_e2e::harness::{Cluster, cluster};
use tessera_e2e::repo_root;

async fn ready_cluster() -> Cluster {
    let c = cluster().await.expect("local control plane");
    let client = c.client().await.unwrap();
    install_crds(&client, &repo_root().join("charts/tessera/crds"))
        .await
        .expect("CRDs installed");
    c
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn every_crd_becomes_established() {
    let c = ready_cluster().await;
    let client = c.client().await.unwrap();
    let names = install_crds(&client, &repo_root().join("charts/tessera/crds"))
        .await
        .unwrap();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [
            "gpuraidpolicies.tessera.dev",
            "storagepools.tessera.dev",
            "tesseranodes.tessera.dev",
            "vgpuclaims.tessera.dev"
        ]
    );
}

#[tokio::test]
async fn every_valid_sample_applies_with_server_side_apply() {
    let c = ready_cluster().await;
    let client = c.client().await.unwrap();
    let files = yaml_files(&repo_root().join("deploy/samples"));
    assert!(files.len() >= 4, "one sample per kind at least: {files:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for f in files {
        let applied = apply_file(&client, &f, None)
            .await
            .unwrap_or_else(|e| panic!("{} must apply: {e}", f.display()));
        for o in applied {
            let t = o.types.clone().unwrap();
            assert_eq!(t.api_version, "tessera.dev/v1alpha1", "{}", f.display());
            assert!(o.metadata.uid.is_some(), "{} stored", f.display());
            kinds.insert(t.kind);
        }
        // Applying the same manifest again is a no-op, not a conflict.
        apply_file(&client, &f, None).await.unwrap();
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["GpuRaidPolicy", "StoragePool", "TesseraNode", "VGpuClaim"]
    );
    // Defaults were applied by the apiserver from the schema.
    let sp: Api<StoragePool> = Api::all(client);
    let llm = sp.get("llm").await.unwrap();
    assert_eq!(
        llm.spec.deletion_policy,
        tessera_crds::storage_pool::DeletionPolicy::Retain
    );
    assert_eq!(llm.spec.zfs.as_ref().unwrap().datasets.len(), 5);
}

/// Header lines of an invalid sample: `# expect: <text>` and optionally `# after: <valid sample>`.
fn headers(text: &str) -> (Vec<String>, Option<String>) {
    let mut expect = Vec::new();
    let mut after = None;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(e) = line.strip_prefix("# expect: ") {
            expect.push(e.trim().to_string());
        }
        if let Some(a) = line.strip_prefix("# after: ") {
            after = Some(a.trim().to_string());
        }
    }
    (expect, after)
}

#[tokio::test]
async fn every_invalid_sample_is_rejected_with_its_message() {
    let c = ready_cluster().await;
    let client = c.client().await.unwrap();
    let files = yaml_files(&repo_root().join("deploy/samples/invalid"));
    assert!(files.len() >= 20, "invalid samples: {}", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let (expect, after) = headers(&text);
        assert!(
            !expect.is_empty(),
            "{} has no `# expect:` line",
            f.display()
        );
        if let Some(base) = after {
            apply_file(
                &client,
                &repo_root().join("deploy/samples").join(&base),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("base sample {base} of {} must apply: {e}", f.display()));
        }
        let docs = parse_documents(&text, &f.display().to_string()).unwrap();
        assert_eq!(docs.len(), 1, "{}", f.display());
        match apply_object(&client, &docs[0], None).await {
            Ok(_) => failures.push(format!("{}: accepted, expected rejection", f.display())),
            Err(e) => {
                let msg = e.to_string();
                for want in &expect {
                    if !msg.contains(want.as_str()) {
                        failures.push(format!("{}: expected {want:?} in {msg:?}", f.display()));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "invalid samples:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn status_is_written_through_the_status_subresource() {
    let c = ready_cluster().await;
    let client = c.client().await.unwrap();
    apply_file(
        &client,
        &repo_root().join("deploy/samples/storagepool-md.yaml"),
        None,
    )
    .await
    .unwrap();
    let api: Api<StoragePool> = Api::all(client.clone());
    let before = api.get("scratch-raid6").await.unwrap();
    let status = StoragePoolStatus {
        observed_generation: before.metadata.generation,
        node_name: Some("storage-01".into()),
        phase: Some(PoolPhase::Ready),
        health: Some("clean".into()),
        capacity: Some(Capacity {
            size: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "4Ti".into(),
            )),
            allocated: None,
            free: None,
        }),
        ..Default::default()
    };
    let patch = serde_json::json!({
        "apiVersion": "tessera.dev/v1alpha1", "kind": "StoragePool",
        "status": status,
        // The status subresource must ignore spec changes.
        "spec": {"backend": "lvm"},
    });
    api.patch_status(
        "scratch-raid6",
        &PatchParams::apply("status-test").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let after = api.get("scratch-raid6").await.unwrap();
    let st = after.status.unwrap();
    assert_eq!(st.phase, Some(PoolPhase::Ready));
    assert_eq!(st.health.as_deref(), Some("clean"));
    assert_eq!(
        after.spec.backend,
        tessera_crds::storage_pool::Backend::Md,
        "spec untouched by /status"
    );
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "status writes do not bump generation"
    );
}

#[tokio::test]
async fn kubectl_get_shows_the_print_columns() {
    let c = ready_cluster().await;
    let client = c.client().await.unwrap();
    for f in yaml_files(&repo_root().join("deploy/samples")) {
        apply_file(&client, &f, None).await.unwrap();
    }
    let (ok, out, err) = c.kubectl(&["get", "sp,grp,vgc,tn", "-A"]).unwrap();
    assert!(ok, "kubectl failed: {err}");
    for header in [
        "BACKEND", "NODE", "PHASE", "HEALTH", "SIZE", "FREE", // sp
        "CODES", "FALLBACK", "ACCEPTED", "APPLIED", // grp
        "MEMORY", "SHARE", "GPU", // vgc
        "DISKS", "GPUS", "XEN", "AGENT", "READY", // tn
    ] {
        assert!(out.contains(header), "column {header} missing in:\n{out}");
    }
    for name in [
        "storagepool.tessera.dev/llm",
        "gpuraidpolicy.tessera.dev/default",
        "vgpuclaim.tessera.dev/llama-inference",
        "tesseranode.tessera.dev/storage-01",
    ] {
        assert!(out.contains(name), "{name} missing in:\n{out}");
    }
    let llm_row = out
        .lines()
        .find(|l| l.contains("storagepool.tessera.dev/llm"))
        .unwrap();
    assert!(llm_row.contains("zfs"), "backend column filled: {llm_row}");
    let vgc_row = out
        .lines()
        .find(|l| l.contains("vgpuclaim.tessera.dev/llama-inference"))
        .unwrap();
    assert!(
        vgc_row.contains("16Gi") && vgc_row.contains("25"),
        "memory/share columns: {vgc_row}"
    );
}

#[tokio::test]
async fn kubectl_explain_documents_defaults_and_mutability() {
    let c = ready_cluster().await;
    // kubectl wraps descriptions; compare with whitespace collapsed.
    let flat = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
    // The apiserver publishes a new CRD's OpenAPI some moments after it is Established, and
    // `kubectl explain` reads that document: retry for up to 30 s.
    let explain = |path: &str| {
        let mut last = String::new();
        for _ in 0..60 {
            let (ok, out, err) = c.kubectl(&["explain", path]).unwrap();
            if ok {
                return flat(out);
            }
            last = err;
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!("kubectl explain {path} kept failing: {last}");
    };
    let out = explain("storagepools.spec.deletionPolicy");
    assert!(
        out.contains("`Retain` (default) leaves pool and data in place"),
        "{out}"
    );
    let out = explain("vgpuclaims.spec.computeShare");
    assert!(
        out.contains("Default: 100") && out.contains("Immutable"),
        "{out}"
    );
}
