//! The request/reply client (`clearance::client`) against the real broker:
//! the fail-closed timeout deny and its time bound, no pending entry left
//! behind, the in-flight bound (against a no-work echo service that
//! answers by the reply headers), and round trips through an in-process
//! engine.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clearance::client::{
    Client, ClientOptions, CORRELATION_ID_HEADER, REPLY_PARTITION_HEADER, REPLY_TOPIC_HEADER,
};
use clearance::config::Config;
use clearance::event::Outcome;
use clearance::loadgen;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::harness::*;

/// Create `topic` with `partitions` partitions.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topic");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
}

/// The client options of a test: `cfg`'s brokers and requests topic,
/// replies on `reply_topic`.
pub fn client_options(cfg: &Config, reply_topic: &str, partition: Option<i32>) -> ClientOptions {
    ClientOptions {
        kafka: cfg.kafka.clone(),
        requests_topic: cfg.topics.requests.clone(),
        reply_topic: reply_topic.to_string(),
        reply_partition: partition,
        ..ClientOptions::default()
    }
}

/// A client, made off the async threads (`new` blocks on metadata).
pub async fn client(opts: ClientOptions) -> Client {
    tokio::task::spawn_blocking(move || Client::new(opts))
        .await
        .unwrap()
        .expect("client")
}

/// Topics (requests and the rest) plus a reply topic of `reply_partitions`.
async fn topics(name: &str, reply_partitions: i32) -> (Config, String) {
    let cfg = test_config(name);
    create_topics(&cfg).await;
    let reply = format!("{}.replies", cfg.topics.requests);
    create_topic(&reply, reply_partitions).await;
    (cfg, reply)
}

fn is_timeout_deny(d: &clearance::event::Decision, request_id: &str) -> bool {
    d.outcome == Outcome::Deny
        && d.reasons == ["timeout"]
        && d.request_id == request_id
        && d.engine_instance == "client"
        && d.inputs
            .as_ref()
            .is_some_and(|i| i.request.request_id == request_id)
}

/// The acceptance line: with nobody consuming the requests, a
/// call with a 200 ms timeout returns the `timeout` deny within 250 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_engine_a_call_is_denied_for_timeout_within_its_bound() {
    let (cfg, reply) = topics("client-timeout", 2).await;
    let c = client(client_options(&cfg, &reply, Some(1))).await;
    let s = loadgen::subject("ct", 0);
    let timeout = Duration::from_millis(200);
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let req = loadgen::request(&s, format!("ct-{i}"), loadgen::TAGGED_MODEL);
        let t = Instant::now();
        let d = c.decide(&req, timeout).await.expect("a decision");
        let took = t.elapsed();
        worst = worst.max(took);
        assert!(is_timeout_deny(&d, &req.request_id), "{d:?}");
        assert!(took >= timeout, "not before the timeout: {took:?}");
    }
    assert_eq!(c.pending(), 0);
    eprintln!("timeout 200 ms: worst of 5 calls returned after {worst:?}");
    assert!(
        worst <= timeout + Duration::from_millis(50),
        "the timeout deny came {worst:?} after the call (bound: timeout + 50 ms)"
    );
    c.close();
}

/// 10,000 concurrent calls that all time out: every one is a `timeout`
/// deny of its own request, and the pending map is empty afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_timed_out_calls_leave_nothing_pending() {
    let (cfg, reply) = topics("client-10k", 1).await;
    let c = client(client_options(&cfg, &reply, Some(0))).await;
    let s = loadgen::subject("ck", 1);
    let n = 10_000;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = c.clone();
        let req = loadgen::request(&s, format!("ck-{i}"), loadgen::UNTAGGED_MODEL);
        set.spawn(async move {
            let d = c.decide(&req, Duration::from_millis(300)).await;
            (req.request_id, d)
        });
    }
    let mut denied = 0;
    while let Some(r) = set.join_next().await {
        let (id, d) = r.expect("task");
        let d = d.expect("a decision, not an error");
        assert!(is_timeout_deny(&d, &id), "{id}: {d:?}");
        denied += 1;
    }
    let took = started.elapsed();
    assert_eq!(denied, n);
    assert_eq!(c.pending(), 0, "no pending entry left behind");
    eprintln!("{n} concurrent calls timed out (300 ms) in {took:?}");
    c.close();
}

/// Dropping a call's future (cancellation) removes its pending entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_leaves_nothing_pending() {
    let (cfg, reply) = topics("client-cancel", 1).await;
    let c = client(client_options(&cfg, &reply, Some(0))).await;
    let s = loadgen::subject("cc", 0);
    let req = loadgen::request(&s, "cc-0".into(), loadgen::TAGGED_MODEL);
    let call = c.decide(&req, Duration::from_secs(30));
    let cancelled = tokio::time::timeout(Duration::from_millis(300), call).await;
    assert!(cancelled.is_err(), "the call was still waiting");
    assert_eq!(c.pending(), 0, "the dropped call's entry is gone");
    c.close();
}

