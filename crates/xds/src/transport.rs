//! The xDS ports' HTTP/2 connections, each served with its streams in one task.
//!
//! hyper spawns a task per HTTP/2 stream that pipes the stream's response body into the
//! connection, whose own task reads and writes the socket. A push then wakes two tasks (the
//! stream's to produce it, the connection's to write it) and its ACK two more, on whichever
//! threads they land, with h2's stream store locked from both. A sidecar's connection carries
//! its ADS stream (and, with `--vhds`, its VHDS streams), so here the futures hyper would spawn
//! for them are kept by the connection's task ([`ConnectionTask`]), which polls the connection
//! and then the streams it woke, in passes: a push and its ACK are one wake-up of one task.
//!
//! The accept loop ([`serve`]) also ends each connection as tonic's server did: gracefully
//! (HTTP/2 GOAWAY) at `max_connection_age` or shutdown, and forcefully a grace period later.

use crate::read_ahead::ReadAhead;
use crate::server::AdsService;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: the futures it would spawn (one per stream) are kept
/// for the connection's task to poll.
#[derive(Clone, Default)]
pub(crate) struct StreamSpawner {
    spawned: Arc<Mutex<Vec<StreamFuture>>>,
}

impl StreamSpawner {
    fn take(&self) -> Vec<StreamFuture> {
        std::mem::take(&mut *self.spawned.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<F> hyper::rt::Executor<F> for StreamSpawner
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.spawned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(future));
    }
}

/// A connection that can be asked to finish its streams and close (hyper's sends GOAWAY).
pub(crate) trait GracefulShutdown {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulShutdown for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// What the task's wakers share: which part of the task was woken. A wake while the task is
/// in a pass only asks for another pass; otherwise it wakes the task.
#[derive(Default)]
struct Wakes {
    task: AtomicWaker,
    in_pass: AtomicBool,
    connection: AtomicBool,
    streams: AtomicBool,
    /// The closing or grace timer.
    timer: AtomicBool,
}

impl Wakes {
    fn wake(&self, part: Part) {
        self.flag(part).store(true, Ordering::SeqCst);
        if !self.in_pass.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }

    fn flag(&self, part: Part) -> &AtomicBool {
        match part {
            Part::Connection => &self.connection,
            Part::Streams => &self.streams,
            Part::Timer => &self.timer,
        }
    }

    /// Whether `part` was woken since it was last polled, clearing the flag.
    fn take(&self, part: Part) -> bool {
        self.flag(part).swap(false, Ordering::SeqCst)
    }

    fn any(&self) -> bool {
        [Part::Connection, Part::Streams, Part::Timer]
            .into_iter()
            .any(|part| self.flag(part).load(Ordering::SeqCst))
    }
}

/// A part of the task, polled only when it was woken: the connection itself when its socket
/// or a stream's output needs it, the streams when the connection delivered to one, the timer
/// when it fires.
#[derive(Clone, Copy)]
enum Part {
    Connection,
    Streams,
    Timer,
}

struct PartWaker {
    wakes: Arc<Wakes>,
    part: Part,
}

impl Wake for PartWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.wake(self.part);
    }
}

fn waker(wakes: &Arc<Wakes>, part: Part) -> Waker {
    Waker::from(Arc::new(PartWaker {
        wakes: wakes.clone(),
        part,
    }))
}

/// Passes one poll makes while it keeps being woken before it lets other tasks run.
const MAX_PASSES: usize = 8;

type Timer = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Closing {
    /// Until the timer fires, then closing gracefully.
    Open(Timer),
    /// Closing gracefully; closed by force when the timer fires.
    Graceful(Timer),
}

/// A connection and the streams it accepted, polled as one task (see the module).
pub(crate) struct ConnectionTask<C: Future> {
    connection: Option<Pin<Box<C>>>,
    outcome: Option<C::Output>,
    spawner: StreamSpawner,
    streams: FuturesUnordered<StreamFuture>,
    closing: Closing,
    grace: Duration,
    wakes: Arc<Wakes>,
    connection_waker: Waker,
    streams_waker: Waker,
    timer_waker: Waker,
}

