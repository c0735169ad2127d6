//! `meshpilot proxy-config` and `meshpilot proxy-status` as a user runs them: istioctl-shaped
//! tables offline (against golden text) and against a running control plane with a simulated
//! sidecar, raw output, and one-line errors.
//!
//! Rewrite the goldens with `UPDATE_GOLDEN=1 cargo test -p meshpilot --test proxy_cli`.

use meshpilot_tests::xds_client::{Flavor, XdsClient, metadata};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BOOKINFO: &str = "tests/golden/bookinfo/mesh";
const EXAMPLES: &str = "deploy/examples";
const PRODUCTPAGE: &str = "productpage-v1-6b7f6dc5f-ccccc.default";
const PRODUCTPAGE_NODE: &str =
    "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn meshpilot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("run meshpilot")
}

fn stdout_of(args: &[&str]) -> String {
    let out = meshpilot(args);
    assert!(
        out.status.success(),
        "meshpilot {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs a command expected to fail and returns its one error line.
fn error_of(args: &[&str]) -> String {
    let out = meshpilot(args);
    assert!(!out.status.success(), "meshpilot {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "want one error line:\n{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(errors[0]),
        "the error is the last line:\n{stderr}"
    );
    errors[0].to_string()
}

/// Compares with `tests/golden/proxy-config/NAME.txt`, or rewrites it under `UPDATE_GOLDEN=1`.
fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/proxy-config")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{name} differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

fn offline(kind: &str, extra: &[&str]) -> String {
    let mut args = vec!["proxy-config", kind, PRODUCTPAGE, "--config-dir", BOOKINFO];
    args.extend_from_slice(extra);
    stdout_of(&args)
}

#[test]
fn offline_tables_match_the_goldens() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("listener", "listener", &[]),
        ("route", "route", &[]),
        ("cluster", "cluster", &[]),
        ("endpoint", "endpoint", &[]),
        ("listener-port-15006", "listener", &["--port", "15006"]),
        ("route-name-9080", "route", &["--name", "9080"]),
        (
            "cluster-reviews-v1",
            "cluster",
            &["--fqdn", "reviews", "--subset", "v1"],
        ),
        (
            "cluster-outbound-9080",
            "cluster",
            &["--port", "9080", "--direction", "outbound"],
        ),
        ("cluster-inbound", "cluster", &["--direction", "inbound"]),
        (
            "endpoint-reviews-v2",
            "endpoint",
            &[
                "--cluster",
                "outbound|9080|v2|reviews.default.svc.cluster.local",
            ],
        ),
    ];
    for (golden, kind, extra) in cases {
        assert_golden(golden, &offline(kind, extra));
    }
}

#[test]
fn tables_have_istioctl_columns_and_cells() {
    let listeners = offline("listener", &[]);
    assert!(
        listeners.starts_with("ADDRESSES PORT  MATCH"),
        "{listeners}"
    );
    assert!(
        listeners.contains("Trans: raw_buffer; App: http/1.1,h2c")
            && listeners.contains("Route: 9080")
            && listeners.contains("Addr: *:15001")
            && listeners.contains("Non-HTTP/Non-TCP")
            && listeners.contains("PassthroughCluster"),
        "{listeners}"
    );
    let routes = offline("route", &[]);
    let reviews = routes
        .lines()
        .find(|l| l.contains("reviews.default.svc.cluster.local:9080"))
        .expect("a reviews route");
    assert!(
        reviews.contains("reviews, reviews.default + 1 more...")
            && reviews.trim_end().ends_with("reviews.default"),
        "{routes}"
    );
    assert!(
        !routes.contains("allow_any"),
        "passthrough hidden: {routes}"
    );
    let clusters = offline("cluster", &["--fqdn", "reviews"]);
    let v1 = clusters
        .lines()
        .find(|l| l.contains(" v1 "))
        .expect("the v1 subset");
    let cells: Vec<&str> = v1.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "reviews.default.svc.cluster.local",
            "9080",
            "v1",
            "outbound",
            "EDS",
            "reviews.default"
        ]
    );
    let endpoints = offline("endpoint", &["--port", "9080", "--status", "healthy"]);
    assert!(
        endpoints.starts_with("ENDPOINT ") && endpoints.contains("10.244.1.11:9080"),
        "{endpoints}"
    );
    for row in endpoints.lines().skip(1) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1..3], ["HEALTHY", "OK"], "{endpoints}");
    }
}

