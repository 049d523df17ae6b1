//! GPT-2-style byte-level BPE without the Hugging Face pipeline's per-piece bookkeeping.
//!
//! `tokenizers` runs its `ByteLevel` pre-tokenizer over a `NormalizedString` that tracks an
//! alignment per byte and allocates for every piece, through `fancy-regex` (its pattern has a
//! look-ahead), then its BPE model looks every piece up in a locked word cache and merges the
//! misses through a heap, making a `String` per token. For the configuration where nothing
//! else happens between the added tokens and the model (no normalizer, `ByteLevel` with its
//! regex and no prefix space, BPE without dropout, no normalized added tokens), the same ids
//! come from:
//!
//! 1. split with the same pattern ([`next_piece`]: ASCII scanned by hand, anything else by the
//!    `regex` crate),
//! 2. start each piece from the token of each of its bytes in GPT-2's byte alphabet, and
//! 3. apply the model's merges by rank ([`Merges`]), on ids, without strings.
//!
//! Tests in the parent module prove equality with `tokenizers` on varied inputs.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::Value;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::Model;

use super::TokenizerError;

/// GPT-2's pattern (as in `tokenizers`' `ByteLevel`) without `\s+(?!\S)`, which the `regex`
/// crate cannot run; [`ByteLevelBpe::encode`] restores what it matches.
const PIECES: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Pieces longer than this (in bytes) are merged by the model itself: the merge loop here is
/// quadratic in the piece's length, the model's heap is not.
const MAX_MERGE_BYTES: usize = 128;

/// The fast path for one tokenizer.
pub(super) struct ByteLevelBpe {
    pieces: regex::Regex,
    /// GPT-2's byte → printable character table.
    byte_chars: [char; 256],
    /// The model's merges on ids, or why pieces go to the model instead.
    merges: Result<Merges, String>,
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
        let byte_chars = byte_chars();
        Ok(ByteLevelBpe {
            pieces: regex::Regex::new(PIECES).map_err(|e| e.to_string())?,
            merges: Merges::of(t.get_model(), &byte_chars),
            byte_chars,
        })
    }

    /// Whether pieces are merged here (`Ok`) or by the model, and why.
    pub(super) fn own_merges(&self) -> Result<(), &str> {
        self.merges.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Appends the ids of `text`, which holds no added token, to `out`.
    pub(super) fn encode(
        &self,
        model: &ModelWrapper,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let mut mapped = String::new();
        let mut scratch = Scratch::default();
        let mut at = 0;
        while at < text.len() {
            let mut end = next_piece(&self.pieces, text, at);
            // Only the `\s+` branch matches whitespace alone. Where GPT-2's `\s+(?!\S)` comes
            // first, it leaves a run's last character to the word that follows.
            let piece = &text[at..end];
            if end < text.len() && piece.chars().all(char::is_whitespace) {
                if let Some((last, _)) = piece.char_indices().last().filter(|(i, _)| *i > 0) {
                    end = at + last;
                }
            }
            let bytes = &text.as_bytes()[at..end];
            match &self.merges {
                Ok(merges) if bytes.len() <= MAX_MERGE_BYTES => {
                    merges.apply(bytes, &mut scratch);
                    out.extend_from_slice(&scratch.symbols);
                }
                _ => {
                    mapped.clear();
                    mapped.extend(bytes.iter().map(|&b| self.byte_chars[b as usize]));
                    // The model's own word cache makes repeated words cheap.
                    let tokens = model
                        .tokenize(&mapped)
                        .map_err(|e| TokenizerError::Codec(e.to_string()))?;
                    out.extend(tokens.iter().map(|t| t.id));
                }
            }
            at = end;
        }
        Ok(())
    }
}

/// End of the GPT-2 piece starting at byte `at` of `text` (leftmost-first, as `regex` and
/// `fancy-regex` match [`PIECES`]). Runs of ASCII are classified by hand; where a run reaches
/// a non-ASCII character, which may or may not continue it (`é` continues a word, `—` does
/// not), the regex decides.
fn next_piece(pieces: &regex::Regex, text: &str, at: usize) -> usize {
    let b = text.as_bytes();
    let class = |i: usize| b.get(i).map(|&c| Class::of(c));
    let run = |from: usize, class: Class| {
        let mut i = from;
        while i < b.len() && Class::of(b[i]) == class {
            i += 1;
        }
        i
    };
    let by_regex = || {
        // Every character matches a branch, so the match starts at `at`.
        let m = pieces.find_at(text, at).expect("every character matches");
        debug_assert_eq!(m.start(), at);
        m.end()
    };
    if b[at] == b'\'' {
        let contraction = match (b.get(at + 1), b.get(at + 2)) {
            (Some(b's' | b't' | b'm' | b'd'), _) => Some(at + 2),
            (Some(b'r'), Some(b'e')) | (Some(b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => {
                Some(at + 3)
            }
            _ => None,
        };
        if let Some(end) = contraction {
            return end;
        }
    }
    // ` ?` before a letter, number or symbol run: the space belongs to the run.
    let start = match (b[at], class(at + 1)) {
        (b' ', Some(Class::Letter | Class::Digit | Class::Other)) => at + 1,
        _ => at,
    };
    match Class::of(b[start]) {
        Class::NonAscii => by_regex(),
        class => {
            let end = run(start, class);
            if end < b.len() && Class::of(b[end]) == Class::NonAscii {
                by_regex()
            } else {
                end
            }
        }
    }
}

/// How the GPT-2 pattern sees an ASCII byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Digit,
    /// `\s` (Unicode `White_Space`: tab, line feed, vertical tab, form feed, carriage return,
    /// space; not the other control characters).
    Space,
    /// Everything else ASCII: `[^\s\p{L}\p{N}]`.
    Other,
    /// A byte of a multi-byte character.
    NonAscii,
}

impl Class {
    fn of(c: u8) -> Class {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
            b'0'..=b'9' => Class::Digit,
            b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => Class::Space,
            0x80.. => Class::NonAscii,
            _ => Class::Other,
        }
    }
}

