//! Types and schema helpers shared by every kind: conditions, quantities, references.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// API group of every Tessera kind.
pub const GROUP: &str = "tessera.dev";
/// API version of every Tessera kind.
pub const VERSION: &str = "v1alpha1";

/// Finalizer name of a kind, `tessera.dev/<kind>-protection` (DESIGN.md "Names").
pub fn finalizer(kind_lowercase: &str) -> String {
    format!("{GROUP}/{kind_lowercase}-protection")
}

/// Condition type names used across kinds.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const DEGRADED: &str = "Degraded";
    pub const PROGRESSING: &str = "Progressing";
    pub const PARITY_OFFLOAD_ACTIVE: &str = "ParityOffloadActive";
    pub const ACCEPTED: &str = "Accepted";
    pub const APPLIED: &str = "Applied";
    pub const ALLOCATED: &str = "Allocated";
}

/// Schema of a quantity field written as a string (`16Gi`, `500M`, `1024`), so that CEL can use
/// `quantity(self)`. Kubernetes' own int-or-string form is not accepted here on purpose: CEL's
/// quantity library only takes strings.
pub fn quantity_string_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 64,
        "pattern": QUANTITY_PATTERN,
    })
}

/// Same as [`quantity_string_schema`] for an optional field.
pub fn optional_quantity_string_schema(g: &mut SchemaGenerator) -> Schema {
    let mut s = quantity_string_schema(g);
    s.insert("nullable".into(), true.into());
    s
}

/// The quantity grammar of Kubernetes (decimal number, optional binary or decimal suffix).
pub const QUANTITY_PATTERN: &str = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// Schema of a ZFS size property such as `1M`, `128K`, `16K` or `0`.
pub fn zfs_size_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 16,
        "pattern": r"^[0-9]+(\.[0-9]+)?[KMGTP]?$",
        "nullable": true,
    })
}

/// Parse a Kubernetes quantity into bytes (or plain units). Fractions are rounded up, since a
/// size request must never be rounded below what was asked for.
pub fn parse_quantity(q: &str) -> crate::Result<u128> {
    let err = || crate::Error::Quantity(q.to_string());
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let mult: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return Err(err()),
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| err())?
    };
    let mut total = int.checked_mul(mult).ok_or_else(err)?;
    if !frac_part.is_empty() {
        let digits = frac_part.len().min(18) as u32;
        let frac: u128 = frac_part[..digits as usize].parse().map_err(|_| err())?;
        let denom = 10u128.pow(digits);
        total += (frac * mult).div_ceil(denom);
    }
    Ok(total)
}

/// Parse an optional [`Quantity`] into bytes.
pub fn quantity_bytes(q: &Quantity) -> crate::Result<u128> {
    parse_quantity(&q.0)
}

/// A reference to a Secret in a namespace (for CHAP credentials and the like).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret. Required. May change (takes effect on the next reconcile).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret. Required. May change.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
}

/// Selects GPUs on a node. Empty selects every GPU. Fields combine with AND.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSelector {
    /// Only the GPU with this index (as the driver numbers them, 0-based). Default: any. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 63))]
    pub index: Option<u32>,
    /// Only the GPU with this UUID (`GPU-xxxxxxxx-...` as nvidia-smi prints it). Default: any. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub uuid: Option<String>,
    /// Only GPUs whose model name contains this text, e.g. `H100` or `H200`. Default: any. May change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub model: Option<String>,
}

impl GpuSelector {
    /// Whether a GPU with these properties is selected.
    pub fn matches(&self, index: u32, uuid: &str, model: &str) -> bool {
        self.index.is_none_or(|i| i == index)
            && self.uuid.as_deref().is_none_or(|u| u == uuid)
            && self.model.as_deref().is_none_or(|m| model.contains(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_bytes() {
        assert_eq!(parse_quantity("16Gi").unwrap(), 16 << 30);
        assert_eq!(parse_quantity("500M").unwrap(), 500_000_000);
        assert_eq!(parse_quantity("1024").unwrap(), 1024);
        assert_eq!(parse_quantity("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_quantity("0.1").unwrap(), 1, "fractions round up");
        assert!(parse_quantity("12Q").is_err());
        assert!(parse_quantity("").is_err());
        assert!(parse_quantity("Gi").is_err());
    }

    #[test]
    fn gpu_selector_combines_fields_with_and() {
        let any = GpuSelector::default();
        assert!(any.matches(3, "GPU-1", "NVIDIA H100 80GB HBM3"));
        let h100_idx0 = GpuSelector {
            index: Some(0),
            model: Some("H100".into()),
            uuid: None,
        };
        assert!(h100_idx0.matches(0, "GPU-1", "NVIDIA H100 80GB HBM3"));
        assert!(!h100_idx0.matches(1, "GPU-1", "NVIDIA H100 80GB HBM3"));
        assert!(!h100_idx0.matches(0, "GPU-1", "NVIDIA H200"));
    }

    #[test]
    fn finalizer_names_follow_the_convention() {
        assert_eq!(
            finalizer("storagepool"),
            "tessera.dev/storagepool-protection"
        );
    }
}
