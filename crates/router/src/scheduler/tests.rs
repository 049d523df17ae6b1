//! Table and property tests of the scheduling function.

use super::*;
use proptest::prelude::*;

fn view(name: &str) -> EndpointView<'_> {
    EndpointView {
        name,
        in_flight_requests: 0,
        in_flight_tokens: 0,
        pending_prefill_tokens: 0,
        engine: Some(EngineLoad::default()),
        engine_fresh: true,
        ejected: false,
        prefix: PrefixMatch::default(),
        lora: None,
    }
}

fn only(kind: PluginKind) -> SchedulerProfile {
    SchedulerProfile {
        plugins: vec![PluginWeight {
            name: kind,
            weight: 1.0,
        }],
        ..SchedulerProfile::default()
    }
}

fn req(seed: u64) -> ScheduleRequest<'static> {
    ScheduleRequest {
        random_seed: seed,
        ..ScheduleRequest::default()
    }
}

#[test]
fn empty_snapshot_is_an_error_not_a_panic() {
    let err = schedule(&[], &SchedulerProfile::default(), &req(1)).unwrap_err();
    assert_eq!(err, ScheduleError::NoEndpoints);
}

#[test]
fn least_request_table() {
    struct Case {
        what: &'static str,
        in_flight: [u32; 3],
        waiting: [f64; 3],
        running: [f64; 3],
        want: usize,
    }
    let cases = [
        Case {
            what: "router in-flight decides when engines report nothing",
            in_flight: [3, 1, 2],
            waiting: [0.0; 3],
            running: [0.0; 3],
            want: 1,
        },
        Case {
            what: "an engine queue (other replicas' traffic) outweighs local in-flight",
            in_flight: [0, 1, 1],
            waiting: [6.0, 0.0, 0.0],
            running: [4.0, 1.0, 2.0],
            want: 1,
        },
        Case {
            what: "running counts when above the router's own count",
            in_flight: [1, 1, 1],
            waiting: [0.0; 3],
            running: [9.0, 8.0, 2.0],
            want: 2,
        },
    ];
    for c in cases {
        let names = ["a", "b", "c"];
        let views: Vec<EndpointView> = (0..3)
            .map(|i| EndpointView {
                in_flight_requests: c.in_flight[i],
                engine: Some(EngineLoad {
                    waiting: c.waiting[i],
                    running: c.running[i],
                    kv_cache_usage: 0.0,
                }),
                ..view(names[i])
            })
            .collect();
        for seed in 0..20 {
            let d = schedule(&views, &only(PluginKind::LeastRequest), &req(seed)).unwrap();
            assert_eq!(d.index, c.want, "{}", c.what);
        }
    }
}

#[test]
fn stale_metrics_are_scored_as_the_worst_fresh_ones() {
    // "b" reported an empty queue long ago; "a" and "c" are fresh and busy. Trusting the stale
    // zero would send everything to "b".
    let mut views = vec![view("a"), view("b"), view("c")];
    views[0].engine = Some(EngineLoad {
        waiting: 5.0,
        running: 8.0,
        kv_cache_usage: 0.9,
    });
    views[1].engine_fresh = false;
    views[2].engine = Some(EngineLoad {
        waiting: 1.0,
        running: 4.0,
        kv_cache_usage: 0.4,
    });
    for seed in 0..20 {
        let d = schedule(&views, &only(PluginKind::LeastRequest), &req(seed)).unwrap();
        assert_eq!(d.index, 2);
        let d = schedule(&views, &only(PluginKind::KvCacheUsage), &req(seed)).unwrap();
        assert_eq!(d.index, 2);
    }
    // A never-scraped endpoint is treated the same way.
    views[1].engine = None;
    let d = schedule(&views, &only(PluginKind::KvCacheUsage), &req(3)).unwrap();
    assert_eq!(d.index, 2);
}

#[test]
fn kv_cache_usage_prefers_the_emptiest_cache() {
    let mut views = vec![view("a"), view("b")];
    views[0].engine.as_mut().unwrap().kv_cache_usage = 0.7;
    views[1].engine.as_mut().unwrap().kv_cache_usage = 0.2;
    let d = schedule(&views, &only(PluginKind::KvCacheUsage), &req(0)).unwrap();
    assert_eq!(d.index, 1);
    assert!((d.scores[0].1 - 0.8).abs() < 1e-12);
}

