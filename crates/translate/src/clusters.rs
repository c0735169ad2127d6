//! CDS: outbound service and subset clusters, inbound clusters, the special clusters.
//!
//! Shapes follow istiod's cluster builder: every service cluster starts from the same defaults
//! (10s connect timeout, LEAST_REQUEST, unlimited circuit breakers, `istio` metadata), then the
//! DestinationRule policy in effect for its port (and subset) is laid over it block by block.

use crate::envoy::{
    ads_config_source, any, duration, istio_metadata, list_value, seconds, string_value,
    struct_value, u32_value,
};
use crate::names::{self, Direction};
use crate::policy::{EffectivePolicy, effective_policy};
use crate::targets::{self, ServiceTarget};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, UpstreamConnectionOptions, circuit_breakers,
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy,
        LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig, RoundRobinLbConfig,
        SlowStartConfig,
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    self as core, BindConfig, ExtraSourceAddress, Http1ProtocolOptions, Http2ProtocolOptions,
    Metadata, SocketAddress, TcpKeepalive, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
        explicit_http_config::ProtocolConfig,
    },
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{UInt64Value, Value};
use meshpilot_api::{ConnectionPoolSettings, LoadBalancerSettings, SimpleLb, TcpSettings};
use meshpilot_model::{
    ConfigKey, DestinationRuleConfig, Protocol, Proxy, Service, ServicePort, Snapshot,
};
use std::collections::{HashMap, HashSet};

