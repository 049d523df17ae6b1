//! A vLLM/SGLang stand-in with a calibrated latency model.
//!
//! The engine model ([`scheduler`], [`kv_cache`], [`latency`]) is pure: it takes virtual time as
//! input and does no I/O, so it is tested on its own. [`engine`] drives it in scaled real time,
//! [`api`] puts vLLM's OpenAI-compatible HTTP API in front, [`server`] serves many engines from
//! one process, and [`kv_events`] publishes vLLM-format KV events over ZMQ. [`block_hash`] is the
//! chained prefix-block hash the router reuses to match its own view of each engine's cache.
//!
//! See the crate README for the latency model, the profile numbers and the command line.

#![warn(missing_docs)]

pub mod api;
pub mod block_hash;
pub mod engine;
pub mod http_client;
pub mod kv_cache;
pub mod kv_events;
pub mod latency;
pub mod metrics;
pub mod profile;
pub mod scheduler;
pub mod server;
pub mod tokenize;
