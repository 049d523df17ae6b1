//! Kubernetes mode: reflectors over ModelServer, ModelRoute and Pod objects feed the routing
//! table; a separate task writes ModelServer/ModelRoute status (server-side apply, field
//! manager `muster-router`) so a slow API server never delays a routing update.
//!
//! Only pods that are Running, Ready, not terminating and have an IP receive traffic. Every
//! router replica computes the same status from the same objects, so replicas writing it
//! concurrently agree.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use muster_api::networking::{ModelRoute, ModelServer};
use tokio::sync::{watch, Notify};

use super::status::{route_status, server_status};
use super::{
    ConfigInput, EndpointInput, ObjectKey, RouteInput, RouteReport, ServerInput, ServerReport,
};

/// Field manager of the router's status writes.
pub const FIELD_MANAGER: &str = "muster-router";

/// Kubernetes-mode settings.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    /// Label selector narrowing the pod watch (e.g. `app.kubernetes.io/part-of=llm`).
    pub pod_selector: Option<String>,
    /// Write ModelServer/ModelRoute status.
    pub write_status: bool,
    /// Coalescing delay after a change before the table is rebuilt.
    pub debounce: Duration,
}

/// Callback that compiles and publishes an input, returning the reports for status.
pub type Apply = Arc<dyn Fn(ConfigInput) -> (Vec<ServerReport>, Vec<RouteReport>) + Send + Sync>;

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A pod the router may send traffic to.
pub fn pod_is_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Builds the source-independent input from the reflectors' contents. Terminating pods are
/// not counted at all; pods without an IP yet count as selected but not Ready.
pub fn build_input(
    servers: &[Arc<ModelServer>],
    routes: &[Arc<ModelRoute>],
    pods: &[Arc<Pod>],
) -> ConfigInput {
    let mut pods_by_ns: HashMap<&str, Vec<&Pod>> = HashMap::new();
    for p in pods {
        if p.metadata.deletion_timestamp.is_none() {
            pods_by_ns
                .entry(p.metadata.namespace.as_deref().unwrap_or(""))
                .or_default()
                .push(p);
        }
    }
    let mut input = ConfigInput::default();
    for s in servers {
        let ns = s.namespace().unwrap_or_default();
        let selector = &s.spec.workload_selector.match_labels;
        let port = u16::try_from(s.spec.workload_port.port).unwrap_or(0);
        let mut endpoints = Vec::new();
        for p in pods_by_ns.get(ns.as_str()).into_iter().flatten() {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            if selector.is_empty() || !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            let ip: Option<IpAddr> = p
                .status
                .as_ref()
                .and_then(|st| st.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok());
            endpoints.push(EndpointInput {
                name: p.name_any(),
                address: SocketAddr::new(ip.unwrap_or(IpAddr::from([0, 0, 0, 0])), port),
                ready: ip.is_some() && port != 0 && pod_is_ready(p),
                labels,
                kv_events: None,
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            });
        }
        input.servers.push(ServerInput {
            key: ObjectKey::new(&ns, &s.name_any()),
            generation: s.metadata.generation,
            annotations: s.metadata.annotations.clone().unwrap_or_default(),
            spec: s.spec.clone(),
            endpoints,
        });
    }
    for r in routes {
        input.routes.push(RouteInput {
            key: ObjectKey::new(&r.namespace().unwrap_or_default(), &r.name_any()),
            generation: r.metadata.generation,
            created: r
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            position: 0,
            spec: r.spec.clone(),
        });
    }
    input
}

/// Watches the API and keeps the routing table current; returns only on a fatal error.
pub async fn run(client: Client, opts: KubeOptions, apply: Apply) -> anyhow::Result<()> {
    let ns = opts.namespace.as_deref();
    let (servers, servers_w) = reflector::store::<ModelServer>();
    let (routes, routes_w) = reflector::store::<ModelRoute>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let mut pod_config = watcher::Config::default();
    if let Some(sel) = &opts.pod_selector {
        pod_config = pod_config.labels(sel);
    }
    let changed = Arc::new(Notify::new());

    let streams = futures::stream::select_all([
        watcher(api::<ModelServer>(&client, ns), watcher::Config::default())
            .default_backoff()
            .reflect(servers_w)
            .map_ok(|_| ())
            .map_err(|e| format!("ModelServer watch: {e}"))
            .boxed(),
        watcher(api::<ModelRoute>(&client, ns), watcher::Config::default())
            .default_backoff()
            .reflect(routes_w)
            .map_ok(|_| ())
            .map_err(|e| format!("ModelRoute watch: {e}"))
            .boxed(),
        watcher(api::<Pod>(&client, ns), pod_config)
            .default_backoff()
            .reflect(pods_w)
            .map_ok(|_| ())
            .map_err(|e| format!("Pod watch: {e}"))
            .boxed(),
    ]);
    let notify = changed.clone();
    let watch_task = tokio::spawn(async move {
        let mut streams = streams;
        while let Some(item) = streams.next().await {
            match item {
                Ok(()) => notify.notify_one(),
                // The watchers retry with backoff; the table keeps its last good state.
                Err(e) => tracing::warn!(error = %e, "watch error; retrying"),
            }
        }
    });

    servers.wait_until_ready().await?;
    routes.wait_until_ready().await?;
    pods.wait_until_ready().await?;
    tracing::info!("initial sync of ModelServers, ModelRoutes and Pods complete");

    let (reports_tx, reports_rx) =
        watch::channel::<(Vec<ServerReport>, Vec<RouteReport>)>((vec![], vec![]));
    let status_task = opts.write_status.then(|| {
        tokio::spawn(write_statuses(
            client.clone(),
            reports_rx,
            servers.clone(),
            routes.clone(),
        ))
    });

    loop {
        let input = build_input(&servers.state(), &routes.state(), &pods.state());
        let reports = apply(input);
        let _ = reports_tx.send(reports);
        changed.notified().await;
        tokio::time::sleep(opts.debounce).await;
        if watch_task.is_finished() {
            anyhow::bail!("the Kubernetes watch ended");
        }
        if let Some(t) = &status_task {
            if t.is_finished() {
                anyhow::bail!("the status writer ended");
            }
        }
    }
}

