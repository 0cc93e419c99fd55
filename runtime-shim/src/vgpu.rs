//! The VGpuClaim allocation of a Xen pod, read from the apiserver.
//!
//! A pod consumes a claim of its namespace through the annotation `tessera.dev/vgpu-claim: NAME`
//! (the operator's convention). The operator allocates the claim on a node and GPU and lists the
//! consuming pods in `status.reservedFor` (phase `Bound`). At CreateContainer the shim reads the
//! claim and hands the allocation to the guest only when the claim is bound on this node and
//! reserved for this very pod (by UID): naming another tenant's claim gets nothing.
//!
//! Credentials: a kubeconfig (`--kubeconfig`), or the apiserver URL plus the directory the
//! chart's installer DaemonSet keeps the `tessera-shim` ServiceAccount's `token` and `ca.crt` in
//! (`--apiserver`, `--credentials-dir`). The RBAC it needs is `get` on vgpuclaims.

use kube::Api;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use serde_json::json;
use tessera_crds::VGpuClaim;
use tessera_crds::vgpu_claim::ClaimPhase;
use tracing::info;

use crate::error::{Result, ShimError};

/// Annotation by which a pod consumes a VGpuClaim of its namespace.
pub const CLAIM_ANNOTATION: &str = "tessera.dev/vgpu-claim";
/// Annotation carrying an allocation verbatim (JSON). Honoured only with
/// `--allow-allocation-annotation` (tests, Xen-only nodes without an apiserver): on a shared
/// cluster it would let a pod author name any GPU share.
pub const ALLOCATION_ANNOTATION: &str = "tessera.dev/vgpu-allocation";

/// The allocation for a pod from its annotations, or `None` when it has no vGPU.
pub async fn for_pod(
    annotations: &std::collections::HashMap<String, String>,
    namespace: &str,
    pod_uid: &str,
    resolver: Option<&ClaimResolver>,
    allow_allocation_annotation: bool,
) -> Result<Option<String>> {
    if let Some(claim) = annotations.get(CLAIM_ANNOTATION) {
        let r = resolver.ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "the pod names VGpuClaim {claim} but this shim has no apiserver access \
                 (--kubeconfig, or --apiserver with --credentials-dir)"
            ))
        })?;
        return r.allocation(namespace, claim, pod_uid).await.map(Some);
    }
    let Some(raw) = annotations.get(ALLOCATION_ANNOTATION) else {
        return Ok(None);
    };
    if !allow_allocation_annotation {
        return Err(ShimError::FailedPrecondition(format!(
            "annotation {ALLOCATION_ANNOTATION} is honoured only when the shim runs with \
             --allow-allocation-annotation; name a VGpuClaim with {CLAIM_ANNOTATION}"
        )));
    }
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|source| ShimError::Json {
        what: format!("pod annotation {ALLOCATION_ANNOTATION}"),
        source,
    })?;
    if !v.is_object() {
        return Err(ShimError::InvalidArgument(format!(
            "pod annotation {ALLOCATION_ANNOTATION} must be a JSON object"
        )));
    }
    Ok(Some(v.to_string()))
}

/// Where the shim finds the apiserver.
#[derive(Debug, Clone)]
pub enum KubeAccess {
    Kubeconfig(std::path::PathBuf),
    /// URL and a directory with `token` and `ca.crt` (the token file is re-read as it rotates).
    ServiceAccount {
        apiserver: String,
        dir: std::path::PathBuf,
    },
}

/// Looks up claims for the pods of this node.
#[derive(Clone)]
pub struct ClaimResolver {
    client: kube::Client,
    node: String,
    idm_channel: Option<String>,
}

impl std::fmt::Debug for ClaimResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimResolver")
            .field("node", &self.node)
            .finish()
    }
}

fn kube_err(what: &str, e: impl std::fmt::Display) -> ShimError {
    ShimError::Config(format!("{what}: {e}"))
}

