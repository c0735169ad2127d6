//! `meshpilot agent`: pilot-agent's role in the sidecar container. It writes the bootstrap for
//! the pod it runs in, starts Envoy, forwards signals to it, drains it on SIGTERM and exits
//! with Envoy's status.
//!
//! The decisions (environment to bootstrap, signal to action) live in
//! `meshpilot_agent::pilot`; this module only acts on them.

use crate::bootstrap_cmd::XdsApiArg;
use anyhow::{Context, Result, bail};
use clap::Args;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshpilot_agent::XdsApi;
use meshpilot_agent::bootstrap::{ADMIN_PORT, render_bootstrap};
use meshpilot_agent::pilot::{
    self, AgentSettings, EnvoyOptions, OutputTail, Phase, ProxySignal, STDERR_TAIL_LINES,
    SignalAction,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Each admin call during the drain gets this long; a hung Envoy must not stall the drain.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
const READY_POLL: Duration = Duration::from_millis(250);
/// After this long without readiness the agent says so (and keeps waiting).
const READY_WARNING_AFTER: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The control plane's ADS address, HOST:PORT.
    #[arg(long, default_value = pilot::DEFAULT_XDS_ADDRESS)]
    pub xds_address: String,
    /// PEM file of CA certificates that verify the control plane. Without it: plaintext when
    /// the port is 15010, else /var/run/secrets/meshpilot/root-cert.pem, which must exist.
    #[arg(long, value_name = "FILE")]
    pub tls_root_cert: Option<PathBuf>,
    /// ADS flavour: state of the world or incremental.
    #[arg(long, value_enum, default_value_t = XdsApiArg::Delta)]
    pub xds_api: XdsApiArg,
    /// The Envoy executable (looked up on PATH when it has no slash).
    #[arg(long, default_value = "envoy")]
    pub envoy_binary: PathBuf,
    /// Where the bootstrap is written before Envoy starts.
    #[arg(long, default_value = pilot::DEFAULT_BOOTSTRAP_PATH)]
    pub bootstrap_path: PathBuf,
    /// The downward API labels file; its labels become the LABELS metadata when it exists.
    #[arg(long, default_value = pilot::DEFAULT_POD_LABELS_PATH)]
    pub pod_labels: PathBuf,
    /// After SIGTERM, how long Envoy fails its health checks and drains before it is stopped
    /// (Istio's terminationDrainDuration).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_duration: Duration,
    /// How long Envoy gets to exit after its SIGTERM before it is killed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub stop_grace_period: Duration,
    /// Cluster DNS domain, the node id's last part.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// Envoy's worker threads.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u32,
    /// Envoy's log level (trace, debug, info, warning, error, critical, off).
    #[arg(long, default_value = "warning")]
    pub proxy_log_level: String,
}

pub fn run(args: AgentArgs) -> Result<()> {
    let envoy_args = prepare(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(supervise(&args, &envoy_args))?;
    drop(runtime);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// Reads the pod's identity, writes the bootstrap and returns Envoy's arguments.
fn prepare(args: &AgentArgs) -> Result<Vec<String>> {
    let identity = pilot::read_pod_identity(std::env::vars())?;
    let tls_root_cert =
        pilot::choose_root_cert(&args.xds_address, args.tls_root_cert.as_deref(), |path| {
            path.is_file()
        })?;
    let settings = AgentSettings {
        xds_address: args.xds_address.clone(),
        tls_root_cert,
        xds_api: match args.xds_api {
            XdsApiArg::Sotw => XdsApi::Sotw,
            XdsApiArg::Delta => XdsApi::Delta,
        },
        domain: args.domain.clone(),
    };
    let labels = read_labels(&args.pod_labels);
    let config = pilot::build_agent_bootstrap_config(&identity, &labels, &settings);
    let text = render_bootstrap(&config)?;
    if let Some(dir) = args
        .bootstrap_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the bootstrap directory {}", dir.display()))?;
    }
    std::fs::write(&args.bootstrap_path, text)
        .with_context(|| format!("writing the bootstrap to {}", args.bootstrap_path.display()))?;
    let transport = match &settings.tls_root_cert {
        Some(root) => format!("TLS verified by {}", root.display()),
        None => "plaintext".to_string(),
    };
    info!(
        node_id = %config.node_id,
        bootstrap = %args.bootstrap_path.display(),
        "control plane {} ({transport})",
        settings.xds_address
    );
    Ok(pilot::build_envoy_args(&EnvoyOptions {
        bootstrap_path: args.bootstrap_path.clone(),
        concurrency: args.concurrency,
        log_level: args.proxy_log_level.clone(),
        drain_duration: args.drain_duration,
    }))
}

/// The labels file is optional outside a pod; a broken one costs the LABELS metadata only.
fn read_labels(path: &Path) -> BTreeMap<String, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(err) => {
            warn!("cannot read pod labels from {}: {err}", path.display());
            return BTreeMap::new();
        }
    };
    pilot::parse_pod_labels(&text).unwrap_or_else(|err| {
        warn!("ignoring pod labels in {}: {err}", path.display());
        BTreeMap::new()
    })
}

