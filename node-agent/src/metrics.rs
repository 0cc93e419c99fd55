//! Prometheus metrics of the node agent, served on `/metrics` in controller mode. The chart's alert
//! rules (`charts/tessera/templates/monitoring.yaml`) use the first three:
//!
//! - `tessera_node_smart_critical{node,device}`: 1 while a drive's SMART verdict is Critical;
//! - `tessera_pool_degraded{node,pool,backend}`: 1 while a pool runs with reduced redundancy;
//! - `tessera_parity_fallbacks_total{node}`: parity jobs that fell back from the GPU to the CPU
//!   engine (the agent runs no parity jobs yet, so the series stays at 0);
//!
//! and `tessera_pool_health{node,pool,backend,health}` (1 for the current health word),
//! `tessera_pool_size_bytes`, `tessera_pool_allocated_bytes`, `tessera_pool_operation_progress_percent`
//! and `tessera_pool_apply_total{node,pool,result}`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tessera_crds::tessera_node::Inventory;

use crate::error::{Error, Result};
use crate::plan::Observed;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub node: String,
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub node: String,
    pub pool: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    pub node: String,
    pub pool: String,
    pub backend: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    pub node: String,
    pub pool: String,
    /// `applied`, `noop`, `refused`, `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// Every metric the node agent exports.
#[derive(Clone)]
pub struct Metrics {
    node: String,
    registry: Arc<Registry>,
    smart_critical: Family<DeviceLabels, Gauge>,
    pool_degraded: Family<PoolLabels, Gauge>,
    pool_health: Family<HealthLabels, Gauge>,
    pool_size: Family<PoolLabels, Gauge>,
    pool_allocated: Family<PoolLabels, Gauge>,
    pool_progress: Family<PoolLabels, FGauge>,
    applies: Family<ApplyLabels, Counter>,
    parity_fallbacks: Family<NodeLabels, Counter>,
    /// Last health label per pool, so that a changed health word replaces the old series.
    last_health: Arc<Mutex<HashMap<String, HealthLabels>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let mut r = Registry::with_prefix("tessera");
        let m = Metrics {
            node: node.to_string(),
            registry: Arc::new(Registry::default()),
            smart_critical: Family::default(),
            pool_degraded: Family::default(),
            pool_health: Family::default(),
            pool_size: Family::default(),
            pool_allocated: Family::default(),
            pool_progress: Family::default(),
            applies: Family::default(),
            parity_fallbacks: Family::default(),
            last_health: Arc::default(),
        };
        r.register(
            "node_smart_critical",
            "1 while the drive's SMART verdict is Critical",
            m.smart_critical.clone(),
        );
        r.register(
            "pool_degraded",
            "1 while the pool runs with reduced redundancy (a member missing, faulted or offline)",
            m.pool_degraded.clone(),
        );
        r.register(
            "pool_health",
            "1 for the pool's current health as the backend words it",
            m.pool_health.clone(),
        );
        r.register(
            "pool_size_bytes",
            "Usable size of the pool",
            m.pool_size.clone(),
        );
        r.register(
            "pool_allocated_bytes",
            "Allocated bytes of the pool",
            m.pool_allocated.clone(),
        );
        r.register(
            "pool_operation_progress_percent",
            "Progress of the running resync / scrub / resilver / check, while one runs",
            m.pool_progress.clone(),
        );
        r.register(
            "pool_apply",
            "Applies of a StoragePool by result (applied, noop, refused, failed)",
            m.applies.clone(),
        );
        r.register(
            "parity_fallbacks",
            "Parity jobs that fell back from the GPU to the CPU engine",
            m.parity_fallbacks.clone(),
        );
        // The fallback series exists from the start (0), so that rate() works.
        m.parity_fallbacks
            .get_or_create(&NodeLabels {
                node: node.to_string(),
            })
            .inc_by(0);
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// SMART verdicts of the node's drives.
    pub fn record_inventory(&self, inv: &Inventory) {
        for d in &inv.block_devices {
            let critical = d
                .smart
                .as_ref()
                .and_then(|s| s.health.as_deref())
                .is_some_and(|h| h == "Critical");
            self.smart_critical
                .get_or_create(&DeviceLabels {
                    node: self.node.clone(),
                    device: d.path.clone(),
                })
                .set(i64::from(critical));
        }
    }

