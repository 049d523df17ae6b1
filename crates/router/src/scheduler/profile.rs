//! Which plugins a ModelServer's requests are scheduled with, and their weights.
//!
//! A profile comes from the router's default (flag or standalone file) or from the
//! `router.muster.dev/scheduler` annotation on a ModelServer, in YAML or JSON:
//!
//! ```yaml
//! plugins:
//!   - {name: least-request, weight: 1}
//!   - {name: kv-cache-usage, weight: 0.5}
//!   - {name: session-affinity, weight: 2}
//! leastRequest: {maxWaitingRequests: 32, queueWeight: 1}
//! sessionAffinity: {header: x-session-id, bodyField: metadata.conversation_id, loadFactor: 1.25, loadSlack: 4}
//! ```

use serde::{Deserialize, Serialize};

/// ModelServer annotation holding a per-server [`SchedulerProfile`].
pub const SCHEDULER_ANNOTATION: &str = "router.muster.dev/scheduler";

/// A scoring plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Uniform random score: spreads load blindly.
    Random,
    /// One endpoint per request in turn.
    RoundRobin,
    /// Fewest router-side in-flight requests and tokens, plus the engine's queue.
    LeastRequest,
    /// Lowest engine KV-cache usage.
    KvCacheUsage,
    /// Same conversation → same endpoint (rendezvous hashing with bounded load).
    SessionAffinity,
    /// Longest cached prefix per the approximate index (what this router sent where),
    /// yielding to load when the warm endpoint's expected wait exceeds a cold one's.
    PrefixCache,
    /// The same, per the engines' KV events (falls back to the approximate index per endpoint
    /// while its events are not live).
    KvEvents,
    /// The request's LoRA adapter is already running on the endpoint.
    LoraAffinity,
}

impl PluginKind {
    /// Every plugin, for metric label pre-registration.
    pub const ALL: [PluginKind; 8] = [
        PluginKind::Random,
        PluginKind::RoundRobin,
        PluginKind::LeastRequest,
        PluginKind::KvCacheUsage,
        PluginKind::SessionAffinity,
        PluginKind::PrefixCache,
        PluginKind::KvEvents,
        PluginKind::LoraAffinity,
    ];

    /// Position in [`PluginKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in configuration, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Random => "random",
            PluginKind::RoundRobin => "round-robin",
            PluginKind::LeastRequest => "least-request",
            PluginKind::KvCacheUsage => "kv-cache-usage",
            PluginKind::SessionAffinity => "session-affinity",
            PluginKind::PrefixCache => "prefix-cache",
            PluginKind::KvEvents => "kv-events",
            PluginKind::LoraAffinity => "lora-affinity",
        }
    }
}

/// One enabled plugin and its weight in the sum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginWeight {
    /// Plugin.
    pub name: PluginKind,
    /// Weight (≥ 0) of its `[0, 1]` score in the total.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// Arguments of the least-request plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeastRequestArgs {
    /// Filter out endpoints whose engine queue is at least this long (unless that would leave
    /// none). Unset: no filter.
    #[serde(default)]
    pub max_waiting_requests: Option<u32>,
    /// Extra weight of a queued (waiting) request relative to a running one.
    #[serde(default = "one")]
    pub queue_weight: f64,
}

impl Default for LeastRequestArgs {
    fn default() -> Self {
        LeastRequestArgs {
            max_waiting_requests: None,
            queue_weight: 1.0,
        }
    }
}

/// Arguments of the session-affinity plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionAffinityArgs {
    /// Request header carrying the conversation id.
    #[serde(default = "default_session_header")]
    pub header: String,
    /// JSON body field carrying it when the header is absent; dots descend into objects
    /// (`metadata.conversation_id`).
    #[serde(default = "default_session_body_field")]
    pub body_field: Option<String>,
    /// Bounded-load factor c ≥ 1: no endpoint takes a session request while its load is above
    /// `c ×` the mean load (plus one), so one hot session cannot overload a pod.
    #[serde(default = "default_load_factor")]
    pub load_factor: f64,
    /// Requests an endpoint may hold above that bound before sessions spill, because an
    /// engine batches many sequences and one extra request is no reason to leave a warm cache.
    #[serde(default = "default_load_slack")]
    pub load_slack: u32,
}

fn default_load_slack() -> u32 {
    4
}

fn default_session_header() -> String {
    "x-session-id".into()
}

fn default_session_body_field() -> Option<String> {
    Some("session_id".into())
}

fn default_load_factor() -> f64 {
    1.25
}

impl Default for SessionAffinityArgs {
    fn default() -> Self {
        SessionAffinityArgs {
            header: default_session_header(),
            body_field: default_session_body_field(),
            load_factor: default_load_factor(),
            load_slack: default_load_slack(),
        }
    }
}

