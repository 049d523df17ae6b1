//! ModelRoute rule matching: header/URI/body conditions (ANDed) and weighted target choice.

use hyper::header::{HeaderMap, HeaderName};
use muster_api::networking::{ModelMatch, RouteRule, StringMatch};
use regex::Regex;

use super::ObjectKey;

/// A compiled `StringMatch`.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Whole-value equality.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Unanchored regular expression (anchor with `^…$` for a whole-value match).
    Regex(Regex),
}

impl Matcher {
    /// Compiles one `StringMatch`; `field` names it in the error.
    pub fn compile(m: &StringMatch, field: &str) -> Result<Matcher, String> {
        match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), None, None) => Ok(Matcher::Exact(e.clone())),
            (None, Some(p), None) => Ok(Matcher::Prefix(p.clone())),
            (None, None, Some(r)) => Regex::new(r)
                .map(Matcher::Regex)
                .map_err(|e| format!("{field}.regex {r:?} does not compile: {e}")),
            _ => Err(format!(
                "{field} must set exactly one of exact, prefix, regex"
            )),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(e) => value == e,
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

/// The facts about a request that rules can test.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Path without the query string.
    pub path: &'a str,
    /// The body's `model`.
    pub model: &'a str,
}

/// A compiled `ModelMatch`.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    headers: Vec<(HeaderName, Matcher)>,
    uri: Option<Matcher>,
    body_model: Option<String>,
}

impl RequestMatch {
    /// Compiles a `ModelMatch`; `field` prefixes error messages.
    pub fn compile(m: &ModelMatch, field: &str) -> Result<RequestMatch, String> {
        let mut headers = Vec::new();
        for (name, sm) in m.headers.iter().flatten() {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{field}.headers key {name:?} is not a valid header name"))?;
            headers.push((
                header,
                Matcher::compile(sm, &format!("{field}.headers[{name}]"))?,
            ));
        }
        let uri = m
            .uri
            .as_ref()
            .map(|u| Matcher::compile(u, &format!("{field}.uri")))
            .transpose()?;
        Ok(RequestMatch {
            headers,
            uri,
            body_model: m.body.as_ref().and_then(|b| b.model.clone()),
        })
    }

    /// Whether every condition holds. A header condition on a header the request lacks fails;
    /// a repeated header matches when any of its values does.
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        if let Some(model) = &self.body_model {
            if model != facts.model {
                return false;
            }
        }
        if let Some(uri) = &self.uri {
            if !uri.matches(facts.path) {
                return false;
            }
        }
        self.headers.iter().all(|(name, m)| {
            facts
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        })
    }

    /// True when the match has no conditions (it matches every request).
    pub fn is_unconditional(&self) -> bool {
        self.headers.is_empty() && self.uri.is_none() && self.body_model.is_none()
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// Rule name (its `name`, or `rule-<index>`), for metrics and logs.
    pub name: std::sync::Arc<str>,
    /// Conditions; `None` matches everything.
    pub matcher: Option<RequestMatch>,
    /// Targets with their weights.
    pub targets: Vec<(ObjectKey, u32)>,
    total_weight: u64,
}

impl CompiledRule {
    /// Compiles rule `index` of a route in `namespace`.
    pub fn compile(
        rule: &RouteRule,
        index: usize,
        namespace: &str,
    ) -> Result<CompiledRule, String> {
        let field = format!("rules[{index}]");
        let matcher = rule
            .model_match
            .as_ref()
            .map(|m| RequestMatch::compile(m, &format!("{field}.modelMatch")))
            .transpose()?
            .filter(|m| !m.is_unconditional());
        // Weights are all-or-none (CEL); unset means an equal share.
        let targets: Vec<(ObjectKey, u32)> = rule
            .target_models
            .iter()
            .map(|t| {
                (
                    ObjectKey::new(namespace, &t.model_server_name),
                    t.weight.unwrap_or(100),
                )
            })
            .collect();
        if targets.is_empty() {
            return Err(format!("{field}.targetModels is empty"));
        }
        let total_weight = targets.iter().map(|(_, w)| u64::from(*w)).sum();
        if total_weight == 0 {
            return Err(format!(
                "{field}.targetModels all have weight 0, so the rule can send traffic nowhere"
            ));
        }
        Ok(CompiledRule {
            name: rule
                .name
                .clone()
                .unwrap_or_else(|| format!("rule-{index}"))
                .into(),
            matcher,
            targets,
            total_weight,
        })
    }

