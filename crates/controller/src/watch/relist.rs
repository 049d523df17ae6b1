//! Turns kube watcher events into applies and deletes, including the deletes a watch restart
//! implies: objects that vanished while the watch was down are never reported as `Delete`, only
//! by their absence from the re-list.

use std::collections::BTreeSet;

use kube::runtime::watcher::Event;
use kube::ResourceExt;

/// One change to feed into a cache.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<K> {
    /// Added or modified.
    Applied(K),
    /// Deleted: `(namespace, name)` (namespace empty for cluster-scoped kinds).
    Deleted(String, String),
}

/// Tracks the keys seen so that a re-list can report what disappeared.
#[derive(Debug, Default)]
pub struct Relist {
    known: BTreeSet<(String, String)>,
    listing: Option<BTreeSet<(String, String)>>,
}

fn key<K: ResourceExt>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl Relist {
    /// The changes `ev` stands for.
    pub fn changes<K: ResourceExt + Clone>(&mut self, ev: Event<K>) -> Vec<Change<K>> {
        match ev {
            Event::Init => {
                self.listing = Some(BTreeSet::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                self.listing
                    .get_or_insert_with(BTreeSet::new)
                    .insert(key(&o));
                self.known.insert(key(&o));
                vec![Change::Applied(o)]
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<_> = self.known.difference(&listed).cloned().collect();
                self.known = listed;
                gone.into_iter()
                    .map(|(ns, n)| Change::Deleted(ns, n))
                    .collect()
            }
            Event::Apply(o) => {
                self.known.insert(key(&o));
                vec![Change::Applied(o)]
            }
            Event::Delete(o) => {
                let (ns, n) = key(&o);
                self.known.remove(&(ns.clone(), n.clone()));
                vec![Change::Deleted(ns, n)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    fn node(n: &str) -> Node {
        serde_json::from_value(serde_json::json!({"metadata": {"name": n}})).unwrap()
    }

    #[test]
    fn a_relist_deletes_what_vanished_meanwhile() {
        let mut r = Relist::default();
        r.changes::<Node>(Event::Init);
        r.changes(Event::InitApply(node("a")));
        r.changes(Event::InitApply(node("b")));
        assert!(r.changes::<Node>(Event::InitDone).is_empty());
        assert_eq!(
            r.changes(Event::Delete(node("a"))),
            vec![Change::Deleted(String::new(), "a".into())]
        );
        r.changes(Event::Apply(node("c")));
        // Restart: only c is still there, so b is reported deleted (a already was).
        r.changes::<Node>(Event::Init);
        assert_eq!(r.changes(Event::InitApply(node("c"))).len(), 1);
        assert_eq!(
            r.changes::<Node>(Event::InitDone),
            vec![Change::Deleted(String::new(), "b".into())]
        );
    }
}
