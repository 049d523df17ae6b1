//! One internal model of the routing configuration, whichever source it came from.
//!
//! Both sources — the Kubernetes API ([`kubernetes`]) and a standalone YAML file
//! ([`standalone`]) — produce a [`ConfigInput`]: ModelServer and ModelRoute specs plus the
//! endpoints each server selects. [`compile()`] turns that into a [`CompiledConfig`] (pure, and
//! tested here), which [`table::RoutingTable`] pairs with live endpoint state for the proxy.
//! [`status`] derives the ModelServer/ModelRoute status the Kubernetes source writes back.

mod compile;
pub mod kubernetes;
pub mod matching;
pub mod pd;
pub mod prefill_budget;
pub mod standalone;
pub mod status;
pub mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use muster_api::networking::{InferenceEngine, ModelRouteSpec, ModelServerSpec};
use serde::Serialize;

pub use compile::compile;
use matching::CompiledRule;

use crate::scheduler::SchedulerProfile;

/// ModelServer annotation choosing the upstream HTTP version: `http1` (default) or `h2c`
/// (HTTP/2 with prior knowledge, for engines that speak it in cleartext).
pub const UPSTREAM_PROTOCOL_ANNOTATION: &str = "router.muster.dev/upstream-protocol";

/// ModelServer annotation giving the port its engines publish KV events on (ZMQ PUB, vLLM's
/// `--kv-events-config` endpoint): the router subscribes to `tcp://<pod ip>:<port>`.
pub const KV_EVENTS_PORT_ANNOTATION: &str = "router.muster.dev/kv-events-port";

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod (or static endpoint) a ModelServer selects.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointInput {
    /// Pod name: the identity session affinity hashes on.
    pub name: String,
    /// Where the engine listens.
    pub address: SocketAddr,
    /// Running, Ready and not terminating.
    pub ready: bool,
    /// Pod labels (PD role detection).
    pub labels: BTreeMap<String, String>,
    /// The engine's KV-event ZMQ address (`tcp://ip:port`), when given explicitly
    /// (standalone `kvEvents`); otherwise derived from the server's annotation.
    pub kv_events: Option<String>,
    /// The node it runs on (Kubernetes: the pod's `spec.nodeName`; standalone: `node`): PD
    /// pairs prefer a prefill and a decoder on one node, where the KV moves fastest.
    pub node: Option<String>,
}

/// A ModelServer as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInput {
    /// Namespace/name.
    pub key: ObjectKey,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// The spec.
    pub spec: ModelServerSpec,
    /// Every endpoint the selector matches, Ready or not.
    pub endpoints: Vec<EndpointInput>,
}

/// A ModelRoute as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInput {
    /// Namespace/name.
    pub key: ObjectKey,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Creation time (Unix seconds); older routes win duplicate model names.
    pub created: Option<i64>,
    /// Position in the source (file order), the tie-breaker after `created`.
    pub position: usize,
    /// The spec.
    pub spec: ModelRouteSpec,
}

/// Everything a source observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigInput {
    /// ModelServers.
    pub servers: Vec<ServerInput>,
    /// ModelRoutes.
    pub routes: Vec<RouteInput>,
}

/// Router-wide defaults for what a ModelServer leaves unset.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Scheduling profile without the annotation.
    pub profile: Arc<SchedulerProfile>,
    /// Per-try time to response headers without `trafficPolicy.timeout`.
    pub timeout: Duration,
    /// Retries without `trafficPolicy.retry`.
    pub retry_attempts: u32,
    /// Interval without `trafficPolicy.retry.retryInterval` (the CRD documents 100 ms).
    pub retry_interval: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            profile: Arc::new(SchedulerProfile::default()),
            timeout: Duration::from_secs(300),
            retry_attempts: 2,
            retry_interval: Duration::from_millis(100),
        }
    }
}

/// HTTP version spoken to a server's engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// Timeout and retry policy of a server, resolved against the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Time to response headers for one try.
    pub per_try_timeout: Duration,
    /// Tries after the first.
    pub attempts: u32,
    /// Wait between tries.
    pub interval: Duration,
}

