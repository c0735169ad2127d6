//! Metrics and the connection registry as a real gRPC client drives them: pushes, a NACK,
//! convergence, and the entry leaving on disconnect.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshpilot_model::fixtures::{mk_pod, mk_service, mk_slice};
use meshpilot_model::{Index, Object};
use meshpilot_translate::type_urls::{CLUSTER, ENDPOINT};
use meshpilot_xds::{AdsService, ConnectionRegistry, Publisher, XdsMetrics};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const NODE: &str = "sidecar~10.244.1.20~productpage.default~default.svc.cluster.local";
const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn request(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: NODE.into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

async fn next(responses: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .expect("a response within 5 s")
        .expect("a stream item")
        .expect("a response, not a status")
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn pushes_nacks_and_connections_are_recorded() {
    let mut index = Index::default();
    index.apply(Object::Service(mk_service(
        "default",
        "reviews",
        "10.96.120.15",
        &[("http", 9080)],
    )));
    index.apply(Object::EndpointSlice(Arc::new(mk_slice(
        "default",
        "reviews",
        &[("http", 9080)],
        &[("reviews-v1", "10.244.1.11")],
    ))));
    let (mut publisher, published) = Publisher::new(index.snapshot());
    let (_ready, ready_rx) = watch::channel(true);
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(XdsMetrics::default());
    let service = AdsService::new(
        published,
        ready_rx,
        shutdown_rx,
        metrics.clone(),
        "test".into(),
    );
    let registry: Arc<ConnectionRegistry> = service.registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(meshpilot_xds::serve(
        tokio_stream::wrappers::TcpListenerStream::new(listener)
            .map(|accepted| accepted.map(meshpilot_xds::ReadAhead::new)),
        None,
        service,
        meshpilot_xds::Http2Settings::default(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    tx.send(request(CLUSTER, &[], "")).await.unwrap();
    let cds = next(&mut responses).await;
    tx.send(request(CLUSTER, &[], &cds.nonce)).await.unwrap();
    tx.send(request(ENDPOINT, &[REVIEWS], "")).await.unwrap();
    let eds = next(&mut responses).await;
    tx.send(request(ENDPOINT, &[REVIEWS], &eds.nonce))
        .await
        .unwrap();
    eventually("EDS acked in the registry", || {
        registry.connections().first().is_some_and(|c| {
            c.watches
                .get(ENDPOINT)
                .is_some_and(|w| w.acked_nonce == eds.nonce)
        })
    })
    .await;
    assert_eq!(metrics.pushes("cds"), 1);
    assert_eq!(metrics.pushes("eds"), 1);
    assert_eq!(metrics.connected_proxies(), 1);

    // A published endpoint change: one EDS push, then convergence once sent.
    let changes = index.apply(Object::Pod(Arc::new(mk_pod(
        "default",
        "reviews-v2",
        "10.244.2.12",
        &[("app", "reviews")],
    ))));
    publisher.publish(index.snapshot(), changes);
    let changes = index.apply(Object::EndpointSlice(Arc::new(mk_slice(
        "default",
        "reviews",
        &[("http", 9080)],
        &[("reviews-v1", "10.244.1.11"), ("reviews-v2", "10.244.2.12")],
    ))));
    publisher.publish(index.snapshot(), changes);
    let mut pushed = next(&mut responses).await;
    while pushed.type_url != ENDPOINT {
        tx.send(request(&pushed.type_url, &[], &pushed.nonce))
            .await
            .unwrap();
        pushed = next(&mut responses).await;
    }
    // The proxy rejects it.
    let mut nack = request(ENDPOINT, &[REVIEWS], &pushed.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "endpoint rejected for the test".into(),
        ..Default::default()
    });
    tx.send(nack).await.unwrap();
    eventually("the NACK counted", || metrics.rejects("eds") == 1).await;

    let text = metrics.encode();
    assert_eq!(
        sample(&text, r#"pilot_total_xds_rejects{type="eds"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"pilot_total_xds_rejects{type="cds"}"#),
        Some(0.0)
    );
    assert!(sample(&text, r#"pilot_xds_pushes{type="eds"}"#).unwrap() >= 2.0);
    assert!(sample(&text, "pilot_proxy_convergence_time_count").unwrap() >= 1.0);
    assert!(sample(&text, "pilot_xds_push_time_count").unwrap() >= 1.0);
    assert!(sample(&text, r#"pilot_xds_config_size_bytes_count{type="cds"}"#).unwrap() >= 1.0);
    assert_eq!(sample(&text, r#"pilot_xds{version=""}"#), Some(1.0));

    let syncz = registry.syncz(None);
    let entry = &syncz[0];
    assert_eq!(entry["proxy"], "productpage.default");
    assert_eq!(entry["cluster_sent"], entry["cluster_acked"]);
    assert_eq!(entry["endpoint_sent"], pushed.nonce.as_str());
    assert_eq!(entry["endpoint_acked"], eds.nonce.as_str());
    assert_eq!(
        entry["resources"][ENDPOINT]["lastError"],
        "endpoint rejected for the test"
    );
    assert!(entry["resources"][ENDPOINT]["sentTime"].is_string());

    drop(tx);
    eventually("the connection leaving the registry", || {
        registry.is_empty()
    })
    .await;
    assert_eq!(metrics.connected_proxies(), 0);
}
