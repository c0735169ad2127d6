//! `meshpilot discovery`: the control plane. Wires a config source into the index, debounces
//! changes into published snapshots, and serves ADS on the plaintext and TLS ports plus the
//! monitoring endpoint.

use crate::monitoring;
use anyhow::{Context, Result};
use clap::Args;
use meshpilot_model::{ChangeSet, Index, Kind};
use meshpilot_sources::kubernetes::{self, KubernetesConfig};
use meshpilot_sources::{FileEvent, FileSource, PendingPaths};
use meshpilot_xds::{
    AdsService, CacheOptions, DebounceConfig, Debouncer, Http2Settings, Publisher, ReadAhead,
    XdsMetrics, tls,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

#[derive(Args, Debug)]
pub struct DiscoveryArgs {
    /// Directory of Kubernetes/Istio YAML to serve, read recursively and watched (repeatable).
    /// Without it, meshpilot watches the Kubernetes API.
    #[arg(long = "config-dir")]
    pub config_dirs: Vec<PathBuf>,
    /// kubeconfig for the Kubernetes API; default: in-cluster config, `$KUBECONFIG`, then
    /// `~/.kube/config`.
    #[arg(long, conflicts_with = "config_dirs")]
    pub kubeconfig: Option<PathBuf>,
    /// Name of the cluster this control plane serves (Istio's `CLUSTER_ID`).
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Only namespaces matching this label selector (e.g. `istio-injection=enabled`) are part of
    /// the mesh.
    #[arg(long, conflicts_with = "config_dirs")]
    pub namespace_selector: Option<String>,
    /// Plaintext gRPC xDS.
    #[arg(long, default_value = "0.0.0.0:15010")]
    pub grpc_addr: SocketAddr,
    /// TLS gRPC xDS.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub secure_grpc_addr: SocketAddr,
    /// HTTP monitoring: /ready, /metrics and /debug/* (syncz, config_dump, registryz, configz,
    /// adsz).
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,
    /// Serve /debug/* to any client; by default only loopback clients (e.g. through
    /// `kubectl port-forward`) may read them, since they expose every proxy's config.
    #[arg(long)]
    pub debug_open: bool,
    /// Where the TLS serving certificate, key and root live (`cert-chain.pem`, `key.pem`,
    /// `root-cert.pem`); generated there on first start when absent.
    #[arg(long, default_value = "./meshpilot-tls")]
    pub tls_dir: PathBuf,
    /// Extra DNS names or IPs for a generated serving certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// CA bundle to verify client certificates on the TLS port (clients without one are still
    /// accepted).
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// Push once config has been quiet this long.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce_after: Duration,
    /// ...or at the latest this long after the first change of a burst.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub debounce_max: Duration,
    /// ...and at the latest this long after the first change when only endpoints changed
    /// (proxies waiting for a push turn merge what they are owed meanwhile).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub debounce_endpoints_max: Duration,
    /// Serve route configurations' virtual hosts over VHDS (Envoy's delta
    /// `VirtualHostDiscoveryService`, a stream of its own) instead of inline, so a
    /// VirtualService edit sends only the virtual hosts it changed. Off by default: istiod
    /// sends them inline, and virtual host names become `<route configuration>/<host>`.
    #[arg(long)]
    pub vhds: bool,
    /// Pushes of config changes that may be un-ACKed at once, over all proxies (istiod's
    /// `PILOT_PUSH_THROTTLE`). Proxies owed a change queue for a turn in order; a proxy holds its
    /// turn until it answers (for at most a second). Answers to a proxy's own requests do not
    /// queue.
    #[arg(long, default_value_t = meshpilot_xds::DEFAULT_PUSH_THROTTLE)]
    pub push_throttle: usize,
    /// gRPC keepalive ping interval.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
    /// gRPC keepalive ping timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,
    /// Close connections older than this (with a GOAWAY) so proxies rebalance across replicas.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_connection_age: Option<Duration>,
}

pub fn run(args: DiscoveryArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: DiscoveryArgs) -> Result<()> {
    let index = Arc::new(Mutex::new(Index::new(&args.domain)));
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    // Streams are admitted once `ready`; the debouncer raises it after publishing the first
    // complete snapshot.
    let (ready_tx, ready) = watch::channel(false);
    let (synced_tx, synced) = watch::channel(false);
    let _file_watcher = if args.config_dirs.is_empty() {
        let client = meshpilot_sources::kubernetes::client(args.kubeconfig.as_deref())
            .await
            .context("connecting to the Kubernetes API (or pass --config-dir DIR)")?;
        tracing::info!(cluster_id = %args.cluster_id, "watching the Kubernetes API");
        let config = KubernetesConfig {
            namespace_selector: args.namespace_selector.clone(),
        };
        let index = index.clone();
        tokio::spawn(async move {
            if let Err(e) = kubernetes::run(client, config, index, changes_tx, synced_tx).await {
                tracing::error!("Kubernetes source stopped: {e}");
            }
        });
        None
    } else {
        let mut source = FileSource::new(args.config_dirs.clone());
        for error in source.load_all() {
            tracing::warn!("{error}");
        }
        let change = source.apply_to(&mut index.lock().expect("index lock"));
        let _ = changes_tx.send(change);
        let (watcher, file_events) = meshpilot_sources::watch(&args.config_dirs)
            .context("watching the config directories")?;
        tokio::spawn(follow_files(source, file_events, index.clone(), changes_tx));
        synced_tx.send_replace(true);
        Some(watcher)
    };
    let snapshot = index.lock().expect("index lock").snapshot();
    let (publisher, published) =
        Publisher::with_options(snapshot, CacheOptions { vhds: args.vhds });
    let (shutdown_tx, shutdown) = watch::channel(false);
    let metrics = Arc::new(XdsMetrics::default());
    tokio::spawn(debounce(
        changes_rx,
        index.clone(),
        publisher,
        DebounceConfig {
            quiet: args.debounce_after,
            max: args.debounce_max,
            endpoints_max: args.debounce_endpoints_max,
        },
        synced,
        ready_tx,
        metrics.clone(),
    ));

    let control_plane_id = serde_json::json!({
        "Component": "meshpilot",
        "ID": std::env::var("POD_NAME").unwrap_or_else(|_| hostname()),
        "Info": {"version": env!("CARGO_PKG_VERSION"), "cluster_id": args.cluster_id},
    })
    .to_string();
    let service = AdsService::new(
        published.clone(),
        ready.clone(),
        shutdown.clone(),
        metrics.clone(),
        control_plane_id,
    )
    .with_push_throttle(args.push_throttle);
    let registry = service.registry();

    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "meshpilot.meshpilot-system.svc".to_string(),
        "istiod.istio-system.svc".to_string(),
    ];
    sans.extend(args.tls_sans.iter().cloned());
    let mut credentials = tls::load_or_generate(&args.tls_dir, &sans)
        .with_context(|| format!("TLS material in {}", args.tls_dir.display()))?;
    if let Some(ca) = &args.client_ca {
        credentials.client_ca_pem = Some(
            std::fs::read_to_string(ca).with_context(|| format!("--client-ca {}", ca.display()))?,
        );
    }
    tracing::info!(
        root_cert = %credentials.root_cert_path.display(),
        "TLS port serves a certificate signed by this root; give it to bootstraps (--tls-root-cert)"
    );
    let tls_acceptor = tokio_rustls::TlsAcceptor::from(
        tls::server_config(&credentials, b"h2").context("TLS configuration")?,
    );
    let settings = Http2Settings {
        keepalive_interval: args.keepalive_interval,
        keepalive_timeout: args.keepalive_timeout,
        max_connection_age: args.max_connection_age,
        ..Http2Settings::default()
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let plaintext_listener = listen(args.grpc_addr)
        .with_context(|| format!("listening for gRPC on {}", args.grpc_addr))?;
    let secure_listener = listen(args.secure_grpc_addr)
        .with_context(|| format!("listening for TLS gRPC on {}", args.secure_grpc_addr))?;
    // Both ports stop accepting, and close their connections, when the shutdown is signalled.
    let closing = CancellationToken::new();
    tokio::spawn({
        let closing = closing.clone();
        let stopped = stopped(shutdown.clone());
        async move {
            stopped.await;
            closing.cancel();
        }
    });
    let plaintext = meshpilot_xds::serve(
        reading_ahead(plaintext_listener),
        None,
        service.clone(),
        settings.clone(),
        closing.clone(),
    );
    let secure = meshpilot_xds::serve(
        reading_ahead(secure_listener),
        Some(tls_acceptor),
        service,
        settings,
        closing,
    );
    let monitor = monitoring::serve(
        args.monitoring_addr,
        monitoring::State {
            ready,
            published,
            metrics,
            registry,
            debug_open: args.debug_open,
        },
        stopped(shutdown.clone()),
    );
    tracing::info!(
        grpc = %args.grpc_addr,
        secure_grpc = %args.secure_grpc_addr,
        monitoring = %args.monitoring_addr,
        "serving"
    );
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    let ((), (), monitored) = tokio::join!(plaintext, secure, monitor);
    monitored.with_context(|| format!("monitoring on {}", args.monitoring_addr))?;
    Ok(())
}

/// The receive buffer of each xDS connection. A sender's kernel cuts its segments at half the
/// largest window the receiver ever offered, and with the default initial buffer (`tcp_rmem`,
/// 128 KiB) a connection offers ~95 KB and does not grow it for requests that come a few times
/// a second: a SotW EDS ACK, which repeats every subscribed name (55 KB at 1,000 services),
/// left Envoy as two segments (47,616 bytes and the rest), each taken in, acknowledged and
/// read on its own. With this buffer it fits in one. The kernel caps it at
/// `net.core.rmem_max`; it bounds what a connection may have queued unread, not what it holds.
const RECEIVE_BUFFER_BYTES: u32 = 512 * 1024;

/// Binds an xDS port with the accept backlog Go's listeners get (`net.core.somaxconn`), as
/// istiod's do. tokio's default of 1,024 overflowed when 2,000 sidecars connected at once (a
/// control-plane restart): the kernel dropped the excess handshakes and reset those
/// connections, and every one of them had to back off and reconnect.
fn listen(addr: SocketAddr) -> std::io::Result<TcpIncoming> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    // Inherited by accepted connections (see `RECEIVE_BUFFER_BYTES`).
    socket.set_recv_buffer_size(RECEIVE_BUFFER_BYTES)?;
    socket.bind(addr)?;
    let listener = socket.listen(accept_backlog())?;
    Ok(TcpIncoming::from(listener).with_nodelay(Some(true)))
}

