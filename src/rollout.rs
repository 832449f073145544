//! Live policy rollout.
//!
//! `clearance policy publish FILE` validates a policy and publishes its text
//! to the compacted policy topic. Every engine instance watches that topic
//! ([`run`]): a valid policy is swapped in whole (decisions take one `Arc`
//! of the policy each, so none sees half of one); an invalid one is
//! rejected with a log line and a metric, and the previous policy stays
//! active.
//!
//! Which valid policy is active depends on the policy topic and the clock
//! alone, so every instance agrees whenever it started ([`Timeline`]): the
//! one with the latest effective time at or before now, ties going to the
//! later offset. A policy's effective time is its `effective_from`, or,
//! without one, its record's Kafka timestamp (the publish time, which every
//! instance reads identically). A policy whose effective time is in the
//! future is scheduled; one read after a policy with a later effective time
//! was already effective is superseded: never activated (log line, metric,
//! `/status`). The engine's file policy (`policy.file`) is active only
//! until some policy of the topic is effective.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::{EofAwareContext, KafkaBoundaryError};
use crate::metrics as m;
use crate::policy::signing::{
    PolicySigner, Rejection, TrustedKeys, KEY_ID_HEADER, SIGNATURE_HEADER,
};
use crate::policy::ActivePolicy;
use crate::policy::{CompiledPolicy, PolicyError, PolicyHistory};

/// Errors of publishing or watching policies.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The policy is invalid (nothing was published).
    #[error("invalid policy: {0}")]
    Invalid(#[from] PolicyError),
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaBoundaryError),
    /// Publishing failed (retryable: the broker may be down).
    #[error("publishing failed: {0}")]
    Publish(KafkaError),
    /// The principal may not write to the policy topic (its ACLs).
    #[error("publishing failed: not authorized to write to topic {topic} (Kafka: topic authorization failed; the policy topic's ACLs allow only the policy publisher)")]
    NotAuthorized {
        /// The policy topic.
        topic: String,
    },
    /// `policy.trusted_keys` holds a key that cannot be read.
    #[error("policy.trusted_keys: {0}")]
    TrustedKeys(String),
    /// The policy topic could not be read to its end in time (retryable).
    #[error("policy topic {topic}: partitions {missing:?} not read to their end in time")]
    HistoryIncomplete {
        /// The topic.
        topic: String,
        /// Partitions not read to their end.
        missing: Vec<i32>,
    },
}

/// Where a published policy landed.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Policy id.
    pub id: String,
    /// Policy version.
    pub version: String,
    /// When it takes effect, if scheduled.
    pub effective_from: Option<String>,
    /// Partition and offset on the policy topic.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Validate `path` and publish it to the policy topic (key:
/// `<id>@<version>`, see [`crate::policy::history`]).
pub async fn publish(cfg: &Config, path: &Path) -> Result<Published, RolloutError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    publish_text(cfg, &text, &path.display().to_string()).await
}

/// Validate `text` and publish it to the policy topic.
pub async fn publish_text(
    cfg: &Config,
    text: &str,
    source: &str,
) -> Result<Published, RolloutError> {
    publish_signed(cfg, text, source, None).await
}

/// Validate `text`, sign it with `signer` if one is given (the signature
/// and key id go in record headers), and publish it to the policy topic.
pub async fn publish_signed(
    cfg: &Config,
    text: &str,
    source: &str,
    signer: Option<&PolicySigner>,
) -> Result<Published, RolloutError> {
    let policy = CompiledPolicy::from_toml_str(text, source)?;
    // Keyed by id@version: compaction keeps every version (the policy
    // history that replay reads), not only the latest of each id.
    let key = crate::policy::history_key(&policy.id, &policy.version);
    let headers = signer.map(|s| s.sign(text.as_bytes()));
    let headers: Vec<(&str, &[u8])> = headers
        .as_ref()
        .map(|(id, sig)| {
            vec![
                (KEY_ID_HEADER, id.as_bytes()),
                (SIGNATURE_HEADER, sig.as_bytes()),
            ]
        })
        .unwrap_or_default();
    let (partition, offset) = publish_with_headers(cfg, &key, text.as_bytes(), &headers).await?;
    Ok(published(&policy, partition, offset))
}

