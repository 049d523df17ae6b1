//! Listeners and the engine registry: one process, many engines.
//!
//! A listener on a specific address serves exactly one engine. A listener on an unspecified
//! address (`0.0.0.0:8000`) serves one engine **per local IP** a connection arrives on, created
//! on first contact: kwok pods whose IPs are in 127.0.0.0/8 then each get their own engine, KV
//! cache and metrics from a single process, and each engine binds its KV-event socket on its
//! own IP. An optional bootstrap port (SGLang's, default 8998 there) is served by the same
//! engines.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::engine::{Engine, EngineConfig, EngineIdentity};
use crate::kv_events::KvEventPublisher;
use crate::tokenize::TextCodec;

/// Options for [`start`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// HTTP listen addresses (port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// Extra port on each listen IP that serves the same engines (SGLang bootstrap).
    pub bootstrap_port: Option<u16>,
    /// KV-event PUB port; `None` disables events. For specific listen addresses, listener `i`
    /// uses `port + i` (or a free port when 0).
    pub kv_events_port: Option<u16>,
    /// Topic template; `{ip}`, `{port}` and `{model}` are substituted.
    pub kv_events_topic: String,
    /// Template for every engine.
    pub engine: EngineConfig,
    /// Tokenizer shared by all engines.
    pub codec: Arc<TextCodec>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// No listen address.
    #[error("no listen address given")]
    NoListener,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum EngineKey {
    Listener(usize),
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy)]
enum KeyMode {
    Listener(usize),
    /// Engines per local IP; the index is the listener whose port the engines report.
    ByLocalIp(usize),
}

struct Registry {
    opts: ServerOptions,
    engines: Mutex<HashMap<EngineKey, (Arc<Engine>, Router)>>,
    /// Bound HTTP port per listener index.
    http_ports: Vec<u16>,
}

impl Registry {
    async fn get_or_create(
        &self,
        key: EngineKey,
        ip: IpAddr,
        listener: usize,
    ) -> (Arc<Engine>, Router) {
        let mut engines = self.engines.lock().await;
        if let Some(e) = engines.get(&key) {
            return e.clone();
        }
        let (http_port, kv_port) = match key {
            EngineKey::Listener(i) => (
                self.http_ports[i],
                self.opts.kv_events_port.map(|p| {
                    if p == 0 {
                        0
                    } else {
                        p.saturating_add(i as u16)
                    }
                }),
            ),
            EngineKey::Ip(_) => (self.http_ports[listener], self.opts.kv_events_port),
        };
        let model = &self.opts.engine.served_model_name;
        let topic = self
            .opts
            .kv_events_topic
            .replace("{ip}", &ip.to_string())
            .replace("{port}", &http_port.to_string())
            .replace("{model}", model);
        let publisher = match kv_port {
            Some(p) => {
                let endpoint = format!("tcp://{}", SocketAddr::new(ip, p));
                match KvEventPublisher::bind(&endpoint, topic.clone()).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(%endpoint, error = %e, "cannot bind KV-event socket; events disabled for this engine");
                        None
                    }
                }
            }
            None => None,
        };
        let engine_id = {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let h = xxhash_rust::xxh64::xxh64(
                format!("{ip}:{http_port}:{nanos}:{}", std::process::id()).as_bytes(),
                0,
            );
            format!("sim-{h:016x}")
        };
        let identity = EngineIdentity {
            engine_id,
            host: ip.to_string(),
            http_port,
            kv_events_endpoint: publisher.as_ref().map(|p| p.endpoint.clone()),
            kv_events_topic: publisher.as_ref().map(|p| p.topic.clone()),
        };
        tracing::info!(
            host = %identity.host,
            port = identity.http_port,
            engine_id = %identity.engine_id,
            kv_events = ?identity.kv_events_endpoint,
            "engine created"
        );
        let engine = Engine::start(
            self.opts.engine.clone(),
            identity,
            Arc::clone(&self.opts.codec),
            publisher,
        );
        let router = crate::api::router(Arc::clone(&engine));
        engines.insert(key, (Arc::clone(&engine), router.clone()));
        (engine, router)
    }
}