impl<C: Future + GracefulShutdown> ConnectionTask<C> {
    /// `connection`, served with `spawner` as its executor, closes gracefully once `close`
    /// resolves and by force `grace` after that.
    pub fn new(
        connection: C,
        spawner: StreamSpawner,
        close: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> Self {
        let wakes = Arc::new(Wakes::default());
        // Both are polled on the first pass, to start and to register their wakers.
        wakes.connection.store(true, Ordering::SeqCst);
        wakes.timer.store(true, Ordering::SeqCst);
        ConnectionTask {
            connection: Some(Box::pin(connection)),
            outcome: None,
            spawner,
            streams: FuturesUnordered::new(),
            closing: Closing::Open(Box::pin(close)),
            grace,
            connection_waker: waker(&wakes, Part::Connection),
            streams_waker: waker(&wakes, Part::Streams),
            timer_waker: waker(&wakes, Part::Timer),
            wakes,
        }
    }

    /// One pass over the parts that were woken: the timer, the connection (its reads, and
    /// writes of what the streams queued), then the streams woken or accepted. Whether the
    /// task is done.
    fn pass(&mut self) -> bool {
        if self.wakes.take(Part::Timer) && self.poll_closing() {
            // Closed by force: the connection and its streams are dropped with the task.
            self.connection = None;
            self.streams.clear();
            return true;
        }
        if self.wakes.take(Part::Connection)
            && let Some(connection) = &mut self.connection
            && let Poll::Ready(outcome) = connection
                .as_mut()
                .poll(&mut Context::from_waker(&self.connection_waker))
        {
            self.outcome = Some(outcome);
            self.connection = None;
        }
        let accepted = self.spawner.take();
        if self.wakes.take(Part::Streams) || !accepted.is_empty() {
            self.streams.extend(accepted);
            let mut cx = Context::from_waker(&self.streams_waker);
            while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(&mut cx) {}
        }
        self.connection.is_none() && self.streams.is_empty()
    }

    /// Polls the closing timer; whether the grace period is over.
    fn poll_closing(&mut self) -> bool {
        let mut cx = Context::from_waker(&self.timer_waker);
        match &mut self.closing {
            Closing::Open(timer) => {
                if timer.as_mut().poll(&mut cx).is_pending() {
                    return false;
                }
                if let Some(connection) = &mut self.connection {
                    connection.as_mut().graceful_shutdown();
                    // It sends its GOAWAY when next polled: in this pass.
                    self.wakes.connection.store(true, Ordering::SeqCst);
                }
                let mut grace: Timer = Box::pin(tokio::time::sleep(self.grace));
                let expired = grace.as_mut().poll(&mut cx).is_ready();
                self.closing = Closing::Graceful(grace);
                expired
            }
            Closing::Graceful(timer) => timer.as_mut().poll(&mut cx).is_ready(),
        }
    }
}

impl<C: Future> Unpin for ConnectionTask<C> {}

impl<C: Future + GracefulShutdown> Future for ConnectionTask<C> {
    /// The connection's outcome once it and all its streams are done; `None` if it was closed
    /// by force.
    type Output = Option<C::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.wakes.task.register(cx.waker());
        this.wakes.in_pass.store(true, Ordering::SeqCst);
        let mut passes = 0;
        loop {
            if this.pass() {
                this.wakes.in_pass.store(false, Ordering::SeqCst);
                return Poll::Ready(this.outcome.take());
            }
            passes += 1;
            if this.wakes.any() {
                if passes < MAX_PASSES {
                    continue;
                }
                this.wakes.in_pass.store(false, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.wakes.in_pass.store(false, Ordering::SeqCst);
            // A wake after the check above and before leaving the pass did not wake the task.
            if !this.wakes.any() {
                return Poll::Pending;
            }
            this.wakes.in_pass.store(true, Ordering::SeqCst);
        }
    }
}

/// HTTP/2 settings of the xDS ports.
#[derive(Clone, Debug)]
pub struct Http2Settings {
    /// gRPC keepalive: how often a connection is pinged, and how long a ping may go unanswered.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// The flow-control window of each connection and of each stream.
    pub receive_window: u32,
    /// Connections are closed gracefully at this age, so that clients spread over replicas.
    pub max_connection_age: Option<Duration>,
    /// How long a connection closing gracefully (at its age or at shutdown) has before it is
    /// closed by force.
    pub close_grace: Duration,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
}

impl Default for Http2Settings {
    /// Istio's keepalive (30 s, 10 s), no age limit.
    fn default() -> Self {
        Http2Settings {
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100_000,
            receive_window: RECEIVE_WINDOW_BYTES,
            max_connection_age: None,
            close_grace: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The HTTP/2 flow-control window each xDS connection and stream offers. HTTP/2 gives credit
/// back once about a third of the window has been read, one `WINDOW_UPDATE` frame each for the
/// stream and the connection: with hyper's 1 MiB that was after every sixth SotW EDS ACK (55 KB
/// of names at 1,000 services), a send and, at the proxy, a wake-up and a read of their own.
/// Requests are read as they arrive and may be this large anyway (the ADS server's request
/// limit), so no more can pile up than before.
const RECEIVE_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// One connection's xDS service: a stream goes to ADS or VHDS by its path.
struct ConnectionService {
    ads: AdsService,
    peer: Option<SocketAddr>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for ConnectionService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        std::future::ready(Ok(self.ads.respond(self.peer, request)))
    }
}

/// Serves xDS on the connections `incoming` accepts, over TLS when `tls` is given, until
/// `shutdown` is cancelled; then closes every connection (see [`Http2Settings::close_grace`])
/// and returns once all are closed.
pub async fn serve<S>(
    incoming: S,
    tls: Option<TlsAcceptor>,
    ads: AdsService,
    settings: Http2Settings,
    shutdown: CancellationToken,
) where
    S: futures::Stream<Item = std::io::Result<ReadAhead<TcpStream>>>,
{
    let mut incoming = std::pin::pin!(incoming);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let io = tokio::select! {
            _ = shutdown.cancelled() => break,
            io = incoming.next() => match io {
                Some(Ok(io)) => io,
                Some(Err(error)) => {
                    accept_failed(&error).await;
                    continue;
                }
                None => break,
            },
        };
        let peer = io.get_ref().peer_addr().ok();
        let (ads, shutdown) = (ads.clone(), shutdown.clone());
        // Apart, so that a plaintext connection's task has no room for a TLS handshake.
        match &tls {
            None => {
                let task = connection_task(io, peer, ads, &settings, shutdown);
                connections.spawn(serve_connection(task, peer))
            }
            Some(tls) => {
                let handshake = tls.accept(io);
                let settings = settings.clone();
                connections.spawn(async move {
                    match tokio::time::timeout(settings.tls_handshake_timeout, handshake).await {
                        Ok(Ok(io)) => {
                            let task = connection_task(io, peer, ads, &settings, shutdown);
                            serve_connection(task, peer).await
                        }
                        Ok(Err(error)) => tracing::debug!(?peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                    }
                })
            }
        };
    }
    connections.close();
    connections.wait().await;
}

/// A failed accept: one connection's trouble (reset before it was accepted) is skipped; any
/// other (out of file descriptors, or memory) would fail again at once, so the loop pauses.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) {
        tracing::debug!(%error, "accepting a connection");
        return;
    }
    tracing::warn!(%error, "accepting connections; pausing for {ACCEPT_PAUSE:?}");
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// How long accepting pauses after an error that is not one connection's.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

type Http2Connection<IO> = hyper::server::conn::http2::Connection<
    hyper_util::rt::TokioIo<IO>,
    ConnectionService,
    StreamSpawner,
>;

/// The task serving one connection. Built outside any future: a connection held in a
/// future's state across its first await would take its room in every connection's task.
fn connection_task<IO>(
    io: IO,
    peer: Option<SocketAddr>,
    ads: AdsService,
    settings: &Http2Settings,
    shutdown: CancellationToken,
) -> ConnectionTask<Http2Connection<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let spawner = StreamSpawner::default();
    let connection = hyper::server::conn::http2::Builder::new(spawner.clone())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_stream_window_size(settings.receive_window)
        .initial_connection_window_size(settings.receive_window)
        .serve_connection(
            hyper_util::rt::TokioIo::new(io),
            ConnectionService { ads, peer },
        );
    let age = settings.max_connection_age;
    let close = async move {
        match age {
            Some(age) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(age) => {}
                }
            }
            None => shutdown.cancelled().await,
        }
    };
    ConnectionTask::new(connection, spawner, close, settings.close_grace)
}

