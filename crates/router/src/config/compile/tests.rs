//! Compiling observed objects: defaults, validation, ordering, shadowing, PD counts.

use super::*;
use crate::config::matching::RequestFacts;
use crate::scheduler::PluginKind;
use hyper::header::HeaderMap;
use std::net::SocketAddr;

fn server(name: &str, yaml: &str, endpoints: &[(&str, &str, bool)]) -> ServerInput {
    ServerInput {
        key: ObjectKey::new("ns", name),
        generation: Some(1),
        annotations: BTreeMap::new(),
        spec: serde_yaml::from_str(yaml).unwrap(),
        endpoints: endpoints
            .iter()
            .map(|(n, a, ready)| EndpointInput {
                name: n.to_string(),
                address: a.parse::<SocketAddr>().unwrap(),
                ready: *ready,
                labels: BTreeMap::new(),
                kv_events: None,
                node: None,
            })
            .collect(),
    }
}

const SPEC: &str = "inferenceEngine: vLLM\nworkloadSelector: {matchLabels: {app: x}}\nworkloadPort: {port: 8000}\n";

fn route(name: &str, created: i64, yaml: &str) -> RouteInput {
    RouteInput {
        key: ObjectKey::new("ns", name),
        generation: Some(1),
        created: Some(created),
        position: 0,
        spec: serde_yaml::from_str(yaml).unwrap(),
    }
}

fn facts<'a>(headers: &'a HeaderMap, model: &'a str) -> RequestFacts<'a> {
    RequestFacts {
        headers,
        path: "/v1/chat/completions",
        model,
    }
}

#[test]
fn oldest_route_wins_and_a_fully_shadowed_one_is_reported() {
    let input = ConfigInput {
        servers: vec![server("old", SPEC, &[]), server("new", SPEC, &[])],
        routes: vec![
            route(
                "newer",
                200,
                "modelName: llama\nrules: [{targetModels: [{modelServerName: new}]}]",
            ),
            route(
                "older",
                100,
                "modelName: llama\nrules: [{targetModels: [{modelServerName: old}]}]",
            ),
        ],
    };
    let c = compile(&input, &Defaults::default());
    let routes = &c.routes["llama"];
    assert_eq!(routes[0].key.name, "older");
    let newer = c
        .route_reports
        .iter()
        .find(|r| r.key.name == "newer")
        .unwrap();
    assert_eq!(newer.accepted.as_ref().unwrap_err().0, "Shadowed");
    let older = c
        .route_reports
        .iter()
        .find(|r| r.key.name == "older")
        .unwrap();
    assert!(older.accepted.is_ok());
    assert_eq!(c.models, ["llama"]);
}

#[test]
fn a_newer_duplicate_still_serves_what_the_older_rules_do_not_match() {
    let input = ConfigInput {
        servers: vec![server("gold", SPEC, &[]), server("rest", SPEC, &[])],
        routes: vec![
            route(
                "gold",
                100,
                "modelName: llama\nrules: [{modelMatch: {headers: {x-tier: {exact: gold}}}, targetModels: [{modelServerName: gold}]}]",
            ),
            route("rest", 200, "modelName: llama\nrules: [{targetModels: [{modelServerName: rest}]}]"),
        ],
    };
    let c = compile(&input, &Defaults::default());
    assert!(c.route_reports.iter().all(|r| r.accepted.is_ok()));
    let table = crate::config::table::RoutingTable {
        servers: c
            .servers
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    Arc::new(crate::config::table::ServerRuntime {
                        compiled: s.clone(),
                        endpoints: vec![],
                        prefill: vec![],
                        round_robin: Default::default(),
                        tokenizer: None,
                    }),
                )
            })
            .collect(),
        config: c,
        model_metrics: Default::default(),
    };
    let mut gold = HeaderMap::new();
    gold.insert("x-tier", "gold".parse().unwrap());
    let none = HeaderMap::new();
    assert_eq!(
        table
            .resolve(&facts(&gold, "llama"), 0)
            .unwrap()
            .server
            .compiled
            .key
            .name,
        "gold"
    );
    assert_eq!(
        table
            .resolve(&facts(&none, "llama"), 0)
            .unwrap()
            .server
            .compiled
            .key
            .name,
        "rest"
    );
    assert_eq!(
        table.resolve(&facts(&none, "mistral"), 0).unwrap_err(),
        crate::config::table::ResolveError::UnknownModel
    );
}

#[test]
fn lora_adapters_route_without_rewrite_and_appear_in_models() {
    let input = ConfigInput {
        servers: vec![server("s", &format!("{SPEC}model: base-model\n"), &[])],
        routes: vec![route(
            "r",
            1,
            "modelName: llama\nloraAdapters: [sql-lora]\nrules: [{targetModels: [{modelServerName: s}]}]",
        )],
    };
    let c = compile(&input, &Defaults::default());
    assert_eq!(c.models, ["llama", "sql-lora"]);
    assert_eq!(
        c.servers[&ObjectKey::new("ns", "s")]
            .model_rewrite
            .as_deref(),
        Some("base-model")
    );
}

