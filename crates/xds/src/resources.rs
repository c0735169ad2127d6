//! Encoded resources and the cache that builds each one once per distinct dependency set.
//!
//! A proxy's config depends on only a few of its attributes, so proxies are grouped into
//! classes per resource type and a class's resources are translated and encoded once:
//! - CDS: the proxy's namespace (DestinationRule lookup), its own service targets (inbound
//!   clusters) and IP families (inbound bind addresses);
//! - LDS: namespace, labels, interception mode, service targets, and the pod IPs only when a
//!   headless service exists (per-endpoint listeners skip the proxy's own IP);
//! - RDS: the route name, namespace, DNS domain (short host names), and labels only when some
//!   VirtualService matches on `sourceLabels`;
//! - EDS: the cluster name and namespace (subset lookup), revalidated per snapshot against
//!   the identity of the service's endpoint list and of the DestinationRule in effect, so an
//!   endpoint change rebuilds only the assignments of the services it touched.

use crate::types::ResourceType;
use dashmap::DashMap;
use envoy_types::pb::google::protobuf::Any;
use meshpilot_model::{ChangeSet, DestinationRuleConfig, Endpoint, Proxy, Snapshot};
use meshpilot_translate::{build_clusters, build_endpoints, build_listeners, build_routes};
use prost::{Message, Name};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

/// One Envoy resource, encoded once and shared by every proxy that is sent it.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    /// Content hash of the encoding: equal versions mean byte-identical resources.
    pub version: String,
    pub body: Any,
}

impl Resource {
    /// Encodes canonically (map entries sorted), so equal config always has equal bytes.
    pub fn encode<M: Message + Name>(name: String, message: &M) -> Arc<Resource> {
        let body = Any {
            type_url: M::type_url(),
            value: meshpilot_translate::canonical::encode_canonical(message),
        };
        let mut hasher = DefaultHasher::new();
        body.value.hash(&mut hasher);
        Arc::new(Resource {
            name,
            version: format!("{:016x}", hasher.finish()),
            body,
        })
    }
}

pub type Resources = Arc<Vec<Arc<Resource>>>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TargetSignature(Vec<(String, u16, u16)>);

