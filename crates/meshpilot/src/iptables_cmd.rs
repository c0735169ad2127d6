//! `meshpilot iptables`: istio-init's traffic interception, with istio-iptables' flags.

use anyhow::{Context, Result};
use clap::Args;
use meshpilot_agent::iptables::{
    self, InterceptionMode, IptablesConfig, PortSelection, RangeSelection,
};
use std::str::FromStr;

/// Flag letters and long names are istio-iptables' own, so injected pod specs work unchanged.
#[derive(Args, Debug)]
pub struct IptablesArgs {
    /// Port outbound TCP is redirected to (Envoy's virtualOutbound).
    #[arg(short = 'p', long = "envoy-port", value_name = "PORT", default_value = "15001", value_parser = iptables::parse_port)]
    pub proxy_port: u16,
    /// Port inbound TCP is redirected to (Envoy's virtualInbound).
    #[arg(short = 'z', long = "inbound-capture-port", value_name = "PORT", default_value = "15006", value_parser = iptables::parse_port)]
    pub inbound_capture_port: u16,
    /// HBONE tunnel port, never captured.
    #[arg(short = 'e', long = "inbound-tunnel-port", value_name = "PORT", default_value = "15008", value_parser = iptables::parse_port)]
    pub inbound_tunnel_port: u16,
    /// Comma-separated uids whose traffic is not captured (the proxy's).
    #[arg(short = 'u', long = "proxy-uid", value_name = "UIDS", default_value = "1337", value_parser = iptables::parse_proxy_uids)]
    pub proxy_uids: std::vec::Vec<u32>,
    /// Comma-separated gids whose traffic is not captured [default: the uids].
    #[arg(short = 'g', long = "proxy-gid", value_name = "GIDS", value_parser = iptables::parse_ids)]
    pub proxy_gids: Option<std::vec::Vec<u32>>,
    /// Inbound interception mode; only REDIRECT is supported.
    #[arg(short = 'm', long = "inbound-interception-mode", value_name = "MODE", default_value = "REDIRECT", value_parser = InterceptionMode::from_str)]
    pub inbound_mode: InterceptionMode,
    /// Inbound ports to capture: `*` for all, empty for none, or a comma-separated list.
    #[arg(short = 'b', long = "istio-inbound-ports", value_name = "PORTS", default_value = "", value_parser = PortSelection::from_str)]
    pub inbound_ports: PortSelection,
    /// Inbound ports not captured when `-b` is `*`.
    #[arg(short = 'd', long = "istio-local-exclude-ports", value_name = "PORTS", default_value = "", value_parser = iptables::parse_ports)]
    pub inbound_exclude_ports: std::vec::Vec<u16>,
    /// Outbound destinations to capture: `*` for all, empty for none, or comma-separated CIDRs.
    #[arg(short = 'i', long = "istio-service-cidr", value_name = "CIDRS", default_value = "", value_parser = RangeSelection::from_str)]
    pub outbound_ranges: RangeSelection,
    /// Outbound destinations (comma-separated CIDRs) never captured.
    #[arg(short = 'x', long = "istio-service-exclude-cidr", value_name = "CIDRS", default_value = "", value_parser = iptables::parse_cidrs)]
    pub outbound_exclude_ranges: std::vec::Vec<iptables::Cidr>,
    /// Outbound destination ports never captured.
    #[arg(short = 'o', long = "istio-local-outbound-ports-exclude", value_name = "PORTS", default_value = "", value_parser = iptables::parse_ports)]
    pub outbound_exclude_ports: std::vec::Vec<u16>,
    /// Print the `iptables-restore` input instead of applying it.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
}

pub fn run(args: IptablesArgs) -> Result<()> {
    let proxy_gids = args
        .proxy_gids
        .filter(|gids| !gids.is_empty())
        .unwrap_or_else(|| args.proxy_uids.clone());
    let config = IptablesConfig {
        proxy_port: args.proxy_port,
        inbound_capture_port: args.inbound_capture_port,
        inbound_tunnel_port: args.inbound_tunnel_port,
        proxy_uids: args.proxy_uids,
        proxy_gids,
        inbound_mode: args.inbound_mode,
        inbound_ports: args.inbound_ports,
        inbound_exclude_ports: args.inbound_exclude_ports,
        outbound_ranges: args.outbound_ranges,
        outbound_exclude_ranges: args.outbound_exclude_ranges,
        outbound_exclude_ports: args.outbound_exclude_ports,
    };
    let rules = iptables::render_nat_rules(&config);
    if args.dry_run {
        print!("{rules}");
        return Ok(());
    }
    iptables::apply_rules(&rules).context("installing the nat rules")?;
    tracing::info!(
        rules = rules.lines().filter(|l| l.starts_with("-A ")).count(),
        "nat table installed"
    );
    Ok(())
}
