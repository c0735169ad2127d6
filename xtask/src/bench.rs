//! `cargo xtask bench`: the load benchmark. Builds release `meshpilot` and `loadgen`, and runs
//! each scenario against a fresh `meshpilot discovery` on loopback with its own generated mesh,
//! sampling the server's memory and CPU time from /proc at the phases `loadgen` announces (and
//! every 250 ms). Writes `target/bench/report.json` and `target/bench/scaling.svg`, and prints
//! a table.
//!
//! ```text
//! cargo xtask bench [--scenario cold|churn|vs-edit|restart|stalled]... [--proxies N]
//!                   [--server-arg ARG]...
//! ```
//!
//! Scenarios (see `tests/src/bin/loadgen/` for exactly what each measures):
//! - `cold`: N sidecars connect at once (N = 1000, 2000, 5000, 10000 SotW; 2000 delta), then
//!   10 s idle: connect→complete p50/p99/max, server peak and steady RSS, CPU. The 2,000 runs
//!   (the target's size) are repeated three times per flavor, and the median run reported.
//! - `churn`: 5000 sidecars; 100 endpoint changes/s for 20 s: write→EDS ACK latency. Three
//!   runs per flavor (SotW, delta), the median run reported; then 1000 and 2500 delta sidecars.
//! - `vs-edit`: 10,000 VirtualServices, 2000 sidecars; one VirtualService edit: write→ACK,
//!   as istiod serves routes (SotW sidecars) and with `--vhds` (delta sidecars, `vs_edit_vhds`).
//! - `restart`: 5000 sidecars; SIGKILL and restart the server: start→re-synced, NACKs, bytes.
//!   Three runs per flavor, the median run reported.
//! - `stalled`: 1000 sidecars plus 50 changes/s, without and with 20 clients that never read.
//!
//! `--proxies N` replaces every scenario's sidecar count (for quick runs); `--server-arg` is
//! passed to `meshpilot discovery` (e.g. `--server-arg=--debounce-after=50ms`).

#[path = "plot.rs"]
mod plot;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SCENARIOS: [&str; 5] = ["cold", "churn", "vs-edit", "restart", "stalled"];
const COLD_PROXIES: [usize; 4] = [1000, 2000, 5000, 10000];
/// The cold connect the target is set for (2,000 sidecars) runs this many times per flavor,
/// and reports the median: one run on this machine varies by a few hundred milliseconds.
const COLD_TARGET_PROXIES: usize = 2000;
const COLD_TARGET_RUNS: usize = 3;
/// Churn at the target's size (5,000 sidecars) runs this many times per flavor, and reports
/// the median run: its p99 moves by a fifth between runs with the machine's speed.
const CHURN_TARGET_RUNS: usize = 3;
/// The restart of 5,000 runs this many times per flavor, and reports the median run: a SotW
/// re-sync resends 5.8 GB, and one run's p99 moved between 7.9 and 10.1 s on this machine.
const RESTART_TARGET_RUNS: usize = 3;
/// Delta fleets the churn scenario also runs, besides its 5,000.
const CHURN_SCALE_PROXIES: [usize; 2] = [1000, 2500];

/// The server's resource use, read from /proc/<pid>.
#[derive(Clone, Copy, Debug, Default)]
struct ProcStats {
    rss_kib: u64,
    peak_rss_kib: u64,
    cpu_seconds: f64,
}

fn proc_stats(pid: u32) -> Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcStats {
        rss_kib: field("VmRSS:"),
        peak_rss_kib: field("VmHWM:"),
        // USER_HZ is 100 on Linux.
        cpu_seconds: (ticks(11) + ticks(12)) as f64 / 100.0,
    })
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Runs `program` with the open-files limit raised as far as allowed (thousands of sockets),
/// and, where util-linux's `setpriv` exists, killed when xtask dies (even by SIGKILL, when
/// no destructor runs).
fn command_with_files(program: &Path) -> Command {
    let exec = if Path::new("/usr/bin/setpriv").exists() {
        "exec /usr/bin/setpriv --pdeathsig KILL -- \"$0\" \"$@\""
    } else {
        "exec \"$0\" \"$@\""
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; {exec}"
        ))
        .arg(program);
    cmd
}

/// A child that is killed (SIGKILL) and reaped when dropped, on errors too.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn fresh(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_ready(addr: &str, timeout: Duration) -> Result<()> {
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = write!(
                s,
                "GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            );
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("discovery not ready at {addr} within {timeout:?}")
}

/// `meshpilot discovery` on fixed loopback ports, restartable on the same ports.
struct Server {
    child: Option<Guarded>,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    grpc: String,
    monitoring: String,
}

impl Server {
    fn start(bench: &Bench, mesh: &Path, name: &str) -> Result<Server> {
        Self::start_with(bench, mesh, name, &[])
    }

