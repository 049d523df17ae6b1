//! The prefill leg of a disaggregated request, and the bodies of both legs.
//!
//! * **NIXL** (vLLM): the prefill leg is the request with `max_tokens: 1`, no streaming and
//!   `kv_transfer_params: {do_remote_decode: true}`; its JSON answer carries the
//!   `kv_transfer_params` the decoder needs (remote engine, block ids, host, port), which are
//!   copied verbatim into the decode leg.
//! * **HTTP** (LMCache and similar): the same prefill leg without `kv_transfer_params`; the
//!   engines share KV through their store, so the decode leg is the original request.
//! * **Bootstrap** (SGLang): both legs carry `bootstrap_host` (the prefill pod),
//!   `bootstrap_port` and a random `bootstrap_room`; they are sent at once, because the decoder
//!   pulls the KV from the prefill engine's bootstrap server while the prefill runs.
//!
//! The client sees only the decode leg's response; the prefill answer is read and dropped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use serde_json::{Map, Value};

use super::client::UpstreamClient;
use crate::config::pd::{BootstrapPort, PdConnector};
use crate::endpoints::EndpointState;

/// SGLang bootstrap coordinates shared by both legs.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// The prefill pod's IP.
    pub host: String,
    /// Its bootstrap port.
    pub port: u16,
    /// The room both legs meet in.
    pub room: u64,
}

impl Bootstrap {
    /// Coordinates for a prefill endpoint, with a fresh room (a non-negative int63, as SGLang).
    pub fn for_prefill(prefill: SocketAddr, port: BootstrapPort, random: u64) -> Self {
        Bootstrap {
            host: prefill.ip().to_string(),
            port: match port {
                BootstrapPort::Port(p) => p,
                BootstrapPort::WorkloadPort => prefill.port(),
            },
            room: random & (i64::MAX as u64),
        }
    }

    fn insert(&self, body: &mut Map<String, Value>) {
        body.insert("bootstrap_host".into(), Value::String(self.host.clone()));
        body.insert("bootstrap_port".into(), Value::from(self.port));
        body.insert("bootstrap_room".into(), Value::from(self.room));
    }
}

fn to_bytes(body: &Map<String, Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(body).expect("a JSON map always serialises"))
}

/// The prefill leg: one output token, not streamed, marked for the connector.
pub fn prefill_body(
    base: &Map<String, Value>,
    connector: PdConnector,
    bootstrap: Option<&Bootstrap>,
) -> Bytes {
    let mut body = base.clone();
    body.insert("max_tokens".into(), Value::from(1));
    if body.contains_key("max_completion_tokens") {
        body.insert("max_completion_tokens".into(), Value::from(1));
    }
    body.insert("stream".into(), Value::Bool(false));
    body.remove("stream_options");
    match connector {
        PdConnector::Nixl => {
            let mut params = Map::new();
            params.insert("do_remote_decode".into(), Value::Bool(true));
            params.insert("do_remote_prefill".into(), Value::Bool(false));
            body.insert("kv_transfer_params".into(), Value::Object(params));
        }
        PdConnector::Bootstrap => {
            if let Some(b) = bootstrap {
                b.insert(&mut body);
            }
        }
        PdConnector::Http => {}
    }
    to_bytes(&body)
}

/// The decode leg: the client's request plus what the connector hands over.
pub fn decode_body(
    base: &Map<String, Value>,
    kv_transfer_params: Option<Value>,
    bootstrap: Option<&Bootstrap>,
) -> Bytes {
    let mut body = base.clone();
    if let Some(params) = kv_transfer_params {
        body.insert("kv_transfer_params".into(), params);
    }
    if let Some(b) = bootstrap {
        b.insert(&mut body);
    }
    to_bytes(&body)
}

/// Largest prefill answer read (it is one token plus metadata).
const PREFILL_RESPONSE_LIMIT: usize = 1 << 20;

/// Why a prefill leg did not hand over.
#[derive(Debug)]
pub enum PrefillFailure {
    /// Worth another pair: connect error, reset, 5xx, 429, or a timeout.
    Retriable {
        /// Metric label.
        outcome: &'static str,
        /// For the client's error message.
        detail: String,
    },
    /// The engine refused the request itself (4xx): the client gets that answer.
    Refused {
        /// Engine status.
        status: StatusCode,
        /// Engine body (an OpenAI-style error).
        body: Bytes,
    },
    /// A 2xx answer without `kv_transfer_params` (NIXL): the engine is misconfigured.
    BadResponse(String),
}

impl PrefillFailure {
    /// Metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            PrefillFailure::Retriable { outcome, .. } => outcome,
            PrefillFailure::Refused { .. } => "status_4xx",
            PrefillFailure::BadResponse(_) => "bad_response",
        }
    }
}

/// One prefill request, ready to send.
pub struct PrefillLeg {
    /// The pooled client for the server's upstream protocol.
    pub client: UpstreamClient,
    /// The prefill endpoint.
    pub endpoint: std::sync::Arc<EndpointState>,
    /// The client's path (the legs go to the same API).
    pub path: hyper::http::uri::PathAndQuery,
    /// Upstream headers (content length is set here).
    pub headers: HeaderMap,
    /// [`prefill_body`].
    pub body: Bytes,
    /// Per-try timeout, for the whole leg.
    pub timeout: Duration,
}

