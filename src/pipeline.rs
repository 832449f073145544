//! The request path: a consumer group reads `access.requests`; each worker
//! thread owns the partitions the group gives it and processes them in
//! order, without a task per message; decisions go to `access.decisions`
//! keyed by `request_id`.
//!
//! At-least-once: an offset is *stored* (for the periodic and final commits)
//! only once every record produced for it (the decision, and the dead letter
//! of a malformed request) is confirmed delivered, and only when all earlier
//! offsets of its partition are too ([`Tracker`]). `enable.auto.offset.store`
//! is off, so librdkafka never stores an offset on its own.
//!
//! A full producer queue is backpressure: the worker waits and retries. A
//! delivery that fails permanently stops the engine without storing the
//! offset, so a restart decides that request again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DeliveryMode};
use crate::decide::{decide, reason, Eligibility};
use crate::eligibility::Store;
use crate::event::{
    check_size, decode_request, salvage_request_id, AccessRequest, DeadLetter, Decision,
    DecisionInputs, DecodeError, Outcome, RecordVersion, SourceCoordinates, Versions,
};
use crate::kafka::{base_config, KafkaBoundaryError};
use crate::metrics as m;
use crate::policy::CompiledPolicy;

/// The engine's shared producer.
pub type EngineProducer = ThreadedProducer<DeliveryContext>;

/// What a delivery confirms: one output record of one input offset.
#[derive(Debug)]
pub struct Ack {
    tracker: Option<Arc<Tracker>>,
    partition: i32,
    offset: i64,
}

/// Producer context: routes delivery reports to the offset trackers.
#[derive(Debug, Default)]
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        metrics::gauge!(m::IN_FLIGHT_MESSAGES).decrement(1.0);
        match result {
            Ok(_) => {
                if let Some(t) = &ack.tracker {
                    t.ack(ack.partition, ack.offset);
                }
            }
            Err((e, msg)) => {
                let topic = msg.topic().to_string();
                metrics::counter!(m::DELIVERY_FAILURES_TOTAL).increment(1);
                tracing::error!(%topic, error = %e, "delivery failed permanently");
                if let Some(t) = &ack.tracker {
                    t.fail(format!("delivery to {topic} failed: {e}"));
                }
            }
        }
    }
}

/// Create the engine's producer: idempotent, `acks=all`, retrying
/// transient errors without a time limit.
pub fn create_producer(cfg: &Config) -> Result<EngineProducer, KafkaBoundaryError> {
    let mut cc = producer_config(cfg, "producer");
    cc.set("message.timeout.ms", "0");
    cc.create_with_context(DeliveryContext)
        .map_err(|source| KafkaBoundaryError::Client {
            what: "producer",
            source,
        })
}

/// What every engine producer shares: idempotence, `acks=all`, batching
/// and the local queue bound.
fn producer_config(cfg: &Config, suffix: &str) -> ClientConfig {
    let mut cc = base_config(&cfg.kafka, suffix);
    cc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", cfg.engine.producer_linger_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            cfg.engine.producer_queue_max_messages.to_string(),
        )
        .set("compression.type", "lz4");
    cc
}

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Shutdown was requested while waiting for room in the queue.
    #[error("shutdown while waiting for room in the producer queue")]
    Shutdown,
    /// The producer refused the record for a reason other than a full queue.
    #[error("producer refused the record: {0}")]
    Refused(KafkaError),
    /// The record could not be encoded as JSON. Not retryable: the same
    /// input would fail again, so the worker stops and the offset is not
    /// stored (a restart decides the request again).
    #[error("could not encode the record: {0}")]
    Encode(String),
}

