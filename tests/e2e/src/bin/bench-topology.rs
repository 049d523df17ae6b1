//! Topology placement benchmark (`make bench-topology`, normally through
//! `hack/bench-topology.sh`, which brings up a private 256-node cluster for it).
//!
//! Places the same seeded list of gangs twice on the local control plane, once per mode, with
//! the real ModelServing controller (in process) creating PodGroups and pods, the real
//! vc-scheduler placing them and kwok binding them:
//!
//! - `volcano`: ModelServings without `networkTopology` and with the controller's automatic tier
//!   choice switched off (annotation `topology.muster.dev/tier-choice: off`), so the PodGroups
//!   carry none: what a user gets from Volcano alone with Kthena-style manifests;
//! - `muster`: the same ModelServings with tier choice left on, so the PodGroups carry the
//!   controller's own choice (group and role-instance tiers, on allocatable capacity);
//! - `muster-free` (optional): the benchmark itself lists HyperNodes, Nodes and Pods before each
//!   wave into a `muster_topology::Topology` and `tier_choice::choose` picks the tiers on *free*
//!   capacity; they are written as explicit `networkTopology`, which the controller keeps.
//!
//! Every mode counts the PodGroups that carry a `networkTopology`, so a baseline that is not one
//! (or a Muster mode that chose nothing) shows in the report.
//!
//! Gangs arrive in waves (default 10); the next wave starts when every gang of the current one
//! is bound or nothing changed for `--settle` seconds. Metrics are taken once the last wave has
//! settled; definitions are in `docs/benchmarks.md` ("Topology"). Writes
//! `target/bench/topology.json` and `.md` and prints the table.
//!
//! Usage: bench-topology [--seed N] [--gangs N] [--wave N] [--settle SECONDS]
//!                       [--modes volcano,muster[,muster-free]] (the first mode is the baseline)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use muster_api::labels;
use muster_api::serving::{ModelServing, NetworkTopology};
use muster_api::volcano::{HyperNode, NetworkTopologySpec, PodGroup};
use muster_e2e::{repo_root, ControllerHandle, TestNamespace};
use muster_topology::tier_choice::{self, ChoiceOptions, GroupDemand, TierChoice};
use muster_topology::Topology;
use serde::Serialize;
use serde_json::{json, Value};

/// ModelServing annotation that switches the controller's automatic tier choice (`off` here).
const TIER_CHOICE_ANNOTATION: &str = "topology.muster.dev/tier-choice";

/// GPUs of the pod that every multi-node piece of the mix uses (a whole node).
const FULL_NODE_GPUS: i64 = 8;

// ---------------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------------

/// Shape family of a gang.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// One pod of 1, 2, 4 or 8 GPUs.
    Single,
    /// One tensor-parallel instance of 2–4 pods × 8 GPUs (fits one rack).
    Tp,
    /// Disaggregated: 1–2 prefill and 1–2 decode instances of one 4- or 8-GPU pod each.
    Pd,
}

/// One role of a gang.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct RoleShape {
    name: &'static str,
    instances: u32,
    pods_per_instance: u32,
    gpus_per_pod: u32,
}

/// One gang (one ModelServing with one ServingGroup).
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Gang {
    name: String,
    kind: Kind,
    roles: Vec<RoleShape>,
}

impl Gang {
    fn pods(&self) -> u32 {
        self.roles
            .iter()
            .map(|r| r.instances * r.pods_per_instance)
            .sum()
    }

    fn gpus(&self) -> i64 {
        self.roles
            .iter()
            .map(|r| i64::from(r.instances * r.pods_per_instance * r.gpus_per_pod))
            .sum()
    }
}

/// The seeded mix: 60% single-node, 20% multi-node TP, 20% PD (mean ≈ 10.7 GPUs a gang, so
/// 200 gangs ask for about 104% of a 2048-GPU cluster: it fills up and a few do not fit).
fn workload(seed: u64, count: usize) -> Vec<Gang> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|i| {
            let roll = rng.u32(0..100);
            let (kind, roles) = if roll < 60 {
                let gpus = [1, 2, 4, 8][rng.usize(0..4)];
                (Kind::Single, vec![role("server", 1, 1, gpus)])
            } else if roll < 80 {
                (Kind::Tp, vec![role("engine", 1, rng.u32(2..=4), 8)])
            } else {
                let gpus = [4, 8][rng.usize(0..2)];
                (
                    Kind::Pd,
                    vec![
                        role("prefill", rng.u32(1..=2), 1, gpus),
                        role("decode", rng.u32(1..=2), 1, gpus),
                    ],
                )
            };
            Gang {
                name: format!("g{i:03}-{kind:?}").to_lowercase(),
                kind,
                roles,
            }
        })
        .collect()
}

