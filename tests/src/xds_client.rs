//! A simulated sidecar: an ADS client that subscribes and ACKs the way Envoy does (CDS and LDS
//! wildcard; then EDS for the EDS clusters it got and RDS for the routes its listeners name),
//! in state-of-the-world or delta form, and keeps what it was sent.

use anyhow::{Context, Result, bail};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use meshpilot_translate::type_urls::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Sotw,
    Delta,
}

/// What the client holds, and when and how much it received.
#[derive(Clone, Debug, Default)]
pub struct ClientState {
    pub clusters: BTreeMap<String, Cluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    /// Responses received per type URL.
    pub responses: BTreeMap<String, u64>,
    /// Resource bytes received per type URL.
    pub bytes: BTreeMap<String, u64>,
    /// When the last response of each type arrived.
    pub last_update: BTreeMap<String, Instant>,
    /// `version_info` / `system_version_info` of the last response per type.
    pub versions: BTreeMap<String, String>,
    /// Set when the stream ended, with the reason.
    pub closed: Option<String>,
    /// Names held per type URL (kept in light mode too).
    pub names: BTreeMap<String, BTreeSet<String>>,
    /// Cluster name → its EDS service name, for clusters fed by EDS.
    eds_of_cluster: BTreeMap<String, String>,
    /// Listener name → the RDS names its HTTP connection managers use.
    routes_of_listener: BTreeMap<String, BTreeSet<String>>,
}

impl ClientState {
    fn held(&self, type_url: &str) -> usize {
        self.names.get(type_url).map_or(0, BTreeSet::len)
    }

    fn holds(&self, type_url: &str, name: &str) -> bool {
        self.names.get(type_url).is_some_and(|n| n.contains(name))
    }

    /// EDS names the clusters held want.
    pub fn eds_wanted(&self) -> BTreeSet<String> {
        self.eds_of_cluster.values().cloned().collect()
    }

    /// RDS names the listeners held want.
    pub fn rds_wanted(&self) -> BTreeSet<String> {
        self.routes_of_listener
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// CDS, EDS (for every EDS cluster), LDS and RDS (for every route name) have all arrived.
    pub fn is_complete(&self) -> bool {
        self.held(CLUSTER) > 0
            && self.held(LISTENER) > 0
            && self.eds_wanted().iter().all(|n| self.holds(ENDPOINT, n))
            && self.rds_wanted().iter().all(|n| self.holds(ROUTE, n))
    }
}

/// How much of what it receives a client keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Every decoded resource (tests inspect them).
    Resources,
    /// Names and statistics only (thousands of simulated proxies in one process).
    Names,
}

pub struct XdsClient {
    state: Arc<Mutex<ClientState>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
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
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    }
}

impl XdsClient {
    /// Connects to `http://addr` and starts subscribing, keeping every resource.
    pub async fn connect(addr: &str, node_id: &str, meta: Struct, flavor: Flavor) -> Result<Self> {
        Self::connect_keeping(addr, node_id, meta, flavor, Keep::Resources).await
    }

    pub async fn connect_keeping(
        addr: &str,
        node_id: &str,
        meta: Struct,
        flavor: Flavor,
        keep: Keep,
    ) -> Result<Self> {
        let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .with_context(|| format!("connecting to ADS at {addr}"))?
            .max_decoding_message_size(usize::MAX);
        let node = Node {
            id: node_id.to_string(),
            cluster: "simulated".into(),
            metadata: Some(meta),
            ..Default::default()
        };
        let state = Arc::new(Mutex::new(ClientState::default()));
        let (changed_tx, changed) = watch::channel(0);
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            let result = match flavor {
                Flavor::Sotw => run_sotw(client, node, keep, &task_state, &changed_tx).await,
                Flavor::Delta => run_delta(client, node, keep, &task_state, &changed_tx).await,
            };
            let reason = match result {
                Ok(()) => "stream ended".to_string(),
                Err(e) => format!("{e:#}"),
            };
            task_state.lock().expect("client state").closed = Some(reason);
            changed_tx.send_modify(|n| *n += 1);
        });
        Ok(XdsClient {
            state,
            changed,
            task,
        })
    }

    pub fn state(&self) -> ClientState {
        self.state.lock().expect("client state").clone()
    }

    /// Waits until `done` holds for the client's state.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ClientState) -> bool,
    ) -> Result<ClientState> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let state = self.state.lock().expect("client state");
                if done(&state) {
                    return Ok(state.clone());
                }
                if let Some(reason) = &state.closed {
                    bail!("waiting for {what}: the xDS stream closed: {reason}");
                }
            }
            if tokio::time::timeout_at(deadline, self.changed.changed())
                .await
                .is_err()
            {
                bail!("{what} did not happen within {timeout:?}");
            }
        }
    }
}

