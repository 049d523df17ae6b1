//! Prefix indexes: which KV blocks each endpoint is believed to hold. Pure data structures;
//! the scorer (`scheduler::plugins::prefix_cache`) only sees the match lengths they report.
//!
//! * [`ApproxIndex`] remembers what *this router* sent to an endpoint, with an LRU bounded by
//!   the endpoint's KV capacity in blocks (it cannot see evictions, so it emulates them).
//! * [`PreciseIndex`] mirrors the engine's own cache from its KV events (`BlockStored`,
//!   `BlockRemoved`, `AllBlocksCleared`), so it knows evictions exactly — as long as events
//!   keep arriving ([`EventFeed`] tracks that).
//!
//! Both answer the same question: how many blocks of a request, counted from block 0, are
//! cached? Hashes are chained, so the walk stops at the first miss.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Block hashes are already uniformly distributed (xxh64), so the maps use them as they are
/// instead of hashing them again.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type IdBuild = BuildHasherDefault<IdentityHasher>;

/// The router's own record of what it sent where, with LRU eviction at `capacity` blocks.
#[derive(Debug, Clone)]
pub struct ApproxIndex {
    capacity: usize,
    tick: u64,
    /// Block → (last-use tick, when it was last routed).
    blocks: HashMap<u64, (u64, Instant), IdBuild>,
    /// Use order with lazy deletion: an entry whose tick no longer matches `blocks` is stale.
    order: VecDeque<(u64, u64)>,
}

impl ApproxIndex {
    /// An empty index holding at most `capacity` blocks (at least 1).
    pub fn new(capacity: usize) -> Self {
        ApproxIndex {
            capacity: capacity.max(1),
            tick: 0,
            blocks: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Holds nothing.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Capacity in blocks.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity (a new profile), evicting least recently used blocks if needed.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        self.evict();
    }

    /// Records that a request with these block hashes went to this endpoint at `now`.
    ///
    /// The blocks are touched tail first, so block 0 becomes the most recently used: like the
    /// engine, which frees a request's tail blocks first, the index evicts suffixes before the
    /// shared heads that every later request of the same prefix needs.
    pub fn insert(&mut self, hashes: &[u64], now: Instant) {
        // Only the newest `capacity` blocks could survive anyway.
        let hashes = &hashes[..hashes.len().min(self.capacity)];
        for &h in hashes.iter().rev() {
            self.tick += 1;
            self.blocks.insert(h, (self.tick, now));
            self.order.push_back((h, self.tick));
        }
        self.evict();
        if self.order.len() > 2 * self.capacity + 1024 {
            self.compact();
        }
    }

    fn evict(&mut self) {
        while self.blocks.len() > self.capacity {
            let Some((h, t)) = self.order.pop_front() else {
                break;
            };
            if self.blocks.get(&h).is_some_and(|(tick, _)| *tick == t) {
                self.blocks.remove(&h);
            }
        }
    }

    fn compact(&mut self) {
        let blocks = &self.blocks;
        self.order
            .retain(|(h, t)| blocks.get(h).is_some_and(|(tick, _)| tick == t));
    }

    /// Leading blocks of `hashes` held.
    pub fn match_len(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.blocks.contains_key(h))
            .count()
    }

    /// Leading blocks of `hashes` routed here at or after `since`.
    pub fn match_len_since(&self, hashes: &[u64], since: Instant) -> usize {
        hashes
            .iter()
            .take_while(|h| self.blocks.get(h).is_some_and(|(_, at)| *at >= since))
            .count()
    }
}

/// One KV event, decoded from the engine's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Blocks entered the engine's prefix cache.
    BlockStored {
        /// Chained hashes of the stored blocks.
        block_hashes: Vec<u64>,
    },
    /// Blocks were evicted.
    BlockRemoved {
        /// Their hashes.
        block_hashes: Vec<u64>,
    },
    /// The whole cache was dropped.
    AllBlocksCleared,
}

/// The engine's cache as its KV events describe it.
#[derive(Debug, Clone, Default)]
pub struct PreciseIndex {
    blocks: HashSet<u64, IdBuild>,
}

impl PreciseIndex {
    /// Applies one event.
    pub fn apply(&mut self, event: &KvEvent) {
        match event {
            KvEvent::BlockStored { block_hashes } => self.blocks.extend(block_hashes),
            KvEvent::BlockRemoved { block_hashes } => {
                for h in block_hashes {
                    self.blocks.remove(h);
                }
            }
            KvEvent::AllBlocksCleared => self.blocks.clear(),
        }
    }

    /// Forgets everything (the stream restarted; the engine's state is unknown).
    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Holds nothing.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether `hash` is cached.
    pub fn contains(&self, hash: u64) -> bool {
        self.blocks.contains(&hash)
    }

    /// Leading blocks of `hashes` cached.
    pub fn match_len(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.blocks.contains(h))
            .count()
    }
}

