//! Fair queuing in front of saturated ModelServers. Each server admits
//! `slots_per_endpoint × Ready endpoints` requests at once; beyond that requests wait in
//! per-(priority, tenant) FIFO queues. When a slot frees, the highest priority class with
//! waiters goes first, and within it the tenant with the least attained service per unit of
//! weight (see [`super::attained`]), ties broken by arrival. Charging happens at dispatch, so
//! one tenant's burst of admissions counts against it before its requests finish.
//!
//! Waiting is bounded by `timeout` (then 429 `queue_timeout`) and `max_depth` per server
//! (then 429 `queue_full`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::attained::AttainedService;
use super::identity::{Identity, Priority};
use super::metrics::PolicyMetrics;
use crate::errors::ApiError;

/// Queue settings.
#[derive(Debug, Clone, Copy)]
pub struct FairQueueConfig {
    /// Concurrent requests per Ready endpoint before queuing; 0 disables queuing.
    pub slots_per_endpoint: usize,
    /// Longest wait.
    pub timeout: Duration,
    /// Most waiters per server.
    pub max_depth: usize,
}

impl Default for FairQueueConfig {
    fn default() -> Self {
        FairQueueConfig {
            slots_per_endpoint: 0,
            timeout: Duration::from_secs(30),
            max_depth: 1024,
        }
    }
}

/// A queue head as the picker sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head {
    /// Priority class.
    pub priority: Priority,
    /// Attained service divided by weight.
    pub service: f64,
    /// Arrival order.
    pub seq: u64,
}

/// Which head goes next: highest priority, then least normalised service, then earliest.
pub fn pick_next(heads: &[Head]) -> Option<usize> {
    heads
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| {
            b.priority
                .cmp(&a.priority)
                .then(a.service.total_cmp(&b.service))
                .then(a.seq.cmp(&b.seq))
        })
        .map(|(i, _)| i)
}

struct Waiter {
    seq: u64,
    weight: f64,
    cost: f64,
    tx: oneshot::Sender<Slot>,
}

#[derive(Default)]
struct GateInner {
    capacity: usize,
    in_use: usize,
    seq: u64,
    waiting: usize,
    queued: usize,
    queues: HashMap<(Priority, Arc<str>), VecDeque<Waiter>>,
}

/// One server's slots and queues.
pub struct Gate {
    inner: Mutex<GateInner>,
    attained: Arc<AttainedService>,
}

/// A held slot; dropping it hands the slot to the next waiter.
pub struct Slot {
    gate: Option<Arc<Gate>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            let mut inner = g.inner.lock().expect("gate lock");
            inner.in_use = inner.in_use.saturating_sub(1);
            g.dispatch(&mut inner);
        }
    }
}

impl Gate {
    fn dispatch(self: &Arc<Self>, inner: &mut GateInner) {
        while inner.in_use < inner.capacity && inner.queued > 0 {
            let next = self.attained.with_view(|service| {
                let keys: Vec<&(Priority, Arc<str>)> = inner.queues.keys().collect();
                let heads: Vec<Head> = keys
                    .iter()
                    .map(|k| {
                        let w = inner.queues[*k].front().expect("queues are never empty");
                        Head {
                            priority: k.0,
                            service: service(&k.1) / w.weight,
                            seq: w.seq,
                        }
                    })
                    .collect();
                pick_next(&heads).map(|i| keys[i].clone())
            });
            let Some(key) = next else { break };
            let queue = inner.queues.get_mut(&key).expect("picked key exists");
            let waiter = queue.pop_front().expect("non-empty");
            if queue.is_empty() {
                inner.queues.remove(&key);
            }
            inner.queued -= 1;
            inner.in_use += 1;
            match waiter.tx.send(Slot {
                gate: Some(self.clone()),
            }) {
                Ok(()) => self.attained.charge(&key.1, waiter.cost),
                Err(mut slot) => {
                    // The waiter gave up (timeout, client gone): not a real hand-over.
                    slot.gate = None;
                    inner.in_use -= 1;
                }
            }
        }
    }
}

/// A request's place: the slot (if queuing is on) and how long it waited.
pub struct Acquired {
    /// Held until the request ends.
    pub slot: Option<Slot>,
    /// Time spent queued (zero when a slot was free).
    pub waited: Duration,
}

/// Gates by server.
pub struct FairQueues {
    config: FairQueueConfig,
    gates: Mutex<HashMap<Arc<str>, Arc<Gate>>>,
    attained: Arc<AttainedService>,
    metrics: PolicyMetrics,
}

struct Waiting<'a> {
    gate: &'a Gate,
    metrics: &'a PolicyMetrics,
    priority: Priority,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.gate.inner.lock().expect("gate lock").waiting -= 1;
        self.metrics
            .queue_depth
            .with_label_values(&[self.priority.as_str()])
            .dec();
    }
}

impl FairQueues {
    /// Queues sharing `attained`.
    pub fn new(
        config: FairQueueConfig,
        attained: Arc<AttainedService>,
        metrics: PolicyMetrics,
    ) -> Self {
        FairQueues {
            config,
            gates: Mutex::new(HashMap::new()),
            attained,
            metrics,
        }
    }

    /// Whether queuing is on.
    pub fn enabled(&self) -> bool {
        self.config.slots_per_endpoint > 0
    }

    /// Attained-service state.
    pub fn attained(&self) -> &Arc<AttainedService> {
        &self.attained
    }

