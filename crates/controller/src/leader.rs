//! Leader election over a `coordination.k8s.io` Lease, so several controller replicas can run
//! for availability while exactly one acts. Losing the lease ends the process: a restarted
//! replica rebuilds everything from the API server (the planner keeps no state), which is
//! simpler and safer than trying to stop a controller halfway through a reconcile.

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Lease name.
    pub lease_name: String,
    /// Namespace holding the Lease.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
}

/// The server-side-apply field manager for one replica's lease writes. It must differ between
/// replicas: taking a free lease is an Apply of `holderIdentity`, and only a *different*
/// manager's Apply conflicts. With one shared manager two replicas starting together could both
/// apply, both believe they lead, and the loser would exit at its next renewal, leaving no
/// standby.
fn field_manager(identity: &str) -> String {
    format!("{}-lease-{identity}", muster_api::labels::FIELD_MANAGER)
}

/// Waits until this replica holds the lease. Returns a receiver that turns `false` if the
/// lease is lost; the caller must stop acting then.
pub async fn acquire(
    client: Client,
    config: &LeaderConfig,
) -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    // A standby that exits on a transient API error at start is no standby: retry until the
    // Lease can be read (or created), with a capped backoff.
    let mut backoff = std::time::Duration::from_millis(200);
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(15)
            .with_grace(5)
            .with_field_manager(field_manager(&config.identity))
            .build()
            .await;
        match built {
            Ok(m) => break m,
            Err(e) => {
                let e = anyhow::Error::from(e).context(format!(
                    "preparing Lease {}/{}",
                    config.namespace, config.lease_name
                ));
                warn!(error = %format!("{e:#}"), retry_in = ?backoff, "cannot prepare the lease yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
        }
    };
    let (mut leader, task) = manager.watch().await;
    // The watch task must outlive this function; dropping the handle does not stop it.
    drop(task);
    info!(lease = %config.lease_name, identity = %config.identity, "waiting to become leader");
    while !*leader.borrow_and_update() {
        leader.changed().await.context("lease watcher stopped")?;
    }
    info!(identity = %config.identity, "became leader");
    Ok(leader)
}

/// Resolves when `leader` turns false (or its watcher dies).
pub async fn lost(mut leader: tokio::sync::watch::Receiver<bool>) {
    loop {
        if leader.changed().await.is_err() || !*leader.borrow() {
            warn!("lost leadership");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_write_the_lease_as_different_field_managers() {
        assert_ne!(field_manager("replica-a"), field_manager("replica-b"));
        assert!(field_manager("replica-a").starts_with(muster_api::labels::FIELD_MANAGER));
    }
}
