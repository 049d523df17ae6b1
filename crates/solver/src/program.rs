//! The cost-optimal accelerator mix as a mixed-integer program (good_lp, microlp backend).
//!
//! Variables: `n_t ∈ ℤ` instances per target (model × accelerator); `s_{b,t} ∈ [0,1]` share of
//! bucket `b`'s demand served by target `t` (continuous, so a bucket may be split across
//! accelerators as in Mélange); `d_t ≥ 0` instances stopped, for targets running instances now
//! (instances started are `n_t − n⁰_t + d_t`, folded into the objective). See `README.md` for
//! the full formulation and the solve steps: LP relaxation, rounding, per-model
//! re-optimisation, then branch and bound on what is left of the time limit.

use good_lp::{
    microlp, variable, Expression, ProblemVariables, ResolutionError, Solution, SolutionStatus,
    SolverModel, Variable, WithInitialSolution, WithMipGap, WithTimeLimit,
};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cost_policy::CostPolicy;
use crate::problem::{CurrentFleet, Demand, DemandError, Problem};

/// Cheapest targets per unit of demand each model may add in [`improve_per_model`].
const NEIGHBOURHOOD_CHEAPEST: usize = 4;
/// Slack for floating-point comparisons when checking a solver answer.
const EPS: f64 = 1e-6;
/// Stand-in upper bound for uncapped targets, so diagnostics stay finite.
const UNCAPPED: u32 = 1_000_000;

/// Instances of one model on one accelerator type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanEntry {
    /// Model name.
    pub model: String,
    /// Accelerator type name.
    pub accelerator: String,
    /// Whole instances to run.
    pub instances: u32,
    /// GPUs those instances occupy.
    pub gpus: u32,
    /// Hourly price of those instances.
    pub cost_per_hour: f64,
}

/// A fleet plan: instance counts for every (model, accelerator) profile in policy order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// One entry per profile, including zero counts, in policy order.
    pub entries: Vec<PlanEntry>,
    /// Total hourly price of the fleet.
    pub cost_per_hour: f64,
    /// Instances started relative to the current fleet.
    pub started: u32,
    /// Instances stopped relative to the current fleet.
    pub stopped: u32,
    /// True when the solver proved this plan optimal; false for baselines and for the best
    /// plan found when the time limit cut the search short.
    pub proven_optimal: bool,
    /// A bound no plan can beat on the objective (hourly price + churn): the LP relaxation's
    /// objective, raised to the best bound branch and bound proved when that is higher. So
    /// `objective − lowerBound` bounds how far a time-limited plan is from optimal. `None` for
    /// baselines.
    pub lower_bound: Option<f64>,
    /// How to route each bucket's demand across accelerators (shares sum to 1 per bucket with
    /// demand); filled by the solver, empty for baselines.
    pub routes: Vec<BucketRoute>,
}

/// Share of one bucket of one model to send to one accelerator type's instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketRoute {
    /// Model name.
    pub model: String,
    /// Bucket name (`total` for models without buckets).
    pub bucket: String,
    /// Accelerator type name.
    pub accelerator: String,
    /// Fraction of the bucket's demand, in (0, 1].
    pub share: f64,
}

impl Plan {
    /// Builds a plan from counts in target order.
    pub fn from_counts(problem: &Problem, counts: &[u32]) -> Self {
        let entries = problem
            .targets
            .iter()
            .zip(counts)
            .map(|(t, &n)| PlanEntry {
                model: problem.models[t.model].clone(),
                accelerator: problem.accelerators[t.accelerator].clone(),
                instances: n,
                gpus: n * t.gpus,
                cost_per_hour: t.price * f64::from(n),
            })
            .collect::<Vec<_>>();
        Plan {
            cost_per_hour: entries.iter().map(|e| e.cost_per_hour).sum(),
            started: problem
                .targets
                .iter()
                .zip(counts)
                .map(|(t, &n)| n.saturating_sub(t.current))
                .sum(),
            stopped: problem
                .targets
                .iter()
                .zip(counts)
                .map(|(t, &n)| t.current.saturating_sub(n))
                .sum(),
            entries,
            proven_optimal: false,
            lower_bound: None,
            routes: Vec::new(),
        }
    }

    /// Instance counts in target (policy) order.
    pub fn counts(&self) -> Vec<u32> {
        self.entries.iter().map(|e| e.instances).collect()
    }

    /// Instances planned for `model` on `accelerator` (0 if not in the plan).
    pub fn instances(&self, model: &str, accelerator: &str) -> u32 {
        self.entries
            .iter()
            .find(|e| e.model == model && e.accelerator == accelerator)
            .map_or(0, |e| e.instances)
    }
}

/// Which constraint makes the program infeasible.
#[derive(Debug, Error, PartialEq)]
pub enum Infeasible {
    /// The profiles' `minInstances` alone need more GPUs than an accelerator has.
    #[error("minimum instances need {required_gpus} {accelerator} GPUs but only {available_gpus} are available")]
    MinimumsExceedAvailability {
        /// Accelerator type.
        accelerator: String,
        /// GPUs the minimums need.
        required_gpus: u64,
        /// GPUs available.
        available_gpus: u32,
    },
    /// One model's demand (× headroom) exceeds what all its profiles can provide even if it had
    /// every available GPU to itself.
    #[error("demand of model {model:?}{} × headroom = {required:.3} exceeds all available capacity{}", bucket.as_ref().map(|b| format!(" bucket {b:?}")).unwrap_or_default(), max_capacity.map(|c| format!(" ({c:.3})")).unwrap_or_default())]
    DemandExceedsAvailability {
        /// Model name.
        model: String,
        /// The bucket that cannot be served, when a single bucket is the cause.
        bucket: Option<String>,
        /// Required capacity (demand × headroom).
        required: f64,
        /// Largest capacity reachable, when it is a simple sum.
        max_capacity: Option<f64>,
    },
    /// Every model fits alone but together they need more GPUs than available.
    #[error(
        "each model fits alone but together they exceed the available GPUs of {accelerators:?}"
    )]
    SharedAvailability {
        /// Accelerator types with a cap.
        accelerators: Vec<String>,
    },
}

/// Why no plan was produced.
#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    /// The demand snapshot does not match the policy.
    #[error(transparent)]
    Demand(#[from] DemandError),
    /// No fleet satisfies the constraints.
    #[error("infeasible: {0}")]
    Infeasible(#[from] Infeasible),
    /// The solver failed (time limit, numerical trouble) or returned a plan that violates the
    /// constraints.
    #[error("solver: {0}")]
    Solver(String),
}

/// A plan to apply and, when it is the last feasible plan kept after a failure, why.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanDecision {
    /// The plan to apply.
    pub plan: Plan,
    /// `Some` when planning failed and `plan` is the previous plan (report it as a condition).
    pub fallback_reason: Option<String>,
}

