//! Load generator and benchmark drivers
//!
//! Reserved by the workspace layout (DESIGN §2); filled by its own issue.
