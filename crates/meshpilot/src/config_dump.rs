//! `meshpilot config-dump`: translate a config directory for one proxy, offline.

use crate::cli::{ConfigDumpArgs, DumpType, OutputFormat};
use anyhow::{Context, Result, bail};
use meshpilot_model::{Index, Proxy, ProxyMetadata, Snapshot};
use meshpilot_sources::FileSource;
use meshpilot_translate::build_proxy_config;
use meshpilot_translate::dump::{ResourceType, config_dump, to_json};

pub fn run(args: ConfigDumpArgs) -> Result<()> {
    let snapshot = load_snapshot(&args.config_dirs, &args.domain)?;
    let proxy = resolve_proxy(&snapshot, &args.proxy)?;
    let config = build_proxy_config(&snapshot, &proxy);
    let types: Vec<ResourceType> = match args.resource_type {
        None => ResourceType::ALL.to_vec(),
        Some(DumpType::Listeners) => vec![ResourceType::Listeners],
        Some(DumpType::Routes) => vec![ResourceType::Routes],
        Some(DumpType::Clusters) => vec![ResourceType::Clusters],
        Some(DumpType::Endpoints) => vec![ResourceType::Endpoints],
    };
    let dump = config_dump(&config, &snapshot.version.to_string(), &types);
    let json = to_json(&dump)?;
    let text = match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&json)?,
        OutputFormat::Yaml => serde_yaml_ng::to_string(&json)?,
    };
    println!("{}", text.trim_end());
    Ok(())
}

/// Loads the directories into a fresh index; bad documents and rejected configs are logged
/// (they never stop the rest from loading).
pub fn load_snapshot(dirs: &[std::path::PathBuf], domain: &str) -> Result<Snapshot> {
    for dir in dirs {
        if !dir.is_dir() {
            bail!("--config-dir {}: not a directory", dir.display());
        }
    }
    let mut source = FileSource::new(dirs.to_vec());
    for error in source.load_all() {
        tracing::warn!("{error}");
    }
    let mut index = Index::new(domain);
    source.apply_to(&mut index);
    let snapshot = index.snapshot();
    for rejected in snapshot.rejected() {
        tracing::warn!("{rejected}");
    }
    Ok(snapshot)
}

/// A node id is parsed as a connecting sidecar's would be; `pod.namespace` names a pod from
/// the config.
pub fn resolve_proxy(snapshot: &Snapshot, spec: &str) -> Result<Proxy> {
    if spec.contains('~') {
        let mut proxy = Proxy::from_node(spec, &ProxyMetadata::default())
            .with_context(|| format!("--proxy {spec:?}"))?;
        proxy.refresh_labels(snapshot);
        return Ok(proxy);
    }
    let Some((pod, namespace)) = spec.rsplit_once('.') else {
        bail!("--proxy {spec:?}: expected a node id or pod.namespace");
    };
    match Proxy::for_pod(snapshot, namespace, pod) {
        Some(proxy) => Ok(proxy),
        None if snapshot.pod(namespace, pod).is_some() => {
            bail!("unknown proxy {spec:?}: pod {namespace}/{pod} has no IP yet")
        }
        None => {
            bail!("unknown proxy {spec:?}: no pod {pod:?} in namespace {namespace:?} in the config")
        }
    }
}
