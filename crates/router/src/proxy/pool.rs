//! HTTP/1.1 keep-alive pool of [`h1`] connections, one per worker thread.
//!
//! hyper-util's legacy client costs a request more than the proxying itself: it locks a pool
//! shared with every thread, keys it by scheme and authority, and for each response whose body
//! is still streaming boxes and spawns a task that waits for the connection to turn idle before
//! putting it back. Here a worker thread's idle connections sit in a map keyed by authority,
//! newest last (a steady load keeps reusing the same few warm connections); the request task
//! takes one out, drives it itself (no connection task), and the response body puts it back
//! when it has been read to the end. A body dropped early (the client went away) or failed
//! closes its connection instead.
//!
//! An engine may close a connection while it sits idle (uvicorn, under vLLM, after 5 s). Such
//! connections are noticed at checkout, from the socket's readiness. A request that still
//! races the close, failing on a reused connection before any byte of a response came back,
//! is sent once more on a new connection: the engine closed the connection instead of reading
//! the request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::http::uri::Authority;
use hyper::{Request, Response};
use tokio::net::TcpSocket;

use super::body::BoxError;
use super::h1::{self, Conn, H1Body, H1Error};

/// How long a connection may sit idle in the pool before it is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle upstream connections by authority; cheap to clone (clones share the connections).
#[derive(Clone)]
pub struct Http1Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("connect_timeout", &self.shared.connect_timeout)
            .field("max_idle_per_host", &self.shared.max_idle_per_host)
            .finish()
    }
}

struct Shared {
    /// foldhash, not std's SipHash: `Authority` hashes byte by byte (it is case-insensitive),
    /// and with SipHash the two lookups per request cost more than the pool's own work. The
    /// keys are endpoint addresses from configuration, not client input.
    idle: Mutex<HashMap<Authority, Vec<Idle>, foldhash::fast::RandomState>>,
    connect_timeout: Duration,
    max_idle_per_host: usize,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened.
    #[error("connecting to {authority}: {message}")]
    Connect {
        /// Where to.
        authority: String,
        /// What went wrong.
        message: String,
    },
    /// The request URI names no host.
    #[error("the upstream URI {0} has no authority")]
    NoAuthority(String),
    /// The connection failed while sending the request or reading the response head.
    #[error(transparent)]
    Http(#[from] H1Error),
}

impl Http1Pool {
    /// An empty pool keeping at most `max_idle_per_host` idle connections per authority.
    pub fn new(connect_timeout: Duration, max_idle_per_host: usize) -> Self {
        Http1Pool {
            shared: Arc::new(Shared {
                idle: Mutex::new(HashMap::default()),
                connect_timeout,
                max_idle_per_host,
            }),
        }
    }

    /// Sends `req` (an absolute URI) on an idle connection to its authority, or a new one,
    /// with the authority as its Host header.
    pub async fn request(&self, req: Request<Bytes>) -> Result<Response<UpstreamBody>, PoolError> {
        let (parts, body) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .cloned()
            .ok_or_else(|| PoolError::NoAuthority(parts.uri.to_string()))?;
        // HTTP/1.1 to an origin server: the request line carries the path only, and the
        // engine is addressed by its endpoint authority, whatever Host the client sent.
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let head = h1::encode_request(
            &parts.method,
            path,
            authority.as_str(),
            &parts.headers,
            body.len(),
        );
        let (conn, reused) = match self.checkout(&authority) {
            Some(c) => (c, true),
            None => (self.connect(&authority).await?, false),
        };
        let resp = match conn.send(&parts.method, &head, &body).await {
            Err(e) if reused && e.closed_without_response() => {
                let conn = self.connect(&authority).await?;
                conn.send(&parts.method, &head, &body).await?
            }
            other => other?,
        };
        let (parts, body) = resp.into_parts();
        let mut body = UpstreamBody {
            inner: Inner::Pooled {
                body,
                pool: self.shared.clone(),
                authority,
            },
        };
        body.release_if_done();
        Ok(Response::from_parts(parts, body))
    }

