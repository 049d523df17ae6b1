//! `muster-engine-sim`: a simulated vLLM/SGLang engine (see the crate README).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use muster_engine_sim::engine::{EngineConfig, Faults, Role};
use muster_engine_sim::metrics::EngineKind;
use muster_engine_sim::profile::Profile;
use muster_engine_sim::server::{self, ServerOptions};
use muster_engine_sim::tokenize::TextCodec;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EngineFlavor {
    Vllm,
    Sglang,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A simulated vLLM/SGLang engine with a calibrated latency model.
#[derive(Debug, Parser)]
#[command(name = "muster-engine-sim", version)]
struct Cli {
    /// Listen address (repeatable). A specific IP serves one engine; 0.0.0.0 serves one engine
    /// per local IP that connections arrive on. Default: --host:--port.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Host when --listen is not given.
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port when --listen is not given.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Built-in profile name (llama-3-8b-h100-80gb, deepseek-r1-distill-qwen-7b-h100-80gb) or
    /// a profile YAML path (default: llama-3-8b-h100-80gb).
    #[arg(long)]
    profile: Option<String>,
    /// Served model name (default: the profile's model).
    #[arg(long, alias = "served-model-name")]
    model: Option<String>,
    /// tokenizer.json (default: the built-in project tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Metric names to expose.
    #[arg(long, value_enum, default_value = "vllm")]
    engine: EngineFlavor,
    /// Prefill/decode role.
    #[arg(long, value_enum, default_value = "both")]
    role: Role,
    /// Run this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Override the number of KV blocks.
    #[arg(long)]
    num_gpu_blocks: Option<usize>,
    /// Override tokens per KV block.
    #[arg(long)]
    block_size: Option<usize>,
    /// Override max sequences per batch.
    #[arg(long)]
    max_num_seqs: Option<usize>,
    /// Override the per-step token budget.
    #[arg(long)]
    max_num_batched_tokens: Option<usize>,
    /// Override the context window.
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Publish KV events on this port (per engine IP; listener i of specific addresses uses
    /// port+i; 0 picks free ports). Off when absent.
    #[arg(long)]
    kv_events_port: Option<u16>,
    /// KV-event topic; {ip}, {port}, {model} are substituted.
    #[arg(long, default_value = "kv@{ip}:{port}@{model}")]
    kv_events_topic: String,
    /// Also serve the engines on this port of each listen IP (SGLang bootstrap port).
    #[arg(long)]
    bootstrap_port: Option<u16>,
    /// Virtual seconds a decode leg waits for its SGLang prefill peer.
    #[arg(long, default_value_t = 30.0)]
    bootstrap_timeout: f64,
    /// Reported as `remote_port` in NIXL kv_transfer_params.
    #[arg(long, default_value_t = 5600)]
    nixl_side_channel_port: u16,
    /// Allow PD peers outside 127.0.0.0/8.
    #[arg(long)]
    allow_remote_peers: bool,
    /// Seed for output tokens and fault dice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of requests failing with HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fraction of requests that stall after their first token.
    #[arg(long, default_value_t = 0.0)]
    stall_rate: f64,
    /// Stall length, virtual seconds.
    #[arg(long, default_value_t = 0.0)]
    stall_seconds: f64,
    /// Drop the connection after this many tokens.
    #[arg(long)]
    crash_after_tokens: Option<u32>,
    /// Fraction of requests the crash applies to (default all).
    #[arg(long)]
    crash_rate: Option<f64>,
    /// Report not-ready (503) for this many virtual seconds after start.
    #[arg(long, default_value_t = 0.0)]
    slow_start_seconds: f64,
    /// Reset new connections for this many virtual seconds after start.
    #[arg(long, default_value_t = 0.0)]
    refuse_connections_seconds: f64,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }

    let mut profile = match &cli.profile {
        Some(p) => Profile::named_or_load(p)?,
        None => Profile::builtin(),
    };
    if let Some(v) = cli.block_size {
        profile.block_size = v;
    }
    if let Some(v) = cli.max_num_seqs {
        profile.scheduler.max_num_seqs = v;
    }
    if let Some(v) = cli.max_num_batched_tokens {
        profile.scheduler.max_num_batched_tokens = v;
    }
    if let Some(v) = cli.max_model_len {
        profile.max_model_len = v;
    }
    if let Some(v) = cli.num_gpu_blocks {
        profile.memory.num_gpu_blocks = Some(v);
    }
    // Re-validate after overrides so a bad flag gets the same precise message as a bad file.
    let profile = Profile::from_yaml(&serde_yaml::to_string(&profile)?)
        .context("invalid profile after command-line overrides")?;
    anyhow::ensure!(
        cli.time_scale.is_finite() && cli.time_scale > 0.0,
        "--time-scale must be positive, got {}",
        cli.time_scale
    );
    let faults = Faults {
        error_rate: cli.error_rate,
        stall_rate: cli.stall_rate,
        stall_seconds: cli.stall_seconds,
        crash_after_tokens: cli.crash_after_tokens,
        crash_rate: cli.crash_rate,
        slow_start_seconds: cli.slow_start_seconds,
        refuse_connections_seconds: cli.refuse_connections_seconds,
    };
    faults.validate().map_err(anyhow::Error::msg)?;
    let codec = Arc::new(match &cli.tokenizer {
        Some(p) => TextCodec::load(p)?,
        None => TextCodec::builtin()?,
    });
    let listen = if cli.listen.is_empty() {
        vec![SocketAddr::new(cli.host, cli.port)]
    } else {
        cli.listen.clone()
    };
    let engine = EngineConfig {
        served_model_name: cli.model.clone().unwrap_or_else(|| profile.model.clone()),
        num_gpu_blocks: profile.num_gpu_blocks(),
        profile,
        kind: match cli.engine {
            EngineFlavor::Vllm => EngineKind::Vllm,
            EngineFlavor::Sglang => EngineKind::Sglang,
        },
        role: cli.role,
        time_scale: cli.time_scale,
        faults,
        seed: cli.seed,
        allow_remote_peers: cli.allow_remote_peers,
        bootstrap_timeout_seconds: cli.bootstrap_timeout,
        nixl_side_channel_port: cli.nixl_side_channel_port,
    };
    let running = server::start(ServerOptions {
        listen,
        bootstrap_port: cli.bootstrap_port,
        kv_events_port: cli.kv_events_port,
        kv_events_topic: cli.kv_events_topic.clone(),
        engine,
        codec,
    })
    .await?;
    // Machine-readable lines on stdout: tests and scripts use them to learn ephemeral ports.
    for (i, addr) in running.http_addrs.iter().enumerate() {
        println!("LISTENING {addr}");
        if let Some(e) = running.engine(i).await {
            if let Some(ep) = &e.identity.kv_events_endpoint {
                println!("KV_EVENTS {addr} {ep}");
            }
        }
    }
    for addr in &running.bootstrap_addrs {
        println!("BOOTSTRAP {addr}");
    }
    // SIGTERM is how Kubernetes and the test harnesses stop it; exit cleanly on it too.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = running.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
