//! Tokenization and the chat template.
//!
//! The engine loads a Hugging Face `tokenizer.json` (the same file the router loads, so both
//! count the same tokens and hash the same blocks). The project ships its own small byte-level
//! BPE at `assets/tokenizer.json`; `examples/train_tokenizer.rs` regenerates it.
//!
//! Chat messages are rendered to text with a ChatML-style template before tokenization:
//!
//! ```text
//! <|im_start|>{role}\n{content}<|im_end|>\n      (for every message, in order)
//! <|im_start|>assistant\n                          (generation prompt)
//! ```
//!
//! Content given as an array of parts keeps only `{"type":"text"}` parts, joined with `\n`.

use std::path::Path;
use tokenizers::Tokenizer;

/// The tokenizer compiled into the binary (`assets/tokenizer.json`).
pub const DEFAULT_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/tokenizer.json");

/// Special tokens of the chat template.
pub const IM_START: &str = "<|im_start|>";
/// End of a chat turn.
pub const IM_END: &str = "<|im_end|>";
/// End of text.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Words the simulated model "generates", cycled deterministically per request.
const FILLER_TEXT: &str = " the model is simulated and this text is filler that stands in for a \
    real answer so that every token costs time in the engine while the router measures how long \
    the first token took and how fast the rest of the stream arrived";

/// Why a tokenizer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be parsed.
    #[error("cannot load tokenizer {source_name}: {message}")]
    Load {
        /// Path or "built-in".
        source_name: String,
        /// Underlying message.
        message: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer failed: {0}")]
    Codec(String),
}

/// A loaded tokenizer plus the filler tokens used for output.
#[derive(Clone)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    filler: Vec<(u32, String)>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .finish()
    }
}

/// One chat message after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`…
    pub role: String,
    /// Text content.
    pub content: String,
}

impl TextCodec {
    /// The built-in tokenizer.
    pub fn builtin() -> Result<Self, TokenizerError> {
        Self::from_bytes(DEFAULT_TOKENIZER_JSON, "built-in")
    }

    /// Loads a `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Load {
            source_name: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, TokenizerError> {
        let tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load {
            source_name: name.to_string(),
            message: e.to_string(),
        })?;
        let ids = tokenizer
            .encode(FILLER_TEXT, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?
            .get_ids()
            .to_vec();
        let mut filler = Vec::with_capacity(ids.len());
        for id in ids {
            let text = tokenizer
                .decode(&[id], false)
                .map_err(|e| TokenizerError::Codec(e.to_string()))?;
            filler.push((id, text));
        }
        if filler.is_empty() {
            return Err(TokenizerError::Load {
                source_name: name.to_string(),
                message: "tokenizer produced no tokens for the filler text".into(),
            });
        }
        Ok(Self { tokenizer, filler })
    }

    /// Token ids of `text` (special tokens in the text are recognised, no BOS/EOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Filler token ids, in generation order.
    pub fn filler_ids(&self) -> Vec<u32> {
        self.filler.iter().map(|(id, _)| *id).collect()
    }

    /// Text of one generated token (filler tokens are pre-decoded; others decoded on demand).
    pub fn token_text(&self, id: u32) -> String {
        self.filler
            .iter()
            .find(|(f, _)| *f == id)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| self.decode(&[id]).unwrap_or_default())
    }
}

/// Renders chat messages with the template described in the module docs.
pub fn render_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tokenizer_round_trips_and_knows_the_chat_specials() {
        let c = TextCodec::builtin().unwrap();
        let text = "Hello, world! The quick brown fox jumps over 1234 lazy dogs.";
        let ids = c.encode(text).unwrap();
        assert!(ids.len() < text.len(), "BPE merges characters");
        assert_eq!(c.decode(&ids).unwrap(), text);
        let chat = render_chat(
            &[ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            true,
        );
        let ids = c.encode(&chat).unwrap();
        let start = c.encode(IM_START).unwrap();
        assert_eq!(start.len(), 1, "<|im_start|> is a single special token");
        assert_eq!(ids[0], start[0]);
    }

    #[test]
    fn non_ascii_text_round_trips() {
        let c = TextCodec::builtin().unwrap();
        let text = "naïve café — 東京 🚀";
        assert_eq!(c.decode(&c.encode(text).unwrap()).unwrap(), text);
    }
}
