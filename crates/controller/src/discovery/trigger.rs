//! Which Node watch events call for a re-plan: discovery depends only on node names and
//! labels, and kwok or kubelets update Node status constantly, so status-only changes are
//! dropped here instead of costing a reconcile each.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;

/// Remembers each watched Node's labels to tell label changes from status noise. This is only
/// a filter on *when* to plan; the plan itself always reads Nodes from the API server.
#[derive(Debug, Default)]
pub struct NodeLabelChanges {
    seen: HashMap<String, BTreeMap<String, String>>,
    // Labels gathered during a watch (re)start, swapped in at InitDone so that nodes deleted
    // while the watch was down are noticed.
    init: Option<HashMap<String, BTreeMap<String, String>>>,
}

impl NodeLabelChanges {
    /// Whether `ev` may change the discovered tree.
    pub fn observe(&mut self, ev: &Event<Node>) -> bool {
        let key = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        let labels = |n: &Node| n.metadata.labels.clone().unwrap_or_default();
        match ev {
            Event::Init => {
                self.init = Some(HashMap::new());
                false
            }
            Event::InitApply(n) => {
                self.init
                    .get_or_insert_with(HashMap::new)
                    .insert(key(n), labels(n));
                false
            }
            Event::InitDone => {
                let fresh = self.init.take().unwrap_or_default();
                let changed = fresh != self.seen;
                self.seen = fresh;
                // The first listing always plans (nothing was seen before, or nothing at all
                // exists and stale HyperNodes must go).
                changed || self.seen.is_empty()
            }
            Event::Apply(n) => self.seen.insert(key(n), labels(n)) != Some(labels(n)),
            Event::Delete(n) => {
                self.seen.remove(&key(n));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, rack: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"rack": rack}},
        }))
        .unwrap()
    }

    #[test]
    fn only_label_changes_and_deletions_trigger() {
        let mut f = NodeLabelChanges::default();
        assert!(!f.observe(&Event::Init));
        assert!(!f.observe(&Event::InitApply(node("a", "r1"))));
        assert!(f.observe(&Event::InitDone), "first listing plans");
        // Same labels (a status heartbeat): no re-plan.
        assert!(!f.observe(&Event::Apply(node("a", "r1"))));
        assert!(f.observe(&Event::Apply(node("a", "r2"))), "relabelled");
        assert!(f.observe(&Event::Apply(node("b", "r2"))), "new node");
        assert!(f.observe(&Event::Delete(node("b", "r2"))));
        // A watch restart that finds the same nodes plans nothing; one that lost a node does.
        f.observe(&Event::Init);
        f.observe(&Event::InitApply(node("a", "r2")));
        assert!(!f.observe(&Event::InitDone));
        f.observe(&Event::Init);
        assert!(f.observe(&Event::InitDone), "node a vanished while down");
    }
}
