//! Prefill metering per endpoint (`router.muster.dev/prefill-budget-tokens`).
//!
//! An engine batches every prompt it has been sent into its next steps, up to its own
//! `max-num-batched-tokens` (Kthena's benchmark runs vLLM at 65,536). A step that large takes
//! seconds, and every sequence in it waits for the whole step: decodes advance one token per
//! step and a request whose prompt is already cached still waits behind strangers' cold
//! prompts. The budget keeps the uncached prompt tokens this router has sent one endpoint for
//! its next step at or under a limit, so the engine's steps stay short, and holds the rest
//! here, where they can be ordered:
//!
//! * **Shortest first.** A held request that needs little compute (its prefix is cached) goes
//!   before a cold one: the order that minimises mean time to first token. A cold prompt that
//!   held siblings wait for counts with them, so the prefix most of them need goes first.
//! * **After the prefill it shares.** A request whose cached prefix another request here has
//!   yet to compute waits until that one's step has begun (see the next point), then goes
//!   into the step after it, where the prefix is cached, and costs only its suffix. Sent
//!   together, the engine would schedule both in one step and compute the prefix twice.
//! * **One step ahead.** The limit is on the prompt tokens the engine's *next* step will
//!   take, not on what is in the engine: once a step boundary has been seen after a request
//!   was sent (any token from this endpoint, more than [`STEP_GRACE`] later), that request is
//!   in the step now running and the next prompt may go, so the engine finds it queued when
//!   the step ends instead of running a decode-only step first. A step boundary is visible only
//!   while something here streams tokens; with nothing decoding the next prompt waits for the
//!   first token.
//! * **No large prompt in a step of small ones.** A request larger than twice everything
//!   already waiting for the next step is held until that step has begun: a cold prompt in the
//!   same step would make each cached request wait for all of its compute.
//! * **Never stuck.** An endpoint with nothing in prefill admits any request, however large,
//!   and a request held for `max_wait` is sent regardless (counted as bypassed). Nothing is
//!   refused.
//!
//! Only streamed requests are metered: the first token of a non-streamed one is not visible
//! until its whole answer is, so it would hold budget through its decode.
//!
//! [`BudgetState`] is the pure bookkeeping; [`PrefillBudget`] wraps it for async callers.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::prefix::index::IdentityHasher;

type BlockMap = HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

/// What one request asks of the budget.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Uncached prompt tokens it will compute.
    pub tokens: u64,
    /// Hashes of the blocks it will compute (its uncached full blocks).
    pub computes: &'a [u64],
    /// Hash of the deepest block it expects to find cached, if any.
    pub reuses: Option<u64>,
}

/// A held request.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    tokens: u64,
    /// Ticket whose step this request waits for (it computes the prefix this one reuses);
    /// cleared when that one is done.
    after: Option<u64>,
}

/// The order of held requests: a held request and the held requests that wait for its prefill
/// form a chain, and chains go by fewest tokens per request first (Smith's rule, which
/// minimises the mean wait when each token costs the same). A cached request (few tokens) goes
/// before a cold one; among cold prompts of one size, the one whose prefix most held siblings
/// are waiting for goes first, since its first token releases them all.
#[derive(Debug, Default, Clone, Copy)]
struct Priority {
    tokens: u64,
    requests: u64,
}

impl Priority {
    /// `tokens / requests`, compared without division.
    fn cmp_density(&self, other: &Self) -> std::cmp::Ordering {
        (u128::from(self.tokens) * u128::from(other.requests))
            .cmp(&(u128::from(other.tokens) * u128::from(self.requests)))
    }
}

/// How long after a request is sent a token from its endpoint counts as the end of a step the
/// request was queued for. Sooner, the token may come from a step that ended before the request
/// reached the engine (the send and the engine's intake). A token that comes sooner is not
/// taken as a boundary, and the next one may be the end of this request's own prompt step; a
/// prompt admitted at a boundary (as held ones are) always has a whole step to be seen in. When
/// the engine takes longer than this to start a request, the router can count it as computing
/// too early and queue one more, which the twice-the-limit bound keeps to one.
pub const STEP_GRACE: Duration = Duration::from_millis(5);

/// How many times larger than the largest request queued for the next step a request may be
/// and still join that step.
const MIX_RATIO: u64 = 2;

