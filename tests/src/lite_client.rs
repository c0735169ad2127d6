//! A cheap simulated sidecar for load tests: the xDS protocol behaviour of an Envoy sidecar
//! over real gRPC (one HTTP/2 connection per proxy; state-of-the-world or delta ADS), but
//! decoding only what a sidecar needs to know to subscribe: cluster names and EDS service
//! names, listener names and the RDS names of their HTTP connection managers, and the names of
//! endpoint and route resources. Resource bodies are kept as a 64-bit hash each, so thousands
//! of proxies fit in one process and the load generator stays cheap next to the server.
//!
//! Behaviour, as Envoy's: CDS and LDS first (wildcard), then EDS for the EDS clusters and RDS
//! for the routes the listeners name; every response is ACKed with its nonce (SotW:
//! `version_info` and the names; delta: `response_nonce`, then subscribe/unsubscribe diffs). A
//! resource that does not decode, or has another type than the response, NACKs the response
//! (`error_detail`) and leaves the held config as it was. A broken stream is reopened after a
//! jittered, growing backoff (100 ms to 1 s): SotW resends its subscriptions with the last
//! accepted versions, delta sends `initial_resource_versions` for what it holds.

use anyhow::{Context, Result};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind as ValueKind};
use envoy_types::pb::google::rpc::Status;
use meshpilot_translate::type_urls;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;

/// The minimal protobuf views the client decodes into: only the fields it reads (prost skips
/// the rest); bodies and names stay `Bytes` slices of the received message.
pub mod proto {
    use bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteAny {
        #[prost(bytes = "bytes", tag = "1")]
        pub type_url: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub value: Bytes,
    }

    /// `DiscoveryRequest` with the resource names as shared byte strings: a SotW ACK repeats
    /// every subscribed name (over a thousand for EDS), and copying them showed in profiles.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteDiscoveryRequest {
        #[prost(string, tag = "1")]
        pub version_info: String,
        #[prost(message, optional, tag = "2")]
        pub node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
        #[prost(bytes = "bytes", repeated, tag = "3")]
        pub resource_names: Vec<Bytes>,
        #[prost(string, tag = "4")]
        pub type_url: String,
        #[prost(string, tag = "5")]
        pub response_nonce: String,
        #[prost(message, optional, tag = "6")]
        pub error_detail: Option<envoy_types::pb::google::rpc::Status>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteDiscoveryResponse {
        #[prost(string, tag = "1")]
        pub version_info: String,
        #[prost(message, repeated, tag = "2")]
        pub resources: Vec<LiteAny>,
        #[prost(string, tag = "4")]
        pub type_url: String,
        #[prost(string, tag = "5")]
        pub nonce: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteResource {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(message, optional, tag = "2")]
        pub resource: Option<LiteAny>,
        #[prost(string, tag = "3")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteDeltaDiscoveryResponse {
        #[prost(string, tag = "1")]
        pub system_version_info: String,
        #[prost(message, repeated, tag = "2")]
        pub resources: Vec<LiteResource>,
        #[prost(string, tag = "4")]
        pub type_url: String,
        #[prost(string, tag = "5")]
        pub nonce: String,
        #[prost(string, repeated, tag = "6")]
        pub removed_resources: Vec<String>,
    }

