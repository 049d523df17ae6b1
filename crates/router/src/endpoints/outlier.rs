//! Passive outlier ejection: an endpoint that fails several requests in a row is skipped for a
//! while (longer each time it is ejected again), without any active health probe.

use std::time::{Duration, Instant};

/// When to eject and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPolicy {
    /// Consecutive failures (connect errors, resets, 5xx, timeouts) that eject; 0 disables.
    pub consecutive_failures: u32,
    /// First ejection length; the n-th consecutive ejection lasts n times as long.
    pub base_ejection: Duration,
    /// Upper bound of one ejection.
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
        }
    }
}

/// Per-endpoint failure bookkeeping.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutlierState {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl OutlierState {
    /// Records a successful response; it ends the failure streak and the ejection back-off.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.ejections = 0;
    }

    /// Records a failure at `now`; returns the ejection length when this failure ejects.
    pub fn record_failure(&mut self, now: Instant, policy: &OutlierPolicy) -> Option<Duration> {
        if policy.consecutive_failures == 0 {
            return None;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures < policy.consecutive_failures || self.is_ejected(now) {
            return None;
        }
        self.consecutive_failures = 0;
        self.ejections += 1;
        let length = policy
            .base_ejection
            .saturating_mul(self.ejections)
            .min(policy.max_ejection);
        self.ejected_until = Some(now + length);
        Some(length)
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Consecutive failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_the_streak_and_backs_off_longer_each_time() {
        let policy = OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(12),
        };
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        assert_eq!(s.record_failure(t0, &policy), None);
        assert_eq!(s.record_failure(t0, &policy), None);
        assert_eq!(s.record_failure(t0, &policy), Some(Duration::from_secs(5)));
        assert!(s.is_ejected(t0 + Duration::from_secs(4)));
        assert!(!s.is_ejected(t0 + Duration::from_secs(5)));

        let t1 = t0 + Duration::from_secs(6);
        for _ in 0..2 {
            assert_eq!(s.record_failure(t1, &policy), None);
        }
        assert_eq!(s.record_failure(t1, &policy), Some(Duration::from_secs(10)));
        let t2 = t1 + Duration::from_secs(11);
        for _ in 0..2 {
            s.record_failure(t2, &policy);
        }
        assert_eq!(
            s.record_failure(t2, &policy),
            Some(Duration::from_secs(12)),
            "capped"
        );
    }

    #[test]
    fn a_success_resets_the_streak() {
        let policy = OutlierPolicy {
            consecutive_failures: 2,
            ..OutlierPolicy::default()
        };
        let now = Instant::now();
        let mut s = OutlierState::default();
        s.record_failure(now, &policy);
        s.record_success();
        assert_eq!(s.record_failure(now, &policy), None);
        assert!(!s.is_ejected(now));
    }

    #[test]
    fn zero_threshold_disables_ejection() {
        let policy = OutlierPolicy {
            consecutive_failures: 0,
            ..OutlierPolicy::default()
        };
        let now = Instant::now();
        let mut s = OutlierState::default();
        for _ in 0..100 {
            assert_eq!(s.record_failure(now, &policy), None);
        }
    }
}
