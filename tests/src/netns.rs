//! A throwaway mini cluster made of network namespaces, for end-to-end tests and the demo.
//!
//! A dedicated "fabric" namespace holds a Linux bridge and the pods' default gateway, so the
//! host's root namespace is never touched beyond creating namespaces. Every pod is a namespace
//! with one veth (`eth0`) on that bridge. All addresses live in 10.244.0.0/16 and exist only
//! inside our namespaces; nothing routes ClusterIPs (a pod's default route points at the
//! fabric, which has no route for them), so a ClusterIP is reachable only through a pod's own
//! iptables redirect.
//!
//! Cleanup: dropping a [`Child`] kills its process group; dropping the [`Fabric`] kills every
//! process left in its namespaces and deletes them; [`Fabric::new`] removes namespaces left by
//! earlier runs that were killed before they could clean up.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pods' default gateway, on the fabric's bridge.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Every pod address must be inside this range (with a prefix length of at least 16).
pub const POD_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 244, 0, 0), 16);

const BRIDGE: &str = "br0";
const FABRIC_SUFFIX: &str = "fabric";
const POLL: Duration = Duration::from_millis(20);

/// `(uid, gid)` a process runs as; `None` means root.
pub type User = (u32, u32);

/// This process's effective uid.
pub fn effective_uid() -> Result<u32> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .context("no Uid line in /proc/self/status")
}

/// Fails unless the effective uid is 0.
pub fn require_root() -> Result<()> {
    let euid = effective_uid()?;
    if euid != 0 {
        bail!(
            "this test needs root (network namespaces, iptables): run `cargo xtask test` as root \
             (effective uid is {euid})"
        );
    }
    Ok(())
}

