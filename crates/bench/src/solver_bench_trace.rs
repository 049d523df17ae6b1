//! The autoscaling half of the solver benchmark: a seeded diurnal-plus-spike demand trace
//! replayed in virtual time against a fleet whose new instances take a while to load, driven
//! by the KPA-style recommender or by an HPA-style baseline.
//!
//! Accounting, per step of `step_s` seconds starting at `t`:
//! 1. the autoscaler sees the demand at `t` (one metric sample per step, like one controller
//!    period) and returns the desired count; it is told the provisioned count (the ModelServing's
//!    `spec.replicas`, as the controller does), not the ready count;
//! 2. new instances become ready `startup_s` after they were requested; removed instances go
//!    at once, those still loading first;
//! 3. the interval `[t, t + step_s)` is billed for every provisioned instance (loading ones
//!    cost GPUs too) and counts as SLO-violating when demand exceeds the ready capacity at the
//!    SLO (`ready × capacity_per_instance`).

use std::collections::VecDeque;

use muster_solver::{recommend, MetricSample, RecommenderConfig, RecommenderState};
use serde::Serialize;

/// Relative slack when comparing demand with capacity (demand exactly at capacity is met).
const CAPACITY_EPS: f64 = 1e-9;

/// Shape of the replayed demand trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceShape {
    /// Length of the trace.
    pub hours: f64,
    /// Virtual seconds per step (one metric sample and one decision per step).
    pub step_s: f64,
    /// Demand at the diurnal trough (requests/s), at 04:00.
    pub trough_rps: f64,
    /// Demand at the diurnal peak (requests/s), at 16:00.
    pub peak_rps: f64,
    /// Standard deviation of the multiplicative noise (AR(1), so it wanders rather than jitters).
    pub noise: f64,
    /// Bursts on top of the diurnal curve.
    pub spikes: Vec<Spike>,
    /// Seed of the noise and the spike start times.
    pub seed: u64,
}

/// A burst: demand multiplied by `factor` for `minutes`, ramping up over 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spike {
    /// Multiplier at the top of the burst.
    pub factor: f64,
    /// Duration.
    pub minutes: f64,
    /// Start, hours from the beginning of the trace (drawn from the seed).
    pub start_h: f64,
}

impl TraceShape {
    /// 24 hours at 15 s steps, 40 → 200 req/s diurnal, 4% noise, and three bursts (3× for
    /// 3 minutes, 2.5× for 10 minutes, 1.8× for 30 minutes) at seeded times between 06:00 and
    /// 22:00.
    pub fn diurnal_with_spikes(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_5b1e);
        let spikes = [(3.0, 3.0), (2.5, 10.0), (1.8, 30.0)]
            .into_iter()
            .map(|(factor, minutes)| Spike {
                factor,
                minutes,
                start_h: 6.0 + 16.0 * rng.f64(),
            })
            .collect();
        TraceShape {
            hours: 24.0,
            step_s: 15.0,
            trough_rps: 40.0,
            peak_rps: 200.0,
            noise: 0.04,
            spikes,
            seed,
        }
    }

    /// Demand (requests/s) at each step.
    pub fn demand(&self) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let steps = (self.hours * 3600.0 / self.step_s).round() as usize;
        let mut wander = 0.0f64;
        // AR(1) with a 5-minute correlation time and stationary deviation `noise`.
        let keep = (-self.step_s / 300.0).exp();
        let kick = self.noise * (1.0 - keep * keep).sqrt();
        (0..steps)
            .map(|i| {
                let t_h = i as f64 * self.step_s / 3600.0;
                let phase = 2.0 * std::f64::consts::PI * (t_h - 4.0) / 24.0;
                let diurnal =
                    self.trough_rps + (self.peak_rps - self.trough_rps) * (1.0 - phase.cos()) / 2.0;
                wander = keep * wander + kick * gaussian(&mut rng);
                let burst = self
                    .spikes
                    .iter()
                    .map(|s| {
                        let into_s = (t_h - s.start_h) * 3600.0;
                        if into_s < 0.0 || into_s >= s.minutes * 60.0 {
                            1.0
                        } else {
                            1.0 + (s.factor - 1.0) * (into_s / 30.0).min(1.0)
                        }
                    })
                    .fold(1.0, f64::max);
                (diurnal * burst * (1.0 + wander)).max(0.0)
            })
            .collect()
    }
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut fastrand::Rng) -> f64 {
    let u = rng.f64().max(f64::MIN_POSITIVE);
    let v = rng.f64();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// The fleet being scaled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetShape {
    /// Requests/s one instance sustains at its SLO (100% utilisation).
    pub capacity_per_instance: f64,
    /// GPUs per instance (billing).
    pub gpus_per_instance: u32,
    /// Seconds from requesting an instance to it serving (scheduling + model load).
    pub startup_s: f64,
    /// Fewest instances.
    pub min_instances: u32,
    /// Most instances.
    pub max_instances: u32,
}

