//! Protocol behaviour of one connection, without a network.

use super::*;
use crate::publish::Publisher;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshpilot_model::fixtures::{
    mk_destination_rule, mk_pod, mk_reviews_index, mk_slice, mk_virtual_service,
};
use meshpilot_model::{Index, Object, ProxyMetadata};
use meshpilot_translate::type_urls::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use prost::Message;
use std::collections::HashMap;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";
const PRODUCTPAGE_POD: &str = "productpage";

struct Mesh {
    index: Index,
    publisher: Publisher,
}

impl Mesh {
    fn new() -> Self {
        let mut index = mk_reviews_index(&["v1", "v2"]);
        index.apply(Object::Pod(Arc::new(mk_pod(
            "default",
            PRODUCTPAGE_POD,
            "10.244.1.20",
            &[("app", "productpage")],
        ))));
        index.apply(mk_destination_rule(
            "default",
            "reviews",
            "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n",
        ));
        index.apply(vs(90, 10));
        let (publisher, _rx) = Publisher::new(index.snapshot());
        Mesh { index, publisher }
    }

    fn ctx(&self) -> PushContext {
        let p = self.publisher.current();
        PushContext {
            cache: p.cache.clone(),
            version_info: p.version_info.clone(),
        }
    }

    /// Applies objects, publishes, and returns the types the push must look at for the
    /// productpage sidecar (as the server asks the published state).
    fn change(&mut self, objects: Vec<Object>) -> TypeSet {
        let before = self.publisher.current().version;
        let mut changes = meshpilot_model::ChangeSet::default();
        for o in objects {
            changes.merge(self.index.apply(o));
        }
        self.publisher.publish(self.index.snapshot(), changes);
        self.publisher
            .current()
            .affected_since(before, &ObjectKey::new("default", PRODUCTPAGE_POD))
    }
}

fn vs(w1: u32, w2: u32) -> Object {
    mk_virtual_service(
        "default",
        "reviews",
        &format!(
            "hosts: [reviews]\nhttp:\n- route:\n  - {{destination: {{host: reviews, subset: v1}}, weight: {w1}}}\n  - {{destination: {{host: reviews, subset: v2}}, weight: {w2}}}\n"
        ),
    )
}

fn connection(flavor: Flavor) -> Connection {
    let proxy = Proxy::from_node(
        "sidecar~10.244.1.20~productpage.default~default.svc.cluster.local",
        &ProxyMetadata::default(),
    )
    .unwrap();
    Connection::new("productpage.default-1".into(), proxy, flavor, "meshpilot")
}

fn sotw(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn nack(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 3,
            message: "rejected by test".into(),
            ..Default::default()
        }),
        ..sotw(type_url, names, nonce)
    }
}

fn one(out: Vec<Outgoing>) -> DiscoveryResponse {
    assert_eq!(out.len(), 1, "expected exactly one response, got {out:?}");
    match out.into_iter().next().unwrap() {
        Outgoing::Sotw(r) => r.to_proto(),
        other => panic!("sotw expected, got {other:?}"),
    }
}

fn delta_one(out: Vec<Outgoing>) -> DeltaDiscoveryResponse {
    assert_eq!(out.len(), 1, "expected exactly one response, got {out:?}");
    match out.into_iter().next().unwrap() {
        Outgoing::Delta(r) => r.to_proto(),
        other => panic!("delta expected, got {other:?}"),
    }
}

fn names_of_clusters(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

fn names_of_assignments(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| {
            ClusterLoadAssignment::decode(a.value.as_slice())
                .unwrap()
                .cluster_name
        })
        .collect()
}

