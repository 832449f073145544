//! The load generator: synthetic eligibility data, requests at a fixed rate
//! or as fast as possible, and the decisions read back, with throughput and
//! latency percentiles (HdrHistogram).
//!
//! The synthetic population is a mix of U.S. persons, foreign nationals of
//! several countries and unknown subjects. Each [`Category`] carries its
//! expected outcome, written by hand from the example directive (not
//! computed by the engine), so tests can check every decision.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use time::OffsetDateTime;

use crate::config::KafkaConfig;
use crate::event::{
    AccessRequest, Citizenship, Decision, EligibilityRecord, Geolocation, Outcome,
    PermanentResidency, ResidencyStatus, UsPersonStatus, UserRecord, Verification,
    VerificationStatus,
};

/// A model tagged by the example directive (`order-2026-11`).
pub const TAGGED_MODEL: &str = "fable-5";
/// A model the example policy knows and leaves open.
pub const UNTAGGED_MODEL: &str = "haiku-4";
/// A model no policy knows.
pub const UNKNOWN_MODEL: &str = "no-such-model-9";

/// Kinds of synthetic subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// U.S. citizen in the U.S.
    UsCitizen,
    /// Chinese national on an H-1B visa, in the U.S.
    ChineseH1b,
    /// Chinese national with a green card.
    ChineseGreenCard,
    /// Chinese national whose green card is pending.
    ChinesePendingGreenCard,
    /// Macau national.
    MacauNational,
    /// Russian national.
    RussianNational,
    /// British national (not restricted).
    BritishNational,
    /// Indian national (not restricted).
    IndianNational,
    /// U.S. citizen whose request geolocates to Iran.
    UsCitizenInIran,
    /// No eligibility record at all.
    Unknown,
}

impl Category {
    /// Every category, in the order subjects are assigned to them.
    pub const ALL: [Category; 10] = [
        Category::UsCitizen,
        Category::ChineseH1b,
        Category::ChineseGreenCard,
        Category::ChinesePendingGreenCard,
        Category::MacauNational,
        Category::RussianNational,
        Category::BritishNational,
        Category::IndianNational,
        Category::UsCitizenInIran,
        Category::Unknown,
    ];

    /// The expected outcome under the example directive (SCENARIOS.md).
    pub fn expected(self, model: &str) -> Outcome {
        use Category::*;
        if model == UNKNOWN_MODEL {
            return Outcome::Deny; // scenario 12
        }
        let tagged = model == TAGGED_MODEL;
        match self {
            UsCitizenInIran => Outcome::Deny, // scenario 7: any model
            UsCitizen | ChineseGreenCard | BritishNational | IndianNational => Outcome::Allow, // 1, 4
            ChineseH1b | ChinesePendingGreenCard | MacauNational | RussianNational | Unknown => {
                // 2, 5, 9, 11 on a tagged model; 3 and 11 on an untagged one
                if tagged {
                    Outcome::Deny
                } else {
                    Outcome::Allow
                }
            }
        }
    }

    /// The reason the decision must carry first, under the example policy.
    pub fn expected_reason(self, model: &str) -> &'static str {
        use Category::*;
        if model == UNKNOWN_MODEL {
            return "unknown_model";
        }
        let tagged = model == TAGGED_MODEL;
        match self {
            UsCitizenInIran => "sanctioned_location",
            _ if !tagged => "unrestricted_model",
            UsCitizen | ChineseGreenCard => "us_person",
            BritishNational | IndianNational => "nationality_not_restricted",
            ChineseH1b | ChinesePendingGreenCard | MacauNational | RussianNational => {
                "restricted_nationality"
            }
            Unknown => "unknown_subject",
        }
    }
}

/// A synthetic subject.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Subject id.
    pub id: String,
    /// Its category.
    pub category: Category,
    /// Its eligibility record (none for [`Category::Unknown`]).
    pub record: Option<UserRecord>,
}

fn date(y: i32) -> Option<String> {
    Some(format!("{y}-01-01"))
}