/// Mesh `connectTimeout` default.
const CONNECT_TIMEOUT_SECS: i64 = 10;
/// Idle timeout of the passthrough clusters' upstream HTTP connections.
const PASSTHROUGH_IDLE_TIMEOUT_SECS: i64 = 300;
/// Istio never cleans up inbound ORIGINAL_DST hosts: the largest duration whose nanoseconds
/// still fit an i64.
const NEVER_CLEANUP_SECS: i64 = (i64::MAX - 999_999_999) / 1_000_000_000;
/// Envoy's own default ring size, which Istio writes when no ring hash block is given.
const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// IPv6 twin of [`names::INBOUND_PASSTHROUGH_BIND_IP`], exempted from capture the same way.
const INBOUND_PASSTHROUGH_BIND_IPV6: &str = "::6";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Every cluster the proxy gets: outbound service and subset clusters (services by hostname,
/// ports in service order), `BlackHoleCluster`, `PassthroughCluster`, the inbound clusters of
/// the proxy's own service targets (by target port), then `InboundPassthroughCluster`. When two
/// clusters share a name the first one wins.
pub fn build_clusters(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Cluster> {
    let mut clusters = Vec::new();
    for service in targets::visible_services(snapshot, proxy) {
        let rule = snapshot.destination_rule_for(&service.hostname, &proxy.namespace);
        for port in &service.ports {
            if port.protocol.is_unsupported_transport() {
                continue;
            }
            clusters.extend(build_service_port_clusters(service, port, rule.as_deref()));
        }
    }
    clusters.push(build_black_hole_cluster());
    clusters.push(build_passthrough_cluster());
    let mut service_targets = targets::service_targets(snapshot, proxy);
    service_targets.sort_by_key(|t| t.target_port);
    for target in &service_targets {
        let rule = snapshot.destination_rule_for(&target.service.hostname, &proxy.namespace);
        clusters.push(build_inbound_cluster(proxy, target, rule.as_deref()));
    }
    clusters.push(build_inbound_passthrough_cluster(proxy));

    let mut seen = HashSet::new();
    clusters.retain(|c| seen.insert(c.name.clone()));
    clusters
}

// ---------------------------------------------------------------------------------------------
// Outbound

/// `outbound|<port>||<host>` and one `outbound|<port>|<subset>|<host>` per DestinationRule subset.
fn build_service_port_clusters(
    service: &Service,
    port: &ServicePort,
    rule: Option<&DestinationRuleConfig>,
) -> Vec<Cluster> {
    let discovery = if service.headless || service.cluster_ips.is_empty() {
        // Headless: clients already picked a pod IP, so forward to it.
        DiscoveryType::OriginalDst
    } else {
        DiscoveryType::Eds
    };
    let rule_key = rule.map(DestinationRuleConfig::key);
    let name = names::cluster_name(Direction::Outbound, port.port, "", &service.hostname);
    let mut default = Draft::new(name, discovery, port.protocol);
    apply_traffic_policy(
        &mut default,
        &effective_policy(rule, port.port, None),
        Direction::Outbound,
    );
    apply_eds_config(&mut default.cluster);
    default.cluster.metadata = Some(service_metadata(&[service], rule_key.as_ref(), None));
    // Subsets start from the default cluster's final type: a top-level PASSTHROUGH carries over.
    let subset_base = discovery_type(&default.cluster);
    let mut clusters = vec![default.finish()];

    for subset in rule.map(|r| r.spec.subsets.as_slice()).unwrap_or_default() {
        let own_lb = subset
            .traffic_policy
            .as_ref()
            .and_then(|p| p.load_balancer.as_ref())
            .and_then(|lb| lb.simple);
        let discovery = if own_lb == Some(SimpleLb::Passthrough) {
            DiscoveryType::OriginalDst
        } else {
            subset_base
        };
        let name = names::cluster_name(
            Direction::Outbound,
            port.port,
            &subset.name,
            &service.hostname,
        );
        let mut draft = Draft::new(name, discovery, port.protocol);
        apply_traffic_policy(
            &mut draft,
            &effective_policy(rule, port.port, Some(&subset.name)),
            Direction::Outbound,
        );
        apply_eds_config(&mut draft.cluster);
        draft.cluster.metadata = Some(service_metadata(
            &[service],
            rule_key.as_ref(),
            Some(&subset.name),
        ));
        clusters.push(draft.finish());
    }
    clusters
}

/// EDS over ADS, named after the cluster, for clusters still of type EDS once the policy is
/// applied (a PASSTHROUGH load balancer turns them into ORIGINAL_DST).
fn apply_eds_config(cluster: &mut Cluster) {
    if discovery_type(cluster) == DiscoveryType::Eds {
        cluster.eds_cluster_config = Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: cluster.name.clone(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Inbound

/// `inbound|<targetPort>||`: forwards to the original destination (the pod IP), binding the
/// source to 127.0.0.6 so the iptables rules do not capture the connection again.
fn build_inbound_cluster(
    proxy: &Proxy,
    target: &ServiceTarget,
    rule: Option<&DestinationRuleConfig>,
) -> Cluster {
    let name = names::cluster_name(Direction::Inbound, target.target_port, "", "");
    let mut draft = Draft::new(name, DiscoveryType::OriginalDst, target.port.protocol);
    draft.cluster.cleanup_interval = Some(seconds(NEVER_CLEANUP_SECS));
    // Only the connection pool applies inbound; the rule is named only when it has a policy.
    let rule = rule.filter(|r| r.spec.traffic_policy.is_some());
    apply_traffic_policy(
        &mut draft,
        &effective_policy(rule, target.port.port, None),
        Direction::Inbound,
    );
    let (bind_ip, _) = passthrough_bind_ips(proxy);
    draft.cluster.upstream_bind_config = Some(BindConfig {
        source_address: Some(bind_address(bind_ip)),
        ..Default::default()
    });
    let rule_key = rule.map(DestinationRuleConfig::key);
    draft.cluster.metadata = Some(service_metadata(
        &[target.service.as_ref()],
        rule_key.as_ref(),
        None,
    ));
    draft.finish()
}

// ---------------------------------------------------------------------------------------------
// Special clusters

/// Target of routes and listeners that must drop traffic: no endpoints at all.
fn build_black_hole_cluster() -> Cluster {
    Cluster {
        name: names::BLACK_HOLE_CLUSTER.to_string(),
        alt_stat_name: alt_stat_name(names::BLACK_HOLE_CLUSTER),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(seconds(CONNECT_TIMEOUT_SECS)),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

/// Outbound traffic to destinations the mesh does not know, forwarded as addressed.
fn build_passthrough_cluster() -> Cluster {
    let options = HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(seconds(PASSTHROUGH_IDLE_TIMEOUT_SECS)),
            ..Default::default()
        }),
        upstream_protocol_options: Some(use_downstream_protocol(None)),
        ..Default::default()
    };
    Cluster {
        name: names::PASSTHROUGH_CLUSTER.to_string(),
        alt_stat_name: alt_stat_name(names::PASSTHROUGH_CLUSTER),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(seconds(CONNECT_TIMEOUT_SECS)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![default_thresholds()],
            ..Default::default()
        }),
        typed_extension_protocol_options: HashMap::from([(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            any(options),
        )]),
        ..Default::default()
    }
}

/// Inbound traffic to ports no service declares: the passthrough cluster bound to 127.0.0.6
/// (plus `::6` on dual-stack pods). Istio derives it from the outbound one and keeps its
/// `alt_stat_name`, so both report under `PassthroughCluster;`.
fn build_inbound_passthrough_cluster(proxy: &Proxy) -> Cluster {
    let (bind_ip, extra_ip) = passthrough_bind_ips(proxy);
    Cluster {
        name: names::INBOUND_PASSTHROUGH_CLUSTER.to_string(),
        upstream_bind_config: Some(BindConfig {
            source_address: Some(bind_address(bind_ip)),
            extra_source_addresses: extra_ip
                .map(|ip| ExtraSourceAddress {
                    address: Some(bind_address(ip)),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        ..build_passthrough_cluster()
    }
}

/// The bind address for passthrough traffic (IPv4 unless the pod has none) and, for dual-stack
/// pods, the IPv6 one as well.
fn passthrough_bind_ips(proxy: &Proxy) -> (&'static str, Option<&'static str>) {
    let v4 = proxy.ips.iter().any(|ip| ip.is_ipv4());
    let v6 = proxy.ips.iter().any(|ip| ip.is_ipv6());
    match (v4, v6) {
        (true, true) => (
            names::INBOUND_PASSTHROUGH_BIND_IP,
            Some(INBOUND_PASSTHROUGH_BIND_IPV6),
        ),
        (false, true) => (INBOUND_PASSTHROUGH_BIND_IPV6, None),
        _ => (names::INBOUND_PASSTHROUGH_BIND_IP, None),
    }
}

fn bind_address(ip: &str) -> SocketAddress {
    SocketAddress {
        address: ip.to_string(),
        port_specifier: Some(PortSpecifier::PortValue(0)),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks

/// A cluster under construction with its upstream HTTP options, which are packed into
/// `typed_extension_protocol_options` only at the end (several steps edit them).
struct Draft {
    cluster: Cluster,
    http: Option<HttpProtocolOptions>,
}

impl Draft {
    /// The defaults every service cluster starts from, with the upstream protocol the port
    /// implies: HTTP/2 for HTTP2/gRPC ports, the downstream's protocol for sniffed ports.
    fn new(name: String, discovery: DiscoveryType, protocol: Protocol) -> Self {
        let mut draft = Draft {
            cluster: Cluster {
                alt_stat_name: alt_stat_name(&name),
                name,
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
                common_lb_config: Some(CommonLbConfig::default()),
                ..Default::default()
            },
            http: None,
        };
        if protocol.is_http2() {
            draft.set_http2();
        } else if protocol == Protocol::Auto {
            draft.set_use_downstream_protocol();
        }
        draft
    }

    fn http_options(&mut self) -> &mut HttpProtocolOptions {
        self.http.get_or_insert_with(Default::default)
    }

    /// Explicit HTTP/2 upstream, unless a protocol choice was already made.
    fn set_http2(&mut self) {
        let options = self.http_options();
        if options.upstream_protocol_options.is_none() {
            options.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            ));
        }
    }

    /// Speak whatever the downstream spoke, keeping any explicit HTTP/1 options.
    fn set_use_downstream_protocol(&mut self) {
        let options = self.http_options();
        let http1 = match options.upstream_protocol_options.take() {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(h1)),
            })) => Some(h1),
            _ => None,
        };
        options.upstream_protocol_options = Some(use_downstream_protocol(http1));
    }

    fn finish(mut self) -> Cluster {
        if let Some(mut options) = self.http {
            // Envoy requires an upstream protocol choice; plain HTTP/1 is the neutral one.
            options.upstream_protocol_options.get_or_insert_with(|| {
                UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                        Http1ProtocolOptions::default(),
                    )),
                })
            });
            self.cluster.typed_extension_protocol_options =
                HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_string(), any(options))]);
        }
        self.cluster
    }
}

fn use_downstream_protocol(http1: Option<Http1ProtocolOptions>) -> UpstreamProtocolOptions {
    UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
        http_protocol_options: Some(http1.unwrap_or_default()),
        http2_protocol_options: Some(Http2ProtocolOptions::default()),
        ..Default::default()
    })
}

