//! The HTTP shell: vLLM's OpenAI-compatible API over one [`Engine`].
//!
//! Bodies are parsed by hand (not by an extractor) so that every malformed request gets an
//! OpenAI-style JSON error naming the offending field, never a framework-default text reply.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{Engine, Role, Submission, SubmitError};
use crate::scheduler::{Emission, FinishReason};
use crate::tokenize::{render_chat, ChatMessage};

/// The router for one engine.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ping", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/load_lora_adapter", post(load_lora))
        .route("/v1/unload_lora_adapter", post(unload_lora))
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .route("/sim/info", get(sim_info))
        .route("/sim/faults", get(get_faults).post(set_faults))
        .route("/sim/bootstrap/{room}", get(bootstrap_wait))
        .fallback(not_found)
        // Long-context prompts (100k+ tokens of JSON) exceed axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(engine)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An OpenAI-style error reply.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.map(str::to_string),
        }
    }
    fn not_found(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            param: param.map(str::to_string),
        }
    }
    fn status(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::BAD_REQUEST => "BadRequestError",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
            StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
            _ => "InternalServerError",
        };
        json_response(
            self.status,
            &json!({"error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": self.status.as_u16(),
            }}),
        )
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}"), None))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
            None,
        ));
    }
    serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        // serde names the field in backticks for missing fields; surface it as `param`.
        let param = msg.split('`').nth(1).map(str::to_string);
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("Invalid request: {msg}"),
            param,
        }
    })
}

fn not_ready(engine: &Engine) -> Result<(), ApiError> {
    if engine.starting_up() {
        Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is still starting up.",
        ))
    } else {
        Ok(())
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("No route for {}", uri.path()), None)
}

// ---------------------------------------------------------------------------------------------
// Simple endpoints

async fn health(State(engine): State<Arc<Engine>>) -> Response {
    if engine.starting_up() {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    if let Err(e) = not_ready(&engine) {
        return e.into_response();
    }
    let mut r = Response::new(Body::from(engine.render_metrics()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(engine): State<Arc<Engine>>) -> Result<Response, ApiError> {
    not_ready(&engine)?;
    let base = &engine.config.served_model_name;
    let max_len = engine.config.profile.max_model_len;
    let created = unix_now();
    let owner = match engine.config.kind {
        crate::metrics::EngineKind::Vllm => "vllm",
        crate::metrics::EngineKind::Sglang => "sglang",
    };
    let mut data = vec![json!({
        "id": base, "object": "model", "created": created, "owned_by": owner,
        "root": base, "parent": null, "max_model_len": max_len, "permission": [],
    })];
    for (name, a) in engine.loras() {
        data.push(json!({
            "id": name, "object": "model", "created": created, "owned_by": owner,
            "root": a.path, "parent": base, "max_model_len": max_len, "permission": [],
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

#[derive(Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Value>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
}

async fn tokenize(State(engine): State<Arc<Engine>>, body: Bytes) -> Result<Response, ApiError> {
    not_ready(&engine)?;
    let req: TokenizeRequest = parse_json(&body)?;
    resolve_model(&engine, req.model.as_deref())?;
    let text = match (req.prompt, req.messages) {
        (Some(p), None) => p,
        (None, Some(m)) => render_chat(
            &parse_messages(&m)?,
            req.add_generation_prompt.unwrap_or(true),
        ),
        _ => {
            return Err(ApiError::bad_request(
                "Exactly one of `prompt` or `messages` is required.",
                Some("prompt"),
            ))
        }
    };
    let tokens = engine
        .codec
        .encode(&text)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "count": tokens.len(),
            "max_model_len": engine.config.profile.max_model_len,
            "tokens": tokens,
            "token_strs": null,
        }),
    ))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(State(engine): State<Arc<Engine>>, body: Bytes) -> Result<Response, ApiError> {
    not_ready(&engine)?;
    let req: DetokenizeRequest = parse_json(&body)?;
    let text = engine
        .codec
        .decode(&req.tokens)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("tokens")))?;
    Ok(json_response(StatusCode::OK, &json!({ "prompt": text })))
}

#[derive(Deserialize)]
struct LoadLora {
    lora_name: String,
    #[serde(default)]
    lora_path: Option<String>,
}

async fn load_lora(State(engine): State<Arc<Engine>>, body: Bytes) -> Result<Response, ApiError> {
    not_ready(&engine)?;
    let req: LoadLora = parse_json(&body)?;
    if req.lora_name.is_empty() {
        return Err(ApiError::bad_request(
            "lora_name must not be empty",
            Some("lora_name"),
        ));
    }
    let path = req.lora_path.unwrap_or_default();
    engine
        .load_lora(&req.lora_name, &path)
        .map_err(|m| ApiError::bad_request(m, Some("lora_name")))?;
    Ok(format!(
        "Success: LoRA adapter '{}' added successfully.",
        req.lora_name
    )
    .into_response())
}

#[derive(Deserialize)]
struct UnloadLora {
    lora_name: String,
}

async fn unload_lora(State(engine): State<Arc<Engine>>, body: Bytes) -> Result<Response, ApiError> {
    not_ready(&engine)?;
    let req: UnloadLora = parse_json(&body)?;
    if !engine.unload_lora(&req.lora_name) {
        return Err(ApiError::not_found(
            format!("The lora adapter '{}' cannot be found.", req.lora_name),
            Some("lora_name"),
        ));
    }
    Ok(format!(
        "Success: LoRA adapter '{}' removed successfully.",
        req.lora_name
    )
    .into_response())
}

async fn reset_prefix_cache(State(engine): State<Arc<Engine>>) -> Result<Response, ApiError> {
    if engine.reset_prefix_cache() {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to reset prefix cache: requests are running.",
        ))
    }
}

