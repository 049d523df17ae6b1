//! The ModelServing planner: observed objects in, desired actions and status out.
//!
//! `plan_serving_groups` is a pure function. It decides which ServingGroups exist (scale up
//! fills the lowest free ordinals; scale down removes not-ready, then outdated, then
//! cheapest-to-delete, then highest-index groups), moves groups at or above `partition` to the
//! update revision within `maxSurge`/`maxUnavailable`, and applies the recovery policy to
//! failed or missing pods. Because it reads only what the API server holds, a restarted
//! controller makes exactly the decisions the old one would have.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use muster_api::serving::TierDecision;
use muster_api::serving::{ModelServing, RecoveryPolicy, RolloutStrategyType};
use muster_api::volcano::PodGroup;
use muster_topology::Topology;

use super::expand::{self, Owner, PodSlot};
use super::naming;
use super::observe::{self, GroupObjects, Observed};
use super::revision::{self, RevisionTemplate};
use super::status::{self, GroupHealth};
use super::tier::{self, AutoTier, Fresh, Resolution};

/// Ordered actions for the shell to carry out.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// ControllerRevision to record before anything is created from it.
    pub record_revision: Option<ControllerRevision>,
    /// PodGroups to create or update (server-side apply), before their pods.
    pub apply_pod_groups: Vec<PodGroup>,
    /// Services to create.
    pub create_services: Vec<Service>,
    /// The PodDisruptionBudget, when missing or different.
    pub apply_disruption_budget: Option<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    /// Pods to create.
    pub create_pods: Vec<Pod>,
    /// Objects to delete.
    pub deletes: Vec<Delete>,
    /// ControllerRevisions no longer needed.
    pub prune_revisions: Vec<String>,
    /// Status to write.
    pub status: muster_api::serving::ModelServingStatus,
    /// Reconcile again after this many seconds (grace periods), if nothing else wakes us.
    pub requeue_after_secs: Option<u64>,
    /// Events describing what this plan does.
    pub events: Vec<PlannedEvent>,
}

impl Plan {
    /// Records a Normal event.
    fn note(&mut self, reason: &str, note: String) {
        self.events.push(PlannedEvent {
            warning: false,
            reason: reason.into(),
            note,
        });
    }
}

/// An object to delete.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Delete {
    /// A pod, by name.
    Pod(String),
    /// A Service, by name.
    Service(String),
    /// A PodGroup, by name.
    PodGroup(String),
}

/// An Event to record on the ModelServing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
}

/// Tier decisions of one plan: the topology (when known), the ModelServing's setting, fresh
/// decisions per revision (computed once per reconcile) and the decision per group.
struct Tiers<'a> {
    topology: Option<&'a Topology>,
    setting: AutoTier,
    setting_problem: Option<String>,
    fresh: BTreeMap<String, Fresh>,
    decisions: BTreeMap<i32, TierDecision>,
}

impl Tiers<'_> {
    /// The desired PodGroup of group `index` at `rev`, carrying its tier decision; records an
    /// Event when the decision is new or changed.
    fn pod_group(
        &mut self,
        plan: &mut Plan,
        owner: &Owner,
        index: i32,
        rev: &str,
        template: &RevisionTemplate,
        objects: Option<&GroupObjects<'_>>,
    ) -> PodGroup {
        let mut pg = expand::pod_group(owner, index, rev, template);
        let fresh = self.topology.map(|t| {
            self.fresh
                .entry(rev.to_string())
                .or_insert_with(|| tier::decide(&template.template, self.setting, t))
                .clone()
        });
        let existing = objects
            .and_then(|o| o.pod_group)
            .filter(|p| !observe::is_terminating(&p.metadata));
        let placed = objects.is_some_and(|o| {
            o.pods
                .values()
                .any(|p| !observe::is_terminating(&p.metadata) && observe::pod_scheduled(p))
        });
        let (decision, how) = tier::resolve(
            &template.template,
            fresh.as_ref(),
            existing.and_then(tier::pinned),
            placed,
        );
        tier::apply(&decision, &mut pg, how != Resolution::Unknown);
        if !matches!(how, Resolution::Kept | Resolution::Unknown) {
            let group = naming::group_name(&owner.name, index);
            let why = match how {
                Resolution::DemandChanged => " (demand or setting changed)",
                Resolution::Replanned => " (topology changed, nothing placed yet)",
                Resolution::NoLongerFeasible => " (the pinned bound can no longer be met)",
                _ => "",
            };
            let problem = self
                .setting_problem
                .as_ref()
                .map(|p| format!(" [{p}]"))
                .unwrap_or_default();
            plan.note(
                "TierChosen",
                format!("{group}{why}: {}{problem}", tier::summary(&decision)),
            );
            if tier::infeasible(&decision) {
                plan.events.push(PlannedEvent {
                    warning: true,
                    reason: "TierInfeasible".into(),
                    note: format!(
                        "{group}: a hard network-topology constraint no HyperNode can meet; the gang \
                         stays Pending until the topology changes: {}",
                        tier::summary(&decision)
                    ),
                });
            }
        }
        self.decisions.insert(index, decision);
        pg
    }
}

