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
//!
//! Exactly-once: read, decide and produce inside transactions, two per
//! worker in flight ([`exactly_once`]).
//!
//! Here: the worker (consumer, rebalances, leaving the group) and what both
//! delivery modes share (processing one request into its records). The
//! loops are `at_least_once` and [`exactly_once`]; the offset [`tracker`],
//! the [`producer`]s, the [`deadletter`] sink and [`reply`] routing have
//! modules of their own.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::BaseRecord;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DeliveryMode};
use crate::decide::{decide, reason, Eligibility};
use crate::eligibility::Store;
use crate::event::{
    check_size, decode_request, salvage_request_id, AccessRequest, Decision, DecisionInputs,
    Outcome, RecordVersion, SourceCoordinates, Versions,
};
use crate::kafka::KafkaBoundaryError;
use crate::metrics as m;
use crate::policy::CompiledPolicy;
mod at_least_once;
pub mod deadletter;
pub mod exactly_once;
pub mod producer;
pub mod reply;
pub mod tracker;

pub use crate::policy::ActivePolicy;
pub use deadletter::{DeadLetterSink, Origin, Source};
pub use exactly_once::create_transactional_producer;
pub use producer::{
    create_producer, create_reply_producer, send_reply, send_with_backpressure, Ack,
    DeliveryContext, EngineProducer, SendError,
};
pub use tracker::Tracker;

/// What every worker shares.
pub struct Shared {
    /// The configuration.
    pub cfg: Config,
    /// The eligibility store.
    pub store: Arc<Store>,
    /// The policy.
    pub policy: Arc<ActivePolicy>,
    /// The producer of the decision log (decisions, dead letters, shadow
    /// differences).
    pub producer: EngineProducer,
    /// At-least-once: the producer of replies (request/reply), apart from
    /// the decision log so that replies never wait behind its batches
    /// (`engine.reply_linger_ms`). None: replies go with the decisions
    /// (exactly-once, where they are part of the transaction).
    pub reply_producer: Option<EngineProducer>,
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
    /// Request/reply: what is known of reply topics.
    pub replies: Arc<reply::ReplyRoutes>,
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
    /// The consumer was fenced again and again: another member uses its
    /// `group.instance.id`.
    #[error("consumer fenced: {0}")]
    Fenced(String),
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
    /// Bound on the wait for a revoked partition's deliveries.
    flush_timeout: Duration,
    eos: bool,
    /// Revocations seen (exactly-once: a batch that spans a revocation is
    /// aborted, not committed).
    revocations: std::sync::atomic::AtomicU64,
    /// Set on every assignment: the worker commits the first offsets it
    /// stores promptly ([`CommitSchedule`]).
    assigned_since_commit: AtomicBool,
}

impl ClientContext for WorkerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::report_client_error("request consumer", &error, reason);
        tracing::warn!(error = %error, reason, "request consumer client error");
    }

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
                // With cooperative-sticky, `tpl` holds only the partitions
                // that move (incremental); the others keep being decided.
                metrics::counter!(m::REBALANCES_TOTAL, "kind" => "revoke").increment(1);
                self.revocations.fetch_add(1, Ordering::AcqRel);
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                // At-least-once: wait for the revoked partitions' own
                // deliveries (the shared producer is not flushed: the other
                // workers' partitions keep flowing) so that their offsets
                // can be committed before another member takes them over.
                // (Exactly-once commits offsets in the transaction; an open
                // one fails its commit with a fencing error and aborts.)
                if !self.eos {
                    let left = self.tracker.wait_delivered(&parts, self.flush_timeout);
                    if left > 0 {
                        tracing::warn!(left, "revoked partitions' deliveries did not all finish; the new owner may decide some requests again");
                    }
                    store_done(consumer, &self.topic, &self.tracker);
                    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                        tracing::debug!(error = %e, "commit on revoke");
                    }
                }
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
                self.assigned_since_commit.store(true, Ordering::Release);
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

/// Store the offsets of what is delivered; returns the partitions stored.
pub(crate) fn store_done<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    tracker: &Tracker,
) -> Vec<i32> {
    let mut stored = Vec::new();
    for (p, off) in tracker.take_done() {
        // rd_kafka_offset_store stores `off + 1`, the next offset to read.
        match consumer.store_offset(topic, p, off) {
            Ok(()) => {
                stored.push(p);
                metrics::counter!(m::OFFSETS_STORED_TOTAL).increment(1)
            }
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "offset not stored (partition revoked?)")
            }
        }
    }
    stored
}

