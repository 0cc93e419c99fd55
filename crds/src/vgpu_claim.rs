//! `VGpuClaim`: a request for an isolated share of one GPU, shaped after DRA's ResourceClaim.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{GpuSelector, quantity_string_schema};

/// A request for GPU memory and a compute share on one GPU, isolated in a Xen domain.
///
/// Like a DRA ResourceClaim, the spec is immutable: to change a request, create a new claim.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "VGpuClaim",
    plural = "vgpuclaims",
    singular = "vgpuclaim",
    shortname = "vgc",
    category = "tessera",
    namespaced,
    status = "VGpuClaimStatus",
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.memory"}"#,
    printcolumn = r#"{"name":"Share","type":"integer","jsonPath":".spec.computeShare"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.allocation.nodeName"}"#,
    printcolumn = r#"{"name":"GPU","type":"string","jsonPath":".status.allocation.gpuUUID"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a VGpuClaim spec is immutable; create a new claim instead"}
]))]
pub struct VGpuClaimSpec {
    /// GPU memory for the tenant, a Kubernetes quantity greater than 0, e.g. `16Gi`. Allocations
    /// beyond it fail with CUDA_ERROR_OUT_OF_MEMORY. Required. Immutable.
    #[schemars(schema_with = "quantity_string_schema")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "quantity(self).isGreaterThan(quantity('0'))", "message": "memory must be greater than 0"}
    ]))]
    pub memory: Quantity,
    /// Share of the GPU's compute, in percent (1-100). Default: 100. Immutable.
    #[serde(default = "default_share")]
    #[schemars(range(min = 1, max = 100))]
    pub compute_share: u8,
    /// Which GPUs may serve the claim. Default: any. Immutable.
    #[serde(default)]
    pub gpu_selector: GpuSelector,
    /// Isolation technology. Only `xen` (each pod in its own Xen domain) exists. Default: `xen`.
    /// Immutable.
    #[serde(default)]
    pub isolation: Isolation,
}

fn default_share() -> u8 {
    100
}

/// How tenants are isolated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Xen,
}

/// Observed state of a claim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VGpuClaimStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Allocated, Bound, Released or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClaimPhase>,
    /// Where the claim was allocated. Set by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// Pods using the allocation. The allocation is released when all of them are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["uid"]))]
    pub reserved_for: Vec<ReservedFor>,
    /// Allocated and others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Lifecycle of a claim.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
pub enum ClaimPhase {
    Pending,
    Allocated,
    Bound,
    Released,
    Failed,
}

/// A claim's share of one GPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Node of the GPU.
    pub node_name: String,
    /// UUID of the GPU.
    #[serde(rename = "gpuUUID")]
    pub gpu_uuid: String,
    /// Identifier of the share on that GPU (the tenant id the GPU proxy knows).
    pub share_id: String,
    /// Memory granted.
    pub memory: Quantity,
    /// Compute share granted, in percent.
    pub compute_share: u8,
}

/// A consumer of a claim (a Pod).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservedFor {
    /// Resource kind, `pods`.
    #[serde(default = "default_resource")]
    pub resource: String,
    /// Name of the consumer.
    pub name: String,
    /// UID of the consumer.
    pub uid: String,
}

fn default_resource() -> String {
    "pods".into()
}
