//! Revisions: a hash over every pod-affecting field of a ModelServing, and the
//! ControllerRevision that records the template behind each hash.
//!
//! Kthena hashes only the roles with replicas zeroed, so a change of gang policy, network
//! topology or scheduler never rolls out (its #690). Muster hashes the whole group template
//! (minus replica counts and rolling-update knobs, which do not change a pod) plus the scheduler.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use muster_api::serving::{ModelServing, Role, ServingGroupTemplate};
use serde::{Deserialize, Serialize};

/// What a revision records: everything needed to build a group's objects at that revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplate {
    /// Scheduler of every pod.
    pub scheduler_name: String,
    /// The group template.
    pub template: ServingGroupTemplate,
}

impl RevisionTemplate {
    /// The template a ModelServing's spec asks for now.
    pub fn of(ms: &ModelServing) -> Self {
        RevisionTemplate {
            scheduler_name: ms.spec.scheduler_name.clone(),
            template: ms.spec.template.clone(),
        }
    }

    /// Hash of the pod-affecting fields, as 10 hex digits.
    pub fn hash(&self) -> String {
        let mut normalised = self.clone();
        normalised
            .template
            .roles
            .iter_mut()
            .for_each(normalise_role);
        // Only pods are affected by the grace period's absence or presence, not its value.
        normalised.template.restart_grace_period_seconds = None;
        let bytes = serde_json::to_vec(&normalised).expect("templates serialise");
        short_hash(&bytes)
    }

    /// Hash of one role's pod-affecting fields (role-level rolling updates).
    pub fn role_hash(&self, role: &Role) -> String {
        let mut role = role.clone();
        normalise_role(&mut role);
        let bytes = serde_json::to_vec(&(&self.scheduler_name, &role)).expect("roles serialise");
        short_hash(&bytes)
    }
}

/// Replica counts and rolling-update knobs do not change what a pod looks like.
fn normalise_role(role: &mut Role) {
    role.replicas = 0;
    role.rolling_update = Default::default();
}

fn short_hash(bytes: &[u8]) -> String {
    let h = xxhash_rust::xxh64::xxh64(bytes, 0);
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// The ControllerRevision recording `template` under `hash` (owner references added by the caller).
pub fn controller_revision(
    ms_name: &str,
    hash: &str,
    number: i64,
    template: &RevisionTemplate,
) -> ControllerRevision {
    let mut cr = ControllerRevision {
        revision: number,
        data: Some(RawExtension(
            serde_json::to_value(template).expect("templates serialise"),
        )),
        ..Default::default()
    };
    cr.metadata.name = Some(super::naming::revision_name(ms_name, hash));
    cr.metadata.labels = Some(
        [
            (
                muster_api::labels::MODEL_SERVING_NAME.to_string(),
                ms_name.to_string(),
            ),
            (muster_api::labels::REVISION.to_string(), hash.to_string()),
        ]
        .into(),
    );
    cr
}

/// Reads the template back from a ControllerRevision written by [`controller_revision`].
pub fn template_of(cr: &ControllerRevision) -> Option<RevisionTemplate> {
    serde_json::from_value(cr.data.as_ref()?.0.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ModelServing {
        let text = include_str!("../../../../config/samples/modelserving-2p4d.yaml");
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn replica_counts_do_not_change_the_revision() {
        let ms = sample();
        let base = RevisionTemplate::of(&ms).hash();
        let mut scaled = ms.clone();
        scaled.spec.replicas = 7;
        scaled.spec.template.roles[0].replicas = 5;
        scaled.spec.template.roles[1].rolling_update.partition =
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
        assert_eq!(RevisionTemplate::of(&scaled).hash(), base);
    }

    #[test]
    fn every_pod_affecting_field_changes_the_revision() {
        let ms = sample();
        let base = RevisionTemplate::of(&ms).hash();
        let mut variants: Vec<ModelServing> = Vec::new();
        let mut v = ms.clone();
        v.spec.template.roles[0].entry_template.spec.containers[0].image = Some("engine:v2".into());
        variants.push(v);
        let mut v = ms.clone();
        v.spec.template.gang_policy = None;
        variants.push(v);
        let mut v = ms.clone();
        v.spec.template.network_topology = None;
        variants.push(v);
        let mut v = ms.clone();
        v.spec.scheduler_name = "default-scheduler".into();
        variants.push(v);
        let mut v = ms.clone();
        v.spec.template.roles[1].worker_replicas = 1;
        v.spec.template.roles[1].worker_template =
            Some(v.spec.template.roles[1].entry_template.clone());
        variants.push(v);
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(
                RevisionTemplate::of(v).hash(),
                base,
                "variant {i} kept the revision"
            );
        }
    }

    #[test]
    fn revision_round_trips_through_a_controller_revision() {
        let t = RevisionTemplate::of(&sample());
        let cr = controller_revision("llama", &t.hash(), 3, &t);
        assert_eq!(template_of(&cr), Some(t));
        assert_eq!(cr.revision, 3);
    }
}
