//! Tokenization and the chat template.
//!
//! The engine loads a Hugging Face `tokenizer.json` (the same file the router loads, so both
//! count the same tokens and hash the same blocks). The project ships its own small byte-level
//! BPE at `assets/tokenizer.json`; `examples/train_tokenizer.rs` regenerates it.
//!
//! Chat messages are rendered to text with the ChatML-style template of
//! [`muster_prefix::chat`] (shared with the router) before tokenization.

use std::path::Path;

/// The tokenizer compiled into the binary (`assets/tokenizer.json`).
pub const DEFAULT_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/tokenizer.json");

pub use muster_prefix::chat::{render_chat, ChatMessage, END_OF_TEXT, IM_END, IM_START};

/// Words the simulated model "generates", cycled deterministically per request.
const FILLER_TEXT: &str = " the model is simulated and this text is filler that stands in for a \
    real answer so that every token costs time in the engine while the router measures how long \
    the first token took and how fast the rest of the stream arrived";

use muster_prefix::tokenizer::PromptTokenizer;
pub use muster_prefix::tokenizer::TokenizerError;

/// A loaded tokenizer plus the filler tokens used for output.
#[derive(Clone)]
pub struct TextCodec {
    tokenizer: PromptTokenizer,
    filler: Vec<(u32, String)>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("vocab_size", &self.tokenizer.vocab_size())
            .finish()
    }
}

impl TextCodec {
    /// The built-in tokenizer.
    pub fn builtin() -> Result<Self, TokenizerError> {
        Self::with(PromptTokenizer::from_bytes(
            DEFAULT_TOKENIZER_JSON,
            "built-in",
        )?)
    }

    /// Loads a `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        Self::with(PromptTokenizer::load(path)?)
    }

    fn with(tokenizer: PromptTokenizer) -> Result<Self, TokenizerError> {
        let ids = tokenizer.encode(FILLER_TEXT)?;
        let mut filler = Vec::with_capacity(ids.len());
        for id in ids {
            filler.push((id, tokenizer.decode(&[id])?));
        }
        if filler.is_empty() {
            return Err(TokenizerError::Load {
                source_name: tokenizer.source().to_string(),
                message: "tokenizer produced no tokens for the filler text".into(),
            });
        }
        Ok(Self { tokenizer, filler })
    }

    /// Token ids of `text` (special tokens in the text are recognised, no BOS/EOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer.encode(text)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tokenizer.decode(ids)
    }

    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
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
