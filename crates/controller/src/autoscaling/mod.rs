//! The AutoscalingPolicy controller: scrape metrics → recommend → scale whole ServingGroups.
//!
//! `metrics_source` (which pods, which metric, Prometheus text) and `decide` (policy → pure
//! `muster_solver` recommender → scale action, status, Events) hold the logic; `scrape` does
//! the HTTP (`remote` for router and Prometheus sources) and `reconcile` is the thin periodic
//! shell. `hetero` splits replicas of one model across ModelServings by cost with the solver's
//! integer program; `disagg` scales the roles of one ModelServing within a ratio band.

pub mod decide;
pub mod disagg;
pub mod hetero;
pub mod metrics_source;
pub mod reconcile;
pub mod remote;
pub mod scrape;
