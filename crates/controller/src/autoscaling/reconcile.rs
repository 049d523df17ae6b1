//! The I/O shell of the AutoscalingPolicy controller: every period, list the policies, scrape
//! each target's pods, run the pure [`decide`](super::decide) step, apply its decision through
//! the ModelServing scale subresource, write status and record Events.
//!
//! Policies are reconciled concurrently, each under its own timeout, so a policy whose pods
//! hang cannot stall the others. Metric windows live in memory (a restart rebuilds them within
//! one window); the state a decision depends on across restarts (`lastScaleTime`,
//! `panicUntil`) is read back from the status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use muster_api::autoscaling::{
    AutoscalingPolicy, AutoscalingPolicyMetric, AutoscalingPolicyStatus, DisaggregatedTarget,
    HeterogeneousTarget, Target,
};
use muster_api::serving::ModelServing;
use muster_solver::recommender::{MetricSample, RecommenderState};
use serde_json::json;
use tracing::{info, warn};

use super::decide::{
    condition, conditions, decide_homogeneous, recommender_config, restore_state, unsupported,
    MetricsHealth, Observation, PolicyEvent,
};
use super::disagg::{decide_disaggregated, ratio_band, RoleObservation};
use super::hetero::{decide_heterogeneous, hetero_model, HeteroTargetState};
use super::metrics_source::{endpoints, metric_source, Source};
use super::remote::{query_prometheus, read_router};
use super::scrape::read_metric;
use crate::serving::expand::parse_quantity;

/// How often and how patiently policies are evaluated.
#[derive(Debug, Clone)]
pub struct AutoscalerOptions {
    /// Time between two evaluations of every policy (default 15 s).
    pub period: Duration,
    /// Limit for scraping one pod (default 2 s).
    pub scrape_timeout: Duration,
    /// Limit for one policy's whole evaluation (default 10 s).
    pub policy_timeout: Duration,
}

impl Default for AutoscalerOptions {
    fn default() -> Self {
        AutoscalerOptions {
            period: Duration::from_secs(15),
            scrape_timeout: Duration::from_secs(2),
            policy_timeout: Duration::from_secs(10),
        }
    }
}

/// What this process remembers about one policy (keyed by UID).
#[derive(Debug, Default)]
struct Memory {
    generation: Option<i64>,
    samples: Vec<MetricSample>,
    state: Option<RecommenderState>,
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    opts: AutoscalerOptions,
    memory: Mutex<HashMap<String, Memory>>,
}

/// Runs the AutoscalingPolicy controller until `shutdown` completes. With `namespace`, only
/// that namespace's policies are evaluated (tests run one per test namespace).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    opts: AutoscalerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let reporter = Reporter {
        controller: "muster-autoscaler".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        opts,
        memory: Mutex::new(HashMap::new()),
    });
    let mut ticks = tokio::time::interval(ctx.opts.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticks.tick() => tick(&ctx, namespace.as_deref()).await,
        }
    }
}

