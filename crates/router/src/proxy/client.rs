//! Pooled upstream HTTP clients. HTTP/1.1 goes through [`Http1Pool`] (keep-alive, a pool large
//! enough that concurrency never forces a new connection per request — Kthena's default
//! transport kept two idle connections per host — and one pool per worker thread); HTTP/2
//! (cleartext, prior knowledge) through hyper-util's client, which multiplexes every request to
//! an engine over one connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::pool::{Http1Pool, PoolError, UpstreamBody};
use crate::config::UpstreamProtocol;

/// The HTTP/2 client.
type H2cClient = Client<HttpConnector, Full<Bytes>>;

/// The client for one upstream protocol; cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub enum UpstreamClient {
    /// HTTP/1.1 keep-alive pool.
    Http1(Http1Pool),
    /// HTTP/2 cleartext (boxed in an `Arc`: the client is large and cloned per request).
    H2c(Arc<H2cClient>),
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// From the HTTP/1.1 pool.
    #[error(transparent)]
    Http1(#[from] PoolError),
    /// From the HTTP/2 client.
    #[error(transparent)]
    H2c(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Whether no connection could be made (nothing reached the engine).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Http1(e) => matches!(e, PoolError::Connect { .. }),
            UpstreamError::H2c(e) => e.is_connect(),
        }
    }
}

impl UpstreamClient {
    /// Sends `req` (absolute URI) and returns the response head with its streaming body.
    pub async fn request(
        &self,
        req: Request<Bytes>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self {
            UpstreamClient::Http1(pool) => Ok(pool.request(req).await?),
            UpstreamClient::H2c(client) => Ok(client
                .request(req.map(Full::new))
                .await?
                .map(UpstreamBody::unpooled)),
        }
    }
}

/// Clients by upstream protocol; cheap to clone (shared pools).
#[derive(Clone, Debug)]
pub struct UpstreamClients {
    http1: UpstreamClient,
    h2c: UpstreamClient,
}

fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(connect_timeout));
    c.set_keepalive(Some(Duration::from_secs(30)));
    c
}

impl UpstreamClients {
    /// Builds both clients.
    pub fn new(connect_timeout: Duration, max_idle_per_host: usize) -> Self {
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(20))
            .http2_adaptive_window(true)
            .build(connector(connect_timeout));
        UpstreamClients {
            http1: UpstreamClient::Http1(Http1Pool::new(connect_timeout, max_idle_per_host)),
            h2c: UpstreamClient::H2c(Arc::new(h2c)),
        }
    }

    /// The client for a protocol.
    pub fn get(&self, protocol: UpstreamProtocol) -> &UpstreamClient {
        match protocol {
            UpstreamProtocol::Http1 => &self.http1,
            UpstreamProtocol::H2c => &self.h2c,
        }
    }
}
