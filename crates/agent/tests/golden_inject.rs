//! `kube-inject` goldens: each directory under tests/golden/inject/ holds `input.yaml` and the
//! expected `output.yaml` with the default settings. `UPDATE_GOLDEN=1` rewrites the outputs.

use meshpilot_agent::inject::{InjectConfig, inject_documents};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

fn check_case(name: &str) -> String {
    let dir = golden_dir().join(name);
    let input = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let output = inject_documents(&input, &InjectConfig::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected_path = dir.join("output.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &output).expect("write output.yaml");
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1)",
            expected_path.display()
        )
    });
    if output != expected {
        let diff = similar::TextDiff::from_lines(&expected, &output);
        panic!(
            "{name}: output differs from output.yaml (UPDATE_GOLDEN=1 rewrites it):\n{}",
            diff.unified_diff().header("output.yaml", "actual")
        );
    }
    output
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_yaml_ng::with::singleton_map::deserialize(d).expect("valid YAML"))
        .collect()
}

fn containers<'a>(pod_spec: &'a Value, list: &str) -> Vec<&'a str> {
    pod_spec[list]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect()
}

#[test]
fn nginx_deployment_gets_a_sidecar_and_its_service_is_untouched() {
    let output = check_case("nginx");
    let docs = documents(&output);
    assert_eq!(docs.len(), 2);
    let input = std::fs::read_to_string(golden_dir().join("nginx/input.yaml")).unwrap();
    let service_text = input.split("---\n").next().unwrap();
    assert!(
        output.starts_with(service_text),
        "the Service is copied verbatim"
    );
    let spec = &docs[1]["spec"]["template"]["spec"];
    assert_eq!(containers(spec, "containers"), ["nginx", "istio-proxy"]);
    assert_eq!(containers(spec, "initContainers"), ["istio-init"]);
}

#[test]
fn productpage_keeps_its_own_volumes_and_annotations() {
    let output = check_case("productpage");
    let docs = documents(&output);
    let template = &docs[2]["spec"]["template"];
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], "9080");
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "productpage"
    );
    let volumes: Vec<&str> = template["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "tmp",
            "istio-envoy",
            "istio-data",
            "istio-podinfo",
            "meshpilot-ca-root-cert"
        ]
    );
    let proxy = &template["spec"]["containers"][1];
    let workload = proxy["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ISTIO_META_WORKLOAD_NAME")
        .unwrap();
    assert_eq!(workload["value"], "productpage-v1");
}

#[test]
fn traffic_annotations_shape_the_init_arguments() {
    let output = check_case("traffic-annotations");
    let docs = documents(&output);
    let args: Vec<&str> = docs[0]["spec"]["initContainers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args.join(" "),
        "iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i 10.96.0.0/12,10.244.0.0/16 \
         -x 169.254.169.254/32 -b 9080,9443 -d 15090,15021,15020,8081 -o 5432"
    );
    // The pod's own securityContext stays, fsGroup is added.
    let security = &docs[0]["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["fsGroup"], 1337);
}

#[test]
fn already_injected_pod_comes_out_unchanged() {
    let output = check_case("already-injected");
    let input = std::fs::read_to_string(golden_dir().join("already-injected/input.yaml")).unwrap();
    assert_eq!(output, input);
}

#[test]
fn injecting_twice_changes_nothing_the_second_time() {
    for case in ["nginx", "productpage", "traffic-annotations"] {
        let once = check_case(case);
        let twice = inject_documents(&once, &InjectConfig::default()).unwrap();
        assert_eq!(twice, once, "{case}");
    }
}
