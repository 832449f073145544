//! The change-feed task: reads every partition of the compacted eligibility
//! topic (no consumer group: it must see every key), applies each record to
//! the [`Store`] by per-key version, and tracks its position per partition.
//!
//! Readiness: the feed is *caught up* once every partition has reached the
//! high watermark seen at startup. The engine decides no request before that.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::packed::PackedUser;
use super::{Applied, Store};
use crate::config::Config;
use crate::event::{
    check_size, decode_eligibility, parse_eligibility_key, DecodeError, EligibilityRecord, KeyKind,
    OrgRecord,
};
use crate::kafka::KafkaBoundaryError;
use crate::metrics as m;
use crate::pipeline::deadletter::{DeadLetterSink, Origin, Source};

/// Position and readiness of the change feed, shared with the admin API.
#[derive(Debug, Default)]
pub struct FeedState {
    ready: AtomicBool,
    stale: AtomicBool,
    /// Staleness bound in ms (0: never stale).
    bound_ms: AtomicI64,
    inner: Mutex<FeedPositions>,
    last_record_ms: AtomicI64,
}

/// Per-partition positions of the feed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FeedPositions {
    /// Next offset to apply, per partition.
    pub positions: BTreeMap<i32, i64>,
    /// High watermarks seen at startup, per partition.
    pub startup_high_watermarks: BTreeMap<i32, i64>,
    /// Partitions that have reached their startup high watermark.
    pub caught_up: BTreeMap<i32, bool>,
    /// Records applied since start.
    pub applied: u64,
    /// Last time (ms since the epoch) each partition was confirmed caught
    /// up with its high watermark while its leader was reachable.
    pub caught_up_at_ms: BTreeMap<i32, i64>,
    /// Whether the data is stale (not confirmed caught up within the bound).
    pub stale: bool,
}

impl FeedState {
    /// A state whose data goes stale after `bound` without confirmation
    /// that the feed is caught up (zero: never).
    pub fn with_staleness_bound(bound: Duration) -> Self {
        let s = Self::default();
        s.bound_ms.store(
            bound.as_millis().min(i64::MAX as u128) as i64,
            Ordering::Relaxed,
        );
        s
    }

    /// Whether the eligibility data is stale: the feed has not been
    /// confirmed caught up within the staleness bound (outage or lag).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Partition `p` was seen caught up (at its high watermark) now.
    fn confirm(&self, g: &mut FeedPositions, p: i32) {
        g.caught_up_at_ms.insert(p, now_ms());
    }

    /// Recompute the staleness flag.
    fn refresh_staleness(&self) {
        let bound = self.bound_ms.load(Ordering::Relaxed);
        if bound <= 0 || !self.is_ready() {
            return;
        }
        let now = now_ms();
        let mut g = self.lock();
        let oldest = g.caught_up_at_ms.values().copied().min().unwrap_or(now);
        let stale = now - oldest > bound;
        g.stale = stale;
        drop(g);
        if self.stale.swap(stale, Ordering::Relaxed) != stale {
            if stale {
                tracing::warn!(
                    bound_ms = bound,
                    "eligibility data is stale: controlled models are denied until the change feed catches up"
                );
            } else {
                tracing::info!("eligibility data fresh again");
            }
            metrics::gauge!(m::FEED_STALE).set(if stale { 1.0 } else { 0.0 });
        }
    }

    /// Whether the feed has caught up with the startup high watermarks.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A copy of the positions.
    pub fn positions(&self) -> FeedPositions {
        self.lock().clone()
    }

