//! Muster's router: an OpenAI-compatible gateway in front of vLLM/SGLang engines.
//!
//! The crate is split along DESIGN §3's "functional core, imperative shell" line:
//!
//! * [`scheduler`] is the core: a pure function from an immutable snapshot of endpoint state
//!   (in-flight counts, engine metrics, staleness, ejection) to a decision, built from filters,
//!   weighted scorers in `[0, 1]` and a picker with random tie-breaking. The same code can run
//!   inside a discrete-event simulation.
//! * [`config`] turns ModelRoute/ModelServer objects plus endpoints (from the Kubernetes API or
//!   a standalone YAML file) into an immutable [`config::RoutingTable`]; compiling is pure too.
//! * [`endpoints`] holds the live per-endpoint state the snapshot is read from, the engine
//!   metrics scrapers (one independent loop per endpoint) and passive outlier ejection.
//! * [`proxy`] is the thin shell: parse just enough of the request to route it, pick an
//!   endpoint, forward with a pooled hyper client, retry only before the first byte, and relay
//!   the response chunk by chunk.
//! * [`prefix`] is cache-aware routing state: prompt → chained block hashes (the engine's
//!   tokenizer and chat template), and per-endpoint approximate and KV-event-fed indexes.
//! * [`policy`] is traffic policy: authentication, token rate limits (local and Redis-global)
//!   and fair queuing in front of saturated servers.

pub mod access_log;
pub mod config;
pub mod duration;
pub mod endpoints;
pub mod errors;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod prefix;
pub mod proxy;
pub mod scheduler;
pub mod server;
pub mod sessions;
