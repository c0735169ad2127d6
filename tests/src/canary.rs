//! The 90/10 canary as a running mesh: namespaced pods on a bridge, meshpilot in its own pod,
//! two `reviews` backends, and a client pod whose traffic istio-init's rules steer through a
//! real Envoy fed by meshpilot. Shared by the end-to-end tests and `cargo xtask demo`.

use crate::netns::{Child, Fabric, Pod, User, require_binary};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CONTROL_PLANE_IP: &str = "10.244.0.2";
pub const CLIENT_IP: &str = "10.244.1.20";
pub const REVIEWS_CLUSTER_IP: &str = "10.96.120.15";
pub const CLIENT_NODE_ID: &str =
    "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local";
/// Envoy runs as istio-proxy's uid/gid, which the interception rules exempt.
pub const PROXY_USER: User = (1337, 1337);
/// The application's user: any uid but the proxy's.
pub const APP_USER: User = (1000, 1000);
/// istio-init's arguments for a default injected pod.
pub const IPTABLES_ARGS: [&str; 16] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// Executables the mesh runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub meshpilot: PathBuf,
    pub envoy: PathBuf,
    pub mesh_client: PathBuf,
    pub echo_server: PathBuf,
}

impl Tools {
    /// Finds the workspace's binaries next to the running executable (`target/<profile>/`,
    /// also from `deps/`) and Envoy as [`crate::envoy_binary`] does.
    pub fn locate() -> Result<Tools> {
        let exe = std::env::current_exe()?;
        let mut dir = exe
            .parent()
            .context("executable has a directory")?
            .to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let find = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if !path.exists() {
                bail!(
                    "{} not found: build the workspace first (`cargo build --workspace`, \
                     which `cargo xtask test` and `cargo xtask demo` do)",
                    path.display()
                );
            }
            Ok(path)
        };
        Ok(Tools {
            meshpilot: find("meshpilot")?,
            envoy: crate::envoy_binary()?,
            mesh_client: find("mesh-client")?,
            echo_server: find("echo-server")?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdsApi {
    Sotw,
    Delta,
}

#[derive(Clone, Debug)]
pub struct CanaryOptions {
    pub xds_api: XdsApi,
    /// Connect Envoy to the TLS port 15012 (trusting meshpilot's generated root) instead of 15010.
    pub tls: bool,
    /// Directory with the mesh YAML (copied; the copy is what gets edited).
    pub mesh_source: PathBuf,
    /// Short namespace-name prefix for this run (1–4 lowercase letters).
    pub prefix: &'static str,
    /// Run meshpilot with `--vhds`: virtual hosts over Envoy's VHDS stream.
    pub vhds: bool,
}

/// Result of a run of requests from the app.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub counts: BTreeMap<String, u64>,
    pub errors: u64,
    pub statuses: BTreeMap<String, u64>,
}

impl Tally {
    pub fn count(&self, body: &str) -> u64 {
        self.counts.get(body).copied().unwrap_or(0)
    }
}

pub struct CanaryMesh {
    // Field order is drop order: processes go before the fabric removes their namespaces.
    envoy: Child,
    control_plane: Option<Child>,
    _backends: Vec<Child>,
    control_plane_pod: Pod,
    client: Pod,
    mesh_dir: PathBuf,
    tls_dir: PathBuf,
    tools: Tools,
    vhds: bool,
    fabric: Fabric,
}

impl CanaryMesh {
    pub fn start(tools: Tools, options: &CanaryOptions) -> Result<CanaryMesh> {
        require_binary("iptables-restore")?;
        let fabric = Fabric::new(options.prefix)?;
        let mesh_dir = fabric.work_dir().join("mesh");
        copy_yaml(&options.mesh_source, &mesh_dir)?;
        let tls_dir = fabric.work_dir().join("tls");
        let control_plane_pod = fabric.add_pod("meshpilot", &format!("{CONTROL_PLANE_IP}/16"))?;
        let client = fabric.add_pod("productpage", &format!("{CLIENT_IP}/16"))?;
        let mut backends = Vec::new();
        for (name, ip, body) in [
            ("reviews-v1", "10.244.1.11", "v1"),
            ("reviews-v2", "10.244.2.12", "v2"),
        ] {
            let pod = fabric.add_pod(name, &format!("{ip}/16"))?;
            let mut server = pod.spawn(
                &[
                    tools.echo_server.as_os_str(),
                    "--listen".as_ref(),
                    "0.0.0.0:9080".as_ref(),
                    "--body".as_ref(),
                    body.as_ref(),
                ],
                Some(APP_USER),
            )?;
            server.wait_for_output("listening", Duration::from_secs(10))?;
            backends.push(server);
        }
        let control_plane = Some(start_control_plane(
            &control_plane_pod,
            &tools,
            &mesh_dir,
            &tls_dir,
            options.vhds,
        )?);

        // istio-init: the nat rules, applied by `meshpilot iptables` inside the client pod.
        let mut iptables: Vec<&std::ffi::OsStr> =
            vec![tools.meshpilot.as_os_str(), "iptables".as_ref()];
        iptables.extend(IPTABLES_ARGS.iter().map(std::ffi::OsStr::new));
        client
            .run_ok(&iptables, None, Duration::from_secs(20))
            .context("applying the interception rules in the client pod")?;

        // The sidecar: a bootstrap from `meshpilot bootstrap`, Envoy as uid 1337.
        let bootstrap = fabric.work_dir().join("bootstrap.json");
        let (address, root) = if options.tls {
            (
                format!("{CONTROL_PLANE_IP}:15012"),
                Some(tls_dir.join("root-cert.pem")),
            )
        } else {
            (format!("{CONTROL_PLANE_IP}:15010"), None)
        };
        let mut args: Vec<String> = vec![
            tools.meshpilot.display().to_string(),
            "bootstrap".into(),
            "--node-id".into(),
            CLIENT_NODE_ID.into(),
            "--xds-address".into(),
            address,
            "--xds-api".into(),
            match options.xds_api {
                XdsApi::Sotw => "sotw".into(),
                XdsApi::Delta => "delta".into(),
            },
            "--metadata".into(),
            "NAMESPACE=default".into(),
            "--metadata".into(),
            "INTERCEPTION_MODE=REDIRECT".into(),
            "--metadata".into(),
            format!("INSTANCE_IPS={CLIENT_IP}"),
            "-o".into(),
            bootstrap.display().to_string(),
        ];
        if let Some(root) = root {
            args.push("--tls-root-cert".into());
            args.push(root.display().to_string());
        }
        client.run_ok(&args, None, Duration::from_secs(20))?;
        make_world_readable(&bootstrap)?;
        let mut envoy = client.spawn(
            &[
                tools.envoy.as_os_str(),
                "-c".as_ref(),
                bootstrap.as_os_str(),
                "--disable-hot-restart".as_ref(),
                "--log-level".as_ref(),
                "warning".as_ref(),
            ],
            Some(PROXY_USER),
        )?;
        // Envoy's own readiness (admin /ready behind the 15021 health listener) first.
        let ready = CanaryMesh::until_body_with(
            &client,
            &tools,
            "http://127.0.0.1:15021/healthz/ready",
            None,
            &[],
            "LIVE",
            Duration::from_secs(30),
        );
        if let Err(err) = ready {
            envoy.kill();
            bail!("{err:#}\nenvoy logs:\n{}", envoy.logs());
        }
        let mesh = CanaryMesh {
            envoy,
            control_plane,
            _backends: backends,
            control_plane_pod,
            client,
            mesh_dir,
            tls_dir,
            tools,
            vhds: options.vhds,
            fabric,
        };
        // Then config: the header route reaching v2 means LDS, RDS, CDS and EDS all arrived.
        mesh.until_body("v2", &[("end-user", "jason")], Duration::from_secs(30))
            .with_context(|| format!("waiting for the sidecar's config\n{}", mesh.logs()))?;
        Ok(mesh)
    }

    /// Logs of the control plane and Envoy, for failure messages.
    pub fn logs(&self) -> String {
        let cp = self
            .control_plane
            .as_ref()
            .map(|c| c.logs())
            .unwrap_or_else(|| "(control plane stopped)".into());
        format!(
            "--- meshpilot ---\n{cp}\n--- envoy ---\n{}",
            self.envoy.logs()
        )
    }

    pub fn mesh_dir(&self) -> &Path {
        &self.mesh_dir
    }

    pub fn fabric(&self) -> &Fabric {
        &self.fabric
    }

    /// Replaces (or adds) a mesh file atomically, as `kubectl apply`-style tooling would.
    pub fn write_mesh_file(&self, name: &str, contents: &str) -> Result<()> {
        let tmp = self.mesh_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents)?;
        std::fs::rename(&tmp, self.mesh_dir.join(name))?;
        Ok(())
    }

    /// `n` requests from the app (uid 1000) to `http://reviews:9080/` via the ClusterIP.
    pub fn requests(&self, n: u64, headers: &[(&str, &str)]) -> Result<Tally> {
        let mut args = self.client_args("http://reviews:9080/", Some(REVIEWS_CLUSTER_IP), headers);
        args.extend(["--requests".into(), n.to_string()]);
        let timeout = Duration::from_secs(30 + n / 20);
        let out = self.client.run_ok(&args, Some(APP_USER), timeout)?;
        let json: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("mesh-client said {out:?}"))?;
        let map = |key: &str| -> BTreeMap<String, u64> {
            json[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Tally {
            counts: map("counts"),
            errors: json["errors"].as_u64().unwrap_or(0),
            statuses: map("statuses"),
        })
    }

    /// Repeats a request until its body is `body`; returns how long that took.
    pub fn until_body(
        &self,
        body: &str,
        headers: &[(&str, &str)],
        max_wait: Duration,
    ) -> Result<Duration> {
        CanaryMesh::until_body_with(
            &self.client,
            &self.tools,
            "http://reviews:9080/",
            Some(REVIEWS_CLUSTER_IP),
            headers,
            body,
            max_wait,
        )
    }

    fn until_body_with(
        client: &Pod,
        tools: &Tools,
        url: &str,
        cluster_ip: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
        max_wait: Duration,
    ) -> Result<Duration> {
        let mut args = client_args(tools, url, cluster_ip, headers);
        args.extend([
            "--until-body".into(),
            body.into(),
            "--max-wait-ms".into(),
            max_wait.as_millis().to_string(),
            "--interval-ms".into(),
            "20".into(),
        ]);
        let out = client.run(&args, Some(APP_USER), max_wait + Duration::from_secs(10))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("mesh-client said {stdout:?}"))?;
        if json["matched"] != true {
            bail!("no response with body {body:?} from {url} within {max_wait:?}: {json}");
        }
        Ok(Duration::from_millis(
            json["elapsed_ms"].as_u64().unwrap_or(0),
        ))
    }