/// Validate `text` and publish it with a detached signature (`clearance
/// policy sign`): the key id and the base64 signature go in the headers as
/// given; the engines verify them.
pub async fn publish_with_signature(
    cfg: &Config,
    text: &str,
    source: &str,
    key_id: &str,
    signature: &str,
) -> Result<Published, RolloutError> {
    let policy = CompiledPolicy::from_toml_str(text, source)?;
    let key = crate::policy::history_key(&policy.id, &policy.version);
    let headers: [(&str, &[u8]); 2] = [
        (KEY_ID_HEADER, key_id.as_bytes()),
        (SIGNATURE_HEADER, signature.as_bytes()),
    ];
    let (partition, offset) = publish_with_headers(cfg, &key, text.as_bytes(), &headers).await?;
    Ok(published(&policy, partition, offset))
}

fn published(policy: &CompiledPolicy, partition: i32, offset: i64) -> Published {
    Published {
        id: policy.id.clone(),
        version: policy.version.clone(),
        effective_from: policy.effective_from.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
        partition,
        offset,
    }
}

/// Publish bytes to the policy topic without validating them (tests use it
/// to check that engines reject invalid policies).
pub async fn publish_unchecked(
    cfg: &Config,
    key: &str,
    bytes: &[u8],
) -> Result<(i32, i64), RolloutError> {
    publish_with_headers(cfg, key, bytes, &[]).await
}

/// Publish bytes with record headers to the policy topic without
/// validating them (tests use it to publish tampered signatures).
pub async fn publish_with_headers(
    cfg: &Config,
    key: &str,
    bytes: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<(i32, i64), RolloutError> {
    let mut h = rdkafka::message::OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: Some(*v),
        });
    }
    // Its error callback records an authentication or TLS failure, which
    // ends the wait for the delivery at once.
    let producer: FutureProducer<EofAwareContext> = crate::kafka::policy_publisher_config(cfg)
        .create_with_context(EofAwareContext {
            what: "policy publisher",
        })
        .map_err(|source| KafkaBoundaryError::Client {
            what: "policy publisher",
            source,
        })?;
    let send = producer.send(
        FutureRecord::to(&cfg.topics.policy)
            .key(key)
            .payload(bytes)
            .headers(h),
        Duration::from_secs(30),
    );
    let delivery = tokio::select! {
        r = send => r.map_err(|(e, _)| match e {
            KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed,
            ) => RolloutError::NotAuthorized {
                topic: cfg.topics.policy.clone(),
            },
            e => RolloutError::Publish(e),
        })?,
        e = crate::kafka::auth_failed() => return Err(e.into()),
    };
    Ok((delivery.partition, delivery.offset))
}

/// Read the whole policy topic, from its start to its current end, into a
/// [`PolicyHistory`]: every version ever published (the topic is keyed
/// `<id>@<version>`, so compaction keeps each), for replay. Invalid records
/// are listed in [`PolicyHistory::invalid`].
pub fn read_history(cfg: &Config, timeout: Duration) -> Result<PolicyHistory, RolloutError> {
    let topic = cfg.topics.policy.clone();
    let consumer: BaseConsumer<EofAwareContext> =
        crate::kafka::reader_config(&cfg.kafka, "policy-history")
            .create_with_context(EofAwareContext {
                what: "policy history reader",
            })
            .map_err(|source| KafkaBoundaryError::Client {
                what: "policy history reader",
                source,
            })?;
    let never = CancellationToken::new();
    let partitions = crate::kafka::topic_partitions(&consumer, &topic, &never)?.unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, *p, Duration::from_secs(10))
            .map_err(|e| KafkaBoundaryError::Metadata {
                topic: topic.clone(),
                source: e,
            })?;
        if high > low {
            ends.insert(*p, high);
        }
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)
            .map_err(|source| KafkaBoundaryError::Client {
                what: "policy history assignment",
                source,
            })?;
    }
    consumer
        .assign(&tpl)
        .map_err(|source| KafkaBoundaryError::Client {
            what: "policy history assignment",
            source,
        })?;
    let mut history = PolicyHistory::new();
    let deadline = std::time::Instant::now() + timeout;
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(RolloutError::HistoryIncomplete {
                topic,
                missing: ends.keys().copied().collect(),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "policy history: consumer error"),
            Some(Ok(msg)) => {
                let (p, off) = (msg.partition(), msg.offset());
                if ends.get(&p).is_some_and(|end| off + 1 >= *end) {
                    ends.remove(&p);
                }
                let source = format!("{topic}[{p}]@{off}");
                match msg.payload().map(std::str::from_utf8) {
                    None => {} // a tombstone retires a key; nothing to keep
                    Some(Ok(text)) => history.add_text(text, &source),
                    Some(Err(e)) => history.invalid.push((source, format!("not UTF-8: {e}"))),
                }
            }
        }
    }
    Ok(history)
}

