//! `StoragePool`: a declarative ZFS pool, Linux MD array or LVM volume group on one node.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    SecretReference, optional_quantity_string_schema, quantity_string_schema, zfs_size_schema,
};

/// Desired state of a storage pool on one node.
///
/// The node agent of the selected node turns this into real `zpool`/`mdadm`/`lvm` commands. It
/// refuses any step that would destroy data unless the pool allows it (`devicePolicy: Wipe`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "StoragePool",
    plural = "storagepools",
    singular = "storagepool",
    shortname = "sp",
    category = "tessera",
    status = "StoragePoolStatus",
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".spec.backend"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Health","type":"string","jsonPath":".status.health"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.capacity.size"}"#,
    printcolumn = r#"{"name":"Free","type":"string","jsonPath":".status.capacity.free"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.nodeName) != has(self.nodeSelector)",
     "message": "exactly one of nodeName or nodeSelector must be set"},
    {"rule": "(self.backend == 'zfs') == has(self.zfs) && (self.backend == 'md') == has(self.md) && (self.backend == 'lvm') == has(self.lvm)",
     "message": "the section named by backend (zfs, md or lvm) must be set, and no other"}
]))]
pub struct StoragePoolSpec {
    /// Name of the node whose devices form the pool. Exactly one of nodeName or nodeSelector.
    /// No default. Immutable: a pool cannot move between nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "nodeName is immutable"}]))]
    pub node_name: Option<String>,

    /// Labels selecting the node; must select exactly one node, or the pool reports
    /// `Ready=False` with reason `NodeSelectorAmbiguous`. Exactly one of nodeName or nodeSelector.
    /// No default. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "nodeSelector is immutable"}]))]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Storage backend: `zfs`, `md` or `lvm`; the section of the same name must be set.
    /// Required. Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "backend is immutable"}]))]
    pub backend: Backend,

    /// ZFS pool layout; required when backend is `zfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs: Option<ZfsPoolSpec>,

    /// Linux MD RAID array; required when backend is `md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md: Option<MdArraySpec>,

    /// LVM volume group and logical volumes; required when backend is `lvm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmSpec>,

    /// Name of the cluster-scoped GpuRaidPolicy that governs parity work (verify, rebuild) for this
    /// pool. Default: none (parity work runs on the CPU engine). May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub gpu_raid_policy_ref: Option<String>,

    /// What happens to the pool on the node when this object is deleted. `Retain` (default) leaves
    /// pool and data in place; `Destroy` destroys the pool (all its data) before the object goes.
    /// May change.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// What to do with a member device that already carries a signature (a filesystem, a partition
    /// table, an old RAID superblock). `Refuse` (default) reports it and writes nothing; `Wipe`
    /// erases the signature first (logged per device). May change.
    #[serde(default)]
    pub device_policy: DevicePolicy,

    /// Cron schedule (5 fields, node-local time) for scrubs (ZFS) or checks (MD/LVM RAID), for
    /// example `0 3 1 * *` for monthly. Default: none. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(r"^(\S+\s+){4}\S+$"))]
    pub scrub_schedule: Option<String>,
}

/// Storage backend of a pool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Zfs,
    Md,
    Lvm,
}

/// What deletion of the StoragePool object does on the node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the pool and its data; only the Kubernetes object goes away.
    #[default]
    Retain,
    /// Destroy the pool and its data, then remove the object.
    Destroy,
}

/// What to do with member devices that already carry a signature.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
pub enum DevicePolicy {
    /// Refuse to use the device and report it; nothing is written to it.
    #[default]
    Refuse,
    /// Wipe the signatures, logging each device, then use it.
    Wipe,
}

// ---------------------------------------------------------------- ZFS

/// A ZFS pool: data vdevs, special / log / cache / spare devices, properties, datasets, zvols, exports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.vdevs.all(v, v.devices.all(d, self.vdevs.filter(w, d in w.devices).size() == 1 && !self.special.exists(w, d in w.devices) && !self.log.exists(w, d in w.devices) && !(d in self.cache) && !(d in self.spares)))",
     "message": "a device may appear only once in the pool (across vdevs, special, log, cache and spares)"},
    {"rule": "self.special.all(v, v.devices.all(d, !self.log.exists(w, d in w.devices) && !(d in self.cache) && !(d in self.spares)))",
     "message": "a device may appear only once in the pool (across vdevs, special, log, cache and spares)"}
]))]
pub struct ZfsPoolSpec {
    /// Pool name as `zpool` knows it. Required. Immutable.
    #[schemars(length(min = 1, max = 200), pattern(r"^[a-zA-Z][a-zA-Z0-9_.:-]*$"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "pool name is immutable"}]))]
    pub pool_name: String,

