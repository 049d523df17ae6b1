//! Pure scoring for the Volcano scheduler `extender` plugin (predicate and prioritize verbs).
//!
//! Volcano posts its internal `TaskInfo`/`NodeInfo` structs, marshalled without JSON tags
//! (PascalCase Go field names) and unversioned, so requests are parsed leniently: every field
//! defaults, unknown fields are ignored, and the pod is read as loose JSON. The HTTP server
//! that wraps these functions must fail open (`extender.ignorable: true`).
//!
//! Scoring prefers nodes that share the lowest tier with pods already placed for the same
//! ServingGroup: first the task's own role instance, then the whole group, then the PD peer
//! roles (every other role of the group).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use muster_api::labels::{GROUP_NAME, ROLE, ROLE_ID};
use serde::{Deserialize, Serialize};

use crate::graph::Topology;

/// Volcano `TaskInfo`, only the fields Muster reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct TaskInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// `namespace/podgroup`.
    pub job: String,
    /// The full pod, kept as loose JSON.
    pub pod: serde_json::Value,
}

/// Volcano `NodeInfo`, only the name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
}

/// Body of the predicate verb.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PredicateRequest {
    /// The pod being placed.
    pub task: TaskInfo,
    /// The candidate node.
    pub node: NodeInfo,
}

/// Body of the prioritize verb.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct PrioritizeRequest {
    /// The pod being placed.
    pub task: TaskInfo,
    /// Candidate nodes.
    pub nodes: Vec<NodeInfo>,
}

/// Volcano predicate codes.
pub mod code {
    /// Fits.
    pub const SUCCESS: i32 = 0;
    /// Does not fit now.
    pub const UNSCHEDULABLE: i32 = 2;
}

/// Reply of the predicate verb: empty `status` means the node fits.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PredicateResponse {
    /// Error message; empty when the node fits.
    pub status: String,
    /// One of [`code`].
    pub code: i32,
}

/// Reply of the prioritize verb.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrioritizeResponse {
    /// Score per node, 0..=100.
    pub node_score: BTreeMap<String, f64>,
    /// Empty on success.
    pub error_message: String,
}

/// Request bodies that are not JSON at all.
#[derive(Debug, thiserror::Error)]
#[error("extender request body is not valid JSON for the {verb} verb: {source}")]
pub struct ParseError {
    /// The verb.
    pub verb: &'static str,
    /// serde's message.
    #[source]
    pub source: serde_json::Error,
}

/// Parse a predicate body leniently.
pub fn parse_predicate(body: &[u8]) -> Result<PredicateRequest, ParseError> {
    serde_json::from_slice(body).map_err(|source| ParseError {
        verb: "predicate",
        source,
    })
}

/// Parse a prioritize body leniently.
pub fn parse_prioritize(body: &[u8]) -> Result<PrioritizeRequest, ParseError> {
    serde_json::from_slice(body).map_err(|source| ParseError {
        verb: "prioritize",
        source,
    })
}

/// Which ServingGroup, role and role instance a pod belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// ServingGroup (`GROUP_NAME` label), falling back to Volcano's job id.
    pub group: Option<String>,
    /// Role (`ROLE` label).
    pub role: Option<String>,
    /// Role instance (`ROLE_ID` label).
    pub role_id: Option<String>,
}

impl Membership {
    /// Read from a task's loose pod JSON.
    pub fn of_task(task: &TaskInfo) -> Self {
        let label = |k: &str| {
            task.pod
                .pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Membership {
            group: label(GROUP_NAME).or_else(|| (!task.job.is_empty()).then(|| task.job.clone())),
            role: label(ROLE),
            role_id: label(ROLE_ID),
        }
    }

    fn of_pod(pod: &Pod) -> Self {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        Membership {
            group: labels.get(GROUP_NAME).cloned(),
            role: labels.get(ROLE).cloned(),
            role_id: labels.get(ROLE_ID).cloned(),
        }
    }
}

/// Bound pods of ServingGroups, by group: `(membership, node)`.
#[derive(Clone, Debug, Default)]
pub struct Placements {
    by_group: BTreeMap<String, Vec<(Membership, String)>>,
}

impl Placements {
    /// Index bound, non-terminal pods that carry a ServingGroup label.
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Self {
        let mut p = Placements::default();
        for pod in pods {
            let Some(node) = crate::capacity::pod_bound_node(pod) else {
                continue;
            };
            let m = Membership::of_pod(pod);
            if let Some(g) = m.group.clone() {
                p.by_group.entry(g).or_default().push((m, node));
            }
        }
        p
    }

