//! Pure translation of a [`Snapshot`] for one [`Proxy`] into the Envoy resources istiod would
//! send that sidecar: listeners (LDS), route configurations (RDS), clusters (CDS) and cluster
//! load assignments (EDS).
//!
//! Place in the flow: the xDS server calls the `build_*` functions with the current snapshot
//! and a connected proxy; the `config-dump` CLI calls [`build_proxy_config`]. Nothing here does
//! I/O, holds a lock or knows about Kubernetes types: input is the model, output is Envoy protos.

pub mod canonical;
mod clusters;
pub mod dump;
mod endpoints;
mod envoy;
mod listeners;
pub mod names;
mod policy;
mod routes;
mod targets;
pub mod vhds;

pub use clusters::build_clusters;
pub use endpoints::build_endpoints;
pub use listeners::build_listeners;
pub use routes::{build_routes, route_name_port, route_ports_touched_by};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use meshpilot_model::{Hostname, Proxy, Snapshot};

/// Type URLs of the four resource types a sidecar receives.
pub mod type_urls {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const VIRTUAL_HOST: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
}

/// The proxy's own service ports as `(service host, service port, target port)`: what its
/// inbound listener chains and inbound clusters are built from.
pub fn service_target_ports(snapshot: &Snapshot, proxy: &Proxy) -> Vec<(Hostname, u16, u16)> {
    targets::service_targets(snapshot, proxy)
        .into_iter()
        .map(|t| (t.service.hostname.clone(), t.port.port, t.target_port))
        .collect()
}

/// Everything one proxy would be sent, in push order's resource types.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyConfig {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

/// The full config of one proxy: every listener and cluster, every route configuration the
/// listeners name, and the endpoints of every EDS cluster.
pub fn build_proxy_config(snapshot: &Snapshot, proxy: &Proxy) -> ProxyConfig {
    let clusters = build_clusters(snapshot, proxy);
    let eds_names: Vec<String> = clusters
        .iter()
        .filter(|c| c.eds_cluster_config.is_some())
        .map(|c| c.name.clone())
        .collect();
    let listeners = build_listeners(snapshot, proxy);
    let route_names = listeners::route_names(&listeners);
    ProxyConfig {
        endpoints: build_endpoints(snapshot, proxy, &eds_names),
        routes: build_routes(snapshot, proxy, &route_names),
        clusters,
        listeners,
    }
}
