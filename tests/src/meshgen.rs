//! Synthetic meshes for load benchmarks, written as YAML for the file source: `services`
//! services `svc-<i>` over `namespaces` namespaces, each with an HTTP port 8080 and `endpoints`
//! ready pods (versions v1/v2 alternating) in one EndpointSlice; the first `destination_rules`
//! services get a DestinationRule with subsets v1 and v2, and `virtual_services` 90/10
//! VirtualServices are written: one per service for the first ones, then (past the number of
//! services) ones for hosts `vs-<i>.example.com` outside the registry, routed to the services in
//! turn; those land on route "80", so the mesh then also has a port-80 service `web-80`.
//!
//! Layout, so that a benchmark can change one object by rewriting one small file:
//! `services.yaml`, `pods.yaml`, `endpointslices/svc-<i>.yaml`, `destinationrules.yaml`,
//! `virtualservices.yaml`, and the first VirtualService alone in [`EDITABLE_VS_FILE`]. The spec
//! itself is kept in [`SPEC_FILE`], a dot-file the file source ignores.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// Where [`write_mesh`] records the spec (the file source skips dot-files).
pub const SPEC_FILE: &str = ".meshspec.json";
/// Directory of the per-service EndpointSlice files.
pub const SLICE_DIR: &str = "endpointslices";
/// The file holding only VirtualService 0 (for `svc-0`).
pub const EDITABLE_VS_FILE: &str = "virtualservice-0.yaml";
/// Every generated service listens here.
pub const SERVICE_PORT: u16 = 8080;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshSpec {
    pub services: usize,
    pub endpoints: usize,
    pub virtual_services: usize,
    pub destination_rules: usize,
    pub namespaces: usize,
}

impl MeshSpec {
    pub fn namespace_of(&self, service: usize) -> String {
        format!("ns-{}", service % self.namespaces.max(1))
    }

    /// `svc-<i>.<ns>.svc.cluster.local`.
    pub fn hostname(&self, service: usize) -> String {
        format!(
            "svc-{service}.{}.svc.cluster.local",
            self.namespace_of(service)
        )
    }

    /// The default outbound cluster (and EDS name) of a service.
    pub fn default_cluster(&self, service: usize) -> String {
        format!("outbound|{SERVICE_PORT}||{}", self.hostname(service))
    }

    /// The service index of a default outbound cluster name, if it is one of ours.
    pub fn service_of_cluster(&self, cluster: &str) -> Option<usize> {
        let host = cluster.strip_prefix("outbound|8080||svc-")?;
        let (index, rest) = host.split_once('.')?;
        let index: usize = index.parse().ok()?;
        (index < self.services && rest.ends_with(".svc.cluster.local")).then_some(index)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "services": self.services,
            "endpoints": self.endpoints,
            "virtual_services": self.virtual_services,
            "destination_rules": self.destination_rules,
            "namespaces": self.namespaces,
        })
    }

    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let field = |name: &str| {
            value[name]
                .as_u64()
                .map(|v| v as usize)
                .with_context(|| format!("mesh spec: no number {name:?}"))
        };
        Ok(MeshSpec {
            services: field("services")?,
            endpoints: field("endpoints")?,
            virtual_services: field("virtual_services")?,
            destination_rules: field("destination_rules")?,
            namespaces: field("namespaces")?,
        })
    }

    /// Whether some VirtualService hosts are outside the registry (and need `web-80`).
    fn has_external_hosts(&self) -> bool {
        self.virtual_services > self.services
    }
}

/// The spec a mesh directory was generated with.
pub fn read_spec(dir: &Path) -> Result<MeshSpec> {
    let path = dir.join(SPEC_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    MeshSpec::from_json(&serde_json::from_str(&text)?)
}

/// The pod IP of endpoint `e` of service `i` (10.128.0.0/9, unique per endpoint).
pub fn pod_ip(spec: &MeshSpec, service: usize, endpoint: usize) -> String {
    let n = service * spec.endpoints + endpoint + 1;
    format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)
}

