//! The router in Kubernetes mode on the local control plane: a ModelServer selects kwok pods
//! (loopback pod IPs) that one engine simulator serves from `0.0.0.0:<port>`; adding and
//! removing pods changes the router's endpoints within seconds, and the router writes the
//! counts and conditions to ModelServer/ModelRoute status. API keys come from labelled Secrets
//! and follow their edits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use muster_api::networking::{ModelRoute, ModelServer};
use muster_e2e::{kubeconfig_path, wait_for, TestNamespace, TestNodes};
use serde_json::{json, Value};

const ENGINE_MODEL: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

/// A workspace binary. `cargo test --workspace` builds both (their packages have integration
/// tests); when this package's tests run alone, missing ones are built once. An existing
/// binary is used as is: rebuilding it here with this package's feature set would relink it
/// on every run.
fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            for package in ["muster-router", "muster-engine-sim"] {
                let status = Command::new(env!("CARGO"))
                    .args(["build", "--quiet", "-p", package, "--bin", package])
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status()
                    .expect("cargo build");
                assert!(status.success(), "building {package} failed");
            }
        });
    }
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// A child process killed on drop, with the addresses it printed.
struct Proc {
    child: Child,
    addrs: Vec<SocketAddr>,
}

impl Proc {
    fn spawn(cmd: &mut Command, prefixes: &[&str]) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = vec![None; prefixes.len()];
        let deadline = Instant::now() + Duration::from_secs(60);
        while addrs.iter().any(Option::is_none) {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("process printed its addresses");
            let mut parts = line.split_whitespace();
            if let (Some(p), Some(a)) = (parts.next(), parts.next()) {
                if let Some(i) = prefixes.iter().position(|x| *x == p) {
                    addrs[i] = Some(a.parse().unwrap());
                }
            }
        }
        Proc {
            child,
            addrs: addrs.into_iter().map(Option::unwrap).collect(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 exchange (the server closes the connection, so no chunked decoding needed).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    http_as(addr, None, method, path, body)
}

/// [`http`] with `Authorization: Bearer <key>` when `key` is given.
fn http_as(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    assert!(
        addr.ip().is_loopback(),
        "tests only talk to loopback, not {addr}"
    );
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn pod(name: &str, node: &str, pool: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "llama"}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "muster.dev/e2e-pool", "operator": "Equal", "value": pool, "effect": "NoSchedule"}],
            "containers": [{"name": "engine", "image": "muster/engine-sim:latest"}]
        }
    }))
    .unwrap()
}