    /// The outcome of one apply of a pool and what was observed afterwards.
    pub fn record_pool(&self, pool: &str, backend: &str, result: &str, o: Option<&Observed>) {
        self.applies
            .get_or_create(&ApplyLabels {
                node: self.node.clone(),
                pool: pool.into(),
                result: result.into(),
            })
            .inc();
        let Some(o) = o else { return };
        let l = PoolLabels {
            node: self.node.clone(),
            pool: pool.into(),
            backend: backend.into(),
        };
        self.pool_degraded
            .get_or_create(&l)
            .set(i64::from(o.degraded));
        let h = HealthLabels {
            node: self.node.clone(),
            pool: pool.into(),
            backend: backend.into(),
            health: o.health.clone(),
        };
        if let Ok(mut last) = self.last_health.lock()
            && let Some(old) = last.insert(pool.to_string(), h.clone())
            && old != h
        {
            self.pool_health.remove(&old);
        }
        self.pool_health.get_or_create(&h).set(1);
        if let Some(s) = o.size_bytes {
            self.pool_size
                .get_or_create(&l)
                .set(i64::try_from(s).unwrap_or(i64::MAX));
        }
        if let Some(a) = o.allocated_bytes {
            self.pool_allocated
                .get_or_create(&l)
                .set(i64::try_from(a).unwrap_or(i64::MAX));
        }
        match o
            .operation
            .as_ref()
            .and_then(|op| op.progress.as_deref()?.parse::<f64>().ok())
        {
            Some(p) => {
                self.pool_progress.get_or_create(&l).set(p);
            }
            None => {
                self.pool_progress.remove(&l);
            }
        }
    }

    /// A parity job fell back from the GPU to the CPU engine.
    pub fn parity_fallback(&self) {
        self.parity_fallbacks
            .get_or_create(&NodeLabels {
                node: self.node.clone(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

async fn metrics_handler(
    State(m): State<Metrics>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

/// Serve `/metrics` and `/healthz` on `addr`; returns the bound address.
pub async fn serve(addr: std::net::SocketAddr, metrics: Metrics) -> Result<std::net::SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Read {
            path: format!("listen {addr}"),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Read {
        path: format!("listen {addr}"),
        source,
    })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_crds::storage_pool::{Operation, OperationKind, SmartSummary};
    use tessera_crds::tessera_node::BlockDevice;

    fn observed(health: &str, degraded: bool) -> Observed {
        Observed {
            health: health.into(),
            degraded,
            size_bytes: Some(1 << 30),
            allocated_bytes: Some(1 << 20),
            ..Default::default()
        }
    }

    #[test]
    fn alert_series_render_with_the_labels_the_chart_uses() {
        let m = Metrics::new("storage-01");
        let inv = Inventory {
            block_devices: vec![
                BlockDevice {
                    path: "/dev/sda".into(),
                    smart: Some(SmartSummary {
                        health: Some("Critical".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                BlockDevice {
                    path: "/dev/sdb".into(),
                    smart: Some(SmartSummary {
                        health: Some("Passed".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        m.record_inventory(&inv);
        m.record_pool("llm", "zfs", "applied", Some(&observed("DEGRADED", true)));
        let text = m.render();
        assert!(
            text.contains(r#"tessera_node_smart_critical{node="storage-01",device="/dev/sda"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tessera_node_smart_critical{node="storage-01",device="/dev/sdb"} 0"#)
        );
        assert!(
            text.contains(r#"tessera_pool_degraded{node="storage-01",pool="llm",backend="zfs"} 1"#)
        );
        assert!(text.contains(r#"tessera_parity_fallbacks_total{node="storage-01"} 0"#));
        assert!(text.contains(
            r#"tessera_pool_size_bytes{node="storage-01",pool="llm",backend="zfs"} 1073741824"#
        ));
        assert!(text.contains(
            r#"tessera_pool_apply_total{node="storage-01",pool="llm",result="applied"} 1"#
        ));
        assert!(text.contains("# TYPE tessera_pool_degraded gauge"));
        assert!(text.contains("# TYPE tessera_parity_fallbacks counter"));
        m.parity_fallback();
        assert!(
            m.render()
                .contains(r#"tessera_parity_fallbacks_total{node="storage-01"} 1"#)
        );
    }

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let m = Metrics::new("n");
        m.record_pool("llm", "zfs", "applied", Some(&observed("ONLINE", false)));
        let addr = serve("127.0.0.1:0".parse().unwrap(), m).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("application/openmetrics-text"));
        assert!(body.contains(r#"tessera_pool_degraded{node="n",pool="llm",backend="zfs"} 0"#));
        assert!(body.contains("# EOF"));
    }

    #[test]
    fn a_new_health_word_replaces_the_old_series_and_progress_comes_and_goes() {
        let m = Metrics::new("n");
        let mut o = observed("DEGRADED", true);
        o.operation = Some(Operation {
            kind: OperationKind::Resilver,
            progress: Some("42.5".into()),
            eta: None,
        });
        m.record_pool("llm", "zfs", "noop", Some(&o));
        let t = m.render();
        assert!(t.contains(
            r#"tessera_pool_health{node="n",pool="llm",backend="zfs",health="DEGRADED"} 1"#
        ));
        assert!(t.contains(
            r#"tessera_pool_operation_progress_percent{node="n",pool="llm",backend="zfs"} 42.5"#
        ));
        m.record_pool("llm", "zfs", "noop", Some(&observed("ONLINE", false)));
        let t = m.render();
        assert!(!t.contains(r#"health="DEGRADED""#), "{t}");
        assert!(t.contains(r#"health="ONLINE"} 1"#));
        assert!(t.contains(r#"tessera_pool_degraded{node="n",pool="llm",backend="zfs"} 0"#));
        assert!(!t.contains("tessera_pool_operation_progress_percent{"));
    }
}