impl ClaimResolver {
    pub async fn connect(
        access: &KubeAccess,
        node: String,
        idm_channel: Option<String>,
    ) -> Result<Self> {
        let kc = match access {
            KubeAccess::Kubeconfig(p) => Kubeconfig::read_from(p)
                .map_err(|e| kube_err(&format!("reading kubeconfig {}", p.display()), e))?,
            KubeAccess::ServiceAccount { apiserver, dir } => {
                for f in ["token", "ca.crt"] {
                    if !dir.join(f).is_file() {
                        return Err(ShimError::Config(format!(
                            "{} is missing (the chart's shim installer writes it)",
                            dir.join(f).display()
                        )));
                    }
                }
                service_account_kubeconfig(apiserver, dir)
            }
        };
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| kube_err("apiserver configuration", e))?;
        let client = kube::Client::try_from(cfg).map_err(|e| kube_err("apiserver client", e))?;
        info!(node = %node, "VGpuClaim lookups enabled");
        Ok(ClaimResolver {
            client,
            node,
            idm_channel,
        })
    }

    /// The allocation JSON the guest gets (`tessera/vgpu/allocation`) for pod `pod_uid` of
    /// `namespace`, which names `claim`.
    pub async fn allocation(&self, namespace: &str, claim: &str, pod_uid: &str) -> Result<String> {
        let api: Api<VGpuClaim> = Api::namespaced(self.client.clone(), namespace);
        let found = match api.get_opt(claim).await {
            Ok(c) => c,
            Err(e) => {
                return Err(ShimError::ApiServer(format!(
                    "reading VGpuClaim {namespace}/{claim}: {e}"
                )));
            }
        };
        let c = found.ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "the pod names VGpuClaim {namespace}/{claim} ({CLAIM_ANNOTATION}), which does not exist"
            ))
        })?;
        allocation_json(
            &c,
            namespace,
            &self.node,
            pod_uid,
            self.idm_channel.as_deref(),
        )
    }
}

