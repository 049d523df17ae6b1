//! From a request body to the chained block hashes the prefix indexes are keyed by.
//!
//! The prompt is rendered and tokenized exactly as the engine does it (`muster_prefix`: the
//! same `tokenizer.json`, the same chat template), so the router's hashes equal the engine's
//! and its KV events can be matched. Without a tokenizer for the model the router falls back
//! to *byte blocks*: the UTF-8 bytes of the rendered prompt, `4 × blockSize` bytes per block.
//! Those still let the approximate index recognise shared prefixes, but never match engine
//! events; `muster_router_tokenize_total{mode="bytes"}` counts such requests.
//!
//! Text is tokenized through the tokenizer's segment cache
//! ([`PromptTokenizer::encode_cached`]): a chat prompt is cut at its special tokens, one
//! segment per message, and the ids of segments seen before (a shared system prompt) come
//! from an LRU bounded by `--tokenize-cache-tokens`, so only the new part of a prompt is
//! tokenized, by a byte-level fast path where the tokenizer allows one. The ids are the same
//! as tokenizing the whole prompt with `tokenizers` (the prefix crate's tests prove it against
//! the engine's tokenizer); `muster_router_tokenize_cache_*` count the hits, and the
//! "tokenizer loaded" log line says whether prompts are cut per message and take the fast path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use muster_prefix::block_hash::{block_hash, root_hash, HashContext};
use muster_prefix::chat::{parse_messages, render_chat};
use muster_prefix::tokenizer::{CacheUse, PromptTokenizer};
use serde_json::{Map, Value};

use crate::proxy::request::ApiKind;

/// ModelServer annotation naming the `tokenizer.json` of its model (a path on the router's
/// file system; in Kubernetes, a ConfigMap volume).
pub const TOKENIZER_ANNOTATION: &str = "router.muster.dev/tokenizer";

/// Bytes per token assumed by byte blocks.
pub const BYTES_PER_TOKEN: usize = 4;

/// How a request's blocks were computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizeMode {
    /// With the model's tokenizer (or token ids sent by the client).
    Tokenizer,
    /// Byte blocks: no tokenizer configured, or it failed.
    Bytes,
}

impl TokenizeMode {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenizeMode::Tokenizer => "tokenizer",
            TokenizeMode::Bytes => "bytes",
        }
    }
}

/// A request's prompt as blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestBlocks {
    /// Chained hashes of the full blocks, block 0 first.
    pub hashes: Vec<u64>,
    /// Prompt length in tokens (estimated as bytes / 4 for byte blocks).
    pub prompt_tokens: u64,
    /// Tokens per block the hashes were cut at.
    pub block_tokens: u64,
    /// How they were computed.
    pub mode: TokenizeMode,
    /// Segment-cache use while tokenizing (all zero when nothing was tokenized).
    pub cache: CacheUse,
}

/// The prompt of a request, as the engine will see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text (chat requests rendered through the template).
    Text(String),
    /// Token ids the client sent.
    Tokens(Vec<u32>),
}

