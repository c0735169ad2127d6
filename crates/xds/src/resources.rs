//! Encoded resources and the cache that builds each one once per distinct dependency set.
//!
//! A proxy's config depends on only a few of its attributes, so proxies are grouped into
//! classes per resource type and a class's resources are translated and encoded once:
//! - CDS: the proxy's namespace (DestinationRule lookup), its own service targets (inbound
//!   clusters) and IP families (inbound bind addresses);
//! - LDS: namespace, labels, interception mode, service targets, and the pod IPs only when a
//!   headless service exists (per-endpoint listeners skip the proxy's own IP);
//! - RDS: the route name, namespace, DNS domain (short host names), and labels only when some
//!   VirtualService matches on `sourceLabels`; with VHDS ([`CacheOptions::vhds`]) the same
//!   build is split into the configuration without its virtual hosts and the virtual hosts;
//! - EDS: the cluster name and namespace (subset lookup), revalidated per snapshot against
//!   the identity of the service's endpoint list and of the DestinationRule in effect, so an
//!   endpoint change rebuilds only the assignments of the services it touched.
//!
//! Whole answers are shared too: the set of resources for a class (or, for EDS and RDS, for a
//! subscription, itself interned) is one [`ResourceSet`] that every proxy of the class points
//! at, and the difference between two sets is computed once per snapshot and shared. A
//! connection therefore holds a few pointers per type, not a copy of every name it was sent.

use crate::delta_request::{HeldVersions, name_order_key, version_key};
use crate::intern::{ContentInterner, WeakTable};
use crate::types::{ResourceType, TypeSet};
use bytes::Bytes;
use dashmap::DashMap;
use envoy_types::pb::google::protobuf::Any;
use meshpilot_model::{ChangeSet, ConfigKind, DestinationRuleConfig, Endpoint, Proxy, Snapshot};
use meshpilot_translate::vhds::split_for_vhds;
use meshpilot_translate::{build_clusters, build_endpoints, build_listeners, build_routes};
use meshpilot_translate::{route_name_port, route_ports_touched_by};
use prost::{Message, Name};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// One Envoy resource, encoded once and shared by every proxy that is sent it.
#[derive(Debug)]
pub struct Resource {
    pub name: Arc<str>,
    /// Content hash of the encoding: equal versions mean byte-identical resources.
    pub version: Arc<str>,
    /// The encoded `google.protobuf.Any`, copied as is into every response that carries it.
    pub any: Bytes,
    /// Its whole delta `resources` entry (`Resource { version, resource, name }`), encoded
    /// the first time a delta response picks it out of its set: an endpoint push sends the
    /// same few changed assignments to every proxy.
    delta_entry: OnceLock<Bytes>,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.version, &self.any) == (&other.name, &other.version, &other.any)
    }
}

impl Resource {
    /// Encodes canonically (map entries sorted), so equal config always has equal bytes.
    pub fn encode<M: Message + Name>(name: &str, message: &M) -> Arc<Resource> {
        let body = Any {
            type_url: M::type_url(),
            value: meshpilot_translate::canonical::encode_canonical(message),
        };
        let mut hasher = DefaultHasher::new();
        body.value.hash(&mut hasher);
        Arc::new(Resource {
            name: name.into(),
            version: format!("{:016x}", hasher.finish()).into(),
            any: body.encode_to_vec().into(),
            delta_entry: OnceLock::new(),
        })
    }

    /// Its delta `resources` entry, encoded once.
    pub(crate) fn delta_entry(&self) -> &Bytes {
        self.delta_entry
            .get_or_init(|| crate::response::delta_entry(self))
    }

    /// The delta entry if a response has encoded it already.
    #[cfg(test)]
    pub(crate) fn encoded_delta_entry(&self) -> Option<&Bytes> {
        self.delta_entry.get()
    }

    /// The resource as a protobuf `Any` (tests and debugging; responses use the bytes).
    pub fn to_any(&self) -> Any {
        Any::decode(self.any.clone()).expect("a resource holds an encoded Any")
    }
}

/// A set's item as delta reconnects are matched against it: keys only, no pointers to chase.
#[derive(Debug)]
struct OrderedItem {
    name: u128,
    version: u64,
    index: u32,
}

/// An ordered set of resources with a by-name index; shared between proxies.
#[derive(Debug, Default)]
pub struct ResourceSet {
    items: Vec<Arc<Resource>>,
    /// Shared by sets of the same names in the same order (an endpoint set and its rebuilds).
    by_name: Arc<HashMap<Arc<str>, usize>>,
    /// Every item's `resources` entry of a SotW response, back to back; encoded by the first
    /// response that carries the whole set, then sent as slices by all of them.
    sotw_entries: OnceLock<Bytes>,
    /// The same for delta responses (`Resource { version, resource, name }` entries).
    delta_entries: OnceLock<Bytes>,
    /// Whether responses send this set from those entries (see [`ResourceSet::new`]).
    shares_entries: bool,
    /// Items in [`name_order_key`] order: built by the first delta reconnect compared against
    /// this set, then shared by all of them.
    by_name_order: OnceLock<Vec<OrderedItem>>,
}

impl ResourceSet {
    pub fn new(items: Vec<Arc<Resource>>) -> Self {
        Self::with_names_like(items, None)
    }

