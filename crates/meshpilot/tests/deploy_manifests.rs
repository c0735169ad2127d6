//! The Kubernetes manifests under deploy/ (all but deploy/examples, which is demo input): they
//! parse, hang together, use only flags the real binary accepts, and the CRD schemas accept the
//! Istio YAML the project is tested with.

use serde_yaml_ng::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn base_dir() -> PathBuf {
    deploy_dir().join("kustomize/base")
}

fn yaml_files_under(dir: &Path, skip: Option<&Path>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if skip.is_some_and(|skip| dir == skip) {
            continue;
        }
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Every non-empty document of a multi-document YAML text.
fn parse_documents(text: &str) -> Result<Vec<Value>, serde_yaml_ng::Error> {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        // `singleton_map` hands `deserialize_any` straight through, so this is plain
        // `Value::deserialize` without naming serde, which is not a dependency of this crate.
        let value: Value = serde_yaml_ng::with::singleton_map::deserialize(document)?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn load(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name == "kustomization.yaml" || name == "kustomization.yml")
}

fn kustomizations() -> Vec<(PathBuf, Value)> {
    yaml_files_under(&deploy_dir(), Some(&deploy_dir().join("examples")))
        .into_iter()
        .filter(|path| is_kustomization(path))
        .map(|path| {
            let mut docs = load(&path);
            assert_eq!(docs.len(), 1, "{}: one document", path.display());
            (path, docs.remove(0))
        })
        .collect()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_sequence()
        .map(|seq| seq.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Files a kustomization names as patches: fragments, not Kubernetes objects.
fn patch_files() -> BTreeSet<PathBuf> {
    let mut patches = BTreeSet::new();
    for (path, kustomization) in kustomizations() {
        let dir = path.parent().unwrap();
        for patch in kustomization["patchesJson6902"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            patches.insert(dir.join(patch["path"].as_str().expect("patch path")));
        }
        for patch in strings(&kustomization["patchesStrategicMerge"]) {
            patches.insert(dir.join(patch));
        }
    }
    patches
}

struct Manifest {
    path: PathBuf,
    doc: Value,
}

fn manifests() -> Vec<Manifest> {
    let patches = patch_files();
    yaml_files_under(&deploy_dir(), Some(&deploy_dir().join("examples")))
        .into_iter()
        .filter(|path| !is_kustomization(path) && !patches.contains(path))
        .flat_map(|path| {
            load(&path).into_iter().map(move |doc| Manifest {
                path: path.clone(),
                doc,
            })
        })
        .collect()
}

fn base_manifests() -> Vec<Manifest> {
    let base = base_dir();
    manifests()
        .into_iter()
        .filter(|m| m.path.starts_with(&base))
        .collect()
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Value {
    manifests
        .iter()
        .map(|m| &m.doc)
        .find(|doc| kind_of(doc) == kind && name_of(doc) == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(pod_spec: &'a Value, list: &str, name: &str) -> &'a Value {
    pod_spec[list]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {list} entry {name}"))
}

/// Every `-x` / `--long` flag a `--help` text lists.
fn flags_in_help(help: &str) -> BTreeSet<String> {
    help.split_whitespace()
        .map(|word| word.trim_end_matches(','))
        .filter(|word| {
            (word.starts_with("--") && word.len() > 2)
                || (word.len() == 2 && word.starts_with('-') && *word != "--")
        })
        .map(str::to_string)
        .collect()
}

fn meshpilot_help(subcommand: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args([subcommand, "--help"])
        .output()
        .expect("run meshpilot");
    assert!(out.status.success(), "meshpilot {subcommand} --help failed");
    flags_in_help(&String::from_utf8_lossy(&out.stdout))
}

/// The flag part of each option argument (`--a=b` gives `--a`; values are skipped).
fn flags_in_args(args: &[&str]) -> Vec<String> {
    args.iter()
        .filter(|arg| arg.starts_with('-') && arg.len() > 1)
        .map(|arg| arg.split('=').next().unwrap().to_string())
        .collect()
}

fn arg_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix(&prefix) {
            Some(value)
        } else if *arg == flag {
            args.get(i + 1).copied()
        } else {
            None
        }
    })
}

#[test]
fn every_manifest_names_its_api_version_kind_and_name() {
    let manifests = manifests();
    assert!(manifests.len() >= 10, "found only {}", manifests.len());
    for m in &manifests {
        let where_ = m.path.display();
        assert!(
            m.doc["apiVersion"].as_str().is_some_and(|v| !v.is_empty()),
            "{where_}: apiVersion"
        );
        assert!(!kind_of(&m.doc).is_empty(), "{where_}: kind");
        assert!(!name_of(&m.doc).is_empty(), "{where_}: metadata.name");
    }
    let base = base_manifests();
    for (kind, name) in [
        (
            "CustomResourceDefinition",
            "virtualservices.networking.istio.io",
        ),
        (
            "CustomResourceDefinition",
            "destinationrules.networking.istio.io",
        ),
        ("Namespace", "meshpilot-system"),
        ("ServiceAccount", "meshpilot"),
        ("ClusterRole", "meshpilot"),
        ("ClusterRoleBinding", "meshpilot"),
        ("Deployment", "meshpilot"),
        ("Service", "meshpilot"),
        ("PodDisruptionBudget", "meshpilot"),
        ("MutatingWebhookConfiguration", "meshpilot-sidecar-injector"),
    ] {
        find(&base, kind, name);
    }
    for m in &base {
        let cluster_scoped = matches!(
            kind_of(&m.doc),
            "CustomResourceDefinition"
                | "Namespace"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "MutatingWebhookConfiguration"
        );
        let namespace = m.doc["metadata"]["namespace"].as_str();
        if cluster_scoped {
            assert_eq!(namespace, None, "{}", m.path.display());
        } else {
            assert_eq!(namespace, Some("meshpilot-system"), "{}", m.path.display());
        }
    }
}

// ---- CRDs -------------------------------------------------------------------------------------

/// Breaks of the structural-schema rules (and of what a 1.20 API server knows) below `path`.
fn structural_problems(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(node) = schema.as_mapping() else {
        problems.push(format!("{path}: not a mapping"));
        return;
    };
    let flag = |key: &str| node.get(key).and_then(Value::as_bool) == Some(true);
    if node.get("type").and_then(Value::as_str).is_none()
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        problems.push(format!("{path}: no type"));
    }
    // CEL rules arrived in 1.23; references and definitions are never allowed.
    for forbidden in [
        "x-kubernetes-validations",
        "$ref",
        "definitions",
        "dependencies",
    ] {
        if node.contains_key(forbidden) {
            problems.push(format!("{path}: {forbidden}"));
        }
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if node.get("type").and_then(Value::as_str) == Some("array") && !node.contains_key("items") {
        problems.push(format!("{path}: array without items"));
    }
    for (key, child) in node
        .get("properties")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        let key = key.as_str().unwrap_or("?");
        structural_problems(child, &format!("{path}.{key}"), problems);
    }
    if let Some(items) = node.get("items") {
        structural_problems(items, &format!("{path}[]"), problems);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_mapping()) {
        structural_problems(values, &format!("{path}{{}}"), problems);
    }
    // Junctors may only constrain; a type or a structure inside them is not structural.
    for junctor in ["oneOf", "anyOf", "allOf", "not"] {
        if let Some(inner) = node.get(junctor) {
            let text = serde_yaml_ng::to_string(inner).unwrap();
            for key in ["type:", "additionalProperties:", "items:", "default:"] {
                if text.contains(key) {
                    problems.push(format!("{path}: {key} inside {junctor}"));
                }
            }
        }
    }
}

fn crd_spec_schema<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd["spec"]["versions"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"].as_str() == Some(version))
        .map(|v| &v["schema"]["openAPIV3Schema"]["properties"]["spec"])
}

#[test]
fn crds_are_structural_and_serve_istio_versions() {
    let base = base_manifests();
    for (plural, kind) in [
        ("virtualservices", "VirtualService"),
        ("destinationrules", "DestinationRule"),
    ] {
        let crd = find(
            &base,
            "CustomResourceDefinition",
            &format!("{plural}.networking.istio.io"),
        );
        assert_eq!(crd["apiVersion"].as_str(), Some("apiextensions.k8s.io/v1"));
        let spec = &crd["spec"];
        assert_eq!(spec["group"].as_str(), Some("networking.istio.io"));
        assert_eq!(spec["scope"].as_str(), Some("Namespaced"));
        assert_eq!(spec["names"]["kind"].as_str(), Some(kind));
        assert_eq!(spec["names"]["plural"].as_str(), Some(plural));

        let versions = spec["versions"].as_sequence().expect("versions");
        let names: BTreeSet<&str> = versions.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from(["v1", "v1beta1", "v1alpha3"]),
            "{kind}"
        );
        let storage: Vec<&str> = versions
            .iter()
            .filter(|v| v["storage"].as_bool() == Some(true))
            .filter_map(|v| v["name"].as_str())
            .collect();
        assert_eq!(storage, ["v1"], "{kind}: exactly one storage version");
        for version in versions {
            let name = version["name"].as_str().unwrap();
            assert_eq!(version["served"].as_bool(), Some(true), "{kind} {name}");
            // One schema for all versions, as Istio has it: an edit to one copy must reach all.
            assert_eq!(
                version["schema"], versions[0]["schema"],
                "{kind} {name}: schema differs from v1"
            );
            let root = &version["schema"]["openAPIV3Schema"];
            let mut problems = Vec::new();
            structural_problems(root, &format!("{kind}/{name}"), &mut problems);
            assert!(problems.is_empty(), "{problems:#?}");
            assert_eq!(root["properties"]["spec"]["type"].as_str(), Some("object"));
            assert_eq!(
                root["properties"]["status"]["x-kubernetes-preserve-unknown-fields"].as_bool(),
                Some(true),
                "{kind}: status is free-form"
            );
        }
    }
}

// ---- Istio YAML against the CRD schemas ---------------------------------------------------------

/// Where `value` falls outside `schema`: unknown fields, wrong types, enum and bound violations,
/// missing required fields. `x-kubernetes-preserve-unknown-fields` accepts anything below it.
fn schema_problems(value: &Value, schema: &Value, path: &str, problems: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true) {
        return;
    }
    if value.is_null() {
        if schema["nullable"].as_bool() != Some(true) {
            problems.push(format!("{path}: null"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            problems.push(format!("{path}: expected an integer or a string"));
        }
        return;
    }
    let fits = match schema["type"].as_str() {
        Some("object") => value.is_mapping(),
        Some("array") => value.is_sequence(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_bool(),
        other => {
            problems.push(format!("{path}: schema type {other:?}"));
            return;
        }
    };
    if !fits {
        problems.push(format!(
            "{path}: expected {}",
            schema["type"].as_str().unwrap()
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_sequence()
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value:?} is not one of the enum values"));
    }
    if let Some(number) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| number < min) {
            problems.push(format!("{path}: below the minimum"));
        }
        if schema["maximum"].as_f64().is_some_and(|max| number > max) {
            problems.push(format!("{path}: above the maximum"));
        }
    }
    if let Some(items) = value.as_sequence() {
        for (i, item) in items.iter().enumerate() {
            schema_problems(item, &schema["items"], &format!("{path}[{i}]"), problems);
        }
    }
    if let Some(fields) = value.as_mapping() {
        for required in strings(&schema["required"]) {
            if !fields.contains_key(required) {
                problems.push(format!("{path}.{required}: required"));
            }
        }
        for (key, field) in fields {
            let key = key.as_str().unwrap_or("?");
            let field_path = format!("{path}.{key}");
            if let Some(declared) = schema["properties"].get(key) {
                schema_problems(field, declared, &field_path, problems);
            } else if schema["additionalProperties"].is_mapping() {
                schema_problems(
                    field,
                    &schema["additionalProperties"],
                    &field_path,
                    problems,
                );
            } else {
                problems.push(format!("{field_path}: not in the schema"));
            }
        }
    }
}

fn crds_by_kind() -> BTreeMap<String, Value> {
    base_manifests()
        .into_iter()
        .filter(|m| kind_of(&m.doc) == "CustomResourceDefinition")
        .map(|m| {
            (
                m.doc["spec"]["names"]["kind"].as_str().unwrap().to_string(),
                m.doc,
            )
        })
        .collect()
}

/// Problems of one Istio document against the CRDs; `None` when it is not a VS or DR.
fn istio_document_problems(crds: &BTreeMap<String, Value>, doc: &Value) -> Option<Vec<String>> {
    let crd = crds.get(kind_of(doc))?;
    let (group, version) = doc["apiVersion"].as_str()?.split_once('/')?;
    if group != "networking.istio.io" {
        return None;
    }
    let where_ = format!("{}/{version} {}", kind_of(doc), name_of(doc));
    let Some(schema) = crd_spec_schema(crd, version) else {
        return Some(vec![format!("{where_}: version {version} is not served")]);
    };
    let mut problems = Vec::new();
    schema_problems(
        &doc["spec"],
        schema,
        &format!("{where_}: spec"),
        &mut problems,
    );
    Some(problems)
}

#[test]
fn istio_yaml_the_project_uses_fits_the_crd_schemas() {
    let crds = crds_by_kind();
    let root = repo_root();
    let mut files = Vec::new();
    for golden in std::fs::read_dir(root.join("tests/golden")).expect("tests/golden") {
        let mesh = golden.expect("entry").path().join("mesh");
        if mesh.is_dir() {
            files.extend(yaml_files_under(&mesh, None));
        }
    }
    files.extend(yaml_files_under(&root.join("tests/fixtures"), None));
    files.extend(yaml_files_under(&deploy_dir().join("examples"), None));

    let mut checked = 0;
    let mut problems = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read");
        // Deliberately broken files (invalid-objects/truncated.yaml) are not YAML at all.
        let Ok(docs) = parse_documents(&text) else {
            continue;
        };
        for doc in &docs {
            if let Some(found) = istio_document_problems(&crds, doc) {
                checked += 1;
                problems.extend(
                    found
                        .into_iter()
                        .map(|p| format!("{}: {p}", path.display())),
                );
            }
        }
    }
    assert!(
        checked >= 15,
        "only {checked} VirtualService/DestinationRule documents found"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn schema_walk_catches_fields_istio_does_not_define() {
    let crds = crds_by_kind();
    let doc = parse_documents(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: typo}
spec:
  hosts: [reviews]
  http:
  - retry: {attempts: 3}
    route:
    - {destination: {host: reviews, port: {number: "9080"}}, weight: 90}
    - {weight: 10}
"#,
    )
    .unwrap()
    .remove(0);
    let problems = istio_document_problems(&crds, &doc).expect("a VirtualService");
    let expected = [
        "spec.http[0].retry: not in the schema",
        "spec.http[0].route[0].destination.port.number: expected integer",
        "spec.http[0].route[1].destination: required",
    ];
    for e in expected {
        assert!(
            problems.iter().any(|p| p.ends_with(e)),
            "{e} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");

    let dr = parse_documents(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: lb}\n\
         spec: {host: r, trafficPolicy: {loadBalancer: {simple: FASTEST}}}\n",
    )
    .unwrap()
    .remove(0);
    let problems = istio_document_problems(&crds, &dr).expect("a DestinationRule");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("enum"), "{problems:#?}");
}

// ---- identity -----------------------------------------------------------------------------------

#[test]
fn cluster_role_only_reads_what_meshpilot_watches() {
    let base = base_manifests();
    let role = find(&base, "ClusterRole", "meshpilot");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        let verbs: BTreeSet<&str> = strings(&rule["verbs"]).into_iter().collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{rule:?}");
        assert!(rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null());
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                granted.insert((group, resource));
            }
        }
    }
    let expected = BTreeSet::from([
        ("", "services"),
        ("", "endpoints"),
        ("", "pods"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.istio.io", "virtualservices"),
        ("networking.istio.io", "destinationrules"),
    ]);
    assert_eq!(granted, expected);

    let binding = find(&base, "ClusterRoleBinding", "meshpilot");
    assert_eq!(binding["roleRef"]["kind"].as_str(), Some("ClusterRole"));
    assert_eq!(binding["roleRef"]["name"].as_str(), Some("meshpilot"));
    let subjects = binding["subjects"].as_sequence().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"));
    assert_eq!(subjects[0]["name"].as_str(), Some("meshpilot"));
    assert_eq!(subjects[0]["namespace"].as_str(), Some("meshpilot-system"));
    find(&base, "ServiceAccount", "meshpilot");
}