    /// Kafka timestamp (ms since the epoch) of the last applied record, or 0.
    pub fn last_record_ms(&self) -> i64 {
        self.last_record_ms.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedPositions> {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, highs: BTreeMap<i32, i64>, starts: &BTreeMap<i32, i64>) {
        let mut g = self.lock();
        let now = now_ms();
        g.caught_up_at_ms = highs.keys().map(|p| (*p, now)).collect();
        g.caught_up = highs
            .iter()
            .map(|(p, h)| (*p, starts.get(p).copied().unwrap_or(0) >= *h))
            .collect();
        g.positions = starts.clone();
        g.startup_high_watermarks = highs;
        let all = g.caught_up.values().all(|c| *c);
        drop(g);
        if all {
            self.mark_ready();
        }
    }

    fn advance(&self, partition: i32, next: i64) {
        let mut g = self.lock();
        g.applied += 1;
        g.positions.insert(partition, next);
        let target = g.startup_high_watermarks.get(&partition).copied();
        if !self.is_ready() && target.is_some_and(|t| next >= t) {
            g.caught_up.insert(partition, true);
            if g.caught_up.values().all(|c| *c) {
                drop(g);
                self.mark_ready();
            }
        }
    }

    fn eof(&self, partition: i32) {
        let mut g = self.lock();
        self.confirm(&mut g, partition);
        if self.is_ready() {
            return;
        }
        g.caught_up.insert(partition, true);
        if g.caught_up.values().all(|c| *c) {
            drop(g);
            self.mark_ready();
        }
    }

    fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("eligibility feed caught up; engine ready");
            metrics::gauge!(m::READY).set(1.0);
        }
    }
}

/// Errors of the change-feed task.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Kafka client or metadata failure.
    #[error(transparent)]
    Kafka(#[from] KafkaBoundaryError),
    /// The eligibility topic does not exist.
    #[error("eligibility topic {0} does not exist (run `clearance topics create`)")]
    MissingTopic(String),
}

struct FeedContext {
    topic: String,
    state: Arc<FeedState>,
}

impl ClientContext for FeedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            // End of a partition is progress, not an error.
            KafkaError::PartitionEOF(p) => self.state.eof(p),
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            e => {
                crate::kafka::report_client_error("change feed", &e, reason);
                tracing::warn!(error = %e, reason, "change feed client error")
            }
        }
    }

    fn stats(&self, stats: Statistics) {
        let now_ms = now_ms();
        let last = self.state.last_record_ms();
        if last > 0 {
            metrics::gauge!(m::FEED_LAST_RECORD_AGE_SECONDS)
                .set((now_ms - last).max(0) as f64 / 1000.0);
        }
        let up: Vec<i32> = stats
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .map(|b| b.nodeid)
            .collect();
        if !up.is_empty() {
            // An authenticated connection: a recorded authentication
            // failure older than a few statistics intervals is over.
            crate::kafka::auth_recovered(Duration::from_secs(3));
        }
        let mut g = self.state.lock();
        if let Some(t) = stats.topics.get(&self.topic) {
            for (p, ps) in &t.partitions {
                if *p < 0 {
                    continue;
                }
                let pos = g.positions.get(p).copied().unwrap_or(ps.lo_offset.max(0));
                let lag = (ps.hi_offset - pos).max(0);
                metrics::gauge!(m::FEED_LAG_MESSAGES, "partition" => p.to_string()).set(lag as f64);
                // Fresh: the leader answers, and nothing is left to apply.
                if lag == 0 && ps.hi_offset >= 0 && up.contains(&ps.leader) {
                    self.state.confirm(&mut g, *p);
                }
            }
        }
        drop(g);
        self.state.refresh_staleness();
    }
}
impl ConsumerContext for FeedContext {}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Run the change feed until `shutdown` is cancelled. Blocking: call it on a
/// dedicated thread (`spawn_blocking`).
///
/// `start_positions` lets a caller resume from known offsets (absent
/// partitions start at the beginning).
pub fn run(
    cfg: &Config,
    store: Arc<Store>,
    state: Arc<FeedState>,
    deadletters: DeadLetterSink,
    start_positions: BTreeMap<i32, i64>,
    shutdown: CancellationToken,
) -> Result<(), FeedError> {
    let topic = cfg.topics.eligibility.clone();
    let cc: ClientConfig = crate::kafka::feed_consumer_config(cfg);
    let consumer: BaseConsumer<FeedContext> = cc
        .create_with_context(FeedContext {
            topic: topic.clone(),
            state: Arc::clone(&state),
        })
        .map_err(|source| KafkaBoundaryError::Client {
            what: "feed consumer",
            source,
        })?;

    // Partitions and startup high watermarks, retried while the broker is
    // unreachable.
    let partitions = match crate::kafka::topic_partitions(&consumer, &topic, &shutdown) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(()),
        Err(KafkaBoundaryError::Topic { .. }) => return Err(FeedError::MissingTopic(topic)),
        Err(e) => return Err(e.into()),
    };
    let mut highs = BTreeMap::new();
    for p in &partitions {
        let (_, high) = loop {
            match consumer.fetch_watermarks(&topic, *p, Duration::from_secs(5)) {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "change feed: watermarks not available yet");
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        highs.insert(*p, high);
    }
    tracing::info!(topic = %topic, ?highs, "change feed: startup high watermarks");

    let mut tpl = TopicPartitionList::new();
    let mut starts = BTreeMap::new();
    for p in &partitions {
        let start = start_positions.get(p).copied();
        let offset = start.map(Offset::Offset).unwrap_or(Offset::Beginning);
        starts.insert(*p, start.unwrap_or(0));
        tpl.add_partition_offset(&topic, *p, offset)
            .map_err(|source| KafkaBoundaryError::Client {
                what: "feed assignment",
                source,
            })?;
    }
    consumer
        .assign(&tpl)
        .map_err(|source| KafkaBoundaryError::Client {
            what: "feed assignment",
            source,
        })?;
    state.start(highs, &starts);
    update_counts(&store);

    let snapshot_every = Duration::from_secs(cfg.engine.snapshot_interval_secs);
    let mut last_snapshot = std::time::Instant::now();
    let mut snapshots = cfg
        .engine
        .snapshot_path
        .clone()
        .map(super::snapshot::BackgroundWriter::new);
    // Between two polls the store and the positions agree: capture the view
    // here, write it on the snapshot thread while the feed goes on.
    let capture =
        |state: &FeedState| super::snapshot::View::capture(&store, &state.positions().positions);
    let mut since_counts = 0u32;
    while !shutdown.is_cancelled() {
        state.refresh_staleness();
        if let Some(w) = snapshots.as_mut() {
            if state.is_ready() && last_snapshot.elapsed() >= snapshot_every && !w.busy() {
                w.start(capture(&state));
                last_snapshot = std::time::Instant::now();
            }
        }
        // A batch: what is already fetched, after a first poll that may
        // wait. It ends at an end of partition, which is handled after
        // the batch is applied (never ready before its records are in).
        let mut batch = Vec::new();
        let mut eof = None;
        let mut wait = Duration::from_millis(100);
        while batch.len() < BATCH_MAX {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(msg)) => batch.push(msg),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof = Some(p);
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "change feed: consumer error (librdkafka retries)");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if batch.is_empty() && eof.is_none() {
            update_counts(&store);
            continue;
        }
        apply_batch(
            &store,
            &state,
            &deadletters,
            &topic,
            cfg.engine.max_input_bytes,
            &batch,
        );
        drop(batch);
        since_counts += 1;
        if since_counts >= COUNTS_EVERY_BATCHES || eof.is_some() {
            since_counts = 0;
            update_counts(&store);
        }
        if let Some(p) = eof {
            state.eof(p);
        }
    }
    if let Some(w) = snapshots.as_mut() {
        if state.is_ready() {
            w.finish(
                capture(&state),
                Duration::from_millis(cfg.engine.shutdown_timeout_ms),
            );
        }
    }
    Ok(())
}

