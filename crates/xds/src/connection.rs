//! One proxy's ADS stream as a state machine with no I/O: requests and snapshot changes go in,
//! responses come out. The ADS service only moves messages between the stream and this.
//!
//! Rules (xDS protocol, as istiod applies them):
//! - per type, a response carries a nonce; a request echoing it ACKs (or, with
//!   `error_detail`, NACKs) it; a request echoing any older nonce is stale and ignored;
//! - a NACK is logged and counted, and nothing is resent: the proxy keeps its last accepted
//!   config until a newer change produces different resources;
//! - at most one push per type is un-ACKed; a change arriving meanwhile is owed and pushed on
//!   the ACK, or, when the edge queues change pushes ([`Connection::queue_change_pushes`]),
//!   once the edge calls [`Connection::push_owed`];
//! - what is sent is a diff against what the proxy is known to hold, so a proxy whose
//!   config did not change is sent nothing;
//! - LDS/CDS are wildcard; EDS/RDS follow the names the proxy subscribes to; VHDS names a route
//!   configuration and is answered with (and told of removals from) all of its virtual hosts;
//! - after CDS is answered, EDS is answered in full once more: updated clusters re-enter
//!   warming and need their assignments again;
//! - types this server does not serve get an empty answer and never end the stream.

use crate::delta_request::{DeltaRequest, HeldVersions, sort_names_for_matching};
use crate::request::{SotwRequest, fingerprint_name_bytes, fingerprint_names};
use crate::resources::{NameSet, Resource, ResourceCache, Resources, SetDiff};
use crate::response::{Batch, DeltaResponse, SotwResponse};
use crate::types::{ByTypeUrl, ResourceType, TypeSet, type_url_key};
use bytes::Bytes;
use meshpilot_model::{ObjectKey, Proxy};
use meshpilot_translate::vhds::route_config_of;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The state of the world a push is computed from.
pub struct PushContext {
    pub cache: Arc<ResourceCache>,
    /// `<RFC 3339 time>/<counter>`, sent as `version_info` / `system_version_info`.
    pub version_info: Arc<str>,
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
    Sotw(SotwResponse),
    Delta(DeltaResponse),
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

    fn resources(&self) -> &[Arc<Resource>] {
        match self {
            Outgoing::Sotw(r) => &r.resources,
            Outgoing::Delta(r) => &r.resources,
        }
    }

    /// Encoded size of the resources carried.
    pub fn resource_bytes(&self) -> usize {
        self.resources().iter().map(|r| r.any.len()).sum()
    }

    pub fn resource_count(&self) -> usize {
        self.resources().len()
    }
}

/// What the proxy holds of one type, as far as this server knows.
#[derive(Clone, Debug)]
pub enum Held {
    /// Exactly a set this server sent (the usual case: shared with every proxy of its class).
    Set(Resources),
    /// Name → version, as a delta client announced after reconnecting (slices of the
    /// request itself, kept until the first reply).
    Versions(Arc<HeldVersions>),
}

impl Default for Held {
    fn default() -> Self {
        Held::Set(Arc::default())
    }
}

impl Held {
    pub fn names(&self) -> Vec<&str> {
        match self {
            Held::Set(set) => set.iter().map(|r| &*r.name).collect(),
            Held::Versions(versions) => versions.names().collect(),
        }
    }

    fn version_of(&self, name: &str) -> Option<&str> {
        match self {
            Held::Set(set) => set.get(name).map(|r| &*r.version),
            Held::Versions(versions) => versions.get(name),
        }
    }
}

/// Per-type subscription and delivery state, public for debug endpoints.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// The proxy wants every resource of the type (LDS/CDS).
    pub wildcard: bool,
    /// Explicitly subscribed names (EDS/RDS), interned.
    pub names: Arc<NameSet>,
    /// Fingerprint of the last SotW request's name list (in its order) known to spell `names`.
    /// Envoy repeats the same list on every ACK; the decoder recognises the list that first
    /// spelled the set ([`NameSet::sotw_spelling`]), and this recognises any other order
    /// without comparing thousands of names.
    request_fingerprint: Option<u128>,
    /// What the proxy holds.
    pub held: Held,
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

impl Watch {
    /// A change is owed and no push is in flight, so it can be pushed now. (Only a watch that
    /// was answered once is ever owed a change: see [`Connection::on_push`].)
    fn owed_and_idle(&self) -> bool {
        self.owed && !self.pending
    }