/// Connects a SotW proxy and ACKs CDS, EDS (v1, v2), LDS and RDS "9080".
fn synced_sotw(mesh: &Mesh) -> (Connection, HashMap<&'static str, String>) {
    let mut c = connection(Flavor::Sotw);
    let ctx = mesh.ctx();
    let mut nonces = HashMap::new();
    let cds = one(c.on_sotw_request(sotw(CLUSTER, &[], ""), &ctx));
    assert!(names_of_clusters(&cds).contains(&V1.to_string()));
    assert!(
        c.on_sotw_request(sotw(CLUSTER, &[], &cds.nonce), &ctx)
            .is_empty()
    );
    nonces.insert(CLUSTER, cds.nonce);
    let eds = one(c.on_sotw_request(sotw(ENDPOINT, &[V1, V2], ""), &ctx));
    assert_eq!(names_of_assignments(&eds), [V1, V2]);
    assert!(
        c.on_sotw_request(sotw(ENDPOINT, &[V1, V2], &eds.nonce), &ctx)
            .is_empty()
    );
    nonces.insert(ENDPOINT, eds.nonce);
    let lds = one(c.on_sotw_request(sotw(LISTENER, &[], ""), &ctx));
    assert!(
        c.on_sotw_request(sotw(LISTENER, &[], &lds.nonce), &ctx)
            .is_empty()
    );
    nonces.insert(LISTENER, lds.nonce);
    let rds = one(c.on_sotw_request(sotw(ROUTE, &["9080"], ""), &ctx));
    assert_eq!(rds.resources.len(), 1);
    assert!(
        c.on_sotw_request(sotw(ROUTE, &["9080"], &rds.nonce), &ctx)
            .is_empty()
    );
    nonces.insert(ROUTE, rds.nonce);
    (c, nonces)
}

#[test]
fn ack_is_recorded_and_answered_with_nothing() {
    let mesh = Mesh::new();
    let (c, nonces) = synced_sotw(&mesh);
    let watch = &watch(&c, CLUSTER);
    assert_eq!(watch.acked_nonce.as_ref(), Some(&nonces[CLUSTER]));
    assert!(!watch.pending);
    assert!(watch.last_error.is_none());
}

#[test]
fn unchanged_config_pushes_nothing() {
    let mut mesh = Mesh::new();
    let (mut c, _) = synced_sotw(&mesh);
    // Re-applying identical objects changes nothing; even a forced full push finds no diff.
    let affected = mesh.change(vec![vs(90, 10)]);
    assert!(affected.is_empty());
    assert!(c.on_push(&mesh.ctx(), TypeSet::ALL).is_empty());
}

#[test]
fn nack_is_counted_and_never_resent() {
    let mut mesh = Mesh::new();
    let (mut c, _) = synced_sotw(&mesh);
    let affected = mesh.change(vec![vs(50, 50)]);
    let ctx = mesh.ctx();
    let rds = one(c.on_push(&ctx, affected));
    assert_eq!(rds.type_url, ROUTE);
    // The proxy rejects it: logged, counted, nothing resent.
    assert!(
        c.on_sotw_request(nack(ROUTE, &["9080"], &rds.nonce), &ctx)
            .is_empty()
    );
    let nacks = c.take_nacks();
    assert_eq!(nacks.len(), 1);
    assert_eq!(nacks[0].nonce, rds.nonce);
    assert_eq!(nacks[0].error, "rejected by test");
    assert_eq!(watch(&c, ROUTE).nacks, 1);
    assert!(!watch(&c, ROUTE).pending);
    // Repeating the NACK (Envoy re-sends its request) does not loop.
    assert!(
        c.on_sotw_request(nack(ROUTE, &["9080"], &rds.nonce), &ctx)
            .is_empty()
    );
    assert!(
        c.on_push(&ctx, TypeSet::ALL).is_empty(),
        "same config is not resent"
    );
    // A newer change is pushed.
    let affected = mesh.change(vec![vs(70, 30)]);
    let next = one(c.on_push(&mesh.ctx(), affected));
    assert_eq!(next.type_url, ROUTE);
    assert_ne!(next.nonce, rds.nonce);
}

#[test]
fn stale_nonce_is_ignored() {
    let mut mesh = Mesh::new();
    let (mut c, nonces) = synced_sotw(&mesh);
    let affected = mesh.change(vec![vs(50, 50)]);
    let ctx = mesh.ctx();
    let rds = one(c.on_push(&ctx, affected));
    // A request echoing the previous RDS nonce is stale: no answer, still pending.
    assert!(
        c.on_sotw_request(sotw(ROUTE, &["9080"], &nonces[ROUTE]), &ctx)
            .is_empty()
    );
    assert!(watch(&c, ROUTE).pending);
    assert!(
        c.on_sotw_request(sotw(ROUTE, &["9080"], &rds.nonce), &ctx)
            .is_empty()
    );
    assert!(!watch(&c, ROUTE).pending);
}

#[test]
fn at_most_one_unacked_push_per_type() {
    let mut mesh = Mesh::new();
    let (mut c, _) = synced_sotw(&mesh);
    let affected = mesh.change(vec![vs(50, 50)]);
    let first = one(c.on_push(&mesh.ctx(), affected));
    let affected = mesh.change(vec![vs(60, 40)]);
    assert!(
        c.on_push(&mesh.ctx(), affected).is_empty(),
        "held back while the first is un-ACKed"
    );
    let owed = one(c.on_sotw_request(sotw(ROUTE, &["9080"], &first.nonce), &mesh.ctx()));
    assert_eq!(owed.type_url, ROUTE);
}