    fn client_args(
        &self,
        url: &str,
        cluster_ip: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Vec<String> {
        client_args(&self.tools, url, cluster_ip, headers)
    }

    /// Envoy's admin `/stats` (read from inside the client pod).
    pub fn envoy_stats(&self) -> Result<String> {
        self.envoy_admin("/stats")
    }

    /// A page of Envoy's admin interface, e.g. `/config_dump?resource=dynamic_route_configs`.
    pub fn envoy_admin(&self, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:15000{path}");
        let mut args = self.client_args(&url, None, &[]);
        args.push("--print-body".into());
        self.client
            .run_ok(&args, Some(APP_USER), Duration::from_secs(10))
    }

    /// meshpilot's `/metrics` (read from inside its pod).
    pub fn control_plane_metrics(&self) -> Result<String> {
        let mut args = client_args(&self.tools, "http://127.0.0.1:15014/metrics", None, &[]);
        args.push("--print-body".into());
        self.control_plane_pod
            .run_ok(&args, Some(APP_USER), Duration::from_secs(10))
    }

    pub fn stop_control_plane(&mut self) -> Result<()> {
        if let Some(mut cp) = self.control_plane.take() {
            cp.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    pub fn start_control_plane(&mut self) -> Result<()> {
        if self.control_plane.is_none() {
            self.control_plane = Some(start_control_plane(
                &self.control_plane_pod,
                &self.tools,
                &self.mesh_dir,
                &self.tls_dir,
                self.vhds,
            )?);
        }
        Ok(())
    }

    /// Envoy's `control_plane.connected_state` (1 = connected).
    pub fn envoy_connected(&self) -> Result<bool> {
        Ok(
            stat_values(&self.envoy_stats()?, "control_plane.connected_state")
                .first()
                .is_some_and(|(_, v)| *v == 1),
        )
    }
}

fn client_args(
    tools: &Tools,
    url: &str,
    cluster_ip: Option<&str>,
    headers: &[(&str, &str)],
) -> Vec<String> {
    let mut args = vec![
        tools.mesh_client.display().to_string(),
        "--url".into(),
        url.into(),
        "--timeout-ms".into(),
        "3000".into(),
    ];
    if let Some(ip) = cluster_ip {
        args.extend(["--connect".into(), format!("{ip}:9080")]);
    }
    for (k, v) in headers {
        args.extend(["--header".into(), format!("{k}:{v}")]);
    }
    args
}

fn start_control_plane(
    pod: &Pod,
    tools: &Tools,
    mesh: &Path,
    tls: &Path,
    vhds: bool,
) -> Result<Child> {
    let vhds_flag: &[&std::ffi::OsStr] = if vhds { &["--vhds".as_ref()] } else { &[] };
    let mut cp = pod.spawn(
        &[
            tools.meshpilot.as_os_str(),
            "discovery".as_ref(),
            "--config-dir".as_ref(),
            mesh.as_os_str(),
            "--tls-dir".as_ref(),
            tls.as_os_str(),
            "--tls-san".as_ref(),
            CONTROL_PLANE_IP.as_ref(),
            "--monitoring-addr".as_ref(),
            "0.0.0.0:15014".as_ref(),
        ]
        .into_iter()
        .chain(vhds_flag.iter().copied())
        .collect::<Vec<_>>(),
        None,
    )?;
    cp.wait_for_output("serving", Duration::from_secs(20))?;
    Ok(cp)
}

/// `(name, value)` of every counter or gauge in Envoy's `/stats` text whose name contains `part`.
pub fn stat_values(stats: &str, part: &str) -> Vec<(String, u64)> {
    stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(name, _)| name.contains(part))
        .filter_map(|(name, value)| Some((name.to_string(), value.trim().parse().ok()?)))
        .collect()
}

fn copy_yaml(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            std::fs::copy(&path, to.join(path.file_name().expect("file name")))?;
        }
    }
    Ok(())
}

fn make_world_readable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}
