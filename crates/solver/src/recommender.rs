//! KPA-style recommender for a fleet of identical instances (one ModelServing, whole
//! ServingGroups).
//!
//! A pure function: the caller passes the metric series with timestamps, the current count and
//! the [`RecommenderState`] returned by the previous call. The state is small and serialisable
//! so a restarted controller can persist it in the policy status and resume the same decisions
//! (DESIGN §3: no in-memory state machine that a restart loses).
//!
//! Rules, in order (the README has the long form):
//! 1. Average the metric over the stable window (default 60 s) and the panic window (6 s).
//! 2. Panic when the panic-window count is ≥ `panicThreshold` × current; stay in panic until
//!    `panicModeHoldSeconds` after the last trigger. In panic the count never decreases.
//! 3. In stable mode act only outside the hysteresis band: scale up when utilisation is above
//!    `scaleUpThreshold`, down when below `scaleDownThreshold`; ignore changes within
//!    `tolerance`. The new count brings utilisation back to `targetUtilisation`.
//! 4. Scale down no lower than the highest recommendation in the stabilization window.
//! 5. Cooldowns after any change; rate limits per period (instances and percent, Or/And).
//! 6. Clamp into `[minInstances, maxInstances]`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One observation of the fleet-wide metric (e.g. total in-flight requests or tokens/s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricSample {
    /// Seconds on any monotonic clock shared with `now_s`.
    pub at_s: f64,
    /// Metric value summed over all instances.
    pub value: f64,
}

/// How two rate limits combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectPolicy {
    /// The more permissive of `instances` and `percent`.
    Or,
    /// The stricter of `instances` and `percent`.
    And,
}

/// The most the count may change within `periodSeconds`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Absolute change allowed per period.
    pub instances: u32,
    /// Change allowed per period as a percentage of the count at the start of the period.
    pub percent: u32,
    /// Length of the period.
    pub period_seconds: f64,
    /// How `instances` and `percent` combine.
    pub select: SelectPolicy,
}

impl RateLimit {
    fn allowance(&self, base: u32, round_up: bool) -> u32 {
        let pct = f64::from(base) * f64::from(self.percent) / 100.0;
        let pct = if round_up { pct.ceil() } else { pct.floor() } as u32;
        match self.select {
            SelectPolicy::Or => self.instances.max(pct),
            SelectPolicy::And => self.instances.min(pct),
        }
    }
}

/// Tuning of the recommender. Defaults follow Knative KPA and Kthena where they agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RecommenderConfig {
    /// Metric value one instance sustains at its SLO (100% utilisation).
    pub target_per_instance: f64,
    /// Utilisation a scaling action aims for (KPA's 70%).
    pub target_utilisation: f64,
    /// Scale up only when utilisation is above this fraction of the target.
    pub scale_up_threshold: f64,
    /// Scale down only when utilisation is below this fraction of the target.
    pub scale_down_threshold: f64,
    /// Ignore changes smaller than this fraction of the current count.
    pub tolerance: f64,
    /// Averaging window for stable mode.
    pub stable_window_seconds: f64,
    /// Averaging window for burst detection.
    pub panic_window_seconds: f64,
    /// Enter panic when the panic-window count reaches this multiple of the current count.
    pub panic_threshold: f64,
    /// Stay in panic this long after the last trigger.
    pub panic_mode_hold_seconds: f64,
    /// Scale-up limit in stable mode.
    pub scale_up: RateLimit,
    /// Scale-up limit in panic mode (bursts need bigger steps).
    pub panic_scale_up: RateLimit,
    /// Scale-down limit.
    pub scale_down: RateLimit,
    /// Scale down no lower than the highest recommendation within this window.
    pub scale_down_stabilization_seconds: f64,
    /// Minimum time after any change before scaling up again (stable mode only).
    pub scale_up_cooldown_seconds: f64,
    /// Minimum time after any change before scaling down.
    pub scale_down_cooldown_seconds: f64,
    /// Fewest instances.
    pub min_instances: u32,
    /// Most instances.
    pub max_instances: u32,
}

