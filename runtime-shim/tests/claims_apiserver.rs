//! The shim's VGpuClaim lookup against a real kube-apiserver (the local control plane of
//! tessera-e2e): a claim bound on this node for this pod yields its allocation; another pod,
//! another node or a missing claim gets a clear refusal. Also through the installer's credential
//! layout (a `token` + `ca.crt` directory) with a ServiceAccount that has exactly the chart's
//! ClusterRole rule (`get` vgpuclaims), and without it (forbidden -> Unavailable).

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use serde_json::json;
use tessera_e2e::apply::install_crds;
use tessera_e2e::harness::cluster;
use tessera_e2e::repo_root;
use tessera_shim::vgpu::{ClaimResolver, KubeAccess};

const NS: &str = "shim-claims";

async fn apply<K>(api: &Api<K>, name: &str, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
}

/// A token of ServiceAccount `sa` (TokenRequest, 1 h) written with the cluster CA into a
/// directory laid out as the shim installer writes /etc/tessera/shim.
async fn credentials_dir(client: &kube::Client, sa: &str, ca: &str) -> tempfile::TempDir {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    apply(
        &sas,
        sa,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
    )
    .await;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let tr: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await
        .unwrap();
    let token = tr.status.unwrap().token;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), token).unwrap();
    std::fs::copy(ca, dir.path().join("ca.crt")).unwrap();
    dir
}

#[tokio::test]
async fn claims_are_read_from_the_apiserver_and_checked() {
    let c = cluster().await.expect("local control plane");
    let client = c.client().await.unwrap();
    install_crds(&client, &repo_root().join("charts/tessera/crds"))
        .await
        .unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    apply(
        &nss,
        NS,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;

    let claims: Api<tessera_crds::VGpuClaim> = Api::namespaced(client.clone(), NS);
    let claim = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "VGpuClaim",
        "metadata": {"name": "c1", "namespace": NS},
        "spec": {"memory": "2Gi", "computeShare": 50}});
    apply(&claims, "c1", claim).await;
    // The operator's share of the status, as it writes it when the pod naming the claim exists.
    let status = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "VGpuClaim",
        "status": {"phase": "Bound",
            "allocation": {"nodeName": "xen-node-1", "gpuUUID": "GPU-aa", "shareId": "share-7",
                           "memory": "2Gi", "computeShare": 50},
            "reservedFor": [{"resource": "pods", "name": "inference", "uid": "uid-1"}]}});
    claims
        .patch_status(
            "c1",
            &PatchParams::apply("tessera-operator").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();

    let admin = ClaimResolver::connect(
        &KubeAccess::Kubeconfig(c.kubeconfig.clone()),
        "xen-node-1".into(),
        Some("xen-ring:7".into()),
    )
    .await
    .unwrap();
    let got: serde_json::Value =
        serde_json::from_str(&admin.allocation(NS, "c1", "uid-1").await.unwrap()).unwrap();
    assert_eq!(
        got,
        json!({"claim": "c1", "namespace": NS, "node": "xen-node-1", "gpuUuid": "GPU-aa",
               "shareId": "share-7", "memoryBytes": 2147483648u64, "computeShare": 50,
               "idmChannel": "xen-ring:7"})
    );
    let other_pod = admin.allocation(NS, "c1", "uid-2").await.unwrap_err();
    assert!(
        other_pod
            .to_string()
            .contains("not reserved for pod UID uid-2"),
        "{other_pod}"
    );
    let missing = admin.allocation(NS, "nope", "uid-1").await.unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    let elsewhere = ClaimResolver::connect(
        &KubeAccess::Kubeconfig(c.kubeconfig.clone()),
        "xen-node-2".into(),
        None,
    )
    .await
    .unwrap();
    let e = elsewhere.allocation(NS, "c1", "uid-1").await.unwrap_err();
    assert!(
        e.to_string().contains("allocated on node xen-node-1"),
        "{e}"
    );

    // The installer's layout with the chart's rule for the shim's ServiceAccount.
    let kc = Kubeconfig::read_from(&c.kubeconfig).unwrap();
    let cl = kc.clusters[0].cluster.clone().unwrap();
    let (server, ca) = (cl.server.unwrap(), cl.certificate_authority.unwrap());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    apply(
        &roles,
        "shim-claims-test",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole", "metadata": {"name": "shim-claims-test"},
        "rules": [{"apiGroups": ["tessera.dev"], "resources": ["vgpuclaims"], "verbs": ["get"]}]}),
    )
    .await;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    apply(&bindings, "shim-claims-test", json!({"apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding", "metadata": {"name": "shim-claims-test"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "shim-claims-test"},
        "subjects": [{"kind": "ServiceAccount", "name": "shim", "namespace": NS}]})).await;
    let dir = credentials_dir(&client, "shim", &ca).await;
    let sa = ClaimResolver::connect(
        &KubeAccess::ServiceAccount {
            apiserver: server.clone(),
            dir: dir.path().to_path_buf(),
        },
        "xen-node-1".into(),
        None,
    )
    .await
    .unwrap();
    // RBAC bindings reach the authorizer's cache asynchronously: retry briefly.
    let mut last = None;
    for _ in 0..50 {
        match sa.allocation(NS, "c1", "uid-1").await {
            Ok(v) => {
                last = Some(Ok(v));
                break;
            }
            Err(e) => last = Some(Err(e.to_string())),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let v = last.unwrap().unwrap();
    assert!(v.contains("\"shareId\":\"share-7\""), "{v}");

    // A ServiceAccount without the rule: forbidden, reported as the apiserver being unavailable
    // to the shim (kubelet retries), naming the claim.
    let dir = credentials_dir(&client, "nobody", &ca).await;
    let denied = ClaimResolver::connect(
        &KubeAccess::ServiceAccount {
            apiserver: server,
            dir: dir.path().to_path_buf(),
        },
        "xen-node-1".into(),
        None,
    )
    .await
    .unwrap();
    let e = denied.allocation(NS, "c1", "uid-1").await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("VGpuClaim shim-claims/c1") && msg.contains("forbidden"),
        "{msg}"
    );
    let st: tonic::Status = e.into();
    assert_eq!(st.code(), tonic::Code::Unavailable);
}
