//! The proxy a config is built for: identity from the xDS node id and metadata.

use crate::snapshot::Snapshot;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterceptionMode {
    Redirect,
    Tproxy,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "node id {0:?} must have four '~'-separated parts: sidecar~IP~pod.namespace~namespace.svc.cluster.local"
    )]
    MalformedNodeId(String),
    #[error("node id {id:?}: proxy type {kind:?} is not supported (expected \"sidecar\")")]
    UnsupportedType { id: String, kind: String },
    #[error("node id {0:?}: no valid IP in INSTANCE_IPS metadata or the node id")]
    NoIp(String),
    #[error("node metadata {key}: {reason}")]
    BadMetadata { key: &'static str, reason: String },
}

/// The node metadata fields meshpilot reads (`ISTIO_META_*` on the sidecar side).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyMetadata {
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub instance_ips: Option<String>,
    pub interception_mode: Option<String>,
    pub cluster_id: Option<String>,
    pub istio_version: Option<String>,
}

impl ProxyMetadata {
    /// Reads the metadata Struct (as JSON) Envoy sends in `node.metadata`.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ProxyError> {
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let labels = match value.get("LABELS") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), v)
                })
                .collect(),
            Some(serde_json::Value::String(s)) => {
                serde_json::from_str(s).map_err(|e| ProxyError::BadMetadata {
                    key: "LABELS",
                    reason: e.to_string(),
                })?
            }
            Some(other) => {
                return Err(ProxyError::BadMetadata {
                    key: "LABELS",
                    reason: format!("expected a map of strings, got {other}"),
                });
            }
        };
        Ok(ProxyMetadata {
            namespace: text("NAMESPACE"),
            labels,
            instance_ips: text("INSTANCE_IPS"),
            interception_mode: text("INTERCEPTION_MODE"),
            cluster_id: text("CLUSTER_ID"),
            istio_version: text("ISTIO_VERSION"),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub node_id: String,
    /// All instance IPs, the first being the pod IP.
    pub ips: Vec<IpAddr>,
    pub pod_name: String,
    pub namespace: Arc<str>,
    /// `<ns>.svc.cluster.local`: decides which short names vhosts get.
    pub dns_domain: String,
    pub labels: Arc<BTreeMap<String, String>>,
    pub interception_mode: InterceptionMode,
    pub cluster_id: String,
}

impl Proxy {
    /// Parses `sidecar~IP~pod.ns~ns.svc.cluster.local` plus metadata.
    pub fn from_node(node_id: &str, metadata: &ProxyMetadata) -> Result<Proxy, ProxyError> {
        let parts: Vec<&str> = node_id.split('~').collect();
        if parts.len() != 4 {
            return Err(ProxyError::MalformedNodeId(node_id.to_string()));
        }
        if parts[0] != "sidecar" {
            return Err(ProxyError::UnsupportedType {
                id: node_id.to_string(),
                kind: parts[0].to_string(),
            });
        }
        let from_meta: Vec<IpAddr> = metadata
            .instance_ips
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let ips = if from_meta.is_empty() {
            match parts[1].parse() {
                Ok(ip) => vec![ip],
                Err(_) => return Err(ProxyError::NoIp(node_id.to_string())),
            }
        } else {
            from_meta
        };
        let id = parts[2];
        let dns_domain = parts[3].to_string();
        let (pod_name, id_namespace) = id.rsplit_once('.').unwrap_or((id, ""));
        let namespace = metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| (!id_namespace.is_empty()).then(|| id_namespace.to_string()))
            .unwrap_or_else(|| dns_domain.split('.').next().unwrap_or_default().to_string());
        let interception_mode = match metadata.interception_mode.as_deref() {
            Some("TPROXY") => InterceptionMode::Tproxy,
            Some("NONE") => InterceptionMode::None,
            _ => InterceptionMode::Redirect,
        };
        Ok(Proxy {
            node_id: node_id.to_string(),
            ips,
            pod_name: pod_name.to_string(),
            namespace: namespace.into(),
            dns_domain,
            labels: Arc::new(metadata.labels.clone()),
            interception_mode,
            cluster_id: metadata
                .cluster_id
                .clone()
                .unwrap_or_else(|| "Kubernetes".to_string()),
        })
    }

    /// The proxy for a pod the snapshot knows, as its injected sidecar would announce itself.
    pub fn for_pod(snapshot: &Snapshot, namespace: &str, name: &str) -> Option<Proxy> {
        let pod = snapshot.pod(namespace, name)?;
        let ip = *pod.ips.first()?;
        Some(Proxy {
            node_id: format!(
                "sidecar~{ip}~{name}.{namespace}~{namespace}.svc.{}",
                snapshot.domain
            ),
            ips: pod.ips.clone(),
            pod_name: name.to_string(),
            namespace: namespace.into(),
            dns_domain: format!("{namespace}.svc.{}", snapshot.domain),
            labels: pod.labels.clone(),
            interception_mode: InterceptionMode::Redirect,
            cluster_id: "Kubernetes".to_string(),
        })
    }

    /// `<pod>.<namespace>`, the proxy id istioctl uses.
    pub fn id(&self) -> String {
        format!("{}.{}", self.pod_name, self.namespace)
    }

    pub fn ip(&self) -> IpAddr {
        self.ips[0]
    }

    /// Takes the pod's labels from the snapshot when the pod is known (only within the proxy's
    /// own namespace, as istiod does); the metadata labels stay otherwise.
    pub fn refresh_labels(&mut self, snapshot: &Snapshot) {
        if let Some(pod) = snapshot.pod(&self.namespace, &self.pod_name) {
            self.labels = pod.labels.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_id_and_metadata() {
        let meta = ProxyMetadata::from_json(&serde_json::json!({
            "NAMESPACE": "default",
            "LABELS": {"app": "productpage", "version": "v1"},
            "INSTANCE_IPS": "10.244.1.20,fd00::20",
            "INTERCEPTION_MODE": "REDIRECT",
        }))
        .unwrap();
        let p = Proxy::from_node(
            "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local",
            &meta,
        )
        .unwrap();
        assert_eq!(p.pod_name, "productpage-v1-6b7f6dc5f-ccccc");
        assert_eq!(&*p.namespace, "default");
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.labels["app"], "productpage");
        assert_eq!(p.id(), "productpage-v1-6b7f6dc5f-ccccc.default");
        assert_eq!(p.interception_mode, InterceptionMode::Redirect);
    }

    #[test]
    fn rejects_bad_node_ids() {
        let meta = ProxyMetadata::default();
        assert!(matches!(
            Proxy::from_node("sidecar~1.2.3.4", &meta),
            Err(ProxyError::MalformedNodeId(_))
        ));
        assert!(matches!(
            Proxy::from_node("router~1.2.3.4~a.b~b.svc.cluster.local", &meta),
            Err(ProxyError::UnsupportedType { .. })
        ));
        assert!(matches!(
            Proxy::from_node("sidecar~nope~a.b~b.svc.cluster.local", &meta),
            Err(ProxyError::NoIp(_))
        ));
    }

    #[test]
    fn namespace_falls_back_to_id_then_dns_domain() {
        let p = Proxy::from_node(
            "sidecar~1.2.3.4~app.shop~shop.svc.cluster.local",
            &ProxyMetadata::default(),
        )
        .unwrap();
        assert_eq!(&*p.namespace, "shop");
    }

    #[test]
    fn a_known_pods_labels_are_shared_with_its_proxy() {
        let snapshot = crate::fixtures::mk_reviews_index(&["v1"]).snapshot();
        let mut proxy = Proxy::from_node(
            "sidecar~10.244.1.11~reviews-v1.default~default.svc.cluster.local",
            &ProxyMetadata::default(),
        )
        .unwrap();
        proxy.refresh_labels(&snapshot);
        let pod = snapshot.pod("default", "reviews-v1").unwrap();
        // Pointer-equal, so checking on every push whether they changed costs no comparison.
        assert!(Arc::ptr_eq(&proxy.labels, &pod.labels));
        assert_eq!(proxy.labels["version"], "v1");
    }
}