impl Default for RecommenderConfig {
    fn default() -> Self {
        RecommenderConfig {
            target_per_instance: 1.0,
            target_utilisation: 0.7,
            scale_up_threshold: 0.8,
            scale_down_threshold: 0.3,
            tolerance: 0.1,
            stable_window_seconds: 60.0,
            panic_window_seconds: 6.0,
            panic_threshold: 2.0,
            panic_mode_hold_seconds: 60.0,
            scale_up: RateLimit {
                instances: 4,
                percent: 100,
                period_seconds: 15.0,
                select: SelectPolicy::Or,
            },
            panic_scale_up: RateLimit {
                instances: 10,
                percent: 1000,
                period_seconds: 15.0,
                select: SelectPolicy::Or,
            },
            scale_down: RateLimit {
                instances: 1,
                percent: 50,
                period_seconds: 60.0,
                select: SelectPolicy::Or,
            },
            scale_down_stabilization_seconds: 300.0,
            scale_up_cooldown_seconds: 0.0,
            scale_down_cooldown_seconds: 120.0,
            min_instances: 1,
            max_instances: 10,
        }
    }
}

/// A recommender configuration that cannot work.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// A number is out of range.
    #[error("{field} = {value}: {expected}")]
    OutOfRange {
        /// Field name.
        field: &'static str,
        /// Value given.
        value: f64,
        /// What is expected.
        expected: &'static str,
    },
}

impl RecommenderConfig {
    /// Rejects settings that would make the recommender flap or divide by zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |field, value: f64, ok: bool, expected| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange {
                    field,
                    value,
                    expected,
                })
            }
        };
        check(
            "targetPerInstance",
            self.target_per_instance,
            self.target_per_instance > 0.0,
            "must be > 0",
        )?;
        check(
            "targetUtilisation",
            self.target_utilisation,
            self.target_utilisation > 0.0 && self.target_utilisation <= 1.0,
            "must be in (0, 1]",
        )?;
        // After scaling, utilisation lands near targetUtilisation; if that were outside the band
        // the next tick would act again and the fleet would flap.
        check(
            "scaleUpThreshold",
            self.scale_up_threshold,
            self.scale_up_threshold >= self.target_utilisation,
            "must be ≥ targetUtilisation",
        )?;
        check(
            "scaleDownThreshold",
            self.scale_down_threshold,
            self.scale_down_threshold >= 0.0 && self.scale_down_threshold < self.target_utilisation,
            "must be in [0, targetUtilisation)",
        )?;
        check(
            "tolerance",
            self.tolerance,
            (0.0..1.0).contains(&self.tolerance),
            "must be in [0, 1)",
        )?;
        check(
            "stableWindowSeconds",
            self.stable_window_seconds,
            self.stable_window_seconds > 0.0,
            "must be > 0",
        )?;
        check(
            "panicWindowSeconds",
            self.panic_window_seconds,
            self.panic_window_seconds > 0.0
                && self.panic_window_seconds <= self.stable_window_seconds,
            "must be in (0, stableWindowSeconds]",
        )?;
        check(
            "panicThreshold",
            self.panic_threshold,
            self.panic_threshold > 1.0,
            "must be > 1",
        )?;
        check(
            "maxInstances",
            f64::from(self.max_instances),
            self.max_instances >= self.min_instances && self.max_instances > 0,
            "must be ≥ minInstances and ≥ 1",
        )?;
        Ok(())
    }
}

/// Whether the recommender is reacting to a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Normal operation on the stable window.
    #[default]
    Stable,
    /// Burst: scale on the panic window, never down.
    Panic,
}

/// A count at a time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimedCount {
    /// When.
    pub at_s: f64,
    /// How many instances.
    pub count: u32,
}

/// What the recommender remembers between calls; persist it and pass it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecommenderState {
    /// Panic lasts until this time.
    pub panic_until_s: Option<f64>,
    /// When the count last changed.
    pub last_scale_at_s: Option<f64>,
    /// Raw recommendations, for the scale-down stabilization window.
    pub recommendations: Vec<TimedCount>,
    /// Decided counts, for the rate-limit periods.
    pub decisions: Vec<TimedCount>,
}

