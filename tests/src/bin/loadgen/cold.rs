//! `cold`: N sidecars connect at once to a fresh server; time from connect to complete config
//! (CDS, EDS, LDS and RDS all ACKed), then `--hold-secs` with nothing happening (the harness
//! measures the server's idle CPU and steady memory there).

use crate::Flags;
use crate::fleet::{FleetOptions, connect_fleet, own_cpu_seconds, own_peak_rss_mib, phase};
use anyhow::Result;

pub async fn run(f: Flags) -> Result<()> {
    let options = FleetOptions::from_flags(&f, 100)?;
    let hold = f.seconds("hold-secs", 0)?;
    phase("connecting");
    let (mut fleet, mut report, _) = connect_fleet(&options, None).await?;
    let cpu_connecting = own_cpu_seconds();
    phase("complete");
    tokio::time::sleep(hold).await;
    phase("end");
    let received = fleet.received_since(None);
    report["scenario"] = "cold".into();
    report["hold_secs"] = hold.as_secs().into();
    for key in ["responses_by_type", "bytes_by_type", "bytes_total"] {
        report[key] = received[key].clone();
    }
    report["client_problems"] = fleet.problems();
    report["loadgen_cpu_seconds"] = serde_json::json!({
        "connecting": cpu_connecting,
        "total": own_cpu_seconds(),
    });
    report["loadgen_peak_rss_mib"] = own_peak_rss_mib().into();
    println!("{report}");
    Ok(())
}
