//! Tombstones on the change feed, end to end: a deleted record does not come
//! back with a late older version.

use std::time::Duration;

use clearance::event::{EligibilityRecord, Outcome};
use clearance::loadgen::{self, Category};

use crate::harness::*;

/// `user:X` version 7 (allowed on the controlled model), a tombstone, then
/// a late version 5 that would allow too: the subject stays deleted, so its
/// request is denied `unknown_subject`, not decided with version 5. The
/// deletion marker survives a warm restart (it is in the snapshot): a late
/// version 6 published while the engine is down stays stale too. Version 8
/// brings the subject back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_older_record_does_not_undo_a_tombstone() {
    let mut cfg = test_config("tomb");
    // Generous: the shutdown snapshot syncs on a disk the broker shares.
    cfg.engine.shutdown_timeout_ms = 60_000;
    let dir = std::env::temp_dir().join(unique("clearance-tomb"));
    std::fs::create_dir_all(&dir).unwrap();
    cfg.engine.snapshot_path = Some(dir.join("eligibility.snap"));
    create_topics(&cfg).await;
    let s = loadgen::subject("tb", 0);
    assert_eq!(s.category, Category::UsCitizen);
    let rec = s.record.clone().expect("a record");
    let version = |v: u64| {
        let mut r = rec.clone();
        r.version = v;
        EligibilityRecord::User(r)
    };
    let key = format!("user:{}", s.id);
    let p = producer();
    let c = reader(&cfg.topics.decisions);
    let decide = |id: &str| {
        let req = loadgen::request(&s, id.to_string(), loadgen::TAGGED_MODEL);
        publish_raw(
            &p,
            &cfg.topics.requests,
            &[(s.id.as_bytes().to_vec(), serde_json::to_vec(&req).unwrap())],
        );
        let reads = tokio::task::block_in_place(|| {
            read_until(&c, Duration::from_secs(60), |r| {
                decisions(r).iter().any(|d| d.request_id == id)
            })
        });
        decisions(&reads)
            .into_iter()
            .find(|d| d.request_id == id)
            .unwrap_or_else(|| panic!("no decision for {id}"))
    };

    publish_records(&p, &cfg, &[version(7)]);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let d = decide("tb-before");
    assert_eq!(
        d.outcome,
        Outcome::Allow,
        "version 7 allows: {:?}",
        d.reasons
    );
    assert_eq!(d.versions.subject.as_ref().unwrap().version, 7);

    // The tombstone, then the late version 5, on the same partition (same
    // key), in this order.
    clearance::loadgen::send_blocking(&p, &cfg.topics.eligibility, key.as_bytes(), None)
        .expect("tombstone");
    publish_records(&p, &cfg, &[version(5)]);
    wait_feed_applied(&h, &cfg).await;

    let d = decide("tb-after");
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert_eq!(d.reasons, vec!["unknown_subject".to_string()], "{d:?}");
    assert!(d.versions.subject.is_none(), "no record used: {d:?}");
    let (_, metrics) = clearance::admin::get(h.admin_addr, "/metrics")
        .await
        .expect("GET /metrics");
    assert!(
        metrics.contains("clearance_eligibility_applied_total{result=\"stale\"}"),
        "the late record is counted stale:\n{metrics}"
    );

    assert_eq!(
        engine_status(&h).await["eligibility"]["deletion_markers"],
        1
    );
    stop_engine(h, stop).await;

    // While it is down: a late version 6. The warm start loads the marker
    // with the snapshot, and applies only version 6: stale.
    publish_records(&p, &cfg, &[version(6)]);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let st = engine_status(&h).await;
    assert_eq!(st["snapshot"]["status"], "loaded", "{st}");
    assert_eq!(st["snapshot"]["deletion_markers"], 1, "{st}");
    assert_eq!(st["feed"]["applied"], 1, "only version 6 replayed: {st}");
    assert_eq!(st["eligibility"]["users"], 0, "{st}");
    let d = decide("tb-after-restart");
    assert_eq!(d.reasons, vec!["unknown_subject".to_string()], "{d:?}");

    // A newer version brings the subject back.
    publish_records(&p, &cfg, &[version(8)]);
    wait_feed_applied(&h, &cfg).await;
    let d = decide("tb-newer");
    assert_eq!(d.outcome, Outcome::Allow, "{:?}", d.reasons);
    assert_eq!(d.versions.subject.as_ref().unwrap().version, 8);
    assert_eq!(
        engine_status(&h).await["eligibility"]["deletion_markers"],
        0
    );
    stop_engine(h, stop).await;
    let _ = std::fs::remove_dir_all(&dir);
}