/// The record-count gauges are set after this many batches, at each end
/// of a partition and whenever a poll finds nothing: during a bootstrap
/// that is a few times a second, not three gauge lookups per record.
const COUNTS_EVERY_BATCHES: u32 = 4;

/// At most this many records are polled, then applied, at a time.
const BATCH_MAX: usize = 4096;

/// A batch at least this large is decoded on two threads.
const PARALLEL_MIN: usize = 512;

fn update_counts(store: &Store) {
    metrics::gauge!(m::ELIGIBILITY_RECORDS, "kind" => "user").set(store.user_count() as f64);
    metrics::gauge!(m::ELIGIBILITY_RECORDS, "kind" => "organization").set(store.org_count() as f64);
    metrics::gauge!(m::DELETION_MARKERS).set(store.deletion_marker_count() as f64);
}

/// A change-feed record decoded (and a user packed), ready to apply.
enum Change {
    User(PackedUser),
    Organization(OrgRecord),
    Delete(KeyKind, String),
}

/// Decode one record: pure, so a batch is decoded on two threads.
fn prepare<M: Message>(msg: &M, max_bytes: usize) -> Result<Change, DecodeError> {
    let key = msg.key().unwrap_or_default();
    match msg.payload() {
        None => parse_eligibility_key(key).map(|(kind, id)| Change::Delete(kind, id.to_string())),
        Some(bytes) => check_size(bytes, max_bytes)
            .and_then(|()| decode_eligibility(key, bytes))
            .map(|rec| match rec {
                EligibilityRecord::User(u) => Change::User(PackedUser::pack(&u)),
                EligibilityRecord::Organization(o) => Change::Organization(o),
            }),
    }
}