#[test]
fn queued_change_pushes_wait_for_push_owed_after_the_ack() {
    let mut mesh = Mesh::new();
    let (mut c, _) = synced_sotw(&mesh);
    c.queue_change_pushes();
    let affected = mesh.change(vec![vs(50, 50)]);
    let first = one(c.on_push(&mesh.ctx(), affected));
    assert!(c.awaits_answer(TypeSet::ALL));
    let affected = mesh.change(vec![vs(60, 40)]);
    assert!(c.on_push(&mesh.ctx(), affected).is_empty());
    assert!(!c.can_push_owed(), "owed, but the first push is in flight");
    let ctx = mesh.ctx();
    assert!(
        c.on_sotw_request(sotw(ROUTE, &["9080"], &first.nonce), &ctx)
            .is_empty(),
        "the ACK does not push what is owed"
    );
    assert!(!c.awaits_answer(TypeSet::ALL));
    assert!(c.can_push_owed());
    let owed = one(c.push_owed(&ctx));
    assert_eq!(owed.type_url, ROUTE);
    assert!(!c.can_push_owed() && c.awaits_answer(TypeSet::ALL));
    let mut clusters = TypeSet::default();
    clusters.insert(ResourceType::Cluster);
    assert!(
        !c.awaits_answer(clusters),
        "only the route push is in flight"
    );
    assert!(c.push_owed(&ctx).is_empty(), "nothing is owed twice");
}

#[test]
fn queued_change_pushes_still_rewarm_endpoints_and_answer_new_names() {
    let mut mesh = Mesh::new();
    let (mut c, _) = synced_sotw(&mesh);
    c.queue_change_pushes();
    let slice = |ips: &[(&'static str, &'static str)]| {
        Object::EndpointSlice(Arc::new(mk_slice(
            "default",
            "reviews",
            &[("http", 9080)],
            ips,
        )))
    };
    let affected = mesh.change(vec![slice(&[("reviews-v1", "10.244.1.11")])]);
    let eds = one(c.on_push(&mesh.ctx(), affected));
    assert_eq!(eds.type_url, ENDPOINT);
    // Clusters change while that EDS push is in flight: CDS goes out, and the updated
    // clusters, warming, need their endpoints on the proxy's next EDS request.
    let affected = mesh.change(vec![mk_destination_rule(
        "default",
        "reviews",
        "host: reviews\ntrafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n",
    )]);
    let ctx = mesh.ctx();
    let types: Vec<String> = c
        .on_push(&ctx, affected)
        .iter()
        .map(|o| o.type_url().to_string())
        .collect();
    assert_eq!(types, [CLUSTER]);
    let ack = sotw(ENDPOINT, &[V1, V2], &eds.nonce);
    let rewarmed = one(c.on_sotw_request(ack, &ctx));
    assert_eq!(names_of_assignments(&rewarmed), [V1, V2], "not queued");
    // A name newly subscribed is answered at once as well.
    let default = "outbound|9080||reviews.default.svc.cluster.local";
    let ack = sotw(ENDPOINT, &[V1, V2, default], &rewarmed.nonce);
    assert_eq!(
        names_of_assignments(&one(c.on_sotw_request(ack, &ctx))),
        [default]
    );
}

#[test]
fn endpoint_change_is_an_eds_only_push_of_changed_clusters() {
    let mut mesh = Mesh::new();
    let (mut c, _) = synced_sotw(&mesh);
    let affected = mesh.change(vec![Object::EndpointSlice(Arc::new(mk_slice(
        "default",
        "reviews",
        &[("http", 9080)],
        &[("reviews-v1", "10.244.1.11")],
    )))]);
    let mut endpoints_only = TypeSet::default();
    endpoints_only.insert(ResourceType::Endpoint);
    assert_eq!(affected, endpoints_only);
    let eds = one(c.on_push(&mesh.ctx(), affected));
    assert_eq!(eds.type_url, ENDPOINT);
    // v1 is unchanged (same endpoint); only v2 (now empty) is sent.
    assert_eq!(names_of_assignments(&eds), [V2]);
}