    /// Whether the rule applies to the request.
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        self.matcher.as_ref().is_none_or(|m| m.matches(facts))
    }

    /// Weighted choice of a target from a uniform random number.
    pub fn pick_target(&self, random: u64) -> &ObjectKey {
        let mut ticket = random % self.total_weight;
        for (key, w) in &self.targets {
            let w = u64::from(*w);
            if ticket < w {
                return key;
            }
            ticket -= w;
        }
        unreachable!("ticket below the total weight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_api::networking::{BodyMatch, TargetModel};
    use std::collections::BTreeMap;

    fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatch {
        StringMatch {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: regex.map(Into::into),
        }
    }

    fn rule(m: Option<ModelMatch>, weights: &[(&str, Option<u32>)]) -> RouteRule {
        RouteRule {
            name: None,
            model_match: m,
            target_models: weights
                .iter()
                .map(|(n, w)| TargetModel {
                    model_server_name: n.to_string(),
                    weight: *w,
                })
                .collect(),
        }
    }

    #[test]
    fn conditions_are_anded() {
        let m = ModelMatch {
            headers: Some(BTreeMap::from([
                ("x-tier".to_string(), sm(Some("gold"), None, None)),
                ("x-user".to_string(), sm(None, None, Some("^team-[0-9]+$"))),
            ])),
            uri: Some(sm(None, Some("/v1/chat"), None)),
            body: Some(BodyMatch {
                model: Some("llama".into()),
            }),
        };
        let r = CompiledRule::compile(&rule(Some(m), &[("a", None)]), 0, "ns").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-tier", "gold".parse().unwrap());
        headers.insert("x-user", "team-7".parse().unwrap());
        let facts = RequestFacts {
            headers: &headers,
            path: "/v1/chat/completions",
            model: "llama",
        };
        assert!(r.matches(&facts));
        let table: [(&str, &str, &str, &str, bool); 4] = [
            ("silver", "team-7", "/v1/chat/completions", "llama", false),
            ("gold", "team-x", "/v1/chat/completions", "llama", false),
            ("gold", "team-7", "/v1/completions", "llama", false),
            ("gold", "team-7", "/v1/chat/completions", "other", false),
        ];
        for (tier, user, path, model, want) in table {
            let mut h = HeaderMap::new();
            h.insert("x-tier", tier.parse().unwrap());
            h.insert("x-user", user.parse().unwrap());
            let f = RequestFacts {
                headers: &h,
                path,
                model,
            };
            assert_eq!(r.matches(&f), want, "{tier} {user} {path} {model}");
        }
        let empty = HeaderMap::new();
        assert!(!r.matches(&RequestFacts {
            headers: &empty,
            ..facts
        }));
    }

    #[test]
    fn bad_regex_is_reported_with_its_field() {
        let m = ModelMatch {
            uri: Some(sm(None, None, Some("(unclosed"))),
            ..ModelMatch::default()
        };
        let err = CompiledRule::compile(&rule(Some(m), &[("a", None)]), 2, "ns").unwrap_err();
        assert!(err.starts_with("rules[2].modelMatch.uri.regex"), "{err}");
    }

    #[test]
    fn weights_split_traffic_proportionally() {
        let r = CompiledRule::compile(
            &rule(None, &[("stable", Some(90)), ("canary", Some(10))]),
            0,
            "ns",
        )
        .unwrap();
        let canary = (0..10_000u64)
            .filter(|i| {
                r.pick_target(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7)
                    .name
                    == "canary"
            })
            .count();
        assert!((900..1100).contains(&canary), "{canary}");
        let zero = CompiledRule::compile(&rule(None, &[("a", Some(0))]), 0, "ns").unwrap_err();
        assert!(zero.contains("weight 0"), "{zero}");
        let equal =
            CompiledRule::compile(&rule(None, &[("a", None), ("b", None)]), 0, "ns").unwrap();
        assert_eq!(equal.pick_target(0).name, "a");
        assert_eq!(equal.pick_target(150).name, "b");
    }
}