/// Build subject `i` of a population whose ids start with `prefix`.
pub fn subject(prefix: &str, i: usize) -> Subject {
    let category = Category::ALL[i % Category::ALL.len()];
    let id = format!("{prefix}u{i}");
    let cit = |c: &str, y| Citizenship {
        country: c.into(),
        acquired_on: date(y),
    };
    let (status, citizenships, residencies) = match category {
        Category::UsCitizen | Category::UsCitizenInIran => {
            (UsPersonStatus::Citizen, vec![cit("US", 1990)], vec![])
        }
        Category::ChineseH1b => (UsPersonStatus::ForeignPerson, vec![cit("CN", 1990)], vec![]),
        Category::ChineseGreenCard => (
            UsPersonStatus::LawfulPermanentResident,
            vec![cit("CN", 1990)],
            vec![PermanentResidency {
                country: "US".into(),
                status: ResidencyStatus::Granted,
                acquired_on: date(2020),
            }],
        ),
        Category::ChinesePendingGreenCard => (
            UsPersonStatus::ForeignPerson,
            vec![cit("CN", 1990)],
            vec![PermanentResidency {
                country: "US".into(),
                status: ResidencyStatus::Pending,
                acquired_on: None,
            }],
        ),
        Category::MacauNational => (UsPersonStatus::ForeignPerson, vec![cit("MO", 1990)], vec![]),
        Category::RussianNational => (UsPersonStatus::ForeignPerson, vec![cit("RU", 1990)], vec![]),
        Category::BritishNational => (UsPersonStatus::ForeignPerson, vec![cit("GB", 1990)], vec![]),
        Category::IndianNational => (UsPersonStatus::ForeignPerson, vec![cit("IN", 1990)], vec![]),
        Category::Unknown => {
            return Subject {
                id,
                category,
                record: None,
            }
        }
    };
    let record = UserRecord {
        id: id.clone(),
        version: 1,
        updated_at: Some(OffsetDateTime::now_utc()),
        us_person_status: status,
        citizenships,
        permanent_residencies: residencies,
        organization_id: None,
        relationship: None,
        verification: Some(Verification {
            status: VerificationStatus::Verified,
            verified_at: Some(OffsetDateTime::now_utc() - time::Duration::days(30)),
            expires_at: Some(OffsetDateTime::now_utc() + time::Duration::days(3650)),
        }),
        revocation: None,
    };
    Subject {
        id,
        category,
        record: Some(record),
    }
}

/// The request subject `s` makes for `model`, as request `request_id`.
pub fn request(s: &Subject, request_id: String, model: &str) -> AccessRequest {
    let country = if s.category == Category::UsCitizenInIran {
        "IR"
    } else {
        "US"
    };
    AccessRequest {
        request_id,
        event_time: OffsetDateTime::now_utc(),
        subject_id: s.id.clone(),
        organization_id: None,
        model: model.to_string(),
        geo: Some(Geolocation {
            country: Some(country.into()),
            subdivision: None,
            postal_code: None,
            confidence: Some(0.95),
            vpn: false,
            hosting: false,
        }),
    }
}

/// The model request `i` asks for: mostly tagged, some untagged, a few
/// unknown.
pub fn model_for(i: usize) -> &'static str {
    // By tens, so that every category (i % 10) meets every model.
    match (i / Category::ALL.len()) % 20 {
        0 => UNKNOWN_MODEL,
        1..=6 => UNTAGGED_MODEL,
        _ => TAGGED_MODEL,
    }
}

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Records were not delivered: the error librdkafka reported for the
    /// first of them (the broker's, or a local one such as an unknown topic
    /// or the delivery timeout).
    #[error("{failed} record(s) to topic {topic} not delivered: {error}")]
    Delivery {
        /// The topic.
        topic: String,
        /// How many records to that topic failed.
        failed: u64,
        /// The first failure.
        error: KafkaError,
    },
    /// Records were neither delivered nor reported failed in time.
    #[error("{pending} record(s) not confirmed delivered within {within:?}")]
    Unconfirmed {
        /// Records still in flight.
        pending: i32,
        /// How long the producer was flushed.
        within: Duration,
    },
    /// The engine did not become ready, or apply the feed, in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A measurement could not be set up (bad options, a topic that could
    /// not be created, a client that could not start).
    #[error("{0}")]
    Setup(String),
}