#[test]
fn the_proxy_takes_its_pods_labels_when_a_push_says_the_pod_changed() {
    let mut mesh = Mesh::new();
    let (mut c, _) = synced_sotw(&mesh);
    let pod_labels = |mesh: &Mesh| {
        let key = ObjectKey::new("default", PRODUCTPAGE_POD);
        mesh.ctx()
            .cache
            .snapshot()
            .pod_by_key(&key)
            .unwrap()
            .labels
            .clone()
    };
    assert!(Arc::ptr_eq(&c.proxy().labels, &pod_labels(&mesh)));
    // An endpoint-only change leaves the pod alone: the labels held stay the pod's own map.
    let affected = mesh.change(vec![Object::EndpointSlice(Arc::new(mk_slice(
        "default",
        "reviews",
        &[("http", 9080)],
        &[("reviews-v1", "10.244.1.11")],
    )))]);
    assert_ne!(affected, TypeSet::ALL);
    c.on_push(&mesh.ctx(), affected);
    assert!(Arc::ptr_eq(&c.proxy().labels, &pod_labels(&mesh)));
    // Relabelling the pod touches it: every type, and the new labels.
    let affected = mesh.change(vec![Object::Pod(Arc::new(mk_pod(
        "default",
        PRODUCTPAGE_POD,
        "10.244.1.20",
        &[("app", "productpage"), ("track", "canary")],
    )))]);
    assert_eq!(affected, TypeSet::ALL);
    c.on_push(&mesh.ctx(), affected);
    assert_eq!(
        c.proxy().labels.get("track").map(String::as_str),
        Some("canary")
    );
    assert!(Arc::ptr_eq(&c.proxy().labels, &pod_labels(&mesh)));
}

#[test]
fn subscription_changes_answer_only_added_names() {
    let mesh = Mesh::new();
    let (mut c, nonces) = synced_sotw(&mesh);
    let ctx = mesh.ctx();
    let default = format!("outbound|9080||{REVIEWS}");
    let added =
        one(c.on_sotw_request(sotw(ENDPOINT, &[V1, V2, &default], &nonces[ENDPOINT]), &ctx));
    assert_eq!(names_of_assignments(&added), [default]);
    // Dropping a name is acknowledged silently.
    assert!(
        c.on_sotw_request(sotw(ENDPOINT, &[V1], &added.nonce), &ctx)
            .is_empty()
    );
    assert_eq!(watch(&c, ENDPOINT).names.len(), 1);
}

#[test]
fn repeated_and_reordered_name_lists_are_the_same_subscription() {
    let mesh = Mesh::new();
    let (mut c, nonces) = synced_sotw(&mesh);
    let ctx = mesh.ctx();
    let default = format!("outbound|9080||{REVIEWS}");
    let subscribed = watch(&c, ENDPOINT).names.clone();
    // The same names in another order, and repeated: nothing to answer, same interned set.
    let reordered = sotw(ENDPOINT, &[V2, V1, V2], &nonces[ENDPOINT]);
    assert!(c.on_sotw_request(reordered, &ctx).is_empty());
    assert!(Arc::ptr_eq(&subscribed, &watch(&c, ENDPOINT).names));
    // A list of the same length with one name replaced is a change.
    let mut c2 = synced_sotw(&mesh).0;
    let nonce = watch(&c2, ENDPOINT).last_sent_nonce.clone().unwrap();
    let out = c2.on_sotw_request(sotw(ENDPOINT, &[V1, &default], &nonce), &ctx);
    assert_eq!(names_of_assignments(&one(out)), [default]);
    assert!(!watch(&c2, ENDPOINT).names.contains(V2));
}

/// A SotW request as the server reads it off the stream, knowing what the connection expects.
fn read_frame(c: &Connection, request: &DiscoveryRequest) -> SotwRequest {
    let frame = Bytes::from(request.encode_to_vec());
    SotwRequest::decode_frame_knowing(frame, c.sotw_name_spellings()).unwrap()
}

