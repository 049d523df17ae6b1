//! Label, annotation and condition names shared by every Muster component.
//!
//! One module so the controller that writes a label and the router that selects on it can
//! never disagree about its spelling.

/// API group of ModelServing and AutoscalingPolicy.
pub const WORKLOAD_GROUP: &str = "workload.muster.dev";
/// API group of ModelServer and ModelRoute.
pub const NETWORKING_GROUP: &str = "networking.muster.dev";
/// Field manager used for every server-side apply Muster performs.
pub const FIELD_MANAGER: &str = "muster";

/// Name of the owning ModelServing, on every object the controller creates.
pub const MODEL_SERVING_NAME: &str = "modelserving.muster.dev/name";
/// ServingGroup name `<ms>-<group>`, on pods, services and the PodGroup of a group.
pub const GROUP_NAME: &str = "modelserving.muster.dev/group-name";
/// ServingGroup ordinal, as a decimal string.
pub const GROUP_INDEX: &str = "modelserving.muster.dev/group-index";
/// Role name within the ServingGroup (e.g. `prefill`).
pub const ROLE: &str = "modelserving.muster.dev/role";
/// Role instance id `<role>-<roleIndex>`.
pub const ROLE_ID: &str = "modelserving.muster.dev/role-id";
/// `"true"` on the entry (leader) pod of a role instance.
pub const ENTRY: &str = "modelserving.muster.dev/entry";
/// Index of the pod within its role instance: 0 for the entry, 1.. for workers.
pub const WORKER_INDEX: &str = "modelserving.muster.dev/worker-index";
/// Revision (hash of every pod-affecting field) a pod or group was created from.
pub const REVISION: &str = "modelserving.muster.dev/revision";
/// Hash of one role's template, for role-level rolling updates.
pub const ROLE_TEMPLATE_HASH: &str = "modelserving.muster.dev/role-template-hash";

/// Volcano: the PodGroup a pod belongs to (annotation).
pub const VOLCANO_GROUP_NAME: &str = "scheduling.k8s.io/group-name";
/// Volcano: the task a pod belongs to (annotation), `<role>-<roleIndex>`.
pub const VOLCANO_TASK_SPEC: &str = "volcano.sh/task-spec";
/// Volcano queue for a ModelServing's PodGroups (annotation on the ModelServing).
pub const VOLCANO_QUEUE_NAME: &str = "scheduling.volcano.sh/queue-name";
/// Kubernetes: lower cost pods are deleted first on scale-down (annotation).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Marks HyperNodes created by Muster's discovery controller; it touches no others.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`] on Muster-owned objects.
pub const MANAGED_BY_MUSTER: &str = "muster";

/// Node label naming the node's spine switch in the local control plane's fake topology.
pub const TOPOLOGY_SPINE: &str = "topology.muster.dev/spine";
/// Node label naming the node's rack (leaf switch) in the local control plane's fake topology.
pub const TOPOLOGY_RACK: &str = "topology.muster.dev/rack";

/// ModelServing annotation: automatic network-topology tier choice, `hard` (default), `soft` or
/// `off`. Scopes with an explicit user bound are never changed by it.
pub const TIER_CHOICE: &str = "topology.muster.dev/tier-choice";
/// PodGroup annotation: the JSON `TierDecision` the PodGroup's network topology came from.
pub const TIER_DECISION: &str = "topology.muster.dev/tier-decision";

/// Extended resource name of NVIDIA GPUs.
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";

/// Environment variables injected into every container of a ServingGroup.
pub mod env {
    /// DNS name of the role instance's entry pod (`<entry-pod>.<namespace>`).
    pub const ENTRY_ADDRESS: &str = "ENTRY_ADDRESS";
    /// Pods in the role instance: 1 + workerReplicas.
    pub const GROUP_SIZE: &str = "GROUP_SIZE";
    /// 0 on the entry pod, 1.. on workers.
    pub const WORKER_INDEX: &str = "WORKER_INDEX";
    /// Role name.
    pub const ROLE_NAME: &str = "ROLE_NAME";
    /// Role instance index within the group.
    pub const ROLE_INDEX: &str = "ROLE_INDEX";
    /// ServingGroup ordinal.
    pub const GROUP_INDEX: &str = "GROUP_INDEX";
}

/// Condition types written to `ModelServing.status.conditions`.
pub mod conditions {
    /// Every ServingGroup is ready at the update revision (or within maxUnavailable).
    pub const AVAILABLE: &str = "Available";
    /// Groups are being created or are not ready yet.
    pub const PROGRESSING: &str = "Progressing";
    /// A rolling update is moving groups to the update revision.
    pub const UPDATE_IN_PROGRESS: &str = "UpdateInProgress";
    /// Something prevents progress (unschedulable gang, crash loops, invalid topology).
    pub const DEGRADED: &str = "Degraded";
    /// ModelServer / ModelRoute: the object was accepted by the router.
    pub const ACCEPTED: &str = "Accepted";
    /// ModelServer: at least one Ready endpoint backs it. ModelRoute: every target resolves.
    pub const READY: &str = "Ready";
}
