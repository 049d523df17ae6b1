//! The AutoscalingPolicy controller against the real API server, Volcano and kwok, with one
//! `muster-engine-sim` process playing every pod: load on the pods' IPs raises
//! `vllm:num_requests_waiting`, the policy scales the ModelServing up to its maximum in whole
//! ServingGroups, and back to its minimum once the load stops.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use muster_api::autoscaling::{AutoscalingPolicy, AutoscalingPolicyStatus};
use muster_api::labels;
use muster_api::serving::ModelServing;
use muster_controller::autoscaling::reconcile::{run, AutoscalerOptions};
use muster_e2e::{load_yaml, wait_for, workspace_binary, ControllerHandle, TestNamespace};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(90);

/// The simulator, killed on drop.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts one simulator for every pod IP on a free port. Two sequences per batch and real
/// time make requests queue, so `num_requests_waiting` follows the offered concurrency.
fn start_sim() -> (Sim, u16) {
    let mut child = Command::new(workspace_binary("muster-engine-sim", "muster-engine-sim"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--time-scale",
            "1",
            "--max-num-seqs",
            "2",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn muster-engine-sim");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("simulator printed LISTENING")
            .expect("read simulator output");
        if let Some(addr) = line.strip_prefix("LISTENING ") {
            break addr.trim().parse::<SocketAddr>().unwrap().port();
        }
    };
    // Keep draining stdout so the simulator never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (Sim(child), port)
}

/// A scoped AutoscalingPolicy controller, stopped on drop (the test's "controller pod").
struct Autoscaler(tokio::task::JoinHandle<()>);

impl Autoscaler {
    fn start(client: kube::Client, ns: &str) -> Self {
        let opts = AutoscalerOptions {
            period: Duration::from_secs(1),
            scrape_timeout: Duration::from_millis(500),
            policy_timeout: Duration::from_secs(5),
        };
        Autoscaler(tokio::spawn(run(
            client,
            Some(ns.into()),
            opts,
            std::future::pending(),
        )))
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `clients` completions in flight against `addr` until `stop` is set.
fn drive_load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    assert!(
        addr.ip().is_loopback(),
        "tests only talk to loopback, not {addr}"
    );
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let body = json!({"prompt": "hello there", "max_tokens": 200, "ignore_eos": true}).to_string();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let req = format!(
                        "POST /v1/completions HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(req.as_bytes()).await.is_err() {
                        continue;
                    }
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                }
            })
        })
        .collect()
}

/// A ModelServing like the single-GPU sample, but with CPU-only pods so they bind on the
/// shared kwok nodes, and the engine port set to the simulator's.
async fn create_model_serving(ns: &TestNamespace, name: &str, replicas: i32, port: u16) {
    let mut ms = load_yaml("config/samples/modelserving-single.yaml");
    ms["metadata"]["name"] = json!(name);
    ms["spec"]["replicas"] = json!(replicas);
    let role = &mut ms["spec"]["template"]["roles"][0];
    role.as_object_mut().unwrap().remove("tensorParallelSize");
    role["entryTemplate"]["metadata"]["labels"]["app"] = json!(name);
    let container = &mut role["entryTemplate"]["spec"]["containers"][0];
    container["ports"] = json!([{"containerPort": port}]);
    container["resources"] = json!({"requests": {"cpu": "100m"}});
    ns.create(&ms).await.expect("create ModelServing");
}

/// IPs of the live entry pods of ModelServing `ms`.
async fn entry_ips(ns: &TestNamespace, ms: &str) -> anyhow::Result<Vec<String>> {
    let pods = Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default().labels(&format!(
            "{}={ms},{}=true",
            labels::MODEL_SERVING_NAME,
            labels::ENTRY
        )))
        .await?
        .items;
    Ok(pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect())
}

async fn replicas(ns: &TestNamespace, name: &str) -> i32 {
    Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name)
        .get(name)
        .await
        .unwrap()
        .spec
        .replicas
}