/// How long the tools' producer tries to deliver a record before it reports
/// it failed (librdkafka's `message.timeout.ms`; `kafka.properties` may set
/// another, `0` counting as this one when the producer is flushed).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the tools' producer waits for a topic missing from the broker's
/// metadata to appear before it fails the records sent to it
/// (`topic.metadata.propagation.max.ms`).
pub const MISSING_TOPIC_TIMEOUT: Duration = Duration::from_secs(10);

/// The producer context of [`DataProducer`]: it counts delivery reports and
/// keeps the first failure per topic, for [`confirm_delivery`].
#[derive(Debug)]
pub struct DeliveryCheck {
    /// How long [`confirm_delivery`] flushes: the delivery timeout plus a
    /// margin, so that librdkafka reports every record first.
    flush_timeout: Duration,
    failed: Mutex<BTreeMap<String, (u64, KafkaError)>>,
}

impl DeliveryCheck {
    /// The first topic with failed deliveries since the last call, as an
    /// error (and forget every failure seen so far).
    pub fn take_failure(&self) -> Option<LoadgenError> {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let first = std::mem::take(&mut *failed).into_iter().next();
        first.map(|(topic, (failed, error))| LoadgenError::Delivery {
            topic,
            failed,
            error,
        })
    }
}

impl rdkafka::ClientContext for DeliveryCheck {}

impl ProducerContext for DeliveryCheck {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, msg)) = result {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            failed
                .entry(msg.topic().to_string())
                .or_insert_with(|| (0, error.clone()))
                .0 += 1;
        }
    }
}

/// The producer of the tools (load generator, demo, tests): every record it
/// sends is confirmed by [`confirm_delivery`].
pub type DataProducer = BaseProducer<DeliveryCheck>;

/// The client configuration of a [`DataProducer`]: [`crate::kafka::base_config`]
/// (bootstrap servers, and the operator's `kafka.properties`: TLS, SASL...),
/// then the tools' defaults for every property those do not set.
pub fn data_producer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = crate::kafka::base_config(k, "loadgen");
    let timeout = DELIVERY_TIMEOUT.as_millis().to_string();
    let propagation = MISSING_TOPIC_TIMEOUT.as_millis().to_string();
    let defaults: [(&[&str], &str); 5] = [
        (&["linger.ms", "queue.buffering.max.ms"], "5"),
        (&["queue.buffering.max.messages"], "200000"),
        (&["enable.idempotence"], "true"),
        (&["message.timeout.ms", "delivery.timeout.ms"], &timeout),
        (&["topic.metadata.propagation.max.ms"], &propagation),
    ];
    for (names, value) in defaults {
        if names.iter().all(|n| c.get(n).is_none()) {
            c.set(names[0], value);
        }
    }
    c
}

/// A producer for test data (change-feed records and requests) on
/// `bootstrap`, with no other property.
pub fn data_producer(bootstrap: &str) -> Result<DataProducer, KafkaError> {
    data_producer_for(&KafkaConfig {
        bootstrap_servers: bootstrap.to_string(),
        ..KafkaConfig::default()
    })
}

/// A producer for test data with the client settings of `k`
/// ([`data_producer_config`]).
pub fn data_producer_for(k: &KafkaConfig) -> Result<DataProducer, KafkaError> {
    let c = data_producer_config(k);
    let ms = c
        .get("message.timeout.ms")
        .or_else(|| c.get("delivery.timeout.ms"))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(DELIVERY_TIMEOUT, Duration::from_millis);
    c.create_with_context(DeliveryCheck {
        flush_timeout: ms + Duration::from_secs(5),
        failed: Mutex::new(BTreeMap::new()),
    })
}

/// Wait until every record sent through `p` is delivered or reported
/// failed (at most the delivery timeout plus five seconds); an error names
/// the first topic whose records failed and librdkafka's error for them.
pub fn confirm_delivery(p: &DataProducer) -> Result<(), LoadgenError> {
    let within = p.context().flush_timeout;
    let flushed = p.flush(within);
    if let Some(e) = p.context().take_failure() {
        return Err(e);
    }
    flushed.map_err(|_| LoadgenError::Unconfirmed {
        pending: p.in_flight_count(),
        within,
    })
}

