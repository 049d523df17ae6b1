//! The pure core of the AutoscalingPolicy controller: policy spec → recommender settings, and
//! one observation (current replicas, metric samples, previous status) → scale action, status
//! and Events.
//!
//! Time is Unix seconds (`f64`) throughout, so the recommender state written into the status
//! (`lastScaleTime`, `panicUntil`) means the same to a restarted controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use muster_api::autoscaling::{
    AutoscalingPolicySpec, AutoscalingPolicyStatus, SelectPolicy as ApiSelect, StablePolicy,
    TargetScalingStatus,
};
use muster_solver::recommender::{
    recommend, MetricSample, Mode, RateLimit, RecommenderConfig, RecommenderState, SelectPolicy,
};

/// Condition types written on every policy.
pub mod conditions {
    /// The policy is being acted on.
    pub const READY: &str = "Ready";
    /// The target ModelServing exists.
    pub const TARGET_FOUND: &str = "TargetFound";
    /// The metrics could be read.
    pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
}

/// Parses a Go duration (`30s`, `1m30s`, `250ms`, `0`) into seconds.
pub fn parse_duration_s(text: &str) -> Result<f64, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(0.0);
    }
    let (mut total, mut rest) = (0f64, s);
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} lacks a unit (ns, us, ms, s, m, h)"))?;
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {text:?} has a bad number"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("duration {text:?} has an unknown unit {other:?}")),
        };
        total += value * unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn duration_field(field: &str, value: &Option<String>, default: f64) -> Result<f64, String> {
    match value {
        None => Ok(default),
        Some(v) => parse_duration_s(v).map_err(|e| format!("{field}: {e}")),
    }
}

fn select(s: ApiSelect) -> SelectPolicy {
    match s {
        ApiSelect::Or => SelectPolicy::Or,
        ApiSelect::And => SelectPolicy::And,
    }
}

fn rate(field: &str, p: &StablePolicy, base: &RateLimit) -> Result<RateLimit, String> {
    Ok(RateLimit {
        instances: p.instances.map_or(base.instances, |n| n.max(0) as u32),
        percent: p.percent.map_or(base.percent, |n| n.max(0) as u32),
        period_seconds: duration_field(&format!("{field}.period"), &p.period, base.period_seconds)?,
        select: select(p.select_policy),
    })
}

