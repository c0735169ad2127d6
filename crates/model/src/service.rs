//! Kubernetes Services as the mesh sees them: an FQDN, its ClusterIPs and typed ports.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A fully qualified service host, e.g. `reviews.default.svc.cluster.local`.
pub type Hostname = Arc<str>;

/// `<name>.<namespace>.svc.<domain>`.
pub fn service_fqdn(name: &str, namespace: &str, domain: &str) -> String {
    format!("{name}.{namespace}.svc.{domain}")
}

/// Expands an Istio short host (`reviews`) relative to the config's namespace; hosts that
/// already contain a dot, and wildcards, are taken as written, as Istio does.
pub fn resolve_host(host: &str, config_namespace: &str, domain: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_string()
    } else {
        service_fqdn(host, config_namespace, domain)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: Hostname,
    /// Empty for headless services.
    pub cluster_ips: Vec<IpAddr>,
    pub headless: bool,
    pub ports: Vec<ServicePort>,
    /// `None` for a selectorless service (endpoints written by hand).
    pub selector: Option<BTreeMap<String, String>>,
    /// RFC 3339 creation time; orders services the way Istio does.
    pub creation_timestamp: Option<String>,
    pub external_name: Option<String>,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// Whether the selector matches a workload's labels (a selectorless service matches none).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.selector {
            Some(selector) if !selector.is_empty() => labels_match(selector, labels),
            _ => false,
        }
    }
}

/// True when every `required` label is present in `labels` with the same value.
pub fn labels_match(
    required: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    required.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty when the port is unnamed.
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A named container port, resolved per pod.
    Name(String),
    /// Defaults to the service port.
    Unset,
}

/// The application protocol of a service port, which decides its listener and cluster shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Mysql,
    Redis,
    Udp,
    Sctp,
    /// Unnamed or unrecognised: Envoy sniffs HTTP vs TCP.
    Auto,
}

impl Protocol {
    /// Istio's rule: UDP/SCTP by transport; then `appProtocol`; then the port-name prefix before
    /// the first `-`; else "auto", except a few well-known ports that default to TCP.
    pub fn detect(transport: &str, app_protocol: Option<&str>, port_name: &str, port: u16) -> Self {
        match transport.to_ascii_uppercase().as_str() {
            "UDP" => return Protocol::Udp,
            "SCTP" => return Protocol::Sctp,
            _ => {}
        }
        if let Some(app) = app_protocol {
            let mapped = match app {
                "kubernetes.io/h2c" => Some(Protocol::Http2),
                "kubernetes.io/ws" => Some(Protocol::Http),
                "kubernetes.io/wss" => Some(Protocol::Https),
                other => Self::from_name(other),
            };
            if let Some(p) = mapped {
                return p;
            }
        }
        let lower = port_name.to_ascii_lowercase();
        let detected = if lower == "grpc-web" || lower.starts_with("grpc-web-") {
            Some(Protocol::GrpcWeb)
        } else {
            Self::from_name(lower.split('-').next().unwrap_or(""))
        };
        detected.unwrap_or(match port {
            25 | 53 | 3306 | 27017 => Protocol::Tcp,
            _ => Protocol::Auto,
        })
    }

    fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "mysql" => Protocol::Mysql,
            "redis" => Protocol::Redis,
            "udp" => Protocol::Udp,
            _ => return None,
        })
    }

    /// HTTP/1.1, HTTP/2, gRPC or gRPC-Web: served through the HCM and RDS.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// Upstream speaks HTTP/2 (h2c).
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// Opaque TCP: https, tls, tcp and the database protocols.
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Https
                | Protocol::Tls
                | Protocol::Tcp
                | Protocol::Mongo
                | Protocol::Mysql
                | Protocol::Redis
        )
    }

    /// Carried over UDP or SCTP: no Envoy config at all.
    pub fn is_unsupported_transport(self) -> bool {
        matches!(self, Protocol::Udp | Protocol::Sctp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "Mongo",
            Protocol::Mysql => "MySQL",
            Protocol::Redis => "Redis",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Auto => "UnsupportedProtocol",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_protocol_from_port_name_prefix() {
        assert_eq!(Protocol::detect("TCP", None, "http", 9080), Protocol::Http);
        assert_eq!(
            Protocol::detect("TCP", None, "http-web", 80),
            Protocol::Http
        );
        assert_eq!(
            Protocol::detect("TCP", None, "HTTP2-x", 80),
            Protocol::Http2
        );
        assert_eq!(Protocol::detect("TCP", None, "grpc", 80), Protocol::Grpc);
        assert_eq!(
            Protocol::detect("TCP", None, "grpc-web", 80),
            Protocol::GrpcWeb
        );
        assert_eq!(
            Protocol::detect("TCP", None, "grpc-web-x", 80),
            Protocol::GrpcWeb
        );
        assert_eq!(Protocol::detect("TCP", None, "tcp-db", 80), Protocol::Tcp);
        assert_eq!(Protocol::detect("TCP", None, "mongo", 80), Protocol::Mongo);
        assert_eq!(
            Protocol::detect("TCP", None, "redis", 6379),
            Protocol::Redis
        );
        assert_eq!(Protocol::detect("TCP", None, "mysql", 80), Protocol::Mysql);
        assert_eq!(Protocol::detect("TCP", None, "https", 443), Protocol::Https);
        assert_eq!(Protocol::detect("TCP", None, "tls-x", 443), Protocol::Tls);
    }

    #[test]
    fn app_protocol_wins_over_name() {
        assert_eq!(
            Protocol::detect("TCP", Some("http"), "tcp", 80),
            Protocol::Http
        );
        assert_eq!(
            Protocol::detect("TCP", Some("kubernetes.io/h2c"), "", 80),
            Protocol::Http2
        );
        assert_eq!(
            Protocol::detect("TCP", Some("kubernetes.io/ws"), "", 80),
            Protocol::Http
        );
        // An appProtocol Istio does not know falls back to the name.
        assert_eq!(
            Protocol::detect("TCP", Some("custom"), "grpc", 80),
            Protocol::Grpc
        );
    }

    #[test]
    fn unnamed_is_auto_except_well_known_tcp_ports() {
        assert_eq!(Protocol::detect("TCP", None, "", 8080), Protocol::Auto);
        assert_eq!(Protocol::detect("TCP", None, "web", 8080), Protocol::Auto);
        assert_eq!(Protocol::detect("TCP", None, "", 3306), Protocol::Tcp);
        assert_eq!(Protocol::detect("UDP", None, "dns", 53), Protocol::Udp);
    }

    #[test]
    fn resolves_short_hosts_against_config_namespace() {
        assert_eq!(
            resolve_host("reviews", "default", "cluster.local"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.prod", "default", "cluster.local"),
            "reviews.prod"
        );
        assert_eq!(
            resolve_host("*.example.com", "default", "cluster.local"),
            "*.example.com"
        );
    }
}
