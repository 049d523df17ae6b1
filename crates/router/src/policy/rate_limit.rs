//! Token rate limits from ModelRoute `rateLimit`: buckets per model and per caller scope,
//! local to this router or global in Redis, with output tokens reserved from `max_tokens` on
//! admission and reconciled with the engine's usage when the response ends.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use muster_api::networking::{RateLimit, RateLimitUnit};

use super::bucket::{self, Bucket, BucketSpec, Draw, Verdict};
use super::identity::Identity;
use super::metrics::PolicyMetrics;
use super::redis_limit::{GlobalVerdict, RedisBuckets};
use crate::errors::ApiError;

/// Whose budget a route's limit is: one bucket per model and per value of the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One budget per model, shared by every caller (Kthena's behaviour).
    Model,
    /// One per tenant.
    Tenant,
    /// One per user.
    User,
    /// One per API key (or JWT subject).
    Key,
}

impl Scope {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Model => "model",
            Scope::Tenant => "tenant",
            Scope::User => "user",
            Scope::Key => "key",
        }
    }

    /// Parses a comma-separated list such as `model,tenant`.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = match part {
                "model" => Scope::Model,
                "tenant" => Scope::Tenant,
                "user" => Scope::User,
                "key" => Scope::Key,
                other => {
                    return Err(format!(
                        "rate-limit scope `{other}` is not one of model, tenant, user, key"
                    ))
                }
            };
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        if out.is_empty() {
            return Err("name at least one rate-limit scope".into());
        }
        Ok(out)
    }

    fn value(self, who: &Identity) -> &str {
        match self {
            Scope::Model => "*",
            Scope::Tenant => &who.tenant,
            Scope::User => &who.user,
            Scope::Key => &who.key,
        }
    }
}

/// What to do when Redis cannot be reached for a global limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// Enforce this replica's local buckets instead (the default).
    Local,
    /// Admit without limiting.
    Open,
    /// Refuse with 503.
    Closed,
}

