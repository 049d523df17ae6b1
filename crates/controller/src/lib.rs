//! Muster's kube-rs controllers (ModelServing, AutoscalingPolicy, HyperNode discovery)
//!
//! Reserved by the workspace layout (DESIGN §2); filled by its own issue.
