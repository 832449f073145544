//! End-to-end tests of the request path against the real broker.

use std::collections::BTreeMap;
use std::time::Duration;

use clearance::event::{AccessRequest, DeadLetter, Decision, EligibilityRecord, Outcome};
use clearance::loadgen::{self, Category, Subject};

use crate::harness::*;
use crate::schemas;

fn records(subjects: &[Subject]) -> Vec<EligibilityRecord> {
    subjects
        .iter()
        .filter_map(|s| s.record.clone().map(EligibilityRecord::User))
        .collect()
}

fn request_bytes(r: &AccessRequest) -> (Vec<u8>, Vec<u8>) {
    (
        r.subject_id.as_bytes().to_vec(),
        serde_json::to_vec(r).unwrap(),
    )
}

fn check_evidence(d: &Decision) {
    assert!(!d.reasons.is_empty(), "{}: no reasons", d.request_id);
    assert!(
        !d.versions.policy_id.is_empty(),
        "{}: no policy id",
        d.request_id
    );
    assert!(
        !d.versions.policy_version.is_empty(),
        "{}: no policy version",
        d.request_id
    );
    let inputs = d.inputs.as_ref().expect("inputs recorded");
    assert_eq!(inputs.request.request_id, d.request_id);
    assert_eq!(
        d.versions
            .subject
            .as_ref()
            .map(|v| (v.id.clone(), v.version)),
        inputs.subject.as_ref().map(|s| (s.id.clone(), s.version)),
        "{}: subject version must match the recorded subject",
        d.request_id
    );
}

/// Mixed load: 10,000 requests over 3 partitions; every outcome as expected,
/// every decision with reasons and versions, valid against the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_gets_expected_outcomes() {
    let cfg = test_config("mixed");
    create_topics(&cfg).await;
    let subjects: Vec<Subject> = (0..1000).map(|i| loadgen::subject("mx", i)).collect();
    let p = producer();
    publish_records(&p, &cfg, &records(&subjects));
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    const N: usize = 10_000;
    let mut expected = BTreeMap::new();
    let mut batch = Vec::with_capacity(N);
    for i in 0..N {
        let s = &subjects[i % subjects.len()];
        let model = loadgen::model_for(i);
        let req = loadgen::request(s, format!("mx-{i}"), model);
        expected.insert(
            req.request_id.clone(),
            (
                s.category,
                model,
                s.category.expected(model),
                s.category.expected_reason(model),
            ),
        );
        batch.push(request_bytes(&req));
    }
    publish_raw(&p, &cfg.topics.requests, &batch);

    let c = reader(&cfg.topics.decisions);
    let reads =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(180), |r| r.len() >= N));
    let ds = decisions(&reads);
    let first = first_by_request(&ds);
    assert_eq!(first.len(), N, "every request gets a decision");
    let partitions: std::collections::BTreeSet<i32> = ds
        .iter()
        .filter_map(|d| d.source.as_ref().map(|s| s.partition))
        .collect();
    assert_eq!(partitions.len(), 3, "requests came from 3 partitions");

    let mut by_category: BTreeMap<(Category, &str, Outcome), usize> = BTreeMap::new();
    for (id, (cat, model, outcome, reason)) in &expected {
        let d = &first[id];
        assert_eq!(
            d.outcome, *outcome,
            "{id} ({cat:?} on {model}): {:?}",
            d.reasons
        );
        assert_eq!(
            d.reasons.first().map(String::as_str),
            Some(*reason),
            "{id} ({cat:?} on {model}): reasons {:?}",
            d.reasons
        );
        check_evidence(d);
        *by_category.entry((*cat, model, *outcome)).or_default() += 1;
    }
    // The mix really is mixed: allows and denies of several kinds.
    assert!(by_category.len() >= 20, "{by_category:?}");

    // Keyed by request_id, and in the order of each request partition:
    // within one decision partition, the source offsets of one request
    // partition only grow.
    let mut last: BTreeMap<(i32, i32), (i64, i64)> = BTreeMap::new();
    let mut sorted: Vec<(&Read, Decision)> = reads.iter().zip(ds.iter().cloned()).collect();
    sorted.sort_by_key(|(r, _)| (r.partition, r.offset));
    for (r, d) in &sorted {
        assert_eq!(r.key.as_deref(), Some(d.request_id.as_bytes()));
        let src = d.source.as_ref().expect("source coordinates");
        if let Some((prev_src, prev_off)) =
            last.insert((r.partition, src.partition), (src.offset, r.offset))
        {
            assert!(
                prev_src < src.offset,
                "decision partition {} offset {}: request {}/{} after {}/{} (at {prev_off})",
                r.partition,
                r.offset,
                src.partition,
                src.offset,
                src.partition,
                prev_src
            );
        }
    }

    for r in &reads {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        schemas::validate("decision", &v).unwrap_or_else(|e| panic!("schema: {e}\n{v}"));
    }
    stop_engine(h, stop).await;
}