/// Accepted connections, each reading ahead ([`ReadAhead`]): a SotW ACK of tens of KB then
/// costs two reads instead of one or two per HTTP/2 frame.
fn reading_ahead(
    incoming: TcpIncoming,
) -> impl Stream<Item = std::io::Result<ReadAhead<TcpStream>>> {
    incoming.map(|accepted| accepted.map(ReadAhead::new))
}

/// The system's cap on accept backlogs; the kernel clamps larger requests to it anyway.
fn accept_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4096)
}

fn log_rejections(snapshot: &meshpilot_model::Snapshot) {
    for rejected in snapshot.rejected() {
        tracing::warn!(
            kind = rejected.key.kind.kind_name(),
            namespace = %rejected.key.namespace,
            name = %rejected.key.name,
            "{rejected}"
        );
    }
}

/// How long a config file written to but not yet closed may delay reading a batch of changes.
const FILE_WRITE_GRACE: Duration = Duration::from_millis(20);

/// Applies file changes to the index as they happen; the debouncer decides when to publish.
async fn follow_files(
    mut source: FileSource,
    mut events: mpsc::UnboundedReceiver<FileEvent>,
    index: Arc<Mutex<Index>>,
    changes: mpsc::UnboundedSender<ChangeSet>,
) {
    let mut pending = PendingPaths::default();
    while let Some(event) = events.recv().await {
        pending.add(event);
        // A file still open for writing is read once closed, or after a short wait at the
        // latest: some writers keep files open.
        let deadline = tokio::time::Instant::now() + FILE_WRITE_GRACE;
        loop {
            while let Ok(more) = events.try_recv() {
                pending.add(more);
            }
            if pending.settled() {
                break;
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(more)) => pending.add(more),
                Ok(None) => return,
                Err(_elapsed) => break,
            }
        }
        for error in source.reload(&pending.take()) {
            tracing::warn!("{error}");
        }
        let change = {
            let mut index = index.lock().expect("index lock");
            source.apply_to(&mut index)
        };
        if !change.is_empty() && changes.send(change).is_err() {
            return;
        }
    }
}

