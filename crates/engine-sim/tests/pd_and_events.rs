//! KV events over ZMQ, prefill/decode handshakes and fault knobs, against the real binary.

mod common;

use common::*;
use muster_engine_sim::block_hash::{prefix_block_hashes, HashContext};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use zeromq::{Socket, SocketRecv};

const MODEL: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

/// Receives KV-event messages until `pred` holds for one decoded event or the deadline passes.
async fn wait_for_event(
    sub: &mut zeromq::SubSocket,
    deadline: Instant,
    mut pred: impl FnMut(&Value) -> bool,
) -> Option<(Vec<Vec<u8>>, Value)> {
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(Ok(msg)) = tokio::time::timeout(left, sub.recv()).await else {
            return None;
        };
        let frames: Vec<Vec<u8>> = msg.into_vec().into_iter().map(|b| b.to_vec()).collect();
        assert_eq!(frames.len(), 3, "topic, sequence, payload");
        let batch: Value = rmp_serde::from_slice(&frames[2]).expect("msgpack payload");
        for ev in batch[1].as_array().expect("events array") {
            if pred(ev) {
                return Some((frames, batch));
            }
        }
    }
    None
}

#[tokio::test]
async fn zmq_subscriber_receives_block_stored_for_a_requests_blocks() {
    let sim = Sim::start(&["--kv-events-port", "0", "--time-scale", "20"]);
    let addr = sim.addr();
    let endpoint = sim.kv_endpoints[0].clone();
    assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
    let mut sub = zeromq::SubSocket::new();
    sub.connect(&endpoint).await.expect("connect SUB");
    sub.subscribe("kv@").await.expect("subscribe");

    // PUB/SUB drops messages until the subscription has propagated ("slow joiner"), so retry
    // with a fresh prompt each time until one request's events are seen.
    for attempt in 0..10u64 {
        let prompt = words(500 + attempt, 100);
        let tokens: Vec<u32> = post(addr, "/tokenize", &json!({"prompt": prompt}))
            .await
            .json()["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        // The router computes the same hashes from the same tokens with the shared module.
        let expected = prefix_block_hashes(
            &HashContext {
                model: MODEL,
                lora: None,
                cache_salt: None,
            },
            &tokens,
            16,
        );
        assert!(expected.len() >= 5);
        let r = post(
            addr,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 1}),
        )
        .await;
        assert_eq!(r.status, 200);
        let deadline = Instant::now() + Duration::from_millis(500);
        let found = wait_for_event(&mut sub, deadline, |ev| {
            ev[0] == "BlockStored" && ev[1][0].as_u64() == Some(expected[0])
        })
        .await;
        let Some((frames, batch)) = found else {
            continue;
        };
        let topic = String::from_utf8(frames[0].clone()).unwrap();
        assert_eq!(topic, format!("kv@127.0.0.1:{}@{MODEL}", addr.port()));
        assert_eq!(frames[1].len(), 8, "big-endian u64 sequence number");
        assert!(batch[0].as_f64().unwrap() > 1.6e9, "unix timestamp");
        assert_eq!(batch[2], 0, "data-parallel rank");
        let ev = batch[1]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[0] == "BlockStored")
            .unwrap();
        let hashes: Vec<u64> = ev[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_u64().unwrap())
            .collect();
        assert_eq!(hashes, expected, "every full prompt block, chained");
        assert_eq!(ev[2], Value::Null, "first block has no parent");
        let ids: Vec<u64> = ev[3]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        let want: Vec<u64> = tokens[..expected.len() * 16]
            .iter()
            .map(|t| u64::from(*t))
            .collect();
        assert_eq!(ids, want);
        assert_eq!(ev[4], 16);
        assert_eq!(ev[5], Value::Null, "no LoRA");
        assert_eq!(ev[6], "GPU");

        // Dropping the cache is announced too.
        assert_eq!(
            send(addr, "POST", "/reset_prefix_cache", None).await.status,
            200
        );
        let cleared = wait_for_event(&mut sub, Instant::now() + Duration::from_secs(2), |ev| {
            ev[0] == "AllBlocksCleared"
        })
        .await;
        assert!(
            cleared.is_some(),
            "AllBlocksCleared after /reset_prefix_cache"
        );
        return;
    }
    panic!("no BlockStored event for any of 10 requests");
}

