//! A Hugging Face `tokenizer.json`, loaded once and shared.
//!
//! Encoding never adds BOS/EOS and recognises special tokens written in the text (the chat
//! template's `<|im_start|>`…), exactly as the engine simulator encodes prompts.
//!
//! # Segment cache
//!
//! [`PromptTokenizer::encode`] tokenizes a whole prompt, as the engine does. A router sees the
//! same long system prompts again and again, so [`PromptTokenizer::with_segment_cache`] adds
//! [`PromptTokenizer::encode_cached`]: the prompt is cut at its added tokens (`<|im_start|>`,
//! `<|im_end|>`: every message of a rendered chat becomes one segment), and each segment's ids
//! are kept in an LRU bounded by the number of cached tokens, so a repeated segment costs a
//! hash of its text instead of a tokenizer run.
//!
//! Cutting is exact because Hugging Face `tokenizers` extracts added tokens from the raw text
//! *before* normalizing and pre-tokenizing, and processes every piece between them on its own:
//! the ids of the whole are the ids of the pieces, in order, with the added tokens' ids between.
//! That holds only for some configurations, checked when the cache is attached (see
//! [`PromptTokenizer::segmenting`]): no truncation or padding, added tokens extracted (not
//! `encode_special_tokens`), no `lstrip`/`rstrip`/`single_word` on the tokens cut at (they
//! reach into the neighbouring text), and no `Metaspace` pre-tokenizer with
//! `prepend_scheme: first` (it treats the piece at offset 0 differently). Otherwise the whole
//! prompt is one segment: still cached, still exact, only without sharing between prompts that
//! differ anywhere.
//!
//! Segments missing from the cache are tokenized by a leaner equivalent of the `tokenizers`
//! pipeline when the tokenizer is GPT-2-style byte-level BPE (`byte_level`; see
//! [`PromptTokenizer::fast_path`]), several times faster on long prompts.

mod byte_level;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde_json::Value;

/// Why a tokenizer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read or parsed.
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

/// A loaded tokenizer.
#[derive(Clone)]
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
    /// The added tokens prompts can be cut at, or why they cannot be.
    cuts: Result<Arc<Cuts>, String>,
    /// Token ids of segments, when [`Self::with_segment_cache`] attached one.
    cache: Option<Arc<Mutex<SegmentCache>>>,
    /// How segments are tokenized without the full pipeline, or why they cannot be.
    fast: Result<Arc<byte_level::ByteLevelBpe>, String>,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish()
    }
}

/// Token ids of a prompt and how much of them came from the segment cache.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CachedEncoding {
    /// The ids, equal to [`PromptTokenizer::encode`] of the same text.
    pub ids: Vec<u32>,
    /// Cache use while encoding it.
    pub cache: CacheUse,
}

