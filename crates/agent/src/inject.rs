//! Sidecar injection: what Istio's injector adds to a pod template, rebuilt for meshpilot.
//!
//! [`inject_pod_template`] adds to one pod template (a Pod, or the `template` of a workload):
//! the `istio-init` init container running `meshpilot iptables` with istio-init's flags, the
//! `istio-proxy` container running `meshpilot agent` (uid 1337, locked down), the volumes they
//! mount, and the pod metadata Istio records (`sidecar.istio.io/status`, the interception mode,
//! `security.istio.io/tlsMode`). [`inject_documents`] does it for every workload in a
//! multi-document YAML text, which is `meshpilot inject`; the admission webhook calls
//! [`inject_pod_template`] on the Pod the API server sends.
//!
//! Templates are `serde_yaml_ng` values so that what the user wrote keeps its key order.
//!
//! Image contract: the init image must have `meshpilot` on `PATH` and `iptables-restore` (it
//! runs as root with NET_ADMIN and NET_RAW only); the proxy image must have `meshpilot` and
//! `envoy` on `PATH` and run as uid 1337 with a read-only root filesystem. One image carrying
//! all three (the default for both) satisfies both.

mod documents;
mod sidecar;

pub use documents::{DocumentError, inject_documents};

use crate::iptables::{self, IptablesError, PortSelection, RangeSelection};
use serde_yaml_ng::{Mapping, Value};
use std::str::FromStr;

/// Pod annotation recording what injection added; its presence means "already injected".
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Label or annotation; `"false"` opts a pod out.
pub const INJECT_KEY: &str = "sidecar.istio.io/inject";
pub const INTERCEPTION_MODE_ANNOTATION: &str = "sidecar.istio.io/interceptionMode";
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Lets `kubectl logs/exec` pick the application rather than the sidecar.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

pub const INIT_CONTAINER: &str = "istio-init";
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The uid and gid Envoy runs as, which the interception rules exempt.
pub const PROXY_UID: u32 = iptables::DEFAULT_PROXY_UID;

pub const DEFAULT_IMAGE: &str = "meshpilot/meshpilot:0.1.0";
/// The agent and the injector agree on where the control plane is.
pub use crate::pilot::DEFAULT_XDS_ADDRESS;
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
pub const DEFAULT_MESH_ID: &str = "cluster.local";
/// The ConfigMap holding `root-cert.pem`, published by the operator into each mesh namespace.
pub const ROOT_CERT_CONFIG_MAP: &str = "meshpilot-ca-root-cert";

/// Inbound ports of the sidecar itself (Prometheus, health, agent), never captured.
const SIDECAR_PORTS: &str = "15090,15021,15020";

/// Requests and limits of one container; `None` leaves the field out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

/// What is the same for every injected pod: images, control plane, identity of the mesh,
/// resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of `istio-init`.
    pub image: String,
    /// Image of `istio-proxy`.
    pub proxy_image: String,
    /// `Always`, `IfNotPresent` or `Never`; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// `HOST:PORT` of the control plane's TLS xDS port.
    pub xds_address: String,
    pub cluster_id: String,
    pub mesh_id: String,
    pub proxy_resources: Resources,
    pub init_resources: Resources,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: DEFAULT_IMAGE.into(),
            proxy_image: DEFAULT_IMAGE.into(),
            image_pull_policy: None,
            xds_address: DEFAULT_XDS_ADDRESS.into(),
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            mesh_id: DEFAULT_MESH_ID.into(),
            // Istio's defaults for the proxy.
            proxy_resources: Resources {
                cpu_request: Some("100m".into()),
                memory_request: Some("128Mi".into()),
                cpu_limit: Some("2".into()),
                memory_limit: Some("1Gi".into()),
            },
            // iptables-restore once, then exit.
            init_resources: Resources {
                cpu_request: Some("10m".into()),
                memory_request: Some("10Mi".into()),
                cpu_limit: Some("100m".into()),
                memory_limit: Some("50Mi".into()),
            },
        }
    }
}

