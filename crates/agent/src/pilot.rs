//! pilot-agent's decisions, kept free of I/O so they can be tested: the pod's identity from
//! its environment, the node id and metadata the bootstrap carries, how to reach the control
//! plane, Envoy's command line, and what each signal the agent receives should do.
//!
//! The process supervision that acts on these decisions lives in `meshpilot agent`.

use crate::bootstrap::{BootstrapConfig, BootstrapError, XdsApi};
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The control plane's TLS xDS endpoint as the injected sidecar reaches it.
pub const DEFAULT_XDS_ADDRESS: &str = "meshpilot.meshpilot-system.svc:15012";
/// Where injection mounts the root certificate that verifies the control plane.
pub const DEFAULT_ROOT_CERT: &str = "/var/run/secrets/meshpilot/root-cert.pem";
/// The bootstrap file, on the in-memory emptyDir of the injected pod.
pub const DEFAULT_BOOTSTRAP_PATH: &str = "/etc/istio/proxy/envoy-rev.json";
/// The pod's labels as the downward API volume writes them.
pub const DEFAULT_POD_LABELS_PATH: &str = "/etc/istio/pod/labels";
/// The control plane's plaintext xDS port; no root certificate is needed to reach it.
pub const PLAINTEXT_XDS_PORT: u16 = 15010;
/// Environment prefixes whose variables become node metadata, later prefixes winning.
pub const METADATA_PREFIXES: [&str; 2] = ["ISTIO_META_", "MESHPILOT_META_"];
/// How many of Envoy's last stderr lines an early-exit report quotes.
pub const STDERR_TAIL_LINES: usize = 20;

const REQUIRED_ENV: [&str; 3] = ["POD_NAME", "POD_NAMESPACE", "INSTANCE_IP"];

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "missing environment variable(s) {}: the injected sidecar sets them from the \
         downward API (metadata.name, metadata.namespace, status.podIP)",
        .0.join(", ")
    )]
    MissingEnv(Vec<&'static str>),
    #[error("INSTANCE_IP {0:?} is not an IP address")]
    InvalidInstanceIp(String),
    #[error(
        "no root certificate to verify the control plane at {address}: {default} does not \
         exist; pass --tls-root-cert FILE, or use the plaintext port {PLAINTEXT_XDS_PORT}"
    )]
    NoRootCert { address: String, default: PathBuf },
    #[error("root certificate {0} does not exist")]
    RootCertMissing(PathBuf),
    #[error("bad pod labels file: line {line:?} is not KEY=\"VALUE\"")]
    InvalidLabels { line: String },
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
}

/// Who the sidecar is, as the downward API tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub pod_name: String,
    pub namespace: String,
    pub instance_ip: IpAddr,
    pub service_account: Option<String>,
    /// `ISTIO_META_*` / `MESHPILOT_META_*` with the prefix stripped, in precedence order
    /// (a later duplicate key wins).
    pub extra_metadata: Vec<(String, String)>,
}

