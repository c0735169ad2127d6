//! `meshpilot inject`: istioctl kube-inject. Reads multi-document YAML, adds the sidecar to
//! every workload's pod template and prints the result. The injection settings here are shared
//! with `meshpilot webhook`.

use anyhow::{Context, Result, bail};
use clap::Args;
use meshpilot_agent::inject::{self, InjectConfig};
use serde_yaml_ng::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// YAML to inject (multi-document); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub injection: InjectionFlags,
}

/// What every injected pod gets. Flags win over `--values`, which wins over the defaults.
#[derive(Args, Debug, Clone, Default)]
pub struct InjectionFlags {
    /// YAML file whose keys are these flags' names without `--` (e.g. `proxy-image: ...`).
    #[arg(long = "values", value_name = "FILE")]
    pub values: Option<PathBuf>,
    /// Image of the istio-init container: `meshpilot` on PATH plus iptables-restore
    /// [default: meshpilot/meshpilot:0.1.0].
    #[arg(long)]
    pub image: Option<String>,
    /// Image of the istio-proxy container: `meshpilot` and `envoy` on PATH [default: --image].
    #[arg(long)]
    pub proxy_image: Option<String>,
    /// imagePullPolicy of both containers: Always, IfNotPresent or Never [default: unset].
    #[arg(long)]
    pub image_pull_policy: Option<String>,
    /// The control plane's TLS xDS address the sidecar connects to
    /// [default: meshpilot.meshpilot-system.svc:15012].
    #[arg(long)]
    pub xds_address: Option<String>,
    /// ISTIO_META_CLUSTER_ID [default: Kubernetes].
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// ISTIO_META_MESH_ID [default: cluster.local].
    #[arg(long)]
    pub mesh_id: Option<String>,
    /// The sidecar's CPU request [default: 100m].
    #[arg(long)]
    pub cpu_request: Option<String>,
    /// The sidecar's memory request [default: 128Mi].
    #[arg(long)]
    pub memory_request: Option<String>,
    /// The sidecar's CPU limit [default: 2].
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// The sidecar's memory limit [default: 1Gi].
    #[arg(long)]
    pub memory_limit: Option<String>,
}

/// The keys a values file may hold: the flag names.
const VALUE_KEYS: [&str; 10] = [
    "image",
    "proxy-image",
    "image-pull-policy",
    "xds-address",
    "cluster-id",
    "mesh-id",
    "cpu-request",
    "memory-request",
    "cpu-limit",
    "memory-limit",
];

impl InjectionFlags {
    /// Flags over the values file over the defaults, validated.
    pub fn resolve(&self) -> Result<InjectConfig> {
        let mut values = match &self.values {
            Some(path) => read_values(path)?,
            None => ValuesFile::default(),
        };
        let mut pick = |flag: &Option<String>, key: &str| flag.clone().or_else(|| values.take(key));
        let image = pick(&self.image, "image");
        let proxy_image = pick(&self.proxy_image, "proxy-image");
        let image_pull_policy = pick(&self.image_pull_policy, "image-pull-policy");
        let xds_address = pick(&self.xds_address, "xds-address");
        let cluster_id = pick(&self.cluster_id, "cluster-id");
        let mesh_id = pick(&self.mesh_id, "mesh-id");
        let cpu_request = pick(&self.cpu_request, "cpu-request");
        let memory_request = pick(&self.memory_request, "memory-request");
        let cpu_limit = pick(&self.cpu_limit, "cpu-limit");
        let memory_limit = pick(&self.memory_limit, "memory-limit");

        let mut config = InjectConfig::default();
        if let Some(image) = image {
            config.proxy_image = image.clone();
            config.image = image;
        }
        if let Some(proxy_image) = proxy_image {
            config.proxy_image = proxy_image;
        }
        config.image_pull_policy = image_pull_policy;
        if let Some(address) = xds_address {
            config.xds_address = address;
        }
        if let Some(id) = cluster_id {
            config.cluster_id = id;
        }
        if let Some(id) = mesh_id {
            config.mesh_id = id;
        }
        let resources = &mut config.proxy_resources;
        for (slot, value) in [
            (&mut resources.cpu_request, cpu_request),
            (&mut resources.memory_request, memory_request),
            (&mut resources.cpu_limit, cpu_limit),
            (&mut resources.memory_limit, memory_limit),
        ] {
            if value.is_some() {
                *slot = value;
            }
        }
        config.validate().map_err(|e| {
            let source = self
                .values
                .as_ref()
                .map(|p| format!(" (flags and {})", p.display()))
                .unwrap_or_default();
            anyhow::anyhow!("injection settings{source}: {e}")
        })?;
        Ok(config)
    }
}

/// A parsed `--values` file: known keys with their values as strings.
#[derive(Default)]
struct ValuesFile(Vec<(String, String)>);

impl ValuesFile {
    fn take(&mut self, key: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }
}

fn read_values(path: &Path) -> Result<ValuesFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_values(&text).with_context(|| format!("values file {}", path.display()))
}

fn parse_values(text: &str) -> Result<ValuesFile> {
    let value: Value = serde_yaml_ng::from_str(text)?;
    let mapping = match value {
        Value::Null => return Ok(ValuesFile::default()),
        Value::Mapping(m) => m,
        _ => bail!("expected a mapping of setting names to values"),
    };
    let mut values = Vec::new();
    for (key, value) in mapping {
        let key = key
            .as_str()
            .context("setting names are strings")?
            .to_string();
        if !VALUE_KEYS.contains(&key.as_str()) {
            bail!("unknown setting {key:?}; known: {}", VALUE_KEYS.join(", "));
        }
        let value = match value {
            Value::String(s) => s,
            // `cpu-limit: 2` is a number in YAML.
            Value::Number(n) => n.to_string(),
            _ => bail!("{key}: expected a string"),
        };
        values.push((key, value));
    }
    Ok(ValuesFile(values))
}

pub fn run(args: InjectArgs) -> Result<()> {
    let config = args.injection.resolve()?;
    let (input, name) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        (text, "stdin".to_string())
    } else {
        let text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        (text, args.file.display().to_string())
    };
    let output = inject::inject_documents(&input, &config).with_context(|| name.clone())?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, output).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout()
            .lock()
            .write_all(output.as_bytes())
            .context("writing stdout")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_values_which_win_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let values = dir.path().join("values.yaml");
        std::fs::write(
            &values,
            "image: registry.local/meshpilot:1\ncpu-limit: 4\nxds-address: cp.mesh:15012\n",
        )
        .unwrap();
        let flags = InjectionFlags {
            values: Some(values),
            xds_address: Some("other:15012".into()),
            ..Default::default()
        };
        let config = flags.resolve().unwrap();
        assert_eq!(config.image, "registry.local/meshpilot:1");
        assert_eq!(config.proxy_image, "registry.local/meshpilot:1");
        assert_eq!(config.xds_address, "other:15012");
        assert_eq!(config.proxy_resources.cpu_limit.as_deref(), Some("4"));
        assert_eq!(
            config.proxy_resources.memory_request.as_deref(),
            Some("128Mi")
        );
    }

    #[test]
    fn values_files_are_checked() {
        let err = parse_values("proxyImage: x\n").err().unwrap();
        assert!(err.to_string().contains("unknown setting"), "{err}");
        assert!(parse_values("image: [a]\n").is_err());
        assert!(parse_values("").unwrap().0.is_empty());
        let flags = InjectionFlags {
            memory_request: Some("much".into()),
            ..Default::default()
        };
        let err = flags.resolve().unwrap_err().to_string();
        assert!(err.contains("memory-request"), "{err}");
    }
}