fn decode<M: Message + Default>(any: &Any) -> Result<M> {
    M::decode(any.value.as_slice()).with_context(|| format!("decoding {}", any.type_url))
}

/// The EDS resource name a cluster subscribes to, if it is fed by EDS.
pub fn eds_service_name(cluster: &Cluster) -> Option<String> {
    cluster.eds_cluster_config.as_ref().map(|e| {
        if e.service_name.is_empty() {
            cluster.name.clone()
        } else {
            e.service_name.clone()
        }
    })
}

/// RDS names the listeners' HTTP connection managers refer to.
pub fn route_names(listeners: &BTreeMap<String, Listener>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for listener in listeners.values() {
        let chains = listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.as_ref());
        for chain in chains {
            for filter in &chain.filters {
                use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
                let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                    continue;
                };
                if !any.type_url.ends_with("HttpConnectionManager") {
                    continue;
                }
                if let Ok(hcm) = decode::<HttpConnectionManager>(any)
                    && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                {
                    names.insert(rds.route_config_name);
                }
            }
        }
    }
    names
}

/// Stores one type's resources; `replace` for wildcard SotW types (the set is complete).
fn store(
    state: &mut ClientState,
    type_url: &str,
    resources: &[Any],
    removed: &[String],
    replace: bool,
    keep: Keep,
) -> Result<()> {
    let keep = keep == Keep::Resources;
    if replace {
        state.names.remove(type_url);
        match type_url {
            CLUSTER => {
                state.clusters.clear();
                state.eds_of_cluster.clear();
            }
            LISTENER => {
                state.listeners.clear();
                state.routes_of_listener.clear();
            }
            _ => {}
        }
    }
    for any in resources {
        let name = match type_url {
            CLUSTER => {
                let c: Cluster = decode(any)?;
                let name = c.name.clone();
                match eds_service_name(&c) {
                    Some(eds) => state.eds_of_cluster.insert(name.clone(), eds),
                    None => state.eds_of_cluster.remove(&name),
                };
                if keep {
                    state.clusters.insert(name.clone(), c);
                }
                name
            }
            LISTENER => {
                let l: Listener = decode(any)?;
                let name = l.name.clone();
                let single = BTreeMap::from([(name.clone(), l)]);
                state
                    .routes_of_listener
                    .insert(name.clone(), route_names(&single));
                if keep {
                    state.listeners.extend(single);
                }
                name
            }
            ENDPOINT => {
                let c: ClusterLoadAssignment = decode(any)?;
                let name = c.cluster_name.clone();
                if keep {
                    state.endpoints.insert(name.clone(), c);
                }
                name
            }
            ROUTE => {
                let r: RouteConfiguration = decode(any)?;
                let name = r.name.clone();
                if keep {
                    state.routes.insert(name.clone(), r);
                }
                name
            }
            _ => continue,
        };
        state
            .names
            .entry(type_url.to_string())
            .or_default()
            .insert(name);
    }
    for name in removed {
        if let Some(names) = state.names.get_mut(type_url) {
            names.remove(name);
        }
        state.clusters.remove(name);
        state.eds_of_cluster.remove(name);
        state.listeners.remove(name);
        state.routes_of_listener.remove(name);
        state.endpoints.remove(name);
        state.routes.remove(name);
    }
    Ok(())
}

fn record(state: &mut ClientState, type_url: &str, version: &str, bytes: usize) {
    *state.responses.entry(type_url.to_string()).or_default() += 1;
    *state.bytes.entry(type_url.to_string()).or_default() += bytes as u64;
    state
        .last_update
        .insert(type_url.to_string(), Instant::now());
    state
        .versions
        .insert(type_url.to_string(), version.to_string());
}