async fn sim_info(State(engine): State<Arc<Engine>>) -> Response {
    let snap = engine.snapshot();
    json_response(
        StatusCode::OK,
        &json!({
            "identity": engine.identity,
            "model": engine.config.served_model_name,
            "profile": engine.config.profile.name,
            "role": engine.config.role,
            "engine": engine.config.kind,
            "time_scale": engine.config.time_scale,
            "block_size": engine.block_size(),
            "num_gpu_blocks": snap.num_blocks,
            "free_blocks": snap.free_blocks,
            "cached_blocks": snap.cached_blocks,
            "running": snap.running,
            "waiting": snap.waiting,
            "kv_usage": snap.kv_usage,
            "prefix_cache_queries": snap.counters.prefix_queries,
            "prefix_cache_hits": snap.counters.prefix_hits,
            "virtual_time": engine.clock.now(),
        }),
    )
}

async fn get_faults(State(engine): State<Arc<Engine>>) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::to_value(engine.faults()).unwrap_or(Value::Null),
    )
}

async fn set_faults(State(engine): State<Arc<Engine>>, body: Bytes) -> Result<Response, ApiError> {
    let faults: crate::engine::Faults = parse_json(&body)?;
    faults
        .validate()
        .map_err(|m| ApiError::bad_request(m, None))?;
    engine.set_faults(faults.clone());
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(faults).unwrap_or(Value::Null),
    ))
}

