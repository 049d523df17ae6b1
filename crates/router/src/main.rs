//! `muster-router`: the OpenAI-compatible gateway (see the crate docs and README).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use muster_router::config::kubernetes::{self, KubeOptions};
use muster_router::config::{compile, standalone, ConfigInput, Defaults};
use muster_router::duration::parse_duration;
use muster_router::endpoints::outlier::OutlierPolicy;
use muster_router::endpoints::{EndpointRegistry, ScrapeConfig};
use muster_router::logging::BackgroundStderr;
use muster_router::metrics::Metrics;
use muster_router::policy::auth::Authenticator;
use muster_router::policy::fair_queue::FairQueueConfig;
use muster_router::policy::jwt::{JwtConfig, JwtVerifier};
use muster_router::policy::metrics::PolicyMetrics;
use muster_router::policy::rate_limit::{FailMode, RateLimitConfig, Scope};
use muster_router::policy::{identity, secrets, TrafficPolicy};
use muster_router::proxy::client::UpstreamClients;
use muster_router::proxy::{AppState, ProxyConfig};
use muster_router::scheduler::SchedulerProfile;
use muster_router::server::{bind_reuseport, serve_admin, serve_public, DrainOptions};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// OpenAI-compatible gateway for vLLM/SGLang engines, configured from Kubernetes ModelRoute and
/// ModelServer objects or from a standalone YAML file.
#[derive(Debug, Parser)]
#[command(name = "muster-router", version)]
struct Cli {
    /// Public (OpenAI API) listen address.
    #[arg(long, default_value = "0.0.0.0:8080", env = "MUSTER_ROUTER_LISTEN")]
    listen: SocketAddr,
    /// Worker threads serving the public port, each with its own single-threaded runtime,
    /// listener (SO_REUSEPORT) and upstream connection pools (default: logical CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Admin listen address: /metrics, /healthz, /readyz, /debug/{config,endpoints,sessions}.
    #[arg(
        long,
        default_value = "127.0.0.1:15000",
        env = "MUSTER_ROUTER_ADMIN_LISTEN"
    )]
    admin_listen: SocketAddr,
    /// Standalone mode: read ModelServers (with static endpoints) and ModelRoutes from this
    /// YAML file, re-read on change. Without it the router runs in Kubernetes mode.
    #[arg(long, env = "MUSTER_ROUTER_CONFIG")]
    config: Option<PathBuf>,
    /// Standalone mode: how often to check the file for changes.
    #[arg(long, default_value = "1s", value_parser = duration)]
    reload_interval: Duration,
    /// Kubernetes mode: watch only this namespace (default: all).
    #[arg(long, env = "MUSTER_ROUTER_NAMESPACE")]
    namespace: Option<String>,
    /// Kubernetes mode: label selector narrowing the pod watch.
    #[arg(long)]
    pod_selector: Option<String>,
    /// Kubernetes mode: do not write ModelServer/ModelRoute status.
    #[arg(long)]
    no_status: bool,
    /// Default scheduling profile (YAML file); ModelServers override it with the
    /// `router.muster.dev/scheduler` annotation.
    #[arg(long)]
    scheduler_config: Option<PathBuf>,
    /// Per-try time to response headers when a ModelServer sets no trafficPolicy.timeout.
    #[arg(long, default_value = "300s", value_parser = duration)]
    default_timeout: Duration,
    /// Retries when a ModelServer sets no trafficPolicy.retry.
    #[arg(long, default_value_t = 2)]
    default_retries: u32,
    /// Retry interval when a ModelServer sets no trafficPolicy.retry.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    default_retry_interval: Duration,
    /// TCP connect timeout to engines.
    #[arg(long, default_value = "2s", value_parser = duration)]
    connect_timeout: Duration,
    /// Idle connections kept per engine.
    #[arg(long, default_value_t = 1024)]
    max_idle_per_endpoint: usize,
    /// A response that sends nothing for this long is cut with an error.
    #[arg(long, default_value = "300s", value_parser = duration)]
    stream_idle_timeout: Duration,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Time allowed to receive a request body (408 after).
    #[arg(long, default_value = "60s", value_parser = duration)]
    body_read_timeout: Duration,
    /// Router-wide concurrent request limit (429 above); 0 means none.
    #[arg(long, default_value_t = 0)]
    max_in_flight: usize,
    /// File with one accepted API key per line, optionally followed by `tenant=`, `user=`,
    /// `name=`, `models=a,b`, `priority=high|normal|low`, `weight=`; when set, requests need
    /// `Authorization: Bearer <key>` (401 otherwise). Re-read on change.
    #[arg(long, env = "MUSTER_ROUTER_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// Kubernetes mode: accept API keys from Secrets matching --api-key-secret-selector.
    #[arg(long)]
    api_key_secrets: bool,
    /// Label selector of API-key Secrets.
    #[arg(long, default_value = "router.muster.dev/api-key=true")]
    api_key_secret_selector: String,
    /// Accept JWTs verified against the JWKS at this http:// URL.
    #[arg(long, env = "MUSTER_ROUTER_JWKS_URL")]
    jwt_jwks_url: Option<hyper::Uri>,
    /// Required JWT `iss`.
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// Required JWT `aud`.
    #[arg(long)]
    jwt_audience: Option<String>,
    /// JWT claim naming the tenant (absent: the `sub`).
    #[arg(long, default_value = "tenant")]
    jwt_tenant_claim: String,
    /// JWT claim listing allowed models (absent: all).
    #[arg(long, default_value = "models")]
    jwt_models_claim: String,
    /// JWT claim naming the priority class.
    #[arg(long, default_value = "priority")]
    jwt_priority_claim: String,
    /// JWKS refresh interval.
    #[arg(long, default_value = "300s", value_parser = duration)]
    jwks_refresh: Duration,
    /// Whose budget a ModelRoute rateLimit is: comma-separated model, tenant, user, key
    /// (each listed scope gets its own buckets).
    #[arg(long, default_value = "tenant")]
    rate_limit_scope: String,
    /// When Redis for a global limit is unreachable: local buckets, open (admit), closed (503).
    #[arg(long, value_enum, default_value = "local")]
    redis_fail_mode: FailMode,
    /// Bound on every Redis call (rate limits and fairness sync).
    #[arg(long, default_value = "100ms", value_parser = duration)]
    redis_timeout: Duration,
    /// Output tokens reserved for requests without max_tokens.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: u64,
    /// Fair queuing: concurrent requests per Ready endpoint before requests queue; 0 = off.
    #[arg(long, default_value_t = 0)]
    queue_slots_per_endpoint: usize,
    /// Longest wait in a fair queue (429 queue_timeout after).
    #[arg(long, default_value = "30s", value_parser = duration)]
    queue_timeout: Duration,
    /// Most requests waiting per ModelServer (429 queue_full above).
    #[arg(long, default_value_t = 1024)]
    queue_max_depth: usize,
    /// Window of attained service (weighted tokens) for fairness.
    #[arg(long, default_value = "60s", value_parser = duration)]
    fairness_window: Duration,
    /// Share attained service across router replicas through this Redis (host:port).
    #[arg(long)]
    fairness_redis: Option<String>,
    /// How often attained service is exchanged with Redis.
    #[arg(long, default_value = "200ms", value_parser = duration)]
    fairness_sync_interval: Duration,
    /// Engine /metrics scrape interval per endpoint.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    metrics_interval: Duration,
    /// An engine sample older than this is stale (scored conservatively).
    #[arg(long, default_value = "2s", value_parser = duration)]
    metrics_stale_after: Duration,
    /// Consecutive failures that eject an endpoint; 0 disables ejection.
    #[arg(long, default_value_t = 5)]
    outlier_consecutive_failures: u32,
    /// First ejection length (the n-th consecutive ejection lasts n times as long).
    #[arg(long, default_value = "5s", value_parser = duration)]
    outlier_base_ejection: Duration,
    /// Longest ejection.
    #[arg(long, default_value = "60s", value_parser = duration)]
    outlier_max_ejection: Duration,
    /// On SIGTERM, keep serving with readiness failing this long before refusing connections.
    #[arg(long, default_value = "5s", value_parser = duration)]
    drain_delay: Duration,
    /// Then wait at most this long for in-flight requests.
    #[arg(long, default_value = "300s", value_parser = duration)]
    drain_timeout: Duration,
    /// Disable the per-request access log line.
    #[arg(long)]
    no_access_log: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// tokenizer.json for prefix-aware scheduling and exact prompt counts in token limits
    /// (repeatable): `MODEL=PATH` for one model
    /// (served or public name), or a bare `PATH` for every model without its own. A
    /// ModelServer's `router.muster.dev/tokenizer` annotation takes precedence. Models
    /// without one are hashed as byte blocks.
    #[arg(long = "tokenizer", value_name = "[MODEL=]PATH")]
    tokenizers: Vec<String>,
    /// Token ids each tokenizer keeps per prompt segment (chat message), least recently used
    /// evicted first, so a repeated system prompt is not tokenized again; 0 disables.
    #[arg(long, default_value_t = muster_router::prefix::tokenize::DEFAULT_CACHE_TOKENS)]
    tokenize_cache_tokens: usize,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: they cost formatting time on every access-log line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let writer = BackgroundStderr::start(1 << 16);
    muster_router::access_log::set_json(matches!(format, LogFormat::Json));
    match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(writer)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(writer)
            .init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

