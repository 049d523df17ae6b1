//! `ModelServing` (`workload.muster.dev/v1alpha1`): what to run.
//!
//! A ModelServing expands into ServingGroups `0..replicas-1` (one inference instance each, gang
//! scheduled through one Volcano PodGroup), each holding the roles of the template; a role has
//! `replicas` instances of one entry pod plus `workerReplicas` worker pods. Field names follow
//! Kthena v1.0 so its manifests port by changing `apiVersion`; `maxSurge` and the richer status
//! are Muster's additions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::volcano::NetworkTopologySpec;

/// Desired state of a ModelServing.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "workload.muster.dev",
    version = "v1alpha1",
    kind = "ModelServing",
    plural = "modelservings",
    shortname = "ms",
    category = "muster",
    namespaced,
    status = "ModelServingStatus",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.labelSelector"}"#,
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas"
    ),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updatedReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A model deployment: ServingGroups of roles (entry + worker pods), gang scheduled by Volcano."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.rolloutStrategy) || !has(self.rolloutStrategy.type) || self.rolloutStrategy.type != 'RoleRollingUpdate' || !has(self.recoveryPolicy) || self.recoveryPolicy != 'ServingGroupRecreate'",
        "message": "recoveryPolicy ServingGroupRecreate cannot be combined with rolloutStrategy.type RoleRollingUpdate: recreating a whole group would undo a role-by-role rollout",
        "fieldPath": ".recoveryPolicy",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!has(self.rolloutStrategy) || !has(self.rolloutStrategy.type) || self.rolloutStrategy.type == 'RoleRollingUpdate' || self.template.roles.all(r, !has(r.partition))",
        "message": "roles[].partition only applies with rolloutStrategy.type RoleRollingUpdate; use rolloutStrategy.rollingUpdateConfiguration.partition",
        "fieldPath": ".template.roles",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "!has(self.template.gangPolicy) || !has(self.template.gangPolicy.minRoleReplicas) || self.template.gangPolicy.minRoleReplicas.all(k, self.template.roles.exists(r, r.name == k))",
        "message": "template.gangPolicy.minRoleReplicas has a key that names no role in template.roles",
        "fieldPath": ".template.gangPolicy.minRoleReplicas",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!has(self.template.gangPolicy) || !has(self.template.gangPolicy.minRoleReplicas) || self.template.roles.all(r, !(r.name in self.template.gangPolicy.minRoleReplicas) || self.template.gangPolicy.minRoleReplicas[r.name] <= r.replicas)",
        "message": "template.gangPolicy.minRoleReplicas[role] must not exceed that role's replicas",
        "fieldPath": ".template.gangPolicy.minRoleReplicas",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct ModelServingSpec {
    /// Number of ServingGroups (whole inference instances).
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,
    /// Scheduler for every pod; PodGroups are created when it is `volcano`.
    #[serde(default = "default_scheduler_name")]
    #[schemars(length(min = 1, max = 253))]
    pub scheduler_name: String,
    /// Template of one ServingGroup.
    pub template: ServingGroupTemplate,
    /// How pods move to a new revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_strategy: Option<RolloutStrategy>,
    /// What is rebuilt when a pod fails or disappears.
    #[serde(default)]
    pub recovery_policy: RecoveryPolicy,
}

fn default_one() -> i32 {
    1
}

fn default_scheduler_name() -> String {
    "volcano".into()
}

/// Template of one ServingGroup: its roles, gang policy and network topology.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.roles.all(a, self.roles.exists_one(b, b.name == a.name))",
        "message": "role names in template.roles must be unique",
        "fieldPath": ".roles",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct ServingGroupTemplate {
    /// Seconds a failed pod may stay failed before its recovery policy acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub restart_grace_period_seconds: Option<i64>,
    /// Which role replicas must be placed together; unset means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang_policy: Option<GangPolicy>,
    /// Volcano network-topology constraints for the whole group and for each role instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_topology: Option<NetworkTopology>,
    /// Roles of the group, e.g. `prefill` and `decode`.
    #[schemars(length(min = 1, max = 16))]
    pub roles: Vec<Role>,
}

