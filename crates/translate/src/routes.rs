//! RDS: the route configurations a sidecar's HTTP listeners name, with VirtualService rules
//! translated into Envoy routes.
//!
//! Two kinds of names are served, as istiod serves them:
//! - `"<port>"` for the shared `0.0.0.0_<port>` listener: one virtual host per HTTP or sniffed
//!   service on that port (sorted by name), then the `allow_any` catch-all;
//! - `"<fqdn>:<port>"` for a sniffed per-service listener: only that service's virtual host,
//!   with domains `["*"]` and no catch-all.
//!
//! Any other name is answered with an empty configuration, so Envoy does not wait for it.

mod domains;
#[cfg(test)]
mod tests;
mod virtual_service;

use crate::envoy::{bool_value, seconds, u32_value};
use crate::names::{Direction, PASSTHROUGH_CLUSTER, cluster_name, virtual_host_name};
use crate::policy::effective_policy;
use crate::targets::visible_services;
use domains::DomainClaims;
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    retry_policy::RetryHostPredicate, retry_policy::retry_host_predicate, route::Action,
    route_action::ClusterSpecifier, route_action::HashPolicy, route_action::hash_policy,
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::google::protobuf::Duration;
use meshpilot_api::ConsistentHashLb;
use meshpilot_model::{Protocol, Proxy, Service, Snapshot, VirtualServiceConfig, host_matches};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Istio raises Envoy's 4 KiB default so `directResponse` bodies up to 1 MiB are served.
const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;
/// Route name istiod gives a service's route when no VirtualService applies.
const DEFAULT_ROUTE_NAME: &str = "default";
/// Name of the catch-all virtual host and route under the default ALLOW_ANY outbound policy.
const ALLOW_ANY: &str = "allow_any";
/// Istio's mesh-wide default: retry connection-level failures twice on another host.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
/// Istio keeps non-service VirtualService hosts (e.g. `bookinfo.com`) on port 80 only.
const NON_SERVICE_HOST_PORT: u16 = 80;

/// One RouteConfiguration per requested name, in the order requested.
pub fn build_routes(
    snapshot: &Snapshot,
    proxy: &Proxy,
    names: &[String],
) -> Vec<RouteConfiguration> {
    // Sniffed routes are slices of their port's route: build each port's hosts once, and hand
    // them over (not a copy) to the last name that needs them.
    let parsed: Vec<Option<RouteName<'_>>> = names.iter().map(|n| parse_route_name(n)).collect();
    let mut uses: HashMap<u16, usize> = HashMap::new();
    for name in parsed.iter().flatten() {
        *uses.entry(name.port()).or_default() += 1;
    }
    let mut hosts_by_port: HashMap<u16, Vec<VirtualHost>> = HashMap::new();
    let mut hosts_for = |port: u16| -> Vec<VirtualHost> {
        let left = uses.get_mut(&port).expect("counted above");
        *left -= 1;
        if *left == 0 {
            hosts_by_port
                .remove(&port)
                .unwrap_or_else(|| build_port_virtual_hosts(snapshot, proxy, port))
        } else {
            hosts_by_port
                .entry(port)
                .or_insert_with(|| build_port_virtual_hosts(snapshot, proxy, port))
                .clone()
        }
    };
    names
        .iter()
        .zip(parsed)
        .map(|(name, parsed)| match parsed {
            Some(RouteName::Port(port)) => {
                let mut virtual_hosts = hosts_for(port);
                virtual_hosts.push(allow_any_virtual_host());
                route_configuration(name, virtual_hosts)
            }
            Some(RouteName::Sniffed { host, port }) => {
                let virtual_hosts = sniffed_virtual_hosts(hosts_for(port), host, name);
                route_configuration(name, virtual_hosts)
            }
            None => empty_route_configuration(name),
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum RouteName<'a> {
    /// `"9080"`: the shared HTTP listener of a port.
    Port(u16),
    /// `"reviews.default.svc.cluster.local:9080"`: a protocol-sniffing service listener.
    Sniffed { host: &'a str, port: u16 },
}

impl RouteName<'_> {
    fn port(&self) -> u16 {
        match self {
            RouteName::Port(port) | RouteName::Sniffed { port, .. } => *port,
        }
    }
}

/// The port a route configuration name serves (`"80"`, or a sniffed `"<fqdn>:80"`), if it is one
/// this module builds.
pub fn route_name_port(name: &str) -> Option<u16> {
    parse_route_name(name).map(|n| n.port())
}

/// The ports whose route configurations a change of VirtualServices from `old` to `new` can
/// alter: the service ports of every host the changed VirtualServices name (before or after),
/// and 80 for hosts naming no service. `None` (any) when one names a wildcard host.
pub fn route_ports_touched_by(
    old: &Snapshot,
    new: &Snapshot,
    changed: &[(&str, &str)],
) -> Option<std::collections::BTreeSet<u16>> {
    let changed: HashSet<&(&str, &str)> = changed.iter().collect();
    let mut ports = std::collections::BTreeSet::new();
    for snapshot in [old, new] {
        for vs in snapshot.virtual_services() {
            let key = (vs.meta.namespace.as_str(), vs.meta.name.as_str());
            if !changed.contains(&key) {
                continue;
            }
            for host in &vs.spec.hosts {
                if host.starts_with('*') {
                    return None;
                }
                match snapshot.service(host) {
                    Some(service) => ports.extend(service.ports.iter().map(|p| p.port)),
                    None => {
                        ports.insert(NON_SERVICE_HOST_PORT);
                    }
                }
            }
        }
    }
    Some(ports)
}

fn parse_route_name(name: &str) -> Option<RouteName<'_>> {
    match name.rsplit_once(':') {
        None => parse_port(name).map(RouteName::Port),
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            parse_port(port).map(|port| RouteName::Sniffed { host, port })
        }
        Some(_) => None,
    }
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|port| *port != 0)
}

