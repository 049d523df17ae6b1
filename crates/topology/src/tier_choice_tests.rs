//! Tier choice: the scenarios of issue 8 and a brute-force property.

use muster_api::volcano::{NetworkTopologyMode, NetworkTopologySpec};
use proptest::prelude::*;

use crate::graph::Topology;
use crate::testutil::*;
use crate::tier_choice::*;
use crate::Resources;

fn role(name: &str, instances: u32, pods: u32, gpus: i64) -> RoleDemand {
    RoleDemand {
        name: name.into(),
        instances,
        pods_per_instance: pods,
        per_pod: Resources::gpus(gpus),
        policy: None,
    }
}

fn hard(tier: i32) -> NetworkTopologySpec {
    NetworkTopologySpec {
        mode: NetworkTopologyMode::Hard,
        highest_tier_allowed: Some(tier),
        highest_tier_name: None,
    }
}

fn tier_of(s: &ScopeChoice) -> Option<i32> {
    s.outcome
        .network_topology()
        .and_then(|n| n.highest_tier_allowed)
}

/// 2 spines × 4 racks × 4 nodes × 8 GPUs: a rack has 32 GPUs, a spine 128.
fn cluster_2x4() -> Topology {
    let (hns, nodes) = cluster(2, 4, 4, 8);
    Topology::build(&hns, &nodes, &[])
}

#[test]
fn tp_group_that_fits_a_rack_gets_hard_tier_1() {
    let t = cluster_2x4();
    let d = GroupDemand {
        roles: vec![role("tp", 1, 4, 8)],
        policy: None,
    };
    let c = choose(&t, &d, ChoiceOptions::default());
    assert_eq!(c.group.outcome.network_topology(), Some(hard(1)));
    assert_eq!(
        c.roles[0].instance.outcome.network_topology(),
        Some(hard(1))
    );
    assert_eq!(c.group.explanation.reason, Reason::LowestFeasibleTier);
    assert_eq!(
        c.group.explanation.candidates[0].holding, 8,
        "all 8 racks hold it"
    );
    assert!(!c.infeasible());
    assert!(
        c.messages()[0].contains("tier 1 is the lowest tier"),
        "{:?}",
        c.messages()
    );
}

#[test]
fn pd_group_puts_each_role_instance_in_a_rack_and_the_group_in_a_spine() {
    let t = cluster_2x4();
    // 2 prefill + 2 decode instances of 2 pods × 8 GPUs: an instance is 16 GPUs (a rack holds
    // it), a role 32 (a rack, exactly), the group 64 (only a spine).
    let d = GroupDemand {
        roles: vec![role("prefill", 2, 2, 8), role("decode", 2, 2, 8)],
        policy: None,
    };
    let c = choose(&t, &d, ChoiceOptions::default());
    assert_eq!(tier_of(&c.group), Some(2));
    for r in &c.roles {
        assert_eq!(tier_of(&r.instance), Some(1), "{}", r.role);
        assert_eq!(r.whole_role_lowest_tier, Some(1));
    }
    let e = &c.group.explanation;
    assert_eq!((e.pods, e.gpus, e.lowest_feasible_tier), (8, 64, Some(2)));
    assert_eq!(e.candidates[0].holding, 0);
    assert_eq!(e.candidates[0].max_gpus, 32);
    assert_eq!(
        e.to_string(),
        "group: 8 pods / 64 GPUs: tier 2 is the lowest tier with a HyperNode that holds it; \
         tier 1: 0/8 hold it (max 32 GPUs); tier 2: 2/2 hold it (max 128 GPUs)"
    );
}

