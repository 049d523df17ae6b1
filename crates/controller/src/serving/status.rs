//! Status: how each ServingGroup is doing, and the ModelServing status and conditions a user
//! reads with `kubectl get` and waits on with `kubectl wait --for=condition=Available`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use muster_api::labels::{self, conditions};
use muster_api::serving::{ModelServing, ModelServingStatus, RoleStatus, ServingGroupStatus};

use super::expand::{self, Owner};
use super::naming;
use super::observe::{self, GroupObjects};
use super::plan::RolloutBounds;
use super::revision::RevisionTemplate;

/// How one live ServingGroup is doing.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupHealth {
    /// Revision the group runs.
    pub revision: String,
    /// Every pod exists and is Ready.
    pub ready: bool,
    /// Creating, Scheduling, Running, Failed.
    pub phase: String,
    /// Why it is not Running (the PodGroup's unschedulable message, a failed pod).
    pub message: Option<String>,
    /// The gang cannot be placed.
    pub unschedulable: bool,
    /// A pod has failed.
    pub failed: bool,
    /// Per-role counts.
    pub roles: Vec<RoleStatus>,
    /// Role instances (at or above their role's partition) still running pods of an older
    /// role template: a role-level rollout has not reached them yet.
    pub stale_instances: i32,
}

impl GroupHealth {
    /// Runs `update_rev` in every pod a rollout is meant to reach.
    pub fn updated_to(&self, update_rev: &str) -> bool {
        self.revision == update_rev && self.stale_instances == 0
    }
}

/// Assesses a group against the template of its own revision.
pub fn group_health(
    owner: &Owner,
    index: i32,
    rev: &str,
    template: &RevisionTemplate,
    objects: &GroupObjects<'_>,
) -> GroupHealth {
    let mut all_ready = true;
    let mut any_failed = None;
    let mut any_unscheduled = false;
    let mut roles = Vec::new();
    let mut stale_instances = 0;
    for role in &template.template.roles {
        let hash = template.role_hash(role);
        let partition = super::plan::resolve(
            role.rolling_update.partition.as_ref(),
            role.replicas,
            0,
            true,
        );
        let mut ready_instances = 0;
        for r in 0..role.replicas {
            let stale = (0..expand::pods_per_instance(role)).any(|i| {
                let name = naming::pod_name(&owner.name, index, &role.name, r, i);
                objects.pods.get(&name).is_some_and(|p| {
                    !observe::is_terminating(&p.metadata)
                        && !super::plan::pod_matches(p, rev, &hash)
                })
            });
            stale_instances += i32::from(stale && r >= partition);
            let mut instance_ready = true;
            for i in 0..expand::pods_per_instance(role) {
                let name = naming::pod_name(&owner.name, index, &role.name, r, i);
                match objects.pods.get(&name) {
                    Some(p) if observe::pod_ready(p) => {}
                    Some(p) => {
                        instance_ready = false;
                        if observe::pod_failed_since(p).is_some() {
                            any_failed = Some(name.clone());
                        }
                        if !observe::pod_scheduled(p) {
                            any_unscheduled = true;
                        }
                    }
                    None => instance_ready = false,
                }
            }
            if instance_ready {
                ready_instances += 1;
            } else {
                all_ready = false;
            }
        }
        roles.push(RoleStatus {
            name: role.name.clone(),
            replicas: role.replicas,
            ready_replicas: ready_instances,
        });
    }
    let unschedulable_msg = objects.pod_group.and_then(|pg| {
        let conds = pg.status.as_ref()?.conditions.as_ref()?;
        conds
            .iter()
            .find(|c| {
                c.type_.as_deref() == Some("Unschedulable") && c.status.as_deref() == Some("True")
            })
            .map(|c| {
                c.message
                    .clone()
                    .or_else(|| c.reason.clone())
                    .unwrap_or_else(|| "gang cannot be scheduled".into())
            })
    });
    let unschedulable = !all_ready && any_unscheduled && unschedulable_msg.is_some();
    let (phase, message) = if all_ready {
        ("Running", None)
    } else if let Some(pod) = &any_failed {
        ("Failed", Some(format!("pod {pod} failed")))
    } else if unschedulable {
        ("Scheduling", unschedulable_msg)
    } else if any_unscheduled {
        ("Scheduling", None)
    } else {
        ("Creating", None)
    };
    GroupHealth {
        revision: rev.to_string(),
        ready: all_ready,
        phase: phase.into(),
        message,
        unschedulable,
        failed: any_failed.is_some(),
        roles,
        stale_instances,
    }
}

