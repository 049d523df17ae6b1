//! HyperNode discovery against the local control plane: the tree built from node labels,
//! relabelling, and never touching HyperNodes that are not this instance's.
//!
//! The test labels its own kwok nodes with label keys unique to it and runs discovery in-process
//! with a unique `--discovery-source`, so the cluster's hand-written `rack-*`/`spine-*` tree and
//! concurrent tests are unaffected.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use muster_api::volcano::HyperNode;
use muster_controller::discovery::{parse_tier_flags, DiscoveryOptions};
use muster_e2e::{delete_node, kubectl, wait_for, DiscoveryHandle, TestNamespace, TestNodes};
use serde_json::json;

/// name -> (tier, tierName, sorted "Type/name" members).
type Tree = BTreeMap<String, (i32, Option<String>, Vec<String>)>;

fn tree_of(hns: &[HyperNode]) -> Tree {
    hns.iter()
        .map(|h| {
            let mut members: Vec<String> = h
                .spec
                .members
                .iter()
                .map(|m| {
                    let name = m
                        .selector
                        .as_ref()
                        .and_then(|s| s.exact_match.as_ref())
                        .map_or("<not exactMatch>".to_string(), |e| e.name.clone());
                    format!("{:?}/{name}", m.type_)
                })
                .collect();
            members.sort();
            (
                h.name_any(),
                (h.spec.tier, h.spec.tier_name.clone(), members),
            )
        })
        .collect()
}

fn entry(
    tier: i32,
    tier_name: &str,
    kind: &str,
    members: &[String],
) -> (i32, Option<String>, Vec<String>) {
    let mut m: Vec<String> = members.iter().map(|n| format!("{kind}/{n}")).collect();
    m.sort();
    (tier, Some(tier_name.into()), m)
}

/// Removes the test's HyperNodes (by source label and by name) when the test ends, pass or fail.
struct Cleanup {
    source: String,
    names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let selector = format!("topology.muster.dev/discovery-source={}", self.source);
        kubectl(&[
            "delete",
            "hypernodes",
            "-l",
            &selector,
            "--wait=false",
            "--ignore-not-found",
        ]);
        for n in &self.names {
            kubectl(&[
                "delete",
                "hypernode",
                n,
                "--wait=false",
                "--ignore-not-found",
            ]);
        }
    }
}

async fn wait_tree(client: &Client, source: &str, want: &Tree, what: &str) -> Result<()> {
    let api = Api::<HyperNode>::all(client.clone());
    let lp =
        ListParams::default().labels(&format!("topology.muster.dev/discovery-source={source}"));
    let last = std::sync::Arc::new(std::sync::Mutex::new(Tree::new()));
    let res = wait_for(Duration::from_secs(30), what, || {
        let (api, lp, last) = (api.clone(), lp.clone(), last.clone());
        async move {
            let got = tree_of(&api.list(&lp).await?.items);
            let done = got == *want;
            *last.lock().unwrap() = got;
            Ok(done.then_some(()))
        }
    })
    .await;
    let last = last.lock().unwrap().clone();
    res.map_err(|e| anyhow::anyhow!("{e}\nwanted {want:#?}\nlast seen {last:#?}"))
}

