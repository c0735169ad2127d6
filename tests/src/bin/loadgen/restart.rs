//! `restart`: with every sidecar holding its config, the harness kills the server (SIGKILL)
//! when told (`loadgen: phase: restart-now`) and starts it again on the same ports and mesh,
//! then writes `restarted <µs since the Unix epoch at the new start>` to our stdin. Measured:
//! per sidecar, the time from that start to holding a complete config again on a new stream;
//! NACKs sent meanwhile; the server's `pilot_total_xds_rejects`; and resources whose bytes
//! differ from before (the config did not change, so there should be none).

use crate::Flags;
use crate::fleet::{FleetOptions, connect_fleet, ms, own_cpu_seconds, phase, scrape, summary};
use anyhow::{Context, Result};
use meshpilot_tests::lite_client::Kind;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A resource's identity as a number, to keep 5,000 proxies' worth of snapshots small.
fn key(kind: Kind, name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), kind as u64)
}

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
    let before: Vec<Vec<(u64, u64)>> = fleet
        .sidecars
        .iter()
        .map(|s| {
            s.with_state(|s| {
                let mut held: Vec<(u64, u64)> = s
                    .hashes()
                    .into_iter()
                    .map(|((k, n), h)| (key(k, &n), h))
                    .collect();
                held.sort_unstable();
                held
            })
        })
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
    let mut first_differing = None;
    for (sidecar, before) in fleet.sidecars.iter().zip(&before) {
        sidecar.with_state(|s| {
            let after = s.hashes();
            let mut present = 0;
            for ((kind, name), hash) in &after {
                let Ok(i) = before.binary_search_by_key(&key(*kind, name), |(k, _)| *k) else {
                    continue;
                };
                present += 1;
                compared += 1;
                if before[i].1 != *hash {
                    differing += 1;
                    first_differing.get_or_insert_with(|| format!("{} {name}", kind.short()));
                }
            }
            missing += (before.len() - present) as u64;
        });
    }
    let rejects = match scrape(&metrics).await {
        Ok(text) => json!(crate::fleet::counter_by_type(
            &text,
            "pilot_total_xds_rejects"
        )),
        Err(e) => json!(format!("{e:#}")),
    };
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
        "first_differing": first_differing,
        "resources_missing_after": missing,
        "client_problems": fleet.problems(),
        "loadgen_cpu_seconds": own_cpu_seconds(),
        "loadgen_peak_rss_mib": crate::fleet::own_peak_rss_mib(),
    });
    println!("{report}");
    Ok(())
}