/// Revocation: once applied (seen on /status), the next request of the
/// subject is denied, and no allow follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_denies_the_next_request() {
    let cfg = test_config("revoke");
    create_topics(&cfg).await;
    let s = loadgen::subject("rv", 0);
    assert_eq!(s.category, Category::UsCitizen);
    let p = producer();
    publish_records(&p, &cfg, &records(std::slice::from_ref(&s)));
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    // Requests flow before, during and after the revocation.
    let send = |range: std::ops::Range<usize>| {
        let batch: Vec<_> = range
            .map(|i| {
                request_bytes(&loadgen::request(
                    &s,
                    format!("rv-{i:05}"),
                    loadgen::TAGGED_MODEL,
                ))
            })
            .collect();
        publish_raw(&p, &cfg.topics.requests, &batch);
    };
    send(0..50);
    let c = reader(&cfg.topics.decisions);
    let before =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(60), |r| r.len() >= 50));
    assert!(
        decisions(&before)
            .iter()
            .all(|d| d.outcome == Outcome::Allow),
        "a verified U.S. citizen is allowed before the revocation"
    );

    publish_records(&p, &cfg, &[revocation_of(&s)]);
    send(50..100); // racing with the revocation: either outcome is fine here
    wait_feed_applied(&h, &cfg).await; // observed through /status
    send(100..150);

    let rest =
        tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(60), |r| r.len() >= 100));
    let mut all = decisions(&before);
    all.extend(decisions(&rest));
    let first = first_by_request(&all);
    assert_eq!(first.len(), 150);
    // In request order (one subject: one partition, processed in order).
    let mut revoked_seen = false;
    for (id, d) in &first {
        let i: usize = id[3..].parse().unwrap();
        if i >= 100 {
            assert_eq!(
                d.outcome,
                Outcome::Deny,
                "{id} after the revocation was applied"
            );
            assert_eq!(d.reasons, vec!["subject_revoked".to_string()], "{id}");
            assert_eq!(d.versions.subject.as_ref().unwrap().version, 2);
        }
        if d.outcome == Outcome::Deny {
            revoked_seen = true;
        } else {
            assert!(!revoked_seen, "{id} allowed after a revoked deny");
        }
    }
    stop_engine(h, stop).await;
}

