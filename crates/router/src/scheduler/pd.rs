//! Prefill/decode pairing: a pure function from both sides' snapshots to a pair, or to the
//! decision to serve on a decoder alone.
//!
//! 1. **Conditional disaggregation.** The decoder the full profile picks (its own prefix
//!    cache counts) is checked first: when fewer than `min_uncached_tokens` of the prompt are
//!    missing from its cache, it computes them itself — a hand-off would cost a second request
//!    and a transfer for a few milliseconds of prefill.
//! 2. **Joint scoring within PD groups.** Otherwise every prefill endpoint is scored with the
//!    profile minus session affinity (its cache decides how much prefill is left, its load how
//!    soon it starts), every decoder with the profile minus the prefix scorers (its load and
//!    the session: the prompt arrives as KV, and a conversation stays on its decoder), and a
//!    pair scores the sum, plus `same_node_weight` when both run on one node (the KV moves
//!    over the node's own links rather than the network). Pairs exist only inside one PD group
//!    (the same ServingGroup), so KV never crosses a group's network boundary.
//! 3. No group has both roles: the decoder from step 1 serves alone.

use std::collections::BTreeMap;

use super::{
    pick_max, score, Decision, EndpointView, ScheduleError, ScheduleRequest, SchedulerProfile,
    SplitMix64,
};

/// Per-request PD inputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PdRequest<'a> {
    /// Prompt tokens (estimated when the prompt was not tokenized).
    pub prompt_tokens: u64,
    /// Serve on the decoder alone below this many uncached tokens; 0 always pairs.
    pub min_uncached_tokens: u64,
    /// Scorers use the engines' KV events (`kv-events`) for cached blocks.
    pub precise: bool,
    /// Prefill endpoints (indexes into the prefill snapshot) already tried.
    pub prefill_exclude: &'a [usize],
    /// Each decode endpoint's node, when known (empty: none known).
    pub decode_nodes: &'a [Option<&'a str>],
    /// Each prefill endpoint's node, when known (empty: none known).
    pub prefill_nodes: &'a [Option<&'a str>],
    /// Added to the score of a pair on one node.
    pub same_node_weight: f64,
}

/// Why a request is served by a decoder alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AloneReason {
    /// The decoder already caches all but a short suffix of the prompt.
    ShortSuffix,
    /// No PD group has both a prefill and a decode endpoint.
    NoPeer,
}

impl AloneReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AloneReason::ShortSuffix => "short_suffix",
            AloneReason::NoPeer => "no_prefill_peer",
        }
    }
}

/// The PD scheduler's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum PdDecision {
    /// The whole request goes to one decoder.
    Alone {
        /// The decoder (index into the decode snapshot).
        decode: Decision,
        /// Why.
        reason: AloneReason,
    },
    /// Prefill on one endpoint, decode on another of the same group.
    Pair {
        /// Prefill endpoint (index into the prefill snapshot), scored with the full profile.
        prefill: Decision,
        /// Decoder (index into the decode snapshot), scored without prefix scorers.
        decode: Decision,
        /// The PD group both belong to.
        group: String,
    },
}

/// Best-so-far with uniform random tie-breaking (reservoir sampling).
#[derive(Debug, Clone, Copy)]
struct Best {
    score: f64,
    pos: usize,
    ties: u64,
}

fn offer(slot: &mut Option<Best>, score: f64, pos: usize, rng: &mut SplitMix64) {
    match slot {
        None => {
            *slot = Some(Best {
                score,
                pos,
                ties: 1,
            })
        }
        Some(b) if score > b.score + 1e-9 => {
            *b = Best {
                score,
                pos,
                ties: 1,
            }
        }
        Some(b) if score >= b.score - 1e-9 => {
            b.ties += 1;
            if rng.next_u64().is_multiple_of(b.ties) {
                b.pos = pos;
            }
        }
        Some(_) => {}
    }
}

