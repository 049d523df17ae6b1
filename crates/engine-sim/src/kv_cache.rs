//! A paged KV cache with prefix caching, modelled on vLLM's block pool.
//!
//! The cache has a fixed number of blocks. A block referenced by a running request is pinned; a
//! block nobody references sits in the free queue, ordered least-recently-freed first. A full
//! block carries its chained hash (see [`crate::block_hash`]) and stays findable by that hash
//! while it waits in the free queue, so a later request with the same prefix can pick it up
//! again; it loses its hash only when it is reused for new data (eviction), which is what the
//! `BlockRemoved` event reports.

use std::collections::{BTreeMap, HashMap};

/// Index of a block in the pool.
pub type BlockId = u32;

/// A change to the set of cached blocks, in vLLM's KV-event vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Consecutive full blocks of one sequence became cached.
    BlockStored {
        /// Hashes of the new blocks, in sequence order.
        block_hashes: Vec<u64>,
        /// Hash of the block before the first one; `None` for the first block of a sequence.
        parent_block_hash: Option<u64>,
        /// Tokens of all the new blocks, concatenated.
        token_ids: Vec<u32>,
        /// Tokens per block.
        block_size: usize,
        /// Engine-local LoRA id, if the sequence runs on an adapter.
        lora_id: Option<u32>,
    },
    /// Blocks were evicted and their hashes are no longer served.
    BlockRemoved {
        /// Hashes that disappeared.
        block_hashes: Vec<u64>,
    },
    /// The whole prefix cache was dropped.
    AllBlocksCleared,
}

#[derive(Debug, Clone, Default)]
struct Block {
    ref_count: u32,
    hash: Option<u64>,
    /// Position in the free queue while `ref_count == 0`.
    free_seq: Option<u64>,
}

/// The block pool.
#[derive(Debug, Clone)]
pub struct BlockPool {
    blocks: Vec<Block>,
    /// Free queue: order key → block, smallest key evicted first.
    free: BTreeMap<u64, BlockId>,
    next_free_seq: u64,
    cached: HashMap<u64, BlockId>,
    events: Vec<KvEvent>,
}

impl BlockPool {
    /// A pool of `num_blocks` empty blocks.
    pub fn new(num_blocks: usize) -> Self {
        let mut pool = Self {
            blocks: vec![Block::default(); num_blocks],
            free: BTreeMap::new(),
            next_free_seq: 0,
            cached: HashMap::new(),
            events: Vec::new(),
        };
        for id in 0..num_blocks as BlockId {
            pool.push_free(id);
        }
        pool
    }

    /// Total blocks.
    pub fn capacity(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks not referenced by any request (cached or empty).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks that still hold a findable hash.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Fraction of blocks pinned by requests, vLLM's `kv_cache_usage_perc` (0–1).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.free.len() as f64 / self.blocks.len() as f64
    }

    /// Whether a block with this hash is cached (pinned or free).
    pub fn contains(&self, hash: u64) -> bool {
        self.cached.contains_key(&hash)
    }

    /// How many of `hashes`, from the first, are cached.
    pub fn longest_cached_prefix(&self, hashes: &[u64]) -> usize {
        hashes.iter().take_while(|h| self.contains(**h)).count()
    }

    /// Of the first `n` hashes (all cached), how many sit in the free queue, i.e. would stop
    /// being free if a request took them.
    pub fn free_among_cached(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .filter(|h| {
                self.cached
                    .get(*h)
                    .is_some_and(|id| self.blocks[*id as usize].ref_count == 0)
            })
            .count()
    }

    /// Pins the cached block with `hash` for a request. Returns `None` when not cached.
    pub fn take_cached(&mut self, hash: u64) -> Option<BlockId> {
        let id = *self.cached.get(&hash)?;
        let b = &mut self.blocks[id as usize];
        if let Some(seq) = b.free_seq.take() {
            self.free.remove(&seq);
        }
        b.ref_count += 1;
        Some(id)
    }

