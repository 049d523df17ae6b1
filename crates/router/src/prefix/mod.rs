//! Cache-aware routing state: request → block hashes ([`tokenize`]), what each endpoint holds
//! ([`index`]: approximate and precise), and the engines' KV-event feeds ([`kv_events`]).
//!
//! The scheduler never touches these structures: the proxy asks each endpoint's
//! [`EndpointPrefix`] for a [`PrefixMatch`] (a few numbers) and puts it into the immutable
//! `EndpointView` the pure `schedule` function scores. Per-endpoint state lives in the
//! endpoint's `EndpointState`, so removing an endpoint from the configuration drops its
//! indexes and ends its event subscription.

pub mod index;
pub mod kv_events;
pub mod runtime;
pub mod tokenize;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use index::{ApproxIndex, EventFeed, KvEvent, PreciseIndex};

/// How much of a request one endpoint holds, in blocks from block 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixMatch {
    /// Per the approximate index (what this router sent there).
    pub approx_blocks: u32,
    /// Per the engine's KV events; `None` when the endpoint has no live event feed (no
    /// `kvEvents` address, not connected yet, or events stopped): scorers then fall back to
    /// the approximate count.
    pub precise_blocks: Option<u32>,
    /// Per the approximate index, counting only blocks routed there within the prediction
    /// window: requests whose events have not arrived yet.
    pub recent_blocks: u32,
}

impl PrefixMatch {
    /// The count a scorer uses: for `kv-events` (`precise`) the engine-reported count, raised
    /// by blocks routed too recently for events to confirm, when the feed is live; otherwise
    /// (and for `prefix-cache`) the approximate count.
    pub fn effective(&self, precise: bool) -> u32 {
        match (precise, self.precise_blocks) {
            (true, Some(p)) => p.max(self.recent_blocks),
            _ => self.approx_blocks,
        }
    }
}

#[derive(Debug, Default)]
struct Precise {
    index: PreciseIndex,
    feed: EventFeed,
}

/// One endpoint's prefix indexes.
#[derive(Debug)]
pub struct EndpointPrefix {
    approx: Mutex<ApproxIndex>,
    precise: Option<Mutex<Precise>>,
    /// The engine's KV-event address, if it publishes them.
    pub kv_events: Option<String>,
}

/// What `/debug/endpoints` shows about an endpoint's prefix indexes.
#[derive(Debug, Clone, Serialize)]
pub struct PrefixReport {
    /// Blocks in the approximate index.
    pub approx_blocks: usize,
    /// Its capacity.
    pub approx_capacity: usize,
    /// The engine's KV-event address.
    pub kv_events: Option<String>,
    /// `precise` while the event feed is live, else `approximate` (the fallback).
    pub prefix_index: &'static str,
    /// Blocks the engine reported cached.
    pub precise_blocks: Option<usize>,
    /// Events applied.
    pub kv_events_received: Option<u64>,
    /// Sequence gaps seen.
    pub kv_events_gaps: Option<u64>,
    /// Seconds since the last event.
    pub kv_events_last_seconds: Option<f64>,
}

impl EndpointPrefix {
    /// Empty indexes; a precise one only when the engine publishes KV events.
    pub fn new(capacity_blocks: usize, kv_events: Option<String>) -> Self {
        EndpointPrefix {
            approx: Mutex::new(ApproxIndex::new(capacity_blocks)),
            precise: kv_events.as_ref().map(|_| Mutex::new(Precise::default())),
            kv_events,
        }
    }

    /// Applies a (possibly new) profile's capacity.
    pub fn set_capacity(&self, capacity_blocks: usize) {
        let mut a = self.approx.lock().expect("approx lock");
        if a.capacity() != capacity_blocks.max(1) {
            a.set_capacity(capacity_blocks);
        }
    }

    /// Whether the precise index can be trusted at `now`.
    pub fn precise_live(&self, now: Instant, stale_after: Duration) -> bool {
        self.precise.as_ref().is_some_and(|p| {
            p.lock()
                .expect("precise lock")
                .feed
                .is_live(now, stale_after)
        })
    }

    /// How much of `hashes` this endpoint holds. `precise` asks for the event-fed count too;
    /// `recent_since` bounds the prediction window.
    pub fn lookup(
        &self,
        hashes: &[u64],
        precise: bool,
        now: Instant,
        stale_after: Duration,
        recent_since: Instant,
    ) -> PrefixMatch {
        let a = self.approx.lock().expect("approx lock");
        let approx_blocks = a.match_len(hashes) as u32;
        let (precise_blocks, recent_blocks) = if precise {
            let p = self.precise.as_ref().and_then(|p| {
                let p = p.lock().expect("precise lock");
                p.feed
                    .is_live(now, stale_after)
                    .then(|| p.index.match_len(hashes) as u32)
            });
            (p, a.match_len_since(hashes, recent_since) as u32)
        } else {
            (None, 0)
        };
        PrefixMatch {
            approx_blocks,
            precise_blocks,
            recent_blocks,
        }
    }

    /// Notes that a request with these blocks was sent here at `now`.
    pub fn record_routed(&self, hashes: &[u64], now: Instant) {
        self.approx.lock().expect("approx lock").insert(hashes, now);
        if let Some(p) = &self.precise {
            p.lock().expect("precise lock").feed.on_routed(now);
        }
    }

    /// Applies a batch of engine events received at `now`.
    pub fn apply_events(&self, events: &[KvEvent], gap: bool, now: Instant) {
        if let Some(p) = &self.precise {
            let mut p = p.lock().expect("precise lock");
            for e in events {
                p.index.apply(e);
            }
            if gap {
                p.feed.gaps += 1;
            }
            p.feed.on_events(now, events.len() as u64);
        }
    }

    /// The event subscription connected (the index starts over: events published while
    /// disconnected are lost) or disconnected.
    pub fn on_connected(&self, connected: bool) {
        if let Some(p) = &self.precise {
            let mut p = p.lock().expect("precise lock");
            if connected {
                p.index.clear();
            }
            p.feed.set_connected(connected);
        }
    }

    /// Debug report at `now`.
    pub fn report(&self, now: Instant, stale_after: Duration) -> PrefixReport {
        let (approx_blocks, approx_capacity) = {
            let a = self.approx.lock().expect("approx lock");
            (a.len(), a.capacity())
        };
        let precise = self.precise.as_ref().map(|p| {
            let p = p.lock().expect("precise lock");
            (
                p.index.len(),
                p.feed.events,
                p.feed.gaps,
                p.feed
                    .last_event()
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                p.feed.is_live(now, stale_after),
            )
        });
        PrefixReport {
            approx_blocks,
            approx_capacity,
            kv_events: self.kv_events.clone(),
            prefix_index: if precise.is_some_and(|p| p.4) {
                "precise"
            } else {
                "approximate"
            },
            precise_blocks: precise.map(|p| p.0),
            kv_events_received: precise.map(|p| p.1),
            kv_events_gaps: precise.map(|p| p.2),
            kv_events_last_seconds: precise.and_then(|p| p.3),
        }
    }
}
