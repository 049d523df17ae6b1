//! HTTP/1.1 keep-alive pool on hyper's connection API, one per worker thread.
//!
//! hyper-util's legacy client costs a request more than the proxying itself: it locks a pool
//! shared with every thread, keys it by scheme and authority, and for each response whose body
//! is still streaming boxes and spawns a task that waits for the connection to turn idle before
//! putting it back. Here a worker thread's idle connections sit in a map keyed by authority,
//! newest last (a steady load keeps reusing the same few warm connections); the request task
//! takes one out, and the response body puts it back when it has been read to the end. A body
//! dropped early (the client went away) or failed closes its connection instead, since hyper
//! cannot reuse a connection with an unread response on it.
//!
//! A request that a reused connection hands back unsent (the engine closed it while idle) is
//! sent again on a new connection; that is always safe, nothing reached the engine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, HOST};
use hyper::http::uri::Authority;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// The sending half of one upstream connection.
type Sender = SendRequest<Full<Bytes>>;

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
    idle: Mutex<HashMap<Authority, Vec<Idle>>>,
    connect_timeout: Duration,
    max_idle_per_host: usize,
}

struct Idle {
    sender: Sender,
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
    Http(#[from] hyper::Error),
}

impl Http1Pool {
    /// An empty pool keeping at most `max_idle_per_host` idle connections per authority.
    pub fn new(connect_timeout: Duration, max_idle_per_host: usize) -> Self {
        Http1Pool {
            shared: Arc::new(Shared {
                idle: Mutex::new(HashMap::new()),
                connect_timeout,
                max_idle_per_host,
            }),
        }
    }

    /// Sends `req` (an absolute URI) on an idle connection to its authority, or a new one,
    /// with the authority as its Host header.
    pub async fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or_else(|| PoolError::NoAuthority(req.uri().to_string()))?;
        // HTTP/1.1 to an origin server: the request line carries the path only.
        let origin = req
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        *req.uri_mut() = origin;
        // The engine is addressed by its endpoint authority, whatever Host the client sent.
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, v);
        }
        loop {
            let (mut sender, reused) = match self.checkout(&authority).await {
                Some(s) => (s, true),
                None => (self.connect(&authority).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let mut body = UpstreamBody {
                        inner: body,
                        lease: Some(Lease {
                            sender,
                            authority,
                            pool: self.shared.clone(),
                        }),
                    };
                    if body.inner.is_end_stream() {
                        body.release();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Handed back unsent by a connection the engine closed while it was idle.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    /// The newest idle connection to `authority` that is still open, once it is ready.
    async fn checkout(&self, authority: &Authority) -> Option<Sender> {
        loop {
            let mut idle = {
                let mut map = self.shared.idle.lock().expect("pool lock");
                let list = map.get_mut(authority)?;
                loop {
                    let entry = list.pop()?;
                    if !entry.sender.is_closed() && entry.since.elapsed() < IDLE_TIMEOUT {
                        break entry;
                    }
                }
            };
            // A body read to its end returns the connection a moment before hyper has
            // finished with the response; that is a wake-up away.
            if idle.sender.is_ready() || idle.sender.ready().await.is_ok() {
                return Some(idle.sender);
            }
        }
    }

    /// A new connection to `authority`, its I/O driven by a task on this thread's runtime.
    async fn connect(&self, authority: &Authority) -> Result<Sender, PoolError> {
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
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
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

/// A connection lent to one response.
struct Lease {
    sender: Sender,
    authority: Authority,
    pool: Arc<Shared>,
}

impl Lease {
    /// Puts the connection back as idle, dropping connections idle for too long on the way.
    fn give_back(self) {
        let now = Instant::now();
        let mut map = self.pool.idle.lock().expect("pool lock");
        let list = map.entry(self.authority).or_default();
        // Oldest first (connections are pushed and popped at the end), so the expired ones
        // are a prefix.
        let expired = list.partition_point(|e| now.duration_since(e.since) >= IDLE_TIMEOUT);
        list.drain(..expired);
        if list.len() < self.pool.max_idle_per_host {
            list.push(Idle {
                sender: self.sender,
                since: now,
            });
        }
    }
}

/// An upstream response body; when it came from the pool, reading it to the end returns its
/// connection.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.lease.is_some())
            .finish()
    }
}

impl UpstreamBody {
    /// A body that returns no connection (HTTP/2 streams share theirs).
    pub fn unpooled(inner: Incoming) -> Self {
        UpstreamBody { inner, lease: None }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            // A failed body leaves the connection unusable: dropping the lease closes it.
            Some(Err(_)) => this.lease = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
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

    fn get(addr: SocketAddr) -> Request<Full<Bytes>> {
        Request::get(format!("http://{addr}/v1/models"))
            .body(Full::new(Bytes::new()))
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
