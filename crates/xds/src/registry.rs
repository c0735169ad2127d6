//! Who is connected and what each proxy has been sent: the source of istiod's debug views
//! (`/debug/syncz`, `/debug/adsz`, `/debug/config_dump`). Each stream task keeps its own entry
//! up to date after every request and push; the entry goes when the stream ends.

use crate::connection::{Connection, Flavor, Held, Watch};
use crate::publish::Published;
use crate::resources::NameSet;
use crate::types::{ByTypeUrl, ResourceType, TypeSet, type_url_key};
use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::Locality;
use meshpilot_model::Proxy;
use meshpilot_translate::dump::{self, DumpError};
use meshpilot_translate::type_urls;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// Which service a stream belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// The proxy's ADS stream: everything but VHDS.
    Ads,
    /// Its VHDS stream (`--vhds`): the virtual hosts of its route configurations.
    Vhds,
}

/// What a connection announced when it connected; fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// `<pod>.<namespace>-<counter>`, as istiod names connections.
    pub id: String,
    pub node_id: String,
    pub stream: StreamKind,
    pub flavor: Flavor,
    pub peer: Option<SocketAddr>,
    pub connected_at: SystemTime,
    /// `node.metadata` as protobuf JSON.
    pub metadata: Value,
    /// `node.locality`, rendered as JSON only by the debug views (rendering any Envoy type loads
    /// the whole Envoy descriptor pool).
    pub locality: Option<Locality>,
    /// `ISTIO_VERSION` from the metadata, empty when absent.
    pub istio_version: String,
}

/// One type's subscription and delivery state, as the debug views show it. Holds the
/// connection's shared sets (a few pointers), not copies of their names: it is refreshed on
/// every request and push.
#[derive(Clone, Debug, Default)]
pub struct WatchStatus {
    pub wildcard: bool,
    pub subscribed: Arc<NameSet>,
    pub held: Held,
    /// Nonce of the last response sent, empty before the first.
    pub sent_nonce: String,
    /// Nonce of the last response ACKed, empty before the first ACK.
    pub acked_nonce: String,
    pub sent_at: Option<SystemTime>,
    pub last_error: Option<String>,
    pub nacks: u64,
}

impl WatchStatus {
    pub fn of(watch: &Watch, sent_at: Option<SystemTime>) -> Self {
        let mut status = WatchStatus::default();
        status.refresh(watch, sent_at);
        status
    }

    /// Brings this status up to `watch`, reusing its strings' memory: this runs on every
    /// request and push of every connection.
    pub fn refresh(&mut self, watch: &Watch, sent_at: Option<SystemTime>) {
        fn copy(target: &mut String, source: &Option<String>) {
            target.clear();
            target.push_str(source.as_deref().unwrap_or_default());
        }
        self.wildcard = watch.wildcard;
        if !Arc::ptr_eq(&self.subscribed, &watch.names) {
            self.subscribed = watch.names.clone();
        }
        self.held.clone_from(&watch.held);
        copy(&mut self.sent_nonce, &watch.last_sent_nonce);
        copy(&mut self.acked_nonce, &watch.acked_nonce);
        self.sent_at = sent_at;
        if self.last_error != watch.last_error {
            self.last_error.clone_from(&watch.last_error);
        }
        self.nacks = watch.nacks;
    }

    /// Explicitly subscribed names; for a wildcard watch, the names the proxy holds.
    pub fn names(&self) -> Vec<&str> {
        if self.wildcard {
            self.held.names()
        } else {
            self.subscribed.iter().collect()
        }
    }
}

/// A connection as of its latest request or push.
#[derive(Clone)]
pub struct ConnectionStatus {
    pub info: Arc<ConnectionInfo>,
    /// The proxy as last refreshed from the snapshot (pod labels win over metadata labels).
    pub proxy: Proxy,
    /// Keyed by type URL.
    pub watches: ByTypeUrl<WatchStatus>,
    /// The published state the connection last computed responses from.
    pub pushed_from: Arc<Published>,
    /// When the connection last sent any response.
    pub last_push: Option<SystemTime>,
}

