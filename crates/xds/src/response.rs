//! Responses that carry shared, already-encoded resources.
//!
//! Envoy's generated `DiscoveryResponse` owns a copy of every resource, which would mean one
//! copy of a megabyte-sized config per proxy per push before gRPC copies it again. These types
//! hold `Arc`s to the cache's resources instead and implement [`prost::Message`] by writing
//! each resource's encoded `Any` straight into gRPC's buffer, producing exactly the bytes the
//! generated message would (fields in tag order, defaults omitted).

use crate::connection::Outgoing;
use crate::resources::Resource;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{DecodeError, Message};
use std::sync::Arc;

/// A state-of-the-world `DiscoveryResponse`.
#[derive(Clone, Debug, PartialEq)]
pub struct SotwResponse {
    pub version_info: Arc<str>,
    pub resources: Vec<Arc<Resource>>,
    pub type_url: String,
    pub nonce: String,
    pub control_plane: Arc<str>,
}

/// An incremental `DeltaDiscoveryResponse`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaResponse {
    pub system_version_info: Arc<str>,
    pub resources: Vec<Arc<Resource>>,
    pub type_url: String,
    pub removed_resources: Vec<Arc<str>>,
    pub nonce: String,
    pub control_plane: Arc<str>,
}

// Field numbers, from envoy/service/discovery/v3/discovery.proto.
mod tag {
    pub const SOTW_VERSION_INFO: u32 = 1;
    pub const SOTW_RESOURCES: u32 = 2;
    pub const SOTW_TYPE_URL: u32 = 4;
    pub const SOTW_NONCE: u32 = 5;
    pub const SOTW_CONTROL_PLANE: u32 = 6;

    pub const DELTA_SYSTEM_VERSION_INFO: u32 = 1;
    pub const DELTA_RESOURCES: u32 = 2;
    pub const DELTA_TYPE_URL: u32 = 4;
    pub const DELTA_NONCE: u32 = 5;
    pub const DELTA_REMOVED_RESOURCES: u32 = 6;
    pub const DELTA_CONTROL_PLANE: u32 = 7;

    /// `Resource` (delta entry) fields.
    pub const ENTRY_VERSION: u32 = 1;
    pub const ENTRY_RESOURCE: u32 = 2;
    pub const ENTRY_NAME: u32 = 3;

    /// `ControlPlane.identifier`.
    pub const CONTROL_PLANE_IDENTIFIER: u32 = 1;
}

/// Size of a length-delimited field with a `len`-byte payload.
fn delimited_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_delimited(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// A proto3 string field: omitted when empty.
fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(tag, value.len())
    }
}

fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_delimited(tag, value.as_bytes(), buf);
    }
}

/// `ControlPlane { identifier }` as a nested message.
fn control_plane_len(tag: u32, identifier: &str) -> usize {
    delimited_len(tag, string_len(tag::CONTROL_PLANE_IDENTIFIER, identifier))
}

fn put_control_plane(tag: u32, identifier: &str, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(
        string_len(tag::CONTROL_PLANE_IDENTIFIER, identifier) as u64,
        buf,
    );
    put_string(tag::CONTROL_PLANE_IDENTIFIER, identifier, buf);
}

/// The body of one delta `Resource { version, resource, name }`.
fn entry_len(r: &Resource) -> usize {
    string_len(tag::ENTRY_VERSION, &r.version)
        + delimited_len(tag::ENTRY_RESOURCE, r.any.len())
        + string_len(tag::ENTRY_NAME, &r.name)
}

/// These messages are only ever sent; decoding one skips every field.
fn skip(
    tag: u32,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    prost::encoding::skip_field(wire_type, tag, buf, ctx)
}

/// A response as three parts so it can be written whole or a chunk at a time: the fields
/// before the resources, one resource, and the fields after them (tag order throughout).
trait Pieces {
    fn resource_count(&self) -> usize;
    fn head_len(&self) -> usize;
    fn write_head(&self, buf: &mut impl BufMut);
    fn resource_len(&self, i: usize) -> usize;
    fn write_resource(&self, i: usize, buf: &mut impl BufMut);
    fn tail_len(&self) -> usize;
    fn write_tail(&self, buf: &mut impl BufMut);

    fn message_len(&self) -> usize {
        self.head_len()
            + (0..self.resource_count())
                .map(|i| self.resource_len(i))
                .sum::<usize>()
            + self.tail_len()
    }

    fn write_message(&self, buf: &mut impl BufMut) {
        self.write_head(buf);
        for i in 0..self.resource_count() {
            self.write_resource(i, buf);
        }
        self.write_tail(buf);
    }
}

impl Pieces for SotwResponse {
    fn resource_count(&self) -> usize {
        self.resources.len()
    }

    fn head_len(&self) -> usize {
        string_len(tag::SOTW_VERSION_INFO, &self.version_info)
    }

