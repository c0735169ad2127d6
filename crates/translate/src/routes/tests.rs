//! RDS tests on small snapshots built through the model's Index.

use super::virtual_service::{CORS_FILTER, FAULT_FILTER};
use super::*;
use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route_action, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use meshpilot_model::fixtures::{mk_destination_rule, mk_pod, mk_service, mk_virtual_service};
use meshpilot_model::{Index, Object};
use prost::Message;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";
const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews";

fn base_objects() -> Vec<Object> {
    vec![
        Object::Service(mk_service(
            "default",
            "reviews",
            "10.96.120.15",
            &[("http", 9080)],
        )),
        Object::Service(mk_service(
            "default",
            "productpage",
            "10.96.120.20",
            &[("http", 9080)],
        )),
        Object::Pod(Arc::new(mk_pod(
            "default",
            "productpage-v1",
            "10.244.1.20",
            &[("app", "productpage"), ("version", "v1")],
        ))),
        Object::Pod(Arc::new(mk_pod(
            "shop",
            "client",
            "10.244.3.30",
            &[("app", "client")],
        ))),
        mk_destination_rule(
            "default",
            "reviews",
            "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n",
        ),
    ]
}

fn snapshot_with(extra: Vec<Object>) -> Snapshot {
    let mut index = Index::default();
    for object in base_objects().into_iter().chain(extra) {
        index.apply(object);
    }
    index.snapshot()
}

fn productpage(snapshot: &Snapshot) -> Proxy {
    Proxy::for_pod(snapshot, "default", "productpage-v1").expect("productpage pod")
}

fn route_config(snapshot: &Snapshot, name: &str) -> RouteConfiguration {
    build_routes(snapshot, &productpage(snapshot), &[name.to_string()]).remove(0)
}

fn vhost<'a>(config: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    config
        .virtual_hosts
        .iter()
        .find(|vh| vh.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name} in {:?}", names_of(config)))
}

fn names_of(config: &RouteConfiguration) -> Vec<&str> {
    config
        .virtual_hosts
        .iter()
        .map(|vh| vh.name.as_str())
        .collect()
}

/// The routes of reviews' virtual host in route "9080" with the given VirtualService applied.
fn reviews_routes(vs_yaml: &str) -> Vec<Route> {
    let snapshot = snapshot_with(vec![mk_virtual_service("default", "reviews", vs_yaml)]);
    let config = route_config(&snapshot, "9080");
    vhost(&config, &format!("{REVIEWS}:9080")).routes.clone()
}

fn route_action(route: &Route) -> &RouteAction {
    match &route.action {
        Some(Action::Route(action)) => action,
        other => panic!("expected a route action, got {other:?}"),
    }
}

fn single_cluster(route: &Route) -> &str {
    match &route_action(route).cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => name,
        other => panic!("expected one cluster, got {other:?}"),
    }
}

fn weighted(route: &Route) -> &[ClusterWeight] {
    match &route_action(route).cluster_specifier {
        Some(ClusterSpecifier::WeightedClusters(w)) => &w.clusters,
        other => panic!("expected weighted clusters, got {other:?}"),
    }
}

fn path(route: &Route) -> &PathSpecifier {
    route
        .r#match
        .as_ref()
        .unwrap()
        .path_specifier
        .as_ref()
        .unwrap()
}

fn operation(route: &Route) -> &str {
    &route.decorator.as_ref().unwrap().operation
}

fn config_metadata(route: &Route) -> String {
    let istio = &route.metadata.as_ref().unwrap().filter_metadata["istio"];
    match &istio.fields["config"].kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("istio.config is {other:?}"),
    }
}

#[allow(deprecated)]
fn total_weight(w: &envoy_types::pb::envoy::config::route::v3::WeightedCluster) -> Option<u32> {
    w.total_weight.map(|t| t.value)
}

#[allow(deprecated)]
fn max_grpc_timeout(action: &RouteAction) -> Option<Duration> {
    action.max_grpc_timeout
}

