//! The pure core of heterogeneous policies: one model on several ModelServings (one per
//! accelerator type), replicas split by cost with `muster_solver`'s integer program.
//!
//! Demand is the fleet-wide total of the policy's first metric (summed over every target's
//! pods), in the unit the cost policy's capacities use. Without a cost policy ConfigMap each
//! target becomes its own accelerator type priced at `cost` with capacity `targetValue` per
//! instance. The policy's `minReplicas`/`maxReplicas` override the cost policy's instance
//! bounds: the CR is what the user edits to pin a target.

use muster_api::autoscaling::{AutoscalingPolicyStatus, HeterogeneousTarget, TargetScalingStatus};
use muster_solver::cost_policy::{AcceleratorType, InstanceProfile, ModelProfile};
use muster_solver::program::{plan_or_keep_last, Plan, PlanEntry};
use muster_solver::{CostPolicy, CurrentFleet, Demand, ModelDemand};

use super::decide::{condition, conditions, time_at, time_s, PolicyEvent};

/// Condition type set when the program is infeasible and the last feasible plan is kept.
pub const INFEASIBLE: &str = "Infeasible";

/// The program's input for one policy: the cost policy reduced to this policy's model and
/// targets, and the accelerator type of each target in `params` order.
#[derive(Debug, Clone, PartialEq)]
pub struct HeteroModel {
    /// Cost policy with one model whose profiles are the targets.
    pub policy: CostPolicy,
    /// Accelerator type per target.
    pub accelerators: Vec<String>,
}

/// Builds the program's input from the policy and, when given, the cost policy YAML.
pub fn hetero_model(
    target: &HeterogeneousTarget,
    per_instance: f64,
    cost_policy_yaml: Option<&str>,
) -> Result<HeteroModel, String> {
    let Some(yaml) = cost_policy_yaml else {
        // Each ModelServing is its own "accelerator type" priced at its `cost`.
        let accelerators: Vec<String> = target
            .params
            .iter()
            .map(|p| p.target.target_ref.name.clone())
            .collect();
        let policy = CostPolicy {
            accelerators: target
                .params
                .iter()
                .map(|p| AcceleratorType {
                    name: p.target.target_ref.name.clone(),
                    price_per_hour: f64::from(p.cost.max(0)),
                    available_gpus: None,
                    gpus_per_node: 1,
                })
                .collect(),
            models: vec![ModelProfile {
                name: "model".into(),
                buckets: Vec::new(),
                profiles: target
                    .params
                    .iter()
                    .map(|p| {
                        profile(
                            &p.target.target_ref.name,
                            1,
                            per_instance,
                            p.min_replicas,
                            p.max_replicas,
                        )
                    })
                    .collect(),
            }],
            headroom: 1.0,
            churn_penalty: Default::default(),
        };
        policy.validate().map_err(|e| e.to_string())?;
        return Ok(HeteroModel {
            policy,
            accelerators,
        });
    };
    let full = CostPolicy::from_yaml(yaml).map_err(|e| format!("cost policy: {e}"))?;
    let mut accelerators = Vec::new();
    for p in &target.params {
        accelerators.push(p.accelerator.clone().ok_or_else(|| {
            format!(
                "params[{}].accelerator is required with a cost policy",
                p.target.target_ref.name
            )
        })?);
    }
    let model = full
        .models
        .iter()
        .find(|m| {
            m.buckets.is_empty()
                && accelerators
                    .iter()
                    .all(|a| m.profiles.iter().any(|p| &p.accelerator == a))
        })
        .ok_or_else(|| {
            format!("cost policy: no unbucketed model has a profile on every accelerator of {accelerators:?}")
        })?;
    let profiles = target
        .params
        .iter()
        .zip(&accelerators)
        .map(|(p, a)| {
            let base = model
                .profiles
                .iter()
                .find(|x| &x.accelerator == a)
                .expect("checked above");
            InstanceProfile {
                min_instances: p.min_replicas.max(0) as u32,
                max_instances: Some(p.max_replicas.max(0) as u32),
                ..base.clone()
            }
        })
        .collect();
    let policy = CostPolicy {
        models: vec![ModelProfile {
            profiles,
            ..model.clone()
        }],
        ..full
    };
    policy.validate().map_err(|e| format!("cost policy: {e}"))?;
    if accelerators
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        != accelerators.len()
    {
        return Err("two targets name the same accelerator".into());
    }
    Ok(HeteroModel {
        policy,
        accelerators,
    })
}

