//! `mk_*` builders for tests across the workspace: small, valid objects with sensible defaults.

use crate::{
    ConfigMeta, EndpointGroup, EndpointPort, GroupEndpoint, Locality, Object, Pod, Protocol,
    Service, ServicePort, TargetPort,
};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn mk_labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A ClusterIP service with one port per `(name, port)`, targetPort = port, selector `app=<name>`.
pub fn mk_service(namespace: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16)]) -> Service {
    Service {
        name: name.to_string(),
        namespace: namespace.to_string(),
        hostname: "".into(),
        cluster_ips: vec![cluster_ip.parse().expect("cluster ip")],
        headless: false,
        ports: ports
            .iter()
            .map(|(pname, port)| ServicePort {
                name: pname.to_string(),
                port: *port,
                target_port: TargetPort::Number(*port),
                protocol: Protocol::detect("TCP", None, pname, *port),
            })
            .collect(),
        selector: Some(mk_labels(&[("app", name)])),
        creation_timestamp: None,
        external_name: None,
    }
}

pub fn mk_pod(namespace: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        name: name.to_string(),
        namespace: namespace.to_string(),
        ips: vec![ip.parse().expect("pod ip")],
        labels: Arc::new(mk_labels(labels)),
        service_account: "default".to_string(),
        node_name: String::new(),
        container_ports: Vec::new(),
        creation_timestamp: None,
    }
}

/// An EndpointSlice for `service` with ready endpoints `(pod name, ip)` on the given ports.
pub fn mk_slice(
    namespace: &str,
    service: &str,
    ports: &[(&str, u16)],
    endpoints: &[(&str, &str)],
) -> EndpointGroup {
    EndpointGroup {
        namespace: namespace.to_string(),
        name: format!("{service}-abcde"),
        service_name: service.to_string(),
        ports: ports
            .iter()
            .map(|(name, port)| EndpointPort {
                name: name.to_string(),
                port: *port,
            })
            .collect(),
        endpoints: endpoints
            .iter()
            .map(|(pod, ip)| GroupEndpoint {
                addresses: vec![ip.parse().expect("endpoint ip")],
                ready: true,
                terminating: false,
                pod_name: Some(pod.to_string()),
                node_name: None,
                locality: Locality::default(),
            })
            .collect(),
    }
}

pub fn mk_meta(namespace: &str, name: &str) -> ConfigMeta {
    ConfigMeta {
        name: name.to_string(),
        namespace: namespace.to_string(),
        creation_timestamp: None,
    }
}

/// A VirtualService object from its YAML `spec`.
pub fn mk_virtual_service(namespace: &str, name: &str, spec_yaml: &str) -> Object {
    Object::VirtualService(
        mk_meta(namespace, name),
        Box::new(serde_json::from_value(yaml_to_json(spec_yaml)).expect("virtual service spec")),
    )
}

/// A DestinationRule object from its YAML `spec`.
pub fn mk_destination_rule(namespace: &str, name: &str, spec_yaml: &str) -> Object {
    Object::DestinationRule(
        mk_meta(namespace, name),
        Box::new(serde_json::from_value(yaml_to_json(spec_yaml)).expect("destination rule spec")),
    )
}

fn yaml_to_json(yaml: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(yaml).expect("yaml")
}

/// A synthetic mesh for benchmarks: `services` services `svc-<i>` spread over 10 namespaces,
/// each with one HTTP port 8080 and `endpoints` ready pods split between versions v1 and v2;
/// the first `virtual_services` services get a 90/10 VirtualService and the first
/// `destination_rules` a DestinationRule with subsets v1 and v2. Also one client pod,
/// `client-0.ns-0`, at 10.128.0.1.
pub fn mk_mesh(
    services: usize,
    endpoints: usize,
    virtual_services: usize,
    destination_rules: usize,
) -> crate::Index {
    let mut index = crate::Index::default();
    index.apply(Object::Pod(Arc::new(mk_pod(
        "ns-0",
        "client-0",
        "10.128.0.1",
        &[("app", "client"), ("version", "v1")],
    ))));
    for i in 0..services {
        let ns = format!("ns-{}", i % 10);
        let name = format!("svc-{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        index.apply(Object::Service(mk_service(
            &ns,
            &name,
            &ip,
            &[("http", 8080)],
        )));
        let mut pods = Vec::new();
        for e in 0..endpoints {
            let pod = format!("{name}-v{}-{e}", e % 2 + 1);
            let n = i * endpoints + e;
            let pod_ip = format!("10.{}.{}.{}", 130 + n / 62500, (n / 250) % 250, n % 250 + 1);
            let version = format!("v{}", e % 2 + 1);
            index.apply(Object::Pod(Arc::new(mk_pod(
                &ns,
                &pod,
                &pod_ip,
                &[("app", name.as_str()), ("version", version.as_str())],
            ))));
            pods.push((pod, pod_ip));
        }
        let refs: Vec<(&str, &str)> = pods
            .iter()
            .map(|(p, ip)| (p.as_str(), ip.as_str()))
            .collect();
        index.apply(Object::EndpointSlice(Arc::new(mk_slice(
            &ns,
            &name,
            &[("http", 8080)],
            &refs,
        ))));
        if i < destination_rules {
            index.apply(mk_destination_rule(
                &ns,
                &name,
                &format!(
                    "host: {name}\nsubsets:\n- {{name: v1, labels: {{version: v1}}}}\n- {{name: v2, labels: {{version: v2}}}}\n"
                ),
            ));
        }
        if i < virtual_services {
            let subsets = i < destination_rules;
            let dest = |s: &str| {
                if subsets {
                    format!("{{host: {name}, subset: {s}}}")
                } else {
                    format!("{{host: {name}}}")
                }
            };
            index.apply(mk_virtual_service(
                &ns,
                &name,
                &format!(
                    "hosts: [{name}]\nhttp:\n- route:\n  - {{destination: {}, weight: 90}}\n  - {{destination: {}, weight: 10}}\n",
                    dest("v1"),
                    dest("v2")
                ),
            ));
        }
    }
    index
}

/// The reference's running example: Service `default/reviews` (ClusterIP 10.96.120.15, port
/// `http` 9080) with one ready pod `reviews-<version>` per version, labelled `app: reviews` and
/// `version: <version>`, at 10.244.N.(10+N) for the N-th version (v1 → 10.244.1.11, v2 →
/// 10.244.2.12), all in one EndpointSlice.
pub fn mk_reviews_index(versions: &[&str]) -> crate::Index {
    let mut index = crate::Index::default();
    index.apply(Object::Service(mk_service(
        "default",
        "reviews",
        "10.96.120.15",
        &[("http", 9080)],
    )));
    let pods: Vec<(String, String)> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                format!("reviews-{v}"),
                format!("10.244.{}.{}", i + 1, i + 11),
            )
        })
        .collect();
    for ((pod, ip), version) in pods.iter().zip(versions) {
        index.apply(Object::Pod(Arc::new(mk_pod(
            "default",
            pod,
            ip,
            &[("app", "reviews"), ("version", version)],
        ))));
    }
    let endpoints: Vec<(&str, &str)> = pods
        .iter()
        .map(|(p, ip)| (p.as_str(), ip.as_str()))
        .collect();
    index.apply(Object::EndpointSlice(Arc::new(mk_slice(
        "default",
        "reviews",
        &[("http", 9080)],
        &endpoints,
    ))));
    index
}
