//! Muster's controllers. Today: the ModelServing controller (`serving`), which expands a
//! ModelServing into gang-scheduled ServingGroups, rolls them out and heals them.

pub mod leader;
pub mod metrics;
pub mod serving;