/// The output of one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// Instances to run.
    pub desired: u32,
    /// Stable or panic.
    pub mode: Mode,
    /// Why, in words, for status and events.
    pub reason: String,
    /// State to pass to the next call.
    pub state: RecommenderState,
}

fn window_mean(samples: &[MetricSample], now_s: f64, window_s: f64) -> Option<f64> {
    let values: Vec<f64> = samples
        .iter()
        .filter(|s| s.at_s > now_s - window_s && s.at_s <= now_s && s.value.is_finite())
        .map(|s| s.value.max(0.0))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Recommends the instance count at `now_s` for a fleet of `current` instances.
///
/// `config` is expected to have passed [`RecommenderConfig::validate`]; samples may be in any
/// order and older ones are ignored, so the caller can pass a ring buffer as is.
pub fn recommend(
    config: &RecommenderConfig,
    now_s: f64,
    current: u32,
    samples: &[MetricSample],
    previous: &RecommenderState,
) -> Recommendation {
    let mut state = previous.clone();
    let clamp = |n: u32| n.clamp(config.min_instances, config.max_instances);

    let Some(stable) = window_mean(samples, now_s, config.stable_window_seconds) else {
        // No data is not zero load: scaling down on a scrape outage would drop live traffic.
        let desired = clamp(current);
        return finish(
            config,
            state,
            now_s,
            current,
            desired,
            mode_at(previous, now_s),
            format!(
                "no metric samples in the last {}s: holding",
                config.stable_window_seconds
            ),
        );
    };
    let panic = window_mean(samples, now_s, config.panic_window_seconds).unwrap_or(stable);
    let per_instance = config.target_per_instance * config.target_utilisation;
    let stable_count = (stable / per_instance).ceil() as u32;
    let panic_count = (panic / per_instance).ceil() as u32;
    let ready = current.max(1);

    let triggered = f64::from(panic_count) >= config.panic_threshold * f64::from(ready)
        && panic_count > current;
    if triggered {
        state.panic_until_s = Some(now_s + config.panic_mode_hold_seconds);
    }
    let mode = mode_at(&state, now_s);
    if mode == Mode::Stable {
        state.panic_until_s = None;
    }

    let utilisation = stable / (f64::from(current) * config.target_per_instance);
    let (mut raw, mut reason) = match mode {
        Mode::Panic => (
            current.max(stable_count).max(panic_count),
            format!(
                "panic{}: panic-window load needs {panic_count}, stable {stable_count}; no scale-down until {:.0}s",
                if triggered { " (triggered)" } else { " (holding)" },
                state.panic_until_s.unwrap_or(now_s)
            ),
        ),
        Mode::Stable if current == 0 => (
            stable_count,
            format!("stable: scaling from zero, load needs {stable_count}"),
        ),
        Mode::Stable if utilisation > config.scale_up_threshold => (
            stable_count.max(current),
            format!(
                "stable: utilisation {utilisation:.2} above {:.2}: load needs {stable_count}",
                config.scale_up_threshold
            ),
        ),
        Mode::Stable if utilisation < config.scale_down_threshold => (
            stable_count.min(current),
            format!(
                "stable: utilisation {utilisation:.2} below {:.2}: load needs {stable_count}",
                config.scale_down_threshold
            ),
        ),
        Mode::Stable => (
            current,
            format!(
                "stable: utilisation {utilisation:.2} within [{:.2}, {:.2}]",
                config.scale_down_threshold, config.scale_up_threshold
            ),
        ),
    };
    if raw != current
        && current > 0
        && f64::from(raw.abs_diff(current)) <= config.tolerance * f64::from(current)
    {
        reason.push_str(&format!("; change to {raw} within tolerance"));
        raw = current;
    }

    state.recommendations.push(TimedCount {
        at_s: now_s,
        count: raw,
    });
    let mut desired = raw;

    if desired < current {
        let window_max = state
            .recommendations
            .iter()
            .filter(|r| r.at_s > now_s - config.scale_down_stabilization_seconds)
            .map(|r| r.count)
            .max()
            .unwrap_or(raw);
        if window_max > desired {
            desired = window_max.min(current);
            reason.push_str(&format!("; stabilization window keeps {desired}"));
        }
    }

    let since_last = state.last_scale_at_s.map_or(f64::INFINITY, |t| now_s - t);
    if desired > current && mode == Mode::Stable && since_last < config.scale_up_cooldown_seconds {
        reason.push_str(&format!(
            "; scale-up cooldown ({since_last:.0}s since last change)"
        ));
        desired = current;
    }
    if desired < current && since_last < config.scale_down_cooldown_seconds {
        reason.push_str(&format!(
            "; scale-down cooldown ({since_last:.0}s since last change)"
        ));
        desired = current;
    }

    if desired > current {
        let limit = if mode == Mode::Panic {
            &config.panic_scale_up
        } else {
            &config.scale_up
        };
        let base = counts_in(&state.decisions, now_s, limit.period_seconds)
            .min()
            .unwrap_or(current)
            .min(current);
        let cap = base + limit.allowance(base.max(1), true);
        if desired > cap {
            reason.push_str(&format!("; scale-up rate caps at {cap}"));
            desired = cap.max(current);
        }
    } else if desired < current {
        let limit = &config.scale_down;
        let base = counts_in(&state.decisions, now_s, limit.period_seconds)
            .max()
            .unwrap_or(current)
            .max(current);
        let floor = base.saturating_sub(limit.allowance(base, false));
        if desired < floor {
            reason.push_str(&format!("; scale-down rate floors at {floor}"));
            desired = floor.min(current);
        }
    }

    let clamped = clamp(desired);
    if clamped != desired {
        reason.push_str(&format!(
            "; clamped to [{}, {}]",
            config.min_instances, config.max_instances
        ));
    }
    finish(config, state, now_s, current, clamped, mode, reason)
}

fn mode_at(state: &RecommenderState, now_s: f64) -> Mode {
    match state.panic_until_s {
        Some(until) if now_s < until => Mode::Panic,
        _ => Mode::Stable,
    }
}

fn counts_in(history: &[TimedCount], now_s: f64, period_s: f64) -> impl Iterator<Item = u32> + '_ {
    history
        .iter()
        .filter(move |d| d.at_s > now_s - period_s)
        .map(|d| d.count)
}

