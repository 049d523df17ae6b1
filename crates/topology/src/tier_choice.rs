//! Tier choice: the lowest HyperNode tier that can hold a ServingGroup, per role instance and for
//! the whole group, turned into Volcano `networkTopology` constraints with an explanation.
//!
//! Rules (also in README.md):
//! - A HyperNode *holds* a set of pods when, for every pod shape, the pods that fit on its nodes
//!   one by one (per-node floor division over GPUs, and CPU/memory when requested) are at least
//!   the pods needed, and the summed demand fits its summed resources. For one shape this is
//!   exact; for several shapes it is a necessary condition (Volcano does the real packing).
//! - Without a user policy: the lowest tier with a HyperNode that holds the demand, emitted as
//!   `mode: <auto mode>, highestTierAllowed: <tier>`. If none holds it, no constraint is emitted
//!   and the outcome says so (a hard constraint nobody can meet would only leave pods Pending).
//! - With a user bound (`highestTierAllowed` or `highestTierName`): the user's spec is emitted
//!   unchanged, never loosened. A hard bound below the lowest feasible tier, or a tier name no
//!   HyperNode carries, is reported as [`Outcome::Infeasible`].
//! - A user spec with a mode but no bound (Volcano: no boundary) gets an automatic bound in the
//!   user's mode.

use std::collections::BTreeMap;
use std::fmt;

use muster_api::volcano::{NetworkTopologyMode, NetworkTopologySpec};
use serde::Serialize;

use muster_api::serving::ServingGroupTemplate;

use crate::capacity::{pod_spec_requests, Resources};
use crate::graph::Topology;

/// Which node resources count when deciding whether a HyperNode can hold a demand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Basis {
    /// Allocatable minus requests of bound pods (what could be scheduled now).
    #[default]
    Free,
    /// Allocatable only (what could ever be scheduled on an empty cluster).
    Allocatable,
}

/// Knobs of the automatic choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChoiceOptions {
    /// Resources considered.
    pub basis: Basis,
    /// Mode of automatically chosen constraints (default hard: TP across a spine is slow).
    pub auto_mode: NetworkTopologyMode,
}

/// Demand of one role of a ServingGroup.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleDemand {
    /// Role name (e.g. `prefill`).
    pub name: String,
    /// Role instances (replicas of the role).
    pub instances: u32,
    /// Pods per instance (entry + workers).
    pub pods_per_instance: u32,
    /// Requests of one pod; zero CPU/memory means "not considered".
    pub per_pod: Resources,
    /// The user's `networkTopology` for this role, if any.
    pub policy: Option<NetworkTopologySpec>,
}

/// Demand of one ServingGroup.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GroupDemand {
    /// Its roles.
    pub roles: Vec<RoleDemand>,
    /// The user's group-level `networkTopology`, if any.
    pub policy: Option<NetworkTopologySpec>,
}

impl GroupDemand {
    /// The demand of one ServingGroup of a ModelServing template: per role, `replicas`
    /// instances of `1 + workerReplicas` pods. When entry and worker pods differ, each pod is
    /// counted at the larger of the two per resource (conservative: it may choose a higher tier,
    /// never an unsatisfiable one). The template's `groupPolicy` is the group's user policy and
    /// its `rolePolicy` applies to every role's instances.
    pub fn from_template(template: &ServingGroupTemplate) -> Self {
        let nt = template.network_topology.clone().unwrap_or_default();
        let roles = template
            .roles
            .iter()
            .map(|r| {
                let entry = pod_spec_requests(&r.entry_template.spec);
                let worker = r
                    .worker_template
                    .as_ref()
                    .filter(|_| r.worker_replicas > 0)
                    .map(|w| pod_spec_requests(&w.spec))
                    .unwrap_or(entry);
                RoleDemand {
                    name: r.name.clone(),
                    instances: r.replicas.max(0) as u32,
                    pods_per_instance: 1 + r.worker_replicas.max(0) as u32,
                    per_pod: Resources {
                        gpu: entry.gpu.max(worker.gpu),
                        cpu_milli: entry.cpu_milli.max(worker.cpu_milli),
                        memory: entry.memory.max(worker.memory),
                    },
                    policy: nt.role_policy.clone(),
                }
            })
            .collect();
        GroupDemand {
            roles,
            policy: nt.group_policy,
        }
    }
}