/// Resolved rollout bounds, in groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolloutBounds {
    /// Groups with ordinal below this keep their revision.
    pub partition: i32,
    /// Extra groups allowed above `replicas` while outdated groups remain.
    pub max_surge: i32,
    /// Ready groups that may be missing below `replicas`.
    pub max_unavailable: i32,
}

/// Resolves an int-or-percentage against `total` (percentages round up or down as asked).
pub fn resolve(value: Option<&IntOrString>, total: i32, default: i32, round_up: bool) -> i32 {
    match value {
        None => default,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let v = pct * total as f64 / 100.0;
            (if round_up { v.ceil() } else { v.floor() }) as i32
        }
    }
}

/// The rollout bounds of a ModelServing (Kthena defaults: maxUnavailable 1, partition 0; surge 0).
pub fn rollout_bounds(ms: &ModelServing) -> RolloutBounds {
    let replicas = ms.spec.replicas;
    let cfg = ms
        .spec
        .rollout_strategy
        .as_ref()
        .and_then(|r| r.rolling_update_configuration.clone())
        .unwrap_or_default();
    let max_surge = resolve(cfg.max_surge.as_ref(), replicas, 0, true).max(0);
    let mut max_unavailable = resolve(cfg.max_unavailable.as_ref(), replicas, 1, false).max(0);
    if max_surge == 0 && max_unavailable == 0 {
        // Both zero can never progress (the API rejects it; a percentage can still round to 0).
        max_unavailable = 1;
    }
    RolloutBounds {
        partition: resolve(cfg.partition.as_ref(), replicas, 0, true).clamp(0, replicas.max(0)),
        max_surge,
        max_unavailable,
    }
}

/// Plans one reconcile of a ModelServing without a topology: user network-topology policies
/// are written as given and nothing is chosen automatically.
pub fn plan_serving_groups(observed: &Observed) -> Plan {
    plan_serving_groups_with(observed, None)
}