#[test]
fn round_robin_visits_every_endpoint_in_turn() {
    let views = vec![view("c"), view("a"), view("b")];
    let picks: Vec<&str> = (0..6)
        .map(|pos| {
            let r = ScheduleRequest {
                round_robin: pos,
                ..req(pos)
            };
            views[schedule(&views, &only(PluginKind::RoundRobin), &r)
                .unwrap()
                .index]
                .name
        })
        .collect();
    assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
}

#[test]
fn filters_fail_open() {
    let mut views = vec![view("a"), view("b")];
    views[0].ejected = true;
    views[1].ejected = true;
    let d = schedule(&views, &SchedulerProfile::default(), &req(1)).unwrap();
    assert_eq!(
        d.candidates, 2,
        "all ejected: try them anyway rather than refuse"
    );

    views[0].ejected = false;
    for seed in 0..20 {
        let d = schedule(&views, &SchedulerProfile::default(), &req(seed)).unwrap();
        assert_eq!(
            d.index, 0,
            "ejected endpoints are skipped while others exist"
        );
    }
}

#[test]
fn retries_avoid_endpoints_already_tried() {
    let views = vec![view("a"), view("b"), view("c")];
    for seed in 0..50 {
        let r = ScheduleRequest {
            exclude: &[0, 2],
            ..req(seed)
        };
        assert_eq!(
            schedule(&views, &only(PluginKind::Random), &r)
                .unwrap()
                .index,
            1
        );
    }
    // With one endpoint, a retry goes back to it.
    let one = vec![view("a")];
    let r = ScheduleRequest {
        exclude: &[0],
        ..req(0)
    };
    assert_eq!(
        schedule(&one, &only(PluginKind::Random), &r).unwrap().index,
        0
    );
}

#[test]
fn max_waiting_filter_removes_saturated_engines() {
    let mut views = vec![view("a"), view("b")];
    views[0].engine.as_mut().unwrap().waiting = 40.0;
    let mut profile = only(PluginKind::Random);
    profile.plugins.push(PluginWeight {
        name: PluginKind::LeastRequest,
        weight: 0.0001,
    });
    profile.least_request.max_waiting_requests = Some(32);
    for seed in 0..30 {
        let d = schedule(&views, &profile, &req(seed)).unwrap();
        assert_eq!(d.index, 1);
        assert_eq!(d.candidates, 1);
    }
}

#[test]
fn ties_are_broken_at_random_not_by_position() {
    let views = vec![view("a"), view("b"), view("c"), view("d")];
    let mut counts = [0u32; 4];
    for seed in 0..4000 {
        counts[schedule(&views, &only(PluginKind::LeastRequest), &req(seed))
            .unwrap()
            .index] += 1;
    }
    for c in counts {
        assert!((800..1200).contains(&c), "{counts:?}");
    }
}

#[test]
fn session_affinity_pins_a_conversation_and_outweighs_load() {
    let views = vec![view("a"), view("b"), view("c")];
    let profile = SchedulerProfile::default();
    let first = schedule(
        &views,
        &profile,
        &ScheduleRequest {
            session: Some("conv-42"),
            ..req(0)
        },
    )
    .unwrap();
    let mut busier = views.clone();
    busier[first.index].in_flight_requests = 1;
    busier[first.index].in_flight_tokens = 500;
    for seed in 1..30 {
        let d = schedule(
            &busier,
            &profile,
            &ScheduleRequest {
                session: Some("conv-42"),
                ..req(seed)
            },
        )
        .unwrap();
        assert_eq!(
            d.index, first.index,
            "a slightly busier pod keeps its session"
        );
        assert_eq!(d.session.unwrap().preferred, first.index);
    }
    // Far above the bound, the session spills.
    busier[first.index].in_flight_requests = 50;
    busier[first.index].in_flight_tokens = 50_000;
    let d = schedule(
        &busier,
        &profile,
        &ScheduleRequest {
            session: Some("conv-42"),
            ..req(7)
        },
    )
    .unwrap();
    assert_ne!(d.index, first.index);
}

