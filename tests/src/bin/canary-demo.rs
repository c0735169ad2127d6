//! `cargo xtask demo`: the 90/10 reviews canary with real Envoy, in network namespaces.
//!
//! Starts meshpilot on the example mesh (deploy/examples), the reviews-v1/v2 backends and a
//! productpage pod whose traffic istio-init's rules send through an Envoy sidecar; sends 1,000
//! requests to http://reviews:9080 and prints the split; then removes everything it made.

use anyhow::{Result, bail};
use meshpilot_tests::canary::{CanaryMesh, CanaryOptions, Tools, XdsApi};
use meshpilot_tests::netns::effective_uid;
use meshpilot_tests::workspace_root;

const REQUESTS: u64 = 1000;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    if effective_uid()? != 0 {
        bail!(
            "the demo needs root: it creates network namespaces and installs iptables rules \
             in them (run `sudo cargo xtask demo`)"
        );
    }
    let options = CanaryOptions {
        xds_api: XdsApi::Delta,
        tls: false,
        mesh_source: workspace_root().join("deploy/examples"),
        prefix: "demo",
        vhds: false,
    };
    println!("starting meshpilot, reviews-v1, reviews-v2 and the productpage sidecar ...");
    let mesh = CanaryMesh::start(Tools::locate()?, &options)?;
    println!("sending {REQUESTS} requests from productpage to http://reviews:9080 ...\n");
    let tally = mesh.requests(REQUESTS, &[])?;
    println!("  version  requests  share");
    for version in ["v1", "v2"] {
        let n = tally.count(version);
        let share = n as f64 * 100.0 / REQUESTS as f64;
        let bar = "#".repeat((share / 2.0).round() as usize);
        println!("  {version:<7}  {n:>8}  {share:>4.1}%  {bar}");
    }
    let other: u64 = tally
        .counts
        .iter()
        .filter(|(body, _)| !["v1", "v2"].contains(&body.as_str()))
        .map(|(_, n)| n)
        .sum();
    if other + tally.errors > 0 {
        println!("  other    {:>8}  (errors {})", other, tally.errors);
    }
    println!("\nVirtualService reviews: 90% to subset v1, 10% to subset v2.");
    let jason = mesh.requests(20, &[("end-user", "jason")])?;
    println!(
        "with header end-user: jason, {} of 20 requests went to v2.",
        jason.count("v2")
    );
    drop(mesh);
    println!("cleaned up.");
    Ok(())
}
