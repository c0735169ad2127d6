//! istioctl-style summaries of an Envoy admin config dump (protobuf JSON, `Any`s expanded with
//! their `@type`): which resources a filter selects, and the table rows describing them.
//!
//! Everything works on the JSON, so a dump fetched from a control plane and one rendered
//! offline read the same way.

use anyhow::{Result, bail};
use serde_json::Value;
use std::cmp::Ordering;

const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
const BLACKHOLE: &str = "BlackHoleCluster";
const PASSTHROUGH: &str = "PassthroughCluster";

/// The four sections of a config dump a table can be made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
}

impl Section {
    /// The `envoy.admin.v3` message of this section.
    fn dump_type(self) -> &'static str {
        match self {
            Section::Listeners => "ListenersConfigDump",
            Section::Routes => "RoutesConfigDump",
            Section::Clusters => "ClustersConfigDump",
            Section::Endpoints => "EndpointsConfigDump",
        }
    }

    /// (list field, field of the resource within an entry) for dynamic then static entries.
    fn entry_fields(self) -> [(&'static str, &'static [&'static str]); 2] {
        match self {
            Section::Listeners => [
                ("dynamic_listeners", &["active_state", "listener"]),
                ("static_listeners", &["listener"]),
            ],
            Section::Routes => [
                ("dynamic_route_configs", &["route_config"]),
                ("static_route_configs", &["route_config"]),
            ],
            Section::Clusters => [
                ("dynamic_active_clusters", &["cluster"]),
                ("static_clusters", &["cluster"]),
            ],
            Section::Endpoints => [
                ("dynamic_endpoint_configs", &["endpoint_config"]),
                ("static_endpoint_configs", &["endpoint_config"]),
            ],
        }
    }
}

/// The resources of one section, dynamic ones first.
pub fn resources(dump: &Value, section: Section) -> Result<Vec<&Value>> {
    let wanted = format!(".{}", section.dump_type());
    let Some(config) = dump["configs"].as_array().and_then(|configs| {
        configs
            .iter()
            .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(&wanted)))
    }) else {
        bail!("the config dump has no {} section", section.dump_type());
    };
    let mut found = Vec::new();
    for (list, path) in section.entry_fields() {
        for entry in config[list].as_array().into_iter().flatten() {
            let resource = path.iter().fold(entry, |v, key| &v[*key]);
            if resource.is_object() {
                found.push(resource);
            }
        }
    }
    Ok(found)
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(value, |v, key| &v[*key])
        .as_str()
        .unwrap_or("")
}

/// Integers in protobuf JSON are numbers, or strings for 64-bit ones.
fn number(value: &Value, path: &[&str]) -> Option<u64> {
    let v = path.iter().fold(value, |v, key| &v[*key]);
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn array(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// `name.namespace` of the Istio config recorded in `metadata.filter_metadata.istio.config`
/// (`/apis/networking.istio.io/v1/namespaces/NS/KIND/NAME`), empty without one.
fn istio_config_owner(resource: &Value) -> String {
    let path = text(
        resource,
        &["metadata", "filter_metadata", "istio", "config"],
    );
    if path.is_empty() {
        return String::new();
    }
    if !path.starts_with("/apis/networking.istio.io/") {
        return "<unknown>".into();
    }
    let pieces: Vec<&str> = path.split('/').collect();
    if pieces.len() != 8 {
        return String::new();
    }
    format!("{}.{}", pieces[7], pieces[5])
}

// ---- listeners ----------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct ListenerFilter {
    pub address: Option<String>,
    pub port: Option<u32>,
}

fn listener_address(listener: &Value) -> &str {
    let socket = text(listener, &["address", "socket_address", "address"]);
    if socket.is_empty() {
        text(listener, &["address", "pipe", "path"])
    } else {
        socket
    }
}

fn listener_addresses(listener: &Value) -> Vec<&str> {
    let mut all = vec![listener_address(listener)];
    all.extend(
        array(&listener["additional_addresses"])
            .map(|a| text(a, &["address", "socket_address", "address"])),
    );
    all
}

fn listener_port(listener: &Value) -> u64 {
    number(listener, &["address", "socket_address", "port_value"]).unwrap_or(0)
}

fn filter_chains(listener: &Value) -> Vec<&Value> {
    let mut chains: Vec<&Value> = array(&listener["filter_chains"]).collect();
    if listener["default_filter_chain"].is_object() {
        chains.push(&listener["default_filter_chain"]);
    }
    chains
}

fn is_filter(filter: &Value, name: &str, type_suffix: &str) -> bool {
    filter["name"].as_str() == Some(name)
        || text(filter, &["typed_config", "@type"]).ends_with(type_suffix)
}

fn is_hcm(filter: &Value) -> bool {
    is_filter(filter, HCM_FILTER, ".HttpConnectionManager")
}

/// A TCP proxy that forwards somewhere; one into the black hole does not count.
fn is_forwarding_tcp_proxy(filter: &Value) -> bool {
    is_filter(filter, TCP_PROXY_FILTER, ".TcpProxy")
        && !filter["typed_config"].to_string().contains(BLACKHOLE)
}

/// HTTP, TCP, HTTP+TCP or UNKNOWN, by the network filters of all chains.
fn listener_type(listener: &Value) -> &'static str {
    let filters: Vec<&Value> = filter_chains(listener)
        .into_iter()
        .flat_map(|chain| array(&chain["filters"]))
        .collect();
    let http = filters.iter().any(|f| is_hcm(f));
    let tcp = filters.iter().any(|f| is_forwarding_tcp_proxy(f));
    match (http, tcp) {
        (true, false) => "HTTP",
        (true, true) => "HTTP+TCP",
        (false, true) => "TCP",
        (false, false) => "UNKNOWN",
    }
}

