//! A cheap simulated sidecar for load tests: the xDS protocol behaviour of an Envoy sidecar
//! over real gRPC (one HTTP/2 connection per proxy; state-of-the-world or delta ADS), decoding
//! only what a sidecar needs to subscribe: cluster names and EDS service names, listener names
//! and the RDS names of their HTTP connection managers, and endpoint and route names. Each
//! held resource is a 64-bit name key and a 64-bit hash of its bytes, and subscription name
//! lists are shared between sidecars, as are the decode and the held table of a response sent
//! identically to many (a cold connect's), so thousands fit in one process and the load
//! generator stays cheap next to the server it measures.
//!
//! Behaviour, as Envoy's: CDS and LDS first (wildcard), then EDS for the EDS clusters and RDS
//! for the routes the listeners name; every response is ACKed with its nonce (SotW:
//! `version_info` and the names; delta: `response_nonce`, then subscribe/unsubscribe diffs). A
//! resource that does not decode, or has another type than the response, NACKs the response
//! (`error_detail`) and leaves the held config as it was. A broken stream is reopened after a
//! jittered, growing backoff (100 ms to 1 s): SotW resends its subscriptions with the last
//! accepted versions, delta sends `initial_resource_versions` for what it holds.

mod grpc;
pub mod proto;
mod write_batch;

use crate::xds_client::metadata;
use anyhow::Result;
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use meshpilot_translate::type_urls;
use meshpilot_translate::vhds::ROUTE_CONFIG_HEADER;
use prost::Message;
use proto::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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

/// The resource types a sidecar subscribes to: ADS's four, and virtual hosts over VHDS when a
/// route configuration names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    VirtualHost,
}

const KINDS: usize = 5;

impl Kind {
    pub const ALL: [Kind; KINDS] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
        Kind::VirtualHost,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => type_urls::CLUSTER,
            Kind::Endpoint => type_urls::ENDPOINT,
            Kind::Listener => type_urls::LISTENER,
            Kind::Route => type_urls::ROUTE,
            Kind::VirtualHost => type_urls::VIRTUAL_HOST,
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == type_url)
    }

    /// `cds`, `eds`, `lds`, `rds`, `vhds`, as meshpilot's metrics label them.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
            Kind::VirtualHost => "vhds",
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

/// Told about every resource whose bytes changed (or first arrived), right after the response
/// carrying it was ACKed.
pub trait Observer: Send + Sync {
    fn wants(&self, kind: Kind) -> bool;
    /// `body_hash` is [`body_hash`] of `body`, already computed.
    fn changed(
        &self,
        proxy: usize,
        kind: Kind,
        name: &str,
        body: &Bytes,
        body_hash: u64,
        acked_at: Instant,
    );
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

/// For maps keyed by [`name_key`]s, which are hashes already.
#[derive(Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u64(&mut self, key: u64) {
        self.0 ^= key;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// A resource name as a number.
pub fn name_key(name: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name)
}

/// A resource body's hash, to notice changes.
pub fn body_hash(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(body, 0x5eed)
}

const SHARDS: usize = 32;

fn shards<T: Default>() -> Vec<Mutex<T>> {
    (0..SHARDS).map(|_| Mutex::default()).collect()
}

/// The names sidecars must be able to send back (subscriptions; everything held in delta),
/// shared by every sidecar of the process.
fn register(key: u64, name: &[u8]) {
    let mut shard = names()[key as usize % SHARDS]
        .lock()
        .expect("name registry");
    shard
        .entry(key)
        .or_insert_with(|| Bytes::copy_from_slice(name));
}

/// Runs `use_name` on a registered name in place (no reference count taken).
fn with_registered<T>(key: u64, use_name: impl FnOnce(&[u8]) -> T) -> Option<T> {
    names()[key as usize % SHARDS]
        .lock()
        .expect("name registry")
        .get(&key)
        .map(|name| use_name(name))
}

fn registered(key: u64) -> Option<Bytes> {
    names()[key as usize % SHARDS]
        .lock()
        .expect("name registry")
        .get(&key)
        .cloned()
}

fn names() -> &'static Vec<Mutex<KeyMap<Bytes>>> {
    static NAMES: OnceLock<Vec<Mutex<KeyMap<Bytes>>>> = OnceLock::new();
    NAMES.get_or_init(shards)
}

/// A set of subscribed names, sorted by key; equal sets are one shared list.
#[derive(Debug)]
pub struct NameList {
    id: u64,
    keys: Vec<u64>,
    names: Vec<Bytes>,
    /// `names` as a request's `resource_names` field, encoded once for every request.
    wire: Bytes,
}