fn role(name: &'static str, instances: u32, pods: u32, gpus: u32) -> RoleShape {
    RoleShape {
        name,
        instances,
        pods_per_instance: pods,
        gpus_per_pod: gpus,
    }
}

fn pod_template(gang: &str, gpus: u32) -> Value {
    json!({
        "metadata": {"labels": {"app": gang}},
        "spec": {"containers": [{
            "name": "engine",
            "image": "muster/engine-sim:latest",
            "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}
        }]}
    })
}

/// The ModelServing of a gang, without any `networkTopology`; `auto_tiers: false` switches the
/// controller's automatic tier choice off.
fn modelserving(gang: &Gang, auto_tiers: bool) -> Result<ModelServing> {
    let roles: Vec<Value> = gang
        .roles
        .iter()
        .map(|r| {
            let mut v = json!({
                "name": r.name,
                "replicas": r.instances,
                "workerReplicas": r.pods_per_instance - 1,
                "tensorParallelSize": r.pods_per_instance * r.gpus_per_pod,
                "entryTemplate": pod_template(&gang.name, r.gpus_per_pod),
            });
            if r.pods_per_instance > 1 {
                v["workerTemplate"] = pod_template(&gang.name, r.gpus_per_pod);
            }
            v
        })
        .collect();
    let doc = json!({
        "apiVersion": "workload.muster.dev/v1alpha1",
        "kind": "ModelServing",
        "metadata": {
            "name": gang.name,
            "annotations": if auto_tiers {
                json!({labels::VOLCANO_QUEUE_NAME: "default"})
            } else {
                json!({labels::VOLCANO_QUEUE_NAME: "default", TIER_CHOICE_ANNOTATION: "off"})
            }
        },
        "spec": {
            "replicas": 1,
            "schedulerName": "volcano",
            "template": {"roles": roles},
            "recoveryPolicy": "ServingGroupRecreate"
        }
    });
    serde_json::from_value(doc).with_context(|| format!("ModelServing of {}", gang.name))
}

// ---------------------------------------------------------------------------------------------
// Muster's tier choice → ModelServing networkTopology
// ---------------------------------------------------------------------------------------------

/// The `networkTopology` that Muster's tier choice gives: the group's constraint, and one role
/// policy for every role instance. The API has one `rolePolicy` for all roles; when roles differ
/// the loosest (highest-tier) one is used so no role gets a bound its choice did not allow, and
/// an unconstrained role makes the role policy empty.
fn network_topology(choice: &TierChoice) -> NetworkTopology {
    let roles: Vec<Option<NetworkTopologySpec>> = choice
        .roles
        .iter()
        .map(|r| r.instance.outcome.network_topology())
        .collect();
    let role_policy = if roles.iter().any(Option::is_none) {
        None
    } else {
        roles
            .into_iter()
            .flatten()
            .max_by_key(|s| s.highest_tier_allowed.unwrap_or(i32::MAX))
    };
    NetworkTopology {
        group_policy: choice.group.outcome.network_topology(),
        role_policy,
    }
}

async fn list_topology(client: &Client) -> Result<Topology> {
    let lp = ListParams::default();
    let hns = Api::<HyperNode>::all(client.clone()).list(&lp).await?.items;
    let nodes = Api::<Node>::all(client.clone()).list(&lp).await?.items;
    let pods = Api::<Pod>::all(client.clone()).list(&lp).await?.items;
    Ok(Topology::build(&hns, &nodes, &pods))
}

// ---------------------------------------------------------------------------------------------
// Metrics (pure)
// ---------------------------------------------------------------------------------------------

/// Where one gang's pods ended up.
#[derive(Clone, Debug, Default, Serialize)]
struct Placement {
    /// Node of every pod (bound pods only).
    nodes: Vec<String>,
    /// Per role instance (`role/role-id`): nodes of its bound pods.
    instances: BTreeMap<String, Vec<String>>,
}

/// Tier spanned by a set of nodes: 0 on one node, else the tier of their lowest common
/// HyperNode, and `top` (one above the highest real tier, Volcano's virtual cluster-top
/// HyperNode) when they share none.
fn span_tier(t: &Topology, nodes: &[String], top: i32) -> i32 {
    let distinct: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    if distinct.len() <= 1 {
        return 0;
    }
    t.lca(distinct).map_or(top, |l| l.tier)
}

/// Free GPUs on nodes too small for one pod of any pending gang (with nothing pending: for
/// one full-node pod, the piece every multi-node gang of the mix is made of).
fn stranded_gpus(t: &Topology, pending: &[&Gang]) -> i64 {
    let smallest_piece = pending
        .iter()
        .flat_map(|g| g.roles.iter().map(|r| i64::from(r.gpus_per_pod)))
        .min()
        .unwrap_or(FULL_NODE_GPUS);
    t.nodes()
        .map(|(_, n)| n.free().gpu)
        .filter(|&f| f > 0 && f < smallest_piece)
        .sum()
}

