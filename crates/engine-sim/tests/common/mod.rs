//! Helpers shared by the integration tests: start the real binary on loopback, talk HTTP.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A running `muster-engine-sim` process, killed on drop.
pub struct Sim {
    child: Child,
    /// HTTP addresses from the `LISTENING` lines.
    pub addrs: Vec<SocketAddr>,
    /// KV-event endpoints from the `KV_EVENTS` lines.
    pub kv_endpoints: Vec<String>,
}

impl Sim {
    /// Starts the binary listening on an ephemeral loopback port plus `args`.
    pub fn start(args: &[&str]) -> Sim {
        let mut full: Vec<&str> = Vec::new();
        if !args.contains(&"--listen") {
            full.extend(["--listen", "127.0.0.1:0"]);
        }
        full.extend(args);
        Self::start_raw(&full)
    }

    /// Starts the binary with exactly `args`.
    pub fn start_raw(args: &[&str]) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_muster-engine-sim"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn muster-engine-sim");
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
        let n_listen = args.iter().filter(|a| **a == "--listen").count().max(1);
        let want_kv = args.contains(&"--kv-events-port");
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut kv_endpoints = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while addrs.len() < n_listen || (want_kv && kv_endpoints.len() < addrs.len()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("simulator printed its LISTENING lines in time");
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("LISTENING") => addrs.push(parts.next().unwrap().parse().unwrap()),
                Some("KV_EVENTS") => kv_endpoints.push(parts.nth(1).unwrap().to_string()),
                _ => {}
            }
            // A wildcard listener creates engines lazily, so it prints no KV_EVENTS line.
            if want_kv && addrs.iter().any(|a| a.ip().is_unspecified()) {
                break;
            }
        }
        Sim {
            child,
            addrs,
            kv_endpoints,
        }
    }

    /// The first HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole HTTP exchange.
pub struct Reply {
    pub status: u16,
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

/// Sends a request with an optional raw body; returns the full reply.
pub async fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    let (status, body) = muster_engine_sim::http_client::request(addr, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    Reply { status, body }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, None).await
}

pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    send(addr, "POST", path, Some(&body.to_string())).await
}

/// A streamed reply: each body chunk with its arrival time.
pub struct Streamed {
    pub status: u16,
    pub started: Instant,
    pub chunks: Vec<(Instant, Bytes)>,
    /// Set when the body ended with a transport error (e.g. the server dropped the connection).
    pub error: Option<String>,
}

impl Streamed {
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// Time until the first SSE event carrying generated text.
    pub fn ttft(&self) -> Duration {
        for (t, b) in &self.chunks {
            let s = String::from_utf8_lossy(b);
            if s.contains("\"text\":\"") && !s.contains("\"text\":\"\"") {
                return *t - self.started;
            }
        }
        panic!("no token in stream: {}", self.text());
    }
}

/// POSTs JSON and records when each body chunk arrives.
pub async fn post_streamed(addr: SocketAddr, path: &str, body: &Value) -> Streamed {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let started = Instant::now();
    let resp = sender.send_request(req).await.expect("response head");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut chunks = Vec::new();
    let mut error = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    chunks.push((Instant::now(), data));
                }
            }
            Some(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Streamed {
        status,
        started,
        chunks,
        error,
    }
}

/// Value of one Prometheus sample whose line starts with `prefix` (name plus labels).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

pub async fn metrics(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    r.text()
}

/// Deterministic English-like text of about `words` words (≈ one token per word), unique per
/// `seed` from the first word on.
pub fn words(seed: u64, words: usize) -> String {
    const VOCAB: &[&str] = &[
        "the", "model", "cache", "token", "request", "router", "engine", "prefix", "block",
        "batch", "latency", "queue", "memory", "system", "user", "answer", "question", "data",
        "time", "value", "result", "server", "cluster", "node", "stream", "chunk", "layer",
    ];
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = format!("Document {seed}:");
    for _ in 0..words {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(' ');
        out.push_str(VOCAB[(s >> 33) as usize % VOCAB.len()]);
    }
    out
}
