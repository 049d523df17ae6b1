//! Scheduling: a pure function from an immutable endpoint snapshot to a decision.
//!
//! `filters → weighted scorers (each in [0, 1]) → max-score picker with random tie-breaking`.
//! Nothing here reads a clock, a lock or the network: randomness and the round-robin position
//! come in as numbers, so a decision is reproducible and the same code runs in the live proxy
//! and in a discrete-event benchmark.
//!
//! Filters fail open: when a filter would remove every endpoint it removes none, because
//! sending a request to a busy or recently failing endpoint beats refusing it outright.

pub mod pd;
mod plugins;
pub mod profile;
pub mod rendezvous;

pub use crate::prefix::PrefixMatch;
pub use profile::{PluginKind, PluginWeight, SchedulerProfile};

use std::sync::Arc;

/// Engine-reported load, from its Prometheus metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineLoad {
    /// Requests queued in the engine (`vllm:num_requests_waiting`).
    pub waiting: f64,
    /// Requests in the running batch (`vllm:num_requests_running`).
    pub running: f64,
    /// KV-cache usage in `[0, 1]` (`vllm:kv_cache_usage_perc`).
    pub kv_cache_usage: f64,
}

/// LoRA adapters the engine reports (`vllm:lora_requests_info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoraLoad {
    /// Adapters the engine can hold in a batch (`max_lora`).
    pub max_loras: u32,
    /// Adapters of running requests.
    pub running: Vec<String>,
    /// Adapters of waiting requests.
    pub waiting: Vec<String>,
}

/// What the scheduler knows about one endpoint at decision time.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointView<'a> {
    /// Stable identity (pod name) — session hashing keys on it.
    pub name: &'a str,
    /// Requests this router has in flight to the endpoint.
    pub in_flight_requests: u32,
    /// Estimated tokens (prompt + output budget) of those requests.
    pub in_flight_tokens: u64,
    /// Uncached prompt tokens of those requests that have not streamed a first token yet:
    /// prefill work queued or running ahead of a new request (decoding requests do not delay
    /// a new prefill much under continuous batching, so they are not in here).
    pub pending_prefill_tokens: u64,
    /// Last engine metrics, if ever scraped.
    pub engine: Option<EngineLoad>,
    /// Whether `engine` is recent enough to trust.
    pub engine_fresh: bool,
    /// Passively ejected after consecutive failures.
    pub ejected: bool,
    /// How much of this request's prompt the endpoint holds (zero when not computed).
    pub prefix: PrefixMatch,
    /// Its LoRA adapters, from the last engine sample.
    pub lora: Option<Arc<LoraLoad>>,
}

/// The request's prompt, for the prefix scorers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefixRequest {
    /// Full blocks of the prompt that were hashed and looked up.
    pub total_blocks: u32,
    /// Tokens per block.
    pub block_tokens: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
}

/// Per-request inputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScheduleRequest<'a> {
    /// Conversation id, when the request carries one.
    pub session: Option<&'a str>,
    /// Endpoints (indexes into the snapshot) already tried for this request.
    pub exclude: &'a [usize],
    /// Seed for random scores and tie-breaking.
    pub random_seed: u64,
    /// Position of the round-robin plugin.
    pub round_robin: u64,
    /// The prompt's blocks, when a prefix plugin is enabled and the prompt could be read.
    pub prefix: Option<PrefixRequest>,
    /// The LoRA adapter the request runs on.
    pub lora: Option<&'a str>,
}

/// Where the session-affinity plugin wanted the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionDecision {
    /// Snapshot index the ranking prefers, load ignored.
    pub preferred: usize,
    /// Snapshot index after the load bound.
    pub placed: usize,
}

/// The scheduler's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Index of the chosen endpoint in the snapshot.
    pub index: usize,
    /// Its weighted total.
    pub total: f64,
    /// Its score from each enabled plugin.
    pub scores: Vec<(PluginKind, f64)>,
    /// How many endpoints survived the filters.
    pub candidates: usize,
    /// Session placement, when the plugin ran with a session id.
    pub session: Option<SessionDecision>,
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The snapshot is empty.
    #[error("no Ready endpoints")]
    NoEndpoints,
}

