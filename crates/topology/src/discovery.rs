//! HyperNode discovery from node labels (the pure `plan` of the discovery controller).
//!
//! Like Volcano's `label` discovery source: a list of node label keys, one per tier, lowest
//! tier first. Tier 1 HyperNodes are named after the first label's values and contain the
//! Nodes by exactMatch; tier k HyperNodes are named after the k-th label's values and contain the
//! tier k-1 HyperNodes whose nodes carry that value. Every generated HyperNode is labelled
//! `app.kubernetes.io/managed-by=muster` plus [`DISCOVERY_SOURCE`]`=<source>` (like Volcano's
//! `volcano.sh/network-topology-source`), and the plan never updates or deletes HyperNodes
//! without both labels: several discovery instances with different sources (e.g. tests next to
//! a cluster-wide one) each own only their HyperNodes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use muster_api::labels::{MANAGED_BY, MANAGED_BY_MUSTER};
use muster_api::volcano::{
    ExactMatch, HyperNode, HyperNodeMember, HyperNodeSpec, MemberSelector, MemberType,
};

/// One tier of the discovery configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierLabel {
    /// Node label whose value names this tier's HyperNode.
    pub node_label: String,
    /// `spec.tierName` of the generated HyperNodes.
    pub tier_name: Option<String>,
}

/// Label naming the discovery instance that generated a HyperNode.
pub const DISCOVERY_SOURCE: &str = "topology.muster.dev/discovery-source";

/// The source of the default (cluster-wide) discovery instance.
pub const DEFAULT_SOURCE: &str = "label";

/// Discovery configuration: label keys, lowest tier (tier 1) first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Tiers, lowest first.
    pub tiers: Vec<TierLabel>,
    /// Value of [`DISCOVERY_SOURCE`] on generated HyperNodes; only HyperNodes carrying it are
    /// updated or deleted. Must be a valid label value.
    pub source: String,
}

impl DiscoveryConfig {
    /// The local test cluster's labels: rack (tier 1, `rack`) then spine (tier 2, `spine`).
    pub fn muster_default() -> Self {
        DiscoveryConfig {
            tiers: vec![
                TierLabel {
                    node_label: muster_api::labels::TOPOLOGY_RACK.into(),
                    tier_name: Some("rack".into()),
                },
                TierLabel {
                    node_label: muster_api::labels::TOPOLOGY_SPINE.into(),
                    tier_name: Some("spine".into()),
                },
            ],
            source: DEFAULT_SOURCE.into(),
        }
    }

    /// The labels every generated HyperNode carries (and that mark it as this instance's).
    pub fn owner_labels(&self) -> BTreeMap<String, String> {
        [
            (MANAGED_BY.to_string(), MANAGED_BY_MUSTER.to_string()),
            (DISCOVERY_SOURCE.to_string(), self.source.clone()),
        ]
        .into()
    }

    /// Label selector (`k=v,k=v`) for this instance's HyperNodes.
    pub fn owner_selector(&self) -> String {
        format!(
            "{MANAGED_BY}={MANAGED_BY_MUSTER},{DISCOVERY_SOURCE}={}",
            self.source
        )
    }
}

/// Why part of the tree could not be generated. The rest is still generated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// A node lacks one of the configured labels; it is left out of every HyperNode.
    #[error("Node {node:?} has no label {label:?}; it is left out of discovered HyperNodes")]
    MissingLabel {
        /// The node.
        node: String,
        /// The missing label key.
        label: String,
    },
    /// A label value cannot be a HyperNode name (DNS-1123 subdomain).
    #[error("label {label}={value:?} on Node {node:?} is not a valid HyperNode name")]
    BadName {
        /// The node.
        node: String,
        /// The label key.
        label: String,
        /// The value.
        value: String,
    },
    /// The same value names HyperNodes of two tiers.
    #[error("value {name:?} names HyperNodes of tiers {tiers:?}; only the lowest is generated")]
    NameClash {
        /// The name.
        name: String,
        /// Tiers claiming it.
        tiers: Vec<i32>,
    },
    /// Nodes of one lower-tier HyperNode disagree about the HyperNode above it.
    #[error("HyperNode {child:?} has nodes under different {label} values {parents:?}; it is put under {chosen:?}")]
    InconsistentParent {
        /// The lower-tier HyperNode.
        child: String,
        /// The label key of the upper tier.
        label: String,
        /// The values seen.
        parents: Vec<String>,
        /// The one used (the first).
        chosen: String,
    },
    /// A HyperNode Muster wants to generate exists and is not this instance's.
    #[error(
        "HyperNode {name:?} exists and is not managed by this discovery instance; left untouched"
    )]
    NotOurs {
        /// The name.
        name: String,
    },
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn exact(kind: MemberType, name: &str) -> HyperNodeMember {
    HyperNodeMember {
        type_: kind,
        selector: Some(MemberSelector {
            exact_match: Some(ExactMatch { name: name.into() }),
            ..Default::default()
        }),
    }
}