    /// Data vdevs. At least one. Existing vdevs are immutable; new vdevs may be appended to grow the
    /// pool (ZFS cannot remove or reshape RAIDZ vdevs without moving data).
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "size(self) >= size(oldSelf) && oldSelf.all(v, v in self)",
        "message": "existing vdevs cannot be changed or removed; only new vdevs may be added"}]))]
    pub vdevs: Vec<ZfsVdev>,

    /// Special allocation class vdevs (metadata and small blocks, see `specialSmallBlocks` on
    /// datasets). A single-device special vdev is accepted but reported as a warning: losing it loses
    /// the pool. Default: none. May grow; existing entries are immutable.
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "size(self) >= size(oldSelf) && oldSelf.all(v, v in self)",
        "message": "existing special vdevs cannot be changed or removed"}]))]
    pub special: Vec<ZfsVdev>,

    /// Separate intent log (SLOG) vdevs for synchronous writes. Default: none. May change
    /// (log devices can be removed without data loss beyond in-flight sync writes).
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub log: Vec<ZfsVdev>,

    /// L2ARC cache devices. Default: none. May change (cache holds no unique data).
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub cache: Vec<String>,

    /// Hot spare devices. Default: none. May change.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub spares: Vec<String>,

    /// Sector size exponent (`ashift`): 12 for 4 KiB sectors (right for most HDDs and NVMe), 13 for
    /// 8 KiB. Default: 12. Immutable (fixed per vdev at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 9, max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "ashift is immutable"}]))]
    pub ashift: Option<u8>,

    /// Pool property `autotrim` (TRIM freed space on SSDs continuously). Default: off. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autotrim: Option<bool>,

    /// Further pool properties (`zpool set`), e.g. `autoexpand: "on"`. Default: none. May change.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 32))]
    pub properties: BTreeMap<String, String>,

    /// Node-wide ARC size cap (module parameter `zfs_arc_max`), e.g. `11Gi` on a storage-only host
    /// with 16 GiB RAM, `6Gi`-`8Gi` if it also runs VMs. Default: the ZFS default (half of RAM).
    /// May change. Applies to every pool on the node, so the node agent warns if two pools disagree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_quantity_string_schema")]
    pub arc_max: Option<Quantity>,

    /// Percentage of capacity above which the pool reports a `CapacityHigh` warning (ZFS latency
    /// degrades sharply when nearly full). Default: 80. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub capacity_warning_percent: Option<u8>,

    /// Filesystem datasets under the pool. Default: none. May change; removing an entry does not
    /// destroy the dataset (data is never destroyed by omission).
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub datasets: Vec<ZfsDataset>,

    /// Block volumes (zvols). Default: none. May change; removing an entry does not destroy the zvol.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub volumes: Vec<ZfsVolume>,

    /// NFS and iSCSI exports of datasets and zvols. Default: none. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exports: Option<ZfsExports>,
}

/// One vdev: a group of devices with a redundancy type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'mirror' || size(self.devices) >= 2", "message": "a mirror vdev needs at least 2 devices"},
    {"rule": "self.type != 'raidz1' || size(self.devices) >= 2", "message": "a raidz1 vdev needs at least 2 devices"},
    {"rule": "self.type != 'raidz2' || size(self.devices) >= 3", "message": "a raidz2 vdev needs at least 3 devices"},
    {"rule": "self.type != 'raidz3' || size(self.devices) >= 4", "message": "a raidz3 vdev needs at least 4 devices"}
]))]
pub struct ZfsVdev {
    /// Redundancy: `stripe` (single device or plain stripe), `mirror`, `raidz1`, `raidz2`, `raidz3`.
    /// Required. Immutable for existing vdevs.
    #[serde(rename = "type")]
    pub vdev_type: VdevType,
    /// Member devices, preferably stable `/dev/disk/by-id/...` paths (or partitions of them). Each
    /// device may appear once in the pool. Required. Immutable for existing vdevs.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub devices: Vec<String>,
}

