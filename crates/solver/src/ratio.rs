//! Disaggregated serving: prefill and decode counts are recommended independently (each by its
//! own [`crate::recommender`]) and then projected into a ratio band `numerator / denominator ∈
//! [minRatio, maxRatio]`, e.g. prefill / decode.
//!
//! Raising the deficient side is preferred to lowering the other, because removing instances
//! risks the SLO while an unbalanced pair only wastes some capacity.

use serde::{Deserialize, Serialize};

/// One role's recommendation and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleCount {
    /// Independently recommended count.
    pub desired: u32,
    /// Fewest instances of the role.
    pub min: u32,
    /// Most instances of the role.
    pub max: u32,
}

/// Allowed range of numerator / denominator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RatioBand {
    /// Lowest allowed ratio.
    pub min_ratio: f64,
    /// Highest allowed ratio.
    pub max_ratio: f64,
}

/// The counts after enforcing the band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RatioOutcome {
    /// Numerator role count (e.g. prefill).
    pub numerator: u32,
    /// Denominator role count (e.g. decode).
    pub denominator: u32,
    /// What was changed and why; `None` when the recommendations already fit the band.
    pub adjustment: Option<String>,
    /// False when the bounds make the band unreachable (report as RatioConstraintViolated).
    pub within_band: bool,
}

fn in_band(n: u32, d: u32, band: &RatioBand) -> bool {
    if d == 0 {
        return n == 0;
    }
    let r = f64::from(n) / f64::from(d);
    r >= band.min_ratio - 1e-9 && r <= band.max_ratio + 1e-9
}

/// Projects two independent recommendations into the ratio band.
///
/// Among all pairs within the roles' bounds that fit the band, picks the one that removes the
/// fewest instances from the recommendations (removing capacity risks the SLO), then the one
/// that adds the fewest. Both at zero is kept (scale to zero together).
pub fn enforce_ratio(
    numerator: RoleCount,
    denominator: RoleCount,
    band: &RatioBand,
) -> RatioOutcome {
    let want_n = numerator.desired.clamp(numerator.min, numerator.max);
    let want_d = denominator.desired.clamp(denominator.min, denominator.max);
    if want_n == 0 && want_d == 0 || in_band(want_n, want_d, band) {
        return RatioOutcome {
            numerator: want_n,
            denominator: want_d,
            adjustment: None,
            within_band: true,
        };
    }
    // For each denominator the best numerator is the desired one clamped into the band's
    // range, so one pass over the denominator's range finds the optimum.
    let mut best: Option<((u32, u32), u32, u32)> = None;
    for d in denominator.min.max(1)..=denominator.max {
        let lo = ((band.min_ratio * f64::from(d) - 1e-9).ceil().max(0.0) as u32).max(numerator.min);
        let hi = ((band.max_ratio * f64::from(d) + 1e-9).floor() as u32).min(numerator.max);
        if lo > hi {
            continue;
        }
        let n = want_n.clamp(lo, hi);
        let removed = want_n.saturating_sub(n) + want_d.saturating_sub(d);
        let added = n.saturating_sub(want_n) + d.saturating_sub(want_d);
        if best.is_none_or(|(_, r, a)| (removed, added) < (r, a)) {
            best = Some(((n, d), removed, added));
        }
    }
    match best {
        Some(((n, d), _, _)) => RatioOutcome {
            numerator: n,
            denominator: d,
            adjustment: Some(format!(
                "numerator {want_n} → {n}, denominator {want_d} → {d} to fit ratio band [{}, {}]",
                band.min_ratio, band.max_ratio
            )),
            within_band: true,
        },
        None => RatioOutcome {
            numerator: want_n,
            denominator: want_d,
            adjustment: Some(format!(
                "no counts within the roles' bounds fit ratio band [{}, {}]; keeping {want_n}/{want_d}",
                band.min_ratio, band.max_ratio
            )),
            within_band: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BAND: RatioBand = RatioBand {
        min_ratio: 0.5,
        max_ratio: 2.0,
    };

    fn role(desired: u32, min: u32, max: u32) -> RoleCount {
        RoleCount { desired, min, max }
    }

    #[test]
    fn counts_inside_the_band_are_untouched() {
        let out = enforce_ratio(role(3, 1, 10), role(4, 1, 10), &BAND);
        assert_eq!(
            (
                out.numerator,
                out.denominator,
                out.adjustment,
                out.within_band
            ),
            (3, 4, None, true)
        );
    }

    #[test]
    fn deficient_side_is_raised_first() {
        // 1 prefill for 8 decode is below 0.5: prefill goes up to 4, decode stays.
        let out = enforce_ratio(role(1, 1, 10), role(8, 1, 10), &BAND);
        assert_eq!((out.numerator, out.denominator), (4, 8));
        assert_eq!(
            out.adjustment.unwrap(),
            "numerator 1 → 4, denominator 8 → 8 to fit ratio band [0.5, 2]"
        );
        // 9 prefill for 2 decode is above 2.0: decode goes up to 5.
        let out = enforce_ratio(role(9, 1, 10), role(2, 1, 10), &BAND);
        assert_eq!((out.numerator, out.denominator), (9, 5));
    }

    #[test]
    fn saturated_side_lowers_the_other_and_reports_it() {
        // Prefill capped at 2: decode must come down to 4 to keep 2/4 = 0.5.
        let out = enforce_ratio(role(1, 1, 2), role(8, 1, 10), &BAND);
        assert_eq!((out.numerator, out.denominator), (2, 4));
        assert!(out.adjustment.unwrap().contains("denominator 8 → 4"));
    }

    #[test]
    fn unreachable_band_is_reported_not_hidden() {
        // Decode min 8, prefill max 2: 2/8 < 0.5 whatever we do.
        let out = enforce_ratio(role(1, 1, 2), role(8, 8, 10), &BAND);
        assert!(!out.within_band);
        assert!(out
            .adjustment
            .unwrap()
            .contains("no counts within the roles' bounds fit"));
    }

    #[test]
    fn scale_to_zero_together_is_kept_and_lone_numerator_gets_a_denominator() {
        let out = enforce_ratio(role(0, 0, 4), role(0, 0, 4), &BAND);
        assert_eq!(
            (out.numerator, out.denominator, out.within_band),
            (0, 0, true)
        );
        let out = enforce_ratio(role(1, 0, 4), role(0, 0, 4), &BAND);
        assert_eq!((out.numerator, out.denominator), (1, 1));
    }

    proptest! {
        /// Whenever some pair within the bounds fits the band, the outcome is in the band and
        /// within bounds.
        #[test]
        fn outcome_is_in_band_when_possible(
            nd in 0u32..12, nmin in 0u32..4, nspan in 0u32..8,
            dd in 0u32..12, dmin in 0u32..4, dspan in 0u32..8,
            lo in 0.25f64..1.5, width in 0.0f64..2.0,
        ) {
            let band = RatioBand { min_ratio: lo, max_ratio: lo + width };
            let (num, den) = (role(nd, nmin, nmin + nspan), role(dd, dmin, dmin + dspan));
            let out = enforce_ratio(num, den, &band);
            prop_assert!((num.min..=num.max).contains(&out.numerator));
            prop_assert!((den.min..=den.max).contains(&out.denominator));
            let possible = (num.min..=num.max).any(|n| (den.min.max(1)..=den.max).any(|d| in_band(n, d, &band)));
            if possible && out.numerator + out.denominator > 0 {
                prop_assert!(out.within_band, "{num:?} {den:?} {band:?} → {out:?}");
            }
        }
    }
}