// ---- the control plane Deployment ---------------------------------------------------------------

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn discovery_args(deployment: &Value) -> Vec<&str> {
    strings(&container(pod_spec(deployment), "containers", "discovery")["args"])
}

#[test]
fn deployment_args_are_flags_meshpilot_discovery_accepts() {
    let base = base_manifests();
    let deployment = find(&base, "Deployment", "meshpilot");
    let args = discovery_args(deployment);
    assert_eq!(args.first(), Some(&"discovery"));
    let known = meshpilot_help("discovery");
    for flag in flags_in_args(&args) {
        assert!(
            known.contains(&flag),
            "{flag} is not a `meshpilot discovery` flag"
        );
    }
    assert!(
        arg_value(&args, "--config-dir").is_none(),
        "in a cluster meshpilot reads the Kubernetes API, not files"
    );
    let sans: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--tls-san="))
        .collect();
    assert!(sans.contains(&"meshpilot.meshpilot-system.svc"), "{sans:?}");
    assert!(
        sans.contains(&"meshpilot.meshpilot-system.svc.cluster.local"),
        "{sans:?}"
    );
    assert!(arg_value(&args, "--max-connection-age").is_some());

    // The TLS directory is a mounted volume: the root filesystem is read-only.
    let tls_dir = arg_value(&args, "--tls-dir").expect("--tls-dir");
    let discovery = container(pod_spec(deployment), "containers", "discovery");
    let mount = discovery["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str() == Some(tls_dir))
        .expect("a volume mounted at --tls-dir");
    let volume = pod_spec(deployment)["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume is declared");
    assert!(volume["secret"].is_mapping() || volume["emptyDir"].is_mapping());
}

fn container_port(container: &Value, name: &str) -> Option<u64> {
    container["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
        .as_u64()
}

fn probe_port(container: &Value, probe: &Value) -> Option<u64> {
    let port = &probe["httpGet"]["port"];
    port.as_u64()
        .or_else(|| container_port(container, port.as_str()?))
}

#[test]
fn deployment_runs_locked_down_and_reports_readiness() {
    let base = base_manifests();
    let deployment = find(&base, "Deployment", "meshpilot");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let spec = pod_spec(deployment);
    assert_eq!(spec["serviceAccountName"].as_str(), Some("meshpilot"));
    let discovery = container(spec, "containers", "discovery");

    let ready = &discovery["readinessProbe"];
    assert_eq!(ready["httpGet"]["path"].as_str(), Some("/ready"));
    assert_eq!(probe_port(discovery, ready), Some(15014));
    let live = &discovery["livenessProbe"];
    assert!(live.is_mapping(), "liveness probe");
    assert_eq!(probe_port(discovery, live), Some(15014));

    let requests = &discovery["resources"]["requests"];
    assert!(requests["cpu"].is_string() && requests["memory"].is_string());

    let sc = &discovery["securityContext"];
    let pod_sc = &spec["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert!(sc["runAsUser"].as_u64().is_some_and(|uid| uid > 0));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null());
    for seccomp in [&sc["seccompProfile"], &pod_sc["seccompProfile"]] {
        assert_eq!(seccomp["type"].as_str(), Some("RuntimeDefault"));
    }

    let env: BTreeMap<&str, &str> = discovery["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(env.get("POD_NAME"), Some(&"metadata.name"));
    assert_eq!(env.get("POD_NAMESPACE"), Some(&"metadata.namespace"));

    // The Service and the PodDisruptionBudget select these pods.
    let labels = spec_labels(deployment);
    let selects = |selector: &Value| {
        let selector = selector.as_mapping().expect("selector");
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    assert!(selects(
        &find(&base, "Service", "meshpilot")["spec"]["selector"]
    ));
    assert!(selects(
        &find(&base, "PodDisruptionBudget", "meshpilot")["spec"]["selector"]["matchLabels"]
    ));
}

fn spec_labels(deployment: &Value) -> Mapping {
    deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .cloned()
        .expect("pod labels")
}

#[test]
fn service_exposes_xds_monitoring_and_webhook_ports() {
    let base = base_manifests();
    let service = find(&base, "Service", "meshpilot");
    let containers = pod_spec(find(&base, "Deployment", "meshpilot"))["containers"]
        .as_sequence()
        .expect("containers");
    let mut ports = BTreeMap::new();
    for port in service["spec"]["ports"].as_sequence().expect("ports") {
        let number = port["port"].as_u64().expect("port number");
        let target = &port["targetPort"];
        let target = target.as_u64().or_else(|| {
            let name = target.as_str()?;
            containers.iter().find_map(|c| container_port(c, name))
        });
        let target = target.unwrap_or_else(|| panic!("{port:?} reaches no container"));
        ports.insert(number, (port["name"].as_str().expect("port name"), target));
    }
    assert_eq!(
        ports,
        BTreeMap::from([
            (15010, ("grpc-xds", 15010)),
            (15012, ("https-xds", 15012)),
            (15014, ("http-monitoring", 15014)),
            (443, ("https-webhook", 15017)),
        ])
    );
}

// ---- sidecar injection --------------------------------------------------------------------------

#[test]
fn webhook_container_runs_meshpilot_webhook_with_the_shared_tls_material() {
    let base = base_manifests();
    let deployment = find(&base, "Deployment", "meshpilot");
    let webhook = container(pod_spec(deployment), "containers", "webhook");
    let args = strings(&webhook["args"]);
    assert_eq!(args.first(), Some(&"webhook"));
    let known = meshpilot_help("webhook");
    for flag in flags_in_args(&args) {
        assert!(
            known.contains(&flag),
            "{flag} is not a `meshpilot webhook` flag"
        );
    }
    let listen = arg_value(&args, "--listen").expect("--listen");
    assert!(listen.ends_with(":15017"), "{listen}");
    assert_eq!(container_port(webhook, "https-webhook"), Some(15017));
    let ready = &webhook["readinessProbe"];
    assert_eq!(ready["httpGet"]["scheme"].as_str(), Some("HTTPS"));
    assert_eq!(probe_port(webhook, ready), Some(15017));

    // The same Secret as discovery: its root is the caBundle and the sidecars' root.
    let tls_dir = arg_value(&args, "--tls-dir").expect("--tls-dir");
    let discovery = container(pod_spec(deployment), "containers", "discovery");
    assert_eq!(
        Some(tls_dir),
        arg_value(&discovery_args(deployment), "--tls-dir")
    );
    assert_eq!(mount_path(webhook, "tls"), Some(tls_dir));
    assert_eq!(mount_path(discovery, "tls"), Some(tls_dir));

    let sc = &webhook["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
}

#[test]
fn webhook_configuration_sends_pods_to_the_service_and_never_blocks_them() {
    let base = base_manifests();
    let config = find(
        &base,
        "MutatingWebhookConfiguration",
        "meshpilot-sidecar-injector",
    );
    assert_eq!(
        config["apiVersion"].as_str(),
        Some("admissionregistration.k8s.io/v1")
    );
    let service = find(&base, "Service", "meshpilot");
    let webhooks = config["webhooks"].as_sequence().expect("webhooks");
    assert_eq!(webhooks.len(), 2);
    for webhook in webhooks {
        let name = webhook["name"].as_str().unwrap();
        assert_eq!(
            strings(&webhook["admissionReviewVersions"]),
            ["v1"],
            "{name}"
        );
        assert_eq!(webhook["sideEffects"].as_str(), Some("None"), "{name}");
        assert_eq!(webhook["failurePolicy"].as_str(), Some("Ignore"), "{name}");
        let target = &webhook["clientConfig"]["service"];
        assert_eq!(target["name"], service["metadata"]["name"], "{name}");
        assert_eq!(
            target["namespace"], service["metadata"]["namespace"],
            "{name}"
        );
        assert_eq!(target["path"].as_str(), Some("/inject"), "{name}");
        let port = target["port"].as_u64().unwrap();
        assert!(
            service["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["port"].as_u64() == Some(port)),
            "{name}: the Service has port {port}"
        );
        let rules = webhook["rules"].as_sequence().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(strings(&rules[0]["operations"]), ["CREATE"]);
        assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
        assert_eq!(strings(&rules[0]["apiGroups"]), [""]);
    }
    let by_namespace = &webhooks[0];
    assert_eq!(
        by_namespace["namespaceSelector"]["matchLabels"]["istio-injection"].as_str(),
        Some("enabled")
    );
    let opt_out = &by_namespace["objectSelector"]["matchExpressions"][0];
    assert_eq!(opt_out["key"].as_str(), Some("sidecar.istio.io/inject"));
    assert_eq!(opt_out["operator"].as_str(), Some("NotIn"));
    assert_eq!(strings(&opt_out["values"]), ["false"]);
    let by_object = &webhooks[1];
    assert_eq!(
        by_object["objectSelector"]["matchLabels"]["sidecar.istio.io/inject"].as_str(),
        Some("true")
    );
    // Each pod matches one entry at most: the object entry skips labelled namespaces.
    let skip = &by_object["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(skip["key"].as_str(), Some("istio-injection"));
    assert_eq!(skip["operator"].as_str(), Some("DoesNotExist"));
}

// ---- the sidecar example ------------------------------------------------------------------------

fn sidecar_pod_spec() -> Value {
    let path = deploy_dir().join("sidecar-example/productpage.yaml");
    let deployment = load(&path)
        .into_iter()
        .find(|d| kind_of(d) == "Deployment")
        .expect("the example Deployment");
    pod_spec(&deployment).clone()
}

fn mount_path<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    container["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))?["mountPath"]
        .as_str()
}

#[test]
fn sidecar_example_iptables_init_runs_with_the_real_cli() {
    let spec = sidecar_pod_spec();
    let init = container(&spec, "initContainers", "meshpilot-iptables");
    let args = strings(&init["args"]);
    assert_eq!(args.first(), Some(&"iptables"));
    let out = Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args(&args)
        .arg("--dry-run")
        .output()
        .expect("run meshpilot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(rules.contains("-j REDIRECT --to-ports 15001"), "{rules}");
    assert!(rules.contains("-j REDIRECT --to-ports 15006"), "{rules}");

    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"].as_u64(), Some(0));
    let added: BTreeSet<&str> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    assert_eq!(added, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
}

/// `$(NAME)` references in container args, as the kubelet expands them.
fn expand_env_refs(arg: &str, env: &BTreeMap<&str, &str>) -> String {
    let mut out = arg.to_string();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    assert!(
        !out.contains("$("),
        "{arg}: refers to an undefined variable"
    );
    out
}

#[test]
fn sidecar_example_bootstrap_init_writes_what_envoy_reads() {
    let spec = sidecar_pod_spec();
    let init = container(&spec, "initContainers", "meshpilot-bootstrap");
    let envoy = container(&spec, "containers", "envoy");
    let args = strings(&init["args"]);
    assert_eq!(args.first(), Some(&"bootstrap"));

    // What the downward API would give this pod.
    let samples = BTreeMap::from([
        ("status.podIP", "10.244.1.20"),
        ("metadata.name", "productpage-v1-7d8f9-abcde"),
        ("metadata.namespace", "default"),
        ("spec.serviceAccountName", "bookinfo-productpage"),
        ("spec.nodeName", "node-1"),
        ("metadata.labels['app']", "productpage"),
        ("metadata.labels['version']", "v1"),
    ]);
    let env: BTreeMap<&str, &str> = init["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            let field = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap();
            let value = samples
                .get(field)
                .unwrap_or_else(|| panic!("no sample value for {field}"));
            (e["name"].as_str().unwrap(), *value)
        })
        .collect();

    let output = std::env::temp_dir().join(format!("meshpilot-deploy-{}.json", std::process::id()));
    let written = arg_value(&args, "--output").expect("--output");
    let mut run_args: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--output"))
        .map(|a| expand_env_refs(a, &env))
        .collect();
    run_args.push(format!("--output={}", output.display()));
    let out = Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args(&run_args)
        .output()
        .expect("run meshpilot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&output).expect("bootstrap written");
    let _ = std::fs::remove_file(&output);
    let bootstrap: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        bootstrap["node"]["id"],
        "sidecar~10.244.1.20~productpage-v1-7d8f9-abcde.default~default.svc.cluster.local"
    );
    assert_eq!(bootstrap["node"]["metadata"]["NAMESPACE"], "default");
    assert_eq!(
        bootstrap["node"]["metadata"]["LABELS"]["app"],
        "productpage"
    );
    assert_eq!(bootstrap["node"]["cluster"], "productpage.default");

    // The file lands on a volume Envoy mounts, at the path Envoy is started with.
    let written = Path::new(written);
    let bootstrap_dir = written.parent().unwrap().to_str().unwrap();
    let volume = init["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str() == Some(bootstrap_dir))
        .and_then(|m| m["name"].as_str())
        .expect("--output is on a volume");
    assert_eq!(mount_path(envoy, volume), Some(bootstrap_dir));
    let envoy_args = strings(&envoy["args"]);
    assert_eq!(arg_value(&envoy_args, "-c"), written.to_str());

    // Envoy reads the root certificate from the ConfigMap the operator publishes.
    let root_cert = Path::new(arg_value(&args, "--tls-root-cert").expect("--tls-root-cert"));
    assert_eq!(root_cert.file_name().unwrap(), "root-cert.pem");
    let ca_volume = spec["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["configMap"]["name"].as_str() == Some("meshpilot-ca-root-cert"))
        .expect("the meshpilot-ca-root-cert ConfigMap volume");
    assert_eq!(
        mount_path(envoy, ca_volume["name"].as_str().unwrap()),
        root_cert.parent().unwrap().to_str()
    );
    assert!(
        arg_value(&args, "--xds-address").is_some_and(|a| a.ends_with(":15012")),
        "the TLS port"
    );

    let sc = &envoy["securityContext"];
    assert_eq!(sc["runAsUser"].as_u64(), Some(1337));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let known = meshpilot_help("bootstrap");
    for flag in flags_in_args(&args) {
        assert!(
            known.contains(&flag),
            "{flag} is not a `meshpilot bootstrap` flag"
        );
    }
}

// ---- kustomize ----------------------------------------------------------------------------------

#[test]
fn kustomizations_name_files_that_exist() {
    let all = kustomizations();
    assert!(
        all.iter()
            .any(|(path, _)| path.parent() == Some(&base_dir()))
    );
    for (path, kustomization) in &all {
        let dir = path.parent().unwrap();
        for resource in strings(&kustomization["resources"]) {
            assert!(
                dir.join(resource).is_file(),
                "{}: {resource}",
                path.display()
            );
        }
        for base in strings(&kustomization["bases"]) {
            assert!(
                dir.join(base).join("kustomization.yaml").is_file(),
                "{}: {base}",
                path.display()
            );
        }
    }
    for patch in patch_files() {
        assert!(patch.is_file(), "{}", patch.display());
    }
    // Nothing in base/ is left out of its kustomization.
    let (_, base) = all
        .iter()
        .find(|(path, _)| path.parent() == Some(&base_dir()))
        .unwrap();
    let listed: BTreeSet<PathBuf> = strings(&base["resources"])
        .into_iter()
        .map(|r| base_dir().join(r))
        .collect();
    for file in yaml_files_under(&base_dir(), None) {
        assert!(
            is_kustomization(&file) || listed.contains(&file),
            "{} is not in base/kustomization.yaml",
            file.display()
        );
    }
}

/// The kubectl 1.20 `cargo xtask install` links into .tools/ (its kustomize v2.0 is the oldest
/// these files promise to work with), else whichever kubectl is on PATH.
fn kubectl() -> PathBuf {
    let pinned = repo_root().join(".tools/kube/bin/kubectl");
    if pinned.is_file() {
        pinned
    } else {
        PathBuf::from("kubectl")
    }
}

fn kustomize(dir: &Path) -> Vec<Value> {
    let kubectl = kubectl();
    let out = match Command::new(&kubectl).arg("kustomize").arg(dir).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "running {}: {e}. kubectl must be installed: Debian's `kubernetes-client` package \
             (`cargo xtask install` provides it, or apt-get install kubernetes-client)",
            kubectl.display()
        ),
    };
    assert!(
        out.status.success(),
        "{} kustomize {}: {}",
        kubectl.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_documents(&String::from_utf8_lossy(&out.stdout)).expect("kustomize output is YAML")
}

fn kinds_and_names(docs: &[Value]) -> BTreeSet<(String, String)> {
    docs.iter()
        .map(|d| (kind_of(d).to_string(), name_of(d).to_string()))
        .collect()
}

#[test]
fn kustomize_renders_with_kubectl() {
    let files: Vec<Value> = base_manifests().into_iter().map(|m| m.doc).collect();
    let rendered = kustomize(&base_dir());
    assert_eq!(kinds_and_names(&rendered), kinds_and_names(&files));
    let deployment = rendered
        .iter()
        .find(|d| kind_of(d) == "Deployment")
        .unwrap();
    let image = container(pod_spec(deployment), "containers", "discovery")["image"]
        .as_str()
        .unwrap();
    assert!(image.starts_with("meshpilot:"), "{image}");

    let old = kustomize(&deploy_dir().join("kustomize/overlays/kubernetes-1.20"));
    assert_eq!(kinds_and_names(&old), kinds_and_names(&files));
    let pdb = old
        .iter()
        .find(|d| kind_of(d) == "PodDisruptionBudget")
        .unwrap();
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1beta1"));
}