/// `<name>;`: the trailing delimiter keeps stat names parseable although names contain `.`.
fn alt_stat_name(name: &str) -> String {
    format!("{name};")
}

fn discovery_type(cluster: &Cluster) -> DiscoveryType {
    match cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap_or_default(),
        _ => DiscoveryType::Static,
    }
}

/// `filter_metadata.istio`: the services behind the cluster (telemetry labels), the
/// DestinationRule that shaped it and the subset, as istioctl reads them.
fn service_metadata(
    services: &[&Service],
    rule: Option<&ConfigKey>,
    subset: Option<&str>,
) -> Metadata {
    let services: Vec<Value> = services
        .iter()
        .map(|s| {
            struct_value(vec![
                ("host", string_value(&*s.hostname)),
                ("name", string_value(&s.name)),
                ("namespace", string_value(&s.namespace)),
            ])
        })
        .collect();
    let mut fields = vec![("services", list_value(services))];
    if let Some(key) = rule {
        fields.push(("config", string_value(key.metadata_path())));
    }
    if let Some(subset) = subset {
        fields.push(("subset", string_value(subset)));
    }
    istio_metadata(fields)
}

/// Istio lifts Envoy's low default limits (1024 connections, 3 retries...): the mesh should
/// not shed load unless a DestinationRule asks for it.
fn default_thresholds() -> circuit_breakers::Thresholds {
    circuit_breakers::Thresholds {
        max_connections: Some(u32_value(u32::MAX)),
        max_pending_requests: Some(u32_value(u32::MAX)),
        max_requests: Some(u32_value(u32::MAX)),
        max_retries: Some(u32_value(u32::MAX)),
        track_remaining: true,
        ..Default::default()
    }
}

/// Positive settings only: Istio cannot tell an explicit 0 from unset, so 0 keeps the default.
fn positive(value: Option<i32>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

// ---------------------------------------------------------------------------------------------
// Traffic policy

/// Lays a DestinationRule policy over a cluster. The connection pool applies in both
/// directions (so a server admits what its clients were allowed to send); HTTP/2 upgrade,
/// outlier detection and load balancing only outbound.
fn apply_traffic_policy(draft: &mut Draft, policy: &EffectivePolicy, direction: Direction) {
    let pool = policy.connection_pool.clone().unwrap_or_default();
    if direction == Direction::Outbound {
        // Before the pool, so HTTP/2 settings of the pool land on the upgraded options.
        if should_upgrade_to_http2(&pool) {
            draft.set_http2();
        }
    }
    apply_connection_pool(draft, &pool);
    if direction == Direction::Outbound {
        apply_outlier_detection(&mut draft.cluster, policy.outlier_detection.as_ref());
        apply_load_balancer(&mut draft.cluster, policy.load_balancer.as_ref());
    }
    if discovery_type(&draft.cluster) == DiscoveryType::OriginalDst {
        draft.cluster.lb_policy = LbPolicy::ClusterProvided as i32;
    }
}

/// `h2UpgradePolicy: UPGRADE` upgrades even unnamed ports; `useClientProtocol` wins over it.
/// The mesh-wide default (`DO_NOT_UPGRADE`) upgrades nothing else.
fn should_upgrade_to_http2(pool: &ConnectionPoolSettings) -> bool {
    pool.http.as_ref().is_some_and(|http| {
        http.use_client_protocol != Some(true)
            && http.h2_upgrade_policy.as_deref() == Some("UPGRADE")
    })
}

fn apply_connection_pool(draft: &mut Draft, pool: &ConnectionPoolSettings) {
    let mut thresholds = default_thresholds();
    let mut idle_timeout = None;
    let mut max_requests_per_connection = None;
    let mut max_concurrent_streams = None;
    let mut max_connection_duration = None;
    if let Some(http) = &pool.http {
        // Envoy applies max_requests to HTTP/2 and max_pending_requests to HTTP/1.1 pools.
        if let Some(n) = positive(http.http2_max_requests) {
            thresholds.max_requests = Some(u32_value(n));
        }
        if let Some(n) = positive(http.http1_max_pending_requests) {
            thresholds.max_pending_requests = Some(u32_value(n));
        }
        if let Some(n) = positive(http.max_retries) {
            thresholds.max_retries = Some(u32_value(n));
        }
        idle_timeout = http.idle_timeout;
        max_requests_per_connection = positive(http.max_requests_per_connection);
        max_concurrent_streams = positive(http.max_concurrent_streams);
    }
    draft.cluster.connect_timeout = Some(seconds(CONNECT_TIMEOUT_SECS));
    if let Some(tcp) = &pool.tcp {
        // Envoy rejects a zero connect timeout, so 0 keeps the default like the counters do.
        if let Some(timeout) = tcp.connect_timeout.filter(|d| !d.is_zero()) {
            draft.cluster.connect_timeout = Some(duration(timeout));
        }
        if let Some(n) = positive(tcp.max_connections) {
            thresholds.max_connections = Some(u32_value(n));
        }
        max_connection_duration = tcp.max_connection_duration;
        idle_timeout = idle_timeout.or(tcp.idle_timeout);
        apply_tcp_keepalive(&mut draft.cluster, tcp);
    }
    draft.cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    });

    if idle_timeout.is_some()
        || max_requests_per_connection.is_some()
        || max_connection_duration.is_some()
        || max_concurrent_streams.is_some()
    {
        let options = draft.http_options();
        let common = options
            .common_http_protocol_options
            .get_or_insert_with(Default::default);
        if let Some(timeout) = idle_timeout {
            common.idle_timeout = Some(duration(timeout));
        }
        if let Some(n) = max_requests_per_connection {
            common.max_requests_per_connection = Some(u32_value(n));
        }
        if let Some(d) = max_connection_duration {
            common.max_connection_duration = Some(duration(d));
        }
        // Only an HTTP/2 upstream has streams to limit.
        if let (
            Some(n),
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
            })),
        ) = (
            max_concurrent_streams,
            &mut options.upstream_protocol_options,
        ) {
            h2.max_concurrent_streams = Some(u32_value(n));
        }
    }
    if pool
        .http
        .as_ref()
        .is_some_and(|http| http.use_client_protocol == Some(true))
    {
        draft.set_use_downstream_protocol();
    }
}

