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
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use time::OffsetDateTime;

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
    /// The engine did not become ready, or apply the feed, in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// A producer for test data (change-feed records and requests).
pub fn data_producer(bootstrap: &str) -> Result<BaseProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set("enable.idempotence", "true")
        .create()
}

/// Send, waiting while the local queue is full.
pub fn send_blocking(
    p: &BaseProducer,
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

/// Publish eligibility records (and flush).
pub fn publish_eligibility(
    p: &BaseProducer,
    topic: &str,
    records: &[EligibilityRecord],
) -> Result<(), KafkaError> {
    for r in records {
        let body = serde_json::to_vec(r).unwrap_or_default();
        send_blocking(p, topic, r.key().as_bytes(), Some(&body))?;
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60))
}

/// High watermarks of every partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
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
    let highs = high_watermarks(bootstrap, topic)?;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
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
    /// Bootstrap servers.
    pub bootstrap: String,
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
    /// Engine admin address, to wait for the feed to be applied.
    pub admin: Option<SocketAddr>,
    /// Give up reading decisions after this long.
    pub timeout: Duration,
    /// Prefix of subject and request ids (unique per run).
    pub run_id: String,
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
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

/// Run a load: optionally seed eligibility, send requests, read decisions.
pub async fn run(opts: LoadOptions) -> Result<LoadReport, LoadgenError> {
    let subjects: Vec<Subject> = (0..opts.subjects.max(1))
        .map(|i| subject(&opts.run_id, i))
        .collect();
    let producer = data_producer(&opts.bootstrap)?;
    if opts.seed {
        let recs: Vec<EligibilityRecord> = subjects
            .iter()
            .filter_map(|s| s.record.clone().map(EligibilityRecord::User))
            .collect();
        let (p, topic) = (&producer, opts.eligibility_topic.clone());
        tokio::task::block_in_place(|| publish_eligibility(p, &topic, &recs))?;
        if let Some(admin) = opts.admin {
            let targets = high_watermarks(&opts.bootstrap, &opts.eligibility_topic)?;
            wait_for_feed(admin, &targets, Duration::from_secs(120)).await?;
        }
    }

    if let Some(admin) = opts.admin {
        wait_for_assignment(admin, Duration::from_secs(120)).await?;
    }
    let reader = decision_reader(&opts.bootstrap, &opts.decisions_topic)?;
    let n = opts.requests;
    let prefix = format!("{}r", opts.run_id);

    // Reader thread: collect the first decision of every request of this run.
    let reader_task = {
        let prefix = prefix.clone();
        let subjects = subjects.clone();
        let timeout = opts.timeout;
        tokio::task::spawn_blocking(move || read_decisions(reader, &prefix, n, &subjects, timeout))
    };

    let start = Instant::now();
    let req_topic = opts.requests_topic.clone();
    let rate = opts.rate;
    let run_id = opts.run_id.clone();
    let send_subjects = subjects.clone();
    let send = tokio::task::spawn_blocking(move || -> Result<f64, KafkaError> {
        for i in 0..n {
            if let Some(r) = rate {
                let due = start + Duration::from_secs_f64(i as f64 / r as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let s = &send_subjects[i % send_subjects.len()];
            let req = request(s, format!("{run_id}r{i}"), model_for(i));
            let body = serde_json::to_vec(&req).unwrap_or_default();
            send_blocking(&producer, &req_topic, s.id.as_bytes(), Some(&body))?;
            if i % 256 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        producer.flush(Duration::from_secs(60))?;
        Ok(start.elapsed().as_secs_f64())
    });
    let send_secs = send
        .await
        .map_err(|e| LoadgenError::Timeout(e.to_string()))??;
    let mut report = reader_task
        .await
        .map_err(|e| LoadgenError::Timeout(e.to_string()))?;
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
    while decided < n && Instant::now() < deadline {
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
