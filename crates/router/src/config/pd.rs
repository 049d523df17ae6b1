//! Prefill/decode settings of a ModelServer with a `pdGroup`: which hand-off protocol its
//! engines speak, and the router-side knobs (annotations) for conditional disaggregation and
//! prefill admission. Pure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use muster_api::networking::{InferenceEngine, KvConnectorType, ModelServerSpec};
use serde::Serialize;

use crate::duration::parse_duration;
use crate::scheduler::{PluginKind, SchedulerProfile};

/// ModelServer annotation: prefill legs in flight per decode endpoint (default
/// [`DEFAULT_MAX_PREFILL_PER_DECODE`]); further requests for that decoder queue.
pub const MAX_PREFILL_PER_DECODE_ANNOTATION: &str = "router.muster.dev/max-prefill-per-decode";
/// ModelServer annotation: how long a request may queue for a prefill slot (Go duration,
/// default 10s) before it is answered 503.
pub const PREFILL_QUEUE_TIMEOUT_ANNOTATION: &str = "router.muster.dev/prefill-queue-timeout";
/// ModelServer annotation: disaggregate only when at least this many prompt tokens are not
/// already cached on the chosen decode endpoint (default
/// [`DEFAULT_MIN_UNCACHED_TOKENS`]; `0` always disaggregates).
pub const PD_MIN_UNCACHED_TOKENS_ANNOTATION: &str = "router.muster.dev/pd-min-uncached-tokens";
/// ModelServer annotation (SGLang): the prefill engines' bootstrap port (default 8998, as
/// SGLang), or `workloadPort` when they serve bootstrap on their HTTP port.
pub const BOOTSTRAP_PORT_ANNOTATION: &str = "router.muster.dev/bootstrap-port";

/// Score a pair gains when its prefill and decode endpoints share a node (like a plugin
/// weight; 0 ignores placement).
pub const PD_SAME_NODE_WEIGHT_ANNOTATION: &str = "router.muster.dev/pd-same-node-weight";

/// Default [`PD_SAME_NODE_WEIGHT_ANNOTATION`]: as much as one plugin at full score.
pub const DEFAULT_SAME_NODE_WEIGHT: f64 = 1.0;

/// Default of [`MAX_PREFILL_PER_DECODE_ANNOTATION`].
pub const DEFAULT_MAX_PREFILL_PER_DECODE: u32 = 8;
/// Default of [`PD_MIN_UNCACHED_TOKENS_ANNOTATION`]: below this a decode engine computes the
/// suffix itself faster than a transfer round trip (≈ 2 ms handshake + a second request).
pub const DEFAULT_MIN_UNCACHED_TOKENS: u64 = 256;
/// SGLang's default bootstrap port.
pub const SGLANG_BOOTSTRAP_PORT: u16 = 8998;

/// How KV moves from the prefill engine to the decode engine, i.e. which legs the router sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PdConnector {
    /// vLLM NIXL (and Mooncake): prefill leg with `kv_transfer_params.do_remote_decode`,
    /// `max_tokens: 1`; its response's `kv_transfer_params` are copied into the decode leg.
    Nixl,
    /// SGLang: both legs carry `bootstrap_host/port/room` and are sent concurrently.
    Bootstrap,
    /// HTTP/LMCache: prefill leg with `max_tokens: 1`, then the original request to decode;
    /// the engines move KV through their shared store.
    Http,
}

/// Where SGLang prefill engines serve bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BootstrapPort {
    /// A fixed port on the prefill pod's IP.
    Port(u16),
    /// The prefill endpoint's own HTTP port.
    WorkloadPort,
}

