//! The monitoring endpoint of a real `meshpilot discovery` on loopback: `/metrics` moving with
//! pushes and NACKs from a gRPC client, and every debug view answering a connected real Envoy;
//! and what its gRPC port offers a connection.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const NODE: &str =
    "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local";
const PROXY: &str = "productpage-v1-6b7f6dc5f-ccccc.default";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const WAIT: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed (and reaped) when dropped, on failure paths too.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Discovery {
    _child: KillOnDrop,
    log: PathBuf,
    grpc: String,
    monitoring: String,
}

impl Discovery {
    fn start(config_dir: &Path, work: &Path) -> Discovery {
        let grpc = format!("127.0.0.1:{}", free_port());
        let monitoring = format!("127.0.0.1:{}", free_port());
        let log = work.join("discovery.log");
        let child = Command::new(env!("CARGO_BIN_EXE_meshpilot"))
            .args(["--log-level", "xds=debug,info", "discovery", "--config-dir"])
            .arg(config_dir)
            .args(["--grpc-addr", &grpc])
            .args(["--secure-grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--monitoring-addr", &monitoring])
            .arg("--tls-dir")
            .arg(work.join("tls"))
            .args(["--debounce-after", "20ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting meshpilot discovery");
        let discovery = Discovery {
            _child: KillOnDrop(child),
            log,
            grpc,
            monitoring,
        };
        discovery.wait_until("ready", || discovery.get("/ready").0 == 200);
        discovery
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.monitoring, path).unwrap_or((0, String::new()))
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics");
        sample(&text, series)
    }