/// Whether an endpoint's event stream can be trusted right now.
///
/// Engines publish only when their cache changes, so silence alone proves nothing: an idle
/// engine sends no events. What does prove a dead stream is silence *after traffic*: every
/// request that computes a new block makes the engine publish. So the feed is live while
/// connected and no request routed to the endpoint has gone unanswered by any event for
/// longer than `stale_after`.
#[derive(Debug, Clone, Default)]
pub struct EventFeed {
    connected: bool,
    last_event: Option<Instant>,
    /// First request routed to the endpoint after the last event, if any.
    unanswered_since: Option<Instant>,
    /// Events applied.
    pub events: u64,
    /// Sequence gaps seen (dropped messages).
    pub gaps: u64,
}

impl EventFeed {
    /// The subscriber (re)connected or lost its connection.
    pub fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
        if !connected {
            self.unanswered_since = None;
        }
    }

    /// An event batch arrived at `now`.
    pub fn on_events(&mut self, now: Instant, count: u64) {
        self.last_event = Some(now);
        self.unanswered_since = None;
        self.events += count;
    }

    /// A request was routed to the endpoint at `now`.
    pub fn on_routed(&mut self, now: Instant) {
        self.unanswered_since.get_or_insert(now);
    }

    /// Live at `now`.
    pub fn is_live(&self, now: Instant, stale_after: Duration) -> bool {
        self.connected
            && self
                .unanswered_since
                .is_none_or(|t| now.saturating_duration_since(t) <= stale_after)
    }

    /// Time of the last event.
    pub fn last_event(&self) -> Option<Instant> {
        self.last_event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(start: u64, n: u64) -> Vec<u64> {
        (start..start + n).collect()
    }

    #[test]
    fn approx_matches_leading_blocks_only() {
        let now = Instant::now();
        let mut ix = ApproxIndex::new(100);
        ix.insert(&chain(0, 10), now);
        assert_eq!(ix.match_len(&chain(0, 10)), 10);
        assert_eq!(ix.match_len(&chain(0, 20)), 10);
        let mut other = chain(0, 10);
        other[3] = 999;
        assert_eq!(ix.match_len(&other), 3, "stops at the first miss");
        assert_eq!(ix.match_len(&chain(50, 5)), 0);
    }

    #[test]
    fn approx_lru_evicts_tails_and_old_prefixes_first() {
        let t0 = Instant::now();
        let mut ix = ApproxIndex::new(12);
        ix.insert(&chain(0, 8), t0); // prefix A
        ix.insert(&chain(100, 8), t0); // prefix B: over capacity, A's tail goes first
        assert_eq!(ix.len(), 12);
        assert_eq!(ix.match_len(&chain(100, 8)), 8);
        assert_eq!(ix.match_len(&chain(0, 8)), 4, "A keeps its head");
        // Using A again makes it recent; B's tail is evicted next.
        ix.insert(&chain(0, 4), t0);
        ix.insert(&chain(200, 4), t0);
        assert_eq!(ix.match_len(&chain(0, 8)), 4);
        assert_eq!(ix.match_len(&chain(100, 8)), 4);
        assert_eq!(ix.match_len(&chain(200, 4)), 4);
    }

    #[test]
    fn approx_stays_bounded_under_churn_and_shrinks_with_capacity() {
        let t0 = Instant::now();
        let mut ix = ApproxIndex::new(64);
        for i in 0..10_000u64 {
            ix.insert(&chain(i % 300, 16), t0);
            assert!(ix.len() <= 64);
        }
        assert!(ix.order.len() <= 2 * 64 + 1024 + 16);
        ix.set_capacity(8);
        assert_eq!(ix.len(), 8);
    }

    #[test]
    fn approx_recency_window() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let mut ix = ApproxIndex::new(100);
        ix.insert(&chain(0, 8), t0);
        ix.insert(&chain(0, 2), t1);
        assert_eq!(ix.match_len_since(&chain(0, 8), t1), 2);
        assert_eq!(ix.match_len_since(&chain(0, 8), t0), 8);
    }

    #[test]
    fn precise_follows_store_remove_clear() {
        let mut ix = PreciseIndex::default();
        ix.apply(&KvEvent::BlockStored {
            block_hashes: chain(0, 6),
        });
        assert_eq!(ix.match_len(&chain(0, 8)), 6);
        ix.apply(&KvEvent::BlockRemoved {
            block_hashes: vec![2],
        });
        assert_eq!(ix.match_len(&chain(0, 8)), 2);
        assert!(ix.contains(5));
        ix.apply(&KvEvent::AllBlocksCleared);
        assert!(ix.is_empty());
    }

    #[test]
    fn feed_goes_stale_only_after_unanswered_traffic() {
        let t0 = Instant::now();
        let s = Duration::from_secs(2);
        let mut f = EventFeed::default();
        assert!(!f.is_live(t0, s), "not connected yet");
        f.set_connected(true);
        assert!(
            f.is_live(t0 + Duration::from_secs(3600), s),
            "idle is not stale"
        );
        f.on_routed(t0);
        f.on_routed(t0 + Duration::from_secs(1));
        assert!(f.is_live(t0 + Duration::from_secs(2), s));
        assert!(
            !f.is_live(t0 + Duration::from_secs(3), s),
            "measured from the first unanswered request"
        );
        f.on_events(t0 + Duration::from_secs(4), 1);
        assert!(f.is_live(t0 + Duration::from_secs(10), s));
        f.set_connected(false);
        assert!(!f.is_live(t0 + Duration::from_secs(10), s));
    }
}