async fn relabel(client: &Client, node: &str, key: &str, value: &str) -> Result<()> {
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_builds_moves_and_never_touches_foreign_hypernodes() -> Result<()> {
    let ns = TestNamespace::new("topodisc").await;
    let client = ns.client.clone();
    // Unique per test run: label keys, HyperNode names (= label values) and the source.
    let id = ns.name.clone();
    let rack_key = format!("e2e.muster.dev/rack-{}", &id[id.len() - 5..]);
    let spine_key = format!("e2e.muster.dev/spine-{}", &id[id.len() - 5..]);
    let source = id.clone();
    let rack = |s: usize, r: usize| format!("{id}-rack-{s}-{r}");
    let spine = |s: usize| format!("{id}-spine-{s}");
    let node = |s: usize, r: usize, i: usize| format!("{id}-n{s}{r}{i}");

    let hn_api = Api::<HyperNode>::all(client.clone());
    let hand_written = hn_api.get("rack-0-0").await?;
    // A foreign HyperNode with the name discovery wants for spine 1 (no Muster labels), and one
    // that Muster manages under another discovery source; neither may be touched. Neither gives
    // any HyperNode a second parent: Volcano would mark its whole HyperNode cache not ready,
    // which would disturb tests running next to this one.
    let foreign: HyperNode = serde_json::from_value(json!({
        "apiVersion": "topology.volcano.sh/v1alpha1", "kind": "HyperNode",
        "metadata": {"name": spine(1)},
        "spec": {"tier": 2, "members": [{"type": "HyperNode", "selector": {"exactMatch": {"name": rack(1, 0)}}}]}
    }))?;
    let other_source: HyperNode = serde_json::from_value(json!({
        "apiVersion": "topology.volcano.sh/v1alpha1", "kind": "HyperNode",
        "metadata": {"name": format!("{id}-other"), "labels": {
            "app.kubernetes.io/managed-by": "muster",
            "topology.muster.dev/discovery-source": format!("{id}-x")}},
        "spec": {"tier": 1, "members": [{"type": "Node", "selector": {"exactMatch": {"name": format!("{id}-ghost")}}}]}
    }))?;
    let _cleanup = Cleanup {
        source: source.clone(),
        names: vec![spine(1), format!("{id}-other")],
    };
    let foreign = hn_api.create(&PostParams::default(), &foreign).await?;
    let other_source = hn_api.create(&PostParams::default(), &other_source).await?;

    // 2 spines x 2 racks x 2 nodes, labelled with this test's keys.
    let mut nodes = TestNodes::new(client.clone());
    for s in 0..2 {
        for r in 0..2 {
            for i in 0..2 {
                let (rv, sv) = (rack(s, r), spine(s));
                nodes
                    .add(
                        &node(s, r, i),
                        8,
                        &id,
                        &[(&rack_key, &rv), (&spine_key, &sv)],
                    )
                    .await?;
            }
        }
    }

    let cfg = parse_tier_flags(
        &[format!("1={rack_key}"), format!("2={spine_key}")],
        &["1=rack".into(), "2=spine".into()],
        Some(&source),
    )?;
    let mut opts = DiscoveryOptions::new(cfg);
    opts.debounce = Duration::from_millis(200);
    let discovery = DiscoveryHandle::start(client.clone(), opts);

    // The tree from labels; spine 1 is left to its foreign owner (reported as NotOurs).
    let mut want = Tree::new();
    for s in 0..2 {
        for r in 0..2 {
            want.insert(
                rack(s, r),
                entry(1, "rack", "Node", &[node(s, r, 0), node(s, r, 1)]),
            );
        }
    }
    want.insert(
        spine(0),
        entry(2, "spine", "HyperNode", &[rack(0, 0), rack(0, 1)]),
    );
    wait_tree(&client, &source, &want, "discovered tree without spine 1").await?;
    let now = hn_api.get(&spine(1)).await?;
    assert_eq!(now.spec, foreign.spec, "foreign HyperNode modified");
    assert_eq!(
        now.labels(),
        foreign.labels(),
        "foreign HyperNode relabelled"
    );
    assert_eq!(now.resource_version(), foreign.resource_version());

    // Once the foreign one is gone, discovery creates its own spine 1.
    hn_api.delete(&spine(1), &Default::default()).await?;
    want.insert(
        spine(1),
        entry(2, "spine", "HyperNode", &[rack(1, 0), rack(1, 1)]),
    );
    wait_tree(
        &client,
        &source,
        &want,
        "spine 1 created after the foreign one left",
    )
    .await?;

    // Relabelling moves a node; a rack left empty is deleted, the spine follows.
    relabel(&client, &node(0, 0, 0), &rack_key, &rack(0, 1)).await?;
    want.insert(rack(0, 0), entry(1, "rack", "Node", &[node(0, 0, 1)]));
    want.insert(
        rack(0, 1),
        entry(
            1,
            "rack",
            "Node",
            &[node(0, 0, 0), node(0, 1, 0), node(0, 1, 1)],
        ),
    );
    wait_tree(&client, &source, &want, "node moved to rack 0-1").await?;
    relabel(&client, &node(0, 0, 1), &rack_key, &rack(0, 1)).await?;
    want.remove(&rack(0, 0));
    want.insert(
        rack(0, 1),
        entry(
            1,
            "rack",
            "Node",
            &[node(0, 0, 0), node(0, 0, 1), node(0, 1, 0), node(0, 1, 1)],
        ),
    );
    want.insert(spine(0), entry(2, "spine", "HyperNode", &[rack(0, 1)]));
    wait_tree(&client, &source, &want, "empty rack 0-0 deleted").await?;

    // A node moving to another spine takes a whole new rack with it.
    relabel(
        &client,
        &node(1, 1, 1),
        &rack_key,
        &format!("{id}-rack-2-0"),
    )
    .await?;
    relabel(&client, &node(1, 1, 1), &spine_key, &spine(2)).await?;
    want.insert(rack(1, 1), entry(1, "rack", "Node", &[node(1, 1, 0)]));
    want.insert(
        format!("{id}-rack-2-0"),
        entry(1, "rack", "Node", &[node(1, 1, 1)]),
    );
    want.insert(
        spine(2),
        entry(2, "spine", "HyperNode", &[format!("{id}-rack-2-0")]),
    );
    wait_tree(&client, &source, &want, "node moved to a new spine").await?;

    // A deleted node leaves its rack; the rack left empty goes, and its spine with it.
    delete_node(&client, &node(1, 1, 0)).await?;
    want.remove(&rack(1, 1));
    want.insert(spine(1), entry(2, "spine", "HyperNode", &[rack(1, 0)]));
    wait_tree(&client, &source, &want, "deleted node's rack removed").await?;
    delete_node(&client, &node(1, 1, 1)).await?;
    want.remove(&format!("{id}-rack-2-0"));
    want.remove(&spine(2));
    wait_tree(
        &client,
        &source,
        &want,
        "spine 2 removed with its last node",
    )
    .await?;

    // Never touched: the other source's HyperNode and the hand-written tree.
    let other_now = hn_api.get(&format!("{id}-other")).await?;
    assert_eq!(
        other_now.resource_version(),
        other_source.resource_version()
    );
    assert_eq!(
        hn_api.get("rack-0-0").await?.resource_version(),
        hand_written.resource_version(),
        "hand-written HyperNode modified"
    );
    // Discovery wrote with field manager `muster`.
    let managers: Vec<String> = hn_api
        .get(&rack(0, 1))
        .await?
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.iter().any(|m| m == "muster"), "{managers:?}");

    drop(discovery);
    Ok(())
}

