//! `meshpilot agent`: a real Envoy 1.40 started on the generated bootstrap, ready on 15021,
//! drained by SIGTERM; signals forwarded; failures reported with Envoy's own words.
//!
//! Everything that runs Envoy (or could touch 127.0.0.1:15000) runs inside a pod network
//! namespace, so the bootstrap's 0.0.0.0 listeners never bind on the host. Needs root.

use anyhow::{Context, Result, bail, ensure};
use meshpilot_tests::netns::{Child, Fabric, Pod, require_binary};
use meshpilot_tests::workspace_root;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MESHPILOT: &str = env!("CARGO_BIN_EXE_meshpilot");
const POD_IP: &str = "10.244.7.7";
const POD_NAME: &str = "productpage-v1-6b7f6dc5f-ccccc";
const READY_URL: &str = "http://127.0.0.1:15021/healthz/ready";

/// The Envoy 1.40 binary: `$MESHPILOT_ENVOY`, else `.tools/bin/envoy`.
fn envoy_binary() -> PathBuf {
    let candidate = std::env::var_os("MESHPILOT_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin/envoy"));
    assert!(
        candidate.exists(),
        "this test needs the Envoy 1.40 binary, not found at {}: run `cargo xtask install` \
         or set MESHPILOT_ENVOY",
        candidate.display()
    );
    candidate
}

/// `env -i` with the downward-API variables of an injected pod, then `meshpilot agent`.
fn agent_argv(extra_env: &[&str], agent_args: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = [
        "env",
        "-i",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "NO_COLOR=1",
        &format!("POD_NAME={POD_NAME}"),
        "POD_NAMESPACE=default",
        &format!("INSTANCE_IP={POD_IP}"),
        "SERVICE_ACCOUNT=bookinfo-productpage",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra_env.iter().map(|s| s.to_string()));
    argv.extend([MESHPILOT.to_string(), "agent".to_string()]);
    argv.extend(agent_args.iter().map(|s| s.to_string()));
    argv
}

fn sidecar_pod(fabric: &Fabric) -> Result<Pod> {
    fabric.add_pod("sidecar", &format!("{POD_IP}/16"))
}

/// A stand-in for Envoy: a shell script in the fabric's work dir.
fn fake_envoy(fabric: &Fabric, name: &str, script: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = fabric.write_file(&format!("bin/{name}"), script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Sends `signal` to the agent alone (its process group also holds Envoy).
fn signal_agent(agent: &Child, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal, &agent.pid().to_string()])
        .status()?;
    ensure!(status.success(), "kill -s {signal} failed");
    Ok(())
}

