//! Deterministic protobuf encoding of Envoy messages.
//!
//! prost encodes `map` fields (Struct fields, metadata, typed_per_filter_config…) in `HashMap`
//! iteration order, which differs from one map instance to the next. Identical config would
//! then encode to different bytes and hash to different versions: spurious pushes, and no
//! byte-identical resend after a restart. This re-encodes the wire form with every map's entries
//! sorted, recursing into sub-messages and into `google.protobuf.Any` payloads, guided by the
//! descriptor set.

use crate::dump::descriptor_pool;
use prost::Message;
use prost::encoding::{WireType, decode_varint, encode_varint};
use prost_reflect::{Kind, MessageDescriptor};
use std::borrow::Cow;

/// Encodes `message` with map entries in a canonical (sorted) order.
pub fn encode_canonical<M: Message + prost::Name>(message: &M) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    match descriptor_pool().get_message_by_name(&M::full_name()) {
        Some(descriptor) => match canonicalize(&descriptor, &bytes) {
            Some(Cow::Owned(canonical)) => canonical,
            Some(Cow::Borrowed(_)) | None => bytes,
        },
        None => bytes,
    }
}

/// One field as it appears on the wire.
struct WireField<'a> {
    number: u32,
    wire_type: WireType,
    /// The whole encoded field (tag included).
    raw: &'a [u8],
    /// For length-delimited fields, the payload.
    payload: Option<&'a [u8]>,
}

fn split_fields(mut buf: &[u8]) -> Option<Vec<WireField<'_>>> {
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let start = buf;
        let key = decode_varint(&mut buf).ok()?;
        let wire_type = WireType::try_from(key & 0x7).ok()?;
        let number = u32::try_from(key >> 3).ok()?;
        let mut payload = None;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
            }
            WireType::SixtyFourBit => buf = buf.get(8..)?,
            WireType::ThirtyTwoBit => buf = buf.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                payload = Some(buf.get(..len)?);
                buf = &buf[len..];
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        }
        let used = start.len() - buf.len();
        fields.push(WireField {
            number,
            wire_type,
            raw: &start[..used],
            payload,
        });
    }
    Some(fields)
}

fn write_length_delimited(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    encode_varint(
        (u64::from(number) << 3) | WireType::LengthDelimited as u64,
        out,
    );
    encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Re-encodes `bytes` (a `descriptor` message) canonically; `None` if it does not parse.
/// Borrowed when `bytes` already are canonical (every map with at most one entry, or already
/// in order: the usual case), so nothing is copied for them.
fn canonicalize<'b>(descriptor: &MessageDescriptor, bytes: &'b [u8]) -> Option<Cow<'b, [u8]>> {
    if descriptor.full_name() == "google.protobuf.Any" {
        return canonicalize_any(bytes);
    }
    let fields = split_fields(bytes)?;
    // The canonical bytes, started only once something differs from `bytes`: then holding
    // every field before the current one.
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < fields.len() {
        let field = &fields[i];
        let message_kind = match descriptor.get_field(field.number) {
            Some(fd) if field.wire_type == WireType::LengthDelimited => match fd.kind() {
                Kind::Message(child) => Some((fd.is_map(), child)),
                _ => None,
            },
            _ => None,
        };
        let Some((is_map, child)) = message_kind else {
            if let Some(out) = &mut out {
                out.extend_from_slice(field.raw);
            }
            i += 1;
            continue;
        };
        let first = i;
        let mut entries = Vec::new();
        if is_map {
            // Entries of one map are contiguous in prost's output; sort them as a block.
            while i < fields.len() && fields[i].number == field.number {
                entries.push(canonicalize(&child, fields[i].payload?)?);
                i += 1;
            }
        } else {
            entries.push(canonicalize(&child, field.payload?)?);
            i += 1;
        }
        let sorted = entries.is_sorted();
        let unchanged = sorted && entries.iter().all(|e| matches!(e, Cow::Borrowed(_)));
        if unchanged && out.is_none() {
            continue;
        }
        let out = out.get_or_insert_with(|| {
            // Everything before this field was canonical as it stood.
            let start = fields[first].raw.as_ptr() as usize - bytes.as_ptr() as usize;
            let mut out = Vec::with_capacity(bytes.len());
            out.extend_from_slice(&bytes[..start]);
            out
        });
        if !sorted {
            entries.sort();
        }
        for entry in entries {
            write_length_delimited(out, field.number, &entry);
        }
    }
    Some(match out {
        Some(out) => Cow::Owned(out),
        None => Cow::Borrowed(bytes),
    })
}

