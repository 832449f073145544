//! The engine's producer: delivery reports routed to the offset trackers,
//! and sending with backpressure (a full queue waits, never fails).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::KafkaBoundaryError;
use crate::metrics as m;
use crate::pipeline::reply::ReplyRoutes;
use crate::pipeline::tracker::Tracker;

/// The engine's shared producer.
pub type EngineProducer = ThreadedProducer<DeliveryContext>;

/// What a delivery confirms: one output record of one input offset.
#[derive(Debug)]
pub struct Ack {
    pub(crate) tracker: Option<Arc<Tracker>>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// A reply (request/reply): its failure is counted and remembered by
    /// the reply routes, never held against the offset.
    pub(crate) reply: Option<Arc<crate::pipeline::reply::ReplyRoutes>>,
}

impl Ack {
    /// The opaque of a record whose delivery the offset `offset` of
    /// `partition` waits for in `tracker` (none: exactly-once, where the
    /// transaction carries the offsets).
    pub(crate) fn tracked(tracker: Option<Arc<Tracker>>, partition: i32, offset: i64) -> Box<Ack> {
        Box::new(Ack {
            tracker,
            partition,
            offset,
            reply: None,
        })
    }

    /// The opaque of a record no offset waits for (a shadow difference, or
    /// a reply when `reply` is set).
    pub(crate) fn untracked(reply: Option<Arc<crate::pipeline::reply::ReplyRoutes>>) -> Box<Ack> {
        Box::new(Ack {
            tracker: None,
            partition: -1,
            offset: -1,
            reply,
        })
    }
}

