//! VirtualService `http` rules as Envoy routes, shaped as istiod builds them for a sidecar.

use super::{consistent_hash_policy, decorator, default_retry_policy, prefix_match, set_timeouts};
use crate::envoy::{any, bool_value, duration, istio_metadata, seconds, string_value, u32_value};
use crate::names::{Direction, cluster_name, parse_cluster_name};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction,
    RouteMatch, WeightedCluster, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, redirect_action, retry_policy,
    route::Action, route_action, route_match::PathSpecifier, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use meshpilot_api::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpDirectResponse, HttpFaultInjection,
    HttpMatchRequest, HttpRedirect, HttpRetry, HttpRoute, Percent, StringMatch,
};
use meshpilot_model::{Proxy, Snapshot, VirtualServiceConfig, labels_match};
use std::collections::BTreeMap;

/// The gateway name that stands for every sidecar.
const MESH_GATEWAY: &str = "mesh";
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub(super) const CORS_FILTER: &str = "envoy.filters.http.cors";
const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";
const RETRIABLE_STATUS_CODES: &str = "retriable-status-codes";

/// VirtualServices bound to sidecars and visible from the proxy's namespace, in the order
/// istiod tries them for a host: private to the proxy's namespace, then exported to it by
/// name, then public; oldest first within each group.
pub(super) fn candidates<'a>(
    snapshot: &'a Snapshot,
    proxy: &Proxy,
) -> Vec<&'a VirtualServiceConfig> {
    let mut ranked: Vec<(u8, &VirtualServiceConfig)> = snapshot
        .virtual_services()
        .iter()
        .filter(|vs| vs.applies_to_mesh() && vs.exported_to(&proxy.namespace))
        .map(|vs| (visibility_rank(vs, &proxy.namespace), &**vs))
        .collect();
    // Stable: the snapshot's oldest-first order holds within a group.
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, vs)| vs).collect()
}

fn visibility_rank(vs: &VirtualServiceConfig, proxy_namespace: &str) -> u8 {
    let export_to = &vs.spec.export_to;
    let own = vs.meta.namespace.as_str();
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        2
    } else if own == proxy_namespace && export_to.iter().any(|e| e == "." || e == own) {
        0
    } else {
        1
    }
}

/// The routes `vs` gives route configuration `port` on this proxy; empty when no rule applies.
pub(super) fn build_http_routes(
    snapshot: &Snapshot,
    proxy: &Proxy,
    vs: &VirtualServiceConfig,
    port: u16,
) -> Vec<Route> {
    let translator = RouteTranslator {
        snapshot,
        proxy,
        vs,
        port,
    };
    let mut routes = Vec::new();
    for rule in &vs.spec.http {
        if rule.matches.is_empty() {
            routes.push(translator.build_route(rule, None));
            break;
        }
        let mut reached_catch_all = false;
        for request_match in rule.matches.iter().filter(|m| translator.applies(m)) {
            let route = translator.build_route(rule, Some(request_match));
            reached_catch_all = is_catch_all(&route);
            routes.push(route);
            // Envoy takes the first matching route: nothing after a catch-all can match.
            if reached_catch_all {
                break;
            }
        }
        if reached_catch_all {
            break;
        }
    }
    routes
}

/// `prefix: /` or regex `.*` with no header, query or metadata condition.
fn is_catch_all(route: &Route) -> bool {
    let Some(m) = &route.r#match else {
        return false;
    };
    let any_path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) | Some(PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    any_path
        && m.headers.is_empty()
        && m.query_parameters.is_empty()
        && m.dynamic_metadata.is_empty()
}

struct RouteTranslator<'a> {
    snapshot: &'a Snapshot,
    proxy: &'a Proxy,
    vs: &'a VirtualServiceConfig,
    /// The listener port the route configuration is for.
    port: u16,
}

