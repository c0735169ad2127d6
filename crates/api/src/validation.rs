//! Semantic checks Istio's validating webhook would make, reported per field.
//!
//! Type errors (a string where a number belongs, a negative duration) are caught earlier, when
//! the object is deserialized; these checks cover what a well-typed object can still get wrong.

use crate::{
    DestinationRuleSpec, HttpRoute, LoadBalancerSettings, OutlierDetection, Percent, StringMatch,
    TrafficPolicy, VirtualServiceSpec,
};
use std::collections::BTreeSet;
use std::fmt;

/// One invalid field: its path inside the object (`spec.http[0].route[1].weight`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Checks that `pattern` compiles as the RE2-compatible regex Envoy will be given.
pub fn validate_regex(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("invalid regex {pattern:?}: {}", last_line(&e.to_string())))
}

/// The regex crate's errors end with the one line that says what is wrong.
fn last_line(text: &str) -> String {
    text.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(text)
        .trim()
        .to_string()
}

pub fn validate_virtual_service(spec: &VirtualServiceSpec) -> Vec<FieldError> {
    let mut errors = Errors(Vec::new());
    if spec.hosts.is_empty() {
        errors.push("spec.hosts", "at least one host is required");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        check_host(&mut errors, &format!("spec.hosts[{i}]"), host);
    }
    for (i, route) in spec.http.iter().enumerate() {
        check_http_route(&mut errors, &format!("spec.http[{i}]"), route);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        if route.route.is_empty() {
            errors.push(
                format!("{path}.route"),
                "at least one destination is required",
            );
        }
        let weights: Vec<Option<i32>> = route.route.iter().map(|d| d.weight).collect();
        check_weights(&mut errors, &format!("{path}.route"), &weights);
        for (j, dest) in route.route.iter().enumerate() {
            check_host(
                &mut errors,
                &format!("{path}.route[{j}].destination.host"),
                &dest.destination.host,
            );
        }
    }
    errors.0
}

fn check_host(errors: &mut Errors, path: &str, host: &str) {
    if host.is_empty() {
        errors.push(path, "host must not be empty");
    } else if host.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
        errors.push(path, format!("invalid host {host:?}"));
    }
}