async fn status(ns: &TestNamespace, name: &str) -> Option<AutoscalingPolicyStatus> {
    Api::<AutoscalingPolicy>::namespaced(ns.client.clone(), &ns.name)
        .get(name)
        .await
        .ok()?
        .status
}

fn condition(s: &AutoscalingPolicyStatus, type_: &str) -> (String, String) {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"))
}

async fn event_reasons(ns: &TestNamespace) -> Vec<String> {
    Api::<Event>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("AutoscalingPolicy"))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_load_scales_whole_groups_up_and_back_down() {
    let ns = TestNamespace::new("autoscale").await;
    let (_sim, port) = start_sim();
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);

    create_model_serving(&ns, "qwen-single", 1, port).await;

    let mut policy = load_yaml("config/samples/autoscalingpolicy-homogeneous.yaml");
    // Short windows so the test takes seconds, not minutes.
    policy["spec"]["behavior"] = json!({
        "scaleUp": {
            "stablePolicy": {"instances": 4, "percent": 100, "period": "2s", "stabilizationWindow": "4s"},
            "panicPolicy": {"percent": 300, "period": "2s", "panicThresholdPercent": 200, "panicModeHold": "4s"}
        },
        "scaleDown": {"instances": 1, "percent": 50, "period": "2s", "stabilizationWindow": "3s", "cooldown": "3s"}
    });
    policy["spec"]["homogeneousTarget"]["maxReplicas"] = json!(3);
    ns.create(&policy).await.expect("create AutoscalingPolicy");
    let mut autoscaler = Autoscaler::start(ns.client.clone(), &ns.name);

    let ip = wait_for(TIMEOUT, "the first pod's IP", || async {
        Ok(entry_ips(&ns, "qwen-single").await?.into_iter().next())
    })
    .await
    .unwrap();

    // Idle: the policy is Ready, sees its target and metrics, and holds at the minimum.
    let idle = wait_for(TIMEOUT, "a Ready status at 1 replica", || async {
        Ok(status(&ns, "qwen-single").await.filter(|s| {
            s.targets
                .first()
                .is_some_and(|t| t.current_replicas == 1 && t.desired_replicas == 1)
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        }))
    })
    .await
    .unwrap();
    assert_eq!(idle.observed_generation, Some(1));
    assert_eq!(condition(&idle, "TargetFound").0, "True");
    assert_eq!(
        condition(&idle, "MetricsAvailable"),
        ("True".into(), "Scraped".into())
    );
    assert_eq!(idle.targets[0].name, "qwen-single");
    assert_eq!(replicas(&ns, "qwen-single").await, 1);

    // Load: ~14 requests waiting against a target of 4 per instance → the maximum, 3 groups.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    let load = drive_load(addr, 16, stop.clone());
    let seen_max = AtomicI32::new(0);
    wait_for(TIMEOUT, "3 replicas under load", || async {
        let n = replicas(&ns, "qwen-single").await;
        seen_max.fetch_max(n, Ordering::Relaxed);
        Ok((n == 3).then_some(()))
    })
    .await
    .unwrap();
    let up = wait_for(TIMEOUT, "status at 3 replicas", || async {
        Ok(status(&ns, "qwen-single")
            .await
            .filter(|s| s.targets.first().is_some_and(|t| t.current_replicas == 3)))
    })
    .await
    .unwrap();
    let t = &up.targets[0];
    assert_eq!(t.desired_replicas, 3);
    assert!(t.last_scale_time.is_some(), "{t:?}");
    assert!(
        matches!(t.mode.as_deref(), Some("Panic" | "Stable")),
        "{t:?}"
    );
    assert!(event_reasons(&ns).await.contains(&"ScaledUp".to_string()));
    wait_for(TIMEOUT, "3 entry pods with IPs", || async {
        Ok((entry_ips(&ns, "qwen-single").await?.len() == 3).then_some(()))
    })
    .await
    .unwrap();

    // A controller restart under sustained load neither flaps nor exceeds maxReplicas.
    drop(autoscaler);
    autoscaler = Autoscaler::start(ns.client.clone(), &ns.name);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = replicas(&ns, "qwen-single").await;
        seen_max.fetch_max(n, Ordering::Relaxed);
        assert_eq!(
            n, 3,
            "restarted autoscaler changed replicas under the same load"
        );
    }
    assert_eq!(
        seen_max.load(Ordering::Relaxed),
        3,
        "never above maxReplicas"
    );

    // Stop the load: after the cooldown and stabilization windows it returns to the minimum.
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.abort();
    }
    wait_for(TIMEOUT, "back to 1 replica", || async {
        Ok((replicas(&ns, "qwen-single").await == 1).then_some(()))
    })
    .await
    .unwrap();
    let down = wait_for(TIMEOUT, "status back at 1 replica", || async {
        Ok(status(&ns, "qwen-single").await.filter(|s| {
            s.targets
                .first()
                .is_some_and(|t| t.current_replicas == 1 && t.desired_replicas == 1)
        }))
    })
    .await
    .unwrap();
    assert_eq!(down.targets[0].mode.as_deref(), Some("Stable"));
    assert!(down.targets[0].panic_until.is_none());
    assert!(
        down.targets[0].last_scale_time.as_ref().map(|x| x.0)
            > t.last_scale_time.as_ref().map(|x| x.0),
        "scale-down recorded its time"
    );
    assert!(event_reasons(&ns).await.contains(&"ScaledDown".to_string()));
    drop(autoscaler);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_is_a_condition() {
    let ns = TestNamespace::new("autoscale-missing").await;
    let mut policy = load_yaml("config/samples/autoscalingpolicy-homogeneous.yaml");
    policy["spec"]["homogeneousTarget"]["target"]["targetRef"]["name"] = json!("nowhere");
    ns.create(&policy).await.expect("create AutoscalingPolicy");
    let _autoscaler = Autoscaler::start(ns.client.clone(), &ns.name);
    let s = wait_for(TIMEOUT, "TargetFound=False", || async {
        Ok(status(&ns, "qwen-single")
            .await
            .filter(|s| s.conditions.iter().any(|c| c.type_ == "TargetFound")))
    })
    .await
    .unwrap();
    assert_eq!(
        condition(&s, "TargetFound"),
        ("False".into(), "TargetNotFound".into())
    );
    assert_eq!(
        condition(&s, "Ready"),
        ("False".into(), "TargetNotFound".into())
    );
    assert_eq!(s.observed_generation, Some(1));
    assert!(event_reasons(&ns)
        .await
        .contains(&"TargetNotFound".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heterogeneous_policy_splits_replicas_by_cost() {
    let ns = TestNamespace::new("autoscale-mix").await;
    let (_sim, port) = start_sim();
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    create_model_serving(&ns, "cheap", 1, port).await;
    create_model_serving(&ns, "dear", 0, port).await;
    // Same capacity per instance, the l4 ModelServing at a third of the price but capped at
    // two groups by the policy: demand beyond that must go to the h100 one.
    ns.create(&json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gpu-cost-policy"},
        "data": {"cost-policy.yaml": "headroom: 1.0\naccelerators:\n  - {name: l4, pricePerHour: 1.0, gpusPerNode: 8}\n  - {name: h100, pricePerHour: 3.0, gpusPerNode: 8}\nmodels:\n  - name: qwen\n    profiles:\n      - {accelerator: l4, gpusPerInstance: 1, capacity: 4.0}\n      - {accelerator: h100, gpusPerInstance: 1, capacity: 4.0}\n"}
    }))
    .await
    .expect("create cost policy ConfigMap");
    ns.create(&json!({
        "apiVersion": "workload.muster.dev/v1alpha1", "kind": "AutoscalingPolicy",
        "metadata": {"name": "mix"},
        "spec": {
            "metrics": [{"name": "vllm:num_requests_waiting", "targetValue": "4"}],
            "behavior": {
                "scaleUp": {"stablePolicy": {"stabilizationWindow": "4s"}, "panicPolicy": {"period": "2s"}},
                "scaleDown": {"stabilizationWindow": "3s", "cooldown": "3s"}
            },
            "heterogeneousTarget": {
                "costPolicy": {"configMapName": "gpu-cost-policy"},
                "params": [
                    {"target": {"targetRef": {"name": "dear"}}, "accelerator": "h100", "cost": 3, "minReplicas": 0, "maxReplicas": 4},
                    {"target": {"targetRef": {"name": "cheap"}}, "accelerator": "l4", "cost": 1, "minReplicas": 1, "maxReplicas": 2}
                ]
            }
        }
    }))
    .await
    .expect("create AutoscalingPolicy");
    let _autoscaler = Autoscaler::start(ns.client.clone(), &ns.name);

    let ip = wait_for(TIMEOUT, "the cheap pod's IP", || async {
        Ok(entry_ips(&ns, "cheap").await?.into_iter().next())
    })
    .await
    .unwrap();
    let counts = || async { (replicas(&ns, "cheap").await, replicas(&ns, "dear").await) };
    let idle = wait_for(TIMEOUT, "a Ready status with both targets", || async {
        Ok(status(&ns, "mix").await.filter(|s| {
            s.targets.len() == 2
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        }))
    })
    .await
    .unwrap();
    assert_eq!(condition(&idle, "Infeasible").0, "False");
    assert_eq!(counts().await, (1, 0));

    // ~14 waiting at 4 per instance needs 4 instances: both cheap ones, then two dear ones.
    let stop = Arc::new(AtomicBool::new(false));
    let load = drive_load(SocketAddr::new(ip.parse().unwrap(), port), 16, stop.clone());
    wait_for(TIMEOUT, "cheap 2 + dear 2 under load", || async {
        Ok((counts().await == (2, 2)).then_some(()))
    })
    .await
    .unwrap();
    let up = wait_for(TIMEOUT, "status of the split", || async {
        Ok(status(&ns, "mix").await.filter(|s| {
            s.targets
                .iter()
                .all(|t| t.current_replicas == 2 && t.desired_replicas == 2)
        }))
    })
    .await
    .unwrap();
    let names: Vec<&str> = up.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["dear", "cheap"]);
    assert!(up.targets.iter().all(|t| t.last_scale_time.is_some()));
    assert!(event_reasons(&ns).await.contains(&"ScaledUp".to_string()));

    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.abort();
    }
    wait_for(TIMEOUT, "back to cheap 1 + dear 0", || async {
        Ok((counts().await == (1, 0)).then_some(()))
    })
    .await
    .unwrap();
    assert!(event_reasons(&ns).await.contains(&"ScaledDown".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disaggregated_roles_scale_within_the_ratio_band() {
    let ns = TestNamespace::new("autoscale-pd").await;
    let (_sim, port) = start_sim();
    let _controller = ControllerHandle::start(ns.client.clone(), &ns.name);
    let role = |name: &str| {
        json!({
            "name": name, "replicas": 1, "workerReplicas": 0,
            "entryTemplate": {
                "metadata": {"labels": {"app": "pd"}},
                "spec": {"containers": [{
                    "name": "engine", "image": "muster/engine-sim:latest",
                    "ports": [{"containerPort": port}],
                    "resources": {"requests": {"cpu": "100m"}}
                }]}
            }
        })
    };
    ns.create(&json!({
        "apiVersion": "workload.muster.dev/v1alpha1", "kind": "ModelServing",
        "metadata": {"name": "pd"},
        "spec": {"replicas": 1, "schedulerName": "volcano",
                 "template": {"roles": [role("prefill"), role("decode")]}}
    }))
    .await
    .expect("create ModelServing");
    let short = json!({
        "scaleUp": {"stablePolicy": {"stabilizationWindow": "4s"}, "panicPolicy": {"period": "2s", "panicModeHold": "4s"}},
        "scaleDown": {"instances": 4, "period": "2s", "stabilizationWindow": "3s", "cooldown": "3s"}
    });
    let waiting = json!([{"name": "vllm:num_requests_waiting", "targetValue": "4"}]);
    ns.create(&json!({
        "apiVersion": "workload.muster.dev/v1alpha1", "kind": "AutoscalingPolicy",
        "metadata": {"name": "pd"},
        "spec": {
            "behavior": short,
            "disaggregatedTarget": {
                "targetRef": {"name": "pd"},
                "roles": {
                    "prefill": {"minReplicas": 1, "maxReplicas": 2, "metrics": waiting},
                    "decode": {"minReplicas": 1, "maxReplicas": 4, "metrics": waiting}
                },
                "ratioConstraint": {"numeratorRole": "decode", "denominatorRole": "prefill", "minRatio": "1", "maxRatio": "2"}
            }
        }
    }))
    .await
    .expect("create AutoscalingPolicy");
    let _autoscaler = Autoscaler::start(ns.client.clone(), &ns.name);

    let role_counts = || async {
        let ms = Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name)
            .get("pd")
            .await
            .unwrap();
        let r = &ms.spec.template.roles;
        (r[0].replicas, r[1].replicas)
    };
    let decode_ip = wait_for(TIMEOUT, "the decode pod's IP", || async {
        let pods = Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
            .list(&ListParams::default().labels(&format!(
                "{}=decode,{}=true",
                labels::ROLE,
                labels::ENTRY
            )))
            .await?
            .items;
        Ok(pods.iter().find_map(|p| p.status.as_ref()?.pod_ip.clone()))
    })
    .await
    .unwrap();
    wait_for(TIMEOUT, "a Ready status for both roles", || async {
        Ok(status(&ns, "pd").await.filter(|s| {
            s.targets.len() == 2
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        }))
    })
    .await
    .unwrap();
    assert_eq!(role_counts().await, (1, 1));

    // Only decode is loaded: it goes to its maximum (4) and the band decode/prefill ≤ 2 pulls
    // the idle prefill role up to 2.
    let stop = Arc::new(AtomicBool::new(false));
    let load = drive_load(
        SocketAddr::new(decode_ip.parse().unwrap(), port),
        16,
        stop.clone(),
    );
    wait_for(TIMEOUT, "prefill 2, decode 4", || async {
        Ok((role_counts().await == (2, 4)).then_some(()))
    })
    .await
    .unwrap();
    let up = wait_for(TIMEOUT, "status of both roles", || async {
        Ok(status(&ns, "pd").await.filter(|s| {
            s.targets
                .iter()
                .map(|t| (t.name.as_str(), t.desired_replicas))
                .collect::<Vec<_>>()
                == [("pd/decode", 4), ("pd/prefill", 2)]
        }))
    })
    .await
    .unwrap();
    assert_eq!(condition(&up, "RatioConstraintViolated").0, "False");
    // The ModelServing controller follows: one entry pod per role instance.
    wait_for(TIMEOUT, "2 prefill and 4 decode pods", || async {
        let pods = Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
            .list(&ListParams::default().labels(&format!("{}=pd", labels::MODEL_SERVING_NAME)))
            .await?
            .items;
        let count = |role: &str| {
            pods.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(labels::ROLE))
                        .map(String::as_str)
                        == Some(role)
                })
                .count()
        };
        Ok((count("prefill") == 2 && count("decode") == 4).then_some(()))
    })
    .await
    .unwrap();

    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.abort();
    }
    wait_for(TIMEOUT, "back to prefill 1, decode 1", || async {
        Ok((role_counts().await == (1, 1)).then_some(()))
    })
    .await
    .unwrap();
}
