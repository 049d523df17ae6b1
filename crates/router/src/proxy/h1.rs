//! A client-side HTTP/1.1 connection driven inline by the task that uses it.
//!
//! hyper's client connection runs as its own task: every request crosses a channel to it, its
//! response comes back over a oneshot, and the response body over another channel, each a
//! wake-up between two tasks. A proxy in front of a fast engine spends a visible share of its
//! CPU there. Here the request task writes the request, parses the response head with
//! `httparse` and reads the body itself; the connection is a plain socket and a read buffer,
//! lent to one response at a time by the pool.
//!
//! Scope: what an engine behind the router answers with. Request bodies are complete
//! (`Content-Length`); responses may be length-delimited, chunked (trailers are read and
//! dropped) or close-delimited; interim 1xx responses are skipped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Read size.
const READ_CHUNK: usize = 16 << 10;
/// Bodies up to this size are copied behind the head and sent with it in one write.
const COALESCE_BODY: usize = 64 << 10;

/// Why a request on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The engine closed the connection before a response head arrived.
    #[error("the connection closed before a response arrived")]
    ClosedBeforeResponse,
    /// The engine sent something that is not HTTP/1.x.
    #[error("invalid response: {0}")]
    Protocol(String),
}

impl H1Error {
    /// Whether the engine closed the connection without sending a byte of a response: on a
    /// connection reused from the pool, the engine closed it while idle, racing this request.
    pub fn closed_without_response(&self) -> bool {
        match self {
            H1Error::ClosedBeforeResponse => true,
            H1Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ),
            H1Error::Protocol(_) => false,
        }
    }
}

/// One open connection to an engine, between requests.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (1xx/204/304, or a HEAD request).
    Empty,
    /// Exactly this many more bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the engine closes the connection.
    Close,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

impl Conn {
    /// Wraps a connected socket.
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry another request: the engine has neither closed it
    /// nor sent anything unasked. Costs no system call unless the socket turned readable.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: either stale readiness from the last response (the read returns
            // WouldBlock and clears it) or a close or stray bytes, both of which retire it.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends one request and reads its response head; the body follows from the returned
    /// [`H1Body`], which owns the connection until the body has been read.
    ///
    /// `head` must have been built by [`encode_request`] for the same `method`.
    pub async fn send(
        mut self,
        method: &Method,
        head: &[u8],
        body: &Bytes,
    ) -> Result<Response<H1Body>, H1Error> {
        if body.len() <= COALESCE_BODY {
            let mut out = Vec::with_capacity(head.len() + body.len());
            out.extend_from_slice(head);
            out.extend_from_slice(body);
            self.io.write_all(&out).await?;
        } else {
            self.io.write_all(head).await?;
            self.io.write_all(body).await?;
        }
        loop {
            let (status, version, headers) = self.read_head().await?;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            let framing = framing(method, status, &headers)?;
            let keep_alive = framing != Framing::Close && keeps_alive(version, &headers);
            let mut response = Response::new(H1Body {
                conn: Some(self),
                framing,
                chunk: Chunk::Size,
                keep_alive,
                done: false,
            });
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            response.body_mut().advance_buffered()?;
            return Ok(response);
        }
    }

    async fn read_head(&mut self) -> Result<(StatusCode, Version, HeaderMap), H1Error> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf)? {
                    return Ok(head);
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(H1Error::Protocol(format!(
                        "response head over {MAX_HEAD_BYTES} bytes"
                    )));
                }
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    H1Error::ClosedBeforeResponse
                } else {
                    H1Error::Protocol("the connection closed inside the response head".into())
                });
            }
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        // Through `poll_read`, not `try_read_buf`: a read shorter than the buffer clears the
        // socket's readiness there, which saves a read that can only say `WouldBlock`, both
        // here on the next response and in `is_reusable` at checkout. `read_buf`'s future
        // holds nothing between polls, so one made per poll loses nothing.
        let read = self.io.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }
}

/// The request head: request line, `Host`, the given headers (minus the ones this client
/// owns) and the body's `Content-Length`.
pub fn encode_request(
    method: &Method,
    path_and_query: &str,
    authority: &str,
    headers: &HeaderMap,
    body_len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + headers.len() * 48);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // Framing and connection management are this client's; `expect` would make the
        // engine wait for a go-ahead that the complete body makes pointless.
        if matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection" | "expect"
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if body_len > 0 || !matches!(*method, Method::GET | Method::HEAD) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body_len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Parses a complete response head off the front of `buf`, or `None` when more is needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(StatusCode, Version, HeaderMap)>, H1Error> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Protocol(e.to_string())),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| H1Error::Protocol("bad status code".into()))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| H1Error::Protocol(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| H1Error::Protocol(format!("bad value of header {}", h.name)))?;
        headers.append(name, value);
    }
    buf.advance(len);
    Ok(Some((status, version, headers)))
}

