//! `clearance explain` end to end: the engine decides through the broker,
//! the tool finds the decision on the decisions topic by request id and
//! time window, takes its policy from the policy history, and prints the
//! derivation from the same `decide` code.

use std::process::Command;
use std::time::Duration;

use clearance::event::{AccessRequest, EligibilityRecord, Geolocation, UserRecord};
use time::macros::datetime;

use crate::harness::*;

fn cn_h1b() -> UserRecord {
    serde_json::from_value(serde_json::json!({
        "id": "u-cn", "version": 3, "us_person_status": "foreign_person",
        "citizenships": [{"country": "CN", "acquired_on": "1992-07-15"}],
        "verification": {"status": "verified", "verified_at": "2026-02-01T00:00:00Z", "expires_at": "2028-02-01T00:00:00Z"}
    }))
    .expect("user")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_finds_a_decision_by_request_id_and_names_its_rule_path() {
    let cfg = test_config("explain");
    create_topics(&cfg).await;
    // The policy goes through the topic, so the policy history has it.
    clearance::rollout::publish_text(&cfg, clearance::policy::EXAMPLE_POLICY, "example.toml")
        .await
        .expect("publish");
    let p = producer();
    publish_records(&p, &cfg, &[EligibilityRecord::User(cn_h1b())]);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let req = AccessRequest {
        request_id: "why-r-1".into(),
        event_time: datetime!(2026-11-03 12:00 UTC),
        subject_id: "u-cn".into(),
        organization_id: None,
        model: "fable-5".into(),
        geo: Some(Geolocation {
            country: Some("US".into()),
            confidence: Some(0.95),
            ..Geolocation::default()
        }),
    };
    publish_raw(
        &p,
        &cfg.topics.requests,
        &[(b"u-cn".to_vec(), serde_json::to_vec(&req).expect("JSON"))],
    );
    let c = reader(&cfg.topics.decisions);
    let reads =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(60), |r| !r.is_empty()));
    assert_eq!(reads.len(), 1);
    stop_engine(h, stop).await;

    let dir = std::env::temp_dir().join(unique("explain"));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("c.toml");
    std::fs::write(&conf, toml::to_string(&cfg).expect("toml")).expect("write");
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_clearance"))
            .arg("explain")
            .arg("--config")
            .arg(&conf)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run clearance explain")
    };
    let from = rfc(before);
    let out = run(&["--request-id", "why-r-1", "--from", &from]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "request why-r-1",
        "model fable-5: controlled, tags [\"order-2026-11\"]",
        "derived country (most_recent): [\"CN\"]",
        "rule ofac-sanctioned-location (location_in): not matched",
        "rule deemed-export-nationality (nationality_in): MATCHED -> deny restricted_nationality",
        "outcome: deny [\"restricted_nationality\"]",
        "the derivation gives the recorded decision",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }

    // A window that ends before the decision finds nothing: exit code 2.
    let out = run(&["--request-id", "why-r-1", "--to", &from]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no decision for request why-r-1"));

    // A tampered copy (outcome flipped): exit code 1, the difference told.
    let mut doc: serde_json::Value = serde_json::from_slice(&reads[0].payload).expect("JSON");
    doc["outcome"] = "allow".into();
    let tampered = dir.join("d.json");
    std::fs::write(&tampered, doc.to_string()).expect("write");
    let out = run(&["--input", tampered.to_str().expect("path"), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON explanation");
    assert_eq!(
        e["differences"][0], "outcome: recorded allow, derived deny",
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
