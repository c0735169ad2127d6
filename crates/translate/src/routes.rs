//! RDS: one RouteConfiguration per HTTP port, VirtualService translation.
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use meshpilot_model::{Proxy, Snapshot};

pub fn build_routes(_snapshot: &Snapshot, _proxy: &Proxy, _names: &[String]) -> Vec<RouteConfiguration> {
    Vec::new()
}
