//! What the extender knows (Nodes, HyperNodes, ServingGroup pods and PodGroup tier bounds) and
//! the pure handling of one request against it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, Pod};
use muster_api::labels::GROUP_NAME;
use muster_api::volcano::{HyperNode, NetworkTopologyMode, PodGroup};
use muster_topology::extender::{
    self, Membership, ParseError, Placements, PredicateResponse, PrioritizeResponse,
};
use muster_topology::Topology;

use super::relist::Change;
use crate::watch::TopologyCache;

/// The extender's cache. Pods are kept outside the [`Topology`] because only ServingGroup pods
/// are watched (scoring needs their placement, not cluster-wide capacity).
#[derive(Debug, Default)]
pub struct ExtenderState {
    topology: TopologyCache,
    pods: BTreeMap<(String, String), Pod>,
    /// (namespace, PodGroup) -> role -> hard `highestTierAllowed` of that role's instances.
    bounds: BTreeMap<(String, String), BTreeMap<String, i32>>,
    /// The placement index, built on the first request after a pod change: Volcano calls the
    /// predicate once per candidate node, far more often than pods change, and rebuilding on
    /// every pod event would be quadratic while a watch (re)lists.
    placements: Mutex<Option<Arc<Placements>>>,
}

/// Per role (sub-group name), the hard tier bound a ServingGroup's PodGroup puts on each role
/// instance (`subGroupPolicy[].networkTopology`). Soft policies and `highestTierName` are left
/// out: the predicate only refuses what is certainly forbidden, and Volcano's own plugin
/// resolves tier names.
pub fn instance_bounds(pg: &PodGroup) -> BTreeMap<String, i32> {
    pg.spec
        .sub_group_policy
        .iter()
        .flatten()
        .filter_map(|sg| {
            let nt = sg.network_topology.as_ref()?;
            if nt.mode != NetworkTopologyMode::Hard {
                return None;
            }
            Some((sg.name.clone()?, nt.highest_tier_allowed?))
        })
        .collect()
}

impl ExtenderState {
    /// Applies a Node change.
    pub fn node(&mut self, c: Change<Node>) {
        self.topology.node(c);
    }

    /// Applies a HyperNode change.
    pub fn hypernode(&mut self, c: Change<HyperNode>) {
        self.topology.hypernode(c);
    }

    /// Applies a ServingGroup Pod change.
    pub fn pod(&mut self, c: Change<Pod>) {
        *self.placements.get_mut().expect("placements lock") = None;
        match c {
            Change::Applied(p) => {
                let key = (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                );
                self.pods.insert(key, p);
            }
            Change::Deleted(ns, name) => {
                self.pods.remove(&(ns, name));
            }
        }
    }

    /// Applies a PodGroup change.
    pub fn pod_group(&mut self, c: Change<PodGroup>) {
        match c {
            Change::Applied(pg) => {
                let key = (
                    pg.metadata.namespace.clone().unwrap_or_default(),
                    pg.metadata.name.clone().unwrap_or_default(),
                );
                self.bounds.insert(key, instance_bounds(&pg));
            }
            Change::Deleted(ns, name) => {
                self.bounds.remove(&(ns, name));
            }
        }
    }

    /// The graph (for tests and diagnostics).
    pub fn topology(&self) -> &Topology {
        self.topology.topology()
    }

    fn placements(&self) -> Arc<Placements> {
        let mut cached = self.placements.lock().expect("placements lock");
        cached
            .get_or_insert_with(|| Arc::new(Placements::from_pods(self.pods.values())))
            .clone()
    }

    /// The hard instance bound for the task's role: its PodGroup is the ServingGroup named by
    /// the pod's group label, else Volcano's `Job` (`namespace/podgroup`).
    fn bound_for(&self, task: &extender::TaskInfo) -> Option<i32> {
        let m = Membership::of_task(task);
        let role = m.role?;
        let labelled = task
            .pod
            .pointer("/metadata/labels")
            .and_then(|l| l.get(GROUP_NAME))
            .and_then(|v| v.as_str());
        let key = match labelled {
            Some(g) => (task.namespace.clone(), g.to_string()),
            None => {
                let (ns, pg) = task.job.split_once('/')?;
                (ns.to_string(), pg.to_string())
            }
        };
        self.bounds.get(&key)?.get(&role).copied()
    }

    /// Handles a predicate request body.
    pub fn predicate(&self, body: &[u8]) -> Result<PredicateResponse, ParseError> {
        let req = extender::parse_predicate(body)?;
        let bound = self.bound_for(&req.task);
        Ok(extender::predicate(
            self.topology.topology(),
            &self.placements(),
            &req,
            bound,
        ))
    }

