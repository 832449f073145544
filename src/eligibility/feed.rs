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

    /// A batch was applied: `applied` records, after which each partition
    /// of `nexts` is at its offset. One lock per batch, not per record.
    fn advance(&self, applied: u64, nexts: &BTreeMap<i32, i64>) {
        let mut g = self.lock();
        g.applied += applied;
        let mut reached = false;
        for (&partition, &next) in nexts {
            g.positions.insert(partition, next);
            let target = g.startup_high_watermarks.get(&partition).copied();
            if !self.is_ready() && target.is_some_and(|t| next >= t) {
                g.caught_up.insert(partition, true);
                reached = true;
            }
        }
        if reached && g.caught_up.values().all(|c| *c) {
            drop(g);
            self.mark_ready();
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

/// A batch at least this large is decoded and applied on two threads.
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

/// Decode one record: pure (a batch is decoded on two threads).
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

/// The lane (0 or 1) of a record: a hash of its key (FNV-1a, then
/// MurmurHash3's finalizer to mix every byte into the low bit), so that
/// every record of one key is in the same lane.
fn lane(key: Option<&[u8]>) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.unwrap_or_default() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h & 1) as u8
}

/// Decode and apply a batch, then advance each partition to the end of the
/// batch (and the readiness with it).
///
/// A large batch is split into two lanes by key ([`lane`]), each decoded
/// and applied in the batch's order on a thread of its own: the records of
/// one key (a tombstone and the record after it) are applied in their
/// order, and records of different keys do not depend on each other (the
/// store is concurrent; a deletion marker is read and written under its
/// key's map entry). The positions move only once both lanes are done, so
/// a snapshot (captured between batches) never has a position ahead of the
/// records applied. One thing does depend on the interleaving: when the
/// deletion markers are at their bound (`engine.deletion_markers_max`),
/// which of one batch's markers counts as oldest and is evicted first.
fn apply_batch<M: Message + Sync>(
    store: &Store,
    state: &FeedState,
    deadletters: &DeadLetterSink,
    topic: &str,
    max_bytes: usize,
    batch: &[M],
) {
    let apply = |msg: &M| commit(store, deadletters, topic, msg, prepare(msg, max_bytes));
    if batch.len() < PARALLEL_MIN {
        batch.iter().for_each(apply);
    } else {
        let lanes: Vec<u8> = batch.iter().map(|m| lane(m.key())).collect();
        let run = |which: u8| {
            for (m, _) in batch.iter().zip(&lanes).filter(|(_, l)| **l == which) {
                apply(m);
            }
        };
        std::thread::scope(|s| {
            let other = std::thread::Builder::new()
                .name("clearance-feed-apply".into())
                .spawn_scoped(s, || run(1));
            run(0);
            match other {
                // A panic is a bug (bad input is an error value,
                // dead-lettered): the feed fails as it would on one thread.
                Ok(h) => {
                    if let Err(panic) = h.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                // No second thread: its lane is applied here, after the
                // first (records of different keys do not depend on each
                // other).
                Err(e) => {
                    tracing::warn!(error = %e, "change feed: no second apply thread");
                    run(1);
                }
            }
        });
    }
    let mut nexts = BTreeMap::new();
    for m in batch {
        let next = nexts.entry(m.partition()).or_insert(0);
        *next = (*next).max(m.offset() + 1);
    }
    if let Some(ts) = batch.iter().rev().find_map(|m| m.timestamp().to_millis()) {
        state.last_record_ms.store(ts, Ordering::Relaxed);
    }
    state.advance(batch.len() as u64, &nexts);
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

    /// A record of one of `keys` users: each key's versions rise through
    /// the batch, with tombstones and undecodable documents among them.
    fn keyed(i: usize, keys: usize) -> OwnedMessage {
        let k = i % keys;
        let version = (i / keys + 1) as u64;
        let key = format!("user:u{k}");
        let payload = match (i / keys) % 5 {
            // A tombstone, then (next round) a newer record: applied out
            // of order, the newer record would be deleted.
            2 => None,
            4 if k.is_multiple_of(3) => Some(b"{not json".to_vec()),
            _ => {
                let mut u = crate::bench::cache::record(k);
                u.id = format!("u{k}");
                u.version = version;
                Some(serde_json::to_vec(&EligibilityRecord::User(u)).unwrap())
            }
        };
        OwnedMessage::new(
            payload,
            Some(key.into_bytes()),
            "eligibility.changes".into(),
            Timestamp::CreateTime(1_000 + i as i64),
            (k % 3) as i32,
            (i / 3) as i64,
            None,
        )
    }

    fn sink() -> DeadLetterSink {
        // No broker: dead letters stay queued, which is all this needs.
        let producer = crate::pipeline::producer::create(
            ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9")
                .set("linger.ms", "60000")
                .clone(),
            "test",
        )
        .unwrap();
        DeadLetterSink::new(producer, "dl".into(), 1024, CancellationToken::new())
    }

    /// What a store holds of `keys` users: each one's version, or its
    /// deletion marker.
    fn contents(store: &Store, keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let id = format!("u{k}");
                match store.user(&id) {
                    Some(u) => format!("{id} v{}", u.version),
                    None => format!(
                        "{id} deleted at {:?}",
                        store.deletion_marker(KeyKind::User, &id)
                    ),
                }
            })
            .collect()
    }

    /// Each partition of `batch` and the offset after its last record
    /// there (worked out here, not with the feed's own code).
    fn next_offsets(batch: &[OwnedMessage]) -> BTreeMap<i32, i64> {
        let mut next = BTreeMap::new();
        for m in batch {
            let o = next.entry(m.partition()).or_insert(0);
            *o = (*o).max(m.offset() + 1);
        }
        next
    }

    #[test]
    fn a_batch_applied_on_two_lanes_leaves_what_one_by_one_leaves() {
        let keys = 97;
        // 22 rounds, then a 23rd (tombstones) for the first 40 keys.
        let batch: Vec<OwnedMessage> = (0..keys * 22 + 40).map(|i| keyed(i, keys)).collect();
        assert!(batch.len() >= PARALLEL_MIN);
        // Both lanes have work.
        let ones = batch.iter().filter(|m| lane(m.key()) == 1).count();
        assert!(
            ones > batch.len() / 4 && ones < batch.len() * 3 / 4,
            "{ones}"
        );
        let dl = sink();
        let lanes = Store::new();
        let state = FeedState::default();
        state.start((0..3).map(|p| (p, 1_000_000)).collect(), &BTreeMap::new());
        apply_batch(&lanes, &state, &dl, "eligibility.changes", 1 << 20, &batch);
        let one_by_one = Store::new();
        for m in &batch {
            commit(
                &one_by_one,
                &dl,
                "eligibility.changes",
                m,
                prepare(m, 1 << 20),
            );
        }
        let got = contents(&lanes, keys);
        assert_eq!(got, contents(&one_by_one, keys));
        // Some keys end deleted, the others with a record.
        assert!(got.iter().any(|g| g.contains("deleted at Some")), "{got:?}");
        assert!(got.iter().any(|g| g.contains(" v")), "{got:?}");
        assert_eq!(lanes.user_count(), one_by_one.user_count());
        assert_eq!(
            lanes.deletion_marker_count(),
            one_by_one.deletion_marker_count()
        );
        // Each partition is at the end of the batch, once, after both lanes.
        let pos = state.positions();
        assert_eq!(pos.applied, batch.len() as u64);
        assert_eq!(pos.positions, next_offsets(&batch));
        assert_eq!(state.last_record_ms(), 1_000 + batch.len() as i64 - 1);
        assert!(!state.is_ready(), "the high watermarks are far ahead");
    }

    #[test]
    fn a_batch_that_reaches_every_high_watermark_makes_the_feed_ready() {
        let batch: Vec<OwnedMessage> = (0..PARALLEL_MIN + 5).map(|i| keyed(i, 10)).collect();
        let state = FeedState::default();
        state.start(next_offsets(&batch), &BTreeMap::new());
        assert!(!state.is_ready());
        let (store, dl) = (Store::new(), sink());
        let apply = |part: &[OwnedMessage]| apply_batch(&store, &state, &dl, "t", 1 << 20, part);
        let (head, last) = batch.split_at(batch.len() - 1);
        apply(head);
        assert!(!state.is_ready(), "one record short of a high watermark");
        apply(last);
        assert!(state.is_ready());
    }

    #[test]
    fn a_record_over_the_size_bound_is_an_error() {
        let batch: Vec<OwnedMessage> = (3..6).map(|i| keyed(i, 10)).collect();
        assert!(batch.iter().all(|m| prepare(m, 10).is_err()));
        assert!(batch.iter().all(|m| prepare(m, 1 << 20).is_ok()));
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
