//! Istio configs held by the index: the validated spec with every host already resolved to FQDN.

use crate::service::resolve_host;
use meshpilot_api::{
    Destination, DestinationRuleSpec, FieldError, VirtualServiceSpec, validate_destination_rule,
    validate_virtual_service,
};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigKind {
    VirtualService,
    DestinationRule,
}

impl ConfigKind {
    /// The path segment Istio uses in `filter_metadata.istio.config`.
    pub fn path_segment(self) -> &'static str {
        match self {
            ConfigKind::VirtualService => "virtual-service",
            ConfigKind::DestinationRule => "destination-rule",
        }
    }

    pub fn kind_name(self) -> &'static str {
        match self {
            ConfigKind::VirtualService => "VirtualService",
            ConfigKind::DestinationRule => "DestinationRule",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigKey {
    pub kind: ConfigKind,
    pub namespace: String,
    pub name: String,
}

impl ConfigKey {
    /// `/apis/networking.istio.io/v1/namespaces/<ns>/<kind>/<name>`, as istioctl expects it.
    pub fn metadata_path(&self) -> String {
        format!(
            "/apis/networking.istio.io/v1/namespaces/{}/{}/{}",
            self.namespace,
            self.kind.path_segment(),
            self.name
        )
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.kind.kind_name(),
            self.namespace,
            self.name
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigMeta {
    pub name: String,
    pub namespace: String,
    /// RFC 3339; older configs win conflicts.
    pub creation_timestamp: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VirtualServiceConfig {
    pub meta: ConfigMeta,
    /// Spec with `hosts` and every destination host resolved to FQDN.
    pub spec: VirtualServiceSpec,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DestinationRuleConfig {
    pub meta: ConfigMeta,
    /// Spec with `host` resolved to FQDN.
    pub spec: DestinationRuleSpec,
}

impl VirtualServiceConfig {
    /// Validates `spec` and resolves its short hosts against the config namespace.
    pub fn new(
        meta: ConfigMeta,
        mut spec: VirtualServiceSpec,
        domain: &str,
    ) -> Result<Self, Vec<FieldError>> {
        let errors = validate_virtual_service(&spec);
        if !errors.is_empty() {
            return Err(errors);
        }
        let ns = meta.namespace.as_str();
        let resolve = |d: &mut Destination| d.host = resolve_host(&d.host, ns, domain);
        for host in &mut spec.hosts {
            *host = resolve_host(host, ns, domain);
        }
        for http in &mut spec.http {
            http.route
                .iter_mut()
                .for_each(|r| resolve(&mut r.destination));
            http.mirror.iter_mut().for_each(resolve);
            http.mirrors
                .iter_mut()
                .for_each(|m| resolve(&mut m.destination));
        }
        for tcp in &mut spec.tcp {
            tcp.route
                .iter_mut()
                .for_each(|r| resolve(&mut r.destination));
        }
        Ok(VirtualServiceConfig { meta, spec })
    }

    pub fn key(&self) -> ConfigKey {
        ConfigKey {
            kind: ConfigKind::VirtualService,
            namespace: self.meta.namespace.clone(),
            name: self.meta.name.clone(),
        }
    }

    /// Whether the VS applies to sidecars: no `gateways`, or `mesh` among them.
    pub fn applies_to_mesh(&self) -> bool {
        self.spec.gateways.is_empty() || self.spec.gateways.iter().any(|g| g == "mesh")
    }

    /// Whether this config is visible from `namespace` under its `exportTo`.
    pub fn exported_to(&self, namespace: &str) -> bool {
        exported_to(&self.spec.export_to, &self.meta.namespace, namespace)
    }
}

impl DestinationRuleConfig {
    pub fn new(
        meta: ConfigMeta,
        mut spec: DestinationRuleSpec,
        domain: &str,
    ) -> Result<Self, Vec<FieldError>> {
        let errors = validate_destination_rule(&spec);
        if !errors.is_empty() {
            return Err(errors);
        }
        spec.host = resolve_host(&spec.host, &meta.namespace, domain);
        Ok(DestinationRuleConfig { meta, spec })
    }

    pub fn key(&self) -> ConfigKey {
        ConfigKey {
            kind: ConfigKind::DestinationRule,
            namespace: self.meta.namespace.clone(),
            name: self.meta.name.clone(),
        }
    }

    pub fn exported_to(&self, namespace: &str) -> bool {
        exported_to(&self.spec.export_to, &self.meta.namespace, namespace)
    }

    /// Whether the rule's host (possibly a `*.` wildcard) covers `hostname`.
    pub fn matches_host(&self, hostname: &str) -> bool {
        host_matches(&self.spec.host, hostname)
    }
}

/// `*.example.com` covers `a.example.com`; `*` covers everything; otherwise exact.
pub fn host_matches(pattern: &str, hostname: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => hostname.ends_with(suffix),
        None => pattern == hostname,
    }
}

fn exported_to(export_to: &[String], own_namespace: &str, namespace: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == namespace || (e == "." && own_namespace == namespace))
}

/// A config the index refused, with the reasons, for logs and `/debug/configz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedConfig {
    pub key: ConfigKey,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for RejectedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rejected: ", self.key)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
