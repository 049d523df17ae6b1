//! Inputs of the accelerator-mix half of the solver benchmark: a seeded generator of cost
//! policies of any size (for solve time), Mélange-style scenarios on four GPU types (for cost
//! against the baselines), and a plan checker that verifies demand is met from the policy and
//! the plan alone, without calling the solver's own feasibility code.

use std::collections::BTreeMap;

use muster_solver::cost_policy::{AcceleratorType, ChurnPenalty, InstanceProfile, ModelProfile};
use muster_solver::program::Plan;
use muster_solver::{CostPolicy, CurrentFleet, Demand, ModelDemand};

/// Relative slack of the plan checker (floating-point sums of shares and loads).
const CHECK_EPS: f64 = 1e-6;

/// Dimensions of a generated planning problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProblemSize {
    /// Accelerator types.
    pub accelerators: usize,
    /// Models (each has a profile on every accelerator type).
    pub models: usize,
    /// Request-size buckets per model.
    pub buckets: usize,
}

/// One planning round: policy, demand and the fleet running now.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The cost policy.
    pub policy: CostPolicy,
    /// Demand per model and bucket.
    pub demand: Demand,
    /// Instances running now (so the churn terms are not all zero).
    pub current: CurrentFleet,
}

/// A cost policy of the given size with seeded random prices, capacities and caps, its demand
/// and a current fleet.
///
/// Shape of the numbers (synthetic, chosen so no single type dominates): accelerator `a` has a
/// relative speed `1…10`; its price grows slightly sublinearly with speed, so slow types are
/// cheaper per unit of compute; capacity grows with speed more steeply for longer buckets, so
/// fast types win on long requests (the Mélange observation). Large models need 2 or 4 GPUs
/// per instance on slow types and cannot serve the longest bucket on the slowest ones. Each
/// model's demand is 4–16 instances' worth on the middle type; the GPU caps total ≈ 640 GPUs,
/// split unevenly across types.
pub fn generate(size: ProblemSize, seed: u64) -> Instance {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut uniform = |lo: f64, hi: f64| lo + (hi - lo) * rng.f64();
    let tier = |a: usize| {
        if size.accelerators > 1 {
            a as f64 / (size.accelerators - 1) as f64
        } else {
            0.5
        }
    };
    let accelerators: Vec<AcceleratorType> = (0..size.accelerators)
        .map(|a| {
            let speed = 1.0 + 9.0 * tier(a);
            let cap = (uniform(0.5, 1.5) * 640.0 / size.accelerators as f64 / 8.0).ceil() as u32;
            AcceleratorType {
                name: format!("gpu-{a:02}"),
                price_per_hour: 0.5 * speed.powf(0.9) * uniform(0.85, 1.15),
                available_gpus: Some(8 * cap.max(1)),
                gpus_per_node: 8,
            }
        })
        .collect();
    let buckets: Vec<String> = (0..size.buckets).map(|b| format!("b{b}")).collect();
    let bucket_pos = |b: usize| {
        if size.buckets > 1 {
            b as f64 / (size.buckets - 1) as f64
        } else {
            0.0
        }
    };
    let mut models = Vec::new();
    let mut demand = Demand::new();
    let mut current = CurrentFleet::new();
    for m in 0..size.models {
        let name = format!("model-{m:02}");
        let large = uniform(0.0, 1.0) < 0.3;
        let base = uniform(2.0, 6.0) / if large { 4.0 } else { 1.0 };
        let capacity = |a: usize, gpus: u32, b: usize, jitter: f64| {
            let speed = 1.0 + 9.0 * tier(a);
            if large && b + 1 == size.buckets && size.buckets > 1 && tier(a) < 0.15 {
                return 0.0; // the longest context does not fit the slowest types' memory
            }
            base * speed.powf(0.7 + 0.6 * bucket_pos(b)) * f64::from(gpus).powf(0.8) * jitter
                / (1.0 + 2.0 * b as f64)
        };
        let mut profiles = Vec::new();
        for (a, accelerator) in accelerators.iter().enumerate() {
            let gpus = match (large, tier(a)) {
                (true, t) if t < 0.3 => 4,
                (true, t) if t < 0.6 => 2,
                _ => 1,
            };
            let caps: BTreeMap<String, f64> = buckets
                .iter()
                .enumerate()
                .map(|(b, name)| (name.clone(), capacity(a, gpus, b, uniform(0.8, 1.2))))
                .collect();
            profiles.push(InstanceProfile {
                accelerator: accelerator.name.clone(),
                gpus_per_instance: gpus,
                capacity: None,
                bucket_capacity: Some(caps),
                min_instances: 0,
                max_instances: None,
            });
            if uniform(0.0, 1.0) < 0.1 {
                let running = 1 + (uniform(0.0, 3.0) as u32).min(2);
                current.insert((name.clone(), accelerator.name.clone()), running);
            }
        }
        // Demand: `instances` worth of load on the middle accelerator type.
        let mid = size.accelerators / 2;
        let instances = uniform(4.0, 16.0);
        let weights: Vec<f64> = (0..size.buckets).map(|_| uniform(0.2, 1.0)).collect();
        let total_weight: f64 = weights.iter().sum();
        let mid_gpus = profiles[mid].gpus_per_instance;
        let per_bucket: BTreeMap<String, f64> = buckets
            .iter()
            .enumerate()
            .map(|(b, bucket)| {
                let cap_mid = capacity(mid, mid_gpus, b, 1.0);
                (
                    bucket.clone(),
                    instances * weights[b] / total_weight * cap_mid,
                )
            })
            .collect();
        demand.insert(name.clone(), ModelDemand::PerBucket(per_bucket));
        models.push(ModelProfile {
            name,
            buckets: buckets.clone(),
            profiles,
        });
    }
    let policy = CostPolicy {
        accelerators,
        models,
        headroom: 1.25,
        churn_penalty: ChurnPenalty {
            per_instance_started: 0.5,
            per_instance_stopped: 0.1,
        },
    };
    policy
        .validate()
        .expect("generated policies are valid by construction");
    Instance {
        policy,
        demand,
        current,
    }
}