#[test]
fn too_tight_user_hard_bound_is_reported_infeasible_and_not_loosened() {
    let t = cluster_2x4();
    let d = GroupDemand {
        roles: vec![role("prefill", 2, 2, 8), role("decode", 2, 2, 8)],
        policy: Some(hard(1)),
    };
    let c = choose(&t, &d, ChoiceOptions::default());
    assert!(c.infeasible());
    assert_eq!(c.group.outcome, Outcome::Infeasible { requested: hard(1) });
    // What gets written is still the user's tier 1, never the feasible tier 2.
    assert_eq!(c.group.outcome.network_topology(), Some(hard(1)));
    assert_eq!(c.group.explanation.lowest_feasible_tier, Some(2));
    assert!(
        c.messages()[0].contains("INFEASIBLE"),
        "{}",
        c.messages()[0]
    );
    // A looser hard bound that is satisfiable is kept as given (not tightened).
    let d2 = GroupDemand {
        policy: Some(hard(2)),
        roles: vec![role("tp", 1, 2, 8)],
    };
    let c2 = choose(&t, &d2, ChoiceOptions::default());
    assert_eq!(c2.group.outcome.network_topology(), Some(hard(2)));
    assert_eq!(c2.group.explanation.reason, Reason::UserHard { bound: 2 });
    assert_eq!(c2.group.explanation.lowest_feasible_tier, Some(1));
}

#[test]
fn tier_names_soft_mode_and_mode_only_policies() {
    let t = cluster_2x4();
    let by_name = |mode, name: &str| NetworkTopologySpec {
        mode,
        highest_tier_allowed: None,
        highest_tier_name: Some(name.into()),
    };
    let mut d = GroupDemand {
        roles: vec![role("prefill", 2, 2, 8), role("decode", 2, 2, 8)],
        policy: Some(by_name(NetworkTopologyMode::Hard, "spine")),
    };
    let c = choose(&t, &d, ChoiceOptions::default());
    assert_eq!(c.group.explanation.reason, Reason::UserHard { bound: 2 });
    assert_eq!(
        c.group.outcome.network_topology(),
        Some(by_name(NetworkTopologyMode::Hard, "spine"))
    );

    d.policy = Some(by_name(NetworkTopologyMode::Hard, "pod"));
    let c = choose(&t, &d, ChoiceOptions::default());
    assert!(c.infeasible());
    assert_eq!(
        c.group.explanation.reason,
        Reason::UnknownTierName { name: "pod".into() }
    );

    // Soft: kept even though tier 1 cannot hold the group; soft cannot block scheduling.
    d.policy = Some(NetworkTopologySpec {
        mode: NetworkTopologyMode::Soft,
        ..hard(1)
    });
    let c = choose(&t, &d, ChoiceOptions::default());
    assert!(!c.infeasible());
    assert_eq!(c.group.explanation.reason, Reason::UserSoft { bound: 1 });

    // Mode without a bound: Muster picks the bound, in the user's mode.
    d.policy = Some(NetworkTopologySpec {
        mode: NetworkTopologyMode::Soft,
        ..Default::default()
    });
    let c = choose(&t, &d, ChoiceOptions::default());
    assert_eq!(
        c.group.outcome.network_topology(),
        Some(NetworkTopologySpec {
            mode: NetworkTopologyMode::Soft,
            ..hard(2)
        })
    );

    // A role-level user bound applies to that role's instances only.
    d.policy = None;
    d.roles[0].policy = Some(hard(2));
    let c = choose(&t, &d, ChoiceOptions::default());
    assert_eq!(tier_of(&c.roles[0].instance), Some(2));
    assert_eq!(tier_of(&c.roles[1].instance), Some(1));
}

#[test]
fn demand_beyond_every_hypernode_emits_no_constraint_and_says_why() {
    let t = cluster_2x4();
    let d = GroupDemand {
        roles: vec![role("huge", 1, 20, 8)], // 160 GPUs > a spine's 128
        policy: None,
    };
    let c = choose(&t, &d, ChoiceOptions::default());
    assert_eq!(c.group.outcome, Outcome::Unconstrained);
    assert_eq!(c.group.explanation.reason, Reason::NothingHolds);
    assert!(c.messages()[0].contains("no HyperNode holds it"));

    let empty = Topology::new();
    let c = choose(&empty, &d, ChoiceOptions::default());
    assert_eq!(c.group.explanation.reason, Reason::NoHyperNodes);
}