/// Malformed input: dead letters with reason, original bytes and source
/// coordinates; a deny where a request id could be read; the engine goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_dead_lettered() {
    let mut cfg = test_config("malformed");
    cfg.topics.partitions = 1; // so offsets are easy to predict
    create_topics(&cfg).await;
    let s = loadgen::subject("ml", 0);
    let p = producer();
    publish_records(&p, &cfg, &records(std::slice::from_ref(&s)));
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    let not_json = b"this is not json {".to_vec();
    let no_subject =
        br#"{"request_id":"ml-nosubject","event_time":"2026-11-28T12:00:00Z","model":"fable-5"}"#
            .to_vec();
    let good = loadgen::request(&s, "ml-good".into(), loadgen::TAGGED_MODEL);
    publish_raw(
        &p,
        &cfg.topics.requests,
        &[
            (b"k1".to_vec(), not_json.clone()),
            (b"k2".to_vec(), no_subject.clone()),
            request_bytes(&good),
        ],
    );

    let dlc = reader(&cfg.topics.deadletter);
    let dls =
        tokio::task::block_in_place(|| read_until(&dlc, Duration::from_secs(60), |r| r.len() >= 2));
    assert_eq!(dls.len(), 2);
    let mut dl = dead_letters(&dls);
    dl.sort_by_key(|d| d.source.offset);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(dl[0].error_kind, "invalid_json");
    assert_eq!(b64.decode(&dl[0].payload_base64).unwrap(), not_json);
    assert_eq!((dl[0].source.partition, dl[0].source.offset), (0, 0));
    assert_eq!(dl[0].source.topic, cfg.topics.requests);
    assert_eq!(dl[0].request_id, None);
    assert_eq!(dl[1].error_kind, "missing_field");
    assert!(dl[1].error.contains("subject_id"), "{}", dl[1].error);
    assert_eq!(b64.decode(&dl[1].payload_base64).unwrap(), no_subject);
    assert_eq!((dl[1].source.partition, dl[1].source.offset), (0, 1));
    assert_eq!(dl[1].request_id.as_deref(), Some("ml-nosubject"));

    let c = reader(&cfg.topics.decisions);
    let ds = decisions(&tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(60), |r| r.len() >= 2)
    }));
    let first = first_by_request(&ds);
    let bad = &first["ml-nosubject"];
    assert_eq!(bad.outcome, Outcome::Deny);
    assert_eq!(bad.reasons, vec!["malformed_request".to_string()]);
    assert!(first.contains_key("ml-good"), "the engine kept going");
    assert_eq!(first.len(), 2, "no decision for the unreadable payload");
    stop_engine(h, stop).await;
}

/// Startup: with 100,000 records already in the eligibility topic, no
/// decision is made before the cache has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_decision_before_the_cache_caught_up() {
    let cfg = test_config("startup");
    create_topics(&cfg).await;
    let p = producer();
    // 100,000 records: 99,990 filler users, then 10 subjects whose *last*
    // version (2) makes them U.S. citizens; version 1 was a restricted
    // foreign national. A decision made early would deny.
    const N: usize = 100_000;
    let watched: Vec<Subject> = (0..100)
        .map(|i| loadgen::subject("st", i))
        .filter(|s| s.category == Category::UsCitizen)
        .collect();
    assert_eq!(watched.len(), 10);
    let mut recs = Vec::with_capacity(N);
    for s in &watched {
        let mut v1 = s.record.clone().unwrap();
        v1.us_person_status = clearance::event::UsPersonStatus::ForeignPerson;
        v1.citizenships[0].country = "CN".into();
        recs.push(EligibilityRecord::User(v1));
    }
    for i in 0..(N - 2 * watched.len()) {
        if let Some(r) = loadgen::subject("fill", i).record {
            recs.push(EligibilityRecord::User(r));
        } else {
            recs.push(EligibilityRecord::User(
                loadgen::subject("fill", i + 1).record.unwrap(),
            ));
        }
    }
    for s in &watched {
        let mut v2 = s.record.clone().unwrap();
        v2.version = 2;
        recs.push(EligibilityRecord::User(v2));
    }
    assert_eq!(recs.len(), N);
    publish_records(&p, &cfg, &recs);
    // The requests are waiting before the engine starts.
    let batch: Vec<_> = watched
        .iter()
        .map(|s| {
            request_bytes(&loadgen::request(
                s,
                format!("st-{}", s.id),
                loadgen::TAGGED_MODEL,
            ))
        })
        .collect();
    publish_raw(&p, &cfg.topics.requests, &batch);

    let (h, stop) = start_engine(&cfg).await;
    let c = reader(&cfg.topics.decisions);
    let ds = decisions(&tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(180), |r| r.len() >= watched.len())
    }));
    assert_eq!(ds.len(), watched.len());
    for d in &ds {
        assert_eq!(
            d.versions.subject.as_ref().map(|v| v.version),
            Some(2),
            "{} was decided on an old record",
            d.request_id
        );
        assert_eq!(
            d.outcome,
            Outcome::Allow,
            "{}: {:?}",
            d.request_id,
            d.reasons
        );
    }
    let status: serde_json::Value = serde_json::from_str(
        &clearance::admin::get(h.admin_addr, "/status")
            .await
            .unwrap()
            .1,
    )
    .unwrap();
    let distinct: std::collections::HashSet<String> = recs.iter().map(|r| r.key()).collect();
    assert_eq!(
        status["eligibility"]["users"].as_i64(),
        Some(distinct.len() as i64)
    );
    assert_eq!(status["ready"].as_bool(), Some(true));
    stop_engine(h, stop).await;
}

