//! Prometheus metrics of the operator (prefix `tessera_operator_`).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub error: String,
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub leader: Gauge,
    pub allocations: Counter,
    pub releases: Counter,
    pub allocation_conflicts: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        const RECONCILE_BUCKETS: [f64; 14] = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
        ];
        let mut r = Registry::with_prefix("tessera_operator");
        let reconciliations = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                // Round bounds (1 s among them) so that "p99 under a second" can be read off.
                Histogram::new(RECONCILE_BUCKETS.iter().copied())
            });
        let leader = Gauge::default();
        let allocations = Counter::default();
        let releases = Counter::default();
        let allocation_conflicts = Counter::default();
        r.register(
            "reconciliations",
            "Reconciliations started",
            reconciliations.clone(),
        );
        r.register(
            "reconcile_failures",
            "Reconciliations that failed, by error kind",
            failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            reconcile_duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        r.register(
            "vgpu_allocations",
            "VGpuClaims allocated",
            allocations.clone(),
        );
        r.register(
            "vgpu_releases",
            "VGpuClaim allocations released",
            releases.clone(),
        );
        r.register(
            "vgpu_ledger_conflicts",
            "Allocation ledger writes that lost a resourceVersion race and were retried",
            allocation_conflicts.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            reconciliations,
            failures,
            reconcile_duration,
            leader,
            allocations,
            releases,
            allocation_conflicts,
        }
    }
}

impl Metrics {
    /// Count a reconciliation and time it until the returned guard drops.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciliations.get_or_create(&labels).inc();
        ReconcileTimer {
            start: Instant::now(),
            hist: self.reconcile_duration.get_or_create(&labels).clone(),
        }
    }

    pub fn failure(&self, controller: &str, err: &crate::Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                error: err.metric_label().into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Observes the elapsed time on drop.
pub struct ReconcileTimer {
    start: Instant,
    hist: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.hist.observe(self.start.elapsed().as_secs_f64());
    }
}
