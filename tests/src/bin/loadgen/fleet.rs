//! What every scenario needs: a fleet of simulated sidecars, waiting for them, summing what
//! they received, percentiles, phase marks, and scraping the server's metrics.

use crate::Flags;
use anyhow::{Context, Result};
use meshpilot_tests::lite_client::{
    Event, Flavor, Kind, Observer, Sidecar, SidecarConfig, StalledClient, sidecar_node,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Thousands of connections need more descriptors than the usual soft limit of 1024.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("loadgen: cannot raise the open files limit to {hard}: {e}");
    }
}

/// Tells the harness (reading stderr) that a phase begins.
pub fn phase(name: &str) {
    eprintln!("loadgen: phase: {name}");
}

/// This process's CPU time (user + system), to show what the load generator itself costs.
pub fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15; USER_HZ is 100.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// This process's peak resident memory (VmHWM) in MiB.
pub fn own_peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (kib / 1024.0).round()
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// `{count, p50, p90, p99, max}` of millisecond values.
pub fn summary(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if values.is_empty() {
            return Value::Null;
        }
        let i = ((values.len() as f64 - 1.0) * p).round() as usize;
        json!((values[i] * 10.0).round() / 10.0)
    };
    json!({"count": values.len(), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)})
}

pub struct Fleet {
    pub sidecars: Vec<Sidecar>,
    events: mpsc::UnboundedReceiver<Event>,
    pub nacks: Vec<String>,
    pub disconnects: u64,
    pub first_disconnect: Option<String>,
    /// Per proxy: when it first held a complete config (on stream 1 or later).
    pub first_complete: Vec<Option<Instant>>,
}

pub struct FleetOptions {
    pub xds: String,
    pub flavor: Flavor,
    pub proxies: usize,
    pub namespaces: usize,
    pub timeout: Duration,
}

impl FleetOptions {
    pub fn from_flags(f: &Flags, default_proxies: usize) -> Result<Self> {
        Ok(FleetOptions {
            xds: f.text("xds")?,
            flavor: Flavor::parse(&f.text_or("flavor", "sotw"))?,
            proxies: f.number("proxies", default_proxies)?,
            namespaces: f.number("namespaces", 10)?,
            timeout: f.seconds("timeout-secs", 120)?,
        })
    }
}

impl Fleet {
    /// Starts every sidecar at once.
    pub fn spawn(options: &FleetOptions, observer: Option<Arc<dyn Observer>>) -> Fleet {
        let (tx, events) = mpsc::unbounded_channel();
        let sidecars = (0..options.proxies)
            .map(|index| {
                Sidecar::spawn(SidecarConfig {
                    addr: options.xds.clone(),
                    flavor: options.flavor,
                    index,
                    node: sidecar_node(index, options.namespaces),
                    events: tx.clone(),
                    observer: observer.clone(),
                })
            })
            .collect();
        Fleet {
            sidecars,
            events,
            nacks: Vec::new(),
            disconnects: 0,
            first_disconnect: None,
            first_complete: vec![None; options.proxies],
        }
    }

    fn note(&mut self, event: &Event) {
        match event {
            Event::Complete { proxy, at, .. } => {
                self.first_complete[*proxy].get_or_insert(*at);
            }
            Event::Nack {
                proxy,
                kind,
                detail,
            } => self
                .nacks
                .push(format!("proxy {proxy} {}: {detail}", kind.short())),
            Event::Disconnected { reason, .. } => {
                self.disconnects += 1;
                self.first_disconnect.get_or_insert_with(|| reason.clone());
            }
        }
    }

