//! The router against real engine-simulator processes on 127.0.0.1: what a client sees.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

const MODEL: &str = "llama";
/// What the simulator serves by default; ModelServer `model` rewrites the public name to it.
const ENGINE_MODEL: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

fn one_server(addrs: Vec<std::net::SocketAddr>, extra: &str) -> String {
    config(
        MODEL,
        &[("llama", Some(ENGINE_MODEL), addrs)],
        "- targetModels: [{modelServerName: llama}]",
        extra,
    )
}

#[tokio::test]
async fn responses_through_the_router_equal_direct_ones() {
    // Two engines with the same seed answer the same request sequence identically; one is
    // reached directly, the other through the router.
    let direct = Sim::start(&["--time-scale", "50", "--seed", "7"]);
    let behind = Sim::start(&["--time-scale", "50", "--seed", "7"]);
    let model = "meta-llama/Meta-Llama-3-8B-Instruct";
    let cfg = config(
        model,
        &[("llama", None, vec![behind.addr])],
        "- targetModels: [{modelServerName: llama}]",
        "",
    );
    let router = Router::start(&cfg, &[]).await;

    // Non-streaming chat and completions.
    for (path, body) in [
        (
            "/v1/chat/completions",
            chat(model, "Tell me about routers.", 12, false),
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "Once upon a time", "max_tokens": 9, "ignore_eos": true}),
        ),
    ] {
        let a = post(direct.addr, path, &body).await;
        let b = post(router.addr, path, &body).await;
        assert_eq!((a.status, b.status), (200, 200), "{}", b.text());
        assert_eq!(normalise(a.json()), normalise(b.json()), "{path}");
        assert!(b.headers.contains_key("x-request-id"));
    }

    // Streaming without usage: the router asks the engine for usage but hides that chunk.
    let body = chat(model, "Stream me a story.", 10, true);
    let a = post_streamed(direct.addr, "/v1/chat/completions", &[], &body, |_| {}).await;
    let b = post_streamed(router.addr, "/v1/chat/completions", &[], &body, |_| {}).await;
    assert_eq!((a.status, b.status), (200, 200));
    assert!(b.error.is_none(), "{:?}", b.error);
    let norm = |s: &Streamed| -> Vec<Value> {
        s.events()
            .iter()
            .map(|e| {
                if e == "[DONE]" {
                    json!("[DONE]")
                } else {
                    normalise(serde_json::from_str(e).unwrap())
                }
            })
            .collect()
    };
    assert_eq!(norm(&a), norm(&b));
    assert!(
        !b.text().contains("\"choices\":[]"),
        "injected usage chunk leaked: {}",
        b.text()
    );
    assert!(b.text().ends_with("data: [DONE]\n\n"));

    // Streaming with usage requested by the client: passed through.
    let mut body = chat(model, "Stream again.", 6, true);
    body["stream_options"] = json!({"include_usage": true});
    let a = post_streamed(direct.addr, "/v1/chat/completions", &[], &body, |_| {}).await;
    let b = post_streamed(router.addr, "/v1/chat/completions", &[], &body, |_| {}).await;
    assert_eq!(norm(&a), norm(&b));
    let usage: Value = serde_json::from_str(&b.events()[b.events().len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6);

    // The router counted tokens for both streams, including the one whose usage it hid.
    let m = router.metrics().await;
    let completion = metric_sum(&m, "muster_router_tokens_total", &["kind=\"completion\""]);
    assert_eq!(completion, 12.0 + 9.0 + 10.0 + 6.0, "{m}");
    assert!(metric_sum(&m, "muster_router_time_to_first_token_seconds_count", &[]) >= 4.0);
    assert!(metric_sum(&m, "muster_router_inter_token_latency_seconds_count", &[]) >= 10.0);
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_requests_total",
            &[&format!("model=\"{model}\""), "status=\"200\""]
        ),
        4.0
    );
}

