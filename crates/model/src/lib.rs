//! The mesh model: services, endpoints, workloads and Istio configs, held in a single-writer
//! [`Index`] that publishes immutable [`Snapshot`]s.
//!
//! Place in the flow: sources call [`Index::apply`] / [`Index::delete`] / [`Index::reset`],
//! each returning a [`ChangeSet`]; the server debounces change sets and publishes
//! [`Index::snapshot`]; the translator reads only snapshots and [`Proxy`] values. No I/O here.

mod config;
pub mod fixtures;
mod index;
mod proxy;
mod service;
mod snapshot;
mod workload;

pub use config::{
    ConfigKey, ConfigKind, ConfigMeta, DestinationRuleConfig, RejectedConfig, VirtualServiceConfig,
    host_matches,
};
pub use index::{ChangeSet, DEFAULT_DOMAIN, Index, Kind, Object};
pub use proxy::{InterceptionMode, Proxy, ProxyError, ProxyMetadata};
pub use service::{
    Hostname, Protocol, Service, ServicePort, TargetPort, labels_match, resolve_host, service_fqdn,
};
pub use snapshot::{ROOT_NAMESPACE, Snapshot};
pub use workload::{
    ContainerPort, Endpoint, EndpointGroup, EndpointPort, GroupEndpoint, Locality, Namespace,
    ObjectKey, Pod,
};
