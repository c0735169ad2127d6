//! `meshpilot proxy-status`: every proxy connected to a running control plane and whether it
//! holds what was last sent, per xDS type, from the control plane's `/debug/syncz`.

use crate::control_plane::{self, DEFAULT_URL, first_line, proxy_key};
use crate::proxy_config::Output;
use crate::tables::{align, header};
use anyhow::{Context, Result, bail};
use clap::Args;
use meshpilot_translate::type_urls::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use serde_json::Value;
use std::time::{Duration, SystemTime};

#[derive(Args, Debug)]
pub struct ProxyStatusArgs {
    /// Only this proxy: `pod.namespace` (or its node id).
    pub proxy: Option<String>,
    /// Monitoring URL of the running control plane.
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    pub control_plane: String,
    /// A table, or the control plane's sync entries as JSON or YAML.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Where a proxy stands for one xDS type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncStatus {
    /// The last response sent was ACKed.
    Synced,
    /// A response is out and not answered yet.
    Stale,
    /// Nothing of this type was sent.
    NotSent,
    /// The proxy rejected the last response.
    Error,
}

impl SyncStatus {
    pub fn label(self) -> &'static str {
        match self {
            SyncStatus::Synced => "SYNCED",
            SyncStatus::Stale => "STALE",
            SyncStatus::NotSent => "NOT SENT",
            SyncStatus::Error => "ERROR",
        }
    }
}

/// The table's type columns: (header, type URL, prefix of the entry's `*_sent`/`*_acked`).
const TYPE_COLUMNS: [(&str, &str, &str); 4] = [
    ("CDS", CLUSTER, "cluster"),
    ("LDS", LISTENER, "listener"),
    ("EDS", ENDPOINT, "endpoint"),
    ("RDS", ROUTE, "route"),
];

pub fn run(args: ProxyStatusArgs) -> Result<()> {
    let url = args.control_plane.as_str();
    let response = control_plane::get(url, "/debug/syncz")?;
    if response.status != 200 {
        bail!(
            "the control plane at {url} answered {} to /debug/syncz: {}",
            response.status,
            first_line(&response.body)
        );
    }
    let all: Value = serde_json::from_str(&response.body)
        .with_context(|| format!("the control plane at {url} sent sync status that is not JSON"))?;
    let Value::Array(mut entries) = all else {
        bail!("the control plane at {url} sent sync status that is not a JSON list");
    };
    if let Some(wanted) = &args.proxy {
        entries.retain(|e| e["proxy"].as_str() == Some(proxy_key(wanted)));
        if entries.is_empty() {
            bail!("unknown proxy {wanted:?}: not connected to the control plane at {url}");
        }
    }
    entries.sort_by(|a, b| proxy_name(a).cmp(proxy_name(b)));
    let text = match args.output {
        Output::Table => {
            let istiod = url
                .parse::<hyper::Uri>()
                .ok()
                .and_then(|u| u.authority().map(|a| a.to_string()))
                .unwrap_or_else(|| url.to_string());
            align(&status_rows(&entries, &istiod, SystemTime::now()), 5)
        }
        Output::Json => serde_json::to_string_pretty(&entries)? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(&entries)?,
    };
    print!("{text}");
    Ok(())
}

fn proxy_name(entry: &Value) -> &str {
    entry["proxy"].as_str().unwrap_or("")
}

/// `NAME  CLUSTER  CDS  LDS  EDS  RDS  ISTIOD  VERSION`, one row per entry; `istiod` names the
/// control plane that answered.
pub fn status_rows(entries: &[Value], istiod: &str, now: SystemTime) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ISTIOD", "VERSION",
    ])];
    for entry in entries {
        let text = |key: &str| entry[key].as_str().unwrap_or("").to_string();
        let mut row = vec![text("proxy"), text("cluster_id")];
        for (_, type_url, prefix) in TYPE_COLUMNS {
            row.push(status_cell(entry, type_url, prefix, now));
        }
        row.push(istiod.to_string());
        row.push(text("istio_version"));
        rows.push(row);
    }
    rows
}

/// The per-type view of a syncz entry: `resources[typeUrl]` when present, else the
/// `<prefix>_sent` / `<prefix>_acked` fields.
fn type_field<'a>(entry: &'a Value, type_url: &str, field: &str, legacy: &str) -> &'a str {
    entry["resources"][type_url][field]
        .as_str()
        .or_else(|| entry[legacy].as_str())
        .unwrap_or("")
}

/// Nothing sent is NOT SENT; a recorded rejection is ERROR; otherwise SYNCED when the last
/// sent nonce was ACKed and STALE while it is not.
pub fn sync_status(entry: &Value, type_url: &str, prefix: &str) -> SyncStatus {
    let sent = type_field(entry, type_url, "sent", &format!("{prefix}_sent"));
    let acked = type_field(entry, type_url, "acked", &format!("{prefix}_acked"));
    let last_error = entry["resources"][type_url]["lastError"]
        .as_str()
        .unwrap_or("");
    if sent.is_empty() {
        SyncStatus::NotSent
    } else if !last_error.is_empty() {
        SyncStatus::Error
    } else if acked == sent {
        SyncStatus::Synced
    } else {
        SyncStatus::Stale
    }
}