fn finish(
    config: &RecommenderConfig,
    mut state: RecommenderState,
    now_s: f64,
    current: u32,
    desired: u32,
    mode: Mode,
    reason: String,
) -> Recommendation {
    if desired != current {
        state.last_scale_at_s = Some(now_s);
        // The count before the change was in effect until now; the rate-limit periods measure
        // from it.
        state.decisions.push(TimedCount {
            at_s: now_s,
            count: current,
        });
    }
    state.decisions.push(TimedCount {
        at_s: now_s,
        count: desired,
    });
    // Keep only what a window or period can still look at, so the state stays small.
    let horizon = config
        .scale_down_stabilization_seconds
        .max(config.scale_up.period_seconds)
        .max(config.panic_scale_up.period_seconds)
        .max(config.scale_down.period_seconds);
    state.recommendations.retain(|r| r.at_s > now_s - horizon);
    state.decisions.retain(|r| r.at_s > now_s - horizon);
    Recommendation {
        desired,
        mode,
        reason,
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TICK_S: f64 = 2.0;

    /// Drives the recommender over `load(t)` (fleet-wide metric) with one sample per tick and
    /// the fleet following every decision immediately. Returns (time, desired, mode) per tick.
    fn simulate(
        config: &RecommenderConfig,
        start: u32,
        ticks: usize,
        load: impl Fn(f64) -> f64,
    ) -> Vec<(f64, u32, Mode, String)> {
        let mut samples = Vec::new();
        let mut state = RecommenderState::default();
        let mut current = start;
        let mut out = Vec::new();
        for i in 0..ticks {
            let now = i as f64 * TICK_S;
            samples.push(MetricSample {
                at_s: now,
                value: load(now),
            });
            let r = recommend(config, now, current, &samples, &state);
            state = r.state;
            current = r.desired;
            out.push((now, r.desired, r.mode, r.reason));
        }
        out
    }

    fn config() -> RecommenderConfig {
        RecommenderConfig {
            target_per_instance: 10.0,
            min_instances: 1,
            max_instances: 20,
            ..RecommenderConfig::default()
        }
    }

    #[test]
    fn default_config_is_valid_and_bad_bands_are_rejected() {
        assert_eq!(RecommenderConfig::default().validate(), Ok(()));
        let flappy = RecommenderConfig {
            scale_down_threshold: 0.75,
            ..config()
        };
        assert_eq!(
            flappy.validate().unwrap_err().to_string(),
            "scaleDownThreshold = 0.75: must be in [0, targetUtilisation)"
        );
    }

    #[test]
    fn slow_ramp_scales_up_in_stable_mode_and_never_down() {
        // 30 → 95 units over 10 minutes: needs ceil(95 / 7) = 14 instances at the end.
        let run = simulate(&config(), 5, 300, |t| 30.0 + 65.0 * t / 600.0);
        let counts: Vec<u32> = run.iter().map(|r| r.1).collect();
        assert!(counts.windows(2).all(|w| w[1] >= w[0]), "{counts:?}");
        assert!(
            run.iter().all(|r| r.2 == Mode::Stable),
            "a slow ramp is not a burst"
        );
        let last = *counts.last().unwrap();
        // The stable window lags the ramp by ~30 s of load (4.5 units): 12–14 instances.
        assert!((12..=14).contains(&last), "ended at {last}");
    }

    #[test]
    fn burst_enters_panic_holds_then_returns_to_stable_and_scales_down() {
        // 20 units (3 instances) for 2 min, a 100-unit burst for 30 s, then calm again.
        let load = |t: f64| {
            if (120.0..150.0).contains(&t) {
                100.0
            } else {
                20.0
            }
        };
        let run = simulate(&config(), 3, 600, load);
        let at = |t: f64| run.iter().find(|r| r.0 >= t).unwrap();
        assert_eq!(at(118.0).1, 3);
        assert_eq!(at(118.0).2, Mode::Stable);
        // The first burst sample lifts the 6 s panic window to 47 units: 7 instances ≥ 2 × 3.
        let trigger = at(120.0);
        assert_eq!(trigger.2, Mode::Panic, "{}", trigger.3);
        assert!(trigger.3.contains("panic (triggered)"), "{}", trigger.3);
        // Two ticks later the panic window is all burst: 100 / 7 → 15 instances.
        let burst = at(124.0);
        assert_eq!(burst.1, 15, "{}", burst.3);
        // Held for 60 s after the last trigger, never decreasing meanwhile.
        let held: Vec<_> = run
            .iter()
            .filter(|r| (120.0..180.0).contains(&r.0))
            .collect();
        assert!(
            held.iter().all(|r| r.2 == Mode::Panic),
            "panic must hold 60 s after the trigger"
        );
        assert!(
            held.windows(2).all(|w| w[1].1 >= w[0].1),
            "no scale-down in panic"
        );
        assert_eq!(at(180.0).2, Mode::Stable);
        // Back down after the stabilization window in rate-limited steps (15 → 8 → 4): at 4 the
        // utilisation (20 / 40 = 0.5) is inside the hysteresis band, so it stops there rather
        // than chasing the exact count of 3.
        let last = run.last().unwrap();
        assert_eq!(last.1, 4, "{last:?}");
        assert!(last.3.contains("within [0.30, 0.80]"), "{}", last.3);
        let first_down = run
            .iter()
            .position(|r| r.0 > 150.0 && r.1 < burst.1)
            .unwrap();
        assert!(
            run[first_down].0 >= 150.0 + 300.0 - TICK_S,
            "scaled down at {}s, inside the stabilization window",
            run[first_down].0
        );
    }

    #[test]
    fn scale_down_respects_cooldown_and_rate() {
        let c = RecommenderConfig {
            scale_down_stabilization_seconds: 0.0,
            scale_down: RateLimit {
                instances: 1,
                percent: 0,
                period_seconds: 60.0,
                select: SelectPolicy::Or,
            },
            scale_down_cooldown_seconds: 30.0,
            ..config()
        };
        // Load for 1 instance, fleet at 10: one instance per 60 s (rate beats cooldown).
        let run = simulate(&c, 10, 200, |_| 5.0);
        let changes: Vec<f64> = run
            .windows(2)
            .filter(|w| w[1].1 != w[0].1)
            .map(|w| w[1].0)
            .collect();
        assert!(
            changes.windows(2).all(|w| w[1] - w[0] >= 60.0 - TICK_S),
            "{changes:?}"
        );
        assert!(run.windows(2).all(|w| w[0].1 - w[1].1.min(w[0].1) <= 1));
        assert_eq!(run[0].1, 9, "first step at t=0");
        assert_eq!(changes, vec![60.0, 120.0, 180.0, 240.0, 300.0, 360.0]);
        assert_eq!(run.last().unwrap().1, 3, "400 s: 10 → 3, one per minute");
    }

    #[test]
    fn no_metrics_holds_the_current_count() {
        let r = recommend(&config(), 100.0, 5, &[], &RecommenderState::default());
        assert_eq!(r.desired, 5);
        assert!(r.reason.contains("no metric samples"));
        // Stale samples only (older than the stable window) also hold.
        let stale = [MetricSample {
            at_s: 0.0,
            value: 0.0,
        }];
        assert_eq!(
            recommend(&config(), 100.0, 5, &stale, &RecommenderState::default()).desired,
            5
        );
    }

    #[test]
    fn and_select_policy_takes_the_stricter_limit() {
        let or = RateLimit {
            instances: 2,
            percent: 100,
            period_seconds: 15.0,
            select: SelectPolicy::Or,
        };
        let and = RateLimit {
            select: SelectPolicy::And,
            ..or
        };
        assert_eq!(or.allowance(10, true), 10);
        assert_eq!(and.allowance(10, true), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// A flat load with ±10% noise: the fleet settles monotonically and then stays put.
        #[test]
        fn noisy_flat_load_does_not_oscillate(
            level in 1.0f64..120.0,
            start in 1u32..=20,
            noise in prop::collection::vec(-0.1f64..0.1, 900),
        ) {
            let run = simulate(&config(), start, 900, |t| level * (1.0 + noise[(t / TICK_S) as usize]));
            let counts: Vec<u32> = run.iter().map(|r| r.1).collect();
            let steps: Vec<i64> = counts.windows(2).map(|w| i64::from(w[1]) - i64::from(w[0])).filter(|d| *d != 0).collect();
            let reversals = steps.windows(2).filter(|w| w[0].signum() != w[1].signum()).count();
            prop_assert_eq!(reversals, 0, "counts went up and down: {:?}", steps);
            // Settled for the last 5 minutes.
            let tail = &counts[counts.len() - 150..];
            prop_assert!(tail.iter().all(|&c| c == tail[0]), "still changing at the end: {:?}", tail);
        }

        /// Any load: counts stay in [min, max] and each step obeys the rate limits.
        #[test]
        fn bounds_and_rate_limits_hold(
            loads in prop::collection::vec(0.0f64..300.0, 120),
            start in 1u32..=20,
        ) {
            let c = config();
            let run = simulate(&c, start, 120, |t| loads[(t / TICK_S) as usize]);
            let mut previous = start;
            for (i, r) in run.iter().enumerate() {
                prop_assert!((c.min_instances..=c.max_instances).contains(&r.1));
                if r.1 > previous {
                    let limit = if r.2 == Mode::Panic { &c.panic_scale_up } else { &c.scale_up };
                    let lookback = (limit.period_seconds / TICK_S) as usize;
                    let base = run[i.saturating_sub(lookback - 1)..i].iter().map(|x| x.1).chain([previous]).min().unwrap();
                    prop_assert!(r.1 <= base + limit.allowance(base.max(1), true), "tick {i}: {} → {}", previous, r.1);
                }
                if r.1 < previous {
                    let lookback = (c.scale_down.period_seconds / TICK_S) as usize;
                    let base = run[i.saturating_sub(lookback - 1)..i].iter().map(|x| x.1).chain([previous]).max().unwrap();
                    prop_assert!(r.1 >= base - c.scale_down.allowance(base, false), "tick {i}: {} → {}", previous, r.1);
                }
                previous = r.1;
            }
        }
    }
}
