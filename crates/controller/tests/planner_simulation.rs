//! Property tests of the ModelServing planner against a small simulated cluster: for random
//! specs, rollouts never touch partition-protected groups, never exceed maxSurge, never drop
//! below replicas − maxUnavailable ready groups, and converge.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use muster_api::labels;
use muster_api::serving::{ModelServing, RollingUpdateConfiguration, RolloutStrategy};
use muster_api::volcano::PodGroup;
use muster_controller::serving::observe::Observed;
use muster_controller::serving::plan::{plan_serving_groups, Delete, Plan};
use proptest::prelude::*;

/// A cluster that does what the API server, scheduler and kubelet would: created pods become
/// Ready one step later, deleted objects disappear one step later.
struct World {
    ms: ModelServing,
    pods: BTreeMap<String, Pod>,
    services: BTreeMap<String, Service>,
    pod_groups: BTreeMap<String, PodGroup>,
    revisions: BTreeMap<String, ControllerRevision>,
    now: i64,
}

fn terminating() -> Option<Time> {
    Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))
}

impl World {
    fn new(ms: ModelServing) -> Self {
        World {
            ms,
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            pod_groups: BTreeMap::new(),
            revisions: BTreeMap::new(),
            now: 1_000,
        }
    }

    fn observed(&self) -> Observed {
        Observed {
            ms: self.ms.clone(),
            pods: self.pods.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            pod_groups: self.pod_groups.values().cloned().collect(),
            revisions: self.revisions.values().cloned().collect(),
            disruption_budget: None,
            now: self.now,
        }
    }

    fn apply(&mut self, plan: &Plan) {
        if let Some(cr) = &plan.record_revision {
            self.revisions
                .insert(cr.metadata.name.clone().unwrap(), cr.clone());
        }
        for pg in &plan.apply_pod_groups {
            self.pod_groups
                .insert(pg.metadata.name.clone().unwrap(), pg.clone());
        }
        for s in &plan.create_services {
            self.services
                .entry(s.metadata.name.clone().unwrap())
                .or_insert_with(|| s.clone());
        }
        for p in &plan.create_pods {
            self.pods
                .entry(p.metadata.name.clone().unwrap())
                .or_insert_with(|| p.clone());
        }
        for d in &plan.deletes {
            let meta = match d {
                Delete::Pod(n) => self.pods.get_mut(n).map(|o| &mut o.metadata),
                Delete::Service(n) => self.services.get_mut(n).map(|o| &mut o.metadata),
                Delete::PodGroup(n) => self.pod_groups.get_mut(n).map(|o| &mut o.metadata),
            };
            meta.expect("plan deletes only what exists")
                .deletion_timestamp = terminating();
        }
        for name in &plan.prune_revisions {
            self.revisions.remove(name);
        }
        self.ms.status = Some(plan.status.clone());
    }

    /// Time passes: deletions complete, pending pods start and become Ready.
    fn step(&mut self) {
        self.pods
            .retain(|_, p| p.metadata.deletion_timestamp.is_none());
        self.services
            .retain(|_, s| s.metadata.deletion_timestamp.is_none());
        self.pod_groups
            .retain(|_, g| g.metadata.deletion_timestamp.is_none());
        for p in self.pods.values_mut() {
            p.status = Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            p.spec.as_mut().unwrap().node_name = Some("node".into());
        }
        self.now += 5;
    }

    /// (group index, revision, ready) of every live group, from its pods.
    fn groups(&self) -> BTreeMap<i32, (String, bool)> {
        let mut out: BTreeMap<i32, (String, bool)> = BTreeMap::new();
        let expected = self
            .ms
            .spec
            .template
            .roles
            .iter()
            .map(|r| r.replicas * (1 + r.worker_replicas))
            .sum::<i32>() as usize;
        let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
        for p in self.pods.values() {
            let l = p.metadata.labels.as_ref().unwrap();
            let g: i32 = l[labels::GROUP_INDEX].parse().unwrap();
            let ready = p.metadata.deletion_timestamp.is_none() && p.status.is_some();
            let e = out.entry(g).or_insert((l[labels::REVISION].clone(), true));
            e.1 &= ready;
            if l[labels::REVISION] != e.0 {
                e.1 = false;
            }
            *counts.entry(g).or_default() += usize::from(ready);
        }
        for (g, e) in out.iter_mut() {
            e.1 &= counts.get(g).copied().unwrap_or(0) == expected;
        }
        out
    }
}