#[test]
fn busy_racks_push_free_basis_up_a_tier_but_not_allocatable_basis() {
    let (hns, nodes) = cluster(2, 4, 4, 8);
    // Every rack has 3 GPUs busy on each node: 20 free per rack, one 8-GPU pod fits nowhere.
    let pods: Vec<_> = nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap();
            pod(&format!("busy-{name}"), Some(&name), 3, "Running")
        })
        .collect();
    let t = Topology::build(&hns, &nodes, &pods);
    let d = GroupDemand {
        roles: vec![role("tp", 1, 1, 8)],
        policy: None,
    };
    let free = choose(&t, &d, ChoiceOptions::default());
    assert_eq!(
        free.group.outcome,
        Outcome::Unconstrained,
        "no node has 8 free GPUs"
    );
    let d4 = GroupDemand {
        roles: vec![role("tp", 1, 5, 4)], // 5 pods × 4 GPUs: 4 per rack fit (one per node)
        policy: None,
    };
    let c = choose(&t, &d4, ChoiceOptions::default());
    assert_eq!(
        tier_of(&c.group),
        Some(2),
        "per-node fit, not the rack's 20 free GPUs"
    );
    let alloc = ChoiceOptions {
        basis: Basis::Allocatable,
        ..Default::default()
    };
    assert_eq!(tier_of(&choose(&t, &d, alloc).group), Some(1));
}

#[test]
fn cpu_and_memory_limit_when_requested() {
    let t = cluster_2x4(); // 64 CPUs per node
    let mut r = role("cpu-heavy", 1, 4, 1);
    r.per_pod.cpu_milli = 40_000; // one pod per node by CPU
    let d = GroupDemand {
        roles: vec![r.clone()],
        policy: None,
    };
    assert_eq!(
        tier_of(&choose(&t, &d, ChoiceOptions::default()).group),
        Some(1)
    );
    r.instances = 2; // 8 pods, 4 per rack by CPU
    r.pods_per_instance = 4;
    let d = GroupDemand {
        roles: vec![r],
        policy: None,
    };
    let c = choose(&t, &d, ChoiceOptions::default());
    assert_eq!(tier_of(&c.group), Some(2));
    assert_eq!(tier_of(&c.roles[0].instance), Some(1));
}

// ---- property: chosen tier == brute force over all HyperNodes ----

/// A random 2-tier tree: per spine, per rack, per node `(allocatable, used)` GPUs.
type Tree = Vec<Vec<Vec<(i64, i64)>>>;

fn tree() -> impl Strategy<Value = Tree> {
    // Half the nodes idle, so big demands sometimes fit and sometimes just miss.
    let node = (0i64..9).prop_flat_map(|a| (Just(a), prop_oneof![Just(0), 0..=a]));
    proptest::collection::vec(
        proptest::collection::vec(proptest::collection::vec(node, 1..5), 1..4),
        1..4,
    )
}

fn demand() -> impl Strategy<Value = Vec<(u32, u32, i64)>> {
    proptest::collection::vec((1u32..4, 1u32..5, 0i64..9), 1..4)
}

/// Brute force on the raw tree, independent of the graph: can these free-GPU lists hold the
/// pieces?
fn holds(free: &[i64], pieces: &[(i64, i64)]) -> bool {
    let total: i64 = free.iter().sum();
    let need: i64 = pieces.iter().map(|(n, g)| n * g).sum();
    pieces
        .iter()
        .all(|(n, g)| *g == 0 || free.iter().map(|f| f / g).sum::<i64>() >= *n)
        && total >= need
}

fn brute_lowest(tree: &Tree, pieces: &[(i64, i64)]) -> Option<i32> {
    let racks = tree.iter().flatten().any(|rack| {
        let free: Vec<i64> = rack.iter().map(|(a, u)| a - u).collect();
        holds(&free, pieces)
    });
    if racks {
        return Some(1);
    }
    let spines = tree.iter().any(|spine| {
        let free: Vec<i64> = spine.iter().flatten().map(|(a, u)| a - u).collect();
        holds(&free, pieces)
    });
    spines.then_some(2)
}

