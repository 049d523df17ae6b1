//! Chained prefix-block hashing: the implementation lives in `muster-prefix`, shared with the
//! router so both compute identical hashes. Re-exported here under its old path.

pub use muster_prefix::block_hash::*;
