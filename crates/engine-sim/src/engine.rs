//! One simulated engine: the pure [`EngineCore`] driven in (scaled) real time by a tokio task,
//! plus the state the HTTP shell needs (LoRA adapters, faults, PD bootstrap rooms, metrics).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::kv_events::KvEventPublisher;
use crate::metrics::{CacheConfig, EngineKind, EngineMetrics};
use crate::profile::Profile;
use crate::scheduler::{AdmitError, Emission, EngineCore, FinishReason, NewRequest, RequestId};
use crate::tokenize::TextCodec;

/// Prefill/decode disaggregation role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Produces KV for remote decoders (vLLM `kv_producer`, SGLang `--disaggregation-mode prefill`).
    Prefill,
    /// Consumes KV from remote prefillers.
    Decode,
    /// Serves whole requests and either leg of a PD pair.
    Both,
}

/// Fault injection knobs. Durations are in *virtual* seconds (divided by `--time-scale`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction of requests answered at once with HTTP 500.
    pub error_rate: f64,
    /// Fraction of requests whose output stalls once, after the first token.
    pub stall_rate: f64,
    /// Length of a stall.
    pub stall_seconds: f64,
    /// Drop the connection after this many streamed tokens (a crash mid-stream).
    pub crash_after_tokens: Option<u32>,
    /// Fraction of requests the crash applies to (1 when unset and `crash_after_tokens` is set).
    pub crash_rate: Option<f64>,
    /// Not ready (HTTP 503 everywhere but `/sim/*`) for this long after the faults are set.
    pub slow_start_seconds: f64,
    /// Reset every new connection for this long after the faults are set.
    pub refuse_connections_seconds: f64,
}

impl Faults {
    /// Checks ranges, naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("stall_rate", self.stall_rate),
            ("crash_rate", self.crash_rate.unwrap_or(1.0)),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be within [0, 1], got {v}"));
            }
        }
        for (name, v) in [
            ("stall_seconds", self.stall_seconds),
            ("slow_start_seconds", self.slow_start_seconds),
            (
                "refuse_connections_seconds",
                self.refuse_connections_seconds,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a non-negative number, got {v}"));
            }
        }
        Ok(())
    }
}

/// Everything that configures an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Model/GPU profile.
    pub profile: Profile,
    /// Name clients put in `model`.
    pub served_model_name: String,
    /// Metric naming.
    pub kind: EngineKind,
    /// PD role.
    pub role: Role,
    /// Virtual seconds per real second.
    pub time_scale: f64,
    /// KV blocks (profile-derived unless overridden).
    pub num_gpu_blocks: usize,
    /// Initial faults.
    pub faults: Faults,
    /// Seed for fault dice and output tokens.
    pub seed: u64,
    /// Permit PD peers (bootstrap hosts) outside 127.0.0.0/8.
    pub allow_remote_peers: bool,
    /// How long a decode leg waits for its SGLang prefill peer, virtual seconds.
    pub bootstrap_timeout_seconds: f64,
    /// Port reported as `remote_port` in NIXL `kv_transfer_params` (vLLM's side channel).
    pub nixl_side_channel_port: u16,
}

/// Where an engine lives, for PD handshakes and reports.
#[derive(Debug, Clone, Serialize)]
pub struct EngineIdentity {
    /// Unique id, reported as NIXL `remote_engine_id`.
    pub engine_id: String,
    /// IP address clients reach it on.
    pub host: String,
    /// HTTP port.
    pub http_port: u16,
    /// Bound KV-event endpoint, if publishing.
    pub kv_events_endpoint: Option<String>,
    /// KV-event topic, if publishing.
    pub kv_events_topic: Option<String>,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The core refused it (too long, too big for the cache…).
    #[error(transparent)]
    Admit(#[from] AdmitError),
    /// Model or adapter not served here.
    #[error("The model `{0}` does not exist.")]
    UnknownModel(String),
}

/// A LoRA adapter loaded into the engine.
#[derive(Debug, Clone, Serialize)]
pub struct LoraAdapter {
    /// Engine-local integer id (what KV events carry as `lora_id`).
    pub id: u32,
    /// Path given at load time.
    pub path: String,
}

/// What the shell submits.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Output tokens to generate.
    pub max_output_tokens: usize,
    /// Finish reason when `max_output_tokens` is reached.
    pub finish_reason_at_limit: FinishReason,
    /// Adapter name, if `model` named one.
    pub lora: Option<String>,
    /// Cache isolation salt.
    pub cache_salt: Option<String>,
    /// KV comes from a remote prefill engine.
    pub remote_prefill: bool,
}

