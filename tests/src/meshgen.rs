//! Synthetic meshes for load benchmarks, written as YAML for the file source: `services`
//! services `svc-<i>` over `namespaces` namespaces, each with an HTTP port 8080 and `endpoints`
//! ready pods (versions v1/v2 alternating) in one EndpointSlice; the first `virtual_services`
//! services get a 90/10 VirtualService and the first `destination_rules` a DestinationRule with
//! subsets v1 and v2.

use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Copy, Debug)]
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
}

/// The pod IP of endpoint `e` of service `i` (10.128.0.0/9, unique per endpoint).
pub fn pod_ip(spec: &MeshSpec, service: usize, endpoint: usize) -> String {
    let n = service * spec.endpoints + endpoint + 1;
    format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)
}

/// Writes the mesh into `dir`, one file per kind (services, workloads, Istio configs).
pub fn write_mesh(spec: &MeshSpec, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut services = String::new();
    let mut workloads = String::new();
    let mut istio = String::new();
    for i in 0..spec.services {
        let ns = spec.namespace_of(i);
        let name = format!("svc-{i}");
        writeln!(
            services,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{name: http, port: 8080, targetPort: 8080}}]\n  selector: {{app: {name}}}",
            i / 250,
            i % 250 + 1
        )?;
        let mut slice_endpoints = String::new();
        for e in 0..spec.endpoints {
            let pod = format!("{name}-v{}-{e}", e % 2 + 1);
            let ip = pod_ip(spec, i, e);
            writeln!(
                workloads,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{app: {name}, version: v{}}}}}\nspec: {{containers: [{{name: app, image: app}}]}}\nstatus: {{podIP: {ip}}}",
                e % 2 + 1
            )?;
            writeln!(
                slice_endpoints,
                "- {{addresses: [{ip}], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: {pod}, namespace: {ns}}}}}"
            )?;
        }
        writeln!(
            workloads,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{slice_endpoints}"
        )?;
        if i < spec.destination_rules {
            writeln!(
                istio,
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {name}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}"
            )?;
        }
        if i < spec.virtual_services {
            let (a, b) = if i < spec.destination_rules {
                (
                    format!("{{host: {name}, subset: v1}}"),
                    format!("{{host: {name}, subset: v2}}"),
                )
            } else {
                (format!("{{host: {name}}}"), format!("{{host: {name}}}"))
            };
            writeln!(
                istio,
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - {{destination: {a}, weight: 90}}\n    - {{destination: {b}, weight: 10}}"
            )?;
        }
    }
    std::fs::write(dir.join("services.yaml"), services)?;
    std::fs::write(dir.join("workloads.yaml"), workloads)?;
    std::fs::write(dir.join("istio.yaml"), istio)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::Index;
    use meshpilot_sources::FileSource;

    #[test]
    fn generated_mesh_loads_without_problems() {
        let dir = tempfile::tempdir().unwrap();
        let spec = MeshSpec {
            services: 30,
            endpoints: 3,
            virtual_services: 5,
            destination_rules: 5,
            namespaces: 4,
        };
        write_mesh(&spec, dir.path()).unwrap();
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        assert!(source.load_all().is_empty());
        let mut index = Index::default();
        source.apply_to(&mut index);
        let snapshot = index.snapshot();
        assert_eq!(snapshot.services().count(), 30);
        assert_eq!(snapshot.virtual_services().len(), 5);
        assert!(snapshot.rejected().is_empty());
        assert_eq!(snapshot.endpoints("svc-7.ns-3.svc.cluster.local").len(), 3);
    }
}
