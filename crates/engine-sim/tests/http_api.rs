//! End-to-end tests of the real binary over loopback HTTP.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const MODEL: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

#[tokio::test]
async fn repeated_prefix_is_served_faster_and_counts_as_prefix_hits() {
    // Half real speed: a ~3000-token cold prefill takes ~0.2 s, a warm one ~15 ms: far enough
    // apart to see from the client even on a busy machine.
    let sim = Sim::start(&["--time-scale", "0.5"]);
    let addr = sim.addr();
    let shared = words(1, 3000);
    let ask = |suffix: &str| {
        json!({"model": MODEL, "prompt": format!("{shared} {suffix}"), "max_tokens": 4,
               "stream": true, "ignore_eos": true})
    };
    let hits = |m: &str| metric(m, "vllm:prefix_cache_hits_total");

    let m0 = metrics(addr).await;
    let cold = post_streamed(addr, "/v1/completions", &ask("first question")).await;
    let m1 = metrics(addr).await;
    let warm = post_streamed(addr, "/v1/completions", &ask("second question")).await;
    let m2 = metrics(addr).await;
    assert_eq!((cold.status, warm.status), (200, 200));

    let (cold_hits, warm_hits) = (hits(&m1) - hits(&m0), hits(&m2) - hits(&m1));
    assert_eq!(cold_hits, 0.0, "nothing is cached for the first request");
    assert!(
        warm_hits >= 2900.0,
        "the shared 3000-word prefix is reused, got {warm_hits} hit tokens"
    );
    let queries = metric(&m2, "vllm:prefix_cache_queries_total");
    assert!(
        queries > 2.0 * 3000.0,
        "both prompts were looked up: {queries}"
    );
    assert!(
        warm.ttft() * 3 < cold.ttft(),
        "warm TTFT {:?} should be far below cold TTFT {:?}",
        warm.ttft(),
        cold.ttft()
    );
    // The engine's own TTFT histogram saw both requests.
    assert_eq!(metric(&m2, "vllm:time_to_first_token_seconds_count"), 2.0);
}

#[tokio::test]
async fn kv_capacity_bound_causes_eviction_and_misses() {
    // 48 blocks × 16 tokens: one ~660-token prompt (42 blocks) fits, two do not.
    let sim = Sim::start(&["--num-gpu-blocks", "48", "--time-scale", "20"]);
    let addr = sim.addr();
    let a = words(10, 650);
    let b = words(11, 650);
    let send = |p: &str| {
        let body = json!({"prompt": p, "max_tokens": 1});
        async move { post(addr, "/v1/completions", &body).await }
    };
    let hits = || async { metric(&metrics(addr).await, "vllm:prefix_cache_hits_total") };

    assert_eq!(send(&a).await.status, 200);
    let h0 = hits().await;
    assert_eq!(send(&a).await.status, 200);
    let h1 = hits().await;
    assert!(h1 - h0 >= 600.0, "an immediate repeat hits: {}", h1 - h0);

    assert_eq!(send(&b).await.status, 200); // evicts most of a
    let h2 = hits().await;
    assert_eq!(send(&a).await.status, 200);
    let h3 = hits().await;
    assert!(
        h3 - h2 < (h1 - h0) / 2.0,
        "after b filled the cache, a mostly misses: {} hit tokens vs {} before",
        h3 - h2,
        h1 - h0
    );
    let m = metrics(addr).await;
    assert!(m.contains("num_gpu_blocks=\"48\""));
}