/// A no-work echo service: reads the requests topic and answers each
/// record by its reply headers (the value echoed, the correlation id
/// copied, to `kafka_replyPartition` when given), until dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Requests answered so far.
    pub answered: Arc<AtomicUsize>,
}

impl Echo {
    /// Start it on `requests` (every partition, from the beginning).
    pub fn start(requests: &str) -> Echo {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("echo"))
            .set("enable.auto.commit", "false")
            .set("socket.nagle.disable", "true")
            .create()
            .expect("echo consumer");
        let md = consumer
            .fetch_metadata(Some(requests), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(requests, p.id(), Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&tpl).expect("assign");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("linger.ms", "0")
            .set("socket.nagle.disable", "true")
            .create()
            .expect("echo producer");
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    producer.poll(Duration::ZERO);
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
                        continue;
                    };
                    let h = m.headers().expect("reply headers");
                    let get = |k: &str| h.iter().find(|x| x.key == k).and_then(|x| x.value);
                    let topic = std::str::from_utf8(get(REPLY_TOPIC_HEADER).expect("reply topic"))
                        .unwrap()
                        .to_string();
                    let corr = get(CORRELATION_ID_HEADER).expect("correlation id");
                    let mut rec = BaseRecord::to(&topic)
                        .key(m.key().unwrap_or_default())
                        .payload(m.payload().unwrap_or_default())
                        .headers(OwnedHeaders::new().insert(Header {
                            key: CORRELATION_ID_HEADER,
                            value: Some(corr),
                        }));
                    if let Some(p) = get(REPLY_PARTITION_HEADER) {
                        rec = rec.partition(i32::from_be_bytes(p.try_into().expect("4 bytes")));
                    }
                    producer.send(rec).map_err(|(e, _)| e).expect("echo send");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                let _ = producer.flush(Duration::from_secs(5));
            })
        };
        Echo {
            stop,
            thread: Some(thread),
            answered,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// max_in_flight 4: while 50 calls race through an echo service, the
/// pending map never holds more than 4; every call gets its own payload
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_the_calls_in_flight() {
    let (cfg, reply) = topics("client-inflight", 2).await;
    let _echo = Echo::start(&cfg.topics.requests);
    let c = client(ClientOptions {
        max_in_flight: 4,
        ..client_options(&cfg, &reply, None)
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(c.pending());
                tokio::task::yield_now().await;
            }
            max
        })
    };
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let c = c.clone();
        set.spawn(async move {
            let body = format!("payload-{i}");
            let got = c
                .call_raw(
                    format!("k{i}").as_bytes(),
                    body.as_bytes(),
                    Duration::from_secs(30),
                )
                .await
                .expect("no error");
            (body, got)
        });
    }
    while let Some(r) = set.join_next().await {
        let (body, got) = r.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(body.as_bytes()),
            "each call got its own reply"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let max = sampler.await.unwrap();
    eprintln!("max_in_flight 4: at most {max} pending");
    assert!(max <= 4, "{max} calls pending at once with max_in_flight 4");
    assert!(max >= 1, "the sampler saw the calls");
    assert_eq!(c.pending(), 0);
    c.close();
}

/// Round-trip latency through the echo service (no engine work): the
/// floor of a call's latency on this broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_are_fast_and_matched() {
    let (cfg, reply) = topics("client-echo", 1).await;
    let echo = Echo::start(&cfg.topics.requests);
    let c = client(client_options(&cfg, &reply, Some(0))).await;
    // The first call waits for the idempotent producer's id: on a broker
    // just started, its transaction coordinator answers "load in progress"
    // once and librdkafka asks again 500 ms later. Not measured.
    let warm = c
        .call_raw(b"k", b"warm-up", Duration::from_secs(10))
        .await
        .expect("no error");
    assert_eq!(warm.as_deref(), Some(&b"warm-up"[..]));
    let mut lat = Vec::new();
    for i in 0..200 {
        let body = format!("e{i}");
        let t = Instant::now();
        let got = c
            .call_raw(b"k", body.as_bytes(), Duration::from_secs(10))
            .await
            .expect("no error");
        lat.push(t.elapsed());
        assert_eq!(got.as_deref(), Some(body.as_bytes()));
    }
    lat.sort();
    let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
    eprintln!(
        "echo round trip, 200 sequential calls: p50 {p50:?}, p99 {p99:?}, max {:?}",
        lat[lat.len() - 1]
    );
    assert!(p50 < Duration::from_millis(100), "p50 {p50:?}");
    assert_eq!(echo.answered.load(Ordering::Relaxed), 201);
    c.close();
}

/// Seeded subjects of every category, an in-process engine on `cfg`, ready
/// and with its request partitions assigned.
async fn engine_with_subjects(
    cfg: &Config,
    prefix: &str,
    n: usize,
) -> (
    clearance::engine::EngineHandle,
    StopGuard,
    Vec<loadgen::Subject>,
) {
    let subjects: Vec<_> = (0..n).map(|i| loadgen::subject(prefix, i)).collect();
    seed(&producer(), cfg, &subjects);
    let (h, stop) = start_engine(cfg).await;
    wait_feed_applied(&h, cfg).await;
    loadgen::wait_for_assignment(h.admin_addr, Duration::from_secs(120))
        .await
        .expect("request partitions assigned");
    (h, stop, subjects)
}

