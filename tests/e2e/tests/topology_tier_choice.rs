//! Muster's automatic network-topology tier choice on the local control plane (2 spines × 4
//! racks × 4 nodes × 8 GPUs; a rack holds 32 GPUs, a spine 128): the ModelServing controller
//! writes the lowest tier that can hold each scope into the PodGroup, Volcano places the gang
//! accordingly, and status and Events say which tier was chosen and why.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};
use muster_api::labels::{self, TIER_DECISION, TOPOLOGY_RACK, TOPOLOGY_SPINE};
use muster_api::serving::{ModelServing, TierDecision};
use muster_api::volcano::{NetworkTopologyMode, PodGroup};
use muster_e2e::{wait_for, ControllerHandle, TestNamespace};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(120);

fn pod_template(gpus: u32) -> Value {
    json!({"spec": {"containers": [{"name": "engine", "image": "muster/engine-sim:latest",
        "args": ["--port", "8000"],
        "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}})
}

/// A role of `instances` × (1 + `workers`) pods of 8 GPUs, no network topology of its own.
fn role(name: &str, instances: i32, workers: i32) -> Value {
    let mut r = json!({"name": name, "replicas": instances, "workerReplicas": workers,
        "tensorParallelSize": 8 * (1 + workers), "entryTemplate": pod_template(8)});
    if workers > 0 {
        r["workerTemplate"] = pod_template(8);
    }
    r
}

fn model_serving(name: &str, roles: Vec<Value>, network_topology: Option<Value>) -> Value {
    let mut template = json!({"roles": roles});
    if let Some(nt) = network_topology {
        template["networkTopology"] = nt;
    }
    json!({"apiVersion": "workload.muster.dev/v1alpha1", "kind": "ModelServing",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "schedulerName": "volcano", "template": template,
            "recoveryPolicy": "ServingGroupRecreate"}})
}

fn tier(
    nt: Option<&muster_api::volcano::NetworkTopologySpec>,
) -> Option<(NetworkTopologyMode, i32)> {
    nt.and_then(|n| Some((n.mode, n.highest_tier_allowed?)))
}

/// The group's PodGroup once the controller has written it.
async fn pod_group(ns: &TestNamespace, name: &str) -> PodGroup {
    let api = Api::<PodGroup>::namespaced(ns.client.clone(), &ns.name);
    wait_for(TIMEOUT, &format!("PodGroup {name}"), || async {
        Ok(api.get_opt(name).await?)
    })
    .await
    .unwrap()
}

/// Every pod of `ms`, once all `count` are bound, with the node each landed on.
async fn bound_pods(ns: &TestNamespace, ms: &str, count: usize) -> Vec<(Pod, String)> {
    let api = Api::<Pod>::namespaced(ns.client.clone(), &ns.name);
    let lp = ListParams::default().labels(&format!("{}={ms}", labels::MODEL_SERVING_NAME));
    wait_for(TIMEOUT, &format!("{count} pods of {ms} bound"), || async {
        let pods: Vec<(Pod, String)> = api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter_map(|p| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                Some((p, node))
            })
            .collect();
        Ok((pods.len() == count).then_some(pods))
    })
    .await
    .unwrap()
}

/// (rack, spine) labels of a node.
async fn place(ns: &TestNamespace, node: &str) -> (String, String) {
    let n = Api::<Node>::all(ns.client.clone()).get(node).await.unwrap();
    let l = n.metadata.labels.unwrap_or_default();
    (
        l.get(TOPOLOGY_RACK)
            .cloned()
            .expect("node has a rack label"),
        l.get(TOPOLOGY_SPINE)
            .cloned()
            .expect("node has a spine label"),
    )
}

/// The group's tier decision from ModelServing status.
async fn status_decision(ns: &TestNamespace, ms: &str) -> TierDecision {
    let api = Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name);
    wait_for(
        TIMEOUT,
        &format!("{ms} status with a tier decision"),
        || async {
            let got = api.get(ms).await?;
            Ok(got
                .status
                .and_then(|s| s.serving_groups.into_iter().next())
                .and_then(|g| g.topology)
                .filter(|d| !d.demand.is_empty()))
        },
    )
    .await
    .unwrap()
}

/// Events with `reason` recorded on ModelServing `ms`.
async fn events(ns: &TestNamespace, ms: &str, reason: &str) -> Vec<Event> {
    let api = Api::<Event>::namespaced(ns.client.clone(), &ns.name);
    wait_for(TIMEOUT, &format!("a {reason} Event on {ms}"), || async {
        let found: Vec<Event> = api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.kind.as_deref() == Some("ModelServing")
                    && e.involved_object.name.as_deref() == Some(ms)
            })
            .collect();
        Ok((!found.is_empty()).then_some(found))
    })
    .await
    .unwrap()
}

