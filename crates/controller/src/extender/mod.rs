//! The Volcano scheduler extender (`muster-topology-extender`): an HTTP server for Volcano's
//! `extender` plugin serving the predicate and prioritize verbs over
//! [`muster_topology::extender`]'s pure scoring.
//!
//! `state` is the in-memory view fed by watches (a cache for scoring, never a source of
//! decisions that outlive a restart: a restarted extender rebuilds it from the API server) and
//! the pure request handling; `server` is the axum and watch shell. Volcano must run it with
//! `extender.ignorable: true`, so a dead or slow extender never blocks scheduling.

/// Re-exported from the shared watch plumbing (`crate::watch`).
pub use crate::watch::relist;
pub mod server;
pub mod state;

pub use server::{router, run};
pub use state::ExtenderState;
