//! `AutoscalingPolicy` (`workload.muster.dev/v1alpha1`): how many ServingGroups to run.
//!
//! Exactly one target kind per policy: homogeneous (one ModelServing), heterogeneous (several
//! ModelServings of one model on different accelerators, mixed by cost) or disaggregated
//! (prefill and decode roles of one ModelServing within a ratio band). Fields follow Kthena
//! v1.0; `costPolicy` and status on every target kind are Muster's.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::networking::DURATION_PATTERN;

/// Desired state of an AutoscalingPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "workload.muster.dev",
    version = "v1alpha1",
    kind = "AutoscalingPolicy",
    plural = "autoscalingpolicies",
    shortname = "asp",
    category = "muster",
    namespaced,
    status = "AutoscalingPolicyStatus",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "Scales whole ServingGroups from metrics: homogeneous, heterogeneous by cost, or prefill/decode ratio."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.homogeneousTarget) ? 1 : 0) + (has(self.heterogeneousTarget) ? 1 : 0) + (has(self.disaggregatedTarget) ? 1 : 0) == 1",
        "message": "set exactly one of homogeneousTarget, heterogeneousTarget, disaggregatedTarget",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "has(self.disaggregatedTarget) || size(self.metrics) > 0",
        "message": "metrics must name at least one metric for homogeneous and heterogeneous targets",
        "fieldPath": ".metrics",
        "reason": "FieldValueRequired"
    }
]))]
pub struct AutoscalingPolicySpec {
    /// Act only when |desired − current| ≥ current × tolerancePercent / 100.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance_percent: i32,
    /// Metrics and their per-instance targets.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub metrics: Vec<AutoscalingPolicyMetric>,
    /// Scale-up (stable and panic) and scale-down rate limits and windows.
    #[serde(default)]
    pub behavior: AutoscalingPolicyBehavior,
    /// One ModelServing scaled by whole ServingGroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homogeneous_target: Option<HomogeneousTarget>,
    /// Several ModelServings of one model, mixed by cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heterogeneous_target: Option<HeterogeneousTarget>,
    /// Prefill and decode roles of one ModelServing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disaggregated_target: Option<DisaggregatedTarget>,
}

fn default_tolerance() -> i32 {
    10
}

/// A metric and the value one instance should carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingPolicyMetric {
    /// Metric name as exposed by the source (e.g. `vllm:num_requests_waiting`).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Target value per instance.
    pub target_value: Quantity,
}

/// Scaling behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingPolicyBehavior {
    /// Scale-up windows and rates.
    #[serde(default)]
    pub scale_up: ScaleUpBehavior,
    /// Scale-down window and rate.
    #[serde(default)]
    pub scale_down: StablePolicy,
}

/// Scale-up: a stable window and a panic window for bursts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScaleUpBehavior {
    /// Normal scale-up.
    #[serde(default)]
    pub stable_policy: StablePolicy,
    /// Burst scale-up.
    #[serde(default)]
    pub panic_policy: PanicPolicy,
}

/// Rate limit and window of stable scaling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StablePolicy {
    /// Instances that may be added/removed per period (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub instances: Option<i32>,
    /// Percent of current instances that may be added/removed per period (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub percent: Option<i32>,
    /// Period of the rate limits (Go duration, default `15s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub period: Option<String>,
    /// `Or`: the larger of instances/percent applies; `And`: the smaller.
    #[serde(default)]
    pub select_policy: SelectPolicy,
    /// Window over which recommendations are smoothed (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub stabilization_window: Option<String>,
    /// Minimum time between two scaling actions in this direction (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub cooldown: Option<String>,
}

/// How instance and percent limits combine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum SelectPolicy {
    /// The larger change applies.
    #[default]
    Or,
    /// The smaller change applies.
    And,
}

/// Burst (panic) scale-up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PanicPolicy {
    /// Percent of current instances that may be added per period in panic mode (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub percent: Option<i32>,
    /// Panic window (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub period: Option<String>,
    /// Enter panic mode when the panic-window load exceeds this percent of capacity (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 110, max = 1000))]
    pub panic_threshold_percent: Option<i32>,
    /// Stay in panic mode at least this long (Go duration, default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub panic_mode_hold: Option<String>,
}

/// A scalable object and where its metrics come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The ModelServing to scale (same namespace).
    pub target_ref: TargetRef,
    /// Metric name → source; metrics without an entry are read from the pods' `/metrics`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub metric_sources: BTreeMap<String, MetricSource>,
}