fn profile(accelerator: &str, gpus: u32, capacity: f64, min: i32, max: i32) -> InstanceProfile {
    InstanceProfile {
        accelerator: accelerator.into(),
        gpus_per_instance: gpus,
        capacity: Some(capacity),
        bucket_capacity: None,
        min_instances: min.max(0) as u32,
        max_instances: Some(max.max(0) as u32),
    }
}

/// One target as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct HeteroTargetState {
    /// ModelServing name.
    pub name: String,
    /// `spec.replicas`.
    pub current: i32,
}

/// What one tick of a heterogeneous policy decided.
#[derive(Debug, Clone, PartialEq)]
pub struct HeteroDecision {
    /// (ModelServing, replicas) to set through the scale subresource.
    pub scale: Vec<(String, i32)>,
    /// New status.
    pub status: AutoscalingPolicyStatus,
    /// Events to record.
    pub events: Vec<PolicyEvent>,
}

/// One tick: plan the cheapest mix for `demand` (`None`: no metrics, hold), keep the last
/// feasible plan (the previous status' desired counts) when the program is infeasible, and
/// hold scale-downs of a target changed less than `scale_down_cooldown_s` ago.
#[allow(clippy::too_many_arguments)]
pub fn decide_heterogeneous(
    model: &HeteroModel,
    targets: &[HeteroTargetState],
    demand: Option<f64>,
    demand_note: &str,
    scale_down_cooldown_s: f64,
    previous: Option<&AutoscalingPolicyStatus>,
    generation: Option<i64>,
    now_s: f64,
) -> HeteroDecision {
    let cond = |t: &str, ok: bool, reason: &str, msg: String| {
        condition(previous, generation, now_s, t, ok, reason, msg)
    };
    let model_name = model.policy.models[0].name.clone();
    let prev_target = |name: &str| previous.and_then(|p| p.targets.iter().find(|t| t.name == name));
    let current: CurrentFleet = targets
        .iter()
        .zip(&model.accelerators)
        .map(|(t, a)| ((model_name.clone(), a.clone()), t.current.max(0) as u32))
        .collect();
    let last_feasible = previous.filter(|p| !p.targets.is_empty()).map(|p| Plan {
        entries: targets
            .iter()
            .zip(&model.accelerators)
            .map(|(t, a)| PlanEntry {
                model: model_name.clone(),
                accelerator: a.clone(),
                instances: p
                    .targets
                    .iter()
                    .find(|s| s.name == t.name)
                    .map_or(t.current, |s| s.desired_replicas)
                    .max(0) as u32,
                gpus: 0,
                cost_per_hour: 0.0,
            })
            .collect(),
        cost_per_hour: 0.0,
        started: 0,
        stopped: 0,
        proven_optimal: false,
        lower_bound: None,
        routes: Vec::new(),
    });

    let mut conds = Vec::new();
    let mut desired: Vec<i32> = targets.iter().map(|t| t.current).collect();
    let mut plan_note = String::new();
    match demand {
        None => {
            conds.push(cond(
                conditions::READY,
                false,
                "MetricsMissing",
                format!("holding: {demand_note}"),
            ));
            conds.push(cond(
                conditions::METRICS_AVAILABLE,
                false,
                "MetricsMissing",
                demand_note.into(),
            ));
            conds.push(cond(
                INFEASIBLE,
                false,
                "NotEvaluated",
                "no demand this tick".into(),
            ));
        }
        Some(d) => {
            conds.push(cond(
                conditions::METRICS_AVAILABLE,
                true,
                "Scraped",
                demand_note.into(),
            ));
            let demand: Demand = [(model_name.clone(), ModelDemand::Total(d.max(0.0)))].into();
            match plan_or_keep_last(&model.policy, &demand, &current, last_feasible.as_ref()) {
                Ok(decision) => {
                    for (i, a) in model.accelerators.iter().enumerate() {
                        desired[i] = decision.plan.instances(&model_name, a) as i32;
                    }
                    plan_note = format!(
                        "demand {d:.2}: plan costs {:.2}/h",
                        decision.plan.cost_per_hour
                    );
                    match decision.fallback_reason {
                        Some(why) => {
                            conds.push(cond(
                                conditions::READY,
                                true,
                                "KeptLastPlan",
                                format!("keeping the last feasible plan: {why}"),
                            ));
                            conds.push(cond(INFEASIBLE, true, "Infeasible", why));
                        }
                        None => {
                            conds.push(cond(conditions::READY, true, "Planned", plan_note.clone()));
                            conds.push(cond(INFEASIBLE, false, "Feasible", plan_note.clone()));
                        }
                    }
                }
                Err(e) => {
                    conds.push(cond(
                        conditions::READY,
                        false,
                        "Infeasible",
                        format!("holding: {e}"),
                    ));
                    conds.push(cond(INFEASIBLE, true, "Infeasible", e.to_string()));
                }
            }
        }
    }

    let mut scale = Vec::new();
    let mut events = Vec::new();
    let mut statuses = Vec::new();
    for (t, want) in targets.iter().zip(desired) {
        let prev = prev_target(&t.name);
        let last = prev.and_then(|p| p.last_scale_time.as_ref()).map(time_s);
        let mut want = want;
        if want < t.current && last.is_some_and(|l| now_s - l < scale_down_cooldown_s) {
            // Scale-down cooldown: a demand dip must outlast it before capacity goes.
            want = t.current;
        }
        let changed = want != t.current;
        if changed {
            scale.push((t.name.clone(), want));
            events.push(PolicyEvent {
                warning: false,
                reason: if want > t.current {
                    "ScaledUp"
                } else {
                    "ScaledDown"
                }
                .into(),
                note: format!(
                    "ModelServing {}: {} → {want} ServingGroups ({plan_note})",
                    t.name, t.current
                ),
            });
        }
        statuses.push(TargetScalingStatus {
            name: t.name.clone(),
            current_replicas: t.current,
            desired_replicas: want,
            mode: Some("Stable".into()),
            last_scale_time: if changed {
                Some(time_at(now_s))
            } else {
                prev.and_then(|p| p.last_scale_time.clone())
            },
            panic_until: None,
        });
    }
    conds.push(cond(
        conditions::TARGET_FOUND,
        true,
        "Found",
        format!("{} ModelServings", targets.len()),
    ));
    HeteroDecision {
        scale,
        status: AutoscalingPolicyStatus {
            observed_generation: generation,
            conditions: conds,
            targets: statuses,
        },
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target() -> HeterogeneousTarget {
        serde_json::from_value(json!({
            "params": [
                {"target": {"targetRef": {"name": "dear"}}, "accelerator": "h100", "cost": 3, "minReplicas": 0, "maxReplicas": 4},
                {"target": {"targetRef": {"name": "cheap"}}, "accelerator": "l4", "cost": 1, "minReplicas": 1, "maxReplicas": 2}
            ]
        }))
        .unwrap()
    }

    const YAML: &str = r#"
headroom: 1.0
accelerators:
  - { name: l4, pricePerHour: 1.0, gpusPerNode: 8 }
  - { name: h100, pricePerHour: 3.0, gpusPerNode: 8, availableGpus: 3 }
models:
  - name: m
    profiles:
      - { accelerator: l4, gpusPerInstance: 1, capacity: 4.0, maxInstances: 100 }
      - { accelerator: h100, gpusPerInstance: 1, capacity: 4.0 }
"#;

    fn states(dear: i32, cheap: i32) -> Vec<HeteroTargetState> {
        vec![
            HeteroTargetState {
                name: "dear".into(),
                current: dear,
            },
            HeteroTargetState {
                name: "cheap".into(),
                current: cheap,
            },
        ]
    }

    fn desired(s: &AutoscalingPolicyStatus) -> Vec<i32> {
        s.targets.iter().map(|t| t.desired_replicas).collect()
    }

    fn cond<'a>(s: &'a AutoscalingPolicyStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn fills_the_cheap_target_first_within_the_policy_bounds() {
        let m = hetero_model(&target(), 4.0, Some(YAML)).unwrap();
        // The CR's maxReplicas (2) overrides the cost policy's maxInstances (100).
        assert_eq!(m.policy.models[0].profiles[1].max_instances, Some(2));
        let d = decide_heterogeneous(
            &m,
            &states(0, 1),
            Some(14.0),
            "ok",
            60.0,
            None,
            Some(1),
            1000.0,
        );
        assert_eq!(
            desired(&d.status),
            [2, 2],
            "cheap at its max, the rest on h100"
        );
        assert_eq!(d.scale, [("dear".to_string(), 2), ("cheap".to_string(), 2)]);
        assert_eq!(cond(&d.status, INFEASIBLE), ("False", "Feasible"));
        assert_eq!(d.events.len(), 2);
        assert_eq!(
            d.status.targets[0].last_scale_time.as_ref().map(time_s),
            Some(1000.0)
        );

        // Idle: back to the minimums once the cooldown has passed, not before.
        let early = decide_heterogeneous(
            &m,
            &states(2, 2),
            Some(0.0),
            "ok",
            60.0,
            Some(&d.status),
            Some(1),
            1030.0,
        );
        assert!(early.scale.is_empty(), "{:?}", early.scale);
        let late = decide_heterogeneous(
            &m,
            &states(2, 2),
            Some(0.0),
            "ok",
            60.0,
            Some(&d.status),
            Some(1),
            1061.0,
        );
        assert_eq!(desired(&late.status), [0, 1]);
    }

    #[test]
    fn infeasible_keeps_the_last_plan_and_says_so() {
        let m = hetero_model(&target(), 4.0, Some(YAML)).unwrap();
        let first = decide_heterogeneous(
            &m,
            &states(0, 1),
            Some(14.0),
            "ok",
            60.0,
            None,
            Some(1),
            1000.0,
        );
        // 100 needs far more than 2 l4 + 3 h100 instances can give.
        let d = decide_heterogeneous(
            &m,
            &states(2, 2),
            Some(100.0),
            "ok",
            60.0,
            Some(&first.status),
            Some(1),
            1010.0,
        );
        assert!(d.scale.is_empty());
        assert_eq!(desired(&d.status), [2, 2]);
        assert_eq!(cond(&d.status, INFEASIBLE).0, "True");
        assert_eq!(cond(&d.status, "Ready"), ("True", "KeptLastPlan"));
        // Without a previous plan it holds and reports not Ready.
        let d = decide_heterogeneous(
            &m,
            &states(0, 1),
            Some(100.0),
            "ok",
            60.0,
            None,
            Some(1),
            1010.0,
        );
        assert!(d.scale.is_empty());
        assert_eq!(cond(&d.status, "Ready"), ("False", "Infeasible"));
    }

    #[test]
    fn without_a_cost_policy_cost_and_target_value_decide() {
        let m = hetero_model(&target(), 4.0, None).unwrap();
        let d = decide_heterogeneous(
            &m,
            &states(0, 1),
            Some(6.0),
            "ok",
            60.0,
            None,
            Some(1),
            1000.0,
        );
        assert_eq!(desired(&d.status), [0, 2]);
        let d = decide_heterogeneous(
            &m,
            &states(0, 1),
            None,
            "no pod answered",
            60.0,
            None,
            Some(1),
            1000.0,
        );
        assert!(d.scale.is_empty());
        assert_eq!(cond(&d.status, "Ready"), ("False", "MetricsMissing"));
    }

    #[test]
    fn bad_cost_policies_are_named() {
        let e = hetero_model(
            &target(),
            4.0,
            Some("accelerators: []\nmodels: []\nbogus: 1\n"),
        )
        .unwrap_err();
        assert!(e.starts_with("cost policy:"), "{e}");
        let mut t = target();
        t.params[0].accelerator = Some("tpu".into());
        let e = hetero_model(&t, 4.0, Some(YAML)).unwrap_err();
        assert!(e.contains("no unbucketed model"), "{e}");
    }
}