fn sample(
    replicas: i32,
    roles: &[(i32, i32)],
    surge: i32,
    unavailable: i32,
    partition: i32,
) -> ModelServing {
    let text = include_str!("../../../config/samples/modelserving-multinode-tp.yaml");
    let mut ms: ModelServing = serde_yaml::from_str(text).unwrap();
    ms.metadata.uid = Some("uid".into());
    ms.metadata.namespace = Some("ns".into());
    ms.spec.replicas = replicas;
    let base = ms.spec.template.roles[0].clone();
    ms.spec.template.roles = roles
        .iter()
        .enumerate()
        .map(|(i, (r, w))| {
            let mut role = base.clone();
            role.name = format!("role{i}");
            role.replicas = *r;
            role.worker_replicas = *w;
            role.tensor_parallel_size = None;
            role
        })
        .collect();
    ms.spec.rollout_strategy = Some(RolloutStrategy {
        type_: Default::default(),
        rolling_update_configuration: Some(RollingUpdateConfiguration {
            max_unavailable: Some(IntOrString::Int(unavailable)),
            max_surge: Some(IntOrString::Int(surge)),
            partition: Some(IntOrString::Int(partition)),
        }),
    });
    ms
}

/// Plans and applies until nothing changes; returns the number of steps. Checks `invariant`
/// on the world after every step.
fn converge(world: &mut World, mut invariant: impl FnMut(&World, &Plan)) -> usize {
    for steps in 0..200 {
        let plan = plan_serving_groups(&world.observed());
        let idle = plan.create_pods.is_empty()
            && plan.deletes.is_empty()
            && plan.create_services.is_empty()
            && plan.apply_pod_groups.is_empty()
            && plan.record_revision.is_none();
        world.apply(&plan);
        invariant(world, &plan);
        world.step();
        if idle {
            return steps;
        }
    }
    panic!("did not converge in 200 steps: {:?}", world.groups());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rollouts_respect_partition_surge_and_availability_and_converge(
        replicas in 1i32..6,
        roles in prop::collection::vec((1i32..3, 0i32..3), 1..3),
        surge in 0i32..3,
        unavailable in 0i32..3,
        partition_frac in 0.0f64..1.0,
    ) {
        let unavailable = if surge == 0 && unavailable == 0 { 1 } else { unavailable };
        let partition = (partition_frac * replicas as f64) as i32;
        let mut world = World::new(sample(replicas, &roles, surge, unavailable, partition));
        converge(&mut world, |_, _| {});
        let before = world.groups();
        prop_assert_eq!(before.len() as i32, replicas);
        prop_assert!(before.values().all(|g| g.1), "all groups ready after creation");
        let old_rev = before.values().next().unwrap().0.clone();

        // Change the engine image: a new revision.
        world.ms.spec.template.roles[0].entry_template.spec.containers[0].image = Some("engine:v2".into());
        let min_ready = (replicas - unavailable).max(0) as usize;
        converge(&mut world, |w, plan| {
            let groups = w.groups();
            assert!(groups.len() as i32 <= replicas + surge, "more than replicas + maxSurge groups: {groups:?}");
            let ready = groups.values().filter(|g| g.1).count();
            assert!(ready >= min_ready, "ready groups {ready} < replicas − maxUnavailable {min_ready}: {groups:?}");
            for d in &plan.deletes {
                if let Delete::Pod(name) = d {
                    let g: i32 = w.pods[name].metadata.labels.as_ref().unwrap()[labels::GROUP_INDEX].parse().unwrap();
                    assert!(g >= partition, "deleted pod {name} of partition-protected group {g}");
                }
            }
        });
        let after = world.groups();
        prop_assert_eq!(after.len() as i32, replicas, "surge groups removed: {:?}", after);
        for (g, (rev, ready)) in &after {
            prop_assert!(*ready);
            if *g < partition {
                prop_assert_eq!(rev, &old_rev, "group {} below the partition changed", g);
            } else {
                prop_assert_ne!(rev, &old_rev, "group {} at or above the partition not updated", g);
            }
        }
        // The last plan is a fixed point: planning again changes nothing.
        let again = plan_serving_groups(&world.observed());
        prop_assert!(again.create_pods.is_empty() && again.deletes.is_empty());
    }

    #[test]
    fn a_replacement_interrupted_between_its_writes_still_respects_availability(
        replicas in 2i32..6,
        surge in 0i32..3,
        unavailable in 0i32..2,
        crash_at in 0usize..6,
    ) {
        // A controller killed after writing a group's PodGroup at the new revision but before
        // deleting its pods; the next controller must finish that replacement within the
        // same maxUnavailable budget, not on top of another one.
        let unavailable = if surge == 0 && unavailable == 0 { 1 } else { unavailable };
        let mut world = World::new(sample(replicas, &[(1, 1)], surge, unavailable, 0));
        converge(&mut world, |_, _| {});
        world.ms.spec.template.roles[0].entry_template.spec.containers[0].image = Some("engine:v2".into());
        let min_ready = (replicas - unavailable).max(0) as usize;
        let mut crashed = false;
        for step in 0..200 {
            let plan = plan_serving_groups(&world.observed());
            let replaces = plan.deletes.iter().any(|d| matches!(d, Delete::Pod(_)));
            if !crashed && step >= crash_at && replaces {
                crashed = true;
                let mut partial = plan.clone();
                partial.deletes.clear();
                partial.create_pods.clear();
                partial.create_services.clear();
                world.apply(&partial);
            } else {
                world.apply(&plan);
            }
            let groups = world.groups();
            let ready = groups.values().filter(|g| g.1).count();
            prop_assert!(ready >= min_ready, "ready groups {} < replicas − maxUnavailable {}: {:?}", ready, min_ready, groups);
            world.step();
            let idle = plan.create_pods.is_empty() && plan.deletes.is_empty()
                && plan.apply_pod_groups.is_empty() && plan.record_revision.is_none();
            if idle && step > crash_at {
                break;
            }
        }
        let after = world.groups();
        prop_assert_eq!(after.len() as i32, replicas);
        prop_assert!(after.values().all(|g| g.1), "not converged: {:?}", after);
    }

    #[test]
    fn scaling_fills_lowest_ordinals_and_keeps_objects_consistent(
        first in 0i32..7,
        second in 0i32..7,
        roles in prop::collection::vec((1i32..3, 0i32..2), 1..3),
    ) {
        let mut world = World::new(sample(first, &roles, 0, 1, 0));
        converge(&mut world, |_, _| {});
        world.ms.spec.replicas = second;
        converge(&mut world, |_, _| {});
        let groups = world.groups();
        prop_assert_eq!(groups.len() as i32, second);
        // PodGroups and Services exist exactly for the live groups.
        let pg: Vec<i32> = world.pod_groups.values().map(|p| p.metadata.labels.as_ref().unwrap()[labels::GROUP_INDEX].parse().unwrap()).collect();
        prop_assert_eq!(pg, groups.keys().copied().collect::<Vec<_>>());
        let instances: i32 = roles.iter().map(|r| r.0).sum();
        prop_assert_eq!(world.services.len() as i32, second * instances);
        if second <= first {
            // All groups were ready, so scale-down removed the highest ordinals.
            prop_assert_eq!(groups.keys().copied().collect::<Vec<_>>(), (0..second).collect::<Vec<_>>());
        }
    }
}

