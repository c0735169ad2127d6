//! EDS: one ClusterLoadAssignment per requested cluster.

use crate::envoy::{socket_address, u32_value};
use crate::names;
use envoy_types::pb::envoy::config::core::v3::{self as core, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use meshpilot_model::{Endpoint, Locality, Proxy, Snapshot, labels_match};
use std::collections::BTreeMap;

/// One assignment per requested name, in the order requested. Names that are not the
/// `outbound` cluster of a known service port, and unknown subsets, get an assignment with no
/// endpoints, so Envoy warms the cluster empty instead of waiting for it.
pub fn build_endpoints(
    snapshot: &Snapshot,
    proxy: &Proxy,
    cluster_names: &[String],
) -> Vec<ClusterLoadAssignment> {
    cluster_names
        .iter()
        .map(|name| ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: locality_endpoints(snapshot, proxy, name).unwrap_or_default(),
            ..Default::default()
        })
        .collect()
}

fn locality_endpoints(
    snapshot: &Snapshot,
    proxy: &Proxy,
    cluster_name: &str,
) -> Option<Vec<LocalityLbEndpoints>> {
    let parts = names::parse_cluster_name(cluster_name)?;
    if parts.direction != "outbound" {
        return None;
    }
    let service = snapshot.service(parts.host)?;
    let port = service.port(parts.port)?;
    let subset_labels = if parts.subset.is_empty() {
        BTreeMap::new()
    } else {
        let rule = snapshot.destination_rule_for(parts.host, &proxy.namespace)?;
        let subset = rule.spec.subsets.iter().find(|s| s.name == parts.subset)?;
        subset.labels.clone()
    };

    let mut by_locality: BTreeMap<&Locality, Vec<&Endpoint>> = BTreeMap::new();
    for endpoint in snapshot.endpoints(parts.host) {
        if endpoint.port_name == port.name
            && endpoint.ready
            && labels_match(&subset_labels, &endpoint.labels)
        {
            by_locality
                .entry(&endpoint.locality)
                .or_default()
                .push(endpoint);
        }
    }
    let groups = by_locality
        .into_iter()
        .map(|(locality, mut members)| {
            members.sort_by_key(|e| (e.address, e.port));
            let weight = u32::try_from(members.len()).unwrap_or(u32::MAX);
            LocalityLbEndpoints {
                locality: (!locality.is_empty()).then(|| core::Locality {
                    region: locality.region.clone(),
                    zone: locality.zone.clone(),
                    sub_zone: locality.subzone.clone(),
                }),
                lb_endpoints: members.into_iter().map(lb_endpoint).collect(),
                load_balancing_weight: Some(u32_value(weight)),
                ..Default::default()
            }
        })
        .collect();
    Some(groups)
}