impl InjectConfig {
    /// Refuses settings that would produce a pod the API server or the kubelet rejects.
    pub fn validate(&self) -> Result<(), InjectError> {
        for (setting, image) in [("image", &self.image), ("proxy-image", &self.proxy_image)] {
            if image.trim().is_empty() || image.contains(char::is_whitespace) {
                return Err(InjectError::InvalidSetting {
                    setting,
                    value: image.clone(),
                    expected: "an image reference such as meshpilot/meshpilot:0.1.0",
                });
            }
        }
        if let Some(policy) = &self.image_pull_policy
            && !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            return Err(InjectError::InvalidSetting {
                setting: "image-pull-policy",
                value: policy.clone(),
                expected: "Always, IfNotPresent or Never",
            });
        }
        let port_ok = self
            .xds_address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && iptables::parse_port(port).is_ok());
        if !port_ok {
            return Err(InjectError::InvalidSetting {
                setting: "xds-address",
                value: self.xds_address.clone(),
                expected: "HOST:PORT",
            });
        }
        for (setting, value) in [
            ("cpu-request", &self.proxy_resources.cpu_request),
            ("memory-request", &self.proxy_resources.memory_request),
            ("cpu-limit", &self.proxy_resources.cpu_limit),
            ("memory-limit", &self.proxy_resources.memory_limit),
        ] {
            if let Some(value) = value
                && !is_quantity(value)
            {
                return Err(InjectError::InvalidSetting {
                    setting,
                    value: value.clone(),
                    expected: "a Kubernetes quantity such as 100m, 1 or 128Mi",
                });
            }
        }
        Ok(())
    }
}

/// A Kubernetes resource quantity: a decimal number and an optional suffix.
fn is_quantity(s: &str) -> bool {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|exp| !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("{0} is missing")]
    Missing(String),
    #[error("{0} must be a mapping")]
    NotAMapping(String),
    #[error("{0} must be a list")]
    NotAList(String),
    #[error("{0} must be a string")]
    NotAString(String),
    #[error("spec.containers is empty: a pod needs at least one container")]
    NoContainers,
    #[error("annotation {annotation}: {value:?} is invalid: {source}")]
    Annotation {
        annotation: &'static str,
        value: String,
        source: IptablesError,
    },
    #[error(
        "annotation {INTERCEPTION_MODE_ANNOTATION}: {0:?} is not supported: meshpilot only \
         intercepts with REDIRECT"
    )]
    InterceptionMode(String),
    #[error("the pod already has a volume named {0:?}, which injection adds")]
    VolumeExists(String),
    #[error("invalid {setting} {value:?}: expected {expected}")]
    InvalidSetting {
        setting: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// What [`inject_pod_template`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// The status annotation or an `istio-proxy` container is already there.
    AlreadyInjected,
    /// `sidecar.istio.io/inject: "false"` as a label or an annotation.
    OptedOut,
    /// Host-network pods share the node's network namespace: rules there would capture the
    /// node's traffic, so they are never injected (as in Istio).
    HostNetwork,
}

impl Outcome {
    pub fn changed(self) -> bool {
        self == Outcome::Injected
    }
}

