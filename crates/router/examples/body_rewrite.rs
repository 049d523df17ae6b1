//! Measures the router's two body edits (`model` rewrite, usage injection) on chat bodies of
//! several sizes: splicing the edits into the bytes (what the proxy does) against
//! re-serialising the edited object (what it did before). Prints the fastest time of each and
//! their ratio.
//!
//! ```text
//! cargo build --release -p muster-router --example body_rewrite
//! target/release/examples/body_rewrite [ITERATIONS]
//! ```

use std::time::{Duration, Instant};

use muster_router::proxy::request::{edited_object, inspect, rewrite};
use serde_json::{json, Value};

/// The fastest run: on a shared machine the other runs measure the neighbours.
fn fastest(v: Vec<Duration>) -> Duration {
    v.into_iter().min().expect("at least one iteration")
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    println!("| prompt | body bytes | splice µs | re-serialise µs | re-serialise ÷ splice |");
    println!("|---|---:|---:|---:|---:|");
    for (kind, words) in [
        ("prose", 50usize),
        ("prose", 2_000),
        ("prose", 32_000),
        ("escape-dense", 2_000),
        ("escape-dense", 32_000),
    ] {
        // Prose: a line break every 12 words, a quoted word every 50 (both escaped in JSON).
        // Escape-dense: a quoted word and a line break in every word (`w1 \"q\"\n`).
        let text: String = (0..words)
            .map(|i| match (i % 50, i % 12) {
                _ if kind == "escape-dense" => format!("w{} \"q\"\n", i % 97),
                (0, _) => "\"quoted\" ".to_string(),
                (_, 11) => format!("word{}\n", i % 97),
                _ => format!("word{} ", i % 97),
            })
            .collect();
        let body = json!({
            "model": "llama",
            "stream": true,
            "messages": [
                {"role": "system", "content": text},
                {"role": "user", "content": "What now?"}
            ],
            "max_tokens": 128
        })
        .to_string();
        let inspected = inspect(body.as_bytes()).expect("valid body");
        let (mut spliced, mut reserialised) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            let t = Instant::now();
            let out = rewrite(&inspected, body.as_bytes(), Some("meta-llama/x"), true);
            spliced.push(t.elapsed());
            std::hint::black_box(out);
            let t = Instant::now();
            let object = edited_object(&inspected, Some("meta-llama/x"), true);
            let out = serde_json::to_vec(&Value::Object(object)).unwrap();
            reserialised.push(t.elapsed());
            std::hint::black_box(out);
        }
        let (s, r) = (fastest(spliced), fastest(reserialised));
        println!(
            "| {kind} | {} | {:.1} | {:.1} | {:.1} × |",
            body.len(),
            s.as_secs_f64() * 1e6,
            r.as_secs_f64() * 1e6,
            r.as_secs_f64() / s.as_secs_f64()
        );
    }
}
