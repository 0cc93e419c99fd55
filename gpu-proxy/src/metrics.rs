//! Per-tenant statistics and a minimal `/metrics` endpoint (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::alloc::GlobalRanges;
use crate::error::{ProxyError, Result};

/// Counters of one tenant, shared between its session thread and the metrics endpoint.
#[derive(Default)]
pub struct TenantStats {
    pub label: String,
    pub memory_bytes: AtomicU64,
    pub quota_bytes: AtomicU64,
    pub allocations: AtomicU64,
    pub calls_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub launches_total: AtomicU64,
    pub htod_bytes_total: AtomicU64,
    pub dtoh_bytes_total: AtomicU64,
    pub kernel_ns_total: AtomicU64,
    pub throttle_ns_total: AtomicU64,
    pub rejected_pointers_total: AtomicU64,
    pub connected: AtomicU64,
}

/// Everything the proxy shares between sessions.
#[derive(Default)]
pub struct Registry {
    tenants: Mutex<BTreeMap<u64, Arc<TenantStats>>>,
    pub global_ranges: Mutex<GlobalRanges>,
    next_tenant: AtomicU64,
    disconnected_total: AtomicU64,
}

/// Disconnected tenants kept visible (memory 0, connected 0) so a scrape sees the release.
const KEEP_DISCONNECTED: usize = 64;

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a tenant, returning its id and stats.
    pub fn add_tenant(&self, label: String, quota: u64) -> (u64, Arc<TenantStats>) {
        let id = self.next_tenant.fetch_add(1, Relaxed) + 1;
        let s = Arc::new(TenantStats {
            label,
            ..Default::default()
        });
        s.quota_bytes.store(quota, Relaxed);
        s.connected.store(1, Relaxed);
        let mut t = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        t.insert(id, s.clone());
        // Forget the oldest disconnected tenants beyond the cap.
        let gone: Vec<u64> = t
            .iter()
            .filter(|(_, s)| s.connected.load(Relaxed) == 0)
            .map(|(k, _)| *k)
            .collect();
        for k in gone
            .iter()
            .take(gone.len().saturating_sub(KEEP_DISCONNECTED))
        {
            t.remove(k);
        }
        (id, s)
    }

    pub fn tenant_gone(&self, stats: &TenantStats) {
        stats.connected.store(0, Relaxed);
        self.disconnected_total.fetch_add(1, Relaxed);
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let t = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let connected = t
            .values()
            .filter(|s| s.connected.load(Relaxed) == 1)
            .count();
        let _ = writeln!(
            out,
            "# HELP tessera_vgpu_tenants_connected Tenants with an open IDM connection."
        );
        let _ = writeln!(out, "# TYPE tessera_vgpu_tenants_connected gauge");
        let _ = writeln!(out, "tessera_vgpu_tenants_connected {connected}");
        let _ = writeln!(out, "# TYPE tessera_vgpu_tenant_disconnects_total counter");
        let _ = writeln!(
            out,
            "tessera_vgpu_tenant_disconnects_total {}",
            self.disconnected_total.load(Relaxed)
        );
        type Get = fn(&TenantStats) -> u64;
        let series: [(&str, &str, &str, Get); 13] = [
            (
                "tenant_memory_bytes",
                "gauge",
                "Device memory allocated by the tenant.",
                |s| s.memory_bytes.load(Relaxed),
            ),
            (
                "tenant_memory_quota_bytes",
                "gauge",
                "The tenant's memory quota.",
                |s| s.quota_bytes.load(Relaxed),
            ),
            ("tenant_allocations", "gauge", "Live allocations.", |s| {
                s.allocations.load(Relaxed)
            }),
            (
                "tenant_connected",
                "gauge",
                "1 while the tenant is connected.",
                |s| s.connected.load(Relaxed),
            ),
            ("tenant_calls_total", "counter", "Forwarded calls.", |s| {
                s.calls_total.load(Relaxed)
            }),
            (
                "tenant_errors_total",
                "counter",
                "Calls answered with a CUresult other than success.",
                |s| s.errors_total.load(Relaxed),
            ),
            (
                "tenant_launches_total",
                "counter",
                "Kernel launches.",
                |s| s.launches_total.load(Relaxed),
            ),
            (
                "tenant_htod_bytes_total",
                "counter",
                "Bytes copied host to device.",
                |s| s.htod_bytes_total.load(Relaxed),
            ),
            (
                "tenant_dtoh_bytes_total",
                "counter",
                "Bytes copied device to host.",
                |s| s.dtoh_bytes_total.load(Relaxed),
            ),
            (
                "tenant_kernel_seconds_total",
                "counter",
                "Measured kernel time (when a compute share is set).",
                |s| s.kernel_ns_total.load(Relaxed),
            ),
            (
                "tenant_throttle_seconds_total",
                "counter",
                "Time launches waited for the compute share.",
                |s| s.throttle_ns_total.load(Relaxed),
            ),
            (
                "tenant_rejected_pointers_total",
                "counter",
                "Pointer or handle arguments rejected by isolation checks.",
                |s| s.rejected_pointers_total.load(Relaxed),
            ),
            (
                "tenant_info",
                "gauge",
                "Tenant id to transport identity.",
                |_| 1,
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP tessera_vgpu_{name} {help}");
            let _ = writeln!(out, "# TYPE tessera_vgpu_{name} {kind}");
            for (id, s) in t.iter() {
                let v = get(s);
                if name.ends_with("seconds_total") {
                    let _ = writeln!(
                        out,
                        "tessera_vgpu_{name}{{tenant=\"{id}\"}} {}",
                        v as f64 / 1e9
                    );
                } else if name == "tenant_info" {
                    let _ = writeln!(
                        out,
                        "tessera_vgpu_{name}{{tenant=\"{id}\",identity=\"{}\"}} 1",
                        s.label.replace(['"', '\\', '\n'], "_")
                    );
                } else {
                    let _ = writeln!(out, "tessera_vgpu_{name}{{tenant=\"{id}\"}} {v}");
                }
            }
        }
        out
    }
}

/// Serves `GET /metrics` (and `/healthz`) on `addr` from a background thread.
pub fn spawn_http(addr: SocketAddr, registry: Arc<Registry>) -> Result<SocketAddr> {
    let l = TcpListener::bind(addr).map_err(|source| ProxyError::Io {
        op: "bind metrics",
        source,
    })?;
    let bound = l.local_addr().map_err(|source| ProxyError::Io {
        op: "metrics local_addr",
        source,
    })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let mut line = String::new();
                let mut r = BufReader::new(&s);
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                // Drain the request headers.
                let mut h = String::new();
                while r.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                    h.clear();
                }
                let (status, body) = if line.starts_with("GET /metrics") {
                    ("200 OK", registry.render())
                } else if line.starts_with("GET /healthz") {
                    ("200 OK", "ok\n".to_owned())
                } else {
                    ("404 Not Found", "not found\n".to_owned())
                };
                let mut w = &s;
                let _ = write!(
                    w,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .map_err(|source| ProxyError::Io {
            op: "spawn metrics thread",
            source,
        })?;
    Ok(bound)
}