/// SO_KEEPALIVE on upstream connections; unset fields keep the OS defaults. Envoy takes
/// whole seconds.
fn apply_tcp_keepalive(cluster: &mut Cluster, tcp: &TcpSettings) {
    let Some(keepalive) = &tcp.tcp_keepalive else {
        return;
    };
    let whole_seconds = |d: meshpilot_api::Duration| {
        u32_value(u32::try_from(d.seconds_and_nanos().0).unwrap_or(u32::MAX))
    };
    cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
        tcp_keepalive: Some(TcpKeepalive {
            keepalive_probes: keepalive.probes.filter(|p| *p > 0).map(u32_value),
            keepalive_time: keepalive.time.map(whole_seconds),
            keepalive_interval: keepalive.interval.map(whole_seconds),
        }),
        ..Default::default()
    });
}

/// Consecutive-error ejection only: success-rate ejection stays off, as in Istio.
fn apply_outlier_detection(
    cluster: &mut Cluster,
    outlier: Option<&meshpilot_api::OutlierDetection>,
) {
    let Some(outlier) = outlier else {
        return;
    };
    let enforcing = |count: u32| u32_value(if count > 0 { 100 } else { 0 });
    let mut out = OutlierDetection {
        enforcing_success_rate: Some(u32_value(0)),
        ..Default::default()
    };
    // The deprecated `consecutiveErrors` stands in when `consecutive5xxErrors` is absent.
    let five_xx = outlier.consecutive_5xx_errors.or_else(|| {
        outlier
            .consecutive_errors
            .and_then(|n| u32::try_from(n).ok())
    });
    if let Some(n) = five_xx {
        out.consecutive_5xx = Some(u32_value(n));
        out.enforcing_consecutive_5xx = Some(enforcing(n));
    }
    if let Some(n) = outlier.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(u32_value(n));
        out.enforcing_consecutive_gateway_failure = Some(enforcing(n));
    }
    out.interval = outlier.interval.map(duration);
    out.base_ejection_time = outlier.base_ejection_time.map(duration);
    out.max_ejection_percent = positive(outlier.max_ejection_percent).map(u32_value);
    if outlier.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(n) = outlier.consecutive_local_origin_failures.filter(|n| *n > 0) {
            out.consecutive_local_origin_failure = Some(u32_value(n));
            out.enforcing_consecutive_local_origin_failure = Some(u32_value(100));
        }
        out.enforcing_local_origin_success_rate = Some(u32_value(0));
    }
    cluster.outlier_detection = Some(out);
    // Written even when unset: Envoy's default panic threshold (50%) would spray traffic over
    // ejected hosts in the small pools typical of Kubernetes.
    let min_health = outlier.min_health_percent.unwrap_or(0);
    if min_health >= 0 {
        cluster
            .common_lb_config
            .get_or_insert_with(Default::default)
            .healthy_panic_threshold = Some(Percent {
            value: f64::from(min_health),
        });
    }
}

fn apply_load_balancer(cluster: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    // Original-destination discovery only works with the cluster-provided balancer.
    if discovery_type(cluster) == DiscoveryType::OriginalDst {
        cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        return;
    }
    let slow_start = lb
        .and_then(|lb| lb.warmup_duration_secs)
        .map(|window| SlowStartConfig {
            slow_start_window: Some(duration(window)),
            ..Default::default()
        });
    match lb.and_then(|lb| lb.simple) {
        Some(SimpleLb::Random) => cluster.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            cluster.lb_policy = LbPolicy::RoundRobin as i32;
            if let Some(slow_start_config) = slow_start {
                cluster.lb_config = Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                    slow_start_config: Some(slow_start_config),
                }));
            }
        }
        Some(SimpleLb::Passthrough) => {
            cluster.lb_policy = LbPolicy::ClusterProvided as i32;
            cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            cluster.load_assignment = None;
        }
        // LEAST_CONN is deprecated in favour of LEAST_REQUEST, which is also the default.
        Some(SimpleLb::LeastConn | SimpleLb::LeastRequest | SimpleLb::Unspecified) | None => {
            cluster.lb_policy = LbPolicy::LeastRequest as i32;
            if let Some(slow_start_config) = slow_start {
                cluster.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    slow_start_config: Some(slow_start_config),
                    ..Default::default()
                }));
            }
        }
    }
    if let Some(hash) = lb.and_then(|lb| lb.consistent_hash.as_ref()) {
        if let Some(maglev) = &hash.maglev {
            cluster.lb_policy = LbPolicy::Maglev as i32;
            if let Some(size) = maglev.table_size.filter(|s| *s > 0) {
                cluster.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: Some(UInt64Value { value: size }),
                }));
            }
        } else if let Some(ring) = &hash.ring_hash {
            cluster.lb_policy = LbPolicy::RingHash as i32;
            if let Some(size) = ring.minimum_ring_size.filter(|s| *s > 0) {
                cluster.lb_config = Some(ring_hash_config(size));
            }
        } else {
            cluster.lb_policy = LbPolicy::RingHash as i32;
            let size = hash
                .minimum_ring_size
                .filter(|s| *s > 0)
                .unwrap_or(DEFAULT_MINIMUM_RING_SIZE);
            cluster.lb_config = Some(ring_hash_config(size));
        }
    }
    drop_mismatched_lb_config(cluster);
}

fn ring_hash_config(minimum_ring_size: u64) -> LbConfig {
    LbConfig::RingHashLbConfig(RingHashLbConfig {
        minimum_ring_size: Some(UInt64Value {
            value: minimum_ring_size,
        }),
        ..Default::default()
    })
}