    /// Takes a SotW request's names as the subscription; says whether they differ from it.
    fn update_names(&mut self, request: &SotwRequest, ctx: &PushContext) -> bool {
        // Most requests are ACKs repeating the list, which the decoder recognised.
        if let Some(spelling) = self.names.sotw_spelling()
            && request.repeats(spelling)
        {
            return false;
        }
        let fingerprint = request.names_fingerprint();
        let names = if self.request_fingerprint == Some(fingerprint) {
            self.names.clone()
        } else {
            ctx.cache
                .intern_list(fingerprint, || NameSet::new(request.names()))
        };
        self.request_fingerprint = Some(fingerprint);
        names.spelled_by(|| request.shared_names());
        // Interned: the same names are the same set.
        let changed = !Arc::ptr_eq(&names, &self.names) && *names != *self.names;
        self.names = names;
        changed
    }
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
    /// The proxy's pod, `namespace/name`, fixed for the connection.
    pod_key: ObjectKey,
    /// Labels from node metadata, used when the pod is not (yet) known.
    metadata_labels: Arc<BTreeMap<String, String>>,
    /// The snapshot version the proxy's labels were last taken from.
    labels_as_of: Option<u64>,
    flavor: Flavor,
    watches: ByTypeUrl<Watch>,
    nonce_counter: u64,
    control_plane: Arc<str>,
    /// NACKs seen since the edge last drained them.
    nacks: Vec<Nack>,
    /// A VHDS stream's route configuration, named by the stream rather than its requests.
    virtual_host_scope: Option<Arc<str>>,
    /// Owed changes wait for [`Connection::push_owed`] instead of following the ACK.
    queue_change_pushes: bool,
}

impl Connection {
    pub fn new(id: String, proxy: Proxy, flavor: Flavor, control_plane_id: &str) -> Self {
        Connection {
            id,
            pod_key: ObjectKey::new(&*proxy.namespace, &proxy.pod_name),
            metadata_labels: proxy.labels.clone(),
            labels_as_of: None,
            proxy,
            flavor,
            watches: ByTypeUrl::new(),
            nonce_counter: 0,
            control_plane: control_plane_id.into(),
            nacks: Vec::new(),
            virtual_host_scope: None,
            queue_change_pushes: false,
        }
    }

