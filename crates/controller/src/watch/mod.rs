//! Watch plumbing shared by the controllers and the topology extender: kube watchers folded into
//! in-memory caches ([`spawn`], with [`relist::Relist`] turning a re-list into deletes), and the
//! HyperNode/Node [`TopologyCache`] both the ModelServing controller (tier choice) and the
//! extender (scoring) keep.
//!
//! These caches only inform decisions that are themselves recorded in the API server (the
//! ModelServing controller pins its tier choice on the PodGroup); nothing here must survive a
//! restart.

pub mod relist;

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use muster_api::volcano::HyperNode;
use muster_topology::{Topology, WatchEvent};
use tracing::warn;

use relist::{Change, Relist};

/// Watches `api` and folds every change into `state` with `apply`; `listed` is called after
/// each complete (re-)list, once the deletes it implies have been applied. Watch errors are
/// logged and retried with backoff, so the task runs until aborted.
pub fn spawn<S, K>(
    api: Api<K>,
    cfg: watcher::Config,
    state: Arc<RwLock<S>>,
    apply: fn(&mut S, Change<K>),
    listed: fn(&mut S),
) -> tokio::task::JoinHandle<()>
where
    S: Send + Sync + 'static,
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let mut relist = Relist::default();
        let mut events = watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => {
                    let done = matches!(ev, watcher::Event::InitDone);
                    let changes = relist.changes(ev);
                    let mut s = state.write().expect("watch state lock");
                    for c in changes {
                        apply(&mut s, c);
                    }
                    if done {
                        listed(&mut s);
                    }
                }
                Err(e) => {
                    warn!(kind = %K::kind(&Default::default()), error = %e, "watch error (retried)")
                }
            }
        }
    })
}

/// A no-op `listed` callback for [`spawn`].
pub fn ignore_listed<S>(_: &mut S) {}

/// The HyperNode/Node graph kept from watches, and whether both kinds have been listed at
/// least once (before that, the graph may be missing most of the cluster).
#[derive(Debug, Default)]
pub struct TopologyCache {
    topology: Topology,
    nodes_listed: bool,
    hypernodes_listed: bool,
}

impl TopologyCache {
    /// Applies a Node change.
    pub fn node(&mut self, c: Change<Node>) {
        self.topology.apply(&match c {
            Change::Applied(n) => WatchEvent::NodeApplied(Box::new(n)),
            Change::Deleted(_, name) => WatchEvent::NodeDeleted(name),
        });
    }

    /// Applies a HyperNode change.
    pub fn hypernode(&mut self, c: Change<HyperNode>) {
        self.topology.apply(&match c {
            Change::Applied(h) => WatchEvent::HyperNodeApplied(Box::new(h)),
            Change::Deleted(_, name) => WatchEvent::HyperNodeDeleted(name),
        });
    }

    /// Marks the Nodes as listed.
    pub fn nodes_listed(&mut self) {
        self.nodes_listed = true;
    }

    /// Marks the HyperNodes as listed.
    pub fn hypernodes_listed(&mut self) {
        self.hypernodes_listed = true;
    }

    /// True once Nodes and HyperNodes have both been listed.
    pub fn synced(&self) -> bool {
        self.nodes_listed && self.hypernodes_listed
    }

    /// The graph.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
}

/// A [`TopologyCache`] shared between its watches and its readers.
pub type SharedTopology = Arc<RwLock<TopologyCache>>;

/// Starts the Node and HyperNode watches feeding `cache` (cluster-wide: both kinds are
/// cluster-scoped). Abort the handles to stop them.
pub fn watch_topology(
    client: &kube::Client,
    cache: &SharedTopology,
) -> [tokio::task::JoinHandle<()>; 2] {
    [
        spawn(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            cache.clone(),
            TopologyCache::node,
            TopologyCache::nodes_listed,
        ),
        spawn(
            Api::<HyperNode>::all(client.clone()),
            watcher::Config::default(),
            cache.clone(),
            TopologyCache::hypernode,
            TopologyCache::hypernodes_listed,
        ),
    ]
}
