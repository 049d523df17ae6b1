//! Routing quality (DESIGN §7, issue 7): the real `muster-router` in standalone mode in front
//! of N real `muster-engine-sim` processes, driven with SGLang's `generated-shared-prefix`
//! workload, once per routing policy, all in one run.
//!
//! Every (scenario, policy) pair gets fresh engines (cold caches, zeroed counters) and a fresh
//! router whose default profile (`--scheduler-config`) is the policy. The engines run
//! `--time-scale` times faster than real time, and their KV capacity is set so that one engine
//! holds only a fraction of all group prefixes (see [`kv_blocks_per_engine`]); every time in
//! the report is in *model* seconds (wall time × time scale), the time the engines' roofline
//! model runs in. Cache hit rates come from the engines' own `vllm:prefix_cache_*` counters.
//!
//! The oracle is perfect group affinity with balance, enforced through the same router: one
//! ModelServer per engine, and a ModelRoute whose header-matched rules send group `g` (header
//! `x-bench-engine: g mod N`) to engine `g mod N`; groups have equal sizes, so every engine
//! gets the same number of requests and only ever sees its own groups' prefixes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use muster_engine_sim::profile::{Profile, BUILTIN_PROFILES};
use muster_engine_sim::tokenize::{TextCodec, DEFAULT_TOKENIZER_JSON};
use serde::Serialize;

use crate::engine_metrics::{http_get, scrape, EngineCounters};
use crate::gsp::{generate, poisson_arrivals, GspRequest, GspShape, Vocabulary, SEPARATOR};
use crate::procs::{free_port, Proc};
use crate::stats::{summarize, Summary};
use crate::stream_load::{self, Planned};

/// The engine-sim profile of the full run: the model and vLLM flags of Kthena's benchmark
/// (`kthena.md` §6) on the GPU our other profile models, since Kthena does not disclose theirs.
pub const KTHENA_PROFILE: &str = "deepseek-r1-distill-qwen-7b-h100-80gb";

/// Kthena's published ratios on the long shape (LR + KVCacheAware vs Random; `kthena.md` §6).
pub const KTHENA_THROUGHPUT_RATIO: f64 = 32.22 / 11.81;
/// Kthena's mean TTFT ratio (0.57 s / 2.15 s).
pub const KTHENA_TTFT_RATIO: f64 = 0.57 / 2.15;

/// A routing policy under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Uniform random endpoint.
    Random,
    /// Endpoints in turn.
    RoundRobin,
    /// Fewest in-flight requests/tokens plus engine queue.
    LeastRequest,
    /// Router-side approximate prefix index + least-request.
    PrefixLoad,
    /// Engine KV events (precise index) + least-request.
    KvEventsLoad,
    /// Group id as session id: rendezvous affinity with bounded load + least-request.
    SessionAffinity,
    /// Perfect group affinity with balance (header-matched routes, one server per engine).
    Oracle,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 7] = [
        Policy::Random,
        Policy::RoundRobin,
        Policy::LeastRequest,
        Policy::PrefixLoad,
        Policy::KvEventsLoad,
        Policy::SessionAffinity,
        Policy::Oracle,
    ];

    /// Name in flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::RoundRobin => "round-robin",
            Policy::LeastRequest => "least-request",
            Policy::PrefixLoad => "prefix+load",
            Policy::KvEventsLoad => "kv-events+load",
            Policy::SessionAffinity => "session-affinity",
            Policy::Oracle => "oracle",
        }
    }

    /// Parses a [`Policy::name`].
    pub fn from_name(s: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown policy {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }

    /// Whether the policy is one of the cache-aware ones the goals are about.
    pub fn is_cache_aware(self) -> bool {
        matches!(self, Policy::PrefixLoad | Policy::KvEventsLoad)
    }

    /// The router's scheduler profile (YAML) for this policy.
    /// `affinity_slack` overrides the router's default `prefixCache.affinitySlack`.
    pub fn profile(
        self,
        prefix_weight: f64,
        block_size: usize,
        capacity_blocks: usize,
        affinity_slack: Option<f64>,
    ) -> String {
        let slack = affinity_slack
            .map(|v| format!(", affinitySlack: {v}"))
            .unwrap_or_default();
        let cache = format!(
            "prefixCache: {{blockSize: {block_size}, capacityBlocks: {capacity_blocks}{slack}}}\n"
        );
        match self {
            Policy::Random | Policy::Oracle => "plugins: [{name: random, weight: 1}]\n".into(),
            Policy::RoundRobin => "plugins: [{name: round-robin, weight: 1}]\n".into(),
            Policy::LeastRequest => "plugins: [{name: least-request, weight: 1}]\n".into(),
            Policy::PrefixLoad => format!(
                "plugins: [{{name: prefix-cache, weight: {prefix_weight}}}, {{name: least-request, weight: 1}}]\n{cache}"
            ),
            Policy::KvEventsLoad => format!(
                "plugins: [{{name: kv-events, weight: {prefix_weight}}}, {{name: least-request, weight: 1}}]\n{cache}"
            ),
            Policy::SessionAffinity => "plugins: [{name: session-affinity, weight: 2}, {name: least-request, weight: 1}]\nsessionAffinity: {header: x-session-id}\n".into(),
        }
    }

    /// Extra request headers for a request of `group`.
    fn headers(self, group: usize, engines: usize) -> Vec<(String, String)> {
        match self {
            Policy::SessionAffinity => vec![("x-session-id".into(), format!("group-{group}"))],
            Policy::Oracle => vec![(ORACLE_HEADER.into(), (group % engines).to_string())],
            _ => Vec::new(),
        }
    }
}

/// Header the oracle's ModelRoute rules match on.
const ORACLE_HEADER: &str = "x-bench-engine";

/// A named workload shape.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// `long`, `short` or `pd` (or anything else).
    pub name: String,
    /// The shape.
    pub shape: GspShape,
    /// Prefill/decode: each of the `engines` PD groups is one prefill and one decode engine
    /// (NIXL hand-off); only `random` (random pairing) and `prefix+load` (Muster's pairing)
    /// run.
    pub pd: bool,
}

impl Scenario {
    /// `long` and `short` on whole engines, then `pd` on PD groups.
    fn all(long: GspShape, short: GspShape, pd: GspShape) -> Vec<Scenario> {
        let scenario = |name: &str, shape, pd| Scenario {
            name: name.into(),
            shape,
            pd,
        };
        vec![
            scenario("long", long, false),
            scenario("short", short, false),
            scenario("pd", pd, true),
        ]
    }
}

/// Policies a PD scenario compares.
const PD_POLICIES: [Policy; 2] = [Policy::Random, Policy::PrefixLoad];

