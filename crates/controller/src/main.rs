//! `muster-controller`: runs Muster's controllers against the cluster in `KUBECONFIG` (or the
//! in-cluster config) and serves `/metrics`, `/healthz` on `--metrics-addr`.

use anyhow::Context as _;
use muster_controller::metrics::Metrics;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let json = std::env::var("MUSTER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    if json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let mut metrics_addr = "127.0.0.1:8080".to_string();
    let mut namespace = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--metrics-addr" => {
                metrics_addr = args.next().context("--metrics-addr needs an address")?
            }
            "--namespace" => namespace = Some(args.next().context("--namespace needs a name")?),
            "-h" | "--help" => {
                println!("usage: muster-controller [--metrics-addr HOST:PORT (default 127.0.0.1:8080)] [--namespace NS (default: all)]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}; see --help"),
        }
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::new();

    let listener = tokio::net::TcpListener::bind(&metrics_addr)
        .await
        .with_context(|| format!("binding {metrics_addr}"))?;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move { m.render() }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    tracing::info!(%metrics_addr, "muster-controller started");

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    };
    muster_controller::serving::reconcile::run(client, metrics, namespace, shutdown).await;
    Ok(())
}