/// Results of one mode.
#[derive(Clone, Debug, Serialize)]
struct ModeReport {
    mode: String,
    gangs: usize,
    scheduled: usize,
    unscheduled: usize,
    unscheduled_gpus: i64,
    /// Scheduled gangs whose pods all sit under one tier-1 HyperNode.
    in_one_rack: f64,
    /// The same over scheduled gangs of more than one pod.
    multi_pod_in_one_rack: f64,
    /// Scheduled multi-pod gangs inside one tier-2 HyperNode.
    multi_pod_in_one_spine: f64,
    /// Mean over scheduled multi-pod gangs of `span_tier` of all their pods.
    mean_group_lca_tier: f64,
    /// Mean over scheduled PD gangs of the tier spanned by their prefill and decode pods.
    mean_pd_lca_tier: f64,
    /// Multi-pod role instances of scheduled gangs inside one rack.
    multi_pod_instances_in_one_rack: f64,
    multi_pod_instances: usize,
    /// Free GPUs at the end / all GPUs.
    free_gpu_fraction: f64,
    /// Stranded GPUs (see `stranded_gpus`) / all GPUs.
    stranded_gpu_fraction: f64,
    /// Free GPUs on partly used nodes (cannot host a full-node pod) / all GPUs.
    partial_node_free_fraction: f64,
    /// Per scheduled gang: ModelServing created → all pods bound, seconds.
    place_p50_s: f64,
    place_p95_s: f64,
    place_mean_s: f64,
    /// First ModelServing created → last wave settled.
    wall_s: f64,
    /// Time spent listing the cluster and choosing tiers (muster mode), seconds.
    choice_s: f64,
    /// Muster mode: how many gangs got which group tier bound (`none` = unconstrained).
    group_tier_chosen: BTreeMap<String, usize>,
    /// PodGroups, and how many carry a group or sub-group `networkTopology`.
    podgroups: usize,
    podgroups_with_topology: usize,
    /// Per kind: scheduled / submitted.
    scheduled_by_kind: BTreeMap<String, String>,
}