/// A routable endpoint of a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointSpec {
    /// Pod name.
    pub name: String,
    /// Engine address.
    pub address: SocketAddr,
    /// The engine's KV-event ZMQ PUB address, when it publishes events.
    pub kv_events: Option<String>,
    /// Its PD group (the value of the server's `pdGroup.groupKey` label); prefill and decode
    /// endpoints pair only within one group.
    pub pd_group: Option<String>,
    /// Its node, when known ([`EndpointInput::node`]).
    pub node: Option<String>,
}

/// A ModelServer ready for the proxy.
#[derive(Debug, Clone, Serialize)]
pub struct CompiledServer {
    /// Namespace/name.
    pub key: ObjectKey,
    /// `namespace/name`, shared by every request's log line and metric labels.
    #[serde(skip)]
    pub label: Arc<str>,
    /// `spec.model`: non-LoRA requests have `model` rewritten to it.
    pub model_rewrite: Option<String>,
    /// Engine kind (metric names).
    #[serde(skip)]
    pub engine: InferenceEngine,
    /// Upstream HTTP version.
    pub upstream: UpstreamProtocol,
    /// Timeouts and retries.
    pub policy: RetryPolicy,
    /// Scheduling plugins and weights.
    #[serde(serialize_with = "serialize_profile")]
    pub profile: Arc<SchedulerProfile>,
    /// Ready endpoints that answer whole requests (with `pdGroup`: the decoders), by name.
    pub endpoints: Vec<EndpointSpec>,
    /// Ready prefill-only endpoints (PD servers), sorted by name.
    pub prefill_endpoints: Vec<EndpointSpec>,
    /// Prefill/decode settings, for servers with `pdGroup`.
    pub pd: Option<pd::PdSettings>,
    /// `tokenizer.json` named by the `router.muster.dev/tokenizer` annotation.
    pub tokenizer: Option<std::path::PathBuf>,
    /// Prefill metering per endpoint, when the server sets a budget.
    pub prefill_budget: Option<prefill_budget::PrefillBudgetSettings>,
}

fn serialize_profile<S: serde::Serializer>(
    p: &Arc<SchedulerProfile>,
    s: S,
) -> Result<S::Ok, S::Error> {
    p.as_ref().serialize(s)
}

/// A ModelRoute ready for the proxy.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Namespace/name.
    pub key: ObjectKey,
    /// `namespace/name`, shared by every request's log line and metric labels.
    pub label: Arc<str>,
    /// Public model name.
    pub model_name: String,
    /// LoRA adapter names routed here.
    pub lora_adapters: Vec<String>,
    /// Ordered rules.
    pub rules: Vec<CompiledRule>,
    /// `spec.rateLimit`: token budgets for this model (see `policy::rate_limit`).
    pub rate_limit: Option<muster_api::networking::RateLimit>,
}

/// A condition outcome: `Ok` or `(reason, message)`.
pub type Verdict = Result<(), (String, String)>;

/// What compiling said about one ModelServer (input to its status).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerReport {
    /// Namespace/name.
    pub key: ObjectKey,
    /// Generation acted on.
    pub generation: Option<i64>,
    /// Accepted condition.
    pub accepted: Verdict,
    /// Endpoints selected.
    pub total: i32,
    /// Ready endpoints.
    pub ready: i32,
    /// Ready prefill endpoints (PD only).
    pub prefill: i32,
    /// Ready decode endpoints (PD only).
    pub decode: i32,
}

/// What compiling said about one ModelRoute.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteReport {
    /// Namespace/name.
    pub key: ObjectKey,
    /// Generation acted on.
    pub generation: Option<i64>,
    /// Accepted condition (valid, not shadowed).
    pub accepted: Verdict,
    /// Ready condition (every target resolves).
    pub ready: Verdict,
}

/// The compiled configuration.
#[derive(Debug, Clone, Default)]
pub struct CompiledConfig {
    /// Routes by model name and by LoRA adapter name, oldest first.
    pub routes: std::collections::HashMap<String, Vec<Arc<CompiledRoute>>>,
    /// Servers by key.
    pub servers: std::collections::HashMap<ObjectKey, Arc<CompiledServer>>,
    /// Model names and adapters for `/v1/models`, sorted.
    pub models: Vec<String>,
    /// Per-server outcome.
    pub server_reports: Vec<ServerReport>,
    /// Per-route outcome.
    pub route_reports: Vec<RouteReport>,
}
