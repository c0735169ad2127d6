//! LDS: virtualOutbound, virtualInbound and the per-port outbound listeners.
use envoy_types::pb::envoy::config::listener::v3::Listener;
use meshpilot_model::{Proxy, Snapshot};

pub fn build_listeners(_snapshot: &Snapshot, _proxy: &Proxy) -> Vec<Listener> {
    Vec::new()
}

/// RDS names the listeners reference, in first-seen order.
pub(crate) fn route_names(_listeners: &[Listener]) -> Vec<String> {
    Vec::new()
}
