//! Reading engine counters from their Prometheus `/metrics` text over HTTP.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// Sum of every series of the metric `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // `name{labels} value` or `name value`, not a longer name sharing the prefix.
            let value = if let Some(r) = rest.strip_prefix('{') {
                r.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// One engine's counters that the routing benchmark compares before and after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EngineCounters {
    /// `vllm:prefix_cache_queries_total`: prompt tokens looked up.
    pub prefix_queries: f64,
    /// `vllm:prefix_cache_hits_total`: prompt tokens found cached.
    pub prefix_hits: f64,
    /// `vllm:request_success_total`, all finish reasons.
    pub requests: f64,
    /// `vllm:num_preemptions_total`.
    pub preemptions: f64,
}

impl EngineCounters {
    /// Parses the vLLM-named counters.
    pub fn parse(text: &str) -> EngineCounters {
        EngineCounters {
            prefix_queries: metric_sum(text, "vllm:prefix_cache_queries_total"),
            prefix_hits: metric_sum(text, "vllm:prefix_cache_hits_total"),
            requests: metric_sum(text, "vllm:request_success_total"),
            preemptions: metric_sum(text, "vllm:num_preemptions_total"),
        }
    }

    /// `self − before`.
    pub fn since(&self, before: &EngineCounters) -> EngineCounters {
        EngineCounters {
            prefix_queries: self.prefix_queries - before.prefix_queries,
            prefix_hits: self.prefix_hits - before.prefix_hits,
            requests: self.requests - before.requests,
            preemptions: self.preemptions - before.preemptions,
        }
    }
}

/// `GET path` on a loopback address; the body as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    anyhow::ensure!(addr.ip().is_loopback(), "loopback only, not {addr}");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header(hyper::header::HOST, "bench")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("GET {addr}{path}: status {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Reads one engine's counters.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<EngineCounters> {
    Ok(EngineCounters::parse(&http_get(addr, "/metrics").await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_and_ignores_longer_names_and_comments() {
        let text = "# HELP vllm:prefix_cache_hits_total x\n\
            vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 120\n\
            vllm:prefix_cache_hits_total_extra 5\n\
            vllm:request_success_total{finished_reason=\"length\"} 3\n\
            vllm:request_success_total{finished_reason=\"stop\"} 2\n\
            vllm:prefix_cache_queries_total 200\n";
        let c = EngineCounters::parse(text);
        assert_eq!(c.prefix_hits, 120.0);
        assert_eq!(c.prefix_queries, 200.0);
        assert_eq!(c.requests, 5.0);
        let d = c.since(&EngineCounters {
            prefix_hits: 20.0,
            ..EngineCounters::default()
        });
        assert_eq!(d.prefix_hits, 100.0);
    }
}
