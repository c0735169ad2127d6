//! End to end: meshpilot feeding a real Envoy 1.40 sidecar whose app traffic is intercepted by
//! istio-init's iptables rules, in network namespaces these tests create. Needs root; fails
//! (never skips) without it.
//!
//! Each scenario: 90/10 split within binomial bounds; a header match to v2; a VirtualService
//! edit to 50/50 accepted within 2 s with no NACK and no Envoy restart; a deleted endpoint
//! drained; the control plane stopped (traffic keeps flowing) and restarted (Envoy reconnects
//! and takes new config). Run for a state-of-the-world and a delta bootstrap; the TLS port
//! runs the 90/10 test.

use anyhow::{Context, Result, ensure};
use meshpilot_tests::canary::{CanaryMesh, CanaryOptions, Tally, Tools, XdsApi, stat_values};
use meshpilot_tests::workspace_root;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One mesh at a time: each runs Envoy, meshpilot and thousands of requests on two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const REVIEWS_V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";

fn options(xds_api: XdsApi, tls: bool, prefix: &'static str) -> CanaryOptions {
    CanaryOptions {
        xds_api,
        tls,
        mesh_source: workspace_root().join("deploy/examples"),
        prefix,
        vhds: false,
    }
}

fn fixture(name: &str) -> Result<String> {
    let path = workspace_root().join("tests/fixtures/canary").join(name);
    std::fs::read_to_string(&path).with_context(|| path.display().to_string())
}

fn example(name: &str) -> Result<String> {
    let path = workspace_root().join("deploy/examples").join(name);
    std::fs::read_to_string(&path).with_context(|| path.display().to_string())
}

/// Asserts `hits` of `n` trials is within five standard deviations of `n * p`.
fn assert_binomial(hits: u64, n: u64, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let (lo, hi) = (mean - 5.0 * sigma, mean + 5.0 * sigma);
    assert!(
        (lo..=hi).contains(&(hits as f64)),
        "{what}: {hits} of {n}, expected {mean:.0} (within {lo:.0}..{hi:.0})"
    );
}

fn assert_all_ok(tally: &Tally, n: u64) {
    assert_eq!(tally.errors, 0, "connection errors: {tally:?}");
    assert_eq!(tally.statuses.get("200").copied(), Some(n), "{tally:?}");
}

/// The RDS "9080" update count Envoy reports.
fn route_updates(mesh: &CanaryMesh) -> Result<u64> {
    let stats = mesh.envoy_stats()?;
    Ok(stat_values(&stats, ".rds.9080.update_success")
        .first()
        .map(|(_, v)| *v)
        .unwrap_or(0))
}

/// Polls until Envoy has accepted a route update beyond `before`; returns the time taken.
fn await_route_update(mesh: &CanaryMesh, before: u64, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if route_updates(mesh)? > before {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    anyhow::bail!(
        "Envoy accepted no new route config within {limit:?}\n{}",
        mesh.logs()
    )
}

/// The weight Envoy's active route config gives `cluster`, if some route splits to it.
fn route_weight(mesh: &CanaryMesh, cluster: &str) -> Result<Option<u64>> {
    fn find(value: &serde_json::Value, cluster: &str) -> Option<u64> {
        match value {
            serde_json::Value::Object(map) => {
                if map.get("name").and_then(|n| n.as_str()) == Some(cluster)
                    && let Some(weight) = map.get("weight")
                {
                    return weight.as_u64();
                }
                map.values().find_map(|v| find(v, cluster))
            }
            serde_json::Value::Array(items) => items.iter().find_map(|v| find(v, cluster)),
            _ => None,
        }
    }
    let dump = mesh.envoy_admin("/config_dump?resource=dynamic_route_configs")?;
    let json: serde_json::Value = serde_json::from_str(dump.trim())
        .map_err(|e| anyhow::anyhow!("Envoy's route config dump is not JSON: {e}"))?;
    Ok(find(&json, cluster))
}

/// Polls until Envoy routes `weight` to `cluster` (content, not an update count: a
/// reconnect's own resend can land at any moment).
fn await_route_weight(
    mesh: &CanaryMesh,
    cluster: &str,
    weight: u64,
    limit: Duration,
) -> Result<()> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        last = route_weight(mesh, cluster)?;
        if last == Some(weight) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!(
        "Envoy did not route weight {weight} to {cluster} within {limit:?} (last seen {last:?})\n{}",
        mesh.logs()
    )
}