/// Something that picks an instance count once per step.
pub trait Autoscaler {
    /// Desired instances at `now_s`, given the provisioned count and the demand observed now.
    fn desired(&mut self, now_s: f64, provisioned: u32, observed: f64) -> u32;
}

/// Always the same count (for testing the accounting).
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub u32);

impl Autoscaler for Fixed {
    fn desired(&mut self, _now_s: f64, _provisioned: u32, _observed: f64) -> u32 {
        self.0
    }
}

/// Muster's KPA-style recommender (`muster_solver::recommender`) with its state carried
/// between steps and the samples of the last stable window.
#[derive(Debug, Clone)]
pub struct Kpa {
    config: RecommenderConfig,
    samples: VecDeque<MetricSample>,
    state: RecommenderState,
}

impl Kpa {
    /// Recommender with `config` (validated by the caller).
    pub fn new(config: RecommenderConfig) -> Self {
        Kpa {
            config,
            samples: VecDeque::new(),
            state: RecommenderState::default(),
        }
    }
}

impl Autoscaler for Kpa {
    fn desired(&mut self, now_s: f64, provisioned: u32, observed: f64) -> u32 {
        self.samples.push_back(MetricSample {
            at_s: now_s,
            value: observed,
        });
        while self
            .samples
            .front()
            .is_some_and(|s| s.at_s <= now_s - self.config.stable_window_seconds)
        {
            self.samples.pop_front();
        }
        let samples: Vec<MetricSample> = self.samples.iter().copied().collect();
        let rec = recommend(&self.config, now_s, provisioned, &samples, &self.state);
        self.state = rec.state;
        rec.desired
    }
}

/// Kubernetes HPA's algorithm on the same metric (an `AverageValue`/utilisation target):
/// `desired = ⌈current × (load / current) / target⌉ = ⌈load / target⌉`, where `target` is
/// `capacity_per_instance × target_utilisation`; no change while the ratio is within
/// `tolerance` (10%); scale-up limited per step to max(+100%, +4 instances) (HPA's default
/// scale-up policies, 15 s period); scale-down to the highest recommendation of the last
/// `stabilization_s` (HPA's default downscale stabilization is 300 s; 0 gives a plain HPA
/// that follows the load down at once). No panic mode, no cooldown, no hysteresis band.
#[derive(Debug, Clone)]
pub struct Hpa {
    target_per_instance: f64,
    tolerance: f64,
    stabilization_s: f64,
    min_instances: u32,
    max_instances: u32,
    recommendations: VecDeque<(f64, u32)>,
}

impl Hpa {
    /// HPA aiming at `target_per_instance` load per instance.
    pub fn new(target_per_instance: f64, stabilization_s: f64, fleet: &FleetShape) -> Self {
        Hpa {
            target_per_instance,
            tolerance: 0.1,
            stabilization_s,
            min_instances: fleet.min_instances,
            max_instances: fleet.max_instances,
            recommendations: VecDeque::new(),
        }
    }
}

