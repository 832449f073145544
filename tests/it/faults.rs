//! Fault tests: exactly-once under repeated SIGKILL, stale eligibility data,
//! and several engine instances joining and leaving one group. Each is
//! bounded in time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clearance::config::{Config, DeliveryMode};
use clearance::event::{EligibilityRecord, Outcome};
use clearance::loadgen;
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::harness::*;

/// Exactly-once: SIGKILL the engine at random points five times during a
/// load, restart it each time; in the end every request has exactly one
/// committed decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_repeated_sigkill() {
    let mut cfg = test_config("eos");
    cfg.engine.delivery = DeliveryMode::ExactlyOnce;
    cfg.engine.transaction_max_ms = 50;
    create_topics(&cfg).await;
    let dir = std::env::temp_dir().join(unique("clearance-eos"));
    std::fs::create_dir_all(&dir).unwrap();

    let subjects: Vec<_> = (0..300).map(|i| loadgen::subject("eo", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);
    const N: usize = 30_000;
    let batch = request_batch(&subjects, "eo", 0..N);
    publish_raw(&p, &cfg.topics.requests, &batch);

    let c = committed_reader(&cfg.topics.decisions);
    let mut counts: HashMap<String, usize> = HashMap::new();
    let absorb = |reads: Vec<Read>, counts: &mut HashMap<String, usize>| {
        for d in decisions(&reads) {
            *counts.entry(d.request_id).or_default() += 1;
        }
    };
    let mut rng = rand::thread_rng();
    for kill in 0..5 {
        let mut child = spawn_engine(&cfg, &dir, "eos");
        // Wait until this instance commits decisions, then let it run a
        // random while longer and SIGKILL it: the kill lands mid-load.
        let before = counts.len();
        let reads = tokio::task::block_in_place(|| {
            read_until(&c, Duration::from_secs(90), |r| r.len() >= 300)
        });
        absorb(reads, &mut counts);
        assert!(counts.len() > before, "instance {kill} made progress");
        let wait = Duration::from_millis(rng.gen_range(100..1_500));
        let reads = tokio::task::block_in_place(|| read_until(&c, wait, |_| false));
        absorb(reads, &mut counts);
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        eprintln!("eos kill {kill}: {} requests decided so far", counts.len());
    }
    let mut child = spawn_engine(&cfg, &dir, "eos");
    let deadline = Instant::now() + Duration::from_secs(240);
    while counts.len() < N && Instant::now() < deadline {
        let reads =
            tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(2), |_| false));
        absorb(reads, &mut counts);
    }
    // Anything committed late shows up now, if at all.
    let reads = tokio::task::block_in_place(|| read_until(&c, Duration::from_secs(5), |_| false));
    absorb(reads, &mut counts);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let missing: Vec<usize> = (0..N)
        .filter(|i| !counts.contains_key(&format!("eo-{i}")))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "requests without a committed decision: {missing:?}"
    );
    let doubled: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(doubled.is_empty(), "decisions committed twice: {doubled:?}");
    assert_eq!(counts.len(), N);
}

/// Several instances in one group, joining and leaving during a load
/// (rebalances): no request is left without a decision, and no subject is
/// allowed after its revocation was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_lose_nothing() {
    let cfg = test_config("group");
    create_topics(&cfg).await;
    let subjects: Vec<_> = (0..300).map(|i| loadgen::subject("gr", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);

    let mut instances = Vec::new();
    for i in 0..3 {
        let mut c = cfg.clone();
        c.engine.instance_id = format!("{}-{i}", cfg.engine.instance_id);
        instances.push(start_engine(&c).await);
    }
    for (h, _) in &instances {
        wait_feed_applied(h, &cfg).await;
    }
    const N: usize = 30_000;
    let revoked = subjects[0].clone(); // a U.S. citizen, allowed until revoked
    let send = |range: std::ops::Range<usize>| {
        let b: Vec<_> = range
            .map(|i| {
                let s = if i.is_multiple_of(50) {
                    &revoked
                } else {
                    &subjects[i % subjects.len()]
                };
                let model = if i.is_multiple_of(50) {
                    loadgen::TAGGED_MODEL
                } else {
                    loadgen::model_for(i)
                };
                let r = loadgen::request(s, format!("gr-{i:06}"), model);
                (s.id.as_bytes().to_vec(), serde_json::to_vec(&r).unwrap())
            })
            .collect();
        publish_raw(&producer(), &cfg.topics.requests, &b);
    };
    send(0..10_000);
    // One leaves, one joins, while requests flow.
    let (h, stop) = instances.remove(0);
    stop_engine(h, stop).await;
    send(10_000..15_000);
    let mut c3 = cfg.clone();
    c3.engine.instance_id = format!("{}-3", cfg.engine.instance_id);
    instances.push(start_engine(&c3).await);

    // Revoke the subject; wait until every instance has applied it.
    let mut rec = revoked.record.clone().unwrap();
    rec.version = 2;
    rec.revocation = Some(clearance::event::Revocation {
        revoked_at: time::OffsetDateTime::now_utc(),
        reason: None,
    });
    publish_records(&p, &cfg, &[EligibilityRecord::User(rec)]);
    for (h, _) in &instances {
        wait_feed_applied(h, &cfg).await;
    }
    send(15_000..N);
    let (h, stop) = instances.remove(1);
    stop_engine(h, stop).await;

    let c = reader(&cfg.topics.decisions);
    let ds = decisions(&tokio::task::block_in_place(|| {
        read_until(&c, Duration::from_secs(240), |r| r.len() >= N)
    }));
    let first = first_by_request(&ds);
    let missing: Vec<usize> = (0..N)
        .filter(|i| !first.contains_key(&format!("gr-{i:06}")))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "requests without a decision: {missing:?}"
    );
    // Every decision of the revoked subject for requests sent after the
    // revocation was applied everywhere is a deny; none of any instance is
    // an allow.
    for d in &ds {
        let i: usize = d.request_id[3..].parse().unwrap();
        if i >= 15_000 && i.is_multiple_of(50) {
            assert_eq!(
                d.outcome,
                Outcome::Deny,
                "{} after revocation: {:?}",
                d.request_id,
                d.reasons
            );
        }
    }
    let instances_seen: std::collections::BTreeSet<&str> =
        ds.iter().map(|d| d.engine_instance.as_str()).collect();
    assert!(
        instances_seen.len() >= 3,
        "decisions came from several instances: {instances_seen:?}"
    );
    for (h, stop) in instances {
        stop_engine(h, stop).await;
    }
}

