//! The Kubernetes API source: kube-rs watchers for every kind the mesh reads, feeding the same
//! index as the file source.
//!
//! One watcher task per kind turns watch events into [`Update`]s; a single ingest task owns the
//! reflector-style stores and is the only writer of the index. A (re)list — the watcher's
//! `Init`, `InitApply`…, `InitDone` — is buffered and replaces that kind's state in one
//! [`Index::reset`], so a half-listed state is never published. Watch failures (API server
//! restarts, 410 Gone, network errors) are retried with kube-rs' default backoff and end in a
//! relist, which the reset makes idempotent: nothing is lost or duplicated.
//!
//! Objects are converted to model objects as they arrive and the API objects dropped, so
//! `managedFields`, annotations and every field the model does not use are never kept.

use crate::SourceError;
use crate::convert::{
    build_endpoint_slice, build_endpoints, build_namespace, build_pod, build_service,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use meshpilot_model::{ChangeSet, Index, Kind, Object, ObjectKey};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Which EndpointSlice API the server offers, detected at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    SlicesV1,
    SlicesV1beta1,
    /// No EndpointSlice API: core/v1 Endpoints.
    Endpoints,
}

#[derive(Clone, Debug, Default)]
pub struct KubernetesConfig {
    /// Only namespaces matching this label selector (and the objects in them) are part of the
    /// mesh; `None` means every namespace.
    pub namespace_selector: Option<String>,
}

/// A client from `kubeconfig`, else the in-cluster service account, `$KUBECONFIG` or
/// `~/.kube/config`, in kube-rs' usual order.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, SourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| SourceError::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| SourceError::KubeConfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| SourceError::KubeConfig(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

/// Detects the EndpointSlice API: discovery.k8s.io/v1, else v1beta1, else Endpoints.
pub async fn detect_endpoint_source(client: &Client) -> EndpointSource {
    for (version, source) in [
        ("discovery.k8s.io/v1", EndpointSource::SlicesV1),
        ("discovery.k8s.io/v1beta1", EndpointSource::SlicesV1beta1),
    ] {
        if let Ok(list) = client.list_api_group_resources(version).await
            && list.resources.iter().any(|r| r.name == "endpointslices")
        {
            return source;
        }
    }
    EndpointSource::Endpoints
}

/// One watch event, already converted.
#[derive(Debug)]
enum Update {
    /// A (re)list starts: buffer until `InitDone`.
    Init(Kind),
    InitItem(Kind, Object),
    InitDone(Kind),
    Apply(Kind, Object),
    Delete(Kind, ObjectKey),
}

/// Runs the source until the client is dropped: watches every kind, keeps the index current,
/// sends each change set to `changes`, and flips `synced` to true once every kind has listed.
pub async fn run(
    client: Client,
    config: KubernetesConfig,
    index: Arc<Mutex<Index>>,
    changes: mpsc::UnboundedSender<ChangeSet>,
    synced: watch::Sender<bool>,
) -> Result<(), SourceError> {
    let endpoints = detect_endpoint_source(&client).await;
    tracing::info!(?endpoints, "endpoint source detected");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut kinds = vec![Kind::Service, Kind::Pod, Kind::Namespace];

    spawn_typed::<core::Service>(&client, Kind::Service, &tx, |s| {
        build_service(s).map(|s| Some(Object::Service(s)))
    });
    spawn_typed::<core::Pod>(&client, Kind::Pod, &tx, |p| {
        build_pod(p).map(|p| Some(Object::Pod(Arc::new(p))))
    });
    let mut namespaces = watcher::Config::default();
    if let Some(selector) = &config.namespace_selector {
        namespaces = namespaces.labels(selector);
    }
    spawn_watcher(
        Api::<core::Namespace>::all(client.clone()),
        namespaces,
        Kind::Namespace,
        tx.clone(),
        |n| build_namespace(n).map(|n| Some(Object::Namespace(n))),
    );
    match endpoints {
        EndpointSource::SlicesV1 => {
            kinds.push(Kind::EndpointSlice);
            spawn_typed::<discovery::EndpointSlice>(&client, Kind::EndpointSlice, &tx, |s| {
                build_endpoint_slice(s).map(|g| g.map(|g| Object::EndpointSlice(Arc::new(g))))
            });
        }
        EndpointSource::SlicesV1beta1 => {
            kinds.push(Kind::EndpointSlice);
            let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
            spawn_dynamic(&client, gvk, "endpointslices", Kind::EndpointSlice, &tx);
        }
        EndpointSource::Endpoints => {
            kinds.push(Kind::Endpoints);
            spawn_typed::<core::Endpoints>(&client, Kind::Endpoints, &tx, |e| {
                build_endpoints(e).map(|g| Some(Object::Endpoints(Arc::new(g))))
            });
        }
    }
    for (kind, name) in [
        (Kind::VirtualService, "VirtualService"),
        (Kind::DestinationRule, "DestinationRule"),
    ] {
        kinds.push(kind);
        let gvk = GroupVersionKind::gvk(meshpilot_api::ISTIO_NETWORKING_GROUP, "v1", name);
        let plural = format!("{}s", name.to_ascii_lowercase());
        spawn_dynamic(&client, gvk, &plural, kind, &tx);
    }
    drop(tx);
    let mut ingest = Ingest::new(kinds, config.namespace_selector.is_some(), index);
    ingest.run(rx, changes, synced).await;
    Ok(())
}