impl RouteTranslator<'_> {
    /// Whether a match entry concerns this proxy and port at all.
    fn applies(&self, m: &HttpMatchRequest) -> bool {
        if let Some(port) = m.port
            && port != 0
            && port != u32::from(self.port)
        {
            return false;
        }
        // A match bound to gateways ignores its source conditions; sidecars are `mesh`.
        if !m.gateways.is_empty() {
            return m.gateways.iter().any(|g| g == MESH_GATEWAY);
        }
        labels_match(&m.source_labels, &self.proxy.labels)
            && m.source_namespace
                .as_deref()
                .is_none_or(|ns| ns.is_empty() || *ns == *self.proxy.namespace)
    }

    fn build_route(&self, rule: &HttpRoute, request_match: Option<&HttpMatchRequest>) -> Route {
        let rule_name = rule.name.clone().unwrap_or_default();
        let name = match request_match
            .and_then(|m| m.name.as_deref())
            .filter(|n| !n.is_empty())
        {
            Some(match_name) => format!("{rule_name}.{match_name}"),
            None => rule_name,
        };
        let mut route = Route {
            name,
            r#match: Some(build_route_match(request_match)),
            metadata: Some(istio_metadata(vec![(
                "config",
                string_value(self.vs.key().metadata_path()),
            )])),
            ..Default::default()
        };
        let mut authority = None;
        if let Some(headers) = &rule.headers {
            let ops = HeaderOps::new(headers);
            route.request_headers_to_add = ops.request_add;
            route.request_headers_to_remove = ops.request_remove;
            route.response_headers_to_add = ops.response_add;
            route.response_headers_to_remove = ops.response_remove;
            authority = ops.authority;
        }
        route.action = Some(if let Some(redirect) = &rule.redirect {
            Action::Redirect(self.build_redirect(redirect))
        } else if let Some(direct) = &rule.direct_response {
            Action::DirectResponse(build_direct_response(direct))
        } else {
            Action::Route(self.build_route_action(&mut route, rule, authority))
        });
        route.decorator = Some(decorator(self.operation(&route)));
        if let Some(fault) = rule.fault.as_ref().and_then(build_fault) {
            route
                .typed_per_filter_config
                .insert(FAULT_FILTER.to_string(), any(fault));
        }
        if let Some(policy) = &rule.cors_policy {
            route
                .typed_per_filter_config
                .insert(CORS_FILTER.to_string(), any(build_cors(policy)));
        }
        route
    }

    /// Forwarding to the rule's destinations; per-destination header operations of a sole
    /// destination are added to `route`.
    fn build_route_action(
        &self,
        route: &mut Route,
        rule: &HttpRoute,
        mut authority: Option<String>,
    ) -> RouteAction {
        let mut action = RouteAction::default();
        set_timeouts(
            &mut action,
            rule.timeout.map(duration).unwrap_or(seconds(0)),
        );
        if let Some(rewrite) = &rule.rewrite {
            if let Some(regex) = &rewrite.uri_regex_rewrite {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex_matcher(&regex.pattern)),
                    substitution: regex.rewrite.clone(),
                });
            } else if let Some(uri) = rewrite.uri.as_deref().filter(|u| !u.is_empty()) {
                action.prefix_rewrite = uri.to_string();
            }
            if let Some(rewritten) = rewrite.authority.as_deref().filter(|a| !a.is_empty()) {
                authority = Some(rewritten.to_string());
            }
        }
        if let Some(authority) = authority {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(authority),
            );
        }
        if let Some(mirror) = &rule.mirror
            && let Some(fraction) =
                mirror_fraction(rule.mirror_percentage.as_ref(), rule.mirror_percent)
        {
            action
                .request_mirror_policies
                .push(mirror_policy(self.cluster(mirror), fraction));
        }
        for mirror in &rule.mirrors {
            if let Some(fraction) = mirror_fraction(mirror.percentage.as_ref(), None) {
                action
                    .request_mirror_policies
                    .push(mirror_policy(self.cluster(&mirror.destination), fraction));
            }
        }

        let mut consistent_hash = false;
        if let [only] = rule.route.as_slice() {
            action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(
                self.cluster(&only.destination),
            ));
            if let Some(headers) = &only.headers {
                let ops = HeaderOps::new(headers);
                route.request_headers_to_add.extend(ops.request_add);
                route.request_headers_to_remove.extend(ops.request_remove);
                route.response_headers_to_add.extend(ops.response_add);
                route.response_headers_to_remove.extend(ops.response_remove);
                // The rule-level rewrite wins, as it does for several destinations.
                if let Some(authority) = ops.authority
                    && action.host_rewrite_specifier.is_none()
                {
                    action.host_rewrite_specifier = Some(
                        route_action::HostRewriteSpecifier::HostRewriteLiteral(authority),
                    );
                }
            }
            if let Some(hash) = self.hash_policy(&only.destination) {
                action.hash_policy.push(hash);
                consistent_hash = true;
            }
        } else {
            let mut clusters = Vec::new();
            // Weights are relative (no total_weight); zero-weight entries only confuse Envoy.
            for destination in rule.route.iter().filter(|d| d.weight.unwrap_or(0) > 0) {
                let mut entry = weighted_cluster::ClusterWeight {
                    name: self.cluster(&destination.destination),
                    weight: Some(u32_value(destination.weight.unwrap_or(0).unsigned_abs())),
                    ..Default::default()
                };
                if let Some(headers) = &destination.headers {
                    let ops = HeaderOps::new(headers);
                    entry.request_headers_to_add = ops.request_add;
                    entry.request_headers_to_remove = ops.request_remove;
                    entry.response_headers_to_add = ops.response_add;
                    entry.response_headers_to_remove = ops.response_remove;
                    entry.host_rewrite_specifier = ops.authority.map(
                        weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral,
                    );
                }
                clusters.push(entry);
                if let Some(hash) = self.hash_policy(&destination.destination) {
                    action.hash_policy.push(hash);
                }
            }
            action.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
                WeightedCluster {
                    clusters,
                    ..Default::default()
                },
            ));
        }
        action.retry_policy = build_retry_policy(rule.retries.as_ref(), consistent_hash);
        action
    }

    /// `outbound|<port>|<subset>|<host>`. Port: the destination's, else the service's only
    /// port, else the listener's.
    fn cluster(&self, destination: &Destination) -> String {
        cluster_name(
            Direction::Outbound,
            self.destination_port(destination),
            destination.subset.as_deref().unwrap_or(""),
            &destination.host,
        )
    }

    fn destination_port(&self, destination: &Destination) -> u16 {
        if let Some(selector) = &destination.port
            && let Ok(number) = u16::try_from(selector.number)
            && number != 0
        {
            return number;
        }
        match self.snapshot.service(&destination.host) {
            Some(service) if service.ports.len() == 1 => service.ports[0].port,
            _ => self.port,
        }
    }

    fn hash_policy(&self, destination: &Destination) -> Option<route_action::HashPolicy> {
        consistent_hash_policy(
            self.snapshot,
            self.proxy,
            &destination.host,
            self.destination_port(destination),
            destination.subset.as_deref(),
        )
    }

    fn build_redirect(&self, redirect: &HttpRedirect) -> RedirectAction {
        use redirect_action::RedirectResponseCode as Code;
        let response_code = match redirect.redirect_code {
            Some(302) => Code::Found,
            Some(303) => Code::SeeOther,
            Some(307) => Code::TemporaryRedirect,
            Some(308) => Code::PermanentRedirect,
            _ => Code::MovedPermanently,
        };
        let scheme = redirect.scheme.clone().filter(|s| !s.is_empty());
        let port = match (redirect.port, redirect.derive_port.as_deref()) {
            (Some(port), _) => Some(port),
            // Envoy cannot read the request port, but this route only serves one port.
            (None, Some("FROM_REQUEST_PORT")) => Some(u32::from(self.port)),
            _ => None,
        };
        // No explicit :80 / :443 for the scheme's own port.
        let port_redirect = port
            .filter(|p| match scheme.as_deref().unwrap_or("http") {
                "http" => *p != 80,
                "https" => *p != 443,
                _ => true,
            })
            .unwrap_or(0);
        RedirectAction {
            host_redirect: redirect.authority.clone().unwrap_or_default(),
            port_redirect,
            response_code: response_code as i32,
            scheme_rewrite_specifier: scheme
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                redirect.uri.clone().unwrap_or_default(),
            )),
            ..Default::default()
        }
    }

    /// Trace operation: `<host>:<port><path>` when one cluster is the target, else
    /// `<vs name>:<listener port><path>`.
    fn operation(&self, route: &Route) -> String {
        let path = match route
            .r#match
            .as_ref()
            .and_then(|m| m.path_specifier.as_ref())
        {
            Some(PathSpecifier::Prefix(prefix)) => format!("{prefix}*"),
            Some(PathSpecifier::Path(path)) => path.clone(),
            Some(PathSpecifier::SafeRegex(regex)) => regex.regex.clone(),
            _ => "/*".to_string(),
        };
        if let Some(Action::Route(action)) = &route.action
            && let Some(route_action::ClusterSpecifier::Cluster(cluster)) =
                &action.cluster_specifier
            && let Some(parts) = parse_cluster_name(cluster)
        {
            return format!("{}:{}{path}", parts.host, parts.port);
        }
        format!("{}:{}{path}", self.vs.meta.name, self.port)
    }
}

