//! The containers, volumes and status annotation injection adds, as ordered YAML mappings.

use super::{
    INIT_CONTAINER, InjectConfig, PROXY_CONTAINER, PROXY_UID, ROOT_CERT_CONFIG_MAP, Resources,
};
use serde_yaml_ng::{Mapping, Value};

/// Envoy's bootstrap, written by the agent; in memory, since it holds the node identity.
const ENVOY_VOLUME: &str = "istio-envoy";
const ENVOY_DIR: &str = "/etc/istio/proxy";
const DATA_VOLUME: &str = "istio-data";
const DATA_DIR: &str = "/var/lib/istio/data";
/// The pod's labels and annotations as files (the agent reads `labels`).
const PODINFO_VOLUME: &str = "istio-podinfo";
const PODINFO_DIR: &str = "/etc/istio/pod";
const ROOT_CERT_VOLUME: &str = ROOT_CERT_CONFIG_MAP;
const ROOT_CERT_DIR: &str = "/var/run/secrets/meshpilot";
const ROOT_CERT_FILE: &str = "root-cert.pem";

/// The agent's health/readiness port and path (Envoy's, proxied as in Istio).
const READINESS_PORT: u64 = 15021;
const READINESS_PATH: &str = "/healthz/ready";
const PROMETHEUS_PORT: u64 = 15090;

/// An ordered mapping, so the injected objects read like hand-written YAML.
fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(key, value)| (Value::from(key), value))
            .collect::<Mapping>(),
    )
}

fn strings<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Sequence(items.iter().map(|s| Value::from(s.as_ref())).collect())
}

fn int(n: u64) -> Value {
    Value::from(n)
}

fn build_resources(resources: &Resources) -> Value {
    let pair = |cpu: &Option<String>, memory: &Option<String>| {
        let mut m = Mapping::new();
        if let Some(cpu) = cpu {
            m.insert("cpu".into(), cpu.as_str().into());
        }
        if let Some(memory) = memory {
            m.insert("memory".into(), memory.as_str().into());
        }
        m
    };
    let mut out = Mapping::new();
    let requests = pair(&resources.cpu_request, &resources.memory_request);
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Mapping(requests));
    }
    let limits = pair(&resources.cpu_limit, &resources.memory_limit);
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Mapping(limits));
    }
    Value::Mapping(out)
}

fn with_pull_policy(mut container: Value, config: &InjectConfig) -> Value {
    if let (Some(policy), Some(m)) = (&config.image_pull_policy, container.as_mapping_mut()) {
        m.insert("imagePullPolicy".into(), policy.as_str().into());
    }
    container
}

/// `istio-init`: installs the nat rules as root with only NET_ADMIN and NET_RAW, then exits.
pub(super) fn build_init_container(config: &InjectConfig, iptables_args: &[String]) -> Value {
    let mut args = vec!["iptables".to_string()];
    args.extend(iptables_args.iter().cloned());
    let container = map([
        ("name", INIT_CONTAINER.into()),
        ("image", config.image.as_str().into()),
        ("command", strings(&["meshpilot"])),
        ("args", strings(&args)),
        ("resources", build_resources(&config.init_resources)),
        (
            "securityContext",
            map([
                ("runAsUser", int(0)),
                ("runAsGroup", int(0)),
                ("runAsNonRoot", false.into()),
                ("privileged", false.into()),
                ("allowPrivilegeEscalation", false.into()),
                // iptables-restore takes its lock under /run.
                ("readOnlyRootFilesystem", false.into()),
                (
                    "capabilities",
                    map([
                        ("add", strings(&["NET_ADMIN", "NET_RAW"])),
                        ("drop", strings(&["ALL"])),
                    ]),
                ),
            ]),
        ),
    ]);
    with_pull_policy(container, config)
}

fn field_env(name: &str, field_path: &str) -> Value {
    map([
        ("name", name.into()),
        (
            "valueFrom",
            map([("fieldRef", map([("fieldPath", field_path.into())]))]),
        ),
    ])
}

fn value_env(name: &str, value: &str) -> Value {
    map([("name", name.into()), ("value", value.into())])
}

fn mount(volume: &str, path: &str, read_only: bool) -> Value {
    let mut m = map([("name", volume.into()), ("mountPath", path.into())]);
    if read_only && let Some(m) = m.as_mapping_mut() {
        m.insert("readOnly".into(), true.into());
    }
    m
}