fn build_tree(tree: &Tree) -> Topology {
    use muster_api::volcano::MemberType;
    let mut hns = Vec::new();
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    for (s, spine) in tree.iter().enumerate() {
        let mut racks = Vec::new();
        for (r, rack) in spine.iter().enumerate() {
            let mut members = Vec::new();
            for (n, (alloc, used)) in rack.iter().enumerate() {
                let name = format!("n-{s}-{r}-{n}");
                nodes.push(node(&name, &[], *alloc));
                if *used > 0 {
                    pods.push(pod(&format!("p-{name}"), Some(&name), *used, "Running"));
                }
                members.push(exact(MemberType::Node, &name));
            }
            let rn = format!("rack-{s}-{r}");
            hns.push(hypernode(&rn, 1, None, members));
            racks.push(exact(MemberType::HyperNode, &rn));
        }
        hns.push(hypernode(&format!("spine-{s}"), 2, None, racks));
    }
    Topology::build(&hns, &nodes, &pods)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// For random trees and demands, the group's and every role instance's tier is the lowest
    /// tier that brute force finds, and a demand no HyperNode holds is reported as such; a user
    /// hard bound below that tier is reported infeasible.
    #[test]
    fn chosen_tier_is_lowest_feasible_by_brute_force(
        tree in tree(), roles in demand(), user_bound in proptest::option::of(1i32..3)
    ) {
        let t = build_tree(&tree);
        let d = GroupDemand {
            roles: roles.iter().enumerate().map(|(i, (inst, pods, g))| role(&format!("r{i}"), *inst, *pods, *g)).collect(),
            policy: None,
        };
        let c = choose(&t, &d, ChoiceOptions::default());
        let group_pieces: Vec<(i64, i64)> = roles.iter().map(|(i, p, g)| (i64::from(i * p), *g)).collect();
        let want = brute_lowest(&tree, &group_pieces);
        prop_assert_eq!(tier_of(&c.group), want);
        prop_assert_eq!(c.group.explanation.lowest_feasible_tier, want);
        if want.is_none() {
            prop_assert_eq!(&c.group.explanation.reason, &Reason::NothingHolds);
        }
        for (rc, (_, p, g)) in c.roles.iter().zip(&roles) {
            prop_assert_eq!(tier_of(&rc.instance), brute_lowest(&tree, &[(i64::from(*p), *g)]));
        }

        if let Some(b) = user_bound {
            let d = GroupDemand { policy: Some(hard(b)), ..d };
            let c = choose(&t, &d, ChoiceOptions::default());
            let infeasible = want.is_none_or(|w| w > b);
            prop_assert_eq!(c.infeasible(), infeasible);
            prop_assert_eq!(c.group.outcome.network_topology(), Some(hard(b)), "never loosened");
        }
    }
}

#[test]
fn demand_from_template_counts_entry_and_workers_and_takes_user_policies() {
    let tpl: muster_api::serving::ServingGroupTemplate = serde_json::from_value(serde_json::json!({
        "networkTopology": {
            "groupPolicy": {"mode": "hard", "highestTierName": "spine"},
            "rolePolicy": {"mode": "soft", "highestTierAllowed": 1}
        },
        "roles": [
            {"name": "prefill", "replicas": 2, "workerReplicas": 1,
             "entryTemplate": {"spec": {"containers": [{"name": "e", "resources": {"limits": {"nvidia.com/gpu": "4"}, "requests": {"cpu": "2"}}}]}},
             "workerTemplate": {"spec": {"containers": [{"name": "w", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}},
            {"name": "decode", "entryTemplate": {"spec": {"containers": [{"name": "d", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}}}
        ]
    }))
    .unwrap();
    let d = GroupDemand::from_template(&tpl);
    assert_eq!(d.roles.len(), 2);
    let p = &d.roles[0];
    assert_eq!((p.instances, p.pods_per_instance), (2, 2));
    assert_eq!(
        p.per_pod,
        Resources {
            gpu: 8,
            cpu_milli: 2000,
            memory: 0
        },
        "larger of entry and worker per resource"
    );
    assert_eq!(p.policy.as_ref().unwrap().mode, NetworkTopologyMode::Soft);
    let q = &d.roles[1];
    assert_eq!((q.instances, q.pods_per_instance, q.per_pod.gpu), (1, 1, 2));
    assert_eq!(
        d.policy.as_ref().unwrap().highest_tier_name.as_deref(),
        Some("spine")
    );
}
