//! Pods, namespaces, endpoint sources and the joined endpoints the translator reads.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// `namespace/name` of a Kubernetes object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Parses the `istio-locality` label form `region.zone.subzone` (also `/`-separated).
    pub fn parse(text: &str) -> Locality {
        let mut parts = text.split(['.', '/']);
        Locality {
            region: parts.next().unwrap_or_default().to_string(),
            zone: parts.next().unwrap_or_default().to_string(),
            subzone: parts.next().unwrap_or_default().to_string(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// `status.podIPs`, first = primary; empty until the pod is scheduled.
    pub ips: Vec<IpAddr>,
    /// Shared with every endpoint joined from this pod.
    pub labels: Arc<BTreeMap<String, String>>,
    pub service_account: String,
    pub node_name: String,
    pub container_ports: Vec<ContainerPort>,
    pub creation_timestamp: Option<String>,
}

impl Pod {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// Locality from the `istio-locality` label, else the topology labels on the pod.
    pub fn locality(&self) -> Locality {
        if let Some(l) = self.labels.get("istio-locality") {
            return Locality::parse(l);
        }
        let get = |k: &str| self.labels.get(k).cloned().unwrap_or_default();
        Locality {
            region: get("topology.kubernetes.io/region"),
            zone: get("topology.kubernetes.io/zone"),
            subzone: get("topology.istio.io/subzone"),
        }
    }

    /// The container port number behind a named target port.
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.container_ports
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Endpoints of one service from one source object: an EndpointSlice, or a core/v1 Endpoints
/// object reshaped into the same form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointGroup {
    pub namespace: String,
    /// The slice (or Endpoints) object's own name.
    pub name: String,
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service_name: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<GroupEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    /// Matches the service port's name (empty for an unnamed port).
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub terminating: bool,
    /// `targetRef` when it names a Pod.
    pub pod_name: Option<String>,
    pub node_name: Option<String>,
    pub locality: Locality,
}

/// One address:port of a service port, joined with what its pod says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    /// Name of the service port this endpoint serves.
    pub port_name: String,
    pub ready: bool,
    pub labels: Arc<BTreeMap<String, String>>,
    pub locality: Locality,
    /// The pod behind the address, when known.
    pub pod: Option<ObjectKey>,
    pub service_account: String,
}
