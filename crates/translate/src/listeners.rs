//! LDS: the per-port outbound listeners, then virtualOutbound and virtualInbound.
//!
//! Outbound traffic is captured on 15001 and handed by Envoy to the `bind_to_port: false`
//! listener matching the original destination (`ClusterIP:port`, then `0.0.0.0:port`); inbound
//! traffic is captured on 15006 and dispatched by filter chain on the destination port.

use crate::envoy::{ads_config_source, any, bool_value, seconds, socket_address, u32_value};
use crate::names::{self, Direction};
use crate::targets::{self, ServiceTarget};
use envoy_types::pb::envoy::config::core::v3::{Address, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    AdditionalAddress, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
    ListenerFilterChainMatchPredicate, filter, listener_filter,
    listener_filter_chain_match_predicate::{MatchSet, Rule},
};
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::FilterConfig as GrpcStatsConfig;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, RequestIdExtension,
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, PathWithEscapedSlashesAction, RouteSpecifier,
        SetCurrentClientCertDetails, UpgradeConfig,
    },
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy,
    tcp_proxy::{ClusterSpecifier, WeightedCluster, weighted_cluster::ClusterWeight},
};
use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::Any;
use meshpilot_api::{Destination, L4MatchAttributes, TcpRoute};
use meshpilot_model::{
    InterceptionMode, Protocol, Proxy, Service, ServicePort, Snapshot, labels_match,
};
use prost::{Message, Name};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
const RAW_BUFFER: &str = "raw_buffer";
/// ALPN values the HTTP inspector reports for plaintext HTTP/1.1 and HTTP/2.
const HTTP_ALPNS: [&str; 2] = ["http/1.1", "h2c"];
const WILDCARD: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

const PASSTHROUGH_FILTER_CHAIN: &str = "PassthroughFilterChain";
const VIRTUAL_OUTBOUND_BLACKHOLE: &str = "virtualOutbound-blackhole";
const VIRTUAL_OUTBOUND_CATCHALL_TCP: &str = "virtualOutbound-catchall-tcp";
const VIRTUAL_INBOUND_BLACKHOLE: &str = "virtualInbound-blackhole";
const VIRTUAL_INBOUND_CATCHALL_HTTP: &str = "virtualInbound-catchall-http";