/// Publishes debounced bursts of changes. Until the sources have synced nothing is published;
/// the first snapshot after the sync is published at once, and only then are streams admitted.
async fn debounce(
    mut changes: mpsc::UnboundedReceiver<ChangeSet>,
    index: Arc<Mutex<Index>>,
    mut publisher: Publisher,
    config: DebounceConfig,
    mut synced: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
    metrics: Arc<XdsMetrics>,
) {
    let mut debouncer = Debouncer::new(config);
    let mut ready_since_sync = false;
    loop {
        if !ready_since_sync && *synced.borrow_and_update() {
            // Everything changed so far goes out as one complete snapshot.
            while let Ok(change) = changes.try_recv() {
                count_inbound_updates(&metrics, &change);
                debouncer.add(change, Instant::now());
            }
            let burst = debouncer
                .take_due(Instant::now() + config.max)
                .unwrap_or_default();
            let snapshot = index.lock().expect("index lock").snapshot();
            log_rejections(&snapshot);
            tracing::info!(
                version = snapshot.version,
                services = snapshot.services().count(),
                virtual_services = snapshot.virtual_services().len(),
                destination_rules = snapshot.destination_rules().len(),
                "initial config synced and published"
            );
            publisher.publish(snapshot, burst);
            ready.send_replace(true);
            ready_since_sync = true;
        }
        let deadline = debouncer.deadline().filter(|_| ready_since_sync);
        tokio::select! {
            _ = synced.changed(), if !ready_since_sync => continue,
            change = changes.recv() => match change {
                Some(change) => {
                    count_inbound_updates(&metrics, &change);
                    debouncer.add(change, Instant::now());
                }
                None => return,
            },
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                let age = debouncer.burst_age(now).unwrap_or_default();
                let Some(burst) = debouncer.take_due(now) else { continue };
                let snapshot = index.lock().expect("index lock").snapshot();
                log_rejections(&snapshot);
                tracing::info!(
                    version = snapshot.version,
                    services = burst.services.len(),
                    endpoints = burst.endpoints.len(),
                    configs = burst.configs.len(),
                    pods = burst.pods.len(),
                    debounce_ms = age.as_millis() as u64,
                    "publishing config"
                );
                metrics.observe_debounce(age);
                publisher.publish(snapshot, burst);
            }
        }
    }
}

/// `pilot_inbound_updates{type}`: one per kind a source change touched.
fn count_inbound_updates(metrics: &XdsMetrics, change: &ChangeSet) {
    for kind in &change.kinds {
        metrics.count_inbound_update(inbound_label(*kind));
    }
}

fn inbound_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "services",
        Kind::Pod => "pods",
        Kind::Namespace => "namespaces",
        Kind::EndpointSlice | Kind::Endpoints => "endpoints",
        Kind::VirtualService => "virtualservices",
        Kind::DestinationRule => "destinationrules",
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "meshpilot".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn xds_listeners_queue_as_many_handshakes_as_the_system_allows() {
        let incoming = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = incoming.local_addr().unwrap().port();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("this test reads the backlog with `ss` from iproute2; install it");
        let text = String::from_utf8_lossy(&out.stdout);
        // A listening socket's Send-Q column is its accept backlog.
        let backlog: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|q| q.parse().ok())
            .unwrap_or_else(|| panic!("unexpected `ss` output: {text:?}"));
        assert_eq!(backlog, accept_backlog());
        assert!(backlog >= 1024, "somaxconn is {backlog}");
    }
}
