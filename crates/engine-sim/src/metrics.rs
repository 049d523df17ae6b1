//! Prometheus metrics under vLLM's or SGLang's names, so scrapers and routers written for the
//! real engines read the simulator unchanged.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use std::sync::Mutex;

use crate::scheduler::{CoreCounters, CoreSnapshot};

/// Which engine the simulator impersonates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// vLLM metric names (`vllm:*`).
    Vllm,
    /// SGLang metric names (`sglang:*`).
    Sglang,
}

// Bucket boundaries as vLLM defines them, so histogram quantiles compare one to one.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// Static facts shown in the `*cache_config_info` metric.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the cache.
    pub num_gpu_blocks: usize,
}

/// All metrics of one engine.
pub struct EngineMetrics {
    kind: EngineKind,
    registry: Registry,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    preemptions: IntCounter,
    cache_hit_rate: Option<Gauge>,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue_time: Histogram,
    success: IntCounterVec,
    lora_info: Option<GaugeVec>,
    max_loras: usize,
    last: Mutex<CoreCounters>,
}

impl std::fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineMetrics")
            .field("kind", &self.kind)
            .finish()
    }
}

impl EngineMetrics {
    /// Registers every metric for `model_name`.
    pub fn new(kind: EngineKind, model_name: &str, cache: &CacheConfig, max_loras: usize) -> Self {
        let registry = Registry::new();
        let (p, labels): (&str, Vec<(&str, &str)>) = match kind {
            // vLLM V1 labels every series with the model and the engine index.
            EngineKind::Vllm => ("vllm", vec![("model_name", model_name), ("engine", "0")]),
            EngineKind::Sglang => ("sglang", vec![("model_name", model_name)]),
        };
        let opts = |name: &str, help: &str| {
            let mut o = Opts::new(format!("{p}:{name}"), help);
            for (k, v) in &labels {
                o = o.const_label(*k, *v);
            }
            o
        };
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            let mut o = HistogramOpts::new(format!("{p}:{name}"), help).buckets(buckets.to_vec());
            for (k, v) in &labels {
                o = o.const_label(*k, *v);
            }
            let h = Histogram::with_opts(o).expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = Gauge::with_opts(opts(name, help)).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(opts(name, help)).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let (running, waiting, kv_usage) = match kind {
            EngineKind::Vllm => (
                gauge(
                    "num_requests_running",
                    "Number of requests in model execution batches.",
                ),
                gauge(
                    "num_requests_waiting",
                    "Number of requests waiting to be processed.",
                ),
                gauge(
                    "kv_cache_usage_perc",
                    "KV-cache usage. 1 means 100 percent usage.",
                ),
            ),
            EngineKind::Sglang => (
                gauge("num_running_reqs", "The number of running requests."),
                gauge(
                    "num_queue_reqs",
                    "The number of requests in the waiting queue.",
                ),
                gauge("token_usage", "The token usage of the KV cache (0-1)."),
            ),
        };
        let (prefix_queries, prefix_hits) = match kind {
            EngineKind::Vllm => (
                counter(
                    "prefix_cache_queries_total",
                    "Prefix cache queries, in terms of number of queried tokens.",
                ),
                counter(
                    "prefix_cache_hits_total",
                    "Prefix cache hits, in terms of number of cached tokens.",
                ),
            ),
            EngineKind::Sglang => (
                counter(
                    "prefix_queried_tokens_total",
                    "Prompt tokens looked up in the radix cache.",
                ),
                counter(
                    "cached_tokens_total",
                    "Prompt tokens served from the radix cache.",
                ),
            ),
        };
        let cache_hit_rate = (kind == EngineKind::Sglang)
            .then(|| gauge("cache_hit_rate", "The prefix cache hit rate (0-1)."));
        let prompt_tokens = counter("prompt_tokens_total", "Number of prefill tokens processed.");
        let generation_tokens = counter(
            "generation_tokens_total",
            "Number of generation tokens processed.",
        );
        let preemptions = counter(
            match kind {
                EngineKind::Vllm => "num_preemptions_total",
                EngineKind::Sglang => "num_retracted_reqs_total",
            },
            "Cumulative number of preemptions from the engine.",
        );
        let ttft = hist(
            "time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        );
        let itl = hist(
            "inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        );
        let e2e = hist(
            "e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            REQUEST_BUCKETS,
        );
        let queue_time = hist(
            "request_queue_time_seconds",
            "Histogram of time spent in the waiting queue in seconds.",
            REQUEST_BUCKETS,
        );
        let success = IntCounterVec::new(
            opts(
                match kind {
                    EngineKind::Vllm => "request_success_total",
                    EngineKind::Sglang => "num_requests_total",
                },
                "Count of successfully processed requests.",
            ),
            &["finished_reason"],
        )
        .expect("valid counter vec");
        registry
            .register(Box::new(success.clone()))
            .expect("unique");
        let info = GaugeVec::new(
            opts(
                "cache_config_info",
                "Information of the KV cache configuration.",
            ),
            &["block_size", "num_gpu_blocks"],
        )
        .expect("valid gauge vec");
        registry.register(Box::new(info.clone())).expect("unique");
        info.with_label_values(&[
            cache.block_size.to_string(),
            cache.num_gpu_blocks.to_string(),
        ])
        .set(1.0);
        let lora_info = (kind == EngineKind::Vllm).then(|| {
            let g = GaugeVec::new(
                Opts::new("vllm:lora_requests_info", "Running stats on lora requests."),
                &["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            )
            .expect("valid gauge vec");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        });
        Self {
            kind,
            registry,
            running,
            waiting,
            kv_usage,
            prefix_queries,
            prefix_hits,
            prompt_tokens,
            generation_tokens,
            preemptions,
            cache_hit_rate,
            ttft,
            itl,
            e2e,
            queue_time,
            success,
            lora_info,
            max_loras,
            last: Mutex::new(CoreCounters::default()),
        }
    }

    /// Records a first token.
    pub fn observe_ttft(&self, seconds: f64) {
        self.ttft.observe(seconds);
    }

    /// Records the gap between two tokens.
    pub fn observe_itl(&self, seconds: f64) {
        self.itl.observe(seconds);
    }

    /// Records a finished request.
    pub fn observe_finished(&self, reason: &str, e2e: f64, queue_time: f64) {
        self.e2e.observe(e2e);
        self.queue_time.observe(queue_time);
        self.success.with_label_values(&[reason]).inc();
    }

    /// Renders the text exposition after bringing gauges and counters up to `snap`.
    pub fn render(&self, snap: &CoreSnapshot, now_unix: f64) -> String {
        self.running.set(snap.running as f64);
        self.waiting.set(snap.waiting as f64);
        self.kv_usage.set(snap.kv_usage);
        {
            let mut last = self.last.lock().expect("metrics lock");
            let c = snap.counters;
            self.prefix_queries
                .inc_by(c.prefix_queries.saturating_sub(last.prefix_queries));
            self.prefix_hits
                .inc_by(c.prefix_hits.saturating_sub(last.prefix_hits));
            self.prompt_tokens
                .inc_by(c.prompt_tokens.saturating_sub(last.prompt_tokens));
            self.generation_tokens
                .inc_by(c.generation_tokens.saturating_sub(last.generation_tokens));
            self.preemptions
                .inc_by(c.preemptions.saturating_sub(last.preemptions));
            *last = c;
            if let Some(g) = &self.cache_hit_rate {
                g.set(if c.prefix_queries == 0 {
                    0.0
                } else {
                    c.prefix_hits as f64 / c.prefix_queries as f64
                });
            }
        }
        if let Some(g) = &self.lora_info {
            // One series whose labels describe the current adapters; the value is a timestamp,
            // which is how vLLM lets scrapers pick the newest series.
            g.reset();
            g.with_label_values(&[
                self.max_loras.to_string(),
                snap.running_loras.join(","),
                snap.waiting_loras.join(","),
            ])
            .set(now_unix);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_names_and_labels() {
        let m = EngineMetrics::new(
            EngineKind::Vllm,
            "m",
            &CacheConfig {
                block_size: 16,
                num_gpu_blocks: 100,
            },
            4,
        );
        m.observe_ttft(0.05);
        let snap = CoreSnapshot {
            running: 3,
            running_loras: vec!["a".into()],
            ..Default::default()
        };
        let text = m.render(&snap, 1.0);
        assert!(text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3"));
        assert!(text
            .contains("vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"m\"} 1"));
        assert!(text.contains("vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"a\",waiting_lora_adapters=\"\"} 1"));
        assert!(text.contains("num_gpu_blocks=\"100\""));
    }

    #[test]
    fn sglang_names() {
        let m = EngineMetrics::new(
            EngineKind::Sglang,
            "m",
            &CacheConfig {
                block_size: 16,
                num_gpu_blocks: 100,
            },
            4,
        );
        let text = m.render(&CoreSnapshot::default(), 1.0);
        assert!(text.contains("sglang:num_queue_reqs{model_name=\"m\"} 0"));
        assert!(text.contains("sglang:token_usage"));
        assert!(!text.contains("vllm:"));
    }
}