fn build_route_match(request_match: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = prefix_match("/");
    let Some(m) = request_match else {
        return out;
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(name, sm)| header_matcher(name, sm))
        .collect();
    for (name, sm) in &m.without_headers {
        let mut matcher = header_matcher(name, sm);
        matcher.invert_match = true;
        // A missing header then counts as "not matching", so the inverted match selects it.
        matcher.treat_missing_header_as_empty = !is_presence_match(sm);
        headers.push(matcher);
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(uri) = &m.uri {
        if let Some(exact) = &uri.exact {
            out.path_specifier = Some(PathSpecifier::Path(exact.clone()));
        } else if let Some(prefix) = &uri.prefix {
            out.path_specifier = Some(PathSpecifier::Prefix(prefix.clone()));
        } else if let Some(regex) = &uri.regex {
            out.path_specifier = Some(PathSpecifier::SafeRegex(regex_matcher(regex)));
        }
    }
    out.case_sensitive = Some(bool_value(!m.ignore_uri_case));
    for (pseudo_header, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(pseudo_header, sm));
        }
    }
    out.headers = headers;
    out.query_parameters = m
        .query_params
        .iter()
        .map(|(name, sm)| QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: if is_presence_match(sm) {
                Some(QueryParameterMatchSpecifier::PresentMatch(true))
            } else {
                string_matcher(sm).map(QueryParameterMatchSpecifier::StringMatch)
            },
        })
        .collect();
    out
}

