//! Pooled upstream HTTP clients. One HTTP/1.1 client with keep-alive and a pool large enough
//! that concurrency never forces a new connection per request (Kthena's default transport kept
//! two idle connections per host), and one HTTP/2 (cleartext, prior knowledge) client that
//! multiplexes every request to an engine over one connection.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamProtocol;

/// The client type used for every upstream request.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Clients by upstream protocol; cheap to clone (shared pools).
#[derive(Clone, Debug)]
pub struct UpstreamClients {
    /// HTTP/1.1 keep-alive pool.
    pub http1: HttpClient,
    /// HTTP/2 cleartext.
    pub h2c: HttpClient,
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
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .build(connector(connect_timeout));
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(20))
            .http2_adaptive_window(true)
            .build(connector(connect_timeout));
        UpstreamClients { http1, h2c }
    }

    /// The client for a protocol.
    pub fn get(&self, protocol: UpstreamProtocol) -> &HttpClient {
        match protocol {
            UpstreamProtocol::Http1 => &self.http1,
            UpstreamProtocol::H2c => &self.h2c,
        }
    }
}