    /// Handles the events queued so far.
    pub fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.note(&event);
        }
    }

    /// Waits until every proxy completes a stream numbered above `after[proxy]` (0: any), or
    /// the deadline; returns the completion times (None: not in time).
    pub async fn wait_complete(
        &mut self,
        after: &[u32],
        deadline: Instant,
    ) -> Vec<Option<Instant>> {
        let mut done: Vec<Option<Instant>> = self
            .sidecars
            .iter()
            .zip(after)
            .map(|(s, after)| s.with_state(|s| s.complete_at.filter(|_| s.stream > *after)))
            .collect();
        let mut missing = done.iter().filter(|d| d.is_none()).count();
        while missing > 0 {
            let event = match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
                Ok(Some(event)) => event,
                _ => break,
            };
            if let Event::Complete { proxy, stream, at } = &event
                && *stream > after[*proxy]
                && done[*proxy].is_none()
            {
                done[*proxy] = Some(*at);
                missing -= 1;
            }
            self.note(&event);
        }
        done
    }

    /// Current stream number of every proxy.
    pub fn streams(&self) -> Vec<u32> {
        self.sidecars
            .iter()
            .map(|s| s.with_state(|s| s.stream))
            .collect()
    }

    /// Responses and resource bytes received since `since`, by type, and how many NACKs were
    /// sent in that time; with `since`, only by proxies that had completed before it (a
    /// straggler's initial config is not a push caused by what happened since).
    pub fn received_since(&mut self, since: Option<Instant>) -> Value {
        self.drain();
        let mut responses: BTreeMap<&str, u64> = Kind::ALL.iter().map(|k| (k.short(), 0)).collect();
        let mut bytes = responses.clone();
        let mut nacked = 0;
        for (sidecar, complete) in self.sidecars.iter().zip(&self.first_complete) {
            if since.is_some_and(|t| complete.is_none_or(|c| c > t)) {
                continue;
            }
            sidecar.with_state(|s| {
                for r in s.log.iter().filter(|r| since.is_none_or(|t| r.at >= t)) {
                    *responses.entry(r.kind.short()).or_default() += 1;
                    *bytes.entry(r.kind.short()).or_default() += r.bytes;
                    nacked += u64::from(r.nacked);
                }
            });
        }
        json!({
            "responses_by_type": responses,
            "bytes_by_type": bytes,
            "bytes_total": bytes.values().sum::<u64>(),
            "nacks": nacked,
        })
    }

    /// NACKs and disconnects seen so far, for the report.
    pub fn problems(&mut self) -> Value {
        self.drain();
        json!({
            "nacks": self.nacks.len(),
            "first_nack": self.nacks.first(),
            "disconnects": self.disconnects,
            "first_disconnect": self.first_disconnect,
        })
    }
}

/// Connects the initial fleet and waits for all of it: `(fleet, connect→complete times in ms,
/// complete count, time until the last one)`.
pub async fn connect_fleet(
    options: &FleetOptions,
    observer: Option<Arc<dyn Observer>>,
) -> Result<(Fleet, Value, usize)> {
    let started = Instant::now();
    let mut fleet = Fleet::spawn(options, observer);
    let done = fleet
        .wait_complete(&vec![0; options.proxies], started + options.timeout)
        .await;
    let mut times: Vec<f64> = fleet
        .sidecars
        .iter()
        .zip(&done)
        .filter_map(|(s, d)| Some(ms(d.as_ref()?.duration_since(s.with_state(|s| s.started)))))
        .collect();
    let complete = times.len();
    let connect = json!({
        "proxies": options.proxies,
        "flavor": options.flavor.name(),
        "complete": complete,
        "all_complete_ms": if complete == options.proxies { json!(ms(started.elapsed())) } else { Value::Null },
        "connect_to_complete_ms": summary(&mut times),
    });
    eprintln!(
        "loadgen: {complete} of {} proxies hold their config ({:.1} s)",
        options.proxies,
        started.elapsed().as_secs_f64()
    );
    Ok((fleet, connect, complete))
}

/// Opens `count` clients that never read, numbered after the fleet's proxies.
pub async fn open_stalled(options: &FleetOptions, count: usize) -> Result<Vec<StalledClient>> {
    let mut stalled = Vec::with_capacity(count);
    for i in 0..count {
        let node = sidecar_node(options.proxies + i, options.namespaces);
        stalled.push(
            StalledClient::open(&options.xds, node)
                .await
                .context("opening a stalled client")?,
        );
    }
    Ok(stalled)
}

/// `GET /metrics` from the monitoring address.
pub async fn scrape(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nhost: bench\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .context("reading /metrics")??;
    Ok(text)
}

/// The samples of counter `name` by their `type` label (`name{type="cds"} 3`).
pub fn counter_by_type(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{name}{{");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let kind = labels
                .split(',')
                .find_map(|l| l.strip_prefix("type=\""))?
                .trim_end_matches('"');
            Some((kind.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// `after - before` per label.
pub fn counter_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// `pilot_xds_pushes` by type, or empty when the server cannot be scraped.
pub async fn pushes(metrics_addr: &str) -> BTreeMap<String, f64> {
    match scrape(metrics_addr).await {
        Ok(text) => counter_by_type(&text, "pilot_xds_pushes"),
        Err(e) => {
            eprintln!("loadgen: scraping {metrics_addr}: {e:#}");
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_type_label() {
        let text = "# TYPE pilot_xds_pushes counter\npilot_xds_pushes{type=\"cds\"} 3\n\
                    pilot_xds_pushes{type=\"eds\"} 12\npilot_xds_pushes_other{type=\"x\"} 1\n";
        let c = counter_by_type(text, "pilot_xds_pushes");
        assert_eq!(c.len(), 2);
        assert_eq!(c["eds"], 12.0);
    }

    #[test]
    fn summary_picks_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summary(&mut v);
        assert_eq!(s["p50"], json!(51.0));
        assert_eq!(s["max"], json!(100.0));
    }
}