/// Redundancy type of a ZFS vdev.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VdevType {
    Stripe,
    Mirror,
    Raidz1,
    Raidz2,
    Raidz3,
}

/// A ZFS filesystem dataset and its properties. Unset properties inherit from the parent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZfsDataset {
    /// Dataset path relative to the pool, e.g. `inference` or `vm` (nested: `a/b`). Required. Immutable.
    #[schemars(
        length(min = 1, max = 200),
        pattern(r"^[a-zA-Z0-9_.:-]+(/[a-zA-Z0-9_.:-]+)*$")
    )]
    pub name: String,
    /// `recordsize`, e.g. `1M` for large sequential files, `128K` (ZFS default) for mixed. May change
    /// (applies to newly written files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "zfs_size_schema")]
    pub recordsize: Option<String>,
    /// `compression`: `off`, `on`, `lz4`, `zstd`, `zstd-N`, `gzip`, `gzip-N`, `zle`. Inherited by
    /// default. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 16),
        pattern(r"^(on|off|lz4|lzjb|zle|zstd(-[0-9]{1,2})?|zstd-fast(-[0-9]+)?|gzip(-[1-9])?)$")
    )]
    pub compression: Option<String>,
    /// `sync`: `standard`, `always` or `disabled` (disabled loses the last seconds of writes on power
    /// failure; only for scratch data). Inherited by default. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncMode>,
    /// `logbias`: `latency` (use the SLOG) or `throughput`. Inherited by default. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logbias: Option<LogBias>,
    /// `atime`: record access times. Inherited by default (on). May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<bool>,
    /// `special_small_blocks`: blocks up to this size go to the special vdev, e.g. `32K`; `0`
    /// disables. Inherited by default. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "zfs_size_schema")]
    pub special_small_blocks: Option<String>,
    /// `quota` (Kubernetes quantity, e.g. `2Ti`). Default: none. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_quantity_string_schema")]
    pub quota: Option<Quantity>,
    /// `reservation` (Kubernetes quantity). Default: none. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_quantity_string_schema")]
    pub reservation: Option<Quantity>,
    /// Snapshots taken on a schedule, with local retention. Default: none. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotPolicy>,
    /// Further ZFS properties (`zfs set`), e.g. `xattr: sa`. Default: none. May change.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 32))]
    pub properties: BTreeMap<String, String>,
}

/// ZFS `sync` property.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Standard,
    Always,
    Disabled,
}

/// ZFS `logbias` property.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogBias {
    Latency,
    Throughput,
}

/// Scheduled snapshots with local retention (send older ones to a backup pool with `zfs send`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPolicy {
    /// Cron schedule (5 fields), e.g. `0 * * * *` hourly. Required. May change.
    #[schemars(length(max = 128), pattern(r"^(\S+\s+){4}\S+$"))]
    pub schedule: String,
    /// How many scheduled snapshots to keep locally; older ones are destroyed. Required. May change.
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
}

/// A ZFS volume (zvol), a block device backed by the pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZfsVolume {
    /// Volume path relative to the pool, e.g. `vm/iscsi0`. Required. Immutable.
    #[schemars(
        length(min = 1, max = 200),
        pattern(r"^[a-zA-Z0-9_.:-]+(/[a-zA-Z0-9_.:-]+)*$")
    )]
    pub name: String,
    /// Size (Kubernetes quantity). Required. May grow, never shrink.
    #[schemars(schema_with = "quantity_string_schema")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "quantity(self).isGreaterThan(quantity('0'))", "message": "size must be greater than 0"},
        {"rule": "!quantity(self).isLessThan(quantity(oldSelf))", "message": "a volume may grow but never shrink"}
    ]))]
    pub size: Quantity,
    /// `volblocksize`, e.g. `16K` for VM disks. Default: ZFS default (16K). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "zfs_size_schema")]
    pub volblocksize: Option<String>,
    /// `sync` of the volume. Inherited by default. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncMode>,
    /// `volmode`: `default`, `full`, `geom`, `dev` (block device only, no partition scanning on the
    /// host; right for iSCSI), `none`. Default: `default`. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volmode: Option<VolMode>,
    /// `compression` of the volume (same values as datasets). Inherited by default. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 16),
        pattern(r"^(on|off|lz4|lzjb|zle|zstd(-[0-9]{1,2})?|zstd-fast(-[0-9]+)?|gzip(-[1-9])?)$")
    )]
    pub compression: Option<String>,
    /// Create the volume sparse (thin-provisioned, no reservation). Default: false. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<bool>,
    /// Snapshots taken on a schedule, with local retention. Default: none. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotPolicy>,
}