    /// Nodes of placed pods of `m`'s group: (same instance, same group, peer roles).
    fn related(&self, m: &Membership) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        let (mut inst, mut group, mut peer) = (Vec::new(), Vec::new(), Vec::new());
        let Some(g) = m.group.as_ref().and_then(|g| self.by_group.get(g)) else {
            return (inst, group, peer);
        };
        for (pm, node) in g {
            group.push(node.as_str());
            if m.role_id.is_some() && pm.role_id == m.role_id {
                inst.push(node.as_str());
            }
            if m.role.is_some() && pm.role.is_some() && pm.role != m.role {
                peer.push(node.as_str());
            }
        }
        (inst, group, peer)
    }
}

/// Closeness of `node` to a set of nodes, in [0, 1]: 1 when they are the same node, falling
/// linearly with the tier of their LCA, 0 when they share no HyperNode. `None` if the set is
/// empty (no opinion).
fn closeness(t: &Topology, node: &str, others: &[&str], max_tier: i32) -> Option<f64> {
    if others.is_empty() {
        return None;
    }
    let tier = if others.iter().all(|o| *o == node) {
        Some(0)
    } else {
        t.lca(std::iter::once(node).chain(others.iter().copied()))
            .map(|l| l.tier)
    };
    let span = f64::from(max_tier + 1);
    Some(tier.map_or(0.0, |tier| (span - f64::from(tier)) / span))
}

/// Weights of the instance, group and peer closeness in the score: keeping a TP instance
/// together matters most, then the group, then the PD peer.
pub const WEIGHTS: [f64; 3] = [4.0, 2.0, 1.0];

/// Score each node 0..=100 (Volcano's MaxNodeScore) for `task`. Nodes are scored 0 when no pod
/// of the group is placed yet: there is nothing to be close to, so the extender stays neutral.
pub fn prioritize(
    t: &Topology,
    placed: &Placements,
    req: &PrioritizeRequest,
) -> PrioritizeResponse {
    let m = Membership::of_task(&req.task);
    let (inst, group, peer) = placed.related(&m);
    let max_tier = t.hypernodes().map(|(_, s)| s.tier()).max().unwrap_or(0);
    let node_score = req
        .nodes
        .iter()
        .map(|n| {
            let parts = [
                closeness(t, &n.name, &inst, max_tier),
                closeness(t, &n.name, &group, max_tier),
                closeness(t, &n.name, &peer, max_tier),
            ];
            let (mut sum, mut wsum) = (0.0, 0.0);
            for (p, w) in parts.iter().zip(WEIGHTS) {
                if let Some(c) = p {
                    sum += c * w;
                    wsum += w;
                }
            }
            let score = if wsum > 0.0 { 100.0 * sum / wsum } else { 0.0 };
            (n.name.clone(), score)
        })
        .collect();
    PrioritizeResponse {
        node_score,
        error_message: String::new(),
    }
}

/// Reject a node only when it would put the task's role instance across a HyperNode of a tier
/// above `instance_max_tier` (the hard bound the controller chose for the instance). Everything
/// unknown passes: Volcano's own network-topology plugin is the enforcer, the extender only
/// refuses what is certainly wrong.
pub fn predicate(
    t: &Topology,
    placed: &Placements,
    req: &PredicateRequest,
    instance_max_tier: Option<i32>,
) -> PredicateResponse {
    let fits = PredicateResponse {
        status: String::new(),
        code: code::SUCCESS,
    };
    let Some(max) = instance_max_tier else {
        return fits;
    };
    let m = Membership::of_task(&req.task);
    let (inst, _, _) = placed.related(&m);
    let node = req.node.name.as_str();
    if inst.is_empty() || t.node(node).is_none() || inst.iter().all(|o| *o == node) {
        return fits;
    }
    match t.lca(std::iter::once(node).chain(inst.iter().copied())) {
        Some(l) if l.tier <= max => fits,
        lca => PredicateResponse {
            status: format!(
                "node {node} would spread role instance {} over {} (allowed: tier {max})",
                m.role_id.as_deref().unwrap_or("?"),
                lca.map_or("no common HyperNode".to_string(), |l| format!(
                    "HyperNode {} of tier {}",
                    l.hypernode, l.tier
                )),
            ),
            code: code::UNSCHEDULABLE,
        },
    }
}
