//! The single-writer index every source feeds. Each call reports what it changed, so the
//! server can push only what a change can affect; [`Index::snapshot`] publishes an immutable view.

use crate::config::{
    ConfigKey, ConfigKind, ConfigMeta, DestinationRuleConfig, RejectedConfig, VirtualServiceConfig,
};
use crate::service::{Hostname, Service, service_fqdn};
use crate::snapshot::Snapshot;
use crate::workload::{Endpoint, EndpointGroup, Namespace, ObjectKey, Pod};
use meshpilot_api::{DestinationRuleSpec, FieldError, VirtualServiceSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// Default DNS domain of a Kubernetes cluster.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// The kinds of object the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    Pod,
    Namespace,
    EndpointSlice,
    Endpoints,
    VirtualService,
    DestinationRule,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Service,
        Kind::Pod,
        Kind::Namespace,
        Kind::EndpointSlice,
        Kind::Endpoints,
        Kind::VirtualService,
        Kind::DestinationRule,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
        }
    }
}

/// One object, already converted from its Kubernetes or YAML form.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Service),
    /// Shared: the file source keeps the object it read and the index holds the same one.
    Pod(Arc<Pod>),
    Namespace(Namespace),
    EndpointSlice(Arc<EndpointGroup>),
    /// A core/v1 Endpoints object, used for a service only when it has no EndpointSlice.
    Endpoints(Arc<EndpointGroup>),
    /// Specs are boxed: they dwarf every other variant.
    VirtualService(ConfigMeta, Box<VirtualServiceSpec>),
    DestinationRule(ConfigMeta, Box<DestinationRuleSpec>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::VirtualService(..) => Kind::VirtualService,
            Object::DestinationRule(..) => Kind::DestinationRule,
        }
    }

    /// Namespace and name; a Namespace object has an empty namespace.
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Service(s) => ObjectKey::new(&s.namespace, &s.name),
            Object::Pod(p) => p.key(),
            Object::Namespace(n) => ObjectKey::new("", &n.name),
            Object::EndpointSlice(g) | Object::Endpoints(g) => {
                ObjectKey::new(&g.namespace, &g.name)
            }
            Object::VirtualService(m, _) | Object::DestinationRule(m, _) => {
                ObjectKey::new(&m.namespace, &m.name)
            }
        }
    }
}

/// What one or more index calls changed, by the keys a push decision needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Services whose definition (ports, IPs, selector) changed, appeared or went away.
    pub services: BTreeSet<Hostname>,
    /// Services whose endpoint list changed.
    pub endpoints: BTreeSet<Hostname>,
    /// VirtualServices and DestinationRules changed, added, deleted or newly rejected.
    pub configs: BTreeSet<ConfigKey>,
    /// Pods whose labels, IPs or service account changed (their own sidecar may need a push).
    pub pods: BTreeSet<ObjectKey>,
    pub namespaces: BTreeSet<String>,
    /// Kinds touched, for `pilot_inbound_updates{type}`-style accounting.
    pub kinds: BTreeSet<Kind>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.endpoints.is_empty()
            && self.configs.is_empty()
            && self.pods.is_empty()
            && self.namespaces.is_empty()
    }

    pub fn merge(&mut self, other: ChangeSet) {
        self.services.extend(other.services);
        self.endpoints.extend(other.endpoints);
        self.configs.extend(other.configs);
        self.pods.extend(other.pods);
        self.namespaces.extend(other.namespaces);
        self.kinds.extend(other.kinds);
    }

    /// Only endpoint lists changed: an EDS-only push of those services suffices.
    /// Only endpoints and pods changed: what pod churn produces.
    pub fn is_workloads_only(&self) -> bool {
        (!self.endpoints.is_empty() || !self.pods.is_empty())
            && self.services.is_empty()
            && self.configs.is_empty()
            && self.namespaces.is_empty()
    }

    pub fn is_endpoints_only(&self) -> bool {
        !self.endpoints.is_empty()
            && self.services.is_empty()
            && self.configs.is_empty()
            && self.pods.is_empty()
            && self.namespaces.is_empty()
    }
}