    fn wait_until(&self, what: &str, check: impl Fn() -> bool) {
        let started = Instant::now();
        while !check() {
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A one-shot HTTP/1.1 GET; decodes a chunked body.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn copy_examples(to: &Path) {
    let from = workspace_root().join("deploy/examples");
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn request(type_url: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: NODE.into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

async fn next(responses: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), responses.next())
        .await
        .expect("a response within 10 s")
        .expect("a stream item")
        .expect("a response, not a status")
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_pushes_and_nacks() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir(&config).unwrap();
    copy_examples(&config);
    let discovery = Discovery::start(&config, work.path());
    assert!(discovery.metric(r#"pilot_inbound_updates{type="services"}"#) >= Some(1.0));
    assert!(discovery.metric("pilot_services") >= Some(1.0));
    assert_eq!(discovery.metric("pilot_virt_services"), Some(1.0));
    assert!(discovery.metric("process_resident_memory_bytes") > Some(0.0));
    assert!(discovery.metric("process_open_fds") > Some(0.0));
    assert!(discovery.metric("process_cpu_seconds_total").is_some());
    assert_eq!(
        discovery.metric(r#"pilot_total_xds_rejects{type="cds"}"#),
        Some(0.0)
    );

    let mut client =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", discovery.grpc))
            .await
            .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(request(CLUSTER, "")).await.unwrap();
    let cds = next(&mut responses).await;
    tx.send(request(CLUSTER, &cds.nonce)).await.unwrap();
    tx.send(request(LISTENER, "")).await.unwrap();
    let lds = next(&mut responses).await;
    tx.send(request(LISTENER, &lds.nonce)).await.unwrap();
    discovery.wait_until("CDS and LDS pushes counted", || {
        discovery.metric(r#"pilot_xds_pushes{type="cds"}"#) == Some(1.0)
            && discovery.metric(r#"pilot_xds_pushes{type="lds"}"#) == Some(1.0)
    });
    assert_eq!(discovery.metric(r#"pilot_xds{version=""}"#), Some(1.0));
    assert!(discovery.metric(r#"pilot_xds_config_size_bytes_sum{type="cds"}"#) > Some(0.0));

    // A config change: the DestinationRule loses a subset, so CDS is pushed again.
    let rule = config.join("reviews-canary.yaml");
    let text = std::fs::read_to_string(&rule).unwrap();
    std::fs::write(
        &rule,
        text.replace("  - {name: v2, labels: {version: v2}}\n", ""),
    )
    .unwrap();
    let pushed = loop {
        let r = next(&mut responses).await;
        if r.type_url == CLUSTER {
            break r;
        }
        tx.send(request(&r.type_url, &r.nonce)).await.unwrap();
    };
    discovery.wait_until("the push and its convergence counted", || {
        discovery.metric(r#"pilot_xds_pushes{type="cds"}"#) == Some(2.0)
            && discovery.metric("pilot_proxy_convergence_time_count") >= Some(1.0)
            && discovery.metric("pilot_debounce_time_count") >= Some(1.0)
    });
    assert!(discovery.metric(r#"pilot_inbound_updates{type="destinationrules"}"#) >= Some(2.0));

    // The proxy rejects it.
    let mut nack = request(CLUSTER, &pushed.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "cluster rejected for the test".into(),
        ..Default::default()
    });
    tx.send(nack).await.unwrap();
    discovery.wait_until("the NACK counted", || {
        discovery.metric(r#"pilot_total_xds_rejects{type="cds"}"#) == Some(1.0)
    });
    assert_eq!(
        discovery.metric(r#"pilot_total_xds_rejects{type="lds"}"#),
        Some(0.0)
    );
    let logs = discovery.logs();
    assert!(
        logs.contains("NACK") && logs.contains("cluster rejected for the test"),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("DEBUG") && l.contains("push") && l.contains("cds:")),
        "a one-line push summary at debug level: {logs}"
    );

    let syncz = discovery.json("/debug/syncz");
    let entry = &syncz[0];
    assert_eq!(entry["proxy"], PROXY);
    assert_eq!(entry["cluster_sent"], pushed.nonce.as_str());
    assert_eq!(entry["cluster_acked"], cds.nonce.as_str());
    assert_eq!(
        entry["resources"][CLUSTER]["lastError"],
        "cluster rejected for the test"
    );

    drop(tx);
    drop(responses);
    discovery.wait_until("the proxy disconnected", || {
        discovery.json("/debug/adsz")["totalClients"] == 0
            && discovery.metric(r#"pilot_xds{version=""}"#) == Some(0.0)
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn config_dump_answers_only_with_a_connected_proxy_id() {
    let work = tempfile::tempdir().unwrap();
    let discovery = Discovery::start(&workspace_root().join("deploy/examples"), work.path());
    let (status, body) = discovery.get("/debug/config_dump");
    assert_eq!(status, 400, "{body}");
    let (status, body) = discovery.get(&format!("/debug/config_dump?proxyID={PROXY}"));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not connected"), "{body}");
    assert_eq!(discovery.json("/debug/syncz"), Value::Array(vec![]));
}

/// What the gRPC port offers each connection for a SotW EDS ACK, which repeats every
/// subscribed name (tens of KB): a receive buffer past the kernel's default, so the ACK comes
/// in one segment, and a 4 MiB HTTP/2 window, so credit goes back for it rarely.
#[tokio::test(flavor = "multi_thread")]
async fn xds_connections_have_room_for_large_acks() {
    const WINDOW: u32 = 4 * 1024 * 1024;
    const BUFFER: u64 = 512 * 1024;
    let work = tempfile::tempdir().unwrap();
    let discovery = Discovery::start(&workspace_root().join("deploy/examples"), work.path());
    let tcp = tokio::net::TcpStream::connect(&discovery.grpc)
        .await
        .unwrap();
    let client_port = tcp.local_addr().unwrap().port();
    let (mut requests, connection) = h2::client::Builder::new()
        .max_send_buffer_size(2 * WINDOW as usize)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("an HTTP/2 connection to the gRPC port");
    tokio::spawn(connection);
    let ads = tonic::codegen::http::Request::post(format!(
        "http://{}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        discovery.grpc
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (_response, mut body) = requests.send_request(ads, false).unwrap();
    body.reserve_capacity(WINDOW as usize);
    // Credit comes with the server's settings (the stream) and a WINDOW_UPDATE (the connection).
    let credit = tokio::time::timeout(Duration::from_secs(5), async {
        while body.capacity() < WINDOW as usize {
            match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                other => panic!("the stream ended before its credit came: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        credit.is_ok(),
        "the server gave {} bytes of credit, not {WINDOW}",
        body.capacity()
    );

    let grpc_port = discovery.grpc.rsplit(':').next().unwrap();
    let out = std::process::Command::new("ss")
        .args(["-tmnH", "state", "established"])
        .arg(format!(
            "( sport = :{grpc_port} and dport = :{client_port} )"
        ))
        .output()
        .expect("this test reads socket buffers with `ss` from iproute2; install it");
    let text = String::from_utf8_lossy(&out.stdout);
    let receive_buffer: u64 = text
        .split(['(', ','])
        .find_map(|field| field.strip_prefix("rb")?.parse().ok())
        .unwrap_or_else(|| panic!("no receive buffer in `ss` output: {text:?}"));
    // The kernel caps the request at net.core.rmem_max, then doubles it for its own overhead.
    let cap: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("reading net.core.rmem_max")
        .trim()
        .parse()
        .unwrap();
    assert!(
        receive_buffer >= BUFFER.min(cap) * 2,
        "the server's side of the connection has a {receive_buffer}-byte receive buffer"
    );
}

/// The Envoy 1.40 binary: `$MESHPILOT_ENVOY`, else `.tools/bin/envoy`.
fn envoy_binary() -> PathBuf {
    let candidate = std::env::var_os("MESHPILOT_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin/envoy"));
    assert!(
        candidate.exists(),
        "this test needs the Envoy 1.40 binary, not found at {}: run `cargo xtask install` \
         or set MESHPILOT_ENVOY",
        candidate.display()
    );
    candidate
}

/// Envoy on loopback only: interception mode NONE (no 15001/15006 listeners) and the
/// bootstrap's admin and static listeners moved to free loopback ports.
fn start_envoy(discovery: &Discovery, work: &Path) -> (KillOnDrop, String) {
    let envoy = envoy_binary();
    let bootstrap = work.join("envoy.json");
    let out = Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args([
            "bootstrap",
            "--node-id",
            NODE,
            "--xds-address",
            &discovery.grpc,
        ])
        .args(["--metadata", "INTERCEPTION_MODE=NONE"])
        .args(["--metadata", "NAMESPACE=default"])
        .arg("-o")
        .arg(&bootstrap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_port = free_port();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&bootstrap).unwrap()).unwrap();
    config["admin"]["address"]["socket_address"]["address"] = "127.0.0.1".into();
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port.into();
    for listener in config["static_resources"]["listeners"]
        .as_array_mut()
        .expect("static listeners")
    {
        let address = &mut listener["address"]["socket_address"];
        address["address"] = "127.0.0.1".into();
        address["port_value"] = free_port().into();
    }
    std::fs::write(&bootstrap, serde_json::to_string(&config).unwrap()).unwrap();
    let child = Command::new(envoy)
        .arg("-c")
        .arg(&bootstrap)
        .args(["--disable-hot-restart", "--log-level", "warning"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("envoy.log")).unwrap())
        .spawn()
        .expect("starting Envoy");
    (KillOnDrop(child), format!("127.0.0.1:{admin_port}"))
}

fn synced(entry: &Value, prefix: &str) -> bool {
    let sent = &entry[format!("{prefix}_sent")];
    sent.as_str().is_some_and(|s| !s.is_empty()) && *sent == entry[format!("{prefix}_acked")]
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_endpoints_describe_a_connected_envoy() {
    let work = tempfile::tempdir().unwrap();
    let discovery = Discovery::start(&workspace_root().join("deploy/examples"), work.path());
    let (_envoy, admin) = start_envoy(&discovery, work.path());
    let envoy_log = work.path().join("envoy.log");
    let started = Instant::now();
    loop {
        let syncz = discovery.json("/debug/syncz");
        let entry = &syncz[0];
        if ["cluster", "listener", "route", "endpoint"]
            .iter()
            .all(|t| synced(entry, t))
        {
            assert_eq!(entry["proxy"], PROXY);
            assert_eq!(entry["proxy_type"], "sidecar");
            assert_eq!(entry["cluster_id"], "Kubernetes");
            assert!(entry["connection_id"].as_str().unwrap().starts_with(PROXY));
            assert!(entry["last_push_time"].is_string());
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "Envoy never ACKed all four types: {syncz}\n{}\n{}",
            discovery.logs(),
            std::fs::read_to_string(&envoy_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dump = discovery.json(&format!(
        "/debug/config_dump?proxyID={PROXY}&include_eds=true"
    ));
    let configs = dump["configs"].as_array().expect("configs");
    let types: Vec<&str> = configs
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
        ]
    );
    for (config, field) in configs.iter().zip([
        "dynamic_active_clusters",
        "dynamic_listeners",
        "dynamic_route_configs",
        "dynamic_endpoint_configs",
    ]) {
        assert!(
            config[field].as_array().is_some_and(|a| !a.is_empty()),
            "{field} empty in {config}"
        );
    }
    // What we say we sent is what Envoy holds.
    let ours: BTreeSet<&str> = configs[0]["dynamic_active_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["name"].as_str().unwrap())
        .collect();
    let (_, envoy_dump) =
        http_get(&admin, "/config_dump?resource=dynamic_active_clusters").unwrap();
    let envoy_dump: Value = serde_json::from_str(&envoy_dump).expect("Envoy admin JSON");
    let theirs: BTreeSet<&str> = envoy_dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(ours, theirs);
    let only_cds = discovery.json(&format!("/debug/config_dump?proxyID={PROXY}&types=cds"));
    assert_eq!(only_cds["configs"].as_array().unwrap().len(), 1);

    let adsz = discovery.json("/debug/adsz");
    assert_eq!(adsz["totalClients"], 1);
    let client = &adsz["clients"][0];
    assert!(client["connectionId"].as_str().unwrap().starts_with(PROXY));
    assert!(
        client["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(client["metadata"]["NAMESPACE"], "default");
    assert_eq!(client["labels"]["app"], "productpage");
    assert!(client["connectedAt"].is_string());
    let watches = client["watches"].as_object().expect("watches");
    assert!(watches.len() >= 4, "{watches:?}");

    let registry = discovery.json("/debug/registryz");
    let reviews = registry
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hostname"] == "reviews.default.svc.cluster.local")
        .expect("reviews in registryz");
    assert_eq!(reviews["clusterIPs"][0], "10.96.120.15");
    assert_eq!(reviews["endpoints"].as_array().unwrap().len(), 2);

    let configz = discovery.json("/debug/configz");
    assert_eq!(configz["virtualServices"][0]["name"], "reviews");
    assert_eq!(configz["destinationRules"][0]["name"], "reviews");
    assert!(configz["rejected"].is_array());

    let metrics = discovery.get("/metrics").1;
    assert!(
        sample(&metrics, r#"pilot_xds{version=""}"#) == Some(1.0),
        "{metrics}"
    );
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("pilot_total_xds_rejects"))
    {
        assert!(line.ends_with(" 0"), "Envoy NACKed: {line}");
    }
}