impl TargetSignature {
    fn of(snapshot: &Snapshot, proxy: &Proxy) -> Self {
        TargetSignature(
            meshpilot_translate::service_target_ports(snapshot, proxy)
                .into_iter()
                .map(|(host, port, target)| (host.to_string(), port, target))
                .collect(),
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClusterClass {
    namespace: String,
    targets: TargetSignature,
    ipv4: bool,
    ipv6: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ListenerClass {
    namespace: String,
    /// Only when some VirtualService's TCP route matches on `sourceLabels`; the labels that
    /// pick the proxy's own services are covered by `targets`.
    labels: Option<BTreeMap<String, String>>,
    interception: String,
    targets: TargetSignature,
    ips: Option<Vec<IpAddr>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RouteClass {
    name: String,
    namespace: String,
    dns_domain: String,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EndpointClass {
    name: String,
    namespace: String,
}

/// What an assignment was built from. Held (not just compared by address) so an old input can
/// never be freed and its address reused by a new one while the entry lives.
#[derive(Clone, Debug)]
struct EndpointInputs {
    endpoints: Option<Arc<Vec<Endpoint>>>,
    rule: Option<Arc<DestinationRuleConfig>>,
}

impl PartialEq for EndpointInputs {
    fn eq(&self, other: &Self) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same(&self.endpoints, &other.endpoints) && same(&self.rule, &other.rule)
    }
}

struct CachedAssignment {
    inputs: EndpointInputs,
    resource: Arc<Resource>,
}

/// Per-snapshot resource cache. [`ResourceCache::next`] carries over what a change cannot have
/// affected.
pub struct ResourceCache {
    snapshot: Arc<Snapshot>,
    clusters: Arc<DashMap<ClusterClass, Resources>>,
    listeners: Arc<DashMap<ListenerClass, Resources>>,
    routes: Arc<DashMap<RouteClass, Arc<Resource>>>,
    endpoints: Arc<DashMap<EndpointClass, CachedAssignment>>,
    any_headless: bool,
    any_http_source_match: bool,
    any_tcp_source_match: bool,
}

/// A whole-set type (CDS, LDS): built once per class.
fn whole_set<K: Eq + std::hash::Hash>(
    cache: &DashMap<K, Resources>,
    class: K,
    build: impl FnOnce() -> Vec<Arc<Resource>>,
) -> Resources {
    if let Some(hit) = cache.get(&class) {
        return hit.clone();
    }
    // Built outside the map's lock: a build can take milliseconds and other classes must not
    // wait on it. Two proxies of one new class may both build it; the first insert wins.
    let built = Arc::new(build());
    cache.entry(class).or_insert(built).clone()
}

impl ResourceCache {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        let any_headless = snapshot.services().any(|s| s.headless);
        let vss = snapshot.virtual_services();
        let any_http_source_match = vss.iter().any(|vs| {
            vs.spec
                .http
                .iter()
                .any(|r| r.matches.iter().any(|m| !m.source_labels.is_empty()))
        });
        let any_tcp_source_match = vss.iter().any(|vs| {
            vs.spec
                .tcp
                .iter()
                .any(|r| r.matches.iter().any(|m| !m.source_labels.is_empty()))
        });
        ResourceCache {
            any_headless,
            any_http_source_match,
            any_tcp_source_match,
            snapshot,
            clusters: Arc::default(),
            listeners: Arc::default(),
            routes: Arc::default(),
            endpoints: Arc::default(),
        }
    }

    /// The cache for the next snapshot: keeps each type's entries when `changes` cannot have
    /// affected them; endpoint assignments are always kept and revalidated on use.
    pub fn next(&self, snapshot: Arc<Snapshot>, changes: &ChangeSet) -> Self {
        let mut next = ResourceCache::new(snapshot);
        let affected = crate::types::affected_types(changes, &next.snapshot);
        if !affected.contains(ResourceType::Cluster) {
            next.clusters = self.clusters.clone();
        }
        if !affected.contains(ResourceType::Listener) {
            next.listeners = self.listeners.clone();
        }
        if !affected.contains(ResourceType::Route) {
            next.routes = self.routes.clone();
        }
        next.endpoints = self.endpoints.clone();
        next
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Every cluster of the proxy, CDS order.
    pub fn clusters(&self, proxy: &Proxy) -> Resources {
        let class = ClusterClass {
            namespace: proxy.namespace.clone(),
            targets: TargetSignature::of(&self.snapshot, proxy),
            ipv4: proxy.ips.iter().any(IpAddr::is_ipv4),
            ipv6: proxy.ips.iter().any(IpAddr::is_ipv6),
        };
        whole_set(&self.clusters, class, || {
            build_clusters(&self.snapshot, proxy)
                .iter()
                .map(|c| Resource::encode(c.name.clone(), c))
                .collect()
        })
    }

    /// Every listener of the proxy, LDS order.
    pub fn listeners(&self, proxy: &Proxy) -> Resources {
        let class = ListenerClass {
            namespace: proxy.namespace.clone(),
            labels: self.any_tcp_source_match.then(|| proxy.labels.clone()),
            interception: format!("{:?}", proxy.interception_mode),
            targets: TargetSignature::of(&self.snapshot, proxy),
            ips: self.any_headless.then(|| proxy.ips.clone()),
        };
        whole_set(&self.listeners, class, || {
            build_listeners(&self.snapshot, proxy)
                .iter()
                .map(|l| Resource::encode(l.name.clone(), l))
                .collect()
        })
    }

    /// The named route configurations, in the order asked.
    pub fn routes<'a>(
        &self,
        proxy: &Proxy,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Vec<Arc<Resource>> {
        names
            .into_iter()
            .map(|name| {
                let class = RouteClass {
                    name: name.clone(),
                    namespace: proxy.namespace.clone(),
                    dns_domain: proxy.dns_domain.clone(),
                    labels: self.any_http_source_match.then(|| proxy.labels.clone()),
                };
                self.routes
                    .entry(class)
                    .or_insert_with(|| {
                        let built = build_routes(&self.snapshot, proxy, std::slice::from_ref(name));
                        let route = built.into_iter().next().unwrap_or_default();
                        Resource::encode(name.clone(), &route)
                    })
                    .clone()
            })
            .collect()
    }

    /// The named load assignments, in the order asked.
    pub fn endpoints<'a>(
        &self,
        proxy: &Proxy,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Vec<Arc<Resource>> {
        names
            .into_iter()
            .map(|name| {
                let inputs = self.endpoint_inputs(name, &proxy.namespace);
                let class = EndpointClass {
                    name: name.clone(),
                    namespace: proxy.namespace.clone(),
                };
                if let Some(cached) = self.endpoints.get(&class)
                    && cached.inputs == inputs
                {
                    return cached.resource.clone();
                }
                let built = build_endpoints(&self.snapshot, proxy, std::slice::from_ref(name));
                let assignment = built.into_iter().next().unwrap_or_default();
                let resource = Resource::encode(name.clone(), &assignment);
                self.endpoints.insert(
                    class,
                    CachedAssignment {
                        inputs,
                        resource: resource.clone(),
                    },
                );
                resource
            })
            .collect()
    }

    fn endpoint_inputs(&self, cluster_name: &str, namespace: &str) -> EndpointInputs {
        let host = meshpilot_translate::names::parse_cluster_name(cluster_name)
            .map(|p| p.host)
            .unwrap_or_default();
        EndpointInputs {
            endpoints: self.snapshot.endpoints_arc(host).cloned(),
            rule: self.snapshot.destination_rule_for(host, namespace),
        }
    }

    /// Drops cached assignments of clusters no snapshot names any more (called per snapshot).
    pub fn prune_endpoints(&self) {
        self.endpoints.retain(|class, _| {
            meshpilot_translate::names::parse_cluster_name(&class.name)
                .is_some_and(|p| self.snapshot.service(p.host).is_some())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::ProxyMetadata;
    use meshpilot_model::fixtures::mk_mesh;

    fn proxy(ip: &str, pod: &str, ns: &str, app: &str) -> Proxy {
        let meta = ProxyMetadata::from_json(&serde_json::json!({"LABELS": {"app": app}})).unwrap();
        Proxy::from_node(
            &format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
            &meta,
        )
        .unwrap()
    }

    #[test]
    fn proxies_that_see_the_same_config_share_one_build() {
        let cache = ResourceCache::new(Arc::new(mk_mesh(20, 2, 5, 5).snapshot()));
        let a = proxy("10.200.0.1", "load-a", "ns-1", "load-a");
        let b = proxy("10.200.0.2", "load-b", "ns-1", "load-b");
        let other_ns = proxy("10.200.0.3", "load-c", "ns-2", "load-c");
        assert!(Arc::ptr_eq(&cache.clusters(&a), &cache.clusters(&b)));
        assert!(Arc::ptr_eq(&cache.listeners(&a), &cache.listeners(&b)));
        let route = "8080".to_string();
        assert!(Arc::ptr_eq(
            &cache.routes(&a, [&route])[0],
            &cache.routes(&b, [&route])[0]
        ));
        // Another namespace is another class (DestinationRule lookup, short host names).
        assert!(!Arc::ptr_eq(
            &cache.clusters(&a),
            &cache.clusters(&other_ns)
        ));
        // A proxy selected by a service has inbound config of its own.
        let backend = proxy("10.130.0.1", "svc-1-v1-0", "ns-1", "svc-1");
        assert!(!Arc::ptr_eq(
            &cache.listeners(&a),
            &cache.listeners(&backend)
        ));
    }
}