/// The receiving end of a request: emissions until the one with `finished`.
pub struct RequestStream {
    /// Engine request id.
    pub id: RequestId,
    /// Tokens and the final accounting.
    pub rx: mpsc::UnboundedReceiver<Emission>,
    _guard: AbortOnDrop,
}

/// Aborts the request in the engine when the client's handler goes away early.
struct AbortOnDrop {
    engine: Arc<Engine>,
    id: RequestId,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.engine.abort(self.id);
    }
}

#[derive(Debug)]
struct FaultState {
    faults: Faults,
    set_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct BootstrapEntry {
    prompt_tokens: usize,
    at: Instant,
}

/// Real-time ↔ virtual-time conversion.
#[derive(Debug, Clone, Copy)]
pub struct VirtualClock {
    origin: Instant,
    scale: f64,
}

/// Waits shorter than this skip Tokio's millisecond timer (see [`VirtualClock::sleep_until`]).
pub const TIMER_FLOOR: Duration = Duration::from_micros(20);

impl VirtualClock {
    /// Virtual seconds since the engine started.
    pub fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * self.scale
    }

    /// Real duration of `virtual_seconds`.
    pub fn real(&self, virtual_seconds: f64) -> Duration {
        Duration::from_secs_f64((virtual_seconds / self.scale).max(0.0))
    }

    /// Sleeps until virtual time `t`.
    ///
    /// Tokio's timer fires on 1 ms ticks and rounds every deadline up to the next one, so a
    /// step that should take nanoseconds of real time (a huge `--time-scale`) took half a
    /// millisecond on average, and "zero modelled latency" measured the timer. A wait shorter
    /// than [`TIMER_FLOOR`] yields to the runtime until the deadline passes instead.
    pub async fn sleep_until(&self, t: f64) {
        let deadline = self.origin + self.real(t);
        if deadline.saturating_duration_since(Instant::now()) >= TIMER_FLOOR {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        loop {
            // At least one yield, so back-to-back instant steps never starve other tasks.
            tokio::task::yield_now().await;
            if Instant::now() >= deadline {
                return;
            }
        }
    }
}

/// One simulated engine.
pub struct Engine {
    /// Configuration.
    pub config: EngineConfig,
    /// Address and ids.
    pub identity: EngineIdentity,
    /// Tokenizer.
    pub codec: Arc<TextCodec>,
    /// Metrics registry.
    pub metrics: EngineMetrics,
    /// Clock.
    pub clock: VirtualClock,
    core: Mutex<EngineCore>,
    streams: Mutex<HashMap<RequestId, mpsc::UnboundedSender<Emission>>>,
    wake: Notify,
    faults: Mutex<FaultState>,
    loras: Mutex<BTreeMap<String, LoraAdapter>>,
    next_lora_id: Mutex<u32>,
    rng: Mutex<u64>,
    bootstrap: Mutex<HashMap<u64, BootstrapEntry>>,
    bootstrap_changed: Notify,
    publisher: Option<KvEventPublisher>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("identity", &self.identity)
            .finish()
    }
}

impl Engine {
    /// Creates the engine and starts its driver task (needs a tokio runtime).
    pub fn start(
        config: EngineConfig,
        identity: EngineIdentity,
        codec: Arc<TextCodec>,
        publisher: Option<KvEventPublisher>,
    ) -> Arc<Self> {
        let core = EngineCore::new(
            &config.profile,
            &config.served_model_name,
            config.num_gpu_blocks,
            codec.filler_ids(),
        );
        let metrics = EngineMetrics::new(
            config.kind,
            &config.served_model_name,
            &CacheConfig {
                block_size: config.profile.block_size,
                num_gpu_blocks: config.num_gpu_blocks,
            },
            config.profile.scheduler.max_loras,
        );
        let now = Instant::now();
        let engine = Arc::new(Self {
            clock: VirtualClock {
                origin: now,
                scale: config.time_scale,
            },
            faults: Mutex::new(FaultState {
                faults: config.faults.clone(),
                set_at: now,
            }),
            rng: Mutex::new(config.seed ^ 0x5DEE_CE66_D1CE_4E5B),
            config,
            identity,
            codec,
            metrics,
            core: Mutex::new(core),
            streams: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            loras: Mutex::new(BTreeMap::new()),
            next_lora_id: Mutex::new(1),
            bootstrap: Mutex::new(HashMap::new()),
            bootstrap_changed: Notify::new(),
            publisher,
        });
        tokio::spawn(drive(Arc::clone(&engine)));
        engine
    }