/// Runs Envoy to completion and returns the agent's exit code.
async fn supervise(args: &AgentArgs, envoy_args: &[String]) -> Result<i32> {
    // Handlers first: a SIGTERM that arrives right after Envoy starts must still drain.
    let mut signals = listen_for_signals()?;
    let mut child = start_envoy(&args.envoy_binary, envoy_args)?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
        .context("Envoy has no process id")?;
    info!(pid = pid.as_raw(), "started Envoy");
    let stderr = child.stderr.take().context("Envoy's stderr is not piped")?;
    let stderr_copy = tokio::spawn(copy_stderr(stderr));
    let readiness = tokio::spawn(log_when_ready());

    let mut phase = Phase::Running;
    let mut deadline: Option<Instant> = None;
    let status = loop {
        let current_deadline = deadline;
        let timer = async move {
            match current_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => break status.context("waiting for Envoy")?,
            Some(signal) = signals.recv() => {
                let action = pilot::signal_action(signal, phase);
                info!("received {}: {}", signal.name(), describe(action, args));
                act(action, pid, &mut child, &mut deadline, args);
                phase = action.next_phase(phase);
            }
            () = timer => {
                deadline = match phase {
                    Phase::Draining => {
                        info!("drain period over; sending SIGTERM to Envoy");
                        send(pid, ProxySignal::Terminate);
                        phase = Phase::Stopping;
                        Some(Instant::now() + args.stop_grace_period)
                    }
                    Phase::Running | Phase::Stopping => {
                        warn!(
                            "Envoy still running {:?} after it was told to stop; sending SIGKILL",
                            args.stop_grace_period
                        );
                        let _ = child.start_kill();
                        None
                    }
                };
            }
        }
    };
    readiness.abort();
    let tail = tokio::time::timeout(Duration::from_secs(1), stderr_copy)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| OutputTail::new(0));
    Ok(report_exit(status, phase, &tail))
}

fn describe(action: SignalAction, args: &AgentArgs) -> String {
    match action {
        SignalAction::Forward(signal) => format!("forwarding {} to Envoy", signal.name()),
        SignalAction::ForwardAndStop(signal) => {
            format!("forwarding {} to Envoy, which exits", signal.name())
        }
        SignalAction::StartDrain => format!(
            "draining Envoy for {:?} (failing health checks, draining inbound listeners)",
            args.drain_duration
        ),
        SignalAction::StopNow => "cutting the drain short; sending SIGTERM to Envoy".to_string(),
        SignalAction::Kill => "sending SIGKILL to Envoy".to_string(),
    }
}

fn act(
    action: SignalAction,
    pid: Pid,
    child: &mut Child,
    deadline: &mut Option<Instant>,
    args: &AgentArgs,
) {
    let stop_deadline = Instant::now() + args.stop_grace_period;
    match action {
        SignalAction::Forward(signal) => send(pid, signal),
        SignalAction::ForwardAndStop(signal) => {
            send(pid, signal);
            // An earlier stop keeps its (sooner) deadline.
            deadline.get_or_insert(stop_deadline);
        }
        SignalAction::StartDrain => {
            tokio::spawn(start_drain());
            *deadline = Some(Instant::now() + args.drain_duration);
        }
        SignalAction::StopNow => {
            send(pid, ProxySignal::Terminate);
            *deadline = Some(stop_deadline);
        }
        SignalAction::Kill => {
            let _ = child.start_kill();
            *deadline = None;
        }
    }
}

fn report_exit(status: ExitStatus, phase: Phase, tail: &OutputTail) -> i32 {
    let code = pilot::exit_code(status.code(), status.signal());
    if phase == Phase::Running {
        let last_lines = if tail.is_empty() {
            "  (Envoy wrote nothing to stderr)\n".to_string()
        } else {
            tail.render()
        };
        error!(
            "Envoy exited on its own with {status} (exit code {code}); the last lines of its \
             stderr:\n{last_lines}"
        );
    } else {
        info!("Envoy exited with {status}");
    }
    code
}