fn check_http_route(errors: &mut Errors, path: &str, route: &HttpRoute) {
    let actions = [
        !route.route.is_empty(),
        route.redirect.is_some(),
        route.direct_response.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => errors.push(
            format!("{path}.route"),
            "one of route, redirect or directResponse is required",
        ),
        1 => {}
        _ => errors.push(
            path,
            "route, redirect and directResponse are mutually exclusive",
        ),
    }
    for (j, m) in route.matches.iter().enumerate() {
        let mpath = format!("{path}.match[{j}]");
        for (field, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                check_string_match(errors, &format!("{mpath}.{field}"), sm);
            }
        }
        for (group, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
            ("queryParams", &m.query_params),
        ] {
            for (name, sm) in map {
                if name.is_empty() {
                    errors.push(format!("{mpath}.{group}"), "header name must not be empty");
                }
                check_string_match(errors, &format!("{mpath}.{group}.{name}"), sm);
            }
        }
        if let Some(port) = m.port
            && !(1..=65535).contains(&port)
        {
            errors.push(format!("{mpath}.port"), format!("port {port} out of range"));
        }
    }
    let weights: Vec<Option<i32>> = route.route.iter().map(|d| d.weight).collect();
    check_weights(errors, &format!("{path}.route"), &weights);
    for (j, dest) in route.route.iter().enumerate() {
        check_host(
            errors,
            &format!("{path}.route[{j}].destination.host"),
            &dest.destination.host,
        );
        if let Some(port) = &dest.destination.port
            && !(1..=65535).contains(&port.number)
        {
            errors.push(
                format!("{path}.route[{j}].destination.port.number"),
                format!("port {} out of range", port.number),
            );
        }
    }
    if let Some(rewrite) = &route.rewrite {
        if rewrite.uri.is_some() && rewrite.uri_regex_rewrite.is_some() {
            errors.push(
                format!("{path}.rewrite"),
                "uri and uriRegexRewrite are mutually exclusive",
            );
        }
        if let Some(rr) = &rewrite.uri_regex_rewrite
            && let Err(reason) = validate_regex(&rr.pattern)
        {
            errors.push(format!("{path}.rewrite.uriRegexRewrite.match"), reason);
        }
    }
    if let Some(retries) = &route.retries
        && retries.attempts < 0
    {
        errors.push(
            format!("{path}.retries.attempts"),
            "attempts must not be negative",
        );
    }
    if let Some(redirect) = &route.redirect
        && let Some(code) = redirect.redirect_code
        && ![301, 302, 303, 307, 308].contains(&code)
    {
        errors.push(
            format!("{path}.redirect.redirectCode"),
            format!("unsupported redirect code {code}"),
        );
    }
    if let Some(direct) = &route.direct_response
        && !(200..=599).contains(&direct.status)
    {
        errors.push(
            format!("{path}.directResponse.status"),
            format!("status {} is not a valid HTTP status", direct.status),
        );
    }
    if let Some(fault) = &route.fault {
        if fault.delay.is_none() && fault.abort.is_none() {
            errors.push(format!("{path}.fault"), "one of delay or abort is required");
        }
        if let Some(delay) = &fault.delay {
            if delay.fixed_delay.is_none() {
                errors.push(
                    format!("{path}.fault.delay.fixedDelay"),
                    "fixedDelay is required",
                );
            }
            check_percent(
                errors,
                &format!("{path}.fault.delay.percentage"),
                &delay.percentage,
            );
        }
        if let Some(abort) = &fault.abort {
            match (abort.http_status, &abort.grpc_status) {
                (Some(status), None) if !(200..=599).contains(&status) => errors.push(
                    format!("{path}.fault.abort.httpStatus"),
                    format!("status {status} is not a valid HTTP status"),
                ),
                (None, None) => errors.push(
                    format!("{path}.fault.abort"),
                    "one of httpStatus or grpcStatus is required",
                ),
                _ => {}
            }
            check_percent(
                errors,
                &format!("{path}.fault.abort.percentage"),
                &abort.percentage,
            );
        }
    }
    check_percent(
        errors,
        &format!("{path}.mirrorPercentage"),
        &route.mirror_percentage,
    );
    for (j, mirror) in route.mirrors.iter().enumerate() {
        check_host(
            errors,
            &format!("{path}.mirrors[{j}].destination.host"),
            &mirror.destination.host,
        );
        check_percent(
            errors,
            &format!("{path}.mirrors[{j}].percentage"),
            &mirror.percentage,
        );
    }
    if let Some(cors) = &route.cors_policy {
        for (j, origin) in cors.allow_origins.iter().enumerate() {
            check_string_match(
                errors,
                &format!("{path}.corsPolicy.allowOrigins[{j}]"),
                origin,
            );
        }
    }
}

fn check_weights(errors: &mut Errors, path: &str, weights: &[Option<i32>]) {
    for (j, weight) in weights.iter().enumerate() {
        if let Some(w) = weight
            && *w < 0
        {
            errors.push(
                format!("{path}[{j}].weight"),
                format!("weight {w} is negative"),
            );
        }
    }
    if weights.len() > 1 && weights.iter().all(|w| w.unwrap_or(0) == 0) {
        errors.push(
            path,
            "the weights of all destinations are zero: at least one must be positive",
        );
    }
}

fn check_percent(errors: &mut Errors, path: &str, percent: &Option<Percent>) {
    if let Some(p) = percent
        && !(0.0..=100.0).contains(&p.value)
    {
        errors.push(path, format!("percentage {} is not within 0..100", p.value));
    }
}

fn check_string_match(errors: &mut Errors, path: &str, sm: &StringMatch) {
    let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set > 1 {
        errors.push(path, "only one of exact, prefix or regex may be set");
    }
    if let Some(regex) = &sm.regex
        && let Err(reason) = validate_regex(regex)
    {
        errors.push(format!("{path}.regex"), reason);
    }
}

pub fn validate_destination_rule(spec: &DestinationRuleSpec) -> Vec<FieldError> {
    let mut errors = Errors(Vec::new());
    check_host(&mut errors, "spec.host", &spec.host);
    if let Some(policy) = &spec.traffic_policy {
        check_traffic_policy(&mut errors, "spec.trafficPolicy", policy);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            errors.push(format!("{path}.name"), "subset name must not be empty");
        } else if subset.name.contains('|') || subset.name.contains('.') {
            errors.push(
                format!("{path}.name"),
                format!("subset name {:?} must be a DNS-1123 label", subset.name),
            );
        } else if !names.insert(subset.name.as_str()) {
            errors.push(
                format!("{path}.name"),
                format!("duplicate subset name {:?}", subset.name),
            );
        }
        if let Some(policy) = &subset.traffic_policy {
            check_traffic_policy(&mut errors, &format!("{path}.trafficPolicy"), policy);
        }
    }
    errors.0
}

