//! `meshpilot webhook`: the sidecar injector as a Kubernetes mutating admission webhook.
//!
//! The API server POSTs an `admission.k8s.io/v1` AdmissionReview with the Pod being created to
//! `/inject` over HTTPS; the answer carries a base64 JSON patch (RFC 6902, computed by diffing
//! the Pod before and after injection) that adds the sidecar. Which namespaces and pods are
//! sent is the MutatingWebhookConfiguration's job (deploy/kustomize/base/webhook.yaml); here a
//! pod is only skipped when it opted out, is already injected or uses the host network.
//!
//! Pod creation must never fail because of meshpilot: every answer is `allowed: true`, and a
//! request that cannot be read or a pod that cannot be injected gets a warning instead.

use crate::inject_cmd::InjectionFlags;
use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Args;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use meshpilot_agent::inject::{self, InjectConfig, Outcome};
use meshpilot_xds::tls;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The Service names the API server calls the webhook by (its serving certificate's SANs).
const SERVICE_SANS: [&str; 2] = [
    "meshpilot.meshpilot-system.svc",
    "meshpilot.meshpilot-system.svc.cluster.local",
];
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// HTTPS address the API server calls.
    #[arg(long, default_value = "0.0.0.0:15017")]
    pub listen: SocketAddr,
    /// `cert-chain.pem`, `key.pem` and `root-cert.pem` (the caBundle of the webhook
    /// configuration); generated there on first start when absent.
    #[arg(long, default_value = "./meshpilot-tls")]
    pub tls_dir: PathBuf,
    /// Extra DNS names or IPs for a generated serving certificate, besides
    /// meshpilot.meshpilot-system.svc[.cluster.local] (repeatable).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    #[command(flatten)]
    pub injection: InjectionFlags,
}

pub fn run(args: WebhookArgs) -> Result<()> {
    let config = args.injection.resolve()?;
    let mut sans: Vec<String> = SERVICE_SANS.iter().map(|s| s.to_string()).collect();
    sans.extend(args.tls_sans.iter().cloned());
    let credentials = tls::load_or_generate(&args.tls_dir, &sans)
        .with_context(|| format!("TLS material in {}", args.tls_dir.display()))?;
    let tls = tls::server_config(&credentials, b"http/1.1").context("TLS configuration")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let tcp = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("listening on {}", args.listen))?;
            tracing::info!(
                address = %tcp.local_addr()?,
                root_cert = %credentials.root_cert_path.display(),
                "serving the injection webhook on /inject"
            );
            serve(tcp, tls, config, wait_for_signal()).await
        })
}

/// Serves `/inject` (and `/healthz` for probes) over TLS until `shutdown` completes.
pub async fn serve(
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: InjectConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new()
        .route("/inject", post(handle_inject))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(config));
    let listener = TlsListener::spawn(tcp, TlsAcceptor::from(tls))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the webhook")
}

async fn handle_inject(State(config): State<Arc<InjectConfig>>, body: Bytes) -> axum::Json<Value> {
    axum::Json(review(&body, &config))
}

/// Connections that finished their TLS handshake. Handshakes run in their own tasks, so a slow
/// client cannot hold up the others.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(tcp: TcpListener, acceptor: TlsAcceptor) -> Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (sender, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                if sender.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let ready = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends with the listener; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The AdmissionReview answering `body`. Always allows; a patch when the pod was injected, a
/// warning when something prevented it.
pub fn review(body: &[u8], config: &InjectConfig) -> Value {
    let raw: Value = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) => return unreadable(None, &format!("the body is not JSON: {e}")),
    };
    let uid = raw["request"]["uid"].as_str().map(str::to_string);
    let request: AdmissionRequest<DynamicObject> =
        match serde_json::from_value::<AdmissionReview<DynamicObject>>(raw)
            .map_err(|e| e.to_string())
            .and_then(|review| review.try_into().map_err(|_| "no request".to_string()))
        {
            Ok(request) => request,
            Err(e) => return unreadable(uid, &format!("not an AdmissionReview: {e}")),
        };
    to_json(respond(&request, config))
}

