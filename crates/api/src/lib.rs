//! Istio networking config kinds as meshpilot reads them, and their validation.
//!
//! Place in the flow: sources deserialize YAML or API objects into these types, the
//! index validates them with [`validate_virtual_service`] / [`validate_destination_rule`],
//! and the translator reads the validated specs. Field names follow `networking.istio.io`
//! (v1, v1beta1 and v1alpha3 share one schema), so existing Istio YAML loads unchanged.

mod duration;
mod networking;
mod validation;

pub use duration::{Duration, DurationError};
pub use networking::*;
pub use validation::{
    FieldError, validate_destination_rule, validate_regex, validate_virtual_service,
};

/// API group of the Istio networking kinds.
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";
/// Versions of the Istio networking group that carry the same schema.
pub const ISTIO_NETWORKING_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