#[test]
fn port_route_has_a_default_vhost_per_service_then_allow_any() {
    let snapshot = snapshot_with(vec![]);
    let config = route_config(&snapshot, "9080");
    assert_eq!(config.name, "9080");
    assert_eq!(config.validate_clusters, Some(bool_value(false)));
    assert_eq!(
        config.max_direct_response_body_size_bytes,
        Some(u32_value(1_048_576))
    );
    assert!(config.ignore_port_in_host_matching);
    assert_eq!(
        names_of(&config),
        [
            format!("{PRODUCTPAGE}:9080").as_str(),
            &format!("{REVIEWS}:9080"),
            "allow_any"
        ]
    );

    let reviews = vhost(&config, &format!("{REVIEWS}:9080"));
    assert!(reviews.include_request_attempt_count);
    let [route] = reviews.routes.as_slice() else {
        panic!("one default route expected")
    };
    assert_eq!(route.name, "default");
    assert_eq!(path(route), &PathSpecifier::Prefix("/".into()));
    assert_eq!(single_cluster(route), format!("outbound|9080||{REVIEWS}"));
    assert_eq!(operation(route), format!("{REVIEWS}:9080/*"));
    let action = route_action(route);
    assert_eq!(action.timeout, Some(seconds(0)));
    assert_eq!(max_grpc_timeout(action), Some(seconds(0)));
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, DEFAULT_RETRY_ON);
    assert_eq!(retry.num_retries, Some(u32_value(2)));
    assert_eq!(retry.host_selection_retry_max_attempts, 5);
    assert_eq!(retry.retry_host_predicate.len(), 1);
    assert_eq!(
        retry.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );
    let Some(retry_host_predicate::ConfigType::TypedConfig(typed)) =
        &retry.retry_host_predicate[0].config_type
    else {
        panic!("previous_hosts needs a typed config")
    };
    assert_eq!(
        typed.type_url,
        "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    );
    assert!(action.hash_policy.is_empty());

    let allow_any = config.virtual_hosts.last().unwrap();
    assert_eq!(allow_any.domains, ["*"]);
    assert_eq!(allow_any.routes[0].name, "allow_any");
    assert_eq!(single_cluster(&allow_any.routes[0]), "PassthroughCluster");
    assert_eq!(route_action(&allow_any.routes[0]).timeout, Some(seconds(0)));
    assert_eq!(
        max_grpc_timeout(route_action(&allow_any.routes[0])),
        Some(seconds(0))
    );
    assert!(route_action(&allow_any.routes[0]).retry_policy.is_none());
}

#[test]
fn domains_for_same_and_other_namespace_clients() {
    let snapshot = snapshot_with(vec![]);
    let same = route_config(&snapshot, "9080");
    assert_eq!(
        vhost(&same, &format!("{REVIEWS}:9080")).domains,
        [
            REVIEWS,
            "reviews.default.svc.cluster.local.",
            "reviews",
            "reviews.default.svc",
            "reviews.default",
            "10.96.120.15",
        ]
    );
    let shop_client = Proxy::for_pod(&snapshot, "shop", "client").unwrap();
    let other = build_routes(&snapshot, &shop_client, &["9080".to_string()]).remove(0);
    assert_eq!(
        vhost(&other, &format!("{REVIEWS}:9080")).domains,
        [
            REVIEWS,
            "reviews.default.svc.cluster.local.",
            "reviews.default",
            "reviews.default.svc",
            "10.96.120.15",
        ]
    );
}

#[test]
fn headless_services_also_match_per_pod_names() {
    let mut headless = mk_service("default", "db", "10.0.0.1", &[("http", 9080)]);
    headless.headless = true;
    headless.cluster_ips.clear();
    let snapshot = snapshot_with(vec![Object::Service(headless)]);
    let config = route_config(&snapshot, "9080");
    let domains = &vhost(&config, "db.default.svc.cluster.local:9080").domains;
    assert_eq!(domains.len(), 10);
    assert_eq!(domains[5], "*.db.default.svc.cluster.local");
    assert_eq!(domains[7], "*.db");
}

#[test]
fn weighted_route_from_the_running_example() {
    let routes = reviews_routes(
        "hosts: [reviews]\nhttp:\n- route:\n  - {destination: {host: reviews, subset: v1}, weight: 90}\n  - {destination: {host: reviews, subset: v2}, weight: 10}\n",
    );
    let [route] = routes.as_slice() else {
        panic!("one route expected")
    };
    assert_eq!(route.name, "");
    assert_eq!(path(route), &PathSpecifier::Prefix("/".into()));
    assert_eq!(route.r#match.as_ref().unwrap().case_sensitive, None);
    let clusters: Vec<(&str, u32)> = weighted(route)
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        clusters,
        [
            ("outbound|9080|v1|reviews.default.svc.cluster.local", 90),
            ("outbound|9080|v2|reviews.default.svc.cluster.local", 10),
        ]
    );
    let Some(ClusterSpecifier::WeightedClusters(w)) = &route_action(route).cluster_specifier else {
        unreachable!()
    };
    assert_eq!(total_weight(w), None);
    assert_eq!(config_metadata(route), VS_PATH);
    assert_eq!(operation(route), "reviews:9080/*");
    let action = route_action(route);
    assert_eq!(action.timeout, Some(seconds(0)));
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, DEFAULT_RETRY_ON);
    assert_eq!(retry.retry_host_predicate.len(), 1);
}