/// One GPU type of the Mélange-style scenarios.
#[derive(Debug, Clone, Copy)]
pub struct GpuProfile {
    /// Name.
    pub name: &'static str,
    /// On-demand price per GPU-hour (USD).
    pub price_per_hour: f64,
    /// Requests/s one instance sustains within the TPOT SLO, per bucket (short, medium, long).
    pub capacity: [f64; 3],
}

/// Request-size buckets of the scenarios, shortest first.
pub const MELANGE_BUCKETS: [&str; 3] = ["short", "medium", "long"];

/// The four GPU types Mélange evaluates (L4, A10G, A100-80GB, H100), one GPU per instance of a
/// 7B-class model at a 120 ms TPOT SLO.
///
/// Sources and assumptions: the A100-80GB price (3.67 $/h) is the one in Mélange's released
/// example config (`melange/config/example.json`); L4 0.70, A10G 1.01 and H100 7.52 $/h are
/// illustrative on-demand list prices of the same period. The capacities are **illustrative
/// assumptions**, not measurements, shaped to reproduce the qualitative findings Mélange
/// reports (research/rust-and-autoscaling.md §6.4, Mélange blog): for short requests A10G gets
/// ≈ 72% more requests per dollar than A100 and the small GPUs are the most cost-efficient;
/// for long requests A100 gets ≈ 38% more per dollar than A10G and beats H100 per dollar at
/// the loose SLO; L4 is the cheapest and the weakest on long contexts.
pub const MELANGE_GPUS: [GpuProfile; 4] = [
    GpuProfile {
        name: "l4",
        price_per_hour: 0.70,
        capacity: [1.6, 0.5, 0.10],
    },
    GpuProfile {
        name: "a10g",
        price_per_hour: 1.01,
        capacity: [2.5, 0.85, 0.19],
    },
    GpuProfile {
        name: "a100-80gb",
        price_per_hour: 3.67,
        capacity: [5.3, 3.0, 0.95],
    },
    GpuProfile {
        name: "h100",
        price_per_hour: 7.52,
        capacity: [8.0, 5.5, 1.4],
    },
];

/// A Mélange-style workload: the share of requests in each bucket.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Workload {
    /// Name.
    pub name: &'static str,
    /// What it stands for.
    pub description: &'static str,
    /// Share of requests per bucket (short, medium, long), summing to 1.
    pub mix: [f64; 3],
}

/// Short-context chat (like Chatbot Arena) and long-context documents (like PubMed) mixes are
/// assumptions with the character of Mélange's datasets; "mixed" is Mélange's 80/20 blend of
/// the two.
pub fn melange_workloads() -> Vec<Workload> {
    let chat = [0.80, 0.18, 0.02];
    let document = [0.05, 0.25, 0.70];
    let blend = |i: usize| 0.8 * chat[i] + 0.2 * document[i];
    vec![
        Workload {
            name: "short-context chat",
            description: "Chatbot-Arena-like: mostly short prompts and answers",
            mix: chat,
        },
        Workload {
            name: "long-context document",
            description: "PubMed-like summarisation: mostly long prompts",
            mix: document,
        },
        Workload {
            name: "mixed (80/20)",
            description: "Mélange's mixed setting: 80% chat, 20% document",
            mix: [blend(0), blend(1), blend(2)],
        },
    ]
}

