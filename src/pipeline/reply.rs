//! Request/reply, in the convention of Spring for Apache Kafka's
//! `ReplyingKafkaTemplate`, so that JVM frontends work unchanged and any
//! other client can follow it (`clearance::client`, `examples/`).
//!
//! A request record may carry three headers:
//!
//! | header | value |
//! |---|---|
//! | `kafka_replyTopic` | the topic to reply on (UTF-8, a legal topic name) |
//! | `kafka_replyPartition` | optional: the partition, 4 bytes big-endian (Spring's encoding) |
//! | `kafka_correlationId` | optional: opaque bytes (at most 256), copied to the reply |
//!
//! With a reply topic, the decision goes to `access.decisions` as always
//! *and* to the reply topic: the same record (same value, key =
//! `request_id`), with the correlation header copied, to the given
//! partition or else partitioned by key.
//!
//! A reply never holds the pipeline back:
//! - a reply topic is looked up once (broker metadata, bounded in time) and
//!   remembered: usable for [`USABLE_TTL`], unusable for [`UNUSABLE_TTL`];
//!   new lookups are limited to [`LOOKUPS_PER_SEC`] per process;
//! - a reply that cannot go (bad header, unknown topic or partition, not
//!   authorized, failed delivery) is skipped; its decision still reaches
//!   `access.decisions`, `clearance_reply_failures_total{reason}` counts it
//!   and a warning is logged at most every [`WARN_EVERY`];
//! - at-least-once: replies have a producer of their own
//!   (`engine.reply_linger_ms`, not idempotent, `acks=1`: a reply is a
//!   notification, the decision log is the evidence), so that they never
//!   wait behind the decision log's batches; a reply that finds that
//!   producer's queue full is dropped and counted (`queue_full`), never
//!   waited for. A reply's delivery is not part of the offset (only the
//!   decision's is), and a reply can reach its frontend before the
//!   decision reaches `access.decisions`: after a crash in between, the
//!   request is decided again and logged then.
//! - exactly-once: the reply is produced in the transaction
//!   (read_committed reply readers see it when the decision commits); a
//!   failed reply delivery aborts that transaction once, the topic is then
//!   remembered as unusable and the batch is decided again without it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};

use crate::metrics as m;

/// The header naming the reply topic.
pub const REPLY_TOPIC_HEADER: &str = "kafka_replyTopic";
/// The header naming the reply partition (4 bytes, big-endian).
pub const REPLY_PARTITION_HEADER: &str = "kafka_replyPartition";
/// The correlation header, copied from request to reply.
pub const CORRELATION_ID_HEADER: &str = "kafka_correlationId";
/// The longest correlation id copied.
pub const MAX_CORRELATION_ID_BYTES: usize = 256;
/// How long a reply topic found usable is trusted before it is looked up
/// again.
pub const USABLE_TTL: Duration = Duration::from_secs(60);
/// How long a reply topic found unusable is skipped without a lookup.
pub const UNUSABLE_TTL: Duration = Duration::from_secs(10);
/// New reply-topic lookups per second, per process; beyond, a reply to a
/// topic not yet known is skipped (`lookup_rate_limited`).
pub const LOOKUPS_PER_SEC: u32 = 20;
/// The longest a lookup waits for the broker.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Reply topics remembered at most (the memory is cleared when full).
pub const MAX_TOPICS: usize = 4096;
/// At most one warning about failed replies per this interval.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Where to send a reply, read from a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// Reply topic.
    pub topic: String,
    /// Reply partition, if the request named one.
    pub partition: Option<i32>,
    /// Correlation id, copied unchanged.
    pub correlation_id: Option<Vec<u8>>,
}

impl ReplyTo {
    /// The headers of the reply record: the correlation id, if any.
    pub fn headers(&self) -> Option<OwnedHeaders> {
        self.correlation_id.as_ref().map(|c| {
            OwnedHeaders::new().insert(rdkafka::message::Header {
                key: CORRELATION_ID_HEADER,
                value: Some(c.as_slice()),
            })
        })
    }
}

