//! gRPC message framing for the ADS streams, both directions, without per-stream buffers
//! that outlive a message.
//!
//! tonic's generated server keeps one encode and one decode buffer per stream, each grown to
//! the largest message seen: a sidecar's config (hundreds of KiB) on the way out and its EDS
//! subscription (tens of KiB of names) on the way in, held for the stream's lifetime. With
//! thousands of sidecars that was most of the server's memory. Here a request's bytes live
//! only until it is decoded, and a response is produced in chunks as HTTP/2 flow control
//! takes them.

use crate::connection::Outgoing;
use crate::response::GrpcChunks;
use crate::segments::{Pending, Segments};
use bytes::{Buf, Bytes};
use futures::task::AtomicWaker;
use http_body::{Body, Frame};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use tokio_stream::Stream;
use tonic::Status;
use tonic::codegen::http;

/// The 5-byte gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The status a request that does not decode ends its stream with.
pub(crate) fn malformed(error: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("malformed request: {error}"))
}

/// The messages of a gRPC request body, one at a time, as the pieces of bytes they arrived in:
/// the stream reads them (`server::read_request`), knowing what its proxy is expected to repeat.
pub struct RequestStream<B> {
    body: Pin<Box<B>>,
    /// The pieces of the message being assembled, as the body gave them (not copied).
    pending: Pending,
    max_message: usize,
    ended: bool,
    /// An error was returned: the stream is over whatever is left in `pending`.
    failed: bool,
}

impl<B> RequestStream<B> {
    pub fn new(body: B, max_message: usize) -> Self {
        RequestStream {
            body: Box::pin(body),
            pending: Pending::default(),
            max_message,
            ended: false,
            failed: false,
        }
    }

    /// The next complete message in `pending`, if one is there.
    fn take_message(&mut self) -> Result<Option<Segments>, Status> {
        let Some(prefix) = self.pending.peek::<PREFIX>() else {
            return Ok(None);
        };
        if prefix[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported; send identity encoding",
            ));
        }
        let len = u32::from_be_bytes(prefix[1..].try_into().expect("4 bytes")) as usize;
        if len > self.max_message {
            return Err(Status::resource_exhausted(format!(
                "request of {len} bytes exceeds the limit of {} bytes",
                self.max_message
            )));
        }
        if self.pending.len() < PREFIX + len {
            return Ok(None);
        }
        self.pending.skip(PREFIX);
        Ok(Some(self.pending.take(len)))
    }
}

impl<B> Stream for RequestStream<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Segments, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            match this.take_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        // HTTP/2's DATA payloads are `Bytes`: taken as they are, not copied.
                        let len = data.remaining();
                        this.pending.push(data.copy_to_bytes(len));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(Status::from_error(e.into()))));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if !this.pending.is_empty() {
                        this.failed = true;
                        return Poll::Ready(Some(Err(Status::internal(
                            "request stream ended inside a message",
                        ))));
                    }
                }
            }
        }
    }
}

/// Bytes of one stream's response chunks handed to HTTP/2 but not yet written to the socket.
#[derive(Debug, Default)]
struct InFlight {
    bytes: AtomicUsize,
    /// The body waiting for room, woken as chunks are written.
    waiting: AtomicWaker,
}

/// A response chunk; gives its size back to the stream's [`InFlight`] once the transport has
/// written (and dropped) it.
struct Lease {
    data: Bytes,
    in_flight: Arc<InFlight>,
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.in_flight
            .bytes
            .fetch_sub(self.data.len(), Ordering::AcqRel);
        self.in_flight.waiting.wake();
    }
}

/// A response or the status that ends the stream, as queued for [`ResponseBody`]. Boxed: a
/// queued response is two words, whatever the response.
pub type Queued = Result<Box<Outgoing>, Box<Status>>;

/// The responses a stream has produced and its body has not yet taken, at most `limit`.
///
/// Only the stream's own future writes to it, and that future is polled by the body that
/// reads it ([`ResponseBody`]), in one task: a full queue needs no waker, because the body
/// polls the future again as soon as it has taken a response out.
#[derive(Debug)]
pub struct ResponseQueue {
    queued: Mutex<VecDeque<Queued>>,
    limit: usize,
}

