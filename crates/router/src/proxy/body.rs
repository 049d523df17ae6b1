//! Response bodies: either a small body the router wrote itself, or the upstream body relayed
//! frame by frame while the request record watches it go by.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::pool::UpstreamBody;
use super::record::RequestRecord;
use super::sse::{usage_of_json, SseScanner};
use crate::endpoints::outlier::OutlierPolicy;
use crate::errors::error_json;

/// Error type of router bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest non-streaming response the router keeps a reference to for usage accounting.
const CAPTURE_LIMIT: usize = 4 << 20;

/// How the relay treats the upstream body.
pub enum RelayMode {
    /// Server-sent events: inspect, maybe strip the usage chunk.
    Sse(SseScanner),
    /// A JSON body: keep the frames (by reference) to read `usage` at the end.
    CaptureJson(Vec<Bytes>, usize),
    /// Anything else: pass through.
    Plain,
}

/// The upstream body in flight.
pub struct Relay {
    upstream: UpstreamBody,
    mode: RelayMode,
    record: RequestRecord,
    idle_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    outlier: OutlierPolicy,
    /// An SSE error event to send before ending the stream.
    closing_event: Option<Bytes>,
    finished: bool,
}

impl Relay {
    /// Relays `upstream`; `record` is finished when the body ends or is dropped.
    pub fn new(
        upstream: UpstreamBody,
        mode: RelayMode,
        record: RequestRecord,
        idle_timeout: Duration,
        outlier: OutlierPolicy,
    ) -> Self {
        Relay {
            upstream,
            mode,
            record,
            idle_timeout,
            idle: None,
            outlier,
            closing_event: None,
            finished: false,
        }
    }

    fn finish_ok(&mut self) {
        self.finished = true;
        self.record.completed = true;
        match &mut self.mode {
            RelayMode::Sse(s) => self.record.usage = s.usage,
            RelayMode::CaptureJson(frames, len) => {
                let usage = if frames.len() == 1 {
                    usage_of_json(&frames[0])
                } else if *len <= CAPTURE_LIMIT {
                    usage_of_json(&frames.concat())
                } else {
                    None
                };
                self.record.usage = usage;
                frames.clear();
            }
            RelayMode::Plain => {}
        }
    }

    /// The upstream failed after the response started: the client cannot get a retry, so it
    /// gets an explicit error (an SSE error event, or an aborted body) instead of a hang.
    fn fail(&mut self, message: String) -> Option<BoxError> {
        self.record.error = Some(message.clone());
        self.record.count_stream_error();
        if let Some(e) = self.record.held_endpoint() {
            e.endpoint().record_failure(Instant::now(), &self.outlier);
        }
        match &mut self.mode {
            RelayMode::Sse(s) => {
                let usage = s.usage;
                self.record.usage = usage;
                let json = error_json(&message, "server_error", None, "upstream_stream_error");
                self.closing_event = Some(Bytes::from(format!("data: {json}\n\n")));
                None
            }
            _ => {
                self.finished = true;
                Some(message.into())
            }
        }
    }
}

/// Body of every response the router sends.
pub enum RouterBody {
    /// A complete body.
    Full(Option<Bytes>),
    /// A relayed upstream body.
    Relay(Box<Relay>),
}

impl RouterBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        RouterBody::Full(Some(bytes.into()))
    }
}

impl Body for RouterBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RouterBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RouterBody::Relay(r) => r.poll_relay(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RouterBody::Full(b) => b.is_none(),
            RouterBody::Relay(r) => r.finished && r.closing_event.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RouterBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RouterBody::Full(None) => SizeHint::with_exact(0),
            RouterBody::Relay(r) => match r.mode {
                // Stripping may shorten the body, so no exact hint for SSE.
                RelayMode::Sse(_) => SizeHint::default(),
                _ => r.upstream.size_hint(),
            },
        }
    }
}

impl Relay {
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(ev) = self.closing_event.take() {
                self.finished = true;
                return Poll::Ready(Some(Ok(Frame::data(ev))));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.upstream).poll_frame(cx) {
                Poll::Pending => {
                    let deadline = tokio::time::Instant::now() + self.idle_timeout;
                    let idle = self
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if idle.as_mut().poll(cx).is_ready() {
                        let msg = format!(
                            "the engine sent nothing for {:?}; the response was cut",
                            self.idle_timeout
                        );
                        if let Some(e) = self.fail(msg) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        continue;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    if let RelayMode::Sse(s) = &mut self.mode {
                        if let Some(rest) = s.finish() {
                            self.finish_ok();
                            return Poll::Ready(Some(Ok(Frame::data(rest))));
                        }
                    }
                    self.finish_ok();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    let msg = format!("the engine connection failed mid-response: {e}");
                    if let Some(e) = self.fail(msg) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    continue;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(idle) = &mut self.idle {
                        idle.as_mut()
                            .reset(tokio::time::Instant::now() + self.idle_timeout);
                    }
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    let now = Instant::now();
                    let out = match &mut self.mode {
                        RelayMode::Sse(s) => {
                            let pushed = s.push(frame);
                            self.record.on_data(now, pushed.token_events);
                            pushed.forward
                        }
                        RelayMode::CaptureJson(frames, len) => {
                            self.record.on_data(now, 0);
                            *len += frame.len();
                            if *len <= CAPTURE_LIMIT {
                                frames.push(frame.clone());
                            }
                            Some(frame)
                        }
                        RelayMode::Plain => {
                            self.record.on_data(now, 0);
                            Some(frame)
                        }
                    };
                    // hyper stops polling a body once its declared length has been sent, so
                    // the end is detected here rather than by waiting for `None`.
                    let out = if self.upstream.is_end_stream() {
                        let rest = match &mut self.mode {
                            RelayMode::Sse(s) => s.finish(),
                            _ => None,
                        };
                        self.finish_ok();
                        match (out, rest) {
                            (Some(a), Some(b)) => Some(Bytes::from([a, b].concat())),
                            (a, b) => a.or(b),
                        }
                    } else {
                        out
                    };
                    if let Some(out) = out {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }
}
