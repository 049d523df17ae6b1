//! The official `openai` Python client works through the router: streaming with and without
//! usage, completions, the model list, and typed errors for 404 and 400.
//!
//! `hack/python-env.sh` provides a pinned venv outside the work tree. The test skips (loudly)
//! only when `python3` itself is missing; any other failure, including a failed install, fails.

mod common;

use common::{config, Router, Sim};
use std::process::Command;

const SCRIPT: &str = r#"
import sys
import openai

addr, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0, timeout=30)

def stream(include_usage):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    parts, usage_chunks, finish = [], 0, None
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Say hello."}],
        max_tokens=12, stream=True, extra_body={"ignore_eos": True}, **kwargs,
    ):
        if chunk.usage is not None:
            usage_chunks += 1
            assert chunk.usage.completion_tokens == 12, chunk.usage
        if not chunk.choices:
            assert chunk.usage is not None, "an empty-choices chunk that is not the usage chunk"
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(parts).strip(), "streamed no text"
    assert finish == "length", finish
    return len(parts), usage_chunks

n, usage_chunks = stream(include_usage=True)
assert usage_chunks == 1, usage_chunks
n2, usage_chunks = stream(include_usage=False)
assert usage_chunks == 0, f"router leaked the usage chunk it injected ({usage_chunks})"
assert n == n2 == 12, (n, n2)

models = client.models.list()
assert [m.id for m in models.data] == [model], models

comp = client.completions.create(model=model, prompt="hello", max_tokens=3)
assert comp.usage.completion_tokens == 3, comp.usage
assert comp.choices[0].text, comp

try:
    client.chat.completions.create(model="no-such-model",
                                   messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
try:
    client.chat.completions.create(model=model, messages=[], max_tokens=1)
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError:
    pass

print("OK through the router")
"#;

#[tokio::test]
async fn official_openai_client_works_through_the_router() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!();
        eprintln!("!!!! SKIPPED official_openai_client_works_through_the_router: python3 is not installed");
        eprintln!();
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../hack/python-env.sh");
    let env = Command::new("bash")
        .arg(script)
        .output()
        .expect("run hack/python-env.sh");
    assert!(
        env.status.success(),
        "hack/python-env.sh failed:\n{}",
        String::from_utf8_lossy(&env.stderr)
    );
    let stdout = String::from_utf8(env.stdout).expect("utf-8 path");
    let python = stdout
        .lines()
        .last()
        .expect("python path")
        .trim()
        .to_string();

    let sim = Sim::start(&["--time-scale", "20"]);
    let cfg = config(
        "llama-3-8b",
        &[(
            "llama",
            Some("meta-llama/Meta-Llama-3-8B-Instruct"),
            vec![sim.addr],
        )],
        "- targetModels: [{modelServerName: llama}]",
        "",
    );
    let router = Router::start(&cfg, &[]).await;
    let addr = router.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args(["-c", SCRIPT, &addr, "llama-3-8b"])
            // Never let a configured proxy intercept loopback traffic.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("all_proxy")
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed:\n{so}\n{se}");
    assert!(so.starts_with("OK through the router"), "{so}");
}