/// Every category on every model, through an in-process engine: each
/// decision comes back to the client (replies partitioned by key: no
/// reply partition) with the request's id and the expected outcome and
/// first reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_come_back_through_the_engine() {
    let (cfg, reply) = topics("client-engine", 3).await;
    let (h, stop, subjects) = engine_with_subjects(&cfg, "ce", 10).await;
    let c = client(client_options(&cfg, &reply, None)).await;
    let models = [
        loadgen::TAGGED_MODEL,
        loadgen::UNTAGGED_MODEL,
        loadgen::UNKNOWN_MODEL,
    ];
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (i, s) in subjects.iter().enumerate() {
        for m in models {
            let (c, s) = (c.clone(), s.clone());
            set.spawn(async move {
                let req = loadgen::request(&s, format!("ce-{i}-{m}"), m);
                let d = c.decide(&req, Duration::from_secs(20)).await;
                (s, m, req, d)
            });
        }
    }
    let mut n = 0;
    while let Some(r) = set.join_next().await {
        let (s, m, req, d) = r.unwrap();
        let d = d.expect("a decision");
        assert_ne!(
            d.reasons,
            ["timeout"],
            "{}: no decision in time",
            req.request_id
        );
        assert_eq!(d.request_id, req.request_id);
        assert_eq!(
            d.outcome,
            s.category.expected(m),
            "{:?} on {m}: {d:?}",
            s.category
        );
        assert_eq!(
            d.reasons.first().map(String::as_str),
            Some(s.category.expected_reason(m)),
            "{:?} on {m}",
            s.category
        );
        assert_eq!(d.engine_instance, cfg.engine.instance_id);
        assert_eq!(d.inputs.as_ref().map(|i| &i.request), Some(&req));
        n += 1;
    }
    assert_eq!(n, 30);
    assert_eq!(c.pending(), 0);
    eprintln!(
        "30 concurrent decisions through the engine in {:?}",
        started.elapsed()
    );
    // Sequential calls: the round trip through the engine.
    let mut lat = Vec::new();
    for i in 0..50 {
        let s = &subjects[i % subjects.len()];
        let req = loadgen::request(s, format!("ce-seq-{i}"), loadgen::TAGGED_MODEL);
        let t = Instant::now();
        let d = c
            .decide(&req, Duration::from_secs(10))
            .await
            .expect("decision");
        lat.push(t.elapsed());
        assert_eq!(d.outcome, s.category.expected(loadgen::TAGGED_MODEL));
    }
    lat.sort();
    eprintln!(
        "decide() through the engine, 50 sequential calls: p50 {:?}, p90 {:?}, max {:?}",
        lat[25], lat[45], lat[49]
    );
    c.close();
    stop_engine(h, stop).await;
}

/// Three clients, each on its own partition of one reply topic, calling at
/// once: every call gets its own decision, and each partition holds only
/// the replies of its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_for_clients_on_different_partitions_do_not_cross() {
    let (cfg, reply) = topics("client-cross", 3).await;
    let (h, stop, subjects) = engine_with_subjects(&cfg, "cx", 10).await;
    let mut clients = Vec::new();
    for p in 0..3 {
        clients.push(client(client_options(&cfg, &reply, Some(p))).await);
    }
    let per_client = 40;
    let mut set = tokio::task::JoinSet::new();
    for (p, c) in clients.iter().enumerate() {
        for i in 0..per_client {
            let c = c.clone();
            let s = subjects[i % subjects.len()].clone();
            set.spawn(async move {
                let m = loadgen::model_for(i * 7);
                let req = loadgen::request(&s, format!("cx{p}-{i}"), m);
                let d = c.decide(&req, Duration::from_secs(20)).await;
                (s, m, req, d)
            });
        }
    }
    while let Some(r) = set.join_next().await {
        let (s, m, req, d) = r.unwrap();
        let d = d.expect("a decision of this very request");
        assert_ne!(
            d.reasons,
            ["timeout"],
            "{}: no decision in time",
            req.request_id
        );
        assert_eq!(d.request_id, req.request_id);
        assert_eq!(d.outcome, s.category.expected(m));
    }
    for c in &clients {
        assert_eq!(c.pending(), 0);
    }
    // On the topic: partition p holds the replies of client p only.
    let r = reader(&reply);
    let reads = tokio::task::block_in_place(|| {
        read_until(&r, Duration::from_secs(30), |rs| rs.len() >= 3 * per_client)
    });
    assert_eq!(reads.len(), 3 * per_client, "one reply per call");
    for rd in &reads {
        let key = String::from_utf8(rd.key.clone().expect("keyed")).unwrap();
        assert!(
            key.starts_with(&format!("cx{}-", rd.partition)),
            "reply {key} on partition {}",
            rd.partition
        );
    }
    for c in clients {
        c.close();
    }
    stop_engine(h, stop).await;
}