async fn tick(ctx: &Arc<Ctx>, namespace: Option<&str>) {
    let api: Api<AutoscalingPolicy> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let policies = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            warn!(error = %e, "cannot list AutoscalingPolicies");
            return;
        }
    };
    let live: Vec<String> = policies.iter().filter_map(|p| p.uid()).collect();
    ctx.memory.lock().expect("memory lock").retain(|key, _| {
        // Keys are `<uid>` or `<uid>/<role>`.
        let uid = key.split('/').next().unwrap_or(key);
        live.iter().any(|l| l == uid)
    });
    futures::future::join_all(policies.into_iter().map(|p| {
        let ctx = ctx.clone();
        async move {
            let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
            match tokio::time::timeout(ctx.opts.policy_timeout, reconcile(&ctx, &p)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(policy = %key, error = %e, "autoscaling failed"),
                Err(_) => warn!(policy = %key, "autoscaling timed out"),
            }
        }
    }))
    .await;
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn reconcile(ctx: &Ctx, policy: &AutoscalingPolicy) -> Result<(), kube::Error> {
    let ns = policy.namespace().unwrap_or_default();
    let now = now_s();
    let generation = policy.metadata.generation;
    let previous = policy.status.as_ref();
    if let Some(target) = &policy.spec.heterogeneous_target {
        return reconcile_heterogeneous(ctx, policy, target, &ns, now).await;
    }
    if let Some(target) = &policy.spec.disaggregated_target {
        return reconcile_disaggregated(ctx, policy, target, &ns, now).await;
    }
    let Some(target) = &policy.spec.homogeneous_target else {
        let status = unsupported(previous, generation, now, "unknown");
        return write_status(ctx, policy, &ns, &status).await;
    };
    let uid = policy.uid().unwrap_or_default();
    let ms_name = &target.target.target_ref.name;
    let ms = Api::<ModelServing>::namespaced(ctx.client.clone(), &ns)
        .get_opt(ms_name)
        .await?;
    let config = recommender_config(&policy.spec, target.min_replicas, target.max_replicas);

    let (need, health) = match &ms {
        Some(_) => {
            let m = measure(ctx, &policy.spec.metrics, &target.target, None, &ns).await?;
            (m.need, m.health)
        }
        None => (None, MetricsHealth::Missing("no target".into())),
    };
    let (samples, state) = {
        let mut memory = ctx.memory.lock().expect("memory lock");
        let mem = memory.entry(uid.clone()).or_default();
        if mem.generation != generation {
            // A new spec may measure different metrics or targets: old samples mean nothing.
            mem.samples.clear();
            mem.generation = generation;
        }
        if let Some(v) = need {
            mem.samples.push(MetricSample {
                at_s: now,
                value: v,
            });
        }
        let keep_s = config.as_ref().map_or(600.0, |c| c.stable_window_seconds);
        mem.samples.retain(|s| s.at_s > now - keep_s);
        let status_target = previous.and_then(|p| p.targets.iter().find(|t| &t.name == ms_name));
        (
            mem.samples.clone(),
            restore_state(mem.state.as_ref(), status_target),
        )
    };
    let decision = decide_homogeneous(&Observation {
        generation,
        now_s: now,
        target: ms_name,
        current: ms.as_ref().map(|m| m.spec.replicas),
        samples: &samples,
        metrics: health,
        previous,
        state,
        config,
    });
    if let Some(n) = decision.scale_to {
        Api::<ModelServing>::namespaced(ctx.client.clone(), &ns)
            .patch_scale(
                ms_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": n } })),
            )
            .await?;
        info!(policy = %format!("{ns}/{}", policy.name_any()), modelserving = %ms_name, replicas = n, "scaled");
    }
    // Only a decision that was applied becomes the state to resume from.
    if let Some(state) = decision.state {
        ctx.memory
            .lock()
            .expect("memory lock")
            .entry(uid)
            .or_default()
            .state = Some(state);
    }
    write_status(ctx, policy, &ns, &decision.status).await?;
    publish(ctx, policy, decision.events).await;
    Ok(())
}

/// Reads every metric for `target` and returns the load in instances needed (the largest
/// over the metrics), or the reason when a metric could not be read at all.
async fn measure(
    ctx: &Ctx,
    metrics: &[AutoscalingPolicyMetric],
    target: &Target,
    role: Option<&str>,
    ns: &str,
) -> Result<Measured, kube::Error> {
    let missing = |msg: String, no_pods: bool| Measured {
        need: None,
        first_total: None,
        health: MetricsHealth::Missing(msg),
        no_pods,
    };
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let mut need: Option<f64> = None;
    let mut first_total = None;
    let (mut notes, mut partial) = (Vec::new(), false);
    for metric in metrics {
        let Some(per_instance) = target_value(metric) else {
            let msg = format!(
                "metric {}: targetValue {:?} must be a positive quantity",
                metric.name, metric.target_value.0
            );
            return Ok(missing(msg, false));
        };
        let source = match metric_source(target, role, &metric.name) {
            Ok(s) => s,
            Err(e) => return Ok(missing(e.to_string(), false)),
        };
        let timeout = ctx.opts.scrape_timeout;
        let remote = match &source {
            Source::Pods(_) => None,
            Source::Router { url, name } => {
                Some((read_router(url, name, timeout).await, format!("from {url}")))
            }
            Source::Prometheus { server_url, query } => Some((
                query_prometheus(server_url, query, timeout).await,
                format!("from {server_url}"),
            )),
        };
        let (total, where_) = match (remote, &source) {
            (Some((Ok(v), from)), _) => (v, from),
            (Some((Err(e), _)), _) => {
                return Ok(missing(format!("metric {}: {e}", metric.name), false));
            }
            (None, Source::Pods(pods_source)) => {
                let pods = pods_api
                    .list(&ListParams::default().labels(&pods_source.selector))
                    .await?
                    .items;
                let (eps, skipped) = endpoints(&pods, pods_source.port);
                let mut reading =
                    read_metric(&eps, &pods_source.path, &pods_source.exposed_name, timeout).await;
                reading.failures.extend(skipped);
                let Some(total) = reading.fleet_total() else {
                    let no_pods = reading.failures.is_empty();
                    let why = if no_pods {
                        "no Ready pod to scrape".to_string()
                    } else {
                        format!("no pod answered: {}", describe(&reading.failures))
                    };
                    return Ok(missing(format!("metric {}: {why}", metric.name), no_pods));
                };
                if !reading.failures.is_empty() {
                    partial = true;
                    notes.push(format!(
                        "unreadable, assumed as loaded as the rest: {}",
                        describe(&reading.failures)
                    ));
                }
                let pods = reading.values.len() + reading.failures.len();
                (total, format!("over {pods} pods"))
            }
            // Router and Prometheus sources always answer in `remote`.
            (None, _) => continue,
        };
        first_total.get_or_insert(total);
        let n = total / per_instance;
        need = Some(need.map_or(n, |m: f64| m.max(n)));
        notes.push(format!(
            "{} = {total:.2} {where_} ({n:.2} instances' worth)",
            metric.name
        ));
    }
    let note = notes.join("; ");
    Ok(Measured {
        need,
        first_total,
        health: if partial {
            MetricsHealth::Partial(note)
        } else {
            MetricsHealth::Ok(note)
        },
        no_pods: false,
    })
}