fn fraction(num: usize, den: usize) -> f64 {
    if den == 0 {
        f64::NAN
    } else {
        num as f64 / den as f64
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

/// Placement metrics of one mode from the final cluster state. `placements` holds only gangs
/// whose every pod is bound.
fn placement_metrics(
    t: &Topology,
    gangs: &[Gang],
    placements: &BTreeMap<String, Placement>,
) -> ModeReport {
    let top = t.hypernodes().map(|(_, h)| h.tier()).max().unwrap_or(0) + 1;
    let rack_tier = 1;
    let scheduled: Vec<&Gang> = gangs
        .iter()
        .filter(|g| placements.contains_key(&g.name))
        .collect();
    let pending: Vec<&Gang> = gangs
        .iter()
        .filter(|g| !placements.contains_key(&g.name))
        .collect();
    let tiers: Vec<(u32, i32)> = scheduled
        .iter()
        .map(|g| (g.pods(), span_tier(t, &placements[&g.name].nodes, top)))
        .collect();
    let multi: Vec<i32> = tiers
        .iter()
        .filter(|(p, _)| *p > 1)
        .map(|(_, t)| *t)
        .collect();
    let pd: Vec<f64> = scheduled
        .iter()
        .filter(|g| g.kind == Kind::Pd)
        .map(|g| f64::from(span_tier(t, &placements[&g.name].nodes, top)))
        .collect();
    let instances: Vec<i32> = scheduled
        .iter()
        .flat_map(|g| placements[&g.name].instances.values())
        .filter(|nodes| nodes.len() > 1)
        .map(|nodes| span_tier(t, nodes, top))
        .collect();
    let total_gpus: i64 = t.nodes().map(|(_, n)| n.allocatable.gpu).sum();
    let free: i64 = t.nodes().map(|(_, n)| n.free().gpu).sum();
    let partial: i64 = t
        .nodes()
        .map(|(_, n)| n.free().gpu)
        .filter(|&f| f > 0 && f < FULL_NODE_GPUS)
        .sum();
    let mut by_kind: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
    for g in gangs {
        let e = by_kind.entry(g.kind).or_default();
        e.1 += 1;
        if placements.contains_key(&g.name) {
            e.0 += 1;
        }
    }
    let gpu_fraction = |n: i64| n as f64 / total_gpus.max(1) as f64;
    ModeReport {
        mode: String::new(),
        gangs: gangs.len(),
        scheduled: scheduled.len(),
        unscheduled: pending.len(),
        unscheduled_gpus: pending.iter().map(|g| g.gpus()).sum(),
        in_one_rack: fraction(
            tiers.iter().filter(|(_, t)| *t <= rack_tier).count(),
            tiers.len(),
        ),
        multi_pod_in_one_rack: fraction(
            multi.iter().filter(|t| **t <= rack_tier).count(),
            multi.len(),
        ),
        multi_pod_in_one_spine: fraction(multi.iter().filter(|t| **t <= 2).count(), multi.len()),
        mean_group_lca_tier: mean(&multi.iter().map(|t| f64::from(*t)).collect::<Vec<_>>()),
        mean_pd_lca_tier: mean(&pd),
        multi_pod_instances_in_one_rack: fraction(
            instances.iter().filter(|t| **t <= rack_tier).count(),
            instances.len(),
        ),
        multi_pod_instances: instances.len(),
        free_gpu_fraction: gpu_fraction(free),
        stranded_gpu_fraction: gpu_fraction(stranded_gpus(t, &pending)),
        partial_node_free_fraction: gpu_fraction(partial),
        place_p50_s: f64::NAN,
        place_p95_s: f64::NAN,
        place_mean_s: f64::NAN,
        wall_s: f64::NAN,
        choice_s: 0.0,
        group_tier_chosen: BTreeMap::new(),
        podgroups: 0,
        podgroups_with_topology: 0,
        scheduled_by_kind: by_kind
            .into_iter()
            .map(|(k, (s, n))| (format!("{k:?}").to_lowercase(), format!("{s}/{n}")))
            .collect(),
    }
}

/// Bound placements of the gangs whose every pod is bound, by gang (ModelServing) name.
fn bound_placements(pods: &[Pod], gangs: &[Gang]) -> BTreeMap<String, Placement> {
    let mut by_gang: BTreeMap<String, (u32, Placement)> = BTreeMap::new();
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let Some(gang) = labels.get(labels::MODEL_SERVING_NAME) else {
            continue;
        };
        let e = by_gang.entry(gang.clone()).or_default();
        e.0 += 1;
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            let instance = format!(
                "{}/{}",
                labels.get(labels::ROLE).cloned().unwrap_or_default(),
                labels.get(labels::ROLE_ID).cloned().unwrap_or_default()
            );
            e.1.instances
                .entry(instance)
                .or_default()
                .push(node.clone());
            e.1.nodes.push(node);
        }
    }
    gangs
        .iter()
        .filter_map(|g| {
            let (count, placement) = by_gang.remove(&g.name)?;
            (count == g.pods() && placement.nodes.len() == g.pods() as usize)
                .then(|| (g.name.clone(), placement))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running one mode
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No tier constraints at all.
    Volcano,
    /// The controller's own automatic tier choice.
    Muster,
    /// Tier choice on free capacity, computed here per wave and written as explicit policies.
    MusterFree,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Volcano => "volcano",
            Mode::Muster => "muster",
            Mode::MusterFree => "muster-free",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Mode::Volcano => "volcano defaults",
            Mode::Muster => "muster tier choice",
            Mode::MusterFree => "muster, free-capacity choice",
        }
    }
}

struct Options {
    seed: u64,
    gangs: usize,
    wave: usize,
    settle: Duration,
    modes: Vec<Mode>,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        seed: 42,
        gangs: 200,
        wave: 10,
        settle: Duration::from_secs(5),
        modes: vec![Mode::Volcano, Mode::Muster],
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seed" => o.seed = value()?.parse().context("--seed")?,
            "--gangs" => o.gangs = value()?.parse().context("--gangs")?,
            "--wave" => o.wave = value()?.parse::<usize>().context("--wave")?.max(1),
            "--settle" => o.settle = Duration::from_secs_f64(value()?.parse().context("--settle")?),
            "--modes" => {
                o.modes = value()?
                    .split(',')
                    .map(|m| match m {
                        "volcano" => Ok(Mode::Volcano),
                        "muster" => Ok(Mode::Muster),
                        "muster-free" => Ok(Mode::MusterFree),
                        other => {
                            bail!("--modes: unknown mode {other:?} (volcano, muster, muster-free)")
                        }
                    })
                    .collect::<Result<_>>()?
            }
            other => bail!(
                "unknown argument {other:?}\nusage: bench-topology [--seed N] [--gangs N] [--wave N] [--settle SECONDS] [--modes volcano,muster]"
            ),
        }
    }
    Ok(o)
}

