//! From index changes to published snapshots: the debounce decision (pure) and the publisher
//! that hands each new snapshot, its resource cache and recent change history to connections.

use crate::resources::{CacheOptions, ResourceCache};
use crate::types::{TypeSet, affected_types};
use meshpilot_model::{ChangeSet, ObjectKey, Snapshot};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebounceConfig {
    /// Publish once no change has arrived for this long (istiod: 100 ms).
    pub quiet: Duration,
    /// ...or once this long has passed since the first change of a burst (istiod: 10 s).
    pub max: Duration,
    /// A burst of endpoint (and pod) changes only is published at most this long after its first
    /// change, however busy: endpoint pushes are incremental and cheap, and under steady pod
    /// churn the quiet period would otherwise never come (holding every update for `max`).
    /// Shorter than `quiet` because the push queue already merges what a proxy is owed while
    /// it waits for its turn: a longer window only adds to every change's latency.
    pub endpoints_max: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(10),
            endpoints_max: Duration::from_millis(20),
        }
    }
}

/// Merges a burst of change sets and says when it is due. No clock of its own: callers pass
/// `now`, so tests drive it directly.
#[derive(Debug, Default)]
pub struct Debouncer {
    config: DebounceConfig,
    first: Option<Instant>,
    last: Option<Instant>,
    pending: ChangeSet,
}

impl Debouncer {
    pub fn new(config: DebounceConfig) -> Self {
        Debouncer {
            config,
            ..Default::default()
        }
    }

    pub fn add(&mut self, changes: ChangeSet, now: Instant) {
        if changes.is_empty() {
            return;
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.pending.merge(changes);
    }

    /// When the pending burst is due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        let max = if self.pending.is_workloads_only() {
            self.config.endpoints_max.min(self.config.max)
        } else {
            self.config.max
        };
        Some((last + self.config.quiet).min(first + max))
    }

    /// The merged burst, once due.
    pub fn take_due(&mut self, now: Instant) -> Option<ChangeSet> {
        if self.deadline()? > now {
            return None;
        }
        self.first = None;
        self.last = None;
        Some(std::mem::take(&mut self.pending))
    }

    /// Time from the first change of the pending burst to `now`.
    pub fn burst_age(&self, now: Instant) -> Option<Duration> {
        self.first.map(|f| now.saturating_duration_since(f))
    }
}

/// How many published versions of change history connections can catch up through; a
/// connection further behind recomputes every type (still sending only real differences).
/// Steady endpoint churn publishes every `endpoints_max` (50 a second at 20 ms): this reaches
/// back ~5 s then, past a turn that runs out (1 s) and a full queue round.
const HISTORY: usize = 256;

/// One published state: what every connection pushes from.
pub struct Published {
    pub version: u64,
    /// `<RFC 3339 time>/<version>`, as istiod formats push versions.
    pub version_info: Arc<str>,
    pub cache: Arc<ResourceCache>,
    /// When this state was published: the start of `pilot_proxy_convergence_time`.
    pub published_at: Instant,
    history: VecDeque<HistoryEntry>,
}

/// One published change set, with the types it can affect for any proxy (decided once per
/// publish, not once per connection).
#[derive(Clone)]
struct HistoryEntry {
    version: u64,
    changes: Arc<ChangeSet>,
    affected: TypeSet,
}

impl Published {
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        self.cache.snapshot()
    }

    /// The types a push from `version` to this one must recompute for the proxy of `pod`: what
    /// the newer change sets can affect for any proxy, or every type when one of them touched
    /// the proxy's own pod (its labels and service targets shape all of its config) or when the
    /// history no longer reaches back to `version`.
    pub fn affected_since(&self, version: u64, pod: &ObjectKey) -> TypeSet {
        if version >= self.version {
            return TypeSet::default();
        }
        match self.history.front() {
            Some(oldest) if version + 1 >= oldest.version => {}
            _ => return TypeSet::ALL,
        }
        let mut affected = TypeSet::default();
        let newer = self.history.partition_point(|e| e.version <= version);
        for entry in self.history.range(newer..) {
            if entry.changes.pods.contains(pod) {
                return TypeSet::ALL;
            }
            affected = affected.union(entry.affected);
        }
        affected
    }
}

pub struct Publisher {
    sender: watch::Sender<Arc<Published>>,
    history: VecDeque<HistoryEntry>,
}

impl Publisher {
    pub fn new(snapshot: Snapshot) -> (Publisher, watch::Receiver<Arc<Published>>) {
        Self::with_options(snapshot, CacheOptions::default())
    }

    pub fn with_options(
        snapshot: Snapshot,
        options: CacheOptions,
    ) -> (Publisher, watch::Receiver<Arc<Published>>) {
        let version = snapshot.version;
        let published = Arc::new(Published {
            version,
            version_info: version_info(version),
            cache: Arc::new(ResourceCache::with_options(Arc::new(snapshot), options)),
            published_at: Instant::now(),
            history: VecDeque::new(),
        });
        let (sender, receiver) = watch::channel(published);
        (
            Publisher {
                sender,
                history: VecDeque::new(),
            },
            receiver,
        )
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.sender.subscribe()
    }

