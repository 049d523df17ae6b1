//! GPT-2-style byte-level BPE without the Hugging Face pipeline's per-piece bookkeeping.
//!
//! `tokenizers` runs its `ByteLevel` pre-tokenizer over a `NormalizedString` that tracks an
//! alignment per byte and allocates for every piece, through `fancy-regex` (its pattern has a
//! look-ahead). On a 32k-token prompt that is about two thirds of the encoding time. For the
//! configuration where nothing else happens between the added tokens and the model (no
//! normalizer, `ByteLevel` with its regex and no prefix space, BPE without dropout, no
//! normalized added tokens), the same ids come from: split with the same pattern, map the
//! piece's bytes to GPT-2's byte alphabet, and ask the model for the piece's tokens. Tests in
//! the parent module prove equality with `tokenizers` on varied inputs.

use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::Model;

use super::TokenizerError;

/// GPT-2's pattern (as in `tokenizers`' `ByteLevel`) without `\s+(?!\S)`, which the `regex`
/// crate cannot run; [`ByteLevelBpe::encode`] restores what it matches.
const PIECES: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// The fast path for one tokenizer.
pub(super) struct ByteLevelBpe {
    pieces: regex::Regex,
    /// GPT-2's byte → printable character table.
    byte_chars: [char; 256],
}

impl ByteLevelBpe {
    /// The fast path for `t`, or why its configuration needs the full pipeline.
    pub(super) fn of(t: &tokenizers::Tokenizer) -> Result<Self, String> {
        if t.get_normalizer().is_some() {
            return Err("it has a normalizer".into());
        }
        match t.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space => {}
            _ => return Err("its pre-tokenizer is not ByteLevel with the GPT-2 regex".into()),
        }
        match t.get_model() {
            ModelWrapper::BPE(m) if m.dropout.is_none_or(|d| d == 0.0) => {}
            _ => return Err("its model is not BPE without dropout".into()),
        }
        if t.get_added_tokens_decoder().values().any(|a| a.normalized) {
            return Err("it has normalized added tokens".into());
        }
        Ok(ByteLevelBpe {
            pieces: regex::Regex::new(PIECES).map_err(|e| e.to_string())?,
            byte_chars: byte_chars(),
        })
    }

    /// Appends the ids of `text`, which holds no added token, to `out`.
    pub(super) fn encode(
        &self,
        model: &ModelWrapper,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let mut mapped = String::new();
        let mut at = 0;
        while at < text.len() {
            // Every character matches a branch, so each match starts where the last ended.
            let Some(m) = self.pieces.find_at(text, at) else {
                break;
            };
            debug_assert_eq!(m.start(), at);
            let mut end = m.end();
            let piece = m.as_str();
            // Only the `\s+` branch matches whitespace alone. Where GPT-2's `\s+(?!\S)` comes
            // first, it leaves a run's last character to the word that follows.
            if end < text.len() && piece.chars().all(char::is_whitespace) {
                if let Some((last, _)) = piece.char_indices().last().filter(|(i, _)| *i > 0) {
                    end = at + last;
                }
            }
            mapped.clear();
            mapped.extend(
                text.as_bytes()[at..end]
                    .iter()
                    .map(|&b| self.byte_chars[b as usize]),
            );
            // The model's own word cache makes repeated words cheap.
            let tokens = model
                .tokenize(&mapped)
                .map_err(|e| TokenizerError::Codec(e.to_string()))?;
            out.extend(tokens.iter().map(|t| t.id));
            at = end;
        }
        Ok(())
    }
}

/// GPT-2's byte alphabet (`bytes_to_unicode` in its `encoder.py`): printable Latin-1 bytes
/// stand for themselves, the rest for the code points from 256 up, in byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below the surrogates")
        };
    }
    table
}
