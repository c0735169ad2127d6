//! `mk_*` builders for tests across the workspace: small, valid objects with sensible defaults.

use crate::{
    ConfigMeta, EndpointGroup, EndpointPort, GroupEndpoint, Locality, Object, Pod, Protocol,
    Service, ServicePort, TargetPort,
};
use std::collections::BTreeMap;

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
        labels: mk_labels(labels),
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