fn route_configuration(name: &str, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(bool_value(false)),
        max_direct_response_body_size_bytes: Some(u32_value(MAX_DIRECT_RESPONSE_BODY_BYTES)),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

fn empty_route_configuration(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        validate_clusters: Some(bool_value(false)),
        ..Default::default()
    }
}

/// Whether `service` is reached through the HTTP route configuration of `port`.
fn routes_http_on(service: &Service, port: u16) -> bool {
    service
        .port(port)
        .is_some_and(|p| p.protocol.is_http() || p.protocol == Protocol::Auto)
}

/// A virtual host before its domains are worked out.
struct VirtualHostSource<'a> {
    /// `<host>:<port>`.
    name: String,
    target: HostTarget<'a>,
    routes: Vec<Route>,
}

enum HostTarget<'a> {
    Service(&'a Service),
    /// A VirtualService host naming no service on this port: matched literally.
    Host(&'a str),
}

/// The virtual hosts of route `"<port>"`, sorted by name, without the catch-all.
fn build_port_virtual_hosts(snapshot: &Snapshot, proxy: &Proxy, port: u16) -> Vec<VirtualHost> {
    let services: Vec<&Arc<Service>> = visible_services(snapshot, proxy)
        .filter(|s| routes_http_on(s, port))
        .collect();
    let sources = plan_virtual_hosts(snapshot, proxy, port, &services);

    let mut claims = DomainClaims::new(
        sources
            .iter()
            .filter(|s| matches!(s.target, HostTarget::Service(_)))
            .flat_map(|s| [s.name.clone(), source_host(s).to_string()]),
    );
    // `*` belongs to the catch-all; Envoy refuses a second wildcard virtual host.
    claims.claim(vec!["*".to_string()], &[]);
    let mut seen_names = HashSet::new();
    let mut virtual_hosts = Vec::new();
    // Claim order decides which virtual host keeps a contested name or domain: VirtualService
    // hosts first, in VirtualService precedence, then services without one.
    for source in sources {
        if !seen_names.insert(source.name.clone()) {
            tracing::debug!(name = %source.name, "duplicate virtual host dropped");
            continue;
        }
        let domains = match source.target {
            HostTarget::Service(service) => {
                let (all, alternates) = domains::service_domains(service, &proxy.dns_domain);
                claims.claim(all, &alternates)
            }
            HostTarget::Host(host) => claims.claim(vec![host.to_string()], &[]),
        };
        if domains.is_empty() {
            continue;
        }
        virtual_hosts.push(VirtualHost {
            name: source.name,
            domains,
            routes: source.routes,
            include_request_attempt_count: true,
            ..Default::default()
        });
    }
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    virtual_hosts
}

fn source_host<'a>(source: &'a VirtualHostSource<'_>) -> &'a str {
    match source.target {
        HostTarget::Service(service) => &service.hostname,
        HostTarget::Host(host) => host,
    }
}

/// Decides which VirtualService (if any) routes each service on `port`, in claim order.
fn plan_virtual_hosts<'a>(
    snapshot: &'a Snapshot,
    proxy: &Proxy,
    port: u16,
    services: &[&'a Arc<Service>],
) -> Vec<VirtualHostSource<'a>> {
    // Exact hosts by lookup: with thousands of VirtualServices and services, a scan per host
    // was most of a route build. Wildcard hosts (rare) still scan.
    let service_hosts: HashSet<&str> = services.iter().map(|s| &*s.hostname).collect();
    let names_a_service = |host: &str| {
        if host.starts_with('*') {
            services.iter().any(|s| host_matches(host, &s.hostname))
        } else {
            service_hosts.contains(host)
        }
    };
    // A VirtualService with no rule left for this proxy and port leaves its hosts to others.
    let routed: Vec<(&'a VirtualServiceConfig, Vec<Route>)> =
        virtual_service::candidates(snapshot, proxy)
            .into_iter()
            .filter(|vs| {
                port == NON_SERVICE_HOST_PORT || vs.spec.hosts.iter().any(|h| names_a_service(h))
            })
            .map(|vs| {
                (
                    vs,
                    virtual_service::build_http_routes(snapshot, proxy, vs, port),
                )
            })
            .filter(|(_, routes)| !routes.is_empty())
            .collect();
    let owner_index = OwnerIndex::new(&routed);
    let owners: Vec<Option<usize>> = services
        .iter()
        .map(|s| owner_index.owner(&s.hostname))
        .collect();

    let mut sources = Vec::new();
    for (index, (vs, routes)) in routed.into_iter().enumerate() {
        let mut targets: Vec<HostTarget<'a>> = Vec::new();
        if port == NON_SERVICE_HOST_PORT {
            let hosts = vs.spec.hosts.iter().filter(|h| !names_a_service(h));
            targets.extend(hosts.map(|h| HostTarget::Host(h)));
        }
        let owned = services.iter().zip(&owners);
        targets.extend(
            owned
                .filter(|(_, o)| **o == Some(index))
                .map(|(service, _)| HostTarget::Service(service)),
        );
        // Most VirtualServices have one host: the last one takes the routes themselves.
        let mut routes = Some(routes);
        let last = targets.len().saturating_sub(1);
        for (i, target) in targets.into_iter().enumerate() {
            let host = match target {
                HostTarget::Service(service) => &service.hostname,
                HostTarget::Host(host) => host,
            };
            let routes = if i == last {
                routes.take().unwrap_or_default()
            } else {
                routes.clone().unwrap_or_default()
            };
            sources.push(VirtualHostSource {
                name: virtual_host_name(host, port),
                target,
                routes,
            });
        }
    }
    for (service, _) in services.iter().zip(&owners).filter(|(_, o)| o.is_none()) {
        sources.push(VirtualHostSource {
            name: virtual_host_name(&service.hostname, port),
            target: HostTarget::Service(service),
            routes: vec![build_default_route(snapshot, proxy, service, port)],
        });
    }
    sources
}

/// Which VirtualService routes a hostname: the first naming it exactly, else the one with the
/// most specific wildcard covering it (the earlier one on a tie). No merging, as for istiod.
struct OwnerIndex<'a> {
    /// Exact host → the first VirtualService naming it.
    exact: HashMap<&'a str, usize>,
    /// `(index, pattern)` of every wildcard host, in VirtualService order.
    wildcards: Vec<(usize, &'a str)>,
}

impl<'a> OwnerIndex<'a> {
    fn new(routed: &[(&'a VirtualServiceConfig, Vec<Route>)]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        for (index, (vs, _)) in routed.iter().enumerate() {
            for host in &vs.spec.hosts {
                if host.starts_with('*') {
                    wildcards.push((index, host.as_str()));
                } else {
                    exact.entry(host.as_str()).or_insert(index);
                }
            }
        }
        OwnerIndex { exact, wildcards }
    }

    fn owner(&self, hostname: &str) -> Option<usize> {
        if let Some(index) = self.exact.get(hostname) {
            return Some(*index);
        }
        let mut best: Option<(usize, usize)> = None;
        for (index, pattern) in &self.wildcards {
            if host_matches(pattern, hostname)
                && best.is_none_or(|(length, at)| {
                    pattern.len() > length || (pattern.len() == length && *index < at)
                })
            {
                best = Some((pattern.len(), *index));
            }
        }
        best.map(|(_, index)| index)
    }
}

/// The single virtual host of a sniffed route: the one serving `host`, answering any domain.
fn sniffed_virtual_hosts(
    port_hosts: Vec<VirtualHost>,
    host: &str,
    route_name: &str,
) -> Vec<VirtualHost> {
    let mut matched: Vec<VirtualHost> = port_hosts
        .into_iter()
        .filter(|vh| vh.domains.iter().any(|d| d == host || d == route_name))
        .collect();
    if let [only] = matched.as_mut_slice() {
        only.domains = vec!["*".to_string()];
    }
    matched
}

/// The route of a service no VirtualService covers: everything to its default cluster.
fn build_default_route(snapshot: &Snapshot, proxy: &Proxy, service: &Service, port: u16) -> Route {
    let hash_policy = consistent_hash_policy(snapshot, proxy, &service.hostname, port, None);
    let mut action = RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name(
            Direction::Outbound,
            port,
            "",
            &service.hostname,
        ))),
        retry_policy: Some(default_retry_policy(hash_policy.is_none())),
        hash_policy: hash_policy.into_iter().collect(),
        ..Default::default()
    };
    set_timeouts(&mut action, seconds(0));
    Route {
        name: DEFAULT_ROUTE_NAME.to_string(),
        r#match: Some(prefix_match("/")),
        decorator: Some(decorator(format!("{}:{port}/*", service.hostname))),
        action: Some(Action::Route(action)),
        ..Default::default()
    }
}

