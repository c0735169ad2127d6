//! One proxy's ADS stream as a state machine with no I/O: requests and snapshot changes go in,
//! responses come out. The tonic service only moves messages between the stream and this.
//!
//! Rules (xDS protocol, as istiod applies them):
//! - per type, a response carries a nonce; a request echoing it ACKs (or, with
//!   `error_detail`, NACKs) it; a request echoing any older nonce is stale and ignored;
//! - a NACK is logged and counted, and nothing is resent: the proxy keeps its last accepted
//!   config until a newer change produces different resources;
//! - at most one push per type is un-ACKed; a change arriving meanwhile is owed and pushed on
//!   the ACK;
//! - what is sent is a diff against what the proxy is known to hold, so a proxy whose
//!   config did not change is sent nothing;
//! - LDS/CDS are wildcard; EDS/RDS follow the names the proxy subscribes to;
//! - after CDS is answered, EDS is answered in full once more: updated clusters re-enter
//!   warming and need their assignments again;
//! - types this server does not serve get an empty answer and never end the stream.

use crate::resources::{Resource, ResourceCache};
use crate::types::{ResourceType, TypeSet, affected_types};
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use meshpilot_model::{ChangeSet, Proxy};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The state of the world a push is computed from.
pub struct PushContext {
    pub cache: Arc<ResourceCache>,
    /// `<RFC 3339 time>/<counter>`, sent as `version_info` / `system_version_info`.
    pub version_info: String,
}

/// State-of-the-world or incremental (delta) xDS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Sotw,
    Delta,
}

/// One response, in the stream's flavor.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

impl Outgoing {
    pub fn type_url(&self) -> &str {
        match self {
            Outgoing::Sotw(r) => &r.type_url,
            Outgoing::Delta(r) => &r.type_url,
        }
    }

    pub fn nonce(&self) -> &str {
        match self {
            Outgoing::Sotw(r) => &r.nonce,
            Outgoing::Delta(r) => &r.nonce,
        }
    }

    /// Encoded size of the resources carried.
    pub fn resource_bytes(&self) -> usize {
        match self {
            Outgoing::Sotw(r) => r.resources.iter().map(|a| a.value.len()).sum(),
            Outgoing::Delta(r) => r
                .resources
                .iter()
                .filter_map(|d| d.resource.as_ref())
                .map(|a| a.value.len())
                .sum(),
        }
    }

    pub fn resource_count(&self) -> usize {
        match self {
            Outgoing::Sotw(r) => r.resources.len(),
            Outgoing::Delta(r) => r.resources.len(),
        }
    }
}

/// Per-type subscription and delivery state, public for debug endpoints.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// The proxy wants every resource of the type (LDS/CDS).
    pub wildcard: bool,
    /// Explicitly subscribed names (EDS/RDS).
    pub names: BTreeSet<String>,
    /// Name → version the proxy holds, as far as this server knows.
    pub sent: BTreeMap<String, String>,
    pub last_sent_nonce: Option<String>,
    pub acked_nonce: Option<String>,
    /// The last sent response is neither ACKed nor NACKed yet.
    pub pending: bool,
    /// A change arrived while `pending`: push once the proxy answers.
    owed: bool,
    /// Resend everything subscribed, even unchanged (EDS after CDS).
    owed_full: bool,
    pub last_error: Option<String>,
    pub nacks: u64,
    /// Set once the first response of this type has been sent.
    pub responded: bool,
}

/// What [`Connection`] reports about a NACK, for logs and counters at the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    pub type_url: String,
    pub nonce: String,
    pub error: String,
}

pub struct Connection {
    pub id: String,
    proxy: Proxy,
    /// Labels from node metadata, used when the pod is not (yet) known.
    metadata_labels: BTreeMap<String, String>,
    flavor: Flavor,
    watches: BTreeMap<String, Watch>,
    nonce_counter: u64,
    control_plane: ControlPlane,
    /// NACKs seen since the edge last drained them.
    nacks: Vec<Nack>,
}