fn note(e: &Event) -> String {
    e.message.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tp_group_that_fits_a_rack_lands_in_one_rack() {
    let ns = TestNamespace::new("tier-tp").await;
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    // One instance of three 8-GPU pods (TP 24): 24 GPUs, a rack holds 32.
    ns.create(&model_serving("tp24", vec![role("engine", 1, 2)], None))
        .await
        .expect("create");

    let pg = pod_group(&ns, "tp24-0").await;
    assert_eq!(
        tier(pg.spec.network_topology.as_ref()),
        Some((NetworkTopologyMode::Hard, 1)),
        "{:?}",
        pg.spec
    );
    let sub = &pg.spec.sub_group_policy.as_ref().unwrap()[0];
    assert_eq!(
        tier(sub.network_topology.as_ref()),
        Some((NetworkTopologyMode::Hard, 1))
    );
    assert!(
        pg.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(TIER_DECISION)),
        "the decision is pinned on the PodGroup"
    );

    let pods = bound_pods(&ns, "tp24", 3).await;
    let mut racks = BTreeSet::new();
    for (_, node) in &pods {
        racks.insert(place(&ns, node).await.0);
    }
    assert_eq!(racks.len(), 1, "TP pods spread over racks {racks:?}");

    let decision = status_decision(&ns, "tp24").await;
    assert_eq!(
        tier(decision.group.network_topology.as_ref()),
        Some((NetworkTopologyMode::Hard, 1))
    );
    assert!(decision.group.automatic && !decision.group.infeasible);
    assert!(
        decision
            .group
            .message
            .contains("tier 1 is the lowest tier with a HyperNode that holds it"),
        "{}",
        decision.group.message
    );
    let chosen = events(&ns, "tp24", "TierChosen").await;
    assert!(
        chosen
            .iter()
            .any(|e| note(e).contains("group hard tier 1") && e.type_.as_deref() == Some("Normal")),
        "{:?}",
        chosen.iter().map(note).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2p2d_group_keeps_each_role_instance_in_a_rack_and_the_group_in_a_spine() {
    let ns = TestNamespace::new("tier-pd").await;
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    // Two prefill and two decode instances of two 8-GPU pods each: an instance (16 GPUs) and a
    // whole role (32) fit a rack, the group (64) only a spine.
    let doc = model_serving(
        "pd",
        vec![role("prefill", 2, 1), role("decode", 2, 1)],
        None,
    );
    ns.create(&doc).await.expect("create");

    let pg = pod_group(&ns, "pd-0").await;
    assert_eq!(
        tier(pg.spec.network_topology.as_ref()),
        Some((NetworkTopologyMode::Hard, 2)),
        "{:?}",
        pg.spec
    );
    for sub in pg.spec.sub_group_policy.as_ref().unwrap() {
        assert_eq!(
            tier(sub.network_topology.as_ref()),
            Some((NetworkTopologyMode::Hard, 1)),
            "{sub:?}"
        );
    }

    let pods = bound_pods(&ns, "pd", 8).await;
    let mut racks_of_instance: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut racks_of_role: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut spines = BTreeSet::new();
    for (pod, node) in &pods {
        let l = pod.metadata.labels.as_ref().unwrap();
        let (rack, spine) = place(&ns, node).await;
        racks_of_instance
            .entry(l[labels::ROLE_ID].clone())
            .or_default()
            .insert(rack.clone());
        racks_of_role
            .entry(l[labels::ROLE].clone())
            .or_default()
            .insert(rack);
        spines.insert(spine);
    }
    assert_eq!(racks_of_instance.len(), 4, "{racks_of_instance:?}");
    for (instance, racks) in &racks_of_instance {
        assert_eq!(racks.len(), 1, "{instance} spread over racks {racks:?}");
    }
    assert_eq!(spines.len(), 1, "prefill and decode in spines {spines:?}");
    // Volcano's sub-groups are per role instance, so a whole role may use two racks of the
    // spine; what it used is printed for the record.
    println!("racks per role: {racks_of_role:?}; spine {spines:?}");

    let decision = status_decision(&ns, "pd").await;
    assert_eq!(
        tier(decision.group.network_topology.as_ref()),
        Some((NetworkTopologyMode::Hard, 2))
    );
    assert!(
        decision
            .group
            .message
            .contains("group: 8 pods / 64 GPUs: tier 2 is the lowest tier"),
        "{}",
        decision.group.message
    );
    let roles: Vec<_> = decision
        .roles
        .iter()
        .map(|r| (r.scope.clone(), tier(r.network_topology.as_ref())))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("prefill".into(), Some((NetworkTopologyMode::Hard, 1))),
            ("decode".into(), Some((NetworkTopologyMode::Hard, 1)))
        ]
    );
    let chosen = events(&ns, "pd", "TierChosen").await;
    assert!(
        chosen.iter().any(|e| note(e).contains("group hard tier 2")
            && note(e).contains("role decode instances hard tier 1")),
        "{:?}",
        chosen.iter().map(note).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsatisfiable_hard_user_bound_is_written_and_reported() {
    let ns = TestNamespace::new("tier-inf").await;
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    // Five 8-GPU pods (40 GPUs) under a user's hard tier-1 bound: no rack holds 32+8.
    let doc = model_serving(
        "big",
        vec![role("engine", 1, 4)],
        Some(json!({"groupPolicy": {"mode": "hard", "highestTierAllowed": 1}})),
    );
    ns.create(&doc).await.expect("create");

    let pg = pod_group(&ns, "big-0").await;
    assert_eq!(
        tier(pg.spec.network_topology.as_ref()),
        Some((NetworkTopologyMode::Hard, 1)),
        "the user's bound is written unchanged"
    );
    let decision = status_decision(&ns, "big").await;
    assert!(decision.group.infeasible, "{decision:?}");
    assert!(
        decision.group.message.contains(
            "INFEASIBLE: user hard bound tier 1 but the lowest tier that can hold it is 2"
        ),
        "{}",
        decision.group.message
    );
    let warned = events(&ns, "big", "TierInfeasible").await;
    assert!(
        warned.iter().all(|e| e.type_.as_deref() == Some("Warning")),
        "{warned:?}"
    );
    // The role instance had no user bound: it gets the automatic one (a spine).
    assert_eq!(
        tier(decision.roles[0].network_topology.as_ref()),
        Some((NetworkTopologyMode::Hard, 2))
    );
}
