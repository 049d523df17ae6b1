//! The solver and autoscaler benchmark (issue 9): `muster-bench solver`, `make bench-solver`.
//!
//! Pure and in-process (no cluster): it measures
//! 1. solve time of the integer program at 20 accelerator types × 10 models × 5 buckets
//!    (goal ≤ 100 ms) and how it grows with the number of types;
//! 2. cost of the integer program against the best single accelerator type and the greedy
//!    cost-ordered fill on Mélange-style scenarios, every plan checked to meet demand by
//!    [`check_plan`] (independent of the solver);
//! 3. GPU-hours and SLO-violation minutes of the KPA-style recommender against an HPA-style
//!    baseline on a replayed diurnal-plus-spike trace in virtual time.

use std::path::Path;
use std::time::Instant;

use muster_solver::baselines::{best_single_accelerator, greedy_cost_ordered_fill};
use muster_solver::{solve_with, Problem, RecommenderConfig, SolveOptions};
use serde::Serialize;

use crate::solver_bench_mix::{
    check_plan, generate, melange_instance, melange_workloads, proportional_routing, routing_of,
    ProblemSize, MELANGE_GPUS,
};
use crate::solver_bench_trace::{simulate, FleetShape, Hpa, Kpa, TraceOutcome, TraceShape};
use crate::stats::{median, summarize};

/// The solve-time goal of issue 9.
pub const SOLVE_GOAL_MS: f64 = 100.0;

/// What to run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Problem size of the headline solve-time measurement.
    pub size: ProblemSize,
    /// Seeded instances solved per option set (different seeds, one solve each).
    pub runs: usize,
    /// Accelerator-type counts of the sweep (models and buckets as in `size`).
    pub sweep_accelerators: Vec<usize>,
    /// Runs per sweep point.
    pub sweep_runs: usize,
    /// Solver option sets measured: (label, time limit s, MIP gap).
    pub solve_options: Vec<(String, f64, f32)>,
    /// Total request rates (req/s) of the Mélange-style scenarios.
    pub melange_rates: Vec<f64>,
    /// Trace length in hours.
    pub trace_hours: f64,
    /// Start-up delays (s) of the trace runs; the first is the headline.
    pub startup_s: Vec<f64>,
    /// Base seed.
    pub seed: u64,
}

impl Settings {
    /// The full benchmark.
    pub fn full(seed: u64) -> Self {
        Settings {
            size: ProblemSize {
                accelerators: 20,
                models: 10,
                buckets: 5,
            },
            runs: 20,
            sweep_accelerators: vec![2, 5, 10, 20],
            sweep_runs: 3,
            solve_options: vec![
                controller_options(),
                // A 40× longer search, to show what the time limit gives up.
                ("2 s limit".into(), 2.0, 0.0),
            ],
            melange_rates: vec![1.0, 4.0, 16.0, 64.0],
            trace_hours: 24.0,
            startup_s: vec![180.0, 60.0, 600.0],
            seed,
        }
    }

    /// A seconds-long smoke run of every part (CI).
    pub fn quick(seed: u64) -> Self {
        Settings {
            size: ProblemSize {
                accelerators: 4,
                models: 3,
                buckets: 3,
            },
            runs: 2,
            sweep_accelerators: vec![2, 4],
            sweep_runs: 1,
            solve_options: vec![controller_options()],
            melange_rates: vec![4.0],
            trace_hours: 3.0,
            startup_s: vec![180.0],
            seed,
        }
    }
}

/// What the controller uses: `plan_fleet` → `SolveOptions::default()`.
fn controller_options() -> (String, f64, f32) {
    let d = SolveOptions::default();
    (
        format!("default ({} ms limit, controller)", d.time_limit_s * 1e3),
        d.time_limit_s,
        d.mip_gap,
    )
}

/// Solve times of one option set at one size.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SolveTiming {
    /// Option set label.
    pub options: String,
    /// Accelerator types.
    pub accelerators: usize,
    /// Integer variables (targets).
    pub integer_variables: usize,
    /// Solves measured.
    pub runs: usize,
    /// Median solve time (policy → plan, including flattening and routing), ms.
    pub p50_ms: f64,
    /// 99th-percentile solve time (nearest rank: the slowest solve below 100 runs), ms.
    pub p99_ms: f64,
    /// Slowest solve, ms.
    pub max_ms: f64,
    /// `p50_ms` / the goal (≤ 1 meets it).
    pub p50_goal_ratio: f64,
    /// Solves the solver proved optimal.
    pub proven_optimal: usize,
    /// Median relative gap between the plan's objective and the LP lower bound, %.
    pub p50_gap_percent: f64,
    /// Median hourly cost of the plans.
    pub p50_cost_per_hour: f64,
    /// Median objective (hourly cost + churn penalty), what the solver minimises.
    pub p50_objective: f64,
    /// Median hourly cost of the greedy fill on the same instances.
    pub p50_greedy_cost_per_hour: f64,
    /// Every plan passed the independent demand check.
    pub all_feasible: bool,
}