/// Waits until no pod and no PodGroup is left in the cluster. PodGroups matter as much as pods:
/// a previous mode's PodGroups left in a terminating namespace stay in vc-scheduler's sessions
/// (Inqueue ones count at enqueue) and were seen to hold the next mode's gangs back.
async fn wait_cluster_empty(client: &Client, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let lp = ListParams::default();
        let pods = Api::<Pod>::all(client.clone())
            .list_metadata(&lp)
            .await?
            .items
            .len();
        let pgs = Api::<PodGroup>::all(client.clone())
            .list_metadata(&lp)
            .await?
            .items
            .len();
        if pods == 0 && pgs == 0 {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("{pods} pods and {pgs} PodGroups still exist after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes a mode's objects directly (the namespace controller and the garbage collector take
/// minutes for hundreds of objects on a small machine), then the namespace.
async fn clean_up(client: &Client, ns: &str) -> Result<()> {
    let dp = DeleteParams::background();
    let lp = ListParams::default();
    Api::<ModelServing>::namespaced(client.clone(), ns)
        .delete_collection(&dp, &lp)
        .await?;
    Api::<PodGroup>::namespaced(client.clone(), ns)
        .delete_collection(&dp, &lp)
        .await?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete_collection(&dp, &lp)
        .await?;
    Api::<Namespace>::all(client.clone())
        .delete(ns, &dp)
        .await?;
    wait_cluster_empty(client, Duration::from_secs(300)).await
}

async fn run_mode(mode: Mode, gangs: &[Gang], o: &Options) -> Result<(ModeReport, Value)> {
    let ns = TestNamespace::new(&format!("bench-topo-{}", mode.name())).await;
    let client = ns.client.clone();
    wait_cluster_empty(&client, Duration::from_secs(180)).await?;
    let controller = ControllerHandle::start(client.clone(), &ns.name);
    let ms_api = Api::<ModelServing>::namespaced(client.clone(), &ns.name);
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let mut created: BTreeMap<String, Instant> = BTreeMap::new();
    let mut placed: BTreeMap<String, f64> = BTreeMap::new();
    let mut chosen: BTreeMap<String, usize> = BTreeMap::new();
    let mut choices: Vec<Value> = Vec::new();
    let mut choice_time = Duration::ZERO;
    let start = Instant::now();
    for (w, wave) in gangs.chunks(o.wave).enumerate() {
        let topo = if mode == Mode::MusterFree {
            let t0 = Instant::now();
            let t = list_topology(&client).await?;
            choice_time += t0.elapsed();
            Some(t)
        } else {
            None
        };
        for gang in wave {
            let mut ms = modelserving(gang, mode == Mode::Muster)?;
            if let Some(t) = &topo {
                let t0 = Instant::now();
                let demand = GroupDemand::from_template(&ms.spec.template);
                let choice = tier_choice::choose(t, &demand, ChoiceOptions::default());
                let nt = network_topology(&choice);
                choice_time += t0.elapsed();
                let tier = nt
                    .group_policy
                    .as_ref()
                    .and_then(|s| s.highest_tier_allowed)
                    .map_or("none".to_string(), |t| format!("tier {t}"));
                *chosen.entry(tier).or_default() += 1;
                choices.push(
                    json!({"gang": gang.name, "networkTopology": nt, "why": choice.messages()}),
                );
                ms.spec.template.network_topology = Some(nt);
            }
            ms_api.create(&PostParams::default(), &ms).await?;
            created.insert(gang.name.clone(), Instant::now());
        }
        // Settle: every gang of this wave bound, or nothing new bound for `settle` once all
        // of the wave's pods exist.
        let wave_pods: u32 = wave.iter().map(Gang::pods).sum();
        let wave_start = Instant::now();
        let mut last_change = Instant::now();
        let mut last_bound = usize::MAX;
        loop {
            let pods = pods_api.list(&ListParams::default()).await?.items;
            let now = Instant::now();
            for name in bound_placements(&pods, gangs).into_keys() {
                placed
                    .entry(name.clone())
                    .or_insert_with(|| (now - created[&name]).as_secs_f64());
            }
            let bound = pods
                .iter()
                .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
                .count();
            if bound != last_bound {
                last_bound = bound;
                last_change = now;
            }
            let exist = wave
                .iter()
                .map(|g| {
                    pods.iter()
                        .filter(|p| {
                            p.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(labels::MODEL_SERVING_NAME))
                                == Some(&g.name)
                        })
                        .count() as u32
                })
                .sum::<u32>();
            let all_bound = wave.iter().all(|g| placed.contains_key(&g.name));
            if all_bound
                || (exist >= wave_pods && now - last_change >= o.settle)
                || now - wave_start > Duration::from_secs(120)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "[bench-topology] {}: wave {:>2}: {:>3}/{} gangs placed ({:.1}s)",
            mode.name(),
            w + 1,
            placed.len(),
            created.len(),
            start.elapsed().as_secs_f64()
        );
    }
    let wall = start.elapsed();
    controller.kill();
    let pgs = Api::<PodGroup>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await?
        .items;
    if mode == Mode::Muster {
        for pg in &pgs {
            let tier = pg
                .spec
                .network_topology
                .as_ref()
                .and_then(|s| s.highest_tier_allowed)
                .map_or("none".to_string(), |t| format!("tier {t}"));
            *chosen.entry(tier).or_default() += 1;
        }
    }
    let with_topology = pgs
        .iter()
        .filter(|pg| {
            pg.spec.network_topology.is_some()
                || pg
                    .spec
                    .sub_group_policy
                    .iter()
                    .flatten()
                    .any(|s| s.network_topology.is_some())
        })
        .count();

    let t = list_topology(&client).await?;
    let pods = pods_api.list(&ListParams::default()).await?.items;
    let placements = bound_placements(&pods, gangs);
    let mut report = placement_metrics(&t, gangs, &placements);
    let times: Vec<f64> = placements
        .keys()
        .filter_map(|n| placed.get(n).copied())
        .collect();
    report.mode = mode.name().to_string();
    report.place_p50_s = percentile(&times, 0.5);
    report.place_p95_s = percentile(&times, 0.95);
    report.place_mean_s = mean(&times);
    report.wall_s = wall.as_secs_f64();
    report.choice_s = choice_time.as_secs_f64();
    report.group_tier_chosen = chosen;
    report.podgroups = pgs.len();
    report.podgroups_with_topology = with_topology;
    let raw = json!({
        "placements": placements,
        "choices": choices,
    });

    clean_up(&client, &ns.name).await?;
    Ok((report, raw))
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn pct(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{:.1}%", 100.0 * x)
    }
}

fn num(x: f64, unit: &str) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{x:.2}{unit}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || a == 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", b / a)
    }
}