/// The listeners the filter selects, by port, address, then type.
pub fn select_listeners<'a>(dump: &'a Value, filter: &ListenerFilter) -> Result<Vec<&'a Value>> {
    let mut listeners: Vec<&Value> = resources(dump, Section::Listeners)?
        .into_iter()
        .filter(|l| {
            filter.port.is_none_or(|p| listener_port(l) == u64::from(p))
                && filter.address.as_ref().is_none_or(|wanted| {
                    listener_addresses(l)
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(wanted))
                })
        })
        .collect();
    listeners.sort_by(|a, b| {
        listener_port(a)
            .cmp(&listener_port(b))
            .then_with(|| listener_address(a).cmp(listener_address(b)))
            .then_with(|| listener_type(a).cmp(listener_type(b)))
    });
    Ok(listeners)
}

/// `ADDRESSES  PORT  MATCH  DESTINATION`, one row per filter chain.
pub fn listener_rows(listeners: &[&Value]) -> Vec<Vec<String>> {
    let mut rows = vec![crate::tables::header(&[
        "ADDRESSES",
        "PORT",
        "MATCH",
        "DESTINATION",
    ])];
    for listener in listeners {
        let addresses = listener_addresses(listener).join(",");
        let port = listener_port(listener).to_string();
        let mut chains: Vec<(String, String)> = filter_chains(listener)
            .into_iter()
            .map(|chain| {
                (
                    describe_chain_match(&chain["filter_chain_match"]),
                    describe_destination(&chain["filters"]),
                )
            })
            .collect();
        chains.sort_by(|a, b| b.1.cmp(&a.1));
        for (matched, destination) in chains {
            rows.push(vec![addresses.clone(), port.clone(), matched, destination]);
        }
    }
    rows
}