/// Send, waiting while the local queue is full. The record is only queued:
/// [`confirm_delivery`] tells whether it was delivered.
pub fn send_blocking<C: ProducerContext<DeliveryOpaque = ()>>(
    p: &BaseProducer<C>,
    topic: &str,
    key: &[u8],
    payload: Option<&[u8]>,
) -> Result<(), KafkaError> {
    let mut rec = BaseRecord::to(topic).key(key);
    if let Some(pl) = payload {
        rec = rec.payload(pl);
    }
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Publish eligibility records and confirm their delivery
/// ([`confirm_delivery`]).
pub fn publish_eligibility(
    p: &DataProducer,
    topic: &str,
    records: &[EligibilityRecord],
) -> Result<(), LoadgenError> {
    for r in records {
        let body = serde_json::to_vec(r).unwrap_or_default();
        send_blocking(p, topic, r.key().as_bytes(), Some(&body))?;
        p.poll(Duration::ZERO);
    }
    confirm_delivery(p)
}

fn on(bootstrap: &str) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: bootstrap.to_string(),
        ..KafkaConfig::default()
    }
}

/// High watermarks of every partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, i64>, KafkaError> {
    high_watermarks_for(&on(bootstrap), topic)
}

/// High watermarks of every partition of `topic`, with the client settings
/// of `k`.
pub fn high_watermarks_for(k: &KafkaConfig, topic: &str) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let c: BaseConsumer = crate::kafka::base_config(k, "loadgen-watermarks")
        .set("group.id", "clearance-watermarks")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut out = BTreeMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            out.insert(p.id(), high);
        }
    }
    Ok(out)
}

