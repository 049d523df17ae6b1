//! Attained service per tenant: weighted tokens (prompt × 1 + completion × 2, Kthena's
//! weighting) over a sliding window, estimated Cloudflare-style from two fixed windows
//! aligned to wall-clock time (`current + previous × (1 − elapsed fraction)`).
//!
//! With a Redis address the windows are shared: each replica adds its charges to
//! `muster:fair:<window index>` (a hash tenant → tokens) every sync interval and reads the
//! totals back, so a tenant that is heavy on one replica is heavy on all. The queues and
//! slots themselves stay local to each replica. Without Redis, or when the last successful
//! sync is older than [`GLOBAL_FRESHNESS`], the replica's local windows are used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::metrics::PolicyMetrics;
use super::redis_limit;

/// A shared snapshot older than this is ignored in favour of local state.
pub const GLOBAL_FRESHNESS: Duration = Duration::from_secs(2);

/// Two fixed windows, pure.
#[derive(Debug, Default, Clone)]
pub struct Windows {
    index: u64,
    current: HashMap<Arc<str>, f64>,
    previous: HashMap<Arc<str>, f64>,
}

impl Windows {
    /// Moves to window `index` (clearing what is older than the previous window).
    pub fn roll(&mut self, index: u64) {
        if index == self.index + 1 {
            self.previous = std::mem::take(&mut self.current);
        } else if index > self.index + 1 {
            self.previous.clear();
            self.current.clear();
        }
        self.index = self.index.max(index);
    }

    /// Adds `tokens` (negative corrects an over-estimate) to the current window.
    pub fn add(&mut self, tenant: &Arc<str>, tokens: f64, index: u64) {
        self.roll(index);
        *self.current.entry(tenant.clone()).or_default() += tokens;
    }

    /// Sliding-window estimate at `fraction` of the way through window `index`.
    pub fn value(&self, tenant: &str, index: u64, fraction: f64) -> f64 {
        let (cur, prev) = if index == self.index {
            (self.current.get(tenant), self.previous.get(tenant))
        } else if index == self.index + 1 {
            (None, self.current.get(tenant))
        } else {
            (None, None)
        };
        (cur.copied().unwrap_or(0.0) + prev.copied().unwrap_or(0.0) * (1.0 - fraction)).max(0.0)
    }
}

struct Inner {
    local: Windows,
    pending: HashMap<Arc<str>, f64>,
    global: Option<(Instant, HashMap<String, f64>)>,
}

/// Attained service, optionally shared through Redis.
pub struct AttainedService {
    window_ms: u64,
    redis: Option<String>,
    timeout: Duration,
    inner: Mutex<Inner>,
    metrics: PolicyMetrics,
}

impl AttainedService {
    /// Window length `window`; `redis` shares state.
    pub fn new(
        window: Duration,
        redis: Option<String>,
        timeout: Duration,
        metrics: PolicyMetrics,
    ) -> Self {
        AttainedService {
            window_ms: (window.as_millis() as u64).max(1000),
            redis,
            timeout,
            inner: Mutex::new(Inner {
                local: Windows::default(),
                pending: HashMap::new(),
                global: None,
            }),
            metrics,
        }
    }

    /// Whether state is shared through Redis.
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    fn clock(&self) -> (u64, f64) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (
            ms / self.window_ms,
            (ms % self.window_ms) as f64 / self.window_ms as f64,
        )
    }

    /// Charges `tokens` weighted tokens to `tenant`.
    pub fn charge(&self, tenant: &Arc<str>, tokens: f64) {
        let (index, _) = self.clock();
        let mut inner = self.inner.lock().expect("attained lock");
        inner.local.add(tenant, tokens, index);
        if self.redis.is_some() {
            *inner.pending.entry(tenant.clone()).or_default() += tokens;
        }
    }

    /// Calls `f` with a function giving each tenant's attained service (one lock for all).
    pub fn with_view<R>(&self, f: impl FnOnce(&dyn Fn(&str) -> f64) -> R) -> R {
        let (index, fraction) = self.clock();
        let inner = self.inner.lock().expect("attained lock");
        match &inner.global {
            Some((at, totals)) if at.elapsed() < GLOBAL_FRESHNESS => {
                let view = |t: &str| {
                    totals.get(t).copied().unwrap_or(0.0)
                        + inner.pending.get(t).copied().unwrap_or(0.0)
                };
                f(&view)
            }
            _ => {
                let view = |t: &str| inner.local.value(t, index, fraction);
                f(&view)
            }
        }
    }

    /// One tenant's attained service.
    pub fn attained(&self, tenant: &str) -> f64 {
        self.with_view(|v| v(tenant))
    }

    /// Pushes this replica's charges to Redis and reads everyone's totals back.
    pub async fn sync(&self) -> Result<(), String> {
        let Some(addr) = &self.redis else {
            return Ok(());
        };
        let (index, fraction) = self.clock();
        let pending = std::mem::take(&mut self.inner.lock().expect("attained lock").pending);
        let result = async {
            let mut conn = redis_limit::connection(addr, self.timeout).await?;
            let current = format!("muster:fair:{index}");
            let previous = format!("muster:fair:{}", index.saturating_sub(1));
            let mut pipe = redis::pipe();
            for (tenant, tokens) in &pending {
                pipe.cmd("HINCRBYFLOAT")
                    .arg(&current)
                    .arg(&**tenant)
                    .arg(*tokens)
                    .ignore();
            }
            pipe.cmd("PEXPIRE")
                .arg(&current)
                .arg(self.window_ms * 3)
                .ignore();
            pipe.cmd("HGETALL")
                .arg(&current)
                .cmd("HGETALL")
                .arg(&previous);
            let (cur, prev): (HashMap<String, f64>, HashMap<String, f64>) =
                tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
                    .await
                    .map_err(|_| format!("Redis {addr} did not answer within {:?}", self.timeout))?
                    .map_err(|e| format!("Redis {addr}: {e}"))?;
            let mut totals = prev;
            for v in totals.values_mut() {
                *v *= 1.0 - fraction;
            }
            for (t, v) in cur {
                *totals.entry(t).or_default() += v;
            }
            Ok(totals)
        }
        .await;
        let mut inner = self.inner.lock().expect("attained lock");
        match result {
            Ok(totals) => {
                inner.global = Some((Instant::now(), totals));
                Ok(())
            }
            Err(e) => {
                redis_limit::forget(addr);
                self.metrics.fair_sync_errors.inc();
                // Keep the charges for the next try.
                for (t, v) in pending {
                    *inner.pending.entry(t).or_default() += v;
                }
                Err(e)
            }
        }
    }

    /// Runs [`AttainedService::sync`] every `interval` forever.
    pub async fn run_sync(self: Arc<Self>, interval: Duration) {
        let mut failing = false;
        loop {
            tokio::time::sleep(interval).await;
            match self.sync().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("fairness state shared through Redis again");
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot share fairness state through Redis; using this replica's own");
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_decays_the_previous_window() {
        let t: Arc<str> = "a".into();
        let mut w = Windows::default();
        w.add(&t, 100.0, 10);
        assert_eq!(w.value("a", 10, 0.5), 100.0);
        // Next window: the old one counts in proportion to what is left of it.
        assert_eq!(w.value("a", 11, 0.25), 75.0);
        w.add(&t, 10.0, 11);
        assert_eq!(w.value("a", 11, 0.5), 60.0);
        // Two windows later nothing is left.
        assert_eq!(w.value("a", 13, 0.0), 0.0);
        w.roll(20);
        assert_eq!(w.value("a", 20, 0.0), 0.0);
    }
}
