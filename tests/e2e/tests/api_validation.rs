//! The API server itself validates Muster's objects: every sample applies, and each invalid
//! variant is rejected with a message that names the field and says why.

use muster_e2e::{api_message, load_yaml, TestNamespace};
use serde_json::{json, Value};

const SAMPLES: &[&str] = &[
    "modelserving-single.yaml",
    "modelserving-2p4d.yaml",
    "modelserving-multinode-tp.yaml",
    "modelserver-single.yaml",
    "modelserver-2p4d.yaml",
    "modelserver-multinode-tp.yaml",
    "modelroute-single.yaml",
    "modelroute-2p4d.yaml",
    "modelroute-multinode-tp.yaml",
    "autoscalingpolicy-homogeneous.yaml",
    "autoscalingpolicy-heterogeneous.yaml",
    "autoscalingpolicy-disaggregated.yaml",
];

fn sample(name: &str) -> Value {
    load_yaml(&format!("config/samples/{name}"))
}

fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer with a key");
    let target = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} not in sample"));
    match target {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => panic!("{parent} is not a container"),
    }
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    doc.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
}

#[tokio::test]
async fn every_sample_applies_and_reads_back() {
    let ns = TestNamespace::new("samples").await;
    for name in SAMPLES {
        let doc = sample(name);
        let created = ns
            .create(&doc)
            .await
            .unwrap_or_else(|e| panic!("{name} rejected: {}", api_message(&e)));
        assert_eq!(
            created.metadata.namespace.as_deref(),
            Some(ns.name.as_str())
        );
        // What the server stored still carries the sample's spec (nothing pruned).
        let stored = serde_json::to_value(&created).unwrap();
        let want = &doc["spec"];
        for (key, value) in want.as_object().unwrap() {
            assert!(
                stored["spec"].get(key).is_some(),
                "{name}: spec.{key} was pruned by the server (value {value})"
            );
        }
    }
}

/// (description, sample, mutation, substrings the error must contain)
type Case = (
    &'static str,
    &'static str,
    fn(&mut Value),
    &'static [&'static str],
);

