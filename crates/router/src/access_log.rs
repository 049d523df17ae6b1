//! The access-log line, formatted by hand and queued on the background log writer.
//!
//! Through `tracing`'s formatter every field went through `Debug`/`Display` visitors and ANSI
//! styling wrappers even with colours off; that cost about 9% of the router's CPU per
//! request, more than the scheduler. The line keeps the shape of the formatter's output, so
//! readers need not care which wrote it: JSON (`--log-format json`) is
//! `{"timestamp","level","fields":{"message":"request",…},"target":"muster_router::access"}`;
//! text is `TIMESTAMP  INFO muster_router::access: request key=value …` with strings quoted.
//! `RUST_LOG` still decides whether the target is on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The log target of access lines.
pub const TARGET: &str = "muster_router::access";

static JSON: AtomicBool = AtomicBool::new(false);

/// Chooses JSON (`true`) or text lines; set once at start-up with the log format.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// One field value.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// A string (quoted and escaped).
    Str(&'a str),
    /// An unsigned number.
    U64(u64),
    /// A number that may be absent (JSON `null`; left out of text lines).
    OptU64(Option<u64>),
    /// A boolean.
    Bool(bool),
}

/// Whether access lines are wanted (`RUST_LOG` may turn the target off).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Formats and queues one access line.
pub fn emit(fields: &[(&str, Field<'_>)]) {
    let mut line = Vec::with_capacity(512);
    format_line(
        &mut line,
        SystemTime::now(),
        JSON.load(Ordering::Relaxed),
        fields,
    );
    crate::logging::queue_line(line);
}

// The helpers below push bytes directly: `write!` goes through `core::fmt`'s dynamic
// dispatch per argument, which made formatting the line cost more than parsing the request.

/// `s` as a JSON string: copied as is when nothing in it needs escaping (the common case),
/// else through serde_json.
fn quoted(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether `s` holds a control byte, `"` or `\\`, tested eight bytes at a time: a byte-wise
/// test of every field made quoting the costliest part of the line.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    // Exact for "some byte of v is below n" when n <= 128 (the borrow trick: a byte below n
    // borrows into its high bit, and `!v` keeps only bytes that had it clear).
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("chunks of 8"));
        if below(v, 0x20)
            | below(v ^ (ONES * u64::from(b'"')), 1)
            | below(v ^ (ONES * u64::from(b'\\')), 1)
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `name=value` for a routing score, appended to `out` after a comma unless it is the first:
/// the value rounded to 3 decimals, trailing zeros dropped (`1`, `0.25`, `0.333`). Written
/// digit by digit: `core::fmt`'s float formatting made this one field cost a third of the line.
pub fn push_score(out: &mut Vec<u8>, name: &str, value: f64) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    let milli = (value * 1000.0).round();
    if !milli.is_finite() || milli.abs() >= 1e18 {
        out.extend_from_slice(value.to_string().as_bytes());
        return;
    }
    if milli < 0.0 {
        out.push(b'-');
    }
    let milli = milli.abs() as u64;
    number(out, milli / 1000);
    let mut frac = milli % 1000;
    if frac != 0 {
        out.push(b'.');
        let mut digits = 3;
        while frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        let at = out.len();
        out.resize(at + digits, b'0');
        padded(&mut out[at..], frac);
    }
}

/// `n` in decimal.
fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` in decimal, zero-padded to the width of `out`.
fn padded(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// The line for `fields` at `now`, ending in a newline.
pub fn format_line(out: &mut Vec<u8>, now: SystemTime, json: bool, fields: &[(&str, Field<'_>)]) {
    let mut ts = [0u8; 27];
    timestamp(now, &mut ts);
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(&ts);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\"");
        for (k, v) in fields {
            out.push(b',');
            quoted(out, k);
            out.push(b':');
            match v {
                Field::Str(s) => quoted(out, s),
                Field::U64(n) | Field::OptU64(Some(n)) => number(out, *n),
                Field::OptU64(None) => out.extend_from_slice(b"null"),
                Field::Bool(b) => boolean(out, *b),
            }
        }
        out.extend_from_slice(b"},\"target\":\"");
        out.extend_from_slice(TARGET.as_bytes());
        out.extend_from_slice(b"\"}\n");
    } else {
        out.extend_from_slice(&ts);
        out.extend_from_slice(b"  INFO ");
        out.extend_from_slice(TARGET.as_bytes());
        out.extend_from_slice(b": request");
        for (k, v) in fields {
            if let Field::OptU64(None) = v {
                continue;
            }
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            match v {
                Field::Str(s) => quoted(out, s),
                Field::U64(n) | Field::OptU64(Some(n)) => number(out, *n),
                Field::OptU64(None) => {}
                Field::Bool(b) => boolean(out, *b),
            }
        }
        out.push(b'\n');
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds), as the `tracing` formatter writes it.
fn timestamp(now: SystemTime, out: &mut [u8; 27]) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    *out = *b"0000-00-00T00:00:00.000000Z";
    padded(&mut out[0..4], year as u64);
    padded(&mut out[5..7], month as u64);
    padded(&mut out[8..10], day as u64);
    padded(&mut out[11..13], rem / 3600);
    padded(&mut out[14..16], rem / 60 % 60);
    padded(&mut out[17..19], rem % 60);
    padded(&mut out[20..26], u64::from(d.subsec_micros()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fields() -> Vec<(&'static str, Field<'static>)> {
        vec![
            ("request_id", Field::Str("abc")),
            ("path", Field::Str("/v1/chat \"x\"")),
            ("status", Field::U64(200)),
            ("ttft_us", Field::OptU64(None)),
            ("prompt_tokens", Field::OptU64(Some(7))),
            ("completed", Field::Bool(true)),
        ]
    }

    #[test]
    fn quoting_escapes_exactly_what_json_needs() {
        // Every byte position within and around a word, for each byte that must be escaped.
        for bad in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
            for len in 0..20 {
                for at in 0..=len {
                    let mut s: String = "abcdefghijklmnopqrst"[..len].into();
                    s.insert(at, bad);
                    let mut out = Vec::new();
                    quoted(&mut out, &s);
                    assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
                    assert!(needs_escape(s.as_bytes()), "{s:?}");
                }
            }
        }
        // Bytes just outside the escaped ranges, and multi-byte UTF-8, are copied as they are.
        for s in [" ~!#[]{}", "\u{7f}é漢字🙂 space ", "0123456789abcdef!"] {
            assert!(!needs_escape(s.as_bytes()), "{s:?}");
            let mut out = Vec::new();
            quoted(&mut out, s);
            assert_eq!(out, format!("\"{s}\"").into_bytes());
        }
    }

    #[test]
    fn scores_are_rounded_to_three_decimals() {
        let mut out = Vec::new();
        for (name, v) in [
            ("a", 1.0),
            ("b", 0.0),
            ("c", 0.25),
            ("d", 1.0 / 3.0),
            ("e", 0.0004),
            ("f", 0.0996),
            ("g", -0.5),
            ("h", 12.3456),
        ] {
            push_score(&mut out, name, v);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a=1,b=0,c=0.25,d=0.333,e=0,f=0.1,g=-0.5,h=12.346"
        );
        let mut out = Vec::new();
        push_score(&mut out, "nan", f64::NAN);
        assert_eq!(out, b"nan=NaN");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut ts = [0u8; 27];
        // 2026-12-02T01:38:00.123456Z
        timestamp(
            UNIX_EPOCH + Duration::new(1_796_175_480, 123_456_789),
            &mut ts,
        );
        assert_eq!(
            std::str::from_utf8(&ts).unwrap(),
            "2026-12-02T01:38:00.123456Z"
        );
        timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut ts); // leap day
        assert_eq!(
            std::str::from_utf8(&ts).unwrap(),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn json_lines_have_the_tracing_shape() {
        let mut out = Vec::new();
        format_line(&mut out, UNIX_EPOCH, true, &fields());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        let f = &v["fields"];
        assert_eq!(f["message"], "request");
        assert_eq!(f["path"], "/v1/chat \"x\"");
        assert_eq!(f["status"], 200);
        assert!(f["ttft_us"].is_null());
        assert_eq!(f["prompt_tokens"], 7);
        assert_eq!(f["completed"], true);
    }

    #[test]
    fn text_lines_are_key_value_with_quoted_strings() {
        let mut out = Vec::new();
        format_line(&mut out, UNIX_EPOCH, false, &fields());
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000000Z  INFO muster_router::access: request request_id=\"abc\" \
             path=\"/v1/chat \\\"x\\\"\" status=200 prompt_tokens=7 completed=true\n"
        );
    }

    #[test]
    fn numbers_and_escapes_survive_the_fast_paths() {
        let mut out = Vec::new();
        number(&mut out, 0);
        out.push(b' ');
        number(&mut out, u64::MAX);
        out.push(b' ');
        quoted(&mut out, "plain/ascii-and-ünïcode");
        out.push(b' ');
        quoted(&mut out, "line\nbreak\t\"q\" \\");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0 18446744073709551615 \"plain/ascii-and-ünïcode\" \"line\\nbreak\\t\\\"q\\\" \\\\\""
        );
    }
}