/// One Mélange-style scenario at one rate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MixResult {
    /// Workload name.
    pub workload: String,
    /// Total request rate, req/s.
    pub rate: f64,
    /// Integer program: $/h.
    pub ilp_cost_per_hour: f64,
    /// Integer program: instances per GPU type, e.g. `3×a10g + 1×a100-80gb`.
    pub ilp_mix: String,
    /// Integer program proved optimal.
    pub ilp_proven_optimal: bool,
    /// Best single type: $/h.
    pub single_cost_per_hour: f64,
    /// Best single type: which and how many.
    pub single_mix: String,
    /// Greedy cost-ordered fill: $/h.
    pub greedy_cost_per_hour: f64,
    /// Greedy fill: instances per type.
    pub greedy_mix: String,
    /// (single − ILP) / single, %.
    pub savings_vs_single_percent: f64,
    /// (greedy − ILP) / greedy, %.
    pub savings_vs_greedy_percent: f64,
    /// Every one of the three plans passed the independent demand check.
    pub all_feasible: bool,
}

/// One autoscaler on the trace.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceResult {
    /// Autoscaler label.
    pub autoscaler: String,
    /// Start-up delay, s.
    pub startup_s: f64,
    /// What happened.
    #[serde(flatten)]
    pub outcome: TraceOutcome,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// What ran.
    pub settings: Settings,
    /// Headline solve times (one per option set) at `settings.size`.
    pub solve_time: Vec<SolveTiming>,
    /// Whether the median solve time of each option set met the goal.
    pub solve_goal_met: Vec<(String, bool)>,
    /// Solve time vs number of accelerator types.
    pub sweep: Vec<SolveTiming>,
    /// Cost against the baselines.
    pub mix: Vec<MixResult>,
    /// Trace shape.
    pub trace: TraceShape,
    /// Fleet shape.
    pub fleet: FleetShape,
    /// Trace runs, per start-up delay: KPA (default band), KPA (scale down below 50%), HPA
    /// (300 s stabilization), HPA (plain).
    pub trace_results: Vec<TraceResult>,
}

fn time_solves(
    size: ProblemSize,
    runs: usize,
    seed: u64,
    (label, time_limit_s, mip_gap): &(String, f64, f32),
) -> anyhow::Result<SolveTiming> {
    let options = SolveOptions {
        time_limit_s: *time_limit_s,
        mip_gap: *mip_gap,
    };
    let (mut times, mut gaps, mut costs, mut greedy) = (vec![], vec![], vec![], vec![]);
    let mut objectives = vec![];
    let (mut proven, mut feasible) = (0, true);
    let mut integer_variables = 0;
    for r in 0..runs {
        let instance = generate(size, seed.wrapping_add(r as u64));
        let started = Instant::now();
        let problem = Problem::new(&instance.policy, &instance.demand, &instance.current)?;
        let plan = solve_with(&problem, options)?;
        times.push(started.elapsed().as_nanos() as u64);
        integer_variables = problem.targets.len();
        proven += usize::from(plan.proven_optimal);
        let objective = problem.objective(&plan.counts());
        if let Some(lb) = plan.lower_bound {
            gaps.push(100.0 * (objective - lb) / objective.max(f64::MIN_POSITIVE));
        }
        costs.push(plan.cost_per_hour);
        objectives.push(objective);
        greedy.push(greedy_cost_ordered_fill(&problem).map_or(f64::NAN, |p| p.cost_per_hour));
        if let Err(e) = check_plan(&instance, &plan, &routing_of(&plan)) {
            eprintln!(
                "solve-time instance seed {}: plan fails the check: {e}",
                seed + r as u64
            );
            feasible = false;
        }
    }
    let times = summarize(times);
    Ok(SolveTiming {
        options: label.clone(),
        accelerators: size.accelerators,
        integer_variables,
        runs,
        p50_ms: times.p50_ms,
        p99_ms: times.p99_ms,
        max_ms: times.max_ms,
        p50_goal_ratio: times.p50_ms / SOLVE_GOAL_MS,
        proven_optimal: proven,
        p50_gap_percent: median(gaps),
        p50_cost_per_hour: median(costs),
        p50_objective: median(objectives),
        p50_greedy_cost_per_hour: median(greedy),
        all_feasible: feasible,
    })
}

