//! The load generator behind `cargo xtask bench` (simulated sidecars over real gRPC streams)
//! against a real `meshpilot discovery` on loopback, at a small size: every sidecar completes,
//! ACKs, and is credited with every endpoint change the churn writes, in both xDS flavors and
//! past clients that never read. A broken transport or bookkeeping in the harness would
//! otherwise only show up as odd benchmark numbers.

use anyhow::{Context, Result, bail, ensure};
use meshpilot_tests::{KillOnDrop, free_ports};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROXIES: u64 = 20;
const RATE: u64 = 20;
const SECONDS: u64 = 2;
const STALLED: u64 = 2;

fn loadgen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loadgen"))
}

/// `meshpilot`, built next to the load generator by the workspace build.
fn meshpilot() -> Result<PathBuf> {
    let path = loadgen().with_file_name("meshpilot");
    if !path.exists() {
        bail!(
            "{} not found: build the workspace first (`cargo build --workspace`, which \
             `cargo xtask test` does)",
            path.display()
        );
    }
    Ok(path)
}

fn wait_ready(monitoring: &str, log: &Path) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut tcp) = std::net::TcpStream::connect(monitoring) {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
            let request =
                format!("GET /ready HTTP/1.1\r\nHost: {monitoring}\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            if tcp.write_all(request.as_bytes()).is_ok()
                && tcp.read_to_string(&mut answer).is_ok()
                && answer.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "meshpilot discovery not ready within 30 s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// Runs `loadgen churn` with `flavor` sidecars against a fresh server; returns its report.
fn churn(flavor: &str) -> Result<Value> {
    let work = tempfile::tempdir()?;
    let mesh = work.path().join("mesh");
    let generated = Command::new(loadgen())
        .args(["generate", "--dir"])
        .arg(&mesh)
        .args(["--services", "40", "--endpoints", "3"])
        .args(["--virtual-services", "10", "--destination-rules", "10"])
        .output()
        .context("running loadgen generate")?;
    ensure!(
        generated.status.success(),
        "loadgen generate: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let [grpc, monitoring, secure] = free_ports()?.map(|port| format!("127.0.0.1:{port}"));
    let log = work.path().join("server.log");
    let _server = KillOnDrop(
        Command::new(meshpilot()?)
            .args(["discovery", "--log-level", "warn", "--config-dir"])
            .arg(&mesh)
            .args(["--grpc-addr", &grpc, "--monitoring-addr", &monitoring])
            .args(["--secure-grpc-addr", &secure])
            .arg("--tls-dir")
            .arg(work.path().join("tls"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting meshpilot discovery")?,
    );
    wait_ready(&monitoring, &log)?;
    let numbers = [
        ("--proxies", PROXIES),
        ("--rate", RATE),
        ("--duration-secs", SECONDS),
        ("--settle-secs", 20),
        ("--stalled", STALLED),
        ("--timeout-secs", 60),
    ];
    let mut command = Command::new(loadgen());
    command
        .args(["churn", "--xds", &grpc, "--metrics", &monitoring])
        .args(["--flavor", flavor, "--mesh"])
        .arg(&mesh);
    for (flag, value) in numbers {
        command.args([flag.to_string(), value.to_string()]);
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .context("running loadgen churn")?;
    ensure!(
        out.status.success(),
        "loadgen churn ({flavor}) failed: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).context("loadgen's report is JSON")
}

fn check(report: &Value) {
    let expected = RATE * SECONDS * PROXIES;
    assert_eq!(report["expected"], expected, "{report:#}");
    assert_eq!(
        report["missing"], 0,
        "every change reaches every sidecar: {report:#}"
    );
    assert_eq!(
        report["write_to_eds_ack_ms"]["count"], expected,
        "{report:#}"
    );
    assert_eq!(report["stalled_clients"], STALLED, "{report:#}");
    let window = &report["received_in_window"];
    assert_eq!(window["nacks"], 0, "{report:#}");
    let pushes = &window["responses_by_type"];
    assert!(pushes["eds"].as_u64().unwrap_or(0) >= PROXIES, "{report:#}");
    for kind in ["cds", "lds", "rds"] {
        assert_eq!(pushes[kind], 0, "pod changes push only EDS: {report:#}");
    }
}

#[test]
fn delta_sidecars_are_credited_with_every_endpoint_change() -> Result<()> {
    check(&churn("delta")?);
    Ok(())
}

#[test]
fn sotw_sidecars_are_credited_with_every_endpoint_change() -> Result<()> {
    check(&churn("sotw")?);
    Ok(())
}
