//! Scrapes pods' Prometheus endpoints over plain HTTP/1.1.
//!
//! Every pod is scraped concurrently, each under its own timeout, so one slow or dead pod
//! delays nothing but its own reading.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::metrics_source::{sum_metric, Endpoint, MetricReading};

/// Largest exposition read from one pod; an engine's is a few tens of KiB.
const MAX_BODY: usize = 4 << 20;

/// GETs `http://addr{path}` and returns the body, failing after `timeout`.
pub async fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    with_timeout(timeout, fetch_inner(addr, &addr.to_string(), path)).await
}

/// GETs an `http://host[:port]/path?query` URL (the host is resolved first), failing after
/// `timeout`. Only plain HTTP: sources are in-cluster services.
pub async fn fetch_url(url: &str, timeout: Duration) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("URL {url:?}: only http:// is supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    // `[::1]` in a URI is `::1` to the resolver.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    with_timeout(timeout, async move {
        let addr = tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|e| format!("resolve {bare}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolve {bare}: no address"))?;
        fetch_inner(addr, &authority, &path).await
    })
    .await
}

async fn with_timeout(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<String, String>>,
) -> Result<String, String> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn fetch_inner(addr: SocketAddr, host: &str, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // The connection task ends when the response is read and `sender` is dropped.
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::ACCEPT, "text/plain")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".into())
}

/// Scrapes `path` on every endpoint concurrently and reads `metric` from each answer.
pub async fn read_metric(
    endpoints: &[Endpoint],
    path: &str,
    metric: &str,
    timeout: Duration,
) -> MetricReading {
    let answers = futures::future::join_all(
        endpoints
            .iter()
            .map(|e| async move { (e.pod.clone(), fetch(e.addr, path, timeout).await) }),
    )
    .await;
    let mut reading = MetricReading::default();
    for (pod, answer) in answers {
        match answer.and_then(|text| {
            sum_metric(&text, metric).ok_or_else(|| format!("no {metric} in its metrics"))
        }) {
            Ok(v) => {
                reading.values.insert(pod, v);
            }
            Err(e) => {
                reading.failures.insert(pod, e);
            }
        }
    }
    reading
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server on loopback answering `body` after `delay`.
    pub(crate) async fn serve(body: &'static str, delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_slow_pod_does_not_hold_up_the_others() {
        let fast = serve("m{a=\"1\"} 2\nm{a=\"2\"} 3\n", Duration::ZERO).await;
        let slow = serve("m 100\n", Duration::from_secs(5)).await;
        let other = serve("n 1\n", Duration::ZERO).await;
        // A closed port: bind, take the address, drop the listener.
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let eps: Vec<Endpoint> = [
            ("fast", fast),
            ("slow", slow),
            ("other", other),
            ("closed", closed),
        ]
        .into_iter()
        .map(|(p, addr)| Endpoint {
            pod: p.into(),
            addr,
        })
        .collect();
        let started = std::time::Instant::now();
        let r = read_metric(&eps, "/metrics", "m", Duration::from_millis(300)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "scrapes ran one after another"
        );
        assert_eq!(r.values.get("fast"), Some(&5.0));
        assert_eq!(r.values.len(), 1);
        assert!(r.failures["slow"].contains("no answer"), "{:?}", r.failures);
        assert!(r.failures["other"].contains("no m in"), "{:?}", r.failures);
        assert!(r.failures["closed"].contains("connect"), "{:?}", r.failures);
    }
}