/// The table: the first report is the baseline, every other one gets a ratio column.
fn markdown(reports: &[ModeReport], header: &str) -> String {
    type Row = (&'static str, fn(&ModeReport) -> f64, bool);
    let rows: [Row; 13] = [
        ("gangs scheduled", |r| r.scheduled as f64, false),
        ("gangs not scheduled", |r| r.unscheduled as f64, false),
        (
            "groups inside one rack (tier-1 HyperNode), all",
            |r| r.in_one_rack,
            true,
        ),
        (
            "groups inside one rack, multi-pod groups",
            |r| r.multi_pod_in_one_rack,
            true,
        ),
        (
            "multi-pod groups inside one spine",
            |r| r.multi_pod_in_one_spine,
            true,
        ),
        (
            "mean LCA tier of a multi-pod group's pods",
            |r| r.mean_group_lca_tier,
            false,
        ),
        (
            "mean LCA tier of a PD group's pods",
            |r| r.mean_pd_lca_tier,
            false,
        ),
        (
            "multi-pod role instances inside one rack",
            |r| r.multi_pod_instances_in_one_rack,
            true,
        ),
        ("GPUs free at the end", |r| r.free_gpu_fraction, true),
        ("GPUs stranded", |r| r.stranded_gpu_fraction, true),
        (
            "GPUs free on partly used nodes",
            |r| r.partial_node_free_fraction,
            true,
        ),
        ("time to place a gang, p50 (s)", |r| r.place_p50_s, false),
        ("time to place a gang, p95 (s)", |r| r.place_p95_s, false),
    ];
    let base = &reports[0];
    let others = &reports[1..];
    let mut s = format!("{header}\n\n| metric | {} |", title(base));
    for o in others {
        s += &format!(" {} | {} / {} |", title(o), o.mode, base.mode);
    }
    s += "\n|---|---|";
    s += &"---|---|".repeat(others.len());
    s += "\n";
    let show = |x: f64, is_pct: bool| {
        if is_pct {
            pct(x)
        } else if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            num(x, "")
        }
    };
    for (name, f, is_pct) in rows {
        s += &format!("| {name} | {} |", show(f(base), is_pct));
        for o in others {
            s += &format!(" {} | {} |", show(f(o), is_pct), ratio(f(base), f(o)));
        }
        s += "\n";
    }
    s += &format!(
        "| PodGroups with networkTopology | {}/{} |",
        base.podgroups_with_topology, base.podgroups
    );
    for o in others {
        s += &format!(" {}/{} | |", o.podgroups_with_topology, o.podgroups);
    }
    s += &format!("\n| wall time, all waves (s) | {:.1} |", base.wall_s);
    for o in others {
        s += &format!(" {:.1} | {} |", o.wall_s, ratio(base.wall_s, o.wall_s));
    }
    s += "\n\n";
    for r in reports {
        s += &format!(
            "- {}: scheduled by kind {:?}{}\n",
            r.mode,
            r.scheduled_by_kind,
            if r.group_tier_chosen.is_empty() {
                String::new()
            } else {
                format!("; group tier bounds {:?}", r.group_tier_chosen)
            }
        );
    }
    s
}