fn service_account_kubeconfig(apiserver: &str, dir: &std::path::Path) -> Kubeconfig {
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: "apiserver".into(),
            cluster: Some(Cluster {
                server: Some(apiserver.to_string()),
                certificate_authority: Some(dir.join("ca.crt").display().to_string()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "tessera-shim".into(),
            auth_info: Some(AuthInfo {
                token_file: Some(dir.join("token").display().to_string()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "tessera-shim".into(),
            context: Some(Context {
                cluster: "apiserver".into(),
                user: Some("tessera-shim".into()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("tessera-shim".into()),
        ..Default::default()
    }
}

/// The guest's view of a claim that is bound on `node` for pod `pod_uid`; every other state is a
/// `FailedPrecondition` saying what is missing (kubelet retries CreateContainer).
pub fn allocation_json(
    claim: &VGpuClaim,
    namespace: &str,
    node: &str,
    pod_uid: &str,
    idm_channel: Option<&str>,
) -> Result<String> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let not_yet =
        |why: String| ShimError::FailedPrecondition(format!("VGpuClaim {namespace}/{name}: {why}"));
    let st = claim.status.clone().unwrap_or_default();
    let phase = st.phase.unwrap_or(ClaimPhase::Pending);
    let alloc = match (phase, st.allocation) {
        (ClaimPhase::Bound | ClaimPhase::Allocated, Some(a)) => a,
        (p, _) => return Err(not_yet(format!("is {p:?}, not bound to a GPU yet"))),
    };
    if alloc.node_name != node {
        return Err(not_yet(format!(
            "is allocated on node {}, and this is node {node}",
            alloc.node_name
        )));
    }
    if !st.reserved_for.iter().any(|r| r.uid == pod_uid) {
        return Err(not_yet(format!(
            "is not reserved for pod UID {pod_uid} (reservedFor lists {} pod(s)); the operator adds \
             pods that name it",
            st.reserved_for.len()
        )));
    }
    let memory = tessera_crds::parse_quantity(&alloc.memory.0)
        .map_err(|e| not_yet(format!("allocation memory {:?}: {e}", alloc.memory.0)))?;
    let mut v = json!({
        "claim": name,
        "namespace": namespace,
        "node": node,
        "gpuUuid": alloc.gpu_uuid,
        "shareId": alloc.share_id,
        "memoryBytes": u64::try_from(memory).unwrap_or(u64::MAX),
        "computeShare": alloc.compute_share,
    });
    if let Some(ch) = idm_channel {
        v["idmChannel"] = json!(ch);
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use tessera_crds::vgpu_claim::{Allocation, ReservedFor, VGpuClaimSpec, VGpuClaimStatus};

    fn claim(phase: ClaimPhase, node: &str, uids: &[&str]) -> VGpuClaim {
        let mut c = VGpuClaim::new(
            "c1",
            serde_json::from_value::<VGpuClaimSpec>(json!({"memory": "2Gi", "computeShare": 50}))
                .unwrap(),
        );
        c.status = Some(VGpuClaimStatus {
            phase: Some(phase),
            allocation: Some(Allocation {
                node_name: node.into(),
                gpu_uuid: "GPU-1".into(),
                share_id: "s-1".into(),
                memory: Quantity("2Gi".into()),
                compute_share: 50,
            }),
            reserved_for: uids
                .iter()
                .map(|u| ReservedFor {
                    resource: "pods".into(),
                    name: "p".into(),
                    uid: (*u).into(),
                })
                .collect(),
            ..Default::default()
        });
        c
    }

    #[test]
    fn bound_here_for_this_pod_gives_the_allocation() {
        let v = allocation_json(
            &claim(ClaimPhase::Bound, "n1", &["u1"]),
            "ns",
            "n1",
            "u1",
            Some("xen-ring:1"),
        )
        .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&v).unwrap(),
            json!({"claim":"c1","namespace":"ns","node":"n1","gpuUuid":"GPU-1","shareId":"s-1",
                   "memoryBytes":2147483648u64,"computeShare":50,"idmChannel":"xen-ring:1"})
        );
    }

    #[tokio::test]
    async fn annotations_decide_and_the_raw_allocation_needs_the_flag() {
        let a =
            |k: &str, v: &str| std::collections::HashMap::from([(k.to_string(), v.to_string())]);
        let none = std::collections::HashMap::new();
        assert_eq!(for_pod(&none, "ns", "u", None, false).await.unwrap(), None);
        let raw = a(ALLOCATION_ANNOTATION, r#"{"b":1, "a":2}"#);
        let e = for_pod(&raw, "ns", "u", None, false).await.unwrap_err();
        assert!(
            e.to_string().contains("--allow-allocation-annotation"),
            "{e}"
        );
        assert_eq!(
            for_pod(&raw, "ns", "u", None, true)
                .await
                .unwrap()
                .as_deref(),
            Some(r#"{"a":2,"b":1}"#)
        );
        let bad = a(ALLOCATION_ANNOTATION, "[1]");
        assert!(for_pod(&bad, "ns", "u", None, true).await.is_err());
        let claim = a(CLAIM_ANNOTATION, "c1");
        let e = for_pod(&claim, "ns", "u", None, true).await.unwrap_err();
        assert!(e.to_string().contains("no apiserver access"), "{e}");
    }

    #[test]
    fn other_nodes_other_pods_and_pending_claims_get_nothing() {
        let e = |c: VGpuClaim, uid: &str| {
            allocation_json(&c, "ns", "n1", uid, None)
                .unwrap_err()
                .to_string()
        };
        assert!(e(claim(ClaimPhase::Bound, "n2", &["u1"]), "u1").contains("node n2"));
        assert!(e(claim(ClaimPhase::Bound, "n1", &["u2"]), "u1").contains("not reserved"));
        assert!(e(claim(ClaimPhase::Pending, "n1", &["u1"]), "u1").contains("Pending"));
        let mut none = claim(ClaimPhase::Bound, "n1", &["u1"]);
        none.status = None;
        assert!(e(none, "u1").contains("Pending"));
    }
}
