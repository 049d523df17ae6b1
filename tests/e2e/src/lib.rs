//! Harness for end-to-end tests against the local control plane (real kube-apiserver, etcd,
//! kube-controller-manager, Volcano scheduler and kwok; see `hack/cluster-up.sh`).
//!
//! The cluster is brought up once per test run (or a running one is reused): the first test
//! that asks for it runs `hack/cluster-up.sh`, which returns within seconds when everything is
//! already healthy. Each test works in its own namespace, deleted when the test ends. Component
//! logs are in `.cluster/logs/`, which `make test` prints when the suite fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, Config, ResourceExt};
use serde_json::Value;

/// Root of the repository (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Directory holding the cluster's kubeconfig, certificates and logs.
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("MUSTER_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cluster"))
}

/// Path of the admin kubeconfig written by `hack/cluster-up.sh`.
pub fn kubeconfig_path() -> PathBuf {
    cluster_dir().join("kubeconfig")
}

static CLUSTER_UP: OnceLock<Result<(), String>> = OnceLock::new();

/// Ensures the local control plane is running, starting it if needed (once per process).
pub fn ensure_cluster() {
    let outcome = CLUSTER_UP.get_or_init(|| {
        let script = repo_root().join("hack/cluster-up.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({status}); component logs are in {}",
                script.display(),
                cluster_dir().join("logs").display()
            ))
        }
    });
    if let Err(e) = outcome {
        panic!("local control plane unavailable: {e}");
    }
}

