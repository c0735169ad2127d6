//! The tonic side: `AggregatedDiscoveryService` wiring streams to [`Connection`]s. Each stream
//! is one task that selects over the proxy's requests, published snapshots and shutdown.

use crate::connection::{Connection, Flavor, Outgoing, PushContext};
use crate::metrics::XdsMetrics;
use crate::publish::Published;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use meshpilot_model::{Proxy, ProxyMetadata};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Responses buffered per stream before the stream task waits for the proxy to read; a stalled
/// proxy then stops being fed, but its task keeps only the latest published state.
const STREAM_BUFFER: usize = 8;

/// The ADS service. Clone-cheap; one instance serves both the plaintext and the TLS port.
#[derive(Clone)]
pub struct AdsService {
    inner: Arc<Inner>,
}

struct Inner {
    published: watch::Receiver<Arc<Published>>,
    /// Streams are refused with `Unavailable` until every source has synced.
    ready: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    control_plane_id: String,
    connection_counter: AtomicU64,
    metrics: Arc<XdsMetrics>,
}

impl AdsService {
    pub fn new(
        published: watch::Receiver<Arc<Published>>,
        ready: watch::Receiver<bool>,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<XdsMetrics>,
        control_plane_id: String,
    ) -> Self {
        AdsService {
            inner: Arc::new(Inner {
                published,
                ready,
                shutdown,
                control_plane_id,
                connection_counter: AtomicU64::new(0),
                metrics,
            }),
        }
    }

    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(usize::MAX)
    }
}

/// A request of either flavor.
enum Incoming {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

impl Incoming {
    fn node(&self) -> Option<&Node> {
        match self {
            Incoming::Sotw(r) => r.node.as_ref(),
            Incoming::Delta(r) => r.node.as_ref(),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner().map(|r| r.map(Incoming::Sotw));
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.start(Flavor::Sotw, peer, Box::pin(inbound), Sink::Sotw(tx))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner().map(|r| r.map(Incoming::Delta));
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.start(Flavor::Delta, peer, Box::pin(inbound), Sink::Delta(tx))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type InboundStream = Pin<Box<dyn Stream<Item = Result<Incoming, Status>> + Send>>;

/// Where a stream's responses go, typed by flavor.
enum Sink {
    Sotw(mpsc::Sender<Result<DiscoveryResponse, Status>>),
    Delta(mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>),
}

impl Sink {
    /// False once the proxy has gone away.
    async fn send(&self, item: Result<Outgoing, Status>) -> bool {
        match (self, item) {
            (Sink::Sotw(tx), Ok(Outgoing::Sotw(r))) => tx.send(Ok(r)).await.is_ok(),
            (Sink::Delta(tx), Ok(Outgoing::Delta(r))) => tx.send(Ok(r)).await.is_ok(),
            (Sink::Sotw(tx), Err(status)) => tx.send(Err(status)).await.is_ok(),
            (Sink::Delta(tx), Err(status)) => tx.send(Err(status)).await.is_ok(),
            // A connection answers in its own flavor only.
            _ => true,
        }
    }
}

impl AdsService {
    fn start(
        &self,
        flavor: Flavor,
        peer: Option<std::net::SocketAddr>,
        inbound: InboundStream,
        sink: Sink,
    ) -> Result<(), Status> {
        if !*self.inner.ready.borrow() {
            return Err(Status::unavailable(
                "meshpilot has not finished its initial sync; retry shortly",
            ));
        }
        let inner = self.inner.clone();
        let span = tracing::info_span!("ads", peer = ?peer, node = tracing::field::Empty);
        tokio::spawn(
            async move {
                if let Err(status) = serve_stream(&inner, flavor, inbound, &sink).await {
                    tracing::info!(code = ?status.code(), "stream closed: {}", status.message());
                    sink.send(Err(status)).await;
                }
            }
            .instrument(span),
        );
        Ok(())
    }
}

async fn serve_stream(
    inner: &Inner,
    flavor: Flavor,
    mut inbound: InboundStream,
    sink: &Sink,
) -> Result<(), Status> {
    let first = match inbound.next().await {
        Some(Ok(request)) => request,
        Some(Err(status)) => return Err(status),
        None => return Ok(()),
    };
    let node = first.node().ok_or_else(|| {
        Status::invalid_argument("the first request on an xDS stream must carry `node`")
    })?;
    let proxy = proxy_from_node(node)?;
    let id = format!(
        "{}-{}",
        proxy.id(),
        inner.connection_counter.fetch_add(1, Ordering::Relaxed) + 1
    );
    tracing::Span::current().record("node", node.id.as_str());
    tracing::info!(connection = %id, ?flavor, "proxy connected");
    let mut connection = Connection::new(id, proxy, flavor, &inner.control_plane_id);
    let _connected = inner.metrics.connected();
    let mut published = inner.published.clone();
    let mut shutdown = inner.shutdown.clone();
    let mut current = published.borrow_and_update().clone();
    let mut request = Some(first);
    loop {
        let outgoing = if let Some(req) = request.take() {
            let ctx = context(&current);
            match req {
                Incoming::Sotw(r) => connection.on_sotw_request(r, &ctx),
                Incoming::Delta(r) => connection.on_delta_request(r, &ctx),
            }
        } else {
            tokio::select! {
                next = inbound.next() => match next {
                    Some(Ok(req)) => { request = Some(req); continue; }
                    Some(Err(status)) => {
                        tracing::debug!("stream error: {status}");
                        return Ok(());
                    }
                    None => {
                        tracing::info!(connection = %connection.id, "proxy disconnected");
                        return Ok(());
                    }
                },
                changed = published.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("control plane shutting down"));
                    }
                    let next = published.borrow_and_update().clone();
                    let changes = next.changes_since(current.version);
                    current = next;
                    let started = Instant::now();
                    let out = connection.on_push(&context(&current), changes.as_ref());
                    inner.metrics.observe_push_time(started.elapsed());
                    out
                }
                _ = shutdown.changed() => {
                    return Err(Status::unavailable("control plane shutting down"));
                }
            }
        };
        for nack in connection.take_nacks() {
            tracing::warn!(
                connection = %connection.id,
                type_url = %nack.type_url,
                nonce = %nack.nonce,
                error_detail = %nack.error,
                "proxy rejected config (NACK); keeping its last accepted config"
            );
            inner.metrics.count_nack(&nack.type_url);
        }
        for response in outgoing {
            inner
                .metrics
                .count_push(response.type_url(), response.resource_bytes());
            tracing::debug!(
                connection = %connection.id,
                type_url = response.type_url(),
                nonce = response.nonce(),
                resources = response.resource_count(),
                bytes = response.resource_bytes(),
                "push"
            );
            if !sink.send(Ok(response)).await {
                return Ok(());
            }
        }
    }
}

fn context(published: &Arc<Published>) -> PushContext {
    PushContext {
        cache: published.cache.clone(),
        version_info: published.version_info.clone(),
    }
}

fn proxy_from_node(node: &Node) -> Result<Proxy, Status> {
    let metadata = match &node.metadata {
        Some(metadata) => meshpilot_translate::dump::to_json(metadata)
            .map_err(|e| Status::invalid_argument(format!("node metadata: {e}")))?,
        None => serde_json::Value::Null,
    };
    let metadata =
        ProxyMetadata::from_json(&metadata).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Proxy::from_node(&node.id, &metadata).map_err(|e| Status::invalid_argument(e.to_string()))
}
