//! Live per-endpoint state: in-flight counters, the last engine metrics sample, and passive
//! outlier ejection. The scheduler never sees this directly; it gets an immutable
//! [`EndpointView`] copied out of it per request.
//!
//! Each endpoint has its own metrics scrape loop, so a slow or dead pod delays only its own
//! sample (it goes stale and is scored conservatively), never anybody else's.

pub mod engine_metrics;
pub mod outlier;
pub mod prefill_budget;
pub mod prefill_gate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use muster_api::networking::InferenceEngine;
use serde::Serialize;

use crate::config::{EndpointSpec, UpstreamProtocol};
use crate::metrics::Metrics;
use crate::prefix::{EndpointPrefix, PrefixMatch, PrefixReport};
use crate::proxy::client::UpstreamClients;
use crate::scheduler::{EndpointView, EngineLoad, LoraLoad};
use outlier::{OutlierPolicy, OutlierState};

/// How engine metrics are collected and judged.
#[derive(Debug, Clone, Copy)]
pub struct ScrapeConfig {
    /// Time between scrapes of one endpoint; `None` disables scraping (tests).
    pub interval: Option<Duration>,
    /// Limit for one scrape.
    pub timeout: Duration,
    /// A sample older than this is stale.
    pub stale_after: Duration,
}

#[derive(Debug, Clone)]
struct Sample {
    load: EngineLoad,
    lora: Option<Arc<LoraLoad>>,
    at: Instant,
}

/// One engine endpoint's live state.
#[derive(Debug)]
pub struct EndpointState {
    /// Pod name.
    pub name: Arc<str>,
    /// Engine address.
    pub address: SocketAddr,
    /// `address` as a URI authority, built once instead of per request.
    pub authority: hyper::http::uri::Authority,
    /// Engine kind (metric names).
    pub engine: InferenceEngine,
    /// HTTP version the engine speaks (also used for scraping).
    pub protocol: UpstreamProtocol,
    in_flight: AtomicU32,
    in_flight_tokens: AtomicU64,
    pending_prefill_tokens: AtomicU64,
    sample: Mutex<Option<Sample>>,
    last_scrape_error: Mutex<Option<String>>,
    outlier: Mutex<OutlierState>,
    /// Prefix indexes (approximate, and precise when the engine publishes KV events).
    pub prefix: EndpointPrefix,
    events_stale_after_ms: AtomicU64,
    /// Prefill legs in flight towards this endpoint as a decoder (PD servers).
    pub prefill_gate: prefill_gate::PrefillGate,
    /// Uncached prompt tokens in prefill here, metered (`prefill-budget-tokens`).
    pub prefill_budget: prefill_budget::PrefillBudget,
}

/// What `/debug/endpoints` shows about one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    /// Pod name.
    pub name: String,
    /// Address.
    pub address: SocketAddr,
    /// Router in-flight requests.
    pub in_flight_requests: u32,
    /// Router in-flight token estimate.
    pub in_flight_tokens: u64,
    /// Last engine sample.
    pub engine_waiting: Option<f64>,
    /// Last engine sample.
    pub engine_running: Option<f64>,
    /// Last engine sample.
    pub engine_kv_cache_usage: Option<f64>,
    /// Age of the last sample in seconds.
    pub metrics_age_seconds: Option<f64>,
    /// Whether the sample is stale.
    pub metrics_stale: bool,
    /// Last scrape error, if the last scrape failed.
    pub last_scrape_error: Option<String>,
    /// Passively ejected now.
    pub ejected: bool,
    /// Current failure streak.
    pub consecutive_failures: u32,
    /// As a PD decoder: prefill legs in flight towards it.
    pub prefill_legs_in_flight: u32,
    /// As a PD decoder: requests waiting for a prefill slot.
    pub prefill_legs_waiting: usize,
    /// Prefill budget: uncached prompt tokens admitted (sent, no first token yet).
    pub prefill_budget_tokens: u64,
    /// Prefill budget: requests held by the router for this endpoint.
    pub prefill_budget_held: usize,
    /// Prefix indexes.
    #[serde(flatten)]
    pub prefix: PrefixReport,
}

impl EndpointState {
    /// A fresh endpoint with no traffic and no sample.
    pub fn new(
        name: &str,
        address: SocketAddr,
        engine: InferenceEngine,
        protocol: UpstreamProtocol,
    ) -> Self {
        EndpointState {
            name: name.into(),
            address,
            authority: address
                .to_string()
                .parse()
                .expect("a socket address is a valid authority"),
            engine,
            protocol,
            in_flight: AtomicU32::new(0),
            in_flight_tokens: AtomicU64::new(0),
            pending_prefill_tokens: AtomicU64::new(0),
            sample: Mutex::new(None),
            last_scrape_error: Mutex::new(None),
            outlier: Mutex::new(OutlierState::default()),
            prefix: EndpointPrefix::new(
                crate::scheduler::profile::PrefixCacheArgs::default().capacity_blocks,
                None,
            ),
            events_stale_after_ms: AtomicU64::new(5000),
            prefill_gate: prefill_gate::PrefillGate::default(),
            prefill_budget: prefill_budget::PrefillBudget::default(),
        }
    }

