//! A bidirectional gRPC stream over a tonic `Channel` with its own message framing. tonic's
//! `Streaming` copies each message into a receive buffer that stays as large as the largest
//! message for as long as the stream lives (a megabyte or more per simulated sidecar,
//! gigabytes for thousands). Here a message is the HTTP/2 data chunks it arrived in
//! ([`Chunks`]), decoded in place: resources inside one chunk are not copied at all, and
//! nothing is kept once the caller drops the message.
//!
//! Messages being received hold a share of a process-wide byte budget ([`BUDGET_BYTES`]): when
//! thousands of sidecars receive multi-megabyte messages at once, the rest wait (unread, so
//! HTTP/2 flow control holds the server back) instead of exhausting memory.

use anyhow::{Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::{Service, http};
use tonic::transport::Channel;

/// gRPC's length-prefixed message header: compression flag and big-endian length.
const HEADER: usize = 5;

/// Bytes of messages being received at once, over all streams of the process.
pub const BUDGET_BYTES: usize = 1 << 30;
const BUDGET_UNIT: usize = 1024;

fn budget() -> &'static Arc<Semaphore> {
    static BUDGET: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BUDGET.get_or_init(|| Arc::new(Semaphore::new(BUDGET_BYTES / BUDGET_UNIT)))
}

/// Bytes received as a queue of chunks, readable as one buffer.
#[derive(Debug, Default)]
pub struct Chunks {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.parts.push_back(chunk);
        }
    }

    /// The first bytes, if there are that many, without consuming them.
    fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        let mut bytes = self.parts.iter().flat_map(|p| p.iter().copied());
        for slot in &mut out {
            *slot = bytes.next()?;
        }
        Some(out)
    }

    /// Moves the first `n` bytes (there must be that many) into a `Chunks` of their own.
    fn split_to(&mut self, mut n: usize) -> Chunks {
        let mut taken = Chunks::default();
        while n > 0 {
            let front = self.parts.front_mut().expect("enough bytes buffered");
            let part = if front.len() <= n {
                self.parts.pop_front().expect("front exists")
            } else {
                front.split_to(n)
            };
            n -= part.len();
            self.len -= part.len();
            taken.push(part);
        }
        taken
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| p.as_ref())
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let front = self.parts.front_mut().expect("advance within the buffer");
            let step = n.min(front.len());
            front.advance(step);
            if front.is_empty() {
                self.parts.pop_front();
            }
            self.len -= step;
            n -= step;
        }
    }

    /// Zero-copy when the bytes lie in one chunk (as most resources do).
    fn copy_to_bytes(&mut self, n: usize) -> Bytes {
        match self.parts.front_mut() {
            Some(front) if front.len() >= n => {
                let bytes = front.split_to(n);
                if front.is_empty() {
                    self.parts.pop_front();
                }
                self.len -= n;
                bytes
            }
            _ => {
                let mut copy = BytesMut::with_capacity(n);
                copy.put((&mut *self).take(n));
                copy.freeze()
            }
        }
    }
}

/// A received message; its share of the budget returns when it is dropped.
pub struct Message {
    pub body: Chunks,
    _budget: Option<OwnedSemaphorePermit>,
}

pub struct GrpcStream {
    body: tonic::body::Body,
    buf: Chunks,
    /// The budget held for the message being received.
    budget: Option<OwnedSemaphorePermit>,
    finished: bool,
}

/// Opens `path` on `channel`, sending every request queued on `requests`.
/// A request as the gRPC frame that carries it.
pub trait Outbound: Send + 'static {
    fn frame(&self) -> Bytes;
}

impl<M: prost::Message + 'static> Outbound for M {
    fn frame(&self) -> Bytes {
        frame_with(self, &[])
    }
}

pub async fn open<Req: Outbound>(
    channel: &mut Channel,
    path: &'static str,
    requests: mpsc::UnboundedReceiver<Req>,
) -> Result<GrpcStream> {
    open_with(channel, path, &[], requests).await
}

