//! Command-line surface.

use crate::bootstrap_cmd::BootstrapArgs;
use crate::iptables_cmd::IptablesArgs;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "meshpilot",
    version,
    about = "An istiod-compatible service-mesh control plane"
)]
pub struct Cli {
    /// Log filter, e.g. `info` or `xds=debug,info`.
    #[arg(long, global = true, default_value = "info", env = "MESHPILOT_LOG")]
    pub log_level: String,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print exactly what one proxy would be sent, in Envoy's admin config_dump shape.
    ConfigDump(ConfigDumpArgs),
    /// Write the Envoy bootstrap a sidecar starts from (JSON).
    Bootstrap(BootstrapArgs),
    /// Run the control plane: serve ADS to sidecars on 15010 (plaintext) and 15012 (TLS).
    Discovery(crate::discovery::DiscoveryArgs),
    /// Install istio-init's nat rules that steer the pod's traffic through the sidecar.
    Iptables(IptablesArgs),
    /// Sync state (CDS/LDS/EDS/RDS) of every proxy connected to a running control plane.
    ProxyStatus(crate::proxy_status::ProxyStatusArgs),
    /// One proxy's listeners, routes, clusters or endpoints as tables, from a running control
    /// plane or offline from a config directory.
    #[command(subcommand_value_name = "TYPE")]
    ProxyConfig(crate::proxy_config::ProxyConfigArgs),
    /// pilot-agent's role in the sidecar: write the bootstrap from the pod's environment, run
    /// Envoy, forward signals to it and drain it on SIGTERM.
    Agent(crate::agent_cmd::AgentArgs),
    /// Add the sidecar (istio-init and istio-proxy) to the workloads in a YAML file, like
    /// `istioctl kube-inject`.
    Inject(crate::inject_cmd::InjectArgs),
    /// Serve the sidecar injector as a mutating admission webhook (HTTPS, `/inject`).
    Webhook(crate::webhook::WebhookArgs),
}

#[derive(Args, Debug)]
pub struct ConfigDumpArgs {
    /// Directory of Kubernetes/Istio YAML, read recursively (repeatable).
    #[arg(long = "config-dir", required = true)]
    pub config_dirs: Vec<PathBuf>,
    /// The proxy: a node id (`sidecar~IP~pod.ns~ns.svc.cluster.local`) or `pod.namespace`.
    #[arg(long)]
    pub proxy: String,
    /// Only this resource type.
    #[arg(long = "type", value_enum)]
    pub resource_type: Option<DumpType>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Json)]
    pub output: OutputFormat,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DumpType {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Json,
    Yaml,
}