/// The recommender settings of a policy scaling between `min` and `max` instances.
///
/// Every metric is normalised to "instances needed" (value / targetValue) before it reaches
/// the recommender, so `target_per_instance` is 1 and several metrics combine by taking the
/// largest need. `behavior.scaleUp.stablePolicy.stabilizationWindow` is the stable averaging
/// window and `panicPolicy.period` the panic window, as in Kthena.
pub fn recommender_config(
    spec: &AutoscalingPolicySpec,
    min: i32,
    max: i32,
) -> Result<RecommenderConfig, String> {
    let d = RecommenderConfig::default();
    let up = &spec.behavior.scale_up.stable_policy;
    let panic = &spec.behavior.scale_up.panic_policy;
    let down = &spec.behavior.scale_down;
    let panic_window = duration_field(
        "behavior.scaleUp.panicPolicy.period",
        &panic.period,
        d.panic_window_seconds,
    )?;
    let config = RecommenderConfig {
        target_per_instance: 1.0,
        tolerance: f64::from(spec.tolerance_percent.clamp(0, 99)) / 100.0,
        stable_window_seconds: duration_field(
            "behavior.scaleUp.stablePolicy.stabilizationWindow",
            &up.stabilization_window,
            d.stable_window_seconds,
        )?,
        panic_window_seconds: panic_window,
        panic_threshold: panic
            .panic_threshold_percent
            .map_or(d.panic_threshold, |p| f64::from(p) / 100.0),
        panic_mode_hold_seconds: duration_field(
            "behavior.scaleUp.panicPolicy.panicModeHold",
            &panic.panic_mode_hold,
            d.panic_mode_hold_seconds,
        )?,
        scale_up: rate("behavior.scaleUp.stablePolicy", up, &d.scale_up)?,
        panic_scale_up: RateLimit {
            percent: panic
                .percent
                .map_or(d.panic_scale_up.percent, |p| p.max(0) as u32),
            period_seconds: panic_window,
            ..d.panic_scale_up
        },
        scale_down: rate("behavior.scaleDown", down, &d.scale_down)?,
        scale_down_stabilization_seconds: duration_field(
            "behavior.scaleDown.stabilizationWindow",
            &down.stabilization_window,
            d.scale_down_stabilization_seconds,
        )?,
        scale_up_cooldown_seconds: duration_field(
            "behavior.scaleUp.stablePolicy.cooldown",
            &up.cooldown,
            d.scale_up_cooldown_seconds,
        )?,
        scale_down_cooldown_seconds: duration_field(
            "behavior.scaleDown.cooldown",
            &down.cooldown,
            d.scale_down_cooldown_seconds,
        )?,
        min_instances: min.max(0) as u32,
        max_instances: max.max(0) as u32,
        ..d
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Unix seconds of a status timestamp.
pub fn time_s(t: &Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

/// A status timestamp at Unix seconds `s`.
pub fn time_at(s: f64) -> Time {
    Time(Timestamp::from_millisecond((s * 1000.0) as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The recommender state to resume from: this process's memory when it has one, else what
/// the status says (after a restart). Windows of past recommendations are not in the status;
/// they refill within one stabilization window.
pub fn restore_state(
    memory: Option<&RecommenderState>,
    status: Option<&TargetScalingStatus>,
) -> RecommenderState {
    if let Some(m) = memory {
        return m.clone();
    }
    RecommenderState {
        panic_until_s: status.and_then(|s| s.panic_until.as_ref()).map(time_s),
        last_scale_at_s: status.and_then(|s| s.last_scale_time.as_ref()).map(time_s),
        ..Default::default()
    }
}

/// How the metrics read this tick.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsHealth {
    /// Every pod answered.
    Ok(String),
    /// Some pods did not; their load was extrapolated from the others.
    Partial(String),
    /// No usable value for at least one metric: no sample this tick.
    Missing(String),
}

/// Everything one tick of a homogeneous policy looks at.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// `metadata.generation` of the policy.
    pub generation: Option<i64>,
    /// Unix seconds.
    pub now_s: f64,
    /// The ModelServing's name.
    pub target: &'a str,
    /// Its `spec.replicas`; `None` when it does not exist.
    pub current: Option<i32>,
    /// Fleet-wide load in instances needed, over time (this process's window).
    pub samples: &'a [MetricSample],
    /// How this tick's scrape went.
    pub metrics: MetricsHealth,
    /// The policy's current status.
    pub previous: Option<&'a AutoscalingPolicyStatus>,
    /// Recommender state to resume from.
    pub state: RecommenderState,
    /// The recommender settings, or why the policy cannot be acted on.
    pub config: Result<RecommenderConfig, String>,
}

/// An Event to record on the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyEvent {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Message.
    pub note: String,
}

/// What one tick decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Set the ModelServing's replicas to this through the scale subresource.
    pub scale_to: Option<i32>,
    /// The policy's new status.
    pub status: AutoscalingPolicyStatus,
    /// Events to record.
    pub events: Vec<PolicyEvent>,
    /// State to remember when `scale_to` was applied (or is `None`).
    pub state: Option<RecommenderState>,
}

/// A condition, keeping the previous transition time when its status did not change.
pub fn condition(
    previous: Option<&AutoscalingPolicyStatus>,
    generation: Option<i64>,
    now_s: f64,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .into_iter()
        .flat_map(|p| p.conditions.iter())
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time_at(now_s));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: last,
        observed_generation: generation,
    }
}

fn was(previous: Option<&AutoscalingPolicyStatus>, type_: &str, reason: &str) -> bool {
    previous
        .into_iter()
        .flat_map(|p| p.conditions.iter())
        .any(|c| c.type_ == type_ && c.reason == reason)
}