/// Plans one reconcile of a ModelServing. With `topology` (the HyperNode/Node graph, once
/// listed), each group's PodGroup gets the network-topology tiers [`tier`] decides.
pub fn plan_serving_groups_with(observed: &Observed, topology: Option<&Topology>) -> Plan {
    let ms = &observed.ms;
    let (setting, setting_problem) = AutoTier::parse(
        ms.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(muster_api::labels::TIER_CHOICE))
            .map(String::as_str),
    );
    let mut tiers = Tiers {
        topology,
        setting,
        setting_problem,
        fresh: BTreeMap::new(),
        decisions: BTreeMap::new(),
    };
    let owner = Owner {
        name: ms.metadata.name.clone().unwrap_or_default(),
        namespace: ms.metadata.namespace.clone().unwrap_or_default(),
        uid: ms.metadata.uid.clone().unwrap_or_default(),
        queue: ms
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(muster_api::labels::VOLCANO_QUEUE_NAME).cloned()),
    };
    let mut plan = Plan::default();

    // Revisions: the one the spec asks for, and every recorded one (to rebuild old groups).
    let update_template = RevisionTemplate::of(ms);
    let update_rev = update_template.hash();
    let mut templates: BTreeMap<String, RevisionTemplate> = observed
        .revisions
        .iter()
        .filter_map(|cr| {
            let rev = cr
                .metadata
                .labels
                .as_ref()?
                .get(muster_api::labels::REVISION)?
                .clone();
            Some((rev, revision::template_of(cr)?))
        })
        .collect();
    if !templates.contains_key(&update_rev) {
        let number = observed
            .revisions
            .iter()
            .map(|cr| cr.revision)
            .max()
            .unwrap_or(0)
            + 1;
        plan.record_revision = Some(revision::controller_revision(
            &owner.name,
            &update_rev,
            number,
            &update_template,
        ));
    }
    templates.insert(update_rev.clone(), update_template.clone());
    let previous_current = ms.status.as_ref().and_then(|s| s.current_revision.clone());

    let bounds = rollout_bounds(ms);
    let role_rolling = ms
        .spec
        .rollout_strategy
        .as_ref()
        .is_some_and(|r| r.type_ == RolloutStrategyType::RoleRollingUpdate);
    let replicas = ms.spec.replicas.max(0);
    let groups = observe::group_objects(observed);

    // Health of every group that is not already on its way out.
    let mut health: BTreeMap<i32, GroupHealth> = BTreeMap::new();
    for (&index, objects) in &groups {
        if objects.all_terminating() {
            continue;
        }
        let rev = objects.revision().unwrap_or_else(|| update_rev.clone());
        let template = templates.get(&rev).unwrap_or(&update_template);
        health.insert(
            index,
            status::group_health(&owner, index, &rev, template, objects),
        );
    }
    // A group whose PodGroup is already at the update revision but whose pods are not (a
    // replacement interrupted between its two writes, e.g. by a controller restart) is still
    // outdated: finishing it must come out of the same maxUnavailable budget.
    let outdated: BTreeSet<i32> = health
        .iter()
        .filter(|(i, h)| {
            **i >= bounds.partition
                && (h.revision != update_rev || (!role_rolling && h.stale_instances > 0))
        })
        .map(|(i, _)| *i)
        .collect();
    // A rollout is in progress while outdated groups remain or the last one recorded in status
    // has not completed; surge groups stay until every group at or above the partition is
    // updated and ready (a replaced group is not ready while it rebuilds).
    let rolling =
        !outdated.is_empty() || previous_current.as_deref().is_some_and(|c| c != update_rev);
    let pending = health
        .iter()
        .filter(|(i, h)| **i >= bounds.partition && (!h.updated_to(&update_rev) || !h.ready))
        .count() as i32;
    let surge = if rolling {
        bounds.max_surge.min(pending)
    } else {
        0
    };
    let target = replicas + surge;

    // 1. Scale down: remove live groups beyond the target.
    let mut deleting: BTreeSet<i32> = BTreeSet::new();
    let live = health.len() as i32;
    if live > target {
        let mut order: Vec<(&i32, &GroupHealth)> = health.iter().collect();
        order.sort_by_key(|(i, h)| {
            (
                h.ready,
                !outdated.contains(i),
                groups[i].deletion_cost(),
                -**i,
            )
        });
        for (i, _) in order.into_iter().take((live - target) as usize) {
            deleting.insert(*i);
        }
    }

    // 2. Roll: replace outdated groups in place, not-ready ones first, then ready ones while at
    //    least replicas − maxUnavailable groups stay ready. A replaced group keeps its ordinal
    //    and PodGroup (re-applied at the update revision) and only loses its pods, so the
    //    group never disappears and is rebuilt by step 4 once the old pods are gone.
    let min_available = (replicas - bounds.max_unavailable).max(0);
    let mut ready_left = health
        .iter()
        .filter(|(i, h)| h.ready && !deleting.contains(i))
        .count() as i32;
    let mut candidates: Vec<i32> = outdated
        .iter()
        .copied()
        .filter(|i| !deleting.contains(i))
        .collect();
    candidates.sort_by_key(|i| (health[i].ready, -*i));
    let mut replacing: BTreeSet<i32> = BTreeSet::new();
    for i in candidates {
        // Role-level rollouts never replace whole groups: an outdated group adopts the update
        // revision (its PodGroup is re-applied) and step 4 then replaces its role instances
        // one by one within each role's partition and maxUnavailable.
        if !role_rolling && health[&i].ready {
            if ready_left - 1 < min_available {
                break;
            }
            ready_left -= 1;
        }
        replacing.insert(i);
        let pg = tiers.pod_group(
            &mut plan,
            &owner,
            i,
            &update_rev,
            &update_template,
            Some(&groups[&i]),
        );
        plan.apply_pod_groups.push(pg);
        if role_rolling {
            plan.note(
                "RollingUpdate",
                format!(
                    "group {} moves to revision {update_rev} role by role",
                    naming::group_name(&owner.name, i)
                ),
            );
            continue;
        }
        for (name, pod) in &groups[&i].pods {
            if !observe::is_terminating(&pod.metadata) {
                plan.deletes.push(Delete::Pod(name.clone()));
            }
        }
        plan.note(
            "RollingUpdate",
            format!(
                "replacing group {} ({} → {})",
                naming::group_name(&owner.name, i),
                health[&i].revision,
                update_rev
            ),
        );
    }
    for &i in &deleting {
        delete_group(&mut plan, &groups[&i]);
        plan.note(
            "ScaledDown",
            format!("deleting group {}", naming::group_name(&owner.name, i)),
        );
    }

    // 3. Scale up: fill the lowest free ordinals. An ordinal is free only once every object of
    //    its old group is gone, so names never collide with terminating pods.
    let occupied = groups.len() as i32;
    let mut missing = (target - occupied).max(0);
    let mut ordinal = 0;
    while missing > 0 {
        if !groups.contains_key(&ordinal) {
            let rev = if ordinal < bounds.partition {
                previous_current
                    .clone()
                    .filter(|r| templates.contains_key(r))
                    .unwrap_or_else(|| update_rev.clone())
            } else {
                update_rev.clone()
            };
            let template = &templates[&rev];
            create_group(&mut plan, &mut tiers, &owner, ordinal, &rev, template);
            plan.note(
                "GroupCreated",
                format!(
                    "creating group {} at revision {rev}",
                    naming::group_name(&owner.name, ordinal)
                ),
            );
            missing -= 1;
        }
        ordinal += 1;
    }

    // 4. Keep the groups that stay: missing objects, PodGroup drift, recovery.
    let recovery = ms.spec.recovery_policy;
    let grace = ms
        .spec
        .template
        .restart_grace_period_seconds
        .unwrap_or(0)
        .max(0);
    for (&index, h) in &health {
        if deleting.contains(&index) || replacing.contains(&index) {
            continue;
        }
        let template = templates.get(&h.revision).unwrap_or(&update_template);
        maintain_group(
            &mut plan,
            &mut tiers,
            &owner,
            index,
            &h.revision,
            template,
            &groups[&index],
            recovery,
            grace,
            observed.now,
            role_rolling,
            // An outdated group the budget holds back keeps its pods, whatever their revision.
            role_rolling || outdated.contains(&index),
        );
    }

    let budget = expand::disruption_budget(&owner);
    if observed
        .disruption_budget
        .as_ref()
        .and_then(|b| b.spec.as_ref())
        != budget.spec.as_ref()
    {
        plan.apply_disruption_budget = Some(budget);
    }

    plan.status = status::model_serving_status(
        ms,
        &health,
        &deleting,
        &update_rev,
        previous_current.as_deref(),
        &bounds,
    );
    for sg in &mut plan.status.serving_groups {
        sg.topology = tiers.decisions.get(&sg.index).cloned().or_else(|| {
            groups
                .get(&sg.index)
                .and_then(|g| g.pod_group)
                .and_then(tier::pinned)
        });
    }
    plan.prune_revisions = prunable_revisions(
        observed,
        &health,
        &update_rev,
        plan.status.current_revision.as_deref(),
    );
    plan
}