#[test]
fn a_request_repeating_its_subscription_is_recognised_by_its_bytes() {
    let mesh = Mesh::new();
    let (mut c, nonces) = synced_sotw(&mesh);
    let ctx = mesh.ctx();
    assert_eq!(
        c.sotw_name_spellings().count(),
        2,
        "EDS and RDS lists, not the wildcards"
    );
    let eds_spelling = watch(&c, ENDPOINT).names.sotw_spelling().unwrap().clone();
    assert!(
        c.sotw_name_spellings()
            .any(|s| s.as_ptr() == eds_spelling.as_ptr())
    );
    // Sidecars of one mesh share the interned set and so its spelling.
    let (other, _) = synced_sotw(&mesh);
    let others = watch(&other, ENDPOINT).names.sotw_spelling().unwrap();
    assert_eq!(others.as_ptr(), eds_spelling.as_ptr());

    // An ACK repeating the list holds the spelling itself and is nothing new.
    let ack = read_frame(&c, &sotw(ENDPOINT, &[V1, V2], &nonces[ENDPOINT]));
    assert!(ack.repeats(&eds_spelling));
    let before = watch(&c, ENDPOINT).names.clone();
    assert!(c.on_sotw_request(ack, &ctx).is_empty());
    assert!(Arc::ptr_eq(&before, &watch(&c, ENDPOINT).names));

    // The list followed by one more name starts like the spelling but is a new subscription.
    let default = format!("outbound|9080||{REVIEWS}");
    let nonce = watch(&c, ENDPOINT).last_sent_nonce.clone().unwrap();
    let longer = read_frame(&c, &sotw(ENDPOINT, &[V1, V2, &default], &nonce));
    assert!(!longer.repeats(&eds_spelling));
    assert_eq!(longer.names().collect::<Vec<_>>(), [V1, V2, &default]);
    let added = one(c.on_sotw_request(longer, &ctx));
    assert_eq!(names_of_assignments(&added), [default]);

    // Another proxy listing the same names in another order is recognised by fingerprint.
    let (mut reordered, nonces) = synced_sotw(&mesh);
    let request = read_frame(&reordered, &sotw(ENDPOINT, &[V2, V1], &nonces[ENDPOINT]));
    assert!(!request.repeats(&eds_spelling));
    assert!(reordered.on_sotw_request(request, &ctx).is_empty());
}

#[test]
fn cds_push_rewarms_endpoints_on_the_next_eds_request() {
    let mut mesh = Mesh::new();
    let (mut c, _) = synced_sotw(&mesh);
    let affected = mesh.change(vec![mk_destination_rule(
        "default",
        "reviews",
        "host: reviews\ntrafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v2, labels: {version: v2}}\n",
    )]);
    let ctx = mesh.ctx();
    let out = c.on_push(&ctx, affected);
    let types: Vec<&str> = out.iter().map(Outgoing::type_url).collect();
    assert_eq!(types[0], CLUSTER, "CDS goes first: {types:?}");
    assert!(
        types.contains(&ENDPOINT),
        "updated clusters get their endpoints again"
    );
    let position = |t| types.iter().position(|x| *x == t);
    assert!(position(CLUSTER) < position(ENDPOINT));
}

#[test]
fn unknown_type_gets_an_empty_answer() {
    let mesh = Mesh::new();
    let mut c = connection(Flavor::Sotw);
    let ctx = mesh.ctx();
    let url = "type.googleapis.com/istio.networking.nds.v1.NameTable";
    let r = one(c.on_sotw_request(sotw(url, &[], ""), &ctx));
    assert_eq!(r.type_url, url);
    assert!(r.resources.is_empty());
    assert!(c.on_sotw_request(sotw(url, &[], &r.nonce), &ctx).is_empty());
}

#[test]
fn delta_reconnects_naming_the_same_held_assignments_share_one_subscription() {
    let mesh = Mesh::new();
    let ctx = mesh.ctx();
    let mut first = connection(Flavor::Delta);
    let default = format!("outbound|9080||{REVIEWS}");
    let eds = delta_one(first.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: ENDPOINT.into(),
            // In name order, as a reconnect's names are put.
            resource_names_subscribe: vec![V1.into(), V2.into(), default],
            ..Default::default()
        }),
        &ctx,
    ));
    let held = || -> HashMap<String, String> {
        eds.resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    };
    assert_eq!(eds.resources.len(), 3);
    let mut reconnected = Vec::new();
    for _ in 0..2 {
        let mut again = connection(Flavor::Delta);
        let out = delta_one(again.on_delta_request(
            DeltaRequest::from(DeltaDiscoveryRequest {
                type_url: ENDPOINT.into(),
                initial_resource_versions: held(),
                ..Default::default()
            }),
            &ctx,
        ));
        assert!(out.resources.is_empty(), "the proxy holds every version");
        assert!(out.removed_resources.is_empty());
        reconnected.push(watch(&again, ENDPOINT).names.clone());
    }
    // Two maps of the same names (each in its own order) and the first subscription: one set.
    assert!(Arc::ptr_eq(&reconnected[0], &reconnected[1]));
    assert!(Arc::ptr_eq(&reconnected[0], &watch(&first, ENDPOINT).names));
}