/// The prompt of a chat or completions body, or `None` when it has none the engine would
/// accept (the engine then answers the error; the scorers just see no prefix).
pub fn prompt_of(kind: ApiKind, body: &Map<String, Value>) -> Option<Prompt> {
    match kind {
        ApiKind::Chat => {
            let messages = parse_messages(body.get("messages")?).ok()?;
            let add = body
                .get("add_generation_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            Some(Prompt::Text(render_chat(&messages, add)))
        }
        ApiKind::Completions => {
            let ids = |a: &[Value]| -> Option<Vec<u32>> {
                a.iter()
                    .map(|t| t.as_u64().and_then(|x| u32::try_from(x).ok()))
                    .collect()
            };
            match body.get("prompt")? {
                Value::String(s) => Some(Prompt::Text(s.clone())),
                Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => {
                    ids(a).map(Prompt::Tokens)
                }
                Value::Array(a) if a.len() == 1 => match &a[0] {
                    Value::String(s) => Some(Prompt::Text(s.clone())),
                    Value::Array(inner) => ids(inner).map(Prompt::Tokens),
                    _ => None,
                },
                _ => None,
            }
        }
        ApiKind::Other => None,
    }
}

/// Hashes of every full `block_size` block of `tokens`, at most `max_blocks` of them.
fn chain(ctx: &HashContext<'_>, tokens: &[u32], block_size: usize, max_blocks: usize) -> Vec<u64> {
    let mut parent = root_hash(ctx);
    tokens
        .chunks_exact(block_size)
        .take(max_blocks)
        .map(|b| {
            parent = block_hash(parent, b);
            parent
        })
        .collect()
}

/// Cuts a prompt into chained block hashes (see the module docs).
pub fn request_blocks(
    tokenizer: Option<&PromptTokenizer>,
    prompt: &Prompt,
    ctx: &HashContext<'_>,
    block_size: usize,
    max_blocks: usize,
) -> RequestBlocks {
    let block_size = block_size.max(1);
    let (tokens, cache) = match prompt {
        Prompt::Tokens(t) => (
            Some(std::borrow::Cow::Borrowed(t.as_slice())),
            CacheUse::default(),
        ),
        Prompt::Text(text) => match tokenizer.map(|t| t.encode_cached(text)) {
            Some(Ok(e)) => (Some(std::borrow::Cow::Owned(e.ids)), e.cache),
            _ => (None, CacheUse::default()),
        },
    };
    match tokens {
        Some(tokens) => RequestBlocks {
            hashes: chain(ctx, &tokens, block_size, max_blocks),
            prompt_tokens: tokens.len() as u64,
            block_tokens: block_size as u64,
            mode: TokenizeMode::Tokenizer,
            cache,
        },
        None => {
            let Prompt::Text(text) = prompt else {
                unreachable!("token prompts always have tokens")
            };
            let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
            RequestBlocks {
                hashes: chain(ctx, &bytes, block_size * BYTES_PER_TOKEN, max_blocks),
                prompt_tokens: (bytes.len() / BYTES_PER_TOKEN) as u64,
                block_tokens: block_size as u64,
                mode: TokenizeMode::Bytes,
                cache,
            }
        }
    }
}

/// Default `--tokenize-cache-tokens`: 4 Mi token ids (16 MiB), e.g. a hundred distinct 32k
/// system prompts plus the questions in flight.
pub const DEFAULT_CACHE_TOKENS: usize = 4 << 20;

/// Where each model's `tokenizer.json` is, and the loaded tokenizers (each file loaded once,
/// shared by every server and configuration generation that names it, with its segment cache).
pub struct Tokenizers {
    /// `--tokenizer MODEL=PATH`: by model name (served or public).
    by_model: HashMap<String, PathBuf>,
    /// `--tokenizer PATH`: for every model without its own.
    default: Option<PathBuf>,
    /// Segment-cache capacity of each loaded tokenizer, in tokens.
    cache_tokens: usize,
    loaded: Mutex<HashMap<PathBuf, Option<Arc<PromptTokenizer>>>>,
}

impl Default for Tokenizers {
    fn default() -> Self {
        Tokenizers {
            by_model: HashMap::new(),
            default: None,
            cache_tokens: DEFAULT_CACHE_TOKENS,
            loaded: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Tokenizers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizers")
            .field("by_model", &self.by_model)
            .field("default", &self.default)
            .field("cache_tokens", &self.cache_tokens)
            .finish()
    }
}

impl Tokenizers {
    /// From `--tokenizer` values: `MODEL=PATH` or a bare `PATH` (the default).
    pub fn from_flags(flags: &[String]) -> Result<Self, String> {
        let mut t = Tokenizers::default();
        for f in flags {
            match f.split_once('=') {
                Some((model, path)) if !model.is_empty() && !path.is_empty() => {
                    t.by_model.insert(model.to_string(), PathBuf::from(path));
                }
                Some(_) => return Err(format!("--tokenizer {f:?}: expected MODEL=PATH or PATH")),
                None => {
                    if t.default.replace(PathBuf::from(f)).is_some() {
                        return Err("--tokenizer PATH (without MODEL=) given twice".into());
                    }
                }
            }
        }
        Ok(t)
    }

    /// Sets each tokenizer's segment-cache capacity (`--tokenize-cache-tokens`; 0: no cache,
    /// every prompt is tokenized whole). Applies to tokenizers loaded afterwards.
    pub fn with_cache_tokens(mut self, tokens: usize) -> Self {
        self.cache_tokens = tokens;
        self
    }

    /// The tokenizer for a server: its annotation's path, else the flag for one of `models`
    /// (served name first, then public names), else the default. `None` when none is
    /// configured or the file cannot be loaded (logged once per path).
    pub fn resolve(
        &self,
        annotation: Option<&Path>,
        models: &[&str],
    ) -> Option<Arc<PromptTokenizer>> {
        let path = annotation
            .map(Path::to_path_buf)
            .or_else(|| models.iter().find_map(|m| self.by_model.get(*m).cloned()))
            .or_else(|| self.default.clone())?;
        let mut loaded = self.loaded.lock().expect("tokenizers lock");
        loaded
            .entry(path.clone())
            .or_insert_with(|| match PromptTokenizer::load(&path) {
                Ok(t) => {
                    let t = t.with_segment_cache(self.cache_tokens);
                    tracing::info!(
                        path = %path.display(),
                        vocab = t.vocab_size(),
                        cache_tokens = self.cache_tokens,
                        cached_per_message = %yes_or_why(t.segmenting()),
                        byte_level_fast_path = %yes_or_why(t.fast_path()),
                        own_bpe_merges = %yes_or_why(t.own_merges()),
                        "tokenizer loaded"
                    );
                    Some(Arc::new(t))
                }
                Err(e) => {
                    tracing::error!(error = %e, "tokenizer not usable; prefix scoring falls back to byte blocks");
                    None
                }
            })
            .clone()
    }
}

/// `yes`, or `no: why`, for the "tokenizer loaded" log line.
fn yes_or_why(r: Result<(), &str>) -> String {
    r.map_or_else(|why| format!("no: {why}"), |()| "yes".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn prompts_of_chat_and_completions() {
        let chat = obj(json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(
            prompt_of(ApiKind::Chat, &chat),
            Some(Prompt::Text(
                "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n".into()
            ))
        );
        let no_gen = obj(
            json!({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": false}),
        );
        assert_eq!(
            prompt_of(ApiKind::Chat, &no_gen),
            Some(Prompt::Text("<|im_start|>user\nhi<|im_end|>\n".into()))
        );
        for (p, want) in [
            (json!("abc"), Some(Prompt::Text("abc".into()))),
            (json!(["abc"]), Some(Prompt::Text("abc".into()))),
            (json!([1, 2, 3]), Some(Prompt::Tokens(vec![1, 2, 3]))),
            (json!([[4, 5]]), Some(Prompt::Tokens(vec![4, 5]))),
            (json!(["a", "b"]), None),
            (json!(7), None),
        ] {
            assert_eq!(
                prompt_of(ApiKind::Completions, &obj(json!({"prompt": p}))),
                want,
                "{p}"
            );
        }
        assert_eq!(prompt_of(ApiKind::Other, &chat), None);
    }

    #[test]
    fn byte_blocks_without_a_tokenizer() {
        let ctx = HashContext {
            model: "m",
            ..Default::default()
        };
        let text = "x".repeat(200);
        let b = request_blocks(None, &Prompt::Text(text.clone()), &ctx, 16, 1000);
        assert_eq!(b.mode, TokenizeMode::Bytes);
        assert_eq!(b.hashes.len(), 200 / 64);
        assert_eq!(b.prompt_tokens, 50);
        let longer = request_blocks(None, &Prompt::Text(text + "yyyy"), &ctx, 16, 1000);
        assert_eq!(
            longer.hashes[..3],
            b.hashes[..3],
            "shared prefix, shared blocks"
        );
        let capped = request_blocks(None, &Prompt::Tokens((0..100).collect()), &ctx, 16, 2);
        assert_eq!(capped.hashes.len(), 2);
        assert_eq!(capped.prompt_tokens, 100);
        assert_eq!(capped.mode, TokenizeMode::Tokenizer);
    }

    #[test]
    fn cached_tokenization_gives_the_engines_blocks_and_reuses_the_system_prompt() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine-sim/assets/tokenizer.json");
        let engine = PromptTokenizer::load(&path).unwrap();
        let router = Tokenizers::from_flags(&[path.display().to_string()])
            .unwrap()
            .resolve(None, &["m"])
            .expect("tokenizer loads");
        let ctx = HashContext {
            model: "m",
            ..Default::default()
        };
        let system = "You answer questions about the attached manual. ".repeat(100);
        let body = |question: &str| {
            obj(json!({"messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]}))
        };
        let mut cache = Vec::new();
        for question in ["  how do I start?  ", "and stop? ünïcödé 🦀"] {
            let prompt = prompt_of(ApiKind::Chat, &body(question)).unwrap();
            let Prompt::Text(text) = &prompt else {
                unreachable!()
            };
            let want = request_blocks(
                None,
                &Prompt::Tokens(engine.encode(text).unwrap()),
                &ctx,
                16,
                1000,
            );
            let got = request_blocks(Some(&router), &prompt, &ctx, 16, 1000);
            assert_eq!(got.hashes, want.hashes, "{question:?}");
            assert_eq!(got.prompt_tokens, want.prompt_tokens);
            cache.push(got.cache);
        }
        // The first request finds only its second "\n" between messages in the cache.
        assert!(cache[0].hit_tokens < 5, "{:?}", cache[0]);
        assert!(
            cache[1].hit_tokens > cache[1].miss_tokens * 10,
            "the second request reuses the system prompt: {:?}",
            cache[1]
        );
    }

    #[test]
    fn flags_parse() {
        let t = Tokenizers::from_flags(&["m=/a.json".into(), "/b.json".into()]).unwrap();
        assert_eq!(t.by_model["m"], PathBuf::from("/a.json"));
        assert_eq!(t.default, Some(PathBuf::from("/b.json")));
        assert!(Tokenizers::from_flags(&["=x".into()]).is_err());
        assert!(Tokenizers::from_flags(&["a".into(), "b".into()]).is_err());
        assert!(t
            .resolve(Some(Path::new("/nonexistent/t.json")), &[])
            .is_none());
    }
}