/// Run one worker until `shutdown`: subscribe, process, and on the way out
/// drain in-flight deliveries and commit. Blocking: call it on its own
/// thread. A consumer fenced as a static member is replaced by a new one
/// (`FencedRejoins` bounds how often).
pub fn run_worker(
    shared: Arc<Shared>,
    worker: usize,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let mut fenced = FencedRejoins::default();
    loop {
        let (result, fatal) = run_consumer(&shared, worker, &shutdown)?;
        match fatal {
            Some((RDKafkaErrorCode::FencedInstanceId, reason)) if !shutdown.is_cancelled() => {
                if !fenced.allow(Instant::now()) {
                    return Err(PipelineError::Fenced(format!(
                        "worker {worker}'s consumer was fenced {} times within {} s: is another \
                         instance running with engine.instance_id = {:?}? ({reason})",
                        FencedRejoins::MAX + 1,
                        FencedRejoins::WINDOW.as_secs(),
                        shared.cfg.engine.instance_id
                    )));
                }
                tracing::warn!(worker, %reason, "request consumer fenced by a member with its group.instance.id (librdkafka rejoins as a new member after a session timeout, for example across a broker restart, and so fences itself); starting a new consumer");
                metrics::counter!(m::CONSUMER_RESTARTS_TOTAL, "reason" => "fenced").increment(1);
            }
            _ => return result,
        }
    }
}

/// How often a worker replaces a consumer that was fenced (a static member
/// whose `group.instance.id` another member took): at most [`Self::MAX`]
/// times within [`Self::WINDOW`]. A consumer whose session timed out (a
/// broker restart that outlasts `session.timeout.ms`) rejoins as a new
/// member and fences its own old member id; librdkafka makes that fatal,
/// and a new consumer takes the partitions back. Fenced again and again,
/// it is another live instance with the same `engine.instance_id`: stop,
/// and say so.
#[derive(Debug, Default)]
struct FencedRejoins {
    at: std::collections::VecDeque<Instant>,
}

impl FencedRejoins {
    const MAX: usize = 3;
    const WINDOW: Duration = Duration::from_secs(300);

    fn allow(&mut self, now: Instant) -> bool {
        while self
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Self::WINDOW)
        {
            self.at.pop_front();
        }
        if self.at.len() >= Self::MAX {
            return false;
        }
        self.at.push_back(now);
        true
    }
}

/// A consumer's fatal error (`rd_kafka_fatal_error`), if it had one.
type FatalError = Option<(RDKafkaErrorCode, String)>;

/// One consumer's life in a worker: create, subscribe, run the delivery
/// mode's loop, leave the group. Returns the loop's result and the
/// consumer's fatal error.
fn run_consumer(
    shared: &Arc<Shared>,
    worker: usize,
    shutdown: &CancellationToken,
) -> Result<(Result<(), PipelineError>, FatalError), PipelineError> {
    let cfg = &shared.cfg;
    let topic = cfg.topics.requests.clone();
    let tracker = Arc::new(Tracker::default());
    let eos = cfg.engine.delivery == DeliveryMode::ExactlyOnce;
    let cc: ClientConfig = crate::kafka::request_consumer_config(cfg, worker);
    let consumer: BaseConsumer<WorkerContext> = cc
        .create_with_context(WorkerContext {
            topic: topic.clone(),
            assigned: Arc::clone(&shared.assigned),
            tracker: Arc::clone(&tracker),
            flush_timeout: Duration::from_millis(cfg.engine.shutdown_timeout_ms),
            eos,
            revocations: Default::default(),
            assigned_since_commit: AtomicBool::new(false),
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
        exactly_once::run(shared, worker, &consumer, shutdown)
    } else {
        at_least_once::run(shared, &consumer, &tracker, shutdown)
    };
    let fatal = consumer.client().fatal_error();
    if fatal.is_some() {
        // A fatal consumer serves no revocation: forget its partitions
        // here (a new consumer, or another member, gets them again).
        if let Ok(tpl) = consumer.assignment() {
            let mut a = shared.assigned.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements_for_topic(&topic) {
                a.remove(&e.partition());
            }
        }
    } else {
        leave_group(&consumer);
    }
    tracing::info!(worker, "worker stopped");
    Ok((result, fatal))
}

/// Leave the group before the consumer closes, so that the other instances
/// take the partitions over at once. librdkafka sends no LeaveGroup when a
/// *static* member closes (KIP-345: `rd_kafka_cgrp_leave_maybe` skips it on
/// termination), but it does on `unsubscribe`: so unsubscribe, and poll
/// until the revocation (which stores and commits) has been served and the
/// LeaveGroup sent. Bounded: a crash skips all this anyway.
fn leave_group(consumer: &BaseConsumer<WorkerContext>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
        if consumer
            .assignment()
            .map(|a| a.count() == 0)
            .unwrap_or(true)
        {
            // The LeaveGroup goes out once the unassignment is done, from
            // librdkafka's own threads: give it 200 ms to be written before
            // the consumer closes. One poll is not enough: it returns at
            // once after serving an event (a commit's callback), and a
            // LeaveGroup lost that way costs the session timeout (a SIGTERM
            // hand-over measured 6.19 s once in CI, 0.36-0.99 s otherwise).
            let sent_by = Instant::now() + Duration::from_millis(200);
            while Instant::now() < sent_by {
                let _ = consumer.poll(sent_by.saturating_duration_since(Instant::now()));
            }
            break;
        }
    }
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

/// Where a worker's records go.
struct Output<'a> {
    producer: &'a EngineProducer,
    /// The reply producer, when replies have their own (at-least-once);
    /// none: replies go through `producer`.
    replies: Option<&'a EngineProducer>,
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
        Ack::tracked(self.tracker.cloned(), partition, offset)
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
    let reply_to = match reply::from_message(msg.headers()) {
        Ok(r) => r,
        Err(e) => {
            shared.replies.bad_header(&e);
            None
        }
    };
    let reply_to = reply_to.as_ref();
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
            let r = publish_decision(
                shared, out, &decision, reply_to, partition, offset, shutdown,
            );
            m::hot::processing(started.elapsed().as_secs_f64());
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
                publish_decision(
                    shared, out, &decision, reply_to, partition, offset, shutdown,
                )?;
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
    let (subject, org) = store.records_for(&req);
    let elig = Eligibility {
        subject: subject.as_deref(),
        organization: org.as_deref(),
        data_stale,
        owners: store,
    };
    let verdict = decide(&policy, &elig, &req);
    let now = OffsetDateTime::now_utc();
    let latency = (now - req.event_time).as_seconds_f64().max(0.0);
    m::hot::decision_latency(latency);
    // Bounded label: catalog models only.
    let model_label = if verdict.reasons.contains(&reason::UNKNOWN_MODEL) {
        "unknown"
    } else {
        req.model.as_str()
    };
    for r in &verdict.reasons {
        m::hot::decision(verdict.outcome.as_str(), r, model_label);
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
    let ack = Ack::untracked(None);
    let rec = BaseRecord::with_opaque_to(&shared.cfg.topics.shadow, ack)
        .key(diff.request_id.as_bytes())
        .payload(body.as_slice());
    send_with_backpressure(out.producer, rec, shutdown)
}

/// Publish a decision to the decisions topic and, when the request asked
/// for one, its reply ([`reply`]): the same bytes, with the correlation
/// header. Only the decision's delivery counts for the offset.
fn publish_decision(
    shared: &Shared,
    out: &Output<'_>,
    decision: &Decision,
    reply_to: Option<&reply::ReplyTo>,
    partition: i32,
    offset: i64,
    shutdown: &CancellationToken,
) -> Result<(), SendError> {
    crate::admin::recent::record(decision);
    ENCODE_BUFFER.with(|cell| {
        // Re-entered (cannot happen on the request path): a fresh buffer.
        let mut fresh = Vec::new();
        let mut guard = cell.try_borrow_mut();
        let body = match guard.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut fresh,
        };
        body.clear();
        serde_json::to_writer(&mut *body, decision)
            .map_err(|e| SendError::Encode(e.to_string()))?;
        send_decision(
            shared, out, decision, body, reply_to, partition, offset, shutdown,
        )
    })
}