#[tokio::test]
async fn invalid_variants_are_rejected_with_the_field_named() {
    let cases: Vec<Case> = vec![
        (
            "TP shape mismatch",
            "modelserving-multinode-tp.yaml",
            |d| set(d, "/spec/template/roles/0/tensorParallelSize", json!(8)),
            &[
                "spec.template.roles[0].tensorParallelSize",
                "must equal the nvidia.com/gpu limit per pod",
            ],
        ),
        (
            "gangPolicy key naming no role",
            "modelserving-2p4d.yaml",
            |d| {
                set(
                    d,
                    "/spec/template/gangPolicy/minRoleReplicas/router",
                    json!(1),
                )
            },
            &["spec.template.gangPolicy.minRoleReplicas", "names no role"],
        ),
        (
            "minRoleReplicas above the role's replicas",
            "modelserving-2p4d.yaml",
            |d| {
                set(
                    d,
                    "/spec/template/gangPolicy/minRoleReplicas/decode",
                    json!(5),
                )
            },
            &[
                "spec.template.gangPolicy.minRoleReplicas",
                "must not exceed",
            ],
        ),
        (
            "duplicate role names",
            "modelserving-2p4d.yaml",
            |d| set(d, "/spec/template/roles/1/name", json!("prefill")),
            &["spec.template.roles", "unique"],
        ),
        (
            "role name not DNS-1035",
            "modelserving-single.yaml",
            |d| set(d, "/spec/template/roles/0/name", json!("Server_1")),
            &["spec.template.roles[0].name", "should match"],
        ),
        (
            "workers without a worker template",
            "modelserving-multinode-tp.yaml",
            |d| remove(d, "/spec/template/roles/0/workerTemplate"),
            &[
                "spec.template.roles[0].workerTemplate",
                "required when workerReplicas > 0",
            ],
        ),
        (
            "maxUnavailable and maxSurge both zero",
            "modelserving-single.yaml",
            |d| {
                set(
                    d,
                    "/spec/rolloutStrategy/rollingUpdateConfiguration/maxSurge",
                    json!(0),
                )
            },
            &[
                "spec.rolloutStrategy.rollingUpdateConfiguration.maxSurge",
                "cannot both be 0",
            ],
        ),
        (
            "negative maxUnavailable",
            "modelserving-single.yaml",
            |d| {
                set(
                    d,
                    "/spec/rolloutStrategy/rollingUpdateConfiguration/maxUnavailable",
                    json!(-1),
                )
            },
            &["maxUnavailable", "non-negative"],
        ),
        (
            "group rolling config with role rollout",
            "modelserving-single.yaml",
            |d| set(d, "/spec/rolloutStrategy/type", json!("RoleRollingUpdate")),
            &[
                "spec.rolloutStrategy.rollingUpdateConfiguration",
                "ServingGroupRollingUpdate only",
            ],
        ),
        (
            "group recreate with role rollout",
            "modelserving-multinode-tp.yaml",
            |d| set(d, "/spec/recoveryPolicy", json!("ServingGroupRecreate")),
            &["spec.recoveryPolicy", "RoleRollingUpdate"],
        ),
        (
            "unknown recovery policy",
            "modelserving-single.yaml",
            |d| set(d, "/spec/recoveryPolicy", json!("Restart")),
            &["spec.recoveryPolicy", "Unsupported value"],
        ),
        (
            "generated names too long",
            "modelserving-single.yaml",
            |d| {
                set(
                    d,
                    "/metadata/name",
                    json!("a-very-long-model-serving-name-that-keeps-going-on-and-on"),
                )
            },
            &["metadata.name", "63 characters"],
        ),
        (
            "zero groups is fine but negative is not",
            "modelserving-single.yaml",
            |d| set(d, "/spec/replicas", json!(-1)),
            &["spec.replicas", "greater than or equal to 0"],
        ),
        (
            "role partition without role rollout",
            "modelserving-single.yaml",
            |d| set(d, "/spec/template/roles/0/partition", json!(1)),
            &[
                "spec.template.roles",
                "only applies with rolloutStrategy.type RoleRollingUpdate",
            ],
        ),
        (
            "role maxUnavailable above its replicas",
            "modelserving-multinode-tp.yaml",
            |d| set(d, "/spec/template/roles/0/maxUnavailable", json!(3)),
            &[
                "spec.template.roles[0].maxUnavailable",
                "must not exceed the role's replicas",
            ],
        ),
        (
            "topology with both tier bounds",
            "modelserving-2p4d.yaml",
            |d| {
                set(
                    d,
                    "/spec/template/networkTopology/groupPolicy/highestTierName",
                    json!("spine"),
                )
            },
            &[
                "spec.template.networkTopology.groupPolicy",
                "at most one of",
            ],
        ),
        (
            "ModelServer with an empty selector",
            "modelserver-single.yaml",
            |d| set(d, "/spec/workloadSelector/matchLabels", json!({})),
            &[
                "spec.workloadSelector.matchLabels",
                "should have at least 1 properties",
            ],
        ),
        (
            "ModelServer port out of range",
            "modelserver-single.yaml",
            |d| set(d, "/spec/workloadPort/port", json!(70000)),
            &["spec.workloadPort.port", "less than or equal to 65535"],
        ),
        (
            "ModelServer bad timeout",
            "modelserver-single.yaml",
            |d| set(d, "/spec/trafficPolicy/timeout", json!("30 seconds")),
            &["spec.trafficPolicy.timeout", "should match"],
        ),
        (
            "ModelServer unknown engine",
            "modelserver-single.yaml",
            |d| set(d, "/spec/inferenceEngine", json!("TGI")),
            &["spec.inferenceEngine", "Unsupported value"],
        ),
        (
            "ModelRoute with neither model name nor adapters",
            "modelroute-single.yaml",
            |d| set(d, "/spec/modelName", json!("")),
            &[
                "spec.modelName",
                "set modelName or at least one of loraAdapters",
            ],
        ),
        (
            "ModelRoute weights on some targets only",
            "modelroute-2p4d.yaml",
            |d| remove(d, "/spec/rules/1/targetModels/1/weight"),
            &[
                "spec.rules[1].targetModels",
                "on every targetModel of a rule or on none",
            ],
        ),
        (
            "ModelRoute header match with two kinds",
            "modelroute-2p4d.yaml",
            |d| {
                set(
                    d,
                    "/spec/rules/0/modelMatch/headers/x-muster-canary/prefix",
                    json!("al"),
                )
            },
            &[
                "spec.rules[0].modelMatch.headers[x-muster-canary]",
                "exactly one of exact, prefix, regex",
            ],
        ),
        (
            "ModelRoute rate limit without a limit",
            "modelroute-2p4d.yaml",
            |d| set(d, "/spec/rateLimit", json!({"unit": "minute"})),
            &[
                "spec.rateLimit",
                "set inputTokensPerUnit, outputTokensPerUnit or both",
            ],
        ),
        (
            "ModelRoute weight above 100",
            "modelroute-2p4d.yaml",
            |d| set(d, "/spec/rules/1/targetModels/0/weight", json!(101)),
            &[
                "spec.rules[1].targetModels[0].weight",
                "less than or equal to 100",
            ],
        ),
        (
            "AutoscalingPolicy with two target kinds",
            "autoscalingpolicy-homogeneous.yaml",
            |d| {
                set(
                    d,
                    "/spec/disaggregatedTarget",
                    json!({"targetRef": {"name": "x"}, "roles": {"a": {"maxReplicas": 1}}}),
                )
            },
            &[
                "spec",
                "exactly one of homogeneousTarget, heterogeneousTarget, disaggregatedTarget",
            ],
        ),
        (
            "AutoscalingPolicy without metrics",
            "autoscalingpolicy-homogeneous.yaml",
            |d| set(d, "/spec/metrics", json!([])),
            &["spec.metrics", "at least one metric"],
        ),
        (
            "AutoscalingPolicy min above max",
            "autoscalingpolicy-homogeneous.yaml",
            |d| set(d, "/spec/homogeneousTarget/minReplicas", json!(9)),
            &[
                "spec.homogeneousTarget.minReplicas",
                "must not exceed maxReplicas",
            ],
        ),
        (
            "AutoscalingPolicy metric source with two kinds",
            "autoscalingpolicy-heterogeneous.yaml",
            |d| {
                set(
                d,
                "/spec/heterogeneousTarget/params/1/target/metricSources/vllm:num_requests_running/router",
                json!({"url": "http://127.0.0.1:9090/metrics"}),
            )
            },
            &[
                "metricSources[vllm:num_requests_running]",
                "exactly one of pod, router, prometheus",
            ],
        ),
        (
            "AutoscalingPolicy targeting another kind",
            "autoscalingpolicy-homogeneous.yaml",
            |d| {
                set(
                    d,
                    "/spec/homogeneousTarget/target/targetRef/kind",
                    json!("Deployment"),
                )
            },
            &[
                "spec.homogeneousTarget.target.targetRef.kind",
                "must be ModelServing",
            ],
        ),
    ];

    let ns = TestNamespace::new("invalid").await;
    let mut failures = Vec::new();
    for (what, name, mutate, expected) in &cases {
        let mut doc = sample(name);
        mutate(&mut doc);
        match ns.create(&doc).await {
            Ok(_) => failures.push(format!("{what}: accepted, should be rejected")),
            Err(e) => {
                let msg = api_message(&e);
                for needle in *expected {
                    if !msg.contains(needle) {
                        failures.push(format!("{what}: message lacks {needle:?}: {msg}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn model_route_name_is_immutable() {
    let ns = TestNamespace::new("immutable").await;
    let mut doc = sample("modelroute-single.yaml");
    ns.create(&doc).await.expect("create route");
    set(&mut doc, "/spec/modelName", json!("renamed"));
    let err = ns
        .replace(&doc)
        .await
        .expect_err("modelName change must be rejected");
    let msg = api_message(&err);
    assert!(
        msg.contains("spec.modelName") && msg.contains("immutable"),
        "{msg}"
    );
}

#[tokio::test]
async fn scale_subresource_changes_replicas() {
    let ns = TestNamespace::new("scale").await;
    let doc = sample("modelserving-single.yaml");
    ns.create(&doc).await.expect("create");
    let api = ns.api_for(&doc).await;
    let patch = json!({"spec": {"replicas": 5}});
    api.patch_scale(
        "qwen-single",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("scale subresource accepts a replica change");
    let got = api.get("qwen-single").await.unwrap();
    assert_eq!(got.data["spec"]["replicas"], json!(5));
}
