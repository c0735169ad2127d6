//! Who is connected and what each proxy has been sent: the source of istiod's debug views
//! (`/debug/syncz`, `/debug/adsz`, `/debug/config_dump`). Each stream registers where its
//! status can be read ([`StatusSource`]); a view builds the statuses when it asks, and the
//! entry goes when the stream ends.

use crate::connection::{Connection, Flavor, Held, Watch};
use crate::publish::Published;
use crate::resources::NameSet;
use crate::types::{ByTypeUrl, ResourceType, type_url_key};
use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::Locality;
use meshpilot_model::Proxy;
use meshpilot_translate::dump::{self, DumpError};
use meshpilot_translate::type_urls;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
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
/// connection's shared sets (a few pointers), not copies of their names.
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
        WatchStatus {
            wildcard: watch.wildcard,
            subscribed: watch.names.clone(),
            held: watch.held.clone(),
            sent_nonce: watch.last_sent_nonce.clone().unwrap_or_default(),
            acked_nonce: watch.acked_nonce.clone().unwrap_or_default(),
            sent_at,
            last_error: watch.last_error.clone(),
            nacks: watch.nacks,
        }
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
    /// The status of `connection` as it is now: its proxy and watches, when each type was
    /// last sent (`sent_at`), and the published state it last computed responses from.
    pub fn of(
        info: Arc<ConnectionInfo>,
        connection: &Connection,
        sent_at: &ByTypeUrl<SystemTime>,
        pushed_from: &Arc<Published>,
        last_push: Option<SystemTime>,
    ) -> Self {
        let watches = connection
            .watches()
            .iter()
            .map(|(url, watch)| {
                let sent_at = sent_at.get(url).copied();
                (type_url_key(url), WatchStatus::of(watch, sent_at))
            })
            .collect();
        ConnectionStatus {
            info,
            proxy: connection.proxy().clone(),
            watches,
            pushed_from: pushed_from.clone(),
            last_push,
        }
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

/// Where a connection's status is read from, when a view asks: the stream's own state, so
/// that streams copy nothing for the views on their requests and pushes (a copy per push was
/// a cache miss per push into memory only the views read).
pub trait StatusSource: Send + Sync {
    fn status(&self) -> ConnectionStatus;
}

/// Every connection this server holds, by connection id.
#[derive(Default)]
pub struct ConnectionRegistry {
    connections: DashMap<String, Arc<dyn StatusSource>>,
}

impl std::fmt::Debug for ConnectionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRegistry")
            .field("connections", &self.connections.len())
            .finish()
    }
}

/// A connection's entry, held by its stream: removed from the registry when dropped,
/// however the stream ends.
pub struct Registration {
    registry: Arc<ConnectionRegistry>,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.connections.remove(&self.id);
    }
}

impl ConnectionRegistry {
    pub fn register(self: &Arc<Self>, id: String, source: Arc<dyn StatusSource>) -> Registration {
        self.connections.insert(id.clone(), source);
        Registration {
            registry: self.clone(),
            id,
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
            .map(|e| e.value().status())
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

    /// A connection whose status is kept by hand.
    impl StatusSource for std::sync::Mutex<ConnectionStatus> {
        fn status(&self) -> ConnectionStatus {
            self.lock().unwrap().clone()
        }
    }

    fn fixed(status: ConnectionStatus) -> Arc<std::sync::Mutex<ConnectionStatus>> {
        Arc::new(std::sync::Mutex::new(status))
    }

    fn register(registry: &Arc<ConnectionRegistry>, status: ConnectionStatus) -> Registration {
        registry.register(status.info.id.clone(), fixed(status))
    }

    #[test]
    fn a_status_is_the_connection_as_it_is_when_asked() {
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
        let info = status("c-1", SystemTime::now()).info;
        let mut sent_at = ByTypeUrl::new();
        sent_at.insert(type_url_key(cds), SystemTime::UNIX_EPOCH);
        let before = ConnectionStatus::of(info.clone(), &connection, &sent_at, &published, None);
        assert_eq!(before.watches.len(), 2);
        let cds_status = before.watches.get(cds).expect("watched");
        assert_eq!(cds_status.sent_nonce, cds_nonce);
        assert_eq!(cds_status.acked_nonce, "");
        assert_eq!(cds_status.sent_at, Some(SystemTime::UNIX_EPOCH));
        assert_eq!(before.watches.get(lds).expect("watched").sent_at, None);
        connection.on_sotw_request(request(cds, &cds_nonce), &ctx);
        let after = ConnectionStatus::of(info, &connection, &sent_at, &published, None);
        assert_eq!(
            after.watches.get(cds).expect("watched").acked_nonce,
            cds_nonce
        );
        let lds_status = after.watches.get(lds).expect("watched");
        assert_eq!(
            (&*lds_status.sent_nonce, &*lds_status.acked_nonce),
            (&*lds_nonce, "")
        );
        assert_eq!(
            before.watches.get(cds).expect("kept").acked_nonce,
            "",
            "a copy"
        );
    }

    #[test]
    fn entries_leave_with_their_registration_and_read_their_source() {
        let registry = Arc::new(ConnectionRegistry::default());
        let source = fixed(status("productpage.default-1", SystemTime::now()));
        let first = registry.register("productpage.default-1".into(), source.clone());
        assert_eq!(registry.len(), 1);
        source.lock().unwrap().last_push = None;
        assert_eq!(registry.connections()[0].last_push, None);
        drop(first);
        assert!(registry.is_empty());
    }

    #[test]
    fn find_matches_a_substring_and_prefers_the_newest_connection() {
        let registry = Arc::new(ConnectionRegistry::default());
        let t0 = SystemTime::now();
        let _old = register(&registry, status("productpage.default-1", t0));
        let _new = register(
            &registry,
            status("productpage.default-2", t0 + Duration::from_secs(1)),
        );
        assert_eq!(
            registry.find("productpage.default").unwrap().info.id,
            "productpage.default-2"
        );
        assert!(registry.find("reviews.default").is_none());
    }

    #[test]
    fn syncz_reports_nonces_per_type() {
        let registry = Arc::new(ConnectionRegistry::default());
        let _r = register(
            &registry,
            status("productpage.default-1", SystemTime::now()),
        );
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
        let _r = register(
            &registry,
            status("productpage.default-1", SystemTime::now()),
        );
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
