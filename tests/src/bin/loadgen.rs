//! Load generator for `cargo xtask bench`.
//!
//! `loadgen generate --dir DIR [--services S --endpoints E --virtual-services V
//!     --destination-rules D --namespaces N]` writes a synthetic mesh for the file source.
//!
//! `loadgen connect --xds HOST:PORT --proxies N [--flavor sotw|delta] [--namespaces N]
//!     [--timeout-secs T] [--hold-secs H]` connects N simulated sidecars at once over real gRPC
//! streams (each with its own node id, IP, namespace and labels; subscribing and ACKing like
//! Envoy: CDS, then EDS for its clusters, LDS, then RDS for its routes), waits until every one
//! holds its complete config, optionally keeps them connected for H seconds, and prints one
//! JSON report: time from connect to complete config (p50/p99/max), bytes and responses.

use anyhow::{Context, Result, bail};
use meshpilot_tests::meshgen::{MeshSpec, write_mesh};
use meshpilot_tests::xds_client::{Flavor, Keep, XdsClient, metadata};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("generate") => generate(&args[1..]),
        Some("connect") => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|rt| rt.block_on(connect(&args[1..]))),
        _ => Err(anyhow::anyhow!(
            "usage: loadgen generate --dir DIR ... | loadgen connect --xds HOST:PORT --proxies N ..."
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--flag value` pairs.
fn flags(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .with_context(|| format!("unexpected argument {flag:?}"))?;
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        map.insert(name.to_string(), value.clone());
    }
    Ok(map)
}

fn number(flags: &BTreeMap<String, String>, name: &str, default: usize) -> Result<usize> {
    flags
        .get(name)
        .map(|v| v.parse().with_context(|| format!("--{name} {v:?}")))
        .unwrap_or(Ok(default))
}

fn generate(args: &[String]) -> Result<()> {
    let f = flags(args)?;
    let dir = PathBuf::from(f.get("dir").context("--dir is required")?);
    let spec = MeshSpec {
        services: number(&f, "services", 1000)?,
        endpoints: number(&f, "endpoints", 5)?,
        virtual_services: number(&f, "virtual-services", 100)?,
        destination_rules: number(&f, "destination-rules", 100)?,
        namespaces: number(&f, "namespaces", 10)?,
    };
    write_mesh(&spec, &dir)?;
    println!(
        "{}",
        serde_json::json!({"generated": dir, "spec": format!("{spec:?}")})
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn connect(args: &[String]) -> Result<()> {
    let f = flags(args)?;
    let xds = f.get("xds").context("--xds is required")?.clone();
    let proxies = number(&f, "proxies", 100)?;
    let namespaces = number(&f, "namespaces", 10)?.max(1);
    let timeout = Duration::from_secs(number(&f, "timeout-secs", 60)? as u64);
    let hold = Duration::from_secs(number(&f, "hold-secs", 0)? as u64);
    let flavor = match f.get("flavor").map(String::as_str).unwrap_or("sotw") {
        "sotw" => Flavor::Sotw,
        "delta" => Flavor::Delta,
        other => bail!("--flavor {other:?}: sotw or delta"),
    };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(proxies);
    for i in 0..proxies {
        let xds = xds.clone();
        tasks.push(tokio::spawn(async move {
            let ns = format!("ns-{}", i % namespaces);
            let ip = format!("10.200.{}.{}", i / 250, i % 250 + 1);
            let node = format!("sidecar~{ip}~load-{i}.{ns}~{ns}.svc.cluster.local");
            let app = format!("load-{i}");
            let meta = metadata(&[
                ("NAMESPACE", ns.as_str()),
                ("INSTANCE_IPS", ip.as_str()),
                (
                    "LABELS",
                    &format!("{{\"app\":\"{app}\",\"version\":\"v1\"}}"),
                ),
            ]);
            let begun = Instant::now();
            let mut client =
                XdsClient::connect_keeping(&xds, &node, meta, flavor, Keep::Names).await?;
            let state = client
                .wait_for("complete config", timeout, |s| s.is_complete())
                .await?;
            anyhow::Ok((begun.elapsed(), state, client))
        }));
    }
    let mut times = Vec::with_capacity(proxies);
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    let mut responses: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut clients = Vec::with_capacity(proxies);
    for task in tasks {
        match task.await? {
            Ok((took, state, client)) => {
                times.push(took);
                for (t, b) in state.bytes {
                    *bytes.entry(short(&t)).or_default() += b;
                }
                for (t, n) in state.responses {
                    *responses.entry(short(&t)).or_default() += n;
                }
                clients.push(client);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let all_done = started.elapsed();
    // The bench harness samples the server from this line on (the idle period).
    eprintln!("loadgen: {} proxies hold their config", times.len());
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    times.sort();
    let report = serde_json::json!({
        "proxies": proxies,
        "flavor": format!("{flavor:?}"),
        "complete": times.len(),
        "failures": failures.len(),
        "first_failure": failures.first(),
        "all_complete_ms": all_done.as_secs_f64() * 1000.0,
        "connect_to_complete_ms": {
            "p50": percentile(&times, 0.5),
            "p99": percentile(&times, 0.99),
            "max": percentile(&times, 1.0),
        },
        "bytes_by_type": bytes,
        "bytes_total": bytes.values().sum::<u64>(),
        "responses_by_type": responses,
    });
    println!("{report}");
    drop(clients);
    if !failures.is_empty() {
        bail!(
            "{} of {proxies} proxies did not get their config",
            failures.len()
        );
    }
    Ok(())
}

fn short(type_url: &str) -> String {
    type_url.rsplit('.').next().unwrap_or(type_url).to_string()
}