/// Settings of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The engines' built-in engine-sim profile (`--profile`).
    pub profile: String,
    /// The model that profile serves.
    pub model: String,
    /// Its tokens per KV block; the router's prefix index hashes blocks of the same size.
    pub block_size: usize,
    /// Engine processes.
    pub engines: usize,
    /// Engine `--time-scale`.
    pub time_scale: f64,
    /// Client-side cap on requests in flight.
    pub max_concurrency: usize,
    /// Poisson arrival rate in requests per model second.
    pub request_rate: f64,
    /// Share of all group prefixes one engine's KV cache has room for (beyond the private
    /// blocks of its share of in-flight requests).
    pub prefix_fraction: f64,
    /// Weight of the prefix/KV-event scorer next to least-request (weight 1).
    pub prefix_weight: f64,
    /// `prefixCache.affinitySlack` of the cache-aware profiles; `None` keeps the router's default.
    pub affinity_slack: Option<f64>,
    /// `router.muster.dev/prefill-budget-tokens` of the policies that meter prefill
    /// ([`Policy::is_cache_aware`]); 0 runs every policy without.
    pub prefill_budget: u64,
    /// Times the `random` baseline runs per scenario. Its routing draws are unseeded, and its
    /// mean TTFT moved by ±20 % between runs of one build (686–1,053 ms on the long shape), so
    /// a ratio against a single run is partly luck; the row is the median run (by mean TTFT)
    /// and every run is listed under the table.
    pub random_runs: usize,
    /// Workload and arrival seed.
    pub seed: u64,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Policies, in order (`random` is needed for the ratios).
    pub policies: Vec<Policy>,
    /// Router `--metrics-interval` (real time).
    pub metrics_interval_ms: u64,
    /// Where to keep per-request traces: `SCENARIO-POLICY.tsv` (request, group, sent, TTFT,
    /// cached tokens) and the router's access log (`…-router.log`, requests tagged
    /// `x-request-id: rN`) for every row. `None`: no traces, access log off.
    pub trace: Option<PathBuf>,
    /// Whether this is the smoke-sized run.
    pub quick: bool,
}

impl Settings {
    /// The full benchmark. The long shape is Kthena's workload as published (`kthena.md` §6):
    /// 256 groups × 32 prompts, 4096 / 256 / 128 tokens, 800 req/s capped at 300 in flight,
    /// 3 engines with Kthena's model and vLLM flags. The short shape and the PD scenario keep
    /// the token lengths and the concurrency with fewer prompts per group, so that the run fits
    /// in about half an hour (see docs/benchmarks.md).
    pub fn full() -> Settings {
        let long = GspShape {
            groups: 256,
            prompts_per_group: 32,
            system_len: 4096,
            question_len: 256,
            output_len: 128,
        };
        let short = GspShape {
            prompts_per_group: 4,
            system_len: 256,
            question_len: 4096,
            ..long
        };
        let pd = GspShape {
            prompts_per_group: 8,
            ..long
        };
        Settings {
            profile: String::new(),
            model: String::new(),
            block_size: 0,
            engines: 3,
            // Real time: at 5 × the 2-core development machine was host-bound (every policy,
            // the oracle at 88% hits included, ran at the same 8–9 req/s).
            time_scale: 1.0,
            max_concurrency: 300,
            request_rate: 800.0,
            prefix_fraction: 0.5,
            prefix_weight: 2.0,
            affinity_slack: None,
            // One long-shape prompt per engine step: the shortest steps, so the most ordering
            // (docs/benchmarks.md has the sweep).
            prefill_budget: 8192,
            random_runs: 3,
            seed: 1,
            scenarios: Scenario::all(long, short, pd),
            policies: Policy::ALL.to_vec(),
            metrics_interval_ms: 50,
            trace: None,
            quick: false,
        }
        .with_profile(KTHENA_PROFILE)
        .expect("the Kthena profile is built in")
    }

    /// The engines run engine-sim's built-in profile `name`; the model and block size follow.
    pub fn with_profile(mut self, name: &str) -> anyhow::Result<Settings> {
        let Some(p) = Profile::named(name) else {
            let known: Vec<&str> = BUILTIN_PROFILES.iter().map(|(n, _)| *n).collect();
            bail!(
                "unknown engine-sim profile {name:?} (built-in: {})",
                known.join(", ")
            );
        };
        self.profile = name.to_string();
        self.model = p.model;
        self.block_size = p.block_size;
        Ok(self)
    }

    /// A smoke-sized run (seconds): tiny shapes of the same form on two engines.
    pub fn quick() -> Settings {
        let long = GspShape {
            groups: 6,
            prompts_per_group: 4,
            system_len: 512,
            question_len: 32,
            output_len: 8,
        };
        let short = GspShape {
            system_len: 32,
            question_len: 512,
            ..long
        };
        Settings {
            engines: 2,
            time_scale: 10.0,
            max_concurrency: 8,
            request_rate: 200.0,
            scenarios: Scenario::all(long, short, long),
            random_runs: 1,
            quick: true,
            ..Settings::full()
        }
    }
}

/// KV blocks per engine: room for `prefix_fraction` of all group prefixes, plus the private
/// blocks (question, output, one partial block) of the engine's fair share of in-flight
/// requests. A policy that scatters groups must also pin the prefixes of whatever groups its
/// in-flight requests belong to, which is the trade-off the benchmark is about.
pub fn kv_blocks_per_engine(settings: &Settings, shape: &GspShape) -> usize {
    let private = (shape.question_len + shape.output_len).div_ceil(settings.block_size) + 1;
    let share = settings.max_concurrency.div_ceil(settings.engines);
    (settings.prefix_fraction * prefix_blocks(settings, shape) as f64).ceil() as usize
        + share * private
}

/// Full KV blocks of all the shape's group prefixes together.
fn prefix_blocks(settings: &Settings, shape: &GspShape) -> usize {
    shape.groups * (shape.system_len / settings.block_size)
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `muster-router`.
    pub router: PathBuf,
    /// `muster-engine-sim`.
    pub engine_sim: PathBuf,
}

/// Latency figures in model milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

impl From<Summary> for Latency {
    fn from(s: Summary) -> Self {
        Latency {
            mean_ms: s.mean_ms,
            p50_ms: s.p50_ms,
            p99_ms: s.p99_ms,
        }
    }
}