/// What to put in the PodGroup for one scope.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Outcome {
    /// Emit this constraint.
    Constrained {
        /// The spec to emit.
        spec: NetworkTopologySpec,
    },
    /// Emit no constraint.
    Unconstrained,
    /// The user's hard constraint cannot be met now. It is still the spec to emit (Muster never
    /// loosens a user's hard constraint), but the controller must report it.
    Infeasible {
        /// The user's spec.
        requested: NetworkTopologySpec,
    },
}

impl Outcome {
    /// The `networkTopology` to write, if any.
    pub fn network_topology(&self) -> Option<NetworkTopologySpec> {
        match self {
            Outcome::Constrained { spec } => Some(spec.clone()),
            Outcome::Unconstrained => None,
            Outcome::Infeasible { requested } => Some(requested.clone()),
        }
    }
}

/// Why a tier was (or was not) chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Reason {
    /// Automatic: the lowest tier with a HyperNode that holds the demand.
    LowestFeasibleTier,
    /// There are no HyperNodes at all.
    NoHyperNodes,
    /// No HyperNode holds the demand.
    NothingHolds,
    /// The user's hard bound is met by the lowest feasible tier.
    UserHard {
        /// The user's bound.
        bound: i32,
    },
    /// The user's hard bound is below every tier that can hold the demand.
    UserHardUnsatisfiable {
        /// The user's bound.
        bound: i32,
    },
    /// The user's soft bound is kept as given.
    UserSoft {
        /// The user's bound.
        bound: i32,
    },
    /// The user's `highestTierName` names no HyperNode's `tierName`.
    UnknownTierName {
        /// The name.
        name: String,
    },
}

/// HyperNodes of one tier that were considered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierCandidates {
    /// The tier.
    pub tier: i32,
    /// HyperNodes of this tier.
    pub considered: usize,
    /// How many of them hold the demand.
    pub holding: usize,
    /// Up to three that do, by name.
    pub examples: Vec<String>,
    /// Largest GPU amount (by the basis) of any HyperNode of this tier.
    pub max_gpus: i64,
}

/// Explanation of one scope's choice, for ModelServing status and Events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `group` or `role <name>`.
    pub scope: String,
    /// Pods in the scope.
    pub pods: i64,
    /// GPUs the scope needs in total.
    pub gpus: i64,
    /// Resources considered.
    pub basis: Basis,
    /// Tier bound emitted (None when unconstrained or bounded by an unknown name).
    pub chosen_tier: Option<i32>,
    /// Lowest tier with a HyperNode that holds the demand.
    pub lowest_feasible_tier: Option<i32>,
    /// Why.
    pub reason: Reason,
    /// Per tier, lowest first.
    pub candidates: Vec<TierCandidates>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} pods / {} GPUs: ",
            self.scope, self.pods, self.gpus
        )?;
        let low = self
            .lowest_feasible_tier
            .map_or("none".to_string(), |t| t.to_string());
        match &self.reason {
            Reason::LowestFeasibleTier => write!(
                f,
                "tier {} is the lowest tier with a HyperNode that holds it",
                self.chosen_tier.unwrap_or_default()
            )?,
            Reason::NoHyperNodes => write!(f, "no HyperNodes exist, no topology constraint")?,
            Reason::NothingHolds => write!(
                f,
                "no HyperNode holds it ({:?} basis), no topology constraint",
                self.basis
            )?,
            Reason::UserHard { bound } => write!(
                f,
                "user hard bound tier {bound} kept; lowest feasible tier is {low}"
            )?,
            Reason::UserHardUnsatisfiable { bound } => write!(
                f,
                "INFEASIBLE: user hard bound tier {bound} but the lowest tier that can hold it is {low}"
            )?,
            Reason::UserSoft { bound } => write!(
                f,
                "user soft bound tier {bound} kept; lowest feasible tier is {low}"
            )?,
            Reason::UnknownTierName { name } => write!(
                f,
                "INFEASIBLE: highestTierName {name:?} matches no HyperNode tierName"
            )?,
        }
        for c in &self.candidates {
            write!(
                f,
                "; tier {}: {}/{} hold it (max {} GPUs)",
                c.tier, c.holding, c.considered, c.max_gpus
            )?;
        }
        Ok(())
    }
}