#[tokio::test]
async fn weighted_canary_split_stays_within_tolerance() {
    let stable = Sim::start(&["--time-scale", "100", "--model", "stable-model"]);
    let canary = Sim::start(&["--time-scale", "100", "--model", "canary-model"]);
    let cfg = config(
        MODEL,
        &[
            ("stable", Some("stable-model"), vec![stable.addr]),
            ("canary", Some("canary-model"), vec![canary.addr]),
        ],
        "- targetModels: [{modelServerName: stable, weight: 80}, {modelServerName: canary, weight: 20}]",
        "",
    );
    let router = Router::start(&cfg, &[]).await;
    let n = 500;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let addr = router.addr;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in (w..n).step_by(8) {
                let r = post(
                    addr,
                    "/v1/completions",
                    &json!({"model": MODEL, "prompt": format!("p{i}"), "max_tokens": 1}),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.text());
                seen.push(r.json()["model"].as_str().unwrap().to_string());
            }
            seen
        }));
    }
    for t in tasks {
        for m in t.await.unwrap() {
            *counts.entry(m).or_default() += 1;
        }
    }
    let c = counts.get("canary-model").copied().unwrap_or(0);
    assert_eq!(c + counts.get("stable-model").copied().unwrap_or(0), n);
    // Binomial(500, 0.2): mean 100, sd ≈ 8.9; ±30 is beyond 3 sd.
    assert!((70..=130).contains(&c), "canary got {c} of {n}: {counts:?}");
}

