//! The nat-table rules Istio's `istio-init` container installs to send a pod's traffic
//! through its sidecar, in REDIRECT mode.
//!
//! [`render_nat_rules`] turns istio-iptables' flags into `iptables-restore` input, printed the
//! way `iptables-save` prints the resulting table, so that saving the applied table gives the
//! same text back. [`apply_rules`] is the only part that touches the system.
//!
//! Chains: inbound TCP goes PREROUTING -> ISTIO_INBOUND -> ISTIO_IN_REDIRECT (to the inbound
//! capture port); locally generated traffic goes OUTPUT -> ISTIO_OUTPUT -> ISTIO_REDIRECT (to
//! the outbound capture port). Traffic from the proxy's uid/gid and from 127.0.0.6 (Envoy's
//! inbound passthrough source) is exempt so the proxy does not capture itself.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;

pub const DEFAULT_PROXY_PORT: u16 = 15001;
pub const DEFAULT_INBOUND_CAPTURE_PORT: u16 = 15006;
/// The HBONE tunnel port, never captured.
pub const DEFAULT_INBOUND_TUNNEL_PORT: u16 = 15008;
pub const DEFAULT_PROXY_UID: u32 = 1337;

/// The program that installs the rules.
pub const RESTORE_PROGRAM: &str = "iptables-restore";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IptablesError {
    #[error("invalid port {0:?}: expected a number from 1 to 65535")]
    InvalidPort(String),
    #[error("invalid user or group id {0:?}: expected a number")]
    InvalidId(String),
    #[error("at least one proxy user id is required, or the proxy would capture its own traffic")]
    NoProxyUid,
    #[error("invalid IP range {0:?}: expected CIDR notation such as 10.96.0.0/12")]
    InvalidCidr(String),
    #[error("\"*\" cannot exclude outbound ranges: list the CIDRs to exclude")]
    WildcardExclude,
    #[error(
        "inbound interception mode TPROXY is not supported: meshpilot only installs REDIRECT rules"
    )]
    TproxyUnsupported,
    #[error("invalid inbound interception mode {0:?}: expected REDIRECT")]
    InvalidMode(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "`{RESTORE_PROGRAM}` was not found on PATH or in /usr/sbin, /sbin: install the iptables \
         package (Debian/Ubuntu: `apt-get install -y iptables`)"
    )]
    MissingProgram,
    #[error(
        "installing iptables rules needs root (CAP_NET_ADMIN); this process runs as uid {uid} \
         without it: run as root, e.g. as an init container with NET_ADMIN and NET_RAW"
    )]
    NotPermitted { uid: u32 },
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{} rejected the rules ({status}): {stderr}", program.display())]
    Rejected {
        program: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
}

/// How inbound connections reach Envoy. Only REDIRECT (nat) is implemented.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InterceptionMode {
    #[default]
    Redirect,
}

impl FromStr for InterceptionMode {
    type Err = IptablesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "REDIRECT" => Ok(InterceptionMode::Redirect),
            "TPROXY" => Err(IptablesError::TproxyUnsupported),
            _ => Err(IptablesError::InvalidMode(s.to_string())),
        }
    }
}

/// Inbound ports to capture (`-b`): `*`, nothing (empty), or a list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PortSelection {
    All,
    #[default]
    None,
    Only(Vec<u16>),
}

impl FromStr for PortSelection {
    type Err = IptablesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "*" => Ok(PortSelection::All),
            "" => Ok(PortSelection::None),
            list => parse_ports(list).map(PortSelection::Only),
        }
    }
}

/// Outbound destinations to capture (`-i`): `*`, nothing (empty), or a list of ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RangeSelection {
    All,
    #[default]
    None,
    Only(Vec<Cidr>),
}

impl FromStr for RangeSelection {
    type Err = IptablesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "*" => Ok(RangeSelection::All),
            "" => Ok(RangeSelection::None),
            list => parse_cidrs(list).map(RangeSelection::Only),
        }
    }
}

/// An IP range with its host bits cleared, printed as `iptables-save` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = IptablesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || IptablesError::InvalidCidr(s.to_string());
        let (addr, len) = s.trim().split_once('/').ok_or_else(invalid)?;
        let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = len.parse().map_err(|_| invalid())?;
        let network = match addr {
            IpAddr::V4(v4) if prefix_len <= 32 => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) if prefix_len <= 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            _ => return Err(invalid()),
        };
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// A port from 1 to 65535.
pub fn parse_port(s: &str) -> Result<u16, IptablesError> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| IptablesError::InvalidPort(s.to_string()))
}

