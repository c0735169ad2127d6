//! The monitoring HTTP endpoint (15014): `/ready`, Prometheus `/metrics`, and istiod's debug
//! views. `/ready` and `/metrics` answer anyone; `/debug/*` exposes every proxy's config and
//! the whole registry, so it answers loopback clients only unless started with `--debug-open`.

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State as Extract};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use meshpilot_model::{Endpoint, Service, Snapshot, TargetPort};
use meshpilot_translate::dump::ResourceType as DumpType;
use meshpilot_xds::{ConnectionRegistry, METRICS_CONTENT_TYPE, Published, XdsMetrics};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct State {
    pub ready: watch::Receiver<bool>,
    pub published: watch::Receiver<Arc<Published>>,
    pub metrics: Arc<XdsMetrics>,
    pub registry: Arc<ConnectionRegistry>,
    /// Serve `/debug/*` to non-loopback clients too.
    pub debug_open: bool,
}

pub async fn serve(
    addr: SocketAddr,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

fn router(state: State) -> Router {
    let debug = Router::new()
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/registryz", get(registryz))
        .route("/debug/configz", get(configz))
        .route("/debug/adsz", get(adsz))
        .route_layer(middleware::from_fn_with_state(state.clone(), debug_access));
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(debug)
        .with_state(state)
}

/// Whether a client at `peer` may read the debug endpoints.
pub fn debug_allowed(peer: IpAddr, debug_open: bool) -> bool {
    // `::ffff:127.0.0.1` is loopback too when the listener is dual-stack.
    debug_open || peer.to_canonical().is_loopback()
}

async fn debug_access(
    Extract(state): Extract<State>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if debug_allowed(peer.ip(), state.debug_open) {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        "debug endpoints answer loopback clients only (start discovery with --debug-open to \
         serve others)\n",
    )
        .into_response()
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

/// Prometheus text exposition, under Istio's metric names.
async fn metrics(Extract(state): Extract<State>) -> Response {
    let snapshot = state.published.borrow().snapshot().clone();
    state.metrics.set_config_counts(
        snapshot.services().count(),
        snapshot.virtual_services().len(),
    );
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

type Params = Query<HashMap<String, String>>;

async fn syncz(Extract(state): Extract<State>, Query(params): Params) -> Json<Value> {
    Json(
        state
            .registry
            .syncz(params.get("namespace").map(String::as_str)),
    )
}

async fn adsz(Extract(state): Extract<State>) -> Json<Value> {
    Json(state.registry.adsz())
}

async fn config_dump(Extract(state): Extract<State>, Query(params): Params) -> Response {
    let Some(proxy_id) = params.get("proxyID").filter(|p| !p.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "you must provide a proxyID in the query string (e.g. ?proxyID=pod.namespace)",
        );
    };
    let types = match dump_types(params.get("types"), params.get("include_eds")) {
        Ok(types) => types,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let Some(connection) = state.registry.find(proxy_id) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("proxy {proxy_id:?} is not connected to this control plane"),
        );
    };
    match meshpilot_xds::config_dump(&connection, &types) {
        Ok(json) => Json(json).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `types=cds,lds,…` (default: clusters, listeners, routes), plus endpoints when
/// `include_eds=true`.
fn dump_types(
    types: Option<&String>,
    include_eds: Option<&String>,
) -> Result<Vec<DumpType>, String> {
    let mut wanted = match types.filter(|t| !t.is_empty()) {
        None => vec![DumpType::Clusters, DumpType::Listeners, DumpType::Routes],
        Some(list) => list
            .split(',')
            .map(|t| match t.trim() {
                "cds" => Ok(DumpType::Clusters),
                "lds" => Ok(DumpType::Listeners),
                "rds" => Ok(DumpType::Routes),
                "eds" => Ok(DumpType::Endpoints),
                other => Err(format!(
                    "unknown type {other:?} in types= (expected cds, lds, rds, eds)"
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    if include_eds.is_some_and(|v| v == "true") && !wanted.contains(&DumpType::Endpoints) {
        wanted.push(DumpType::Endpoints);
    }
    Ok(wanted)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

async fn registryz(Extract(state): Extract<State>) -> Json<Value> {
    let snapshot = state.published.borrow().snapshot().clone();
    Json(registry_json(&snapshot))
}

async fn configz(Extract(state): Extract<State>) -> Json<Value> {
    let snapshot = state.published.borrow().snapshot().clone();
    Json(configs_json(&snapshot))
}

/// Services and their endpoints as the model sees them.
fn registry_json(snapshot: &Snapshot) -> Value {
    Value::Array(
        snapshot
            .services()
            .map(|s| service_json(s, snapshot.endpoints(&s.hostname)))
            .collect(),
    )
}

fn service_json(service: &Service, endpoints: &[Endpoint]) -> Value {
    let ports: Vec<Value> = service
        .ports
        .iter()
        .map(|p| {
            let target = match &p.target_port {
                TargetPort::Number(n) => json!(n),
                TargetPort::Name(name) => json!(name),
                TargetPort::Unset => Value::Null,
            };
            json!({
                "name": p.name,
                "port": p.port,
                "targetPort": target,
                "protocol": p.protocol.as_str(),
            })
        })
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let l = &e.locality;
            let locality = [&l.region, &l.zone, &l.subzone]
                .iter()
                .take_while(|part| !part.is_empty())
                .map(|part| part.as_str())
                .collect::<Vec<_>>()
                .join("/");
            json!({
                "address": e.address.to_string(),
                "port": e.port,
                "portName": e.port_name,
                "ready": e.ready,
                "labels": *e.labels,
                "locality": locality,
                "pod": e.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)),
                "serviceAccount": e.service_account,
            })
        })
        .collect();
    json!({
        "hostname": service.hostname.to_string(),
        "namespace": service.namespace,
        "name": service.name,
        "clusterIPs": service.cluster_ips.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
        "headless": service.headless,
        "externalName": service.external_name,
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// The VirtualServices and DestinationRules in effect (hosts resolved), and those rejected
/// with their reasons.
fn configs_json(snapshot: &Snapshot) -> Value {
    let entry = |namespace: &str, name: &str, spec: Value| json!({"namespace": namespace, "name": name, "spec": spec});
    let virtual_services: Vec<Value> = snapshot
        .virtual_services()
        .iter()
        .map(|vs| {
            let spec = serde_json::to_value(&vs.spec).unwrap_or(Value::Null);
            entry(&vs.meta.namespace, &vs.meta.name, spec)
        })
        .collect();
    let destination_rules: Vec<Value> = snapshot
        .destination_rules()
        .iter()
        .map(|dr| {
            let spec = serde_json::to_value(&dr.spec).unwrap_or(Value::Null);
            entry(&dr.meta.namespace, &dr.meta.name, spec)
        })
        .collect();
    let rejected: Vec<Value> = snapshot
        .rejected()
        .iter()
        .map(|r| {
            json!({
                "kind": r.key.kind.kind_name(),
                "namespace": r.key.namespace,
                "name": r.key.name,
                "errors": r.errors.iter()
                    .map(|e| json!({"path": e.path, "reason": e.reason}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "virtualServices": virtual_services,
        "destinationRules": destination_rules,
        "rejected": rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::fixtures::mk_reviews_index;
    use meshpilot_model::{Index, Object};

    #[test]
    fn debug_access_is_loopback_only_unless_opened() {
        let loopback: [IpAddr; 3] = [
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "::ffff:127.0.0.1".parse().unwrap(),
        ];
        for ip in loopback {
            assert!(debug_allowed(ip, false), "{ip}");
        }
        let remote: [IpAddr; 3] = [
            "10.244.1.20".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
            "fd00::1".parse().unwrap(),
        ];
        for ip in remote {
            assert!(!debug_allowed(ip, false), "{ip}");
            assert!(debug_allowed(ip, true), "{ip}");
        }
    }

    #[test]
    fn dump_types_follow_istiod_query_parameters() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            dump_types(None, None).unwrap(),
            [DumpType::Clusters, DumpType::Listeners, DumpType::Routes]
        );
        assert_eq!(
            dump_types(s("cds,lds").as_ref(), s("true").as_ref()).unwrap(),
            [DumpType::Clusters, DumpType::Listeners, DumpType::Endpoints]
        );
        assert_eq!(
            dump_types(s("eds").as_ref(), None).unwrap(),
            [DumpType::Endpoints]
        );
        assert!(dump_types(s("sds").as_ref(), None).is_err());
    }

    #[test]
    fn registryz_shows_services_with_endpoints() {
        let mut index = mk_reviews_index(&["v1"]);
        let json = registry_json(&index.snapshot());
        let service = &json[0];
        assert_eq!(service["hostname"], "reviews.default.svc.cluster.local");
        assert_eq!(service["clusterIPs"][0], "10.96.120.15");
        assert_eq!(service["ports"][0]["protocol"], "HTTP");
        let endpoint = &service["endpoints"][0];
        assert_eq!(endpoint["address"], "10.244.1.11");
        assert_eq!(endpoint["port"], 9080);
        assert_eq!(endpoint["ready"], true);
        assert_eq!(endpoint["labels"]["version"], "v1");
    }

    #[test]
    fn configz_lists_configs_in_effect_and_rejections() {
        let mut index = Index::default();
        let yaml = "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n";
        let spec = serde_yaml_ng::from_str(yaml).unwrap();
        index.apply(Object::VirtualService(
            meshpilot_model::ConfigMeta {
                name: "reviews".into(),
                namespace: "default".into(),
                creation_timestamp: None,
            },
            Box::new(spec),
        ));
        let bad =
            "hosts: [ratings]\nhttp:\n- route:\n  - {destination: {host: ratings}, weight: -5}\n";
        let spec = serde_yaml_ng::from_str(bad).unwrap();
        index.apply(Object::VirtualService(
            meshpilot_model::ConfigMeta {
                name: "ratings".into(),
                namespace: "default".into(),
                creation_timestamp: None,
            },
            Box::new(spec),
        ));
        let json = configs_json(&index.snapshot());
        let vs = &json["virtualServices"][0];
        assert_eq!(vs["name"], "reviews");
        assert_eq!(
            vs["spec"]["http"][0]["route"][0]["destination"]["host"],
            "reviews.default.svc.cluster.local",
            "hosts are shown resolved"
        );
        let rejected = &json["rejected"][0];
        assert_eq!(rejected["kind"], "VirtualService");
        assert_eq!(rejected["name"], "ratings");
        assert!(
            rejected["errors"][0]["path"]
                .as_str()
                .unwrap()
                .contains("weight")
        );
    }
}
