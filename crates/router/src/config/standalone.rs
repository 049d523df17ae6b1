//! Standalone mode: the configuration lives in one YAML file, re-read when it changes.
//!
//! ```yaml
//! scheduler:                     # optional default profile (see scheduler::profile)
//!   plugins: [{name: least-request, weight: 1}]
//! modelServers:
//! - metadata: {name: llama, namespace: default, annotations: {}}
//!   spec:                        # a ModelServer spec, exactly as in Kubernetes
//!     inferenceEngine: vLLM
//!     workloadSelector: {matchLabels: {app: llama}}
//!     workloadPort: {port: 8000}
//!   endpoints:                   # static endpoints instead of selected pods
//!   - 127.0.0.1:8001             # ip:port
//!   - {address: 127.0.0.1, name: llama-1}   # ip alone uses workloadPort
//!   - {address: 127.0.0.1:8003, ready: false}
//! modelRoutes:
//! - metadata: {name: llama}
//!   spec: {modelName: llama, rules: [{targetModels: [{modelServerName: llama}]}]}
//! ```
//!
//! Earlier routes in the file count as older. A file that fails to parse keeps the previous
//! configuration in force and is reported in the log and in
//! `muster_router_config_reloads_total{result="error"}`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster_api::networking::{ModelRouteSpec, ModelServerSpec};
use serde::Deserialize;

use super::{ConfigInput, EndpointInput, ObjectKey, RouteInput, ServerInput};
use crate::scheduler::SchedulerProfile;

/// Namespace of objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The file's top level.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandaloneFile {
    /// Default scheduling profile.
    #[serde(default)]
    pub scheduler: Option<SchedulerProfile>,
    /// ModelServers with static endpoints.
    #[serde(default)]
    pub model_servers: Vec<FileModelServer>,
    /// ModelRoutes.
    #[serde(default)]
    pub model_routes: Vec<FileModelRoute>,
}

/// Object metadata the file may carry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileMeta {
    /// Name.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Annotations (scheduler profile, upstream protocol).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Labels (ignored).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A ModelServer plus its static endpoints.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileModelServer {
    /// Ignored (allowed so `kubectl get -o yaml` output pastes in).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Ignored.
    #[serde(default)]
    pub kind: Option<String>,
    /// Metadata.
    pub metadata: FileMeta,
    /// The ModelServer spec.
    pub spec: ModelServerSpec,
    /// Ignored.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
    /// Engines serving it.
    #[serde(default)]
    pub endpoints: Vec<StaticEndpoint>,
}

/// A ModelRoute.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileModelRoute {
    /// Ignored.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Ignored.
    #[serde(default)]
    pub kind: Option<String>,
    /// Metadata.
    pub metadata: FileMeta,
    /// The ModelRoute spec.
    pub spec: ModelRouteSpec,
    /// Ignored.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// A static endpoint: `"ip:port"`, `"ip"`, or the long form.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StaticEndpoint {
    /// `"127.0.0.1:8000"` or `"127.0.0.1"`.
    Short(String),
    /// Long form.
    Long {
        /// `ip:port` or `ip`.
        address: String,
        /// Identity for session affinity (default: the address).
        #[serde(default)]
        name: Option<String>,
        /// Whether to route to it (default true).
        #[serde(default = "yes")]
        ready: bool,
        /// Labels (PD roles).
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// The engine's KV-event ZMQ PUB address, e.g. `tcp://127.0.0.1:5557`.
        #[serde(default, rename = "kvEvents")]
        kv_events: Option<String>,
        /// The node it runs on (PD pairs prefer one node).
        #[serde(default)]
        node: Option<String>,
    },
}

fn yes() -> bool {
    true
}