/// Enqueue a record; a full queue is backpressure: wait and retry.
pub fn send_with_backpressure(
    producer: &EngineProducer,
    mut record: BaseRecord<'_, [u8], [u8], Box<Ack>>,
    shutdown: &CancellationToken,
) -> Result<(), SendError> {
    loop {
        match producer.send(record) {
            Ok(()) => {
                metrics::gauge!(m::IN_FLIGHT_MESSAGES).increment(1.0);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                metrics::counter!(m::PRODUCER_BACKPRESSURE_TOTAL).increment(1);
                if shutdown.is_cancelled() {
                    return Err(SendError::Shutdown);
                }
                record = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(SendError::Refused(e)),
        }
    }
}

// ---------------------------------------------------------------------------
// Offset tracking
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct PartitionTrack {
    /// In consumption order: (offset, deliveries still awaited).
    pending: VecDeque<(i64, u8)>,
    /// Highest offset whose records, and all earlier ones, are delivered,
    /// not yet stored.
    done: Option<i64>,
}

/// Per-partition tracking of deliveries, so that an offset is stored only
/// after its own records and those of every earlier offset are delivered.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: Mutex<HashMap<i32, PartitionTrack>>,
    dirty: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, PartitionTrack>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register an offset that awaits `deliveries` confirmations.
    pub fn begin(&self, partition: i32, offset: i64, deliveries: u8) {
        let mut g = self.lock();
        let t = g.entry(partition).or_default();
        if deliveries == 0 {
            t.pending.push_back((offset, 0));
            Self::advance(t);
            self.dirty.store(true, Ordering::Release);
        } else {
            t.pending.push_back((offset, deliveries));
        }
    }

    /// One delivery of `offset` is confirmed.
    pub fn ack(&self, partition: i32, offset: i64) {
        let mut g = self.lock();
        let Some(t) = g.get_mut(&partition) else {
            return; // partition revoked meanwhile
        };
        // Offsets are pushed in increasing order.
        let idx = match t.pending.binary_search_by_key(&offset, |e| e.0) {
            Ok(i) => i,
            Err(_) => return,
        };
        let e = &mut t.pending[idx];
        e.1 = e.1.saturating_sub(1);
        if idx == 0 && Self::advance(t) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn advance(t: &mut PartitionTrack) -> bool {
        let mut moved = false;
        while let Some(&(off, 0)) = t.pending.front() {
            t.pending.pop_front();
            t.done = Some(off);
            moved = true;
        }
        moved
    }

    /// Record a permanent delivery failure: the worker stops.
    pub fn fail(&self, message: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(message);
    }

    /// The first permanent failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Offsets ready to be stored: `(partition, offset of the last done message)`.
    pub fn take_done(&self) -> Vec<(i32, i64)> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut g = self.lock();
        g.iter_mut()
            .filter_map(|(p, t)| t.done.take().map(|o| (*p, o)))
            .collect()
    }

    /// Forget partitions (after a revocation).
    pub fn forget(&self, partitions: &[i32]) {
        let mut g = self.lock();
        for p in partitions {
            g.remove(p);
        }
    }

    /// Offsets registered and not yet fully delivered, across partitions.
    pub fn pending(&self) -> usize {
        self.lock().values().map(|t| t.pending.len()).sum()
    }
}

// ---------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------

/// Which input a dead letter came from (a metric label).
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// `access.requests`.
    Requests,
    /// `eligibility.changes`.
    Eligibility,
}

/// Where a dead-lettered record was read from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<&'a [u8]>,
}

/// Publishes dead-letter records.
#[derive(Clone)]
pub struct DeadLetterSink {
    producer: EngineProducer,
    topic: String,
    max_payload_bytes: usize,
    shutdown: CancellationToken,
}

impl DeadLetterSink {
    /// A sink on `topic` through `producer`.
    pub fn new(
        producer: EngineProducer,
        topic: String,
        max_payload_bytes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            producer,
            topic,
            max_payload_bytes,
            shutdown,
        }
    }

    /// Build the dead-letter record for a payload.
    pub fn record(
        &self,
        error: &DecodeError,
        origin: &Origin<'_>,
        payload: &[u8],
        request_id: Option<String>,
    ) -> DeadLetter {
        let Origin {
            topic,
            partition,
            offset,
            key,
        } = *origin;
        use base64::Engine as _;
        let kept = &payload[..payload.len().min(self.max_payload_bytes)];
        DeadLetter {
            error_kind: error.kind().to_string(),
            error: error.to_string(),
            source: SourceCoordinates {
                topic: topic.to_string(),
                partition,
                offset,
            },
            key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(kept),
            payload_size: payload.len(),
            truncated: kept.len() < payload.len(),
            request_id,
            at: OffsetDateTime::now_utc(),
        }
    }

    /// Publish a dead letter (the tracker is told on delivery, when given).
    pub fn send(
        &self,
        source: Source,
        error: &DecodeError,
        origin: &Origin<'_>,
        payload: &[u8],
        tracker: Option<Arc<Tracker>>,
    ) -> Result<(), SendError> {
        let (topic, partition, offset) = (origin.topic, origin.partition, origin.offset);
        let src = match source {
            Source::Requests => "requests",
            Source::Eligibility => "eligibility",
        };
        metrics::counter!(m::DEADLETTERS_TOTAL, "source" => src, "error" => error.kind())
            .increment(1);
        let dl = self.record(error, origin, payload, salvage_request_id(payload));
        let body = serde_json::to_vec(&dl).map_err(|e| SendError::Encode(e.to_string()))?;
        let dl_key = format!("{topic}/{partition}/{offset}");
        let rec = BaseRecord::with_opaque_to(
            &self.topic,
            Box::new(Ack {
                tracker,
                partition,
                offset,
            }),
        )
        .key(dl_key.as_bytes())
        .payload(body.as_slice());
        send_with_backpressure(&self.producer, rec, &self.shutdown)
    }
}

