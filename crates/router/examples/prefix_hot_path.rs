//! Measures the cache-aware hot path on chat prompts of about `TOKENS` tokens: render the chat
//! template, tokenize with the engine's tokenizer (through the router's segment cache), hash
//! the chained blocks, then look them up in 8 endpoints' approximate and precise indexes and
//! run the pure scheduler with `prefix-cache` or `kv-events` + `least-request`. Two scenarios:
//!
//! * **warm**: one shared system prompt of `TOKENS` tokens and a new ~256-token question per
//!   request (the generated-shared-prefix workload): the system prompt's ids come from the
//!   segment cache;
//! * **cold**: every request a different prompt of `TOKENS` tokens: everything is tokenized.
//!
//! Prints p50/p99/max per stage and in total for each.
//!
//! ```text
//! cargo build --release -p muster-router --example prefix_hot_path
//! target/release/examples/prefix_hot_path [ITERATIONS] [TOKENS]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_api::networking::InferenceEngine;
use muster_prefix::block_hash::HashContext;
use muster_prefix::tokenizer::PromptTokenizer;
use muster_router::config::UpstreamProtocol;
use muster_router::endpoints::EndpointState;
use muster_router::prefix::index::KvEvent;
use muster_router::prefix::tokenize::{
    prompt_of, request_blocks, Prompt, RequestBlocks, DEFAULT_CACHE_TOKENS,
};
use muster_router::proxy::request::ApiKind;
use muster_router::scheduler::{schedule, PluginKind, ScheduleRequest, SchedulerProfile};
use serde_json::{json, Map, Value};

/// Warm-up requests per scenario, not counted.
const WARMUP: usize = 20;
/// Approximate tokens of the per-request question in the warm scenario.
const QUESTION_TOKENS: usize = 256;
const BLOCK: usize = 16;
const MAX_BLOCKS: usize = 1 << 16;

/// `n` pseudo-random words for `seed`: syllable combinations (tens of thousands of distinct
/// words, so the tokenizer does real merging work), with numbers, punctuation and line breaks.
fn text(seed: u64, n: usize) -> String {
    const SYLLABLES: [&str; 32] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ber", "con", "dan", "fel", "gor", "hin",
        "jus", "kel", "lam", "mor", "nis", "pol", "quin", "ras", "sor", "tem", "ul", "vin", "wes",
        "xa", "yor", "zu", "ae", "io",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            out.push(if i % 61 == 0 { '\n' } else { ' ' });
        }
        let r = next();
        if r % 23 == 0 {
            out.push_str(&(r % 10_000).to_string());
        } else {
            for s in 0..1 + (r >> 8) % 3 {
                let syl = SYLLABLES[((r >> (16 + 5 * s)) % 32) as usize];
                if s == 0 && r % 11 == 0 {
                    let mut c = syl.chars();
                    out.extend(c.next().map(|c| c.to_ascii_uppercase()));
                    out.push_str(c.as_str());
                } else {
                    out.push_str(syl);
                }
            }
        }
        match (r >> 40) % 17 {
            0 => out.push(','),
            1 => out.push('.'),
            _ => {}
        }
    }
    out
}

