//! Traffic policy: who is calling ([`auth`], [`identity`], [`jwt`]), how many tokens they may
//! use ([`rate_limit`] over [`bucket`]s, local or in Redis via [`redis_limit`]), and in which
//! order waiting requests reach saturated engines ([`fair_queue`] over [`attained`] service).
//!
//! The proxy calls, in order: [`TrafficPolicy::authenticate`] (401), [`TrafficPolicy::authorize_model`]
//! (403), [`rate_limit::RateLimiter::admit`] (429 + `Retry-After`), [`fair_queue::FairQueues::acquire`]
//! (waits; 429 on timeout), and hands the resulting [`RequestPolicy`] to the request record,
//! which calls [`RequestPolicy::finish`] with the engine's usage when the response ends.

pub mod attained;
pub mod auth;
pub mod bucket;
pub mod fair_queue;
pub mod identity;
pub mod jwt;
pub mod metrics;
pub mod rate_limit;
pub mod redis_limit;
pub mod secrets;

use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderMap;

use crate::errors::ApiError;
use attained::AttainedService;
use auth::Authenticator;
use fair_queue::{FairQueueConfig, FairQueues, Slot};
use identity::Identity;
use metrics::PolicyMetrics;
use rate_limit::{RateLimitConfig, RateLimiter, Reservation};

/// Prompt tokens count once, completion tokens twice, in attained service.
pub fn weighted_tokens(prompt: u64, completion: u64) -> f64 {
    prompt as f64 + 2.0 * completion as f64
}

/// Authentication, limits and queues, shared by every request.
pub struct TrafficPolicy {
    /// Credentials.
    pub auth: Authenticator,
    /// Token buckets.
    pub limits: Arc<RateLimiter>,
    /// Fair queues.
    pub queues: FairQueues,
    /// Metric handles.
    pub metrics: PolicyMetrics,
}

impl TrafficPolicy {
    /// A policy from its parts.
    pub fn new(
        auth: Authenticator,
        limits: RateLimitConfig,
        queues: FairQueueConfig,
        fairness_window: Duration,
        fairness_redis: Option<String>,
        metrics: PolicyMetrics,
    ) -> Self {
        let attained = Arc::new(AttainedService::new(
            fairness_window,
            fairness_redis,
            limits.redis_timeout,
            metrics.clone(),
        ));
        TrafficPolicy {
            auth,
            limits: Arc::new(RateLimiter::new(limits, metrics.clone())),
            queues: FairQueues::new(queues, attained, metrics.clone()),
            metrics,
        }
    }

    /// No authentication and no queuing; route rate limits still apply (per tenant, and
    /// every caller is the anonymous tenant).
    pub fn disabled(metrics: PolicyMetrics) -> Self {
        Self::new(
            Authenticator::disabled(),
            RateLimitConfig::default(),
            FairQueueConfig::default(),
            Duration::from_secs(60),
            None,
            metrics,
        )
    }

    /// The caller, or a 401.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, ApiError> {
        self.auth.authenticate(headers).await.map_err(|e| {
            self.metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            ApiError::authentication_failed(e.message())
        })
    }

    /// A 403 unless `who` may use `model`.
    pub fn authorize_model(&self, who: &Identity, model: &str) -> Result<(), ApiError> {
        if who.may_use(model) {
            return Ok(());
        }
        self.metrics
            .auth_failures
            .with_label_values(&["forbidden_model"])
            .inc();
        Err(ApiError::model_not_allowed(model))
    }
}

/// What a request holds from the policy until it ends.
pub struct RequestPolicy {
    /// The caller.
    pub identity: Arc<Identity>,
    /// Charged tokens, if a limit applied.
    pub reservation: Option<Reservation>,
    /// Fair-queue slot, if queuing is on.
    pub slot: Option<Slot>,
    /// Attained-service estimate charged at dispatch, to correct with actual usage.
    pub charged: Option<(Arc<AttainedService>, f64)>,
}

impl RequestPolicy {
    /// A request that holds nothing yet.
    pub fn new(identity: Arc<Identity>) -> Self {
        RequestPolicy {
            identity,
            reservation: None,
            slot: None,
            charged: None,
        }
    }

    /// Releases the slot and reconciles charges with `usage` (prompt, completion); without
    /// usage, a non-2xx `status` means the engine did no work and everything is refunded.
    pub fn finish(mut self, usage: Option<(u64, u64)>, status: u16) {
        self.slot.take();
        let refund = !(200..300).contains(&status);
        if let Some(r) = self.reservation.take() {
            r.finish(usage, refund);
        }
        if let Some((attained, estimate)) = self.charged.take() {
            let delta = match usage {
                Some((p, c)) => weighted_tokens(p, c) - estimate,
                None if refund => -estimate,
                None => 0.0,
            };
            if delta != 0.0 {
                attained.charge(&self.identity.tenant, delta);
            }
        }
    }
}