/// ZFS `volmode` property.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolMode {
    Default,
    Full,
    Geom,
    Dev,
    None,
}

/// NFS and iSCSI exports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZfsExports {
    /// Datasets exported over NFS (kernel nfsd, `exportfs`). Default: none. May change.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["dataset"]))]
    pub nfs: Vec<NfsExport>,
    /// Volumes exported over iSCSI (LIO, `targetcli`). Default: none. May change.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["volume"]))]
    pub iscsi: Vec<IscsiExport>,
}

/// An NFS export of one dataset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NfsExport {
    /// Dataset (relative to the pool) to export; must be listed in `datasets`. Required. May change.
    #[schemars(length(min = 1, max = 200))]
    pub dataset: String,
    /// Who may mount, with export options per client. At least one. May change.
    #[schemars(length(min = 1, max = 32))]
    pub clients: Vec<NfsClient>,
}

/// One NFS client entry of an export (`host(options)` in /etc/exports).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NfsClient {
    /// Host, network (`10.0.0.0/24`) or wildcard (`*.lab`). Required. May change.
    #[schemars(length(min = 1, max = 253), pattern(r"^[^\s()]+$"))]
    pub host: String,
    /// Export options, e.g. `[rw, sync, no_subtree_check]`. Default: `[ro, sync, no_subtree_check,
    /// root_squash]`. May change.
    #[serde(default)]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 64), pattern(r"^[a-z_]+(=[^\s,()]+)?$"))
    )]
    pub options: Vec<String>,
}

