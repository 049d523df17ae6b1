//! The request pipeline: admit → read and inspect the body → resolve route and server →
//! schedule → forward (retrying only before any byte went to the client) → relay.

pub mod body;
pub mod client;
pub mod h1;
mod json_scan;
pub mod pd;
pub mod pool;
mod record;
pub mod request;
pub mod sse;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};

use crate::config::matching::RequestFacts;
use crate::config::pd::{PdConnector, PdSettings};
use crate::config::table::{ResolveError, RoundRobinPositions, RoutingTable, ServerRuntime};
use crate::config::CompiledConfig;
use crate::endpoints::outlier::OutlierPolicy;
use crate::endpoints::prefill_budget;
use crate::endpoints::EndpointRegistry;
use crate::endpoints::EndpointState;
use crate::errors::ApiError;
use crate::metrics::Metrics;
use crate::policy::identity::Identity;
use crate::policy::metrics::PolicyMetrics;
use crate::policy::{weighted_tokens, RequestPolicy, TrafficPolicy};
use crate::scheduler::pd::{schedule_pd, PdDecision, PdRequest};
use crate::scheduler::{schedule, Decision, PluginKind, ScheduleRequest};
use crate::sessions::SessionLog;
use body::{RelayMode, RouterBody};
use client::UpstreamClients;
use record::RequestRecord;
use request::ApiKind;

/// Request id header, set when the client sent none and passed to the engine.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Time allowed to receive the request body (408 after).
    pub body_read_timeout: Duration,
    /// A response that sends nothing for this long is cut with an error.
    pub stream_idle_timeout: Duration,
    /// Passive ejection.
    pub outlier: OutlierPolicy,
    /// Router-wide concurrent request limit (429 above); 0 means none.
    pub max_in_flight: usize,
    /// TCP connect timeout to engines.
    pub connect_timeout: Duration,
    /// Idle connections kept per engine (per worker thread).
    pub max_idle_per_endpoint: usize,
    /// Emit one access-log line per request.
    pub access_log: bool,
    /// Tokenizers for prefix-aware scheduling (`--tokenizer`).
    pub tokenizers: Arc<crate::prefix::tokenize::Tokenizers>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_body_bytes: 16 << 20,
            body_read_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(300),
            outlier: OutlierPolicy::default(),
            max_in_flight: 0,
            connect_timeout: Duration::from_secs(2),
            max_idle_per_endpoint: 1024,
            access_log: true,
            tokenizers: Arc::default(),
        }
    }
}

/// State shared by every request.
pub struct AppState {
    table: RwLock<Arc<RoutingTable>>,
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    positions: RoundRobinPositions,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live endpoint state.
    pub registry: Arc<EndpointRegistry>,
    /// Settings.
    pub config: ProxyConfig,
    /// Recent sessions (debug).
    pub sessions: SessionLog,
    /// Tokenizers and prefix metrics for cache-aware scheduling.
    pub prefix: crate::prefix::runtime::PrefixRuntime,
    /// Authentication, token rate limits and fair queuing.
    pub policy: Arc<TrafficPolicy>,
}

