//! What a proxy can see and what it serves: the outbound services and its own service targets.

use meshpilot_model::{Proxy, Service, ServicePort, Snapshot, TargetPort};
use std::sync::Arc;

/// Services the proxy's outbound config covers, sorted by hostname. With no Sidecar resource
/// every service is visible; ExternalName services get no config of their own.
pub(crate) fn visible_services<'a>(
    snapshot: &'a Snapshot,
    _proxy: &Proxy,
) -> impl Iterator<Item = &'a Arc<Service>> {
    snapshot.services().filter(|s| s.external_name.is_none())
}

/// One port of a service that selects this proxy's pod, with the port the pod listens on.
#[derive(Clone, Debug)]
pub(crate) struct ServiceTarget {
    pub service: Arc<Service>,
    pub port: ServicePort,
    pub target_port: u16,
}

/// The proxy's own service instances: services in its namespace whose selector matches its
/// labels, one entry per distinct target port, ordered by service creation time then hostname.
pub(crate) fn service_targets(snapshot: &Snapshot, proxy: &Proxy) -> Vec<ServiceTarget> {
    let pod = snapshot.pod(&proxy.namespace, &proxy.pod_name);
    let mut services: Vec<&Arc<Service>> = snapshot
        .services_in(&proxy.namespace)
        .filter(|s| s.selects(&proxy.labels))
        .collect();
    services.sort_by(|a, b| {
        (a.creation_timestamp.as_deref().unwrap_or(""), &a.hostname)
            .cmp(&(b.creation_timestamp.as_deref().unwrap_or(""), &b.hostname))
    });
    let mut targets: Vec<ServiceTarget> = Vec::new();
    for service in services {
        for port in &service.ports {
            if port.protocol.is_unsupported_transport() {
                continue;
            }
            let target_port = match &port.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Unset => Some(port.port),
                TargetPort::Name(name) => pod.and_then(|p| p.named_port(name)),
            };
            let Some(target_port) = target_port else {
                continue;
            };
            if targets.iter().any(|t| t.target_port == target_port) {
                continue;
            }
            targets.push(ServiceTarget {
                service: service.clone(),
                port: port.clone(),
                target_port,
            });
        }
    }
    targets
}