/// What one policy achieved on one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Requests that completed.
    pub completed: usize,
    /// Requests that failed.
    pub errors: usize,
    /// First failure, if any.
    pub first_error: Option<String>,
    /// Model seconds from the first arrival to the end of the last stream.
    pub duration_s: f64,
    /// Wall seconds of the same.
    pub wall_s: f64,
    /// Completed requests per model second.
    pub req_per_s: f64,
    /// Output tokens per model second.
    pub output_tok_per_s: f64,
    /// Time to first token at the client, model ms.
    pub ttft: Latency,
    /// The same without the opening burst: requests after the first `max_concurrency` in
    /// arrival order. Those arrive together at cold caches and wait seconds whatever the
    /// policy, which can dominate a whole run's mean.
    pub ttft_after_burst: Latency,
    /// End-to-end latency at the client, model ms.
    pub e2e: Latency,
    /// Σ hits / Σ queries of the engines' prefix-cache counters over the run.
    pub cache_hit_rate: f64,
    /// Σ cached / Σ prompt tokens from the responses' usage (a cross-check of the above).
    pub usage_cached_fraction: f64,
    /// Mean prompt tokens per request (engine usage).
    pub mean_prompt_tokens: f64,
    /// Requests each engine finished (engine counters), in engine order.
    pub requests_per_engine: Vec<f64>,
    /// Busiest engine's requests ÷ the mean (1 = perfectly even).
    pub load_spread: f64,
    /// Engine preemptions (KV exhausted).
    pub preemptions: f64,
    /// Throughput ÷ random's.
    pub throughput_vs_random: Option<f64>,
    /// Mean TTFT ÷ random's.
    pub ttft_vs_random: Option<f64>,
    /// Mean TTFT after the opening burst ÷ random's.
    pub ttft_after_burst_vs_random: Option<f64>,
    /// Throughput ÷ the oracle's.
    pub throughput_vs_oracle: Option<f64>,
}

/// One run of a repeated policy.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunSummary {
    /// Completed requests per model second.
    pub req_per_s: f64,
    /// Mean time to first token, model ms.
    pub ttft_mean_ms: f64,
}

/// One row of a scenario's table.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    /// Policy.
    pub policy: Policy,
    /// Its name.
    pub name: &'static str,
    /// Router scheduler profile used.
    pub profile: String,
    /// Results, unless skipped.
    pub measured: Option<Measured>,
    /// Every run of a policy run more than once ([`Settings::random_runs`]), in run order;
    /// `measured` is the median of them by mean TTFT. Empty for a single run.
    pub runs: Vec<RunSummary>,
    /// Why it was not measured.
    pub skipped: Option<String>,
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

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario.
    pub scenario: Scenario,
    /// Requests.
    pub requests: usize,
    /// Tokens the engine tokenizer counts in the first request's prompt.
    pub prompt_tokens: usize,
    /// KV blocks per engine.
    pub kv_blocks_per_engine: usize,
    /// Blocks of all group prefixes together.
    pub prefix_blocks_total: usize,
    /// Per policy.
    pub policies: Vec<PolicyResult>,
    /// The goals.
    pub goals: Vec<Goal>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Benchmark name.
    pub benchmark: &'static str,
    /// Logical CPUs (everything shares them).
    pub cpus: usize,
    /// `/proc/loadavg` when the run started (other work on the machine).
    pub loadavg_at_start: String,
    /// Settings.
    pub settings: Settings,
    /// Per scenario.
    pub scenarios: Vec<ScenarioResult>,
}

/// Progress lines go here (stderr).
fn progress(msg: &str) {
    eprintln!("{msg}");
}

