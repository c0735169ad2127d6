//! The delta request as this server reads it.
//!
//! A sidecar reconnecting to a large mesh names every resource it holds twice: as a
//! subscription and in `initial_resource_versions`, thousands of each. Envoy's generated
//! `DeltaDiscoveryRequest` decodes every one into its own `String` and the versions into a
//! `HashMap`; in the restart benchmark that decoding and hashing were a quarter of the server's
//! CPU. Here the names and versions stay slices of the request's bytes, and the versions are
//! sorted by name once, so finding what a proxy lacks is a binary search per resource.

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_key, decode_varint, message, skip_field,
    string,
};
use prost::{DecodeError, Message};
use std::ops::Range;

const NODE: u32 = 1;
const TYPE_URL: u32 = 2;
const SUBSCRIBE: u32 = 3;
const UNSUBSCRIBE: u32 = 4;
const INITIAL_RESOURCE_VERSIONS: u32 = 5;
const RESPONSE_NONCE: u32 = 6;
const ERROR_DETAIL: u32 = 7;

/// Where a string lies in the request's bytes (`u32`: a request is limited to far less).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(range: Range<usize>) -> Span {
        Span {
            start: range.start as u32,
            end: range.end as u32,
        }
    }

    fn bytes(self, bytes: &Bytes) -> &[u8] {
        &bytes[self.start as usize..self.end as usize]
    }

    fn str(self, bytes: &Bytes) -> &str {
        std::str::from_utf8(self.bytes(bytes)).expect("checked to be UTF-8 when decoded")
    }
}

/// Strings of a request (resource names), kept as slices of its bytes.
#[derive(Clone, Debug, Default)]
pub struct WireStrings {
    bytes: Bytes,
    spans: Vec<Span>,
}