/// Resolved PD settings of a server.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PdSettings {
    /// Hand-off protocol.
    pub connector: PdConnector,
    /// Prefill legs in flight per decode endpoint.
    pub max_prefill_per_decode: u32,
    /// Longest wait for a prefill slot.
    #[serde(serialize_with = "crate::duration::serialize_seconds")]
    pub queue_timeout: Duration,
    /// Uncached prompt tokens on the decoder below which it serves the request alone.
    pub min_uncached_tokens: u64,
    /// SGLang bootstrap port.
    pub bootstrap_port: BootstrapPort,
    /// Added to a pair's score when both endpoints are on one node.
    pub same_node_weight: f64,
    /// The server's profile without prefix scorers: how a decode endpoint is scored inside a
    /// pair (its cache does not matter there — the prefill side computes the prompt).
    #[serde(skip)]
    pub decode_profile: Arc<SchedulerProfile>,
    /// The server's profile without session affinity: how a prefill endpoint is scored inside
    /// a pair (a conversation sticks to its decoder; the prefill side follows its cache).
    #[serde(skip)]
    pub prefill_profile: Arc<SchedulerProfile>,
}

/// The connector a server's engines speak.
pub fn connector_of(spec: &ModelServerSpec) -> PdConnector {
    match (
        spec.inference_engine,
        spec.kv_connector.as_ref().map(|k| k.type_),
    ) {
        (InferenceEngine::SGLang, _) => PdConnector::Bootstrap,
        (InferenceEngine::VLlm, Some(KvConnectorType::Nixl | KvConnectorType::Mooncake)) => {
            PdConnector::Nixl
        }
        (InferenceEngine::VLlm, _) => PdConnector::Http,
    }
}