#[test]
fn zero_weights_are_dropped_and_a_sole_destination_needs_no_weight() {
    let routes = reviews_routes(
        "hosts: [reviews]\nhttp:\n- match: [{uri: {exact: /one}}]\n  route: [{destination: {host: reviews, subset: v1}}]\n- route:\n  - {destination: {host: reviews, subset: v1}, weight: 0}\n  - {destination: {host: reviews, subset: v2}, weight: 100}\n",
    );
    assert_eq!(
        single_cluster(&routes[0]),
        format!("outbound|9080|v1|{REVIEWS}")
    );
    assert_eq!(operation(&routes[0]), format!("{REVIEWS}:9080/one"));
    let names: Vec<&str> = weighted(&routes[1])
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, [format!("outbound|9080|v2|{REVIEWS}")]);
}

#[test]
fn header_based_match() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- name: jason
  match:
  - name: user
    uri: {prefix: /api}
    ignoreUriCase: true
    method: {exact: GET}
    headers:
      end-user: {exact: jason}
      x-debug: {}
      b-trace: {regex: "a.*"}
      c-any: {}
    withoutHeaders:
      x-skip: {prefix: "1"}
    queryParams:
      v: {exact: "2"}
      w: {}
  route: [{destination: {host: reviews, subset: v2}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    assert_eq!(routes.len(), 2);
    let m = routes[0].r#match.as_ref().unwrap();
    assert_eq!(routes[0].name, "jason.user");
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/api".into())));
    assert_eq!(m.case_sensitive, Some(bool_value(false)));
    let names: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "b-trace", "c-any", "end-user", "x-debug", "x-skip", ":method"
        ]
    );
    let spec = |i: usize| m.headers[i].header_match_specifier.clone().unwrap();
    let HeaderMatchSpecifier::StringMatch(regex) = spec(0) else {
        panic!("regex header")
    };
    assert!(matches!(regex.match_pattern, Some(MatchPattern::SafeRegex(r)) if r.regex == "a.*"));
    assert_eq!(spec(1), HeaderMatchSpecifier::PresentMatch(true));
    let HeaderMatchSpecifier::StringMatch(exact) = spec(2) else {
        panic!("exact header")
    };
    assert_eq!(
        exact.match_pattern,
        Some(MatchPattern::Exact("jason".into()))
    );
    assert_eq!(spec(3), HeaderMatchSpecifier::PresentMatch(true));
    assert!(m.headers[4].invert_match && m.headers[4].treat_missing_header_as_empty);
    assert!(!m.headers[2].invert_match);
    let HeaderMatchSpecifier::StringMatch(method) = spec(5) else {
        panic!("method header")
    };
    assert_eq!(
        method.match_pattern,
        Some(MatchPattern::Exact("GET".into()))
    );
    assert_eq!(m.query_parameters.len(), 2);
    assert_eq!(m.query_parameters[0].name, "v");
    assert_eq!(
        m.query_parameters[1].query_parameter_match_specifier,
        Some(QueryParameterMatchSpecifier::PresentMatch(true))
    );
    assert_eq!(
        single_cluster(&routes[0]),
        format!("outbound|9080|v2|{REVIEWS}")
    );
    assert_eq!(operation(&routes[0]), format!("{REVIEWS}:9080/api*"));
    assert_eq!(routes[1].name, "");
    assert_eq!(routes[1].r#match.as_ref().unwrap().case_sensitive, None);
}

#[test]
fn uri_exact_and_regex_matches() {
    let routes = reviews_routes(
        "hosts: [reviews]\nhttp:\n- match: [{uri: {exact: /x}}, {uri: {regex: '/y/[0-9]+'}}]\n  route: [{destination: {host: reviews}}]\n",
    );
    assert_eq!(path(&routes[0]), &PathSpecifier::Path("/x".into()));
    assert_eq!(
        routes[0].r#match.as_ref().unwrap().case_sensitive,
        Some(bool_value(true))
    );
    let PathSpecifier::SafeRegex(regex) = path(&routes[1]) else {
        panic!("regex path")
    };
    assert_eq!(regex.regex, "/y/[0-9]+");
    assert_eq!(operation(&routes[1]), format!("{REVIEWS}:9080/y/[0-9]+"));
}

