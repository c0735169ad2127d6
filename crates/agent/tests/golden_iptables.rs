//! The nat table for istio-init's injected flags must equal the reference block byte for byte.

use meshpilot_agent::iptables::{self, IptablesConfig};

const GOLDEN: &str = include_str!("golden/iptables-default.txt");

#[test]
fn injected_flags_render_the_reference_nat_table() {
    // -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020
    let config = IptablesConfig {
        proxy_port: iptables::parse_port("15001").unwrap(),
        inbound_capture_port: iptables::parse_port("15006").unwrap(),
        proxy_uids: iptables::parse_proxy_uids("1337").unwrap(),
        proxy_gids: iptables::parse_proxy_uids("1337").unwrap(),
        inbound_mode: "REDIRECT".parse().unwrap(),
        outbound_ranges: "*".parse().unwrap(),
        outbound_exclude_ranges: iptables::parse_cidrs("").unwrap(),
        inbound_ports: "*".parse().unwrap(),
        inbound_exclude_ports: iptables::parse_ports("15090,15021,15020").unwrap(),
        ..Default::default()
    };
    let rendered = iptables::render_nat_rules(&config);
    assert_eq!(
        rendered, GOLDEN,
        "rendered rules (left) differ from tests/golden/iptables-default.txt (right)"
    );
}