/// Hostile input on both input topics: every record is dead-lettered with
/// its reason, original bytes (truncated above the limit, with the size
/// recorded) and coordinates; nothing panics; the engine keeps deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_dead_lettered_on_both_topics() {
    let mut cfg = test_config("hostile");
    cfg.engine.deadletter_max_payload_bytes = 1024;
    cfg.engine.max_input_bytes = 100_000;
    create_topics(&cfg).await;
    let s = loadgen::subject("ho", 0);
    let p = producer();
    publish_records(&p, &cfg, &records(std::slice::from_ref(&s)));
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    let huge = format!(
        r#"{{"request_id":"ho-huge","event_time":"2026-11-28T12:00:00Z","subject_id":"x","model":"{}"}}"#,
        "m".repeat(200_000)
    );
    let bad_requests: Vec<(&str, Vec<u8>)> = vec![
        ("wrong_type", br#"{"request_id":"ho-1","event_time":"2026-11-28T12:00:00Z","subject_id":7,"model":"fable-5"}"#.to_vec()),
        ("invalid_utf8", b"{\"request_id\":\"ho-2\",\xff\xfe}".to_vec()),
        ("absurd_time", br#"{"request_id":"ho-3","event_time":"9999-01-01T00:00:00Z","subject_id":"a","model":"fable-5"}"#.to_vec()),
        ("negative_time", br#"{"request_id":"ho-4","event_time":-5,"subject_id":"a","model":"fable-5"}"#.to_vec()),
        ("unknown_enum", br#"{"request_id":"ho-5","event_time":"2026-11-28T12:00:00Z","subject_id":"a","model":"fable-5","geo":{"confidence":7.5}}"#.to_vec()),
        ("empty", Vec::new()),
        ("huge", huge.clone().into_bytes()),
    ];
    publish_raw(
        &p,
        &cfg.topics.requests,
        &bad_requests
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect::<Vec<_>>(),
    );
    // And on the change feed: wrong key, unknown enum value, not JSON.
    let bad_feed: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            b"user:ho-other".to_vec(),
            serde_json::to_vec(&EligibilityRecord::User(s.record.clone().unwrap())).unwrap(),
        ),
        (
            b"user:ho-enum".to_vec(),
            br#"{"kind":"user","id":"ho-enum","version":1,"us_person_status":"martian"}"#.to_vec(),
        ),
        (b"nokind".to_vec(), b"not json".to_vec()),
    ];
    publish_raw(&p, &cfg.topics.eligibility, &bad_feed);
    // The engine keeps going.
    let good = loadgen::request(&s, "ho-good".into(), loadgen::TAGGED_MODEL);
    publish_raw(&p, &cfg.topics.requests, &[request_bytes(&good)]);

    let dlc = reader(&cfg.topics.deadletter);
    let want = bad_requests.len() + bad_feed.len();
    let dls = dead_letters(&tokio::task::block_in_place(|| {
        read_until(&dlc, Duration::from_secs(60), |r| r.len() >= want)
    }));
    assert_eq!(dls.len(), want, "{dls:#?}");
    let from_requests = dls
        .iter()
        .filter(|d| d.source.topic == cfg.topics.requests)
        .count();
    assert_eq!(from_requests, bad_requests.len());
    let from_feed = dls
        .iter()
        .filter(|d| d.source.topic == cfg.topics.eligibility)
        .count();
    assert_eq!(from_feed, bad_feed.len());
    let huge_dl = dls
        .iter()
        .find(|d| d.payload_size == huge.len())
        .expect("huge one");
    assert!(huge_dl.truncated);
    use base64::Engine as _;
    let kept = base64::engine::general_purpose::STANDARD
        .decode(&huge_dl.payload_base64)
        .unwrap();
    assert_eq!(kept.len(), 1024);
    assert_eq!(&kept[..], &huge.as_bytes()[..1024]);
    for d in &dls {
        assert!(!d.error.is_empty() && !d.error_kind.is_empty(), "{d:?}");
    }

    let c = reader(&cfg.topics.decisions);
    let ds = decisions(&tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(60), |r| {
            let ids: Vec<String> = decisions(r).into_iter().map(|d| d.request_id).collect();
            ["ho-good", "ho-1", "ho-3", "ho-4", "ho-5", "ho-huge"]
                .iter()
                .all(|id| ids.iter().any(|x| x == id))
        })
    }));
    let first = first_by_request(&ds);
    assert_eq!(
        first["ho-good"].outcome,
        Outcome::Allow,
        "the engine kept going"
    );
    // A deny for each bad request whose id could be read.
    for id in ["ho-1", "ho-3", "ho-4", "ho-5", "ho-huge"] {
        assert_eq!(
            first[id].reasons,
            vec!["malformed_request".to_string()],
            "{id}"
        );
    }
    assert!(
        !first.contains_key("ho-2"),
        "invalid UTF-8 has no readable id"
    );
    let (_, metrics) = clearance::admin::get(h.admin_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("clearance_deadletters_total{source=\"eligibility\""),
        "feed dead letters counted"
    );
    stop_engine(h, stop).await;
}

