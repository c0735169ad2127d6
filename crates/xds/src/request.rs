//! The state-of-the-world request as this server reads it.
//!
//! An EDS request repeats every subscribed cluster name (over a thousand in a large mesh) on
//! each ACK. Envoy's generated `DiscoveryRequest` decodes each into its own `String`; here the
//! names stay slices of the received buffer, so an ACK costs no allocation per name.

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;

/// `envoy.service.discovery.v3.DiscoveryRequest` with its resource names left as bytes
/// (wire-compatible: a protobuf string is length-delimited bytes). `resource_locators` is
/// skipped as an unknown field: this server does not serve xDS-TP locators.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SotwRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, optional, tag = "2")]
    pub node: Option<Node>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub resource_names: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<Status>,
}

impl SotwRequest {
    /// The names as text; bytes that are not UTF-8 (Envoy never sends them) are replaced.
    pub fn names(&self) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
        self.resource_names
            .iter()
            .map(|name| String::from_utf8_lossy(name))
    }
}

impl From<DiscoveryRequest> for SotwRequest {
    fn from(request: DiscoveryRequest) -> Self {
        SotwRequest {
            version_info: request.version_info,
            node: request.node,
            resource_names: request
                .resource_names
                .into_iter()
                .map(Bytes::from)
                .collect(),
            type_url: request.type_url,
            response_nonce: request.response_nonce,
            error_detail: request.error_detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn decodes_what_envoy_encodes_and_borrows_the_names() {
        let request = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            resource_names: vec!["outbound|80||a.ns.svc.cluster.local".into(), "b".into()],
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "n-1".into(),
            error_detail: Some(Status {
                code: 3,
                message: "rejected".into(),
                details: vec![],
            }),
            resource_locators: vec![],
        };
        let wire = Bytes::from(request.encode_to_vec());
        let view = SotwRequest::decode(wire.clone()).unwrap();
        assert_eq!(view, SotwRequest::from(request.clone()));
        assert_eq!(view.names().collect::<Vec<_>>(), request.resource_names);
        // Zero-copy: the names point into the received buffer.
        let wire_range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        assert!(wire_range.contains(&(view.resource_names[0].as_ptr() as usize)));
        // And it encodes back to the same message.
        assert_eq!(
            DiscoveryRequest::decode(view.encode_to_vec().as_slice()).unwrap(),
            request
        );
    }
}