fn framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<Framing, H1Error> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(last) = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|c| !c.is_empty())
    {
        // A transfer coding other than chunked last can only end with the connection.
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.to_str().unwrap_or("").split(',') {
            let n = part
                .trim()
                .parse::<u64>()
                .map_err(|_| H1Error::Protocol(format!("bad content-length {v:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Protocol(
                    "conflicting content-length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// A response body read straight off its connection. At the end the connection is handed to
/// [`H1Body::take_reusable`]'s caller; dropped before the end, it closes.
#[derive(Debug)]
pub struct H1Body {
    conn: Option<Conn>,
    framing: Framing,
    chunk: Chunk,
    keep_alive: bool,
    done: bool,
}

impl H1Body {
    /// Once the body has been read to the end: the connection, if it can carry another
    /// request (the engine kept it alive and sent nothing past this response).
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if !self.done || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// Whether every byte of the body has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Moves the chunked decoder over whatever framing is already buffered, so the end is
    /// seen as soon as its bytes are here; also ends empty bodies.
    fn advance_buffered(&mut self) -> Result<(), H1Error> {
        match self.framing {
            Framing::Empty | Framing::Length(0) => self.done = true,
            Framing::Chunked => {
                let Some(conn) = self.conn.as_mut() else {
                    return Ok(());
                };
                while !self.done {
                    match self.chunk {
                        Chunk::Data(_) => break,
                        Chunk::Size => {
                            let Some(line) = take_line(&mut conn.buf)? else {
                                break;
                            };
                            let size = chunk_size(&line)?;
                            self.chunk = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Chunk::DataEnd => {
                            let Some(line) = take_line(&mut conn.buf)? else {
                                break;
                            };
                            if !line.is_empty() {
                                return Err(H1Error::Protocol(
                                    "chunk data overran its size".into(),
                                ));
                            }
                            self.chunk = Chunk::Size;
                        }
                        Chunk::Trailers => {
                            let Some(line) = take_line(&mut conn.buf)? else {
                                break;
                            };
                            if line.is_empty() {
                                self.done = true;
                            }
                        }
                    }
                }
            }
            Framing::Length(_) | Framing::Close => {}
        }
        Ok(())
    }

    /// The next piece of body data already in the buffer, if any.
    fn take_buffered(&mut self) -> Option<Bytes> {
        let conn = self.conn.as_mut()?;
        if conn.buf.is_empty() {
            return None;
        }
        let want = match (self.framing, self.chunk) {
            (Framing::Length(n), _) => n,
            (Framing::Chunked, Chunk::Data(n)) => n,
            (Framing::Close, _) => u64::MAX,
            _ => return None,
        };
        let n = want.min(conn.buf.len() as u64) as usize;
        let data = conn.buf.split_to(n).freeze();
        let left = want - n as u64;
        match (&mut self.framing, &mut self.chunk) {
            (Framing::Length(rest), _) => {
                *rest = left;
                if left == 0 {
                    self.done = true;
                }
            }
            (Framing::Chunked, chunk) => {
                *chunk = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                }
            }
            _ => {}
        }
        Some(data)
    }
}

impl H1Body {
    /// Ends the body after an error; the connection closes.
    fn fail(&mut self, e: H1Error) -> H1Error {
        self.conn = None;
        self.done = true;
        self.keep_alive = false;
        e
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, H1Error> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) => {
            let line = buf.split_to(i);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > 4096 => Err(H1Error::Protocol("chunk line too long".into())),
        None => Ok(None),
    }
}

fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    // Chunk extensions (`;name=value`) are allowed and ignored.
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits).unwrap_or("").trim();
    u64::from_str_radix(digits, 16).map_err(|_| {
        H1Error::Protocol(format!(
            "bad chunk size {:?}",
            String::from_utf8_lossy(line)
        ))
    })
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            // Framing first: a read may have brought a chunk-size line before its data.
            if let Err(e) = this.advance_buffered() {
                return Poll::Ready(Some(Err(this.fail(e))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(data) = this.take_buffered() {
                // And again after the data, so a terminator already here ends the body now.
                if let Err(e) = this.advance_buffered() {
                    return Poll::Ready(Some(Err(this.fail(e))));
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.done = true;
                    this.conn = None;
                }
                Ok(0) => {
                    let e = H1Error::Protocol("the connection closed before the body ended".into());
                    return Poll::Ready(Some(Err(this.fail(e))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(this.fail(e.into())))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Empty => SizeHint::with_exact(0),
            _ if self.done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper::Request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::super::pool::{Http1Pool, UpstreamBody};

    /// What a scripted server does on each request of a connection.
    #[derive(Clone)]
    enum Step {
        /// Writes these bytes.
        Send(&'static [u8]),
        /// Waits until the test says go.
        Wait(Arc<Notify>),
        /// Closes the connection.
        Close,
        /// Closes the connection after this long.
        CloseAfter(Duration),
    }

    /// A loopback server that answers each request head it reads with `script` (the same
    /// script for every request), counting the connections it accepted.
    async fn scripted(script: Vec<Step>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                        seen.drain(..end + 4);
                        for step in &script {
                            match step {
                                Step::Send(b) => stream.write_all(b).await.unwrap(),
                                Step::Wait(n) => n.notified().await,
                                Step::Close => return,
                                Step::CloseAfter(d) => {
                                    tokio::time::sleep(*d).await;
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pool() -> Http1Pool {
        Http1Pool::new(Duration::from_secs(2), 16)
    }

    fn get(addr: SocketAddr) -> Request<bytes::Bytes> {
        Request::get(format!("http://{addr}/v1/x"))
            .body(bytes::Bytes::new())
            .unwrap()
    }

    async fn text(pool: &Http1Pool, addr: SocketAddr) -> Result<String, String> {
        let resp = pool.request(get(addr)).await.map_err(|e| e.to_string())?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8(body.to_bytes().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_and_their_connection_reused() {
        let (addr, accepted) = scripted(vec![Step::Send(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
        )])
        .await;
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(text(&pool, addr).await.unwrap(), "hello, world");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn streamed_chunks_arrive_before_the_body_ends() {
        let go = Arc::new(Notify::new());
        let (addr, _) = scripted(vec![
            Step::Send(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  transfer-encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n",
            ),
            Step::Wait(go.clone()),
            Step::Send(b"8\r\ndata: 2\n\r\n0\r\n\r\n"),
        ])
        .await;
        let pool = pool();
        let mut body: UpstreamBody = pool.request(get(addr)).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: 1\n");
        assert!(!hyper::body::Body::is_end_stream(&body));
        go.notify_one();
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"data: 2\n");
        // The terminator came with the last chunk: the end is known without another read.
        assert!(hyper::body::Body::is_end_stream(&body));
    }

    #[tokio::test]
    async fn a_body_without_length_ends_with_the_connection() {
        let (addr, accepted) = scripted(vec![
            Step::Send(b"HTTP/1.1 200 OK\r\n\r\nuntil "),
            Step::Send(b"close"),
            Step::Close,
        ])
        .await;
        let pool = pool();
        assert_eq!(text(&pool, addr).await.unwrap(), "until close");
        assert_eq!(text(&pool, addr).await.unwrap(), "until close");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (addr, _) = scripted(vec![Step::Send(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        )])
        .await;
        let resp = pool().request(get(addr)).await.unwrap();
        assert_eq!(resp.status(), 201);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_short_success() {
        let (addr, accepted) = scripted(vec![
            Step::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
            Step::Close,
        ])
        .await;
        let pool = pool();
        let e = text(&pool, addr).await.unwrap_err();
        assert!(e.contains("closed before the body ended"), "{e}");
        let _ = text(&pool, addr).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_engine_closed_while_idle_are_not_reused() {
        // Like uvicorn's keep-alive timeout: answer, then close the idle connection.
        let (addr, accepted) = scripted(vec![
            Step::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Step::CloseAfter(Duration::from_millis(20)),
        ])
        .await;
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(text(&pool, addr).await.unwrap(), "ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_close_racing_the_request_is_retried_on_a_new_connection() {
        // The engine closes right after each response, without saying so: the next request
        // on that connection races the close and is sent again on a fresh one.
        let (addr, accepted) = scripted(vec![
            Step::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Step::Close,
        ])
        .await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(text(&pool, addr).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn connection_close_and_stray_bytes_retire_the_connection() {
        let (addr, accepted) = scripted(vec![Step::Send(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na",
        )])
        .await;
        let pool = pool();
        assert_eq!(text(&pool, addr).await.unwrap(), "a");
        assert_eq!(text(&pool, addr).await.unwrap(), "a");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        let (addr, accepted) = scripted(vec![Step::Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nbEXTRA",
        )])
        .await;
        assert_eq!(text(&pool, addr).await.unwrap(), "b");
        assert_eq!(text(&pool, addr).await.unwrap(), "b");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn malformed_responses_are_protocol_errors() {
        let (addr, _) = scripted(vec![Step::Send(b"SMTP ready\r\n\r\n")]).await;
        let e = text(&pool(), addr).await.unwrap_err();
        assert!(e.contains("invalid response"), "{e}");
        let (addr, _) = scripted(vec![Step::Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
        )])
        .await;
        let e = text(&pool(), addr).await.unwrap_err();
        assert!(e.contains("conflicting content-length"), "{e}");
    }

    #[test]
    fn requests_carry_host_and_length_and_drop_framing_headers() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("host", "client.example".parse().unwrap());
        headers.insert("content-length", "999".parse().unwrap());
        headers.insert("expect", "100-continue".parse().unwrap());
        headers.insert("x-request-id", "r1".parse().unwrap());
        let head = super::encode_request(
            &hyper::Method::POST,
            "/v1/chat/completions?a=1",
            "127.0.0.1:8000",
            &headers,
            42,
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /v1/chat/completions?a=1 HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n\
             x-request-id: r1\r\ncontent-length: 42\r\n\r\n"
        );
    }
}