/// Reads the identity from environment variables (`std::env::vars()` in the agent). Empty
/// values count as missing.
pub fn read_pod_identity(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<PodIdentity, AgentError> {
    let vars: BTreeMap<String, String> = vars
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let missing: Vec<&'static str> = REQUIRED_ENV
        .into_iter()
        .filter(|name| !vars.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        return Err(AgentError::MissingEnv(missing));
    }
    let raw_ip = &vars["INSTANCE_IP"];
    let instance_ip = raw_ip
        .trim()
        .parse()
        .map_err(|_| AgentError::InvalidInstanceIp(raw_ip.clone()))?;
    // BTreeMap order keeps the result stable; prefixes in order make the later one win.
    let extra_metadata = METADATA_PREFIXES
        .iter()
        .flat_map(|prefix| {
            vars.iter().filter_map(move |(name, value)| {
                let key = name.strip_prefix(prefix)?;
                (!key.is_empty()).then(|| (key.to_string(), value.clone()))
            })
        })
        .collect();
    Ok(PodIdentity {
        pod_name: vars["POD_NAME"].clone(),
        namespace: vars["POD_NAMESPACE"].clone(),
        instance_ip,
        service_account: vars.get("SERVICE_ACCOUNT").cloned(),
        extra_metadata,
    })
}

/// `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`.
pub fn build_node_id(identity: &PodIdentity, domain: &str) -> String {
    let PodIdentity {
        pod_name,
        namespace,
        instance_ip,
        ..
    } = identity;
    format!("sidecar~{instance_ip}~{pod_name}.{namespace}~{namespace}.svc.{domain}")
}

/// The metadata pilot-agent derives from the pod, then the prefixed environment variables,
/// which may override any of it. `labels`, when non-empty, become the `LABELS` struct.
pub fn build_node_metadata(
    identity: &PodIdentity,
    labels: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut metadata = vec![
        ("NAME".to_string(), identity.pod_name.clone()),
        ("POD_NAME".to_string(), identity.pod_name.clone()),
        ("NAMESPACE".to_string(), identity.namespace.clone()),
        ("INSTANCE_IPS".to_string(), identity.instance_ip.to_string()),
        ("INTERCEPTION_MODE".to_string(), "REDIRECT".to_string()),
    ];
    if let Some(account) = &identity.service_account {
        metadata.push(("SERVICE_ACCOUNT".to_string(), account.clone()));
    }
    if !labels.is_empty() {
        let json = serde_json::to_string(labels).expect("a string map always serialises");
        metadata.push(("LABELS".to_string(), json));
    }
    metadata.extend(identity.extra_metadata.iter().cloned());
    metadata
}

/// The root certificate to verify the control plane with, `None` for plaintext. An explicit
/// certificate always means TLS. Without one, port 15010 is plaintext (it never speaks TLS);
/// any other port needs the default certificate to exist.
pub fn choose_root_cert(
    xds_address: &str,
    explicit: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Result<Option<PathBuf>, AgentError> {
    let port = xds_address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .ok_or_else(|| BootstrapError::InvalidXdsAddress(xds_address.to_string()))?;
    if let Some(path) = explicit {
        return match exists(path) {
            true => Ok(Some(path.to_path_buf())),
            false => Err(AgentError::RootCertMissing(path.to_path_buf())),
        };
    }
    if port == PLAINTEXT_XDS_PORT {
        return Ok(None);
    }
    let default = Path::new(DEFAULT_ROOT_CERT);
    match exists(default) {
        true => Ok(Some(default.to_path_buf())),
        false => Err(AgentError::NoRootCert {
            address: xds_address.to_string(),
            default: default.to_path_buf(),
        }),
    }
}

/// What `meshpilot agent` was told, beyond the pod's identity.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub xds_address: String,
    /// Already resolved by [`choose_root_cert`].
    pub tls_root_cert: Option<PathBuf>,
    pub xds_api: XdsApi,
    pub domain: String,
}

/// The bootstrap for this pod, ready for [`crate::render_bootstrap`].
pub fn build_agent_bootstrap_config(
    identity: &PodIdentity,
    labels: &BTreeMap<String, String>,
    settings: &AgentSettings,
) -> BootstrapConfig {
    BootstrapConfig {
        node_id: build_node_id(identity, &settings.domain),
        xds_address: settings.xds_address.clone(),
        tls_root_cert: settings.tls_root_cert.clone(),
        xds_api: settings.xds_api,
        metadata: build_node_metadata(identity, labels),
        cluster: None,
    }
}

/// Parses the downward API's labels file: one `key="value"` per line, the value quoted and
/// escaped as a Go string.
pub fn parse_pod_labels(text: &str) -> Result<BTreeMap<String, String>, AgentError> {
    let mut labels = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let invalid = || AgentError::InvalidLabels {
            line: line.to_string(),
        };
        let (key, quoted) = line.split_once('=').ok_or_else(invalid)?;
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .filter(|_| !key.is_empty())
            .ok_or_else(invalid)?;
        labels.insert(key.to_string(), unescape(inner).ok_or_else(invalid)?);
    }
    Ok(labels)
}

fn unescape(quoted: &str) -> Option<String> {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            other => other,
        });
    }
    Some(out)
}

/// How Envoy is started.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub bootstrap_path: PathBuf,
    pub concurrency: u32,
    pub log_level: String,
    /// Also Envoy's own drain time, so connections close within the agent's drain window.
    pub drain_duration: Duration,
}

/// Envoy's arguments (without the program). Hot restart is always off: the agent never uses
/// it, and it would leave shared memory behind.
pub fn build_envoy_args(options: &EnvoyOptions) -> Vec<String> {
    let drain_seconds = options.drain_duration.as_secs_f64().ceil().max(1.0) as u64;
    vec![
        "-c".to_string(),
        options.bootstrap_path.display().to_string(),
        "--concurrency".to_string(),
        options.concurrency.to_string(),
        "--log-level".to_string(),
        options.log_level.clone(),
        "--drain-time-s".to_string(),
        drain_seconds.to_string(),
        // Close connections as soon as draining starts instead of spreading it over the window.
        "--drain-strategy".to_string(),
        "immediate".to_string(),
        "--disable-hot-restart".to_string(),
    ]
}

