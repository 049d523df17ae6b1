//! `ModelServer` and `ModelRoute` (`networking.muster.dev/v1alpha1`): how requests reach pods.
//!
//! A ModelServer names the pods that serve one model (engine kind, port, PD grouping, traffic
//! policy); a ModelRoute maps a public model name (and LoRA adapters) to ModelServers through
//! ordered rules with weighted targets. Fields follow Kthena v1.0; the status blocks are Muster's.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Go-style duration such as `30s`, `1m30s` or `100ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// Desired state of a ModelServer.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "networking.muster.dev",
    version = "v1alpha1",
    kind = "ModelServer",
    plural = "modelservers",
    shortname = "msrv",
    category = "muster",
    namespaced,
    status = "ModelServerStatus",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.inferenceEngine"),
    printcolumn(
        name = "Port",
        type_ = "integer",
        json_path = ".spec.workloadPort.port"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyEndpoints"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "The pods that serve one model: engine kind, port, prefill/decode grouping, traffic policy."
)]
#[serde(rename_all = "camelCase")]
pub struct ModelServerSpec {
    /// Model name the engine serves; when set, non-LoRA requests have `model` rewritten to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model: Option<String>,
    /// Engine kind, which decides metric names and the PD protocol.
    pub inference_engine: InferenceEngine,
    /// Pods (same namespace) that serve the model.
    pub workload_selector: WorkloadSelector,
    /// Port the engine listens on.
    pub workload_port: WorkloadPort,
    /// Timeouts and retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// How KV cache moves from prefill to decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_connector: Option<KvConnectorSpec>,
}

/// Engine kind behind a ModelServer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InferenceEngine {
    /// vLLM (`vllm:*` metrics, NIXL-style `kv_transfer_params`).
    #[serde(rename = "vLLM")]
    VLlm,
    /// SGLang (`sglang:*` metrics, bootstrap rooms).
    SGLang,
}

/// Which pods serve the model, and how they pair for prefill/decode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Pods carrying all of these labels.
    #[schemars(extend("minProperties" = 1))]
    pub match_labels: BTreeMap<String, String>,
    /// Prefill/decode split; pods pair only within the same value of `groupKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pd_group: Option<PdGroup>,
}

/// Prefill/decode grouping of the selected pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PdGroup {
    /// Label whose value identifies a PD group (e.g. `modelserving.muster.dev/group-name`).
    #[schemars(length(min = 1, max = 317))]
    pub group_key: String,
    /// Labels that mark a prefill pod.
    #[schemars(extend("minProperties" = 1))]
    pub prefill_labels: BTreeMap<String, String>,
    /// Labels that mark a decode pod.
    #[schemars(extend("minProperties" = 1))]
    pub decode_labels: BTreeMap<String, String>,
}

/// Engine port and protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPort {
    /// TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `http` or `https`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Scheme used to reach the engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTP over TLS.
    Https,
}

/// Per-try timeout and retry policy; both are honoured by Muster's router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Time to response headers for one try (Go duration, e.g. `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Retries before the first byte reaches the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// Retry policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Tries after the first one.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: i32,
    /// Wait between tries (Go duration; default `100ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub retry_interval: Option<String>,
}

/// KV transfer mechanism between prefill and decode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct KvConnectorSpec {
    /// Connector type.
    #[serde(default, rename = "type")]
    pub type_: KvConnectorType,
}

/// KV connector kinds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum KvConnectorType {
    /// Plain HTTP handshake.
    #[default]
    Http,
    /// LMCache.
    Lmcache,
    /// NVIDIA NIXL (vLLM `kv_transfer_params`).
    Nixl,
    /// Mooncake.
    Mooncake,
}

/// Observed state of a ModelServer, written by the router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelServerStatus {
    /// Generation the router last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods selected.
    #[serde(default)]
    pub total_endpoints: i32,
    /// Ready pods the router sends traffic to.
    #[serde(default)]
    pub ready_endpoints: i32,
    /// Ready prefill pods (PD only).
    #[serde(default)]
    pub prefill_endpoints: i32,
    /// Ready decode pods (PD only).
    #[serde(default)]
    pub decode_endpoints: i32,
    /// Accepted, Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Desired state of a ModelRoute.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "networking.muster.dev",
    version = "v1alpha1",
    kind = "ModelRoute",
    plural = "modelroutes",
    shortname = "mr",
    category = "muster",
    namespaced,
    status = "ModelRouteStatus",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelName"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "Maps a public model name (and LoRA adapters) to ModelServers with rules and weights."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.modelName != '' || size(self.loraAdapters) > 0",
        "message": "set modelName or at least one of loraAdapters",
        "fieldPath": ".modelName",
        "reason": "FieldValueRequired"
    }
]))]
pub struct ModelRouteSpec {
    /// Public model name clients put in `model`.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "modelName is immutable"}
    ]))]
    pub model_name: String,
    /// LoRA adapter names that also route here.
    #[serde(default)]
    #[schemars(length(max = 10))]
    pub lora_adapters: Vec<String>,
    /// Ordered rules; the first that matches wins, no match means 404.
    #[schemars(length(min = 1, max = 16))]
    pub rules: Vec<RouteRule>,
    /// Token rate limits for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// One routing rule: match conditions (ANDed) and weighted targets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.targetModels.all(t, has(t.weight)) || self.targetModels.all(t, !has(t.weight))",
        "message": "set weight on every targetModel of a rule or on none",
        "fieldPath": ".targetModels",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct RouteRule {
    /// Rule name, for metrics and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// Conditions; absent matches every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_match: Option<ModelMatch>,
    /// Where matching requests go.
    #[schemars(length(min = 1, max = 16))]
    pub target_models: Vec<TargetModel>,
}

/// Request conditions, ANDed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelMatch {
    /// Header name → match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16))]
    pub headers: Option<BTreeMap<String, StringMatch>>,
    /// Request path match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// Request body match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyMatch>,
}

/// Exactly one of exact, prefix, regex.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.regex) ? 1 : 0) == 1",
        "message": "set exactly one of exact, prefix, regex",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct StringMatch {
    /// Whole-value equality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,
    /// Value starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// RE2-style regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub regex: Option<String>,
}

/// Match on fields of the JSON body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BodyMatch {
    /// The body's `model` equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A weighted target of a rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetModel {
    /// ModelServer in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub model_server_name: String,
    /// Relative weight 0..100 (canary split); all targets of a rule set it or none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u32>,
}

/// Token rate limit of a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.inputTokensPerUnit) || has(self.outputTokensPerUnit)",
        "message": "set inputTokensPerUnit, outputTokensPerUnit or both",
        "reason": "FieldValueRequired"
    }
]))]
pub struct RateLimit {
    /// Prompt tokens per unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub input_tokens_per_unit: Option<u32>,
    /// Completion tokens per unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub output_tokens_per_unit: Option<u32>,
    /// Time unit of the limits.
    #[serde(default)]
    pub unit: RateLimitUnit,
    /// Share the limit across router replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRateLimit>,
}

/// Time unit of a rate limit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitUnit {
    /// Per second.
    #[default]
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
    /// Per day.
    Day,
    /// Per 30 days.
    Month,
}

/// Where global limit state lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GlobalRateLimit {
    /// Redis holding the buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
}

/// Redis connection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisConfig {
    /// `host:port`.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
}

/// Observed state of a ModelRoute, written by the router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelRouteStatus {
    /// Generation the router last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted (valid, not shadowed), Ready (every target resolves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