/// [`open`], with gRPC metadata (request headers).
pub async fn open_with<Req: Outbound>(
    channel: &mut Channel,
    path: &'static str,
    metadata: &[(&'static str, String)],
    requests: mpsc::UnboundedReceiver<Req>,
) -> Result<GrpcStream> {
    let frames = UnboundedReceiverStream::new(requests)
        .map(|r| Ok::<_, std::convert::Infallible>(http_body::Frame::data(r.frame())));
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (key, value) in metadata {
        request = request.header(*key, value.as_str());
    }
    let request = request.body(tonic::body::Body::new(http_body_util::StreamBody::new(
        frames,
    )))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
    let response = channel.call(request).await?;
    if response.status() != http::StatusCode::OK {
        bail!("HTTP status {}", response.status());
    }
    // A trailers-only response carries the error in its headers.
    check_status(response.headers())?;
    Ok(GrpcStream {
        body: response.into_body(),
        buf: Chunks::default(),
        budget: None,
        finished: false,
    })
}

/// Frames `message` followed by `encoded_fields`, fields already in wire form: protobuf
/// fields may come in any order, and repeats of a repeated field append.
pub fn frame_with(message: &impl prost::Message, encoded_fields: &[u8]) -> Bytes {
    let len = message.encoded_len() + encoded_fields.len();
    let mut buf = BytesMut::with_capacity(HEADER + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .expect("the buffer has room for the message");
    buf.put_slice(encoded_fields);
    buf.freeze()
}

#[cfg(test)]
fn frame(message: &impl prost::Message) -> Bytes {
    frame_with(message, &[])
}

fn check_status(headers: &http::HeaderMap) -> Result<()> {
    match headers.get("grpc-status") {
        Some(code) if code != "0" => bail!(
            "gRPC status {}: {}",
            code.to_str().unwrap_or("?"),
            headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .unwrap_or_default()
        ),
        _ => Ok(()),
    }
}

impl GrpcStream {
    /// The next message, or None when the server ended the stream with status OK.
    pub async fn next_message(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(body) = self.take_message()? {
                return Ok(Some(Message {
                    body,
                    _budget: self.budget.take(),
                }));
            }
            if self.budget.is_none()
                && let Some(len) = self.pending_len()
            {
                let units = (len / BUDGET_UNIT + 1).min(BUDGET_BYTES / BUDGET_UNIT) as u32;
                self.budget = Some(budget().clone().acquire_many_owned(units).await?);
            }
            if self.finished {
                if self.buf.has_remaining() {
                    bail!("the stream ended inside a message");
                }
                return Ok(None);
            }
            match self.body.frame().await {
                None => self.finished = true,
                Some(Err(status)) => return Err(status.into()),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.push(data),
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            check_status(trailers)?;
                        }
                        self.finished = true;
                    }
                },
            }
        }
    }

    /// The compression flag and length of the message whose header has arrived.
    fn header(&self) -> Option<(u8, usize)> {
        let header = self.buf.peek::<HEADER>()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        Some((header[0], len as usize))
    }

    fn pending_len(&self) -> Option<usize> {
        self.header().map(|(_, len)| len)
    }

    fn take_message(&mut self) -> Result<Option<Chunks>> {
        let Some((compressed, len)) = self.header() else {
            return Ok(None);
        };
        if compressed != 0 {
            bail!("compressed gRPC messages are not supported");
        }
        if self.buf.remaining() < HEADER + len {
            return Ok(None);
        }
        self.buf.advance(HEADER);
        Ok(Some(self.buf.split_to(len)))
    }
}

/// Opens a connection with the given HTTP/2 flow-control windows.
pub async fn connect(addr: &str, stream_window: u32, connection_window: u32) -> Result<Channel> {
    use anyhow::Context;
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true)
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(connection_window)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lite_client::proto::LiteNamed;
    use prost::Message as _;

    fn mk_stream() -> GrpcStream {
        GrpcStream {
            body: tonic::body::Body::empty(),
            buf: Chunks::default(),
            budget: None,
            finished: false,
        }
    }

    fn named(name: &'static str) -> Bytes {
        frame(&LiteNamed {
            name: Bytes::from_static(name.as_bytes()),
        })
    }

    #[test]
    fn messages_are_cut_at_their_boundaries_across_chunks() {
        let (a, b) = (named("first"), named("second"));
        let joined = Bytes::from([a.as_ref(), b.as_ref()].concat());
        let mut stream = mk_stream();
        stream.buf.push(joined.slice(..3));
        assert!(stream.take_message().unwrap().is_none());
        stream.buf.push(joined.slice(3..a.len() + 2));
        let first = stream.take_message().unwrap().unwrap();
        assert_eq!(LiteNamed::decode(first).unwrap().name, "first");
        assert!(stream.take_message().unwrap().is_none());
        for i in a.len() + 2..joined.len() {
            stream.buf.push(joined.slice(i..i + 1));
        }
        let second = stream.take_message().unwrap().unwrap();
        assert_eq!(LiteNamed::decode(second).unwrap().name, "second");
        assert_eq!(stream.buf.remaining(), 0);
    }

    #[test]
    fn a_request_with_pre_encoded_names_is_an_ordinary_discovery_request() {
        use crate::lite_client::proto::{
            LiteDiscoveryRequest, SotwRequestOut, encode_resource_names,
        };
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        let names = [
            Bytes::from_static(b"a"),
            Bytes::from_static(b"outbound|80||b"),
        ];
        let out = SotwRequestOut {
            request: LiteDiscoveryRequest {
                type_url: "t".into(),
                response_nonce: "n".into(),
                ..Default::default()
            },
            names: encode_resource_names(&names),
        };
        let frame = out.frame();
        assert_eq!(frame[0], 0);
        assert_eq!(
            u32::from_be_bytes(frame[1..HEADER].try_into().unwrap()) as usize,
            frame.len() - HEADER
        );
        let decoded = DiscoveryRequest::decode(&frame[HEADER..]).unwrap();
        assert_eq!(decoded.resource_names, ["a", "outbound|80||b"]);
        assert_eq!((&*decoded.type_url, &*decoded.response_nonce), ("t", "n"));
    }

    #[test]
    fn bytes_within_one_chunk_are_not_copied() {
        let data = Bytes::from_static(b"abcdefgh");
        let mut chunks = Chunks::default();
        chunks.push(data.slice(..4));
        chunks.push(data.slice(4..));
        let inside = chunks.copy_to_bytes(3);
        assert_eq!(inside.as_ptr(), data.as_ptr());
        let across = chunks.copy_to_bytes(3);
        assert_eq!(across, "def");
        assert_eq!(chunks.remaining(), 2);
    }
}
