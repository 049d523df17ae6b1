//! Pure autoscaling decisions for Muster: no I/O, no Kubernetes.
//!
//! - [`cost_policy`]: the YAML cost policy (accelerators, instance shapes, capacity at SLO).
//! - [`program`]: the cost-optimal accelerator mix as an integer program (good_lp + microlp).
//! - [`baselines`]: best single accelerator type and a Kthena-style greedy fill, for comparison.
//! - [`recommender`]: KPA-style stable/panic recommender for a fleet of identical instances.
//! - [`ratio`]: prefill/decode counts clamped into a ratio band.

pub mod baselines;
pub mod cost_policy;
pub mod problem;
pub mod program;
pub mod ratio;
pub mod recommender;

pub use cost_policy::{CostPolicy, PolicyError};
pub use problem::{CurrentFleet, Demand, DemandError, ModelDemand, Problem};
pub use program::{
    plan_fleet, plan_or_keep_last, routes_for, solve_with, BucketRoute, Infeasible, Plan,
    PlanDecision, PlanError, SolveOptions,
};
pub use ratio::{enforce_ratio, RatioBand, RatioOutcome, RoleCount};
pub use recommender::{
    recommend, MetricSample, Mode, Recommendation, RecommenderConfig, RecommenderState,
};