#[test]
fn routes_keep_order_and_stop_after_a_catch_all() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /a}}, {uri: {prefix: /}}, {uri: {prefix: /b}}]
  route: [{destination: {host: reviews, subset: v2}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let paths: Vec<&PathSpecifier> = routes.iter().map(path).collect();
    assert_eq!(
        paths,
        [
            &PathSpecifier::Prefix("/a".into()),
            &PathSpecifier::Prefix("/".into())
        ]
    );

    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- route: [{destination: {host: reviews, subset: v1}}]
- match: [{uri: {prefix: /never}}]
  route: [{destination: {host: reviews, subset: v2}}]
"#,
    );
    assert_eq!(routes.len(), 1, "a rule without match is a catch-all");

    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /}, headers: {x-canary: {exact: "1"}}}]
  route: [{destination: {host: reviews, subset: v2}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    assert_eq!(routes.len(), 2, "a header condition makes `/` no catch-all");
}

#[test]
fn matches_for_other_sources_ports_or_gateways_are_skipped() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- name: r
  match:
  - {name: other-app, sourceLabels: {app: ratings}, uri: {prefix: /a}}
  - {name: other-ns, sourceNamespace: shop, uri: {prefix: /b}}
  - {name: other-port, port: 8080, uri: {prefix: /c}}
  - {name: gateway-only, gateways: [ingress], uri: {prefix: /d}}
  - {name: mine, sourceLabels: {app: productpage}, sourceNamespace: default, port: 9080, uri: {prefix: /e}}
  - {name: mesh, gateways: [mesh], uri: {prefix: /f}}
  route: [{destination: {host: reviews, subset: v2}}]
"#,
    );
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r.mine", "r.mesh"]);
}

#[test]
fn a_virtual_service_with_no_rule_for_this_proxy_leaves_the_default_route() {
    let routes = reviews_routes(
        "hosts: [reviews]\nhttp:\n- match: [{sourceLabels: {app: ratings}}]\n  route: [{destination: {host: reviews, subset: v2}}]\n",
    );
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "default");
}

fn created(object: Object, timestamp: &str) -> Object {
    match object {
        Object::VirtualService(mut meta, spec) => {
            meta.creation_timestamp = Some(timestamp.to_string());
            Object::VirtualService(meta, spec)
        }
        other => other,
    }
}

#[test]
fn the_oldest_virtual_service_wins_a_host() {
    let full = |subset: &str| {
        format!(
            "hosts: [{REVIEWS}]\nhttp:\n- route: [{{destination: {{host: {REVIEWS}, subset: {subset}}}}}]\n"
        )
    };
    let snapshot = snapshot_with(vec![
        created(
            mk_virtual_service("default", "newer", &full("v2")),
            "2025-01-01T00:00:00Z",
        ),
        created(
            mk_virtual_service("shop", "older", &full("v1")),
            "2024-01-01T00:00:00Z",
        ),
    ]);
    let config = route_config(&snapshot, "9080");
    let route = &vhost(&config, &format!("{REVIEWS}:9080")).routes[0];
    assert_eq!(single_cluster(route), format!("outbound|9080|v1|{REVIEWS}"));
    assert_eq!(
        config_metadata(route),
        "/apis/networking.istio.io/v1/namespaces/shop/virtual-service/older"
    );

    // A VirtualService private to the proxy's namespace comes before public ones.
    let private = format!("{}exportTo: ['.']\n", full("v2"));
    let snapshot = snapshot_with(vec![
        created(
            mk_virtual_service("default", "private", &private),
            "2025-01-01T00:00:00Z",
        ),
        created(
            mk_virtual_service("shop", "older", &full("v1")),
            "2024-01-01T00:00:00Z",
        ),
    ]);
    let config = route_config(&snapshot, "9080");
    let route = &vhost(&config, &format!("{REVIEWS}:9080")).routes[0];
    assert_eq!(single_cluster(route), format!("outbound|9080|v2|{REVIEWS}"));
}

#[test]
fn wildcard_hosts_cover_services_and_exact_hosts_win() {
    let snapshot = snapshot_with(vec![
        created(
            mk_virtual_service(
                "default",
                "everything",
                "hosts: ['*.default.svc.cluster.local']\nhttp:\n- route: [{destination: {host: reviews, subset: v1}}]\n",
            ),
            "2024-01-01T00:00:00Z",
        ),
        created(
            mk_virtual_service(
                "default",
                "reviews",
                "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews, subset: v2}}]\n",
            ),
            "2025-01-01T00:00:00Z",
        ),
    ]);
    let config = route_config(&snapshot, "9080");
    let product = &vhost(&config, &format!("{PRODUCTPAGE}:9080")).routes[0];
    assert_eq!(
        single_cluster(product),
        format!("outbound|9080|v1|{REVIEWS}")
    );
    assert_eq!(operation(product), format!("{REVIEWS}:9080/*"));
    let reviews = &vhost(&config, &format!("{REVIEWS}:9080")).routes[0];
    assert_eq!(
        single_cluster(reviews),
        format!("outbound|9080|v2|{REVIEWS}")
    );
    assert!(!names_of(&config).iter().any(|n| n.starts_with('*')));
}