#[tokio::test]
async fn pd_pair_completes_a_request_through_the_nixl_handshake() {
    // Real time: at high time scales host scheduling lag is magnified into the engines'
    // virtual-time metrics, which this test compares.
    let prefill = Sim::start(&["--role", "prefill"]);
    let decode = Sim::start(&["--role", "decode"]);
    let prompt = words(42, 3000);

    // Leg 1: prefill with do_remote_decode and max_tokens=1, as llm-d's sidecar sends it.
    let leg1 = post(
        prefill.addr(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompt, "max_tokens": 1,
                "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
                                       "remote_engine_id": null, "remote_block_ids": null,
                                       "remote_host": null, "remote_port": null}}),
    )
    .await;
    assert_eq!(leg1.status, 200, "{}", leg1.text());
    let v = leg1.json();
    let params = v["kv_transfer_params"].clone();
    assert_eq!(params["do_remote_prefill"], true);
    assert_eq!(params["remote_host"], "127.0.0.1");
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        params["remote_block_ids"].as_array().unwrap().len() as u64,
        prompt_tokens.div_ceil(16)
    );
    let info = get(prefill.addr(), "/sim/info").await.json();
    assert_eq!(params["remote_engine_id"], info["identity"]["engine_id"]);

    // Leg 2: decode with the returned params: no local prefill, a KV transfer instead.
    let leg2 = post(
        decode.addr(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompt, "max_tokens": 20, "ignore_eos": true,
                "kv_transfer_params": params}),
    )
    .await;
    assert_eq!(leg2.status, 200, "{}", leg2.text());
    let v2 = leg2.json();
    assert_eq!(
        v2["usage"]["prompt_tokens"].as_u64().unwrap(),
        prompt_tokens
    );
    assert_eq!(v2["usage"]["completion_tokens"], 20);
    assert!(!v2["choices"][0]["text"].as_str().unwrap().is_empty());
    let m = metrics(decode.addr()).await;
    assert_eq!(metric(&m, "vllm:generation_tokens_total"), 20.0);
    // The transferred KV now sits in the decode engine's prefix cache.
    let dinfo = get(decode.addr(), "/sim/info").await.json();
    assert!(dinfo["cached_blocks"].as_u64().unwrap() >= prompt_tokens / 16);

    // A local cold prefill of the same size costs far more than the transfer: compare the
    // engines' own (virtual-time) TTFT, which the host's load does not distort.
    let local = Sim::start(&[]);
    let r = post(
        local.addr(),
        "/v1/completions",
        &json!({"prompt": words(43, 3000), "max_tokens": 20, "ignore_eos": true}),
    )
    .await;
    assert_eq!(r.status, 200);
    let ttft = |m: &str| metric(m, "vllm:time_to_first_token_seconds_sum");
    let (pd_ttft, local_ttft) = (ttft(&m), ttft(&metrics(local.addr()).await));
    assert!(
        pd_ttft * 2.0 < local_ttft,
        "decode-leg TTFT {pd_ttft}s should be well below a local cold prefill {local_ttft}s"
    );

    // Roles are enforced, and a decode leg carrying a different prompt is caught.
    let wrong_role = post(
        prefill.addr(),
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 5, "kv_transfer_params": params}),
    )
    .await;
    assert_eq!(wrong_role.status, 400);
    let wrong_prompt = post(
        decode.addr(),
        "/v1/completions",
        &json!({"prompt": "a different prompt", "max_tokens": 5, "kv_transfer_params": params}),
    )
    .await;
    assert_eq!(wrong_prompt.status, 400);
    assert!(wrong_prompt.text().contains("remote_block_ids"));
}