/// Decode a batch, on a second thread for the second half when it is
/// large (decoding is most of a record's cost; the order is kept).
fn prepare_all<M: Message + Sync>(
    batch: &[M],
    max_bytes: usize,
) -> Vec<Result<Change, DecodeError>> {
    let one = |part: &[M]| -> Vec<_> { part.iter().map(|m| prepare(m, max_bytes)).collect() };
    if batch.len() < PARALLEL_MIN {
        return one(batch);
    }
    let (first, second) = batch.split_at(batch.len() / 2);
    std::thread::scope(|s| {
        let other = std::thread::Builder::new()
            .name("clearance-feed-decode".into())
            .spawn_scoped(s, || one(second));
        let mut out = one(first);
        match other {
            Ok(h) => match h.join() {
                Ok(rest) => out.extend(rest),
                // A decoder does not panic (bad input is an error value);
                // if it did, decode its half here rather than lose it.
                Err(_) => out.extend(one(second)),
            },
            Err(_) => out.extend(one(second)),
        }
        out
    })
}

/// Decode a batch, then apply it in order (per partition, offsets only
/// move forward), advancing each record's partition.
fn apply_batch<M: Message + Sync>(
    store: &Store,
    state: &FeedState,
    deadletters: &DeadLetterSink,
    topic: &str,
    max_bytes: usize,
    batch: &[M],
) {
    let changes = prepare_all(batch, max_bytes);
    for (msg, change) in batch.iter().zip(changes) {
        commit(store, deadletters, topic, msg, change);
        if let Some(ts) = msg.timestamp().to_millis() {
            state.last_record_ms.store(ts, Ordering::Relaxed);
        }
        state.advance(msg.partition(), msg.offset() + 1);
    }
}

