//! Router overhead: latency added by `muster-router` (and by nginx as a plain reverse proxy)
//! in front of a zero-latency upstream, and peak requests per second through each, measured
//! side by side in one run and printed as ratios.
//!
//! Two upstreams, each a section of the report:
//! * the engine simulator at a huge `--time-scale` (zero modelled latency: its steps take
//!   nanoseconds and skip Tokio's millisecond timer), and
//! * a null engine (`muster-bench null-engine`) answering a canned completion at once, which
//!   makes sub-millisecond overhead visible.
//!
//! Targets per upstream: the upstream directly, the router with its access log on (the
//! default), the router with `--no-access-log`, and nginx (`proxy_pass` with upstream
//! keep-alive) with a buffered access log and without one; each router row is compared with
//! the nginx that logs as it does. Each round measures every target (in a rotating order, to
//! spread machine drift) at a fixed request rate for latency, then closed-loop for peak
//! throughput; the report takes the median of the rounds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::Serialize;

use crate::load::{closed_loop, fixed_rate, Target};
use crate::procs::{free_port, nginx_config, tree_cpu_seconds, wait_listening, Proc};
use crate::stats::{median, summarize, Summary};

/// Target names: the router as deployed (access log on), the router without its access log,
/// and nginx with and without one.
const ROUTER: &str = "muster-router";
const ROUTER_QUIET: &str = "muster-router --no-access-log";
const NGINX_LOGGING: &str = "nginx (access log)";
const NGINX_QUIET: &str = "nginx (no access log)";

/// Model name the simulator serves (its built-in profile's).
const ENGINE_MODEL: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

/// Settings of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Fixed request rate for the latency phase.
    pub rate: f64,
    /// Length of one latency phase.
    pub latency_seconds: f64,
    /// Connections used by the latency phase.
    pub latency_connections: usize,
    /// Length of one peak phase.
    pub peak_seconds: f64,
    /// Connection counts tried in the peak phase (the best is kept).
    pub peak_connections: Vec<usize>,
    /// Rounds (medians are reported).
    pub rounds: usize,
    /// Engine simulator time scale (huge = zero modelled latency).
    pub engine_time_scale: f64,
    /// nginx worker processes.
    pub nginx_workers: usize,
    /// Upstreams measured: `engine-sim`, `null-engine`.
    pub upstreams: Vec<String>,
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `muster-router`.
    pub router: PathBuf,
    /// `muster-engine-sim`.
    pub engine_sim: PathBuf,
    /// `muster-bench` itself (runs the null engine).
    pub bench: PathBuf,
    /// nginx, if available.
    pub nginx: Option<PathBuf>,
}

/// One target's results.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    /// Target name.
    pub name: String,
    /// Latency at the fixed rate (median over rounds of each statistic).
    pub latency: Summary,
    /// Achieved request rate in the latency phase.
    pub achieved_rps: f64,
    /// Failed requests over all phases.
    pub errors: u64,
    /// First error seen, if any.
    pub first_error: Option<String>,
    /// Requests that started > 1 ms late in the latency phase.
    pub late: u64,
    /// Peak successful requests per second (median over rounds of the best connection count).
    pub peak_rps: f64,
    /// Latency p50 minus the direct p50, ms.
    pub added_p50_ms: f64,
    /// Latency p99 minus the direct p99, ms.
    pub added_p99_ms: f64,
    /// Peak req/s relative to nginx's.
    pub peak_vs_nginx: Option<f64>,
    /// Peak req/s relative to the upstream alone.
    pub peak_vs_direct: f64,
    /// CPU time the target's own processes spent per request in the peak phase, µs (for
    /// "direct", the upstream's). Less sensitive to a busy machine than req/s.
    pub cpu_us_per_request: f64,
}

/// Results against one upstream.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Upstream name.
    pub upstream: String,
    /// Per target.
    pub targets: Vec<TargetResult>,
    /// The goals: latency for the default router (access log on), peak for each router
    /// row against the nginx that logs as it does.
    pub goals: Vec<Goal>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Benchmark name.
    pub benchmark: &'static str,
    /// Logical CPUs of the machine (everything shares them: load generator, proxy, upstream).
    pub cpus: usize,
    /// nginx version line, if nginx ran.
    pub nginx_version: Option<String>,
    /// Settings.
    pub settings: Settings,
    /// One section per upstream.
    pub sections: Vec<Section>,
}

/// A goal and whether the run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What.
    pub goal: String,
    /// Measured.
    pub measured: String,
    /// Met.
    pub met: bool,
}