/// An admitted request, in prefill.
#[derive(Debug, Clone, Copy)]
struct Admission {
    tokens: u64,
    at: Instant,
    /// A step boundary was seen since it was sent: it is in the step running now.
    started: bool,
}

/// The bookkeeping of one endpoint's budget: admitted requests (queued for the next step or in
/// the running one), held requests, and which live request computes which block.
#[derive(Debug, Default)]
pub struct BudgetState {
    limit: u64,
    admitted_tokens: u64,
    admitted: HashMap<u64, Admission>,
    next_ticket: u64,
    /// Block → the live (admitted or held) request computing it.
    computing: BlockMap,
    /// Blocks each live request registered in `computing`.
    owned: HashMap<u64, Vec<u64>>,
    waiters: Vec<Waiter>,
}

/// The outcome of [`BudgetState::enter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Admitted now.
    Admitted(u64),
    /// Held; admitted later by [`BudgetState::release`] or [`BudgetState::bypass`].
    Held(u64),
}

impl BudgetState {
    /// Tokens admitted and requests held.
    pub fn load(&self) -> (u64, usize) {
        (self.admitted_tokens, self.waiters.len())
    }

    /// Whether some admitted request is still taken to be queued for the next step.
    pub fn has_queued(&self) -> bool {
        self.admitted.values().any(|a| !a.started)
    }

    /// A new request at `now`, with the budget's current `limit` (tokens).
    pub fn enter(&mut self, limit: u64, ask: Ask<'_>, now: Instant) -> Entry {
        self.limit = limit;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let after = ask
            .reuses
            .and_then(|h| self.computing.get(&h).copied())
            .filter(|t| *t != ticket);
        let mut owned = Vec::new();
        for &h in ask.computes {
            if let std::collections::hash_map::Entry::Vacant(v) = self.computing.entry(h) {
                v.insert(ticket);
                owned.push(h);
            }
        }
        self.owned.insert(ticket, owned);
        if after.is_none() && self.waiters.is_empty() && self.fits(ask.tokens) {
            self.admit(ticket, ask.tokens, now);
            return Entry::Admitted(ticket);
        }
        self.waiters.push(Waiter {
            ticket,
            tokens: ask.tokens,
            after,
        });
        Entry::Held(ticket)
    }

    /// Whether a request of `tokens` may join the next step: nothing is in prefill; or it is
    /// the only one for the next step, or fits the limit with the others there and is not much
    /// larger than they are. In all, at most twice the limit is in prefill (one step running,
    /// one queued), so an engine that defers what it was sent (full KV cache) while tokens
    /// still flow does not collect prompts without end.
    fn fits(&self, tokens: u64) -> bool {
        if self.admitted_tokens == 0 {
            return true;
        }
        let (mut queued, mut largest) = (0, 0);
        for a in self.admitted.values().filter(|a| !a.started) {
            queued += a.tokens;
            largest = largest.max(a.tokens);
        }
        let next_step =
            queued == 0 || (queued + tokens <= self.limit && tokens <= MIX_RATIO * largest);
        next_step && self.admitted_tokens + tokens <= 2 * self.limit
    }

    fn admit(&mut self, ticket: u64, tokens: u64, now: Instant) {
        self.admitted_tokens += tokens;
        let a = Admission {
            tokens,
            at: now,
            started: false,
        };
        self.admitted.insert(ticket, a);
    }

    /// A token from this endpoint arrived at `now`: a step ended, so the requests sent at
    /// least [`STEP_GRACE`] before are in the step that began then. Returns the requests that
    /// may go now (admitted).
    pub fn step_seen(&mut self, now: Instant) -> Vec<u64> {
        let mut changed = false;
        for a in self.admitted.values_mut() {
            if !a.started && now.saturating_duration_since(a.at) >= STEP_GRACE {
                a.started = true;
                changed = true;
            }
        }
        if changed {
            self.pump(now)
        } else {
            Vec::new()
        }
    }

    /// Whether a request waiting for `after` may go: it waits for nobody, or that request's
    /// step has begun, so the prefix is cached by the next one.
    fn leader_started(&self, after: Option<u64>) -> bool {
        after.is_none_or(|t| self.admitted.get(&t).is_some_and(|a| a.started))
    }