/// An iSCSI target exporting one zvol as a LUN.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IscsiExport {
    /// Volume (relative to the pool) to export; must be listed in `volumes`. Required. May change.
    #[schemars(length(min = 1, max = 200))]
    pub volume: String,
    /// Target IQN, e.g. `iqn.2026-01.dev.tessera:llm-vm`. Required. May change.
    #[schemars(
        length(max = 223),
        pattern(r"^iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+(:[^\s]+)?$")
    )]
    pub target_iqn: String,
    /// LUN number. Default: 0. May change.
    #[serde(default)]
    #[schemars(range(min = 0, max = 255))]
    pub lun: u16,
    /// Initiator IQNs allowed to log in (ACLs). At least one: an open target is never created.
    /// May change.
    #[schemars(
        length(min = 1, max = 64),
        inner(
            length(max = 223),
            pattern(r"^iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+(:[^\s]+)?$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_initiators: Vec<String>,
    /// Secret with `username` and `password` (and optionally `mutualUsername`, `mutualPassword`)
    /// for CHAP. Default: none (no CHAP; only for fully trusted networks). May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret_ref: Option<SecretReference>,
}

// ---------------------------------------------------------------- MD

/// A Linux MD RAID array (`mdadm`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.level != 0 || size(self.devices) >= 2", "message": "RAID0 needs at least 2 devices"},
    {"rule": "self.level != 1 || size(self.devices) >= 2", "message": "RAID1 needs at least 2 devices"},
    {"rule": "self.level != 4 || size(self.devices) >= 3", "message": "RAID4 needs at least 3 devices"},
    {"rule": "self.level != 5 || size(self.devices) >= 3", "message": "RAID5 needs at least 3 devices"},
    {"rule": "self.level != 6 || size(self.devices) >= 4", "message": "RAID6 needs at least 4 devices"},
    {"rule": "self.level != 10 || size(self.devices) >= 2", "message": "RAID10 needs at least 2 devices"},
    {"rule": "self.devices.all(d, !(d in self.spares))", "message": "a device cannot be both a member and a spare"},
    {"rule": "!has(self.layout) || self.level in [5, 6] || (self.level == 10 && self.layout.matches('^[nfo][0-9]$'))",
     "message": "layout applies to RAID5, RAID6 (left-symmetric, ...) and RAID10 (n2, f2, o2)"},
    {"rule": "!has(self.layout) || self.level == 10 || !self.layout.matches('^[nfo][0-9]$')",
     "message": "n2/f2/o2 layouts apply to RAID10 only"},
    {"rule": "!has(self.layout) || self.level == 6 || !self.layout.endsWith('-6')",
     "message": "the *-6 layouts apply to RAID6 only"}
]))]
pub struct MdArraySpec {
    /// Array name, the `N` of `/dev/md/N` (and the mdadm `--name`). Required. Immutable.
    #[schemars(length(min = 1, max = 32), pattern(r"^[a-zA-Z0-9_-]+$"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "array name is immutable"}]))]
    pub name: String,
    /// RAID level: 0, 1, 4, 5, 6 or 10. Required. Immutable (reshaping a level is refused).
    #[schemars(extend("enum" = [0, 1, 4, 5, 6, 10]))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "RAID level is immutable"}]))]
    pub level: u8,
    /// Chunk size, a power of two from `4K` to `64M` written with a K/M suffix, e.g. `512K`. Default:
    /// mdadm's (512K). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8), pattern(r"^[0-9]+[KM]$"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "chunk is immutable"}]))]
    pub chunk: Option<String>,
    /// Parity layout: RAID5/6 `left-symmetric` (default), `left-asymmetric`, `right-symmetric`,
    /// `right-asymmetric`, `parity-first`, `parity-last`, RAID6 also the `*-6` forms and `ddf-*`;
    /// RAID10 `n2`, `f2`, `o2`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(r"^(left-symmetric|left-asymmetric|right-symmetric|right-asymmetric|parity-first|parity-last|left-symmetric-6|left-asymmetric-6|right-symmetric-6|right-asymmetric-6|parity-first-6|ddf-zero-restart|ddf-N-restart|ddf-N-continue|[nfo][0-9])$"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "layout is immutable"}]))]
    pub layout: Option<String>,
    /// Superblock format: `0.90`, `1.0`, `1.1` or `1.2`. Default: `1.2`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["0.90", "1.0", "1.1", "1.2"]))]
    pub metadata: Option<String>,
    /// Member devices in role order, preferably `/dev/disk/by-id/...`. Required. Existing members are
    /// immutable; appending grows the array (a reshape, run by the kernel).
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "size(self) >= size(oldSelf) && oldSelf.all(d, d in self)",
        "message": "members cannot be removed or replaced through the spec; only new members may be added"}]))]
    pub devices: Vec<String>,
    /// Hot spares. Default: none. May change.
    #[serde(default)]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub spares: Vec<String>,
    /// Write-intent bitmap: `internal` (default; fast resync after a crash) or `none`. May change.
    #[serde(default)]
    pub bitmap: MdBitmap,
}

/// MD write-intent bitmap.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MdBitmap {
    #[default]
    Internal,
    None,
}

// ---------------------------------------------------------------- LVM

/// An LVM volume group and its logical volumes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.logicalVolumes.all(lv, !has(lv.stripes) || lv.stripes + (lv.type == 'raid6' ? 2 : (lv.type == 'raid5' ? 1 : 0)) <= size(self.pvs))",
     "message": "a logical volume needs at least stripes (+1 for raid5, +2 for raid6) physical volumes"}
]))]
pub struct LvmSpec {
    /// Volume group name. Required. Immutable.
    #[schemars(
        length(min = 1, max = 127),
        pattern(r"^[a-zA-Z0-9+_.][a-zA-Z0-9+_.-]*$")
    )]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "vgName is immutable"}]))]
    pub vg_name: String,
    /// Physical volumes (devices). Required. May grow; removing a PV is refused.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "oldSelf.all(d, d in self)",
        "message": "physical volumes cannot be removed through the spec; only added"}]))]
    pub pvs: Vec<String>,
    /// Logical volumes. Default: none. May change; removing an entry does not remove the LV.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub logical_volumes: Vec<LogicalVolume>,
}

