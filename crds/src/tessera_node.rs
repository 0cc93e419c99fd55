//! `TesseraNode`: the node agent's inventory of one node.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::storage_pool::SmartSummary;

/// One object per node, named after the node and written by that node's agent.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "TesseraNode",
    plural = "tesseranodes",
    singular = "tesseranode",
    shortname = "tn",
    category = "tessera",
    status = "TesseraNodeStatus",
    validation = "self.metadata.name == self.spec.nodeName",
    printcolumn = r#"{"name":"Disks","type":"integer","jsonPath":".status.summary.disks"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".status.summary.gpus"}"#,
    printcolumn = r#"{"name":"Xen","type":"boolean","jsonPath":".status.inventory.xen.present"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.inventory.agentVersion"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TesseraNodeSpec {
    /// Name of the Kubernetes Node; must equal the object's name. Required. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "nodeName is immutable"}]))]
    pub node_name: String,
}

/// Inventory and health of a node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TesseraNodeStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Counts for print columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<InventorySummary>,
    /// What the node has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// Ready (agent reporting), SmartWarning, SmartCritical.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Counts shown in print columns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventorySummary {
    /// Number of block devices.
    pub disks: i32,
    /// Number of GPUs.
    pub gpus: i32,
}

/// Devices, GPUs and hypervisor of a node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Block devices (whole disks and partitions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_devices: Vec<BlockDevice>,
    /// GPUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// Xen hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xen: Option<XenInfo>,
    /// Version of the node agent that wrote this inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// One block device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockDevice {
    /// Kernel path, e.g. `/dev/nvme0n1`.
    pub path: String,
    /// Stable `/dev/disk/by-id/...` paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_id: Vec<String>,
    /// Size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Rotational (HDD) or not (SSD/NVMe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    /// Existing signatures (filesystem, partition table, RAID member, ...), as `wipefs -n` reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<String>,
    /// SMART summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<SmartSummary>,
}

/// One GPU.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    /// Driver index.
    pub index: u32,
    /// UUID, `GPU-...`.
    pub uuid: String,
    /// Model name.
    pub model: String,
    /// Total memory.
    pub memory: Quantity,
    /// Driver version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// Xen presence.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XenInfo {
    /// Whether the node runs as a Xen dom0.
    pub present: bool,
    /// Hypervisor version, e.g. `4.17`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}