    /// Takes the least-recently-freed block for new data, evicting its cached hash if any.
    /// Returns `None` when every block is pinned.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let (_, id) = self.free.pop_first()?;
        let b = &mut self.blocks[id as usize];
        b.free_seq = None;
        b.ref_count = 1;
        if let Some(h) = b.hash.take() {
            self.cached.remove(&h);
            // Consecutive evictions coalesce into one event, as vLLM batches them per step.
            match self.events.last_mut() {
                Some(KvEvent::BlockRemoved { block_hashes }) => block_hashes.push(h),
                _ => self.events.push(KvEvent::BlockRemoved {
                    block_hashes: vec![h],
                }),
            }
        }
        Some(id)
    }

    /// Marks a run of freshly computed full blocks of one sequence as cached.
    ///
    /// `hashes[k]` belongs to `ids[k]`; `parent` is the hash of the block before `ids[0]`.
    /// A hash that another block already serves (two requests computed the same prefix at
    /// once) is not registered twice: the existing block keeps serving it and the duplicate
    /// stays anonymous, as in vLLM.
    pub fn commit_full_blocks(
        &mut self,
        ids: &[BlockId],
        hashes: &[u64],
        parent: Option<u64>,
        tokens: &[u32],
        block_size: usize,
        lora_id: Option<u32>,
    ) {
        let mut stored = Vec::new();
        let mut stored_tokens = Vec::new();
        let mut first_parent = parent;
        let mut prev = parent;
        for (k, (&id, &h)) in ids.iter().zip(hashes).enumerate() {
            let b = &mut self.blocks[id as usize];
            if b.hash.is_none() && !self.cached.contains_key(&h) {
                b.hash = Some(h);
                self.cached.insert(h, id);
                if stored.is_empty() {
                    first_parent = prev;
                }
                stored.push(h);
                stored_tokens.extend_from_slice(&tokens[k * block_size..(k + 1) * block_size]);
            } else if !stored.is_empty() {
                // A gap breaks the run: flush so every event's parent chain stays exact.
                self.events.push(KvEvent::BlockStored {
                    block_hashes: std::mem::take(&mut stored),
                    parent_block_hash: first_parent,
                    token_ids: std::mem::take(&mut stored_tokens),
                    block_size,
                    lora_id,
                });
            }
            prev = Some(h);
        }
        if !stored.is_empty() {
            self.events.push(KvEvent::BlockStored {
                block_hashes: stored,
                parent_block_hash: first_parent,
                token_ids: stored_tokens,
                block_size,
                lora_id,
            });
        }
    }

    /// Unpins a request's blocks. The tail is queued first so it is evicted first: a later
    /// request is far likelier to share a sequence's head than its tail.
    pub fn release(&mut self, ids: &[BlockId]) {
        for &id in ids.iter().rev() {
            let b = &mut self.blocks[id as usize];
            debug_assert!(b.ref_count > 0, "double free of block {id}");
            b.ref_count = b.ref_count.saturating_sub(1);
            if b.ref_count == 0 {
                self.push_free(id);
            }
        }
    }

    /// Forgets every cached hash of free blocks (vLLM's `reset_prefix_cache`).
    /// Fails, changing nothing, while any block is pinned, as vLLM does.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.free.len() != self.blocks.len() {
            return false;
        }
        for b in &mut self.blocks {
            b.hash = None;
        }
        self.cached.clear();
        self.events.push(KvEvent::AllBlocksCleared);
        true
    }

    /// Takes the events produced since the last call.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    fn push_free(&mut self, id: BlockId) {
        let seq = self.next_free_seq;
        self.next_free_seq += 1;
        self.blocks[id as usize].free_seq = Some(seq);
        self.free.insert(seq, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_cached_blocks_stay_findable_until_reused() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        p.commit_full_blocks(&[a], &[11], None, &[1, 2], 2, None);
        p.release(&[a]);
        assert!(p.contains(11));
        assert_eq!(p.usage(), 0.0);
        assert_eq!(p.take_cached(11), Some(a));
        assert_eq!(p.usage(), 0.5);
        p.release(&[a]);
        // Both blocks are reused for new data: the cached one is evicted (the other goes first).
        let _ = p.allocate().unwrap();
        assert!(p.contains(11));
        let _ = p.allocate().unwrap();
        assert!(!p.contains(11));
        let ev = p.drain_events();
        assert!(
            matches!(&ev[0], KvEvent::BlockStored { block_hashes, .. } if block_hashes == &[11])
        );
        assert_eq!(
            ev[1],
            KvEvent::BlockRemoved {
                block_hashes: vec![11]
            }
        );
        assert!(p.allocate().is_none(), "pool is exhausted");
    }

    #[test]
    fn least_recently_freed_is_evicted_first_and_tails_before_heads() {
        let mut p = BlockPool::new(4);
        let ids: Vec<_> = (0..4).map(|_| p.allocate().unwrap()).collect();
        p.commit_full_blocks(&ids[..2], &[1, 2], None, &[0; 2], 1, None);
        p.commit_full_blocks(&ids[2..], &[3, 4], None, &[0; 2], 1, None);
        p.release(&ids[..2]); // sequence A (head 1, tail 2)
        p.release(&ids[2..]); // sequence B, freed later
        p.allocate().unwrap();
        assert!(!p.contains(2), "A's tail goes first");
        assert!(p.contains(1) && p.contains(3) && p.contains(4));
        p.allocate().unwrap();
        assert!(!p.contains(1));
        assert!(p.contains(3));
    }

    #[test]
    fn duplicate_hashes_are_not_registered_twice() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        p.commit_full_blocks(&[a], &[7], None, &[0], 1, None);
        p.commit_full_blocks(&[b], &[7], None, &[0], 1, None);
        assert_eq!(p.num_cached(), 1);
        assert_eq!(p.drain_events().len(), 1);
    }

    #[test]
    fn reset_refuses_while_blocks_are_pinned() {
        let mut p = BlockPool::new(1);
        let a = p.allocate().unwrap();
        assert!(!p.reset_prefix_cache());
        p.release(&[a]);
        assert!(p.reset_prefix_cache());
        assert_eq!(p.drain_events(), vec![KvEvent::AllBlocksCleared]);
    }
}