/// A router-wide concurrency slot, released on drop.
pub struct Admission(Arc<AppState>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AppState {
    /// Shared state with an empty table (not ready until the first publish) and no
    /// authentication or queuing.
    pub fn new(
        config: ProxyConfig,
        metrics: Arc<Metrics>,
        registry: Arc<EndpointRegistry>,
    ) -> Self {
        let policy = TrafficPolicy::disabled(PolicyMetrics::register(metrics.registry()));
        Self::with_policy(config, metrics, registry, Arc::new(policy))
    }

    /// Shared state with a traffic policy (whose metrics are in `metrics`' registry).
    pub fn with_policy(
        config: ProxyConfig,
        metrics: Arc<Metrics>,
        registry: Arc<EndpointRegistry>,
        policy: Arc<TrafficPolicy>,
    ) -> Self {
        let prefix = crate::prefix::runtime::PrefixRuntime::new(
            config.tokenizers.clone(),
            metrics.registry(),
        );
        AppState {
            table: RwLock::new(Arc::new(RoutingTable::default())),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            positions: RoundRobinPositions::default(),
            metrics,
            registry,
            config,
            sessions: SessionLog::default(),
            prefix,
            policy,
        }
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.read().expect("table lock").clone()
    }

    /// Installs a new configuration and marks the router ready.
    pub fn publish(&self, compiled: CompiledConfig) {
        let table = RoutingTable::build(
            compiled,
            &self.registry,
            &self.positions,
            &self.metrics,
            &self.config.tokenizers,
        );
        *self.table.write().expect("table lock") = Arc::new(table);
        self.ready.store(true, Ordering::Release);
    }

    /// Ready: configuration loaded and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.policy.auth.keys_loaded()
            && !self.draining.load(Ordering::Acquire)
    }

    /// Starts draining: readiness fails so load balancers stop sending.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// This thread's upstream clients. Each worker thread keeps its own connection pools, so
    /// a request and the upstream connection serving it stay on one thread (no cross-thread
    /// wake-ups on the hot path).
    fn clients(&self) -> UpstreamClients {
        thread_local! {
            static CLIENTS: std::cell::OnceCell<UpstreamClients> = const { std::cell::OnceCell::new() };
        }
        CLIENTS.with(|c| {
            c.get_or_init(|| {
                UpstreamClients::new(
                    self.config.connect_timeout,
                    self.config.max_idle_per_endpoint,
                )
            })
            .clone()
        })
    }

    /// Requests currently being handled.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn admit(self: &Arc<Self>) -> Result<Admission, ApiError> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let admission = Admission(self.clone());
        if self.config.max_in_flight > 0 && n >= self.config.max_in_flight {
            return Err(ApiError::overloaded(self.config.max_in_flight));
        }
        Ok(admission)
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<RouterBody> {
    let mut r = Response::new(RouterBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text_response(status: StatusCode, text: &'static str) -> Response<RouterBody> {
    let mut r = Response::new(RouterBody::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

/// Handles one request on the public port. Never fails: every problem becomes a response.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<RouterBody> {
    let path = req.uri().path();
    let kind = match path {
        "/healthz" => return text_response(StatusCode::OK, "ok\n"),
        "/readyz" => {
            return if state.is_ready() {
                text_response(StatusCode::OK, "ready\n")
            } else {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/v1/models" | "/v1/models/" => {
            return if req.method() == Method::GET {
                match state.policy.authenticate(req.headers()).await {
                    Ok(who) => list_models(&state, &who),
                    Err(e) => e.into_response(),
                }
            } else {
                ApiError::method_not_allowed(req.method().as_str(), path).into_response()
            }
        }
        "/v1/chat/completions" => ApiKind::Chat,
        "/v1/completions" => ApiKind::Completions,
        p if p.starts_with("/v1/") && req.method() == Method::POST => ApiKind::Other,
        _ => return ApiError::unknown_path(req.method().as_str(), path).into_response(),
    };
    if req.method() != Method::POST {
        return ApiError::method_not_allowed(req.method().as_str(), path).into_response();
    }
    proxy(state, req, kind).await
}

fn list_models(state: &AppState, who: &Identity) -> Response<RouterBody> {
    let table = state.table();
    let data: Vec<serde_json::Value> = table
        .config
        .models
        .iter()
        .filter(|m| who.may_use(m))
        .map(
            |m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "muster"}),
        )
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).expect("json"),
    )
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and `host`, which the proxy sets itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    match tokio::time::timeout(
        state.config.body_read_timeout,
        Limited::new(body, limit).collect(),
    )
    .await
    {
        Err(_) => Err(ApiError::request_timeout()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(limit)),
        Ok(Err(e)) => Err(ApiError::bad_request(
            format!("Could not read the request body: {e}."),
            None,
        )),
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)))
}

