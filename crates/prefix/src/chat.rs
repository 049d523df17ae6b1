//! The chat template, shared so the router renders a chat request to exactly the text (and so
//! the tokens and block hashes) the engine simulator does.
//!
//! Messages are rendered ChatML-style:
//!
//! ```text
//! <|im_start|>{role}\n{content}<|im_end|>\n      (for every message, in order)
//! <|im_start|>assistant\n                          (generation prompt)
//! ```
//!
//! Content given as an array of parts keeps only `{"type":"text"}` parts, joined with `\n`.

use serde_json::Value;

/// Special tokens of the chat template.
pub const IM_START: &str = "<|im_start|>";
/// End of a chat turn.
pub const IM_END: &str = "<|im_end|>";
/// End of text.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// One chat message after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`…
    pub role: String,
    /// Text content.
    pub content: String,
}

/// Why `messages` could not be read; the message names the offending element.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MessagesError(pub String);

/// Renders chat messages with the template described in the module docs.
pub fn render_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let len: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len() + IM_START.len() + IM_END.len() + 2)
        .sum();
    let mut out = String::with_capacity(len + IM_START.len() + 10);
    for m in messages {
        out.push_str(IM_START);
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str(IM_END);
        out.push('\n');
    }
    if add_generation_prompt {
        out.push_str(IM_START);
        out.push_str("assistant\n");
    }
    out
}

/// Parses an OpenAI `messages` array: `role` must be a string; `content` a string, null, or an
/// array of parts of which only `text` parts are accepted.
pub fn parse_messages(v: &Value) -> Result<Vec<ChatMessage>, MessagesError> {
    let bad = |m: String| MessagesError(m);
    let arr = v
        .as_array()
        .ok_or_else(|| bad("`messages` must be an array of messages.".into()))?;
    if arr.is_empty() {
        return Err(bad("`messages` must contain at least one message.".into()));
    }
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                bad(format!(
                    "messages[{i}].role is required and must be a string."
                ))
            })?;
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, p) in parts.iter().enumerate() {
                        match p.get("type").and_then(Value::as_str) {
                            Some("text") => texts.push(
                                p.get("text").and_then(Value::as_str).ok_or_else(|| {
                                    bad(format!(
                                        "messages[{i}].content[{j}].text must be a string."
                                    ))
                                })?,
                            ),
                            other => {
                                return Err(bad(format!(
                                    "messages[{i}].content[{j}]: unsupported content part type \
                                     {other:?}; the simulator takes text only."
                                )))
                            }
                        }
                    }
                    texts.join("\n")
                }
                Some(_) => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string or an array of parts."
                    )))
                }
            };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_chatml_with_text_parts_joined() {
        let m = parse_messages(&json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null},
        ]))
        .unwrap();
        assert_eq!(
            render_chat(&m, true),
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\na\nb<|im_end|>\n\
             <|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render_chat(&m[..1], false),
            "<|im_start|>system\nbe brief<|im_end|>\n"
        );
    }

    #[test]
    fn bad_messages_name_the_element() {
        let cases = [
            (json!({}), "must be an array"),
            (json!([]), "at least one message"),
            (json!([{"content": "x"}]), "messages[0].role"),
            (
                json!([{"role": "user", "content": 3}]),
                "messages[0].content must be",
            ),
            (
                json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                "messages[0].content[0]: unsupported",
            ),
            (
                json!([{"role": "user", "content": [{"type": "text", "text": 1}]}]),
                "messages[0].content[0].text",
            ),
        ];
        for (v, want) in cases {
            let e = parse_messages(&v).unwrap_err();
            assert!(e.0.contains(want), "{v}: {e}");
        }
    }
}