/// ALPN lists Istio sets, shown by name instead of spelled out.
const NAMED_ALPNS: [(&str, &[&str]); 4] = [
    (
        "App: HTTP TLS",
        &[
            "http/1.0",
            "http/1.1",
            "h2c",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2",
        ],
    ),
    (
        "App: Istio HTTP Plain",
        &["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
    ),
    ("App: TCP TLS", &["istio-peer-exchange", "istio"]),
    ("App: HTTP", &["http/1.0", "http/1.1", "h2c"]),
];

fn describe_chain_match(m: &Value) -> String {
    let mut parts = Vec::new();
    let server_names = strings(&m["server_names"]);
    if !server_names.is_empty() {
        parts.push(format!("SNI: {}", server_names.join(",")));
    }
    let transport = text(m, &["transport_protocol"]);
    if !transport.is_empty() {
        parts.push(format!("Trans: {transport}"));
    }
    let alpns = strings(&m["application_protocols"]);
    if !alpns.is_empty() {
        match NAMED_ALPNS
            .iter()
            .find(|(_, list)| *list == alpns.as_slice())
        {
            Some((name, _)) => parts.push(name.to_string()),
            None => parts.push(format!("App: {}", alpns.join(","))),
        }
    }
    let port = number(m, &["destination_port"])
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let prefixes: Vec<String> = array(&m["prefix_ranges"])
        .map(|r| {
            format!(
                "{}/{}",
                text(r, &["address_prefix"]),
                number(r, &["prefix_len"]).unwrap_or(0)
            )
        })
        .collect();
    if !prefixes.is_empty() {
        parts.push(format!("Addr: {}{port}", prefixes.join(",")));
    } else if !port.is_empty() {
        parts.push(format!("Addr: *{port}"));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

/// Special clusters (`PassthroughCluster`, ...) print bare, others as `Cluster: NAME`.
fn describe_cluster(name: &str) -> String {
    if name.contains("Cluster") {
        name.to_string()
    } else {
        format!("Cluster: {name}")
    }
}

/// Where the first HTTP connection manager or forwarding TCP proxy of a chain sends traffic.
fn describe_destination(filters: &Value) -> String {
    for filter in array(filters) {
        let config = &filter["typed_config"];
        if is_hcm(filter) {
            if config["route_config"].is_object() {
                return describe_inline_route(&config["route_config"]);
            }
            let rds = text(config, &["rds", "route_config_name"]);
            if !rds.is_empty() {
                return format!("Route: {rds}");
            }
            return "HTTP".into();
        }
        if is_forwarding_tcp_proxy(filter) {
            let weighted: Vec<String> = array(&config["weighted_clusters"]["clusters"])
                .map(|c| {
                    format!(
                        "{} ({})",
                        text(c, &["name"]),
                        number(c, &["weight"]).unwrap_or(0)
                    )
                })
                .collect();
            if !weighted.is_empty() {
                return format!("Clusters: {}", weighted.join(", "));
            }
            return describe_cluster(text(config, &["cluster"]));
        }
    }
    "Non-HTTP/Non-TCP".into()
}

fn describe_inline_route(route_config: &Value) -> String {
    if let Some(cluster) = match_all_cluster(route_config) {
        return describe_cluster(cluster);
    }
    let vhosts: Vec<String> = array(&route_config["virtual_hosts"])
        .map(|vh| {
            let domains = strings(&vh["domains"]);
            let routes: Vec<String> = array(&vh["routes"])
                .map(|r| describe_route_match(&r["match"]))
                .collect();
            let routes = routes.join(", ");
            if domains == ["*"] {
                routes
            } else {
                format!("{} {routes}", domains.join("/"))
            }
        })
        .collect();
    format!("Inline Route: {}", vhosts.join("; "))
}

/// The cluster of a route config that sends everything (`*`, prefix `/`) to one cluster.
fn match_all_cluster(route_config: &Value) -> Option<&str> {
    let [vhost] = route_config["virtual_hosts"].as_array()?.as_slice() else {
        return None;
    };
    if strings(&vhost["domains"]) != ["*"] {
        return None;
    }
    let [route] = vhost["routes"].as_array()?.as_slice() else {
        return None;
    };
    if text(route, &["match", "prefix"]) != "/" {
        return None;
    }
    route["route"]["cluster"].as_str()
}

fn describe_route_match(m: &Value) -> String {
    let mut conditions = Vec::new();
    let prefix = text(m, &["prefix"]);
    if !prefix.is_empty() {
        conditions.push(format!("{prefix}*"));
    }
    let separated = text(m, &["path_separated_prefix"]);
    if !separated.is_empty() {
        conditions.push(format!("PathPrefix:{separated}"));
    }
    let path = text(m, &["path"]);
    if !path.is_empty() {
        conditions.push(path.to_string());
    }
    let regex = text(m, &["safe_regex", "regex"]);
    if !regex.is_empty() {
        conditions.push(format!("regex {regex}"));
    }
    conditions.join(" ")
}

// ---- routes -------------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct RouteFilter {
    pub name: Option<String>,
}

/// The route configs the filter selects: numeric (port) names in order, then the rest as sent.
pub fn select_routes<'a>(dump: &'a Value, filter: &RouteFilter) -> Result<Vec<&'a Value>> {
    let mut routes: Vec<&Value> = resources(dump, Section::Routes)?
        .into_iter()
        .filter(|r| filter.name.as_ref().is_none_or(|n| text(r, &["name"]) == n))
        .collect();
    let port = |r: &Value| text(r, &["name"]).parse::<u64>().ok();
    routes.sort_by(|a, b| match (port(a), port(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    Ok(routes)
}

/// `NAME  VHOST NAME  DOMAINS  MATCH  VIRTUAL SERVICE`, one row per route; routes to the
/// passthrough cluster are left out, a virtual host without routes shows as a 404.
pub fn route_rows(routes: &[&Value]) -> Vec<Vec<String>> {
    let mut rows = vec![crate::tables::header(&[
        "NAME",
        "VHOST NAME",
        "DOMAINS",
        "MATCH",
        "VIRTUAL SERVICE",
    ])];
    for route_config in routes {
        let name = text(route_config, &["name"]);
        for vhost in array(&route_config["virtual_hosts"]) {
            let vhost_name = text(vhost, &["name"]);
            let domains = describe_domains(&strings(&vhost["domains"]));
            let vhost_routes: Vec<&Value> = array(&vhost["routes"]).collect();
            for route in &vhost_routes {
                if route["route"]["cluster"].as_str() == Some(PASSTHROUGH) {
                    continue;
                }
                rows.push(vec![
                    name.to_string(),
                    vhost_name.to_string(),
                    domains.clone(),
                    describe_route_match(&route["match"]),
                    istio_config_owner(route),
                ]);
            }
            if vhost_routes.is_empty() {
                rows.push(vec![
                    name.to_string(),
                    vhost_name.to_string(),
                    domains.clone(),
                    "/*".into(),
                    "404".into(),
                ]);
            }
        }
    }
    rows
}

/// The first two port-less domains once the long spellings of a shorter one present are
/// dropped, then how many more there are.
fn describe_domains(domains: &[&str]) -> String {
    match domains {
        [] => return String::new(),
        [only] => return only.to_string(),
        _ => {}
    }
    let without_port: Vec<&str> = domains
        .iter()
        .copied()
        .filter(|d| {
            // A bracketed IPv6 address is kept; `host:port` and `[v6]:port` are not.
            !d.contains(':') || (d.matches(':').count() > 2 && d.ends_with(']'))
        })
        .collect();
    let redundant = |d: &str| {
        let shorter = [
            d.strip_suffix(".svc.cluster.local"),
            d.strip_suffix(".svc"),
            d.strip_suffix('.'),
        ];
        shorter
            .into_iter()
            .flatten()
            .any(|s| s != d && without_port.contains(&s))
    };
    let kept: Vec<&str> = without_port
        .iter()
        .copied()
        .filter(|d| !redundant(d))
        .collect();
    const SHOWN: usize = 2;
    if kept.len() > SHOWN {
        format!(
            "{} + {} more...",
            kept[..SHOWN].join(", "),
            kept.len() - SHOWN
        )
    } else {
        kept.join(", ")
    }
}

// ---- clusters -----------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct ClusterFilter {
    /// Substring of the service FQDN (`reviews` matches `reviews.default.svc.cluster.local`).
    pub fqdn: Option<String>,
    pub port: Option<u32>,
    pub subset: Option<String>,
    pub direction: Option<String>,
}

/// The parts of a `direction|port|subset|fqdn` cluster name.
struct ClusterKey<'a> {
    direction: &'a str,
    port: u64,
    subset: &'a str,
    fqdn: &'a str,
    /// The name has the `|` form.
    structured: bool,
}

fn cluster_key(name: &str) -> ClusterKey<'_> {
    let parts: Vec<&str> = name.split('|').collect();
    if parts.len() > 3 {
        ClusterKey {
            direction: parts[0],
            port: parts[1].parse().unwrap_or(0),
            subset: parts[2],
            fqdn: parts[3],
            structured: true,
        }
    } else {
        ClusterKey {
            direction: "",
            port: 0,
            subset: "",
            fqdn: name,
            structured: false,
        }
    }
}