// ---------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------

/// The policy in force; swapped atomically as a whole.
#[derive(Debug)]
pub struct ActivePolicy {
    current: RwLock<Arc<CompiledPolicy>>,
    /// Test hook ([`ActivePolicy::swapping_on_every_load`]): the policy the
    /// next load swaps in.
    #[cfg(test)]
    swap_on_load: Option<Mutex<Arc<CompiledPolicy>>>,
}

impl ActivePolicy {
    /// Start with `p`.
    pub fn new(p: CompiledPolicy) -> Self {
        Self {
            current: RwLock::new(Arc::new(p)),
            #[cfg(test)]
            swap_on_load: None,
        }
    }
    /// A policy that swaps itself on every [`ActivePolicy::current`]: the
    /// first load returns `first` and swaps in `second`, the next returns
    /// `second` and swaps `first` back in, and so on. A rollout landing
    /// between any two loads, made deterministic.
    #[cfg(test)]
    pub fn swapping_on_every_load(first: CompiledPolicy, second: CompiledPolicy) -> Self {
        Self {
            current: RwLock::new(Arc::new(first)),
            swap_on_load: Some(Mutex::new(Arc::new(second))),
        }
    }
    /// The current policy.
    pub fn current(&self) -> Arc<CompiledPolicy> {
        let p = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        #[cfg(test)]
        if let Some(next) = &self.swap_on_load {
            let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
            let upcoming = std::mem::replace(&mut *next, Arc::clone(&p));
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = upcoming;
        }
        p
    }
    /// Replace the policy.
    pub fn swap(&self, p: CompiledPolicy) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }
}

/// What every worker shares.
pub struct Shared {
    /// The configuration.
    pub cfg: Config,
    /// The eligibility store.
    pub store: Arc<Store>,
    /// The policy.
    pub policy: Arc<ActivePolicy>,
    /// The producer.
    pub producer: EngineProducer,
    /// Dead letters.
    pub deadletters: DeadLetterSink,
    /// Written into every decision.
    pub instance_id: String,
    /// Change-feed state (for the staleness flag).
    pub feed: Arc<crate::eligibility::feed::FeedState>,
    /// Request partitions currently assigned to this process's workers.
    pub assigned: Arc<Mutex<BTreeSet<i32>>>,
    /// Shadow mode's candidate policy, if configured.
    pub shadow: Option<Arc<crate::shadow::Shadow>>,
}

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Client creation or subscription failed.
    #[error(transparent)]
    Kafka(#[from] KafkaBoundaryError),
    /// A record could not be delivered; its offset was not stored.
    #[error("permanent delivery failure: {0}")]
    Delivery(String),
    /// The consumer hit a fatal error.
    #[error("fatal consumer error: {0}")]
    Consumer(KafkaError),
    /// Exactly-once: a transactional call failed fatally (e.g. fenced).
    #[error("transaction failed: {0}")]
    Transaction(String),
    /// A decision or dead letter could not be encoded; its offset was not
    /// stored or committed.
    #[error("could not encode an output record: {0}")]
    Encode(String),
}

struct WorkerContext {
    topic: String,
    assigned: Arc<Mutex<BTreeSet<i32>>>,
    tracker: Arc<Tracker>,
    producer: EngineProducer,
    flush_timeout: Duration,
    eos: bool,
}