/// The choice for one scope.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeChoice {
    /// What to emit.
    pub outcome: Outcome,
    /// Why.
    pub explanation: Explanation,
}

/// The choice for one role.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleChoice {
    /// Role name.
    pub role: String,
    /// For one role instance: goes to `subGroupPolicy[].networkTopology`.
    pub instance: ScopeChoice,
    /// Lowest tier whose HyperNodes hold all instances of the role together (informational).
    pub whole_role_lowest_tier: Option<i32>,
}

/// The full choice for a ServingGroup.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierChoice {
    /// Goes to the PodGroup's `networkTopology`.
    pub group: ScopeChoice,
    /// One per role, in the demand's order.
    pub roles: Vec<RoleChoice>,
}

impl TierChoice {
    /// Whether any scope has an unsatisfiable user constraint.
    pub fn infeasible(&self) -> bool {
        std::iter::once(&self.group)
            .chain(self.roles.iter().map(|r| &r.instance))
            .any(|s| matches!(s.outcome, Outcome::Infeasible { .. }))
    }

    /// One line per scope, for Events.
    pub fn messages(&self) -> Vec<String> {
        std::iter::once(&self.group)
            .chain(self.roles.iter().map(|r| &r.instance))
            .map(|s| s.explanation.to_string())
            .collect()
    }
}

/// A count of identical pods.
type Piece = (i64, Resources);

/// Whether HyperNode `hn` holds `pieces` (see module docs for the rule).
pub fn can_hold(t: &Topology, hn: &str, pieces: &[Piece], basis: Basis) -> bool {
    let res = |n: &str| {
        let ns = t.node(n).expect("nodes_under returns known nodes");
        match basis {
            Basis::Free => ns.free(),
            Basis::Allocatable => ns.allocatable,
        }
    };
    let nodes: Vec<Resources> = t.nodes_under(hn).into_iter().map(res).collect();
    let mut total_have = Resources::default();
    for r in &nodes {
        total_have = total_have + *r;
    }
    let mut total_need = Resources::default();
    for (count, shape) in pieces {
        if *count <= 0 {
            continue;
        }
        total_need = total_need + shape.times(*count);
        let fit = nodes
            .iter()
            .fold(0i64, |acc, r| acc.saturating_add(r.fit_count(shape)));
        if fit < *count {
            return false;
        }
    }
    total_have.covers(&total_need)
}

fn resolve_bound(t: &Topology, spec: &NetworkTopologySpec) -> Result<Option<i32>, String> {
    if let Some(b) = spec.highest_tier_allowed {
        return Ok(Some(b));
    }
    let Some(name) = &spec.highest_tier_name else {
        return Ok(None);
    };
    // Several HyperNodes share a tierName; if they disagree on the tier, the highest is the
    // honest reading of "highest tier allowed".
    t.hypernodes()
        .filter(|(_, s)| s.spec.tier_name.as_deref() == Some(name.as_str()))
        .map(|(_, s)| s.tier())
        .max()
        .map(Some)
        .ok_or_else(|| name.clone())
}

