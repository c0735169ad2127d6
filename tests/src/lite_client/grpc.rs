//! A bidirectional gRPC stream straight over an `h2` connection, with its own message
//! framing. tonic's `Streaming` copies each message into a receive buffer that stays as large
//! as the largest message for as long as the stream lives (a megabyte or more per simulated
//! sidecar, gigabytes for thousands). Here a message is the HTTP/2 data chunks it arrived in
//! ([`Chunks`]), decoded in place: resources inside one chunk are not copied at all, and
//! nothing is kept once the caller drops the message.
//!
//! Requests go out from the task that reads the stream, straight into h2's send buffer: a
//! hyper client (tonic's `Channel`) pumps a streaming request body through a task of its own,
//! one more task wake-up per ACK for every simulated sidecar, on the cores the server under
//! test shares. No channel sits between the sidecar and its stream either: it calls
//! [`GrpcStream::send`] (a channel per sidecar was ~5% of the load generator's CPU under churn).
//!
//! A request is a [`Frame`]: its gRPC prefix and leading fields, then fields already in wire
//! form (a SotW EDS ACK's 55 KB of names) as the shared bytes they are, not copied into one
//! buffer. HTTP/2 still cuts the message into full-size DATA frames as Envoy's codec does.
//!
//! Messages being received hold a share of a process-wide byte budget ([`BUDGET_BYTES`]): when
//! thousands of sidecars receive multi-megabyte messages at once, the rest wait (unread, so
//! HTTP/2 flow control holds the server back) instead of exhausting memory.

use anyhow::{Context as _, Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;

/// gRPC's length-prefixed message header: compression flag and big-endian length.
const HEADER: usize = 5;

/// A request message as sent: the gRPC prefix with the message's encoding, then fields
/// already in wire form (protobuf fields may come in any order; repeats of a repeated field
/// append).
pub type Frame = bytes::buf::Chain<Bytes, Bytes>;

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

/// One HTTP/2 connection to the server; clones open streams on the same connection.
#[derive(Clone)]
pub struct Channel {
    streams: h2::client::SendRequest<Frame>,
    authority: String,
}

/// Opens a connection with the given HTTP/2 flow-control windows. The connection is driven
/// by a task of its own, which ends once every clone and stream of it is dropped.
pub async fn connect(addr: &str, stream_window: u32, connection_window: u32) -> Result<Channel> {
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (streams, connection) = h2::client::Builder::new()
            .initial_window_size(stream_window)
            .initial_connection_window_size(connection_window)
            .handshake::<_, Frame>(super::write_batch::WriteBatch::new(tcp))
            .await?;
        tokio::spawn(async move {
            // Its end (or failure) reaches the streams as their own errors.
            let _ = connection.await;
        });
        anyhow::Ok(streams)
    };
    let streams = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r)
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(Channel {
        streams,
        authority: addr.to_string(),
    })
}

/// gRPC messages being cut out of the data chunks of a stream.
#[derive(Default)]
struct Framing {
    buf: Chunks,
}

pub struct GrpcStream<Req> {
    body: h2::RecvStream,
    framing: Framing,
    /// The budget held for the message being received.
    budget: Option<OwnedSemaphorePermit>,
    finished: bool,
    /// The request half; requests are written into h2's send buffer as they are sent.
    requests: h2::SendStream<Frame>,
    _request: std::marker::PhantomData<fn(Req)>,
}

/// A request as the gRPC frame that carries it.
pub trait Outbound: Send + 'static {
    fn frame(&self) -> Frame;
}

impl<M: prost::Message + 'static> Outbound for M {
    fn frame(&self) -> Frame {
        frame_with(self, &Bytes::new())
    }
}

/// Opens `path` on `channel`, sending `first` before anything is read.
pub async fn open<Req: Outbound>(
    channel: &mut Channel,
    path: &'static str,
    first: Vec<Req>,
) -> Result<GrpcStream<Req>> {
    open_with(channel, path, &[], first).await
}