impl Autoscaler for Hpa {
    fn desired(&mut self, now_s: f64, provisioned: u32, observed: f64) -> u32 {
        let ratio = if provisioned == 0 {
            f64::INFINITY
        } else {
            observed / (f64::from(provisioned) * self.target_per_instance)
        };
        let mut raw = if provisioned > 0 && (ratio - 1.0).abs() <= self.tolerance {
            provisioned
        } else {
            (observed / self.target_per_instance - 1e-9).ceil().max(0.0) as u32
        };
        raw = raw.clamp(self.min_instances, self.max_instances);
        self.recommendations.push_back((now_s, raw));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| *t <= now_s - self.stabilization_s)
        {
            self.recommendations.pop_front();
        }
        if raw < provisioned {
            let window_max = self.recommendations.iter().map(|(_, n)| *n).max();
            return window_max.unwrap_or(raw).min(provisioned);
        }
        let limit = (provisioned * 2).max(provisioned + 4);
        raw.min(limit)
    }
}

/// What one autoscaler cost and missed over the trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceOutcome {
    /// GPU-hours billed (loading instances included).
    pub gpu_hours: f64,
    /// Minutes in which demand exceeded the ready capacity at the SLO.
    pub slo_violation_minutes: f64,
    /// Requests above the ready capacity, as a share of all requests.
    pub unserved_fraction: f64,
    /// Instances started over the trace (churn).
    pub instances_started: u32,
    /// Times the provisioned count changed.
    pub scaling_actions: u32,
    /// Most instances provisioned at once.
    pub peak_instances: u32,
    /// Mean ready utilisation (served load / ready capacity), over steps with capacity.
    pub mean_utilisation: f64,
}