/// Adds the sidecar to a pod template (a mapping with `metadata` and `spec`; a Pod object is
/// one). `workload` names the workload for `ISTIO_META_WORKLOAD_NAME`. Opted-out, host-network
/// and already-injected templates are left untouched. Errors leave the template unchanged.
pub fn inject_pod_template(
    template: &mut Value,
    workload: &str,
    config: &InjectConfig,
) -> Result<Outcome, InjectError> {
    let pod = template
        .as_mapping()
        .ok_or_else(|| InjectError::NotAMapping("the pod template".into()))?;
    let metadata = optional_mapping(pod, "metadata", "metadata")?;
    let annotations = match metadata {
        Some(m) => optional_mapping(m, "annotations", "metadata.annotations")?,
        None => None,
    };
    let labels = match metadata {
        Some(m) => optional_mapping(m, "labels", "metadata.labels")?,
        None => None,
    };
    if is_opted_out(labels) || is_opted_out(annotations) {
        return Ok(Outcome::OptedOut);
    }
    let spec = optional_mapping(pod, "spec", "spec")?
        .ok_or_else(|| InjectError::Missing("spec".into()))?;
    let containers = match spec.get("containers") {
        None | Some(Value::Null) => return Err(InjectError::Missing("spec.containers".into())),
        Some(Value::Sequence(list)) => list,
        Some(_) => return Err(InjectError::NotAList("spec.containers".into())),
    };
    let has_proxy = containers
        .iter()
        .any(|c| container_name(c) == Some(PROXY_CONTAINER));
    if has_proxy || annotations.is_some_and(|a| a.contains_key(STATUS_ANNOTATION)) {
        return Ok(Outcome::AlreadyInjected);
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::HostNetwork);
    }
    let first_container = containers
        .first()
        .ok_or(InjectError::NoContainers)?
        .as_mapping()
        .ok_or_else(|| InjectError::NotAMapping("spec.containers[0]".into()))?;
    let app_container = match first_container.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err(InjectError::NotAString("spec.containers[0].name".into())),
    };
    if let Some(mode) = annotation(annotations, INTERCEPTION_MODE_ANNOTATION)?
        && !mode.trim().eq_ignore_ascii_case("REDIRECT")
    {
        return Err(InjectError::InterceptionMode(mode.to_string()));
    }
    let iptables_args = iptables_args(annotations)?;
    let new_volumes = sidecar::build_volumes();
    for list in ["initContainers", "volumes"] {
        if !matches!(
            spec.get(list),
            None | Some(Value::Null | Value::Sequence(_))
        ) {
            return Err(InjectError::NotAList(format!("spec.{list}")));
        }
    }
    if let Some(Value::Sequence(volumes)) = spec.get("volumes") {
        for volume in volumes {
            if let Some(name) = container_name(volume)
                && new_volumes.iter().any(|v| container_name(v) == Some(name))
            {
                return Err(InjectError::VolumeExists(name.to_string()));
            }
        }
    }
    if !matches!(
        spec.get("securityContext"),
        None | Some(Value::Null | Value::Mapping(_))
    ) {
        return Err(InjectError::NotAMapping("spec.securityContext".into()));
    }

    // Everything is checked: from here on nothing fails.
    let status = sidecar::build_status_annotation(&new_volumes);
    let init = sidecar::build_init_container(config, &iptables_args);
    let proxy = sidecar::build_proxy_container(config, workload);
    let pod = template.as_mapping_mut().expect("checked above");
    let spec = child_mapping(pod, "spec");
    append(spec, "initContainers", vec![init], Some("containers"));
    append(spec, "containers", vec![proxy], None);
    append(spec, "volumes", new_volumes, None);
    // An fsGroup the user chose stays: changing it could break their own volumes, and the
    // sidecar's volumes do not depend on it.
    let security = child_mapping(spec, "securityContext");
    if !security.contains_key("fsGroup") {
        security.insert("fsGroup".into(), u64::from(PROXY_UID).into());
    }
    let metadata = child_mapping(pod, "metadata");
    child_mapping(metadata, "labels").insert(TLS_MODE_LABEL.into(), "istio".into());
    let annotations = child_mapping(metadata, "annotations");
    if !annotations.contains_key(DEFAULT_CONTAINER_ANNOTATION) {
        annotations.insert(DEFAULT_CONTAINER_ANNOTATION.into(), app_container.into());
    }
    annotations.insert(INTERCEPTION_MODE_ANNOTATION.into(), "REDIRECT".into());
    annotations.insert(STATUS_ANNOTATION.into(), status.into());
    Ok(Outcome::Injected)
}

