//! Exactly-once delivery: read, decide and produce inside a transaction,
//! with the consumed offsets sent to the same transaction (fenced by the
//! group generation, KIP-447).
//!
//! **Two lanes per worker.** A worker has two transactional producers and
//! alternates between them: while batch *k* commits on a helper thread
//! (`send_offsets_to_transaction`, then `commit_transaction`, which waits
//! for every record of the batch to be acknowledged), batch *k + 1* is read,
//! decided and produced on the other lane. Batch *k + 1* commits only once
//! batch *k*'s commit has succeeded, so the committed offsets of a
//! partition only move forward, one batch after another. If batch *k*'s
//! commit fails, batch *k + 1* is aborted too and the consumer rewinds to
//! the first offset of batch *k* (of batch *k + 1* for a partition batch
//! *k* did not read): nothing of either batch was committed, so both are
//! decided again. With one lane the worker would sit idle for every commit.
//!
//! A batch that spans a revocation, or whose records could not all be
//! handed to the producer, is aborted and rewound. A fenced producer
//! (another live instance with the same `transactional.id`) stops the
//! worker; any other fatal producer error replaces that lane's producer
//! (`init_transactions` bumps the epoch) and the batch is decided again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{
    poll_one, process, DeadLetterSink, EngineProducer, Output, PipelineError, SendError, Shared,
    WorkerContext,
};
use crate::config::Config;
use crate::kafka::KafkaBoundaryError;
use crate::metrics as m;

/// Create the transactional producer of lane `lane` (0 or 1) of an
/// exactly-once worker. Its `transactional.id` derives from the group,
/// `engine.instance_id`, the worker and the lane
/// ([`crate::kafka::transactional_producer_config`]): give each instance a
/// stable `instance_id`, so that a restarted instance fences its killed
/// predecessor and aborts its open transactions at once (instead of after
/// `transaction.timeout.ms`).
pub fn create_transactional_producer(
    cfg: &Config,
    instance_id: &str,
    worker: usize,
    lane: usize,
) -> Result<EngineProducer, KafkaBoundaryError> {
    super::producer::create(
        crate::kafka::transactional_producer_config(cfg, instance_id, worker, lane),
        "transactional producer",
    )
}

fn txn_error(what: &str, e: KafkaError) -> PipelineError {
    PipelineError::Transaction(format!("{what}: {e}"))
}

/// What to do after a failed transactional call.
#[derive(Debug)]
enum TxnFailure {
    /// Abort, rewind, carry on.
    Abort(KafkaError),
    /// The worker's own decision to abort (the reason): abort, rewind,
    /// carry on.
    Withdraw(&'static str),
    /// The producer cannot be used again (fenced, or fatal).
    Fatal(KafkaError),
}

/// Whether a transactional error says another producer with our
/// transactional.id took over (a duplicate live instance): then stop.
fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            rdkafka::types::RDKafkaErrorCode::ProducerFenced
                | rdkafka::types::RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

fn classify_txn(e: KafkaError) -> TxnFailure {
    match &e {
        KafkaError::Transaction(rde) if rde.is_fatal() => TxnFailure::Fatal(e),
        _ => TxnFailure::Abort(e),
    }
}

/// Why a commit was not attempted: the consumer had no group metadata (it
/// is leaving the group).
const NO_GROUP: &str = "no group metadata";

/// Partition -> (first offset, next offset) of a batch.
type Span = HashMap<i32, (i64, i64)>;

/// One of a worker's two transactional producers, with its dead-letter
/// sink (dead letters are part of the transaction).
struct Lane {
    producer: EngineProducer,
    deadletters: DeadLetterSink,
}

/// A batch whose commit runs on a helper thread.
struct Committing {
    lane: usize,
    span: Span,
    requests: usize,
    commit: Commit,
}

enum Commit {
    Thread(JoinHandle<Result<(), TxnFailure>>),
    /// The helper thread could not be started: committed in line.
    Done(Result<(), TxnFailure>),
}

impl Drop for Committing {
    /// A worker that stops with an error while a commit is in flight still
    /// waits for it: the commit never outlives the worker's consumer.
    fn drop(&mut self) {
        if let Commit::Thread(h) = std::mem::replace(&mut self.commit, Commit::Done(Ok(()))) {
            let _ = h.join();
        }
    }
}

impl Committing {
    fn result(&mut self) -> Result<(), TxnFailure> {
        match std::mem::replace(&mut self.commit, Commit::Done(Ok(()))) {
            // A commit thread that panicked leaves its producer in an
            // unknown state: replace it.
            Commit::Thread(h) => h
                .join()
                .unwrap_or(Err(TxnFailure::Fatal(KafkaError::Canceled))),
            Commit::Done(r) => r,
        }
    }
}

struct Worker<'a> {
    shared: &'a Shared,
    worker: usize,
    consumer: &'a BaseConsumer<WorkerContext>,
    shutdown: &'a CancellationToken,
    timeout: Duration,
}