fn chat() -> Value {
    json!({"model": "llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "ignore_eos": true})
}

/// The router's endpoints for the test's ModelServer, as pod names.
fn router_endpoints(admin: SocketAddr) -> Vec<String> {
    let (status, body) = http(admin, "GET", "/debug/endpoints", None);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Waits until the router has `n` endpoints for the test's ModelServer.
async fn wait_for_endpoints(admin: SocketAddr, n: usize, timeout: Duration) {
    wait_for(
        timeout,
        &format!("{n} endpoints in the router"),
        || async move { Ok((router_endpoints(admin).len() == n).then_some(())) },
    )
    .await
    .unwrap();
}

async fn server_counts(api: &Api<ModelServer>) -> anyhow::Result<Option<(i32, i32, String)>> {
    let s = api.get("llama").await?;
    Ok(s.status.map(|st| {
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone())
            .unwrap_or_default();
        (st.total_endpoints, st.ready_endpoints, ready)
    }))
}

/// One simulator process playing every pod (it keys an engine by the local, pod, IP), and a
/// ModelServer and ModelRoute `llama` for `app=llama` pods on its port.
async fn llama_backend(ns: &TestNamespace) -> (Proc, u16) {
    let sim = Proc::spawn(
        Command::new(binary("muster-engine-sim"))
            .args(["--listen", "0.0.0.0:0", "--time-scale", "50"])
            .env("RUST_LOG", "error"),
        &["LISTENING"],
    );
    let port = sim.addrs[0].port();
    ns.create(&json!({
        "apiVersion": "networking.muster.dev/v1alpha1", "kind": "ModelServer",
        "metadata": {"name": "llama"},
        "spec": {"model": ENGINE_MODEL, "inferenceEngine": "vLLM",
                 "workloadSelector": {"matchLabels": {"app": "llama"}},
                 "workloadPort": {"port": port}}
    }))
    .await
    .expect("create ModelServer");
    ns.create(&json!({
        "apiVersion": "networking.muster.dev/v1alpha1", "kind": "ModelRoute",
        "metadata": {"name": "llama"},
        "spec": {"modelName": "llama", "rules": [{"targetModels": [{"modelServerName": "llama"}]}]}
    }))
    .await
    .expect("create ModelRoute");
    (sim, port)
}

/// The router in Kubernetes mode for the test namespace, once `/readyz` says ready.
async fn start_router(ns: &TestNamespace, extra: &[&str]) -> Proc {
    let router = Proc::spawn(
        Command::new(binary("muster-router"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--namespace", &ns.name, "--metrics-interval", "200ms"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "warn"),
        &["LISTENING", "ADMIN"],
    );
    let admin = router.addrs[1];
    wait_for(
        Duration::from_secs(30),
        "router ready after the first sync",
        || async move { Ok((http(admin, "GET", "/readyz", None).0 == 200).then_some(())) },
    )
    .await
    .unwrap();
    router
}

#[tokio::test]
async fn pods_come_and_go_as_endpoints_and_status_shows_the_counts() {
    let ns = TestNamespace::new("router").await;
    let client = ns.client.clone();
    let pool = ns.name.clone();
    let node = format!("{pool}-n0");
    let mut nodes = TestNodes::new(client.clone());
    nodes.add(&node, 8, &pool, &[]).await.unwrap();

    let (_sim, port) = llama_backend(&ns).await;
    let router = start_router(&ns, &[]).await;
    let (public, admin) = (router.addrs[0], router.addrs[1]);

    // No pods yet: an honest 503, and status says why.
    let (status, body) = http(public, "POST", "/v1/chat/completions", Some(&chat()));
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no Ready endpoints") || body.contains("no_healthy_upstream"),
        "{body}"
    );
    let servers: Api<ModelServer> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        Duration::from_secs(15),
        "ModelServer status with 0 endpoints",
        || {
            let servers = servers.clone();
            async move {
                Ok(server_counts(&servers)
                    .await?
                    .filter(|c| c.0 == 0 && c.2 == "False"))
            }
        },
    )
    .await
    .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..2 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("llama-{i}"), &node, &pool),
        )
        .await
        .unwrap();
    }
    let t = Instant::now();
    wait_for_endpoints(admin, 2, Duration::from_secs(30)).await;
    eprintln!("2 pods became endpoints {:?} after creation", t.elapsed());
    // Each endpoint knows its pod's node (PD pairs prefer one node).
    let (status, body) = http(admin, "GET", "/debug/config", None);
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    let nodes: Vec<&str> = config["servers"][0]["endpoints"]
        .as_array()
        .expect("endpoints in /debug/config")
        .iter()
        .map(|e| e["node"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(nodes, [node.as_str(), node.as_str()], "{body}");
    wait_for(
        Duration::from_secs(15),
        "ModelServer status 2/2 Ready",
        || {
            let servers = servers.clone();
            async move {
                Ok(server_counts(&servers)
                    .await?
                    .filter(|c| *c == (2, 2, "True".into())))
            }
        },
    )
    .await
    .unwrap();
    let routes: Api<ModelRoute> = Api::namespaced(client.clone(), &ns.name);
    let route = routes.get("llama").await.unwrap();
    let conds: Vec<(String, String)> = route
        .status
        .expect("ModelRoute status written")
        .conditions
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert_eq!(
        conds,
        [
            ("Accepted".into(), "True".into()),
            ("Ready".into(), "True".into())
        ]
    );

    // Traffic reaches both pods, by their loopback pod IPs.
    for _ in 0..20 {
        let (status, body) = http(public, "POST", "/v1/chat/completions", Some(&chat()));
        assert_eq!(status, 200, "{body}");
    }
    for p in pods.list(&Default::default()).await.unwrap().items {
        let ip: std::net::IpAddr = p.status.unwrap().pod_ip.unwrap().parse().unwrap();
        assert!(ip.is_loopback(), "pod IP {ip} outside loopback");
        let (_, metrics) = http(SocketAddr::new(ip, port), "GET", "/metrics", None);
        let served: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("vllm:request_success_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(served > 0.0, "pod {ip} got no traffic");
    }

    // Scale up: a third pod is routable within seconds.
    pods.create(&PostParams::default(), &pod("llama-2", &node, &pool))
        .await
        .unwrap();
    let t = Instant::now();
    wait_for_endpoints(admin, 3, Duration::from_secs(15)).await;
    let up = t.elapsed();
    wait_for(Duration::from_secs(15), "ModelServer status 3/3", || {
        let servers = servers.clone();
        async move {
            Ok(server_counts(&servers)
                .await?
                .filter(|c| c.0 == 3 && c.1 == 3))
        }
    })
    .await
    .unwrap();

    // Scale down: a deleted pod stops receiving traffic as soon as it is terminating.
    pods.delete("llama-0", &DeleteParams::default())
        .await
        .unwrap();
    let t = Instant::now();
    wait_for(Duration::from_secs(15), "llama-0 removed", || async move {
        Ok((router_endpoints(admin) == ["llama-1", "llama-2"]).then_some(()))
    })
    .await
    .unwrap();
    let down = t.elapsed();
    eprintln!("scale-up visible after {up:?}, scale-down after {down:?}");
    assert!(
        up < Duration::from_secs(5) && down < Duration::from_secs(5),
        "{up:?} {down:?}"
    );
    for _ in 0..10 {
        let (status, body) = http(public, "POST", "/v1/chat/completions", Some(&chat()));
        assert_eq!(status, 200, "{body}");
    }
    wait_for(
        Duration::from_secs(15),
        "ModelServer status 2/2 after delete",
        || {
            let servers = servers.clone();
            async move {
                Ok(server_counts(&servers)
                    .await?
                    .filter(|c| c.0 == 2 && c.1 == 2))
            }
        },
    )
    .await
    .unwrap();
}

/// A Secret the router reads API keys from (when `labelled`).
fn key_secret(name: &str, labelled: bool, data: Value) -> Value {
    let labels = if labelled {
        json!({"router.muster.dev/api-key": "true"})
    } else {
        json!({})
    };
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "stringData": data
    })
}

