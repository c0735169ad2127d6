//! Kubernetes objects (k8s-openapi types) to model objects. Shared by every source, so a
//! directory of `kubectl get -o yaml` output and a live API watch produce identical objects.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshpilot_model::{
    ContainerPort, EndpointGroup, EndpointPort, GroupEndpoint, Locality, Namespace, Pod, Protocol,
    Service, ServicePort, TargetPort,
};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Namespace assumed for a namespaced object written without one, as `kubectl apply` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

const REGION_KEY: &str = "topology.kubernetes.io/region";
const ZONE_KEY: &str = "topology.kubernetes.io/zone";
const SUBZONE_KEY: &str = "topology.istio.io/subzone";

/// A field of a well-typed object that the model cannot take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertError {
    /// Field path within the object, e.g. `spec.ports[1].port`; empty for the object as a whole.
    pub field: String,
    pub message: String,
}

impl ConvertError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConvertError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConvertError {}

/// Namespace (defaulted) and name of a namespaced object; the name is required.
pub fn namespaced_key(meta: &ObjectMeta) -> Result<(String, String), ConvertError> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ConvertError::new("metadata.name", "missing"))?;
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    Ok((namespace, name))
}

/// RFC 3339, the form Kubernetes prints and Istio compares.
pub fn rfc3339(time: Option<&Time>) -> Option<String> {
    time.map(|t| t.0.to_string())
}

fn parse_ip(text: &str, field: impl FnOnce() -> String) -> Result<IpAddr, ConvertError> {
    text.trim()
        .parse()
        .map_err(|_| ConvertError::new(field(), format!("invalid IP address {text:?}")))
}

fn port_number(value: i32, field: impl FnOnce() -> String) -> Result<u16, ConvertError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ConvertError::new(field(), format!("port {value} is not in 1..=65535")))
}

pub fn build_service(svc: &core::Service) -> Result<Service, ConvertError> {
    let (namespace, name) = namespaced_key(&svc.metadata)?;
    let spec = svc.spec.clone().unwrap_or_default();

    // `clusterIPs` supersedes `clusterIP` (dual stack); both say "None" for headless.
    let (ip_texts, ip_field) = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => (ips.clone(), "spec.clusterIPs"),
        _ => (
            spec.cluster_ip.clone().into_iter().collect(),
            "spec.clusterIP",
        ),
    };
    let headless = ip_texts.iter().any(|ip| ip == "None");
    let mut cluster_ips = Vec::new();
    if !headless {
        for (i, text) in ip_texts.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            cluster_ips.push(parse_ip(text, || {
                if ip_field == "spec.clusterIPs" {
                    format!("{ip_field}[{i}]")
                } else {
                    ip_field.to_string()
                }
            })?);
        }
    }

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let port = port_number(p.port, || format!("spec.ports[{i}].port"))?;
        let target_port = match &p.target_port {
            None | Some(IntOrString::Int(0)) => TargetPort::Unset,
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(port_number(*n, || format!("spec.ports[{i}].targetPort"))?)
            }
            Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Unset,
            // A quoted number is still a number; anything else names a container port.
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n != 0 => TargetPort::Number(n),
                _ => TargetPort::Name(s.clone()),
            },
        };
        let port_name = p.name.clone().unwrap_or_default();
        let protocol = Protocol::detect(
            p.protocol.as_deref().unwrap_or("TCP"),
            p.app_protocol.as_deref(),
            &port_name,
            port,
        );
        ports.push(ServicePort {
            name: port_name,
            port,
            target_port,
            protocol,
        });
    }

    let external_name = match spec.type_.as_deref() {
        Some("ExternalName") => spec.external_name.clone(),
        _ => None,
    };
    Ok(Service {
        name,
        namespace,
        // The index derives the FQDN from its own domain.
        hostname: "".into(),
        cluster_ips,
        headless,
        ports,
        selector: spec.selector.clone(),
        creation_timestamp: rfc3339(svc.metadata.creation_timestamp.as_ref()),
        external_name,
    })
}

pub fn build_pod(pod: &core::Pod) -> Result<Pod, ConvertError> {
    let (namespace, name) = namespaced_key(&pod.metadata)?;
    let status = pod.status.clone().unwrap_or_default();
    let mut ips = Vec::new();
    match &status.pod_ips {
        Some(list) if !list.is_empty() => {
            for (i, ip) in list.iter().enumerate() {
                ips.push(parse_ip(&ip.ip, || format!("status.podIPs[{i}].ip"))?);
            }
        }
        _ => {
            if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
                ips.push(parse_ip(ip, || "status.podIP".to_string())?);
            }
        }
    }

    let spec = pod.spec.clone().unwrap_or_default();
    // Native sidecars (init containers that keep running) may own named ports too.
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut container_ports = Vec::new();
    for (ci, container) in spec.containers.iter().chain(sidecars).enumerate() {
        for (pi, p) in container.ports.iter().flatten().enumerate() {
            container_ports.push(ContainerPort {
                name: p.name.clone().unwrap_or_default(),
                port: port_number(p.container_port, || {
                    format!("spec.containers[{ci}].ports[{pi}].containerPort")
                })?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
            });
        }
    }

    let service_account = spec
        .service_account_name
        .clone()
        .or(spec.service_account.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    Ok(Pod {
        name,
        namespace,
        ips,
        labels: Arc::new(pod.metadata.labels.clone().unwrap_or_default()),
        service_account,
        node_name: spec.node_name.clone().unwrap_or_default(),
        container_ports,
        creation_timestamp: rfc3339(pod.metadata.creation_timestamp.as_ref()),
    })
}