#[tokio::test]
async fn an_engine_killed_before_the_first_byte_is_retried_on_another() {
    // Round-robin sends the first request to endpoint llama-0 (names sort), which dies while
    // the (non-streaming) request is in progress: no byte has gone to the client, so the
    // router retries on llama-1.
    let mut doomed = Sim::start(&["--time-scale", "1"]);
    let healthy = Sim::start(&["--time-scale", "50"]);
    let cfg = one_server(
        vec![doomed.addr, healthy.addr],
        "trafficPolicy: {retry: {attempts: 2, retryInterval: 10ms}}",
    )
    .replace(
        "metadata: {name: llama}\n  spec:",
        "metadata: {name: llama, annotations: {router.muster.dev/scheduler: 'plugins: [{name: round-robin}]'}}\n  spec:",
    );
    let router = Router::start(&cfg, &[]).await;
    let addr = router.addr;
    let pending = tokio::spawn(async move {
        post(
            addr,
            "/v1/chat/completions",
            &chat(MODEL, "long answer please", 200, false),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    doomed.kill();
    let r = pending.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["usage"]["completion_tokens"], 200);
    let m = router.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_upstream_attempts_total",
            &["outcome=\"reset\""]
        ),
        1.0,
        "{m}"
    );

    // Later requests never fail although one endpoint is dead: connect errors are retried.
    for i in 0..10 {
        let r = post(
            router.addr,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": format!("x{i}"), "max_tokens": 2}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = router.metrics().await;
    assert!(
        metric_sum(
            &m,
            "muster_router_upstream_attempts_total",
            &["outcome=\"connect_error\""]
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_engine_killed_mid_stream_ends_the_stream_with_an_error_event() {
    let mut sim = Sim::start(&["--time-scale", "1"]);
    let router = Router::start(&one_server(vec![sim.addr], ""), &[]).await;
    let started = Instant::now();
    let mut killer = Some(move || sim.kill());
    let s = post_streamed(
        router.addr,
        "/v1/chat/completions",
        &[],
        &chat(MODEL, "a long story", 500, true),
        |n| {
            if n == 4 {
                if let Some(mut k) = killer.take() {
                    k();
                }
            }
        },
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let events = s.events();
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "a cut stream must not look complete"
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mid-response"),
        "{last}"
    );
    assert!(events.len() >= 4, "tokens before the error: {events:?}");
}

#[tokio::test]
async fn client_mistakes_and_outages_get_precise_statuses() {
    let sim = Sim::start(&["--time-scale", "50"]);
    let mut cfg = one_server(vec![sim.addr], "");
    // A second model whose server has no Ready endpoint, and one whose target does not exist.
    cfg = cfg.replace(
        "modelRoutes:\n",
        "- metadata: {name: empty}\n  spec:\n    inferenceEngine: vLLM\n    workloadSelector: {matchLabels: {app: e}}\n    workloadPort: {port: 8000}\n  endpoints:\n  - {address: \"127.0.0.1:9\", ready: false}\nmodelRoutes:\n- metadata: {name: empty}\n  spec: {modelName: empty-model, rules: [{targetModels: [{modelServerName: empty}]}]}\n- metadata: {name: ghost}\n  spec: {modelName: ghost-model, rules: [{targetModels: [{modelServerName: nowhere}]}]}\n",
    );
    let router = Router::start(&cfg, &["--max-body-bytes", "4096"]).await;
    let r = router.addr;

    let raw = |body: &'static str| {
        send(
            r,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(Bytes::from_static(body.as_bytes())),
        )
    };
    let cases: Vec<(Reply, u16, &str)> = vec![
        (raw("{\"model\": \"llama\", ").await, 400, "invalid_request"),
        (raw("{\"messages\": []}").await, 400, "invalid_request"),
        (
            post(r, "/v1/chat/completions", &chat("gpt-nope", "hi", 1, false)).await,
            404,
            "model_not_found",
        ),
        (
            post(
                r,
                "/v1/chat/completions",
                &chat("empty-model", "hi", 1, false),
            )
            .await,
            503,
            "no_healthy_upstream",
        ),
        (
            post(
                r,
                "/v1/chat/completions",
                &chat("ghost-model", "hi", 1, false),
            )
            .await,
            503,
            "no_healthy_upstream",
        ),
        (
            get(r, "/v1/chat/completions").await,
            405,
            "method_not_allowed",
        ),
        (get(r, "/nope").await, 404, "unknown_url"),
        (
            post(
                r,
                "/v1/chat/completions",
                &chat(MODEL, &"x".repeat(5000), 1, false),
            )
            .await,
            413,
            "request_too_large",
        ),
    ];
    for (reply, status, code) in cases {
        assert_eq!(reply.status, status, "{}", reply.text());
        let v = reply.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        for field in ["message", "type", "param", "code"] {
            assert!(
                v["error"].get(field).is_some(),
                "missing error.{field}: {v}"
            );
        }
    }

    // An engine 4xx (prompt + max_tokens over the context) is the engine's answer, passed
    // through untouched and not retried.
    let before = router.metrics().await;
    let tries_before = metric_sum(&before, "muster_router_upstream_attempts_total", &[]);
    let reply = post(
        r,
        "/v1/chat/completions",
        &chat(MODEL, "hi", 10_000_000, false),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context"),
        "{}",
        reply.text()
    );
    let after = router.metrics().await;
    assert_eq!(
        metric_sum(&after, "muster_router_upstream_attempts_total", &[]) - tries_before,
        1.0
    );

    // Models list has the configured names.
    let models = get(r, "/v1/models").await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["empty-model", "ghost-model", "llama"]);
}

#[tokio::test]
async fn a_slow_engine_gets_a_504_after_the_per_try_timeout() {
    let sim = Sim::start(&["--time-scale", "1"]);
    let router = Router::start(
        &one_server(vec![sim.addr], "trafficPolicy: {timeout: 300ms}"),
        &[],
    )
    .await;
    let t = Instant::now();
    let r = post(
        router.addr,
        "/v1/chat/completions",
        &chat(MODEL, "slow", 300, false),
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn config_file_edits_apply_and_a_broken_edit_keeps_the_last_good_one() {
    let a = Sim::start(&["--time-scale", "50"]);
    let router = Router::start(&one_server(vec![a.addr], ""), &[]).await;
    let ok = |m: &'static str| {
        let addr = router.addr;
        async move {
            post(
                addr,
                "/v1/completions",
                &json!({"model": m, "prompt": "x", "max_tokens": 1}),
            )
            .await
            .status
        }
    };
    assert_eq!(ok("mistral").await, 404);
    let cfg = one_server(vec![a.addr], "").replace("modelName: llama", "modelName: mistral");
    router.rewrite_config(&cfg);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ok("mistral").await != 200 {
        assert!(Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok("llama").await, 404);

    router.rewrite_config("modelServers: [this is not: valid");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ok("mistral").await,
        200,
        "a broken file must not take the router down"
    );
    let m = router.metrics().await;
    assert!(
        metric_sum(
            &m,
            "muster_router_config_reloads_total",
            &["result=\"error\""]
        ) >= 1.0
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_then_exits() {
    let sim = Sim::start(&["--time-scale", "1"]);
    let mut router =
        Router::start(&one_server(vec![sim.addr], ""), &["--drain-delay", "200ms"]).await;
    let addr = router.addr;
    // About 1.4 s of streaming at real-time speed.
    let stream = tokio::spawn(async move {
        post_streamed(
            addr,
            "/v1/chat/completions",
            &[],
            &chat(MODEL, "drain me", 200, true),
            |_| {},
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    router.terminate();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(router.admin, "/readyz").await.status,
        503,
        "readiness fails while draining"
    );
    let s = stream.await.unwrap();
    assert!(s.error.is_none(), "{:?}", s.error);
    assert!(
        s.text().ends_with("data: [DONE]\n\n"),
        "the in-flight stream completed"
    );
    let status = tokio::task::spawn_blocking(move || router.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("router exited after draining");
    assert!(status.success(), "{status}");
}

/// Requests each engine has completed.
async fn completed(sims: &[Sim]) -> Vec<f64> {
    let mut out = Vec::new();
    for s in sims {
        let m = get(s.addr, "/metrics").await.text();
        out.push(metric_sum(&m, "vllm:request_success_total", &[]));
    }
    out
}

#[tokio::test]
async fn a_conversation_sticks_to_one_engine_and_replicas_agree_on_the_map() {
    let sims: Vec<Sim> = (0..3)
        .map(|_| Sim::start(&["--time-scale", "100"]))
        .collect();
    let cfg = one_server(sims.iter().map(|s| s.addr).collect(), "");
    let router = Router::start(&cfg, &[]).await;
    let replica = Router::start(&cfg, &[]).await;

    let send_turn = |addr, session: &'static str, turn: u32| async move {
        let r = send(
            addr,
            "POST",
            "/v1/completions",
            &[("x-session-id", session)],
            Some(Bytes::from(
                json!({"model": MODEL, "prompt": format!("turn {turn}"), "max_tokens": 1})
                    .to_string(),
            )),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    };
    let mut used = std::collections::HashSet::new();
    for session in ["conv-a", "conv-b", "conv-c", "conv-d", "conv-e", "conv-f"] {
        let before = completed(&sims).await;
        for turn in 0..4 {
            send_turn(router.addr, session, turn).await;
            send_turn(replica.addr, session, turn).await;
        }
        // The session id in the body works like the header.
        let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1, "session_id": session});
        assert_eq!(
            post(router.addr, "/v1/completions", &body).await.status,
            200
        );
        let after = completed(&sims).await;
        let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let engine = delta.iter().position(|d| *d > 0.0).unwrap();
        assert_eq!(
            delta[engine], 9.0,
            "{session}: both replicas, every turn, one engine: {delta:?}"
        );
        used.insert(engine);
    }
    assert!(
        used.len() >= 2,
        "sessions should spread over engines: {used:?}"
    );

    let map = get(router.admin, "/debug/sessions").await.json();
    let rows = map.as_array().unwrap();
    assert_eq!(rows.len(), 6, "{map}");
    for row in rows {
        assert_eq!(row["preferred_endpoint"], row["last_endpoint"], "{row}");
        let q = format!(
            "/debug/sessions?server=default/llama&session={}",
            row["session"].as_str().unwrap()
        );
        let other = get(replica.admin, &q).await.json();
        assert_eq!(other["preferred_endpoint"], row["preferred_endpoint"]);
    }
}

#[tokio::test]
async fn engine_metrics_are_scraped_per_endpoint_and_staleness_is_visible() {
    let live = Sim::start(&["--time-scale", "50"]);
    let mut dying = Sim::start(&["--time-scale", "50"]);
    let router = Router::start(
        &one_server(vec![live.addr, dying.addr], ""),
        &["--metrics-stale-after", "500ms"],
    )
    .await;
    let endpoints = |v: &Value| -> Vec<Value> { v[0]["endpoints"].as_array().unwrap().clone() };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = get(router.admin, "/debug/endpoints").await.json();
        if endpoints(&v)
            .iter()
            .all(|e| e["metrics_stale"] == false && e["engine_running"].is_number())
        {
            break;
        }
        assert!(Instant::now() < deadline, "never scraped: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dying.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = get(router.admin, "/debug/endpoints").await.json();
        let eps = endpoints(&v);
        let dead = eps
            .iter()
            .find(|e| e["address"] == dying.addr.to_string())
            .unwrap();
        let alive = eps
            .iter()
            .find(|e| e["address"] == live.addr.to_string())
            .unwrap();
        if dead["metrics_stale"] == true {
            assert!(dead["last_scrape_error"].is_string(), "{dead}");
            assert_eq!(
                alive["metrics_stale"], false,
                "one dead pod must not stall the others: {alive}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead endpoint never went stale: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = router.metrics().await;
    assert_eq!(
        metric_sum(&m, "muster_router_endpoints", &["state=\"stale_metrics\""]),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn lora_adapters_reach_the_engine_unrenamed_and_other_v1_posts_pass_through() {
    let sim = Sim::start(&["--time-scale", "50"]);
    let load = post(
        sim.addr,
        "/v1/load_lora_adapter",
        &json!({"lora_name": "sql-lora", "lora_path": "/adapters/sql"}),
    )
    .await;
    assert_eq!(load.status, 200, "{}", load.text());
    let cfg = one_server(vec![sim.addr], "").replace(
        "modelName: llama",
        "modelName: llama\n    loraAdapters: [sql-lora]",
    );
    let router = Router::start(&cfg, &[]).await;

    let base = post(
        router.addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(base.status, 200, "{}", base.text());
    assert_eq!(
        base.json()["model"],
        ENGINE_MODEL,
        "public name rewritten to the served one"
    );
    let lora = post(
        router.addr,
        "/v1/completions",
        &json!({"model": "sql-lora", "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(lora.status, 200, "{}", lora.text());
    assert_eq!(
        lora.json()["model"],
        "sql-lora",
        "an adapter name is not rewritten"
    );

    // Any other /v1 POST with a model is forwarded; the engine's own answer comes back.
    let other = post(
        router.addr,
        "/v1/embeddings",
        &json!({"model": MODEL, "input": "x"}),
    )
    .await;
    let direct = post(
        sim.addr,
        "/v1/embeddings",
        &json!({"model": ENGINE_MODEL, "input": "x"}),
    )
    .await;
    assert_eq!(other.status, direct.status);
    assert_eq!(other.json(), direct.json());
}

/// A cleartext HTTP/2-only engine stand-in that reports the protocol version it was asked in.
async fn h2_only_server() -> std::net::SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let model = serde_json::from_slice::<Value>(&body)
                        .map(|v| v["model"].clone())
                        .unwrap_or_default();
                    let out = json!({"protocol": version, "model": model}).to_string();
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(out)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn h2c_servers_are_reached_over_http2() {
    let engine = h2_only_server().await;
    let cfg = one_server(vec![engine], "").replace(
        "metadata: {name: llama}\n  spec:",
        "metadata: {name: llama, annotations: {router.muster.dev/upstream-protocol: h2c}}\n  spec:",
    );
    let router = Router::start(&cfg, &[]).await;
    for _ in 0..3 {
        let r = post(
            router.addr,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["protocol"], "HTTP/2.0");
        assert_eq!(r.json()["model"], ENGINE_MODEL);
    }
}

#[tokio::test]
async fn api_keys_and_the_concurrency_limit_answer_401_and_429() {
    let sim = Sim::start(&["--time-scale", "1"]);
    let keys = scratch_dir().join("keys");
    std::fs::write(&keys, "# one key per line\nsecret-1\n").unwrap();
    let router = Router::start(
        &one_server(vec![sim.addr], ""),
        &[
            "--api-keys-file",
            keys.to_str().unwrap(),
            "--max-in-flight",
            "1",
        ],
    )
    .await;
    let body = Bytes::from(chat(MODEL, "hi", 1, false).to_string());
    let r = send(
        router.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = send(
        router.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer wrong")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 401);
    let ok = [("authorization", "Bearer secret-1")];
    let r = send(
        router.addr,
        "POST",
        "/v1/chat/completions",
        &ok,
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // One slow request holds the only slot: the next is refused at once, not queued.
    let addr = router.addr;
    let slow = Bytes::from(chat(MODEL, "slow", 150, false).to_string());
    let pending = tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer secret-1")],
            Some(slow),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = send(
        router.addr,
        "POST",
        "/v1/chat/completions",
        &ok,
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert!(t.elapsed() < Duration::from_millis(300));
    assert_eq!(pending.await.unwrap().status, 200);
    let r = send(router.addr, "POST", "/v1/chat/completions", &ok, Some(body)).await;
    assert_eq!(r.status, 200, "the slot is released: {}", r.text());
}
