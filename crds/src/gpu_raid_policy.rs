//! `GpuRaidPolicy`: when and how the GPU parity engine serves a node's RAID work.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{GpuSelector, optional_quantity_string_schema};

/// Policy for offloading RAID parity work (verify, rebuild, erasure coding) to a GPU.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "GpuRaidPolicy",
    plural = "gpuraidpolicies",
    singular = "gpuraidpolicy",
    shortname = "grp",
    category = "tessera",
    status = "GpuRaidPolicyStatus",
    printcolumn = r#"{"name":"Codes","type":"string","jsonPath":".spec.offload"}"#,
    printcolumn = r#"{"name":"Fallback","type":"string","jsonPath":".spec.fallback"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodeCount"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Applied","type":"string","jsonPath":".status.conditions[?(@.type==\"Applied\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GpuRaidPolicySpec {
    /// Labels selecting the nodes this policy applies to. Default: every node with a GPU. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Which GPUs of a selected node the engine may use. Default: any. May change.
    #[serde(default)]
    pub gpu_selector: GpuSelector,
    /// Codes to offload: `xor` (RAID5), `pq` (RAID6), `rs` (Reed-Solomon k+m). Default: all three.
    /// Offloading is still decided per request by measured throughput. May change.
    #[serde(default = "default_codes")]
    #[schemars(length(min = 1, max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub offload: Vec<ParityCode>,
    /// Requests smaller than this stay on the CPU (launch and copy overheads dominate). Kubernetes
    /// quantity. Default: `1Mi`. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_quantity_string_schema")]
    pub min_stripe_bytes: Option<Quantity>,
    /// What to do when the GPU cannot serve a request: `cpu` (default; run it on the CPU engine and
    /// count the fallback) or `fail` (report the error). May change.
    #[serde(default)]
    pub fallback: Fallback,
    /// Most GPU memory the parity engine may hold on one GPU (staging buffers included). Kubernetes
    /// quantity. Default: `2Gi`. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_quantity_string_schema")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "quantity(self).isGreaterThan(quantity('0'))", "message": "maxVramBytes must be greater than 0"}
    ]))]
    pub max_vram_bytes: Option<Quantity>,
    /// Cron schedule (5 fields) for verifying the parity of the MD/LVM RAID arrays of the selected
    /// nodes with the engine. Default: none. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(r"^(\S+\s+){4}\S+$"))]
    pub verify_schedule: Option<String>,
    /// What a scheduled verify does with inconsistent pages of a RAID6 array that the syndrome
    /// blames on one member: `false` (default) reports them; `true` rewrites each such page on that
    /// member from the others (the array stays read-only meanwhile, every page is logged) and
    /// verifies again. Pages no single member explains (RAID5, two bad members) are only reported.
    /// May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_mismatches: Option<bool>,
}

fn default_codes() -> Vec<ParityCode> {
    vec![ParityCode::Xor, ParityCode::Pq, ParityCode::Rs]
}

/// A parity code the engine implements.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ParityCode {
    Xor,
    Pq,
    Rs,
}

/// Where a request goes when the GPU cannot take it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    #[default]
    Cpu,
    Fail,
}

/// Observed state of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuRaidPolicyStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of nodes the policy is applied on (print column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,
    /// Nodes the policy applies to, with the GPUs it selected there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["nodeName"]))]
    pub nodes: Vec<PolicyNodeStatus>,
    /// Throughput measured by the engine (calibration or a verify job), per node, backend and code.
    /// Each node's agent owns its own rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["nodeName", "backend", "code"]))]
    pub throughput: Vec<MeasuredThroughput>,
    /// Accepted (spec valid), Applied (every selected node reports the policy active).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Where a policy applies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyNodeStatus {
    /// Node name.
    pub node_name: String,
    /// UUIDs of the GPUs selected on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    /// Whether the node agent reports the policy active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// The last parity verify the node agent ran on this node under `verifySchedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<VerifyResult>,
}

/// One parity verify of an MD array or LVM raid LV by the engine (read-only while it ran).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResult {
    /// When it finished (RFC 3339).
    pub time: String,
    /// The StoragePool of the array (`POOL` for MD, `POOL: VG/LV` for an LVM raid LV).
    pub pool: String,
    /// Engine backend that computed the parity (`gfni-avx512`, `avx2`, `scalar`, `cuda`, ...).
    pub backend: String,
    /// Stripes (rows) checked.
    pub stripes: i64,
    /// Inconsistent 4 KiB pages found (0 when parity matches everywhere).
    pub mismatches: i64,
    /// Data throughput in GB/s.
    pub gb_per_second: f64,
    /// Pages rewritten from parity by the repair (`repairMismatches`), as `DEVICE@OFFSET KIND`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
    /// Inconsistent pages found by the verify that followed the repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatches_after_repair: Option<i64>,
    /// What went wrong, when the verify could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A throughput measurement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredThroughput {
    /// Node name.
    pub node_name: String,
    /// `scalar`, `avx2`, `avx512`, `gfni`, `cuda`, ...
    pub backend: String,
    /// Code and geometry, e.g. `pq 8+2`.
    pub code: String,
    /// Data throughput in GB/s (10^9 bytes of data per second).
    pub gb_per_second: f64,
}