    /// Like [`EndpointState::new`], with the engine's KV-event address.
    pub fn with_kv_events(mut self, kv_events: Option<String>) -> Self {
        self.prefix = EndpointPrefix::new(
            crate::scheduler::profile::PrefixCacheArgs::default().capacity_blocks,
            kv_events,
        );
        self
    }

    /// The scheduler's view at `now`.
    pub fn view(&self, now: Instant, stale_after: Duration) -> EndpointView<'_> {
        let (engine, lora, at) = match &*self.sample.lock().expect("sample lock") {
            Some(s) => (Some(s.load), s.lora.clone(), Some(s.at)),
            None => (None, None, None),
        };
        EndpointView {
            name: &self.name,
            in_flight_requests: self.in_flight.load(Ordering::Relaxed),
            in_flight_tokens: self.in_flight_tokens.load(Ordering::Relaxed),
            pending_prefill_tokens: self.pending_prefill_tokens.load(Ordering::Relaxed),
            engine,
            engine_fresh: at.is_some_and(|at| now.saturating_duration_since(at) <= stale_after),
            ejected: self.outlier.lock().expect("outlier lock").is_ejected(now),
            prefix: PrefixMatch::default(),
            lora,
        }
    }

    /// Counts a request (its token estimate, and the uncached prompt tokens it will make the
    /// engine compute) in flight until the guard drops; the prefill part until the first token.
    pub fn begin(self: &Arc<Self>, tokens: u64, prefill_tokens: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_tokens.fetch_add(tokens, Ordering::Relaxed);
        self.pending_prefill_tokens
            .fetch_add(prefill_tokens, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            tokens,
            prefill_tokens,
            budget: None,
        }
    }

    /// Stores a metrics sample taken at `at`.
    pub fn set_sample(&self, load: EngineLoad, at: Instant) {
        self.set_sample_with_lora(load, None, at);
    }

    /// Stores a metrics sample with the engine's LoRA adapters.
    pub fn set_sample_with_lora(&self, load: EngineLoad, lora: Option<LoraLoad>, at: Instant) {
        *self.sample.lock().expect("sample lock") = Some(Sample {
            load,
            lora: lora.map(Arc::new),
            at,
        });
        *self.last_scrape_error.lock().expect("error lock") = None;
    }

    fn set_scrape_error(&self, error: String) {
        *self.last_scrape_error.lock().expect("error lock") = Some(error);
    }

    fn prefix_stale_after(&self) -> Duration {
        Duration::from_millis(self.events_stale_after_ms.load(Ordering::Relaxed))
    }

    /// Sets the profile-dependent prefix settings (index capacity, event staleness).
    pub fn configure_prefix(&self, capacity_blocks: usize, events_stale_after: Duration) {
        self.prefix.set_capacity(capacity_blocks);
        self.events_stale_after_ms
            .store(events_stale_after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records a good upstream answer.
    pub fn record_success(&self) {
        self.outlier.lock().expect("outlier lock").record_success();
    }

    /// Records a failed try; returns the ejection length when it ejects the endpoint.
    pub fn record_failure(&self, now: Instant, policy: &OutlierPolicy) -> Option<Duration> {
        self.outlier
            .lock()
            .expect("outlier lock")
            .record_failure(now, policy)
    }

    /// Debug report at `now`.
    pub fn report(&self, now: Instant, stale_after: Duration) -> EndpointReport {
        let sample = self.sample.lock().expect("sample lock").clone();
        let outlier = self.outlier.lock().expect("outlier lock").clone();
        let age = sample.as_ref().map(|s| now.saturating_duration_since(s.at));
        let (prefill_legs_in_flight, prefill_legs_waiting) = self.prefill_gate.load();
        let (prefill_budget_tokens, prefill_budget_held) = self.prefill_budget.load();
        EndpointReport {
            name: self.name.to_string(),
            address: self.address,
            in_flight_requests: self.in_flight.load(Ordering::Relaxed),
            in_flight_tokens: self.in_flight_tokens.load(Ordering::Relaxed),
            engine_waiting: sample.as_ref().map(|s| s.load.waiting),
            engine_running: sample.as_ref().map(|s| s.load.running),
            engine_kv_cache_usage: sample.as_ref().map(|s| s.load.kv_cache_usage),
            metrics_age_seconds: age.map(|a| a.as_secs_f64()),
            metrics_stale: age.is_none_or(|a| a > stale_after),
            last_scrape_error: self.last_scrape_error.lock().expect("error lock").clone(),
            ejected: outlier.is_ejected(now),
            consecutive_failures: outlier.consecutive_failures(),
            prefill_legs_in_flight,
            prefill_legs_waiting,
            prefill_budget_tokens,
            prefill_budget_held,
            prefix: self.prefix.report(now, self.prefix_stale_after()),
        }
    }
}

/// A request counted against an endpoint; uncounted on drop, whatever path the request took.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
    tokens: u64,
    prefill_tokens: u64,
    budget: Option<prefill_budget::BudgetPermit>,
}

