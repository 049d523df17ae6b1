//! Extender: lenient parsing, wire shapes, scoring and the predicate.

use muster_api::labels::{GROUP_NAME, ROLE, ROLE_ID};
use serde_json::json;

use crate::extender::*;
use crate::graph::Topology;
use crate::testutil::*;

fn cluster_2x4() -> Topology {
    let (hns, nodes) = cluster(2, 4, 4, 8);
    Topology::build(&hns, &nodes, &[])
}

fn placed(name: &str, node: &str, role: &str, role_id: &str) -> k8s_openapi::api::core::v1::Pod {
    let mut p = pod(name, Some(node), 8, "Running");
    p.metadata.labels = Some(
        [
            (GROUP_NAME.to_string(), "llm-0".to_string()),
            (ROLE.to_string(), role.to_string()),
            (ROLE_ID.to_string(), role_id.to_string()),
        ]
        .into(),
    );
    p
}

fn task(role: &str, role_id: &str) -> serde_json::Value {
    json!({
        "UID": "u1", "Job": "default/llm-0", "Name": "w", "Namespace": "default",
        "Resreq": {"MilliCPU": 1000, "ScalarResources": {"nvidia.com/gpu": 8000}},
        "Pod": {"metadata": {"name": "w", "labels": {
            GROUP_NAME: "llm-0", ROLE: role, ROLE_ID: role_id}},
            "spec": {"containers": [{"name": "c"}]}},
        "SomethingNewInVolcano": {"x": 1}
    })
}

#[test]
fn parsing_is_lenient_but_rejects_non_json() {
    let body =
        json!({"task": task("prefill", "prefill-0"), "node": {"Name": "node-0-0-0", "Idle": {}}});
    let r = parse_predicate(body.to_string().as_bytes()).unwrap();
    assert_eq!(r.node.name, "node-0-0-0");
    let m = Membership::of_task(&r.task);
    assert_eq!(m.group.as_deref(), Some("llm-0"));
    assert_eq!(m.role_id.as_deref(), Some("prefill-0"));
    // Empty object: everything defaults.
    let r = parse_prioritize(b"{}").unwrap();
    assert!(r.nodes.is_empty());
    // A pod without labels falls back to Volcano's job id for the group.
    let r = parse_prioritize(br#"{"task":{"Job":"ns/pg-1","Pod":null},"nodes":[{"Name":"a"}]}"#)
        .unwrap();
    assert_eq!(
        Membership::of_task(&r.task).group.as_deref(),
        Some("ns/pg-1")
    );
    let e = parse_predicate(b"not json").unwrap_err();
    assert!(e.to_string().contains("predicate verb"), "{e}");
}

#[test]
fn responses_use_volcano_wire_names() {
    let p = PrioritizeResponse {
        node_score: [("n".to_string(), 50.0)].into(),
        error_message: String::new(),
    };
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({"nodeScore": {"n": 50.0}, "errorMessage": ""})
    );
    assert_eq!(
        serde_json::to_value(PredicateResponse::default()).unwrap(),
        json!({"status": "", "code": 0})
    );
}

#[test]
fn prioritize_prefers_own_instance_rack_then_peer_spine() {
    let t = cluster_2x4();
    let pods = [
        placed("p0", "node-0-0-0", "prefill", "prefill-0"),
        placed("d0", "node-0-1-0", "decode", "decode-0"),
    ];
    let pl = Placements::from_pods(&pods);
    let req: PrioritizeRequest = serde_json::from_value(json!({
        "task": task("prefill", "prefill-0"),
        "nodes": [{"Name": "node-1-0-0"}, {"Name": "node-0-1-1"}, {"Name": "node-0-0-1"}, {"Name": "node-0-0-0"}, {"Name": "unknown"}]
    }))
    .unwrap();
    let s = prioritize(&t, &pl, &req).node_score;
    assert!(s["node-0-0-0"] > s["node-0-0-1"], "{s:?}");
    assert!(
        s["node-0-0-1"] > s["node-0-1-1"],
        "same rack as own instance beats peer's rack: {s:?}"
    );
    assert!(
        s["node-0-1-1"] > s["node-1-0-0"],
        "same spine beats other spine: {s:?}"
    );
    assert_eq!(s["node-1-0-0"], 0.0);
    assert_eq!(s["unknown"], 0.0);
    assert!(s.values().all(|v| (0.0..=100.0).contains(v)));
}

#[test]
fn prioritize_is_neutral_before_anything_is_placed() {
    let t = cluster_2x4();
    let req: PrioritizeRequest = serde_json::from_value(json!({
        "task": task("prefill", "prefill-0"),
        "nodes": [{"Name": "node-1-0-0"}, {"Name": "node-0-0-1"}]
    }))
    .unwrap();
    let s = prioritize(&t, &Placements::default(), &req).node_score;
    assert_eq!(s.values().copied().collect::<Vec<_>>(), vec![0.0, 0.0]);
}

#[test]
fn predicate_rejects_only_nodes_that_break_the_instance_tier() {
    let t = cluster_2x4();
    let pods = [placed("p0", "node-0-0-0", "prefill", "prefill-0")];
    let pl = Placements::from_pods(&pods);
    let ask = |node: &str, max: Option<i32>| {
        let req: PredicateRequest = serde_json::from_value(json!({
            "task": task("prefill", "prefill-0"), "node": {"Name": node}
        }))
        .unwrap();
        predicate(&t, &pl, &req, max)
    };
    assert_eq!(ask("node-0-0-3", Some(1)).code, code::SUCCESS);
    let r = ask("node-0-2-0", Some(1));
    assert_eq!(r.code, code::UNSCHEDULABLE);
    assert!(
        r.status.contains("HyperNode spine-0 of tier 2"),
        "{}",
        r.status
    );
    assert!(r.status.contains("prefill-0"), "{}", r.status);
    assert_eq!(ask("node-0-2-0", Some(2)).code, code::SUCCESS);
    let r = ask("node-1-0-0", Some(2));
    assert!(r.status.contains("no common HyperNode"), "{}", r.status);
    assert_eq!(
        ask("node-1-0-0", None).code,
        code::SUCCESS,
        "no bound known: fail open"
    );
    assert_eq!(
        ask("ghost", Some(1)).code,
        code::SUCCESS,
        "unknown node: fail open"
    );
}
