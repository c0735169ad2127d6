//! A real Kubernetes API server for integration tests: etcd and kube-apiserver 1.20 (built from
//! Debian bookworm's source package by `cargo xtask install` into `.tools/kube/bin/`) on
//! loopback ports, with one static admin token.
//!
//! There is no controller-manager, scheduler or kubelet: nothing creates ServiceAccounts,
//! Endpoints or EndpointSlices, and Pods stay Pending, so tests write Endpoints,
//! EndpointSlices and Pod status themselves. 1.20 serves EndpointSlice only as
//! `discovery.k8s.io/v1beta1`.
//!
//! Cleanup: dropping the [`ApiServer`] kills both processes and removes its directory;
//! [`ApiServer::start`] first kills the processes of earlier runs that died before they could
//! clean up (found by the owner pid in their directory's name).

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Services get ClusterIPs from here.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
/// The `iss` of service-account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Prefix of every run's directory, followed by the owner pid and a dash.
const DIR_PREFIX: &str = "meshpilot-kube-";
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// kube-apiserver 1.20 is ready in about 4 s on an idle machine; CI machines are busier.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const LOG_TAIL_LINES: usize = 30;

/// `kube-apiserver`: `$MESHPILOT_KUBE_APISERVER`, else `.tools/kube/bin/kube-apiserver` as
/// `cargo xtask install` leaves it. Missing is an error saying how to get it, never a skip.
pub fn kube_apiserver_binary() -> Result<PathBuf> {
    tool(
        "MESHPILOT_KUBE_APISERVER",
        "kube-apiserver",
        "kube-apiserver 1.20",
    )
}

/// `etcd`: `$MESHPILOT_ETCD`, else `.tools/kube/bin/etcd` (a link to Debian's).
pub fn etcd_binary() -> Result<PathBuf> {
    tool("MESHPILOT_ETCD", "etcd", "etcd (Debian's etcd-server)")
}

/// Debian's kubectl 1.20: `$MESHPILOT_KUBECTL`, else `.tools/kube/bin/kubectl`.
pub fn kubectl_binary() -> Result<PathBuf> {
    tool(
        "MESHPILOT_KUBECTL",
        "kubectl",
        "kubectl 1.20 (Debian's kubernetes-client)",
    )
}

