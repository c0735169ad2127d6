//! The state-of-the-world request as this server reads it.
//!
//! An EDS request repeats every subscribed cluster name (over a thousand in a large mesh) on
//! each ACK. Envoy's generated `DiscoveryRequest` decodes each into its own `String`; here the
//! names stay in wire form, one slice of the request's bytes: a new list costs a walk over
//! them instead of an allocation (or a reference count) per name, and the slice is exactly what
//! the subscription fingerprint hashes. An ACK repeating the list the proxy subscribed with
//! costs one comparison of bytes ([`SotwRequest::decode_frame_knowing`]): neither walk nor hash.

use crate::segments::Segments;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_key, decode_varint, encode_key, encode_varint,
    key_len, message, skip_field, string,
};
use prost::{DecodeError, Message};

const VERSION_INFO: u32 = 1;
const NODE: u32 = 2;
const RESOURCE_NAMES: u32 = 3;
const TYPE_URL: u32 = 4;
const RESPONSE_NONCE: u32 = 5;
const ERROR_DETAIL: u32 = 6;

/// `envoy.service.discovery.v3.DiscoveryRequest` as this server reads it. `resource_locators`
/// (field 7) is skipped: this server does not serve xDS-TP locators.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwRequest {
    pub version_info: String,
    pub node: Option<Node>,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<Status>,
    /// Every `resource_names` entry as on the wire (key, length, bytes), back to back: a slice
    /// of the request's own bytes when read by [`SotwRequest::decode_frame`].
    names_wire: Bytes,
}