/// The ModelServing status for the observed groups (`deleting`: groups this plan removes).
pub fn model_serving_status(
    ms: &ModelServing,
    health: &BTreeMap<i32, GroupHealth>,
    deleting: &BTreeSet<i32>,
    update_rev: &str,
    previous_current: Option<&str>,
    bounds: &RolloutBounds,
) -> ModelServingStatus {
    let name = ms.metadata.name.clone().unwrap_or_default();
    let replicas = ms.spec.replicas.max(0);
    let ready = health.values().filter(|h| h.ready).count() as i32;
    let available = health
        .iter()
        .filter(|(i, h)| h.ready && !deleting.contains(i))
        .count() as i32;
    let updated = health.values().filter(|h| h.updated_to(update_rev)).count() as i32;
    let outdated: Vec<i32> = health
        .iter()
        .filter(|(i, h)| **i >= bounds.partition && !h.updated_to(update_rev))
        .map(|(i, _)| *i)
        .collect();
    // The rollout is complete (current revision = update revision) once every group runs the
    // update revision and is ready.
    let all_updated = health.len() as i32 >= replicas
        && health.values().all(|h| h.updated_to(update_rev) && h.ready);
    let current_rev = match previous_current {
        Some(previous) if !all_updated => previous.to_string(),
        _ => update_rev.to_string(),
    };
    let current = health
        .values()
        .filter(|h| h.revision == current_rev)
        .count() as i32;
    let not_ready: Vec<i32> = health
        .iter()
        .filter(|(_, h)| !h.ready)
        .map(|(i, _)| *i)
        .collect();

    let previous = ms
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = ms.metadata.generation;
    let mut conds = Vec::new();
    let is_available = available >= replicas;
    conds.push(condition(
        &previous,
        generation,
        conditions::AVAILABLE,
        is_available,
        if is_available {
            "AllGroupsReady"
        } else {
            "GroupsNotReady"
        },
        if is_available {
            format!("{available} of {replicas} serving groups ready")
        } else {
            format!("{available} of {replicas} serving groups ready; not ready: {not_ready:?}")
        },
    ));
    let progressing = !not_ready.is_empty() || health.len() as i32 != replicas;
    conds.push(condition(
        &previous,
        generation,
        conditions::PROGRESSING,
        progressing,
        if progressing {
            "GroupProgressing"
        } else {
            "Stable"
        },
        if progressing {
            format!(
                "{} groups exist for {replicas} replicas; not ready: {not_ready:?}",
                health.len()
            )
        } else {
            "every serving group is ready".into()
        },
    ));
    conds.push(condition(
        &previous,
        generation,
        conditions::UPDATE_IN_PROGRESS,
        !outdated.is_empty(),
        if outdated.is_empty() {
            "UpdateComplete"
        } else {
            "GroupsUpdating"
        },
        if outdated.is_empty() {
            format!(
                "groups at or above partition {} run revision {update_rev}",
                bounds.partition
            )
        } else {
            format!("groups {outdated:?} move to revision {update_rev}")
        },
    ));
    let degraded: Vec<(i32, &GroupHealth)> = health
        .iter()
        .filter(|(_, h)| h.unschedulable || h.failed)
        .map(|(i, h)| (*i, h))
        .collect();
    let (reason, message) = match degraded.first() {
        Some((i, h)) if h.unschedulable => (
            "Unschedulable",
            format!(
                "group {} cannot be scheduled: {}",
                naming::group_name(&name, *i),
                h.message.clone().unwrap_or_default()
            ),
        ),
        Some((i, h)) => (
            "PodFailed",
            format!(
                "group {}: {}",
                naming::group_name(&name, *i),
                h.message.clone().unwrap_or_default()
            ),
        ),
        None => ("AsExpected", "no group is failing".into()),
    };
    conds.push(condition(
        &previous,
        generation,
        conditions::DEGRADED,
        !degraded.is_empty(),
        reason,
        message,
    ));

    let first_role = ms
        .spec
        .template
        .roles
        .first()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    ModelServingStatus {
        observed_generation: generation,
        replicas: health.len() as i32,
        ready_replicas: ready,
        available_replicas: available,
        updated_replicas: updated,
        current_replicas: current,
        current_revision: Some(current_rev),
        update_revision: Some(update_rev.to_string()),
        // One pod per group (the first role's first entry pod), so HPA-style consumers of the
        // scale subresource count groups, not pods.
        label_selector: Some(format!(
            "{}={name},{}=true,{}={first_role},{}={first_role}-0",
            labels::MODEL_SERVING_NAME,
            labels::ENTRY,
            labels::ROLE,
            labels::ROLE_ID
        )),
        conditions: conds,
        serving_groups: health
            .iter()
            .map(|(i, h)| ServingGroupStatus {
                name: naming::group_name(&name, *i),
                index: *i,
                phase: if deleting.contains(i) {
                    "Deleting".into()
                } else {
                    h.phase.clone()
                },
                revision: Some(h.revision.clone()),
                message: h.message.clone(),
                roles: h.roles.clone(),
                topology: None,
            })
            .collect(),
    }
}

/// A condition, keeping the previous transition time when the status did not change.
fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: last,
        observed_generation: generation,
    }
}
