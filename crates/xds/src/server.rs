//! `AggregatedDiscoveryService` (and VHDS) wiring streams to [`Connection`]s. Each stream's
//! work is a future that selects over the proxy's requests, published snapshots, its push turn
//! and shutdown; its response body drives it, polled in its connection's task (see
//! [`ResponseBody`] and [`crate::transport`]).

use crate::connection::{Connection, Flavor, Outgoing, PushContext};
use crate::delta_request::DeltaRequest;
use crate::grpc::{RequestStream, ResponseBody, ResponseQueue, StreamTask};
use crate::metrics::{XdsMetrics, type_label};
use crate::publish::Published;
use crate::registry::{
    ConnectionInfo, ConnectionRegistry, ConnectionStatus, StatusSource, StreamKind,
};
use crate::request::SotwRequest;
use crate::segments::Segments;
use crate::types::{ByTypeUrl, ResourceType, TypeSet, type_url_key};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use meshpilot_model::{Proxy, ProxyMetadata};
use meshpilot_translate::vhds::ROUTE_CONFIG_HEADER;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tracing::Instrument;

/// Responses queued per stream before its work waits for the proxy to read; a stalled proxy
/// then stops being fed, and its stream keeps only the latest published state.
const STREAM_BUFFER: usize = 8;

/// Change pushes un-ACKed at once over all streams, by default (istiod's `PILOT_PUSH_THROTTLE`).
pub const DEFAULT_PUSH_THROTTLE: usize = 100;

/// A proxy that has not answered a change push after this long gives up its turn (it keeps
/// its push in flight; it just stops holding others back).
const TURN_TIMEOUT: Duration = Duration::from_secs(1);

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
    registry: Arc<ConnectionRegistry>,
    /// Turns to push a change: a stream holds one from its push until the proxy answers it.
    /// The semaphore is fair, so under load proxies are pushed in the order they became
    /// owed, each once per round with everything that changed meanwhile, and a push reaches
    /// the proxy past short queues rather than behind one push in flight per proxy.
    push_turns: Arc<Turns>,
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
                registry: Arc::default(),
                push_turns: Turns::new(DEFAULT_PUSH_THROTTLE),
            }),
        }
    }

    /// At most `limit` change pushes un-ACKed at once (at least one). Call before cloning.
    pub fn with_push_throttle(mut self, limit: usize) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("set before the service is cloned");
        inner.push_turns = Turns::new(limit);
        self
    }

    /// The connections this service holds, for the debug endpoints.
    pub fn registry(&self) -> Arc<ConnectionRegistry> {
        self.inner.registry.clone()
    }
}

/// A request of either flavor, read.
enum Request {
    Sotw(SotwRequest),
    Delta(DeltaRequest),
}

/// Reads a request from its bytes. They come off the stream unread so that a SotW request is
/// read knowing which name lists the proxy is expected to repeat (`spellings`, see
/// [`Connection::sotw_name_spellings`]).
fn read_request<'k, K>(flavor: Flavor, message: Segments, spellings: K) -> Result<Request, Status>
where
    K: IntoIterator<Item = &'k Bytes>,
    K::IntoIter: Clone,
{
    match flavor {
        Flavor::Sotw => SotwRequest::decode_segments_knowing(message, spellings).map(Request::Sotw),
        Flavor::Delta => DeltaRequest::decode_frame(message.contiguous()).map(Request::Delta),
    }
    .map_err(crate::grpc::malformed)
}