fn describe(plan: &muster_solver::Plan) -> String {
    let parts: Vec<String> = plan
        .entries
        .iter()
        .filter(|e| e.instances > 0)
        .map(|e| format!("{}×{}", e.instances, e.accelerator))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" + ")
    }
}

fn savings(baseline: f64, ilp: f64) -> f64 {
    100.0 * (baseline - ilp) / baseline
}

fn mix_results(settings: &Settings) -> anyhow::Result<Vec<MixResult>> {
    let mut out = Vec::new();
    for workload in melange_workloads() {
        for &rate in &settings.melange_rates {
            let instance = melange_instance(&workload, rate);
            let problem = Problem::new(&instance.policy, &instance.demand, &instance.current)?;
            let ilp = solve_with(&problem, SolveOptions::default())?;
            let (_, single) = best_single_accelerator(&problem)?;
            let greedy = greedy_cost_ordered_fill(&problem)?;
            let mut feasible = true;
            for (name, plan, routing) in [
                ("integer program", &ilp, routing_of(&ilp)),
                (
                    "best single type",
                    &single,
                    proportional_routing(&instance, &single),
                ),
                (
                    "greedy fill",
                    &greedy,
                    proportional_routing(&instance, &greedy),
                ),
            ] {
                if let Err(e) = check_plan(&instance, plan, &routing) {
                    eprintln!(
                        "{} at {rate} req/s: {name} fails the check: {e}",
                        workload.name
                    );
                    feasible = false;
                }
            }
            out.push(MixResult {
                workload: workload.name.to_string(),
                rate,
                ilp_cost_per_hour: ilp.cost_per_hour,
                ilp_mix: describe(&ilp),
                ilp_proven_optimal: ilp.proven_optimal,
                single_cost_per_hour: single.cost_per_hour,
                single_mix: describe(&single),
                greedy_cost_per_hour: greedy.cost_per_hour,
                greedy_mix: describe(&greedy),
                savings_vs_single_percent: savings(single.cost_per_hour, ilp.cost_per_hour),
                savings_vs_greedy_percent: savings(greedy.cost_per_hour, ilp.cost_per_hour),
                all_feasible: feasible,
            });
        }
    }
    Ok(out)
}

/// The fleet of the trace: a 2-GPU instance (e.g. a 70B-class model, TP=2 on H100) serving
/// 10 req/s at its SLO.
fn trace_fleet(startup_s: f64) -> FleetShape {
    FleetShape {
        capacity_per_instance: 10.0,
        gpus_per_instance: 2,
        startup_s,
        min_instances: 1,
        max_instances: 200,
    }
}

/// The recommender as the controller configures it from an AutoscalingPolicy with default
/// `behavior` (60 s stable / 6 s panic windows, 2× panic threshold, 60 s panic hold, 0.8/0.3
/// hysteresis, 70% target, 120 s scale-down cooldown, 300 s stabilization), aimed at the
/// fleet's capacity.
fn kpa_config(fleet: &FleetShape) -> RecommenderConfig {
    RecommenderConfig {
        target_per_instance: fleet.capacity_per_instance,
        min_instances: fleet.min_instances,
        max_instances: fleet.max_instances,
        ..RecommenderConfig::default()
    }
}

/// Autoscalers per start-up delay: two KPA-style configurations, then two HPA baselines.
const TRACE_RUNS: usize = 4;
const KPA_RUNS: usize = 2;

fn trace_results(
    settings: &Settings,
    shape: &TraceShape,
) -> anyhow::Result<(FleetShape, Vec<TraceResult>)> {
    let demand = shape.demand();
    let mut results = Vec::new();
    for &startup_s in &settings.startup_s {
        let fleet = trace_fleet(startup_s);
        let config = kpa_config(&fleet);
        config.validate()?;
        // Both start sized for the first sample at the target utilisation.
        let per_instance = fleet.capacity_per_instance * config.target_utilisation;
        let initial = (demand[0] / per_instance).ceil() as u32;
        // The default hysteresis band scales down only below 30% utilisation; a narrower band
        // shows what that stability costs in GPU-hours.
        let narrow = RecommenderConfig {
            scale_down_threshold: 0.5,
            ..config.clone()
        };
        narrow.validate()?;
        let runs: [(&str, Box<dyn crate::solver_bench_trace::Autoscaler>); TRACE_RUNS] = [
            ("KPA-style (Muster)", Box::new(Kpa::new(config.clone()))),
            (
                "KPA-style, scale down below 50%",
                Box::new(Kpa::new(narrow)),
            ),
            (
                "HPA, 300 s downscale stabilization",
                Box::new(Hpa::new(per_instance, 300.0, &fleet)),
            ),
            ("HPA, plain", Box::new(Hpa::new(per_instance, 0.0, &fleet))),
        ];
        for (label, mut scaler) in runs {
            let outcome = simulate(&demand, shape.step_s, &fleet, initial, scaler.as_mut());
            results.push(TraceResult {
                autoscaler: label.to_string(),
                startup_s,
                outcome,
            });
        }
    }
    Ok((trace_fleet(settings.startup_s[0]), results))
}

