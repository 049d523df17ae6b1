//! Resolving HyperNode members (exactMatch, regexMatch, labelMatch) against Nodes and
//! HyperNodes, with Volcano's rules: exactly one selector per member, and HyperNode members
//! support exactMatch only.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use muster_api::volcano::{HyperNodeMember, MemberType};
use regex::Regex;

/// Why a member selector cannot be used. Reported by validation with the HyperNode's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// No selector or more than one of exactMatch/regexMatch/labelMatch.
    #[error("member {index} must set exactly one of exactMatch, regexMatch, labelMatch (it sets {count})")]
    NotExactlyOne {
        /// Index in `spec.members`.
        index: usize,
        /// Selectors set.
        count: usize,
    },
    /// regexMatch or labelMatch on a HyperNode member.
    #[error("member {index} of type HyperNode supports exactMatch only, not {selector}")]
    HyperNodeNeedsExact {
        /// Index in `spec.members`.
        index: usize,
        /// The selector used instead.
        selector: &'static str,
    },
    /// regexMatch pattern does not compile.
    #[error("member {index} regexMatch.pattern {pattern:?} is not a valid regex: {message}")]
    BadRegex {
        /// Index in `spec.members`.
        index: usize,
        /// The pattern.
        pattern: String,
        /// The regex crate's message.
        message: String,
    },
    /// labelMatch expression with an unknown operator or missing values.
    #[error("member {index} labelMatch expression on key {key:?}: {message}")]
    BadLabelSelector {
        /// Index in `spec.members`.
        index: usize,
        /// Key of the bad expression.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A member selector in a form that can be evaluated quickly.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// `exactMatch.name`.
    Exact(String),
    /// `regexMatch.pattern`, as an unanchored search over the name (Go `regexp.MatchString`
    /// semantics); write `^…$` to match whole names.
    Regex(Regex),
    /// `labelMatch`.
    Labels(LabelSelector),
}

/// One compiled member: what kind of object it selects and how.
#[derive(Clone, Debug)]
pub struct CompiledMember {
    /// Node or HyperNode.
    pub kind: MemberType,
    /// The selector.
    pub matcher: Matcher,
}

impl CompiledMember {
    /// Whether an object with this name and labels is selected.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match &self.matcher {
            Matcher::Exact(n) => n == name,
            Matcher::Regex(r) => r.is_match(name),
            Matcher::Labels(sel) => label_selector_matches(sel, labels),
        }
    }
}

/// Compile all members of a HyperNode. Broken members are skipped and returned as errors, so
/// one typo does not hide the rest of the HyperNode.
pub fn compile_members(members: &[HyperNodeMember]) -> (Vec<CompiledMember>, Vec<SelectorError>) {
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for (index, m) in members.iter().enumerate() {
        match compile_member(index, m) {
            Ok(c) => ok.push(c),
            Err(e) => errs.push(e),
        }
    }
    (ok, errs)
}

fn compile_member(index: usize, m: &HyperNodeMember) -> Result<CompiledMember, SelectorError> {
    let sel = m.selector.clone().unwrap_or_default();
    let count = [
        sel.exact_match.is_some(),
        sel.regex_match.is_some(),
        sel.label_match.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if count != 1 {
        return Err(SelectorError::NotExactlyOne { index, count });
    }
    if m.type_ == MemberType::HyperNode && sel.exact_match.is_none() {
        let selector = if sel.regex_match.is_some() {
            "regexMatch"
        } else {
            "labelMatch"
        };
        return Err(SelectorError::HyperNodeNeedsExact { index, selector });
    }
    let matcher = if let Some(e) = sel.exact_match {
        Matcher::Exact(e.name)
    } else if let Some(r) = sel.regex_match {
        let re = Regex::new(&r.pattern).map_err(|e| SelectorError::BadRegex {
            index,
            pattern: r.pattern.clone(),
            message: e.to_string(),
        })?;
        Matcher::Regex(re)
    } else {
        let ls = sel.label_match.unwrap_or_default();
        check_label_selector(index, &ls)?;
        Matcher::Labels(ls)
    };
    Ok(CompiledMember {
        kind: m.type_,
        matcher,
    })
}

fn check_label_selector(index: usize, sel: &LabelSelector) -> Result<(), SelectorError> {
    for e in sel.match_expressions.iter().flatten() {
        let n = e.values.as_ref().map_or(0, |v| v.len());
        let message = match e.operator.as_str() {
            "In" | "NotIn" if n == 0 => format!("operator {} needs at least one value", e.operator),
            "Exists" | "DoesNotExist" if n > 0 => {
                format!("operator {} must have no values", e.operator)
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => continue,
            other => format!("unknown operator {other:?} (want In, NotIn, Exists, DoesNotExist)"),
        };
        return Err(SelectorError::BadLabelSelector {
            index,
            key: e.key.clone(),
            message,
        });
    }
    Ok(())
}

/// Kubernetes label-selector semantics: all matchLabels and all expressions must hold; an empty
/// selector matches everything.
pub fn label_selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.as_deref().unwrap_or_default();
        let got = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => got.is_some_and(|g| vals.contains(g)),
            "NotIn" => got.is_none_or(|g| !vals.contains(g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use muster_api::volcano::{ExactMatch, MemberSelector, RegexMatch};

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, vals: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!vals.is_empty()).then(|| vals.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn label_selector_follows_kubernetes_semantics() {
        let l = labels(&[("rack", "r1"), ("zone", "a")]);
        let sel = LabelSelector {
            match_labels: Some(labels(&[("rack", "r1")])),
            match_expressions: Some(vec![
                req("zone", "In", &["a", "b"]),
                req("gpu", "DoesNotExist", &[]),
                req("rack", "NotIn", &["r2"]),
                req("zone", "Exists", &[]),
            ]),
        };
        assert!(label_selector_matches(&sel, &l));
        assert!(!label_selector_matches(
            &sel,
            &labels(&[("rack", "r1"), ("zone", "c")])
        ));
        assert!(label_selector_matches(&LabelSelector::default(), &l));
    }

    #[test]
    fn bad_members_are_rejected_with_their_index() {
        let members = vec![
            HyperNodeMember {
                type_: MemberType::Node,
                selector: Some(MemberSelector {
                    regex_match: Some(RegexMatch {
                        pattern: "node-(".into(),
                    }),
                    ..Default::default()
                }),
            },
            HyperNodeMember {
                type_: MemberType::HyperNode,
                selector: Some(MemberSelector {
                    regex_match: Some(RegexMatch {
                        pattern: "rack-.*".into(),
                    }),
                    ..Default::default()
                }),
            },
            HyperNodeMember {
                type_: MemberType::Node,
                selector: None,
            },
            HyperNodeMember {
                type_: MemberType::Node,
                selector: Some(MemberSelector {
                    exact_match: Some(ExactMatch {
                        name: "node-1".into(),
                    }),
                    ..Default::default()
                }),
            },
        ];
        let (ok, errs) = compile_members(&members);
        assert_eq!(ok.len(), 1);
        assert!(ok[0].matches("node-1", &BTreeMap::new()));
        assert!(matches!(errs[0], SelectorError::BadRegex { index: 0, .. }));
        assert_eq!(
            errs[1],
            SelectorError::HyperNodeNeedsExact {
                index: 1,
                selector: "regexMatch"
            }
        );
        assert_eq!(errs[2], SelectorError::NotExactlyOne { index: 2, count: 0 });
        assert!(errs[0].to_string().contains("node-("));
    }
}
