//! Reads the handful of engine gauges the scheduler uses from Prometheus text exposition.
//!
//! Counts are summed over every series (data-parallel ranks, several served models) and KV
//! usage takes the maximum, instead of letting whichever series comes last win.

use muster_api::networking::InferenceEngine;

use crate::scheduler::{EngineLoad, LoraLoad};

struct Names {
    waiting: &'static [&'static str],
    running: &'static [&'static str],
    kv_usage: &'static [&'static str],
}

fn names(engine: InferenceEngine) -> Names {
    match engine {
        InferenceEngine::VLlm => Names {
            waiting: &["vllm:num_requests_waiting"],
            running: &["vllm:num_requests_running"],
            // Older vLLM releases call it gpu_cache_usage_perc.
            kv_usage: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
        },
        InferenceEngine::SGLang => Names {
            waiting: &["sglang:num_queue_reqs"],
            running: &["sglang:num_running_reqs"],
            kv_usage: &["sglang:token_usage"],
        },
    }
}

/// Splits a sample line into metric name and value; `None` for comments, blanks and junk.
fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let rest = if rest.starts_with('{') {
        // Label values may contain spaces and braces inside quotes; find the closing brace
        // outside quotes.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        &rest[close? + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, value))
}

/// The engine load in `text`, or `None` when none of the engine's gauges is present.
pub fn parse_engine_load(text: &str, engine: InferenceEngine) -> Option<EngineLoad> {
    let n = names(engine);
    let mut load = EngineLoad::default();
    let mut found = false;
    for (name, value) in text.lines().filter_map(sample) {
        if !value.is_finite() {
            continue;
        }
        if n.waiting.contains(&name) {
            load.waiting += value;
            found = true;
        } else if n.running.contains(&name) {
            load.running += value;
            found = true;
        } else if n.kv_usage.contains(&name) {
            load.kv_cache_usage = load.kv_cache_usage.max(value);
            found = true;
        }
    }
    found.then_some(load)
}

/// The value of label `name` in a sample line's `{…}` block (quotes unescaped).
fn label<'a>(line: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let open = line.find('{')?;
    let mut rest = &line[open + 1..];
    loop {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().trim_start_matches(',').trim();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        let raw = &after[..end];
        if key == name {
            return Some(if raw.contains('\\') {
                std::borrow::Cow::Owned(raw.replace("\\\"", "\"").replace("\\\\", "\\"))
            } else {
                std::borrow::Cow::Borrowed(raw)
            });
        }
        rest = &after[end + 1..];
    }
}

/// vLLM's `vllm:lora_requests_info` (labels `max_lora`, `running_lora_adapters`,
/// `waiting_lora_adapters`, comma-separated). vLLM keeps one series per label set with the
/// update time as value, so the series with the largest value is the current one.
pub fn parse_lora(text: &str) -> Option<LoraLoad> {
    let mut best: Option<(f64, LoraLoad)> = None;
    for line in text.lines() {
        let Some((name, value)) = sample(line) else {
            continue;
        };
        if name != "vllm:lora_requests_info" || best.as_ref().is_some_and(|(v, _)| *v > value) {
            continue;
        }
        let list = |l: &str| -> Vec<String> {
            label(line, l)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let max_loras = label(line, "max_lora")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        best = Some((
            value,
            LoraLoad {
                max_loras,
                running: list("running_lora_adapters"),
                waiting: list("waiting_lora_adapters"),
            },
        ));
    }
    best.map(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_info_takes_the_newest_series() {
        let text = r#"
vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters=""} 100
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql, chat",waiting_lora_adapters="x"} 200
vllm:num_requests_running 2
"#;
        assert_eq!(
            parse_lora(text),
            Some(LoraLoad {
                max_loras: 4,
                running: vec!["sql".into(), "chat".into()],
                waiting: vec!["x".into()],
            })
        );
        assert_eq!(parse_lora("vllm:num_requests_running 2\n"), None);
    }

    #[test]
    fn sums_series_and_ignores_lookalikes() {
        let text = r#"
# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m {x}"} 2.0
vllm:num_requests_running{engine="0",model_name="m"} 7
vllm:num_requests_running_total 100
vllm:kv_cache_usage_perc{engine="0"} 0.25
vllm:kv_cache_usage_perc{engine="1"} 0.5 1700000000000
"#;
        let l = parse_engine_load(text, InferenceEngine::VLlm).unwrap();
        assert_eq!(l.waiting, 5.0);
        assert_eq!(l.running, 7.0);
        assert_eq!(l.kv_cache_usage, 0.5);
    }

    #[test]
    fn sglang_names_and_missing_metrics() {
        let text = "sglang:num_queue_reqs{model_name=\"m\"} 4\nsglang:token_usage 0.1\n";
        let l = parse_engine_load(text, InferenceEngine::SGLang).unwrap();
        assert_eq!((l.waiting, l.running, l.kv_cache_usage), (4.0, 0.0, 0.1));
        assert_eq!(parse_engine_load(text, InferenceEngine::VLlm), None);
        assert_eq!(
            parse_engine_load("garbage {{{ here", InferenceEngine::VLlm),
            None
        );
    }
}