/// The rollout state, shared with the admin API.
#[derive(Debug, Default)]
pub struct RolloutState {
    ready: AtomicBool,
    inner: Mutex<RolloutInfo>,
}

/// What `/status` shows of the rollout.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RolloutInfo {
    /// Where the active policy came from (with `signed by <key id>` when
    /// it was verified).
    pub active_source: String,
    /// The ids of the keys whose signatures are accepted (empty: policies
    /// need no signature).
    pub trusted_keys: Vec<String>,
    /// Activations since start.
    pub activations: u64,
    /// Rejected policies since start.
    pub rejected: u64,
    /// The last rejection's error.
    pub last_rejection: Option<String>,
    /// The effective time of the active topic policy (`None` while the
    /// file policy is active).
    pub active_effective: Option<String>,
    /// Scheduled policies: (effective time, version), in activation order.
    pub scheduled: Vec<(String, String)>,
    /// Policies superseded since start: read, or due, when one with a later
    /// effective time was already effective, so never activated.
    pub superseded: u64,
    /// The last superseded policy: its source, version and effective time.
    pub last_superseded: Option<String>,
    /// Next offset of the policy topic, per partition.
    pub positions: BTreeMap<i32, i64>,
}

impl RolloutState {
    /// Whether the policy topic has been read up to its startup end.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A copy of the state.
    pub fn info(&self) -> RolloutInfo {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RolloutInfo> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Make `p` the active policy, and say so in the metrics.
pub fn activate(active: &ActivePolicy, state: &RolloutState, p: CompiledPolicy, source: String) {
    let old = active.current();
    metrics::gauge!(m::POLICY_INFO, "policy_id" => old.id.clone(), "policy_version" => old.version.clone()).set(0.0);
    metrics::gauge!(m::POLICY_INFO, "policy_id" => p.id.clone(), "policy_version" => p.version.clone()).set(1.0);
    metrics::counter!(m::POLICY_ACTIVATIONS_TOTAL).increment(1);
    tracing::info!(policy_id = %p.id, policy_version = %p.version, %source, "policy activated");
    active.swap(p);
    let mut g = state.lock();
    g.activations += 1;
    g.active_source = source;
}

fn supersede(state: &RolloutState, p: &CompiledPolicy, source: &str, effective: OffsetDateTime) {
    metrics::counter!(m::POLICY_SUPERSEDED_TOTAL).increment(1);
    tracing::warn!(
        %source,
        policy_version = %p.version,
        effective = %rfc3339(effective),
        "published policy superseded: one with a later effective time is already effective; not activated"
    );
    let mut g = state.lock();
    g.superseded += 1;
    g.last_superseded = Some(format!(
        "{source}: version {} effective {}",
        p.version,
        rfc3339(effective)
    ));
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// What [`Timeline::offer`] did with a policy.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Kept: it becomes active when [`Timeline::due`] reaches its time,
    /// unless a later one is due by then.
    Kept,
    /// Not kept: a policy with a later (effective time, offset) is already
    /// active, and time only moves forward, so this one can never be. The
    /// item is handed back (for the log line).
    Superseded(T),
}

/// What [`Timeline::due`] returns: the policy to activate now.
#[derive(Debug, PartialEq, Eq)]
pub struct Due<T> {
    /// Its effective time.
    pub effective: OffsetDateTime,
    /// Its offset on the policy topic.
    pub offset: i64,
    /// The policy.
    pub item: T,
    /// Policies that were due too but are superseded by this one (earlier
    /// effective time, or the same and an earlier offset): never activated.
    pub superseded: Vec<(OffsetDateTime, T)>,
}

/// The pure selection of the active policy from the policy topic and the
/// clock: the policy with the latest effective time at or before now, ties
/// going to the later offset (the policy topic has one partition).
///
/// Since time only moves forward, a policy superseded by one whose
/// effective time has already come can never become active again: the
/// timeline keeps only the key of the active policy and the pending ones
/// (in practice the scheduled, future ones).
#[derive(Debug)]
pub struct Timeline<T> {
    active: Option<(OffsetDateTime, i64)>,
    pending: BTreeMap<(OffsetDateTime, i64), T>,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Self {
            active: None,
            pending: BTreeMap::new(),
        }
    }
}

impl<T> Timeline<T> {
    /// A policy read at `offset`, taking effect at `effective`.
    pub fn offer(&mut self, effective: OffsetDateTime, offset: i64, item: T) -> Offer<T> {
        let key = (effective, offset);
        if self.active.is_some_and(|a| key <= a) {
            return Offer::Superseded(item);
        }
        self.pending.insert(key, item);
        Offer::Kept
    }