/// A comma-separated port list; empty means none.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, IptablesError> {
    split_list(s).map(parse_port).collect()
}

/// A comma-separated list of uids or gids; empty means none.
pub fn parse_ids(s: &str) -> Result<Vec<u32>, IptablesError> {
    split_list(s)
        .map(|id| {
            id.trim()
                .parse::<u32>()
                .map_err(|_| IptablesError::InvalidId(id.to_string()))
        })
        .collect()
}

/// The `-u` list: at least one uid.
pub fn parse_proxy_uids(s: &str) -> Result<Vec<u32>, IptablesError> {
    let uids = parse_ids(s)?;
    if uids.is_empty() {
        return Err(IptablesError::NoProxyUid);
    }
    Ok(uids)
}

/// A comma-separated list of CIDRs to exclude (`-x`); empty means none, `*` is refused.
pub fn parse_cidrs(s: &str) -> Result<Vec<Cidr>, IptablesError> {
    if s.trim() == "*" {
        return Err(IptablesError::WildcardExclude);
    }
    split_list(s).map(str::parse).collect()
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    // An empty flag is the empty list, not a list of one empty item.
    let s = s.trim();
    (!s.is_empty()).then(|| s.split(',')).into_iter().flatten()
}

/// istio-iptables' flags, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptablesConfig {
    /// `-p`: where outbound traffic is redirected (Envoy's `virtualOutbound`).
    pub proxy_port: u16,
    /// `-z`: where inbound traffic is redirected (Envoy's `virtualInbound`).
    pub inbound_capture_port: u16,
    /// `-e`: the HBONE tunnel port, left alone in both directions.
    pub inbound_tunnel_port: u16,
    /// `-u`: uids whose traffic is not captured (Envoy runs as 1337).
    pub proxy_uids: Vec<u32>,
    /// `-g`: gids whose traffic is not captured; istio-iptables defaults them to the uids.
    pub proxy_gids: Vec<u32>,
    /// `-m`.
    pub inbound_mode: InterceptionMode,
    /// `-b`.
    pub inbound_ports: PortSelection,
    /// `-d`: inbound ports left alone; only meaningful when `-b` is `*`.
    pub inbound_exclude_ports: Vec<u16>,
    /// `-i`.
    pub outbound_ranges: RangeSelection,
    /// `-x`: destinations never captured.
    pub outbound_exclude_ranges: Vec<Cidr>,
    /// `-o`: destination ports never captured.
    pub outbound_exclude_ports: Vec<u16>,
}

impl Default for IptablesConfig {
    /// istio-iptables' own defaults: proxy ports and uid set, nothing captured.
    fn default() -> Self {
        IptablesConfig {
            proxy_port: DEFAULT_PROXY_PORT,
            inbound_capture_port: DEFAULT_INBOUND_CAPTURE_PORT,
            inbound_tunnel_port: DEFAULT_INBOUND_TUNNEL_PORT,
            proxy_uids: vec![DEFAULT_PROXY_UID],
            proxy_gids: vec![DEFAULT_PROXY_UID],
            inbound_mode: InterceptionMode::Redirect,
            inbound_ports: PortSelection::None,
            inbound_exclude_ports: Vec::new(),
            outbound_ranges: RangeSelection::None,
            outbound_exclude_ranges: Vec::new(),
            outbound_exclude_ports: Vec::new(),
        }
    }
}

const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";

/// Built-in chains first, then Istio's in name order: the order `iptables-save` uses.
const CHAINS: [(&str, Option<&str>); 8] = [
    ("PREROUTING", Some("ACCEPT")),
    ("INPUT", Some("ACCEPT")),
    ("OUTPUT", Some("ACCEPT")),
    ("POSTROUTING", Some("ACCEPT")),
    (ISTIO_INBOUND, None),
    (ISTIO_IN_REDIRECT, None),
    (ISTIO_OUTPUT, None),
    (ISTIO_REDIRECT, None),
];

/// Rules per chain, in [`CHAINS`] order; within a chain, in evaluation order.
struct NatTable {
    rules: [Vec<String>; CHAINS.len()],
}

impl NatTable {
    fn new() -> Self {
        NatTable {
            rules: Default::default(),
        }
    }