impl ClientContext for WorkerContext {
    fn stats(&self, stats: Statistics) {
        if let Some(t) = stats.topics.get(&self.topic) {
            for (p, ps) in &t.partitions {
                if *p >= 0 && ps.consumer_lag >= 0 {
                    metrics::gauge!(m::CONSUMER_LAG_MESSAGES, "partition" => p.to_string())
                        .set(ps.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                metrics::counter!(m::REBALANCES_TOTAL, "kind" => "revoke").increment(1);
                // At-least-once: finish what is in flight so its offsets can
                // be committed before another member takes the partitions
                // over. (Exactly-once commits offsets in the transaction; an
                // open one fails its commit with a fencing error and aborts.)
                if !self.eos {
                    if let Err(e) = self.producer.flush(self.flush_timeout) {
                        tracing::warn!(error = %e, "flush on revoke did not finish; the new owner may decide some requests again");
                    }
                    store_done(consumer, &self.topic, &self.tracker);
                    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                        tracing::debug!(error = %e, "commit on revoke");
                    }
                }
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                self.tracker.forget(&parts);
                let mut a = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
                for p in &parts {
                    a.remove(p);
                }
                tracing::info!(?parts, "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                metrics::counter!(m::REBALANCES_TOTAL, "kind" => "assign").increment(1);
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                self.tracker.forget(&parts);
                self.assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(parts.iter().copied());
                tracing::info!(?parts, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "offset commit");
        }
    }
}

fn store_done(consumer: &BaseConsumer<WorkerContext>, topic: &str, tracker: &Tracker) {
    for (p, off) in tracker.take_done() {
        // rd_kafka_offset_store stores `off + 1`, the next offset to read.
        match consumer.store_offset(topic, p, off) {
            Ok(()) => metrics::counter!(m::OFFSETS_STORED_TOTAL).increment(1),
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "offset not stored (partition revoked?)")
            }
        }
    }
}

/// Run one worker until `shutdown`: subscribe, process, and on the way out
/// drain in-flight deliveries and commit. Blocking: call it on its own
/// thread.
pub fn run_worker(
    shared: Arc<Shared>,
    worker: usize,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let cfg = &shared.cfg;
    let topic = cfg.topics.requests.clone();
    let tracker = Arc::new(Tracker::default());
    let eos = cfg.engine.delivery == DeliveryMode::ExactlyOnce;
    let mut cc: ClientConfig = base_config(&cfg.kafka, &format!("worker-{worker}"));
    cc.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", if eos { "false" } else { "true" })
        .set(
            "auto.commit.interval.ms",
            cfg.engine.commit_interval_ms.to_string(),
        )
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set(
            "statistics.interval.ms",
            cfg.kafka.statistics_interval_ms.to_string(),
        );
    // Pass-through properties last, so an operator can override the above.
    for (k, v) in &cfg.kafka.properties {
        cc.set(k, v);
    }
    let consumer: BaseConsumer<WorkerContext> = cc
        .create_with_context(WorkerContext {
            topic: topic.clone(),
            assigned: Arc::clone(&shared.assigned),
            tracker: Arc::clone(&tracker),
            producer: shared.producer.clone(),
            flush_timeout: Duration::from_millis(cfg.engine.shutdown_timeout_ms),
            eos,
        })
        .map_err(|source| KafkaBoundaryError::Client {
            what: "request consumer",
            source,
        })?;
    consumer
        .subscribe(&[&topic])
        .map_err(|source| KafkaBoundaryError::Client {
            what: "request subscription",
            source,
        })?;
    tracing::info!(worker, %topic, delivery = ?cfg.engine.delivery, "worker subscribed");
    let result = if eos {
        run_exactly_once(&shared, worker, &consumer, &shutdown)
    } else {
        run_at_least_once(&shared, &consumer, &tracker, &shutdown)
    };
    tracing::info!(worker, "worker stopped");
    result
}

/// Poll one message; `Ok(None)` when there was none (or a transient error).
fn poll_one<'c>(
    consumer: &'c BaseConsumer<WorkerContext>,
    timeout: Duration,
) -> Result<Option<BorrowedMessage<'c>>, PipelineError> {
    match consumer.poll(timeout) {
        None => Ok(None),
        Some(Ok(msg)) => Ok(Some(msg)),
        Some(Err(KafkaError::MessageConsumptionFatal(code))) => Err(PipelineError::Consumer(
            KafkaError::MessageConsumptionFatal(code),
        )),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "consumer error (librdkafka retries)");
            Ok(None)
        }
    }
}