    /// `Cluster`: name, `type` (3 = EDS) and `eds_cluster_config.service_name`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteCluster {
        #[prost(bytes = "bytes", tag = "1")]
        pub name: Bytes,
        #[prost(int32, optional, tag = "2")]
        pub discovery_type: Option<i32>,
        #[prost(message, optional, tag = "3")]
        pub eds_cluster_config: Option<LiteEdsClusterConfig>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteEdsClusterConfig {
        #[prost(bytes = "bytes", tag = "2")]
        pub service_name: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteListener {
        #[prost(bytes = "bytes", tag = "1")]
        pub name: Bytes,
        #[prost(message, repeated, tag = "3")]
        pub filter_chains: Vec<LiteFilterChain>,
        #[prost(message, optional, tag = "25")]
        pub default_filter_chain: Option<LiteFilterChain>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteFilterChain {
        #[prost(message, repeated, tag = "3")]
        pub filters: Vec<LiteFilter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteFilter {
        #[prost(message, optional, tag = "4")]
        pub typed_config: Option<LiteAny>,
    }

    /// `HttpConnectionManager.rds`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteHttpConnectionManager {
        #[prost(message, optional, tag = "3")]
        pub rds: Option<LiteRds>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteRds {
        #[prost(bytes = "bytes", tag = "2")]
        pub route_config_name: Bytes,
    }

    /// `ClusterLoadAssignment.cluster_name` and `RouteConfiguration.name` are both field 1.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteNamed {
        #[prost(bytes = "bytes", tag = "1")]
        pub name: Bytes,
    }

    /// `ClusterLoadAssignment` down to the endpoint addresses.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteLoadAssignment {
        #[prost(bytes = "bytes", tag = "1")]
        pub cluster_name: Bytes,
        #[prost(message, repeated, tag = "2")]
        pub endpoints: Vec<LiteLocalityEndpoints>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteLocalityEndpoints {
        #[prost(message, repeated, tag = "2")]
        pub lb_endpoints: Vec<LiteLbEndpoint>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteLbEndpoint {
        #[prost(message, optional, tag = "1")]
        pub endpoint: Option<LiteEndpoint>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteEndpoint {
        #[prost(message, optional, tag = "1")]
        pub address: Option<LiteAddress>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteAddress {
        #[prost(message, optional, tag = "1")]
        pub socket_address: Option<LiteSocketAddress>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LiteSocketAddress {
        #[prost(string, tag = "2")]
        pub address: String,
    }

    impl LiteLoadAssignment {
        /// Every endpoint's socket address.
        pub fn addresses(&self) -> impl Iterator<Item = &str> {
            self.endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .filter_map(|e| {
                    e.endpoint
                        .as_ref()?
                        .address
                        .as_ref()?
                        .socket_address
                        .as_ref()
                })
                .map(|s| s.address.as_str())
        }
    }
}

use proto::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Sotw,
    Delta,
}

impl Flavor {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "sotw" => Ok(Flavor::Sotw),
            "delta" => Ok(Flavor::Delta),
            other => anyhow::bail!("flavor {other:?}: sotw or delta"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Sotw => "sotw",
            Flavor::Delta => "delta",
        }
    }
}

/// The four resource types a sidecar subscribes to, in subscription order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => type_urls::CLUSTER,
            Kind::Endpoint => type_urls::ENDPOINT,
            Kind::Listener => type_urls::LISTENER,
            Kind::Route => type_urls::ROUTE,
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == type_url)
    }

    /// `cds`, `eds`, `lds`, `rds`, as Istio's metrics label them.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }
}

/// What sidecars tell the scenario driving them.
#[derive(Debug)]
pub enum Event {
    /// CDS, EDS (for every EDS cluster), LDS and RDS (for every route name) all received on
    /// stream number `stream` and ACKed at `at`.
    Complete {
        proxy: usize,
        stream: u32,
        at: Instant,
    },
    Nack {
        proxy: usize,
        kind: Kind,
        detail: String,
    },
    /// Stream number `stream` ended (the sidecar reconnects after a backoff).
    Disconnected {
        proxy: usize,
        stream: u32,
        reason: String,
    },
}

/// Told about every resource whose body changed (or first arrived), right after the response
/// carrying it was ACKed.
pub trait Observer: Send + Sync {
    fn wants(&self, kind: Kind) -> bool;
    fn changed(&self, proxy: usize, kind: Kind, name: &str, body: &Bytes, acked_at: Instant);
}

/// One response as received.
#[derive(Clone, Debug)]
pub struct ResponseRecord {
    pub kind: Kind,
    pub at: Instant,
    pub stream: u32,
    pub bytes: u64,
    pub resources: u32,
    /// `version_info` (SotW) or `system_version_info` (delta).
    pub version: Box<str>,
    pub nonce: Box<str>,
    pub nacked: bool,
}

/// A resource held: its body's hash, and (delta) the version the server gave it.
#[derive(Clone, Debug)]
pub struct Held {
    pub hash: u64,
    pub version: Option<Box<str>>,
}

#[derive(Clone, Debug, Default)]
pub struct TypeState {
    pub held: FastMap<Arc<str>, Held>,
    pub responses: u64,
    pub bytes: u64,
    pub nacks: u64,
    /// Last accepted `version_info` / `system_version_info`, and the last nonce seen.
    pub version: String,
    pub nonce: String,
}

#[derive(Debug)]
pub struct SidecarState {
    /// When the sidecar started connecting for the first time.
    pub started: Instant,
    /// Streams opened so far (the current one is number `stream`).
    pub stream: u32,
    /// When the current stream first held the complete config.
    pub complete_at: Option<Instant>,
    /// When the first stream completed.
    pub first_complete_at: Option<Instant>,
    pub types: [TypeState; 4],
    pub log: Vec<ResponseRecord>,
    pub disconnects: u32,
    pub last_error: Option<String>,
    /// Cluster → the EDS name it subscribes to, for EDS clusters.
    eds_of_cluster: FastMap<Arc<str>, Arc<str>>,
    /// Listener → the RDS names its HTTP connection managers use.
    routes_of_listener: FastMap<Arc<str>, Vec<Arc<str>>>,
    /// Names currently subscribed for EDS and RDS (None before the first subscription), and
    /// the same sorted, as requests carry them.
    eds_subscribed: Option<FastSet<Arc<str>>>,
    rds_subscribed: Option<FastSet<Arc<str>>>,
    eds_names: Vec<Bytes>,
    rds_names: Vec<Bytes>,
    /// Types answered on the current stream.
    seen: [bool; 4],
}

impl SidecarState {
    fn new() -> Self {
        SidecarState {
            started: Instant::now(),
            stream: 0,
            complete_at: None,
            first_complete_at: None,
            types: Default::default(),
            log: Vec::new(),
            disconnects: 0,
            last_error: None,
            eds_of_cluster: FastMap::default(),
            routes_of_listener: FastMap::default(),
            eds_subscribed: None,
            rds_subscribed: None,
            eds_names: Vec::new(),
            rds_names: Vec::new(),
            seen: [false; 4],
        }
    }

