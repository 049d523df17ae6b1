//! Traffic policy against real processes: routers, engine simulators and `redis-server`
//! (installed by `hack/redis.sh ensure`, which `hack/test.sh` runs first).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

const MODEL: &str = "llama";
const ENGINE_MODEL: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

/// A private `redis-server` on a free loopback port, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let status = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../hack/redis.sh"))
            .arg("ensure")
            .status()
            .expect("run hack/redis.sh ensure");
        assert!(
            status.success(),
            "redis-server is not installed and could not be"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = scratch_dir();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 16];
                if matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG")) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child: Some(child),
            port,
            dir,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server, one route for `MODEL`, with `rate_limit` YAML (flow style) on the route.
fn limited_config(addrs: Vec<SocketAddr>, rate_limit: Option<&str>) -> String {
    let mut cfg = config(
        MODEL,
        &[("llama", Some(ENGINE_MODEL), addrs)],
        "- targetModels: [{modelServerName: llama}]",
        "",
    );
    if let Some(rl) = rate_limit {
        cfg.push_str(&format!("    rateLimit: {rl}\n"));
    }
    cfg
}

async fn chat_as(addr: SocketAddr, key: Option<&str>, max_tokens: u32) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let body = chat(MODEL, "Count to ten.", max_tokens, false);
    send(
        addr,
        "POST",
        "/v1/chat/completions",
        &headers,
        Some(Bytes::from(body.to_string())),
    )
    .await
}

fn error_code(r: &Reply) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