#[test]
fn the_most_specific_wildcard_wins_and_the_older_one_on_a_tie() {
    let wildcard = |name: &str, host: &str, subset: &str, created_at: &str| {
        created(
            mk_virtual_service(
                "default",
                name,
                &format!(
                    "hosts: ['{host}']\nhttp:\n- route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
                ),
            ),
            created_at,
        )
    };
    let snapshot = snapshot_with(vec![
        wildcard("mesh", "*.svc.cluster.local", "v1", "2024-01-01T00:00:00Z"),
        wildcard(
            "namespace",
            "*.default.svc.cluster.local",
            "v2",
            "2025-01-01T00:00:00Z",
        ),
        wildcard(
            "same",
            "*.default.svc.cluster.local",
            "v1",
            "2026-01-01T00:00:00Z",
        ),
    ]);
    let config = route_config(&snapshot, "9080");
    let reviews = &vhost(&config, &format!("{REVIEWS}:9080")).routes[0];
    assert_eq!(
        single_cluster(reviews),
        format!("outbound|9080|v2|{REVIEWS}")
    );
}

#[test]
fn hosts_naming_no_service_get_a_vhost_on_port_80_only() {
    let snapshot = snapshot_with(vec![mk_virtual_service(
        "default",
        "external",
        "hosts: [www.example.com]\nhttp:\n- route: [{destination: {host: reviews.default.svc.cluster.local}}]\n",
    )]);
    let port_80 = route_config(&snapshot, "80");
    assert_eq!(names_of(&port_80), ["www.example.com:80", "allow_any"]);
    let external = vhost(&port_80, "www.example.com:80");
    assert_eq!(external.domains, ["www.example.com"]);
    // The destination's only port is used, not the listener's.
    assert_eq!(
        single_cluster(&external.routes[0]),
        format!("outbound|9080||{REVIEWS}")
    );
    let port_9080 = route_config(&snapshot, "9080");
    assert!(!names_of(&port_9080).contains(&"www.example.com:9080"));

    let snapshot = snapshot_with(vec![mk_virtual_service(
        "default",
        "everything",
        "hosts: ['*']\nhttp:\n- route: [{destination: {host: reviews.default.svc.cluster.local}}]\n",
    )]);
    assert_eq!(names_of(&route_config(&snapshot, "80")), ["allow_any"]);
}

#[test]
fn redirect_and_direct_response() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- match: [{uri: {exact: /old}}]
  redirect: {uri: /new, authority: new.example.com, scheme: https, port: 8443, redirectCode: 308}
- match: [{uri: {exact: /plain}}]
  redirect: {uri: /p, port: 80}
- match: [{uri: {prefix: /gone}}]
  directResponse: {status: 410, body: {string: "gone"}}
- directResponse: {status: 200, body: {bytes: "aGVsbG8="}}
"#,
    );
    let Some(Action::Redirect(redirect)) = &routes[0].action else {
        panic!("redirect expected")
    };
    assert_eq!(
        redirect.path_rewrite_specifier,
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            "/new".into()
        ))
    );
    assert_eq!(redirect.host_redirect, "new.example.com");
    assert_eq!(
        redirect.scheme_rewrite_specifier,
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(
            "https".into()
        ))
    );
    assert_eq!(redirect.port_redirect, 8443);
    assert_eq!(
        redirect.response_code,
        redirect_action::RedirectResponseCode::PermanentRedirect as i32
    );
    assert_eq!(operation(&routes[0]), "reviews:9080/old");
    assert_eq!(config_metadata(&routes[0]), VS_PATH);

    let Some(Action::Redirect(plain)) = &routes[1].action else {
        panic!("redirect expected")
    };
    assert_eq!(
        plain.port_redirect, 0,
        "http on port 80 needs no explicit port"
    );
    assert_eq!(
        plain.response_code,
        redirect_action::RedirectResponseCode::MovedPermanently as i32
    );

    let Some(Action::DirectResponse(direct)) = &routes[2].action else {
        panic!("direct response expected")
    };
    assert_eq!(direct.status, 410);
    assert_eq!(
        direct.body.as_ref().unwrap().specifier,
        Some(data_source::Specifier::InlineString("gone".into()))
    );
    assert_eq!(operation(&routes[2]), "reviews:9080/gone*");
    let Some(Action::DirectResponse(bytes)) = &routes[3].action else {
        panic!("direct response expected")
    };
    assert_eq!(
        bytes.body.as_ref().unwrap().specifier,
        Some(data_source::Specifier::InlineBytes(b"hello".to_vec()))
    );
}

#[test]
fn fault_injection_goes_to_the_fault_filter() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /delay}}]
  fault:
    delay: {fixedDelay: 7s, percentage: {value: 12.5}}
    abort: {httpStatus: 503, percentage: {value: 100}}
  route: [{destination: {host: reviews, subset: v1}}]