fn send_failure(e: SendError) -> Option<PipelineError> {
    match e {
        SendError::Shutdown => None,
        SendError::Refused(e) => Some(PipelineError::Delivery(e.to_string())),
        SendError::Encode(e) => Some(PipelineError::Encode(e)),
    }
}

fn run_at_least_once(
    shared: &Shared,
    consumer: &BaseConsumer<WorkerContext>,
    tracker: &Arc<Tracker>,
    shutdown: &CancellationToken,
) -> Result<(), PipelineError> {
    let topic = &shared.cfg.topics.requests;
    let out = Output {
        producer: &shared.producer,
        deadletters: &shared.deadletters,
        tracker: Some(tracker),
    };
    let mut result = Ok(());
    while !shutdown.is_cancelled() {
        if let Some(f) = tracker.failure() {
            result = Err(PipelineError::Delivery(f));
            break;
        }
        match poll_one(consumer, Duration::from_millis(100)) {
            Ok(None) => {}
            Ok(Some(msg)) => {
                if let Err(e) = process(shared, &out, &msg, shutdown) {
                    if let Some(f) = send_failure(e) {
                        result = Err(f);
                    }
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        store_done(consumer, topic, tracker);
    }

    // Drain: wait for what is in flight, store its offsets, commit.
    let deadline = Instant::now() + Duration::from_millis(shared.cfg.engine.shutdown_timeout_ms);
    while tracker.pending() > 0 && Instant::now() < deadline && tracker.failure().is_none() {
        let _ = shared.producer.flush(Duration::from_millis(100));
        store_done(consumer, topic, tracker);
    }
    store_done(consumer, topic, tracker);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit (nothing stored?)");
    }
    let left = tracker.pending();
    if left > 0 {
        tracing::warn!(
            left,
            "shutdown bound reached with deliveries pending; those requests will be decided again"
        );
    }
    result
}

/// Create the transactional producer of an exactly-once worker. Its
/// `transactional.id` derives from the group, `engine.instance_id` and the
/// worker: give each instance a stable `instance_id`, so that a restarted
/// instance fences its killed predecessor and aborts its open transaction at
/// once (instead of after `transaction.timeout.ms`).
pub fn create_transactional_producer(
    cfg: &Config,
    instance_id: &str,
    worker: usize,
) -> Result<EngineProducer, KafkaBoundaryError> {
    let mut cc = producer_config(cfg, &format!("txn-{worker}"));
    cc.set(
        "transactional.id",
        format!("{}-{instance_id}-w{worker}", cfg.kafka.group_id),
    )
    .set("transaction.timeout.ms", "60000");
    cc.create_with_context(DeliveryContext)
        .map_err(|source| KafkaBoundaryError::Client {
            what: "transactional producer",
            source,
        })
}

fn txn_error(what: &str, e: KafkaError) -> PipelineError {
    PipelineError::Transaction(format!("{what}: {e}"))
}

/// What to do after a failed transactional call.
enum TxnFailure {
    /// Abort, rewind, carry on.
    Abort(KafkaError),
    /// Stop the worker (fenced, or fatal).
    Fatal(KafkaError),
}

fn classify_txn(e: KafkaError) -> TxnFailure {
    match &e {
        KafkaError::Transaction(rde) if rde.is_fatal() => TxnFailure::Fatal(e),
        _ => TxnFailure::Abort(e),
    }
}

/// Exactly-once: read, decide and produce inside a transaction, with the
/// consumed offsets sent to the same transaction (fenced by the group
/// generation, KIP-447). On an abortable error the transaction is aborted
/// and the consumer rewinds to the first offset of the batch.
fn run_exactly_once(
    shared: &Shared,
    worker: usize,
    consumer: &BaseConsumer<WorkerContext>,
    shutdown: &CancellationToken,
) -> Result<(), PipelineError> {
    let cfg = &shared.cfg;
    let topic = &cfg.topics.requests;
    let timeout = Duration::from_millis(cfg.engine.shutdown_timeout_ms.max(10_000));
    let producer = create_transactional_producer(cfg, &shared.instance_id, worker)?;
    producer
        .init_transactions(timeout)
        .map_err(|e| txn_error("init_transactions", e))?;
    let deadletters = DeadLetterSink::new(
        producer.clone(),
        cfg.topics.deadletter.clone(),
        cfg.engine.deadletter_max_payload_bytes,
        shutdown.clone(),
    );
    let out = Output {
        producer: &producer,
        deadletters: &deadletters,
        tracker: None,
    };
    let max_n = cfg.engine.transaction_max_messages;
    let max_wait = Duration::from_millis(cfg.engine.transaction_max_ms);

    while !shutdown.is_cancelled() {
        let Some(first) = poll_one(consumer, Duration::from_millis(100))? else {
            continue;
        };
        producer
            .begin_transaction()
            .map_err(|e| txn_error("begin_transaction", e))?;
        // partition -> (first offset, next offset)
        let mut span: HashMap<i32, (i64, i64)> = HashMap::new();
        let opened = Instant::now();
        let mut n = 0;
        let mut msg = Some(first);
        let mut failed = None;
        while let Some(m) = msg.take() {
            let e = span
                .entry(m.partition())
                .or_insert((m.offset(), m.offset()));
            e.1 = m.offset() + 1;
            n += 1;
            if let Err(e) = process(shared, &out, &m, shutdown) {
                failed = Some(e);
                break;
            }
            drop(m);
            let left = max_wait.saturating_sub(opened.elapsed());
            if n >= max_n || left.is_zero() || shutdown.is_cancelled() {
                break;
            }
            msg = poll_one(consumer, left)?;
            if msg.is_none() && opened.elapsed() < max_wait {
                msg = poll_one(consumer, max_wait.saturating_sub(opened.elapsed()))?;
            }
        }
        let commit = match failed {
            Some(SendError::Shutdown) => Err(TxnFailure::Abort(KafkaError::Canceled)),
            Some(SendError::Refused(e)) => Err(TxnFailure::Fatal(e)),
            Some(SendError::Encode(e)) => {
                let _ = producer.abort_transaction(timeout);
                return Err(PipelineError::Encode(e));
            }
            None => commit_batch(&producer, consumer, topic, &span, timeout),
        };
        match commit {
            Ok(()) => {
                metrics::counter!(m::OFFSETS_STORED_TOTAL).increment(span.len() as u64);
            }
            Err(TxnFailure::Abort(e)) => {
                tracing::warn!(error = %e, requests = n, "transaction aborted; rewinding");
                if let Err(e) = producer.abort_transaction(timeout) {
                    return Err(txn_error("abort_transaction", e));
                }
                for (p, (first, _)) in &span {
                    if let Err(e) = consumer.seek(topic, *p, Offset::Offset(*first), timeout) {
                        tracing::debug!(partition = p, error = %e, "rewind (partition revoked?)");
                    }
                }
            }
            Err(TxnFailure::Fatal(e)) => {
                let _ = producer.abort_transaction(timeout);
                return Err(txn_error("transaction", e));
            }
        }
    }
    Ok(())
}

fn commit_batch(
    producer: &EngineProducer,
    consumer: &BaseConsumer<WorkerContext>,
    topic: &str,
    span: &HashMap<i32, (i64, i64)>,
    timeout: Duration,
) -> Result<(), TxnFailure> {
    let mut tpl = TopicPartitionList::new();
    for (p, (_, next)) in span {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*next))
            .map_err(TxnFailure::Fatal)?;
    }
    let Some(group) = consumer.group_metadata() else {
        return Err(TxnFailure::Abort(KafkaError::Canceled));
    };
    producer
        .send_offsets_to_transaction(&tpl, &group, timeout)
        .map_err(classify_txn)?;
    producer.commit_transaction(timeout).map_err(classify_txn)
}