/// Wait until the engine at `admin` reports ready and has applied the feed
/// up to `targets` (partition → high watermark).
pub async fn wait_for_feed(
    admin: SocketAddr,
    targets: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<(), LoadgenError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, body)) = crate::admin::get(admin, "/status").await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                let ready = v["ready"].as_bool().unwrap_or(false);
                let caught = targets.iter().all(|(p, t)| {
                    *t == 0
                        || v["feed"]["positions"][p.to_string()]
                            .as_i64()
                            .is_some_and(|pos| pos >= *t)
                });
                if ready && caught {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(LoadgenError::Timeout(format!(
                "engine at {admin} did not apply the change feed up to {targets:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the engine at `admin` has request partitions assigned (the
/// consumer group has formed), so that measurements exclude the join.
pub async fn wait_for_assignment(admin: SocketAddr, timeout: Duration) -> Result<(), LoadgenError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, body)) = crate::admin::get(admin, "/status").await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                if v["assigned_partitions"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(LoadgenError::Timeout(format!(
                "engine at {admin} has no request partitions assigned"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consumer of the decision topic positioned at its current end, so that
/// only decisions made from now on are read.
pub fn decision_reader(bootstrap: &str, topic: &str) -> Result<BaseConsumer, KafkaError> {
    decision_reader_for(&on(bootstrap), topic)
}

/// [`decision_reader`] with the client settings of `k`.
pub fn decision_reader_for(k: &KafkaConfig, topic: &str) -> Result<BaseConsumer, KafkaError> {
    let highs = high_watermarks_for(k, topic)?;
    let c: BaseConsumer = crate::kafka::base_config(k, "loadgen-reader")
        .set("group.id", "clearance-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (p, h) in highs {
        tpl.add_partition_offset(topic, p, Offset::Offset(h))?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Load options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Client settings: bootstrap servers and the operator's properties.
    pub kafka: KafkaConfig,
    /// Requests topic.
    pub requests_topic: String,
    /// Decisions topic.
    pub decisions_topic: String,
    /// Change-feed topic.
    pub eligibility_topic: String,
    /// Requests to send.
    pub requests: usize,
    /// Requests per second; `None` for as fast as possible.
    pub rate: Option<u64>,
    /// Synthetic subjects.
    pub subjects: usize,
    /// Publish the subjects' eligibility records first.
    pub seed: bool,
    /// Send the requests and read their decisions back (`false`: seed only).
    pub send: bool,
    /// Engine admin address, to wait for the feed to be applied.
    pub admin: Option<SocketAddr>,
    /// Give up reading decisions after this long.
    pub timeout: Duration,
    /// Prefix of subject ids (`{run_id}u{i}`) and of request ids. Subjects
    /// seeded by one run are the subjects of a later run with the same
    /// `run_id` and `subjects`; request ids differ per run anyway.
    pub run_id: String,
}

/// What a load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Eligibility records published (and confirmed delivered).
    pub seeded: usize,
    /// Requests sent.
    pub sent: usize,
    /// Decisions read back for them (first decision per request).
    pub decided: usize,
    /// Seconds from the first send to the last decision.
    pub elapsed_secs: f64,
    /// Seconds spent sending.
    pub send_secs: f64,
    /// Latency percentiles in microseconds, event time to decision read.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Decisions by outcome and first reason.
    pub by_reason: BTreeMap<(String, String), usize>,
    /// Decisions whose outcome differs from the category's expected one.
    pub mismatches: usize,
    /// A few mismatch descriptions.
    pub mismatch_examples: Vec<String>,
}

impl LoadReport {
    /// Decisions per second.
    pub fn throughput(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.decided as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sent {} requests in {:.2} s; {} decisions in {:.2} s: {:.0} decisions/s",
            self.sent,
            self.send_secs,
            self.decided,
            self.elapsed_secs,
            self.throughput()
        )?;
        writeln!(
            f,
            "latency event->decision read: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.p999_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0
        )?;
        for ((o, r), n) in &self.by_reason {
            writeln!(f, "  {o:5} {r:28} {n}")?;
        }
        write!(
            f,
            "outcomes differing from the expected: {}",
            self.mismatches
        )
    }
}

/// A tag unique to this process and moment, so that request ids differ
/// between runs that share a run id.
fn session_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Run a load: optionally seed eligibility, optionally send requests and
/// read their decisions back. Every record sent is confirmed delivered
/// ([`confirm_delivery`]): a failed delivery ends the run with an error.
pub async fn run(opts: LoadOptions) -> Result<LoadReport, LoadgenError> {
    let subjects: Vec<Subject> = (0..opts.subjects.max(1))
        .map(|i| subject(&opts.run_id, i))
        .collect();
    let producer = data_producer_for(&opts.kafka)?;
    let mut seeded = 0;
    if opts.seed {
        let recs: Vec<EligibilityRecord> = subjects
            .iter()
            .filter_map(|s| s.record.clone().map(EligibilityRecord::User))
            .collect();
        let (p, topic) = (&producer, opts.eligibility_topic.clone());
        tokio::task::block_in_place(|| publish_eligibility(p, &topic, &recs))?;
        seeded = recs.len();
        if let Some(admin) = opts.admin {
            let targets = high_watermarks_for(&opts.kafka, &opts.eligibility_topic)?;
            wait_for_feed(admin, &targets, Duration::from_secs(120)).await?;
        }
    }
    if !opts.send {
        return Ok(LoadReport {
            seeded,
            ..LoadReport::default()
        });
    }

    if let Some(admin) = opts.admin {
        wait_for_assignment(admin, Duration::from_secs(120)).await?;
    }
    let reader = decision_reader_for(&opts.kafka, &opts.decisions_topic)?;
    let n = opts.requests;
    let prefix = format!("{}r{}-", opts.run_id, session_tag());
    let stop = Arc::new(AtomicBool::new(false));

    // Reader thread: collect the first decision of every request of this run.
    let reader_task = {
        let prefix = prefix.clone();
        let subjects = subjects.clone();
        let timeout = opts.timeout;
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            read_decisions(reader, &prefix, n, &subjects, timeout, &stop)
        })
    };

    let start = Instant::now();
    let req_topic = opts.requests_topic.clone();
    let rate = opts.rate;
    let send_subjects = subjects.clone();
    let send = tokio::task::spawn_blocking(move || -> Result<f64, LoadgenError> {
        for i in 0..n {
            if let Some(r) = rate {
                let due = start + Duration::from_secs_f64(i as f64 / r as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let s = &send_subjects[i % send_subjects.len()];
            let req = request(s, format!("{prefix}{i}"), model_for(i));
            let body = serde_json::to_vec(&req).unwrap_or_default();
            send_blocking(&producer, &req_topic, s.id.as_bytes(), Some(&body))?;
            if i % 256 == 0 {
                producer.poll(Duration::ZERO);
                if let Some(e) = producer.context().take_failure() {
                    return Err(e);
                }
            }
        }
        confirm_delivery(&producer)?;
        Ok(start.elapsed().as_secs_f64())
    });
    let sent = send
        .await
        .map_err(|e| LoadgenError::Timeout(e.to_string()))
        .and_then(|r| r);
    let send_secs = match sent {
        Ok(secs) => secs,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = reader_task.await;
            return Err(e);
        }
    };
    let mut report = reader_task
        .await
        .map_err(|e| LoadgenError::Timeout(e.to_string()))?;
    report.seeded = seeded;
    report.sent = n;
    report.send_secs = send_secs;
    report.elapsed_secs = start.elapsed().as_secs_f64().min(report.elapsed_secs);
    Ok(report)
}

fn read_decisions(
    reader: BaseConsumer,
    prefix: &str,
    n: usize,
    subjects: &[Subject],
    timeout: Duration,
    stop: &AtomicBool,
) -> LoadReport {
    let start = Instant::now();
    let mut last = start;
    let mut seen = vec![false; n];
    let mut decided = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let mut by_reason = BTreeMap::new();
    let mut mismatches = 0;
    let mut examples = Vec::new();
    let deadline = start + timeout;
    while decided < n && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let Some(Ok(msg)) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Some(Ok(d)) = msg.payload().map(serde_json::from_slice::<Decision>) else {
            continue;
        };
        let Some(idx) = d
            .request_id
            .strip_prefix(prefix)
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if idx >= n || seen[idx] {
            continue;
        }
        seen[idx] = true;
        decided += 1;
        last = Instant::now();
        if let Some(inputs) = &d.inputs {
            let lat = (OffsetDateTime::now_utc() - inputs.request.event_time)
                .whole_microseconds()
                .max(1) as u64;
            let _ = hist.record(lat.min(3_600_000_000));
        }
        let first = d.reasons.first().cloned().unwrap_or_default();
        *by_reason
            .entry((d.outcome.as_str().to_string(), first))
            .or_insert(0) += 1;
        let s = &subjects[idx % subjects.len()];
        let model = model_for(idx);
        if d.outcome != s.category.expected(model) {
            mismatches += 1;
            if examples.len() < 5 {
                examples.push(format!(
                    "{}: {:?} on {model}: got {:?} {:?}",
                    d.request_id, s.category, d.outcome, d.reasons
                ));
            }
        }
    }
    LoadReport {
        seeded: 0,
        sent: n,
        decided,
        elapsed_secs: (last - start).as_secs_f64(),
        send_secs: 0.0,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        by_reason,
        mismatches,
        mismatch_examples: examples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_mixes_every_category() {
        let subs: Vec<Subject> = (0..20).map(|i| subject("t", i)).collect();
        for c in Category::ALL {
            assert!(subs.iter().any(|s| s.category == c), "{c:?} missing");
        }
        assert!(subs
            .iter()
            .filter(|s| s.category == Category::Unknown)
            .all(|s| s.record.is_none()));
    }

    #[test]
    fn the_producer_takes_the_operators_properties() {
        let mut k = KafkaConfig::default();
        k.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        k.properties.insert("linger.ms".into(), "50".into());
        k.properties
            .insert("delivery.timeout.ms".into(), "120000".into());
        let c = data_producer_config(&k);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("linger.ms"), Some("50"), "the operator's value wins");
        assert_eq!(
            c.get("message.timeout.ms"),
            None,
            "nor its alias is overridden"
        );
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        let d = data_producer_config(&KafkaConfig::default());
        assert_eq!(d.get("message.timeout.ms"), Some("30000"));
    }

    #[test]
    fn expectations_follow_the_directive() {
        assert_eq!(Category::ChineseH1b.expected(TAGGED_MODEL), Outcome::Deny);
        assert_eq!(
            Category::ChineseH1b.expected(UNTAGGED_MODEL),
            Outcome::Allow
        );
        assert_eq!(
            Category::UsCitizenInIran.expected(UNTAGGED_MODEL),
            Outcome::Deny
        );
        assert_eq!(Category::UsCitizen.expected(UNKNOWN_MODEL), Outcome::Deny);
        assert_eq!(
            Category::ChineseGreenCard.expected(TAGGED_MODEL),
            Outcome::Allow
        );
    }
}
