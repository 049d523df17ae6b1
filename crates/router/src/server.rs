//! Listeners: the public OpenAI port (HTTP/1.1 and HTTP/2 cleartext) with graceful drain, and
//! the admin port (`/metrics`, health, `/debug/*`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::endpoints::EndpointReport;
use crate::proxy::body::RouterBody;
use crate::proxy::{handle, AppState};
use crate::scheduler::rendezvous;

/// How the public listener shuts down.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// After the signal, keep accepting (with readiness failing) this long, so load balancers
    /// notice before connections are refused.
    pub delay: Duration,
    /// Then wait at most this long for in-flight requests (streams included) to finish.
    pub timeout: Duration,
}

fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20));
    b
}

/// Binds `count` listeners on `addr` with `SO_REUSEPORT`, so each worker thread accepts on
/// its own socket and the kernel spreads connections (nginx's `reuseport` model). Port 0 picks
/// one ephemeral port that all of them share. Call inside a Tokio runtime; the listeners come
/// back as std sockets so each worker can register its own with its runtime.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        addr = listener.local_addr()?;
        out.push(listener.into_std()?);
    }
    Ok(out)
}

/// Serves the public port until `shutdown` resolves, then drains. Returns when every
/// connection has closed or the drain timeout passed.
pub async fn serve_public(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    drain: DrainOptions,
) {
    let builder = http_builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown, if deadline.is_none() => {
                state.start_draining();
                tracing::info!(delay = ?drain.delay, in_flight = state.in_flight(), "draining: readiness now fails");
                deadline = Some(Box::pin(tokio::time::sleep(drain.delay)));
            }
            _ = async { deadline.as_mut().expect("guarded").await }, if deadline.is_some() => break,
        }
    }
    drop(listener);
    tracing::info!(
        in_flight = state.in_flight(),
        "stopped accepting; waiting for in-flight requests"
    );
    match tokio::time::timeout(drain.timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            in_flight = state.in_flight(),
            "drain timeout; closing remaining connections"
        ),
    }
}

/// Serves the admin port forever.
pub async fn serve_admin(state: Arc<AppState>, listener: TcpListener) {
    let builder = http_builder();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(admin(&state, &req)) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<RouterBody> {
    let mut r = Response::new(RouterBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json<T: Serialize>(value: &T) -> Response<RouterBody> {
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(value).expect("debug output serialises"),
    )
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = bytes
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[derive(Serialize)]
struct ServerEndpoints {
    server: String,
    endpoints: Vec<EndpointReport>,
    /// PD servers: the prefill-only endpoints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prefill_endpoints: Vec<EndpointReport>,
}

#[derive(Serialize)]
struct SessionView {
    session: String,
    server: String,
    /// Where the rendezvous ranking puts the session now (load ignored): identical on every
    /// replica.
    preferred_endpoint: Option<String>,
    /// Where this replica last sent it (differs from `preferred_endpoint` only after a
    /// bounded-load spill, an ejection, or an endpoint change).
    last_endpoint: String,
}

fn admin(state: &AppState, req: &Request<Incoming>) -> Response<RouterBody> {
    let now = Instant::now();
    let stale_after = state.registry.scrape_config().stale_after;
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if state.is_ready() => respond(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        "/metrics" => {
            let table = state.table();
            let gauge = &state.metrics.endpoints;
            gauge.reset();
            for (key, server) in &table.servers {
                let key = key.to_string();
                let (mut ready, mut stale, mut ejected) = (0, 0, 0);
                for e in server.endpoints.iter().chain(&server.prefill) {
                    let v = e.view(now, stale_after);
                    ready += 1;
                    stale += i64::from(!v.engine_fresh);
                    ejected += i64::from(v.ejected);
                }
                gauge.with_label_values(&[&key, "ready"]).set(ready);
                gauge.with_label_values(&[&key, "stale_metrics"]).set(stale);
                gauge.with_label_values(&[&key, "ejected"]).set(ejected);
            }
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            )
        }
        "/debug/config" => json(&state.table().summary()),
        "/debug/endpoints" => {
            let table = state.table();
            let mut out: Vec<ServerEndpoints> = table
                .servers
                .iter()
                .map(|(k, s)| ServerEndpoints {
                    server: k.to_string(),
                    endpoints: s
                        .endpoints
                        .iter()
                        .map(|e| e.report(now, stale_after))
                        .collect(),
                    prefill_endpoints: s
                        .prefill
                        .iter()
                        .map(|e| e.report(now, stale_after))
                        .collect(),
                })
                .collect();
            out.sort_by(|a, b| a.server.cmp(&b.server));
            json(&out)
        }
        "/debug/sessions" => {
            let table = state.table();
            let q = query(req);
            let preferred = |server: &str, session: &str| -> Option<String> {
                let s = table
                    .servers
                    .iter()
                    .find(|(k, _)| k.to_string() == server)?
                    .1;
                let names: Vec<&str> = s.endpoints.iter().map(|e| &*e.name).collect();
                let order = rendezvous::ranking(session, &names);
                order.first().map(|&i| names[i].to_string())
            };
            if let (Some(server), Some(session)) = (q.get("server"), q.get("session")) {
                return json(&SessionView {
                    session: session.clone(),
                    server: server.clone(),
                    preferred_endpoint: preferred(server, session),
                    last_endpoint: String::new(),
                });
            }
            let rows: Vec<SessionView> = state
                .sessions
                .rows()
                .into_iter()
                .map(|r| SessionView {
                    preferred_endpoint: preferred(&r.server, &r.session),
                    session: r.session,
                    server: r.server,
                    last_endpoint: r.last_endpoint,
                })
                .collect();
            json(&rows)
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