/// `meshpilot iptables`' arguments (without the subcommand) for a pod with these annotations.
/// Without traffic annotations: `-p 15001 -z 15006 -u 1337 -m REDIRECT -i * -x "" -b * -d
/// 15090,15021,15020`. Inbound capture stays `*` unless `includeInboundPorts` says otherwise
/// (some Istio releases list the container ports instead; `*` also covers undeclared ports).
pub fn iptables_args(annotations: Option<&Mapping>) -> Result<Vec<String>, InjectError> {
    let value = |key| annotation(annotations, key).map(|v| v.map(str::trim));
    let invalid = |annotation: &'static str, value: &str| {
        let value = value.to_string();
        move |source| InjectError::Annotation {
            annotation,
            value,
            source,
        }
    };
    let outbound = value(INCLUDE_OUTBOUND_IP_RANGES)?.unwrap_or("*");
    let outbound = match RangeSelection::from_str(outbound)
        .map_err(invalid(INCLUDE_OUTBOUND_IP_RANGES, outbound))?
    {
        RangeSelection::All => "*".to_string(),
        RangeSelection::None => String::new(),
        RangeSelection::Only(ranges) => join(&ranges),
    };
    let outbound_excluded = value(EXCLUDE_OUTBOUND_IP_RANGES)?.unwrap_or("");
    let outbound_excluded = join(
        &iptables::parse_cidrs(outbound_excluded)
            .map_err(invalid(EXCLUDE_OUTBOUND_IP_RANGES, outbound_excluded))?,
    );
    let inbound = value(INCLUDE_INBOUND_PORTS)?.unwrap_or("*");
    let inbound =
        match PortSelection::from_str(inbound).map_err(invalid(INCLUDE_INBOUND_PORTS, inbound))? {
            PortSelection::All => "*".to_string(),
            PortSelection::None => String::new(),
            PortSelection::Only(ports) => join(&ports),
        };
    let mut inbound_excluded = SIDECAR_PORTS.to_string();
    if let Some(extra) = value(EXCLUDE_INBOUND_PORTS)? {
        let ports = iptables::parse_ports(extra).map_err(invalid(EXCLUDE_INBOUND_PORTS, extra))?;
        for port in ports {
            inbound_excluded.push_str(&format!(",{port}"));
        }
    }
    let mut args: Vec<String> = vec![
        "-p".into(),
        iptables::DEFAULT_PROXY_PORT.to_string(),
        "-z".into(),
        iptables::DEFAULT_INBOUND_CAPTURE_PORT.to_string(),
        "-u".into(),
        PROXY_UID.to_string(),
        "-m".into(),
        "REDIRECT".into(),
        "-i".into(),
        outbound,
        "-x".into(),
        outbound_excluded,
        "-b".into(),
        inbound,
        "-d".into(),
        inbound_excluded,
    ];
    if let Some(ports) = value(EXCLUDE_OUTBOUND_PORTS)? {
        let ports = iptables::parse_ports(ports).map_err(invalid(EXCLUDE_OUTBOUND_PORTS, ports))?;
        if !ports.is_empty() {
            args.extend(["-o".to_string(), join(&ports)]);
        }
    }
    Ok(args)
}

/// A comma-separated list, as istio-iptables reads it.
fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// `sidecar.istio.io/inject` set to a false value in these labels or annotations.
pub fn is_opted_out(labels_or_annotations: Option<&Mapping>) -> bool {
    labels_or_annotations
        .and_then(|m| m.get(INJECT_KEY))
        .and_then(Value::as_str)
        .is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "false" | "no" | "n" | "off"
            )
        })
}

fn annotation<'a>(
    annotations: Option<&'a Mapping>,
    key: &str,
) -> Result<Option<&'a str>, InjectError> {
    match annotations.and_then(|a| a.get(key)) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(InjectError::NotAString(format!(
            "metadata.annotations.{key:?}"
        ))),
    }
}

fn optional_mapping<'a>(
    parent: &'a Mapping,
    key: &str,
    path: &str,
) -> Result<Option<&'a Mapping>, InjectError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(m)) => Ok(Some(m)),
        Some(_) => Err(InjectError::NotAMapping(path.to_string())),
    }
}

fn container_name(value: &Value) -> Option<&str> {
    value.get("name").and_then(Value::as_str)
}

/// The mapping under `key`, created when absent or null (callers checked it is not anything
/// else).
fn child_mapping<'a>(parent: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let slot = parent
        .entry(key.into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if slot.is_null() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut().expect("checked to be a mapping")
}

