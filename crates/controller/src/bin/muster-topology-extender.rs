//! `muster-topology-extender`: the Volcano scheduler extender (predicate and prioritize verbs)
//! for the cluster in `KUBECONFIG` (or the in-cluster config). Enable it in vc-scheduler with
//! `volcano/scheduler-extender.conf.yaml` (`extender.ignorable: true`: it fails open).

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: muster-topology-extender [--listen HOST:PORT]
  --listen  where the verbs (/predicate, /prioritize) and /healthz are served (default 127.0.0.1:8713)";

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
    let mut listen = "127.0.0.1:8713".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .with_context(|| format!("--listen needs a value\n{USAGE}"))?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    muster_controller::extender::run(client, listener, shutdown)
        .await
        .context("serving")?;
    Ok(())
}