/// Every listener the proxy gets: per-port outbound listeners sorted by port then name, then
/// `virtualOutbound` and `virtualInbound` unless the proxy does no traffic capture.
pub fn build_listeners(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Listener> {
    let mut listeners = build_outbound_listeners(snapshot, proxy);
    if proxy.interception_mode != InterceptionMode::None {
        listeners.push(build_virtual_outbound(proxy));
        listeners.push(build_virtual_inbound(snapshot, proxy));
    }
    listeners
}

/// RDS names the listeners reference, in first-seen order.
pub(crate) fn route_names(listeners: &[Listener]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let chains = listeners.iter().flat_map(|l| {
        l.filter_chains
            .iter()
            .chain(l.default_filter_chain.as_ref())
    });
    for chain in chains {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(config)) = &f.config_type else {
                continue;
            };
            if config.type_url != HttpConnectionManager::type_url() {
                continue;
            }
            let Ok(hcm) = HttpConnectionManager::decode(config.value.as_slice()) else {
                continue;
            };
            if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                && seen.insert(rds.route_config_name.clone())
            {
                out.push(rds.route_config_name);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Outbound

fn build_outbound_listeners(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Listener> {
    // Keyed by (port, name) for the output order; the first service to claim a key wins.
    let mut by_key: BTreeMap<(u16, String), Listener> = BTreeMap::new();
    for service in targets::visible_services(snapshot, proxy) {
        for port in &service.ports {
            if port.protocol.is_unsupported_transport() {
                continue;
            }
            if port.protocol.is_http() {
                // Envoy's own listeners live on these ports of the wildcard address.
                if names::RESERVED_PORTS.contains(&port.port) {
                    continue;
                }
                let name = names::wildcard_listener_name(port.port);
                by_key
                    .entry((port.port, name.clone()))
                    .or_insert_with(|| build_http_wildcard_listener(name, port.port));
                continue;
            }
            for ips in outbound_binds(snapshot, proxy, service, port) {
                let name = names::ip_listener_name(&ips[0], port.port);
                if let Entry::Vacant(slot) = by_key.entry((port.port, name.clone())) {
                    slot.insert(build_service_listener(
                        snapshot, proxy, service, port, &ips, name,
                    ));
                }
            }
        }
    }
    by_key.into_values().collect()
}

/// The addresses a TCP or sniffed port listens on: the ClusterIPs, or for a headless service
/// one address per ready endpoint (clients reach those pods directly). The proxy's own IP is
/// skipped: its traffic to itself never leaves the pod, and the inbound side owns that port.
fn outbound_binds(
    snapshot: &Snapshot,
    proxy: &Proxy,
    service: &Service,
    port: &ServicePort,
) -> Vec<Vec<IpAddr>> {
    if !service.headless && !service.cluster_ips.is_empty() {
        return vec![service.cluster_ips.clone()];
    }
    let mut seen = HashSet::new();
    snapshot
        .endpoints(&service.hostname)
        .iter()
        .filter(|e| e.ready && e.port_name == port.name && !proxy.ips.contains(&e.address))
        .filter(|e| seen.insert(e.address))
        .map(|e| vec![e.address])
        .collect()
}

/// `0.0.0.0_<port>`: shared by every HTTP service on the port; routing by Host happens in RDS.
fn build_http_wildcard_listener(name: String, port: u16) -> Listener {
    let hcm = outbound_hcm(&name, port.to_string());
    let mut listener = base_listener(
        name,
        socket_address(&WILDCARD, port),
        TrafficDirection::Outbound,
    );
    listener.bind_to_port = Some(bool_value(false));
    listener.filter_chains = vec![FilterChain {
        filter_chain_match: Some(http_match(None)),
        filters: vec![hcm_filter(hcm)],
        ..Default::default()
    }];
    listener.default_filter_chain = Some(FilterChain {
        name: PASSTHROUGH_FILTER_CHAIN.to_string(),
        filters: vec![tcp_proxy_filter(&TcpTarget::cluster(
            names::PASSTHROUGH_CLUSTER,
        ))],
        ..Default::default()
    });
    listener.listener_filters = vec![http_inspector(None)];
    listener
}

/// `<ip>_<port>` for a TCP port (one tcp_proxy chain) or a sniffed port (an HTTP chain routed
/// by `<fqdn>:<port>`, then the TCP chain for everything else).
fn build_service_listener(
    snapshot: &Snapshot,
    proxy: &Proxy,
    service: &Service,
    port: &ServicePort,
    ips: &[IpAddr],
    name: String,
) -> Listener {
    let target = tcp_target(snapshot, proxy, service, port.port, ips[0]);
    let tcp_chain = FilterChain {
        filters: vec![tcp_proxy_filter(&target)],
        ..Default::default()
    };
    let mut listener = base_listener(
        name.clone(),
        socket_address(&ips[0], port.port),
        TrafficDirection::Outbound,
    );
    listener.additional_addresses = ips[1..]
        .iter()
        .map(|ip| AdditionalAddress {
            address: Some(socket_address(ip, port.port)),
            ..Default::default()
        })
        .collect();
    listener.bind_to_port = Some(bool_value(false));
    if port.protocol == Protocol::Auto {
        let hcm = outbound_hcm(
            &name,
            names::virtual_host_name(&service.hostname, port.port),
        );
        let http_chain = FilterChain {
            filter_chain_match: Some(http_match(None)),
            filters: vec![hcm_filter(hcm)],
            ..Default::default()
        };
        listener.filter_chains = vec![http_chain, tcp_chain];
        listener.listener_filters = vec![http_inspector(None)];
    } else {
        listener.filter_chains = vec![tcp_chain];
    }
    listener
}

/// Where a tcp_proxy sends its connections.
#[derive(Clone, Debug, PartialEq)]
enum TcpTarget {
    Cluster(String),
    Weighted {
        stat_prefix: String,
        clusters: Vec<(String, u32)>,
    },
}

impl TcpTarget {
    fn cluster(name: &str) -> Self {
        TcpTarget::Cluster(name.to_string())
    }
}

/// The service's default cluster, unless a VirtualService `tcp` rule for the host applies to
/// this proxy and port; the first applicable rule (VSs oldest first) wins.
fn tcp_target(
    snapshot: &Snapshot,
    proxy: &Proxy,
    service: &Service,
    port: u16,
    listener_ip: IpAddr,
) -> TcpTarget {
    let default = || {
        TcpTarget::Cluster(names::cluster_name(
            Direction::Outbound,
            port,
            "",
            &service.hostname,
        ))
    };
    let rule = snapshot
        .virtual_services()
        .iter()
        .filter(|vs| vs.applies_to_mesh() && vs.exported_to(&proxy.namespace))
        .filter(|vs| vs.spec.hosts.iter().any(|h| *h == *service.hostname))
        .flat_map(|vs| vs.spec.tcp.iter().map(move |rule| (vs, rule)))
        .find(|(_, rule)| tcp_rule_applies(rule, proxy, port, listener_ip));
    let Some((vs, rule)) = rule else {
        return default();
    };
    if let [only] = rule.route.as_slice() {
        return TcpTarget::Cluster(destination_cluster(snapshot, &only.destination, port));
    }
    let clusters: Vec<(String, u32)> = rule
        .route
        .iter()
        .filter_map(|r| {
            let weight = u32::try_from(r.weight.unwrap_or(0))
                .ok()
                .filter(|w| *w > 0)?;
            Some((destination_cluster(snapshot, &r.destination, port), weight))
        })
        .collect();
    if clusters.is_empty() {
        return default();
    }
    TcpTarget::Weighted {
        // Istio names weighted TCP stats after the VirtualService.
        stat_prefix: format!("{}.{}", vs.meta.name, vs.meta.namespace),
        clusters,
    }
}

fn tcp_rule_applies(rule: &TcpRoute, proxy: &Proxy, port: u16, listener_ip: IpAddr) -> bool {
    !rule.route.is_empty()
        && (rule.matches.is_empty()
            || rule
                .matches
                .iter()
                .any(|m| l4_match_applies(m, proxy, port, listener_ip)))
}

fn l4_match_applies(m: &L4MatchAttributes, proxy: &Proxy, port: u16, listener_ip: IpAddr) -> bool {
    m.port.is_none_or(|p| p == u32::from(port))
        && labels_match(&m.source_labels, &proxy.labels)
        && m.source_namespace
            .as_deref()
            .is_none_or(|ns| *ns == *proxy.namespace)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
        && (m.destination_subnets.is_empty()
            || m.destination_subnets
                .iter()
                .any(|cidr| subnet_contains(cidr, listener_ip)))
}

/// Whether `cidr` (`10.0.0.0/8`, or a bare address) contains `ip`.
fn subnet_contains(cidr: &str, ip: IpAddr) -> bool {
    let (addr, len) = match cidr.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => prefix_eq(
            n.to_bits().into(),
            i.to_bits().into(),
            len.unwrap_or(32),
            32,
        ),
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            prefix_eq(n.to_bits(), i.to_bits(), len.unwrap_or(128), 128)
        }
        _ => false,
    }
}

fn prefix_eq(net: u128, ip: u128, len: u32, bits: u32) -> bool {
    if len > bits {
        return false;
    }
    let shift = bits - len;
    shift >= bits || (net >> shift) == (ip >> shift)
}

/// `outbound|<port>|<subset>|<host>`; the port is the destination's, else the destination
/// service's only port, else the listener's.
fn destination_cluster(
    snapshot: &Snapshot,
    destination: &Destination,
    listener_port: u16,
) -> String {
    let port = destination
        .port
        .as_ref()
        .and_then(|p| u16::try_from(p.number).ok())
        .or_else(|| {
            match snapshot
                .service(&destination.host)
                .map(|s| s.ports.as_slice())
            {
                Some([only]) => Some(only.port),
                _ => None,
            }
        })
        .unwrap_or(listener_port);
    let subset = destination.subset.as_deref().unwrap_or("");
    names::cluster_name(Direction::Outbound, port, subset, &destination.host)
}

/// The sidecar outbound HCM, routes from RDS `route_name`.
fn outbound_hcm(listener_name: &str, route_name: String) -> HttpConnectionManager {
    base_hcm(
        format!("outbound_{listener_name};"),
        RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_name,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Virtual listeners

fn build_virtual_outbound(proxy: &Proxy) -> Listener {
    let mut listener = base_listener(
        names::VIRTUAL_OUTBOUND_LISTENER.to_string(),
        socket_address(&WILDCARD, names::OUTBOUND_CAPTURE_PORT),
        TrafficDirection::Outbound,
    );
    listener.use_original_dst = Some(bool_value(true));
    if proxy.interception_mode == InterceptionMode::Tproxy {
        listener.transparent = Some(bool_value(true));
    }
    listener.filter_chains = vec![
        // Traffic addressed to 15001 itself would loop forever.
        FilterChain {
            name: VIRTUAL_OUTBOUND_BLACKHOLE.to_string(),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(u32_value(u32::from(names::OUTBOUND_CAPTURE_PORT))),
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(&TcpTarget::cluster(
                names::BLACK_HOLE_CLUSTER,
            ))],
            ..Default::default()
        },
        FilterChain {
            name: VIRTUAL_OUTBOUND_CATCHALL_TCP.to_string(),
            filters: vec![tcp_proxy_filter(&TcpTarget::cluster(
                names::PASSTHROUGH_CLUSTER,
            ))],
            ..Default::default()
        },
    ];
    listener
}

fn build_virtual_inbound(snapshot: &Snapshot, proxy: &Proxy) -> Listener {
    let mut chains = vec![
        // Traffic addressed to 15006 itself would loop forever.
        FilterChain {
            name: VIRTUAL_INBOUND_BLACKHOLE.to_string(),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(u32_value(u32::from(names::INBOUND_CAPTURE_PORT))),
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(&TcpTarget::cluster(
                names::BLACK_HOLE_CLUSTER,
            ))],
            ..Default::default()
        },
        FilterChain {
            name: VIRTUAL_INBOUND_CATCHALL_HTTP.to_string(),
            filter_chain_match: Some(http_match(None)),
            filters: vec![hcm_filter(inbound_hcm(
                format!("{};", names::INBOUND_PASSTHROUGH_CLUSTER),
                names::INBOUND_PASSTHROUGH_CLUSTER,
                0,
                // Istio keeps this odd operation name for compatibility.
                ":0/*".to_string(),
                Protocol::Auto,
            ))],
            ..Default::default()
        },
        FilterChain {
            name: names::VIRTUAL_INBOUND_LISTENER.to_string(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: RAW_BUFFER.to_string(),
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(&TcpTarget::cluster(
                names::INBOUND_PASSTHROUGH_CLUSTER,
            ))],
            ..Default::default()
        },
    ];
    let mut service_targets = targets::service_targets(snapshot, proxy);
    service_targets.sort_by_key(|t| t.target_port);
    for target in &service_targets {
        // A service targeting one of Envoy's own ports cannot be served through capture.
        if names::RESERVED_PORTS.contains(&target.target_port) {
            continue;
        }
        chains.extend(inbound_chains(target));
    }

    let mut listener = base_listener(
        names::VIRTUAL_INBOUND_LISTENER.to_string(),
        socket_address(&WILDCARD, names::INBOUND_CAPTURE_PORT),
        TrafficDirection::Inbound,
    );
    if proxy.interception_mode == InterceptionMode::Tproxy {
        listener.transparent = Some(bool_value(true));
    }
    let inspector_off = ports_without_http_chains(&chains);
    listener.listener_filters = vec![
        ListenerFilter {
            name: ORIGINAL_DST.to_string(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                OriginalDst {},
            ))),
            ..Default::default()
        },
        http_inspector(exclude_ports(&inspector_off)),
    ];
    listener.filter_chains = chains;
    listener
}

