//! The router's Prometheus metrics, all named `muster_router_*`. Labels are bounded: model
//! names come from configured routes (anything else is `-`), servers from ModelServers,
//! statuses from HTTP codes, plugins and outcomes from fixed lists.

use std::sync::Arc;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::scheduler::PluginKind;

/// Label of requests whose model no route serves (keeps label values bounded).
pub const UNKNOWN_MODEL: &str = "-";

/// One model's metric handles, resolved once per configuration rather than by label lookup on
/// every request.
pub struct ModelMetrics {
    /// The model label.
    pub label: Arc<str>,
    /// In-flight gauge.
    pub in_flight: IntGauge,
    /// End-to-end duration.
    pub request_duration: Histogram,
    /// Time to first token.
    pub time_to_first_token: Histogram,
    /// Inter-token gaps.
    pub inter_token_latency: Histogram,
    /// Prompt tokens.
    pub prompt_tokens: IntCounter,
    /// Completion tokens.
    pub completion_tokens: IntCounter,
    /// Cut responses.
    pub stream_errors: IntCounter,
}

/// Every metric the router exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by model, route and final status.
    pub requests: IntCounterVec,
    /// Request start to last byte.
    pub request_duration: HistogramVec,
    /// Request start to the first generated token (streaming) or first body byte.
    pub time_to_first_token: HistogramVec,
    /// Gaps between streamed token events.
    pub inter_token_latency: HistogramVec,
    /// Requests in flight by model.
    pub in_flight: IntGaugeVec,
    /// Upstream tries by server and outcome.
    pub upstream_attempts: IntCounterVec,
    /// Time spent in the scheduling function.
    pub scheduling_duration: Histogram,
    /// Score each plugin gave the chosen endpoint.
    pub plugin_score: HistogramVec,
    /// Prompt and completion tokens by model, from engine usage reports.
    pub tokens: IntCounterVec,
    /// Endpoints by server and state (ready, stale, ejected); set when scraped.
    pub endpoints: IntGaugeVec,
    /// Passive ejections by server.
    pub ejections: IntCounterVec,
    /// Failed engine metric scrapes.
    pub scrape_errors: IntCounter,
    /// Configuration loads by result.
    pub config_reloads: IntCounterVec,
    /// Responses cut short by an upstream failure after the first byte, by model.
    pub stream_errors: IntCounterVec,
    /// Log lines dropped because the log writer fell behind.
    pub log_lines_dropped: IntCounter,
    /// PD servers: how each request was served (`disaggregated`, `short_suffix`,
    /// `no_prefill_peer`).
    pub pd_decisions: IntCounterVec,
    /// PD servers: prefill legs by outcome (`ok`, `queue_timeout`, `connect_error`, `reset`,
    /// `status_4xx`, `status_5xx`, `status_429`, `timeout`, `bad_response`).
    pub pd_prefill_legs: IntCounterVec,
    /// PD servers: time a request waited for a prefill slot on its decoder.
    pub pd_prefill_queue_wait: HistogramVec,
    /// PD servers: prefill leg duration (send to response), NIXL and HTTP connectors.
    pub pd_prefill_duration: HistogramVec,
    /// Prefill budget: time a streamed request was held before it was sent.
    pub prefill_budget_wait: HistogramVec,
    /// Prefill budget: requests sent after `max-wait` without fitting.
    pub prefill_budget_bypassed: IntCounterVec,
    plugin_scores: Vec<Histogram>,
    unknown_model: Arc<ModelMetrics>,
}

