//! The xDS server: Envoy's Aggregated Discovery Service, state-of-the-world and delta.
//!
//! Place in the flow: the binary debounces index changes with [`Debouncer`] and hands each new
//! snapshot to the [`Publisher`]; every proxy stream is a [`Connection`] state machine (no I/O)
//! that turns requests and published snapshots into responses, drawing resources from the shared
//! [`ResourceCache`]; [`AdsService`] only wires gRPC streams to connections and records each
//! one in the [`ConnectionRegistry`] the debug endpoints read; [`serve`] runs the xDS ports,
//! each HTTP/2 connection and its streams one task; [`XdsMetrics`] is `/metrics`.

mod connection;
mod delta_request;
mod grpc;
mod intern;
mod metrics;
mod publish;
mod read_ahead;
mod registry;
mod request;
mod resources;
mod response;
mod segments;
mod server;
pub mod tls;
mod transport;
mod types;

pub use connection::{Connection, Flavor, Held, Nack, Outgoing, PushContext, Watch};
pub use delta_request::{DeltaRequest, HeldVersions, WireStrings};
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, ConnectedGuard, XdsMetrics, type_label};
pub use publish::{DebounceConfig, Debouncer, Published, Publisher};
pub use read_ahead::ReadAhead;
pub use registry::{
    ConnectionInfo, ConnectionRegistry, ConnectionStatus, Registration, StatusSource, StreamKind,
    WatchStatus, config_dump,
};
pub use request::SotwRequest;
pub use resources::{
    CacheOptions, NameSet, Resource, ResourceCache, ResourceSet, Resources, SetDiff,
};
pub use response::{DeltaResponse, SotwResponse};
pub use server::{AdsService, DEFAULT_PUSH_THROTTLE};
pub use transport::{Http2Settings, serve};
pub use types::{ByTypeUrl, ResourceType, TypeSet, affected_types};