async fn run_sotw(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: Node,
    keep: Keep,
    state: &Mutex<ClientState>,
    changed: &watch::Sender<u64>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let request =
        |type_url: &str, names: &BTreeSet<String>, version: &str, nonce: &str| DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().cloned().collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
    let none = BTreeSet::new();
    tx.send(DiscoveryRequest {
        node: Some(node),
        ..request(CLUSTER, &none, "", "")
    })
    .await?;
    tx.send(request(LISTENER, &none, "", "")).await?;
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut eds: Option<BTreeSet<String>> = None;
    let mut rds: Option<BTreeSet<String>> = None;
    let mut nonces: BTreeMap<String, (String, String)> = BTreeMap::new();
    while let Some(response) = stream.next().await {
        let r: DiscoveryResponse = response?;
        let bytes = r.resources.iter().map(|a| a.value.len()).sum();
        let (want_eds, want_rds) = {
            let mut s = state.lock().expect("client state");
            let wildcard = r.type_url == CLUSTER || r.type_url == LISTENER;
            store(&mut s, &r.type_url, &r.resources, &[], wildcard, keep)?;
            record(&mut s, &r.type_url, &r.version_info, bytes);
            (s.eds_wanted(), s.rds_wanted())
        };
        nonces.insert(
            r.type_url.clone(),
            (r.version_info.clone(), r.nonce.clone()),
        );
        // ACK with the names currently wanted for that type.
        let names = match r.type_url.as_str() {
            ENDPOINT => eds.clone().unwrap_or_default(),
            ROUTE => rds.clone().unwrap_or_default(),
            _ => BTreeSet::new(),
        };
        tx.send(request(&r.type_url, &names, &r.version_info, &r.nonce))
            .await?;
        // New subscriptions, as Envoy makes them after CDS and LDS; after any CDS update Envoy
        // asks for its clusters' endpoints again (they re-enter warming).
        if r.type_url == CLUSTER {
            let (version, nonce) = nonces.get(ENDPOINT).cloned().unwrap_or_default();
            tx.send(request(ENDPOINT, &want_eds, &version, &nonce))
                .await?;
            eds = Some(want_eds);
        }
        if r.type_url == LISTENER && rds.as_ref() != Some(&want_rds) {
            let (version, nonce) = nonces.get(ROUTE).cloned().unwrap_or_default();
            tx.send(request(ROUTE, &want_rds, &version, &nonce)).await?;
            rds = Some(want_rds);
        }
        changed.send_modify(|n| *n += 1);
    }
    Ok(())
}

async fn run_delta(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: Node,
    keep: Keep,
    state: &Mutex<ClientState>,
    changed: &watch::Sender<u64>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let subscribe = |type_url: &str, add: Vec<String>, remove: Vec<String>| DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: add,
        resource_names_unsubscribe: remove,
        ..Default::default()
    };
    tx.send(DeltaDiscoveryRequest {
        node: Some(node),
        ..subscribe(CLUSTER, vec![], vec![])
    })
    .await?;
    tx.send(subscribe(LISTENER, vec![], vec![])).await?;
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut eds = BTreeSet::new();
    let mut rds = BTreeSet::new();
    while let Some(response) = stream.next().await {
        let r: DeltaDiscoveryResponse = response?;
        let resources: Vec<Any> = r
            .resources
            .iter()
            .filter_map(|x| x.resource.clone())
            .collect();
        let bytes = resources.iter().map(|a| a.value.len()).sum();
        let (want_eds, want_rds) = {
            let mut s = state.lock().expect("client state");
            store(
                &mut s,
                &r.type_url,
                &resources,
                &r.removed_resources,
                false,
                keep,
            )?;
            record(&mut s, &r.type_url, &r.system_version_info, bytes);
            (s.eds_wanted(), s.rds_wanted())
        };
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await?;
        if r.type_url == CLUSTER && want_eds != eds {
            let add = want_eds.difference(&eds).cloned().collect();
            let remove = eds.difference(&want_eds).cloned().collect();
            tx.send(subscribe(ENDPOINT, add, remove)).await?;
            eds = want_eds;
        }
        if r.type_url == LISTENER && want_rds != rds {
            let add = want_rds.difference(&rds).cloned().collect();
            let remove = rds.difference(&want_rds).cloned().collect();
            tx.send(subscribe(ROUTE, add, remove)).await?;
            rds = want_rds;
        }
        changed.send_modify(|n| *n += 1);
    }
    Ok(())
}