/// A client for the local control plane, starting it if needed.
pub async fn client() -> Client {
    ensure_cluster();
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("kubeconfig readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    Client::try_from(config).expect("client")
}

/// A namespace owned by one test; deleted (with everything in it) when dropped.
pub struct TestNamespace {
    /// Client for the local control plane.
    pub client: Client,
    /// Namespace name.
    pub name: String,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<unique suffix>`.
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("e2e-{prefix}-{}-{:x}", std::process::id(), nanos % 0xfffff);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"muster.dev/e2e": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestNamespace { client, name }
    }

    /// Creates an object from a YAML or JSON document in this namespace (for namespaced
    /// kinds), returning the API server's error unchanged so tests can assert on its message.
    pub async fn create(&self, doc: &Value) -> std::result::Result<DynamicObject, kube::Error> {
        let api = self.api_for(doc).await;
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object shape");
        api.create(&PostParams::default(), &obj).await
    }

    /// Replaces an existing object with `doc` (same name), returning the API server's answer.
    pub async fn replace(&self, doc: &Value) -> std::result::Result<DynamicObject, kube::Error> {
        let api = self.api_for(doc).await;
        let name = doc["metadata"]["name"].as_str().expect("metadata.name");
        let mut obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object shape");
        let current = api.get(name).await?;
        obj.metadata.resource_version = current.resource_version();
        api.replace(name, &PostParams::default(), &obj).await
    }

    /// Server-side applies `doc` with field manager `muster-e2e`.
    pub async fn apply(&self, doc: &Value) -> std::result::Result<DynamicObject, kube::Error> {
        let api = self.api_for(doc).await;
        let name = doc["metadata"]["name"].as_str().expect("metadata.name");
        api.patch(
            name,
            &PatchParams::apply("muster-e2e").force(),
            &Patch::Apply(doc),
        )
        .await
    }

    /// A dynamic API for the kind of `doc`, scoped to this namespace when the kind is.
    pub async fn api_for(&self, doc: &Value) -> Api<DynamicObject> {
        let api_version = doc["apiVersion"].as_str().expect("apiVersion");
        let kind = doc["kind"].as_str().expect("kind");
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = discovery::pinned_kind(&self.client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{api_version} {kind} is not served: {e}"));
        match caps.scope {
            Scope::Namespaced => Api::namespaced_with(self.client.clone(), &self.name, &resource),
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; kubectl deletes in the background so a failing test still cleans up.
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Reads a YAML file under the repository root into JSON.
pub fn load_yaml(relative: &str) -> Value {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > timeout {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Fake GPU nodes created by a test, deleted when dropped.
pub struct TestNodes {
    client: Client,
    /// Names of the nodes created so far.
    pub names: Vec<String>,
}

impl TestNodes {
    /// An empty set; add nodes with [`TestNodes::add`].
    pub fn new(client: Client) -> Self {
        TestNodes {
            client,
            names: Vec::new(),
        }
    }

    /// Creates a kwok-managed node with `gpus` GPUs, the given labels, and a NoSchedule taint
    /// `muster.dev/e2e-pool=<pool>` so only the test's own pods (which tolerate it) land there.
    pub async fn add(
        &mut self,
        name: &str,
        gpus: u32,
        pool: &str,
        labels: &[(&str, &str)],
    ) -> Result<()> {
        let mut label_map = serde_json::Map::new();
        label_map.insert("type".into(), "kwok".into());
        label_map.insert("kubernetes.io/hostname".into(), name.into());
        label_map.insert("muster.dev/e2e-pool".into(), pool.into());
        for (k, v) in labels {
            label_map.insert((*k).into(), (*v).into());
        }
        let resources = serde_json::json!({
            "cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string()
        });
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": label_map, "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {"taints": [{"key": "muster.dev/e2e-pool", "value": pool, "effect": "NoSchedule"}]},
            "status": {"capacity": resources, "allocatable": resources}
        }))?;
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("create node {name}"))?;
        self.names.push(name.to_string());
        Ok(())
    }
}

impl Drop for TestNodes {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args(["delete", "node", "--wait=false", "--ignore-not-found"])
            .args(&self.names)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Deletes a node by name (used when a test must remove capacity mid-test).
pub async fn delete_node(client: &Client, name: &str) -> Result<()> {
    Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

/// The message of an API error, or the error's display form.
pub fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(resp) => resp.message.clone(),
        other => other.to_string(),
    }
}

/// A ModelServing controller running in this process, watching one namespace; stops when
/// dropped (the test equivalent of killing the controller's pod).
pub struct ControllerHandle {
    task: tokio::task::JoinHandle<()>,
}

impl ControllerHandle {
    /// Starts the controller for `namespace`. Needs a multi-threaded test runtime.
    pub fn start(client: Client, namespace: &str) -> Self {
        Self::start_with_metrics(
            client,
            namespace,
            muster_controller::metrics::Metrics::new(),
        )
    }

    /// Like [`ControllerHandle::start`], counting into `metrics` (the test keeps a clone).
    pub fn start_with_metrics(
        client: Client,
        namespace: &str,
        metrics: muster_controller::metrics::Metrics,
    ) -> Self {
        let ns = namespace.to_string();
        let task = tokio::spawn(async move {
            muster_controller::serving::reconcile::run(
                client,
                metrics,
                Some(ns),
                std::future::pending(),
            )
            .await;
        });
        ControllerHandle { task }
    }

    /// Stops the controller abruptly, mid-reconcile if need be.
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Drop for ControllerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs kubectl against the local control plane, returning (success, stdout+stderr).
pub fn kubectl(args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Path of a workspace binary (`target/debug/<name>`), building it first if it is missing
/// (`cargo test --workspace` builds it already; `cargo test -p muster-e2e` may not).
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", package, "--bin", name])
            .current_dir(repo_root())
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {name} failed"
        );
    }
    path
}

/// HyperNode discovery running in this process; stops when dropped. Give each test its own
/// label keys and `--discovery-source` so it never touches another test's (or the cluster's
/// hand-written) HyperNodes.
pub struct DiscoveryHandle {
    task: tokio::task::JoinHandle<()>,
}

impl DiscoveryHandle {
    /// Starts discovery with `opts`. Needs a multi-threaded test runtime.
    pub fn start(client: Client, opts: muster_controller::discovery::DiscoveryOptions) -> Self {
        let task = tokio::spawn(muster_controller::discovery::run(
            client,
            opts,
            std::future::pending(),
        ));
        DiscoveryHandle { task }
    }
}

impl Drop for DiscoveryHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
