//! `meshpilot bootstrap` as a user runs it: JSON to stdout or a file, one-line errors.

use std::path::PathBuf;
use std::process::{Command, Output};

const NODE: &str =
    "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local";

fn meshpilot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args(args)
        .output()
        .expect("run meshpilot")
}

#[test]
fn writes_the_bootstrap_to_stdout() {
    let out = meshpilot(&[
        "bootstrap",
        "--node-id",
        NODE,
        "--xds-address",
        "istiod.istio-system.svc:15010",
        "--xds-api",
        "sotw",
        "--metadata",
        r#"LABELS={"app":"productpage"}"#,
        "--metadata",
        "INTERCEPTION_MODE=REDIRECT",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON bootstrap");
    assert_eq!(json["node"]["id"], NODE);
    assert_eq!(json["node"]["cluster"], "productpage.default");
    assert_eq!(json["node"]["metadata"]["LABELS"]["app"], "productpage");
    assert_eq!(json["node"]["metadata"]["INTERCEPTION_MODE"], "REDIRECT");
    assert_eq!(json["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
    let clusters: Vec<&str> = json["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["xds-grpc", "prometheus_stats"]);
}

#[test]
fn writes_the_bootstrap_to_a_file() {
    let path = std::env::temp_dir().join(format!(
        "meshpilot-bootstrap-cli-{}.json",
        std::process::id()
    ));
    let out = meshpilot(&[
        "bootstrap",
        "--node-id",
        NODE,
        "--xds-address",
        "10.96.0.10:15012",
        "--tls-root-cert",
        "/var/run/secrets/istio/root-cert.pem",
        "-o",
        path.to_str().unwrap(),
    ]);
    let written = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing on stdout with -o");
    let json: serde_json::Value =
        serde_json::from_str(&written.expect("bootstrap file written")).unwrap();
    assert_eq!(
        json["dynamic_resources"]["ads_config"]["api_type"],
        "DELTA_GRPC"
    );
    let tls = &json["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
    assert_eq!(
        tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
        "/var/run/secrets/istio/root-cert.pem"
    );
}

#[test]
fn bad_address_unwritable_output_and_unknown_flags_fail() {
    let out = meshpilot(&["bootstrap", "--node-id", NODE, "--xds-address", "istiod"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid xDS address \"istiod\""),
        "{stderr}"
    );

    let missing_dir: PathBuf = std::env::temp_dir().join("meshpilot-no-such-dir/b.json");
    let out = meshpilot(&[
        "bootstrap",
        "--node-id",
        NODE,
        "--xds-address",
        "10.0.0.1:15010",
        "-o",
        missing_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("writing the bootstrap to"));

    let out = meshpilot(&[
        "bootstrap",
        "--node-id",
        NODE,
        "--xds-address",
        "10.0.0.1:15010",
        "--metadata",
        "NOEQUALS",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected KEY=VALUE"));

    let out = meshpilot(&[
        "bootstrap",
        "--node-id",
        NODE,
        "--xds-address",
        "10.0.0.1:15010",
        "--bogus",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--bogus'"));
}
