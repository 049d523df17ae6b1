//! Prefill metering per endpoint (`router.muster.dev/prefill-budget-tokens`).
//!
//! An engine batches every prompt it has been sent into its next steps, up to its own
//! `max-num-batched-tokens` (Kthena's benchmark runs vLLM at 65,536). A step that large takes
//! seconds, and every sequence in it waits for the whole step: decodes advance one token per
//! step and a request whose prompt is already cached still waits behind strangers' cold
//! prompts. The budget keeps the uncached prompt tokens this router has in prefill on one
//! endpoint (sent, first token not seen) at or under a limit, so the engine's steps stay
//! short, and holds the rest here, where they can be ordered:
//!
//! * **Shortest first.** A held request that needs little compute (its prefix is cached) goes
//!   before a cold one: the order that minimises mean time to first token.
//! * **After the prefill it shares.** A request whose cached prefix is still being computed
//!   by another request here waits for that one's first token, then costs only its suffix.
//!   Sent together, the engine would schedule both in one step and compute the prefix twice.
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
    /// Ticket whose first token this request waits for (it computes the prefix it reuses).
    after: Option<u64>,
}

/// The bookkeeping of one endpoint's budget: admitted tokens, held requests, and which live
/// request computes which block.
#[derive(Debug, Default)]
pub struct BudgetState {
    limit: u64,
    admitted_tokens: u64,
    admitted: HashMap<u64, u64>,
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

    /// A new request, with the budget's current `limit` (tokens).
    pub fn enter(&mut self, limit: u64, ask: Ask<'_>) -> Entry {
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
            self.admit(ticket, ask.tokens);
            return Entry::Admitted(ticket);
        }
        self.waiters.push(Waiter {
            ticket,
            tokens: ask.tokens,
            after,
        });
        Entry::Held(ticket)
    }

    fn fits(&self, tokens: u64) -> bool {
        self.admitted_tokens == 0 || self.admitted_tokens + tokens <= self.limit
    }

    fn admit(&mut self, ticket: u64, tokens: u64) {
        self.admitted_tokens += tokens;
        self.admitted.insert(ticket, tokens);
    }

    /// Held requests that may go now, in order: shortest first among those not waiting for
    /// another's prefill, while they fit. Each returned ticket is admitted.
    pub fn pump(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            let next = self
                .waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| w.after.is_none())
                .min_by_key(|(_, w)| (w.tokens, w.ticket))
                .map(|(i, w)| (i, w.tokens));
            let Some((i, tokens)) = next else { break };
            if !self.fits(tokens) {
                break;
            }
            let w = self.waiters.swap_remove(i);
            self.admit(w.ticket, w.tokens);
            out.push(w.ticket);
        }
        out
    }

    /// Request `ticket` is done with prefill (first token, failure, or gone): its tokens and
    /// blocks are freed, requests waiting for its prefix become eligible, and the requests
    /// that may go now are returned (admitted).
    pub fn release(&mut self, ticket: u64) -> Vec<u64> {
        if let Some(tokens) = self.admitted.remove(&ticket) {
            self.admitted_tokens -= tokens;
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
        self.pump()
    }

    /// Admits a held request regardless of the limit (it waited too long). False when it was
    /// not held any more (already admitted, or released).
    pub fn bypass(&mut self, ticket: u64) -> bool {
        let Some(i) = self.waiters.iter().position(|w| w.ticket == ticket) else {
            return false;
        };
        let w = self.waiters.swap_remove(i);
        self.admit(w.ticket, w.tokens);
        true
    }
}