impl Connection {
    pub fn new(id: String, proxy: Proxy, flavor: Flavor, control_plane_id: &str) -> Self {
        Connection {
            id,
            metadata_labels: proxy.labels.clone(),
            proxy,
            flavor,
            watches: BTreeMap::new(),
            nonce_counter: 0,
            control_plane: ControlPlane {
                identifier: control_plane_id.to_string(),
            },
            nacks: Vec::new(),
        }
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn watches(&self) -> &BTreeMap<String, Watch> {
        &self.watches
    }

    /// Some type has a change waiting for the proxy to answer its previous response.
    pub fn owes_push(&self) -> bool {
        self.watches.values().any(|w| w.owed)
    }

    /// NACKs recorded since the last call.
    pub fn take_nacks(&mut self) -> Vec<Nack> {
        std::mem::take(&mut self.nacks)
    }

    /// Pod labels win over metadata labels, as istiod does.
    fn refresh_proxy(&mut self, ctx: &PushContext) {
        self.proxy.labels = self.metadata_labels.clone();
        self.proxy.refresh_labels(ctx.cache.snapshot());
    }

    // ---- state of the world -------------------------------------------------------------

    pub fn on_sotw_request(&mut self, req: DiscoveryRequest, ctx: &PushContext) -> Vec<Outgoing> {
        self.refresh_proxy(ctx);
        let kind = ResourceType::from_type_url(&req.type_url);
        let watch = self.watches.entry(req.type_url.clone()).or_default();
        if req.response_nonce.is_empty() {
            // First request for this type, or a reconnect: start over with the full state.
            watch.wildcard = kind.is_none_or(ResourceType::is_wildcard);
            watch.names = req.resource_names.iter().cloned().collect();
            watch.sent.clear();
            watch.pending = false;
            return self.reply(&req.type_url, ctx, Scope::All, true);
        }
        if watch.last_sent_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            return Vec::new(); // stale
        }
        let first_answer = std::mem::take(&mut watch.pending);
        if let Some(status) = req.error_detail {
            // Only the first answer to a response counts; Envoy repeating it is no new NACK.
            if !first_answer {
                return Vec::new();
            }
            let nack = self.record_nack(&req.type_url, &req.response_nonce, &status.message);
            self.nacks.push(nack);
            return self.settle_owed(&req.type_url, ctx);
        }
        watch.acked_nonce = Some(req.response_nonce.clone());
        watch.last_error = None;
        let mut added = false;
        if !watch.wildcard {
            let requested: BTreeSet<String> = req.resource_names.into_iter().collect();
            added = requested.iter().any(|n| !watch.names.contains(n));
            watch.sent.retain(|name, _| requested.contains(name));
            watch.names = requested;
        }
        if added && !watch.owed_full {
            return self.reply(&req.type_url, ctx, Scope::All, false);
        }
        self.settle_owed(&req.type_url, ctx)
    }

    // ---- delta --------------------------------------------------------------------------