/// `Any { type_url = 1, value = 2 }`: canonicalize the payload as the type it names.
fn canonicalize_any(bytes: &[u8]) -> Option<Cow<'_, [u8]>> {
    let fields = split_fields(bytes)?;
    let type_url = fields
        .iter()
        .find(|f| f.number == 1)
        .and_then(|f| f.payload)
        .and_then(|p| std::str::from_utf8(p).ok())
        .unwrap_or_default();
    let inner = type_url
        .rsplit('/')
        .next()
        .and_then(|name| descriptor_pool().get_message_by_name(name));
    // Its maps would go out in hash order: the type belongs in `dump::RENDERED_TYPES`.
    debug_assert!(
        inner.is_some() || type_url.is_empty(),
        "{type_url} is not in the descriptor pool"
    );
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    for field in &fields {
        match (field.number, &inner, field.payload) {
            (2, Some(inner), Some(value)) => {
                let value = canonicalize(inner, value)?;
                changed |= matches!(value, Cow::Owned(_));
                write_length_delimited(&mut out, 2, &value);
            }
            _ => out.extend_from_slice(field.raw),
        }
    }
    Some(if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    use std::collections::HashMap;

    fn metadata(keys: &[&str]) -> Metadata {
        let fields: HashMap<String, Value> = keys
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(value::Kind::StringValue(format!("value-{k}"))),
                    },
                )
            })
            .collect();
        Metadata {
            filter_metadata: HashMap::from([("istio".to_string(), Struct { fields })]),
            ..Default::default()
        }
    }

    #[test]
    fn equal_maps_encode_identically_whatever_their_insertion_order() {
        let keys: Vec<String> = (0..32).map(|i| format!("k{i}")).collect();
        let forward: Vec<&str> = keys.iter().map(String::as_str).collect();
        let backward: Vec<&str> = keys.iter().rev().map(String::as_str).collect();
        let a = metadata(&forward);
        let b = metadata(&backward);
        assert_eq!(a, b);
        assert_eq!(encode_canonical(&a), encode_canonical(&b));
        // And the canonical form still decodes to the same message.
        assert_eq!(
            Metadata::decode(encode_canonical(&a).as_slice()).unwrap(),
            a
        );
    }

    #[test]
    fn fields_around_a_sorted_map_are_kept_and_canonical_bytes_are_not_copied() {
        use envoy_types::pb::envoy::config::route::v3::{Route, RouteMatch, route_match};
        let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
        let route = |keys: Vec<&str>| Route {
            // Encoded before the metadata (field 1 vs 4), the name after it (field 14).
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            metadata: Some(metadata(&keys)),
            name: "r".into(),
            ..Default::default()
        };
        let a = route(keys.iter().map(String::as_str).collect());
        let b = route(keys.iter().rev().map(String::as_str).collect());
        assert_eq!(encode_canonical(&a), encode_canonical(&b));
        assert_eq!(Route::decode(encode_canonical(&a).as_slice()).unwrap(), a);

        let single = route(vec!["only"]);
        let plain = single.encode_to_vec();
        let descriptor = descriptor_pool()
            .get_message_by_name("envoy.config.route.v3.Route")
            .unwrap();
        assert!(matches!(
            canonicalize(&descriptor, &plain),
            Some(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn any_payloads_are_canonical_too() {
        let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
        let forward: Vec<&str> = keys.iter().map(String::as_str).collect();
        let backward: Vec<&str> = keys.iter().rev().map(String::as_str).collect();
        let wrap = |m: Metadata| envoy_types::util::pack_any(m);
        let a = wrap(metadata(&forward));
        let b = wrap(metadata(&backward));
        assert_eq!(encode_canonical(&a), encode_canonical(&b));
    }
}
