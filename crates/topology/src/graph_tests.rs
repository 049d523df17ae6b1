//! Graph: resolution, aggregates, LCA, validation, and incremental == rebuild.

use muster_api::labels::TOPOLOGY_RACK;
use muster_api::volcano::MemberType;
use proptest::prelude::*;

use crate::graph::{Topology, Vertex, WatchEvent};
use crate::testutil::*;
use crate::validate::{validate, TopologyError};
use crate::Resources;

fn two_by_four() -> Topology {
    let (hns, nodes) = cluster(2, 4, 4, 8);
    Topology::build(&hns, &nodes, &[])
}

#[test]
fn two_spine_tree_aggregates_allocatable_and_free_gpus() {
    let (hns, mut nodes) = cluster(2, 4, 4, 8);
    nodes[3] = cordoned(nodes[3].clone()); // node-0-0-3
    let pods = vec![
        pod("a", Some("node-0-0-0"), 8, "Running"),
        pod("b", Some("node-0-0-1"), 2, "Pending"),
        pod("done", Some("node-0-0-1"), 4, "Succeeded"),
        pod("unbound", None, 8, "Pending"),
    ];
    let t = Topology::build(&hns, &nodes, &pods);
    assert!(validate(&t).is_empty(), "{:?}", validate(&t));
    let rack = t.hypernode("rack-0-0").unwrap();
    assert_eq!(rack.allocatable.gpu, 32);
    assert_eq!(rack.node_count, 4);
    // 32 - 8 (a) - 2 (b) - 8 (cordoned node) ; the finished and unbound pods hold nothing.
    assert_eq!(rack.free.gpu, 14);
    let spine = t.hypernode("spine-0").unwrap();
    assert_eq!((spine.allocatable.gpu, spine.free.gpu), (128, 110));
    assert_eq!(t.hypernode("spine-1").unwrap().free.gpu, 128);
    assert_eq!(
        t.node("node-0-0-1").unwrap().used,
        Resources {
            gpu: 2,
            ..Default::default()
        }
    );
}

#[test]
fn lca_and_tier_distance_between_nodes() {
    let t = two_by_four();
    assert_eq!(t.tier_distance("node-0-0-0", "node-0-0-0"), Some(0));
    assert_eq!(t.tier_distance("node-0-0-0", "node-0-0-3"), Some(1));
    assert_eq!(t.tier_distance("node-0-0-0", "node-0-3-1"), Some(2));
    assert_eq!(
        t.tier_distance("node-0-0-0", "node-1-0-0"),
        None,
        "no root above spines"
    );
    assert_eq!(t.tier_distance("node-0-0-0", "ghost"), None);
    let l = t.lca(["node-1-2-0", "node-1-2-1", "node-1-3-0"]).unwrap();
    assert_eq!((l.hypernode.as_str(), l.tier), ("spine-1", 2));
    assert_eq!(
        t.hypernodes_above("node-1-2-0"),
        vec![("rack-1-2", 1), ("spine-1", 2)]
    );
}

#[test]
fn regex_and_label_members_resolve_and_follow_label_changes() {
    let nodes = vec![
        node("gpu-a-1", &[(TOPOLOGY_RACK, "r1")], 8),
        node("gpu-a-2", &[(TOPOLOGY_RACK, "r1")], 8),
        node("gpu-b-1", &[(TOPOLOGY_RACK, "r2")], 4),
    ];
    let hns = vec![
        hypernode("by-regex", 1, None, vec![regex("^gpu-a-")]),
        hypernode("by-label", 1, None, vec![label_match(TOPOLOGY_RACK, "r2")]),
    ];
    let mut t = Topology::build(&hns, &nodes, &[]);
    assert_eq!(t.nodes_under("by-regex"), vec!["gpu-a-1", "gpu-a-2"]);
    assert_eq!(t.nodes_under("by-label"), vec!["gpu-b-1"]);
    // Relabel gpu-a-2 into r2: it joins by-label, and stays in by-regex (name unchanged), so it
    // now has two tier-1 parents, which validation must flag.
    t.apply(&WatchEvent::NodeApplied(Box::new(node(
        "gpu-a-2",
        &[(TOPOLOGY_RACK, "r2")],
        8,
    ))));
    assert_eq!(t.nodes_under("by-label"), vec!["gpu-a-2", "gpu-b-1"]);
    assert_eq!(t.hypernode("by-label").unwrap().allocatable.gpu, 12);
    assert_eq!(
        validate(&t),
        vec![TopologyError::MultipleParentsSameTier {
            child: Vertex::Node("gpu-a-2".into()),
            tier: 1,
            parents: vec!["by-label".into(), "by-regex".into()],
        }]
    );
}

