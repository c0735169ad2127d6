//! Envoy admin config_dump rendering.
