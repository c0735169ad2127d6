//! Responses that carry shared, already-encoded resources.
//!
//! Envoy's generated `DiscoveryResponse` owns a copy of every resource, which would mean one
//! copy of a megabyte-sized config per proxy per push before gRPC copies it again. These types
//! hold `Arc`s to the cache's resources instead and implement [`prost::Message`] by writing
//! each resource's encoded `Any` straight into gRPC's buffer, producing exactly the bytes the
//! generated message would (fields in tag order, defaults omitted).

use crate::connection::Outgoing;
use crate::resources::{Resource, ResourceSet, Resources, SetDiff};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{DecodeError, Message};
use std::ops::Deref;
use std::sync::Arc;

/// The resources a response carries: a whole shared set, or a selection of resources.
#[derive(Clone, Debug)]
pub enum Batch {
    /// Every resource of the set, in its order: the set's entries are encoded once and every
    /// response sends slices of them.
    Whole(Resources),
    Some(Vec<Arc<Resource>>),
    /// What changed between two sets: shared by every proxy pushed the same change, which
    /// then copies no pointers per resource (each a reference count the runtime's threads
    /// would take turns at).
    Changed(Arc<SetDiff>),
}

impl Batch {
    /// A selection from `set` (in its order): the whole set when it is all of it.
    pub fn from_set(set: &Resources, selected: Vec<Arc<Resource>>) -> Self {
        if !set.is_empty() && selected.len() == set.len() {
            Batch::Whole(set.clone())
        } else {
            Batch::Some(selected)
        }
    }

    /// What `diff` found changed in `set` (the whole set when it is all of it).
    pub fn changed_in(set: &Resources, diff: &Arc<SetDiff>) -> Self {
        if !set.is_empty() && diff.changed.len() == set.len() {
            Batch::Whole(set.clone())
        } else {
            Batch::Changed(diff.clone())
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::Some(Vec::new())
    }
}

impl Deref for Batch {
    type Target = [Arc<Resource>];