/// The AdmissionReview wrapping `response`, with the patch as the API's base64 text (kube-core
/// would write the bytes as a list of numbers).
fn to_json(response: AdmissionResponse) -> Value {
    let patch = response.patch.clone();
    let mut review =
        serde_json::to_value(response.into_review()).expect("AdmissionReview serializes");
    if let Some(patch) = patch {
        review["response"]["patch"] = Value::String(BASE64.encode(patch));
    }
    review
}

/// Allowed, with a warning: a request the webhook could not read must not block the pod.
fn unreadable(uid: Option<String>, reason: &str) -> Value {
    tracing::warn!("malformed admission request: {reason}");
    let mut response = AdmissionResponse::invalid(reason);
    response.allowed = true;
    response.result = Default::default();
    response.uid = uid.unwrap_or_default();
    response.warnings = Some(vec![format!(
        "meshpilot sidecar injector: request not understood, pod admitted without a sidecar: {reason}"
    )]);
    to_json(response)
}

fn respond(request: &AdmissionRequest<DynamicObject>, config: &InjectConfig) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != Operation::Create {
        return response;
    }
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let Some(object) = &request.object else {
        return warn(response, "the request carries no Pod");
    };
    let before = match serde_json::to_value(object) {
        Ok(before) => before,
        Err(e) => return warn(response, &format!("the Pod does not serialize: {e}")),
    };
    let name = pod_display_name(&before);
    let mut pod: serde_yaml_ng::Value = match serde_yaml_ng::to_value(&before) {
        Ok(pod) => pod,
        Err(e) => return warn(response, &format!("the Pod does not convert: {e}")),
    };
    let workload = workload_name(&before);
    match inject::inject_pod_template(&mut pod, &workload, config) {
        Ok(Outcome::Injected) => {}
        Ok(outcome) => {
            tracing::info!(namespace, pod = %name, ?outcome, "not injected");
            return response;
        }
        Err(e) => {
            tracing::warn!(namespace, pod = %name, "not injected: {e}");
            return warn(response, &format!("pod {namespace}/{name}: {e}"));
        }
    }
    let after = match serde_json::to_value(&pod) {
        Ok(after) => after,
        Err(e) => return warn(response, &format!("the injected Pod does not convert: {e}")),
    };
    let patch = json_patch::diff(&before, &after);
    match response.clone().with_patch(patch) {
        Ok(patched) => {
            tracing::info!(namespace, pod = %name, workload, "injected the sidecar");
            patched
        }
        Err(e) => warn(response, &format!("the patch does not serialize: {e}")),
    }
}

fn warn(mut response: AdmissionResponse, reason: &str) -> AdmissionResponse {
    response.warnings.get_or_insert_with(Vec::new).push(format!(
        "meshpilot sidecar injector: sidecar not injected: {reason}"
    ));
    response
}

/// The name, or the `generateName` prefix a controller-created pod has before it gets one.
fn pod_display_name(pod: &Value) -> String {
    let metadata = &pod["metadata"];
    match metadata["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => format!("{}*", metadata["generateName"].as_str().unwrap_or_default()),
    }
}

