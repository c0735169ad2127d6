//! The sidecar side of the mesh: what runs in the application pod next to Envoy.
//!
//! - [`bootstrap`] builds the Envoy v3 bootstrap a sidecar starts from: node identity, admin,
//!   the `xds-grpc` control-plane cluster, ADS for listeners and clusters, and the static
//!   health (15021) and Prometheus (15090) listeners.
//! - [`iptables`] renders the nat-table rules of Istio's `istio-init` container, which steer the
//!   pod's traffic through Envoy, and applies them with `iptables-restore`.

pub mod bootstrap;
pub mod iptables;

pub use bootstrap::{BootstrapConfig, BootstrapError, XdsApi, build_bootstrap, render_bootstrap};
pub use iptables::{
    ApplyError, Cidr, InterceptionMode, IptablesConfig, IptablesError, PortSelection,
    RangeSelection, apply_rules, render_nat_rules,
};