/// Plans the fleet; on failure keeps `last_feasible` and says why. Without a previous plan
/// the error is returned.
pub fn plan_or_keep_last(
    policy: &CostPolicy,
    demand: &Demand,
    current: &CurrentFleet,
    last_feasible: Option<&Plan>,
) -> Result<PlanDecision, PlanError> {
    match plan_fleet(policy, demand, current) {
        Ok(plan) => Ok(PlanDecision {
            plan,
            fallback_reason: None,
        }),
        Err(e) => match last_feasible {
            Some(last) => Ok(PlanDecision {
                plan: last.clone(),
                fallback_reason: Some(e.to_string()),
            }),
            None => Err(e),
        },
    }
}

/// Plans the cheapest fleet (hourly price + churn penalty) that serves `demand`.
pub fn plan_fleet(
    policy: &CostPolicy,
    demand: &Demand,
    current: &CurrentFleet,
) -> Result<Plan, PlanError> {
    let problem = Problem::new(policy, demand, current)?;
    solve(&problem)
}

/// Solver limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveOptions {
    /// Seconds the whole solve may take (LP relaxation, rounding, branch and bound; routing
    /// and the final check come on top, a few ms). When it fires, the best verified plan found
    /// so far is returned (at worst the greedy fill) with `proven_optimal = false` and
    /// `lower_bound` saying how far from optimal it can be.
    pub time_limit_s: f64,
    /// Relative optimality gap at which the search stops (0: prove optimality).
    pub mip_gap: f32,
}

impl Default for SolveOptions {
    /// 80 ms, so a plan at 20 accelerator types × 10 models × 5 buckets stays within the
    /// 100 ms goal of issue 9 with routing on top; small fleets are proven optimal in a few
    /// ms. What a longer limit buys at that size is measured in docs/benchmarks.md.
    fn default() -> Self {
        SolveOptions {
            time_limit_s: 0.08,
            mip_gap: 0.0,
        }
    }
}

/// Solves a flattened problem with default options (exact, 80 ms limit).
pub fn solve(problem: &Problem) -> Result<Plan, PlanError> {
    solve_with(problem, SolveOptions::default())
}

/// Solves a flattened problem.
///
/// `options.time_limit_s` bounds the whole solve: the LP relaxation and the rounding
/// heuristics run first, and branch and bound gets what is left of the limit.
pub fn solve_with(problem: &Problem, options: SolveOptions) -> Result<Plan, PlanError> {
    let started = Instant::now();
    // NaN or infinite limits would panic in `Duration`; a year is "no limit".
    let time_limit_s = if options.time_limit_s.is_nan() {
        0.0
    } else {
        options.time_limit_s.clamp(0.0, 365.0 * 86_400.0)
    };
    // Cheap necessary conditions first: they name the constraint better than "infeasible".
    diagnose_minimums(problem)?;
    for m in 0..problem.models.len() {
        diagnose_model_alone(problem, m)?;
    }

    // The LP relaxation (≈ 20 ms at benchmark size, 200 integers) proves infeasibility without
    // branching, gives the lower bound, and rounding it gives the incumbent. Branch and bound
    // on the whole program has not been seen to improve on that incumbent at that size, even
    // in 2 s; the per-model step below does, so it gets the time first.
    let relaxation = build_program(problem, false);
    let mut lower_bound = None;
    let mut candidates: Vec<Vec<u32>> = Vec::new();
    let mut relaxed = None;
    let lp_started = Instant::now();
    let solved = relaxation.model.solve();
    let lp_time = lp_started.elapsed().as_secs_f64();
    match solved {
        Ok(solution) => {
            let values: Vec<f64> = relaxation.n.iter().map(|v| solution.value(*v)).collect();
            lower_bound = Some(relaxed_objective(problem, &values));
            let rounded_up: Vec<u32> = values
                .iter()
                .map(|v| (v - 1e-7).ceil().max(0.0) as u32)
                .collect();
            if counts_feasible(problem, &rounded_up) {
                candidates.push(remove_spare_instances(problem, rounded_up));
            }
            // Rounding every fractional count up can overflow a GPU cap that the relaxation
            // fills; rounding down and adding instances only where demand needs them cannot.
            if let Some(filled) = fill_from_floor(problem, &values) {
                candidates.push(remove_spare_instances(problem, filled));
            }
            relaxed = Some(values);
        }
        Err(ResolutionError::Infeasible) => {
            return Err(Infeasible::SharedAvailability {
                accelerators: capped_accelerators(problem),
            }
            .into())
        }
        Err(_) => {}
    }
    if let Ok(greedy) = crate::baselines::greedy_cost_ordered_fill(problem) {
        candidates.push(greedy.counts());
    }
    let incumbent = candidates
        .into_iter()
        .filter(|c| counts_feasible(problem, c))
        .min_by(|a, b| problem.objective(a).total_cmp(&problem.objective(b)));

    // An incumbent that meets the LP bound is optimal: no branching needed.
    if let (Some(counts), Some(bound)) = (&incumbent, lower_bound) {
        if problem.objective(counts) <= bound + 1e-9 * bound.abs().max(1.0) {
            return Ok(finish(problem, counts, true, lower_bound));
        }
    }
    let deadline = started + std::time::Duration::from_secs_f64(time_limit_s);
    let incumbent = incumbent.map(|c| improve_per_model(problem, c, relaxed.as_deref(), deadline));
    let remaining = time_limit_s - started.elapsed().as_secs_f64();
    // Branch and bound starts by solving the same relaxation again; with less time left than
    // that takes (twice, for margin) it could only overrun the limit.
    if remaining <= 0.0 || (incumbent.is_some() && remaining < 2.0 * lp_time) {
        return match incumbent {
            Some(counts) => Ok(finish(problem, &counts, false, lower_bound)),
            None => Err(PlanError::Solver(format!(
                "no plan found within the {} s time limit",
                options.time_limit_s
            ))),
        };
    }

    let built = build_program(problem, true);
    let mut model = built
        .model
        .with_time_limit(remaining)
        .with_mip_gap(options.mip_gap)
        .map_err(|e| PlanError::Solver(format!("mip gap {}: {e}", options.mip_gap)))?;
    if let Some(hint) = &incumbent {
        model =
            model.with_initial_solution(problem.targets.iter().enumerate().flat_map(|(i, t)| {
                std::iter::once((built.n[i], f64::from(hint[i])))
                    .chain(built.down[i].map(|d| (d, f64::from(t.current.saturating_sub(hint[i])))))
            }));
    }
    let searched = match model.solve() {
        Ok(solution) => {
            let counts: Vec<u32> = built
                .n
                .iter()
                .map(|v| solution.value(*v).round().max(0.0) as u32)
                .collect();
            let proven = matches!(solution.status(), SolutionStatus::Optimal);
            // microlp's objective drops the constant of the churn substitution.
            if let Some(bound) = solution.into_inner().stats().best_bound {
                let bound = bound + built.objective_constant;
                lower_bound = Some(lower_bound.map_or(bound, |lb: f64| lb.max(bound)));
            }
            Some((counts, proven))
        }
        Err(ResolutionError::Infeasible) => {
            return Err(Infeasible::SharedAvailability {
                accelerators: capped_accelerators(problem),
            }
            .into())
        }
        Err(_) => None,
    };
    // microlp's branch and bound has had integer bugs; never hand out a plan we cannot verify.
    // Its answer is also never taken when worse than the verified incumbent it was seeded with.
    match (searched, incumbent) {
        (Some((counts, proven)), incumbent)
            if counts_feasible(problem, &counts)
                && incumbent
                    .as_ref()
                    .is_none_or(|i| problem.objective(&counts) <= problem.objective(i) + EPS) =>
        {
            Ok(finish(problem, &counts, proven, lower_bound))
        }
        (_, Some(counts)) => Ok(finish(problem, &counts, false, lower_bound)),
        (Some((counts, _)), None) => Err(PlanError::Solver(format!(
            "solver returned counts {counts:?} that violate the constraints"
        ))),
        (None, None) => Err(PlanError::Solver(format!(
            "no plan found within the {} s time limit",
            options.time_limit_s
        ))),
    }
}