fn router_config(engine: SocketAddr) -> String {
    format!(
        "modelServers:\n- metadata: {{name: engine}}\n  spec:\n    inferenceEngine: vLLM\n    workloadSelector: {{matchLabels: {{app: engine}}}}\n    workloadPort: {{port: {}}}\n  endpoints: [\"{engine}\"]\nmodelRoutes:\n- metadata: {{name: engine}}\n  spec: {{modelName: \"{ENGINE_MODEL}\", rules: [{{targetModels: [{{modelServerName: engine}}]}}]}}\n",
        engine.port()
    )
}

fn start_router(
    bin: &Path,
    dir: &Path,
    name: &str,
    engine: SocketAddr,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, router_config(engine))?;
    Proc::spawn(
        Command::new(bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&cfg)
            .args(extra)
            .env("RUST_LOG", "info"),
        &["LISTENING"],
    )
}

/// Starts nginx as a reverse proxy to `upstream` on a free port, its files under `dir`.
async fn start_nginx(
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    workers: usize,
    access_log: bool,
) -> anyhow::Result<NginxGuard> {
    std::fs::create_dir_all(dir)?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::write(
        dir.join("nginx.conf"),
        nginx_config(dir, listen, upstream, workers, access_log),
    )?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start nginx")?;
    let guard = NginxGuard {
        proc: Proc::wrap(child, listen),
        bin: bin.to_path_buf(),
        dir: dir.to_path_buf(),
    };
    wait_listening(listen).await?;
    Ok(guard)
}

fn start_upstream(bins: &Binaries, settings: &Settings, kind: &str) -> anyhow::Result<Proc> {
    match kind {
        "engine-sim" => Proc::spawn(
            Command::new(&bins.engine_sim)
                .args(["--listen", "127.0.0.1:0", "--time-scale"])
                .arg(settings.engine_time_scale.to_string())
                .args(["--max-num-seqs", "1024"])
                .env("RUST_LOG", "error"),
            &["LISTENING"],
        ),
        "null-engine" => Proc::spawn(
            Command::new(&bins.bench).args(["null-engine", "--listen", "127.0.0.1:0"]),
            &["LISTENING"],
        ),
        other => bail!("unknown upstream {other:?} (use engine-sim or null-engine)"),
    }
}

/// Runs the benchmark.
pub async fn run(bins: &Binaries, settings: Settings, scratch: &Path) -> anyhow::Result<Report> {
    std::fs::create_dir_all(scratch)?;
    let nginx_version = match &bins.nginx {
        Some(n) => {
            let v = Command::new(n).arg("-v").output()?;
            Some(String::from_utf8_lossy(&v.stderr).trim().to_string())
        }
        None => None,
    };
    let mut sections = Vec::new();
    for upstream in &settings.upstreams {
        eprintln!("== upstream: {upstream}");
        sections.push(run_section(bins, &settings, &scratch.join(upstream), upstream).await?);
    }
    Ok(Report {
        benchmark: "router-overhead",
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        nginx_version,
        settings,
        sections,
    })
}

