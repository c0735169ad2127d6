//! `churn`: with every sidecar holding its config, `--rate` pod changes per second for
//! `--duration-secs`. Change `k` rewrites the EndpointSlice file of service `k mod services`,
//! moving its endpoint 0 to the marker address `10.64.<k/256>.<k%256>`. A sidecar credits
//! change `k` when it ACKs the first EDS response whose assignment for that service's default
//! cluster carries marker `k` or a later change's marker of the same service (a later change
//! may supersede an earlier one before it was pushed); latency = that ACK − the write.
//!
//! With `--stalled K`, K clients that never read their stream are opened first.

use crate::Flags;
use crate::fleet::{
    FleetOptions, connect_fleet, counter_delta, ms, open_stalled, own_cpu_seconds, phase, pushes,
    summary,
};
use anyhow::Result;
use bytes::Bytes;
use meshpilot_tests::lite_client::proto::LiteLoadAssignment;
use meshpilot_tests::lite_client::{KeyMap, Kind, Observer};
use meshpilot_tests::meshgen::{MeshSpec, read_spec, write_endpoint_slice};
use prost::Message;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Markers are 10.64.0.0/16.
const MAX_CHANGES: usize = 65_536;

fn marker_ip(change: usize) -> String {
    format!("10.64.{}.{}", change / 256, change % 256)
}

fn parse_marker(address: &str) -> Option<usize> {
    let rest = address.strip_prefix("10.64.")?;
    let (high, low) = rest.split_once('.')?;
    Some(high.parse::<usize>().ok()? * 256 + low.parse::<usize>().ok()?)
}

struct ProxyCredits {
    /// Per service: how many of its changes this proxy has credited.
    credited: Vec<u32>,
    /// Each change credited, with its latency in microseconds.
    arrivals: Vec<(u32, u32)>,
}

/// What an assignment body says: its service, and the latest change of it the body carries.
type Marked = Option<(usize, usize)>;

/// The changes written so far, and what each sidecar has seen of them. Everything written per
/// delivery is the sidecar's own (its credits) or the thread's (the marker memo): the two
/// runtime threads credit ~500,000 deliveries a second at 5,000 sidecars, and counters or
/// memo locks shared between them cost more than the crediting itself.
struct ChurnBook {
    /// Tells this book's bodies apart in the per-thread marker memo.
    id: u64,
    spec: MeshSpec,
    written: Vec<OnceLock<Instant>>,
    proxies: Vec<Mutex<ProxyCredits>>,
}

impl ChurnBook {
    fn new(spec: MeshSpec, changes: usize, proxies: usize) -> Self {
        static BOOKS: AtomicU64 = AtomicU64::new(0);
        ChurnBook {
            id: BOOKS.fetch_add(1, Ordering::Relaxed),
            written: (0..changes).map(|_| OnceLock::new()).collect(),
            proxies: (0..proxies)
                .map(|_| {
                    Mutex::new(ProxyCredits {
                        credited: vec![0; spec.services],
                        // Room for every change up front: grown on demand, every sidecar's
                        // list doubled at the same change, stalling the load generator.
                        arrivals: Vec::with_capacity(changes),
                    })
                })
                .collect(),
            spec,
        }
    }

    /// Deliveries credited so far, over all proxies.
    fn credited(&self) -> u64 {
        self.proxies
            .iter()
            .map(|p| p.lock().expect("credits").arrivals.len() as u64)
            .sum()
    }

    /// Per change: how many proxies credited it, and the largest latency among them (µs).
    fn per_change(&self) -> Vec<(usize, u32)> {
        let mut changes = vec![(0, 0); self.written.len()];
        for credits in &self.proxies {
            for &(change, us) in &credits.lock().expect("credits").arrivals {
                let (reached, slowest) = &mut changes[change as usize];
                *reached += 1;
                *slowest = (*slowest).max(us);
            }
        }
        changes
    }