/// One endpoint's prefill budget, shared by the requests routed to it.
#[derive(Debug, Default)]
pub struct PrefillBudget {
    state: Arc<Mutex<BudgetInner>>,
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
    state: Arc<Mutex<BudgetInner>>,
    ticket: u64,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let mut s = self.state.lock().expect("budget lock");
        s.wake.remove(&self.ticket);
        let go = s.books.release(self.ticket);
        s.wake(go);
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
            let mut s = self.state.lock().expect("budget lock");
            match s.books.enter(limit, ask) {
                Entry::Admitted(ticket) => {
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
                    let go = s.books.pump();
                    s.wake(go);
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
                let mut s = self.state.lock().expect("budget lock");
                s.wake.remove(&ticket);
                // False: admitted in the instant the timer fired.
                s.books.bypass(ticket)
            }
        };
        let admitted = Admitted {
            waited: start.elapsed(),
            bypassed,
        };
        (permit, admitted)
    }

    /// Tokens admitted and requests held.
    pub fn load(&self) -> (u64, usize) {
        self.state.lock().expect("budget lock").books.load()
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

    #[test]
    fn admits_up_to_the_limit_and_always_one_when_idle() {
        let mut b = BudgetState::default();
        assert_eq!(
            b.enter(8192, ask(10_000, &[], None)),
            Entry::Admitted(0),
            "an idle endpoint takes a prompt larger than the budget"
        );
        assert_eq!(b.enter(8192, ask(100, &[], None)), Entry::Held(1));
        assert_eq!(b.release(0), vec![1]);
        assert_eq!(b.enter(8192, ask(4000, &[], None)), Entry::Admitted(2));
        assert_eq!(b.enter(8192, ask(5000, &[], None)), Entry::Held(3));
        assert_eq!(b.load(), (4100, 1));
    }

    #[test]
    fn held_requests_go_shortest_first() {
        let mut b = BudgetState::default();
        assert_eq!(b.enter(5000, ask(4000, &[1], None)), Entry::Admitted(0));
        for (tokens, block) in [(4000, 2), (4000, 3), (300, 4), (200, 5)] {
            assert!(matches!(
                b.enter(5000, ask(tokens, &[block], None)),
                Entry::Held(_)
            ));
        }
        // 4000 admitted: nothing else fits until it finishes; then the two short ones and one
        // cold one (200 + 300 + 4000 ≤ 5000), the other cold one after.
        assert_eq!(b.release(0), vec![4, 3, 1]);
        assert_eq!(b.release(1), vec![2]);
    }

    #[test]
    fn a_request_waits_for_the_prefill_of_the_prefix_it_reuses() {
        let mut b = BudgetState::default();
        // The leader computes blocks 10, 11; the sibling reuses up to block 11.
        assert_eq!(
            b.enter(8192, ask(4096, &[10, 11], None)),
            Entry::Admitted(0)
        );
        assert_eq!(
            b.enter(8192, ask(256, &[12], Some(11))),
            Entry::Held(1),
            "sent now it would recompute the prefix in the leader's step"
        );
        // An unrelated small request is not held up by it.
        assert_eq!(b.enter(8192, ask(256, &[20], None)), Entry::Held(2));
        assert_eq!(b.pump(), vec![2]);
        assert_eq!(b.release(0), vec![1], "the leader's first token frees it");
        // A reused block nobody is computing any more (cached) holds nothing up.
        assert_eq!(b.enter(8192, ask(256, &[13], Some(11))), Entry::Admitted(3));
    }

    #[test]
    fn a_held_leader_holds_its_siblings_and_releasing_it_unblocks_them() {
        let mut b = BudgetState::default();
        assert_eq!(b.enter(4096, ask(4096, &[1], None)), Entry::Admitted(0));
        assert_eq!(b.enter(4096, ask(4096, &[2], None)), Entry::Held(1));
        assert_eq!(b.enter(4096, ask(128, &[3], Some(2))), Entry::Held(2));
        assert_eq!(
            b.pump(),
            Vec::<u64>::new(),
            "the sibling waits for its leader"
        );
        assert_eq!(b.release(0), vec![1]);
        assert_eq!(b.release(1), vec![2]);
        assert_eq!(b.load(), (128, 0));
    }

    #[test]
    fn bypass_admits_a_held_request_over_the_limit_once() {
        let mut b = BudgetState::default();
        assert_eq!(b.enter(100, ask(100, &[], None)), Entry::Admitted(0));
        assert_eq!(b.enter(100, ask(100, &[], None)), Entry::Held(1));
        assert!(b.bypass(1));
        assert!(!b.bypass(1), "already admitted");
        assert_eq!(b.load(), (200, 0));
        assert_eq!(b.release(1), Vec::<u64>::new());
        assert_eq!(b.release(0), Vec::<u64>::new());
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
