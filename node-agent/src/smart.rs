//! SMART health from `smartctl --json -a DEVICE`, judged against configurable thresholds.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tessera_crds::storage_pool::SmartSummary;

/// Thresholds; the defaults are the issue's: temperature warn 55 °C / critical 65 °C, any
/// reallocated/pending/uncorrectable sector is a warning (critical from 10), NVMe critical_warning
/// non-zero is critical, percentage_used ≥ 80 warning / ≥ 100 critical, media errors warning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Thresholds {
    pub temperature_warn_c: i64,
    pub temperature_critical_c: i64,
    pub sectors_warn: i64,
    pub sectors_critical: i64,
    pub nvme_percentage_used_warn: i64,
    pub nvme_percentage_used_critical: i64,
    pub nvme_media_errors_warn: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            temperature_warn_c: 55,
            temperature_critical_c: 65,
            sectors_warn: 1,
            sectors_critical: 10,
            nvme_percentage_used_warn: 80,
            nvme_percentage_used_critical: 100,
            nvme_media_errors_warn: 1,
        }
    }
}

/// Health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Passed,
    Warning,
    Critical,
    Unknown,
}

fn ata_raw(v: &Value, id: i64) -> Option<i64> {
    v["ata_smart_attributes"]["table"]
        .as_array()?
        .iter()
        .find(|a| a["id"].as_i64() == Some(id))
        .and_then(|a| a["raw"]["value"].as_i64())
}

/// Summarize `smartctl --json -a` output. Returns the summary and the verdict.
pub fn evaluate(json: &str, t: &Thresholds) -> (SmartSummary, Health) {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return (
            SmartSummary {
                health: Some("Unknown".into()),
                message: Some("unreadable smartctl output".into()),
                ..Default::default()
            },
            Health::Unknown,
        );
    };
    let temp = v["temperature"]["current"].as_i64();
    let nvme = &v["nvme_smart_health_information_log"];
    let reallocated = ata_raw(&v, 5);
    let pending = ata_raw(&v, 197);
    let uncorrectable = ata_raw(&v, 198).or_else(|| nvme["media_errors"].as_i64());
    let mut health = Health::Passed;
    let mut why = Vec::new();
    let mut raise = |h: Health, msg: String| {
        if h > health {
            health = h;
        }
        why.push(msg);
    };
    if v["smart_status"]["passed"].as_bool() == Some(false) {
        raise(
            Health::Critical,
            "the drive's own SMART self-assessment failed".into(),
        );
    }
    if let Some(c) = temp {
        if c >= t.temperature_critical_c {
            raise(
                Health::Critical,
                format!("temperature {c} °C ≥ {} °C", t.temperature_critical_c),
            );
        } else if c >= t.temperature_warn_c {
            raise(
                Health::Warning,
                format!("temperature {c} °C ≥ {} °C", t.temperature_warn_c),
            );
        }
    }
    for (name, val) in [
        ("reallocated sectors", reallocated),
        ("pending sectors", pending),
        ("offline uncorrectable sectors", ata_raw(&v, 198)),
    ] {
        if let Some(n) = val {
            if n >= t.sectors_critical {
                raise(Health::Critical, format!("{n} {name}"));
            } else if n >= t.sectors_warn {
                raise(Health::Warning, format!("{n} {name}"));
            }
        }
    }
    if let Some(cw) = nvme["critical_warning"].as_i64().filter(|c| *c != 0) {
        raise(
            Health::Critical,
            format!("NVMe critical_warning 0x{cw:02x}"),
        );
    }
    if let Some(p) = nvme["percentage_used"].as_i64() {
        if p >= t.nvme_percentage_used_critical {
            raise(
                Health::Critical,
                format!("NVMe {p}% of rated endurance used"),
            );
        } else if p >= t.nvme_percentage_used_warn {
            raise(
                Health::Warning,
                format!("NVMe {p}% of rated endurance used"),
            );
        }
    }
    if let Some(m) = nvme["media_errors"]
        .as_i64()
        .filter(|m| *m >= t.nvme_media_errors_warn)
    {
        raise(Health::Warning, format!("{m} NVMe media errors"));
    }
    if v["smart_status"].is_null() && temp.is_none() {
        health = Health::Unknown;
        why.push("no SMART data (virtual or USB-bridged device?)".into());
    }
    let summary = SmartSummary {
        health: Some(format!("{health:?}")),
        temperature_celsius: temp,
        reallocated,
        pending,
        uncorrectable,
        message: (!why.is_empty()).then(|| why.join("; ")),
    };
    (summary, health)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATA_OK: &str = r#"{"smart_status":{"passed":true},"temperature":{"current":38},
      "ata_smart_attributes":{"table":[{"id":5,"raw":{"value":0}},{"id":197,"raw":{"value":0}},{"id":198,"raw":{"value":0}}]}}"#;
    const ATA_HOT_PENDING: &str = r#"{"smart_status":{"passed":true},"temperature":{"current":57},
      "ata_smart_attributes":{"table":[{"id":5,"raw":{"value":0}},{"id":197,"raw":{"value":3}},{"id":198,"raw":{"value":0}}]}}"#;
    const NVME_CRIT: &str = r#"{"smart_status":{"passed":true},"temperature":{"current":40},
      "nvme_smart_health_information_log":{"critical_warning":4,"percentage_used":12,"media_errors":0}}"#;
    const VIRTUAL: &str = r#"{"device":{"name":"/dev/vda"},"smartctl":{"exit_status":1}}"#;

    #[test]
    fn healthy_drive_passes() {
        let (s, h) = evaluate(ATA_OK, &Thresholds::default());
        assert_eq!(h, Health::Passed);
        assert_eq!(s.temperature_celsius, Some(38));
        assert_eq!(s.pending, Some(0));
    }

    #[test]
    fn warm_drive_with_pending_sectors_warns() {
        let (s, h) = evaluate(ATA_HOT_PENDING, &Thresholds::default());
        assert_eq!(h, Health::Warning);
        let m = s.message.unwrap();
        assert!(
            m.contains("57 °C") && m.contains("3 pending sectors"),
            "{m}"
        );
        let strict = Thresholds {
            temperature_critical_c: 56,
            ..Default::default()
        };
        assert_eq!(
            evaluate(ATA_HOT_PENDING, &strict).1,
            Health::Critical,
            "thresholds are configurable"
        );
    }

    #[test]
    fn nvme_critical_warning_is_critical_and_virtual_disk_is_unknown() {
        assert_eq!(
            evaluate(NVME_CRIT, &Thresholds::default()).1,
            Health::Critical
        );
        assert_eq!(evaluate(VIRTUAL, &Thresholds::default()).1, Health::Unknown);
        assert_eq!(
            evaluate("not json", &Thresholds::default()).1,
            Health::Unknown
        );
    }
}