/// Runs the benchmark.
pub fn run(settings: Settings) -> anyhow::Result<Report> {
    let mut solve_time = Vec::new();
    for options in &settings.solve_options {
        solve_time.push(time_solves(
            settings.size,
            settings.runs,
            settings.seed,
            options,
        )?);
    }
    let solve_goal_met = solve_time
        .iter()
        .map(|t| (t.options.clone(), t.p50_ms <= SOLVE_GOAL_MS))
        .collect();
    let mut sweep = Vec::new();
    for options in &settings.solve_options {
        for &accelerators in &settings.sweep_accelerators {
            let size = ProblemSize {
                accelerators,
                ..settings.size
            };
            sweep.push(time_solves(
                size,
                settings.sweep_runs,
                settings.seed,
                options,
            )?);
        }
    }
    let mix = mix_results(&settings)?;
    let mut trace = TraceShape::diurnal_with_spikes(settings.seed);
    trace.hours = settings.trace_hours;
    let (fleet, trace_results) = trace_results(&settings, &trace)?;
    Ok(Report {
        settings,
        solve_time,
        solve_goal_met,
        sweep,
        mix,
        trace,
        fleet,
        trace_results,
    })
}

/// The report as Markdown tables.
pub fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let size = r.settings.size;
    let _ = writeln!(
        s,
        "### Solve time: {} accelerator types × {} models × {} buckets (goal ≤ {SOLVE_GOAL_MS:.0} ms)\n",
        size.accelerators, size.models, size.buckets
    );
    s.push_str("| solver options | integer vars | runs | p50 ms | p99 ms | max ms | p50 / goal | goal | proven optimal | p50 gap to lower bound | p50 objective ($/h + churn) | p50 $/h (ILP) | p50 $/h (greedy) | plans meet demand |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|\n");
    for t in &r.solve_time {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {}/{} | {:.1}% | {:.1} | {:.1} | {:.1} | {} |",
            t.options,
            t.integer_variables,
            t.runs,
            t.p50_ms,
            t.p99_ms,
            t.max_ms,
            t.p50_goal_ratio,
            if t.p50_ms <= SOLVE_GOAL_MS {
                "pass"
            } else {
                "miss"
            },
            t.proven_optimal,
            t.runs,
            t.p50_gap_percent,
            t.p50_objective,
            t.p50_cost_per_hour,
            t.p50_greedy_cost_per_hour,
            yes(t.all_feasible)
        );
    }
    let _ = writeln!(
        s,
        "\n### Solve time vs accelerator types ({} models × {} buckets)\n",
        size.models, size.buckets
    );
    s.push_str("| solver options | types | integer vars | runs | p50 ms | p99 ms | proven optimal | p50 gap to lower bound |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for t in &r.sweep {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {}/{} | {:.1}% |",
            t.options,
            t.accelerators,
            t.integer_variables,
            t.runs,
            t.p50_ms,
            t.p99_ms,
            t.proven_optimal,
            t.runs,
            t.p50_gap_percent
        );
    }
    let gpus: Vec<String> = MELANGE_GPUS
        .iter()
        .map(|g| format!("{} {:.2}", g.name, g.price_per_hour))
        .collect();
    let _ = writeln!(
        s,
        "\n### Cost vs baselines, Mélange-style scenarios (one 7B-class model, $/GPU-h: {}; capacities are illustrative)\n",
        gpus.join(", ")
    );
    s.push_str("| workload | req/s | ILP $/h | ILP mix | best single type $/h | greedy fill $/h | saving vs single | saving vs greedy | all plans meet demand |\n");
    s.push_str("|---|---:|---:|---|---:|---:|---:|---:|---|\n");
    for m in &r.mix {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {:.2} ({}) | {:.2} ({}) | {:.1}% | {:.1}% | {} |",
            m.workload,
            m.rate,
            m.ilp_cost_per_hour,
            m.ilp_mix,
            m.single_cost_per_hour,
            m.single_mix,
            m.greedy_cost_per_hour,
            m.greedy_mix,
            m.savings_vs_single_percent,
            m.savings_vs_greedy_percent,
            yes(m.all_feasible)
        );
    }
    let max_single = r
        .mix
        .iter()
        .map(|m| m.savings_vs_single_percent)
        .fold(f64::NEG_INFINITY, f64::max);
    let _ = writeln!(
        s,
        "\nLargest saving vs the best single type: {max_single:.1}% (Mélange reports up to 77% on its profiled GPUs)."
    );
    let spikes: Vec<String> = r
        .trace
        .spikes
        .iter()
        .map(|sp| {
            format!(
                "{}× for {} min at {:.2} h",
                sp.factor, sp.minutes, sp.start_h
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\n### Replayed trace: {} h at {} s steps, {}→{} req/s diurnal, {:.0}% noise, spikes: {}; instance = {} GPUs serving {} req/s at SLO\n",
        r.trace.hours,
        r.trace.step_s,
        r.trace.trough_rps,
        r.trace.peak_rps,
        100.0 * r.trace.noise,
        spikes.join(", "),
        r.fleet.gpus_per_instance,
        r.fleet.capacity_per_instance
    );
    s.push_str("| autoscaler | start-up s | GPU-hours | SLO-violation min | unserved requests | instances started | scaling actions | peak instances | mean utilisation |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for t in &r.trace_results {
        let o = &t.outcome;
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.2} | {:.3}% | {} | {} | {} | {:.0}% |",
            t.autoscaler,
            t.startup_s,
            o.gpu_hours,
            o.slo_violation_minutes,
            100.0 * o.unserved_fraction,
            o.instances_started,
            o.scaling_actions,
            o.peak_instances,
            100.0 * o.mean_utilisation
        );
    }
    s.push_str("\n| start-up s | KPA-style | baseline | GPU-hours KPA / baseline | SLO-violation min KPA / baseline |\n");
    s.push_str("|---:|---|---|---:|---:|\n");
    for chunk in r.trace_results.chunks(TRACE_RUNS) {
        let (kpas, bases) = chunk.split_at(KPA_RUNS.min(chunk.len()));
        for kpa in kpas {
            for base in bases {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.3} | {} |",
                    kpa.startup_s,
                    kpa.autoscaler,
                    base.autoscaler,
                    kpa.outcome.gpu_hours / base.outcome.gpu_hours,
                    ratio(
                        kpa.outcome.slo_violation_minutes,
                        base.outcome.slo_violation_minutes
                    )
                );
            }
        }
    }
    s
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**NO**"
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.3} ({a:.2} / {b:.2})", a / b)
    } else if a == 0.0 {
        "both 0".into()
    } else {
        format!("{a:.2} / 0")
    }
}