    pub fn on_delta_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        ctx: &PushContext,
    ) -> Vec<Outgoing> {
        self.refresh_proxy(ctx);
        let kind = ResourceType::from_type_url(&req.type_url);
        let is_new = !self.watches.contains_key(&req.type_url);
        let watch = self.watches.entry(req.type_url.clone()).or_default();
        if is_new {
            let explicit: BTreeSet<String> = req
                .resource_names_subscribe
                .iter()
                .filter(|n| *n != "*")
                .cloned()
                .collect();
            watch.wildcard = kind.is_none_or(ResourceType::is_wildcard)
                && (explicit.is_empty() || req.resource_names_subscribe.iter().any(|n| n == "*"));
            // Versions the proxy already holds (after a reconnect) count as subscriptions.
            watch.names = explicit;
            for (name, version) in &req.initial_resource_versions {
                if !watch.wildcard {
                    watch.names.insert(name.clone());
                }
                watch.sent.insert(name.clone(), version.clone());
            }
            return self.reply(&req.type_url, ctx, Scope::All, true);
        }
        let answered = !req.response_nonce.is_empty()
            && watch.pending
            && watch.last_sent_nonce.as_deref() == Some(req.response_nonce.as_str());
        if answered {
            watch.pending = false;
            match &req.error_detail {
                Some(status) => {
                    let message = status.message.clone();
                    let nack = self.record_nack(&req.type_url, &req.response_nonce, &message);
                    self.nacks.push(nack);
                }
                None => {
                    watch.acked_nonce = Some(req.response_nonce.clone());
                    watch.last_error = None;
                }
            }
        }
        let watch = self.watches.get_mut(&req.type_url).expect("watch exists");
        let mut added = BTreeSet::new();
        for name in &req.resource_names_subscribe {
            if name == "*" {
                watch.wildcard = true;
            } else if watch.names.insert(name.clone()) {
                added.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                watch.wildcard = false;
            } else {
                watch.names.remove(name);
                watch.sent.remove(name);
            }
        }
        let mut out = Vec::new();
        if !added.is_empty() {
            out.extend(self.reply(&req.type_url, ctx, Scope::Names(added), false));
        }
        if answered {
            out.extend(self.settle_owed(&req.type_url, ctx));
        }
        out
    }

    // ---- pushes -------------------------------------------------------------------------

    /// A new snapshot was published. `changes` is everything that changed since the snapshot
    /// this connection last saw, or `None` when that is unknown (then every type is checked).
    pub fn on_push(&mut self, ctx: &PushContext, changes: Option<&ChangeSet>) -> Vec<Outgoing> {
        self.refresh_proxy(ctx);
        let affected = match changes {
            Some(c) if !c.pods.contains(&self.pod_key()) => affected_types(c, ctx.cache.snapshot()),
            _ => TypeSet::ALL,
        };
        let endpoint_hosts = changes
            .filter(|c| c.is_endpoints_only())
            .map(|c| &c.endpoints);
        let mut out = Vec::new();
        for kind in ResourceType::PUSH_ORDER {
            let url = kind.type_url();
            let Some(watch) = self.watches.get_mut(url) else {
                continue;
            };
            if !affected.contains(kind) || !watch.responded {
                continue;
            }
            if watch.pending {
                watch.owed = true;
                continue;
            }
            let scope = match (kind, endpoint_hosts) {
                (ResourceType::Endpoint, Some(hosts)) => Scope::Names(
                    watch
                        .names
                        .iter()
                        .filter(|n| {
                            meshpilot_translate::names::parse_cluster_name(n)
                                .is_some_and(|p| hosts.contains(p.host))
                        })
                        .cloned()
                        .collect(),
                ),
                _ => Scope::All,
            };
            out.extend(self.reply(url, ctx, scope, false));
        }
        out
    }

    fn pod_key(&self) -> meshpilot_model::ObjectKey {
        meshpilot_model::ObjectKey::new(&self.proxy.namespace, &self.proxy.pod_name)
    }

    fn record_nack(&mut self, type_url: &str, nonce: &str, error: &str) -> Nack {
        let watch = self.watches.get_mut(type_url).expect("watch exists");
        watch.nacks += 1;
        watch.last_error = Some(error.to_string());
        Nack {
            type_url: type_url.to_string(),
            nonce: nonce.to_string(),
            error: error.to_string(),
        }
    }

    /// After an ACK or NACK: deliver what became owed while the push was in flight.
    fn settle_owed(&mut self, type_url: &str, ctx: &PushContext) -> Vec<Outgoing> {
        let watch = self.watches.get_mut(type_url).expect("watch exists");
        if !(watch.owed || watch.owed_full) {
            return Vec::new();
        }
        watch.owed = false;
        self.reply(type_url, ctx, Scope::All, false)
    }

    /// Builds the response for one type: the resources in `scope` whose version differs from
    /// what the proxy holds (all of them when `always` or when a full resend is owed). Returns
    /// nothing when there is nothing to say, unless `always`.
    fn reply(
        &mut self,
        type_url: &str,
        ctx: &PushContext,
        scope: Scope,
        always: bool,
    ) -> Vec<Outgoing> {
        let kind = ResourceType::from_type_url(type_url);
        let flavor = self.flavor;
        let proxy = &self.proxy;
        let watch = self.watches.get_mut(type_url).expect("watch exists");
        let force = std::mem::take(&mut watch.owed_full);
        let generated: Vec<Arc<Resource>> = match kind {
            None => Vec::new(),
            Some(ResourceType::Cluster) => ctx.cache.clusters(proxy).to_vec(),
            Some(ResourceType::Listener) => ctx.cache.listeners(proxy).to_vec(),
            Some(kind) => {
                let names: Vec<&String> = match &scope {
                    Scope::All => watch.names.iter().collect(),
                    Scope::Names(names) => {
                        names.iter().filter(|n| watch.names.contains(*n)).collect()
                    }
                };
                if kind == ResourceType::Route {
                    ctx.cache.routes(proxy, names)
                } else {
                    ctx.cache.endpoints(proxy, names)
                }
            }
        };
        let changed: Vec<&Arc<Resource>> = generated
            .iter()
            .filter(|r| force || watch.sent.get(&r.name) != Some(&r.version))
            .collect();
        let removed: Vec<String> = if watch.wildcard && matches!(scope, Scope::All) {
            let live: BTreeSet<&str> = generated.iter().map(|r| r.name.as_str()).collect();
            watch
                .sent
                .keys()
                .filter(|n| !live.contains(n.as_str()))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if changed.is_empty() && removed.is_empty() && !always {
            return Vec::new();
        }
        self.nonce_counter += 1;
        let nonce = format!("{}-{}", ctx.version_info, self.nonce_counter);
        let watch = self.watches.get_mut(type_url).expect("watch exists");
        for name in &removed {
            watch.sent.remove(name);
        }
        for r in &changed {
            watch.sent.insert(r.name.clone(), r.version.clone());
        }
        watch.last_sent_nonce = Some(nonce.clone());
        watch.pending = true;
        watch.responded = true;
        let response = match flavor {
            Flavor::Sotw => {
                // LDS/CDS responses must hold the full set; EDS/RDS may hold just the changes.
                let resources = if watch.wildcard || kind.is_none() {
                    generated.iter().map(|r| r.body.clone()).collect()
                } else {
                    changed.iter().map(|r| r.body.clone()).collect()
                };
                Outgoing::Sotw(DiscoveryResponse {
                    version_info: ctx.version_info.clone(),
                    resources,
                    type_url: type_url.to_string(),
                    nonce,
                    control_plane: Some(self.control_plane.clone()),
                    ..Default::default()
                })
            }
            Flavor::Delta => Outgoing::Delta(DeltaDiscoveryResponse {
                system_version_info: ctx.version_info.clone(),
                resources: changed
                    .iter()
                    .map(|r| DeltaResource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.body.clone()),
                        ..Default::default()
                    })
                    .collect(),
                removed_resources: removed,
                type_url: type_url.to_string(),
                nonce,
                control_plane: Some(self.control_plane.clone()),
                ..Default::default()
            }),
        };
        let mut out = vec![response];
        if kind == Some(ResourceType::Cluster) && !changed.is_empty() {
            out.extend(self.rewarm_endpoints(ctx));
        }
        out
    }

    /// Updated clusters re-enter warming and wait for their assignments again: resend every
    /// subscribed EDS resource, now (delta) or on the proxy's next EDS request (SotW, where a
    /// re-subscription with unchanged names still expects an answer).
    fn rewarm_endpoints(&mut self, ctx: &PushContext) -> Vec<Outgoing> {
        let url = ResourceType::Endpoint.type_url();
        let Some(watch) = self.watches.get_mut(url) else {
            return Vec::new();
        };
        watch.owed_full = true;
        if self.flavor == Flavor::Delta && !watch.pending && watch.responded {
            return self.reply(url, ctx, Scope::All, false);
        }
        Vec::new()
    }
}

/// Which subscribed resources a reply considers.
enum Scope {
    All,
    Names(BTreeSet<String>),
}

#[cfg(test)]
mod tests;