/// The plan of verified counts, with its routes.
fn finish(
    problem: &Problem,
    counts: &[u32],
    proven_optimal: bool,
    lower_bound: Option<f64>,
) -> Plan {
    let mut plan = Plan::from_counts(problem, counts);
    plan.proven_optimal = proven_optimal;
    plan.lower_bound = lower_bound.map(|lb| lb.min(problem.objective(counts)));
    plan.routes = routes_for(problem, counts);
    plan
}

/// Re-optimises one model at a time with the others' instances fixed: each model's own
/// integer program (its ~20 targets, the GPUs the other models leave) is small enough for
/// branch and bound to solve in milliseconds, and its current counts seed it, so the
/// objective never rises. Stops at `deadline`.
fn improve_per_model(
    problem: &Problem,
    mut counts: Vec<u32>,
    relaxed: Option<&[f64]>,
    deadline: Instant,
) -> Vec<u32> {
    let models = problem.models.len();
    // Another model's change can free GPUs a model wants, so passes repeat until one changes
    // nothing.
    let mut changed = true;
    while changed {
        changed = false;
        for m in 0..models {
            let now = Instant::now();
            if now >= deadline {
                return counts;
            }
            if let Some(better) = improve_model(problem, &counts, m, relaxed, deadline, models - m)
            {
                counts = better;
                changed = true;
            }
        }
    }
    counts
}

/// One model's step of [`improve_per_model`]: a cheaper feasible fleet, or `None`. Gets a
/// `1 / share` part of the time left.
fn improve_model(
    problem: &Problem,
    counts: &[u32],
    m: usize,
    relaxed: Option<&[f64]>,
    deadline: Instant,
    share: usize,
) -> Option<Vec<u32>> {
    {
        let now = Instant::now();
        // The neighbourhood: targets running or planned now, those the relaxation uses, and
        // the few cheapest per unit of demand. Most of a model's ~20 profiles are none of
        // these, and leaving them out is what makes each search take milliseconds.
        let mut cheapest: Vec<(usize, f64)> = problem
            .targets_of(m)
            .filter_map(|t| price_per_demand(problem, t).map(|p| (t, p)))
            .collect();
        cheapest.sort_by(|a, b| a.1.total_cmp(&b.1));
        let cheapest: Vec<usize> = cheapest
            .iter()
            .take(NEIGHBOURHOOD_CHEAPEST)
            .map(|&(t, _)| t)
            .collect();
        let own: Vec<usize> = problem
            .targets_of(m)
            .filter(|&t| {
                counts[t] > 0
                    || problem.targets[t].current > 0
                    || relaxed.is_some_and(|r| r[t] > 1e-6)
                    || cheapest.contains(&t)
            })
            .collect();
        let mut others = counts.to_vec();
        for &t in &own {
            others[t] = 0;
        }
        let used = problem.gpus_used(&others);
        let sub = Problem {
            models: vec![problem.models[m].clone()],
            accelerators: problem.accelerators.clone(),
            available_gpus: problem
                .available_gpus
                .iter()
                .zip(&used)
                .map(|(cap, &u)| {
                    cap.map(|c| u32::try_from(u64::from(c).saturating_sub(u)).unwrap_or(0))
                })
                .collect(),
            buckets: vec![problem.buckets[m].clone()],
            required: vec![problem.required[m].clone()],
            targets: own
                .iter()
                .map(|&t| {
                    let mut target = problem.targets[t].clone();
                    target.model = 0;
                    target
                })
                .collect(),
            churn_up: problem.churn_up,
            churn_down: problem.churn_down,
        };
        let built = build_program(&sub, true);
        let hint: Vec<u32> = own.iter().map(|&t| counts[t]).collect();
        let model = built
            .model
            .with_time_limit(deadline.saturating_duration_since(now).as_secs_f64() / share as f64)
            .with_initial_solution(sub.targets.iter().enumerate().flat_map(|(i, t)| {
                std::iter::once((built.n[i], f64::from(hint[i])))
                    .chain(built.down[i].map(|d| (d, f64::from(t.current.saturating_sub(hint[i])))))
            }));
        let solution = model.solve().ok()?;
        let mut candidate = counts.to_vec();
        for (i, &t) in own.iter().enumerate() {
            candidate[t] = solution.value(built.n[i]).round().max(0.0) as u32;
        }
        (problem.objective(&candidate) < problem.objective(counts) - EPS
            && counts_feasible(problem, &candidate))
        .then_some(candidate)
    }
}

/// Hourly price plus churn of fractional counts (the LP relaxation's objective).
fn relaxed_objective(problem: &Problem, values: &[f64]) -> f64 {
    problem
        .targets
        .iter()
        .zip(values)
        .map(|(t, &n)| {
            let current = f64::from(t.current);
            t.price * n
                + problem.churn_up * (n - current).max(0.0)
                + problem.churn_down * (current - n).max(0.0)
        })
        .sum()
}

/// Rounds the relaxation down (which keeps every GPU cap) and adds instances to models whose
/// demand is then unserved: first to targets the relaxation used fractionally, most used
/// first, then to the cheapest target per unit of the model's demand, while caps allow.
/// `None` when caps leave a model unserved this way.
fn fill_from_floor(problem: &Problem, relaxed: &[f64]) -> Option<Vec<u32>> {
    let mut counts: Vec<u32> = problem
        .targets
        .iter()
        .zip(relaxed)
        .map(|(t, &v)| ((v + 1e-7).floor().max(0.0) as u32).clamp(t.min, t.max))
        .collect();
    let mut used = problem.gpus_used(&counts);
    for m in 0..problem.models.len() {
        let mut fractional: Vec<usize> = problem
            .targets_of(m)
            .filter(|&t| relaxed[t] - f64::from(counts[t]) > 1e-6)
            .collect();
        fractional.sort_by(|&a, &b| {
            let frac = |t: usize| relaxed[t] - f64::from(counts[t]);
            frac(b).total_cmp(&frac(a))
        });
        let mut cheapest: Vec<(usize, f64)> = problem
            .targets_of(m)
            .filter_map(|t| price_per_demand(problem, t).map(|p| (t, p)))
            .collect();
        cheapest.sort_by(|a, b| a.1.total_cmp(&b.1));
        let fits = |t: usize, counts: &[u32], used: &[u64]| {
            let target = &problem.targets[t];
            counts[t] < target.max
                && problem.available_gpus[target.accelerator].is_none_or(|cap| {
                    used[target.accelerator] + u64::from(target.gpus) <= u64::from(cap)
                })
        };
        let mut next_fractional = fractional.into_iter();
        while !model_demand_served(problem, m, &counts) {
            let t = next_fractional
                .by_ref()
                .find(|&t| fits(t, &counts, &used))
                .or_else(|| {
                    cheapest
                        .iter()
                        .map(|&(t, _)| t)
                        .find(|&t| fits(t, &counts, &used))
                })?;
            counts[t] += 1;
            used[problem.targets[t].accelerator] += u64::from(problem.targets[t].gpus);
        }
    }
    Some(counts)
}