#[derive(Debug)]
pub struct Index {
    domain: String,
    services: BTreeMap<ObjectKey, Arc<Service>>,
    /// `services` as snapshots see them, kept while no service changes.
    service_tables: Option<ServiceTables>,
    // Shared with every snapshot taken since they last changed (copied on write): a snapshot
    // is taken per published burst, up to 50 a second under pod churn, and copying every pod
    // and namespace each time was a tenth of the server's CPU.
    pods: Arc<BTreeMap<ObjectKey, Arc<Pod>>>,
    pods_by_ip: Arc<HashMap<IpAddr, ObjectKey>>,
    namespaces: Arc<BTreeMap<String, Arc<Namespace>>>,
    slices: BTreeMap<ObjectKey, Arc<EndpointGroup>>,
    endpoints_objects: BTreeMap<ObjectKey, Arc<EndpointGroup>>,
    virtual_services: BTreeMap<ObjectKey, Arc<VirtualServiceConfig>>,
    destination_rules: BTreeMap<ObjectKey, Arc<DestinationRuleConfig>>,
    rejected: BTreeMap<ConfigKey, RejectedConfig>,
    /// Joined endpoints per service (keyed by the service's namespace/name).
    joined: BTreeMap<ObjectKey, Arc<Vec<Endpoint>>>,
    /// `joined` by hostname, as snapshots see it; shared with them like `pods`.
    endpoints_by_host: Arc<HashMap<Hostname, Arc<Vec<Endpoint>>>>,
    version: u64,
}

/// The services keyed as snapshots look them up: by hostname, and by namespace in hostname
/// order (a proxy's own services are looked up on every connect and CDS/LDS push).
#[derive(Clone, Debug)]
struct ServiceTables {
    by_host: Arc<BTreeMap<Hostname, Arc<Service>>>,
    by_namespace: Arc<HashMap<String, Vec<Arc<Service>>>>,
}

impl ServiceTables {
    fn of(services: &BTreeMap<ObjectKey, Arc<Service>>) -> Self {
        let by_host: BTreeMap<Hostname, Arc<Service>> = services
            .values()
            .map(|s| (s.hostname.clone(), s.clone()))
            .collect();
        let mut by_namespace: HashMap<String, Vec<Arc<Service>>> = HashMap::new();
        for service in by_host.values() {
            by_namespace
                .entry(service.namespace.clone())
                .or_default()
                .push(service.clone());
        }
        ServiceTables {
            by_host: Arc::new(by_host),
            by_namespace: Arc::new(by_namespace),
        }
    }
}

impl Default for Index {
    fn default() -> Self {
        Index::new(DEFAULT_DOMAIN)
    }
}