/// Every `update_rejected` Envoy reports is zero, and each of CDS, EDS, LDS and RDS reports one.
fn assert_no_rejections(mesh: &CanaryMesh) -> Result<()> {
    let stats = mesh.envoy_stats()?;
    let rejected = stat_values(&stats, "update_rejected");
    for (group, marker) in [
        ("CDS", "cluster_manager.cds."),
        ("LDS", "listener_manager.lds."),
        ("RDS", ".rds.9080."),
        ("EDS", "cluster.outbound|9080|v1|reviews"),
    ] {
        ensure!(
            rejected.iter().any(|(name, _)| name.contains(marker)),
            "no update_rejected stat for {group} in Envoy's /stats"
        );
    }
    let nonzero: Vec<&(String, u64)> = rejected.iter().filter(|(_, v)| *v > 0).collect();
    ensure!(
        nonzero.is_empty(),
        "Envoy rejected config: {nonzero:?}\n{}",
        mesh.logs()
    );
    let metrics = mesh.control_plane_metrics()?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("pilot_total_xds_rejects"))
    {
        ensure!(line.ends_with(" 0"), "meshpilot counted a NACK: {line}");
    }
    Ok(())
}

fn await_connected(mesh: &CanaryMesh, want: bool, limit: Duration) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if mesh.envoy_connected()? == want {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("Envoy connected_state did not become {want} within {limit:?}")
}

fn full_scenario(xds_api: XdsApi, prefix: &'static str) -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut mesh = CanaryMesh::start(Tools::locate()?, &options(xds_api, false, prefix))?;

    // 90/10 between v1 and v2.
    let tally = mesh.requests(2000, &[])?;
    assert_all_ok(&tally, 2000);
    assert_eq!(tally.count("v1") + tally.count("v2"), 2000, "{tally:?}");
    assert_binomial(tally.count("v2"), 2000, 0.1, "v2 share at 90/10");

    // A header match sends everything to v2.
    let jason = mesh.requests(100, &[("end-user", "jason")])?;
    assert_all_ok(&jason, 100);
    assert_eq!(jason.count("v2"), 100, "{jason:?}");

    // Editing the VirtualService file to 50/50 takes effect within 2 s, without a NACK.
    let before = route_updates(&mesh)?;
    mesh.write_mesh_file("reviews-canary.yaml", &fixture("reviews-50-50.yaml")?)?;
    let took = await_route_update(&mesh, before, Duration::from_secs(5))?;
    assert!(took <= Duration::from_secs(2), "50/50 took {took:?}");
    await_route_weight(&mesh, REVIEWS_V1, 50, Duration::from_secs(2))?;
    let tally = mesh.requests(2000, &[])?;
    assert_all_ok(&tally, 2000);
    assert_binomial(tally.count("v2"), 2000, 0.5, "v2 share at 50/50");
    assert_no_rejections(&mesh)?;

    // Deleting reviews-v2's endpoint drains it: no request reaches it any more.
    mesh.write_mesh_file(
        "endpointslices.yaml",
        &fixture("endpointslices-v2-removed.yaml")?,
    )?;
    mesh.until_body(
        "no healthy upstream",
        &[("end-user", "jason")],
        Duration::from_secs(5),
    )?;
    let drained = mesh.requests(200, &[])?;
    assert_eq!(drained.count("v2"), 0, "{drained:?}");
    assert!(drained.count("v1") > 0, "{drained:?}");
    mesh.write_mesh_file("endpointslices.yaml", &example("endpointslices.yaml")?)?;
    mesh.until_body("v2", &[("end-user", "jason")], Duration::from_secs(5))?;

    // With the control plane gone, traffic keeps flowing on the last config.
    mesh.stop_control_plane()?;
    await_connected(&mesh, false, Duration::from_secs(10))?;
    let orphaned = mesh.requests(400, &[])?;
    assert_all_ok(&orphaned, 400);
    assert_binomial(
        orphaned.count("v2"),
        400,
        0.5,
        "v2 share without a control plane",
    );

    // Restarted, it is reconnected to and its config flows again.
    mesh.start_control_plane()?;
    await_connected(&mesh, true, Duration::from_secs(30))?;
    mesh.write_mesh_file("reviews-canary.yaml", &example("reviews-canary.yaml")?)?;
    await_route_weight(&mesh, REVIEWS_V1, 90, Duration::from_secs(10))?;
    let tally = mesh.requests(1000, &[])?;
    assert_all_ok(&tally, 1000);
    assert_binomial(tally.count("v2"), 1000, 0.1, "v2 share after reconnecting");
    assert_no_rejections(&mesh)?;
    Ok(())
}