fn spawn_typed<K>(
    client: &Client,
    kind: Kind,
    tx: &mpsc::UnboundedSender<Update>,
    convert: fn(&K) -> Result<Option<Object>, crate::convert::ConvertError>,
) where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    spawn_watcher(
        Api::<K>::all(client.clone()),
        watcher::Config::default(),
        kind,
        tx.clone(),
        convert,
    );
}

/// Kinds read as untyped JSON: Istio configs (an invalid one must be skipped alone, not fail
/// the whole list) and v1beta1 EndpointSlices (no typed form in k8s-openapi).
fn spawn_dynamic(
    client: &Client,
    gvk: GroupVersionKind,
    plural: &str,
    kind: Kind,
    tx: &mpsc::UnboundedSender<Update>,
) {
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let api_version = resource.api_version.clone();
    let kind_name = resource.kind.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let convert = move |o: &DynamicObject| {
            let mut value = serde_json::to_value(o)
                .map_err(|e| crate::convert::ConvertError::new("", e.to_string()))?;
            // List items may come without their type; the conversion keys on it.
            value["apiVersion"] = api_version.clone().into();
            value["kind"] = kind_name.clone().into();
            crate::object_from_json(value)
        };
        watch_kind(api, watcher::Config::default(), kind, tx, convert).await;
    });
}

fn spawn_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    tx: mpsc::UnboundedSender<Update>,
    convert: fn(&K) -> Result<Option<Object>, crate::convert::ConvertError>,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(watch_kind(api, config, kind, tx, convert));
}

async fn watch_kind<K, F>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    tx: mpsc::UnboundedSender<Update>,
    convert: F,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    F: Fn(&K) -> Result<Option<Object>, crate::convert::ConvertError>,
{
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let update = match event {
            Ok(Event::Init) => Some(Update::Init(kind)),
            Ok(Event::InitApply(o)) => {
                converted(kind, &o, &convert).map(|x| Update::InitItem(kind, x))
            }
            Ok(Event::InitDone) => Some(Update::InitDone(kind)),
            Ok(Event::Apply(o)) => converted(kind, &o, &convert).map(|x| Update::Apply(kind, x)),
            Ok(Event::Delete(o)) => Some(Update::Delete(kind, key_of(kind, &o))),
            Err(e) => {
                tracing::warn!(
                    kind = kind.as_str(),
                    "watch failed: {e}; retrying with backoff"
                );
                None
            }
        };
        if let Some(update) = update
            && tx.send(update).is_err()
        {
            return;
        }
    }
}

fn key_of<K: Resource>(kind: Kind, o: &K) -> ObjectKey {
    let namespace = if kind == Kind::Namespace {
        String::new()
    } else {
        o.namespace().unwrap_or_default()
    };
    ObjectKey::new(namespace, o.name_any())
}