fn parse_address(text: &str, default_port: i32) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is neither ip:port nor an IP address"))?;
    let port = u16::try_from(default_port)
        .map_err(|_| format!("workloadPort.port {default_port} is out of range"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Parses the file's text into a source-independent input and the default profile.
pub fn parse(text: &str) -> Result<(ConfigInput, Option<SchedulerProfile>), String> {
    let file: StandaloneFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if let Some(p) = &file.scheduler {
        p.validate().map_err(|e| format!("scheduler: {e}"))?;
    }
    let mut input = ConfigInput::default();
    for (i, s) in file.model_servers.into_iter().enumerate() {
        let ns = s.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let mut endpoints = Vec::new();
        for (j, e) in s.endpoints.into_iter().enumerate() {
            let (address, name, ready, labels, kv_events, node) = match e {
                StaticEndpoint::Short(a) => (a, None, true, BTreeMap::new(), None, None),
                StaticEndpoint::Long {
                    address,
                    name,
                    ready,
                    labels,
                    kv_events,
                    node,
                } => (address, name, ready, labels, kv_events, node),
            };
            if let Some(k) = &kv_events {
                if !k.starts_with("tcp://") {
                    return Err(format!(
                        "modelServers[{i}].endpoints[{j}].kvEvents {k:?}: expected tcp://HOST:PORT"
                    ));
                }
            }
            let addr = parse_address(&address, s.spec.workload_port.port)
                .map_err(|e| format!("modelServers[{i}].endpoints[{j}]: {e}"))?;
            endpoints.push(EndpointInput {
                name: name.unwrap_or_else(|| addr.to_string()),
                address: addr,
                ready,
                labels,
                kv_events,
                node,
            });
        }
        input.servers.push(ServerInput {
            key: ObjectKey::new(ns, &s.metadata.name),
            generation: None,
            annotations: s.metadata.annotations,
            spec: s.spec,
            endpoints,
        });
    }
    for (i, r) in file.model_routes.into_iter().enumerate() {
        let ns = r.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        input.routes.push(RouteInput {
            key: ObjectKey::new(ns, &r.metadata.name),
            generation: None,
            created: None,
            position: i,
            spec: r.spec,
        });
    }
    Ok((input, file.scheduler))
}

/// Reads and parses the file.
pub fn load(path: &Path) -> Result<(ConfigInput, Option<SchedulerProfile>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads the file, publishes it, and re-publishes whenever its content changes (checked every
/// `interval`; polling needs no platform file-watch support and catches ConfigMap symlink swaps).
pub async fn run(
    path: PathBuf,
    interval: Duration,
    apply: Arc<dyn Fn(ConfigInput, Option<SchedulerProfile>) + Send + Sync>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut last: Option<String> = None;
    loop {
        match std::fs::read_to_string(&path) {
            Ok(text) if last.as_deref() != Some(text.as_str()) => {
                match parse(&text) {
                    Ok((input, profile)) => {
                        tracing::info!(
                            path = %path.display(),
                            servers = input.servers.len(),
                            routes = input.routes.len(),
                            "configuration loaded"
                        );
                        metrics.config_reloads.with_label_values(&["ok"]).inc();
                        apply(input, profile);
                    }
                    Err(e) => {
                        metrics.config_reloads.with_label_values(&["error"]).inc();
                        tracing::error!(path = %path.display(), error = %e, "configuration rejected; keeping the previous one");
                    }
                }
                last = Some(text);
            }
            Ok(_) => {}
            Err(e) => {
                if last.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read configuration; keeping the previous one");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
scheduler:
  plugins: [{name: round-robin}]
modelServers:
- apiVersion: networking.muster.dev/v1alpha1
  kind: ModelServer
  metadata: {name: llama, annotations: {router.muster.dev/upstream-protocol: h2c}}
  spec:
    inferenceEngine: vLLM
    workloadSelector: {matchLabels: {app: llama}}
    workloadPort: {port: 8000}
  endpoints:
  - 127.0.0.1:8001
  - {address: 127.0.0.2, name: llama-1}
  - {address: "127.0.0.1:8003", ready: false, kvEvents: "tcp://127.0.0.1:5557"}
modelRoutes:
- metadata: {name: llama, namespace: prod}
  spec: {modelName: llama, rules: [{targetModels: [{modelServerName: llama}]}]}
"#;

    #[test]
    fn parses_servers_endpoints_and_routes() {
        let (input, profile) = parse(FILE).unwrap();
        assert!(profile.is_some());
        let s = &input.servers[0];
        assert_eq!(s.key, ObjectKey::new("default", "llama"));
        let eps: Vec<(String, String, bool)> = s
            .endpoints
            .iter()
            .map(|e| (e.name.clone(), e.address.to_string(), e.ready))
            .collect();
        assert_eq!(
            eps,
            [
                ("127.0.0.1:8001".into(), "127.0.0.1:8001".into(), true),
                ("llama-1".into(), "127.0.0.2:8000".into(), true),
                ("127.0.0.1:8003".into(), "127.0.0.1:8003".into(), false),
            ]
        );
        assert_eq!(input.routes[0].key, ObjectKey::new("prod", "llama"));
        assert_eq!(
            s.endpoints[2].kv_events.as_deref(),
            Some("tcp://127.0.0.1:5557")
        );
        let bad = FILE.replace("tcp://127.0.0.1:5557", "127.0.0.1:5557");
        assert!(parse(&bad)
            .unwrap_err()
            .contains("modelServers[0].endpoints[2].kvEvents"));
    }

    #[test]
    fn errors_name_the_place() {
        let bad_endpoint = FILE.replace("127.0.0.1:8001", "localhost:80");
        let e = parse(&bad_endpoint).unwrap_err();
        assert!(e.contains("modelServers[0].endpoints[0]"), "{e}");
        let missing = "modelServers:\n- metadata: {name: x}\n  spec: {inferenceEngine: vLLM}\n";
        let e = parse(missing).unwrap_err();
        assert!(
            e.contains("workloadSelector") || e.contains("missing field"),
            "{e}"
        );
        let unknown = "modelServer: []\n";
        assert!(parse(unknown).unwrap_err().contains("unknown field"));
        let bad_profile = "scheduler: {plugins: [{name: random, weight: -3}]}\n";
        assert!(parse(bad_profile)
            .unwrap_err()
            .contains("scheduler: plugins[0].weight"));
    }
}
