//! Counters the xDS server keeps; the monitoring endpoint renders them.

use crate::types::ResourceType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Index into per-type counters: cds, eds, lds, rds, then everything else.
fn slot(type_url: &str) -> usize {
    ResourceType::from_type_url(type_url).map_or(4, |t| t as usize)
}

pub const TYPE_LABELS: [&str; 5] = ["cds", "eds", "lds", "rds", "other"];

#[derive(Debug, Default)]
pub struct XdsMetrics {
    connected: AtomicU64,
    pushes: [AtomicU64; 5],
    pushed_bytes: [AtomicU64; 5],
    nacks: [AtomicU64; 5],
    push_time_micros: AtomicU64,
    push_count: AtomicU64,
}

/// Keeps the connected-proxy gauge up while alive.
pub struct ConnectedGuard<'a>(&'a XdsMetrics);

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

impl XdsMetrics {
    pub fn connected(&self) -> ConnectedGuard<'_> {
        self.connected.fetch_add(1, Ordering::Relaxed);
        ConnectedGuard(self)
    }

    pub fn count_push(&self, type_url: &str, bytes: usize) {
        let i = slot(type_url);
        self.pushes[i].fetch_add(1, Ordering::Relaxed);
        self.pushed_bytes[i].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_nack(&self, type_url: &str) {
        self.nacks[slot(type_url)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_push_time(&self, elapsed: Duration) {
        self.push_time_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.push_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connected_proxies(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// `(type label, pushes, bytes, nacks)` per type.
    pub fn per_type(&self) -> Vec<(&'static str, u64, u64, u64)> {
        (0..5)
            .map(|i| {
                (
                    TYPE_LABELS[i],
                    self.pushes[i].load(Ordering::Relaxed),
                    self.pushed_bytes[i].load(Ordering::Relaxed),
                    self.nacks[i].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    pub fn total_nacks(&self) -> u64 {
        self.nacks.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}
