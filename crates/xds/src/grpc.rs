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
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
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

/// A response or the status that ends the stream, as queued for [`ResponseBody`]. Boxed: the
/// queue's first block of slots is allocated with each stream, and unboxed (~150 bytes a slot)
/// it was 4.6 KB of every connection's memory.
pub type Queued = Result<Box<Outgoing>, Box<Status>>;

/// The response body of one stream: each queued response as gRPC frames, then the
/// `grpc-status` trailers. A chunk is produced only when the stream's previous chunks have
/// been written out, so however slowly a proxy reads (or however many connect at once), the
/// server buffers at most [`ResponseBody::MAX_IN_FLIGHT`] bytes of encoded config for it; a
/// stalled proxy's stream simply stops being fed while its task keeps only the latest state.
pub struct ResponseBody {
    responses: mpsc::Receiver<Queued>,
    current: Option<GrpcChunks>,
    in_flight: Arc<InFlight>,
    finished: bool,
}

impl ResponseBody {
    pub const MAX_IN_FLIGHT: usize = GrpcChunks::TARGET;

    pub fn new(responses: mpsc::Receiver<Queued>) -> Self {
        ResponseBody {
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
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
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
            match self.responses.poll_recv(cx) {
                Poll::Ready(Some(Ok(response))) => self.current = Some(GrpcChunks::new(*response)),
                Poll::Ready(Some(Err(status))) => {
                    self.finished = true;
                    return Poll::Ready(Some(Ok(Self::trailers(&status))));
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    return Poll::Ready(Some(Ok(Self::trailers(&Status::ok("")))));
                }
                Poll::Pending => return Poll::Pending,
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
        // The response queue allocates a block of 32 slots per stream up front.
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
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Box::new(response))).await.unwrap();
        drop(tx);
        let mut body = ResponseBody::new(rx);
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
