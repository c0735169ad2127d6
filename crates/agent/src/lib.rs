//! The sidecar side of the mesh: what runs in the application pod next to Envoy.
//!
//! - [`bootstrap`] builds the Envoy v3 bootstrap a sidecar starts from: node identity, admin,
//!   the `xds-grpc` control-plane cluster, ADS for listeners and clusters, and the static
//!   health (15021) and Prometheus (15090) listeners.
//! - [`iptables`] renders the nat-table rules of Istio's `istio-init` container, which steer the
//!   pod's traffic through Envoy, and applies them with `iptables-restore`.
//! - [`inject`] adds the `istio-init` and `istio-proxy` containers to pod templates, for
//!   `meshpilot inject` and the admission webhook.
//! - [`pilot`] holds pilot-agent's decisions: the pod's identity from its environment, Envoy's
//!   command line, and what each signal does to the Envoy it supervises.

pub mod bootstrap;
pub mod inject;
pub mod iptables;
pub mod pilot;

pub use bootstrap::{BootstrapConfig, BootstrapError, XdsApi, build_bootstrap, render_bootstrap};
pub use inject::{InjectConfig, InjectError, inject_documents, inject_pod_template};
pub use iptables::{
    ApplyError, Cidr, InterceptionMode, IptablesConfig, IptablesError, PortSelection,
    RangeSelection, apply_rules, render_nat_rules,
};
pub use pilot::{AgentError, PodIdentity, read_pod_identity};
