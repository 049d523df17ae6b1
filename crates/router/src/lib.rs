//! OpenAI-compatible gateway with KV-cache-aware scheduling
//!
//! Reserved by the workspace layout (DESIGN §2); filled by its own issue.