#[tokio::test]
async fn api_keys_come_from_labelled_secrets_and_follow_their_edits() {
    let ns = TestNamespace::new("router-keys").await;
    let pool = ns.name.clone();
    let node = format!("{pool}-n0");
    let mut nodes = TestNodes::new(ns.client.clone());
    nodes.add(&node, 8, &pool, &[]).await.unwrap();
    let (_sim, _port) = llama_backend(&ns).await;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("llama-0", &node, &pool))
        .await
        .unwrap();
    for secret in [
        key_secret(
            "alice",
            true,
            json!({"key": "sk-alice", "tenant": "team-a", "models": "llama"}),
        ),
        key_secret("bob", true, json!({"key": "sk-bob", "models": "qwen"})),
        key_secret("stray", false, json!({"key": "sk-stray"})),
    ] {
        ns.create(&secret).await.expect("create Secret");
    }

    let router = start_router(&ns, &["--api-key-secrets"]).await;
    let (public, admin) = (router.addrs[0], router.addrs[1]);
    wait_for_endpoints(admin, 1, Duration::from_secs(30)).await;
    let ask = move |key: Option<&str>| {
        http_as(public, key, "POST", "/v1/chat/completions", Some(&chat()))
    };

    // Ready means the keys are loaded: a good key works at once.
    let (status, body) = ask(Some("sk-alice"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = ask(None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Missing credentials"), "{body}");
    let (status, body) = ask(Some("sk-stray"));
    assert_eq!(
        (status, body.contains("invalid_api_key")),
        (401, true),
        "unlabelled Secret: {body}"
    );
    let (status, body) = ask(Some("sk-bob"));
    assert_eq!(status, 403, "a key for other models: {body}");

    // Rotating the key in the Secret: the new key works and the old one stops, within seconds.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(ns.client.clone(), &ns.name);
    secrets
        .patch(
            "alice",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"key": "sk-alice-2"}})),
        )
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "the rotated key", || async move {
        Ok((ask(Some("sk-alice-2")).0 == 200).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(ask(Some("sk-alice")).0, 401, "the old key still works");

    // Deleting the Secret revokes its key.
    secrets
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "the key revoked", || async move {
        Ok((ask(Some("sk-alice-2")).0 == 401).then_some(()))
    })
    .await
    .unwrap();
}
