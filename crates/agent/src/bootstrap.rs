//! The Envoy v3 bootstrap a sidecar starts from.
//!
//! Everything the control plane cannot send lives here: the node identity, the admin
//! interface, the `xds-grpc` cluster that reaches the control plane, ADS as the source of
//! listeners and clusters, and the static health (15021) and Prometheus (15090) listeners.

use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, circuit_breakers};
use envoy_types::pb::envoy::config::cluster::v3::{UpstreamConnectionOptions, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    self as core, Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource,
    DataSource, GrpcService, Node, RoutingPriority, SocketAddress, TcpKeepalive, TransportSocket,
    address, api_config_source::ApiType, config_source::ConfigSourceSpecifier, data_source,
    grpc_service, socket_address::PortSpecifier, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::{
    Duration, ListValue, Struct, UInt32Value, Value, value::Kind,
};
use envoy_types::util::pack_any;
use meshpilot_translate::dump::{DumpError, to_json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The static cluster that carries the ADS stream to the control plane.
pub const XDS_CLUSTER: &str = meshpilot_translate::names::XDS_CLUSTER;
/// The static cluster pointing at Envoy's own admin interface.
pub const ADMIN_CLUSTER: &str = "prometheus_stats";
pub const ADMIN_PORT: u16 = 15000;
pub const HEALTH_PORT: u16 = 15021;
pub const PROMETHEUS_PORT: u16 = 15090;
/// `node.cluster` when neither the flags, the metadata nor the node id name a workload.
pub const FALLBACK_SERVICE_CLUSTER: &str = "meshpilot";

/// Which flavour of the ADS protocol Envoy speaks to the control plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdsApi {
    /// State of the world (`GRPC`): every response carries the full set of a type.
    Sotw,
    /// Incremental (`DELTA_GRPC`), Istio's default since 1.22.
    #[default]
    Delta,
}

/// What `meshpilot bootstrap` is told about the sidecar.
#[derive(Clone, Debug, Default)]
pub struct BootstrapConfig {
    /// `node.id`, e.g. `sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local`.
    pub node_id: String,
    /// The control plane, `HOST:PORT` (`[v6]:PORT` for an IPv6 literal).
    pub xds_address: String,
    /// PEM bundle that verifies the control plane's certificate; `None` means plaintext.
    pub tls_root_cert: Option<PathBuf>,
    pub xds_api: XdsApi,
    /// `node.metadata` entries in the order given; a later duplicate key wins.
    pub metadata: Vec<(String, String)>,
    /// `node.cluster`; derived from the metadata and node id when absent.
    pub cluster: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the node id must not be empty")]
    EmptyNodeId,
    #[error(
        "invalid xDS address {0:?}: expected HOST:PORT with a port from 1 to 65535, \
         e.g. istiod.istio-system.svc:15010 or [fd00::1]:15010"
    )]
    InvalidXdsAddress(String),
    #[error("invalid metadata {0:?}: expected KEY=VALUE with a non-empty KEY")]
    InvalidMetadata(String),
    #[error("cannot make the root certificate path {path} absolute: {source}")]
    RootCertPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Render(#[from] DumpError),
}

/// Splits one `--metadata KEY=VALUE` argument at its first `=`.
pub fn parse_metadata(arg: &str) -> Result<(String, String), BootstrapError> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(BootstrapError::InvalidMetadata(arg.to_string())),
    }
}