impl SotwRequest {
    /// The names as sent; bytes that are not UTF-8 (Envoy never sends them) are replaced.
    pub fn names(&self) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
        let mut rest: &[u8] = &self.names_wire;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            // Entries are canonical (`decode_frame` keeps only one-byte keys; `merge_field` and
            // `push_name` write them): key, length, bytes.
            rest.advance(key_len(RESOURCE_NAMES));
            let len = decode_varint(&mut rest).expect("names_wire holds whole entries") as usize;
            let (name, tail) = rest.split_at(len);
            rest = tail;
            Some(String::from_utf8_lossy(name))
        })
    }

    /// A 128-bit hash of the name list in its order; equal lists have equal fingerprints.
    pub fn names_fingerprint(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&self.names_wire)
    }

    pub fn push_name(&mut self, name: &str) {
        self.append_names(|wire| string::encode(RESOURCE_NAMES, &name.to_string(), wire));
    }

    /// Appends to the names in place (the buffer is ours alone, so it is not copied).
    fn append_names(&mut self, append: impl FnOnce(&mut BytesMut)) {
        let mut wire = BytesMut::from(std::mem::take(&mut self.names_wire));
        append(&mut wire);
        self.names_wire = wire.freeze();
    }

    /// Reads a request from its bytes, taking the names as one slice of them when they are
    /// contiguous (as every protobuf encoder writes a repeated field): an EDS ACK repeats
    /// every subscribed name, tens of KB, and this costs a walk over them instead of a copy.
    pub fn decode_frame(frame: Bytes) -> Result<Self, DecodeError> {
        Self::decode_frame_knowing(frame, [])
    }

    /// [`SotwRequest::decode_frame`], given runs of names this stream is known to send (its
    /// subscriptions as their requests spelled them, each whole entries: see
    /// [`SotwRequest::shared_names`]). Names that start with one of them are taken by comparing
    /// bytes instead of walking entry by entry, and a request whose names are exactly one of
    /// them holds that run instead of a slice of the frame, so that [`SotwRequest::repeats`]
    /// can tell without reading the names again. Either way the request reads the same.
    pub fn decode_frame_knowing<'k>(
        frame: Bytes,
        known: impl IntoIterator<Item = &'k Bytes>,
    ) -> Result<Self, DecodeError> {
        let mut known = known.into_iter();
        let mut request = SotwRequest::default();
        let mut rest = frame.clone();
        let mut names: Option<std::ops::Range<usize>> = None;
        let mut names_known: Option<&'k Bytes> = None;
        let ctx = DecodeContext::default();
        while rest.has_remaining() {
            let start = frame.len() - rest.remaining();
            let (tag, wire_type) = decode_key(&mut rest)?;
            if tag != RESOURCE_NAMES {
                request.merge_field(tag, wire_type, &mut rest, ctx.clone())?;
                continue;
            }
            check_wire_type(WireType::LengthDelimited, wire_type)?;
            if frame[start] != NAME_KEY {
                // A key of more bytes than needed: the names are kept in the canonical form
                // `names()` and the fingerprint read, so read the request the general way.
                return SotwRequest::decode(frame);
            }
            // Taken once: a second run of names is read the general way below.
            let repeated = known
                .by_ref()
                .find(|run| !run.is_empty() && frame[start..].starts_with(run));
            let consumed = match repeated {
                // Whole entries (the key already read); more names may follow them.
                Some(run) => match rest.get(run.len() - 1) {
                    Some(&NAME_KEY) => run.len() + name_entries_len(&rest[run.len()..])?,
                    _ => run.len() - 1,
                },
                None => name_entries_len(&rest)?,
            };
            rest.advance(consumed);
            let end = frame.len() - rest.remaining();
            match &mut names {
                None => {
                    names = Some(start..end);
                    names_known = repeated.filter(|run| run.len() == end - start);
                }
                Some(run) if run.end == start => {
                    run.end = end;
                    names_known = None;
                }
                // Names split by other fields: read the whole request the general way.
                Some(_) => return SotwRequest::decode(frame),
            }
        }
        request.names_wire = match (names_known, names) {
            (Some(known), _) => known.clone(),
            (None, Some(run)) => frame.slice(run),
            (None, None) => Bytes::new(),
        };
        Ok(request)
    }

    /// [`SotwRequest::decode_frame_knowing`] of a request that arrived in pieces (HTTP/2 DATA
    /// frames). One whose names are exactly one of the known runs, as every SotW ACK repeating
    /// its subscription is, is read where it lies, its names compared piece by piece; any other
    /// is joined into one buffer and read as a frame. Either way the request reads the same.
    pub fn decode_segments_knowing<'k, K>(message: Segments, known: K) -> Result<Self, DecodeError>
    where
        K: IntoIterator<Item = &'k Bytes>,
        K::IntoIter: Clone,
    {
        let known = known.into_iter();
        if message.parts().len() > 1
            && let Some(request) = Self::decode_repeating(&message, known.clone())
        {
            return Ok(request);
        }
        Self::decode_frame_knowing(message.contiguous(), known)
    }

    /// A request whose names are exactly one of `known`, read from its pieces; `None` when it
    /// is anything else (other names, none, or bytes that do not decode: the caller reads it
    /// the general way, errors included).
    pub(crate) fn decode_repeating<'k>(
        message: &Segments,
        mut known: impl Iterator<Item = &'k Bytes>,
    ) -> Option<Self> {
        let mut request = SotwRequest::default();
        let mut names: Option<&'k Bytes> = None;
        let mut rest = message.cursor();
        while rest.has_remaining() {
            if rest.peek_u8() == Some(NAME_KEY) {
                if names.is_some() {
                    // Names split by other fields.
                    return None;
                }
                // A run is whole entries; the names must end with it.
                let run = known.find(|run| {
                    if run.is_empty() || !rest.starts_with(run) {
                        return false;
                    }
                    let mut after = rest.clone();
                    after.advance(run.len());
                    after.peek_u8() != Some(NAME_KEY)
                })?;
                rest.advance(run.len());
                names = Some(run);
                continue;
            }
            let (tag, wire_type) = decode_key(&mut rest).ok()?;
            if tag == RESOURCE_NAMES {
                // A key of more bytes than needed.
                return None;
            }
            request
                .merge_field(tag, wire_type, &mut rest, DecodeContext::default())
                .ok()?;
        }
        request.names_wire = names?.clone();
        Some(request)
    }

    /// The names in wire form, copied out of the request's frame: to keep as a known run
    /// ([`SotwRequest::decode_frame_knowing`]) without keeping the frame alive.
    pub fn shared_names(&self) -> Bytes {
        Bytes::copy_from_slice(&self.names_wire)
    }

    /// Whether the names are exactly `run`, as [`SotwRequest::decode_frame_knowing`] found
    /// them: the same buffer, not merely equal bytes, so this costs nothing.
    pub fn repeats(&self, run: &Bytes) -> bool {
        !run.is_empty()
            && self.names_wire.as_ptr() == run.as_ptr()
            && self.names_wire.len() == run.len()
    }
}

