//! YAML text to model objects: splits documents, unwraps `kind: List`, picks the type by
//! `apiVersion`/`kind`, and reports each bad document with the path of the bad field.

use crate::convert::{
    self, ConvertError, DEFAULT_NAMESPACE, build_endpoint_slice, build_endpoints, build_namespace,
    build_pod, build_service,
};
use crate::{LoadError, ObjectRef};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshpilot_api::{DestinationRuleSpec, ISTIO_NETWORKING_GROUP, VirtualServiceSpec};
use meshpilot_model::{ConfigMeta, Object};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use std::path::Path;
use std::sync::Arc;

/// The objects of one file that parsed as YAML.
#[derive(Debug, Default)]
pub(crate) struct ParsedFile {
    /// Each object with the index of the document it came from.
    pub objects: Vec<(usize, Object)>,
    pub errors: Vec<LoadError>,
    /// Documents with any content; zero means the file holds nothing (empty or comments only).
    pub non_empty_documents: usize,
}

/// Parses every document of `text`; `path_for_errors` only labels the errors. A file that is
/// not valid YAML yields no objects and one error.
pub fn parse_documents(path_for_errors: &Path, text: &str) -> (Vec<Object>, Vec<LoadError>) {
    match parse_file(path_for_errors, text) {
        Ok(parsed) => (
            parsed.objects.into_iter().map(|(_, o)| o).collect(),
            parsed.errors,
        ),
        Err(message) => (
            Vec::new(),
            vec![LoadError {
                file: path_for_errors.to_path_buf(),
                document: None,
                object: None,
                field: None,
                message,
            }],
        ),
    }
}

/// `Err` (the reason) only when the text is not YAML at all; bad documents are skipped and
/// listed.
pub(crate) fn parse_file(path: &Path, text: &str) -> Result<ParsedFile, String> {
    // Read every document before converting any, so a syntax error anywhere (a file cut off
    // mid-write) rejects the file as a whole rather than a random tail of it.
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| format!("invalid YAML: {e}"))?;
        documents.push(value);
    }

    let mut parsed = ParsedFile::default();
    for (index, value) in documents.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        parsed.non_empty_documents += 1;
        let context = DocumentContext { path, index };
        context.parse_document(value, &mut parsed);
    }
    Ok(parsed)
}

struct DocumentContext<'a> {
    path: &'a Path,
    index: usize,
}

