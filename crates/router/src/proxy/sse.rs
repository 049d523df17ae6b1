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

use super::json_scan::{skip_ws, string_end};

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

/// Reads the usage of a whole (non-streaming) JSON response: the token counts in its top-level
/// `usage` object (a count that is absent reads as 0; one that is not an unsigned integer, or a
/// `usage` that is not an object, gives `None`).
///
/// Two short structural scans instead of a parse: back from the end of the body to the
/// top-level `usage` key (OpenAI-style responses put it after the choices, so the generated
/// text is never walked), then forward through that object for the two counts. Parsing the
/// whole response with serde only to drop everything but this one field cost more than any
/// other step of proxying a small completion, and grows with the length of the output.
pub fn usage_of_json(body: &[u8]) -> Option<Usage> {
    let at = top_level_key_from_end(body, b"usage")?;
    let [prompt_tokens, completion_tokens] = object_counts(
        &body[skip_ws(body, at)..],
        [b"prompt_tokens", b"completion_tokens"],
    )?;
    Some(Usage {
        prompt_tokens,
        completion_tokens,
    })
}

/// In the object that makes up `json` (up to whitespace), the offset just past the `:` that
/// follows the top-level `key`, found scanning backwards from the end. Keys are compared as
/// raw bytes (an escaped spelling of the key is not recognised).
///
/// Backwards, outside strings, every quote closes a string; its opening quote is the first
/// earlier quote preceded by an even run of backslashes. Braces count the nesting; a string
/// in an object is a key when a colon follows it (in an array `,` or `]` does, so arrays need
/// no counting).
fn top_level_key_from_end(json: &[u8], key: &[u8]) -> Option<usize> {
    let mut i = json.len();
    while i > 0 && json[i - 1].is_ascii_whitespace() {
        i -= 1;
    }
    if i == 0 || json[i - 1] != b'}' {
        return None;
    }
    let mut depth = 0u32;
    while i > 0 {
        i -= 1;
        match json[i] {
            b'"' => {
                let open = opening_quote(json, i)?;
                if depth == 1 && &json[open + 1..i] == key {
                    let colon = skip_ws(json, i + 1);
                    if json.get(colon) == Some(&b':') {
                        return Some(colon + 1);
                    }
                }
                i = open;
            }
            b'}' => depth += 1,
            b'{' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    None
}

/// Index of the quote that opens the string closed by the quote at `close`.
fn opening_quote(json: &[u8], close: usize) -> Option<usize> {
    let mut j = close;
    loop {
        j = json[..j].iter().rposition(|&b| b == b'"')?;
        let backslashes = json[..j].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(j);
        }
    }
}

/// The unsigned integers at the top-level `keys` (at most 31) of the object `json` starts with:
/// 0 for a key that is absent, `None` when a value is not an unsigned integer or, unless every
/// key was found first, when `json` is not a complete object.
fn object_counts<const N: usize>(json: &[u8], keys: [&[u8]; N]) -> Option<[u64; N]> {
    if json.first() != Some(&b'{') {
        return None;
    }
    let mut counts = [0u64; N];
    let (mut found, all) = (0u32, (1u32 << N) - 1);
    let mut depth = 0u32;
    let mut i = 0;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => {
                let end = string_end(json, i + 1)?;
                let name = &json[i + 1..end];
                i = skip_ws(json, end + 1);
                if depth == 1 && json.get(i) == Some(&b':') {
                    if let Some(k) = keys.iter().position(|k| *k == name) {
                        i = skip_ws(json, i + 1);
                        counts[k] = unsigned(&json[i..])?;
                        found |= 1 << k;
                        if found == all {
                            return Some(counts);
                        }
                    }
                }
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(counts);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The unsigned integer `json` starts with, if it is one and is followed by a delimiter.
fn unsigned(json: &[u8]) -> Option<u64> {
    let digits = json.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0
        || !matches!(
            json.get(digits),
            Some(b',' | b'}' | b' ' | b'\t' | b'\r' | b'\n')
        )
    {
        return None;
    }
    json[..digits].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
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
    while let Some(off) = memchr::memchr(b'\n', &data[i..]) {
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
        // The first `data:` line (multi-line data is rare for JSON chunks; the first line is
        // enough to probe). Lines are found with memchr: this runs once per generated token.
        let mut payload: Option<&[u8]> = None;
        let mut start = 0;
        while start < event.len() {
            let end = memchr::memchr(b'\n', &event[start..]).map_or(event.len(), |o| start + o);
            let line = &event[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(rest) = line.strip_prefix(b"data:") {
                payload = Some(rest.strip_prefix(b" ").unwrap_or(rest));
                break;
            }
            start = end + 1;
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
    fn the_first_data_line_is_probed_after_other_fields() {
        let mut s = SseScanner::new(false);
        let ev = "id: 7\r\nevent: chunk\r\n: comment\r\ndata: {\"choices\":[{\"text\":\"hi\"}]}\r\ndata: ignored\r\n\r\n";
        let pushed = s.push(Bytes::from(ev));
        assert_eq!(pushed.forward.unwrap(), ev);
        assert_eq!(pushed.token_events, 1);
        // An event without data carries nothing, and a last line without a newline counts.
        let pushed = s.push(Bytes::from("event: ping\n\n"));
        assert_eq!(pushed.token_events, 0);
        assert_eq!(
            s.inspect(b"data: {\"choices\":[{\"text\":\"x\"}]}"),
            (true, true)
        );
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

    proptest::proptest! {
        /// Whatever the generated text and the fields around it, the scans read the same
        /// usage as a full serde parse of the response.
        #[test]
        fn usage_scans_agree_with_a_full_parse(
            text in ".*",
            key in "[a-z_\\\\\"]{0,8}",
            p in proptest::option::of(0u64..1_000_000),
            c in proptest::option::of(proptest::num::u64::ANY),
            nested in proptest::bool::ANY,
            usage_first in proptest::bool::ANY,
            pretty in proptest::bool::ANY,
        ) {
            let mut usage = serde_json::Map::new();
            if let Some(p) = p {
                usage.insert("prompt_tokens".into(), p.into());
            }
            usage.insert("prompt_tokens_details".into(), serde_json::json!({"cached_tokens": 1}));
            if let Some(c) = c {
                usage.insert("completion_tokens".into(), c.into());
            }
            let choice = if nested {
                serde_json::json!({"text": text, key.clone(): text, "usage": {"prompt_tokens": 7}})
            } else {
                serde_json::json!({"text": text, key.clone(): [text, "usage"]})
            };
            // Written by hand: serde_json's map would sort the keys, and the order matters here.
            let usage = ("usage".to_string(), serde_json::Value::Object(usage));
            let mut top = vec![
                ("id".to_string(), "cmpl-\"1\"".into()),
                ("choices".to_string(), serde_json::json!([choice])),
                (key, text.into()),
            ];
            if usage_first {
                top.insert(0, usage);
            } else {
                top.push(usage);
            }
            let sep = if pretty { " \n  " } else { "" };
            let fields: Vec<String> = top
                .iter()
                .map(|(k, v)| format!("{sep}{}:{sep}{v}", serde_json::Value::from(k.as_str())))
                .collect();
            let body = format!("{{{}{sep}}}{}", fields.join(","), if pretty { "\n" } else { "" });
            let body = body.into_bytes();
            #[derive(Deserialize)]
            struct Probe {
                usage: Option<Usage>,
            }
            let reference = serde_json::from_slice::<Probe>(&body).ok().and_then(|p| p.usage);
            proptest::prop_assert_eq!(usage_of_json(&body), reference);
        }
    }

    #[test]
    fn usage_is_read_from_the_top_level_object_only() {
        let usage = |json: &str| usage_of_json(json.as_bytes());
        let u = |p, c| {
            Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
            })
        };
        // The usual vLLM shape: usage after the choices, whose text may say anything.
        let full = r#"{"id":"cmpl-1","choices":[{"text":"say \"usage\": {\"prompt_tokens\": 9}","usage":{"prompt_tokens":8}}],"usage" : {"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":3}}}"#;
        assert_eq!(usage(full), u(5, 2));
        // Nested `usage` keys, a `usage` string value and escaped quotes are not the key.
        assert_eq!(
            usage(r#"{"choices":[{"usage":{"prompt_tokens":1}}]}"#),
            None
        );
        assert_eq!(usage(r#"{"a":"usage","b":["usage"]}"#), None);
        assert_eq!(
            usage(r#"{"a":"x\\","usage":{"completion_tokens":4}}"#),
            u(0, 4)
        );
        assert_eq!(usage(r#"{"a":"\"usage\":{\"prompt_tokens\":1}"}"#), None);
        // Absent, null, malformed or cut-off values, and bodies that are not an object.
        assert_eq!(usage(r#"{"usage":null}"#), None);
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":"many"}}"#), None);
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":-1}}"#), None);
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":2.5}}"#), None);
        assert_eq!(
            usage(r#"{"usage":{"prompt_tokens":99999999999999999999}}"#),
            None
        );
        assert_eq!(usage(r#"{"usage":[1,2]}"#), None);
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":3"#), None);
        assert_eq!(usage(r#"{"choices":[}"#), None);
        assert_eq!(usage(r#"["usage",{"usage":{"prompt_tokens":1}}]"#), None);
        assert_eq!(usage(r#"{"a":"unterminated"#), None);
        assert_eq!(usage(r#"{"a":"ends in an escape\"#), None);
        assert_eq!(usage(""), None);
        // Leading whitespace and a later key after usage are fine.
        assert_eq!(
            usage(" \n{\"usage\":{\"prompt_tokens\":6},\"z\":1}"),
            u(6, 0)
        );
    }
}