/// Extends the list under `key`; a new list goes just before `before` when that key exists
/// (init containers read best above the containers), else at the end.
fn append(parent: &mut Mapping, key: &str, items: Vec<Value>, before: Option<&str>) {
    match parent.get_mut(key) {
        Some(Value::Sequence(list)) => list.extend(items),
        Some(slot) => *slot = Value::Sequence(items),
        None => {
            let mut new = Some(Value::Sequence(items));
            for (k, v) in std::mem::take(parent) {
                if before.is_some() && k.as_str() == before {
                    parent.insert(key.into(), new.take().expect("placed once"));
                }
                parent.insert(k, v);
            }
            if let Some(new) = new {
                parent.insert(key.into(), new);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(yaml: &str) -> Mapping {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn mk_pod(extra_metadata: &str) -> Value {
        serde_yaml_ng::from_str(&format!(
            "metadata:\n  name: web\n{extra_metadata}spec:\n  containers:\n  - name: app\n    image: nginx\n"
        ))
        .unwrap()
    }

    #[test]
    fn default_iptables_args_are_istio_inits() {
        assert_eq!(
            iptables_args(None).unwrap(),
            [
                "-p",
                "15001",
                "-z",
                "15006",
                "-u",
                "1337",
                "-m",
                "REDIRECT",
                "-i",
                "*",
                "-x",
                "",
                "-b",
                "*",
                "-d",
                "15090,15021,15020"
            ]
        );
    }

    #[test]
    fn traffic_annotations_become_flags() {
        let a = annotations(
            r#"
traffic.sidecar.istio.io/includeInboundPorts: "9080, 9443"
traffic.sidecar.istio.io/excludeInboundPorts: "8081"
traffic.sidecar.istio.io/includeOutboundIPRanges: "10.96.0.0/12"
traffic.sidecar.istio.io/excludeOutboundIPRanges: "169.254.169.254/32, 10.1.2.3/16"
traffic.sidecar.istio.io/excludeOutboundPorts: "5432,6379"
"#,
        );
        let args = iptables_args(Some(&a)).unwrap().join(" ");
        assert_eq!(
            args,
            "-p 15001 -z 15006 -u 1337 -m REDIRECT -i 10.96.0.0/12 -x 169.254.169.254/32,10.1.0.0/16 \
             -b 9080,9443 -d 15090,15021,15020,8081 -o 5432,6379"
        );
    }

    #[test]
    fn bad_annotations_name_the_annotation() {
        let a = annotations("traffic.sidecar.istio.io/excludeOutboundPorts: \"http\"\n");
        let err = iptables_args(Some(&a)).unwrap_err().to_string();
        assert!(err.contains("excludeOutboundPorts"), "{err}");
        assert!(err.contains("\"http\""), "{err}");
        let a = annotations("traffic.sidecar.istio.io/excludeOutboundIPRanges: \"*\"\n");
        assert!(iptables_args(Some(&a)).is_err());
    }

    #[test]
    fn injects_once_and_respects_opt_outs() {
        let config = InjectConfig::default();
        let mut pod = mk_pod("");
        assert_eq!(
            inject_pod_template(&mut pod, "web", &config),
            Ok(Outcome::Injected)
        );
        let injected = pod.clone();
        assert_eq!(
            inject_pod_template(&mut pod, "web", &config),
            Ok(Outcome::AlreadyInjected)
        );
        assert_eq!(pod, injected);
        assert_eq!(pod["spec"]["containers"][1]["name"], "istio-proxy");
        assert_eq!(pod["spec"]["initContainers"][0]["name"], "istio-init");
        assert_eq!(pod["spec"]["securityContext"]["fsGroup"], 1337);
        assert_eq!(pod["metadata"]["labels"][TLS_MODE_LABEL], "istio");

        for opt_out in [
            "  labels:\n    sidecar.istio.io/inject: \"false\"\n",
            "  annotations:\n    sidecar.istio.io/inject: \"false\"\n",
        ] {
            let mut pod = mk_pod(opt_out);
            let before = pod.clone();
            assert_eq!(
                inject_pod_template(&mut pod, "web", &config),
                Ok(Outcome::OptedOut)
            );
            assert_eq!(pod, before);
        }
    }

    #[test]
    fn errors_leave_the_template_alone() {
        let mut pod =
            mk_pod("  annotations:\n    traffic.sidecar.istio.io/includeInboundPorts: \"x\"\n");
        let before = pod.clone();
        assert!(inject_pod_template(&mut pod, "web", &InjectConfig::default()).is_err());
        assert_eq!(pod, before);
        let mut pod = mk_pod("  annotations:\n    sidecar.istio.io/interceptionMode: TPROXY\n");
        assert_eq!(
            inject_pod_template(&mut pod, "web", &InjectConfig::default()),
            Err(InjectError::InterceptionMode("TPROXY".into()))
        );
    }

    #[test]
    fn host_network_pods_are_skipped() {
        let mut pod: Value = serde_yaml_ng::from_str(
            "spec:\n  hostNetwork: true\n  containers:\n  - {name: app, image: x}\n",
        )
        .unwrap();
        assert_eq!(
            inject_pod_template(&mut pod, "x", &InjectConfig::default()),
            Ok(Outcome::HostNetwork)
        );
    }

    #[test]
    fn settings_are_validated() {
        assert_eq!(InjectConfig::default().validate(), Ok(()));
        let mut config = InjectConfig::default();
        config.proxy_resources.memory_request = Some("lots".into());
        assert!(config.validate().is_err());
        let mut config = InjectConfig {
            xds_address: "meshpilot".into(),
            ..Default::default()
        };
        assert!(config.validate().is_err());
        config.xds_address = "10.0.0.1:15012".into();
        config.proxy_resources.cpu_limit = Some("1.5".into());
        config.proxy_resources.memory_limit = Some("1e9".into());
        assert_eq!(config.validate(), Ok(()));
    }
}