/// One tick of a homogeneous policy.
pub fn decide_homogeneous(obs: &Observation<'_>) -> Decision {
    let cond = |t: &str, ok: bool, reason: &str, msg: String| {
        condition(obs.previous, obs.generation, obs.now_s, t, ok, reason, msg)
    };
    let previous_target = obs
        .previous
        .and_then(|p| p.targets.iter().find(|t| t.name == obs.target));
    let mut status = AutoscalingPolicyStatus {
        observed_generation: obs.generation,
        ..Default::default()
    };
    let mut events = Vec::new();

    let Some(current) = obs.current else {
        let msg = format!("ModelServing {} not found", obs.target);
        if !was(obs.previous, conditions::TARGET_FOUND, "TargetNotFound") {
            events.push(PolicyEvent {
                warning: true,
                reason: "TargetNotFound".into(),
                note: msg.clone(),
            });
        }
        status.conditions = vec![
            cond(conditions::READY, false, "TargetNotFound", msg.clone()),
            cond(conditions::TARGET_FOUND, false, "TargetNotFound", msg),
        ];
        return Decision {
            scale_to: None,
            status,
            events,
            state: None,
        };
    };
    let found = cond(
        conditions::TARGET_FOUND,
        true,
        "Found",
        format!("ModelServing {} has {current} replicas", obs.target),
    );
    let metrics = match &obs.metrics {
        MetricsHealth::Ok(m) => cond(conditions::METRICS_AVAILABLE, true, "Scraped", m.clone()),
        MetricsHealth::Partial(m) => cond(
            conditions::METRICS_AVAILABLE,
            true,
            "PartialMetrics",
            m.clone(),
        ),
        MetricsHealth::Missing(m) => cond(
            conditions::METRICS_AVAILABLE,
            false,
            "MetricsMissing",
            m.clone(),
        ),
    };
    let base_target = TargetScalingStatus {
        name: obs.target.to_string(),
        current_replicas: current,
        desired_replicas: current,
        mode: previous_target.and_then(|t| t.mode.clone()),
        last_scale_time: previous_target.and_then(|t| t.last_scale_time.clone()),
        panic_until: previous_target.and_then(|t| t.panic_until.clone()),
    };

    let config = match &obs.config {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("policy cannot be acted on: {e}");
            if !was(obs.previous, conditions::READY, "InvalidPolicy") {
                events.push(PolicyEvent {
                    warning: true,
                    reason: "InvalidPolicy".into(),
                    note: msg.clone(),
                });
            }
            status.conditions = vec![
                cond(conditions::READY, false, "InvalidPolicy", msg),
                found,
                metrics,
            ];
            status.targets = vec![base_target];
            return Decision {
                scale_to: None,
                status,
                events,
                state: None,
            };
        }
    };

    let current_u = current.max(0) as u32;
    let rec = recommend(config, obs.now_s, current_u, obs.samples, &obs.state);
    let desired = rec.desired as i32;
    let mode = match rec.mode {
        Mode::Stable => "Stable",
        Mode::Panic => "Panic",
    };
    if desired != current {
        events.push(PolicyEvent {
            warning: false,
            reason: if desired > current {
                "ScaledUp"
            } else {
                "ScaledDown"
            }
            .into(),
            note: format!(
                "ModelServing {}: {current} → {desired} ServingGroups ({mode}): {}",
                obs.target, rec.reason
            ),
        });
    }
    let ready = match &obs.metrics {
        MetricsHealth::Missing(m) => cond(
            conditions::READY,
            false,
            "MetricsMissing",
            format!("holding at {desired}: {m}"),
        ),
        _ => cond(conditions::READY, true, "Scaling", rec.reason.clone()),
    };
    status.conditions = vec![ready, found, metrics];
    status.targets = vec![TargetScalingStatus {
        desired_replicas: desired,
        mode: Some(mode.into()),
        last_scale_time: rec.state.last_scale_at_s.map(time_at),
        panic_until: rec.state.panic_until_s.map(time_at),
        ..base_target
    }];
    Decision {
        scale_to: (desired != current).then_some(desired),
        status,
        events,
        state: Some(rec.state),
    }
}