#[test]
fn raw_output_is_the_selected_resources() {
    let json = offline("cluster", &["--fqdn", "reviews", "-o", "json"]);
    let clusters: serde_json::Value = serde_json::from_str(&json).expect("JSON list");
    let names: Vec<&str> = clusters
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.ends_with("|reviews.default.svc.cluster.local"))
    );
    assert_eq!(
        clusters[0]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    let yaml = offline("route", &["--name", "9080", "-o", "yaml"]);
    assert!(
        yaml.contains("name: '9080'") || yaml.contains("name: \"9080\""),
        "{yaml}"
    );
    assert!(yaml.contains("weight: 90"), "{yaml}");
}

#[test]
fn errors_are_one_line() {
    let unknown = error_of(&[
        "proxy-config",
        "cluster",
        "nope.default",
        "--config-dir",
        BOOKINFO,
    ]);
    assert!(
        unknown.starts_with("error: unknown proxy \"nope.default\""),
        "{unknown}"
    );
    let direction = error_of(&[
        "proxy-config",
        "cluster",
        PRODUCTPAGE,
        "--config-dir",
        BOOKINFO,
        "--direction",
        "sideways",
    ]);
    assert_eq!(
        direction,
        "error: --direction \"sideways\": expected inbound or outbound"
    );
    for kind in ["listener", "cluster", "endpoint"] {
        let port = error_of(&[
            "proxy-config",
            kind,
            PRODUCTPAGE,
            "--config-dir",
            BOOKINFO,
            "--port",
            "abc",
        ]);
        assert!(port.starts_with("error: --port \"abc\""), "{port}");
    }
    let status = error_of(&[
        "proxy-config",
        "endpoint",
        PRODUCTPAGE,
        "--config-dir",
        BOOKINFO,
        "--status",
        "fine",
    ]);
    assert!(status.starts_with("error: --status \"fine\""), "{status}");

    let nobody = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["proxy-status", "--control-plane", nobody.as_str()],
        vec![
            "proxy-config",
            "route",
            PRODUCTPAGE,
            "--control-plane",
            nobody.as_str(),
        ],
    ] {
        let refused = error_of(&args);
        assert!(
            refused.starts_with(&format!(
                "error: cannot reach the control plane at {nobody}"
            )),
            "{refused}"
        );
    }
    // Both sources at once is a usage error.
    let out = meshpilot(&[
        "proxy-config",
        "cluster",
        PRODUCTPAGE,
        "--config-dir",
        BOOKINFO,
        "--control-plane",
        "http://127.0.0.1:15014",
    ]);
    assert!(!out.status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `meshpilot discovery` serving deploy/examples on free loopback ports, killed on drop.
struct ControlPlane {
    child: Child,
    grpc: String,
    monitoring_url: String,
    log: PathBuf,
}

impl ControlPlane {
    fn start() -> ControlPlane {
        let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("proxy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        let grpc = format!("127.0.0.1:{}", free_port());
        let monitoring = format!("127.0.0.1:{}", free_port());
        let log = work.join("discovery.log");
        let child = Command::new(env!("CARGO_BIN_EXE_meshpilot"))
            .current_dir(workspace_root())
            .args(["discovery", "--config-dir", EXAMPLES, "--grpc-addr", &grpc])
            .args(["--secure-grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--monitoring-addr", &monitoring])
            .arg("--tls-dir")
            .arg(work.join("tls"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start meshpilot discovery");
        let plane = ControlPlane {
            child,
            grpc,
            monitoring_url: format!("http://{monitoring}"),
            log,
        };
        plane.wait_listening(&monitoring);
        plane
    }

    fn wait_listening(&self, addr: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(addr).is_ok()
                && std::net::TcpStream::connect(&self.grpc).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("discovery did not listen within 30s:\n{}", self.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI off the async runtime, so the simulated sidecar keeps answering meanwhile.
async fn run_cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        meshpilot(&args)
    })
    .await
    .expect("CLI task")
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_status_and_config_match_a_connected_sidecar() {
    let plane = ControlPlane::start();
    let url = plane.monitoring_url.clone();
    let mut sidecar = XdsClient::connect(
        &plane.grpc,
        PRODUCTPAGE_NODE,
        metadata(&[("NAMESPACE", "default")]),
        Flavor::Sotw,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", plane.logs()));
    sidecar
        .wait_for("the initial config", Duration::from_secs(30), |s| {
            s.is_complete()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", plane.logs()));

    // The last ACK travels after the client has its config; give the server a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let out = run_cli(owned(&["proxy-status", "--control-plane", &url])).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let synced = text
            .lines()
            .find(|l| l.starts_with(PRODUCTPAGE))
            .is_some_and(|row| row.matches("SYNCED").count() == 4);
        if synced || Instant::now() > deadline {
            assert!(
                out.status.success(),
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                plane.logs()
            );
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("{status}");
    assert!(
        status.starts_with("NAME ") && status.contains(" CDS ") && status.contains(" ISTIOD "),
        "{status}"
    );
    let row = status
        .lines()
        .find(|l| l.starts_with(PRODUCTPAGE))
        .unwrap_or_else(|| panic!("no productpage row:\n{status}"));
    assert_eq!(row.matches("SYNCED").count(), 4, "{status}");

    let one = run_cli(owned(&[
        "proxy-status",
        PRODUCTPAGE,
        "--control-plane",
        &url,
    ]))
    .await;
    assert!(one.status.success());
    assert_eq!(String::from_utf8_lossy(&one.stdout).lines().count(), 2);

    for kind in ["cluster", "listener", "route", "endpoint"] {
        let out = run_cli(owned(&[
            "proxy-config",
            kind,
            PRODUCTPAGE,
            "--control-plane",
            &url,
        ]))
        .await;
        assert!(
            out.status.success(),
            "proxy-config {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let offline = stdout_of(&["proxy-config", kind, PRODUCTPAGE, "--config-dir", EXAMPLES]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            offline,
            "{kind}: online and offline differ"
        );
    }

    let unknown = run_cli(owned(&[
        "proxy-config",
        "cluster",
        "nope.default",
        "--control-plane",
        &url,
    ]))
    .await;
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: unknown proxy \"nope.default\"")),
        "{stderr}"
    );
    let unknown = run_cli(owned(&[
        "proxy-status",
        "nope.default",
        "--control-plane",
        &url,
    ]))
    .await;
    assert!(!unknown.status.success());
    drop(sidecar);
}

/// A proxy that has been sent CDS but has not ACKed it shows STALE; once it ACKs, SYNCED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_stale_until_the_push_is_acked() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use tokio_stream::StreamExt;

    let plane = ControlPlane::start();
    let url = plane.monitoring_url.clone();
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", plane.grpc))
        .await
        .expect("connect to ADS");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: PRODUCTPAGE_NODE.into(),
            ..Default::default()
        }),
        type_url: cds.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = responses.next().await.expect("a CDS response").expect("ok");

    let row = |text: &str| {
        text.lines()
            .find(|l| l.starts_with(PRODUCTPAGE))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let status = |url: String| async move {
        let out = run_cli(owned(&["proxy-status", "--control-plane", &url])).await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let stale = loop {
        let text = status(url.clone()).await;
        if row(&text).contains("STALE") || Instant::now() > deadline {
            break row(&text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // CDS sent and not ACKed; nothing of the other types was asked for.
    assert!(stale.contains("STALE"), "{stale}\n{}", plane.logs());
    assert_eq!(stale.matches("NOT SENT").count(), 3, "{stale}");

    tx.send(DiscoveryRequest {
        type_url: cds.into(),
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let synced = loop {
        let text = status(url.clone()).await;
        if row(&text).contains("SYNCED") || Instant::now() > deadline {
            break row(&text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        synced.contains("SYNCED") && !synced.contains("STALE"),
        "{synced}"
    );
}