fn header_u64(r: &Reply, name: &str) -> u64 {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Base64url without padding (JWK and JWT encoding).
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An Ed25519 key pair made by `openssl`: (PKCS#8 DER private key, raw public key).
fn ed25519_key(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let key = dir.join("jwt.der");
    let pubkey = dir.join("jwt.pub.der");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "ed25519",
            "-outform",
            "DER",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("openssl genpkey")
        .success()
        && Command::new("openssl")
            .args([
                "pkey", "-inform", "DER", "-pubout", "-outform", "DER", "-in",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&pubkey)
            .status()
            .expect("openssl pkey")
            .success();
    assert!(ok, "openssl could not make an Ed25519 key");
    let spki = std::fs::read(&pubkey).unwrap();
    (
        std::fs::read(&key).unwrap(),
        spki[spki.len() - 32..].to_vec(),
    )
}

/// Serves `body` as JSON to every HTTP request on an ephemeral loopback port.
async fn serve_json(body: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                break;
            };
            let body = body.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

fn jwt(private_der: &[u8], claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(private_der),
    )
    .unwrap()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn api_keys_and_jwts_authenticate_and_allow_lists_authorise() {
    let sim = Sim::start(&["--time-scale", "50"]);
    let dir = scratch_dir();
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        "# test keys\nsk-alpha tenant=alpha user=alice\nsk-other tenant=beta models=qwen\n",
    )
    .unwrap();
    let (private, public) = ed25519_key(&dir);
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "x": b64url(&public)}]});
    let jwks_addr = serve_json(jwks.to_string()).await;
    let router = Router::start(
        &limited_config(vec![sim.addr], None),
        &[
            "--api-keys-file",
            keys.to_str().unwrap(),
            "--jwt-jwks-url",
            &format!("http://{jwks_addr}/jwks.json"),
            "--jwt-issuer",
            "https://issuer.test",
        ],
    )
    .await;

    // Missing and wrong credentials: 401 with an OpenAI error body.
    for key in [None, Some("sk-wrong"), Some("a.b.c")] {
        let r = chat_as(router.addr, key, 4).await;
        assert_eq!(r.status, 401, "{key:?}: {}", r.text());
        assert_eq!(r.json()["error"]["type"], "authentication_error");
    }
    // A valid key works; a key whose allow list lacks the model gets 403.
    assert_eq!(chat_as(router.addr, Some("sk-alpha"), 4).await.status, 200);
    let r = chat_as(router.addr, Some("sk-other"), 4).await;
    assert_eq!(
        (r.status, error_code(&r)),
        (403, "model_not_allowed".into()),
        "{}",
        r.text()
    );
    // /v1/models lists only what the caller may use.
    let models = |key: &'static str| async move {
        let r = send(
            router.addr,
            "GET",
            "/v1/models",
            &[("authorization", &format!("Bearer {key}"))],
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        r.json()["data"].as_array().unwrap().len()
    };
    assert_eq!((models("sk-alpha").await, models("sk-other").await), (1, 0));

    // JWTs: valid; expired; wrong issuer; signed by another key.
    let good = json!({"sub": "bob", "tenant": "gamma", "iss": "https://issuer.test", "exp": now_secs() + 600});
    assert_eq!(
        chat_as(router.addr, Some(&jwt(&private, &good)), 4)
            .await
            .status,
        200
    );
    let mut expired = good.clone();
    expired["exp"] = json!(now_secs() - 3600);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    let (other_key, _) = ed25519_key(&scratch_dir());
    for (what, token) in [
        ("expired", jwt(&private, &expired)),
        ("wrong issuer", jwt(&private, &wrong_iss)),
        ("foreign key", jwt(&other_key, &good)),
    ] {
        let r = chat_as(router.addr, Some(&token), 4).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
    }
    let mut restricted = good.clone();
    restricted["models"] = json!(["qwen"]);
    assert_eq!(
        chat_as(router.addr, Some(&jwt(&private, &restricted)), 4)
            .await
            .status,
        403
    );

    let m = router.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_auth_failures_total",
            &["reason=\"missing\""]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_auth_failures_total",
            &["reason=\"invalid_token\""]
        ),
        4.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_auth_failures_total",
            &["reason=\"forbidden_model\""]
        ),
        2.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn token_limits_answer_429_with_retry_after_per_tenant_and_reconcile_usage() {
    let sim = Sim::start(&["--time-scale", "50"]);
    let dir = scratch_dir();
    let keys = dir.join("keys");
    std::fs::write(&keys, "sk-a tenant=a\nsk-b tenant=b\n").unwrap();
    let router = Router::start(
        &limited_config(
            vec![sim.addr],
            Some("{inputTokensPerUnit: 100000, outputTokensPerUnit: 100, unit: hour}"),
        ),
        &["--api-keys-file", keys.to_str().unwrap()],
    )
    .await;

    // 100 output tokens an hour, 30 reserved per request: three pass, the fourth is refused.
    for left in [70, 40, 10] {
        let r = chat_as(router.addr, Some("sk-a"), 30).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(header_u64(&r, "x-ratelimit-limit-tokens"), 100);
        assert_eq!(header_u64(&r, "x-ratelimit-remaining-tokens"), left);
    }
    let r = chat_as(router.addr, Some("sk-a"), 30).await;
    assert_eq!(
        (r.status, error_code(&r)),
        (429, "rate_limit_exceeded".into()),
        "{}",
        r.text()
    );
    let retry = header_u64(&r, "retry-after");
    // 10 tokens left, 20 missing at 100/hour: 720 s.
    assert!((700..=730).contains(&retry), "retry-after {retry}");
    assert_eq!(header_u64(&r, "x-ratelimit-remaining-tokens"), 10);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tenant `a`"));
    // Another tenant has its own budget.
    assert_eq!(chat_as(router.addr, Some("sk-b"), 30).await.status, 200);
    let m = router.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_rate_limited_total",
            &["model=\"llama\"", "scope=\"tenant\""]
        ),
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reservations_are_reconciled_with_actual_usage() {
    let sim = Sim::start(&["--time-scale", "50"]);
    // Input limit only, so the headers describe the input bucket.
    let router = Router::start(
        &limited_config(
            vec![sim.addr],
            Some("{inputTokensPerUnit: 10000, unit: day}"),
        ),
        &[],
    )
    .await;
    let first = chat_as(router.addr, None, 4).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let left1 = header_u64(&first, "x-ratelimit-remaining-tokens");
    let estimate = 10_000 - left1; // charged on admission: body bytes / 4
    let actual = first.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_ne!(
        estimate, actual,
        "the test needs estimate and usage to differ"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = chat_as(router.addr, None, 4).await;
    let left2 = header_u64(&second, "x-ratelimit-remaining-tokens");
    // The first request ends up charged its actual usage, the second its estimate.
    let want = 10_000 - actual - estimate;
    assert!(
        left2.abs_diff(want) <= 1,
        "remaining {left2}, want {want} (estimate {estimate}, actual {actual})"
    );
}

#[tokio::test]
async fn with_a_tokenizer_admission_charges_the_prompt_tokens_the_engine_reports() {
    let sim = Sim::start(&["--time-scale", "50"]);
    let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine-sim/assets/tokenizer.json");
    let router = Router::start(
        &limited_config(
            vec![sim.addr],
            Some("{inputTokensPerUnit: 10000, unit: day}"),
        ),
        &["--tokenizer", tokenizer.to_str().unwrap()],
    )
    .await;
    let r = chat_as(router.addr, None, 4).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let charged = 10_000 - header_u64(&r, "x-ratelimit-remaining-tokens");
    let actual = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    // Without the tokenizer the charge is body bytes / 4 (see the test above).
    assert_eq!(
        charged, actual,
        "charged on admission vs the engine's usage"
    );
}

#[tokio::test]
async fn global_limits_hold_across_two_routers_and_redis_failure_follows_the_mode() {
    let sim = Sim::start(&["--time-scale", "50"]);
    let mut redis = Redis::start();
    let cfg = limited_config(
        vec![sim.addr],
        Some(&format!(
            "{{outputTokensPerUnit: 100, unit: hour, global: {{redis: {{address: \"{}\"}}}}}}",
            redis.address()
        )),
    );
    let open = Router::start(
        &cfg,
        &["--redis-fail-mode", "open", "--redis-timeout", "100ms"],
    )
    .await;
    let closed = Router::start(
        &cfg,
        &["--redis-fail-mode", "closed", "--redis-timeout", "100ms"],
    )
    .await;
    // The default mode, used only once Redis is gone: this replica's own buckets.
    let local = Router::start(&cfg, &["--redis-timeout", "100ms"]).await;

    // One budget of 100 output tokens for both routers: 30 each, alternating → 3 pass.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let router = if i % 2 == 0 { &open } else { &closed };
        statuses.push(chat_as(router.addr, None, 30).await.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429, 429]);

    // Redis hangs (SIGSTOP), then dies: no request may wait for it.
    for phase in ["hung", "dead"] {
        if phase == "hung" {
            redis.signal("-STOP");
        } else {
            redis.signal("-CONT");
            redis.kill();
        }
        for _ in 0..3 {
            let t = Instant::now();
            let a = chat_as(open.addr, None, 30).await;
            let b = chat_as(closed.addr, None, 30).await;
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{phase}: requests waited {:?}",
                t.elapsed()
            );
            assert_eq!(a.status, 200, "{phase}, fail-open: {}", a.text());
            assert_eq!(
                (b.status, error_code(&b)),
                (503, "rate_limit_unavailable".into()),
                "{phase}, fail-closed: {}",
                b.text()
            );
        }
    }
    // Fail-local: a full local bucket of 100 admits three requests of 30, then limits again.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(chat_as(local.addr, None, 30).await.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    for router in [&open, &closed, &local] {
        let m = router.metrics().await;
        assert_eq!(metric_sum(&m, "muster_router_ratelimit_degraded", &[]), 1.0);
    }
    let m = open.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_ratelimit_degraded_decisions_total",
            &["mode=\"open\""]
        ),
        6.0
    );
    let m = local.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_ratelimit_degraded_decisions_total",
            &["mode=\"local\""]
        ),
        4.0
    );
}