- fault:
    delay: {fixedDelay: 1s, percent: 30}
    abort: {grpcStatus: UNAVAILABLE}
  route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let decode = |route: &Route| {
        let any = &route.typed_per_filter_config[FAULT_FILTER];
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
        );
        fault::HttpFault::decode(any.value.as_slice()).unwrap()
    };
    let first = decode(&routes[0]);
    let delay = first.delay.unwrap();
    assert_eq!(delay.percentage.unwrap().numerator, 125_000);
    assert_eq!(
        delay.percentage.unwrap().denominator,
        DenominatorType::Million as i32
    );
    assert_eq!(
        delay.fault_delay_secifier,
        Some(envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier::FixedDelay(seconds(7)))
    );
    let abort = first.abort.unwrap();
    assert_eq!(
        abort.error_type,
        Some(fault::fault_abort::ErrorType::HttpStatus(503))
    );
    assert_eq!(abort.percentage.unwrap().numerator, 1_000_000);

    let second = decode(&routes[1]);
    let legacy = second.delay.unwrap().percentage.unwrap();
    assert_eq!(
        (legacy.numerator, legacy.denominator),
        (30, DenominatorType::Hundred as i32)
    );
    assert_eq!(
        second.abort.unwrap().error_type,
        Some(fault::fault_abort::ErrorType::GrpcStatus(14))
    );
}

#[test]
fn cors_policy_goes_to_the_cors_filter() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- corsPolicy:
    allowOrigins: [{exact: "https://a.example.com"}, {regex: "https://.*\\.b\\.com"}]
    allowMethods: [GET, POST]
    allowHeaders: [x-a, x-b]
    exposeHeaders: [x-c]
    maxAge: 24h
    allowCredentials: true
  route: [{destination: {host: reviews}}]
"#,
    );
    let any = &routes[0].typed_per_filter_config[CORS_FILTER];
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
    );
    let policy = cors::CorsPolicy::decode(any.value.as_slice()).unwrap();
    assert_eq!(policy.allow_origin_string_match.len(), 2);
    assert_eq!(
        policy.allow_origin_string_match[0].match_pattern,
        Some(MatchPattern::Exact("https://a.example.com".into()))
    );
    assert_eq!(policy.allow_methods, "GET,POST");
    assert_eq!(policy.allow_headers, "x-a,x-b");
    assert_eq!(policy.expose_headers, "x-c");
    assert_eq!(policy.max_age, "86400");
    assert_eq!(policy.allow_credentials, Some(bool_value(true)));
    assert_eq!(
        policy
            .filter_enabled
            .unwrap()
            .default_value
            .unwrap()
            .numerator,
        100
    );
}

#[test]
fn mirrors_become_request_mirror_policies() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- route: [{destination: {host: reviews, subset: v1}}]
  mirror: {host: reviews, subset: v2}
  mirrors:
  - {destination: {host: productpage}, percentage: {value: 5}}
  - {destination: {host: productpage, port: {number: 8000}}, percentage: {value: 0}}
"#,
    );
    let mirrors = &route_action(&routes[0]).request_mirror_policies;
    assert_eq!(mirrors.len(), 2, "a zero percentage disables its mirror");
    assert_eq!(mirrors[0].cluster, format!("outbound|9080|v2|{REVIEWS}"));
    let all = mirrors[0]
        .runtime_fraction
        .as_ref()
        .unwrap()
        .default_value
        .unwrap();
    assert_eq!(
        (all.numerator, all.denominator),
        (100, DenominatorType::Hundred as i32)
    );
    assert_eq!(mirrors[0].trace_sampled, Some(bool_value(false)));
    assert_eq!(mirrors[1].cluster, format!("outbound|9080||{PRODUCTPAGE}"));
    let five = mirrors[1]
        .runtime_fraction
        .as_ref()
        .unwrap()
        .default_value
        .unwrap();
    assert_eq!(
        (five.numerator, five.denominator),
        (50_000, DenominatorType::Million as i32)
    );
}

#[test]
fn retries_timeouts_and_status_codes() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /a}}]
  timeout: 3s
  retries: {attempts: 4, perTryTimeout: 500ms, retryOn: "gateway-error,503,429", retryRemoteLocalities: true}
  route: [{destination: {host: reviews}}]
- match: [{uri: {prefix: /b}}]
  retries: {attempts: 0}
  route: [{destination: {host: reviews}}]
- route: [{destination: {host: reviews}}]
  retries: {attempts: 1, retryOn: "503"}