#[test]
fn delta_reconnect_with_initial_versions_sends_only_differences() {
    let mut mesh = Mesh::new();
    let ctx = mesh.ctx();
    let mut first = connection(Flavor::Delta);
    let cds = delta_one(first.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            ..Default::default()
        }),
        &ctx,
    ));
    assert!(cds.resources.len() > 3);
    let held: HashMap<String, String> = cds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    // The control plane restarts and the mesh loses the v2 subset meanwhile.
    let affected = mesh.change(vec![
        mk_destination_rule(
            "default",
            "reviews",
            "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n",
        ),
        vs(100, 0),
    ]);
    assert!(!affected.is_empty());
    let mut again = connection(Flavor::Delta);
    let resumed = delta_one(again.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            initial_resource_versions: held,
            ..Default::default()
        }),
        &mesh.ctx(),
    ));
    let changed: Vec<&str> = resumed.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(
        changed.is_empty(),
        "nothing the proxy holds changed: {changed:?}"
    );
    assert_eq!(resumed.removed_resources, [V2]);
}

#[test]
fn delta_subscribe_unsubscribe_and_ack() {
    let mesh = Mesh::new();
    let ctx = mesh.ctx();
    let mut c = connection(Flavor::Delta);
    let eds = delta_one(c.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: ENDPOINT.into(),
            resource_names_subscribe: vec![V1.into()],
            ..Default::default()
        }),
        &ctx,
    ));
    assert_eq!(eds.resources.len(), 1);
    assert!(
        !eds.resources[0].version.is_empty(),
        "per-resource versions"
    );
    let ack = DeltaRequest::from(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    });
    assert!(c.on_delta_request(ack, &ctx).is_empty());
    assert_eq!(watch(&c, ENDPOINT).acked_nonce.as_ref(), Some(&eds.nonce));
    let more = delta_one(c.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: ENDPOINT.into(),
            resource_names_subscribe: vec![V2.into()],
            ..Default::default()
        }),
        &ctx,
    ));
    assert_eq!(more.resources[0].name, V2);
    let none = c.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: ENDPOINT.into(),
            resource_names_unsubscribe: vec![V1.into()],
            ..Default::default()
        }),
        &ctx,
    );
    assert!(none.is_empty());
    assert!(!watch(&c, ENDPOINT).names.contains(V1));
}

#[test]
fn sidecars_subscribing_one_list_share_one_set_across_protocol_variants() {
    let mesh = Mesh::new();
    let ctx = mesh.ctx();
    let subscribe = DeltaRequest::from(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec![V2.into(), V1.into()],
        ..Default::default()
    });
    let mut first = connection(Flavor::Delta);
    let mut second = connection(Flavor::Delta);
    first.on_delta_request(subscribe.clone(), &ctx);
    second.on_delta_request(subscribe, &ctx);
    let set = &watch(&first, ENDPOINT).names;
    assert!(Arc::ptr_eq(set, &watch(&second, ENDPOINT).names));
    assert!(set.contains(V1) && set.contains(V2) && set.len() == 2);
    let mut third = connection(Flavor::Sotw);
    third.on_sotw_request(sotw(ENDPOINT, &[V2, V1], ""), &ctx);
    assert!(Arc::ptr_eq(set, &watch(&third, ENDPOINT).names));
}

#[test]
fn delta_nack_keeps_state_and_does_not_loop() {
    let mut mesh = Mesh::new();
    let mut c = connection(Flavor::Delta);
    let ctx = mesh.ctx();
    let rds = delta_one(c.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: ROUTE.into(),
            resource_names_subscribe: vec!["9080".into()],
            ..Default::default()
        }),
        &ctx,
    ));
    c.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: ROUTE.into(),
            response_nonce: rds.nonce.clone(),
            ..Default::default()
        }),
        &ctx,
    );
    let affected = mesh.change(vec![vs(10, 90)]);
    let push = delta_one(c.on_push(&mesh.ctx(), affected));
    let rejected = DeltaRequest::from(DeltaDiscoveryRequest {
        type_url: ROUTE.into(),
        response_nonce: push.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "bad route".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(c.on_delta_request(rejected.clone(), &mesh.ctx()).is_empty());
    assert!(c.on_delta_request(rejected, &mesh.ctx()).is_empty());
    assert_eq!(
        c.take_nacks().len(),
        1,
        "a repeated NACK of the same nonce is stale"
    );
    assert_eq!(watch(&c, ROUTE).last_error.as_deref(), Some("bad route"));
}

#[test]
fn delta_wildcard_removal_is_reported() {
    let mut mesh = Mesh::new();
    let mut c = connection(Flavor::Delta);
    let cds = delta_one(c.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            ..Default::default()
        }),
        &mesh.ctx(),
    ));
    c.on_delta_request(
        DeltaRequest::from(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            response_nonce: cds.nonce,
            ..Default::default()
        }),
        &mesh.ctx(),
    );
    let affected = mesh.change(vec![
        mk_destination_rule(
            "default",
            "reviews",
            "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}\n",
        ),
        vs(100, 0),
    ]);
    let out = c.on_push(&mesh.ctx(), affected);
    let Outgoing::Delta(cds) = &out[0] else {
        panic!("delta expected")
    };
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(cds.removed_resources, [Arc::from(V2)]);
}

