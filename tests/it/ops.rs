//! Operations: a dead policy watcher stops the engine.

use std::time::{Duration, Instant};

use clearance::admin::{self, StatusSource};
use clearance::engine::{EngineHandle, FaultInjection};

use crate::harness::*;

/// The value of `clearance_task_failures_total{task="policy_watcher"}`.
fn policy_watcher_failures() -> f64 {
    let text = clearance::metrics::install().render();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("clearance_task_failures_total{task=\"policy_watcher\"} ")
                .map(|v| v.trim().parse().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// Wait until `topic` has partitions in the broker's metadata, each with a
/// leader that answers.
fn wait_for_topic(topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("a metadata client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partitions: Vec<i32> = c
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|md| {
                md.topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect()
            })
            .unwrap_or_default();
        let led = !partitions.is_empty()
            && partitions.iter().all(|p| {
                c.fetch_watermarks(topic, *p, Duration::from_secs(5))
                    .is_ok()
            });
        if led {
            return;
        }
        assert!(Instant::now() < deadline, "topic {topic} in the metadata");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Start an engine, wait until it is ready, break its policy watcher with
/// `inject`, and check that the engine stops with an error naming the
/// watcher, unhealthy and unready, and that the metric counts it.
async fn dead_policy_watcher_stops_the_engine(name: &str, inject: fn(&FaultInjection)) {
    let cfg = test_config(name);
    create_topics(&cfg).await;
    // A topic just created may not be in the metadata yet, or its
    // partitions without a leader, and the engine refuses to start without
    // them (the policy watcher does not retry): wait for them.
    for topic in [&cfg.topics.policy, &cfg.topics.eligibility] {
        tokio::task::block_in_place(|| wait_for_topic(topic));
    }
    let (h, stop) = start_engine(&cfg).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while admin::get(h.admin_addr, "/readyz").await.map(|r| r.0).ok() != Some(200) {
        assert!(
            !h.join.is_finished(),
            "the engine stopped before it was ready"
        );
        assert!(Instant::now() < deadline, "the engine became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(admin::get(h.admin_addr, "/healthz").await.unwrap().0, 200);
    let failures_before = policy_watcher_failures();

    let EngineHandle {
        state,
        join,
        faults,
        ..
    } = h;
    inject(&faults);
    let result = tokio::time::timeout(Duration::from_secs(60), join)
        .await
        .expect("a dead policy watcher stops the engine (waited 60 s)")
        .expect("the engine task ends normally");
    let err = result
        .expect_err("the engine stops with an error")
        .to_string();
    assert!(err.contains("policy watcher"), "{err}");

    let status: &dyn StatusSource = &*state;
    assert!(!status.healthy(), "unhealthy: /healthz answers 503");
    assert!(!status.ready(), "unready: /readyz answers 503");
    let failure = status.status()["failure"].to_string();
    assert!(failure.contains("policy_watcher"), "{failure}");
    assert!(
        policy_watcher_failures() > failures_before,
        "clearance_task_failures_total{{task=\"policy_watcher\"}} counts it"
    );
    drop(stop);
}

/// A policy watcher that returns while the engine is not shutting down
/// stops the engine, like a dead change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_watcher_exit_stops_the_engine() {
    dead_policy_watcher_stops_the_engine("watcher-exit", FaultInjection::stop_policy_watcher).await;
}

/// A policy watcher whose thread panics stops the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_watcher_panic_stops_the_engine() {
    dead_policy_watcher_stops_the_engine("watcher-panic", FaultInjection::panic_policy_watcher)
        .await;
}
