//! Where a policy's metrics come from, and reading a metric out of Prometheus text.
//!
//! Pure: given the policy, the target's pods and scraped text, decide what to scrape and what
//! the fleet-wide value is. The HTTP side is in `scrape.rs`; router and Prometheus sources are
//! read by `remote.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use muster_api::autoscaling::{MetricSource, Target};
use muster_api::labels;

/// How one policy metric is read from the target's pods.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSource {
    /// Metric name in the pods' exposition.
    pub exposed_name: String,
    /// HTTP path, `/metrics` by default.
    pub path: String,
    /// Port; `None` means the pod's first container port.
    pub port: Option<u16>,
    /// Label selector of the pods to scrape, in list-selector syntax.
    pub selector: String,
}

/// Where one policy metric is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The target's pods, each scraped and the values added up.
    Pods(PodSource),
    /// One Prometheus exposition (Muster's router) holding the fleet-wide value.
    Router {
        /// Metrics URL.
        url: String,
        /// Metric name in it.
        name: String,
    },
    /// A PromQL instant query.
    Prometheus {
        /// Prometheus base URL.
        server_url: String,
        /// The query.
        query: String,
    },
}

/// A metric source that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// A label selector that cannot be written as a list selector.
    #[error("metric {metric:?}: label selector: {reason}")]
    Selector {
        /// Policy metric name.
        metric: String,
        /// What is wrong.
        reason: String,
    },
}

/// Resolves where `metric` is read from for `target`: by default the entry pods of the
/// target ModelServing, or of one of its roles when `role` is given.
pub fn metric_source(
    target: &Target,
    role: Option<&str>,
    metric: &str,
) -> Result<Source, SourceError> {
    let mut default_selector = format!(
        "{}={},{}=true",
        labels::MODEL_SERVING_NAME,
        target.target_ref.name,
        labels::ENTRY
    );
    if let Some(role) = role {
        default_selector.push_str(&format!(",{}={role}", labels::ROLE));
    }
    let source = target
        .metric_sources
        .get(metric)
        .cloned()
        .unwrap_or(MetricSource::default());
    if let Some(r) = source.router {
        return Ok(Source::Router {
            url: r.url,
            name: r.name.unwrap_or_else(|| metric.to_string()),
        });
    }
    if let Some(p) = source.prometheus {
        return Ok(Source::Prometheus {
            server_url: p.server_url,
            query: p.query,
        });
    }
    let pod = source.pod.unwrap_or_default();
    let selector = match &pod.label_selector {
        Some(sel) => selector_string(sel).map_err(|reason| SourceError::Selector {
            metric: metric.into(),
            reason,
        })?,
        None => default_selector,
    };
    Ok(Source::Pods(PodSource {
        exposed_name: pod.name.unwrap_or_else(|| metric.to_string()),
        path: pod
            .uri
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "/metrics".into()),
        port: pod
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0),
        selector,
    }))
}

/// Writes a `LabelSelector` in the list-selector syntax the API server accepts.
pub fn selector_string(sel: &LabelSelector) -> Result<String, String> {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => return Err(format!("unknown operator {other:?}")),
        });
    }
    if parts.is_empty() {
        // An empty selector would scrape every pod in the namespace.
        return Err("selector is empty".into());
    }
    Ok(parts.join(","))
}

/// A pod to scrape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Pod name, for messages.
    pub pod: String,
    /// `podIP:port`.
    pub addr: SocketAddr,
}

/// The Ready, live pods of `pods` with an IP, and the port each is scraped on. Pods with no
/// port to use are returned in the second list with the reason.
pub fn endpoints(pods: &[Pod], port: Option<u16>) -> (Vec<Endpoint>, Vec<(String, String)>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() || !is_ready(pod) {
            // Not serving traffic, so its load is not part of the fleet's.
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let port = port.or_else(|| {
            pod.spec.as_ref().and_then(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .next()
                    .and_then(|p| u16::try_from(p.container_port).ok())
            })
        });
        match port {
            Some(port) => out.push(Endpoint {
                pod: name,
                addr: SocketAddr::new(ip, port),
            }),
            None => skipped.push((
                name,
                "no port in the metric source and no container port".into(),
            )),
        }
    }
    out.sort();
    (out, skipped)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Splits a sample line into metric name and value; `None` for comments, blanks and junk.
fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t'])?;
    let (name, mut rest) = line.split_at(name_end);
    if rest.starts_with('{') {
        // Label values may hold spaces and braces inside quotes.
        let (mut in_quotes, mut escaped, mut close) = (false, false, None);
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
        rest = &rest[close? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, value))
}

/// The sum of every series of `name` in Prometheus text `text` (data-parallel ranks, several
/// served models), or `None` when the metric is absent: absent is not zero.
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for (n, v) in text.lines().filter_map(sample) {
        if n == name && v.is_finite() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// What the pods reported for one metric.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricReading {
    /// Pod name → value, for pods that answered with the metric.
    pub values: BTreeMap<String, f64>,
    /// Pod name → why it gave no value.
    pub failures: BTreeMap<String, String>,
}