    pub fn current(&self) -> Arc<Published> {
        self.sender.borrow().clone()
    }

    /// Publishes `snapshot`, the result of `changes`.
    pub fn publish(&mut self, snapshot: Snapshot, changes: ChangeSet) {
        let version = snapshot.version;
        let previous = self.current();
        let snapshot = Arc::new(snapshot);
        let affected = affected_types(&changes, &snapshot);
        let cache = previous.cache.next(snapshot, &changes, affected);
        // Only a service going away leaves assignments nobody can ask for.
        if !changes.services.is_empty() {
            cache.prune_endpoints();
        }
        self.history.push_back(HistoryEntry {
            version,
            affected,
            changes: Arc::new(changes),
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.sender.send_replace(Arc::new(Published {
            version,
            version_info: version_info(version),
            cache: Arc::new(cache),
            published_at: Instant::now(),
            history: self.history.clone(),
        }));
    }
}

fn version_info(version: u64) -> Arc<str> {
    format!(
        "{}/{version}",
        humantime::format_rfc3339_seconds(SystemTime::now())
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::Hostname;

    fn change(host: &str) -> ChangeSet {
        ChangeSet {
            endpoints: [Hostname::from(host)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn publishes_after_quiet_period() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(DebounceConfig::default());
        assert_eq!(d.deadline(), None);
        d.add(config_change("a"), t0);
        d.add(config_change("b"), t0 + Duration::from_millis(50));
        assert!(d.take_due(t0 + Duration::from_millis(120)).is_none());
        let burst = d.take_due(t0 + Duration::from_millis(150)).unwrap();
        assert_eq!(burst.configs.len(), 2);
        assert_eq!(d.deadline(), None);
    }

    fn config_change(name: &str) -> ChangeSet {
        ChangeSet {
            configs: [meshpilot_model::ConfigKey {
                kind: meshpilot_model::ConfigKind::VirtualService,
                namespace: "default".into(),
                name: name.into(),
            }]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_steady_stream_is_published_at_the_max_delay() {
        let t0 = Instant::now();
        let config = DebounceConfig {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
            endpoints_max: Duration::from_millis(100),
        };
        let mut d = Debouncer::new(config);
        for i in 0..20 {
            d.add(config_change("a"), t0 + Duration::from_millis(i * 60));
        }
        assert_eq!(d.deadline(), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn steady_endpoint_churn_is_published_every_endpoints_max() {
        let t0 = Instant::now();
        let config = DebounceConfig::default();
        assert!(config.endpoints_max < config.quiet);
        let mut d = Debouncer::new(config);
        let step = config.endpoints_max / 4;
        for i in 0..20 {
            d.add(change("a"), t0 + step * i);
        }
        assert_eq!(d.deadline(), Some(t0 + config.endpoints_max));
        // A config change in the burst makes it a full push again, debounced as one.
        let late = t0 + step * 21;
        d.add(config_change("r"), late);
        assert_eq!(d.deadline(), Some(late + config.quiet));
    }

    #[test]
    fn a_connection_behind_looks_at_what_every_missed_version_affects() {
        use crate::types::ResourceType;
        let mut index = meshpilot_model::Index::default();
        let (mut publisher, _rx) = Publisher::new(index.snapshot());
        let first = publisher.current().version;
        publisher.publish(index.snapshot(), change("a"));
        publisher.publish(index.snapshot(), config_change("r"));
        let current = publisher.current();
        let pod = ObjectKey::new("default", "productpage");
        let mut endpoints = TypeSet::default();
        endpoints.insert(ResourceType::Endpoint);
        let mut listeners_routes = TypeSet::default();
        listeners_routes.insert(ResourceType::Listener);
        listeners_routes.insert(ResourceType::Route);
        assert_eq!(
            current.affected_since(first, &pod),
            endpoints.union(listeners_routes)
        );
        assert_eq!(current.affected_since(first + 1, &pod), listeners_routes);
        assert!(current.affected_since(current.version, &pod).is_empty());
        // Older than the history reaches: everything.
        for _ in 0..HISTORY {
            publisher.publish(index.snapshot(), change("b"));
        }
        assert_eq!(
            publisher.current().affected_since(first, &pod),
            TypeSet::ALL
        );
    }

    #[test]
    fn a_change_to_the_proxys_own_pod_affects_every_type() {
        let mut index = meshpilot_model::Index::default();
        let (mut publisher, _rx) = Publisher::new(index.snapshot());
        let first = publisher.current().version;
        let pod = ObjectKey::new("default", "productpage");
        publisher.publish(
            index.snapshot(),
            ChangeSet {
                pods: [pod.clone()].into(),
                ..Default::default()
            },
        );
        publisher.publish(index.snapshot(), change("a"));
        let current = publisher.current();
        assert_eq!(current.affected_since(first, &pod), TypeSet::ALL);
        // Other proxies look only at what the endpoint change affects.
        let mut endpoints = TypeSet::default();
        endpoints.insert(crate::types::ResourceType::Endpoint);
        let other = ObjectKey::new("default", "reviews-v1");
        assert_eq!(current.affected_since(first, &other), endpoints);
        assert_eq!(current.affected_since(first + 1, &pod), endpoints);
    }
}
