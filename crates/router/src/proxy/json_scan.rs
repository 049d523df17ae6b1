//! Byte-level scanning of JSON on the hot path: finding a field or a member's span without
//! building a value tree. Used on bodies serde has already accepted (requests) or on engine
//! answers where a miss only costs the slow path, so the scanners check structure, not every
//! rule of the grammar.

use std::ops::Range;

/// The first offset at or after `i` that is not JSON whitespace.
pub(super) fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Index of the quote that closes the string whose contents start at `from`.
pub(super) fn string_end(json: &[u8], mut from: usize) -> Option<usize> {
    while let Some(&b) = json.get(from) {
        match b {
            b'"' => return Some(from),
            b'\\' => from += 2, // the byte after a backslash never closes the string
            _ => from += 1,
        }
    }
    None
}

/// One member of an object: the raw contents of its key (between the quotes, escapes not
/// decoded) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    /// Key contents.
    pub key: Range<usize>,
    /// The whole value.
    pub value: Range<usize>,
}

/// The offset of the opening brace and the members, in order, of the object that is all of
/// `json` (up to whitespace); `None` when `json` is not exactly one object.
pub(super) fn object_members(json: &[u8]) -> Option<(usize, Vec<Member>)> {
    let open = skip_ws(json, 0);
    if json.get(open) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    let mut i = skip_ws(json, open + 1);
    if json.get(i) != Some(&b'}') {
        loop {
            if json.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = string_end(json, i + 1)?;
            let key = i + 1..key_end;
            i = skip_ws(json, key_end + 1);
            if json.get(i) != Some(&b':') {
                return None;
            }
            let start = skip_ws(json, i + 1);
            let end = value_end(json, start)?;
            members.push(Member {
                key,
                value: start..end,
            });
            i = skip_ws(json, end);
            match json.get(i) {
                Some(b',') => i = skip_ws(json, i + 1),
                Some(b'}') => break,
                _ => return None,
            }
        }
    }
    (skip_ws(json, i + 1) == json.len()).then_some((open, members))
}

/// The end of the value that starts at `i`.
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_end(json, i + 1).map(|e| e + 1),
        &open @ (b'{' | b'[') => {
            // Valid JSON nests properly, so counting only this container's own brackets
            // finds its end; strings are skipped whole.
            let close = if open == b'{' { b'}' } else { b']' };
            let mut depth = 0u32;
            let mut j = i;
            loop {
                j += memchr::memchr3(b'"', open, close, json.get(j..)?)?;
                match json[j] {
                    b'"' => j = string_end(json, j + 1)?,
                    b if b == open => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                }
                j += 1;
            }
        }
        // A number or a literal: up to the next delimiter.
        _ => {
            let n = json[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .unwrap_or(json.len() - i);
            (n > 0).then_some(i + n)
        }
    }
}

/// Whether a member's raw key is `name`; an escaped spelling (`"mod\u0065l"`) is decoded.
pub(super) fn key_is(raw: &[u8], name: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw == name.as_bytes();
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(json: &str) -> Option<Vec<(&str, &str)>> {
        let (_, m) = object_members(json.as_bytes())?;
        Some(
            m.iter()
                .map(|m| (&json[m.key.clone()], &json[m.value.clone()]))
                .collect(),
        )
    }

    #[test]
    fn members_are_found_whatever_the_values_hold() {
        let json =
            r#" { "a" : 1 , "b":"x\"}]," ,"c":{"d":[1,{"e":"}"}]},"f":[],"g":null,"h":-2.5e3 } "#;
        assert_eq!(
            members(json).unwrap(),
            [
                ("a", "1"),
                ("b", r#""x\"}],""#),
                ("c", r#"{"d":[1,{"e":"}"}]}"#),
                ("f", "[]"),
                ("g", "null"),
                ("h", "-2.5e3"),
            ]
        );
        assert_eq!(members("{}").unwrap(), []);
        assert_eq!(members(" { } ").unwrap(), []);
        for not_one_object in ["[1]", r#"{"a":1} {}"#, r#"{"a":1"#, r#"{"a" 1}"#, ""] {
            assert_eq!(members(not_one_object), None, "{not_one_object}");
        }
    }

    #[test]
    fn keys_compare_decoded() {
        assert!(key_is(b"model", "model"));
        assert!(key_is(br"mod\u0065l", "model"));
        assert!(!key_is(br"mode\u006c2", "model"));
        assert!(!key_is(b"models", "model"));
    }
}