#[test]
fn validation_names_each_mistake() {
    let nodes = vec![node("n1", &[], 8)];
    let hns = vec![
        // a <-> b cycle
        hypernode("a", 2, None, vec![exact(MemberType::HyperNode, "b")]),
        hypernode("b", 3, None, vec![exact(MemberType::HyperNode, "a")]),
        // tier 1 containing tier 2
        hypernode("low", 1, None, vec![exact(MemberType::HyperNode, "high")]),
        hypernode("high", 2, None, vec![exact(MemberType::Node, "n1")]),
        // dangling and therefore empty
        hypernode("ghosts", 1, None, vec![exact(MemberType::Node, "n9")]),
    ];
    let t = Topology::build(&hns, &nodes, &[]);
    let errs = validate(&t);
    let has = |e: &TopologyError| errs.contains(e);
    assert!(has(&TopologyError::Cycle {
        path: vec!["a".into(), "b".into(), "a".into()]
    }));
    assert!(has(&TopologyError::TierNotIncreasing {
        parent: "low".into(),
        parent_tier: 1,
        child: "high".into(),
        child_tier: 2
    }));
    assert!(
        has(&TopologyError::TierNotIncreasing {
            parent: "b".into(),
            parent_tier: 3,
            child: "a".into(),
            child_tier: 2
        }) || has(&TopologyError::TierNotIncreasing {
            parent: "a".into(),
            parent_tier: 2,
            child: "b".into(),
            child_tier: 3
        })
    );
    assert!(has(&TopologyError::DanglingReference {
        hypernode: "ghosts".into(),
        index: 0,
        kind: MemberType::Node,
        name: "n9".into()
    }));
    assert!(has(&TopologyError::Empty {
        hypernode: "ghosts".into()
    }));
    assert_eq!(errs.len(), 5, "{errs:#?}");
    let msg = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(msg.contains("HyperNode cycle: a -> b -> a"), "{msg}");
    assert!(msg.contains("references Node \"n9\""), "{msg}");
}

#[test]
fn hypernode_added_after_its_parent_attaches_and_deleting_node_updates_aggregates() {
    let (hns, nodes) = cluster(1, 2, 2, 8);
    let mut t = Topology::new();
    // Spine first: its rack members dangle until the racks arrive.
    let spine = hns
        .iter()
        .find(|h| h.metadata.name.as_deref() == Some("spine-0"))
        .unwrap();
    t.apply(&WatchEvent::HyperNodeApplied(Box::new(spine.clone())));
    assert_eq!(validate(&t).len(), 3, "two dangling racks + empty spine");
    for n in &nodes {
        t.apply(&WatchEvent::NodeApplied(Box::new(n.clone())));
    }
    for h in hns.iter().filter(|h| h.spec.tier == 1) {
        t.apply(&WatchEvent::HyperNodeApplied(Box::new(h.clone())));
    }
    assert!(validate(&t).is_empty());
    assert_eq!(t.hypernode("spine-0").unwrap().allocatable.gpu, 32);
    t.apply(&WatchEvent::PodApplied(Box::new(pod(
        "p",
        Some("node-0-1-0"),
        3,
        "Running",
    ))));
    assert_eq!(t.hypernode("spine-0").unwrap().free.gpu, 29);
    t.apply(&WatchEvent::NodeDeleted("node-0-1-0".into()));
    assert_eq!(t.hypernode("spine-0").unwrap().free.gpu, 24);
    assert_eq!(t.hypernode("rack-0-1").unwrap().node_count, 1);
    // The node returns: its pod (still bound) counts again.
    t.apply(&WatchEvent::NodeApplied(Box::new(node(
        "node-0-1-0",
        &[],
        8,
    ))));
    assert_eq!(t.hypernode("spine-0").unwrap().free.gpu, 29);
    assert_eq!(
        t.snapshot(),
        rebuild(&t_objects_cluster_1x2x2_with_pod()).snapshot()
    );
}

fn t_objects_cluster_1x2x2_with_pod() -> Objects {
    let (hns, mut nodes) = cluster(1, 2, 2, 8);
    nodes[2] = node("node-0-1-0", &[], 8);
    Objects {
        hns,
        nodes,
        pods: vec![pod("p", Some("node-0-1-0"), 3, "Running")],
    }
}