    /// The service of `cluster` (its default cluster only) and the latest change of it the
    /// assignment carries. Every sidecar is sent the same encoded assignment, so each
    /// distinct body is decoded once (the load generator shares the server's cores, and
    /// decoding per sidecar was a quarter of its time).
    fn marked(&self, cluster: &str, body: &Bytes, body_hash: u64) -> Marked {
        thread_local! {
            static MARKERS: RefCell<KeyMap<Marked>> = RefCell::default();
        }
        let key = body_hash ^ self.id.rotate_left(32);
        if let Some(known) = MARKERS.with_borrow(|memo| memo.get(&key).copied()) {
            return known;
        }
        let services = self.spec.services;
        let marked = self.spec.service_of_cluster(cluster).and_then(|service| {
            let assignment = LiteLoadAssignment::decode(body.clone()).ok()?;
            let latest = assignment
                .addresses()
                .filter_map(parse_marker)
                .filter(|k| k % services == service && *k < self.written.len())
                .max()?;
            Some((service, latest))
        });
        MARKERS.with_borrow_mut(|memo| memo.insert(key, marked));
        marked
    }
}

impl Observer for ChurnBook {
    fn wants(&self, kind: Kind) -> bool {
        kind == Kind::Endpoint
    }

    fn changed(
        &self,
        proxy: usize,
        _kind: Kind,
        name: &str,
        body: &Bytes,
        body_hash: u64,
        acked_at: Instant,
    ) {
        let Some((service, latest)) = self.marked(name, body, body_hash) else {
            return;
        };
        let services = self.spec.services;
        let mut credits = self.proxies[proxy].lock().expect("credits");
        let upto = (latest / services + 1) as u32;
        let first = credits.credited[service];
        if upto <= first {
            return;
        }
        credits.credited[service] = upto;
        for j in first..upto {
            let change = service + j as usize * services;
            let Some(written) = self.written[change].get() else {
                continue;
            };
            let us = acked_at.saturating_duration_since(*written).as_micros();
            credits
                .arrivals
                .push((change as u32, us.min(u32::MAX as u128) as u32));
        }
    }
}

