//! HTTP/1.1 keep-alive load generation against loopback targets.
//!
//! Each worker owns one connection and sends requests one after another, as clients of an
//! OpenAI endpoint do. Latency is measured from just before a request is written to the last
//! body byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// What to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// Loopback address.
    pub addr: SocketAddr,
    /// Request path.
    pub path: String,
    /// JSON body.
    pub body: Bytes,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "benchmarks only talk to loopback, not {addr}"
    );
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A worker's connection, re-established after errors.
struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(target: Target) -> Self {
        Conn {
            target,
            sender: None,
        }
    }

    /// One request; returns its latency.
    async fn request(&mut self) -> anyhow::Result<Duration> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(connect(self.target.addr).await?);
        }
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await?;
        let req = Request::post(self.target.path.as_str())
            .header(hyper::header::HOST, "bench")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.target.body.clone()))?;
        let start = Instant::now();
        let result = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!("status {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(start.elapsed())
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// Result of a fixed-rate run.
#[derive(Debug, Clone, Default)]
pub struct RateRun {
    /// Latency of each successful request, ns.
    pub latencies_ns: Vec<u64>,
    /// Failed requests.
    pub errors: u64,
    /// First error message, if any.
    pub first_error: Option<String>,
    /// Requests that started more than 1 ms after their scheduled time (generator or target
    /// could not keep up).
    pub late: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Sends `rate` requests per second for `duration`, spread over `connections` workers.
pub async fn fixed_rate(
    target: &Target,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> RateRun {
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let period = Duration::from_secs_f64(connections as f64 / rate);
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let mut tasks = Vec::new();
    for w in 0..connections {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut out = RateRun::default();
            // Worker w sends requests w, w + c, w + 2c, … of the global schedule.
            let offset = Duration::from_secs_f64(w as f64 / rate);
            let mut i = 0u32;
            loop {
                let index = w + i as usize * connections;
                if index >= total {
                    break;
                }
                let due = start + offset + period * i;
                tokio::time::sleep_until(due).await;
                if tokio::time::Instant::now().saturating_duration_since(due)
                    > Duration::from_millis(1)
                {
                    out.late += 1;
                }
                match conn.request().await {
                    Ok(d) => out.latencies_ns.push(d.as_nanos() as u64),
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                i += 1;
            }
            out
        }));
    }
    let t0 = Instant::now();
    let mut all = RateRun::default();
    for t in tasks {
        let r = t.await.expect("worker");
        all.latencies_ns.extend(r.latencies_ns);
        all.errors += r.errors;
        all.late += r.late;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    all.elapsed = t0.elapsed();
    all
}

/// Result of a closed-loop run.
#[derive(Debug, Clone, Default)]
pub struct PeakRun {
    /// Successful requests.
    pub completed: u64,
    /// Failed requests.
    pub errors: u64,
    /// First error message, if any.
    pub first_error: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl PeakRun {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

/// `connections` workers send back to back for `duration`.
pub async fn closed_loop(target: &Target, duration: Duration, connections: usize) -> PeakRun {
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut out = PeakRun::default();
            while Instant::now() < deadline {
                match conn.request().await {
                    Ok(_) => out.completed += 1,
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            out
        }));
    }
    let mut all = PeakRun::default();
    for t in tasks {
        let r = t.await.expect("worker");
        all.completed += r.completed;
        all.errors += r.errors;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    all.elapsed = t0.elapsed();
    all
}
