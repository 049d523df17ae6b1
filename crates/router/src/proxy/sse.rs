//! Server-sent-event relay: upstream bytes go to the client as they arrive, unchanged, except
//! that an event the router must hide (the usage chunk it asked for on the client's behalf) is
//! cut out. Events are only *read* — for usage, the first token and token gaps — never
//! re-serialised.
//!
//! An incomplete trailing event is held until its terminator arrives: an SSE client cannot act
//! on half an event anyway, and holding it is what lets the router drop a whole event.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Token counts an engine reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct ChunkProbe<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceProbe<'a>>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaProbe<'a>>,
}

#[derive(Deserialize)]
struct DeltaProbe<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

/// Reads the usage of a whole (non-streaming) JSON response.
pub fn usage_of_json(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Probe>(body).ok()?.usage
}

/// What one pushed frame produced.
#[derive(Debug, Default, PartialEq)]
pub struct Pushed {
    /// Bytes to send to the client now.
    pub forward: Option<Bytes>,
    /// Events in the frame that carried generated tokens.
    pub token_events: u32,
}

/// The relay's state for one response.
#[derive(Debug)]
pub struct SseScanner {
    pending: BytesMut,
    strip_usage_chunk: bool,
    /// Usage from the engine's usage chunk, if seen.
    pub usage: Option<Usage>,
    /// `data: [DONE]` seen.
    pub done: bool,
    /// An event carried an `error` object.
    pub upstream_error_event: bool,
}

/// Length of the first complete event in `data` including its blank-line terminator.
fn event_end(data: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = data[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match data.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if data.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

impl SseScanner {
    /// A relay; `strip_usage_chunk` hides the final usage-only event (the router asked for
    /// it, the client did not).
    pub fn new(strip_usage_chunk: bool) -> Self {
        SseScanner {
            pending: BytesMut::new(),
            strip_usage_chunk,
            usage: None,
            done: false,
            upstream_error_event: false,
        }
    }

    /// Inspects one event; returns (keep it, it carried tokens).
    fn inspect(&mut self, event: &[u8]) -> (bool, bool) {
        let mut payload: Option<&[u8]> = None;
        for line in event.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(rest) = line.strip_prefix(b"data:") {
                // Multi-line data is rare for JSON chunks; the first line is enough to probe.
                if payload.is_none() {
                    payload = Some(rest.strip_prefix(b" ").unwrap_or(rest));
                }
            }
        }
        let Some(payload) = payload else {
            return (true, false);
        };
        if payload == b"[DONE]" {
            self.done = true;
            return (true, false);
        }
        let Ok(probe) = serde_json::from_slice::<ChunkProbe<'_>>(payload) else {
            return (true, false);
        };
        if probe.error.is_some() {
            self.upstream_error_event = true;
        }
        let choices = probe.choices.unwrap_or_default();
        let tokens = choices.iter().any(|c| {
            c.text.as_deref().is_some_and(|t| !t.is_empty())
                || c.delta.as_ref().is_some_and(|d| {
                    d.content.as_deref().is_some_and(|t| !t.is_empty())
                        || d.reasoning_content
                            .as_deref()
                            .is_some_and(|t| !t.is_empty())
                        || d.tool_calls.is_some()
                })
        });
        if let Some(u) = probe.usage {
            self.usage = Some(u);
            if self.strip_usage_chunk && choices.is_empty() {
                return (false, false);
            }
        }
        (true, tokens)
    }

    /// Takes one upstream frame.
    pub fn push(&mut self, frame: Bytes) -> Pushed {
        let data = if self.pending.is_empty() {
            frame
        } else {
            self.pending.extend_from_slice(&frame);
            self.pending.split().freeze()
        };
        let mut pos = 0;
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut dropped = false;
        let mut token_events = 0;
        while let Some(len) = event_end(&data[pos..]) {
            let (keep, tokens) = self.inspect(&data[pos..pos + len]);
            if keep {
                kept.push((pos, pos + len));
            } else {
                dropped = true;
            }
            token_events += u32::from(tokens);
            pos += len;
        }
        if pos < data.len() {
            self.pending.extend_from_slice(&data[pos..]);
        }
        let forward = if !dropped {
            (pos > 0).then(|| data.slice(..pos))
        } else {
            let mut out = BytesMut::new();
            for (a, b) in kept {
                out.extend_from_slice(&data[a..b]);
            }
            (!out.is_empty()).then(|| out.freeze())
        };
        Pushed {
            forward,
            token_events,
        }
    }

    /// At the end of the upstream body: whatever incomplete event is left, unchanged.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
    const TOK: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn whole_events_pass_through_as_the_same_bytes() {
        let mut s = SseScanner::new(false);
        let frame = Bytes::from(format!("{ROLE}{TOK}"));
        let out = s.push(frame.clone());
        assert_eq!(
            out.forward.as_ref().unwrap().as_ptr(),
            frame.as_ptr(),
            "zero-copy"
        );
        assert_eq!(out.token_events, 1);
        let out = s.push(Bytes::from(USAGE));
        assert_eq!(
            out.forward.unwrap(),
            USAGE,
            "kept when the client asked for usage"
        );
        assert_eq!(
            s.usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 2
            })
        );
        s.push(Bytes::from(DONE));
        assert!(s.done);
    }

    #[test]
    fn the_injected_usage_chunk_is_cut_out_but_still_counted() {
        let mut s = SseScanner::new(true);
        let out = s.push(Bytes::from(format!("{TOK}{USAGE}{DONE}")));
        assert_eq!(out.forward.unwrap(), format!("{TOK}{DONE}"));
        assert_eq!(s.usage.unwrap().completion_tokens, 2);
        // A token chunk that also carries usage (continuous usage stats) is never dropped.
        let mut s = SseScanner::new(true);
        let both = "data: {\"choices\":[{\"text\":\"x\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        assert_eq!(s.push(Bytes::from(both)).forward.unwrap(), both);
    }

    #[test]
    fn events_split_across_frames_are_reassembled_byte_for_byte() {
        let all = format!("{ROLE}{TOK}{USAGE}{DONE}");
        for cut in 1..all.len() {
            let mut s = SseScanner::new(false);
            let mut got = Vec::new();
            for part in [&all[..cut], &all[cut..]] {
                if let Some(b) = s.push(Bytes::copy_from_slice(part.as_bytes())).forward {
                    got.extend_from_slice(&b);
                }
            }
            if let Some(b) = s.finish() {
                got.extend_from_slice(&b);
            }
            assert_eq!(String::from_utf8(got).unwrap(), all, "cut at {cut}");
            assert!(s.done);
        }
    }

    #[test]
    fn crlf_terminators_and_error_events() {
        let mut s = SseScanner::new(false);
        let ev = "data: {\"error\":{\"message\":\"boom\"}}\r\n\r\n";
        assert_eq!(s.push(Bytes::from(ev)).forward.unwrap(), ev);
        assert!(s.upstream_error_event);
        assert_eq!(
            usage_of_json(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#)
                .unwrap()
                .completion_tokens,
            4
        );
        assert_eq!(usage_of_json(b"not json"), None);
    }
}