async fn bootstrap_wait(
    State(engine): State<Arc<Engine>>,
    Path(room): Path<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let room: u64 = room
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid room `{room}`"), Some("room")))?;
    let timeout_ms: u64 = uri
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("timeout_ms="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
        .min(600_000);
    match engine
        .wait_bootstrap(room, Duration::from_millis(timeout_ms))
        .await
    {
        Some(n) => Ok(json_response(
            StatusCode::OK,
            &json!({"room": room, "prompt_tokens": n, "engine_id": engine.identity.engine_id}),
        )),
        None => Err(ApiError::not_found(
            format!("bootstrap room {room} has no finished prefill here"),
            Some("room"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Generation requests

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Fields shared by `/v1/completions` and `/v1/chat/completions`.
#[derive(Deserialize, Default)]
struct GenerationFields {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    ignore_eos: Option<bool>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    cache_salt: Option<String>,
    #[serde(default)]
    kv_transfer_params: Option<Value>,
    #[serde(default)]
    bootstrap_host: Option<String>,
    #[serde(default)]
    bootstrap_port: Option<u16>,
    #[serde(default)]
    bootstrap_room: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: Option<Value>,
    #[serde(flatten)]
    common: GenerationFields,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Option<Value>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    common: GenerationFields,
}

/// Which PD leg a request is, if any.
#[derive(Debug, Clone)]
enum PdLeg {
    None,
    /// vLLM NIXL prefill leg: return `kv_transfer_params` for the decoder.
    NixlPrefill,
    /// vLLM NIXL decode leg: KV comes from `remote_engine_id`.
    NixlDecode {
        /// Length of `remote_block_ids`.
        remote_blocks: usize,
    },
    /// SGLang prefill leg: announce the room when the prefill finishes.
    BootstrapPrefill {
        room: u64,
    },
    /// SGLang decode leg: wait for the room at the bootstrap server, then decode.
    BootstrapDecode {
        host: String,
        port: u16,
        room: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

struct Prepared {
    model: String,
    lora: Option<String>,
    prompt: Vec<u32>,
    max_output: usize,
    finish_at_limit: FinishReason,
    stream: bool,
    include_usage: bool,
    cache_salt: Option<String>,
    pd: PdLeg,
}

fn resolve_model(engine: &Engine, model: Option<&str>) -> Result<Option<String>, ApiError> {
    match model {
        None => Ok(None),
        Some(m) if m == engine.config.served_model_name => Ok(None),
        Some(m) if engine.loras().contains_key(m) => Ok(Some(m.to_string())),
        Some(m) => Err(ApiError::not_found(
            format!("The model `{m}` does not exist."),
            Some("model"),
        )),
    }
}

fn parse_messages(v: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    // Shared with the router, so both render the same text and hash the same blocks.
    muster_prefix::chat::parse_messages(v).map_err(|e| ApiError::bad_request(e.0, Some("messages")))
}

fn prompt_tokens(engine: &Engine, v: &Value) -> Result<Vec<u32>, ApiError> {
    let bad = |m: &str| ApiError::bad_request(m.to_string(), Some("prompt"));
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|t| {
                t.as_u64()
                    .filter(|x| *x < engine.codec.vocab_size() as u64)
                    .map(|x| x as u32)
                    .ok_or_else(|| bad("token ids must be integers within the vocabulary"))
            })
            .collect()
    };
    let text = |s: &str| {
        engine
            .codec
            .encode(s)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))
    };
    match v {
        Value::String(s) => text(s),
        Value::Array(a) if a.is_empty() => Err(bad("prompt must not be empty")),
        Value::Array(a) if a.iter().all(Value::is_number) => ids(a),
        Value::Array(a) if a.len() == 1 => match &a[0] {
            Value::String(s) => text(s),
            Value::Array(inner) => ids(inner),
            _ => Err(bad(
                "prompt must be a string, a list of token ids, or a list of one of those",
            )),
        },
        Value::Array(_) => Err(bad(
            "batched prompts are not supported by the simulator; send one prompt per request",
        )),
        _ => Err(bad(
            "prompt must be a string, a list of token ids, or a list of one of those",
        )),
    }
}

fn prepare(engine: &Engine, api: Api, body: &Bytes) -> Result<Prepared, ApiError> {
    let (prompt, common) = match api {
        Api::Completions => {
            let req: CompletionRequest = parse_json(body)?;
            let p = req
                .prompt
                .ok_or_else(|| ApiError::bad_request("`prompt` is required.", Some("prompt")))?;
            (prompt_tokens(engine, &p)?, req.common)
        }
        Api::Chat => {
            let req: ChatRequest = parse_json(body)?;
            let m = req.messages.ok_or_else(|| {
                ApiError::bad_request("`messages` is required.", Some("messages"))
            })?;
            let text = render_chat(
                &parse_messages(&m)?,
                req.add_generation_prompt.unwrap_or(true),
            );
            let tokens = engine
                .codec
                .encode(&text)
                .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
            (tokens, req.common)
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_request(
            "The prompt is empty; at least one token is required.",
            Some("prompt"),
        ));
    }
    let lora = resolve_model(engine, common.model.as_deref())?;
    if let Some(n) = common.n {
        if n != 1 {
            return Err(ApiError::bad_request(
                format!("n must be 1 (the simulator generates one choice), got {n}"),
                Some("n"),
            ));
        }
    }
    let (max_tokens, param) = match (common.max_completion_tokens, common.max_tokens) {
        (Some(m), _) => (Some(m), "max_completion_tokens"),
        (None, m) => (m, "max_tokens"),
    };
    let room_left = engine
        .config
        .profile
        .max_model_len
        .saturating_sub(prompt.len());
    let ignore_eos = common.ignore_eos.unwrap_or(false);
    let natural = engine.config.profile.natural_output_tokens.max(1);
    let (max_output, finish_at_limit) = match max_tokens {
        Some(m) if m < 1 => {
            return Err(ApiError::bad_request(
                format!("{param} must be at least 1, got {m}."),
                Some(param),
            ))
        }
        Some(m) => {
            let m = usize::try_from(m).unwrap_or(usize::MAX);
            // vLLM checks the requested budget, not what EOS would have produced.
            if m > room_left {
                let max_model_len = engine.config.profile.max_model_len;
                return Err(ApiError::bad_request(
                    crate::scheduler::AdmitError::TooLong {
                        max_model_len,
                        requested: prompt.len().saturating_add(m),
                        prompt: prompt.len(),
                        output: m,
                    }
                    .to_string(),
                    Some(param),
                ));
            }
            if ignore_eos || m <= natural {
                (m, FinishReason::Length)
            } else {
                (natural, FinishReason::Stop)
            }
        }
        None if ignore_eos => (room_left.max(1), FinishReason::Length),
        None if natural <= room_left => (natural, FinishReason::Stop),
        None => (room_left.max(1), FinishReason::Length),
    };
    if common.stream_options.is_some() && !common.stream.unwrap_or(false) {
        return Err(ApiError::bad_request(
            "Stream options can only be defined when `stream=True`.",
            Some("stream_options"),
        ));
    }
    let pd = pd_leg(engine, &common)?;
    Ok(Prepared {
        model: common
            .model
            .clone()
            .unwrap_or_else(|| engine.config.served_model_name.clone()),
        lora,
        prompt,
        max_output,
        finish_at_limit,
        stream: common.stream.unwrap_or(false),
        include_usage: common
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        cache_salt: common.cache_salt.clone(),
        pd,
    })
}

fn pd_leg(engine: &Engine, c: &GenerationFields) -> Result<PdLeg, ApiError> {
    let role = engine.config.role;
    if let Some(params) = &c.kv_transfer_params {
        if params.is_null() {
            return Ok(PdLeg::None);
        }
        let obj = params.as_object().ok_or_else(|| {
            ApiError::bad_request(
                "kv_transfer_params must be an object.",
                Some("kv_transfer_params"),
            )
        })?;
        let flag = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
        return match (flag("do_remote_decode"), flag("do_remote_prefill")) {
            (true, true) => Err(ApiError::bad_request(
                "kv_transfer_params cannot set both do_remote_decode and do_remote_prefill.",
                Some("kv_transfer_params"),
            )),
            (true, false) if role == Role::Decode => Err(ApiError::bad_request(
                "This engine is a decode instance (kv_consumer); it cannot serve a prefill leg \
                 (do_remote_decode).",
                Some("kv_transfer_params"),
            )),
            (true, false) => Ok(PdLeg::NixlPrefill),
            (false, true) if role == Role::Prefill => Err(ApiError::bad_request(
                "This engine is a prefill instance (kv_producer); it cannot serve a decode leg \
                 (do_remote_prefill).",
                Some("kv_transfer_params"),
            )),
            (false, true) => {
                for key in ["remote_engine_id", "remote_host"] {
                    if !obj.get(key).is_some_and(Value::is_string) {
                        return Err(ApiError::bad_request(
                            format!("kv_transfer_params.{key} must be a string for a decode leg."),
                            Some("kv_transfer_params"),
                        ));
                    }
                }
                if !obj.get("remote_block_ids").is_some_and(Value::is_array) {
                    return Err(ApiError::bad_request(
                        "kv_transfer_params.remote_block_ids must be a list for a decode leg.",
                        Some("kv_transfer_params"),
                    ));
                }
                Ok(PdLeg::NixlDecode {
                    remote_blocks: obj["remote_block_ids"].as_array().map_or(0, Vec::len),
                })
            }
            (false, false) => Ok(PdLeg::None),
        };
    }
    let Some(room) = c.bootstrap_room else {
        return Ok(PdLeg::None);
    };
    match role {
        Role::Both => Ok(PdLeg::None),
        Role::Prefill => Ok(PdLeg::BootstrapPrefill { room }),
        Role::Decode => {
            let host = c.bootstrap_host.clone().ok_or_else(|| {
                ApiError::bad_request(
                    "bootstrap_host is required with bootstrap_room on a decode engine.",
                    Some("bootstrap_host"),
                )
            })?;
            let port = c.bootstrap_port.ok_or_else(|| {
                ApiError::bad_request(
                    "bootstrap_port is required with bootstrap_room on a decode engine.",
                    Some("bootstrap_port"),
                )
            })?;
            Ok(PdLeg::BootstrapDecode { host, port, room })
        }
    }
}

async fn completions(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    generate(engine, Api::Completions, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    generate(engine, Api::Chat, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn generate(engine: Arc<Engine>, api: Api, body: Bytes) -> Result<Response, ApiError> {
    not_ready(&engine)?;
    let p = prepare(&engine, api, &body)?;
    if engine.roll_error() {
        return Err(ApiError::status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Simulated engine failure (fault injection: error_rate).",
        ));
    }
    let remote_prefill = match &p.pd {
        PdLeg::NixlDecode { remote_blocks } => {
            check_remote_blocks(&engine, *remote_blocks, p.prompt.len())?;
            true
        }
        PdLeg::BootstrapDecode { host, port, room } => {
            let peer_tokens = wait_for_prefill_peer(&engine, host, *port, *room).await?;
            if peer_tokens != p.prompt.len() {
                return Err(ApiError::bad_request(
                    format!(
                        "bootstrap room {room}: the prefill peer computed {peer_tokens} prompt \
                         tokens but this request has {}; both legs must carry the same prompt.",
                        p.prompt.len()
                    ),
                    Some("bootstrap_room"),
                ));
            }
            true
        }
        _ => false,
    };
    let max_output = match p.pd {
        // An SGLang prefill server only prefills; the first token comes from the decoder.
        PdLeg::BootstrapPrefill { .. } => 1,
        _ => p.max_output,
    };
    let stream = engine
        .submit(Submission {
            prompt: p.prompt.clone(),
            max_output_tokens: max_output,
            finish_reason_at_limit: p.finish_at_limit,
            lora: p.lora.clone(),
            cache_salt: p.cache_salt.clone(),
            remote_prefill,
        })
        .map_err(|e| match e {
            SubmitError::UnknownModel(m) => {
                ApiError::not_found(format!("The model `{m}` does not exist."), Some("model"))
            }
            SubmitError::Admit(a) => ApiError::bad_request(a.to_string(), Some("prompt")),
        })?;
    let ctx = ResponseContext {
        id: format!(
            "{}-{:016x}",
            if api == Api::Chat { "chatcmpl" } else { "cmpl" },
            stream.id ^ (unix_now() << 20)
        ),
        created: unix_now(),
        model: p.model.clone(),
        api,
        include_usage: p.include_usage,
        engine: Arc::clone(&engine),
        pd: p.pd.clone(),
    };
    let crash_after = engine.roll_crash();
    let stall = engine.roll_stall();
    if p.stream {
        Ok(stream_response(ctx, stream, crash_after, stall))
    } else {
        Ok(full_response(ctx, stream, crash_after, stall).await)
    }
}

/// A decode leg must describe exactly the prefill's blocks; a mismatch means the two legs
/// carried different prompts (a router bug real NIXL would turn into garbage output).
fn check_remote_blocks(engine: &Engine, n: usize, prompt_len: usize) -> Result<(), ApiError> {
    let expected = prompt_len.div_ceil(engine.block_size());
    if n != expected {
        return Err(ApiError::bad_request(
            format!(
                "kv_transfer_params.remote_block_ids has {n} blocks but this prompt needs \
                 {expected}; the decode leg must carry the prefill leg's prompt."
            ),
            Some("kv_transfer_params"),
        ));
    }
    Ok(())
}

/// Asks the prefill engine's bootstrap endpoint whether the room's KV is ready.
async fn wait_for_prefill_peer(
    engine: &Engine,
    host: &str,
    port: u16,
    room: u64,
) -> Result<usize, ApiError> {
    let ip: IpAddr = if host == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse().map_err(|_| {
            ApiError::bad_request(
                format!("bootstrap_host must be an IP address, got `{host}`"),
                Some("bootstrap_host"),
            )
        })?
    };
    // Keeps tests and demos from ever reaching outside the machine by accident.
    if !ip.is_loopback() && !engine.config.allow_remote_peers {
        return Err(ApiError::bad_request(
            format!(
                "bootstrap_host {ip} is not a loopback address; start the simulator with \
                 --allow-remote-peers to pair with it"
            ),
            Some("bootstrap_host"),
        ));
    }
    let timeout = engine.clock.real(engine.config.bootstrap_timeout_seconds);
    let path = format!(
        "/sim/bootstrap/{room}?timeout_ms={}",
        timeout.as_millis().max(1)
    );
    let addr = std::net::SocketAddr::new(ip, port);
    let unavailable = |why: String| {
        ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("bootstrap room {room}: prefill peer {addr} {why}"),
        )
    };
    match tokio::time::timeout(
        timeout + Duration::from_secs(2),
        crate::http_client::get(addr, &path),
    )
    .await
    {
        Err(_) => Err(unavailable("did not answer in time".into())),
        Ok(Err(e)) => Err(unavailable(format!("is unreachable: {e}"))),
        Ok(Ok((200, body))) => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("prompt_tokens").and_then(Value::as_u64))
            .map(|n| n as usize)
            .ok_or_else(|| unavailable("sent an unreadable bootstrap reply".into())),
        Ok(Ok((_, _))) => Err(unavailable(format!(
            "did not finish the prefill within {:.1}s",
            engine.config.bootstrap_timeout_seconds
        ))),
    }
}

struct ResponseContext {
    id: String,
    created: u64,
    model: String,
    api: Api,
    include_usage: bool,
    engine: Arc<Engine>,
    pd: PdLeg,
}

impl ResponseContext {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        }
    }

    fn usage(&self, f: &crate::scheduler::Finished) -> Value {
        json!({
            "prompt_tokens": f.prompt_tokens,
            "completion_tokens": f.completion_tokens,
            "total_tokens": f.prompt_tokens + f.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": f.cached_tokens},
        })
    }

    /// NIXL parameters the decoder needs, on the prefill leg's final output.
    fn kv_transfer_params(&self, f: &crate::scheduler::Finished) -> Value {
        match self.pd {
            PdLeg::NixlPrefill => json!({
                "do_remote_prefill": true,
                "do_remote_decode": false,
                "remote_block_ids": f.prompt_block_ids,
                "remote_engine_id": self.engine.identity.engine_id,
                "remote_host": self.engine.identity.host,
                "remote_port": self.engine.config.nixl_side_channel_port,
                "tp_size": 1,
            }),
            _ => Value::Null,
        }
    }

    /// Side effects of a finished request (SGLang room announcement).
    fn on_finished(&self, f: &crate::scheduler::Finished) {
        if let PdLeg::BootstrapPrefill { room } = self.pd {
            self.engine.bootstrap_ready(room, f.prompt_tokens);
        }
    }

    fn chunk(&self, text: &str, first: bool, finish: Option<&crate::scheduler::Finished>) -> Value {
        let finish_reason = finish.map(|f| f.reason.as_str());
        let choice = match self.api {
            Api::Completions => json!({
                "index": 0, "text": text, "logprobs": null,
                "finish_reason": finish_reason, "stop_reason": null,
            }),
            Api::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason})
            }
        };
        let mut v = json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        if let Some(f) = finish {
            let params = self.kv_transfer_params(f);
            if !params.is_null() {
                v["kv_transfer_params"] = params;
            }
        }
        v
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_response(
    ctx: ResponseContext,
    req: crate::engine::RequestStream,
    crash_after: Option<u32>,
    stall: Option<Duration>,
) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        // Move the whole stream in: capturing only `req.rx` would leave its abort guard behind,
        // which would cancel the request as soon as this function returns.
        let mut req = req;
        let mut sent = 0u32;
        let mut first = true;
        if ctx.api == Api::Chat {
            // OpenAI sends the role in an empty first delta; clients key on it.
            if tx.send(Ok(sse(&ctx.chunk("", true, None)))).await.is_err() {
                return;
            }
            first = false;
        }
        while let Some(e) = req.rx.recv().await {
            let Emission {
                token, finished, ..
            } = e;
            if crash_after.is_some_and(|n| sent >= n) {
                let _ = tx
                    .send(Err(std::io::Error::other("simulated crash mid-stream")))
                    .await;
                return;
            }
            let text = token
                .map(|t| ctx.engine.codec.token_text(t))
                .unwrap_or_default();
            if tx
                .send(Ok(sse(&ctx.chunk(&text, first, finished.as_ref()))))
                .await
                .is_err()
            {
                return; // client went away; dropping `req` aborts the request
            }
            first = false;
            sent += 1;
            if sent == 1 {
                if let Some(d) = stall {
                    tokio::time::sleep(d).await;
                }
            }
            if let Some(f) = finished {
                ctx.on_finished(&f);
                if ctx.include_usage {
                    let v = json!({
                        "id": ctx.id, "object": ctx.object(true), "created": ctx.created,
                        "model": ctx.model, "choices": [], "usage": ctx.usage(&f),
                    });
                    if tx.send(Ok(sse(&v))).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                return;
            }
        }
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn full_response(
    ctx: ResponseContext,
    mut req: crate::engine::RequestStream,
    crash_after: Option<u32>,
    stall: Option<Duration>,
) -> Response {
    let mut text = String::new();
    let mut count = 0u32;
    while let Some(e) = req.rx.recv().await {
        if let Some(t) = e.token {
            text.push_str(&ctx.engine.codec.token_text(t));
            count += 1;
            if count == 1 {
                if let Some(d) = stall {
                    tokio::time::sleep(d).await;
                }
            }
        }
        if crash_after.is_some_and(|n| count >= n) {
            // Headers go out, then the connection dies: what a client sees when the engine
            // process is killed mid-response.
            let body = Body::from_stream(futures::stream::once(async {
                Err::<Bytes, _>(std::io::Error::other("simulated crash"))
            }));
            return Response::new(body);
        }
        if let Some(f) = e.finished {
            ctx.on_finished(&f);
            let choice = match ctx.api {
                Api::Completions => json!({
                    "index": 0, "text": text, "logprobs": null,
                    "finish_reason": f.reason.as_str(), "stop_reason": null,
                }),
                Api::Chat => json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "tool_calls": []},
                    "logprobs": null, "finish_reason": f.reason.as_str(), "stop_reason": null,
                }),
            };
            let v = json!({
                "id": ctx.id, "object": ctx.object(false), "created": ctx.created,
                "model": ctx.model, "choices": [choice], "usage": ctx.usage(&f),
                "kv_transfer_params": ctx.kv_transfer_params(&f),
            });
            return json_response(StatusCode::OK, &v);
        }
    }
    ApiError::status(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The request was aborted by the engine.",
    )
    .into_response()
}