fn chat(system: &str, question: &str) -> Map<String, Value> {
    json!({"model": "m", "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ]})
    .as_object()
    .unwrap()
    .clone()
}

fn prompt_text(body: &Map<String, Value>) -> String {
    match prompt_of(ApiKind::Chat, body) {
        Some(Prompt::Text(t)) => t,
        other => panic!("a chat renders to text, got {other:?}"),
    }
}

/// Words of `text(seed, ·)` whose chat with `question` is within 1% of `target` tokens.
fn words_for(tok: &PromptTokenizer, seed: u64, question: &str, target: usize) -> usize {
    let tokens = |n: usize| {
        tok.encode(&prompt_text(&chat(&text(seed, n), question)))
            .unwrap()
            .len()
    };
    let sample = 2000;
    let per_word = tokens(sample) as f64 / sample as f64;
    let mut n = ((target as f64 / per_word) as usize).max(1);
    for _ in 0..8 {
        let t = tokens(n);
        if t.abs_diff(target) * 100 <= target {
            break;
        }
        n = ((n as f64 * target as f64 / t as f64) as usize).max(1);
    }
    n
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// 8 endpoints; half hold the head of `blocks` in both indexes, as after earlier requests.
fn endpoints(blocks: &RequestBlocks) -> Vec<Arc<EndpointState>> {
    (0..8)
        .map(|i| {
            let e = EndpointState::new(
                &format!("e{i}"),
                format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                InferenceEngine::VLlm,
                UpstreamProtocol::Http1,
            )
            .with_kv_events(Some("tcp://127.0.0.1:1".into()));
            let e = Arc::new(e);
            e.configure_prefix(100_000, Duration::from_secs(5));
            if i % 2 == 0 {
                let head = &blocks.hashes[..blocks.hashes.len() * (i + 2) / 10];
                e.prefix.record_routed(head, Instant::now());
                e.prefix.on_connected(true);
                e.prefix.apply_events(
                    &[KvEvent::BlockStored {
                        block_hashes: head.to_vec(),
                    }],
                    false,
                    Instant::now(),
                );
            }
            e
        })
        .collect()
}

/// Lookup in every endpoint's indexes, then the scheduler; returns the chosen endpoint.
fn score(
    endpoints: &[Arc<EndpointState>],
    profile: &SchedulerProfile,
    precise: bool,
    b: &RequestBlocks,
    seed: u64,
) -> usize {
    let now = Instant::now();
    let views: Vec<_> = endpoints
        .iter()
        .map(|e| {
            let mut v = e.view(now, Duration::from_secs(2));
            v.prefix = e
                .prefix
                .lookup(&b.hashes, precise, now, Duration::from_secs(5), now);
            v
        })
        .collect();
    schedule(
        &views,
        profile,
        &ScheduleRequest {
            random_seed: seed,
            prefix: Some(b.schedule_input()),
            ..ScheduleRequest::default()
        },
    )
    .unwrap()
    .index
}

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().map_or(500, |a| a.parse().expect("ITERATIONS"));
    let target_tokens: usize = args.next().map_or(32_768, |a| a.parse().expect("TOKENS"));
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine-sim/assets/tokenizer.json");
    // The tokenizer as the router loads it, with its segment cache.
    let tok = PromptTokenizer::load(&path)
        .expect("tokenizer")
        .with_segment_cache(DEFAULT_CACHE_TOKENS);
    tok.segmenting().expect("the engine's tokenizer can be cut");
    let ctx = HashContext {
        model: "m",
        lora: None,
        cache_salt: None,
    };
    let profiles: Vec<(PluginKind, SchedulerProfile)> =
        [PluginKind::PrefixCache, PluginKind::KvEvents]
            .into_iter()
            .map(|plugin| {
                let p = SchedulerProfile::parse(&format!(
                    "plugins: [{{name: {}, weight: 2}}, {{name: least-request, weight: 1}}]",
                    plugin.as_str()
                ))
                .unwrap();
                (plugin, p)
            })
            .collect();

    // Sizes: a ~256-token question, and a system prompt bringing the chat to TOKENS.
    let question_words = {
        let q = |n: usize| tok.encode(&text(7, n)).unwrap().len();
        let per_word = q(1000) as f64 / 1000.0;
        ((QUESTION_TOKENS as f64 / per_word) as usize).max(1)
    };
    let system_words = words_for(&tok, 1, &text(2, question_words), target_tokens);
    let system = text(1, system_words);
    let warm_blocks = request_blocks(
        Some(&tok),
        &Prompt::Text(prompt_text(&chat(&system, &text(2, question_words)))),
        &ctx,
        BLOCK,
        MAX_BLOCKS,
    );
    let endpoints = endpoints(&warm_blocks);

    for scenario in ["warm", "cold"] {
        let mut stages: Vec<(&str, Vec<Duration>)> = [
            "render (parse messages + template)",
            "tokenize",
            "hash",
            "lookup 8 endpoints + schedule (prefix-cache)",
            "lookup 8 endpoints + schedule (kv-events)",
            "total (prefix-cache)",
            "total (kv-events)",
        ]
        .into_iter()
        .map(|s| (s, Vec::with_capacity(iterations)))
        .collect();
        let (mut tokens_min, mut tokens_max, mut cache_hit, mut cache_all) = (u64::MAX, 0, 0, 0);
        let mut chosen = [0usize; 2];
        for i in 0..iterations + WARMUP {
            // Built outside the timed region: a request body as the proxy holds it.
            let seed = 1000 + i as u64;
            let body = match scenario {
                "warm" => chat(&system, &text(seed, question_words)),
                _ => chat(
                    &text(seed * 2, system_words),
                    &text(seed * 2 + 1, question_words),
                ),
            };
            let t0 = Instant::now();
            let Some(Prompt::Text(rendered)) = prompt_of(ApiKind::Chat, &body) else {
                unreachable!("a chat renders to text")
            };
            let t1 = Instant::now();
            let encoded = tok.encode_cached(&rendered).unwrap();
            let t2 = Instant::now();
            let b = request_blocks(None, &Prompt::Tokens(encoded.ids), &ctx, BLOCK, MAX_BLOCKS);
            let t3 = Instant::now();
            chosen[0] = score(&endpoints, &profiles[0].1, false, &b, seed);
            let t4 = Instant::now();
            chosen[1] = score(&endpoints, &profiles[1].1, true, &b, seed);
            let t5 = Instant::now();
            if i >= WARMUP {
                let prep = t3 - t0;
                for (k, d) in [
                    t1 - t0,
                    t2 - t1,
                    t3 - t2,
                    t4 - t3,
                    t5 - t4,
                    prep + (t4 - t3),
                    prep + (t5 - t4),
                ]
                .into_iter()
                .enumerate()
                {
                    stages[k].1.push(d);
                }
                tokens_min = tokens_min.min(b.prompt_tokens);
                tokens_max = tokens_max.max(b.prompt_tokens);
                cache_hit += encoded.cache.hit_tokens;
                cache_all += encoded.cache.hit_tokens + encoded.cache.miss_tokens;
            }
        }
        println!(
            "{scenario}: {tokens_min}..{tokens_max} prompt tokens ({} blocks of {BLOCK}), \
             {iterations} iterations, {:.1}% of tokens from the segment cache, chose e{} / e{}",
            tokens_max as usize / BLOCK,
            100.0 * cache_hit as f64 / cache_all.max(1) as f64,
            chosen[0],
            chosen[1],
        );
        for (name, v) in &mut stages {
            println!(
                "  {name:<46} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
                pct(v, 0.5),
                pct(v, 0.99),
                pct(v, 1.0)
            );
        }
    }
}
