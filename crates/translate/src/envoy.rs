//! Small constructors for Envoy protos that every resource type uses.

use envoy_types::pb::envoy::config::core::v3::{
    self as core, ApiVersion, ConfigSource, Metadata, SocketAddress, address,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::google::protobuf::{self as pbuf, ListValue, Struct, Value, value::Kind};
use std::collections::HashMap;
use std::net::IpAddr;

pub(crate) use envoy_types::util::pack_any as any;

/// `{ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3}`: every dynamic resource
/// comes over the one ADS stream, and nothing waits on a first fetch.
pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        initial_fetch_timeout: Some(seconds(0)),
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(core::AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub(crate) fn seconds(secs: i64) -> pbuf::Duration {
    pbuf::Duration {
        seconds: secs,
        nanos: 0,
    }
}

pub(crate) fn duration(d: meshpilot_api::Duration) -> pbuf::Duration {
    let (seconds, nanos) = d.seconds_and_nanos();
    pbuf::Duration { seconds, nanos }
}

pub(crate) fn u32_value(value: u32) -> pbuf::UInt32Value {
    pbuf::UInt32Value { value }
}

pub(crate) fn bool_value(value: bool) -> pbuf::BoolValue {
    pbuf::BoolValue { value }
}

pub(crate) fn socket_address(ip: &IpAddr, port: u16) -> core::Address {
    core::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub(crate) fn string_value(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

pub(crate) fn list_value(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

pub(crate) fn struct_value(fields: Vec<(&str, Value)>) -> Value {
    Value {
        kind: Some(Kind::StructValue(to_struct(fields))),
    }
}

pub(crate) fn to_struct(fields: Vec<(&str, Value)>) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

/// `metadata.filter_metadata.istio` holding the given fields (`config`, `subset`, `services`).
pub(crate) fn istio_metadata(fields: Vec<(&str, Value)>) -> Metadata {
    Metadata {
        filter_metadata: HashMap::from([("istio".to_string(), to_struct(fields))]),
        ..Default::default()
    }
}