/// The identity of a set of keys, given sorted and without duplicates.
fn key_set_id(keys: &[u64]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(
        &keys
            .iter()
            .flat_map(|k| k.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

fn name_list(mut keys: Vec<u64>) -> Arc<NameList> {
    static LISTS: OnceLock<Mutex<KeyMap<Arc<NameList>>>> = OnceLock::new();
    keys.sort_unstable();
    keys.dedup();
    let id = key_set_id(&keys);
    let mut lists = LISTS
        .get_or_init(Mutex::default)
        .lock()
        .expect("name lists");
    lists
        .entry(id)
        .or_insert_with(|| {
            let names: Vec<Bytes> = keys
                .iter()
                .map(|k| registered(*k).expect("subscribed names are registered"))
                .collect();
            let wire = proto::encode_resource_names(&names);
            Arc::new(NameList {
                id,
                keys,
                names,
                wire,
            })
        })
        .clone()
}

/// Names in `new` but not `old`, and in `old` but not `new`.
fn list_diff(old: Option<&NameList>, new: &NameList) -> (Vec<Bytes>, Vec<Bytes>) {
    let old_keys: &[u64] = old.map_or(&[], |o| &o.keys);
    let added = new
        .keys
        .iter()
        .zip(&new.names)
        .filter(|(k, _)| old_keys.binary_search(k).is_err())
        .map(|(_, n)| n.clone())
        .collect();
    let removed = old
        .map(|o| {
            o.keys
                .iter()
                .zip(&o.names)
                .filter(|(k, _)| new.keys.binary_search(k).is_err())
                .map(|(_, n)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    (added, removed)
}

/// One resource a sidecar holds.
#[derive(Clone, Debug)]
pub struct Held {
    pub hash: u64,
    /// Delta: the version the server gave it.
    version: Option<HeldVersion>,
}

#[derive(Debug, Default)]
pub struct TypeState {
    /// Name key → every resource held (one map: an update touches each resource once).
    /// Shared, copy on write, between sidecars that took the same response (see
    /// [`SharedResponse`]).
    pub held: Arc<KeyMap<Held>>,
    /// The [`key_set_id`] of `held`'s keys while it is a shared response's table untouched.
    held_id: Option<u64>,
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
    pub types: [TypeState; KINDS],
    pub log: Vec<ResponseRecord>,
    pub disconnects: u32,
    pub last_error: Option<String>,
    /// Cluster key → key of the EDS name it subscribes to, for EDS clusters.
    eds_of_cluster: Arc<KeyMap<u64>>,
    /// Listener key → keys of the RDS names its HTTP connection managers use.
    routes_of_listener: Arc<KeyMap<Vec<u64>>>,
    /// Current EDS and RDS subscriptions (None before the first).
    eds: Option<Arc<NameList>>,
    rds: Option<Arc<NameList>>,
    /// Types answered on the current stream.
    seen: [bool; KINDS],
    /// Route configurations (key → name) that name VHDS as their virtual hosts' source.
    vhds_routes: KeyMap<Bytes>,
    /// Of those, the ones with a VHDS stream open alongside the current ADS stream, and the
    /// ones whose stream has answered.
    vhds_open: KeyMap<()>,
    vhds_answered: KeyMap<()>,
}

impl SidecarState {
    fn new() -> Self {
        SidecarState {
            started: Instant::now(),
            stream: 0,
            complete_at: None,
            types: Default::default(),
            log: Vec::new(),
            disconnects: 0,
            last_error: None,
            eds_of_cluster: Arc::default(),
            routes_of_listener: Arc::default(),
            eds: None,
            rds: None,
            seen: [false; KINDS],
            vhds_routes: KeyMap::default(),
            vhds_open: KeyMap::default(),
            vhds_answered: KeyMap::default(),
        }
    }

    pub fn of(&self, kind: Kind) -> &TypeState {
        &self.types[kind.index()]
    }

    /// Gives this sidecar its own copy of every table it shares with others (sidecars sent the
    /// same response share one until either changes it), as if it were a process of its own.
    /// Benchmarks call this before their measured window: otherwise the first change each
    /// sidecar takes there pays for a copy a real Envoy never makes.
    pub fn own_tables(&mut self) {
        for t in &mut self.types {
            Arc::make_mut(&mut t.held);
        }
    }

    /// Every held resource as (type and name key, body hash), sorted.
    pub fn held_hashes(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = Kind::ALL
            .into_iter()
            .flat_map(|k| {
                let salt = (k.index() as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                self.of(k).held.iter().map(move |(n, h)| (n ^ salt, h.hash))
            })
            .collect();
        all.sort_unstable();
        all
    }

    pub fn nacks(&self) -> u64 {
        self.types.iter().map(|t| t.nacks).sum()
    }

    fn list(&self, kind: Kind) -> Option<&Arc<NameList>> {
        match kind {
            Kind::Endpoint => self.eds.as_ref(),
            Kind::Route => self.rds.as_ref(),
            _ => None,
        }
    }

    /// The names subscribed for `kind` (none for the wildcard types).
    /// The encoded names to put in a SotW request of `kind` (none for the wildcard types).
    fn request_names(&self, kind: Kind) -> Bytes {
        self.list(kind).map(|l| l.wire.clone()).unwrap_or_default()
    }

    fn subscribed(&self, kind: Kind) -> bool {
        self.list(kind).is_some_and(|l| !l.keys.is_empty())
    }

    fn is_complete(&self) -> bool {
        let holds_all = |kind: Kind| {
            let Some(list) = self.list(kind).filter(|l| !l.keys.is_empty()) else {
                return true;
            };
            let t = self.of(kind);
            self.seen[kind.index()]
                && (t.held_id == Some(list.id) || list.keys.iter().all(|k| t.held.contains_key(k)))
        };
        self.seen[Kind::Cluster.index()]
            && self.seen[Kind::Listener.index()]
            && !self.of(Kind::Cluster).held.is_empty()
            && !self.of(Kind::Listener).held.is_empty()
            && holds_all(Kind::Endpoint)
            && holds_all(Kind::Route)
            && self
                .vhds_routes
                .keys()
                .all(|k| self.vhds_answered.contains_key(k))
    }

    /// Starts a new ADS stream: nothing answered on it yet, and no VHDS streams beside it.
    fn new_stream(&mut self) {
        self.stream += 1;
        self.complete_at = None;
        self.seen = [false; KINDS];
        self.vhds_open.clear();
        self.vhds_answered.clear();
    }

    /// Route configurations naming VHDS without a VHDS stream yet: marked open.
    fn take_unopened_vhds(&mut self) -> Vec<(u64, Bytes)> {
        let unopened: Vec<(u64, Bytes)> = self
            .vhds_routes
            .iter()
            .filter(|(k, _)| !self.vhds_open.contains_key(*k))
            .map(|(k, name)| (*k, name.clone()))
            .collect();
        for (key, _) in &unopened {
            self.vhds_open.insert(*key, ());
        }
        unopened
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

    /// See [`SidecarState::own_tables`].
    pub fn own_tables(&self) {
        self.state.lock().expect("sidecar state").own_tables();
    }
}

const ADS_SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const ADS_DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// HTTP/2 windows of the simulated sidecars: Envoy's defaults are far larger (256 MiB), but
/// thousands of sidecars in one process must bound what can pile up unread.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 2 << 20;

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

/// A delta resource's version as the server sent it. meshpilot's are 16 lowercase hex digits,
/// kept as their value: an EDS push carries hundreds, and a string each was a large share of
/// the load generator's allocations under delta churn. Anything else is kept as text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HeldVersion {
    Hex(u64),
    Text(Box<str>),
}

impl HeldVersion {
    fn parse(bytes: &[u8]) -> HeldVersion {
        /// Lowercase hex digit values; 0xff for every other byte.
        const DIGITS: [u8; 256] = {
            let mut table = [0xff; 256];
            let mut i = 0;
            while i < 16 {
                table[b"0123456789abcdef"[i] as usize] = i as u8;
                i += 1;
            }
            table
        };
        if bytes.len() == 16 {
            let mut value = 0u64;
            let mut invalid = 0u8;
            for &b in bytes {
                let digit = DIGITS[b as usize];
                invalid |= digit & 0xf0;
                value = value << 4 | u64::from(digit & 0x0f);
            }
            if invalid == 0 {
                return HeldVersion::Hex(value);
            }
        }
        HeldVersion::Text(String::from_utf8_lossy(bytes).into())
    }

    /// Runs `use_bytes` on the version exactly as it was sent.
    fn with_bytes<T>(&self, use_bytes: impl FnOnce(&[u8]) -> T) -> T {
        match self {
            HeldVersion::Hex(value) => {
                let mut text = [0u8; 16];
                for (i, digit) in text.iter_mut().enumerate() {
                    let nibble = (value >> (60 - 4 * i)) & 0xf;
                    *digit = b"0123456789abcdef"[nibble as usize];
                }
                use_bytes(&text)
            }
            HeldVersion::Text(text) => use_bytes(text.as_bytes()),
        }
    }
}

/// A resource decoded as far as the client needs.
#[derive(Clone, Debug)]
struct Decoded {
    key: u64,
    name: Bytes,
    hash: u64,
    body: Bytes,
    version: Option<HeldVersion>,
    /// Clusters: the EDS name's key; listeners: the RDS names' keys.
    eds: Option<u64>,
    routes: Vec<u64>,
    /// Route configurations: they name VHDS.
    vhds: bool,
}

/// How a response carries its resources.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// SotW: each an `Any`.
    Any,
    /// Delta: each a `Resource` naming it and its version around the `Any`.
    Resource,
}

/// Decodes every resource of a response in one pass; also returns the bytes of their bodies.
/// One undecodable resource fails them all, as Envoy rejects the whole update.
fn decode_all(kind: Kind, raw: &[Bytes], wire: Wire) -> (u64, Result<Vec<Decoded>, String>) {
    let mut bytes = 0;
    let mut decoded = Vec::with_capacity(raw.len());
    for resource in raw {
        let one = match wire {
            Wire::Any => LiteAny::decode(resource.clone())
                .map_err(|e| format!("decoding an Any: {e}"))
                .and_then(|any| {
                    bytes += any.value.len() as u64;
                    decode_resource(kind, &any, None)
                }),
            Wire::Resource => {
                let r = match LiteResource::decode(resource.clone()) {
                    Ok(r) => r,
                    Err(e) => return (bytes, Err(format!("decoding a Resource: {e}"))),
                };
                // A Resource without a body (a TTL heartbeat) changes nothing here.
                let Some(any) = r.resource.as_ref() else {
                    continue;
                };
                bytes += any.value.len() as u64;
                decode_resource(kind, any, Some(&r.name)).map(|mut d| {
                    d.version = Some(HeldVersion::parse(&r.version));
                    d
                })
            }
        };
        match one {
            Ok(d) => decoded.push(d),
            Err(detail) => return (bytes, Err(detail)),
        }
    }
    (bytes, Ok(decoded))
}

/// What a resource body says, as far as the client needs.
#[derive(Debug)]
struct Facts {
    key: u64,
    /// A copy: a slice would keep the whole received chunk it came in alive.
    name: Bytes,
    eds: Option<u64>,
    routes: Vec<u64>,
    vhds: bool,
}

/// Bodies a thread remembers before it starts over (bounds the memo in long runs).
const FACTS_PER_THREAD: usize = 1 << 18;

/// Thousands of simulated sidecars are sent the same bodies, and decoding them is the same
/// work each time: each distinct body (by type and [`body_hash`]) is decoded once per runtime
/// thread. Per thread, not per process: a shared memo's lock and reference counts were cache
/// lines both cores wrote for every resource of a cold connect.
fn with_facts<T>(
    kind: Kind,
    body: &Bytes,
    hash: u64,
    use_facts: impl FnOnce(&Facts) -> T,
) -> Result<T, String> {
    thread_local! {
        static MEMO: RefCell<KeyMap<Result<Facts, String>>> = RefCell::default();
    }
    let key = hash ^ (kind.index() as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    MEMO.with_borrow_mut(|memo| {
        if memo.len() >= FACTS_PER_THREAD && !memo.contains_key(&key) {
            memo.clear();
        }
        match memo.entry(key).or_insert_with(|| decode_facts(kind, body)) {
            Ok(facts) => Ok(use_facts(facts)),
            Err(detail) => Err(detail.clone()),
        }
    })
}

fn decode_facts(kind: Kind, body: &Bytes) -> Result<Facts, String> {
    let broken = |e: prost::DecodeError| format!("decoding {}: {e}", kind.type_url());
    let mut eds = None;
    let mut routes = Vec::new();
    let mut vhds = false;
    let name = match kind {
        Kind::Cluster => {
            let c = LiteCluster::decode(body.clone()).map_err(broken)?;
            if c.discovery_type == Some(3) {
                let service = c
                    .eds_cluster_config
                    .map(|e| e.service_name)
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| c.name.clone());
                let key = name_key(&service);
                register(key, &service);
                eds = Some(key);
            }
            c.name
        }
        Kind::Listener => {
            let l = LiteListener::decode(body.clone()).map_err(broken)?;
            for chain in l.filter_chains.iter().chain(&l.default_filter_chain) {
                for config in chain.filters.iter().filter_map(|f| f.typed_config.as_ref()) {
                    if !config.type_url.ends_with(b".HttpConnectionManager") {
                        continue;
                    }
                    let hcm =
                        LiteHttpConnectionManager::decode(config.value.clone()).map_err(broken)?;
                    if let Some(rds) = hcm.rds {
                        let key = name_key(&rds.route_config_name);
                        register(key, &rds.route_config_name);
                        if !routes.contains(&key) {
                            routes.push(key);
                        }
                    }
                }
            }
            l.name
        }
        Kind::Route => {
            let r = LiteRouteConfiguration::decode(body.clone()).map_err(broken)?;
            vhds = r.vhds.is_some();
            r.name
        }
        Kind::Endpoint | Kind::VirtualHost => LiteNamed::decode(body.clone()).map_err(broken)?.name,
    };
    if std::str::from_utf8(&name).is_err() {
        return Err("a resource name is not UTF-8".into());
    }
    Ok(Facts {
        key: name_key(&name),
        name: Bytes::copy_from_slice(&name),
        eds,
        routes,
        vhds,
    })
}

fn decode_resource(kind: Kind, any: &LiteAny, name: Option<&Bytes>) -> Result<Decoded, String> {
    if any.type_url != kind.type_url().as_bytes() {
        return Err(format!(
            "resource of type {} in a {} response",
            String::from_utf8_lossy(&any.type_url),
            kind.type_url()
        ));
    }
    let hash = body_hash(&any.value);
    with_facts(kind, &any.value, hash, |facts| {
        if let Some(given) = name
            && *given != facts.name
        {
            // Delta names each resource; the body must agree.
            return Err(format!(
                "resource {:?} carries a body named {:?}",
                String::from_utf8_lossy(given),
                String::from_utf8_lossy(&facts.name)
            ));
        }
        Ok(Decoded {
            key: facts.key,
            name: facts.name.clone(),
            hash,
            body: any.value.clone(),
            version: None,
            eds: facts.eds,
            routes: facts.routes.clone(),
            vhds: facts.vhds,
        })
    })?
}

/// What to do after a response was applied.
#[derive(Default)]
struct Followups {
    /// Changed resources (name, body, body hash) to tell the observer about.
    changed: Vec<(Bytes, Bytes, u64)>,
    /// After CDS / LDS: the EDS / RDS names added and removed (both empty: unchanged).
    eds: Option<(Vec<Bytes>, Vec<Bytes>)>,
    rds: Option<(Vec<Bytes>, Vec<Bytes>)>,
    completed: Option<(u32, Instant)>,
}

/// Applies decoded resources: `replace` drops held resources the response does not carry
/// (SotW wildcard types); `removed` are delta removals.
fn apply(
    state: &mut SidecarState,
    kind: Kind,
    decoded: &[Decoded],
    removed: &[Bytes],
    replace: bool,
    observe: bool,
) -> Followups {
    let mut followups = Followups::default();
    state.types[kind.index()].held_id = None;
    let old = if replace {
        let fresh = KeyMap::with_capacity_and_hasher(decoded.len(), Default::default());
        match kind {
            Kind::Cluster => state.eds_of_cluster = Arc::default(),
            Kind::Listener => state.routes_of_listener = Arc::default(),
            _ => {}
        }
        Some(std::mem::replace(
            &mut state.types[kind.index()].held,
            Arc::new(fresh),
        ))
    } else {
        None
    };
    for d in decoded {
        if kind == Kind::Cluster {
            let eds_of_cluster = Arc::make_mut(&mut state.eds_of_cluster);
            if let Some(eds) = d.eds {
                eds_of_cluster.insert(d.key, eds);
            } else {
                eds_of_cluster.remove(&d.key);
            }
        }
        if kind == Kind::Listener {
            Arc::make_mut(&mut state.routes_of_listener).insert(d.key, d.routes.clone());
        }
        if kind == Kind::Route {
            if d.vhds {
                state.vhds_routes.insert(d.key, d.name.clone());
            } else {
                state.vhds_routes.remove(&d.key);
            }
        }
        let t = &mut state.types[kind.index()];
        let delta = d.version.is_some();
        let held = Held {
            hash: d.hash,
            version: d.version.clone(),
        };
        let previous = Arc::make_mut(&mut t.held)
            .insert(d.key, held)
            .map(|h| h.hash);
        let previous =
            previous.or_else(|| old.as_ref().and_then(|o| o.get(&d.key).map(|h| h.hash)));
        if previous.is_none() && delta {
            // Delta only: a reconnect names every held resource. Held before means
            // registered before (the registry only grows).
            register(d.key, &d.name);
        }
        if observe && previous != Some(d.hash) {
            followups
                .changed
                .push((d.name.clone(), d.body.clone(), d.hash));
        }
    }
    for name in removed {
        let key = name_key(name);
        let t = &mut state.types[kind.index()];
        Arc::make_mut(&mut t.held).remove(&key);
        if kind == Kind::Cluster {
            Arc::make_mut(&mut state.eds_of_cluster).remove(&key);
        }
        if kind == Kind::Listener {
            Arc::make_mut(&mut state.routes_of_listener).remove(&key);
        }
        if kind == Kind::Route {
            state.vhds_routes.remove(&key);
        }
    }
    if kind == Kind::Cluster {
        resubscribe_eds(state, eds_names(&state.eds_of_cluster), &mut followups);
    }
    if kind == Kind::Listener {
        resubscribe_rds(state, rds_names(&state.routes_of_listener), &mut followups);
    }
    followups
}

fn eds_names(eds_of_cluster: &KeyMap<u64>) -> Arc<NameList> {
    name_list(eds_of_cluster.values().copied().collect())
}

fn rds_names(routes_of_listener: &KeyMap<Vec<u64>>) -> Arc<NameList> {
    name_list(routes_of_listener.values().flatten().copied().collect())
}

/// After CDS: the EDS names the clusters now want, and the difference to tell the server.
fn resubscribe_eds(state: &mut SidecarState, wanted: Arc<NameList>, followups: &mut Followups) {
    followups.eds = Some(match &state.eds {
        Some(current) if current.id == wanted.id => Default::default(),
        current => list_diff(current.as_deref(), &wanted),
    });
    state.eds = Some(wanted);
}

/// After LDS: the RDS names the listeners now want, and the difference.
fn resubscribe_rds(state: &mut SidecarState, wanted: Arc<NameList>, followups: &mut Followups) {
    followups.rds = Some(match &state.rds {
        Some(current) if current.id == wanted.id => Default::default(),
        current => list_diff(current.as_deref(), &wanted),
    });
    state.rds = Some(wanted);
}

/// A response's resources, decoded once for every sidecar sent the same ones: a cold connect
/// sends thousands of sidecars identical responses of a thousand resources each.
struct SharedResponse {
    kind: Kind,
    /// Bytes of the resource bodies.
    bytes: u64,
    decoded: Vec<Decoded>,
    /// Some route configuration in it names VHDS.
    names_vhds: bool,
    /// What a sidecar holding nothing of the type holds after taking the response (built on
    /// first use: a response taken only into a non-empty table never needs it).
    tables: OnceLock<SharedTables>,
}

struct SharedTables {
    held: Arc<KeyMap<Held>>,
    held_id: u64,
    eds_of_cluster: Arc<KeyMap<u64>>,
    eds: Arc<NameList>,
    routes_of_listener: Arc<KeyMap<Vec<u64>>>,
    rds: Arc<NameList>,
}

/// Distinct responses a thread remembers before it starts over.
const SHARED_RESPONSES_PER_THREAD: usize = 64;

/// Decodes a response's resources, or finds them decoded for an identical response (same
/// type, same resource bytes, delta versions included, in the same order). Errors (with the
/// bytes of the bodies read until then) are not remembered.
fn shared_response(
    kind: Kind,
    raw: &[Bytes],
    wire: Wire,
) -> Result<Arc<SharedResponse>, (u64, String)> {
    thread_local! {
        static MEMO: RefCell<KeyMap<Arc<SharedResponse>>> = RefCell::default();
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    for resource in raw {
        hasher.update(&(resource.len() as u64).to_le_bytes());
        hasher.update(resource);
    }
    let salt = (kind.index() as u64 * 2 + u64::from(wire == Wire::Resource) + 1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let key = hasher.digest() ^ salt;
    if let Some(known) = MEMO.with_borrow(|memo| memo.get(&key).cloned()) {
        return Ok(known);
    }
    let (bytes, decoded) = decode_all(kind, raw, wire);
    let decoded = decoded.map_err(|detail| (bytes, detail))?;
    let shared = Arc::new(SharedResponse {
        kind,
        bytes,
        names_vhds: decoded.iter().any(|d| d.vhds),
        decoded,
        tables: OnceLock::new(),
    });
    MEMO.with_borrow_mut(|memo| {
        if memo.len() >= SHARED_RESPONSES_PER_THREAD {
            memo.clear();
        }
        memo.insert(key, shared.clone());
    });
    Ok(shared)
}

impl SharedResponse {
    fn tables(&self) -> &SharedTables {
        self.tables.get_or_init(|| {
            let held: KeyMap<Held> = self
                .decoded
                .iter()
                .map(|d| {
                    if d.version.is_some() {
                        // Delta: held for the first time, so registered for a reconnect.
                        register(d.key, &d.name);
                    }
                    let held = Held {
                        hash: d.hash,
                        version: d.version.clone(),
                    };
                    (d.key, held)
                })
                .collect();
            let mut keys: Vec<u64> = held.keys().copied().collect();
            keys.sort_unstable();
            let of_kind = |kind: Kind| self.decoded.iter().filter(move |_| self.kind == kind);
            let eds_of_cluster: KeyMap<u64> = of_kind(Kind::Cluster)
                .filter_map(|d| Some((d.key, d.eds?)))
                .collect();
            let routes_of_listener: KeyMap<Vec<u64>> = of_kind(Kind::Listener)
                .map(|d| (d.key, d.routes.clone()))
                .collect();
            SharedTables {
                held: Arc::new(held),
                held_id: key_set_id(&keys),
                eds: eds_names(&eds_of_cluster),
                eds_of_cluster: Arc::new(eds_of_cluster),
                rds: rds_names(&routes_of_listener),
                routes_of_listener: Arc::new(routes_of_listener),
            }
        })
    }

    /// Whether taking it can share its tables: it replaces what is held (a wildcard type, or
    /// a response naming exactly the names held, as a SotW reconnect's EDS and RDS answers
    /// do) or nothing is held, and no route names VHDS (VHDS routes are tracked per
    /// sidecar).
    fn can_share(&self, state: &SidecarState, kind: Kind, replace: bool) -> bool {
        let t = state.of(kind);
        !self.names_vhds
            && (kind != Kind::Route || state.vhds_routes.is_empty())
            && (replace
                || t.held.is_empty()
                || t.held_id.is_some_and(|id| id == self.tables().held_id))
    }
}

/// Takes a shared response: as [`apply`] would, without touching each resource when it can.
fn apply_shared(
    state: &mut SidecarState,
    kind: Kind,
    response: &SharedResponse,
    replace: bool,
) -> Followups {
    if !response.can_share(state, kind, replace) {
        return apply(state, kind, &response.decoded, &[], replace, false);
    }
    let tables = response.tables();
    let t = &mut state.types[kind.index()];
    t.held = tables.held.clone();
    t.held_id = Some(tables.held_id);
    let mut followups = Followups::default();
    if kind == Kind::Cluster {
        state.eds_of_cluster = tables.eds_of_cluster.clone();
        resubscribe_eds(state, tables.eds.clone(), &mut followups);
    }
    if kind == Kind::Listener {
        state.routes_of_listener = tables.routes_of_listener.clone();
        resubscribe_rds(state, tables.rds.clone(), &mut followups);
    }
    followups
}

/// Marks `kind` answered on this stream and notes completion.
fn check_complete(state: &mut SidecarState, kind: Kind, followups: &mut Followups) {
    state.seen[kind.index()] = true;
    if state.complete_at.is_none() && state.is_complete() {
        let now = Instant::now();
        state.complete_at = Some(now);
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
    t.nonce = record.nonce.to_string();
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
        for (name, body, hash) in followups.changed.drain(..) {
            if let Ok(name) = std::str::from_utf8(&name) {
                observer.changed(config.index, kind, name, &body, hash, acked);
            }
        }
    }
}

fn observing(config: &SidecarConfig, kind: Kind) -> bool {
    config.observer.as_ref().is_some_and(|o| o.wants(kind))
}

fn nack_event(config: &SidecarConfig, kind: Kind, detail: String) {
    let _ = config.events.send(Event::Nack {
        proxy: config.index,
        kind,
        detail,
    });
}

/// A response's resources, to take one by one (to tell an observer what changed, or to
/// change what this sidecar holds) or to share the tables of.
enum Taken {
    Each(Arc<SharedResponse>),
    Shared(Arc<SharedResponse>),
}

impl Taken {
    /// Applies the response to the sidecar's state, as [`apply`] does (`removed` is empty
    /// whenever the tables are shared: `take` shares only first or replacing responses).
    fn apply_to(
        &self,
        state: &mut SidecarState,
        kind: Kind,
        removed: &[Bytes],
        replace: bool,
        observe: bool,
    ) -> Followups {
        match self {
            Taken::Each(shared) => apply(state, kind, &shared.decoded, removed, replace, observe),
            Taken::Shared(shared) => apply_shared(state, kind, shared, replace),
        }
    }
}

/// Decodes a response's resources through the memo of identical responses (under endpoint
/// churn nearly every sidecar is sent the same pushes too: ~540 distinct of 400,000 delta
/// responses at 5,000 sidecars). Its tables can be shared when `shareable` and nobody
/// observes changed bodies. Also returns the bytes of the bodies.
fn take(
    kind: Kind,
    raw: &[Bytes],
    wire: Wire,
    observe: bool,
    shareable: bool,
) -> (u64, Result<Taken, String>) {
    match shared_response(kind, raw, wire) {
        Ok(shared) if shareable && !observe => (shared.bytes, Ok(Taken::Shared(shared))),
        Ok(shared) => (shared.bytes, Ok(Taken::Each(shared))),
        Err((bytes, detail)) => (bytes, Err(detail)),
    }
}

async fn run_sotw(
    config: &SidecarConfig,
    state: &Arc<Mutex<SidecarState>>,
    answered: &mut bool,
) -> Result<()> {
    let mut channel = grpc::connect(&config.addr, STREAM_WINDOW, CONNECTION_WINDOW).await?;
    let mut first = Vec::new();
    let request = |kind: Kind, names: Bytes, version: &str, nonce: &str| SotwRequestOut {
        request: LiteDiscoveryRequest {
            type_url: kind.type_url().into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        },
        names,
    };
    {
        // A new stream repeats every subscription with the last accepted version.
        let mut s = state.lock().expect("sidecar state");
        s.new_stream();
        let mut node = Some(config.node.clone());
        for kind in [Kind::Cluster, Kind::Listener, Kind::Endpoint, Kind::Route] {
            if kind.wildcard() || s.subscribed(kind) {
                let mut r = request(kind, s.request_names(kind), &s.of(kind).version, "");
                r.request.node = node.take();
                first.push(r);
            }
        }
    }
    let mut stream = grpc::open(&mut channel, ADS_SOTW, first).await?;
    let mut vhds_streams = tokio::task::JoinSet::new();
    while let Some(mut message) = stream.next_message().await? {
        *answered = true;
        let at = Instant::now();
        let response = LiteDiscoveryResponse::decode(&mut message.body)?;
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            continue;
        };
        let observe = observing(config, kind);
        let (bytes, decoded) = take(kind, &response.resources, Wire::Any, observe, true);
        let mut followups;
        {
            let mut s = state.lock().expect("sidecar state");
            let stream_number = s.stream;
            record(
                &mut s,
                ResponseRecord {
                    kind,
                    at,
                    stream: stream_number,
                    bytes,
                    resources: response.resources.len() as u32,
                    version: response.version_info.as_str().into(),
                    nonce: response.nonce.as_str().into(),
                    nacked: decoded.is_err(),
                },
            );
            let decoded = match decoded {
                Ok(decoded) => decoded,
                Err(detail) => {
                    // The previous version stays in effect.
                    let mut nack = request(
                        kind,
                        s.request_names(kind),
                        &s.of(kind).version,
                        &response.nonce,
                    );
                    nack.request.error_detail = nack_status(&detail);
                    stream.send(nack);
                    nack_event(config, kind, detail);
                    continue;
                }
            };
            followups = decoded.apply_to(&mut s, kind, &[], kind.wildcard(), observe);
            s.types[kind.index()].version = response.version_info.clone();
            stream.send(request(
                kind,
                s.request_names(kind),
                &response.version_info,
                &response.nonce,
            ));
            // After every CDS update Envoy asks for its clusters' endpoints again (they
            // re-enter warming); after LDS, for routes when the names changed. An empty SotW
            // list would mean "everything", so it is never sent.
            let rds_changed = followups
                .rds
                .as_ref()
                .is_some_and(|(a, r)| !a.is_empty() || !r.is_empty());
            for (target, due) in [
                (Kind::Endpoint, followups.eds.is_some()),
                (Kind::Route, rds_changed),
            ] {
                if due && s.subscribed(target) {
                    let t = s.of(target);
                    stream.send(request(
                        target,
                        s.request_names(target),
                        &t.version,
                        &t.nonce,
                    ));
                }
            }
            open_vhds_streams(config, state, &mut s, &channel, &mut vhds_streams);
            check_complete(&mut s, kind, &mut followups);
        }
        notify(config, kind, &mut followups);
    }
    Ok(())
}

/// A delta request with fields already in wire form appended to its encoding.
struct DeltaOut {
    request: DeltaDiscoveryRequest,
    encoded_fields: Bytes,
}

impl From<DeltaDiscoveryRequest> for DeltaOut {
    fn from(request: DeltaDiscoveryRequest) -> Self {
        DeltaOut {
            request,
            encoded_fields: Bytes::new(),
        }
    }
}

impl grpc::Outbound for DeltaOut {
    fn frame(&self) -> grpc::Frame {
        grpc::frame_with(&self.request, &self.encoded_fields)
    }
}

/// One `initial_resource_versions` entry (field 5, a `map<string, string>` entry message).
fn encode_held_version(name: &[u8], version: &[u8], buf: &mut BytesMut) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    const INITIAL_RESOURCE_VERSIONS: u32 = 5;
    let field_len = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    encode_key(INITIAL_RESOURCE_VERSIONS, WireType::LengthDelimited, buf);
    encode_varint(
        (field_len(name.len()) + field_len(version.len())) as u64,
        buf,
    );
    for (tag, bytes) in [(1, name), (2, version)] {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(bytes.len() as u64, buf);
        buf.put_slice(bytes);
    }
}

/// A delta request subscribing to `add` and unsubscribing from `remove`, the names written
/// as wire fields (a first EDS subscription names every cluster: a String each was a
/// visible share of a delta cold connect).
fn subscription_change(kind: Kind, add: &[Bytes], remove: &[Bytes]) -> DeltaOut {
    const SUBSCRIBE: u32 = 3;
    const UNSUBSCRIBE: u32 = 4;
    let mut fields = Vec::new();
    prost::encoding::bytes::encode_repeated(SUBSCRIBE, add, &mut fields);
    prost::encoding::bytes::encode_repeated(UNSUBSCRIBE, remove, &mut fields);
    DeltaOut {
        request: DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            ..Default::default()
        },
        encoded_fields: fields.into(),
    }
}

/// A reconnecting delta request's subscriptions and held versions, as wire fields: a
/// sidecar of a large mesh names thousands, and building them as Strings in a HashMap was
/// most of the load generator's CPU in the restart benchmark.
fn reconnect_fields(s: &SidecarState, kind: Kind) -> Bytes {
    let names = s.request_names(kind);
    let held = &s.of(kind).held;
    // Room for each version entry: a subscribed name's entry plus the version, or for
    // wildcard types (no names sent) a generous guess; the buffer grows at most once.
    let per_version = if names.is_empty() {
        128
    } else {
        names.len() / held.len().max(1) + 24
    };
    let mut fields = BytesMut::with_capacity(names.len() + held.len() * per_version);
    fields.put_slice(&names);
    let versions = held
        .iter()
        .filter_map(|(key, h)| Some((key, h.version.as_ref()?)));
    for (key, version) in versions {
        with_registered(*key, |name| {
            version.with_bytes(|version| encode_held_version(name, version, &mut fields))
        });
    }
    fields.freeze()
}

async fn run_delta(
    config: &SidecarConfig,
    state: &Arc<Mutex<SidecarState>>,
    answered: &mut bool,
) -> Result<()> {
    let mut channel = grpc::connect(&config.addr, STREAM_WINDOW, CONNECTION_WINDOW).await?;
    let mut first = Vec::new();
    {
        // A new stream names what the client holds, so the server can skip it.
        let mut s = state.lock().expect("sidecar state");
        s.new_stream();
        let mut node = Some(config.node.clone());
        for kind in [Kind::Cluster, Kind::Listener, Kind::Endpoint, Kind::Route] {
            if !(kind.wildcard() || s.subscribed(kind)) {
                continue;
            }
            let r = DeltaDiscoveryRequest {
                type_url: kind.type_url().into(),
                node: node.take(),
                ..Default::default()
            };
            let fields = reconnect_fields(&s, kind);
            first.push(DeltaOut {
                request: r,
                encoded_fields: fields,
            });
        }
    }
    let mut stream = grpc::open(&mut channel, ADS_DELTA, first).await?;
    let mut vhds_streams = tokio::task::JoinSet::new();
    while let Some(mut message) = stream.next_message().await? {
        *answered = true;
        let at = Instant::now();
        let response = LiteDeltaDiscoveryResponse::decode(&mut message.body)?;
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            continue;
        };
        let mut followups;
        {
            let mut s = state.lock().expect("sidecar state");
            let (reply, applied) = take_delta_response(config, &mut s, kind, &response, at);
            stream.send(reply.into());
            let Some(applied) = applied else {
                continue;
            };
            followups = applied;
            for (target, diff) in [
                (Kind::Endpoint, followups.eds.take()),
                (Kind::Route, followups.rds.take()),
            ] {
                if let Some((add, remove)) = diff
                    && !(add.is_empty() && remove.is_empty())
                {
                    stream.send(subscription_change(target, &add, &remove));
                }
            }
            open_vhds_streams(config, state, &mut s, &channel, &mut vhds_streams);
            check_complete(&mut s, kind, &mut followups);
        }
        notify(config, kind, &mut followups);
    }
    Ok(())
}

/// Takes one delta response of `kind` under the state lock: records it, then applies it or
/// (undecodable) NACKs it. Returns the ACK or NACK to send, and what follows from the update
/// (None after a NACK).
fn take_delta_response(
    config: &SidecarConfig,
    s: &mut SidecarState,
    kind: Kind,
    response: &LiteDeltaDiscoveryResponse,
    at: Instant,
) -> (DeltaDiscoveryRequest, Option<Followups>) {
    let observe = observing(config, kind);
    // A first response of the type (as in a cold connect) can share its table with every
    // sidecar sent the same one; later ones change what this sidecar holds.
    let first = s.of(kind).held.is_empty() && response.removed_resources.is_empty();
    let (bytes, decoded) = take(kind, &response.resources, Wire::Resource, observe, first);
    let stream = s.stream;
    record(
        s,
        ResponseRecord {
            kind,
            at,
            stream,
            bytes,
            resources: response.resources.len() as u32,
            version: response.system_version_info.as_str().into(),
            nonce: response.nonce.as_str().into(),
            nacked: decoded.is_err(),
        },
    );
    let mut reply = DeltaDiscoveryRequest {
        type_url: kind.type_url().into(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    };
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(detail) => {
            reply.error_detail = nack_status(&detail);
            nack_event(config, kind, detail);
            return (reply, None);
        }
    };
    let followups = decoded.apply_to(s, kind, &response.removed_resources, false, observe);
    s.types[kind.index()].version = response.system_version_info.clone();
    (reply, Some(followups))
}

const VHDS: &str = "/envoy.service.route.v3.VirtualHostDiscoveryService/DeltaVirtualHosts";

/// Opens a VHDS stream, beside the ADS stream and on its connection, for each route
/// configuration that names VHDS and has none yet (as Envoy does: one per configuration).
fn open_vhds_streams(
    config: &SidecarConfig,
    state: &Arc<Mutex<SidecarState>>,
    s: &mut SidecarState,
    channel: &grpc::Channel,
    streams: &mut tokio::task::JoinSet<()>,
) {
    for (key, route) in s.take_unopened_vhds() {
        let (config, state, channel) = (config.clone(), state.clone(), channel.clone());
        streams.spawn(async move {
            if let Err(e) = run_vhds(&config, &state, channel, key, &route).await {
                let mut s = state.lock().expect("sidecar state");
                s.last_error = Some(format!("VHDS stream for {route:?}: {e:#}"));
            }
        });
    }
}

/// One VHDS stream, for the route configuration `route`: like Envoy 1.40, it names nothing
/// and is told which configuration it is for by the header the configuration's source sets.
async fn run_vhds(
    config: &SidecarConfig,
    state: &Mutex<SidecarState>,
    mut channel: grpc::Channel,
    route_key: u64,
    route: &Bytes,
) -> Result<()> {
    let first: DeltaOut = DeltaDiscoveryRequest {
        type_url: Kind::VirtualHost.type_url().into(),
        node: Some(config.node.clone()),
        ..Default::default()
    }
    .into();
    let header = (
        ROUTE_CONFIG_HEADER,
        String::from_utf8_lossy(route).into_owned(),
    );
    let mut stream = grpc::open_with(&mut channel, VHDS, &[header], vec![first]).await?;
    while let Some(mut message) = stream.next_message().await? {
        let at = Instant::now();
        let response = LiteDeltaDiscoveryResponse::decode(&mut message.body)?;
        let kind = Kind::VirtualHost;
        let mut followups;
        {
            let mut s = state.lock().expect("sidecar state");
            let (reply, applied) = take_delta_response(config, &mut s, kind, &response, at);
            stream.send(reply.into());
            let Some(applied) = applied else {
                continue;
            };
            followups = applied;
            s.vhds_answered.insert(route_key, ());
            check_complete(&mut s, kind, &mut followups);
        }
        notify(config, kind, &mut followups);
    }
    Ok(())
}

/// A client that opens an ADS stream, asks for clusters, and then never reads: its connection
/// stays open with small flow-control windows that fill up.
pub struct StalledClient {
    _channel: grpc::Channel,
    _stream: grpc::GrpcStream<LiteDiscoveryRequest>,
}

impl StalledClient {
    pub async fn open(addr: &str, node: Node) -> Result<StalledClient> {
        let mut channel = grpc::connect(addr, 65_535, 65_535).await?;
        let first = LiteDiscoveryRequest {
            type_url: Kind::Cluster.type_url().into(),
            node: Some(node),
            ..Default::default()
        };
        let stream = grpc::open(&mut channel, ADS_SOTW, vec![first]).await?;
        Ok(StalledClient {
            _channel: channel,
            _stream: stream,
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

    fn mk_named(kind: Kind, name: &str) -> LiteAny {
        LiteAny {
            type_url: kind.type_url().into(),
            value: LiteNamed {
                name: Bytes::copy_from_slice(name.as_bytes()),
            }
            .encode_to_vec()
            .into(),
        }
    }

    fn decode(kind: Kind, any: &LiteAny) -> Decoded {
        decode_resource(kind, any, None).unwrap()
    }

    #[test]
    fn clusters_yield_their_eds_names_and_listeners_their_routes() {
        let c = decode(Kind::Cluster, &mk_eds_cluster("a", ""));
        assert_eq!((c.key, c.eds), (name_key(b"a"), Some(name_key(b"a"))));
        let c = decode(Kind::Cluster, &mk_eds_cluster("b", "svc-b"));
        assert_eq!(c.eds, Some(name_key(b"svc-b")));
        assert_eq!(
            registered(name_key(b"svc-b")).as_deref(),
            Some(&b"svc-b"[..])
        );
        let static_cluster = lite(pack_any(Cluster {
            name: "static".into(),
            ..Default::default()
        }));
        assert!(decode(Kind::Cluster, &static_cluster).eds.is_none());
        let l = decode(Kind::Listener, &mk_listener("0.0.0.0_8080", "8080"));
        assert_eq!(l.routes, vec![name_key(b"8080")]);
    }

    #[test]
    fn broken_or_mistyped_resources_are_rejected() {
        let mut broken = mk_eds_cluster("a", "");
        broken.value = Bytes::from_static(&[0x0a, 0x05, b'a']);
        assert!(decode_resource(Kind::Cluster, &broken, None).is_err());
        let listener = mk_listener("l", "r");
        assert!(decode_resource(Kind::Cluster, &listener, None).is_err());
        // A delta resource whose name disagrees with its body.
        let other = Bytes::from_static(b"other");
        assert!(decode_resource(Kind::Listener, &listener, Some(&other)).is_err());
    }

    #[test]
    fn complete_needs_every_subscribed_endpoint_and_route() {
        let mut state = SidecarState::new();
        let mut f = Followups::default();
        let clusters = vec![
            decode(Kind::Cluster, &mk_eds_cluster("a", "")),
            decode(Kind::Cluster, &mk_eds_cluster("b", "")),
        ];
        let applied = apply(&mut state, Kind::Cluster, &clusters, &[], true, false);
        let (added, removed) = applied.eds.unwrap();
        assert_eq!((added.len(), removed.len()), (2, 0));
        check_complete(&mut state, Kind::Cluster, &mut f);
        let listeners = vec![decode(Kind::Listener, &mk_listener("l", "r"))];
        apply(&mut state, Kind::Listener, &listeners, &[], true, false);
        check_complete(&mut state, Kind::Listener, &mut f);
        assert!(!state.is_complete());
        let eds = vec![decode(Kind::Endpoint, &mk_named(Kind::Endpoint, "a"))];
        apply(&mut state, Kind::Endpoint, &eds, &[], false, false);
        check_complete(&mut state, Kind::Endpoint, &mut f);
        assert!(!state.is_complete(), "b and the route are missing");
        let eds = vec![decode(Kind::Endpoint, &mk_named(Kind::Endpoint, "b"))];
        apply(&mut state, Kind::Endpoint, &eds, &[], false, false);
        let rds = vec![decode(Kind::Route, &mk_named(Kind::Route, "r"))];
        apply(&mut state, Kind::Route, &rds, &[], false, false);
        check_complete(&mut state, Kind::Route, &mut f);
        assert!(state.is_complete());
        assert!(f.completed.is_some());
        // The same clusters again change no subscription; without b, b is unsubscribed.
        let same = vec![
            decode(Kind::Cluster, &mk_eds_cluster("b", "")),
            decode(Kind::Cluster, &mk_eds_cluster("a", "")),
        ];
        let applied = apply(&mut state, Kind::Cluster, &same, &[], true, false);
        assert_eq!(applied.eds, Some((vec![], vec![])));
        let clusters = vec![decode(Kind::Cluster, &mk_eds_cluster("a", ""))];
        let applied = apply(&mut state, Kind::Cluster, &clusters, &[], true, false);
        assert_eq!(applied.eds, Some((vec![], vec![Bytes::from_static(b"b")])));
        assert_eq!(state.of(Kind::Cluster).held.len(), 1);
    }

    #[test]
    fn observers_hear_of_new_and_changed_bodies_only() {
        let mut state = SidecarState::new();
        let first = vec![decode(Kind::Endpoint, &mk_named(Kind::Endpoint, "a"))];
        assert_eq!(
            apply(&mut state, Kind::Endpoint, &first, &[], false, true)
                .changed
                .len(),
            1
        );
        let again = vec![decode(Kind::Endpoint, &mk_named(Kind::Endpoint, "a"))];
        assert!(
            apply(&mut state, Kind::Endpoint, &again, &[], false, true)
                .changed
                .is_empty()
        );
        let removed = [Bytes::from_static(b"a")];
        apply(&mut state, Kind::Endpoint, &[], &removed, false, true);
        assert!(state.of(Kind::Endpoint).held.is_empty());
    }

    #[test]
    fn responses_decode_in_one_pass_and_one_broken_resource_fails_them_all() {
        let any = |a: &LiteAny| Bytes::from(a.encode_to_vec());
        let (a, b) = (mk_named(Kind::Endpoint, "a"), mk_named(Kind::Endpoint, "b"));
        let body_bytes = (a.value.len() + b.value.len()) as u64;
        let (bytes, decoded) = decode_all(Kind::Endpoint, &[any(&a), any(&b)], Wire::Any);
        let names: Vec<Bytes> = decoded.unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(bytes, body_bytes);
        let broken = Bytes::from_static(&[0x12, 0x7f]);
        let (_, decoded) = decode_all(Kind::Endpoint, &[any(&a), broken], Wire::Any);
        assert!(decoded.unwrap_err().contains("decoding an Any"));

        // Delta: the Resource's name and version; a body-less Resource is skipped.
        let resource = |name: &str, body: Option<&LiteAny>| -> Bytes {
            LiteResource {
                version: Bytes::from_static(b"00000000000000ff"),
                resource: body.cloned(),
                name: Bytes::copy_from_slice(name.as_bytes()),
            }
            .encode_to_vec()
            .into()
        };
        let raw = [resource("a", Some(&a)), resource("z", None)];
        let (_, decoded) = decode_all(Kind::Endpoint, &raw, Wire::Resource);
        let decoded = decoded.unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].version, Some(HeldVersion::Hex(0xff)));
        let misnamed = [resource("b", Some(&a))];
        let (_, decoded) = decode_all(Kind::Endpoint, &misnamed, Wire::Resource);
        assert!(decoded.unwrap_err().contains("carries a body named"));
    }

    #[test]
    fn a_body_is_decoded_once_and_its_name_does_not_hold_the_received_bytes() {
        let any = mk_named(Kind::Endpoint, "decoded-once");
        let first = decode(Kind::Endpoint, &any);
        let first_name = first.name;
        let body = any.value.as_ptr_range();
        assert!(!body.contains(&first_name.as_ptr()), "the name is a copy");
        // The same bytes received again, elsewhere: the remembered facts, same name copy.
        let again = LiteAny {
            type_url: any.type_url.clone(),
            value: Bytes::copy_from_slice(&any.value),
        };
        let second = decode(Kind::Endpoint, &again);
        assert_eq!(second.name.as_ptr(), first_name.as_ptr());
        assert_eq!(
            second.body.as_ptr(),
            again.value.as_ptr(),
            "the body is the one received"
        );
        // The same bytes as another type are that type's own entry.
        let as_host = LiteAny {
            type_url: Kind::VirtualHost.type_url().into(),
            value: any.value.clone(),
        };
        let host = decode(Kind::VirtualHost, &as_host).name;
        assert_eq!(host, first_name);
        assert_ne!(host.as_ptr(), first_name.as_ptr());
    }

    /// A SotW response's resources as received: each an encoded `Any`, in a buffer of its own.
    fn sotw_resources(resources: &[LiteAny]) -> Vec<Bytes> {
        resources
            .iter()
            .map(|a| Bytes::from(a.encode_to_vec()))
            .collect()
    }

    #[test]
    fn sidecars_sent_the_same_sotw_response_share_what_they_hold() {
        let clusters = [
            mk_eds_cluster("shared-a", ""),
            mk_eds_cluster("shared-b", ""),
        ];
        let first = shared_response(Kind::Cluster, &sotw_resources(&clusters), Wire::Any).unwrap();
        let again = shared_response(Kind::Cluster, &sotw_resources(&clusters), Wire::Any).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "decoded once");
        let body_bytes: usize = clusters.iter().map(|c| c.value.len()).sum();
        assert_eq!(first.bytes, body_bytes as u64);
        let reordered = [clusters[1].clone(), clusters[0].clone()];
        let other = shared_response(Kind::Cluster, &sotw_resources(&reordered), Wire::Any).unwrap();
        assert!(!Arc::ptr_eq(&first, &other), "another response");

        // Two sidecars take it: one table between them, and the same subscriptions and
        // completeness as each resource applied on its own.
        let (mut one, mut two, mut each) = (
            SidecarState::new(),
            SidecarState::new(),
            SidecarState::new(),
        );
        let shared_followups = apply_shared(&mut one, Kind::Cluster, &first, true);
        apply_shared(&mut two, Kind::Cluster, &again, true);
        let each_followups = apply(
            &mut each,
            Kind::Cluster,
            &first.decoded.clone(),
            &[],
            true,
            false,
        );
        assert!(Arc::ptr_eq(
            &one.of(Kind::Cluster).held,
            &two.of(Kind::Cluster).held
        ));
        assert_eq!(one.held_hashes(), each.held_hashes());
        // Before a measured window a sidecar takes its own copy, holding the same.
        two.own_tables();
        assert!(!Arc::ptr_eq(
            &one.of(Kind::Cluster).held,
            &two.of(Kind::Cluster).held
        ));
        assert_eq!(one.held_hashes(), two.held_hashes());
        assert_eq!(shared_followups.eds, each_followups.eds);
        assert_eq!(one.eds.as_ref().unwrap().id, each.eds.as_ref().unwrap().id);
        let endpoints = [
            mk_named(Kind::Endpoint, "shared-a"),
            mk_named(Kind::Endpoint, "shared-b"),
        ];
        let eds = shared_response(Kind::Endpoint, &sotw_resources(&endpoints), Wire::Any).unwrap();
        let listener = shared_response(
            Kind::Listener,
            &sotw_resources(&[mk_listener("l", "r")]),
            Wire::Any,
        );
        let route = shared_response(
            Kind::Route,
            &sotw_resources(&[mk_named(Kind::Route, "r")]),
            Wire::Any,
        );
        let mut f = Followups::default();
        for state in [&mut one, &mut each] {
            check_complete(state, Kind::Cluster, &mut f);
            apply_shared(state, Kind::Listener, listener.as_ref().unwrap(), true);
            check_complete(state, Kind::Listener, &mut f);
            apply_shared(state, Kind::Endpoint, &eds, false);
            check_complete(state, Kind::Endpoint, &mut f);
            assert!(!state.is_complete(), "the route is missing");
            apply_shared(state, Kind::Route, route.as_ref().unwrap(), false);
            check_complete(state, Kind::Route, &mut f);
            assert!(state.is_complete());
        }

        // A response naming exactly the names held replaces them, shared too.
        let newer = [
            mk_named(Kind::Endpoint, "shared-b"),
            LiteAny {
                value: Bytes::from([&endpoints[0].value[..], &[0x12, 0x00]].concat()),
                ..endpoints[0].clone()
            },
        ];
        let newer = shared_response(Kind::Endpoint, &sotw_resources(&newer), Wire::Any).unwrap();
        apply_shared(&mut one, Kind::Endpoint, &newer, false);
        assert!(Arc::ptr_eq(
            &one.of(Kind::Endpoint).held,
            &newer.tables().held
        ));
        apply_shared(&mut one, Kind::Endpoint, &eds, false);
        assert!(Arc::ptr_eq(
            &one.of(Kind::Endpoint).held,
            &eds.tables().held
        ));
        // A change to one sidecar's table is its own (copy on write).
        let changed = [mk_named(Kind::Endpoint, "shared-a")];
        apply(
            &mut one,
            Kind::Endpoint,
            &[decode(
                Kind::Endpoint,
                &mk_named(Kind::Endpoint, "shared-c"),
            )],
            &[],
            false,
            false,
        );
        assert_eq!(one.of(Kind::Endpoint).held.len(), 3);
        assert_eq!(each.of(Kind::Endpoint).held.len(), 2);
        assert_eq!(eds.tables().held.len(), 2);
        // Into a non-empty table a non-wildcard response merges, resource by resource.
        let merged = shared_response(Kind::Endpoint, &sotw_resources(&changed), Wire::Any).unwrap();
        apply_shared(&mut each, Kind::Endpoint, &merged, false);
        assert_eq!(each.of(Kind::Endpoint).held.len(), 2);
        assert!(each.of(Kind::Endpoint).held_id.is_none());
    }

    #[test]
    fn an_observed_response_is_decoded_once_and_taken_resource_by_resource() {
        let endpoints = [mk_named(Kind::Endpoint, "observed-a")];
        let (first, again) = (sotw_resources(&endpoints), sotw_resources(&endpoints));
        let (bytes, taken) = take(Kind::Endpoint, &first, Wire::Any, true, true);
        let Ok(Taken::Each(one)) = taken else {
            panic!("an observer is told of each resource")
        };
        assert_eq!(bytes, endpoints[0].value.len() as u64);
        let (_, taken) = take(Kind::Endpoint, &again, Wire::Any, true, true);
        let Ok(Taken::Each(two)) = taken else {
            panic!("an observer is told of each resource")
        };
        assert_eq!(
            one.decoded[0].body.as_ptr(),
            two.decoded[0].body.as_ptr(),
            "decoded once"
        );
        let (_, taken) = take(Kind::Endpoint, &again, Wire::Any, false, true);
        assert!(matches!(taken, Ok(Taken::Shared(_))));
        let (_, taken) = take(Kind::Endpoint, &again, Wire::Any, false, false);
        assert!(matches!(taken, Ok(Taken::Each(_))));
    }

    #[test]
    fn a_broken_sotw_response_is_not_remembered() {
        let mut broken = mk_eds_cluster("broken", "");
        broken.value = Bytes::from_static(&[0x0a, 0x05, b'a']);
        let raw = sotw_resources(&[mk_eds_cluster("fine", ""), broken]);
        for _ in 0..2 {
            let (bytes, detail) = shared_response(Kind::Cluster, &raw, Wire::Any)
                .err()
                .unwrap();
            assert!(detail.contains("decoding"), "{detail}");
            assert!(bytes > 0, "the first body was read");
        }
    }

    #[test]
    fn a_delta_resource_held_for_the_first_time_is_registered() {
        let mut state = SidecarState::new();
        // SotW never names held resources back: nothing to register.
        let name = "sotw-only";
        let d = decode(Kind::Endpoint, &mk_named(Kind::Endpoint, name));
        let key = d.key;
        apply(&mut state, Kind::Endpoint, &[d], &[], false, false);
        assert_eq!(registered(key), None);
        // A delta reconnect names it with its version.
        let name = "registered-on-first-sight";
        let mut d = decode(Kind::Endpoint, &mk_named(Kind::Endpoint, name));
        d.version = Some(HeldVersion::Hex(1));
        let key = d.key;
        apply(&mut state, Kind::Endpoint, &[d], &[], false, false);
        assert_eq!(registered(key).as_deref(), Some(name.as_bytes()));
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

    #[test]
    fn a_reconnect_request_decodes_as_envoys_with_its_held_versions() {
        use grpc::Outbound;
        let mut fields = BytesMut::new();
        prost::encoding::string::encode(3, &"outbound|80||a.svc".to_string(), &mut fields);
        encode_held_version(b"outbound|80||a.svc", b"0123456789abcdef", &mut fields);
        encode_held_version(b"outbound|80||b.svc", b"", &mut fields);
        let out = DeltaOut {
            request: DeltaDiscoveryRequest {
                type_url: Kind::Endpoint.type_url().into(),
                ..Default::default()
            },
            encoded_fields: fields.freeze(),
        };
        let frame = grpc::joined(out.frame());
        let decoded = DeltaDiscoveryRequest::decode(&frame[5..]).unwrap();
        assert_eq!(decoded.type_url, Kind::Endpoint.type_url());
        assert_eq!(decoded.resource_names_subscribe, ["outbound|80||a.svc"]);
        assert_eq!(
            decoded.initial_resource_versions,
            HashMap::from([
                (
                    "outbound|80||a.svc".to_string(),
                    "0123456789abcdef".to_string()
                ),
                ("outbound|80||b.svc".to_string(), String::new()),
            ])
        );
    }

    /// A reconnect's request for `kind`, as the server decodes it.
    fn reconnect_request(state: &SidecarState, kind: Kind) -> DeltaDiscoveryRequest {
        let mut frame = BytesMut::new();
        DeltaDiscoveryRequest::default().encode(&mut frame).unwrap();
        frame.put_slice(&reconnect_fields(state, kind));
        DeltaDiscoveryRequest::decode(frame.freeze()).unwrap()
    }

    #[test]
    fn a_reconnect_names_every_delta_resource_held_with_its_version() {
        let mut state = SidecarState::new();
        let held = |name: &str, version: u64| {
            let mut d = decode(Kind::Cluster, &mk_eds_cluster(name, name));
            d.version = Some(HeldVersion::Hex(version));
            d
        };
        let clusters = vec![held("reconnect-a", 0xa), held("reconnect-b", 0xb)];
        apply(&mut state, Kind::Cluster, &clusters, &[], false, false);
        let removed = [Bytes::from_static(b"reconnect-b")];
        apply(&mut state, Kind::Cluster, &[], &removed, false, false);
        let request = reconnect_request(&state, Kind::Cluster);
        assert_eq!(
            request.initial_resource_versions,
            HashMap::from([("reconnect-a".to_string(), format!("{:016x}", 0xa))])
        );
        // The clusters' EDS names are subscriptions, not held endpoints.
        let eds = reconnect_fields(&state, Kind::Endpoint);
        let request = DeltaDiscoveryRequest::decode(eds).unwrap();
        assert_eq!(request.resource_names_subscribe, ["reconnect-a"]);
        assert!(request.initial_resource_versions.is_empty());
    }

    #[test]
    fn a_shared_first_delta_response_keeps_versions_for_a_reconnect() {
        let resource = |name: &str, version: &'static [u8]| -> Bytes {
            LiteResource {
                version: Bytes::from_static(version),
                resource: Some(mk_eds_cluster(name, name)),
                name: Bytes::copy_from_slice(name.as_bytes()),
            }
            .encode_to_vec()
            .into()
        };
        let raw = [
            resource("shared-delta-a", b"000000000000000a"),
            resource("shared-delta-b", b"000000000000000b"),
        ];
        let shared = shared_response(Kind::Cluster, &raw, Wire::Resource).unwrap();
        let mut state = SidecarState::new();
        apply_shared(&mut state, Kind::Cluster, &shared, false);
        assert!(Arc::ptr_eq(
            &state.of(Kind::Cluster).held,
            &shared.tables().held
        ));
        let request = reconnect_request(&state, Kind::Cluster);
        assert_eq!(
            request.initial_resource_versions,
            HashMap::from([
                ("shared-delta-a".to_string(), format!("{:016x}", 0xa)),
                ("shared-delta-b".to_string(), format!("{:016x}", 0xb)),
            ])
        );
        // The same resources at another version are another response.
        let newer = [resource("shared-delta-a", b"00000000000000aa")];
        let other = shared_response(Kind::Cluster, &newer, Wire::Resource).unwrap();
        assert!(!Arc::ptr_eq(&shared, &other));
    }

    #[test]
    fn a_subscription_change_decodes_as_envoys_request() {
        use grpc::Outbound;
        let add = [
            Bytes::from_static(b"outbound|80||a.svc"),
            Bytes::from_static(b"b"),
        ];
        let remove = [Bytes::from_static(b"gone")];
        let frame = grpc::joined(subscription_change(Kind::Endpoint, &add, &remove).frame());
        let request = DeltaDiscoveryRequest::decode(&frame[5..]).unwrap();
        assert_eq!(request.type_url, Kind::Endpoint.type_url());
        assert_eq!(
            request.resource_names_subscribe,
            ["outbound|80||a.svc", "b"]
        );
        assert_eq!(request.resource_names_unsubscribe, ["gone"]);
        assert!(request.initial_resource_versions.is_empty());
    }

    #[test]
    fn held_versions_go_back_exactly_as_they_came() {
        for sent in ["00000000000000ff", "0123456789abcdef", "ffffffffffffffff"] {
            let held = HeldVersion::parse(sent.as_bytes());
            assert!(matches!(held, HeldVersion::Hex(_)), "{sent}");
            held.with_bytes(|back| assert_eq!(back, sent.as_bytes()));
        }
        // Other servers' versions (upper case, other lengths) are kept as text.
        for sent in ["0123456789ABCDEF", "v1", "", "0123456789abcdef0"] {
            let held = HeldVersion::parse(sent.as_bytes());
            assert!(matches!(held, HeldVersion::Text(_)), "{sent}");
            held.with_bytes(|back| assert_eq!(back, sent.as_bytes()));
        }
    }
}