/// A small deterministic generator (SplitMix64), so decisions depend only on the seed.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks an endpoint for one request.
pub fn schedule(
    endpoints: &[EndpointView<'_>],
    profile: &SchedulerProfile,
    request: &ScheduleRequest<'_>,
) -> Result<Decision, ScheduleError> {
    let mut rng = SplitMix64::new(request.random_seed);
    let scored = score(endpoints, profile, request, &mut rng)?;
    let pick = pick_max(&scored.totals, &mut rng);
    Ok(scored.decision(pick))
}

/// Every candidate's weighted total and per-plugin scores, before picking.
#[derive(Debug, Clone)]
pub(crate) struct Scored {
    /// Snapshot indexes that passed the filters.
    pub(crate) candidates: Vec<usize>,
    /// Weighted total per candidate.
    pub(crate) totals: Vec<f64>,
    per_plugin: Vec<(PluginKind, Vec<f64>)>,
    session: Option<SessionDecision>,
}

impl Scored {
    /// The decision for candidate position `pick`.
    pub(crate) fn decision(&self, pick: usize) -> Decision {
        Decision {
            index: self.candidates[pick],
            total: self.totals[pick],
            scores: self.per_plugin.iter().map(|(k, s)| (*k, s[pick])).collect(),
            candidates: self.candidates.len(),
            session: self.session,
        }
    }
}

/// Filters and scores the endpoints (see the module docs).
pub(crate) fn score(
    endpoints: &[EndpointView<'_>],
    profile: &SchedulerProfile,
    request: &ScheduleRequest<'_>,
    rng: &mut SplitMix64,
) -> Result<Scored, ScheduleError> {
    if endpoints.is_empty() {
        return Err(ScheduleError::NoEndpoints);
    }
    let loads = plugins::effective_loads(endpoints);
    let mut candidates: Vec<usize> = (0..endpoints.len()).collect();
    filter_open(&mut candidates, |i| !request.exclude.contains(&i));
    filter_open(&mut candidates, |i| !endpoints[i].ejected);
    if profile.weight(PluginKind::LeastRequest) > 0.0 {
        if let Some(max) = profile.least_request.max_waiting_requests {
            filter_open(&mut candidates, |i| loads[i].waiting < f64::from(max));
        }
    }

    let mut totals = vec![0.0f64; candidates.len()];
    let mut per_plugin: Vec<(PluginKind, Vec<f64>)> = Vec::with_capacity(profile.plugins.len());
    let mut session = None;
    for p in &profile.plugins {
        if p.weight <= 0.0 {
            continue;
        }
        let scores = match p.name {
            PluginKind::Random => plugins::random(candidates.len(), rng),
            PluginKind::RoundRobin => {
                plugins::round_robin(endpoints, &candidates, request.round_robin)
            }
            PluginKind::LeastRequest => plugins::least_request(
                endpoints,
                &loads,
                &candidates,
                profile.least_request.queue_weight,
            ),
            PluginKind::KvCacheUsage => plugins::kv_cache_usage(&loads, &candidates),
            PluginKind::SessionAffinity => match request.session {
                Some(id) => {
                    let (scores, placed) = plugins::session_affinity(
                        endpoints,
                        &loads,
                        &candidates,
                        id,
                        profile.session_affinity.load_factor,
                        u64::from(profile.session_affinity.load_slack),
                    );
                    session = Some(placed);
                    scores
                }
                None => vec![0.0; candidates.len()],
            },
            PluginKind::PrefixCache | PluginKind::KvEvents => match request.prefix {
                Some(prefix) => plugins::prefix_cache(
                    endpoints,
                    &loads,
                    &candidates,
                    &prefix,
                    p.name == PluginKind::KvEvents,
                    profile.prefix_cache.affinity_slack,
                ),
                None => vec![0.0; candidates.len()],
            },
            PluginKind::LoraAffinity => {
                plugins::lora_affinity(endpoints, &candidates, request.lora)
            }
        };
        for (t, s) in totals.iter_mut().zip(&scores) {
            debug_assert!((0.0..=1.0).contains(s), "{} scored {s}", p.name.as_str());
            *t += p.weight * s;
        }
        per_plugin.push((p.name, scores));
    }
    Ok(Scored {
        candidates,
        totals,
        per_plugin,
        session,
    })
}

/// Keeps the candidates that pass `keep`, unless none would.
fn filter_open(candidates: &mut Vec<usize>, keep: impl Fn(usize) -> bool) {
    if candidates.iter().any(|&i| keep(i)) {
        candidates.retain(|&i| keep(i));
    }
}

/// Index of the highest total; ties (within 1e-9) broken uniformly at random by reservoir
/// sampling, so equal endpoints share cold traffic instead of the first one taking it all.
fn pick_max(totals: &[f64], rng: &mut SplitMix64) -> usize {
    let best = totals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut chosen = 0;
    let mut seen = 0u64;
    for (i, &t) in totals.iter().enumerate() {
        if t >= best - 1e-9 {
            seen += 1;
            if rng.next_u64().is_multiple_of(seen) {
                chosen = i;
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests;