/// `allow_any`: unknown hosts pass through to their original destination (ALLOW_ANY policy).
fn allow_any_virtual_host() -> VirtualHost {
    let mut action = RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH_CLUSTER.to_string())),
        ..Default::default()
    };
    set_timeouts(&mut action, seconds(0));
    VirtualHost {
        name: ALLOW_ANY.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: ALLOW_ANY.to_string(),
            r#match: Some(prefix_match("/")),
            action: Some(Action::Route(action)),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

fn decorator(operation: String) -> Decorator {
    Decorator {
        operation,
        ..Default::default()
    }
}

/// Sets the route timeout and the gRPC timeout cap to the same value (`0s` = none). Istio still
/// writes the deprecated `max_grpc_timeout` because its replacement regressed, so we do too.
#[allow(deprecated)]
fn set_timeouts(action: &mut RouteAction, timeout: Duration) {
    action.timeout = Some(timeout);
    action.max_grpc_timeout = Some(timeout);
}

/// Istio's default retry policy. With consistent hashing the `previous_hosts` predicate is left
/// out: retrying on another host would defeat the hash.
fn default_retry_policy(prefer_other_hosts: bool) -> RetryPolicy {
    let retry_host_predicate = if prefer_other_hosts {
        vec![RetryHostPredicate {
            name: PREVIOUS_HOSTS_PREDICATE.to_string(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(
                crate::envoy::any(PreviousHostsPredicate {}),
            )),
        }]
    } else {
        Vec::new()
    };
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: Some(u32_value(2)),
        retry_host_predicate,
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// The route `hash_policy` matching the consistent-hash load balancer the host's
/// DestinationRule sets for this port and subset, if any.
fn consistent_hash_policy(
    snapshot: &Snapshot,
    proxy: &Proxy,
    host: &str,
    port: u16,
    subset: Option<&str>,
) -> Option<HashPolicy> {
    let rule = snapshot.destination_rule_for(host, &proxy.namespace);
    let load_balancer = effective_policy(rule.as_deref(), port, subset).load_balancer?;
    build_hash_policy(load_balancer.consistent_hash.as_ref()?)
}

fn build_hash_policy(hash: &ConsistentHashLb) -> Option<HashPolicy> {
    let specifier = if let Some(header) = hash.http_header_name.as_deref().filter(|h| !h.is_empty())
    {
        hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: header.to_string(),
            ..Default::default()
        })
    } else if let Some(cookie) = &hash.http_cookie {
        hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(crate::envoy::duration),
            path: cookie.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
            source_ip: true,
        })
    } else if let Some(name) = hash
        .http_query_parameter_name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter {
            name: name.to_string(),
        })
    } else {
        return None;
    };
    Some(HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    })
}
