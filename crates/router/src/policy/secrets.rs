//! Kubernetes mode: API keys from Secrets carrying a label (default
//! `router.muster.dev/api-key=true`), watched so that creating, editing or deleting a Secret
//! takes effect at once. Each Secret holds one key under `data.key` and optional identity
//! attributes under `data.tenant`, `data.user`, `data.name`, `data.models`
//! (comma-separated), `data.priority` and `data.weight`; the key's name defaults to the
//! Secret's `namespace/name`. A Secret with a bad attribute is skipped with a warning.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use super::identity::{apply_attribute, bare_identity, KeyTable};

/// Builds the key table from Secrets; returns it and one warning per skipped Secret.
pub fn table_from_secrets<'a>(
    secrets: impl Iterator<Item = &'a Secret>,
) -> (KeyTable, Vec<String>) {
    let mut table = KeyTable::new();
    let mut warnings = Vec::new();
    for s in secrets {
        let name = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in s.data.iter().flatten() {
            match String::from_utf8(v.0.clone()) {
                Ok(text) => {
                    fields.insert(k.clone(), text.trim().to_string());
                }
                Err(_) => warnings.push(format!("Secret {name}: data.{k} is not UTF-8")),
            }
        }
        for (k, v) in s.string_data.iter().flatten() {
            fields.insert(k.clone(), v.trim().to_string());
        }
        let Some(key) = fields.remove("key").filter(|k| !k.is_empty()) else {
            warnings.push(format!("Secret {name}: no data.key"));
            continue;
        };
        let mut id = bare_identity(&key);
        id.key = name.clone().into();
        let mut bad = None;
        for (attr, value) in &fields {
            if let Err(e) = apply_attribute(&mut id, attr, value) {
                bad = Some(format!("Secret {name}: data.{attr}: {e}"));
                break;
            }
        }
        if let Some(w) = bad {
            warnings.push(w);
            continue;
        }
        if table.insert(key, Arc::new(id)).is_some() {
            warnings.push(format!(
                "Secret {name}: the same key is in another Secret too"
            ));
        }
    }
    (table, warnings)
}

/// Watches labelled Secrets (in `namespace`, or all) and keeps the policy's key table current.
pub async fn watch(
    client: Client,
    namespace: Option<String>,
    label_selector: String,
    policy: Arc<super::TrafficPolicy>,
) {
    let api: Api<Secret> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (store, writer) = reflector::store::<Secret>();
    let mut stream = watcher(api, watcher::Config::default().labels(&label_selector))
        .default_backoff()
        .reflect(writer)
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Err(e) => {
                tracing::warn!(error = %e, "API-key Secret watch error; retrying");
                continue;
            }
            // A (re)list is still arriving; the store swaps it in at InitDone.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
            }
        }
        let secrets = store.state();
        let (table, warnings) = table_from_secrets(secrets.iter().map(|s| s.as_ref()));
        for w in warnings {
            tracing::warn!("{w}");
        }
        tracing::debug!(keys = table.len(), "API keys from Secrets");
        policy.auth.replace_keys(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("llm".into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s
    }

    #[test]
    fn secrets_become_keys_and_bad_ones_are_skipped() {
        let good = secret(
            "alice",
            &[("key", "sk-1\n"), ("tenant", "acme"), ("models", "llama")],
        );
        let nokey = secret("empty", &[("tenant", "x")]);
        let bad = secret("bad", &[("key", "sk-2"), ("priority", "urgent")]);
        let (t, w) = table_from_secrets([&good, &nokey, &bad].into_iter());
        assert_eq!(t.len(), 1);
        let id = &t["sk-1"];
        assert_eq!((&*id.tenant, &*id.key), ("acme", "llm/alice"));
        assert!(id.may_use("llama") && !id.may_use("qwen"));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].contains("urgent"), "{w:?}");
    }
}