/// Status for a target kind this controller does not act on yet, so the policy says so
/// instead of staying silent.
pub fn unsupported(
    previous: Option<&AutoscalingPolicyStatus>,
    generation: Option<i64>,
    now_s: f64,
    kind: &str,
) -> AutoscalingPolicyStatus {
    AutoscalingPolicyStatus {
        observed_generation: generation,
        conditions: vec![condition(
            previous,
            generation,
            now_s,
            conditions::READY,
            false,
            "Unsupported",
            format!("{kind} targets are not acted on by this controller version"),
        )],
        targets: previous.map(|p| p.targets.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(behavior: serde_json::Value) -> AutoscalingPolicySpec {
        serde_json::from_value(json!({
            "tolerancePercent": 10,
            "metrics": [{"name": "m", "targetValue": "4"}],
            "behavior": behavior,
            "homogeneousTarget": {"target": {"targetRef": {"name": "ms"}}, "minReplicas": 1, "maxReplicas": 4}
        }))
        .unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("1m30s").unwrap(), 90.0);
        assert_eq!(parse_duration_s("250ms").unwrap(), 0.25);
        assert_eq!(parse_duration_s("0").unwrap(), 0.0);
        assert!(parse_duration_s("5").unwrap_err().contains("lacks a unit"));
        assert!(parse_duration_s("5d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn behavior_maps_onto_the_recommender() {
        let s = spec(json!({
            "scaleUp": {
                "stablePolicy": {"instances": 2, "percent": 50, "period": "10s", "stabilizationWindow": "20s", "cooldown": "1s"},
                "panicPolicy": {"percent": 300, "period": "4s", "panicThresholdPercent": 150, "panicModeHold": "8s"}
            },
            "scaleDown": {"instances": 1, "period": "30s", "selectPolicy": "And", "stabilizationWindow": "5s", "cooldown": "7s"}
        }));
        let c = recommender_config(&s, 1, 4).unwrap();
        assert_eq!(c.target_per_instance, 1.0);
        assert_eq!(c.tolerance, 0.1);
        assert_eq!(
            (c.stable_window_seconds, c.panic_window_seconds),
            (20.0, 4.0)
        );
        assert_eq!((c.panic_threshold, c.panic_mode_hold_seconds), (1.5, 8.0));
        assert_eq!(
            (
                c.scale_up.instances,
                c.scale_up.percent,
                c.scale_up.period_seconds
            ),
            (2, 50, 10.0)
        );
        assert_eq!(
            (c.panic_scale_up.percent, c.panic_scale_up.period_seconds),
            (300, 4.0)
        );
        assert_eq!(c.scale_down.select, SelectPolicy::And);
        assert_eq!(
            (
                c.scale_down_stabilization_seconds,
                c.scale_up_cooldown_seconds,
                c.scale_down_cooldown_seconds
            ),
            (5.0, 1.0, 7.0)
        );
        assert_eq!((c.min_instances, c.max_instances), (1, 4));

        // A panic window longer than the stable window is rejected with the field's name.
        let bad = spec(
            json!({"scaleUp": {"stablePolicy": {"stabilizationWindow": "5s"}, "panicPolicy": {"period": "10s"}}}),
        );
        assert!(recommender_config(&bad, 1, 4)
            .unwrap_err()
            .contains("panicWindowSeconds"));
        let bad = spec(json!({"scaleDown": {"cooldown": "soon"}}));
        assert!(recommender_config(&bad, 1, 4)
            .unwrap_err()
            .contains("behavior.scaleDown.cooldown"));
    }

    fn config() -> RecommenderConfig {
        recommender_config(
            &spec(json!({
                "scaleUp": {"stablePolicy": {"stabilizationWindow": "10s"}, "panicPolicy": {"period": "2s", "panicModeHold": "6s"}},
                "scaleDown": {"stabilizationWindow": "4s", "cooldown": "5s"}
            })),
            1,
            4,
        )
        .unwrap()
    }

    fn obs<'a>(
        now_s: f64,
        current: Option<i32>,
        samples: &'a [MetricSample],
        previous: Option<&'a AutoscalingPolicyStatus>,
        state: RecommenderState,
    ) -> Observation<'a> {
        Observation {
            generation: Some(3),
            now_s,
            target: "ms",
            current,
            samples,
            metrics: MetricsHealth::Ok("1 pod answered".into()),
            previous,
            state,
            config: Ok(config()),
        }
    }

    fn cond<'a>(s: &'a AutoscalingPolicyStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn burst_scales_up_in_panic_and_status_carries_the_state() {
        let now = 1_700_000_000.0;
        let samples: Vec<MetricSample> = (0..10)
            .map(|i| MetricSample {
                at_s: now - 9.0 + f64::from(i),
                value: if i >= 8 { 6.0 } else { 0.5 },
            })
            .collect();
        let d = decide_homogeneous(&obs(
            now,
            Some(1),
            &samples,
            None,
            RecommenderState::default(),
        ));
        assert_eq!(d.scale_to, Some(4), "{:?}", d.status);
        let t = &d.status.targets[0];
        assert_eq!(
            (t.current_replicas, t.desired_replicas, t.mode.as_deref()),
            (1, 4, Some("Panic"))
        );
        assert_eq!(t.last_scale_time.as_ref().map(time_s), Some(now));
        assert_eq!(t.panic_until.as_ref().map(time_s), Some(now + 6.0));
        assert_eq!(d.status.observed_generation, Some(3));
        assert_eq!(cond(&d.status, "Ready").status, "True");
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.events[0].reason, "ScaledUp");
        assert!(d.events[0].note.contains("1 → 4"), "{}", d.events[0].note);

        // After a restart (no memory) the state comes back from the status: still in panic, so
        // a quiet tick does not scale down.
        let state = restore_state(None, Some(t));
        assert_eq!(state.panic_until_s, Some(now + 6.0));
        let quiet = [MetricSample {
            at_s: now + 3.0,
            value: 0.0,
        }];
        let d2 = decide_homogeneous(&obs(now + 3.0, Some(4), &quiet, Some(&d.status), state));
        assert_eq!(d2.scale_to, None);
        assert_eq!(d2.status.targets[0].mode.as_deref(), Some("Panic"));
        assert!(d2.events.is_empty());
        // Ready kept its transition time.
        assert_eq!(
            cond(&d2.status, "Ready").last_transition_time,
            cond(&d.status, "Ready").last_transition_time
        );
    }

    #[test]
    fn scales_down_only_after_cooldown_and_panic_hold() {
        let now = 1_700_000_000.0;
        let state = RecommenderState {
            last_scale_at_s: Some(now),
            ..Default::default()
        };
        let idle = |t: f64| -> Vec<MetricSample> {
            (0..10)
                .map(|i| MetricSample {
                    at_s: t - f64::from(i),
                    value: 0.0,
                })
                .collect()
        };
        let s = idle(now + 2.0);
        let d = decide_homogeneous(&obs(now + 2.0, Some(4), &s, None, state.clone()));
        assert_eq!(d.scale_to, None, "cooldown of 5s holds");
        let s = idle(now + 6.0);
        let d = decide_homogeneous(&obs(now + 6.0, Some(4), &s, None, state));
        assert_eq!(d.scale_to, Some(2), "rate limit: 50% of 4 per period");
        assert_eq!(d.events[0].reason, "ScaledDown");
    }

    #[test]
    fn a_noisy_flat_load_does_not_flap_through_status_round_trips() {
        // Load ≈ 2.1 instances' worth ± 30% (deterministic noise), one tick per second; every
        // tick restarts from the status alone (no memory) to prove the persisted state is
        // enough to keep the fleet still.
        let start = 1_700_000_000.0;
        let (mut current, mut status, mut samples) =
            (3, None::<AutoscalingPolicyStatus>, Vec::new());
        let mut changes = 0;
        for i in 0..300u32 {
            let now = start + f64::from(i);
            let noise = f64::from((i * 7919) % 13) / 12.0 - 0.5; // in [-0.5, 0.5]
            samples.push(MetricSample {
                at_s: now,
                value: 2.1 * (1.0 + 0.6 * noise),
            });
            samples.retain(|s: &MetricSample| s.at_s > now - 10.0);
            let state = restore_state(None, status.as_ref().and_then(|s| s.targets.first()));
            let d = decide_homogeneous(&obs(now, Some(current), &samples, status.as_ref(), state));
            if let Some(n) = d.scale_to {
                changes += 1;
                current = n;
            }
            status = Some(d.status);
        }
        assert!(changes <= 1, "{changes} changes on a flat load");
        assert_eq!(current, 3, "2.1 / 0.7 = 3 instances");
    }

    #[test]
    fn missing_metrics_hold_and_say_so() {
        let now = 1_700_000_000.0;
        let mut o = obs(now, Some(3), &[], None, RecommenderState::default());
        o.metrics = MetricsHealth::Missing("no pod answered: a: connect refused".into());
        let d = decide_homogeneous(&o);
        assert_eq!(d.scale_to, None, "an outage is not zero load");
        assert_eq!(d.status.targets[0].desired_replicas, 3);
        let ready = cond(&d.status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "MetricsMissing")
        );
        assert_eq!(cond(&d.status, "MetricsAvailable").status, "False");
    }

    #[test]
    fn missing_target_and_invalid_policy_are_conditions_not_crashes() {
        let now = 1_700_000_000.0;
        let d = decide_homogeneous(&obs(now, None, &[], None, RecommenderState::default()));
        assert_eq!(d.scale_to, None);
        assert_eq!(cond(&d.status, "TargetFound").status, "False");
        assert_eq!(d.events.len(), 1);
        // The Warning is not repeated on every tick.
        let again = decide_homogeneous(&obs(
            now + 1.0,
            None,
            &[],
            Some(&d.status),
            RecommenderState::default(),
        ));
        assert!(again.events.is_empty());

        let mut o = obs(now, Some(2), &[], None, RecommenderState::default());
        o.config = Err("scaleDownThreshold = 0.9".into());
        let d = decide_homogeneous(&o);
        assert_eq!(d.scale_to, None);
        assert_eq!(cond(&d.status, "Ready").reason, "InvalidPolicy");
        assert_eq!(d.status.targets[0].current_replicas, 2);
    }
}