fn create_group(
    plan: &mut Plan,
    tiers: &mut Tiers<'_>,
    owner: &Owner,
    index: i32,
    rev: &str,
    template: &RevisionTemplate,
) {
    let pg = tiers.pod_group(plan, owner, index, rev, template, None);
    plan.apply_pod_groups.push(pg);
    for role in &template.template.roles {
        for r in 0..role.replicas {
            plan.create_services
                .push(expand::service(owner, index, rev, &role.name, r));
        }
    }
    for slot in expand::pod_slots(template) {
        plan.create_pods
            .push(expand::pod(owner, index, rev, template, slot));
    }
}

fn delete_group(plan: &mut Plan, objects: &GroupObjects<'_>) {
    for (name, pod) in &objects.pods {
        if !observe::is_terminating(&pod.metadata) {
            plan.deletes.push(Delete::Pod(name.clone()));
        }
    }
    for (name, svc) in &objects.services {
        if !observe::is_terminating(&svc.metadata) {
            plan.deletes.push(Delete::Service(name.clone()));
        }
    }
    if let Some(pg) = objects.pod_group {
        if !observe::is_terminating(&pg.metadata) {
            plan.deletes.push(Delete::PodGroup(
                pg.metadata.name.clone().unwrap_or_default(),
            ));
        }
    }
}