/// An empty StringMatch, or regex `*` (not RE2: Istio's "any value"), means "is present".
fn is_presence_match(sm: &StringMatch) -> bool {
    (sm.exact.is_none() && sm.prefix.is_none() && sm.regex.is_none())
        || sm.regex.as_deref() == Some("*")
}

fn header_matcher(name: &str, sm: &StringMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: if is_presence_match(sm) {
            Some(HeaderMatchSpecifier::PresentMatch(true))
        } else {
            string_matcher(sm).map(HeaderMatchSpecifier::StringMatch)
        },
        ..Default::default()
    }
}

fn string_matcher(sm: &StringMatch) -> Option<StringMatcher> {
    let pattern = if let Some(exact) = &sm.exact {
        MatchPattern::Exact(exact.clone())
    } else if let Some(prefix) = &sm.prefix {
        MatchPattern::Prefix(prefix.clone())
    } else {
        MatchPattern::SafeRegex(regex_matcher(sm.regex.as_deref()?))
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

/// RE2 is Envoy's default engine; istiod leaves `engine_type` unset too.
fn regex_matcher(regex: &str) -> RegexMatcher {
    RegexMatcher {
        regex: regex.to_string(),
        engine_type: None,
    }
}

/// Header additions and removals of one `headers` block.
#[derive(Default)]
struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueOption>,
    response_remove: Vec<String>,
    /// A request `:authority`/`host` set or add: becomes a host rewrite instead of a header.
    authority: Option<String>,
}

impl HeaderOps {
    fn new(headers: &Headers) -> Self {
        let empty = HeaderOperations::default();
        let request = headers.request.as_ref().unwrap_or(&empty);
        let response = headers.response.as_ref().unwrap_or(&empty);
        let (mut request_add, set_authority) =
            header_values(&request.set, HeaderAppendAction::OverwriteIfExistsOrAdd);
        let (appended, added_authority) =
            header_values(&request.add, HeaderAppendAction::AppendIfExistsOrAdd);
        request_add.extend(appended);
        let (mut response_add, _) =
            header_values(&response.set, HeaderAppendAction::OverwriteIfExistsOrAdd);
        response_add
            .extend(header_values(&response.add, HeaderAppendAction::AppendIfExistsOrAdd).0);
        HeaderOps {
            request_add,
            request_remove: removable(&request.remove),
            response_add,
            response_remove: removable(&response.remove),
            authority: set_authority.or(added_authority),
        }
    }
}

/// Envoy cannot modify pseudo-headers or `host`; those are dropped (sorted by name otherwise).
fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn header_values(
    headers: &BTreeMap<String, String>,
    append_action: HeaderAppendAction,
) -> (Vec<HeaderValueOption>, Option<String>) {
    let mut authority = None;
    let mut options = Vec::new();
    for (key, value) in headers {
        if key.eq_ignore_ascii_case(":authority") || key.eq_ignore_ascii_case("host") {
            authority = Some(value.clone());
        }
        if is_internal_header(key) {
            continue;
        }
        options.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            }),
            append_action: append_action as i32,
            ..Default::default()
        });
    }
    (options, authority)
}

