//! The `domains` of a service's virtual host: every Host header a client may send for it.

use meshpilot_model::Service;
use std::collections::HashSet;
use std::net::IpAddr;

/// Domains of `service` as seen from a proxy whose DNS domain is `proxy_dns_domain`, in
/// istiod's order: FQDN, absolute FQDN, short names, ClusterIPs (no `:port` twins, since the
/// route configuration ignores ports in host matching). Also returns the short names alone,
/// which [`DomainClaims::claim`] treats specially.
pub(super) fn service_domains(
    service: &Service,
    proxy_dns_domain: &str,
) -> (Vec<String>, Vec<String>) {
    let host = &*service.hostname;
    let alternates = alternate_names(host, proxy_dns_domain);
    let mut domains = vec![host.to_string(), format!("{host}.")];
    domains.extend(alternates.iter().cloned());
    // Headless services are also reached per pod: `<pod>.<service>...`.
    if service.headless {
        let wildcards: Vec<String> = domains.iter().map(|d| format!("*.{d}")).collect();
        domains.extend(wildcards);
    }
    domains.extend(
        service
            .cluster_ips
            .iter()
            .filter(|ip| !ip.is_unspecified())
            .map(ip_domain),
    );
    (domains, alternates)
}

/// Short names a Kubernetes client may use: `name`, `name.ns.svc` and `name.ns` from the same
/// namespace, only `name.ns` and `name.ns.svc` from another. Only for hosts sharing the
/// proxy's `svc.<cluster domain>` suffix; other hosts could collide with those expansions.
fn alternate_names(hostname: &str, proxy_dns_domain: &str) -> Vec<String> {
    let Some(proxy_svc) = proxy_dns_domain.find(".svc.") else {
        return Vec::new();
    };
    if !hostname.ends_with(&proxy_dns_domain[proxy_svc + 1..]) {
        return Vec::new();
    }
    let (Some(host_svc), Some(first_dot)) = (hostname.find(".svc."), hostname.find('.')) else {
        return Vec::new();
    };
    if host_svc == 0 || first_dot + 1 > host_svc {
        return Vec::new();
    }
    let name = &hostname[..first_dot];
    let name_and_namespace = &hostname[..host_svc];
    if hostname[first_dot + 1..host_svc] == proxy_dns_domain[..proxy_svc] {
        vec![
            name.to_string(),
            format!("{name_and_namespace}.svc"),
            name_and_namespace.to_string(),
        ]
    } else {
        vec![
            name_and_namespace.to_string(),
            format!("{name_and_namespace}.svc"),
        ]
    }
}

fn ip_domain(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Domains already used in one route configuration: Envoy rejects a configuration in which two
/// virtual hosts share a domain, so later claimants lose it.
pub(super) struct DomainClaims {
    taken: HashSet<String>,
    /// Service FQDNs and virtual host names in this route: a short name equal to one of them
    /// would shadow a real host (e.g. `foo.com` expanded from `foo.com.<ns>.svc...`).
    known_fqdns: HashSet<String>,
}

impl DomainClaims {
    pub(super) fn new(known_fqdns: impl IntoIterator<Item = String>) -> Self {
        DomainClaims {
            taken: HashSet::new(),
            known_fqdns: known_fqdns.into_iter().collect(),
        }
    }

    /// The domains of `wanted` not claimed yet (case-insensitively), now claimed.
    pub(super) fn claim(&mut self, wanted: Vec<String>, alternates: &[String]) -> Vec<String> {
        wanted
            .into_iter()
            .filter(|domain| {
                if alternates.contains(domain) && self.known_fqdns.contains(domain) {
                    return false;
                }
                self.taken.insert(domain.to_ascii_lowercase())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_depend_on_the_proxy_namespace() {
        let host = "reviews.default.svc.cluster.local";
        assert_eq!(
            alternate_names(host, "default.svc.cluster.local"),
            ["reviews", "reviews.default.svc", "reviews.default"]
        );
        assert_eq!(
            alternate_names(host, "shop.svc.cluster.local"),
            ["reviews.default", "reviews.default.svc"]
        );
        assert!(alternate_names(host, "shop.svc.other.domain").is_empty());
        assert!(alternate_names(host, "cluster.local").is_empty());
        assert!(alternate_names("www.example.com", "default.svc.cluster.local").is_empty());
    }

    #[test]
    fn claims_drop_duplicates_case_insensitively_and_shadowing_short_names() {
        let mut claims = DomainClaims::new(["foo.com".to_string()]);
        let first = claims.claim(vec!["a.b".into(), "A.B".into(), "x".into()], &[]);
        assert_eq!(first, ["a.b", "x"]);
        let second = claims.claim(
            vec!["y".into(), "foo.com".into(), "x".into()],
            &["foo.com".into()],
        );
        assert_eq!(second, ["y"]);
    }

    #[test]
    fn ipv6_cluster_ips_are_bracketed() {
        assert_eq!(ip_domain(&"fd00::1".parse().unwrap()), "[fd00::1]");
        assert_eq!(ip_domain(&"10.0.0.1".parse().unwrap()), "10.0.0.1");
    }
}