/// Builds the bootstrap proto for one sidecar.
pub fn build_bootstrap(config: &BootstrapConfig) -> Result<Bootstrap, BootstrapError> {
    if config.node_id.trim().is_empty() {
        return Err(BootstrapError::EmptyNodeId);
    }
    let (host, port) = parse_host_port(&config.xds_address)
        .ok_or_else(|| BootstrapError::InvalidXdsAddress(config.xds_address.clone()))?;
    let root_cert = config
        .tls_root_cert
        .as_deref()
        .map(|path| {
            std::path::absolute(path).map_err(|source| BootstrapError::RootCertPath {
                path: path.to_path_buf(),
                source,
            })
        })
        .transpose()?;
    let metadata = build_node_metadata(&config.metadata);
    let cluster = config
        .cluster
        .clone()
        .unwrap_or_else(|| derive_service_cluster(&config.node_id, &metadata));
    Ok(Bootstrap {
        node: Some(Node {
            id: config.node_id.clone(),
            cluster,
            metadata: Some(metadata),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(socket_address("127.0.0.1", ADMIN_PORT)),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners: vec![build_health_listener(), build_prometheus_listener()],
            clusters: vec![
                build_xds_cluster(&host, port, root_cert.as_deref()),
                build_admin_cluster(),
            ],
            ..Default::default()
        }),
        dynamic_resources: Some(bootstrap::DynamicResources {
            lds_config: Some(ads_config_source()),
            cds_config: Some(ads_config_source()),
            ads_config: Some(build_ads_config(config.xds_api)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The bootstrap as pretty-printed protobuf JSON, ending in a newline.
pub fn render_bootstrap(config: &BootstrapConfig) -> Result<String, BootstrapError> {
    let json = to_json(&build_bootstrap(config)?)?;
    let mut text = serde_json::to_string_pretty(&json).expect("a JSON value always serialises");
    text.push('\n');
    Ok(text)
}

/// `HOST:PORT` or `[IPv6]:PORT`; the host comes back without brackets.
fn parse_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = match address.strip_prefix('[') {
        Some(rest) => {
            let (host, port) = rest.split_once("]:")?;
            host.parse::<std::net::Ipv6Addr>().ok()?;
            (host, port)
        }
        None => {
            let (host, port) = address.rsplit_once(':')?;
            // A bare IPv6 literal is ambiguous: its last group would read as the port.
            if host.contains(':') {
                return None;
            }
            (host, port)
        }
    };
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return None;
    }
    Some((host.to_string(), port))
}

/// Values are strings, except that a value holding a JSON object (`LABELS={"app":"x"}`)
/// becomes a Struct, as pilot-agent sends `LABELS`.
fn build_node_metadata(entries: &[(String, String)]) -> Struct {
    let mut metadata = Struct::default();
    for (key, raw) in entries {
        let value = match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(object @ serde_json::Value::Object(_)) => json_to_value(object),
            _ => string_value(raw),
        };
        metadata.fields.insert(key.clone(), value);
    }
    metadata
}

fn json_to_value(json: serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn metadata_str<'a>(metadata: &'a Struct, key: &str) -> Option<&'a str> {
    match metadata.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// `<workload>.<namespace>`, as pilot-agent names a sidecar's service cluster. The workload
/// is the `app` (or `app.kubernetes.io/name`) label, else `WORKLOAD_NAME`, else the pod name
/// without a Deployment's ReplicaSet hash and pod suffix. Both parts come from the metadata
/// first and the node id (`sidecar~IP~pod.ns~ns.svc.cluster.local`) second.
fn derive_service_cluster(node_id: &str, metadata: &Struct) -> String {
    let parts: Vec<&str> = node_id.split('~').collect();
    let proxy_id = (parts.len() == 4).then(|| parts[2]);
    let namespace = metadata_str(metadata, "NAMESPACE")
        .or_else(|| {
            (parts.len() == 4)
                .then(|| parts[3].split('.').next())
                .flatten()
        })
        .or_else(|| {
            proxy_id
                .and_then(|id| id.rsplit_once('.'))
                .map(|(_, ns)| ns)
        })
        .filter(|ns| !ns.is_empty());
    let label = |name: &str| match metadata.fields.get("LABELS")?.kind.as_ref()? {
        Kind::StructValue(labels) => metadata_str(labels, name),
        _ => None,
    };
    let pod_name = metadata_str(metadata, "NAME")
        .or_else(|| metadata_str(metadata, "POD_NAME"))
        .or_else(|| proxy_id.map(|id| id.rsplit_once('.').map_or(id, |(pod, _)| pod)));
    let workload = label("app")
        .or_else(|| label("app.kubernetes.io/name"))
        .map(str::to_string)
        .or_else(|| metadata_str(metadata, "WORKLOAD_NAME").map(str::to_string))
        .or_else(|| pod_name.filter(|p| !p.is_empty()).map(pod_name_prefix));
    match (workload, namespace) {
        (Some(workload), Some(namespace)) => format!("{workload}.{namespace}"),
        _ => FALLBACK_SERVICE_CLUSTER.to_string(),
    }
}

/// `productpage-v1-6b7f6dc5f-ccccc` -> `productpage-v1`; names with fewer than three
/// segments are not Deployment-shaped and stay whole.
fn pod_name_prefix(pod: &str) -> String {
    let segments: Vec<&str> = pod.split('-').collect();
    if segments.len() >= 3 {
        segments[..segments.len() - 2].join("-")
    } else {
        pod.to_string()
    }
}

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        initial_fetch_timeout: Some(seconds(0)),
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn build_ads_config(api: XdsApi) -> ApiConfigSource {
    let api_type = match api {
        XdsApi::Sotw => ApiType::Grpc,
        XdsApi::Delta => ApiType::DeltaGrpc,
    };
    ApiConfigSource {
        api_type: api_type as i32,
        transport_api_version: ApiVersion::V3 as i32,
        grpc_services: vec![GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: XDS_CLUSTER.to_string(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        // The control plane learns the node from the first request of each stream only.
        set_node_on_first_message_only: true,
        ..Default::default()
    }
}

/// HTTP/2 (gRPC) to the control plane: STATIC for an IP, STRICT_DNS for a name; TLS verified
/// against `root_cert` when given.
fn build_xds_cluster(host: &str, port: u16, root_cert: Option<&Path>) -> Cluster {
    let host_ip = host.parse::<IpAddr>().ok();
    // A name resolves V4 first, V6 when it has no A record.
    let (discovery, lookup_family) = match host_ip {
        Some(_) => (cluster::DiscoveryType::Static, None),
        None => (
            cluster::DiscoveryType::StrictDns,
            Some(cluster::DnsLookupFamily::V4Preferred),
        ),
    };
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    let generous = |priority: RoutingPriority| circuit_breakers::Thresholds {
        priority: priority as i32,
        max_connections: Some(u32_value(100_000)),
        max_pending_requests: Some(u32_value(100_000)),
        max_requests: Some(u32_value(100_000)),
        max_retries: Some(u32_value(100_000)),
        ..Default::default()
    };
    Cluster {
        name: XDS_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        dns_lookup_family: lookup_family.map_or(0, |family| family as i32),
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(single_endpoint_assignment(XDS_CLUSTER, host, port)),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(http2),
        )]
        .into_iter()
        .collect(),
        upstream_connection_options: Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(TcpKeepalive {
                keepalive_time: Some(u32_value(300)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![
                generous(RoutingPriority::Default),
                generous(RoutingPriority::High),
            ],
            ..Default::default()
        }),
        transport_socket: root_cert.map(|ca| build_tls_socket(host, host_ip.is_none(), ca)),
        ..Default::default()
    }
}

/// Verifies the control plane against `ca`, offering ALPN h2; SNI only for DNS names, since
/// SNI may not carry an IP literal.
fn build_tls_socket(host: &str, send_sni: bool, ca: &Path) -> TransportSocket {
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".to_string()],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(DataSource {
                            specifier: Some(data_source::Specifier::Filename(
                                ca.display().to_string(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        sni: if send_sni {
            host.to_string()
        } else {
            String::new()
        },
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(tls))),
    }
}

/// Envoy's own admin interface, reached by the 15021 and 15090 listeners.
fn build_admin_cluster() -> Cluster {
    Cluster {
        name: ADMIN_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(single_endpoint_assignment(
            ADMIN_CLUSTER,
            "127.0.0.1",
            ADMIN_PORT,
        )),
        ..Default::default()
    }
}

/// `0.0.0.0_15021`: `GET /healthz/ready` becomes admin `/ready`, which answers 200 once Envoy
/// is initialised (there is no pilot-agent to ask). An exact path match keeps the rest of the
/// admin interface off this pod-wide port.
fn build_health_listener() -> Listener {
    build_static_http_listener(
        HEALTH_PORT,
        "agent",
        Route {
            r#match: Some(exact_path("/healthz/ready")),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    ADMIN_CLUSTER.to_string(),
                )),
                prefix_rewrite: "/ready".to_string(),
                ..Default::default()
            })),
            ..Default::default()
        },
    )
}

