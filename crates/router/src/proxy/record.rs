//! One request's bookkeeping: metrics and the access-log line, emitted exactly once when the
//! request ends — normally, by error, or because the client went away mid-stream.

use std::sync::Arc;
use std::time::Instant;

use hyper::{Method, Uri};

use super::sse::Usage;
use crate::endpoints::InFlight;
use crate::metrics::{Metrics, ModelMetrics};
use crate::scheduler::PluginKind;

/// Everything the access log and metrics say about one request. Names are shared `Arc<str>`
/// from the routing table, so filling the record allocates next to nothing.
pub struct RequestRecord {
    metrics: Arc<Metrics>,
    model: Arc<ModelMetrics>,
    counted_in_flight: bool,
    access_log: bool,
    start: Instant,
    /// `x-request-id`.
    pub request_id: String,
    /// Method.
    pub method: Method,
    /// Request URI.
    pub uri: Uri,
    /// The model the client asked for (log only).
    pub requested_model: String,
    /// Route `namespace/name`.
    pub route: Option<Arc<str>>,
    /// Rule name.
    pub rule: Option<Arc<str>>,
    /// ModelServer `namespace/name`.
    pub server: Option<Arc<str>>,
    /// Endpoint of the last try (the decoder, on a PD server).
    pub endpoint: Option<Arc<str>>,
    /// PD servers: the prefill endpoint of the last try, when disaggregated.
    pub prefill_endpoint: Option<Arc<str>>,
    /// PD servers: how the request was served (a `pd_decisions` label).
    pub pd: Option<&'static str>,
    /// Session id used for affinity.
    pub session: Option<String>,
    /// Plugin scores of the last decision.
    pub scores: Vec<(PluginKind, f64)>,
    /// Tries sent upstream.
    pub attempts: u32,
    /// Status sent to the client.
    pub status: u16,
    /// First response body byte.
    pub first_byte: Option<Instant>,
    /// First generated token (streaming).
    pub first_token: Option<Instant>,
    /// Last generated token (streaming), for inter-token gaps.
    pub last_token: Option<Instant>,
    /// Usage reported by the engine.
    pub usage: Option<Usage>,
    /// Error text, if the request failed.
    pub error: Option<String>,
    /// The body completed (as opposed to being cut or abandoned).
    pub completed: bool,
    /// Traffic-policy holdings (rate-limit reservation, queue slot), settled on drop.
    pub policy: Option<crate::policy::RequestPolicy>,
    in_flight: Option<InFlight>,
    _admission: Option<super::Admission>,
}

impl RequestRecord {
    /// Starts the record at `start`.
    pub fn new(
        metrics: Arc<Metrics>,
        access_log: bool,
        start: Instant,
        method: Method,
        uri: Uri,
    ) -> Self {
        RequestRecord {
            model: metrics.unknown_model(),
            metrics,
            counted_in_flight: false,
            access_log,
            start,
            request_id: String::new(),
            method,
            uri,
            requested_model: String::new(),
            route: None,
            rule: None,
            server: None,
            endpoint: None,
            prefill_endpoint: None,
            pd: None,
            session: None,
            scores: Vec::new(),
            attempts: 0,
            status: 0,
            first_byte: None,
            first_token: None,
            last_token: None,
            usage: None,
            error: None,
            completed: false,
            policy: None,
            in_flight: None,
            _admission: None,
        }
    }

    /// Counts a response cut short after its first byte.
    pub fn count_stream_error(&self) {
        self.model.stream_errors.inc();
    }

    /// Holds the router-wide admission slot until the record ends.
    pub fn hold_admission(&mut self, admission: super::Admission) {
        self._admission = Some(admission);
    }

    /// Sets the public model's metric handles and counts the request in flight for it.
    pub fn set_model(&mut self, model: Arc<ModelMetrics>) {
        if self.counted_in_flight {
            self.model.in_flight.dec();
        }
        model.in_flight.inc();
        self.counted_in_flight = true;
        self.model = model;
    }