/// Where a worker's records go.
struct Output<'a> {
    producer: &'a EngineProducer,
    deadletters: &'a DeadLetterSink,
    /// At-least-once: the offset tracker. Exactly-once: none (the
    /// transaction commits offsets).
    tracker: Option<&'a Arc<Tracker>>,
}

impl Output<'_> {
    fn begin(&self, partition: i32, offset: i64, deliveries: u8) {
        if let Some(t) = self.tracker {
            t.begin(partition, offset, deliveries);
        }
    }

    fn ack(&self, partition: i32, offset: i64) -> Box<Ack> {
        Box::new(Ack {
            tracker: self.tracker.cloned(),
            partition,
            offset,
        })
    }
}

fn process(
    shared: &Shared,
    out: &Output<'_>,
    msg: &BorrowedMessage<'_>,
    shutdown: &CancellationToken,
) -> Result<(), SendError> {
    let started = Instant::now();
    let (partition, offset) = (msg.partition(), msg.offset());
    let payload = msg.payload().unwrap_or_default();
    let source = SourceCoordinates {
        topic: msg.topic().to_string(),
        partition,
        offset,
    };
    let decoded = check_size(payload, shared.cfg.engine.max_input_bytes)
        .and_then(|()| decode_request(payload));
    match decoded {
        Ok(req) => {
            let stale = shared.feed.is_stale();
            let decision = decide_request_as(
                &shared.policy,
                &shared.store,
                stale,
                &shared.instance_id,
                req,
                source,
            );
            let shadow = shared
                .shadow
                .as_ref()
                .and_then(|s| s.compare(&decision, &*shared.store, stale));
            out.begin(partition, offset, 1);
            if let Some(diff) = shadow {
                publish_shadow(shared, out, &diff, shutdown)?;
            }
            let r = publish_decision(shared, out, &decision, partition, offset, shutdown);
            metrics::histogram!(m::PROCESSING_SECONDS).record(started.elapsed().as_secs_f64());
            r
        }
        Err(err) => {
            let request_id = salvage_request_id(payload);
            tracing::warn!(partition, offset, error = %err, ?request_id, "malformed request dead-lettered");
            out.begin(partition, offset, 1 + u8::from(request_id.is_some()));
            let origin = Origin {
                topic: msg.topic(),
                partition,
                offset,
                key: msg.key(),
            };
            out.deadletters.send(
                Source::Requests,
                &err,
                &origin,
                payload,
                out.tracker.cloned(),
            )?;
            if let Some(request_id) = request_id {
                let policy = shared.policy.current();
                let decision = malformed_decision(&policy, request_id, source, &shared.instance_id);
                metrics::counter!(m::DECISIONS_TOTAL, "outcome" => "deny", "reason" => reason::MALFORMED_REQUEST, "model" => "unknown").increment(1);
                publish_decision(shared, out, &decision, partition, offset, shutdown)?;
            }
            Ok(())
        }
    }
}