impl PrefillLeg {
    /// Sends the leg and reads its whole answer. NIXL: returns the `kv_transfer_params` for
    /// the decoder; other connectors: `None`.
    pub async fn run(&self, connector: PdConnector) -> Result<Option<Value>, PrefillFailure> {
        let endpoint = &self.endpoint;
        let retriable = |outcome: &'static str, detail: String| PrefillFailure::Retriable {
            outcome,
            detail: format!("prefill {}: {detail}", endpoint.name),
        };
        let mut uri = hyper::http::uri::Parts::default();
        uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(self.path.clone());
        let uri = Uri::from_parts(uri).map_err(|e| PrefillFailure::BadResponse(e.to_string()))?;
        let mut req = Request::new(self.body.clone());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let mut h = self.headers.clone();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        *req.headers_mut() = h;

        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let outcome = if e.is_connect() {
                    "connect_error"
                } else {
                    "reset"
                };
                retriable(outcome, e.to_string())
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), PREFILL_RESPONSE_LIMIT)
                .collect()
                .await
                .map_err(|e| retriable("reset", format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, PrefillFailure>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| retriable("timeout", format!("no answer within {:?}", self.timeout)))??;
        if status.is_server_error() {
            return Err(retriable("status_5xx", format!("answered {status}")));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(retriable("status_429", format!("answered {status}")));
        }
        if !status.is_success() {
            return Err(PrefillFailure::Refused { status, body });
        }
        if connector != PdConnector::Nixl {
            return Ok(None);
        }
        let params = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|mut v| v.get_mut("kv_transfer_params").map(Value::take))
            .filter(Value::is_object)
            .ok_or_else(|| {
                PrefillFailure::BadResponse(format!(
                    "prefill {} answered without kv_transfer_params; is it a NIXL kv_producer?",
                    endpoint.name
                ))
            })?;
        Ok(Some(params))
    }

    /// Runs a bootstrap leg to its end in the background, holding `held` (its decoder's
    /// prefill slot, its in-flight count) until then; `done` gets the outcome, the duration and
    /// whether the leg failed (for outlier accounting). The returned handle aborts the leg when
    /// dropped, and tells the caller about a failure while it still waits for the decoder.
    pub fn spawn_bootstrap<H: Send + 'static>(
        self,
        held: H,
        done: impl FnOnce(&'static str, Duration, bool) + Send + 'static,
    ) -> BootstrapTask {
        let (report, failed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let result = self.run(PdConnector::Bootstrap).await;
            drop(held);
            match result {
                Ok(_) => {
                    self.endpoint.record_success();
                    done("ok", start.elapsed(), false);
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.endpoint.name, error = ?e, "bootstrap prefill leg failed");
                    done(e.outcome(), start.elapsed(), true);
                    // Nobody listens once the decoder has answered; that is fine.
                    let _ = report.send(e);
                }
            }
        });
        BootstrapTask {
            task: Some(task),
            failed,
        }
    }
}

/// A bootstrap prefill leg running beside its decode leg.
pub struct BootstrapTask {
    task: Option<tokio::task::JoinHandle<()>>,
    failed: tokio::sync::oneshot::Receiver<PrefillFailure>,
}

impl BootstrapTask {
    /// Resolves when the leg fails; never resolves if it succeeds. The decoder waits for the
    /// KV of a failed leg until its own bootstrap timeout, so the caller races this against
    /// the decoder's answer and fails the pair over at once. Await it at most once.
    pub async fn failure(&mut self) -> PrefillFailure {
        match (&mut self.failed).await {
            Ok(failure) => failure,
            Err(_) => std::future::pending().await,
        }
    }

    /// Lets the leg run to its end without this handle (the decoder answered).
    pub fn detach(mut self) {
        self.task.take();
    }
}

impl Drop for BootstrapTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Map<String, Value> {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true,
               "stream_options": {"include_usage": true}, "max_tokens": 64})
        .as_object()
        .unwrap()
        .clone()
    }

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn nixl_legs_carry_the_handshake() {
        let p = parse(&prefill_body(&base(), PdConnector::Nixl, None));
        assert_eq!(p["max_tokens"], 1);
        assert_eq!(p["stream"], false);
        assert!(p.get("stream_options").is_none());
        assert_eq!(p["kv_transfer_params"]["do_remote_decode"], true);
        assert_eq!(p["messages"], base()["messages"]);

        let params = json!({"do_remote_prefill": true, "remote_engine_id": "e1", "remote_block_ids": [1, 2]});
        let d = parse(&decode_body(&base(), Some(params.clone()), None));
        assert_eq!(d["kv_transfer_params"], params);
        assert_eq!(
            d["max_tokens"], 64,
            "the decode leg keeps the client's budget"
        );
        assert_eq!(d["stream"], true);
    }

    #[test]
    fn bootstrap_legs_share_one_room_and_the_prefill_host() {
        let addr: SocketAddr = "127.0.0.7:30000".parse().unwrap();
        let b = Bootstrap::for_prefill(addr, BootstrapPort::Port(8998), u64::MAX);
        assert_eq!((b.host.as_str(), b.port), ("127.0.0.7", 8998));
        assert_eq!(b.room, i64::MAX as u64, "rooms are non-negative int63");
        assert_eq!(
            Bootstrap::for_prefill(addr, BootstrapPort::WorkloadPort, 5).port,
            30000
        );
        let p = parse(&prefill_body(&base(), PdConnector::Bootstrap, Some(&b)));
        let d = parse(&decode_body(&base(), None, Some(&b)));
        for k in ["bootstrap_host", "bootstrap_port", "bootstrap_room"] {
            assert_eq!(p[k], d[k], "{k}");
        }
        assert!(p.get("kv_transfer_params").is_none());
        let max_completion = {
            let mut m = base();
            m.insert("max_completion_tokens".into(), json!(99));
            parse(&prefill_body(&m, PdConnector::Http, None))
        };
        assert_eq!(max_completion["max_completion_tokens"], 1);
        assert!(max_completion.get("bootstrap_room").is_none());
    }
}