fn watch<'c>(connection: &'c Connection, type_url: &str) -> &'c Watch {
    connection
        .watches()
        .get(type_url)
        .expect("a watch of the type")
}

mod vhds {
    use super::*;
    use crate::resources::CacheOptions;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use meshpilot_model::Kind;
    use meshpilot_model::fixtures::mk_service;
    use meshpilot_translate::type_urls::VIRTUAL_HOST;

    const REVIEWS_HOST: &str = "9080/reviews.default.svc.cluster.local:9080";
    const RATINGS_HOST: &str = "9080/ratings.default.svc.cluster.local:9080";

    fn vhds_mesh() -> Mesh {
        let mut mesh = Mesh::new();
        let (publisher, _rx) =
            Publisher::with_options(mesh.index.snapshot(), CacheOptions { vhds: true });
        mesh.publisher = publisher;
        mesh
    }

    fn subscribe(c: &mut Connection, ctx: &PushContext, names: &[&str]) -> DeltaDiscoveryResponse {
        delta_one(c.on_delta_request(
            DeltaRequest::from(DeltaDiscoveryRequest {
                type_url: VIRTUAL_HOST.into(),
                resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            }),
            ctx,
        ))
    }

    fn ack(c: &mut Connection, ctx: &PushContext, nonce: &str) -> Vec<Outgoing> {
        c.on_delta_request(
            DeltaRequest::from(DeltaDiscoveryRequest {
                type_url: VIRTUAL_HOST.into(),
                response_nonce: nonce.into(),
                ..Default::default()
            }),
            ctx,
        )
    }

