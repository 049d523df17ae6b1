//! Cache-aware scheduling against real `muster-engine-sim` processes: the router's block
//! hashes equal the engine's (completions and chat), the precise index follows the engine's
//! KV events over ZMQ (stores, evictions, clears) and falls back when they stop, endpoint
//! removal purges the approximate index, prefix routing beats random on the engines' own
//! prefix-cache hit counters, and the prefill budget orders held requests.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{engine_sim_bin, get, metric_sum, post, post_streamed, Router};
use muster_api::networking::InferenceEngine;
use muster_prefix::block_hash::HashContext;
use muster_prefix::tokenizer::PromptTokenizer;
use muster_router::config::UpstreamProtocol;
use muster_router::endpoints::EndpointState;
use muster_router::prefix::kv_events;
use muster_router::prefix::tokenize::{prompt_of, request_blocks, RequestBlocks};
use muster_router::proxy::request::ApiKind;
use serde_json::{json, Value};
use zeromq::{Socket, SocketRecv};

/// The engine's built-in tokenizer file, which the router loads with `--tokenizer`.
fn tokenizer_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine-sim/assets/tokenizer.json")
}

/// An engine-sim process publishing KV events; killed on drop.
struct Engine {
    child: Option<Child>,
    addr: SocketAddr,
    kv_events: String,
}

impl Engine {
    fn start(extra: &[&str]) -> Engine {
        Engine::start_scaled("50", extra)
    }

