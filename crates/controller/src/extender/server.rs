//! HTTP shell of the extender: axum routes for Volcano's verbs and the watches that keep the
//! state current.

use std::future::Future;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource};
use muster_api::labels::{GROUP_NAME, MODEL_SERVING_NAME};
use muster_api::volcano::{HyperNode, PodGroup};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::relist::Change;
use super::state::ExtenderState;

type Shared = Arc<RwLock<ExtenderState>>;

fn json<T: Serialize>(v: &T) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).expect("responses serialise"),
    )
        .into_response()
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    // Volcano treats non-200 as an error; with `ignorable: true` it then passes the node
    // (predicate) or adds no score (prioritize), so a bad body never blocks scheduling.
    warn!(error = %e, "bad extender request");
    (StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

async fn predicate(State(s): State<Shared>, body: Bytes) -> Response {
    debug!(verb = "predicate", bytes = body.len(), "extender request");
    let res = s.read().expect("state lock").predicate(&body);
    match res {
        Ok(r) => json(&r),
        Err(e) => bad_request(e),
    }
}

async fn prioritize(State(s): State<Shared>, body: Bytes) -> Response {
    debug!(verb = "prioritize", bytes = body.len(), "extender request");
    let res = s.read().expect("state lock").prioritize(&body);
    match res {
        Ok(r) => json(&r),
        Err(e) => bad_request(e),
    }
}

/// Routes: `POST /predicate`, `POST /prioritize` (Volcano posts to `urlPrefix/<verb>`), and
/// `GET /healthz`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/predicate", post(predicate))
        .route("/prioritize", post(prioritize))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

fn watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    state: Shared,
    apply: fn(&mut ExtenderState, Change<K>),
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    crate::watch::spawn(api, cfg, state, apply, crate::watch::ignore_listed)
}

/// Serves the extender on `listener` until `shutdown` completes, keeping its state current from
/// watches of Nodes, HyperNodes, ServingGroup Pods and Muster's PodGroups.
pub async fn run(
    client: Client,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state: Shared = Arc::default();
    let all = watcher::Config::default;
    let watches = [
        watch(
            Api::<Node>::all(client.clone()),
            all(),
            state.clone(),
            ExtenderState::node,
        ),
        watch(
            Api::<HyperNode>::all(client.clone()),
            all(),
            state.clone(),
            ExtenderState::hypernode,
        ),
        watch(
            Api::<Pod>::all(client.clone()),
            all().labels(GROUP_NAME),
            state.clone(),
            ExtenderState::pod,
        ),
        watch(
            Api::<PodGroup>::all(client.clone()),
            all().labels(MODEL_SERVING_NAME),
            state.clone(),
            ExtenderState::pod_group,
        ),
    ];
    info!(addr = ?listener.local_addr().ok(), "muster-topology-extender serving");
    let res = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    for w in watches {
        w.abort();
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_verbs_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Arc::default());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let health = call(addr, "GET", "/healthz", "").await;
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
            "{health}"
        );
        // Nothing known: every node scores 0 and passes (neutral, fail open).
        let r = call(
            addr,
            "POST",
            "/prioritize",
            r#"{"task":{"Name":"p"},"nodes":[{"Name":"n1"}],"extra":1}"#,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.contains(r#""nodeScore":{"n1":0.0}"#) && r.contains(r#""errorMessage":"""#),
            "{r}"
        );
        let p = call(
            addr,
            "POST",
            "/predicate",
            r#"{"task":{},"node":{"Name":"n1"}}"#,
        )
        .await;
        assert!(p.ends_with(r#"{"status":"","code":0}"#), "{p}");
        let bad = call(addr, "POST", "/predicate", "{oops").await;
        assert!(
            bad.starts_with("HTTP/1.1 400") && bad.contains("predicate verb"),
            "{bad}"
        );
    }
}
