//! Discovery: the generated tree equals the hand-written one; foreign HyperNodes are untouched.

use muster_api::labels::{MANAGED_BY, TOPOLOGY_RACK, TOPOLOGY_SPINE};

use crate::discovery::*;
use crate::graph::Topology;
use crate::testutil::*;
use crate::validate::validate;

#[test]
fn discovery_from_labels_builds_the_hand_written_tree() {
    let (hand, nodes) = cluster(2, 4, 4, 8);
    let (found, errs) = desired(&nodes, &DiscoveryConfig::muster_default());
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(found.len(), 10, "8 racks + 2 spines");
    let a = Topology::build(&hand, &nodes, &[]);
    let b = Topology::build(&found, &nodes, &[]);
    assert!(validate(&b).is_empty());
    assert_eq!(a.snapshot(), b.snapshot());
    let spine = found
        .iter()
        .find(|h| h.metadata.name.as_deref() == Some("spine-1"))
        .unwrap();
    assert_eq!(spine.spec.tier_name.as_deref(), Some("spine"));
    assert_eq!(
        spine.metadata.labels.as_ref().unwrap()[MANAGED_BY],
        "muster"
    );
}

#[test]
fn plan_creates_updates_deletes_only_its_own_hypernodes() {
    let (_, nodes) = cluster(1, 2, 2, 8);
    let cfg = DiscoveryConfig::muster_default();
    let (mut ours, _) = desired(&nodes, &cfg);
    // Existing: rack-0-0 ours and current, rack-0-1 ours but stale, spine-0 hand-made (foreign),
    // and an obsolete managed rack plus an obsolete foreign one.
    let stale = ours
        .iter_mut()
        .find(|h| h.metadata.name.as_deref() == Some("rack-0-1"))
        .unwrap();
    stale.spec.members.pop();
    let stale = stale.clone();
    let current = ours
        .iter()
        .find(|h| h.metadata.name.as_deref() == Some("rack-0-0"))
        .unwrap()
        .clone();
    let foreign_spine = hypernode("spine-0", 2, None, vec![]);
    let mut obsolete = hypernode("rack-9-9", 1, None, vec![]);
    obsolete.metadata.labels = current.metadata.labels.clone();
    let foreign_old = hypernode("someone-elses", 1, None, vec![]);
    let p = plan(
        &[current, stale, foreign_spine, obsolete, foreign_old],
        &nodes,
        &cfg,
    );
    let applied: Vec<_> = p
        .apply
        .iter()
        .filter_map(|h| h.metadata.name.as_deref())
        .collect();
    assert_eq!(applied, vec!["rack-0-1"], "only the stale managed one");
    assert_eq!(p.delete, vec!["rack-9-9".to_string()]);
    assert_eq!(
        p.errors,
        vec![DiscoveryError::NotOurs {
            name: "spine-0".into()
        }]
    );
}

#[test]
fn discovery_reports_missing_labels_bad_names_and_split_racks() {
    let nodes = vec![
        node("a", &[(TOPOLOGY_RACK, "r1"), (TOPOLOGY_SPINE, "s1")], 8),
        node("b", &[(TOPOLOGY_RACK, "r1"), (TOPOLOGY_SPINE, "s2")], 8),
        node("c", &[(TOPOLOGY_RACK, "r2")], 8),
        node(
            "d",
            &[(TOPOLOGY_RACK, "Bad_Name"), (TOPOLOGY_SPINE, "s1")],
            8,
        ),
    ];
    let (found, errs) = desired(&nodes, &DiscoveryConfig::muster_default());
    let names: Vec<_> = found
        .iter()
        .filter_map(|h| h.metadata.name.as_deref())
        .collect();
    assert_eq!(names, vec!["r1", "s1"]);
    assert!(errs.contains(&DiscoveryError::MissingLabel {
        node: "c".into(),
        label: TOPOLOGY_SPINE.into()
    }));
    assert!(errs
        .iter()
        .any(|e| matches!(e, DiscoveryError::BadName { node, .. } if node == "d")));
    assert!(errs.contains(&DiscoveryError::InconsistentParent {
        child: "r1".into(),
        label: TOPOLOGY_SPINE.into(),
        parents: vec!["s1".into(), "s2".into()],
        chosen: "s1".into(),
    }));
}