#[tokio::test]
async fn sglang_bootstrap_decode_waits_for_its_prefill_peer() {
    let prefill = Sim::start(&[
        "--engine",
        "sglang",
        "--role",
        "prefill",
        "--time-scale",
        "5",
    ]);
    let decode = Sim::start(&[
        "--engine",
        "sglang",
        "--role",
        "decode",
        "--time-scale",
        "5",
        "--bootstrap-timeout",
        "5",
    ]);
    let p = prefill.addr();
    let prompt = words(77, 1500);
    let body = |room: u64| {
        json!({"prompt": prompt, "max_tokens": 8, "ignore_eos": true,
               "bootstrap_host": p.ip().to_string(), "bootstrap_port": p.port(),
               "bootstrap_room": room})
    };
    // Both legs at once, as SGLang's router sends them; the decode leg is sent first to show
    // that it waits for the room rather than racing ahead.
    let d = tokio::spawn({
        let b = body(12345);
        let a = decode.addr();
        async move { post(a, "/v1/completions", &b).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pre = post(p, "/v1/completions", &body(12345)).await;
    assert_eq!(pre.status, 200, "{}", pre.text());
    let dec = d.await.unwrap();
    assert_eq!(dec.status, 200, "{}", dec.text());
    assert_eq!(dec.json()["usage"]["completion_tokens"], 8);

    // A room whose prefill never happens times out with a clear error, not a hang.
    let started = Instant::now();
    let lonely = post(decode.addr(), "/v1/completions", &body(999)).await;
    assert_eq!(lonely.status, 503, "{}", lonely.text());
    assert!(lonely.text().contains("room 999"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "5 virtual s at 5× = 1 s"
    );
}

#[tokio::test]
async fn fault_knobs_fail_requests_the_way_a_broken_engine_would() {
    let sim = Sim::start(&["--time-scale", "20", "--slow-start-seconds", "20"]);
    let addr = sim.addr();
    // Slow start: 20 virtual seconds at 20× = 1 s of 503s.
    assert_eq!(get(addr, "/health").await.status, 503);
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(r.status, 503);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(addr, "/health").await.status, 200);

    // Error rate 1: every generation request fails with an OpenAI-style 500.
    let set = |f: Value| async move { post(addr, "/sim/faults", &f).await };
    assert_eq!(set(json!({"error_rate": 1.0})).await.status, 200);
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["code"], 500);
    assert_eq!(
        set(json!({"error_rate": 2.0})).await.status,
        400,
        "range checked"
    );

    // Crash mid-stream: three tokens, then the connection drops without [DONE].
    assert_eq!(set(json!({"crash_after_tokens": 3})).await.status, 200);
    let s = post_streamed(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 10, "stream": true}),
    )
    .await;
    assert!(s.error.is_some(), "transport error expected: {}", s.text());
    assert_eq!(s.text().matches("data: {").count(), 3);
    assert!(!s.text().contains("[DONE]"));

    // Stall: the stream pauses after its first token for stall_seconds (4 virtual = 0.2 s).
    assert_eq!(
        set(json!({"stall_rate": 1.0, "stall_seconds": 4.0}))
            .await
            .status,
        200
    );
    let s = post_streamed(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 3, "stream": true}),
    )
    .await;
    let gap = s.chunks[1].0 - s.chunks[0].0;
    assert!(gap >= Duration::from_millis(180), "stall gap {gap:?}");

    // Refuse connections for 1 s (20 virtual s): connections are reset, then accepted again.
    assert_eq!(
        set(json!({"refuse_connections_seconds": 20.0}))
            .await
            .status,
        200
    );
    let refused = muster_engine_sim::http_client::get(addr, "/health").await;
    assert!(refused.is_err(), "connection should be reset: {refused:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(addr, "/health").await.status, 200);
}
