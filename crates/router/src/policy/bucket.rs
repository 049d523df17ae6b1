//! Token buckets, pure: capacity = the limit per unit, continuous refill at limit / unit.
//! A request is admitted when every bucket it draws on holds what it needs (its cost, or the
//! whole capacity if the cost is larger, so one big request can still pass a full bucket);
//! it is then charged the full cost, which may leave a bucket in debt. Reconciling with actual
//! usage later refunds (or charges) the difference. The Redis script applies the same rules.

use muster_api::networking::RateLimitUnit;

/// Length of a limit's unit.
pub fn unit_seconds(unit: RateLimitUnit) -> f64 {
    match unit {
        RateLimitUnit::Second => 1.0,
        RateLimitUnit::Minute => 60.0,
        RateLimitUnit::Hour => 3600.0,
        RateLimitUnit::Day => 86_400.0,
        RateLimitUnit::Month => 30.0 * 86_400.0,
    }
}

/// Size and refill rate of a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    /// Tokens held when full.
    pub capacity: f64,
    /// Refill per second.
    pub per_second: f64,
}

impl BucketSpec {
    /// `per_unit` tokens per `unit`, burst = one unit's worth.
    pub fn new(per_unit: u32, unit: RateLimitUnit) -> Self {
        let capacity = f64::from(per_unit.max(1));
        BucketSpec {
            capacity,
            per_second: capacity / unit_seconds(unit),
        }
    }

    /// Seconds for an empty bucket to fill (state older than twice this can be dropped).
    pub fn fill_seconds(&self) -> f64 {
        self.capacity / self.per_second
    }
}

/// A bucket's state at time `at` (seconds on the caller's clock).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens at `at` (negative: debt).
    pub tokens: f64,
    /// When `tokens` was computed.
    pub at: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn full(spec: &BucketSpec, now: f64) -> Self {
        Bucket {
            tokens: spec.capacity,
            at: now,
        }
    }

    /// Tokens at `now`.
    pub fn level(&self, spec: &BucketSpec, now: f64) -> f64 {
        (self.tokens + (now - self.at).max(0.0) * spec.per_second).min(spec.capacity)
    }

    /// Adds `delta` tokens (negative charges), never above capacity.
    pub fn adjust(&mut self, spec: &BucketSpec, delta: f64, now: f64) {
        self.tokens = (self.level(spec, now) + delta).min(spec.capacity);
        self.at = now;
    }
}

/// What one request draws from one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// The bucket's spec.
    pub spec: BucketSpec,
    /// Tokens charged on admission.
    pub cost: f64,
}

impl Draw {
    /// Tokens that must be present to admit.
    pub fn need(&self) -> f64 {
        self.cost.min(self.spec.capacity)
    }
}

/// Outcome of an admission check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Charged; tokens left in each bucket.
    Admitted {
        /// Per draw, after charging.
        remaining: Vec<f64>,
    },
    /// Nothing charged.
    Refused {
        /// Seconds until the slowest bucket holds what it needs.
        wait: f64,
        /// The draw that refused.
        index: usize,
        /// Tokens in each bucket now.
        levels: Vec<f64>,
    },
}

/// All-or-nothing admission over `buckets[i]` for `draws[i]`.
pub fn admit(buckets: &mut [Bucket], draws: &[Draw], now: f64) -> Verdict {
    debug_assert_eq!(buckets.len(), draws.len());
    let levels: Vec<f64> = buckets
        .iter()
        .zip(draws)
        .map(|(b, d)| b.level(&d.spec, now))
        .collect();
    let mut worst: Option<(usize, f64)> = None;
    for (i, (level, d)) in levels.iter().zip(draws).enumerate() {
        if *level < d.need() {
            let wait = (d.need() - level) / d.spec.per_second;
            if worst.is_none_or(|(_, w)| wait > w) {
                worst = Some((i, wait));
            }
        }
    }
    if let Some((index, wait)) = worst {
        return Verdict::Refused {
            wait,
            index,
            levels,
        };
    }
    let mut remaining = Vec::with_capacity(draws.len());
    for ((b, d), level) in buckets.iter_mut().zip(draws).zip(levels) {
        b.tokens = level - d.cost;
        b.at = now;
        remaining.push(b.tokens);
    }
    Verdict::Admitted { remaining }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cap: f64, per_second: f64) -> BucketSpec {
        BucketSpec {
            capacity: cap,
            per_second,
        }
    }

    #[test]
    fn admits_until_empty_then_says_how_long_to_wait() {
        let s = spec(100.0, 10.0);
        let mut b = [Bucket::full(&s, 0.0)];
        let d = [Draw {
            spec: s,
            cost: 30.0,
        }];
        for left in [70.0, 40.0, 10.0] {
            assert_eq!(
                admit(&mut b, &d, 0.0),
                Verdict::Admitted {
                    remaining: vec![left]
                }
            );
        }
        match admit(&mut b, &d, 0.0) {
            Verdict::Refused { wait, index, .. } => {
                assert_eq!(index, 0);
                assert!((wait - 2.0).abs() < 1e-9, "{wait}");
            }
            v => panic!("{v:?}"),
        }
        // Two seconds later 20 tokens refilled: admitted again.
        assert!(matches!(admit(&mut b, &d, 2.0), Verdict::Admitted { .. }));
    }

    #[test]
    fn all_or_nothing_and_big_requests_pass_a_full_bucket() {
        let small = spec(10.0, 1.0);
        let big = spec(1000.0, 1.0);
        let mut b = [Bucket::full(&small, 0.0), Bucket::full(&big, 0.0)];
        let d = [
            Draw {
                spec: small,
                cost: 50.0,
            },
            Draw {
                spec: big,
                cost: 5.0,
            },
        ];
        // 50 > capacity 10: needs a full bucket, then leaves it 40 in debt.
        assert_eq!(
            admit(&mut b, &d, 0.0),
            Verdict::Admitted {
                remaining: vec![-40.0, 995.0]
            }
        );
        // Refused by the first bucket; the second is not charged.
        assert!(matches!(
            admit(&mut b, &d, 1.0),
            Verdict::Refused { index: 0, .. }
        ));
        assert_eq!(b[1].level(&big, 1.0), 996.0);
    }

    #[test]
    fn reconciling_refunds_and_never_overfills() {
        let s = spec(100.0, 1.0);
        let mut b = Bucket::full(&s, 0.0);
        b.adjust(&s, -80.0, 0.0);
        b.adjust(&s, 30.0, 0.0);
        assert_eq!(b.level(&s, 0.0), 50.0);
        b.adjust(&s, 500.0, 1.0);
        assert_eq!(b.level(&s, 1.0), 100.0);
    }

    #[test]
    fn units() {
        let s = BucketSpec::new(600, RateLimitUnit::Minute);
        assert_eq!((s.capacity, s.per_second), (600.0, 10.0));
        assert_eq!(
            BucketSpec::new(1, RateLimitUnit::Month).fill_seconds(),
            2_592_000.0
        );
    }
}