fn title(r: &ModeReport) -> &'static str {
    [Mode::Volcano, Mode::Muster, Mode::MusterFree]
        .into_iter()
        .find(|m| m.name() == r.mode)
        .map_or("?", Mode::title)
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = parse_args()?;
    let gangs = workload(o.seed, o.gangs);
    let client = muster_e2e::client().await;
    let t = list_topology(&client).await?;
    let total_gpus: i64 = t.nodes().map(|(_, n)| n.allocatable.gpu).sum();
    let nodes = t.nodes().count();
    let racks = t.hypernodes().filter(|(_, h)| h.tier() == 1).count();
    let spines = t.hypernodes().filter(|(_, h)| h.tier() == 2).count();
    let demand: i64 = gangs.iter().map(Gang::gpus).sum();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for g in &gangs {
        *kinds
            .entry(format!("{:?}", g.kind).to_lowercase())
            .or_default() += 1;
    }
    eprintln!(
        "[bench-topology] {nodes} nodes, {racks} racks, {spines} spines, {total_gpus} GPUs; {} gangs (seed {}, {kinds:?}) asking for {demand} GPUs ({:.0}% of the cluster), waves of {}",
        gangs.len(),
        o.seed,
        100.0 * demand as f64 / total_gpus.max(1) as f64,
        o.wave
    );
    if total_gpus == 0 || racks == 0 {
        bail!("the cluster has no GPU nodes or no tier-1 HyperNodes");
    }

    let mut reports = Vec::new();
    let mut raw = serde_json::Map::new();
    for mode in &o.modes {
        let (r, details) = run_mode(*mode, &gangs, &o).await?;
        eprintln!("[bench-topology] {}: {r:?}", mode.name());
        raw.insert(mode.name().to_string(), details);
        reports.push(r);
    }

    let header = format!(
        "Topology placement: {} gangs (seed {}, {kinds:?}, {demand} GPUs = {:.0}% of {total_gpus}) on {nodes} kwok nodes ({spines} spines × {} racks × {} nodes × {} GPUs), waves of {}, real vc-scheduler.",
        gangs.len(),
        o.seed,
        100.0 * demand as f64 / total_gpus as f64,
        racks / spines.max(1),
        nodes / racks,
        total_gpus / nodes.max(1) as i64,
        o.wave
    );
    let dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let report = json!({
        "seed": o.seed,
        "wave": o.wave,
        "settle_seconds": o.settle.as_secs_f64(),
        "cluster": {"nodes": nodes, "racks": racks, "spines": spines, "gpus": total_gpus},
        "workload": {"gangs": gangs.len(), "by_kind": kinds, "gpus": demand, "list": gangs},
        "modes": reports,
        "details": raw,
    });
    std::fs::write(
        dir.join("topology.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&reports, &header);
    std::fs::write(dir.join("topology.md"), &md)?;
    println!("{md}");
    for r in &reports {
        let constrained = r.podgroups_with_topology > 0;
        match r.mode.as_str() {
            "volcano" => anyhow::ensure!(!constrained, "volcano mode: {} PodGroups carry a networkTopology", r.podgroups_with_topology),
            _ => anyhow::ensure!(constrained, "{} mode: no PodGroup carries a networkTopology (is the controller's tier choice wired?)", r.mode),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, gpus: u32) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string()}}
        }))
        .unwrap()
    }

    fn pod(name: &str, node: &str, gpus: u32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": gpus.to_string()}}}]}
        }))
        .unwrap()
    }

    fn hypernode(name: &str, tier: i32, kind: &str, members: &[&str]) -> HyperNode {
        let members: Vec<Value> = members
            .iter()
            .map(|m| json!({"type": kind, "selector": {"exactMatch": {"name": m}}}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "topology.volcano.sh/v1alpha1", "kind": "HyperNode",
            "metadata": {"name": name}, "spec": {"tier": tier, "members": members}
        }))
        .unwrap()
    }

    /// Two spines, each one rack of two 8-GPU nodes.
    fn small(pods: &[Pod]) -> Topology {
        let hns = [
            hypernode("r0", 1, "Node", &["a", "b"]),
            hypernode("r1", 1, "Node", &["c", "d"]),
            hypernode("s0", 2, "HyperNode", &["r0"]),
            hypernode("s1", 2, "HyperNode", &["r1"]),
        ];
        let nodes = ["a", "b", "c", "d"].map(|n| node(n, 8));
        Topology::build(&hns, &nodes, pods)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn span_tier_is_zero_on_one_node_rack_within_a_rack_and_top_across_spines() {
        let t = small(&[]);
        assert_eq!(span_tier(&t, &names(&["a", "a"]), 3), 0);
        assert_eq!(span_tier(&t, &names(&["a", "b"]), 3), 1);
        assert_eq!(span_tier(&t, &names(&["a", "c"]), 3), 3);
    }

    #[test]
    fn stranded_counts_free_gpus_too_small_for_every_pending_piece() {
        // a: 6 used (2 free), b: 4 used (4 free), c, d: empty.
        let t = small(&[pod("p1", "a", 6), pod("p2", "b", 4)]);
        let four = Gang {
            name: "x".into(),
            kind: Kind::Single,
            roles: vec![role("server", 1, 1, 4)],
        };
        let eight = Gang {
            name: "y".into(),
            kind: Kind::Tp,
            roles: vec![role("engine", 1, 2, 8)],
        };
        assert_eq!(
            stranded_gpus(&t, &[&four, &eight]),
            2,
            "only a's 2 GPUs fit no 4-GPU pod"
        );
        assert_eq!(
            stranded_gpus(&t, &[&eight]),
            6,
            "a's 2 and b's 4 fit no 8-GPU pod"
        );
        assert_eq!(
            stranded_gpus(&t, &[]),
            6,
            "nothing pending: measured against a full node"
        );
    }

    #[test]
    fn only_fully_bound_gangs_count_as_placed() {
        let labelled = |name: &str, gang: &str, node: Option<&str>| -> Pod {
            let mut p: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {
                    labels::MODEL_SERVING_NAME: gang, labels::ROLE: "engine", labels::ROLE_ID: "0"}},
                "spec": {"containers": []}
            }))
            .unwrap();
            p.spec.as_mut().unwrap().node_name = node.map(String::from);
            p
        };
        let gangs = vec![
            Gang {
                name: "full".into(),
                kind: Kind::Tp,
                roles: vec![role("engine", 1, 2, 8)],
            },
            Gang {
                name: "half".into(),
                kind: Kind::Tp,
                roles: vec![role("engine", 1, 2, 8)],
            },
        ];
        let pods = [
            labelled("f0", "full", Some("a")),
            labelled("f1", "full", Some("b")),
            labelled("h0", "half", Some("c")),
            labelled("h1", "half", None),
        ];
        let placed = bound_placements(&pods, &gangs);
        assert_eq!(placed.keys().collect::<Vec<_>>(), ["full"]);
        assert_eq!(placed["full"].instances["engine/0"], names(&["a", "b"]));
        let t = small(&[]);
        let r = placement_metrics(&t, &gangs, &placed);
        assert_eq!((r.scheduled, r.unscheduled, r.unscheduled_gpus), (1, 1, 16));
        assert_eq!(r.multi_pod_in_one_rack, 1.0);
        assert_eq!(r.mean_group_lca_tier, 1.0);
    }

    #[test]
    fn workload_is_seeded_and_mixes_every_kind() {
        let a = workload(7, 200);
        assert_eq!(a, workload(7, 200));
        assert_ne!(a, workload(8, 200));
        for kind in [Kind::Single, Kind::Tp, Kind::Pd] {
            assert!(
                a.iter().filter(|g| g.kind == kind).count() >= 20,
                "{kind:?}"
            );
        }
        // Every gang fits one rack of 16 × 8 GPUs, as the mix promises.
        assert!(a.iter().all(|g| g.gpus() <= 128 && g.pods() <= 16));
        for g in &a {
            modelserving(g, true).unwrap();
        }
    }

    #[test]
    fn role_policy_is_the_loosest_role_choice() {
        let t = small(&[pod("p1", "a", 8), pod("p2", "b", 4)]);
        let gang = Gang {
            name: "pd".into(),
            kind: Kind::Pd,
            roles: vec![role("prefill", 1, 1, 8), role("decode", 1, 1, 4)],
        };
        let ms = modelserving(&gang, false).unwrap();
        let choice = tier_choice::choose(
            &t,
            &GroupDemand::from_template(&ms.spec.template),
            ChoiceOptions::default(),
        );
        let nt = network_topology(&choice);
        // 8 + 4 GPUs fit rack r1 (16 free): group tier 1; one pod per instance: tier 1.
        assert_eq!(nt.group_policy.unwrap().highest_tier_allowed, Some(1));
        assert_eq!(nt.role_policy.unwrap().highest_tier_allowed, Some(1));
    }
}