    fn host_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
        r.resources
            .iter()
            .map(|r| {
                let host = VirtualHost::decode(r.resource.as_ref().unwrap().value.as_slice());
                let host = host.unwrap();
                assert_eq!(host.name, r.name, "a virtual host is named as its resource");
                host.name
            })
            .collect()
    }

    #[test]
    fn route_configurations_name_vhds_and_their_hosts_come_one_by_one() {
        let mesh = vhds_mesh();
        let ctx = mesh.ctx();
        let mut ads = connection(Flavor::Sotw);
        let rds = one(ads.on_sotw_request(sotw(ROUTE, &["9080"], ""), &ctx));
        let config = RouteConfiguration::decode(rds.resources[0].value.as_slice()).unwrap();
        assert!(config.virtual_hosts.is_empty());
        assert!(config.vhds.is_some());

        let mut vhds = connection(Flavor::Delta);
        let first = subscribe(&mut vhds, &ctx, &["9080"]);
        assert_eq!(host_names(&first), [REVIEWS_HOST, "9080/allow_any"]);
        // Another configuration's hosts are not sent.
        assert!(host_names(&first).iter().all(|n| n.starts_with("9080/")));
    }

    #[test]
    fn a_virtual_service_edit_sends_one_virtual_host_and_no_route_configuration() {
        let mut mesh = vhds_mesh();
        let ctx = mesh.ctx();
        let mut ads = connection(Flavor::Sotw);
        let rds = one(ads.on_sotw_request(sotw(ROUTE, &["9080"], ""), &ctx));
        ads.on_sotw_request(sotw(ROUTE, &["9080"], &rds.nonce), &ctx);
        let mut vhds = connection(Flavor::Delta);
        let first = subscribe(&mut vhds, &ctx, &["9080"]);
        assert!(ack(&mut vhds, &ctx, &first.nonce).is_empty());

        let affected = mesh.change(vec![vs(50, 50)]);
        assert!(affected.contains(ResourceType::Route));
        assert!(affected.contains(ResourceType::VirtualHost));
        let ctx = mesh.ctx();
        assert!(
            ads.on_push(&ctx, affected).is_empty(),
            "route configuration 9080 did not change"
        );
        let update = delta_one(vhds.on_push(&ctx, affected));
        assert_eq!(host_names(&update), [REVIEWS_HOST]);
        assert!(update.removed_resources.is_empty());
    }

    #[test]
    fn a_virtual_host_that_goes_away_is_removed_by_its_resource_name() {
        let mut mesh = vhds_mesh();
        let ratings = || {
            Object::Service(mk_service(
                "default",
                "ratings",
                "10.96.0.30",
                &[("http", 9080)],
            ))
        };
        mesh.change(vec![ratings()]);
        let ctx = mesh.ctx();
        let mut vhds = connection(Flavor::Delta);
        let first = subscribe(&mut vhds, &ctx, &["9080"]);
        assert!(host_names(&first).contains(&RATINGS_HOST.to_string()));
        ack(&mut vhds, &ctx, &first.nonce);

        let before = mesh.publisher.current().version;
        let changes = mesh
            .index
            .delete(Kind::Service, &ObjectKey::new("default", "ratings"));
        mesh.publisher.publish(mesh.index.snapshot(), changes);
        let affected = mesh
            .publisher
            .current()
            .affected_since(before, &ObjectKey::new("default", PRODUCTPAGE_POD));
        let update = delta_one(vhds.on_push(&mesh.ctx(), affected));
        assert_eq!(update.removed_resources, [RATINGS_HOST]);
        assert!(host_names(&update).is_empty());
    }

    #[test]
    fn a_stream_scoped_to_a_configuration_is_answered_with_its_hosts_when_it_names_none() {
        // Envoy 1.40's VHDS requests name nothing; the stream's header names the configuration.
        let mesh = vhds_mesh();
        let ctx = mesh.ctx();
        let mut unscoped = connection(Flavor::Delta);
        assert!(subscribe(&mut unscoped, &ctx, &[]).resources.is_empty());
        let mut scoped = connection(Flavor::Delta);
        scoped.scope_virtual_hosts_to("9080".into());
        let first = subscribe(&mut scoped, &ctx, &[]);
        assert_eq!(host_names(&first), [REVIEWS_HOST, "9080/allow_any"]);
        let mut other = connection(Flavor::Delta);
        other.scope_virtual_hosts_to("8080".into());
        // A port without services: only the catch-all.
        assert_eq!(
            host_names(&subscribe(&mut other, &ctx, &[])),
            ["8080/allow_any"]
        );
    }

    #[test]
    fn a_reconnecting_vhds_stream_holding_its_hosts_is_sent_only_what_changed() {
        let mut mesh = vhds_mesh();
        let ctx = mesh.ctx();
        let mut first = connection(Flavor::Delta);
        first.scope_virtual_hosts_to("9080".into());
        let held: HashMap<String, String> = subscribe(&mut first, &ctx, &[])
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        // The control plane restarts; meanwhile the VirtualService changed.
        mesh.change(vec![vs(50, 50)]);
        let ctx = mesh.ctx();
        for scoped in [true, false] {
            let mut again = connection(Flavor::Delta);
            if scoped {
                again.scope_virtual_hosts_to("9080".into());
            }
            let out = delta_one(again.on_delta_request(
                DeltaRequest::from(DeltaDiscoveryRequest {
                    type_url: VIRTUAL_HOST.into(),
                    initial_resource_versions: held.clone(),
                    ..Default::default()
                }),
                &ctx,
            ));
            assert_eq!(host_names(&out), [REVIEWS_HOST], "scoped: {scoped}");
            assert!(out.removed_resources.is_empty());
            let names: Vec<&str> = watch(&again, VIRTUAL_HOST).names.iter().collect();
            assert_eq!(names, ["9080"]);
        }
    }

    #[test]
    fn without_the_option_route_configurations_keep_their_hosts_and_vhds_is_empty() {
        let mesh = Mesh::new();
        let ctx = mesh.ctx();
        let mut ads = connection(Flavor::Sotw);
        let rds = one(ads.on_sotw_request(sotw(ROUTE, &["9080"], ""), &ctx));
        let config = RouteConfiguration::decode(rds.resources[0].value.as_slice()).unwrap();
        assert_eq!(config.virtual_hosts.len(), 2);
        assert!(config.vhds.is_none());
        let mut vhds = connection(Flavor::Delta);
        assert!(subscribe(&mut vhds, &ctx, &["9080"]).resources.is_empty());
    }
}
