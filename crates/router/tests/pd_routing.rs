//! Prefill/decode routing against real `muster-engine-sim` processes in prefill and decode
//! roles: NIXL pairs stay inside their PD group and answer like one engine, a decoder that
//! would prefill only a short suffix serves alone, SGLang bootstrap legs meet in one room,
//! the per-decoder admission queue bounds prefills in flight and times out cleanly, and a failed
//! SGLang prefill leg fails its pair over instead of leaving the decoder waiting.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{chat, get, metric_sum, post, post_streamed, Router, Sim};
use serde_json::Value;

/// A PD endpoint: address, name, role, group.
type Pd<'a> = (SocketAddr, &'a str, &'a str, &'a str);

fn pd_config(
    engine: &str,
    connector: &str,
    endpoints: &[Pd<'_>],
    annotations: &[(&str, &str)],
) -> String {
    let mut y = String::from("modelServers:\n- metadata:\n    name: pd\n    annotations:\n");
    for (k, v) in annotations {
        y.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    if annotations.is_empty() {
        y.push_str("      {}\n");
    }
    y.push_str(&format!(
        "  spec:\n    inferenceEngine: {engine}\n    workloadSelector:\n      matchLabels: {{app: pd}}\n      pdGroup: {{groupKey: group, prefillLabels: {{role: prefill}}, decodeLabels: {{role: decode}}}}\n    workloadPort: {{port: 8000}}\n    kvConnector: {{type: {connector}}}\n  endpoints:\n"
    ));
    for (addr, name, role, group) in endpoints {
        y.push_str(&format!(
            "  - {{address: \"{addr}\", name: {name}, labels: {{role: {role}, group: {group}}}}}\n"
        ));
    }
    y.push_str("modelRoutes:\n- metadata: {name: m}\n  spec: {modelName: m, rules: [{targetModels: [{modelServerName: pd}]}]}\n");
    y
}

fn engine(role: &str, extra: &[&str]) -> Sim {
    let mut args = vec!["--model", "m", "--role", role];
    args.extend_from_slice(extra);
    Sim::start(&args)
}

/// A prompt of `words` words (2–3 tokens each), distinct per `seed` from its first block on
/// (so no engine has any of it cached).
fn prompt(seed: usize, words: usize) -> String {
    const VOCAB: [&str; 8] = [
        "alpha", "river", "stone", "cloud", "market", "signal", "garden", "vector",
    ];
    let body: Vec<&str> = (0..words)
        .map(|i| VOCAB[(i * 7 + seed * 13 + i / 5) % 8])
        .collect();
    format!("request {seed}: {}", body.join(" "))
}

async fn engine_metric(addr: SocketAddr, name: &str) -> f64 {
    metric_sum(&get(addr, "/metrics").await.text(), name, &[])
}

fn header<'a>(r: &'a common::Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Two PD groups of one prefill and one decode engine each (`p-a`, `d-a`, `p-b`, `d-b`),
/// behind a NIXL ModelServer that always disaggregates.
struct TwoGroups {
    engines: [Sim; 4],
    eps: [Pd<'static>; 4],
    router: Router,
}

async fn two_groups() -> TwoGroups {
    let fast: &[&str] = &["--time-scale", "50"];
    start_two_groups(
        [fast; 4],
        "vLLM",
        "nixl",
        &[("router.muster.dev/pd-min-uncached-tokens", "0")],
    )
    .await
}

/// Groups `a` and `b` as in [`two_groups`], with each engine's arguments (in the order
/// `p-a`, `d-a`, `p-b`, `d-b`) and the server's engine, connector and annotations.
async fn start_two_groups(
    args: [&[&str]; 4],
    inference_engine: &str,
    connector: &str,
    annotations: &[(&str, &str)],
) -> TwoGroups {
    let engines = [
        engine("prefill", args[0]),
        engine("decode", args[1]),
        engine("prefill", args[2]),
        engine("decode", args[3]),
    ];
    let eps = [
        (engines[0].addr, "p-a", "prefill", "a"),
        (engines[1].addr, "d-a", "decode", "a"),
        (engines[2].addr, "p-b", "prefill", "b"),
        (engines[3].addr, "d-b", "decode", "b"),
    ];
    let router = Router::start(
        &pd_config(inference_engine, connector, &eps, annotations),
        &[],
    )
    .await;
    TwoGroups {
        engines,
        eps,
        router,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nixl_pairs_stay_inside_their_group_and_short_suffixes_stay_on_the_decoder() {
    let TwoGroups {
        engines: [pa, da, pb, db],
        eps,
        router,
    } = two_groups().await;

    let n = 16;
    let mut groups_used = std::collections::BTreeSet::new();
    for i in 0..n {
        let stream = i % 2 == 1;
        let body = chat("m", &prompt(i, 200), 8, stream);
        let (status, prefill, decode) = if stream {
            let r = post_streamed(router.addr, "/v1/chat/completions", &[], &body, |_| {}).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let events = r.events();
            assert_eq!(
                events.last().map(String::as_str),
                Some("[DONE]"),
                "{events:?}"
            );
            let text: String = events
                .iter()
                .filter(|e| *e != "[DONE]")
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|v| {
                    v["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            assert!(!text.is_empty(), "the decoder streamed tokens: {events:?}");
            (
                r.status,
                header_of(&r.headers, "x-muster-prefill-endpoint"),
                header_of(&r.headers, "x-muster-endpoint"),
            )
        } else {
            let r = post(router.addr, "/v1/chat/completions", &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
            assert!(
                v.get("kv_transfer_params").is_none_or(Value::is_null),
                "{v}"
            );
            (
                r.status,
                header(&r, "x-muster-prefill-endpoint").map(str::to_string),
                header(&r, "x-muster-endpoint").map(str::to_string),
            )
        };
        assert_eq!(status, 200);
        let (p, d) = (
            prefill.expect("disaggregated"),
            decode.expect("decoder named"),
        );
        assert!(p.starts_with("p-") && d.starts_with("d-"), "{p} {d}");
        assert_eq!(
            p[2..],
            d[2..],
            "request {i}: prefill {p} and decode {d} are in different groups"
        );
        groups_used.insert(d[2..].to_string());
    }
    assert_eq!(
        groups_used.len(),
        2,
        "idle pairs share traffic: {groups_used:?}"
    );

    // Each prefill engine computed one token per leg; the decoders produced the answers.
    let mut prefill_requests = 0.0;
    let mut prefill_generated = 0.0;
    for p in [&pa, &pb] {
        prefill_requests += engine_metric(p.addr, "vllm:request_success_total").await;
        prefill_generated += engine_metric(p.addr, "vllm:generation_tokens_total").await;
    }
    let mut decode_generated = 0.0;
    for d in [&da, &db] {
        decode_generated += engine_metric(d.addr, "vllm:generation_tokens_total").await;
    }
    assert_eq!(prefill_requests, n as f64);
    assert_eq!(
        prefill_generated, n as f64,
        "prefill legs ask for max_tokens 1"
    );
    assert_eq!(decode_generated, 8.0 * n as f64);
    let m = router.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_pd_decisions_total",
            &["decision=\"disaggregated\""]
        ),
        n as f64
    );
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_pd_prefill_legs_total",
            &["outcome=\"ok\""]
        ),
        n as f64
    );
    drop(router);

    // Default threshold (256 uncached tokens): a short chat is not worth a hand-off.
    let router = Router::start(&pd_config("vLLM", "nixl", &eps, &[]), &[]).await;
    let r = post(
        router.addr,
        "/v1/chat/completions",
        &chat("m", "hi", 4, false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header(&r, "x-muster-prefill-endpoint"), None);
    assert!(header(&r, "x-muster-endpoint").is_some_and(|d| d.starts_with("d-")));
    let m = router.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_pd_decisions_total",
            &["decision=\"short_suffix\""]
        ),
        1.0
    );
    let after: f64 = engine_metric(pa.addr, "vllm:request_success_total").await
        + engine_metric(pb.addr, "vllm:request_success_total").await;
    assert_eq!(
        after, n as f64,
        "no prefill leg was sent for the short request"
    );
}

fn header_of(h: &hyper::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_bootstrap_legs_meet_in_one_room() {
    let args = ["--time-scale", "50", "--engine", "sglang"];
    let (p, d) = (engine("prefill", &args), engine("decode", &args));
    let eps = [
        (p.addr, "p-a", "prefill", "a"),
        (d.addr, "d-a", "decode", "a"),
    ];
    let router = Router::start(
        &pd_config(
            "SGLang",
            "http",
            &eps,
            &[
                ("router.muster.dev/pd-min-uncached-tokens", "0"),
                ("router.muster.dev/bootstrap-port", "workloadPort"),
            ],
        ),
        &[],
    )
    .await;
    let n = 6;
    for i in 0..n {
        let body = chat("m", &prompt(i, 300), 6, i % 2 == 0);
        let r = if i % 2 == 0 {
            let s = post_streamed(router.addr, "/v1/chat/completions", &[], &body, |_| {}).await;
            assert_eq!(s.status, 200, "{}", s.text());
            assert_eq!(s.events().last().map(String::as_str), Some("[DONE]"));
            s.status
        } else {
            let r = post(router.addr, "/v1/chat/completions", &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["usage"]["completion_tokens"], 6);
            assert_eq!(header(&r, "x-muster-prefill-endpoint"), Some("p-a"));
            r.status
        };
        assert_eq!(r, 200);
    }
    // The background prefill legs report when they end.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = metric_sum(
            &router.metrics().await,
            "muster_router_pd_prefill_legs_total",
            &["outcome=\"ok\""],
        );
        if ok == n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "prefill legs ok: {ok} of {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_bounds_prefills_per_decoder_and_times_out_cleanly() {
    // A slow prefill engine: ~2,000 prompt tokens take about a second of prefill.
    let p = engine("prefill", &["--time-scale", "0.05"]);
    let d = engine("decode", &["--time-scale", "50"]);
    let eps = [
        (p.addr, "p-a", "prefill", "a"),
        (d.addr, "d-a", "decode", "a"),
    ];
    let limit = [
        ("router.muster.dev/pd-min-uncached-tokens", "0"),
        ("router.muster.dev/max-prefill-per-decode", "1"),
    ];

    // Generous timeout: all queue, one prefill at a time, all answered.
    let mut annotations = limit.to_vec();
    annotations.push(("router.muster.dev/prefill-queue-timeout", "60s"));
    let router = Router::start(&pd_config("vLLM", "nixl", &eps, &annotations), &[]).await;
    let busiest = run_concurrently(&router, p.addr, 3, 0, 1000).await;
    for (status, _) in &busiest.replies {
        assert_eq!(*status, 200);
    }
    assert_eq!(
        busiest.max_at_prefill, 1.0,
        "one prefill leg at a time reached the engine"
    );
    drop(router);

    // Short timeout: the first holds the slot for about a second; the others give up.
    let mut annotations = limit.to_vec();
    annotations.push(("router.muster.dev/prefill-queue-timeout", "300ms"));
    let router = Router::start(&pd_config("vLLM", "nixl", &eps, &annotations), &[]).await;
    let run = run_concurrently(&router, p.addr, 3, 100, 2000).await;
    let ok = run.replies.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&(u16, Value)> = run.replies.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!((ok, refused.len()), (1, 2), "{:?}", run.replies);
    for (_, body) in refused {
        assert_eq!(body["error"]["code"], "prefill_queue_timeout", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("d-a"),
            "{body}"
        );
    }
    assert!(run.retry_after, "503s carry Retry-After");
    let m = router.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_pd_prefill_legs_total",
            &["outcome=\"queue_timeout\""]
        ),
        2.0
    );
    // Nothing is left holding the slot: the next request goes through.
    let r = post(
        router.addr,
        "/v1/chat/completions",
        &chat("m", &prompt(99, 100), 4, false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

struct ConcurrentRun {
    replies: Vec<(u16, Value)>,
    max_at_prefill: f64,
    retry_after: bool,
}

/// Sends `n` long requests at once (the first `stagger_ms` ahead of the rest) and samples the
/// prefill engine's running + waiting requests until all are answered.
async fn run_concurrently(
    router: &Router,
    prefill: SocketAddr,
    n: usize,
    stagger_ms: u64,
    seed: usize,
) -> ConcurrentRun {
    let addr = router.addr;
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(tokio::spawn(async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(stagger_ms)).await;
            }
            let r = post(
                addr,
                "/v1/chat/completions",
                &chat("m", &prompt(seed + i, 800), 4, false),
            )
            .await;
            let retry = r.headers.contains_key("retry-after");
            (
                r.status,
                serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null),
                retry,
            )
        }));
    }
    let mut max_at_prefill: f64 = 0.0;
    while tasks.iter().any(|t| !t.is_finished()) {
        let text = get(prefill, "/metrics").await.text();
        let load = metric_sum(&text, "vllm:num_requests_running", &[])
            + metric_sum(&text, "vllm:num_requests_waiting", &[]);
        max_at_prefill = max_at_prefill.max(load);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut replies = Vec::new();
    let mut retry_after = true;
    for t in tasks {
        let (s, v, retry) = t.await.unwrap();
        if s == 503 {
            retry_after &= retry;
        }
        replies.push((s, v));
    }
    ConcurrentRun {
        replies,
        max_at_prefill,
        retry_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_prefill_engine_costs_a_retry_on_another_pair_not_the_request() {
    let TwoGroups {
        engines: [mut pa, _da, _pb, _db],
        router,
        ..
    } = two_groups().await;
    pa.kill();
    for i in 0..8 {
        let r = post(
            router.addr,
            "/v1/chat/completions",
            &chat("m", &prompt(500 + i, 100), 4, false),
        )
        .await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(header(&r, "x-muster-prefill-endpoint"), Some("p-b"));
        assert_eq!(
            header(&r, "x-muster-endpoint"),
            Some("d-b"),
            "pairs stay in group b"
        );
    }
    let m = router.metrics().await;
    assert!(
        metric_sum(
            &m,
            "muster_router_pd_prefill_legs_total",
            &["outcome=\"connect_error\""]
        ) >= 1.0,
        "the dead engine was tried and counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sglang_prefill_leg_fails_the_pair_over_instead_of_leaving_the_decoder_waiting() {
    // Decoders wait for their room practically forever, so a decode leg whose prefill failed
    // would hang until the router's per-try timeout (300 s) unless the router drops it.
    let args = [
        "--time-scale",
        "50",
        "--engine",
        "sglang",
        "--bootstrap-timeout",
        "1000000",
    ];
    let broken: Vec<&str> = args.iter().copied().chain(["--error-rate", "1"]).collect();
    let TwoGroups {
        engines, router, ..
    } = start_two_groups(
        [&broken, &args, &args, &args],
        "SGLang",
        "http",
        &[
            ("router.muster.dev/pd-min-uncached-tokens", "0"),
            ("router.muster.dev/bootstrap-port", "workloadPort"),
        ],
    )
    .await;
    let failed_legs = || async {
        metric_sum(
            &router.metrics().await,
            "muster_router_pd_prefill_legs_total",
            &["outcome=\"status_5xx\""],
        )
    };
    // Pairs are chosen at random: send until group a's broken prefill has been tried.
    let mut sent = 0;
    while failed_legs().await == 0.0 {
        assert!(sent < 30, "30 requests never picked group a");
        let stream = sent % 2 == 0;
        let body = chat("m", &prompt(900 + sent, 200), 4, stream);
        let reply = async {
            if stream {
                let s =
                    post_streamed(router.addr, "/v1/chat/completions", &[], &body, |_| {}).await;
                assert_eq!(s.events().last().map(String::as_str), Some("[DONE]"));
                (
                    s.status,
                    header_of(&s.headers, "x-muster-prefill-endpoint"),
                    s.text(),
                )
            } else {
                let r = post(router.addr, "/v1/chat/completions", &body).await;
                let prefill = header(&r, "x-muster-prefill-endpoint").map(str::to_string);
                (r.status, prefill, r.text())
            }
        };
        let (status, prefill, text) = tokio::time::timeout(Duration::from_secs(30), reply)
            .await
            .unwrap_or_else(|_| panic!("request {sent} hung behind a failed prefill leg"));
        assert_eq!(status, 200, "request {sent}: {text}");
        assert_eq!(prefill.as_deref(), Some("p-b"), "request {sent}");
        sent += 1;
    }
    // The decoder of the broken pair never finished a request: its legs were dropped.
    assert_eq!(
        engine_metric(engines[1].addr, "vllm:request_success_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_inside_a_group_prefer_a_prefill_on_the_decoders_node() {
    let fast = ["--time-scale", "50"];
    let engines = [
        engine("prefill", &fast),
        engine("prefill", &fast),
        engine("decode", &fast),
    ];
    let eps = [
        (engines[0].addr, "p-far", "prefill", "a"),
        (engines[1].addr, "p-near", "prefill", "a"),
        (engines[2].addr, "d-a", "decode", "a"),
    ];
    let config = pd_config(
        "vLLM",
        "nixl",
        &eps,
        &[("router.muster.dev/pd-min-uncached-tokens", "0")],
    )
    .replace("name: p-far,", "name: p-far, node: n1,")
    .replace("name: p-near,", "name: p-near, node: n2,")
    .replace("name: d-a,", "name: d-a, node: n2,");
    let router = Router::start(&config, &[]).await;
    // Fresh prompts (no cache anywhere) one at a time (equal load): the node decides.
    for i in 0..8 {
        let r = post(
            router.addr,
            "/v1/chat/completions",
            &chat("m", &prompt(700 + i, 100), 4, false),
        )
        .await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(
            header(&r, "x-muster-prefill-endpoint"),
            Some("p-near"),
            "request {i}"
        );
    }
}

/// `in_flight_requests` of every endpoint in `/debug/endpoints`, by name.
async fn in_flight(router: &Router) -> std::collections::BTreeMap<String, u64> {
    let v = get(router.admin, "/debug/endpoints").await.json();
    let mut out = std::collections::BTreeMap::new();
    for list in ["endpoints", "prefill_endpoints"] {
        for e in v[0][list].as_array().unwrap() {
            out.insert(
                e["name"].as_str().unwrap().to_string(),
                e["in_flight_requests"].as_u64().unwrap(),
            );
        }
    }
    out
}

/// A request waiting for a prefill slot is load on its decoder and its prefill endpoint, so a
/// decoder with a long queue never looks idle to the scorers; pairs under a burst spread
/// evenly over the groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_for_a_prefill_slot_count_as_load_and_bursts_spread_over_groups() {
    // Slow prefills: ~2,000 prompt tokens take about a second.
    let slow: &[&str] = &["--time-scale", "0.05"];
    let fast: &[&str] = &["--time-scale", "50"];
    let annotations = [
        ("router.muster.dev/pd-min-uncached-tokens", "0"),
        ("router.muster.dev/max-prefill-per-decode", "1"),
        ("router.muster.dev/prefill-queue-timeout", "60s"),
    ];
    // Bound by name: `..` would drop (and kill) the engines at the end of this statement.
    let TwoGroups {
        router,
        engines: _engines,
        ..
    } = start_two_groups([slow, fast, slow, fast], "vLLM", "nixl", &annotations).await;
    let addr = router.addr;
    let send = |i: usize| {
        tokio::spawn(async move {
            let r = post(
                addr,
                "/v1/chat/completions",
                &chat("m", &prompt(3000 + i, 800), 4, false),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            header(&r, "x-muster-endpoint").unwrap().to_string()
        })
    };
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(send(i));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One leg per decoder is computing, two are queued behind it: all six count.
    let counts = in_flight(&router).await;
    assert_eq!(
        counts.values().sum::<u64>(),
        12,
        "each request counts on its decoder and its prefill endpoint: {counts:?}"
    );
    for (name, n) in &counts {
        assert_eq!(*n, 3, "{name} carries three of the six: {counts:?}");
    }
    let mut decoders = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        *decoders.entry(t.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        decoders.values().copied().collect::<Vec<_>>(),
        [3, 3],
        "{decoders:?}"
    );
    assert!(in_flight(&router).await.values().all(|n| *n == 0));
}