/// Gang requirements of a ServingGroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GangPolicy {
    /// Role name → replicas of that role that must be scheduled together (≤ the role's replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16))]
    pub min_role_replicas: Option<BTreeMap<String, i32>>,
}

/// Volcano network-topology constraints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkTopology {
    /// Constraint for all pods of a ServingGroup (PodGroup `spec.networkTopology`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_policy: Option<NetworkTopologySpec>,
    /// Constraint for the pods of one role instance (`subGroupPolicy[].networkTopology`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_policy: Option<NetworkTopologySpec>,
}

/// One role of a ServingGroup: `replicas` instances of one entry pod plus `workerReplicas` workers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.workerReplicas == 0 || has(self.workerTemplate)",
        "message": "workerTemplate is required when workerReplicas > 0",
        "fieldPath": ".workerTemplate",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "!has(self.tensorParallelSize) || self.tensorParallelSize == (1 + self.workerReplicas) * self.entryTemplate.spec.containers.map(c, has(c.resources) && has(c.resources.limits) && 'nvidia.com/gpu' in c.resources.limits ? quantity(string(c.resources.limits['nvidia.com/gpu'])).asInteger() : 0).sum()",
        "message": "tensorParallelSize must equal the nvidia.com/gpu limit per pod × (1 + workerReplicas)",
        "fieldPath": ".tensorParallelSize",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!has(self.maxUnavailable) || type(self.maxUnavailable) != int || self.maxUnavailable <= self.replicas",
        "message": "maxUnavailable must not exceed the role's replicas",
        "fieldPath": ".maxUnavailable",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct Role {
    /// DNS-1035 label; part of pod and Service names.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Instances of this role in each ServingGroup (xPyD: prefill x, decode y).
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Template of the entry (leader) pod of each role instance.
    pub entry_template: PodTemplateSpec,
    /// Worker pods per role instance, beside the entry pod.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub worker_replicas: i32,
    /// Template of worker pods; required when `workerReplicas > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_template: Option<PodTemplateSpec>,
    /// Tensor-parallel size; when set it must equal GPUs per pod × (1 + workerReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub tensor_parallel_size: Option<i32>,
    /// Role-level rolling update settings (used with `RoleRollingUpdate`).
    #[serde(flatten)]
    pub rolling_update: RollingUpdateConfiguration,
}

/// Pod template: labels and annotations merged over Muster's, and a full pod spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    /// Labels and annotations for the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Pod spec.
    pub spec: PodSpec,
}

/// Labels and annotations of a pod template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels merged over Muster's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations merged over Muster's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// How to replace pods of an old revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.type) || self.type != 'RoleRollingUpdate' || !has(self.rollingUpdateConfiguration)",
        "message": "rollingUpdateConfiguration applies to ServingGroupRollingUpdate only; set maxUnavailable/maxSurge/partition on each role for RoleRollingUpdate",
        "fieldPath": ".rollingUpdateConfiguration",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct RolloutStrategy {
    /// Unit of replacement: whole ServingGroups or role instances.
    #[serde(default, rename = "type")]
    pub type_: RolloutStrategyType,
    /// Group-level rolling update settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update_configuration: Option<RollingUpdateConfiguration>,
}

/// Unit of replacement during a rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum RolloutStrategyType {
    /// Replace whole ServingGroups.
    #[default]
    ServingGroupRollingUpdate,
    /// Replace role instances inside groups.
    RoleRollingUpdate,
}

