//! The prefill budget of a ModelServer (annotations): how many uncached prompt tokens the
//! router keeps in prefill on one endpoint before it holds further requests, and for how long
//! at most. Pure; the metering is `endpoints::prefill_budget`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::duration::parse_duration;
use crate::scheduler::{PluginKind, SchedulerProfile};

/// ModelServer annotation: uncached prompt tokens in prefill per endpoint (streamed requests
/// sent, first token not seen yet) above which requests are held at the router, shortest
/// first. Unset or `0`: no budget.
pub const PREFILL_BUDGET_ANNOTATION: &str = "router.muster.dev/prefill-budget-tokens";
/// ModelServer annotation: the longest a request is held for the budget (Go duration,
/// default [`DEFAULT_MAX_WAIT`]); then it is sent anyway.
pub const PREFILL_BUDGET_MAX_WAIT_ANNOTATION: &str = "router.muster.dev/prefill-budget-max-wait";

/// Default of [`PREFILL_BUDGET_MAX_WAIT_ANNOTATION`].
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// A server's prefill budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefillBudgetSettings {
    /// Tokens per endpoint.
    pub tokens: u64,
    /// Longest hold.
    #[serde(serialize_with = "crate::duration::serialize_seconds")]
    pub max_wait: Duration,
}

/// The budget from a server's annotations (`None`: none set, or `0`); problems are pushed as
/// `(reason, message)` and the budget is then off (tokens) or the default (wait).
///
/// The budget needs to know what each request must compute, so it needs a prefix scorer
/// (`prefix-cache` or `kv-events`) in the server's profile. Without one every request would
/// count as its whole prompt, and cached requests would be held one at a time behind cold
/// ones: the budget is then off and the server reports why.
pub fn settings(
    annotations: &BTreeMap<String, String>,
    profile: &SchedulerProfile,
    problems: &mut Vec<(&'static str, String)>,
) -> Option<PrefillBudgetSettings> {
    let mut bad = |name: &str, value: &str, why: &str| {
        problems.push((
            "InvalidPrefillBudget",
            format!("annotation {name} is {value:?}: {why}"),
        ));
    };
    let tokens = match annotations.get(PREFILL_BUDGET_ANNOTATION) {
        None => return None,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(0) => return None,
            Ok(n) => n,
            Err(_) => {
                bad(
                    PREFILL_BUDGET_ANNOTATION,
                    v,
                    "expected a token count (0 or unset: no budget); no budget applies",
                );
                return None;
            }
        },
    };
    if profile.weight(PluginKind::PrefixCache) <= 0.0 && profile.weight(PluginKind::KvEvents) <= 0.0
    {
        bad(
            PREFILL_BUDGET_ANNOTATION,
            &tokens.to_string(),
            "needs a prefix-cache or kv-events scorer in the scheduler profile to know each \
             request's uncached tokens; no budget applies",
        );
        return None;
    }
    let max_wait = match annotations.get(PREFILL_BUDGET_MAX_WAIT_ANNOTATION) {
        None => DEFAULT_MAX_WAIT,
        Some(v) => match parse_duration(v.trim()) {
            Ok(d) => d,
            Err(e) => {
                bad(
                    PREFILL_BUDGET_MAX_WAIT_ANNOTATION,
                    v,
                    &format!("{e}; using the default 30s"),
                );
                DEFAULT_MAX_WAIT
            }
        },
    };
    Some(PrefillBudgetSettings { tokens, max_wait })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix_profile() -> SchedulerProfile {
        SchedulerProfile::parse("plugins: [{name: prefix-cache, weight: 2}, {name: least-request}]")
            .unwrap()
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unset_or_zero_is_off_and_values_parse() {
        let mut problems = Vec::new();
        assert_eq!(
            settings(&annotations(&[]), &prefix_profile(), &mut problems),
            None
        );
        assert_eq!(
            settings(
                &annotations(&[(PREFILL_BUDGET_ANNOTATION, "0")]),
                &prefix_profile(),
                &mut problems
            ),
            None
        );
        assert_eq!(
            settings(
                &annotations(&[
                    (PREFILL_BUDGET_ANNOTATION, " 8192 "),
                    (PREFILL_BUDGET_MAX_WAIT_ANNOTATION, "5s"),
                ]),
                &prefix_profile(),
                &mut problems
            ),
            Some(PrefillBudgetSettings {
                tokens: 8192,
                max_wait: Duration::from_secs(5)
            })
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn bad_values_are_reported_with_the_annotation_and_value() {
        let mut problems = Vec::new();
        let off = settings(
            &annotations(&[(PREFILL_BUDGET_ANNOTATION, "lots")]),
            &prefix_profile(),
            &mut problems,
        );
        assert_eq!(off, None);
        let defaulted = settings(
            &annotations(&[
                (PREFILL_BUDGET_ANNOTATION, "4096"),
                (PREFILL_BUDGET_MAX_WAIT_ANNOTATION, "soon"),
            ]),
            &prefix_profile(),
            &mut problems,
        );
        let no_prefix_scorer = settings(
            &annotations(&[(PREFILL_BUDGET_ANNOTATION, "8192")]),
            &SchedulerProfile::parse("plugins: [{name: random}]").unwrap(),
            &mut problems,
        );
        assert_eq!(no_prefix_scorer, None);
        assert_eq!(defaulted.map(|s| s.max_wait), Some(DEFAULT_MAX_WAIT));
        assert_eq!(problems.len(), 3);
        assert!(
            problems[0].1.contains(PREFILL_BUDGET_ANNOTATION) && problems[0].1.contains("\"lots\"")
        );
        assert!(
            problems[1].1.contains(PREFILL_BUDGET_MAX_WAIT_ANNOTATION)
                && problems[1].1.contains("\"soon\"")
        );
        assert!(
            problems[2].1.contains(PREFILL_BUDGET_ANNOTATION)
                && problems[2].1.contains("\"8192\"")
                && problems[2].1.contains("prefix-cache or kv-events scorer"),
            "{}",
            problems[2].1
        );
        assert!(problems
            .iter()
            .all(|(reason, _)| *reason == "InvalidPrefillBudget"));
    }
}