impl Worker<'_> {
    /// A lane's producer with its transactions initialized. A retriable
    /// failure of init_transactions (the coordinator loading, or a timeout
    /// while a killed predecessor's transaction is being aborted, which a
    /// loaded machine can stretch past the timeout) is retried, as
    /// librdkafka allows, until shutdown; anything else stops the worker.
    fn start_lane(&self, lane: usize) -> Result<Lane, PipelineError> {
        let cfg = &self.shared.cfg;
        let producer =
            create_transactional_producer(cfg, &self.shared.instance_id, self.worker, lane)?;
        loop {
            match producer.init_transactions(self.timeout) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && !self.shutdown.is_cancelled() =>
                {
                    tracing::warn!(worker = self.worker, lane, error = %e, "init_transactions failed; retrying");
                }
                Err(e) => return Err(txn_error("init_transactions", e)),
            }
        }
        let deadletters = DeadLetterSink::new(
            producer.clone(),
            cfg.topics.deadletter.clone(),
            cfg.engine.deadletter_max_payload_bytes,
            self.shutdown.clone(),
        );
        Ok(Lane {
            producer,
            deadletters,
        })
    }

    /// Both lanes, initialized side by side (a restarted instance's
    /// `init_transactions` waits for its predecessor's open transaction to
    /// be aborted; the two waits overlap).
    fn start_lanes(&self) -> Result<[Lane; 2], PipelineError> {
        let (a, b) = std::thread::scope(|s| {
            let b = s.spawn(|| self.start_lane(1));
            let a = self.start_lane(0);
            (a, b.join())
        });
        let b = b.unwrap_or_else(|_| {
            Err(PipelineError::Transaction(
                "starting the second transactional producer panicked".into(),
            ))
        });
        Ok([a?, b?])
    }

    /// After a failed transaction on `lane`: abort it (or, when the
    /// producer cannot be used again, replace it). A fenced producer, or a
    /// failure during shutdown, stops the worker.
    fn recover(
        &self,
        lanes: &mut [Lane; 2],
        lane: usize,
        failure: TxnFailure,
        requests: usize,
    ) -> Result<(), PipelineError> {
        let e = match failure {
            TxnFailure::Abort(e) => {
                tracing::warn!(error = %e, requests, "transaction aborted; rewinding");
                lanes[lane].producer.abort_transaction(self.timeout).err()
            }
            TxnFailure::Withdraw(why) => {
                tracing::info!(reason = why, requests, "transaction aborted; rewinding");
                lanes[lane].producer.abort_transaction(self.timeout).err()
            }
            TxnFailure::Fatal(e) => Some(e),
        };
        let Some(e) = e else {
            return Ok(());
        };
        if is_fenced(&e) || self.shutdown.is_cancelled() {
            let _ = lanes[lane].producer.abort_transaction(self.timeout);
            return Err(txn_error("transaction", e));
        }
        tracing::error!(worker = self.worker, lane, error = %e, "transactional producer failed; replacing it and deciding the batch again");
        lanes[lane] = self.start_lane(lane)?;
        Ok(())
    }

    /// Rewind every partition of `spans` to the first offset any of them
    /// read.
    fn rewind(&self, spans: &[&Span]) {
        let topic = &self.shared.cfg.topics.requests;
        for (p, f) in first_offsets(spans) {
            if let Err(e) = self
                .consumer
                .seek(topic, p, Offset::Offset(f), self.timeout)
            {
                tracing::debug!(partition = p, error = %e, "rewind (partition revoked?)");
            }
        }
    }

    /// Start committing `span` on `lane` (on a helper thread).
    fn commit(&self, lanes: &[Lane; 2], lane: usize, span: Span, requests: usize) -> Committing {
        let commit = match self.consumer.group_metadata() {
            None => Commit::Done(Err(TxnFailure::Withdraw(NO_GROUP))),
            Some(group) => {
                let tpl = offsets(&self.shared.cfg.topics.requests, &span);
                let producer = lanes[lane].producer.clone();
                let timeout = self.timeout;
                let spawned = std::thread::Builder::new()
                    .name(format!("txn-commit-{}", self.worker))
                    .spawn(move || commit_batch(&producer, tpl, &group, timeout, requests));
                match spawned {
                    Ok(h) => Commit::Thread(h),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start a commit thread; committing in line");
                        let tpl = offsets(&self.shared.cfg.topics.requests, &span);
                        let group = self.consumer.group_metadata();
                        Commit::Done(match group {
                            Some(g) => {
                                commit_batch(&lanes[lane].producer, tpl, &g, timeout, requests)
                            }
                            None => Err(TxnFailure::Withdraw(NO_GROUP)),
                        })
                    }
                }
            }
        };
        Committing {
            lane,
            span,
            requests,
            commit,
        }
    }

    /// Wait for the batch in flight. On failure, recover its lane and
    /// rewind to its first offsets plus those of `also` (a later batch,
    /// already aborted or about to be). Returns whether it committed.
    fn settle(
        &self,
        lanes: &mut [Lane; 2],
        mut c: Committing,
        also: Option<&Span>,
    ) -> Result<bool, PipelineError> {
        match c.result() {
            Ok(()) => {
                metrics::counter!(m::OFFSETS_STORED_TOTAL).increment(c.span.len() as u64);
                Ok(true)
            }
            Err(failure) => {
                self.recover(lanes, c.lane, failure, c.requests)?;
                let mut spans = vec![&c.span];
                spans.extend(also);
                self.rewind(&spans);
                Ok(false)
            }
        }
    }
}

