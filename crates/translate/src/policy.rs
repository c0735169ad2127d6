//! Which DestinationRule traffic policy applies to one (port, subset) of a service.
//!
//! Precedence, per Istio: top-level policy < matching `portLevelSettings` entry (replaces the
//! whole policy for that port) < the subset's policy (replaces each block it sets; a subset
//! port-level entry replaces everything).

use meshpilot_api::{
    ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, PortTrafficPolicy,
    TrafficPolicy,
};
use meshpilot_model::DestinationRuleConfig;

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EffectivePolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
}

impl EffectivePolicy {
    fn from_policy(policy: &TrafficPolicy, port: u16) -> Self {
        match port_settings(policy, port) {
            Some(pls) => EffectivePolicy::from_port(pls),
            None => EffectivePolicy {
                load_balancer: policy.load_balancer.clone(),
                connection_pool: policy.connection_pool.clone(),
                outlier_detection: policy.outlier_detection.clone(),
            },
        }
    }

    fn from_port(pls: &PortTrafficPolicy) -> Self {
        EffectivePolicy {
            load_balancer: pls.load_balancer.clone(),
            connection_pool: pls.connection_pool.clone(),
            outlier_detection: pls.outlier_detection.clone(),
        }
    }
}

fn port_settings(policy: &TrafficPolicy, port: u16) -> Option<&PortTrafficPolicy> {
    policy
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
}

/// The policy for `port` of the rule's host, and for `subset` when given.
pub(crate) fn effective_policy(
    rule: Option<&DestinationRuleConfig>,
    port: u16,
    subset: Option<&str>,
) -> EffectivePolicy {
    let Some(rule) = rule else {
        return EffectivePolicy::default();
    };
    let mut effective = rule
        .spec
        .traffic_policy
        .as_ref()
        .map(|p| EffectivePolicy::from_policy(p, port))
        .unwrap_or_default();
    let subset_policy = subset
        .and_then(|name| rule.spec.subsets.iter().find(|s| s.name == name))
        .and_then(|s| s.traffic_policy.as_ref());
    if let Some(sp) = subset_policy {
        if let Some(pls) = port_settings(sp, port) {
            return EffectivePolicy::from_port(pls);
        }
        if sp.load_balancer.is_some() {
            effective.load_balancer = sp.load_balancer.clone();
        }
        if sp.connection_pool.is_some() {
            effective.connection_pool = sp.connection_pool.clone();
        }
        if sp.outlier_detection.is_some() {
            effective.outlier_detection = sp.outlier_detection.clone();
        }
    }
    effective
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_api::{DestinationRuleSpec, SimpleLb};
    use meshpilot_model::fixtures::mk_meta;

    fn rule(json: &str) -> DestinationRuleConfig {
        let spec: DestinationRuleSpec = serde_json::from_str(json).unwrap();
        DestinationRuleConfig::new(mk_meta("default", "r"), spec, "cluster.local").unwrap()
    }

    #[test]
    fn port_level_replaces_top_level_and_subset_overrides_blocks() {
        let r = rule(
            r#"{"host":"r","trafficPolicy":{"loadBalancer":{"simple":"RANDOM"},
            "outlierDetection":{"consecutive5xxErrors":5},
            "portLevelSettings":[{"port":{"number":9080},"loadBalancer":{"simple":"ROUND_ROBIN"}}]},
            "subsets":[{"name":"v1","trafficPolicy":{"loadBalancer":{"simple":"LEAST_REQUEST"}}}]}"#,
        );
        let top = effective_policy(Some(&r), 8080, None);
        assert_eq!(top.load_balancer.unwrap().simple, Some(SimpleLb::Random));
        assert!(top.outlier_detection.is_some());
        let port = effective_policy(Some(&r), 9080, None);
        assert_eq!(
            port.load_balancer.unwrap().simple,
            Some(SimpleLb::RoundRobin)
        );
        assert!(
            port.outlier_detection.is_none(),
            "port-level replaces the whole policy"
        );
        let subset = effective_policy(Some(&r), 8080, Some("v1"));
        assert_eq!(
            subset.load_balancer.unwrap().simple,
            Some(SimpleLb::LeastRequest)
        );
        assert!(
            subset.outlier_detection.is_some(),
            "subset keeps blocks it does not set"
        );
    }
}