    /// Held requests that may go now, in order (see [`Priority`]), while they fit. Each
    /// returned ticket is admitted.
    pub fn pump(&mut self, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            // What the held requests that wait for each held leader add to its chain.
            let mut chains: HashMap<u64, Priority> = HashMap::new();
            for w in &self.waiters {
                if let Some(leader) = w.after {
                    let c = chains.entry(leader).or_default();
                    c.tokens += w.tokens;
                    c.requests += 1;
                }
            }
            let next = self
                .waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| self.leader_started(w.after))
                .map(|(i, w)| {
                    let chain = chains.get(&w.ticket).copied().unwrap_or_default();
                    let p = Priority {
                        tokens: w.tokens + chain.tokens,
                        requests: 1 + chain.requests,
                    };
                    (i, p, w.ticket)
                })
                .min_by(|(_, a, ta), (_, b, tb)| a.cmp_density(b).then(ta.cmp(tb)))
                .map(|(i, _, _)| i);
            let Some(i) = next else { break };
            if !self.fits(self.waiters[i].tokens) {
                break;
            }
            let w = self.waiters.swap_remove(i);
            self.admit(w.ticket, w.tokens, now);
            out.push(w.ticket);
        }
        out
    }

    /// Request `ticket` is done with prefill (first token, failure, or gone): its tokens and
    /// blocks are freed, requests waiting for its prefix become eligible, and the requests
    /// that may go now are returned (admitted).
    pub fn release(&mut self, ticket: u64, now: Instant) -> Vec<u64> {
        if let Some(a) = self.admitted.remove(&ticket) {
            self.admitted_tokens -= a.tokens;
        }
        if let Some(i) = self.waiters.iter().position(|w| w.ticket == ticket) {
            self.waiters.swap_remove(i);
        }
        for h in self.owned.remove(&ticket).unwrap_or_default() {
            self.computing.remove(&h);
        }
        for w in &mut self.waiters {
            if w.after == Some(ticket) {
                w.after = None;
            }
        }
        self.pump(now)
    }

    /// Admits a held request regardless of the limit (it waited too long). False when it was
    /// not held any more (already admitted, or released).
    pub fn bypass(&mut self, ticket: u64, now: Instant) -> bool {
        let Some(i) = self.waiters.iter().position(|w| w.ticket == ticket) else {
            return false;
        };
        let w = self.waiters.swap_remove(i);
        self.admit(w.ticket, w.tokens, now);
        true
    }
}

/// One endpoint's prefill budget, shared by the requests routed to it.
#[derive(Debug, Default)]
pub struct PrefillBudget {
    state: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<BudgetInner>,
    /// Set whenever a request is admitted, cleared when none is queued for the next step any
    /// more, so a token on an endpoint without a budget takes no lock.
    queued: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetInner> {
        self.inner.lock().expect("budget lock")
    }

    /// Wakes the admitted `tickets`, with the lock held.
    fn admitted(&self, inner: &mut BudgetInner, tickets: Vec<u64>) {
        if !tickets.is_empty() {
            self.queued.store(true, Ordering::Relaxed);
        }
        inner.wake(tickets);
    }
}

#[derive(Debug, Default)]
struct BudgetInner {
    books: BudgetState,
    /// Held requests' wake-ups, by ticket.
    wake: HashMap<u64, oneshot::Sender<()>>,
}

impl BudgetInner {
    fn wake(&mut self, tickets: Vec<u64>) {
        for t in tickets {
            if let Some(tx) = self.wake.remove(&t) {
                // A receiver already gone is a request whose future was dropped; its guard
                // releases the ticket.
                let _ = tx.send(());
            }
        }
    }
}

/// Budget held by one admitted request; freed on drop (first token, failure, or end).
#[derive(Debug)]
pub struct BudgetPermit {
    state: Arc<Shared>,
    ticket: u64,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let mut s = self.state.lock();
        s.wake.remove(&self.ticket);
        let go = s.books.release(self.ticket, Instant::now());
        self.state.admitted(&mut s, go);
    }
}

/// How a request got through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admitted {
    /// Time held.
    pub waited: Duration,
    /// Sent after `max_wait` without fitting.
    pub bypassed: bool,
}