    fn write_head(&self, buf: &mut impl BufMut) {
        put_string(tag::SOTW_VERSION_INFO, &self.version_info, buf);
    }

    fn resource_len(&self, i: usize) -> usize {
        delimited_len(tag::SOTW_RESOURCES, self.resources[i].any.len())
    }

    fn write_resource(&self, i: usize, buf: &mut impl BufMut) {
        put_delimited(tag::SOTW_RESOURCES, &self.resources[i].any, buf);
    }

    fn tail_len(&self) -> usize {
        string_len(tag::SOTW_TYPE_URL, &self.type_url)
            + string_len(tag::SOTW_NONCE, &self.nonce)
            + control_plane_len(tag::SOTW_CONTROL_PLANE, &self.control_plane)
    }

    fn write_tail(&self, buf: &mut impl BufMut) {
        put_string(tag::SOTW_TYPE_URL, &self.type_url, buf);
        put_string(tag::SOTW_NONCE, &self.nonce, buf);
        put_control_plane(tag::SOTW_CONTROL_PLANE, &self.control_plane, buf);
    }
}

impl Pieces for DeltaResponse {
    fn resource_count(&self) -> usize {
        self.resources.len()
    }

    fn head_len(&self) -> usize {
        string_len(tag::DELTA_SYSTEM_VERSION_INFO, &self.system_version_info)
    }

    fn write_head(&self, buf: &mut impl BufMut) {
        put_string(
            tag::DELTA_SYSTEM_VERSION_INFO,
            &self.system_version_info,
            buf,
        );
    }

    fn resource_len(&self, i: usize) -> usize {
        delimited_len(tag::DELTA_RESOURCES, entry_len(&self.resources[i]))
    }

    fn write_resource(&self, i: usize, buf: &mut impl BufMut) {
        let r = &self.resources[i];
        encode_key(tag::DELTA_RESOURCES, WireType::LengthDelimited, buf);
        encode_varint(entry_len(r) as u64, buf);
        put_string(tag::ENTRY_VERSION, &r.version, buf);
        put_delimited(tag::ENTRY_RESOURCE, &r.any, buf);
        put_string(tag::ENTRY_NAME, &r.name, buf);
    }

    fn tail_len(&self) -> usize {
        string_len(tag::DELTA_TYPE_URL, &self.type_url)
            + string_len(tag::DELTA_NONCE, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| delimited_len(tag::DELTA_REMOVED_RESOURCES, n.len()))
                .sum::<usize>()
            + control_plane_len(tag::DELTA_CONTROL_PLANE, &self.control_plane)
    }

    fn write_tail(&self, buf: &mut impl BufMut) {
        put_string(tag::DELTA_TYPE_URL, &self.type_url, buf);
        put_string(tag::DELTA_NONCE, &self.nonce, buf);
        for name in &self.removed_resources {
            put_delimited(tag::DELTA_REMOVED_RESOURCES, name.as_bytes(), buf);
        }
        put_control_plane(tag::DELTA_CONTROL_PLANE, &self.control_plane, buf);
    }
}

impl Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.write_message(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.message_len()
    }

    fn clear(&mut self) {
        self.resources.clear();
    }
}

impl Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.write_message(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.message_len()
    }

    fn clear(&mut self) {
        self.resources.clear();
        self.removed_resources.clear();
    }
}

/// Where a [`GrpcChunks`] is in its message.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    Start,
    Resource(usize),
    Tail,
    Done,
}

/// One response framed for gRPC (the 5-byte length prefix, then the message), produced in
/// chunks of about [`GrpcChunks::TARGET`] bytes as the transport asks for them: a proxy that
/// reads slowly holds one chunk of server memory, never a whole encoded config.
#[derive(Debug)]
pub struct GrpcChunks {
    response: Outgoing,
    cursor: Cursor,
}

impl GrpcChunks {
    pub const TARGET: usize = 64 * 1024;

    pub fn new(response: Outgoing) -> Self {
        GrpcChunks {
            response,
            cursor: Cursor::Start,
        }
    }

    fn fill<P: Pieces>(piece: &P, cursor: &mut Cursor, buf: &mut BytesMut) {
        while buf.len() < Self::TARGET {
            *cursor = match *cursor {
                Cursor::Start => {
                    let len = piece.message_len();
                    buf.reserve(5 + piece.head_len());
                    buf.put_u8(0); // not compressed
                    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
                    piece.write_head(buf);
                    Cursor::Resource(0)
                }
                Cursor::Resource(i) if i < piece.resource_count() => {
                    buf.reserve(piece.resource_len(i));
                    piece.write_resource(i, buf);
                    Cursor::Resource(i + 1)
                }
                Cursor::Resource(_) => {
                    buf.reserve(piece.tail_len());
                    piece.write_tail(buf);
                    Cursor::Tail
                }
                Cursor::Tail | Cursor::Done => Cursor::Done,
            };
            if matches!(cursor, Cursor::Tail | Cursor::Done) {
                *cursor = Cursor::Done;
                return;
            }
        }
    }
}