/// Runs every scenario and policy.
pub async fn run(bins: &Binaries, settings: Settings, scratch: &Path) -> anyhow::Result<Report> {
    std::fs::create_dir_all(scratch)?;
    let codec = TextCodec::builtin()?;
    let vocab = Vocabulary::from_codec(&codec)?;
    let loadavg_at_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut scenarios = Vec::new();
    for scenario in &settings.scenarios {
        let requests = generate(&vocab, &scenario.shape, settings.seed);
        let first = requests.first().context("empty workload")?;
        let prompt_tokens = Vocabulary::count(&codec, &first.prompt)?;
        let want = scenario.shape.system_len
            + Vocabulary::count(&codec, SEPARATOR)?
            + scenario.shape.question_len;
        anyhow::ensure!(
            prompt_tokens == want,
            "generated prompt has {prompt_tokens} tokens, expected {want}"
        );
        let kv_blocks = kv_blocks_per_engine(&settings, &scenario.shape);
        let mut results = Vec::new();
        let policies: Vec<Policy> = settings
            .policies
            .iter()
            .copied()
            .filter(|p| !scenario.pd || PD_POLICIES.contains(p))
            .collect();
        for (i, &policy) in policies.iter().enumerate() {
            let profile = policy.profile(
                settings.prefix_weight,
                settings.block_size,
                kv_blocks,
                settings.affinity_slack,
            );
            let workload = Workload {
                requests: &requests,
                kv_blocks,
                pd: scenario.pd,
            };
            let repeats = if policy == Policy::Random {
                settings.random_runs.max(1)
            } else {
                1
            };
            let mut measured_runs = Vec::new();
            let mut skipped = None;
            for k in 1..=repeats {
                let mut name = format!("{}-{}", scenario.name, policy.name());
                if k > 1 {
                    name.push_str(&format!("-{k}"));
                }
                let dir = scratch.join(name);
                std::fs::create_dir_all(&dir)?;
                let t = Instant::now();
                let outcome =
                    run_policy(bins, &settings, &workload, policy, &profile, &dir).await?;
                let mut tag = format!(
                    "[{} {}/{}] {:<17}",
                    scenario.name,
                    i + 1,
                    policies.len(),
                    policy.name()
                );
                if repeats > 1 {
                    tag.push_str(&format!(" run {k}/{repeats}"));
                }
                match outcome {
                    Ok(m) => {
                        progress(&format!(
                            "{tag} {:>6.2} req/s  TTFT mean {:>8.1} ms  p99 {:>8.1} ms  hit {:>5.1}%  per engine {:?}  errors {}  ({:.1} s wall)",
                            m.req_per_s,
                            m.ttft.mean_ms,
                            m.ttft.p99_ms,
                            m.cache_hit_rate * 100.0,
                            m.requests_per_engine,
                            m.errors,
                            t.elapsed().as_secs_f64()
                        ));
                        measured_runs.push(m);
                    }
                    Err(why) => {
                        progress(&format!("{tag} skipped: {why}"));
                        skipped = Some(why);
                        break;
                    }
                }
            }
            let runs = if measured_runs.len() > 1 {
                measured_runs
                    .iter()
                    .map(|m| RunSummary {
                        req_per_s: m.req_per_s,
                        ttft_mean_ms: m.ttft.mean_ms,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            results.push(PolicyResult {
                policy,
                name: policy.name(),
                profile,
                measured: median_by_ttft(measured_runs),
                runs,
                skipped,
            });
        }
        add_ratios(&mut results);
        let goals = goals(&scenario.name, &results);
        scenarios.push(ScenarioResult {
            scenario: scenario.clone(),
            requests: requests.len(),
            prompt_tokens,
            kv_blocks_per_engine: kv_blocks,
            prefix_blocks_total: prefix_blocks(&settings, &scenario.shape),
            policies: results,
            goals,
        });
    }
    Ok(Report {
        benchmark: "routing",
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg_at_start,
        settings,
        scenarios,
    })
}

/// The run with the median mean TTFT (the lower middle one of an even count).
fn median_by_ttft(mut runs: Vec<Measured>) -> Option<Measured> {
    runs.sort_by(|a, b| a.ttft.mean_ms.total_cmp(&b.ttft.mean_ms));
    let mid = runs.len().saturating_sub(1) / 2;
    runs.into_iter().nth(mid)
}

/// Starts one engine.
fn start_engine(
    bins: &Binaries,
    settings: &Settings,
    kv_blocks: usize,
    kv_events_port: Option<u16>,
    role: &str,
    log: &Path,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&bins.engine_sim);
    cmd.args(["--listen", "127.0.0.1:0", "--role", role, "--time-scale"])
        .arg(settings.time_scale.to_string())
        .args(["--profile", &settings.profile])
        .arg("--num-gpu-blocks")
        .arg(kv_blocks.to_string())
        .env("RUST_LOG", "warn");
    if let Some(p) = kv_events_port {
        cmd.arg("--kv-events-port").arg(p.to_string());
    }
    Proc::spawn_logged(&mut cmd, &["LISTENING"], log)
}

/// The standalone router configuration: one ModelServer over every engine, or (oracle) one
/// per engine with header-matched rules.
pub fn router_config(
    model: &str,
    policy: Policy,
    engines: &[SocketAddr],
    kv_events: &[Option<u16>],
    prefill_budget: Option<u64>,
) -> String {
    let annotations = prefill_budget
        .map(|t| format!(", annotations: {{router.muster.dev/prefill-budget-tokens: \"{t}\"}}"))
        .unwrap_or_default();
    let server = |name: &str, eps: &[(usize, SocketAddr)]| {
        let mut s = format!(
            "- metadata: {{name: {name}{annotations}}}\n  spec:\n    model: \"{model}\"\n    inferenceEngine: vLLM\n    workloadSelector: {{matchLabels: {{app: {name}}}}}\n    workloadPort: {{port: 8000}}\n  endpoints:\n"
        );
        for (i, a) in eps {
            s.push_str(&format!("  - {{address: \"{a}\", name: engine-{i}"));
            if let Some(Some(p)) = kv_events.get(*i) {
                s.push_str(&format!(", kvEvents: \"tcp://127.0.0.1:{p}\""));
            }
            s.push_str("}\n");
        }
        s
    };
    let all: Vec<(usize, SocketAddr)> = engines.iter().copied().enumerate().collect();
    let mut out = String::from("modelServers:\n");
    if policy == Policy::Oracle {
        for e in &all {
            out.push_str(&server(&format!("engine-{}", e.0), std::slice::from_ref(e)));
        }
        out.push_str(&format!(
            "modelRoutes:\n- metadata: {{name: bench}}\n  spec:\n    modelName: \"{model}\"\n    rules:\n"
        ));
        for (i, _) in &all {
            out.push_str(&format!(
                "    - name: engine-{i}\n      modelMatch: {{headers: {{{ORACLE_HEADER}: {{exact: \"{i}\"}}}}}}\n      targetModels: [{{modelServerName: engine-{i}}}]\n"
            ));
        }
    } else {
        out.push_str(&server("engines", &all));
        out.push_str(&format!(
            "modelRoutes:\n- metadata: {{name: bench}}\n  spec:\n    modelName: \"{model}\"\n    rules: [{{targetModels: [{{modelServerName: engines}}]}}]\n"
        ));
    }
    out
}

/// Prefill legs in flight per decoder in the PD scenario: Kthena's 65,536-token step budget
/// holds 15 of the long shape's 4,354-token prompts, so the router's default of 8 (sized for
/// vLLM's default 8,192-token budget) would leave prefill steps half empty.
const PD_MAX_PREFILL_PER_DECODE: u32 = 16;

/// How long a PD request may queue for a prefill slot: the opening burst puts 100 requests on
/// each decoder at once, more than the router's default 10 s drains.
const PD_PREFILL_QUEUE_TIMEOUT: &str = "60s";

/// The PD configuration: one ModelServer whose first half of `engines` prefills and second
/// half decodes, engine `i` and `n + i` sharing PD group `i`, handing KV over NIXL-style.
pub fn pd_router_config(model: &str, engines: &[SocketAddr]) -> String {
    let n = engines.len() / 2;
    let mut out = format!(
        "modelServers:\n- metadata:\n    name: engines\n    annotations:\n      router.muster.dev/max-prefill-per-decode: \"{PD_MAX_PREFILL_PER_DECODE}\"\n      router.muster.dev/prefill-queue-timeout: {PD_PREFILL_QUEUE_TIMEOUT}\n  spec:\n    model: \"{model}\"\n    inferenceEngine: vLLM\n    kvConnector: {{type: nixl}}\n    workloadSelector:\n      matchLabels: {{app: engines}}\n      pdGroup: {{groupKey: group, prefillLabels: {{role: prefill}}, decodeLabels: {{role: decode}}}}\n    workloadPort: {{port: 8000}}\n  endpoints:\n"
    );
    for (i, a) in engines.iter().enumerate() {
        let role = if i < n { "prefill" } else { "decode" };
        out.push_str(&format!(
            "  - {{address: \"{a}\", name: {role}-{g}, labels: {{role: {role}, group: g{g}}}}}\n",
            g = i % n
        ));
    }
    out.push_str(&format!(
        "modelRoutes:\n- metadata: {{name: bench}}\n  spec:\n    modelName: \"{model}\"\n    rules: [{{targetModels: [{{modelServerName: engines}}]}}]\n"
    ));
    out
}

fn request_body(model: &str, r: &GspRequest) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": model,
            "prompt": r.prompt,
            "max_tokens": r.max_tokens,
            "ignore_eos": true,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
        .to_string(),
    )
}

/// One scenario's requests and engine shape.
struct Workload<'a> {
    requests: &'a [GspRequest],
    /// KV blocks per engine.
    kv_blocks: usize,
    /// Prefill/decode groups instead of whole engines.
    pd: bool,
}

