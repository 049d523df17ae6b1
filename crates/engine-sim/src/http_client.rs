//! A minimal HTTP/1.1 GET used for PD peer handshakes (and by the tests).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// Sends `GET path` to `addr` on a fresh connection; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes), String> {
    request(addr, "GET", path, None).await
}

/// Sends one request on a fresh connection; returns status and the whole body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    let resp = match json_body {
        Some(b) => {
            let req = builder
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(Bytes::from(b.to_string())).boxed())
                .map_err(|e| e.to_string())?;
            sender.send_request(req).await
        }
        None => {
            let req = builder
                .body(
                    Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed(),
                )
                .map_err(|e| e.to_string())?;
            sender.send_request(req).await
        }
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
