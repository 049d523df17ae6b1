//! Network-topology tiers of ServingGroups: which `networkTopology` a group's PodGroup carries
//! for the whole group and for each role instance, and why (pure; issue 8).
//!
//! - **Automatic choice.** Scopes without a user bound get the lowest HyperNode tier whose
//!   HyperNodes can hold them ([`muster_topology::tier_choice::choose`]), judged on
//!   *allocatable* capacity: the answer depends on the cluster's shape, not on which GPUs happen
//!   to be free, so it does not flap while groups come and go. Mode `hard` by default; the
//!   ModelServing annotation `topology.muster.dev/tier-choice` selects `soft` or `off`.
//! - **User policies** (`groupPolicy`/`rolePolicy` with a bound) are written unchanged; a hard
//!   bound no HyperNode can meet is written too but reported as infeasible.
//! - **Node-restricted pods.** When a role's pods select nodes (nodeSelector or required node
//!   affinity), the capacity of a HyperNode says nothing about whether those pods may use it, so
//!   no automatic constraint is written (it could confine the gang to nodes it may not use).
//! - **Pinning.** The decision is recorded on the PodGroup (annotation
//!   `topology.muster.dev/tier-decision`) and reused — a restarted controller reproduces it from
//!   the API server alone — until the group's demand or the setting changes, or, for a group
//!   with no pod placed yet, until the topology gives another answer. For a placed group it is
//!   only replaced when an automatic hard bound it carries can no longer be met. Changing a
//!   PodGroup's `networkTopology` never recreates pods; it only affects pods still to be placed.

use muster_api::labels::{TIER_CHOICE, TIER_DECISION};
use muster_api::serving::{ScopeDecision, ServingGroupTemplate, TierDecision};
use muster_api::volcano::{NetworkTopologyMode, NetworkTopologySpec, PodGroup};
use muster_topology::tier_choice::{
    self, Basis, ChoiceOptions, GroupDemand, Outcome, Reason, ScopeChoice, TierChoice,
};
use muster_topology::Topology;

/// The ModelServing's automatic tier-choice setting (annotation [`TIER_CHOICE`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoTier {
    /// Automatic bounds are hard constraints (default: a TP gang across a spine is slow).
    #[default]
    Hard,
    /// Automatic bounds are soft (Volcano prefers them but may place beyond).
    Soft,
    /// No automatic bounds; user policies are still written and checked.
    Off,
}

impl AutoTier {
    /// Reads the annotation value. An unknown value gives the default and a message naming the
    /// annotation, the value and the accepted ones.
    pub fn parse(value: Option<&str>) -> (AutoTier, Option<String>) {
        match value.map(str::trim) {
            None | Some("") | Some("hard") => (AutoTier::Hard, None),
            Some("soft") => (AutoTier::Soft, None),
            Some("off") => (AutoTier::Off, None),
            Some(other) => (
                AutoTier::Hard,
                Some(format!(
                    "annotation {TIER_CHOICE}={other:?} is not one of hard, soft, off; using hard"
                )),
            ),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            AutoTier::Hard => "hard",
            AutoTier::Soft => "soft",
            AutoTier::Off => "off",
        }
    }
}

/// A freshly computed decision, with what is needed to judge whether a pinned one still holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Fresh {
    /// The decision.
    pub decision: TierDecision,
    /// Per scope (group first, then roles in template order): lowest tier that can hold it.
    lowest_feasible: Vec<(String, Option<i32>)>,
}

/// Roles whose entry or worker pods restrict the nodes they may use.
fn node_restricted_roles(template: &ServingGroupTemplate) -> Vec<String> {
    template
        .roles
        .iter()
        .filter(|r| {
            std::iter::once(&r.entry_template)
                .chain(r.worker_template.as_ref().filter(|_| r.worker_replicas > 0))
                .any(|t| {
                    let selects = t.spec.node_selector.as_ref().is_some_and(|s| !s.is_empty());
                    let affinity = t
                        .spec
                        .affinity
                        .as_ref()
                        .and_then(|a| a.node_affinity.as_ref())
                        .and_then(|n| {
                            n.required_during_scheduling_ignored_during_execution
                                .as_ref()
                        })
                        .is_some();
                    selects || affinity
                })
        })
        .map(|r| r.name.clone())
        .collect()
}

