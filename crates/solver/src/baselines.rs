//! Baselines the integer program is benchmarked against: the best single accelerator type and a
//! Kthena-style greedy cost-ordered fill. Both only return plans that serve the demand.

use thiserror::Error;

use crate::problem::Problem;
use crate::program::{counts_feasible, Plan};

/// A baseline found no plan.
#[derive(Debug, Error, PartialEq)]
pub enum BaselineError {
    /// No single accelerator type can serve every model's demand within its availability.
    #[error("no single accelerator type can serve all demand")]
    NoSingleType,
    /// The greedy fill ran out of instances before serving a model.
    #[error("greedy fill cannot serve model {0:?} within the available instances")]
    Unserved(String),
}

/// Capacity one instance of `target` offers for its model's demand mix, assuming every instance
/// serves the mix in proportion (0 when it cannot serve some bucket that has demand).
fn mix_capacity(problem: &Problem, target: usize) -> f64 {
    let t = &problem.targets[target];
    let required = &problem.required[t.model];
    let total: f64 = required.iter().sum();
    let mut instances_per_unit = 0.0;
    for (&req, &cap) in required.iter().zip(&t.capacity) {
        if req > 0.0 {
            if cap <= 0.0 {
                return 0.0;
            }
            instances_per_unit += req / total / cap;
        }
    }
    if instances_per_unit == 0.0 {
        f64::INFINITY
    } else {
        1.0 / instances_per_unit
    }
}

/// The cheapest plan that runs every model on one accelerator type (the others stay at their
/// `minInstances`, whose capacity is not counted). Returns the type's name and the plan.
pub fn best_single_accelerator(problem: &Problem) -> Result<(String, Plan), BaselineError> {
    let mut best: Option<(String, Plan)> = None;
    for (a, name) in problem.accelerators.iter().enumerate() {
        let mut counts: Vec<u32> = problem.targets.iter().map(|t| t.min).collect();
        let mut possible = true;
        for m in 0..problem.models.len() {
            let required: f64 = problem.required[m].iter().sum();
            let on_a = problem
                .targets_of(m)
                .find(|&t| problem.targets[t].accelerator == a);
            match on_a {
                Some(t) => {
                    let cap = mix_capacity(problem, t);
                    if required > 0.0 && cap == 0.0 {
                        possible = false;
                        break;
                    }
                    let needed = if required > 0.0 {
                        (required / cap - 1e-9).ceil() as u32
                    } else {
                        0
                    };
                    counts[t] = counts[t].max(needed);
                }
                None if required > 0.0 => {
                    possible = false;
                    break;
                }
                None => {}
            }
        }
        if !possible || !counts_feasible(problem, &counts) {
            continue;
        }
        let plan = Plan::from_counts(problem, &counts);
        if best
            .as_ref()
            .is_none_or(|(_, b)| plan.cost_per_hour < b.cost_per_hour)
        {
            best = Some((name.clone(), plan));
        }
    }
    best.ok_or(BaselineError::NoSingleType)
}

