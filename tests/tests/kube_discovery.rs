//! `meshpilot discovery` fed by a real kube-apiserver (1.20, built by `cargo xtask install`):
//! the CRDs from deploy/, objects written the way controllers would, an xDS client that
//! subscribes like Envoy, updates and deletes, an API-server restart mid-run, and a real Envoy
//! receiving the same config. Everything listens on loopback only.

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use meshpilot_tests::canary::Tools;
use meshpilot_tests::kube::ApiServer;
use meshpilot_tests::xds_client::{ClientState, Flavor, XdsClient, metadata};
use meshpilot_tests::{KillOnDrop, workspace_root};
use meshpilot_translate::type_urls::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = "sidecar~10.244.1.20~productpage-0.default~default.svc.cluster.local";
const REVIEWS: &str = "reviews.default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(30);

fn gvk(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn slices() -> ApiResource {
    gvk(
        "discovery.k8s.io",
        "v1beta1",
        "EndpointSlice",
        "endpointslices",
    )
}

fn virtual_services() -> ApiResource {
    gvk(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
        "virtualservices",
    )
}

fn destination_rules() -> ApiResource {
    gvk(
        "networking.istio.io",
        "v1alpha3",
        "DestinationRule",
        "destinationrules",
    )
}

async fn kube_client(server: &ApiServer) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig_path())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("test object")
}

/// Creates or replaces (server-side apply) one object.
async fn apply(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    object: Value,
) -> Result<()> {
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, resource);
    let name = object["metadata"]["name"]
        .as_str()
        .context("name")?
        .to_string();
    let params = PatchParams::apply("meshpilot-test").force();
    api.patch(&name, &params, &Patch::Apply(&dynamic(object)))
        .await
        .with_context(|| format!("applying {} {namespace}/{name}", resource.kind))?;
    Ok(())
}

fn slice(addresses: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|(pod, ip)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"},
                "topology": {"topology.kubernetes.io/zone": "zone-a"},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": "reviews-1", "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
    })
}

fn virtual_service(name: &str, host: &str, v1: i64, v2: i64) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {"hosts": [host], "http": [{"route": [
            {"destination": {"host": host, "subset": "v1"}, "weight": v1},
            {"destination": {"host": host, "subset": "v2"}, "weight": v2},
        ]}]},
    })
}

async fn create_service(client: &Client, name: &str, cluster_ip: &str) -> Result<()> {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "clusterIP": cluster_ip,
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 9080, "targetPort": 9080}],
        },
    }))?;
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &service)
        .await?;
    Ok(())
}