/// Serves one connection until it closes.
async fn serve_connection<IO>(task: ConnectionTask<Http2Connection<IO>>, peer: Option<SocketAddr>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match task.await {
        Some(Ok(())) => {}
        Some(Err(error)) => tracing::debug!(?peer, %error, "connection ended"),
        None => tracing::debug!(?peer, "connection closed by force after its grace period"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    /// A connection whose behaviour each test scripts: what it does when polled, and whether it
    /// was asked to shut down gracefully.
    struct Scripted<F> {
        on_poll: F,
        graceful: Arc<AtomicBool>,
    }

    impl<F: FnMut(&mut Context<'_>, bool) -> Poll<u8> + Unpin> Future for Scripted<F> {
        type Output = u8;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
            let graceful = self.graceful.load(Ordering::SeqCst);
            (self.on_poll)(cx, graceful)
        }
    }

    impl<F> GracefulShutdown for Scripted<F> {
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.graceful.store(true, Ordering::SeqCst);
        }
    }

    fn scripted<F>(on_poll: F) -> (Scripted<F>, Arc<AtomicBool>)
    where
        F: FnMut(&mut Context<'_>, bool) -> Poll<u8> + Unpin,
    {
        let graceful = Arc::new(AtomicBool::new(false));
        (
            Scripted {
                on_poll,
                graceful: graceful.clone(),
            },
            graceful,
        )
    }

    /// Counts the wakes of the task polling a [`ConnectionTask`].
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn never() -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    const GRACE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn streams_the_connection_spawns_run_in_its_task_which_ends_after_them() {
        let spawner = StreamSpawner::default();
        let (stream_done_tx, stream_done) = oneshot::channel::<()>();
        let (connection_done_tx, mut connection_done) = oneshot::channel::<()>();
        let stream_ran = Arc::new(AtomicBool::new(false));
        let mut stream = Some({
            let stream_ran = stream_ran.clone();
            Box::pin(async move {
                stream_ran.store(true, Ordering::SeqCst);
                let _ = stream_done.await;
            })
        });
        let exec = spawner.clone();
        let (connection, _) = scripted(move |cx, _| {
            if let Some(stream) = stream.take() {
                exec.execute(stream);
            }
            match Pin::new(&mut connection_done).poll(cx) {
                Poll::Ready(_) => Poll::Ready(7),
                Poll::Pending => Poll::Pending,
            }
        });
        let task = tokio::spawn(ConnectionTask::new(connection, spawner, never(), GRACE));
        tokio::task::yield_now().await;
        assert!(stream_ran.load(Ordering::SeqCst), "the stream was polled");
        connection_done_tx.send(()).unwrap();
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "the task waits for its stream");
        stream_done_tx.send(()).unwrap();
        assert_eq!(task.await.unwrap(), Some(7));
    }

    #[test]
    fn a_wake_during_a_pass_is_another_pass_not_a_wake_of_the_task() {
        let mut polls = 0;
        let (connection, _) = scripted(move |cx, _| {
            polls += 1;
            if polls == 1 {
                // What h2 does when a stream queues a frame: wake the connection.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(1)
        });
        let mut task = ConnectionTask::new(connection, StreamSpawner::default(), never(), GRACE);
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let polled = Pin::new(&mut task).poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Ready(Some(1)));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_while_idle_wakes_the_task_and_polls_only_what_was_woken() {
        let parked: Arc<Mutex<Option<Waker>>> = Arc::default();
        let connection_polls = Arc::new(AtomicUsize::new(0));
        let (connection, _) = scripted({
            let parked = parked.clone();
            let polls = connection_polls.clone();
            move |cx, _| {
                polls.fetch_add(1, Ordering::SeqCst);
                *parked.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let spawner = StreamSpawner::default();
        let stream_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let stream_polls = Arc::new(AtomicUsize::new(0));
        spawner.execute({
            let stream_waker = stream_waker.clone();
            let polls = stream_polls.clone();
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                *stream_waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::<()>::Pending
            })
        });
        let mut task = ConnectionTask::new(connection, spawner, never(), GRACE);
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        // Polls the task once; how often the connection and the stream have been polled.
        let mut poll = || {
            assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
            let polls = |count: &AtomicUsize| count.load(Ordering::SeqCst);
            (polls(&connection_polls), polls(&stream_polls))
        };
        assert_eq!(poll(), (1, 1));

        // The stream is woken (the connection delivered to it): only the stream is polled.
        stream_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(), (1, 2));

        // The connection is woken (its socket): only the connection is polled.
        parked.lock().unwrap().take().unwrap().wake();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert_eq!(poll(), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_is_graceful_first_and_forced_after_the_grace_period() {
        let (connection, graceful) = scripted(|_, _| Poll::Pending);
        let (close_tx, close) = oneshot::channel::<()>();
        let task = tokio::spawn(ConnectionTask::new(
            connection,
            StreamSpawner::default(),
            async move {
                let _ = close.await;
            },
            GRACE,
        ));
        tokio::task::yield_now().await;
        assert!(!graceful.load(Ordering::SeqCst));
        close_tx.send(()).unwrap();
        tokio::task::yield_now().await;
        assert!(graceful.load(Ordering::SeqCst), "asked to close gracefully");
        tokio::time::sleep(GRACE - Duration::from_millis(1)).await;
        assert!(
            !task.is_finished(),
            "not closed before the grace period is over"
        );
        assert_eq!(task.await.unwrap(), None, "closed by force");
    }

    #[tokio::test(start_paused = true)]
    async fn accepting_pauses_after_errors_that_are_not_one_connections() {
        use std::io::{Error, ErrorKind};
        let started = tokio::time::Instant::now();
        accept_failed(&Error::from(ErrorKind::ConnectionReset)).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a reset connection is skipped"
        );
        // EMFILE: the process is out of file descriptors.
        accept_failed(&Error::from_raw_os_error(24)).await;
        assert_eq!(started.elapsed(), ACCEPT_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_closes_gracefully_ends_with_its_outcome() {
        let (connection, _) = scripted(|_, graceful| {
            if graceful {
                Poll::Ready(3)
            } else {
                Poll::Pending
            }
        });
        let task = ConnectionTask::new(
            connection,
            StreamSpawner::default(),
            tokio::time::sleep(Duration::from_secs(1)),
            GRACE,
        );
        assert_eq!(task.await, Some(3));
    }
}