#[test]
fn scale_down_prefers_not_ready_groups_then_highest_index() {
    let mut world = World::new(sample(4, &[(1, 0)], 0, 1, 0));
    converge(&mut world, |_, _| {});
    // Group 1 breaks (its pod is not ready), then the user scales to 3: group 1 goes first.
    let name = world
        .pods
        .keys()
        .find(|n| n.starts_with("deepseek-tp16-1-"))
        .unwrap()
        .clone();
    world.pods.get_mut(&name).unwrap().status = None;
    world.ms.spec.replicas = 3;
    let plan = plan_serving_groups(&world.observed());
    assert!(
        plan.deletes.contains(&Delete::Pod(name)),
        "{:?}",
        plan.deletes
    );
    assert!(plan.deletes.iter().all(|d| match d {
        Delete::Pod(n) | Delete::Service(n) | Delete::PodGroup(n) =>
            n.starts_with("deepseek-tp16-1"),
    }));
    // Then scaling up again fills the hole at ordinal 1.
    world.apply(&plan);
    world.step();
    world.ms.spec.replicas = 4;
    converge(&mut world, |_, _| {});
    assert_eq!(
        world.groups().keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
}

#[test]
fn failed_pod_waits_for_the_grace_period_then_its_role_is_rebuilt() {
    let mut ms = sample(1, &[(2, 1)], 0, 1, 0);
    ms.spec.template.restart_grace_period_seconds = Some(30);
    let mut world = World::new(ms);
    converge(&mut world, |_, _| {});
    let victim = "deepseek-tp16-0-role0-1-1".to_string();
    let status = world
        .pods
        .get_mut(&victim)
        .unwrap()
        .status
        .as_mut()
        .unwrap();
    status.phase = Some("Failed".into());
    status.conditions = Some(vec![PodCondition {
        type_: "Ready".into(),
        status: "False".into(),
        last_transition_time: Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(world.now).unwrap(),
        )),
        ..Default::default()
    }]);
    let plan = plan_serving_groups(&world.observed());
    assert!(
        plan.deletes.is_empty(),
        "grace period not honoured: {:?}",
        plan.deletes
    );
    assert_eq!(plan.requeue_after_secs, Some(30));
    world.now += 31;
    let plan = plan_serving_groups(&world.observed());
    let mut deleted: Vec<_> = plan.deletes.clone();
    deleted.sort();
    assert_eq!(
        deleted,
        vec![
            Delete::Pod("deepseek-tp16-0-role0-1-0".into()),
            Delete::Pod(victim)
        ],
        "RoleRecreate rebuilds exactly the failed pod's role instance"
    );
}