/// Fails the request with `error`, noting it in the record.
fn reject(mut record: RequestRecord, error: ApiError) -> Response<RouterBody> {
    record.status = error.status.as_u16();
    record.error = Some(error.message.clone());
    record.completed = true;
    let mut resp = error.into_response();
    if let Ok(v) = HeaderValue::from_str(&record.request_id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// [`reject`] with extra headers (`retry-after`, `x-ratelimit-*`).
fn reject_with(
    record: RequestRecord,
    error: ApiError,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Response<RouterBody> {
    let mut resp = reject(record, error);
    for (name, value) in headers {
        resp.headers_mut().insert(name, value);
    }
    resp
}

/// Time spent in a fair queue, on responses of servers that queue.
const X_QUEUE_WAIT: HeaderName = HeaderName::from_static("x-muster-queue-wait-ms");
/// The endpoint that answered (the decoder, on a PD server).
const X_ENDPOINT: HeaderName = HeaderName::from_static("x-muster-endpoint");
/// PD servers: the endpoint that computed the prompt, when the request was disaggregated.
const X_PREFILL_ENDPOINT: HeaderName = HeaderName::from_static("x-muster-prefill-endpoint");

/// One try's placement.
struct Routed {
    /// The endpoint that answers (a decoder on PD servers).
    decision: Decision,
    /// Prompt blocks it caches (0 when it only decodes a transferred prompt).
    cached_blocks: u32,
    /// PD: the prefill endpoint and the blocks it caches.
    prefill: Option<(Decision, u32)>,
    /// PD: how the request is served.
    pd: Option<&'static str>,
}

/// The engine's own 4xx answer to a prefill leg, passed to the client unchanged.
fn refused(mut record: RequestRecord, status: StatusCode, body: Bytes) -> Response<RouterBody> {
    record.status = status.as_u16();
    record.error = Some(String::from_utf8_lossy(&body).into_owned());
    record.completed = true;
    json_response(status, body.to_vec())
}

enum TryOutcome {
    ConnectError,
    Reset,
    Status5xx,
    Status429,
    Timeout,
}

impl TryOutcome {
    fn label(&self) -> &'static str {
        match self {
            TryOutcome::ConnectError => "connect_error",
            TryOutcome::Reset => "reset",
            TryOutcome::Status5xx => "status_5xx",
            TryOutcome::Status429 => "status_429",
            TryOutcome::Timeout => "timeout",
        }
    }
}

async fn proxy(
    state: Arc<AppState>,
    req: Request<Incoming>,
    kind: ApiKind,
) -> Response<RouterBody> {
    let start = Instant::now();
    let mut record = RequestRecord::new(
        state.metrics.clone(),
        state.config.access_log,
        start,
        req.method().clone(),
        req.uri().clone(),
    );
    record.request_id = request_id(req.headers());
    if !state.is_ready() {
        return reject(
            record,
            ApiError::not_ready(
                "The router has not loaded its configuration (or API keys) yet, or is shutting down.",
            ),
        );
    }
    let identity = match state.policy.authenticate(req.headers()).await {
        Ok(who) => who,
        Err(e) => return reject(record, e),
    };
    match state.admit() {
        Ok(a) => record.hold_admission(a),
        Err(e) => return reject(record, e),
    }

    let (parts, body) = req.into_parts();
    let body = match read_body(&state, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => return reject(record, e),
    };
    let inspected = match request::inspect(&body) {
        Ok(i) => i,
        Err(e) => return reject(record, e),
    };
    record.requested_model = inspected.model.clone();
    if let Err(e) = state.policy.authorize_model(&identity, &inspected.model) {
        return reject(record, e);
    }

    let table = state.table();
    let model_metrics = table.model_metrics.get(&inspected.model).cloned();
    let set_model = |record: &mut RequestRecord| {
        if let Some(m) = &model_metrics {
            record.set_model(m.clone());
        }
    };
    let facts = RequestFacts {
        headers: &parts.headers,
        path: parts.uri.path(),
        model: &inspected.model,
    };
    let resolved = match table.resolve(&facts, fastrand::u64(..)) {
        Ok(r) => r,
        Err(ResolveError::UnknownModel) => {
            return reject(record, ApiError::model_not_found(&inspected.model))
        }
        Err(ResolveError::NoRuleMatched) => {
            set_model(&mut record);
            return reject(record, ApiError::no_rule_matched(&inspected.model));
        }
        Err(ResolveError::ServerMissing(key)) => {
            set_model(&mut record);
            return reject(
                record,
                ApiError::unavailable(format!(
                    "The route for `{}` targets ModelServer {key}, which does not exist.",
                    inspected.model
                )),
            );
        }
    };
    set_model(&mut record);
    record.route = Some(resolved.route.label.clone());
    let rate_limit = resolved.route.rate_limit.clone();
    let limit_model = resolved.route.model_name.clone();
    record.rule = Some(resolved.rule.name.clone());
    let server: Arc<ServerRuntime> = resolved.server.clone();
    let lora = resolved.lora;
    let route_model = resolved.route.model_name.clone();
    let compiled = server.compiled.clone();
    let server_label = compiled.label.clone();
    record.server = Some(server_label.clone());
    if server.endpoints.is_empty() {
        return reject(
            record,
            ApiError::unavailable(format!(
                "ModelServer {} has no Ready endpoints.",
                compiled.key
            )),
        );
    }

    let profile = compiled.profile.clone();
    let session = if profile.weight(PluginKind::SessionAffinity) > 0.0 {
        request::session_id(&parts.headers, &inspected.object, &profile.session_affinity)
    } else {
        None
    };
    record.session = session.clone();
    let inject_usage = matches!(kind, ApiKind::Chat | ApiKind::Completions)
        && inspected.stream
        && !inspected.client_wants_usage;
    let rewrite_to = if lora {
        None
    } else {
        compiled.model_rewrite.as_deref()
    };
    let upstream_body =
        request::rewrite(&inspected, &body, rewrite_to, inject_usage).unwrap_or(body);
    let token_estimate = upstream_body.len() as u64 / 4 + inspected.max_tokens.unwrap_or(256);
    let prompt_estimate = upstream_body.len() as u64 / 4;
    let output_reserve = inspected
        .max_tokens
        .unwrap_or(state.policy.limits.config().default_max_tokens);
    // Cache-aware scheduling: the prompt's chained block hashes, as the engine will hash them
    // (its served model name, the LoRA adapter, the cache salt).
    let prefix_blocks = {
        let (hash_model, adapter) = if lora {
            let base = compiled.model_rewrite.as_deref().unwrap_or(&route_model);
            (base, Some(inspected.model.as_str()))
        } else {
            (rewrite_to.unwrap_or(&inspected.model), None)
        };
        state.prefix.request_blocks(
            &server,
            &profile,
            kind,
            &inspected.object,
            hash_model,
            adapter,
        )
    };
    let lora_adapter = lora.then(|| inspected.model.clone());
    let output_budget = inspected.max_tokens.unwrap_or(256);
    let streamed = inspected.stream;
    // PD servers pair generation requests; both legs are built from the edited body.
    let pd_settings: Option<&PdSettings> = compiled
        .pd
        .as_ref()
        .filter(|_| matches!(kind, ApiKind::Chat | ApiKind::Completions));
    let pd_base = pd_settings.map(|_| request::edited_object(&inspected, rewrite_to, inject_usage));
    let prompt_tokens = prefix_blocks
        .as_ref()
        .map_or(prompt_estimate, |b| b.prompt_tokens);
    // Rate limits charge the prompt and reserve `max_tokens` of output up front; the record
    // reconciles both with the engine's usage when the response ends. The prompt is counted
    // by the model's tokenizer when there is one (exact), else estimated from its bytes.
    let prompt_charge = match &prefix_blocks {
        Some(b) => b.prompt_tokens,
        None if rate_limit.is_some() || state.policy.queues.enabled() => state
            .prefix
            .prompt_tokens(&server, kind, &inspected.object)
            .unwrap_or(prompt_estimate),
        None => prompt_estimate,
    };
    drop(inspected);
    record.policy = Some(RequestPolicy::new(identity.clone()));
    let mut limit_headers = Vec::new();
    if let Some(limit) = &rate_limit {
        match state
            .policy
            .limits
            .admit(
                &limit_model,
                limit,
                &identity,
                prompt_charge,
                output_reserve,
            )
            .await
        {
            Ok(Some(reservation)) => {
                limit_headers = reservation.headers.clone();
                if let Some(p) = record.policy.as_mut() {
                    p.reservation = Some(reservation);
                }
            }
            Ok(None) => {}
            Err(refusal) => return reject_with(record, refusal.error, refusal.headers),
        }
    }
    let queue_wait = if state.policy.queues.enabled() {
        let cost = weighted_tokens(prompt_charge, output_reserve);
        match state
            .policy
            .queues
            .acquire(&server_label, server.endpoints.len(), &identity, cost)
            .await
        {
            Ok(acquired) => {
                if let Some(p) = record.policy.as_mut() {
                    p.slot = acquired.slot;
                    p.charged = Some((state.policy.queues.attained().clone(), cost));
                }
                Some(acquired.waited)
            }
            Err(e) => {
                let retry = vec![(header::RETRY_AFTER, HeaderValue::from_static("1"))];
                return reject_with(record, e, retry);
            }
        }
    } else {
        None
    };

    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    // Headers for the engine, built once and cloned per try.
    let mut upstream_headers = HeaderMap::with_capacity(parts.headers.len() + 3);
    for (name, value) in parts.headers.iter() {
        if !is_hop_by_hop(name) {
            upstream_headers.append(name.clone(), value.clone());
        }
    }
    if state.policy.auth.enabled() {
        // The router's own key is not the engine's.
        upstream_headers.remove(header::AUTHORIZATION);
    }
    upstream_headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(upstream_body.len()),
    );
    if let Ok(v) = HeaderValue::from_str(&record.request_id) {
        upstream_headers.insert(X_REQUEST_ID, v);
    }
    let client = state.clients().get(compiled.upstream).clone();
    let policy = compiled.policy;
    let stale_after = state.registry.scrape_config().stale_after;
    let mut tried: Vec<usize> = Vec::new();
    let mut prefill_tried: Vec<usize> = Vec::new();
    let mut last_error = String::new();

    for attempt in 0..=policy.attempts {
        if attempt > 0 && !policy.interval.is_zero() {
            tokio::time::sleep(policy.interval).await;
        }
        let sched_start = Instant::now();
        let precise = profile.weight(PluginKind::KvEvents) > 0.0;
        let routed = {
            let blocks = prefix_blocks.as_ref();
            let views: Vec<_> = server
                .endpoints
                .iter()
                .map(|e| endpoint_view(&state, e, blocks, &profile, sched_start, stale_after))
                .collect();
            let request = ScheduleRequest {
                session: session.as_deref(),
                exclude: &tried,
                random_seed: fastrand::u64(..),
                round_robin: server.round_robin.fetch_add(1, Ordering::Relaxed),
                prefix: prefix_blocks.as_ref().map(|b| b.schedule_input()),
                lora: lora_adapter.as_deref(),
            };
            match pd_settings {
                None => schedule(&views, &profile, &request).map(|d| Routed {
                    cached_blocks: views[d.index].prefix.effective(precise),
                    decision: d,
                    prefill: None,
                    pd: None,
                }),
                Some(pd) => {
                    let prefill_views: Vec<_> = server
                        .prefill
                        .iter()
                        .map(|e| {
                            endpoint_view(&state, e, blocks, &profile, sched_start, stale_after)
                        })
                        .collect();
                    let dg = pd_groups(&compiled.endpoints);
                    let pg = pd_groups(&compiled.prefill_endpoints);
                    let dn = nodes(&compiled.endpoints);
                    let pn = nodes(&compiled.prefill_endpoints);
                    schedule_pd(
                        &views,
                        &dg,
                        &prefill_views,
                        &pg,
                        &profile,
                        &pd.prefill_profile,
                        &pd.decode_profile,
                        &request,
                        &PdRequest {
                            prompt_tokens,
                            min_uncached_tokens: pd.min_uncached_tokens,
                            precise,
                            prefill_exclude: &prefill_tried,
                            decode_nodes: &dn,
                            prefill_nodes: &pn,
                            same_node_weight: pd.same_node_weight,
                        },
                    )
                    .map(|d| match d {
                        PdDecision::Alone { decode, reason } => Routed {
                            cached_blocks: views[decode.index].prefix.effective(precise),
                            decision: decode,
                            prefill: None,
                            pd: Some(reason.as_str()),
                        },
                        PdDecision::Pair {
                            prefill, decode, ..
                        } => Routed {
                            cached_blocks: 0,
                            prefill: Some((
                                prefill.clone(),
                                prefill_views[prefill.index].prefix.effective(precise),
                            )),
                            decision: decode,
                            pd: Some("disaggregated"),
                        },
                    })
                }
            }
        };
        state
            .metrics
            .scheduling_duration
            .observe(sched_start.elapsed().as_secs_f64());
        let routed = match routed {
            Ok(r) => r,
            Err(e) => return reject(record, ApiError::unavailable(format!("{e}"))),
        };
        let decision = routed.decision;
        let cached_blocks = routed.cached_blocks;
        for (plugin, score) in &decision.scores {
            state.metrics.plugin_score(*plugin).observe(*score);
        }
        if let Some(label) = routed.pd {
            state
                .metrics
                .pd_decisions
                .with_label_values(&[&server_label, label])
                .inc();
        }
        record.pd = routed.pd;
        record.prefill_endpoint = None;
        let endpoint = server.endpoints[decision.index].clone();
        // With prefix scoring, in-flight work counts only the prompt the engine must compute
        // (the expected wait the release valve compares), and the index learns the route. A
        // decoder of a pair computes no prompt, but ends up holding its KV.
        let prefill_estimate = match (&prefix_blocks, &routed.prefill) {
            (_, Some(_)) => 0,
            (Some(b), None) => b.uncached_tokens(cached_blocks),
            (None, None) => prompt_estimate,
        };
        let token_estimate = match (&prefix_blocks, &routed.prefill) {
            (Some(b), _) => {
                endpoint.prefix.record_routed(&b.hashes, Instant::now());
                prefill_estimate + output_budget
            }
            (None, Some(_)) => output_budget,
            (None, None) => token_estimate,
        };

        // Counted from here, before any wait for a prefill slot: a request queued for this
        // decoder is load on it, or the scorers would see a decoder with a long queue as idle
        // and send it more (the PD benchmark's opening burst put 239 of 300 on one group).
        let mut in_flight = endpoint.begin(token_estimate, prefill_estimate);

        // PD: the prefill leg, bounded per decoder; its outcome decides the decode leg's body.
        let mut try_body = upstream_body.clone();
        let mut prefill_task: Option<pd::BootstrapTask> = None;
        if let (Some(pd), Some((prefill, prefill_cached)), Some(base)) =
            (pd_settings, &routed.prefill, &pd_base)
        {
            let prefill_ep = server.prefill[prefill.index].clone();
            prefill_tried.push(prefill.index);
            record.prefill_endpoint = Some(prefill_ep.name.clone());
            record.attempts = attempt + 1;
            // The leg counts on its prefill endpoint (and the index learns the route) while
            // it waits for a slot too, for the same reason as the decoder above.
            let prefill_tokens = match &prefix_blocks {
                Some(b) => {
                    prefill_ep.prefix.record_routed(&b.hashes, Instant::now());
                    b.uncached_tokens(*prefill_cached)
                }
                None => prompt_estimate,
            } + 1;
            let prefill_in_flight = prefill_ep.begin(prefill_tokens, prefill_tokens);
            let waiting = Instant::now();
            let permit = match endpoint
                .prefill_gate
                .acquire(pd.max_prefill_per_decode, pd.queue_timeout)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    state
                        .metrics
                        .pd_prefill_legs
                        .with_label_values(&[&server_label, "queue_timeout"])
                        .inc();
                    record.endpoint = Some(endpoint.name.clone());
                    let retry = vec![(header::RETRY_AFTER, HeaderValue::from_static("1"))];
                    return reject_with(
                        record,
                        ApiError::prefill_queue_timeout(&endpoint.name, e.limit, e.waited),
                        retry,
                    );
                }
            };
            state
                .metrics
                .pd_prefill_queue_wait
                .with_label_values(&[&server_label])
                .observe(waiting.elapsed().as_secs_f64());
            let mut leg = pd::PrefillLeg {
                client: client.clone(),
                endpoint: prefill_ep.clone(),
                path: path_and_query.clone(),
                headers: upstream_headers.clone(),
                body: Bytes::new(),
                timeout: policy.per_try_timeout,
            };
            if pd.connector == PdConnector::Bootstrap {
                let b = pd::Bootstrap::for_prefill(
                    prefill_ep.address,
                    pd.bootstrap_port,
                    fastrand::u64(..),
                );
                leg.body = pd::prefill_body(base, pd.connector, Some(&b));
                let (st, label, ep) = (state.clone(), server_label.clone(), prefill_ep.clone());
                let task = leg.spawn_bootstrap(
                    (permit, prefill_in_flight),
                    move |outcome, took, failed| {
                        st.metrics
                            .pd_prefill_legs
                            .with_label_values(&[&label, outcome])
                            .inc();
                        st.metrics
                            .pd_prefill_duration
                            .with_label_values(&[&label])
                            .observe(took.as_secs_f64());
                        if failed {
                            note_failure(&st, &ep, &label);
                        }
                    },
                );
                prefill_task = Some(task);
                try_body = pd::decode_body(base, None, Some(&b));
            } else {
                leg.body = pd::prefill_body(base, pd.connector, None);
                let started = Instant::now();
                let result = leg.run(pd.connector).await;
                drop(prefill_in_flight);
                drop(permit);
                let outcome = result
                    .as_ref()
                    .map_or_else(pd::PrefillFailure::outcome, |_| "ok");
                state
                    .metrics
                    .pd_prefill_legs
                    .with_label_values(&[&server_label, outcome])
                    .inc();
                state
                    .metrics
                    .pd_prefill_duration
                    .with_label_values(&[&server_label])
                    .observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(params) => {
                        prefill_ep.record_success();
                        try_body = pd::decode_body(base, params, None);
                    }
                    Err(pd::PrefillFailure::Retriable { detail, .. }) => {
                        note_failure(&state, &prefill_ep, &server_label);
                        last_error = detail;
                        continue;
                    }
                    Err(pd::PrefillFailure::Refused { status, body }) => {
                        return refused(record, status, body);
                    }
                    Err(pd::PrefillFailure::BadResponse(message)) => {
                        note_failure(&state, &prefill_ep, &server_label);
                        return reject(record, ApiError::bad_gateway(message));
                    }
                }
            }
        }
        tried.push(decision.index);
        record.attempts = attempt + 1;
        record.endpoint = Some(endpoint.name.clone());
        record.scores = decision.scores;
        if let Some(s) = &session {
            state.sessions.record(s, &server_label, &endpoint.name);
        }

        let mut uri = hyper::http::uri::Parts::default();
        uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(path_and_query.clone());
        let Ok(uri) = Uri::from_parts(uri) else {
            return reject(
                record,
                ApiError::bad_request("The request path cannot be forwarded.", None),
            );
        };
        let mut headers = upstream_headers.clone();
        if try_body.len() != upstream_body.len() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(try_body.len()));
        }
        let mut upstream_req = Request::new(try_body);
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri;
        // HTTP/1.1's Host is set by the pool, from the URI's authority.
        *upstream_req.headers_mut() = headers;

        // The prefill budget meters streamed whole requests (a pair's decoder computes no
        // prompt) whose blocks are known (what they must compute); held ones still count as
        // the endpoint's load above.
        if let (Some(budget), true, None, Some(b)) = (
            compiled.prefill_budget,
            streamed,
            &routed.prefill,
            &prefix_blocks,
        ) {
            let cached = (cached_blocks as usize).min(b.hashes.len());
            let reuses = cached.checked_sub(1).map(|i| b.hashes[i]);
            let computes = &b.hashes[cached..];
            let ask = prefill_budget::Ask {
                tokens: prefill_estimate,
                computes,
                reuses,
            };
            let (permit, admitted) = endpoint
                .prefill_budget
                .admit(budget.tokens, budget.max_wait, ask)
                .await;
            in_flight.hold_budget(permit);
            state
                .metrics
                .prefill_budget_wait
                .with_label_values(&[&server_label])
                .observe(admitted.waited.as_secs_f64());
            if admitted.bypassed {
                state
                    .metrics
                    .prefill_budget_bypassed
                    .with_label_values(&[&server_label])
                    .inc();
            }
        }
        let exchange = tokio::time::timeout(policy.per_try_timeout, client.request(upstream_req));
        let result = match prefill_task.as_mut() {
            None => exchange.await,
            // A failed bootstrap prefill leaves the decoder waiting for KV that never comes:
            // drop the decode leg and fail the pair over now, not at the decoder's timeout.
            Some(leg) => tokio::select! {
                r = exchange => r,
                failure = leg.failure() => match failure {
                    pd::PrefillFailure::Retriable { detail, .. } => {
                        last_error = detail;
                        drop(in_flight);
                        continue;
                    }
                    pd::PrefillFailure::Refused { status, body } => {
                        return refused(record, status, body);
                    }
                    pd::PrefillFailure::BadResponse(message) => {
                        return reject(record, ApiError::bad_gateway(message));
                    }
                },
            },
        };
        let attempts_metric = |outcome: &str| {
            state
                .metrics
                .upstream_attempts
                .with_label_values(&[&server_label, outcome])
                .inc();
        };
        let can_retry = attempt < policy.attempts;
        let failure = match result {
            Err(_) => {
                attempts_metric(TryOutcome::Timeout.label());
                note_failure(&state, &endpoint, &server_label);
                // A slow engine is not retried: the retry would duplicate its load.
                return reject(
                    record,
                    ApiError::upstream_timeout(&endpoint.name, policy.per_try_timeout),
                );
            }
            Ok(Err(e)) => {
                let outcome = if e.is_connect() {
                    TryOutcome::ConnectError
                } else {
                    TryOutcome::Reset
                };
                attempts_metric(outcome.label());
                note_failure(&state, &endpoint, &server_label);
                last_error = format!(
                    "{} ({}): {}",
                    endpoint.name,
                    outcome.label(),
                    error_chain(&e)
                );
                continue;
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                let outcome = if status.is_server_error() {
                    Some(TryOutcome::Status5xx)
                } else if status == StatusCode::TOO_MANY_REQUESTS {
                    Some(TryOutcome::Status429)
                } else {
                    None
                };
                match outcome {
                    Some(o) if can_retry => {
                        attempts_metric(o.label());
                        if status.is_server_error() {
                            note_failure(&state, &endpoint, &server_label);
                        }
                        last_error = format!("{} answered {status}", endpoint.name);
                        drop(resp);
                        Some(o)
                    }
                    _ => {
                        attempts_metric(outcome.as_ref().map_or("ok", TryOutcome::label));
                        if status.is_server_error() {
                            note_failure(&state, &endpoint, &server_label);
                        } else {
                            endpoint.record_success();
                        }
                        record.hold(in_flight);
                        if let Some(task) = prefill_task.take() {
                            task.detach();
                        }
                        let endpoint_header = HeaderValue::from_str(&endpoint.name).ok();
                        let prefill_header = record
                            .prefill_endpoint
                            .as_deref()
                            .and_then(|p| HeaderValue::from_str(p).ok());
                        let mut resp = relay(&state, record, resp, kind, inject_usage);
                        let headers = resp.headers_mut();
                        if let Some(v) = endpoint_header {
                            headers.insert(X_ENDPOINT, v);
                        }
                        if let Some(v) = prefill_header {
                            headers.insert(X_PREFILL_ENDPOINT, v);
                        }
                        for (name, value) in &limit_headers {
                            headers.insert(name.clone(), value.clone());
                        }
                        if let Some(w) = queue_wait {
                            headers.insert(X_QUEUE_WAIT, HeaderValue::from(w.as_millis() as u64));
                        }
                        return resp;
                    }
                }
            }
        };
        debug_assert!(failure.is_some());
        drop(in_flight);
    }
    reject(
        record,
        ApiError::unavailable(format!(
            "No endpoint of ModelServer {} answered after {} tries; last error: {last_error}",
            compiled.key,
            policy.attempts + 1
        )),
    )
}

