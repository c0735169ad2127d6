//! `meshpilot bootstrap`: write the Envoy bootstrap a sidecar starts from.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use meshpilot_agent::bootstrap::{self, BootstrapConfig, XdsApi};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BootstrapArgs {
    /// `node.id`, e.g. `sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local`.
    #[arg(long)]
    pub node_id: String,
    /// The control plane's ADS address, HOST:PORT.
    #[arg(long)]
    pub xds_address: String,
    /// PEM file of CA certificates that verify the control plane; without it xDS is plaintext.
    #[arg(long, value_name = "FILE")]
    pub tls_root_cert: Option<PathBuf>,
    /// ADS flavour: state of the world or incremental.
    #[arg(long, value_enum, default_value_t = XdsApiArg::Delta)]
    pub xds_api: XdsApiArg,
    /// `node.metadata` entry (repeatable); a JSON-object VALUE becomes a struct, e.g. LABELS={"app":"x"}.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = bootstrap::parse_metadata)]
    pub metadata: Vec<(String, String)>,
    /// `node.cluster`; by default `<app label or workload>.<namespace>` from the metadata or node id.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Write the bootstrap to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdsApiArg {
    Sotw,
    Delta,
}

pub fn run(args: BootstrapArgs) -> Result<()> {
    let config = BootstrapConfig {
        node_id: args.node_id,
        xds_address: args.xds_address,
        tls_root_cert: args.tls_root_cert,
        xds_api: match args.xds_api {
            XdsApiArg::Sotw => XdsApi::Sotw,
            XdsApiArg::Delta => XdsApi::Delta,
        },
        metadata: args.metadata,
        cluster: args.cluster,
    };
    let text = bootstrap::render_bootstrap(&config)?;
    match args.output {
        Some(path) => std::fs::write(&path, text)
            .with_context(|| format!("writing the bootstrap to {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
