//! `muster-bench`: benchmark drivers. `muster-bench router-overhead` (see
//! `hack/bench-router-overhead.sh`) and `muster-bench routing` (see `hack/bench-routing.sh`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use muster_bench::procs::find_nginx;
use muster_bench::router_overhead::{self, Binaries, Settings};

#[derive(Debug, Parser)]
#[command(name = "muster-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A zero-latency engine stand-in answering a canned completion (prints `LISTENING addr`).
    NullEngine {
        /// Listen address (loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Closed-loop load against one loopback address (for profiling a target by hand).
    Load {
        /// Target address (loopback only).
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// Model name in the request body.
        #[arg(long, default_value = "meta-llama/Meta-Llama-3-8B-Instruct")]
        model: String,
        /// Connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Latency added and peak req/s of muster-router vs nginx vs the engine alone.
    RouterOverhead {
        /// Directory holding muster-router and muster-engine-sim (default: this binary's).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// nginx binary (default: PATH, then /usr/sbin/nginx).
        #[arg(long)]
        nginx: Option<PathBuf>,
        /// Skip nginx.
        #[arg(long)]
        no_nginx: bool,
        /// Fixed request rate of the latency phase.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Seconds per latency phase.
        #[arg(long, default_value_t = 5.0)]
        latency_seconds: f64,
        /// Connections of the latency phase.
        #[arg(long, default_value_t = 32)]
        latency_connections: usize,
        /// Seconds per peak phase.
        #[arg(long, default_value_t = 4.0)]
        peak_seconds: f64,
        /// Connection counts tried for peak throughput (comma-separated).
        #[arg(long, default_value = "64", value_delimiter = ',')]
        peak_connections: Vec<usize>,
        /// Rounds; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Engine simulator time scale (huge = zero latency).
        #[arg(long, default_value_t = 1e6)]
        engine_time_scale: f64,
        /// nginx worker processes (default: logical CPUs).
        #[arg(long)]
        nginx_workers: Option<usize>,
        /// Upstreams to measure against (comma-separated): engine-sim, null-engine.
        #[arg(long, default_value = "engine-sim,null-engine", value_delimiter = ',')]
        upstreams: Vec<String>,
        /// Output directory for router-overhead.json and router-overhead.md.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Routing quality: every policy on SGLang's generated-shared-prefix workload through the
    /// real router to time-scaled engine simulators (writes routing.{json,md,png}).
    Routing(RoutingArgs),
    /// Solver and autoscaler: solve time, cost vs baselines, trace replay (writes solver.{json,md}).
    Solver {
        /// Smoke-sized run (seconds).
        #[arg(long)]
        quick: bool,
        /// Seed of the generated policies and the trace.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory for solver.json and solver.md.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
}

/// Flags of `muster-bench routing`; unset ones keep the full (or `--quick`) defaults.
#[derive(Debug, clap::Args)]
struct RoutingArgs {
    /// Directory holding muster-router and muster-engine-sim (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Output directory for routing.json, routing.md and routing.png.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Smoke-sized run (tiny shapes, two engines; seconds).
    #[arg(long)]
    quick: bool,
    /// Policies, comma-separated (random, round-robin, least-request, prefix+load,
    /// kv-events+load, session-affinity, oracle).
    #[arg(long, value_delimiter = ',', value_parser = parse_policy)]
    policies: Option<Vec<muster_bench::routing::Policy>>,
    /// Scenarios to run, comma-separated (long, short, pd).
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// Engines' built-in engine-sim profile (default: deepseek-r1-distill-qwen-7b-h100-80gb,
    /// Kthena's benchmark model and vLLM flags).
    #[arg(long)]
    profile: Option<String>,
    /// Engine processes.
    #[arg(long)]
    engines: Option<usize>,
    /// Engine --time-scale.
    #[arg(long)]
    time_scale: Option<f64>,
    /// Requests in flight at most (client side).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Poisson arrival rate, requests per model second.
    #[arg(long)]
    request_rate: Option<f64>,
    /// Share of all group prefixes one engine's KV cache has room for.
    #[arg(long)]
    prefix_fraction: Option<f64>,
    /// Weight of the prefix / KV-event scorer next to least-request's 1.
    #[arg(long)]
    prefix_weight: Option<f64>,
    /// `prefixCache.affinitySlack` of the cache-aware policies (default: the router's).
    #[arg(long)]
    affinity_slack: Option<f64>,
    /// Router prefill budget in tokens for the policies that keep prefixes together
    /// (default 8192; 0: none)
    #[arg(long)]
    prefill_budget: Option<u64>,
    /// Runs of the random baseline per scenario; its row is the median run (default 3, 1 with
    /// --quick).
    #[arg(long)]
    random_runs: Option<usize>,
    /// Groups per scenario.
    #[arg(long)]
    groups: Option<usize>,
    /// Prompts per group.
    #[arg(long)]
    prompts_per_group: Option<usize>,
    /// Workload seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep per-request traces (TSV) and each router's access log in this directory.
    #[arg(long)]
    trace: Option<PathBuf>,
}

fn parse_policy(s: &str) -> Result<muster_bench::routing::Policy, String> {
    muster_bench::routing::Policy::from_name(s)
}

fn bin_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match explicit {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    })
}

async fn routing(a: RoutingArgs) -> anyhow::Result<()> {
    use muster_bench::routing;
    let mut s = if a.quick {
        routing::Settings::quick()
    } else {
        routing::Settings::full()
    };
    if let Some(v) = a.policies {
        s.policies = v;
    }
    if let Some(name) = &a.profile {
        s = s.with_profile(name).context("--profile")?;
    }
    if let Some(names) = a.scenarios {
        for n in &names {
            anyhow::ensure!(
                s.scenarios.iter().any(|x| &x.name == n),
                "--scenarios: unknown scenario {n:?} (expected long, short or pd)"
            );
        }
        s.scenarios.retain(|x| names.contains(&x.name));
    }
    s.engines = a.engines.unwrap_or(s.engines);
    s.time_scale = a.time_scale.unwrap_or(s.time_scale);
    s.max_concurrency = a.max_concurrency.unwrap_or(s.max_concurrency);
    s.request_rate = a.request_rate.unwrap_or(s.request_rate);
    s.prefix_fraction = a.prefix_fraction.unwrap_or(s.prefix_fraction);
    s.prefix_weight = a.prefix_weight.unwrap_or(s.prefix_weight);
    s.affinity_slack = a.affinity_slack.or(s.affinity_slack);
    s.prefill_budget = a.prefill_budget.unwrap_or(s.prefill_budget);
    s.random_runs = a.random_runs.unwrap_or(s.random_runs);
    anyhow::ensure!(s.random_runs >= 1, "--random-runs must be at least 1");
    s.seed = a.seed.unwrap_or(s.seed);
    s.trace = a.trace.or(s.trace);
    for sc in &mut s.scenarios {
        sc.shape.groups = a.groups.unwrap_or(sc.shape.groups);
        sc.shape.prompts_per_group = a.prompts_per_group.unwrap_or(sc.shape.prompts_per_group);
    }
    anyhow::ensure!(s.engines >= 1, "--engines must be at least 1");
    anyhow::ensure!(
        s.time_scale.is_finite() && s.time_scale > 0.0,
        "--time-scale must be positive, got {}",
        s.time_scale
    );
    anyhow::ensure!(
        s.max_concurrency >= 1,
        "--max-concurrency must be at least 1"
    );
    anyhow::ensure!(
        s.request_rate > 0.0,
        "--request-rate must be positive, got {}",
        s.request_rate
    );
    anyhow::ensure!(
        s.prefix_fraction > 0.0 && s.prefix_fraction.is_finite(),
        "--prefix-fraction must be positive, got {}",
        s.prefix_fraction
    );
    for sc in &s.scenarios {
        anyhow::ensure!(
            sc.shape.groups >= 1 && sc.shape.prompts_per_group >= 1,
            "--groups and --prompts-per-group must be at least 1"
        );
    }
    let dir = bin_dir(a.bin_dir)?;
    let bins = routing::Binaries {
        router: dir.join("muster-router"),
        engine_sim: dir.join("muster-engine-sim"),
    };
    for b in [&bins.router, &bins.engine_sim] {
        anyhow::ensure!(b.exists(), "{} not found (build it first)", b.display());
    }
    let scratch = std::env::temp_dir().join(format!("muster-bench-routing-{}", std::process::id()));
    let report = routing::run(&bins, s, &scratch).await;
    let report = match report {
        Ok(r) => {
            let _ = std::fs::remove_dir_all(&scratch);
            r
        }
        Err(e) => {
            // Keep the process logs for a look.
            return Err(e.context(format!("process logs kept in {}", scratch.display())));
        }
    };
    std::fs::create_dir_all(&a.out)?;
    let md = routing::markdown(&report);
    std::fs::write(
        a.out.join("routing.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(a.out.join("routing.md"), &md)?;
    std::fs::write(a.out.join("routing.png"), routing::chart(&report))?;
    println!("{md}");
    println!(
        "wrote {0}/routing.json, {0}/routing.md and {0}/routing.png",
        a.out.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::NullEngine { listen } = cli.command {
        anyhow::ensure!(
            listen.ip().is_loopback(),
            "the null engine listens on loopback only"
        );
        // One thread, like a single engine process: it must not steal CPU from the proxy.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("LISTENING {}", listener.local_addr()?);
            muster_bench::null_engine::serve(listener).await;
            Ok(())
        });
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli.command))
}

async fn run(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::NullEngine { .. } => unreachable!("handled in main"),
        Cmd::Routing(a) => routing(a).await?,
        Cmd::Solver { quick, seed, out } => {
            use muster_bench::solver_bench::{run_and_write, Settings};
            let settings = if quick {
                Settings::quick(seed)
            } else {
                Settings::full(seed)
            };
            tokio::task::block_in_place(|| run_and_write(settings, &out))?;
        }
        Cmd::Load {
            addr,
            model,
            connections,
            seconds,
        } => {
            let target = muster_bench::load::Target {
                addr,
                path: "/v1/completions".into(),
                body: serde_json::json!({"model": model, "prompt": "hi", "max_tokens": 1})
                    .to_string()
                    .into(),
            };
            let r = muster_bench::load::closed_loop(
                &target,
                std::time::Duration::from_secs_f64(seconds),
                connections,
            )
            .await;
            println!(
                "{:.0} req/s ({} ok, {} errors{})",
                r.rps(),
                r.completed,
                r.errors,
                r.first_error
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default()
            );
        }
        Cmd::RouterOverhead {
            bin_dir,
            nginx,
            no_nginx,
            rate,
            latency_seconds,
            latency_connections,
            peak_seconds,
            peak_connections,
            rounds,
            engine_time_scale,
            nginx_workers,
            upstreams,
            out,
        } => {
            let dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .context("binary directory")?
                    .to_path_buf(),
            };
            let bins = Binaries {
                router: dir.join("muster-router"),
                engine_sim: dir.join("muster-engine-sim"),
                bench: std::env::current_exe()?,
                nginx: if no_nginx {
                    None
                } else {
                    find_nginx(nginx.as_deref())
                },
            };
            for b in [&bins.router, &bins.engine_sim] {
                anyhow::ensure!(
                    b.exists(),
                    "{} not found (build with --release first)",
                    b.display()
                );
            }
            if bins.nginx.is_none() && !no_nginx {
                eprintln!("warning: nginx not found; measuring without it (install: apt-get install -y nginx)");
            }
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let settings = Settings {
                rate,
                latency_seconds,
                latency_connections,
                peak_seconds,
                peak_connections,
                rounds: rounds.max(1),
                engine_time_scale,
                nginx_workers: nginx_workers.unwrap_or(cpus),
                upstreams,
            };
            let scratch = std::env::temp_dir().join(format!("muster-bench-{}", std::process::id()));
            let report = router_overhead::run(&bins, settings, &scratch).await;
            let _ = std::fs::remove_dir_all(&scratch);
            let report = report?;
            std::fs::create_dir_all(&out)?;
            let md = router_overhead::markdown(&report);
            std::fs::write(
                out.join("router-overhead.json"),
                serde_json::to_vec_pretty(&report)?,
            )?;
            std::fs::write(out.join("router-overhead.md"), &md)?;
            println!("{md}");
            println!(
                "wrote {0}/router-overhead.json and {0}/router-overhead.md",
                out.display()
            );
        }
    }
    Ok(())
}