    pub fn of(&self, kind: Kind) -> &TypeState {
        &self.types[kind.index()]
    }

    /// Every held resource's hash, by type and name.
    pub fn hashes(&self) -> HashMap<(Kind, Arc<str>), u64> {
        Kind::ALL
            .into_iter()
            .flat_map(|k| {
                self.of(k)
                    .held
                    .iter()
                    .map(move |(n, h)| ((k, n.clone()), h.hash))
            })
            .collect()
    }

    pub fn nacks(&self) -> u64 {
        self.types.iter().map(|t| t.nacks).sum()
    }

    fn wanted_eds(&self) -> FastSet<Arc<str>> {
        self.eds_of_cluster.values().cloned().collect()
    }

    fn wanted_rds(&self) -> FastSet<Arc<str>> {
        self.routes_of_listener
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    fn is_complete(&self) -> bool {
        let holds_all = |kind: Kind, names: &Option<FastSet<Arc<str>>>| {
            let names = names.as_ref().map_or(0, FastSet::len);
            names == 0
                || (self.seen[kind.index()]
                    && self.eds_rds(kind).is_some_and(|n| {
                        n.iter().all(|name| self.of(kind).held.contains_key(name))
                    }))
        };
        self.seen[Kind::Cluster.index()]
            && self.seen[Kind::Listener.index()]
            && !self.of(Kind::Cluster).held.is_empty()
            && !self.of(Kind::Listener).held.is_empty()
            && holds_all(Kind::Endpoint, &self.eds_subscribed)
            && holds_all(Kind::Route, &self.rds_subscribed)
    }

    fn eds_rds(&self, kind: Kind) -> Option<&FastSet<Arc<str>>> {
        match kind {
            Kind::Endpoint => self.eds_subscribed.as_ref(),
            Kind::Route => self.rds_subscribed.as_ref(),
            _ => None,
        }
    }

    fn subscribed_names(&self, kind: Kind) -> Vec<Bytes> {
        match kind {
            Kind::Endpoint => self.eds_names.clone(),
            Kind::Route => self.rds_names.clone(),
            _ => Vec::new(),
        }
    }

    /// Replaces the EDS or RDS subscription.
    fn subscribe(&mut self, kind: Kind, names: FastSet<Arc<str>>) {
        let mut sorted: Vec<Bytes> = names
            .iter()
            .map(|n| Bytes::copy_from_slice(n.as_bytes()))
            .collect();
        sorted.sort_unstable();
        if kind == Kind::Endpoint {
            self.eds_subscribed = Some(names);
            self.eds_names = sorted;
        } else {
            self.rds_subscribed = Some(names);
            self.rds_names = sorted;
        }
    }
}

/// A small multiply-rotate hash: names are short and not adversarial, and SipHash showed up
/// in profiles.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// Names are shared between proxies: a sharded intern table.
fn intern(name: &str) -> Arc<str> {
    const SHARDS: usize = 32;
    static TABLE: OnceLock<Vec<Mutex<FastSet<Arc<str>>>>> = OnceLock::new();
    let table = TABLE.get_or_init(|| (0..SHARDS).map(|_| Mutex::default()).collect());
    let shard = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as usize % SHARDS;
    let mut set = table[shard].lock().expect("intern table");
    if let Some(existing) = set.get(name) {
        return existing.clone();
    }
    let name: Arc<str> = Arc::from(name);
    set.insert(name.clone());
    name
}

fn intern_bytes(name: &Bytes) -> Result<Arc<str>, String> {
    std::str::from_utf8(name)
        .map(intern)
        .map_err(|_| "resource name is not UTF-8".to_string())
}

/// `node.metadata` with string values.
pub fn metadata(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(ValueKind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    }
}

/// Simulated sidecar number `index`: its own IP, namespace (`ns-<index mod namespaces>`),
/// node id and app label.
pub fn sidecar_node(index: usize, namespaces: usize) -> Node {
    let ns = format!("ns-{}", index % namespaces.max(1));
    let ip = format!(
        "10.{}.{}.{}",
        200 + index / 62500,
        (index / 250) % 250,
        index % 250 + 1
    );
    let app = format!("load-{index}");
    Node {
        id: format!("sidecar~{ip}~{app}.{ns}~{ns}.svc.cluster.local"),
        cluster: "simulated".into(),
        metadata: Some(metadata(&[
            ("NAMESPACE", ns.as_str()),
            ("INSTANCE_IPS", ip.as_str()),
            (
                "LABELS",
                &format!("{{\"app\":\"{app}\",\"version\":\"v1\"}}"),
            ),
        ])),
        ..Default::default()
    }
}

#[derive(Clone)]
pub struct SidecarConfig {
    /// `host:port` of the plaintext xDS port.
    pub addr: String,
    pub flavor: Flavor,
    pub index: usize,
    pub node: Node,
    pub events: mpsc::UnboundedSender<Event>,
    pub observer: Option<Arc<dyn Observer>>,
}

/// A running simulated sidecar; dropping it closes its connection.
pub struct Sidecar {
    pub index: usize,
    state: Arc<Mutex<SidecarState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sidecar {
    pub fn spawn(config: SidecarConfig) -> Sidecar {
        let state = Arc::new(Mutex::new(SidecarState::new()));
        let index = config.index;
        let task = tokio::spawn(run(config, state.clone()));
        Sidecar { index, state, task }
    }

    /// Reads the state under its lock (the sidecar's task waits meanwhile).
    pub fn with_state<T>(&self, f: impl FnOnce(&SidecarState) -> T) -> T {
        f(&self.state.lock().expect("sidecar state"))
    }
}

const ADS_SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const ADS_DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// One HTTP/2 connection with Envoy-like generous flow-control windows.
async fn connect(addr: &str) -> Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(16 << 20)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// A jittered delay in [base/2, base], base = 100 ms doubling per failed attempt up to 1 s.
fn backoff(index: usize, attempt: u32) -> Duration {
    let base = (100u64 << attempt.min(4)).min(1000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let seed = xxhash_rust::xxh3::xxh3_64(
        &[index as u64, attempt as u64, nanos]
            .map(u64::to_le_bytes)
            .concat(),
    );
    Duration::from_millis(base / 2 + seed % (base / 2 + 1))
}

async fn run(config: SidecarConfig, state: Arc<Mutex<SidecarState>>) {
    let mut attempt = 0u32;
    loop {
        let mut answered = false;
        let result = match config.flavor {
            Flavor::Sotw => run_sotw(&config, &state, &mut answered).await,
            Flavor::Delta => run_delta(&config, &state, &mut answered).await,
        };
        let reason = match result {
            Ok(()) => "stream ended by the server".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let stream = {
            let mut s = state.lock().expect("sidecar state");
            s.disconnects += 1;
            s.last_error = Some(reason.clone());
            s.stream
        };
        let _ = config.events.send(Event::Disconnected {
            proxy: config.index,
            stream,
            reason,
        });
        attempt = if answered { 0 } else { attempt + 1 };
        tokio::time::sleep(backoff(config.index, attempt)).await;
    }
}

/// A resource decoded as far as the client needs.
struct Decoded {
    name: Arc<str>,
    hash: u64,
    body: Bytes,
    version: Option<Box<str>>,
    /// Clusters: the EDS name; listeners: the RDS names.
    eds: Option<Arc<str>>,
    routes: Vec<Arc<str>>,
}

fn decode_resource(kind: Kind, any: &LiteAny, name: Option<&str>) -> Result<Decoded, String> {
    if any.type_url != kind.type_url().as_bytes() {
        return Err(format!(
            "resource of type {} in a {} response",
            String::from_utf8_lossy(&any.type_url),
            kind.type_url()
        ));
    }
    let broken = |e: prost::DecodeError| format!("decoding {}: {e}", kind.type_url());
    let mut eds = None;
    let mut routes = Vec::new();
    let decoded_name = match kind {
        Kind::Cluster => {
            let c = LiteCluster::decode(any.value.clone()).map_err(broken)?;
            if c.discovery_type == Some(3) {
                let service = c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| c.name.clone());
                eds = Some(intern_bytes(&service)?);
            }
            c.name
        }
        Kind::Listener => {
            let l = LiteListener::decode(any.value.clone()).map_err(broken)?;
            for chain in l.filter_chains.iter().chain(&l.default_filter_chain) {
                for config in chain.filters.iter().filter_map(|f| f.typed_config.as_ref()) {
                    if !config.type_url.ends_with(b".HttpConnectionManager") {
                        continue;
                    }
                    let hcm =
                        LiteHttpConnectionManager::decode(config.value.clone()).map_err(broken)?;
                    if let Some(rds) = hcm.rds {
                        let route = intern_bytes(&rds.route_config_name)?;
                        if !routes.contains(&route) {
                            routes.push(route);
                        }
                    }
                }
            }
            l.name
        }
        Kind::Endpoint | Kind::Route => LiteNamed::decode(any.value.clone()).map_err(broken)?.name,
    };
    let name = match name {
        // Delta names each resource; the body must agree.
        Some(given) => {
            if given.as_bytes() != decoded_name.as_ref() {
                return Err(format!(
                    "resource {given:?} carries a body named {:?}",
                    String::from_utf8_lossy(&decoded_name)
                ));
            }
            intern(given)
        }
        None => intern_bytes(&decoded_name)?,
    };
    Ok(Decoded {
        name,
        hash: xxhash_rust::xxh3::xxh3_64(&any.value),
        body: any.value.clone(),
        version: None,
        eds,
        routes,
    })
}

/// What to do after a response was applied.
#[derive(Default)]
struct Followups {
    /// Changed resources to tell the observer about.
    changed: Vec<(Arc<str>, Bytes)>,
    /// New EDS / RDS subscriptions (added, removed) when they changed.
    eds: Option<(Vec<String>, Vec<String>)>,
    rds: Option<(Vec<String>, Vec<String>)>,
    completed: Option<(u32, Instant)>,
}

/// Applies decoded resources: `replace` drops held resources the response does not carry
/// (SotW wildcard types); `removed` are delta removals.
fn apply(
    state: &mut SidecarState,
    kind: Kind,
    decoded: Vec<Decoded>,
    removed: &[String],
    replace: bool,
    observe: bool,
) -> Followups {
    let mut followups = Followups::default();
    let mut fresh: FastSet<Arc<str>> = FastSet::default();
    for d in decoded {
        match kind {
            Kind::Cluster => {
                if let Some(eds) = d.eds {
                    state.eds_of_cluster.insert(d.name.clone(), eds);
                } else {
                    state.eds_of_cluster.remove(&d.name);
                }
            }
            Kind::Listener => {
                state.routes_of_listener.insert(d.name.clone(), d.routes);
            }
            _ => {}
        }
        let held = &mut state.types[kind.index()].held;
        let changed = held.get(&d.name).is_none_or(|h| h.hash != d.hash);
        if observe && changed {
            followups.changed.push((d.name.clone(), d.body));
        }
        if replace {
            fresh.insert(d.name.clone());
        }
        held.insert(
            d.name,
            Held {
                hash: d.hash,
                version: d.version,
            },
        );
    }
    let mut gone: Vec<Arc<str>> = removed.iter().map(|n| intern(n)).collect();
    if replace {
        gone.extend(
            state.types[kind.index()]
                .held
                .keys()
                .filter(|n| !fresh.contains(*n))
                .cloned(),
        );
    }
    for name in gone {
        state.types[kind.index()].held.remove(&name);
        match kind {
            Kind::Cluster => drop(state.eds_of_cluster.remove(&name)),
            Kind::Listener => drop(state.routes_of_listener.remove(&name)),
            _ => {}
        }
    }
    let diff = |old: &Option<FastSet<Arc<str>>>, new: &FastSet<Arc<str>>| {
        let empty = FastSet::default();
        let old = old.as_ref().unwrap_or(&empty);
        let mut add: Vec<String> = new.difference(old).map(|s| s.to_string()).collect();
        let mut remove: Vec<String> = old.difference(new).map(|s| s.to_string()).collect();
        add.sort();
        remove.sort();
        (add, remove)
    };
    if kind == Kind::Cluster {
        let wanted = state.wanted_eds();
        if state.eds_subscribed.as_ref() != Some(&wanted) {
            followups.eds = Some(diff(&state.eds_subscribed, &wanted));
            state.subscribe(Kind::Endpoint, wanted);
        } else {
            followups.eds = Some((Vec::new(), Vec::new()));
        }
    }
    if kind == Kind::Listener {
        let wanted = state.wanted_rds();
        if state.rds_subscribed.as_ref() != Some(&wanted) {
            followups.rds = Some(diff(&state.rds_subscribed, &wanted));
            state.subscribe(Kind::Route, wanted);
        }
    }
    followups
}

/// Marks `kind` answered on this stream and notes completion.
fn check_complete(state: &mut SidecarState, kind: Kind, followups: &mut Followups) {
    state.seen[kind.index()] = true;
    if state.complete_at.is_none() && state.is_complete() {
        let now = Instant::now();
        state.complete_at = Some(now);
        state.first_complete_at.get_or_insert(now);
        followups.completed = Some((state.stream, now));
    }
}

fn nack_status(detail: &str) -> Option<Status> {
    Some(Status {
        // INVALID_ARGUMENT, as Envoy reports rejected config.
        code: 3,
        message: detail.to_string(),
        details: Vec::new(),
    })
}

fn record(state: &mut SidecarState, record: ResponseRecord) {
    let t = &mut state.types[record.kind.index()];
    t.responses += 1;
    t.bytes += record.bytes;
    if record.nacked {
        t.nacks += 1;
    }
    state.log.push(record);
}

fn notify(config: &SidecarConfig, kind: Kind, followups: &mut Followups) {
    if let Some((stream, at)) = followups.completed {
        let _ = config.events.send(Event::Complete {
            proxy: config.index,
            stream,
            at,
        });
    }
    if let Some(observer) = &config.observer {
        let acked = Instant::now();
        for (name, body) in followups.changed.drain(..) {
            observer.changed(config.index, kind, &name, &body, acked);
        }
    }
}

fn observing(config: &SidecarConfig, kind: Kind) -> bool {
    config.observer.as_ref().is_some_and(|o| o.wants(kind))
}

async fn run_sotw(
    config: &SidecarConfig,
    state: &Mutex<SidecarState>,
    answered: &mut bool,
) -> Result<()> {
    let channel = connect(&config.addr).await?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await.context("ADS channel")?;
    let (tx, rx) = mpsc::unbounded_channel::<LiteDiscoveryRequest>();
    let request =
        |kind: Kind, names: Vec<Bytes>, version: &str, nonce: &str| LiteDiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names: names,
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
    {
        // A new stream repeats every subscription with the last accepted version.
        let mut s = state.lock().expect("sidecar state");
        s.stream += 1;
        s.complete_at = None;
        s.seen = [false; 4];
        let mut first = true;
        for kind in [Kind::Cluster, Kind::Listener, Kind::Endpoint, Kind::Route] {
            if !kind.wildcard() && s.eds_rds(kind).is_none_or(FastSet::is_empty) {
                continue;
            }
            let mut r = request(kind, s.subscribed_names(kind), &s.of(kind).version, "");
            if first {
                r.node = Some(config.node.clone());
                first = false;
            }
            tx.send(r)?;
        }
    }
    let codec = tonic_prost::ProstCodec::<LiteDiscoveryRequest, LiteDiscoveryResponse>::default();
    let mut responses = grpc
        .streaming(
            tonic::Request::new(UnboundedReceiverStream::new(rx)),
            PathAndQuery::from_static(ADS_SOTW),
            codec,
        )
        .await
        .context("opening the ADS stream")?
        .into_inner();
    while let Some(response) = responses.message().await? {
        *answered = true;
        let at = Instant::now();
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            continue;
        };
        let bytes = response
            .resources
            .iter()
            .map(|a| a.value.len() as u64)
            .sum();
        let decoded: Result<Vec<Decoded>, String> = response
            .resources
            .iter()
            .map(|any| decode_resource(kind, any, None))
            .collect();
        let mut followups;
        {
            let mut s = state.lock().expect("sidecar state");
            let stream = s.stream;
            let nacked = decoded.is_err();
            record(
                &mut s,
                ResponseRecord {
                    kind,
                    at,
                    stream,
                    bytes,
                    resources: response.resources.len() as u32,
                    version: response.version_info.as_str().into(),
                    nonce: response.nonce.as_str().into(),
                    nacked,
                },
            );
            s.types[kind.index()].nonce = response.nonce.clone();
            match decoded {
                Err(detail) => {
                    // The previous version stays in effect.
                    let mut nack = request(
                        kind,
                        s.subscribed_names(kind),
                        &s.of(kind).version,
                        &response.nonce,
                    );
                    nack.error_detail = nack_status(&detail);
                    tx.send(nack)?;
                    let _ = config.events.send(Event::Nack {
                        proxy: config.index,
                        kind,
                        detail,
                    });
                    continue;
                }
                Ok(decoded) => {
                    followups = apply(
                        &mut s,
                        kind,
                        decoded,
                        &[],
                        kind.wildcard(),
                        observing(config, kind),
                    );
                    s.types[kind.index()].version = response.version_info.clone();
                    tx.send(request(
                        kind,
                        s.subscribed_names(kind),
                        &response.version_info,
                        &response.nonce,
                    ))?;
                    // After every CDS update Envoy asks for its clusters' endpoints again (they
                    // re-enter warming); after LDS, for routes when the names changed.
                    // (An empty SotW list would mean every resource: never sent.)
                    if followups.eds.is_some()
                        && s.eds_rds(Kind::Endpoint).is_some_and(|n| !n.is_empty())
                    {
                        let eds = s.of(Kind::Endpoint);
                        tx.send(request(
                            Kind::Endpoint,
                            s.subscribed_names(Kind::Endpoint),
                            &eds.version,
                            &eds.nonce,
                        ))?;
                    }
                    if followups.rds.is_some()
                        && s.eds_rds(Kind::Route).is_some_and(|n| !n.is_empty())
                    {
                        let rds = s.of(Kind::Route);
                        tx.send(request(
                            Kind::Route,
                            s.subscribed_names(Kind::Route),
                            &rds.version,
                            &rds.nonce,
                        ))?;
                    }
                    check_complete(&mut s, kind, &mut followups);
                }
            }
        }
        notify(config, kind, &mut followups);
    }
    Ok(())
}

async fn run_delta(
    config: &SidecarConfig,
    state: &Mutex<SidecarState>,
    answered: &mut bool,
) -> Result<()> {
    let channel = connect(&config.addr).await?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await.context("ADS channel")?;
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let subscribe = |kind: Kind, add: Vec<String>, remove: Vec<String>| DeltaDiscoveryRequest {
        type_url: kind.type_url().into(),
        resource_names_subscribe: add,
        resource_names_unsubscribe: remove,
        ..Default::default()
    };
    {
        // A new stream names what the client holds, so the server can skip it.
        let mut s = state.lock().expect("sidecar state");
        s.stream += 1;
        s.complete_at = None;
        s.seen = [false; 4];
        let mut first = true;
        for kind in [Kind::Cluster, Kind::Listener, Kind::Endpoint, Kind::Route] {
            if !kind.wildcard() && s.eds_rds(kind).is_none_or(FastSet::is_empty) {
                continue;
            }
            let names = s
                .subscribed_names(kind)
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect();
            let mut r = subscribe(kind, names, Vec::new());
            r.initial_resource_versions = s
                .of(kind)
                .held
                .iter()
                .filter_map(|(n, h)| Some((n.to_string(), h.version.as_deref()?.to_string())))
                .collect();
            if first {
                r.node = Some(config.node.clone());
                first = false;
            }
            tx.send(r)?;
        }
    }
    let codec =
        tonic_prost::ProstCodec::<DeltaDiscoveryRequest, LiteDeltaDiscoveryResponse>::default();
    let mut responses = grpc
        .streaming(
            tonic::Request::new(UnboundedReceiverStream::new(rx)),
            PathAndQuery::from_static(ADS_DELTA),
            codec,
        )
        .await
        .context("opening the delta ADS stream")?
        .into_inner();
    while let Some(response) = responses.message().await? {
        *answered = true;
        let at = Instant::now();
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            continue;
        };
        let mut bytes = 0;
        let decoded: Result<Vec<Decoded>, String> = response
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref().map(|any| (r, any)))
            .map(|(r, any)| {
                bytes += any.value.len() as u64;
                let mut d = decode_resource(kind, any, Some(&r.name))?;
                d.version = Some(r.version.as_str().into());
                Ok(d)
            })
            .collect();
        let mut followups;
        {
            let mut s = state.lock().expect("sidecar state");
            let stream = s.stream;
            let nacked = decoded.is_err();
            record(
                &mut s,
                ResponseRecord {
                    kind,
                    at,
                    stream,
                    bytes,
                    resources: response.resources.len() as u32,
                    version: response.system_version_info.as_str().into(),
                    nonce: response.nonce.as_str().into(),
                    nacked,
                },
            );
            s.types[kind.index()].nonce = response.nonce.clone();
            let mut reply = DeltaDiscoveryRequest {
                type_url: kind.type_url().into(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            };
            match decoded {
                Err(detail) => {
                    reply.error_detail = nack_status(&detail);
                    tx.send(reply)?;
                    let _ = config.events.send(Event::Nack {
                        proxy: config.index,
                        kind,
                        detail,
                    });
                    continue;
                }
                Ok(decoded) => {
                    followups = apply(
                        &mut s,
                        kind,
                        decoded,
                        &response.removed_resources,
                        false,
                        observing(config, kind),
                    );
                    s.types[kind.index()].version = response.system_version_info.clone();
                    tx.send(reply)?;
                    for (target, diff) in [
                        (Kind::Endpoint, followups.eds.take()),
                        (Kind::Route, followups.rds.take()),
                    ] {
                        if let Some((add, remove)) = diff
                            && !(add.is_empty() && remove.is_empty())
                        {
                            tx.send(subscribe(target, add, remove))?;
                        }
                    }
                    check_complete(&mut s, kind, &mut followups);
                }
            }
        }
        notify(config, kind, &mut followups);
    }
    Ok(())
}

/// A client that opens an ADS stream, asks for clusters, and then never reads: its connection
/// stays open with small flow-control windows that fill up.
pub struct StalledClient {
    _channel: tonic::transport::Channel,
    _requests: mpsc::UnboundedSender<LiteDiscoveryRequest>,
    _responses: tonic::codec::Streaming<LiteDiscoveryResponse>,
}

impl StalledClient {
    pub async fn open(addr: &str, node: Node) -> Result<StalledClient> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(10))
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(LiteDiscoveryRequest {
            type_url: Kind::Cluster.type_url().into(),
            node: Some(node),
            ..Default::default()
        })?;
        let codec =
            tonic_prost::ProstCodec::<LiteDiscoveryRequest, LiteDiscoveryResponse>::default();
        let responses = grpc
            .streaming(
                tonic::Request::new(UnboundedReceiverStream::new(rx)),
                PathAndQuery::from_static(ADS_SOTW),
                codec,
            )
            .await?
            .into_inner();
        Ok(StalledClient {
            _channel: channel,
            _requests: tx,
            _responses: responses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
    };
    use envoy_types::util::pack_any;

    fn lite(any: envoy_types::pb::google::protobuf::Any) -> LiteAny {
        LiteAny {
            type_url: any.type_url.into(),
            value: Bytes::from(any.value),
        }
    }

    fn mk_eds_cluster(name: &str, service_name: &str) -> LiteAny {
        lite(pack_any(Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                service_name: service_name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    fn mk_listener(name: &str, route: &str) -> LiteAny {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        lite(pack_any(Listener {
            name: name.into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    #[test]
    fn clusters_yield_their_eds_names_and_listeners_their_routes() {
        let c = decode_resource(Kind::Cluster, &mk_eds_cluster("a", ""), None).unwrap();
        assert_eq!((&*c.name, c.eds.as_deref()), ("a", Some("a")));
        let c = decode_resource(Kind::Cluster, &mk_eds_cluster("b", "svc-b"), None).unwrap();
        assert_eq!(c.eds.as_deref(), Some("svc-b"));
        let static_cluster = lite(pack_any(Cluster {
            name: "static".into(),
            ..Default::default()
        }));
        assert!(
            decode_resource(Kind::Cluster, &static_cluster, None)
                .unwrap()
                .eds
                .is_none()
        );
        let l =
            decode_resource(Kind::Listener, &mk_listener("0.0.0.0_8080", "8080"), None).unwrap();
        assert_eq!(l.routes, vec![intern("8080")]);
    }

    #[test]
    fn broken_or_mistyped_resources_are_rejected() {
        let mut broken = mk_eds_cluster("a", "");
        broken.value = Bytes::from_static(&[0x0a, 0x05, b'a']);
        assert!(decode_resource(Kind::Cluster, &broken, None).is_err());
        let listener = mk_listener("l", "r");
        assert!(decode_resource(Kind::Cluster, &listener, None).is_err());
        // A delta resource whose name disagrees with its body.
        assert!(decode_resource(Kind::Listener, &listener, Some("other")).is_err());
    }

    #[test]
    fn complete_needs_every_subscribed_endpoint_and_route() {
        let mut state = SidecarState::new();
        let clusters = vec![
            decode_resource(Kind::Cluster, &mk_eds_cluster("a", ""), None).unwrap(),
            decode_resource(Kind::Cluster, &mk_eds_cluster("b", ""), None).unwrap(),
        ];
        let f = apply(&mut state, Kind::Cluster, clusters, &[], true, false);
        assert_eq!(f.eds, Some((vec!["a".into(), "b".into()], vec![])));
        let mut f = Followups::default();
        check_complete(&mut state, Kind::Cluster, &mut f);
        let listeners =
            vec![decode_resource(Kind::Listener, &mk_listener("l", "r"), None).unwrap()];
        apply(&mut state, Kind::Listener, listeners, &[], true, false);
        check_complete(&mut state, Kind::Listener, &mut f);
        assert!(!state.is_complete());
        let named = |name: &str| LiteAny {
            type_url: Kind::Endpoint.type_url().into(),
            value: LiteNamed {
                name: Bytes::copy_from_slice(name.as_bytes()),
            }
            .encode_to_vec()
            .into(),
        };
        let eds = vec![decode_resource(Kind::Endpoint, &named("a"), None).unwrap()];
        apply(&mut state, Kind::Endpoint, eds, &[], false, false);
        check_complete(&mut state, Kind::Endpoint, &mut f);
        assert!(!state.is_complete(), "b and the route are missing");
        let eds = vec![decode_resource(Kind::Endpoint, &named("b"), None).unwrap()];
        apply(&mut state, Kind::Endpoint, eds, &[], false, false);
        let mut route = named("r");
        route.type_url = Kind::Route.type_url().into();
        let rds = vec![decode_resource(Kind::Route, &route, None).unwrap()];
        apply(&mut state, Kind::Route, rds, &[], false, false);
        check_complete(&mut state, Kind::Route, &mut f);
        assert!(state.is_complete());
        assert!(f.completed.is_some());
        // A SotW CDS update without cluster b drops it and its EDS subscription.
        let clusters =
            vec![decode_resource(Kind::Cluster, &mk_eds_cluster("a", ""), None).unwrap()];
        let f = apply(&mut state, Kind::Cluster, clusters, &[], true, false);
        assert_eq!(f.eds, Some((vec![], vec!["b".into()])));
        assert_eq!(state.of(Kind::Cluster).held.len(), 1);
    }

    #[test]
    fn backoff_stays_between_50_ms_and_1_s() {
        for attempt in 0..10 {
            let d = backoff(7, attempt);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
    }
}