/// The HTTP status of `url` fetched from inside `pod`, `000` when nothing answers.
fn http_status(pod: &Pod, url: &str) -> Result<String> {
    let out = pod.run(
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "1",
            url,
        ],
        None,
        Duration::from_secs(5),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn start_control_plane(pod: &Pod, fabric: &Fabric) -> Result<Child> {
    let examples = workspace_root().join("deploy/examples");
    let tls = fabric.work_dir().join("tls");
    let mut cp = pod.spawn(
        &[
            Path::new(MESHPILOT).as_os_str(),
            "discovery".as_ref(),
            "--config-dir".as_ref(),
            examples.as_os_str(),
            "--grpc-addr".as_ref(),
            "127.0.0.1:15010".as_ref(),
            "--secure-grpc-addr".as_ref(),
            "127.0.0.1:15012".as_ref(),
            "--monitoring-addr".as_ref(),
            "127.0.0.1:15014".as_ref(),
            "--tls-dir".as_ref(),
            tls.as_os_str(),
        ],
        None,
    )?;
    cp.wait_for_output("serving", Duration::from_secs(20))?;
    Ok(cp)
}

#[test]
fn agent_runs_envoy_until_sigterm_drains_it() -> Result<()> {
    let envoy = envoy_binary();
    require_binary("curl").context("the readiness checks use curl (`apt-get install curl`)")?;
    let fabric = Fabric::new("mpa")?;
    let pod = sidecar_pod(&fabric)?;
    let _control_plane = start_control_plane(&pod, &fabric)?;
    let bootstrap = fabric.work_dir().join("proxy/envoy-rev.json");
    let labels = fabric.write_file("pod/labels", "app=\"productpage\"\nversion=\"v1\"\n")?;
    let drain = Duration::from_secs(3);
    let grace = Duration::from_secs(5);
    let argv = agent_argv(
        &["ISTIO_META_CLUSTER_ID=Kubernetes"],
        &[
            "--xds-address",
            "127.0.0.1:15010",
            "--envoy-binary",
            &envoy.display().to_string(),
            "--bootstrap-path",
            &bootstrap.display().to_string(),
            "--pod-labels",
            &labels.display().to_string(),
            "--drain-duration",
            "3s",
            "--stop-grace-period",
            "5s",
        ],
    );
    let mut agent = pod.spawn(&argv, None)?;

    // Ready: 15021 /healthz/ready answers 200 once Envoy has its first listeners and clusters.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http_status(&pod, READY_URL)? == "200" {
            break;
        }
        if !agent.is_running() || Instant::now() > deadline {
            bail!("Envoy never became ready on 15021\n{}", agent.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&bootstrap)?)?;
    let node = &written["node"];
    assert_eq!(
        node["id"],
        format!("sidecar~{POD_IP}~{POD_NAME}.default~default.svc.cluster.local")
    );
    assert_eq!(node["cluster"], "productpage.default");
    assert_eq!(node["metadata"]["CLUSTER_ID"], "Kubernetes");
    assert_eq!(node["metadata"]["LABELS"]["version"], "v1");
    assert_eq!(node["metadata"]["SERVICE_ACCOUNT"], "bookinfo-productpage");
    agent.wait_for_output("Envoy is ready", Duration::from_secs(10))?;

    // SIGTERM: the readiness check fails while Envoy still answers, then everything exits.
    signal_agent(&agent, "TERM")?;
    let terminated = Instant::now();
    let mut saw_draining = false;
    while agent.is_running() && terminated.elapsed() < drain + grace + Duration::from_secs(5) {
        let status = http_status(&pod, READY_URL)?;
        if status == "503" && agent.is_running() {
            saw_draining = true;
        }
        ensure!(
            status != "200" || terminated.elapsed() < Duration::from_secs(1),
            "still ready {:?} after SIGTERM\n{}",
            terminated.elapsed(),
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = agent.wait_timeout(Duration::from_secs(1))?;
    let took = terminated.elapsed();
    let logs = agent.logs();
    assert!(saw_draining, "never saw 503 while draining\n{logs}");
    assert!(status.success(), "agent exited with {status}\n{logs}");
    assert!(
        took >= drain - Duration::from_millis(500) && took <= drain + grace,
        "agent exited {took:?} after SIGTERM, drain is {drain:?}\n{logs}"
    );
    assert!(logs.contains("received SIGTERM: draining Envoy"), "{logs}");
    assert!(logs.contains("Envoy exited with exit status: 0"), "{logs}");
    assert_eq!(
        http_status(&pod, READY_URL)?,
        "000",
        "Envoy outlived the agent"
    );
    Ok(())
}

#[test]
fn agent_forwards_signals_and_exits_with_envoys_status() -> Result<()> {
    let fabric = Fabric::new("mpa")?;
    let pod = sidecar_pod(&fabric)?;
    let envoy = fake_envoy(
        &fabric,
        "envoy-traps",
        "#!/bin/sh\n\
         trap 'echo fake envoy got HUP >&2' HUP\n\
         trap 'echo fake envoy got USR1 >&2' USR1\n\
         trap 'echo fake envoy got INT >&2; exit 130' INT\n\
         echo \"fake envoy started: $*\" >&2\n\
         while :; do sleep 0.05; done\n",
    )?;
    let bootstrap = fabric.work_dir().join("envoy-rev.json");
    let argv = agent_argv(
        &[],
        &[
            "--xds-address",
            "127.0.0.1:15010",
            "--envoy-binary",
            &envoy.display().to_string(),
            "--bootstrap-path",
            &bootstrap.display().to_string(),
        ],
    );
    let mut agent = pod.spawn(&argv, None)?;
    agent.wait_for_output("fake envoy started", Duration::from_secs(10))?;
    let logs = agent.logs();
    assert!(
        logs.contains(&format!(
            "-c {} --concurrency 2 --log-level warning --drain-time-s 5 --drain-strategy \
             immediate --disable-hot-restart",
            bootstrap.display()
        )),
        "{logs}"
    );
    for (signal, echo) in [("HUP", "got HUP"), ("USR1", "got USR1")] {
        signal_agent(&agent, signal)?;
        agent.wait_for_output(echo, Duration::from_secs(5))?;
    }
    signal_agent(&agent, "INT")?;
    let status = agent.wait_timeout(Duration::from_secs(10))?;
    let logs = agent.logs();
    assert_eq!(status.code(), Some(130), "{logs}");
    assert!(
        logs.contains("received SIGINT: forwarding SIGINT to Envoy"),
        "{logs}"
    );
    Ok(())
}

#[test]
fn agent_reports_an_early_envoy_exit_with_its_last_stderr_lines() -> Result<()> {
    let fabric = Fabric::new("mpa")?;
    let pod = sidecar_pod(&fabric)?;
    let failing = fake_envoy(
        &fabric,
        "envoy-fails",
        "#!/bin/sh\necho 'loading bootstrap' >&2\necho 'bad bootstrap: unknown field' >&2\nexit 3\n",
    )?;
    let bootstrap = fabric.work_dir().join("envoy-rev.json");
    let bootstrap = bootstrap.display().to_string();
    let common = ["--xds-address", "127.0.0.1:15010", "--bootstrap-path"];

    let mut args: Vec<&str> = common.to_vec();
    let failing = failing.display().to_string();
    args.extend([bootstrap.as_str(), "--envoy-binary", &failing]);
    let out = pod.run(&agent_argv(&[], &args), None, Duration::from_secs(20))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("Envoy exited on its own"), "{stderr}");
    assert!(
        stderr.contains("  | loading bootstrap\n  | bad bootstrap: unknown field"),
        "{stderr}"
    );

    // The real Envoy refusing its command line.
    let envoy = envoy_binary().display().to_string();
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        bootstrap.as_str(),
        "--envoy-binary",
        &envoy,
        "--proxy-log-level",
        "nonsense",
    ]);
    let out = pod.run(&agent_argv(&[], &args), None, Duration::from_secs(20))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Envoy exited on its own"), "{stderr}");
    assert!(stderr.contains("  | error: invalid log level"), "{stderr}");
    Ok(())
}