    /// Handles a prioritize request body.
    pub fn prioritize(&self, body: &[u8]) -> Result<PrioritizeResponse, ParseError> {
        let req = extender::parse_prioritize(body)?;
        Ok(extender::prioritize(
            self.topology.topology(),
            &self.placements(),
            &req,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}}}))
        .unwrap()
    }

    fn hn(name: &str, tier: i32, kind: &str, members: &[&str]) -> HyperNode {
        let members: Vec<_> = members
            .iter()
            .map(|m| json!({"type": kind, "selector": {"exactMatch": {"name": m}}}))
            .collect();
        serde_json::from_value(json!({"apiVersion": "topology.volcano.sh/v1alpha1",
            "kind": "HyperNode", "metadata": {"name": name},
            "spec": {"tier": tier, "members": members}}))
        .unwrap()
    }

    fn labels(role: &str, rid: &str) -> serde_json::Value {
        json!({GROUP_NAME: "ms-0", "modelserving.muster.dev/role": role,
            "modelserving.muster.dev/role-id": rid})
    }

    /// spine s0 > racks r0 {a0, a1}, r1 {b0, b1}; decode-0 has one pod placed on a0.
    fn state() -> ExtenderState {
        let mut s = ExtenderState::default();
        for n in ["a0", "a1", "b0", "b1"] {
            s.node(Change::Applied(node(n)));
        }
        s.hypernode(Change::Applied(hn("r0", 1, "Node", &["a0", "a1"])));
        s.hypernode(Change::Applied(hn("r1", 1, "Node", &["b0", "b1"])));
        s.hypernode(Change::Applied(hn("s0", 2, "HyperNode", &["r0", "r1"])));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p0", "namespace": "ns", "labels": labels("decode", "decode-0")},
            "spec": {"nodeName": "a0", "containers": []},
            "status": {"phase": "Running"}}))
        .unwrap();
        s.pod(Change::Applied(pod));
        let pg: PodGroup = serde_json::from_value(json!({
            "apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
            "metadata": {"name": "ms-0", "namespace": "ns"},
            "spec": {"subGroupPolicy": [
                {"name": "decode", "networkTopology": {"mode": "hard", "highestTierAllowed": 1}},
                {"name": "prefill", "networkTopology": {"mode": "soft", "highestTierAllowed": 1}}]}}))
        .unwrap();
        s.pod_group(Change::Applied(pg));
        s
    }

    /// A Volcano-shaped task (PascalCase, with fields Muster ignores).
    fn task(role: &str, rid: &str) -> serde_json::Value {
        json!({"UID": "u", "Job": "ns/ms-0", "Name": "p1", "Namespace": "ns",
            "Resreq": {"MilliCPU": 1000, "ScalarResources": {"nvidia.com/gpu": 8000}},
            "Pod": {"metadata": {"name": "p1", "namespace": "ns", "labels": labels(role, rid)}}})
    }

    #[test]
    fn prioritize_prefers_the_rack_of_the_placed_instance() {
        let s = state();
        let body = json!({"task": task("decode", "decode-0"),
            "nodes": [{"Name": "a1", "Idle": {}}, {"Name": "b0"}]});
        let r = s.prioritize(body.to_string().as_bytes()).unwrap();
        assert!(r.node_score["a1"] > r.node_score["b0"], "{r:?}");
        assert!(r.node_score["b0"] > 0.0, "same spine still counts: {r:?}");
    }

    #[test]
    fn predicate_refuses_only_past_the_hard_instance_bound() {
        let s = state();
        let ask = |role: &str, node: &str| {
            let body = json!({"task": task(role, &format!("{role}-0")), "node": {"Name": node}});
            s.predicate(body.to_string().as_bytes()).unwrap()
        };
        assert_eq!(ask("decode", "a1").code, 0);
        let no = ask("decode", "b0");
        assert_eq!(no.code, 2);
        assert!(no.status.contains("s0"), "{no:?}");
        // Prefill's bound is soft and nothing of it is placed: passes anywhere.
        assert_eq!(ask("prefill", "b0").code, 0);
        // An unknown node passes (fail open).
        assert_eq!(ask("decode", "zz").code, 0);
    }

    #[test]
    fn deletes_are_applied() {
        let mut s = state();
        let body = json!({"task": task("decode", "decode-0"), "node": {"Name": "b0"}});
        // The first request builds the placement index; a pod change must invalidate it.
        assert_eq!(s.predicate(body.to_string().as_bytes()).unwrap().code, 2);
        s.pod(Change::Deleted("ns".into(), "p0".into()));
        assert_eq!(s.predicate(body.to_string().as_bytes()).unwrap().code, 0);
        s.pod_group(Change::Deleted("ns".into(), "ms-0".into()));
        assert!(s.bounds.is_empty());
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_verb() {
        let e = state().prioritize(b"{not json").unwrap_err();
        assert!(e.to_string().contains("prioritize"), "{e}");
    }
}