fn target_value(metric: &AutoscalingPolicyMetric) -> Option<f64> {
    parse_quantity(&metric.target_value.0).filter(|v| *v > 0.0 && v.is_finite())
}

/// One target's metrics this tick.
struct Measured {
    /// Instances needed (largest over the metrics).
    need: Option<f64>,
    /// Fleet total of the first metric (heterogeneous demand).
    first_total: Option<f64>,
    health: MetricsHealth,
    /// The target has no Ready pod (e.g. scaled to zero): for a mix that is zero load.
    no_pods: bool,
}

/// One tick of a heterogeneous policy: total demand over every target, the cost-optimal
/// split from the integer program, scale each ModelServing that changes.
async fn reconcile_heterogeneous(
    ctx: &Ctx,
    policy: &AutoscalingPolicy,
    target: &HeterogeneousTarget,
    ns: &str,
    now: f64,
) -> Result<(), kube::Error> {
    let generation = policy.metadata.generation;
    let previous = policy.status.as_ref();
    let ms_api = Api::<ModelServing>::namespaced(ctx.client.clone(), ns);
    let invalid = |msg: String| AutoscalingPolicyStatus {
        observed_generation: generation,
        conditions: vec![condition(
            previous,
            generation,
            now,
            conditions::READY,
            false,
            "InvalidPolicy",
            msg,
        )],
        targets: previous.map(|p| p.targets.clone()).unwrap_or_default(),
    };
    let yaml = match &target.cost_policy {
        None => None,
        Some(r) => {
            let key = r.key.clone().unwrap_or_else(|| "cost-policy.yaml".into());
            let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .get_opt(&r.config_map_name)
                .await?;
            match cm.and_then(|c| c.data).and_then(|mut d| d.remove(&key)) {
                Some(y) => Some(y),
                None => {
                    let msg = format!(
                        "cost policy ConfigMap {} has no key {key:?}",
                        r.config_map_name
                    );
                    return write_status(ctx, policy, ns, &invalid(msg)).await;
                }
            }
        }
    };
    let per_instance = policy
        .spec
        .metrics
        .first()
        .and_then(target_value)
        .unwrap_or(1.0);
    let config = recommender_config(&policy.spec, 0, 1_000_000);
    let model = hetero_model(target, per_instance, yaml.as_deref());
    let (model, config) = match (model, config) {
        (Ok(m), Ok(c)) => (m, c),
        (Err(e), _) | (_, Err(e)) => {
            return write_status(ctx, policy, ns, &invalid(e)).await;
        }
    };

    let mut states = Vec::new();
    let (mut demand, mut notes, mut missing) = (0.0, Vec::new(), Vec::new());
    for p in &target.params {
        let name = &p.target.target_ref.name;
        let Some(ms) = ms_api.get_opt(name).await? else {
            let msg = format!("ModelServing {name} not found");
            let status = AutoscalingPolicyStatus {
                observed_generation: generation,
                conditions: vec![
                    condition(
                        previous,
                        generation,
                        now,
                        conditions::READY,
                        false,
                        "TargetNotFound",
                        msg.clone(),
                    ),
                    condition(
                        previous,
                        generation,
                        now,
                        conditions::TARGET_FOUND,
                        false,
                        "TargetNotFound",
                        msg,
                    ),
                ],
                targets: previous.map(|p| p.targets.clone()).unwrap_or_default(),
            };
            return write_status(ctx, policy, ns, &status).await;
        };
        states.push(HeteroTargetState {
            name: name.clone(),
            current: ms.spec.replicas,
        });
        let m = measure(ctx, &policy.spec.metrics, &p.target, None, ns).await?;
        match (m.first_total, m.health) {
            (Some(t), _) => {
                demand += t;
                notes.push(format!("{name}: {t:.2}"));
            }
            // No pod to read is no load for a mix (a target scaled to zero).
            (None, _) if m.no_pods => notes.push(format!("{name}: no Ready pods")),
            (None, MetricsHealth::Missing(why)) => missing.push(format!("{name}: {why}")),
            (None, _) => missing.push(format!("{name}: no value")),
        }
    }
    let uid = policy.uid().unwrap_or_default();
    let smoothed = {
        let mut memory = ctx.memory.lock().expect("memory lock");
        let mem = memory.entry(uid).or_default();
        if mem.generation != generation {
            mem.samples.clear();
            mem.generation = generation;
        }
        if missing.is_empty() {
            mem.samples.push(MetricSample {
                at_s: now,
                value: demand,
            });
        }
        mem.samples
            .retain(|s| s.at_s > now - config.stable_window_seconds);
        let mean = |window: f64| {
            let v: Vec<f64> = mem
                .samples
                .iter()
                .filter(|s| s.at_s > now - window)
                .map(|s| s.value)
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        // The stable mean smooths noise; the panic-window mean lets a burst through at once.
        match (
            mean(config.stable_window_seconds),
            mean(config.panic_window_seconds),
        ) {
            (Some(s), Some(p)) => Some(s.max(p)),
            (s, p) => s.or(p),
        }
    };
    let note = if missing.is_empty() {
        format!("demand {demand:.2} ({})", notes.join(", "))
    } else {
        format!("unreadable: {}", missing.join("; "))
    };
    let smoothed = if missing.is_empty() { smoothed } else { None };
    let decision = decide_heterogeneous(
        &model,
        &states,
        smoothed,
        &note,
        config.scale_down_cooldown_seconds,
        previous,
        generation,
        now,
    );
    for (name, n) in &decision.scale {
        ms_api
            .patch_scale(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": n } })),
            )
            .await?;
        info!(policy = %format!("{ns}/{}", policy.name_any()), modelserving = %name, replicas = n, "scaled");
    }
    write_status(ctx, policy, ns, &decision.status).await?;
    publish(ctx, policy, decision.events).await;
    Ok(())
}

/// One tick of a disaggregated policy: each role recommended on its own metrics, the pair
/// projected into the ratio band, role replicas patched on the ModelServing.
async fn reconcile_disaggregated(
    ctx: &Ctx,
    policy: &AutoscalingPolicy,
    target: &DisaggregatedTarget,
    ns: &str,
    now: f64,
) -> Result<(), kube::Error> {
    let generation = policy.metadata.generation;
    let previous = policy.status.as_ref();
    let uid = policy.uid().unwrap_or_default();
    let ms_name = &target.target_ref.name;
    let ms_api = Api::<ModelServing>::namespaced(ctx.client.clone(), ns);
    let fail = |reason: &str, msg: String| AutoscalingPolicyStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                previous,
                generation,
                now,
                conditions::READY,
                false,
                reason,
                msg.clone(),
            ),
            condition(
                previous,
                generation,
                now,
                conditions::TARGET_FOUND,
                reason != "TargetNotFound",
                reason,
                msg,
            ),
        ],
        targets: previous.map(|p| p.targets.clone()).unwrap_or_default(),
    };
    let Some(ms) = ms_api.get_opt(ms_name).await? else {
        let status = fail(
            "TargetNotFound",
            format!("ModelServing {ms_name} not found"),
        );
        return write_status(ctx, policy, ns, &status).await;
    };
    let ratio = match &target.ratio_constraint {
        None => None,
        Some(c) => match ratio_band(c) {
            Ok(b) => Some((c, b)),
            Err(e) => return write_status(ctx, policy, ns, &fail("InvalidPolicy", e)).await,
        },
    };
    let mut roles = Vec::new();
    for (name, param) in &target.roles {
        let config = match recommender_config(&policy.spec, param.min_replicas, param.max_replicas)
        {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("role {name}: {e}");
                return write_status(ctx, policy, ns, &fail("InvalidPolicy", msg)).await;
            }
        };
        let current = ms
            .spec
            .template
            .roles
            .iter()
            .find(|r| &r.name == name)
            .map(|r| r.replicas);
        let metrics = if param.metrics.is_empty() {
            &policy.spec.metrics
        } else {
            &param.metrics
        };
        let source = Target {
            target_ref: target.target_ref.clone(),
            metric_sources: param.metric_sources.clone(),
        };
        let m = match current {
            Some(_) => measure(ctx, metrics, &source, Some(name), ns).await?,
            None => Measured {
                need: None,
                first_total: None,
                health: MetricsHealth::Missing("no such role".into()),
                no_pods: true,
            },
        };
        let key = format!("{uid}/{name}");
        let status_name = format!("{ms_name}/{name}");
        let (samples, state) = {
            let mut memory = ctx.memory.lock().expect("memory lock");
            let mem = memory.entry(key).or_default();
            if mem.generation != generation {
                mem.samples.clear();
                mem.generation = generation;
            }
            if let Some(v) = m.need {
                mem.samples.push(MetricSample {
                    at_s: now,
                    value: v,
                });
            }
            mem.samples
                .retain(|s| s.at_s > now - config.stable_window_seconds);
            let status_target =
                previous.and_then(|p| p.targets.iter().find(|t| t.name == status_name));
            (
                mem.samples.clone(),
                restore_state(mem.state.as_ref(), status_target),
            )
        };
        roles.push(RoleObservation {
            role: name.clone(),
            current,
            config,
            samples,
            metrics: m.health,
            state,
        });
    }
    let decision = decide_disaggregated(ms_name, &roles, ratio, previous, generation, now);
    if !decision.scale.is_empty() {
        // Roles is a list, so a merge patch replaces it whole; the resourceVersion makes that
        // fail (409, retried next tick) instead of overwriting a concurrent edit.
        let mut roles = ms.spec.template.roles.clone();
        for (role, n) in &decision.scale {
            if let Some(r) = roles.iter_mut().find(|r| &r.name == role) {
                r.replicas = *n;
            }
        }
        let body = json!({
            "metadata": { "resourceVersion": ms.metadata.resource_version },
            "spec": { "template": { "roles": roles } }
        });
        ms_api
            .patch(ms_name, &PatchParams::default(), &Patch::Merge(&body))
            .await?;
        info!(policy = %format!("{ns}/{}", policy.name_any()), modelserving = %ms_name, roles = ?decision.scale, "scaled roles");
    }
    {
        let mut memory = ctx.memory.lock().expect("memory lock");
        for (role, state) in decision.states {
            memory.entry(format!("{uid}/{role}")).or_default().state = Some(state);
        }
    }
    write_status(ctx, policy, ns, &decision.status).await?;
    publish(ctx, policy, decision.events).await;
    Ok(())
}

async fn publish(ctx: &Ctx, policy: &AutoscalingPolicy, events: Vec<PolicyEvent>) {
    let reference = policy.object_ref(&());
    for ev in events {
        let event = Event {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            action: ev.reason.clone(),
            reason: ev.reason,
            note: Some(ev.note),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            // Events are best effort: never fail a tick over one.
            warn!(error = %e, "could not record event");
        }
    }
}

fn describe(failures: &std::collections::BTreeMap<String, String>) -> String {
    failures
        .iter()
        .take(5)
        .map(|(p, e)| format!("{p}: {e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn write_status(
    ctx: &Ctx,
    policy: &AutoscalingPolicy,
    ns: &str,
    status: &muster_api::autoscaling::AutoscalingPolicyStatus,
) -> Result<(), kube::Error> {
    if policy.status.as_ref() == Some(status) {
        return Ok(());
    }
    Api::<AutoscalingPolicy>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    Ok(())
}