/// The signals the agent handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxySignal {
    Terminate,
    Interrupt,
    Hangup,
    Quit,
    User1,
    User2,
}

impl ProxySignal {
    pub const ALL: [ProxySignal; 6] = [
        ProxySignal::Terminate,
        ProxySignal::Interrupt,
        ProxySignal::Hangup,
        ProxySignal::Quit,
        ProxySignal::User1,
        ProxySignal::User2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProxySignal::Terminate => "SIGTERM",
            ProxySignal::Interrupt => "SIGINT",
            ProxySignal::Hangup => "SIGHUP",
            ProxySignal::Quit => "SIGQUIT",
            ProxySignal::User1 => "SIGUSR1",
            ProxySignal::User2 => "SIGUSR2",
        }
    }
}

/// Where the agent is in Envoy's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Envoy serves; nobody asked it to stop.
    Running,
    /// Envoy fails its health checks while connections finish; it is stopped when the drain
    /// period ends.
    Draining,
    /// Envoy has been told to exit; it is killed when the grace period ends.
    Stopping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// Pass the signal on; Envoy keeps running (SIGHUP is ignored, SIGUSR1 reopens logs).
    Forward(ProxySignal),
    /// Pass on a signal that makes Envoy exit at once, skipping the drain.
    ForwardAndStop(ProxySignal),
    /// Fail health checks, drain inbound listeners, stop Envoy after the drain period.
    StartDrain,
    /// A second SIGTERM cuts the drain short: SIGTERM to Envoy now.
    StopNow,
    /// A SIGTERM while Envoy is already stopping: SIGKILL.
    Kill,
}

impl SignalAction {
    /// The phase after this action, from `phase`.
    pub fn next_phase(self, phase: Phase) -> Phase {
        match self {
            SignalAction::Forward(_) => phase,
            SignalAction::StartDrain => Phase::Draining,
            SignalAction::ForwardAndStop(_) | SignalAction::StopNow | SignalAction::Kill => {
                Phase::Stopping
            }
        }
    }
}

/// SIGTERM drains (kubelet's way of stopping a pod); repeated, it escalates. Every other
/// signal goes to Envoy as is.
pub fn signal_action(signal: ProxySignal, phase: Phase) -> SignalAction {
    match (signal, phase) {
        (ProxySignal::Terminate, Phase::Running) => SignalAction::StartDrain,
        (ProxySignal::Terminate, Phase::Draining) => SignalAction::StopNow,
        (ProxySignal::Terminate, Phase::Stopping) => SignalAction::Kill,
        (ProxySignal::Interrupt | ProxySignal::Quit, _) => SignalAction::ForwardAndStop(signal),
        (ProxySignal::Hangup | ProxySignal::User1 | ProxySignal::User2, _) => {
            SignalAction::Forward(signal)
        }
    }
}

