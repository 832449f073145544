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

use super::{Applied, Store};
use crate::config::Config;
use crate::event::{check_size, decode_eligibility, parse_eligibility_key, DecodeError};
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
        match consumer.poll(Duration::from_millis(100)) {
            None => update_counts(&store),
            Some(Ok(msg)) => {
                let (p, off) = (msg.partition(), msg.offset());
                apply(
                    &store,
                    &deadletters,
                    &topic,
                    cfg.engine.max_input_bytes,
                    &msg,
                );
                if let Some(ts) = msg.timestamp().to_millis() {
                    state.last_record_ms.store(ts, Ordering::Relaxed);
                }
                state.advance(p, off + 1);
                since_counts += 1;
                if since_counts >= COUNTS_EVERY {
                    since_counts = 0;
                    update_counts(&store);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                update_counts(&store);
                state.eof(p);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "change feed: consumer error (librdkafka retries)");
            }
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

/// The record-count gauges are set after this many records, at each end
/// of a partition and whenever a poll finds nothing: during a bootstrap
/// that is a few times a second, not three gauge lookups per record.
const COUNTS_EVERY: u32 = 4096;

fn update_counts(store: &Store) {
    metrics::gauge!(m::ELIGIBILITY_RECORDS, "kind" => "user").set(store.user_count() as f64);
    metrics::gauge!(m::ELIGIBILITY_RECORDS, "kind" => "organization").set(store.org_count() as f64);
    metrics::gauge!(m::DELETION_MARKERS).set(store.deletion_marker_count() as f64);
}

fn apply<M: Message>(
    store: &Store,
    deadletters: &DeadLetterSink,
    topic: &str,
    max_bytes: usize,
    msg: &M,
) {
    let key = msg.key().unwrap_or_default();
    let result: Result<Applied, DecodeError> = match msg.payload() {
        None => parse_eligibility_key(key).map(|(kind, id)| store.delete(kind, id)),
        Some(bytes) => check_size(bytes, max_bytes)
            .and_then(|()| decode_eligibility(key, bytes))
            .map(|rec| store.apply(rec)),
    };
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