#[test]
fn role_rolling_update_replaces_only_the_changed_role_one_instance_at_a_time() {
    let mut ms = sample(2, &[(3, 1), (2, 0)], 0, 1, 0);
    ms.spec.rollout_strategy = Some(RolloutStrategy {
        type_: muster_api::serving::RolloutStrategyType::RoleRollingUpdate,
        rolling_update_configuration: None,
    });
    // Role 0 keeps instance 0 on the old template (role-level partition 1).
    ms.spec.template.roles[0].rolling_update.partition = Some(IntOrString::Int(1));
    let mut world = World::new(ms);
    converge(&mut world, |_, _| {});
    let uid_of = |w: &World| -> BTreeMap<String, String> {
        w.pods
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    p.metadata.labels.as_ref().unwrap()[labels::ROLE_TEMPLATE_HASH].clone(),
                )
            })
            .collect()
    };
    let before = uid_of(&world);
    let groups_before: Vec<i32> = world.groups().keys().copied().collect();

    world.ms.spec.template.roles[0]
        .entry_template
        .spec
        .containers[0]
        .image = Some("engine:v2".into());
    let mut max_role0_instances_down = 0;
    converge(&mut world, |w, plan| {
        let mut down: BTreeMap<String, usize> = BTreeMap::new();
        for d in &plan.deletes {
            let Delete::Pod(name) = d else {
                panic!("role rollout deleted a {d:?}")
            };
            assert!(
                name.contains("-role0-"),
                "only role0 changes, but {name} was deleted"
            );
            assert!(
                !name.contains("-role0-0-"),
                "role0 instance 0 is below the role partition: {name}"
            );
            let group = name.split('-').nth(2).unwrap().to_string();
            *down.entry(group).or_default() += 1;
        }
        // One instance (entry + worker = 2 pods) per group at a time.
        for (_, pods) in down {
            max_role0_instances_down = max_role0_instances_down.max(pods / 2);
        }
        assert_eq!(
            w.groups().keys().copied().collect::<Vec<_>>(),
            groups_before,
            "groups are never replaced whole"
        );
    });
    assert_eq!(max_role0_instances_down, 1);
    let after = uid_of(&world);
    for (name, hash) in &after {
        let changed = before[name] != *hash;
        let should = name.contains("-role0-") && !name.contains("-role0-0-");
        assert_eq!(changed, should, "{name}: changed={changed}");
    }
    let status = world.ms.status.clone().unwrap();
    assert_eq!(
        status.updated_replicas, 2,
        "groups count as updated once every unprotected instance is"
    );
}
