//! Who is calling: the identity authentication yields, and the API-key table it is read from.
//!
//! API-key file format (standalone mode, `--api-keys-file`), one key per line, `#` comments:
//!
//! ```text
//! # key            attributes (all optional)
//! sk-alpha-1       tenant=alpha user=alice name=alice-laptop models=llama,qwen priority=high weight=2
//! sk-legacy-key
//! ```
//!
//! A bare key (the old format) is its own tenant and user, named `key-<hash>` so logs and
//! Redis keys never contain the secret itself.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// Priority class of a caller; higher classes are always dequeued first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Batch and background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Interactive traffic.
    High,
}

impl Priority {
    /// Every class, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Parses `high`, `normal` or `low`.
    pub fn parse(s: &str) -> Result<Priority, String> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!(
                "priority `{other}` is not one of high, normal, low"
            )),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller (or the anonymous one when authentication is off).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Tenant: the unit of fairness and of `tenant`-scoped limits.
    pub tenant: Arc<str>,
    /// User (`sub` of a JWT).
    pub user: Arc<str>,
    /// API key name (`name=`, else `key-<hash>`), or `jwt:<sub>`.
    pub key: Arc<str>,
    /// Models this caller may use; `None` means all.
    pub models: Option<Arc<HashSet<String>>>,
    /// Priority class.
    pub priority: Priority,
    /// Fair-share weight (attained service is divided by it).
    pub weight: f64,
}

impl Identity {
    /// The caller when authentication is off.
    pub fn anonymous() -> Identity {
        let a: Arc<str> = "anonymous".into();
        Identity {
            tenant: a.clone(),
            user: a.clone(),
            key: a,
            models: None,
            priority: Priority::Normal,
            weight: 1.0,
        }
    }

    /// Whether the allow list admits `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// Keys → identities.
pub type KeyTable = HashMap<String, Arc<Identity>>;

/// A short, stable, non-secret name for a key.
pub fn key_name(key: &str) -> String {
    format!(
        "key-{:08x}",
        xxhash_rust::xxh64::xxh64(key.as_bytes(), 0) >> 32
    )
}

/// Applies one `attr=value` to an identity under construction; `what` names the source.
pub fn apply_attribute(id: &mut Identity, attr: &str, value: &str) -> Result<(), String> {
    match attr {
        "tenant" if !value.is_empty() => id.tenant = value.into(),
        "user" if !value.is_empty() => id.user = value.into(),
        "name" if !value.is_empty() => id.key = value.into(),
        "models" => {
            id.models = Some(Arc::new(
                value
                    .split([',', ' '])
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            ))
        }
        "priority" => id.priority = Priority::parse(value)?,
        "weight" => {
            id.weight = value
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite() && *w > 0.0)
                .ok_or_else(|| format!("weight `{value}` is not a positive number"))?
        }
        other => {
            return Err(format!(
                "unknown attribute `{other}` (or empty value); expected tenant, user, name, models, priority, weight"
            ))
        }
    }
    Ok(())
}

/// The identity of a key with no attributes: its own tenant and user.
pub fn bare_identity(key: &str) -> Identity {
    let name: Arc<str> = key_name(key).into();
    Identity {
        tenant: name.clone(),
        user: name.clone(),
        key: name,
        models: None,
        priority: Priority::Normal,
        weight: 1.0,
    }
}

/// Parses an API-key file; errors name the line and the attribute at fault.
pub fn parse_key_file(text: &str) -> Result<KeyTable, String> {
    let mut table = KeyTable::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().expect("non-empty line");
        let mut id = bare_identity(key);
        for w in words {
            let (attr, value) = w
                .split_once('=')
                .ok_or_else(|| format!("line {}: `{w}` is not attribute=value", n + 1))?;
            apply_attribute(&mut id, attr, value).map_err(|e| format!("line {}: {e}", n + 1))?;
        }
        if table.insert(key.to_string(), Arc::new(id)).is_some() {
            return Err(format!("line {}: key listed twice", n + 1));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_lines_become_identities() {
        let t = parse_key_file(
            "# comment\nsk-a tenant=alpha user=alice models=llama,qwen priority=high weight=2\n\nsk-b\n",
        )
        .unwrap();
        let a = &t["sk-a"];
        assert_eq!((&*a.tenant, &*a.user), ("alpha", "alice"));
        assert!(a.may_use("qwen") && !a.may_use("mistral"));
        assert_eq!((a.priority, a.weight), (Priority::High, 2.0));
        let b = &t["sk-b"];
        assert!(b.may_use("anything"));
        assert_eq!(b.tenant, b.key);
        assert!(!b.key.contains("sk-b"), "the secret must not be its name");
    }

    #[test]
    fn bad_lines_name_the_line_and_attribute() {
        for (text, want) in [
            ("k1\nk2 tenant\n", "line 2"),
            ("k1 priority=urgent", "priority `urgent`"),
            ("k1 weight=-1", "weight `-1`"),
            ("k1 colour=red", "unknown attribute `colour`"),
            ("k1\nk1\n", "line 2: key listed twice"),
        ] {
            let e = parse_key_file(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
