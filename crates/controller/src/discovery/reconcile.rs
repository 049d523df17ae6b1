//! The I/O shell of HyperNode discovery: list Nodes and HyperNodes, plan, write the plan.
//!
//! Like the ModelServing controller, every reconcile lists straight from the API server and
//! the watches only decide when to reconcile, so a restarted controller reaches the same tree.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use muster_api::labels::FIELD_MANAGER;
use muster_api::volcano::HyperNode;
use muster_topology::discovery::{plan, DiscoveryConfig, DiscoveryError};
use serde_json::json;
use tracing::{debug, info, warn};

use super::config::DiscoveryOptions;
use super::trigger::NodeLabelChanges;

/// What one reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// HyperNodes created or updated.
    pub applied: Vec<String>,
    /// HyperNodes deleted.
    pub deleted: Vec<String>,
    /// Problems the plan reported (rendered).
    pub problems: Vec<String>,
}

/// Lists the Nodes that carry the lowest tier's label (the only ones discovery can place; a
/// node without it belongs to no tier-1 HyperNode) and every HyperNode (foreign ones too, so
/// that a name clash is reported instead of overwritten), plans, and writes the plan.
pub async fn reconcile_once(
    client: &Client,
    cfg: &DiscoveryConfig,
) -> Result<Outcome, kube::Error> {
    let Some(lowest) = cfg.tiers.first() else {
        return Ok(Outcome::default());
    };
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&lowest.node_label))
        .await?
        .items;
    let hn_api = Api::<HyperNode>::all(client.clone());
    let existing = hn_api.list(&ListParams::default()).await?.items;
    let p = plan(&existing, &nodes, cfg);
    let by_name: BTreeMap<String, &HyperNode> =
        existing.iter().map(|h| (h.name_any(), h)).collect();

    let mut out = Outcome {
        problems: p.errors.iter().map(DiscoveryError::to_string).collect(),
        ..Outcome::default()
    };
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    for h in &p.apply {
        let name = h.name_any();
        let mut body = serde_json::to_value(h).expect("HyperNode serialises");
        body["apiVersion"] = json!("topology.volcano.sh/v1alpha1");
        body["kind"] = json!("HyperNode");
        if by_name.contains_key(&name) {
            // Ours (the plan never updates anything else): apply takes over every field.
            hn_api.patch(&name, &ssa, &Patch::Apply(&body)).await?;
        } else {
            // New: create rather than apply, so a same-named HyperNode someone made since the
            // listing is never taken over (409 here; the next reconcile reports it as NotOurs).
            match hn_api
                .create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    h,
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    warn!(hypernode = %name, "HyperNode appeared meanwhile; not taking it over");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        out.applied.push(name);
    }
    for name in &p.delete {
        // Preconditions: delete exactly the object seen as ours, never one recreated since
        // (with the same name, possibly by someone else).
        let seen = by_name.get(name);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: seen.and_then(|h| h.metadata.uid.clone()),
                resource_version: seen.and_then(|h| h.metadata.resource_version.clone()),
            }),
            ..DeleteParams::background()
        };
        match hn_api.delete(name, &dp).await {
            Ok(_) => out.deleted.push(name.clone()),
            // Gone already, or changed since listing: the next reconcile decides again.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Runs HyperNode discovery until `shutdown` completes: re-plans after relevant Node or
/// HyperNode watch events (debounced), every `resync`, and after a failed reconcile (with a
/// few seconds' delay).
pub async fn run(
    client: Client,
    opts: DiscoveryOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let cfg = opts.config.clone();
    let Some(lowest) = cfg.tiers.first() else {
        warn!("HyperNode discovery has no tiers configured; not running");
        return;
    };
    let mut filter = NodeLabelChanges::default();
    let nodes = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().labels(&lowest.node_label),
    )
    .default_backoff()
    .filter_map(move |ev| {
        let relevant = match ev {
            Ok(ev) => filter.observe(&ev),
            Err(e) => {
                debug!(error = %e, "node watch error (retried)");
                false
            }
        };
        futures::future::ready(relevant.then_some(()))
    });
    let hypernodes = watcher(
        Api::<HyperNode>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|ev| {
        // Any HyperNode change can matter (ours edited by hand, a foreign clash appearing or
        // going away); our own writes come back here too and then plan nothing.
        futures::future::ready(match ev {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => None,
            Ok(_) => Some(()),
        })
    });
    let mut triggers = futures::stream::select(nodes, hypernodes).boxed();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut resync = tokio::time::interval(opts.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_problems = Vec::new();
    let mut dirty = false;
    info!(tiers = ?cfg.tiers, source = %cfg.source, "HyperNode discovery started");
    loop {
        if !dirty {
            tokio::select! {
                _ = &mut shutdown => return,
                t = triggers.next() => if t.is_none() { return },
                _ = resync.tick() => {}
            }
        }
        if debounce(&mut triggers, opts.debounce, &mut shutdown).await {
            return;
        }
        match reconcile_once(&client, &cfg).await {
            Ok(o) => {
                dirty = false;
                if !o.applied.is_empty() || !o.deleted.is_empty() {
                    info!(applied = ?o.applied, deleted = ?o.deleted, "HyperNodes updated from node labels");
                }
                // Problems are logged when they change, not on every reconcile.
                if o.problems != last_problems {
                    for p in &o.problems {
                        warn!(problem = %p, "HyperNode discovery");
                    }
                    last_problems = o.problems;
                }
            }
            Err(e) => {
                warn!(error = %e, "HyperNode discovery reconcile failed; retrying");
                dirty = true;
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
            }
        }
    }
}

/// Swallows further triggers for `window`; true if shutdown came first.
async fn debounce(
    triggers: &mut (impl Stream<Item = ()> + Unpin),
    window: Duration,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> bool {
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut *shutdown => return true,
            _ = &mut deadline => return false,
            t = triggers.next() => if t.is_none() { return false },
        }
    }
}