fn removable(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !is_internal_header(n))
        .cloned()
        .collect()
}

/// Istio's default policy, overridden field by field; `attempts: 0` disables retries.
fn build_retry_policy(retries: Option<&HttpRetry>, consistent_hash: bool) -> Option<RetryPolicy> {
    let mut policy = default_retry_policy(!consistent_hash);
    let Some(retries) = retries else {
        return Some(policy);
    };
    if retries.attempts <= 0 {
        return None;
    }
    policy.num_retries = Some(u32_value(retries.attempts.unsigned_abs()));
    if let Some(retry_on) = retries.retry_on.as_deref().filter(|r| !r.trim().is_empty()) {
        let (mut conditions, codes) = split_retry_on(retry_on);
        if !codes.is_empty() && !conditions.iter().any(|c| c == RETRIABLE_STATUS_CODES) {
            conditions.push(RETRIABLE_STATUS_CODES.to_string());
        }
        policy.retry_on = conditions.join(",");
        policy.retriable_status_codes = codes;
    }
    if let Some(per_try) = retries.per_try_timeout {
        policy.per_try_timeout = Some(duration(per_try));
    }
    if retries.retry_remote_localities == Some(true) {
        policy.retry_priority = Some(retry_policy::RetryPriority {
            name: PREVIOUS_PRIORITIES.to_string(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(any(
                PreviousPrioritiesConfig {
                    update_frequency: 2,
                },
            ))),
        });
    }
    Some(policy)
}

/// Splits `retryOn` into Envoy conditions and HTTP status codes (Istio accepts both mixed).
fn split_retry_on(retry_on: &str) -> (Vec<String>, Vec<u32>) {
    let mut conditions = Vec::new();
    let mut codes = Vec::new();
    for part in retry_on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) if (100..=599).contains(&code) => codes.push(code),
            _ => conditions.push(part.to_string()),
        }
    }
    (conditions, codes)
}

/// `percentage.value` (0-100, fractional) as parts per million.
fn percent_fraction(percent: &Percent) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent.value * 10_000.0) as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// A legacy integer percentage.
fn hundredths(percent: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: percent,
        denominator: DenominatorType::Hundred as i32,
    }
}

/// The share of requests to mirror: everything unless a percentage is given; an explicit
/// zero disables the mirror.
fn mirror_fraction(
    percentage: Option<&Percent>,
    legacy: Option<u32>,
) -> Option<RuntimeFractionalPercent> {
    let default_value = match (percentage, legacy) {
        (Some(p), _) if p.value > 0.0 => percent_fraction(p),
        (Some(_), _) => return None,
        (None, Some(n)) if n > 0 => hundredths(n),
        (None, Some(_)) => return None,
        (None, None) => hundredths(100),
    };
    Some(RuntimeFractionalPercent {
        default_value: Some(default_value),
        runtime_key: String::new(),
    })
}

fn mirror_policy(
    cluster: String,
    fraction: RuntimeFractionalPercent,
) -> route_action::RequestMirrorPolicy {
    route_action::RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(fraction),
        trace_sampled: Some(bool_value(false)),
        ..Default::default()
    }
}

fn build_direct_response(
    direct: &HttpDirectResponse,
) -> envoy_types::pb::envoy::config::route::v3::DirectResponseAction {
    let body = direct.body.as_ref().and_then(|body| {
        let specifier = if let Some(text) = &body.string {
            data_source::Specifier::InlineString(text.clone())
        } else {
            let encoded = body.bytes.as_ref()?;
            // `bytes` is base64 in YAML; take the text as-is if it is not.
            data_source::Specifier::InlineBytes(
                decode_base64(encoded).unwrap_or_else(|| encoded.as_bytes().to_vec()),
            )
        };
        Some(DataSource {
            specifier: Some(specifier),
            ..Default::default()
        })
    });
    envoy_types::pb::envoy::config::route::v3::DirectResponseAction {
        status: direct.status,
        body,
        ..Default::default()
    }
}