impl ConnectionStatus {
    /// Brings the entry up to the connection's state after a request or push, copying only
    /// what changed: the watches of the `touched` types (`None`: every type), and all of them
    /// when a watch came or went. Only a proxy's labels change while it is connected.
    pub fn refresh(
        &mut self,
        connection: &Connection,
        touched: Option<TypeSet>,
        sent_at: &ByTypeUrl<SystemTime>,
        pushed_from: &Arc<Published>,
        last_push: Option<SystemTime>,
    ) {
        if !Arc::ptr_eq(&self.proxy.labels, &connection.proxy().labels) {
            self.proxy.clone_from(connection.proxy());
        }
        let watches = connection.watches();
        let all = touched.is_none() || self.watches.len() != watches.len();
        let mut refresh = |url: &str, watch: &Watch| {
            let sent_at = sent_at.get(url).copied();
            match self.watches.get_mut(url) {
                Some(status) => status.refresh(watch, sent_at),
                None => {
                    self.watches
                        .insert(type_url_key(url), WatchStatus::of(watch, sent_at));
                }
            }
        };
        match touched {
            Some(types) if !all => {
                for kind in ResourceType::PUSH_ORDER
                    .into_iter()
                    .filter(|k| types.contains(*k))
                {
                    if let Some(watch) = watches.get(kind.type_url()) {
                        refresh(kind.type_url(), watch);
                    }
                }
            }
            _ => {
                for (url, watch) in watches {
                    refresh(url, watch);
                }
            }
        }
        if self.watches.len() != watches.len() {
            self.watches.retain(|url, _| watches.contains_key(url));
        }
        if !Arc::ptr_eq(&self.pushed_from, pushed_from) {
            self.pushed_from = pushed_from.clone();
        }
        self.last_push = last_push;
    }
}

impl std::fmt::Debug for ConnectionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionStatus")
            .field("info", &self.info)
            .field("watches", &self.watches)
            .field("version", &self.pushed_from.version_info)
            .finish_non_exhaustive()
    }
}

/// Every connection this server holds, by connection id.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    connections: DashMap<String, SharedStatus>,
}

type SharedStatus = Arc<Mutex<ConnectionStatus>>;

fn lock(status: &SharedStatus) -> MutexGuard<'_, ConnectionStatus> {
    // A panic while refreshing leaves a status that is at worst stale: still worth showing.
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's entry, held by its stream: updated without a lookup by id, and removed
/// from the registry when dropped, however the stream ends.
pub struct Registration {
    registry: Arc<ConnectionRegistry>,
    id: String,
    status: SharedStatus,
}

impl Registration {
    /// Changes this connection's entry (after every request and push).
    pub fn update(&self, change: impl FnOnce(&mut ConnectionStatus)) {
        change(&mut lock(&self.status));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.connections.remove(&self.id);
    }
}

impl ConnectionRegistry {
    pub fn register(self: &Arc<Self>, status: ConnectionStatus) -> Registration {
        let id = status.info.id.clone();
        let status = Arc::new(Mutex::new(status));
        self.connections.insert(id.clone(), status.clone());
        Registration {
            registry: self.clone(),
            id,
            status,
        }
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Every connection, ordered by connect time then id.
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        let mut all: Vec<ConnectionStatus> = self
            .connections
            .iter()
            .map(|e| lock(e.value()).clone())
            .collect();
        all.sort_by(|a, b| {
            (a.info.connected_at, &a.info.id).cmp(&(b.info.connected_at, &b.info.id))
        });
        all
    }

    /// The ADS connection whose id contains `proxy_id` (istiod's rule: `pod.ns` finds
    /// `pod.ns-7`); the newest wins when a proxy has reconnected.
    pub fn find(&self, proxy_id: &str) -> Option<ConnectionStatus> {
        self.connections()
            .into_iter()
            .rev()
            .find(|c| c.info.stream == StreamKind::Ads && c.info.id.contains(proxy_id))
    }

    /// `/debug/syncz`: per connection, the nonces sent and ACKed for each type.
    pub fn syncz(&self, namespace: Option<&str>) -> Value {
        Value::Array(
            self.connections()
                .iter()
                .filter(|c| namespace.is_none_or(|ns| *c.proxy.namespace == *ns))
                .map(syncz_entry)
                .collect(),
        )
    }