/// Fingerprint of everything a decision depends on except the topology.
fn fingerprint(demand: &GroupDemand, setting: AutoTier, restricted: &[String]) -> String {
    let mut s = format!("v1;{};{restricted:?};", setting.as_str());
    let spec = |p: &Option<NetworkTopologySpec>| serde_json::to_string(p).expect("specs serialise");
    s.push_str(&spec(&demand.policy));
    for r in &demand.roles {
        s.push_str(&format!(
            ";{}:{}x{}:{}/{}/{}:{}",
            r.name,
            r.instances,
            r.pods_per_instance,
            r.per_pod.gpu,
            r.per_pod.cpu_milli,
            r.per_pod.memory,
            spec(&r.policy)
        ));
    }
    format!(
        "{:016x}",
        xxhash_rust::xxh64::xxh64(s.as_bytes(), 0x7469_6572)
    )
}

/// True when the scope had no user bound (the tier, if any, is Muster's).
fn is_automatic(c: &ScopeChoice) -> bool {
    matches!(
        c.explanation.reason,
        Reason::LowestFeasibleTier | Reason::NothingHolds | Reason::NoHyperNodes
    )
}

fn scope_decision(
    scope: &str,
    choice: &ScopeChoice,
    user: Option<&NetworkTopologySpec>,
    setting: AutoTier,
    restricted: &[String],
) -> ScopeDecision {
    let explanation = choice.explanation.to_string();
    let automatic = is_automatic(choice);
    if automatic && setting == AutoTier::Off {
        return ScopeDecision {
            scope: scope.to_string(),
            network_topology: user.cloned(),
            automatic: false,
            infeasible: false,
            message: format!(
                "automatic tier choice is off ({TIER_CHOICE}=off); would have been: {explanation}"
            ),
        };
    }
    if automatic && !restricted.is_empty() {
        return ScopeDecision {
            scope: scope.to_string(),
            network_topology: user.cloned(),
            automatic: false,
            infeasible: false,
            message: format!(
                "no automatic tier: pods of role(s) {} select nodes (nodeSelector or required node \
                 affinity), which HyperNode capacity cannot account for; set networkTopology to \
                 constrain them ({explanation})",
                restricted.join(", ")
            ),
        };
    }
    ScopeDecision {
        scope: scope.to_string(),
        network_topology: choice.outcome.network_topology(),
        automatic,
        infeasible: matches!(choice.outcome, Outcome::Infeasible { .. }),
        message: explanation,
    }
}

/// The decision for a group of `template` on `topology`.
pub fn decide(template: &ServingGroupTemplate, setting: AutoTier, topology: &Topology) -> Fresh {
    let demand = GroupDemand::from_template(template);
    let restricted = node_restricted_roles(template);
    let opts = ChoiceOptions {
        basis: Basis::Allocatable,
        auto_mode: match setting {
            AutoTier::Soft => NetworkTopologyMode::Soft,
            AutoTier::Hard | AutoTier::Off => NetworkTopologyMode::Hard,
        },
    };
    let choice: TierChoice = tier_choice::choose(topology, &demand, opts);
    let group = scope_decision(
        "group",
        &choice.group,
        demand.policy.as_ref(),
        setting,
        &restricted,
    );
    let roles = choice
        .roles
        .iter()
        .zip(&demand.roles)
        .map(|(c, d)| {
            scope_decision(
                &c.role,
                &c.instance,
                d.policy.as_ref(),
                setting,
                &restricted,
            )
        })
        .collect();
    let lowest_feasible = std::iter::once(("group".to_string(), &choice.group))
        .chain(choice.roles.iter().map(|r| (r.role.clone(), &r.instance)))
        .map(|(s, c)| (s, c.explanation.lowest_feasible_tier))
        .collect();
    Fresh {
        decision: TierDecision {
            demand: fingerprint(&demand, setting, &restricted),
            group,
            roles,
        },
        lowest_feasible,
    }
}

/// The user's policies as they are, for when the topology is not known (yet): nothing is
/// chosen and nothing is pinned.
pub fn passthrough(template: &ServingGroupTemplate) -> TierDecision {
    let nt = template.network_topology.clone().unwrap_or_default();
    let message =
        "HyperNodes and Nodes not listed yet: user policy written as given, no automatic tier";
    let scope = |name: &str, spec: Option<NetworkTopologySpec>| ScopeDecision {
        scope: name.to_string(),
        network_topology: spec,
        automatic: false,
        infeasible: false,
        message: message.to_string(),
    };
    TierDecision {
        demand: String::new(),
        group: scope("group", nt.group_policy.clone()),
        roles: template
            .roles
            .iter()
            .map(|r| scope(&r.name, nt.role_policy.clone()))
            .collect(),
    }
}

