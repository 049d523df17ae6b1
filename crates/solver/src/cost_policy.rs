//! The cost policy: which accelerators exist, what they cost, how many are free, and how much
//! load one instance of each model sustains on each of them at its SLO.
//!
//! Parsing is two steps: serde reads the YAML shape (unknown fields are rejected so a typo is
//! not silently ignored), then [`CostPolicy::validate`] checks the cross references and numbers
//! and names the offending field path and value in its error.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A parsed and validated cost policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CostPolicy {
    /// Accelerator types that instances may be placed on.
    pub accelerators: Vec<AcceleratorType>,
    /// Served models with their per-accelerator instance profiles.
    pub models: Vec<ModelProfile>,
    /// Demand is multiplied by this factor (≥ 1) before it is compared with capacity, so the
    /// fleet runs below its SLO limit and absorbs short bursts. 1.25 means 80% utilisation.
    #[serde(default = "default_headroom")]
    #[schemars(range(min = 1.0))]
    pub headroom: f64,
    /// What starting and stopping instances costs, in the same unit as `pricePerHour`; keeps the
    /// plan from reshuffling the fleet for a tiny saving.
    #[serde(default)]
    pub churn_penalty: ChurnPenalty,
}

fn default_headroom() -> f64 {
    1.25
}

/// One kind of accelerator (e.g. `h100-80gb`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcceleratorType {
    /// Unique name, referenced by model profiles.
    pub name: String,
    /// Price of one GPU of this type per hour (any currency, used consistently).
    #[schemars(range(min = 0.0))]
    pub price_per_hour: f64,
    /// GPUs of this type available to all models together; absent means no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_gpus: Option<u32>,
    /// GPUs per node; an instance must fit in one node or span whole nodes.
    #[schemars(range(min = 1))]
    pub gpus_per_node: u32,
}

/// A served model and where it can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelProfile {
    /// Unique model name; demand is reported under this name.
    pub name: String,
    /// Request-size buckets (Mélange-style, e.g. `short`, `long`). When given, every profile
    /// states its capacity per bucket and demand is given per bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<String>,
    /// One profile per accelerator type the model can run on.
    pub profiles: Vec<InstanceProfile>,
}

/// How one instance of a model runs on one accelerator type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceProfile {
    /// Name of an entry in `accelerators`.
    pub accelerator: String,
    /// GPUs one instance occupies (its tensor/pipeline-parallel shape); instances are whole.
    #[schemars(range(min = 1))]
    pub gpus_per_instance: u32,
    /// Load one instance sustains at the SLO (requests/s or tokens/s, the unit demand uses).
    /// Exactly one of `capacity` and `bucketCapacity` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub capacity: Option<f64>,
    /// Capacity per request-size bucket; 0 means this accelerator cannot meet the SLO for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_capacity: Option<BTreeMap<String, f64>>,
    /// Fewest instances of this profile to keep running.
    #[serde(default)]
    pub min_instances: u32,
    /// Most instances of this profile; absent means limited only by availability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
}

/// Cost of changing the fleet, per instance started or stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChurnPenalty {
    /// Penalty per instance started (cold start, weights download).
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub per_instance_started: f64,
    /// Penalty per instance stopped (draining in-flight requests, lost KV cache).
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub per_instance_stopped: f64,
}

/// Why a cost policy was rejected. Every variant names the field path and offending value.
#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    /// The YAML does not have the expected shape (wrong type, unknown or missing field).
    #[error("cost policy is not valid YAML for the schema: {0}")]
    Syntax(String),
    /// A number is out of its allowed range.
    #[error("{field} = {value}: {expected}")]
    OutOfRange {
        /// Field path, e.g. `accelerators[1].pricePerHour`.
        field: String,
        /// The value given.
        value: f64,
        /// What was expected instead.
        expected: &'static str,
    },
    /// Two entries share a name that must be unique.
    #[error("{field}: duplicate {kind} name {name:?}")]
    Duplicate {
        /// Field path of the second occurrence.
        field: String,
        /// What kind of thing is duplicated (`accelerator`, `model`, ...).
        kind: &'static str,
        /// The duplicated name.
        name: String,
    },
    /// A profile names an accelerator that is not declared.
    #[error("{field} = {name:?}: unknown accelerator type (declared: {known:?})")]
    UnknownAccelerator {
        /// Field path of the reference.
        field: String,
        /// The unknown name.
        name: String,
        /// Declared accelerator names.
        known: Vec<String>,
    },
    /// A model has no instance profile, so no plan could ever serve it.
    #[error(
        "models[{index}] ({model:?}): missing profile: at least one entry in profiles is required"
    )]
    MissingProfile {
        /// Index of the model.
        index: usize,
        /// Model name.
        model: String,
    },
    /// A profile's capacity does not match how the model declares buckets.
    #[error("{field}: {problem}")]
    Capacity {
        /// Field path of the profile.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// An instance does not fit the node shape of its accelerator.
    #[error("{field} = {gpus_per_instance}: an instance must fit in one node of {gpus_per_node} GPUs or span whole nodes")]
    ShapeDoesNotFitNodes {
        /// Field path.
        field: String,
        /// GPUs per instance.
        gpus_per_instance: u32,
        /// GPUs per node of the accelerator.
        gpus_per_node: u32,
    },
    /// No profile of a model can serve one of its buckets within the SLO.
    #[error("models[{index}] ({model:?}): bucket {bucket:?} has capacity 0 on every accelerator")]
    UnservableBucket {
        /// Index of the model.
        index: usize,
        /// Model name.
        model: String,
        /// The bucket.
        bucket: String,
    },
}