/// A reply header that cannot be used. The request is still decided and
/// its decision published; only the reply is skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyHeaderError {
    /// `kafka_replyTopic` is not a legal topic name.
    #[error("{REPLY_TOPIC_HEADER} is not a legal topic name: {0:?}")]
    BadTopic(String),
    /// `kafka_replyPartition` is not a 4-byte big-endian partition number.
    #[error("{REPLY_PARTITION_HEADER} must be 4 bytes (big-endian int), got {0} bytes")]
    BadPartitionLength(usize),
    /// `kafka_replyPartition` is negative.
    #[error("{REPLY_PARTITION_HEADER} is negative: {0}")]
    NegativePartition(i32),
    /// `kafka_correlationId` is too long.
    #[error("{CORRELATION_ID_HEADER} has {0} bytes, more than {MAX_CORRELATION_ID_BYTES}")]
    CorrelationTooLong(usize),
}

/// Whether `t` is a legal Kafka topic name (1-249 of `[a-zA-Z0-9._-]`,
/// not `.` or `..`).
pub fn legal_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Read the reply headers. `Ok(None)`: no reply topic, so no reply (a
/// request without the headers behaves exactly as before). A header that
/// appears twice counts by its last value, as Spring reads it.
pub fn parse<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Option<ReplyTo>, ReplyHeaderError> {
    let (mut topic, mut partition, mut correlation) = (None, None, None);
    for (k, v) in headers {
        match k {
            REPLY_TOPIC_HEADER => topic = v,
            REPLY_PARTITION_HEADER => partition = v,
            CORRELATION_ID_HEADER => correlation = v,
            _ => {}
        }
    }
    let Some(topic) = topic else {
        return Ok(None);
    };
    let topic = match std::str::from_utf8(topic) {
        Ok(t) if legal_topic(t) => t.to_string(),
        _ => {
            return Err(ReplyHeaderError::BadTopic(
                String::from_utf8_lossy(topic).chars().take(300).collect(),
            ))
        }
    };
    let partition = match partition {
        None => None,
        Some(b) => {
            let bytes: [u8; 4] = b
                .try_into()
                .map_err(|_| ReplyHeaderError::BadPartitionLength(b.len()))?;
            let p = i32::from_be_bytes(bytes);
            if p < 0 {
                return Err(ReplyHeaderError::NegativePartition(p));
            }
            Some(p)
        }
    };
    if let Some(c) = correlation {
        if c.len() > MAX_CORRELATION_ID_BYTES {
            return Err(ReplyHeaderError::CorrelationTooLong(c.len()));
        }
    }
    Ok(Some(ReplyTo {
        topic,
        partition,
        correlation_id: correlation.map(<[u8]>::to_vec),
    }))
}

/// Read the reply headers of a consumed record.
pub fn from_message(
    headers: Option<&rdkafka::message::BorrowedHeaders>,
) -> Result<Option<ReplyTo>, ReplyHeaderError> {
    match headers {
        None => Ok(None),
        Some(h) => parse(h.iter().map(|h| (h.key, h.value))),
    }
}

/// Why a reply was not sent (the bounded `reason` label of
/// `clearance_reply_failures_total`).
pub mod failure {
    /// A reply header could not be used.
    pub const BAD_HEADER: &str = "bad_header";
    /// The reply topic does not exist.
    pub const UNKNOWN_TOPIC: &str = "unknown_topic";
    /// The reply partition does not exist.
    pub const UNKNOWN_PARTITION: &str = "unknown_partition";
    /// The engine may not use the reply topic.
    pub const NOT_AUTHORIZED: &str = "not_authorized";
    /// The lookup failed or timed out.
    pub const METADATA_ERROR: &str = "metadata_error";
    /// Too many new reply topics at once.
    pub const LOOKUP_RATE_LIMITED: &str = "lookup_rate_limited";
    /// The broker refused the reply record.
    pub const DELIVERY_FAILED: &str = "delivery_failed";
    /// The reply producer's queue was full (the broker falls behind): the
    /// reply is dropped rather than holding the pipeline back.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The reply was not delivered within the reply producer's bound
    /// (`kafka::REPLY_TIMEOUT_MS`: a broker outage or overload).
    pub const TIMED_OUT: &str = "timed_out";
    /// The reply was withdrawn with its transaction (exactly-once: an
    /// aborted batch is decided, and replied to, again).
    pub const ABORTED: &str = "aborted";
}

/// Whether a record was purged before delivery: an aborted transaction's
/// records (exactly-once; its batch is rewound and decided again).
pub(crate) fn is_purged(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Usable { partitions: i32, until: Instant },
    Unusable { why: &'static str, until: Instant },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the process knows of reply topics, shared by every worker.
#[derive(Debug)]
pub struct ReplyRoutes {
    /// Sharded: every reply reads it, so no process-wide lock per reply.
    routes: dashmap::DashMap<String, Route>,
    lookups: Mutex<Bucket>,
    last_warn: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Default for ReplyRoutes {
    fn default() -> Self {
        Self {
            routes: dashmap::DashMap::new(),
            lookups: Mutex::new(Bucket {
                tokens: f64::from(LOOKUPS_PER_SEC),
                at: Instant::now(),
            }),
            last_warn: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }
}

/// The broker metadata a lookup reads: partitions of a topic, or the
/// topic's error.
pub trait TopicLookup {
    /// The number of partitions of `topic`, or why it is unusable.
    fn partitions(&self, topic: &str) -> Result<i32, &'static str>;
}

impl<C: rdkafka::producer::ProducerContext> TopicLookup for rdkafka::producer::ThreadedProducer<C> {
    fn partitions(&self, topic: &str) -> Result<i32, &'static str> {
        let md = self
            .client()
            .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
            .map_err(|e| match e.rdkafka_error_code() {
                Some(rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed) => {
                    failure::NOT_AUTHORIZED
                }
                Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition) => {
                    failure::UNKNOWN_TOPIC
                }
                _ => failure::METADATA_ERROR,
            })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Err(failure::UNKNOWN_TOPIC);
        };
        match t.error() {
            None if !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
            None => Err(failure::UNKNOWN_TOPIC),
            Some(e) => Err(match e {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED => {
                    failure::NOT_AUTHORIZED
                }
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
                | RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION => failure::UNKNOWN_TOPIC,
                _ => failure::METADATA_ERROR,
            }),
        }
    }
}

impl ReplyRoutes {
    /// Whether a reply to `to` can be sent now: `Ok` or the failure reason
    /// (counted and warned about here). Looks the topic up (blocking, at
    /// most [`LOOKUP_TIMEOUT`]) when it is not known.
    pub fn check(&self, lookup: &impl TopicLookup, to: &ReplyTo) -> Result<(), &'static str> {
        let now = Instant::now();
        // Copied out at once: no map guard is held past this line.
        let known = self.routes.get(&to.topic).map(|r| *r);
        let route = match known {
            Some(r @ Route::Usable { until, .. }) | Some(r @ Route::Unusable { until, .. })
                if until > now =>
            {
                r
            }
            // Due for a new lookup, and none may be made now: a topic known
            // usable stays usable (a flood of new topics never costs the
            // replies of a known one).
            Some(r @ Route::Usable { .. }) if !self.take_lookup(now) => r,
            _ => {
                // (A known usable topic reaches here only when the guard
                // above took a lookup token already.)
                if !matches!(known, Some(Route::Usable { .. })) && !self.take_lookup(now) {
                    return Err(self.failed(failure::LOOKUP_RATE_LIMITED, &to.topic, ""));
                }
                let r = match lookup.partitions(&to.topic) {
                    Ok(partitions) => Route::Usable {
                        partitions,
                        until: now + USABLE_TTL,
                    },
                    Err(why) => Route::Unusable {
                        why,
                        until: now + UNUSABLE_TTL,
                    },
                };
                if self.routes.len() >= MAX_TOPICS {
                    self.routes.clear();
                }
                self.routes.insert(to.topic.clone(), r);
                r
            }
        };
        match route {
            Route::Usable { partitions, .. } => match to.partition {
                Some(p) if p >= partitions => Err(self.failed(
                    failure::UNKNOWN_PARTITION,
                    &to.topic,
                    &format!("partition {p} of {partitions}"),
                )),
                _ => Ok(()),
            },
            Route::Unusable { why, .. } => Err(self.failed(why, &to.topic, "")),
        }
    }

    /// A reply header could not be used.
    pub fn bad_header(&self, e: &ReplyHeaderError) {
        self.failed(failure::BAD_HEADER, "", &e.to_string());
    }

    /// A reply's delivery failed: count it, and skip the topic for
    /// [`UNUSABLE_TTL`]; except a reply purged with its aborted transaction
    /// ([`Self::withdrawn`]), and a reply that timed out (a broker outage or
    /// overload, not the topic's fault), which is counted as
    /// [`failure::TIMED_OUT`] and leaves the topic usable, so that replies
    /// resume as soon as the broker does.
    pub fn delivery_failed(&self, topic: &str, e: &KafkaError) {
        if is_purged(e) {
            self.withdrawn(topic);
            return;
        }
        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) {
            self.failed(failure::TIMED_OUT, topic, &e.to_string());
            return;
        }
        self.routes.insert(
            topic.to_string(),
            Route::Unusable {
                why: failure::DELIVERY_FAILED,
                until: Instant::now() + UNUSABLE_TTL,
            },
        );
        self.failed(failure::DELIVERY_FAILED, topic, &e.to_string());
    }

    /// A reply was purged with its aborted transaction (exactly-once):
    /// counted as [`failure::ABORTED`]; the topic stays usable, for the
    /// reply of the batch decided again.
    pub fn withdrawn(&self, topic: &str) {
        metrics::counter!(m::REPLY_FAILURES_TOTAL, "reason" => failure::ABORTED).increment(1);
        tracing::debug!(topic, "reply withdrawn with its aborted transaction");
    }

    /// A reply was dropped because the reply producer's queue was full
    /// (`producer::send_reply`): counted as [`failure::QUEUE_FULL`]; the
    /// topic stays usable (a full queue is the broker's lag, not the
    /// topic's fault).
    pub fn queue_full(&self, topic: &str) -> &'static str {
        self.failed(failure::QUEUE_FULL, topic, "reply producer queue full")
    }

    fn take_lookup(&self, now: Instant) -> bool {
        let mut b = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
        let rate = f64::from(LOOKUPS_PER_SEC);
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Count a failed reply and warn, at most every [`WARN_EVERY`].
    fn failed(&self, why: &'static str, topic: &str, detail: &str) -> &'static str {
        metrics::counter!(m::REPLY_FAILURES_TOTAL, "reason" => why).increment(1);
        let now = Instant::now();
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return why;
        }
        *last = Some(now);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            reason = why,
            topic,
            detail,
            suppressed_since_last_warning = suppressed,
            "reply not sent (the decision is on the decisions topic)"
        );
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn h<'a>(pairs: &'a [(&'a str, &'a [u8])]) -> Vec<(&'a str, Option<&'a [u8]>)> {
        pairs.iter().map(|(k, v)| (*k, Some(*v))).collect()
    }

    #[test]
    fn headers_are_read_as_spring_writes_them() {
        assert_eq!(parse(h(&[("other", b"x")])), Ok(None), "no reply topic");
        let p = 7i32.to_be_bytes();
        let got = parse(h(&[
            (REPLY_TOPIC_HEADER, b"replies.a"),
            (REPLY_PARTITION_HEADER, &p),
            (CORRELATION_ID_HEADER, &[0, 1, 2, 255]),
        ]));
        assert_eq!(
            got,
            Ok(Some(ReplyTo {
                topic: "replies.a".into(),
                partition: Some(7),
                correlation_id: Some(vec![0, 1, 2, 255]),
            }))
        );
        let got = parse(h(&[(REPLY_TOPIC_HEADER, b"r")])).unwrap().unwrap();
        assert_eq!((got.partition, got.correlation_id), (None, None));
    }

    #[test]
    fn bad_headers_are_named() {
        assert!(matches!(
            parse(h(&[(REPLY_TOPIC_HEADER, b"no spaces")])),
            Err(ReplyHeaderError::BadTopic(_))
        ));
        assert!(matches!(
            parse(h(&[(REPLY_TOPIC_HEADER, &[0xff, 0xfe])])),
            Err(ReplyHeaderError::BadTopic(_))
        ));
        assert_eq!(
            parse(h(&[
                (REPLY_TOPIC_HEADER, b"r"),
                (REPLY_PARTITION_HEADER, b"1")
            ])),
            Err(ReplyHeaderError::BadPartitionLength(1))
        );
        let neg = (-1i32).to_be_bytes();
        assert_eq!(
            parse(h(&[
                (REPLY_TOPIC_HEADER, b"r"),
                (REPLY_PARTITION_HEADER, &neg)
            ])),
            Err(ReplyHeaderError::NegativePartition(-1))
        );
        let long = [1u8; 257];
        assert_eq!(
            parse(h(&[
                (REPLY_TOPIC_HEADER, b"r"),
                (CORRELATION_ID_HEADER, &long)
            ])),
            Err(ReplyHeaderError::CorrelationTooLong(257))
        );
        assert!(!legal_topic(".."));
        assert!(!legal_topic(&"a".repeat(250)));
        assert!(legal_topic("a.B_c-9"));
    }

    struct Fake {
        calls: Cell<u32>,
        answer: Result<i32, &'static str>,
    }

    impl TopicLookup for Fake {
        fn partitions(&self, _: &str) -> Result<i32, &'static str> {
            self.calls.set(self.calls.get() + 1);
            self.answer
        }
    }

    fn to(topic: &str, partition: Option<i32>) -> ReplyTo {
        ReplyTo {
            topic: topic.into(),
            partition,
            correlation_id: None,
        }
    }

    #[test]
    fn a_full_queue_or_a_timeout_leaves_the_topic_usable_a_refusal_does_not() {
        let r = ReplyRoutes::default();
        for t in ["full", "late", "gone"] {
            r.routes.insert(
                t.into(),
                Route::Usable {
                    partitions: 1,
                    until: Instant::now() + USABLE_TTL,
                },
            );
        }
        assert_eq!(r.queue_full("full"), failure::QUEUE_FULL);
        r.delivery_failed(
            "late",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        );
        r.delivery_failed(
            "gone",
            &KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition),
        );
        let usable = |t: &str| matches!(r.routes.get(t).map(|x| *x), Some(Route::Usable { .. }));
        assert!(usable("full"), "a full queue is not the topic's fault");
        assert!(usable("late"), "a timeout is the broker's, not the topic's");
        assert!(matches!(
            r.routes.get("gone").map(|x| *x),
            Some(Route::Unusable {
                why: failure::DELIVERY_FAILED,
                ..
            })
        ));
    }

    #[test]
    fn topics_are_looked_up_once_and_remembered() {
        let r = ReplyRoutes::default();
        let ok = Fake {
            calls: Cell::new(0),
            answer: Ok(3),
        };
        for _ in 0..100 {
            assert_eq!(r.check(&ok, &to("a", Some(2))), Ok(()));
        }
        assert_eq!(ok.calls.get(), 1, "one lookup for many replies");
        assert_eq!(
            r.check(&ok, &to("a", Some(3))),
            Err(failure::UNKNOWN_PARTITION)
        );
        let missing = Fake {
            calls: Cell::new(0),
            answer: Err(failure::UNKNOWN_TOPIC),
        };
        for _ in 0..100 {
            assert_eq!(
                r.check(&missing, &to("b", None)),
                Err(failure::UNKNOWN_TOPIC)
            );
        }
        assert_eq!(missing.calls.get(), 1, "an unusable topic is remembered");
        r.delivery_failed("a", &KafkaError::Canceled);
        assert_eq!(r.check(&ok, &to("a", None)), Err(failure::DELIVERY_FAILED));
    }

    #[test]
    fn new_topic_lookups_are_rate_limited() {
        let r = ReplyRoutes::default();
        let ok = Fake {
            calls: Cell::new(0),
            answer: Ok(1),
        };
        let results: Vec<_> = (0..100)
            .map(|i| r.check(&ok, &to(&format!("t{i}"), None)))
            .collect();
        let limited = results
            .iter()
            .filter(|r| **r == Err(failure::LOOKUP_RATE_LIMITED))
            .count();
        assert!(ok.calls.get() >= LOOKUPS_PER_SEC && ok.calls.get() < 30);
        assert_eq!(limited as u32 + ok.calls.get(), 100);
    }

    #[test]
    fn a_known_topic_keeps_its_replies_while_lookups_are_rate_limited() {
        let r = ReplyRoutes::default();
        let ok = Fake {
            calls: Cell::new(0),
            answer: Ok(1),
        };
        assert_eq!(r.check(&ok, &to("known", None)), Ok(()));
        // Its entry is due for a new lookup...
        if let Some(Route::Usable { until, .. }) = r.routes.get_mut("known").as_deref_mut() {
            *until = Instant::now() - Duration::from_secs(1);
        }
        // ...while a flood of new topics has used every lookup.
        for i in 0..100 {
            let _ = r.check(&ok, &to(&format!("new{i}"), None));
        }
        assert_eq!(r.check(&ok, &to("known", None)), Ok(()));
        assert_eq!(
            r.check(&ok, &to("another-new", None)),
            Err(failure::LOOKUP_RATE_LIMITED)
        );
    }
}