/// Rolling update bounds. Percentages are of the replicas being rolled (groups or role instances).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.maxUnavailable) || !has(self.maxSurge) || !(self.maxUnavailable == 0 || self.maxUnavailable == '0%') || !(self.maxSurge == 0 || self.maxSurge == '0%')",
        "message": "maxUnavailable and maxSurge cannot both be 0: the rollout could never make progress",
        "fieldPath": ".maxSurge",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct RollingUpdateConfiguration {
    /// Replicas that may be unavailable during the update (int or percentage, rounded down; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')", "message": "maxUnavailable must be a non-negative integer or a percentage like '25%'"}
    ], "maxLength" = 8))]
    pub max_unavailable: Option<IntOrString>,
    /// Extra replicas that may be created above the desired count (int or percentage, rounded up; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')", "message": "maxSurge must be a non-negative integer or a percentage like '25%'"}
    ], "maxLength" = 8))]
    pub max_surge: Option<IntOrString>,
    /// Replicas with ordinal below this value keep the current revision (int or percentage, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')", "message": "partition must be a non-negative integer or a percentage like '50%'"}
    ], "maxLength" = 8))]
    pub partition: Option<IntOrString>,
}

/// What is rebuilt when a pod of a ServingGroup fails or disappears.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum RecoveryPolicy {
    /// Delete and recreate every pod of the group (and its PodGroup).
    ServingGroupRecreate,
    /// Delete and recreate every pod of the failed role instance.
    #[default]
    RoleRecreate,
    /// Recreate only the failed pod.
    None,
}

/// Observed state of a ModelServing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelServingStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// ServingGroups that exist.
    #[serde(default)]
    pub replicas: i32,
    /// ServingGroups whose pods are all Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Ready ServingGroups counted towards availability (ready and not being deleted).
    #[serde(default)]
    pub available_replicas: i32,
    /// ServingGroups at the update revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// ServingGroups still at the current revision.
    #[serde(default)]
    pub current_replicas: i32,
    /// Revision of the groups before the rollout in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// Revision every group converges to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Selector of one pod per ServingGroup, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Available, Progressing, UpdateInProgress, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per-group status, ordered by group index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serving_groups: Vec<ServingGroupStatus>,
}

/// Observed state of one ServingGroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServingGroupStatus {
    /// `<ms>-<index>`.
    pub name: String,
    /// Group ordinal.
    pub index: i32,
    /// Creating, Scheduling, Running, Failed, Deleting.
    pub phase: String,
    /// Revision the group's pods were created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Why the group is in this phase (e.g. the PodGroup's unschedulable reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Per-role counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleStatus>,
    /// Which network-topology tiers the group's PodGroup carries, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TierDecision>,
}

/// How a ServingGroup's network-topology constraints were chosen: automatically (the lowest
/// HyperNode tier whose HyperNodes can hold the pods) or from the user's `networkTopology`.
/// The controller records it on the group's PodGroup (annotation
/// `topology.muster.dev/tier-decision`), so a restarted controller keeps it instead of choosing
/// again, and copies it into the group's status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TierDecision {
    /// Fingerprint of the demand and settings the decision was made for; when it changes the
    /// controller decides again.
    #[serde(default)]
    pub demand: String,
    /// The whole group (PodGroup `spec.networkTopology`).
    #[serde(default)]
    pub group: ScopeDecision,
    /// One per role: the constraint on each role instance (`subGroupPolicy[].networkTopology`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<ScopeDecision>,
}

/// The decision for one scope of a ServingGroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScopeDecision {
    /// `group`, or the role name.
    #[serde(default)]
    pub scope: String,
    /// The constraint written to the PodGroup; none means unconstrained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_topology: Option<NetworkTopologySpec>,
    /// Chosen by Muster rather than taken from the user's policy.
    #[serde(default)]
    pub automatic: bool,
    /// A hard constraint that no HyperNode can meet: the pods stay Pending until the topology
    /// changes (Muster never loosens a user's hard constraint).
    #[serde(default)]
    pub infeasible: bool,
    /// Why, in one line.
    #[serde(default)]
    pub message: String,
}

/// Observed state of one role inside a ServingGroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    /// Role name.
    pub name: String,
    /// Role instances that exist.
    pub replicas: i32,
    /// Role instances whose pods are all Ready.
    pub ready_replicas: i32,
}