    fn append(&mut self, chain: &str, rule: String) {
        let index = CHAINS
            .iter()
            .position(|(name, _)| *name == chain)
            .expect("rules only target the nat chains declared in CHAINS");
        self.rules[index].push(rule);
    }

    fn to_restore_text(&self) -> String {
        let mut text = String::from("*nat\n");
        for (name, policy) in CHAINS {
            text.push_str(&format!(":{name} {} [0:0]\n", policy.unwrap_or("-")));
        }
        for ((name, _), rules) in CHAINS.iter().zip(&self.rules) {
            for rule in rules {
                text.push_str(&format!("-A {name} {rule}\n"));
            }
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// The nat table for `config` as `iptables-restore` input, from `*nat` to `COMMIT`. Only IPv4
/// ranges appear: IPv6 ones belong to an ip6tables twin, which is not written.
pub fn render_nat_rules(config: &IptablesConfig) -> String {
    let mut nat = NatTable::new();
    add_inbound_rules(&mut nat, config);
    add_outbound_rules(&mut nat, config);
    nat.to_restore_text()
}

fn add_inbound_rules(nat: &mut NatTable, config: &IptablesConfig) {
    nat.append(
        ISTIO_INBOUND,
        format!(
            "-p tcp -m tcp --dport {} -j RETURN",
            config.inbound_tunnel_port
        ),
    );
    nat.append(
        ISTIO_IN_REDIRECT,
        format!(
            "-p tcp -j REDIRECT --to-ports {}",
            config.inbound_capture_port
        ),
    );
    match &config.inbound_ports {
        PortSelection::None => {}
        PortSelection::All => {
            nat.append("PREROUTING", format!("-p tcp -j {ISTIO_INBOUND}"));
            for port in &config.inbound_exclude_ports {
                nat.append(
                    ISTIO_INBOUND,
                    format!("-p tcp -m tcp --dport {port} -j RETURN"),
                );
            }
            nat.append(ISTIO_INBOUND, format!("-p tcp -j {ISTIO_IN_REDIRECT}"));
        }
        PortSelection::Only(ports) => {
            nat.append("PREROUTING", format!("-p tcp -j {ISTIO_INBOUND}"));
            for port in ports {
                nat.append(
                    ISTIO_INBOUND,
                    format!("-p tcp -m tcp --dport {port} -j {ISTIO_IN_REDIRECT}"),
                );
            }
        }
    }
}

fn add_outbound_rules(nat: &mut NatTable, config: &IptablesConfig) {
    nat.append(
        ISTIO_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", config.proxy_port),
    );
    nat.append("OUTPUT", format!("-j {ISTIO_OUTPUT}"));
    // Port exclusions come first, before anything could send the connection back to Envoy.
    // (Istio 1.25 adds a udp twin of each; it only matters with DNS capture, not done here.)
    for port in &config.outbound_exclude_ports {
        nat.append(
            ISTIO_OUTPUT,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        );
    }
    // Envoy's inbound passthrough connects to the app from 127.0.0.6.
    nat.append(ISTIO_OUTPUT, "-s 127.0.0.6/32 -o lo -j RETURN".to_string());
    // With loopback explicitly captured, the app's own lo traffic must not be let through.
    let captures_loopback = matches!(&config.outbound_ranges,
        RangeSelection::Only(ranges) if ranges.iter().any(|r| r.network().is_loopback()));
    let owners = config
        .proxy_uids
        .iter()
        .map(|uid| ("--uid-owner", uid))
        .chain(config.proxy_gids.iter().map(|gid| ("--gid-owner", gid)));
    for (owner, id) in owners {
        // Envoy calling a non-loopback address over lo (the pod calling its own service)
        // goes back to inbound capture.
        nat.append(
            ISTIO_OUTPUT,
            format!(
                "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport {} -m owner {owner} {id} -j {ISTIO_IN_REDIRECT}",
                config.inbound_tunnel_port
            ),
        );
        if !captures_loopback {
            nat.append(
                ISTIO_OUTPUT,
                format!("-o lo -m owner ! {owner} {id} -j RETURN"),
            );
        }
        nat.append(ISTIO_OUTPUT, format!("-m owner {owner} {id} -j RETURN"));
    }
    nat.append(ISTIO_OUTPUT, "-d 127.0.0.1/32 -j RETURN".to_string());
    for range in config
        .outbound_exclude_ranges
        .iter()
        .filter(|r| r.is_ipv4())
    {
        nat.append(ISTIO_OUTPUT, format!("-d {range} -j RETURN"));
    }
    match &config.outbound_ranges {
        RangeSelection::None => {}
        RangeSelection::All => nat.append(ISTIO_OUTPUT, format!("-j {ISTIO_REDIRECT}")),
        RangeSelection::Only(ranges) => {
            for range in ranges.iter().filter(|r| r.is_ipv4()) {
                nat.append(ISTIO_OUTPUT, format!("-d {range} -j {ISTIO_REDIRECT}"));
            }
        }
    }
}

/// Replaces the nat table with `rules` through `iptables-restore` (a full restore, as
/// istio-init does: the table is flushed first).
pub fn apply_rules(rules: &str) -> Result<(), ApplyError> {
    let program = find_program(RESTORE_PROGRAM, std::env::var_os("PATH").as_deref())
        .ok_or(ApplyError::MissingProgram)?;
    // Checked up front for a clear message; iptables-restore's own is cryptic.
    if let Some(privileges) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_privileges(&status))
        && !privileges.net_admin
    {
        return Err(ApplyError::NotPermitted {
            uid: privileges.euid,
        });
    }
    let mut child = Command::new(&program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ApplyError::Spawn {
            program: program.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means iptables-restore exited early; its status and stderr say why.
        let _ = stdin.write_all(rules.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            program: program.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(ApplyError::Rejected {
            program,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// `name` in the PATH directories, then the sbin directories a non-root PATH often lacks.
fn find_program(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let sbin = ["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from);
    path.into_iter()
        .flat_map(std::env::split_paths)
        .chain(sbin)
        .map(|dir| dir.join(name))
        .find(|candidate| Path::is_file(candidate))
}

#[derive(Debug, PartialEq, Eq)]
struct Privileges {
    euid: u32,
    net_admin: bool,
}

const CAP_NET_ADMIN: u32 = 12;

/// The effective uid and CAP_NET_ADMIN from `/proc/self/status` text.
fn parse_privileges(status: &str) -> Option<Privileges> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let euid = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
    let caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some(Privileges {
        euid,
        net_admin: caps & (1 << CAP_NET_ADMIN) != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// istio-init's injected flags: `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*'
    /// -d 15090,15021,15020`.
    fn mk_injected_config() -> IptablesConfig {
        IptablesConfig {
            inbound_ports: PortSelection::All,
            inbound_exclude_ports: vec![15090, 15021, 15020],
            outbound_ranges: RangeSelection::All,
            ..Default::default()
        }
    }

    fn chain_rules(text: &str, chain: &str) -> Vec<String> {
        let prefix = format!("-A {chain} ");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn injected_flags_give_the_documented_table() {
        let text = render_nat_rules(&mk_injected_config());
        assert!(text.starts_with("*nat\n:PREROUTING ACCEPT [0:0]\n"));
        assert!(text.ends_with("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n"));
        assert_eq!(
            chain_rules(&text, "ISTIO_INBOUND"),
            [
                "-p tcp -m tcp --dport 15008 -j RETURN",
                "-p tcp -m tcp --dport 15090 -j RETURN",
                "-p tcp -m tcp --dport 15021 -j RETURN",
                "-p tcp -m tcp --dport 15020 -j RETURN",
                "-p tcp -j ISTIO_IN_REDIRECT",
            ]
        );
        assert_eq!(
            chain_rules(&text, "ISTIO_OUTPUT").last().unwrap(),
            "-j ISTIO_REDIRECT"
        );
    }

    #[test]
    fn specific_inbound_ports_replace_the_catch_all_and_ignore_exclusions() {
        let config = IptablesConfig {
            inbound_ports: "9080,8080".parse().unwrap(),
            ..mk_injected_config()
        };
        let text = render_nat_rules(&config);
        assert_eq!(
            chain_rules(&text, "PREROUTING"),
            ["-p tcp -j ISTIO_INBOUND"]
        );
        assert_eq!(
            chain_rules(&text, "ISTIO_INBOUND"),
            [
                "-p tcp -m tcp --dport 15008 -j RETURN",
                "-p tcp -m tcp --dport 9080 -j ISTIO_IN_REDIRECT",
                "-p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
            ]
        );
    }

    #[test]
    fn empty_inbound_ports_capture_nothing_inbound() {
        let config = IptablesConfig {
            inbound_ports: "".parse().unwrap(),
            ..mk_injected_config()
        };
        let text = render_nat_rules(&config);
        assert!(chain_rules(&text, "PREROUTING").is_empty());
        assert_eq!(
            chain_rules(&text, "ISTIO_INBOUND"),
            ["-p tcp -m tcp --dport 15008 -j RETURN"]
        );
        // The chains still exist, as istio-init creates them regardless.
        assert!(text.contains(":ISTIO_INBOUND - [0:0]\n"));
    }

    #[test]
    fn excluded_ranges_return_before_the_final_redirect() {
        let config = IptablesConfig {
            outbound_exclude_ranges: parse_cidrs("10.96.0.0/12,169.254.169.254/32,fd00::/8")
                .unwrap(),
            ..mk_injected_config()
        };
        let rules = chain_rules(&render_nat_rules(&config), "ISTIO_OUTPUT");
        assert_eq!(
            rules[rules.len() - 4..],
            [
                "-d 127.0.0.1/32 -j RETURN",
                "-d 10.96.0.0/12 -j RETURN",
                "-d 169.254.169.254/32 -j RETURN",
                "-j ISTIO_REDIRECT",
            ]
        );
    }

    #[test]
    fn specific_ranges_replace_the_catch_all_redirect() {
        let config = IptablesConfig {
            outbound_ranges: "10.96.0.0/12,10.244.0.0/16".parse().unwrap(),
            outbound_exclude_ranges: parse_cidrs("10.96.0.1/32").unwrap(),
            ..mk_injected_config()
        };
        let rules = chain_rules(&render_nat_rules(&config), "ISTIO_OUTPUT");
        assert_eq!(
            rules[rules.len() - 3..],
            [
                "-d 10.96.0.1/32 -j RETURN",
                "-d 10.96.0.0/12 -j ISTIO_REDIRECT",
                "-d 10.244.0.0/16 -j ISTIO_REDIRECT",
            ]
        );
        assert!(!rules.contains(&"-j ISTIO_REDIRECT".to_string()));
    }

    #[test]
    fn empty_ranges_redirect_nothing_outbound() {
        let config = IptablesConfig {
            outbound_ranges: RangeSelection::None,
            ..mk_injected_config()
        };
        let text = render_nat_rules(&config);
        let rules = chain_rules(&text, "ISTIO_OUTPUT");
        assert_eq!(rules.last().unwrap(), "-d 127.0.0.1/32 -j RETURN");
        assert!(!rules.iter().any(|r| r.ends_with("-j ISTIO_REDIRECT")));
        // The redirect chain itself is still defined.
        assert_eq!(
            chain_rules(&text, "ISTIO_REDIRECT"),
            ["-p tcp -j REDIRECT --to-ports 15001"]
        );
    }

    #[test]
    fn excluded_outbound_ports_come_first_in_istio_output() {
        let config = IptablesConfig {
            outbound_exclude_ports: parse_ports("3306,5432").unwrap(),
            ..mk_injected_config()
        };
        let rules = chain_rules(&render_nat_rules(&config), "ISTIO_OUTPUT");
        assert_eq!(
            rules[..3],
            [
                "-p tcp -m tcp --dport 3306 -j RETURN",
                "-p tcp -m tcp --dport 5432 -j RETURN",
                "-s 127.0.0.6/32 -o lo -j RETURN",
            ]
        );
    }

    #[test]
    fn ports_uids_and_gids_are_configurable() {
        let config = IptablesConfig {
            proxy_port: 16001,
            inbound_capture_port: 16006,
            inbound_tunnel_port: 16008,
            proxy_uids: vec![1000, 1001],
            proxy_gids: vec![2000],
            ..mk_injected_config()
        };
        let text = render_nat_rules(&config);
        assert_eq!(
            chain_rules(&text, "ISTIO_IN_REDIRECT"),
            ["-p tcp -j REDIRECT --to-ports 16006"]
        );
        assert_eq!(
            chain_rules(&text, "ISTIO_REDIRECT"),
            ["-p tcp -j REDIRECT --to-ports 16001"]
        );
        let owners: Vec<String> = chain_rules(&text, "ISTIO_OUTPUT")
            .into_iter()
            .filter(|r| r.starts_with("-m owner"))
            .collect();
        assert_eq!(
            owners,
            [
                "-m owner --uid-owner 1000 -j RETURN",
                "-m owner --uid-owner 1001 -j RETURN",
                "-m owner --gid-owner 2000 -j RETURN",
            ]
        );
        assert!(text.contains("! --dport 16008 -m owner --uid-owner 1001 -j ISTIO_IN_REDIRECT"));
    }

    #[test]
    fn capturing_loopback_drops_the_app_loopback_returns() {
        let config = IptablesConfig {
            outbound_ranges: "127.0.0.1/32,10.0.0.0/8".parse().unwrap(),
            ..mk_injected_config()
        };
        let rules = chain_rules(&render_nat_rules(&config), "ISTIO_OUTPUT");
        assert!(!rules.iter().any(|r| r.starts_with("-o lo -m owner !")));
        assert!(rules.contains(&"-d 127.0.0.1/32 -j ISTIO_REDIRECT".to_string()));
    }

    #[test]
    fn parsing_flags() {
        assert_eq!("*".parse::<PortSelection>(), Ok(PortSelection::All));
        assert_eq!("".parse::<PortSelection>(), Ok(PortSelection::None));
        assert_eq!(
            " 80, 443".parse::<PortSelection>(),
            Ok(PortSelection::Only(vec![80, 443]))
        );
        assert_eq!(parse_ports(""), Ok(vec![]));
        for bad in ["0", "65536", "http", "80,,81", "-1", "80-90"] {
            assert!(
                matches!(parse_ports(bad), Err(IptablesError::InvalidPort(_))),
                "{bad}"
            );
        }
        assert_eq!(parse_ids("1337,0"), Ok(vec![1337, 0]));
        assert!(matches!(
            parse_ids("istio"),
            Err(IptablesError::InvalidId(_))
        ));
        assert_eq!(parse_proxy_uids(""), Err(IptablesError::NoProxyUid));
        assert_eq!("redirect".parse(), Ok(InterceptionMode::Redirect));
        assert_eq!(
            "TPROXY".parse::<InterceptionMode>(),
            Err(IptablesError::TproxyUnsupported)
        );
        assert!(matches!(
            "NONE".parse::<InterceptionMode>(),
            Err(IptablesError::InvalidMode(_))
        ));
        assert_eq!(parse_cidrs("*"), Err(IptablesError::WildcardExclude));
        assert_eq!("*".parse::<RangeSelection>(), Ok(RangeSelection::All));
    }

    #[test]
    fn cidrs_are_validated_and_normalised() {
        let show = |s: &str| s.parse::<Cidr>().map(|c| c.to_string());
        assert_eq!(show("10.1.2.3/8"), Ok("10.0.0.0/8".to_string()));
        assert_eq!(show("0.0.0.0/0"), Ok("0.0.0.0/0".to_string()));
        assert_eq!(show("192.168.1.7/32"), Ok("192.168.1.7/32".to_string()));
        assert_eq!(show("fd00::1:2/64"), Ok("fd00::/64".to_string()));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/129",
            "x/8",
            "10.0.0.0/",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(IptablesError::InvalidCidr(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn privileges_from_proc_status() {
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n\
                      CapInh:\t0000000000000000\nCapEff:\t0000000000000000\n";
        assert_eq!(
            parse_privileges(status),
            Some(Privileges {
                euid: 1000,
                net_admin: false
            })
        );
        let root = "Uid:\t0\t0\t0\t0\nCapEff:\t000001fffeffffff\n";
        assert_eq!(
            parse_privileges(root),
            Some(Privileges {
                euid: 0,
                net_admin: true
            })
        );
        // Root inside a container that dropped NET_ADMIN (bit 12).
        let capped = "Uid:\t0\t0\t0\t0\nCapEff:\t00000000a80425fb\n";
        assert!(!parse_privileges(capped).unwrap().net_admin);
        assert_eq!(parse_privileges("garbage"), None);
    }

    #[test]
    fn program_lookup_searches_path_then_sbin() {
        let dir = std::env::temp_dir().join(format!("meshpilot-agent-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fake-restore"), "").unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), &dir]).unwrap();
        assert_eq!(
            find_program("fake-restore", Some(&path)),
            Some(dir.join("fake-restore"))
        );
        assert_eq!(find_program("meshpilot-no-such-program", Some(&path)), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
