//! Full LDS+RDS+CDS+EDS for one proxy in a mesh of 1,000 services (5 endpoints each,
//! 100 VirtualServices, 100 DestinationRules with 2 subsets). Target: < 20 ms.
//!
//! `cargo bench -p meshpilot-translate --bench translate`

use criterion::{Criterion, criterion_group, criterion_main};
use meshpilot_model::Proxy;
use meshpilot_model::fixtures::mk_mesh;
use meshpilot_translate::build_proxy_config;
use std::hint::black_box;

fn full_config_for_one_proxy(c: &mut Criterion) {
    let snapshot = mk_mesh(1000, 5, 100, 100).snapshot();
    let proxy = Proxy::for_pod(&snapshot, "ns-0", "client-0").expect("client pod");
    let config = build_proxy_config(&snapshot, &proxy);
    eprintln!(
        "mesh: {} listeners, {} routes, {} clusters, {} endpoint assignments",
        config.listeners.len(),
        config.routes.len(),
        config.clusters.len(),
        config.endpoints.len()
    );
    c.bench_function("build_proxy_config/1000svc_5ep_100vs_100dr", |b| {
        b.iter(|| build_proxy_config(black_box(&snapshot), black_box(&proxy)))
    });
}

criterion_group!(benches, full_config_for_one_proxy);
criterion_main!(benches);
