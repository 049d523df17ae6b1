//! The cost policy plus a demand snapshot and the current fleet, flattened into index form.
//!
//! The integer program, the baselines and the brute-force test oracle all read this one
//! normalised shape, so they cannot disagree about what the input means.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cost_policy::CostPolicy;

/// Demand of one model: a total rate, or a rate per request-size bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", untagged)]
pub enum ModelDemand {
    /// Total rate, for models without buckets.
    Total(f64),
    /// Rate per bucket name, for models that declare buckets; absent buckets are 0.
    PerBucket(BTreeMap<String, f64>),
}

/// Observed demand per model name (same unit as the capacities in the policy).
pub type Demand = BTreeMap<String, ModelDemand>;

/// Instances currently running per (model, accelerator); absent pairs are 0.
pub type CurrentFleet = BTreeMap<(String, String), u32>;

/// Demand that does not fit the policy.
#[derive(Debug, Error, PartialEq)]
pub enum DemandError {
    /// Demand was reported for a model the policy does not know.
    #[error("demand for unknown model {0:?}")]
    UnknownModel(String),
    /// Demand was reported for a bucket the model does not declare.
    #[error("demand for model {model:?}: unknown bucket {bucket:?} (declared: {declared:?})")]
    UnknownBucket {
        /// Model name.
        model: String,
        /// Bucket name given.
        bucket: String,
        /// Declared buckets.
        declared: Vec<String>,
    },
    /// Total demand given for a bucketed model, or per-bucket demand for an unbucketed one.
    #[error("demand for model {model:?}: {problem}")]
    Shape {
        /// Model name.
        model: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A rate is negative or not a number.
    #[error("demand for model {model:?} = {value}: must be a number ≥ 0")]
    Negative {
        /// Model name.
        model: String,
        /// The rate given.
        value: f64,
    },
}

/// A (model, accelerator) pair the plan chooses an instance count for.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Index into [`Problem::models`].
    pub model: usize,
    /// Index into [`Problem::accelerators`].
    pub accelerator: usize,
    /// GPUs per instance.
    pub gpus: u32,
    /// Price of one instance per hour.
    pub price: f64,
    /// Capacity of one instance per bucket of its model (one entry for unbucketed models).
    pub capacity: Vec<f64>,
    /// Lower bound on instances.
    pub min: u32,
    /// Upper bound on instances from the profile and the accelerator's availability alone.
    pub max: u32,
    /// Instances running now.
    pub current: u32,
}

/// Flattened input of one planning round.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Model names.
    pub models: Vec<String>,
    /// Accelerator names.
    pub accelerators: Vec<String>,
    /// GPU cap per accelerator (`None`: no cap).
    pub available_gpus: Vec<Option<u32>>,
    /// Bucket names per model (`total` for models without buckets).
    pub buckets: Vec<Vec<String>>,
    /// Required capacity per model per bucket, already multiplied by the headroom.
    pub required: Vec<Vec<f64>>,
    /// Decision targets.
    pub targets: Vec<Target>,
    /// Penalty per instance started.
    pub churn_up: f64,
    /// Penalty per instance stopped.
    pub churn_down: f64,
}