/// Segment-cache lookups of one [`PromptTokenizer::encode_cached`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheUse {
    /// Segments found in the cache.
    pub hit_segments: u64,
    /// Segments tokenized (and then cached, if they fit).
    pub miss_segments: u64,
    /// Tokens of the segments found.
    pub hit_tokens: u64,
    /// Tokens of the segments tokenized.
    pub miss_tokens: u64,
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Load {
            source_name: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses `tokenizer.json` content; `name` appears in errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load {
            source_name: name.to_string(),
            message: e.to_string(),
        })?;
        let cuts = Cuts::of(&inner).map(Arc::new);
        let fast = match &cuts {
            Ok(_) => byte_level::ByteLevelBpe::of(&inner).map(Arc::new),
            Err(_) => Err("prompts are not cut at added tokens".into()),
        };
        Ok(PromptTokenizer {
            cuts,
            fast,
            inner,
            source: name.to_string(),
            cache: None,
        })
    }

    /// Attaches a segment cache holding at most `capacity_tokens` token ids (module docs);
    /// 0 attaches none. Clones share the cache.
    pub fn with_segment_cache(mut self, capacity_tokens: usize) -> Self {
        self.cache =
            (capacity_tokens > 0).then(|| Arc::new(Mutex::new(SegmentCache::new(capacity_tokens))));
        self
    }

    /// Whether prompts are cut at added tokens for the segment cache, or why not.
    pub fn segmenting(&self) -> Result<(), &str> {
        self.cuts.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Whether segments missing from the cache are tokenized by the byte-level fast path
    /// (module docs), or why not.
    pub fn fast_path(&self) -> Result<(), &str> {
        self.fast.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Whether the fast path also merges BPE pieces itself (on ids, without the model's
    /// strings and locked word cache), or why pieces go to the model.
    pub fn own_merges(&self) -> Result<(), &str> {
        match &self.fast {
            Ok(fast) => fast.own_merges(),
            Err(why) => Err(why),
        }
    }

    /// Token ids currently held by the segment cache (0 without one).
    pub fn cached_tokens(&self) -> usize {
        self.cache
            .as_ref()
            .map_or(0, |c| c.lock().expect("segment cache lock").tokens)
    }

    /// Where it was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Token ids of `text` (special tokens in the text are recognised, no BOS/EOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// The ids [`Self::encode`] gives, through the segment cache (module docs); without one,
    /// exactly `encode`.
    pub fn encode_cached(&self, text: &str) -> Result<CachedEncoding, TokenizerError> {
        let Some(cache) = &self.cache else {
            return Ok(CachedEncoding {
                ids: self.encode(text)?,
                cache: CacheUse::default(),
            });
        };
        let mut out = CachedEncoding::default();
        let piece = |segment: &str, out: &mut CachedEncoding| {
            if segment.is_empty() {
                return Ok(());
            }
            let key = xxhash_rust::xxh3::xxh3_128(segment.as_bytes());
            let found = cache.lock().expect("segment cache lock").get(key);
            let ids = match found {
                Some(ids) => {
                    out.cache.hit_segments += 1;
                    out.cache.hit_tokens += ids.len() as u64;
                    ids
                }
                None => {
                    let ids: Arc<[u32]> = match &self.fast {
                        Ok(fast) => {
                            let mut ids = Vec::new();
                            fast.encode(self.inner.get_model(), segment, &mut ids)?;
                            ids.into()
                        }
                        Err(_) => self.encode(segment)?.into(),
                    };
                    out.cache.miss_segments += 1;
                    out.cache.miss_tokens += ids.len() as u64;
                    cache
                        .lock()
                        .expect("segment cache lock")
                        .insert(key, ids.clone());
                    ids
                }
            };
            out.ids.extend_from_slice(&ids);
            Ok::<(), TokenizerError>(())
        };
        match &self.cuts {
            Ok(cuts) => {
                let mut start = 0;
                for m in cuts.matcher.find_iter(text) {
                    piece(&text[start..m.start()], &mut out)?;
                    out.ids.push(cuts.ids[m.pattern().as_usize()]);
                    start = m.end();
                }
                piece(&text[start..], &mut out)?;
            }
            Err(_) => piece(text, &mut out)?,
        }
        Ok(out)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying Hugging Face tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The added tokens `tokenizers` extracts from raw text before anything else, matched the
/// way it matches them (leftmost-longest over the non-normalized added tokens).
struct Cuts {
    matcher: AhoCorasick,
    /// Token id per matcher pattern.
    ids: Vec<u32>,
}

impl Cuts {
    /// The cut points of `t`, or why cutting would change its output (module docs).
    fn of(t: &tokenizers::Tokenizer) -> Result<Self, String> {
        if t.get_truncation().is_some() || t.get_padding().is_some() {
            return Err("truncation or padding is configured".into());
        }
        if t.get_encode_special_tokens() {
            return Err("encode_special_tokens is set".into());
        }
        let pre = serde_json::to_value(t.get_pre_tokenizer()).map_err(|e| e.to_string())?;
        if metaspace_first(&pre) {
            return Err("a Metaspace pre-tokenizer prepends only at offset 0".into());
        }
        let mut tokens: Vec<(u32, String)> = Vec::new();
        for (id, tok) in t.get_added_tokens_decoder() {
            if tok.normalized {
                // Matched inside the pieces after normalization, so inside one segment.
                continue;
            }
            if tok.lstrip || tok.rstrip || tok.single_word {
                return Err(format!(
                    "added token {:?} strips or matches whole words only",
                    tok.content
                ));
            }
            tokens.push((id, tok.content));
        }
        tokens.sort();
        let matcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|(_, c)| c))
            .map_err(|e| e.to_string())?;
        Ok(Cuts {
            matcher,
            ids: tokens.into_iter().map(|(id, _)| id).collect(),
        })
    }
}

/// Whether a serialized pre-tokenizer contains a `Metaspace` with `prepend_scheme: first`.
fn metaspace_first(v: &Value) -> bool {
    match v {
        Value::Object(o) => {
            (o.get("type").and_then(Value::as_str) == Some("Metaspace")
                && o.get("prepend_scheme").and_then(Value::as_str) == Some("first"))
                || o.values().any(metaspace_first)
        }
        Value::Array(a) => a.iter().any(metaspace_first),
        _ => false,
    }
}

/// Segment ids by the XXH3-128 of the segment's text, least recently used evicted first once
/// more than `capacity` tokens are held. A 128-bit key makes a collision (which would only
/// mis-score a routing decision, never change what the engine computes) negligible, and keeps
/// the texts themselves out of memory.
struct SegmentCache {
    capacity: usize,
    tokens: usize,
    tick: u64,
    entries: HashMap<u128, (Arc<[u32]>, u64)>,
    /// Last use → key, oldest first.
    order: BTreeMap<u64, u128>,
}

impl SegmentCache {
    fn new(capacity: usize) -> Self {
        SegmentCache {
            capacity,
            tokens: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn get(&mut self, key: u128) -> Option<Arc<[u32]>> {
        let (ids, used) = self.entries.get_mut(&key)?;
        self.tick += 1;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, key);
        Some(ids.clone())
    }

    fn insert(&mut self, key: u128, ids: Arc<[u32]>) {
        // Two requests may tokenize the same new segment at once; the second insert is a no-op.
        if ids.len() > self.capacity || self.entries.contains_key(&key) {
            return;
        }
        while self.tokens + ids.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.tokens -= old.len();
            }
        }
        self.tick += 1;
        self.tokens += ids.len();
        self.order.insert(self.tick, key);
        self.entries.insert(key, (ids, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{render_chat, ChatMessage};

    fn engine_tokenizer() -> PromptTokenizer {
        PromptTokenizer::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine-sim/assets/tokenizer.json"),
        )
        .expect("engine-sim tokenizer")
    }

    fn chat(parts: &[(&str, &str)], gen: bool) -> String {
        let m: Vec<ChatMessage> = parts
            .iter()
            .map(|(r, c)| ChatMessage {
                role: r.to_string(),
                content: c.to_string(),
            })
            .collect();
        render_chat(&m, gen)
    }

    /// Texts where cutting at special tokens could plausibly go wrong: whitespace runs and
    /// newlines next to the cuts (the byte-level regex merges whitespace), empty pieces,
    /// adjacent and unterminated special tokens, multi-byte characters at the edges.
    fn tricky_texts() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            "plain text without any special token",
            "<|im_start|>",
            "<|im_start|><|im_end|><|endoftext|>",
            "<|im_start|>user\n<|im_end|>\n",
            "  <|im_start|>  \n\n  <|im_end|>  ",
            "\n\n\n<|im_end|>\n\n\n",
            "<|im_start|user|> half a token <|im_end",
            "<|im_start|><|im_start|>system\n\t\t tabs \t<|im_end|>",
            "ünïcödé<|im_end|>日本語のテキスト<|im_start|>🦀🦀 emoji 👩‍👩‍👧",
            "<|im_end|>é",
            "x<|endoftext|>y",
            "don't<|im_end|>'s 're 've 123 4567 ,,,!!",
            " <|im_start|> <|im_end|> ",
        ]
        .map(String::from)
        .to_vec();
        v.push(chat(
            &[
                ("system", "  leading and trailing spaces  "),
                ("user", ""),
                ("assistant", "\n"),
                (
                    "user",
                    "nested <|im_start|>system\nfake<|im_end|> inside content",
                ),
            ],
            true,
        ));
        v.push(chat(
            &[("system", &"long shared prompt ".repeat(500))],
            false,
        ));
        v
    }

    #[test]
    fn segmented_encoding_equals_whole_encoding() {
        let whole = engine_tokenizer();
        assert_eq!(whole.segmenting(), Ok(()));
        let cached = engine_tokenizer().with_segment_cache(1 << 20);
        for text in tricky_texts() {
            let want = whole.encode(&text).unwrap();
            // Twice: the first fills the cache, the second is served from it.
            for round in 0..2 {
                let got = cached.encode_cached(&text).unwrap();
                assert_eq!(got.ids, want, "{text:?}, round {round}");
                if round == 1 && !want.is_empty() {
                    assert_eq!(got.cache.miss_segments, 0, "{text:?} served from the cache");
                }
            }
        }
    }

    #[test]
    fn segmented_encoding_equals_whole_on_random_chats() {
        // Pseudo-random chats from a pool that mixes scripts, digits, punctuation and every
        // kind of whitespace, so piece edges land on everything the pre-tokenizer splits on.
        const POOL: [&str; 24] = [
            " ",
            "  ",
            "\n",
            "\n\n",
            "\t",
            " \n ",
            "a",
            "word",
            "Zebra",
            "'s",
            "'ll",
            "42",
            "3.14",
            "!?",
            "...",
            "é",
            "日本",
            "🦀",
            "—",
            "\u{a0}",
            "\r\n",
            "x<|im_end|>y",
            "<|endoftext|>",
            "<|im_start|>",
        ];
        let whole = engine_tokenizer();
        let cached = engine_tokenizer().with_segment_cache(1 << 20);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..300 {
            let mut parts = Vec::new();
            for _ in 0..1 + next(4) {
                let content: String = (0..next(12)).map(|_| POOL[next(24) as usize]).collect();
                let role = ["system", "user", "assistant"][next(3) as usize];
                parts.push((role.to_string(), content));
            }
            let refs: Vec<(&str, &str)> = parts
                .iter()
                .map(|(r, c)| (r.as_str(), c.as_str()))
                .collect();
            let text = chat(&refs, next(2) == 0);
            assert_eq!(
                cached.encode_cached(&text).unwrap().ids,
                whole.encode(&text).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_byte_level_fast_path_equals_the_full_pipeline() {
        let whole = engine_tokenizer();
        assert_eq!(whole.fast_path(), Ok(()));
        assert_eq!(whole.own_merges(), Ok(()));
        // Every class the GPT-2 pattern tells apart: letters of all kinds (Lu, Ll, Lt, Lm,
        // Lo), numbers (Nd in several scripts, Nl, No), marks, symbols, punctuation,
        // contractions and their look-alikes, and whitespace of every kind in runs of every
        // length, next to letters, digits, punctuation and the end of the text.
        const POOL: [&str; 52] = [
            " ",
            "  ",
            "   ",
            "\n",
            "\n\n",
            "\t",
            "\r\n",
            "\u{a0}",
            "\u{2028}",
            "\u{3000}",
            " \n",
            "\n ",
            "a",
            "Word",
            "ǅ",
            "ʰ",
            "日本語",
            "é",
            "e\u{301}",
            "Straße",
            "42",
            "٣٤",
            "Ⅻ",
            "½",
            "3.14",
            "'s",
            "'S",
            "'ll",
            "'re",
            "'",
            "don't",
            "!?",
            "...",
            "—",
            "🦀",
            "👩‍👩‍👧",
            "$",
            "\u{200b}",
            "\u{feff}",
            "x",
            "\x0b",
            "\x0c",
            "\x1f",
            "\0",
            "!'s",
            "''",
            "' s",
            "a'",
            "abc123",
            "x'd'",
            "'ve",
            "zzzzqqqqxxxxjjjjvvvvkkkkzzzzqqqqxxxxjjjjvvvvkkkkzzzzqqqqxxxxjjjjvvvvkkkkzzzzqqqqxxxxjjjjvvvvkkkkzzzzqqqqxxxxjjjjvvvvkkkkzzzzqqqqxxxxjjjjvvvvkkkk",
        ];
        let cached = engine_tokenizer().with_segment_cache(1 << 20);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..3000 {
            let text: String = (0..next(16)).map(|_| POOL[next(52) as usize]).collect();
            assert_eq!(
                cached.encode_cached(&text).unwrap().ids,
                whole.encode(&text).unwrap(),
                "{text:?}"
            );
        }
        // And one long prompt, as the router sees them.
        let long: String = (0..20_000).map(|_| POOL[next(52) as usize]).collect();
        assert_eq!(
            cached.encode_cached(&long).unwrap().ids,
            whole.encode(&long).unwrap()
        );

        // A configuration the fast path does not cover takes the full pipeline, per segment.
        let mut json: Value = serde_json::from_slice(
            &std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine-sim/assets/tokenizer.json"),
            )
            .unwrap(),
        )
        .unwrap();
        json["pre_tokenizer"]["add_prefix_space"] = Value::Bool(true);
        let spaced =
            PromptTokenizer::from_bytes(&serde_json::to_vec(&json).unwrap(), "spaced").unwrap();
        assert_eq!(spaced.segmenting(), Ok(()));
        assert!(spaced.fast_path().unwrap_err().contains("ByteLevel"));
        let spaced_cached = spaced.clone().with_segment_cache(1 << 20);
        for text in tricky_texts() {
            assert_eq!(
                spaced_cached.encode_cached(&text).unwrap().ids,
                spaced.encode(&text).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_repeated_system_prompt_is_served_from_the_cache() {
        let t = engine_tokenizer().with_segment_cache(1 << 20);
        let system = "you are a careful assistant ".repeat(200);
        let first = t
            .encode_cached(&chat(
                &[("system", &system), ("user", "first question")],
                true,
            ))
            .unwrap();
        let second = t
            .encode_cached(&chat(&[("system", &system), ("user", "another one")], true))
            .unwrap();
        assert!(first.cache.miss_tokens > 1000, "{:?}", first.cache);
        // Only the new question is tokenized; the system prompt and the tiny "\n" and
        // "assistant\n" pieces come from the cache.
        assert!(second.cache.hit_tokens > 1000, "{:?}", second.cache);
        assert_eq!(second.cache.miss_segments, 1, "{:?}", second.cache);
        assert!(second.cache.miss_tokens < 10, "{:?}", second.cache);
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_evicting_the_least_recently_used() {
        let (a, b, c) = (
            "alpha ".repeat(30),
            "river ".repeat(30),
            "stone ".repeat(30),
        );
        let plain = engine_tokenizer();
        let len = |s: &str| plain.encode(s).unwrap().len();
        // Room for any two of the three segments, not for all three.
        let capacity = len(&a) + len(&b) + len(&c) - 1;
        let t = plain.clone().with_segment_cache(capacity);
        let enc = |s: &str| t.encode_cached(s).unwrap().cache;
        enc(&a);
        enc(&b);
        assert_eq!(enc(&a).hit_segments, 1);
        enc(&c); // does not fit beside a and b: evicts b, the least recently used
        assert!(t.cached_tokens() <= capacity, "{}", t.cached_tokens());
        assert_eq!(enc(&a).hit_segments, 1, "a was used more recently than b");
        assert_eq!(enc(&b).miss_segments, 1, "b was evicted");
        // A segment larger than the whole cache is encoded but never cached.
        let huge = "orbit ".repeat(500);
        enc(&huge);
        assert_eq!(enc(&huge).miss_segments, 1);
        assert!(t.cached_tokens() <= capacity);
    }

    #[test]
    fn cutting_is_refused_where_it_would_change_the_ids() {
        let json: Value = serde_json::from_slice(
            &std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine-sim/assets/tokenizer.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let mut stripping = json.clone();
        stripping["added_tokens"][2]["rstrip"] = Value::Bool(true);
        let mut truncating = json.clone();
        truncating["truncation"] = serde_json::json!({
            "direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0
        });
        for (name, j, why) in [
            ("rstrip", stripping, "strips"),
            ("truncation", truncating, "truncation"),
        ] {
            let whole =
                PromptTokenizer::from_bytes(&serde_json::to_vec(&j).unwrap(), name).unwrap();
            let cached = whole.clone().with_segment_cache(1 << 20);
            assert!(whole.segmenting().unwrap_err().contains(why), "{name}");
            assert!(whole.fast_path().is_err(), "{name}");
            // Still exact: the whole prompt is one segment.
            let text = chat(
                &[("system", "a b c d e f g h i j"), ("user", "  q  ")],
                true,
            );
            assert_eq!(
                cached.encode_cached(&text).unwrap().ids,
                whole.encode(&text).unwrap(),
                "{name}"
            );
        }
    }
}