#[test]
fn missing_targets_and_bad_rules_are_reported_by_name() {
    let input = ConfigInput {
        servers: vec![],
        routes: vec![
            route("ghost", 1, "modelName: a\nrules: [{targetModels: [{modelServerName: nope}]}]"),
            route(
                "bad",
                2,
                "modelName: b\nrules: [{modelMatch: {uri: {regex: '('}}, targetModels: [{modelServerName: x}]}]",
            ),
        ],
    };
    let c = compile(&input, &Defaults::default());
    let ghost = c
        .route_reports
        .iter()
        .find(|r| r.key.name == "ghost")
        .unwrap();
    let (reason, message) = ghost.ready.as_ref().unwrap_err();
    assert_eq!(reason, "ModelServerNotFound");
    assert!(message.contains("nope"), "{message}");
    let bad = c
        .route_reports
        .iter()
        .find(|r| r.key.name == "bad")
        .unwrap();
    assert!(bad
        .accepted
        .as_ref()
        .unwrap_err()
        .1
        .contains("rules[0].modelMatch.uri.regex"));
    assert!(
        !c.routes.contains_key("b"),
        "an invalid route is not served"
    );
}

#[test]
fn traffic_policy_and_annotations_override_defaults() {
    let mut s = server(
        "s",
        &format!(
            "{SPEC}trafficPolicy: {{timeout: 5s, retry: {{attempts: 3, retryInterval: 10ms}}}}\n"
        ),
        &[],
    );
    s.annotations.insert(
        crate::scheduler::profile::SCHEDULER_ANNOTATION.into(),
        "plugins: [{name: round-robin, weight: 1}]".into(),
    );
    s.annotations
        .insert(UPSTREAM_PROTOCOL_ANNOTATION.into(), "h2c".into());
    let c = compile(
        &ConfigInput {
            servers: vec![s],
            routes: vec![],
        },
        &Defaults::default(),
    );
    let s = &c.servers[&ObjectKey::new("ns", "s")];
    assert_eq!(s.policy.per_try_timeout, Duration::from_secs(5));
    assert_eq!(s.policy.attempts, 3);
    assert_eq!(s.policy.interval, Duration::from_millis(10));
    assert_eq!(s.profile.weight(PluginKind::RoundRobin), 1.0);
    assert_eq!(s.profile.weight(PluginKind::LeastRequest), 0.0);
    assert_eq!(s.upstream, UpstreamProtocol::H2c);
    assert!(c.server_reports[0].accepted.is_ok());
}

#[test]
fn a_bad_annotation_falls_back_to_defaults_and_says_so() {
    let mut s = server("s", SPEC, &[("p", "127.0.0.1:1", true)]);
    s.annotations.insert(
        crate::scheduler::profile::SCHEDULER_ANNOTATION.into(),
        "plugins: [{name: psychic}]".into(),
    );
    let c = compile(
        &ConfigInput {
            servers: vec![s],
            routes: vec![],
        },
        &Defaults::default(),
    );
    let (reason, message) = c.server_reports[0].accepted.as_ref().unwrap_err();
    assert_eq!(reason, "InvalidSchedulerProfile");
    assert!(message.contains("psychic"), "{message}");
    assert_eq!(
        c.servers[&ObjectKey::new("ns", "s")].endpoints.len(),
        1,
        "still served"
    );
}

#[test]
fn https_servers_are_refused_rather_than_sent_plaintext() {
    let s = server(
        "s",
        "inferenceEngine: vLLM\nworkloadSelector: {matchLabels: {a: b}}\nworkloadPort: {port: 443, protocol: https}\n",
        &[("p", "127.0.0.1:1", true)],
    );
    let c = compile(
        &ConfigInput {
            servers: vec![s],
            routes: vec![],
        },
        &Defaults::default(),
    );
    assert_eq!(
        c.server_reports[0].accepted.as_ref().unwrap_err().0,
        "UnsupportedProtocol"
    );
    assert!(c.servers[&ObjectKey::new("ns", "s")].endpoints.is_empty());
}

#[test]
fn only_ready_endpoints_are_routable_and_pd_roles_are_counted() {
    let mut s = server(
        "pd",
        "inferenceEngine: vLLM\nworkloadSelector:\n  matchLabels: {app: x}\n  pdGroup: {groupKey: g, prefillLabels: {role: prefill}, decodeLabels: {role: decode}}\nworkloadPort: {port: 8000}\n",
        &[
            ("p0", "127.0.0.1:1", true),
            ("d0", "127.0.0.1:2", true),
            ("d1", "127.0.0.1:3", false),
        ],
    );
    s.endpoints[0]
        .labels
        .insert("role".into(), "prefill".into());
    s.endpoints[1].labels.insert("role".into(), "decode".into());
    s.endpoints[2].labels.insert("role".into(), "decode".into());
    let c = compile(
        &ConfigInput {
            servers: vec![s],
            routes: vec![],
        },
        &Defaults::default(),
    );
    let r = &c.server_reports[0];
    assert_eq!((r.total, r.ready, r.prefill, r.decode), (3, 2, 1, 1));
    let names: Vec<&str> = c.servers[&ObjectKey::new("ns", "pd")]
        .endpoints
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["d0"],
        "prefill-only and unready pods get no whole requests"
    );
    let server = &c.servers[&ObjectKey::new("ns", "pd")];
    let prefill: Vec<&str> = server
        .prefill_endpoints
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(prefill, ["p0"], "the Ready prefill pod is a prefill peer");
    assert!(server.pd.is_some());
    assert_eq!(
        server.endpoints[0].pd_group, None,
        "pods without the groupKey label belong to no group (and never pair)"
    );
}