"#,
    );
    let action = route_action(&routes[0]);
    assert_eq!(action.timeout, Some(seconds(3)));
    assert_eq!(max_grpc_timeout(action), Some(seconds(3)));
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries, Some(u32_value(4)));
    assert_eq!(retry.retry_on, "gateway-error,retriable-status-codes");
    assert_eq!(retry.retriable_status_codes, [503, 429]);
    assert_eq!(
        retry.per_try_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 500_000_000
        })
    );
    let priority = retry.retry_priority.as_ref().unwrap();
    assert_eq!(priority.name, "envoy.retry_priorities.previous_priorities");
    assert_eq!(retry.retry_host_predicate.len(), 1);
    assert_eq!(retry.host_selection_retry_max_attempts, 5);

    assert!(route_action(&routes[1]).retry_policy.is_none());
    let only_codes = route_action(&routes[2]).retry_policy.as_ref().unwrap();
    assert_eq!(only_codes.retry_on, "retriable-status-codes");
    assert_eq!(only_codes.retriable_status_codes, [503]);
}

#[test]
fn rewrites_change_path_and_host() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /v1/}}]
  rewrite: {uri: /, authority: reviews.internal}
  route: [{destination: {host: reviews}}]
- rewrite:
    uriRegexRewrite: {match: "^/api/(.*)", rewrite: "/\\1"}
  route: [{destination: {host: reviews}}]
"#,
    );
    let action = route_action(&routes[0]);
    assert_eq!(action.prefix_rewrite, "/");
    assert_eq!(
        action.host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "reviews.internal".into()
        ))
    );
    let regex = route_action(&routes[1]).regex_rewrite.as_ref().unwrap();
    assert_eq!(regex.pattern.as_ref().unwrap().regex, "^/api/(.*)");
    assert_eq!(regex.substitution, "/\\1");
}

#[test]
fn header_operations_on_routes_and_weighted_destinations() {
    let routes = reviews_routes(
        r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /one}}]
  headers:
    request:
      set: {x-b: "1", x-a: "2", ":authority": rewritten.example.com}
      add: {x-c: "3", host: ignored.example.com}
      remove: [x-d, ":path", Host]
    response:
      set: {x-e: "5"}
      remove: [x-f]
  route:
  - destination: {host: reviews, subset: v1}
    headers: {request: {set: {x-g: "7"}}}
- route:
  - destination: {host: reviews, subset: v1}
    weight: 50
    headers:
      request: {add: {x-h: "8"}, set: {":authority": v1.example.com}}
      response: {remove: [x-i]}
  - {destination: {host: reviews, subset: v2}, weight: 50}
"#,
    );
    let route = &routes[0];
    let header = |o: &envoy_types::pb::envoy::config::core::v3::HeaderValueOption| {
        let h = o.header.as_ref().unwrap();
        (h.key.clone(), h.value.clone(), o.append_action)
    };
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    let append = HeaderAppendAction::AppendIfExistsOrAdd as i32;
    let request: Vec<_> = route.request_headers_to_add.iter().map(header).collect();
    assert_eq!(
        request,
        [
            ("x-a".to_string(), "2".to_string(), overwrite),
            ("x-b".to_string(), "1".to_string(), overwrite),
            ("x-c".to_string(), "3".to_string(), append),
            ("x-g".to_string(), "7".to_string(), overwrite),
        ]
    );
    assert_eq!(route.request_headers_to_remove, ["x-d"]);
    let response: Vec<_> = route.response_headers_to_add.iter().map(header).collect();
    assert_eq!(response, [("x-e".to_string(), "5".to_string(), overwrite)]);
    assert_eq!(route.response_headers_to_remove, ["x-f"]);
    assert_eq!(
        route_action(route).host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "rewritten.example.com".into()
        ))
    );

    let entries = weighted(&routes[1]);
    let v1 = &entries[0];
    let added: Vec<_> = v1.request_headers_to_add.iter().map(header).collect();
    assert_eq!(added, [("x-h".to_string(), "8".to_string(), append)]);
    assert_eq!(v1.response_headers_to_remove, ["x-i"]);
    assert_eq!(
        v1.host_rewrite_specifier,
        Some(envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral("v1.example.com".into()))
    );
    assert!(entries[1].request_headers_to_add.is_empty());
    assert!(routes[1].request_headers_to_add.is_empty());
}