    /// Keeps the endpoint's in-flight count up until the record ends.
    pub fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }

    /// The endpoint currently held, if any.
    pub fn held_endpoint(&self) -> Option<&InFlight> {
        self.in_flight.as_ref()
    }

    /// Notes body bytes or token events arriving at `now`.
    pub fn on_data(&mut self, now: Instant, token_events: u32) {
        if self.first_byte.is_none() {
            self.first_byte = Some(now);
        }
        if token_events == 0 {
            return;
        }
        if let Some(f) = self.in_flight.as_ref() {
            // A token is the end of an engine step, which the prefill budget paces by.
            f.endpoint().prefill_budget.step_seen(now);
        }
        match self.last_token {
            None => {
                self.first_token = Some(now);
                if let Some(f) = self.in_flight.as_mut() {
                    f.prefill_done();
                }
            }
            Some(prev) => self
                .model
                .inter_token_latency
                .observe(now.saturating_duration_since(prev).as_secs_f64()),
        }
        self.last_token = Some(now);
    }
}

fn or_dash(s: &Option<Arc<str>>) -> &str {
    s.as_deref().unwrap_or("-")
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let tenant = self.policy.as_ref().map(|p| p.identity.tenant.clone());
        if let Some(p) = self.policy.take() {
            let usage = self.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
            p.finish(usage, self.status);
        }
        let now = Instant::now();
        let m = &self.model;
        let code = itoa_status(self.status);
        let status = std::str::from_utf8(&code).unwrap_or("0");
        self.metrics
            .requests
            .with_label_values(&[&m.label, or_dash(&self.route), status])
            .inc();
        let elapsed = now.saturating_duration_since(self.start);
        m.request_duration.observe(elapsed.as_secs_f64());
        let ttft = self
            .first_token
            .or(self.first_byte)
            .map(|t| t.saturating_duration_since(self.start));
        if let Some(t) = ttft {
            m.time_to_first_token.observe(t.as_secs_f64());
        }
        if let Some(u) = self.usage {
            m.prompt_tokens.inc_by(u.prompt_tokens);
            m.completion_tokens.inc_by(u.completion_tokens);
        }
        if self.counted_in_flight {
            m.in_flight.dec();
        }
        if self.access_log && crate::access_log::enabled() {
            let mut scores = Vec::with_capacity(64);
            for (k, s) in &self.scores {
                crate::access_log::push_score(&mut scores, k.as_str(), *s);
            }
            let scores = String::from_utf8(scores).unwrap_or_default();
            use crate::access_log::{emit, Field};
            emit(&[
                ("request_id", Field::Str(&self.request_id)),
                ("method", Field::Str(self.method.as_str())),
                ("path", Field::Str(self.uri.path())),
                ("model", Field::Str(&self.requested_model)),
                ("route", Field::Str(or_dash(&self.route))),
                ("rule", Field::Str(or_dash(&self.rule))),
                ("server", Field::Str(or_dash(&self.server))),
                ("endpoint", Field::Str(or_dash(&self.endpoint))),
                (
                    "prefill_endpoint",
                    Field::Str(or_dash(&self.prefill_endpoint)),
                ),
                ("pd", Field::Str(self.pd.unwrap_or("-"))),
                ("session", Field::Str(self.session.as_deref().unwrap_or(""))),
                ("tenant", Field::Str(tenant.as_deref().unwrap_or(""))),
                ("scores", Field::Str(&scores)),
                ("attempts", Field::U64(u64::from(self.attempts))),
                ("status", Field::U64(u64::from(self.status))),
                ("duration_us", Field::U64(elapsed.as_micros() as u64)),
                ("ttft_us", Field::OptU64(ttft.map(|t| t.as_micros() as u64))),
                (
                    "prompt_tokens",
                    Field::OptU64(self.usage.map(|u| u.prompt_tokens)),
                ),
                (
                    "completion_tokens",
                    Field::OptU64(self.usage.map(|u| u.completion_tokens)),
                ),
                ("completed", Field::Bool(self.completed)),
                ("error", Field::Str(self.error.as_deref().unwrap_or(""))),
            ]);
        }
    }
}

/// Three ASCII digits of an HTTP status (0..=999) without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}
