//! Two `muster-controller` processes with `--leader-elect`: exactly one acts; killing it hands
//! the work to the other.

use std::process::{Child, Command};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use muster_e2e::{kubeconfig_path, load_yaml, wait_for, workspace_binary, TestNamespace};
use serde_json::json;

struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a replica's log goes, so a failure can show why a replica stopped.
fn log_path(ns: &str, identity: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("muster-leader-{ns}-{identity}.log"))
}

fn start(ns: &str, identity: &str, port: u16) -> Replica {
    // tracing writes to stdout: both streams go to the log, or a failure shows nothing.
    let log = std::fs::File::create(log_path(ns, identity)).expect("replica log");
    let out = log.try_clone().expect("replica log");
    let child = Command::new(workspace_binary("muster-controller", "muster-controller"))
        .args(["--leader-elect", "--lease-namespace", ns, "--namespace", ns])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", kubeconfig_path())
        .env("POD_NAME", identity)
        .env("RUST_LOG", "info,kube_lease_manager=debug")
        .stdout(out)
        .stderr(log)
        .spawn()
        .expect("start muster-controller");
    Replica(child)
}

/// Whether a replica still runs, or how it ended, for a failure message.
fn state(replica: &mut Option<Replica>) -> String {
    match replica.as_mut().map(|r| r.0.try_wait()) {
        None => "killed by the test".into(),
        Some(Ok(None)) => "running".into(),
        Some(Ok(Some(status))) => format!("exited: {status}"),
        Some(Err(e)) => format!("unknown: {e}"),
    }
}

/// The tail of both replicas' logs, for a failure message.
fn logs(ns: &str) -> String {
    ["replica-a", "replica-b"]
        .iter()
        .map(|id| {
            let text = std::fs::read_to_string(log_path(ns, id)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- {id} ---\n{}", tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn holder(ns: &TestNamespace) -> Option<String> {
    let lease = Api::<Lease>::namespaced(ns.client.clone(), &ns.name)
        .get_opt("muster-controller")
        .await
        .ok()??;
    lease.spec?.holder_identity
}

async fn pods_of(ns: &TestNamespace, ms: &str) -> usize {
    Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default().labels(&format!("modelserving.muster.dev/name={ms}")))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_a_standby_takes_over_when_it_dies() {
    let ns = TestNamespace::new("leader").await;
    let mut a = Some(start(&ns.name, "replica-a", 18181));
    let mut b = Some(start(&ns.name, "replica-b", 18182));
    let first = wait_for(Duration::from_secs(30), "a lease holder", || async {
        Ok(holder(&ns).await)
    })
    .await
    .unwrap();

    let mut doc = load_yaml("config/samples/modelserving-single.yaml");
    doc["spec"]["replicas"] = json!(1);
    ns.create(&doc).await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "the leader creates the pod",
        || async { Ok((pods_of(&ns, "qwen-single").await == 1).then_some(())) },
    )
    .await
    .unwrap();

    // Kill the leader; the standby must take the lease and serve a new ModelServing.
    if first == "replica-a" {
        a.take();
    } else {
        b.take();
    }
    // The lease lasts 15 s (+5 s grace); on a loaded 2-core CI machine the standby's renewals
    // and the apiserver are slow enough that 45 s was seen to run out.
    let second = wait_for(
        Duration::from_secs(90),
        "the standby to take the lease",
        || async { Ok(holder(&ns).await.filter(|h| *h != first)) },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nreplica-a {}, replica-b {}\n{}",
            state(&mut a),
            state(&mut b),
            logs(&ns.name)
        )
    });
    assert_ne!(second, first);
    doc["metadata"]["name"] = json!("qwen-second");
    ns.create(&doc).await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "the new leader creates pods",
        || async { Ok((pods_of(&ns, "qwen-second").await == 1).then_some(())) },
    )
    .await
    .unwrap();
}
