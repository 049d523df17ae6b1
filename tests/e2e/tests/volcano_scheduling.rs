//! The local control plane really gang-schedules: Volcano binds all pods of a PodGroup or none,
//! and honours hard network-topology constraints over the HyperNode tree.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use muster_api::labels::TOPOLOGY_RACK;
use muster_api::volcano::PodGroup;
use muster_e2e::{wait_for, TestNamespace, TestNodes};
use serde_json::json;

fn pod_group(name: &str, min_member: i32, topology: Option<serde_json::Value>) -> PodGroup {
    let mut spec = json!({"minMember": min_member, "queue": "default"});
    if let Some(t) = topology {
        spec["networkTopology"] = t;
    }
    serde_json::from_value(json!({
        "apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// A pod in gang `group` needing `gpus` GPUs; with `pool`, it may only land on that test pool.
fn gang_pod(name: &str, group: &str, gpus: u32, pool: Option<&str>) -> Pod {
    let mut spec = json!({
        "schedulerName": "volcano",
        "containers": [{
            "name": "engine", "image": "muster/engine-sim:latest",
            "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}, "requests": {"nvidia.com/gpu": gpus.to_string()}}
        }]
    });
    if let Some(pool) = pool {
        spec["nodeSelector"] = json!({"muster.dev/e2e-pool": pool});
        spec["tolerations"] = json!([{"key": "muster.dev/e2e-pool", "operator": "Equal", "value": pool, "effect": "NoSchedule"}]);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {"scheduling.k8s.io/group-name": group}, "labels": {"gang": group}},
        "spec": spec
    }))
    .unwrap()
}

async fn bound_pods(pods: &Api<Pod>, group: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("gang={group}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .collect()
}

async fn create_gang(client: &Client, ns: &str, group: PodGroup, pods: Vec<Pod>) {
    Api::<PodGroup>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &group)
        .await
        .expect("create PodGroup");
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    for pod in pods {
        api.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }
}

#[tokio::test]
async fn gang_binds_nothing_until_the_whole_gang_fits() {
    let ns = TestNamespace::new("gang").await;
    let client = ns.client.clone();
    let pool = ns.name.clone();
    let mut nodes = TestNodes::new(client.clone());
    // 5 nodes of 8 GPUs for a gang of 8 pods × 8 GPUs: not enough for all of them.
    for i in 0..5 {
        nodes
            .add(&format!("{pool}-n{i}"), 8, &pool, &[])
            .await
            .unwrap();
    }
    let pods: Vec<Pod> = (0..8)
        .map(|i| gang_pod(&format!("worker-{i}"), "gang8", 8, Some(&pool)))
        .collect();
    create_gang(&client, &ns.name, pod_group("gang8", 8, None), pods).await;

    let pod_api = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let pg_api = Api::<PodGroup>::namespaced(client.clone(), &ns.name);
    // Give the scheduler many cycles to (wrongly) bind a partial gang; it must bind none, and
    // say why on the PodGroup.
    let reason = wait_for(
        Duration::from_secs(30),
        "an Unschedulable condition on the PodGroup",
        || async {
            let pg = pg_api.get("gang8").await?;
            let conditions = pg.status.and_then(|s| s.conditions).unwrap_or_default();
            Ok(conditions
                .into_iter()
                .find(|c| c.type_.as_deref() == Some("Unschedulable"))
                .map(|c| c.message))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bound = bound_pods(&pod_api, "gang8").await;
    assert!(
        bound.is_empty(),
        "partial gang bound {} pods; reason was {reason:?}",
        bound.len()
    );

    // Three more nodes make room for the whole gang: all 8 bind.
    for i in 5..8 {
        nodes
            .add(&format!("{pool}-n{i}"), 8, &pool, &[])
            .await
            .unwrap();
    }
    let bound = wait_for(Duration::from_secs(60), "all 8 gang pods bound", || async {
        let bound = bound_pods(&pod_api, "gang8").await;
        Ok((bound.len() == 8).then_some(bound))
    })
    .await
    .unwrap();
    let used: BTreeSet<_> = bound
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    assert_eq!(
        used.len(),
        8,
        "8 GPUs per pod means one pod per node: {used:?}"
    );
    // kwok runs them with loopback pod IPs only, one IP per pod.
    let running = wait_for(
        Duration::from_secs(30),
        "pods Running with pod IPs",
        || async {
            let pods = pod_api
                .list(&ListParams::default().labels("gang=gang8"))
                .await?
                .items;
            let ips: Vec<String> = pods
                .iter()
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect();
            Ok((ips.len() == 8).then_some(ips))
        },
    )
    .await
    .unwrap();
    assert!(
        running.iter().all(|ip| ip.starts_with("127.")),
        "pod IPs outside loopback: {running:?}"
    );
    let distinct: BTreeSet<_> = running.iter().collect();
    assert_eq!(distinct.len(), 8, "pods share an IP: {running:?}");
}

#[tokio::test]
async fn hard_tier_one_topology_keeps_the_gang_in_one_rack() {
    let ns = TestNamespace::new("topo").await;
    let client = ns.client.clone();
    let pods: Vec<Pod> = (0..3)
        .map(|i| gang_pod(&format!("tp-{i}"), "tp3", 8, None))
        .collect();
    let topology = json!({"mode": "hard", "highestTierAllowed": 1});
    create_gang(&client, &ns.name, pod_group("tp3", 3, Some(topology)), pods).await;

    let pod_api = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let bound = wait_for(Duration::from_secs(60), "the 3 pods bound", || async {
        let bound = bound_pods(&pod_api, "tp3").await;
        Ok((bound.len() == 3).then_some(bound))
    })
    .await
    .unwrap();
    let node_api = Api::<Node>::all(client.clone());
    let mut racks = BTreeSet::new();
    for pod in &bound {
        let node = node_api
            .get(pod.spec.as_ref().unwrap().node_name.as_ref().unwrap())
            .await
            .unwrap();
        racks.insert(
            node.metadata
                .labels
                .unwrap_or_default()
                .get(TOPOLOGY_RACK)
                .cloned(),
        );
    }
    assert_eq!(racks.len(), 1, "pods spread over racks {racks:?}");
    assert!(
        racks.iter().next().unwrap().is_some(),
        "nodes carry the rack label"
    );
}