/// Runs the benchmark, writes `solver.json` and `solver.md` under `out` and prints the tables.
pub fn run_and_write(settings: Settings, out: &Path) -> anyhow::Result<Report> {
    let report = run(settings)?;
    let md = markdown(&report);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("solver.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("solver.md"), &md)?;
    println!("{md}");
    println!("wrote {0}/solver.json and {0}/solver.md", out.display());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_benchmark_runs_every_part_and_plans_meet_demand() {
        let out = std::env::temp_dir().join(format!("muster-solver-bench-{}", std::process::id()));
        let report = run_and_write(Settings::quick(42), &out).unwrap();
        assert_eq!(report.solve_time.len(), 1);
        assert!(report
            .solve_time
            .iter()
            .all(|t| t.all_feasible && t.runs == 2));
        assert_eq!(report.sweep.len(), 2);
        assert_eq!(report.mix.len(), 3);
        for m in &report.mix {
            assert!(m.all_feasible, "{m:?}");
            // The integer program is never worse than a baseline that meets demand.
            assert!(
                m.ilp_cost_per_hour <= m.single_cost_per_hour + 1e-9,
                "{m:?}"
            );
            assert!(
                m.ilp_cost_per_hour <= m.greedy_cost_per_hour + 1e-9,
                "{m:?}"
            );
        }
        assert_eq!(report.trace_results.len(), TRACE_RUNS);
        for t in &report.trace_results {
            assert!(t.outcome.gpu_hours > 0.0, "{t:?}");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("solver.json")).unwrap()).unwrap();
        assert_eq!(json["mix"].as_array().unwrap().len(), 3);
        let md = std::fs::read_to_string(out.join("solver.md")).unwrap();
        assert!(
            md.contains("KPA-style (Muster)") && md.contains("best single type"),
            "{md}"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}