    fn deref(&self) -> &[Arc<Resource>] {
        match self {
            Batch::Whole(set) => set.as_slice(),
            Batch::Some(resources) => resources,
            Batch::Changed(diff) => &diff.changed,
        }
    }
}

impl PartialEq for Batch {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl From<Vec<Arc<Resource>>> for Batch {
    fn from(resources: Vec<Arc<Resource>>) -> Self {
        Batch::Some(resources)
    }
}

/// A state-of-the-world `DiscoveryResponse`.
#[derive(Clone, Debug, PartialEq)]
pub struct SotwResponse {
    pub version_info: Arc<str>,
    pub resources: Batch,
    pub type_url: String,
    pub nonce: String,
    pub control_plane: Arc<str>,
}

/// An incremental `DeltaDiscoveryResponse`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaResponse {
    pub system_version_info: Arc<str>,
    pub resources: Batch,
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

/// One `resources` entry of a SotW response: the resource's `Any`.
fn sotw_entry_len(r: &Resource) -> usize {
    delimited_len(tag::SOTW_RESOURCES, r.any.len())
}

fn write_sotw_entry_prefix(r: &Resource, buf: &mut impl BufMut) {
    encode_key(tag::SOTW_RESOURCES, WireType::LengthDelimited, buf);
    encode_varint(r.any.len() as u64, buf);
}

/// One `resources` entry of a delta response: `Resource { version, resource, name }`.
fn delta_entry_len(r: &Resource) -> usize {
    delimited_len(tag::DELTA_RESOURCES, entry_len(r))
}

fn write_delta_entry_prefix(r: &Resource, buf: &mut impl BufMut) {
    encode_key(tag::DELTA_RESOURCES, WireType::LengthDelimited, buf);
    encode_varint(entry_len(r) as u64, buf);
    put_string(tag::ENTRY_VERSION, &r.version, buf);
    encode_key(tag::ENTRY_RESOURCE, WireType::LengthDelimited, buf);
    encode_varint(r.any.len() as u64, buf);
}

fn write_delta_entry_suffix(r: &Resource, buf: &mut impl BufMut) {
    put_string(tag::ENTRY_NAME, &r.name, buf);
}

/// The SotW entries of `items`, back to back (a [`crate::resources::ResourceSet`] caches them).
pub(crate) fn sotw_entries(items: &[Arc<Resource>]) -> Bytes {
    let mut buf = BytesMut::with_capacity(items.iter().map(|r| sotw_entry_len(r)).sum());
    for r in items {
        write_sotw_entry_prefix(r, &mut buf);
        buf.put_slice(&r.any);
    }
    buf.freeze()
}

/// The delta entries of `items`, back to back.
pub(crate) fn delta_entries(items: &[Arc<Resource>]) -> Bytes {
    let mut buf = BytesMut::with_capacity(items.iter().map(|r| delta_entry_len(r)).sum());
    for r in items {
        write_delta_entry(r, &mut buf);
    }
    buf.freeze()
}

/// One resource's delta entry (a [`Resource`] caches it).
pub(crate) fn delta_entry(r: &Resource) -> Bytes {
    let mut buf = BytesMut::with_capacity(delta_entry_len(r));
    write_delta_entry(r, &mut buf);
    buf.freeze()
}

fn write_delta_entry(r: &Resource, buf: &mut impl BufMut) {
    write_delta_entry_prefix(r, buf);
    buf.put_slice(&r.any);
    write_delta_entry_suffix(r, buf);
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
    /// The encoded resource itself, shared with every response that carries it.
    fn resource_body(&self, i: usize) -> &Bytes;
    /// Everything of resource entry `i` before its body.
    fn write_resource_prefix(&self, i: usize, buf: &mut impl BufMut);
    /// Everything of resource entry `i` after its body.
    fn write_resource_suffix(&self, i: usize, buf: &mut impl BufMut);
    fn tail_len(&self) -> usize;
    fn write_tail(&self, buf: &mut impl BufMut);
    /// Every resource entry already encoded back to back, when the response carries a whole
    /// shared set.
    fn shared_entries(&self) -> Option<&Bytes>;
    /// Resource entry `i` already encoded, when it is small enough to copy whole.
    fn encoded_entry(&self, _i: usize) -> Option<&Bytes> {
        None
    }

    fn write_resource(&self, i: usize, buf: &mut impl BufMut) {
        self.write_resource_prefix(i, buf);
        buf.put_slice(self.resource_body(i));
        self.write_resource_suffix(i, buf);
    }

    fn message_len(&self) -> usize {
        if let Some(entries) = self.shared_entries() {
            return self.head_len() + entries.len() + self.tail_len();
        }
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
        sotw_entry_len(&self.resources[i])
    }

    fn resource_body(&self, i: usize) -> &Bytes {
        &self.resources[i].any
    }

    fn write_resource_prefix(&self, i: usize, buf: &mut impl BufMut) {
        write_sotw_entry_prefix(&self.resources[i], buf);
    }

    fn write_resource_suffix(&self, _i: usize, _buf: &mut impl BufMut) {}

    fn shared_entries(&self) -> Option<&Bytes> {
        match &self.resources {
            Batch::Whole(set) => set.sotw_entries(),
            Batch::Some(_) | Batch::Changed(_) => None,
        }
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
        delta_entry_len(&self.resources[i])
    }

    fn resource_body(&self, i: usize) -> &Bytes {
        &self.resources[i].any
    }

    fn write_resource_prefix(&self, i: usize, buf: &mut impl BufMut) {
        write_delta_entry_prefix(&self.resources[i], buf);
    }

    fn write_resource_suffix(&self, i: usize, buf: &mut impl BufMut) {
        write_delta_entry_suffix(&self.resources[i], buf);
    }

    fn shared_entries(&self) -> Option<&Bytes> {
        match &self.resources {
            Batch::Whole(set) => set.delta_entries(),
            Batch::Some(_) | Batch::Changed(_) => None,
        }
    }

    fn encoded_entry(&self, i: usize) -> Option<&Bytes> {
        let r = &self.resources[i];
        (r.any.len() < GrpcChunks::SHARE_FROM).then(|| r.delta_entry())
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
        self.resources = Batch::default();
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
        self.resources = Batch::default();
        self.removed_resources.clear();
    }
}

/// Where a [`GrpcChunks`] is in its message.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    Start,
    /// Before resource entry `i` (after the last one: the tail).
    Entry(usize),
    /// Within resource `i`'s body, this many bytes in.
    Body(usize, usize),
    /// Within the shared encoding of every entry, this many bytes in.
    Shared(usize),
    /// After resource `i`'s body.
    Suffix(usize),
    Done,
}

/// One response framed for gRPC (the 5-byte length prefix, then the message), produced in
/// chunks of at most about [`GrpcChunks::TARGET`] bytes as the transport asks for them: a proxy
/// that reads slowly holds one chunk of server memory, never a whole encoded config. Large
/// resource bodies go out as slices of the shared encoding (no copy per proxy); the framing
/// around them and small resources are gathered into buffers.
#[derive(Debug)]
pub struct GrpcChunks {
    response: Outgoing,
    cursor: Cursor,
    /// Bytes of the framed message not yet handed out (sizes the gathering buffer).
    remaining: usize,
}

impl GrpcChunks {
    pub const TARGET: usize = 64 * 1024;
    /// Bodies at least this large are sent as slices of the shared bytes rather than copied.
    const SHARE_FROM: usize = ResourceSet::LARGE_RESOURCE;