impl InFlight {
    /// Holds the request's prefill budget until its prefill is done.
    pub fn hold_budget(&mut self, permit: prefill_budget::BudgetPermit) {
        self.budget = Some(permit);
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }

    /// The engine produced the first token: the prompt is computed, so it no longer counts
    /// as prefill work queued ahead of other requests.
    pub fn prefill_done(&mut self) {
        self.budget = None;
        let t = std::mem::take(&mut self.prefill_tokens);
        self.endpoint
            .pending_prefill_tokens
            .fetch_sub(t, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.prefill_done();
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.endpoint
            .in_flight_tokens
            .fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

/// Address, name, protocol and KV-event address: a change of any is a new endpoint.
type EndpointKey = (SocketAddr, String, UpstreamProtocol, Option<String>);

/// All endpoints the current configuration references, shared across configuration reloads so
/// in-flight counts, samples and ejections survive them.
pub struct EndpointRegistry {
    map: Mutex<HashMap<EndpointKey, Weak<EndpointState>>>,
    scrape: ScrapeConfig,
    clients: UpstreamClients,
    metrics: Arc<Metrics>,
}

impl EndpointRegistry {
    /// An empty registry.
    pub fn new(scrape: ScrapeConfig, clients: UpstreamClients, metrics: Arc<Metrics>) -> Self {
        EndpointRegistry {
            map: Mutex::new(HashMap::new()),
            scrape,
            clients,
            metrics,
        }
    }

    /// The scrape settings.
    pub fn scrape_config(&self) -> ScrapeConfig {
        self.scrape
    }

    /// The live state of `spec`, created (with its scrape loop) on first use. The state lives
    /// while a routing table references it; its scrape loop ends soon after.
    pub fn get_or_create(
        &self,
        spec: &EndpointSpec,
        engine: InferenceEngine,
        protocol: UpstreamProtocol,
    ) -> Arc<EndpointState> {
        let mut map = self.map.lock().expect("registry lock");
        let key = (
            spec.address,
            spec.name.clone(),
            protocol,
            spec.kv_events.clone(),
        );
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let state = Arc::new(
            EndpointState::new(&spec.name, spec.address, engine, protocol)
                .with_kv_events(spec.kv_events.clone()),
        );
        if let Some(address) = &spec.kv_events {
            tokio::spawn(crate::prefix::kv_events::subscribe(
                Arc::downgrade(&state),
                address.clone(),
            ));
        }
        if let Some(interval) = self.scrape.interval {
            tokio::spawn(scrape_loop(
                Arc::downgrade(&state),
                self.clients.clone(),
                interval,
                self.scrape.timeout,
                self.metrics.clone(),
            ));
        }
        map.insert(key, Arc::downgrade(&state));
        map.retain(|_, w| w.strong_count() > 0);
        state
    }
}

async fn scrape_once(
    clients: &UpstreamClients,
    address: SocketAddr,
    protocol: UpstreamProtocol,
    timeout: Duration,
) -> Result<String, String> {
    let uri: hyper::Uri = format!("http://{address}/metrics")
        .parse()
        .map_err(|e| format!("bad uri: {e}"))?;
    let req = hyper::Request::get(uri)
        .body(Bytes::new())
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let resp = clients
            .get(protocol)
            .request(req)
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("/metrics answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), 8 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "metrics are not UTF-8".to_string())
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn scrape_loop(
    endpoint: Weak<EndpointState>,
    clients: UpstreamClients,
    interval: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
) {
    // Spread the first scrape so endpoints created together do not scrape in lockstep.
    let jitter = interval.mul_f64(fastrand::f64());
    tokio::time::sleep(jitter).await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Hold no strong reference across the await, so removal frees the endpoint at once.
        let Some((address, engine, protocol)) = endpoint
            .upgrade()
            .map(|e| (e.address, e.engine, e.protocol))
        else {
            return;
        };
        let result = scrape_once(&clients, address, protocol, timeout).await;
        let Some(state) = endpoint.upgrade() else {
            return;
        };
        match result.and_then(|text| {
            engine_metrics::parse_engine_load(&text, engine)
                .map(|load| (load, engine_metrics::parse_lora(&text)))
                .ok_or_else(|| "no known engine gauges in /metrics".to_string())
        }) {
            Ok((load, lora)) => state.set_sample_with_lora(load, lora, Instant::now()),
            Err(e) => {
                metrics.scrape_errors.inc();
                state.set_scrape_error(e);
            }
        }
    }
}
