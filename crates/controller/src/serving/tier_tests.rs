//! Table tests of the tier decision and of the planner writing it into PodGroups, status and
//! Events, over a small topology: 2 spines × 2 racks × 2 nodes × 8 GPUs (a rack holds 16 GPUs,
//! a spine 32).

use k8s_openapi::api::core::v1::{Node, Pod};
use muster_api::labels::{TIER_CHOICE, TIER_DECISION};
use muster_api::serving::{ModelServing, ServingGroupTemplate};
use muster_api::volcano::{HyperNode, NetworkTopologyMode, NetworkTopologySpec, PodGroup};
use muster_topology::Topology;
use serde_json::{json, Value};

use super::*;
use crate::serving::observe::Observed;
use crate::serving::plan::{plan_serving_groups_with, Plan};

fn node(name: &str, gpus: i64) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name},
        "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string(), "cpu": "64", "memory": "512Gi"}}}))
    .unwrap()
}

fn hypernode(name: &str, tier: i32, tier_name: &str, kind: &str, members: &[String]) -> HyperNode {
    let members: Vec<Value> = members
        .iter()
        .map(|m| json!({"type": kind, "selector": {"exactMatch": {"name": m}}}))
        .collect();
    serde_json::from_value(json!({"apiVersion": "topology.volcano.sh/v1alpha1", "kind": "HyperNode",
        "metadata": {"name": name}, "spec": {"tier": tier, "tierName": tier_name, "members": members}}))
    .unwrap()
}

/// `nodes_per_rack` nodes of 8 GPUs per rack, 2 racks per spine, 2 spines.
fn topology(nodes_per_rack: usize) -> Topology {
    let (mut nodes, mut hns) = (Vec::new(), Vec::new());
    for s in 0..2 {
        let mut racks = Vec::new();
        for r in 0..2 {
            let members: Vec<String> = (0..nodes_per_rack)
                .map(|n| format!("n-{s}-{r}-{n}"))
                .collect();
            nodes.extend(members.iter().map(|n| node(n, 8)));
            hns.push(hypernode(
                &format!("rack-{s}-{r}"),
                1,
                "rack",
                "Node",
                &members,
            ));
            racks.push(format!("rack-{s}-{r}"));
        }
        hns.push(hypernode(
            &format!("spine-{s}"),
            2,
            "spine",
            "HyperNode",
            &racks,
        ));
    }
    Topology::build(&hns, &nodes, &[])
}

