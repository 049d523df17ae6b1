//! What the controller sees of one ModelServing: its objects grouped into ServingGroups by the
//! labels the controller wrote. Built fresh from the API server on every reconcile, so nothing
//! here survives a restart and nothing needs to.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use muster_api::labels;
use muster_api::serving::ModelServing;
use muster_api::volcano::PodGroup;

/// Everything a reconcile reads, as listed from the API server.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The ModelServing.
    pub ms: ModelServing,
    /// Pods labelled with its name.
    pub pods: Vec<Pod>,
    /// Services labelled with its name.
    pub services: Vec<Service>,
    /// PodGroups labelled with its name.
    pub pod_groups: Vec<PodGroup>,
    /// ControllerRevisions labelled with its name.
    pub revisions: Vec<ControllerRevision>,
    /// Its PodDisruptionBudget, if one exists.
    pub disruption_budget: Option<PodDisruptionBudget>,
    /// Current time, unix seconds (passed in so planning stays a pure function).
    pub now: i64,
}

/// The objects of one ServingGroup.
#[derive(Clone, Debug, Default)]
pub struct GroupObjects<'a> {
    /// Pods by name.
    pub pods: BTreeMap<String, &'a Pod>,
    /// Services by name.
    pub services: BTreeMap<String, &'a Service>,
    /// The group's PodGroup.
    pub pod_group: Option<&'a PodGroup>,
}

impl GroupObjects<'_> {
    /// Revision the group was created at: the PodGroup's label, else any pod's.
    pub fn revision(&self) -> Option<String> {
        let from_pg = self
            .pod_group
            .and_then(|pg| pg.metadata.labels.as_ref()?.get(labels::REVISION).cloned());
        from_pg.or_else(|| {
            self.pods
                .values()
                .find_map(|p| p.metadata.labels.as_ref()?.get(labels::REVISION).cloned())
        })
    }

    /// True when every object of the group is being deleted (its ordinal is not free yet).
    pub fn all_terminating(&self) -> bool {
        let pods = self.pods.values().all(|p| is_terminating(&p.metadata));
        let services = self.services.values().all(|s| is_terminating(&s.metadata));
        let pg = self.pod_group.is_none_or(|pg| is_terminating(&pg.metadata));
        pods && services && pg
    }

    /// Lowest pod-deletion-cost among the group's pods (0 when unset).
    pub fn deletion_cost(&self) -> i64 {
        self.pods
            .values()
            .filter_map(|p| {
                p.metadata
                    .annotations
                    .as_ref()?
                    .get(labels::POD_DELETION_COST)?
                    .parse()
                    .ok()
            })
            .min()
            .unwrap_or(0)
    }
}

/// Groups the observed objects by their group-index label. Objects without a valid index
/// (not ours, or hand-edited) are ignored rather than guessed at.
pub fn group_objects(observed: &Observed) -> BTreeMap<i32, GroupObjects<'_>> {
    let mut groups: BTreeMap<i32, GroupObjects<'_>> = BTreeMap::new();
    let index_of =
        |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| -> Option<i32> {
            meta.labels.as_ref()?.get(labels::GROUP_INDEX)?.parse().ok()
        };
    for pod in &observed.pods {
        if let (Some(i), Some(name)) = (index_of(&pod.metadata), pod.metadata.name.clone()) {
            groups.entry(i).or_default().pods.insert(name, pod);
        }
    }
    for svc in &observed.services {
        if let (Some(i), Some(name)) = (index_of(&svc.metadata), svc.metadata.name.clone()) {
            groups.entry(i).or_default().services.insert(name, svc);
        }
    }
    for pg in &observed.pod_groups {
        if let Some(i) = index_of(&pg.metadata) {
            groups.entry(i).or_default().pod_group = Some(pg);
        }
    }
    groups
}

/// True once a deletion has been requested.
pub fn is_terminating(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// A pod is ready when its Ready condition is True and it is not being deleted.
pub fn pod_ready(pod: &Pod) -> bool {
    !is_terminating(&pod.metadata)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod has failed when its phase is Failed; returns since when (unix seconds), if known.
pub fn pod_failed_since(pod: &Pod) -> Option<i64> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Failed") {
        return None;
    }
    let since = status
        .conditions
        .iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0.as_second()))
        .max()
        .or_else(|| status.start_time.as_ref().map(|t| t.0.as_second()))
        .unwrap_or(0);
    Some(since)
}

/// True when the pod is bound to a node.
pub fn pod_scheduled(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some()
}