impl WireStrings {
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.spans.iter().map(|span| span.str(&self.bytes))
    }

    /// The strings' bytes: [`WireStrings::iter`] without checking UTF-8 again.
    pub fn iter_bytes(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans.iter().map(|span| span.bytes(&self.bytes))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// A name's 128-bit hash: names are matched, and kept in order, by it. Equal keys are taken
/// for equal names, as the subscription fingerprints already are: comparing names byte by byte
/// (long shared prefixes such as `outbound|9080||`, scattered over the heap) was the cost.
pub fn name_order_key(name: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(name)
}

/// What a version is compared by: a 64-bit hash (versions themselves are hashes of content).
pub fn version_key(version: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(version)
}

/// Sorts names into [`name_order_key`] order and drops repeats.
pub fn sort_names_for_matching(names: &mut Vec<&str>) {
    names.sort_by_cached_key(|name| name_order_key(name.as_bytes()));
    names.dedup();
}

/// One held resource: its name's [`name_order_key`], name and version.
#[derive(Clone, Copy, Debug)]
struct HeldEntry {
    key: u128,
    name: Span,
    version: Span,
}

/// `initial_resource_versions`: the version of each resource a reconnecting proxy holds, as
/// slices of the request, in [`name_order_key`] order (distinct names; of repeated ones the
/// last counts, as when decoded into a map).
#[derive(Clone, Debug, Default)]
pub struct HeldVersions {
    bytes: Bytes,
    entries: Vec<HeldEntry>,
}

impl HeldVersions {
    fn position(&self, name: &[u8]) -> Option<usize> {
        let wanted = name_order_key(name);
        self.entries.binary_search_by_key(&wanted, |e| e.key).ok()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.position(name.as_bytes())
            .map(|i| self.entries[i].version.str(&self.bytes))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.contains_bytes(name.as_bytes())
    }

    pub fn contains_bytes(&self, name: &[u8]) -> bool {
        self.position(name).is_some()
    }

    /// The names, in [`name_order_key`] order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|e| e.name.str(&self.bytes))
    }

    /// The names' bytes, in [`name_order_key`] order.
    pub fn name_bytes(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.entries.iter().map(|e| e.name.bytes(&self.bytes))
    }

    /// `(order key, name, version)` of each entry, in [`name_order_key`] order.
    pub fn entries(&self) -> impl Iterator<Item = (u128, &[u8], &[u8])> + '_ {
        self.entries.iter().map(|e| {
            (
                e.key,
                e.name.bytes(&self.bytes),
                e.version.bytes(&self.bytes),
            )
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `envoy.service.discovery.v3.DeltaDiscoveryRequest` as this server reads it. The xDS-TP
/// locator fields (8 and 9) are skipped: this server does not serve xDS-TP.
#[derive(Clone, Debug, Default)]
pub struct DeltaRequest {
    pub node: Option<Node>,
    pub type_url: String,
    pub subscribe: WireStrings,
    pub unsubscribe: WireStrings,
    pub initial_resource_versions: HeldVersions,
    pub response_nonce: String,
    pub error_detail: Option<Status>,
}

impl DeltaRequest {
    /// Reads a request from its bytes; names and versions stay slices of `frame`.
    pub fn decode_frame(frame: Bytes) -> Result<Self, DecodeError> {
        let mut request = DeltaRequest::default();
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        let mut versions = Vec::new();
        let ctx = DecodeContext::default();
        // A request of ASCII bytes only (the usual one: no node, no long field) holds only valid
        // strings, which then need no check one by one.
        let strings = Strings {
            checked: frame.is_ascii(),
        };
        let mut rest: &[u8] = &frame;
        while rest.has_remaining() {
            let (tag, wire_type) = decode_key(&mut rest)?;
            match tag {
                SUBSCRIBE | UNSUBSCRIBE | INITIAL_RESOURCE_VERSIONS => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let payload = take_payload(&frame, &mut rest)?;
                    match tag {
                        SUBSCRIBE => subscribe.push(strings.text(&frame, payload)?),
                        UNSUBSCRIBE => unsubscribe.push(strings.text(&frame, payload)?),
                        _ => versions.push(strings.map_entry(&frame, payload)?),
                    }
                }
                NODE => message::merge(
                    wire_type,
                    request.node.get_or_insert_with(Node::default),
                    &mut rest,
                    ctx.clone(),
                )?,
                TYPE_URL => {
                    string::merge(wire_type, &mut request.type_url, &mut rest, ctx.clone())?
                }
                RESPONSE_NONCE => string::merge(
                    wire_type,
                    &mut request.response_nonce,
                    &mut rest,
                    ctx.clone(),
                )?,
                ERROR_DETAIL => message::merge(
                    wire_type,
                    request.error_detail.get_or_insert_with(Status::default),
                    &mut rest,
                    ctx.clone(),
                )?,
                _ => skip_field(wire_type, tag, &mut rest, ctx.clone())?,
            }
        }
        let mut versions: Vec<HeldEntry> = versions
            .into_iter()
            .map(|(name, version)| HeldEntry {
                key: name_order_key(name.bytes(&frame)),
                name,
                version,
            })
            .collect();
        // Reversed, then sorted stably: of equal names the last sent comes first and is kept.
        versions.reverse();
        versions.sort_by_key(|e| e.key);
        versions.dedup_by_key(|e| e.key);
        request.subscribe = WireStrings {
            bytes: frame.clone(),
            spans: subscribe,
        };
        request.unsubscribe = WireStrings {
            bytes: frame.clone(),
            spans: unsubscribe,
        };
        request.initial_resource_versions = HeldVersions {
            bytes: frame,
            entries: versions,
        };
        Ok(request)
    }
}

impl From<DeltaDiscoveryRequest> for DeltaRequest {
    fn from(request: DeltaDiscoveryRequest) -> Self {
        DeltaRequest::decode_frame(request.encode_to_vec().into())
            .expect("an encoded request decodes")
    }
}

// prost 0.14 (pinned) gives a hand-written decoder no other constructor for decode errors.
#[allow(deprecated)]
fn invalid(what: &'static str) -> DecodeError {
    DecodeError::new(what)
}

/// The payload of the length-delimited field at `rest` (its length already past the key).
fn take_payload(frame: &[u8], rest: &mut &[u8]) -> Result<Range<usize>, DecodeError> {
    let len = decode_varint(rest)?;
    if len > rest.len() as u64 {
        return Err(invalid("a field runs past the end of the request"));
    }
    let start = frame.len() - rest.len();
    rest.advance(len as usize);
    Ok(start..start + len as usize)
}

/// How a request's strings are checked to be UTF-8.
#[derive(Clone, Copy)]
struct Strings {
    /// The whole request is known to be valid (ASCII).
    checked: bool,
}

impl Strings {
    fn text(self, frame: &[u8], range: Range<usize>) -> Result<Span, DecodeError> {
        if !self.checked {
            std::str::from_utf8(&frame[range.clone()])
                .map_err(|_| invalid("invalid string value: data is not UTF-8 encoded"))?;
        }
        Ok(Span::of(range))
    }

    /// A `map<string, string>` entry: key (1) and value (2), either of which may be absent.
    fn map_entry(self, frame: &[u8], entry: Range<usize>) -> Result<(Span, Span), DecodeError> {
        let mut key = Span::of(entry.start..entry.start);
        let mut value = key;
        // Offsets are taken from the end of what is left, so the frame is cut at the entry's
        // end.
        let frame = &frame[..entry.end];
        let mut rest = frame;
        rest.advance(entry.start);
        while rest.has_remaining() {
            let (tag, wire_type) = decode_key(&mut rest)?;
            match tag {
                1 | 2 => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let span = self.text(frame, take_payload(frame, &mut rest)?)?;
                    if tag == 1 {
                        key = span;
                    } else {
                        value = span;
                    }
                }
                _ => skip_field(wire_type, tag, &mut rest, DecodeContext::default())?,
            }
        }
        Ok((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn envoy_request() -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            resource_names_subscribe: vec!["outbound|80||b.ns".into(), "x".repeat(300)],
            resource_names_unsubscribe: vec!["outbound|80||gone.ns".into()],
            initial_resource_versions: HashMap::from([
                ("outbound|80||b.ns".into(), "00ff".into()),
                ("outbound|80||a.ns".into(), "0a0a".into()),
                ("no-version".into(), String::new()),
            ]),
            response_nonce: "7".into(),
            error_detail: Some(Status {
                code: 3,
                message: "rejected".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_what_envoys_generated_type_reads() {
        let envoy = envoy_request();
        let ours = DeltaRequest::decode_frame(envoy.encode_to_vec().into()).unwrap();
        assert_eq!(ours.node, envoy.node);
        assert_eq!(ours.type_url, envoy.type_url);
        assert_eq!(ours.response_nonce, envoy.response_nonce);
        assert_eq!(ours.error_detail, envoy.error_detail);
        assert!(
            ours.subscribe
                .iter()
                .eq(envoy.resource_names_subscribe.iter())
        );
        assert!(
            ours.unsubscribe
                .iter()
                .eq(envoy.resource_names_unsubscribe.iter())
        );
        let held = &ours.initial_resource_versions;
        assert_eq!(held.len(), 3);
        let mut expected = vec!["no-version", "outbound|80||a.ns", "outbound|80||b.ns"];
        sort_names_for_matching(&mut expected);
        assert!(held.names().eq(expected));
        assert!(held.contains("no-version") && !held.contains("outbound|80||c.ns"));
        for (name, version) in &envoy.initial_resource_versions {
            assert_eq!(held.get(name), Some(version.as_str()), "{name}");
        }
        assert_eq!(held.get("outbound|80||c.ns"), None);
    }

    #[test]
    fn of_repeated_version_entries_the_last_counts_as_in_a_map() {
        let mut bytes = DeltaDiscoveryRequest {
            initial_resource_versions: HashMap::from([("a".into(), "1".into())]),
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend(
            DeltaDiscoveryRequest {
                initial_resource_versions: HashMap::from([("a".into(), "2".into())]),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let envoy = DeltaDiscoveryRequest::decode(bytes.as_slice()).unwrap();
        let ours = DeltaRequest::decode_frame(bytes.into()).unwrap();
        assert_eq!(envoy.initial_resource_versions["a"], "2");
        assert_eq!(ours.initial_resource_versions.get("a"), Some("2"));
        assert_eq!(ours.initial_resource_versions.len(), 1);
    }

    #[test]
    fn truncated_or_non_utf8_requests_are_rejected() {
        let bytes = envoy_request().encode_to_vec();
        // Every prefix: cut inside a field, both fail; cut between fields, both read it.
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            assert_eq!(
                DeltaRequest::decode_frame(Bytes::copy_from_slice(prefix)).is_err(),
                DeltaDiscoveryRequest::decode(prefix).is_err(),
                "cut at {cut}"
            );
        }
        assert!(
            DeltaRequest::decode_frame(Bytes::copy_from_slice(&bytes[..bytes.len() - 1])).is_err()
        );
        // subscribe = "\xff"
        assert!(DeltaRequest::decode_frame(Bytes::from_static(&[0x1a, 1, 0xff])).is_err());
        // initial_resource_versions = { "\xff": "" }
        assert!(DeltaRequest::decode_frame(Bytes::from_static(&[0x2a, 3, 0x0a, 1, 0xff])).is_err());
        // A request that is not all ASCII has its strings checked one by one: "é" is valid.
        let accented = DeltaRequest::decode_frame(Bytes::from_static(&[0x1a, 2, 0xc3, 0xa9]))
            .expect("valid UTF-8");
        assert_eq!(accented.subscribe.iter().collect::<Vec<_>>(), ["é"]);
    }
}