/// The chains for one service target port: HTTP, TCP, or (sniffed) HTTP then TCP.
fn inbound_chains(target: &ServiceTarget) -> Vec<FilterChain> {
    let port = target.target_port;
    let cluster = names::cluster_name(Direction::Inbound, port, "", "");
    let chain_name = names::wildcard_listener_name(port);
    let protocol = target.port.protocol;
    let http_chain = |alpn: bool| FilterChain {
        name: chain_name.clone(),
        filter_chain_match: Some(if alpn {
            http_match(Some(port))
        } else {
            raw_buffer_match(port)
        }),
        filters: vec![hcm_filter(inbound_hcm(
            format!("inbound_{chain_name};"),
            &cluster,
            target.port.port,
            format!("{}:{}/*", target.service.hostname, target.port.port),
            protocol,
        ))],
        ..Default::default()
    };
    let tcp_chain = || FilterChain {
        name: chain_name.clone(),
        filter_chain_match: Some(raw_buffer_match(port)),
        filters: vec![tcp_proxy_filter(&TcpTarget::Cluster(cluster.clone()))],
        ..Default::default()
    };
    if protocol.is_http() {
        vec![http_chain(false)]
    } else if protocol == Protocol::Auto {
        vec![http_chain(true), tcp_chain()]
    } else {
        vec![tcp_chain()]
    }
}