/// Send one request and return its decision.
fn decide_one(
    cfg: &Config,
    reader: &BaseConsumer,
    s: &loadgen::Subject,
    id: &str,
    model: &str,
) -> clearance::event::Decision {
    let r = loadgen::request(s, id.to_string(), model);
    publish_raw(
        &producer(),
        &cfg.topics.requests,
        &[(s.id.as_bytes().to_vec(), serde_json::to_vec(&r).unwrap())],
    );
    let reads = read_until(reader, Duration::from_secs(60), |r| {
        decisions(r).iter().any(|d| d.request_id == id)
    });
    decisions(&reads)
        .into_iter()
        .find(|d| d.request_id == id)
        .unwrap_or_else(|| panic!("no decision for {id}"))
}

/// A change-feed outage longer than the staleness bound: controlled models
/// are denied with `stale_data`, untagged ones keep being served, and
/// recovery is automatic. The change feed lives on a broker of its own
/// (`kafka.feed_bootstrap_servers`), which is stopped and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_outage_denies_only_controlled_models_until_recovery() {
    let feed = PrivateBroker::up();
    let mut cfg = test_config("stale");
    cfg.kafka.feed_bootstrap_servers = Some(feed.bootstrap.clone());
    cfg.engine.staleness_bound_secs = 3;
    create_topics(&cfg).await;
    let mut feed_kafka = cfg.kafka.clone();
    feed_kafka.bootstrap_servers = feed.bootstrap.clone();
    clearance::kafka::create_topics(&feed_kafka, &cfg.topics)
        .await
        .unwrap();

    let us = loadgen::subject("sl", 0);
    let fp = clearance::loadgen::data_producer(&feed.bootstrap).unwrap();
    clearance::loadgen::publish_eligibility(
        &fp,
        &cfg.topics.eligibility,
        &[EligibilityRecord::User(us.record.clone().unwrap())],
    )
    .unwrap();
    let (h, stop) = start_engine(&cfg).await;
    let targets = loadgen::high_watermarks(&feed.bootstrap, &cfg.topics.eligibility).unwrap();
    loadgen::wait_for_feed(h.admin_addr, &targets, Duration::from_secs(60))
        .await
        .unwrap();
    let c = reader(&cfg.topics.decisions);

    let d =
        tokio::task::block_in_place(|| decide_one(&cfg, &c, &us, "sl-1", loadgen::TAGGED_MODEL));
    assert_eq!(d.outcome, Outcome::Allow, "fresh: {:?}", d.reasons);

    // Outage: the feed's broker goes away for longer than the bound.
    tokio::task::block_in_place(|| feed.stop());
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine_status(&h).await["feed"]["stale"] != true {
        assert!(Instant::now() < deadline, "data never became stale");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d =
        tokio::task::block_in_place(|| decide_one(&cfg, &c, &us, "sl-2", loadgen::TAGGED_MODEL));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(
        d.reasons.first().map(String::as_str),
        Some("stale_data"),
        "{:?}",
        d.reasons
    );
    let d =
        tokio::task::block_in_place(|| decide_one(&cfg, &c, &us, "sl-3", loadgen::UNTAGGED_MODEL));
    assert_eq!(
        d.outcome,
        Outcome::Allow,
        "untagged models keep working: {:?}",
        d.reasons
    );

    // Recovery, without touching the engine.
    tokio::task::block_in_place(|| feed.start());
    let deadline = Instant::now() + Duration::from_secs(90);
    while engine_status(&h).await["feed"]["stale"] != false {
        assert!(Instant::now() < deadline, "data never became fresh again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d =
        tokio::task::block_in_place(|| decide_one(&cfg, &c, &us, "sl-4", loadgen::TAGGED_MODEL));
    assert_eq!(d.outcome, Outcome::Allow, "recovered: {:?}", d.reasons);
    stop_engine(h, stop).await;
}

/// The broker stopped and restarted during a load: every request still
/// gets a decision (at-least-once), with no engine restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_during_load_loses_nothing() {
    let broker = PrivateBroker::up();
    let mut cfg = test_config("brokerrestart");
    cfg.kafka.bootstrap_servers = broker.bootstrap.clone();
    create_topics(&cfg).await;
    let subjects: Vec<_> = (0..100).map(|i| loadgen::subject("br", i)).collect();
    let p = clearance::loadgen::data_producer(&broker.bootstrap).unwrap();
    let recs: Vec<_> = subjects
        .iter()
        .filter_map(|s| s.record.clone().map(EligibilityRecord::User))
        .collect();
    clearance::loadgen::publish_eligibility(&p, &cfg.topics.eligibility, &recs).unwrap();
    let (h, stop) = start_engine(&cfg).await;
    let targets = loadgen::high_watermarks(&broker.bootstrap, &cfg.topics.eligibility).unwrap();
    loadgen::wait_for_feed(h.admin_addr, &targets, Duration::from_secs(60))
        .await
        .unwrap();

    const N: usize = 20_000;
    let batch = |range| request_batch(&subjects, "br", range);
    for (k, v) in batch(0..N / 2) {
        clearance::loadgen::send_blocking(&p, &cfg.topics.requests, &k, Some(&v)).unwrap();
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // mid-load
    tokio::task::block_in_place(|| broker.stop());
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| broker.start());
    for (k, v) in batch(N / 2..N) {
        clearance::loadgen::send_blocking(&p, &cfg.topics.requests, &k, Some(&v)).unwrap();
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(60)).unwrap();

    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for part in 0..cfg.topics.partitions {
        tpl.add_partition_offset(&cfg.topics.decisions, part, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while seen.len() < N && Instant::now() < deadline {
        let reads = tokio::task::block_in_place(|| {
            read_until(&c, Duration::from_secs(2), |r| r.len() >= 5_000)
        });
        for d in decisions(&reads) {
            total += 1;
            seen.insert(d.request_id);
        }
    }
    let missing: Vec<usize> = (0..N)
        .filter(|i| !seen.contains(&format!("br-{i}")))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "requests without a decision: {missing:?}"
    );
    eprintln!("broker restart: {N} requests, {total} decisions");
    stop_engine(h, stop).await;
}

/// Warm restart: the engine snapshots its eligibility cache, a restarted
/// engine loads it and catches up from the snapshot's positions (it does
/// not replay the feed), and a corrupted snapshot is rejected in favour of
/// a full bootstrap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_restart_from_snapshot_and_corruption_fallback() {
    let mut cfg = test_config("snapshot");
    let dir = std::env::temp_dir().join(unique("clearance-snap"));
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("eligibility.snap");
    cfg.engine.snapshot_path = Some(snap.clone());
    create_topics(&cfg).await;
    let subjects: Vec<_> = (0..1_000).map(|i| loadgen::subject("sn", i)).collect();
    let p = producer();
    seed(&p, &cfg, &subjects);

    // Cold start: replays the feed, writes the snapshot on shutdown.
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    assert_eq!(engine_status(&h).await["snapshot"]["status"], "absent");
    stop_engine(h, stop).await;
    assert!(snap.exists(), "snapshot written on shutdown");

    // While it is down: a revocation for one subject.
    let mut rec = subjects[0].record.clone().unwrap();
    rec.version = 2;
    rec.revocation = Some(clearance::event::Revocation {
        revoked_at: time::OffsetDateTime::now_utc(),
        reason: None,
    });
    publish_records(&p, &cfg, &[EligibilityRecord::User(rec)]);

    // Warm start: loads 900 records, applies only the one new record.
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let s = engine_status(&h).await;
    assert_eq!(s["snapshot"]["status"], "loaded", "{s}");
    assert_eq!(s["snapshot"]["records"], 900);
    assert_eq!(
        s["feed"]["applied"], 1,
        "caught up from the snapshot's positions: {s}"
    );
    assert_eq!(s["eligibility"]["users"], 900);
    let c = reader(&cfg.topics.decisions);
    let d = tokio::task::block_in_place(|| {
        decide_one(&cfg, &c, &subjects[0], "sn-revoked", loadgen::TAGGED_MODEL)
    });
    assert_eq!(d.reasons, vec!["subject_revoked".to_string()]);
    stop_engine(h, stop).await;

    // Corrupted: rejected, full bootstrap, same data.
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&snap, &bytes).unwrap();
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let s = engine_status(&h).await;
    assert_eq!(s["snapshot"]["status"], "rejected", "{s}");
    assert!(
        s["snapshot"]["reason"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{s}"
    );
    assert_eq!(s["feed"]["applied"], 901, "full replay: {s}");
    assert_eq!(s["eligibility"]["users"], 900);
    stop_engine(h, stop).await;
    let _ = std::fs::remove_dir_all(&dir);
}