/// Producer context: routes delivery reports to the offset trackers.
#[derive(Debug, Default)]
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::report_client_error("producer", &error, reason);
        tracing::warn!(error = %error, reason, "producer client error");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        m::hot::in_flight_done();
        match result {
            Ok(_) => {
                if ack.reply.is_some() {
                    m::hot::reply_delivered();
                }
                if let Some(t) = &ack.tracker {
                    t.ack(ack.partition, ack.offset);
                }
            }
            Err((e, msg)) => {
                let topic = msg.topic().to_string();
                if let Some(routes) = &ack.reply {
                    routes.delivery_failed(&topic, e);
                    return;
                }
                if crate::pipeline::reply::is_purged(e) && ack.tracker.is_none() {
                    // Untracked: not an at-least-once decision, whose
                    // offset waits for it (a purge there still stops the
                    // worker below, as any undelivered decision does).
                    tracing::debug!(%topic, "record of an aborted transaction purged");
                    return;
                }
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
    create(crate::kafka::producer_config(cfg), "producer")
}

/// Create the reply producer of at-least-once mode
/// ([`crate::kafka::reply_producer_config`]): replies never queue behind
/// the decision log's batches.
pub fn create_reply_producer(cfg: &Config) -> Result<EngineProducer, KafkaBoundaryError> {
    create(crate::kafka::reply_producer_config(cfg), "reply producer")
}

pub(crate) fn create(
    c: rdkafka::ClientConfig,
    what: &'static str,
) -> Result<EngineProducer, KafkaBoundaryError> {
    c.create_with_context(DeliveryContext)
        .map_err(|source| KafkaBoundaryError::Client { what, source })
}

/// Send a reply on the reply producer of at-least-once mode, without
/// waiting: a full queue drops the reply (counted by
/// [`ReplyRoutes::queue_full`], the topic stays usable), and any other
/// refusal counts as a failed delivery. The decision is already on its
/// way to `access.decisions` either way.
pub fn send_reply(
    producer: &EngineProducer,
    routes: &ReplyRoutes,
    record: BaseRecord<'_, [u8], [u8], Box<Ack>>,
) -> Result<(), &'static str> {
    match producer.send(record) {
        Ok(()) => {
            m::hot::in_flight_added();
            Ok(())
        }
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
            Err(routes.queue_full(back.topic))
        }
        Err((e, back)) => {
            routes.delivery_failed(back.topic, &e);
            Err(crate::pipeline::reply::failure::DELIVERY_FAILED)
        }
    }
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
                m::hot::in_flight_added();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reply::{failure, ReplyTo, TopicLookup};
    use rdkafka::producer::Producer;

    /// A lookup that always fails: `check` then answers from what the
    /// routes remember.
    struct Down;
    impl TopicLookup for Down {
        fn partitions(&self, _: &str) -> Result<i32, &'static str> {
            Err(failure::METADATA_ERROR)
        }
    }

    fn to(topic: &str) -> ReplyTo {
        ReplyTo {
            topic: topic.into(),
            partition: Some(0),
            correlation_id: None,
        }
    }

    /// Routes that know `topic` as usable (looked up once, with a lookup
    /// that succeeds).
    fn routes_knowing(topic: &str) -> Arc<ReplyRoutes> {
        struct Up;
        impl TopicLookup for Up {
            fn partitions(&self, _: &str) -> Result<i32, &'static str> {
                Ok(1)
            }
        }
        let r = Arc::new(ReplyRoutes::default());
        assert_eq!(r.check(&Up, &to(topic)), Ok(()));
        r
    }

    fn record<'a>(topic: &'a str, ack: Box<Ack>) -> BaseRecord<'a, [u8], [u8], Box<Ack>> {
        BaseRecord::with_opaque_to(topic, ack)
            .key(&b"k"[..])
            .payload(&b"v"[..])
            .partition(0)
    }

    #[test]
    fn a_full_reply_queue_drops_the_reply_and_keeps_the_topic() {
        // No broker: nothing leaves the queue, which holds one record.
        let producer = create(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9")
                .set("queue.buffering.max.messages", "1")
                .set("linger.ms", "60000")
                .clone(),
            "test",
        )
        .unwrap();
        let r = routes_knowing("replies");
        let rec = || record("replies", Ack::untracked(None));
        assert_eq!(send_reply(&producer, &r, rec()), Ok(()));
        assert_eq!(send_reply(&producer, &r, rec()), Err(failure::QUEUE_FULL));
        assert_eq!(
            r.check(&Down, &to("replies")),
            Ok(()),
            "a full queue is not the topic's fault"
        );
        producer.purge(rdkafka::producer::PurgeConfig::default().queue());
    }

    /// Send one reply through a producer with no broker, let `fail` make
    /// its delivery report come (a timeout, a purge), and check that the
    /// report left the reply topic usable.
    fn reply_failure_keeps_the_topic(
        timeout_ms: Option<&str>,
        fail: impl Fn(&EngineProducer),
        why: &str,
    ) {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:9");
        if let Some(ms) = timeout_ms {
            c.set("message.timeout.ms", ms);
        }
        let producer = create(c, "test").unwrap();
        let r = routes_knowing("replies");
        let rec = record("replies", Ack::untracked(Some(Arc::clone(&r))));
        assert_eq!(send_reply(&producer, &r, rec), Ok(()));
        fail(&producer);
        assert_eq!(
            producer.flush(Duration::from_secs(10)).err(),
            None,
            "the delivery report came"
        );
        assert_eq!(r.check(&Down, &to("replies")), Ok(()), "{why}");
    }

    #[test]
    fn a_reply_purged_by_an_aborted_transaction_leaves_its_topic_usable() {
        // An exactly-once abort purges the transaction's records, replies
        // included; the batch is decided again, so the topic is not at
        // fault (before: unusable for 10 s, and the replies of the batch
        // decided again were skipped).
        reply_failure_keeps_the_topic(
            None,
            |p| p.purge(rdkafka::producer::PurgeConfig::default().queue().inflight()),
            "a purge is the transaction's abort, not the topic's fault",
        );
    }

    #[test]
    fn a_timed_out_reply_leaves_its_topic_usable() {
        // No broker: the reply times out after 100 ms, and the producer's
        // delivery report reaches the routes.
        reply_failure_keeps_the_topic(
            Some("100"),
            |_| {},
            "a timeout is the broker's, not the topic's",
        );
    }
}