    /// The policy to activate at `now`, if another one than the active one
    /// is due: the pending one with the greatest (effective time, offset)
    /// at or before `now`. The other due ones are superseded by it.
    pub fn due(&mut self, now: OffsetDateTime) -> Option<Due<T>> {
        // Everything at or before (now, i64::MAX) is due; the rest waits.
        let waiting = self.pending.split_off(&(now, i64::MAX));
        let due = std::mem::replace(&mut self.pending, waiting);
        let mut due: Vec<_> = due.into_iter().collect();
        let ((effective, offset), item) = due.pop()?;
        self.active = Some((effective, offset));
        Some(Due {
            effective,
            offset,
            item,
            superseded: due.into_iter().map(|((t, _), p)| (t, p)).collect(),
        })
    }

    /// The effective time and offset of the active policy (`None` before
    /// the first one is due).
    pub fn active(&self) -> Option<(OffsetDateTime, i64)> {
        self.active
    }

    /// The pending policies in activation order, with their effective times.
    pub fn pending(&self) -> impl Iterator<Item = (OffsetDateTime, &T)> {
        self.pending.iter().map(|((t, _), p)| (*t, p))
    }
}

/// A header's value, if the record has it.
fn header<'m, M: Message>(msg: &'m M, name: &str) -> Option<&'m [u8]> {
    use rdkafka::message::Headers;
    msg.headers()
        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
}

fn reject_signature(state: &RolloutState, source: &str, r: &Rejection) {
    metrics::counter!(m::POLICY_SIGNATURE_REJECTED_TOTAL, "reason" => r.label()).increment(1);
    metrics::counter!(m::POLICY_REJECTED_TOTAL).increment(1);
    tracing::error!(%source, error = %r, "published policy rejected: signature; the previous policy stays active");
    let mut g = state.lock();
    g.rejected += 1;
    g.last_rejection = Some(format!("{source}: {r}"));
}

fn reject(state: &RolloutState, source: &str, e: &PolicyError) {
    metrics::counter!(m::POLICY_REJECTED_TOTAL).increment(1);
    tracing::error!(%source, error = %e, "published policy rejected; the previous policy stays active");
    let mut g = state.lock();
    g.rejected += 1;
    g.last_rejection = Some(format!("{source}: {e}"));
}

/// The effective time of a policy without `effective_from`: its record's
/// Kafka timestamp, the same on every instance.
fn record_time(ts: Timestamp, source: &str) -> Result<OffsetDateTime, PolicyError> {
    ts.to_millis()
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
        .ok_or_else(|| PolicyError::Io {
            path: source.to_string(),
            message: "no effective_from and no record timestamp: its effective time is unknown"
                .into(),
        })
}