impl DocumentContext<'_> {
    fn error(&self, object: Option<ObjectRef>, field: String, message: String) -> LoadError {
        LoadError {
            file: self.path.to_path_buf(),
            document: Some(self.index),
            object,
            field: (!field.is_empty()).then_some(field),
            message,
        }
    }

    fn parse_document(&self, mut value: Value, parsed: &mut ParsedFile) {
        if let Err(e) = value.apply_merge() {
            let object = Identity::read(&value).object_ref();
            parsed
                .errors
                .push(self.error(object, String::new(), e.to_string()));
            return;
        }
        if value.get("kind").and_then(Value::as_str) != Some("List") {
            self.parse_object(value, "", parsed);
            return;
        }
        let items = match value.get_mut("items").map(std::mem::take) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items,
            Some(_) => {
                let message = "a List's `items` must be a sequence".to_string();
                parsed
                    .errors
                    .push(self.error(None, "items".into(), message));
                return;
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            self.parse_object(item, &format!("items[{i}]"), parsed);
        }
    }

    /// `prefix` locates the object inside its document (`items[3]` for a List item).
    fn parse_object(&self, value: Value, prefix: &str, parsed: &mut ParsedFile) {
        let identity = Identity::read(&value);
        let Some(kind) = identity.known_kind() else {
            if identity.kind.is_empty() {
                let message = "not a Kubernetes object: no `kind`".to_string();
                let object = identity.object_ref();
                parsed
                    .errors
                    .push(self.error(object, prefix.to_string(), message));
            } else {
                tracing::debug!(
                    file = %self.path.display(),
                    document = self.index,
                    api_version = %identity.api_version,
                    kind = %identity.kind,
                    "ignoring unsupported kind"
                );
            }
            return;
        };
        match build_object(kind, value) {
            Ok(Some(object)) => parsed.objects.push((self.index, object)),
            Ok(None) => {}
            Err(e) => {
                let field = match (prefix.is_empty(), e.field.is_empty()) {
                    (_, true) => prefix.to_string(),
                    (true, false) => e.field,
                    (false, false) => format!("{prefix}.{}", e.field),
                };
                parsed
                    .errors
                    .push(self.error(identity.object_ref(), field, e.message));
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KnownKind {
    Service,
    Pod,
    Namespace,
    Endpoints,
    EndpointSlice,
    /// `discovery.k8s.io/v1beta1`: same shape as v1 except `topology` for `deprecatedTopology`.
    EndpointSliceV1beta1,
    VirtualService,
    DestinationRule,
}

/// What a document says it is, read leniently so errors can name it even when it is broken.
#[derive(Debug, Default)]
struct Identity {
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
}

impl Identity {
    fn read(value: &Value) -> Identity {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        let metadata = value.get("metadata");
        Identity {
            api_version: text(value.get("apiVersion")),
            kind: text(value.get("kind")),
            namespace: text(metadata.and_then(|m| m.get("namespace"))),
            name: text(metadata.and_then(|m| m.get("name"))),
        }
    }

    fn known_kind(&self) -> Option<KnownKind> {
        let (group, version) = self
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", self.api_version.as_str()));
        let istio = group == ISTIO_NETWORKING_GROUP
            && meshpilot_api::ISTIO_NETWORKING_VERSIONS.contains(&version);
        Some(match (group, version, self.kind.as_str()) {
            ("", "v1", "Service") => KnownKind::Service,
            ("", "v1", "Pod") => KnownKind::Pod,
            ("", "v1", "Namespace") => KnownKind::Namespace,
            ("", "v1", "Endpoints") => KnownKind::Endpoints,
            ("discovery.k8s.io", "v1", "EndpointSlice") => KnownKind::EndpointSlice,
            ("discovery.k8s.io", "v1beta1", "EndpointSlice") => KnownKind::EndpointSliceV1beta1,
            (_, _, "VirtualService") if istio => KnownKind::VirtualService,
            (_, _, "DestinationRule") if istio => KnownKind::DestinationRule,
            _ => return None,
        })
    }

    fn object_ref(&self) -> Option<ObjectRef> {
        if self.kind.is_empty() && self.name.is_empty() {
            return None;
        }
        let namespace = match self.known_kind() {
            Some(KnownKind::Namespace) => String::new(),
            Some(_) if self.namespace.is_empty() => DEFAULT_NAMESPACE.to_string(),
            _ => self.namespace.clone(),
        };
        Some(ObjectRef {
            kind: self.kind.clone(),
            namespace,
            name: self.name.clone(),
        })
    }
}

/// `metadata` and `spec` of an Istio config; everything else (status, apiVersion) is ignored.
#[derive(Deserialize)]
struct IstioObject<S> {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: S,
}

impl<S> IstioObject<S> {
    fn config_meta(&self) -> Result<ConfigMeta, ConvertError> {
        let (namespace, name) = convert::namespaced_key(&self.metadata)?;
        Ok(ConfigMeta {
            name,
            namespace,
            creation_timestamp: convert::rfc3339(self.metadata.creation_timestamp.as_ref()),
        })
    }
}

/// `Ok(None)` when the object is well-formed but carries nothing the mesh routes to.
fn build_object(kind: KnownKind, value: Value) -> Result<Option<Object>, ConvertError> {
    Ok(Some(match kind {
        KnownKind::Service => Object::Service(build_service(&typed::<core::Service>(value)?)?),
        KnownKind::Pod => Object::Pod(Arc::new(build_pod(&typed::<core::Pod>(value)?)?)),
        KnownKind::Namespace => {
            Object::Namespace(build_namespace(&typed::<core::Namespace>(value)?)?)
        }
        KnownKind::Endpoints => Object::Endpoints(Arc::new(build_endpoints(&typed::<
            core::Endpoints,
        >(value)?)?)),
        KnownKind::EndpointSlice => {
            let slice = typed::<discovery::EndpointSlice>(value)?;
            match build_endpoint_slice(&slice)? {
                Some(group) => Object::EndpointSlice(Arc::new(group)),
                None => return Ok(None),
            }
        }
        KnownKind::EndpointSliceV1beta1 => {
            let in_v1_terms = |e: ConvertError| ConvertError {
                field: e.field.replace("deprecatedTopology", "topology"),
                ..e
            };
            let slice = typed::<discovery::EndpointSlice>(v1beta1_slice_as_v1(value))
                .map_err(in_v1_terms)?;
            match build_endpoint_slice(&slice).map_err(in_v1_terms)? {
                Some(group) => Object::EndpointSlice(Arc::new(group)),
                None => return Ok(None),
            }
        }
        KnownKind::VirtualService => {
            let object = typed::<IstioObject<VirtualServiceSpec>>(value)?;
            Object::VirtualService(object.config_meta()?, Box::new(object.spec))
        }
        KnownKind::DestinationRule => {
            let object = typed::<IstioObject<DestinationRuleSpec>>(value)?;
            Object::DestinationRule(object.config_meta()?, Box::new(object.spec))
        }
    }))
}

/// Converts one API object (as the API server returns it, `apiVersion` and `kind` included) to
/// a model object. `Ok(None)`: a kind the mesh ignores, or an object with nothing to route to.
pub fn object_from_json(value: serde_json::Value) -> Result<Option<Object>, ConvertError> {
    let value: Value = serde_yaml_ng::to_value(value)
        .map_err(|e| ConvertError::new(String::new(), e.to_string()))?;
    match Identity::read(&value).known_kind() {
        Some(kind) => build_object(kind, value),
        None => Ok(None),
    }
}

/// Deserializes, remembering which field failed.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ConvertError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ConvertError::new(field, e.into_inner().to_string())
    })
}

