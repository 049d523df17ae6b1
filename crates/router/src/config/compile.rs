//! `ConfigInput → CompiledConfig`: validation, defaults, route ordering and shadowing. Pure.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use muster_api::networking::{PdGroup, Protocol};

use super::matching::CompiledRule;
use super::*;
use crate::duration::parse_duration;
use crate::scheduler::profile::SCHEDULER_ANNOTATION;

/// Compiles everything a source observed. Problems never drop the whole configuration: a bad
/// object is reported (and, where it cannot be served safely, left out) on its own.
pub fn compile(input: &ConfigInput, defaults: &Defaults) -> CompiledConfig {
    let mut out = CompiledConfig::default();
    for s in &input.servers {
        let (server, report) = compile_server(s, defaults);
        out.server_reports.push(report);
        out.servers.insert(s.key.clone(), Arc::new(server));
    }

    let mut routes: Vec<&RouteInput> = input.routes.iter().collect();
    routes.sort_by(|a, b| {
        let ca = a.created.unwrap_or(i64::MAX);
        let cb = b.created.unwrap_or(i64::MAX);
        ca.cmp(&cb)
            .then(a.position.cmp(&b.position))
            .then(a.key.cmp(&b.key))
    });
    // Names that an older route already serves with a catch-all rule: newer routes for them
    // can never receive traffic.
    let mut caught: HashSet<String> = HashSet::new();
    let mut models: BTreeSet<String> = BTreeSet::new();
    for r in routes {
        let (compiled, accepted) = match compile_route(r) {
            Ok(c) => (Some(c), Ok(())),
            Err(e) => (None, Err(("InvalidRoute".to_string(), e))),
        };
        let ready = route_targets_ready(r, &out.servers);
        let Some(route) = compiled else {
            out.route_reports.push(RouteReport {
                key: r.key.clone(),
                generation: r.generation,
                accepted,
                ready,
            });
            continue;
        };
        let names = route_names(&route);
        let accepted = if !names.is_empty() && names.iter().all(|n| caught.contains(n)) {
            Err((
                "Shadowed".to_string(),
                format!(
                    "an older ModelRoute serves {} with a rule that matches every request",
                    names.join(", ")
                ),
            ))
        } else {
            Ok(())
        };
        let catch_all = route.rules.iter().any(|rule| rule.matcher.is_none());
        let route = Arc::new(route);
        for n in &names {
            if catch_all {
                caught.insert(n.clone());
            }
            models.insert(n.clone());
            out.routes.entry(n.clone()).or_default().push(route.clone());
        }
        out.route_reports.push(RouteReport {
            key: r.key.clone(),
            generation: r.generation,
            accepted,
            ready,
        });
    }
    out.models = models.into_iter().collect();
    out
}

fn route_names(route: &CompiledRoute) -> Vec<String> {
    let mut names = Vec::new();
    if !route.model_name.is_empty() {
        names.push(route.model_name.clone());
    }
    for l in &route.lora_adapters {
        if !names.contains(l) {
            names.push(l.clone());
        }
    }
    names
}

fn compile_route(r: &RouteInput) -> Result<CompiledRoute, String> {
    if r.spec.model_name.is_empty() && r.spec.lora_adapters.is_empty() {
        return Err("set modelName or at least one of loraAdapters".into());
    }
    if r.spec.rules.is_empty() {
        return Err("rules is empty, so the route can send traffic nowhere".into());
    }
    let rules = r
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| CompiledRule::compile(rule, i, &r.key.namespace))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CompiledRoute {
        key: r.key.clone(),
        label: r.key.to_string().into(),
        model_name: r.spec.model_name.clone(),
        lora_adapters: r.spec.lora_adapters.clone(),
        rules,
        rate_limit: r.spec.rate_limit.clone(),
    })
}

fn route_targets_ready(
    r: &RouteInput,
    servers: &HashMap<ObjectKey, Arc<CompiledServer>>,
) -> Verdict {
    let missing: BTreeSet<String> = r
        .spec
        .rules
        .iter()
        .flat_map(|rule| &rule.target_models)
        .map(|t| ObjectKey::new(&r.key.namespace, &t.model_server_name))
        .filter(|k| !servers.contains_key(k))
        .map(|k| k.name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err((
            "ModelServerNotFound".into(),
            format!(
                "target ModelServer(s) {} do not exist in namespace {}",
                missing.into_iter().collect::<Vec<_>>().join(", "),
                r.key.namespace
            ),
        ))
    }
}