    /// `/debug/adsz`: every client with its identity and watches.
    pub fn adsz(&self) -> Value {
        let clients: Vec<Value> = self.connections().iter().map(adsz_entry).collect();
        json!({"totalClients": clients.len(), "clients": clients})
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn syncz_entry(c: &ConnectionStatus) -> Value {
    let mut entry = Map::new();
    entry.insert("cluster_id".into(), c.proxy.cluster_id.clone().into());
    entry.insert("proxy".into(), c.proxy.id().into());
    entry.insert("connection_id".into(), c.info.id.clone().into());
    entry.insert("proxy_type".into(), "sidecar".into());
    entry.insert("istio_version".into(), c.info.istio_version.clone().into());
    for (prefix, url) in [
        ("cluster", type_urls::CLUSTER),
        ("listener", type_urls::LISTENER),
        ("route", type_urls::ROUTE),
        ("endpoint", type_urls::ENDPOINT),
    ] {
        let watch = c.watches.get(url);
        let nonce = |f: fn(&WatchStatus) -> &String| watch.map(f).cloned().unwrap_or_default();
        entry.insert(format!("{prefix}_sent"), nonce(|w| &w.sent_nonce).into());
        entry.insert(format!("{prefix}_acked"), nonce(|w| &w.acked_nonce).into());
    }
    entry.insert(
        "last_push_time".into(),
        c.last_push.map(rfc3339).map_or(Value::Null, Value::from),
    );
    let resources: Map<String, Value> = c
        .watches
        .iter()
        .map(|(url, w)| {
            let mut r = Map::new();
            r.insert("sent".into(), w.sent_nonce.clone().into());
            r.insert("acked".into(), w.acked_nonce.clone().into());
            if let Some(at) = w.sent_at {
                r.insert("sentTime".into(), rfc3339(at).into());
            }
            if let Some(error) = &w.last_error {
                r.insert("lastError".into(), error.clone().into());
            }
            (url.to_string(), Value::Object(r))
        })
        .collect();
    entry.insert("resources".into(), Value::Object(resources));
    Value::Object(entry)
}

fn adsz_entry(c: &ConnectionStatus) -> Value {
    let watches: Map<String, Value> = c
        .watches
        .iter()
        .map(|(url, w)| (url.to_string(), json!(w.names())))
        .collect();
    json!({
        "connectionId": c.info.id,
        "connectedAt": rfc3339(c.info.connected_at),
        "address": c.info.peer.map(|p| p.to_string()).unwrap_or_default(),
        "nodeId": c.info.node_id,
        "flavor": match c.info.flavor { Flavor::Sotw => "sotw", Flavor::Delta => "delta" },
        "stream": match c.info.stream { StreamKind::Ads => "ads", StreamKind::Vhds => "vhds" },
        "labels": *c.proxy.labels,
        "metadata": c.info.metadata,
        "locality": c.info.locality.as_ref().map_or_else(
            || json!({}),
            |l| dump::to_json(l).unwrap_or_else(|e| json!({ "error": e.to_string() })),
        ),
        "version": &*c.pushed_from.version_info,
        "watches": watches,
    })
}

/// Envoy's admin `config_dump` of what was sent to this connection: regenerated from the state
/// it last pushed from, for its proxy, holding only the types and names it subscribed to.
pub fn config_dump(
    status: &ConnectionStatus,
    types: &[dump::ResourceType],
) -> Result<Value, DumpError> {
    let snapshot = status.pushed_from.snapshot();
    let mut config = meshpilot_translate::build_proxy_config(snapshot, &status.proxy);
    let watched = |kind: ResourceType| status.watches.get(kind.type_url());
    if watched(ResourceType::Cluster).is_none() {
        config.clusters.clear();
    }
    if watched(ResourceType::Listener).is_none() {
        config.listeners.clear();
    }
    // RDS and EDS are by name: keep what the proxy asked for.
    let names = |kind: ResourceType| -> BTreeSet<&str> {
        watched(kind)
            .map(|w| w.names().into_iter().collect())
            .unwrap_or_default()
    };
    let routes = names(ResourceType::Route);
    config.routes.retain(|r| routes.contains(r.name.as_str()));
    let endpoints = names(ResourceType::Endpoint);
    config
        .endpoints
        .retain(|e| endpoints.contains(e.cluster_name.as_str()));
    let dump = dump::config_dump(&config, &status.pushed_from.version_info, types);
    dump::to_json(&dump)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Publisher;
    use crate::resources::{Resource, ResourceSet};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use meshpilot_model::ProxyMetadata;
    use meshpilot_model::fixtures::mk_reviews_index;
    use std::time::Duration;

    const NODE: &str = "sidecar~10.244.1.20~productpage.default~default.svc.cluster.local";

    fn published() -> Arc<Published> {
        let mut index = mk_reviews_index(&["v1"]);
        Publisher::new(index.snapshot()).0.current()
    }

    fn status(id: &str, connected_at: SystemTime) -> ConnectionStatus {
        let proxy = Proxy::from_node(NODE, &ProxyMetadata::default()).unwrap();
        let cluster = "outbound|9080||reviews.default.svc.cluster.local";
        let watches = ByTypeUrl::from_iter([
            (
                type_urls::CLUSTER.into(),
                WatchStatus {
                    wildcard: true,
                    held: Held::Set(Arc::new(ResourceSet::new(vec![Resource::encode(
                        cluster,
                        &Cluster::default(),
                    )]))),
                    sent_nonce: "v/1-2".into(),
                    acked_nonce: "v/1-2".into(),
                    sent_at: Some(SystemTime::UNIX_EPOCH),
                    ..Default::default()
                },
            ),
            (
                type_urls::ENDPOINT.into(),
                WatchStatus {
                    subscribed: Arc::new(NameSet::new([cluster])),
                    sent_nonce: "v/1-3".into(),
                    last_error: Some("bad endpoint".into()),
                    nacks: 1,
                    ..Default::default()
                },
            ),
        ]);
        ConnectionStatus {
            info: Arc::new(ConnectionInfo {
                id: id.into(),
                node_id: NODE.into(),
                stream: StreamKind::Ads,
                flavor: Flavor::Sotw,
                peer: Some("127.0.0.1:40000".parse().unwrap()),
                connected_at,
                metadata: json!({"NAMESPACE": "default"}),
                locality: None,
                istio_version: "1.26.0".into(),
            }),
            proxy,
            watches,
            pushed_from: published(),
            last_push: Some(SystemTime::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_refresh_copies_the_touched_watches_and_all_of_them_when_one_is_new() {
        use crate::connection::PushContext;
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        let published = published();
        let ctx = PushContext {
            cache: published.cache.clone(),
            version_info: published.version_info.clone(),
        };
        let proxy = Proxy::from_node(NODE, &ProxyMetadata::default()).unwrap();
        let mut connection = Connection::new("c-1".into(), proxy, Flavor::Sotw, "meshpilot");
        let request = |type_url: &str, nonce: &str| DiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        let (cds, lds) = (type_urls::CLUSTER, type_urls::LISTENER);
        let cds_nonce = connection.on_sotw_request(request(cds, ""), &ctx)[0]
            .nonce()
            .to_string();
        let lds_nonce = connection.on_sotw_request(request(lds, ""), &ctx)[0]
            .nonce()
            .to_string();
        let mut status = status("c-1", SystemTime::now());
        status.watches.clear();
        let times = ByTypeUrl::new();
        status.refresh(
            &connection,
            Some(TypeSet::default()),
            &times,
            &published,
            None,
        );
        assert_eq!(status.watches.len(), 2, "new watches are always copied");
        assert_eq!(
            status.watches.get(cds).expect("watched").sent_nonce,
            cds_nonce
        );
        assert_eq!(
            status.watches.get(lds).expect("watched").sent_nonce,
            lds_nonce
        );
        connection.on_sotw_request(request(cds, &cds_nonce), &ctx);
        connection.on_sotw_request(request(lds, &lds_nonce), &ctx);
        let mut clusters = TypeSet::default();
        clusters.insert(ResourceType::Cluster);
        status.refresh(&connection, Some(clusters), &times, &published, None);
        assert_eq!(
            status.watches.get(cds).expect("watched").acked_nonce,
            cds_nonce
        );
        assert_eq!(
            status.watches.get(lds).expect("watched").acked_nonce,
            "",
            "untouched: not copied"
        );
        status.refresh(&connection, None, &times, &published, None);
        assert_eq!(
            status.watches.get(lds).expect("watched").acked_nonce,
            lds_nonce
        );
    }

    #[test]
    fn entries_leave_with_their_registration() {
        let registry = Arc::new(ConnectionRegistry::default());
        let first = registry.register(status("productpage.default-1", SystemTime::now()));
        assert_eq!(registry.len(), 1);
        first.update(|s| s.last_push = None);
        assert_eq!(registry.connections()[0].last_push, None);
        drop(first);
        assert!(registry.is_empty());
    }

    #[test]
    fn find_matches_a_substring_and_prefers_the_newest_connection() {
        let registry = Arc::new(ConnectionRegistry::default());
        let t0 = SystemTime::now();
        let _old = registry.register(status("productpage.default-1", t0));
        let _new = registry.register(status("productpage.default-2", t0 + Duration::from_secs(1)));
        assert_eq!(
            registry.find("productpage.default").unwrap().info.id,
            "productpage.default-2"
        );
        assert!(registry.find("reviews.default").is_none());
    }

    #[test]
    fn syncz_reports_nonces_per_type() {
        let registry = Arc::new(ConnectionRegistry::default());
        let _r = registry.register(status("productpage.default-1", SystemTime::now()));
        let syncz = registry.syncz(None);
        let entry = &syncz[0];
        assert_eq!(entry["proxy"], "productpage.default");
        assert_eq!(entry["connection_id"], "productpage.default-1");
        assert_eq!(entry["proxy_type"], "sidecar");
        assert_eq!(entry["cluster_id"], "Kubernetes");
        assert_eq!(entry["istio_version"], "1.26.0");
        assert_eq!(entry["cluster_sent"], entry["cluster_acked"]);
        assert_eq!(entry["endpoint_sent"], "v/1-3");
        assert_eq!(entry["endpoint_acked"], "");
        assert_eq!(entry["listener_sent"], "");
        assert_eq!(entry["last_push_time"], "1970-01-01T00:00:00Z");
        let eds = &entry["resources"][type_urls::ENDPOINT];
        assert_eq!(eds["lastError"], "bad endpoint");
        assert_eq!(
            entry["resources"][type_urls::CLUSTER]["sentTime"],
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(registry.syncz(Some("other")), json!([]));
    }

    #[test]
    fn adsz_lists_clients_with_watches() {
        let registry = Arc::new(ConnectionRegistry::default());
        let _r = registry.register(status("productpage.default-1", SystemTime::now()));
        let adsz = registry.adsz();
        assert_eq!(adsz["totalClients"], 1);
        let client = &adsz["clients"][0];
        assert_eq!(client["connectionId"], "productpage.default-1");
        assert_eq!(client["address"], "127.0.0.1:40000");
        assert_eq!(client["metadata"]["NAMESPACE"], "default");
        assert_eq!(
            client["watches"][type_urls::ENDPOINT][0],
            "outbound|9080||reviews.default.svc.cluster.local"
        );
    }

    #[test]
    fn config_dump_holds_only_watched_types_and_names() {
        let s = status("productpage.default-1", SystemTime::now());
        let json = config_dump(&s, &dump::ResourceType::ALL).unwrap();
        let types: Vec<&str> = json["configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["@type"].as_str().unwrap())
            .collect();
        assert_eq!(types.len(), 4, "{types:?}");
        // CDS is watched: every cluster; LDS/RDS are not: nothing.
        let clusters = &json["configs"][0]["dynamic_active_clusters"];
        assert!(clusters.as_array().unwrap().len() > 1);
        assert!(json["configs"][1].get("dynamic_listeners").is_none());
        let endpoints = json["configs"][3]["dynamic_endpoint_configs"]
            .as_array()
            .unwrap();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            endpoints[0]["endpoint_config"]["cluster_name"],
            "outbound|9080||reviews.default.svc.cluster.local"
        );
    }
}
