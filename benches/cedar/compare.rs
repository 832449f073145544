//! clearance against the `cedar-policy` crate, in one run, on the same
//! 1,000,000-user store and the same 8,192 requests as the `decide` bench.
//!
//! Run: `cargo bench --bench cedar -- --warm-up-time 2 --measurement-time 5`
//!
//! Benchmarks (group `cedar_compare`):
//! - `clearance/example/lookup_and_decide`: the full example policy
//!   (`policies/example.toml`), store lookup included (the `decide` bench's
//!   `lookup_and_decide_1m_users`).
//! - `clearance/core/lookup_and_decide`, `clearance/core/decide_only`: the
//!   directive's main rules only (`directive_core.toml`): the policy Cedar
//!   is compared with. The lookup also fetches the organization (as the
//!   engine does), which this policy does not need.
//! - `cedar/lookup_build_and_authorize`: the same store lookup, then what an
//!   engine using Cedar must do per request: build the principal entity from
//!   the `UserRecord` (derived countries computed in Rust with
//!   `clearance::decide::derived_countries`), the context from the
//!   geolocation, the `Entities` (principal + the model's entity, cloned
//!   from a map built once at policy load) and the `Request`; then
//!   `Authorizer::is_authorized` against `directive_core.cedar`.
//! - `cedar/authorize_only`: `is_authorized` alone on requests and entities
//!   built beforehand: the pure-evaluation counterpart of
//!   `clearance/core/decide_only`.
//!
//! Before timing, it asserts that Cedar and `directive_core.toml` give the
//! same outcome on every request (and that no Cedar policy errored, since
//! Cedar skips a policy whose evaluation errors), and prints how many
//! requests the full example policy decides differently (its extra rules:
//! verification, location verifiability, ownership, listed parties,
//! authorizations).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use clearance::event::Outcome;
use clearance::policy::CompiledPolicy;

#[path = "../common/mod.rs"]
mod common;
mod engine;

use common::{core_policy, decide_fetched, lookup_and_decide, prefetch, setup, REQUESTS};

fn bench(c: &mut Criterion) {
    let example = CompiledPolicy::example();
    let core = core_policy();
    let cedar = engine::Cedar::new(&core);
    let (store, reqs) = setup();
    let fetched = prefetch(&store, &reqs);

    // Agreement first: the comparison is only honest if both decide alike.
    let (mut allowed, mut differ_full) = (0usize, 0usize);
    for (i, req) in reqs.iter().enumerate() {
        let ours = lookup_and_decide(&core, &store, req).outcome;
        let theirs = cedar.authorize_checked(&cedar.prepare(fetched[i].0.as_deref(), req));
        assert_eq!(
            ours, theirs,
            "clearance and Cedar disagree on request {i}: {req:?}, subject {:?}",
            fetched[i].0
        );
        allowed += usize::from(ours == Outcome::Allow);
        differ_full += usize::from(lookup_and_decide(&example, &store, req).outcome != ours);
    }
    assert!(allowed > 0 && allowed < REQUESTS, "a one-sided request set");
    eprintln!(
        "cedar agreement: {REQUESTS}/{REQUESTS} outcomes agree ({allowed} allow, {} deny); \
         the full example policy decides {differ_full} of them differently (its extra rules)",
        REQUESTS - allowed
    );

    let mut group = c.benchmark_group("cedar_compare");
    group.throughput(Throughput::Elements(1));
    for (name, policy) in [
        ("clearance/example/lookup_and_decide", &example),
        ("clearance/core/lookup_and_decide", &core),
    ] {
        let mut n = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                let req = &reqs[n % REQUESTS];
                n = n.wrapping_add(1);
                black_box(lookup_and_decide(policy, &store, black_box(req)))
            })
        });
    }
    let mut n = 0usize;
    group.bench_function("clearance/core/decide_only", |b| {
        b.iter(|| {
            let i = n % REQUESTS;
            n = n.wrapping_add(1);
            black_box(decide_fetched(&core, &fetched[i], black_box(&reqs[i])))
        })
    });
    let mut n = 0usize;
    group.bench_function("cedar/lookup_build_and_authorize", |b| {
        b.iter(|| {
            let req = &reqs[n % REQUESTS];
            n = n.wrapping_add(1);
            black_box(cedar.lookup_and_authorize(&store, black_box(req)))
        })
    });
    let prepared: Vec<engine::Prepared> = reqs
        .iter()
        .zip(&fetched)
        .map(|(r, (s, _))| cedar.prepare(s.as_deref(), r))
        .collect();
    let mut n = 0usize;
    group.bench_function("cedar/authorize_only", |b| {
        b.iter(|| {
            let i = n % REQUESTS;
            n = n.wrapping_add(1);
            black_box(cedar.authorize(black_box(&prepared[i])))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