/// Reference to a ModelServing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.kind) || self.kind == 'ModelServing'", "message": "targetRef.kind must be ModelServing", "fieldPath": ".kind"}
]))]
pub struct TargetRef {
    /// `ModelServing` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the ModelServing.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a metric is read from: exactly one of pod, router, prometheus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.pod) ? 1 : 0) + (has(self.router) ? 1 : 0) + (has(self.prometheus) ? 1 : 0) == 1",
        "message": "set exactly one of pod, router, prometheus",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct MetricSource {
    /// Scrape the target's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodMetricSource>,
    /// Read the router's per-model metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterMetricSource>,
    /// Run an instant Prometheus query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetricSource>,
}

/// Scrape pods' Prometheus endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodMetricSource {
    /// Metric name in the pod's exposition, if different from the policy's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path (default `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Port (default: the engine port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Pods to scrape (default: the target's entry pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// Read a metric from Muster's router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouterMetricSource {
    /// Router metrics URL, e.g. `http://muster-router.muster-system:9090/metrics`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Metric name in the router's exposition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Instant Prometheus query returning a scalar or one sample.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusMetricSource {
    /// Prometheus base URL.
    #[serde(rename = "serverURL")]
    #[schemars(length(min = 1, max = 2048))]
    pub server_url: String,
    /// PromQL instant query.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
}

/// Scale one ModelServing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas", "fieldPath": ".minReplicas"}
]))]
pub struct HomogeneousTarget {
    /// What to scale.
    pub target: Target,
    /// Lower bound of ServingGroups.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub min_replicas: i32,
    /// Upper bound of ServingGroups.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_replicas: i32,
}

/// Mix several ModelServings (one per accelerator type) by cost.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeterogeneousTarget {
    /// One entry per ModelServing.
    #[schemars(length(min = 1, max = 32))]
    pub params: Vec<HeterogeneousTargetParam>,
    /// How far above the cheapest plan's cost Kthena-style expansion may go (percent, default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100))]
    pub cost_expansion_rate_percent: Option<i32>,
    /// Cost policy (accelerator prices, capacities) read by Muster's integer-program solver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_policy: Option<CostPolicyRef>,
}

/// One ModelServing in a heterogeneous mix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas", "fieldPath": ".minReplicas"}
]))]
pub struct HeterogeneousTargetParam {
    /// What to scale.
    pub target: Target,
    /// Cost of one ServingGroup (any consistent unit), used when no cost policy is given.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub cost: i32,
    /// Accelerator type in the cost policy that this ModelServing runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Lower bound of ServingGroups.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub min_replicas: i32,
    /// Upper bound of ServingGroups.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_replicas: i32,
}

/// A cost policy YAML stored in a ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostPolicyRef {
    /// ConfigMap in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub config_map_name: String,
    /// Key holding the YAML (default `cost-policy.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Scale prefill and decode roles of one ModelServing independently within a ratio band.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisaggregatedTarget {
    /// The ModelServing whose roles are scaled.
    pub target_ref: TargetRef,
    /// Role name → bounds, metrics and sources.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 2))]
    pub roles: BTreeMap<String, RoleScalingParam>,
    /// Keep numerator/denominator replicas within [minRatio, maxRatio].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_constraint: Option<RoleRatioConstraint>,
}

/// Bounds and metrics of one role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas", "fieldPath": ".minReplicas"}
]))]
pub struct RoleScalingParam {
    /// Lower bound of role replicas.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub min_replicas: i32,
    /// Upper bound of role replicas.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_replicas: i32,
    /// Metrics for this role (overrides the policy's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub metrics: Vec<AutoscalingPolicyMetric>,
    /// Metric name → source for this role.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub metric_sources: BTreeMap<String, MetricSource>,
}

/// Ratio band between two roles.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleRatioConstraint {
    /// Role counted in the numerator (e.g. `prefill`).
    pub numerator_role: String,
    /// Role counted in the denominator (e.g. `decode`).
    pub denominator_role: String,
    /// Lowest allowed ratio.
    pub min_ratio: Quantity,
    /// Highest allowed ratio.
    pub max_ratio: Quantity,
}

/// Observed state of an AutoscalingPolicy; written for every target kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingPolicyStatus {
    /// Generation acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, TargetFound, Infeasible, RatioConstraintViolated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per scaled object (per ModelServing, or per role for disaggregated targets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetScalingStatus>,
}

/// Scaling state of one target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetScalingStatus {
    /// ModelServing name, or `<ms>/<role>` for a role.
    pub name: String,
    /// Replicas observed.
    pub current_replicas: i32,
    /// Replicas recommended.
    pub desired_replicas: i32,
    /// `Stable` or `Panic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// When replicas last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Panic mode lasts until this time (absent in stable mode). Kept in the status so a
    /// restarted controller does not scale down in the middle of a burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_until: Option<Time>,
}