/// `0.0.0.0_15090`: `/stats/prometheus` straight to the admin interface.
fn build_prometheus_listener() -> Listener {
    build_static_http_listener(
        PROMETHEUS_PORT,
        "stats",
        Route {
            r#match: Some(exact_path("/stats/prometheus")),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    ADMIN_CLUSTER.to_string(),
                )),
                ..Default::default()
            })),
            ..Default::default()
        },
    )
}

fn exact_path(path: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Path(path.to_string())),
        ..Default::default()
    }
}

fn build_static_http_listener(port: u16, stat_prefix: &str, route: Route) -> Listener {
    let name = format!("0.0.0.0_{port}");
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: "backend".to_string(),
                    domains: vec!["*".to_string()],
                    routes: vec![route],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name,
        address: Some(socket_address("0.0.0.0", port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn single_endpoint_assignment(cluster: &str, host: &str, port: u16) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(host, port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn socket_address(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: core::socket_address::Protocol::Tcp as i32,
            address: host.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn seconds(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str =
        "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local";

    fn mk_config(xds_address: &str) -> BootstrapConfig {
        BootstrapConfig {
            node_id: NODE.to_string(),
            xds_address: xds_address.to_string(),
            ..Default::default()
        }
    }

    fn rendered(config: &BootstrapConfig) -> serde_json::Value {
        serde_json::from_str(&render_bootstrap(config).unwrap()).unwrap()
    }

    fn cluster<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        json["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    #[test]
    fn node_admin_and_dynamic_resources() {
        let json = rendered(&mk_config("10.96.0.10:15010"));
        assert_eq!(json["node"]["id"], NODE);
        assert_eq!(json["node"]["cluster"], "productpage-v1.default");
        let admin = &json["admin"]["address"]["socket_address"];
        assert_eq!(admin["address"], "127.0.0.1");
        assert_eq!(admin["port_value"], 15000);
        let ads_source = serde_json::json!({
            "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"
        });
        assert_eq!(json["dynamic_resources"]["lds_config"], ads_source);
        assert_eq!(json["dynamic_resources"]["cds_config"], ads_source);
        let ads = &json["dynamic_resources"]["ads_config"];
        assert_eq!(ads["api_type"], "DELTA_GRPC");
        assert_eq!(ads["transport_api_version"], "V3");
        assert_eq!(ads["set_node_on_first_message_only"], true);
        assert_eq!(
            ads["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            "xds-grpc"
        );
    }

    #[test]
    fn sotw_uses_grpc_api_type() {
        let mut config = mk_config("10.96.0.10:15010");
        config.xds_api = XdsApi::Sotw;
        let json = rendered(&config);
        assert_eq!(json["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
    }

    #[test]
    fn xds_cluster_for_an_ip_is_static_plaintext_http2() {
        let json = rendered(&mk_config("10.96.0.10:15010"));
        let xds = cluster(&json, "xds-grpc");
        assert_eq!(xds["type"], "STATIC");
        assert!(xds.get("dns_lookup_family").is_none());
        assert!(xds.get("transport_socket").is_none());
        assert_eq!(xds["connect_timeout"], "1s");
        let endpoint = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        assert_eq!(
            endpoint["address"]["socket_address"]["address"],
            "10.96.0.10"
        );
        assert_eq!(endpoint["address"]["socket_address"]["port_value"], 15010);
        let options = &xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(options["explicit_http_config"]["http2_protocol_options"].is_object());
        assert_eq!(
            xds["upstream_connection_options"]["tcp_keepalive"]["keepalive_time"],
            300
        );
        let thresholds = xds["circuit_breakers"]["thresholds"].as_array().unwrap();
        assert_eq!(thresholds.len(), 2);
        for key in [
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
        ] {
            assert_eq!(thresholds[0][key], 100_000, "{key}");
        }
    }

    #[test]
    fn xds_cluster_for_a_name_is_strict_dns_with_tls_and_sni() {
        let mut config = mk_config("istiod.istio-system.svc:15012");
        config.tls_root_cert = Some(PathBuf::from("/etc/certs/root-cert.pem"));
        let json = rendered(&config);
        let xds = cluster(&json, "xds-grpc");
        assert_eq!(xds["type"], "STRICT_DNS");
        assert_eq!(xds["dns_lookup_family"], "V4_PREFERRED");
        let socket = &xds["transport_socket"];
        assert_eq!(socket["name"], "envoy.transport_sockets.tls");
        let tls = &socket["typed_config"];
        assert_eq!(
            tls["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        assert_eq!(tls["sni"], "istiod.istio-system.svc");
        assert_eq!(tls["common_tls_context"]["alpn_protocols"][0], "h2");
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/etc/certs/root-cert.pem"
        );
    }

    #[test]
    fn tls_to_an_ip_sends_no_sni_and_relative_cert_paths_become_absolute() {
        let mut config = mk_config("[fd00::10]:15012");
        config.tls_root_cert = Some(PathBuf::from("certs/root.pem"));
        let json = rendered(&config);
        let xds = cluster(&json, "xds-grpc");
        assert_eq!(xds["type"], "STATIC");
        let endpoint = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        assert_eq!(endpoint["address"]["socket_address"]["address"], "fd00::10");
        let tls = &xds["transport_socket"]["typed_config"];
        assert!(tls.get("sni").is_none());
        let ca = tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"]
            .as_str()
            .unwrap();
        assert!(Path::new(ca).is_absolute() && ca.ends_with("certs/root.pem"));
    }

    #[test]
    fn static_listeners_route_health_and_stats_to_admin() {
        let json = rendered(&mk_config("127.0.0.1:15010"));
        let listeners = json["static_resources"]["listeners"].as_array().unwrap();
        let names: Vec<&str> = listeners
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["0.0.0.0_15021", "0.0.0.0_15090"]);
        let route = |i: usize| {
            let hcm = &listeners[i]["filter_chains"][0]["filters"][0]["typed_config"];
            assert_eq!(hcm["http_filters"][0]["name"], "envoy.filters.http.router");
            hcm["route_config"]["virtual_hosts"][0]["routes"][0].clone()
        };
        let health = route(0);
        assert_eq!(health["match"]["path"], "/healthz/ready");
        assert_eq!(health["route"]["cluster"], "prometheus_stats");
        assert_eq!(health["route"]["prefix_rewrite"], "/ready");
        let stats = route(1);
        assert_eq!(stats["match"]["path"], "/stats/prometheus");
        assert_eq!(stats["route"]["cluster"], "prometheus_stats");
        let admin = cluster(&json, "prometheus_stats");
        assert_eq!(admin["type"], "STATIC");
        let endpoint = &admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        assert_eq!(endpoint["address"]["socket_address"]["port_value"], 15000);
    }

    #[test]
    fn metadata_strings_and_json_objects() {
        let mut config = mk_config("10.96.0.10:15010");
        config.metadata = vec![
            parse_metadata("NAMESPACE=shop").unwrap(),
            parse_metadata(r#"LABELS={"app":"cart","version":"v2"}"#).unwrap(),
            parse_metadata("INSTANCE_IPS=10.244.1.20").unwrap(),
            parse_metadata("EMPTY=").unwrap(),
            parse_metadata("LIST=[1,2]").unwrap(),
            parse_metadata("EQ=a=b").unwrap(),
        ];
        let json = rendered(&config);
        let metadata = &json["node"]["metadata"];
        assert_eq!(metadata["NAMESPACE"], "shop");
        assert_eq!(metadata["LABELS"]["app"], "cart");
        assert_eq!(metadata["INSTANCE_IPS"], "10.244.1.20");
        assert_eq!(metadata["EMPTY"], "");
        assert_eq!(metadata["LIST"], "[1,2]");
        assert_eq!(metadata["EQ"], "a=b");
        // The app label and NAMESPACE win over the node id.
        assert_eq!(json["node"]["cluster"], "cart.shop");
    }

    #[test]
    fn explicit_cluster_wins() {
        let mut config = mk_config("10.96.0.10:15010");
        config.cluster = Some("reviews.default".to_string());
        assert_eq!(rendered(&config)["node"]["cluster"], "reviews.default");
    }

    #[test]
    fn service_cluster_derivation() {
        let meta = |entries: &[(&str, &str)]| {
            build_node_metadata(
                &entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let none = meta(&[]);
        assert_eq!(
            derive_service_cluster(NODE, &none),
            "productpage-v1.default"
        );
        assert_eq!(
            derive_service_cluster("sidecar~10.0.0.1~web-0.shop~shop.svc.cluster.local", &none),
            "web-0.shop"
        );
        assert_eq!(
            derive_service_cluster(NODE, &meta(&[("WORKLOAD_NAME", "pp")])),
            "pp.default"
        );
        assert_eq!(
            derive_service_cluster(
                NODE,
                &meta(&[("LABELS", r#"{"app.kubernetes.io/name":"front"}"#)])
            ),
            "front.default"
        );
        assert_eq!(derive_service_cluster("test-node", &none), "meshpilot");
        assert_eq!(
            derive_service_cluster("test-node", &meta(&[("NAMESPACE", "ns")])),
            "meshpilot"
        );
        assert_eq!(
            derive_service_cluster(
                "test-node",
                &meta(&[("NAMESPACE", "ns"), ("NAME", "api-5d8f7c9b6-x2x9z")])
            ),
            "api.ns"
        );
    }

    #[test]
    fn rejects_bad_addresses_metadata_and_node_ids() {
        for bad in [
            "istiod",
            "istiod:",
            ":15010",
            "istiod:0",
            "istiod:65536",
            "istiod:port",
            "fd00::1:15010",
            "[fd00::1]",
            "[not-v6]:15010",
        ] {
            let err = build_bootstrap(&mk_config(bad)).unwrap_err();
            assert!(
                matches!(err, BootstrapError::InvalidXdsAddress(_)),
                "{bad}: {err}"
            );
        }
        assert!(parse_metadata("NOVALUE").is_err());
        assert!(parse_metadata("=x").is_err());
        let mut config = mk_config("10.0.0.1:15010");
        config.node_id = " ".to_string();
        assert!(matches!(
            build_bootstrap(&config),
            Err(BootstrapError::EmptyNodeId)
        ));
    }
}