/// The canonical one-byte key of a `resource_names` entry, as every encoder writes it.
const NAME_KEY: u8 = ((RESOURCE_NAMES << 3) | WireType::LengthDelimited as u32) as u8;

/// The length of the run of `resource_names` entries at the start of `wire`, whose first key
/// has just been read: the first entry's length and bytes, then every whole entry that follows
/// it. A plain walk over the slice, as this runs over every name of every SotW EDS ACK.
fn name_entries_len(wire: &[u8]) -> Result<usize, DecodeError> {
    let mut rest = wire;
    loop {
        let len = decode_varint(&mut rest)?;
        if len > rest.len() as u64 {
            return Err(truncated());
        }
        rest = &rest[len as usize..];
        match rest.split_first() {
            Some((&NAME_KEY, after)) => rest = after,
            _ => return Ok(wire.len() - rest.len()),
        }
    }
}

/// The fingerprint [`SotwRequest::names_fingerprint`] gives the same list of names, from the
/// names themselves (a delta subscription), so equal lists share one interned set whichever
/// protocol variant sent them.
pub fn fingerprint_names<'a>(names: impl IntoIterator<Item = &'a str>) -> u128 {
    fingerprint_name_bytes(names.into_iter().map(str::as_bytes))
}

/// [`fingerprint_names`] of names given as bytes.
pub fn fingerprint_name_bytes<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut prefix = Vec::with_capacity(16);
    for name in names {
        prefix.clear();
        encode_key(RESOURCE_NAMES, WireType::LengthDelimited, &mut prefix);
        encode_varint(name.len() as u64, &mut prefix);
        hasher.update(&prefix);
        hasher.update(name);
    }
    hasher.digest128()
}

impl Message for SotwRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.version_info.is_empty() {
            string::encode(VERSION_INFO, &self.version_info, buf);
        }
        if let Some(node) = &self.node {
            message::encode(NODE, node, buf);
        }
        buf.put_slice(&self.names_wire);
        if !self.type_url.is_empty() {
            string::encode(TYPE_URL, &self.type_url, buf);
        }
        if !self.response_nonce.is_empty() {
            string::encode(RESPONSE_NONCE, &self.response_nonce, buf);
        }
        if let Some(status) = &self.error_detail {
            message::encode(ERROR_DETAIL, status, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            VERSION_INFO => string::merge(wire_type, &mut self.version_info, buf, ctx),
            NODE => message::merge(
                wire_type,
                self.node.get_or_insert_with(Node::default),
                buf,
                ctx,
            ),
            RESOURCE_NAMES => {
                check_wire_type(WireType::LengthDelimited, wire_type)?;
                let len = decode_varint(buf)?;
                if len > buf.remaining() as u64 {
                    return Err(truncated());
                }
                let len = len as usize;
                self.append_names(|wire| {
                    encode_key(RESOURCE_NAMES, WireType::LengthDelimited, wire);
                    encode_varint(len as u64, wire);
                    wire.put(buf.take(len));
                });
                Ok(())
            }
            TYPE_URL => string::merge(wire_type, &mut self.type_url, buf, ctx),
            RESPONSE_NONCE => string::merge(wire_type, &mut self.response_nonce, buf, ctx),
            ERROR_DETAIL => message::merge(
                wire_type,
                self.error_detail.get_or_insert_with(Status::default),
                buf,
                ctx,
            ),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let text = |tag: u32, value: &String| {
            if value.is_empty() {
                0
            } else {
                string::encoded_len(tag, value)
            }
        };
        text(VERSION_INFO, &self.version_info)
            + self
                .node
                .as_ref()
                .map_or(0, |n| message::encoded_len(NODE, n))
            + self.names_wire.len()
            + text(TYPE_URL, &self.type_url)
            + text(RESPONSE_NONCE, &self.response_nonce)
            + self
                .error_detail
                .as_ref()
                .map_or(0, |s| message::encoded_len(ERROR_DETAIL, s))
    }

    fn clear(&mut self) {
        *self = SotwRequest::default();
    }
}