thread_local! {
    /// The encoded decision, reused from one decision to the next (the
    /// producer copies the payload).
    static ENCODE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn send_decision(
    shared: &Shared,
    out: &Output<'_>,
    decision: &Decision,
    body: &[u8],
    reply_to: Option<&reply::ReplyTo>,
    partition: i32,
    offset: i64,
    shutdown: &CancellationToken,
) -> Result<(), SendError> {
    let rec = BaseRecord::with_opaque_to(&shared.cfg.topics.decisions, out.ack(partition, offset))
        .key(decision.request_id.as_bytes())
        .payload(body);
    send_with_backpressure(out.producer, rec, shutdown)?;
    let Some(to) = reply_to else {
        return Ok(());
    };
    let producer = out.replies.unwrap_or(out.producer);
    if shared.replies.check(producer, to).is_err() {
        return Ok(());
    }
    let ack = Ack::untracked(Some(Arc::clone(&shared.replies)));
    let mut rec = BaseRecord::with_opaque_to(&to.topic, ack)
        .key(decision.request_id.as_bytes())
        .payload(body);
    if let Some(p) = to.partition {
        rec = rec.partition(p);
    }
    if let Some(h) = to.headers() {
        rec = rec.headers(h);
    }
    if out.replies.is_some() {
        // A reply producer of its own: a full queue drops the reply
        // (counted) rather than holding the decisions back.
        let _ = send_reply(producer, &shared.replies, rec);
        return Ok(());
    }
    match send_with_backpressure(producer, rec, shutdown) {
        // The producer refused the reply at once (for example a partition
        // it does not know): the decision is out, the reply is skipped.
        Err(SendError::Refused(e)) => {
            shared.replies.delivery_failed(&to.topic, &e);
            Ok(())
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_consumer_is_replaced_three_times_in_five_minutes_then_the_worker_stops() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut f = FencedRejoins::default();
        assert!(f.allow(at(0)));
        assert!(f.allow(at(10)));
        assert!(f.allow(at(20)));
        assert!(!f.allow(at(30)), "a fourth fencing within 300 s stops");
        assert!(!f.allow(at(299)));
        // Once the first has left the window, one more is allowed.
        assert!(f.allow(at(300)));
        assert!(!f.allow(at(301)));
        // Rare fencings (one per broker restart) never stop the worker.
        let mut f = FencedRejoins::default();
        for i in 0..20 {
            assert!(f.allow(at(i * 200)));
        }
    }
}

#[cfg(test)]
mod whole_policy_tests;
