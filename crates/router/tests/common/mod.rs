//! Helpers for the router's integration tests: real `muster-engine-sim` and `muster-router`
//! processes on 127.0.0.1 ephemeral ports, and a small HTTP client.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The engine simulator binary. `cargo test --workspace` builds it (its package has
/// integration tests); when this package's tests run alone and it is missing, it is built
/// once. An existing binary is used as is: rebuilding it with this package's feature set would
/// relink it on every run.
pub fn engine_sim_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let bin = dir.join("muster-engine-sim");
        if !bin.exists() {
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "muster-engine-sim",
                    "--bin",
                    "muster-engine-sim",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build for muster-engine-sim");
            assert!(status.success(), "building muster-engine-sim failed");
        }
        assert!(bin.exists(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// Reads `PREFIX addr` lines from a child's stdout until every prefix has been seen.
fn read_addresses(child: &mut Child, prefixes: &[&str]) -> Vec<SocketAddr> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut found: Vec<Option<SocketAddr>> = vec![None; prefixes.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("process printed its addresses in time");
        let mut parts = line.split_whitespace();
        if let (Some(p), Some(a)) = (parts.next(), parts.next()) {
            if let Some(i) = prefixes.iter().position(|x| *x == p) {
                if found[i].is_none() {
                    found[i] = Some(a.parse().expect("address"));
                }
            }
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

/// A running engine simulator, killed on drop.
pub struct Sim {
    child: Option<Child>,
    /// Its HTTP address.
    pub addr: SocketAddr,
}

impl Sim {
    /// Starts one engine on an ephemeral loopback port.
    pub fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(engine_sim_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn muster-engine-sim");
        let addr = read_addresses(&mut child, &["LISTENING"])[0];
        Sim {
            child: Some(child),
            addr,
        }
    }

    /// SIGKILLs the process (connections reset, port refuses).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A scratch directory unique to this test process and call.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "muster-router-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A running router in standalone mode, killed on drop.
pub struct Router {
    child: Option<Child>,
    /// Public address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The configuration file it watches.
    pub config: PathBuf,
}

impl Router {
    /// Starts the router on `config_yaml` with extra flags; waits until it is ready.
    pub async fn start(config_yaml: &str, extra: &[&str]) -> Router {
        let config = scratch_dir().join("router.yaml");
        std::fs::write(&config, config_yaml).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_muster-router"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&config)
            .args(["--reload-interval", "100ms", "--metrics-interval", "100ms"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("ROUTER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn muster-router");
        let addrs = read_addresses(&mut child, &["LISTENING", "ADMIN"]);
        let router = Router {
            child: Some(child),
            addr: addrs[0],
            admin: addrs[1],
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(router.addr, "/readyz").await.status != 200 {
            assert!(Instant::now() < deadline, "router never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        router
    }

    /// Replaces the configuration file (atomically, as a ConfigMap update does).
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("swap config");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The router's Prometheus text.
    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.text()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(self.config.parent().expect("dir"));
    }
}

/// A standalone config with one route `model` → one server per `(server, model rewrite,
/// endpoints)`, and extra YAML appended to each server spec.
pub fn config(
    model: &str,
    servers: &[(&str, Option<&str>, Vec<SocketAddr>)],
    route_rules: &str,
    server_extra: &str,
) -> String {
    let mut y = String::from("modelServers:\n");
    for (name, rewrite, eps) in servers {
        y.push_str(&format!("- metadata: {{name: {name}}}\n  spec:\n    inferenceEngine: vLLM\n    workloadSelector: {{matchLabels: {{app: {name}}}}}\n    workloadPort: {{port: 8000}}\n"));
        if let Some(m) = rewrite {
            y.push_str(&format!("    model: {m}\n"));
        }
        for line in server_extra.lines().filter(|l| !l.trim().is_empty()) {
            y.push_str(&format!("    {line}\n"));
        }
        y.push_str("  endpoints:\n");
        if eps.is_empty() {
            y.push_str("  - {address: \"127.0.0.1:9\", ready: false}\n");
        }
        for (i, a) in eps.iter().enumerate() {
            y.push_str(&format!("  - {{address: \"{a}\", name: {name}-{i}}}\n"));
        }
    }
    y.push_str(&format!("modelRoutes:\n- metadata: {{name: {model}}}\n  spec:\n    modelName: {model}\n    rules:\n"));
    for line in route_rules.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("    {line}\n"));
    }
    y
}

/// A whole HTTP exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.unwrap_or_default())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .expect("response within 60 s")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
        .await
        .expect("body within 60 s")
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], None).await
}

pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    send(addr, "POST", path, &[], Some(Bytes::from(body.to_string()))).await
}

/// A streamed reply: body chunks in arrival order, and how the body ended.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub chunks: Vec<Bytes>,
    pub error: Option<String>,
}

impl Streamed {
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
    /// The `data:` payloads, in order.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string))
            .collect()
    }
}

/// POSTs JSON and collects the streamed body, calling `on_chunk` after each chunk (with its
/// index) so a test can act mid-stream. Fails the test if the body does not end in 30 s.
pub async fn post_streamed(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
    mut on_chunk: impl FnMut(usize),
) -> Streamed {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = sender.send_request(req).await.expect("response head");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut chunks = Vec::new();
    let mut error = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => panic!("stream did not end within 30 s (a hang); got so far: {chunks:?}"),
            Ok(None) => break,
            Ok(Some(Ok(f))) => {
                if let Ok(data) = f.into_data() {
                    chunks.push(data);
                    on_chunk(chunks.len());
                }
            }
            Ok(Some(Err(e))) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Streamed {
        status,
        headers,
        chunks,
        error,
    }
}

/// Sum of a Prometheus metric's samples whose line contains every one of `label_parts`.
pub fn metric_sum(text: &str, name: &str, label_parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| label_parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A chat request body.
pub fn chat(model: &str, content: &str, max_tokens: u32, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": stream,
    })
}

/// Removes what legitimately differs between two responses to the same request: ids and
/// timestamps, and `"usage": null` on stream chunks (present when the router asked the engine
/// for usage on the client's behalf; OpenAI clients read null and absent alike).
pub fn normalise(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("created");
        if o.get("usage") == Some(&Value::Null) {
            o.remove("usage");
        }
    }
    v
}
