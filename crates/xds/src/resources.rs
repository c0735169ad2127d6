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
    labels: BTreeMap<String, String>,
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
    any_source_label_match: bool,
}

impl ResourceCache {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        let any_headless = snapshot.services().any(|s| s.headless);
        let any_source_label_match = snapshot.virtual_services().iter().any(|vs| {
            vs.spec
                .http
                .iter()
                .any(|r| r.matches.iter().any(|m| !m.source_labels.is_empty()))
                || vs
                    .spec
                    .tcp
                    .iter()
                    .any(|r| r.matches.iter().any(|m| !m.source_labels.is_empty()))
        });
        ResourceCache {
            any_headless,
            any_source_label_match,
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
        self.clusters
            .entry(class)
            .or_insert_with(|| {
                Arc::new(
                    build_clusters(&self.snapshot, proxy)
                        .iter()
                        .map(|c| Resource::encode(c.name.clone(), c))
                        .collect(),
                )
            })
            .clone()
    }

    /// Every listener of the proxy, LDS order.
    pub fn listeners(&self, proxy: &Proxy) -> Resources {
        let class = ListenerClass {
            namespace: proxy.namespace.clone(),
            labels: proxy.labels.clone(),
            interception: format!("{:?}", proxy.interception_mode),
            targets: TargetSignature::of(&self.snapshot, proxy),
            ips: self.any_headless.then(|| proxy.ips.clone()),
        };
        self.listeners
            .entry(class)
            .or_insert_with(|| {
                Arc::new(
                    build_listeners(&self.snapshot, proxy)
                        .iter()
                        .map(|l| Resource::encode(l.name.clone(), l))
                        .collect(),
                )
            })
            .clone()
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
                    labels: self.any_source_label_match.then(|| proxy.labels.clone()),
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