/// Runs one policy on fresh processes. `Ok(Err(why))`: the router does not offer the policy.
async fn run_policy(
    bins: &Binaries,
    settings: &Settings,
    workload: &Workload<'_>,
    policy: Policy,
    profile: &str,
    dir: &Path,
) -> anyhow::Result<Result<Measured, String>> {
    let Workload {
        requests,
        kv_blocks,
        pd,
    } = *workload;
    let n = settings.engines;
    let mut kv_ports = Vec::new();
    let mut engines = Vec::new();
    // PD: engines 0..n prefill, n..2n decode; engine i and n + i form PD group i.
    let roles: Vec<&str> = if pd {
        [vec!["prefill"; n], vec!["decode"; n]].concat()
    } else {
        vec!["both"; n]
    };
    for (i, role) in roles.iter().enumerate() {
        let port = (policy == Policy::KvEventsLoad)
            .then(free_port)
            .transpose()?;
        kv_ports.push(port);
        engines.push(start_engine(
            bins,
            settings,
            kv_blocks,
            port,
            role,
            &dir.join(format!("engine-{i}.log")),
        )?);
    }
    let engine_addrs: Vec<SocketAddr> = engines.iter().map(|e| e.addrs[0]).collect();
    let cfg = dir.join("router.yaml");
    let config = if pd {
        pd_router_config(&settings.model, &engine_addrs)
    } else {
        router_config(
            &settings.model,
            policy,
            &engine_addrs,
            &kv_ports,
            // The budget needs a prefix scorer to know what a request must compute (the
            // router refuses it otherwise). With random, round-robin and least-request most
            // requests are cold and the engines prefill-bound, where a budget only moves
            // waiting from decode into TTFT (docs/benchmarks.md), so they run without, as in
            // Kthena's benchmark.
            (policy.is_cache_aware() && settings.prefill_budget > 0)
                .then_some(settings.prefill_budget),
        )
    };
    std::fs::write(&cfg, config)?;
    let profile_path = dir.join("profile.yaml");
    std::fs::write(&profile_path, profile)?;
    let interval = format!("{}ms", settings.metrics_interval_ms);
    let mut cmd = Command::new(&bins.router);
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(&cfg)
        .arg("--scheduler-config")
        .arg(&profile_path)
        .args(["--metrics-interval", &interval]);
    if settings.trace.is_some() {
        cmd.env("RUST_LOG", "warn,muster_router::access=info");
    } else {
        cmd.arg("--no-access-log").env("RUST_LOG", "warn");
    }
    if policy.is_cache_aware() {
        // The engines' own tokenizer, so router and engines count the same tokens.
        let tokenizer = dir.join("tokenizer.json");
        std::fs::write(&tokenizer, DEFAULT_TOKENIZER_JSON)?;
        cmd.arg("--tokenizer").arg(&tokenizer);
    }
    let router = Proc::spawn_logged(&mut cmd, &["LISTENING", "ADMIN"], &dir.join("router.log"));
    let router = match router {
        Ok(r) => r,
        Err(e) => {
            let text = format!("{e:#}");
            // A profile naming a plugin this router build lacks, or the tokenizer flag it
            // does not know, is refused at start.
            let refusal = ["unknown variant", "unknown field", "unexpected argument"];
            if policy.is_cache_aware() && refusal.iter().any(|r| text.contains(r)) {
                return Ok(Err(format!(
                    "this muster-router build does not offer it ({})",
                    text.lines()
                        .find(|l| refusal.iter().any(|r| l.contains(r)))
                        .unwrap_or("refused")
                        .trim()
                )));
            }
            return Err(e.context(format!("starting muster-router for {}", policy.name())));
        }
    };
    let (public, admin) = (router.addrs[0], router.addrs[1]);
    wait_ready(admin).await?;

    // One tiny request through the route proves the path works before anything is measured.
    let probe = Planned {
        arrival: Duration::ZERO,
        body: Bytes::from(
            serde_json::json!({"model": settings.model, "prompt": "probe", "max_tokens": 1, "stream": true})
                .to_string(),
        ),
        headers: policy.headers(0, n),
    };
    let p = stream_load::run(public, vec![probe], 1).await;
    if let Some(e) = &p.outcomes[0].error {
        bail!("{}: probe request failed: {e}", policy.name());
    }

    let mut before = Vec::new();
    for a in &engine_addrs {
        before.push(scrape(*a).await?);
    }
    let arrivals = poisson_arrivals(
        requests.len(),
        settings.request_rate * settings.time_scale,
        settings.seed,
    );
    let plan: Vec<Planned> = requests
        .iter()
        .zip(&arrivals)
        .enumerate()
        .map(|(i, (r, &t))| {
            let mut headers = policy.headers(r.group, n);
            if settings.trace.is_some() {
                headers.push(("x-request-id".into(), format!("r{i}")));
            }
            Planned {
                arrival: Duration::from_secs_f64(t),
                body: request_body(&settings.model, r),
                headers,
            }
        })
        .collect();
    let run = stream_load::run(public, plan, settings.max_concurrency).await;
    let mut deltas = Vec::new();
    for (a, b) in engine_addrs.iter().zip(&before) {
        deltas.push(scrape(*a).await?.since(b));
    }
    drop(router);
    drop(engines);
    if let Some(trace) = &settings.trace {
        // The row's scratch directory is named SCENARIO-POLICY.
        let tag = dir.file_name().unwrap_or_default().to_string_lossy();
        write_trace(trace, &tag, requests, &run, &dir.join("router.log"))?;
    }
    Ok(Ok(measure(
        &run,
        &deltas,
        settings.time_scale,
        settings.max_concurrency,
    )))
}