    /// Waits for a slot of `server` (which has `endpoints` Ready endpoints) for `who`, whose
    /// request is estimated at `cost` weighted tokens.
    pub async fn acquire(
        &self,
        server: &Arc<str>,
        endpoints: usize,
        who: &Identity,
        cost: f64,
    ) -> Result<Acquired, ApiError> {
        if !self.enabled() {
            return Ok(Acquired {
                slot: None,
                waited: Duration::ZERO,
            });
        }
        let gate = self
            .gates
            .lock()
            .expect("gates lock")
            .entry(server.clone())
            .or_insert_with(|| {
                Arc::new(Gate {
                    inner: Mutex::new(GateInner::default()),
                    attained: self.attained.clone(),
                })
            })
            .clone();
        let priority = who.priority;
        let rx = {
            let mut inner = gate.inner.lock().expect("gate lock");
            inner.capacity = self.config.slots_per_endpoint * endpoints.max(1);
            if inner.in_use < inner.capacity && inner.queued == 0 {
                inner.in_use += 1;
                drop(inner);
                self.attained.charge(&who.tenant, cost);
                self.metrics
                    .queue_wait
                    .with_label_values(&[priority.as_str()])
                    .observe(0.0);
                return Ok(Acquired {
                    slot: Some(Slot { gate: Some(gate) }),
                    waited: Duration::ZERO,
                });
            }
            if inner.waiting >= self.config.max_depth {
                drop(inner);
                self.metrics
                    .queue_rejected
                    .with_label_values(&[priority.as_str(), "full"])
                    .inc();
                return Err(ApiError::queue_full(server, self.config.max_depth));
            }
            if inner.queued > 2 * self.config.max_depth {
                // Waiters that gave up linger until dispatched; sweep them now and then.
                for q in inner.queues.values_mut() {
                    q.retain(|w| !w.tx.is_closed());
                }
                inner.queues.retain(|_, q| !q.is_empty());
                inner.queued = inner.queues.values().map(VecDeque::len).sum();
            }
            let (tx, rx) = oneshot::channel();
            inner.seq += 1;
            let seq = inner.seq;
            inner
                .queues
                .entry((priority, who.tenant.clone()))
                .or_default()
                .push_back(Waiter {
                    seq,
                    weight: who.weight,
                    cost,
                    tx,
                });
            inner.queued += 1;
            inner.waiting += 1;
            gate.dispatch(&mut inner);
            rx
        };
        self.metrics
            .queue_depth
            .with_label_values(&[priority.as_str()])
            .inc();
        let _waiting = Waiting {
            gate: &gate,
            metrics: &self.metrics,
            priority,
        };
        let start = Instant::now();
        let outcome = tokio::time::timeout(self.config.timeout, rx).await;
        let waited = start.elapsed();
        self.metrics
            .queue_wait
            .with_label_values(&[priority.as_str()])
            .observe(waited.as_secs_f64());
        match outcome {
            Ok(Ok(slot)) => Ok(Acquired {
                slot: Some(slot),
                waited,
            }),
            Ok(Err(_)) => Err(ApiError::unavailable(format!(
                "The fair queue of ModelServer {server} was dropped."
            ))),
            Err(_) => {
                self.metrics
                    .queue_rejected
                    .with_label_values(&[priority.as_str(), "timeout"])
                    .inc();
                Err(ApiError::queue_timeout(
                    server,
                    self.config.timeout,
                    priority,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_least_service_then_arrival() {
        let h = |priority, service, seq| Head {
            priority,
            service,
            seq,
        };
        assert_eq!(pick_next(&[]), None);
        let heads = [
            h(Priority::Normal, 10.0, 1),
            h(Priority::Normal, 1.0, 5),
            h(Priority::Low, 0.0, 0),
        ];
        assert_eq!(pick_next(&heads), Some(1));
        let heads = [h(Priority::Low, 0.0, 0), h(Priority::High, 1e9, 9)];
        assert_eq!(pick_next(&heads), Some(1));
        let heads = [h(Priority::Normal, 3.0, 7), h(Priority::Normal, 3.0, 2)];
        assert_eq!(pick_next(&heads), Some(1));
    }

    #[tokio::test]
    async fn a_light_tenant_overtakes_a_heavy_backlog() {
        let metrics = PolicyMetrics::register(&prometheus::Registry::new());
        let attained = Arc::new(AttainedService::new(
            Duration::from_secs(60),
            None,
            Duration::from_millis(50),
            metrics.clone(),
        ));
        let q = Arc::new(FairQueues::new(
            FairQueueConfig {
                slots_per_endpoint: 1,
                timeout: Duration::from_secs(5),
                max_depth: 100,
            },
            attained,
            metrics,
        ));
        let server: Arc<str> = "ns/s".into();
        let mut heavy = Identity::anonymous();
        heavy.tenant = "heavy".into();
        let mut light = Identity::anonymous();
        light.tenant = "light".into();
        let first = q.acquire(&server, 1, &heavy, 100.0).await.unwrap();
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (i, who) in [(0, &heavy), (1, &heavy), (2, &heavy), (3, &light)] {
            let (q, server, who, tx) = (q.clone(), server.clone(), who.clone(), order_tx.clone());
            tasks.push(tokio::spawn(async move {
                let a = q.acquire(&server, 1, &who, 100.0).await.unwrap();
                tx.send(i).unwrap();
                drop(a);
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let mut order = Vec::new();
        while let Ok(i) = order_rx.try_recv() {
            order.push(i);
        }
        // The light tenant (last to arrive, no service yet) goes first; heavy ones keep FIFO.
        assert_eq!(order, vec![3, 0, 1, 2]);
    }
}
