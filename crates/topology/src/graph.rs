//! The topology graph: HyperNodes and Nodes as petgraph vertices, edges from a HyperNode to each
//! member it resolves to, and per-HyperNode capacity aggregates.
//!
//! The graph is kept up to date by applying one watch event at a time ([`Topology::apply`]);
//! [`Topology::build`] constructs the same state from a full listing by a separate path, and a
//! property test checks the two agree.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use muster_api::volcano::{HyperNode, HyperNodeSpec, MemberType};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction::{Incoming, Outgoing};

use crate::capacity::{self, Resources};
use crate::resolve::{compile_members, CompiledMember, SelectorError};

/// A vertex: a HyperNode or a Kubernetes Node, by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vertex {
    /// A HyperNode CR.
    HyperNode(String),
    /// A Kubernetes Node.
    Node(String),
}

impl Vertex {
    /// The object's name.
    pub fn name(&self) -> &str {
        match self {
            Vertex::HyperNode(n) | Vertex::Node(n) => n,
        }
    }
}

impl std::fmt::Display for Vertex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vertex::HyperNode(n) => write!(f, "HyperNode/{n}"),
            Vertex::Node(n) => write!(f, "Node/{n}"),
        }
    }
}

/// What the graph keeps about a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Node labels (for labelMatch).
    pub labels: BTreeMap<String, String>,
    /// `status.allocatable`.
    pub allocatable: Resources,
    /// Sum of requests of non-terminal pods bound to the node.
    pub used: Resources,
    /// False when cordoned: nothing on it counts as free.
    pub schedulable: bool,
}

impl NodeState {
    fn from_node(node: &Node) -> Self {
        NodeState {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable: capacity::node_allocatable(node),
            used: Resources::default(),
            schedulable: capacity::node_schedulable(node),
        }
    }

    /// Resources new pods could still get on this node.
    pub fn free(&self) -> Resources {
        if self.schedulable {
            (self.allocatable - self.used).clamp_zero()
        } else {
            Resources::default()
        }
    }
}

/// What the graph keeps about a HyperNode, including its aggregates.
#[derive(Clone, Debug)]
pub struct HyperNodeState {
    /// The CR's spec as last seen.
    pub spec: HyperNodeSpec,
    pub(crate) members: Vec<CompiledMember>,
    pub(crate) selector_errors: Vec<SelectorError>,
    /// Sum of allocatable over the distinct Nodes below.
    pub allocatable: Resources,
    /// Sum of free resources over the distinct Nodes below.
    pub free: Resources,
    /// Distinct Nodes below.
    pub node_count: usize,
}

impl HyperNodeState {
    fn new(spec: HyperNodeSpec) -> Self {
        let (members, selector_errors) = compile_members(&spec.members);
        HyperNodeState {
            spec,
            members,
            selector_errors,
            allocatable: Resources::default(),
            free: Resources::default(),
            node_count: 0,
        }
    }

    /// `spec.tier`.
    pub fn tier(&self) -> i32 {
        self.spec.tier
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PodState {
    node: Option<String>,
    requests: Resources,
}

/// One watch event, as the controller's reflectors deliver them.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    /// A Node was added or changed.
    NodeApplied(Box<Node>),
    /// A Node was deleted (by name).
    NodeDeleted(String),
    /// A Pod was added or changed.
    PodApplied(Box<Pod>),
    /// A Pod was deleted.
    PodDeleted {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A HyperNode was added or changed.
    HyperNodeApplied(Box<HyperNode>),
    /// A HyperNode was deleted (by name).
    HyperNodeDeleted(String),
}

/// The HyperNode/Node graph with capacity aggregates.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    graph: StableDiGraph<Vertex, ()>,
    hn_idx: BTreeMap<String, NodeIndex>,
    node_idx: BTreeMap<String, NodeIndex>,
    hypernodes: BTreeMap<String, HyperNodeState>,
    nodes: BTreeMap<String, NodeState>,
    pods: BTreeMap<String, PodState>,
    pods_by_node: BTreeMap<String, BTreeSet<String>>,
}

/// The lowest common HyperNode of some Nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lca {
    /// HyperNode name.
    pub hypernode: String,
    /// Its tier.
    pub tier: i32,
}

/// A comparable dump of everything the graph derives, for tests and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `(parent, child)` edges.
    pub edges: BTreeSet<(Vertex, Vertex)>,
    /// Per HyperNode: tier, allocatable, free, node count.
    pub hypernodes: BTreeMap<String, (i32, Resources, Resources, usize)>,
    /// Per Node: allocatable, used, free.
    pub nodes: BTreeMap<String, (Resources, Resources, Resources)>,
    /// Validation errors, rendered and sorted.
    pub errors: Vec<String>,
}

fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn pod_state(pod: &Pod) -> PodState {
    PodState {
        node: capacity::pod_bound_node(pod),
        requests: capacity::pod_requests(pod),
    }
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Build from a full listing in one pass (the path a restarted controller takes).
    pub fn build(hypernodes: &[HyperNode], nodes: &[Node], pods: &[Pod]) -> Self {
        let mut t = Topology::new();
        for p in pods {
            let key = pod_key(
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
            );
            let st = pod_state(p);
            if let Some(n) = &st.node {
                t.pods_by_node
                    .entry(n.clone())
                    .or_default()
                    .insert(key.clone());
            }
            t.pods.insert(key, st);
        }
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let mut st = NodeState::from_node(n);
            st.used = t.used_on(&name);
            let idx = t.graph.add_node(Vertex::Node(name.clone()));
            t.node_idx.insert(name.clone(), idx);
            t.nodes.insert(name, st);
        }
        for h in hypernodes {
            let name = h.metadata.name.clone().unwrap_or_default();
            let idx = t.graph.add_node(Vertex::HyperNode(name.clone()));
            t.hn_idx.insert(name.clone(), idx);
            t.hypernodes
                .insert(name, HyperNodeState::new(h.spec.clone()));
        }
        let all: Vec<(String, NodeIndex)> = t.hn_idx.iter().map(|(n, i)| (n.clone(), *i)).collect();
        for (name, idx) in &all {
            for child in t.children_of(name) {
                t.graph.update_edge(*idx, child, ());
            }
        }
        for (_, idx) in all {
            t.recompute(idx);
        }
        t
    }

    /// Apply one watch event incrementally: only the vertices, edges and aggregates it can
    /// affect are touched.
    pub fn apply(&mut self, event: &WatchEvent) {
        match event {
            WatchEvent::NodeApplied(n) => self.apply_node(n),
            WatchEvent::NodeDeleted(name) => self.delete_node(name),
            WatchEvent::PodApplied(p) => {
                let key = pod_key(
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                );
                self.set_pod(key, Some(pod_state(p)));
            }
            WatchEvent::PodDeleted { namespace, name } => {
                self.set_pod(pod_key(namespace, name), None)
            }
            WatchEvent::HyperNodeApplied(h) => self.apply_hypernode(h),
            WatchEvent::HyperNodeDeleted(name) => self.delete_hypernode(name),
        }
    }

    fn used_on(&self, node: &str) -> Resources {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
            .map(|p| p.requests)
            .fold(Resources::default(), |a, b| a + b)
    }

    /// Children a HyperNode's members resolve to right now. A HyperNode member that names a
    /// missing HyperNode resolves to nothing (validation reports it as dangling).
    fn children_of(&self, hn: &str) -> Vec<NodeIndex> {
        let Some(st) = self.hypernodes.get(hn) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in &st.members {
            // exactMatch is the common case (one member per node); a map lookup keeps
            // building a large cluster linear instead of members × nodes.
            if let crate::resolve::Matcher::Exact(name) = &m.matcher {
                let idx = match m.kind {
                    MemberType::Node => self.node_idx.get(name),
                    MemberType::HyperNode => self.hn_idx.get(name),
                };
                out.extend(idx.copied());
                continue;
            }
            match m.kind {
                MemberType::Node => {
                    for (name, ns) in &self.nodes {
                        if m.matches(name, &ns.labels) {
                            out.push(self.node_idx[name]);
                        }
                    }
                }
                MemberType::HyperNode => {
                    let empty = BTreeMap::new();
                    for (name, idx) in &self.hn_idx {
                        if m.matches(name, &empty) {
                            out.push(*idx);
                        }
                    }
                }
            }
        }
        out
    }

    /// HyperNodes whose members select this object now.
    fn parents_of(
        &self,
        kind: MemberType,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<NodeIndex> {
        self.hypernodes
            .iter()
            .filter(|(_, st)| {
                st.members
                    .iter()
                    .any(|m| m.kind == kind && m.matches(name, labels))
            })
            .map(|(n, _)| self.hn_idx[n])
            .collect()
    }

    fn remove_edges(&mut self, idx: NodeIndex, dir: petgraph::Direction) {
        let ids: Vec<_> = self
            .graph
            .edges_directed(idx, dir)
            .map(|e| e.id())
            .collect();
        for id in ids {
            self.graph.remove_edge(id);
        }
    }

    /// HyperNodes above a vertex (transitively), excluding itself; cycle-safe.
    fn ancestors(&self, idx: NodeIndex) -> BTreeSet<NodeIndex> {
        self.walk(idx, Incoming)
    }

    fn walk(&self, idx: NodeIndex, dir: petgraph::Direction) -> BTreeSet<NodeIndex> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![idx];
        while let Some(v) = stack.pop() {
            for n in self.graph.neighbors_directed(v, dir) {
                if seen.insert(n) {
                    stack.push(n);
                }
            }
        }
        seen
    }

    fn descendant_nodes(&self, idx: NodeIndex) -> BTreeSet<NodeIndex> {
        self.walk(idx, Outgoing)
            .into_iter()
            .filter(|i| matches!(self.graph[*i], Vertex::Node(_)))
            .collect()
    }

    /// Recompute a HyperNode's aggregates from the distinct Nodes below it.
    fn recompute(&mut self, idx: NodeIndex) {
        let Some(Vertex::HyperNode(name)) = self.graph.node_weight(idx).cloned() else {
            return;
        };
        let mut alloc = Resources::default();
        let mut free = Resources::default();
        let below = self.descendant_nodes(idx);
        for n in &below {
            let ns = &self.nodes[self.graph[*n].name()];
            alloc = alloc + ns.allocatable;
            free = free + ns.free();
        }
        if let Some(st) = self.hypernodes.get_mut(&name) {
            st.allocatable = alloc;
            st.free = free;
            st.node_count = below.len();
        }
    }

    fn apply_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut st = NodeState::from_node(node);
        st.used = self.used_on(&name);
        let idx = match self.node_idx.get(&name) {
            Some(i) => *i,
            None => {
                let i = self.graph.add_node(Vertex::Node(name.clone()));
                self.node_idx.insert(name.clone(), i);
                i
            }
        };
        let mut affected = self.ancestors(idx);
        self.remove_edges(idx, Incoming);
        // Labels may have changed, so labelMatch parents are re-evaluated for this node only.
        for p in self.parents_of(MemberType::Node, &name, &st.labels) {
            self.graph.update_edge(p, idx, ());
        }
        self.nodes.insert(name, st);
        affected.extend(self.ancestors(idx));
        for a in affected {
            self.recompute(a);
        }
    }

    fn delete_node(&mut self, name: &str) {
        let Some(idx) = self.node_idx.remove(name) else {
            return;
        };
        let affected = self.ancestors(idx);
        self.graph.remove_node(idx);
        self.nodes.remove(name);
        for a in affected {
            self.recompute(a);
        }
    }

    fn set_pod(&mut self, key: String, new: Option<PodState>) {
        let old = match &new {
            Some(s) => self.pods.insert(key.clone(), s.clone()),
            None => self.pods.remove(&key),
        };
        if old == new {
            return;
        }
        let mut touched = BTreeSet::new();
        if let Some(n) = old.as_ref().and_then(|o| o.node.clone()) {
            if let Some(set) = self.pods_by_node.get_mut(&n) {
                set.remove(&key);
                if set.is_empty() {
                    self.pods_by_node.remove(&n);
                }
            }
            touched.insert(n);
        }
        if let Some(n) = new.as_ref().and_then(|o| o.node.clone()) {
            self.pods_by_node.entry(n.clone()).or_default().insert(key);
            touched.insert(n);
        }
        // Pods change only `used`, so a delta on each distinct ancestor is enough; no walk
        // over the subtree.
        for n in touched {
            let Some(idx) = self.node_idx.get(&n).copied() else {
                continue;
            };
            let used = self.used_on(&n);
            let ns = self.nodes.get_mut(&n).expect("indexed node has state");
            let before = ns.free();
            ns.used = used;
            let delta = ns.free() - before;
            for a in self.ancestors(idx) {
                let hn = self.graph[a].name().to_string();
                if let Some(st) = self.hypernodes.get_mut(&hn) {
                    st.free = st.free + delta;
                }
            }
        }
    }

    fn apply_hypernode(&mut self, h: &HyperNode) {
        let name = h.metadata.name.clone().unwrap_or_default();
        let idx = match self.hn_idx.get(&name) {
            Some(i) => *i,
            None => {
                let i = self.graph.add_node(Vertex::HyperNode(name.clone()));
                self.hn_idx.insert(name.clone(), i);
                i
            }
        };
        let mut affected = self.ancestors(idx);
        self.hypernodes
            .insert(name.clone(), HyperNodeState::new(h.spec.clone()));
        self.remove_edges(idx, Outgoing);
        for c in self.children_of(&name) {
            self.graph.update_edge(idx, c, ());
        }
        // Parents that name this HyperNode by exactMatch were dangling until now (or are
        // unchanged); (re)attach them.
        for p in self.parents_of(MemberType::HyperNode, &name, &BTreeMap::new()) {
            self.graph.update_edge(p, idx, ());
        }
        affected.insert(idx);
        affected.extend(self.ancestors(idx));
        for a in affected {
            self.recompute(a);
        }
    }

    fn delete_hypernode(&mut self, name: &str) {
        let Some(idx) = self.hn_idx.remove(name) else {
            return;
        };
        let affected = self.ancestors(idx);
        self.graph.remove_node(idx);
        self.hypernodes.remove(name);
        for a in affected {
            self.recompute(a);
        }
    }

    // ---- queries ----

    /// The petgraph graph (edges point from a HyperNode to its members).
    pub fn graph(&self) -> &StableDiGraph<Vertex, ()> {
        &self.graph
    }

    /// A HyperNode's state by name.
    pub fn hypernode(&self, name: &str) -> Option<&HyperNodeState> {
        self.hypernodes.get(name)
    }

    /// All HyperNodes, by name.
    pub fn hypernodes(&self) -> impl Iterator<Item = (&str, &HyperNodeState)> {
        self.hypernodes.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// A Node's state by name.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name)
    }

    /// All Nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeState)> {
        self.nodes.iter().map(|(n, s)| (n.as_str(), s))
    }

    pub(crate) fn hn_index(&self, name: &str) -> Option<NodeIndex> {
        self.hn_idx.get(name).copied()
    }

    pub(crate) fn node_index(&self, name: &str) -> Option<NodeIndex> {
        self.node_idx.get(name).copied()
    }

    /// Names of the distinct Nodes below a HyperNode.
    pub fn nodes_under(&self, hypernode: &str) -> Vec<&str> {
        let Some(idx) = self.hn_index(hypernode) else {
            return Vec::new();
        };
        let mut v: Vec<&str> = self
            .descendant_nodes(idx)
            .into_iter()
            .map(|i| self.graph[i].name())
            .collect();
        v.sort_unstable();
        v
    }

    /// HyperNodes above a Node, as `(name, tier)`, lowest tier first.
    pub fn hypernodes_above(&self, node: &str) -> Vec<(&str, i32)> {
        let Some(idx) = self.node_index(node) else {
            return Vec::new();
        };
        let mut v: Vec<(&str, i32)> = self
            .ancestors(idx)
            .into_iter()
            .filter_map(|i| {
                let n = self.graph[i].name();
                self.hypernodes.get(n).map(|s| (n, s.tier()))
            })
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
        v
    }

    /// The lowest-tier HyperNode above all the given Nodes, or `None` if they share none (or
    /// one is unknown). Ties between equal tiers (only possible in an invalid graph) go to the
    /// first name.
    pub fn lca<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) -> Option<Lca> {
        let mut common: Option<BTreeSet<(i32, String)>> = None;
        for n in nodes {
            // An unknown node shares nothing with anyone.
            self.node_index(n)?;
            let above: BTreeSet<(i32, String)> = self
                .hypernodes_above(n)
                .into_iter()
                .map(|(h, t)| (t, h.to_string()))
                .collect();
            common = Some(match common {
                None => above,
                Some(c) => c.intersection(&above).cloned().collect(),
            });
        }
        let (tier, hypernode) = common?.into_iter().next()?;
        Some(Lca { hypernode, tier })
    }

    /// Tier distance between two Nodes: 0 for the same node, the LCA's tier otherwise, `None`
    /// when they share no HyperNode.
    pub fn tier_distance(&self, a: &str, b: &str) -> Option<i32> {
        if a == b {
            return self.node_index(a).map(|_| 0);
        }
        self.lca([a, b]).map(|l| l.tier)
    }

    /// Everything derived, in comparable form.
    pub fn snapshot(&self) -> Snapshot {
        let edges = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (self.graph[a].clone(), self.graph[b].clone()))
            .collect();
        let hypernodes = self
            .hypernodes
            .iter()
            .map(|(n, s)| (n.clone(), (s.tier(), s.allocatable, s.free, s.node_count)))
            .collect();
        let nodes = self
            .nodes
            .iter()
            .map(|(n, s)| (n.clone(), (s.allocatable, s.used, s.free())))
            .collect();
        let mut errors: Vec<String> = crate::validate::validate(self)
            .iter()
            .map(|e| e.to_string())
            .collect();
        errors.sort();
        Snapshot {
            edges,
            hypernodes,
            nodes,
            errors,
        }
    }
}