fn compare_cluster_names(a: &str, b: &str) -> Ordering {
    let (a, b) = (cluster_key(a), cluster_key(b));
    a.fqdn
        .cmp(b.fqdn)
        .then_with(|| a.subset.cmp(b.subset))
        .then_with(|| a.port.cmp(&b.port))
        .then_with(|| a.direction.cmp(b.direction))
}

impl ClusterFilter {
    fn selects(&self, name: &str) -> bool {
        let key = cluster_key(name);
        self.fqdn
            .as_ref()
            .is_none_or(|f| key.fqdn.contains(f.as_str()))
            && self.port.is_none_or(|p| key.port == u64::from(p))
            && self.subset.as_ref().is_none_or(|s| key.subset == s)
            && self.direction.as_ref().is_none_or(|d| key.direction == d)
    }
}

/// The clusters the filter selects, by FQDN, subset, port, then direction.
pub fn select_clusters<'a>(dump: &'a Value, filter: &ClusterFilter) -> Result<Vec<&'a Value>> {
    let mut clusters: Vec<&Value> = resources(dump, Section::Clusters)?
        .into_iter()
        .filter(|c| filter.selects(text(c, &["name"])))
        .collect();
    clusters.sort_by(|a, b| compare_cluster_names(text(a, &["name"]), text(b, &["name"])));
    Ok(clusters)
}