/// Arguments of the `prefix-cache` and `kv-events` plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixCacheArgs {
    /// Tokens per KV block; must equal the engines' block size (vLLM's and engine-sim's
    /// default is 16) or no hash will ever match.
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// Capacity of the approximate index per endpoint, in blocks: the engine's KV capacity
    /// (`num_gpu_blocks`). The default is engine-sim's default profile (Llama-3-8B on one
    /// H100 80GB: 27,298 blocks).
    #[serde(default = "default_capacity_blocks")]
    pub capacity_blocks: usize,
    /// Blocks matched at most (bounds hashing and lookup work on huge prompts).
    #[serde(default = "default_max_blocks")]
    pub max_blocks: usize,
    /// `kv-events`: an endpoint whose engine published no event for this long after a
    /// request was routed to it is scored from the approximate index instead.
    #[serde(default = "default_events_stale_after")]
    pub events_stale_after: String,
    /// `kv-events`: blocks routed to an endpoint this recently count as cached there even
    /// before the engine's events confirm them (bursts of one prefix stay together).
    #[serde(default = "default_predict_window")]
    pub predict_window: String,
    /// How sticky a warm prefix is: an endpoint keeps its affinity score while its expected
    /// wait is at most the cold alternative's plus `(affinitySlack + requests in flight at the
    /// cold endpoint) ×` the prompt tokens its cache saves. The in-flight term charges the
    /// spill for delaying everything the cold endpoint serves while it recomputes the prefix;
    /// the slack is stickiness beyond that, for the copy of the prefix a spill leaves in a
    /// second KV cache. With 0 a request spills to an idle endpoint as soon as the warm queue is
    /// slower for it; the default 1 also charges it for its own recompute.
    #[serde(default = "default_affinity_slack")]
    pub affinity_slack: f64,
}

fn default_block_size() -> usize {
    16
}
fn default_capacity_blocks() -> usize {
    27_298
}
fn default_max_blocks() -> usize {
    8192
}
fn default_events_stale_after() -> String {
    "5s".into()
}
fn default_predict_window() -> String {
    "2s".into()
}
fn default_affinity_slack() -> f64 {
    1.0
}

impl Default for PrefixCacheArgs {
    fn default() -> Self {
        PrefixCacheArgs {
            block_size: default_block_size(),
            capacity_blocks: default_capacity_blocks(),
            max_blocks: default_max_blocks(),
            events_stale_after: default_events_stale_after(),
            predict_window: default_predict_window(),
            affinity_slack: default_affinity_slack(),
        }
    }
}

impl PrefixCacheArgs {
    /// `eventsStaleAfter` as a duration (validated by [`SchedulerProfile::validate`]).
    pub fn events_stale_after(&self) -> std::time::Duration {
        crate::duration::parse_duration(&self.events_stale_after)
            .unwrap_or(std::time::Duration::from_secs(5))
    }

    /// `predictWindow` as a duration.
    pub fn predict_window(&self) -> std::time::Duration {
        crate::duration::parse_duration(&self.predict_window)
            .unwrap_or(std::time::Duration::from_secs(2))
    }
}

/// Plugins, weights and plugin arguments for one ModelServer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulerProfile {
    /// Enabled scorers with weights.
    #[serde(default = "default_plugins")]
    pub plugins: Vec<PluginWeight>,
    /// Least-request arguments.
    #[serde(default)]
    pub least_request: LeastRequestArgs,
    /// Session-affinity arguments.
    #[serde(default)]
    pub session_affinity: SessionAffinityArgs,
    /// Prefix-cache and kv-events arguments.
    #[serde(default)]
    pub prefix_cache: PrefixCacheArgs,
}

fn default_plugins() -> Vec<PluginWeight> {
    vec![
        PluginWeight {
            name: PluginKind::LeastRequest,
            weight: 1.0,
        },
        PluginWeight {
            name: PluginKind::KvCacheUsage,
            weight: 0.5,
        },
        PluginWeight {
            name: PluginKind::SessionAffinity,
            weight: 2.0,
        },
    ]
}

impl Default for SchedulerProfile {
    fn default() -> Self {
        SchedulerProfile {
            plugins: default_plugins(),
            least_request: LeastRequestArgs::default(),
            session_affinity: SessionAffinityArgs::default(),
            prefix_cache: PrefixCacheArgs::default(),
        }
    }
}