/// Price of target `t` per unit of its model's demand, over the buckets it can serve; `None`
/// when it serves none of the buckets with demand.
fn price_per_demand(problem: &Problem, t: usize) -> Option<f64> {
    let target = &problem.targets[t];
    let (mut served, mut instances) = (0.0, 0.0);
    for (&req, &cap) in problem.required[target.model].iter().zip(&target.capacity) {
        if req > 0.0 && cap > 0.0 {
            served += req;
            instances += req / cap;
        }
    }
    (served > 0.0).then(|| target.price * instances / served)
}

/// Drops instances, most expensive first, while the plan still serves demand. Rounding the
/// relaxation up leaves up to one spare instance per target; this recovers most of it.
fn remove_spare_instances(problem: &Problem, mut counts: Vec<u32>) -> Vec<u32> {
    let mut order: Vec<usize> = (0..problem.targets.len()).collect();
    order.sort_by(|&a, &b| {
        problem.targets[b]
            .price
            .total_cmp(&problem.targets[a].price)
    });
    for t in order {
        let target = &problem.targets[t];
        while counts[t] > target.min {
            // Removing an instance that is running now costs the stop penalty; one started by
            // this plan also saves its start penalty.
            let saves = target.price
                + if counts[t] > target.current {
                    problem.churn_up
                } else {
                    -problem.churn_down
                };
            if saves <= 0.0 {
                break;
            }
            counts[t] -= 1;
            if !model_demand_served(problem, target.model, &counts) {
                counts[t] += 1;
                break;
            }
        }
    }
    counts
}

/// The program without solver options, and the handles needed to read or seed it.
struct BuiltProgram {
    model: good_lp::solvers::microlp::MicroLpProblem,
    n: Vec<Variable>,
    /// Instances stopped, only for targets running instances now (see [`build_program`]).
    down: Vec<Option<Variable>>,
    /// Constant term of the objective, which microlp does not see.
    objective_constant: f64,
}

/// Builds the program of the module docs; with `integer = false`, its LP relaxation.
///
/// The churn terms are folded in to keep the program small: with `u_t = n_t − n⁰_t + d_t`
/// the objective `p n + α u + β d` becomes `(p + α) n + (α + β) d − α n⁰`, so a target with
/// nothing running (`d_t = 0`) needs no churn variable or row at all, and one that runs
/// instances needs one variable `d_t ≥ n⁰_t − n_t`. At benchmark size that is ≈ 18 churn rows
/// instead of 400 (of 670).
fn build_program(problem: &Problem, integer: bool) -> BuiltProgram {
    let mut vars = ProblemVariables::new();
    let n: Vec<Variable> = problem
        .targets
        .iter()
        .map(|t| {
            let v = variable()
                .min(f64::from(t.min))
                .max(f64::from(t.max.min(UNCAPPED)));
            vars.add(if integer { v.integer() } else { v })
        })
        .collect();
    let down: Vec<Option<Variable>> = problem
        .targets
        .iter()
        .map(|t| (t.current > 0).then(|| vars.add(variable().min(0.0))))
        .collect();
    // share[t][b]: fraction of bucket b of target t's model routed to t.
    let share: Vec<Vec<Option<Variable>>> = problem
        .targets
        .iter()
        .map(|t| {
            problem.required[t.model]
                .iter()
                .zip(&t.capacity)
                .map(|(&req, &cap)| {
                    (req > 0.0 && cap > 0.0).then(|| vars.add(variable().min(0.0).max(1.0)))
                })
                .collect()
        })
        .collect();

    let mut objective = Expression::from(0.0);
    let mut objective_constant = 0.0;
    for (i, t) in problem.targets.iter().enumerate() {
        objective.add_mul(t.price + problem.churn_up, n[i]);
        if let Some(d) = down[i] {
            objective.add_mul(problem.churn_up + problem.churn_down, d);
            objective_constant -= problem.churn_up * f64::from(t.current);
        }
    }
    let mut model = vars.minimise(objective).using(microlp);

    for (m, required) in problem.required.iter().enumerate() {
        for (b, &req) in required.iter().enumerate() {
            if req > 0.0 {
                let served: Expression = problem
                    .targets_of(m)
                    .filter_map(|t| share[t][b])
                    .map(Expression::from)
                    .sum();
                model.add_constraint(served.eq(1.0));
            }
        }
    }
    for (i, t) in problem.targets.iter().enumerate() {
        let mut load = Expression::from(0.0);
        let mut any = false;
        for (b, s) in share[i].iter().enumerate() {
            if let Some(s) = s {
                load.add_mul(problem.required[t.model][b] / t.capacity[b], *s);
                any = true;
            }
        }
        if any {
            model.add_constraint(load.leq(n[i]));
        }
        if let Some(d) = down[i] {
            model.add_constraint((f64::from(t.current) - n[i]).leq(d));
        }
    }
    for (a, cap) in problem.available_gpus.iter().enumerate() {
        if let Some(cap) = cap {
            let used: Expression = problem
                .targets
                .iter()
                .enumerate()
                .filter(|(_, t)| t.accelerator == a)
                .map(|(i, t)| f64::from(t.gpus) * n[i])
                .sum();
            model.add_constraint(used.leq(f64::from(*cap)));
        }
    }
    BuiltProgram {
        model,
        n,
        down,
        objective_constant,
    }
}

fn capped_accelerators(problem: &Problem) -> Vec<String> {
    problem
        .available_gpus
        .iter()
        .zip(&problem.accelerators)
        .filter(|(cap, _)| cap.is_some())
        .map(|(_, a)| a.clone())
        .collect()
}

fn diagnose_minimums(problem: &Problem) -> Result<(), Infeasible> {
    let mins: Vec<u32> = problem.targets.iter().map(|t| t.min).collect();
    for (a, used) in problem.gpus_used(&mins).into_iter().enumerate() {
        if let Some(cap) = problem.available_gpus[a] {
            if used > u64::from(cap) {
                return Err(Infeasible::MinimumsExceedAvailability {
                    accelerator: problem.accelerators[a].clone(),
                    required_gpus: used,
                    available_gpus: cap,
                });
            }
        }
    }
    Ok(())
}