/// A full producer queue is backpressure, not an error or a drop: with a
/// tiny local queue, every request still gets its decision and the
/// backpressure counter moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_producer_queue_is_backpressure() {
    let mut cfg = test_config("backpressure");
    cfg.engine.producer_queue_max_messages = 5;
    create_topics(&cfg).await;
    let subjects: Vec<Subject> = (0..50).map(|i| loadgen::subject("bp", i)).collect();
    let p = producer();
    publish_records(&p, &cfg, &records(&subjects));
    const N: usize = 5_000;
    let batch: Vec<_> = (0..N)
        .map(|i| {
            request_bytes(&loadgen::request(
                &subjects[i % 50],
                format!("bp-{i}"),
                loadgen::model_for(i),
            ))
        })
        .collect();
    publish_raw(&p, &cfg.topics.requests, &batch);
    let (h, stop) = start_engine(&cfg).await;
    let c = reader(&cfg.topics.decisions);
    let ds = decisions(&tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(120), |r| r.len() >= N)
    }));
    assert_eq!(first_by_request(&ds).len(), N, "every request decided");
    let (_, metrics) = clearance::admin::get(h.admin_addr, "/metrics")
        .await
        .unwrap();
    let waits: f64 = metrics
        .lines()
        .find(|l| l.starts_with("clearance_producer_backpressure_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        waits > 0.0,
        "the queue filled up and the worker waited:\n{metrics}"
    );
    stop_engine(h, stop).await;
}

/// Decode dead-letter records, each checked against its JSON Schema.
fn dead_letters(reads: &[Read]) -> Vec<DeadLetter> {
    reads
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            schemas::validate("dead-letter", &v).unwrap_or_else(|e| panic!("schema: {e}\n{v}"));
            serde_json::from_value(v).unwrap()
        })
        .collect()
}
