//! Rendezvous (highest-random-weight) hashing with bounded load, for session affinity.
//!
//! Every router replica ranks endpoints for a conversation by `xxh64(endpoint name, seed =
//! xxh64(session))`, a function of the session id and the endpoint *names* only, so replicas
//! agree on the conversation → endpoint map without sharing state, and removing an endpoint
//! moves only the sessions that were on it. The bound (Mirrokni et al., "Consistent hashing
//! with bounded loads") walks that ranking and skips endpoints whose load is already above
//! `ceil(c · (total load + 1) / n)`, so one hot conversation cannot pile onto one pod. The load
//! used is the larger of the router's own in-flight count and the engine's reported
//! running + waiting requests; the latter is the same for every replica, which keeps replicas
//! in agreement even while they spill.

use xxhash_rust::xxh64::xxh64;

/// Where one session goes among a set of candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Index (into the candidates) the ranking prefers, load ignored.
    pub preferred: usize,
    /// Index actually chosen after the load bound.
    pub chosen: usize,
    /// The load bound that applied.
    pub capacity: u64,
}

/// Hash of the session id, the seed of every per-endpoint weight.
pub fn session_seed(session: &str) -> u64 {
    xxh64(session.as_bytes(), 0x6d75_7374_6572) // "muster"
}

/// Rendezvous weight of `endpoint` for a session seed.
pub fn weight(seed: u64, endpoint: &str) -> u64 {
    xxh64(endpoint.as_bytes(), seed)
}

/// Candidate indexes ordered by preference for `session`: highest weight first, ties (only
/// possible for duplicate names) by name then index so the order is total.
pub fn ranking(session: &str, names: &[&str]) -> Vec<usize> {
    let seed = session_seed(session);
    let mut order: Vec<(u64, &str, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (weight(seed, n), *n, i))
        .collect();
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
    order.into_iter().map(|(_, _, i)| i).collect()
}

/// Places `session` on one of `names` (non-empty) with current `loads`, never above
/// `ceil(load_factor · (Σ loads + 1) / n) + slack` after adding this request.
pub fn place(
    session: &str,
    names: &[&str],
    loads: &[u64],
    load_factor: f64,
    slack: u64,
) -> Placement {
    assert_eq!(names.len(), loads.len());
    assert!(!names.is_empty(), "place needs at least one candidate");
    let order = ranking(session, names);
    let n = names.len() as f64;
    let total: u64 = loads.iter().sum();
    let capacity = ((load_factor * (total as f64 + 1.0)) / n).ceil().max(1.0) as u64 + slack;
    // The least-loaded endpoint always fits (its load ≤ the floor of the mean), so the
    // fallback is only a guard against floating-point surprises.
    let chosen = order
        .iter()
        .copied()
        .find(|&i| loads[i] < capacity)
        .unwrap_or_else(|| {
            (0..names.len())
                .min_by_key(|&i| (loads[i], i))
                .expect("non-empty")
        });
    Placement {
        preferred: order[0],
        chosen,
        capacity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("llama-0-decode-{i}-0")).collect()
    }

    #[test]
    fn sessions_spread_roughly_evenly_over_endpoints() {
        let owned = names(4);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut counts = HashMap::new();
        for s in 0..4000 {
            let p = place(&format!("conv-{s}"), &refs, &[0, 0, 0, 0], 1.25, 0);
            *counts.entry(p.preferred).or_insert(0) += 1;
        }
        for i in 0..4 {
            let c = counts[&i];
            assert!((800..1200).contains(&c), "endpoint {i} got {c} of 4000");
        }
    }

    #[test]
    fn a_loaded_preferred_endpoint_spills_to_the_next_in_rank() {
        let owned = names(3);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let free = place("hot", &refs, &[0, 0, 0], 1.25, 0);
        let mut loads = [0u64; 3];
        loads[free.preferred] = 10;
        let busy = place("hot", &refs, &loads, 1.25, 0);
        assert_eq!(busy.preferred, free.preferred);
        assert_ne!(busy.chosen, free.preferred);
        assert_eq!(busy.chosen, ranking("hot", &refs)[1]);
        // Slack absorbs small absolute differences.
        loads[free.preferred] = 3;
        assert_eq!(place("hot", &refs, &loads, 1.25, 4).chosen, free.preferred);
    }

    proptest! {
        #[test]
        fn placement_ignores_candidate_order(
            n in 1usize..8, session in "[a-z0-9]{1,12}", rotate in 0usize..8,
        ) {
            let owned = names(n);
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            let loads = vec![0u64; n];
            let a = place(&session, &refs, &loads, 1.25, 0);
            let mut rotated = refs.clone();
            rotated.rotate_left(rotate % n);
            let b = place(&session, &rotated, &loads, 1.25, 0);
            prop_assert_eq!(refs[a.chosen], rotated[b.chosen]);
        }

        #[test]
        fn removing_another_endpoint_never_moves_a_session(
            n in 2usize..8, session in "[a-z0-9]{1,12}", remove in 0usize..8,
        ) {
            let owned = names(n);
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            let before = refs[place(&session, &refs, &vec![0; n], 1.25, 0).chosen];
            let remove = remove % n;
            prop_assume!(refs[remove] != before);
            let mut fewer = refs.clone();
            fewer.remove(remove);
            let after = fewer[place(&session, &fewer, &vec![0; n - 1], 1.25, 0).chosen];
            prop_assert_eq!(before, after);
        }

        #[test]
        fn chosen_load_stays_within_the_bound(
            loads in prop::collection::vec(0u64..50, 1..8),
            session in "[a-z0-9]{1,12}",
            c in 1.0f64..3.0,
            slack in 0u64..5,
        ) {
            let owned = names(loads.len());
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            let p = place(&session, &refs, &loads, c, slack);
            prop_assert!(loads[p.chosen] < p.capacity,
                "load {} capacity {}", loads[p.chosen], p.capacity);
            // Nothing ranked above the chosen endpoint had room.
            for &i in ranking(&session, &refs).iter().take_while(|&&i| i != p.chosen) {
                prop_assert!(loads[i] >= p.capacity);
            }
        }
    }
}
