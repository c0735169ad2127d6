//! `cargo xtask bench`: the load benchmark. Builds release binaries, generates a mesh, runs
//! `meshpilot discovery` on loopback and drives it with `loadgen`, sampling the server's RSS
//! and CPU time from /proc. Prints a table and writes `target/bench/report.json`.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server's resource use, read from /proc/<pid>.
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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_ready(addr: &str) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(120);
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
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("discovery not ready at {addr}")
}

/// One scenario: a fresh server on the mesh, `proxies` connecting at once, then `hold` seconds
/// of nothing happening.
fn cold_connect(
    root: &Path,
    mesh: &Path,
    proxies: usize,
    flavor: &str,
    hold: u64,
) -> Result<serde_json::Value> {
    let bin = root.join("target/release");
    let work = root.join("target/bench");
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let monitoring = format!("127.0.0.1:{}", free_port()?);
    let server = Server(
        Command::new(bin.join("meshpilot"))
            .args(["discovery", "--log-level", "warn", "--config-dir"])
            .arg(mesh)
            .args(["--grpc-addr", &grpc, "--monitoring-addr", &monitoring])
            .args(["--secure-grpc-addr", &format!("127.0.0.1:{}", free_port()?)])
            .arg("--tls-dir")
            .arg(work.join("tls"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                work.join(format!("discovery-{flavor}-{proxies}.log")),
            )?)
            .spawn()
            .context("starting meshpilot discovery")?,
    );
    wait_ready(&monitoring)?;
    let pid = server.0.id();
    let before = proc_stats(pid)?;
    let mut loadgen = Command::new(bin.join("loadgen"))
        .args(["connect", "--xds", &grpc, "--flavor", flavor])
        .args([
            "--proxies",
            &proxies.to_string(),
            "--hold-secs",
            &hold.to_string(),
        ])
        .args(["--timeout-secs", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting loadgen")?;
    let mut stdout = loadgen.stdout.take().context("loadgen stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    // Sample the server when every proxy holds its config (loadgen says so on stderr): the
    // idle period runs from there to the end.
    let stderr = loadgen.stderr.take().context("loadgen stderr")?;
    let (complete_tx, complete_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            if line.contains("hold their config") {
                let _ = complete_tx.send(());
            }
        }
    });
    let mut at_complete = None;
    let status = loop {
        if at_complete.is_none() && complete_rx.try_recv().is_ok() {
            at_complete = Some(proc_stats(pid)?);
        }
        if let Some(status) = loadgen.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let report_text = reader.join().expect("reader thread")?;
    if !status.success() {
        bail!("loadgen failed: {report_text}");
    }
    let after = proc_stats(pid)?;
    let mut report: serde_json::Value = serde_json::from_str(report_text.trim())?;
    let complete = at_complete.context("loadgen never reported completion")?;
    report["server"] = serde_json::json!({
        "rss_before_connects_mib": before.rss_kib as f64 / 1024.0,
        "peak_rss_mib": after.peak_rss_kib as f64 / 1024.0,
        "rss_steady_mib": after.rss_kib as f64 / 1024.0,
        "cpu_seconds_connecting": complete.cpu_seconds - before.cpu_seconds,
        "idle_seconds": hold,
        "cpu_seconds_idle": after.cpu_seconds - complete.cpu_seconds,
    });
    Ok(report)
}

pub fn run(root: &Path, extra: &[String]) -> Result<()> {
    let proxies: usize = extra
        .iter()
        .position(|a| a == "--proxies")
        .and_then(|i| extra.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(2000);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::run(Command::new(&cargo).args([
        "build",
        "--release",
        "--bin",
        "meshpilot",
        "--bin",
        "loadgen",
    ]))?;
    let work = root.join("target/bench");
    let mesh = work.join("mesh-1000x5");
    let _ = std::fs::remove_dir_all(&mesh);
    std::fs::create_dir_all(&work)?;
    crate::run(Command::new(root.join("target/release/loadgen")).args([
        "generate",
        "--dir",
        mesh.to_str().context("utf-8 path")?,
        "--services",
        "1000",
        "--endpoints",
        "5",
        "--virtual-services",
        "100",
        "--destination-rules",
        "100",
    ]))?;
    let mut results = Vec::new();
    for flavor in ["sotw", "delta"] {
        eprintln!("xtask: bench: {proxies} proxies connecting at once ({flavor}), then 10 s idle");
        let report = cold_connect(root, &mesh, proxies, flavor, 10)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        results.push(report);
    }
    std::fs::write(
        work.join("report.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!(
        "xtask: bench: report in {}",
        work.join("report.json").display()
    );
    Ok(())
}