fn diagnose_model_alone(problem: &Problem, m: usize) -> Result<(), Infeasible> {
    let upper: Vec<u32> = problem
        .targets
        .iter()
        .map(|t| t.max.min(UNCAPPED))
        .collect();
    for (b, &req) in problem.required[m].iter().enumerate() {
        let max_capacity: f64 = problem
            .targets_of(m)
            .map(|t| f64::from(upper[t]) * problem.targets[t].capacity[b])
            .sum();
        if req > max_capacity * (1.0 + EPS) {
            let bucket = (problem.required[m].len() > 1).then(|| problem.buckets[m][b].clone());
            return Err(Infeasible::DemandExceedsAvailability {
                model: problem.models[m].clone(),
                bucket,
                required: req,
                max_capacity: Some(max_capacity),
            });
        }
    }
    if problem.required[m].len() > 1 && !model_demand_served(problem, m, &upper) {
        return Err(Infeasible::DemandExceedsAvailability {
            model: problem.models[m].clone(),
            bucket: None,
            required: problem.required[m].iter().sum(),
            max_capacity: None,
        });
    }
    Ok(())
}

/// Whether `counts` meet every constraint: bounds, availability, demand (with a bucket split
/// found by an LP when the model has several buckets).
pub fn counts_feasible(problem: &Problem, counts: &[u32]) -> bool {
    let within_bounds = problem
        .targets
        .iter()
        .zip(counts)
        .all(|(t, &n)| t.min <= n && n <= t.max);
    let within_caps = problem
        .gpus_used(counts)
        .iter()
        .zip(&problem.available_gpus)
        .all(|(&used, cap)| cap.is_none_or(|c| used <= u64::from(c)));
    within_bounds
        && within_caps
        && (0..problem.models.len()).all(|m| model_demand_served(problem, m, counts))
}

/// Whether fixed counts can serve model `m`'s demand, splitting buckets across targets.
fn model_demand_served(problem: &Problem, m: usize, counts: &[u32]) -> bool {
    bucket_shares(problem, m, counts, false).is_some()
}