#[tokio::test]
async fn metrics_move_under_load() {
    let sim = Sim::start(&["--max-num-seqs", "4", "--time-scale", "4"]);
    let addr = sim.addr();
    let idle = metrics(addr).await;
    assert_eq!(metric(&idle, "vllm:num_requests_running"), 0.0);
    assert_eq!(metric(&idle, "vllm:kv_cache_usage_perc"), 0.0);

    let mut tasks = Vec::new();
    for i in 0..8 {
        let body = json!({"prompt": words(100 + i, 200), "max_tokens": 150, "ignore_eos": true});
        tasks.push(tokio::spawn(async move {
            post(addr, "/v1/completions", &body).await
        }));
    }
    // 150 decode steps of ~7 ms at 4× take ~0.25 s per wave; look in the middle of wave one.
    let mut busy = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        busy = metrics(addr).await;
        if metric(&busy, "vllm:num_requests_running") == 4.0
            && metric(&busy, "vllm:num_requests_waiting") == 4.0
        {
            break;
        }
    }
    assert_eq!(metric(&busy, "vllm:num_requests_running"), 4.0, "{busy}");
    assert_eq!(metric(&busy, "vllm:num_requests_waiting"), 4.0);
    assert!(metric(&busy, "vllm:kv_cache_usage_perc") > 0.0);

    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["usage"]["completion_tokens"], 150);
    }
    let done = metrics(addr).await;
    assert_eq!(metric(&done, "vllm:num_requests_running"), 0.0);
    assert_eq!(metric(&done, "vllm:num_requests_waiting"), 0.0);
    assert_eq!(metric(&done, "vllm:generation_tokens_total"), 8.0 * 150.0);
    assert_eq!(metric(&done, "vllm:e2e_request_latency_seconds_count"), 8.0);
    assert!(metric(&done, "vllm:inter_token_latency_seconds_count") >= 8.0 * 149.0);
    assert!(
        metric(&done, "vllm:request_queue_time_seconds_sum") > 0.0,
        "the second wave queued"
    );
}

#[tokio::test]
async fn chat_stream_is_framed_like_openai_with_usage() {
    let sim = Sim::start(&["--time-scale", "50"]);
    let addr = sim.addr();
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 7, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let s = post_streamed(addr, "/v1/chat/completions", &body).await;
    assert_eq!(s.status, 200);
    assert!(s.error.is_none());
    let text = s.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e["data: ".len()..]).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.trim().is_empty());
    let last_token = &chunks[chunks.len() - 2];
    assert_eq!(last_token["choices"][0]["finish_reason"], "length");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    let prompt_tokens = usage["usage"]["prompt_tokens"].as_u64().unwrap();

    // The same conversation through /tokenize counts the same prompt tokens (chat template).
    let t = post(
        addr,
        "/tokenize",
        &json!({"messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "hi"}]}),
    )
    .await
    .json();
    assert_eq!(t["count"].as_u64().unwrap(), prompt_tokens);

    // Non-streaming: one JSON object with the message and usage.
    let mut body = body;
    body["stream"] = json!(false);
    body.as_object_mut().unwrap().remove("stream_options");
    let r = post(addr, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], prompt_tokens + 7);
}

#[tokio::test]
async fn completion_without_max_tokens_stops_naturally() {
    let sim = Sim::start(&["--time-scale", "100"]);
    let r = post(
        sim.addr(),
        "/v1/completions",
        &json!({"prompt": "Once upon a time"}),
    )
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 256);
    assert!(v["choices"][0]["text"].as_str().unwrap().len() > 256);
}

#[tokio::test]
async fn malformed_input_gets_openai_json_errors() {
    let sim = Sim::start(&["--time-scale", "100", "--max-model-len", "512"]);
    let addr = sim.addr();
    let cases: Vec<(&str, &str, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", "{not json", 400, None),
        ("/v1/chat/completions", "[1,2]", 400, None),
        (
            "/v1/chat/completions",
            r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#,
            404,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            r#"{"max_tokens":5}"#,
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[]}"#,
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":"hi"}"#,
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"content":"hi"}]}"#,
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#,
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#,
            400,
            None,
        ),
        (
            "/v1/completions",
            r#"{"max_tokens":3}"#,
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"hi","max_tokens":0}"#,
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"hi","n":3}"#,
            400,
            Some("n"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"hi","stream_options":{"include_usage":true}}"#,
            400,
            Some("stream_options"),
        ),
        ("/v1/completions", r#"{"prompt":[]}"#, 400, Some("prompt")),
        (
            "/v1/completions",
            r#"{"prompt":[99999999]}"#,
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"hi","max_tokens":100000}"#,
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"hi","kv_transfer_params":{"do_remote_prefill":true}}"#,
            400,
            Some("kv_transfer_params"),
        ),
        (
            "/v1/unload_lora_adapter",
            r#"{"lora_name":"nope"}"#,
            404,
            Some("lora_name"),
        ),
        ("/v1/load_lora_adapter", r#"{}"#, 400, Some("lora_name")),
        ("/tokenize", r#"{}"#, 400, Some("prompt")),
        ("/no/such/path", "{}", 404, None),
    ];
    for (path, body, status, param) in cases {
        let r = send(addr, "POST", path, Some(body)).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        let v = r.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert_eq!(e["code"], status, "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{path} {body}: {v}");
        }
    }
    // The prompt-too-long message says what the limit is, like vLLM's.
    let r = send(
        addr,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt":"hi","max_tokens":100000}"#),
    )
    .await;
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 512"));
    // Still alive and well.
    assert_eq!(get(addr, "/health").await.status, 200);
}