    /// Queues a request; tokens arrive on the returned stream.
    pub fn submit(self: &Arc<Self>, s: Submission) -> Result<RequestStream, SubmitError> {
        let lora = match &s.lora {
            Some(name) => {
                let loras = self.loras.lock().expect("lora lock");
                let a = loras
                    .get(name)
                    .ok_or_else(|| SubmitError::UnknownModel(name.clone()))?;
                Some((name.clone(), a.id))
            }
            None => None,
        };
        let output_seed = self.next_random();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut core = self.core.lock().expect("core lock");
            let id = core.add_request(
                NewRequest {
                    prompt: s.prompt,
                    max_output_tokens: s.max_output_tokens,
                    finish_reason_at_limit: s.finish_reason_at_limit,
                    lora,
                    cache_salt: s.cache_salt,
                    remote_prefill: s.remote_prefill,
                    output_seed,
                },
                self.clock.now(),
            )?;
            // Register under the core lock so the driver cannot emit before the stream exists.
            self.streams.lock().expect("streams lock").insert(id, tx);
            id
        };
        self.wake.notify_one();
        Ok(RequestStream {
            id,
            rx,
            _guard: AbortOnDrop {
                engine: Arc::clone(self),
                id,
            },
        })
    }

    /// Drops a request (no-op once it finished).
    pub fn abort(&self, id: RequestId) {
        if self
            .streams
            .lock()
            .expect("streams lock")
            .remove(&id)
            .is_some()
        {
            self.core.lock().expect("core lock").abort(id);
            self.wake.notify_one();
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let snap = self.core.lock().expect("core lock").snapshot();
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.render(&snap, now_unix)
    }

    /// Current scheduler snapshot.
    pub fn snapshot(&self) -> crate::scheduler::CoreSnapshot {
        self.core.lock().expect("core lock").snapshot()
    }

    /// Drops the prefix cache (fails while requests hold blocks).
    pub fn reset_prefix_cache(&self) -> bool {
        let (ok, events) = {
            let mut core = self.core.lock().expect("core lock");
            let ok = core.reset_prefix_cache();
            (ok, core.drain_kv_events())
        };
        if let Some(p) = &self.publisher {
            p.publish(events);
        }
        ok
    }

    /// Tokens per KV block.
    pub fn block_size(&self) -> usize {
        self.config.profile.block_size
    }

    // ---- faults ----

    /// Current fault settings.
    pub fn faults(&self) -> Faults {
        self.faults.lock().expect("faults lock").faults.clone()
    }

    /// Replaces the fault settings; durations restart from now.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().expect("faults lock") = FaultState {
            faults,
            set_at: Instant::now(),
        };
    }

    fn fault_window_open(&self, seconds: impl Fn(&Faults) -> f64) -> bool {
        let st = self.faults.lock().expect("faults lock");
        let s = seconds(&st.faults);
        s > 0.0 && st.set_at.elapsed() < self.clock.real(s)
    }

    /// Still "loading the model": report not ready.
    pub fn starting_up(&self) -> bool {
        self.fault_window_open(|f| f.slow_start_seconds)
    }

    /// Refusing new connections.
    pub fn refusing_connections(&self) -> bool {
        self.fault_window_open(|f| f.refuse_connections_seconds)
    }

    /// Rolls the error dice for one request.
    pub fn roll_error(&self) -> bool {
        let p = self.faults().error_rate;
        p > 0.0 && self.uniform() < p
    }

    /// Rolls the stall dice; returns the real stall duration if this request stalls.
    pub fn roll_stall(&self) -> Option<Duration> {
        let f = self.faults();
        (f.stall_rate > 0.0 && f.stall_seconds > 0.0 && self.uniform() < f.stall_rate)
            .then(|| self.clock.real(f.stall_seconds))
    }

    /// Rolls the crash dice; returns after how many tokens the connection drops.
    pub fn roll_crash(&self) -> Option<u32> {
        let f = self.faults();
        let n = f.crash_after_tokens?;
        let p = f.crash_rate.unwrap_or(1.0);
        (p >= 1.0 || self.uniform() < p).then_some(n)
    }

    fn next_random(&self) -> u64 {
        // splitmix64: deterministic per seed, cheap, good enough for dice and token choice.
        let mut s = self.rng.lock().expect("rng lock");
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    // ---- LoRA ----

    /// Loads an adapter. Errors when the name is taken.
    pub fn load_lora(&self, name: &str, path: &str) -> Result<(), String> {
        let mut loras = self.loras.lock().expect("lora lock");
        if name == self.config.served_model_name || loras.contains_key(name) {
            return Err(format!(
                "The lora adapter '{name}' has already been loaded."
            ));
        }
        let mut next = self.next_lora_id.lock().expect("lora id lock");
        loras.insert(
            name.to_string(),
            LoraAdapter {
                id: *next,
                path: path.to_string(),
            },
        );
        *next += 1;
        Ok(())
    }

    /// Unloads an adapter; false when it was not loaded.
    pub fn unload_lora(&self, name: &str) -> bool {
        self.loras.lock().expect("lora lock").remove(name).is_some()
    }

    /// Loaded adapters by name.
    pub fn loras(&self) -> BTreeMap<String, LoraAdapter> {
        self.loras.lock().expect("lora lock").clone()
    }

    // ---- SGLang bootstrap ----

    /// Records that the prefill for `room` finished here.
    pub fn bootstrap_ready(&self, room: u64, prompt_tokens: usize) {
        let mut rooms = self.bootstrap.lock().expect("bootstrap lock");
        // Rooms nobody collected within a few minutes are abandoned pairs; forget them.
        rooms.retain(|_, e| e.at.elapsed() < Duration::from_secs(300));
        rooms.insert(
            room,
            BootstrapEntry {
                prompt_tokens,
                at: Instant::now(),
            },
        );
        drop(rooms);
        self.bootstrap_changed.notify_waiters();
    }

    /// Waits (real time) until the prefill for `room` is done here; returns its prompt length.
    pub async fn wait_bootstrap(&self, room: u64, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.bootstrap_changed.notified();
            tokio::pin!(notified);
            // Register interest before checking, so a notification in between is not lost.
            notified.as_mut().enable();
            if let Some(e) = self.bootstrap.lock().expect("bootstrap lock").remove(&room) {
                return Some(e.prompt_tokens);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    fn deliver(&self, emissions: Vec<Emission>) {
        let mut dead = Vec::new();
        {
            let mut streams = self.streams.lock().expect("streams lock");
            for e in emissions {
                if let Some(t) = e.ttft {
                    self.metrics.observe_ttft(t);
                }
                if let Some(t) = e.itl {
                    self.metrics.observe_itl(t);
                }
                if let Some(f) = &e.finished {
                    self.metrics
                        .observe_finished(f.reason.as_str(), f.e2e, f.queue_time);
                }
                let id = e.id;
                let done = e.finished.is_some();
                match streams.get(&id) {
                    Some(tx) => {
                        if tx.send(e).is_err() {
                            dead.push(id);
                        }
                    }
                    None => {
                        if !done {
                            dead.push(id);
                        }
                    }
                }
                if done {
                    streams.remove(&id);
                }
            }
            for id in &dead {
                streams.remove(id);
            }
        }
        if !dead.is_empty() {
            let mut core = self.core.lock().expect("core lock");
            for id in dead {
                core.abort(id);
            }
        }
    }
}

/// The engine loop: plan a step, let its virtual duration pass, apply it, deliver tokens.
async fn drive(engine: Arc<Engine>) {
    loop {
        let now = engine.clock.now();
        let (step, next_transfer, events) = {
            let mut core = engine.core.lock().expect("core lock");
            let step = core.schedule(now);
            (step, core.next_transfer_done(), core.drain_kv_events())
        };
        if let Some(p) = &engine.publisher {
            p.publish(events);
        }
        match step {
            Some(step) => {
                // Virtual time advances by the modelled duration even if the host lags behind,
                // so the engine's own metrics stay deterministic.
                let end = now + step.duration;
                engine.clock.sleep_until(end).await;
                let (emissions, events) = {
                    let mut core = engine.core.lock().expect("core lock");
                    (core.complete(&step, end), core.drain_kv_events())
                };
                if let Some(p) = &engine.publisher {
                    p.publish(events);
                }
                engine.deliver(emissions);
            }
            None => match next_transfer {
                Some(t) => {
                    tokio::select! {
                        _ = engine.clock.sleep_until(t) => {}
                        _ = engine.wake.notified() => {}
                    }
                }
                None => engine.wake.notified().await,
            },
        }
    }
}