/// Decide a decoded request against the shared state and build its
/// decision. The policy is loaded once: the outcome, reasons, rule ids and
/// the policy id, version and data version all come from that one `Arc`,
/// whatever rollout happens meanwhile (ARCHITECTURE.md, "A policy is
/// swapped whole").
pub fn decide_request(
    policy: &ActivePolicy,
    store: &Store,
    feed: &crate::eligibility::feed::FeedState,
    instance_id: &str,
    req: AccessRequest,
    source: SourceCoordinates,
) -> Decision {
    decide_request_as(policy, store, feed.is_stale(), instance_id, req, source)
}

/// [`decide_request`] with the staleness flag read by the caller (so that
/// a shadow policy is decided with the same one).
fn decide_request_as(
    policy: &ActivePolicy,
    store: &Store,
    data_stale: bool,
    instance_id: &str,
    req: AccessRequest,
    source: SourceCoordinates,
) -> Decision {
    let policy = policy.current();
    let subject = store.user(&req.subject_id);
    let org_id = req
        .organization_id
        .as_deref()
        .or(subject.as_ref().and_then(|s| s.organization_id.as_deref()));
    let org = org_id.and_then(|id| store.organization(id));
    let elig = Eligibility {
        subject: subject.as_deref(),
        organization: org.as_deref(),
        data_stale,
        owners: store,
    };
    let verdict = decide(&policy, &elig, &req);
    let now = OffsetDateTime::now_utc();
    let latency = (now - req.event_time).as_seconds_f64().max(0.0);
    metrics::histogram!(m::DECISION_LATENCY_SECONDS).record(latency);
    // Bounded label: catalog models only.
    let model_label = if verdict.reasons.contains(&reason::UNKNOWN_MODEL) {
        "unknown".to_string()
    } else {
        req.model.clone()
    };
    for r in &verdict.reasons {
        metrics::counter!(m::DECISIONS_TOTAL, "outcome" => verdict.outcome.as_str(), "reason" => *r, "model" => model_label.clone()).increment(1);
    }
    Decision {
        request_id: req.request_id.clone(),
        outcome: verdict.outcome,
        reasons: verdict.reasons.iter().map(|s| s.to_string()).collect(),
        rule_ids: verdict.rule_ids,
        legal_basis: verdict.legal_basis,
        obligations: verdict.obligations.iter().map(|s| s.to_string()).collect(),
        versions: verdict.versions,
        inputs: Some(DecisionInputs {
            request: req,
            subject,
            organization: org,
            owners: verdict.owner_records,
        }),
        decided_at: now,
        source: Some(source),
        engine_instance: instance_id.to_string(),
    }
}

