//! The kube-apiserver harness with the clients meshpilot uses against it: kube-rs (typed
//! k8s-openapi v1_33 objects and `DynamicObject`s) and Debian's kubectl 1.20. Every kind the
//! mesh reads is written, including a v1beta1 EndpointSlice and a custom resource (the first
//! custom-resource create is what crashes a server built without Debian's reflect2), then the
//! API server restarts and everything is read back, and a watcher started before the restart
//! sees an object created after it. Fails (never skips) when the server is not installed.

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use meshpilot_tests::kube::ApiServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const NAMESPACE: &str = "mesh";
const POD_IP: &str = "10.244.1.5";
const WAIT: Duration = Duration::from_secs(30);

fn endpoint_slice_v1beta1() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice"),
        "endpointslices",
    )
}

fn widget() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.meshpilot.io", "v1", "Widget"),
        "widgets",
    )
}

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object deserializes")
}

async fn client(server: &ApiServer) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig_path()).expect("kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube-rs accepts the kubeconfig");
    Client::try_from(config).expect("client builds")
}

fn mk_service(name: &str) -> Service {
    from_json(json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 9080, "targetPort": 9080}],
        },
    }))
}

/// Writes what a cluster's controllers would have: a Pod with Running status, its Service's
/// Endpoints and a v1beta1 EndpointSlice, plus a CRD and one custom resource.
async fn write_mesh(client: &Client) {
    let params = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(
            &params,
            &from_json(json!({"metadata": {"name": NAMESPACE}})),
        )
        .await
        .expect("namespace created");

    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    let service = services
        .create(&params, &mk_service("reviews"))
        .await
        .expect("service created");
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert!(cluster_ip.starts_with("10.96."), "ClusterIP {cluster_ip}");

    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let pod: Pod = from_json(json!({
        "metadata": {"name": "reviews-v1-0", "labels": {"app": "reviews", "version": "v1"}},
        "spec": {"containers": [{"name": "reviews", "image": "example.invalid/reviews:v1"}]},
    }));
    pods.create(&params, &pod)
        .await
        .expect("pod created without a ServiceAccount controller");
    let status = json!({"status": {
        "phase": "Running",
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    pods.patch_status(
        "reviews-v1-0",
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("pod status written");

    let endpoints: Endpoints = from_json(json!({
        "metadata": {"name": "reviews"},
        "subsets": [{
            "addresses": [{"ip": POD_IP, "targetRef": {"kind": "Pod", "name": "reviews-v1-0", "namespace": NAMESPACE}}],
            "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        }],
    }));
    Api::<Endpoints>::namespaced(client.clone(), NAMESPACE)
        .create(&params, &endpoints)
        .await
        .expect("endpoints created");

    let slice: DynamicObject = from_json(json!({
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": "reviews-1", "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": [POD_IP],
            "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": "reviews-v1-0", "namespace": NAMESPACE},
            "topology": {"kubernetes.io/hostname": "node-1"},
        }],
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
    }));
    Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &endpoint_slice_v1beta1())
        .create(&params, &slice)
        .await
        .expect("v1beta1 endpointslice created");

    let crd: CustomResourceDefinition = from_json(json!({
        "metadata": {"name": "widgets.test.meshpilot.io"},
        "spec": {
            "group": "test.meshpilot.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"size": {"type": "integer"}, "color": {"type": "string"}},
                }}}},
            }],
        },
    }));
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&params, &crd).await.expect("CRD created");
    wait_established(&crds, "widgets.test.meshpilot.io").await;

    let small: DynamicObject = from_json(json!({
        "apiVersion": "test.meshpilot.io/v1",
        "kind": "Widget",
        "metadata": {"name": "small"},
        "spec": {"size": 3, "color": "teal"},
    }));
    let widgets = Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &widget());
    // A server built with the 1.20 tree's own reflect2 dies right here.
    widgets
        .create(&params, &small)
        .await
        .expect("custom resource created");
}