impl Iterator for GrpcChunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if matches!(self.cursor, Cursor::Done) {
            return None;
        }
        let mut buf = BytesMut::with_capacity(Self::TARGET);
        match &self.response {
            Outgoing::Sotw(r) => Self::fill(r, &mut self.cursor, &mut buf),
            Outgoing::Delta(r) => Self::fill(r, &mut self.cursor, &mut buf),
        }
        Some(buf.freeze())
    }
}

impl SotwResponse {
    /// The same response as Envoy's generated type, decoded from the bytes sent.
    pub fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse::decode(self.encode_to_vec().as_slice())
            .expect("a response decodes as what it encodes")
    }
}

impl DeltaResponse {
    /// The same response as Envoy's generated type, decoded from the bytes sent.
    pub fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse::decode(self.encode_to_vec().as_slice())
            .expect("a response decodes as what it encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaEntry;

    fn resources() -> Vec<Arc<Resource>> {
        [
            "outbound|9080||reviews.default.svc.cluster.local",
            "BlackHoleCluster",
        ]
        .into_iter()
        .map(|name| {
            Resource::encode(
                name,
                &Cluster {
                    name: name.into(),
                    ..Default::default()
                },
            )
        })
        .collect()
    }

    #[test]
    fn sotw_bytes_equal_the_generated_message() {
        let resources = resources();
        let shared = SotwResponse {
            version_info: "2026-11-21T00:00:00Z/3".into(),
            resources: resources.clone(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            nonce: "n-1".into(),
            control_plane: "meshpilot".into(),
        };
        let generated = DiscoveryResponse {
            version_info: shared.version_info.to_string(),
            resources: resources.iter().map(|r| r.to_any()).collect(),
            type_url: shared.type_url.clone(),
            nonce: shared.nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: "meshpilot".into(),
            }),
            ..Default::default()
        };
        assert_eq!(shared.encoded_len(), generated.encoded_len());
        assert_eq!(shared.encode_to_vec(), generated.encode_to_vec());
        assert_eq!(shared.to_proto(), generated);
    }

    #[test]
    fn delta_bytes_equal_the_generated_message() {
        let resources = resources();
        let shared = DeltaResponse {
            system_version_info: "v/1".into(),
            resources: resources.clone(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            removed_resources: vec!["gone".into(), "also-gone".into()],
            nonce: "n-2".into(),
            control_plane: "meshpilot".into(),
        };
        let generated = DeltaDiscoveryResponse {
            system_version_info: "v/1".into(),
            resources: resources
                .iter()
                .map(|r| DeltaEntry {
                    name: r.name.to_string(),
                    version: r.version.to_string(),
                    resource: Some(r.to_any()),
                    ..Default::default()
                })
                .collect(),
            type_url: shared.type_url.clone(),
            removed_resources: vec!["gone".into(), "also-gone".into()],
            nonce: "n-2".into(),
            control_plane: Some(ControlPlane {
                identifier: "meshpilot".into(),
            }),
            ..Default::default()
        };
        assert_eq!(shared.encoded_len(), generated.encoded_len());
        assert_eq!(shared.encode_to_vec(), generated.encode_to_vec());
    }

    #[test]
    fn chunks_concatenate_to_one_grpc_frame_of_the_message() {
        // Enough resources for several chunks.
        let resources: Vec<Arc<Resource>> = (0..2000)
            .map(|i| {
                let name = format!("outbound|9080||svc-{i}.ns.svc.cluster.local");
                Resource::encode(
                    &name,
                    &Cluster {
                        name: name.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let response = SotwResponse {
            version_info: "v/9".into(),
            resources,
            type_url: "t".into(),
            nonce: "n".into(),
            control_plane: "meshpilot".into(),
        };
        let message = response.encode_to_vec();
        let chunks: Vec<Bytes> = GrpcChunks::new(Outgoing::Sotw(response)).collect();
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() < 2 * GrpcChunks::TARGET));
        let framed: Vec<u8> = chunks.concat();
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize,
            message.len()
        );
        assert_eq!(&framed[5..], message.as_slice());
    }

    #[test]
    fn empty_fields_are_omitted_like_proto3() {
        let empty = SotwResponse {
            version_info: "".into(),
            resources: Vec::new(),
            type_url: "t".into(),
            nonce: "".into(),
            control_plane: "".into(),
        };
        let generated = DiscoveryResponse {
            type_url: "t".into(),
            control_plane: Some(ControlPlane::default()),
            ..Default::default()
        };
        assert_eq!(empty.encode_to_vec(), generated.encode_to_vec());
    }
}