/// The sidecar inbound HCM with its inline route: everything to `cluster`. The vhost is named
/// after the service port (`inbound|http|<port>`), as istioctl and EnvoyFilters expect.
fn inbound_hcm(
    stat_prefix: String,
    cluster: &str,
    service_port: u16,
    operation: String,
    protocol: Protocol,
) -> HttpConnectionManager {
    // Retrying a reset before the request reached the app is safe; gRPC clients retry themselves.
    let retry_policy =
        (!matches!(protocol, Protocol::Grpc | Protocol::GrpcWeb)).then(|| RetryPolicy {
            retry_on: "reset-before-request".to_string(),
            num_retries: Some(u32_value(2)),
            ..Default::default()
        });
    let route = Route {
        name: "default".to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        decorator: Some(Decorator {
            operation,
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
            timeout: Some(seconds(0)),
            max_stream_duration: Some(route_action::MaxStreamDuration {
                max_stream_duration: Some(seconds(0)),
                grpc_timeout_header_max: Some(seconds(0)),
                ..Default::default()
            }),
            retry_policy,
            ..Default::default()
        })),
        ..Default::default()
    };
    let route_config = RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{service_port}"),
            domains: vec!["*".to_string()],
            routes: vec![route],
            ..Default::default()
        }],
        validate_clusters: Some(bool_value(false)),
        ..Default::default()
    };
    let mut hcm = base_hcm(stat_prefix, RouteSpecifier::RouteConfig(route_config));
    hcm.forward_client_cert_details = ForwardClientCertDetails::AppendForward as i32;
    hcm.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
        subject: Some(bool_value(true)),
        dns: true,
        uri: true,
        ..Default::default()
    });
    if protocol.is_http2() {
        hcm.http2_protocol_options = Some(Default::default());
    }
    hcm
}

/// Destination ports whose chains never need the HTTP inspector (declared TCP, declared HTTP
/// matched by port alone, the blackhole). Skipping it there matters for server-first
/// protocols, which would otherwise wait for client bytes that never come.
fn ports_without_http_chains(chains: &[FilterChain]) -> Vec<u16> {
    let mut needs_http: BTreeMap<u16, bool> = BTreeMap::new();
    for chain in chains {
        let m = chain.filter_chain_match.as_ref();
        let port = m
            .and_then(|m| m.destination_port.as_ref())
            .and_then(|p| u16::try_from(p.value).ok())
            .unwrap_or(0);
        let http = m.is_some_and(|m| {
            m.application_protocols
                .iter()
                .any(|a| HTTP_ALPNS.contains(&a.as_str()))
        });
        *needs_http.entry(port).or_default() |= http;
    }
    needs_http
        .into_iter()
        .filter(|(port, http)| *port != 0 && !http)
        .map(|(port, _)| port)
        .collect()
}

/// A predicate true for connections to any of `ports`; `None` when there are none.
fn exclude_ports(ports: &[u16]) -> Option<ListenerFilterChainMatchPredicate> {
    let mut rules: Vec<ListenerFilterChainMatchPredicate> = ports
        .iter()
        .map(|p| ListenerFilterChainMatchPredicate {
            rule: Some(Rule::DestinationPortRange(Int32Range {
                start: i32::from(*p),
                end: i32::from(*p) + 1,
            })),
        })
        .collect();
    match rules.len() {
        0 => None,
        1 => rules.pop(),
        _ => Some(ListenerFilterChainMatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet { rules })),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks

fn base_listener(name: String, address: Address, direction: TrafficDirection) -> Listener {
    Listener {
        name,
        address: Some(address),
        traffic_direction: direction as i32,
        continue_on_listener_filters_timeout: true,
        // 0s = no protocol-detection timeout (mesh `protocolDetectionTimeout` default).
        listener_filters_timeout: Some(seconds(0)),
        ..Default::default()
    }
}

/// Plaintext HTTP as detected by the HTTP inspector, optionally on one destination port.
fn http_match(destination_port: Option<u16>) -> FilterChainMatch {
    FilterChainMatch {
        destination_port: destination_port.map(|p| u32_value(u32::from(p))),
        transport_protocol: RAW_BUFFER.to_string(),
        application_protocols: HTTP_ALPNS.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn raw_buffer_match(destination_port: u16) -> FilterChainMatch {
    FilterChainMatch {
        destination_port: Some(u32_value(u32::from(destination_port))),
        transport_protocol: RAW_BUFFER.to_string(),
        ..Default::default()
    }
}

fn http_inspector(filter_disabled: Option<ListenerFilterChainMatchPredicate>) -> ListenerFilter {
    ListenerFilter {
        name: HTTP_INSPECTOR.to_string(),
        filter_disabled,
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            HttpInspector {},
        ))),
    }
}

fn network_filter(name: &str, config: Any) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}

fn tcp_proxy_filter(target: &TcpTarget) -> Filter {
    let (stat_prefix, cluster_specifier) = match target {
        TcpTarget::Cluster(name) => (name.clone(), ClusterSpecifier::Cluster(name.clone())),
        TcpTarget::Weighted {
            stat_prefix,
            clusters,
        } => (
            stat_prefix.clone(),
            ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(|(name, weight)| ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        ..Default::default()
                    })
                    .collect(),
            }),
        ),
    };
    network_filter(
        TCP_PROXY,
        any(TcpProxy {
            stat_prefix,
            cluster_specifier: Some(cluster_specifier),
            ..Default::default()
        }),
    )
}

fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    network_filter(HTTP_CONNECTION_MANAGER, any(hcm))
}

