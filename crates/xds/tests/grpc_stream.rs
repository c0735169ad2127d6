//! The tonic service over a real loopback gRPC connection, each accepted connection reading
//! ahead as `meshpilot discovery`'s do: stream admission rules, pushes reaching a connected
//! client, a subscription many HTTP/2 frames long, proxies taking turns for change pushes (a
//! silent or stalled one giving its turn up), and shutdown ending its stream.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use meshpilot_model::fixtures::{mk_reviews_index, mk_slice};
use meshpilot_model::{Index, Object};
use meshpilot_translate::type_urls::{CLUSTER, ENDPOINT};
use meshpilot_xds::{AdsService, Publisher, ReadAhead, XdsMetrics};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const NODE: &str = "sidecar~10.244.1.20~productpage.default~default.svc.cluster.local";

struct Harness {
    addr: std::net::SocketAddr,
    client: AggregatedDiscoveryServiceClient<Channel>,
    ready: watch::Sender<bool>,
    publisher: Publisher,
    index: Index,
    shutdown: watch::Sender<bool>,
    /// Closes the port's connections and stops it accepting.
    closing: tokio_util::sync::CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

async fn start(ready: bool) -> Harness {
    start_with_throttle(ready, meshpilot_xds::DEFAULT_PUSH_THROTTLE).await
}

async fn start_with_throttle(ready: bool, push_throttle: usize) -> Harness {
    start_with(
        ready,
        push_throttle,
        meshpilot_xds::Http2Settings::default(),
    )
    .await
}

async fn start_with(
    ready: bool,
    push_throttle: usize,
    settings: meshpilot_xds::Http2Settings,
) -> Harness {
    let mut index = mk_reviews_index(&["v1"]);
    let (publisher, published) = Publisher::new(index.snapshot());
    let (ready_tx, ready_rx) = watch::channel(ready);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let service = AdsService::new(
        published,
        ready_rx,
        shutdown_rx,
        Arc::new(XdsMetrics::default()),
        "test".into(),
    )
    .with_push_throttle(push_throttle);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closing = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(meshpilot_xds::serve(
        tokio_stream::wrappers::TcpListenerStream::new(listener)
            .map(|accepted| accepted.map(ReadAhead::new)),
        None,
        service,
        settings,
        closing.clone(),
    ));
    let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Harness {
        addr,
        client,
        ready: ready_tx,
        publisher,
        index,
        shutdown: shutdown_tx,
        closing,
        served,
    }
}

fn request(type_url: &str, names: &[&str], nonce: &str, node: bool) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node.then(|| Node {
            id: NODE.into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn first_request_without_node_is_invalid_argument() {
    let mut h = start(true).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(CLUSTER, &[], "", false)).await.unwrap();
    let mut responses = h
        .client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .within_5s()
        .await
        .unwrap()
        .into_inner();
    let status = next(&mut responses)
        .await
        .expect("a stream item")
        .expect_err("an error status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());
}

#[tokio::test]
async fn streams_wait_for_the_initial_sync() {
    let mut h = start(false).await;
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    let status = h
        .client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .within_5s()
        .await
        .expect_err("refused before the sync");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    h.ready.send(true).unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(CLUSTER, &[], "", true)).await.unwrap();
    let mut responses = h
        .client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .within_5s()
        .await
        .unwrap()
        .into_inner();
    let cds = responses.next().within_5s().await.unwrap().unwrap();
    assert_eq!(cds.type_url, CLUSTER);
}

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";

type Responses = tonic::Streaming<DiscoveryResponse>;

/// The next response, or the status that ended the stream, within 5 s.
async fn next(responses: &mut Responses) -> Option<Result<DiscoveryResponse, tonic::Status>> {
    responses.next().within_5s().await
}

/// An answer within 5 s: a server that cannot read a request leaves its caller waiting.
trait Within5s: std::future::Future + Sized {
    async fn within_5s(self) -> Self::Output {
        tokio::time::timeout(Duration::from_secs(5), self)
            .await
            .expect("an answer within 5 s")
    }
}

impl<F: std::future::Future> Within5s for F {}

/// An ADS stream that took CDS and the reviews EDS (not yet ACKed); with that EDS response.
async fn subscribed_to_reviews(
    h: &mut Harness,
) -> (mpsc::Sender<DiscoveryRequest>, Responses, DiscoveryResponse) {
    subscribed_to_reviews_on(&mut h.client).await
}

/// [`subscribed_to_reviews`] over the given client's connection.
async fn subscribed_to_reviews_on(
    client: &mut AggregatedDiscoveryServiceClient<Channel>,
) -> (mpsc::Sender<DiscoveryRequest>, Responses, DiscoveryResponse) {
    let (tx, rx) = mpsc::channel(8);
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .within_5s()
        .await
        .unwrap()
        .into_inner();
    tx.send(request(CLUSTER, &[], "", true)).await.unwrap();
    let cds = next(&mut responses).await.unwrap().unwrap();
    tx.send(request(CLUSTER, &[], &cds.nonce, false))
        .await
        .unwrap();
    tx.send(request(ENDPOINT, &[REVIEWS], "", false))
        .await
        .unwrap();
    let eds = next(&mut responses).await.unwrap().unwrap();
    assert_eq!(eds.type_url, ENDPOINT);
    (tx, responses, eds)
}

/// Publishes reviews with the v1 pod and `pod` at `ip`.
fn publish_reviews(h: &mut Harness, pod: &str, ip: &str) {
    let changes = h.index.apply(Object::EndpointSlice(Arc::new(mk_slice(
        "default",
        "reviews",
        &[("http", 9080)],
        &[("reviews-v1", "10.244.1.11"), (pod, ip)],
    ))));
    h.publisher.publish(h.index.snapshot(), changes);
}

/// Publishes reviews with `pods` pods, a generation's worth of addresses: an EDS response of
/// well over 64 KiB.
fn publish_many_reviews(h: &mut Harness, pods: usize, generation: u8) {
    let endpoints: Vec<(String, String)> = (0..pods)
        .map(|i| {
            let ip = format!("10.{generation}.{}.{}", i / 250, i % 250 + 1);
            (format!("reviews-{generation}-{i}"), ip)
        })
        .collect();
    let endpoints: Vec<(&str, &str)> = endpoints
        .iter()
        .map(|(pod, ip)| (pod.as_str(), ip.as_str()))
        .collect();
    let slice = mk_slice("default", "reviews", &[("http", 9080)], &endpoints);
    let changes = h.index.apply(Object::EndpointSlice(Arc::new(slice)));
    h.publisher.publish(h.index.snapshot(), changes);
}

#[tokio::test]
async fn endpoint_change_reaches_a_connected_client_as_eds_only() {
    let mut h = start(true).await;
    let (tx, mut responses, eds) = subscribed_to_reviews(&mut h).await;
    tx.send(request(ENDPOINT, &[REVIEWS], &eds.nonce, false))
        .await
        .unwrap();
    publish_reviews(&mut h, "reviews-v2", "10.244.2.12");
    let pushed = next(&mut responses).await.unwrap().unwrap();
    assert_eq!(pushed.type_url, ENDPOINT, "endpoint changes push EDS only");
    assert_eq!(pushed.resources.len(), 1);
}

#[tokio::test]
async fn a_subscription_many_frames_long_is_read_whole_and_its_ack_recognised() {
    let mut h = start(true).await;
    let (tx, mut responses, eds) = subscribed_to_reviews(&mut h).await;
    // ~190 KB of names: twelve 16 KiB frames, several reads ahead.
    let padding: Vec<String> = (0..4000)
        .map(|i| format!("outbound|9080||padding-{i}.default.svc.cluster.local"))
        .collect();
    let names: Vec<&str> = std::iter::once(REVIEWS)
        .chain(padding.iter().map(String::as_str))
        .collect();
    tx.send(request(ENDPOINT, &names, &eds.nonce, false))
        .await
        .unwrap();
    // Every newly subscribed name is answered (unknown clusters with no endpoints).
    let answered = next(&mut responses).await.unwrap().unwrap();
    let answered_names: std::collections::BTreeSet<String> = answered
        .resources
        .iter()
        .map(|any| {
            ClusterLoadAssignment::decode(any.value.as_slice())
                .unwrap()
                .cluster_name
        })
        .collect();
    assert_eq!(answered_names, padding.iter().cloned().collect());
    // The ACK repeats the list; a change then pushes only what changed.
    tx.send(request(ENDPOINT, &names, &answered.nonce, false))
        .await
        .unwrap();
    publish_reviews(&mut h, "reviews-v2", "10.244.2.12");
    let pushed = next(&mut responses).await.unwrap().unwrap();
    assert_eq!(pushed.type_url, ENDPOINT);
    assert_eq!(pushed.resources.len(), 1, "only reviews changed");
}

#[tokio::test]
async fn every_publish_reaches_a_stream_and_shutdown_ends_it() {
    let mut h = start(true).await;
    let (tx, mut responses, mut eds) = subscribed_to_reviews(&mut h).await;
    // Each publish after the last ACK is pushed: the stream waits for the next one again
    // after every change it takes, with requests arriving in between.
    for (pod, ip) in [("reviews-v2", "10.244.2.12"), ("reviews-v3", "10.244.3.13")] {
        tx.send(request(ENDPOINT, &[REVIEWS], &eds.nonce, false))
            .await
            .unwrap();
        publish_reviews(&mut h, pod, ip);
        eds = next(&mut responses).await.unwrap().unwrap();
        assert_eq!(eds.type_url, ENDPOINT);
        // The address is a string field of the assignment, so its bytes appear as they are.
        let body = String::from_utf8_lossy(&eds.resources[0].value).into_owned();
        assert!(body.contains(ip), "the push for {pod} carries {ip}");
    }
    h.shutdown.send(true).unwrap();
    let status = next(&mut responses)
        .await
        .expect("the stream ends with a status")
        .expect_err("an error status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_connection_past_its_age_is_closed_after_its_grace_period() {
    let settings = meshpilot_xds::Http2Settings {
        max_connection_age: Some(Duration::from_millis(200)),
        close_grace: Duration::from_millis(300),
        ..Default::default()
    };
    let mut h = start_with(true, meshpilot_xds::DEFAULT_PUSH_THROTTLE, settings).await;
    let (_tx, mut responses, _eds) = subscribed_to_reviews(&mut h).await;
    // The ADS stream outlives the graceful close (HTTP/2 GOAWAY), so the grace period ends it.
    let ended = next(&mut responses).await;
    assert!(
        !matches!(ended, Some(Ok(_))),
        "the stream ended, not pushed to: {ended:?}"
    );
    // The client reconnects, and is served again.
    let (_tx, _responses, eds) = subscribed_to_reviews(&mut h).await;
    assert_eq!(eds.type_url, ENDPOINT);
}

#[tokio::test]
async fn closing_the_port_ends_its_connections_and_it_stops_accepting() {
    let settings = meshpilot_xds::Http2Settings {
        close_grace: Duration::from_millis(300),
        ..Default::default()
    };
    let mut h = start_with(true, meshpilot_xds::DEFAULT_PUSH_THROTTLE, settings).await;
    let (_tx, mut responses, _eds) = subscribed_to_reviews(&mut h).await;
    h.closing.cancel();
    (&mut h.served).within_5s().await.unwrap();
    let ended = next(&mut responses).await;
    assert!(!matches!(ended, Some(Ok(_))), "the stream ended: {ended:?}");
    assert!(
        tokio::net::TcpStream::connect(h.addr).await.is_err(),
        "the port no longer accepts"
    );
}

#[tokio::test]
async fn a_method_other_than_ads_and_vhds_is_unimplemented() {
    use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
    let h = start(true).await;
    let mut client = ClusterDiscoveryServiceClient::connect(format!("http://{}", h.addr))
        .await
        .unwrap();
    let status = client
        .fetch_clusters(request(CLUSTER, &[], "", true))
        .within_5s()
        .await
        .expect_err("not served");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

/// A response on `responses` within `wait`, or None.
async fn within(responses: &mut Responses, wait: Duration) -> Option<DiscoveryResponse> {
    match tokio::time::timeout(wait, responses.next()).await {
        Ok(item) => Some(item.expect("the stream goes on").expect("a response")),
        Err(_) => None,
    }
}

/// Which of two streams is pushed first, and its push.
async fn first_push(
    streams: &mut [(mpsc::Sender<DiscoveryRequest>, Responses)],
) -> (usize, DiscoveryResponse) {
    let [(_, a), (_, b)] = streams else {
        panic!("two streams")
    };
    tokio::select! {
        r = next(a) => (0, r.unwrap().unwrap()),
        r = next(b) => (1, r.unwrap().unwrap()),
    }
}

#[tokio::test]
async fn proxies_take_turns_for_change_pushes_and_a_silent_one_gives_its_turn_up() {
    // One turn: a change push is un-ACKed on one stream at a time.
    let mut h = start_with_throttle(true, 1).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (tx, responses, eds) = subscribed_to_reviews(&mut h).await;
        tx.send(request(ENDPOINT, &[REVIEWS], &eds.nonce, false))
            .await
            .unwrap();
        streams.push((tx, responses));
    }
    let short = Duration::from_millis(300);
    publish_reviews(&mut h, "reviews-v2", "10.244.2.12");
    let (first, second) = first_push(&mut streams).await;
    let other = 1 - first;
    assert_eq!(second.type_url, ENDPOINT);
    assert!(
        within(&mut streams[other].1, short).await.is_none(),
        "the other stream waits while the first push is un-ACKed"
    );
    // The first proxy answers: the turn passes at once.
    let ack = request(ENDPOINT, &[REVIEWS], &second.nonce, false);
    streams[first].0.send(ack).await.unwrap();
    let pushed = within(&mut streams[other].1, Duration::from_secs(5)).await;
    let pushed = pushed.expect("pushed once the first proxy ACKed");
    let ack = request(ENDPOINT, &[REVIEWS], &pushed.nonce, false);
    streams[other].0.send(ack).await.unwrap();

    // Next change: whoever is pushed first stays silent; the other is pushed anyway once the
    // silent one's turn runs out (a second), not never.
    publish_reviews(&mut h, "reviews-v3", "10.244.3.13");
    let started = tokio::time::Instant::now();
    let (first, _) = first_push(&mut streams).await;
    let other = 1 - first;
    let late = within(&mut streams[other].1, Duration::from_secs(5)).await;
    assert!(
        late.is_some(),
        "pushed after the silent proxy's turn ran out"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "the second push waited for the turn to run out, not {waited:?}"
    );
}

#[tokio::test]
async fn a_proxy_that_stops_reading_mid_push_still_gives_its_turn_up() {
    // One turn. The stalled proxy has its own connection with 64 KiB flow-control windows
    // and stops reading once subscribed, so a large push fills its windows mid-response and
    // HTTP/2 stops taking the stream's frames while it holds the turn.
    let mut h = start_with_throttle(true, 1).await;
    let mut stalled_client = AggregatedDiscoveryServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .within_5s()
            .await
            .unwrap(),
    );
    let (stalled_tx, _stalled_unread, eds) = subscribed_to_reviews_on(&mut stalled_client).await;
    stalled_tx
        .send(request(ENDPOINT, &[REVIEWS], &eds.nonce, false))
        .await
        .unwrap();
    let (tx, mut responses, eds) = subscribed_to_reviews(&mut h).await;
    tx.send(request(ENDPOINT, &[REVIEWS], &eds.nonce, false))
        .await
        .unwrap();
    // Whichever proxy takes the turn first, the stalled one holds it in one of two rounds:
    // the reader is still pushed in each, once that turn runs out.
    for generation in 1..=2 {
        publish_many_reviews(&mut h, 4000, generation);
        let pushed = within(&mut responses, Duration::from_secs(5)).await;
        let pushed = pushed.unwrap_or_else(|| panic!("round {generation}: reader not pushed"));
        assert_eq!(pushed.type_url, ENDPOINT);
        assert!(
            pushed.encoded_len() > 65_535,
            "a push larger than the windows"
        );
        tx.send(request(ENDPOINT, &[REVIEWS], &pushed.nonce, false))
            .await
            .unwrap();
    }
}
