//! VHDS: a route configuration's virtual hosts served one by one over Envoy's virtual host
//! discovery service instead of inline.
//!
//! istiod sends every virtual host of a port inside its route configuration, so one
//! VirtualService edit resends the whole configuration (megabytes with thousands of hosts) to
//! every proxy. With VHDS the route configuration names a VHDS source and carries no virtual
//! hosts; Envoy subscribes to the configuration's name on a separate delta stream
//! (`VirtualHostDiscoveryService/DeltaVirtualHosts`; Envoy accepts only `DELTA_GRPC` there)
//! and is sent every virtual host whose resource name is `<route configuration>/<host>`. An
//! edit then sends only the virtual hosts that changed.
//!
//! Envoy keys the virtual hosts it received by their `name` and removes them by resource name,
//! so a virtual host's `name` is its resource name.
//!
//! Envoy 1.40 opens one VHDS stream per route configuration and names nothing on it (its
//! subscription matches resource-name prefixes, which it does not send), so each
//! configuration's source carries the configuration's name in a header of its own stream,
//! [`ROUTE_CONFIG_HEADER`], and the control plane answers that stream with those hosts.

use crate::names::XDS_CLUSTER;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, HeaderValue,
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service::EnvoyGrpc,
    grpc_service::TargetSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, Vhds, VirtualHost};

/// The gRPC metadata (a request header) naming the route configuration a VHDS stream is for.
pub const ROUTE_CONFIG_HEADER: &str = "meshpilot-vhds-route-configuration";

/// The VHDS resource name of `virtual_host` in `route_config`.
pub fn virtual_host_resource_name(route_config: &str, virtual_host: &str) -> String {
    format!("{route_config}/{virtual_host}")
}

/// The route configuration a VHDS resource name belongs to (everything before the last `/`).
pub fn route_config_of(resource_name: &str) -> Option<&str> {
    resource_name.rsplit_once('/').map(|(config, _)| config)
}

/// Splits a route configuration for VHDS: the configuration without virtual hosts, naming the
/// control plane's delta stream as their source, and its virtual hosts renamed
/// `<route configuration>/<name>`, in the configuration's order.
pub fn split_for_vhds(mut config: RouteConfiguration) -> (RouteConfiguration, Vec<VirtualHost>) {
    let mut virtual_hosts = std::mem::take(&mut config.virtual_hosts);
    for virtual_host in &mut virtual_hosts {
        virtual_host.name = virtual_host_resource_name(&config.name, &virtual_host.name);
    }
    config.vhds = Some(Vhds {
        config_source: Some(vhds_config_source(&config.name)),
    });
    (config, virtual_hosts)
}

/// The control plane's cluster, over a delta gRPC stream of its own (not ADS: Envoy 1.40
/// refuses any other API type for VHDS), named for `route_config`.
fn vhds_config_source(route_config: &str) -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
            api_type: ApiType::DeltaGrpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_services: vec![GrpcService {
                target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: XDS_CLUSTER.to_string(),
                    ..Default::default()
                })),
                initial_metadata: vec![HeaderValue {
                    key: ROUTE_CONFIG_HEADER.to_string(),
                    value: route_config.to_string(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            set_node_on_first_message_only: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: vec![name.into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_configuration_keeps_everything_but_its_hosts_and_names_the_vhds_stream() {
        let config = RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![host("b.ns.svc.cluster.local:80"), host("allow_any")],
            ignore_port_in_host_matching: true,
            ..Default::default()
        };
        let (stripped, hosts) = split_for_vhds(config);
        assert!(stripped.virtual_hosts.is_empty());
        assert!(stripped.ignore_port_in_host_matching);
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["80/b.ns.svc.cluster.local:80", "80/allow_any"]);
        assert_eq!(hosts[0].domains, ["b.ns.svc.cluster.local:80"]);
        let Some(ConfigSourceSpecifier::ApiConfigSource(api)) = stripped
            .vhds
            .and_then(|v| v.config_source)
            .and_then(|s| s.config_source_specifier)
        else {
            panic!("vhds names an API config source");
        };
        assert_eq!(api.api_type, ApiType::DeltaGrpc as i32);
        let Some(TargetSpecifier::EnvoyGrpc(grpc)) = &api.grpc_services[0].target_specifier else {
            panic!("envoy_grpc");
        };
        assert_eq!(grpc.cluster_name, "xds-grpc");
        let header = &api.grpc_services[0].initial_metadata[0];
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            (ROUTE_CONFIG_HEADER, "80")
        );
    }

    #[test]
    fn a_resource_name_belongs_to_the_configuration_before_its_last_slash() {
        let name = virtual_host_resource_name("reviews.default.svc.cluster.local:9080", "x:1");
        assert_eq!(
            route_config_of(&name),
            Some("reviews.default.svc.cluster.local:9080")
        );
        assert_eq!(route_config_of("80"), None);
    }
}