/// The policy and demand of one scenario: one model on the four GPU types, no caps, no churn
/// and headroom 1 (the capacities are already at the SLO), as in Mélange.
pub fn melange_instance(workload: &Workload, rate: f64) -> Instance {
    let model = "llama-7b".to_string();
    let policy = CostPolicy {
        accelerators: MELANGE_GPUS
            .iter()
            .map(|g| AcceleratorType {
                name: g.name.to_string(),
                price_per_hour: g.price_per_hour,
                available_gpus: None,
                gpus_per_node: 8,
            })
            .collect(),
        models: vec![ModelProfile {
            name: model.clone(),
            buckets: MELANGE_BUCKETS.iter().map(|b| b.to_string()).collect(),
            profiles: MELANGE_GPUS
                .iter()
                .map(|g| InstanceProfile {
                    accelerator: g.name.to_string(),
                    gpus_per_instance: 1,
                    capacity: None,
                    bucket_capacity: Some(
                        MELANGE_BUCKETS
                            .iter()
                            .zip(g.capacity)
                            .map(|(b, c)| (b.to_string(), c))
                            .collect(),
                    ),
                    min_instances: 0,
                    max_instances: None,
                })
                .collect(),
        }],
        headroom: 1.0,
        churn_penalty: ChurnPenalty::default(),
    };
    policy.validate().expect("scenario policy is valid");
    let per_bucket = MELANGE_BUCKETS
        .iter()
        .zip(workload.mix)
        .map(|(b, share)| (b.to_string(), rate * share))
        .collect();
    Instance {
        policy,
        demand: Demand::from([(model, ModelDemand::PerBucket(per_bucket))]),
        current: CurrentFleet::new(),
    }
}

/// Share of a (model, bucket)'s demand sent to an accelerator type.
pub type Routing = BTreeMap<(String, String, String), f64>;

/// The solver's own routing of a plan, as a [`Routing`].
pub fn routing_of(plan: &Plan) -> Routing {
    plan.routes
        .iter()
        .map(|r| {
            (
                (r.model.clone(), r.bucket.clone(), r.accelerator.clone()),
                r.share,
            )
        })
        .collect()
}

fn bucket_names(model: &ModelProfile) -> Vec<String> {
    if model.buckets.is_empty() {
        vec!["total".into()]
    } else {
        model.buckets.clone()
    }
}

fn demand_of(demand: &Demand, model: &ModelProfile) -> Vec<f64> {
    match demand.get(&model.name) {
        None => vec![0.0; bucket_names(model).len()],
        Some(ModelDemand::Total(r)) => vec![*r],
        Some(ModelDemand::PerBucket(per)) => model
            .buckets
            .iter()
            .map(|b| per.get(b).copied().unwrap_or(0.0))
            .collect(),
    }
}

fn capacity_of(profile: &InstanceProfile, buckets: &[String]) -> Vec<f64> {
    match (&profile.bucket_capacity, profile.capacity) {
        (Some(per), _) => buckets.iter().map(|b| per[b]).collect(),
        (None, Some(c)) => vec![c],
        (None, None) => vec![0.0],
    }
}

/// Routing for plans that carry none (the baselines): every instance of a model takes the same
/// share of every bucket in proportion to what it can serve of the mix, which is how both
/// baselines size their plans.
pub fn proportional_routing(instance: &Instance, plan: &Plan) -> Routing {
    let mut routing = Routing::new();
    for model in &instance.policy.models {
        let buckets = bucket_names(model);
        let demand: Vec<f64> = demand_of(&instance.demand, model)
            .iter()
            .map(|d| d * instance.policy.headroom)
            .collect();
        let total: f64 = demand.iter().sum();
        if total <= 0.0 {
            continue;
        }
        // Instances one unit of the mix needs on this profile (∞ when a bucket is unservable).
        let weights: Vec<(String, f64)> = model
            .profiles
            .iter()
            .map(|p| {
                let cap = capacity_of(p, &buckets);
                let per_unit: f64 = demand
                    .iter()
                    .zip(&cap)
                    .filter(|(d, _)| **d > 0.0)
                    .map(|(d, c)| d / total / c)
                    .sum();
                let n = f64::from(plan.instances(&model.name, &p.accelerator));
                let weight = if per_unit.is_finite() && per_unit > 0.0 {
                    n / per_unit
                } else {
                    0.0
                };
                (p.accelerator.clone(), weight)
            })
            .collect();
        let sum: f64 = weights.iter().map(|(_, w)| w).sum();
        if sum <= 0.0 {
            continue;
        }
        for (b, bucket) in buckets.iter().enumerate() {
            if demand[b] <= 0.0 {
                continue;
            }
            for (accelerator, w) in &weights {
                if *w > 0.0 {
                    routing.insert(
                        (model.name.clone(), bucket.clone(), accelerator.clone()),
                        w / sum,
                    );
                }
            }
        }
    }
    routing
}