/// Watch the policy topic until `shutdown`. Blocking: run it on its own
/// thread. Ready once the topic has been read to its end as of startup.
pub fn run(
    cfg: &Config,
    active: Arc<ActivePolicy>,
    state: Arc<RolloutState>,
    shutdown: CancellationToken,
) -> Result<(), RolloutError> {
    let topic = cfg.topics.policy.clone();
    let consumer: BaseConsumer<EofAwareContext> = crate::kafka::policy_watcher_config(cfg)
        .create_with_context(EofAwareContext {
            what: "policy watcher",
        })
        .map_err(|source| KafkaBoundaryError::Client {
            what: "policy watcher",
            source,
        })?;
    let Some(partitions) = crate::kafka::topic_partitions(&consumer, &topic, &shutdown)? else {
        return Ok(());
    };
    let mut targets = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        // Retried like the change feed's: right after the topic is created
        // its leader may not be known yet (NotLeaderForPartition).
        let high = loop {
            match consumer.fetch_watermarks(&topic, *p, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "policy watcher: watermarks not available yet");
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        targets.insert(*p, high);
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)
            .map_err(|source| KafkaBoundaryError::Client {
                what: "policy assignment",
                source,
            })?;
    }
    consumer
        .assign(&tpl)
        .map_err(|source| KafkaBoundaryError::Client {
            what: "policy assignment",
            source,
        })?;
    let mut caught: BTreeMap<i32, bool> = targets.iter().map(|(p, h)| (*p, *h == 0)).collect();
    let mut timeline: Timeline<(CompiledPolicy, String)> = Timeline::default();
    let trusted = TrustedKeys::parse(&cfg.policy.trusted_keys).map_err(|errs| {
        RolloutError::TrustedKeys(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    state.lock().trusted_keys = trusted.ids();

    while !shutdown.is_cancelled() {
        // Nothing is activated while the topic is read up to its startup
        // end: the policies read so far are not all there is, and no
        // request is decided before that anyway. Then the policy due now,
        // and later the scheduled ones as their time comes; ready only
        // after the first such activation.
        if state.is_ready() || caught.values().all(|c| *c) {
            let now = OffsetDateTime::now_utc();
            if let Some(due) = timeline.due(now) {
                for (t, (p, src)) in &due.superseded {
                    supersede(&state, p, src, *t);
                }
                let (p, src) = due.item;
                activate(&active, &state, p, src);
                state.lock().active_effective = Some(rfc3339(due.effective));
            }
            if !state.is_ready() {
                state.ready.store(true, Ordering::Release);
                tracing::info!("policy topic caught up");
            }
        }
        state.lock().scheduled = timeline
            .pending()
            .map(|(t, (p, _))| (rfc3339(t), p.version.clone()))
            .collect();

        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                caught.insert(p, true);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "policy watcher: consumer error"),
            Some(Ok(msg)) => {
                let (p, off) = (msg.partition(), msg.offset());
                state.lock().positions.insert(p, off + 1);
                if targets.get(&p).is_some_and(|t| off + 1 >= *t) {
                    caught.insert(p, true);
                }
                let source = format!("{topic}[{p}]@{off}");
                let Some(bytes) = msg.payload() else {
                    continue; // a tombstone retires a policy id; the active one stays
                };
                let signed_by = match trusted.verify(
                    bytes,
                    header(&msg, KEY_ID_HEADER),
                    header(&msg, SIGNATURE_HEADER),
                ) {
                    Ok(k) => k,
                    Err(r) => {
                        reject_signature(&state, &source, &r);
                        continue;
                    }
                };
                let source = match &signed_by {
                    Some(k) => format!("{source} signed by {k}"),
                    None => source,
                };
                let parsed = std::str::from_utf8(bytes)
                    .map_err(|e| PolicyError::Io {
                        path: source.clone(),
                        message: format!("not UTF-8: {e}"),
                    })
                    .and_then(|text| CompiledPolicy::from_toml_str(text, &source))
                    .and_then(|p| {
                        let effective = match p.effective_from {
                            Some(t) => t,
                            None => record_time(msg.timestamp(), &source)?,
                        };
                        Ok((effective, p))
                    });
                let (effective, p) = match parsed {
                    Err(e) => {
                        reject(&state, &source, &e);
                        continue;
                    }
                    Ok(x) => x,
                };
                if effective > OffsetDateTime::now_utc() {
                    tracing::info!(policy_version = %p.version, effective = %rfc3339(effective), %source, "policy scheduled");
                    metrics::counter!(m::POLICY_SCHEDULED_TOTAL).increment(1);
                }
                if let Offer::Superseded((p, source)) = timeline.offer(effective, off, (p, source))
                {
                    supersede(&state, &p, &source, effective);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_swaps_whole_policy_and_counts() {
        let active = ActivePolicy::new(CompiledPolicy::example());
        let state = RolloutState::default();
        let mut p = CompiledPolicy::example();
        p.version = "next".into();
        let before = active.current();
        activate(&active, &state, p, "test".into());
        assert_eq!(
            before.version,
            CompiledPolicy::example().version,
            "old Arc unchanged"
        );
        assert_eq!(active.current().version, "next");
        assert_eq!(state.info().activations, 1);
        assert_eq!(state.info().active_source, "test");
    }

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s)
    }

    #[test]
    fn the_latest_effective_time_wins_whatever_the_offset_order() {
        // Offset order: "late" (effective 20) before "early" (effective 10).
        let mut t = Timeline::default();
        assert_eq!(t.offer(at(20), 0, "late"), Offer::Kept);
        assert_eq!(t.offer(at(10), 1, "early"), Offer::Kept);
        let d = t.due(at(30)).unwrap();
        assert_eq!((d.item, d.effective, d.offset), ("late", at(20), 0));
        assert_eq!(d.superseded, vec![(at(10), "early")]);
        assert_eq!(t.active(), Some((at(20), 0)));
        assert_eq!(t.due(at(40)), None, "nothing else is due");
    }

    #[test]
    fn equal_effective_times_go_to_the_later_offset() {
        let mut t = Timeline::default();
        t.offer(at(10), 3, "later");
        t.offer(at(10), 2, "earlier");
        let d = t.due(at(10)).unwrap();
        assert_eq!((d.item, d.offset), ("later", 3));
        assert_eq!(d.superseded, vec![(at(10), "earlier")]);
        // Read late with the same effective time and an earlier offset:
        // superseded; with a later offset: it wins.
        assert_eq!(t.offer(at(10), 1, "older"), Offer::Superseded("older"));
        assert_eq!(t.offer(at(10), 4, "newest"), Offer::Kept);
        assert_eq!(t.due(at(11)).unwrap().item, "newest");
    }

    #[test]
    fn future_policies_activate_in_order_as_their_times_come() {
        let mut t = Timeline::default();
        t.offer(at(0), 0, "now");
        t.offer(at(30), 1, "third");
        t.offer(at(20), 2, "second");
        assert_eq!(t.due(at(5)).unwrap().item, "now");
        assert_eq!(
            t.pending().map(|(e, p)| (e, *p)).collect::<Vec<_>>(),
            [(at(20), "second"), (at(30), "third")]
        );
        assert_eq!(t.due(at(19)), None, "not early");
        assert_eq!(t.due(at(20)).unwrap().item, "second");
        assert_eq!(t.due(at(29)), None);
        let d = t.due(at(31)).unwrap();
        assert_eq!((d.item, d.superseded.len()), ("third", 0));
        assert_eq!(t.pending().count(), 0);
        // Two whose times both passed between looks: only the later is
        // activated, the other never is.
        t.offer(at(40), 3, "a");
        t.offer(at(50), 4, "b");
        let d = t.due(at(60)).unwrap();
        assert_eq!((d.item, d.superseded), ("b", vec![(at(40), "a")]));
    }

    #[test]
    fn late_read_older_policies_are_superseded() {
        let mut t = Timeline::default();
        t.offer(at(100), 0, "scheduled earlier, effective now");
        assert_eq!(
            t.due(at(150)).unwrap().item,
            "scheduled earlier, effective now"
        );
        // Published later (higher offset) but effective before the active one.
        assert_eq!(t.offer(at(90), 1, "older"), Offer::Superseded("older"));
        assert_eq!(t.due(at(200)), None, "the active one stays");
        assert_eq!(t.active(), Some((at(100), 0)));
        // A later effective time, even in the past of now, is kept.
        assert_eq!(t.offer(at(120), 2, "newer"), Offer::Kept);
        assert_eq!(t.due(at(200)).unwrap().item, "newer");
    }

    #[test]
    fn nothing_is_due_before_the_first_effective_time() {
        let mut t = Timeline::default();
        assert_eq!(t.due(at(0)), None);
        t.offer(at(10), 0, "p");
        assert_eq!(t.due(at(9)), None);
        assert_eq!(t.active(), None, "the file policy stays active");
        assert_eq!(t.due(at(10)).unwrap().item, "p");
    }

    #[test]
    fn record_time_is_the_kafka_timestamp() {
        assert_eq!(
            record_time(Timestamp::CreateTime(1_500), "s").unwrap(),
            OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1_500)
        );
        assert_eq!(
            record_time(Timestamp::LogAppendTime(2_000), "s").unwrap(),
            at(2)
        );
        assert!(record_time(Timestamp::NotAvailable, "s").is_err());
    }

    #[test]
    fn superseded_policies_are_recorded() {
        let state = RolloutState::default();
        supersede(&state, &CompiledPolicy::example(), "t[0]@1", at(0));
        let info = state.info();
        assert_eq!(info.superseded, 1);
        assert!(info
            .last_superseded
            .unwrap()
            .starts_with("t[0]@1: version 2026.12.1"));
    }

    #[test]
    fn rejection_is_recorded() {
        let state = RolloutState::default();
        let e = CompiledPolicy::from_toml_str("not = [valid", "x.toml").unwrap_err();
        reject(&state, "x.toml", &e);
        let info = state.info();
        assert_eq!(info.rejected, 1);
        assert!(info.last_rejection.unwrap().starts_with("x.toml"));
    }
}