/// Read-only: discovery's default configuration over the cluster's own nodes (those made by
/// `hack/cluster-up.sh`, named `node-s*`; other tests add labelled nodes of their own) plans
/// exactly the hand-written `rack-*`/`spine-*` tree, and running it against the cluster would
/// write nothing, because those HyperNodes are not Muster-managed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_discovery_matches_the_hand_written_tree() -> Result<()> {
    use muster_topology::discovery::{desired, plan, DiscoveryConfig, DiscoveryError};
    let client = muster_e2e::client().await;
    let nodes: Vec<Node> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|n| n.name_any().starts_with("node-s"))
        .collect();
    let hand: Vec<HyperNode> = Api::<HyperNode>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|h| {
            let n = h.name_any();
            let is_hand = |p: &str| {
                n.strip_prefix(p)
                    .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '-'))
            };
            is_hand("rack-") || is_hand("spine-")
        })
        .collect();
    assert!(!hand.is_empty() && !nodes.is_empty());
    let cfg = DiscoveryConfig::muster_default();
    let (found, errors) = desired(&nodes, &cfg);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tree_of(&found), tree_of(&hand));

    let p = plan(&hand, &nodes, &cfg);
    assert!(p.apply.is_empty() && p.delete.is_empty(), "{p:?}");
    assert_eq!(p.errors.len(), hand.len());
    assert!(p
        .errors
        .iter()
        .all(|e| matches!(e, DiscoveryError::NotOurs { .. })));
    Ok(())
}
