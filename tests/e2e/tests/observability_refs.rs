//! The Grafana dashboards (`config/grafana/*.json`) and the alert rules
//! (`config/prometheus/muster-rules.yaml`) query only metrics that exist in the code, so a
//! renamed or removed metric fails here instead of leaving an empty panel or a silent alert.
//! Needs no cluster.
//!
//! Where names come from: `muster_*` names are string literals in `crates/*/src` (the router and
//! controller register each metric under one literal name); engine names are `vllm:` or
//! `sglang:` followed by a literal of `crates/engine-sim/src/metrics.rs`, which builds vLLM's and
//! SGLang's names from their prefix and a base name.

use std::collections::BTreeSet;
use std::path::Path;

use muster_e2e::repo_root;
use serde_json::Value;

/// Every `"<prefix>…"` string literal (identifier characters only) in the `.rs` files under
/// `dir`, recursively.
fn literals(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            literals(&path, prefix, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.extend(literals_in(&text, prefix));
        }
    }
}

fn literals_in(text: &str, prefix: &str) -> Vec<String> {
    let needle = format!("\"{prefix}");
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if after[len..].starts_with('"') && len > prefix.len() {
            found.push(after[..len].to_string());
        }
        rest = &rest[i + 1..];
    }
    found
}

/// Metric names the code defines.
fn defined_metrics() -> BTreeSet<String> {
    let root = repo_root();
    let mut names = BTreeSet::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            literals(&src, "muster_", &mut names);
        }
    }
    let engine = std::fs::read_to_string(root.join("crates/engine-sim/src/metrics.rs"))
        .expect("engine-sim metrics");
    for prefix in ["vllm", "sglang"] {
        assert!(
            engine.contains(&format!("\"{prefix}\"")),
            "engine-sim metrics.rs no longer names the {prefix} prefix"
        );
        for base in literals_in(&engine, "") {
            names.insert(format!("{prefix}:{base}"));
        }
    }
    names
}

/// Metric-looking tokens of a PromQL expression: the names Muster or the engines own.
fn referenced(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("muster_") || t.starts_with("vllm:") || t.starts_with("sglang:"))
        .map(str::to_string)
        .collect()
}

/// True if `name` is defined, or is a histogram series (`_bucket`, `_sum`, `_count`) of one.
fn exists(name: &str, defined: &BTreeSet<String>) -> bool {
    defined.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| defined.contains(base))
        })
}

/// Every PromQL string of a dashboard: panel targets and templating queries.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

fn check(source: &str, exprs: &[String], defined: &BTreeSet<String>, errors: &mut Vec<String>) {
    assert!(!exprs.is_empty(), "{source}: no queries found");
    for expr in exprs {
        let names = referenced(expr);
        if names.is_empty() && !expr.trim_start().starts_with("up{") {
            errors.push(format!(
                "{source}: query names no Muster or engine metric: {expr}"
            ));
        }
        for n in names {
            if !exists(&n, defined) {
                errors.push(format!(
                    "{source}: metric {n} is not defined in the code ({expr})"
                ));
            }
        }
    }
}

#[test]
fn dashboards_and_alerts_query_only_metrics_that_exist() {
    let defined = defined_metrics();
    for sure in [
        "muster_router_requests_total",
        "muster_controller_reconciles_total",
        "vllm:num_requests_waiting",
    ] {
        assert!(
            defined.contains(sure),
            "the scan of the code missed {sure}: {defined:?}"
        );
    }
    let root = repo_root();
    let mut errors = Vec::new();
    let mut dashboards = 0;
    for entry in std::fs::read_dir(root.join("config/grafana")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        dashboards += 1;
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut exprs = Vec::new();
        dashboard_queries(&doc, &mut exprs);
        check(&path.display().to_string(), &exprs, &defined, &mut errors);
    }
    assert!(
        dashboards >= 3,
        "expected the router, engine and controller dashboards"
    );

    let rules_path = root.join("config/prometheus/muster-rules.yaml");
    let rules: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules_path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for group in rules["spec"]["groups"].as_array().expect("spec.groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            assert!(
                rule["annotations"]["summary"].is_string(),
                "alert {name} has no summary"
            );
            exprs.push(rule["expr"].as_str().expect("expr").to_string());
        }
    }
    check(
        &rules_path.display().to_string(),
        &exprs,
        &defined,
        &mut errors,
    );
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
}

#[test]
fn the_reference_check_catches_a_renamed_metric() {
    let defined: BTreeSet<String> = ["muster_router_time_to_first_token_seconds".to_string()]
        .into_iter()
        .collect();
    let mut errors = Vec::new();
    check(
        "example",
        &[
            "histogram_quantile(0.99, sum by (le) (rate(muster_router_time_to_first_token_seconds_bucket[5m])))".into(),
            "rate(muster_router_ttft_seconds_count[5m])".into(),
            "sum(rate(mustr_router_requests_total[5m]))".into(),
        ],
        &defined,
        &mut errors,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("muster_router_ttft_seconds_count"));
    assert!(errors[1].contains("names no Muster or engine metric"));
}
