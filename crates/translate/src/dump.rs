//! Envoy admin `config_dump` rendering of a proxy's config, through the protobuf JSON mapping.
//!
//! JSON comes from prost-reflect over the descriptor set the envoy-types crate is generated
//! from (a copy without comments lives in `proto/`), so every message, enum and `Any` renders exactly as the
//! protobuf JSON mapping says, with Envoy's snake_case field names as in its admin output.

use crate::ProxyConfig;
use envoy_types::pb::envoy::admin::v3::{
    ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump,
    clusters_config_dump::DynamicCluster,
    endpoints_config_dump::DynamicEndpointConfig,
    listeners_config_dump::{DynamicListener, DynamicListenerState},
    routes_config_dump::DynamicRouteConfig,
};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The envoy-types descriptor set (envoy-types 0.7.7, `src/generated/types.bin`) without its
/// source info (`cargo xtask sync-descriptors`).
const ENVOY_DESCRIPTORS: &[u8] = include_bytes!("../../../proto/envoy-types-0.7.7.descriptor.bin");

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("message type {0} is not in the Envoy descriptor set")]
    UnknownType(String),
    #[error("cannot decode {type_name} for JSON rendering: {source}")]
    Decode {
        type_name: String,
        source: prost::DecodeError,
    },
    #[error("cannot render {type_name} as JSON: {source}")]
    Serialize {
        type_name: String,
        source: serde_json::Error,
    },
}

/// The resource types a dump can be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceType {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Clusters,
        ResourceType::Listeners,
        ResourceType::Routes,
        ResourceType::Endpoints,
    ];
}

/// Message types this code encodes canonically or renders as JSON: the four xDS resources,
/// every extension the translator and the bootstrap pack into an `Any`, the admin config-dump
/// wrappers and the bootstrap itself. The pool holds the files these are defined in and their
/// imports, a third of the set; the rest (hundreds of extensions never emitted) would cost
/// ~9 MB of heap for the life of every process.
pub const RENDERED_TYPES: &[&str] = &[
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.config.route.v3.VirtualHost",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.admin.v3.ConfigDump",
    "envoy.config.bootstrap.v3.Bootstrap",
];

/// The descriptor pool for [`RENDERED_TYPES`], built once per process.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let set = FileDescriptorSet::decode(ENVOY_DESCRIPTORS)
            .expect("the bundled Envoy descriptor set decodes");
        DescriptorPool::from_file_descriptor_set(FileDescriptorSet {
            file: files_defining(set.file, RENDERED_TYPES),
        })
        .expect("the files defining the rendered types form a complete pool")
    })
}

/// The files that define `types`, with everything they import, in the set's order (imports
/// come first there, as a pool needs them).
fn files_defining(files: Vec<FileDescriptorProto>, types: &[&str]) -> Vec<FileDescriptorProto> {
    let defines = |file: &FileDescriptorProto, full_name: &str| {
        full_name
            .strip_prefix(file.package())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|name| file.message_type.iter().any(|m| m.name() == name))
    };
    let by_name: HashMap<&str, &FileDescriptorProto> =
        files.iter().map(|f| (f.name(), f)).collect();
    let mut wanted = HashSet::new();
    let mut pending: Vec<&str> = files
        .iter()
        .filter(|f| types.iter().any(|t| defines(f, t)))
        .map(|f| f.name())
        .collect();
    while let Some(name) = pending.pop() {
        if wanted.insert(name.to_string())
            && let Some(file) = by_name.get(name)
        {
            pending.extend(file.dependency.iter().map(String::as_str));
        }
    }
    files
        .into_iter()
        .filter(|f| wanted.contains(f.name()))
        .collect()
}

/// prost-reflect's built-in pool of the `google.protobuf` well-known types: a few hundred KB,
/// where even the pruned Envoy pool costs a few MB of heap for as long as the process lives.
fn well_known_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(DescriptorPool::global)
}

/// Renders any Envoy message as protobuf JSON (snake_case names, defaults omitted, `Any`
/// expanded with its `@type`). Well-known types (node metadata's `Struct`, on every connect)
/// are rendered without loading the Envoy descriptor set.
pub fn to_json<M: Message + Name>(message: &M) -> Result<serde_json::Value, DumpError> {
    let type_name = M::full_name();
    let pool = if type_name.starts_with("google.protobuf.") {
        well_known_pool()
    } else {
        descriptor_pool()
    };
    let descriptor = pool
        .get_message_by_name(&type_name)
        .ok_or_else(|| DumpError::UnknownType(type_name.clone()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).map_err(
        |source| DumpError::Decode {
            type_name: type_name.clone(),
            source,
        },
    )?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|source| DumpError::Serialize { type_name, source })
}