/// Converts, logging and skipping what does not convert.
fn converted<K: Resource>(
    kind: Kind,
    o: &K,
    convert: &impl Fn(&K) -> Result<Option<Object>, crate::convert::ConvertError>,
) -> Option<Object> {
    match convert(o) {
        Ok(object) => object,
        Err(e) => {
            tracing::warn!(
                kind = kind.as_str(),
                namespace = %o.namespace().unwrap_or_default(),
                name = %o.name_any(),
                field = %e.field,
                reason = %e.message,
                "invalid object skipped"
            );
            None
        }
    }
}

/// The single writer: per-kind stores, relist buffering and the namespace filter.
struct Ingest {
    kinds: Vec<Kind>,
    stores: BTreeMap<Kind, BTreeMap<ObjectKey, Object>>,
    listing: BTreeMap<Kind, BTreeMap<ObjectKey, Object>>,
    synced: BTreeSet<Kind>,
    /// With a namespace selector: the namespaces that match it.
    selected: Option<BTreeSet<String>>,
    index: Arc<Mutex<Index>>,
}

impl Ingest {
    fn new(kinds: Vec<Kind>, filtered: bool, index: Arc<Mutex<Index>>) -> Self {
        Ingest {
            kinds,
            stores: BTreeMap::new(),
            listing: BTreeMap::new(),
            synced: BTreeSet::new(),
            selected: filtered.then(BTreeSet::new),
            index,
        }
    }

    async fn run(
        &mut self,
        mut updates: mpsc::UnboundedReceiver<Update>,
        changes: mpsc::UnboundedSender<ChangeSet>,
        synced: watch::Sender<bool>,
    ) {
        while let Some(update) = updates.recv().await {
            let change = self.handle(update);
            if !change.is_empty() && changes.send(change).is_err() {
                return;
            }
            if !*synced.borrow() && self.kinds.iter().all(|k| self.synced.contains(k)) {
                tracing::info!("initial sync of every kind finished");
                synced.send_replace(true);
            }
        }
    }

    fn visible(&self, key: &ObjectKey, kind: Kind) -> bool {
        match &self.selected {
            None => true,
            Some(_) if kind == Kind::Namespace => true,
            Some(selected) => selected.contains(&key.namespace),
        }
    }

