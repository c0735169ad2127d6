//! The xDS resource types a sidecar watches (the four of ADS, and VHDS's virtual hosts), their
//! push order, and which of them a change can affect.

use meshpilot_model::{ChangeSet, ConfigKind, Snapshot};
use meshpilot_translate::type_urls;
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    /// VHDS: the virtual hosts of subscribed route configurations (`--vhds`).
    VirtualHost,
}

impl ResourceType {
    /// Push order within one push: CDS, EDS, LDS, RDS (then VHDS, on its own stream).
    pub const PUSH_ORDER: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::VirtualHost,
    ];

    pub fn from_type_url(url: &str) -> Option<Self> {
        match url {
            type_urls::CLUSTER => Some(ResourceType::Cluster),
            type_urls::ENDPOINT => Some(ResourceType::Endpoint),
            type_urls::LISTENER => Some(ResourceType::Listener),
            type_urls::ROUTE => Some(ResourceType::Route),
            type_urls::VIRTUAL_HOST => Some(ResourceType::VirtualHost),
            _ => None,
        }
    }

    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => type_urls::CLUSTER,
            ResourceType::Endpoint => type_urls::ENDPOINT,
            ResourceType::Listener => type_urls::LISTENER,
            ResourceType::Route => type_urls::ROUTE,
            ResourceType::VirtualHost => type_urls::VIRTUAL_HOST,
        }
    }

    /// Short name used in logs and metrics (`cds`, `eds`, `lds`, `rds`, `vhds`).
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::VirtualHost => "vhds",
        }
    }

    /// LDS and CDS are wildcard (the proxy gets everything); EDS, RDS and VHDS are by name
    /// (VHDS names route configurations, each standing for all of its virtual hosts).
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

/// A small set of resource types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypeSet(u8);

impl TypeSet {
    pub const ALL: TypeSet = TypeSet(0b1_1111);

    fn bit(t: ResourceType) -> u8 {
        1 << (t as u8)
    }

    /// Virtual hosts are parts of route configurations: whatever affects one affects both.
    pub fn insert(&mut self, t: ResourceType) {
        self.0 |= Self::bit(t);
        if t == ResourceType::Route {
            self.0 |= Self::bit(ResourceType::VirtualHost);
        }
    }

    pub fn contains(self, t: ResourceType) -> bool {
        self.0 & Self::bit(t) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: TypeSet) -> TypeSet {
        TypeSet(self.0 | other.0)
    }
}

/// Which types a change can affect for any proxy (istiod's rule, applied per kind):
/// services → everything; endpoints → EDS (and LDS when the service is headless, whose TCP
/// listeners are per endpoint); VirtualServices → LDS (TCP routes) and RDS; DestinationRules →
/// CDS, EDS (subset labels) and RDS (hash policies). A pod change reaches other proxies only
/// through the endpoints of the services selecting it (the index reports those hosts), so by
/// itself it affects nothing here; the pod's own proxy recomputes every type (its labels and
/// service targets shape its config), which [`crate::Published::affected_since`] decides.
pub fn affected_types(changes: &ChangeSet, snapshot: &Snapshot) -> TypeSet {
    if !changes.services.is_empty() {
        return TypeSet::ALL;
    }
    let mut set = TypeSet::default();
    if !changes.endpoints.is_empty() {
        set.insert(ResourceType::Endpoint);
        let headless = changes
            .endpoints
            .iter()
            .any(|h| snapshot.service(h).is_some_and(|s| s.headless));
        if headless {
            set.insert(ResourceType::Listener);
        }
    }
    for key in &changes.configs {
        match key.kind {
            ConfigKind::VirtualService => {
                set.insert(ResourceType::Listener);
                set.insert(ResourceType::Route);
            }
            ConfigKind::DestinationRule => {
                set.insert(ResourceType::Cluster);
                set.insert(ResourceType::Endpoint);
                set.insert(ResourceType::Route);
            }
        }
    }
    set
}

/// Per-type state of one connection, by type URL: a few entries in one sorted vector. (A
/// `BTreeMap` allocates a node for eleven, ~2 KB per map and connection for a watch.) Keys of
/// the types meshpilot serves are its static strings ([`type_url_key`]): a lookup compares
/// against the same few strings for every connection, which stay in cache, where a `String`
/// per connection and key cost a cache miss per comparison (~4% of the server under churn).
pub type ByTypeUrl<V> = litemap::LiteMap<Cow<'static, str>, V>;

/// A [`ByTypeUrl`] key: the static type URL of a served type, or a copy of any other.
pub fn type_url_key(url: &str) -> Cow<'static, str> {
    match ResourceType::from_type_url(url) {
        Some(kind) => Cow::Borrowed(kind.type_url()),
        None => Cow::Owned(url.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::{ConfigKey, Hostname};

    #[test]
    fn served_type_urls_key_by_their_static_string_and_others_by_a_copy() {
        for kind in ResourceType::PUSH_ORDER {
            let key = type_url_key(kind.type_url());
            assert!(matches!(key, Cow::Borrowed(k) if std::ptr::eq(k, kind.type_url())));
        }
        let other = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
        assert!(matches!(type_url_key(other), Cow::Owned(ref k) if k == other));
        // Lookups by any `&str` still find them, in type URL order.
        let map = ByTypeUrl::from_iter([
            (type_url_key(other), 3),
            (type_url_key(type_urls::LISTENER), 2),
            (type_url_key(type_urls::CLUSTER), 1),
        ]);
        assert_eq!(map.get(type_urls::CLUSTER.to_string().as_str()), Some(&1));
        assert_eq!(map.get(other), Some(&3));
        let order: Vec<&str> = map.iter().map(|(k, _)| k.as_ref()).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
    }

    #[test]
    fn endpoint_changes_affect_only_eds() {
        let changes = ChangeSet {
            endpoints: [Hostname::from("a.default.svc.cluster.local")].into(),
            ..Default::default()
        };
        let set = affected_types(&changes, &Snapshot::default());
        assert!(set.contains(ResourceType::Endpoint));
        assert!(!set.contains(ResourceType::Cluster));
        assert!(!set.contains(ResourceType::Listener));
        assert!(!set.contains(ResourceType::Route));
    }

    #[test]
    fn pod_changes_affect_other_proxies_only_through_endpoints() {
        let pod_only = ChangeSet {
            pods: [meshpilot_model::ObjectKey::new("default", "reviews-v1-0")].into(),
            ..Default::default()
        };
        assert!(affected_types(&pod_only, &Snapshot::default()).is_empty());
        let relabelled = ChangeSet {
            endpoints: [Hostname::from("reviews.default.svc.cluster.local")].into(),
            ..pod_only
        };
        let set = affected_types(&relabelled, &Snapshot::default());
        assert!(set.contains(ResourceType::Endpoint));
        assert!(!set.contains(ResourceType::Cluster) && !set.contains(ResourceType::Route));
    }

    #[test]
    fn virtual_service_changes_skip_cds_and_eds() {
        let changes = ChangeSet {
            configs: [ConfigKey {
                kind: ConfigKind::VirtualService,
                namespace: "default".into(),
                name: "r".into(),
            }]
            .into(),
            ..Default::default()
        };
        let set = affected_types(&changes, &Snapshot::default());
        assert!(set.contains(ResourceType::Route) && set.contains(ResourceType::Listener));
        assert!(!set.contains(ResourceType::Cluster) && !set.contains(ResourceType::Endpoint));
    }
}
