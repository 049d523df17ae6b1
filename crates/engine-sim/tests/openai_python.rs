//! The official `openai` Python client streams a chat completion from the simulator.
//!
//! `hack/python-env.sh` provides a pinned venv outside the work tree. The test skips (loudly)
//! only when `python3` itself is missing; any other failure, including a failed install, fails.

mod common;

use common::Sim;
use std::process::Command;

const SCRIPT: &str = r#"
import sys
import openai

addr, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0, timeout=30)

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are terse."},
              {"role": "user", "content": "Say hello."}],
    max_tokens=12,
    stream=True,
    stream_options={"include_usage": True},
    extra_body={"ignore_eos": True},
)
parts, usage, finish, roles = [], None, None, set()
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.role:
            roles.add(c.delta.role)
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
text = "".join(parts)
assert text.strip(), "streamed no text"
assert roles == {"assistant"}, roles
assert finish == "length", finish
assert usage is not None and usage.completion_tokens == 12, usage

models = client.models.list()
assert any(m.id == model for m in models.data), models

comp = client.completions.create(model=model, prompt="hello", max_tokens=3)
assert comp.usage.completion_tokens == 3, comp.usage

try:
    client.chat.completions.create(model="no-such-model",
                                   messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError:
    pass
try:
    client.chat.completions.create(model=model, messages=[], max_tokens=1)
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError:
    pass

print(f"OK streamed {len(parts)} chunks: {text[:40]!r}")
"#;

#[test]
fn official_openai_client_streams_a_chat_completion() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!();
        eprintln!("!!!! SKIPPED official_openai_client_streams_a_chat_completion: python3 is not installed");
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
    let out = Command::new(&python)
        .args([
            "-c",
            SCRIPT,
            &sim.addr().to_string(),
            "meta-llama/Meta-Llama-3-8B-Instruct",
        ])
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
        .expect("run python");
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed:\n{so}\n{se}");
    assert!(so.starts_with("OK streamed"), "{so}");
}
