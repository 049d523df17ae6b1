//! HyperNode graph, tier choice for gangs, Volcano extender
//!
//! Reserved by the workspace layout (DESIGN §2); filled by its own issue.