impl CostPolicy {
    /// Parses YAML and validates it.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let policy: CostPolicy =
            serde_yaml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// The JSON schema of the YAML format, for editors.
    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(CostPolicy);
        let mut text = serde_json::to_string_pretty(&schema).expect("schema serialises");
        text.push('\n');
        text
    }

    /// Checks cross references and numeric ranges; the first problem found is returned.
    pub fn validate(&self) -> Result<(), PolicyError> {
        finite_at_least(&"headroom", self.headroom, 1.0, "must be a number ≥ 1")?;
        finite_at_least(
            &"churnPenalty.perInstanceStarted",
            self.churn_penalty.per_instance_started,
            0.0,
            "must be a number ≥ 0",
        )?;
        finite_at_least(
            &"churnPenalty.perInstanceStopped",
            self.churn_penalty.per_instance_stopped,
            0.0,
            "must be a number ≥ 0",
        )?;

        let mut accelerators = BTreeMap::new();
        for (i, a) in self.accelerators.iter().enumerate() {
            if accelerators.insert(a.name.as_str(), a).is_some() {
                return Err(PolicyError::Duplicate {
                    field: format!("accelerators[{i}].name"),
                    kind: "accelerator",
                    name: a.name.clone(),
                });
            }
            finite_at_least(
                &format_args!("accelerators[{i}].pricePerHour"),
                a.price_per_hour,
                0.0,
                "price must be a number ≥ 0",
            )?;
            if a.gpus_per_node == 0 {
                return Err(PolicyError::OutOfRange {
                    field: format!("accelerators[{i}].gpusPerNode"),
                    value: 0.0,
                    expected: "must be ≥ 1",
                });
            }
        }

        let mut models = BTreeSet::new();
        for (m, model) in self.models.iter().enumerate() {
            if !models.insert(model.name.as_str()) {
                return Err(PolicyError::Duplicate {
                    field: format!("models[{m}].name"),
                    kind: "model",
                    name: model.name.clone(),
                });
            }
            let mut buckets = BTreeSet::new();
            for (b, bucket) in model.buckets.iter().enumerate() {
                if !buckets.insert(bucket.as_str()) {
                    return Err(PolicyError::Duplicate {
                        field: format!("models[{m}].buckets[{b}]"),
                        kind: "bucket",
                        name: bucket.clone(),
                    });
                }
            }
            if model.profiles.is_empty() {
                return Err(PolicyError::MissingProfile {
                    index: m,
                    model: model.name.clone(),
                });
            }
            let mut used = BTreeSet::new();
            for (p, profile) in model.profiles.iter().enumerate() {
                let field = format!("models[{m}].profiles[{p}]");
                let Some(accel) = accelerators.get(profile.accelerator.as_str()) else {
                    return Err(PolicyError::UnknownAccelerator {
                        field: format!("{field}.accelerator"),
                        name: profile.accelerator.clone(),
                        known: self.accelerators.iter().map(|a| a.name.clone()).collect(),
                    });
                };
                if !used.insert(profile.accelerator.as_str()) {
                    return Err(PolicyError::Duplicate {
                        field: format!("{field}.accelerator"),
                        kind: "profile accelerator",
                        name: profile.accelerator.clone(),
                    });
                }
                validate_shape(&field, profile, accel)?;
                if let Some(max) = profile.max_instances {
                    if max < profile.min_instances {
                        return Err(PolicyError::OutOfRange {
                            field: format!("{field}.maxInstances"),
                            value: f64::from(max),
                            expected: "must be ≥ minInstances",
                        });
                    }
                }
                validate_capacity(&field, model, profile)?;
            }
            for bucket in &model.buckets {
                let servable = model.profiles.iter().any(|p| {
                    p.bucket_capacity
                        .as_ref()
                        .and_then(|c| c.get(bucket))
                        .is_some_and(|&c| c > 0.0)
                });
                if !servable {
                    return Err(PolicyError::UnservableBucket {
                        index: m,
                        model: model.name.clone(),
                        bucket: bucket.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn finite_at_least(
    field: &dyn std::fmt::Display,
    value: f64,
    min: f64,
    expected: &'static str,
) -> Result<(), PolicyError> {
    if value.is_finite() && value >= min {
        Ok(())
    } else {
        Err(PolicyError::OutOfRange {
            field: field.to_string(),
            value,
            expected,
        })
    }
}

fn validate_shape(
    field: &str,
    profile: &InstanceProfile,
    accel: &AcceleratorType,
) -> Result<(), PolicyError> {
    let g = profile.gpus_per_instance;
    let node = accel.gpus_per_node;
    // A tensor-parallel group that straddles a node boundary pays for inter-node bandwidth on
    // every layer; we only allow shapes that pack nodes exactly.
    if g == 0 || !(node.is_multiple_of(g) || g.is_multiple_of(node)) {
        return Err(PolicyError::ShapeDoesNotFitNodes {
            field: format!("{field}.gpusPerInstance"),
            gpus_per_instance: g,
            gpus_per_node: node,
        });
    }
    if let Some(available) = accel.available_gpus {
        if profile.min_instances.saturating_mul(g) > available {
            return Err(PolicyError::OutOfRange {
                field: format!("{field}.minInstances"),
                value: f64::from(profile.min_instances),
                expected: "minInstances × gpusPerInstance exceeds the accelerator's availableGpus",
            });
        }
    }
    Ok(())
}

fn validate_capacity(
    field: &str,
    model: &ModelProfile,
    profile: &InstanceProfile,
) -> Result<(), PolicyError> {
    match (
        &profile.capacity,
        &profile.bucket_capacity,
        model.buckets.is_empty(),
    ) {
        (Some(c), None, true) => finite_at_least(
            &format_args!("{field}.capacity"),
            *c,
            f64::MIN_POSITIVE,
            "capacity must be a number > 0",
        ),
        (None, Some(per_bucket), false) => {
            for (bucket, &c) in per_bucket {
                if !model.buckets.contains(bucket) {
                    return Err(PolicyError::Capacity {
                        field: format!("{field}.bucketCapacity.{bucket}"),
                        problem: format!(
                            "unknown bucket {bucket:?} (model declares {:?})",
                            model.buckets
                        ),
                    });
                }
                finite_at_least(
                    &format_args!("{field}.bucketCapacity.{bucket}"),
                    c,
                    0.0,
                    "capacity must be a number ≥ 0 (0: cannot meet the SLO)",
                )?;
            }
            if let Some(missing) = model.buckets.iter().find(|b| !per_bucket.contains_key(*b)) {
                return Err(PolicyError::Capacity {
                    field: format!("{field}.bucketCapacity"),
                    problem: format!("missing capacity for bucket {missing:?} (write 0 if this accelerator cannot serve it)"),
                });
            }
            Ok(())
        }
        (_, _, true) => Err(PolicyError::Capacity {
            field: field.to_string(),
            problem: "the model declares no buckets: set capacity and not bucketCapacity".into(),
        }),
        (_, _, false) => Err(PolicyError::Capacity {
            field: field.to_string(),
            problem: format!(
                "the model declares buckets {:?}: set bucketCapacity and not capacity",
                model.buckets
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/cost-policy.yaml");

    fn minimal() -> String {
        r#"
accelerators:
  - { name: l4, pricePerHour: 0.8, gpusPerNode: 8, availableGpus: 16 }
  - { name: h100, pricePerHour: 4.0, gpusPerNode: 8 }
models:
  - name: llama
    profiles:
      - { accelerator: l4, gpusPerInstance: 1, capacity: 2.0 }
      - { accelerator: h100, gpusPerInstance: 1, capacity: 12.0 }
"#
        .to_string()
    }

    fn err(text: &str) -> String {
        CostPolicy::from_yaml(text).unwrap_err().to_string()
    }

    #[test]
    fn example_policy_parses_with_buckets_and_defaults() {
        let p = CostPolicy::from_yaml(EXAMPLE).expect("example policy is valid");
        assert!(p.accelerators.len() >= 3);
        assert!(p.models.iter().any(|m| !m.buckets.is_empty()));
        let m = CostPolicy::from_yaml(&minimal()).unwrap();
        assert_eq!(m.headroom, 1.25);
        assert_eq!(m.churn_penalty, ChurnPenalty::default());
    }

    #[test]
    fn negative_price_names_field_and_value() {
        let e = err(&minimal().replace("pricePerHour: 4.0", "pricePerHour: -4.0"));
        assert!(e.contains("accelerators[1].pricePerHour = -4"), "{e}");
    }

    #[test]
    fn unknown_accelerator_names_field_value_and_known_types() {
        let e = err(&minimal().replace("accelerator: h100", "accelerator: h200"));
        assert!(
            e.contains("models[0].profiles[1].accelerator = \"h200\""),
            "{e}"
        );
        assert!(e.contains("\"l4\", \"h100\""), "{e}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = err(&minimal().replace("name: h100", "name: l4"));
        assert!(
            e.contains("accelerators[1].name: duplicate accelerator name \"l4\""),
            "{e}"
        );
        let two = format!(
            "{}  - name: llama\n    profiles:\n      - {{ accelerator: l4, gpusPerInstance: 1, capacity: 1 }}\n",
            minimal()
        );
        assert!(
            err(&two).contains("models[1].name: duplicate model name"),
            "{}",
            err(&two)
        );
    }

    #[test]
    fn missing_profile_is_rejected() {
        let text = format!("{}  - name: empty\n    profiles: []\n", minimal());
        let e = err(&text);
        assert!(e.contains("models[1] (\"empty\"): missing profile"), "{e}");
    }

    #[test]
    fn typo_in_field_is_a_syntax_error_naming_it() {
        let e = err(&minimal().replace("pricePerHour: 0.8", "pricePerHuor: 0.8"));
        assert!(e.contains("unknown field `pricePerHuor`"), "{e}");
    }

    #[test]
    fn bucket_capacity_must_cover_declared_buckets() {
        let text = r#"
accelerators: [ { name: l4, pricePerHour: 1, gpusPerNode: 8 } ]
models:
  - name: m
    buckets: [short, long]
    profiles:
      - { accelerator: l4, gpusPerInstance: 1, bucketCapacity: { short: 3 } }
"#;
        let e = err(text);
        assert!(
            e.contains(
                "models[0].profiles[0].bucketCapacity: missing capacity for bucket \"long\""
            ),
            "{e}"
        );
        let e = err(&text.replace("{ short: 3 }", "{ short: 3, long: 0 }"));
        assert!(
            e.contains("bucket \"long\" has capacity 0 on every accelerator"),
            "{e}"
        );
        let e = err(&text.replace("bucketCapacity: { short: 3 }", "capacity: 3"));
        assert!(e.contains("set bucketCapacity and not capacity"), "{e}");
    }

    #[test]
    fn instance_shape_must_pack_nodes() {
        let e = err(&minimal().replace(
            "gpusPerInstance: 1, capacity: 2.0",
            "gpusPerInstance: 3, capacity: 2.0",
        ));
        assert!(
            e.contains("models[0].profiles[0].gpusPerInstance = 3"),
            "{e}"
        );
        // 16 GPUs = two whole nodes of 8 is fine.
        assert!(CostPolicy::from_yaml(&minimal().replace(
            "gpusPerInstance: 1, capacity: 12.0",
            "gpusPerInstance: 16, capacity: 12.0"
        ))
        .is_ok());
    }

    #[test]
    fn headroom_below_one_is_rejected() {
        let e = err(&format!("{}headroom: 0.8\n", minimal()));
        assert!(e.contains("headroom = 0.8: must be a number ≥ 1"), "{e}");
    }

    /// The committed schema must match the types; run with `MUSTER_BLESS=1` to rewrite it.
    #[test]
    fn committed_json_schema_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/cost-policy.schema.json");
        let fresh = CostPolicy::json_schema();
        if std::env::var_os("MUSTER_BLESS").is_some() {
            std::fs::write(path, &fresh).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == fresh,
            "{path} is stale: rerun `MUSTER_BLESS=1 cargo test -p muster-solver committed_json_schema_is_current`"
        );
        assert!(fresh.contains("\"pricePerHour\""));
    }
}