impl Index {
    pub fn new(domain: &str) -> Self {
        Index {
            domain: domain.to_string(),
            services: BTreeMap::new(),
            service_tables: None,
            pods: Arc::default(),
            pods_by_ip: Arc::default(),
            namespaces: Arc::default(),
            slices: BTreeMap::new(),
            endpoints_objects: BTreeMap::new(),
            virtual_services: BTreeMap::new(),
            destination_rules: BTreeMap::new(),
            rejected: BTreeMap::new(),
            joined: BTreeMap::new(),
            endpoints_by_host: Arc::default(),
            version: 0,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn hostname(&self, key: &ObjectKey) -> Hostname {
        service_fqdn(&key.name, &key.namespace, &self.domain).into()
    }

    /// Adds or replaces one object.
    pub fn apply(&mut self, object: Object) -> ChangeSet {
        let mut changes = ChangeSet::default();
        changes.kinds.insert(object.kind());
        let key = object.key();
        match object {
            Object::Service(mut svc) => {
                svc.hostname = self.hostname(&key);
                if self.services.get(&key).is_some_and(|old| **old == svc) {
                    return ChangeSet::default();
                }
                changes.services.insert(svc.hostname.clone());
                self.services.insert(key.clone(), Arc::new(svc));
                self.service_tables = None;
                self.rejoin(&key, &mut changes);
            }
            Object::Pod(pod) => {
                let old = self.pods.get(&key).cloned();
                if old.as_deref() == Some(&pod) {
                    return ChangeSet::default();
                }
                // Most pod updates keep the pod's IPs: no copy of the shared IP table then.
                if old.as_ref().is_none_or(|old| old.ips != pod.ips) {
                    let pods_by_ip = Arc::make_mut(&mut self.pods_by_ip);
                    if let Some(old) = &old {
                        for ip in &old.ips {
                            if pods_by_ip.get(ip) == Some(&key) {
                                pods_by_ip.remove(ip);
                            }
                        }
                    }
                    for ip in &pod.ips {
                        pods_by_ip.insert(*ip, key.clone());
                    }
                }
                let affected = self.services_referencing_pod(&pod, old.as_deref());
                Arc::make_mut(&mut self.pods).insert(key.clone(), pod);
                changes.pods.insert(key);
                for svc in affected {
                    self.rejoin(&svc, &mut changes);
                }
            }
            Object::Namespace(ns) => {
                if self.namespaces.get(&ns.name).is_some_and(|old| **old == ns) {
                    return ChangeSet::default();
                }
                changes.namespaces.insert(ns.name.clone());
                Arc::make_mut(&mut self.namespaces).insert(ns.name.clone(), Arc::new(ns));
            }
            Object::EndpointSlice(group) | Object::Endpoints(group) => {
                let is_slice = matches!(changes.kinds.first(), Some(Kind::EndpointSlice));
                let map = if is_slice {
                    &mut self.slices
                } else {
                    &mut self.endpoints_objects
                };
                let old = map.insert(key.clone(), group.clone());
                if old.as_deref() == Some(&*group) {
                    return ChangeSet::default();
                }
                let mut services =
                    BTreeSet::from([ObjectKey::new(&group.namespace, &group.service_name)]);
                if let Some(old) = old {
                    services.insert(ObjectKey::new(&old.namespace, &old.service_name));
                }
                for svc in services {
                    self.rejoin(&svc, &mut changes);
                }
            }
            Object::VirtualService(meta, spec) => {
                let result = VirtualServiceConfig::new(meta, *spec, &self.domain);
                self.apply_config(ConfigKind::VirtualService, key, result, &mut changes);
            }
            Object::DestinationRule(meta, spec) => {
                let result = DestinationRuleConfig::new(meta, *spec, &self.domain);
                self.apply_config(ConfigKind::DestinationRule, key, result, &mut changes);
            }
        }
        changes
    }

    fn apply_config<C: IndexedConfig>(
        &mut self,
        kind: ConfigKind,
        key: ObjectKey,
        result: Result<C, Vec<FieldError>>,
        changes: &mut ChangeSet,
    ) {
        let config_key = ConfigKey {
            kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        match result {
            Ok(config) => {
                let was_rejected = self.rejected.remove(&config_key).is_some();
                let map = C::map(self);
                if map.get(&key).is_some_and(|old| **old == config) && !was_rejected {
                    return;
                }
                map.insert(key, Arc::new(config));
                changes.configs.insert(config_key);
            }
            Err(errors) => {
                let rejected = RejectedConfig {
                    key: config_key.clone(),
                    errors,
                };
                // The last valid version (if any) stays in effect, as it would have behind
                // Istio's validating webhook.
                tracing::warn!(
                    kind = kind.kind_name(),
                    namespace = %key.namespace,
                    name = %key.name,
                    reason = %rejected,
                    "invalid config rejected; keeping the last valid version"
                );
                if self.rejected.get(&config_key) != Some(&rejected) {
                    changes.configs.insert(config_key.clone());
                }
                self.rejected.insert(config_key, rejected);
            }
        }
    }

    /// Removes one object; deleting something unknown changes nothing.
    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) -> ChangeSet {
        let mut changes = ChangeSet::default();
        changes.kinds.insert(kind);
        match kind {
            Kind::Service => {
                if self.services.remove(key).is_some() {
                    self.service_tables = None;
                    changes.services.insert(self.hostname(key));
                    if self.joined.contains_key(key) {
                        self.set_joined(key, None);
                        changes.endpoints.insert(self.hostname(key));
                    }
                }
            }
            Kind::Pod => {
                if self.pods.contains_key(key)
                    && let Some(old) = Arc::make_mut(&mut self.pods).remove(key)
                {
                    let pods_by_ip = Arc::make_mut(&mut self.pods_by_ip);
                    for ip in &old.ips {
                        if pods_by_ip.get(ip) == Some(key) {
                            pods_by_ip.remove(ip);
                        }
                    }
                    changes.pods.insert(key.clone());
                    for svc in self.services_referencing_pod(&old, None) {
                        self.rejoin(&svc, &mut changes);
                    }
                }
            }
            Kind::Namespace => {
                if self.namespaces.contains_key(&key.name)
                    && Arc::make_mut(&mut self.namespaces)
                        .remove(&key.name)
                        .is_some()
                {
                    changes.namespaces.insert(key.name.clone());
                }
            }
            Kind::EndpointSlice | Kind::Endpoints => {
                let map = if kind == Kind::EndpointSlice {
                    &mut self.slices
                } else {
                    &mut self.endpoints_objects
                };
                if let Some(old) = map.remove(key) {
                    let svc = ObjectKey::new(&old.namespace, &old.service_name);
                    self.rejoin(&svc, &mut changes);
                }
            }
            Kind::VirtualService | Kind::DestinationRule => {
                let config_kind = if kind == Kind::VirtualService {
                    ConfigKind::VirtualService
                } else {
                    ConfigKind::DestinationRule
                };
                let config_key = ConfigKey {
                    kind: config_kind,
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                };
                let removed = match kind {
                    Kind::VirtualService => self.virtual_services.remove(key).is_some(),
                    _ => self.destination_rules.remove(key).is_some(),
                };
                let was_rejected = self.rejected.remove(&config_key).is_some();
                if removed || was_rejected {
                    changes.configs.insert(config_key);
                }
            }
        }
        changes
    }

    /// Replaces every object of `kind` with `objects` in one step (a relist, or a reload).
    pub fn reset(&mut self, kind: Kind, objects: Vec<Object>) -> ChangeSet {
        let incoming: HashSet<ObjectKey> = objects.iter().map(Object::key).collect();
        let mut changes = ChangeSet::default();
        for key in self.keys(kind) {
            if !incoming.contains(&key) {
                changes.merge(self.delete(kind, &key));
            }
        }
        for object in objects {
            debug_assert_eq!(object.kind(), kind, "reset fed an object of another kind");
            changes.merge(self.apply(object));
        }
        changes.kinds.insert(kind);
        changes
    }

    /// Keys of every object of `kind` currently held (rejected configs included).
    pub fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Namespace => self
                .namespaces
                .keys()
                .map(|n| ObjectKey::new("", n))
                .collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Endpoints => self.endpoints_objects.keys().cloned().collect(),
            Kind::VirtualService | Kind::DestinationRule => {
                let config_kind = if kind == Kind::VirtualService {
                    ConfigKind::VirtualService
                } else {
                    ConfigKind::DestinationRule
                };
                let valid: Vec<ObjectKey> = if kind == Kind::VirtualService {
                    self.virtual_services.keys().cloned().collect()
                } else {
                    self.destination_rules.keys().cloned().collect()
                };
                let rejected = self
                    .rejected
                    .keys()
                    .filter(|k| k.kind == config_kind)
                    .map(|k| ObjectKey::new(&k.namespace, &k.name));
                valid
                    .into_iter()
                    .chain(rejected)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Services in the pod's namespace whose endpoint sources name the pod or one of its IPs.
    fn services_referencing_pod(&self, pod: &Pod, old: Option<&Pod>) -> BTreeSet<ObjectKey> {
        let ips: HashSet<IpAddr> = pod
            .ips
            .iter()
            .chain(old.map(|o| o.ips.as_slice()).unwrap_or_default())
            .copied()
            .collect();
        self.slices
            .values()
            .chain(self.endpoints_objects.values())
            .filter(|g| g.namespace == pod.namespace)
            .filter(|g| {
                g.endpoints.iter().any(|e| {
                    e.pod_name.as_deref() == Some(pod.name.as_str())
                        || e.addresses.iter().any(|a| ips.contains(a))
                })
            })
            .map(|g| ObjectKey::new(&g.namespace, &g.service_name))
            .collect()
    }

    /// Recomputes the joined endpoints of one service and records whether they changed.
    fn rejoin(&mut self, service: &ObjectKey, changes: &mut ChangeSet) {
        let joined = self.join_endpoints(service);
        let changed = match (&joined, self.joined.get(service)) {
            (None, None) => false,
            (Some(new), Some(old)) => new != &**old,
            _ => true,
        };
        if changed {
            changes.endpoints.insert(self.hostname(service));
            self.set_joined(service, joined.map(Arc::new));
        }
    }

    /// Sets (or, with `None`, drops) a service's joined endpoints, here and by hostname.
    fn set_joined(&mut self, service: &ObjectKey, list: Option<Arc<Vec<Endpoint>>>) {
        let host = self.hostname(service);
        let by_host = Arc::make_mut(&mut self.endpoints_by_host);
        match list {
            Some(list) => {
                by_host.insert(host, list.clone());
                self.joined.insert(service.clone(), list);
            }
            None => {
                by_host.remove(&host);
                self.joined.remove(service);
            }
        }
    }

    /// EndpointSlices of the service, else its Endpoints object, joined with pod data.
    fn join_endpoints(&self, service: &ObjectKey) -> Option<Vec<Endpoint>> {
        let belongs = |g: &&Arc<EndpointGroup>| {
            g.namespace == service.namespace && g.service_name == service.name
        };
        let slices: Vec<&Arc<EndpointGroup>> = self.slices.values().filter(belongs).collect();
        let groups: Vec<&Arc<EndpointGroup>> = if slices.is_empty() {
            self.endpoints_objects.get(service).into_iter().collect()
        } else {
            slices
        };
        if groups.is_empty() {
            return None;
        }
        let no_labels = Arc::new(BTreeMap::new());
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for group in groups {
            for ep in &group.endpoints {
                for address in &ep.addresses {
                    let pod = ep
                        .pod_name
                        .as_ref()
                        .and_then(|name| self.pods.get(&ObjectKey::new(&group.namespace, name)))
                        .or_else(|| self.pods_by_ip.get(address).and_then(|k| self.pods.get(k)));
                    let labels = pod
                        .map(|p| p.labels.clone())
                        .unwrap_or_else(|| no_labels.clone());
                    let locality = if ep.locality.is_empty() {
                        pod.map(|p| p.locality()).unwrap_or_default()
                    } else {
                        ep.locality.clone()
                    };
                    for port in &group.ports {
                        if !seen.insert((*address, port.port, port.name.clone())) {
                            continue;
                        }
                        out.push(Endpoint {
                            address: *address,
                            port: port.port,
                            port_name: port.name.clone(),
                            ready: ep.ready && !ep.terminating,
                            labels: labels.clone(),
                            locality: locality.clone(),
                            pod: pod.map(|p| p.key()),
                            service_account: pod
                                .map(|p| p.service_account.clone())
                                .unwrap_or_default(),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (a.port_name.as_str(), a.address, a.port).cmp(&(
                b.port_name.as_str(),
                b.address,
                b.port,
            ))
        });
        Some(out)
    }

    /// Publishes an immutable view. VirtualServices whose destinations name a subset no
    /// DestinationRule defines are left out here and reported as rejected.
    pub fn snapshot(&mut self) -> Snapshot {
        self.version += 1;
        let services = self
            .service_tables
            .get_or_insert_with(|| ServiceTables::of(&self.services))
            .clone();
        let mut destination_rules: Vec<Arc<DestinationRuleConfig>> =
            self.destination_rules.values().cloned().collect();
        destination_rules.sort_by(|a, b| config_order(&a.meta, &b.meta));
        let mut rejected: Vec<RejectedConfig> = self.rejected.values().cloned().collect();
        let mut virtual_services = Vec::new();
        for vs in self.virtual_services.values() {
            let errors = undefined_subsets(vs, &destination_rules);
            if errors.is_empty() {
                virtual_services.push(vs.clone());
            } else {
                rejected.push(RejectedConfig {
                    key: vs.key(),
                    errors,
                });
            }
        }
        virtual_services.sort_by(|a, b| config_order(&a.meta, &b.meta));
        rejected.sort_by(|a, b| a.key.cmp(&b.key));
        let mut snapshot = Snapshot {
            version: self.version,
            domain: self.domain.clone(),
            services: services.by_host,
            services_by_namespace: services.by_namespace,
            endpoints: self.endpoints_by_host.clone(),
            pods: self.pods.clone(),
            pods_by_ip: self.pods_by_ip.clone(),
            namespaces: self.namespaces.clone(),
            virtual_services,
            destination_rules,
            rules_by_host: HashMap::new(),
            wildcard_rules: Vec::new(),
            rejected,
        };
        snapshot.build_indexes();
        snapshot
    }
}

/// Oldest first, then by namespace and name: Istio's conflict-resolution order.
fn config_order(a: &ConfigMeta, b: &ConfigMeta) -> std::cmp::Ordering {
    let created = |m: &ConfigMeta| m.creation_timestamp.clone().unwrap_or_default();
    (created(a), &a.namespace, &a.name).cmp(&(created(b), &b.namespace, &b.name))
}

/// Destinations naming a subset that no DestinationRule for that host defines.
fn undefined_subsets(
    vs: &VirtualServiceConfig,
    rules: &[Arc<DestinationRuleConfig>],
) -> Vec<FieldError> {
    let defined = |host: &str, subset: &str| {
        rules
            .iter()
            .filter(|dr| dr.matches_host(host))
            .any(|dr| dr.spec.subsets.iter().any(|s| s.name == subset))
    };
    let mut errors = Vec::new();
    let mut check = |path: String, dest: &meshpilot_api::Destination| {
        if let Some(subset) = &dest.subset
            && !defined(&dest.host, subset)
        {
            errors.push(FieldError {
                path,
                reason: format!(
                    "subset {subset:?} of host {:?} is not defined by any DestinationRule",
                    dest.host
                ),
            });
        }
    };
    for (i, http) in vs.spec.http.iter().enumerate() {
        for (j, r) in http.route.iter().enumerate() {
            check(
                format!("spec.http[{i}].route[{j}].destination.subset"),
                &r.destination,
            );
        }
        if let Some(m) = &http.mirror {
            check(format!("spec.http[{i}].mirror.subset"), m);
        }
        for (j, m) in http.mirrors.iter().enumerate() {
            check(
                format!("spec.http[{i}].mirrors[{j}].destination.subset"),
                &m.destination,
            );
        }
    }
    for (i, tcp) in vs.spec.tcp.iter().enumerate() {
        for (j, r) in tcp.route.iter().enumerate() {
            check(
                format!("spec.tcp[{i}].route[{j}].destination.subset"),
                &r.destination,
            );
        }
    }
    errors
}

/// Gives [`Index::apply_config`] the map a config kind lives in.
trait IndexedConfig: PartialEq + Sized {
    fn map(index: &mut Index) -> &mut BTreeMap<ObjectKey, Arc<Self>>;
}

impl IndexedConfig for VirtualServiceConfig {
    fn map(index: &mut Index) -> &mut BTreeMap<ObjectKey, Arc<Self>> {
        &mut index.virtual_services
    }
}

impl IndexedConfig for DestinationRuleConfig {
    fn map(index: &mut Index) -> &mut BTreeMap<ObjectKey, Arc<Self>> {
        &mut index.destination_rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    fn bookinfo() -> Index {
        mk_reviews_index(&["v1", "v2"])
    }

    const REVIEWS: &str = "reviews.default.svc.cluster.local";

    /// Adds an EndpointSlice of `reviews` (port 9080) with one endpoint.
    fn add_reviews_slice(index: &mut Index, slice: &str, pod: &str, ip: &str) {
        let mut slice = mk_slice("default", slice, &[("http", 9080)], &[(pod, ip)]);
        slice.service_name = "reviews".into();
        index.apply(Object::EndpointSlice(Arc::new(slice)));
    }

    #[test]
    fn pods_and_their_labels_are_shared_not_copied() {
        let mut index = bookinfo();
        let pod = Arc::new(mk_pod(
            "default",
            "reviews-v3",
            "10.244.9.9",
            &[("app", "reviews"), ("version", "v3")],
        ));
        index.apply(Object::Pod(pod.clone()));
        add_reviews_slice(&mut index, "reviews-v3", "reviews-v3", "10.244.9.9");
        let snapshot = index.snapshot();
        // The source's object is the index's: one copy of each pod however many hold it.
        assert!(Arc::ptr_eq(
            snapshot.pod("default", "reviews-v3").unwrap(),
            &pod
        ));
        let joined = snapshot
            .endpoints(REVIEWS)
            .iter()
            .find(|e| e.pod.as_ref().is_some_and(|p| p.name == "reviews-v3"))
            .expect("the new pod's endpoint is joined");
        assert!(Arc::ptr_eq(&joined.labels, &pod.labels));
    }

    #[test]
    fn snapshots_share_the_tables_a_change_left_alone() {
        let mut index = bookinfo();
        let before = index.snapshot();
        // An endpoint-only change: a new endpoint table; pods, namespaces and services shared.
        add_reviews_slice(&mut index, "reviews-extra", "reviews-v9", "10.244.9.10");
        let after_endpoints = index.snapshot();
        assert!(Arc::ptr_eq(&before.pods, &after_endpoints.pods));
        assert!(Arc::ptr_eq(&before.pods_by_ip, &after_endpoints.pods_by_ip));
        assert!(Arc::ptr_eq(&before.namespaces, &after_endpoints.namespaces));
        assert!(Arc::ptr_eq(&before.services, &after_endpoints.services));
        assert!(Arc::ptr_eq(
            &before.services_by_namespace,
            &after_endpoints.services_by_namespace
        ));
        assert!(!Arc::ptr_eq(&before.endpoints, &after_endpoints.endpoints));
        assert_eq!(
            after_endpoints.endpoints(REVIEWS).len(),
            before.endpoints(REVIEWS).len() + 1
        );
        // A pod and a service change copy their tables; snapshots taken before keep theirs.
        let pod = mk_pod("default", "late", "10.244.9.11", &[("app", "late")]);
        index.apply(Object::Pod(Arc::new(pod)));
        index.apply(Object::Service(mk_service(
            "default",
            "late",
            "10.96.0.40",
            &[("http", 80)],
        )));
        index.delete(Kind::Service, &ObjectKey::new("default", "reviews"));
        let after_more = index.snapshot();
        assert!(after_more.pod("default", "late").is_some());
        assert!(after_endpoints.pod("default", "late").is_none());
        assert!(
            after_endpoints
                .pod_by_ip("10.244.9.11".parse().unwrap())
                .is_none()
        );
        assert!(
            after_more
                .pod_by_ip("10.244.9.11".parse().unwrap())
                .is_some()
        );
        assert!(
            after_more
                .service("late.default.svc.cluster.local")
                .is_some()
        );
        assert!(
            after_endpoints
                .service("late.default.svc.cluster.local")
                .is_none()
        );
        assert!(after_more.service(REVIEWS).is_none());
        assert!(after_more.endpoints(REVIEWS).is_empty());
        assert_eq!(after_endpoints.services_in("default").count(), 1);
        assert_eq!(after_more.services_in("default").count(), 1);
        assert!(Arc::ptr_eq(
            &after_endpoints.namespaces,
            &after_more.namespaces
        ));
        // A pod relabelled in place keeps its IPs: the IP table stays shared.
        let relabelled = mk_pod("default", "late", "10.244.9.11", &[("app", "later")]);
        index.apply(Object::Pod(Arc::new(relabelled)));
        let after_relabel = index.snapshot();
        assert!(Arc::ptr_eq(
            &after_more.pods_by_ip,
            &after_relabel.pods_by_ip
        ));
        assert!(!Arc::ptr_eq(&after_more.pods, &after_relabel.pods));
        let late = after_relabel.pod_by_ip("10.244.9.11".parse().unwrap());
        assert_eq!(late.unwrap().labels["app"], "later");
    }

    #[test]
    fn snapshot_lists_each_namespaces_services_in_hostname_order() {
        let mut index = bookinfo();
        index.apply(Object::Service(mk_service(
            "default",
            "details",
            "10.96.0.20",
            &[("http", 9080)],
        )));
        index.apply(Object::Service(mk_service(
            "shop",
            "cart",
            "10.96.0.30",
            &[("http", 80)],
        )));
        let snapshot = index.snapshot();
        let hosts = |ns: &str| -> Vec<String> {
            snapshot
                .services_in(ns)
                .map(|s| s.hostname.to_string())
                .collect()
        };
        assert_eq!(
            hosts("default"),
            ["details.default.svc.cluster.local", REVIEWS]
        );
        assert_eq!(hosts("shop"), ["cart.shop.svc.cluster.local"]);
        assert!(hosts("nowhere").is_empty());
        let every: usize = ["default", "shop"].iter().map(|ns| hosts(ns).len()).sum();
        assert_eq!(every, snapshot.services().count());
    }

    #[test]
    fn joins_slice_endpoints_with_pod_labels() {
        let snapshot = bookinfo().snapshot();
        let endpoints = snapshot.endpoints(REVIEWS);
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].labels["version"], "v1");
        assert_eq!(endpoints[1].labels["version"], "v2");
        assert_eq!(
            endpoints[0].pod,
            Some(ObjectKey::new("default", "reviews-v1"))
        );
    }

    #[test]
    fn unchanged_apply_reports_nothing_and_pod_relabel_is_endpoint_change() {
        let mut index = bookinfo();
        let again = index.apply(Object::Service(mk_service(
            "default",
            "reviews",
            "10.96.120.15",
            &[("http", 9080)],
        )));
        assert!(again.is_empty());
        let relabel = index.apply(Object::Pod(Arc::new(mk_pod(
            "default",
            "reviews-v2",
            "10.244.2.12",
            &[("app", "reviews"), ("version", "v3")],
        ))));
        assert!(relabel.endpoints.contains(REVIEWS));
        assert!(
            relabel
                .pods
                .contains(&ObjectKey::new("default", "reviews-v2"))
        );
        assert_eq!(
            index.snapshot().endpoints(REVIEWS)[1].labels["version"],
            "v3"
        );
    }

    #[test]
    fn slice_change_is_endpoints_only() {
        let mut index = bookinfo();
        let changes = index.apply(Object::EndpointSlice(Arc::new(mk_slice(
            "default",
            "reviews",
            &[("http", 9080)],
            &[("reviews-v1", "10.244.1.11")],
        ))));
        assert!(changes.is_endpoints_only());
        assert_eq!(index.snapshot().endpoints(REVIEWS).len(), 1);
    }

    #[test]
    fn endpoints_object_is_used_only_without_slices() {
        let mut index = Index::default();
        index.apply(Object::Service(mk_service(
            "default",
            "details",
            "10.96.0.9",
            &[("http", 9080)],
        )));
        let mut group = mk_slice(
            "default",
            "details",
            &[("http", 9080)],
            &[("d1", "10.0.0.1")],
        );
        group.name = "details".into();
        index.apply(Object::Endpoints(Arc::new(group)));
        assert_eq!(
            index
                .snapshot()
                .endpoints("details.default.svc.cluster.local")
                .len(),
            1
        );
        index.apply(Object::EndpointSlice(Arc::new(mk_slice(
            "default",
            "details",
            &[("http", 9080)],
            &[("d2", "10.0.0.2"), ("d3", "10.0.0.3")],
        ))));
        assert_eq!(
            index
                .snapshot()
                .endpoints("details.default.svc.cluster.local")
                .len(),
            2
        );
    }

    #[test]
    fn invalid_update_keeps_last_valid_config_and_is_reported() {
        let mut index = bookinfo();
        index.apply(mk_destination_rule(
            "default",
            "reviews",
            "host: reviews\nsubsets: [{name: v1, labels: {version: v1}}]",
        ));
        let good = mk_virtual_service(
            "default",
            "reviews",
            "hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews, subset: v1}}]}]",
        );
        assert_eq!(index.apply(good).configs.len(), 1);
        let bad = mk_virtual_service(
            "default",
            "reviews",
            "hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews}, weight: 0}, {destination: {host: reviews}, weight: 0}]}]",
        );
        let changes = index.apply(bad);
        assert_eq!(
            changes.configs.len(),
            1,
            "the rejection is a reportable change"
        );
        let snapshot = index.snapshot();
        assert_eq!(
            snapshot.virtual_services().len(),
            1,
            "last valid version stays"
        );
        assert_eq!(snapshot.virtual_services()[0].spec.hosts, [REVIEWS]);
        assert_eq!(snapshot.rejected().len(), 1);
        assert_eq!(snapshot.rejected()[0].errors[0].path, "spec.http[0].route");
    }

    #[test]
    fn undefined_subset_rejects_the_virtual_service_at_snapshot() {
        let mut index = bookinfo();
        index.apply(mk_virtual_service(
            "default",
            "reviews",
            "hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews, subset: v9}}]}]",
        ));
        let snapshot = index.snapshot();
        assert!(snapshot.virtual_services().is_empty());
        assert!(snapshot.rejected()[0].to_string().contains("subset \"v9\""));
    }

    #[test]
    fn reset_replaces_a_kind_in_one_step() {
        let mut index = bookinfo();
        let changes = index.reset(
            Kind::Service,
            vec![Object::Service(mk_service(
                "default",
                "ratings",
                "10.96.0.7",
                &[("http", 9080)],
            ))],
        );
        assert!(changes.services.contains(REVIEWS));
        assert!(
            changes
                .services
                .contains("ratings.default.svc.cluster.local")
        );
        let snapshot = index.snapshot();
        assert!(snapshot.service(REVIEWS).is_none());
        assert!(
            snapshot
                .service("ratings.default.svc.cluster.local")
                .is_some()
        );
    }

    #[test]
    fn delete_of_unknown_changes_nothing() {
        let mut index = bookinfo();
        assert!(
            index
                .delete(Kind::Pod, &ObjectKey::new("default", "ghost"))
                .is_empty()
        );
        let changes = index.delete(Kind::Pod, &ObjectKey::new("default", "reviews-v1"));
        assert!(changes.endpoints.contains(REVIEWS));
        assert!(index.snapshot().endpoints(REVIEWS)[0].labels.is_empty());
    }

    #[test]
    fn destination_rule_lookup_prefers_proxy_namespace() {
        let mut index = bookinfo();
        index.apply(mk_destination_rule(
            "istio-system",
            "mesh-wide",
            "host: \"*.svc.cluster.local\"\nsubsets: [{name: root}]",
        ));
        index.apply(mk_destination_rule(
            "default",
            "reviews",
            "host: reviews\nsubsets: [{name: v1}]",
        ));
        index.apply(mk_destination_rule(
            "shop",
            "reviews-shop",
            "host: reviews.default.svc.cluster.local\nsubsets: [{name: shop}]",
        ));
        let snapshot = index.snapshot();
        let from_shop = snapshot.destination_rule_for(REVIEWS, "shop").unwrap();
        assert_eq!(from_shop.meta.name, "reviews-shop");
        let from_default = snapshot.destination_rule_for(REVIEWS, "default").unwrap();
        assert_eq!(from_default.meta.name, "reviews");
        let from_other = snapshot.destination_rule_for(REVIEWS, "other").unwrap();
        assert_eq!(
            from_other.meta.name, "reviews",
            "service namespace before root"
        );
        assert_eq!(
            snapshot
                .destination_rule_for("x.y.svc.cluster.local", "other")
                .unwrap()
                .meta
                .name,
            "mesh-wide"
        );
    }
}
