//! Benchmark of the decision path: look the subject and organization up in
//! a 1,000,000-user eligibility store, then `decide`.
//!
//! Run: `cargo bench --bench decide -- --warm-up-time 2 --measurement-time 5`
//!
//! - `lookup_and_decide_1m_users`, `decide_only`: the example policy
//!   (`policies/example.toml`).
//! - `core/lookup_and_decide`, `core/decide_only`: the example directive's
//!   main rules only (`benches/cedar/directive_core.toml`).
//!
//! The comparison with the `cedar-policy` crate is the `cedar` bench
//! (`benches/cedar/compare.rs`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use clearance::policy::CompiledPolicy;

mod common;

use common::{core_policy, decide_fetched, lookup_and_decide, prefetch, setup, REQUESTS};

fn bench(c: &mut Criterion) {
    let (store, reqs) = setup();
    let fetched = prefetch(&store, &reqs);
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    for (prefix, policy) in [("", CompiledPolicy::example()), ("core/", core_policy())] {
        let lookup_name = if prefix.is_empty() {
            "lookup_and_decide_1m_users".to_string()
        } else {
            format!("{prefix}lookup_and_decide")
        };
        let mut n = 0usize;
        group.bench_function(lookup_name, |b| {
            b.iter(|| {
                let req = &reqs[n % REQUESTS];
                n = n.wrapping_add(1);
                black_box(lookup_and_decide(&policy, &store, black_box(req)))
            })
        });
        // The pure function alone, on pre-fetched records.
        let mut m = 0usize;
        group.bench_function(format!("{prefix}decide_only"), |b| {
            b.iter(|| {
                let i = m % REQUESTS;
                m = m.wrapping_add(1);
                black_box(decide_fetched(&policy, &fetched[i], black_box(&reqs[i])))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