pub fn build_namespace(ns: &core::Namespace) -> Result<Namespace, ConvertError> {
    let name = ns
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ConvertError::new("metadata.name", "missing"))?;
    Ok(Namespace {
        name,
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    })
}

/// `Ok(None)` for slices the mesh does not route to: FQDN address type, or no owning Service.
pub fn build_endpoint_slice(
    slice: &discovery::EndpointSlice,
) -> Result<Option<EndpointGroup>, ConvertError> {
    let (namespace, name) = namespaced_key(&slice.metadata)?;
    if slice.address_type == "FQDN" {
        tracing::debug!(%namespace, %name, "skipping EndpointSlice with addressType FQDN");
        return Ok(None);
    }
    let Some(service_name) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
    else {
        tracing::debug!(%namespace, %name, "skipping EndpointSlice without {SERVICE_NAME_LABEL}");
        return Ok(None);
    };

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports", which a proxy cannot express.
        let Some(number) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            port: port_number(number, || format!("ports[{i}].port"))?,
        });
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, text) in ep.addresses.iter().enumerate() {
            addresses.push(parse_ip(text, || format!("endpoints[{i}].addresses[{j}]"))?);
        }
        let conditions = ep.conditions.clone().unwrap_or_default();
        endpoints.push(GroupEndpoint {
            addresses,
            ready: conditions.ready.unwrap_or(true),
            terminating: conditions.terminating.unwrap_or(false),
            pod_name: pod_name(ep.target_ref.as_ref()),
            node_name: ep.node_name.clone(),
            locality: slice_endpoint_locality(ep),
        });
    }

    Ok(Some(EndpointGroup {
        namespace,
        name,
        service_name,
        ports,
        endpoints,
    }))
}

/// `zone` first; the topology map (v1 `deprecatedTopology`, v1beta1 `topology`) supplies region
/// and subzone; a zone hint stands in when nothing else names the zone.
fn slice_endpoint_locality(ep: &discovery::Endpoint) -> Locality {
    let empty = BTreeMap::new();
    let topology = ep.deprecated_topology.as_ref().unwrap_or(&empty);
    let from_topology = |key: &str| topology.get(key).cloned().unwrap_or_default();
    let hinted_zone = || {
        ep.hints
            .as_ref()
            .and_then(|h| h.for_zones.as_ref())
            .and_then(|zones| zones.first())
            .map(|z| z.name.clone())
    };
    let zone = ep
        .zone
        .clone()
        .filter(|z| !z.is_empty())
        .or_else(|| topology.get(ZONE_KEY).cloned())
        .or_else(hinted_zone)
        .unwrap_or_default();
    Locality {
        region: from_topology(REGION_KEY),
        zone,
        subzone: from_topology(SUBZONE_KEY),
    }
}

fn pod_name(target: Option<&core::ObjectReference>) -> Option<String> {
    target
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| r.name.clone())
}

/// Reshapes a core/v1 Endpoints object; the group's ports are the union of its subsets' ports
/// because the model keeps one port list per object.
pub fn build_endpoints(eps: &core::Endpoints) -> Result<EndpointGroup, ConvertError> {
    let (namespace, name) = namespaced_key(&eps.metadata)?;
    let mut ports: Vec<EndpointPort> = Vec::new();
    let mut endpoints = Vec::new();
    for (si, subset) in eps.subsets.iter().flatten().enumerate() {
        for (pi, p) in subset.ports.iter().flatten().enumerate() {
            let port = EndpointPort {
                name: p.name.clone().unwrap_or_default(),
                port: port_number(p.port, || format!("subsets[{si}].ports[{pi}].port"))?,
            };
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let lists = [
            ("addresses", true, &subset.addresses),
            ("notReadyAddresses", false, &subset.not_ready_addresses),
        ];
        for (field, ready, list) in lists {
            for (ai, address) in list.iter().flatten().enumerate() {
                let ip = parse_ip(&address.ip, || format!("subsets[{si}].{field}[{ai}].ip"))?;
                endpoints.push(GroupEndpoint {
                    addresses: vec![ip],
                    ready,
                    terminating: false,
                    pod_name: pod_name(address.target_ref.as_ref()),
                    node_name: address.node_name.clone(),
                    locality: Locality::default(),
                });
            }
        }
    }
    Ok(EndpointGroup {
        service_name: name.clone(),
        namespace,
        name,
        ports,
        endpoints,
    })
}