    /// [`Server::start`] with extra `discovery` flags.
    fn start_with(bench: &Bench, mesh: &Path, name: &str, extra: &[&str]) -> Result<Server> {
        let grpc = format!("127.0.0.1:{}", free_port()?);
        let monitoring = format!("127.0.0.1:{}", free_port()?);
        let mut args: Vec<String> = vec![
            "discovery".into(),
            "--log-level".into(),
            "warn".into(),
            "--config-dir".into(),
            mesh.display().to_string(),
            "--grpc-addr".into(),
            grpc.clone(),
            "--monitoring-addr".into(),
            monitoring.clone(),
            "--secure-grpc-addr".into(),
            format!("127.0.0.1:{}", free_port()?),
            "--tls-dir".into(),
            bench.work.join("tls").display().to_string(),
        ];
        args.extend(bench.server_args.iter().cloned());
        args.extend(extra.iter().map(|a| a.to_string()));
        let log = bench.work.join(format!("{name}.server.log"));
        let _ = std::fs::remove_file(&log);
        let mut server = Server {
            child: None,
            binary: bench.bin.join("meshpilot"),
            args,
            log,
            grpc,
            monitoring,
        };
        server.spawn()?;
        server.wait_ready()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = command_with_files(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting meshpilot discovery")?;
        self.child = Some(Guarded(child));
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        wait_ready(&self.monitoring, Duration::from_secs(120))
            .with_context(|| format!("server log: {}", self.log.display()))
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        self.child = None;
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    fn stats(&self) -> Option<ProcStats> {
        proc_stats(self.pid()?).ok()
    }
}

/// A phase `loadgen` announced, with the server's numbers at that moment.
struct Phase {
    name: String,
    at: f64,
    server: Option<ProcStats>,
}

struct LoadgenRun {
    report: Value,
    phases: Vec<Phase>,
    /// (seconds since start, server RSS KiB) every 250 ms.
    rss: Vec<(f64, u64)>,
}

impl LoadgenRun {
    fn phase(&self, name: &str) -> Option<ProcStats> {
        self.phases
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.server)
    }

    fn phase_at(&self, name: &str) -> Option<f64> {
        self.phases.iter().find(|p| p.name == name).map(|p| p.at)
    }

    /// Largest sampled RSS between two phases, in KiB.
    fn peak_rss_between(&self, from: &str, to: &str) -> u64 {
        let (Some(a), Some(b)) = (self.phase_at(from), self.phase_at(to)) else {
            return 0;
        };
        self.rss
            .iter()
            .filter(|(t, _)| *t >= a && *t <= b)
            .map(|(_, kib)| *kib)
            .max()
            .unwrap_or(0)
    }
}

type PhaseHook<'a> = dyn FnMut(&str, &mut Server, &mut ChildStdin) -> Result<()> + 'a;

struct Bench {
    bin: PathBuf,
    /// Reports, server logs and the TLS files.
    work: PathBuf,
    /// Each scenario's generated mesh, which the load generator rewrites as it churns: in
    /// memory (`/dev/shm`) where there is one, so that the load generator's file writes (a new
    /// inode per atomic replace, ~6% of its CPU on ext4) take less of the cores it shares
    /// with the server. In a cluster, changes arrive over a watch, not through a filesystem.
    scratch: PathBuf,
    server_args: Vec<String>,
}

impl Bench {
    /// Generates a mesh into `dir` with `loadgen generate` and the given overrides.
    fn generate(&self, dir: &Path, extra: &[&str]) -> Result<()> {
        let out = Command::new(self.bin.join("loadgen"))
            .args(["generate", "--dir"])
            .arg(dir)
            .args(extra)
            .output()
            .context("running loadgen generate")?;
        if !out.status.success() {
            bail!(
                "loadgen generate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs one `loadgen` scenario to its end (killing it after `limit`), calling `hook` at
    /// each phase it announces.
    fn loadgen(
        &self,
        server: &mut Server,
        args: &[String],
        limit: Duration,
        hook: &mut PhaseHook<'_>,
    ) -> Result<LoadgenRun> {
        eprintln!("xtask: bench: loadgen {}", args.join(" "));
        let started = Instant::now();
        let mut child = Guarded(
            command_with_files(&self.bin.join("loadgen"))
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting loadgen")?,
        );
        let mut stdin = child.0.stdin.take().context("loadgen stdin")?;
        let mut stdout = child.0.stdout.take().context("loadgen stdout")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
        });
        let stderr = child.0.stderr.take().context("loadgen stderr")?;
        let (phase_tx, phase_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                match line.strip_prefix("loadgen: phase: ") {
                    Some(name) => {
                        let _ = phase_tx.send(name.to_string());
                    }
                    None => eprintln!("{line}"),
                }
            }
        });
        let mut run = LoadgenRun {
            report: Value::Null,
            phases: Vec::new(),
            rss: Vec::new(),
        };
        let mut next_sample = Instant::now();
        let status = loop {
            while let Ok(name) = phase_rx.try_recv() {
                run.phases.push(Phase {
                    name: name.clone(),
                    at: started.elapsed().as_secs_f64(),
                    server: server.stats(),
                });
                hook(&name, server, &mut stdin)?;
            }
            if let Some(status) = child.0.try_wait()? {
                break status;
            }
            if started.elapsed() > limit {
                bail!("loadgen {} ran over its {limit:?} limit", args[0]);
            }
            if Instant::now() >= next_sample {
                if let Some(s) = server.stats() {
                    run.rss.push((started.elapsed().as_secs_f64(), s.rss_kib));
                }
                next_sample += Duration::from_millis(250);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = reader.join().expect("stdout reader")?;
        if !status.success() {
            bail!("loadgen {} failed ({status}): {}", args[0], text.trim());
        }
        run.report = serde_json::from_str(text.trim())
            .with_context(|| format!("loadgen printed no JSON report: {text:?}"))?;
        Ok(run)
    }
}

fn no_hook(_: &str, _: &mut Server, _: &mut ChildStdin) -> Result<()> {
    Ok(())
}

/// Seconds `loadgen` may take to connect `proxies` sidecars.
fn connect_timeout(proxies: usize) -> u64 {
    60 + proxies as u64 / 40
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn cold(bench: &Bench, proxies: usize, flavor: &str) -> Result<Value> {
    let name = format!("cold-{flavor}-{proxies}");
    let dir = TempDir::fresh(bench.scratch.join(&name))?;
    let mesh = dir.0.join("mesh");
    bench.generate(&mesh, &[])?;
    let mut server = Server::start(bench, &mesh, &name)?;
    let timeout = connect_timeout(proxies);
    let hold = 10;
    let mut args = strings(&["cold", "--xds", &server.grpc, "--flavor", flavor]);
    args.extend(strings(&[
        "--proxies",
        &proxies.to_string(),
        "--hold-secs",
        &hold.to_string(),
        "--timeout-secs",
        &timeout.to_string(),
    ]));
    let run = bench.loadgen(
        &mut server,
        &args,
        Duration::from_secs(timeout + hold + 120),
        &mut no_hook,
    )?;
    let before = run.phase("connecting").unwrap_or_default();
    let complete = run.phase("complete").unwrap_or_default();
    let end = run.phase("end").unwrap_or_default();
    let mut report = run.report;
    report["server"] = json!({
        "rss_before_mib": mib(before.rss_kib),
        "rss_at_complete_mib": mib(complete.rss_kib),
        "peak_rss_mib": mib(end.peak_rss_kib),
        "steady_rss_mib": mib(end.rss_kib),
        "cpu_seconds_connecting": round2(complete.cpu_seconds - before.cpu_seconds),
        "idle_seconds": hold,
        "cpu_seconds_idle": round2(end.cpu_seconds - complete.cpu_seconds),
    });
    Ok(report)
}

/// `churn` (and `stalled`, which is churn with fewer sidecars, plus clients that never read),
/// with sidecars speaking `flavor`: `sotw`, or `delta` as stock sidecars do since Istio 1.22.
fn churn(
    bench: &Bench,
    name: &str,
    proxies: usize,
    rate: usize,
    stalled: usize,
    flavor: &str,
) -> Result<Value> {
    let dir = TempDir::fresh(bench.scratch.join(name))?;
    let mesh = dir.0.join("mesh");
    bench.generate(&mesh, &[])?;
    let mut server = Server::start(bench, &mesh, name)?;
    let timeout = connect_timeout(proxies);
    let (duration, settle) = (20, 30);
    let mut args = strings(&["churn", "--xds", &server.grpc, "--flavor", flavor]);
    args.extend(["--metrics".to_string(), server.monitoring.clone()]);
    args.extend(strings(&["--mesh", &mesh.display().to_string()]));
    for (flag, value) in [
        ("--proxies", proxies),
        ("--rate", rate),
        ("--duration-secs", duration),
        ("--settle-secs", settle),
        ("--stalled", stalled),
        ("--timeout-secs", timeout as usize),
    ] {
        args.extend([flag.to_string(), value.to_string()]);
    }
    let limit = Duration::from_secs(timeout + (duration + settle) as u64 + 120);
    let run = bench.loadgen(&mut server, &args, limit, &mut no_hook)?;
    let start = run.phase("stalled-open").unwrap_or_default();
    let complete = run.phase("complete").unwrap_or_default();
    let churn_start = run.phase("churn-start").unwrap_or_default();
    let settled = run.phase("settled").unwrap_or_default();
    let mut report = run.report.clone();
    report["server"] = json!({
        "rss_start_mib": mib(start.rss_kib),
        "rss_at_complete_mib": mib(complete.rss_kib),
        "rss_churn_start_mib": mib(churn_start.rss_kib),
        "rss_peak_during_churn_mib": mib(run.peak_rss_between("churn-start", "settled")),
        "rss_end_mib": mib(settled.rss_kib),
        "peak_rss_mib": mib(settled.peak_rss_kib),
        "cpu_seconds_churn": round2(settled.cpu_seconds - churn_start.cpu_seconds),
        "rss_mib_every_second": run
            .rss
            .iter()
            .step_by(4)
            .map(|(t, kib)| json!([t.round(), mib(*kib)]))
            .collect::<Vec<_>>(),
    });
    Ok(report)
}

/// `vs-edit` as istiod serves routes (virtual hosts inline, SotW sidecars) or, with `vhds`, with
/// `--vhds` and delta sidecars (Envoy's default), whose virtual hosts come over VHDS.
fn vs_edit(bench: &Bench, name: &str, proxies: usize, vhds: bool) -> Result<Value> {
    let dir = TempDir::fresh(bench.scratch.join(name))?;
    let mesh = dir.0.join("mesh");
    bench.generate(&mesh, &["--virtual-services", "10000"])?;
    let (server_flags, flavor): (&[&str], &str) = if vhds {
        (&["--vhds"], "delta")
    } else {
        (&[], "sotw")
    };
    let mut server = Server::start_with(bench, &mesh, name, server_flags)?;
    // Each sidecar's routes carry 10,000 virtual hosts: several MB instead of about 0.5.
    let timeout = 3 * connect_timeout(proxies);
    let mut args = strings(&[
        "vs-edit",
        "--flavor",
        flavor,
        "--xds",
        &server.grpc,
        "--metrics",
    ]);
    args.push(server.monitoring.clone());
    args.extend(strings(&["--mesh", &mesh.display().to_string()]));
    args.extend(strings(&["--proxies", &proxies.to_string()]));
    args.extend(strings(&["--timeout-secs", &timeout.to_string()]));
    let limit = Duration::from_secs(timeout + 120 + 120);
    let run = bench.loadgen(&mut server, &args, limit, &mut no_hook)?;
    let complete = run.phase("complete").unwrap_or_default();
    let settled = run.phase("settled").unwrap_or_default();
    let mut report = run.report;
    report["server"] = json!({
        "rss_at_complete_mib": mib(complete.rss_kib),
        "peak_rss_mib": mib(settled.peak_rss_kib),
        "cpu_seconds_edit": round2(settled.cpu_seconds - run.phases.iter().find(|p| p.name == "edit").and_then(|p| p.server).unwrap_or_default().cpu_seconds),
    });
    Ok(report)
}

/// `restart` with sidecars speaking `flavor`. Delta sidecars name the versions they hold when
/// they reconnect, so only what differs is resent; SotW sidecars are sent everything again.
fn restart(bench: &Bench, name: &str, proxies: usize, flavor: &str) -> Result<Value> {
    let dir = TempDir::fresh(bench.scratch.join(name))?;
    let mesh = dir.0.join("mesh");
    bench.generate(&mesh, &[])?;
    let mut server = Server::start(bench, &mesh, name)?;
    let timeout = connect_timeout(proxies);
    let mut args = strings(&["restart", "--xds", &server.grpc, "--flavor", flavor]);
    args.extend(["--metrics".to_string(), server.monitoring.clone()]);
    args.extend(strings(&["--proxies", &proxies.to_string()]));
    args.extend(strings(&["--timeout-secs", &timeout.to_string()]));
    args.extend(strings(&["--resync-timeout-secs", &timeout.to_string()]));
    let mut ready_after = None;
    let mut hook = |phase: &str, server: &mut Server, stdin: &mut ChildStdin| -> Result<()> {
        if phase != "restart-now" {
            return Ok(());
        }
        server.kill();
        let micros = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        let started = Instant::now();
        server.spawn()?;
        writeln!(stdin, "restarted {micros}")?;
        stdin.flush()?;
        server.wait_ready()?;
        ready_after = Some(started.elapsed());
        Ok(())
    };
    let limit = Duration::from_secs(2 * timeout + 120);
    let run = bench.loadgen(&mut server, &args, limit, &mut hook)?;
    let mut report = run.report;
    report["server_ready_after_restart_ms"] =
        json!(ready_after.map(|d| (d.as_secs_f64() * 1000.0).round()));
    Ok(report)
}

fn stalled(bench: &Bench, proxies: usize) -> Result<Value> {
    let without = churn(bench, "stalled-0", proxies, 50, 0, "sotw")?;
    let with = churn(bench, "stalled-20", proxies, 50, 20, "sotw")?;
    Ok(json!({"without_stalled": without, "with_20_stalled": with}))
}

struct Options {
    proxies: Option<usize>,
    scenarios: Vec<String>,
    server_args: Vec<String>,
}

fn parse_options(extra: &[String]) -> Result<Options> {
    let mut options = Options {
        proxies: None,
        scenarios: Vec::new(),
        server_args: Vec::new(),
    };
    let mut it = extra.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag {
            "--proxies" => options.proxies = Some(value()?.parse().context("--proxies")?),
            "--scenario" => {
                let name = value()?;
                if !SCENARIOS.contains(&name.as_str()) {
                    bail!("--scenario {name:?}: one of {}", SCENARIOS.join(", "));
                }
                options.scenarios.push(name);
            }
            "--server-arg" => options.server_args.push(value()?),
            other => bail!("bench: unknown argument {other:?}"),
        }
    }
    if options.scenarios.is_empty() {
        options.scenarios = strings(&SCENARIOS);
    }
    Ok(options)
}

pub fn run(root: &Path, extra: &[String]) -> Result<()> {
    let options = parse_options(extra)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::run(Command::new(&cargo).args([
        "build",
        "--release",
        "--bin",
        "meshpilot",
        "--bin",
        "loadgen",
    ]))?;
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        shm.join(format!("meshpilot-bench-{}", std::process::id()))
    } else {
        root.join("target/bench/scratch")
    };
    let _scratch = TempDir::fresh(scratch.clone())?;
    let bench = Bench {
        bin: root.join("target/release"),
        work: root.join("target/bench"),
        scratch,
        server_args: options.server_args.clone(),
    };
    std::fs::create_dir_all(&bench.work)?;
    let began = Instant::now();
    let n = |default: usize| options.proxies.unwrap_or(default);
    let mut report = serde_json::Map::new();
    report.insert(
        "machine".into(),
        json!({
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "server_args": options.server_args,
            "meshes_in": bench.scratch.display().to_string(),
        }),
    );
    let mut errors = Vec::new();
    let record = |report: &mut serde_json::Map<String, Value>,
                  errors: &mut Vec<Value>,
                  key: &str,
                  result: Result<Value>| match result {
        Ok(value) => {
            report.insert(key.to_string(), value);
        }
        Err(e) => record_error(errors, key, &e),
    };
    let path = bench.work.join("report.json");
    for scenario in &options.scenarios {
        match scenario.as_str() {
            "cold" => {
                let counts = match options.proxies {
                    Some(n) => vec![n],
                    None => COLD_PROXIES.to_vec(),
                };
                let mut runs = Vec::new();
                let mut medians = Vec::new();
                let delta_count = n(COLD_TARGET_PROXIES);
                for (count, flavor) in counts
                    .iter()
                    .map(|c| (*c, "sotw"))
                    .chain([(delta_count, "delta")])
                {
                    let repeats = if count == n(COLD_TARGET_PROXIES) {
                        COLD_TARGET_RUNS
                    } else {
                        1
                    };
                    let key = format!("cold-{flavor}-{count}");
                    let repeated =
                        repeat(repeats, &key, flavor, count, cold_p99, &mut errors, || {
                            cold(&bench, count, flavor)
                        });
                    if repeats > 1 {
                        medians.extend(repeated.median);
                    }
                    runs.extend(repeated.middle);
                }
                let slope = rss_slope(&runs);
                report.insert("cold".into(), json!(runs));
                report.insert("cold_medians".into(), json!(medians));
                report.insert("rss_slope_kib_per_proxy".into(), json!(slope));
            }
            "churn" => {
                let mut medians = Vec::new();
                for (key, flavor) in [("churn", "sotw"), ("churn_delta", "delta")] {
                    let repeated = repeat(
                        CHURN_TARGET_RUNS,
                        key,
                        flavor,
                        n(5000),
                        churn_p99,
                        &mut errors,
                        || churn(&bench, key, n(5000), 100, 0, flavor),
                    );
                    medians.extend(repeated.median);
                    if let Some(middle) = repeated.middle {
                        report.insert(key.into(), middle);
                    }
                }
                report.insert("churn_medians".into(), json!(medians));
                // The same churn to smaller fleets: how large a fleet this machine, shared
                // with the load generator, keeps within the target.
                if options.proxies.is_none() {
                    let mut runs = Vec::new();
                    for count in CHURN_SCALE_PROXIES {
                        let key = format!("churn_delta_{count}");
                        eprintln!("xtask: bench: churn, {count} sidecars (delta)");
                        match churn(&bench, &key, count, 100, 0, "delta") {
                            Ok(r) => runs.push(r),
                            Err(e) => record(&mut report, &mut errors, &key, Err(e)),
                        }
                    }
                    report.insert("churn_delta_scale".into(), json!(runs));
                }
            }
            "vs-edit" => {
                for (key, vhds) in [("vs_edit", false), ("vs_edit_vhds", true)] {
                    eprintln!("xtask: bench: vs-edit ({key})");
                    let result = vs_edit(&bench, key, n(2000), vhds);
                    record(&mut report, &mut errors, key, result);
                }
            }
            "restart" => {
                let mut medians = Vec::new();
                for (key, flavor) in [("restart", "sotw"), ("restart_delta", "delta")] {
                    let repeated = repeat(
                        RESTART_TARGET_RUNS,
                        key,
                        flavor,
                        n(5000),
                        restart_p99,
                        &mut errors,
                        || restart(&bench, key, n(5000), flavor),
                    );
                    medians.extend(repeated.median);
                    if let Some(middle) = repeated.middle {
                        report.insert(key.into(), middle);
                    }
                }
                report.insert("restart_medians".into(), json!(medians));
            }
            "stalled" => record(
                &mut report,
                &mut errors,
                "stalled",
                stalled(&bench, n(1000)),
            ),
            _ => unreachable!("checked in parse_options"),
        }
        // Written after every scenario, so an interrupted run keeps what it measured.
        report.insert("errors".into(), json!(errors));
        report.insert(
            "bench_seconds".into(),
            json!(began.elapsed().as_secs_f64().round()),
        );
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    let report = Value::Object(report);
    println!("{}", table(&report));
    let points = scaling_points(&report);
    if !points.is_empty() {
        let svg = bench.work.join("scaling.svg");
        plot::scaling_svg(&svg, &points)?;
        eprintln!("xtask: bench: {}", svg.display());
    }
    eprintln!("xtask: bench: report in {}", path.display());
    if !errors.is_empty() {
        bail!("{} scenario run(s) failed (see the report)", errors.len());
    }
    Ok(())
}

fn cold_p99(run: &Value) -> f64 {
    run["connect_to_complete_ms"]["p99"]
        .as_f64()
        .unwrap_or(f64::INFINITY)
}

/// One line per repeated size of `scenario`: every run's p99 and their median.
fn median_lines(report: &Value, scenario: &str) -> Vec<String> {
    let medians = &report[format!("{scenario}_medians")];
    medians
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let p99s: Vec<String> = m["p99_ms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .map(|p| format!("{p:.0}"))
                .collect();
            format!(
                "{:<22} {:>7} {:>11}  {:<22} p99 of each run: {} ms (its row above is the median run)",
                format!("{scenario} {} median", m["flavor"].as_str().unwrap_or("")),
                m["proxies"],
                "",
                format!("-/{:.0}/-", m["median_p99_ms"].as_f64().unwrap_or(0.0)),
                p99s.join(", "),
            )
        })
        .collect()
}

fn churn_p99(run: &Value) -> f64 {
    run["write_to_eds_ack_ms"]["p99"]
        .as_f64()
        .unwrap_or(f64::INFINITY)
}

fn restart_p99(run: &Value) -> f64 {
    run["start_to_resynced_ms"]["p99"]
        .as_f64()
        .unwrap_or(f64::INFINITY)
}

fn record_error(errors: &mut Vec<Value>, key: &str, e: &anyhow::Error) {
    eprintln!("xtask: bench: {key} failed: {e:#}");
    errors.push(json!({"scenario": key, "error": format!("{e:#}")}));
}

/// A scenario run several times at one size and flavor.
struct Repeated {
    /// Every run's p99 and their median ([`median_of`]); None when no run worked.
    median: Option<Value>,
    /// The median run ([`median_run`]).
    middle: Option<Value>,
}

/// Runs `run` `times` times, recording each failure in `errors` as `<key>-run-<i>`.
fn repeat(
    times: usize,
    key: &str,
    flavor: &str,
    proxies: usize,
    p99: fn(&Value) -> f64,
    errors: &mut Vec<Value>,
    mut run: impl FnMut() -> Result<Value>,
) -> Repeated {
    let mut tries = Vec::new();
    for i in 1..=times {
        eprintln!("xtask: bench: {key} ({flavor}, {proxies} sidecars), run {i}/{times}");
        match run() {
            Ok(r) => tries.push(r),
            Err(e) => record_error(errors, &format!("{key}-run-{i}"), &e),
        }
    }
    Repeated {
        median: (!tries.is_empty()).then(|| median_of(&tries, p99, flavor, proxies)),
        middle: median_run(tries, p99),
    }
}

/// The middle run by `p99` (the lower of two), to stand for its size.
fn median_run(mut runs: Vec<Value>, p99: fn(&Value) -> f64) -> Option<Value> {
    runs.sort_by(|a, b| p99(a).total_cmp(&p99(b)));
    let middle = runs.len().checked_sub(1)? / 2;
    Some(runs.swap_remove(middle))
}

/// Repeated runs of one size and flavor: each p99 and the median's.
fn median_of(runs: &[Value], p99: fn(&Value) -> f64, flavor: &str, proxies: usize) -> Value {
    let mut p99s: Vec<f64> = runs.iter().map(p99).collect();
    p99s.sort_by(f64::total_cmp);
    json!({
        "flavor": flavor,
        "proxies": proxies,
        "p99_ms": p99s,
        "median_p99_ms": p99s[(p99s.len() - 1) / 2],
    })
}

/// Steady RSS growth per sidecar between the smallest and largest SotW cold runs, in KiB.
fn rss_slope(runs: &[Value]) -> Option<f64> {
    let sotw: Vec<(f64, f64)> = runs
        .iter()
        .filter(|r| r["flavor"] == "sotw")
        .filter_map(|r| {
            Some((
                r["proxies"].as_f64()?,
                r["server"]["steady_rss_mib"].as_f64()?,
            ))
        })
        .collect();
    let low = sotw.iter().min_by(|a, b| a.0.total_cmp(&b.0))?;
    let high = sotw.iter().max_by(|a, b| a.0.total_cmp(&b.0))?;
    (high.0 > low.0).then(|| round2((high.1 - low.1) * 1024.0 / (high.0 - low.0)))
}

fn scaling_points(report: &Value) -> Vec<plot::Point> {
    let mut points: Vec<plot::Point> = report["cold"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["flavor"] == "sotw")
        .filter_map(|r| {
            let latency = &r["connect_to_complete_ms"];
            Some(plot::Point {
                proxies: r["proxies"].as_f64()?,
                p50_s: latency["p50"].as_f64()? / 1000.0,
                p99_s: latency["p99"].as_f64()? / 1000.0,
                steady_mib: r["server"]["steady_rss_mib"].as_f64()?,
                peak_mib: r["server"]["peak_rss_mib"].as_f64()?,
            })
        })
        .collect();
    points.sort_by(|a, b| a.proxies.total_cmp(&b.proxies));
    points
}

fn latency(v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    format!("{}/{}/{}", f("p50"), f("p99"), f("max"))
}

fn by_type(v: &Value) -> String {
    ["cds", "eds", "lds", "rds", "vhds"]
        .iter()
        .map(|k| format!("{k} {}", v[k].as_f64().unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per run; latencies as p50/p99/max in ms.
fn table(report: &Value) -> String {
    let mut out = vec![format!(
        "{:<22} {:>7} {:>11}  {:<22} {}",
        "scenario", "proxies", "complete", "p50/p99/max ms", "server and notes"
    )];
    let complete = |c: &Value| format!("{}/{}", c["complete"], c["proxies"]);
    for r in report["cold"].as_array().into_iter().flatten() {
        let s = &r["server"];
        out.push(format!(
            "{:<22} {:>7} {:>11}  {:<22} peak {} MiB, steady {} MiB, cpu {} s connecting / {} s idle, {:.0} MB sent, nacks {}",
            format!("cold {}", r["flavor"].as_str().unwrap_or("")),
            r["proxies"],
            complete(r),
            latency(&r["connect_to_complete_ms"]),
            s["peak_rss_mib"],
            s["steady_rss_mib"],
            s["cpu_seconds_connecting"],
            s["cpu_seconds_idle"],
            r["bytes_total"].as_f64().unwrap_or(0.0) / 1e6,
            r["client_problems"]["nacks"],
        ));
    }
    out.extend(median_lines(report, "cold"));
    if let Some(slope) = report["rss_slope_kib_per_proxy"].as_f64() {
        out.push(format!(
            "{:<22} {slope} KiB of steady RSS per sidecar",
            "rss slope"
        ));
    }
    let churn_line = |label: &str, r: &Value| {
        format!(
            "{:<22} {:>7} {:>11}  {:<22} {} changes, {} missing; responses in window: {}; server rss {} → peak {} → {} MiB",
            label,
            r["connect"]["proxies"],
            complete(&r["connect"]),
            latency(&r["write_to_eds_ack_ms"]),
            r["changes"],
            r["missing"],
            by_type(&r["received_in_window"]["responses_by_type"]),
            r["server"]["rss_churn_start_mib"],
            r["server"]["rss_peak_during_churn_mib"],
            r["server"]["rss_end_mib"],
        )
    };
    if report["churn"].is_object() {
        out.push(churn_line("churn (write→EDS ack)", &report["churn"]));
    }
    if report["churn_delta"].is_object() {
        out.push(churn_line("churn delta →EDS ack", &report["churn_delta"]));
    }
    out.extend(median_lines(report, "churn"));
    for r in report["churn_delta_scale"].as_array().into_iter().flatten() {
        out.push(churn_line("churn delta →EDS ack", r));
    }
    for (key, label) in [
        ("vs_edit", "vs-edit (write→RDS ack)"),
        ("vs_edit_vhds", "vs-edit VHDS →ack"),
    ] {
        let v = &report[key];
        if !v.is_object() {
            continue;
        }
        out.push(format!(
            "{:<22} {:>7} {:>11}  {:<22} {} VS, {} missing; responses after edit: {}",
            label,
            v["connect"]["proxies"],
            complete(&v["connect"]),
            latency(&v["edit_to_ack_ms"]),
            v["virtual_services"],
            v["missing"],
            by_type(&v["received_after_edit"]["responses_by_type"]),
        ));
    }
    for (key, label) in [
        ("restart", "restart (start→resync)"),
        ("restart_delta", "restart delta →resync"),
    ] {
        let r = &report[key];
        if !r.is_object() {
            continue;
        }
        out.push(format!(
            "{:<22} {:>7} {:>11}  {:<22} not resynced {}, client nacks {}, server rejects {}, differing resources {} of {}, bytes after restart {}",
            label,
            r["connect"]["proxies"],
            complete(&r["connect"]),
            latency(&r["start_to_resynced_ms"]),
            r["not_resynced"],
            r["client_nacks_after_restart"],
            r["server_rejects_after_restart"],
            r["resources_differing"],
            r["resources_compared"],
            r["received_after_restart"]["bytes_total"],
        ));
    }
    out.extend(median_lines(report, "restart"));
    let s = &report["stalled"];
    if s.is_object() {
        out.push(churn_line("stalled: 0 stalled", &s["without_stalled"]));
        out.push(churn_line("stalled: 20 stalled", &s["with_20_stalled"]));
    }
    for e in report["errors"].as_array().into_iter().flatten() {
        out.push(format!("FAILED {}: {}", e["scenario"], e["error"]));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_uses_smallest_and_largest_sotw_runs() {
        let run = |n: u32, flavor: &str, mib: f64| json!({"proxies": n, "flavor": flavor, "server": {"steady_rss_mib": mib}});
        let runs = [
            run(1000, "sotw", 100.0),
            run(2000, "delta", 900.0),
            run(10000, "sotw", 190.0),
        ];
        assert_eq!(rss_slope(&runs), Some(10.24));
        assert_eq!(rss_slope(&runs[..2]), None);
    }

    #[test]
    fn repeated_cold_runs_report_the_middle_one() {
        let run = |p99: f64| json!({"flavor": "sotw", "proxies": 2000, "connect_to_complete_ms": {"p99": p99}});
        let runs = vec![run(3100.0), run(2500.0), run(2700.0)];
        assert_eq!(
            median_of(&runs, cold_p99, "sotw", 2000)["median_p99_ms"],
            2700.0
        );
        assert_eq!(
            median_of(&runs, cold_p99, "sotw", 2000)["p99_ms"],
            json!([2500.0, 2700.0, 3100.0])
        );
        assert_eq!(cold_p99(&median_run(runs, cold_p99).unwrap()), 2700.0);
        assert_eq!(
            cold_p99(&median_run(vec![run(9.0), run(4.0)], cold_p99).unwrap()),
            4.0
        );
        assert_eq!(median_run(vec![], cold_p99), None);
        let three = [run(3100.0), run(2500.0), run(2700.0)];
        let report = json!({"cold_medians": [median_of(&three, cold_p99, "sotw", 2000)]});
        let table = table(&report);
        assert!(table.contains("-/2700/-"), "{table}");
        assert!(table.contains("2500, 2700, 3100 ms"), "{table}");
    }

    #[test]
    fn options_accept_inline_values_and_check_scenarios() {
        let args = strings(&["--proxies=300", "--scenario", "churn", "--server-arg=--x=1"]);
        let o = parse_options(&args).unwrap();
        assert_eq!(o.proxies, Some(300));
        assert_eq!(o.scenarios, ["churn"]);
        assert_eq!(o.server_args, ["--x=1"]);
        assert!(parse_options(&strings(&["--scenario", "nope"])).is_err());
        assert_eq!(parse_options(&[]).unwrap().scenarios.len(), 5);
    }

    #[test]
    fn table_lists_every_churn_fleet_size() {
        let run = |n: u32, p99: f64| {
            json!({"connect": {"proxies": n, "complete": n},
                   "write_to_eds_ack_ms": {"p50": 1.0, "p99": p99, "max": 2.0 * p99}})
        };
        let report = json!({
            "churn_delta": run(5000, 1777.0),
            "churn_delta_scale": [run(1000, 190.0), run(2500, 381.0)],
        });
        let rows: Vec<String> = table(&report)
            .lines()
            .filter(|l| l.starts_with("churn delta"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            rows,
            ["5000 5000/5000", "1000 1000/1000", "2500 2500/2500"],
            "{}",
            table(&report)
        );
        assert!(table(&report).contains("1/190/380"));
        let three = [run(5000, 300.0), run(5000, 240.0), run(5000, 260.0)];
        let medians = json!({"churn_medians": [median_of(&three, churn_p99, "delta", 5000)]});
        let table = table(&medians);
        assert!(table.contains("churn delta median"), "{table}");
        assert!(table.contains("-/260/-"), "{table}");
        assert!(table.contains("240, 260, 300 ms"), "{table}");
    }
}
