//! The ModelServing controller against the real API server, Volcano scheduler and kwok.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use muster_api::labels;
use muster_api::serving::ModelServing;
use muster_api::volcano::PodGroup;
use muster_e2e::{kubectl, load_yaml, wait_for, ControllerHandle, TestNamespace, TestNodes};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(90);

fn names<K: kube::Resource>(items: &[K]) -> BTreeSet<String> {
    items.iter().filter_map(|o| o.meta().name.clone()).collect()
}

async fn live_pods(ns: &TestNamespace, ms: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default().labels(&format!("{}={ms}", labels::MODEL_SERVING_NAME)))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn condition(ns: &TestNamespace, ms: &str, type_: &str) -> Option<(String, String, String)> {
    let got = Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name)
        .get(ms)
        .await
        .ok()?;
    let c = got
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

async fn wait_available(ns: &TestNamespace, ms: &str) {
    wait_for(TIMEOUT, &format!("{ms} Available"), || async {
        Ok(condition(ns, ms, "Available")
            .await
            .filter(|c| c.0 == "True"))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_p_four_d_is_gang_scheduled_and_becomes_available() {
    let ns = TestNamespace::new("ms-2p4d").await;
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    ns.create(&load_yaml("config/samples/modelserving-2p4d.yaml"))
        .await
        .expect("create 2P4D");

    let pg_api = Api::<PodGroup>::namespaced(ns.client.clone(), &ns.name);
    let pg = wait_for(TIMEOUT, "PodGroup llama-2p4d-0", || async {
        Ok(pg_api.get_opt("llama-2p4d-0").await?)
    })
    .await
    .unwrap();
    assert_eq!(
        pg.spec.min_member,
        Some(3),
        "gang: 1 prefill + 2 decode instances"
    );
    let subs = pg.spec.sub_group_policy.clone().unwrap();
    let by_role: Vec<(Option<String>, Option<i32>, Option<i32>)> = subs
        .iter()
        .map(|s| (s.name.clone(), s.sub_group_size, s.min_sub_groups))
        .collect();
    assert_eq!(
        by_role,
        vec![
            (Some("prefill".into()), Some(1), Some(1)),
            (Some("decode".into()), Some(1), Some(2))
        ]
    );
    assert_eq!(
        pg.spec
            .network_topology
            .as_ref()
            .unwrap()
            .highest_tier_allowed,
        Some(2)
    );

    let pods = wait_for(TIMEOUT, "6 pods Running and Ready", || async {
        let pods = live_pods(&ns, "llama-2p4d").await;
        Ok((pods.len() == 6 && pods.iter().all(ready)).then_some(pods))
    })
    .await
    .unwrap();
    assert_eq!(
        names(&pods),
        [
            "prefill-0",
            "prefill-1",
            "decode-0",
            "decode-1",
            "decode-2",
            "decode-3"
        ]
        .iter()
        .map(|r| format!("llama-2p4d-0-{r}-0"))
        .collect::<BTreeSet<_>>()
    );
    for p in &pods {
        let ann = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[labels::VOLCANO_GROUP_NAME], "llama-2p4d-0");
        assert!(p
            .status
            .as_ref()
            .unwrap()
            .pod_ip
            .as_deref()
            .unwrap()
            .starts_with("127."));
    }
    let services = Api::<Service>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(services.len(), 6, "one headless Service per role instance");

    let pdb = Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(
        ns.client.clone(),
        &ns.name,
    )
    .get("llama-2p4d")
    .await
    .expect("a PodDisruptionBudget guards the groups");
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    wait_available(&ns, "llama-2p4d").await;
    let (ok, out) = kubectl(&[
        "wait",
        "-n",
        &ns.name,
        "--for=condition=Available",
        "modelserving/llama-2p4d",
        "--timeout=30s",
    ]);
    assert!(ok, "kubectl wait failed: {out}");
    let ms = Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name)
        .get("llama-2p4d")
        .await
        .unwrap();
    let status = ms.status.unwrap();
    assert_eq!(
        (
            status.replicas,
            status.ready_replicas,
            status.available_replicas,
            status.updated_replicas
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(status.observed_generation, ms.metadata.generation);
    assert_eq!(status.serving_groups[0].phase, "Running");
    assert_eq!(status.serving_groups[0].roles[1].ready_replicas, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_that_does_not_fit_binds_nothing_and_status_says_why() {
    let ns = TestNamespace::new("ms-nofit").await;
    let pool = ns.name.clone();
    let mut nodes = TestNodes::new(ns.client.clone());
    for i in 0..2 {
        nodes
            .add(&format!("{pool}-n{i}"), 8, &pool, &[])
            .await
            .unwrap();
    }
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    let mut doc = load_yaml("config/samples/modelserving-multinode-tp.yaml");
    doc["spec"]["replicas"] = json!(1);
    doc["spec"]["template"]["networkTopology"] = Value::Null;
    // Four 8-GPU pods per instance on a pool of two 8-GPU nodes.
    doc["spec"]["template"]["roles"][0]["workerReplicas"] = json!(3);
    doc["spec"]["template"]["roles"][0]["tensorParallelSize"] = json!(32);
    for t in ["entryTemplate", "workerTemplate"] {
        doc["spec"]["template"]["roles"][0][t]["spec"]["nodeSelector"] =
            json!({"muster.dev/e2e-pool": pool});
        doc["spec"]["template"]["roles"][0][t]["spec"]["tolerations"] = json!([{"key": "muster.dev/e2e-pool", "operator": "Equal", "value": pool, "effect": "NoSchedule"}]);
    }
    ns.create(&doc).await.expect("create");

    let (status, reason, message) = wait_for(
        TIMEOUT,
        "Degraded=True with the PodGroup's reason",
        || async {
            Ok(condition(&ns, "deepseek-tp16", "Degraded")
                .await
                .filter(|c| c.0 == "True"))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Unschedulable")
    );
    assert!(message.contains("deepseek-tp16-0"), "{message}");
    let pods = live_pods(&ns, "deepseek-tp16").await;
    assert_eq!(pods.len(), 4);
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.is_none()),
        "no pod of the gang may bind"
    );
    let (avail, _, _) = condition(&ns, "deepseek-tp16", "Available").await.unwrap();
    assert_eq!(avail, "False");
}

async fn group_objects(
    ns: &TestNamespace,
    ms: &str,
) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let lp = ListParams::default().labels(&format!("{}={ms}", labels::MODEL_SERVING_NAME));
    let pgs = Api::<PodGroup>::namespaced(ns.client.clone(), &ns.name)
        .list(&lp)
        .await
        .unwrap()
        .items;
    let svcs = Api::<Service>::namespaced(ns.client.clone(), &ns.name)
        .list(&lp)
        .await
        .unwrap()
        .items;
    let alive = |m: &kube::api::ObjectMeta| m.deletion_timestamp.is_none();
    (
        pgs.iter()
            .filter(|o| alive(&o.metadata))
            .filter_map(|o| o.metadata.name.clone())
            .collect(),
        svcs.iter()
            .filter(|o| alive(&o.metadata))
            .filter_map(|o| o.metadata.name.clone())
            .collect(),
        names(&live_pods(ns, ms).await),
    )
}

async fn scale_to(ns: &TestNamespace, ms: &str, replicas: i32) {
    let (ok, out) = kubectl(&[
        "scale",
        "-n",
        &ns.name,
        &format!("modelserving/{ms}"),
        &format!("--replicas={replicas}"),
    ]);
    assert!(ok, "kubectl scale: {out}");
}

async fn wait_groups(ns: &TestNamespace, ms: &str, groups: &[i32]) {
    let want_pg: BTreeSet<String> = groups.iter().map(|g| format!("{ms}-{g}")).collect();
    let want_pods: BTreeSet<String> = groups
        .iter()
        .map(|g| format!("{ms}-{g}-server-0-0"))
        .collect();
    wait_for(TIMEOUT, &format!("groups {groups:?} of {ms}"), || async {
        let (pgs, svcs, pods) = group_objects(ns, ms).await;
        Ok((pgs == want_pg && svcs == want_pods && pods == want_pods).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_four_one_three_keeps_ordinals_and_objects_consistent_and_delete_leaves_nothing() {
    let ns = TestNamespace::new("ms-scale").await;
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    let mut doc = load_yaml("config/samples/modelserving-single.yaml");
    doc["spec"]["replicas"] = json!(4);
    ns.create(&doc).await.expect("create");
    wait_groups(&ns, "qwen-single", &[0, 1, 2, 3]).await;
    wait_available(&ns, "qwen-single").await;

    scale_to(&ns, "qwen-single", 1).await;
    wait_groups(&ns, "qwen-single", &[0]).await;
    scale_to(&ns, "qwen-single", 3).await;
    wait_groups(&ns, "qwen-single", &[0, 1, 2]).await;
    wait_available(&ns, "qwen-single").await;

    // Deleting the ModelServing removes everything it owns (owner references + GC).
    Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name)
        .delete("qwen-single", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for(TIMEOUT, "no orphaned objects", || async {
        let (pgs, svcs, pods) = group_objects(&ns, "qwen-single").await;
        Ok((pgs.is_empty() && svcs.is_empty() && pods.is_empty()).then_some(()))
    })
    .await
    .unwrap();
}

/// Deletes one pod of a 2P4D-like group and returns the UIDs of every pod before and after
/// the controller has rebuilt what its recovery policy says.
async fn recovery_case(policy: &str, victim: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let ns = TestNamespace::new(&format!("rec-{}", policy.to_lowercase())).await;
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    let mut doc = load_yaml("config/samples/modelserving-multinode-tp.yaml");
    doc["spec"]["replicas"] = json!(2);
    doc["spec"]["recoveryPolicy"] = json!(policy);
    doc["spec"]["rolloutStrategy"] = json!({"type": "ServingGroupRollingUpdate"});
    doc["spec"]["template"]["roles"][0]["replicas"] = json!(2);
    doc["spec"]["template"]["networkTopology"] = Value::Null;
    ns.create(&doc).await.expect("create");
    wait_available(&ns, "deepseek-tp16").await;
    let uid_map = |pods: Vec<Pod>| -> BTreeSet<String> {
        pods.into_iter()
            .map(|p| format!("{}={}", p.metadata.name.unwrap(), p.metadata.uid.unwrap()))
            .collect()
    };
    let before = uid_map(live_pods(&ns, "deepseek-tp16").await);
    assert_eq!(
        before.len(),
        8,
        "2 groups × 2 role instances × (entry + worker)"
    );
    Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .delete(victim, &DeleteParams::default())
        .await
        .unwrap();
    // Wait until the victim is back and everything is ready again.
    let after = wait_for(TIMEOUT, "recovery complete", || async {
        let pods = live_pods(&ns, "deepseek-tp16").await;
        let back = pods.iter().any(|p| {
            p.metadata.name.as_deref() == Some(victim)
                && !before
                    .iter()
                    .any(|b| b.ends_with(p.metadata.uid.as_deref().unwrap()))
        });
        Ok((back && pods.len() == 8 && pods.iter().all(ready)).then(|| uid_map(pods)))
    })
    .await
    .unwrap();
    // Give the controller a moment to do anything further it (wrongly) planned.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = uid_map(live_pods(&ns, "deepseek-tp16").await);
    assert_eq!(
        after, settled,
        "recovery went on after everything was ready"
    );
    (before, after)
}

fn replaced(before: &BTreeSet<String>, after: &BTreeSet<String>) -> BTreeSet<String> {
    after
        .difference(before)
        .map(|s| s.split('=').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_policies_rebuild_exactly_the_pod_role_or_group() {
    let victim = "deepseek-tp16-1-engine-1-1";
    let (b, a) = recovery_case("None", victim).await;
    assert_eq!(
        replaced(&b, &a),
        [victim.to_string()].into(),
        "None: only the pod"
    );

    let (b, a) = recovery_case("RoleRecreate", victim).await;
    assert_eq!(
        replaced(&b, &a),
        ["deepseek-tp16-1-engine-1-0", "deepseek-tp16-1-engine-1-1"]
            .map(String::from)
            .into(),
        "RoleRecreate: the role instance"
    );

    let (b, a) = recovery_case("ServingGroupRecreate", victim).await;
    let want: BTreeSet<String> = ["engine-0-0", "engine-0-1", "engine-1-0", "engine-1-1"]
        .iter()
        .map(|s| format!("deepseek-tp16-1-{s}"))
        .collect();
    assert_eq!(
        replaced(&b, &a),
        want,
        "ServingGroupRecreate: the whole group, nothing else"
    );
}

async fn revisions_by_group(ns: &TestNamespace, ms: &str) -> Vec<(i32, String, bool)> {
    let pods = live_pods(ns, ms).await;
    let mut out: Vec<(i32, String, bool)> = pods
        .iter()
        .map(|p| {
            let l = p.metadata.labels.as_ref().unwrap();
            (
                l[labels::GROUP_INDEX].parse().unwrap(),
                l[labels::REVISION].clone(),
                ready(p),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_rollout_with_surge_never_drops_capacity() {
    let ns = TestNamespace::new("ms-roll").await;
    let first_metrics = muster_controller::metrics::Metrics::new();
    let controller =
        ControllerHandle::start_with_metrics(ns.client.clone(), &ns.name, first_metrics.clone());
    let mut doc = load_yaml("config/samples/modelserving-single.yaml");
    doc["spec"]["replicas"] = json!(4);
    doc["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] =
        json!({"maxUnavailable": 0, "maxSurge": 1, "partition": 2});
    ns.create(&doc).await.expect("create");
    wait_groups(&ns, "qwen-single", &[0, 1, 2, 3]).await;
    wait_available(&ns, "qwen-single").await;
    let old: Vec<String> = revisions_by_group(&ns, "qwen-single")
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    let old_rev = old[0].clone();
    let created_before = first_metrics.pods_created.get();
    let deleted_before = first_metrics.pods_deleted.get();
    let second_metrics = muster_controller::metrics::Metrics::new();

    let api = Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name);
    let patch = json!({"spec": {"template": {"roles": [{
        "name": "server", "replicas": 1, "workerReplicas": 0, "tensorParallelSize": 1,
        "entryTemplate": doc["spec"]["template"]["roles"][0]["entryTemplate"].clone()
    }]}}});
    let mut patch = patch;
    patch["spec"]["template"]["roles"][0]["entryTemplate"]["spec"]["containers"][0]["image"] =
        json!("muster/engine-sim:v2");
    api.patch(
        "qwen-single",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();

    // Watch the rollout: ready groups never below replicas − maxUnavailable = 4, at most one
    // group beyond replicas, groups 0–1 untouched. Restart the controller halfway.
    let mut new_rev = None;
    let mut restarted = false;
    let mut controller = Some(controller);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let state = revisions_by_group(&ns, "qwen-single").await;
        let ready_groups = state.iter().filter(|s| s.2).count();
        let groups: BTreeSet<i32> = state.iter().map(|s| s.0).collect();
        assert!(
            groups.len() <= 5,
            "more than replicas + maxSurge groups: {state:?}"
        );
        if groups.len() >= 4 {
            assert!(
                ready_groups >= 4,
                "capacity dropped below replicas − maxUnavailable: {state:?}"
            );
        }
        for s in state.iter().filter(|s| s.0 < 2) {
            assert_eq!(s.1, old_rev, "partition-protected group changed: {state:?}");
        }
        if new_rev.is_none() {
            new_rev = state.iter().find(|s| s.1 != old_rev).map(|s| s.1.clone());
        }
        if !restarted && new_rev.is_some() {
            // Kill the controller mid-rollout and start a fresh one: it must finish the job
            // from what the API server holds.
            controller.take().unwrap().kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            controller = Some(ControllerHandle::start_with_metrics(
                ns.client.clone(),
                &ns.name,
                second_metrics.clone(),
            ));
            restarted = true;
        }
        let done = state.len() == 4
            && state.iter().all(|s| s.2)
            && state
                .iter()
                .filter(|s| s.0 >= 2)
                .all(|s| Some(&s.1) == new_rev.as_ref());
        if done && groups == [0, 1, 2, 3].into() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout did not finish: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, reason, _) = condition(&ns, "qwen-single", "UpdateInProgress")
        .await
        .unwrap();
    assert_eq!(reason, "UpdateComplete");
    // No more than the rollout needs, across the restart: one surge group created and later
    // removed, groups 2 and 3 deleted and rebuilt. (At most: a request the killed controller
    // had in flight is done by the server but never counted.)
    let created =
        first_metrics.pods_created.get() + second_metrics.pods_created.get() - created_before;
    let deleted =
        first_metrics.pods_deleted.get() + second_metrics.pods_deleted.get() - deleted_before;
    assert!(
        created <= 3 && deleted <= 3,
        "extra pod churn during the rollout: {created} created, {deleted} deleted"
    );

    // partition 0 finishes it.
    api.patch(
        "qwen-single",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"rolloutStrategy": {"rollingUpdateConfiguration": {"partition": 0}}}}),
        ),
    )
    .await
    .unwrap();
    let new_rev = new_rev.unwrap();
    wait_for(TIMEOUT, "every group at the new revision", || async {
        let state = revisions_by_group(&ns, "qwen-single").await;
        Ok((state.len() == 4 && state.iter().all(|s| s.1 == new_rev && s.2)).then_some(()))
    })
    .await
    .unwrap();
    wait_groups(&ns, "qwen-single", &[0, 1, 2, 3]).await;
    // Status is written by the reconcile after the surge group is gone, so wait for it to
    // settle instead of reading it once (a read in between still counts the surge group).
    wait_for(
        TIMEOUT,
        "status at the new revision with 4 updated groups",
        || async {
            let ms = api.get("qwen-single").await?.status.unwrap_or_default();
            Ok((ms.current_revision.as_deref() == Some(new_rev.as_str())
                && ms.updated_replicas == 4)
                .then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_rolling_update_replaces_only_the_changed_role_keeping_the_group() {
    let ns = TestNamespace::new("ms-rolerl").await;
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    let mut doc = load_yaml("config/samples/modelserving-2p4d.yaml");
    doc["spec"]["rolloutStrategy"] = json!({"type": "RoleRollingUpdate"});
    doc["spec"]["recoveryPolicy"] = json!("RoleRecreate");
    ns.create(&doc).await.expect("create");
    wait_available(&ns, "llama-2p4d").await;
    let uids = |pods: &[Pod]| -> std::collections::BTreeMap<String, String> {
        pods.iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap(),
                    p.metadata.uid.clone().unwrap(),
                )
            })
            .collect()
    };
    let before = uids(&live_pods(&ns, "llama-2p4d").await);
    let pg_uid = Api::<PodGroup>::namespaced(ns.client.clone(), &ns.name)
        .get("llama-2p4d-0")
        .await
        .unwrap()
        .metadata
        .uid;

    let mut roles = doc["spec"]["template"]["roles"].clone();
    roles[1]["entryTemplate"]["spec"]["containers"][0]["image"] = json!("muster/engine-sim:v2");
    Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name)
        .patch(
            "llama-2p4d",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"roles": roles}}})),
        )
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let pods = live_pods(&ns, "llama-2p4d").await;
        let ready_decode = pods
            .iter()
            .filter(|p| p.metadata.name.as_ref().unwrap().contains("-decode-") && ready(p))
            .count();
        assert!(
            ready_decode >= 3,
            "more than maxUnavailable (1) decode instance down at once: {ready_decode} ready"
        );
        let now = uids(&pods);
        let done = now.len() == 6
            && pods.iter().all(ready)
            && now
                .iter()
                .filter(|(n, _)| n.contains("-decode-"))
                .all(|(n, u)| before.get(n) != Some(u));
        if done {
            for (name, uid) in now.iter().filter(|(n, _)| n.contains("-prefill-")) {
                assert_eq!(
                    before.get(name),
                    Some(uid),
                    "prefill pod {name} was replaced though its role did not change"
                );
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "role rollout did not finish: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pg = Api::<PodGroup>::namespaced(ns.client.clone(), &ns.name)
        .get("llama-2p4d-0")
        .await
        .unwrap();
    assert_eq!(pg.metadata.uid, pg_uid, "the group's PodGroup is kept");
    wait_for(TIMEOUT, "UpdateInProgress cleared", || async {
        Ok(condition(&ns, "llama-2p4d", "UpdateInProgress")
            .await
            .filter(|c| c.0 == "False"))
    })
    .await
    .unwrap();
}