/// What every sidecar HCM shares (Istio's defaults for both directions).
fn base_hcm(stat_prefix: String, route_specifier: RouteSpecifier) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix,
        route_specifier: Some(route_specifier),
        http_filters: http_filters(),
        use_remote_address: Some(bool_value(false)),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        // 0s disables the idle timeout: long-lived streams (gRPC, websockets) must survive.
        stream_idle_timeout: Some(seconds(0)),
        normalize_path: Some(bool_value(true)),
        path_with_escaped_slashes_action: PathWithEscapedSlashesAction::KeepUnchanged as i32,
        request_id_extension: Some(RequestIdExtension {
            typed_config: Some(any(UuidRequestIdConfig {
                use_request_id_for_trace_sampling: Some(bool_value(true)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// grpc_stats, fault, cors, router: the upstream-Envoy subset of Istio's sidecar chain.
fn http_filters() -> Vec<HttpFilter> {
    let filter = |name: &str, config: Any| HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    vec![
        filter(
            "envoy.filters.http.grpc_stats",
            any(GrpcStatsConfig {
                emit_filter_state: true,
                ..Default::default()
            }),
        ),
        filter("envoy.filters.http.fault", any(HttpFault::default())),
        filter("envoy.filters.http.cors", any(Cors {})),
        filter("envoy.filters.http.router", any(Router::default())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::fixtures::{
        mk_destination_rule, mk_pod, mk_service, mk_slice, mk_virtual_service,
    };
    use meshpilot_model::{ContainerPort, Index, Object, TargetPort};
    use std::sync::Arc;

    const FQDN_WEB: &str = "web.default.svc.cluster.local";
    const FQDN_DB: &str = "db.default.svc.cluster.local";
    const FQDN_SNIFF: &str = "sniff.default.svc.cluster.local";

    /// An HTTP, a TCP, an auto and a UDP service, plus the client pod the proxy runs in.
    fn mesh() -> Index {
        let mut index = Index::default();
        index.apply(Object::Service(mk_service(
            "default",
            "web",
            "10.96.0.10",
            &[("http", 8080)],
        )));
        index.apply(Object::Service(mk_service(
            "default",
            "db",
            "10.96.0.20",
            &[("tcp-db", 5432)],
        )));
        index.apply(Object::Service(mk_service(
            "default",
            "sniff",
            "10.96.0.30",
            &[("web", 9000)],
        )));
        index.apply(Object::Service(mk_service(
            "default",
            "dns",
            "10.96.0.40",
            &[("udp-dns", 53)],
        )));
        index.apply(Object::Pod(Arc::new(mk_pod(
            "default",
            "client-0",
            "10.244.0.5",
            &[("app", "client")],
        ))));
        index
    }

    fn proxy_for(snapshot: &Snapshot, pod: &str) -> Proxy {
        Proxy::for_pod(snapshot, "default", pod).expect("pod in snapshot")
    }

    fn names_of(listeners: &[Listener]) -> Vec<&str> {
        listeners.iter().map(|l| l.name.as_str()).collect()
    }

    fn listener<'a>(listeners: &'a [Listener], name: &str) -> &'a Listener {
        listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    fn typed<M: Message + Name + Default>(f: &Filter) -> M {
        let Some(filter::ConfigType::TypedConfig(config)) = &f.config_type else {
            panic!("filter {} has no typed config", f.name);
        };
        assert_eq!(config.type_url, M::type_url(), "filter {}", f.name);
        M::decode(config.value.as_slice()).expect("decodes")
    }

    fn tcp_cluster(chain: &FilterChain) -> String {
        let proxy: TcpProxy = typed(chain.filters.last().expect("a filter"));
        match proxy.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => {
                assert_eq!(proxy.stat_prefix, c);
                c
            }
            other => panic!("expected one cluster, got {other:?}"),
        }
    }

    fn hcm(chain: &FilterChain) -> HttpConnectionManager {
        let f = &chain.filters[0];
        assert_eq!(f.name, HTTP_CONNECTION_MANAGER);
        typed(f)
    }

    fn rds_name(hcm: &HttpConnectionManager) -> &str {
        match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => {
                assert_eq!(rds.config_source, Some(ads_config_source()));
                &rds.route_config_name
            }
            other => panic!("expected RDS, got {other:?}"),
        }
    }

    fn chain_names(listener: &Listener) -> Vec<&str> {
        listener
            .filter_chains
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn listeners_are_ordered_by_port_then_virtual_ones() {
        let snapshot = mesh().snapshot();
        let proxy = proxy_for(&snapshot, "client-0");
        let listeners = build_listeners(&snapshot, &proxy);
        assert_eq!(
            names_of(&listeners),
            [
                "10.96.0.20_5432",
                "0.0.0.0_8080",
                "10.96.0.30_9000",
                "virtualOutbound",
                "virtualInbound"
            ]
        );
        for l in &listeners {
            assert!(l.continue_on_listener_filters_timeout, "{}", l.name);
            assert_eq!(l.listener_filters_timeout, Some(seconds(0)), "{}", l.name);
        }
        let db = listener(&listeners, "10.96.0.20_5432");
        assert_eq!(
            db.address,
            Some(socket_address(&"10.96.0.20".parse().unwrap(), 5432))
        );
        assert_eq!(db.bind_to_port, Some(bool_value(false)));
        assert_eq!(db.traffic_direction, TrafficDirection::Outbound as i32);
        assert!(db.listener_filters.is_empty());
        assert_eq!(db.filter_chains.len(), 1);
        assert_eq!(
            tcp_cluster(&db.filter_chains[0]),
            format!("outbound|5432||{FQDN_DB}")
        );

        let mut no_capture = proxy.clone();
        no_capture.interception_mode = InterceptionMode::None;
        let listeners = build_listeners(&snapshot, &no_capture);
        assert_eq!(
            names_of(&listeners),
            ["10.96.0.20_5432", "0.0.0.0_8080", "10.96.0.30_9000"]
        );
    }

    #[test]
    fn http_port_listener_routes_through_rds_named_after_the_port() {
        let mut index = mesh();
        // A second HTTP service on the same port shares the wildcard listener.
        index.apply(Object::Service(mk_service(
            "other",
            "web",
            "10.96.1.10",
            &[("http-alt", 8080)],
        )));
        let snapshot = index.snapshot();
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "client-0"));
        assert_eq!(
            listeners
                .iter()
                .filter(|l| l.name == "0.0.0.0_8080")
                .count(),
            1
        );
        let web = listener(&listeners, "0.0.0.0_8080");
        assert_eq!(web.address, Some(socket_address(&WILDCARD, 8080)));
        assert_eq!(web.bind_to_port, Some(bool_value(false)));
        assert_eq!(web.listener_filters.len(), 1);
        assert_eq!(web.listener_filters[0].name, HTTP_INSPECTOR);
        assert_eq!(web.filter_chains.len(), 1);
        let chain = &web.filter_chains[0];
        assert_eq!(chain.filter_chain_match, Some(http_match(None)));
        let hcm = hcm(chain);
        assert_eq!(rds_name(&hcm), "8080");
        assert_eq!(hcm.stat_prefix, "outbound_0.0.0.0_8080;");
        assert_eq!(hcm.codec_type, CodecType::Auto as i32);
        assert_eq!(hcm.use_remote_address, Some(bool_value(false)));
        assert_eq!(hcm.stream_idle_timeout, Some(seconds(0)));
        assert_eq!(hcm.normalize_path, Some(bool_value(true)));
        assert_eq!(hcm.upgrade_configs[0].upgrade_type, "websocket");
        assert_eq!(
            hcm.path_with_escaped_slashes_action,
            PathWithEscapedSlashesAction::KeepUnchanged as i32
        );
        let request_id = hcm.request_id_extension.unwrap().typed_config.unwrap();
        assert_eq!(request_id.type_url, UuidRequestIdConfig::type_url());
        let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            filters,
            [
                "envoy.filters.http.grpc_stats",
                "envoy.filters.http.fault",
                "envoy.filters.http.cors",
                "envoy.filters.http.router"
            ]
        );
        let Some(http_filter::ConfigType::TypedConfig(grpc)) = &hcm.http_filters[0].config_type
        else {
            panic!("grpc_stats has a typed config");
        };
        assert!(
            GrpcStatsConfig::decode(grpc.value.as_slice())
                .unwrap()
                .emit_filter_state
        );
        let default_chain = web.default_filter_chain.as_ref().unwrap();
        assert_eq!(default_chain.name, PASSTHROUGH_FILTER_CHAIN);
        assert_eq!(default_chain.filter_chain_match, None);
        assert_eq!(tcp_cluster(default_chain), names::PASSTHROUGH_CLUSTER);
    }

    #[test]
    fn auto_port_listener_sniffs_http_before_falling_back_to_tcp() {
        let snapshot = mesh().snapshot();
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "client-0"));
        let sniff = listener(&listeners, "10.96.0.30_9000");
        assert_eq!(sniff.listener_filters[0].name, HTTP_INSPECTOR);
        assert_eq!(sniff.filter_chains.len(), 2);
        let http = &sniff.filter_chains[0];
        assert_eq!(http.filter_chain_match, Some(http_match(None)));
        let hcm = hcm(http);
        assert_eq!(rds_name(&hcm), format!("{FQDN_SNIFF}:9000"));
        assert_eq!(hcm.stat_prefix, "outbound_10.96.0.30_9000;");
        assert_eq!(sniff.filter_chains[1].filter_chain_match, None);
        assert_eq!(
            tcp_cluster(&sniff.filter_chains[1]),
            format!("outbound|9000||{FQDN_SNIFF}")
        );
    }

    #[test]
    fn virtual_outbound_guards_its_port_and_passes_the_rest_through() {
        let snapshot = mesh().snapshot();
        let mut proxy = proxy_for(&snapshot, "client-0");
        let listeners = build_listeners(&snapshot, &proxy);
        let vo = listener(&listeners, "virtualOutbound");
        assert_eq!(vo.address, Some(socket_address(&WILDCARD, 15001)));
        assert_eq!(vo.use_original_dst, Some(bool_value(true)));
        assert_eq!(vo.transparent, None);
        assert_eq!(vo.bind_to_port, None);
        assert_eq!(vo.traffic_direction, TrafficDirection::Outbound as i32);
        assert_eq!(
            chain_names(vo),
            [VIRTUAL_OUTBOUND_BLACKHOLE, VIRTUAL_OUTBOUND_CATCHALL_TCP]
        );
        let blackhole = &vo.filter_chains[0];
        assert_eq!(
            blackhole
                .filter_chain_match
                .as_ref()
                .unwrap()
                .destination_port,
            Some(u32_value(15001))
        );
        assert_eq!(tcp_cluster(blackhole), names::BLACK_HOLE_CLUSTER);
        assert_eq!(vo.filter_chains[1].filter_chain_match, None);
        assert_eq!(
            tcp_cluster(&vo.filter_chains[1]),
            names::PASSTHROUGH_CLUSTER
        );

        proxy.interception_mode = InterceptionMode::Tproxy;
        let listeners = build_listeners(&snapshot, &proxy);
        assert_eq!(
            listener(&listeners, "virtualOutbound").transparent,
            Some(bool_value(true))
        );
    }

    #[test]
    fn virtual_inbound_serves_the_proxys_service_targets() {
        let mut index = mesh();
        let mut server = mk_service(
            "default",
            "server",
            "10.96.0.50",
            &[("http", 80), ("tcp-admin", 9100), ("grpc", 7070)],
        );
        server.ports[0].target_port = TargetPort::Name("http-web".to_string());
        index.apply(Object::Service(server));
        let mut pod = mk_pod("default", "server-0", "10.244.0.9", &[("app", "server")]);
        pod.container_ports = vec![ContainerPort {
            name: "http-web".to_string(),
            port: 8080,
            protocol: "TCP".to_string(),
        }];
        index.apply(Object::Pod(Arc::new(pod)));
        let snapshot = index.snapshot();
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "server-0"));
        let vi = listener(&listeners, "virtualInbound");
        assert_eq!(vi.address, Some(socket_address(&WILDCARD, 15006)));
        assert_eq!(vi.traffic_direction, TrafficDirection::Inbound as i32);
        assert_eq!(
            chain_names(vi),
            [
                VIRTUAL_INBOUND_BLACKHOLE,
                VIRTUAL_INBOUND_CATCHALL_HTTP,
                "virtualInbound",
                "0.0.0.0_7070",
                "0.0.0.0_8080",
                "0.0.0.0_9100"
            ]
        );
        let chains = &vi.filter_chains;
        assert_eq!(
            chains[0]
                .filter_chain_match
                .as_ref()
                .unwrap()
                .destination_port,
            Some(u32_value(15006))
        );
        assert_eq!(tcp_cluster(&chains[0]), names::BLACK_HOLE_CLUSTER);
        assert_eq!(chains[1].filter_chain_match, Some(http_match(None)));
        let passthrough = hcm(&chains[1]);
        let Some(RouteSpecifier::RouteConfig(rc)) = &passthrough.route_specifier else {
            panic!("inline route expected");
        };
        let passthrough_route = &rc.virtual_hosts[0].routes[0];
        let Some(route::Action::Route(action)) = &passthrough_route.action else {
            panic!("route action expected");
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                names::INBOUND_PASSTHROUGH_CLUSTER.to_string()
            ))
        );
        assert_eq!(
            chains[2]
                .filter_chain_match
                .as_ref()
                .unwrap()
                .transport_protocol,
            RAW_BUFFER
        );
        assert_eq!(tcp_cluster(&chains[2]), names::INBOUND_PASSTHROUGH_CLUSTER);

        // The named target port resolves through the pod's container port.
        let http = &chains[4];
        assert_eq!(http.filter_chain_match, Some(raw_buffer_match(8080)));
        let hcm = hcm(http);
        assert_eq!(hcm.stat_prefix, "inbound_0.0.0.0_8080;");
        let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier else {
            panic!("inline route expected");
        };
        assert_eq!(rc.name, "inbound|8080||");
        assert_eq!(rc.virtual_hosts[0].name, "inbound|http|80");
        assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
        let route = &rc.virtual_hosts[0].routes[0];
        assert_eq!(route.name, "default");
        let Some(route::Action::Route(action)) = &route.action else {
            panic!("route action expected");
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                "inbound|8080||".to_string()
            ))
        );
        assert_eq!(action.timeout, Some(seconds(0)));
        let msd = action.max_stream_duration.as_ref().unwrap();
        assert_eq!(msd.max_stream_duration, Some(seconds(0)));
        assert_eq!(msd.grpc_timeout_header_max, Some(seconds(0)));
        let retry = action.retry_policy.as_ref().unwrap();
        assert_eq!(
            (retry.retry_on.as_str(), retry.num_retries),
            ("reset-before-request", Some(u32_value(2)))
        );

        // gRPC ports get no inbound retry.
        let grpc = hcm_route_action(&chains[3]);
        assert!(grpc.retry_policy.is_none());

        assert_eq!(chains[5].filter_chain_match, Some(raw_buffer_match(9100)));
        assert_eq!(tcp_cluster(&chains[5]), "inbound|9100||");

        // Only ports that may carry sniffed HTTP run the HTTP inspector.
        let names: Vec<&str> = vi
            .listener_filters
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, [ORIGINAL_DST, HTTP_INSPECTOR]);
        assert_eq!(
            vi.listener_filters[1].filter_disabled,
            exclude_ports(&[7070, 8080, 9100, 15006])
        );
    }

    fn hcm_route_action(chain: &FilterChain) -> RouteAction {
        let Some(RouteSpecifier::RouteConfig(rc)) = hcm(chain).route_specifier else {
            panic!("inline route expected");
        };
        let Some(route::Action::Route(action)) = rc.virtual_hosts[0].routes[0].action.clone()
        else {
            panic!("route action expected");
        };
        action
    }

    #[test]
    fn inbound_auto_port_gets_http_then_tcp_chain() {
        let mut index = Index::default();
        index.apply(Object::Service(mk_service(
            "default",
            "srv",
            "10.96.0.60",
            &[("web", 3000)],
        )));
        index.apply(Object::Pod(Arc::new(mk_pod(
            "default",
            "srv-0",
            "10.244.0.7",
            &[("app", "srv")],
        ))));
        let snapshot = index.snapshot();
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "srv-0"));
        let vi = listener(&listeners, "virtualInbound");
        let chains = &vi.filter_chains[3..];
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0].filter_chain_match, Some(http_match(Some(3000))));
        assert_eq!(hcm(&chains[0]).stat_prefix, "inbound_0.0.0.0_3000;");
        assert_eq!(chains[1].filter_chain_match, Some(raw_buffer_match(3000)));
        assert_eq!(tcp_cluster(&chains[1]), "inbound|3000||");
        assert_eq!(
            vi.listener_filters[1].filter_disabled,
            exclude_ports(&[15006])
        );
    }

    #[test]
    fn route_names_are_deduplicated_in_first_seen_order() {
        let mut index = mesh();
        index.apply(Object::Service(mk_service(
            "other",
            "web",
            "10.96.1.10",
            &[("http", 8080)],
        )));
        index.apply(Object::Service(mk_service(
            "default",
            "api",
            "10.96.0.70",
            &[("grpc", 7000), ("http", 8080)],
        )));
        let snapshot = index.snapshot();
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "client-0"));
        assert_eq!(
            route_names(&listeners),
            ["7000", "8080", &format!("{FQDN_SNIFF}:9000")]
        );
        // The same listener twice still yields each name once.
        let doubled: Vec<Listener> = listeners.iter().chain(&listeners).cloned().collect();
        assert_eq!(route_names(&doubled).len(), 3);
    }

    #[test]
    fn tcp_virtual_service_splits_traffic_by_weight() {
        let mut index = mesh();
        index.apply(mk_destination_rule(
            "default",
            "db",
            "host: db\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n",
        ));
        index.apply(mk_virtual_service(
            "default",
            "db-split",
            r#"
hosts: [db]
tcp:
- match: [{port: 1111}]
  route: [{destination: {host: web}}]
- route:
  - {destination: {host: db, subset: v1}, weight: 80}
  - {destination: {host: db, subset: v2}, weight: 20}
  - {destination: {host: db, subset: v2, port: {number: 6543}}, weight: 0}
"#,
        ));
        let snapshot = index.snapshot();
        assert!(snapshot.rejected().is_empty(), "{:?}", snapshot.rejected());
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "client-0"));
        let db = listener(&listeners, "10.96.0.20_5432");
        let proxy: TcpProxy = typed(&db.filter_chains[0].filters[0]);
        assert_eq!(proxy.stat_prefix, "db-split.default");
        let Some(ClusterSpecifier::WeightedClusters(weighted)) = proxy.cluster_specifier else {
            panic!("weighted clusters expected");
        };
        let clusters: Vec<(&str, u32)> = weighted
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight))
            .collect();
        assert_eq!(
            clusters,
            [
                (format!("outbound|5432|v1|{FQDN_DB}").as_str(), 80),
                (format!("outbound|5432|v2|{FQDN_DB}").as_str(), 20)
            ]
        );
    }

    #[test]
    fn tcp_virtual_service_single_destination_respects_source_match() {
        let mut index = mesh();
        index.apply(mk_virtual_service(
            "default",
            "db-redirect",
            r#"
hosts: [db]
tcp:
- match: [{sourceLabels: {app: other}}]
  route: [{destination: {host: sniff}}]
- match: [{port: 5432, sourceNamespace: default}]
  route: [{destination: {host: web}}]
"#,
        ));
        let snapshot = index.snapshot();
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "client-0"));
        let db = listener(&listeners, "10.96.0.20_5432");
        // `web` has a single port, which the cluster takes.
        assert_eq!(
            tcp_cluster(&db.filter_chains[0]),
            format!("outbound|8080||{FQDN_WEB}")
        );
    }

    #[test]
    fn headless_tcp_service_gets_one_listener_per_ready_endpoint() {
        let mut index = mesh();
        let mut headless = mk_service(
            "default",
            "kafka",
            "10.96.9.9",
            &[("tcp", 9092), ("http", 8081)],
        );
        headless.cluster_ips.clear();
        headless.headless = true;
        index.apply(Object::Service(headless));
        let mut slice = mk_slice(
            "default",
            "kafka",
            &[("tcp", 9092), ("http", 8081)],
            &[
                ("kafka-0", "10.244.3.1"),
                ("kafka-1", "10.244.3.2"),
                ("client-0", "10.244.0.5"),
            ],
        );
        slice.endpoints[1].ready = false;
        index.apply(Object::EndpointSlice(Arc::new(slice)));
        let snapshot = index.snapshot();
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "client-0"));
        let names = names_of(&listeners);
        assert!(names.contains(&"10.244.3.1_9092"), "{names:?}");
        assert!(
            !names.contains(&"10.244.3.2_9092"),
            "not-ready endpoint: {names:?}"
        );
        assert!(
            !names.contains(&"10.244.0.5_9092"),
            "own address: {names:?}"
        );
        assert!(names.contains(&"0.0.0.0_8081"), "{names:?}");
        let kafka = listener(&listeners, "10.244.3.1_9092");
        assert_eq!(
            tcp_cluster(&kafka.filter_chains[0]),
            "outbound|9092||kafka.default.svc.cluster.local"
        );
    }

    #[test]
    fn reserved_ports_and_udp_get_no_wildcard_listener() {
        let mut index = Index::default();
        index.apply(Object::Service(mk_service(
            "default",
            "odd",
            "10.96.0.80",
            &[("http", 15001), ("udp-x", 53), ("tcp", 15006)],
        )));
        index.apply(Object::Pod(Arc::new(mk_pod(
            "default",
            "client-0",
            "10.244.0.5",
            &[("app", "client")],
        ))));
        let snapshot = index.snapshot();
        let listeners = build_listeners(&snapshot, &proxy_for(&snapshot, "client-0"));
        assert_eq!(
            names_of(&listeners),
            ["10.96.0.80_15006", "virtualOutbound", "virtualInbound"]
        );
    }

    #[test]
    fn subnets_match_by_prefix() {
        let ip: IpAddr = "10.96.0.20".parse().unwrap();
        assert!(subnet_contains("10.96.0.0/16", ip));
        assert!(subnet_contains("10.96.0.20", ip));
        assert!(subnet_contains("0.0.0.0/0", ip));
        assert!(!subnet_contains("10.97.0.0/16", ip));
        assert!(!subnet_contains("fd00::/8", ip));
        assert!(subnet_contains("fd00::/8", "fd00::1".parse().unwrap()));
        assert!(!subnet_contains("garbage", ip));
    }
}
