//! Prometheus metrics (text exposition), all prefixed `tessera_nbd_`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub op: &'static str,
    pub error: &'static str,
}

type HistFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    pub requests: Family<ResultLabels, Counter>,
    pub latency: HistFamily,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub handshake_failures: Counter,
    pub allocated: Gauge<u64, AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 2 µs .. ~1 s in powers of two: covers a memory copy of 4 KiB up to a 32 MiB VRAM copy.
    Histogram::new(exponential_buckets(2e-6, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera_nbd");
        let m = Self {
            registry: Registry::default(),
            bytes_read: Counter::default(),
            bytes_written: Counter::default(),
            requests: Family::default(),
            latency: HistFamily::new_with_constructor(latency_histogram),
            connections: Gauge::default(),
            connections_total: Counter::default(),
            handshake_failures: Counter::default(),
            allocated: Gauge::default(),
        };
        registry.register(
            "read_bytes",
            "Bytes returned to clients by READ",
            m.bytes_read.clone(),
        );
        registry.register(
            "written_bytes",
            "Bytes stored by WRITE",
            m.bytes_written.clone(),
        );
        registry.register(
            "requests",
            "Requests by command and NBD error (ok = success)",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency from header received to reply sent, by command",
            m.latency.clone(),
        );
        registry.register(
            "connections",
            "Connections in transmission phase",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "handshake_failures",
            "Connections closed during the handshake (bad magic, unknown export, timeout, abort)",
            m.handshake_failures.clone(),
        );
        registry.register(
            "allocated_bytes",
            "Bytes of backing storage currently allocated",
            m.allocated.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// Bind `addr` and serve `GET /metrics` (text format) until `cancel` fires. Returns the bound address.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            what: format!("metrics on {addr}"),
            source,
        })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = listener.accept() => match r { Ok(x) => x, Err(e) => { tracing::warn!(error = %e, "metrics accept"); continue; } },
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // Only the request line matters; 4 KiB is plenty for a scraper's headers.
                let mut buf = [0u8; 4096];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) =
                    if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
                        ("200 OK", metrics.encode())
                    } else {
                        ("404 Not Found", "try GET /metrics\n".to_string())
                    };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(bound)
}