/// The state of one pod slot.
enum SlotState {
    Healthy,
    Missing,
    Terminating,
    /// Failed and its grace period is over.
    FailedExpired,
    /// Failed, grace period running for this many more seconds.
    FailedWaiting(i64),
}

#[allow(clippy::too_many_arguments)]
fn maintain_group(
    plan: &mut Plan,
    tiers: &mut Tiers<'_>,
    owner: &Owner,
    index: i32,
    rev: &str,
    template: &RevisionTemplate,
    objects: &GroupObjects<'_>,
    recovery: RecoveryPolicy,
    grace: i64,
    now: i64,
    role_rolling: bool,
    keep_other_revision_pods: bool,
) {
    // PodGroup first: pods without their gang would be scheduled one by one.
    let desired_pg = tiers.pod_group(plan, owner, index, rev, template, Some(objects));
    let pg_current = objects
        .pod_group
        .filter(|pg| !observe::is_terminating(&pg.metadata));
    let decision_of = |pg: &PodGroup| {
        pg.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(muster_api::labels::TIER_DECISION).cloned())
    };
    let decision_differs = |pg: &PodGroup| {
        let want = decision_of(&desired_pg);
        want.is_some() && decision_of(pg) != want
    };
    if pg_current.is_none_or(|pg| pg.spec != desired_pg.spec || decision_differs(pg))
        && objects
            .pod_group
            .is_none_or(|pg| !observe::is_terminating(&pg.metadata))
    {
        plan.apply_pod_groups.push(desired_pg);
    }
    let mut wanted_services = BTreeSet::new();
    for role in &template.template.roles {
        for r in 0..role.replicas {
            let name = naming::service_name(&owner.name, index, &role.name, r);
            if !objects.services.contains_key(&name) {
                plan.create_services
                    .push(expand::service(owner, index, rev, &role.name, r));
            }
            wanted_services.insert(name);
        }
    }
    // Role instances scaled away (role replicas lowered) or roles no longer in the template.
    for (name, svc) in &objects.services {
        if !wanted_services.contains(name) && !observe::is_terminating(&svc.metadata) {
            plan.deletes.push(Delete::Service(name.clone()));
        }
    }
    let wanted_pods: BTreeSet<String> = expand::pod_slots(template)
        .iter()
        .map(|s| naming::pod_name(&owner.name, index, s.role, s.role_index, s.pod_index))
        .collect();
    for (name, pod) in &objects.pods {
        if !wanted_pods.contains(name) && !observe::is_terminating(&pod.metadata) {
            plan.deletes.push(Delete::Pod(name.clone()));
        }
    }

    // Pod slots, grouped by the unit the recovery policy rebuilds.
    let slots = expand::pod_slots(template);
    let unit_of = |slot: &PodSlot<'_>| -> (String, i32) {
        match recovery {
            RecoveryPolicy::ServingGroupRecreate => (String::new(), 0),
            RecoveryPolicy::RoleRecreate => (slot.role.to_string(), slot.role_index),
            RecoveryPolicy::None => (format!("{}/{}", slot.role, slot.pod_index), slot.role_index),
        }
    };
    let mut units: BTreeMap<(String, i32), Vec<(PodSlot<'_>, SlotState)>> = BTreeMap::new();
    for slot in slots {
        let name = naming::pod_name(
            &owner.name,
            index,
            slot.role,
            slot.role_index,
            slot.pod_index,
        );
        let state = match objects.pods.get(&name) {
            None => SlotState::Missing,
            Some(p) if observe::is_terminating(&p.metadata) => SlotState::Terminating,
            // A pod of another revision inside this group (a replacement interrupted halfway)
            // is as good as failed: the recovery policy rebuilds its unit at the group's revision.
            Some(p)
                if p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(muster_api::labels::REVISION))
                    .map(String::as_str)
                    != Some(rev)
                    && !keep_other_revision_pods =>
            {
                SlotState::FailedExpired
            }
            Some(p) => match observe::pod_failed_since(p) {
                Some(since) if now - since >= grace => SlotState::FailedExpired,
                Some(since) => SlotState::FailedWaiting(grace - (now - since)),
                None => SlotState::Healthy,
            },
        };
        units.entry(unit_of(&slot)).or_default().push((slot, state));
    }

    for ((unit_role, _), members) in units {
        if members
            .iter()
            .any(|(_, s)| matches!(s, SlotState::Terminating))
        {
            continue; // wait for the old pods to go before rebuilding the unit
        }
        for (_, s) in &members {
            if let SlotState::FailedWaiting(left) = s {
                let left = (*left).max(1) as u64;
                plan.requeue_after_secs =
                    Some(plan.requeue_after_secs.map_or(left, |r| r.min(left)));
            }
        }
        let broken = members
            .iter()
            .any(|(_, s)| matches!(s, SlotState::Missing | SlotState::FailedExpired));
        if !broken {
            continue;
        }
        let present = members
            .iter()
            .filter(|(_, s)| !matches!(s, SlotState::Missing))
            .count();
        if present == 0 {
            // Every pod of the unit is gone: (re)create all of them.
            for (slot, _) in &members {
                plan.create_pods
                    .push(expand::pod(owner, index, rev, template, *slot));
            }
            continue;
        }
        // Some pods remain next to a missing or failed one: the policy says how much to rebuild.
        // Deleting them now and recreating once they are gone keeps a gang from running half
        // of its ranks (a TP group with one fresh worker cannot rejoin the old ones).
        let what = match recovery {
            RecoveryPolicy::ServingGroupRecreate => {
                format!("group {}", naming::group_name(&owner.name, index))
            }
            RecoveryPolicy::RoleRecreate => format!(
                "role {unit_role} of group {}",
                naming::group_name(&owner.name, index)
            ),
            RecoveryPolicy::None => "pod".to_string(),
        };
        for (slot, s) in &members {
            let name = naming::pod_name(
                &owner.name,
                index,
                slot.role,
                slot.role_index,
                slot.pod_index,
            );
            match s {
                SlotState::Missing => {
                    if recovery == RecoveryPolicy::None {
                        plan.create_pods
                            .push(expand::pod(owner, index, rev, template, *slot));
                    }
                }
                _ => {
                    if recovery != RecoveryPolicy::None || matches!(s, SlotState::FailedExpired) {
                        plan.deletes.push(Delete::Pod(name));
                    }
                }
            }
        }
        plan.events.push(PlannedEvent {
            warning: true,
            reason: "Recovering".into(),
            note: format!("a pod failed or disappeared; recreating the {what} ({recovery:?})"),
        });
    }
    if role_rolling {
        roll_role_instances(plan, owner, index, rev, template, objects);
    }
}

