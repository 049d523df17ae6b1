//! Pure autoscaling decisions: cost policy, integer program, KPA recommender
//!
//! Reserved by the workspace layout (DESIGN §2); filled by its own issue.
