//! The pure core of disaggregated policies: each role of one ModelServing (e.g. prefill and
//! decode) is recommended independently by the KPA-style recommender, then the pair is
//! projected into the ratio band with `muster_solver::ratio`.
//!
//! Role counts are the role's `replicas` inside every ServingGroup; status entries are named
//! `<modelserving>/<role>`.

use muster_api::autoscaling::{AutoscalingPolicyStatus, RoleRatioConstraint, TargetScalingStatus};
use muster_solver::ratio::{enforce_ratio, RatioBand, RoleCount};
use muster_solver::recommender::{
    recommend, MetricSample, Mode, RecommenderConfig, RecommenderState,
};

use super::decide::{condition, conditions, time_at, MetricsHealth, PolicyEvent};
use crate::serving::expand::parse_quantity;

/// Condition type set when the bounds make the ratio band unreachable.
pub const RATIO_VIOLATED: &str = "RatioConstraintViolated";

/// One role as observed this tick.
#[derive(Debug, Clone)]
pub struct RoleObservation {
    /// Role name.
    pub role: String,
    /// The role's `replicas` now; `None` when the ModelServing has no such role.
    pub current: Option<i32>,
    /// Recommender settings for the role (bounds from the policy's role entry).
    pub config: RecommenderConfig,
    /// Load in instances needed, over time.
    pub samples: Vec<MetricSample>,
    /// How this tick's scrape went.
    pub metrics: MetricsHealth,
    /// State to resume from.
    pub state: RecommenderState,
}

/// What one tick decided.
#[derive(Debug, Clone, PartialEq)]
pub struct DisaggDecision {
    /// (role, replicas) to set.
    pub scale: Vec<(String, i32)>,
    /// New status.
    pub status: AutoscalingPolicyStatus,
    /// Events to record.
    pub events: Vec<PolicyEvent>,
    /// (role, state) to remember once `scale` is applied.
    pub states: Vec<(String, RecommenderState)>,
}

/// Parses a ratio band, naming the field on error.
pub fn ratio_band(c: &RoleRatioConstraint) -> Result<RatioBand, String> {
    let min = parse_quantity(&c.min_ratio.0).ok_or_else(|| {
        format!(
            "ratioConstraint.minRatio {:?} is not a quantity",
            c.min_ratio.0
        )
    })?;
    let max = parse_quantity(&c.max_ratio.0).ok_or_else(|| {
        format!(
            "ratioConstraint.maxRatio {:?} is not a quantity",
            c.max_ratio.0
        )
    })?;
    if !(min >= 0.0 && min <= max && max.is_finite()) {
        return Err(format!(
            "ratioConstraint: need 0 ≤ minRatio ≤ maxRatio, got [{min}, {max}]"
        ));
    }
    Ok(RatioBand {
        min_ratio: min,
        max_ratio: max,
    })
}