/// Renames what v1 renamed (`topology` became `deprecatedTopology`) and relabels the version,
/// so the v1 type (which checks `apiVersion`) reads the rest unchanged.
fn v1beta1_slice_as_v1(mut value: Value) -> Value {
    if let Some(api_version) = value.get_mut("apiVersion") {
        *api_version = Value::from("discovery.k8s.io/v1");
    }
    if let Some(Value::Sequence(endpoints)) = value.get_mut("endpoints") {
        for endpoint in endpoints {
            if let Value::Mapping(fields) = endpoint
                && let Some(topology) = fields.remove("topology")
            {
                fields.insert(Value::from("deprecatedTopology"), topology);
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::{Locality, Protocol, TargetPort};
    use std::path::PathBuf;

    fn parse(text: &str) -> (Vec<Object>, Vec<LoadError>) {
        parse_documents(Path::new("deploy/x.yaml"), text)
    }

    const KUBECTL_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service","metadata":{"name":"reviews","namespace":"default"}}
  creationTimestamp: "2024-05-01T10:20:30Z"
  labels:
    app: reviews
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:spec:
        f:ports:
          .: {}
          k:{"port":9080,"protocol":"TCP"}:
            .: {}
            f:name: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2024-05-01T10:20:30Z"
  name: reviews
  namespace: default
  resourceVersion: "1234"
  uid: 5b1c7e4a-0000-4000-8000-000000000001
spec:
  clusterIP: 10.96.1.20
  clusterIPs:
  - 10.96.1.20
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 9080
    protocol: TCP
    targetPort: 9080
  - name: metrics
    port: 15014
    targetPort: http-metrics
  - name: grpc-api
    appProtocol: http
    port: 7070
  selector:
    app: reviews
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"#;

    #[test]
    fn loads_kubectl_get_service_with_status_and_managed_fields() {
        let (objects, errors) = parse(KUBECTL_SERVICE);
        assert!(errors.is_empty(), "{errors:?}");
        let [Object::Service(svc)] = objects.as_slice() else {
            panic!("expected one service, got {objects:?}");
        };
        assert_eq!(svc.name, "reviews");
        assert_eq!(svc.namespace, "default");
        assert_eq!(
            svc.cluster_ips,
            vec!["10.96.1.20".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(!svc.headless);
        assert_eq!(
            svc.creation_timestamp.as_deref(),
            Some("2024-05-01T10:20:30Z")
        );
        assert_eq!(svc.selector.as_ref().unwrap()["app"], "reviews");
        let ports: Vec<_> = svc
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.target_port.clone(), p.protocol))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("http", 9080, TargetPort::Number(9080), Protocol::Http),
                (
                    "metrics",
                    15014,
                    TargetPort::Name("http-metrics".into()),
                    Protocol::Auto
                ),
                ("grpc-api", 7070, TargetPort::Unset, Protocol::Http),
            ]
        );
    }

    #[test]
    fn headless_selectorless_and_external_name_services() {
        let (objects, errors) = parse(
            r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  ports: [{port: 3306}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: web}
spec:
  type: ExternalName
  externalName: api.example.com
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let [Object::Service(db), Object::Service(ext)] = objects.as_slice() else {
            panic!("{objects:?}");
        };
        assert!(db.headless);
        assert!(db.cluster_ips.is_empty());
        assert_eq!(db.namespace, "default");
        assert_eq!(db.selector, None);
        assert_eq!(db.ports[0].protocol, Protocol::Tcp);
        assert_eq!(ext.external_name.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn multi_document_file_and_list_items() {
        let (objects, errors) = parse(
            r#"
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {istio-injection: enabled}
---
# comment-only and empty documents are fine
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: reviews-1
    namespace: prod
    labels: {app: reviews}
  spec:
    serviceAccountName: bookinfo-reviews
    nodeName: node-a
    containers:
    - name: app
      image: reviews:1
      ports:
      - {name: http, containerPort: 9080}
  status:
    podIP: 10.0.0.5
    podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}]
- apiVersion: networking.istio.io/v1beta1
  kind: DestinationRule
  metadata: {name: reviews, namespace: prod}
  spec:
    host: reviews
    subsets: [{name: v1, labels: {version: v1}}]
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), 3);
        let Object::Namespace(ns) = &objects[0] else {
            panic!()
        };
        assert_eq!(ns.name, "prod");
        assert_eq!(ns.labels["istio-injection"], "enabled");
        let Object::Pod(pod) = &objects[1] else {
            panic!()
        };
        assert_eq!(pod.ips.len(), 2);
        assert_eq!(pod.service_account, "bookinfo-reviews");
        assert_eq!(pod.node_name, "node-a");
        assert_eq!(pod.named_port("http"), Some(9080));
        let Object::DestinationRule(meta, spec) = &objects[2] else {
            panic!()
        };
        assert_eq!(
            (meta.namespace.as_str(), meta.name.as_str()),
            ("prod", "reviews")
        );
        assert_eq!(spec.host, "reviews");
    }

    #[test]
    fn endpoint_slice_v1_with_zone_hints_and_conditions() {
        let (objects, errors) = parse(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-abc
  namespace: default
  labels: {kubernetes.io/service-name: reviews}
addressType: IPv4
ports: [{name: http, port: 9080, protocol: TCP}]
endpoints:
- addresses: [10.0.0.5]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
  targetRef: {kind: Pod, name: reviews-1, namespace: default}
  zone: us-east-1a
  deprecatedTopology: {topology.kubernetes.io/region: us-east-1}
- addresses: [10.0.0.6]
  conditions: {ready: false, terminating: true}
  hints: {forZones: [{name: us-east-1b}]}
- addresses: [10.0.0.7]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext, labels: {kubernetes.io/service-name: ext}}
addressType: FQDN
endpoints: [{addresses: [api.example.com]}]
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let [Object::EndpointSlice(group)] = objects.as_slice() else {
            panic!("FQDN slice must be skipped: {objects:?}");
        };
        assert_eq!(group.service_name, "reviews");
        assert_eq!(group.ports[0].name, "http");
        let e = &group.endpoints;
        assert!(e[0].ready && !e[0].terminating);
        assert_eq!(e[0].pod_name.as_deref(), Some("reviews-1"));
        assert_eq!(e[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(
            e[0].locality,
            Locality {
                region: "us-east-1".into(),
                zone: "us-east-1a".into(),
                subzone: String::new()
            }
        );
        assert!(!e[1].ready && e[1].terminating);
        assert_eq!(e[1].locality.zone, "us-east-1b");
        assert!(e[2].ready, "unset ready means ready");
    }

    #[test]
    fn endpoint_slice_v1beta1_reads_topology() {
        let (objects, errors) = parse(
            r#"
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: reviews-old
  namespace: default
  labels: {kubernetes.io/service-name: reviews}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints:
- addresses: [10.0.0.8]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: reviews-2}
  topology:
    kubernetes.io/hostname: node-b
    topology.kubernetes.io/region: eu-west-1
    topology.kubernetes.io/zone: eu-west-1c
    topology.istio.io/subzone: rack-7
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let [Object::EndpointSlice(group)] = objects.as_slice() else {
            panic!("{objects:?}")
        };
        assert_eq!(group.endpoints[0].pod_name.as_deref(), Some("reviews-2"));
        assert_eq!(
            group.endpoints[0].locality,
            Locality::parse("eu-west-1/eu-west-1c/rack-7")
        );
    }

    #[test]
    fn endpoints_with_not_ready_addresses() {
        let (objects, errors) = parse(
            r#"
apiVersion: v1
kind: Endpoints
metadata: {name: legacy, namespace: shop}
subsets:
- addresses:
  - ip: 10.1.0.1
    nodeName: node-a
    targetRef: {kind: Pod, name: legacy-1, namespace: shop}
  notReadyAddresses:
  - ip: 10.1.0.2
  ports: [{name: tcp-db, port: 5432, protocol: TCP}]
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let [Object::Endpoints(group)] = objects.as_slice() else {
            panic!("{objects:?}")
        };
        assert_eq!(
            (group.name.as_str(), group.service_name.as_str()),
            ("legacy", "legacy")
        );
        assert_eq!(group.ports.len(), 1);
        assert_eq!(group.ports[0].port, 5432);
        let states: Vec<_> = group
            .endpoints
            .iter()
            .map(|e| (e.addresses[0].to_string(), e.ready, e.pod_name.clone()))
            .collect();
        assert_eq!(
            states,
            vec![
                ("10.1.0.1".to_string(), true, Some("legacy-1".to_string())),
                ("10.1.0.2".to_string(), false, None),
            ]
        );
    }

    #[test]
    fn unknown_kinds_are_ignored() {
        let (objects, errors) = parse(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews}
spec: {replicas: 1}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {a: b}
"#,
        );
        assert!(objects.is_empty());
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn bad_document_names_file_index_object_and_field_while_others_load() {
        let (objects, errors) = parse(
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - timeout: -1s
    route: [{destination: {host: reviews}}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: ok}
- apiVersion: v1
  kind: Service
  metadata: {name: bad, namespace: web}
  spec:
    ports: [{port: 70000}]
"#,
        );
        assert_eq!(objects.len(), 3, "{objects:?}");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            "deploy/x.yaml: document 2 (VirtualService default/reviews): spec.http[0].timeout: \
             negative duration \"-1s\""
        );
        assert_eq!(errors[1].document, Some(3));
        assert_eq!(
            errors[1].field.as_deref(),
            Some("items[1].spec.ports[0].port")
        );
        assert_eq!(
            errors[1].object,
            Some(ObjectRef {
                kind: "Service".into(),
                namespace: "web".into(),
                name: "bad".into()
            })
        );
        assert_eq!(errors[1].file, PathBuf::from("deploy/x.yaml"));
    }

    #[test]
    fn document_without_kind_or_name_is_an_error() {
        let (objects, errors) = parse(
            "apiVersion: v1\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n",
        );
        assert!(objects.is_empty());
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].document, Some(0));
        assert_eq!(errors[1].field.as_deref(), Some("metadata.name"));
    }

    #[test]
    fn syntax_error_fails_the_whole_file() {
        let good = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n";
        let (objects, errors) = parse(&format!(
            "{good}apiVersion: v1\nkind: Pod\nmetadata: {{name: \"cut"
        ));
        assert!(objects.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].document, None);
        assert!(
            errors[0].message.starts_with("invalid YAML"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn json_documents_load() {
        let (objects, errors) =
            parse(r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "j"}}"#);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(matches!(&objects[..], [Object::Namespace(n)] if n.name == "j"));
    }
}