fn listen_for_signals() -> Result<mpsc::UnboundedReceiver<ProxySignal>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    for proxy_signal in ProxySignal::ALL {
        let kind = match proxy_signal {
            ProxySignal::Terminate => SignalKind::terminate(),
            ProxySignal::Interrupt => SignalKind::interrupt(),
            ProxySignal::Hangup => SignalKind::hangup(),
            ProxySignal::Quit => SignalKind::quit(),
            ProxySignal::User1 => SignalKind::user_defined1(),
            ProxySignal::User2 => SignalKind::user_defined2(),
        };
        let mut stream = signal(kind)
            .with_context(|| format!("installing a handler for {}", proxy_signal.name()))?;
        let sender = sender.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if sender.send(proxy_signal).is_err() {
                    break;
                }
            }
        });
    }
    Ok(receiver)
}

fn start_envoy(binary: &Path, envoy_args: &[String]) -> Result<Child> {
    let spawned = Command::new(binary)
        .args(envoy_args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    match spawned {
        Ok(child) => Ok(child),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let place = if binary.components().count() > 1 {
                "does not exist"
            } else {
                "is not on PATH"
            };
            bail!(
                "cannot start Envoy: {} {place}; install Envoy or pass --envoy-binary PATH",
                binary.display()
            )
        }
        Err(err) => Err(err).with_context(|| {
            format!(
                "cannot start Envoy: {} {}",
                binary.display(),
                envoy_args.join(" ")
            )
        }),
    }
}

/// Copies Envoy's stderr to ours line by line, keeping the last lines for an exit report.
async fn copy_stderr(stderr: ChildStderr) -> OutputTail {
    let mut tail = OutputTail::new(STDERR_TAIL_LINES);
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = std::io::stderr().lock().write_all(&line);
                tail.push(&String::from_utf8_lossy(&line));
            }
        }
    }
    tail
}

fn send(pid: Pid, proxy_signal: ProxySignal) {
    let signal = match proxy_signal {
        ProxySignal::Terminate => Signal::SIGTERM,
        ProxySignal::Interrupt => Signal::SIGINT,
        ProxySignal::Hangup => Signal::SIGHUP,
        ProxySignal::Quit => Signal::SIGQUIT,
        ProxySignal::User1 => Signal::SIGUSR1,
        ProxySignal::User2 => Signal::SIGUSR2,
    };
    // Envoy is our unreaped child, so its pid cannot belong to anyone else yet.
    if let Err(err) = nix::sys::signal::kill(pid, signal) {
        warn!("cannot send {} to Envoy: {err}", proxy_signal.name());
    }
}

fn admin_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request to Envoy's admin interface; returns the status code.
async fn admin_request(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: hyper::Method,
    path: &str,
) -> Result<u16> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{ADMIN_PORT}{path}"))
        .body(Empty::new())?;
    let response = tokio::time::timeout(ADMIN_TIMEOUT, client.request(request))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {ADMIN_TIMEOUT:?}"))??;
    Ok(response.status().as_u16())
}

/// Makes `/ready` (and so 15021 `/healthz/ready`) answer 503 DRAINING, then drains the
/// inbound listeners while outbound traffic keeps flowing for the app's last calls.
async fn start_drain() {
    let client = admin_client();
    for path in ["/healthcheck/fail", "/drain_listeners?graceful&inboundonly"] {
        match admin_request(&client, hyper::Method::POST, path).await {
            Ok(200) => debug!("admin POST {path}: 200"),
            Ok(status) => warn!("admin POST {path} answered {status}"),
            Err(err) => warn!("admin POST {path} failed: {err:#}"),
        }
    }
}

/// Logs once when Envoy's admin `/ready` first answers 200.
async fn log_when_ready() {
    let client = admin_client();
    let started = Instant::now();
    let mut warned = false;
    loop {
        if let Ok(200) = admin_request(&client, hyper::Method::GET, "/ready").await {
            info!("Envoy is ready after {:?}", started.elapsed());
            return;
        }
        if !warned && started.elapsed() >= READY_WARNING_AFTER {
            warned = true;
            warn!(
                "Envoy is not ready after {READY_WARNING_AFTER:?}: it waits for its first \
                 listeners and clusters from the control plane"
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}