impl Metrics {
    /// Registers everything in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Placeholder handles are replaced below, once the vectors exist.
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let latency = exponential_buckets(0.001, 2.0, 19).expect("buckets"); // 1 ms … 262 s
        let mut m = Metrics {
            requests: counter(
                "muster_router_requests_total",
                "Requests by public model, route and final HTTP status.",
                &["model", "route", "status"],
            ),
            request_duration: histogram(
                "muster_router_request_duration_seconds",
                "Request start to last response byte.",
                &["model"],
                latency.clone(),
            ),
            time_to_first_token: histogram(
                "muster_router_time_to_first_token_seconds",
                "Request start to the first generated token (streaming) or first body byte.",
                &["model"],
                latency,
            ),
            inter_token_latency: histogram(
                "muster_router_inter_token_latency_seconds",
                "Gap between consecutive streamed token events.",
                &["model"],
                exponential_buckets(0.0005, 2.0, 15).expect("buckets"),
            ),
            in_flight: gauge(
                "muster_router_in_flight_requests",
                "Requests being proxied, by public model.",
                &["model"],
            ),
            upstream_attempts: counter(
                "muster_router_upstream_attempts_total",
                "Tries sent to engines, by ModelServer and outcome.",
                &["server", "outcome"],
            ),
            scheduling_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "muster_router_scheduling_duration_seconds",
                        "Time to snapshot endpoints and run the scheduling function.",
                    )
                    .buckets(exponential_buckets(1e-6, 2.0, 16).expect("buckets")),
                )
                .expect("valid histogram");
                registry.register(Box::new(h.clone())).expect("unique");
                h
            },
            plugin_score: histogram(
                "muster_router_plugin_score",
                "Score in [0, 1] each plugin gave the chosen endpoint.",
                &["plugin"],
                vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
            ),
            tokens: counter(
                "muster_router_tokens_total",
                "Tokens reported by engines in usage, by model and kind (prompt, completion).",
                &["model", "kind"],
            ),
            endpoints: gauge(
                "muster_router_endpoints",
                "Endpoints by ModelServer and state (ready, stale_metrics, ejected).",
                &["server", "state"],
            ),
            ejections: counter(
                "muster_router_endpoint_ejections_total",
                "Passive outlier ejections by ModelServer.",
                &["server"],
            ),
            scrape_errors: {
                let c = IntCounter::new(
                    "muster_router_engine_scrape_errors_total",
                    "Engine /metrics scrapes that failed or had no known gauges.",
                )
                .expect("valid counter");
                registry.register(Box::new(c.clone())).expect("unique");
                c
            },
            config_reloads: counter(
                "muster_router_config_reloads_total",
                "Configuration loads by result (ok, error).",
                &["result"],
            ),
            stream_errors: counter(
                "muster_router_stream_errors_total",
                "Responses cut short by an upstream failure after the first byte, by model.",
                &["model"],
            ),
            log_lines_dropped: {
                let c = IntCounter::new(
                    "muster_router_log_lines_dropped_total",
                    "Log lines dropped because the background log writer fell behind.",
                )
                .expect("valid counter");
                registry.register(Box::new(c.clone())).expect("unique");
                c
            },
            pd_decisions: counter(
                "muster_router_pd_decisions_total",
                "PD servers: requests by how they were served (disaggregated, short_suffix, no_prefill_peer).",
                &["server", "decision"],
            ),
            pd_prefill_legs: counter(
                "muster_router_pd_prefill_legs_total",
                "PD servers: prefill legs by outcome.",
                &["server", "outcome"],
            ),
            pd_prefill_queue_wait: histogram(
                "muster_router_pd_prefill_queue_wait_seconds",
                "PD servers: wait for a prefill slot on the chosen decoder (maxPrefillPerDecode).",
                &["server"],
                exponential_buckets(0.0001, 2.0, 18).expect("buckets"),
            ),
            pd_prefill_duration: histogram(
                "muster_router_pd_prefill_duration_seconds",
                "PD servers: prefill leg from send to response (NIXL and HTTP connectors).",
                &["server"],
                exponential_buckets(0.001, 2.0, 19).expect("buckets"),
            ),
            prefill_budget_wait: histogram(
                "muster_router_prefill_budget_wait_seconds",
                "Prefill budget: time a streamed request was held at the router before it was sent (prefill-budget-tokens).",
                &["server"],
                exponential_buckets(0.0001, 2.0, 18).expect("buckets"),
            ),
            prefill_budget_bypassed: counter(
                "muster_router_prefill_budget_bypassed_total",
                "Prefill budget: requests sent after prefill-budget-max-wait without fitting the budget.",
                &["server"],
            ),
            registry,
            plugin_scores: Vec::new(),
            unknown_model: Arc::new(ModelMetrics {
                label: UNKNOWN_MODEL.into(),
                in_flight: IntGauge::new("unused", "unused").expect("gauge"),
                request_duration: Histogram::with_opts(HistogramOpts::new("unused", "unused"))
                    .expect("histogram"),
                time_to_first_token: Histogram::with_opts(HistogramOpts::new("unused", "unused"))
                    .expect("histogram"),
                inter_token_latency: Histogram::with_opts(HistogramOpts::new("unused", "unused"))
                    .expect("histogram"),
                prompt_tokens: IntCounter::new("unused", "unused").expect("counter"),
                completion_tokens: IntCounter::new("unused", "unused").expect("counter"),
                stream_errors: IntCounter::new("unused", "unused").expect("counter"),
            }),
        };
        m.plugin_scores = PluginKind::ALL
            .iter()
            .map(|p| m.plugin_score.with_label_values(&[p.as_str()]))
            .collect();
        m.unknown_model = m.for_model(UNKNOWN_MODEL);
        m
    }

    /// Handles for one model label.
    pub fn for_model(&self, label: &str) -> Arc<ModelMetrics> {
        Arc::new(ModelMetrics {
            label: label.into(),
            in_flight: self.in_flight.with_label_values(&[label]),
            request_duration: self.request_duration.with_label_values(&[label]),
            time_to_first_token: self.time_to_first_token.with_label_values(&[label]),
            inter_token_latency: self.inter_token_latency.with_label_values(&[label]),
            prompt_tokens: self.tokens.with_label_values(&[label, "prompt"]),
            completion_tokens: self.tokens.with_label_values(&[label, "completion"]),
            stream_errors: self.stream_errors.with_label_values(&[label]),
        })
    }

    /// Handles for requests naming no configured model.
    pub fn unknown_model(&self) -> Arc<ModelMetrics> {
        self.unknown_model.clone()
    }

    /// The plugin-score histogram of `plugin`.
    pub fn plugin_score(&self, plugin: PluginKind) -> &Histogram {
        &self.plugin_scores[plugin.index()]
    }

    /// The registry, for metrics defined outside this module (traffic policy).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let dropped = crate::logging::dropped_lines();
        let seen = self.log_lines_dropped.get();
        if dropped > seen {
            self.log_lines_dropped.inc_by(dropped - seen);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