/// Kthena's heterogeneous "optimizer" with the capacity model added: each target's spare range
/// (max − min) is cut into blocks of 1, 2, 4, … instances, blocks are sorted by block price
/// (ties by policy order) and filled, one instance at a time, until the model's demand is
/// served. Models are filled in policy order and share availability caps. Kthena itself stops at
/// a replica count from its metric instead of at the demand; this keeps its cost ordering.
pub fn greedy_cost_ordered_fill(problem: &Problem) -> Result<Plan, BaselineError> {
    let mut counts: Vec<u32> = problem.targets.iter().map(|t| t.min).collect();
    for m in 0..problem.models.len() {
        let required: f64 = problem.required[m].iter().sum();
        let served = |counts: &[u32]| -> f64 {
            problem
                .targets_of(m)
                .map(|t| f64::from(counts[t]) * mix_capacity(problem, t))
                .sum()
        };
        if required == 0.0 || served(&counts) >= required {
            continue;
        }
        let mut blocks = Vec::new();
        for t in problem.targets_of(m) {
            let cap = mix_capacity(problem, t);
            if cap == 0.0 {
                continue;
            }
            let target = &problem.targets[t];
            // Never more blocks than this target alone would need.
            let alone = (required / cap).ceil() as u32;
            let spare = (target.max - target.min).min(alone);
            let (mut size, mut cut) = (1u32, 0u32);
            while cut < spare {
                let len = size.min(spare - cut);
                blocks.push((target.price * f64::from(len), t, len));
                cut += len;
                size = size.saturating_mul(2);
            }
        }
        blocks.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        'fill: for (_, t, len) in blocks {
            for _ in 0..len {
                if served(&counts) >= required {
                    break 'fill;
                }
                let target = &problem.targets[t];
                let used = problem.gpus_used(&counts)[target.accelerator];
                let fits = problem.available_gpus[target.accelerator]
                    .is_none_or(|cap| used + u64::from(target.gpus) <= u64::from(cap));
                if !fits {
                    continue 'fill;
                }
                counts[t] += 1;
            }
        }
        if served(&counts) < required * (1.0 - 1e-9) {
            return Err(BaselineError::Unserved(problem.models[m].clone()));
        }
    }
    Ok(Plan::from_counts(problem, &counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::solve;
    use crate::{CostPolicy, CurrentFleet, Demand, ModelDemand};
    use std::collections::BTreeMap;

    /// Mélange-style: a cheap GPU that is good at short requests and bad at long ones, and an
    /// expensive GPU that is good at both.
    fn melange_problem(short: f64, long: f64) -> Problem {
        let policy = CostPolicy::from_yaml(
            r#"
headroom: 1.0
accelerators:
  - { name: l4, pricePerHour: 1.0, gpusPerNode: 8 }
  - { name: h100, pricePerHour: 4.0, gpusPerNode: 8 }
models:
  - name: m
    buckets: [short, long]
    profiles:
      - { accelerator: l4, gpusPerInstance: 1, bucketCapacity: { short: 10, long: 0.5 } }
      - { accelerator: h100, gpusPerInstance: 1, bucketCapacity: { short: 20, long: 4 } }
"#,
        )
        .unwrap();
        let demand: Demand = BTreeMap::from([(
            "m".to_string(),
            ModelDemand::PerBucket(BTreeMap::from([
                ("short".into(), short),
                ("long".into(), long),
            ])),
        )]);
        Problem::new(&policy, &demand, &CurrentFleet::new()).unwrap()
    }

    #[test]
    fn integer_program_beats_both_baselines_on_a_mixed_workload() {
        let p = melange_problem(40.0, 4.0);
        let optimal = solve(&p).unwrap();
        let (single_type, single) = best_single_accelerator(&p).unwrap();
        let greedy = greedy_cost_ordered_fill(&p).unwrap();
        // IP: 4 L4 (short) + 1 H100 (long) = 8 $/h.
        assert_eq!(optimal.cost_per_hour, 8.0);
        // Best single type: H100 needs 40/20 + 4/4 = 3 instances = 12 $/h (L4 needs 12 = 12 $/h;
        // ties keep the first type, L4).
        assert_eq!(single.cost_per_hour, 12.0, "{single_type}: {single:?}");
        assert!(greedy.cost_per_hour > optimal.cost_per_hour, "{greedy:?}");
        for plan in [&single, &greedy] {
            assert!(
                counts_feasible(&p, &plan.counts()),
                "baseline plan must serve demand: {plan:?}"
            );
        }
    }

    #[test]
    fn greedy_fills_cheapest_blocks_first() {
        // Only short requests: both types serve them; L4 is cheaper per request.
        let p = melange_problem(25.0, 0.0);
        let greedy = greedy_cost_ordered_fill(&p).unwrap();
        assert_eq!(greedy.counts(), vec![3, 0]);
    }

    #[test]
    fn single_type_fails_when_no_type_serves_everything() {
        let policy = CostPolicy::from_yaml(
            r#"
accelerators:
  - { name: a, pricePerHour: 1.0, gpusPerNode: 8 }
  - { name: b, pricePerHour: 1.0, gpusPerNode: 8 }
models:
  - name: x
    profiles: [ { accelerator: a, gpusPerInstance: 1, capacity: 1 } ]
  - name: y
    profiles: [ { accelerator: b, gpusPerInstance: 1, capacity: 1 } ]
"#,
        )
        .unwrap();
        let demand: Demand = BTreeMap::from([
            ("x".to_string(), ModelDemand::Total(1.0)),
            ("y".to_string(), ModelDemand::Total(1.0)),
        ]);
        let p = Problem::new(&policy, &demand, &CurrentFleet::new()).unwrap();
        assert_eq!(
            best_single_accelerator(&p),
            Err(BaselineError::NoSingleType)
        );
        assert!(solve(&p).is_ok());
    }
}
