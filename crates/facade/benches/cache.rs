//! The hot path: `credentials(id)` for a fresh token, served from the in-process
//! cache, against a bare `HashMap` read (get and clone) measured in the same run.
//! Target: at most 100 ns at the median and at most 4x the bare read.
//!
//! `cargo bench -p keyhaven --bench cache`

#![allow(clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use keyhaven::{ConnectionRequest, Credentials, Keyhaven, MemoryStore};

fn cached_read(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .build()
        .expect("keyhaven");
    let id = rt
        .block_on(
            kh.initiate_connection(
                ConnectionRequest::for_app("openai")
                    .scheme("API_KEY")
                    .param("api_key", "sk-bench-0123456789"),
            ),
        )
        .expect("connect")
        .connected_account_id
        .to_string();
    // Fill the cache, and check that a read now completes without waiting.
    let warm = rt.block_on(kh.credentials(&id)).expect("credentials");
    assert!(
        kh.credentials(&id).now_or_never().is_some(),
        "a cached read never waits"
    );

    let mut bare: HashMap<String, Credentials> = HashMap::new();
    for n in 0..1000 {
        bare.insert(format!("ca_{n:032x}"), warm.clone());
    }
    bare.insert(id.clone(), warm);

    let mut group = c.benchmark_group("credentials");
    group.bench_function("keyhaven cached credentials(id)", |b| {
        b.iter(|| black_box(kh.credentials(black_box(&id)).now_or_never()))
    });
    group.bench_function("bare HashMap get + clone", |b| {
        b.iter(|| black_box(bare.get(black_box(id.as_str())).cloned()))
    });
    group.finish();
}

criterion_group!(benches, cached_read);
criterion_main!(benches, parts_group);

fn parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock and cache parts");
    group.bench_function("Utc::now", |b| {
        b.iter(|| black_box(keyhaven::chrono::Utc::now()))
    });
    group.bench_function("quanta::Instant::now", |b| {
        b.iter(|| black_box(quanta::Instant::now()))
    });
    let clock = quanta::Clock::new();
    group.bench_function("quanta::Clock::now", |b| b.iter(|| black_box(clock.now())));
    let qc: quick_cache::sync::Cache<String, u64> = quick_cache::sync::Cache::new(10_000);
    let key = "ca_01a21dbd75c700006ce685bc6ca187cf".to_string();
    qc.insert(key.clone(), 1);
    group.bench_function("quick_cache get", |b| {
        b.iter(|| black_box(qc.get(black_box(key.as_str()))))
    });
    group.finish();
}
criterion_group!(parts_group, parts);