/// `istio-proxy`: `meshpilot agent`, which writes Envoy's bootstrap and runs Envoy, as uid and
/// gid 1337 with nothing the process could use to escape.
pub(super) fn build_proxy_container(config: &InjectConfig, workload: &str) -> Value {
    // Mounted where the agent looks for it by default.
    let root_cert = crate::pilot::DEFAULT_ROOT_CERT.to_string();
    debug_assert_eq!(root_cert, format!("{ROOT_CERT_DIR}/{ROOT_CERT_FILE}"));
    let args = [
        "agent",
        "--xds-address",
        &config.xds_address,
        "--tls-root-cert",
        &root_cert,
    ];
    let container = map([
        ("name", PROXY_CONTAINER.into()),
        ("image", config.proxy_image.as_str().into()),
        ("command", strings(&["meshpilot"])),
        ("args", strings(&args)),
        (
            "env",
            Value::Sequence(vec![
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_NAMESPACE", "metadata.namespace"),
                field_env("INSTANCE_IP", "status.podIP"),
                field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                field_env("HOST_IP", "status.hostIP"),
                value_env("ISTIO_META_CLUSTER_ID", &config.cluster_id),
                value_env("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"),
                value_env("ISTIO_META_WORKLOAD_NAME", workload),
                value_env("ISTIO_META_MESH_ID", &config.mesh_id),
            ]),
        ),
        (
            "ports",
            Value::Sequence(vec![map([
                ("name", "http-envoy-prom".into()),
                ("containerPort", int(PROMETHEUS_PORT)),
                ("protocol", "TCP".into()),
            ])]),
        ),
        (
            "readinessProbe",
            map([
                (
                    "httpGet",
                    map([
                        ("path", READINESS_PATH.into()),
                        ("port", int(READINESS_PORT)),
                    ]),
                ),
                ("initialDelaySeconds", int(1)),
                ("periodSeconds", int(2)),
                ("timeoutSeconds", int(3)),
                ("failureThreshold", int(30)),
            ]),
        ),
        ("resources", build_resources(&config.proxy_resources)),
        (
            "securityContext",
            map([
                ("runAsUser", int(PROXY_UID.into())),
                ("runAsGroup", int(PROXY_UID.into())),
                ("runAsNonRoot", true.into()),
                ("privileged", false.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                ("capabilities", map([("drop", strings(&["ALL"]))])),
            ]),
        ),
        (
            "volumeMounts",
            Value::Sequence(vec![
                mount(ENVOY_VOLUME, ENVOY_DIR, false),
                mount(DATA_VOLUME, DATA_DIR, false),
                mount(PODINFO_VOLUME, PODINFO_DIR, true),
                mount(ROOT_CERT_VOLUME, ROOT_CERT_DIR, true),
            ]),
        ),
    ]);
    with_pull_policy(container, config)
}

pub(super) fn build_volumes() -> Vec<Value> {
    let podinfo_item = |path: &str, field: &str| {
        map([
            ("path", path.into()),
            ("fieldRef", map([("fieldPath", field.into())])),
        ])
    };
    vec![
        map([
            ("name", ENVOY_VOLUME.into()),
            ("emptyDir", map([("medium", "Memory".into())])),
        ]),
        map([
            ("name", DATA_VOLUME.into()),
            ("emptyDir", Value::Mapping(Mapping::new())),
        ]),
        map([
            ("name", PODINFO_VOLUME.into()),
            (
                "downwardAPI",
                map([(
                    "items",
                    Value::Sequence(vec![
                        podinfo_item("labels", "metadata.labels"),
                        podinfo_item("annotations", "metadata.annotations"),
                    ]),
                )]),
            ),
        ]),
        map([
            ("name", ROOT_CERT_VOLUME.into()),
            ("configMap", map([("name", ROOT_CERT_CONFIG_MAP.into())])),
        ]),
    ]
}

/// Istio's `sidecar.istio.io/status` shape, fields in Istio's order.
pub(super) fn build_status_annotation(volumes: &[Value]) -> String {
    let names: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let list = |items: &[&str]| serde_json::to_string(items).expect("strings serialize");
    format!(
        r#"{{"initContainers":{},"containers":{},"volumes":{},"imagePullSecrets":null,"revision":"default"}}"#,
        list(&[INIT_CONTAINER]),
        list(&[PROXY_CONTAINER]),
        list(&names),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_annotation_is_json_in_istios_shape() {
        let status = build_status_annotation(&build_volumes());
        let parsed: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(parsed["initContainers"], serde_json::json!(["istio-init"]));
        assert_eq!(parsed["containers"], serde_json::json!(["istio-proxy"]));
        assert_eq!(
            parsed["volumes"],
            serde_json::json!([
                "istio-envoy",
                "istio-data",
                "istio-podinfo",
                "meshpilot-ca-root-cert"
            ])
        );
    }

    #[test]
    fn every_mount_has_a_volume() {
        let volumes = build_volumes();
        let proxy = build_proxy_container(&InjectConfig::default(), "web");
        for m in proxy["volumeMounts"].as_sequence().unwrap() {
            assert!(volumes.iter().any(|v| v["name"] == m["name"]), "{m:?}");
        }
    }
}
