//! Resource names istiod uses, which Envoy, istioctl and dashboards all key on.

/// Direction part of a cluster name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// The bootstrap's cluster for the control plane (istio-agent's name).
pub const XDS_CLUSTER: &str = "xds-grpc";
pub const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
pub const VIRTUAL_OUTBOUND_LISTENER: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND_LISTENER: &str = "virtualInbound";
/// Outbound capture port (`-p` of istio-iptables).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Inbound capture port (`-z` of istio-iptables).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Ports of the sidecar itself; services on these ports get no wildcard outbound listener.
pub const RESERVED_PORTS: [u16; 4] = [15001, 15006, 15021, 15090];
/// Source address of inbound passthrough traffic, exempted from capture by the iptables rules.
pub const INBOUND_PASSTHROUGH_BIND_IP: &str = "127.0.0.6";

/// `outbound|9080|v1|reviews.default.svc.cluster.local`; `inbound|9080||`.
pub fn cluster_name(direction: Direction, port: u16, subset: &str, host: &str) -> String {
    match direction {
        Direction::Outbound => format!("outbound|{port}|{subset}|{host}"),
        Direction::Inbound => format!("inbound|{port}|{subset}|{host}"),
    }
}

/// The parts of a `|`-separated cluster name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNameParts<'a> {
    pub direction: &'a str,
    pub port: u16,
    pub subset: &'a str,
    pub host: &'a str,
}

/// Splits `outbound|9080|v1|host` into its four fields; `None` for other names.
pub fn parse_cluster_name(name: &str) -> Option<ClusterNameParts<'_>> {
    let mut parts = name.split('|');
    let direction = parts.next()?;
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    if parts.next().is_some() || !(direction == "outbound" || direction == "inbound") {
        return None;
    }
    Some(ClusterNameParts {
        direction,
        port,
        subset,
        host,
    })
}

/// Name of the wildcard outbound listener for an HTTP port: `0.0.0.0_9080`.
pub fn wildcard_listener_name(port: u16) -> String {
    format!("0.0.0.0_{port}")
}

/// Name of a ClusterIP-bound outbound listener: `10.96.0.5_3306`.
pub fn ip_listener_name(ip: &std::net::IpAddr, port: u16) -> String {
    format!("{ip}_{port}")
}

/// Virtual host name: `reviews.default.svc.cluster.local:9080`.
pub fn virtual_host_name(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_have_four_fields() {
        let name = cluster_name(
            Direction::Outbound,
            9080,
            "v1",
            "reviews.default.svc.cluster.local",
        );
        assert_eq!(name, "outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(
            cluster_name(Direction::Outbound, 9080, "", "r.d.svc.cluster.local"),
            "outbound|9080||r.d.svc.cluster.local"
        );
        assert_eq!(
            cluster_name(Direction::Inbound, 9080, "", ""),
            "inbound|9080||"
        );
        let parts = parse_cluster_name(&name).unwrap();
        assert_eq!(
            (parts.direction, parts.port, parts.subset),
            ("outbound", 9080, "v1")
        );
        assert!(parse_cluster_name("PassthroughCluster").is_none());
        assert!(parse_cluster_name("outbound|x||h").is_none());
    }
}