    fn visible_objects(&self, kind: Kind) -> Vec<Object> {
        self.stores
            .get(&kind)
            .map(|store| {
                store
                    .iter()
                    .filter(|(key, _)| self.visible(key, kind))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn handle(&mut self, update: Update) -> ChangeSet {
        match update {
            Update::Init(kind) => {
                self.listing.insert(kind, BTreeMap::new());
                ChangeSet::default()
            }
            Update::InitItem(kind, object) => {
                self.listing
                    .entry(kind)
                    .or_default()
                    .insert(object.key(), object);
                ChangeSet::default()
            }
            Update::InitDone(kind) => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                self.synced.insert(kind);
                if kind == Kind::Namespace && self.selected.is_some() {
                    self.selected = Some(listed.keys().map(|k| k.name.clone()).collect());
                    self.stores.insert(kind, listed);
                    return self.reset_all();
                }
                self.stores.insert(kind, listed);
                let objects = self.visible_objects(kind);
                self.index.lock().expect("index lock").reset(kind, objects)
            }
            Update::Apply(kind, object) => {
                let key = object.key();
                if kind == Kind::Namespace
                    && let Some(selected) = &mut self.selected
                    && selected.insert(key.name.clone())
                {
                    self.stores.entry(kind).or_default().insert(key, object);
                    return self.reset_all();
                }
                self.stores
                    .entry(kind)
                    .or_default()
                    .insert(key.clone(), object.clone());
                if self.visible(&key, kind) {
                    self.index.lock().expect("index lock").apply(object)
                } else {
                    ChangeSet::default()
                }
            }
            Update::Delete(kind, key) => {
                self.stores.entry(kind).or_default().remove(&key);
                if kind == Kind::Namespace
                    && let Some(selected) = &mut self.selected
                    && selected.remove(&key.name)
                {
                    return self.reset_all();
                }
                self.index.lock().expect("index lock").delete(kind, &key)
            }
        }
    }

    /// The set of visible namespaces changed: every kind is re-derived from its store.
    fn reset_all(&mut self) -> ChangeSet {
        let mut change = ChangeSet::default();
        let kinds: Vec<Kind> = self.stores.keys().copied().collect();
        for kind in kinds {
            let objects = self.visible_objects(kind);
            change.merge(self.index.lock().expect("index lock").reset(kind, objects));
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::fixtures::{mk_pod, mk_service};

    fn ingest(filtered: bool) -> Ingest {
        Ingest::new(
            vec![Kind::Service, Kind::Pod, Kind::Namespace],
            filtered,
            Arc::new(Mutex::new(Index::default())),
        )
    }

    fn svc(ns: &str, name: &str) -> Object {
        Object::Service(mk_service(ns, name, "10.96.0.10", &[("http", 80)]))
    }

    fn ns(name: &str) -> Object {
        Object::Namespace(meshpilot_model::Namespace {
            name: name.into(),
            labels: Default::default(),
        })
    }

    #[test]
    fn a_relist_replaces_state_in_one_step() {
        let mut i = ingest(false);
        i.handle(Update::Init(Kind::Service));
        i.handle(Update::InitItem(Kind::Service, svc("default", "a")));
        i.handle(Update::InitItem(Kind::Service, svc("default", "b")));
        assert!(
            i.index.lock().unwrap().keys(Kind::Service).is_empty(),
            "nothing reaches the index mid-list"
        );
        let change = i.handle(Update::InitDone(Kind::Service));
        assert_eq!(change.services.len(), 2);
        // A relist after a watch failure: b is gone, c is new, a unchanged.
        i.handle(Update::Init(Kind::Service));
        i.handle(Update::InitItem(Kind::Service, svc("default", "a")));
        i.handle(Update::InitItem(Kind::Service, svc("default", "c")));
        let change = i.handle(Update::InitDone(Kind::Service));
        let names: Vec<String> = change.services.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            names,
            ["b.default.svc.cluster.local", "c.default.svc.cluster.local"]
        );
        assert_eq!(i.index.lock().unwrap().keys(Kind::Service).len(), 2);
    }

    #[test]
    fn namespace_selector_hides_and_reveals_objects() {
        let mut i = ingest(true);
        i.handle(Update::Init(Kind::Namespace));
        i.handle(Update::InitItem(Kind::Namespace, ns("shop")));
        i.handle(Update::InitDone(Kind::Namespace));
        i.handle(Update::Apply(Kind::Service, svc("shop", "cart")));
        i.handle(Update::Apply(Kind::Service, svc("other", "hidden")));
        i.handle(Update::Apply(
            Kind::Pod,
            Object::Pod(Arc::new(mk_pod("other", "p", "10.0.0.1", &[]))),
        ));
        assert_eq!(i.index.lock().unwrap().keys(Kind::Service).len(), 1);
        let change = i.handle(Update::Apply(Kind::Namespace, ns("other")));
        assert!(change.services.contains("hidden.other.svc.cluster.local"));
        assert_eq!(i.index.lock().unwrap().keys(Kind::Pod).len(), 1);
        let change = i.handle(Update::Delete(Kind::Namespace, ObjectKey::new("", "shop")));
        assert!(change.services.contains("cart.shop.svc.cluster.local"));
        assert_eq!(i.index.lock().unwrap().keys(Kind::Service).len(), 1);
    }

    #[test]
    fn deletes_reach_the_index() {
        let mut i = ingest(false);
        i.handle(Update::Apply(Kind::Service, svc("default", "a")));
        let change = i.handle(Update::Delete(
            Kind::Service,
            ObjectKey::new("default", "a"),
        ));
        assert!(change.services.contains("a.default.svc.cluster.local"));
        assert!(i.index.lock().unwrap().keys(Kind::Service).is_empty());
    }
}
