//! The access-log line, formatted by hand and queued on the background log writer.
//!
//! Through `tracing`'s formatter every field went through `Debug`/`Display` visitors and ANSI
//! styling wrappers even with colours off; that cost about 9% of the router's CPU per
//! request, more than the scheduler. The line keeps the shape of the formatter's output, so
//! readers need not care which wrote it: JSON (`--log-format json`) is
//! `{"timestamp","level","fields":{"message":"request",…},"target":"muster_router::access"}`;
//! text is `TIMESTAMP  INFO muster_router::access: request key=value …` with strings quoted.
//! `RUST_LOG` still decides whether the target is on.

use std::io::Write as _;
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

fn quoted(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// The line for `fields` at `now`, ending in a newline.
pub fn format_line(out: &mut Vec<u8>, now: SystemTime, json: bool, fields: &[(&str, Field<'_>)]) {
    let mut ts = [0u8; 27];
    timestamp(now, &mut ts);
    let ts = std::str::from_utf8(&ts).expect("ASCII");
    if json {
        let _ = write!(
            out,
            "{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"fields\":{{\"message\":\"request\""
        );
        for (k, v) in fields {
            out.push(b',');
            quoted(out, k);
            out.push(b':');
            match v {
                Field::Str(s) => quoted(out, s),
                Field::U64(n) | Field::OptU64(Some(n)) => {
                    let _ = write!(out, "{n}");
                }
                Field::OptU64(None) => out.extend_from_slice(b"null"),
                Field::Bool(b) => {
                    let _ = write!(out, "{b}");
                }
            }
        }
        let _ = writeln!(out, "}},\"target\":\"{TARGET}\"}}");
    } else {
        let _ = write!(out, "{ts}  INFO {TARGET}: request");
        for (k, v) in fields {
            match v {
                Field::OptU64(None) => continue,
                Field::Str(s) => {
                    let _ = write!(out, " {k}=");
                    quoted(out, s);
                }
                Field::U64(n) | Field::OptU64(Some(n)) => {
                    let _ = write!(out, " {k}={n}");
                }
                Field::Bool(b) => {
                    let _ = write!(out, " {k}={b}");
                }
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
    let mut w = &mut out[..];
    let _ = write!(
        w,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
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
}