/// `SERVICE FQDN  PORT  SUBSET  DIRECTION  TYPE  DESTINATION RULE`.
pub fn cluster_rows(clusters: &[&Value]) -> Vec<Vec<String>> {
    let mut rows = vec![crate::tables::header(&[
        "SERVICE FQDN",
        "PORT",
        "SUBSET",
        "DIRECTION",
        "TYPE",
        "DESTINATION RULE",
    ])];
    for cluster in clusters {
        let name = text(cluster, &["name"]);
        // Unset means the enum's zero value; a custom cluster type leaves it unset too.
        let kind = cluster["type"].as_str().unwrap_or("STATIC").to_string();
        let owner = istio_config_owner(cluster);
        let key = cluster_key(name);
        let row = if key.structured {
            let subset = if key.subset.is_empty() {
                "-"
            } else {
                key.subset
            };
            vec![
                key.fqdn.to_string(),
                key.port.to_string(),
                subset.to_string(),
                key.direction.to_string(),
                kind,
                owner,
            ]
        } else {
            vec![
                name.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                kind,
                owner,
            ]
        };
        rows.push(row);
    }
    rows
}

// ---- endpoints ----------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct EndpointFilter {
    pub address: Option<String>,
    pub port: Option<u32>,
    pub cluster: Option<String>,
    /// One of [`HEALTH_STATUSES`], as Envoy reports the endpoint.
    pub status: Option<String>,
}

/// What `--status` may ask for.
pub const HEALTH_STATUSES: [&str; 3] = ["HEALTHY", "UNHEALTHY", "DEGRADED"];

/// How Envoy's admin reports an endpoint's EDS health: UNKNOWN counts as healthy; UNHEALTHY,
/// DRAINING and TIMEOUT all mark it failed.
fn reported_health(lb_endpoint: &Value) -> &'static str {
    match text(lb_endpoint, &["health_status"]) {
        "UNHEALTHY" | "DRAINING" | "TIMEOUT" => "UNHEALTHY",
        "DEGRADED" => "DEGRADED",
        _ => "HEALTHY",
    }
}

/// `address` and `port` of an endpoint; a pipe shows as `unix://PATH` without a port.
fn endpoint_address(lb_endpoint: &Value) -> (String, u64) {
    let address = &lb_endpoint["endpoint"]["address"];
    let socket = text(address, &["socket_address", "address"]);
    if !socket.is_empty() {
        let port = number(address, &["socket_address", "port_value"]).unwrap_or(0);
        return (socket.to_string(), port);
    }
    let pipe = text(address, &["pipe", "path"]);
    if !pipe.is_empty() {
        return (format!("unix://{pipe}"), 0);
    }
    ("unknown".into(), 0)
}