/// Writes one row's per-request trace and a copy of its router log (see [`Settings::trace`]).
fn write_trace(
    trace: &Path,
    tag: &str,
    requests: &[GspRequest],
    run: &stream_load::Run,
    router_log: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(trace)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut tsv = String::from("request\tgroup\tsent_ms\tttft_ms\tcached_tokens\terror\n");
    for (i, (o, r)) in run.outcomes.iter().zip(requests).enumerate() {
        tsv.push_str(&format!(
            "r{i}\t{}\t{:.1}\t{}\t{}\t{}\n",
            r.group,
            ms(o.sent),
            o.ttft.map_or("-".into(), |t| format!("{:.1}", ms(t))),
            o.cached_tokens,
            o.error.as_deref().unwrap_or("").replace(['\t', '\n'], " ")
        ));
    }
    std::fs::write(trace.join(format!("{tag}.tsv")), tsv)?;
    std::fs::copy(router_log, trace.join(format!("{tag}-router.log")))
        .with_context(|| format!("copying {}", router_log.display()))?;
    Ok(())
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if http_get(admin, "/readyz").await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("muster-router at {admin} never became ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Turns client outcomes and engine counter deltas into the report's figures.
pub fn measure(
    run: &stream_load::Run,
    engines: &[EngineCounters],
    time_scale: f64,
    burst: usize,
) -> Measured {
    let ok: Vec<_> = run.outcomes.iter().filter(|o| o.error.is_none()).collect();
    let model_ns = |d: Duration| (d.as_secs_f64() * time_scale * 1e9) as u64;
    let ttft = summarize(ok.iter().filter_map(|o| o.ttft).map(model_ns).collect());
    // Outcomes are in arrival order.
    let after_burst = summarize(
        run.outcomes
            .iter()
            .skip(burst)
            .filter(|o| o.error.is_none())
            .filter_map(|o| o.ttft)
            .map(model_ns)
            .collect(),
    );
    let e2e = summarize(ok.iter().map(|o| model_ns(o.latency)).collect());
    let duration_s = run.elapsed.as_secs_f64() * time_scale;
    let output: u64 = ok.iter().map(|o| o.completion_tokens).sum();
    let prompt: u64 = ok.iter().map(|o| o.prompt_tokens).sum();
    let cached: u64 = ok.iter().map(|o| o.cached_tokens).sum();
    let queries: f64 = engines.iter().map(|e| e.prefix_queries).sum();
    let hits: f64 = engines.iter().map(|e| e.prefix_hits).sum();
    let per_engine: Vec<f64> = engines.iter().map(|e| e.requests).collect();
    let mean = per_engine.iter().sum::<f64>() / per_engine.len().max(1) as f64;
    let max = per_engine.iter().copied().fold(0.0, f64::max);
    Measured {
        completed: ok.len(),
        errors: run.outcomes.len() - ok.len(),
        first_error: run.outcomes.iter().find_map(|o| o.error.clone()),
        duration_s,
        wall_s: run.elapsed.as_secs_f64(),
        req_per_s: ok.len() as f64 / duration_s,
        output_tok_per_s: output as f64 / duration_s,
        ttft: ttft.into(),
        ttft_after_burst: after_burst.into(),
        e2e: e2e.into(),
        cache_hit_rate: if queries > 0.0 { hits / queries } else { 0.0 },
        usage_cached_fraction: if prompt > 0 {
            cached as f64 / prompt as f64
        } else {
            0.0
        },
        mean_prompt_tokens: prompt as f64 / ok.len().max(1) as f64,
        requests_per_engine: per_engine,
        load_spread: if mean > 0.0 { max / mean } else { f64::NAN },
        preemptions: engines.iter().map(|e| e.preemptions).sum(),
        throughput_vs_random: None,
        ttft_vs_random: None,
        ttft_after_burst_vs_random: None,
        throughput_vs_oracle: None,
    }
}

fn add_ratios(results: &mut [PolicyResult]) {
    let find = |p: Policy, results: &[PolicyResult]| {
        results
            .iter()
            .find(|r| r.policy == p)
            .and_then(|r| r.measured.clone())
    };
    let random = find(Policy::Random, results);
    let oracle = find(Policy::Oracle, results);
    for r in results.iter_mut() {
        if let Some(m) = r.measured.as_mut() {
            if let Some(rnd) = &random {
                m.throughput_vs_random = Some(m.req_per_s / rnd.req_per_s);
                m.ttft_vs_random = Some(m.ttft.mean_ms / rnd.ttft.mean_ms);
                m.ttft_after_burst_vs_random =
                    Some(m.ttft_after_burst.mean_ms / rnd.ttft_after_burst.mean_ms);
            }
            if let Some(o) = &oracle {
                m.throughput_vs_oracle = Some(m.req_per_s / o.req_per_s);
            }
        }
    }
}

/// The goals for a scenario named `long` or `short`, for every cache-aware policy that
/// was measured; a skipped one appears as a missed goal with the reason.
pub fn goals(scenario: &str, results: &[PolicyResult]) -> Vec<Goal> {
    let mut goals = Vec::new();
    for r in results.iter().filter(|r| r.policy.is_cache_aware()) {
        let Some(m) = &r.measured else {
            goals.push(Goal {
                goal: format!("{}: measured", r.name),
                measured: format!("skipped: {}", r.skipped.as_deref().unwrap_or("not run")),
                met: false,
            });
            continue;
        };
        let (Some(thr), Some(ttft)) = (m.throughput_vs_random, m.ttft_vs_random) else {
            continue;
        };
        let x = |v: f64| format!("{v:.2} ×");
        match scenario {
            "long" => {
                goals.push(Goal {
                    goal: format!("{}: throughput ≥ 3 × random", r.name),
                    measured: x(thr),
                    met: thr >= 3.0,
                });
                goals.push(Goal {
                    goal: format!("{}: mean TTFT ≤ 0.2 × random", r.name),
                    measured: x(ttft),
                    met: ttft <= 0.2,
                });
                if let Some(steady) = m.ttft_after_burst_vs_random {
                    goals.push(Goal {
                        goal: format!(
                            "{}: the same after the opening burst (not the issue's wording)",
                            r.name
                        ),
                        measured: x(steady),
                        met: steady <= 0.2,
                    });
                }
                if let Some(o) = m.throughput_vs_oracle {
                    goals.push(Goal {
                        goal: format!("{}: throughput within 10% of the oracle", r.name),
                        measured: x(o),
                        met: o >= 0.9,
                    });
                }
                goals.push(Goal {
                    goal: format!(
                        "{}: beats Kthena's {KTHENA_THROUGHPUT_RATIO:.2} × throughput vs random",
                        r.name
                    ),
                    measured: x(thr),
                    met: thr >= KTHENA_THROUGHPUT_RATIO,
                });
                goals.push(Goal {
                    goal: format!(
                        "{}: beats Kthena's {KTHENA_TTFT_RATIO:.3} × mean TTFT vs random",
                        r.name
                    ),
                    measured: x(ttft),
                    met: ttft <= KTHENA_TTFT_RATIO,
                });
            }
            "pd" => goals.push(Goal {
                goal: format!(
                    "{}: paired routing beats random pairing on mean TTFT",
                    r.name
                ),
                measured: x(ttft),
                met: ttft < 1.0,
            }),
            "short" => goals.push(Goal {
                goal: format!(
                    "{}: throughput no worse than random (≥ 0.95 ×, 5% noise allowance)",
                    r.name
                ),
                measured: x(thr),
                met: thr >= 0.95,
            }),
            _ => {}
        }
    }
    goals
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let s = &r.settings;
    let mut out = String::from("# Routing quality\n\n");
    out.push_str(&format!(
        "SGLang `generated-shared-prefix` workload, streaming `/v1/completions` (`ignore_eos`), through the real \
`muster-router` (standalone) to {} `muster-engine-sim` processes at `--time-scale {}`; times are model time \
(wall × {}). Poisson arrivals at {} req/s (model time) capped at {} in flight; seed {}. KV per engine: room for \
{:.0}% of all group prefixes plus the private blocks of its share of in-flight requests. Fresh engines and \
router per row. {} {} logical CPUs shared by everything (load average at start: {}); a busy machine \
distorts absolute figures, ratios within one run less.{}\n",
        s.engines,
        s.time_scale,
        s.time_scale,
        s.request_rate,
        s.max_concurrency,
        s.seed,
        s.prefix_fraction * 100.0,
        if s.prefill_budget > 0 {
            format!(
                "Prefill budget (`router.muster.dev/prefill-budget-tokens`) {} on prefix+load and kv-events+load; \
the other policies and the PD scenario run without.",
                s.prefill_budget
            )
        } else {
            "No prefill budget.".to_string()
        },
        r.cpus,
        r.loadavg_at_start,
        if s.quick { " **Quick (smoke) run: tiny shapes, figures mean nothing.**" } else { "" },
    ));
    for sc in &r.scenarios {
        let sh = &sc.scenario.shape;
        out.push_str(&format!(
            "\n## {} shape: {} groups × {} prompts, system {} / question {} / output {} tokens\n\n\
{}{} requests of {} prompt tokens; {} KV blocks of {} tokens per engine, all prefixes together {} blocks.\n\n",
            sc.scenario.name,
            sh.groups,
            sh.prompts_per_group,
            sh.system_len,
            sh.question_len,
            sh.output_len,
            if sc.scenario.pd {
                format!("Prefill/decode: {} PD groups of one prefill and one decode engine (NIXL hand-off, \
`random` = random pairing within groups, `prefix+load` = Muster's joint pairing); engines listed prefill first. ", s.engines)
            } else {
                String::new()
            },
            sc.requests,
            sc.prompt_tokens,
            sc.kv_blocks_per_engine,
            s.block_size,
            sc.prefix_blocks_total,
        ));
        out.push_str("| policy | req/s | out tok/s | TTFT mean ms | TTFT p50 ms | TTFT p99 ms | TTFT mean after burst ms | E2E mean ms | E2E p99 ms | cache hit | requests per engine | spread | thr × random | TTFT × random | after-burst TTFT × random | thr × oracle | errors |\n");
        out.push_str(
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
        );
        let ratio = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{x:.2}"));
        for p in &sc.policies {
            match &p.measured {
                Some(m) => out.push_str(&format!(
                    "| {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1}% | {} | {:.2} | {} | {} | {} | {} | {} |\n",
                    p.name,
                    m.req_per_s,
                    m.output_tok_per_s,
                    m.ttft.mean_ms,
                    m.ttft.p50_ms,
                    m.ttft.p99_ms,
                    m.ttft_after_burst.mean_ms,
                    m.e2e.mean_ms,
                    m.e2e.p99_ms,
                    m.cache_hit_rate * 100.0,
                    m.requests_per_engine
                        .iter()
                        .map(|x| format!("{x:.0}"))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    m.load_spread,
                    ratio(m.throughput_vs_random),
                    ratio(m.ttft_vs_random),
                    ratio(m.ttft_after_burst_vs_random),
                    ratio(m.throughput_vs_oracle),
                    m.errors,
                )),
                None => out.push_str(&format!(
                    "| {} | skipped: {} |||||||||||||||\n",
                    p.name,
                    p.skipped.as_deref().unwrap_or("not run")
                )),
            }
        }
        for p in sc.policies.iter().filter(|p| !p.runs.is_empty()) {
            let list =
                |f: fn(&RunSummary) -> String| p.runs.iter().map(f).collect::<Vec<_>>().join(" / ");
            out.push_str(&format!(
                "\n{} ran {} times, the row is the median by mean TTFT: mean TTFT {} ms, {} req/s.\n",
                p.name,
                p.runs.len(),
                list(|r| format!("{:.1}", r.ttft_mean_ms)),
                list(|r| format!("{:.2}", r.req_per_s)),
            ));
        }
        if !sc.goals.is_empty() {
            out.push_str("\n| goal | measured | met |\n|---|---:|:---:|\n");
            for g in &sc.goals {
                out.push_str(&format!(
                    "| {} | {} | {} |\n",
                    g.goal,
                    g.measured,
                    if g.met { "pass" } else { "**miss**" }
                ));
            }
        }
    }
    out
}

/// Colour per policy (cache-aware ones stand out, the oracle is grey).
fn color(p: Policy) -> crate::chart::Rgb {
    match p {
        Policy::Random => [214, 96, 77],
        Policy::RoundRobin => [244, 165, 130],
        Policy::LeastRequest => [253, 219, 199],
        Policy::PrefixLoad => [67, 147, 195],
        Policy::KvEventsLoad => [33, 102, 172],
        Policy::SessionAffinity => [146, 197, 222],
        Policy::Oracle => [150, 150, 150],
    }
}

/// The PNG chart: per scenario, throughput and mean TTFT per policy.
pub fn chart(r: &Report) -> Vec<u8> {
    use crate::chart::{bar_panel, Bar, Canvas};
    let (pw, ph) = (760, 330);
    let mut c = Canvas::new(pw * 2, ph * r.scenarios.len().max(1) + 40);
    c.text(
        10,
        10,
        &format!(
            "ROUTING QUALITY: {} ENGINES, MODEL TIME (WALL × {}){}",
            r.settings.engines,
            r.settings.time_scale,
            if r.settings.quick { ", QUICK RUN" } else { "" }
        ),
        2,
        [0, 0, 0],
    );
    for (i, sc) in r.scenarios.iter().enumerate() {
        let sh = &sc.scenario.shape;
        let what = format!(
            "{} ({}/{}/{})",
            sc.scenario.name, sh.system_len, sh.question_len, sh.output_len
        );
        let bars = |f: &dyn Fn(&Measured) -> (f64, String)| -> Vec<Bar> {
            sc.policies
                .iter()
                .map(|p| {
                    let (value, value_text) = match &p.measured {
                        Some(m) => {
                            let (v, t) = f(m);
                            (Some(v), t)
                        }
                        None => (None, "SKIPPED".to_string()),
                    };
                    Bar {
                        label: p.name.to_string(),
                        value,
                        value_text,
                        color: color(p.policy),
                    }
                })
                .collect()
        };
        let y = 40 + i * ph;
        bar_panel(
            &mut c,
            0,
            y,
            pw,
            ph,
            &format!("{what}: THROUGHPUT REQ/S"),
            &bars(&|m| {
                let x = m
                    .throughput_vs_random
                    .map_or(String::new(), |x| format!(" ({x:.2}×)"));
                (m.req_per_s, format!("{:.1}{x}", m.req_per_s))
            }),
        );
        bar_panel(
            &mut c,
            pw,
            y,
            pw,
            ph,
            &format!("{what}: MEAN TTFT MS"),
            &bars(&|m| {
                let x = m
                    .ttft_vs_random
                    .map_or(String::new(), |x| format!(" ({x:.2}×)"));
                (m.ttft.mean_ms, format!("{:.0}{x}", m.ttft.mean_ms))
            }),
        );
    }
    c.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_capacity_holds_the_stated_fraction_of_prefixes_plus_in_flight_tails() {
        let s = Settings::full();
        assert_eq!(s.block_size, 128, "Kthena's --block-size");
        let long = &s.scenarios[0].shape;
        // 256 groups × 32 blocks = 8,192; half of it, plus 100 requests × (3 + 1) blocks.
        assert_eq!(kv_blocks_per_engine(&s, long), 4096 + 100 * 4);
        // The oracle's share (a third of the groups) fits with room to spare, all groups do not.
        let oracle_need = long.groups.div_ceil(3) * 32 + 100 * 4;
        assert!(oracle_need < kv_blocks_per_engine(&s, long));
        assert!(256 * 32 > kv_blocks_per_engine(&s, long));
        // Less than the profile's whole KV (about 1M tokens on the modelled 80 GB card).
        let physical = Profile::named(&s.profile).unwrap().num_gpu_blocks();
        assert!(kv_blocks_per_engine(&s, long) < physical);
        assert!(Settings::full().with_profile("nope").is_err());
    }

    #[test]
    fn oracle_config_pins_each_group_residue_to_its_own_engine() {
        let a: Vec<SocketAddr> = vec![
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
        ];
        let cfg = router_config("m", Policy::Oracle, &a, &[None, None], None);
        assert_eq!(cfg.matches("- metadata: {name: engine-").count(), 2);
        assert!(cfg.contains("x-bench-engine: {exact: \"1\"}"));
        assert_eq!(
            Policy::Oracle.headers(5, 2),
            vec![(ORACLE_HEADER.to_string(), "1".to_string())]
        );
        let kv = router_config(
            "m",
            Policy::KvEventsLoad,
            &a,
            &[Some(7001), Some(7002)],
            None,
        );
        assert!(kv.contains("kvEvents: \"tcp://127.0.0.1:7002\""));
        assert_eq!(kv.matches("modelServerName: engines").count(), 1);
        let metered = router_config("m", Policy::PrefixLoad, &a, &[None, None], Some(8192));
        assert!(
            metered.contains(
                "- metadata: {name: engines, annotations: {router.muster.dev/prefill-budget-tokens: \"8192\"}}"
            ),
            "the server carries the budget: {metered}"
        );
        assert!(Policy::PrefixLoad.is_cache_aware() && !Policy::Random.is_cache_aware());
    }

    #[test]
    fn pd_config_pairs_engine_i_with_engine_n_plus_i() {
        let a: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("127.0.0.1:900{i}").parse().unwrap())
            .collect();
        let cfg = pd_router_config("m", &a);
        assert!(cfg.contains(
            "address: \"127.0.0.1:9001\", name: prefill-0, labels: {role: prefill, group: g0}"
        ));
        assert!(cfg.contains(
            "address: \"127.0.0.1:9003\", name: decode-0, labels: {role: decode, group: g0}"
        ));
        assert!(cfg.contains(
            "address: \"127.0.0.1:9004\", name: decode-1, labels: {role: decode, group: g1}"
        ));
        assert!(cfg.contains("kvConnector: {type: nixl}"));
        assert!(cfg.contains("router.muster.dev/max-prefill-per-decode: \"16\""));
        let pd = Settings::full();
        assert!(pd
            .scenarios
            .iter()
            .any(|s| s.pd && s.shape.system_len == 4096));
    }

    /// A measurement with throughput `rps` and mean TTFT `ttft` (after the burst: half).
    fn m(rps: f64, ttft: f64) -> Measured {
        Measured {
            completed: 1,
            errors: 0,
            first_error: None,
            duration_s: 1.0,
            wall_s: 1.0,
            req_per_s: rps,
            output_tok_per_s: 0.0,
            ttft: Latency {
                mean_ms: ttft,
                p50_ms: ttft,
                p99_ms: ttft,
            },
            ttft_after_burst: Latency {
                mean_ms: ttft / 2.0,
                p50_ms: ttft / 2.0,
                p99_ms: ttft / 2.0,
            },
            e2e: Latency {
                mean_ms: 0.0,
                p50_ms: 0.0,
                p99_ms: 0.0,
            },
            cache_hit_rate: 0.0,
            usage_cached_fraction: 0.0,
            mean_prompt_tokens: 0.0,
            requests_per_engine: vec![],
            load_spread: 1.0,
            preemptions: 0.0,
            throughput_vs_random: None,
            ttft_vs_random: None,
            ttft_after_burst_vs_random: None,
            throughput_vs_oracle: None,
        }
    }

    #[test]
    fn a_repeated_baseline_is_its_median_run() {
        let runs = vec![m(30.0, 900.0), m(29.0, 700.0), m(31.0, 1000.0)];
        let mid = median_by_ttft(runs).unwrap();
        assert_eq!((mid.req_per_s, mid.ttft.mean_ms), (30.0, 900.0));
        let two = median_by_ttft(vec![m(1.0, 800.0), m(2.0, 600.0)]).unwrap();
        assert_eq!(two.ttft.mean_ms, 600.0, "the lower middle of an even count");
        assert!(median_by_ttft(Vec::new()).is_none());
    }

    #[test]
    fn goals_compare_against_random_and_oracle_and_report_skips() {
        let row = |policy: Policy, measured: Option<Measured>| PolicyResult {
            policy,
            name: policy.name(),
            profile: String::new(),
            measured,
            runs: Vec::new(),
            skipped: Some("not offered".into()),
        };
        let mut rows = vec![
            row(Policy::Random, Some(m(10.0, 1000.0))),
            row(Policy::PrefixLoad, Some(m(31.0, 150.0))),
            row(Policy::KvEventsLoad, None),
            row(Policy::Oracle, Some(m(36.0, 100.0))),
        ];
        add_ratios(&mut rows);
        let g = goals("long", &rows);
        let met = |needle: &str| g.iter().find(|x| x.goal.contains(needle)).unwrap().met;
        assert!(met("prefix+load: throughput ≥ 3"));
        assert!(met("prefix+load: mean TTFT ≤ 0.2"));
        assert!(!met("prefix+load: throughput within 10%"), "31/36 = 0.86");
        let skipped = g
            .iter()
            .find(|x| x.goal.starts_with("kv-events+load"))
            .unwrap();
        assert!(!skipped.met && skipped.measured.contains("not offered"));
        let short = goals("short", &rows);
        assert!(short.iter().all(|x| x.goal.contains("no worse") || !x.met));
    }
}