impl Request {
    fn node(&self) -> Option<&Node> {
        match self {
            Request::Sotw(r) => r.node.as_ref(),
            Request::Delta(r) => r.node.as_ref(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Envoy's ADS: `envoy.service.discovery.v3.AggregatedDiscoveryService`, both flavors.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Envoy's VHDS subscription (used with `--vhds`): a delta stream of its own, never part of
/// ADS, served by the same state machine watching only virtual hosts.
const VHDS_PATH: &str = "/envoy.service.route.v3.VirtualHostDiscoveryService/DeltaVirtualHosts";
/// Largest request accepted; Envoy's requests are small (names, a node).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

impl AdsService {
    /// The response to a gRPC call from `peer`: a stream of ADS or VHDS by its path, or
    /// `Unimplemented`. Served by hand rather than through tonic's generated servers so that
    /// neither direction keeps per-stream buffers: requests are read from their frames and
    /// released after each message, and responses are written from the cache's shared encoded
    /// resources a chunk at a time (see [`crate::grpc`]).
    pub(crate) fn respond<B>(
        &self,
        peer: Option<std::net::SocketAddr>,
        request: http::Request<B>,
    ) -> http::Response<Body>
    where
        B: tonic::codegen::Body + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        let served = match request.uri().path() {
            SOTW_PATH => Served::Ads(Flavor::Sotw),
            DELTA_PATH => Served::Ads(Flavor::Delta),
            VHDS_PATH => Served::Vhds {
                // The route configuration this stream is for, when its config source names it.
                route_config: request
                    .headers()
                    .get(ROUTE_CONFIG_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(Arc::from),
            },
            path => return Status::unimplemented(format!("no method {path}")).into_http(),
        };
        let inbound: InboundStream =
            Box::pin(RequestStream::new(request.into_body(), MAX_REQUEST_BYTES));
        let responses = Arc::new(ResponseQueue::new(STREAM_BUFFER));
        match self.start(served, peer, inbound, responses.clone()) {
            Ok(task) => {
                let mut response =
                    http::Response::new(Body::new(ResponseBody::new(task, responses)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                response
            }
            Err(status) => status.into_http(),
        }
    }
}

/// What a stream serves.
#[derive(Clone, Debug)]
enum Served {
    Ads(Flavor),
    /// Virtual hosts (delta only), of the route configuration its header names, if any.
    Vhds {
        route_config: Option<Arc<str>>,
    },
}

impl Served {
    fn flavor(&self) -> Flavor {
        match self {
            Served::Ads(flavor) => *flavor,
            Served::Vhds { .. } => Flavor::Delta,
        }
    }

    fn kind(&self) -> StreamKind {
        match self {
            Served::Ads(_) => StreamKind::Ads,
            Served::Vhds { .. } => StreamKind::Vhds,
        }
    }
}

type InboundStream = Pin<Box<dyn Stream<Item = Result<Segments, Status>> + Send>>;

/// Where a stream's responses go.
type Sink = Arc<ResponseQueue>;

impl AdsService {
    fn start(
        &self,
        stream: Served,
        peer: Option<std::net::SocketAddr>,
        inbound: InboundStream,
        sink: Sink,
    ) -> Result<StreamTask, Status> {
        if !*self.inner.ready.borrow() {
            return Err(Status::unavailable(
                "meshpilot has not finished its initial sync; retry shortly",
            ));
        }
        let inner = self.inner.clone();
        let span = tracing::info_span!(
            "ads",
            peer = ?peer,
            node = tracing::field::Empty,
            connection = tracing::field::Empty
        );
        Ok(Box::pin(
            async move {
                if let Err(status) = serve_stream(&inner, stream, peer, inbound, &sink).await {
                    tracing::info!(code = ?status.code(), "stream closed: {}", status.message());
                    sink.send(Err(Box::new(status))).await;
                }
            }
            .instrument(span),
        ))
    }
}

async fn serve_stream(
    inner: &Inner,
    stream: Served,
    peer: Option<std::net::SocketAddr>,
    mut inbound: InboundStream,
    sink: &Sink,
) -> Result<(), Status> {
    let first = match inbound.next().await {
        Some(Ok(frame)) => read_request(stream.flavor(), frame, [])?,
        Some(Err(status)) => return Err(status),
        None => return Ok(()),
    };
    let node = first.node().ok_or_else(|| {
        Status::invalid_argument("the first request on an xDS stream must carry `node`")
    })?;
    let (proxy, metadata) = proxy_from_node(node)?;
    let id = format!(
        "{}-{}",
        proxy.id(),
        inner.connection_counter.fetch_add(1, Ordering::Relaxed) + 1
    );
    let span = tracing::Span::current();
    span.record("node", node.id.as_str());
    span.record("connection", id.as_str());
    let flavor = stream.flavor();
    tracing::info!(?flavor, ?stream, "proxy connected");
    let info = Arc::new(ConnectionInfo {
        id: id.clone(),
        stream: stream.kind(),
        node_id: node.id.clone(),
        flavor,
        peer,
        connected_at: SystemTime::now(),
        istio_version: metadata
            .get("ISTIO_VERSION")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
        locality: node.locality.clone(),
        metadata,
    });
    let mut connection = Connection::new(id.clone(), proxy, flavor, &inner.control_plane_id);
    connection.queue_change_pushes();
    if let Served::Vhds {
        route_config: Some(route_config),
    } = &stream
    {
        connection.scope_virtual_hosts_to(route_config.clone());
    }
    // A proxy is counted once, by its ADS stream.
    let _connected =
        matches!(stream, Served::Ads(_)).then(|| inner.metrics.connected(&info.istio_version));
    let mut published = inner.published.clone();
    let current = published.borrow_and_update().clone();
    // Streams of changes rather than `changed()` per loop turn: a `changed()` future enqueues
    // itself on the channel's waiter list, shared by every connection, and dequeues itself
    // when a request wins the select, so each ACK took that list's lock twice per channel.
    // A stream keeps its waiter between turns.
    let mut published = WatchStream::from_changes(published);
    let mut shutdown = WatchStream::from_changes(inner.shutdown.clone());
    let shared = Arc::new(SharedStream {
        info,
        state: Mutex::new(StreamState {
            connection,
            current,
            sent_at: ByTypeUrl::new(),
            last_push: None,
        }),
    });
    let _registration = inner.registry.register(id, shared.clone());
    // When the oldest publish not yet fully delivered to this proxy happened.
    let mut converging: Option<Instant> = None;
    let mut turn = Turn::default();
    // Types published changes may have touched since this proxy was last pushed.
    let mut deferred = TypeSet::default();
    let mut request = Some(first);
    loop {
        // The state is locked between awaits only (`SharedStream`).
        let (trigger, outgoing, computed) = if let Some(req) = request.take() {
            let started = Instant::now();
            let mut s = shared.lock();
            let ctx = context(&s.current);
            let out = match req {
                Request::Sotw(r) => s.connection.on_sotw_request(r, &ctx),
                Request::Delta(r) => s.connection.on_delta_request(r, &ctx),
            };
            ("request", out, started.elapsed())
        } else {
            tokio::select! {
                next = inbound.next() => match next {
                    Some(Ok(frame)) => {
                        let read = match flavor {
                            // Read under the stream's own lock, against its subscriptions.
                            Flavor::Sotw => {
                                let s = shared.lock();
                                read_request(flavor, frame, s.connection.sotw_name_spellings())
                            }
                            Flavor::Delta => read_request(flavor, frame, []),
                        };
                        request = Some(read?);
                        continue;
                    }
                    Some(Err(status)) => {
                        tracing::debug!("stream error: {status}");
                        return Ok(());
                    }
                    None => {
                        tracing::info!("proxy disconnected");
                        return Ok(());
                    }
                },
                // A stream waiting for its turn reads the latest snapshot when it comes.
                changed = published.next(), if !turn.waiting() => {
                    let Some(next) = changed else {
                        return Err(Status::unavailable("control plane shutting down"));
                    };
                    let mut s = shared.lock();
                    let affected = next.affected_since(s.current.version, s.connection.pod_key());
                    s.current = next;
                    if affected.is_empty() {
                        continue;
                    }
                    // Converged once nothing for this (or an earlier) publish is owed.
                    converging.get_or_insert(s.current.published_at);
                    if !turn.held() {
                        deferred = deferred.union(affected);
                        turn.want(&inner.push_turns);
                        continue;
                    }
                    let started = Instant::now();
                    let ctx = context(&s.current);
                    let out = s.connection.on_push(&ctx, affected);
                    ("push", out, started.elapsed())
                }
                waited = turn.granted() => {
                    inner.metrics.observe_queue_time(waited);
                    let latest = inner.published.borrow().clone();
                    let mut s = shared.lock();
                    let missed = latest.affected_since(s.current.version, s.connection.pod_key());
                    deferred = deferred.union(missed);
                    s.current = latest;
                    let started = Instant::now();
                    let ctx = context(&s.current);
                    let mut out = s.connection.on_push(&ctx, std::mem::take(&mut deferred));
                    out.extend(s.connection.push_owed(&ctx));
                    ("push", out, started.elapsed())
                }
                _ = shutdown.next() => {
                    return Err(Status::unavailable("control plane shutting down"));
                }
            }
        };
        {
            let mut s = shared.lock();
            for nack in s.connection.take_nacks() {
                tracing::warn!(
                    type_url = %nack.type_url,
                    nonce = %nack.nonce,
                    error_detail = %nack.error,
                    "proxy rejected config (NACK); keeping its last accepted config"
                );
                inner.metrics.count_nack(&nack.type_url);
            }
            if !outgoing.is_empty() {
                inner.metrics.observe_push_time(computed);
                log_push(&s.connection, trigger, &outgoing, computed);
            }
        }
        for response in outgoing {
            let kind = ResourceType::from_type_url(response.type_url());
            turn.pushed(kind);
            let type_url = type_url_key(response.type_url());
            let bytes = response.resource_bytes();
            if sink.is_full() {
                // The proxy is not reading: the others need not wait for its turn to run out.
                turn.give_back();
            }
            sink.send(Ok(Box::new(response))).await;
            inner.metrics.count_push(&type_url, bytes);
            let now = SystemTime::now();
            let mut s = shared.lock();
            s.last_push = Some(now);
            match s.sent_at.get_mut(&type_url) {
                Some(sent_at) => *sent_at = now,
                None => {
                    s.sent_at.insert(type_url, now);
                }
            }
        }
        let s = shared.lock();
        if !s.connection.awaits_answer(turn.pushed_types()) {
            turn.give_back();
        }
        if !deferred.is_empty() || s.connection.can_push_owed() {
            turn.want(&inner.push_turns);
        }
        if deferred.is_empty()
            && !s.connection.owes_push()
            && let Some(since) = converging.take()
        {
            inner.metrics.observe_convergence(since.elapsed());
        }
    }
}

/// What a stream shares with the debug views ([`crate::registry`]): its state machine and
/// when it last sent each type. The stream locks it between awaits, never across one, so a
/// view waits at most for one request or push to be computed.
struct SharedStream {
    info: Arc<ConnectionInfo>,
    state: Mutex<StreamState>,
}

struct StreamState {
    connection: Connection,
    /// The published state the connection last computed responses from.
    current: Arc<Published>,
    sent_at: ByTypeUrl<SystemTime>,
    last_push: Option<SystemTime>,
}

impl SharedStream {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // A panic mid-request ends the stream; a view may still read what it left.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StatusSource for SharedStream {
    fn status(&self) -> ConnectionStatus {
        let s = self.lock();
        ConnectionStatus::of(
            self.info.clone(),
            &s.connection,
            &s.sent_at,
            &s.current,
            s.last_push,
        )
    }
}

/// The push throttle's turns, and when each held one runs out.
///
/// Expiry is kept here rather than by a timer in each stream: a stream's work runs inside its
/// response body (see [`ResponseBody`]), and HTTP/2 stops polling a body whose proxy has
/// stopped reading, so a stalled proxy's stream could not hand its turn back itself.
struct Turns {
    semaphore: Arc<tokio::sync::Semaphore>,
    /// Held turns in the order they were granted, which is the order they run out in.
    held: Mutex<VecDeque<(tokio::time::Instant, Weak<HeldPermit>)>>,
    /// Raised when `held` gains a first entry.
    added: tokio::sync::Notify,
    expiring: std::sync::Once,
}

/// A granted turn; emptied when the proxy answers or the turn runs out, whichever is first.
type HeldPermit = Mutex<Option<tokio::sync::OwnedSemaphorePermit>>;

impl Turns {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Turns {
            semaphore: Arc::new(tokio::sync::Semaphore::new(limit.max(1))),
            held: Mutex::default(),
            added: tokio::sync::Notify::new(),
            expiring: std::sync::Once::new(),
        })
    }

    /// Waits for a turn (the semaphore is fair: first come, first served).
    async fn acquire(self: Arc<Self>) -> Option<Arc<HeldPermit>> {
        let permit = self.semaphore.clone().acquire_owned().await.ok()?;
        let held = Arc::new(Mutex::new(Some(permit)));
        let first = {
            let mut queue = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            // Most turns are given back long before they would run out: forget those first.
            while queue
                .front()
                .is_some_and(|(_, given)| given.strong_count() == 0)
            {
                queue.pop_front();
            }
            let deadline = tokio::time::Instant::now() + TURN_TIMEOUT;
            queue.push_back((deadline, Arc::downgrade(&held)));
            queue.len() == 1
        };
        // Started with the first turn granted: that is inside the runtime, and never idle.
        self.expiring.call_once(|| {
            tokio::spawn(self.clone().expire_held());
        });
        if first {
            self.added.notify_one();
        }
        Some(held)
    }

    /// Takes back every turn held past [`TURN_TIMEOUT`]; sleeps while none is held.
    async fn expire_held(self: Arc<Self>) {
        loop {
            let next = self
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .front()
                .map(|(deadline, _)| *deadline);
            let Some(deadline) = next else {
                self.added.notified().await;
                continue;
            };
            tokio::time::sleep_until(deadline).await;
            let now = tokio::time::Instant::now();
            let mut queue = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some((deadline, held)) = queue.front() {
                if *deadline > now {
                    break;
                }
                if let Some(held) = held.upgrade() {
                    held.lock().unwrap_or_else(PoisonError::into_inner).take();
                }
                queue.pop_front();
            }
        }
    }
}

/// A stream's place in the push queue: waiting for a turn, holding one, or neither.
#[derive(Default)]
struct Turn {
    /// Since when, and the wait itself.
    waiting: Option<(Instant, BoxFuture<Option<Arc<HeldPermit>>>)>,
    held: Option<HeldTurn>,
}

/// Dropped as soon as the proxy answers what was pushed under it.
struct HeldTurn {
    permit: Option<Arc<HeldPermit>>,
    /// The types pushed while holding the turn.
    pushed: TypeSet,
}

impl HeldTurn {
    /// Whether the turn has run out ([`Turns::expire_held`]): the proxy is slow to answer,
    /// so others go first.
    fn expired(&self) -> bool {
        self.permit.as_ref().is_some_and(|permit| {
            permit
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none()
        })
    }
}

impl Turn {
    fn held(&mut self) -> bool {
        if self.held.as_ref().is_some_and(HeldTurn::expired) {
            self.held = None;
        }
        self.held.is_some()
    }

    fn waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Queues for a turn, unless holding or waiting for one already.
    fn want(&mut self, turns: &Arc<Turns>) {
        if !self.held() && self.waiting.is_none() {
            self.waiting = Some((Instant::now(), Box::pin(turns.clone().acquire())));
        }
    }

    /// The turn, once granted, and how long it was waited for; never resolves while not
    /// waiting.
    async fn granted(&mut self) -> Duration {
        let Some((since, wait)) = self.waiting.as_mut() else {
            return std::future::pending().await;
        };
        let permit = wait.await;
        let waited = since.elapsed();
        self.waiting = None;
        self.held = Some(HeldTurn {
            permit,
            pushed: TypeSet::default(),
        });
        waited
    }

    /// Notes a response (of `kind`, when one of the served types) sent while holding the turn.
    fn pushed(&mut self, kind: Option<ResourceType>) {
        if let Some(held) = self.held.as_mut() {
            // A type outside the served ones makes it "any".
            match kind {
                Some(kind) => held.pushed.insert(kind),
                None => held.pushed = TypeSet::ALL,
            }
        }
    }

    /// The types pushed under the held turn (none when not holding one).
    fn pushed_types(&self) -> TypeSet {
        self.held.as_ref().map(|h| h.pushed).unwrap_or_default()
    }

    fn give_back(&mut self) {
        self.held = None;
    }
}

/// One debug line per batch of responses: proxy, types with sizes, and compute time.
fn log_push(connection: &Connection, trigger: &str, outgoing: &[Outgoing], computed: Duration) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let sizes: Vec<String> = outgoing
        .iter()
        .map(|r| {
            format!(
                "{}:{}/{}B",
                type_label(r.type_url()),
                r.resource_count(),
                r.resource_bytes()
            )
        })
        .collect();
    tracing::debug!(
        proxy = %connection.proxy().id(),
        trigger,
        types = %sizes.join(","),
        bytes = outgoing.iter().map(Outgoing::resource_bytes).sum::<usize>(),
        duration_us = computed.as_micros() as u64,
        "push"
    );
}

fn context(published: &Arc<Published>) -> PushContext {
    PushContext {
        cache: published.cache.clone(),
        version_info: published.version_info.clone(),
    }
}

/// The proxy a node describes, and its metadata as JSON.
fn proxy_from_node(node: &Node) -> Result<(Proxy, serde_json::Value), Status> {
    let metadata = match &node.metadata {
        Some(metadata) => meshpilot_translate::dump::to_json(metadata)
            .map_err(|e| Status::invalid_argument(format!("node metadata: {e}")))?,
        None => serde_json::Value::Null,
    };
    let parsed =
        ProxyMetadata::from_json(&metadata).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let proxy =
        Proxy::from_node(&node.id, &parsed).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((proxy, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_does_not_decode_ends_its_stream_as_invalid_argument() {
        // Field 3 (`resource_names`) whose length runs past the end of the request.
        let cut = Bytes::from_static(&[0x1a, 0x05, b'a']);
        for flavor in [Flavor::Sotw, Flavor::Delta] {
            let Err(status) = read_request(flavor, cut.clone().into(), []) else {
                panic!("{flavor:?}: a cut request decoded");
            };
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().starts_with("malformed request"),
                "{status:?}"
            );
        }
        let ok = read_request(Flavor::Sotw, Bytes::new().into(), []);
        assert!(matches!(ok, Ok(Request::Sotw(_))));
    }

    fn turns_remembered(turns: &Turns) -> usize {
        turns.held.lock().unwrap().len()
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_held_past_its_time_is_taken_back_and_one_given_back_is_forgotten() {
        let turns = Turns::new(1);
        let held = turns.clone().acquire().await.expect("the only turn");
        // The next stream waits until the held turn runs out.
        let started = tokio::time::Instant::now();
        let next = tokio::time::timeout(5 * TURN_TIMEOUT, turns.clone().acquire())
            .await
            .expect("the held turn runs out")
            .expect("the turn, taken back");
        assert!(started.elapsed() >= TURN_TIMEOUT, "{:?}", started.elapsed());
        assert!(
            held.lock().unwrap().is_none(),
            "the late holder no longer holds it"
        );
        // Given back at once (the proxy answered): the next grant forgets it.
        drop(next);
        let _third = turns.clone().acquire().await.expect("the turn given back");
        assert_eq!(turns_remembered(&turns), 1);
    }
}