/// (in-flight requests, in-flight tokens, engine (waiting, running, kv), fresh, ejected)
type RawView = (u32, u64, Option<(f64, f64, f64)>, bool, bool);

fn arb_view() -> impl Strategy<Value = RawView> {
    (
        0u32..64,
        0u64..100_000,
        prop::option::of((0.0f64..64.0, 0.0f64..256.0, 0.0f64..1.0)),
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
}

fn arb_profile() -> impl Strategy<Value = SchedulerProfile> {
    prop::collection::vec((0usize..PluginKind::ALL.len(), 0.0f64..5.0), 0..5).prop_map(|ws| {
        let mut plugins: Vec<PluginWeight> = Vec::new();
        for (k, w) in ws {
            let name = PluginKind::ALL[k];
            if plugins.iter().all(|p| p.name != name) {
                plugins.push(PluginWeight { name, weight: w });
            }
        }
        SchedulerProfile {
            plugins,
            ..SchedulerProfile::default()
        }
    })
}

proptest! {
    #[test]
    fn decisions_are_valid_deterministic_and_scores_bounded(
        raw in prop::collection::vec(arb_view(), 1..10),
        profile in arb_profile(),
        seed in any::<u64>(),
        rr in any::<u64>(),
        session in prop::option::of("[a-z]{1,8}"),
        exclude_first in any::<bool>(),
    ) {
        let names: Vec<String> = (0..raw.len()).map(|i| format!("pod-{i}")).collect();
        let views: Vec<EndpointView> = raw.iter().zip(&names).map(|((r, t, e, fresh, ej), n)| EndpointView {
            name: n,
            in_flight_requests: *r,
            in_flight_tokens: *t,
            pending_prefill_tokens: *t / 2,
            engine: e.map(|(w, run, kv)| EngineLoad { waiting: w, running: run, kv_cache_usage: kv }),
            engine_fresh: *fresh,
            ejected: *ej,
            prefix: PrefixMatch { approx_blocks: *t as u32 % 70, precise_blocks: fresh.then_some(*r % 70), recent_blocks: 0 },
            lora: None,
        }).collect();
        let exclude: Vec<usize> = if exclude_first { vec![0] } else { vec![] };
        let prefix = Some(PrefixRequest { total_blocks: 64, block_tokens: 16, prompt_tokens: 1030 });
        let r = ScheduleRequest { session: session.as_deref(), exclude: &exclude, random_seed: seed, round_robin: rr, prefix, lora: Some("a") };
        let a = schedule(&views, &profile, &r).unwrap();
        let b = schedule(&views, &profile, &r).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert!(a.index < views.len());
        for (_, s) in &a.scores {
            prop_assert!((0.0..=1.0).contains(s));
        }
        if exclude_first && views.len() > 1 {
            prop_assert_ne!(a.index, 0);
        }
        let usable = (0..views.len()).any(|i| !(views[i].ejected || exclude_first && i == 0));
        if usable {
            prop_assert!(!views[a.index].ejected, "picked an ejected endpoint while others were usable");
        }
    }

    #[test]
    fn least_request_alone_picks_a_least_loaded_endpoint(
        in_flight in prop::collection::vec(0u32..20, 1..8), seed in any::<u64>(),
    ) {
        let names: Vec<String> = (0..in_flight.len()).map(|i| format!("pod-{i}")).collect();
        let views: Vec<EndpointView> = in_flight.iter().zip(&names).map(|(r, n)| EndpointView {
            in_flight_requests: *r, in_flight_tokens: u64::from(*r) * 100, ..view(n)
        }).collect();
        let d = schedule(&views, &only(PluginKind::LeastRequest), &req(seed)).unwrap();
        prop_assert_eq!(in_flight[d.index], *in_flight.iter().min().unwrap());
    }

    #[test]
    fn session_choice_is_the_same_on_every_replica_whatever_the_snapshot_order(
        n in 1usize..8, session in "[a-z0-9]{1,10}", seed_a in any::<u64>(), seed_b in any::<u64>(),
        rotate in 0usize..8,
    ) {
        let names: Vec<String> = (0..n).map(|i| format!("pod-{i}")).collect();
        let views: Vec<EndpointView> = names.iter().map(|n| view(n)).collect();
        let mut rotated = views.clone();
        rotated.rotate_left(rotate % n);
        let profile = only(PluginKind::SessionAffinity);
        let a = schedule(&views, &profile, &ScheduleRequest { session: Some(&session), ..req(seed_a) }).unwrap();
        let b = schedule(&rotated, &profile, &ScheduleRequest { session: Some(&session), ..req(seed_b) }).unwrap();
        prop_assert_eq!(views[a.index].name, rotated[b.index].name);
    }
}

fn prefix_profile(kind: PluginKind) -> SchedulerProfile {
    SchedulerProfile {
        plugins: vec![
            PluginWeight {
                name: kind,
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

/// A 4,096-token system prompt plus a 256-token question: 272 blocks of 16.
const HOT: PrefixRequest = PrefixRequest {
    total_blocks: 272,
    block_tokens: 16,
    prompt_tokens: 4352,
};

/// `tokens` of uncached prompt in flight, none of it prefilled yet.
fn with_load(name: &str, requests: u32, tokens: u64, cached: u32) -> EndpointView<'_> {
    EndpointView {
        in_flight_requests: requests,
        in_flight_tokens: tokens,
        pending_prefill_tokens: tokens,
        prefix: PrefixMatch {
            approx_blocks: cached,
            precise_blocks: None,
            recent_blocks: 0,
        },
        ..view(name)
    }
}

fn prefix_req(seed: u64) -> ScheduleRequest<'static> {
    ScheduleRequest {
        random_seed: seed,
        prefix: Some(HOT),
        ..ScheduleRequest::default()
    }
}

#[test]
fn prefix_affinity_beats_a_lighter_cold_endpoint() {
    // The warm endpoint is a little busier: the cache saves far more than its queue costs.
    let views = [
        with_load("warm", 2, 800, 256),
        with_load("cold-a", 0, 0, 0),
        with_load("cold-b", 1, 400, 0),
    ];
    for seed in 0..50 {
        let d = schedule(
            &views,
            &prefix_profile(PluginKind::PrefixCache),
            &prefix_req(seed),
        )
        .unwrap();
        assert_eq!(d.index, 0, "seed {seed}");
        let (_, s) = d.scores[0];
        assert!(
            (s - 256.0 / 272.0).abs() < 1e-9,
            "score is the cached fraction: {s}"
        );
    }
}

#[test]
fn requests_that_are_only_decoding_do_not_push_a_prefix_off_its_warm_endpoint() {
    // 40 requests decode on the warm endpoint (their prompts are done), none elsewhere: the
    // queue ahead of a new prefill there is empty, so affinity holds. The same requests still
    // waiting for their prefill do spill the next one.
    let decoding = EndpointView {
        pending_prefill_tokens: 0,
        ..with_load("warm", 40, 40 * (256 + 128), 256)
    };
    let cold = [with_load("cold-a", 0, 0, 0), with_load("cold-b", 0, 0, 0)];
    let views = [decoding, cold[0].clone(), cold[1].clone()];
    let profile = prefix_profile(PluginKind::PrefixCache);
    for seed in 0..20 {
        assert_eq!(
            schedule(&views, &profile, &prefix_req(seed)).unwrap().index,
            0
        );
    }
    let queued = with_load("warm", 40, 40 * 4352, 256);
    let views = [queued, cold[0].clone(), cold[1].clone()];
    for seed in 0..20 {
        assert_ne!(
            schedule(&views, &profile, &prefix_req(seed)).unwrap().index,
            0
        );
    }
}

/// Replays a burst of one hot prefix (4352-token prompts, 256 of their 272 blocks shared) against
/// four endpoints, only `e0` warm at first. Each decision is recorded in the next snapshot: the
/// chosen endpoint gets the request's uncached work in flight and the prefix. Returns the
/// first spill (request number, warm endpoint's queued tokens then) and the final in-flight
/// counts.
fn hot_prefix_burst(slack: f64) -> (Option<(u64, u64)>, [u32; 4]) {
    let names = ["e0", "e1", "e2", "e3"];
    let mut profile = prefix_profile(PluginKind::PrefixCache);
    profile.prefix_cache.affinity_slack = slack;
    let mut in_flight = [0u32; 4];
    let mut tokens = [0u64; 4];
    let mut cached = [256u32, 0, 0, 0];
    let mut first_spill = None;
    for n in 0..200u64 {
        let views: Vec<EndpointView> = (0..4)
            .map(|i| with_load(names[i], in_flight[i], tokens[i], cached[i]))
            .collect();
        let i = schedule(&views, &profile, &prefix_req(n)).unwrap().index;
        if i != 0 && first_spill.is_none() {
            first_spill = Some((n, tokens[0]));
            // The valve: the warm endpoint's wait now exceeds sending the request cold plus
            // the slack's charge for recomputing the 4096 cached tokens elsewhere.
            let warm_wait = tokens[0] + (4352 - 256 * 16);
            let cold_wait = (1..4).map(|j| tokens[j] + 4352).min().unwrap();
            assert!(
                warm_wait as f64 > cold_wait as f64 + slack * 4096.0,
                "slack {slack}: spilled at {warm_wait} vs {cold_wait}"
            );
        }
        let uncached = 4352 - u64::from(cached[i]) * 16;
        in_flight[i] += 1;
        tokens[i] += uncached + 128;
        cached[i] = 256;
    }
    (first_spill, in_flight)
}

#[test]
fn release_valve_engages_under_a_hot_prefix() {
    // Affinity must keep the prefix on the warm endpoint while that is faster, then spill once
    // its queue outweighs the cache, for the greedy valve and the default slack alike.
    for slack in [0.0, SchedulerProfile::default().prefix_cache.affinity_slack] {
        let (first_spill, in_flight) = hot_prefix_burst(slack);
        let (n, warm_tokens) =
            first_spill.unwrap_or_else(|| panic!("slack {slack}: a hot prefix must spill"));
        assert!(
            n >= 5,
            "slack {slack}: affinity held for a while first (spilled at request {n})"
        );
        assert!(
            warm_tokens >= 4096,
            "slack {slack}: spilled only once the queue outweighed the cache"
        );
        // After warming up, every endpoint takes a share: no hot spot.
        let max = *in_flight.iter().max().unwrap();
        let min = *in_flight.iter().min().unwrap();
        assert!(min > 0, "slack {slack}: {in_flight:?}");
        assert!(
            max <= 2 * min + 12,
            "slack {slack}: balanced within the valve's slack: {in_flight:?}"
        );
    }
}

#[test]
fn affinity_slack_holds_a_warm_prefix_longer() {
    let (greedy, _) = hot_prefix_burst(0.0);
    let (sticky, _) = hot_prefix_burst(2.0);
    let (greedy, sticky) = (greedy.unwrap(), sticky.unwrap());
    assert!(
        sticky.0 > greedy.0 && sticky.1 > greedy.1,
        "slack 2 spills later than slack 0: {sticky:?} vs {greedy:?}"
    );
}

#[test]
fn a_warm_prefix_spills_to_an_idle_endpoint_but_not_into_a_busy_one() {
    // Three cold prefills (about 12k tokens) queue on the warm endpoint. Sending this request
    // cold would start it sooner in both cases, but a cold endpoint that is decoding 50
    // requests makes all of them wait for the recomputed prefix: affinity holds there, and
    // yields only to an idle endpoint.
    let warm = with_load("warm", 10, 3 * 4352, 256);
    let busy = EndpointView {
        pending_prefill_tokens: 0,
        ..with_load("busy", 50, 50 * 128, 0)
    };
    let idle = with_load("idle", 0, 0, 0);
    let profile = prefix_profile(PluginKind::PrefixCache);
    for seed in 0..20 {
        let views = [warm.clone(), busy.clone()];
        assert_eq!(
            schedule(&views, &profile, &prefix_req(seed)).unwrap().index,
            0
        );
        let views = [warm.clone(), idle.clone()];
        let d = schedule(&views, &profile, &prefix_req(seed)).unwrap();
        assert_eq!(d.index, 1, "an idle endpoint takes the spill");
    }
}

#[test]
fn engine_queues_from_other_replicas_count_as_load() {
    // The warm endpoint looks nearly idle to this router, but its engine reports a deep queue
    // (other router replicas' traffic): affinity must yield. (The queue costs 59 × 256 tokens
    // ahead of this request; recomputing the prefix on the cold endpoint costs 4096 for it
    // and 4096 for the one request there.)
    let mut warm = with_load("warm", 1, 500, 256);
    let views_idle = [warm.clone(), with_load("cold", 1, 500, 0)];
    warm.engine = Some(EngineLoad {
        waiting: 60.0,
        running: 60.0,
        kv_cache_usage: 0.5,
    });
    let views_busy = [warm, with_load("cold", 1, 500, 0)];
    for seed in 0..20 {
        let p = prefix_profile(PluginKind::PrefixCache);
        let d = schedule(&views_idle, &p, &prefix_req(seed)).unwrap();
        assert_eq!(d.index, 0, "idle engine: affinity holds");
        let d = schedule(&views_busy, &p, &prefix_req(seed)).unwrap();
        assert_eq!(d.index, 1, "busy engine: affinity yields");
        assert_eq!(d.scores[0], (PluginKind::PrefixCache, 0.0));
    }
}

#[test]
fn kv_events_use_precise_counts_and_fall_back_per_endpoint() {
    let mut a = with_load("a", 0, 0, 200); // approximate index believes a is warm…
    a.prefix.precise_blocks = Some(0); // …but its engine evicted the prefix.
    let mut b = with_load("b", 0, 0, 0);
    b.prefix.precise_blocks = Some(150);
    let c = with_load("c", 0, 0, 100); // no live feed: the approximate count stands in
    let views = [a, b, c];
    let precise = schedule(&views, &only(PluginKind::KvEvents), &prefix_req(1)).unwrap();
    assert_eq!(precise.index, 1);
    let approx = schedule(&views, &only(PluginKind::PrefixCache), &prefix_req(1)).unwrap();
    assert_eq!(approx.index, 0);
    // Without b, the endpoint without a feed wins on its approximate count.
    let precise = schedule(
        &[views[0].clone(), views[2].clone()],
        &only(PluginKind::KvEvents),
        &prefix_req(1),
    )
    .unwrap();
    assert_eq!(precise.index, 1);
    // Blocks routed too recently for events to confirm count as cached.
    let mut d = with_load("d", 0, 0, 0);
    d.prefix.precise_blocks = Some(10);
    d.prefix.recent_blocks = 272;
    let r = schedule(
        &[views[1].clone(), d],
        &only(PluginKind::KvEvents),
        &prefix_req(1),
    )
    .unwrap();
    assert_eq!(r.index, 1);
}

#[test]
fn no_prefix_information_scores_zero() {
    let views = [with_load("a", 0, 0, 100), with_load("b", 0, 0, 0)];
    let d = schedule(&views, &only(PluginKind::PrefixCache), &req(1)).unwrap();
    assert_eq!(d.scores, vec![(PluginKind::PrefixCache, 0.0)]);
}

#[test]
fn lora_affinity_levels() {
    let lora = |max, running: &[&str], waiting: &[&str]| {
        Some(Arc::new(LoraLoad {
            max_loras: max,
            running: running.iter().map(|s| s.to_string()).collect(),
            waiting: waiting.iter().map(|s| s.to_string()).collect(),
        }))
    };
    let mk = |name, l| EndpointView {
        lora: l,
        ..view(name)
    };
    let views = [
        mk("running", lora(2, &["sql", "x"], &[])),
        mk("free-slot", lora(2, &["x"], &[])),
        mk("waiting", lora(2, &["x", "y"], &["sql"])),
        mk("full", lora(2, &["x", "y"], &[])),
        mk("unknown", None),
    ];
    let scores = plugins::lora_affinity(&views, &[0, 1, 2, 3, 4], Some("sql"));
    assert_eq!(scores, vec![1.0, 0.8, 0.6, 0.0, 0.5]);
    assert_eq!(
        plugins::lora_affinity(&views, &[0, 1], None),
        vec![0.0, 0.0],
        "base-model requests have no preference"
    );
    let d = schedule(
        &views[1..],
        &only(PluginKind::LoraAffinity),
        &ScheduleRequest {
            lora: Some("sql"),
            ..req(9)
        },
    )
    .unwrap();
    assert_eq!(d.index, 0);
}