/// A started server.
pub struct RunningServer {
    /// Bound HTTP addresses, in `--listen` order.
    pub http_addrs: Vec<SocketAddr>,
    /// Bound bootstrap addresses, if any.
    pub bootstrap_addrs: Vec<SocketAddr>,
    registry: Arc<Registry>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// The engine behind listener `index` (specific-address listeners only; created eagerly).
    pub async fn engine(&self, index: usize) -> Option<Arc<Engine>> {
        self.registry
            .engines
            .lock()
            .await
            .get(&EngineKey::Listener(index))
            .map(|(e, _)| Arc::clone(e))
    }

    /// Runs until every listener stops (i.e. forever, in practice).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Stops accepting connections.
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds every listener, creates the engines of specific-address listeners, and starts serving.
pub async fn start(opts: ServerOptions) -> Result<RunningServer, ServerError> {
    if opts.listen.is_empty() {
        return Err(ServerError::NoListener);
    }
    let mut listeners = Vec::new();
    for addr in &opts.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: *addr,
                source,
            })?;
        listeners.push(l);
    }
    let http_addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("bound listener has an address"))
        .collect();
    let mut bootstrap = Vec::new();
    if let Some(port) = opts.bootstrap_port {
        for addr in &opts.listen {
            let b = SocketAddr::new(addr.ip(), port);
            let l = TcpListener::bind(b)
                .await
                .map_err(|source| ServerError::Bind { addr: b, source })?;
            bootstrap.push(l);
        }
    }
    let bootstrap_addrs: Vec<SocketAddr> = bootstrap
        .iter()
        .map(|l| l.local_addr().expect("bound listener has an address"))
        .collect();
    let registry = Arc::new(Registry {
        http_ports: http_addrs.iter().map(SocketAddr::port).collect(),
        opts: opts.clone(),
        engines: Mutex::new(HashMap::new()),
    });
    let modes: Vec<KeyMode> = opts
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if a.ip().is_unspecified() {
                KeyMode::ByLocalIp(i)
            } else {
                KeyMode::Listener(i)
            }
        })
        .collect();
    // Specific-address engines exist before the first request, so their KV-event sockets are
    // bound by the time a router subscribes.
    for (i, mode) in modes.iter().enumerate() {
        if let KeyMode::Listener(i2) = mode {
            let _ = registry
                .get_or_create(EngineKey::Listener(*i2), http_addrs[i].ip(), i)
                .await;
        }
    }
    let mut tasks = Vec::new();
    for (l, mode) in listeners
        .into_iter()
        .zip(modes.iter().copied())
        .chain(bootstrap.into_iter().zip(modes.iter().copied()))
    {
        tasks.push(tokio::spawn(accept_loop(l, mode, Arc::clone(&registry))));
    }
    Ok(RunningServer {
        http_addrs,
        bootstrap_addrs,
        registry,
        tasks,
    })
}

async fn accept_loop(listener: TcpListener, mode: KeyMode, registry: Arc<Registry>) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let Ok(local) = stream.local_addr() else {
                return;
            };
            let ip = local.ip().to_canonical();
            let (key, listener) = match mode {
                KeyMode::Listener(i) => (EngineKey::Listener(i), i),
                KeyMode::ByLocalIp(i) => (EngineKey::Ip(ip), i),
            };
            let (engine, router) = registry.get_or_create(key, ip, listener).await;
            if engine.refusing_connections() {
                // RST instead of FIN: the client sees "connection reset", as from a dead port.
                let _ = stream.set_zero_linger();
                return;
            }
            let _ = stream.set_nodelay(true);
            let svc = TowerToHyperService::new(router);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