/// Role-level rolling update inside one group: per role, outdated role instances (a pod whose
/// role-template hash or revision differs) at or above the role's `partition` lose their pods,
/// not-ready ones first, ready ones only while `replicas − maxUnavailable` instances of the role
/// stay ready. The recovery step rebuilds them from the group's (update) template.
fn roll_role_instances(
    plan: &mut Plan,
    owner: &Owner,
    index: i32,
    rev: &str,
    template: &RevisionTemplate,
    objects: &GroupObjects<'_>,
) {
    for role in &template.template.roles {
        let hash = template.role_hash(role);
        let partition = resolve(
            role.rolling_update.partition.as_ref(),
            role.replicas,
            0,
            true,
        );
        let max_unavailable = resolve(
            role.rolling_update.max_unavailable.as_ref(),
            role.replicas,
            1,
            false,
        )
        .max(1);
        let mut ready = 0;
        let mut outdated: Vec<(bool, i32, Vec<String>)> = Vec::new();
        for r in 0..role.replicas {
            let names: Vec<String> = (0..expand::pods_per_instance(role))
                .map(|i| naming::pod_name(&owner.name, index, &role.name, r, i))
                .collect();
            let pods: Vec<&Pod> = names
                .iter()
                .filter_map(|n| objects.pods.get(n).copied())
                .collect();
            let instance_ready =
                pods.len() == names.len() && pods.iter().all(|p| observe::pod_ready(p));
            ready += i32::from(instance_ready);
            let stale = pods
                .iter()
                .any(|p| !observe::is_terminating(&p.metadata) && !pod_matches(p, rev, &hash));
            if stale && r >= partition {
                outdated.push((instance_ready, r, names));
            }
        }
        outdated.sort_by_key(|(is_ready, r, _)| (*is_ready, -*r));
        let mut budget = ready - (role.replicas - max_unavailable);
        for (is_ready, r, names) in outdated {
            if is_ready {
                if budget <= 0 {
                    break;
                }
                budget -= 1;
            }
            for name in names {
                let live = objects
                    .pods
                    .get(&name)
                    .is_some_and(|p| !observe::is_terminating(&p.metadata));
                if live && !plan.deletes.contains(&Delete::Pod(name.clone())) {
                    plan.deletes.push(Delete::Pod(name));
                }
            }
            plan.note(
                "RollingUpdate",
                format!(
                    "replacing role instance {} of group {}",
                    naming::role_id(&role.name, r),
                    naming::group_name(&owner.name, index)
                ),
            );
        }
    }
}