// The request path allocates many small, short-lived buffers (headers, JSON values, futures).
// With mimalloc's thread-local free lists the router spent about 10% less CPU per proxied
// request than with glibc malloc (`muster-bench load` against the null engine, CPU time of
// the router process per request, 2026-12-02).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // The control runtime runs configuration sources, status writes, metric scrapes and the
    // admin port; request handling runs on the worker threads (see `run`).
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("muster-control")
        .enable_all()
        .build()?;
    let result = control.block_on(run(cli));
    muster_router::logging::flush(Duration::from_secs(2));
    result
}

fn load_api_keys(path: &std::path::Path) -> anyhow::Result<identity::KeyTable> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    identity::parse_key_file(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}", path.display()))
}

fn build_policy(
    cli: &Cli,
    api_keys: Option<identity::KeyTable>,
    metrics: &Metrics,
) -> anyhow::Result<Arc<TrafficPolicy>> {
    let jwt = match &cli.jwt_jwks_url {
        Some(url) => {
            anyhow::ensure!(
                url.scheme_str() == Some("http"),
                "--jwt-jwks-url {url}: only http:// URLs are supported (a loopback or in-cluster JWKS endpoint)"
            );
            Some(Arc::new(JwtVerifier::new(JwtConfig {
                jwks_url: url.clone(),
                issuer: cli.jwt_issuer.clone(),
                audience: cli.jwt_audience.clone(),
                tenant_claim: cli.jwt_tenant_claim.clone(),
                models_claim: cli.jwt_models_claim.clone(),
                priority_claim: cli.jwt_priority_claim.clone(),
                refresh: cli.jwks_refresh,
            })))
        }
        None => None,
    };
    let scopes = Scope::parse_list(&cli.rate_limit_scope)
        .map_err(anyhow::Error::msg)
        .context("--rate-limit-scope")?;
    Ok(Arc::new(TrafficPolicy::new(
        match api_keys {
            None if cli.api_key_secrets => Authenticator::awaiting_keys(jwt),
            keys => Authenticator::new(keys, jwt),
        },
        RateLimitConfig {
            scopes,
            fail_mode: cli.redis_fail_mode,
            redis_timeout: cli.redis_timeout,
            default_max_tokens: cli.default_max_tokens,
        },
        FairQueueConfig {
            slots_per_endpoint: cli.queue_slots_per_endpoint,
            timeout: cli.queue_timeout,
            max_depth: cli.queue_max_depth.max(1),
        },
        cli.fairness_window,
        cli.fairness_redis.clone(),
        PolicyMetrics::register(metrics.registry()),
    )))
}