impl EndpointFilter {
    fn selects(&self, lb_endpoint: &Value, cluster: &str) -> bool {
        let (address, port) = endpoint_address(lb_endpoint);
        self.address
            .as_ref()
            .is_none_or(|a| address.eq_ignore_ascii_case(a))
            && self.port.is_none_or(|p| port == u64::from(p))
            && self
                .cluster
                .as_ref()
                .is_none_or(|c| cluster.eq_ignore_ascii_case(c))
            && self
                .status
                .as_ref()
                .is_none_or(|s| reported_health(lb_endpoint).eq_ignore_ascii_case(s))
    }
}

/// The load assignments with at least one selected endpoint, holding only those, in cluster
/// order.
pub fn select_endpoints(dump: &Value, filter: &EndpointFilter) -> Result<Vec<Value>> {
    let mut selected = Vec::new();
    for assignment in resources(dump, Section::Endpoints)? {
        let cluster = text(assignment, &["cluster_name"]);
        let mut assignment = assignment.clone();
        let mut count = 0;
        if let Some(localities) = assignment["endpoints"].as_array_mut() {
            for locality in localities {
                if let Some(list) = locality["lb_endpoints"].as_array_mut() {
                    list.retain(|e| filter.selects(e, cluster));
                    count += list.len();
                }
            }
        }
        if count > 0 {
            selected.push(assignment);
        }
    }
    selected.sort_by(|a, b| {
        compare_cluster_names(text(a, &["cluster_name"]), text(b, &["cluster_name"]))
    });
    Ok(selected)
}

