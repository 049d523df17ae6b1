//! Global token buckets in Redis: one atomic Lua script checks and charges every bucket a
//! request draws on (same rules as [`super::bucket`], Redis `TIME` as the clock so router
//! replicas need no synchronised clocks), another reconciles with actual usage.
//!
//! Every call is bounded by a short timeout, and after a failure the address is not retried
//! for [`RECONNECT_BACKOFF`], so a dead or hung Redis costs a request at most one timeout and
//! usually nothing. Connections are per worker thread (like the upstream pools), one per
//! address: routes naming different Redis addresses each get theirs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};

use super::bucket::Draw;
use super::metrics::PolicyMetrics;

/// After a failed call, calls to that address fail at once for this long.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local levels = {}
local wait, worst = 0, 0
for i = 1, n do
  local b = (i - 1) * 4
  local cap, rate, need = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local st = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens, ts = tonumber(st[1]), tonumber(st[2])
  if tokens == nil or ts == nil then tokens, ts = cap, now end
  local level = math.min(cap, tokens + math.max(0, now - ts) * rate)
  levels[i] = level
  if level < need then
    local w = math.ceil((need - level) / rate)
    if w > wait or worst == 0 then wait, worst = w, i end
  end
end
local out
if worst > 0 then
  out = {0, wait, worst}
  for i = 1, n do out[#out + 1] = math.floor(levels[i]) end
  return out
end
out = {1, 0, 0}
for i = 1, n do
  local b = (i - 1) * 4
  local cap, rate = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local left = levels[i] - tonumber(ARGV[b + 4])
  redis.call('HSET', KEYS[i], 'tokens', tostring(left), 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.max(1000, math.ceil(2 * cap / rate)))
  out[#out + 1] = math.floor(left)
end
return out
"#;

const ADJUST: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local b = (i - 1) * 3
  local cap, rate, delta = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local st = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens, ts = tonumber(st[1]), tonumber(st[2])
  if tokens ~= nil and ts ~= nil then
    local level = math.min(cap, math.min(cap, tokens + math.max(0, now - ts) * rate) + delta)
    redis.call('HSET', KEYS[i], 'tokens', tostring(level), 'ts', now)
    redis.call('PEXPIRE', KEYS[i], math.max(1000, math.ceil(2 * cap / rate)))
  end
end
return 1
"#;

/// What the admit script said.
#[derive(Debug, Clone, PartialEq)]
pub enum GlobalVerdict {
    /// Charged; whole tokens left per draw.
    Admitted(Vec<f64>),
    /// Refused by draw `index`; wait in seconds; whole tokens per draw.
    Refused {
        /// Seconds.
        wait: f64,
        /// Refusing draw.
        index: usize,
        /// Levels.
        levels: Vec<f64>,
    },
}

struct Slot {
    conn: Option<MultiplexedConnection>,
    retry_at: Option<Instant>,
}

thread_local! {
    static CONNECTIONS: RefCell<HashMap<String, Slot>> = RefCell::new(HashMap::new());
}

/// A connection to `addr` (`host:port`) for this thread, connecting if needed.
pub async fn connection(addr: &str, timeout: Duration) -> Result<MultiplexedConnection, String> {
    let cached = CONNECTIONS.with(|c| {
        let map = c.borrow();
        map.get(addr).map(|s| (s.conn.clone(), s.retry_at))
    });
    match cached {
        Some((Some(conn), _)) => return Ok(conn),
        Some((None, Some(at))) if Instant::now() < at => {
            return Err(format!(
                "Redis {addr} failed recently; retrying after a short backoff"
            ))
        }
        _ => {}
    }
    let result = async {
        let client = redis::Client::open(format!("redis://{addr}/"))
            .map_err(|e| format!("Redis address {addr}: {e}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| format!("connecting to Redis {addr} timed out after {timeout:?}"))?
        .map_err(|e| format!("connecting to Redis {addr}: {e}"))
    }
    .await;
    match &result {
        Ok(conn) => note(addr, Some(conn.clone())),
        Err(_) => note(addr, None),
    }
    result
}

/// Forgets this thread's connection to `addr` after a failure (backing off before the next).
pub fn forget(addr: &str) {
    note(addr, None);
}

fn note(addr: &str, conn: Option<MultiplexedConnection>) {
    CONNECTIONS.with(|c| {
        let retry_at = conn.is_none().then(|| Instant::now() + RECONNECT_BACKOFF);
        c.borrow_mut()
            .insert(addr.to_string(), Slot { conn, retry_at });
    });
}

/// The global buckets client.
pub struct RedisBuckets {
    timeout: Duration,
    admit: Script,
    adjust: Script,
    degraded: AtomicBool,
    metrics: PolicyMetrics,
}

impl RedisBuckets {
    /// Calls time out after `timeout`.
    pub fn new(timeout: Duration, metrics: PolicyMetrics) -> Self {
        RedisBuckets {
            timeout,
            admit: Script::new(ADMIT),
            adjust: Script::new(ADJUST),
            degraded: AtomicBool::new(false),
            metrics,
        }
    }

    /// Records the outcome of a call: the degraded gauge and one log line per transition.
    pub fn note_outcome(&self, addr: &str, error: Option<&str>) {
        match error {
            Some(e) => {
                forget(addr);
                if !self.degraded.swap(true, Ordering::AcqRel) {
                    self.metrics.degraded.set(1);
                    tracing::warn!(redis = addr, error = e, "Redis unreachable: global rate limits degraded to the configured fail mode");
                }
            }
            None => {
                if self.degraded.swap(false, Ordering::AcqRel) {
                    self.metrics.degraded.set(0);
                    tracing::info!(
                        redis = addr,
                        "Redis reachable again: global rate limits restored"
                    );
                }
            }
        }
    }

    /// Checks and charges every `(key, draw)` atomically.
    pub async fn admit(
        &self,
        addr: &str,
        draws: &[(String, Draw)],
    ) -> Result<GlobalVerdict, String> {
        let result = async {
            let mut conn = connection(addr, self.timeout).await?;
            let mut inv = self.admit.prepare_invoke();
            for (key, d) in draws {
                inv.key(key)
                    .arg(d.spec.capacity)
                    .arg(d.spec.per_second / 1000.0)
                    .arg(d.need())
                    .arg(d.cost);
            }
            let out: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
                .await
                .map_err(|_| format!("Redis {addr} did not answer within {:?}", self.timeout))?
                .map_err(|e| format!("Redis {addr}: {e}"))?;
            if out.len() != 3 + draws.len() {
                return Err(format!("Redis {addr}: unexpected script reply {out:?}"));
            }
            let levels = out[3..].iter().map(|v| *v as f64).collect();
            Ok(if out[0] == 1 {
                GlobalVerdict::Admitted(levels)
            } else {
                GlobalVerdict::Refused {
                    wait: out[1] as f64 / 1000.0,
                    index: (out[2] as usize).saturating_sub(1),
                    levels,
                }
            })
        }
        .await;
        self.note_outcome(addr, result.as_ref().err().map(String::as_str));
        result
    }

    /// Adds `delta` tokens to each bucket (refund positive, extra charge negative).
    pub async fn adjust(&self, addr: &str, deltas: &[(String, Draw, f64)]) -> Result<(), String> {
        let result = async {
            let mut conn = connection(addr, self.timeout).await?;
            let mut inv = self.adjust.prepare_invoke();
            for (key, d, delta) in deltas {
                inv.key(key)
                    .arg(d.spec.capacity)
                    .arg(d.spec.per_second / 1000.0)
                    .arg(*delta);
            }
            tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn))
                .await
                .map_err(|_| format!("Redis {addr} did not answer within {:?}", self.timeout))?
                .map_err(|e| format!("Redis {addr}: {e}"))
                .map(|_| ())
        }
        .await;
        self.note_outcome(addr, result.as_ref().err().map(String::as_str));
        result
    }
}