#[test]
fn consistent_hash_adds_a_hash_policy_and_drops_previous_hosts() {
    let dr = mk_destination_rule(
        "default",
        "reviews",
        "host: reviews\ntrafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\nsubsets:\n- {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 60s, path: /}}}}}\n- {name: v2, labels: {version: v2}}\n",
    );
    let mut index = Index::default();
    for object in base_objects().into_iter().chain([dr]) {
        index.apply(object);
    }
    let default_only = index.snapshot();
    let config = route_config(&default_only, "9080");
    let route = &vhost(&config, &format!("{REVIEWS}:9080")).routes[0];
    let action = route_action(route);
    assert_eq!(
        action.hash_policy[0].policy_specifier,
        Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: "x-user".into(),
            ..Default::default()
        }))
    );
    let retry = action.retry_policy.as_ref().unwrap();
    assert!(retry.retry_host_predicate.is_empty());
    assert_eq!(retry.retry_on, DEFAULT_RETRY_ON);
    // Services without a consistent-hash rule keep the predicate.
    let product = &vhost(&config, &format!("{PRODUCTPAGE}:9080")).routes[0];
    assert_eq!(
        route_action(product)
            .retry_policy
            .as_ref()
            .unwrap()
            .retry_host_predicate
            .len(),
        1
    );

    index.apply(mk_virtual_service(
        "default",
        "reviews",
        "hosts: [reviews]\nhttp:\n- match: [{uri: {prefix: /a}}]\n  route: [{destination: {host: reviews, subset: v1}}]\n- route:\n  - {destination: {host: reviews, subset: v1}, weight: 50}\n  - {destination: {host: reviews, subset: v2}, weight: 50}\n",
    ));
    let with_vs = index.snapshot();
    let config = route_config(&with_vs, "9080");
    let routes = &vhost(&config, &format!("{REVIEWS}:9080")).routes;
    let single = route_action(&routes[0]);
    let Some(hash_policy::PolicySpecifier::Cookie(cookie)) =
        &single.hash_policy[0].policy_specifier
    else {
        panic!("subset cookie hash expected")
    };
    assert_eq!(
        (cookie.name.as_str(), cookie.path.as_str()),
        ("session", "/")
    );
    assert_eq!(cookie.ttl, Some(seconds(60)));
    assert!(
        single
            .retry_policy
            .as_ref()
            .unwrap()
            .retry_host_predicate
            .is_empty()
    );
    let split = route_action(&routes[1]);
    assert_eq!(
        split.hash_policy.len(),
        2,
        "one hash policy per weighted destination"
    );
    assert_eq!(
        split
            .retry_policy
            .as_ref()
            .unwrap()
            .retry_host_predicate
            .len(),
        1
    );
}

#[test]
fn unknown_route_names_get_an_empty_configuration() {
    let snapshot = snapshot_with(vec![]);
    let names: Vec<String> = ["http_proxy", "abc", "0", "99999", "reviews:x", "unix://foo"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let configs = build_routes(&snapshot, &productpage(&snapshot), &names);
    assert_eq!(configs.len(), names.len());
    for (config, name) in configs.iter().zip(&names) {
        assert_eq!(&config.name, name);
        assert!(config.virtual_hosts.is_empty());
        assert_eq!(config.validate_clusters, Some(bool_value(false)));
        assert_eq!(config.max_direct_response_body_size_bytes, None);
    }
}

#[test]
fn sniffed_route_holds_only_its_service_for_any_domain() {
    let snapshot = snapshot_with(vec![
        Object::Service(mk_service("default", "web", "10.96.0.50", &[("", 8080)])),
        Object::Service(mk_service("default", "api", "10.96.0.51", &[("", 8080)])),
    ]);
    let names = vec![
        "web.default.svc.cluster.local:8080".to_string(),
        "8080".to_string(),
        "nothere.default.svc.cluster.local:8080".to_string(),
    ];
    let configs = build_routes(&snapshot, &productpage(&snapshot), &names);
    let sniffed = &configs[0];
    assert_eq!(sniffed.name, names[0]);
    assert_eq!(names_of(sniffed), ["web.default.svc.cluster.local:8080"]);
    assert_eq!(sniffed.virtual_hosts[0].domains, ["*"]);
    assert!(sniffed.ignore_port_in_host_matching);
    assert_eq!(
        single_cluster(&sniffed.virtual_hosts[0].routes[0]),
        "outbound|8080||web.default.svc.cluster.local"
    );
    assert_eq!(
        names_of(&configs[1]),
        [
            "api.default.svc.cluster.local:8080",
            "web.default.svc.cluster.local:8080",
            "allow_any"
        ]
    );
    assert_eq!(
        configs[1].virtual_hosts[1].domains[0],
        "web.default.svc.cluster.local"
    );
    assert!(configs[2].virtual_hosts.is_empty());
}

#[test]
fn route_names_parse_as_port_or_host_and_port() {
    assert_eq!(parse_route_name("9080"), Some(RouteName::Port(9080)));
    assert_eq!(
        parse_route_name("a.b:80"),
        Some(RouteName::Sniffed {
            host: "a.b",
            port: 80
        })
    );
    assert_eq!(parse_route_name("+80"), None);
    assert_eq!(parse_route_name(":80"), None);
    assert_eq!(parse_route_name("a:b:80"), None);
}