/// A BPE model's merges, keyed by the pair of ids they join.
struct Merges {
    /// The token of each byte's GPT-2 character.
    byte_ids: [u32; 256],
    /// `(left, right)` → `(rank, merged id)`.
    pairs: HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>,
}

impl Merges {
    /// The merges of `model`, or why its pieces must go through it: only plain byte-level BPE
    /// (every byte's character in the vocabulary, no subword prefix or suffix, merges not
    /// skipped for words in the vocabulary) is merged here.
    fn of(model: &ModelWrapper, byte_chars: &[char; 256]) -> Result<Merges, String> {
        let ModelWrapper::BPE(bpe) = model else {
            return Err("not a BPE model".into());
        };
        if bpe.continuing_subword_prefix.is_some() || bpe.end_of_word_suffix.is_some() {
            return Err("the model has a subword prefix or suffix".into());
        }
        if bpe.ignore_merges {
            return Err("the model skips merges for words in its vocabulary".into());
        }
        let id = |s: &str| model.token_to_id(s);
        let mut byte_ids = [0u32; 256];
        for (b, c) in byte_chars.iter().enumerate() {
            byte_ids[b] = id(&c.to_string())
                .ok_or_else(|| format!("byte {b:#04x} ({c:?}) has no token of its own"))?;
        }
        // The merges in rank order, from the model's serialized form (the crate keeps them
        // private): one `["left", "right"]` per pair.
        let json = serde_json::to_value(model).map_err(|e| e.to_string())?;
        let list = json["merges"]
            .as_array()
            .ok_or("the model lists no merges")?;
        let mut pairs = HashMap::with_capacity_and_hasher(list.len(), Default::default());
        for (rank, m) in list.iter().enumerate() {
            let pair = match m {
                Value::Array(p) if p.len() == 2 => p[0].as_str().zip(p[1].as_str()),
                _ => None,
            };
            let Some((left, right)) = pair else {
                return Err(format!("merge {rank} is not a pair: {m}"));
            };
            let (Some(l), Some(r), Some(merged)) =
                (id(left), id(right), id(&[left, right].concat()))
            else {
                return Err(format!(
                    "merge {rank} ({left:?} {right:?}) names unknown tokens"
                ));
            };
            pairs.insert(key(l, r), (rank as u32, merged));
        }
        Ok(Merges { byte_ids, pairs })
    }

    /// Leaves the ids of one piece in `scratch.symbols`: its bytes' tokens, then, while any
    /// adjacent pair has a merge, the lowest-ranked (leftmost among equals) merged, as the
    /// model does.
    fn apply(&self, piece: &[u8], scratch: &mut Scratch) {
        let Scratch { symbols, ranks } = scratch;
        symbols.clear();
        symbols.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        let rank = |s: &[u32], i: usize| self.pairs.get(&key(s[i], s[i + 1])).copied();
        // ranks[i]: the merge of symbols i and i + 1.
        ranks.clear();
        ranks.extend((0..symbols.len().saturating_sub(1)).map(|i| rank(symbols, i)));
        loop {
            let best = ranks
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.map(|(rank, merged)| (rank, i, merged)))
                .min();
            let Some((_, i, merged)) = best else {
                return;
            };
            symbols[i] = merged;
            symbols.remove(i + 1);
            ranks.remove(i);
            if i > 0 {
                ranks[i - 1] = rank(symbols, i - 1);
            }
            if i < ranks.len() {
                ranks[i] = rank(symbols, i);
            }
        }
    }
}

/// Buffers [`Merges::apply`] reuses from piece to piece.
#[derive(Default)]
struct Scratch {
    /// The piece's ids so far.
    symbols: Vec<u32>,
    /// `ranks[i]`: rank and result of merging `symbols[i]` and `symbols[i + 1]`, if any.
    ranks: Vec<Option<(u32, u32)>>,
}

fn key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Hasher for pair keys: one multiply (the keys are dense ids, not adversarial input — a
/// client chooses the text, but the pairs it can form are fixed by the vocabulary).
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(26) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
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