/// Chooses a pair, or a decoder alone (see the module docs). `*_groups[i]` is the PD group of
/// endpoint `i` of that side; endpoints without one never pair.
#[allow(clippy::too_many_arguments)]
pub fn schedule_pd<'a>(
    decode: &[EndpointView<'_>],
    decode_groups: &[Option<&str>],
    prefill: &[EndpointView<'_>],
    prefill_groups: &[Option<&str>],
    profile: &SchedulerProfile,
    prefill_profile: &SchedulerProfile,
    decode_profile: &SchedulerProfile,
    request: &ScheduleRequest<'_>,
    pd: &PdRequest<'a>,
) -> Result<PdDecision, ScheduleError> {
    debug_assert_eq!(decode.len(), decode_groups.len());
    debug_assert_eq!(prefill.len(), prefill_groups.len());
    let mut rng = SplitMix64::new(request.random_seed);
    let alone = score(decode, profile, request, &mut rng)?;
    let alone = alone.decision(pick_max(&alone.totals, &mut rng));
    let cached_tokens = request.prefix.map_or(0, |p| {
        u64::from(decode[alone.index].prefix.effective(pd.precise)) * p.block_tokens
    });
    let uncached = pd.prompt_tokens.saturating_sub(cached_tokens);
    if uncached < pd.min_uncached_tokens {
        return Ok(PdDecision::Alone {
            decode: alone,
            reason: AloneReason::ShortSuffix,
        });
    }
    let no_peer = |alone| {
        Ok(PdDecision::Alone {
            decode: alone,
            reason: AloneReason::NoPeer,
        })
    };
    if prefill.is_empty() {
        return no_peer(alone);
    }

    let prefill_request = ScheduleRequest {
        exclude: pd.prefill_exclude,
        ..*request
    };
    let p = score(prefill, prefill_profile, &prefill_request, &mut rng)?;
    let d = score(decode, decode_profile, request, &mut rng)?;
    // Per group: its prefill and decode candidates (positions in the scored lists). A
    // BTreeMap keeps the order (and so the random draws) independent of hashing.
    let mut groups: BTreeMap<&str, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (pos, &i) in p.candidates.iter().enumerate() {
        if let Some(g) = prefill_groups[i] {
            groups.entry(g).or_default().0.push(pos);
        }
    }
    for (pos, &i) in d.candidates.iter().enumerate() {
        if let Some(g) = decode_groups[i] {
            if let Some(entry) = groups.get_mut(g) {
                entry.1.push(pos);
            }
        }
    }
    let node = |nodes: &[Option<&'a str>], i: usize| nodes.get(i).copied().flatten();
    // Every pair of a group (groups are a few pods each), best score wins, ties at random.
    let mut best: Option<Best> = None;
    let mut pairs: Vec<(&str, usize, usize)> = Vec::new();
    for (g, (ps, ds)) in &groups {
        for &pp in ps {
            let pn = node(pd.prefill_nodes, p.candidates[pp]);
            for &dp in ds {
                let same = pn.is_some() && pn == node(pd.decode_nodes, d.candidates[dp]);
                let bonus = if same { pd.same_node_weight } else { 0.0 };
                offer(
                    &mut best,
                    p.totals[pp] + d.totals[dp] + bonus,
                    pairs.len(),
                    &mut rng,
                );
                pairs.push((g, pp, dp));
            }
        }
    }
    let Some(best) = best else {
        return no_peer(alone);
    };
    let (group, pp, dp) = pairs[best.pos];
    Ok(PdDecision::Pair {
        prefill: p.decision(pp),
        decode: d.decision(dp),
        group: group.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{EngineLoad, PluginKind, PluginWeight, PrefixMatch, PrefixRequest};

    fn view(name: &str, in_flight: u32, cached: u32) -> EndpointView<'_> {
        EndpointView {
            name,
            in_flight_requests: in_flight,
            in_flight_tokens: u64::from(in_flight) * 1000,
            pending_prefill_tokens: 0,
            engine: Some(EngineLoad::default()),
            engine_fresh: true,
            ejected: false,
            prefix: PrefixMatch {
                approx_blocks: cached,
                precise_blocks: None,
                recent_blocks: 0,
            },
            lora: None,
        }
    }

    fn profile() -> SchedulerProfile {
        SchedulerProfile {
            plugins: vec![
                PluginWeight {
                    name: PluginKind::PrefixCache,
                    weight: 2.0,
                },
                PluginWeight {
                    name: PluginKind::LeastRequest,
                    weight: 1.0,
                },
            ],
            ..SchedulerProfile::default()
        }
    }

    fn request(seed: u64, blocks: u32) -> ScheduleRequest<'static> {
        ScheduleRequest {
            random_seed: seed,
            prefix: Some(PrefixRequest {
                total_blocks: blocks,
                block_tokens: 16,
                prompt_tokens: u64::from(blocks) * 16,
            }),
            ..ScheduleRequest::default()
        }
    }

    /// The pure pairing with [`profile`] and its prefill/decode variants, as the proxy runs it.
    fn decide(
        decode: &[EndpointView<'_>],
        decode_groups: &[Option<&str>],
        prefill: &[EndpointView<'_>],
        prefill_groups: &[Option<&str>],
        seed: u64,
        blocks: u32,
        pd: &PdRequest<'_>,
    ) -> Result<PdDecision, ScheduleError> {
        let whole = profile();
        schedule_pd(
            decode,
            decode_groups,
            prefill,
            prefill_groups,
            &whole,
            &whole.without(&[PluginKind::SessionAffinity]),
            &whole.without(&[PluginKind::PrefixCache, PluginKind::KvEvents]),
            &request(seed, blocks),
            pd,
        )
    }

    fn pd(min: u64, blocks: u32) -> PdRequest<'static> {
        PdRequest {
            prompt_tokens: u64::from(blocks) * 16,
            min_uncached_tokens: min,
            precise: false,
            prefill_exclude: &[],
            ..PdRequest::default()
        }
    }

    #[test]
    fn pairs_never_cross_groups_on_random_snapshots() {
        let names: Vec<String> = (0..12).map(|i| format!("e{i}")).collect();
        let group_names = ["a", "b", "c"];
        for seed in 0..2000u64 {
            let mut r = SplitMix64::new(seed);
            let np = 1 + (r.next_u64() % 5) as usize;
            let nd = 1 + (r.next_u64() % 5) as usize;
            let side = |n: usize, off: usize, r: &mut SplitMix64| {
                let views: Vec<EndpointView<'_>> = (0..n)
                    .map(|i| {
                        view(
                            &names[off + i],
                            (r.next_u64() % 8) as u32,
                            (r.next_u64() % 40) as u32,
                        )
                    })
                    .collect();
                let groups: Vec<Option<&str>> = (0..n)
                    .map(|_| match r.next_u64() % 4 {
                        3 => None,
                        g => Some(group_names[g as usize]),
                    })
                    .collect();
                (views, groups)
            };
            let (pv, pg) = side(np, 0, &mut r);
            let (dv, dg) = side(nd, 6, &mut r);
            let d = decide(&dv, &dg, &pv, &pg, seed, 40, &pd(0, 40)).unwrap();
            let shared = pg.iter().flatten().any(|g| dg.contains(&Some(g)));
            match d {
                PdDecision::Pair {
                    prefill,
                    decode,
                    group,
                } => {
                    assert_eq!(pg[prefill.index], Some(group.as_str()), "seed {seed}");
                    assert_eq!(dg[decode.index], Some(group.as_str()), "seed {seed}");
                }
                PdDecision::Alone { reason, .. } => {
                    assert_eq!(reason, AloneReason::NoPeer, "seed {seed}");
                    assert!(
                        !shared,
                        "seed {seed}: a group had both roles but no pair was made"
                    );
                }
            }
        }
    }

    #[test]
    fn the_pair_follows_the_prefill_cache_and_the_decoders_load() {
        // Group a's prefill holds the prompt; group b's decoder is idle but its prefill is cold.
        let prefill = [view("pa", 1, 40), view("pb", 1, 0)];
        let decode = [view("da", 2, 0), view("db", 0, 0)];
        let pg = [Some("a"), Some("b")];
        let dg = [Some("a"), Some("b")];
        let d = decide(&decode, &dg, &prefill, &pg, 1, 40, &pd(0, 40)).unwrap();
        let PdDecision::Pair {
            prefill: p, group, ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(
            (p.index, group.as_str()),
            (0, "a"),
            "cache on the prefill side wins"
        );

        // With the prefill caches equal, the idle decoder's group wins.
        let prefill = [view("pa", 1, 0), view("pb", 1, 0)];
        let d = decide(&decode, &dg, &prefill, &pg, 1, 40, &pd(0, 40)).unwrap();
        let PdDecision::Pair {
            decode: dd, group, ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!((dd.index, group.as_str()), (1, "b"));
    }

    /// Pairs chosen over `seeds` for one group `a` with nodes, as (prefill, decode) indexes.
    fn pairs_with_nodes(
        prefill: &[EndpointView<'_>],
        prefill_nodes: &[Option<&str>],
        decode: &[EndpointView<'_>],
        decode_nodes: &[Option<&str>],
        same_node_weight: f64,
        blocks: u32,
    ) -> std::collections::BTreeSet<(usize, usize)> {
        let (pg, dg) = (
            vec![Some("a"); prefill.len()],
            vec![Some("a"); decode.len()],
        );
        let pd = PdRequest {
            decode_nodes,
            prefill_nodes,
            same_node_weight,
            ..pd(0, blocks)
        };
        (0..64)
            .map(|seed| {
                let d = decide(decode, &dg, prefill, &pg, seed, blocks, &pd).unwrap();
                match d {
                    PdDecision::Pair {
                        prefill, decode, ..
                    } => (prefill.index, decode.index),
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn pairs_prefer_one_node_unless_the_cache_says_otherwise() {
        let prefill = [view("p0", 1, 0), view("p1", 1, 0)];
        let decode = [view("d0", 1, 0), view("d1", 1, 0)];
        let (pn, dn) = ([Some("n1"), Some("n2")], [Some("n2"), Some("n1")]);
        // Equal scores: only the same-node pairs are ever chosen, both of them.
        let chosen = pairs_with_nodes(&prefill, &pn, &decode, &dn, 1.0, 40);
        assert_eq!(chosen, [(0, 1), (1, 0)].into());
        // Placement ignored (weight 0, or nodes unknown): every pair is drawn.
        assert_eq!(
            pairs_with_nodes(&prefill, &pn, &decode, &dn, 0.0, 40).len(),
            4
        );
        assert_eq!(
            pairs_with_nodes(&prefill, &[], &decode, &[], 1.0, 40).len(),
            4
        );
        // A prefill holding the whole prompt (prefix weight 2) outweighs the node bonus (1).
        let warm = [view("p0", 1, 40), view("p1", 1, 0)];
        let chosen = pairs_with_nodes(&warm, &pn, &decode, &dn, 1.0, 40);
        assert_eq!(
            chosen,
            [(0, 1)].into(),
            "warm p0, on its own node's decoder"
        );
        let (pn_apart, dn_apart) = ([Some("n1"), Some("n2")], [Some("n2"), Some("n2")]);
        let chosen = pairs_with_nodes(&warm, &pn_apart, &decode, &dn_apart, 1.0, 40);
        assert!(chosen.iter().all(|&(p, _)| p == 0), "{chosen:?}");
    }

    #[test]
    fn a_decoder_that_caches_all_but_a_short_suffix_serves_alone() {
        let prefill = [view("p", 0, 0)];
        let pg = [Some("a")];
        let dg = [Some("a")];
        // 40 blocks of 16 tokens; the decoder caches 38: 32 tokens left.
        let decode = [view("d", 0, 38)];
        let alone = decide(&decode, &dg, &prefill, &pg, 3, 40, &pd(64, 40)).unwrap();
        assert!(
            matches!(
                alone,
                PdDecision::Alone {
                    reason: AloneReason::ShortSuffix,
                    ..
                }
            ),
            "{alone:?}"
        );
        let paired = decide(&decode, &dg, &prefill, &pg, 3, 40, &pd(16, 40)).unwrap();
        assert!(
            matches!(paired, PdDecision::Pair { .. }),
            "32 ≥ 16 uncached: {paired:?}"
        );
        // Without prefill peers it still serves.
        let alone = decide(&decode, &dg, &[], &[], 3, 40, &pd(16, 40)).unwrap();
        assert!(matches!(
            alone,
            PdDecision::Alone {
                reason: AloneReason::NoPeer,
                ..
            }
        ));
        assert_eq!(
            decide(&[], &[], &prefill, &pg, 3, 40, &pd(16, 40)),
            Err(ScheduleError::NoEndpoints),
            "no decoder: nothing can answer"
        );
    }

    #[test]
    fn equal_pairs_share_traffic() {
        let prefill = [view("pa", 0, 0), view("pb", 0, 0)];
        let decode = [view("da", 0, 0), view("db", 0, 0)];
        let g = [Some("a"), Some("b")];
        let mut counts = BTreeMap::new();
        for seed in 0..400 {
            if let PdDecision::Pair { group, .. } =
                decide(&decode, &g, &prefill, &g, seed, 10, &pd(0, 10)).unwrap()
            {
                *counts.entry(group).or_insert(0) += 1;
            }
        }
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(counts.values().all(|&n| n > 120), "{counts:?}");
    }
}
