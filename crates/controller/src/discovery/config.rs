//! Command-line configuration of HyperNode discovery: which node label names each tier.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_topology::discovery::{DiscoveryConfig, TierLabel, DEFAULT_SOURCE};

/// Everything the discovery controller needs besides a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Label keys per tier and the source label value.
    pub config: DiscoveryConfig,
    /// Full re-plan interval, catching anything the watches missed (e.g. a foreign HyperNode
    /// that blocked a name going away).
    pub resync: Duration,
    /// How long to gather watch events before one re-plan, so a rack of nodes being relabelled
    /// costs one reconcile instead of one per node.
    pub debounce: Duration,
}

impl DiscoveryOptions {
    /// Defaults around `config`: resync every 5 minutes, debounce 500 ms.
    pub fn new(config: DiscoveryConfig) -> Self {
        DiscoveryOptions {
            config,
            resync: Duration::from_secs(300),
            debounce: Duration::from_millis(500),
        }
    }
}

/// A bad `--tier-label` / `--tier-name` / `--discovery-source` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not `TIER=VALUE`.
    #[error("{flag} {value:?}: expected TIER=VALUE with TIER a number from 1, e.g. 1=topology.muster.dev/rack")]
    Syntax {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// The same tier given twice.
    #[error("{flag}: tier {tier} given twice")]
    Duplicate {
        /// The flag.
        flag: &'static str,
        /// The tier.
        tier: u32,
    },
    /// Tiers must be 1..=n without gaps: a missing tier would leave its HyperNodes unnamed.
    #[error("--tier-label: tiers must be 1..={max} without gaps; tier {missing} is missing")]
    Gap {
        /// Highest tier given.
        max: u32,
        /// First missing tier.
        missing: u32,
    },
    /// A `--tier-name` for a tier without `--tier-label`.
    #[error("--tier-name {tier}: no --tier-label for tier {tier}")]
    NameWithoutLabel {
        /// The tier.
        tier: u32,
    },
    /// The source is not a valid label value (it is written as one).
    #[error("--discovery-source {0:?}: must be a label value (≤63 chars of [A-Za-z0-9._-], alphanumeric at both ends)")]
    BadSource(String),
}

fn split(flag: &'static str, v: &str) -> Result<(u32, String), ConfigError> {
    let err = || ConfigError::Syntax {
        flag,
        value: v.into(),
    };
    let (tier, rest) = v.split_once('=').ok_or_else(err)?;
    let tier: u32 = tier.trim().parse().map_err(|_| err())?;
    if tier == 0 || rest.is_empty() {
        return Err(err());
    }
    Ok((tier, rest.to_string()))
}

fn valid_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Builds a discovery configuration from repeated `--tier-label TIER=KEY` and
/// `--tier-name TIER=NAME` values (any order) and an optional source. With no tier labels at
/// all it is Muster's default (rack, then spine).
pub fn parse_tier_flags(
    tier_labels: &[String],
    tier_names: &[String],
    source: Option<&str>,
) -> Result<DiscoveryConfig, ConfigError> {
    let mut labels = BTreeMap::new();
    for v in tier_labels {
        let (t, key) = split("--tier-label", v)?;
        if labels.insert(t, key).is_some() {
            return Err(ConfigError::Duplicate {
                flag: "--tier-label",
                tier: t,
            });
        }
    }
    let mut names = BTreeMap::new();
    for v in tier_names {
        let (t, name) = split("--tier-name", v)?;
        if names.insert(t, name).is_some() {
            return Err(ConfigError::Duplicate {
                flag: "--tier-name",
                tier: t,
            });
        }
    }
    let mut cfg = if labels.is_empty() && names.is_empty() {
        DiscoveryConfig::muster_default()
    } else {
        let max = labels.keys().next_back().copied().unwrap_or(0);
        if let Some(missing) = (1..=max).find(|t| !labels.contains_key(t)) {
            return Err(ConfigError::Gap { max, missing });
        }
        if let Some(&tier) = names.keys().find(|t| !labels.contains_key(t)) {
            return Err(ConfigError::NameWithoutLabel { tier });
        }
        DiscoveryConfig {
            tiers: labels
                .into_iter()
                .map(|(t, node_label)| TierLabel {
                    node_label,
                    tier_name: names.get(&t).cloned(),
                })
                .collect(),
            source: DEFAULT_SOURCE.into(),
        }
    };
    if let Some(s) = source {
        if !valid_label_value(s) {
            return Err(ConfigError::BadSource(s.into()));
        }
        cfg.source = s.into();
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn no_flags_is_the_muster_default() {
        assert_eq!(
            parse_tier_flags(&[], &[], None).unwrap(),
            DiscoveryConfig::muster_default()
        );
    }

    #[test]
    fn tiers_are_ordered_by_number_not_by_flag_order() {
        let cfg = parse_tier_flags(
            &s(&["2=example.com/spine", "1=example.com/rack"]),
            &s(&["1=rack"]),
            Some("e2e-x"),
        )
        .unwrap();
        let keys: Vec<_> = cfg.tiers.iter().map(|t| t.node_label.as_str()).collect();
        assert_eq!(keys, ["example.com/rack", "example.com/spine"]);
        assert_eq!(cfg.tiers[0].tier_name.as_deref(), Some("rack"));
        assert_eq!(cfg.tiers[1].tier_name, None);
        assert_eq!(cfg.source, "e2e-x");
    }

    #[test]
    fn bad_flags_are_named() {
        let err = |l: &[&str], n: &[&str], src: Option<&str>| {
            parse_tier_flags(&s(l), &s(n), src).unwrap_err()
        };
        assert!(matches!(
            err(&["rack"], &[], None),
            ConfigError::Syntax { .. }
        ));
        assert!(matches!(
            err(&["0=a"], &[], None),
            ConfigError::Syntax { .. }
        ));
        assert_eq!(
            err(&["1=a", "1=b"], &[], None),
            ConfigError::Duplicate {
                flag: "--tier-label",
                tier: 1
            }
        );
        assert_eq!(
            err(&["1=a", "3=b"], &[], None),
            ConfigError::Gap { max: 3, missing: 2 }
        );
        assert_eq!(
            err(&["1=a"], &["2=spine"], None),
            ConfigError::NameWithoutLabel { tier: 2 }
        );
        assert!(matches!(
            err(&[], &[], Some("not/valid")),
            ConfigError::BadSource(_)
        ));
        let msg = err(&["x=a"], &[], None).to_string();
        assert!(
            msg.contains("--tier-label") && msg.contains("\"x=a\""),
            "{msg}"
        );
    }
}