/// PD settings from a PD server's spec and annotations; problems are pushed as
/// `(reason, message)` and the default is used for that knob.
pub fn settings(
    spec: &ModelServerSpec,
    annotations: &BTreeMap<String, String>,
    profile: &SchedulerProfile,
    problems: &mut Vec<(&'static str, String)>,
) -> PdSettings {
    let mut bad = |name: &str, value: &str, why: &str| {
        problems.push((
            "InvalidPdSettings",
            format!("annotation {name} is {value:?}: {why}; using the default"),
        ));
    };
    let max_prefill_per_decode = match annotations.get(MAX_PREFILL_PER_DECODE_ANNOTATION) {
        None => DEFAULT_MAX_PREFILL_PER_DECODE,
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                bad(
                    MAX_PREFILL_PER_DECODE_ANNOTATION,
                    v,
                    "expected an integer ≥ 1",
                );
                DEFAULT_MAX_PREFILL_PER_DECODE
            }
        },
    };
    let queue_timeout = match annotations.get(PREFILL_QUEUE_TIMEOUT_ANNOTATION) {
        None => Duration::from_secs(10),
        Some(v) => match parse_duration(v.trim()) {
            Ok(d) => d,
            Err(e) => {
                bad(PREFILL_QUEUE_TIMEOUT_ANNOTATION, v, &e);
                Duration::from_secs(10)
            }
        },
    };
    let min_uncached_tokens = match annotations.get(PD_MIN_UNCACHED_TOKENS_ANNOTATION) {
        None => DEFAULT_MIN_UNCACHED_TOKENS,
        Some(v) => v.trim().parse::<u64>().unwrap_or_else(|_| {
            bad(
                PD_MIN_UNCACHED_TOKENS_ANNOTATION,
                v,
                "expected a token count ≥ 0",
            );
            DEFAULT_MIN_UNCACHED_TOKENS
        }),
    };
    let bootstrap_port = match annotations.get(BOOTSTRAP_PORT_ANNOTATION).map(|v| v.trim()) {
        None => BootstrapPort::Port(SGLANG_BOOTSTRAP_PORT),
        Some("workloadPort") => BootstrapPort::WorkloadPort,
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p != 0 => BootstrapPort::Port(p),
            _ => {
                bad(
                    BOOTSTRAP_PORT_ANNOTATION,
                    v,
                    "expected a port number or workloadPort",
                );
                BootstrapPort::Port(SGLANG_BOOTSTRAP_PORT)
            }
        },
    };
    let same_node_weight = match annotations.get(PD_SAME_NODE_WEIGHT_ANNOTATION) {
        None => DEFAULT_SAME_NODE_WEIGHT,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(w) if w.is_finite() && w >= 0.0 => w,
            _ => {
                bad(PD_SAME_NODE_WEIGHT_ANNOTATION, v, "expected a number ≥ 0");
                DEFAULT_SAME_NODE_WEIGHT
            }
        },
    };
    PdSettings {
        connector: connector_of(spec),
        same_node_weight,
        max_prefill_per_decode,
        queue_timeout,
        min_uncached_tokens,
        bootstrap_port,
        decode_profile: Arc::new(profile.without(&[PluginKind::PrefixCache, PluginKind::KvEvents])),
        prefill_profile: Arc::new(profile.without(&[PluginKind::SessionAffinity])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ModelServerSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const BASE: &str = "workloadSelector:\n  matchLabels: {app: x}\nworkloadPort: {port: 8000}\n";

    #[test]
    fn connector_follows_engine_and_kv_connector() {
        let cases = [
            ("inferenceEngine: SGLang\n", PdConnector::Bootstrap),
            (
                "inferenceEngine: vLLM\nkvConnector: {type: nixl}\n",
                PdConnector::Nixl,
            ),
            (
                "inferenceEngine: vLLM\nkvConnector: {type: mooncake}\n",
                PdConnector::Nixl,
            ),
            (
                "inferenceEngine: vLLM\nkvConnector: {type: lmcache}\n",
                PdConnector::Http,
            ),
            ("inferenceEngine: vLLM\n", PdConnector::Http),
        ];
        for (head, want) in cases {
            assert_eq!(
                connector_of(&spec(&format!("{head}{BASE}"))),
                want,
                "{head}"
            );
        }
    }

    #[test]
    fn annotations_override_defaults_and_bad_values_are_reported() {
        let s = spec(&format!("inferenceEngine: SGLang\n{BASE}"));
        let profile = SchedulerProfile::default();
        let mut problems = Vec::new();
        let d = settings(&s, &BTreeMap::new(), &profile, &mut problems);
        assert!(problems.is_empty());
        assert_eq!(d.max_prefill_per_decode, DEFAULT_MAX_PREFILL_PER_DECODE);
        assert_eq!(d.bootstrap_port, BootstrapPort::Port(8998));

        let set = annotations(&[
            (MAX_PREFILL_PER_DECODE_ANNOTATION, "2"),
            (PREFILL_QUEUE_TIMEOUT_ANNOTATION, "1500ms"),
            (PD_MIN_UNCACHED_TOKENS_ANNOTATION, "0"),
            (BOOTSTRAP_PORT_ANNOTATION, "workloadPort"),
            (PD_SAME_NODE_WEIGHT_ANNOTATION, "0.5"),
        ]);
        let s2 = settings(&s, &set, &profile, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s2.max_prefill_per_decode, 2);
        assert_eq!(s2.queue_timeout, Duration::from_millis(1500));
        assert_eq!(s2.min_uncached_tokens, 0);
        assert_eq!(s2.bootstrap_port, BootstrapPort::WorkloadPort);
        assert_eq!(s2.same_node_weight, 0.5);

        let bad = annotations(&[
            (MAX_PREFILL_PER_DECODE_ANNOTATION, "0"),
            (BOOTSTRAP_PORT_ANNOTATION, "http"),
            (PD_SAME_NODE_WEIGHT_ANNOTATION, "-1"),
        ]);
        let s3 = settings(&s, &bad, &profile, &mut problems);
        assert_eq!(s3.max_prefill_per_decode, DEFAULT_MAX_PREFILL_PER_DECODE);
        assert_eq!(s3.same_node_weight, DEFAULT_SAME_NODE_WEIGHT);
        assert_eq!(problems.len(), 3);
        assert!(
            problems[0].1.contains("max-prefill-per-decode") && problems[0].1.contains("\"0\"")
        );
        assert!(problems[1].1.contains("bootstrap-port"));
        assert!(problems[2].1.contains("pd-same-node-weight") && problems[2].1.contains("\"-1\""));
    }
}
