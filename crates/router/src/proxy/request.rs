//! Just enough understanding of a request body to route it: validate the JSON, read `model`,
//! `stream`, `stream_options`, the session id, and make the two edits the router needs
//! (`model` rewrite, usage injection). Edits are spliced into the body's bytes.

use bytes::Bytes;
use hyper::header::HeaderMap;
use serde_json::{Map, Value};

use super::json_scan;
use crate::errors::ApiError;
use crate::scheduler::profile::SessionAffinityArgs;

/// Which OpenAI API a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// Any other `/v1/*` POST, passed through.
    Other,
}

/// The parts of a body the router uses.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The parsed object.
    pub object: Map<String, Value>,
    /// `model`.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// The client set `stream_options.include_usage: true` itself.
    pub client_wants_usage: bool,
    /// `max_tokens` / `max_completion_tokens`.
    pub max_tokens: Option<u64>,
}

/// Validates a body and extracts the routing fields; every failure is a 400 naming the field.
pub fn inspect(body: &[u8]) -> Result<Inspected, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON body: {e}."), None))?;
    let Value::Object(object) = value else {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
            None,
        ));
    };
    let model = match object.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "You must provide a model parameter.",
                Some("model"),
            ))
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("`model` must be a string, got {other}."),
                Some("model"),
            ))
        }
    };
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("`stream` must be a boolean, got {other}."),
                Some("stream"),
            ))
        }
    };
    let client_wants_usage = match object.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ApiError::bad_request(
                    format!("`stream_options.include_usage` must be a boolean, got {other}."),
                    Some("stream_options"),
                ))
            }
        },
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("`stream_options` must be an object, got {other}."),
                Some("stream_options"),
            ))
        }
    };
    let max_tokens = object
        .get("max_tokens")
        .or_else(|| object.get("max_completion_tokens"))
        .and_then(Value::as_u64);
    Ok(Inspected {
        object,
        model,
        stream,
        client_wants_usage,
        max_tokens,
    })
}