fn tool(variable: &str, name: &str, what: &str) -> Result<PathBuf> {
    let candidate = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join(".tools/kube/bin").join(name));
    if !candidate.is_file() {
        bail!(
            "this test needs {what}, not found at {}: run `cargo xtask install` as root (it \
             builds kube-apiserver from Debian's kubernetes source package and links etcd and \
             kubectl into .tools/kube/bin/), or set {variable}",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// etcd plus kube-apiserver on 127.0.0.1, authenticated by a static token of a
/// `system:masters` user; RBAC authorization, ServiceAccount admission off (nothing would
/// create the `default` ServiceAccount Pods need). The API server keeps its port (and its
/// self-signed serving certificate) across [`ApiServer::restart`].
pub struct ApiServer {
    dir: tempfile::TempDir,
    etcd: Process,
    etcd_url: String,
    apiserver: Option<Process>,
    apiserver_binary: PathBuf,
    port: u16,
    token: String,
    starts: usize,
    /// Trusts the server's self-signed CA once it has written it.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ApiServer {
    /// Starts etcd, then kube-apiserver, and waits until `/readyz` answers `ok`.
    pub fn start() -> Result<ApiServer> {
        let apiserver_binary = kube_apiserver_binary()?;
        let etcd_binary = etcd_binary()?;
        kill_stale_runs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating the API server's directory")?;
        let [client_port, peer_port, port] = crate::free_ports()?;
        let etcd = start_etcd(&etcd_binary, dir.path(), client_port, peer_port)?;
        let token = random_token()?;
        write_credentials(dir.path(), &token)?;
        let mut server = ApiServer {
            etcd_url: format!("http://{LOOPBACK}:{client_port}"),
            dir,
            etcd,
            apiserver: None,
            apiserver_binary,
            port,
            token,
            starts: 0,
            tls: None,
        };
        server.resume()?;
        server.write_kubeconfig()?;
        Ok(server)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{LOOPBACK}:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bearer token of the `admin` user (group `system:masters`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A kubeconfig for the admin token that trusts the API server's self-signed CA.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The PEM file with the API server's serving certificate and the CA that signed it.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs/apiserver.crt")
    }

    /// etcd's client URL.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// Debian's kubectl 1.20 with `--kubeconfig` set to this server's.
    pub fn kubectl(&self) -> Result<Command> {
        let mut cmd = Command::new(kubectl_binary()?);
        cmd.arg("--kubeconfig").arg(self.kubeconfig_path());
        Ok(cmd)
    }

    /// Kills kube-apiserver (SIGKILL: clients see connections drop, as in a crash), then
    /// starts it again on the same port against the same etcd and waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.resume()
    }

    /// Kills kube-apiserver only: the API is unreachable until [`ApiServer::resume`]; etcd
    /// and everything stored stay. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.kill();
        }
    }

    /// Starts kube-apiserver if it is stopped and waits until `/readyz` answers `ok`.
    pub fn resume(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        self.starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("kube-apiserver-{}.log", self.starts));
        let dir = self.dir.path();
        let mut cmd = Command::new(&self.apiserver_binary);
        cmd.arg(format!("--bind-address={LOOPBACK}"))
            .arg(format!("--advertise-address={LOOPBACK}"))
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"
            ))
            // The default reconciler would keep the `kubernetes` Service's Endpoints pointed
            // at this server; nothing needs them and they would only add noise.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!(
                "--service-account-key-file={}",
                dir.join("service-account.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("service-account.key").display()
            ))
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--profiling=false")
            .arg("--v=1");
        let process = Process::spawn("kube-apiserver", cmd, &log)?;
        self.apiserver = Some(process);
        let ready = self.wait_ready();
        if ready.is_err() {
            self.stop();
        }
        ready
    }

    /// Resident memory of etcd and kube-apiserver together, in KiB.
    pub fn memory_kib(&self) -> Result<u64> {
        let mut total = self.etcd.rss_kib()?;
        if let Some(apiserver) = &self.apiserver {
            total += apiserver.rss_kib()?;
        }
        Ok(total)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        let mut last_error = anyhow::anyhow!("never probed");
        while Instant::now() < deadline {
            for process in [Some(&mut self.etcd), self.apiserver.as_mut()]
                .into_iter()
                .flatten()
            {
                if let Some(status) = process.exited() {
                    bail!(
                        "{} exited with {status} before kube-apiserver was ready; its log \
                         ends with:\n{}",
                        process.name,
                        process.log_tail()
                    );
                }
            }
            // The server writes its self-signed certificate before it listens, and reuses it
            // when restarted.
            if self.tls.is_none() {
                match read_certificates(&self.ca_path()) {
                    Ok(certificates) => self.tls = Some(Arc::new(tls_config(&certificates)?)),
                    Err(e) => {
                        last_error = e;
                        std::thread::sleep(POLL);
                        continue;
                    }
                }
            }
            match self.get("/readyz") {
                Ok((200, body)) if body.trim() == "ok" => return Ok(()),
                Ok((status, body)) => {
                    last_error = anyhow::anyhow!("/readyz answered {status}: {}", body.trim())
                }
                Err(e) => last_error = e,
            }
            std::thread::sleep(POLL);
        }
        let log = self
            .apiserver
            .as_ref()
            .map(Process::log_tail)
            .unwrap_or_default();
        bail!(
            "kube-apiserver not ready after {APISERVER_READY_TIMEOUT:?} ({last_error:#}); its \
             log ends with:\n{log}"
        )
    }

    /// A GET with the admin token over TLS verified against the server's CA: `(status, body)`.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let address = SocketAddr::from((LOOPBACK, self.port));
        let tcp = TcpStream::connect_timeout(&address, PROBE_TIMEOUT)
            .with_context(|| format!("connecting to {address}"))?;
        tcp.set_read_timeout(Some(PROBE_TIMEOUT))?;
        tcp.set_write_timeout(Some(PROBE_TIMEOUT))?;
        let server_name = ServerName::IpAddress(std::net::IpAddr::V4(LOOPBACK).into());
        let tls = self
            .tls
            .clone()
            .context("kube-apiserver has not written its certificate yet")?;
        let connection = rustls::ClientConnection::new(tls, server_name)?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{}\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            self.port, self.token
        )?;
        let mut response = Vec::new();
        match tls.read_to_end(&mut response) {
            Ok(_) => {}
            // Go closes without close_notify; what arrived is complete (Connection: close).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(e).with_context(|| format!("reading GET {path}")),
        }
        parse_http_response(&response)
    }

    fn write_kubeconfig(&self) -> Result<()> {
        let kubeconfig = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: meshpilot-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: meshpilot-test
  context:
    cluster: meshpilot-test
    user: admin
    namespace: default
current-context: meshpilot-test
",
            server = self.url(),
            ca = self.ca_path().display(),
            token = self.token,
        );
        std::fs::write(self.kubeconfig_path(), kubeconfig).context("writing the kubeconfig")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        self.etcd.kill();
    }
}

/// A child process whose output goes to a log file; killed when dropped.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
    exited: Option<std::process::ExitStatus>,
}

