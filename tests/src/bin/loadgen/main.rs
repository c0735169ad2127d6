//! Load generator for `cargo xtask bench`: simulated sidecars ([`meshpilot_tests::lite_client`])
//! driving a running `meshpilot discovery`, one scenario per subcommand. Every scenario prints
//! one JSON report on stdout and marks its phases on stderr (`loadgen: phase: NAME`) so the
//! harness can sample the server at those moments.
//!
//! ```text
//! loadgen generate --dir DIR [--services 1000 --endpoints 5 --virtual-services 100
//!     --destination-rules 100 --namespaces 10]
//! loadgen cold --xds ADDR --proxies N [--flavor sotw|delta] [--hold-secs H] [--timeout-secs T]
//! loadgen churn --xds ADDR --metrics ADDR --mesh DIR --proxies N [--rate 100]
//!     [--duration-secs 20] [--stalled K] [--settle-secs 30]
//! loadgen vs-edit --xds ADDR --metrics ADDR --mesh DIR --proxies N
//! loadgen restart --xds ADDR --metrics ADDR --proxies N   (reads `restarted <unix µs>` on stdin)
//! ```
//!
//! `connect` is the old name of `cold`. Common flags: `--flavor`, `--namespaces` (of the
//! sidecars, default 10), `--timeout-secs` (for the initial connect, default 120).

// The simulated sidecars share the server's cores: glibc's malloc was a fifth of their CPU
// (request buffers of ~200 KB per reconnecting sidecar), jemalloc is cheaper.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod churn;
mod cold;
mod fleet;
mod restart;
mod vs_edit;

use anyhow::{Context, Result};
use meshpilot_tests::meshgen::{MeshSpec, write_mesh};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or_default();
    let result = flags(args.get(1..).unwrap_or_default()).and_then(|f| match command {
        "generate" => generate(&f),
        "cold" | "connect" => run_async(cold::run(f)),
        "churn" => run_async(churn::run(f)),
        "vs-edit" => run_async(vs_edit::run(f)),
        "restart" => run_async(restart::run(f)),
        _ => Err(anyhow::anyhow!(
            "usage: loadgen generate|cold|churn|vs-edit|restart --flag value ... (see the source)"
        )),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_async(scenario: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    fleet::raise_open_files_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(scenario)
}

/// `--flag value` pairs.
pub struct Flags(BTreeMap<String, String>);

fn flags(args: &[String]) -> Result<Flags> {
    let mut map = BTreeMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .with_context(|| format!("unexpected argument {flag:?}"))?;
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        map.insert(name.to_string(), value.clone());
    }
    Ok(Flags(map))
}

impl Flags {
    pub fn number(&self, name: &str, default: usize) -> Result<usize> {
        self.0
            .get(name)
            .map(|v| v.parse().with_context(|| format!("--{name} {v:?}")))
            .unwrap_or(Ok(default))
    }

    pub fn text(&self, name: &str) -> Result<String> {
        self.0
            .get(name)
            .cloned()
            .with_context(|| format!("--{name} is required"))
    }

    pub fn text_or(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    pub fn seconds(&self, name: &str, default: u64) -> Result<std::time::Duration> {
        Ok(std::time::Duration::from_secs(
            self.number(name, default as usize)? as u64,
        ))
    }
}

fn generate(f: &Flags) -> Result<()> {
    let dir = PathBuf::from(f.text("dir")?);
    let spec = MeshSpec {
        services: f.number("services", 1000)?,
        endpoints: f.number("endpoints", 5)?,
        virtual_services: f.number("virtual-services", 100)?,
        destination_rules: f.number("destination-rules", 100)?,
        namespaces: f.number("namespaces", 10)?,
    };
    write_mesh(&spec, &dir)?;
    println!(
        "{}",
        serde_json::json!({"generated": dir, "spec": spec.to_json()})
    );
    Ok(())
}