/// `ENDPOINT  STATUS  OUTLIER CHECK  CLUSTER`, by address, port, then cluster. The dump holds
/// no outlier-detection state, so every endpoint passes its outlier check.
pub fn endpoint_rows(assignments: &[Value]) -> Vec<Vec<String>> {
    let mut endpoints = Vec::new();
    for assignment in assignments {
        let cluster = text(assignment, &["cluster_name"]);
        for locality in array(&assignment["endpoints"]) {
            for lb_endpoint in array(&locality["lb_endpoints"]) {
                let (address, port) = endpoint_address(lb_endpoint);
                endpoints.push((address, port, cluster, reported_health(lb_endpoint)));
            }
        }
    }
    endpoints.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    let mut rows = vec![crate::tables::header(&[
        "ENDPOINT",
        "STATUS",
        "OUTLIER CHECK",
        "CLUSTER",
    ])];
    for (address, port, cluster, health) in endpoints {
        let endpoint = if port == 0 {
            address
        } else {
            format!("{address}:{port}")
        };
        rows.push(vec![
            endpoint,
            health.into(),
            "OK".into(),
            cluster.to_string(),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump_of(section: &str, list: &str, entries: Value) -> Value {
        json!({"configs": [{
            "@type": format!("type.googleapis.com/envoy.admin.v3.{section}"),
            list: entries,
        }]})
    }

    fn mk_tcp_filter(cluster: &str) -> Value {
        json!({
            "name": TCP_PROXY_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "cluster": cluster,
                "stat_prefix": cluster,
            }
        })
    }

    #[test]
    fn chain_matches_read_like_istioctl() {
        assert_eq!(describe_chain_match(&Value::Null), "ALL");
        assert_eq!(
            describe_chain_match(&json!({
                "transport_protocol": "raw_buffer",
                "application_protocols": ["http/1.1", "h2c"],
                "destination_port": 9080,
            })),
            "Trans: raw_buffer; App: http/1.1,h2c; Addr: *:9080"
        );
        assert_eq!(
            describe_chain_match(&json!({
                "application_protocols": ["http/1.0", "http/1.1", "h2c"],
                "prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}],
                "destination_port": 80,
                "server_names": ["a.example", "b.example"],
            })),
            "SNI: a.example,b.example; App: HTTP; Addr: 10.0.0.0/8:80"
        );
    }

    #[test]
    fn destinations_name_the_route_cluster_or_inline_routes() {
        let hcm = |config: Value| json!([{"name": HCM_FILTER, "typed_config": config}]);
        assert_eq!(
            describe_destination(&hcm(json!({"rds": {"route_config_name": "9080"}}))),
            "Route: 9080"
        );
        assert_eq!(
            describe_destination(&json!([mk_tcp_filter(
                "outbound|3306||db.default.svc.cluster.local"
            )])),
            "Cluster: outbound|3306||db.default.svc.cluster.local"
        );
        assert_eq!(
            describe_destination(&json!([mk_tcp_filter("PassthroughCluster")])),
            "PassthroughCluster"
        );
        // A TCP proxy into the black hole is not a destination.
        assert_eq!(
            describe_destination(&json!([mk_tcp_filter(BLACKHOLE)])),
            "Non-HTTP/Non-TCP"
        );
        let everything_to = |cluster: &str| {
            json!({"virtual_hosts": [{"domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
            ]}]})
        };
        assert_eq!(
            describe_destination(&hcm(
                json!({"route_config": everything_to("inbound|9080||")})
            )),
            "Cluster: inbound|9080||"
        );
        assert_eq!(
            describe_destination(&hcm(json!({"route_config": {"virtual_hosts": [{
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": "/healthz/ready"}, "route": {"cluster": "agent"}},
                    {"match": {"path": "/stats"}, "direct_response": {"status": 404}},
                ]
            }]}}))),
            "Inline Route: /healthz/ready*, /stats"
        );
        let weighted = json!([{
            "name": TCP_PROXY_FILTER,
            "typed_config": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 90}, {"name": "b", "weight": 10}
            ]}}
        }]);
        assert_eq!(describe_destination(&weighted), "Clusters: a (90), b (10)");
    }

    #[test]
    fn listener_types_classify_chains() {
        let tcp_only =
            json!({"filter_chains": [{"filters": [mk_tcp_filter("PassthroughCluster")]}]});
        assert_eq!(listener_type(&tcp_only), "TCP");
        let blackhole = json!({"filter_chains": [{"filters": [mk_tcp_filter(BLACKHOLE)]}]});
        assert_eq!(listener_type(&blackhole), "UNKNOWN");
        let both = json!({
            "filter_chains": [{"filters": [{"name": HCM_FILTER, "typed_config": {}}]}],
            "default_filter_chain": {"filters": [mk_tcp_filter("PassthroughCluster")]},
        });
        assert_eq!(listener_type(&both), "HTTP+TCP");
    }

    #[test]
    fn domains_show_two_short_names_and_a_count() {
        assert_eq!(
            describe_domains(&[
                "reviews.default.svc.cluster.local",
                "reviews.default.svc.cluster.local.",
                "reviews",
                "reviews.default.svc",
                "reviews.default",
                "10.96.120.15",
            ]),
            "reviews, reviews.default + 1 more..."
        );
        assert_eq!(describe_domains(&["*"]), "*");
        assert_eq!(
            describe_domains(&["example.com", "example.com:80"]),
            "example.com"
        );
        assert_eq!(
            describe_domains(&["[fd00:10:96::7fc7]", "[fd00:10:96::7fc7]:80", "a"]),
            "[fd00:10:96::7fc7], a"
        );
    }

    #[test]
    fn istio_config_paths_render_as_name_dot_namespace() {
        let owned = |path: &str| {
            istio_config_owner(
                &json!({"metadata": {"filter_metadata": {"istio": {"config": path}}}}),
            )
        };
        assert_eq!(
            owned("/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews"),
            "reviews.default"
        );
        assert_eq!(owned("/apis/other.io/v1/x"), "<unknown>");
        assert_eq!(istio_config_owner(&json!({})), "");
    }

    #[test]
    fn routes_hide_passthrough_and_show_empty_hosts_as_404() {
        let dump = dump_of(
            "RoutesConfigDump",
            "dynamic_route_configs",
            json!([
                {"route_config": {"name": "other", "virtual_hosts": [{"name": "empty", "domains": ["x"]}]}},
                {"route_config": {"name": "9080", "virtual_hosts": [
                    {"name": "allow_any", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": PASSTHROUGH}}
                    ]},
                    {"name": "a:9080", "domains": ["a"], "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "outbound|9080||a"}}
                    ]},
                ]}},
                {"route_config": {"name": "80", "virtual_hosts": []}},
            ]),
        );
        let routes = select_routes(&dump, &RouteFilter::default()).unwrap();
        let names: Vec<&str> = routes.iter().map(|r| text(r, &["name"])).collect();
        assert_eq!(names, ["80", "9080", "other"]);
        let rows = route_rows(&routes);
        assert_eq!(rows[1], ["9080", "a:9080", "a", "/*", ""]);
        assert_eq!(rows[2], ["other", "empty", "x", "/*", "404"]);
        assert_eq!(rows.len(), 3);
        let only = RouteFilter {
            name: Some("80".into()),
        };
        assert_eq!(select_routes(&dump, &only).unwrap().len(), 1);
    }

    #[test]
    fn clusters_parse_names_and_filter_on_parts() {
        let dump = dump_of(
            "ClustersConfigDump",
            "dynamic_active_clusters",
            json!([
                {"cluster": {"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "type": "EDS",
                    "metadata": {"filter_metadata": {"istio": {"config":
                        "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews"}}}}},
                {"cluster": {"name": "outbound|9080||reviews.default.svc.cluster.local", "type": "EDS"}},
                {"cluster": {"name": "PassthroughCluster", "type": "ORIGINAL_DST"}},
                {"cluster": {"name": "inbound|9080||", "type": "ORIGINAL_DST"}},
                {"cluster": {"name": "outbound|80||v1-api.default.svc.cluster.local", "type": "EDS"}},
            ]),
        );
        let all = select_clusters(&dump, &ClusterFilter::default()).unwrap();
        let rows = cluster_rows(&all);
        assert_eq!(rows[1], ["", "9080", "-", "inbound", "ORIGINAL_DST", ""]);
        assert_eq!(
            rows[2],
            ["PassthroughCluster", "-", "-", "-", "ORIGINAL_DST", ""]
        );
        assert_eq!(
            rows[4],
            [
                "reviews.default.svc.cluster.local",
                "9080",
                "v1",
                "outbound",
                "EDS",
                "reviews.default"
            ]
        );
        let subset = ClusterFilter {
            subset: Some("v1".into()),
            ..Default::default()
        };
        // The subset is compared with the subset field, not searched for in the whole name.
        assert_eq!(select_clusters(&dump, &subset).unwrap().len(), 1);
        let port = ClusterFilter {
            port: Some(80),
            direction: Some("outbound".into()),
            ..Default::default()
        };
        assert_eq!(select_clusters(&dump, &port).unwrap().len(), 1);
        let fqdn = ClusterFilter {
            fqdn: Some("reviews".into()),
            ..Default::default()
        };
        assert_eq!(select_clusters(&dump, &fqdn).unwrap().len(), 2);
    }

    #[test]
    fn endpoints_report_health_as_envoy_admin_does() {
        let lb = |ip: &str, port: u32, health: Option<&str>| {
            let mut e = json!({"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}});
            if let Some(h) = health {
                e["health_status"] = json!(h);
            }
            e
        };
        let dump = dump_of(
            "EndpointsConfigDump",
            "dynamic_endpoint_configs",
            json!([
                {"endpoint_config": {"cluster_name": "outbound|80||b", "endpoints": [{"lb_endpoints": [
                    lb("10.0.0.2", 80, Some("HEALTHY")), lb("10.0.0.1", 80, Some("DRAINING"))
                ]}]}},
                {"endpoint_config": {"cluster_name": "outbound|80||a", "endpoints": [{"lb_endpoints": [
                    lb("10.0.0.2", 80, None)
                ]}]}},
            ]),
        );
        let all = select_endpoints(&dump, &EndpointFilter::default()).unwrap();
        let rows = endpoint_rows(&all);
        assert_eq!(
            rows[1],
            ["10.0.0.1:80", "UNHEALTHY", "OK", "outbound|80||b"]
        );
        assert_eq!(rows[2], ["10.0.0.2:80", "HEALTHY", "OK", "outbound|80||a"]);
        assert_eq!(rows[3], ["10.0.0.2:80", "HEALTHY", "OK", "outbound|80||b"]);
        let unhealthy = EndpointFilter {
            status: Some("unhealthy".into()),
            ..Default::default()
        };
        let selected = select_endpoints(&dump, &unhealthy).unwrap();
        assert_eq!(selected.len(), 1);
        assert_eq!(
            selected[0]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_missing_section_is_an_error() {
        let err = resources(&json!({"configs": []}), Section::Routes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the config dump has no RoutesConfigDump section"
        );
    }
}