/// Never reaches Envoy, so it runs without a namespace.
#[test]
fn agent_without_an_envoy_binary_fails_clearly() {
    let work = tempfile::tempdir().unwrap();
    let bootstrap = work.path().join("proxy/envoy-rev.json");
    let missing = work.path().join("no-such-envoy");
    let bootstrap_arg = bootstrap.display().to_string();
    let run = |envoy: &str| {
        let argv = agent_argv(
            &[],
            &[
                "--xds-address",
                "127.0.0.1:15010",
                "--envoy-binary",
                envoy,
                "--bootstrap-path",
                &bootstrap_arg,
            ],
        );
        Command::new(&argv[0]).args(&argv[1..]).output().unwrap()
    };
    let out = run(&missing.display().to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot start Envoy: {} does not exist",
            missing.display()
        )),
        "{stderr}"
    );
    // The bootstrap was written before Envoy was looked for.
    assert!(bootstrap.is_file());

    let out = run("no-such-envoy-on-path");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-envoy-on-path is not on PATH"),
        "{stderr}"
    );
}

#[test]
fn agent_without_the_pod_environment_fails_clearly() {
    let out = Command::new("env")
        .args(["-i", "POD_NAME=p", MESHPILOT, "agent"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing environment variable(s) POD_NAMESPACE, INSTANCE_IP"),
        "{stderr}"
    );

    // The TLS port without a root certificate is refused rather than tried in plaintext.
    let out = Command::new("env")
        .args([
            "-i",
            "POD_NAME=p",
            "POD_NAMESPACE=ns",
            "INSTANCE_IP=10.244.1.1",
            MESHPILOT,
            "agent",
            "--xds-address",
            "cp.example:15012",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pass --tls-root-cert FILE"), "{stderr}");
}