/// One LVM logical volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'raid5' || !has(self.stripes) || self.stripes >= 2", "message": "raid5 needs at least 2 stripes"},
    {"rule": "self.type != 'raid6' || !has(self.stripes) || self.stripes >= 3", "message": "raid6 needs at least 3 stripes"},
    {"rule": "self.type != 'raid10' || !has(self.stripes) || self.stripes >= 2", "message": "raid10 needs at least 2 stripes"},
    {"rule": "self.type != 'linear' || !has(self.stripes) || self.stripes == 1", "message": "a linear volume has 1 stripe"},
    {"rule": "!has(self.stripeSize) || self.type != 'linear'", "message": "stripeSize does not apply to linear volumes"}
]))]
pub struct LogicalVolume {
    /// LV name. Required. Immutable.
    #[schemars(
        length(min = 1, max = 127),
        pattern(r"^[a-zA-Z0-9+_.][a-zA-Z0-9+_.-]*$")
    )]
    pub name: String,
    /// Segment type. Required. Immutable (LVM can convert some types, Tessera refuses to).
    #[serde(rename = "type")]
    pub lv_type: LvType,
    /// Number of data stripes (`lvcreate -i`). Default: LVM's (2 for striped/raid5, 3 for raid6).
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub stripes: Option<u32>,
    /// Stripe size (`lvcreate -I`), a power of two such as `64K`. Default: LVM's (64K). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8), pattern(r"^[0-9]+[KM]$"))]
    pub stripe_size: Option<String>,
    /// Size (Kubernetes quantity). Required. May grow, never shrink.
    #[schemars(schema_with = "quantity_string_schema")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "quantity(self).isGreaterThan(quantity('0'))", "message": "size must be greater than 0"},
        {"rule": "!quantity(self).isLessThan(quantity(oldSelf))", "message": "a logical volume may grow but never shrink"}
    ]))]
    pub size: Quantity,
}

/// LVM segment type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LvType {
    Linear,
    Striped,
    Raid1,
    Raid5,
    Raid6,
    Raid10,
}

// ---------------------------------------------------------------- status

/// Observed state of a pool, written by the node agent (members, operation) and the operator
/// (phase, conditions) through server-side apply.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Node the pool lives on (resolved from nodeName or nodeSelector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Summary for print columns: Pending, Creating, Ready, Degraded, Failed, Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PoolPhase>,
    /// Health as the backend reports it: ZFS `ONLINE`/`DEGRADED`/..., MD `clean`/`degraded`/...,
    /// LVM per-LV health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Capacity of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Member devices with their state and SMART summary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Long-running operation in progress (resync, scrub, resilver, rebuild).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// Ready, Degraded, Progressing, ParityOffloadActive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Summary phase of a pool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
pub enum PoolPhase {
    Pending,
    Creating,
    Ready,
    Degraded,
    Failed,
    Deleting,
}

/// Capacity of a pool (quantities in bytes).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Usable size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Allocated space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Quantity>,
    /// Free space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<Quantity>,
}

/// State of one member device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Device path as given in the spec.
    pub device: String,
    /// Role in the pool, e.g. `data`, `special`, `log`, `cache`, `spare`, or the MD role number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// State as the backend reports it (ONLINE, FAULTED, active sync, faulty, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// SMART summary of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<SmartSummary>,
}

/// SMART summary of a device, from `smartctl --json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmartSummary {
    /// `Passed`, `Warning`, `Critical` or `Unknown` (no SMART data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Current temperature in °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_celsius: Option<i64>,
    /// Reallocated sector count (ATA attribute 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reallocated: Option<i64>,
    /// Current pending sector count (ATA attribute 197).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// Offline uncorrectable count (ATA attribute 198) or NVMe media errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncorrectable: Option<i64>,
    /// Why the health is not Passed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A long-running operation on the pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// resync, scrub, resilver, rebuild, check.
    pub kind: OperationKind,
    /// Progress in percent, e.g. `42.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Estimated time remaining, e.g. `1h20m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
}

/// Kind of a long-running pool operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    Resync,
    Scrub,
    Resilver,
    Rebuild,
    Check,
}

impl StoragePoolSpec {
    /// Every device the spec names, in a stable order (data, special, log, cache, spares).
    pub fn devices(&self) -> Vec<&str> {
        let mut out = Vec::new();
        if let Some(z) = &self.zfs {
            for v in z.vdevs.iter().chain(&z.special).chain(&z.log) {
                out.extend(v.devices.iter().map(String::as_str));
            }
            out.extend(z.cache.iter().map(String::as_str));
            out.extend(z.spares.iter().map(String::as_str));
        }
        if let Some(m) = &self.md {
            out.extend(m.devices.iter().map(String::as_str));
            out.extend(m.spares.iter().map(String::as_str));
        }
        if let Some(l) = &self.lvm {
            out.extend(l.pvs.iter().map(String::as_str));
        }
        out
    }
}