/// The conversation id: the configured header, else the configured body field (dotted path;
/// strings and numbers count).
pub fn session_id(
    headers: &HeaderMap,
    object: &Map<String, Value>,
    args: &SessionAffinityArgs,
) -> Option<String> {
    if let Some(v) = headers.get(args.header.as_str()) {
        if let Ok(s) = v.to_str() {
            if !s.is_empty() {
                return Some(s.to_string());
            }
        }
    }
    let path = args.body_field.as_deref()?;
    let mut parts = path.split('.');
    let mut current = object.get(parts.next()?)?;
    for p in parts {
        current = current.as_object()?.get(p)?;
    }
    match current {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Applies the router's edits; `None` when the original bytes can go out unchanged.
pub fn rewrite(
    inspected: &Inspected,
    body: &[u8],
    model: Option<&str>,
    inject_usage: bool,
) -> Option<Bytes> {
    let rename = model.filter(|m| *m != inspected.model);
    if rename.is_none() && !inject_usage {
        return None;
    }
    Some(
        splice(inspected, body, rename, inject_usage).unwrap_or_else(|| {
            let object = edited_object(inspected, model, inject_usage);
            Bytes::from(
                serde_json::to_vec(&Value::Object(object)).expect("a Value always serialises"),
            )
        }),
    )
}

/// [`rewrite`]'s edits made on the bytes: every top-level `model` value replaced, every
/// top-level `stream_options` value replaced by the edited one (or one appended), the rest
/// copied as it came. Re-serialising the whole object instead cost a copy of the prompt and
/// its escaping on every streamed request. Parses like [`edited_object`] (duplicate keys are
/// all edited, so first-wins and last-wins parsers agree); `None` if the scan fails.
fn splice(
    inspected: &Inspected,
    body: &[u8],
    rename: Option<&str>,
    inject_usage: bool,
) -> Option<Bytes> {
    let (open, members) = json_scan::object_members(body)?;
    let mut edits: Vec<(std::ops::Range<usize>, Vec<u8>)> = Vec::new();
    let mut replace_all = |key: &str, value: &[u8]| {
        let before = edits.len();
        for m in members
            .iter()
            .filter(|m| json_scan::key_is(&body[m.key.clone()], key))
        {
            edits.push((m.value.clone(), value.to_vec()));
        }
        edits.len() > before
    };
    if let Some(m) = rename {
        let value = serde_json::to_vec(m).ok()?;
        replace_all("model", &value);
    }
    if inject_usage {
        let mut options = match inspected.object.get("stream_options") {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        options.insert("include_usage".into(), Value::Bool(true));
        let value = serde_json::to_vec(&Value::Object(options)).ok()?;
        if !replace_all("stream_options", &value) {
            let (at, comma) = match members.last() {
                Some(m) => (m.value.end, &b","[..]),
                None => (open + 1, &b""[..]),
            };
            let mut member = comma.to_vec();
            member.extend_from_slice(br#""stream_options":"#);
            member.extend_from_slice(&value);
            edits.push((at..at, member));
        }
    }
    edits.sort_by_key(|(span, _)| span.start);
    let added: usize = edits.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(body.len() + added);
    let mut at = 0;
    for (span, value) in edits {
        out.extend_from_slice(&body[at..span.start]);
        out.extend_from_slice(&value);
        at = span.end;
    }
    out.extend_from_slice(&body[at..]);
    Some(Bytes::from(out))
}

/// The body object with the router's edits applied (see [`rewrite`]).
pub fn edited_object(
    inspected: &Inspected,
    model: Option<&str>,
    inject_usage: bool,
) -> Map<String, Value> {
    let mut object = inspected.object.clone();
    if let Some(m) = model.filter(|m| *m != inspected.model) {
        object.insert("model".into(), Value::String(m.to_string()));
    }
    if inject_usage {
        let options = object
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        options
            .as_object_mut()
            .expect("made an object above")
            .insert("include_usage".into(), Value::Bool(true));
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    #[test]
    fn client_mistakes_are_400s_naming_the_field() {
        let cases: [(&str, Option<&str>, &str); 8] = [
            ("{not json", None, "Malformed JSON"),
            ("[1,2]", None, "JSON object"),
            ("{}", Some("model"), "provide a model"),
            (r#"{"model":""}"#, Some("model"), "provide a model"),
            (r#"{"model":7}"#, Some("model"), "must be a string"),
            (r#"{"model":"m","stream":"yes"}"#, Some("stream"), "boolean"),
            (
                r#"{"model":"m","stream_options":3}"#,
                Some("stream_options"),
                "object",
            ),
            (
                r#"{"model":"m","stream_options":{"include_usage":"y"}}"#,
                Some("stream_options"),
                "boolean",
            ),
        ];
        for (body, param, text) in cases {
            let e = inspect(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param, param, "{body}");
            assert!(e.message.contains(text), "{body}: {}", e.message);
        }
    }

    #[test]
    fn edits_only_when_needed_and_keep_other_fields() {
        let body = r#"{"model":"public","stream":true,"messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#;
        let i = inspect(body.as_bytes()).unwrap();
        assert!(i.stream && !i.client_wants_usage);
        let raw = body.as_bytes();
        assert!(rewrite(&i, raw, None, false).is_none());
        assert!(rewrite(&i, raw, Some("public"), false).is_none());
        let out: Value =
            serde_json::from_slice(&rewrite(&i, raw, Some("served"), true).unwrap()).unwrap();
        assert_eq!(out["model"], "served");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["messages"][0]["content"], "hi");
    }

    /// What the rewrite must parse to: the Value path's edited object.
    fn expected(body: &str, model: Option<&str>, inject: bool) -> Value {
        let i = inspect(body.as_bytes()).unwrap();
        Value::Object(edited_object(&i, model, inject))
    }

    fn spliced(body: &str, model: Option<&str>, inject: bool) -> Option<Bytes> {
        let i = inspect(body.as_bytes()).unwrap();
        let rename = model.filter(|m| *m != i.model);
        splice(&i, body.as_bytes(), rename, inject)
    }

    use proptest::strategy::Strategy as _;

    #[test]
    fn splicing_keeps_the_bytes_it_does_not_edit() {
        let body = r#"{ "model" : "public", "messages": [{"role":"user","content":"a \"model\": {}"}] ,"stream":true }"#;
        let out = spliced(body, Some("served/\"x\""), true).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "model" : "served/\"x\"", "messages": [{"role":"user","content":"a \"model\": {}"}] ,"stream":true,"stream_options":{"include_usage":true} }"#
        );
        // An empty object, existing options, an escaped key, duplicate keys.
        for (body, model) in [
            (r#"{}"#, None),
            (
                r#"{"model":"m","stream_options":{"include_usage":false,"x":1}}"#,
                None,
            ),
            (r#"{"model":"m","stream_options":null}"#, Some("n")),
            (r#"{"mod\u0065l":"m","stream":true}"#, Some("n")),
            (
                r#"{"model":"a","model":"m","stream_options":{},"stream_options":{"y":2}}"#,
                Some("n"),
            ),
        ] {
            let Ok(i) = inspect(body.as_bytes()) else {
                continue;
            };
            let out = splice(&i, body.as_bytes(), model.filter(|m| *m != i.model), true).unwrap();
            let parsed: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(parsed, expected(body, model, true), "{body}");
        }
    }

    proptest::proptest! {
        /// The splice parses to what re-serialising the edited object gives, for any object,
        /// key order, whitespace and value shapes.
        #[test]
        fn splicing_parses_like_the_edited_object(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["messages", "stream_options", "temperature", "x\"y", "m\\"]),
                    proptest::prop_oneof![
                        proptest::strategy::Just(Value::Null),
                        proptest::num::i64::ANY.prop_map(Value::from),
                        "[ -~]{0,12}".prop_map(Value::from),
                        proptest::collection::vec("[a-z{}\\[\\]\",:]{0,6}", 0..3)
                            .prop_map(Value::from),
                        proptest::bool::ANY.prop_map(|b| serde_json::json!({"include_usage": b, "n": [1, {"k": "}"}]})),
                    ],
                ),
                0..6,
            ),
            model in "[ -~]{1,10}",
            rename in proptest::option::of("[ -~]{1,10}"),
            pretty in proptest::bool::ANY,
            inject in proptest::bool::ANY,
        ) {
            let mut object = Map::new();
            object.insert("model".into(), Value::from(model));
            for (k, v) in fields {
                object.insert(k.to_string(), v);
            }
            let value = Value::Object(object);
            let body = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            if let Ok(i) = inspect(body.as_bytes()) {
                let name = rename.as_deref().filter(|m| *m != i.model);
                if name.is_some() || inject {
                    let out = splice(&i, body.as_bytes(), name, inject).expect("scan");
                    let parsed: Value = serde_json::from_slice(&out).unwrap();
                    proptest::prop_assert_eq!(parsed, expected(&body, rename.as_deref(), inject));
                }
            }
        }
    }

    #[test]
    fn session_from_header_then_body_path() {
        let args = SessionAffinityArgs {
            body_field: Some("metadata.conversation".into()),
            ..SessionAffinityArgs::default()
        };
        let i = inspect(br#"{"model":"m","metadata":{"conversation":"c-9"}}"#).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(session_id(&h, &i.object, &args).as_deref(), Some("c-9"));
        h.insert("x-session-id", "hdr".parse().unwrap());
        assert_eq!(session_id(&h, &i.object, &args).as_deref(), Some("hdr"));
        let j = inspect(br#"{"model":"m","metadata":{"conversation":12}}"#).unwrap();
        assert_eq!(
            session_id(&HeaderMap::new(), &j.object, &args).as_deref(),
            Some("12")
        );
        let k = inspect(br#"{"model":"m"}"#).unwrap();
        assert_eq!(session_id(&HeaderMap::new(), &k.object, &args), None);
    }
}
