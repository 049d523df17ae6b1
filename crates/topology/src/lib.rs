//! HyperNode graph, tier choice for gangs, Volcano extender scoring.
//!
//! Pure functions and data only (DESIGN §3, functional core): the controller feeds watch events
//! into a [`Topology`], asks [`tier_choice::choose`] for a group's `networkTopology`, and puts the
//! returned explanation into status and Events. See `README.md` for the rules.

pub mod capacity;
pub mod discovery;
pub mod extender;
pub mod graph;
pub mod resolve;
pub mod tier_choice;
pub mod validate;

pub use capacity::Resources;
pub use graph::{HyperNodeState, Lca, NodeState, Snapshot, Topology, Vertex, WatchEvent};
pub use validate::{validate, TopologyError};

#[cfg(test)]
mod discovery_tests;
#[cfg(test)]
mod extender_tests;
#[cfg(test)]
mod graph_tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod tier_choice_tests;