impl Process {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Process> {
        let output = File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Process {
            name,
            child,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .with_context(|| format!("{} is not running", self.name))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS for {}", self.name))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_etcd(binary: &Path, dir: &Path, client_port: u16, peer_port: u16) -> Result<Process> {
    let client = format!("http://{LOOPBACK}:{client_port}");
    let peer = format!("http://{LOOPBACK}:{peer_port}");
    let mut cmd = Command::new(binary);
    cmd.arg("--name=meshpilot")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=meshpilot={peer}"))
        .arg("--logger=zap")
        .arg("--log-level=warn");
    let mut etcd = Process::spawn("etcd", cmd, &dir.join("etcd.log"))?;
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    let mut last_error = anyhow::anyhow!("never probed");
    while Instant::now() < deadline {
        if let Some(status) = etcd.exited() {
            bail!(
                "etcd exited with {status}; its log ends with:\n{}",
                etcd.log_tail()
            );
        }
        match plain_get(client_port, "/health") {
            Ok((200, body)) if body.contains("\"health\":\"true\"") => return Ok(etcd),
            Ok((status, body)) => last_error = anyhow::anyhow!("/health answered {status}: {body}"),
            Err(e) => last_error = e,
        }
        std::thread::sleep(POLL);
    }
    bail!(
        "etcd not healthy after {ETCD_READY_TIMEOUT:?} ({last_error:#}); its log ends with:\n{}",
        etcd.log_tail()
    )
}

fn plain_get(port: u16, path: &str) -> Result<(u16, String)> {
    let address = SocketAddr::from((LOOPBACK, port));
    let mut tcp = TcpStream::connect_timeout(&address, PROBE_TIMEOUT)?;
    tcp.set_read_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)?;
    parse_http_response(&response)
}

/// Status and body of an HTTP/1.1 response; a chunked body is decoded.
fn parse_http_response(response: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            decode_chunked(body)
        } else {
            body.to_string()
        },
    ))
}

fn decode_chunked(mut body: &str) -> String {
    let mut decoded = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        decoded.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    decoded
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    // The serving certificate, then its CA: fewer means the file is still being written.
    if certificates.len() < 2 {
        bail!("{} is incomplete", path.display());
    }
    Ok(certificates)
}

/// Trusts every certificate in the server's file: its own self-signed CA and the serving
/// certificate that CA signed.
fn tls_config(certificates: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate.clone())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The static token file (`token,user,uid,"groups"`) and the service-account signing key.
fn write_credentials(dir: &Path, token: &str) -> Result<()> {
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{token},admin,admin,\"system:masters\"\n"),
    )?;
    let key = rcgen::KeyPair::generate().context("generating the service-account key")?;
    std::fs::write(dir.join("service-account.key"), key.serialize_pem())?;
    std::fs::write(dir.join("service-account.pub"), key.public_key_pem())?;
    Ok(())
}

/// 128 random bits in hex: other local users must not be able to guess it.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Kills the etcd and kube-apiserver processes of runs whose owner process is gone and
/// removes their directories. Best effort: a run killed with SIGKILL cannot clean up itself.
fn kill_stale_runs() {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return;
    };
    let temp = std::env::temp_dir();
    for entry in processes.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let Some(owner) = stale_owner(&cmdline, &temp) else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    if let Ok(dirs) = std::fs::read_dir(&temp) {
        for dir in dirs.flatten() {
            let name = dir.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.strip_prefix(DIR_PREFIX))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            if owner.is_some_and(|pid| !process_alive(pid)) {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
    }
}

/// A killed test binary can linger as a zombie until something reaps it: that is dead too.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

/// The owner pid in a command line that mentions one of our run directories.
fn stale_owner(cmdline: &str, temp: &Path) -> Option<u32> {
    let marker = format!("{}/{DIR_PREFIX}", temp.display());
    let (_, rest) = cmdline.split_once(&marker)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_plain_responses_parse() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).unwrap(), (200, "ok".into()));
        let plain = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbad\n";
        assert_eq!(parse_http_response(plain).unwrap(), (500, "bad\n".into()));
    }

    #[test]
    fn stale_owner_is_read_from_the_run_directory_in_a_command_line() {
        let temp = Path::new("/tmp");
        let cmdline = "/usr/bin/etcd\0--data-dir=/tmp/meshpilot-kube-4242-a1b2/etcd\0";
        assert_eq!(stale_owner(cmdline, temp), Some(4242));
        assert_eq!(
            stale_owner("/usr/bin/etcd\0--data-dir=/var/lib/etcd", temp),
            None
        );
    }

    #[test]
    fn this_process_is_alive() {
        assert!(process_alive(std::process::id()));
    }
}
