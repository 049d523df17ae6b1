//! Every sample in `config/samples/` parses into the typed API without losing a field, and the
//! committed CRDs in `config/crd/` are exactly what the types generate.

use std::path::{Path, PathBuf};

use muster_api::{AutoscalingPolicy, ModelRoute, ModelServer, ModelServing};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn samples() -> Vec<(String, Value)> {
    let dir = repo_root().join("config/samples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/samples exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            value,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 12,
        "expected the full sample set, found {}",
        out.len()
    );
    out
}

/// Every value present in `original` is present, equal, in `round_tripped` (which may add
/// defaults). A field the types do not know would be dropped and fail here.
fn assert_subset(original: &Value, round_tripped: &Value, path: &str) {
    match (original, round_tripped) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let child = format!("{path}.{k}");
                let other = b
                    .get(k)
                    .unwrap_or_else(|| panic!("{child} was dropped by the types"));
                assert_subset(v, other, &child);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: list length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_subset(x, y, &format!("{path}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{path} changed in the round trip"),
    }
}

fn round_trip<T>(value: &Value) -> Value
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(value.clone()).expect("sample deserialises");
    let out = serde_json::to_value(&typed).unwrap();
    // Serialising the typed value again must be stable.
    let again: T = serde_json::from_value(out.clone()).unwrap();
    assert_eq!(serde_json::to_value(&again).unwrap(), out);
    out
}

#[test]
fn every_sample_round_trips_without_losing_fields() {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (name, value) in samples() {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let out = match kind.as_str() {
            "ModelServing" => round_trip::<ModelServing>(&value),
            "ModelServer" => round_trip::<ModelServer>(&value),
            "ModelRoute" => round_trip::<ModelRoute>(&value),
            "AutoscalingPolicy" => round_trip::<AutoscalingPolicy>(&value),
            other => panic!("{name}: unexpected kind {other:?}"),
        };
        assert_subset(&value, &out, &name);
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(
        kinds.get("ModelServing"),
        Some(&3),
        "single, 2P4D and multi-node TP samples"
    );
    assert_eq!(kinds.get("ModelServer"), Some(&3));
    assert_eq!(kinds.get("ModelRoute"), Some(&3));
    assert_eq!(
        kinds.get("AutoscalingPolicy"),
        Some(&3),
        "one policy of each kind"
    );
}

#[test]
fn typed_defaults_match_kthena() {
    let ms: ModelServing = serde_yaml::from_str(
        "apiVersion: workload.muster.dev/v1alpha1\nkind: ModelServing\nmetadata: {name: x}\n\
         spec:\n  template:\n    roles:\n    - name: a\n      entryTemplate: {spec: {containers: []}}\n",
    )
    .unwrap();
    assert_eq!(ms.spec.replicas, 1);
    assert_eq!(ms.spec.scheduler_name, "volcano");
    assert_eq!(
        ms.spec.recovery_policy,
        muster_api::serving::RecoveryPolicy::RoleRecreate
    );
    assert_eq!(ms.spec.template.roles[0].replicas, 1);
    assert_eq!(ms.spec.template.roles[0].worker_replicas, 0);
}

#[test]
fn committed_crds_match_the_types() {
    let dir = repo_root().join("config/crd");
    for crd in muster_api::crd::all() {
        let path = dir.join(muster_api::crd::file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == muster_api::crd::to_yaml(&crd),
            "{} is stale: run `make crds`",
            path.display()
        );
    }
}

#[test]
fn crds_are_structural_with_no_refs() {
    for crd in muster_api::crd::all() {
        let text = serde_json::to_string(&crd).unwrap();
        assert!(
            !text.contains("\"$ref\""),
            "{:?} has a $ref",
            crd.metadata.name
        );
        assert!(!text.contains("\"anyOf\"") || text.contains("x-kubernetes-int-or-string"));
        let v = &crd.spec.versions[0];
        assert!(v
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
    }
}

#[test]
fn model_serving_crd_has_scale_subresource_and_short_name() {
    let crd = muster_api::crd::all().remove(0);
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["ms".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["muster".to_string()][..])
    );
    let scale = crd.spec.versions[0]
        .subresources
        .as_ref()
        .unwrap()
        .scale
        .as_ref()
        .unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.labelSelector")
    );
}