impl PrefillBudget {
    /// Waits until `ask` fits under `limit` tokens in prefill (see the module docs), at most
    /// `max_wait`; the permit frees the budget when dropped.
    pub async fn admit(
        &self,
        limit: u64,
        max_wait: Duration,
        ask: Ask<'_>,
    ) -> (BudgetPermit, Admitted) {
        let start = Instant::now();
        let (ticket, rx) = {
            let mut s = self.state.lock();
            match s.books.enter(limit, ask, start) {
                Entry::Admitted(ticket) => {
                    self.state.queued.store(true, Ordering::Relaxed);
                    let permit = BudgetPermit {
                        state: self.state.clone(),
                        ticket,
                    };
                    let admitted = Admitted {
                        waited: Duration::ZERO,
                        bypassed: false,
                    };
                    return (permit, admitted);
                }
                Entry::Held(ticket) => {
                    let (tx, rx) = oneshot::channel();
                    s.wake.insert(ticket, tx);
                    // A larger newcomer can leave room for a smaller held one.
                    let go = s.books.pump(start);
                    self.state.admitted(&mut s, go);
                    (ticket, rx)
                }
            }
        };
        // From here the ticket is live: the permit frees it however this future ends
        // (admitted, bypassed, or dropped by a client that went away).
        let permit = BudgetPermit {
            state: self.state.clone(),
            ticket,
        };
        let bypassed = match tokio::time::timeout(max_wait, rx).await {
            Ok(_) => false,
            Err(_) => {
                let mut s = self.state.lock();
                s.wake.remove(&ticket);
                self.state.queued.store(true, Ordering::Relaxed);
                // False: admitted in the instant the timer fired.
                s.books.bypass(ticket, Instant::now())
            }
        };
        let admitted = Admitted {
            waited: start.elapsed(),
            bypassed,
        };
        (permit, admitted)
    }

    /// A token from this endpoint arrived at `now` (see [`BudgetState::step_seen`]). Cheap
    /// when no admitted request is waiting for a step to begin, as on every endpoint without
    /// a budget.
    pub fn step_seen(&self, now: Instant) {
        if !self.state.queued.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.state.lock();
        let go = s.books.step_seen(now);
        self.state.admitted(&mut s, go);
        if !s.books.has_queued() {
            self.state.queued.store(false, Ordering::Relaxed);
        }
    }

    /// Tokens admitted and requests held.
    pub fn load(&self) -> (u64, usize) {
        self.state.lock().books.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(tokens: u64, computes: &[u64], reuses: Option<u64>) -> Ask<'_> {
        Ask {
            tokens,
            computes,
            reuses,
        }
    }

