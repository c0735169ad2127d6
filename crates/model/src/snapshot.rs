//! The immutable view of the mesh the translator reads. Built by [`crate::Index::snapshot`];
//! everything inside is shared through `Arc`, so a snapshot is cheap to keep and to hand out.

use crate::config::{DestinationRuleConfig, RejectedConfig, VirtualServiceConfig};
use crate::service::{Hostname, Service};
use crate::workload::{Endpoint, Namespace, ObjectKey, Pod};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Istio's root config namespace: DestinationRules there apply mesh-wide as a last resort.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases with every published snapshot.
    pub version: u64,
    pub domain: String,
    // The tables below are shared between snapshots while their contents stay the same.
    pub(crate) services: Arc<BTreeMap<Hostname, Arc<Service>>>,
    /// The same services by namespace, in hostname order: a proxy's own services are looked
    /// up on every connect and CDS/LDS push, among its namespace's only.
    pub(crate) services_by_namespace: Arc<HashMap<String, Vec<Arc<Service>>>>,
    pub(crate) endpoints: Arc<HashMap<Hostname, Arc<Vec<Endpoint>>>>,
    pub(crate) pods: Arc<BTreeMap<ObjectKey, Arc<Pod>>>,
    pub(crate) pods_by_ip: Arc<HashMap<IpAddr, ObjectKey>>,
    pub(crate) namespaces: Arc<BTreeMap<String, Arc<Namespace>>>,
    /// Ordered oldest first (creation time, then namespace/name): the conflict order.
    pub(crate) virtual_services: Vec<Arc<VirtualServiceConfig>>,
    pub(crate) destination_rules: Vec<Arc<DestinationRuleConfig>>,
    /// Positions in `destination_rules` by exact host, and of the wildcard-host rules, so a
    /// lookup costs a hash probe instead of a scan of every rule.
    pub(crate) rules_by_host: HashMap<String, Vec<usize>>,
    pub(crate) wildcard_rules: Vec<usize>,
    pub(crate) rejected: Vec<RejectedConfig>,
}

impl Snapshot {
    /// Builds the host index over `destination_rules` (which must already be in final order).
    pub(crate) fn build_indexes(&mut self) {
        self.rules_by_host.clear();
        self.wildcard_rules.clear();
        for (i, rule) in self.destination_rules.iter().enumerate() {
            if rule.spec.host.starts_with('*') {
                self.wildcard_rules.push(i);
            } else {
                self.rules_by_host
                    .entry(rule.spec.host.clone())
                    .or_default()
                    .push(i);
            }
        }
    }

    /// Services sorted by hostname.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The services of one namespace, in hostname order.
    pub fn services_in(&self, namespace: &str) -> impl Iterator<Item = &Arc<Service>> {
        self.services_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
    }

    pub fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(hostname)
    }

    /// Every endpoint of a service (ready or not), across its ports.
    pub fn endpoints(&self, hostname: &str) -> &[Endpoint] {
        self.endpoints
            .get(hostname)
            .map(|e| e.as_slice())
            .unwrap_or_default()
    }

    /// The shared endpoint list itself, for callers that cache by identity.
    pub fn endpoints_arc(&self, hostname: &str) -> Option<&Arc<Vec<Endpoint>>> {
        self.endpoints.get(hostname)
    }

    pub fn pods(&self) -> impl Iterator<Item = &Arc<Pod>> {
        self.pods.values()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Arc<Pod>> {
        self.pods.get(&ObjectKey::new(namespace, name))
    }

    /// [`Snapshot::pod`] for callers that hold the key (no allocation per lookup).
    pub fn pod_by_key(&self, key: &ObjectKey) -> Option<&Arc<Pod>> {
        self.pods.get(key)
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Arc<Pod>> {
        self.pods_by_ip.get(&ip).and_then(|k| self.pods.get(k))
    }

    pub fn namespace(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.get(name)
    }

    /// Valid VirtualServices, oldest first.
    pub fn virtual_services(&self) -> &[Arc<VirtualServiceConfig>] {
        &self.virtual_services
    }

    /// Valid DestinationRules, oldest first.
    pub fn destination_rules(&self) -> &[Arc<DestinationRuleConfig>] {
        &self.destination_rules
    }

    /// Configs refused by validation, with reasons.
    pub fn rejected(&self) -> &[RejectedConfig] {
        &self.rejected
    }

    /// The DestinationRule in effect for `hostname` as seen from `proxy_namespace`.
    ///
    /// Lookup order is Istio's: the proxy's namespace, then the service's namespace, then the
    /// root namespace; an exact host beats a wildcard; older beats newer. Rules of the winning
    /// namespace for the same host merge their subsets by name (first definition wins), and the
    /// first rule's top-level traffic policy applies.
    pub fn destination_rule_for(
        &self,
        hostname: &str,
        proxy_namespace: &str,
    ) -> Option<Arc<DestinationRuleConfig>> {
        let service_namespace = self.services.get(hostname).map(|s| s.namespace.as_str());
        let rank = |dr: &DestinationRuleConfig| -> u8 {
            let ns = dr.meta.namespace.as_str();
            if ns == proxy_namespace {
                0
            } else if Some(ns) == service_namespace {
                1
            } else if ns == ROOT_NAMESPACE {
                2
            } else {
                3
            }
        };
        let exact = self.rules_by_host.get(hostname).map(Vec::as_slice);
        let mut positions: Vec<usize> = exact
            .unwrap_or_default()
            .iter()
            .chain(&self.wildcard_rules)
            .copied()
            .collect();
        // Oldest first, as the rules themselves are ordered.
        positions.sort_unstable();
        let mut candidates: Vec<(u8, bool, &Arc<DestinationRuleConfig>)> = positions
            .into_iter()
            .map(|i| &self.destination_rules[i])
            .filter(|dr| dr.matches_host(hostname) && dr.exported_to(proxy_namespace))
            .map(|dr| (rank(dr), dr.spec.host != hostname, dr))
            .collect();
        // Stable sort keeps oldest-first within equal keys.
        candidates.sort_by_key(|(rank, wildcard, _)| (*rank, *wildcard));
        let (best_rank, best_wildcard, first) = *candidates.first()?;
        let peers: Vec<&Arc<DestinationRuleConfig>> = candidates
            .iter()
            .skip(1)
            .filter(|(r, w, dr)| {
                *r == best_rank && *w == best_wildcard && dr.spec.host == first.spec.host
            })
            .map(|(_, _, dr)| *dr)
            .collect();
        if peers.is_empty() {
            return Some(first.clone());
        }
        let mut merged = (**first).clone();
        for peer in peers {
            for subset in &peer.spec.subsets {
                if !merged.spec.subsets.iter().any(|s| s.name == subset.name) {
                    merged.spec.subsets.push(subset.clone());
                }
            }
        }
        Some(Arc::new(merged))
    }
}