/// JWKS refresh, API-key file reload and fairness sync, on the control runtime.
fn spawn_policy_tasks(cli: &Cli, policy: &Arc<TrafficPolicy>) {
    if let Some(jwt) = policy.auth.jwt().cloned() {
        let every = cli.jwks_refresh;
        tokio::spawn(async move {
            loop {
                match jwt.refresh().await {
                    Ok(n) => tracing::info!(keys = n, "JWKS loaded"),
                    Err(e) => {
                        tracing::warn!(error = %e, "JWKS refresh failed; keeping the cached keys")
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }
    if let Some(path) = cli.api_keys_file.clone() {
        let (policy, every) = (policy.clone(), cli.reload_interval);
        tokio::spawn(async move {
            let modified =
                |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut seen = modified(&path);
            loop {
                tokio::time::sleep(every).await;
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match load_api_keys(&path) {
                    Ok(keys) => {
                        tracing::info!(keys = keys.len(), "API keys reloaded");
                        policy.auth.replace_keys(keys);
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "API-key file not reloaded; keeping the previous keys")
                    }
                }
            }
        });
    }
    let attained = policy.queues.attained().clone();
    if attained.shared() {
        tokio::spawn(attained.run_sync(cli.fairness_sync_interval));
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let workers = cli
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);

    let profile = match &cli.scheduler_config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            SchedulerProfile::parse(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}", p.display()))?
        }
        None => SchedulerProfile::default(),
    };
    let defaults = Defaults {
        profile: Arc::new(profile),
        timeout: cli.default_timeout,
        retry_attempts: cli.default_retries,
        retry_interval: cli.default_retry_interval,
    };
    let api_keys = match &cli.api_keys_file {
        Some(p) => {
            let keys = load_api_keys(p)?;
            anyhow::ensure!(!keys.is_empty(), "{} holds no API keys", p.display());
            Some(keys)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let policy = build_policy(&cli, api_keys, &metrics)?;
    // Scrapes use the control runtime's own pool; requests use per-worker pools.
    let clients = UpstreamClients::new(cli.connect_timeout, cli.max_idle_per_endpoint);
    let registry = Arc::new(EndpointRegistry::new(
        ScrapeConfig {
            interval: (!cli.metrics_interval.is_zero()).then_some(cli.metrics_interval),
            timeout: cli.metrics_interval.max(Duration::from_millis(200)),
            stale_after: cli.metrics_stale_after,
        },
        clients.clone(),
        metrics.clone(),
    ));
    let outlier = OutlierPolicy {
        consecutive_failures: cli.outlier_consecutive_failures,
        base_ejection: cli.outlier_base_ejection,
        max_ejection: cli.outlier_max_ejection,
    };
    let state = Arc::new(AppState::with_policy(
        ProxyConfig {
            max_body_bytes: cli.max_body_bytes,
            body_read_timeout: cli.body_read_timeout,
            stream_idle_timeout: cli.stream_idle_timeout,
            outlier,
            max_in_flight: cli.max_in_flight,
            connect_timeout: cli.connect_timeout,
            max_idle_per_endpoint: cli.max_idle_per_endpoint,
            access_log: !cli.no_access_log,
            tokenizers: Arc::new(
                muster_router::prefix::tokenize::Tokenizers::from_flags(&cli.tokenizers)
                    .map_err(anyhow::Error::msg)?
                    .with_cache_tokens(cli.tokenize_cache_tokens),
            ),
        },
        metrics.clone(),
        registry,
        policy.clone(),
    ));
    spawn_policy_tasks(&cli, &policy);

    let public = bind_reuseport(cli.listen, workers)
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let admin = tokio::net::TcpListener::bind(cli.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.admin_listen))?;
    // Machine-readable lines on stdout: tests and scripts learn ephemeral ports from them.
    println!("LISTENING {}", public[0].local_addr()?);
    println!("ADMIN {}", admin.local_addr()?);
    tokio::spawn(serve_admin(state.clone(), admin));

    let source = match cli.config.clone() {
        Some(path) => {
            // Fail fast on a bad file at start-up; later bad edits keep the last good config.
            standalone::load(&path).map_err(anyhow::Error::msg)?;
            let state = state.clone();
            let defaults = defaults.clone();
            let apply = Arc::new(
                move |input: ConfigInput, profile: Option<SchedulerProfile>| {
                    let mut d = defaults.clone();
                    if let Some(p) = profile {
                        d.profile = Arc::new(p);
                    }
                    let compiled = compile(&input, &d);
                    for r in &compiled.server_reports {
                        if let Err((reason, message)) = &r.accepted {
                            tracing::warn!(server = %r.key, reason, message, "ModelServer not fully accepted");
                        }
                    }
                    for r in &compiled.route_reports {
                        for (cond, v) in [("Accepted", &r.accepted), ("Ready", &r.ready)] {
                            if let Err((reason, message)) = v {
                                tracing::warn!(route = %r.key, condition = cond, reason, message, "ModelRoute problem");
                            }
                        }
                    }
                    state.publish(compiled);
                },
            );
            tokio::spawn(standalone::run(
                path,
                cli.reload_interval,
                apply,
                metrics.clone(),
            ))
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("Kubernetes mode needs a kubeconfig or in-cluster credentials (or pass --config for standalone mode)")?;
            if cli.api_key_secrets {
                tokio::spawn(secrets::watch(
                    client.clone(),
                    cli.namespace.clone(),
                    cli.api_key_secret_selector.clone(),
                    policy.clone(),
                ));
            }
            let state = state.clone();
            let metrics = metrics.clone();
            let apply: kubernetes::Apply = Arc::new(move |input: ConfigInput| {
                let compiled = compile(&input, &defaults);
                let reports = (
                    compiled.server_reports.clone(),
                    compiled.route_reports.clone(),
                );
                metrics.config_reloads.with_label_values(&["ok"]).inc();
                state.publish(compiled);
                reports
            });
            let opts = KubeOptions {
                namespace: cli.namespace.clone(),
                pod_selector: cli.pod_selector.clone(),
                write_status: !cli.no_status,
                debounce: Duration::from_millis(20),
            };
            tokio::spawn(async move {
                if let Err(e) = kubernetes::run(client, opts, apply).await {
                    tracing::error!(error = %format!("{e:#}"), "Kubernetes source failed; exiting");
                    muster_router::logging::flush(Duration::from_secs(1));
                    std::process::exit(1);
                }
            })
        }
    };

    let drain = DrainOptions {
        delay: cli.drain_delay,
        timeout: cli.drain_timeout,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    for (i, listener) in public.into_iter().enumerate() {
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("muster-worker-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("register listener");
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    serve_public(state, listener, stopped, drain).await;
                });
            })?;
        threads.push(thread);
    }
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await?;
    source.abort();
    Ok(())
}
