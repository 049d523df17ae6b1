//! Measures the cache-aware hot path on one 32k-token chat prompt: render the chat template,
//! tokenize with the engine's tokenizer, hash the chained blocks, look them up in 8 endpoints'
//! approximate and precise indexes, and run the pure scheduler with `prefix-cache` (or
//! `kv-events`) + `least-request`. Prints p50/p99/max per stage and in total.
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
use muster_router::prefix::tokenize::{prompt_of, request_blocks};
use muster_router::proxy::request::ApiKind;
use muster_router::scheduler::{schedule, PluginKind, ScheduleRequest, SchedulerProfile};
use serde_json::json;

fn words(seed: u64, n: usize) -> String {
    const VOCAB: [&str; 16] = [
        "alpha", "river", "stone", "cloud", "market", "signal", "garden", "vector", "copper",
        "lantern", "meadow", "orbit", "harbor", "pencil", "quartz", "tunnel",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            VOCAB[(x % 16) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().map_or(500, |a| a.parse().expect("ITERATIONS"));
    let target_tokens: usize = args.next().map_or(32_768, |a| a.parse().expect("TOKENS"));
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine-sim/assets/tokenizer.json");
    let tok = PromptTokenizer::load(&path).expect("tokenizer");

    // Grow the system prompt until the rendered chat is about `target_tokens` tokens.
    let mut n_words = target_tokens / 2;
    let body = loop {
        let body = json!({"model": "m", "messages": [
            {"role": "system", "content": words(1, n_words)},
            {"role": "user", "content": words(2, 200)},
        ]});
        let prompt = prompt_of(ApiKind::Chat, body.as_object().unwrap()).unwrap();
        let muster_router::prefix::tokenize::Prompt::Text(t) = &prompt else {
            unreachable!()
        };
        let n = tok.encode(t).unwrap().len();
        if n >= target_tokens {
            break body;
        }
        n_words = n_words * target_tokens / n.max(1) + 16;
    };
    let object = body.as_object().unwrap().clone();
    let ctx = HashContext {
        model: "m",
        lora: None,
        cache_salt: None,
    };

    // 8 endpoints; half hold the prompt's head in both indexes, as after earlier requests.
    let blocks = request_blocks(
        Some(&tok),
        &prompt_of(ApiKind::Chat, &object).unwrap(),
        &ctx,
        16,
        8192,
    );
    let endpoints: Vec<Arc<EndpointState>> = (0..8)
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
        .collect();

    for plugin in [PluginKind::PrefixCache, PluginKind::KvEvents] {
        let profile = SchedulerProfile::parse(&format!(
            "plugins: [{{name: {}, weight: 2}}, {{name: least-request, weight: 1}}]",
            plugin.as_str()
        ))
        .unwrap();
        let precise = plugin == PluginKind::KvEvents;
        let (mut t_tok, mut t_hash, mut t_score, mut t_total) = (vec![], vec![], vec![], vec![]);
        let mut chosen = 0;
        for i in 0..iterations + 20 {
            let t0 = Instant::now();
            let prompt = prompt_of(ApiKind::Chat, &object).unwrap();
            let muster_router::prefix::tokenize::Prompt::Text(text) = &prompt else {
                unreachable!()
            };
            let tokens = tok.encode(text).unwrap();
            let t1 = Instant::now();
            let b = request_blocks(
                None,
                &muster_router::prefix::tokenize::Prompt::Tokens(tokens),
                &ctx,
                16,
                8192,
            );
            let t2 = Instant::now();
            let now = Instant::now();
            let views: Vec<_> = endpoints
                .iter()
                .map(|e| {
                    let mut v = e.view(now, Duration::from_secs(2));
                    v.prefix =
                        e.prefix
                            .lookup(&b.hashes, precise, now, Duration::from_secs(5), now);
                    v
                })
                .collect();
            let d = schedule(
                &views,
                &profile,
                &ScheduleRequest {
                    random_seed: i as u64,
                    prefix: Some(b.schedule_input()),
                    ..ScheduleRequest::default()
                },
            )
            .unwrap();
            let t3 = Instant::now();
            chosen = d.index;
            if i >= 20 {
                t_tok.push(t1 - t0);
                t_hash.push(t2 - t1);
                t_score.push(t3 - t2);
                t_total.push(t3 - t0);
            }
        }
        println!(
            "{}: {} prompt tokens, {} blocks, {} iterations, chose e{chosen}",
            plugin.as_str(),
            blocks.prompt_tokens,
            blocks.hashes.len(),
            iterations
        );
        for (name, v) in [
            ("render+tokenize", &mut t_tok),
            ("hash", &mut t_hash),
            ("lookup 8 endpoints + schedule", &mut t_score),
            ("total", &mut t_total),
        ] {
            println!(
                "  {name:<30} p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                pct(v, 0.5),
                pct(v, 0.99),
                pct(v, 1.0)
            );
        }
    }
}
