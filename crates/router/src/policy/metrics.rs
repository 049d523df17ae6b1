//! Traffic-policy metrics, registered in the router's registry next to the proxy's own.
//! Labels stay bounded: models are configured names, scopes/priorities/reasons fixed lists.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Metric handles of authentication, rate limiting and fair queuing.
#[derive(Clone)]
pub struct PolicyMetrics {
    /// Requests refused by a token rate limit, by model and scope.
    pub rate_limited: IntCounterVec,
    /// 1 while a Redis holding global limits (or fairness state) is unreachable.
    pub degraded: IntGauge,
    /// Rate-limit decisions taken without Redis, by fail mode.
    pub degraded_decisions: IntCounterVec,
    /// Time spent waiting in a fair queue, by priority class.
    pub queue_wait: HistogramVec,
    /// Requests waiting in fair queues, by priority class.
    pub queue_depth: IntGaugeVec,
    /// Requests refused by a fair queue, by priority and reason (`timeout`, `full`).
    pub queue_rejected: IntCounterVec,
    /// Failed authentications, by reason.
    pub auth_failures: IntCounterVec,
    /// Failed fairness-state synchronisations with Redis.
    pub fair_sync_errors: IntCounter,
}

impl PolicyMetrics {
    /// Registers the handles in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let degraded = IntGauge::new(
            "muster_router_ratelimit_degraded",
            "1 while a Redis holding global rate limits or fairness state is unreachable.",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(degraded.clone()))
            .expect("unique");
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "muster_router_queue_wait_seconds",
                "Time a request waited in a fair queue for an endpoint slot, by priority class.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 17).expect("buckets")),
            &["priority"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(queue_wait.clone()))
            .expect("unique");
        PolicyMetrics {
            rate_limited: counter(
                "muster_router_rate_limited_total",
                "Requests refused by a token rate limit, by public model and limit scope.",
                &["model", "scope"],
            ),
            degraded,
            degraded_decisions: counter(
                "muster_router_ratelimit_degraded_decisions_total",
                "Rate-limit decisions taken without Redis, by fail mode (local, open, closed).",
                &["mode"],
            ),
            queue_wait,
            queue_depth: gauge(
                "muster_router_queue_depth",
                "Requests waiting in fair queues, by priority class.",
                &["priority"],
            ),
            queue_rejected: counter(
                "muster_router_queue_rejected_total",
                "Requests refused by a fair queue, by priority class and reason.",
                &["priority", "reason"],
            ),
            auth_failures: counter(
                "muster_router_auth_failures_total",
                "Failed authentications, by reason (missing, invalid_key, invalid_token, forbidden_model).",
                &["reason"],
            ),
            fair_sync_errors: {
                let c = IntCounter::new(
                    "muster_router_fair_sync_errors_total",
                    "Failed exchanges of attained-service state with Redis.",
                )
                .expect("valid counter");
                registry.register(Box::new(c.clone())).expect("unique");
                c
            },
        }
    }
}