/// Each endpoint's node, borrowed from the compiled configuration.
fn nodes(specs: &[crate::config::EndpointSpec]) -> Vec<Option<&str>> {
    specs.iter().map(|e| e.node.as_deref()).collect()
}

/// Each endpoint's PD group, borrowed from the compiled configuration.
fn pd_groups(specs: &[crate::config::EndpointSpec]) -> Vec<Option<&str>> {
    specs.iter().map(|e| e.pd_group.as_deref()).collect()
}

/// What the scheduler sees of one endpoint for this request.
fn endpoint_view<'a>(
    state: &AppState,
    e: &'a EndpointState,
    blocks: Option<&crate::prefix::tokenize::RequestBlocks>,
    profile: &crate::scheduler::SchedulerProfile,
    now: Instant,
    stale_after: Duration,
) -> crate::scheduler::EndpointView<'a> {
    let mut v = e.view(now, stale_after);
    if let Some(b) = blocks {
        v.prefix = state.prefix.lookup(e, b, profile, now);
    }
    v
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn note_failure(state: &AppState, endpoint: &crate::endpoints::EndpointState, server: &str) {
    if let Some(length) = endpoint.record_failure(Instant::now(), &state.config.outlier) {
        state.metrics.ejections.with_label_values(&[server]).inc();
        tracing::warn!(
            endpoint = %endpoint.name,
            address = %endpoint.address,
            server,
            seconds = length.as_secs_f64(),
            "ejecting endpoint after consecutive failures"
        );
    }
}

fn relay(
    state: &AppState,
    mut record: RequestRecord,
    resp: Response<pool::UpstreamBody>,
    kind: ApiKind,
    injected_usage: bool,
) -> Response<RouterBody> {
    let (mut parts, upstream) = resp.into_parts();
    record.status = parts.status.as_u16();
    let names: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|n| is_hop_by_hop(n) && *n != header::CONTENT_LENGTH)
        .cloned()
        .collect();
    for n in names {
        parts.headers.remove(n);
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mode = if content_type.starts_with("text/event-stream") {
        parts.headers.remove(header::CONTENT_LENGTH);
        RelayMode::Sse(sse::SseScanner::new(
            injected_usage && kind != ApiKind::Other,
        ))
    } else if content_type.starts_with("application/json") && parts.status.is_success() {
        RelayMode::CaptureJson(Vec::new(), 0)
    } else {
        RelayMode::Plain
    };
    if let Ok(v) = HeaderValue::from_str(&record.request_id) {
        parts.headers.insert(X_REQUEST_ID, v);
    }
    let relay = body::Relay::new(
        upstream,
        mode,
        record,
        state.config.stream_idle_timeout,
        state.config.outlier,
    );
    Response::from_parts(parts, RouterBody::Relay(Box::new(relay)))
}