    /// A set whose by-name index is `like`'s when both hold the same names in the same order.
    pub(crate) fn with_names_like(items: Vec<Arc<Resource>>, like: Option<&ResourceSet>) -> Self {
        let same_names = |like: &&ResourceSet| {
            like.items.len() == items.len()
                && like
                    .items
                    .iter()
                    .zip(&items)
                    .all(|(a, b)| Arc::ptr_eq(&a.name, &b.name) || a.name == b.name)
        };
        let by_name = match like.filter(same_names) {
            Some(like) => like.by_name.clone(),
            None => Arc::new(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.name.clone(), i))
                    .collect(),
            ),
        };
        // Worth it for many small resources; large ones (a route configuration of thousands
        // of virtual hosts) are sent as slices of their own bytes already, and a second copy
        // would only cost memory.
        let bytes: usize = items.iter().map(|r| r.any.len()).sum();
        let shares_entries = !items.is_empty() && bytes / items.len() < Self::LARGE_RESOURCE;
        ResourceSet {
            items,
            by_name,
            sotw_entries: OnceLock::new(),
            delta_entries: OnceLock::new(),
            shares_entries,
            by_name_order: OnceLock::new(),
        }
    }

    fn by_name_order(&self) -> &[OrderedItem] {
        self.by_name_order.get_or_init(|| {
            let mut order: Vec<OrderedItem> = self
                .items
                .iter()
                .enumerate()
                .map(|(i, r)| OrderedItem {
                    name: name_order_key(r.name.as_bytes()),
                    version: version_key(r.version.as_bytes()),
                    index: i as u32,
                })
                .collect();
            order.sort_unstable_by_key(|item| item.name);
            order
        })
    }

    pub fn as_slice(&self) -> &[Arc<Resource>] {
        &self.items
    }

    /// Resources at least this large (on average) are sent from their own bytes.
    pub(crate) const LARGE_RESOURCE: usize = 16 * 1024;

    pub(crate) fn sotw_entries(&self) -> Option<&Bytes> {
        self.shares_entries.then(|| {
            self.sotw_entries
                .get_or_init(|| crate::response::sotw_entries(&self.items))
        })
    }

    pub(crate) fn delta_entries(&self) -> Option<&Bytes> {
        self.shares_entries.then(|| {
            self.delta_entries
                .get_or_init(|| crate::response::delta_entries(&self.items))
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.by_name.get(name).map(|&i| &self.items[i])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Arc<Resource>> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

pub type Resources = Arc<ResourceSet>;

/// A sorted set of resource names (an EDS or RDS subscription). Interned through
/// [`ResourceCache::intern`], so proxies subscribed to the same names share one.
#[derive(Debug, Default)]
pub struct NameSet {
    names: Vec<Arc<str>>,
    hash: u64,
    /// Positions of each service host's cluster names, built the first time an endpoint change
    /// rebuilds a set of these names (endpoint subscriptions only).
    cluster_positions: OnceLock<HashMap<Box<str>, Vec<u32>>>,
    /// The names as the first SotW request to spell this set listed them (its
    /// `resource_names` entries, in its order), so that a request repeating the list is
    /// recognised by comparing bytes (see [`SotwRequest::decode_frame_knowing`]). A proxy
    /// that lists them in another order is recognised by its fingerprint instead.
    ///
    /// [`SotwRequest::decode_frame_knowing`]: crate::request::SotwRequest::decode_frame_knowing
    sotw_spelling: OnceLock<Bytes>,
}

impl PartialEq for NameSet {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Eq for NameSet {}

impl Hash for NameSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl NameSet {
    pub fn new(names: impl IntoIterator<Item = impl Into<Arc<str>>>) -> Self {
        let mut names: Vec<Arc<str>> = names.into_iter().map(Into::into).collect();
        names.sort_unstable();
        names.dedup();
        let mut hasher = DefaultHasher::new();
        names.hash(&mut hasher);
        NameSet {
            names,
            hash: hasher.finish(),
            cluster_positions: OnceLock::new(),
            sotw_spelling: OnceLock::new(),
        }
    }

    /// See the field: set once, by the first request that spells the set.
    pub fn sotw_spelling(&self) -> Option<&Bytes> {
        self.sotw_spelling.get()
    }

    /// Keeps `spelling` (the names of a SotW request for exactly this set, in wire form) unless
    /// one was kept before.
    pub fn spelled_by(&self, spelling: impl FnOnce() -> Bytes) {
        self.sotw_spelling.get_or_init(spelling);
    }

    /// Where the clusters of service `host` (`outbound|<port>|<subset>|<host>`) are among
    /// these names.
    fn cluster_positions(&self, host: &str) -> &[u32] {
        let by_host = self.cluster_positions.get_or_init(|| {
            let mut by_host: HashMap<Box<str>, Vec<u32>> = HashMap::new();
            for (i, name) in self.names.iter().enumerate() {
                if let Some(parts) = meshpilot_translate::names::parse_cluster_name(name) {
                    by_host.entry(parts.host.into()).or_default().push(i as u32);
                }
            }
            by_host
        });
        by_host.get(host).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.contains_bytes(name.as_bytes())
    }

    /// [`NameSet::contains`] for a name not (yet) checked to be UTF-8; `str` orders by bytes.
    fn contains_bytes(&self, name: &[u8]) -> bool {
        self.names
            .binary_search_by(|n| n.as_bytes().cmp(name))
            .is_ok()
    }

    /// Whether `names` (in any order, possibly repeated) is exactly this set; no allocation
    /// unless the list repeats names.
    pub fn same_as<S: AsRef<[u8]>>(&self, names: &[S]) -> bool {
        if !names.iter().all(|n| self.contains_bytes(n.as_ref())) {
            return false;
        }
        // Every name is in the set; equal counts mean no repeats, so the set is covered.
        names.len() == self.len()
            || names
                .iter()
                .map(AsRef::as_ref)
                .collect::<std::collections::BTreeSet<&[u8]>>()
                .len()
                == self.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(AsRef::as_ref)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Hands out one shared [`NameSet`] per distinct set of names.
#[derive(Debug, Default)]
struct NameSetInterner {
    table: Mutex<InternTable>,
}

#[derive(Debug, Default)]
struct InternTable {
    sets: WeakTable<NameSet>,
    /// Request name lists seen (by fingerprint, order included) and the set each spelled;
    /// swept whenever it has doubled since the last sweep.
    lists: HashMap<u128, Weak<NameSet>>,
    lists_sweep_at: usize,
}

impl NameSetInterner {
    /// The shared set a request's name list (identified by `fingerprint`) spells: sidecars of
    /// one mesh send the same list, so only the first of them pays for building the set.
    fn intern_list(&self, fingerprint: u128, build: impl FnOnce() -> NameSet) -> Arc<NameSet> {
        let known = {
            let table = self.table.lock().expect("interner lock");
            table.lists.get(&fingerprint).and_then(Weak::upgrade)
        };
        if let Some(set) = known {
            return set;
        }
        let set = self.intern(build());
        let mut table = self.table.lock().expect("interner lock");
        table.lists.insert(fingerprint, Arc::downgrade(&set));
        if table.lists.len() > table.lists_sweep_at {
            table.lists.retain(|_, set| set.strong_count() > 0);
            table.lists_sweep_at = (table.lists.len() * 2).max(64);
        }
        set
    }

    fn intern(&self, set: NameSet) -> Arc<NameSet> {
        let hash = set.hash;
        self.table
            .lock()
            .expect("interner lock")
            .sets
            .share(hash, Arc::new(set), |a, b| a == b)
    }
}

/// What changed between two sets: resources new or with another version, and names gone.
#[derive(Debug, Default)]
pub struct SetDiff {
    pub changed: Vec<Arc<Resource>>,
    pub removed: Vec<Arc<str>>,
}

impl SetDiff {
    /// `new` against `old`, the set a proxy holds. When every held name is in `new` (the usual
    /// case, found while looking for changes) nothing was removed, and the held names are not
    /// looked up again.
    fn between(old: &ResourceSet, new: &ResourceSet) -> Self {
        let mut still_held = 0;
        let changed = new
            .iter()
            .filter(|r| {
                let version = old.get(&r.name).map(|held| &held.version);
                still_held += usize::from(version.is_some());
                version != Some(&r.version)
            })
            .cloned()
            .collect();
        let removed = if still_held == old.by_name.len() {
            Vec::new()
        } else {
            old.iter()
                .filter(|r| new.get(&r.name).is_none())
                .map(|r| r.name.clone())
                .collect()
        };
        SetDiff { changed, removed }
    }

    /// `new` against the versions a reconnecting delta proxy holds: both walked in
    /// [`name_order_key`] order side by side, comparing keys. Changed resources keep `new`'s
    /// order.
    fn against_versions(held: &HeldVersions, new: &ResourceSet) -> Self {
        let order = new.by_name_order();
        let mut unchanged = vec![false; new.len()];
        let mut removed = Vec::new();
        let mut held_entries = held.entries().peekable();
        let mut wanted = order.iter().peekable();
        while let (Some(&(key, name, version)), Some(&item)) = (held_entries.peek(), wanted.peek())
        {
            match key.cmp(&item.name) {
                std::cmp::Ordering::Equal => {
                    unchanged[item.index as usize] = version_key(version) == item.version;
                    held_entries.next();
                    wanted.next();
                }
                std::cmp::Ordering::Less => {
                    removed.push(Arc::from(String::from_utf8_lossy(name).as_ref()));
                    held_entries.next();
                }
                std::cmp::Ordering::Greater => {
                    wanted.next();
                }
            }
        }
        removed.extend(
            held_entries.map(|(_, name, _)| Arc::from(String::from_utf8_lossy(name).as_ref())),
        );
        let changed = new
            .iter()
            .zip(&unchanged)
            .filter(|(_, unchanged)| !**unchanged)
            .map(|(r, _)| r.clone())
            .collect();
        SetDiff { changed, removed }
    }

    /// The diff of two sets holding the same names in the same order (a set and its
    /// successor for one subscription), found by walking them side by side without hashing;
    /// `None` when they are not aligned so.
    fn aligned(old: &ResourceSet, new: &ResourceSet) -> Option<Self> {
        if old.len() != new.len() {
            return None;
        }
        let mut changed = Vec::new();
        for (before, after) in old.iter().zip(new.iter()) {
            if Arc::ptr_eq(before, after) {
                continue;
            }
            if before.name != after.name {
                return None;
            }
            if before.version != after.version {
                changed.push(after.clone());
            }
        }
        Some(SetDiff {
            changed,
            removed: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

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
    namespace: Arc<str>,
    targets: TargetSignature,
    ipv4: bool,
    ipv6: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ListenerClass {
    namespace: Arc<str>,
    /// Only when some VirtualService's TCP route matches on `sourceLabels`; the labels that
    /// pick the proxy's own services are covered by `targets`.
    labels: Option<Arc<BTreeMap<String, String>>>,
    interception: String,
    targets: TargetSignature,
    ips: Option<Vec<IpAddr>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RouteClass {
    name: Arc<str>,
    namespace: Arc<str>,
    dns_domain: String,
    labels: Option<Arc<BTreeMap<String, String>>>,
}

/// One route configuration as served: whole, or (VHDS) without its virtual hosts plus them.
#[derive(Clone)]
struct BuiltRoute {
    config: Arc<Resource>,
    /// Empty unless VHDS serves them.
    virtual_hosts: Resources,
}

/// The route configurations (or, for VHDS, their virtual hosts) for one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RouteSetClass {
    names: Arc<NameSet>,
    namespace: Arc<str>,
    dns_domain: String,
    labels: Option<Arc<BTreeMap<String, String>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EndpointClass {
    name: Arc<str>,
    namespace: Arc<str>,
}

/// The load assignments for one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EndpointSetClass {
    names: Arc<NameSet>,
    namespace: Arc<str>,
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

struct EndpointSetsBefore {
    sets: Arc<DashMap<EndpointSetClass, Resources>>,
    hosts: BTreeSet<meshpilot_model::Hostname>,
}

/// A memoized diff, holding both sets so their addresses (the key) stay theirs.
struct CachedDiff {
    _old: Resources,
    _new: Resources,
    diff: Arc<SetDiff>,
}

/// How resources are served, fixed for the server's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheOptions {
    /// Route configurations name VHDS as the source of their virtual hosts, which are served
    /// one by one as [`ResourceType::VirtualHost`] (see `meshpilot_translate::vhds`).
    pub vhds: bool,
}

/// Per-snapshot resource cache. [`ResourceCache::next`] carries over what a change cannot have
/// affected.
pub struct ResourceCache {
    options: CacheOptions,
    snapshot: Arc<Snapshot>,
    clusters: Arc<DashMap<ClusterClass, Resources>>,
    listeners: Arc<DashMap<ListenerClass, Resources>>,
    /// A cell per class, so proxies (and a proxy's ADS and VHDS streams) asking for a class
    /// being built wait for that build instead of repeating it: a route configuration of
    /// thousands of virtual hosts takes a good part of a second.
    routes: Arc<DashMap<RouteClass, Arc<OnceLock<BuiltRoute>>>>,
    route_sets: Arc<DashMap<RouteSetClass, Resources>>,
    virtual_host_sets: Arc<DashMap<RouteSetClass, Resources>>,
    endpoints: Arc<DashMap<EndpointClass, CachedAssignment>>,
    /// Per snapshot: assignments are revalidated, so their sets are too.
    endpoint_sets: Arc<DashMap<EndpointSetClass, Resources>>,
    /// The previous snapshot's sets, when only workload endpoints changed since: a set is then
    /// rebuilt from its predecessor, redoing only the clusters of the services in `hosts`.
    endpoint_sets_before: Option<EndpointSetsBefore>,
    diffs: DashMap<(usize, usize), CachedDiff>,
    names: Arc<NameSetInterner>,
    /// One copy of equal resources and sets across classes (and snapshots).
    content: Arc<ContentInterner>,
    any_headless: bool,
    any_http_source_match: bool,
    any_tcp_source_match: bool,
}

/// The ports whose route configurations `changes` can alter, when it changed nothing but
/// VirtualServices (`None`: any, or something else changed too).
fn virtual_service_route_ports(
    old: &Snapshot,
    new: &Snapshot,
    changes: &ChangeSet,
) -> Option<BTreeSet<u16>> {
    let only_virtual_services = changes.services.is_empty()
        && changes.endpoints.is_empty()
        && changes.pods.is_empty()
        && changes.namespaces.is_empty()
        && changes
            .configs
            .iter()
            .all(|k| k.kind == ConfigKind::VirtualService);
    if !only_virtual_services {
        return None;
    }
    let changed: Vec<(&str, &str)> = changes
        .configs
        .iter()
        .map(|k| (k.namespace.as_str(), k.name.as_str()))
        .collect();
    route_ports_touched_by(old, new, &changed)
}

/// A whole set built once per class, and shared with the classes whose set holds the same
/// resources. `like`: a set that probably has the same names in the same order, whose index
/// a new set can share.
fn shared_set<K: Eq + std::hash::Hash>(
    cache: &DashMap<K, Resources>,
    content: &ContentInterner,
    class: K,
    like: Option<&ResourceSet>,
    build: impl FnOnce() -> Vec<Arc<Resource>>,
) -> Resources {
    if let Some(hit) = cache.get(&class) {
        return hit.clone();
    }
    // Built outside the map's lock: a build can take milliseconds and other classes must not
    // wait on it. Two proxies of one new class may both build it; the first insert wins.
    let built = content.set(build(), like);
    cache.entry(class).or_insert(built).clone()
}

impl ResourceCache {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self::with_options(snapshot, CacheOptions::default())
    }

    pub fn with_options(snapshot: Arc<Snapshot>, options: CacheOptions) -> Self {
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
            options,
            any_headless,
            any_http_source_match,
            any_tcp_source_match,
            snapshot,
            clusters: Arc::default(),
            listeners: Arc::default(),
            routes: Arc::default(),
            route_sets: Arc::default(),
            virtual_host_sets: Arc::default(),
            endpoints: Arc::default(),
            endpoint_sets: Arc::default(),
            endpoint_sets_before: None,
            diffs: DashMap::default(),
            names: Arc::default(),
            content: Arc::default(),
        }
    }

    /// The cache for the next snapshot: keeps each type's entries when `changes` cannot have
    /// `affected` them; endpoint assignments are always kept and revalidated on use.
    pub fn next(&self, snapshot: Arc<Snapshot>, changes: &ChangeSet, affected: TypeSet) -> Self {
        let mut next = ResourceCache::with_options(snapshot, self.options);
        if !affected.contains(ResourceType::Cluster) {
            next.clusters = self.clusters.clone();
        }
        if !affected.contains(ResourceType::Listener) {
            next.listeners = self.listeners.clone();
        }
        if !affected.contains(ResourceType::Route) {
            next.routes = self.routes.clone();
            next.route_sets = self.route_sets.clone();
            next.virtual_host_sets = self.virtual_host_sets.clone();
        } else if let Some(ports) =
            virtual_service_route_ports(&self.snapshot, &next.snapshot, changes)
        {
            // Only VirtualServices changed: route configurations of other ports stay (with
            // 10,000 VirtualServices, route "80" alone is a large build per class).
            let kept = |name: &str| route_name_port(name).is_some_and(|p| !ports.contains(&p));
            next.routes = Arc::new(
                self.routes
                    .iter()
                    .filter(|e| kept(&e.key().name))
                    .map(|e| (e.key().clone(), e.value().clone()))
                    .collect(),
            );
            let kept_sets = |sets: &DashMap<RouteSetClass, Resources>| {
                Arc::new(
                    sets.iter()
                        .filter(|e| e.key().names.iter().all(kept))
                        .map(|e| (e.key().clone(), e.value().clone()))
                        .collect(),
                )
            };
            next.route_sets = kept_sets(&self.route_sets);
            next.virtual_host_sets = kept_sets(&self.virtual_host_sets);
        }
        next.endpoints = self.endpoints.clone();
        next.names = self.names.clone();
        next.content = self.content.clone();
        if changes.is_workloads_only() {
            next.endpoint_sets_before = Some(EndpointSetsBefore {
                sets: self.endpoint_sets.clone(),
                hosts: changes.endpoints.clone(),
            });
        }
        next
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The shared copy of a subscription's names.
    pub fn intern(&self, names: NameSet) -> Arc<NameSet> {
        self.names.intern(names)
    }

    /// The shared set for a request's name list, known by its `fingerprint` (a hash of the
    /// list in its order); `build` runs only for a list not seen before.
    pub fn intern_list(&self, fingerprint: u128, build: impl FnOnce() -> NameSet) -> Arc<NameSet> {
        self.names.intern_list(fingerprint, build)
    }

    /// Every cluster of the proxy, CDS order.
    pub fn clusters(&self, proxy: &Proxy) -> Resources {
        let class = ClusterClass {
            namespace: proxy.namespace.clone(),
            targets: TargetSignature::of(&self.snapshot, proxy),
            ipv4: proxy.ips.iter().any(IpAddr::is_ipv4),
            ipv6: proxy.ips.iter().any(IpAddr::is_ipv6),
        };
        shared_set(&self.clusters, &self.content, class, None, || {
            build_clusters(&self.snapshot, proxy)
                .iter()
                .map(|c| self.content.resource(Resource::encode(&c.name, c)))
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
        shared_set(&self.listeners, &self.content, class, None, || {
            build_listeners(&self.snapshot, proxy)
                .iter()
                .map(|l| self.content.resource(Resource::encode(&l.name, l)))
                .collect()
        })
    }

    /// What a subscription's route configurations (and their virtual hosts) depend on.
    fn route_set_class(&self, proxy: &Proxy, names: &Arc<NameSet>) -> RouteSetClass {
        RouteSetClass {
            names: names.clone(),
            namespace: proxy.namespace.clone(),
            dns_domain: proxy.dns_domain.clone(),
            labels: self.any_http_source_match.then(|| proxy.labels.clone()),
        }
    }

    /// The subscribed route configurations, in name order.
    pub fn routes(&self, proxy: &Proxy, names: &Arc<NameSet>) -> Resources {
        let class = self.route_set_class(proxy, names);
        let labels = class.labels.clone();
        shared_set(&self.route_sets, &self.content, class, None, || {
            names
                .names
                .iter()
                .map(|name| self.route(proxy, name, &labels).config)
                .collect()
        })
    }

    /// VHDS: the virtual hosts of the subscribed route configurations, named
    /// `<route configuration>/<virtual host>`. Empty without [`CacheOptions::vhds`] (the
    /// configurations carry their virtual hosts then).
    pub fn virtual_hosts(&self, proxy: &Proxy, route_configs: &Arc<NameSet>) -> Resources {
        let class = self.route_set_class(proxy, route_configs);
        let labels = class.labels.clone();
        shared_set(&self.virtual_host_sets, &self.content, class, None, || {
            route_configs
                .names
                .iter()
                .flat_map(|name| {
                    self.route(proxy, name, &labels)
                        .virtual_hosts
                        .as_slice()
                        .to_vec()
                })
                .collect()
        })
    }

    fn route(
        &self,
        proxy: &Proxy,
        name: &Arc<str>,
        labels: &Option<Arc<BTreeMap<String, String>>>,
    ) -> BuiltRoute {
        let class = RouteClass {
            name: name.clone(),
            namespace: proxy.namespace.clone(),
            dns_domain: proxy.dns_domain.clone(),
            labels: labels.clone(),
        };
        // The map's lock is held only to find the cell; the build runs outside it.
        let cell = match self.routes.get(&class) {
            Some(cell) => cell.clone(),
            None => self.routes.entry(class).or_default().clone(),
        };
        cell.get_or_init(|| self.build_route(proxy, name)).clone()
    }

    fn build_route(&self, proxy: &Proxy, name: &Arc<str>) -> BuiltRoute {
        let built = build_routes(&self.snapshot, proxy, &[name.to_string()]);
        let route = built.into_iter().next().unwrap_or_default();
        if self.options.vhds {
            let (config, virtual_hosts) = split_for_vhds(route);
            BuiltRoute {
                config: self.content.resource(Resource::encode(name, &config)),
                virtual_hosts: self.content.set(
                    virtual_hosts
                        .iter()
                        .map(|v| self.content.resource(Resource::encode(&v.name, v)))
                        .collect(),
                    None,
                ),
            }
        } else {
            BuiltRoute {
                config: self.content.resource(Resource::encode(name, &route)),
                virtual_hosts: Arc::default(),
            }
        }
    }

    /// The subscribed load assignments, in name order.
    pub fn endpoints(&self, proxy: &Proxy, names: &Arc<NameSet>) -> Resources {
        let class = EndpointSetClass {
            names: names.clone(),
            namespace: proxy.namespace.clone(),
        };
        if let Some(hit) = self.endpoint_sets.get(&class) {
            return hit.clone();
        }
        let before = self
            .endpoint_sets_before
            .as_ref()
            .and_then(|b| Some((b.sets.get(&class)?.clone(), &b.hosts)));
        let like = before.as_ref().map(|(set, _)| set.clone());
        shared_set(
            &self.endpoint_sets,
            &self.content,
            class,
            like.as_deref(),
            || {
                let namespace = proxy.namespace.clone();
                match before {
                    // Same names, same order: keep every assignment but those of the
                    // services whose endpoints changed.
                    Some((set, hosts)) if set.len() == names.len() => {
                        let mut items = set.as_slice().to_vec();
                        for host in hosts {
                            for &i in names.cluster_positions(host) {
                                let i = i as usize;
                                items[i] = self.endpoint(proxy, &names.names[i], &namespace);
                            }
                        }
                        items
                    }
                    _ => names
                        .names
                        .iter()
                        .map(|name| self.endpoint(proxy, name, &namespace))
                        .collect(),
                }
            },
        )
    }

    fn endpoint(&self, proxy: &Proxy, name: &Arc<str>, namespace: &Arc<str>) -> Arc<Resource> {
        let inputs = self.endpoint_inputs(name, namespace);
        let class = EndpointClass {
            name: name.clone(),
            namespace: namespace.clone(),
        };
        if let Some(cached) = self.endpoints.get(&class)
            && cached.inputs == inputs
        {
            return cached.resource.clone();
        }
        let built = build_endpoints(&self.snapshot, proxy, &[name.to_string()]);
        let assignment = built.into_iter().next().unwrap_or_default();
        let resource = self.content.resource(Resource::encode(name, &assignment));
        self.endpoints.insert(
            class,
            CachedAssignment {
                inputs,
                resource: resource.clone(),
            },
        );
        resource
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

    /// What a proxy holding `old` lacks of `new`; computed once per pair and snapshot.
    pub fn diff(&self, old: &Resources, new: &Resources) -> Arc<SetDiff> {
        if Arc::ptr_eq(old, new) {
            return Arc::default();
        }
        // Every empty set is the same as far as a diff goes: proxies' first answers share one.
        let old_key = if old.is_empty() {
            0
        } else {
            Arc::as_ptr(old) as usize
        };
        let key = (old_key, Arc::as_ptr(new) as usize);
        if let Some(hit) = self.diffs.get(&key) {
            return hit.diff.clone();
        }
        let diff =
            Arc::new(SetDiff::aligned(old, new).unwrap_or_else(|| SetDiff::between(old, new)));
        self.diffs.insert(
            key,
            CachedDiff {
                _old: old.clone(),
                _new: new.clone(),
                diff: diff.clone(),
            },
        );
        diff
    }

    /// What a proxy holding these versions (a delta reconnect) lacks of `new`; not shared.
    pub fn diff_versions(&self, held: &HeldVersions, new: &ResourceSet) -> SetDiff {
        SetDiff::against_versions(held, new)
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
        // Two proxies subscribing to the same routes share the set, even from separate
        // (not interned) name sets.
        let routes_a = Arc::new(NameSet::new(["8080"]));
        let routes_b = Arc::new(NameSet::new(["8080"]));
        assert!(Arc::ptr_eq(
            &cache.routes(&a, &routes_a),
            &cache.routes(&b, &routes_b)
        ));
        // Another namespace is another class (DestinationRule lookup, short host names), but
        // where its clusters come out byte for byte the same, it shares the one set.
        let (mine, theirs) = (cache.clusters(&a), cache.clusters(&other_ns));
        assert!(mine.iter().zip(theirs.iter()).all(|(x, y)| x.any == y.any));
        assert!(Arc::ptr_eq(&mine, &theirs));
        // A proxy selected by a service has inbound config of its own.
        let backend = proxy("10.130.0.1", "svc-1-v1-0", "ns-1", "svc-1");
        assert!(!Arc::ptr_eq(
            &cache.listeners(&a),
            &cache.listeners(&backend)
        ));
    }

    #[test]
    fn equal_subscriptions_intern_to_one_set() {
        let cache = ResourceCache::new(Arc::new(mk_mesh(2, 1, 0, 0).snapshot()));
        let a = cache.intern(NameSet::new(["b", "a", "a"]));
        let b = cache.intern(NameSet::new(["a", "b"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(a.same_as(&["b", "a"]) && a.same_as(&["a", "b", "b"]));
        assert!(!a.same_as(&["a"]) && !a.same_as(&["a", "c"]));
        let c = cache.intern(NameSet::new(["c"]));
        assert!(!Arc::ptr_eq(&a, &c));
        // A request list seen before is not built again; another spelling of the same names
        // still finds the same set.
        let listed = cache.intern_list(7, || NameSet::new(["a", "b"]));
        assert!(Arc::ptr_eq(&listed, &a));
        let again = cache.intern_list(7, || unreachable!("list 7 is known"));
        assert!(Arc::ptr_eq(&again, &a));
        assert!(Arc::ptr_eq(
            &cache.intern_list(8, || NameSet::new(["b", "a"])),
            &a
        ));
    }

    #[test]
    fn an_endpoint_change_rebuilds_only_that_services_assignments() {
        use meshpilot_model::Object;
        use meshpilot_model::fixtures::mk_slice;
        let mut index = mk_mesh(3, 2, 0, 3);
        let before = ResourceCache::new(Arc::new(index.snapshot()));
        let client = proxy("10.128.0.1", "client-0", "ns-0", "client");
        let names = before.intern(NameSet::new((0..3).flat_map(|i| {
            let host = format!("svc-{i}.ns-{i}.svc.cluster.local");
            ["", "v1", "v2"].map(|subset| format!("outbound|8080|{subset}|{host}"))
        })));
        let old = before.endpoints(&client, &names);
        let changes = index.apply(Object::EndpointSlice(Arc::new(mk_slice(
            "ns-1",
            "svc-1",
            &[("http", 8080)],
            &[("svc-1-v1-0", "10.130.0.3")],
        ))));
        assert!(changes.is_workloads_only());
        let snapshot = Arc::new(index.snapshot());
        let affected = crate::types::affected_types(&changes, &snapshot);
        let after = before.next(snapshot, &changes, affected);
        let new = after.endpoints(&client, &names);
        // Other services' assignments are kept; svc-1's are rebuilt, and one that comes out
        // the same (v1, below) is the old copy again.
        for (o, n) in old.iter().zip(new.iter()) {
            let touched = n.name.ends_with("|svc-1.ns-1.svc.cluster.local");
            let unchanged = o.any == n.any;
            assert_eq!(unchanged, Arc::ptr_eq(o, n), "{}", n.name);
            assert!(touched || unchanged, "{}", n.name);
        }
        // Same names in the same order: one index by name serves both sets.
        assert!(Arc::ptr_eq(&old.by_name, &new.by_name));
        let rebuilt = "outbound|8080||svc-1.ns-1.svc.cluster.local";
        let at = new.iter().position(|r| &*r.name == rebuilt).unwrap();
        assert!(Arc::ptr_eq(new.get(rebuilt).unwrap(), &new.as_slice()[at]));
        // svc-1 lost its v2 endpoint: the default and v2 assignments changed, v1 did not.
        let diff = after.diff(&old, &new);
        let changed: Vec<&str> = diff.changed.iter().map(|r| &*r.name).collect();
        assert_eq!(
            changed,
            [
                "outbound|8080|v2|svc-1.ns-1.svc.cluster.local",
                "outbound|8080||svc-1.ns-1.svc.cluster.local"
            ]
        );
        assert!(diff.removed.is_empty());
    }

    #[test]
    fn a_virtual_service_edit_keeps_the_route_configurations_of_other_ports() {
        use meshpilot_model::fixtures::{mk_reviews_index, mk_virtual_service};
        let vs = |name: &str, body: &str| mk_virtual_service("default", name, body);
        let mut index = mk_reviews_index(&["v1", "v2"]);
        index.apply(vs(
            "reviews",
            "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews}}]\n",
        ));
        let client = proxy("10.244.1.20", "productpage", "default", "productpage");
        let mut cache = ResourceCache::new(Arc::new(index.snapshot()));
        let built = |cache: &ResourceCache| -> BTreeSet<String> {
            cache
                .routes
                .iter()
                .map(|e| e.key().name.to_string())
                .collect()
        };
        let mut edit = |cache: &ResourceCache, body: &str, name: &str| {
            cache.routes(&client, &cache.intern(NameSet::new(["80", "9080"])));
            let changes = index.apply(vs(name, body));
            let snapshot = Arc::new(index.snapshot());
            let affected = crate::types::affected_types(&changes, &snapshot);
            cache.next(snapshot, &changes, affected)
        };
        // reviews serves 9080: route "80" is carried over as built, "9080" is dropped.
        cache = edit(
            &cache,
            "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews, port: {number: 9080}}}]\n",
            "reviews",
        );
        assert_eq!(built(&cache), BTreeSet::from(["80".to_string()]));
        // A host naming no service is served on route "80": that one goes, "9080" stays.
        cache = edit(
            &cache,
            "hosts: [www.example.com]\nhttp:\n- route: [{destination: {host: reviews}}]\n",
            "external",
        );
        assert_eq!(built(&cache), BTreeSet::from(["9080".to_string()]));
        // A wildcard host may cover any service: nothing is kept.
        cache = edit(
            &cache,
            "hosts: ['*.default.svc.cluster.local']\nhttp:\n- route: [{destination: {host: reviews}}]\n",
            "wide",
        );
        assert!(built(&cache).is_empty());
    }

    /// A named resource whose version follows `body`.
    fn r(name: &str, body: &str) -> Arc<Resource> {
        Resource::encode(
            name,
            &envoy_types::pb::google::protobuf::StringValue { value: body.into() },
        )
    }

    #[test]
    fn diffs_name_changed_and_removed_resources_and_are_shared() {
        let cache = ResourceCache::new(Arc::new(mk_mesh(2, 1, 0, 0).snapshot()));
        let same = r("same", "x");
        let old = Arc::new(ResourceSet::new(vec![
            same.clone(),
            r("edited", "1"),
            r("gone", ""),
        ]));
        let new = Arc::new(ResourceSet::new(vec![
            same,
            r("edited", "2"),
            r("added", ""),
        ]));
        let diff = cache.diff(&old, &new);
        let changed: Vec<&str> = diff.changed.iter().map(|r| &*r.name).collect();
        assert_eq!(changed, ["edited", "added"]);
        assert_eq!(diff.removed, [Arc::from("gone")]);
        assert!(Arc::ptr_eq(&diff, &cache.diff(&old, &new)));
        assert!(cache.diff(&new, &new).is_empty());
    }

    #[test]
    fn versions_a_reconnecting_proxy_holds_diff_against_the_current_set() {
        let cache = ResourceCache::new(Arc::new(mk_mesh(2, 1, 0, 0).snapshot()));
        let (a, b) = (r("a", "1"), r("b", "1"));
        let current = ResourceSet::new(vec![a.clone(), b.clone()]);
        let held = |pairs: &[(&str, &str)]| -> HeldVersions {
            let request = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
                initial_resource_versions: pairs
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            };
            crate::DeltaRequest::from(request).initial_resource_versions
        };
        let same = held(&[("a", &a.version), ("b", &b.version)]);
        assert!(cache.diff_versions(&same, &current).is_empty());
        // Everything held is still there, one version is stale, one resource is new.
        let diff = cache.diff_versions(&held(&[("a", "old")]), &current);
        let changed: Vec<&str> = diff.changed.iter().map(|r| &*r.name).collect();
        assert_eq!(changed, ["a", "b"]);
        assert!(diff.removed.is_empty());
        // Held names the set no longer has are removed, even with as many names as the set.
        let diff = cache.diff_versions(&held(&[("a", &a.version), ("gone", "1")]), &current);
        let changed: Vec<&str> = diff.changed.iter().map(|r| &*r.name).collect();
        assert_eq!(changed, ["b"]);
        assert_eq!(diff.removed, [Arc::from("gone")]);
    }

    #[test]
    fn a_reconnect_diff_matches_comparing_name_by_name() {
        // Names with long shared prefixes, held in every combination of kept, stale and gone.
        let names: Vec<String> = (0..300)
            .map(|i| format!("outbound|9080||svc-{i}.ns-{}.svc.cluster.local", i % 7))
            .collect();
        let current = ResourceSet::new(names.iter().map(|n| r(n, n)).collect());
        let cache = ResourceCache::new(Arc::new(mk_mesh(2, 1, 0, 0).snapshot()));
        let mut held = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            match i % 4 {
                0 => {}
                1 => {
                    held.insert(name.clone(), "stale".to_string());
                }
                _ => {
                    held.insert(name.clone(), current.get(name).unwrap().version.to_string());
                }
            }
        }
        for i in 0..50 {
            held.insert(
                format!("outbound|9080||gone-{i}.svc.cluster.local"),
                "1".into(),
            );
        }
        let request = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
            initial_resource_versions: held.clone(),
            ..Default::default()
        };
        let versions = crate::DeltaRequest::from(request).initial_resource_versions;
        let diff = cache.diff_versions(&versions, &current);
        let expected_changed: Vec<&str> = current
            .iter()
            .filter(|r| held.get(&*r.name).map(String::as_str) != Some(&*r.version))
            .map(|r| &*r.name)
            .collect();
        let changed: Vec<&str> = diff.changed.iter().map(|r| &*r.name).collect();
        assert_eq!(changed, expected_changed);
        let mut removed: Vec<&str> = diff.removed.iter().map(|n| &**n).collect();
        removed.sort_unstable();
        let mut expected_removed: Vec<&str> = held
            .keys()
            .filter(|n| current.get(n).is_none())
            .map(String::as_str)
            .collect();
        expected_removed.sort_unstable();
        assert_eq!(removed, expected_removed);
    }
}
