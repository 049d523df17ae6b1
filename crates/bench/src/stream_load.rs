//! Open-loop streaming load with a concurrency cap, measured at the client, as SGLang's
//! `bench_serving` does it.
//!
//! Requests arrive at their scheduled offsets (a Poisson process); each then waits for one of
//! `max_concurrency` slots (FIFO) and is sent as a streaming `POST /v1/completions`. Its clock
//! starts when it is sent: TTFT is the time to the first SSE event carrying a choice, latency
//! the time to the end of the stream. The engine's final usage chunk
//! (`stream_options.include_usage`) gives prompt, cached and completion tokens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// One request to send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Offset from the start of the run at which it arrives.
    pub arrival: Duration,
    /// JSON body.
    pub body: Bytes,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

/// What the client saw of one request.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Sent at this offset from the start of the run.
    pub sent: Duration,
    /// Time to the first token, from sending.
    pub ttft: Option<Duration>,
    /// Time to the end of the stream, from sending.
    pub latency: Duration,
    /// Prompt tokens (engine usage).
    pub prompt_tokens: u64,
    /// Prompt tokens served from the engine's prefix cache (engine usage).
    pub cached_tokens: u64,
    /// Output tokens (engine usage).
    pub completion_tokens: u64,
    /// Failure, if any.
    pub error: Option<String>,
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Per request, in plan order.
    pub outcomes: Vec<Outcome>,
    /// From the start to the end of the last stream.
    pub elapsed: Duration,
}

type Sender = SendRequest<Full<Bytes>>;

/// Idle keep-alive connections to the target.
struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    async fn take(&self) -> anyhow::Result<Sender> {
        loop {
            let next = self.idle.lock().expect("pool").pop();
            match next {
                Some(s) if !s.is_closed() => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn give_back(&self, s: Sender) {
        if !s.is_closed() {
            self.idle.lock().expect("pool").push(s);
        }
    }
}

/// Whether an SSE `data:` payload carries a choice (a token), not only usage.
fn has_choice(event: &[u8]) -> bool {
    // Cheap check before any JSON parsing: the engine's token chunks have a non-empty
    // `choices` array; the usage chunk has `"choices":[]`.
    memfind(event, b"\"choices\":[{").is_some() || memfind(event, b"\"choices\": [{").is_some()
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads `usage` out of an SSE event's JSON.
fn usage_of(event: &[u8]) -> Option<(u64, u64, u64)> {
    let v: Value = serde_json::from_slice(event).ok()?;
    let u = v.get("usage")?;
    if u.is_null() {
        return None;
    }
    let n = |x: Option<&Value>| x.and_then(Value::as_u64).unwrap_or(0);
    Some((
        n(u.get("prompt_tokens")),
        n(u.pointer("/prompt_tokens_details/cached_tokens")),
        n(u.get("completion_tokens")),
    ))
}

async fn send_one(pool: &Pool, plan: &Planned, out: &mut Outcome) -> anyhow::Result<()> {
    let mut sender = pool.take().await?;
    sender.ready().await?;
    let mut req = Request::post("/v1/completions")
        .header(hyper::header::HOST, "bench")
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (k, v) in &plan.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(plan.body.clone()))?;
    let start = Instant::now();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body.collect().await?.to_bytes();
        bail!("status {status}: {}", String::from_utf8_lossy(&text));
    }
    // SSE events may span frames; keep the unfinished tail.
    let mut pending: Vec<u8> = Vec::new();
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = memfind(&pending, b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let Some(payload) = event.strip_prefix(b"data: ") else {
                continue;
            };
            let payload = &payload[..payload.len() - 2];
            if payload == b"[DONE]" {
                done = true;
            } else if memfind(payload, b"\"error\"").is_some() && !has_choice(payload) {
                bail!("stream error: {}", String::from_utf8_lossy(payload));
            } else {
                if out.ttft.is_none() && has_choice(payload) {
                    out.ttft = Some(start.elapsed());
                }
                if let Some((p, c, o)) = usage_of_if_present(payload) {
                    out.prompt_tokens = p;
                    out.cached_tokens = c;
                    out.completion_tokens = o;
                }
            }
        }
    }
    out.latency = start.elapsed();
    if !done {
        bail!("stream ended without [DONE]");
    }
    pool.give_back(sender);
    Ok(())
}

fn usage_of_if_present(payload: &[u8]) -> Option<(u64, u64, u64)> {
    // Only the final chunk has a usage object; skip parsing the token chunks.
    memfind(payload, b"\"usage\":{")
        .or_else(|| memfind(payload, b"\"usage\": {"))
        .and_then(|_| usage_of(payload))
}

/// How often a long run reports how far it has got (on stderr).
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Sends `plan` to `addr` with at most `max_concurrency` requests in flight. A run that lasts
/// longer than [`PROGRESS_EVERY`] prints a progress line to stderr at that interval.
pub async fn run(addr: SocketAddr, plan: Vec<Planned>, max_concurrency: usize) -> Run {
    assert!(addr.ip().is_loopback(), "benchmarks only talk to loopback");
    let pool = Arc::new(Pool {
        addr,
        idle: Mutex::new(Vec::new()),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(max_concurrency.max(1)));
    let t0 = tokio::time::Instant::now();
    let total = plan.len();
    let finished = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let finished = finished.clone();
        async move {
            let mut tick = tokio::time::interval_at(t0 + PROGRESS_EVERY, PROGRESS_EVERY);
            loop {
                tick.tick().await;
                let n = finished.load(Ordering::Relaxed);
                let secs = t0.elapsed().as_secs_f64();
                eprintln!(
                    "  … {n}/{total} requests done after {secs:.0} s ({:.1} req/s wall)",
                    n as f64 / secs
                );
            }
        }
    });
    let mut tasks = Vec::with_capacity(plan.len());
    for p in plan {
        tokio::time::sleep_until(t0 + p.arrival).await;
        let pool = pool.clone();
        let slots = slots.clone();
        let finished = finished.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore open");
            let mut out = Outcome {
                sent: t0.elapsed(),
                ..Outcome::default()
            };
            if let Err(e) = send_one(&pool, &p, &mut out).await {
                out.error = Some(format!("{e:#}"));
            }
            finished.fetch_add(1, Ordering::Relaxed);
            out
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or_else(|e| Outcome {
            error: Some(format!("task failed: {e}")),
            ..Outcome::default()
        }));
    }
    ticker.abort();
    Run {
        outcomes,
        elapsed: t0.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_payloads_are_classified() {
        let token = br#"{"id":"c","choices":[{"index":0,"text":" the","finish_reason":null}],"usage":null}"#;
        let usage = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        assert!(has_choice(token));
        assert!(!has_choice(usage));
        assert_eq!(usage_of_if_present(token), None);
        assert_eq!(usage_of_if_present(usage), Some((10, 8, 4)));
    }
}