fn pod_name(service: usize, endpoint: usize) -> String {
    format!("svc-{service}-v{}-{endpoint}", endpoint % 2 + 1)
}

/// Writes `text` under a dot-name the file source ignores, then renames it into place, so the
/// source never reads a half-written file.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The EndpointSlice of service `service`; `first_address` replaces endpoint 0's IP (the pod,
/// and so its labels, stay the same).
pub fn endpoint_slice_yaml(spec: &MeshSpec, service: usize, first_address: Option<&str>) -> String {
    let ns = spec.namespace_of(service);
    let mut endpoints = String::new();
    for e in 0..spec.endpoints {
        let ip = match first_address {
            Some(address) if e == 0 => address.to_string(),
            _ => pod_ip(spec, service, e),
        };
        let _ = writeln!(
            endpoints,
            "- {{addresses: [{ip}], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: {}, namespace: {ns}}}}}",
            pod_name(service, e)
        );
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{service}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: svc-{service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {SERVICE_PORT}, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

pub fn slice_path(dir: &Path, service: usize) -> std::path::PathBuf {
    dir.join(SLICE_DIR).join(format!("svc-{service}.yaml"))
}

/// Rewrites one service's EndpointSlice file atomically (see [`endpoint_slice_yaml`]).
pub fn write_endpoint_slice(
    dir: &Path,
    spec: &MeshSpec,
    service: usize,
    first_address: Option<&str>,
) -> Result<()> {
    write_atomically(
        &slice_path(dir, service),
        &endpoint_slice_yaml(spec, service, first_address),
    )
}

/// VirtualService `i`: for `svc-<i>` while `i` is below the number of services, else for the
/// host `vs-<i>.example.com` routed to service `i mod services`. `weights` split between
/// subsets v1 and v2 (or twice the service when it has no DestinationRule).
pub fn virtual_service_yaml(spec: &MeshSpec, i: usize, weights: (u32, u32)) -> String {
    let target = i % spec.services.max(1);
    let ns = spec.namespace_of(target);
    let (name, host) = if i < spec.services {
        (format!("svc-{i}"), format!("svc-{i}"))
    } else {
        (format!("vs-{i}"), format!("vs-{i}.example.com"))
    };
    let destination = spec.hostname(target);
    let (a, b) = if target < spec.destination_rules {
        (
            format!("{{host: {destination}, subset: v1}}"),
            format!("{{host: {destination}, subset: v2}}"),
        )
    } else {
        (
            format!("{{host: {destination}}}"),
            format!("{{host: {destination}}}"),
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    - {{destination: {a}, weight: {}}}\n    - {{destination: {b}, weight: {}}}\n",
        weights.0, weights.1
    )
}

/// Rewrites [`EDITABLE_VS_FILE`] atomically with new weights.
pub fn write_first_virtual_service(dir: &Path, spec: &MeshSpec, weights: (u32, u32)) -> Result<()> {
    write_atomically(
        &dir.join(EDITABLE_VS_FILE),
        &virtual_service_yaml(spec, 0, weights),
    )
}

/// Writes the mesh into `dir` (see the module docs for the layout).
pub fn write_mesh(spec: &MeshSpec, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join(SLICE_DIR))?;
    let mut services = String::new();
    let mut pods = String::new();
    let mut destination_rules = String::new();
    for i in 0..spec.services {
        let ns = spec.namespace_of(i);
        let name = format!("svc-{i}");
        writeln!(
            services,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {SERVICE_PORT}}}]\n  selector: {{app: {name}}}",
            i / 250,
            i % 250 + 1
        )?;
        for e in 0..spec.endpoints {
            writeln!(
                pods,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {ns}, labels: {{app: {name}, version: v{}}}}}\nspec: {{containers: [{{name: app, image: app}}]}}\nstatus: {{podIP: {}}}",
                pod_name(i, e),
                e % 2 + 1,
                pod_ip(spec, i, e)
            )?;
        }
        write_atomically(&slice_path(dir, i), &endpoint_slice_yaml(spec, i, None))?;
        if i < spec.destination_rules {
            writeln!(
                destination_rules,
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {name}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}"
            )?;
        }
    }
    if spec.has_external_hosts() {
        // Hosts outside the registry are served on route "80", which needs a port-80 listener.
        writeln!(
            services,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web-80, namespace: {}}}\nspec:\n  clusterIP: 10.97.0.1\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n  selector: {{app: web-80}}",
            spec.namespace_of(0)
        )?;
    }
    let mut virtual_services = String::new();
    for i in 1..spec.virtual_services {
        writeln!(
            virtual_services,
            "---\n{}",
            virtual_service_yaml(spec, i, (90, 10))
        )?;
    }
    write_atomically(&dir.join("services.yaml"), &services)?;
    write_atomically(&dir.join("pods.yaml"), &pods)?;
    write_atomically(&dir.join("destinationrules.yaml"), &destination_rules)?;
    write_atomically(&dir.join("virtualservices.yaml"), &virtual_services)?;
    if spec.virtual_services > 0 {
        write_first_virtual_service(dir, spec, (90, 10))?;
    }
    write_atomically(
        &dir.join(SPEC_FILE),
        &serde_json::to_string_pretty(&spec.to_json())?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::Index;
    use meshpilot_sources::FileSource;

    fn load(dir: &Path) -> meshpilot_model::Snapshot {
        let mut source = FileSource::new(vec![dir.to_path_buf()]);
        let problems = source.load_all();
        assert!(problems.is_empty(), "{problems:?}");
        let mut index = Index::default();
        source.apply_to(&mut index);
        index.snapshot()
    }

    fn mk_spec(services: usize, virtual_services: usize) -> MeshSpec {
        MeshSpec {
            services,
            endpoints: 3,
            virtual_services,
            destination_rules: 5,
            namespaces: 4,
        }
    }

    #[test]
    fn generated_mesh_loads_without_problems() {
        let dir = tempfile::tempdir().unwrap();
        let spec = mk_spec(30, 5);
        write_mesh(&spec, dir.path()).unwrap();
        let snapshot = load(dir.path());
        assert_eq!(snapshot.services().count(), 30);
        assert_eq!(snapshot.virtual_services().len(), 5);
        assert!(snapshot.rejected().is_empty());
        assert_eq!(snapshot.endpoints("svc-7.ns-3.svc.cluster.local").len(), 3);
        assert_eq!(read_spec(dir.path()).unwrap(), spec);
    }

    #[test]
    fn more_virtual_services_than_services_get_distinct_external_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let spec = mk_spec(30, 75);
        write_mesh(&spec, dir.path()).unwrap();
        let snapshot = load(dir.path());
        // The port-80 service that carries the external hosts' route comes on top.
        assert_eq!(snapshot.services().count(), 31);
        assert_eq!(snapshot.virtual_services().len(), 75);
        assert!(snapshot.rejected().is_empty());
        let mut hosts: Vec<String> = snapshot
            .virtual_services()
            .iter()
            .flat_map(|vs| vs.spec.hosts.clone())
            .collect();
        hosts.sort();
        hosts.dedup();
        assert_eq!(hosts.len(), 75);
    }

    #[test]
    fn rewriting_a_slice_moves_its_first_endpoint_only() {
        let dir = tempfile::tempdir().unwrap();
        let spec = mk_spec(10, 1);
        write_mesh(&spec, dir.path()).unwrap();
        write_endpoint_slice(dir.path(), &spec, 7, Some("10.64.0.9")).unwrap();
        write_first_virtual_service(dir.path(), &spec, (60, 40)).unwrap();
        let snapshot = load(dir.path());
        let mut ips: Vec<String> = snapshot
            .endpoints(&spec.hostname(7))
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        ips.sort();
        assert_eq!(ips, ["10.128.0.23", "10.128.0.24", "10.64.0.9"]);
        assert_eq!(snapshot.virtual_services().len(), 1);
        assert_eq!(spec.service_of_cluster(&spec.default_cluster(7)), Some(7));
        assert_eq!(
            spec.service_of_cluster("outbound|8080|v1|svc-7.ns-3.svc.cluster.local"),
            None
        );
    }
}
