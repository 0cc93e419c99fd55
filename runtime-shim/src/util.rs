//! Small helpers: ids, timestamps, the CRI log line format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn unique_suffix() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A 64-hex-digit id like containerd's, unique per process and time.
pub fn new_id(seed: &str) -> String {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(now_ns().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(unique_suffix().to_le_bytes());
    format!("{:x}", h.finalize())
}

/// RFC 3339 with nanoseconds in UTC (`2026-11-22T10:04:05.123456789Z`), as CRI log lines use.
pub fn rfc3339_nanos(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Splits `data` of one stream into CRI log lines: `<time> <stream> <F|P> <line>`. A trailing
/// piece without newline is returned as the new `pending` (written later, or as `P` when long).
pub fn cri_log_lines(t_ns: i64, stream: &str, pending: &mut Vec<u8>, data: &[u8]) -> Vec<u8> {
    pending.extend_from_slice(data);
    let mut out = Vec::new();
    let ts = rfc3339_nanos(t_ns);
    while let Some(i) = pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = pending.drain(..=i).collect();
        out.extend_from_slice(format!("{ts} {stream} F ").as_bytes());
        out.extend_from_slice(&line);
    }
    // Kubelet's limit for one line is 16 KiB; longer pieces go out as partial lines.
    while pending.len() >= 16 * 1024 {
        let part: Vec<u8> = pending.drain(..16 * 1024).collect();
        out.extend_from_slice(format!("{ts} {stream} P ").as_bytes());
        out.extend_from_slice(&part);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_795_000_000_123_000_000),
            "2026-11-18T11:06:40.123000000Z"
        );
        assert_eq!(
            rfc3339_nanos(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
    }

    #[test]
    fn log_lines_full_and_pending() {
        let mut p = Vec::new();
        let out = cri_log_lines(0, "stdout", &mut p, b"hello\nwor");
        assert_eq!(out, b"1970-01-01T00:00:00.000000000Z stdout F hello\n");
        assert_eq!(p, b"wor");
        let out = cri_log_lines(0, "stdout", &mut p, b"ld\n");
        assert_eq!(out, b"1970-01-01T00:00:00.000000000Z stdout F world\n");
        assert!(p.is_empty());
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_id("a"), new_id("a"));
        assert_eq!(new_id("a").len(), 64);
    }
}