fn check_traffic_policy(errors: &mut Errors, path: &str, policy: &TrafficPolicy) {
    if let Some(lb) = &policy.load_balancer {
        check_load_balancer(errors, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(od) = &policy.outlier_detection {
        check_outlier_detection(errors, &format!("{path}.outlierDetection"), od);
    }
    let mut ports = BTreeSet::new();
    for (i, pls) in policy.port_level_settings.iter().enumerate() {
        let ppath = format!("{path}.portLevelSettings[{i}]");
        match &pls.port {
            None => errors.push(format!("{ppath}.port"), "port is required"),
            Some(p) if !(1..=65535).contains(&p.number) => errors.push(
                format!("{ppath}.port.number"),
                format!("port {} out of range", p.number),
            ),
            Some(p) => {
                if !ports.insert(p.number) {
                    errors.push(
                        format!("{ppath}.port.number"),
                        format!("duplicate port {}", p.number),
                    );
                }
            }
        }
        if let Some(lb) = &pls.load_balancer {
            check_load_balancer(errors, &format!("{ppath}.loadBalancer"), lb);
        }
        if let Some(od) = &pls.outlier_detection {
            check_outlier_detection(errors, &format!("{ppath}.outlierDetection"), od);
        }
    }
}

fn check_load_balancer(errors: &mut Errors, path: &str, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        errors.push(path, "simple and consistentHash are mutually exclusive");
    }
    if let Some(ch) = &lb.consistent_hash {
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip == Some(true),
            ch.http_query_parameter_name.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if keys != 1 {
            errors.push(
                format!("{path}.consistentHash"),
                "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
            );
        }
        if let Some(cookie) = &ch.http_cookie
            && cookie.name.is_empty()
        {
            errors.push(
                format!("{path}.consistentHash.httpCookie.name"),
                "cookie name is required",
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            errors.push(
                format!("{path}.consistentHash"),
                "ringHash and maglev are mutually exclusive",
            );
        }
    }
}

fn check_outlier_detection(errors: &mut Errors, path: &str, od: &OutlierDetection) {
    for (field, value) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = value
            && !(0..=100).contains(&v)
        {
            errors.push(
                format!("{path}.{field}"),
                format!("{v} is not a percentage within 0..100"),
            );
        }
    }
    if let Some(interval) = od.interval
        && interval.nanos < 1_000_000
    {
        errors.push(format!("{path}.interval"), "interval must be at least 1ms");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(yaml: &str) -> VirtualServiceSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn accepts_weighted_route() {
        let spec = vs(
            "hosts: [reviews]\nhttp:\n- route:\n  - {destination: {host: reviews, subset: v1}, weight: 90}\n  - {destination: {host: reviews, subset: v2}, weight: 10}\n",
        );
        assert!(validate_virtual_service(&spec).is_empty());
    }

    #[test]
    fn rejects_all_zero_weights_naming_the_field() {
        let spec = vs(
            "hosts: [reviews]\nhttp:\n- route:\n  - {destination: {host: reviews, subset: v1}, weight: 0}\n  - {destination: {host: reviews, subset: v2}}\n",
        );
        let errors = validate_virtual_service(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "spec.http[0].route");
        assert!(errors[0].reason.contains("zero"));
    }

    #[test]
    fn rejects_bad_regex() {
        let spec = vs(
            "hosts: [a]\nhttp:\n- match: [{uri: {regex: \"/(a\"}}]\n  route: [{destination: {host: a}}]\n",
        );
        let errors = validate_virtual_service(&spec);
        assert_eq!(errors[0].path, "spec.http[0].match[0].uri.regex");
    }

    #[test]
    fn negative_timeout_fails_deserialization() {
        let err = serde_yaml_ng::from_str::<VirtualServiceSpec>(
            "hosts: [a]\nhttp:\n- timeout: -1s\n  route: [{destination: {host: a}}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
    }

    #[test]
    fn rejects_duplicate_subsets_and_conflicting_lb() {
        let spec: DestinationRuleSpec = serde_yaml_ng::from_str(
            "host: r\ntrafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}}\nsubsets:\n- {name: v1}\n- {name: v1}\n",
        )
        .unwrap();
        let paths: Vec<String> = validate_destination_rule(&spec)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            ["spec.trafficPolicy.loadBalancer", "spec.subsets[1].name"]
        );
    }
}