fn labels_match(labels: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A pod that only prefills never gets a whole request: it is a prefill peer of the decoders
/// in its PD group.
fn prefill_only(pd: &PdGroup, labels: &BTreeMap<String, String>) -> bool {
    labels_match(labels, &pd.prefill_labels) && !labels_match(labels, &pd.decode_labels)
}

fn compile_server(s: &ServerInput, defaults: &Defaults) -> (CompiledServer, ServerReport) {
    let mut problems: Vec<(&str, String)> = Vec::new();
    let mut serve = true;

    if s.spec.workload_port.protocol == Protocol::Https {
        problems.push((
            "UnsupportedProtocol",
            "workloadPort.protocol https is not supported by this router yet; use http".into(),
        ));
        serve = false;
    }
    let profile = match s.annotations.get(SCHEDULER_ANNOTATION) {
        None => defaults.profile.clone(),
        Some(text) => match SchedulerProfile::parse(text) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                problems.push((
                    "InvalidSchedulerProfile",
                    format!("annotation {SCHEDULER_ANNOTATION}: {e}; using the router's default profile"),
                ));
                defaults.profile.clone()
            }
        },
    };
    let upstream = match s
        .annotations
        .get(UPSTREAM_PROTOCOL_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("h2c") => UpstreamProtocol::H2c,
        Some(other) => {
            problems.push((
                "InvalidUpstreamProtocol",
                format!("annotation {UPSTREAM_PROTOCOL_ANNOTATION} is {other:?}; use http1 or h2c"),
            ));
            UpstreamProtocol::Http1
        }
    };
    let mut policy = RetryPolicy {
        per_try_timeout: defaults.timeout,
        attempts: defaults.retry_attempts,
        interval: defaults.retry_interval,
    };
    if let Some(tp) = &s.spec.traffic_policy {
        if let Some(t) = &tp.timeout {
            match parse_duration(t) {
                Ok(d) if !d.is_zero() => policy.per_try_timeout = d,
                Ok(_) => problems.push((
                    "InvalidTrafficPolicy",
                    "trafficPolicy.timeout must be positive".into(),
                )),
                Err(e) => problems.push((
                    "InvalidTrafficPolicy",
                    format!("trafficPolicy.timeout: {e}"),
                )),
            }
        }
        if let Some(r) = &tp.retry {
            policy.attempts = r.attempts.clamp(0, 10) as u32;
            policy.interval = Duration::from_millis(100);
            if let Some(i) = &r.retry_interval {
                match parse_duration(i) {
                    Ok(d) => policy.interval = d,
                    Err(e) => problems.push((
                        "InvalidTrafficPolicy",
                        format!("trafficPolicy.retry.retryInterval: {e}"),
                    )),
                }
            }
        }
    }

    // KV events: an explicit address per endpoint (standalone `kvEvents`), else the port in
    // the annotation on the endpoint's own IP (in Kubernetes: the pod IP).
    let kv_events_port = match s.annotations.get(KV_EVENTS_PORT_ANNOTATION) {
        None => None,
        Some(v) => {
            match v.trim().parse::<u16>() {
                Ok(p) if p != 0 => Some(p),
                _ => {
                    problems.push((
                    "InvalidKvEventsPort",
                    format!("annotation {KV_EVENTS_PORT_ANNOTATION} is {v:?}; expected a port number"),
                ));
                    None
                }
            }
        }
    };
    let tokenizer = s
        .annotations
        .get(crate::prefix::tokenize::TOKENIZER_ANNOTATION)
        .filter(|p| !p.trim().is_empty())
        .map(|p| std::path::PathBuf::from(p.trim()));

    let prefill_budget = super::prefill_budget::settings(&s.annotations, &profile, &mut problems);
    let pd = s.spec.workload_selector.pd_group.as_ref();
    let pd_settings =
        pd.map(|_| super::pd::settings(&s.spec, &s.annotations, &profile, &mut problems));
    let mut endpoints: Vec<EndpointSpec> = Vec::new();
    let mut prefill_endpoints: Vec<EndpointSpec> = Vec::new();
    let (mut ready, mut prefill, mut decode) = (0, 0, 0);
    for e in s.endpoints.iter().filter(|e| e.ready) {
        ready += 1;
        let spec = EndpointSpec {
            name: e.name.clone(),
            address: e.address,
            kv_events: e.kv_events.clone().or_else(|| {
                kv_events_port.map(|p| format!("tcp://{}", SocketAddr::new(e.address.ip(), p)))
            }),
            pd_group: pd.and_then(|pd| e.labels.get(&pd.group_key).cloned()),
            node: e.node.clone(),
        };
        let list = match pd {
            Some(pd) => {
                if labels_match(&e.labels, &pd.prefill_labels) {
                    prefill += 1;
                }
                if labels_match(&e.labels, &pd.decode_labels) {
                    decode += 1;
                }
                if prefill_only(pd, &e.labels) {
                    &mut prefill_endpoints
                } else {
                    &mut endpoints
                }
            }
            None => &mut endpoints,
        };
        if serve && !list.iter().any(|x| x.address == e.address) {
            list.push(spec);
        }
    }
    endpoints.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
    prefill_endpoints.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));

    let accepted = match problems.first() {
        None => Ok(()),
        Some((reason, _)) => Err((
            reason.to_string(),
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    };
    let report = ServerReport {
        key: s.key.clone(),
        generation: s.generation,
        accepted,
        total: s.endpoints.len() as i32,
        ready,
        prefill,
        decode,
    };
    let server = CompiledServer {
        key: s.key.clone(),
        label: s.key.to_string().into(),
        model_rewrite: s.spec.model.clone().filter(|m| !m.is_empty()),
        engine: s.spec.inference_engine,
        upstream,
        policy,
        profile,
        endpoints,
        prefill_endpoints,
        pd: pd_settings,
        tokenizer,
        prefill_budget,
    };
    (server, report)
}

#[cfg(test)]
mod tests;
