//! Muster's controllers: the ModelServing controller (`serving`), which expands a
//! ModelServing into gang-scheduled ServingGroups, rolls them out and heals them, and HyperNode
//! discovery (`discovery`), which keeps Volcano HyperNodes true to node labels, and the shell of
//! the Volcano scheduler extender (`extender`, binary `muster-topology-extender`). `watch` holds
//! the watch-to-cache plumbing they share, including the HyperNode/Node topology cache.

pub mod autoscaling;
pub mod discovery;
pub mod extender;
pub mod leader;
pub mod metrics;
pub mod serving;
pub mod watch;