impl MetricReading {
    /// Fleet-wide value: the mean over the pods that answered times the number of pods
    /// (answered + failed), so one pod that cannot be scraped is assumed as loaded as the rest
    /// (summing only the answers would read an outage as a drop in load). `None` when no pod
    /// answered.
    pub fn fleet_total(&self) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let mean = self.values.values().sum::<f64>() / self.values.len() as f64;
        Some(mean * (self.values.len() + self.failures.len()) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_api::autoscaling::{PodMetricSource, TargetRef};
    use serde_json::json;

    #[test]
    fn sums_series_and_tells_absent_from_zero() {
        let text = r#"
# HELP vllm:num_requests_waiting Waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m {x} \" }"} 2
vllm:num_requests_waiting_total 100
vllm:num_requests_running{engine="0"} 0 1700000000000
"#;
        assert_eq!(sum_metric(text, "vllm:num_requests_waiting"), Some(5.0));
        assert_eq!(sum_metric(text, "vllm:num_requests_running"), Some(0.0));
        assert_eq!(sum_metric(text, "vllm:kv_cache_usage_perc"), None);
        assert_eq!(sum_metric("garbage {{{ here", "garbage"), None);
    }

    fn target(sources: serde_json::Value) -> Target {
        Target {
            target_ref: TargetRef {
                kind: None,
                name: "qwen".into(),
            },
            metric_sources: serde_json::from_value(sources).unwrap(),
        }
    }

    #[test]
    fn pod_source_defaults_and_overrides() {
        let pods = |s: Source| match s {
            Source::Pods(p) => p,
            other => panic!("not a pod source: {other:?}"),
        };
        let s = pods(metric_source(&target(json!({})), None, "m").unwrap());
        assert_eq!(s.exposed_name, "m");
        assert_eq!(s.path, "/metrics");
        assert_eq!(s.port, None);
        assert_eq!(
            s.selector,
            "modelserving.muster.dev/name=qwen,modelserving.muster.dev/entry=true"
        );
        let s = pods(metric_source(&target(json!({})), Some("decode"), "m").unwrap());
        assert!(
            s.selector.ends_with(",modelserving.muster.dev/role=decode"),
            "{}",
            s.selector
        );
        let t = target(json!({"m": {"pod": {"name": "x", "uri": "/m", "port": 9000,
            "labelSelector": {"matchLabels": {"a": "b"},
              "matchExpressions": [{"key": "r", "operator": "In", "values": ["p", "d"]}]}}}}));
        let s = pods(metric_source(&t, None, "m").unwrap());
        assert_eq!(
            (s.exposed_name.as_str(), s.path.as_str(), s.port),
            ("x", "/m", Some(9000))
        );
        assert_eq!(s.selector, "a=b,r in (p,d)");
        let t =
            target(json!({"m": {"prometheus": {"serverURL": "http://127.0.0.1:1", "query": "q"}}}));
        assert_eq!(
            metric_source(&t, None, "m").unwrap(),
            Source::Prometheus {
                server_url: "http://127.0.0.1:1".into(),
                query: "q".into()
            }
        );
        let t = target(json!({"m": {"router": {"url": "http://127.0.0.1:2/metrics"}}}));
        assert_eq!(
            metric_source(&t, None, "m").unwrap(),
            Source::Router {
                url: "http://127.0.0.1:2/metrics".into(),
                name: "m".into()
            }
        );
        let empty = PodMetricSource {
            label_selector: Some(LabelSelector::default()),
            ..Default::default()
        };
        let t = Target {
            metric_sources: [(
                "m".to_string(),
                MetricSource {
                    pod: Some(empty),
                    ..Default::default()
                },
            )]
            .into(),
            ..target(json!({}))
        };
        assert!(matches!(
            metric_source(&t, None, "m"),
            Err(SourceError::Selector { .. })
        ));
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, port: Option<i32>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "e", "ports": port.map(|p| vec![json!({"containerPort": p})]).unwrap_or_default()}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn endpoints_take_ready_pods_with_ips_and_a_port() {
        let pods = [
            pod("a", Some("127.1.0.5"), true, Some(8000)),
            pod("b", Some("127.1.0.6"), false, Some(8000)),
            pod("c", None, true, Some(8000)),
            pod("d", Some("127.1.0.7"), true, None),
        ];
        let (eps, skipped) = endpoints(&pods, None);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addr, "127.1.0.5:8000".parse().unwrap());
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, "d");
        let (eps, _) = endpoints(&pods, Some(9100));
        assert_eq!(
            eps.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
            ["127.1.0.5:9100", "127.1.0.7:9100"]
        );
    }

    #[test]
    fn fleet_total_extrapolates_over_failed_pods() {
        let mut r = MetricReading::default();
        assert_eq!(r.fleet_total(), None);
        r.values.insert("a".into(), 4.0);
        r.values.insert("b".into(), 2.0);
        assert_eq!(r.fleet_total(), Some(6.0));
        r.failures.insert("c".into(), "timeout".into());
        assert_eq!(r.fleet_total(), Some(9.0));
    }
}
