//! The I/O shell of the ModelServing controller: list what exists, plan, apply the plan with
//! server-side apply (field manager `muster`), write status, record Events.
//!
//! Objects are listed straight from the API server on each reconcile rather than from a watch
//! cache: a cache can lag behind this controller's own writes, and a planner fed a stale view
//! would recreate pods it just created. The watches only decide *when* to reconcile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use muster_api::labels;
use muster_api::serving::ModelServing;
use muster_api::volcano::PodGroup;
use serde_json::json;
use tracing::{info, warn};

use super::observe::Observed;
use super::plan::{plan_serving_groups_with, Delete, Plan};
use crate::metrics::Metrics;
use crate::watch::{self, SharedTopology};

/// Shared state of the reconciler.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// HyperNodes and Nodes, kept from watches, for the network-topology tier choice.
    pub topology: SharedTopology,
}

/// How long `run` waits for the first listing of Nodes and HyperNodes before reconciling
/// anyway (without automatic tiers until they are listed, e.g. when the HyperNode CRD is
/// missing).
const TOPOLOGY_SYNC_WAIT: Duration = Duration::from_secs(30);

/// Errors a reconcile can end with; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Runs the ModelServing controller until `shutdown` completes. With `namespace`, only that
/// namespace is watched (tests run one controller per test namespace).
pub async fn run(
    client: Client,
    metrics: Metrics,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let reporter = Reporter {
        controller: "muster-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let topology = SharedTopology::default();
    let topology_watches = watch::watch_topology(&client, &topology);
    // Groups created before the topology is known would get no automatic tier, so give the
    // first listing a moment (it takes well under a second on a healthy API server).
    let waited = Instant::now();
    while !topology.read().expect("topology lock").synced() {
        if waited.elapsed() > TOPOLOGY_SYNC_WAIT {
            warn!("Nodes/HyperNodes not listed after {TOPOLOGY_SYNC_WAIT:?}; reconciling without automatic network-topology tiers until they are");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        topology,
    });
    let selector = watcher::Config::default().labels(labels::MODEL_SERVING_NAME);
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let controller = Controller::new(
        api::<ModelServing>(&client, &namespace),
        watcher::Config::default(),
    );
    // The backlog gauge reads the controller's own cache: no extra API traffic.
    let store = controller.store();
    let pending = ctx.metrics.pending.clone();
    let backlog = tokio::spawn(async move {
        loop {
            let n = store
                .state()
                .iter()
                .filter(|ms| {
                    let observed = ms.status.as_ref().and_then(|s| s.observed_generation);
                    ms.metadata.generation.is_some() && ms.metadata.generation > observed
                })
                .count();
            pending.set(n as i64);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    controller
        .owns(api::<Pod>(&client, &namespace), selector.clone())
        .owns(api::<Service>(&client, &namespace), selector.clone())
        .owns(api::<PodGroup>(&client, &namespace), selector)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    backlog.abort();
    for w in topology_watches {
        w.abort();
    }
}

fn error_policy(_ms: Arc<ModelServing>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    warn!(error = %err, "will retry");
    Action::requeue(Duration::from_secs(5))
}

/// One reconcile of one ModelServing.
pub async fn reconcile(ms: Arc<ModelServing>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let ns = ms.namespace().unwrap_or_default();
    let name = ms.name_any();
    if ms.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove everything; nothing to do.
        return Ok(Action::await_change());
    }
    let observed = observe(&ctx.client, &ms, &ns, &name).await?;
    let plan = {
        // Planning is synchronous: the read lock is never held across an await.
        let cache = ctx.topology.read().expect("topology lock");
        plan_serving_groups_with(&observed, cache.synced().then(|| cache.topology()))
    };
    apply(&ctx, &ms, &ns, &plan).await?;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    info!(
        modelserving = %format!("{ns}/{name}"),
        creates = plan.create_pods.len(),
        deletes = plan.deletes.len(),
        ready = plan.status.ready_replicas,
        replicas = ms.spec.replicas,
        "reconciled"
    );
    Ok(match plan.requeue_after_secs {
        Some(s) => Action::requeue(Duration::from_secs(s)),
        // A periodic look catches what no watch reports (e.g. a PodGroup condition change).
        None => Action::requeue(Duration::from_secs(300)),
    })
}

async fn observe(
    client: &Client,
    ms: &ModelServing,
    ns: &str,
    name: &str,
) -> Result<Observed, Error> {
    let lp = ListParams::default().labels(&format!("{}={name}", labels::MODEL_SERVING_NAME));
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list pods"))?;
    let services = Api::<Service>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list services"))?;
    let pod_groups = Api::<PodGroup>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list podgroups"))?;
    let revisions = Api::<ControllerRevision>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_err("list controllerrevisions"))?;
    // Only objects this ModelServing controls (a same-named ModelServing recreated with a new
    // UID must not adopt the old one's leftovers before the garbage collector removes them).
    let uid = ms.uid().unwrap_or_default();
    let ours =
        |meta: &kube::api::ObjectMeta| meta.owner_references.iter().flatten().any(|o| o.uid == uid);
    Ok(Observed {
        ms: ms.clone(),
        pods: pods
            .items
            .into_iter()
            .filter(|o| ours(&o.metadata))
            .collect(),
        services: services
            .items
            .into_iter()
            .filter(|o| ours(&o.metadata))
            .collect(),
        pod_groups: pod_groups
            .items
            .into_iter()
            .filter(|o| ours(&o.metadata))
            .collect(),
        revisions: revisions
            .items
            .into_iter()
            .filter(|o| ours(&o.metadata))
            .collect(),
        disruption_budget: Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(kube_err("get poddisruptionbudget"))?
            .filter(|b| ours(&b.metadata)),
        now: k8s_openapi::jiff::Timestamp::now().as_second(),
    })
}

async fn apply(ctx: &Context, ms: &ModelServing, ns: &str, plan: &Plan) -> Result<(), Error> {
    let client = &ctx.client;
    let ssa = PatchParams::apply(labels::FIELD_MANAGER).force();
    let owner_ref = ms
        .controller_owner_ref(&())
        .expect("ModelServing has a uid");

    if let Some(cr) = &plan.record_revision {
        let mut cr = cr.clone();
        cr.metadata.owner_references = Some(vec![owner_ref.clone()]);
        let api = Api::<ControllerRevision>::namespaced(client.clone(), ns);
        create_or_ignore(&api, &cr)
            .await
            .map_err(kube_err("record revision"))?;
    }
    let pg_api = Api::<PodGroup>::namespaced(client.clone(), ns);
    for pg in &plan.apply_pod_groups {
        let name = pg.metadata.name.clone().unwrap_or_default();
        let mut body = serde_json::to_value(pg).expect("PodGroup serialises");
        body["apiVersion"] = json!("scheduling.volcano.sh/v1beta1");
        body["kind"] = json!("PodGroup");
        pg_api
            .patch(&name, &ssa, &Patch::Apply(&body))
            .await
            .map_err(kube_err(format!("apply podgroup {name}")))?;
    }
    if let Some(pdb) = &plan.apply_disruption_budget {
        let mut body = serde_json::to_value(pdb).expect("PDB serialises");
        body["apiVersion"] = json!("policy/v1");
        body["kind"] = json!("PodDisruptionBudget");
        Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
            .patch(&ms.name_any(), &ssa, &Patch::Apply(&body))
            .await
            .map_err(kube_err("apply poddisruptionbudget"))?;
    }
    let svc_api = Api::<Service>::namespaced(client.clone(), ns);
    for svc in &plan.create_services {
        create_or_ignore(&svc_api, svc)
            .await
            .map_err(kube_err("create service"))?;
    }
    let pod_api = Api::<Pod>::namespaced(client.clone(), ns);
    for pod in &plan.create_pods {
        create_or_ignore(&pod_api, pod)
            .await
            .map_err(kube_err("create pod"))?;
        ctx.metrics.pods_created.inc();
    }
    let dp = DeleteParams::background();
    for delete in &plan.deletes {
        let res = match delete {
            Delete::Pod(n) => pod_api.delete(n, &dp).await.map(|_| ()),
            Delete::Service(n) => svc_api.delete(n, &dp).await.map(|_| ()),
            Delete::PodGroup(n) => pg_api.delete(n, &dp).await.map(|_| ()),
        };
        ignore_not_found(res).map_err(kube_err(format!("delete {delete:?}")))?;
        if matches!(delete, Delete::Pod(_)) {
            ctx.metrics.pods_deleted.inc();
        }
    }
    let cr_api = Api::<ControllerRevision>::namespaced(client.clone(), ns);
    for name in &plan.prune_revisions {
        ignore_not_found(cr_api.delete(name, &dp).await.map(|_| ()))
            .map_err(kube_err("prune revision"))?;
    }

    let ms_api = Api::<ModelServing>::namespaced(client.clone(), ns);
    let unchanged = ms
        .status
        .as_ref()
        .is_some_and(|s| same_status(s, &plan.status));
    if !unchanged {
        ms_api
            .patch_status(
                &ms.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": plan.status })),
            )
            .await
            .map_err(kube_err("write status"))?;
    }
    let reference = ms.object_ref(&());
    for ev in &plan.events {
        let event = Event {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason.clone(),
            note: Some(ev.note.clone()),
            action: ev.reason.clone(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            // Events are best effort: never fail a reconcile over one.
            warn!(error = %e, "could not record event");
        }
    }
    Ok(())
}

/// Status equality ignoring condition timestamps (which the planner carries over anyway).
fn same_status(
    a: &muster_api::serving::ModelServingStatus,
    b: &muster_api::serving::ModelServingStatus,
) -> bool {
    let strip = |s: &muster_api::serving::ModelServingStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            );
        }
        s
    };
    strip(a) == strip(b)
}

async fn create_or_ignore<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn ignore_not_found(res: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match res {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    }
}
