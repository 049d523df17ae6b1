//! Scorers. Each returns one score in `[0, 1]` per candidate (higher is better).

use super::rendezvous;
use super::{EndpointView, EngineLoad, PrefixRequest, SessionDecision, SplitMix64};

/// Engine load to score with: an endpoint's own metrics when fresh; otherwise the worst of its
/// last known values and what the fresh endpoints report, so a pod whose metrics stopped
/// arriving is never mistaken for an idle one (and one never scraped is assumed as busy as the
/// busiest scraped pod).
pub(super) fn effective_loads(endpoints: &[EndpointView<'_>]) -> Vec<EngineLoad> {
    let mut worst = EngineLoad::default();
    for e in endpoints.iter().filter(|e| e.engine_fresh) {
        if let Some(l) = e.engine {
            worst.waiting = worst.waiting.max(l.waiting);
            worst.running = worst.running.max(l.running);
            worst.kv_cache_usage = worst.kv_cache_usage.max(l.kv_cache_usage);
        }
    }
    endpoints
        .iter()
        .map(|e| match (e.engine, e.engine_fresh) {
            (Some(l), true) => l,
            (last, _) => {
                let l = last.unwrap_or_default();
                EngineLoad {
                    waiting: l.waiting.max(worst.waiting),
                    running: l.running.max(worst.running),
                    kv_cache_usage: l.kv_cache_usage.max(worst.kv_cache_usage),
                }
            }
        })
        .map(|l| EngineLoad {
            waiting: finite_non_negative(l.waiting),
            running: finite_non_negative(l.running),
            kv_cache_usage: finite_non_negative(l.kv_cache_usage).min(1.0),
        })
        .collect()
}

fn finite_non_negative(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

/// `(max − v) / (max − min)`: 1 for the lightest, 0 for the heaviest, 1 for all when equal.
fn inverse_min_max(values: &[f64]) -> Vec<f64> {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max - min <= 1e-12 || max.is_nan() || min.is_nan() {
        return vec![1.0; values.len()];
    }
    values
        .iter()
        .map(|v| ((max - v) / (max - min)).clamp(0.0, 1.0))
        .collect()
}

pub(super) fn random(n: usize, rng: &mut SplitMix64) -> Vec<f64> {
    (0..n).map(|_| rng.next_f64()).collect()
}

/// 1 for the candidate whose turn it is (candidates ordered by name, so the rotation does not
/// depend on snapshot order), 0 for the rest.
pub(super) fn round_robin(
    endpoints: &[EndpointView<'_>],
    candidates: &[usize],
    position: u64,
) -> Vec<f64> {
    let mut by_name: Vec<usize> = (0..candidates.len()).collect();
    by_name.sort_by(|&a, &b| {
        endpoints[candidates[a]]
            .name
            .cmp(endpoints[candidates[b]].name)
    });
    let turn = by_name[(position % candidates.len() as u64) as usize];
    (0..candidates.len())
        .map(|i| if i == turn { 1.0 } else { 0.0 })
        .collect()
}

/// Requests an endpoint is serving: the router's own in-flight count or the engine's running
/// plus waiting, whichever is larger (the engine's include other replicas' traffic, the
/// router's react before the next scrape).
fn requests_served(e: &EndpointView<'_>, l: EngineLoad) -> f64 {
    f64::from(e.in_flight_requests).max(l.running + l.waiting)
}

/// Half requests, half tokens. Request load is `max(router in-flight, engine running +
/// waiting) + queue_weight · waiting`: the engine's numbers include other replicas' traffic,
/// the router's own count reacts before the next scrape, and queued requests weigh extra
/// because they have not even started.
pub(super) fn least_request(
    endpoints: &[EndpointView<'_>],
    loads: &[EngineLoad],
    candidates: &[usize],
    queue_weight: f64,
) -> Vec<f64> {
    let requests: Vec<f64> = candidates
        .iter()
        .map(|&i| requests_served(&endpoints[i], loads[i]) + queue_weight * loads[i].waiting)
        .collect();
    let tokens: Vec<f64> = candidates
        .iter()
        .map(|&i| endpoints[i].in_flight_tokens as f64)
        .collect();
    inverse_min_max(&requests)
        .into_iter()
        .zip(inverse_min_max(&tokens))
        .map(|(r, t)| 0.5 * r + 0.5 * t)
        .collect()
}

/// `1 − usage`.
pub(super) fn kv_cache_usage(loads: &[EngineLoad], candidates: &[usize]) -> Vec<f64> {
    candidates
        .iter()
        .map(|&i| 1.0 - loads[i].kv_cache_usage)
        .collect()
}

/// 1 for the endpoint the bounded-load rendezvous placement picks, 0 for the rest.
pub(super) fn session_affinity(
    endpoints: &[EndpointView<'_>],
    loads: &[EngineLoad],
    candidates: &[usize],
    session: &str,
    load_factor: f64,
    slack: u64,
) -> (Vec<f64>, SessionDecision) {
    let names: Vec<&str> = candidates.iter().map(|&i| endpoints[i].name).collect();
    let load: Vec<u64> = candidates
        .iter()
        .map(|&i| requests_served(&endpoints[i], loads[i]).round() as u64)
        .collect();
    let p = rendezvous::place(session, &names, &load, load_factor, slack);
    let scores = (0..candidates.len())
        .map(|i| if i == p.chosen { 1.0 } else { 0.0 })
        .collect();
    (
        scores,
        SessionDecision {
            preferred: candidates[p.preferred],
            placed: candidates[p.chosen],
        },
    )
}

/// Cached blocks of the request on endpoint `i`: the approximate count, or for `kv-events` the
/// engine-reported count (plus blocks routed there too recently for events to confirm) when
/// the endpoint's event feed is live, else the approximate count as fallback.
fn cached_blocks(e: &EndpointView<'_>, precise: bool, total: u32) -> u32 {
    e.prefix.effective(precise).min(total)
}

/// Prefix affinity with a release valve.
///
/// The affinity score of an endpoint is the fraction of the prompt's blocks it holds, counted
/// from block 0: `cached / total`. It is kept only while the endpoint's expected wait is no
/// worse than that of sending the request cold to the least-loaded endpoint. Wait is measured
/// in prompt tokens of work queued ahead plus the request's own uncached prompt:
///
/// ```text
/// uncached_i = prompt_tokens − cached_i · block_tokens
/// saved_i    = prompt_tokens − uncached_i
/// pending_i  = router pending prefill_i + max(0, engine waiting_i − router in-flight_i) · uncached_i
/// wait_i     = pending_i + uncached_i
/// cold       = min_j (pending_j + prompt_tokens), reached at endpoint c
/// busy_c     = max(router in-flight_c, engine running_c + waiting_c)
/// score_i    = cached_i / total   if wait_i ≤ cold + (affinitySlack + busy_c) · saved_i,   else 0
/// ```
///
/// A spill recomputes `saved_i` tokens the warm cache would have skipped, and that extra
/// prefill delays every request the cold endpoint is serving (under continuous batching they
/// share its steps), so the spill is charged `busy_c · saved_i` on top of the slack. Spilling
/// to an idle endpoint is cheap and happens as soon as the warm queue is slower; spilling into
/// a saturated one almost never pays, and in the routing benchmark it was what scattered
/// groups across engines until their prefixes no longer fit in KV (docs/benchmarks.md).
///
/// Router pending prefill counts the uncached prompt of each request this router sent there
/// that has not streamed its first token yet (a request that is decoding barely delays a new
/// prefill under continuous batching; counting its output budget made the valve spill warm
/// prefixes whenever requests merely lingered in decode). The
/// engine's queue beyond what this router has in flight (other router replicas' traffic) is
/// costed at this request's own uncached size there — queued requests on a warm endpoint
/// mostly share its prefix. So a hot prefix stays on its warm endpoint while the cache saves
/// more than the queue there costs, and spills to a cold endpoint (which then warms up) once
/// it does not: affinity yields to load exactly when following it would be slower, instead
/// of at a fixed threshold.
pub(super) fn prefix_cache(
    endpoints: &[EndpointView<'_>],
    loads: &[EngineLoad],
    candidates: &[usize],
    request: &PrefixRequest,
    precise: bool,
    slack: f64,
) -> Vec<f64> {
    let total = request.total_blocks;
    if total == 0 {
        return vec![0.0; candidates.len()];
    }
    let prompt = request.prompt_tokens as f64;
    // The cold alternative: the endpoint where the whole prompt would start soonest.
    let (mut cold, mut cold_busy) = (f64::INFINITY, 0.0);
    let parts: Vec<(u32, f64, f64)> = candidates
        .iter()
        .map(|&i| {
            let e = &endpoints[i];
            let l = loads[i];
            let cached = cached_blocks(e, precise, total);
            let uncached = (prompt - f64::from(cached) * request.block_tokens as f64).max(0.0);
            let others = (l.waiting - f64::from(e.in_flight_requests)).max(0.0);
            let queued = e.pending_prefill_tokens as f64;
            let wait_cold = queued + others * prompt + prompt;
            if wait_cold < cold {
                cold = wait_cold;
                cold_busy = requests_served(e, l);
            }
            (
                cached,
                queued + others * uncached + uncached,
                prompt - uncached,
            )
        })
        .collect();
    parts
        .into_iter()
        .map(|(cached, wait, saved)| {
            if cached > 0 && wait <= cold + (slack + cold_busy) * saved {
                f64::from(cached) / f64::from(total)
            } else {
                0.0
            }
        })
        .collect()
}

/// LoRA affinity (llm-d's levels): 1 when the adapter is running on the endpoint, 0.8 when the
/// engine has a free adapter slot, 0.6 when requests for it are already waiting there, 0 when
/// every slot is taken by other adapters; 0.5 when the engine reports nothing. Requests for
/// the base model score 0 everywhere (no preference).
pub(super) fn lora_affinity(
    endpoints: &[EndpointView<'_>],
    candidates: &[usize],
    adapter: Option<&str>,
) -> Vec<f64> {
    let Some(adapter) = adapter else {
        return vec![0.0; candidates.len()];
    };
    candidates
        .iter()
        .map(|&i| match &endpoints[i].lora {
            None => 0.5,
            Some(l) => {
                let mut distinct: Vec<&str> = l
                    .running
                    .iter()
                    .chain(&l.waiting)
                    .map(String::as_str)
                    .collect();
                distinct.sort_unstable();
                distinct.dedup();
                if l.running.iter().any(|a| a == adapter) {
                    1.0
                } else if (distinct.len() as u32) < l.max_loras {
                    0.8
                } else if l.waiting.iter().any(|a| a == adapter) {
                    0.6
                } else {
                    0.0
                }
            }
        })
        .collect()
}