/// Builds the `envoy.admin.v3.ConfigDump` Envoy's admin `/config_dump` would show once this
/// config has been accepted, limited to `types` (in Envoy's order: clusters, listeners, routes,
/// endpoints).
pub fn config_dump(config: &ProxyConfig, version: &str, types: &[ResourceType]) -> ConfigDump {
    let mut configs = Vec::new();
    let wants = |t| types.contains(&t);
    if wants(ResourceType::Clusters) {
        configs.push(pack_any(ClustersConfigDump {
            version_info: version.to_string(),
            dynamic_active_clusters: config
                .clusters
                .iter()
                .map(|c| DynamicCluster {
                    version_info: version.to_string(),
                    cluster: Some(pack_any(c.clone())),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }));
    }
    if wants(ResourceType::Listeners) {
        configs.push(pack_any(ListenersConfigDump {
            version_info: version.to_string(),
            dynamic_listeners: config
                .listeners
                .iter()
                .map(|l| DynamicListener {
                    name: l.name.clone(),
                    active_state: Some(DynamicListenerState {
                        version_info: version.to_string(),
                        listener: Some(pack_any(l.clone())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }));
    }
    if wants(ResourceType::Routes) {
        configs.push(pack_any(RoutesConfigDump {
            dynamic_route_configs: config
                .routes
                .iter()
                .map(|r| DynamicRouteConfig {
                    version_info: version.to_string(),
                    route_config: Some(pack_any(r.clone())),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }));
    }
    if wants(ResourceType::Endpoints) {
        configs.push(pack_any(EndpointsConfigDump {
            dynamic_endpoint_configs: config
                .endpoints
                .iter()
                .map(|e| DynamicEndpointConfig {
                    version_info: version.to_string(),
                    endpoint_config: Some(pack_any(e.clone())),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }));
    }
    ConfigDump { configs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};

    #[test]
    fn renders_protobuf_json_with_proto_names_and_any_types() {
        let cluster = Cluster {
            name: "BlackHoleCluster".into(),
            connect_timeout: Some(crate::envoy::seconds(10)),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            ..Default::default()
        };
        let dump = config_dump(
            &ProxyConfig {
                clusters: vec![cluster],
                ..Default::default()
            },
            "v1",
            &[ResourceType::Clusters],
        );
        let json = to_json(&dump).unwrap();
        let first = &json["configs"][0];
        assert_eq!(
            first["@type"],
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
        );
        let c = &first["dynamic_active_clusters"][0]["cluster"];
        assert_eq!(
            c["@type"],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
        assert_eq!(c["name"], "BlackHoleCluster");
        assert_eq!(c["connect_timeout"], "10s");
        // A set oneof member is printed even at its default value, as Envoy's admin does.
        assert_eq!(c["type"], "STATIC");
    }

    #[test]
    fn the_pool_holds_the_rendered_types_and_leaves_the_rest_of_the_set_out() {
        let pool = descriptor_pool();
        for name in RENDERED_TYPES {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
        // Imports come along: a field type from another file resolves.
        assert!(
            pool.get_message_by_name("envoy.config.core.v3.Metadata")
                .is_some()
        );
        let full = FileDescriptorSet::decode(ENVOY_DESCRIPTORS)
            .unwrap()
            .file
            .len();
        assert!(
            pool.files().len() * 2 < full,
            "{} of {full}",
            pool.files().len()
        );
    }

    #[test]
    fn an_any_of_a_type_outside_the_pool_fails_to_render() {
        // What makes the golden tests fail if the translator starts packing an unlisted type.
        use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz;
        let listener = envoy_types::pb::envoy::config::listener::v3::Listener {
            listener_filters: vec![envoy_types::pb::envoy::config::listener::v3::ListenerFilter {
                name: "ext_authz".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType::TypedConfig(
                        pack_any(ExtAuthz::default()),
                    ),
                ),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            to_json(&listener),
            Err(DumpError::Serialize { .. })
        ));
    }
}
