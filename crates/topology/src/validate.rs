//! Validation of the HyperNode tree, with errors that name the objects involved.
//!
//! Volcano accepts these mistakes silently and then schedules oddly, so Muster reports them
//! (controller: status condition / Event on the discovery controller; tier choice still works on
//! what resolves).

use std::collections::{BTreeMap, BTreeSet};

use muster_api::volcano::MemberType;
use petgraph::algo::tarjan_scc;
use petgraph::visit::EdgeRef;
use petgraph::Direction::Incoming;

use crate::graph::{Topology, Vertex};
use crate::resolve::SelectorError;

/// One problem in the HyperNode tree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A member selector is malformed.
    #[error("HyperNode {hypernode:?}: {source}")]
    InvalidMember {
        /// The HyperNode.
        hypernode: String,
        /// What is wrong with the member.
        source: SelectorError,
    },
    /// HyperNodes contain each other.
    #[error("HyperNode cycle: {}", path.join(" -> "))]
    Cycle {
        /// The HyperNodes on the cycle, sorted, first repeated at the end.
        path: Vec<String>,
    },
    /// A Node or HyperNode is a member of two HyperNodes of the same tier, so "the tier-N
    /// domain of X" is ambiguous.
    #[error("{child} is a member of {} HyperNodes of tier {tier}: {}", parents.len(), parents.join(", "))]
    MultipleParentsSameTier {
        /// The member.
        child: Vertex,
        /// The shared tier.
        tier: i32,
        /// The parents, sorted.
        parents: Vec<String>,
    },
    /// A HyperNode contains a HyperNode of the same or a higher tier.
    #[error("HyperNode {parent:?} (tier {parent_tier}) contains HyperNode {child:?} (tier {child_tier}); tiers must increase upwards")]
    TierNotIncreasing {
        /// The containing HyperNode.
        parent: String,
        /// Its tier.
        parent_tier: i32,
        /// The member HyperNode.
        child: String,
        /// Its tier.
        child_tier: i32,
    },
    /// An exactMatch member names an object that does not exist.
    #[error(
        "HyperNode {hypernode:?} member {index} references {kind:?} {name:?}, which does not exist"
    )]
    DanglingReference {
        /// The HyperNode.
        hypernode: String,
        /// Index in `spec.members`.
        index: usize,
        /// Node or HyperNode.
        kind: MemberType,
        /// The missing name.
        name: String,
    },
    /// A HyperNode's members resolve to nothing.
    #[error("HyperNode {hypernode:?} has no members that resolve to existing Nodes or HyperNodes")]
    Empty {
        /// The HyperNode.
        hypernode: String,
    },
}

/// Every problem in the current graph, in a stable order.
pub fn validate(t: &Topology) -> Vec<TopologyError> {
    let g = t.graph();
    let mut errs = Vec::new();

    for (name, st) in t.hypernodes() {
        for e in &st.selector_errors {
            errs.push(TopologyError::InvalidMember {
                hypernode: name.to_string(),
                source: e.clone(),
            });
        }
        for (index, m) in st.spec.members.iter().enumerate() {
            let Some(exact) = m.selector.as_ref().and_then(|s| s.exact_match.as_ref()) else {
                continue;
            };
            let exists = match m.type_ {
                MemberType::Node => t.node(&exact.name).is_some(),
                MemberType::HyperNode => t.hypernode(&exact.name).is_some(),
            };
            if !exists {
                errs.push(TopologyError::DanglingReference {
                    hypernode: name.to_string(),
                    index,
                    kind: m.type_,
                    name: exact.name.clone(),
                });
            }
        }
        let idx = t.hn_index(name).expect("every HyperNode has a vertex");
        if g.neighbors(idx).next().is_none() {
            errs.push(TopologyError::Empty {
                hypernode: name.to_string(),
            });
        }
    }

    for scc in tarjan_scc(g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() > 1 || self_loop {
            let mut path: Vec<String> = scc.iter().map(|i| g[*i].name().to_string()).collect();
            path.sort();
            path.push(path[0].clone());
            errs.push(TopologyError::Cycle { path });
        }
    }

    for idx in g.node_indices() {
        let child = &g[idx];
        let mut by_tier: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        for e in g.edges_directed(idx, Incoming) {
            let parent = g[e.source()].name();
            let Some(pst) = t.hypernode(parent) else {
                continue;
            };
            by_tier
                .entry(pst.tier())
                .or_default()
                .insert(parent.to_string());
            if let Vertex::HyperNode(c) = child {
                let ct = t.hypernode(c).map_or(0, |s| s.tier());
                if ct >= pst.tier() {
                    errs.push(TopologyError::TierNotIncreasing {
                        parent: parent.to_string(),
                        parent_tier: pst.tier(),
                        child: c.clone(),
                        child_tier: ct,
                    });
                }
            }
        }
        for (tier, parents) in by_tier {
            if parents.len() > 1 {
                errs.push(TopologyError::MultipleParentsSameTier {
                    child: child.clone(),
                    tier,
                    parents: parents.into_iter().collect(),
                });
            }
        }
    }
    errs.sort_by_key(|e| e.to_string());
    errs
}