/// A healthy endpoint of weight 1. istiod also attaches `istio.workload` metadata, read only by
/// istio-proxy's telemetry filters; upstream Envoy has no use for it, so it is not sent.
fn lb_endpoint(endpoint: &Endpoint) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(&endpoint.address, endpoint.port)),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: Some(u32_value(1)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
    use meshpilot_model::fixtures::{mk_destination_rule, mk_pod, mk_service, mk_slice};
    use meshpilot_model::{Index, Object};
    use std::sync::Arc;

    const REVIEWS: &str = "reviews.default.svc.cluster.local";

    /// reviews with ports http 9080 and tcp-admin 9090. Pods: two ready v1 and one not-ready
    /// v1 in us-east1-b, one v2 in us-east1-c, one v1 without locality; subsets v1 and v2.
    fn mesh() -> Snapshot {
        let mut index = Index::default();
        index.apply(Object::Service(mk_service(
            "default",
            "reviews",
            "10.96.120.15",
            &[("http", 9080), ("tcp-admin", 9090)],
        )));
        let pods = [
            ("reviews-v1-7d9f8c-aaaaa", "10.244.1.21", "v1", Some("b")),
            ("reviews-v1-7d9f8c-bbbbb", "10.244.1.11", "v1", Some("b")),
            ("reviews-v1-7d9f8c-eeeee", "10.244.1.30", "v1", Some("b")),
            ("reviews-v2-5c6b4d-ccccc", "10.244.2.12", "v2", Some("c")),
            ("reviews-v1-7d9f8c-ddddd", "10.244.3.13", "v1", None),
        ];
        for (name, ip, version, zone) in pods {
            let zone = zone.map(|z| format!("us-east1-{z}"));
            let mut labels = vec![("app", "reviews"), ("version", version)];
            if let Some(zone) = &zone {
                labels.push(("topology.kubernetes.io/region", "us-east1"));
                labels.push(("topology.kubernetes.io/zone", zone));
            }
            index.apply(Object::Pod(Arc::new(mk_pod("default", name, ip, &labels))));
        }
        let refs: Vec<(&str, &str)> = pods.iter().map(|(n, ip, _, _)| (*n, *ip)).collect();
        let mut slice = mk_slice(
            "default",
            "reviews",
            &[("http", 9080), ("tcp-admin", 9090)],
            &refs,
        );
        slice.endpoints[2].ready = false;
        index.apply(Object::EndpointSlice(Arc::new(slice)));
        index.apply(Object::Pod(Arc::new(mk_pod(
            "default",
            "productpage-0",
            "10.244.1.20",
            &[("app", "productpage")],
        ))));
        index.apply(mk_destination_rule(
            "default",
            "reviews",
            "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n",
        ));
        index.snapshot()
    }

    fn proxy(snapshot: &Snapshot) -> Proxy {
        Proxy::for_pod(snapshot, "default", "productpage-0").unwrap()
    }

    fn eds(snapshot: &Snapshot, name: &str) -> ClusterLoadAssignment {
        let mut out = build_endpoints(snapshot, &proxy(snapshot), &[name.to_string()]);
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    fn address(e: &LbEndpoint) -> String {
        let Some(HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
            panic!("endpoint expected");
        };
        let Some(address::Address::SocketAddress(sa)) =
            endpoint.address.as_ref().and_then(|a| a.address.clone())
        else {
            panic!("socket address expected");
        };
        let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
            panic!("port expected");
        };
        format!("{}:{port}", sa.address)
    }

    /// `(locality zone or "-", weight, [addresses])` per group.
    fn summary(cla: &ClusterLoadAssignment) -> Vec<(String, u32, Vec<String>)> {
        cla.endpoints
            .iter()
            .map(|g| {
                (
                    g.locality
                        .as_ref()
                        .map_or("-".to_string(), |l| format!("{}/{}", l.region, l.zone)),
                    g.load_balancing_weight.as_ref().unwrap().value,
                    g.lb_endpoints.iter().map(address).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn default_cluster_groups_ready_endpoints_by_locality() {
        let snapshot = mesh();
        let cla = eds(&snapshot, &format!("outbound|9080||{REVIEWS}"));
        assert_eq!(cla.cluster_name, format!("outbound|9080||{REVIEWS}"));
        assert_eq!(
            summary(&cla),
            [
                ("-".to_string(), 1, vec!["10.244.3.13:9080".to_string()]),
                (
                    "us-east1/us-east1-b".to_string(),
                    2,
                    vec![
                        "10.244.1.11:9080".to_string(),
                        "10.244.1.21:9080".to_string()
                    ]
                ),
                (
                    "us-east1/us-east1-c".to_string(),
                    1,
                    vec!["10.244.2.12:9080".to_string()]
                ),
            ]
        );
        let first = &cla.endpoints[1].lb_endpoints[0];
        assert_eq!(first.health_status, HealthStatus::Healthy as i32);
        assert_eq!(first.load_balancing_weight, Some(u32_value(1)));
        assert!(first.metadata.is_none(), "no istio-proxy-only metadata");

        // Another service port selects the endpoints by port name.
        let admin = eds(&snapshot, &format!("outbound|9090||{REVIEWS}"));
        assert_eq!(
            admin.endpoints[0]
                .lb_endpoints
                .iter()
                .map(address)
                .collect::<Vec<_>>(),
            ["10.244.3.13:9090"]
        );
    }

    #[test]
    fn subset_clusters_keep_only_matching_endpoints() {
        let snapshot = mesh();
        let v2 = eds(&snapshot, &format!("outbound|9080|v2|{REVIEWS}"));
        assert_eq!(
            summary(&v2),
            [(
                "us-east1/us-east1-c".to_string(),
                1,
                vec!["10.244.2.12:9080".to_string()]
            )]
        );
        let v1 = eds(&snapshot, &format!("outbound|9080|v1|{REVIEWS}"));
        let v1_addresses: Vec<String> = v1
            .endpoints
            .iter()
            .flat_map(|g| g.lb_endpoints.iter().map(address))
            .collect();
        assert_eq!(
            v1_addresses,
            ["10.244.3.13:9080", "10.244.1.11:9080", "10.244.1.21:9080"]
        );
    }

    #[test]
    fn unknown_names_get_an_empty_assignment_in_request_order() {
        let snapshot = mesh();
        let names: Vec<String> = [
            format!("outbound|9080|v9|{REVIEWS}"),
            format!("outbound|1234||{REVIEWS}"),
            "outbound|9080||nope.default.svc.cluster.local".to_string(),
            "inbound|9080||".to_string(),
            "BlackHoleCluster".to_string(),
            format!("outbound|9080||{REVIEWS}"),
        ]
        .into();
        let out = build_endpoints(&snapshot, &proxy(&snapshot), &names);
        assert_eq!(
            out.iter()
                .map(|c| c.cluster_name.clone())
                .collect::<Vec<_>>(),
            names
        );
        for cla in &out[..5] {
            assert_eq!(
                cla,
                &ClusterLoadAssignment {
                    cluster_name: cla.cluster_name.clone(),
                    ..Default::default()
                }
            );
        }
        assert!(!out[5].endpoints.is_empty());
    }
}