impl ResponseQueue {
    pub fn new(limit: usize) -> Self {
        ResponseQueue {
            queued: Mutex::default(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the proxy has fallen `limit` responses behind.
    pub fn is_full(&self) -> bool {
        self.lock().len() >= self.limit
    }

    /// Queues `response` once there is room (see the type's note on waking).
    pub async fn send(&self, response: Queued) {
        let mut response = Some(response);
        std::future::poll_fn(|_| {
            let mut queued = self.lock();
            if queued.len() >= self.limit {
                return Poll::Pending;
            }
            queued.push_back(response.take().expect("queued once"));
            Poll::Ready(())
        })
        .await
    }

    /// The oldest response, and whether the queue was full before it was taken.
    fn pop(&self) -> Option<(Queued, bool)> {
        let mut queued = self.lock();
        let was_full = queued.len() >= self.limit;
        queued.pop_front().map(|response| (response, was_full))
    }
}

/// The waker a stream's work is polled with: it wakes the body and notes that the work asked
/// to run. The body polls the work only then (or when it made room in a full queue), because a
/// poll re-registers the work on every waiter list it waits on, and the published snapshot's is
/// shared by all streams and taken under a lock.
struct TaskWaker {
    woken: AtomicBool,
    body: AtomicWaker,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.body.wake();
    }
}

/// A stream's work: reading its requests, following published snapshots and queueing
/// responses; it ends when the stream does.
pub type StreamTask = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The response body of one stream, which also drives the stream's own work ([`StreamTask`])
/// in HTTP/2's task for the stream: each queued response as gRPC frames, then the
/// `grpc-status` trailers. One task per stream instead of two saves a wake-up and a channel
/// hand-off per push.
///
/// A chunk is produced only when the stream's previous chunks have been written out, so
/// however slowly a proxy reads (or however many connect at once), the server buffers at most
/// [`ResponseBody::MAX_IN_FLIGHT`] bytes of encoded config for it, and at most `limit`
/// responses ([`ResponseQueue`]); a stalled proxy's stream simply stops being fed while its
/// watch keeps only the latest state.
pub struct ResponseBody {
    task: Option<StreamTask>,
    task_waker: Arc<TaskWaker>,
    /// `task_waker` as a [`Waker`], made once.
    waker: Waker,
    responses: Arc<ResponseQueue>,
    current: Option<GrpcChunks>,
    in_flight: Arc<InFlight>,
    finished: bool,
}

impl ResponseBody {
    pub const MAX_IN_FLIGHT: usize = GrpcChunks::TARGET;

    pub fn new(task: StreamTask, responses: Arc<ResponseQueue>) -> Self {
        // Woken to begin with: the work has not run yet.
        let task_waker = Arc::new(TaskWaker {
            woken: AtomicBool::new(true),
            body: AtomicWaker::new(),
        });
        ResponseBody {
            task: Some(task),
            waker: Waker::from(task_waker.clone()),
            task_waker,
            responses,
            current: None,
            in_flight: Arc::default(),
            finished: false,
        }
    }

    /// Whether another chunk may be handed out now; if not, the body is woken when it may.
    fn has_room(&self, cx: &mut Context<'_>) -> bool {
        let room = || self.in_flight.bytes.load(Ordering::Acquire) < Self::MAX_IN_FLIGHT;
        if room() {
            return true;
        }
        self.in_flight.waiting.register(cx.waker());
        // A chunk written between the check and the registration would have woken no one.
        room()
    }

    fn lease(&self, chunk: Bytes) -> Bytes {
        self.in_flight
            .bytes
            .fetch_add(chunk.len(), Ordering::AcqRel);
        Bytes::from_owner(Lease {
            data: chunk,
            in_flight: self.in_flight.clone(),
        })
    }

    fn trailers(status: &Status) -> Frame<Bytes> {
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a message that cannot be a header value fails; the code alone still can.
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
        }
        Frame::trailers(trailers)
    }

    /// Lets the stream's task run until it waits, if it has been woken since; forgets it once
    /// it has ended.
    fn drive_task(&mut self, cx: &mut Context<'_>) {
        let Some(task) = self.task.as_mut() else {
            return;
        };
        self.task_waker.body.register(cx.waker());
        if !self.task_waker.woken.swap(false, Ordering::AcqRel) {
            return;
        }
        if task
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
            .is_ready()
        {
            self.task = None;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        // Requests and turns are answered even while a response is being written.
        self.drive_task(cx);
        loop {
            if self.current.is_some() && !self.has_room(cx) {
                return Poll::Pending;
            }
            if let Some(chunk) = self.current.as_mut().and_then(Iterator::next) {
                let leased = self.lease(chunk);
                return Poll::Ready(Some(Ok(Frame::data(leased))));
            }
            self.current = None;
            if self.finished {
                return Poll::Ready(None);
            }
            match self.responses.pop() {
                Some((Ok(response), was_full)) => {
                    self.current = Some(GrpcChunks::new(*response));
                    if was_full {
                        // The task waits for the room just made, with no waker of its own.
                        self.task_waker.woken.store(true, Ordering::Release);
                        self.drive_task(cx);
                    }
                }
                Some((Err(status), _)) => {
                    self.finished = true;
                    return Poll::Ready(Some(Ok(Self::trailers(&status))));
                }
                None if self.task.is_none() => {
                    self.finished = true;
                    return Poll::Ready(Some(Ok(Self::trailers(&Status::ok("")))));
                }
                None => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.current.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use http_body::Frame;
    use prost::Message;
    use tokio_stream::StreamExt;

    #[test]
    fn a_queued_response_is_two_words() {
        // A stream keeps up to `STREAM_BUFFER` of these while its proxy is behind.
        assert_eq!(
            std::mem::size_of::<Queued>(),
            2 * std::mem::size_of::<usize>()
        );
    }

    /// A request body delivered in the given pieces.
    struct Pieces(std::collections::VecDeque<Bytes>);

    impl Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn request(names: usize) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            resource_names: (0..names)
                .map(|i| format!("outbound|80||s{i}.ns"))
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_frames_decode_in_order() {
        let (a, b) = (request(1), request(3000));
        let mut wire = framed(&a);
        wire.extend(framed(&b));
        // Frames that cut through prefixes and bodies alike.
        let pieces = wire.chunks(7_001).map(Bytes::copy_from_slice).collect();
        let mut stream = RequestStream::new(Pieces(pieces), 1 << 22);
        let mut next =
            async || DiscoveryRequest::decode(stream.next().await.unwrap().unwrap().contiguous());
        assert_eq!(next().await.unwrap(), a);
        assert_eq!(next().await.unwrap(), b);
        assert!(stream.next().await.is_none());
        assert_eq!(
            stream.pending.capacity(),
            0,
            "no queue kept between messages"
        );
    }

    #[tokio::test]
    async fn a_response_is_handed_out_only_as_fast_as_its_chunks_are_written() {
        use crate::resources::Resource;
        use crate::response::SotwResponse;
        use envoy_types::pb::google::protobuf::StringValue;
        use http_body_util::BodyExt;
        let resources: Vec<_> = (0..4000)
            .map(|i| {
                Resource::encode(
                    &format!("r{i}"),
                    &StringValue {
                        value: "x".repeat(100),
                    },
                )
            })
            .collect();
        let response = Outgoing::Sotw(SotwResponse {
            version_info: "v".into(),
            resources: resources.into(),
            type_url: "t".into(),
            nonce: "n".into(),
            control_plane: "c".into(),
        });
        let queue = Arc::new(ResponseQueue::new(1));
        let sink = queue.clone();
        let task = Box::pin(async move { sink.send(Ok(Box::new(response))).await });
        let mut body = ResponseBody::new(task, queue);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        // The transport still holds the first chunk: the body must wait.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        drop(first);
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(chunk) => total += chunk.len(),
                Err(trailers) => {
                    assert_eq!(trailers.trailers_ref().unwrap()["grpc-status"], "0");
                }
            }
        }
        assert!(
            total > 400_000,
            "the rest of the response follows ({total} bytes)"
        );
    }

    fn small_response(nonce: &str) -> Box<Outgoing> {
        Box::new(Outgoing::Sotw(crate::response::SotwResponse {
            version_info: "v".into(),
            resources: Vec::new().into(),
            type_url: "t".into(),
            nonce: nonce.into(),
            control_plane: "c".into(),
        }))
    }

    #[tokio::test]
    async fn a_task_held_up_by_a_full_queue_resumes_when_the_body_takes_a_response() {
        use http_body_util::BodyExt;
        let queue = Arc::new(ResponseQueue::new(1));
        let sink = queue.clone();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let task = Box::pin(async move {
            for nonce in ["a", "b", "c"] {
                sink.send(Ok(small_response(nonce))).await;
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut body = ResponseBody::new(task, queue.clone());
        let mut responses = 0;
        loop {
            let frame = body.frame().await.unwrap().unwrap();
            match frame.into_data() {
                Ok(_) => {
                    responses += 1;
                    // Never more queued than the limit, however far the task has got.
                    assert!(sent.load(Ordering::SeqCst) <= responses + 1);
                }
                Err(trailers) => {
                    assert_eq!(trailers.trailers_ref().unwrap()["grpc-status"], "0");
                    break;
                }
            }
        }
        assert_eq!((responses, sent.load(Ordering::SeqCst)), (3, 3));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_queued_status_ends_the_body_with_its_code() {
        use http_body_util::BodyExt;
        let queue = Arc::new(ResponseQueue::new(4));
        let sink = queue.clone();
        let task = Box::pin(async move {
            sink.send(Err(Box::new(Status::unavailable("going away"))))
                .await;
            // A task that never ends must not keep the finished body open.
            std::future::pending::<()>().await
        });
        let mut body = ResponseBody::new(task, queue);
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "14");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn oversized_compressed_and_truncated_requests_are_errors() {
        let wire = framed(&request(100));
        let oversized = RequestStream::new(Pieces([Bytes::from(wire.clone())].into()), 64);
        let codes: Vec<_> = oversized.map(|r| r.unwrap_err().code()).collect().await;
        assert_eq!(codes, [tonic::Code::ResourceExhausted]);

        let mut compressed = wire.clone();
        compressed[0] = 1;
        let mut stream = RequestStream::new(Pieces([Bytes::from(compressed)].into()), 1 << 22);
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);

        let truncated = Bytes::copy_from_slice(&wire[..wire.len() - 1]);
        let mut stream = RequestStream::new(Pieces([truncated].into()), 1 << 22);
        assert_eq!(
            stream.next().await.unwrap().unwrap_err().code(),
            tonic::Code::Internal
        );
        assert!(stream.next().await.is_none());
    }
}