/// The workload a pod belongs to, as Istio names it: a ReplicaSet's pods belong to its
/// Deployment (the ReplicaSet name without the pod-template-hash), other controllers' pods to
/// the controller, bare pods to themselves.
fn workload_name(pod: &Value) -> String {
    let metadata = &pod["metadata"];
    let controller = metadata["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|owner| owner["controller"].as_bool() == Some(true));
    if let Some(owner) = controller
        && let Some(owner_name) = owner["name"].as_str()
    {
        let hash = metadata["labels"]["pod-template-hash"].as_str();
        if owner["kind"] == "ReplicaSet"
            && let Some(deployment) = hash.and_then(|h| owner_name.strip_suffix(&format!("-{h}")))
        {
            return deployment.to_string();
        }
        return owner_name.to_string();
    }
    match metadata["name"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => metadata["generateName"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('-')
            .to_string(),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    fn mk_review(pod: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn mk_pod(labels: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "web-7d9c6b5f4-",
                "namespace": "shop",
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c6b5f4",
                    "uid": "1", "controller": true,
                }],
            },
            "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]},
        })
    }

    /// The response, and the pod with its patch applied.
    fn admit(pod: &Value) -> (Value, Value) {
        let answer = review(&mk_review(pod.clone()), &InjectConfig::default());
        let response = answer["response"].clone();
        let mut patched = pod.clone();
        if let Some(patch) = response["patch"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .expect("the patch is base64");
            let ops: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut patched, &ops).unwrap();
        }
        (answer, patched)
    }

    #[test]
    fn a_pod_gets_the_sidecar_as_a_json_patch() {
        let pod = mk_pod(json!({"app": "web", "pod-template-hash": "7d9c6b5f4"}));
        let (answer, patched) = admit(&pod);
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = &answer["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let spec = &patched["spec"];
        assert_eq!(spec["containers"][1]["name"], "istio-proxy");
        assert_eq!(spec["initContainers"][0]["name"], "istio-init");
        let env = spec["containers"][1]["env"].as_array().unwrap();
        let workload = env
            .iter()
            .find(|e| e["name"] == "ISTIO_META_WORKLOAD_NAME")
            .unwrap();
        assert_eq!(workload["value"], "web", "the Deployment's name");
        assert_eq!(
            patched["metadata"]["labels"]["security.istio.io/tlsMode"],
            "istio"
        );

        // Sent again (a second webhook, a reinvocation): nothing more to add.
        let (again, twice) = admit(&patched);
        assert!(again["response"]["patch"].is_null(), "{again}");
        assert_eq!(twice, patched);
    }

    #[test]
    fn opted_out_pods_and_other_requests_pass_unchanged() {
        let pod = mk_pod(json!({"app": "web", "sidecar.istio.io/inject": "false"}));
        let (answer, patched) = admit(&pod);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"]["patch"].is_null());
        assert!(answer["response"]["warnings"].is_null());
        assert_eq!(patched, pod);

        let mut update: Value = serde_json::from_slice(&mk_review(mk_pod(json!({})))).unwrap();
        update["request"]["operation"] = json!("UPDATE");
        let answer = review(
            &serde_json::to_vec(&update).unwrap(),
            &InjectConfig::default(),
        );
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"]["patch"].is_null());
    }

    #[test]
    fn malformed_requests_are_allowed_with_a_warning() {
        for body in [
            b"not json".to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","object":7}}"#.to_vec(),
        ] {
            let answer = review(&body, &InjectConfig::default());
            let response = &answer["response"];
            assert_eq!(response["allowed"], true, "{answer}");
            let warnings = response["warnings"].as_array().expect("warnings");
            assert!(
                warnings[0].as_str().unwrap().contains("meshpilot"),
                "{answer}"
            );
        }
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","object":7}}"#;
        assert_eq!(
            review(body, &InjectConfig::default())["response"]["uid"],
            "u-1"
        );
    }

    #[test]
    fn uninjectable_pods_are_allowed_with_a_warning() {
        let mut pod = mk_pod(json!({}));
        pod["metadata"]["annotations"] =
            json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "http"});
        let (answer, patched) = admit(&pod);
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(patched, pod);
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains("excludeOutboundPorts"), "{warning}");
    }

    #[test]
    fn workload_names_follow_the_controller() {
        let bare = json!({"metadata": {"name": "debug"}});
        assert_eq!(workload_name(&bare), "debug");
        let job = json!({"metadata": {"generateName": "backup-", "ownerReferences": [
            {"kind": "Job", "name": "backup", "controller": true}]}});
        assert_eq!(workload_name(&job), "backup");
    }
}