/// One tick of a disaggregated policy on ModelServing `ms`.
#[allow(clippy::too_many_arguments)]
pub fn decide_disaggregated(
    ms: &str,
    roles: &[RoleObservation],
    ratio: Option<(&RoleRatioConstraint, RatioBand)>,
    previous: Option<&AutoscalingPolicyStatus>,
    generation: Option<i64>,
    now_s: f64,
) -> DisaggDecision {
    let cond = |t: &str, ok: bool, reason: &str, msg: String| {
        condition(previous, generation, now_s, t, ok, reason, msg)
    };
    let mut conds = Vec::new();
    if let Some(r) = roles.iter().find(|r| r.current.is_none()) {
        let msg = format!("ModelServing {ms} has no role {:?}", r.role);
        conds.push(cond(conditions::READY, false, "RoleNotFound", msg.clone()));
        conds.push(cond(conditions::TARGET_FOUND, false, "RoleNotFound", msg));
        return DisaggDecision {
            scale: Vec::new(),
            status: AutoscalingPolicyStatus {
                observed_generation: generation,
                conditions: conds,
                targets: previous.map(|p| p.targets.clone()).unwrap_or_default(),
            },
            events: Vec::new(),
            states: Vec::new(),
        };
    }
    // Each role on its own first.
    let recs: Vec<_> = roles
        .iter()
        .map(|r| {
            let current = r.current.unwrap_or(0).max(0) as u32;
            recommend(&r.config, now_s, current, &r.samples, &r.state)
        })
        .collect();
    let mut desired: Vec<u32> = recs.iter().map(|r| r.desired).collect();
    let mut ratio_note = None;
    if let Some((c, band)) = ratio {
        let idx = |name: &str| roles.iter().position(|r| r.role == name);
        match (idx(&c.numerator_role), idx(&c.denominator_role)) {
            (Some(n), Some(d)) => {
                let count = |i: usize| RoleCount {
                    desired: desired[i],
                    min: roles[i].config.min_instances,
                    max: roles[i].config.max_instances,
                };
                let out = enforce_ratio(count(n), count(d), &band);
                desired[n] = out.numerator;
                desired[d] = out.denominator;
                ratio_note = out.adjustment.clone();
                conds.push(if out.within_band {
                    cond(
                        RATIO_VIOLATED,
                        false,
                        "WithinBand",
                        out.adjustment
                            .unwrap_or_else(|| "recommendations fit the band".into()),
                    )
                } else {
                    cond(
                        RATIO_VIOLATED,
                        true,
                        "BoundsExcludeBand",
                        format!(
                            "{}/{} cannot be brought into [{}, {}] within the roles' bounds",
                            c.numerator_role, c.denominator_role, band.min_ratio, band.max_ratio
                        ),
                    )
                });
            }
            _ => conds.push(cond(
                RATIO_VIOLATED,
                true,
                "UnknownRole",
                format!(
                    "ratioConstraint names roles {:?}/{:?} not in roles",
                    c.numerator_role, c.denominator_role
                ),
            )),
        }
    }

    let missing: Vec<String> = roles
        .iter()
        .filter_map(|r| match &r.metrics {
            MetricsHealth::Missing(m) => Some(format!("{}: {m}", r.role)),
            _ => None,
        })
        .collect();
    conds.insert(
        0,
        if missing.is_empty() {
            cond(
                conditions::READY,
                true,
                "Scaling",
                recs.iter()
                    .zip(roles)
                    .map(|(rec, r)| format!("{}: {}", r.role, rec.reason))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        } else {
            cond(
                conditions::READY,
                false,
                "MetricsMissing",
                format!("holding: {}", missing.join("; ")),
            )
        },
    );
    conds.insert(
        1,
        cond(
            conditions::TARGET_FOUND,
            true,
            "Found",
            format!("ModelServing {ms}"),
        ),
    );
    conds.insert(
        2,
        if missing.is_empty() {
            cond(
                conditions::METRICS_AVAILABLE,
                true,
                "Scraped",
                "every role's metrics were read".into(),
            )
        } else {
            cond(
                conditions::METRICS_AVAILABLE,
                false,
                "MetricsMissing",
                missing.join("; "),
            )
        },
    );

    let (mut scale, mut events, mut states, mut targets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((r, rec), want) in roles.iter().zip(recs).zip(desired) {
        let current = r.current.unwrap_or(0);
        let want = want as i32;
        let mut state = rec.state;
        if want != current {
            // The ratio may move a role the recommender kept: that is a change too.
            state.last_scale_at_s = Some(now_s);
            scale.push((r.role.clone(), want));
            events.push(PolicyEvent {
                warning: false,
                reason: if want > current {
                    "ScaledUp"
                } else {
                    "ScaledDown"
                }
                .into(),
                note: format!(
                    "ModelServing {ms} role {}: {current} → {want}: {}{}",
                    r.role,
                    rec.reason,
                    ratio_note
                        .as_deref()
                        .map(|n| format!("; ratio: {n}"))
                        .unwrap_or_default()
                ),
            });
        }
        targets.push(TargetScalingStatus {
            name: format!("{ms}/{}", r.role),
            current_replicas: current,
            desired_replicas: want,
            mode: Some(match rec.mode {
                Mode::Stable => "Stable".into(),
                Mode::Panic => "Panic".into(),
            }),
            last_scale_time: state.last_scale_at_s.map(time_at),
            panic_until: state.panic_until_s.map(time_at),
        });
        states.push((r.role.clone(), state));
    }
    DisaggDecision {
        scale,
        status: AutoscalingPolicyStatus {
            observed_generation: generation,
            conditions: conds,
            targets,
        },
        events,
        states,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn role(name: &str, current: i32, load: f64, min: u32, max: u32) -> RoleObservation {
        RoleObservation {
            role: name.into(),
            current: Some(current),
            config: RecommenderConfig {
                min_instances: min,
                max_instances: max,
                scale_down_cooldown_seconds: 0.0,
                ..Default::default()
            },
            samples: vec![MetricSample {
                at_s: 1000.0,
                value: load,
            }],
            metrics: MetricsHealth::Ok("ok".into()),
            state: RecommenderState::default(),
        }
    }

    fn constraint(min: &str, max: &str) -> RoleRatioConstraint {
        RoleRatioConstraint {
            numerator_role: "decode".into(),
            denominator_role: "prefill".into(),
            min_ratio: Quantity(min.into()),
            max_ratio: Quantity(max.into()),
        }
    }

    fn cond<'a>(s: &'a AutoscalingPolicyStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn roles_scale_independently_then_the_ratio_pulls_the_lagging_one_up() {
        // Decode load needs 6 (⌈4.0 / 0.7⌉); prefill is idle at 1. decode/prefill ≤ 3 → prefill 2.
        let c = constraint("1", "3");
        let band = ratio_band(&c).unwrap();
        let roles = [role("prefill", 1, 0.2, 1, 8), role("decode", 2, 4.0, 1, 16)];
        let d = decide_disaggregated("llama", &roles, Some((&c, band)), None, Some(1), 1000.0);
        assert_eq!(
            d.scale,
            [("prefill".to_string(), 2), ("decode".to_string(), 6)]
        );
        assert_eq!(cond(&d.status, RATIO_VIOLATED), ("False", "WithinBand"));
        let names: Vec<_> = d.status.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["llama/prefill", "llama/decode"]);
        // The prefill change came from the ratio, and still counts as a scale for cooldowns.
        assert!(d.states[0].1.last_scale_at_s.is_some());
        assert!(d.events[0].note.contains("ratio"), "{}", d.events[0].note);
    }

    #[test]
    fn unreachable_band_is_reported() {
        let c = constraint("4", "5");
        let band = ratio_band(&c).unwrap();
        // decode max 2 and prefill min 1: decode/prefill ≤ 2 < 4.
        let roles = [role("prefill", 1, 0.0, 1, 1), role("decode", 1, 0.0, 1, 2)];
        let d = decide_disaggregated("llama", &roles, Some((&c, band)), None, Some(1), 1000.0);
        assert_eq!(
            cond(&d.status, RATIO_VIOLATED),
            ("True", "BoundsExcludeBand")
        );
        assert!(ratio_band(&constraint("3", "1")).is_err());
        assert!(ratio_band(&constraint("x", "1"))
            .unwrap_err()
            .contains("minRatio"));
    }

    #[test]
    fn a_missing_role_is_a_condition() {
        let mut r = role("prefill", 1, 0.0, 1, 2);
        r.current = None;
        let d = decide_disaggregated("llama", &[r], None, None, Some(1), 1000.0);
        assert!(d.scale.is_empty());
        assert_eq!(cond(&d.status, "TargetFound"), ("False", "RoleNotFound"));
    }
}