/// True when a pod was built from revision `rev` and role-template hash `hash`.
pub(crate) fn pod_matches(pod: &Pod, rev: &str, hash: &str) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    get(muster_api::labels::REVISION) == Some(rev)
        || get(muster_api::labels::ROLE_TEMPLATE_HASH) == Some(hash)
}

/// Revisions no live group uses and that are neither current nor the update revision, oldest
/// first beyond a history of 10.
fn prunable_revisions(
    observed: &Observed,
    health: &BTreeMap<i32, GroupHealth>,
    update_rev: &str,
    current: Option<&str>,
) -> Vec<String> {
    const HISTORY: usize = 10;
    let used: BTreeSet<&str> = health
        .values()
        .map(|h| h.revision.as_str())
        .chain([update_rev])
        .chain(current)
        .collect();
    let mut unused: Vec<&ControllerRevision> = observed
        .revisions
        .iter()
        .filter(|cr| {
            let rev = cr
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(muster_api::labels::REVISION));
            rev.is_none_or(|r| !used.contains(r.as_str()))
        })
        .collect();
    unused.sort_by_key(|cr| cr.revision);
    let excess = unused.len().saturating_sub(HISTORY);
    unused
        .into_iter()
        .take(excess)
        .filter_map(|cr| cr.metadata.name.clone())
        .collect()
}