/// Finds `name` on PATH or in the sbin directories (which a non-root PATH often lacks); the
/// error names the Debian package that provides it.
pub fn require_binary(name: &str) -> Result<PathBuf> {
    if let Some(found) = find_binary(name) {
        return Ok(found);
    }
    let package = match name {
        "iptables"
        | "iptables-restore"
        | "iptables-save"
        | "iptables-legacy-restore"
        | "iptables-nft-restore" => "iptables",
        "ip" => "iproute2",
        "setpriv" | "nsenter" => "util-linux",
        "kill" => "procps",
        _ => "(unknown)",
    };
    bail!(
        "this test needs `{name}` (Debian package `{package}`), not found on PATH nor in \
         /usr/sbin or /sbin: run `cargo xtask install` as root, or `apt-get install {package}`"
    )
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Names of all named network namespaces (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = command_output(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Removes namespaces named `<prefix><pid>-<n>-<rest>` whose creating process `<pid>` is gone,
/// killing whatever still runs inside them. Namespaces of live runs (this one included) and
/// names that do not follow our pattern are left alone. Returns the removed names.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list_namespaces()? {
        let Some(pid) = run_owner(prefix, &name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match delete_namespace(&name) {
            Ok(()) => removed.push(name),
            // A concurrent run's cleanup got there first.
            Err(_) if !list_namespaces()?.contains(&name) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// The pid in a namespace name of our scheme, `None` for any other name.
fn run_owner(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, pod) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) || pod.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Kills every process inside `netns`, then deletes it (a namespace with processes left would
/// outlive its name).
fn delete_namespace(netns: &str) -> Result<()> {
    let pids =
        command_output(Command::new("ip").args(["netns", "pids", netns])).unwrap_or_default();
    let pids: Vec<&str> = pids.split_whitespace().collect();
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .args(["-s", "KILL"])
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
    command_output(Command::new("ip").args(["netns", "del", netns]))
        .map(drop)
        .with_context(|| format!("deleting network namespace {netns}"))
}

fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_in(netns: &str, args: &[&str]) -> Result<()> {
    command_output(Command::new("ip").args(["-n", netns]).args(args)).map(drop)
}

/// State shared by the fabric and its pods.
struct Shared {
    run: String,
    fabric_netns: String,
    /// Pod namespaces, in creation order.
    pods: Mutex<Vec<String>>,
    work: tempfile::TempDir,
    /// Copies of binaries that some uid could not execute in place.
    copies: Mutex<HashMap<PathBuf, PathBuf>>,
    sequence: AtomicUsize,
}

impl Shared {
    fn next(&self) -> usize {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }
}

/// The bridge namespace and everything created on it; dropping it tears all of it down.
pub struct Fabric {
    shared: Arc<Shared>,
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

impl Fabric {
    /// Creates the fabric namespace `<prefix><pid>-<n>-fabric` with bridge `br0` holding
    /// the gateway address. `prefix` is 1–4 lowercase letters (e.g. `mp`); leftovers of dead
    /// runs with the same prefix are removed first.
    pub fn new(prefix: &str) -> Result<Fabric> {
        require_root()?;
        for tool in ["ip", "setpriv", "kill"] {
            require_binary(tool)?;
        }
        if prefix.is_empty() || prefix.len() > 4 || !prefix.bytes().all(|b| b.is_ascii_lowercase())
        {
            bail!("fabric prefix {prefix:?} must be 1-4 lowercase letters");
        }
        for name in cleanup_stale(prefix)? {
            eprintln!("netns: removed stale namespace {name}");
        }
        let run = format!(
            "{prefix}{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let work = tempfile::Builder::new()
            .prefix(&format!("meshpilot-{run}-"))
            .tempdir()
            .context("creating the fabric's work directory")?;
        // Processes running as other uids read configs from here.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir(work.path().join("logs"))?;
        let fabric_netns = format!("{run}-{FABRIC_SUFFIX}");
        command_output(Command::new("ip").args(["netns", "add", &fabric_netns]))?;
        // From here on Drop cleans up, even if the setup below fails.
        let fabric = Fabric {
            shared: Arc::new(Shared {
                run,
                fabric_netns,
                pods: Mutex::new(Vec::new()),
                work,
                copies: Mutex::new(HashMap::new()),
                sequence: AtomicUsize::new(0),
            }),
        };
        fabric
            .setup_bridge()
            .context("setting up the fabric bridge")?;
        Ok(fabric)
    }

    fn setup_bridge(&self) -> Result<()> {
        let ns = self.netns();
        let gateway = format!("{GATEWAY}/{}", POD_NETWORK.1);
        ip_in(ns, &["link", "set", "lo", "up"])?;
        ip_in(
            ns,
            &[
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "forward_delay",
                "0",
            ],
        )?;
        ip_in(ns, &["addr", "add", &gateway, "dev", BRIDGE])?;
        ip_in(ns, &["link", "set", BRIDGE, "up"])?;
        // Pods on different subnets of the /16 reach each other through the gateway.
        command_output(
            Command::new("ip")
                .args(["netns", "exec", ns, "sh", "-c"])
                .arg("echo 1 > /proc/sys/net/ipv4/ip_forward"),
        )
        .map(drop)
    }

    /// The fabric namespace's name.
    pub fn netns(&self) -> &str {
        &self.shared.fabric_netns
    }

    /// `<prefix><pid>-<n>-`: every namespace of this fabric starts with it.
    pub fn run_prefix(&self) -> String {
        format!("{}-", self.shared.run)
    }

    /// All namespaces of this fabric: the pods in creation order, then the fabric itself.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names = self.shared.pods.lock().expect("pods lock").clone();
        names.push(self.shared.fabric_netns.clone());
        names
    }

    /// A directory (mode 0755) removed with the fabric; child logs go to `logs/` in it.
    pub fn work_dir(&self) -> &Path {
        self.shared.work.path()
    }

    /// Writes `contents` to `work_dir()/relative` with mode 0644, creating parent directories
    /// (0755), so processes of any uid can read it.
    pub fn write_file(&self, relative: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        write_shared_file(&self.shared, relative, contents.as_ref())
    }

    /// `binary` itself when `user` can execute it in place, else a 0755 copy in the work dir.
    pub fn executable_for(&self, binary: &Path, user: User) -> Result<PathBuf> {
        executable_for(&self.shared, binary, user)
    }

    /// Creates pod namespace `<run>-<name>` with `lo` up and `eth0` (a veth whose other end is
    /// on the bridge) holding `ip_cidr`, e.g. `10.244.1.20/16`, and a default route via
    /// [`GATEWAY`]. `name` is 1–20 of `[a-z0-9-]`.
    pub fn add_pod(&self, name: &str, ip_cidr: &str) -> Result<Pod> {
        if name.is_empty()
            || name.len() > 20
            || name == FABRIC_SUFFIX
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("pod name {name:?} must be 1-20 of [a-z0-9-] and not {FABRIC_SUFFIX:?}");
        }
        let (ip, _) = parse_pod_cidr(ip_cidr)?;
        let netns = format!("{}-{name}", self.shared.run);
        let index = {
            let mut pods = self.shared.pods.lock().expect("pods lock");
            if pods.contains(&netns) {
                bail!("pod {name} already exists");
            }
            command_output(Command::new("ip").args(["netns", "add", &netns]))?;
            pods.push(netns.clone());
            pods.len()
        };
        let bridge_port = format!("vp{index}");
        let fabric = self.netns();
        ip_in(
            fabric,
            &[
                "link",
                "add",
                &bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns,
            ],
        )
        .with_context(|| format!("creating the veth of pod {name}"))?;
        ip_in(
            fabric,
            &["link", "set", &bridge_port, "master", BRIDGE, "up"],
        )?;
        ip_in(&netns, &["link", "set", "lo", "up"])?;
        ip_in(&netns, &["addr", "add", ip_cidr, "dev", "eth0"])?;
        ip_in(&netns, &["link", "set", "eth0", "up"])?;
        // `onlink`: the gateway may lie outside a pod's own (narrower) prefix.
        ip_in(
            &netns,
            &[
                "route",
                "add",
                "default",
                "via",
                &GATEWAY.to_string(),
                "dev",
                "eth0",
                "onlink",
            ],
        )?;
        Ok(Pod {
            shared: Arc::clone(&self.shared),
            name: name.to_string(),
            netns,
            ip,
        })
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for netns in self.namespaces() {
            // Pods first: their veth ends vanish with them, then the bridge goes.
            if let Err(e) = delete_namespace(&netns) {
                eprintln!("netns: {e:#}");
            }
        }
    }
}

fn parse_pod_cidr(ip_cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, len) = ip_cidr
        .split_once('/')
        .with_context(|| format!("{ip_cidr:?} is not ADDRESS/PREFIX"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("bad address in {ip_cidr:?}"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("bad prefix length in {ip_cidr:?}"))?;
    let (network, network_len) = POD_NETWORK;
    let mask = u32::MAX << (32 - network_len);
    if u32::from(addr) & mask != u32::from(network) || !(network_len..=32).contains(&len) {
        bail!(
            "pod address {ip_cidr} must be inside {network}/{network_len} with prefix >= /{network_len}"
        );
    }
    if addr == GATEWAY || addr == network {
        bail!("pod address {addr} is reserved");
    }
    Ok((addr, len))
}

fn write_shared_file(shared: &Shared, relative: &str, contents: &[u8]) -> Result<PathBuf> {
    let path = shared.work.path().join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    Ok(path)
}

fn can_execute(binary: &Path, (uid, gid): User) -> bool {
    Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
        .args(["--clear-groups", "--", "test", "-x"])
        .arg(binary)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn executable_for(shared: &Shared, binary: &Path, user: User) -> Result<PathBuf> {
    let binary = std::path::absolute(binary)?;
    if can_execute(&binary, user) {
        return Ok(binary);
    }
    let mut copies = shared.copies.lock().expect("copies lock");
    if let Some(copy) = copies.get(&binary) {
        return Ok(copy.clone());
    }
    let dir = shared.work.path().join("bin");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let file_name = binary.file_name().context("binary path has no file name")?;
    let copy = dir.join(format!("{}-{}", shared.next(), file_name.to_string_lossy()));
    std::fs::copy(&binary, &copy).with_context(|| format!("copying {}", binary.display()))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    if !can_execute(&copy, user) {
        bail!(
            "uid {} cannot execute {} nor its copy {} (is the temp dir's path searchable?)",
            user.0,
            binary.display(),
            copy.display()
        );
    }
    copies.insert(binary, copy.clone());
    Ok(copy)
}

/// A pod namespace on the fabric. Cheap to clone; the namespace lives as long as the fabric.
#[derive(Clone)]
pub struct Pod {
    shared: Arc<Shared>,
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Starts `argv` inside the pod as `user` (root when `None`), in its own process group,
    /// with the fabric's work dir as cwd, stdin from /dev/null and stdout/stderr captured to
    /// files under `work_dir()/logs/`. A program given as a path is made absolute and, for a
    /// non-root user who cannot execute it in place, replaced by a 0755 copy. Environment
    /// variables are inherited; pass extra ones via `env K=V program ...`.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S], user: Option<User>) -> Result<Child> {
        let (program, args) = argv.split_first().context("empty command")?;
        let mut program = PathBuf::from(program.as_ref());
        if program.components().count() > 1 {
            program = match user {
                Some(user) => executable_for(&self.shared, &program, user)?,
                None => std::path::absolute(&program)?,
            };
        }
        let label = format!(
            "{}-{}-{}",
            self.name,
            self.shared.next(),
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let logs = self.shared.work.path().join("logs");
        let stdout_path = logs.join(format!("{label}.stdout"));
        let stderr_path = logs.join(format!("{label}.stderr"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]);
        if let Some((uid, gid)) = user {
            cmd.args(["setpriv", "--reuid", &uid.to_string()]).args([
                "--regid",
                &gid.to_string(),
                "--clear-groups",
                "--",
            ]);
        }
        cmd.arg(&program)
            .args(args)
            .current_dir(self.shared.work.path())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?)
            .process_group(0);
        let shown: Vec<OsString> = std::iter::once(program.into_os_string())
            .chain(args.iter().map(|a| a.as_ref().to_os_string()))
            .collect();
        let process = cmd
            .spawn()
            .with_context(|| format!("starting {shown:?} in pod {}", self.name))?;
        Ok(Child {
            process,
            label,
            stdout_path,
            stderr_path,
            exited: None,
        })
    }

    /// Runs `argv` like [`Pod::spawn`] and waits for it; fails (after killing it) if it is
    /// still running after `timeout`. A non-zero exit is not an error here: check `status`.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        argv: &[S],
        user: Option<User>,
        timeout: Duration,
    ) -> Result<Output> {
        let mut child = self.spawn(argv, user)?;
        let status = child.wait_timeout(timeout)?;
        Ok(Output {
            status,
            stdout: std::fs::read(&child.stdout_path)?,
            stderr: std::fs::read(&child.stderr_path)?,
        })
    }

    /// [`Pod::run`] that also fails on a non-zero exit (with the output); returns stdout.
    pub fn run_ok<S: AsRef<OsStr>>(
        &self,
        argv: &[S],
        user: Option<User>,
        timeout: Duration,
    ) -> Result<String> {
        let out = self.run(argv, user, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{:?} in pod {} exited with {}:\n{stdout}{}",
                argv.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Loads an `iptables-save`-format ruleset into the pod's namespace with `iptables-restore`
    /// (nft backend on Debian), falling back to `iptables-legacy-restore` if that fails.
    /// Returns the name of the tool that worked.
    pub fn iptables_restore(&self, rules: &str) -> Result<&'static str> {
        let file = write_shared_file(
            &self.shared,
            &format!("iptables/{}-{}.rules", self.name, self.shared.next()),
            rules.as_bytes(),
        )?;
        let mut failures = Vec::new();
        for tool in ["iptables-restore", "iptables-legacy-restore"] {
            let Some(binary) = find_binary(tool) else {
                failures.push(format!("{tool}: not installed"));
                continue;
            };
            let argv = [binary.as_os_str(), file.as_os_str()];
            match self.run(&argv, None, Duration::from_secs(10)) {
                Ok(out) if out.status.success() => return Ok(tool),
                Ok(out) => failures.push(format!(
                    "{tool}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => failures.push(format!("{tool}: {e:#}")),
            }
        }
        require_binary("iptables-restore")?;
        bail!(
            "no iptables-restore accepted the rules in pod {}:\n{}",
            self.name,
            failures.join("\n")
        )
    }
}

/// A process started in a pod. Dropping it kills its whole process group.
pub struct Child {
    process: std::process::Child,
    label: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// `<pod>-<seq>-<program>`, also the log files' stem.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// What the process has written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Both streams, labelled, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}",
            self.label,
            self.stdout(),
            self.label,
            self.stderr()
        )
    }

    /// The exit status if the process has ended (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.process.try_wait()?;
        }
        Ok(self.exited)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits until stdout or stderr contains `needle`; fails if the process exits first or
    /// `timeout` passes (the error carries the logs).
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_status()? {
                bail!(
                    "{} exited with {status} before printing {needle:?}\n{}",
                    self.label,
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}\n{}",
                    self.label,
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the process to exit; kills it and fails if it outlives `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} still running after {timeout:?}, killed\n{}",
                    self.label,
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM to the process group, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        self.signal_group("TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            std::thread::sleep(POLL);
        }
        self.kill();
        self.try_status()?
            .context("process survived SIGKILL and wait")
    }

    /// SIGKILL to the process group, then reaps the process.
    pub fn kill(&mut self) {
        if self.exited.is_some() {
            return;
        }
        self.signal_group("KILL");
        let _ = self.process.kill();
        if let Ok(status) = self.process.wait() {
            self.exited = Some(status);
        }
    }

    fn signal_group(&self, signal: &str) {
        // The group id is the child's pid (`process_group(0)`); until we reap the child its
        // pid cannot be reused, so this cannot hit a stranger.
        let _ = Command::new("kill")
            .args(["-s", signal, "--", &format!("-{}", self.process.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_owner_accepts_only_our_scheme() {
        assert_eq!(run_owner("mp", "mp123-0-fabric"), Some(123));
        assert_eq!(run_owner("mp", "mp123-14-reviews-v1"), Some(123));
        assert_eq!(run_owner("mp", "mp123-0-"), None);
        assert_eq!(run_owner("mp", "mpx-0-fabric"), None);
        assert_eq!(run_owner("mp", "mp123-a-fabric"), None);
        assert_eq!(run_owner("mp", "other123-0-fabric"), None);
        assert_eq!(run_owner("mp", "cni-1234"), None);
    }

    #[test]
    fn pod_addresses_stay_in_the_pod_network() {
        assert_eq!(
            parse_pod_cidr("10.244.1.20/16").unwrap(),
            (Ipv4Addr::new(10, 244, 1, 20), 16)
        );
        assert!(parse_pod_cidr("10.244.2.12/24").is_ok());
        assert!(parse_pod_cidr("10.96.0.1/16").is_err());
        assert!(parse_pod_cidr("10.244.1.20/8").is_err());
        assert!(parse_pod_cidr("10.244.0.1/16").is_err());
        assert!(parse_pod_cidr("10.244.1.20").is_err());
    }
}