/// Checks that `plan` with `routing` serves the demand: every (model, bucket) with demand is
/// fully routed to profiles that can serve it, no instance is loaded above its capacity at the
/// SLO (demand × headroom), instance bounds hold and no accelerator's GPU cap is exceeded.
/// Reads only the policy and the plan; returns the first violation in words.
pub fn check_plan(instance: &Instance, plan: &Plan, routing: &Routing) -> Result<(), String> {
    let policy = &instance.policy;
    let mut gpus_used: BTreeMap<&str, u64> = BTreeMap::new();
    for model in &policy.models {
        let buckets = bucket_names(model);
        let demand: Vec<f64> = demand_of(&instance.demand, model)
            .iter()
            .map(|d| d * policy.headroom)
            .collect();
        for (b, bucket) in buckets.iter().enumerate() {
            if demand[b] <= 0.0 {
                continue;
            }
            let routed: f64 = model
                .profiles
                .iter()
                .map(|p| {
                    routing
                        .get(&(model.name.clone(), bucket.clone(), p.accelerator.clone()))
                        .copied()
                        .unwrap_or(0.0)
                })
                .sum();
            if (routed - 1.0).abs() > CHECK_EPS {
                return Err(format!(
                    "{}/{bucket}: {:.4} of the demand is routed, not all of it",
                    model.name, routed
                ));
            }
        }
        for p in &model.profiles {
            let n = plan.instances(&model.name, &p.accelerator);
            if n < p.min_instances || p.max_instances.is_some_and(|max| n > max) {
                return Err(format!(
                    "{}/{}: {n} instances outside the profile bounds",
                    model.name, p.accelerator
                ));
            }
            *gpus_used.entry(p.accelerator.as_str()).or_default() +=
                u64::from(n) * u64::from(p.gpus_per_instance);
            let cap = capacity_of(p, &buckets);
            let mut load = 0.0; // instances' worth of work routed here
            for (b, bucket) in buckets.iter().enumerate() {
                let share = routing
                    .get(&(model.name.clone(), bucket.clone(), p.accelerator.clone()))
                    .copied()
                    .unwrap_or(0.0);
                if share < -CHECK_EPS {
                    return Err(format!("{}/{bucket}: negative share {share}", model.name));
                }
                if share > CHECK_EPS && demand[b] > 0.0 {
                    if cap[b] <= 0.0 {
                        return Err(format!(
                            "{}/{bucket}: routed to {}, which cannot serve it",
                            model.name, p.accelerator
                        ));
                    }
                    load += demand[b] * share / cap[b];
                }
            }
            if load > f64::from(n) * (1.0 + CHECK_EPS) + CHECK_EPS {
                return Err(format!(
                    "{}/{}: routed load needs {load:.3} instances, plan has {n}",
                    model.name, p.accelerator
                ));
            }
        }
    }
    for a in &policy.accelerators {
        let used = gpus_used.get(a.name.as_str()).copied().unwrap_or(0);
        if let Some(cap) = a.available_gpus {
            if used > u64::from(cap) {
                return Err(format!("{}: {used} GPUs used, {cap} available", a.name));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_solver::{plan_fleet, Problem};

    #[test]
    fn generated_problems_are_seeded_and_solvable() {
        let size = ProblemSize {
            accelerators: 4,
            models: 3,
            buckets: 3,
        };
        let a = generate(size, 7);
        let b = generate(size, 7);
        assert_eq!(a.policy, b.policy);
        assert_eq!(a.demand, b.demand);
        assert_ne!(generate(size, 8).policy, a.policy);
        let problem = Problem::new(&a.policy, &a.demand, &a.current).unwrap();
        assert_eq!(problem.targets.len(), 12);
        let plan = plan_fleet(&a.policy, &a.demand, &a.current).unwrap();
        check_plan(&a, &plan, &routing_of(&plan)).unwrap();
    }

    #[test]
    fn checker_rejects_an_under_provisioned_plan() {
        let instance = melange_instance(&melange_workloads()[0], 10.0);
        let plan = plan_fleet(&instance.policy, &instance.demand, &instance.current).unwrap();
        check_plan(&instance, &plan, &routing_of(&plan)).unwrap();
        let mut short = plan.clone();
        let busiest = short
            .entries
            .iter_mut()
            .max_by_key(|e| e.instances)
            .unwrap();
        busiest.instances = 0;
        let err = check_plan(&instance, &short, &routing_of(&plan)).unwrap_err();
        assert!(err.contains("instances, plan has"), "{err}");
        // A routing that leaves part of a bucket unserved is caught too.
        let mut partial = routing_of(&plan);
        let key = partial.keys().next().unwrap().clone();
        *partial.get_mut(&key).unwrap() *= 0.5;
        assert!(check_plan(&instance, &plan, &partial)
            .unwrap_err()
            .contains("routed"));
    }
}
