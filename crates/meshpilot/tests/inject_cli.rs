//! `meshpilot inject` as a user runs it: files and stdin, settings from flags and a values
//! file, errors naming the document, and an injected pod whose init container installs exactly
//! the rules the end-to-end test applies (`meshpilot_tests::canary::IPTABLES_ARGS`).

use meshpilot_tests::canary::IPTABLES_ARGS;
use serde_yaml_ng::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn golden(case: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/golden/inject")
        .join(case)
        .join(file)
}

fn meshpilot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args(args)
        .output()
        .expect("run meshpilot")
}

fn meshpilot_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run meshpilot");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_yaml_ng::with::singleton_map::deserialize(d).expect("valid YAML"))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .expect("a list")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

fn container<'a>(pod_spec: &'a Value, list: &str, name: &str) -> &'a Value {
    pod_spec[list]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {list} entry {name}"))
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
  - name: client
    image: curlimages/curl
";

#[test]
fn files_and_stdin_give_the_golden_output() {
    let input = golden("nginx", "input.yaml");
    let expected = std::fs::read_to_string(golden("nginx", "output.yaml")).unwrap();
    let from_file = stdout_ok(meshpilot(&["inject", "-f", input.to_str().unwrap()]));
    assert_eq!(from_file, expected);
    let text = std::fs::read_to_string(&input).unwrap();
    let from_stdin = stdout_ok(meshpilot_stdin(&["inject", "-f", "-"], &text));
    assert_eq!(from_stdin, expected);
}

#[test]
fn injected_init_container_installs_the_end_to_end_rules() {
    let output = stdout_ok(meshpilot_stdin(&["inject", "-f", "-"], POD));
    let pod = &documents(&output)[0];
    let init = container(&pod["spec"], "initContainers", "istio-init");
    assert_eq!(strings(&init["command"]), ["meshpilot"]);
    let args = strings(&init["args"]);
    assert_eq!(args[0], "iptables");
    assert_eq!(&args[1..], IPTABLES_ARGS);

    let dry_run = |args: &[&str]| {
        let mut all = vec!["iptables", "--dry-run"];
        all.extend_from_slice(args);
        stdout_ok(meshpilot(&all))
    };
    let injected: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let injected_rules = dry_run(&injected);
    assert_eq!(injected_rules, dry_run(&IPTABLES_ARGS));
    assert!(injected_rules.contains("-j REDIRECT --to-ports 15006"));

    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"].as_u64(), Some(0));
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        ["NET_ADMIN", "NET_RAW"]
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
}

#[test]
fn the_sidecar_runs_meshpilot_agent_with_flags_it_accepts() {
    let output = stdout_ok(meshpilot_stdin(&["inject", "-f", "-"], POD));
    let pod = &documents(&output)[0];
    let proxy = container(&pod["spec"], "containers", "istio-proxy");
    assert_eq!(strings(&proxy["command"]), ["meshpilot"]);
    let args = strings(&proxy["args"]);
    assert_eq!(args[0], "agent");
    let help = stdout_ok(meshpilot(&["agent", "--help"]));
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "{flag} is not a `meshpilot agent` flag"
        );
    }
    let env: Vec<String> = proxy["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    for name in [
        "POD_NAME",
        "POD_NAMESPACE",
        "INSTANCE_IP",
        "SERVICE_ACCOUNT",
        "HOST_IP",
        "ISTIO_META_CLUSTER_ID",
        "ISTIO_META_INTERCEPTION_MODE",
        "ISTIO_META_WORKLOAD_NAME",
        "ISTIO_META_MESH_ID",
    ] {
        assert!(env.iter().any(|e| e == name), "{name} in {env:?}");
    }
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"].as_u64(), Some(1337));
    assert_eq!(sc["runAsGroup"].as_u64(), Some(1337));
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        pod["spec"]["securityContext"]["fsGroup"].as_u64(),
        Some(1337)
    );
}

#[test]
fn flags_and_values_file_set_images_resources_and_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "image: registry.example/meshpilot:2\nmemory-request: 256Mi\ncpu-limit: 1\n",
    )
    .unwrap();
    let output = stdout_ok(meshpilot_stdin(
        &[
            "inject",
            "-f",
            "-",
            "--values",
            values.to_str().unwrap(),
            "--proxy-image",
            "registry.example/meshpilot-proxy:2",
            "--xds-address",
            "meshpilot.mesh.svc:15012",
            "--cpu-request",
            "50m",
        ],
        POD,
    ));
    let pod = &documents(&output)[0];
    let init = container(&pod["spec"], "initContainers", "istio-init");
    let proxy = container(&pod["spec"], "containers", "istio-proxy");
    assert_eq!(init["image"].as_str(), Some("registry.example/meshpilot:2"));
    assert_eq!(
        proxy["image"].as_str(),
        Some("registry.example/meshpilot-proxy:2")
    );
    let args = strings(&proxy["args"]);
    assert!(
        args.windows(2)
            .any(|w| w == ["--xds-address", "meshpilot.mesh.svc:15012"])
    );
    let resources = &proxy["resources"];
    assert_eq!(resources["requests"]["cpu"].as_str(), Some("50m"));
    assert_eq!(resources["requests"]["memory"].as_str(), Some("256Mi"));
    assert_eq!(resources["limits"]["cpu"].as_str(), Some("1"));
}

#[test]
fn opted_out_and_other_kinds_pass_through_verbatim() {
    let input = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: batch
spec:
  template:
    metadata:
      labels:
        sidecar.istio.io/inject: \"false\"
    spec:
      containers: [{name: batch, image: busybox}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: '1'}
";
    let output = stdout_ok(meshpilot_stdin(&["inject", "-f", "-"], input));
    assert_eq!(output, input);
}

#[test]
fn bad_input_names_the_document_and_fails() {
    let input = format!(
        "{POD}---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: data\nspec:\n  template:\n    metadata:\n      annotations:\n        traffic.sidecar.istio.io/includeInboundPorts: \"all\"\n    spec:\n      containers: [{{name: db, image: postgres}}]\n"
    );
    let out = meshpilot_stdin(&["inject", "-f", "-"], &input);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing is printed on failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 2"), "{stderr}");
    assert!(stderr.contains("StatefulSet data/db"), "{stderr}");
    assert!(stderr.contains("includeInboundPorts"), "{stderr}");

    let out = meshpilot(&["inject", "-f", "/nonexistent/app.yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/app.yaml"));

    let out = meshpilot_stdin(
        &["inject", "-f", "-", "--image-pull-policy", "Sometimes"],
        POD,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("image-pull-policy"));
}
