//! Admission of prefill legs per decode endpoint (`maxPrefillPerDecode`).
//!
//! Every disaggregated request ends on one decoder, and each prefill leg in flight towards it
//! is KV the decoder must soon receive and hold. The gate bounds those legs per decoder; the
//! rest wait first come, first served, each for at most its timeout. A slot passes straight
//! from the releasing request to the oldest waiter, so a late arrival never overtakes the
//! queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// The gate of one decode endpoint.
#[derive(Debug, Default)]
pub struct PrefillGate {
    state: Arc<Mutex<GateState>>,
}

#[derive(Debug, Default)]
struct GateState {
    in_flight: u32,
    waiters: VecDeque<oneshot::Sender<PrefillPermit>>,
}

/// One admitted prefill leg; the slot is released (or handed to the next waiter) on drop.
#[derive(Debug)]
pub struct PrefillPermit {
    state: Option<Arc<Mutex<GateState>>>,
}

/// Waiting for a slot took longer than the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no prefill slot within {waited:?} ({limit} prefills already in flight to this decoder)")]
pub struct GateTimeout {
    /// The wait allowed.
    pub waited: Duration,
    /// The limit in force.
    pub limit: u32,
}

impl PrefillGate {
    /// Waits until fewer than `limit` prefill legs are in flight, at most `timeout`.
    pub async fn acquire(
        &self,
        limit: u32,
        timeout: Duration,
    ) -> Result<PrefillPermit, GateTimeout> {
        let rx = {
            let mut s = self.state.lock().expect("gate lock");
            // Waiters that already gave up hold no place in the queue.
            s.waiters.retain(|w| !w.is_closed());
            if s.in_flight < limit.max(1) && s.waiters.is_empty() {
                s.in_flight += 1;
                return Ok(PrefillPermit {
                    state: Some(self.state.clone()),
                });
            }
            let (tx, rx) = oneshot::channel();
            s.waiters.push_back(tx);
            rx
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(permit)) => Ok(permit),
            // A sender is only dropped by a release that handed it nothing: cannot happen, but
            // a timeout is the honest answer if it did.
            Ok(Err(_)) | Err(_) => Err(GateTimeout {
                waited: timeout,
                limit,
            }),
        }
    }

    /// Legs in flight and requests waiting.
    pub fn load(&self) -> (u32, usize) {
        let s = self.state.lock().expect("gate lock");
        (
            s.in_flight,
            s.waiters.iter().filter(|w| !w.is_closed()).count(),
        )
    }
}

impl Drop for PrefillPermit {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let mut s = state.lock().expect("gate lock");
        // Hand the slot to the oldest waiter still waiting. If it times out right after the
        // send, its receiver drops the permit and this runs again for the next one.
        while let Some(w) = s.waiters.pop_front() {
            let permit = PrefillPermit {
                state: Some(state.clone()),
            };
            match w.send(permit) {
                Ok(()) => return,
                Err(mut returned) => {
                    // The waiter is gone; the permit must not release twice.
                    returned.state = None;
                }
            }
        }
        s.in_flight -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_in_flight_and_hands_slots_over_in_order() {
        let gate = Arc::new(PrefillGate::default());
        let t = Duration::from_secs(10);
        let a = gate.acquire(2, t).await.unwrap();
        let b = gate.acquire(2, t).await.unwrap();
        assert_eq!(gate.load(), (2, 0));

        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let p = gate.acquire(2, t).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(p);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.load(), (2, 3), "the third and later wait");
        drop(a);
        drop(b);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            [0, 1, 2],
            "first come, first served"
        );
        assert_eq!(gate.load(), (0, 0), "every slot came back");
    }

    #[tokio::test]
    async fn a_waiter_times_out_cleanly_and_leaves_no_slot_behind() {
        let gate = PrefillGate::default();
        let held = gate.acquire(1, Duration::from_secs(1)).await.unwrap();
        let err = gate
            .acquire(1, Duration::from_millis(50))
            .await
            .expect_err("the only slot is held");
        assert_eq!(
            err,
            GateTimeout {
                waited: Duration::from_millis(50),
                limit: 1
            }
        );
        assert_eq!(gate.load(), (1, 0), "the timed-out waiter is gone");
        drop(held);
        assert_eq!(gate.load(), (0, 0));
        let again = gate.acquire(1, Duration::from_millis(1)).await;
        assert!(again.is_ok(), "the slot is free again");
    }
}
