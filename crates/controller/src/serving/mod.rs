//! The ModelServing controller: observe → plan → apply.
//!
//! `observe`, `expand`, `revision`, `tier`, `plan` and `status` are pure and hold all the logic;
//! `reconcile` is the thin shell that lists objects, runs the planner and applies its plan.

pub mod expand;
pub mod naming;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod revision;
pub mod status;
pub mod tier;
