//! The minimal protobuf views the client uses: only the fields it reads or writes (prost skips
//! the rest). Names and bodies are `Bytes` slices of the received message (no copies); string
//! fields are wire-compatible with `bytes` ones.

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status;

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteAny {
    #[prost(bytes = "bytes", tag = "1")]
    pub type_url: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `DiscoveryRequest` with shared names: a SotW ACK repeats every subscribed name (over a
/// thousand for EDS), so they are reference-counted slices, not fresh strings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteDiscoveryRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, optional, tag = "2")]
    pub node: Option<Node>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub resource_names: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<Status>,
}

/// Field 3 of a `DiscoveryRequest` (`resource_names`) in wire form, to send behind a request
/// whose own `resource_names` is empty.
pub fn encode_resource_names(names: &[Bytes]) -> Bytes {
    let mut wire = Vec::new();
    prost::encoding::bytes::encode_repeated(3, names, &mut wire);
    wire.into()
}

/// A SotW request and its names, already encoded (a shared list's encoding is made once).
pub struct SotwRequestOut {
    pub request: LiteDiscoveryRequest,
    pub names: Bytes,
}

impl super::grpc::Outbound for SotwRequestOut {
    fn frame(&self) -> super::grpc::Frame {
        super::grpc::frame_with(&self.request, &self.names)
    }
}

/// Responses keep each resource as the slice it arrived in (a `Vec` of small slices grows
/// cheaply while a push of hundreds is read); the client decodes each in one pass.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteDiscoveryResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    /// Encoded `Any`s.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteResource {
    /// A string on the wire; read as bytes, without an allocation per resource.
    #[prost(bytes = "bytes", tag = "1")]
    pub version: Bytes,
    #[prost(message, optional, tag = "2")]
    pub resource: Option<LiteAny>,
    #[prost(bytes = "bytes", tag = "3")]
    pub name: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteDeltaDiscoveryResponse {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    /// Encoded `Resource`s.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub removed_resources: Vec<Bytes>,
}

/// `Cluster`: name, `type` (3 = EDS) and `eds_cluster_config.service_name`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteCluster {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(int32, optional, tag = "2")]
    pub discovery_type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    pub eds_cluster_config: Option<LiteEdsClusterConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteEdsClusterConfig {
    #[prost(bytes = "bytes", tag = "2")]
    pub service_name: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteListener {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub filter_chains: Vec<LiteFilterChain>,
    #[prost(message, optional, tag = "25")]
    pub default_filter_chain: Option<LiteFilterChain>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteFilterChain {
    #[prost(message, repeated, tag = "3")]
    pub filters: Vec<LiteFilter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteFilter {
    #[prost(message, optional, tag = "4")]
    pub typed_config: Option<LiteAny>,
}

/// `HttpConnectionManager.rds`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteHttpConnectionManager {
    #[prost(message, optional, tag = "3")]
    pub rds: Option<LiteRds>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteRds {
    #[prost(bytes = "bytes", tag = "2")]
    pub route_config_name: Bytes,
}

/// `RouteConfiguration` down to its name and whether it names VHDS (`vhds`, field 9).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteRouteConfiguration {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(message, optional, tag = "9")]
    pub vhds: Option<LitePresent>,
}

/// A message read only for its presence.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LitePresent {}

/// `ClusterLoadAssignment.cluster_name`, `RouteConfiguration.name` and `VirtualHost.name` are
/// all field 1.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteNamed {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
}

/// `ClusterLoadAssignment` down to the endpoint addresses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteLoadAssignment {
    #[prost(bytes = "bytes", tag = "1")]
    pub cluster_name: Bytes,
    #[prost(message, repeated, tag = "2")]
    pub endpoints: Vec<LiteLocalityEndpoints>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteLocalityEndpoints {
    #[prost(message, repeated, tag = "2")]
    pub lb_endpoints: Vec<LiteLbEndpoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteLbEndpoint {
    #[prost(message, optional, tag = "1")]
    pub endpoint: Option<LiteEndpoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteEndpoint {
    #[prost(message, optional, tag = "1")]
    pub address: Option<LiteAddress>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteAddress {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<LiteSocketAddress>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteSocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
}

impl LiteLoadAssignment {
    /// Every endpoint's socket address.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| {
                e.endpoint
                    .as_ref()?
                    .address
                    .as_ref()?
                    .socket_address
                    .as_ref()
            })
            .map(|s| s.address.as_str())
    }
}