/// p-th percentile (nearest rank) of `v`.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank - 1]
}

#[tokio::test]
async fn a_heavy_tenant_cannot_push_a_light_tenants_queue_wait_past_one_service_time() {
    let sim = Sim::start(&[]);
    let dir = scratch_dir();
    let keys = dir.join("keys");
    std::fs::write(&keys, "sk-heavy tenant=heavy\nsk-light tenant=light\n").unwrap();
    let router = Router::start(
        &limited_config(vec![sim.addr], None),
        &[
            "--api-keys-file",
            keys.to_str().unwrap(),
            "--queue-slots-per-endpoint",
            "2",
        ],
    )
    .await;
    let addr = router.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Heavy: 12 clients sending back to back (6× the 2 slots).
    let mut heavy = Vec::new();
    for _ in 0..12 {
        let stop = stop.clone();
        heavy.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = chat_as(addr, Some("sk-heavy"), 24).await;
                assert_eq!(r.status, 200, "{}", r.text());
                let wait = header_u64(&r, "x-muster-queue-wait-ms") as f64;
                samples.push((wait, t.elapsed().as_secs_f64() * 1000.0 - wait));
            }
            samples
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Light: 20 requests, one at a time, with pauses.
    let mut light_waits = Vec::new();
    for _ in 0..20 {
        let r = chat_as(addr, Some("sk-light"), 4).await;
        assert_eq!(r.status, 200, "{}", r.text());
        light_waits.push(header_u64(&r, "x-muster-queue-wait-ms") as f64);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut heavy_waits = Vec::new();
    let mut heavy_service = Vec::new();
    for h in heavy {
        for (w, s) in h.await.unwrap() {
            heavy_waits.push(w);
            heavy_service.push(s);
        }
    }
    let light_p99 = percentile(&mut light_waits, 99.0);
    let heavy_p50 = percentile(&mut heavy_waits, 50.0);
    let service_max = percentile(&mut heavy_service, 100.0);
    println!(
        "fair queue: light p99 wait {light_p99:.0} ms; heavy p50 wait {heavy_p50:.0} ms; heavy service max {service_max:.0} ms ({} heavy requests)",
        heavy_waits.len()
    );
    // Contention is real: heavy requests queue for several service times.
    assert!(
        heavy_p50 > 2.0 * service_max,
        "heavy p50 wait {heavy_p50} ms vs service {service_max} ms: no contention"
    );
    // The bound: a light request waits at most until one running request ends.
    assert!(
        light_p99 <= service_max + 50.0,
        "light p99 wait {light_p99} ms exceeds one heavy service time ({service_max} ms) + 50 ms"
    );
    let m = router.metrics().await;
    assert!(
        metric_sum(
            &m,
            "muster_router_queue_wait_seconds_count",
            &["priority=\"normal\""]
        ) > 20.0
    );
    assert_eq!(metric_sum(&m, "muster_router_queue_depth", &[]), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_queue_timeout_is_a_429_naming_the_server_and_priority() {
    let sim = Sim::start(&[]);
    let router = Router::start(
        &limited_config(vec![sim.addr], None),
        &[
            "--queue-slots-per-endpoint",
            "1",
            "--queue-timeout",
            "150ms",
        ],
    )
    .await;
    // One slot: a long request holds it while a second waits out the timeout.
    let addr = router.addr;
    let long = tokio::spawn(async move { chat_as(addr, None, 200).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = chat_as(router.addr, None, 4).await;
    let waited = t.elapsed();
    assert_eq!(
        (r.status, error_code(&r)),
        (429, "queue_timeout".into()),
        "{}",
        r.text()
    );
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("default/llama") && msg.contains("normal-priority"),
        "{msg}"
    );
    assert_eq!(header_u64(&r, "retry-after"), 1);
    assert_eq!(long.await.unwrap().status, 200);
    let m = router.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "muster_router_queue_rejected_total",
            &["reason=\"timeout\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn attained_service_is_shared_between_replicas_through_redis() {
    use muster_router::policy::attained::AttainedService;
    use muster_router::policy::metrics::PolicyMetrics;
    let mut redis = Redis::start();
    let replica = || {
        AttainedService::new(
            Duration::from_secs(60),
            Some(redis.address()),
            Duration::from_millis(200),
            PolicyMetrics::register(&prometheus::Registry::new()),
        )
    };
    let (a, b) = (replica(), replica());
    let heavy: std::sync::Arc<str> = "heavy".into();
    a.charge(&heavy, 5000.0);
    b.charge(&"light".into(), 10.0);
    assert_eq!(b.attained("heavy"), 0.0, "b has not heard from a yet");
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    // b now orders tenants by what they consumed on every replica.
    let seen = b.attained("heavy");
    assert!((4900.0..=5000.0).contains(&seen), "b sees heavy at {seen}");
    assert!(b.attained("light") <= 10.0 && b.attained("light") > 9.0);
    // Redis gone: syncs fail fast and each replica falls back to its own view.
    redis.kill();
    let t = Instant::now();
    assert!(b.sync().await.is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
}