    /// The newest idle connection to `authority` that is still open.
    fn checkout(&self, authority: &Authority) -> Option<Conn> {
        let mut map = self.shared.idle.lock().expect("pool lock");
        let list = map.get_mut(authority)?;
        loop {
            let mut entry = list.pop()?;
            if entry.since.elapsed() < IDLE_TIMEOUT && entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
    }

    /// A new connection to `authority`.
    async fn connect(&self, authority: &Authority) -> Result<Conn, PoolError> {
        let failed = |message: String| PoolError::Connect {
            authority: authority.to_string(),
            message,
        };
        let addr = resolve(authority).await.map_err(failed)?;
        let connect = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_nodelay(true)?;
            socket.set_keepalive(true)?;
            socket.connect(addr).await
        };
        let stream = tokio::time::timeout(self.shared.connect_timeout, connect)
            .await
            .map_err(|_| failed(format!("timed out after {:?}", self.shared.connect_timeout)))?
            .map_err(|e| failed(e.to_string()))?;
        Ok(Conn::new(stream))
    }
}

/// `authority` as a socket address: parsed when it is one (endpoints are pod IPs), else
/// looked up.
async fn resolve(authority: &Authority) -> Result<SocketAddr, String> {
    if let Ok(addr) = authority.as_str().parse::<SocketAddr>() {
        return Ok(addr);
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

impl Shared {
    /// Puts a connection back as idle, dropping connections idle for too long on the way.
    fn give_back(&self, authority: Authority, conn: Conn) {
        let now = Instant::now();
        let mut map = self.idle.lock().expect("pool lock");
        let list = map.entry(authority).or_default();
        // Oldest first (connections are pushed and popped at the end), so the expired ones
        // are a prefix.
        let expired = list.partition_point(|e| now.duration_since(e.since) >= IDLE_TIMEOUT);
        list.drain(..expired);
        if list.len() < self.max_idle_per_host {
            list.push(Idle { conn, since: now });
        }
    }
}

/// An upstream response body; when it came from the pool, reading it to the end returns its
/// connection.
pub struct UpstreamBody {
    inner: Inner,
}

enum Inner {
    /// On a pooled HTTP/1.1 connection.
    Pooled {
        body: H1Body,
        pool: Arc<Shared>,
        authority: Authority,
    },
    /// An HTTP/2 stream (its connection is shared, nothing to return).
    Stream(Incoming),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &matches!(self.inner, Inner::Pooled { .. }))
            .finish()
    }
}

impl UpstreamBody {
    /// A body that returns no connection (HTTP/2 streams share theirs).
    pub fn unpooled(inner: Incoming) -> Self {
        UpstreamBody {
            inner: Inner::Stream(inner),
        }
    }

    fn release_if_done(&mut self) {
        if let Inner::Pooled {
            body,
            pool,
            authority,
        } = &mut self.inner
        {
            if let Some(conn) = body.take_reusable() {
                pool.give_back(authority.clone(), conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match &mut this.inner {
            Inner::Pooled { body, .. } => {
                ready!(Pin::new(body).poll_frame(cx)).map(|f| f.map_err(BoxError::from))
            }
            Inner::Stream(s) => {
                ready!(Pin::new(s).poll_frame(cx)).map(|f| f.map_err(BoxError::from))
            }
        };
        if !matches!(frame, Some(Err(_))) {
            this.release_if_done();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Pooled { body, .. } => body.is_done(),
            Inner::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Pooled { body, .. } => body.size_hint(),
            Inner::Stream(s) => s.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 server on loopback answering every request with `body`, counting the
    /// connections it accepted; `keep_alive: false` closes each connection after one response.
    async fn server(body: &'static str, keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(body.as_bytes()),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn pool() -> Http1Pool {
        Http1Pool::new(Duration::from_secs(2), 16)
    }

    fn get(addr: SocketAddr) -> Request<Bytes> {
        Request::get(format!("http://{addr}/v1/models"))
            .body(Bytes::new())
            .unwrap()
    }

    async fn read(resp: Response<UpstreamBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = server("hello", true).await;
        let pool = pool();
        for _ in 0..50 {
            assert_eq!(read(pool.request(get(addr)).await.unwrap()).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_keep_them() {
        let (addr, accepted) = server("hello", true).await;
        let pool = pool();
        for _ in 0..5 {
            let responses: Vec<_> =
                futures::future::join_all((0..8).map(|_| pool.request(get(addr)))).await;
            for r in responses {
                assert_eq!(read(r.unwrap()).await, "hello");
            }
        }
        // Each wave of 8 reuses the connections the previous one returned.
        let n = accepted.load(Ordering::SeqCst);
        assert!((8..=16).contains(&n), "{n} connections for 5 waves of 8");
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_return_its_connection() {
        let (addr, accepted) = server("a body nobody reads", true).await;
        let pool = pool();
        let resp = pool.request(get(addr)).await.unwrap();
        drop(resp);
        assert_eq!(
            read(pool.request(get(addr)).await.unwrap()).await,
            "a body nobody reads"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_engine_closes_are_replaced() {
        let (addr, accepted) = server("once", false).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(read(pool.request(get(addr)).await.unwrap()).await, "once");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = pool();
        let e = pool.request(get(addr)).await.unwrap_err();
        assert!(matches!(e, PoolError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