/// How model `m`'s demand is split when the fleet is `counts`: for each of its targets, the
/// share of every bucket it serves. The split equalises utilisation across instances (minimise
/// the highest load / instances), which is what a router should aim for. `None` when the fleet
/// cannot serve the demand.
///
/// With `balance = false` any feasible split is returned (a cheaper LP, for feasibility checks).
fn bucket_shares(
    problem: &Problem,
    m: usize,
    counts: &[u32],
    balance: bool,
) -> Option<Vec<(usize, Vec<f64>)>> {
    let required = &problem.required[m];
    let targets: Vec<usize> = problem.targets_of(m).collect();
    let serving: Vec<usize> = targets.iter().copied().filter(|&t| counts[t] > 0).collect();
    let capacity_of = |t: usize, b: usize| f64::from(counts[t]) * problem.targets[t].capacity[b];
    if required.len() == 1 {
        let capacity: f64 = targets.iter().map(|&t| capacity_of(t, 0)).sum();
        if required[0] > capacity * (1.0 + EPS) + EPS {
            return None;
        }
        return Some(
            targets
                .iter()
                .map(|&t| {
                    let share = if required[0] > 0.0 && capacity > 0.0 {
                        capacity_of(t, 0) / capacity
                    } else {
                        0.0
                    };
                    (t, vec![share])
                })
                .collect(),
        );
    }
    if required.iter().all(|&r| r == 0.0) {
        return Some(
            targets
                .iter()
                .map(|&t| (t, vec![0.0; required.len()]))
                .collect(),
        );
    }
    // Necessary condition, checked arithmetically so most rejections while rounding need no
    // LP: every bucket fits on the fleet's instances if they served that bucket alone.
    if required.iter().enumerate().any(|(b, &req)| {
        req > 0.0
            && req > serving.iter().map(|&t| capacity_of(t, b)).sum::<f64>() * (1.0 + EPS) + EPS
    }) {
        return None;
    }
    // With counts fixed this is a pure LP: route each bucket's demand to instances that have
    // spare capacity for it, keeping the busiest target's utilisation `peak` as low as possible.
    // Only targets with instances can take load, so the LP has a handful of columns rather
    // than one per profile; this check runs once per instance removed while rounding.
    let mut vars = ProblemVariables::new();
    let peak = vars.add(variable().min(0.0));
    let share: Vec<Vec<Option<Variable>>> = serving
        .iter()
        .map(|&t| {
            required
                .iter()
                .zip(&problem.targets[t].capacity)
                .map(|(&req, &cap)| {
                    (req > 0.0 && cap > 0.0).then(|| vars.add(variable().min(0.0).max(1.0)))
                })
                .collect()
        })
        .collect();
    let objective = if balance {
        Expression::from(peak)
    } else {
        Expression::from(0.0)
    };
    let mut lp = vars.minimise(objective).using(microlp);
    for (b, &req) in required.iter().enumerate() {
        if req > 0.0 {
            let served: Expression = share
                .iter()
                .filter_map(|s| s[b])
                .map(Expression::from)
                .sum();
            lp.add_constraint(served.eq(1.0));
        }
    }
    for (k, &t) in serving.iter().enumerate() {
        let mut load = Expression::from(0.0);
        for (b, s) in share[k].iter().enumerate() {
            if let Some(s) = s {
                load.add_mul(required[b] / problem.targets[t].capacity[b], *s);
            }
        }
        let n = f64::from(counts[t]);
        if balance {
            lp.add_constraint(load.leq(n * peak));
        } else {
            // Absolute slack too: the solver's own answers are feasible only within its
            // tolerances, and a 1e-9 overshoot must not reject a plan.
            lp.add_constraint(load.leq(n * (1.0 + EPS) + EPS));
        }
    }
    let solution = lp.solve().ok()?;
    if balance && solution.value(peak) > 1.0 + EPS {
        return None;
    }
    Some(
        serving
            .iter()
            .zip(&share)
            .map(|(&t, s)| {
                (
                    t,
                    s.iter()
                        .map(|v| v.map_or(0.0, |v| solution.value(v).clamp(0.0, 1.0)))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// Routing weights for a verified fleet: which share of each bucket goes to which accelerator.
pub fn routes_for(problem: &Problem, counts: &[u32]) -> Vec<BucketRoute> {
    let mut routes = Vec::new();
    for m in 0..problem.models.len() {
        for (t, shares) in bucket_shares(problem, m, counts, true)
            .or_else(|| bucket_shares(problem, m, counts, false))
            .unwrap_or_default()
        {
            for (b, &share) in shares.iter().enumerate() {
                if share > 1e-9 && problem.required[m][b] > 0.0 {
                    routes.push(BucketRoute {
                        model: problem.models[m].clone(),
                        bucket: problem.buckets[m][b].clone(),
                        accelerator: problem.accelerators[problem.targets[t].accelerator].clone(),
                        share,
                    });
                }
            }
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::ModelDemand;
    use std::collections::BTreeMap;

    fn policy(text: &str) -> CostPolicy {
        CostPolicy::from_yaml(text).unwrap()
    }

    fn total(model: &str, rate: f64) -> Demand {
        BTreeMap::from([(model.to_string(), ModelDemand::Total(rate))])
    }

    const TWO_TYPES: &str = r#"
headroom: 1.0
accelerators:
  - { name: cheap, pricePerHour: 1.0, gpusPerNode: 8, availableGpus: 4 }
  - { name: big, pricePerHour: 3.0, gpusPerNode: 8 }
models:
  - name: m
    profiles:
      - { accelerator: cheap, gpusPerInstance: 1, capacity: 2.0 }
      - { accelerator: big, gpusPerInstance: 1, capacity: 10.0 }
"#;

    #[test]
    fn cheapest_capacity_per_dollar_wins_and_caps_spill_to_next_type() {
        let p = policy(TWO_TYPES);
        // 7 req/s: one big instance (3 $) beats 4 cheap (4 $).
        let plan = plan_fleet(&p, &total("m", 7.0), &CurrentFleet::new()).unwrap();
        assert_eq!(
            (plan.instances("m", "cheap"), plan.instances("m", "big")),
            (0, 1)
        );
        // 12 req/s: 1 big + 1 cheap (4 $) beats 2 big (6 $).
        let plan = plan_fleet(&p, &total("m", 12.0), &CurrentFleet::new()).unwrap();
        assert_eq!(
            (plan.instances("m", "cheap"), plan.instances("m", "big")),
            (1, 1)
        );
        assert_eq!(plan.cost_per_hour, 4.0);
        assert!(plan.proven_optimal);
    }

    #[test]
    fn unbounded_or_nan_time_limits_solve_instead_of_panicking() {
        let problem =
            Problem::new(&policy(TWO_TYPES), &total("m", 12.0), &CurrentFleet::new()).unwrap();
        for time_limit_s in [f64::INFINITY, 1e300] {
            let plan = solve_with(
                &problem,
                SolveOptions {
                    time_limit_s,
                    mip_gap: 0.0,
                },
            )
            .unwrap();
            assert_eq!((plan.cost_per_hour, plan.proven_optimal), (4.0, true));
        }
        // NaN counts as no time: the verified incumbent still comes back.
        let plan = solve_with(
            &problem,
            SolveOptions {
                time_limit_s: f64::NAN,
                mip_gap: 0.0,
            },
        )
        .unwrap();
        assert!(counts_feasible(&problem, &plan.counts()));
    }

    #[test]
    fn headroom_raises_required_capacity() {
        let p = policy(&TWO_TYPES.replace("headroom: 1.0", "headroom: 2.0"));
        let plan = plan_fleet(&p, &total("m", 6.0), &CurrentFleet::new()).unwrap();
        assert_eq!(
            (plan.instances("m", "cheap"), plan.instances("m", "big")),
            (1, 1)
        );
    }

    #[test]
    fn churn_penalty_keeps_a_slightly_more_expensive_running_fleet() {
        let text = format!(
            "{TWO_TYPES}churnPenalty: {{ perInstanceStarted: 5, perInstanceStopped: 1 }}\n"
        );
        let p = policy(&text);
        let current = CurrentFleet::from([(("m".into(), "cheap".into()), 3)]);
        // 7 req/s with 3 cheap running. Without churn: 1 big (3 $) beats 4 cheap (4 $).
        // With churn: 4 cheap = 4 + 5 (one start) = 9 beats 1 big = 3 + 5 + 3 (three stops) = 11.
        let plan = plan_fleet(&p, &total("m", 7.0), &current).unwrap();
        assert_eq!(
            (plan.instances("m", "cheap"), plan.instances("m", "big")),
            (4, 0)
        );
        assert_eq!((plan.started, plan.stopped), (1, 0));
        let plan = plan_fleet(&policy(TWO_TYPES), &total("m", 7.0), &current).unwrap();
        assert_eq!(
            (plan.instances("m", "cheap"), plan.instances("m", "big")),
            (0, 1)
        );
        assert_eq!((plan.started, plan.stopped), (1, 3));
    }

    #[test]
    fn buckets_are_split_across_accelerators() {
        // Mélange's point: short requests go to cheap GPUs, long ones to big GPUs.
        let p = policy(
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
        );
        let demand = BTreeMap::from([(
            "m".to_string(),
            ModelDemand::PerBucket(BTreeMap::from([
                ("short".into(), 20.0),
                ("long".into(), 4.0),
            ])),
        )]);
        let plan = plan_fleet(&p, &demand, &CurrentFleet::new()).unwrap();
        // 2 L4 for short + 1 H100 for long = 6 $, vs 2 H100 (8 $) or 10 L4 (10 $).
        assert_eq!(
            (plan.instances("m", "l4"), plan.instances("m", "h100")),
            (2, 1)
        );
        assert_eq!(plan.cost_per_hour, 6.0);
        // All long requests must go to the H100; the L4s take most of the short ones.
        let share = |bucket: &str, accel: &str| {
            plan.routes
                .iter()
                .filter(|r| r.bucket == bucket && r.accelerator == accel)
                .map(|r| r.share)
                .sum::<f64>()
        };
        assert!(
            (share("long", "h100") - 1.0).abs() < 1e-6,
            "{:?}",
            plan.routes
        );
        assert!(share("short", "l4") >= 0.9, "{:?}", plan.routes);
        assert!((share("short", "l4") + share("short", "h100") - 1.0).abs() < 1e-6);
    }

    #[test]
    fn multi_gpu_shapes_use_whole_instances_and_count_gpus_against_caps() {
        let p = policy(
            r#"
headroom: 1.0
accelerators: [ { name: a100, pricePerHour: 2.0, gpusPerNode: 8, availableGpus: 8 } ]
models:
  - name: big
    profiles: [ { accelerator: a100, gpusPerInstance: 4, capacity: 3.0 } ]
"#,
        );
        let plan = plan_fleet(&p, &total("big", 3.5), &CurrentFleet::new()).unwrap();
        assert_eq!(plan.entries[0].instances, 2);
        assert_eq!(plan.entries[0].gpus, 8);
        assert_eq!(plan.cost_per_hour, 16.0);
        let e = plan_fleet(&p, &total("big", 6.5), &CurrentFleet::new()).unwrap_err();
        assert!(
            matches!(
                e,
                PlanError::Infeasible(Infeasible::DemandExceedsAvailability { .. })
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains(
                "demand of model \"big\" × headroom = 6.500 exceeds all available capacity (6.000)"
            ),
            "{e}"
        );
    }

    #[test]
    fn shared_caps_across_models_are_reported() {
        let p = policy(
            r#"
headroom: 1.0
accelerators: [ { name: a, pricePerHour: 1.0, gpusPerNode: 8, availableGpus: 2 } ]
models:
  - name: x
    profiles: [ { accelerator: a, gpusPerInstance: 1, capacity: 1.0 } ]
  - name: y
    profiles: [ { accelerator: a, gpusPerInstance: 1, capacity: 1.0 } ]
"#,
        );
        let demand = BTreeMap::from([
            ("x".to_string(), ModelDemand::Total(1.5)),
            ("y".to_string(), ModelDemand::Total(0.5)),
        ]);
        let e = plan_fleet(&p, &demand, &CurrentFleet::new()).unwrap_err();
        assert_eq!(
            e,
            PlanError::Infeasible(Infeasible::SharedAvailability {
                accelerators: vec!["a".into()]
            })
        );
    }

    #[test]
    fn infeasible_round_keeps_last_plan_with_reason() {
        let p = policy(
            TWO_TYPES
                .replace("  - { name: big, pricePerHour: 3.0, gpusPerNode: 8 }\n", "")
                .replace(
                    "      - { accelerator: big, gpusPerInstance: 1, capacity: 10.0 }\n",
                    "",
                )
                .as_str(),
        );
        let ok = plan_or_keep_last(&p, &total("m", 4.0), &CurrentFleet::new(), None).unwrap();
        assert_eq!(ok.fallback_reason, None);
        assert_eq!(ok.plan.counts(), vec![2]);
        let kept = plan_or_keep_last(&p, &total("m", 100.0), &CurrentFleet::new(), Some(&ok.plan))
            .unwrap();
        assert_eq!(kept.plan, ok.plan);
        assert!(kept
            .fallback_reason
            .unwrap()
            .contains("exceeds all available capacity"));
        assert!(plan_or_keep_last(&p, &total("m", 100.0), &CurrentFleet::new(), None).is_err());
    }

    #[test]
    fn demand_for_unknown_model_is_an_error_not_a_panic() {
        let e = plan_fleet(
            &policy(TWO_TYPES),
            &total("nope", 1.0),
            &CurrentFleet::new(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "demand for unknown model \"nope\"");
    }

    #[test]
    fn zero_demand_costs_only_the_minimums() {
        let p = policy(&TWO_TYPES.replace("capacity: 10.0 }", "capacity: 10.0, minInstances: 1 }"));
        let plan = plan_fleet(&p, &Demand::new(), &CurrentFleet::new()).unwrap();
        assert_eq!(plan.counts(), vec![0, 1]);
    }

    #[test]
    fn minimums_of_several_models_overflowing_a_cap_are_named() {
        let p = policy(
            r#"
accelerators: [ { name: a, pricePerHour: 1.0, gpusPerNode: 8, availableGpus: 4 } ]
models:
  - name: x
    profiles: [ { accelerator: a, gpusPerInstance: 2, capacity: 1.0, minInstances: 2 } ]
  - name: y
    profiles: [ { accelerator: a, gpusPerInstance: 1, capacity: 1.0, minInstances: 1 } ]
"#,
        );
        let e = plan_fleet(&p, &Demand::new(), &CurrentFleet::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "infeasible: minimum instances need 5 a GPUs but only 4 are available"
        );
    }

    #[test]
    fn bucket_no_profile_can_serve_at_that_rate_is_named() {
        let p = policy(
            r#"
headroom: 1.0
accelerators: [ { name: a, pricePerHour: 1.0, gpusPerNode: 8, availableGpus: 2 } ]
models:
  - name: m
    buckets: [short, long]
    profiles: [ { accelerator: a, gpusPerInstance: 1, bucketCapacity: { short: 10, long: 1 } } ]
"#,
        );
        let demand = BTreeMap::from([(
            "m".to_string(),
            ModelDemand::PerBucket(BTreeMap::from([("long".into(), 3.0)])),
        )]);
        let e = plan_fleet(&p, &demand, &CurrentFleet::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("demand of model \"m\" bucket \"long\" × headroom = 3.000 exceeds all available capacity (2.000)"),
            "{e}"
        );
    }

    #[test]
    fn time_limited_solve_still_returns_a_verified_plan_no_worse_than_greedy() {
        use crate::problem::Target;
        // 6 accelerator types × 4 models × 3 buckets with shared caps, and almost no time.
        let (accels, models, buckets) = (6usize, 4usize, 3usize);
        let mut targets = Vec::new();
        for m in 0..models {
            for a in 0..accels {
                let speed = 1.0 + a as f64;
                targets.push(Target {
                    model: m,
                    accelerator: a,
                    gpus: 1,
                    price: speed * (1.0 + 0.1 * ((m * 7 + a * 3) % 5) as f64),
                    capacity: (0..buckets)
                        .map(|b| {
                            speed * 8.0 / (1.0 + b as f64) * (1.0 + 0.2 * ((m + a + b) % 3) as f64)
                        })
                        .collect(),
                    min: 0,
                    max: 30,
                    current: ((m + a) % 3) as u32,
                });
            }
        }
        let problem = Problem {
            models: (0..models).map(|m| format!("m{m}")).collect(),
            accelerators: (0..accels).map(|a| format!("a{a}")).collect(),
            available_gpus: vec![Some(12); accels],
            buckets: vec![(0..buckets).map(|b| format!("b{b}")).collect(); models],
            required: (0..models)
                .map(|m| {
                    (0..buckets)
                        .map(|b| 20.0 + 7.0 * ((m * 3 + b) % 4) as f64)
                        .collect()
                })
                .collect(),
            targets,
            churn_up: 0.5,
            churn_down: 0.1,
        };
        let plan = solve_with(
            &problem,
            SolveOptions {
                time_limit_s: 0.001,
                mip_gap: 0.0,
            },
        )
        .unwrap();
        let objective = problem.objective(&plan.counts());
        assert!(counts_feasible(&problem, &plan.counts()));
        let greedy = crate::baselines::greedy_cost_ordered_fill(&problem).unwrap();
        assert!(objective <= problem.objective(&greedy.counts()) + 1e-9);
        let bound = plan.lower_bound.unwrap();
        assert!(
            bound <= objective + 1e-9,
            "LP bound {bound} above plan {objective}"
        );
    }

    #[test]
    fn example_policy_solves() {
        let p = CostPolicy::from_yaml(include_str!("../examples/cost-policy.yaml")).unwrap();
        let demand = BTreeMap::from([
            (
                "llama-3-8b".to_string(),
                ModelDemand::PerBucket(BTreeMap::from([
                    ("short".into(), 30.0),
                    ("medium".into(), 8.0),
                    ("long".into(), 2.0),
                ])),
            ),
            ("llama-3-70b".to_string(), ModelDemand::Total(5.0)),
        ]);
        let plan = plan_fleet(&p, &demand, &CurrentFleet::new()).unwrap();
        assert!(plan.instances("llama-3-70b", "h100-80gb") >= 1, "{plan:?}");
        assert!(plan.cost_per_hour > 0.0);
    }

    /// Benchmark-sized instance (20 accelerator types × 10 models × 5 buckets); run with
    /// `cargo test -p muster-solver --release -- --ignored --nocapture` to see the solve time.
    #[test]
    #[ignore = "timing probe, not a correctness check"]
    fn solve_time_at_benchmark_size() {
        use crate::problem::Target;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 1000) as f64 / 1000.0
        };
        let (accels, models, buckets) = (20, 10, 5);
        let mut targets = Vec::new();
        for m in 0..models {
            for a in 0..accels {
                let speed = 1.0 + 9.0 * a as f64 / accels as f64;
                targets.push(Target {
                    model: m,
                    accelerator: a,
                    gpus: 1,
                    price: speed * (0.6 + 0.8 * next()),
                    capacity: (0..buckets)
                        .map(|b| speed * (10.0 / (1.0 + b as f64)) * (0.5 + next()))
                        .collect(),
                    min: 0,
                    max: 64,
                    current: (next() * 4.0) as u32,
                });
            }
        }
        let problem = Problem {
            models: (0..models).map(|m| format!("m{m}")).collect(),
            accelerators: (0..accels).map(|a| format!("a{a}")).collect(),
            available_gpus: (0..accels).map(|_| Some(40)).collect(),
            buckets: (0..models)
                .map(|_| (0..buckets).map(|b| format!("b{b}")).collect())
                .collect(),
            required: (0..models)
                .map(|_| (0..buckets).map(|_| 5.0 + 40.0 * next()).collect())
                .collect(),
            targets,
            churn_up: 0.5,
            churn_down: 0.1,
        };
        let greedy = crate::baselines::greedy_cost_ordered_fill(&problem).unwrap();
        let single =
            crate::baselines::best_single_accelerator(&problem).map(|(_, p)| p.cost_per_hour);
        eprintln!(
            "greedy {:.2} $/h, best single type {single:?}",
            greedy.cost_per_hour
        );
        for (time_limit_s, mip_gap) in [(0.08, 0.0), (0.5, 0.0), (2.0, 0.0)] {
            let started = std::time::Instant::now();
            let options = SolveOptions {
                time_limit_s,
                mip_gap,
            };
            let plan = solve_with(&problem, options).unwrap();
            eprintln!(
                "{options:?}: solve time {:?}, {:.2} $/h, objective {:.2}, LP bound {:.2}, proven optimal {}",
                started.elapsed(),
                plan.cost_per_hour,
                problem.objective(&plan.counts()),
                plan.lower_bound.unwrap_or(f64::NAN),
                plan.proven_optimal
            );
        }
    }

    mod brute_force {
        use super::super::*;
        use crate::problem::Target;
        use proptest::prelude::*;

        /// Cheapest feasible counts by enumerating every vector within the bounds.
        fn brute_force(problem: &Problem) -> Option<f64> {
            let mut counts: Vec<u32> = problem.targets.iter().map(|t| t.min).collect();
            let mut best: Option<f64> = None;
            loop {
                if counts_feasible(problem, &counts) {
                    let cost = problem.objective(&counts);
                    if best.is_none_or(|b| cost < b) {
                        best = Some(cost);
                    }
                }
                // Odometer increment over [min, max] per target.
                let mut i = 0;
                loop {
                    if i == counts.len() {
                        return best;
                    }
                    if counts[i] < problem.targets[i].max {
                        counts[i] += 1;
                        break;
                    }
                    counts[i] = problem.targets[i].min;
                    i += 1;
                }
            }
        }

        /// Up to 2 models × 2 accelerators (or 1 × 3), 1–2 buckets, small bounds, so that
        /// exhaustive search stays cheap.
        fn small_problem() -> impl Strategy<Value = Problem> {
            (1usize..=2, 1usize..=2).prop_flat_map(|(models, buckets)| {
                let accels = if models == 1 { 3 } else { 2 };
                let target = prop::option::weighted(
                    0.8,
                    (
                        prop::sample::select(vec![1u32, 2]),
                        prop::sample::select(vec![0.5, 1.0, 1.25, 2.0, 3.0, 4.5]),
                        prop::collection::vec(
                            prop::sample::select(vec![0.0, 0.5, 1.0, 2.5, 4.0, 7.0]),
                            buckets,
                        ),
                        0u32..=1,
                        0u32..=3,
                        0u32..=3,
                    ),
                );
                (
                    prop::collection::vec(target, models * accels),
                    prop::collection::vec(prop::option::of(1u32..=6), accels),
                    prop::collection::vec(prop::collection::vec(0.0f64..6.0, buckets), models),
                    prop::sample::select(vec![0.0, 0.3, 1.0, 2.5]),
                    prop::sample::select(vec![0.0, 0.2, 0.7]),
                )
                    .prop_map(
                        move |(raw, caps, required, churn_up, churn_down)| {
                            let targets = raw
                                .into_iter()
                                .enumerate()
                                .filter_map(|(i, t)| {
                                    let (gpus, price, capacity, min, extra, current) = t?;
                                    Some(Target {
                                        model: i / accels,
                                        accelerator: i % accels,
                                        gpus,
                                        price,
                                        capacity,
                                        min,
                                        max: min + extra,
                                        current,
                                    })
                                })
                                .collect();
                            Problem {
                                models: (0..models).map(|m| format!("m{m}")).collect(),
                                accelerators: (0..accels).map(|a| format!("a{a}")).collect(),
                                available_gpus: caps,
                                buckets: (0..models)
                                    .map(|_| (0..buckets).map(|b| format!("b{b}")).collect())
                                    .collect(),
                                required,
                                targets,
                                churn_up,
                                churn_down,
                            }
                        },
                    )
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            /// The integer program finds the same optimal cost as exhaustive search, and agrees
            /// on when no plan exists.
            #[test]
            fn solver_matches_brute_force(problem in small_problem()) {
                let expected = brute_force(&problem);
                // A generous limit, so a loaded test machine cannot turn this into a timing test.
                let options = SolveOptions { time_limit_s: 30.0, mip_gap: 0.0 };
                match (solve_with(&problem, options), expected) {
                    (Ok(plan), Some(best)) => {
                        let got = problem.objective(&plan.counts());
                        prop_assert!(plan.proven_optimal, "not proven optimal: {plan:?}");
                        prop_assert!(plan.lower_bound.is_some_and(|lb| lb <= best + 1e-6), "LP bound {:?} above optimum {best}", plan.lower_bound);
                        prop_assert!((got - best).abs() < 1e-6, "solver {got} vs brute force {best}: {plan:?}");
                        // Every bucket with demand is routed in full, only to instances that exist.
                        for (m, required) in problem.required.iter().enumerate() {
                            for (b, &req) in required.iter().enumerate() {
                                let routed: f64 = plan.routes.iter()
                                    .filter(|r| r.model == problem.models[m] && r.bucket == problem.buckets[m][b])
                                    .inspect(|r| assert!(plan.instances(&r.model, &r.accelerator) > 0, "{r:?}"))
                                    .map(|r| r.share)
                                    .sum();
                                let expected = if req > 0.0 { 1.0 } else { 0.0 };
                                prop_assert!((routed - expected).abs() < 1e-6, "bucket {m}/{b} routed {routed}: {:?}", plan.routes);
                            }
                        }
                        // Baselines serve demand too, so they can never be cheaper than optimal.
                        let baselines = [
                            crate::baselines::greedy_cost_ordered_fill(&problem).ok(),
                            crate::baselines::best_single_accelerator(&problem).ok().map(|(_, p)| p),
                        ];
                        for baseline in baselines.into_iter().flatten() {
                            prop_assert!(counts_feasible(&problem, &baseline.counts()), "{baseline:?}");
                            prop_assert!(problem.objective(&baseline.counts()) >= best - 1e-6);
                        }
                    }
                    (Err(PlanError::Infeasible(_)), None) => {}
                    (got, expected) => prop_assert!(false, "solver {got:?} vs brute force {expected:?}"),
                }
            }
        }
    }
}
