//! The request path stage by stage, per decision, on the example policy and
//! a 1,000,000-user store (issue 12: "less work per decision, guided by a
//! bench of each stage"):
//!
//! - `decode`: `decode_request` of a request's JSON bytes;
//! - `lookup_and_decide`: the store lookups and the pure `decide`;
//! - `build_decision`: `pipeline::decide_request`, everything the worker
//!   does between a decoded request and its `Decision` (lookups, decide,
//!   the per-decision metrics, the record);
//! - `encode_to_vec` / `encode_reused_buffer`: the decision's JSON, into a
//!   new `Vec` (as before) or a reused buffer (as the pipeline does now);
//! - `metrics_macro` / `metrics_hot`: one `clearance_decisions_total`
//!   increment through the `metrics` macro (a registry lookup and a label
//!   allocation) or a handle resolved once per thread (`metrics::hot`);
//! - `tracker`: the offset tracker's begin, ack and take_done for one
//!   offset.
//!
//! Run: `cargo bench --bench stages -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use clearance::eligibility::feed::FeedState;
use clearance::event::{decode_request, SourceCoordinates};
use clearance::pipeline::{decide_request, ActivePolicy, Tracker};
use clearance::policy::CompiledPolicy;

mod common;

use common::{lookup_and_decide, setup, REQUESTS};

fn bench(c: &mut Criterion) {
    // A real Prometheus recorder, as in the engine.
    let _prometheus = clearance::metrics::install();
    let (store, reqs) = setup();
    let policy = CompiledPolicy::example();
    let active = ActivePolicy::new(CompiledPolicy::example());
    let feed = FeedState::default();
    let encoded: Vec<Vec<u8>> = reqs
        .iter()
        .map(|r| serde_json::to_vec(r).expect("request encodes"))
        .collect();
    let source = SourceCoordinates {
        topic: "access.requests".into(),
        partition: 0,
        offset: 0,
    };
    let decisions: Vec<_> = reqs
        .iter()
        .take(256)
        .map(|r| decide_request(&active, &store, &feed, "bench", r.clone(), source.clone()))
        .collect();
    let bytes: usize = decisions
        .iter()
        .map(|d| serde_json::to_vec(d).unwrap().len())
        .sum();
    eprintln!(
        "mean decision size: {} bytes (over {})",
        bytes / decisions.len(),
        decisions.len()
    );

    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Elements(1));
    let mut n = 0usize;
    g.bench_function("decode", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(decode_request(black_box(&encoded[n % REQUESTS])).ok())
        })
    });
    g.bench_function("lookup_and_decide", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(lookup_and_decide(&policy, &store, &reqs[n % REQUESTS]))
        })
    });
    g.bench_function("build_decision", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let req = reqs[n % REQUESTS].clone();
            black_box(decide_request(
                &active,
                &store,
                &feed,
                "bench",
                req,
                source.clone(),
            ))
        })
    });
    g.bench_function("encode_to_vec", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(serde_json::to_vec(&decisions[n % decisions.len()]).unwrap())
        })
    });
    let mut buf = Vec::new();
    g.bench_function("encode_reused_buffer", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            buf.clear();
            serde_json::to_writer(&mut buf, &decisions[n % decisions.len()]).unwrap();
            black_box(buf.len())
        })
    });
    g.bench_function("metrics_macro", |b| {
        b.iter(|| {
            let model = String::from("fable-5");
            metrics::counter!(clearance::metrics::DECISIONS_TOTAL, "outcome" => "allow", "reason" => "us_person", "model" => model.clone()).increment(1);
            black_box(model)
        })
    });
    g.bench_function("metrics_hot", |b| {
        b.iter(|| {
            clearance::metrics::hot::decision("allow", "us_person", black_box("fable-5"));
        })
    });
    let tracker = Tracker::default();
    let mut off = 0i64;
    g.bench_function("tracker", |b| {
        b.iter(|| {
            off += 1;
            tracker.begin(0, off, 1);
            tracker.ack(0, off);
            black_box(tracker.take_done())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
