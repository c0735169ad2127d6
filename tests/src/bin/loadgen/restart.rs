//! `restart`: with every sidecar holding its config, the harness kills the server (SIGKILL)
//! when told (`loadgen: phase: restart-now`) and starts it again on the same ports and mesh,
//! then writes `restarted <µs since the Unix epoch at the new start>` to our stdin. Measured:
//! per sidecar, the time from that start to holding a complete config again on a new stream;
//! NACKs sent meanwhile; the server's `pilot_total_xds_rejects`; and resources whose bytes
//! differ from before (the config did not change, so there should be none).

use crate::Flags;
use crate::fleet::{FleetOptions, connect_fleet, ms, own_cpu_seconds, phase, scrape, summary};
use anyhow::{Context, Result};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Reads the harness's `restarted <µs>` line and turns it into an `Instant`.
async fn restarted_at(timeout: Duration) -> Result<Instant> {
    let line = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .context("no `restarted` line from the harness in time")???;
    let micros: u64 = line
        .trim()
        .strip_prefix("restarted ")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("expected `restarted <µs>`, got {line:?}"))?;
    let then = UNIX_EPOCH + Duration::from_micros(micros);
    let ago = SystemTime::now().duration_since(then).unwrap_or_default();
    Ok(Instant::now() - ago)
}

pub async fn run(f: Flags) -> Result<()> {
    let options = FleetOptions::from_flags(&f, 5000)?;
    let metrics = f.text("metrics")?;
    let resync_timeout = f.seconds("resync-timeout-secs", 180)?;
    phase("connecting");
    let (mut fleet, connect, complete) = connect_fleet(&options, None).await?;
    phase("complete");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // (type and name key, body hash), sorted: small enough for thousands of proxies.
    let before: Vec<Vec<(u64, u64)>> = fleet
        .sidecars
        .iter()
        .map(|s| s.with_state(|s| s.held_hashes()))
        .collect();
    let streams = fleet.streams();
    fleet.drain();
    let nacks_before = fleet.nacks.len();
    phase("restart-now");
    let restarted = restarted_at(Duration::from_secs(60)).await?;
    let done = fleet
        .wait_complete(&streams, Instant::now() + resync_timeout)
        .await;
    phase("resynced");
    let mut resync: Vec<f64> = done
        .iter()
        .flatten()
        .map(|at| ms(at.saturating_duration_since(restarted)))
        .collect();
    let (mut compared, mut differing, mut missing) = (0u64, 0u64, 0u64);
    for (sidecar, before) in fleet.sidecars.iter().zip(&before) {
        let after = sidecar.with_state(|s| s.held_hashes());
        for (key, hash) in before {
            match after.binary_search_by_key(key, |(k, _)| *k) {
                Ok(i) => {
                    compared += 1;
                    differing += u64::from(after[i].1 != *hash);
                }
                Err(_) => missing += 1,
            }
        }
    }
    let rejects = match scrape(&metrics).await {
        Ok(text) => json!(crate::fleet::counter_by_type(
            &text,
            "pilot_total_xds_rejects"
        )),
        Err(e) => json!(format!("{e:#}")),
    };
    let received_after_restart = fleet.received_since(Some(restarted));
    fleet.drain();
    let report = json!({
        "scenario": "restart",
        "connect": connect,
        "resynced": resync.len(),
        "not_resynced": complete.saturating_sub(resync.len()),
        "start_to_resynced_ms": summary(&mut resync),
        "client_nacks_after_restart": fleet.nacks.len() - nacks_before,
        "first_nack": fleet.nacks.get(nacks_before),
        "server_rejects_after_restart": rejects,
        "resources_compared": compared,
        "resources_differing": differing,
        "resources_missing_after": missing,
        "received_after_restart": received_after_restart,
        "client_problems": fleet.problems(),
        "loadgen_cpu_seconds": own_cpu_seconds(),
        "loadgen_peak_rss_mib": crate::fleet::own_peak_rss_mib(),
    });
    println!("{report}");
    Ok(())
}