impl SchedulerProfile {
    /// Parses a profile from YAML or JSON and checks its ranges, naming the bad field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let profile: SchedulerProfile =
            serde_yaml::from_str(text).map_err(|e| format!("invalid scheduler profile: {e}"))?;
        profile.validate()?;
        Ok(profile)
    }

    /// Checks weights and arguments.
    pub fn validate(&self) -> Result<(), String> {
        for (i, p) in self.plugins.iter().enumerate() {
            if !(p.weight.is_finite() && p.weight >= 0.0) {
                return Err(format!(
                    "plugins[{i}].weight must be a non-negative number, got {}",
                    p.weight
                ));
            }
            if self.plugins[..i].iter().any(|q| q.name == p.name) {
                return Err(format!(
                    "plugins[{i}].name {} is listed twice",
                    p.name.as_str()
                ));
            }
        }
        let qw = self.least_request.queue_weight;
        if !(qw.is_finite() && qw >= 0.0) {
            return Err(format!(
                "leastRequest.queueWeight must be a non-negative number, got {qw}"
            ));
        }
        let c = self.session_affinity.load_factor;
        if !(c.is_finite() && c >= 1.0) {
            return Err(format!(
                "sessionAffinity.loadFactor must be at least 1, got {c}"
            ));
        }
        if self.session_affinity.header.is_empty()
            || hyper::header::HeaderName::from_bytes(self.session_affinity.header.as_bytes())
                .is_err()
        {
            return Err(format!(
                "sessionAffinity.header {:?} is not a valid header name",
                self.session_affinity.header
            ));
        }
        let pc = &self.prefix_cache;
        if !(1..=4096).contains(&pc.block_size) {
            return Err(format!(
                "prefixCache.blockSize must be between 1 and 4096 tokens, got {}",
                pc.block_size
            ));
        }
        if pc.capacity_blocks == 0 {
            return Err("prefixCache.capacityBlocks must be positive".into());
        }
        if pc.max_blocks == 0 {
            return Err("prefixCache.maxBlocks must be positive".into());
        }
        if !(pc.affinity_slack.is_finite() && (0.0..=1000.0).contains(&pc.affinity_slack)) {
            return Err(format!(
                "prefixCache.affinitySlack must be between 0 and 1000, got {}",
                pc.affinity_slack
            ));
        }
        for (field, v) in [
            ("eventsStaleAfter", &pc.events_stale_after),
            ("predictWindow", &pc.predict_window),
        ] {
            crate::duration::parse_duration(v)
                .map_err(|e| format!("prefixCache.{field} {v:?}: {e}"))?;
        }
        Ok(())
    }

    /// Whether requests need their prompt hashed (a prefix plugin is enabled).
    pub fn uses_prefix(&self) -> bool {
        self.weight(PluginKind::PrefixCache) > 0.0 || self.weight(PluginKind::KvEvents) > 0.0
    }

    /// The same profile with `kinds` disabled.
    pub fn without(&self, kinds: &[PluginKind]) -> SchedulerProfile {
        let mut p = self.clone();
        p.plugins.retain(|w| !kinds.contains(&w.name));
        p
    }

    /// Weight of `kind`, 0 when disabled.
    pub fn weight(&self, kind: PluginKind) -> f64 {
        self.plugins
            .iter()
            .find(|p| p.name == kind)
            .map_or(0.0, |p| p.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_with_defaults_for_what_is_left_out() {
        let p = SchedulerProfile::parse(
            "plugins:\n- {name: round-robin}\n- {name: kv-cache-usage, weight: 3}\n",
        )
        .unwrap();
        assert_eq!(p.weight(PluginKind::RoundRobin), 1.0);
        assert_eq!(p.weight(PluginKind::KvCacheUsage), 3.0);
        assert_eq!(p.weight(PluginKind::LeastRequest), 0.0);
        assert_eq!(p.session_affinity.header, "x-session-id");
        assert_eq!(p.prefix_cache.block_size, 16);
        assert!(!p.uses_prefix());
    }

    #[test]
    fn parses_the_benchmark_contract() {
        let p = SchedulerProfile::parse(
            "plugins: [{name: prefix-cache, weight: 2}, {name: least-request, weight: 1}, \
             {name: lora-affinity}]\nprefixCache: {blockSize: 16, capacityBlocks: 4096}\n",
        )
        .unwrap();
        assert_eq!(p.weight(PluginKind::PrefixCache), 2.0);
        assert_eq!(p.weight(PluginKind::LoraAffinity), 1.0);
        assert_eq!(p.prefix_cache.capacity_blocks, 4096);
        assert!(p.uses_prefix());
        let k = SchedulerProfile::parse(
            "plugins: [{name: kv-events}]\nprefixCache: {eventsStaleAfter: 500ms}",
        )
        .unwrap();
        assert!(k.uses_prefix());
        assert_eq!(
            k.prefix_cache.events_stale_after(),
            std::time::Duration::from_millis(500)
        );
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let cases = [
            ("plugins: [{name: fastest}]", "unknown variant"),
            ("plugins: [{name: random, weight: -1}]", "plugins[0].weight"),
            (
                "plugins: [{name: random}, {name: random}]",
                "plugins[1].name random is listed twice",
            ),
            (
                "sessionAffinity: {loadFactor: 0.5}",
                "sessionAffinity.loadFactor",
            ),
            ("sessionAffinity: {header: 'a b'}", "sessionAffinity.header"),
            (
                "leastRequest: {queueWeight: -2}",
                "leastRequest.queueWeight",
            ),
            ("plugin: []", "unknown field `plugin`"),
            ("prefixCache: {blockSize: 0}", "prefixCache.blockSize"),
            (
                "prefixCache: {capacityBlocks: 0}",
                "prefixCache.capacityBlocks",
            ),
            (
                "prefixCache: {eventsStaleAfter: soon}",
                "prefixCache.eventsStaleAfter",
            ),
            ("prefixCache: {blocksize: 16}", "unknown field `blocksize`"),
        ];
        for (text, want) in cases {
            let err = SchedulerProfile::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