    /// A VHDS stream for one route configuration. Envoy names nothing in its requests there
    /// (it matches the hosts it is sent by their `<configuration>/` prefix), so a VHDS
    /// subscription that names nothing stands for this configuration.
    pub fn scope_virtual_hosts_to(&mut self, route_config: Arc<str>) {
        self.virtual_host_scope = Some(route_config);
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The proxy's own pod: when it changes, every type is recomputed for this proxy.
    pub fn pod_key(&self) -> &ObjectKey {
        &self.pod_key
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn watches(&self) -> &ByTypeUrl<Watch> {
        &self.watches
    }

    /// Some type has a change waiting for the proxy to answer its previous response.
    pub fn owes_push(&self) -> bool {
        self.watches.values().any(|w| w.owed)
    }

    /// Changes owed to the proxy are no longer pushed when it answers the push in flight: the
    /// edge decides when, through [`Connection::push_owed`], so that proxies take turns under
    /// load instead of each being pushed again the moment it ACKs. Answers to requests (a first
    /// request, new names, endpoints resent after clusters changed) are not held back.
    pub fn queue_change_pushes(&mut self) {
        self.queue_change_pushes = true;
    }

    /// Some type is owed a change and has no push in flight: [`Connection::push_owed`] would
    /// send something.
    pub fn can_push_owed(&self) -> bool {
        self.watches.values().any(Watch::owed_and_idle)
    }

    /// A push of one of `types` is neither ACKed nor NACKed yet.
    pub fn awaits_answer(&self, types: TypeSet) -> bool {
        ResourceType::PUSH_ORDER.into_iter().any(|kind| {
            types.contains(kind) && self.watches.get(kind.type_url()).is_some_and(|w| w.pending)
        })
    }

    /// Pushes what is owed to every type with no push in flight.
    pub fn push_owed(&mut self, ctx: &PushContext) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for kind in ResourceType::PUSH_ORDER {
            let url = kind.type_url();
            let Some(watch) = self.watches.get_mut(url) else {
                continue;
            };
            if watch.owed_and_idle() {
                watch.owed = false;
                out.extend(self.reply(url, ctx, false, None));
            }
        }
        out
    }

    /// NACKs recorded since the last call.
    pub fn take_nacks(&mut self) -> Vec<Nack> {
        std::mem::take(&mut self.nacks)
    }

    /// Pod labels win over metadata labels, as istiod does. Copies only when they differ;
    /// looks only once per snapshot (every ACK would otherwise search the pods again).
    fn refresh_proxy(&mut self, ctx: &PushContext) {
        let snapshot = ctx.cache.snapshot();
        if self.labels_as_of == Some(snapshot.version) {
            return;
        }
        self.labels_as_of = Some(snapshot.version);
        let labels = match snapshot.pod_by_key(&self.pod_key) {
            Some(pod) => &pod.labels,
            None => &self.metadata_labels,
        };
        // Held as the pod's own map: on the next push this is a pointer comparison.
        if !Arc::ptr_eq(&self.proxy.labels, labels) {
            self.proxy.labels = labels.clone();
        }
    }

    // ---- state of the world -------------------------------------------------------------

    /// The name lists this proxy's SotW requests are expected to repeat (one per subscription,
    /// in wire form), for [`SotwRequest::decode_frame_knowing`].
    pub fn sotw_name_spellings(&self) -> impl Iterator<Item = &Bytes> + Clone {
        self.watches
            .values()
            .filter(|watch| !watch.wildcard)
            .filter_map(|watch| watch.names.sotw_spelling())
            .filter(|spelling| !spelling.is_empty())
    }

    /// Takes the server's [`SotwRequest`] or (tests, tools) Envoy's `DiscoveryRequest`.
    pub fn on_sotw_request(
        &mut self,
        req: impl Into<SotwRequest>,
        ctx: &PushContext,
    ) -> Vec<Outgoing> {
        let req: SotwRequest = req.into();
        self.refresh_proxy(ctx);
        let kind = ResourceType::from_type_url(&req.type_url);
        let watch = self.watches.entry(type_url_key(&req.type_url)).or_default();
        if req.response_nonce.is_empty() {
            // First request for this type, or a reconnect: start over with the full state.
            watch.wildcard = kind.is_none_or(ResourceType::is_wildcard);
            watch.update_names(&req, ctx);
            watch.held = Held::default();
            watch.pending = false;
            return self.reply(&req.type_url, ctx, true, None);
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
        let resubscribed = !watch.wildcard && watch.update_names(&req, ctx);
        watch.acked_nonce = Some(req.response_nonce);
        watch.last_error = None;
        let owed_now = watch.owed && !self.queue_change_pushes;
        if resubscribed || owed_now || watch.owed_full {
            // New names are answered now; dropped ones leave what the proxy is known to hold.
            watch.owed = false;
            return self.reply(&req.type_url, ctx, false, None);
        }
        Vec::new()
    }

    // ---- delta --------------------------------------------------------------------------

    pub fn on_delta_request(&mut self, req: DeltaRequest, ctx: &PushContext) -> Vec<Outgoing> {
        self.refresh_proxy(ctx);
        let kind = ResourceType::from_type_url(&req.type_url);
        let is_new = !self.watches.contains_key(req.type_url.as_str());
        let virtual_host_configs = (is_new && kind == Some(ResourceType::VirtualHost))
            .then(|| self.virtual_host_subscription(&req, ctx));
        let watch = self.watches.entry(type_url_key(&req.type_url)).or_default();
        if is_new {
            // Bytes: the strings were checked when the request was decoded.
            let explicit: Vec<&[u8]> = req.subscribe.iter_bytes().filter(|n| *n != b"*").collect();
            watch.wildcard = kind.is_none_or(ResourceType::is_wildcard)
                && (explicit.is_empty() || req.subscribe.iter_bytes().any(|n| n == b"*"));
            if let Some(configs) = virtual_host_configs {
                watch.names = configs;
            } else if !watch.wildcard {
                // Versions the proxy already holds (after a reconnect) count as subscriptions.
                // Those come from a map in no particular order: sorted, sidecars of one class
                // name one list again, and its set is built once.
                let held = &req.initial_resource_versions;
                watch.names = if !held.is_empty() && explicit.iter().all(|n| held.contains_bytes(n))
                {
                    // The usual reconnect: it subscribes to what it holds, already in order,
                    // and the names are read as text only for a list not seen before.
                    let fingerprint = fingerprint_name_bytes(held.name_bytes());
                    ctx.cache
                        .intern_list(fingerprint, || NameSet::new(held.names()))
                } else {
                    let mut names: Vec<&str> = req.subscribe.iter().filter(|n| *n != "*").collect();
                    if !held.is_empty() {
                        names.extend(held.names());
                        sort_names_for_matching(&mut names);
                    }
                    let fingerprint = fingerprint_names(names.iter().copied());
                    ctx.cache.intern_list(fingerprint, || NameSet::new(names))
                };
            }
            if !req.initial_resource_versions.is_empty() {
                watch.held = Held::Versions(Arc::new(req.initial_resource_versions));
            }
            return self.reply(&req.type_url, ctx, true, None);
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
        let watch = self
            .watches
            .get_mut(req.type_url.as_str())
            .expect("watch exists");
        let mut added = Vec::new();
        let mut dropped = false;
        for name in req.subscribe.iter() {
            if name == "*" {
                watch.wildcard = true;
            } else if !watch.names.contains(name) {
                added.push(name);
            }
        }
        for name in req.unsubscribe.iter() {
            if name == "*" {
                watch.wildcard = false;
            } else if watch.names.contains(name) {
                dropped = true;
            }
        }
        if !added.is_empty() || dropped {
            let unsubscribed = &req.unsubscribe;
            let names = watch
                .names
                .iter()
                .filter(|n| !unsubscribed.iter().any(|u| u == *n))
                .chain(added.iter().copied());
            watch.names = ctx.cache.intern(NameSet::new(names));
        }
        let mut out = Vec::new();
        if !added.is_empty() {
            // Newly subscribed names are sent even when the proxy is thought to hold them: it
            // may have dropped them when it unsubscribed.
            let fresh = NameSet::new(added);
            out.extend(self.reply(&req.type_url, ctx, false, Some(&fresh)));
        }
        if answered {
            out.extend(self.settle_owed(&req.type_url, ctx));
        }
        out
    }

    /// The route configurations a new VHDS subscription stands for: those it names; else the
    /// stream's own ([`Connection::scope_virtual_hosts_to`]); else, after a reconnect, those
    /// of the virtual hosts it holds.
    fn virtual_host_subscription(&self, req: &DeltaRequest, ctx: &PushContext) -> Arc<NameSet> {
        let mut configs: Vec<&str> = req.subscribe.iter().filter(|n| *n != "*").collect();
        if configs.is_empty() {
            match &self.virtual_host_scope {
                Some(scope) => configs.push(scope),
                None => configs.extend(
                    req.initial_resource_versions
                        .names()
                        .filter_map(route_config_of),
                ),
            }
        }
        configs.sort_unstable();
        configs.dedup();
        ctx.cache.intern(NameSet::new(configs))
    }

    // ---- pushes -------------------------------------------------------------------------

    /// A new snapshot was published. `affected` are the types that can differ for this proxy
    /// from the snapshot it last saw ([`crate::Published::affected_since`]); the others are
    /// not looked at.
    pub fn on_push(&mut self, ctx: &PushContext, affected: TypeSet) -> Vec<Outgoing> {
        if affected == TypeSet::ALL || self.labels_as_of.is_none() {
            self.refresh_proxy(ctx);
        } else {
            // Fewer than all types means no change since the last snapshot this connection
            // saw touched its pod (`affected_since`): the labels it holds are current.
            self.labels_as_of = Some(ctx.cache.snapshot().version);
        }
        let mut out = Vec::new();
        for kind in ResourceType::PUSH_ORDER {
            if !affected.contains(kind) {
                continue;
            }
            let url = kind.type_url();
            let Some(watch) = self.watches.get_mut(url) else {
                continue;
            };
            if !watch.responded {
                continue;
            }
            if watch.pending {
                watch.owed = true;
                continue;
            }
            out.extend(self.reply(url, ctx, false, None));
        }
        out
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
        let owed_now = watch.owed && !self.queue_change_pushes;
        if !(owed_now || watch.owed_full) {
            return Vec::new();
        }
        watch.owed = false;
        self.reply(type_url, ctx, false, None)
    }

    /// The resources of one type this proxy should hold now.
    fn current(&self, kind: Option<ResourceType>, watch: &Watch, ctx: &PushContext) -> Resources {
        match kind {
            None => Arc::default(),
            Some(ResourceType::Cluster) => ctx.cache.clusters(&self.proxy),
            Some(ResourceType::Listener) => ctx.cache.listeners(&self.proxy),
            Some(ResourceType::Route) => ctx.cache.routes(&self.proxy, &watch.names),
            Some(ResourceType::Endpoint) => ctx.cache.endpoints(&self.proxy, &watch.names),
            Some(ResourceType::VirtualHost) => ctx.cache.virtual_hosts(&self.proxy, &watch.names),
        }
    }

    /// Builds the response for one type: the resources whose version differs from what the
    /// proxy holds (all of them when a full resend is owed, plus the `fresh` names). Returns
    /// nothing when there is nothing to say, unless `always`.
    fn reply(
        &mut self,
        type_url: &str,
        ctx: &PushContext,
        always: bool,
        fresh: Option<&NameSet>,
    ) -> Vec<Outgoing> {
        let kind = ResourceType::from_type_url(type_url);
        let watch = self.watches.get(type_url).expect("watch exists");
        let current = self.current(kind, watch, ctx);
        let force = watch.owed_full;
        let diff: Arc<SetDiff> = match &watch.held {
            Held::Set(old) => ctx.cache.diff(old, &current),
            Held::Versions(versions) => Arc::new(ctx.cache.diff_versions(versions, &current)),
        };
        let changed = if force || fresh.is_some() {
            let selected = current
                .iter()
                .filter(|r| {
                    force
                        || fresh.is_some_and(|f| {
                            subscribed_as(kind, &r.name).is_some_and(|name| f.contains(name))
                        })
                        || watch.held.version_of(&r.name) != Some(&*r.version)
                })
                .cloned()
                .collect();
            Batch::from_set(&current, selected)
        } else {
            Batch::changed_in(&current, &diff)
        };
        let removed: Vec<Arc<str>> = if watch.wildcard {
            diff.removed.clone()
        } else if kind == Some(ResourceType::VirtualHost) {
            // A virtual host gone from a configuration still subscribed: Envoy drops it only
            // when told (those of an unsubscribed configuration go with it).
            diff.removed
                .iter()
                .filter(|n| route_config_of(n).is_some_and(|c| watch.names.contains(c)))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let watch = self.watches.get_mut(type_url).expect("watch exists");
        watch.owed_full = false;
        // Whether or not anything is sent, the proxy now holds exactly `current`.
        watch.held = Held::Set(current.clone());
        if changed.is_empty() && removed.is_empty() && !always {
            return Vec::new();
        }
        self.nonce_counter += 1;
        let nonce = format!("{}-{}", ctx.version_info, self.nonce_counter);
        watch.last_sent_nonce = Some(nonce.clone());
        watch.pending = true;
        watch.responded = true;
        let any_changed = !changed.is_empty();
        let response = match self.flavor {
            Flavor::Sotw => Outgoing::Sotw(SotwResponse {
                version_info: ctx.version_info.clone(),
                // LDS/CDS responses must hold the full set; EDS/RDS may hold just the changes.
                resources: if watch.wildcard || kind.is_none() {
                    Batch::Whole(current)
                } else {
                    changed
                },
                type_url: type_url.to_string(),
                nonce,
                control_plane: self.control_plane.clone(),
            }),
            Flavor::Delta => Outgoing::Delta(DeltaResponse {
                system_version_info: ctx.version_info.clone(),
                resources: changed,
                type_url: type_url.to_string(),
                removed_resources: removed,
                nonce,
                control_plane: self.control_plane.clone(),
            }),
        };
        let mut out = vec![response];
        if kind == Some(ResourceType::Cluster) && any_changed {
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
            return self.reply(url, ctx, false, None);
        }
        Vec::new()
    }
}

/// The name a proxy subscribes to to get `resource`: its own, except that VHDS names a route
/// configuration and is answered with all of its virtual hosts.
fn subscribed_as(kind: Option<ResourceType>, resource: &str) -> Option<&str> {
    match kind {
        Some(ResourceType::VirtualHost) => route_config_of(resource),
        _ => Some(resource),
    }
}

#[cfg(test)]
mod tests;