/// Apply one decoded record, or dead-letter the one that did not decode.
fn commit<M: Message>(
    store: &Store,
    deadletters: &DeadLetterSink,
    topic: &str,
    msg: &M,
    change: Result<Change, DecodeError>,
) {
    let result = change.map(|c| match c {
        Change::User(u) => store.apply_packed(u),
        Change::Organization(o) => store.apply(EligibilityRecord::Organization(o)),
        Change::Delete(kind, id) => store.delete(kind, &id),
    });
    match result {
        Ok(applied) => {
            let label = match applied {
                Applied::Inserted => "inserted",
                Applied::Updated => "updated",
                Applied::Stale => "stale",
                Applied::Deleted => "deleted",
                Applied::Absent => "absent",
            };
            m::hot::feed_applied(label);
        }
        Err(e) => {
            m::hot::feed_applied("invalid");
            tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "change feed: invalid record dead-lettered");
            let origin = Origin {
                topic,
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key(),
            };
            if let Err(e) = deadletters.send(
                Source::Eligibility,
                &e,
                &origin,
                msg.payload().unwrap_or_default(),
                None,
            ) {
                tracing::error!(error = %e, "change feed: dead letter not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    fn msg(i: usize) -> OwnedMessage {
        let id = format!("u{i}");
        let (key, payload) = match i % 7 {
            // A tombstone.
            0 => (format!("user:{id}"), None),
            // Not JSON: an error, in its place.
            1 => (format!("user:{id}"), Some(b"{not json".to_vec())),
            // A key that does not match the document.
            2 => (
                "user:someone-else".to_string(),
                Some(
                    serde_json::to_vec(&EligibilityRecord::User(crate::bench::cache::record(i)))
                        .unwrap(),
                ),
            ),
            _ => (
                format!("user:{id}"),
                Some(
                    serde_json::to_vec(&EligibilityRecord::User(crate::bench::cache::record(i)))
                        .unwrap(),
                ),
            ),
        };
        OwnedMessage::new(
            payload,
            Some(key.into_bytes()),
            "eligibility.changes".into(),
            Timestamp::NotAvailable,
            (i % 3) as i32,
            i as i64,
            None,
        )
    }

    fn describe(c: &Result<Change, DecodeError>) -> String {
        match c {
            Ok(Change::User(u)) => format!("user {} v{}", u.id(), u.version()),
            Ok(Change::Organization(o)) => format!("org {}", o.id),
            Ok(Change::Delete(k, id)) => format!("delete {k:?} {id}"),
            Err(e) => format!("error {e}"),
        }
    }

    #[test]
    fn a_large_batch_decoded_on_two_threads_keeps_every_record_in_order() {
        // The last record (1,543 % 7 = 3) is a user.
        let batch: Vec<OwnedMessage> = (0..PARALLEL_MIN * 3 + 8).map(msg).collect();
        let parallel = prepare_all(&batch, 1 << 20);
        let one_by_one: Vec<_> = batch.iter().map(|m| prepare(m, 1 << 20)).collect();
        assert_eq!(parallel.len(), batch.len());
        let a: Vec<String> = parallel.iter().map(describe).collect();
        let b: Vec<String> = one_by_one.iter().map(describe).collect();
        assert_eq!(a, b);
        // Each kind is there, in its place.
        assert!(a[0].starts_with("delete User u0"), "{}", a[0]);
        assert!(a[1].starts_with("error"), "{}", a[1]);
        assert!(
            a[2].starts_with("error") && a[2].contains("key"),
            "{}",
            a[2]
        );
        assert_eq!(a[3], "user u3 v1");
        assert_eq!(a[batch.len() - 1], format!("user u{} v1", batch.len() - 1));
    }

    #[test]
    fn a_record_over_the_size_bound_is_an_error_in_its_place() {
        let batch: Vec<OwnedMessage> = (3..6).map(msg).collect();
        let got: Vec<String> = prepare_all(&batch, 10).iter().map(describe).collect();
        assert!(got.iter().all(|g| g.starts_with("error")), "{got:?}");
    }

    /// The general path alone: serde's internally tagged enum.
    fn general(key: &str, text: &str) -> Result<EligibilityRecord, String> {
        crate::event::decode_eligibility_general(key.as_bytes(), text.as_bytes())
            .map_err(|e| e.to_string())
    }

    proptest::proptest! {
        /// The feed's fast path (`kind` first, read in one pass) decodes
        /// every user document to exactly what the general path gives.
        #[test]
        fn the_kind_first_path_agrees_with_the_general_one(u in crate::eligibility::packed::tests::user()) {
            proptest::prop_assume!(!u.id.is_empty());
            let text = serde_json::to_string(&EligibilityRecord::User(u.clone())).unwrap();
            proptest::prop_assert!(text.starts_with(r#"{"kind":"user""#), "{}", text);
            let key = format!("user:{}", u.id);
            let fast = decode_eligibility(key.as_bytes(), text.as_bytes()).map_err(|e| e.to_string());
            let reference = general(&key, &text);
            proptest::prop_assert_eq!(&fast, &reference);
            if let (Ok(a), Ok(b)) = (&fast, &reference) {
                proptest::prop_assert_eq!(
                    serde_json::to_string(a).unwrap(),
                    serde_json::to_string(b).unwrap()
                );
            }
        }
    }

    #[test]
    fn documents_the_fast_path_does_not_take_still_decode_or_fail_as_before() {
        let u = crate::bench::cache::record(3);
        let doc = serde_json::to_value(EligibilityRecord::User(u.clone())).unwrap();
        let mut fields = doc.as_object().unwrap().clone();
        fields.remove("kind");
        // `kind` last: the general path.
        let mut last = serde_json::to_string(&fields).unwrap();
        last.insert_str(last.len() - 1, r#","kind":"user""#);
        assert_eq!(
            decode_eligibility(b"user:u3", last.as_bytes()).unwrap(),
            EligibilityRecord::User(u.clone())
        );
        // `kind` twice: refused, as the general path refuses it.
        let twice = last.replacen('{', r#"{"kind":"user","#, 1);
        let e = decode_eligibility(b"user:u3", twice.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
        assert_eq!(general("user:u3", &twice).unwrap_err(), e.to_string());
        // An organization's kind under a user's key: the general path's
        // error (the key does not match).
        let org = r#"{"kind":"organization","id":"u3","version":1}"#;
        assert!(decode_eligibility(b"user:u3", org.as_bytes()).is_err());
        // Trailing bytes after the document: refused.
        let text = serde_json::to_string(&doc).unwrap() + " x";
        assert!(decode_eligibility(b"user:u3", text.as_bytes()).is_err());
    }
}
