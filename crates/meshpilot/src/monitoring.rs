//! The monitoring HTTP endpoint (15014): readiness now; metrics and debug views build on it.

use axum::Router;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::routing::get;
use meshpilot_xds::{Published, XdsMetrics};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct State {
    pub ready: watch::Receiver<bool>,
    pub published: watch::Receiver<Arc<Published>>,
    pub metrics: Arc<XdsMetrics>,
}

pub async fn serve(
    addr: SocketAddr,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// 200 once every source has synced, 503 before.
async fn ready(Extract(state): Extract<State>) -> (StatusCode, &'static str) {
    if *state.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: initial sync in progress\n",
        )
    }
}

/// Prometheus text exposition of the xDS counters, under Istio's metric names.
async fn metrics(Extract(state): Extract<State>) -> String {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# TYPE pilot_xds gauge\n");
    out.push_str(&format!("pilot_xds {}\n", m.connected_proxies()));
    out.push_str("# TYPE pilot_xds_pushes counter\n");
    for (t, pushes, _, _) in m.per_type() {
        out.push_str(&format!("pilot_xds_pushes{{type=\"{t}\"}} {pushes}\n"));
    }
    out.push_str("# TYPE pilot_total_xds_rejects counter\n");
    for (t, _, _, nacks) in m.per_type() {
        out.push_str(&format!(
            "pilot_total_xds_rejects{{type=\"{t}\"}} {nacks}\n"
        ));
    }
    let snapshot = state.published.borrow().snapshot().clone();
    out.push_str("# TYPE pilot_services gauge\n");
    out.push_str(&format!("pilot_services {}\n", snapshot.services().count()));
    out.push_str("# TYPE pilot_virt_services gauge\n");
    out.push_str(&format!(
        "pilot_virt_services {}\n",
        snapshot.virtual_services().len()
    ));
    out
}