async fn run_section(
    bins: &Binaries,
    settings: &Settings,
    scratch: &Path,
    upstream: &str,
) -> anyhow::Result<Section> {
    std::fs::create_dir_all(scratch)?;
    let engine = start_upstream(bins, settings, upstream)?;
    let engine_addr = engine.addrs[0];
    let router = start_router(&bins.router, scratch, "router", engine_addr, &[])?;
    let quiet = start_router(
        &bins.router,
        scratch,
        "router-quiet",
        engine_addr,
        &["--no-access-log"],
    )?;

    // (name, address, process whose CPU time is charged to the target, whether it writes an
    // access log)
    let mut targets: Vec<(String, SocketAddr, u32, bool)> = vec![
        ("direct".into(), engine_addr, engine.pid(), false),
        (ROUTER.into(), router.addrs[0], router.pid(), true),
        (ROUTER_QUIET.into(), quiet.addrs[0], quiet.pid(), false),
    ];
    let mut nginxes = Vec::new();
    if let Some(nginx) = &bins.nginx {
        for (name, logs) in [(NGINX_LOGGING, true), (NGINX_QUIET, false)] {
            let dir = scratch.join(if logs { "nginx-log" } else { "nginx" });
            let p = start_nginx(nginx, &dir, engine_addr, settings.nginx_workers, logs).await?;
            targets.push((name.into(), p.proc.addrs[0], p.proc.pid(), logs));
            nginxes.push(p);
        }
    }

    let body = Bytes::from(
        serde_json::json!({"model": ENGINE_MODEL, "prompt": "hi", "max_tokens": 1}).to_string(),
    );
    let target = |addr: SocketAddr| Target {
        addr,
        path: "/v1/completions".into(),
        body: body.clone(),
    };
    // Check every target answers before measuring anything.
    for (name, addr, _, _) in &targets {
        let r = closed_loop(&target(*addr), Duration::from_millis(300), 2).await;
        if r.completed == 0 {
            bail!("{name} at {addr} answers no request: {:?}", r.first_error);
        }
    }

    #[derive(Default)]
    struct Acc {
        summaries: Vec<Summary>,
        achieved: Vec<f64>,
        peaks: Vec<f64>,
        cpu_per_request: Vec<f64>,
        errors: u64,
        late: u64,
        first_error: Option<String>,
    }
    let mut acc: Vec<Acc> = targets.iter().map(|_| Acc::default()).collect();
    let latency = Duration::from_secs_f64(settings.latency_seconds);
    let peak = Duration::from_secs_f64(settings.peak_seconds);
    for round in 0..settings.rounds {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (name, addr, pid, _) = &targets[i];
            let t = target(*addr);
            // Warm connections and pools.
            closed_loop(
                &t,
                Duration::from_millis(300),
                settings.latency_connections.min(8),
            )
            .await;
            let r = fixed_rate(&t, settings.rate, latency, settings.latency_connections).await;
            let a = &mut acc[i];
            a.errors += r.errors;
            a.late += r.late;
            if a.first_error.is_none() {
                a.first_error = r.first_error.clone();
            }
            a.achieved
                .push(r.latencies_ns.len() as f64 / r.elapsed.as_secs_f64());
            let s = summarize(r.latencies_ns);
            eprintln!(
                "round {} {name:<30} {:>6.0} req/s  p50 {:.3} ms  p99 {:.3} ms  errors {}",
                round + 1,
                a.achieved.last().expect("pushed"),
                s.p50_ms,
                s.p99_ms,
                r.errors
            );
            a.summaries.push(s);
            let mut best = 0f64;
            for &c in &settings.peak_connections {
                let cpu_before = tree_cpu_seconds(*pid);
                let p = closed_loop(&t, peak, c).await;
                if let (Some(b), Some(a2)) = (cpu_before, tree_cpu_seconds(*pid)) {
                    if p.completed > 0 {
                        a.cpu_per_request.push((a2 - b) / p.completed as f64 * 1e6);
                    }
                }
                a.errors += p.errors;
                if a.first_error.is_none() {
                    a.first_error = p.first_error.clone();
                }
                eprintln!(
                    "round {} {name:<30} peak with {c:>3} connections: {:>7.0} req/s",
                    round + 1,
                    p.rps()
                );
                best = best.max(p.rps());
            }
            a.peaks.push(best);
        }
    }

    let med = |v: &[Summary], f: fn(&Summary) -> f64| median(v.iter().map(f).collect());
    let mut results: Vec<TargetResult> = targets
        .iter()
        .zip(&acc)
        .map(|((name, _, _, _), a)| TargetResult {
            name: name.clone(),
            latency: Summary {
                count: a.summaries.iter().map(|s| s.count).sum(),
                mean_ms: med(&a.summaries, |s| s.mean_ms),
                p50_ms: med(&a.summaries, |s| s.p50_ms),
                p90_ms: med(&a.summaries, |s| s.p90_ms),
                p99_ms: med(&a.summaries, |s| s.p99_ms),
                p999_ms: med(&a.summaries, |s| s.p999_ms),
                max_ms: med(&a.summaries, |s| s.max_ms),
            },
            achieved_rps: median(a.achieved.clone()),
            errors: a.errors,
            first_error: a.first_error.clone(),
            late: a.late,
            peak_rps: median(a.peaks.clone()),
            added_p50_ms: 0.0,
            added_p99_ms: 0.0,
            peak_vs_nginx: None,
            peak_vs_direct: 0.0,
            cpu_us_per_request: median(a.cpu_per_request.clone()),
        })
        .collect();
    let direct = results[0].clone();
    let peak_of = |name: &str| results.iter().find(|r| r.name == name).map(|r| r.peak_rps);
    let (nginx_logging, nginx_quiet) = (peak_of(NGINX_LOGGING), peak_of(NGINX_QUIET));
    for (r, (_, _, _, logs)) in results.iter_mut().zip(&targets) {
        r.added_p50_ms = r.latency.p50_ms - direct.latency.p50_ms;
        r.added_p99_ms = r.latency.p99_ms - direct.latency.p99_ms;
        // Like for like: a target that logs each request against the nginx that does too.
        r.peak_vs_nginx = if *logs { nginx_logging } else { nginx_quiet }.map(|n| r.peak_rps / n);
        r.peak_vs_direct = r.peak_rps / direct.peak_rps;
    }
    let router = results[1].clone();
    let quiet = results[2].clone();
    let mut goals = vec![
        Goal {
            goal: format!("p50 added ≤ 0.2 ms at {:.0} req/s", settings.rate),
            measured: format!("{:.3} ms", router.added_p50_ms),
            met: router.added_p50_ms <= 0.2,
        },
        Goal {
            goal: format!("p99 added ≤ 1 ms at {:.0} req/s", settings.rate),
            measured: format!("{:.3} ms", router.added_p99_ms),
            met: router.added_p99_ms <= 1.0,
        },
    ];
    for (r, against) in [(&router, NGINX_LOGGING), (&quiet, NGINX_QUIET)] {
        if let Some(ratio) = r.peak_vs_nginx {
            goals.push(Goal {
                goal: format!("peak req/s of {} ≥ 0.8 × {against}", r.name),
                measured: format!("{ratio:.2} ×"),
                met: ratio >= 0.8,
            });
        }
    }
    Ok(Section {
        upstream: upstream.to_string(),
        targets: results,
        goals,
    })
}