/// The agent's exit status for Envoy's: its code, or 128 + the signal that killed it, as a
/// shell reports it.
pub fn exit_code(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// The last lines a process wrote, for error reports.
#[derive(Clone, Debug)]
pub struct OutputTail {
    lines: VecDeque<String>,
    capacity: usize,
}

impl OutputTail {
    pub fn new(capacity: usize) -> OutputTail {
        OutputTail {
            lines: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn push(&mut self, line: &str) {
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line.trim_end().to_string());
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The lines, oldest first, each indented for a log message.
    pub fn render(&self) -> String {
        self.lines
            .iter()
            .map(|line| format!("  | {line}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn mk_pod_env() -> Vec<(String, String)> {
        mk_env(&[
            ("POD_NAME", "productpage-v1-6b7f6dc5f-ccccc"),
            ("POD_NAMESPACE", "default"),
            ("INSTANCE_IP", "10.244.1.20"),
            ("SERVICE_ACCOUNT", "bookinfo-productpage"),
            ("PATH", "/usr/bin"),
        ])
    }

    fn mk_identity() -> PodIdentity {
        read_pod_identity(mk_pod_env()).unwrap()
    }

    #[test]
    fn identity_comes_from_the_downward_api_variables() {
        let identity = mk_identity();
        assert_eq!(identity.pod_name, "productpage-v1-6b7f6dc5f-ccccc");
        assert_eq!(identity.namespace, "default");
        assert_eq!(identity.instance_ip.to_string(), "10.244.1.20");
        assert_eq!(
            identity.service_account.as_deref(),
            Some("bookinfo-productpage")
        );
        assert!(identity.extra_metadata.is_empty());
    }

    #[test]
    fn missing_or_empty_identity_variables_are_named() {
        let mut env = mk_env(&[("POD_NAME", "p"), ("POD_NAMESPACE", "")]);
        let err = read_pod_identity(env.clone()).unwrap_err();
        assert!(
            matches!(&err, AgentError::MissingEnv(names) if names == &["POD_NAMESPACE", "INSTANCE_IP"]),
            "{err}"
        );
        assert!(err.to_string().contains("POD_NAMESPACE, INSTANCE_IP"));
        env.extend(mk_env(&[
            ("POD_NAMESPACE", "ns"),
            ("INSTANCE_IP", "pod-ip"),
        ]));
        assert!(matches!(
            read_pod_identity(env),
            Err(AgentError::InvalidInstanceIp(ip)) if ip == "pod-ip"
        ));
    }

    #[test]
    fn prefixed_variables_become_metadata_and_meshpilot_wins() {
        let mut env = mk_pod_env();
        env.extend(mk_env(&[
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("ISTIO_META_MESH_ID", "istio"),
            ("MESHPILOT_META_MESH_ID", "mesh1"),
            ("ISTIO_META_", "no key"),
            ("ISTIO_METAJSON_X", "not ours"),
        ]));
        assert_eq!(
            read_pod_identity(env).unwrap().extra_metadata,
            vec![
                ("CLUSTER_ID".to_string(), "Kubernetes".to_string()),
                ("MESH_ID".to_string(), "istio".to_string()),
                ("MESH_ID".to_string(), "mesh1".to_string()),
            ]
        );
    }

    #[test]
    fn node_id_follows_pilot_agent() {
        assert_eq!(
            build_node_id(&mk_identity(), "cluster.local"),
            "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local"
        );
        let mut v6 = mk_identity();
        v6.instance_ip = "fd00::20".parse().unwrap();
        assert_eq!(
            build_node_id(&v6, "corp.example"),
            "sidecar~fd00::20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.corp.example"
        );
    }

    #[test]
    fn metadata_has_pod_facts_then_overrides() {
        let mut identity = mk_identity();
        identity.extra_metadata = vec![
            ("INTERCEPTION_MODE".to_string(), "TPROXY".to_string()),
            ("CLUSTER_ID".to_string(), "Kubernetes".to_string()),
        ];
        let labels = BTreeMap::from([("app".to_string(), "productpage".to_string())]);
        let metadata = build_node_metadata(&identity, &labels);
        let keys: Vec<&str> = metadata.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "NAME",
                "POD_NAME",
                "NAMESPACE",
                "INSTANCE_IPS",
                "INTERCEPTION_MODE",
                "SERVICE_ACCOUNT",
                "LABELS",
                "INTERCEPTION_MODE",
                "CLUSTER_ID"
            ]
        );
        assert_eq!(metadata[4].1, "REDIRECT");
        assert_eq!(metadata[6].1, r#"{"app":"productpage"}"#);
    }

    #[test]
    fn the_bootstrap_carries_identity_metadata_and_service_cluster() {
        let mut identity = mk_identity();
        identity.extra_metadata = vec![(
            "ISTIO_VERSION_JSON".to_string(),
            r#"{"major":1}"#.to_string(),
        )];
        let labels = BTreeMap::from([("app".to_string(), "productpage".to_string())]);
        let settings = AgentSettings {
            xds_address: "127.0.0.1:15010".to_string(),
            tls_root_cert: None,
            xds_api: XdsApi::Delta,
            domain: "cluster.local".to_string(),
        };
        let config = build_agent_bootstrap_config(&identity, &labels, &settings);
        let json: serde_json::Value =
            serde_json::from_str(&crate::render_bootstrap(&config).unwrap()).unwrap();
        let node = &json["node"];
        assert_eq!(node["id"], build_node_id(&identity, "cluster.local"));
        assert_eq!(node["cluster"], "productpage.default");
        assert_eq!(node["metadata"]["LABELS"]["app"], "productpage");
        assert_eq!(node["metadata"]["INTERCEPTION_MODE"], "REDIRECT");
        assert_eq!(node["metadata"]["SERVICE_ACCOUNT"], "bookinfo-productpage");
        assert_eq!(node["metadata"]["ISTIO_VERSION_JSON"]["major"], 1.0);
    }

    #[test]
    fn root_cert_choice() {
        let present = |_: &Path| true;
        let absent = |_: &Path| false;
        let explicit = Path::new("/certs/root.pem");
        assert_eq!(
            choose_root_cert("cp:15010", Some(explicit), present).unwrap(),
            Some(explicit.to_path_buf())
        );
        assert!(matches!(
            choose_root_cert("cp:15012", Some(explicit), absent),
            Err(AgentError::RootCertMissing(_))
        ));
        // The plaintext port stays plaintext even when the default certificate is mounted.
        assert_eq!(choose_root_cert("cp:15010", None, present).unwrap(), None);
        assert_eq!(
            choose_root_cert(DEFAULT_XDS_ADDRESS, None, present).unwrap(),
            Some(PathBuf::from(DEFAULT_ROOT_CERT))
        );
        let err = choose_root_cert(DEFAULT_XDS_ADDRESS, None, absent).unwrap_err();
        assert!(err.to_string().contains("--tls-root-cert"), "{err}");
        assert!(matches!(
            choose_root_cert("no-port", None, present),
            Err(AgentError::Bootstrap(BootstrapError::InvalidXdsAddress(_)))
        ));
    }

    #[test]
    fn downward_api_labels_parse() {
        let text = "app=\"productpage\"\nversion=\"v1\"\nnote=\"say \\\"hi\\\"\\n\"\n\n";
        let labels = parse_pod_labels(text).unwrap();
        assert_eq!(labels["app"], "productpage");
        assert_eq!(labels["version"], "v1");
        assert_eq!(labels["note"], "say \"hi\"\n");
        assert_eq!(parse_pod_labels("").unwrap(), BTreeMap::new());
        for bad in ["app", "app=productpage", "=\"x\"", "app=\"", "app=\"x\\\""] {
            assert!(parse_pod_labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn envoy_args_always_disable_hot_restart() {
        let args = build_envoy_args(&EnvoyOptions {
            bootstrap_path: PathBuf::from("/etc/istio/proxy/envoy-rev.json"),
            concurrency: 2,
            log_level: "warning".to_string(),
            drain_duration: Duration::from_millis(2500),
        });
        assert_eq!(
            args.join(" "),
            "-c /etc/istio/proxy/envoy-rev.json --concurrency 2 --log-level warning \
             --drain-time-s 3 --drain-strategy immediate --disable-hot-restart"
        );
        let short = build_envoy_args(&EnvoyOptions {
            bootstrap_path: PathBuf::from("b.json"),
            concurrency: 1,
            log_level: "debug".to_string(),
            drain_duration: Duration::ZERO,
        });
        assert_eq!(short[7], "1");
    }

    #[test]
    fn sigterm_drains_then_escalates() {
        use ProxySignal::*;
        let mut phase = Phase::Running;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let action = signal_action(Terminate, phase);
            phase = action.next_phase(phase);
            seen.push((action, phase));
        }
        assert_eq!(
            seen,
            [
                (SignalAction::StartDrain, Phase::Draining),
                (SignalAction::StopNow, Phase::Stopping),
                (SignalAction::Kill, Phase::Stopping),
            ]
        );
    }

    #[test]
    fn other_signals_are_forwarded() {
        use ProxySignal::*;
        for phase in [Phase::Running, Phase::Draining, Phase::Stopping] {
            for signal in [Hangup, User1, User2] {
                let action = signal_action(signal, phase);
                assert_eq!(action, SignalAction::Forward(signal));
                assert_eq!(action.next_phase(phase), phase);
            }
            for signal in [Interrupt, Quit] {
                let action = signal_action(signal, phase);
                assert_eq!(action, SignalAction::ForwardAndStop(signal));
                assert_eq!(action.next_phase(phase), Phase::Stopping);
            }
        }
        assert_eq!(ProxySignal::ALL.len(), 6);
        assert_eq!(Quit.name(), "SIGQUIT");
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(Some(0), None), 0);
        assert_eq!(exit_code(Some(3), None), 3);
        assert_eq!(exit_code(None, Some(9)), 137);
        assert_eq!(exit_code(None, None), 1);
    }

    #[test]
    fn output_tail_keeps_the_last_lines() {
        let mut tail = OutputTail::new(2);
        assert!(tail.is_empty());
        for line in ["one", "two\n", "three"] {
            tail.push(line);
        }
        assert_eq!(tail.render(), "  | two\n  | three\n");
        let mut none = OutputTail::new(0);
        none.push("x");
        assert!(none.is_empty());
    }
}