/// Replays `demand` (one value per step of `step_s`) against `fleet` scaled by `autoscaler`,
/// starting with `initial` ready instances.
pub fn simulate(
    demand: &[f64],
    step_s: f64,
    fleet: &FleetShape,
    initial: u32,
    autoscaler: &mut dyn Autoscaler,
) -> TraceOutcome {
    // Ready-at time of every provisioned instance, oldest request first.
    let mut instances: Vec<f64> = vec![f64::NEG_INFINITY; initial as usize];
    let mut out = TraceOutcome {
        gpu_hours: 0.0,
        slo_violation_minutes: 0.0,
        unserved_fraction: 0.0,
        instances_started: 0,
        scaling_actions: 0,
        peak_instances: initial,
        mean_utilisation: 0.0,
    };
    let (mut unserved, mut total, mut utilisation_sum, mut utilisation_steps) =
        (0.0, 0.0, 0.0, 0usize);
    for (i, &load) in demand.iter().enumerate() {
        let now = i as f64 * step_s;
        let provisioned = instances.len() as u32;
        let desired = autoscaler
            .desired(now, provisioned, load)
            .clamp(fleet.min_instances, fleet.max_instances);
        if desired > provisioned {
            out.instances_started += desired - provisioned;
            instances.extend(std::iter::repeat_n(
                now + fleet.startup_s,
                (desired - provisioned) as usize,
            ));
        } else if desired < provisioned {
            // Youngest first: instances still loading go before serving ones.
            instances.sort_by(f64::total_cmp);
            instances.truncate(desired as usize);
        }
        if desired != provisioned {
            out.scaling_actions += 1;
        }
        out.peak_instances = out.peak_instances.max(desired);

        let ready = instances.iter().filter(|&&at| at <= now).count() as f64;
        let capacity = ready * fleet.capacity_per_instance;
        out.gpu_hours +=
            instances.len() as f64 * f64::from(fleet.gpus_per_instance) * step_s / 3600.0;
        if load > capacity * (1.0 + CAPACITY_EPS) {
            out.slo_violation_minutes += step_s / 60.0;
        }
        unserved += (load - capacity).max(0.0) * step_s;
        total += load * step_s;
        if capacity > 0.0 {
            utilisation_sum += load.min(capacity) / capacity;
            utilisation_steps += 1;
        }
    }
    out.unserved_fraction = if total > 0.0 { unserved / total } else { 0.0 };
    out.mean_utilisation = if utilisation_steps > 0 {
        utilisation_sum / utilisation_steps as f64
    } else {
        0.0
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(startup_s: f64) -> FleetShape {
        FleetShape {
            capacity_per_instance: 10.0,
            gpus_per_instance: 2,
            startup_s,
            min_instances: 0,
            max_instances: 100,
        }
    }

    #[test]
    fn demand_exactly_at_capacity_meets_the_slo_and_bills_every_gpu_hour() {
        // 4 instances × 10 req/s = 40 req/s of capacity; 2 hours at 15 s steps.
        let demand = vec![40.0; 480];
        let out = simulate(&demand, 15.0, &fleet(120.0), 4, &mut Fixed(4));
        assert_eq!(out.slo_violation_minutes, 0.0);
        assert_eq!(out.unserved_fraction, 0.0);
        assert!((out.gpu_hours - 4.0 * 2.0 * 2.0).abs() < 1e-9, "{out:?}");
        assert_eq!(out.instances_started, 0);
        assert_eq!(out.scaling_actions, 0);
        assert!((out.mean_utilisation - 1.0).abs() < 1e-12);
        // One request/s more than the capacity violates the SLO in every minute.
        let over = simulate(&vec![41.0; 480], 15.0, &fleet(120.0), 4, &mut Fixed(4));
        assert_eq!(over.slo_violation_minutes, 120.0);
        assert!((over.unserved_fraction - 1.0 / 41.0).abs() < 1e-9);
    }

    #[test]
    fn startup_delay_is_billed_and_counted_as_violation() {
        // From zero instances, 3 are requested at t = 0 and serve from t = 180 s: the first 12
        // steps (3 minutes) are violations, but all 3 instances are billed from t = 0.
        let demand = vec![25.0; 240];
        let out = simulate(&demand, 15.0, &fleet(180.0), 0, &mut Fixed(3));
        assert_eq!(out.slo_violation_minutes, 3.0);
        assert_eq!(out.instances_started, 3);
        assert!((out.gpu_hours - 3.0 * 2.0 * 1.0).abs() < 1e-9, "{out:?}");
        // Without a start-up delay nothing is missed.
        let instant = simulate(&demand, 15.0, &fleet(0.0), 0, &mut Fixed(3));
        assert_eq!(instant.slo_violation_minutes, 0.0);
    }

    #[test]
    fn hpa_downscale_waits_for_the_stabilization_window() {
        let f = fleet(0.0);
        // 100 req/s for 10 minutes, then 10 req/s: a target of 10 per instance.
        let demand: Vec<f64> = (0..80).map(|i| if i < 40 { 100.0 } else { 10.0 }).collect();
        let mut plain = Hpa::new(10.0, 0.0, &f);
        let mut stabilized = Hpa::new(10.0, 300.0, &f);
        let a = simulate(&demand, 15.0, &f, 10, &mut plain);
        let b = simulate(&demand, 15.0, &f, 10, &mut stabilized);
        // Plain drops to 1 instance at once (t = 600 s); the stabilized one keeps 10 until
        // 300 s after the last recommendation of 10 (t = 585 s), i.e. 285 s longer.
        let extra = 9.0 * 2.0 * 285.0 / 3600.0;
        assert!(
            (b.gpu_hours - a.gpu_hours - extra).abs() < 1e-9,
            "{a:?} {b:?}"
        );
        assert_eq!(a.slo_violation_minutes, 0.0);
    }

    #[test]
    fn trace_has_its_diurnal_range_and_spikes() {
        let shape = TraceShape::diurnal_with_spikes(1);
        let demand = shape.demand();
        assert_eq!(demand.len(), 5760);
        assert_eq!(demand, shape.demand(), "seeded");
        let min = demand.iter().cloned().fold(f64::INFINITY, f64::min);
        assert!((28.0..42.0).contains(&min), "trough ≈ 40 req/s: {min}");
        let at = |h: f64| demand[(h * 240.0).round() as usize];
        for s in &shape.spikes {
            // One minute into a burst vs one minute before it (noise is a few percent).
            let ratio = at(s.start_h + 1.0 / 60.0) / at(s.start_h - 1.0 / 60.0);
            assert!((ratio / s.factor - 1.0).abs() < 0.1, "{s:?}: ratio {ratio}");
        }
    }
}
