//! `meshpilot config-dump` as a user runs it: output shape, filters and one-line errors.

use std::process::{Command, Output};

fn meshpilot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run meshpilot")
}

const EXAMPLES: &str = "deploy/examples";
const PRODUCTPAGE: &str = "productpage-v1-6b7f6dc5f-ccccc.default";

#[test]
fn dumps_all_four_types_in_envoy_config_dump_shape() {
    let out = meshpilot(&[
        "config-dump",
        "--config-dir",
        EXAMPLES,
        "--proxy",
        PRODUCTPAGE,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
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
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("outbound|9080|v1|reviews.default.svc.cluster.local"));
}

#[test]
fn node_id_and_type_filter_and_yaml() {
    let node =
        "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local";
    let out = meshpilot(&[
        "config-dump",
        "--config-dir",
        EXAMPLES,
        "--proxy",
        node,
        "--type",
        "routes",
        "-o",
        "yaml",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("envoy.admin.v3.RoutesConfigDump"), "{text}");
    assert!(!text.contains("ClustersConfigDump"), "{text}");
    assert!(text.contains("weight: 90"), "{text}");
}

#[test]
fn unknown_proxy_is_a_one_line_error() {
    let out = meshpilot(&[
        "config-dump",
        "--config-dir",
        EXAMPLES,
        "--proxy",
        "nope.default",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: unknown proxy \"nope.default\""),
        "{stderr}"
    );
}

#[test]
fn bad_flags_fail() {
    let out = meshpilot(&[
        "config-dump",
        "--config-dir",
        EXAMPLES,
        "--proxy",
        PRODUCTPAGE,
        "--type",
        "secrets",
    ]);
    assert!(!out.status.success());
    let out = meshpilot(&[
        "config-dump",
        "--config-dir",
        "/nonexistent-dir",
        "--proxy",
        PRODUCTPAGE,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}