/// The HyperNodes the node labels call for, sorted by name, plus problems found.
pub fn desired(nodes: &[Node], cfg: &DiscoveryConfig) -> (Vec<HyperNode>, Vec<DiscoveryError>) {
    let mut errs = Vec::new();
    // Per node: its value at every tier, or skipped.
    let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
    'nodes: for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let mut path = Vec::new();
        for t in &cfg.tiers {
            match labels.get(&t.node_label) {
                None => {
                    errs.push(DiscoveryError::MissingLabel {
                        node: name.clone(),
                        label: t.node_label.clone(),
                    });
                    continue 'nodes;
                }
                Some(v) if !valid_name(v) => {
                    errs.push(DiscoveryError::BadName {
                        node: name.clone(),
                        label: t.node_label.clone(),
                        value: v.clone(),
                    });
                    continue 'nodes;
                }
                Some(v) => path.push(v.clone()),
            }
        }
        paths.insert(name, path);
    }

    // name -> (tier index, members)
    let mut out: BTreeMap<String, (usize, BTreeSet<(u8, String)>)> = BTreeMap::new();
    let mut clashes: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (ti, t) in cfg.tiers.iter().enumerate() {
        // child -> parent values seen (for tiers above 1)
        let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (node, path) in &paths {
            let value = &path[ti];
            if ti == 0 {
                parents
                    .entry(node.clone())
                    .or_default()
                    .insert(value.clone());
            } else {
                parents
                    .entry(path[ti - 1].clone())
                    .or_default()
                    .insert(value.clone());
            }
        }
        for (child, vals) in parents {
            if ti > 0 && out.get(&child).is_none_or(|(cti, _)| *cti != ti - 1) {
                continue; // the child lost a name clash; nothing to attach
            }
            let chosen = vals.iter().next().cloned().expect("non-empty set");
            if vals.len() > 1 {
                errs.push(DiscoveryError::InconsistentParent {
                    child: child.clone(),
                    label: t.node_label.clone(),
                    parents: vals.iter().cloned().collect(),
                    chosen: chosen.clone(),
                });
            }
            if let Some((oti, _)) = out.get(&chosen) {
                if *oti != ti {
                    let e = clashes.entry(chosen.clone()).or_default();
                    e.insert(*oti as i32 + 1);
                    e.insert(ti as i32 + 1);
                    continue;
                }
            }
            let kind = if ti == 0 { 0 } else { 1 };
            out.entry(chosen)
                .or_insert_with(|| (ti, BTreeSet::new()))
                .1
                .insert((kind, child));
        }
    }
    for (name, tiers) in clashes {
        errs.push(DiscoveryError::NameClash {
            name,
            tiers: tiers.into_iter().collect(),
        });
    }

    let hns = out
        .into_iter()
        .map(|(name, (ti, members))| {
            let mut h = HyperNode::new(
                &name,
                HyperNodeSpec {
                    tier: ti as i32 + 1,
                    tier_name: cfg.tiers[ti].tier_name.clone(),
                    members: members
                        .into_iter()
                        .map(|(k, m)| {
                            let kind = if k == 0 {
                                MemberType::Node
                            } else {
                                MemberType::HyperNode
                            };
                            exact(kind, &m)
                        })
                        .collect(),
                },
            );
            h.metadata.labels = Some(cfg.owner_labels());
            h
        })
        .collect();
    (hns, errs)
}

/// What the discovery controller should do.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryPlan {
    /// HyperNodes to create or update (server-side apply).
    pub apply: Vec<HyperNode>,
    /// Muster-managed HyperNodes no longer called for.
    pub delete: Vec<String>,
    /// Problems to report (Events / logs).
    pub errors: Vec<DiscoveryError>,
}

/// Whether `h` was generated by the discovery instance configured by `cfg`.
pub fn is_ours(h: &HyperNode, cfg: &DiscoveryConfig) -> bool {
    let labels = h.metadata.labels.as_ref();
    let has = |k: &str, v: &str| labels.and_then(|l| l.get(k)).is_some_and(|x| x == v);
    has(MANAGED_BY, MANAGED_BY_MUSTER) && has(DISCOVERY_SOURCE, &cfg.source)
}

/// Diff the desired tree against existing HyperNodes. Only this instance's HyperNodes
/// ([`is_ours`]) are ever updated or deleted; unchanged ones (same spec) are not re-applied.
/// `apply` is in write order: updates that drop members, other updates, creations.
pub fn plan(existing: &[HyperNode], nodes: &[Node], cfg: &DiscoveryConfig) -> DiscoveryPlan {
    let (want, mut errors) = desired(nodes, cfg);
    let have: BTreeMap<&str, &HyperNode> = existing
        .iter()
        .filter_map(|h| h.metadata.name.as_deref().map(|n| (n, h)))
        .collect();
    let mut apply = Vec::new();
    let wanted: BTreeSet<String> = want
        .iter()
        .filter_map(|h| h.metadata.name.clone())
        .collect();
    for h in want {
        let name = h.metadata.name.clone().unwrap_or_default();
        match have.get(name.as_str()) {
            Some(old) if !is_ours(old, cfg) => errors.push(DiscoveryError::NotOurs { name }),
            Some(old) if old.spec == h.spec => {}
            _ => apply.push(h),
        }
    }
    // Volcano refuses a HyperNode with two parents (its whole HyperNode cache turns not-ready
    // until fixed), so when a rack moves between spines the spine losing it is written before
    // the one gaining it: updates that drop members first, other updates, then creations.
    let drops = |h: &HyperNode| {
        let name = h.metadata.name.as_deref().unwrap_or_default();
        match have.get(name) {
            Some(old) => old.spec.members.iter().any(|m| !h.spec.members.contains(m)),
            None => false,
        }
    };
    apply.sort_by_key(|h| {
        let name = h.metadata.name.as_deref().unwrap_or_default();
        match (have.contains_key(name), drops(h)) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        }
    });
    let delete = existing
        .iter()
        .filter(|h| is_ours(h, cfg))
        .filter_map(|h| h.metadata.name.clone())
        .filter(|n| !wanted.contains(n))
        .collect();
    DiscoveryPlan {
        apply,
        delete,
        errors,
    }
}