    pub fn new(response: Outgoing) -> Self {
        let message_len = match &response {
            Outgoing::Sotw(r) => r.message_len(),
            Outgoing::Delta(r) => r.message_len(),
        };
        GrpcChunks {
            response,
            cursor: Cursor::Start,
            remaining: 5 + message_len,
        }
    }

    /// The next slice of `entries` from `offset`, moving the cursor past it.
    fn shared_slice(entries: &Bytes, offset: usize, count: usize, cursor: &mut Cursor) -> Bytes {
        let take = (entries.len() - offset).min(Self::TARGET);
        *cursor = if offset + take == entries.len() {
            Cursor::Entry(count)
        } else {
            Cursor::Shared(offset + take)
        };
        entries.slice(offset..offset + take)
    }

    /// Advances through the message, gathering into `buf` until it holds about a chunk; returns
    /// a shared slice instead when the next bytes are part of a large body and `buf` is empty.
    fn fill<P: Pieces>(piece: &P, cursor: &mut Cursor, buf: &mut BytesMut) -> Option<Bytes> {
        while buf.len() < Self::TARGET {
            *cursor = match *cursor {
                Cursor::Start => {
                    let len = piece.message_len();
                    buf.reserve(5 + piece.head_len());
                    buf.put_u8(0); // not compressed
                    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
                    piece.write_head(buf);
                    Cursor::Entry(0)
                }
                Cursor::Entry(0)
                    if piece
                        .shared_entries()
                        .is_some_and(|e| e.len() >= Self::SHARE_FROM) =>
                {
                    if !buf.is_empty() {
                        return None; // send the head; the entries follow as shared slices
                    }
                    let entries = piece.shared_entries().expect("checked");
                    return Some(Self::shared_slice(
                        entries,
                        0,
                        piece.resource_count(),
                        cursor,
                    ));
                }
                Cursor::Shared(offset) => {
                    if !buf.is_empty() {
                        return None;
                    }
                    let entries = piece.shared_entries().expect("only set for shared entries");
                    return Some(Self::shared_slice(
                        entries,
                        offset,
                        piece.resource_count(),
                        cursor,
                    ));
                }
                Cursor::Entry(i) if i < piece.resource_count() => match piece.encoded_entry(i) {
                    Some(entry) => {
                        if !buf.is_empty() && buf.len() + entry.len() > Self::TARGET {
                            return None; // the entry starts the next chunk
                        }
                        buf.put_slice(entry);
                        Cursor::Entry(i + 1)
                    }
                    None => {
                        piece.write_resource_prefix(i, buf);
                        Cursor::Body(i, 0)
                    }
                },
                Cursor::Entry(_) => {
                    buf.reserve(piece.tail_len());
                    piece.write_tail(buf);
                    Cursor::Done
                }
                Cursor::Body(i, offset) => {
                    let body = piece.resource_body(i);
                    let rest = body.len() - offset;
                    if body.len() >= Self::SHARE_FROM {
                        if !buf.is_empty() {
                            return None; // send what is gathered; the body follows alone
                        }
                        let take = rest.min(Self::TARGET);
                        *cursor = if take == rest {
                            Cursor::Suffix(i)
                        } else {
                            Cursor::Body(i, offset + take)
                        };
                        return Some(body.slice(offset..offset + take));
                    }
                    let take = rest.min(Self::TARGET - buf.len());
                    buf.put_slice(&body[offset..offset + take]);
                    if take == rest {
                        Cursor::Suffix(i)
                    } else {
                        Cursor::Body(i, offset + take)
                    }
                }
                Cursor::Suffix(i) => {
                    piece.write_resource_suffix(i, buf);
                    Cursor::Entry(i + 1)
                }
                Cursor::Done => return None,
            };
        }
        None
    }
}

impl Iterator for GrpcChunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if matches!(self.cursor, Cursor::Done) {
            return None;
        }
        // Sized to what is left: a small push must not cost a chunk-sized allocation.
        let mut buf = BytesMut::with_capacity(self.remaining.min(Self::TARGET));
        let shared = match &self.response {
            Outgoing::Sotw(r) => Self::fill(r, &mut self.cursor, &mut buf),
            Outgoing::Delta(r) => Self::fill(r, &mut self.cursor, &mut buf),
        };
        let chunk = match shared {
            Some(slice) => slice,
            None if buf.is_empty() => return None,
            None => buf.freeze(),
        };
        self.remaining = self.remaining.saturating_sub(chunk.len());
        Some(chunk)
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
            resources: resources.clone().into(),
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
            resources: resources.clone().into(),
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
        // The same resources as a shared diff's changes: the same bytes.
        let diff = Arc::new(SetDiff {
            changed: resources.clone(),
            removed: Vec::new(),
        });
        let from_diff = DeltaResponse {
            resources: Batch::Changed(diff),
            ..shared.clone()
        };
        assert_eq!(from_diff.encode_to_vec(), generated.encode_to_vec());
    }

    #[test]
    fn a_diff_that_changed_the_whole_set_is_sent_as_the_set() {
        let set: Resources = Arc::new(ResourceSet::new(resources()));
        let all = Arc::new(SetDiff {
            changed: resources(),
            removed: Vec::new(),
        });
        assert!(matches!(Batch::changed_in(&set, &all), Batch::Whole(s) if Arc::ptr_eq(&s, &set)));
        let one = Arc::new(SetDiff {
            changed: resources()[..1].to_vec(),
            removed: Vec::new(),
        });
        assert!(
            matches!(Batch::changed_in(&set, &one), Batch::Changed(d) if Arc::ptr_eq(&d, &one))
        );
    }

    #[test]
    fn a_large_resource_is_sent_in_bounded_slices_of_its_shared_bytes() {
        // A 10,000-VirtualService route configuration is megabytes: no chunk may hold it
        // whole, and its bytes are not copied per proxy.
        let big = Resource::encode(
            "80",
            &Cluster {
                name: "x".repeat(300_000),
                ..Default::default()
            },
        );
        let mut resources = resources();
        resources.insert(1, big.clone());
        let shared = big.any.as_ptr() as usize..big.any.as_ptr() as usize + big.any.len();
        let sotw = Outgoing::Sotw(SotwResponse {
            version_info: "v/1".into(),
            resources: resources.clone().into(),
            type_url: "t".into(),
            nonce: "n".into(),
            control_plane: "meshpilot".into(),
        });
        let delta = Outgoing::Delta(DeltaResponse {
            system_version_info: "v/1".into(),
            resources: resources.into(),
            type_url: "t".into(),
            removed_resources: vec!["gone".into()],
            nonce: "n".into(),
            control_plane: "meshpilot".into(),
        });
        for response in [sotw, delta] {
            let message = match &response {
                Outgoing::Sotw(r) => r.encode_to_vec(),
                Outgoing::Delta(r) => r.encode_to_vec(),
            };
            let chunks: Vec<Bytes> = GrpcChunks::new(response).collect();
            assert!(chunks.iter().all(|c| c.len() <= GrpcChunks::TARGET + 1024));
            let slices = chunks
                .iter()
                .filter(|c| shared.contains(&(c.as_ptr() as usize)))
                .count();
            assert_eq!(slices, big.any.len().div_ceil(GrpcChunks::TARGET));
            let framed = chunks.concat();
            assert_eq!(&framed[5..], message.as_slice());
        }
    }

    #[test]
    fn a_whole_set_is_sent_as_slices_of_entries_encoded_once_per_set() {
        let set: Resources = Arc::new(ResourceSet::new(many_clusters(2000)));
        let sotw = |nonce: &str| {
            Outgoing::Sotw(SotwResponse {
                version_info: "v/1".into(),
                resources: Batch::from_set(&set, set.as_slice().to_vec()),
                type_url: "t".into(),
                nonce: nonce.into(),
                control_plane: "meshpilot".into(),
            })
        };
        let delta = |nonce: &str| {
            Outgoing::Delta(DeltaResponse {
                system_version_info: "v/1".into(),
                resources: Batch::Whole(set.clone()),
                type_url: "t".into(),
                removed_resources: vec!["gone".into()],
                nonce: nonce.into(),
                control_plane: "meshpilot".into(),
            })
        };
        for (response, again) in [(sotw("a"), sotw("b")), (delta("a"), delta("b"))] {
            // The reference bytes, written resource by resource.
            let message = match &response {
                Outgoing::Sotw(r) => r.encode_to_vec(),
                Outgoing::Delta(r) => r.encode_to_vec(),
            };
            let entries = match &response {
                Outgoing::Sotw(_) => set.sotw_entries(),
                Outgoing::Delta(_) => set.delta_entries(),
            }
            .expect("small resources share their entries");
            let within = entries.as_ptr() as usize..entries.as_ptr() as usize + entries.len();
            let chunks: Vec<Bytes> = GrpcChunks::new(response).collect();
            let shared: usize = chunks
                .iter()
                .filter(|c| within.contains(&(c.as_ptr() as usize)))
                .map(Bytes::len)
                .sum();
            assert_eq!(shared, entries.len(), "every entry byte is a shared slice");
            assert!(chunks.iter().all(|c| c.len() <= GrpcChunks::TARGET));
            assert_eq!(&chunks.concat()[5..], message.as_slice());
            // A second response of the set sends the same bytes, not a new encoding.
            let second: Vec<Bytes> = GrpcChunks::new(again).collect();
            assert_eq!(second[1].as_ptr(), chunks[1].as_ptr());
        }
    }

    #[test]
    fn a_selection_of_every_resource_is_the_whole_set() {
        let set: Resources = Arc::new(ResourceSet::new(resources()));
        assert!(matches!(
            Batch::from_set(&set, set.as_slice().to_vec()),
            Batch::Whole(_)
        ));
        assert!(matches!(
            Batch::from_set(&set, set.as_slice()[1..].to_vec()),
            Batch::Some(_)
        ));
        // One large resource is sent from its own bytes: no second copy as entries.
        let big = Resource::encode(
            "80",
            &Cluster {
                name: "x".repeat(100_000),
                ..Default::default()
            },
        );
        let large: Resources = Arc::new(ResourceSet::new(vec![big]));
        assert!(large.sotw_entries().is_none() && large.delta_entries().is_none());
        let empty: Resources = Arc::default();
        assert!(matches!(
            Batch::from_set(&empty, Vec::new()),
            Batch::Some(_)
        ));
    }

    fn many_clusters(n: usize) -> Vec<Arc<Resource>> {
        (0..n)
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
            .collect()
    }

    #[test]
    fn chunks_concatenate_to_one_grpc_frame_of_the_message() {
        // Enough resources for several chunks.
        let resources = many_clusters(2000);
        let response = SotwResponse {
            version_info: "v/9".into(),
            resources: resources.into(),
            type_url: "t".into(),
            nonce: "n".into(),
            control_plane: "meshpilot".into(),
        };
        let message = response.encode_to_vec();
        let chunks: Vec<Bytes> = GrpcChunks::new(Outgoing::Sotw(response)).collect();
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() <= GrpcChunks::TARGET + 1024));
        let framed: Vec<u8> = chunks.concat();
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize,
            message.len()
        );
        assert_eq!(&framed[5..], message.as_slice());
    }

    #[test]
    fn a_delta_selection_copies_each_entry_encoded_once_per_resource() {
        // An endpoint push: some resources of a set, to many proxies.
        let resources = many_clusters(2000);
        let delta = |nonce: &str| DeltaResponse {
            system_version_info: "v/9".into(),
            resources: resources[1..].to_vec().into(),
            type_url: "t".into(),
            removed_resources: vec!["gone".into()],
            nonce: nonce.into(),
            control_plane: "meshpilot".into(),
        };
        assert!(resources[1].encoded_delta_entry().is_none());
        let first = delta("a");
        let message = first.encode_to_vec();
        let chunks: Vec<Bytes> = GrpcChunks::new(Outgoing::Delta(first)).collect();
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() <= GrpcChunks::TARGET));
        assert_eq!(&chunks.concat()[5..], message.as_slice());
        // Sending it encoded every entry of the selection once, and kept them.
        let entry = resources[1]
            .encoded_delta_entry()
            .expect("encoded")
            .as_ptr();
        assert!(
            resources[1..]
                .iter()
                .all(|r| r.encoded_delta_entry().is_some())
        );
        assert!(resources[0].encoded_delta_entry().is_none(), "not sent");
        let again = delta("b");
        let message = again.encode_to_vec();
        let chunks: Vec<Bytes> = GrpcChunks::new(Outgoing::Delta(again)).collect();
        assert_eq!(&chunks.concat()[5..], message.as_slice());
        assert_eq!(resources[1].delta_entry().as_ptr(), entry, "encoded once");
        let decoded =
            DeltaEntry::decode_length_delimited(&resources[1].delta_entry()[1..]).unwrap();
        assert_eq!(decoded.name, *resources[1].name);
        assert_eq!(decoded.version, *resources[1].version);
    }

    #[test]
    fn empty_fields_are_omitted_like_proto3() {
        let empty = SotwResponse {
            version_info: "".into(),
            resources: Batch::default(),
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