    /// A budget whose clock the test moves: `at(ms)` is the instant `ms` after its start.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Self(Instant::now())
        }
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    #[test]
    fn admits_up_to_the_limit_and_always_one_when_idle() {
        let (mut b, c) = (BudgetState::default(), Clock::new());
        assert_eq!(
            b.enter(8192, ask(10_000, &[], None), c.at(0)),
            Entry::Admitted(0),
            "an idle endpoint takes a prompt larger than the budget"
        );
        assert_eq!(b.enter(8192, ask(100, &[], None), c.at(0)), Entry::Held(1));
        assert_eq!(b.release(0, c.at(1)), vec![1]);
        assert_eq!(b.release(1, c.at(2)), Vec::<u64>::new());
        assert_eq!(
            b.enter(8192, ask(4000, &[], None), c.at(1)),
            Entry::Admitted(2)
        );
        assert_eq!(b.enter(8192, ask(5000, &[], None), c.at(1)), Entry::Held(3));
        assert_eq!(b.load(), (4000, 1));
    }

    #[test]
    fn held_requests_go_shortest_first_and_a_large_one_not_into_a_step_of_small_ones() {
        let (mut b, c) = (BudgetState::default(), Clock::new());
        assert_eq!(
            b.enter(5000, ask(4000, &[1], None), c.at(0)),
            Entry::Admitted(0)
        );
        for (tokens, block) in [(4000, 2), (4000, 3), (300, 4), (200, 5)] {
            assert!(matches!(
                b.enter(5000, ask(tokens, &[block], None), c.at(0)),
                Entry::Held(_)
            ));
        }
        // The two short ones go together; a cold one would fit the limit with them
        // (200 + 300 + 4000 ≤ 5000) but would make both wait for its compute.
        assert_eq!(b.release(0, c.at(100)), vec![4, 3]);
        assert_eq!(
            b.step_seen(c.at(125)),
            vec![1],
            "once their step has begun, the next cold one is queued behind it"
        );
        assert_eq!(b.release(3, c.at(130)), Vec::<u64>::new());
        assert_eq!(b.release(4, c.at(130)), Vec::<u64>::new());
        assert_eq!(b.step_seen(c.at(150)), vec![2]);
    }

    #[test]
    fn the_next_prompt_is_queued_once_a_step_boundary_shows_the_previous_one_running() {
        let (mut b, c) = (BudgetState::default(), Clock::new());
        assert_eq!(
            b.enter(8192, ask(4352, &[1], None), c.at(0)),
            Entry::Admitted(0)
        );
        assert_eq!(
            b.enter(8192, ask(4352, &[2], None), c.at(0)),
            Entry::Held(1)
        );
        assert_eq!(
            b.enter(8192, ask(4352, &[3], None), c.at(0)),
            Entry::Held(2)
        );
        assert_eq!(
            b.step_seen(c.at(2)),
            Vec::<u64>::new(),
            "a token this soon may come from a step that ended before the prompt arrived"
        );
        assert_eq!(
            b.step_seen(c.at(25)),
            vec![1],
            "ticket 0 is in the running step"
        );
        assert_eq!(
            b.step_seen(c.at(28)),
            Vec::<u64>::new(),
            "ticket 1 is queued for the next step"
        );
        assert_eq!(
            b.load(),
            (8704, 1),
            "two prompts in the engine, one per step"
        );
        // Tokens go on but the engine does not start ticket 1 (say its KV cache is full): the
        // router takes it for started and queues ticket 2, but no more than twice the limit.
        assert_eq!(b.step_seen(c.at(60)), vec![2]);
        assert_eq!(
            b.enter(8192, ask(4352, &[4], None), c.at(60)),
            Entry::Held(3)
        );
        assert_eq!(
            b.step_seen(c.at(100)),
            Vec::<u64>::new(),
            "13,056 + 4,352 > 2 · 8,192"
        );
        assert_eq!(b.release(0, c.at(150)), vec![3]);
    }

    #[test]
    fn a_request_waits_for_the_prefill_of_the_prefix_it_reuses() {
        let (mut b, c) = (BudgetState::default(), Clock::new());
        // The leader computes blocks 10, 11; the sibling reuses up to block 11.
        assert_eq!(
            b.enter(8192, ask(4096, &[10, 11], None), c.at(0)),
            Entry::Admitted(0)
        );
        assert_eq!(
            b.enter(8192, ask(256, &[12], Some(11)), c.at(0)),
            Entry::Held(1),
            "sent now it would recompute the prefix in the leader's step"
        );
        // An unrelated small request is not held up by it.
        assert_eq!(
            b.enter(8192, ask(256, &[20], None), c.at(0)),
            Entry::Held(2)
        );
        assert_eq!(b.pump(c.at(0)), vec![2]);
        assert_eq!(
            b.step_seen(c.at(30)),
            vec![1],
            "the leader's step has begun: the sibling goes into the next one, prefix cached"
        );
        assert_eq!(b.release(0, c.at(100)), Vec::<u64>::new());
        // A reused block nobody is computing any more (cached) holds nothing up.
        assert_eq!(
            b.enter(8192, ask(256, &[13], Some(11)), c.at(100)),
            Entry::Admitted(3)
        );
    }

    #[test]
    fn a_held_leader_holds_its_siblings_and_releasing_it_unblocks_them() {
        let (mut b, c) = (BudgetState::default(), Clock::new());
        assert_eq!(
            b.enter(4096, ask(4096, &[1], None), c.at(0)),
            Entry::Admitted(0)
        );
        assert_eq!(
            b.enter(4096, ask(4096, &[2], None), c.at(0)),
            Entry::Held(1)
        );
        assert_eq!(
            b.enter(4096, ask(128, &[3], Some(2)), c.at(0)),
            Entry::Held(2)
        );
        assert_eq!(
            b.pump(c.at(0)),
            Vec::<u64>::new(),
            "the sibling waits for its leader"
        );
        assert_eq!(b.release(0, c.at(100)), vec![1]);
        assert_eq!(b.release(1, c.at(200)), vec![2]);
        assert_eq!(b.load(), (128, 0));
    }

    #[test]
    fn the_cold_prompt_most_held_siblings_wait_for_goes_first() {
        let (mut b, c) = (BudgetState::default(), Clock::new());
        let mut enter = |tokens, computes: &[u64], reuses| {
            b.enter(4096, ask(tokens, computes, reuses), c.at(0))
        };
        assert_eq!(enter(4096, &[1], None), Entry::Admitted(0));
        // Two cold leaders of one size; only the later one has siblings waiting (2 of them).
        assert_eq!(enter(4096, &[2], None), Entry::Held(1));
        assert_eq!(enter(4096, &[3], None), Entry::Held(2));
        assert_eq!(enter(128, &[4], Some(3)), Entry::Held(3));
        assert_eq!(enter(128, &[5], Some(3)), Entry::Held(4));
        // A lone cached request still goes before any chain: 256 tokens per request against
        // (4096 + 2 · 128) / 3.
        assert_eq!(enter(256, &[6], None), Entry::Held(5));
        assert_eq!(b.release(0, c.at(100)), vec![5]);
        assert_eq!(
            b.release(5, c.at(110)),
            vec![2],
            "the leader its siblings wait for"
        );
        assert_eq!(b.release(2, c.at(200)), vec![3, 4], "then its siblings");
        assert_eq!(b.release(3, c.at(210)), Vec::<u64>::new());
        assert_eq!(
            b.release(4, c.at(210)),
            vec![1],
            "the leader nobody waits for comes last"
        );
    }

    #[test]
    fn bypass_admits_a_held_request_over_the_limit_once() {
        let (mut b, c) = (BudgetState::default(), Clock::new());
        assert_eq!(
            b.enter(100, ask(100, &[], None), c.at(0)),
            Entry::Admitted(0)
        );
        assert_eq!(b.enter(100, ask(100, &[], None), c.at(0)), Entry::Held(1));
        assert!(b.bypass(1, c.at(10)));
        assert!(!b.bypass(1, c.at(10)), "already admitted");
        assert_eq!(b.load(), (200, 0));
        assert_eq!(b.release(1, c.at(20)), Vec::<u64>::new());
        assert_eq!(b.release(0, c.at(20)), Vec::<u64>::new());
        assert_eq!(b.load(), (0, 0), "every token came back");
    }

    #[tokio::test]
    async fn held_requests_wake_in_order_time_out_into_a_bypass_and_leave_nothing_behind() {
        let budget = Arc::new(PrefillBudget::default());
        let long = Duration::from_secs(10);
        let (first, a) = budget.admit(1000, long, ask(1000, &[1], None)).await;
        assert!(!a.bypassed);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, tokens) in [(0u32, 900u64), (1, 200)] {
            let (budget, order) = (budget.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let blocks = [100 + u64::from(i)];
                let (p, a) = budget.admit(1000, long, ask(tokens, &blocks, None)).await;
                order.lock().unwrap().push(i);
                assert!(!a.bypassed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(p);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.load(), (1000, 2));
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [1, 0], "shortest first");
        assert_eq!(budget.load(), (0, 0));

        let (held, _) = budget.admit(10, long, ask(10, &[], None)).await;
        let (late, a) = budget
            .admit(10, Duration::from_millis(30), ask(10, &[], None))
            .await;
        assert!(a.bypassed, "sent after max_wait, not refused");
        assert!(a.waited >= Duration::from_millis(30));
        drop((held, late));
        assert_eq!(budget.load(), (0, 0));

        // A request whose client went away while held leaves no ticket behind.
        let (held, _) = budget.admit(10, long, ask(10, &[7], None)).await;
        let gone = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.admit(10, long, ask(10, &[8], None)).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(budget.load(), (10, 1));
        gone.abort();
        let _ = gone.await;
        assert_eq!(budget.load(), (10, 0));
        drop(held);
        assert_eq!(budget.load(), (0, 0));
    }
}