/// Where to rewind after `spans` failed: per partition, the first offset
/// any of them read.
fn first_offsets(spans: &[&Span]) -> BTreeMap<i32, i64> {
    let mut first = BTreeMap::new();
    for span in spans {
        for (p, (f, _)) in span.iter() {
            first
                .entry(*p)
                .and_modify(|o: &mut i64| *o = (*o).min(*f))
                .or_insert(*f);
        }
    }
    first
}

/// The offsets a committed batch leaves its partitions at.
fn offsets(topic: &str, span: &Span) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, (_, next)) in span {
        // Cannot fail for a partition offset.
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
    }
    tpl
}

fn commit_batch(
    producer: &EngineProducer,
    tpl: TopicPartitionList,
    group: &ConsumerGroupMetadata,
    timeout: Duration,
    requests: usize,
) -> Result<(), TxnFailure> {
    let started = Instant::now();
    producer
        .send_offsets_to_transaction(&tpl, group, timeout)
        .map_err(classify_txn)?;
    producer.commit_transaction(timeout).map_err(classify_txn)?;
    metrics::histogram!(m::TRANSACTION_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::TRANSACTION_REQUESTS).record(requests as f64);
    Ok(())
}

/// The exactly-once worker loop (module doc).
pub(super) fn run(
    shared: &Shared,
    worker: usize,
    consumer: &BaseConsumer<WorkerContext>,
    shutdown: &CancellationToken,
) -> Result<(), PipelineError> {
    let cfg = &shared.cfg;
    let w = Worker {
        shared,
        worker,
        consumer,
        shutdown,
        timeout: Duration::from_millis(cfg.engine.shutdown_timeout_ms.max(10_000)),
    };
    let mut lanes = w.start_lanes()?;
    let mut lane = 0;
    let mut committing: Option<Committing> = None;
    let max_n = cfg.engine.transaction_max_messages;
    let max_wait = Duration::from_millis(cfg.engine.transaction_max_ms);

    while !shutdown.is_cancelled() {
        let Some(first) = poll_one(consumer, Duration::from_millis(100))? else {
            // Nothing to read: settle the commit in flight rather than hold
            // it open while idle.
            if let Some(c) = committing.take() {
                w.settle(&mut lanes, c, None)?;
            }
            continue;
        };
        let producer = &lanes[lane].producer;
        if let Err(e) = producer.begin_transaction() {
            if let Some(c) = committing.take() {
                w.settle(&mut lanes, c, None)?;
            }
            return Err(txn_error("begin_transaction", e));
        }
        let out = Output {
            producer,
            replies: None,
            deadletters: &lanes[lane].deadletters,
            tracker: None,
        };
        let revocations = consumer.context().revocations.load(Ordering::Acquire);
        let mut span = Span::new();
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
        let own = match failed {
            Some(SendError::Shutdown) => Err(TxnFailure::Withdraw("shutdown")),
            Some(SendError::Refused(e)) => Err(TxnFailure::Fatal(e)),
            Some(SendError::Encode(e)) => {
                let _ = lanes[lane].producer.abort_transaction(w.timeout);
                if let Some(c) = committing.take() {
                    w.settle(&mut lanes, c, None)?;
                }
                return Err(PipelineError::Encode(e));
            }
            // Partitions were revoked during the batch: its offsets may no
            // longer be this worker's to commit; abort, the kept partitions
            // rewind and the moved ones are decided by their new owner.
            None if consumer.context().revocations.load(Ordering::Acquire) != revocations => {
                Err(TxnFailure::Withdraw("partitions revoked during the batch"))
            }
            None => Ok(()),
        };
        // The previous batch's offsets come first: this batch commits only
        // once that one has.
        if let Some(c) = committing.take() {
            if !w.settle(&mut lanes, c, Some(&span))? {
                // Not committed: neither may this batch be (the rewind
                // above covers it).
                let aborted = match own {
                    Ok(()) => TxnFailure::Withdraw("the previous batch's commit failed"),
                    Err(f) => f,
                };
                w.recover(&mut lanes, lane, aborted, n)?;
                continue;
            }
        }
        match own {
            Ok(()) => {
                committing = Some(w.commit(&lanes, lane, span, n));
                lane = 1 - lane;
            }
            Err(failure) => {
                w.recover(&mut lanes, lane, failure, n)?;
                w.rewind(&[&span]);
            }
        }
    }
    if let Some(c) = committing.take() {
        w.settle(&mut lanes, c, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_and_the_one_after_it_rewind_to_the_earliest_first_offset() {
        // Batch k read partitions 0 and 1; batch k+1 read 1 and 2.
        let k: Span = [(0, (10, 20)), (1, (5, 9))].into_iter().collect();
        let next: Span = [(1, (9, 30)), (2, (7, 8))].into_iter().collect();
        let at = first_offsets(&[&k, &next]);
        assert_eq!(at, [(0, 10), (1, 5), (2, 7)].into_iter().collect());
        // Order does not matter.
        assert_eq!(first_offsets(&[&next, &k]), at);
        // One batch alone rewinds to its own first offsets.
        assert_eq!(
            first_offsets(&[&next]),
            [(1, 9), (2, 7)].into_iter().collect()
        );
    }

    #[test]
    fn a_committed_batch_leaves_each_partition_after_its_last_offset() {
        let span: Span = [(0, (10, 20)), (3, (5, 9))].into_iter().collect();
        let tpl = offsets("t", &span);
        let mut got: Vec<(i32, Offset)> = tpl
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        got.sort_by_key(|(p, _)| *p);
        assert_eq!(got, vec![(0, Offset::Offset(20)), (3, Offset::Offset(9))]);
    }
}