async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let crd = crds.get(name).await.expect("CRD readable");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "CRD {name} never Established");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads back everything [`write_mesh`] wrote.
async fn read_mesh(client: &Client) {
    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(version.git_version, "v1.20.2");

    // What meshpilot's EndpointSlice detection sees: 1.20 has only v1beta1.
    let groups = client.list_api_groups().await.expect("API groups");
    let discovery = groups
        .groups
        .iter()
        .find(|g| g.name == "discovery.k8s.io")
        .expect("discovery.k8s.io served");
    let versions: Vec<&str> = discovery
        .versions
        .iter()
        .map(|v| v.version.as_str())
        .collect();
    assert_eq!(versions, ["v1beta1"]);

    let service = Api::<Service>::namespaced(client.clone(), NAMESPACE)
        .get("reviews")
        .await
        .expect("service read");
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 9080);

    let pod = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .get("reviews-v1-0")
        .await
        .expect("pod read");
    assert_eq!(pod.labels()["version"], "v1");
    let status = pod.status.expect("pod status");
    assert_eq!(status.pod_ip.as_deref(), Some(POD_IP));
    assert_eq!(status.phase.as_deref(), Some("Running"));

    let endpoints = Api::<Endpoints>::namespaced(client.clone(), NAMESPACE)
        .get("reviews")
        .await
        .expect("endpoints read");
    let subsets = endpoints.subsets.expect("subsets");
    assert_eq!(subsets[0].addresses.as_ref().unwrap()[0].ip, POD_IP);

    let slices =
        Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &endpoint_slice_v1beta1())
            .list(&Default::default())
            .await
            .expect("endpointslices listed");
    assert_eq!(slices.items.len(), 1);
    let slice = &slices.items[0].data;
    assert_eq!(slice["endpoints"][0]["addresses"][0], POD_IP);
    assert_eq!(
        slice["endpoints"][0]["topology"]["kubernetes.io/hostname"],
        "node-1"
    );

    let small = Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &widget())
        .get("small")
        .await
        .expect("custom resource read");
    assert_eq!(small.data["spec"], json!({"size": 3, "color": "teal"}));
}

/// Names of Services a kube-runtime watcher reports, errors included, until the test ends.
fn watch_services(client: &Client) -> mpsc::UnboundedReceiver<Result<String, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let api = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            let seen = match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => Ok(s.name_any()),
                Ok(_) => continue,
                Err(e) => Err(e.to_string()),
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for the watcher to report `name`; returns the watch errors seen on the way.
async fn watched(
    events: &mut mpsc::UnboundedReceiver<Result<String, String>>,
    name: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Ok(seen))) if seen == name => return errors,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => errors.push(e),
            Ok(None) => panic!("watcher ended"),
            Err(_) => panic!("watcher never reported {name}; errors: {errors:?}"),
        }
    }
}

fn kubectl(server: &ApiServer, args: &[&str]) -> String {
    let out = server
        .kubectl()
        .unwrap()
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_mesh_kind_and_a_custom_resource_survive_an_api_server_restart() {
    let started = Instant::now();
    let mut server = ApiServer::start().unwrap();
    eprintln!(
        "kube-apiserver ready at {} after {:.1?}",
        server.url(),
        started.elapsed()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(client(&server));
    let mut services = runtime.block_on(async {
        write_mesh(&client).await;
        read_mesh(&client).await;
        let mut services = watch_services(&client);
        watched(&mut services, "reviews").await;
        services
    });
    eprintln!(
        "etcd + kube-apiserver resident memory: {} MiB",
        server.memory_kib().unwrap() / 1024
    );

    let restarted = Instant::now();
    server.restart().unwrap();
    eprintln!("kube-apiserver restarted in {:.1?}", restarted.elapsed());

    runtime.block_on(async {
        // The same client (its pooled connections died with the old process) still works.
        read_mesh(&client).await;
        Api::<Service>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &mk_service("ratings"))
            .await
            .expect("service created after the restart");
        let errors = watched(&mut services, "ratings").await;
        eprintln!("watch errors across the restart: {errors:?}");
    });

    let widgets = kubectl(&server, &["get", "widgets", "-n", NAMESPACE, "-o", "name"]);
    assert_eq!(widgets.trim(), "widget.test.meshpilot.io/small");
    let slices = kubectl(
        &server,
        &["get", "endpointslices", "-n", NAMESPACE, "-o", "name"],
    );
    assert_eq!(slices.trim(), "endpointslice.discovery.k8s.io/reviews-1");
    let version = kubectl(&server, &["version", "--short"]);
    assert!(version.contains("Server Version: v1.20.2"), "{version}");
    eprintln!(
        "etcd + kube-apiserver resident memory after the restart: {} MiB",
        server.memory_kib().unwrap() / 1024
    );
}

/// GETs `path` until it answers 200: the API server creates the `default` namespace from a
/// bootstrap controller shortly after it reports ready.
fn get_ok(server: &ApiServer, path: &str) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server.get(path).unwrap();
        if status == 200 || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stopped_api_server_refuses_connections_and_resumes_with_its_data() {
    let mut server = ApiServer::start().unwrap();
    let (status, body) = get_ok(&server, "/api/v1/namespaces/default");
    assert_eq!(status, 200, "{body}");
    server.stop();
    assert!(server.get("/readyz").is_err());
    server.resume().unwrap();
    let (status, body) = get_ok(&server, "/api/v1/namespaces/default");
    assert_eq!(status, 200, "{body}");
}
