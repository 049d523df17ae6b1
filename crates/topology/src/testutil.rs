//! Builders for Nodes, Pods and HyperNodes shared by the unit and property tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use muster_api::labels::{NVIDIA_GPU, TOPOLOGY_RACK, TOPOLOGY_SPINE};
use muster_api::volcano::{
    ExactMatch, HyperNode, HyperNodeMember, HyperNodeSpec, MemberSelector, MemberType, RegexMatch,
};

pub fn node(name: &str, labels: &[(&str, &str)], gpus: i64) -> Node {
    let alloc: BTreeMap<String, Quantity> = [
        (NVIDIA_GPU.to_string(), Quantity(gpus.to_string())),
        ("cpu".to_string(), Quantity("64".into())),
        ("memory".to_string(), Quantity("512Gi".into())),
    ]
    .into();
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(alloc),
            ..Default::default()
        }),
    }
}

pub fn cordoned(mut n: Node) -> Node {
    n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    n
}

pub fn pod(name: &str, node: Option<&str>, gpus: i64, phase: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: node.map(str::to_string),
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements {
                    // Limits only, like a GPU pod before API-server defaulting.
                    limits: Some([(NVIDIA_GPU.to_string(), Quantity(gpus.to_string()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
    }
}

pub fn exact(kind: MemberType, name: &str) -> HyperNodeMember {
    HyperNodeMember {
        type_: kind,
        selector: Some(MemberSelector {
            exact_match: Some(ExactMatch { name: name.into() }),
            ..Default::default()
        }),
    }
}

pub fn regex(pattern: &str) -> HyperNodeMember {
    HyperNodeMember {
        type_: MemberType::Node,
        selector: Some(MemberSelector {
            regex_match: Some(RegexMatch {
                pattern: pattern.into(),
            }),
            ..Default::default()
        }),
    }
}

pub fn label_match(key: &str, value: &str) -> HyperNodeMember {
    HyperNodeMember {
        type_: MemberType::Node,
        selector: Some(MemberSelector {
            label_match: Some(LabelSelector {
                match_labels: Some([(key.to_string(), value.to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

pub fn hypernode(
    name: &str,
    tier: i32,
    tier_name: Option<&str>,
    members: Vec<HyperNodeMember>,
) -> HyperNode {
    HyperNode::new(
        name,
        HyperNodeSpec {
            tier,
            tier_name: tier_name.map(str::to_string),
            members,
        },
    )
}

/// The local test cluster's shape: `spines × racks × nodes_per_rack` nodes named
/// `node-<S>-<R>-<N>` with spine/rack labels; HyperNodes `rack-<S>-<R>` (tier 1, `rack`) over
/// nodes by exactMatch and `spine-<S>` (tier 2, `spine`) over racks.
pub fn cluster(
    spines: usize,
    racks: usize,
    nodes_per_rack: usize,
    gpus: i64,
) -> (Vec<HyperNode>, Vec<Node>) {
    let mut hns = Vec::new();
    let mut nodes = Vec::new();
    for s in 0..spines {
        let mut rack_members = Vec::new();
        for r in 0..racks {
            let rack = format!("rack-{s}-{r}");
            let mut members = Vec::new();
            for n in 0..nodes_per_rack {
                let name = format!("node-{s}-{r}-{n}");
                nodes.push(node(
                    &name,
                    &[
                        (TOPOLOGY_SPINE, &format!("spine-{s}")),
                        (TOPOLOGY_RACK, &rack),
                    ],
                    gpus,
                ));
                members.push(exact(MemberType::Node, &name));
            }
            hns.push(hypernode(&rack, 1, Some("rack"), members));
            rack_members.push(exact(MemberType::HyperNode, &rack));
        }
        hns.push(hypernode(
            &format!("spine-{s}"),
            2,
            Some("spine"),
            rack_members,
        ));
    }
    (hns, nodes)
}
