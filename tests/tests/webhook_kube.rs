//! `meshpilot webhook` called by a real kube-apiserver (1.20, built by `cargo xtask install`):
//! deploy/'s MutatingWebhookConfiguration, pointed at the webhook by URL on 127.0.0.1 with the
//! generated root as caBundle, injects Pods created in a namespace labelled
//! `istio-injection=enabled` and pods labelled `sidecar.istio.io/inject=true` elsewhere, and
//! leaves opted-out pods alone. The stored Pods are what the API server validated.
//!
//! Needs the meshpilot binary built (`cargo build -p meshpilot`; `cargo xtask test` does it).

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use meshpilot_tests::canary::IPTABLES_ARGS;
use meshpilot_tests::kube::ApiServer;
use meshpilot_tests::workspace_root;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const INJECTED_NS: &str = "shop";
const PLAIN_NS: &str = "tools";

/// `target/<profile>/meshpilot`, next to this test's `deps/` directory.
fn meshpilot_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test executable directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join("meshpilot");
    if !binary.is_file() {
        bail!(
            "{} not found: build it first (`cargo build -p meshpilot`)",
            binary.display()
        );
    }
    Ok(binary)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The webhook process, killed when dropped; its log is kept for failure messages.
struct Webhook {
    child: Child,
    log: PathBuf,
    port: u16,
    root_pem: String,
}