async fn write_statuses(
    client: Client,
    mut reports: watch::Receiver<(Vec<ServerReport>, Vec<RouteReport>)>,
    servers: Store<ModelServer>,
    routes: Store<ModelRoute>,
) {
    // What this replica last wrote, so an unchanged status is never re-sent even before the
    // reflector has seen our previous write.
    let mut written_servers: HashMap<ObjectKey, serde_json::Value> = HashMap::new();
    let mut written_routes: HashMap<ObjectKey, serde_json::Value> = HashMap::new();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    loop {
        let (server_reports, route_reports) = reports.borrow_and_update().clone();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for r in &server_reports {
            let current = servers.get(&ObjectRef::new(&r.key.name).within(&r.key.namespace));
            let Some(current) = current else { continue };
            let previous = current.status.as_ref();
            let desired = server_status(r, previous, &now);
            if previous == Some(&desired) {
                continue;
            }
            let value = serde_json::to_value(&desired).expect("status serialises");
            if written_servers.get(&r.key) == Some(&value) {
                continue;
            }
            let patch = serde_json::json!({
                "apiVersion": "networking.muster.dev/v1alpha1",
                "kind": "ModelServer",
                "status": value,
            });
            let api: Api<ModelServer> = Api::namespaced(client.clone(), &r.key.namespace);
            match api
                .patch_status(&r.key.name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    written_servers.insert(r.key.clone(), patch["status"].clone());
                }
                Err(e) => {
                    tracing::warn!(server = %r.key, error = %e, "cannot write ModelServer status")
                }
            }
        }
        for r in &route_reports {
            let current = routes.get(&ObjectRef::new(&r.key.name).within(&r.key.namespace));
            let Some(current) = current else { continue };
            let previous = current.status.as_ref();
            let desired = route_status(r, previous, &now);
            if previous == Some(&desired) {
                continue;
            }
            let value = serde_json::to_value(&desired).expect("status serialises");
            if written_routes.get(&r.key) == Some(&value) {
                continue;
            }
            let patch = serde_json::json!({
                "apiVersion": "networking.muster.dev/v1alpha1",
                "kind": "ModelRoute",
                "status": value,
            });
            let api: Api<ModelRoute> = Api::namespaced(client.clone(), &r.key.namespace);
            match api
                .patch_status(&r.key.name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    written_routes.insert(r.key.clone(), patch["status"].clone());
                }
                Err(e) => {
                    tracing::warn!(route = %r.key, error = %e, "cannot write ModelRoute status")
                }
            }
        }
        written_servers.retain(|k, _| server_reports.iter().any(|r| &r.key == k));
        written_routes.retain(|k, _| route_reports.iter().any(|r| &r.key == k));
        if reports.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(
        name: &str,
        ns: &str,
        labels: &[(&str, &str)],
        ip: Option<&str>,
        ready: bool,
    ) -> Arc<Pod> {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]
                }
            }))
            .unwrap(),
        )
    }

    #[test]
    fn selects_pods_by_labels_in_the_same_namespace() {
        let server: ModelServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.muster.dev/v1alpha1", "kind": "ModelServer",
            "metadata": {"name": "llama", "namespace": "a", "generation": 4},
            "spec": {"inferenceEngine": "vLLM", "workloadSelector": {"matchLabels": {"app": "llama"}},
                     "workloadPort": {"port": 8000}}
        }))
        .unwrap();
        let pods = vec![
            pod("p0", "a", &[("app", "llama")], Some("127.1.0.5"), true),
            pod("p1", "a", &[("app", "llama")], Some("127.1.0.6"), false),
            pod("p2", "a", &[("app", "llama")], None, false),
            pod(
                "other-ns",
                "b",
                &[("app", "llama")],
                Some("127.1.0.7"),
                true,
            ),
            pod("other-app", "a", &[("app", "x")], Some("127.1.0.8"), true),
        ];
        let input = build_input(&[Arc::new(server)], &[], &pods);
        let s = &input.servers[0];
        assert_eq!(s.generation, Some(4));
        let got: Vec<(&str, String, bool)> = s
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.address.to_string(), e.ready))
            .collect();
        assert_eq!(
            got,
            [
                ("p0", "127.1.0.5:8000".to_string(), true),
                ("p1", "127.1.0.6:8000".to_string(), false),
                ("p2", "0.0.0.0:8000".to_string(), false),
            ]
        );
    }
}