/// [`open`], with gRPC metadata (request headers).
pub async fn open_with<Req: Outbound>(
    channel: &mut Channel,
    path: &'static str,
    metadata: &[(&'static str, String)],
    first: Vec<Req>,
) -> Result<GrpcStream<Req>> {
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{}{path}", channel.authority))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (key, value) in metadata {
        request = request.header(*key, value.as_str());
    }
    let request = request.body(())?;
    let mut streams = channel.streams.clone().ready().await?;
    let (response, mut requests) = streams.send_request(request, false)?;
    // The server answers with headers once it has read the first request.
    for request in &first {
        requests.send_data(request.frame(), false)?;
    }
    let response = response.await?;
    if response.status() != http::StatusCode::OK {
        bail!("HTTP status {}", response.status());
    }
    // A trailers-only response carries the error in its headers.
    check_status(response.headers())?;
    Ok(GrpcStream {
        body: response.into_body(),
        framing: Framing::default(),
        budget: None,
        finished: false,
        requests,
        _request: std::marker::PhantomData,
    })
}

/// Frames `message` followed by `encoded_fields`, fields already in wire form (shared, not
/// copied).
pub fn frame_with(message: &impl prost::Message, encoded_fields: &Bytes) -> Frame {
    let message_len = message.encoded_len();
    let mut head = BytesMut::with_capacity(HEADER + message_len);
    head.put_u8(0);
    head.put_u32((message_len + encoded_fields.len()) as u32);
    message
        .encode(&mut head)
        .expect("the buffer has room for the message");
    head.freeze().chain(encoded_fields.clone())
}

/// A frame's bytes in one piece.
#[cfg(test)]
pub fn joined(mut frame: Frame) -> Bytes {
    frame.copy_to_bytes(frame.remaining())
}

#[cfg(test)]
fn frame(message: &impl prost::Message) -> Bytes {
    joined(frame_with(message, &Bytes::new()))
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

impl<Req: Outbound> GrpcStream<Req> {
    /// Writes `request` into h2's send buffer, which holds data past the flow-control window,
    /// so this never waits. A stream that is gone reports why on the reading side.
    pub fn send(&mut self, request: Req) {
        let _ = self.requests.send_data(request.frame(), false);
    }

    /// The next message, or None when the server ended the stream with status OK.
    pub async fn next_message(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(body) = self.framing.take_message()? {
                return Ok(Some(Message {
                    body,
                    _budget: self.budget.take(),
                }));
            }
            if self.budget.is_none()
                && let Some(len) = self.framing.pending_len()
            {
                let units = (len / BUDGET_UNIT + 1).min(BUDGET_BYTES / BUDGET_UNIT) as u32;
                self.budget = Some(budget().clone().acquire_many_owned(units).await?);
            }
            if self.finished {
                if self.framing.buf.has_remaining() {
                    bail!("the stream ended inside a message");
                }
                return Ok(None);
            }
            let data = self.body.data().await;
            match data {
                Some(data) => {
                    let data = data?;
                    // Taken in as it arrives: the budget above is what holds back.
                    let _ = self.body.flow_control().release_capacity(data.len());
                    self.framing.buf.push(data);
                }
                None => {
                    if let Some(trailers) = self.body.trailers().await? {
                        check_status(&trailers)?;
                    }
                    self.finished = true;
                }
            }
        }
    }
}

impl Framing {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lite_client::proto::LiteNamed;
    use prost::Message as _;

    fn named(name: &'static str) -> Bytes {
        frame(&LiteNamed {
            name: Bytes::from_static(name.as_bytes()),
        })
    }

    #[test]
    fn messages_are_cut_at_their_boundaries_across_chunks() {
        let (a, b) = (named("first"), named("second"));
        let joined = Bytes::from([a.as_ref(), b.as_ref()].concat());
        let mut stream = Framing::default();
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
        let frame = joined(out.frame());
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
    fn fields_in_wire_form_are_sent_as_they_are_not_copied() {
        let names = Bytes::from(vec![b'x'; 60_000]);
        let frame = frame_with(&LiteNamed::default(), &names);
        assert_eq!(frame.last_ref().as_ptr(), names.as_ptr());
        assert_eq!(frame.remaining(), HEADER + names.len());
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
