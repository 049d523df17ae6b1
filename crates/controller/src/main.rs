//! `muster-controller`: runs Muster's controllers against the cluster in `KUBECONFIG` (or the
//! in-cluster config) and serves `/metrics` and `/healthz` on `--metrics-addr`.

use anyhow::Context as _;
use muster_controller::leader::{self, LeaderConfig};
use muster_controller::metrics::Metrics;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: muster-controller [--metrics-addr HOST:PORT] [--namespace NS] [--leader-elect [--lease-namespace NS]]
                         [--hypernode-discovery [--tier-label N=KEY]... [--tier-name N=NAME]... [--discovery-source S]]
                         [--autoscaling-period SECONDS]
  --metrics-addr         where /metrics and /healthz listen (default 127.0.0.1:8080)
  --namespace            watch one namespace only (default: all)
  --leader-elect         act only while holding Lease muster-controller (for several replicas)
  --lease-namespace      namespace of that Lease (default: $POD_NAMESPACE or default)
  --hypernode-discovery  also keep Volcano HyperNodes true to node labels
  --tier-label N=KEY     node label naming tier N's HyperNodes (repeat for tiers 1..n; default
                         1=topology.muster.dev/rack 2=topology.muster.dev/spine)
  --tier-name N=NAME     spec.tierName of tier N's HyperNodes (default with no --tier-label: rack, spine)
  --discovery-source S   value of topology.muster.dev/discovery-source on generated HyperNodes;
                         only HyperNodes with it are updated or deleted (default: label)
  --autoscaling-period   seconds between AutoscalingPolicy evaluations (default 15)";

struct Args {
    metrics_addr: String,
    namespace: Option<String>,
    leader_elect: bool,
    lease_namespace: String,
    discovery: Option<muster_controller::discovery::DiscoveryOptions>,
    autoscaling_period: std::time::Duration,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut out = Args {
        metrics_addr: "127.0.0.1:8080".into(),
        namespace: None,
        leader_elect: false,
        lease_namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
        discovery: None,
        autoscaling_period: std::time::Duration::from_secs(15),
    };
    let (mut discovery, mut tier_labels, mut tier_names, mut source) =
        (false, Vec::new(), Vec::new(), None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--metrics-addr" => out.metrics_addr = value("--metrics-addr")?,
            "--namespace" => out.namespace = Some(value("--namespace")?),
            "--leader-elect" => out.leader_elect = true,
            "--lease-namespace" => out.lease_namespace = value("--lease-namespace")?,
            "--hypernode-discovery" => discovery = true,
            "--tier-label" => tier_labels.push(value("--tier-label")?),
            "--tier-name" => tier_names.push(value("--tier-name")?),
            "--discovery-source" => source = Some(value("--discovery-source")?),
            "--autoscaling-period" => {
                let v = value("--autoscaling-period")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .with_context(|| format!("--autoscaling-period {v:?}: expected seconds > 0"))?;
                out.autoscaling_period = std::time::Duration::from_secs_f64(secs);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !discovery && (!tier_labels.is_empty() || !tier_names.is_empty() || source.is_some()) {
        anyhow::bail!(
            "--tier-label/--tier-name/--discovery-source need --hypernode-discovery\n{USAGE}"
        );
    }
    if discovery {
        let cfg = muster_controller::discovery::parse_tier_flags(
            &tier_labels,
            &tier_names,
            source.as_deref(),
        )?;
        out.discovery = Some(muster_controller::discovery::DiscoveryOptions::new(cfg));
    }
    Ok(Some(out))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    if std::env::var("MUSTER_LOG_FORMAT").is_ok_and(|v| v == "json") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::new();

    let listener = tokio::net::TcpListener::bind(&args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move { m.render() }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    tracing::info!(metrics_addr = %args.metrics_addr, "muster-controller started");

    let leadership = if args.leader_elect {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("muster-controller-{}", std::process::id()));
        let config = LeaderConfig {
            lease_name: "muster-controller".into(),
            namespace: args.lease_namespace.clone(),
            identity,
        };
        Some(leader::acquire(client.clone(), &config).await?)
    } else {
        None
    };
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let lost = async move {
            match leadership {
                Some(rx) => leader::lost(rx).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
            _ = lost => {},
        }
        tracing::info!("shutting down");
    };
    // Both controllers stop on the same signal (or loss of leadership).
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let discovery = args.discovery.map(|opts| {
        tokio::spawn(muster_controller::discovery::run(
            client.clone(),
            opts,
            shutdown.clone(),
        ))
    });
    let autoscaler = tokio::spawn(muster_controller::autoscaling::reconcile::run(
        client.clone(),
        args.namespace.clone(),
        muster_controller::autoscaling::reconcile::AutoscalerOptions {
            period: args.autoscaling_period,
            ..Default::default()
        },
        shutdown.clone(),
    ));
    muster_controller::serving::reconcile::run(client, metrics, args.namespace, shutdown).await;
    let _ = autoscaler.await;
    if let Some(d) = discovery {
        let _ = d.await;
    }
    Ok(())
}
