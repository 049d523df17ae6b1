//! The HyperNode discovery controller: keeps Volcano HyperNodes true to node labels.
//!
//! `config` (flag parsing) and `trigger` (which watch events matter) are pure; the tree itself
//! is planned by [`muster_topology::discovery::plan`]; `reconcile` is the thin shell that lists
//! Nodes and HyperNodes, plans, and writes the plan (server-side apply, field manager `muster`).
//! Only HyperNodes labelled as this instance's (`app.kubernetes.io/managed-by=muster` and
//! `topology.muster.dev/discovery-source=<source>`) are ever updated or deleted.

pub mod config;
pub mod reconcile;
pub mod trigger;

pub use config::{parse_tier_flags, ConfigError, DiscoveryOptions};
pub use reconcile::{reconcile_once, run, Outcome};
