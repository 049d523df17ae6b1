//! The topology extender fails open: with Volcano's `extender` plugin enabled
//! (`volcano/scheduler-extender.conf.yaml`, `ignorable: true`), gangs schedule while the
//! extender answers and still schedule once it is stopped.
//!
//! The shared cluster runs the plain scheduler config and must never be reconfigured under
//! other tests, so this test brings up its own small control plane (1 spine × 2 racks × 2
//! nodes) on other ports and pod CIDR, in `target/e2e-extender/`, and stops it at the end.
//! Bring-up takes ~15 s with the control-plane binaries cached.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use muster_api::volcano::PodGroup;
use muster_e2e::{repo_root, wait_for, workspace_binary};
use serde_json::json;

const EXTENDER_PORT: u16 = 18813;

/// Ports and CIDRs that do not collide with the shared cluster's defaults.
const ENV: &[(&str, &str)] = &[
    ("MUSTER_SPINES", "1"),
    ("MUSTER_RACKS_PER_SPINE", "2"),
    ("MUSTER_NODES_PER_RACK", "2"),
    ("MUSTER_ETCD_PORT", "23890"),
    ("MUSTER_ETCD_PEER_PORT", "23900"),
    ("MUSTER_APISERVER_PORT", "16543"),
    ("MUSTER_KCM_PORT", "10457"),
    ("MUSTER_VC_HEALTHZ_PORT", "21351"),
    ("MUSTER_VC_METRICS_PORT", "28180"),
    ("MUSTER_KWOK_PORT", "20347"),
    ("MUSTER_POD_CIDR", "127.3.0.1/16"),
    ("MUSTER_SERVICE_CIDR", "127.201.0.0/16"),
];

fn work_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("e2e-extender")
}

/// The private cluster; stopped and purged when dropped.
struct PrivateCluster {
    dir: PathBuf,
}

impl PrivateCluster {
    fn up(conf: &PathBuf) -> Result<Self> {
        let dir = work_dir().join("cluster");
        let c = PrivateCluster { dir: dir.clone() };
        let status = Command::new("bash")
            .arg(repo_root().join("hack/cluster-up.sh"))
            .envs(ENV.iter().copied())
            .env("MUSTER_CLUSTER_DIR", &dir)
            .env("MUSTER_SCHEDULER_CONF", conf)
            .status()
            .context("running cluster-up")?;
        anyhow::ensure!(
            status.success(),
            "private cluster-up failed; logs in {}/logs",
            dir.display()
        );
        Ok(c)
    }

    async fn client(&self) -> Result<Client> {
        let kc = Kubeconfig::read_from(self.dir.join("kubeconfig"))?;
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(cfg)?)
    }

    fn scheduler_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/vc-scheduler.log")).unwrap_or_default()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("hack/cluster-down.sh"))
            .env("MUSTER_CLUSTER_DIR", &self.dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// The extender process; killed when dropped.
struct Extender(Child);

impl Drop for Extender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gang(name: &str, pods: usize) -> (PodGroup, Vec<Pod>) {
    let pg = serde_json::from_value(json!({
        "apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
        "metadata": {"name": name}, "spec": {"minMember": pods, "queue": "default"}
    }))
    .unwrap();
    let pods = (0..pods)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{name}-{i}"),
                    "annotations": {"scheduling.k8s.io/group-name": name}},
                "spec": {"schedulerName": "volcano", "containers": [{
                    "name": "engine", "image": "muster/engine-sim:latest",
                    "resources": {"limits": {"nvidia.com/gpu": "4"}, "requests": {"nvidia.com/gpu": "4"}}}]}
            }))
            .unwrap()
        })
        .collect();
    (pg, pods)
}

async fn schedule(client: &Client, name: &str) -> Result<()> {
    let (pg, pods) = gang(name, 2);
    Api::<PodGroup>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pg)
        .await?;
    let api = Api::<Pod>::namespaced(client.clone(), "default");
    for p in &pods {
        api.create(&PostParams::default(), p).await?;
    }
    wait_for(
        Duration::from_secs(60),
        &format!("gang {name} bound"),
        || {
            let api = api.clone();
            async move {
                let mut bound = 0;
                for i in 0..2 {
                    let p = api.get(&format!("{name}-{i}")).await?;
                    bound += usize::from(p.spec.and_then(|s| s.node_name).is_some());
                }
                Ok((bound == 2).then_some(()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_survives_a_stopped_extender() -> Result<()> {
    // The shipped snippet, pointed at this test's extender port.
    let shipped =
        std::fs::read_to_string(repo_root().join("volcano/scheduler-extender.conf.yaml"))?;
    assert!(
        shipped.contains("extender.ignorable: true"),
        "the snippet must fail open"
    );
    let conf = shipped.replace(
        "http://127.0.0.1:8713",
        &format!("http://127.0.0.1:{EXTENDER_PORT}"),
    );
    assert_ne!(conf, shipped, "urlPrefix not found in the snippet");
    std::fs::create_dir_all(work_dir())?;
    let conf_path = work_dir().join("scheduler.conf.yaml");
    std::fs::write(&conf_path, conf)?;

    let cluster = PrivateCluster::up(&conf_path)?;
    let client = cluster.client().await?;

    let log_path = work_dir().join("extender.log");
    let extender = Extender(
        Command::new(workspace_binary(
            "muster-topology-extender",
            "muster-controller",
        ))
        .args(["--listen", &format!("127.0.0.1:{EXTENDER_PORT}")])
        .env("KUBECONFIG", cluster.dir.join("kubeconfig"))
        .env("RUST_LOG", "info,muster_controller=debug,kube=warn")
        .stdout(std::fs::File::create(&log_path)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the extender")?,
    );
    wait_for(Duration::from_secs(20), "extender listening", || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", EXTENDER_PORT))
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;

    // With the extender up, Volcano calls it and the gang schedules.
    schedule(&client, "with-extender").await?;
    let log = std::fs::read_to_string(&log_path)?;
    assert!(
        log.contains("extender request") && log.contains("prioritize"),
        "Volcano never called the extender; its log:\n{log}"
    );
    assert!(
        !log.contains("bad extender request"),
        "Volcano's body was rejected:\n{log}"
    );

    // Stopped: Volcano's calls fail, and being ignorable it schedules anyway.
    let log_before = cluster.scheduler_log().len();
    drop(extender);
    schedule(&client, "without-extender").await?;
    let sched = cluster.scheduler_log();
    let since = sched.get(log_before..).unwrap_or_default();
    assert!(
        since.contains(&format!(
            "\"http://127.0.0.1:{EXTENDER_PORT}/predicate\": dial tcp"
        )),
        "the scheduler never tried the stopped extender (plugin not loaded?); log since:\n{since}"
    );
    drop(cluster);
    Ok(())
}