/// The status, with how long ago the last response went out when the entry says.
fn status_cell(entry: &Value, type_url: &str, prefix: &str, now: SystemTime) -> String {
    let status = sync_status(entry, type_url, prefix);
    let sent_at = entry["resources"][type_url]["sentTime"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    match (status, sent_at) {
        (SyncStatus::NotSent, _) | (_, None) => status.label().to_string(),
        (_, Some(at)) => {
            let age = now.duration_since(at).unwrap_or_default();
            format!("{} ({})", status.label(), short_age(age))
        }
    }
}

/// A compact age like kubectl's: `45s`, `3m12s`, `25m`, `4h10m`, `30h`, `3d`.
pub fn short_age(age: Duration) -> String {
    let seconds = age.as_secs();
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        format!("{minutes}m{}s", seconds % 60)
    } else if hours < 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        format!("{hours}h{}m", minutes % 60)
    } else if hours < 48 {
        format!("{hours}h")
    } else {
        format!("{days}d")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A syncz entry as `/debug/syncz` serves it, all four types ACKed at nonce "n1".
    fn mk_entry(proxy: &str) -> Value {
        let synced = |t: &str| {
            (
                t.to_string(),
                json!({"sent": "n1", "acked": "n1", "sentTime": "2025-01-01T00:00:00Z", "lastError": ""}),
            )
        };
        json!({
            "cluster_id": "Kubernetes",
            "proxy": proxy,
            "connection_id": format!("{proxy}-1"),
            "proxy_type": "sidecar",
            "istio_version": "1.27.0",
            "cluster_sent": "n1", "cluster_acked": "n1",
            "listener_sent": "n1", "listener_acked": "n1",
            "route_sent": "n1", "route_acked": "n1",
            "endpoint_sent": "n1", "endpoint_acked": "n1",
            "resources": Value::Object(
                [CLUSTER, LISTENER, ROUTE, ENDPOINT].into_iter().map(synced).collect()
            ),
            "last_push_time": "2025-01-01T00:00:00Z",
        })
    }

    #[test]
    fn status_follows_the_nonces_and_the_last_error() {
        let mut entry = mk_entry("a.default");
        assert_eq!(sync_status(&entry, CLUSTER, "cluster"), SyncStatus::Synced);
        // Sent again, not answered yet.
        entry["resources"][LISTENER]["sent"] = json!("n2");
        assert_eq!(sync_status(&entry, LISTENER, "listener"), SyncStatus::Stale);
        // Rejected.
        entry["resources"][ROUTE]["sent"] = json!("n2");
        entry["resources"][ROUTE]["lastError"] = json!("bad route");
        assert_eq!(sync_status(&entry, ROUTE, "route"), SyncStatus::Error);
        // Never sent.
        entry["resources"][ENDPOINT] = json!({"sent": "", "acked": "", "lastError": ""});
        assert_eq!(
            sync_status(&entry, ENDPOINT, "endpoint"),
            SyncStatus::NotSent
        );
    }

    #[test]
    fn legacy_fields_stand_in_for_missing_resources() {
        let entry = json!({
            "proxy": "b.default",
            "cluster_sent": "n3", "cluster_acked": "n3",
            "listener_sent": "n3", "listener_acked": "n2",
            "route_sent": "", "route_acked": "",
        });
        assert_eq!(sync_status(&entry, CLUSTER, "cluster"), SyncStatus::Synced);
        assert_eq!(sync_status(&entry, LISTENER, "listener"), SyncStatus::Stale);
        assert_eq!(sync_status(&entry, ROUTE, "route"), SyncStatus::NotSent);
        assert_eq!(
            sync_status(&entry, ENDPOINT, "endpoint"),
            SyncStatus::NotSent
        );
    }

    #[test]
    fn rows_have_istioctl_columns_and_ages() {
        let now = humantime::parse_rfc3339_weak("2025-01-01T00:00:42Z").unwrap();
        let mut stale = mk_entry("b.default");
        stale["resources"][ENDPOINT]["sent"] = json!("n2");
        stale["resources"][ROUTE] = json!({"sent": "", "acked": ""});
        stale["route_sent"] = json!("");
        let rows = status_rows(&[mk_entry("a.default"), stale], "127.0.0.1:15014", now);
        assert_eq!(
            rows[0],
            [
                "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ISTIOD", "VERSION"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "a.default",
                "Kubernetes",
                "SYNCED (42s)",
                "SYNCED (42s)",
                "SYNCED (42s)",
                "SYNCED (42s)",
                "127.0.0.1:15014",
                "1.27.0"
            ]
        );
        assert_eq!(rows[2][4], "STALE (42s)");
        assert_eq!(rows[2][5], "NOT SENT");
    }

    #[test]
    fn ages_are_short() {
        let s = Duration::from_secs;
        assert_eq!(short_age(s(5)), "5s");
        assert_eq!(short_age(s(192)), "3m12s");
        assert_eq!(short_age(s(25 * 60)), "25m");
        assert_eq!(short_age(s(4 * 3600 + 600)), "4h10m");
        assert_eq!(short_age(s(30 * 3600)), "30h");
        assert_eq!(short_age(s(3 * 86400)), "3d");
    }
}
