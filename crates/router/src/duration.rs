//! Go-style durations (`100ms`, `1m30s`), the format ModelServer's trafficPolicy uses, so the
//! router's flags read the same way as the CRD fields they default.

use std::time::Duration;

/// Serializes a duration as seconds (`serde(serialize_with)`), as the debug endpoints show
/// them.
pub fn serialize_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Parses a Go duration such as `30s`, `1m30s`, `1.5h`, `250ms`, `10us` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} lacks a unit (ns, us, ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("duration {text:?} has a unit without a number"));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {text:?} has a bad number {:?}", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "duration {text:?} has an unknown unit {other:?} (use ns, us, ms, s, m, h)"
                ))
            }
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_the_crd_pattern_allows() {
        let cases = [
            ("0", 0.0),
            ("30s", 30.0),
            ("100ms", 0.1),
            ("1m30s", 90.0),
            ("1.5h", 5400.0),
            ("250us", 0.000_25),
            ("10µs", 0.000_01),
            ("5ns", 5e-9),
        ];
        for (text, secs) in cases {
            let d = parse_duration(text).unwrap();
            assert!((d.as_secs_f64() - secs).abs() < 1e-12, "{text} -> {d:?}");
        }
    }

    #[test]
    fn rejects_with_a_message_naming_the_problem() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("10").unwrap_err().contains("unit"));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s")
            .unwrap_err()
            .contains("without a number"));
    }
}