/// The report as Markdown tables.
pub fn markdown(r: &Report) -> String {
    let s = &r.settings;
    let mut out = String::new();
    out.push_str("# Router overhead\n\n");
    out.push_str(&format!(
        "Non-streaming `/v1/completions` with `max_tokens: 1` over HTTP/1.1 keep-alive. Latency at {:.0} req/s \
over {} connections ({} s per round); peak = best closed-loop req/s over {:?} connections ({} s each); \
median of {} rounds, targets in rotating order. {} logical CPUs shared by the load generator, the proxy and \
the upstream. CPU µs/req: CPU time of the target's own processes (every thread; nginx master and \
workers; for `direct`, the upstream) per request in the peak phase, which a busy machine distorts less than req/s. {}\n",
        s.rate,
        s.latency_connections,
        s.latency_seconds,
        s.peak_connections,
        s.peak_seconds,
        s.rounds,
        r.cpus,
        r.nginx_version
            .as_ref()
            .map(|v| format!("nginx: `{v}`, {} workers, upstream keep-alive; once with no access log and once \
with the `combined` log through a 64 KiB buffer. `peak vs nginx` compares like with like: a target that logs each \
request against the nginx that logs, the others against the nginx that does not.", s.nginx_workers))
            .unwrap_or_else(|| "nginx was not available.".into()),
    ));
    for sec in &r.sections {
        let what = match sec.upstream.as_str() {
            "engine-sim" => format!(
                "engine simulator at `--time-scale {}` (zero modelled latency)",
                s.engine_time_scale
            ),
            "null-engine" => "null engine (canned completion, answered at once)".to_string(),
            other => other.to_string(),
        };
        out.push_str(&format!("\n## Upstream: {what}\n\n"));
        out.push_str("| target | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | req/s at rate | peak req/s | peak vs nginx | peak vs direct | CPU µs/req | errors |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for t in &sec.targets {
            out.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} | {:.0} | {:.0} | {} | {:.2} × | {:.1} | {} |\n",
                t.name,
                t.latency.p50_ms,
                t.latency.p90_ms,
                t.latency.p99_ms,
                t.latency.p999_ms,
                t.added_p50_ms,
                t.added_p99_ms,
                t.achieved_rps,
                t.peak_rps,
                t.peak_vs_nginx
                    .map(|x| format!("{x:.2} ×"))
                    .unwrap_or_else(|| "–".into()),
                t.peak_vs_direct,
                t.cpu_us_per_request,
                t.errors,
            ));
        }
        out.push_str("\n| goal | measured | met |\n|---|---:|:---:|\n");
        for g in &sec.goals {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                g.goal,
                g.measured,
                if g.met { "yes" } else { "**no**" }
            ));
        }
    }
    out
}

/// nginx, stopped through its master process when dropped: killing the master outright (as
/// [`Proc`] does) leaves its workers running.
struct NginxGuard {
    proc: Proc,
    bin: PathBuf,
    dir: PathBuf,
}

impl Drop for NginxGuard {
    fn drop(&mut self) {
        // `-s stop` signals the master from its pid file; it stops the workers, then exits.
        let _ = Command::new(&self.bin)
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .args(["-s", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.proc.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