/// The error prost reports for a length-delimited field that runs past the end of its message.
// prost 0.14 (pinned) gives a hand-written `Message` no other constructor for decode errors.
#[allow(deprecated)]
fn truncated() -> DecodeError {
    DecodeError::new("resource_names: a name runs past the end of the request")
}

impl From<DiscoveryRequest> for SotwRequest {
    fn from(request: DiscoveryRequest) -> Self {
        let mut converted = SotwRequest {
            version_info: request.version_info,
            node: request.node,
            type_url: request.type_url,
            response_nonce: request.response_nonce,
            error_detail: request.error_detail,
            names_wire: Bytes::new(),
        };
        converted.append_names(|wire| {
            for name in &request.resource_names {
                string::encode(RESOURCE_NAMES, name, wire);
            }
        });
        converted
    }
}

/// The wire size of one `resource_names` entry.
#[cfg(test)]
fn entry_len(name: &str) -> usize {
    key_len(RESOURCE_NAMES) + prost::encoding::encoded_len_varint(name.len() as u64) + name.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envoy_request() -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            resource_names: vec![
                "outbound|80||a.ns.svc.cluster.local".into(),
                "b".into(),
                "x".repeat(300),
            ],
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "n-1".into(),
            error_detail: Some(Status {
                code: 3,
                message: "rejected".into(),
                details: vec![],
            }),
            resource_locators: vec![],
        }
    }

    #[test]
    fn decodes_what_envoy_encodes_and_encodes_it_back() {
        let request = envoy_request();
        let view = SotwRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(view, SotwRequest::from(request.clone()));
        assert_eq!(view.names().collect::<Vec<_>>(), request.resource_names);
        assert_eq!(
            view.names_wire.len(),
            request
                .resource_names
                .iter()
                .map(|n| entry_len(n))
                .sum::<usize>()
        );
        assert_eq!(view.encoded_len(), request.encoded_len());
        assert_eq!(
            DiscoveryRequest::decode(view.encode_to_vec().as_slice()).unwrap(),
            request
        );
    }

    #[test]
    fn fingerprints_follow_the_list_and_its_order() {
        let a = SotwRequest::from(envoy_request());
        let mut same = envoy_request();
        same.response_nonce = "n-2".into();
        assert_eq!(
            a.names_fingerprint(),
            SotwRequest::from(same).names_fingerprint()
        );
        let mut reordered = envoy_request();
        reordered.resource_names.swap(0, 1);
        let mut split = envoy_request();
        split.resource_names[1] = "bx".into();
        split.resource_names[2] = "x".repeat(299);
        for other in [reordered, split] {
            assert_ne!(
                a.names_fingerprint(),
                SotwRequest::from(other).names_fingerprint()
            );
        }
    }

    #[test]
    fn a_list_of_names_fingerprints_as_the_request_that_carries_it() {
        let request = envoy_request();
        let names = request.resource_names.iter().map(String::as_str);
        assert_eq!(
            fingerprint_names(names),
            SotwRequest::from(request.clone()).names_fingerprint()
        );
        let fewer = request.resource_names[1..].iter().map(String::as_str);
        assert_ne!(
            fingerprint_names(fewer),
            SotwRequest::from(request).names_fingerprint()
        );
    }

    #[test]
    fn a_frame_lends_its_names_and_reads_like_the_general_decode() {
        let request = envoy_request();
        let frame = Bytes::from(request.encode_to_vec());
        let lent = SotwRequest::decode_frame(frame.clone()).unwrap();
        assert_eq!(lent, SotwRequest::decode(frame.clone()).unwrap());
        let within = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert!(
            within.contains(&(lent.names_wire.as_ptr() as usize)),
            "names are a slice"
        );
        // Names split by another field (legal protobuf, though no encoder does it).
        let mut split = Vec::new();
        string::encode(RESOURCE_NAMES, &"a".to_string(), &mut split);
        string::encode(TYPE_URL, &"t".to_string(), &mut split);
        string::encode(RESOURCE_NAMES, &"b".to_string(), &mut split);
        let read = SotwRequest::decode_frame(Bytes::from(split)).unwrap();
        assert_eq!(read.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(read.type_url, "t");
        for malformed in [&[0x1a, 0x05, b'a'][..], &[0x18, 0x01]] {
            assert!(SotwRequest::decode_frame(Bytes::copy_from_slice(malformed)).is_err());
        }
    }

    #[test]
    fn a_run_of_names_ends_at_the_first_other_key_and_a_cut_name_is_an_error() {
        let mut wire = Vec::new();
        for name in ["a", &"b".repeat(200), "c"] {
            string::encode(RESOURCE_NAMES, &name.to_string(), &mut wire);
        }
        // Field 3 again under a two-byte key (legal, though no encoder writes it).
        wire.extend_from_slice(&[0x9a, 0x00, 0x01, b'd']);
        string::encode(TYPE_URL, &"t".to_string(), &mut wire);
        let read = SotwRequest::decode_frame(Bytes::from(wire.clone())).unwrap();
        let names: Vec<_> = read.names().collect();
        assert_eq!(names, ["a", &"b".repeat(200), "c", "d"]);
        assert_eq!(read.type_url, "t");
        // The second name cut short: its length runs past the end.
        let mut cut = Vec::new();
        string::encode(RESOURCE_NAMES, &"a".to_string(), &mut cut);
        cut.extend_from_slice(&[NAME_KEY, 0x05, b'b']);
        assert!(SotwRequest::decode_frame(Bytes::from(cut)).is_err());
    }

    #[test]
    fn names_that_repeat_a_known_run_read_as_they_would_without_it() {
        let request = envoy_request();
        let frame = Bytes::from(request.encode_to_vec());
        let plain = SotwRequest::decode_frame(frame.clone()).unwrap();
        let spelling = plain.shared_names();
        let mut other = Vec::new();
        string::encode(RESOURCE_NAMES, &"other".to_string(), &mut other);
        let known = [Bytes::new(), Bytes::from(other), spelling.clone()];

        // Exactly the run: the request holds it, so `repeats` needs no comparison.
        let read = SotwRequest::decode_frame_knowing(frame.clone(), &known).unwrap();
        assert_eq!(read, plain);
        assert!(read.repeats(&spelling));
        assert!(
            !plain.repeats(&spelling),
            "equal bytes elsewhere are not the run"
        );

        // The run and more names after it: read in full, not the run.
        let mut longer_request = envoy_request();
        longer_request.resource_names.push("late".into());
        let longer = Bytes::from(longer_request.encode_to_vec());
        let read = SotwRequest::decode_frame_knowing(longer.clone(), &known).unwrap();
        assert_eq!(read, SotwRequest::decode(longer).unwrap());
        assert_eq!(read.names().last().unwrap(), "late");
        assert!(!read.repeats(&spelling));

        // The run and then a name cut short is still an error.
        let mut cut = spelling.to_vec();
        cut.extend_from_slice(&[NAME_KEY, 0x05, b'b']);
        assert!(SotwRequest::decode_frame_knowing(Bytes::from(cut), &known).is_err());

        // A list that only shares a prefix with the run (its last name longer).
        let mut prefix_request = envoy_request();
        prefix_request.resource_names[2].push('y');
        let prefixed = Bytes::from(prefix_request.encode_to_vec());
        let read = SotwRequest::decode_frame_knowing(prefixed.clone(), &known).unwrap();
        assert_eq!(read, SotwRequest::decode(prefixed).unwrap());
        assert!(!read.repeats(&spelling));

        // No names at all: an empty known run matches nothing.
        let wildcard = Bytes::from(DiscoveryRequest::default().encode_to_vec());
        let read = SotwRequest::decode_frame_knowing(wildcard, &known).unwrap();
        assert_eq!(read.names().count(), 0);
        assert!(!read.repeats(&Bytes::new()));
    }

    /// `wire` cut into pieces of `stride` bytes, as HTTP/2 frames would cut it.
    fn in_pieces(wire: &Bytes, stride: usize) -> Segments {
        let mut pending = crate::segments::Pending::default();
        for start in (0..wire.len()).step_by(stride) {
            pending.push(wire.slice(start..(start + stride).min(wire.len())));
        }
        pending.take(wire.len())
    }

    #[test]
    fn a_request_in_pieces_reads_as_it_would_in_one() {
        let frame = Bytes::from(envoy_request().encode_to_vec());
        let spelling = SotwRequest::decode_frame(frame.clone())
            .unwrap()
            .shared_names();
        let mut other = Vec::new();
        string::encode(RESOURCE_NAMES, &"other".to_string(), &mut other);
        let known = [Bytes::new(), Bytes::from(other), spelling.clone()];
        let mut longer = envoy_request();
        longer.resource_names.push("late".into());
        let mut prefixed = envoy_request();
        prefixed.resource_names[2].push('y');
        let mut cut = frame.to_vec();
        cut.extend_from_slice(&[NAME_KEY, 0x05, b'b']);
        let mut split = frame.to_vec();
        string::encode(VERSION_INFO, &"v2".to_string(), &mut split);
        split.extend_from_slice(&spelling);
        let requests = [
            frame.clone(),
            Bytes::from(longer.encode_to_vec()),
            Bytes::from(prefixed.encode_to_vec()),
            Bytes::from(cut),
            Bytes::from(split),
            Bytes::from(DiscoveryRequest::default().encode_to_vec()),
        ];
        for (i, wire) in requests.iter().enumerate() {
            let whole = SotwRequest::decode_frame_knowing(wire.clone(), &known);
            for stride in [1, 2, 3, 7, 64, 100, wire.len().max(1)] {
                let pieces = in_pieces(wire, stride);
                let read = SotwRequest::decode_segments_knowing(pieces.clone(), &known);
                match (&read, &whole) {
                    (Ok(read), Ok(whole)) => {
                        assert_eq!(read, whole, "request {i} in pieces of {stride}");
                        assert_eq!(read.repeats(&spelling), whole.repeats(&spelling));
                    }
                    (Err(_), Err(_)) => {}
                    _ => panic!("request {i} in pieces of {stride}: {read:?} vs {whole:?}"),
                }
                // Only the exact repeat is read from its pieces; the rest are joined.
                let in_place = SotwRequest::decode_repeating(&pieces, known.iter()).is_some();
                assert_eq!(in_place, i == 0, "request {i} in pieces of {stride}");
            }
        }
        let read = SotwRequest::decode_segments_knowing(in_pieces(&frame, 16), &known).unwrap();
        assert!(read.repeats(&spelling), "the run itself, not a copy");
    }

    #[test]
    fn malformed_names_are_decode_errors() {
        // Field 3 with a length past the end of the message.
        let truncated = [0x1a, 0x05, b'a'];
        assert!(SotwRequest::decode(truncated.as_slice()).is_err());
        // Field 3 as a varint.
        let wrong_type = [0x18, 0x01];
        assert!(SotwRequest::decode(wrong_type.as_slice()).is_err());
    }
}
