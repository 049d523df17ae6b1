//! Controller scale benchmark (`make bench-controller`): applies N ModelServings × G groups on
//! the local control plane, with the real `muster-controller` binary, and reports the time
//! until every PodGroup and pod exists, reconciles per second, and the controller's peak RSS.
//! Writes `target/bench/controller-scale.json` and `.md`.
//!
//! Usage: bench-controller [MODELSERVINGS (default 200)] [GROUPS (default 4)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use muster_api::serving::ModelServing;
use muster_api::volcano::PodGroup;
use muster_e2e::{kubeconfig_path, repo_root, workspace_binary, TestNamespace};
use serde_json::json;

const METRICS_ADDR: &str = "127.0.0.1:18190";

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// One sample of the controller's own metric `name`.
fn metric(name: &str) -> f64 {
    let out = Command::new("curl")
        .args([
            "-fsS",
            "--noproxy",
            "*",
            &format!("http://{METRICS_ADDR}/metrics"),
        ])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("counts are integers"))
        .collect();
    let servings = args.first().copied().unwrap_or(200);
    let groups = args.get(1).copied().unwrap_or(4);
    let ns = TestNamespace::new("bench-ctrl").await;
    let binary = workspace_binary("muster-controller", "muster-controller");
    let mut controller = Command::new(&binary)
        .args(["--namespace", &ns.name, "--metrics-addr", METRICS_ADDR])
        .env("KUBECONFIG", kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = controller.id();

    // CPU-only pods so every group also binds on the 32 fake nodes.
    let mut template = muster_e2e::load_yaml("config/samples/modelserving-single.yaml");
    template["spec"]["replicas"] = json!(groups);
    template["spec"]["template"]["roles"][0]["tensorParallelSize"] = serde_json::Value::Null;
    template["spec"]["template"]["roles"][0]["entryTemplate"]["spec"]["containers"][0]
        ["resources"] = json!({"requests": {"cpu": "10m"}});
    let api = Api::<ModelServing>::namespaced(ns.client.clone(), &ns.name);
    eprintln!(
        "[bench-controller] applying {servings} ModelServings × {groups} groups in {}",
        ns.name
    );
    let start = Instant::now();
    for i in 0..servings {
        let mut doc = template.clone();
        doc["metadata"]["name"] = json!(format!("bench-{i}"));
        let ms: ModelServing = serde_json::from_value(doc)?;
        api.create(&PostParams::default(), &ms).await?;
    }
    let applied = start.elapsed();
    let want = servings * groups;
    let pods = Api::<Pod>::namespaced(ns.client.clone(), &ns.name);
    let pgs = Api::<PodGroup>::namespaced(ns.client.clone(), &ns.name);
    let mut last_report = Instant::now();
    let (mut n_pods, mut n_pgs) = (0, 0);
    let mut peak_backlog: f64 = 0.0;
    while start.elapsed() < Duration::from_secs(900) {
        peak_backlog = peak_backlog.max(metric("muster_controller_modelservings_pending"));
        n_pods = pods
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
        n_pgs = pgs.list_metadata(&ListParams::default()).await?.items.len();
        if n_pods >= want && n_pgs >= want {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "[bench-controller] {:>5.1}s: {n_pgs}/{want} PodGroups, {n_pods}/{want} pods",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let created = start.elapsed();
    let done = n_pods >= want && n_pgs >= want;
    let reconcile_count = metric("muster_controller_reconciles_total");
    let rss = peak_rss_mib(pid);
    let _ = controller.kill();
    let _ = controller.wait();

    let report = json!({
        "modelservings": servings,
        "groups_per_modelserving": groups,
        "pods": want,
        "completed": done,
        "apply_seconds": applied.as_secs_f64(),
        "all_podgroups_and_pods_seconds": created.as_secs_f64(),
        "reconciles": reconcile_count,
        "reconciles_per_second": reconcile_count / created.as_secs_f64(),
        "controller_peak_rss_mib": rss,
        "peak_pending_modelservings": peak_backlog,
    });
    let dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("controller-scale.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = format!(
        "| ModelServings × groups | pods | all PodGroups + pods exist | reconciles | reconciles/s | peak pending ModelServings | controller peak RSS |\n|---|---|---|---|---|---|---|\n| {servings} × {groups} | {want} | {:.1} s{} | {reconcile_count} | {:.1} | {peak_backlog} | {rss:.0} MiB |\n",
        created.as_secs_f64(),
        if done { "" } else { " (timed out)" },
        reconcile_count / created.as_secs_f64()
    );
    std::fs::write(dir.join("controller-scale.md"), &md)?;
    println!("{md}");
    anyhow::ensure!(done, "not every PodGroup and pod was created within 900 s");
    Ok(())
}
