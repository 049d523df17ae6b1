//! A bounded record of recent conversations and where they went, for `/debug/sessions`.
//!
//! The conversation → endpoint map itself is not stored anywhere: it is recomputed from the
//! session id and the current endpoint names (rendezvous hashing), which is why every replica
//! shows the same map. This log only remembers which session ids to show.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// How many sessions the debug log keeps.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    server: String,
    last_endpoint: String,
    seq: u64,
}

/// Recent sessions.
#[derive(Debug, Default)]
pub struct SessionLog {
    inner: Mutex<(HashMap<String, Entry>, u64)>,
}

/// One row of `/debug/sessions`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionRow {
    /// Conversation id.
    pub session: String,
    /// ModelServer it was routed through.
    pub server: String,
    /// Endpoint the last request went to.
    pub last_endpoint: String,
}

impl SessionLog {
    /// Notes that `session` was routed through `server` to `endpoint`.
    pub fn record(&self, session: &str, server: &str, endpoint: &str) {
        let mut guard = self.inner.lock().expect("session log lock");
        let (map, seq) = &mut *guard;
        *seq += 1;
        let now = *seq;
        match map.get_mut(session) {
            Some(e) => {
                e.server.clear();
                e.server.push_str(server);
                e.last_endpoint.clear();
                e.last_endpoint.push_str(endpoint);
                e.seq = now;
            }
            None => {
                map.insert(
                    session.to_string(),
                    Entry {
                        server: server.to_string(),
                        last_endpoint: endpoint.to_string(),
                        seq: now,
                    },
                );
            }
        }
        if map.len() > CAPACITY {
            // Drop the older half at once so eviction stays amortised O(1).
            let cutoff = now.saturating_sub(CAPACITY as u64 / 2);
            map.retain(|_, e| e.seq > cutoff);
        }
    }

    /// Most recent first.
    pub fn rows(&self) -> Vec<SessionRow> {
        let guard = self.inner.lock().expect("session log lock");
        let mut rows: Vec<(u64, SessionRow)> = guard
            .0
            .iter()
            .map(|(k, e)| {
                (
                    e.seq,
                    SessionRow {
                        session: k.clone(),
                        server: e.server.clone(),
                        last_endpoint: e.last_endpoint.clone(),
                    },
                )
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        rows.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_endpoint_and_stays_bounded() {
        let log = SessionLog::default();
        log.record("a", "ns/s", "p0");
        log.record("b", "ns/s", "p1");
        log.record("a", "ns/s", "p2");
        let rows = log.rows();
        assert_eq!(rows[0].session, "a");
        assert_eq!(rows[0].last_endpoint, "p2");
        for i in 0..10_000 {
            log.record(&format!("s{i}"), "ns/s", "p");
        }
        assert!(log.rows().len() <= CAPACITY);
        assert_eq!(log.rows()[0].session, "s9999");
    }
}