/// The deny decision for a request that could not be decoded but whose
/// `request_id` could be read.
pub fn malformed_decision(
    policy: &CompiledPolicy,
    request_id: String,
    source: SourceCoordinates,
    instance: &str,
) -> Decision {
    Decision {
        request_id,
        outcome: Outcome::Deny,
        reasons: vec![reason::MALFORMED_REQUEST.to_string()],
        rule_ids: vec![],
        legal_basis: vec![],
        obligations: vec![],
        versions: Versions {
            policy_id: policy.id.clone(),
            policy_version: policy.version.clone(),
            data_version: policy.data_version.clone(),
            policy_digest: policy.digest.clone(),
            subject: None::<RecordVersion>,
            organization: None,
            owners: Vec::new(),
        },
        inputs: None,
        decided_at: OffsetDateTime::now_utc(),
        source: Some(source),
        engine_instance: instance.to_string(),
    }
}

/// Publish a shadow difference. Not tracked for the offset: the shadow
/// stream is a diagnosis beside the decisions, and a failure to deliver it
/// is logged and counted (`clearance_delivery_failures_total`) but neither
/// holds the offset back nor stops the engine (in exactly-once mode it is
/// part of the transaction like everything the worker produces).
fn publish_shadow(
    shared: &Shared,
    out: &Output<'_>,
    diff: &crate::event::ShadowDifference,
    shutdown: &CancellationToken,
) -> Result<(), SendError> {
    let body = serde_json::to_vec(diff).map_err(|e| SendError::Encode(e.to_string()))?;
    let ack = Box::new(Ack {
        tracker: None,
        partition: -1,
        offset: -1,
    });
    let rec = BaseRecord::with_opaque_to(&shared.cfg.topics.shadow, ack)
        .key(diff.request_id.as_bytes())
        .payload(body.as_slice());
    send_with_backpressure(out.producer, rec, shutdown)
}

fn publish_decision(
    shared: &Shared,
    out: &Output<'_>,
    decision: &Decision,
    partition: i32,
    offset: i64,
    shutdown: &CancellationToken,
) -> Result<(), SendError> {
    crate::admin::recent::record(decision);
    let body = serde_json::to_vec(decision).map_err(|e| SendError::Encode(e.to_string()))?;
    let rec = BaseRecord::with_opaque_to(&shared.cfg.topics.decisions, out.ack(partition, offset))
        .key(decision.request_id.as_bytes())
        .payload(body.as_slice());
    send_with_backpressure(out.producer, rec, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_released_only_in_order() {
        let t = Tracker::default();
        t.begin(0, 10, 1);
        t.begin(0, 11, 2);
        t.begin(0, 13, 1);
        t.ack(0, 13);
        assert!(t.take_done().is_empty(), "13 done but 10 and 11 are not");
        t.ack(0, 10);
        assert_eq!(t.take_done(), vec![(0, 10)]);
        t.ack(0, 11);
        assert!(t.take_done().is_empty(), "11 awaits a second delivery");
        t.ack(0, 11);
        assert_eq!(t.take_done(), vec![(0, 13)]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn partitions_are_independent_and_forgettable() {
        let t = Tracker::default();
        t.begin(0, 5, 1);
        t.begin(1, 7, 1);
        t.ack(1, 7);
        assert_eq!(t.take_done(), vec![(1, 7)]);
        t.forget(&[0]);
        t.ack(0, 5); // late ack of a revoked partition: ignored
        assert!(t.take_done().is_empty());
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn zero_delivery_offsets_are_done_at_once() {
        let t = Tracker::default();
        t.begin(2, 1, 0);
        assert_eq!(t.take_done(), vec![(2, 1)]);
    }
}

#[cfg(test)]
mod whole_policy_tests;
