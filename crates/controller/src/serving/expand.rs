//! Expansion: the objects one ServingGroup consists of at one revision — its Volcano PodGroup,
//! one headless Service per role instance, and one entry plus `workerReplicas` worker pods per
//! role instance. Pure functions of (ModelServing identity, group index, revision template).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Pod, PodSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use muster_api::labels::{self, env};
use muster_api::serving::{PodTemplateSpec, Role};
use muster_api::volcano::{PodGroup, PodGroupSpec, SubGroupPolicySpec};

use super::naming;
use super::revision::RevisionTemplate;

/// Identity of the ModelServing whose objects are being built.
#[derive(Clone, Debug)]
pub struct Owner {
    /// ModelServing name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID, for owner references (cascading deletion).
    pub uid: String,
    /// Volcano queue (annotation on the ModelServing), if any.
    pub queue: Option<String>,
}

impl Owner {
    fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "workload.muster.dev/v1alpha1".into(),
            kind: "ModelServing".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner_reference()]),
            ..Default::default()
        }
    }
}

/// Labels shared by every object of a group.
pub fn group_labels(owner: &Owner, group: i32, revision: &str) -> BTreeMap<String, String> {
    [
        (labels::MODEL_SERVING_NAME, owner.name.clone()),
        (labels::GROUP_NAME, naming::group_name(&owner.name, group)),
        (labels::GROUP_INDEX, group.to_string()),
        (labels::REVISION, revision.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Pods in one instance of `role`.
pub fn pods_per_instance(role: &Role) -> i32 {
    1 + role.worker_replicas
}

/// Role instances of `role` that must be gang-scheduled together.
fn min_role_replicas(template: &RevisionTemplate, role: &Role) -> i32 {
    template
        .template
        .gang_policy
        .as_ref()
        .and_then(|g| g.min_role_replicas.as_ref())
        .and_then(|m| m.get(&role.name).copied())
        .unwrap_or(role.replicas)
        .min(role.replicas)
}

/// The Volcano PodGroup of a group: minMember, minResources, one subGroupPolicy per role and
/// the group's network topology. Status is Volcano's and never written here.
pub fn pod_group(
    owner: &Owner,
    group: i32,
    revision: &str,
    template: &RevisionTemplate,
) -> PodGroup {
    let roles = &template.template.roles;
    let mut min_member = 0;
    let mut min_resources: BTreeMap<String, f64> = BTreeMap::new();
    let mut sub_groups = Vec::new();
    for role in roles {
        let gang = min_role_replicas(template, role);
        min_member += gang * pods_per_instance(role);
        add_requests(&mut min_resources, &role.entry_template.spec, gang as f64);
        if let Some(worker) = &role.worker_template {
            add_requests(
                &mut min_resources,
                &worker.spec,
                (gang * role.worker_replicas) as f64,
            );
        }
        sub_groups.push(SubGroupPolicySpec {
            name: Some(role.name.clone()),
            label_selector: Some(LabelSelector {
                match_labels: Some(
                    [
                        (
                            labels::GROUP_NAME.to_string(),
                            naming::group_name(&owner.name, group),
                        ),
                        (labels::ROLE.to_string(), role.name.clone()),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            match_label_keys: Some(vec![labels::ROLE_ID.to_string()]),
            sub_group_size: Some(pods_per_instance(role)),
            min_sub_groups: Some(gang),
            network_topology: template
                .template
                .network_topology
                .as_ref()
                .and_then(|t| t.role_policy.clone()),
        });
    }
    let spec = PodGroupSpec {
        min_member: Some(min_member),
        min_resources: Some(
            min_resources
                .into_iter()
                .map(|(k, v)| (k, Quantity(format_quantity(v))))
                .collect(),
        ),
        queue: Some(owner.queue.clone().unwrap_or_else(|| "default".into())),
        network_topology: template
            .template
            .network_topology
            .as_ref()
            .and_then(|t| t.group_policy.clone()),
        sub_group_policy: Some(sub_groups),
        ..Default::default()
    };
    let mut pg = PodGroup::new(&naming::group_name(&owner.name, group), spec);
    pg.metadata = owner.meta(
        naming::group_name(&owner.name, group),
        group_labels(owner, group, revision),
    );
    pg
}

/// Adds `count` × the pod's container requests (limits where no request is set, as the
/// scheduler does for extended resources) to `total`.
fn add_requests(total: &mut BTreeMap<String, f64>, spec: &PodSpec, count: f64) {
    for c in &spec.containers {
        let Some(res) = &c.resources else { continue };
        let mut per: BTreeMap<&String, &Quantity> = BTreeMap::new();
        for (k, v) in res.limits.iter().flatten() {
            per.insert(k, v);
        }
        for (k, v) in res.requests.iter().flatten() {
            per.insert(k, v);
        }
        for (k, v) in per {
            if let Some(n) = parse_quantity(&v.0) {
                *total.entry(k.clone()).or_default() += n * count;
            }
        }
    }
}

/// Parses the Kubernetes quantity forms pod specs use (plain, milli, binary and decimal suffixes).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in suffixes {
        if let Some(num) = q.strip_suffix(suffix) {
            return num.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse::<f64>().ok()
}

/// Formats a summed quantity: integers plainly, fractions in milli-units.
fn format_quantity(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{}m", (v * 1000.0).round() as i64)
    }
}

/// Position of one pod inside its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodSlot<'a> {
    /// Role name.
    pub role: &'a str,
    /// Role instance index.
    pub role_index: i32,
    /// 0 = entry, 1.. = workers.
    pub pod_index: i32,
}

/// Every pod slot of a group at `template`, in creation order.
pub fn pod_slots(template: &RevisionTemplate) -> Vec<PodSlot<'_>> {
    let mut out = Vec::new();
    for role in &template.template.roles {
        for r in 0..role.replicas {
            for i in 0..pods_per_instance(role) {
                out.push(PodSlot {
                    role: &role.name,
                    role_index: r,
                    pod_index: i,
                });
            }
        }
    }
    out
}

/// The pod for `slot` of `group`.
pub fn pod(
    owner: &Owner,
    group: i32,
    revision: &str,
    template: &RevisionTemplate,
    slot: PodSlot<'_>,
) -> Pod {
    let role = template
        .template
        .roles
        .iter()
        .find(|r| r.name == slot.role)
        .expect("slot comes from this template");
    let source: &PodTemplateSpec = if slot.pod_index == 0 {
        &role.entry_template
    } else {
        role.worker_template
            .as_ref()
            .unwrap_or(&role.entry_template)
    };
    let name = naming::pod_name(
        &owner.name,
        group,
        slot.role,
        slot.role_index,
        slot.pod_index,
    );
    let service = naming::service_name(&owner.name, group, slot.role, slot.role_index);

    // The template's labels and annotations first, Muster's identity labels over them: the
    // controller finds its pods by these, so a template must not be able to rename them.
    let mut pod_labels: BTreeMap<String, String> = source
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    pod_labels.extend(group_labels(owner, group, revision));
    pod_labels.insert(labels::ROLE.into(), slot.role.into());
    pod_labels.insert(
        labels::ROLE_ID.into(),
        naming::role_id(slot.role, slot.role_index),
    );
    pod_labels.insert(labels::WORKER_INDEX.into(), slot.pod_index.to_string());
    pod_labels.insert(labels::ROLE_TEMPLATE_HASH.into(), template.role_hash(role));
    if slot.pod_index == 0 {
        pod_labels.insert(labels::ENTRY.into(), "true".into());
    }
    let mut annotations: BTreeMap<String, String> = source
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert(
        labels::VOLCANO_GROUP_NAME.into(),
        naming::group_name(&owner.name, group),
    );
    annotations.insert(
        labels::VOLCANO_TASK_SPEC.into(),
        naming::role_id(slot.role, slot.role_index),
    );

    let mut spec = source.spec.clone();
    spec.scheduler_name = Some(template.scheduler_name.clone());
    spec.hostname = Some(name.clone());
    spec.subdomain = Some(service);
    let injected = [
        (
            env::ENTRY_ADDRESS,
            format!(
                "{}.{}",
                naming::pod_name(&owner.name, group, slot.role, slot.role_index, 0),
                owner.namespace
            ),
        ),
        (env::GROUP_SIZE, pods_per_instance(role).to_string()),
        (env::WORKER_INDEX, slot.pod_index.to_string()),
        (env::ROLE_NAME, slot.role.to_string()),
        (env::ROLE_INDEX, slot.role_index.to_string()),
        (env::GROUP_INDEX, group.to_string()),
    ];
    for container in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let vars = container.env.get_or_insert_with(Vec::new);
        vars.retain(|v| !injected.iter().any(|(k, _)| v.name == *k));
        vars.extend(injected.iter().map(|(k, v)| EnvVar {
            name: (*k).into(),
            value: Some(v.clone()),
            value_from: None,
        }));
    }

    let mut meta = owner.meta(name, pod_labels);
    meta.annotations = Some(annotations);
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// The headless Service of one role instance; it selects only the entry pod and publishes it
/// before it is ready, so workers can find their entry pod while the model loads.
pub fn service(owner: &Owner, group: i32, revision: &str, role: &str, role_index: i32) -> Service {
    let mut svc_labels = group_labels(owner, group, revision);
    svc_labels.insert(labels::ROLE.into(), role.into());
    svc_labels.insert(labels::ROLE_ID.into(), naming::role_id(role, role_index));
    let selector: BTreeMap<String, String> = [
        (
            labels::GROUP_NAME.to_string(),
            naming::group_name(&owner.name, group),
        ),
        (
            labels::ROLE_ID.to_string(),
            naming::role_id(role, role_index),
        ),
        (labels::ENTRY.to_string(), "true".to_string()),
    ]
    .into();
    Service {
        metadata: owner.meta(
            naming::service_name(&owner.name, group, role, role_index),
            svc_labels,
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector),
            // A headless Service without ports is valid and keeps DNS A records for the pod.
            ports: None::<Vec<ServicePort>>,
            ..Default::default()
        }),
        status: None,
    }
}

/// One PodDisruptionBudget per ModelServing: voluntary evictions (node drains) may take one
/// pod at a time. Every pod of a gang matters, so one evicted pod already costs a whole group;
/// allowing more would let a drain break several groups at once.
pub fn disruption_budget(owner: &Owner) -> PodDisruptionBudget {
    let mut labels = BTreeMap::new();
    labels.insert(labels::MODEL_SERVING_NAME.to_string(), owner.name.clone());
    PodDisruptionBudget {
        metadata: owner.meta(owner.name.clone(), labels.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_api::serving::ModelServing;

    fn owner() -> Owner {
        Owner {
            name: "llama".into(),
            namespace: "ns".into(),
            uid: "uid-1".into(),
            queue: None,
        }
    }

    fn template(file: &str) -> RevisionTemplate {
        let text = std::fs::read_to_string(format!(
            "{}/../../config/samples/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let ms: ModelServing = serde_yaml::from_str(&text).unwrap();
        RevisionTemplate::of(&ms)
    }

    #[test]
    fn pod_group_of_2p4d_gangs_the_minimum_role_replicas() {
        let t = template("modelserving-2p4d.yaml");
        let pg = pod_group(&owner(), 0, "rev", &t);
        // minRoleReplicas: prefill 1, decode 2; one pod per instance.
        assert_eq!(pg.spec.min_member, Some(3));
        let res = pg.spec.min_resources.unwrap();
        // 1 prefill × 2 GPUs + 2 decode × 1 GPU.
        assert_eq!(res.get("nvidia.com/gpu").map(|q| q.0.as_str()), Some("4"));
        let subs = pg.spec.sub_group_policy.unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].name.as_deref(), Some("prefill"));
        assert_eq!(subs[0].min_sub_groups, Some(1));
        assert_eq!(subs[1].min_sub_groups, Some(2));
        assert_eq!(subs[1].sub_group_size, Some(1));
        assert_eq!(
            subs[0]
                .network_topology
                .as_ref()
                .unwrap()
                .highest_tier_allowed,
            Some(1)
        );
        assert_eq!(
            pg.spec.network_topology.unwrap().highest_tier_allowed,
            Some(2)
        );
        assert_eq!(pg.metadata.name.as_deref(), Some("llama-0"));
        assert_eq!(pg.metadata.owner_references.unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn multi_node_role_instances_have_entry_and_worker_pods_with_env() {
        let t = template("modelserving-multinode-tp.yaml");
        let slots = pod_slots(&t);
        assert_eq!(slots.len(), 2);
        let worker = pod(&owner(), 1, "rev", &t, slots[1]);
        assert_eq!(worker.metadata.name.as_deref(), Some("llama-1-engine-0-1"));
        let labels = worker.metadata.labels.as_ref().unwrap();
        assert!(!labels.contains_key(labels::ENTRY));
        assert_eq!(labels[labels::ROLE_ID], "engine-0");
        assert!(
            !labels.contains_key("app"),
            "workers take the worker template's labels"
        );
        let entry = pod(&owner(), 1, "rev", &t, slots[0]);
        assert_eq!(
            entry.metadata.labels.as_ref().unwrap()["app"],
            "deepseek-tp16",
            "template labels are kept"
        );
        let env: BTreeMap<_, _> = worker.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(env["ENTRY_ADDRESS"], "llama-1-engine-0-0.ns");
        assert_eq!(env["GROUP_SIZE"], "2");
        assert_eq!(env["WORKER_INDEX"], "1");
        assert_eq!(env["GROUP_INDEX"], "1");
        let spec = worker.spec.unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some("volcano"));
        assert_eq!(spec.subdomain.as_deref(), Some("llama-1-engine-0-0"));
        let ann = worker.metadata.annotations.unwrap();
        assert_eq!(ann[labels::VOLCANO_GROUP_NAME], "llama-1");
        let pg = pod_group(&owner(), 1, "rev", &t);
        assert_eq!(pg.spec.min_member, Some(2));
        assert_eq!(pg.spec.min_resources.unwrap()["nvidia.com/gpu"].0, "16");
    }

    #[test]
    fn template_labels_cannot_override_identity_labels() {
        let mut t = template("modelserving-single.yaml");
        let meta = t.template.roles[0]
            .entry_template
            .metadata
            .get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(labels::GROUP_NAME.into(), "evil".into());
        let p = pod(&owner(), 0, "rev", &t, pod_slots(&t)[0]);
        assert_eq!(p.metadata.labels.unwrap()[labels::GROUP_NAME], "llama-0");
    }

    #[test]
    fn service_selects_only_the_entry_pod() {
        let s = service(&owner(), 2, "rev", "decode", 3);
        assert_eq!(s.metadata.name.as_deref(), Some("llama-2-decode-3-0"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        let sel = spec.selector.unwrap();
        assert_eq!(sel[labels::ENTRY], "true");
        assert_eq!(sel[labels::ROLE_ID], "decode-3");
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("8"), Some(8.0));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2Gi"), Some(2.0 * 1024f64.powi(3)));
        assert_eq!(format_quantity(1.5), "1500m");
        assert_eq!(format_quantity(16.0), "16");
    }
}