#[tokio::test]
async fn lora_adapters_load_list_serve_and_unload() {
    let sim = Sim::start(&["--time-scale", "100"]);
    let addr = sim.addr();
    let load = json!({"lora_name": "sql-lora", "lora_path": "/adapters/sql"});
    assert_eq!(post(addr, "/v1/load_lora_adapter", &load).await.status, 200);
    assert_eq!(
        post(addr, "/v1/load_lora_adapter", &load).await.status,
        400,
        "loading twice is an error"
    );
    let models = get(addr, "/v1/models").await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![MODEL, "sql-lora"]);
    assert_eq!(models["data"][1]["parent"], MODEL);

    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": "sql-lora", "prompt": "select", "max_tokens": 3}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "sql-lora");
    assert!(metrics(addr)
        .await
        .contains("vllm:lora_requests_info{max_lora=\"4\""));

    let unload = json!({"lora_name": "sql-lora"});
    assert_eq!(
        post(addr, "/v1/unload_lora_adapter", &unload).await.status,
        200
    );
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": "sql-lora", "prompt": "select", "max_tokens": 3}),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn sglang_mode_uses_sglang_metric_names() {
    let sim = Sim::start(&["--engine", "sglang", "--time-scale", "100"]);
    let addr = sim.addr();
    let body = json!({"prompt": words(3, 100), "max_tokens": 2});
    post(addr, "/v1/completions", &body).await;
    post(addr, "/v1/completions", &body).await;
    let m = metrics(addr).await;
    assert!(!m.contains("vllm:"));
    assert_eq!(metric(&m, "sglang:num_running_reqs"), 0.0);
    assert!(
        metric(&m, "sglang:cache_hit_rate") > 0.3,
        "second request hit the cache"
    );
    assert_eq!(metric(&m, "sglang:time_to_first_token_seconds_count"), 2.0);
}

#[tokio::test]
async fn one_process_serves_one_engine_per_local_ip() {
    // Wildcard listener: 127.0.0.1 and 127.0.0.2 reach different engines (kwok pod IPs).
    let sim = Sim::start_raw(&["--listen", "0.0.0.0:0", "--time-scale", "100"]);
    let port = sim.addr().port();
    let a = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let b = std::net::SocketAddr::from(([127, 0, 0, 2], port));
    let body = json!({"prompt": "hello", "max_tokens": 2});
    assert_eq!(post(a, "/v1/completions", &body).await.status, 200);
    assert_eq!(post(a, "/v1/completions", &body).await.status, 200);
    let (ia, ib) = (
        get(a, "/sim/info").await.json(),
        get(b, "/sim/info").await.json(),
    );
    assert_ne!(ia["identity"]["engine_id"], ib["identity"]["engine_id"]);
    assert_eq!(ia["identity"]["host"], "127.0.0.1");
    assert_eq!(ib["identity"]["host"], "127.0.0.2");
    assert_eq!(
        metric(&metrics(a).await, "vllm:e2e_request_latency_seconds_count"),
        2.0
    );
    assert_eq!(
        metric(&metrics(b).await, "vllm:e2e_request_latency_seconds_count"),
        0.0,
        "the other pod's engine saw nothing"
    );
}
