//! The proxy's side of cache-aware routing: turn a request into blocks once, look them up in
//! every endpoint's indexes for the snapshot, and record where the request went.

use std::sync::Arc;
use std::time::Instant;

use muster_prefix::block_hash::HashContext;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde_json::{Map, Value};

use super::tokenize::{prompt_of, request_blocks, Prompt, RequestBlocks, TokenizeMode, Tokenizers};
use super::PrefixMatch;
use crate::config::table::ServerRuntime;
use crate::endpoints::EndpointState;
use crate::proxy::request::ApiKind;
use crate::scheduler::{PrefixRequest, SchedulerProfile};

/// Tokenizers plus the prefix metrics.
pub struct PrefixRuntime {
    /// Configured tokenizers.
    pub tokenizers: Arc<Tokenizers>,
    tokenize: [IntCounter; 2],
    lookups: [IntCounter; 3],
    no_prompt: IntCounter,
    /// Segment-cache lookups and their tokens, `[hit, miss]`.
    cache_segments: [IntCounter; 2],
    cache_tokens: [IntCounter; 2],
}

impl PrefixRuntime {
    /// Registers `muster_router_tokenize_total{mode}`,
    /// `muster_router_tokenize_cache_segments_total{result}`,
    /// `muster_router_tokenize_cache_tokens_total{result}` and
    /// `muster_router_prefix_lookups_total{index}` in `registry`.
    pub fn new(tokenizers: Arc<Tokenizers>, registry: &Registry) -> Self {
        let tokenize = IntCounterVec::new(
            Opts::new(
                "muster_router_tokenize_total",
                "Prompts cut into prefix blocks, by mode: tokenizer (the model's tokenizer.json \
                 or client token ids) or bytes (no tokenizer configured: byte blocks), or none \
                 (no prompt the router could read).",
            ),
            &["mode"],
        )
        .expect("valid counter");
        let lookups = IntCounterVec::new(
            Opts::new(
                "muster_router_prefix_lookups_total",
                "Per-endpoint prefix lookups by index: approximate (prefix-cache), precise \
                 (kv-events with a live event feed) or fallback (kv-events scored from the \
                 approximate index because the endpoint's events are missing or stopped).",
            ),
            &["index"],
        )
        .expect("valid counter");
        let cache_segments = IntCounterVec::new(
            Opts::new(
                "muster_router_tokenize_cache_segments_total",
                "Prompt segments (one per chat message, cut at special tokens) looked up in the \
                 tokenizer's segment cache, by result: hit (ids reused) or miss (tokenized).",
            ),
            &["result"],
        )
        .expect("valid counter");
        let cache_tokens = IntCounterVec::new(
            Opts::new(
                "muster_router_tokenize_cache_tokens_total",
                "Prompt tokens by segment-cache result: hit (reused without tokenizing) or \
                 miss (tokenized).",
            ),
            &["result"],
        )
        .expect("valid counter");
        // Registration fails only if a second runtime shares the registry; then the counters
        // still count, just unexported.
        let _ = registry.register(Box::new(tokenize.clone()));
        let _ = registry.register(Box::new(lookups.clone()));
        let _ = registry.register(Box::new(cache_segments.clone()));
        let _ = registry.register(Box::new(cache_tokens.clone()));
        PrefixRuntime {
            tokenizers,
            tokenize: [
                tokenize.with_label_values(&["tokenizer"]),
                tokenize.with_label_values(&["bytes"]),
            ],
            no_prompt: tokenize.with_label_values(&["none"]),
            lookups: [
                lookups.with_label_values(&["approximate"]),
                lookups.with_label_values(&["precise"]),
                lookups.with_label_values(&["fallback"]),
            ],
            cache_segments: [
                cache_segments.with_label_values(&["hit"]),
                cache_segments.with_label_values(&["miss"]),
            ],
            cache_tokens: [
                cache_tokens.with_label_values(&["hit"]),
                cache_tokens.with_label_values(&["miss"]),
            ],
        }
    }

    /// The request's blocks, when the profile uses a prefix plugin and the body has a prompt.
    /// `model` is the name the engine serves (after rewrite), `lora` the adapter if any.
    pub fn request_blocks(
        &self,
        server: &ServerRuntime,
        profile: &SchedulerProfile,
        kind: ApiKind,
        body: &Map<String, Value>,
        model: &str,
        lora: Option<&str>,
    ) -> Option<RequestBlocks> {
        if !profile.uses_prefix() {
            return None;
        }
        let Some(prompt) = prompt_of(kind, body) else {
            self.no_prompt.inc();
            return None;
        };
        let ctx = HashContext {
            model,
            lora,
            cache_salt: body.get("cache_salt").and_then(Value::as_str),
        };
        let args = &profile.prefix_cache;
        let blocks = request_blocks(
            server.tokenizer.as_deref(),
            &prompt,
            &ctx,
            args.block_size,
            args.max_blocks,
        );
        self.tokenize[match blocks.mode {
            TokenizeMode::Tokenizer => 0,
            TokenizeMode::Bytes => 1,
        }]
        .inc();
        self.count_cache_use(&blocks.cache);
        Some(blocks)
    }

    /// The prompt's length in the model's tokens (what the engine will report as
    /// `prompt_tokens`), when the server has a tokenizer; for token limits and fair queuing
    /// when the profile does not cut the prompt into blocks anyway.
    pub fn prompt_tokens(
        &self,
        server: &ServerRuntime,
        kind: ApiKind,
        body: &Map<String, Value>,
    ) -> Option<u64> {
        let tokenizer = server.tokenizer.as_deref()?;
        match prompt_of(kind, body)? {
            Prompt::Tokens(ids) => Some(ids.len() as u64),
            Prompt::Text(text) => {
                let e = tokenizer.encode_cached(&text).ok()?;
                self.count_cache_use(&e.cache);
                Some(e.ids.len() as u64)
            }
        }
    }

    /// Adds one tokenization's segment-cache hits and misses to the metrics.
    fn count_cache_use(&self, c: &muster_prefix::tokenizer::CacheUse) {
        self.cache_segments[0].inc_by(c.hit_segments);
        self.cache_segments[1].inc_by(c.miss_segments);
        self.cache_tokens[0].inc_by(c.hit_tokens);
        self.cache_tokens[1].inc_by(c.miss_tokens);
    }

    /// How much of `blocks` `endpoint` holds, per the index the profile scores with.
    pub fn lookup(
        &self,
        endpoint: &EndpointState,
        blocks: &RequestBlocks,
        profile: &SchedulerProfile,
        now: Instant,
    ) -> PrefixMatch {
        let args = &profile.prefix_cache;
        let precise = profile.weight(crate::scheduler::PluginKind::KvEvents) > 0.0;
        let since = now.checked_sub(args.predict_window()).unwrap_or(now);
        let m = endpoint.prefix.lookup(
            &blocks.hashes,
            precise,
            now,
            args.events_stale_after(),
            since,
        );
        self.lookups[match (precise, m.precise_blocks.is_some()) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 2,
        }]
        .inc();
        m
    }
}

impl RequestBlocks {
    /// What the scheduler needs to know about the prompt.
    pub fn schedule_input(&self) -> PrefixRequest {
        PrefixRequest {
            total_blocks: self.hashes.len() as u32,
            block_tokens: self.block_tokens,
            prompt_tokens: self.prompt_tokens,
        }
    }

    /// Prompt tokens not covered by `cached` blocks.
    pub fn uncached_tokens(&self, cached: u32) -> u64 {
        self.prompt_tokens
            .saturating_sub(u64::from(cached) * self.block_tokens)
    }
}