/// Standard base64, padding optional.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.trim_end_matches('=').bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn build_fault(injection: &HttpFaultInjection) -> Option<fault::HttpFault> {
    let delay = injection.delay.as_ref().and_then(|delay| {
        let fixed = delay.fixed_delay?;
        Some(common_fault::FaultDelay {
            percentage: Some(match &delay.percentage {
                Some(p) => percent_fraction(p),
                None => hundredths(delay.percent.unwrap_or(0)),
            }),
            fault_delay_secifier: Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(
                duration(fixed),
            )),
        })
    });
    let abort = injection.abort.as_ref().and_then(|abort| {
        let error_type = match (abort.http_status, &abort.grpc_status) {
            (Some(status), _) => fault::fault_abort::ErrorType::HttpStatus(status),
            (None, Some(status)) => match grpc_status_code(status) {
                Some(code) => fault::fault_abort::ErrorType::GrpcStatus(code),
                None => {
                    tracing::warn!(status, "unknown gRPC status in fault abort; abort dropped");
                    return None;
                }
            },
            (None, None) => return None,
        };
        Some(fault::FaultAbort {
            percentage: abort.percentage.as_ref().map(percent_fraction),
            error_type: Some(error_type),
            ..Default::default()
        })
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(fault::HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

/// gRPC status names as Istio accepts them (or the number itself).
fn grpc_status_code(status: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let status = status.trim();
    if let Some(code) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(status)) {
        return u32::try_from(code).ok();
    }
    status.parse().ok().filter(|code| *code < 17)
}

fn build_cors(policy: &CorsPolicy) -> cors::CorsPolicy {
    let allow_origin_string_match = if policy.allow_origins.is_empty() {
        policy
            .allow_origin
            .iter()
            .map(|origin| StringMatcher {
                match_pattern: Some(MatchPattern::Exact(origin.clone())),
                ignore_case: false,
            })
            .collect()
    } else {
        policy
            .allow_origins
            .iter()
            .filter_map(string_matcher)
            .collect()
    };
    cors::CorsPolicy {
        allow_origin_string_match,
        allow_methods: policy.allow_methods.join(","),
        allow_headers: policy.allow_headers.join(","),
        expose_headers: policy.expose_headers.join(","),
        max_age: policy
            .max_age
            .map(|age| age.seconds_and_nanos().0.to_string())
            .unwrap_or_default(),
        allow_credentials: policy.allow_credentials.map(bool_value),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(hundredths(100)),
            runtime_key: String::new(),
        }),
        // Envoy's pre-1.30 behaviour, which istiod keeps unless told to ignore preflights.
        forward_not_matching_preflights: Some(bool_value(true)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_separates_status_codes() {
        let (conditions, codes) = split_retry_on("5xx, 503,gateway-error,429,");
        assert_eq!(conditions, ["5xx", "gateway-error"]);
        assert_eq!(codes, [503, 429]);
    }

    #[test]
    fn base64_bodies_decode() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert!(decode_base64("not base64!").is_none());
    }

    #[test]
    fn grpc_status_names_map_to_codes() {
        assert_eq!(grpc_status_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_status_code("ok"), Some(0));
        assert_eq!(grpc_status_code("4"), Some(4));
        assert_eq!(grpc_status_code("NOPE"), None);
    }

    #[test]
    fn mirror_fraction_defaults_to_all_and_zero_disables() {
        let all = mirror_fraction(None, None).unwrap().default_value.unwrap();
        assert_eq!(
            (all.numerator, all.denominator),
            (100, DenominatorType::Hundred as i32)
        );
        let half = mirror_fraction(Some(&Percent { value: 50.0 }), None).unwrap();
        assert_eq!(half.default_value.unwrap().numerator, 500_000);
        assert!(mirror_fraction(Some(&Percent { value: 0.0 }), None).is_none());
        assert!(mirror_fraction(None, Some(0)).is_none());
        let legacy = mirror_fraction(None, Some(25))
            .unwrap()
            .default_value
            .unwrap();
        assert_eq!(legacy.numerator, 25);
    }
}