async fn create_pod(client: &Client, name: &str, ip: &str, version: &str) -> Result<()> {
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "reviews", "version": version}},
        "spec": {"containers": [{"name": "reviews", "image": "example.invalid/reviews"}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    // No kubelet here: write the status a scheduled, running pod would have.
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Polls until the CRD reports Established (kubectl 1.20's `wait` fails outright while the
/// CRD has no conditions yet).
async fn wait_established(client: &Client, name: &str) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        let established = crds
            .get(name)
            .await?
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "CRD {name} never became Established"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal HTTP GET on loopback: `(status, body)`.
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn weights(state: &ClientState) -> Vec<u32> {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier,
    };
    let Some(route) = state.routes.get("9080") else {
        return Vec::new();
    };
    route
        .virtual_hosts
        .iter()
        .filter(|v| v.name == format!("{REVIEWS}:9080"))
        .flat_map(|v| &v.routes)
        .filter_map(|r| match &r.action {
            Some(Action::Route(a)) => match &a.cluster_specifier {
                Some(ClusterSpecifier::WeightedClusters(w)) => Some(
                    w.clusters
                        .iter()
                        .map(|c| c.weight.map(|x| x.value).unwrap_or(0))
                        .collect::<Vec<_>>(),
                ),
                _ => Some(Vec::new()),
            },
            _ => None,
        })
        .next()
        .unwrap_or_default()
}

fn addresses(state: &ClientState, cluster: &str) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::{
        address::Address, socket_address::PortSpecifier,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut out = Vec::new();
    if let Some(cla) = state.endpoints.get(cluster) {
        for group in &cla.endpoints {
            for lb in &group.lb_endpoints {
                if let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier
                    && let Some(Address::SocketAddress(sa)) =
                        e.address.as_ref().and_then(|a| a.address.clone())
                    && let Some(PortSpecifier::PortValue(port)) = sa.port_specifier
                {
                    out.push(format!("{}:{port}", sa.address));
                }
            }
        }
    }
    out.sort();
    out
}

fn responses(state: &ClientState, type_url: &str) -> u64 {
    state.responses.get(type_url).copied().unwrap_or(0)
}

struct Discovery {
    _child: KillOnDrop,
    log: std::path::PathBuf,
    grpc: String,
    monitoring: String,
}

impl Discovery {
    fn start(tools: &Tools, server: &ApiServer, work: &std::path::Path) -> Result<Discovery> {
        let grpc = format!("127.0.0.1:{}", free_port());
        let monitoring = format!("127.0.0.1:{}", free_port());
        let log = work.join("discovery.log");
        let child = Command::new(&tools.meshpilot)
            .args(["discovery", "--kubeconfig"])
            .arg(server.kubeconfig_path())
            .args(["--grpc-addr", &grpc])
            .args(["--secure-grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--monitoring-addr", &monitoring])
            .arg("--tls-dir")
            .arg(work.join("tls"))
            .args(["--debounce-after", "50ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting meshpilot discovery")?;
        Ok(Discovery {
            _child: KillOnDrop(child),
            log,
            grpc,
            monitoring,
        })
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `limit`) until the log holds every one of `needles`; returns whether it
    /// did. Watch events of different kinds may land in different pushes, so a line about one
    /// object can follow the push that carried another.
    async fn wait_for_log(&self, needles: &[&str], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let logs = self.logs();
            if needles.iter().all(|n| logs.contains(n)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ready(&self) -> bool {
        http_get(&self.monitoring, "/ready").is_ok_and(|(status, _)| status == 200)
    }

    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.ready() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("discovery not ready within {limit:?}\n{}", self.logs())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_serves_what_the_api_server_holds() -> Result<()> {
    let tools = Tools::locate()?;
    let mut server = ApiServer::start()?;
    let client = kube_client(&server).await?;
    let work = tempfile::tempdir()?;

    // Before the Istio CRDs exist the VirtualService/DestinationRule watches cannot list: not
    // ready, and streams are refused.
    let discovery = Discovery::start(&tools, &server, work.path())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !discovery.ready(),
        "ready before every kind synced\n{}",
        discovery.logs()
    );
    let early = XdsClient::connect(&discovery.grpc, NODE, metadata(&[]), Flavor::Sotw).await;
    if let Ok(mut early) = early {
        let refused = early
            .wait_for("refusal", Duration::from_secs(5), |s| s.closed.is_some())
            .await?;
        let reason = refused.closed.unwrap_or_default();
        ensure!(
            reason.contains("Unavailable") || reason.contains("sync"),
            "{reason}"
        );
    }

    // The CRDs exactly as deploy/ ships them.
    let crds = workspace_root().join("deploy/kustomize/base/crds");
    let out = server
        .kubectl()?
        .args(["apply", "-f"])
        .arg(&crds)
        .output()?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "virtualservices.networking.istio.io",
        "destinationrules.networking.istio.io",
    ] {
        wait_established(&client, name).await?;
    }

    // A mesh as controllers would write it: Service, pods with status, a v1beta1 slice.
    create_service(&client, "reviews", "10.96.120.15").await?;
    create_pod(&client, "reviews-v1", "10.244.1.11", "v1").await?;
    create_pod(&client, "reviews-v2", "10.244.2.12", "v2").await?;
    apply(
        &client,
        &slices(),
        "default",
        slice(&[("reviews-v1", "10.244.1.11")]),
    )
    .await?;
    apply(
        &client,
        &destination_rules(),
        "default",
        json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "DestinationRule",
            "metadata": {"name": "reviews"},
            "spec": {"host": "reviews", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
            ]},
        }),
    )
    .await?;
    apply(
        &client,
        &virtual_services(),
        "default",
        virtual_service("reviews", "reviews", 90, 10),
    )
    .await?;
    discovery.wait_ready(Duration::from_secs(60))?;

    let mut sidecar = XdsClient::connect(
        &discovery.grpc,
        NODE,
        metadata(&[("NAMESPACE", "default")]),
        Flavor::Sotw,
    )
    .await?;
    let v1 = format!("outbound|9080|v1|{REVIEWS}");
    let v2 = format!("outbound|9080|v2|{REVIEWS}");
    let state = sidecar
        .wait_for("the initial config", WAIT, |s| {
            s.is_complete() && s.clusters.contains_key(&v1) && weights(s) == [90, 10]
        })
        .await?;
    assert_eq!(addresses(&state, &v1), ["10.244.1.11:9080"]);
    assert!(addresses(&state, &v2).is_empty());

    // An endpoint appears: an EDS-only push.
    let before = state.clone();
    apply(
        &client,
        &slices(),
        "default",
        slice(&[("reviews-v1", "10.244.1.11"), ("reviews-v2", "10.244.2.12")]),
    )
    .await?;
    let state = sidecar
        .wait_for("v2's endpoint", WAIT, |s| {
            addresses(s, &v2) == ["10.244.2.12:9080"]
        })
        .await?;
    for type_url in [CLUSTER, LISTENER, ROUTE] {
        assert_eq!(
            responses(&state, type_url),
            responses(&before, type_url),
            "an endpoint change pushed {type_url}"
        );
    }
    assert!(responses(&state, ENDPOINT) > responses(&before, ENDPOINT));

    // The VirtualService changes: a route push.
    apply(
        &client,
        &virtual_services(),
        "default",
        virtual_service("reviews", "reviews", 50, 50),
    )
    .await?;
    sidecar
        .wait_for("the 50/50 route", WAIT, |s| weights(s) == [50, 50])
        .await?;

    // An invalid VirtualService (all weights zero; the CRD schema allows it) is logged by
    // namespace and name and skipped; the rest keeps being served.
    create_service(&client, "details", "10.96.20.30").await?;
    apply(
        &client,
        &virtual_services(),
        "default",
        virtual_service("broken", "details", 0, 0),
    )
    .await?;
    let details = "outbound|9080||details.default.svc.cluster.local".to_string();
    sidecar
        .wait_for("the details cluster", WAIT, |s| {
            s.clusters.contains_key(&details)
        })
        .await?;
    let reported = discovery
        .wait_for_log(&["broken", "weights of all destinations are zero"], WAIT)
        .await;
    ensure!(
        reported,
        "the invalid VirtualService was not reported within {WAIT:?}:\n{}",
        discovery.logs()
    );

    // The API server restarts mid-run: watches resume, nothing is lost or duplicated, and
    // changes made after the restart arrive.
    server.restart()?;
    create_service(&client, "ratings", "10.96.30.40").await?;
    let ratings = "outbound|9080||ratings.default.svc.cluster.local".to_string();
    let state = sidecar
        .wait_for(
            "a service created after the restart",
            Duration::from_secs(60),
            |s| s.clusters.contains_key(&ratings),
        )
        .await?;
    assert!(state.clusters.contains_key(&v1) && state.clusters.contains_key(&details));
    assert_eq!(addresses(&state, &v2), ["10.244.2.12:9080"]);
    assert_eq!(weights(&state), [50, 50]);

    // Deletions: the VirtualService (back to the default route) and v2's pod and endpoint.
    Api::<DynamicObject>::namespaced_with(client.clone(), "default", &virtual_services())
        .delete("reviews", &DeleteParams::default())
        .await?;
    Api::<Pod>::namespaced(client.clone(), "default")
        .delete("reviews-v2", &DeleteParams::default())
        .await?;
    apply(
        &client,
        &slices(),
        "default",
        slice(&[("reviews-v1", "10.244.1.11")]),
    )
    .await?;
    let state = sidecar
        .wait_for("the deletions", WAIT, |s| {
            weights(s).is_empty() && addresses(s, &v2).is_empty()
        })
        .await?;
    assert_eq!(addresses(&state, &v1), ["10.244.1.11:9080"]);

    // A real Envoy gets the same config.
    real_envoy_receives_endpoints(&tools, &discovery, work.path(), &v1).await?;
    drop(sidecar);
    Ok(())
}

/// Envoy on loopback only: interception mode NONE (no 15001/15006 listeners) and the
/// bootstrap's 15021/15090 listeners moved to free loopback ports.
async fn real_envoy_receives_endpoints(
    tools: &Tools,
    discovery: &Discovery,
    work: &std::path::Path,
    cluster: &str,
) -> Result<()> {
    let bootstrap = work.join("envoy.json");
    let out = Command::new(&tools.meshpilot)
        .args([
            "bootstrap",
            "--node-id",
            NODE,
            "--xds-address",
            &discovery.grpc,
        ])
        .args([
            "--metadata",
            "NAMESPACE=default",
            "--metadata",
            "INTERCEPTION_MODE=NONE",
        ])
        .arg("-o")
        .arg(&bootstrap)
        .output()?;
    ensure!(
        out.status.success(),
        "bootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_port = free_port();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&bootstrap)?)?;
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port.into();
    for listener in config["static_resources"]["listeners"]
        .as_array_mut()
        .context("static listeners")?
    {
        let address = &mut listener["address"]["socket_address"];
        address["address"] = "127.0.0.1".into();
        address["port_value"] = free_port().into();
    }
    std::fs::write(&bootstrap, serde_json::to_string(&config)?)?;
    let log = work.join("envoy.log");
    let mut envoy = KillOnDrop(
        Command::new(&tools.envoy)
            .arg("-c")
            .arg(&bootstrap)
            .args(["--disable-hot-restart", "--log-level", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let admin = format!("127.0.0.1:{admin_port}");
    let started = Instant::now();
    loop {
        if let Ok((200, body)) = http_get(&admin, "/clusters")
            && body
                .lines()
                .any(|l| l.starts_with(&format!("{cluster}::10.244.1.11:9080::")))
        {
            break;
        }
        if started.elapsed() > WAIT {
            envoy.stop();
            bail!(
                "Envoy never reported {cluster} with 10.244.1.11:9080\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, stats) = http_get(&admin, "/stats?filter=update_rejected")?;
    // (The body may be chunked; only `name: value` lines matter.)
    let counters: Vec<(&str, &str)> = stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.ends_with("update_rejected"))
        .collect();
    ensure!(
        counters.len() >= 4 && counters.iter().all(|(_, v)| v.trim() == "0"),
        "Envoy rejected config: {stats}"
    );
    envoy.stop();
    Ok(())
}

/// The rendered deployment (for the 1.20 test server, its overlay) passes the API server's own
/// validation in a server-side dry run: schemas, RBAC objects, Deployment, Service, PDB.
#[test]
fn rendered_manifests_pass_a_server_side_dry_run() -> Result<()> {
    let server = ApiServer::start()?;
    let overlay = workspace_root().join("deploy/kustomize/overlays/kubernetes-1.20");
    let rendered = server.kubectl()?.arg("kustomize").arg(&overlay).output()?;
    ensure!(
        rendered.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let manifests = String::from_utf8(rendered.stdout)?;
    ensure!(
        manifests.contains("kind: Deployment")
            && manifests.contains("kind: CustomResourceDefinition")
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &manifests)?;
    let applied = server
        .kubectl()?
        .args(["apply", "--dry-run=server", "-f"])
        .arg(file.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&applied.stderr);
    let stdout = String::from_utf8_lossy(&applied.stdout);
    // Namespaced objects can only be dry-run once their namespace exists.
    let missing_namespace = stderr.contains("namespaces \"meshpilot-system\" not found");
    ensure!(
        applied.status.success() || missing_namespace,
        "server-side dry run failed:\n{stdout}\n{stderr}"
    );
    if missing_namespace {
        let ns = server
            .kubectl()?
            .args(["create", "namespace", "meshpilot-system"])
            .output()?;
        ensure!(
            ns.status.success(),
            "{}",
            String::from_utf8_lossy(&ns.stderr)
        );
        let again = server
            .kubectl()?
            .args(["apply", "--dry-run=server", "-f"])
            .arg(file.path())
            .output()?;
        ensure!(
            again.status.success(),
            "server-side dry run failed:\n{}\n{}",
            String::from_utf8_lossy(&again.stdout),
            String::from_utf8_lossy(&again.stderr)
        );
    }
    Ok(())
}
