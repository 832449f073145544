//! Request/reply (Spring's `ReplyingKafkaTemplate` headers) against the
//! real broker, in both delivery modes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clearance::config::{Config, DeliveryMode};
use clearance::event::Decision;
use clearance::loadgen::{self, DataProducer, Subject};
use clearance::pipeline::reply::{
    CORRELATION_ID_HEADER, REPLY_PARTITION_HEADER, REPLY_TOPIC_HEADER,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use crate::client::create_topic;
use crate::harness::*;

/// How a request asks for its reply.
#[derive(Clone, Copy)]
enum Ask<'a> {
    None,
    Topic(&'a str),
    Partition(&'a str, i32),
}

/// Send requests `prefix-i`, each with the reply headers `ask(i)` and the
/// correlation id `c-i`, and confirm their delivery.
fn send(
    p: &DataProducer,
    cfg: &Config,
    subjects: &[Subject],
    prefix: &str,
    range: std::ops::Range<usize>,
    ask: impl Fn(usize) -> Ask<'static>,
) {
    for (i, (k, v)) in range.clone().zip(request_batch(subjects, prefix, range)) {
        let corr = format!("c-{i}");
        let part;
        let mut h = OwnedHeaders::new();
        match ask(i) {
            Ask::None => {}
            Ask::Topic(t) => {
                h = h.insert(Header {
                    key: REPLY_TOPIC_HEADER,
                    value: Some(t.as_bytes()),
                })
            }
            Ask::Partition(t, n) => {
                part = n.to_be_bytes();
                h = h
                    .insert(Header {
                        key: REPLY_TOPIC_HEADER,
                        value: Some(t.as_bytes()),
                    })
                    .insert(Header {
                        key: REPLY_PARTITION_HEADER,
                        value: Some(&part[..]),
                    });
            }
        }
        if !matches!(ask(i), Ask::None) {
            h = h.insert(Header {
                key: CORRELATION_ID_HEADER,
                value: Some(corr.as_bytes()),
            });
        }
        let mut rec = BaseRecord::to(&cfg.topics.requests)
            .key(&k[..])
            .payload(&v[..])
            .headers(h);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    loadgen::confirm_delivery(p).expect("requests delivered");
}

/// A reply read back.
struct Reply {
    partition: i32,
    key: Vec<u8>,
    correlation: Option<Vec<u8>>,
    payload: Vec<u8>,
}

fn read_replies(c: &BaseConsumer, n: usize, timeout: Duration) -> Vec<Reply> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let correlation = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == CORRELATION_ID_HEADER)
                    .and_then(|h| h.value.map(<[u8]>::to_vec))
            });
            out.push(Reply {
                partition: m.partition(),
                key: m.key().unwrap_or_default().to_vec(),
                correlation,
                payload: m.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    out
}

fn subjects(tag: &str) -> Vec<Subject> {
    (0..50).map(|i| loadgen::subject(tag, i)).collect()
}

/// Replies go to the reply partition named (or by key), carry the
/// correlation id, and are the very decision record of `access.decisions`;
/// requests without the headers get no reply. Exactly-once: the replies are
/// written in the engine's transactions (the reply partition holds their
/// commit markers) and read by a `read_committed` reader.
async fn replies_in(mode: DeliveryMode, tag: &str) {
    let mut cfg = test_config(tag);
    cfg.engine.delivery = mode;
    cfg.engine.transaction_max_ms = 50;
    create_topics(&cfg).await;
    let reply_topic: &'static str = Box::leak(unique(&format!("{tag}-replies")).into_boxed_str());
    create_topic(reply_topic, 3).await;
    let subjects = subjects(tag);
    let p = producer();
    seed(&p, &cfg, &subjects);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    // 0..100: partition 2; 100..200: by key; 200..300: no headers.
    let ask = move |i: usize| match i {
        0..=99 => Ask::Partition(reply_topic, 2),
        100..=199 => Ask::Topic(reply_topic),
        _ => Ask::None,
    };
    send(&p, &cfg, &subjects, tag, 0..300, ask);
    let decisions = first_by_request(&decisions(&read_until(
        &committed_reader(&cfg.topics.decisions),
        Duration::from_secs(60),
        |r| r.len() >= 300,
    )));
    assert_eq!(decisions.len(), 300, "every request decided");
    let replies = read_replies(&committed_reader(reply_topic), 200, Duration::from_secs(30));
    // Nothing more: requests without headers get no reply.
    let more = read_replies(&committed_reader(reply_topic), 201, Duration::from_secs(2));
    assert_eq!(replies.len(), 200, "one reply per request that asked");
    assert_eq!(more.len(), 200, "no reply without the headers");

    let mut by_id: BTreeMap<String, &Reply> = BTreeMap::new();
    for r in &replies {
        let d: Decision = serde_json::from_slice(&r.payload).expect("reply is a decision");
        assert_eq!(r.key, d.request_id.as_bytes(), "keyed by request id");
        assert!(
            by_id.insert(d.request_id.clone(), r).is_none(),
            "one reply each"
        );
        let i: usize = d.request_id.rsplit('-').next().unwrap().parse().unwrap();
        assert!(i < 200, "{}: replied without headers", d.request_id);
        assert_eq!(
            r.correlation.as_deref(),
            Some(format!("c-{i}").as_bytes()),
            "{}: correlation id copied",
            d.request_id
        );
        if i < 100 {
            assert_eq!(r.partition, 2, "{}: the partition asked for", d.request_id);
        }
        let logged = &decisions[&d.request_id];
        assert_eq!(
            &d, logged,
            "the reply is the decision on the decisions topic"
        );
        let s = &subjects[i % subjects.len()];
        assert_eq!(d.outcome, s.category.expected(loadgen::model_for(i)));
    }
    let by_key: Vec<i32> = replies
        .iter()
        .filter(|r| {
            let d: Decision = serde_json::from_slice(&r.payload).unwrap();
            d.request_id
                .rsplit('-')
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
                >= 100
        })
        .map(|r| r.partition)
        .collect();
    assert!(
        by_key.iter().any(|p| *p != 2),
        "without a partition header, replies are spread by key"
    );
    if mode == DeliveryMode::ExactlyOnce {
        let c = reader(reply_topic);
        let (_, high) = c
            .fetch_watermarks(reply_topic, 2, Duration::from_secs(10))
            .expect("watermarks");
        let on_2 = replies.iter().filter(|r| r.partition == 2).count() as i64;
        assert!(
            high > on_2,
            "transactional replies leave commit markers: high watermark {high}, {on_2} replies"
        );
        // The commits are timed and counted (the recorder is shared by the
        // tests of this process: at least this test's own).
        let (_, text) = clearance::admin::get(h.admin_addr, "/metrics")
            .await
            .expect("GET /metrics");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        };
        assert!(value("clearance_transaction_commit_seconds_count") >= 1.0);
        assert!(value("clearance_transaction_requests_sum") >= 300.0);
    }
    stop_engine(h, stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_at_least_once() {
    replies_in(DeliveryMode::AtLeastOnce, "reply-alo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_exactly_once_inside_the_transaction() {
    replies_in(DeliveryMode::ExactlyOnce, "reply-eos").await;
}

/// At-least-once, replies have a producer of their own: with the decision
/// log's linger at ten minutes, every reply still comes back at once, while
/// no decision has reached `access.decisions`; shutdown then flushes the
/// log, and every decision is there. (With one producer for both, the
/// replies would wait the ten minutes too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_do_not_wait_for_the_decision_log() {
    let tag = "reply-alone";
    let mut cfg = test_config(tag);
    cfg.engine.producer_linger_ms = 600_000;
    create_topics(&cfg).await;
    let reply_topic: &'static str = Box::leak(unique(&format!("{tag}-replies")).into_boxed_str());
    create_topic(reply_topic, 1).await;
    let subjects = subjects(tag);
    let p = producer();
    seed(&p, &cfg, &subjects);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    send(&p, &cfg, &subjects, tag, 0..50, |_| {
        Ask::Partition(reply_topic, 0)
    });
    let replies = read_replies(&committed_reader(reply_topic), 50, Duration::from_secs(30));
    assert_eq!(
        replies.len(),
        50,
        "every reply, with the decision log held back"
    );
    let early = read_until(
        &committed_reader(&cfg.topics.decisions),
        Duration::from_secs(2),
        |r| !r.is_empty(),
    );
    assert!(
        early.is_empty(),
        "the decision log was held back, yet {} decisions were on it",
        early.len()
    );
    stop_engine(h, stop).await;
    let logged = first_by_request(&decisions(&read_until(
        &committed_reader(&cfg.topics.decisions),
        Duration::from_secs(30),
        |r| r.len() >= 50,
    )));
    assert_eq!(logged.len(), 50, "shutdown flushed the decision log");
    for r in &replies {
        let d: Decision = serde_json::from_slice(&r.payload).expect("reply is a decision");
        assert_eq!(
            Some(&d),
            logged.get(&d.request_id),
            "the reply is the logged decision"
        );
    }
}

/// Time for the engine to decide the requests `range` (all sent at once).
async fn drain_time(
    p: &DataProducer,
    cfg: &Config,
    subjects: &[Subject],
    prefix: &str,
    n: usize,
    ask: impl Fn(usize) -> Ask<'static>,
) -> Duration {
    let c = clearance::loadgen::decision_reader(&bootstrap(), &cfg.topics.decisions)
        .expect("decision reader");
    let started = Instant::now();
    send(p, cfg, subjects, prefix, 0..n, ask);
    let got = read_until(&c, Duration::from_secs(120), |r| r.len() >= n);
    assert_eq!(got.len(), n, "{prefix}: every request decided");
    started.elapsed()
}

/// A reply topic that does not exist, a partition it lacks, and a header
/// that cannot be read neither stop nor slow the pipeline: every decision
/// still reaches the decisions topic at the rate of requests without
/// headers, and each skipped reply is counted.
async fn missing_reply_topic_in(mode: DeliveryMode, tag: &str) {
    let mut cfg = test_config(tag);
    cfg.engine.delivery = mode;
    cfg.engine.transaction_max_ms = 50;
    create_topics(&cfg).await;
    let small: &'static str = Box::leak(unique(&format!("{tag}-small")).into_boxed_str());
    create_topic(small, 1).await;
    let missing: &'static str = Box::leak(unique(&format!("{tag}-missing")).into_boxed_str());
    let subjects = subjects(tag);
    let p = producer();
    seed(&p, &cfg, &subjects);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let failures_before = reply_failures(&h).await;

    let n = 3000;
    let warm = drain_time(&p, &cfg, &subjects, &format!("{tag}-warm"), n, |_| {
        Ask::None
    })
    .await;
    let plain = drain_time(&p, &cfg, &subjects, &format!("{tag}-plain"), n, |_| {
        Ask::None
    })
    .await;
    let bad = drain_time(
        &p,
        &cfg,
        &subjects,
        &format!("{tag}-bad"),
        n,
        move |i| match i % 3 {
            0 => Ask::Topic(missing),
            1 => Ask::Partition(small, 5),
            _ => Ask::Topic("not a topic!"),
        },
    )
    .await;
    eprintln!("{tag}: {n} requests: warm-up {warm:?}, without headers {plain:?}, with unusable reply headers {bad:?}");
    // A reply that waited for its topic would hold its request back for
    // the producer's metadata propagation time (30 s), and exactly-once
    // transactions would wait for it: a generous bound still tells.
    assert!(
        bad < plain * 3 + Duration::from_secs(2),
        "unusable reply headers slowed the pipeline: {bad:?} against {plain:?}"
    );
    let failures = reply_failures(&h).await - failures_before;
    assert!(
        failures >= n as f64,
        "every skipped reply is counted: {failures} of {n}"
    );
    // The engine is still deciding.
    let after = drain_time(&p, &cfg, &subjects, &format!("{tag}-after"), 100, |_| {
        Ask::None
    })
    .await;
    assert!(after < Duration::from_secs(30));
    let status = engine_status(&h).await;
    assert_eq!(status["ready"], true, "{status}");
    stop_engine(h, stop).await;
}

/// The sum of `clearance_reply_failures_total` over its reasons.
async fn reply_failures(h: &clearance::engine::EngineHandle) -> f64 {
    let (_, body) = clearance::admin::get(h.admin_addr, "/metrics")
        .await
        .expect("GET /metrics");
    body.lines()
        .filter(|l| l.starts_with("clearance_reply_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_reply_topic_neither_stops_nor_slows_at_least_once() {
    missing_reply_topic_in(DeliveryMode::AtLeastOnce, "reply-miss-alo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_reply_topic_neither_stops_nor_slows_exactly_once() {
    missing_reply_topic_in(DeliveryMode::ExactlyOnce, "reply-miss-eos").await;
}