impl Webhook {
    fn start(work: &Path) -> Result<Webhook> {
        let port = free_port()?;
        let log = work.join("webhook.log");
        let tls_dir = work.join("tls");
        let output = std::fs::File::create(&log)?;
        let child = Command::new(meshpilot_binary()?)
            .args(["webhook", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-dir")
            .arg(&tls_dir)
            .args(["--tls-san", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("starting meshpilot webhook")?;
        let mut webhook = Webhook {
            child,
            log,
            port,
            root_pem: String::new(),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = webhook.child.try_wait()? {
                bail!(
                    "meshpilot webhook exited with {status}:\n{}",
                    webhook.logs()
                );
            }
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                break;
            }
            ensure!(
                started.elapsed() < WAIT,
                "webhook not listening within {WAIT:?}:\n{}",
                webhook.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        webhook.root_pem = std::fs::read_to_string(tls_dir.join("root-cert.pem"))
            .context("the generated root certificate")?;
        Ok(webhook)
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/inject", self.port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POSTs `body` to `/inject` over TLS verified against the generated root.
    fn post(&self, body: &[u8]) -> Result<(u16, Value)> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.root_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let name = ServerName::IpAddress(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        write!(
            tls,
            "POST /inject HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        tls.write_all(body)?;
        let mut response = Vec::new();
        match tls.read_to_end(&mut response) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8(response)?;
        let (head, body) = text.split_once("\r\n\r\n").context("an HTTP response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("a status code")?;
        Ok((status, serde_json::from_str(body)?))
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn kube_client(server: &ApiServer) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig_path())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// deploy/'s webhook configuration, calling `url` instead of the in-cluster Service.
fn webhook_configuration(url: &str, root_pem: &str) -> Result<MutatingWebhookConfiguration> {
    let path = workspace_root().join("deploy/kustomize/base/webhook.yaml");
    let mut config: MutatingWebhookConfiguration =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| path.display().to_string())?;
    for webhook in config.webhooks.iter_mut().flatten() {
        webhook.client_config = WebhookClientConfig {
            url: Some(url.to_string()),
            ca_bundle: Some(ByteString(root_pem.as_bytes().to_vec())),
            service: None,
        };
    }
    Ok(config)
}

/// A pod as the ReplicaSet of deploy-like productpage-v1 would create it: its template, a
/// generated name and the controller reference.
fn mk_productpage_pod(labels: Value, annotations: Value) -> Result<Pod> {
    let mut template_labels = json!({"app": "productpage", "version": "v1",
        "pod-template-hash": "5d9c8b7f6"});
    for (k, v) in labels.as_object().into_iter().flatten() {
        template_labels[k] = v.clone();
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "productpage-v1-5d9c8b7f6-",
            "labels": template_labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "productpage-v1-5d9c8b7f6",
                "uid": "8f4e5c57-0d6c-4a32-9a8e-3f1e0c2b7d11", "controller": true,
            }],
        },
        "spec": {
            "serviceAccountName": "bookinfo-productpage",
            "containers": [{
                "name": "productpage",
                "image": "docker.io/istio/examples-bookinfo-productpage-v1:1.20.2",
                "ports": [{"containerPort": 9080}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }))?)
}

fn names<T: k8s_openapi::serde::Serialize>(list: &Option<Vec<T>>) -> Vec<String> {
    list.iter()
        .flatten()
        .map(|item| {
            serde_json::to_value(item).expect("serializes")["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn is_injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref().expect("spec");
    names(&Some(spec.containers.clone())).contains(&"istio-proxy".to_string())
}

async fn create(client: &Client, namespace: &str, pod: &Pod) -> Result<Pod> {
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), pod)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_injects_pods_through_meshpilot_webhook() -> Result<()> {
    let server = ApiServer::start()?;
    let client = kube_client(&server).await?;
    let work = tempfile::tempdir()?;
    let webhook = Webhook::start(work.path())?;

    let namespaces = Api::<Namespace>::all(client.clone());
    for (name, labels) in [
        (INJECTED_NS, json!({"istio-injection": "enabled"})),
        (PLAIN_NS, json!({})),
    ] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?,
            )
            .await?;
    }
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(
            &PostParams::default(),
            &webhook_configuration(&webhook.url(), &webhook.root_pem)?,
        )
        .await
        .context("registering the webhook")?;

    // The API server picks up webhook configurations asynchronously: dry-run creations (the
    // webhook has no side effects, so it is called for them too) until one comes back injected.
    let probe = mk_productpage_pod(json!({}), json!({}))?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let started = Instant::now();
    loop {
        let answer = Api::<Pod>::namespaced(client.clone(), INJECTED_NS)
            .create(&dry_run, &probe)
            .await?;
        if is_injected(&answer) {
            break;
        }
        ensure!(
            started.elapsed() < WAIT,
            "the API server never called the webhook within {WAIT:?}; webhook log:\n{}",
            webhook.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("webhook in effect after {:.1?}", started.elapsed());

    // 1. A Deployment's pod in the labelled namespace: stored with the sidecar.
    let pod = create(&client, INJECTED_NS, &probe).await?;
    let spec = pod.spec.as_ref().unwrap();
    ensure!(
        names(&spec.init_containers) == ["istio-init"],
        "init containers {:?}\n{}",
        names(&spec.init_containers),
        webhook.logs()
    );
    ensure!(names(&Some(spec.containers.clone())) == ["productpage", "istio-proxy"]);
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let mut expected_args = vec!["iptables".to_string()];
    expected_args.extend(IPTABLES_ARGS.iter().map(|a| a.to_string()));
    ensure!(
        init.args.as_ref() == Some(&expected_args),
        "{:?}",
        init.args
    );
    let proxy = &spec.containers[1];
    let env: Vec<(String, Option<String>)> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    ensure!(
        env.contains(&(
            "ISTIO_META_WORKLOAD_NAME".into(),
            Some("productpage-v1".into())
        )),
        "{env:?}"
    );
    ensure!(
        names(&spec.volumes)
            == [
                "tmp",
                "istio-envoy",
                "istio-data",
                "istio-podinfo",
                "meshpilot-ca-root-cert"
            ]
    );
    ensure!(
        spec.security_context.as_ref().and_then(|s| s.fs_group) == Some(1337),
        "fsGroup"
    );
    let metadata = &pod.metadata;
    ensure!(
        metadata.labels.as_ref().unwrap()["security.istio.io/tlsMode"] == "istio",
        "tlsMode label"
    );
    let status: Value =
        serde_json::from_str(&metadata.annotations.as_ref().unwrap()["sidecar.istio.io/status"])?;
    ensure!(status["containers"] == json!(["istio-proxy"]), "{status}");

    // 2. Opted out by label (the configuration's objectSelector) or annotation (the webhook).
    let by_label = mk_productpage_pod(json!({"sidecar.istio.io/inject": "false"}), json!({}))?;
    let by_annotation = mk_productpage_pod(json!({}), json!({"sidecar.istio.io/inject": "false"}))?;
    for (what, pod) in [("label", by_label), ("annotation", by_annotation)] {
        let stored = create(&client, INJECTED_NS, &pod).await?;
        ensure!(!is_injected(&stored), "opted out by {what} but injected");
        ensure!(
            stored.spec.as_ref().unwrap().init_containers.is_none(),
            "{what}"
        );
    }

    // 3. An unlabelled namespace: only pods labelled sidecar.istio.io/inject=true.
    let plain = create(&client, PLAIN_NS, &probe).await?;
    ensure!(!is_injected(&plain), "injected without being asked");
    let asked = mk_productpage_pod(json!({"sidecar.istio.io/inject": "true"}), json!({}))?;
    let asked = create(&client, PLAIN_NS, &asked).await?;
    ensure!(
        is_injected(&asked),
        "the object selector's pod was not injected\n{}",
        webhook.logs()
    );

    // 4. A malformed review straight to the webhook: allowed, with a warning.
    let (status, answer) = webhook.post(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x-1","object":"not a pod"}}"#)?;
    ensure!(status == 200, "{status} {answer}");
    ensure!(answer["response"]["allowed"] == true, "{answer}");
    ensure!(answer["response"]["uid"] == "x-1", "{answer}");
    ensure!(
        answer["response"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("meshpilot")),
        "{answer}"
    );
    Ok(())
}
