//! What the engine and the router must agree on to talk about the same KV-cache blocks:
//!
//! * [`tokenizer`]: a Hugging Face `tokenizer.json`, encoded the same way on both sides (the
//!   router through a cache of per-message segments that yields the same ids);
//! * [`chat`]: the chat template that turns `messages` into the text that is tokenized;
//! * [`block_hash`]: chained hashes of full token blocks, seeded with model, LoRA and salt.
//!
//! Kept free of server dependencies so the router can use it without pulling in the engine.

#![warn(missing_docs)]

pub mod block_hash;
pub mod chat;
pub mod tokenizer;