pub async fn run(f: Flags) -> Result<()> {
    let options = FleetOptions::from_flags(&f, 5000)?;
    let metrics = f.text("metrics")?;
    let mesh = PathBuf::from(f.text("mesh")?);
    let spec = read_spec(&mesh)?;
    let rate = f.number("rate", 100)?.max(1);
    let duration = f.seconds("duration-secs", 20)?;
    let settle = f.seconds("settle-secs", 30)?;
    let stalled_count = f.number("stalled", 0)?;
    let changes = (rate * duration.as_secs() as usize).min(MAX_CHANGES);
    let book = Arc::new(ChurnBook::new(spec, changes, options.proxies));

    phase("stalled-open");
    let stalled = open_stalled(&options, stalled_count).await?;
    phase("connecting");
    let (mut fleet, connect, complete) = connect_fleet(&options, Some(book.clone())).await?;
    phase("complete");
    for sidecar in &fleet.sidecars {
        sidecar.own_tables();
    }
    // Let the initial pushes finish before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pushes_before = pushes(&metrics).await;
    let window = Instant::now();
    phase("churn-start");
    let interval = Duration::from_secs(1) / rate as u32;
    let mut behind = Duration::ZERO;
    for (change, written) in book.written.iter().enumerate() {
        let due = window + interval * change as u32;
        tokio::time::sleep_until(due.into()).await;
        behind = behind.max(due.elapsed());
        let service = change % spec.services;
        let _ = written.set(Instant::now());
        write_endpoint_slice(&mesh, &spec, service, Some(&marker_ip(change)))?;
    }
    let writing = window.elapsed();
    phase("churn-end");
    let expected = (changes * complete) as u64;
    let deadline = Instant::now() + settle;
    while book.credited() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = window.elapsed();
    phase("settled");
    let pushes_after = pushes(&metrics).await;

    let mut latencies: Vec<f64> = Vec::new();
    for credits in &book.proxies {
        let credits = credits.lock().expect("credits");
        latencies.extend(credits.arrivals.iter().map(|(_, us)| *us as f64 / 1000.0));
    }
    let credited = latencies.len() as u64;
    // Per second of writing, the p99 of its changes: shows whether a run's p99 comes from the
    // whole window or from a stretch of it (the machine's speed moves within a run too).
    let mut by_second: Vec<Vec<f64>> = vec![Vec::new(); changes.div_ceil(rate)];
    for credits in &book.proxies {
        let credits = credits.lock().expect("credits");
        for (change, us) in &credits.arrivals {
            by_second[*change as usize / rate].push(*us as f64 / 1000.0);
        }
    }
    let p99_by_second: Vec<Value> = by_second
        .iter_mut()
        .map(|second| summary(second)["p99"].clone())
        .collect();
    let mut everywhere: Vec<f64> = book
        .per_change()
        .into_iter()
        .filter(|(reached, _)| *reached >= complete.max(1))
        .map(|(_, us)| us as f64 / 1000.0)
        .collect();
    let report = json!({
        "scenario": "churn",
        "connect": connect,
        "stalled_clients": stalled_count,
        "changes": changes,
        "rate_per_sec": rate,
        "writing_ms": ms(writing),
        "writer_max_behind_ms": ms(behind),
        "window_ms": ms(settled),
        "credited": credited,
        "expected": expected,
        "missing": expected.saturating_sub(credited),
        "write_to_eds_ack_ms": summary(&mut latencies),
        "write_to_eds_ack_p99_ms_by_second": p99_by_second,
        "write_to_last_proxy_ms": summary(&mut everywhere),
        "received_in_window": fleet.received_since(Some(window)),
        "server_pushes": {
            "before": pushes_before,
            "after": pushes_after,
            "delta": counter_delta(&pushes_before, &pushes_after),
        },
        "client_problems": fleet.problems(),
        "loadgen_cpu_seconds": own_cpu_seconds(),
        "loadgen_peak_rss_mib": crate::fleet::own_peak_rss_mib(),
    });
    println!("{report}");
    drop(stalled);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        for k in [0, 1, 255, 256, 4097, MAX_CHANGES - 1] {
            assert_eq!(parse_marker(&marker_ip(k)), Some(k));
        }
        assert_eq!(parse_marker("10.128.0.1"), None);
    }

    fn assignment(cluster: &str, addresses: &[&str]) -> Bytes {
        use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
        use envoy_types::pb::envoy::config::endpoint::v3::{
            ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
        };
        let lb_endpoints = addresses
            .iter()
            .map(|ip| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: ip.to_string(),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
        ClusterLoadAssignment {
            cluster_name: cluster.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn an_assignment_credits_every_change_of_its_service_up_to_its_marker_once() {
        let spec = MeshSpec {
            services: 3,
            endpoints: 1,
            virtual_services: 0,
            destination_rules: 0,
            namespaces: 1,
        };
        let book = ChurnBook::new(spec, 9, 2);
        let start = Instant::now();
        for written in &book.written {
            written.set(start).unwrap();
        }
        let cluster = spec.default_cluster(1);
        // Changes 1, 4 and 7 are service 1's; this body carries change 4's marker.
        let body = assignment(&cluster, &["10.1.0.9", &marker_ip(4)]);
        let hash = meshpilot_tests::lite_client::body_hash(&body);
        let acked = start + Duration::from_millis(30);
        book.changed(0, Kind::Endpoint, &cluster, &body, hash, acked);
        assert_eq!(book.credited(), 2);
        let per_change = book.per_change();
        assert_eq!(per_change[1].0, 1);
        assert_eq!(per_change[4], (1, 30_000));
        assert_eq!(per_change[7].0, 0);
        // The same body again (this proxy or a resend) credits nothing more; another proxy
        // credits its own.
        book.changed(0, Kind::Endpoint, &cluster, &body, hash, acked);
        assert_eq!(book.credited(), 2);
        book.changed(1, Kind::Endpoint, &cluster, &body, hash, acked);
        assert_eq!(book.credited(), 4);
        // Subset clusters and bodies without markers credit nothing.
        let subset = "outbound|8080|v1|svc-1.ns-0.svc.cluster.local";
        let other = assignment(subset, &[&marker_ip(7)]);
        let other_hash = meshpilot_tests::lite_client::body_hash(&other);
        book.changed(0, Kind::Endpoint, subset, &other, other_hash, acked);
        let plain = assignment(&cluster, &["10.1.0.9"]);
        let plain_hash = meshpilot_tests::lite_client::body_hash(&plain);
        book.changed(0, Kind::Endpoint, &cluster, &plain, plain_hash, acked);
        assert_eq!(book.credited(), 4);
    }
}
