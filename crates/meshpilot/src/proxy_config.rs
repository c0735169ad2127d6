//! `meshpilot proxy-config`: one proxy's listeners, routes, clusters or endpoints as istioctl
//! prints them, read from a running control plane's config dump or rendered offline from a
//! config directory.

use crate::config_dump::{load_snapshot, resolve_proxy};
use crate::config_tables::{
    ClusterFilter, EndpointFilter, HEALTH_STATUSES, ListenerFilter, RouteFilter, Section,
    cluster_rows, endpoint_rows, listener_rows, route_rows, select_clusters, select_endpoints,
    select_listeners, select_routes,
};
use crate::control_plane::{self, DEFAULT_URL, first_line, proxy_key, query_value};
use crate::tables::align;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use meshpilot_translate::build_proxy_config;
use meshpilot_translate::dump::{ResourceType, config_dump, to_json};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ProxyConfigArgs {
    #[command(subcommand)]
    pub kind: ProxyConfigKind,
}

#[derive(Subcommand, Debug)]
pub enum ProxyConfigKind {
    /// Listeners, one row per filter chain.
    #[command(visible_aliases = ["listeners", "l"])]
    Listener {
        #[command(flatten)]
        source: ConfigSource,
        /// Only listeners on this port.
        #[arg(long)]
        port: Option<String>,
        /// Only listeners bound to this address.
        #[arg(long)]
        address: Option<String>,
    },
    /// Routes, one row per route of every virtual host (passthrough routes left out).
    #[command(visible_aliases = ["routes", "r"])]
    Route {
        #[command(flatten)]
        source: ConfigSource,
        /// Only the route configuration of this name (e.g. `9080`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Clusters, with service, port, subset and direction parsed from the name.
    #[command(visible_aliases = ["clusters", "c"])]
    Cluster {
        #[command(flatten)]
        source: ConfigSource,
        /// Only clusters whose service FQDN contains this.
        #[arg(long)]
        fqdn: Option<String>,
        /// Only clusters of this service port.
        #[arg(long)]
        port: Option<String>,
        /// Only clusters of this subset.
        #[arg(long)]
        subset: Option<String>,
        /// Only `inbound` or `outbound` clusters.
        #[arg(long)]
        direction: Option<String>,
    },
    /// Endpoints of every EDS cluster.
    #[command(visible_aliases = ["endpoints", "ep"])]
    Endpoint {
        #[command(flatten)]
        source: ConfigSource,
        /// Only endpoints with this IP address.
        #[arg(long)]
        address: Option<String>,
        /// Only endpoints on this port.
        #[arg(long)]
        port: Option<String>,
        /// Only endpoints of this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only endpoints with this health: HEALTHY, UNHEALTHY or DEGRADED.
        #[arg(long)]
        status: Option<String>,
    },
}

/// Which proxy, where its config comes from, and how to print it.
#[derive(Args, Debug)]
pub struct ConfigSource {
    /// The proxy: `pod.namespace` (or its node id).
    pub proxy: String,
    /// Monitoring URL of a running control plane [default: http://127.0.0.1:15014].
    #[arg(long, value_name = "URL", conflicts_with = "config_dirs")]
    pub control_plane: Option<String>,
    /// Render offline from this directory of Kubernetes/Istio YAML instead (repeatable).
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dirs: Vec<PathBuf>,
    /// Cluster DNS domain, for offline rendering.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// A table, or the selected resources as JSON or YAML.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

pub fn run(args: ProxyConfigArgs) -> Result<()> {
    let text = match args.kind {
        ProxyConfigKind::Listener {
            source,
            port,
            address,
        } => {
            let filter = ListenerFilter {
                address,
                port: parse_port(port)?,
            };
            let dump = source.config_dump(Section::Listeners)?;
            let selected = select_listeners(&dump, &filter)?;
            render(
                source.output,
                || list(&selected),
                || listener_rows(&selected),
                1,
            )?
        }
        ProxyConfigKind::Route { source, name } => {
            let filter = RouteFilter { name };
            let dump = source.config_dump(Section::Routes)?;
            let selected = select_routes(&dump, &filter)?;
            render(
                source.output,
                || list(&selected),
                || route_rows(&selected),
                5,
            )?
        }
        ProxyConfigKind::Cluster {
            source,
            fqdn,
            port,
            subset,
            direction,
        } => {
            let filter = ClusterFilter {
                fqdn,
                port: parse_port(port)?,
                subset,
                direction: parse_direction(direction)?,
            };
            let dump = source.config_dump(Section::Clusters)?;
            let selected = select_clusters(&dump, &filter)?;
            render(
                source.output,
                || list(&selected),
                || cluster_rows(&selected),
                5,
            )?
        }
        ProxyConfigKind::Endpoint {
            source,
            address,
            port,
            cluster,
            status,
        } => {
            let filter = EndpointFilter {
                address,
                port: parse_port(port)?,
                cluster,
                status: parse_status(status)?,
            };
            let dump = source.config_dump(Section::Endpoints)?;
            let selected = select_endpoints(&dump, &filter)?;
            render(
                source.output,
                || Value::from(selected.clone()),
                || endpoint_rows(&selected),
                5,
            )?
        }
    };
    print!("{text}");
    Ok(())
}

impl ConfigSource {
    /// The proxy's config dump: rendered from the config directories when given, else fetched
    /// from the control plane.
    fn config_dump(&self, section: Section) -> Result<Value> {
        if self.config_dirs.is_empty() {
            let url = self.control_plane.as_deref().unwrap_or(DEFAULT_URL);
            return fetch_config_dump(url, &self.proxy, section);
        }
        let snapshot = load_snapshot(&self.config_dirs, &self.domain)?;
        let proxy = resolve_proxy(&snapshot, &self.proxy)?;
        let config = build_proxy_config(&snapshot, &proxy);
        let resource_type = match section {
            Section::Listeners => ResourceType::Listeners,
            Section::Routes => ResourceType::Routes,
            Section::Clusters => ResourceType::Clusters,
            Section::Endpoints => ResourceType::Endpoints,
        };
        let dump = config_dump(&config, &snapshot.version.to_string(), &[resource_type]);
        Ok(to_json(&dump)?)
    }
}

/// The control plane's `/debug/config_dump` for one proxy, limited to one section.
pub fn fetch_config_dump(url: &str, proxy: &str, section: Section) -> Result<Value> {
    let types = match section {
        Section::Listeners => "lds",
        Section::Routes => "rds",
        Section::Clusters => "cds",
        // Endpoints are only dumped on request.
        Section::Endpoints => "eds&include_eds=true",
    };
    let path = format!(
        "/debug/config_dump?proxyID={}&types={types}",
        query_value(proxy_key(proxy))
    );
    let response = control_plane::get(url, &path)?;
    match response.status {
        200 => serde_json::from_str(&response.body).with_context(|| {
            format!("the control plane at {url} sent a config dump that is not JSON")
        }),
        404 => bail!("unknown proxy {proxy:?}: not connected to the control plane at {url}"),
        status => bail!(
            "the control plane at {url} answered {status} to {path}: {}",
            first_line(&response.body)
        ),
    }
}

/// The selected resources as one JSON list, for `-o json|yaml`.
fn list(resources: &[&Value]) -> Value {
    Value::Array(resources.iter().map(|r| (*r).clone()).collect())
}

fn render(
    output: Output,
    resources: impl FnOnce() -> Value,
    rows: impl FnOnce() -> Vec<Vec<String>>,
    padding: usize,
) -> Result<String> {
    Ok(match output {
        Output::Table => align(&rows(), padding),
        Output::Json => serde_json::to_string_pretty(&resources())? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(&resources())?,
    })
}

fn parse_port(value: Option<String>) -> Result<Option<u32>> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.parse::<u32>() {
        Ok(port) if (1..=65535).contains(&port) => Ok(Some(port)),
        _ => bail!("--port {value:?}: expected a port number (1-65535)"),
    }
}

fn parse_direction(value: Option<String>) -> Result<Option<String>> {
    match value.as_deref() {
        None => Ok(None),
        Some("inbound" | "outbound") => Ok(value),
        Some(other) => bail!("--direction {other:?}: expected inbound or outbound"),
    }
}

fn parse_status(value: Option<String>) -> Result<Option<String>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let upper = value.to_ascii_uppercase();
    if HEALTH_STATUSES.contains(&upper.as_str()) {
        Ok(Some(upper))
    } else {
        bail!(
            "--status {value:?}: expected one of {}",
            HEALTH_STATUSES.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_with_one_line_errors() {
        assert_eq!(parse_port(Some("9080".into())).unwrap(), Some(9080));
        assert_eq!(parse_port(None).unwrap(), None);
        for bad in ["abc", "0", "70000", "-1"] {
            let err = parse_port(Some(bad.into())).unwrap_err().to_string();
            assert!(err.starts_with("--port "), "{err}");
        }
        assert!(parse_direction(Some("inbound".into())).is_ok());
        assert_eq!(
            parse_direction(Some("sideways".into()))
                .unwrap_err()
                .to_string(),
            "--direction \"sideways\": expected inbound or outbound"
        );
        assert_eq!(
            parse_status(Some("healthy".into())).unwrap().as_deref(),
            Some("HEALTHY")
        );
        assert!(parse_status(Some("fine".into())).is_err());
    }
}
