//! Prometheus metrics of the controller (`muster_controller_*`), served on `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// The controller's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Registry holding them.
    pub registry: Registry,
    /// Reconciles started.
    pub reconciles: IntCounter,
    /// Reconciles that failed (and were retried).
    pub reconcile_errors: IntCounter,
    /// Reconcile wall time.
    pub reconcile_duration: Histogram,
    /// Pods created.
    pub pods_created: IntCounter,
    /// Pods deleted.
    pub pods_deleted: IntCounter,
    /// ModelServings whose latest spec has not been acted on yet (the reconcile backlog;
    /// kube-runtime does not expose its internal queue, so this counts the work it holds).
    pub pending: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounter::new(
            "muster_controller_reconciles_total",
            "ModelServing reconciles started",
        )
        .unwrap();
        let reconcile_errors = IntCounter::new(
            "muster_controller_reconcile_errors_total",
            "ModelServing reconciles that failed",
        )
        .unwrap();
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "muster_controller_reconcile_duration_seconds",
                "ModelServing reconcile wall time",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap();
        let pods_created =
            IntCounter::new("muster_controller_pods_created_total", "Pods created").unwrap();
        let pods_deleted =
            IntCounter::new("muster_controller_pods_deleted_total", "Pods deleted").unwrap();
        let pending = IntGauge::new(
            "muster_controller_modelservings_pending",
            "ModelServings whose generation is newer than status.observedGeneration",
        )
        .unwrap();
        for m in [&reconciles, &reconcile_errors, &pods_created, &pods_deleted] {
            registry.register(Box::new(m.clone())).unwrap();
        }
        registry.register(Box::new(pending.clone())).unwrap();
        registry
            .register(Box::new(reconcile_duration.clone()))
            .unwrap();
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            pods_created,
            pods_deleted,
            pending,
        }
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