/// A warmup window written for LEAST_REQUEST survives a later switch to a hash policy in
/// Istio's order of steps; Envoy wants the config to match the policy, so drop it then.
fn drop_mismatched_lb_config(cluster: &mut Cluster) {
    let policy = LbPolicy::try_from(cluster.lb_policy).unwrap_or_default();
    let matches = match &cluster.lb_config {
        None => true,
        Some(LbConfig::LeastRequestLbConfig(_)) => policy == LbPolicy::LeastRequest,
        Some(LbConfig::RoundRobinLbConfig(_)) => policy == LbPolicy::RoundRobin,
        Some(LbConfig::RingHashLbConfig(_)) => policy == LbPolicy::RingHash,
        Some(LbConfig::MaglevLbConfig(_)) => policy == LbPolicy::Maglev,
        Some(LbConfig::OriginalDstLbConfig(_)) => policy == LbPolicy::ClusterProvided,
    };
    if !matches {
        cluster.lb_config = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::fixtures::{mk_destination_rule, mk_pod, mk_service};
    use meshpilot_model::{Index, Object};
    use prost::Message;
    use std::sync::Arc;

    const NS: &str = "default";

    fn snapshot(objects: Vec<Object>) -> Snapshot {
        let mut index = Index::default();
        for object in objects {
            index.apply(object);
        }
        index.snapshot()
    }

    /// reviews (http 9080) with pods v1 and v2, ratings (grpc 9090), productpage (http 9080)
    /// whose pod the proxy is; plus whatever `extra` adds.
    fn bookinfo(extra: Vec<Object>) -> Snapshot {
        let mut objects = vec![
            Object::Service(mk_service(NS, "reviews", "10.96.120.15", &[("http", 9080)])),
            Object::Service(mk_service(NS, "ratings", "10.96.120.16", &[("grpc", 9090)])),
            Object::Service(mk_service(
                NS,
                "productpage",
                "10.96.120.17",
                &[("http", 9080)],
            )),
            Object::Pod(Arc::new(mk_pod(
                NS,
                "reviews-v1",
                "10.244.1.11",
                &[("app", "reviews"), ("version", "v1")],
            ))),
            Object::Pod(Arc::new(mk_pod(
                NS,
                "reviews-v2",
                "10.244.2.12",
                &[("app", "reviews"), ("version", "v2")],
            ))),
            Object::Pod(Arc::new(mk_pod(
                NS,
                "productpage-v1",
                "10.244.1.20",
                &[("app", "productpage")],
            ))),
        ];
        objects.extend(extra);
        let snapshot = snapshot(objects);
        assert!(snapshot.rejected().is_empty(), "{:?}", snapshot.rejected());
        snapshot
    }

    fn productpage(snapshot: &Snapshot) -> Proxy {
        Proxy::for_pod(snapshot, NS, "productpage-v1").expect("productpage pod")
    }

    fn reviews_dr(spec: &str) -> Object {
        mk_destination_rule(NS, "reviews", spec)
    }

    const TWO_SUBSETS: &str = "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n";

    /// The clusters of the proxy `productpage` for a mesh with the given reviews DR.
    fn clusters_with_dr(spec: &str) -> Vec<Cluster> {
        let snap = bookinfo(vec![reviews_dr(spec)]);
        build_clusters(&snap, &productpage(&snap))
    }

    fn find<'a>(clusters: &'a [Cluster], name: &str) -> &'a Cluster {
        clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
    const REVIEWS_V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
    const REVIEWS_V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";
    const RATINGS: &str = "outbound|9090||ratings.default.svc.cluster.local";

    fn http_options(cluster: &Cluster) -> Option<HttpProtocolOptions> {
        cluster
            .typed_extension_protocol_options
            .get(HTTP_PROTOCOL_OPTIONS)
            .map(|a| HttpProtocolOptions::decode(a.value.as_slice()).expect("HttpProtocolOptions"))
    }

    fn thresholds(cluster: &Cluster) -> &circuit_breakers::Thresholds {
        &cluster.circuit_breakers.as_ref().unwrap().thresholds[0]
    }

    fn istio_field<'a>(cluster: &'a Cluster, key: &str) -> Option<&'a Value> {
        cluster.metadata.as_ref()?.filter_metadata["istio"]
            .fields
            .get(key)
    }

    fn as_str(value: Option<&Value>) -> Option<&str> {
        match value?.kind.as_ref()? {
            envoy_types::pb::google::protobuf::value::Kind::StringValue(s) => Some(s),
            _ => None,
        }
    }

    fn lb_policy(cluster: &Cluster) -> LbPolicy {
        LbPolicy::try_from(cluster.lb_policy).unwrap()
    }

    #[test]
    fn names_and_order_for_bookinfo_with_two_subsets() {
        let clusters = clusters_with_dr(TWO_SUBSETS);
        let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "outbound|9080||productpage.default.svc.cluster.local",
                RATINGS,
                REVIEWS,
                REVIEWS_V1,
                REVIEWS_V2,
                "BlackHoleCluster",
                "PassthroughCluster",
                "inbound|9080||",
                "InboundPassthroughCluster",
            ]
        );
    }

    #[test]
    fn outbound_cluster_defaults() {
        let clusters = clusters_with_dr(TWO_SUBSETS);
        let c = find(&clusters, REVIEWS_V1);
        assert_eq!(discovery_type(c), DiscoveryType::Eds);
        let eds = c.eds_cluster_config.as_ref().unwrap();
        assert_eq!(eds.service_name, REVIEWS_V1);
        assert_eq!(eds.eds_config, Some(ads_config_source()));
        assert_eq!(c.connect_timeout, Some(seconds(10)));
        assert_eq!(lb_policy(c), LbPolicy::LeastRequest);
        assert_eq!(c.lb_config, None);
        assert_eq!(c.common_lb_config, Some(CommonLbConfig::default()));
        assert_eq!(c.alt_stat_name, format!("{REVIEWS_V1};"));
        let t = thresholds(c);
        for limit in [
            &t.max_connections,
            &t.max_pending_requests,
            &t.max_requests,
            &t.max_retries,
        ] {
            assert_eq!(*limit, Some(u32_value(u32::MAX)));
        }
        assert!(t.track_remaining);
        assert!(c.outlier_detection.is_none());
        assert!(
            c.typed_extension_protocol_options.is_empty(),
            "HTTP/1 needs no options"
        );
        assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty());
        assert!(c.filters.is_empty());
        assert_eq!(
            as_str(istio_field(c, "config")),
            Some("/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews")
        );
        assert_eq!(as_str(istio_field(c, "subset")), Some("v1"));
        let expected_services = list_value(vec![struct_value(vec![
            ("host", string_value("reviews.default.svc.cluster.local")),
            ("name", string_value("reviews")),
            ("namespace", string_value("default")),
        ])]);
        assert_eq!(istio_field(c, "services"), Some(&expected_services));
        // No DR for ratings: no config, no subset.
        let ratings = find(&clusters, RATINGS);
        assert!(istio_field(ratings, "config").is_none());
        assert!(istio_field(ratings, "subset").is_none());
        assert!(istio_field(ratings, "services").is_some());
        assert!(istio_field(find(&clusters, REVIEWS), "subset").is_none());
    }

    #[test]
    fn grpc_port_speaks_http2_and_auto_port_follows_downstream() {
        let snap = bookinfo(vec![Object::Service(mk_service(
            NS,
            "sniffed",
            "10.96.0.9",
            &[("", 8080), ("tcp-db", 5432)],
        ))]);
        let clusters = build_clusters(&snap, &productpage(&snap));
        let grpc = http_options(find(&clusters, RATINGS)).unwrap();
        assert!(matches!(
            grpc.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_))
                }
            ))
        ));
        assert!(grpc.common_http_protocol_options.is_none());
        let auto = http_options(find(
            &clusters,
            "outbound|8080||sniffed.default.svc.cluster.local",
        ))
        .unwrap();
        assert_eq!(
            auto.upstream_protocol_options,
            Some(use_downstream_protocol(None))
        );
        let tcp = find(
            &clusters,
            "outbound|5432||sniffed.default.svc.cluster.local",
        );
        assert!(tcp.typed_extension_protocol_options.is_empty());
    }

    #[test]
    fn simple_load_balancers_and_warmup() {
        let lb = |simple: &str| {
            let clusters = clusters_with_dr(&format!(
                "host: reviews\ntrafficPolicy:\n  loadBalancer: {{simple: {simple}}}\n"
            ));
            let c = find(&clusters, REVIEWS).clone();
            (lb_policy(&c), c.lb_config)
        };
        assert_eq!(lb("LEAST_CONN"), (LbPolicy::LeastRequest, None));
        assert_eq!(lb("LEAST_REQUEST"), (LbPolicy::LeastRequest, None));
        assert_eq!(lb("UNSPECIFIED"), (LbPolicy::LeastRequest, None));
        assert_eq!(lb("ROUND_ROBIN"), (LbPolicy::RoundRobin, None));
        assert_eq!(lb("RANDOM"), (LbPolicy::Random, None));

        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 60s}\n",
        );
        let window = Some(SlowStartConfig {
            slow_start_window: Some(seconds(60)),
            ..Default::default()
        });
        assert_eq!(
            find(&clusters, REVIEWS).lb_config,
            Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                slow_start_config: window.clone()
            }))
        );
        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  loadBalancer: {warmupDurationSecs: 60s}\n",
        );
        let c = find(&clusters, REVIEWS);
        assert_eq!(lb_policy(c), LbPolicy::LeastRequest);
        assert_eq!(
            c.lb_config,
            Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                slow_start_config: window,
                ..Default::default()
            }))
        );
    }

    #[test]
    fn consistent_hash_ring_and_maglev() {
        let hash = |block: &str| {
            let clusters = clusters_with_dr(&format!(
                "host: reviews\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: {{httpHeaderName: x-user{block}}}\n"
            ));
            let c = find(&clusters, REVIEWS).clone();
            (lb_policy(&c), c.lb_config)
        };
        let ring = |size| Some(ring_hash_config(size));
        assert_eq!(hash(""), (LbPolicy::RingHash, ring(1024)));
        assert_eq!(
            hash(", minimumRingSize: 2048"),
            (LbPolicy::RingHash, ring(2048))
        );
        assert_eq!(
            hash(", ringHash: {minimumRingSize: 4096}"),
            (LbPolicy::RingHash, ring(4096))
        );
        // An empty ringHash block leaves Envoy's own default in place.
        assert_eq!(hash(", ringHash: {}"), (LbPolicy::RingHash, None));
        assert_eq!(
            hash(", maglev: {tableSize: 65537}"),
            (
                LbPolicy::Maglev,
                Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: Some(UInt64Value { value: 65537 })
                }))
            )
        );
        assert_eq!(hash(", maglev: {}"), (LbPolicy::Maglev, None));
        // A warmup window would be LEAST_REQUEST config on a MAGLEV cluster: dropped.
        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  loadBalancer:\n    warmupDurationSecs: 30s\n    consistentHash: {useSourceIp: true, maglev: {}}\n",
        );
        assert_eq!(find(&clusters, REVIEWS).lb_config, None);
    }

    #[test]
    fn connection_pool_maps_limits_timeouts_and_keepalive() {
        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  connectionPool:\n    tcp: {maxConnections: 100, connectTimeout: 250ms, maxConnectionDuration: 1h, idleTimeout: 10m, tcpKeepalive: {probes: 3, time: 7200s, interval: 75s}}\n    http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRetries: 5, maxRequestsPerConnection: 20, idleTimeout: 30s}\n",
        );
        let c = find(&clusters, REVIEWS);
        assert_eq!(
            c.connect_timeout,
            Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: 250_000_000
            })
        );
        let t = thresholds(c);
        assert_eq!(t.max_connections, Some(u32_value(100)));
        assert_eq!(t.max_pending_requests, Some(u32_value(10)));
        assert_eq!(t.max_requests, Some(u32_value(1000)));
        assert_eq!(t.max_retries, Some(u32_value(5)));
        assert!(t.track_remaining);
        assert_eq!(
            c.upstream_connection_options
                .as_ref()
                .unwrap()
                .tcp_keepalive,
            Some(TcpKeepalive {
                keepalive_probes: Some(u32_value(3)),
                keepalive_time: Some(u32_value(7200)),
                keepalive_interval: Some(u32_value(75)),
            })
        );
        let options = http_options(c).unwrap();
        let common = options.common_http_protocol_options.unwrap();
        // The HTTP idle timeout wins over the TCP one.
        assert_eq!(common.idle_timeout, Some(seconds(30)));
        assert_eq!(common.max_connection_duration, Some(seconds(3600)));
        assert_eq!(common.max_requests_per_connection, Some(u32_value(20)));
        // An HTTP/1 port given common options needs an explicit HTTP/1 choice.
        assert_eq!(
            options.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default()))
                }
            ))
        );
        // Zero counts keep the default; a zero connect timeout too, since Envoy rejects it.
        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  connectionPool:\n    tcp: {maxConnections: 0, connectTimeout: 0s}\n",
        );
        let c = find(&clusters, REVIEWS);
        assert_eq!(
            thresholds(c).max_connections,
            Some(u32_value(u32::MAX)),
            "0 keeps the default"
        );
        assert_eq!(c.connect_timeout, Some(seconds(10)));
    }

    #[test]
    fn connection_pool_http2_upgrade_streams_and_client_protocol() {
        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  connectionPool:\n    http: {h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 50}\n",
        );
        let options = http_options(find(&clusters, REVIEWS)).unwrap();
        assert_eq!(
            options.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions {
                            max_concurrent_streams: Some(u32_value(50)),
                            ..Default::default()
                        }
                    ))
                }
            ))
        );
        assert!(options.common_http_protocol_options.is_some());

        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  connectionPool:\n    http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}\n",
        );
        let options = http_options(find(&clusters, REVIEWS)).unwrap();
        assert_eq!(
            options.upstream_protocol_options,
            Some(use_downstream_protocol(None))
        );
    }

    #[test]
    fn outlier_detection_with_min_health_percent() {
        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 0, interval: 5s, baseEjectionTime: 15m, maxEjectionPercent: 50, minHealthPercent: 30, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 4}\n",
        );
        let c = find(&clusters, REVIEWS);
        assert_eq!(
            c.outlier_detection,
            Some(OutlierDetection {
                consecutive_5xx: Some(u32_value(7)),
                enforcing_consecutive_5xx: Some(u32_value(100)),
                consecutive_gateway_failure: Some(u32_value(0)),
                enforcing_consecutive_gateway_failure: Some(u32_value(0)),
                interval: Some(seconds(5)),
                base_ejection_time: Some(seconds(900)),
                max_ejection_percent: Some(u32_value(50)),
                enforcing_success_rate: Some(u32_value(0)),
                split_external_local_origin_errors: true,
                consecutive_local_origin_failure: Some(u32_value(4)),
                enforcing_consecutive_local_origin_failure: Some(u32_value(100)),
                enforcing_local_origin_success_rate: Some(u32_value(0)),
                ..Default::default()
            })
        );
        let threshold = |c: &Cluster| c.common_lb_config.as_ref().unwrap().healthy_panic_threshold;
        assert_eq!(threshold(c), Some(Percent { value: 30.0 }));

        let clusters = clusters_with_dr(
            "host: reviews\ntrafficPolicy:\n  outlierDetection: {consecutiveErrors: 0}\n",
        );
        let c = find(&clusters, REVIEWS);
        let od = c.outlier_detection.as_ref().unwrap();
        assert_eq!(od.consecutive_5xx, Some(u32_value(0)));
        assert_eq!(od.enforcing_consecutive_5xx, Some(u32_value(0)));
        assert_eq!(threshold(c), Some(Percent { value: 0.0 }), "always written");
    }

    #[test]
    fn port_level_settings_and_subset_override() {
        let snap = bookinfo(vec![
            Object::Service(mk_service(
                NS,
                "reviews",
                "10.96.120.15",
                &[("http", 9080), ("http-admin", 9081)],
            )),
            reviews_dr(
                "host: reviews\ntrafficPolicy:\n  loadBalancer: {simple: RANDOM}\n  outlierDetection: {consecutive5xxErrors: 3}\n  portLevelSettings:\n  - port: {number: 9081}\n    loadBalancer: {simple: ROUND_ROBIN}\nsubsets:\n- name: v1\n  labels: {version: v1}\n  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 7}}\n- name: v2\n  labels: {version: v2}\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 9080}\n      loadBalancer: {simple: LEAST_REQUEST}\n",
            ),
        ]);
        let clusters = build_clusters(&snap, &productpage(&snap));
        let admin = find(
            &clusters,
            "outbound|9081||reviews.default.svc.cluster.local",
        );
        assert_eq!(lb_policy(admin), LbPolicy::RoundRobin);
        assert!(
            admin.outlier_detection.is_none(),
            "port-level replaces the whole policy"
        );
        let main = find(&clusters, REVIEWS);
        assert_eq!(lb_policy(main), LbPolicy::Random);
        assert!(main.outlier_detection.is_some());
        let v1 = find(&clusters, REVIEWS_V1);
        assert_eq!(
            lb_policy(v1),
            LbPolicy::Random,
            "the subset keeps blocks it does not set"
        );
        assert!(v1.outlier_detection.is_some());
        assert_eq!(thresholds(v1).max_connections, Some(u32_value(7)));
        let v2 = find(&clusters, REVIEWS_V2);
        assert_eq!(lb_policy(v2), LbPolicy::LeastRequest);
        assert!(
            v2.outlier_detection.is_none(),
            "a subset port-level entry replaces everything"
        );
        let v1_admin = find(
            &clusters,
            "outbound|9081|v1|reviews.default.svc.cluster.local",
        );
        assert_eq!(lb_policy(v1_admin), LbPolicy::RoundRobin);
        assert_eq!(thresholds(v1_admin).max_connections, Some(u32_value(7)));
    }

    #[test]
    fn passthrough_load_balancer_forwards_to_original_destination() {
        let clusters = clusters_with_dr(
            "host: reviews\nsubsets:\n- name: v1\n  labels: {version: v1}\n  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n- {name: v2, labels: {version: v2}}\n",
        );
        let v1 = find(&clusters, REVIEWS_V1);
        assert_eq!(discovery_type(v1), DiscoveryType::OriginalDst);
        assert_eq!(lb_policy(v1), LbPolicy::ClusterProvided);
        assert!(v1.eds_cluster_config.is_none());
        assert_eq!(
            discovery_type(find(&clusters, REVIEWS_V2)),
            DiscoveryType::Eds
        );
        assert_eq!(discovery_type(find(&clusters, REVIEWS)), DiscoveryType::Eds);

        let clusters = clusters_with_dr(&format!(
            "{TWO_SUBSETS}trafficPolicy: {{loadBalancer: {{simple: PASSTHROUGH}}}}\n"
        ));
        for name in [REVIEWS, REVIEWS_V1, REVIEWS_V2] {
            let c = find(&clusters, name);
            assert_eq!(discovery_type(c), DiscoveryType::OriginalDst, "{name}");
            assert_eq!(lb_policy(c), LbPolicy::ClusterProvided, "{name}");
            assert!(c.eds_cluster_config.is_none(), "{name}");
        }
    }

    #[test]
    fn headless_service_uses_original_destination() {
        let mut headless = mk_service(NS, "db", "10.96.0.1", &[("tcp", 5432)]);
        headless.cluster_ips.clear();
        headless.headless = true;
        let snap = bookinfo(vec![
            Object::Service(headless),
            mk_destination_rule(
                NS,
                "db",
                "host: db\ntrafficPolicy:\n  loadBalancer: {consistentHash: {useSourceIp: true}}\n  outlierDetection: {consecutive5xxErrors: 2}\n",
            ),
        ]);
        let clusters = build_clusters(&snap, &productpage(&snap));
        let c = find(&clusters, "outbound|5432||db.default.svc.cluster.local");
        assert_eq!(discovery_type(c), DiscoveryType::OriginalDst);
        assert_eq!(
            lb_policy(c),
            LbPolicy::ClusterProvided,
            "no hashing over original destinations"
        );
        assert_eq!(c.lb_config, None);
        assert!(c.eds_cluster_config.is_none());
        assert!(c.outlier_detection.is_some());
    }

    #[test]
    fn inbound_clusters_for_the_proxy_pod() {
        let snap = bookinfo(vec![
            Object::Service(mk_service(
                NS,
                "productpage-grpc",
                "10.96.0.2",
                &[("grpc", 9443)],
            )),
            mk_destination_rule(
                NS,
                "productpage",
                "host: productpage\ntrafficPolicy:\n  connectionPool: {tcp: {maxConnections: 42}}\n  outlierDetection: {consecutive5xxErrors: 1}\n  loadBalancer: {simple: RANDOM}\n",
            ),
        ]);
        let proxy = productpage(&snap);
        let clusters = build_clusters(&snap, &proxy);
        let c = find(&clusters, "inbound|9080||");
        assert_eq!(discovery_type(c), DiscoveryType::OriginalDst);
        assert_eq!(lb_policy(c), LbPolicy::ClusterProvided);
        assert_eq!(c.cleanup_interval, Some(seconds(9_223_372_035)));
        assert_eq!(c.connect_timeout, Some(seconds(10)));
        assert_eq!(c.alt_stat_name, "inbound|9080||;");
        assert_eq!(
            c.upstream_bind_config.as_ref().unwrap().source_address,
            Some(bind_address("127.0.0.6"))
        );
        assert!(c.eds_cluster_config.is_none());
        assert_eq!(
            thresholds(c).max_connections,
            Some(u32_value(42)),
            "pool applies inbound"
        );
        assert!(
            c.outlier_detection.is_none(),
            "outlier detection is outbound only"
        );
        assert_eq!(
            as_str(istio_field(c, "config")),
            Some("/apis/networking.istio.io/v1/namespaces/default/destination-rule/productpage")
        );
        let expected_services = list_value(vec![struct_value(vec![
            (
                "host",
                string_value("productpage.default.svc.cluster.local"),
            ),
            ("name", string_value("productpage")),
            ("namespace", string_value("default")),
        ])]);
        assert_eq!(istio_field(c, "services"), Some(&expected_services));
        // Only services selecting the pod get inbound clusters.
        assert!(clusters.iter().all(|c| c.name != "inbound|9443||"));
        // reviews' proxy gets none of productpage's.
        let reviews = Proxy::for_pod(&snap, NS, "reviews-v1").unwrap();
        let names: Vec<String> = build_clusters(&snap, &reviews)
            .into_iter()
            .filter(|c| c.name.starts_with("inbound|"))
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["inbound|9080||"]);
    }

    #[test]
    fn inbound_grpc_cluster_speaks_http2_and_has_no_config_without_policy() {
        let mut grpc = mk_service(NS, "api", "10.96.0.3", &[("grpc", 9443), ("http", 8080)]);
        grpc.selector = Some(meshpilot_model::fixtures::mk_labels(&[(
            "app",
            "productpage",
        )]));
        let snap = bookinfo(vec![
            Object::Service(grpc),
            mk_destination_rule(NS, "api", TWO_SUBSETS.replace("reviews", "api").as_str()),
        ]);
        let clusters = build_clusters(&snap, &productpage(&snap));
        let names: Vec<&str> = clusters
            .iter()
            .filter(|c| c.name.starts_with("inbound|"))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["inbound|8080||", "inbound|9080||", "inbound|9443||"]
        );
        let c = find(&clusters, "inbound|9443||");
        assert!(matches!(
            http_options(c).unwrap().upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_))
                }
            ))
        ));
        assert!(
            istio_field(c, "config").is_none(),
            "a DR without trafficPolicy is not named"
        );
    }

    #[test]
    fn special_clusters() {
        let snap = bookinfo(Vec::new());
        let clusters = build_clusters(&snap, &productpage(&snap));

        let black_hole = find(&clusters, "BlackHoleCluster");
        assert_eq!(discovery_type(black_hole), DiscoveryType::Static);
        assert_eq!(lb_policy(black_hole), LbPolicy::RoundRobin);
        assert_eq!(black_hole.connect_timeout, Some(seconds(10)));
        assert!(black_hole.load_assignment.is_none());

        let passthrough = find(&clusters, "PassthroughCluster");
        assert_eq!(discovery_type(passthrough), DiscoveryType::OriginalDst);
        assert_eq!(lb_policy(passthrough), LbPolicy::ClusterProvided);
        assert_eq!(passthrough.connect_timeout, Some(seconds(10)));
        let options = http_options(passthrough).unwrap();
        assert_eq!(
            options.upstream_protocol_options,
            Some(use_downstream_protocol(None))
        );
        assert_eq!(
            options.common_http_protocol_options.unwrap().idle_timeout,
            Some(seconds(300))
        );
        assert!(passthrough.upstream_bind_config.is_none());

        let inbound = find(&clusters, "InboundPassthroughCluster");
        assert_eq!(discovery_type(inbound), DiscoveryType::OriginalDst);
        assert_eq!(lb_policy(inbound), LbPolicy::ClusterProvided);
        assert_eq!(
            inbound.typed_extension_protocol_options,
            passthrough.typed_extension_protocol_options
        );
        let bind = inbound.upstream_bind_config.as_ref().unwrap();
        assert_eq!(bind.source_address, Some(bind_address("127.0.0.6")));
        assert!(bind.extra_source_addresses.is_empty());

        // A dual-stack pod also binds ::6.
        let mut proxy = productpage(&snap);
        proxy.ips.push("fd00::20".parse().unwrap());
        let clusters = build_clusters(&snap, &proxy);
        let bind = find(&clusters, "InboundPassthroughCluster")
            .upstream_bind_config
            .clone()
            .unwrap();
        assert_eq!(
            bind.extra_source_addresses[0].address,
            Some(bind_address("::6"))
        );
    }
}