#[test]
fn delta_sidecar_canary_end_to_end() -> Result<()> {
    full_scenario(XdsApi::Delta, "mpd")
}

#[test]
fn sotw_sidecar_canary_end_to_end() -> Result<()> {
    full_scenario(XdsApi::Sotw, "mps")
}

/// `--vhds`: route configuration "9080" carries no virtual hosts; Envoy takes them from
/// meshpilot's VHDS stream (its own delta stream, next to a SotW ADS stream here), and a
/// VirtualService edit reaches it as a virtual host update without an RDS update.
#[test]
fn vhds_serves_the_canary_and_its_edits() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mesh = CanaryMesh::start(
        Tools::locate()?,
        &CanaryOptions {
            vhds: true,
            ..options(XdsApi::Sotw, false, "mpv")
        },
    )?;
    let tally = mesh.requests(2000, &[])?;
    assert_all_ok(&tally, 2000);
    assert_binomial(tally.count("v2"), 2000, 0.1, "v2 share over VHDS");
    let jason = mesh.requests(100, &[("end-user", "jason")])?;
    assert_eq!(jason.count("v2"), 100, "{jason:?}");

    let vhds_reloads = |mesh: &CanaryMesh| -> Result<u64> {
        let stats = mesh.envoy_stats()?;
        Ok(stat_values(&stats, ".vhds.9080.config_reload")
            .iter()
            .map(|(_, v)| v)
            .sum())
    };
    let reloads = vhds_reloads(&mesh)?;
    ensure!(reloads >= 1, "Envoy took no VHDS update\n{}", mesh.logs());
    let rds_before = route_updates(&mesh)?;
    mesh.write_mesh_file("reviews-canary.yaml", &fixture("reviews-50-50.yaml")?)?;
    await_route_weight(&mesh, REVIEWS_V1, 50, Duration::from_secs(2))?;
    ensure!(
        vhds_reloads(&mesh)? > reloads,
        "the edit did not arrive as a VHDS update"
    );
    ensure!(
        route_updates(&mesh)? == rds_before,
        "the edit resent route configuration 9080"
    );
    let tally = mesh.requests(2000, &[])?;
    assert_all_ok(&tally, 2000);
    assert_binomial(tally.count("v2"), 2000, 0.5, "v2 share at 50/50 over VHDS");
    assert_no_rejections(&mesh)?;
    Ok(())
}

#[test]
fn tls_port_serves_the_canary() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mesh = CanaryMesh::start(Tools::locate()?, &options(XdsApi::Delta, true, "mpt"))?;
    let tally = mesh.requests(2000, &[])?;
    assert_all_ok(&tally, 2000);
    assert_binomial(tally.count("v2"), 2000, 0.1, "v2 share over the TLS port");
    assert_no_rejections(&mesh)?;
    Ok(())
}