fn pod_template(gpus: i64) -> Value {
    json!({"spec": {"containers": [{"name": "engine", "image": "muster/engine-sim:latest",
        "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}})
}

/// A role of `instances` × (1 + `workers`) pods of `gpus` GPUs each.
fn role(name: &str, instances: i32, workers: i32, gpus: i64) -> Value {
    let mut r = json!({"name": name, "replicas": instances, "workerReplicas": workers,
        "entryTemplate": pod_template(gpus)});
    if workers > 0 {
        r["workerTemplate"] = pod_template(gpus);
    }
    r
}

fn template(roles: Vec<Value>, network_topology: Option<Value>) -> ServingGroupTemplate {
    let mut t = json!({"roles": roles});
    if let Some(nt) = network_topology {
        t["networkTopology"] = nt;
    }
    serde_json::from_value(t).unwrap()
}

fn tier_of(s: &ScopeDecision) -> Option<(NetworkTopologyMode, Option<i32>)> {
    s.network_topology
        .as_ref()
        .map(|n| (n.mode, n.highest_tier_allowed))
}

const HARD: NetworkTopologyMode = NetworkTopologyMode::Hard;
const SOFT: NetworkTopologyMode = NetworkTopologyMode::Soft;

#[test]
fn decisions_follow_the_lowest_tier_that_can_hold_each_scope() {
    type Tier = Option<(NetworkTopologyMode, Option<i32>)>;
    struct Case {
        name: &'static str,
        template: ServingGroupTemplate,
        setting: AutoTier,
        group: Tier,
        role: Tier,
        automatic: bool,
        infeasible: bool,
        message: &'static str,
    }
    let tp16 = || vec![role("engine", 1, 1, 8)];
    let cases = [
        Case {
            name: "TP over two nodes fits a rack",
            template: template(tp16(), None),
            setting: AutoTier::Hard,
            group: Some((HARD, Some(1))),
            role: Some((HARD, Some(1))),
            automatic: true,
            infeasible: false,
            message: "tier 1 is the lowest tier",
        },
        Case {
            name: "prefill + decode: each instance a rack, the group a spine",
            template: template(
                vec![role("prefill", 1, 1, 8), role("decode", 1, 1, 8)],
                None,
            ),
            setting: AutoTier::Hard,
            group: Some((HARD, Some(2))),
            role: Some((HARD, Some(1))),
            automatic: true,
            infeasible: false,
            message: "tier 2 is the lowest tier",
        },
        Case {
            name: "bigger than any spine: nothing is written, and said so",
            template: template(vec![role("engine", 1, 4, 8)], None),
            setting: AutoTier::Hard,
            group: None,
            role: None,
            automatic: true,
            infeasible: false,
            message: "no HyperNode holds it",
        },
        Case {
            name: "soft setting",
            template: template(tp16(), None),
            setting: AutoTier::Soft,
            group: Some((SOFT, Some(1))),
            role: Some((SOFT, Some(1))),
            automatic: true,
            infeasible: false,
            message: "tier 1 is the lowest tier",
        },
        Case {
            name: "off: nothing automatic",
            template: template(tp16(), None),
            setting: AutoTier::Off,
            group: None,
            role: None,
            automatic: false,
            infeasible: false,
            message: "automatic tier choice is off",
        },
        Case {
            name: "user hard bound below what fits: written unchanged, infeasible",
            template: template(
                vec![role("engine", 1, 3, 8)],
                Some(
                    json!({"groupPolicy": {"mode": "hard", "highestTierAllowed": 1},
                    "rolePolicy": {"mode": "hard", "highestTierAllowed": 1}}),
                ),
            ),
            setting: AutoTier::Hard,
            group: Some((HARD, Some(1))),
            role: Some((HARD, Some(1))),
            automatic: false,
            infeasible: true,
            message: "INFEASIBLE: user hard bound tier 1",
        },
        Case {
            name: "user soft bound: kept as given",
            template: template(
                vec![role("engine", 1, 3, 8)],
                Some(
                    json!({"groupPolicy": {"mode": "soft", "highestTierAllowed": 1},
                    "rolePolicy": {"mode": "soft", "highestTierAllowed": 1}}),
                ),
            ),
            setting: AutoTier::Hard,
            group: Some((SOFT, Some(1))),
            role: Some((SOFT, Some(1))),
            automatic: false,
            infeasible: false,
            message: "user soft bound tier 1 kept; lowest feasible tier is 2",
        },
    ];
    let t = topology(2);
    for c in cases {
        let fresh = decide(&c.template, c.setting, &t);
        let d = &fresh.decision;
        assert_eq!(tier_of(&d.group), c.group, "{}: group {d:?}", c.name);
        for r in &d.roles {
            assert_eq!(tier_of(r), c.role, "{}: role {r:?}", c.name);
            assert_eq!(r.infeasible, c.infeasible, "{}: {r:?}", c.name);
        }
        assert_eq!(d.group.automatic, c.automatic, "{}: {d:?}", c.name);
        assert_eq!(d.group.infeasible, c.infeasible, "{}: {d:?}", c.name);
        assert!(
            d.group.message.contains(c.message),
            "{}: {:?} lacks {:?}",
            c.name,
            d.group.message,
            c.message
        );
    }
}

#[test]
fn pods_that_select_nodes_get_no_automatic_tier() {
    let mut tp = role("engine", 1, 1, 8);
    tp["entryTemplate"]["spec"]["nodeSelector"] = json!({"pool": "a"});
    let d = decide(&template(vec![tp], None), AutoTier::Hard, &topology(2)).decision;
    assert_eq!(d.group.network_topology, None);
    assert_eq!(d.roles[0].network_topology, None);
    assert!(d.group.message.contains("engine"), "{}", d.group.message);
}

#[test]
fn unknown_setting_falls_back_to_hard_and_says_so() {
    let (s, problem) = AutoTier::parse(Some("strict"));
    assert_eq!(s, AutoTier::Hard);
    let p = problem.unwrap();
    assert!(p.contains(TIER_CHOICE) && p.contains("strict"), "{p}");
    assert_eq!(AutoTier::parse(None), (AutoTier::Hard, None));
    assert_eq!(AutoTier::parse(Some("off")), (AutoTier::Off, None));
}

#[test]
fn pinned_decisions_change_only_when_they_must() {
    let tp = template(vec![role("engine", 1, 1, 8)], None);
    let roomy = decide(&tp, AutoTier::Hard, &topology(2));
    // One node per rack: the two-node instance no longer fits a rack, only a spine.
    let shrunk = decide(&tp, AutoTier::Hard, &topology(1));
    assert_eq!(tier_of(&shrunk.decision.group), Some((HARD, Some(2))));
    let pin = Some(roomy.decision.clone());
    let cases = [
        ("no pin yet", Some(&roomy), None, false, Resolution::First),
        (
            "same answer",
            Some(&roomy),
            pin.clone(),
            true,
            Resolution::Kept,
        ),
        (
            "placed and its tier-1 bound can no longer be met",
            Some(&shrunk),
            pin.clone(),
            true,
            Resolution::NoLongerFeasible,
        ),
        (
            "nothing placed yet follows the topology",
            Some(&shrunk),
            pin.clone(),
            false,
            Resolution::Replanned,
        ),
        (
            "topology unknown keeps the pin",
            None,
            pin.clone(),
            true,
            Resolution::Kept,
        ),
        (
            "topology unknown, no pin",
            None,
            None,
            false,
            Resolution::Unknown,
        ),
    ];
    for (name, fresh, pinned, placed, want) in cases {
        let (_, how) = resolve(&tp, fresh, pinned, placed);
        assert_eq!(how, want, "{name}");
    }
    // A placed group keeps a looser pinned bound even when a tighter one became possible.
    let (d, how) = resolve(&tp, Some(&roomy), Some(shrunk.decision.clone()), true);
    assert_eq!(
        (how, tier_of(&d.group)),
        (Resolution::Kept, Some((HARD, Some(2))))
    );
    // More instances is another demand.
    let bigger = decide(
        &template(vec![role("engine", 2, 1, 8)], None),
        AutoTier::Hard,
        &topology(2),
    );
    let (_, how) = resolve(&tp, Some(&bigger), pin, true);
    assert_eq!(how, Resolution::DemandChanged);
}

// ---- the planner ----

fn model_serving(roles: Vec<Value>, annotations: Option<Value>) -> ModelServing {
    let mut meta = json!({"name": "ms", "namespace": "ns", "uid": "u-1", "generation": 1});
    if let Some(a) = annotations {
        meta["annotations"] = a;
    }
    serde_json::from_value(json!({"apiVersion": "workload.muster.dev/v1alpha1",
        "kind": "ModelServing", "metadata": meta,
        "spec": {"replicas": 1, "template": {"roles": roles}}}))
    .unwrap()
}

fn observed(ms: &ModelServing, pod_groups: Vec<PodGroup>, pods: Vec<Pod>) -> Observed {
    Observed {
        ms: ms.clone(),
        pods,
        services: Vec::new(),
        pod_groups,
        revisions: Vec::new(),
        disruption_budget: None,
        now: 1_000,
    }
}

/// Pods as the API server would hold them after `plan`, bound to a node.
fn bound(plan: &Plan) -> Vec<Pod> {
    plan.create_pods
        .iter()
        .cloned()
        .map(|mut p| {
            p.spec.as_mut().unwrap().node_name = Some("n-0-0-0".into());
            p
        })
        .collect()
}

fn group_tier(pg: &PodGroup) -> Option<i32> {
    pg.spec.network_topology.as_ref()?.highest_tier_allowed
}

#[test]
fn the_planner_writes_pins_reports_and_keeps_the_choice() {
    let ms = model_serving(
        vec![role("prefill", 1, 1, 8), role("decode", 1, 1, 8)],
        None,
    );
    let t = topology(2);
    let first = plan_serving_groups_with(&observed(&ms, vec![], vec![]), Some(&t));
    let pg = first.apply_pod_groups[0].clone();
    assert_eq!(group_tier(&pg), Some(2), "{:?}", pg.spec);
    for sg in pg.spec.sub_group_policy.as_ref().unwrap() {
        assert_eq!(
            sg.network_topology,
            Some(NetworkTopologySpec {
                mode: HARD,
                highest_tier_allowed: Some(1),
                highest_tier_name: None
            }),
            "{sg:?}"
        );
    }
    assert!(pg
        .metadata
        .annotations
        .as_ref()
        .unwrap()
        .contains_key(TIER_DECISION));
    let chosen: Vec<_> = first
        .events
        .iter()
        .filter(|e| e.reason == "TierChosen")
        .collect();
    assert_eq!(chosen.len(), 1, "{:?}", first.events);
    assert!(
        chosen[0].note.contains("group hard tier 2")
            && chosen[0]
                .note
                .contains("role prefill instances hard tier 1"),
        "{}",
        chosen[0].note
    );
    assert!(!first.events.iter().any(|e| e.warning));

    // The next reconcile (or a restarted controller) sees the PodGroup and bound pods: it keeps
    // the decision, re-applies nothing and reports it in status.
    let pods = bound(&first);
    let again = plan_serving_groups_with(&observed(&ms, vec![pg.clone()], pods.clone()), Some(&t));
    assert!(
        again.apply_pod_groups.is_empty(),
        "{:?}",
        again.apply_pod_groups
    );
    assert!(!again.events.iter().any(|e| e.reason.starts_with("Tier")));
    let status = again.status.serving_groups[0].topology.clone().unwrap();
    assert_eq!(tier_of(&status.group), Some((HARD, Some(2))));
    assert!(
        status.group.message.contains("tier 2 is the lowest"),
        "{status:?}"
    );

    // Racks shrink to one node: the running group's tier-1 instance bound can no longer be met.
    // The PodGroup is re-applied with the new choice, and no pod is touched.
    let shrunk = topology(1);
    let moved = plan_serving_groups_with(&observed(&ms, vec![pg.clone()], pods), Some(&shrunk));
    assert_eq!(moved.apply_pod_groups.len(), 1);
    let sub = moved.apply_pod_groups[0]
        .spec
        .sub_group_policy
        .clone()
        .unwrap();
    assert_eq!(
        sub[0]
            .network_topology
            .as_ref()
            .unwrap()
            .highest_tier_allowed,
        Some(2)
    );
    assert!(
        moved.deletes.is_empty() && moved.create_pods.is_empty(),
        "{moved:?}"
    );
    assert!(moved
        .events
        .iter()
        .any(|e| e.reason == "TierChosen" && e.note.contains("can no longer be met")));
}

#[test]
fn an_infeasible_user_bound_is_written_and_warned_about() {
    let mut ms = model_serving(vec![role("engine", 1, 2, 8)], None);
    ms.spec.template.network_topology = Some(
        serde_json::from_value(json!({"groupPolicy": {"mode": "hard", "highestTierAllowed": 1}}))
            .unwrap(),
    );
    let plan = plan_serving_groups_with(&observed(&ms, vec![], vec![]), Some(&topology(2)));
    assert_eq!(group_tier(&plan.apply_pod_groups[0]), Some(1));
    let warn = plan
        .events
        .iter()
        .find(|e| e.warning && e.reason == "TierInfeasible")
        .expect("a Warning event");
    assert!(warn.note.contains("INFEASIBLE"), "{}", warn.note);
}

#[test]
fn without_a_topology_or_with_the_setting_off_user_policies_pass_through() {
    let ms = model_serving(vec![role("engine", 1, 1, 8)], None);
    let plan = plan_serving_groups_with(&observed(&ms, vec![], vec![]), None);
    let pg = &plan.apply_pod_groups[0];
    assert_eq!(pg.spec.network_topology, None);
    assert!(pg.metadata.annotations.is_none(), "nothing is pinned");
    assert!(!plan.events.iter().any(|e| e.reason.starts_with("Tier")));

    let off = model_serving(
        vec![role("engine", 1, 1, 8)],
        Some(json!({TIER_CHOICE: "off"})),
    );
    let plan = plan_serving_groups_with(&observed(&off, vec![], vec![]), Some(&topology(2)));
    let pg = &plan.apply_pod_groups[0];
    assert_eq!(pg.spec.network_topology, None);
    assert!(pg.spec.sub_group_policy.as_ref().unwrap()[0]
        .network_topology
        .is_none());
}