/// Choose the constraint for one scope.
pub fn choose_scope(
    t: &Topology,
    scope: &str,
    pieces: &[Piece],
    user: Option<&NetworkTopologySpec>,
    opts: ChoiceOptions,
) -> ScopeChoice {
    let mut per_tier: BTreeMap<i32, TierCandidates> = BTreeMap::new();
    for (name, st) in t.hypernodes() {
        let c = per_tier.entry(st.tier()).or_insert(TierCandidates {
            tier: st.tier(),
            considered: 0,
            holding: 0,
            examples: Vec::new(),
            max_gpus: 0,
        });
        c.considered += 1;
        let gpus = match opts.basis {
            Basis::Free => st.free.gpu,
            Basis::Allocatable => st.allocatable.gpu,
        };
        c.max_gpus = c.max_gpus.max(gpus);
        if can_hold(t, name, pieces, opts.basis) {
            c.holding += 1;
            if c.examples.len() < 3 {
                c.examples.push(name.to_string());
            }
        }
    }
    let lowest = per_tier.values().find(|c| c.holding > 0).map(|c| c.tier);
    let candidates: Vec<TierCandidates> = per_tier.into_values().collect();
    let pods = pieces.iter().map(|p| p.0.max(0)).sum();
    let gpus = pieces.iter().map(|p| p.0.max(0) * p.1.gpu).sum();
    let explain = |chosen_tier, reason| Explanation {
        scope: scope.to_string(),
        pods,
        gpus,
        basis: opts.basis,
        chosen_tier,
        lowest_feasible_tier: lowest,
        reason,
        candidates: candidates.clone(),
    };

    let mut auto_mode = opts.auto_mode;
    if let Some(spec) = user {
        match resolve_bound(t, spec) {
            Err(name) => {
                // A soft preference for an unknown tier cannot hurt scheduling; a hard one
                // leaves pods Pending forever, so it is reported either way but only hard is
                // infeasible.
                let outcome = match spec.mode {
                    NetworkTopologyMode::Hard => Outcome::Infeasible {
                        requested: spec.clone(),
                    },
                    NetworkTopologyMode::Soft => Outcome::Constrained { spec: spec.clone() },
                };
                return ScopeChoice {
                    outcome,
                    explanation: explain(None, Reason::UnknownTierName { name }),
                };
            }
            Ok(Some(bound)) => {
                let (outcome, reason) = match spec.mode {
                    NetworkTopologyMode::Soft => (
                        Outcome::Constrained { spec: spec.clone() },
                        Reason::UserSoft { bound },
                    ),
                    NetworkTopologyMode::Hard if lowest.is_some_and(|l| l <= bound) => (
                        Outcome::Constrained { spec: spec.clone() },
                        Reason::UserHard { bound },
                    ),
                    NetworkTopologyMode::Hard => (
                        Outcome::Infeasible {
                            requested: spec.clone(),
                        },
                        Reason::UserHardUnsatisfiable { bound },
                    ),
                };
                return ScopeChoice {
                    outcome,
                    explanation: explain(Some(bound), reason),
                };
            }
            Ok(None) => auto_mode = spec.mode,
        }
    }
    match lowest {
        Some(tier) => ScopeChoice {
            outcome: Outcome::Constrained {
                spec: NetworkTopologySpec {
                    mode: auto_mode,
                    highest_tier_allowed: Some(tier),
                    highest_tier_name: None,
                },
            },
            explanation: explain(Some(tier), Reason::LowestFeasibleTier),
        },
        None => {
            let reason = if candidates.is_empty() {
                Reason::NoHyperNodes
            } else {
                Reason::NothingHolds
            };
            ScopeChoice {
                outcome: Outcome::Unconstrained,
                explanation: explain(None, reason),
            }
        }
    }
}

/// Lowest tier whose HyperNodes hold `pieces`, without any policy.
pub fn lowest_feasible_tier(t: &Topology, pieces: &[Piece], basis: Basis) -> Option<i32> {
    t.hypernodes()
        .filter(|(n, _)| can_hold(t, n, pieces, basis))
        .map(|(_, s)| s.tier())
        .min()
}

/// Choose the group's and each role's constraint.
pub fn choose(t: &Topology, demand: &GroupDemand, opts: ChoiceOptions) -> TierChoice {
    let group_pieces: Vec<Piece> = demand
        .roles
        .iter()
        .map(|r| {
            (
                i64::from(r.instances) * i64::from(r.pods_per_instance),
                r.per_pod,
            )
        })
        .collect();
    let group = choose_scope(t, "group", &group_pieces, demand.policy.as_ref(), opts);
    let roles = demand
        .roles
        .iter()
        .map(|r| {
            let one = [(i64::from(r.pods_per_instance), r.per_pod)];
            let all = [(
                i64::from(r.instances) * i64::from(r.pods_per_instance),
                r.per_pod,
            )];
            RoleChoice {
                role: r.name.clone(),
                instance: choose_scope(
                    t,
                    &format!("role {}", r.name),
                    &one,
                    r.policy.as_ref(),
                    opts,
                ),
                whole_role_lowest_tier: lowest_feasible_tier(t, &all, opts.basis),
            }
        })
        .collect();
    TierChoice { group, roles }
}
