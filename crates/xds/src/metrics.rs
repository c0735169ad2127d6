//! The control plane's Prometheus metrics, under Istio's names so istiod dashboards and alerts
//! work unchanged. Registry, metric types and the text encoding are `prometheus-client`'s.
//!
//! Naming: Istio's Go client exposes counters under their bare names (`pilot_xds_pushes`), while
//! `prometheus-client` follows OpenMetrics and appends `_total` to every counter sample. Istio's
//! counters are therefore registered as [`BareCounter`]s, which keep the `counter` type but encode
//! their sample without the suffix, and the page is served as Prometheus text format 0.0.4
//! (where that is valid) rather than OpenMetrics (where it is not).

use crate::types::ResourceType;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The content type of [`XdsMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type label of a per-type metric: `cds`, `eds`, `lds`, `rds`, else `other` (so unknown
/// type URLs sent by clients cannot grow the label set without bound).
pub fn type_label(type_url: &str) -> &'static str {
    ResourceType::from_type_url(type_url).map_or("other", ResourceType::short_name)
}

type TypeLabels = [(&'static str, &'static str); 1];
type VersionLabels = [(&'static str, String); 1];

/// A counter whose sample carries its bare name, as Istio exposes it (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct BareCounter(Counter);

impl BareCounter {
    pub fn inc_by(&self, v: u64) {
        self.0.inc_by(v);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for BareCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for BareCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // A gauge sample is the bare `name{labels} value` line; the TYPE line still says counter.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

type SizeHistograms = Family<TypeLabels, Histogram, fn() -> Histogram>;

fn config_size_histogram() -> Histogram {
    // Istio's buckets: 1 B, 10 kB, 1 MB, 4 MB, 10 MB, 40 MB.
    Histogram::new([1.0, 10e3, 1e6, 4e6, 10e6, 40e6])
}

/// Every metric the control plane exposes on `/metrics`.
pub struct XdsMetrics {
    registry: Registry,
    connected: Family<VersionLabels, Gauge>,
    /// The sum of `connected` over versions; not exported (Prometheus sums it).
    connected_total: Gauge,
    pushes: Family<TypeLabels, BareCounter>,
    rejects: Family<TypeLabels, BareCounter>,
    inbound_updates: Family<TypeLabels, BareCounter>,
    config_size: SizeHistograms,
    push_time: Histogram,
    convergence: Histogram,
    queue_time: Histogram,
    debounce: Histogram,
    services: Gauge,
    virtual_services: Gauge,
}

impl std::fmt::Debug for XdsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsMetrics").finish_non_exhaustive()
    }
}

impl Default for XdsMetrics {
    fn default() -> Self {
        XdsMetrics::new()
    }
}

/// Keeps one proxy counted in `pilot_xds` while alive.
pub struct ConnectedGuard {
    by_version: Gauge,
    total: Gauge,
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.by_version.dec();
        self.total.dec();
    }
}

impl XdsMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connected = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "pilot_xds",
            "Number of proxies connected to this control plane, by proxy version",
            connected.clone(),
        );
        let pushes = Family::<TypeLabels, BareCounter>::default();
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            pushes.clone(),
        );
        let convergence = Histogram::new([0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]);
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from publishing a config change until a proxy has been sent every type it \
             needs for it",
            convergence.clone(),
        );
        let queue_time = Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]);
        registry.register(
            "pilot_proxy_queue_time",
            "Seconds a proxy owed a config change waited for its turn to be pushed",
            queue_time.clone(),
        );
        // Istio's buckets start at 10 ms; pushes here usually take far less, so finer ones first.
        let push_time = Histogram::new([
            0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0,
        ]);
        registry.register(
            "pilot_xds_push_time",
            "Seconds spent computing one proxy's push",
            push_time.clone(),
        );
        let debounce = Histogram::new([0.01, 0.1, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]);
        registry.register(
            "pilot_debounce_time",
            "Seconds from the first change of a burst until the burst is published",
            debounce.clone(),
        );
        let rejects = Family::<TypeLabels, BareCounter>::default();
        registry.register(
            "pilot_total_xds_rejects",
            "Responses proxies rejected (NACKed), by type",
            rejects.clone(),
        );
        let config_size: SizeHistograms = Family::new_with_constructor(config_size_histogram);
        registry.register(
            "pilot_xds_config_size_bytes",
            "Encoded size in bytes of the resources in one xDS response, by type",
            config_size.clone(),
        );
        let services = Gauge::default();
        registry.register(
            "pilot_services",
            "Services known to the control plane",
            services.clone(),
        );
        let virtual_services = Gauge::default();
        registry.register(
            "pilot_virt_services",
            "VirtualServices in effect",
            virtual_services.clone(),
        );
        let inbound_updates = Family::<TypeLabels, BareCounter>::default();
        registry.register(
            "pilot_inbound_updates",
            "Changes received from config sources, by kind",
            inbound_updates.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        // Every core type shows up at 0 before its first event, so a scrape can tell "none"
        // from "not exported".
        for t in ResourceType::PUSH_ORDER {
            pushes.get_or_create_owned(&[("type", t.short_name())]);
            rejects.get_or_create_owned(&[("type", t.short_name())]);
        }
        XdsMetrics {
            registry,
            connected,
            connected_total: Gauge::default(),
            pushes,
            rejects,
            inbound_updates,
            config_size,
            push_time,
            convergence,
            queue_time,
            debounce,
            services,
            virtual_services,
        }
    }

    /// Counts a connected proxy (of the given Istio version) until the guard drops.
    pub fn connected(&self, version: &str) -> ConnectedGuard {
        let gauge = self
            .connected
            .get_or_create_owned(&[("version", version.to_string())]);
        gauge.inc();
        self.connected_total.inc();
        ConnectedGuard {
            by_version: gauge,
            total: self.connected_total.clone(),
        }
    }

    /// One response sent: `pilot_xds_pushes` and `pilot_xds_config_size_bytes`.
    pub fn count_push(&self, type_url: &str, bytes: usize) {
        let labels = [("type", type_label(type_url))];
        self.pushes.get_or_create(&labels).inc_by(1);
        self.config_size
            .get_or_create(&labels)
            .observe(bytes as f64);
    }

    pub fn count_nack(&self, type_url: &str) {
        self.rejects
            .get_or_create(&[("type", type_label(type_url))])
            .inc_by(1);
    }

    /// One change received from a config source, labelled by kind (`services`, `endpoints`, …).
    pub fn count_inbound_update(&self, kind: &'static str) {
        self.inbound_updates
            .get_or_create(&[("type", kind)])
            .inc_by(1);
    }

    pub fn observe_push_time(&self, elapsed: Duration) {
        self.push_time.observe(elapsed.as_secs_f64());
    }

    pub fn observe_convergence(&self, elapsed: Duration) {
        self.convergence.observe(elapsed.as_secs_f64());
    }

    pub fn observe_queue_time(&self, elapsed: Duration) {
        self.queue_time.observe(elapsed.as_secs_f64());
    }

    pub fn observe_debounce(&self, elapsed: Duration) {
        self.debounce.observe(elapsed.as_secs_f64());
    }

    /// The size of the config in effect: `pilot_services`, `pilot_virt_services`.
    pub fn set_config_counts(&self, services: usize, virtual_services: usize) {
        self.services.set(services as i64);
        self.virtual_services.set(virtual_services as i64);
    }

    /// Pushes sent so far for a type label (`cds`, …).
    pub fn pushes(&self, label: &'static str) -> u64 {
        self.pushes.get(&[("type", label)]).map_or(0, |c| c.get())
    }

    /// NACKs received so far for a type label (`cds`, …).
    pub fn rejects(&self, label: &'static str) -> u64 {
        self.rejects.get(&[("type", label)]).map_or(0, |c| c.get())
    }

    /// Proxies connected now, over all versions.
    pub fn connected_proxies(&self) -> i64 {
        self.connected_total.get()
    }

    /// The page `/metrics` serves, in Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) =
            prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
        {
            tracing::error!("encoding metrics: {e}");
        }
        text
    }
}

/// Process metrics in the standard client names, read from `/proc/self` at scrape time:
/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ). The kernel fixes it at 100 for
/// userspace on every architecture Linux containers run on; reading `sysconf` would need FFI.
const USER_HZ: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let process = ProcessStats::read();
        if let Some(cpu) = process.cpu_seconds {
            // Named in full, like the other clients' TYPE line; sampled bare (see BareCounter).
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstGauge::new(cpu).encode(metric)?;
        }
        if let Some(rss) = process.resident_bytes {
            let gauge = ConstGauge::new(rss);
            let metric = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        if let Some(fds) = process.open_fds {
            let gauge = ConstGauge::new(fds);
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    open_fds: Option<i64>,
}

impl ProcessStats {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        ProcessStats {
            cpu_seconds: stat.as_deref().and_then(cpu_seconds_from_stat),
            resident_bytes: status.as_deref().and_then(resident_bytes_from_status),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as i64),
        }
    }
}

/// utime + stime from `/proc/self/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its closing parenthesis.
fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name come field 3 (state) onwards; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// `VmRSS:  1234 kB` from `/proc/self/status`.
fn resident_bytes_from_status(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_translate::type_urls;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
            .and_then(|l| l.rsplit(' ').next())
    }

    #[test]
    fn counters_keep_istio_names_without_total_suffix() {
        let m = XdsMetrics::new();
        m.count_push(type_urls::CLUSTER, 120);
        m.count_push(type_urls::CLUSTER, 80);
        m.count_nack(type_urls::ROUTE);
        m.count_inbound_update("services");
        let text = m.encode();
        assert_eq!(sample(&text, r#"pilot_xds_pushes{type="cds"}"#), Some("2"));
        assert_eq!(sample(&text, r#"pilot_xds_pushes{type="eds"}"#), Some("0"));
        assert_eq!(
            sample(&text, r#"pilot_total_xds_rejects{type="rds"}"#),
            Some("1")
        );
        assert_eq!(
            sample(&text, r#"pilot_total_xds_rejects{type="cds"}"#),
            Some("0")
        );
        assert_eq!(
            sample(&text, r#"pilot_inbound_updates{type="services"}"#),
            Some("1")
        );
        assert!(text.contains("# TYPE pilot_xds_pushes counter\n"), "{text}");
        let sample_names = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap());
        for name in sample_names {
            assert!(
                !name.ends_with("_total") || name == "process_cpu_seconds_total",
                "{name}"
            );
        }
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert_eq!(
            sample(&text, r#"pilot_xds_config_size_bytes_sum{type="cds"}"#),
            Some("200.0")
        );
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }

    #[test]
    fn histograms_and_gauges() {
        let m = XdsMetrics::new();
        m.observe_convergence(Duration::from_millis(250));
        m.observe_push_time(Duration::from_micros(300));
        m.observe_debounce(Duration::from_millis(120));
        m.observe_queue_time(Duration::from_millis(40));
        m.set_config_counts(7, 2);
        let text = m.encode();
        // Each observation is counted in its bucket and not in the one below it.
        for (histogram, holding, below) in [
            ("pilot_proxy_convergence_time", "0.5", "0.1"),
            ("pilot_proxy_queue_time", "0.1", "0.01"),
        ] {
            let bucket = |le: &str| sample(&text, &format!("{histogram}_bucket{{le=\"{le}\"}}"));
            assert_eq!(bucket(holding), Some("1"), "{histogram}");
            assert_eq!(bucket(below), Some("0"), "{histogram}");
        }
        assert_eq!(sample(&text, "pilot_xds_push_time_count"), Some("1"));
        assert_eq!(sample(&text, "pilot_debounce_time_count"), Some("1"));
        assert_eq!(sample(&text, "pilot_services"), Some("7"));
        assert_eq!(sample(&text, "pilot_virt_services"), Some("2"));
    }

    #[test]
    fn connected_gauge_follows_guards() {
        let m = XdsMetrics::new();
        let a = m.connected("1.26.0");
        let b = m.connected("1.26.0");
        let _c = m.connected("");
        assert_eq!(m.connected_proxies(), 3);
        assert_eq!(
            sample(&m.encode(), r#"pilot_xds{version="1.26.0"}"#),
            Some("2")
        );
        drop(a);
        drop(b);
        assert_eq!(m.connected_proxies(), 1);
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let text = XdsMetrics::new().encode();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            let value: f64 = sample(&text, name)
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .parse()
                .unwrap();
            assert!(value >= 0.0);
        }
        assert!(sample(&text, "process_resident_memory_bytes").unwrap() != "0");
    }

    #[test]
    fn parses_proc_stat_with_odd_command_names() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    8 0 12345 100000 2000 18446744073709551615";
        assert_eq!(cpu_seconds_from_stat(stat), Some(3.0));
        let status = "Name:\tmeshpilot\nVmRSS:\t   2048 kB\nThreads:\t8\n";
        assert_eq!(resident_bytes_from_status(status), Some(2 * 1024 * 1024));
    }
}
