//! `vs-edit`: on a mesh with many VirtualServices, with every sidecar holding its config, the
//! weights of VirtualService 0 (for `svc-0`, on route "8080") go from 90/10 to 60/40 by
//! rewriting its file; per sidecar, the time from the write to the ACK of the first response
//! that changes route "8080": the route configuration itself, or (when it names VHDS) one of
//! its virtual hosts `8080/<host>`.

use crate::Flags;
use crate::fleet::{
    FleetOptions, connect_fleet, counter_delta, ms, own_cpu_seconds, phase, pushes, summary,
};
use anyhow::Result;
use bytes::Bytes;
use meshpilot_tests::lite_client::{Kind, Observer};
use meshpilot_tests::meshgen::{SERVICE_PORT, read_spec, write_first_virtual_service};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

struct RouteWatch {
    route: String,
    edited: OnceLock<Instant>,
    /// Per proxy: µs from the edit to the ACK (u64::MAX: not yet).
    latency_us: Vec<AtomicU64>,
    seen: AtomicUsize,
}

impl Observer for RouteWatch {
    fn wants(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Route | Kind::VirtualHost)
    }

    fn changed(
        &self,
        proxy: usize,
        kind: Kind,
        name: &str,
        _body: &Bytes,
        _body_hash: u64,
        acked_at: Instant,
    ) {
        let Some(edited) = self.edited.get() else {
            return;
        };
        let of_route = match kind {
            Kind::VirtualHost => {
                meshpilot_translate::vhds::route_config_of(name) == Some(&self.route)
            }
            _ => name == self.route,
        };
        if !of_route || acked_at < *edited {
            return;
        }
        let us = acked_at.duration_since(*edited).as_micros() as u64;
        if self.latency_us[proxy]
            .compare_exchange(u64::MAX, us, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.seen.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub async fn run(f: Flags) -> Result<()> {
    let options = FleetOptions::from_flags(&f, 2000)?;
    let metrics = f.text("metrics")?;
    let mesh = PathBuf::from(f.text("mesh")?);
    let spec = read_spec(&mesh)?;
    let settle = f.seconds("settle-secs", 120)?;
    let watch = Arc::new(RouteWatch {
        route: SERVICE_PORT.to_string(),
        edited: OnceLock::new(),
        latency_us: (0..options.proxies)
            .map(|_| AtomicU64::new(u64::MAX))
            .collect(),
        seen: AtomicUsize::new(0),
    });
    phase("connecting");
    let (mut fleet, connect, complete) = connect_fleet(&options, Some(watch.clone())).await?;
    phase("complete");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pushes_before = pushes(&metrics).await;
    phase("edit");
    let edited = Instant::now();
    let _ = watch.edited.set(edited);
    write_first_virtual_service(&mesh, &spec, (60, 40))?;
    let deadline = edited + settle;
    while watch.seen.load(Ordering::Relaxed) < complete && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_seen = edited.elapsed();
    // Whatever else the edit makes the server send arrives about now too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase("settled");
    let pushes_after = pushes(&metrics).await;
    let mut latencies: Vec<f64> = watch
        .latency_us
        .iter()
        .map(|us| us.load(Ordering::Relaxed))
        .filter(|us| *us != u64::MAX)
        .map(|us| us as f64 / 1000.0)
        .collect();
    let report = json!({
        "scenario": "vs-edit",
        "virtual_services": spec.virtual_services,
        "connect": connect,
        "updated": latencies.len(),
        "missing": complete.saturating_sub(latencies.len()),
        "edit_to_all_ms": ms(all_seen),
        "flavor": options.flavor.name(),
        "edit_to_ack_ms": summary(&mut latencies),
        "received_after_edit": fleet.received_since(Some(edited)),
        "server_pushes_delta": counter_delta(&pushes_before, &pushes_after),
        "client_problems": fleet.problems(),
        "loadgen_cpu_seconds": own_cpu_seconds(),
        "loadgen_peak_rss_mib": crate::fleet::own_peak_rss_mib(),
    });
    println!("{report}");
    Ok(())
}