    /// An engine at `--time-scale time_scale` (times faster than the modelled GPU).
    fn start_scaled(time_scale: &str, extra: &[&str]) -> Engine {
        let mut child = Command::new(engine_sim_bin())
            .args(["--listen", "127.0.0.1:0", "--kv-events-port", "0"])
            .args(["--time-scale", time_scale, "--model", "m"])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn muster-engine-sim");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut addr, mut kv) = (None, None);
        while kv.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("engine printed its addresses");
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["LISTENING", a] => addr = Some(a.parse().expect("address")),
                ["KV_EVENTS", _, ep] => kv = Some(ep.to_string()),
                _ => {}
            }
        }
        Engine {
            child: Some(child),
            addr: addr.expect("LISTENING line"),
            kv_events: kv.expect("KV_EVENTS line"),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        metric_sum(&get(self.addr, "/metrics").await.text(), name, &[])
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deterministic filler text of about `words` words, distinct per `seed`.
fn text(seed: u64, words: usize) -> String {
    const VOCAB: [&str; 16] = [
        "alpha", "river", "stone", "cloud", "market", "signal", "garden", "vector", "copper",
        "lantern", "meadow", "orbit", "harbor", "pencil", "quartz", "tunnel",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            VOCAB[(x % 16) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn router_blocks(body: &Value, kind: ApiKind, model: &str) -> RequestBlocks {
    // With the segment cache the router runs with, so the engine's events check its ids.
    let tok = PromptTokenizer::load(&tokenizer_path())
        .expect("tokenizer")
        .with_segment_cache(muster_router::prefix::tokenize::DEFAULT_CACHE_TOKENS);
    let prompt = prompt_of(kind, body.as_object().unwrap()).expect("prompt");
    let ctx = HashContext {
        model,
        lora: None,
        cache_salt: body.get("cache_salt").and_then(Value::as_str),
    };
    request_blocks(Some(&tok), &prompt, &ctx, 16, 100_000)
}

/// Collects the hashes of BlockStored events until `n` have arrived.
async fn stored_hashes(sub: &mut zeromq::SubSocket, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, sub.recv())
            .await
            .expect("events in time")
            .expect("recv");
        let (_, events) = kv_events::decode_message(&msg.into_vec()).expect("decodes");
        for e in events {
            if let muster_router::prefix::index::KvEvent::BlockStored { block_hashes } = e {
                out.extend(block_hashes);
            }
        }
    }
    out
}

#[tokio::test]
async fn router_block_hashes_equal_the_engines_for_completions_and_chat() {
    let engine = Engine::start(&[]);
    let mut sub = zeromq::SubSocket::new();
    sub.connect(&engine.kv_events).await.expect("connect");
    sub.subscribe("").await.expect("subscribe");
    tokio::time::sleep(Duration::from_millis(200)).await; // let the subscription reach PUB

    let cases = [
        (
            ApiKind::Completions,
            "/v1/completions",
            json!({"model": "m", "prompt": text(1, 300), "max_tokens": 1}),
        ),
        (
            ApiKind::Chat,
            "/v1/chat/completions",
            json!({"model": "m", "max_tokens": 1, "messages": [
                {"role": "system", "content": text(2, 200)},
                {"role": "user", "content": [{"type": "text", "text": text(3, 50)}, {"type": "text", "text": "naïve café 東京"}]},
            ]}),
        ),
        (
            ApiKind::Completions,
            "/v1/completions",
            json!({"model": "m", "prompt": text(1, 300), "max_tokens": 1, "cache_salt": "tenant-a"}),
        ),
    ];
    for (kind, path, body) in cases {
        let ours = router_blocks(&body, kind, "m");
        assert!(
            ours.hashes.len() > 20,
            "a long prompt: {} blocks",
            ours.hashes.len()
        );
        let r = post(engine.addr, path, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let prompt_tokens = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(
            prompt_tokens, ours.prompt_tokens,
            "same token count for {path}"
        );
        let theirs = stored_hashes(&mut sub, ours.hashes.len()).await;
        assert_eq!(
            theirs[..ours.hashes.len()],
            ours.hashes[..],
            "{path}: the engine stored exactly the blocks the router hashed"
        );
    }
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn precise_index_follows_stores_evictions_and_clears_then_falls_back_when_events_stop() {
    let body = |seed| json!({"model": "m", "prompt": text(seed, 400), "max_tokens": 1});
    let blocks: Vec<RequestBlocks> = (10..13)
        .map(|s| router_blocks(&body(s), ApiKind::Completions, "m"))
        .collect();
    // KV for two of the three prompts: the third forces evictions.
    let capacity = blocks[0].hashes.len() + blocks[1].hashes.len() + 4;
    let mut engine = Engine::start(&["--num-gpu-blocks", &capacity.to_string()]);
    let state = Arc::new(
        EndpointState::new(
            "e0",
            engine.addr,
            InferenceEngine::VLlm,
            UpstreamProtocol::Http1,
        )
        .with_kv_events(Some(engine.kv_events.clone())),
    );
    tokio::spawn(kv_events::subscribe(
        Arc::downgrade(&state),
        engine.kv_events.clone(),
    ));
    let stale = Duration::from_millis(300);
    until("subscribed", Duration::from_secs(10), || {
        state.prefix.precise_live(Instant::now(), stale)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let precise = |b: &RequestBlocks| {
        let now = Instant::now();
        state
            .prefix
            .lookup(&b.hashes, true, now, stale, now)
            .precise_blocks
            .expect("feed is live")
    };
    assert!(
        blocks[0].hashes.len() >= 16,
        "{} blocks",
        blocks[0].hashes.len()
    );

    assert_eq!(
        post(engine.addr, "/v1/completions", &body(10)).await.status,
        200
    );
    let n0 = blocks[0].hashes.len() as u32;
    until("A stored", Duration::from_secs(10), || {
        precise(&blocks[0]) == n0
    })
    .await;

    // B and C need more blocks than are free: the engine evicts A's (tail first).
    for s in [11, 12] {
        assert_eq!(
            post(engine.addr, "/v1/completions", &body(s)).await.status,
            200
        );
    }
    let n2 = blocks[2].hashes.len() as u32;
    until("C stored and A evicted", Duration::from_secs(10), || {
        precise(&blocks[2]) == n2 && precise(&blocks[0]) < n0
    })
    .await;
    let report = state.report(Instant::now(), stale);
    assert_eq!(report.prefix.prefix_index, "precise");
    assert!(
        report.prefix.precise_blocks.unwrap() <= capacity,
        "never more than the engine holds: {report:?}, capacity {capacity}"
    );

    // /reset_prefix_cache publishes AllBlocksCleared.
    let r = post(engine.addr, "/reset_prefix_cache", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    until("cleared", Duration::from_secs(10), || {
        precise(&blocks[2]) == 0
            && state.report(Instant::now(), stale).prefix.precise_blocks == Some(0)
    })
    .await;

    // Events stop: the engine dies. Once traffic routed to it goes unanswered for longer
    // than the staleness bound, the precise index is no longer trusted.
    engine.kill();
    state
        .prefix
        .record_routed(&blocks[1].hashes, Instant::now());
    tokio::time::sleep(stale + Duration::from_millis(100)).await;
    let now = Instant::now();
    let m = state
        .prefix
        .lookup(&blocks[1].hashes, true, now, stale, now);
    assert_eq!(m.precise_blocks, None, "fell back");
    assert_eq!(
        m.approx_blocks,
        blocks[1].hashes.len() as u32,
        "approximate still answers"
    );
    assert_eq!(state.report(now, stale).prefix.prefix_index, "approximate");
}

fn server_yaml(name: &str, engines: &[&Engine], kv_events: bool) -> String {
    let mut y = format!(
        "- metadata: {{name: {name}}}\n  spec:\n    model: m\n    inferenceEngine: vLLM\n    \
         workloadSelector: {{matchLabels: {{app: {name}}}}}\n    workloadPort: {{port: 8000}}\n  endpoints:\n"
    );
    for (i, e) in engines.iter().enumerate() {
        y.push_str(&format!("  - {{address: \"{}\", name: {name}-{i}", e.addr));
        if kv_events {
            y.push_str(&format!(", kvEvents: \"{}\"", e.kv_events));
        }
        y.push_str("}\n");
    }
    y
}

fn standalone(profile: &str, servers: &str) -> String {
    format!(
        "scheduler:\n{}\nmodelServers:\n{servers}modelRoutes:\n- metadata: {{name: m}}\n  spec:\n    \
         modelName: m\n    rules: [{{targetModels: [{{modelServerName: s}}]}}]\n",
        profile
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

const PREFIX_PROFILE: &str =
    "plugins: [{name: prefix-cache, weight: 2}, {name: least-request, weight: 1}]\n\
                              prefixCache: {blockSize: 16, capacityBlocks: 20000}";

async fn debug_endpoints(router: &Router) -> Vec<Value> {
    let v = get(router.admin, "/debug/endpoints").await.json();
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(o) if o.contains_key("approx_blocks") => out.push(v.clone()),
            Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&v, &mut out);
    out
}

#[tokio::test]
async fn removing_an_endpoint_purges_its_index() {
    let engines = [Engine::start(&[]), Engine::start(&[])];
    let both = standalone(
        PREFIX_PROFILE,
        &server_yaml("s", &[&engines[0], &engines[1]], false),
    );
    let router = Router::start(&both, &["--tokenizer", tokenizer_path().to_str().unwrap()]).await;
    for g in 0..6 {
        let body = json!({"model": "m", "prompt": text(100 + g, 200), "max_tokens": 1});
        assert_eq!(
            post(router.addr, "/v1/completions", &body).await.status,
            200
        );
    }
    let blocks = |eps: &[Value], name: &str| {
        eps.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["approx_blocks"].as_u64().unwrap())
    };
    let eps = debug_endpoints(&router).await;
    let total: u64 = ["s-0", "s-1"].iter().filter_map(|n| blocks(&eps, n)).sum();
    assert!(total > 0, "the index learned the routes: {eps:?}");
    let held = if blocks(&eps, "s-1").unwrap() > 0 {
        1
    } else {
        0
    };

    // Remove the endpoint that holds blocks, then bring it back: it starts empty.
    let others: Vec<&Engine> = (0..2).filter(|i| *i != held).map(|i| &engines[i]).collect();
    let mut one = server_yaml("s", &others, false);
    one = one.replace("name: s-0", &format!("name: s-{}", 1 - held));
    router.rewrite_config(&standalone(PREFIX_PROFILE, &one));
    let name = format!("s-{held}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocks(&debug_endpoints(&router).await, &name).is_some() {
        assert!(Instant::now() < deadline, "endpoint not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    router.rewrite_config(&both);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(b) = blocks(&debug_endpoints(&router).await, &name) {
            assert_eq!(b, 0, "a re-added endpoint starts with an empty index");
            break;
        }
        assert!(Instant::now() < deadline, "endpoint not re-added");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `groups × per_group` chat requests sharing a per-group system prompt, sequentially.
/// Returns the engines' prefix-cache hit tokens and, for every follow-up (all but each
/// group's first request), the fraction of its prompt the serving engine had cached (from
/// the response's `usage.prompt_tokens_details.cached_tokens`): near 1 means it landed where
/// its group's prefix was, 0 that it landed on a cold engine.
async fn run_workload(
    router: &Router,
    engines: &[Engine],
    groups: u64,
    per_group: u64,
) -> (f64, Vec<f64>) {
    let mut follow_ups = Vec::new();
    for g in 0..groups {
        let system = text(1000 + g, 600);
        for q in 0..per_group {
            let body = json!({"model": "m", "max_tokens": 2, "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": text(5000 + g * 100 + q, 20)},
            ]});
            let r = post(router.addr, "/v1/chat/completions", &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let usage = &r.json()["usage"];
            let prompt = usage["prompt_tokens"].as_f64().unwrap();
            let cached = usage["prompt_tokens_details"]["cached_tokens"]
                .as_f64()
                .unwrap_or(0.0);
            if q > 0 {
                follow_ups.push(cached / prompt);
            }
        }
    }
    let mut hits = 0.0;
    for e in engines {
        hits += e.metric("vllm:prefix_cache_hits_total").await;
    }
    (hits, follow_ups)
}

#[tokio::test]
async fn shared_prefixes_land_together_and_hit_more_than_random() {
    let tokenizer = tokenizer_path();
    let tok_flag = format!("m={}", tokenizer.display());
    let mut results = Vec::new();
    for (policy, profile, events) in [
        ("random", "plugins: [{name: random}]", false),
        ("prefix-cache", PREFIX_PROFILE, false),
        (
            "kv-events",
            "plugins: [{name: kv-events, weight: 2}, {name: least-request, weight: 1}]",
            true,
        ),
    ] {
        let engines = vec![Engine::start(&[]), Engine::start(&[]), Engine::start(&[])];
        let refs: Vec<&Engine> = engines.iter().collect();
        let yaml = standalone(profile, &server_yaml("s", &refs, events));
        let router = Router::start(&yaml, &["--tokenizer", &tok_flag]).await;
        if events {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !debug_endpoints(&router)
                .await
                .iter()
                .all(|e| e["prefix_index"] == "precise")
            {
                assert!(Instant::now() < deadline, "event feeds never became live");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let (hits, spread) = run_workload(&router, &engines, 8, 5).await;
        let spread: Vec<f64> = spread.iter().map(|f| (f * 100.0).round() / 100.0).collect();
        let m = router.metrics().await;
        if policy != "random" {
            assert!(
                metric_sum(&m, "muster_router_tokenize_total", &["mode=\"tokenizer\""]) >= 40.0,
                "prompts were tokenized with the model's tokenizer"
            );
            assert_eq!(
                metric_sum(&m, "muster_router_tokenize_total", &["mode=\"bytes\""]),
                0.0
            );
            assert!(
                spread.iter().all(|&f| f > 0.9),
                "{policy}: every follow-up lands where its group's prefix is cached: {spread:?}"
            );
        }
        if events {
            assert!(
                metric_sum(
                    &m,
                    "muster_router_prefix_lookups_total",
                    &["index=\"precise\""]
                ) > 0.0
            );
        }
        results.push((policy, hits, spread));
    }
    let hits = |p: &str| results.iter().find(|r| r.0 == p).unwrap().1;
    eprintln!("prefix-cache hit tokens: {results:?}");
    // Random lands a follow-up on a warm engine about 1/3 to 1/2 of the time; prefix
    // routing always (8 groups × 4 follow-ups × ~600 words of shared prompt).
    assert!(hits("prefix-cache") > 1.2 * hits("random"), "{results:?}");
    assert!(hits("kv-events") > 1.2 * hits("random"), "{results:?}");
}

/// Streams a completion; returns when its first chunk arrived and the prompt tokens the engine
/// found cached (from the usage chunk).
async fn timed_stream(router: SocketAddr, prompt: String) -> (Instant, f64) {
    let body = json!({"model": "m", "prompt": prompt, "max_tokens": 2, "stream": true,
        "stream_options": {"include_usage": true}});
    let mut first = None;
    let r = post_streamed(router, "/v1/completions", &[], &body, |_| {
        first.get_or_insert_with(Instant::now);
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cached = r
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_f64())
        .unwrap_or(0.0);
    (first.expect("a first chunk"), cached)
}

/// With `router.muster.dev/prefill-budget-tokens` below one cold prompt, the router keeps one
/// cold prefill at a time on the engine (Kthena's vLLM flags: 65,536-token steps). A request
/// whose prefix is cached gets its first token right after the cold prompt ahead of it, not in
/// one step with the next cold one (without the budget the engine batches the two), and the
/// second request of a new prefix waits for the first one's prefill, then finds it cached
/// instead of recomputing it in the same step.
#[tokio::test]
async fn prefill_budget_lets_cached_requests_overtake_and_siblings_reuse_a_pending_prefill() {
    let engine = Engine::start_scaled(
        "0.2",
        &["--profile", "deepseek-r1-distill-qwen-7b-h100-80gb"],
    );
    let servers = server_yaml("s", &[&engine], false).replace(
        "{name: s}",
        "{name: s, annotations: {router.muster.dev/prefill-budget-tokens: \"1000\"}}",
    );
    let tok_flag = format!("m={}", tokenizer_path().display());
    let router = Router::start(
        &standalone(PREFIX_PROFILE, &servers),
        &["--tokenizer", &tok_flag],
    )
    .await;
    // Prompts of ~5,000 tokens: a cold one is ~0.8 s of prefill here.
    let prompt =
        |system: u64, question: u64| format!("{} {}", text(system, 1500), text(question, 10));
    let stream = |p: String| tokio::spawn(timed_stream(router.addr, p));
    let gap = || tokio::time::sleep(Duration::from_millis(30));
    // Warm prefix A (not streamed, so not metered).
    let warm = json!({"model": "m", "prompt": prompt(1, 2), "max_tokens": 1});
    assert_eq!(
        post(router.addr, "/v1/completions", &warm).await.status,
        200
    );

    let cold1 = stream(prompt(10, 11));
    gap().await;
    let cold2 = stream(prompt(20, 21));
    gap().await;
    let cached = stream(prompt(1, 3));
    let (c1, _) = cold1.await.unwrap();
    let (c2, _) = cold2.await.unwrap();
    let (a, a_cached) = cached.await.unwrap();
    assert!(a_cached > 1000.0, "prefix A was cached: {a_cached}");
    assert!(
        c1 < a && a < c2 && c2 - a > (c2 - c1) / 2,
        "first tokens after the first cold one: the cached request at {:?}, the second cold one at {:?}",
        a - c1,
        c2 - c1
    );

    // A new prefix, two requests queued behind a cold one: the second reuses the first's
    // prefill.
    let busy = stream(prompt(40, 41));
    gap().await;
    let leader = stream(prompt(30, 31));
    gap().await;
    let sibling = stream(prompt(30, 32));
    let (l, _) = leader.await.unwrap();
    let (s, s_cached) = sibling.await.unwrap();
    busy.await.unwrap();
    assert!(l < s);
    assert!(
        s_cached > 1000.0,
        "the sibling found the leader's prefix cached, not recomputed: {s_cached}"
    );

    let m = router.metrics().await;
    assert_eq!(
        metric_sum(&m, "muster_router_prefill_budget_wait_seconds_count", &[]),
        6.0,
        "every streamed request went through the budget"
    );
    assert_eq!(
        metric_sum(&m, "muster_router_prefill_budget_bypassed_total", &[]),
        0.0
    );
    let v = get(router.admin, "/debug/endpoints").await.json();
    let text = v.to_string();
    assert!(
        text.contains("\"prefill_budget_held\":0") && text.contains("\"prefill_budget_tokens\":0"),
        "nothing left held or admitted: {text}"
    );
}

/// The budget's `prefill_budget_held` and `prefill_budget_tokens` on the one endpoint.
async fn budget_state(router: &Router) -> (u64, u64) {
    let v = get(router.admin, "/debug/endpoints").await.json();
    fn find(v: &Value, key: &str) -> Option<u64> {
        match v {
            Value::Object(m) => m
                .get(key)
                .and_then(Value::as_u64)
                .or_else(|| m.values().find_map(|x| find(x, key))),
            Value::Array(a) => a.iter().find_map(|x| find(x, key)),
            _ => None,
        }
    }
    let held = find(&v, "prefill_budget_held").expect("prefill_budget_held reported");
    let tokens = find(&v, "prefill_budget_tokens").expect("prefill_budget_tokens reported");
    (held, tokens)
}

/// The budget limits what the engine's *next* step takes, not what it holds: while another
/// request streams tokens (so the router sees the engine's step boundaries), the next cold
/// prompt is sent as soon as the one ahead of it is computing, and the engine finds it queued
/// when that step ends. With nothing streaming there is no boundary to see, and the next prompt
/// waits for the first token of the one ahead.
#[tokio::test]
async fn prefill_budget_sends_the_next_prompt_once_the_engine_is_computing_the_last() {
    let engine = Engine::start_scaled(
        "0.2",
        &["--profile", "deepseek-r1-distill-qwen-7b-h100-80gb"],
    );
    let servers = server_yaml("s", &[&engine], false).replace(
        "{name: s}",
        "{name: s, annotations: {router.muster.dev/prefill-budget-tokens: \"6000\"}}",
    );
    let tok_flag = format!("m={}", tokenizer_path().display());
    let router = Router::start(
        &standalone(PREFIX_PROFILE, &servers),
        &["--tokenizer", &tok_flag],
    )
    .await;
    // ~5,000-token prompts, one per budget; a cold one is ~0.8 s of prefill here, a decode
    // step ~35 ms.
    let prompt = |seed: u64| format!("{} {}", text(seed, 1500), text(seed + 1, 10));
    let stream = |p: String| tokio::spawn(timed_stream(router.addr, p));
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));

    let first = stream(prompt(10));
    pause(30).await;
    let second = stream(prompt(20));
    pause(200).await;
    let (held, tokens) = budget_state(&router).await;
    assert_eq!(
        held, 1,
        "nothing streams: the second waits for the first token"
    );
    assert!(tokens < 6000, "one prompt in prefill: {tokens}");
    first.await.unwrap();
    second.await.unwrap();

    // A long answer streaming alongside: every step ends with one of its tokens.
    let body = json!({"model": "m", "prompt": "keep decoding", "max_tokens": 150,
        "ignore_eos": true, "stream": true});
    let decoding = {
        let addr = router.addr;
        tokio::spawn(
            async move { post_streamed(addr, "/v1/completions", &[], &body, |_| {}).await },
        )
    };
    pause(300).await;
    // The third prompt goes at a random point of a decode step; a token seen less than
    // `STEP_GRACE` (5 ms) after it is not taken as a boundary, so one try in ~15 here misses
    // its step. A few tries, each with new prompts; any one shows the behaviour.
    let mut seen = Vec::new();
    for attempt in 0..4u64 {
        let third = stream(prompt(30 + 10 * attempt));
        pause(30).await;
        let fourth = stream(prompt(70 + 10 * attempt));
        pause(200).await;
        let (held, tokens) = budget_state(&router).await;
        let (t3, _) = third.await.unwrap();
        let (t4, _) = fourth.await.unwrap();
        assert!(t3 < t4, "the engine took them in order");
        seen.push((held, tokens));
        if held == 0 && tokens > 6000 {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|&(held, tokens)| held == 0 && tokens > 6000),
        "the fourth prompt was sent while the third computed (none held, two in prefill): {seen:?}"
    );
    assert_eq!(decoding.await.unwrap().status, 200);
    assert_eq!(budget_state(&router).await, (0, 0), "nothing left behind");
}