/// The decision recorded on a PodGroup, if any (an unreadable one counts as none).
pub fn pinned(pg: &PodGroup) -> Option<TierDecision> {
    let raw = pg.metadata.annotations.as_ref()?.get(TIER_DECISION)?;
    serde_json::from_str(raw).ok()
}

/// Whether a pinned decision's automatic hard bounds can all still be met.
fn still_holds(pinned: &TierDecision, fresh: &Fresh) -> bool {
    std::iter::once(&pinned.group)
        .chain(&pinned.roles)
        .filter(|s| s.automatic)
        .all(|s| {
            let Some(spec) = &s.network_topology else {
                return true;
            };
            let (NetworkTopologyMode::Hard, Some(bound)) = (spec.mode, spec.highest_tier_allowed)
            else {
                return true;
            };
            fresh
                .lowest_feasible
                .iter()
                .find(|(name, _)| *name == s.scope)
                .and_then(|(_, low)| *low)
                .is_some_and(|low| low <= bound)
        })
}

/// Why the planner did (not) take a new decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The pinned decision stays.
    Kept,
    /// No decision was pinned: this is the first.
    First,
    /// The group's demand or the setting changed.
    DemandChanged,
    /// Nothing of the group is placed yet and the topology now gives another answer.
    Replanned,
    /// A pinned automatic hard bound can no longer be met.
    NoLongerFeasible,
    /// The topology is not known: the user's policies pass through, nothing is pinned.
    Unknown,
}

/// The decision to write for a group: `fresh` is `None` when the topology is not known;
/// `placed` tells whether any pod of the group is bound to a node.
pub fn resolve(
    template: &ServingGroupTemplate,
    fresh: Option<&Fresh>,
    pinned: Option<TierDecision>,
    placed: bool,
) -> (TierDecision, Resolution) {
    let Some(fresh) = fresh else {
        return match pinned {
            Some(p) => (p, Resolution::Kept),
            None => (passthrough(template), Resolution::Unknown),
        };
    };
    let Some(pinned) = pinned else {
        return (fresh.decision.clone(), Resolution::First);
    };
    if pinned.demand != fresh.decision.demand {
        return (fresh.decision.clone(), Resolution::DemandChanged);
    }
    if !placed {
        return if pinned == fresh.decision {
            (pinned, Resolution::Kept)
        } else {
            (fresh.decision.clone(), Resolution::Replanned)
        };
    }
    if still_holds(&pinned, fresh) {
        (pinned, Resolution::Kept)
    } else {
        (fresh.decision.clone(), Resolution::NoLongerFeasible)
    }
}

/// Writes a decision into a desired PodGroup: group and per-role `networkTopology`, and (with
/// `pin`) the decision annotation.
pub fn apply(decision: &TierDecision, pg: &mut PodGroup, pin: bool) {
    pg.spec.network_topology = decision.group.network_topology.clone();
    for sg in pg.spec.sub_group_policy.iter_mut().flatten() {
        if let Some(d) = decision
            .roles
            .iter()
            .find(|d| Some(&d.scope) == sg.name.as_ref())
        {
            sg.network_topology = d.network_topology.clone();
        }
    }
    if pin {
        pg.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                TIER_DECISION.to_string(),
                serde_json::to_string(decision).expect("decisions serialise"),
            );
    }
}

/// One line summarising a decision for an Event: the tier of each scope, then why.
pub fn summary(decision: &TierDecision) -> String {
    let tier = |s: &ScopeDecision| match &s.network_topology {
        None => "unconstrained".to_string(),
        Some(nt) => {
            let mode = match nt.mode {
                NetworkTopologyMode::Hard => "hard",
                NetworkTopologyMode::Soft => "soft",
            };
            match (&nt.highest_tier_allowed, &nt.highest_tier_name) {
                (Some(t), _) => format!("{mode} tier {t}"),
                (None, Some(n)) => format!("{mode} tier {n:?}"),
                (None, None) => format!("{mode}, no bound"),
            }
        }
    };
    let mut out = format!("group {}", tier(&decision.group));
    for r in &decision.roles {
        out.push_str(&format!(", role {} instances {}", r.scope, tier(r)));
    }
    let why: Vec<&str> = std::iter::once(&decision.group)
        .chain(&decision.roles)
        .map(|s| s.message.as_str())
        .collect();
    format!("{out}. {}", why.join(" | "))
}

/// True when any scope of the decision is infeasible.
pub fn infeasible(decision: &TierDecision) -> bool {
    decision.group.infeasible || decision.roles.iter().any(|r| r.infeasible)
}

#[cfg(test)]
#[path = "tier_tests.rs"]
mod tests;
