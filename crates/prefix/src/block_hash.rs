//! Chained prefix-block hashing, shared by the simulated engine and the router.
//!
//! A prompt is cut into blocks of `block_size` tokens. Only **full** blocks are hashed (a partial
//! tail block is never cached, exactly as in vLLM). Every block hash covers the block's tokens
//! *and* its parent's hash, so equal hashes mean equal whole prefixes, and a router can match the
//! longest cached prefix by walking hashes from block 0 until the first miss.
//!
//! The function, precisely (all integers little-endian, `xxh64` is XXH64 with seed 0):
//!
//! ```text
//! root  = xxh64( "muster-kv-v1" ‖ 0x00 ‖ model ‖ 0x00 ‖ lora ‖ 0x00 ‖ cache_salt )
//! h[0]  = xxh64( le64(root)   ‖ le32(t[0]) ‖ … ‖ le32(t[B-1]) )
//! h[i]  = xxh64( le64(h[i-1]) ‖ le32(t[i·B]) ‖ … ‖ le32(t[i·B+B-1]) )
//! ```
//!
//! where `model` is the served model name (the base model, not the adapter), `lora` is the LoRA
//! adapter *name* or empty, and `cache_salt` is the request's `cache_salt` or empty. Names rather
//! than vLLM's per-process integer LoRA ids are hashed because two engines may number the same
//! adapter differently, while the router only knows names. The `0x00` separators keep
//! `("ab","c")` and `("a","bc")` apart.
//!
//! The parent of block 0 is reported to KV-event subscribers as `None` (vLLM does the same); the
//! `root` value only seeds the chain.

use xxhash_rust::xxh64::Xxh64;

/// Domain tag hashed into every root so hashes from other schemes never collide by accident.
const DOMAIN: &[u8] = b"muster-kv-v1";

/// What, besides the tokens, makes two KV blocks interchangeable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HashContext<'a> {
    /// Served base-model name.
    pub model: &'a str,
    /// LoRA adapter name, if the request runs on an adapter.
    pub lora: Option<&'a str>,
    /// Per-request cache salt (vLLM's `cache_salt`), isolating tenants' caches.
    pub cache_salt: Option<&'a str>,
}

/// The seed of the hash chain for one model/adapter/salt combination.
pub fn root_hash(ctx: &HashContext<'_>) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(DOMAIN);
    h.update(&[0]);
    h.update(ctx.model.as_bytes());
    h.update(&[0]);
    h.update(ctx.lora.unwrap_or("").as_bytes());
    h.update(&[0]);
    h.update(ctx.cache_salt.unwrap_or("").as_bytes());
    h.digest()
}

/// Hash of one full block given its parent's hash (the root for block 0).
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(&parent.to_le_bytes());
    // Fed in runs of up to 64 tokens: one `update` per 4-byte token made hashing a 32k-token
    // prompt cost more than looking it up in every endpoint's index.
    let mut buf = [0u8; 4 * 64];
    for run in tokens.chunks(64) {
        for (b, t) in buf.chunks_exact_mut(4).zip(run) {
            b.copy_from_slice(&t.to_le_bytes());
        }
        h.update(&buf[..4 * run.len()]);
    }
    h.digest()
}

/// Hashes of every full block of `tokens`, in order. A trailing partial block is ignored.
///
/// # Panics
/// Panics if `block_size` is 0 (a configuration error caught when a profile is loaded).
pub fn prefix_block_hashes(ctx: &HashContext<'_>, tokens: &[u32], block_size: usize) -> Vec<u64> {
    assert!(block_size > 0, "block_size must be positive");
    let mut parent = root_hash(ctx);
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            parent = block_hash(parent, block);
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(model: &str) -> HashContext<'_> {
        HashContext {
            model,
            ..Default::default()
        }
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        let tokens: Vec<u32> = (0..37).collect();
        assert_eq!(prefix_block_hashes(&ctx("m"), &tokens, 16).len(), 2);
        assert!(prefix_block_hashes(&ctx("m"), &tokens[..15], 16).is_empty());
    }

    #[test]
    fn equal_prefixes_share_hashes_and_diverge_after_the_first_difference() {
        let a: Vec<u32> = (0..64).collect();
        let mut b = a.clone();
        b[40] = 999;
        let ha = prefix_block_hashes(&ctx("m"), &a, 16);
        let hb = prefix_block_hashes(&ctx("m"), &b, 16);
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        // Chaining: block 3 has equal tokens in both, but a different parent.
        assert_ne!(ha[3], hb[3]);
    }

    #[test]
    fn model_lora_and_salt_separate_caches() {
        let t: Vec<u32> = (0..16).collect();
        let base = prefix_block_hashes(&ctx("m"), &t, 16);
        let other_model = prefix_block_hashes(&ctx("n"), &t, 16);
        let lora = prefix_block_hashes(
            &HashContext {
                model: "m",
                lora: Some("a"),
                cache_salt: None,
            },
            &t,
            16,
        );
        let salt = prefix_block_hashes(
            &HashContext {
                model: "m",
                lora: None,
                cache_salt: Some("a"),
            },
            &t,
            16,
        );
        assert_ne!(base, other_model);
        assert_ne!(base, lora);
        assert_ne!(
            lora, salt,
            "a LoRA name must not collide with an equal salt"
        );
    }

    #[test]
    fn block_hash_is_xxh64_of_parent_then_tokens_little_endian() {
        // The documented byte string, hashed in one piece, for block sizes below, at and
        // above the 64-token runs the hasher is fed in.
        for n in [1usize, 16, 63, 64, 65, 200] {
            let tokens: Vec<u32> = (0..n as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let mut bytes = 7u64.to_le_bytes().to_vec();
            for t in &tokens {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
            assert_eq!(
                block_hash(7, &tokens),
                xxhash_rust::xxh64::xxh64(&bytes, 0),
                "{n} tokens"
            );
        }
    }

    #[test]
    fn chain_is_reproducible_by_hand() {
        let t: Vec<u32> = (0..32).collect();
        let c = ctx("m");
        let h0 = block_hash(root_hash(&c), &t[..16]);
        let h1 = block_hash(h0, &t[16..]);
        assert_eq!(prefix_block_hashes(&c, &t, 16), vec![h0, h1]);
    }
}