impl Problem {
    /// Builds the problem for one planning round.
    pub fn new(
        policy: &CostPolicy,
        demand: &Demand,
        current: &CurrentFleet,
    ) -> Result<Self, DemandError> {
        for model in demand.keys() {
            if !policy.models.iter().any(|m| &m.name == model) {
                return Err(DemandError::UnknownModel(model.clone()));
            }
        }
        let mut required = Vec::new();
        for m in &policy.models {
            let rates = match (demand.get(&m.name), m.buckets.is_empty()) {
                (None, true) => vec![0.0],
                (None, false) => vec![0.0; m.buckets.len()],
                (Some(ModelDemand::Total(r)), true) => vec![*r],
                (Some(ModelDemand::PerBucket(per)), false) => {
                    if let Some(b) = per.keys().find(|b| !m.buckets.contains(b)) {
                        return Err(DemandError::UnknownBucket {
                            model: m.name.clone(),
                            bucket: b.clone(),
                            declared: m.buckets.clone(),
                        });
                    }
                    m.buckets
                        .iter()
                        .map(|b| per.get(b).copied().unwrap_or(0.0))
                        .collect()
                }
                (Some(_), true) => {
                    return Err(DemandError::Shape {
                        model: m.name.clone(),
                        problem: "the model declares no buckets: give a total rate",
                    })
                }
                (Some(_), false) => {
                    return Err(DemandError::Shape {
                        model: m.name.clone(),
                        problem: "the model declares buckets: give a rate per bucket",
                    })
                }
            };
            if let Some(&bad) = rates.iter().find(|r| !(r.is_finite() && **r >= 0.0)) {
                return Err(DemandError::Negative {
                    model: m.name.clone(),
                    value: bad,
                });
            }
            required.push(rates.iter().map(|r| r * policy.headroom).collect());
        }

        let accel_index = |name: &str| {
            policy
                .accelerators
                .iter()
                .position(|a| a.name == name)
                .expect("validated policy references declared accelerators")
        };
        let mut targets = Vec::new();
        for (mi, m) in policy.models.iter().enumerate() {
            for p in &m.profiles {
                let ai = accel_index(&p.accelerator);
                let accel = &policy.accelerators[ai];
                let capacity = match &p.bucket_capacity {
                    Some(per) => m.buckets.iter().map(|b| per[b]).collect(),
                    None => vec![p.capacity.expect("validated: capacity set")],
                };
                let by_availability = accel
                    .available_gpus
                    .map_or(u32::MAX, |g| g / p.gpus_per_instance);
                let max = p.max_instances.unwrap_or(u32::MAX).min(by_availability);
                targets.push(Target {
                    model: mi,
                    accelerator: ai,
                    gpus: p.gpus_per_instance,
                    price: accel.price_per_hour * f64::from(p.gpus_per_instance),
                    capacity,
                    min: p.min_instances,
                    max,
                    current: current
                        .get(&(m.name.clone(), p.accelerator.clone()))
                        .copied()
                        .unwrap_or(0),
                });
            }
        }
        Ok(Problem {
            models: policy.models.iter().map(|m| m.name.clone()).collect(),
            accelerators: policy.accelerators.iter().map(|a| a.name.clone()).collect(),
            available_gpus: policy
                .accelerators
                .iter()
                .map(|a| a.available_gpus)
                .collect(),
            buckets: policy
                .models
                .iter()
                .map(|m| {
                    if m.buckets.is_empty() {
                        vec!["total".to_string()]
                    } else {
                        m.buckets.clone()
                    }
                })
                .collect(),
            required,
            targets,
            churn_up: policy.churn_penalty.per_instance_started,
            churn_down: policy.churn_penalty.per_instance_stopped,
        })
    }

    /// Hourly price plus churn penalty of a vector of instance counts (one per target).
    pub fn objective(&self, counts: &[u32]) -> f64 {
        self.targets
            .iter()
            .zip(counts)
            .map(|(t, &n)| {
                let up = n.saturating_sub(t.current);
                let down = t.current.saturating_sub(n);
                t.price * f64::from(n)
                    + self.churn_up * f64::from(up)
                    + self.churn_down * f64::from(down)
            })
            .sum()
    }

    /// GPUs used per accelerator by a vector of counts.
    pub fn gpus_used(&self, counts: &[u32]) -> Vec<u64> {
        let mut used = vec![0u64; self.accelerators.len()];
        for (t, &n) in self.targets.iter().zip(counts) {
            used[t.accelerator] += u64::from(t.gpus) * u64::from(n);
        }
        used
    }

    /// Indices of the targets serving `model`.
    pub fn targets_of(&self, model: usize) -> impl Iterator<Item = usize> + '_ {
        self.targets
            .iter()
            .enumerate()
            .filter(move |(_, t)| t.model == model)
            .map(|(i, _)| i)
    }
}