struct Objects {
    hns: Vec<muster_api::volcano::HyperNode>,
    nodes: Vec<k8s_openapi::api::core::v1::Node>,
    pods: Vec<k8s_openapi::api::core::v1::Pod>,
}

fn rebuild(o: &Objects) -> Topology {
    Topology::build(&o.hns, &o.nodes, &o.pods)
}

// ---- property: incremental == rebuild ----

const NODES: usize = 6;
const HNS: usize = 4;
const PODS: usize = 6;

#[derive(Clone, Debug)]
enum Ev {
    Node {
        i: usize,
        rack: u8,
        gpus: i64,
        cordon: bool,
    },
    DelNode(usize),
    Pod {
        i: usize,
        node: Option<usize>,
        gpus: i64,
        done: bool,
    },
    DelPod(usize),
    Hn {
        i: usize,
        tier: i32,
        members: Vec<(u8, usize)>,
    },
    DelHn(usize),
}

fn member(kind: u8, arg: usize) -> muster_api::volcano::HyperNodeMember {
    match kind {
        0 => exact(MemberType::Node, &format!("n{}", arg % NODES)),
        1 => regex(&format!("^n[{}-{}]$", arg % NODES, (arg % NODES) + 1)),
        2 => label_match(TOPOLOGY_RACK, &format!("r{}", arg % 3)),
        _ => exact(MemberType::HyperNode, &format!("h{}", arg % HNS)),
    }
}

fn ev_strategy() -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => (0..NODES, 0u8..3, 0i64..9, proptest::bool::weighted(0.1))
            .prop_map(|(i, rack, gpus, cordon)| Ev::Node { i, rack, gpus, cordon }),
        1 => (0..NODES).prop_map(Ev::DelNode),
        3 => (0..PODS, proptest::option::of(0..NODES), 0i64..5, proptest::bool::weighted(0.2))
            .prop_map(|(i, node, gpus, done)| Ev::Pod { i, node, gpus, done }),
        1 => (0..PODS).prop_map(Ev::DelPod),
        3 => (0..HNS, 1i32..4, proptest::collection::vec((0u8..4, 0usize..8), 1..4))
            .prop_map(|(i, tier, members)| Ev::Hn { i, tier, members }),
        1 => (0..HNS).prop_map(Ev::DelHn),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Applying random watch events one by one gives exactly the graph, aggregates and
    /// validation errors that a full rebuild from the final objects gives.
    #[test]
    fn incremental_updates_equal_full_rebuild(events in proptest::collection::vec(ev_strategy(), 1..40)) {
        use std::collections::BTreeMap;
        let mut t = Topology::new();
        let mut nodes = BTreeMap::new();
        let mut pods = BTreeMap::new();
        let mut hns = BTreeMap::new();
        for e in events {
            let we = match e {
                Ev::Node { i, rack, gpus, cordon } => {
                    let mut n = node(&format!("n{i}"), &[(TOPOLOGY_RACK, &format!("r{rack}"))], gpus);
                    if cordon { n = cordoned(n); }
                    nodes.insert(i, n.clone());
                    WatchEvent::NodeApplied(Box::new(n))
                }
                Ev::DelNode(i) => { nodes.remove(&i); WatchEvent::NodeDeleted(format!("n{i}")) }
                Ev::Pod { i, node, gpus, done } => {
                    let nn = node.map(|n| format!("n{n}"));
                    let p = pod(&format!("p{i}"), nn.as_deref(), gpus, if done { "Succeeded" } else { "Running" });
                    pods.insert(i, p.clone());
                    WatchEvent::PodApplied(Box::new(p))
                }
                Ev::DelPod(i) => {
                    pods.remove(&i);
                    WatchEvent::PodDeleted { namespace: "default".into(), name: format!("p{i}") }
                }
                Ev::Hn { i, tier, members } => {
                    let h = hypernode(&format!("h{i}"), tier, None,
                        members.into_iter().map(|(k, a)| member(k, a)).collect());
                    hns.insert(i, h.clone());
                    WatchEvent::HyperNodeApplied(Box::new(h))
                }
                Ev::DelHn(i) => { hns.remove(&i); WatchEvent::HyperNodeDeleted(format!("h{i}")) }
            };
            t.apply(&we);
        }
        let o = Objects {
            hns: hns.into_values().collect(),
            nodes: nodes.into_values().collect(),
            pods: pods.into_values().collect(),
        };
        prop_assert_eq!(t.snapshot(), rebuild(&o).snapshot());
    }
}