impl FailMode {
    fn as_str(self) -> &'static str {
        match self {
            FailMode::Local => "local",
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

/// Rate-limit settings.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Scopes every route limit applies to (each gets its own bucket).
    pub scopes: Vec<Scope>,
    /// Behaviour while Redis is unreachable.
    pub fail_mode: FailMode,
    /// Bound on every Redis call.
    pub redis_timeout: Duration,
    /// Output tokens reserved for a request without `max_tokens`.
    pub default_max_tokens: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            scopes: vec![Scope::Tenant],
            fail_mode: FailMode::Local,
            redis_timeout: Duration::from_millis(100),
            default_max_tokens: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Input,
    Output,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

struct Check {
    key: String,
    scope: Scope,
    direction: Direction,
    draw: Draw,
}

/// A refused request: the error and the headers to send with it.
pub struct Refusal {
    /// 429 (or 503 when Redis is down in closed mode).
    pub error: ApiError,
    /// `retry-after` and `x-ratelimit-*`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Local and global buckets.
pub struct RateLimiter {
    config: RateLimitConfig,
    epoch: Instant,
    local: Mutex<HashMap<String, (Bucket, BucketSpec)>>,
    redis: RedisBuckets,
    metrics: PolicyMetrics,
}

/// Tokens charged on admission, reconciled when the request ends.
pub struct Reservation {
    limiter: Arc<RateLimiter>,
    checks: Vec<Check>,
    redis: Option<String>,
    /// `x-ratelimit-*` headers for the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

fn header(name: &'static str, value: String) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(&value).expect("ASCII header value"),
    )
}

/// OpenAI's reset format: `120ms`, `6s`, `1m30s`, `2h0m0s`.
pub fn format_reset(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 1.0 {
        return format!("{}ms", (s * 1000.0).ceil() as u64);
    }
    let total = s.ceil() as u64;
    let (h, m, sec) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

fn unit_name(unit: RateLimitUnit) -> &'static str {
    match unit {
        RateLimitUnit::Second => "second",
        RateLimitUnit::Minute => "minute",
        RateLimitUnit::Hour => "hour",
        RateLimitUnit::Day => "day",
        RateLimitUnit::Month => "30 days",
    }
}

impl RateLimiter {
    /// A limiter with empty buckets.
    pub fn new(config: RateLimitConfig, metrics: PolicyMetrics) -> Self {
        RateLimiter {
            redis: RedisBuckets::new(config.redis_timeout, metrics.clone()),
            config,
            epoch: Instant::now(),
            local: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Settings.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn checks(
        &self,
        model: &str,
        limit: &RateLimit,
        who: &Identity,
        input: u64,
        output: u64,
    ) -> Vec<Check> {
        let mut checks = Vec::new();
        for scope in &self.config.scopes {
            for (direction, per_unit, cost) in [
                (Direction::Input, limit.input_tokens_per_unit, input),
                (Direction::Output, limit.output_tokens_per_unit, output),
            ] {
                let Some(per_unit) = per_unit else { continue };
                checks.push(Check {
                    key: format!(
                        "muster:rl:{model}:{}={}:{direction}",
                        scope.as_str(),
                        scope.value(who)
                    ),
                    scope: *scope,
                    direction,
                    draw: Draw {
                        spec: BucketSpec::new(per_unit, limit.unit),
                        cost: cost as f64,
                    },
                });
            }
        }
        checks
    }

    fn admit_local(&self, checks: &[Check]) -> Verdict {
        let now = self.now();
        let mut map = self.local.lock().expect("bucket lock");
        if map.len() > 100_000 {
            // Full buckets carry no information: forget them rather than grow without bound.
            map.retain(|_, (b, spec)| b.level(spec, now) < spec.capacity);
        }
        let mut buckets: Vec<Bucket> = checks
            .iter()
            .map(|c| {
                map.entry(c.key.clone())
                    .or_insert_with(|| (Bucket::full(&c.draw.spec, now), c.draw.spec))
                    .0
            })
            .collect();
        let draws: Vec<Draw> = checks.iter().map(|c| c.draw).collect();
        let verdict = bucket::admit(&mut buckets, &draws, now);
        if matches!(verdict, Verdict::Admitted { .. }) {
            for (c, b) in checks.iter().zip(buckets) {
                map.insert(c.key.clone(), (b, c.draw.spec));
            }
        }
        verdict
    }

    /// Checks and charges the route's limits for `who`: `input` estimated prompt tokens and
    /// `output` reserved completion tokens. `Ok(None)` when the route has no limit.
    pub async fn admit(
        self: &Arc<Self>,
        model: &str,
        limit: &RateLimit,
        who: &Identity,
        input: u64,
        output: u64,
    ) -> Result<Option<Reservation>, Refusal> {
        let checks = self.checks(model, limit, who, input, output);
        if checks.is_empty() {
            return Ok(None);
        }
        let global = limit
            .global
            .as_ref()
            .and_then(|g| g.redis.as_ref())
            .map(|r| r.address.clone());
        let mut redis_used = None;
        let verdict = match &global {
            Some(addr) => {
                let draws: Vec<(String, Draw)> =
                    checks.iter().map(|c| (c.key.clone(), c.draw)).collect();
                match self.redis.admit(addr, &draws).await {
                    Ok(GlobalVerdict::Admitted(remaining)) => {
                        redis_used = Some(addr.clone());
                        Verdict::Admitted { remaining }
                    }
                    Ok(GlobalVerdict::Refused {
                        wait,
                        index,
                        levels,
                    }) => Verdict::Refused {
                        wait,
                        index,
                        levels,
                    },
                    Err(_) => {
                        let mode = self.config.fail_mode;
                        self.metrics
                            .degraded_decisions
                            .with_label_values(&[mode.as_str()])
                            .inc();
                        match mode {
                            FailMode::Open => return Ok(None),
                            FailMode::Closed => {
                                return Err(Refusal {
                                    error: ApiError::rate_limit_unavailable(model),
                                    headers: vec![header("retry-after", "1".into())],
                                })
                            }
                            FailMode::Local => self.admit_local(&checks),
                        }
                    }
                }
            }
            None => self.admit_local(&checks),
        };
        match verdict {
            Verdict::Admitted { remaining } => {
                // Headers describe the bucket closest to empty.
                let (i, left) = remaining
                    .iter()
                    .enumerate()
                    .min_by(|a, b| {
                        (a.1 / checks[a.0].draw.spec.capacity)
                            .total_cmp(&(b.1 / checks[b.0].draw.spec.capacity))
                    })
                    .map(|(i, l)| (i, *l))
                    .expect("at least one check");
                let spec = checks[i].draw.spec;
                let headers = vec![
                    header(
                        "x-ratelimit-limit-tokens",
                        format!("{}", spec.capacity as u64),
                    ),
                    header(
                        "x-ratelimit-remaining-tokens",
                        format!("{}", left.max(0.0).floor() as u64),
                    ),
                    header(
                        "x-ratelimit-reset-tokens",
                        format_reset((spec.capacity - left) / spec.per_second),
                    ),
                ];
                Ok(Some(Reservation {
                    limiter: self.clone(),
                    checks,
                    redis: redis_used,
                    headers,
                }))
            }
            Verdict::Refused {
                wait,
                index,
                levels,
            } => {
                let c = &checks[index];
                self.metrics
                    .rate_limited
                    .with_label_values(&[model, c.scope.as_str()])
                    .inc();
                let level = levels[index].max(0.0).floor() as u64;
                let spec = c.draw.spec;
                let scope_text = match c.scope {
                    Scope::Model => String::new(),
                    s => format!(" for {} `{}`", s.as_str(), s.value(who)),
                };
                let message = format!(
                    "Rate limit reached for model `{model}`{scope_text} on {} tokens per {}: limit {}, remaining {level}, requested {}. Please try again in {}.",
                    c.direction,
                    unit_name(limit.unit),
                    spec.capacity as u64,
                    c.draw.cost as u64,
                    format_reset(wait),
                );
                Err(Refusal {
                    error: ApiError::rate_limited(message),
                    headers: vec![
                        header("retry-after", format!("{}", wait.ceil().max(1.0) as u64)),
                        header(
                            "x-ratelimit-limit-tokens",
                            format!("{}", spec.capacity as u64),
                        ),
                        header("x-ratelimit-remaining-tokens", format!("{level}")),
                        header(
                            "x-ratelimit-reset-tokens",
                            format_reset((spec.capacity - levels[index]) / spec.per_second),
                        ),
                    ],
                })
            }
        }
    }
}

impl Reservation {
    /// Reconciles with what the request actually used: `Some((prompt, completion))` refunds
    /// or charges the difference; `None` refunds everything when `refund` (the engine did no
    /// work), else keeps the reservation (usage unknown, e.g. the client went away).
    pub fn finish(self, usage: Option<(u64, u64)>, refund: bool) {
        let deltas: Vec<(String, Draw, f64)> = self
            .checks
            .iter()
            .filter_map(|c| {
                let delta = match (usage, refund) {
                    (Some((prompt, completion)), _) => {
                        let actual = match c.direction {
                            Direction::Input => prompt,
                            Direction::Output => completion,
                        };
                        c.draw.cost - actual as f64
                    }
                    (None, true) => c.draw.cost,
                    (None, false) => return None,
                };
                (delta.abs() > f64::EPSILON).then(|| (c.key.clone(), c.draw, delta))
            })
            .collect();
        if deltas.is_empty() {
            return;
        }
        let limiter = self.limiter;
        match self.redis {
            Some(addr) => {
                // Reconciling must not delay the response's end: run it on its own task.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = limiter.redis.adjust(&addr, &deltas).await {
                            tracing::debug!(error = %e, "rate-limit reconcile failed");
                        }
                    });
                }
            }
            None => {
                let now = limiter.now();
                let mut map = limiter.local.lock().expect("bucket lock");
                for (key, draw, delta) in deltas {
                    if let Some((b, _)) = map.get_mut(&key) {
                        b.adjust(&draw.spec, delta, now);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(0.12), "120ms");
        assert_eq!(format_reset(6.0), "6s");
        assert_eq!(format_reset(90.0), "1m30s");
        assert_eq!(format_reset(7200.0), "2h0m0s");
    }

    #[test]
    fn scope_lists_parse() {
        assert_eq!(
            Scope::parse_list("model, tenant,model").unwrap(),
            vec![Scope::Model, Scope::Tenant]
        );
        assert!(Scope::parse_list("org").unwrap_err().contains("`org`"));
        assert!(Scope::parse_list("").is_err());
    }
}
