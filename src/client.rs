//! Request/reply for API frontends: send an access request, get its decision
//! back in milliseconds.
//!
//! The convention is Spring for Apache Kafka's `ReplyingKafkaTemplate`: a
//! request record on the requests topic (value: the [`AccessRequest`] JSON,
//! key: the subject id) carries the headers
//!
//! - `kafka_replyTopic`: the topic to send the decision to (UTF-8);
//! - `kafka_replyPartition`: the partition, 4 bytes, big-endian `i32`
//!   (absent: the engine partitions the reply by its key, the request id);
//! - `kafka_correlationId`: opaque bytes (at most 256), copied unchanged
//!   onto the reply.
//!
//! The engine sends the decision (the same JSON as on `access.decisions`,
//! keyed by `request_id`) to that topic as well. A [`Client`] owns one
//! producer and one reply consumer: a dedicated thread with a
//! `BaseConsumer` *assigned* (no consumer group) to its reply partition, or
//! to every partition of the reply topic when
//! [`ClientOptions::reply_partition`] is `None`, from the high watermark
//! read while [`Client::new`] runs (so no reply to a call made after `new`
//! returned can be missed). Replies are matched to calls by their
//! correlation id (16 bytes: a random 64-bit tag of the client, then a
//! counter); a reply nobody waits for (it came after its call timed out, or
//! it is another client's on a shared partition) is dropped and counted.
//!
//! **A call that gets no decision within its timeout is denied** by the
//! client itself ([`timeout_decision`]: outcome `deny`, reason `timeout`,
//! `engine_instance` `"client"`): fail closed. The timeout covers the wait
//! for an in-flight slot ([`ClientOptions::max_in_flight`], the client's
//! backpressure) too. A request whose delivery to the brokers fails ends its
//! call with [`ClientError::Delivery`], never a hang.
//!
//! Give each client (each frontend process) a reply partition of its own,
//! or a reply topic of its own: clients sharing a partition each read every
//! reply on it, and drop the others' (`clearance_client_replies_dropped_total{reason="foreign"}`).
//!
//! ```no_run
//! use std::time::Duration;
//! use clearance::client::{Client, ClientOptions};
//! use clearance::event::Outcome;
//!
//! # async fn frontend(req: clearance::event::AccessRequest) -> Result<(), clearance::client::ClientError> {
//! let mut opts = ClientOptions::default();
//! opts.kafka.bootstrap_servers = "127.0.0.1:9092".into();
//! opts.reply_topic = "access.replies".into();
//! opts.reply_partition = Some(3); // this frontend's own partition
//! let client = Client::new(opts)?; // blocks briefly: metadata, watermarks
//!
//! let decision = client.decide(&req, Duration::from_millis(200)).await?;
//! if decision.outcome == Outcome::Allow {
//!     // serve the model
//! } else {
//!     // refuse, with decision.reasons (["timeout"] when no decision came back)
//! }
//! client.close();
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{oneshot, Semaphore};

use crate::config::KafkaConfig;
use crate::event::{AccessRequest, Decision, DecisionInputs, Outcome, Versions};
use crate::kafka::{hint_for, RetryHint};
use crate::metrics as m;
use crate::vocab::{builtin, reason};

/// The header names (and the correlation id's length limit) are the
/// engine's own ([`crate::pipeline::reply`]).
pub use crate::pipeline::reply::{
    CORRELATION_ID_HEADER, MAX_CORRELATION_ID_BYTES, REPLY_PARTITION_HEADER, REPLY_TOPIC_HEADER,
};
/// `engine_instance` of a decision the client made itself (a timeout deny).
pub const CLIENT_INSTANCE: &str = "client";

/// How long [`Client::new`] waits for the topics' metadata and the reply
/// partitions' high watermarks before it gives up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the reply thread checks whether it should stop (its poll
/// timeout): the longest [`Client::close`] waits for it.
const REPLY_POLL: Duration = Duration::from_millis(100);

/// Options of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bootstrap servers and `kafka.properties` (TLS, SASL, tuning), applied
    /// to the producer and the reply consumer as to every clearance client
    /// ([`crate::kafka::base_config`]).
    pub kafka: KafkaConfig,
    /// The engine's requests topic (`topics.requests`).
    pub requests_topic: String,
    /// The topic the engine sends the decisions back to. It must exist.
    pub reply_topic: String,
    /// The partition of `reply_topic` this client reads, sent as
    /// `kafka_replyPartition`; `None`: no partition header (the engine
    /// partitions replies by request id) and the client reads every
    /// partition of the reply topic.
    pub reply_partition: Option<i32>,
    /// At most this many calls in flight; more wait for a slot, within
    /// their timeout (backpressure).
    pub max_in_flight: usize,
    /// The producer's `linger.ms`: 0 sends each request at once (lowest
    /// latency); a few ms batch more requests per produce request under
    /// load.
    pub linger_ms: u64,
}

impl Default for ClientOptions {
    /// Local brokers, the default topics (`access.requests`,
    /// `access.replies`), reply partition 0, 10,000 calls in flight, no
    /// linger.
    fn default() -> Self {
        ClientOptions {
            kafka: KafkaConfig::default(),
            requests_topic: crate::config::TopicsConfig::default().requests,
            reply_topic: "access.replies".into(),
            reply_partition: Some(0),
            max_in_flight: 10_000,
            linger_ms: 0,
        }
    }
}

/// Errors of the [`Client`]. A timeout is not one: it is a deny
/// ([`timeout_decision`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The options are not usable.
    #[error("invalid client options: {0}")]
    Options(String),
    /// A Kafka client could not be created.
    #[error("cannot create the client's Kafka {what}: {source}")]
    Create {
        /// Which one (`producer`, `reply consumer`).
        what: &'static str,
        /// The cause.
        source: KafkaError,
    },
    /// A topic does not exist, or the reply partition is not one of its
    /// partitions.
    #[error("topic {topic}: {message}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong.
        message: String,
    },
    /// Metadata, watermarks or the assignment of the reply partitions
    /// failed (brokers unreachable within [`STARTUP_TIMEOUT`]).
    #[error("cannot read {topic} from the brokers: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The cause.
        source: KafkaError,
    },
    /// The request could not be queued for sending (the producer's queue
    /// is full, say).
    #[error("cannot send the request: {0}")]
    Send(KafkaError),
    /// The brokers did not take the request: librdkafka's error.
    #[error("the request was not delivered: {0}")]
    Delivery(KafkaError),
    /// A reply arrived for the call but is not a decision of the request.
    #[error("bad reply: {0}")]
    BadReply(String),
    /// The client was closed (or its reply thread stopped) while the call
    /// waited.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// Whether retrying the call (or creating the client again) can help.
    pub fn retry_hint(&self) -> RetryHint {
        let code = |e: &KafkaError| {
            e.rdkafka_error_code()
                .map_or(RetryHint::Retryable, hint_for)
        };
        match self {
            ClientError::Options(_)
            | ClientError::Create { .. }
            | ClientError::Topic { .. }
            | ClientError::BadReply(_)
            | ClientError::Closed => RetryHint::Fatal,
            ClientError::Metadata { .. } => RetryHint::Retryable,
            ClientError::Send(e) | ClientError::Delivery(e) => code(e),
        }
    }
}

/// A correlation id: the client's random 64-bit tag, then a per-client
/// counter, both big-endian (16 bytes, like Spring's UUIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CorrelationId([u8; 16]);

impl CorrelationId {
    /// The id of call `seq` of the client tagged `tag`.
    pub fn new(tag: u64, seq: u64) -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&tag.to_be_bytes());
        b[8..].copy_from_slice(&seq.to_be_bytes());
        CorrelationId(b)
    }

    /// The bytes sent in `kafka_correlationId`.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id in a reply's header; `None` unless it is 16 bytes long.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(CorrelationId)
    }

    /// The tag of the client that made it.
    pub fn tag(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    /// The call's sequence number within its client.
    pub fn seq(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().expect("8 bytes"))
    }
}

/// `kafka_replyPartition` as Spring encodes it: 4 bytes, big-endian.
pub fn encode_reply_partition(p: i32) -> [u8; 4] {
    p.to_be_bytes()
}

/// The calls waiting for their reply: correlation id → the sender that
/// completes the call. `count` is the number of entries, kept exactly
/// (DashMap's `len` adds its shards up one by one, and may count a call
/// that ended and one that began meanwhile both): it goes up before an
/// entry is inserted and down after one is removed, so it never
/// undercounts, and since a call takes its in-flight slot before it
/// registers and gives it back after its entry is gone, it never exceeds
/// `max_in_flight`.
#[derive(Debug, Default)]
struct Pending {
    map: DashMap<CorrelationId, oneshot::Sender<Vec<u8>>>,
    count: AtomicUsize,
}

impl Pending {
    /// Register a call; the guard removes it again when dropped (the call
    /// returned, timed out, or its future was dropped).
    fn register(&self, id: CorrelationId) -> (PendingGuard<'_>, oneshot::Receiver<Vec<u8>>) {
        let (tx, rx) = oneshot::channel();
        self.count.fetch_add(1, Ordering::AcqRel);
        if self.map.insert(id, tx).is_some() {
            // Never: ids are unique per client. Keep the count exact anyway.
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        (PendingGuard { pending: self, id }, rx)
    }

    fn remove(&self, id: &CorrelationId) -> Option<oneshot::Sender<Vec<u8>>> {
        let (_, tx) = self.map.remove(id)?;
        self.count.fetch_sub(1, Ordering::AcqRel);
        Some(tx)
    }

    /// Complete the call `id` with a reply; `false` when nobody waits for it.
    fn complete(&self, id: &CorrelationId, reply: Vec<u8>) -> bool {
        match self.remove(id) {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// End every waiting call (their receivers see the sender dropped).
    fn clear(&self) {
        self.map.retain(|_, _| {
            self.count.fetch_sub(1, Ordering::AcqRel);
            false
        });
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// Removes its call from [`Pending`] when dropped, however the call ends.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: CorrelationId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.remove(&self.id);
    }
}

/// The Kafka context of the client's producer and consumer: an
/// authentication or TLS failure is recorded and counted like the engine's
/// (`crate::kafka::report_client_error`); other errors are logged
/// (librdkafka retries them).
#[derive(Debug, Clone, Copy)]
struct ClientKafkaContext;

impl rdkafka::ClientContext for ClientKafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::report_client_error("client", &error, reason);
        tracing::warn!(client = "request/reply client", error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for ClientKafkaContext {}

struct Inner {
    opts: ClientOptions,
    producer: FutureProducer<ClientKafkaContext>,
    pending: Arc<Pending>,
    permits: Arc<Semaphore>,
    tag: u64,
    seq: AtomicU64,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.permits.close();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        // Calls still waiting end with `Closed` (their senders dropped).
        self.pending.clear();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A request/reply client of the engine (see the [module](self) doc).
/// Cheap to clone (one `Arc`); `Send + Sync`. The reply thread stops when
/// the last clone is dropped, or at [`Client::close`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("requests_topic", &self.inner.opts.requests_topic)
            .field("reply_topic", &self.inner.opts.reply_topic)
            .field("reply_partition", &self.inner.opts.reply_partition)
            .field("pending", &self.pending())
            .finish()
    }
}

/// The producer's configuration: [`crate::kafka::base_config`] (the
/// operator's `kafka.properties` included), `linger.ms` from the options,
/// then defaults for what the properties do not set: `acks=all`,
/// idempotence, Nagle off (a request is one small write), a 30 s delivery
/// timeout.
fn producer_config(opts: &ClientOptions) -> ClientConfig {
    let mut c = crate::kafka::base_config(&opts.kafka, "client");
    c.set("linger.ms", opts.linger_ms.to_string());
    let defaults: [(&[&str], &str); 4] = [
        (&["acks", "request.required.acks"], "all"),
        (&["enable.idempotence"], "true"),
        (&["socket.nagle.disable"], "true"),
        (&["message.timeout.ms", "delivery.timeout.ms"], "30000"),
    ];
    set_defaults(&mut c, &defaults);
    c
}

/// The reply consumer's configuration: [`crate::kafka::base_config`], a
/// group id that never joins (partitions are assigned by hand), no commits,
/// Nagle off. `fetch.wait.max.ms` stays librdkafka's (500 ms): with
/// `fetch.min.bytes=1` the broker answers a waiting fetch as soon as a
/// reply is appended, so the wait bounds only empty fetches, not latency.
/// `read_committed` (librdkafka's default): a reply of an aborted
/// exactly-once transaction is never seen.
fn consumer_config(opts: &ClientOptions) -> ClientConfig {
    let mut c = crate::kafka::base_config(&opts.kafka, "client-replies");
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let group = format!("{}-client-unused", opts.kafka.group_id);
    let defaults: [(&[&str], &str); 3] = [
        (&["group.id"], &group),
        (&["socket.nagle.disable"], "true"),
        (&["auto.offset.reset"], "latest"),
    ];
    set_defaults(&mut c, &defaults);
    c
}

fn set_defaults(c: &mut ClientConfig, defaults: &[(&[&str], &str)]) {
    for (names, value) in defaults {
        if names.iter().all(|n| c.get(n).is_none()) {
            c.set(names[0], *value);
        }
    }
}

/// The partitions of `topic`, retried while the metadata is not there yet,
/// until `deadline`.
fn partitions_of<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    deadline: Instant,
) -> Result<BTreeSet<i32>, ClientError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.fetch_metadata(Some(topic), left.max(Duration::from_millis(100))) {
            Ok(md) => {
                let parts: BTreeSet<i32> = md
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !parts.is_empty() {
                    return Ok(parts);
                }
                if Instant::now() >= deadline {
                    return Err(ClientError::Topic {
                        topic: topic.to_string(),
                        message: "does not exist".into(),
                    });
                }
            }
            Err(source) if Instant::now() >= deadline => {
                return Err(ClientError::Metadata {
                    topic: topic.to_string(),
                    source,
                })
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Client {
    /// Connect: create the producer and the reply consumer, check that both
    /// topics exist (and the reply partition), read the reply partitions'
    /// high watermarks and assign the consumer there, and start the reply
    /// thread.
    ///
    /// **Blocks** the calling thread while it talks to the brokers (a few
    /// milliseconds on a healthy cluster, at most about
    /// [`STARTUP_TIMEOUT`]): from async code, call it from
    /// `tokio::task::spawn_blocking` or before serving. Every call made
    /// after it returns gets its reply, however soon the engine answers.
    pub fn new(opts: ClientOptions) -> Result<Client, ClientError> {
        if opts.max_in_flight == 0 {
            return Err(ClientError::Options(
                "max_in_flight must be at least 1".into(),
            ));
        }
        if opts.requests_topic.trim().is_empty() || opts.reply_topic.trim().is_empty() {
            return Err(ClientError::Options(
                "requests_topic and reply_topic must be set".into(),
            ));
        }
        if opts.reply_partition.is_some_and(|p| p < 0) {
            return Err(ClientError::Options(
                "reply_partition must not be negative".into(),
            ));
        }
        let producer: FutureProducer<ClientKafkaContext> = producer_config(&opts)
            .create_with_context(ClientKafkaContext)
            .map_err(|source| ClientError::Create {
                what: "producer",
                source,
            })?;
        let consumer: BaseConsumer<ClientKafkaContext> = consumer_config(&opts)
            .create_with_context(ClientKafkaContext)
            .map_err(|source| ClientError::Create {
                what: "reply consumer",
                source,
            })?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        // Through the producer: it learns the topic's leaders now, not on
        // the first call.
        partitions_of(producer.client(), &opts.requests_topic, deadline)?;
        let reply_parts = partitions_of(consumer.client(), &opts.reply_topic, deadline)?;
        let wanted: Vec<i32> = match opts.reply_partition {
            Some(p) if !reply_parts.contains(&p) => {
                return Err(ClientError::Topic {
                    topic: opts.reply_topic.clone(),
                    message: format!("has no partition {p} (partitions 0..{})", reply_parts.len()),
                })
            }
            Some(p) => vec![p],
            None => reply_parts.into_iter().collect(),
        };
        let metadata_err = |source| ClientError::Metadata {
            topic: opts.reply_topic.clone(),
            source,
        };
        let mut tpl = TopicPartitionList::new();
        for p in wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, high) = consumer
                .fetch_watermarks(&opts.reply_topic, p, left.max(Duration::from_millis(100)))
                .map_err(metadata_err)?;
            tpl.add_partition_offset(&opts.reply_topic, p, Offset::Offset(high))
                .map_err(metadata_err)?;
        }
        consumer.assign(&tpl).map_err(metadata_err)?;

        let pending = Arc::new(Pending::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tag: u64 = rand::random();
        let thread = {
            let (pending, stop) = (pending.clone(), stop.clone());
            std::thread::Builder::new()
                .name("clearance-client-replies".into())
                .spawn(move || reply_loop(consumer, &pending, &stop, tag))
                .map_err(|e| ClientError::Options(format!("cannot start the reply thread: {e}")))?
        };
        Ok(Client {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(opts.max_in_flight)),
                opts,
                producer,
                pending,
                tag,
                seq: AtomicU64::new(0),
                stop,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Decide `req`: send it (key: its subject id) and wait for its
    /// decision. After `timeout` without one (the engine is down, slow, or
    /// the slots of [`ClientOptions::max_in_flight`] stayed taken), the
    /// decision is [`timeout_decision`]: a deny with reason `timeout`. An
    /// error only when the request could not be delivered, the reply is not
    /// a decision of this request, or the client is closed.
    pub async fn decide(
        &self,
        req: &AccessRequest,
        timeout: Duration,
    ) -> Result<Decision, ClientError> {
        let payload = serde_json::to_vec(req)
            .map_err(|e| ClientError::Options(format!("cannot encode the request: {e}")))?;
        match self
            .call_raw(req.subject_id.as_bytes(), &payload, timeout)
            .await?
        {
            None => Ok(timeout_decision(req)),
            Some(bytes) => {
                let d: Decision = serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::BadReply(format!("not a decision: {e}")))?;
                if d.request_id != req.request_id {
                    return Err(ClientError::BadReply(format!(
                        "decision of request {:?}, not {:?}",
                        d.request_id, req.request_id
                    )));
                }
                Ok(d)
            }
        }
    }

    /// The raw round trip [`Client::decide`] is built on: send `payload`
    /// with key `key` and the reply headers to the requests topic, and
    /// return the value of the reply with this call's correlation id:
    /// `Ok(Some(bytes))`, or `Ok(None)` when none came within `timeout`
    /// (which includes the wait for an in-flight slot). Dropping the future
    /// abandons the call (its pending entry is removed).
    pub async fn call_raw(
        &self,
        key: &[u8],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let started = Instant::now();
        let result = self.round_trip(key, payload, timeout).await;
        let label = match &result {
            Ok(Some(_)) => {
                metrics::histogram!(m::CLIENT_ROUND_TRIP_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                "reply"
            }
            Ok(None) => "timeout",
            Err(_) => "error",
        };
        metrics::counter!(m::CLIENT_CALLS_TOTAL, "result" => label).increment(1);
        result
    }

    async fn round_trip(
        &self,
        key: &[u8],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let inner = &*self.inner;
        let deadline = tokio::time::Instant::now() + timeout;
        if inner.stop.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let _permit = match tokio::time::timeout_at(deadline, inner.permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                metrics::counter!(m::CLIENT_TIMEOUTS_TOTAL, "stage" => "permit").increment(1);
                return Ok(None);
            }
        };
        let id = CorrelationId::new(inner.tag, inner.seq.fetch_add(1, Ordering::Relaxed));
        // Dropped before `_permit` (declared later): the entry is gone
        // before the slot is given back.
        let (_guard, mut reply) = inner.pending.register(id);
        let mut headers = OwnedHeaders::new_with_capacity(3).insert(Header {
            key: REPLY_TOPIC_HEADER,
            value: Some(inner.opts.reply_topic.as_bytes()),
        });
        if let Some(p) = inner.opts.reply_partition {
            headers = headers.insert(Header {
                key: REPLY_PARTITION_HEADER,
                value: Some(&encode_reply_partition(p)),
            });
        }
        headers = headers.insert(Header {
            key: CORRELATION_ID_HEADER,
            value: Some(id.as_bytes()),
        });
        let record = FutureRecord::to(&inner.opts.requests_topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        let delivery = inner
            .producer
            .send_result(record)
            .map_err(|(e, _)| ClientError::Send(e))?;
        let wait = async {
            let mut delivery = Some(delivery);
            loop {
                tokio::select! {
                    r = &mut reply => return r.map_err(|_| ClientError::Closed),
                    d = async { delivery.as_mut().expect("guarded").await }, if delivery.is_some() => {
                        match d {
                            Ok(Ok(_)) => delivery = None,
                            Ok(Err((e, _))) => return Err(ClientError::Delivery(e)),
                            Err(_) => return Err(ClientError::Delivery(KafkaError::Canceled)),
                        }
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(r) => r.map(Some),
            Err(_) => {
                metrics::counter!(m::CLIENT_TIMEOUTS_TOTAL, "stage" => "reply").increment(1);
                Ok(None)
            }
        }
    }

    /// Calls waiting for their reply (entries of the pending map).
    pub fn pending(&self) -> usize {
        self.inner.pending.len()
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Stop the reply thread (waiting for it, at most about 100 ms) and end
    /// every waiting call, of this handle and of its clones, with
    /// [`ClientError::Closed`]; later calls fail the same way. Dropping the
    /// last clone does the same.
    pub fn close(self) {
        self.inner.shutdown();
    }
}

/// The reply thread: every reply read completes its call; a reply nobody
/// waits for is dropped and counted by reason (`late`: this client's, its
/// call gone; `foreign`: another client's; `no_correlation_id`).
fn reply_loop(
    consumer: BaseConsumer<ClientKafkaContext>,
    pending: &Pending,
    stop: &AtomicBool,
    tag: u64,
) {
    while !stop.load(Ordering::Acquire) {
        let msg = match consumer.poll(REPLY_POLL) {
            None => continue,
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                if !matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::PartitionEOF)) {
                    tracing::warn!(error = %e, "request/reply client: reply consumer error");
                }
                continue;
            }
        };
        let id = msg.headers().and_then(|h| {
            h.iter()
                .filter(|h| h.key == CORRELATION_ID_HEADER)
                .last()
                .and_then(|h| h.value)
                .and_then(CorrelationId::from_bytes)
        });
        let dropped = match id {
            None => Some("no_correlation_id"),
            Some(id) => {
                let value = msg.payload().unwrap_or_default().to_vec();
                if pending.complete(&id, value) {
                    None
                } else if id.tag() == tag {
                    Some("late")
                } else {
                    Some("foreign")
                }
            }
        };
        if let Some(reason) = dropped {
            metrics::counter!(m::CLIENT_REPLIES_DROPPED_TOTAL, "reason" => reason).increment(1);
        }
    }
}

/// The decision of a call that got no reply in time: a deny (fail closed)
/// with reason `timeout` and rule id `client:timeout`, the request as its
/// only input, empty policy versions, `decided_at` now and
/// `engine_instance` [`CLIENT_INSTANCE`] (`"client"`: no engine decided
/// it). Never published; the engine may still decide the request later
/// (its reply is then dropped as `late`).
pub fn timeout_decision(req: &AccessRequest) -> Decision {
    Decision {
        request_id: req.request_id.clone(),
        outcome: Outcome::Deny,
        reasons: vec![reason::TIMEOUT.to_string()],
        rule_ids: vec![builtin::CLIENT_TIMEOUT.to_string()],
        legal_basis: vec![],
        obligations: vec![],
        versions: Versions {
            policy_id: String::new(),
            policy_version: String::new(),
            data_version: String::new(),
            policy_digest: String::new(),
            subject: None,
            organization: None,
            owners: vec![],
        },
        inputs: Some(DecisionInputs {
            request: req.clone(),
            subject: None,
            organization: None,
            owners: vec![],
        }),
        decided_at: time::OffsetDateTime::now_utc(),
        source: None,
        engine_instance: CLIENT_INSTANCE.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_encode_tag_and_counter_big_endian() {
        let id = CorrelationId::new(0x0102_0304_0506_0708, 0x1112_1314_1516_1718);
        assert_eq!(
            id.as_bytes(),
            &[1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(id.tag(), 0x0102_0304_0506_0708);
        assert_eq!(id.seq(), 0x1112_1314_1516_1718);
        assert_eq!(CorrelationId::from_bytes(id.as_bytes()), Some(id));
        assert_eq!(CorrelationId::from_bytes(&[1; 15]), None);
        assert_eq!(CorrelationId::from_bytes(&[1; 17]), None);
        assert_ne!(CorrelationId::new(7, 1), CorrelationId::new(7, 2));
        assert_ne!(CorrelationId::new(7, 1), CorrelationId::new(8, 1));
        assert!(id.as_bytes().len() <= MAX_CORRELATION_ID_BYTES);
    }

    #[test]
    fn reply_partition_is_four_bytes_big_endian() {
        assert_eq!(encode_reply_partition(0), [0, 0, 0, 0]);
        assert_eq!(encode_reply_partition(3), [0, 0, 0, 3]);
        assert_eq!(encode_reply_partition(0x0102_0304), [1, 2, 3, 4]);
    }

    #[test]
    fn the_guard_removes_the_entry_however_the_call_ends() {
        let p = Pending::default();
        // Completed: the reply reaches the receiver, the entry is gone.
        let (g, mut rx) = p.register(CorrelationId::new(1, 1));
        assert_eq!(p.len(), 1);
        assert!(p.complete(&CorrelationId::new(1, 1), b"r".to_vec()));
        assert_eq!(rx.try_recv().unwrap(), b"r");
        assert_eq!(p.len(), 0);
        drop(g);
        assert!(!p.complete(&CorrelationId::new(1, 1), b"late".to_vec()));
        // Dropped (timeout or cancellation): the guard removes it.
        let (g, _rx) = p.register(CorrelationId::new(1, 2));
        let (g3, _rx3) = p.register(CorrelationId::new(1, 3));
        assert_eq!(p.len(), 2);
        drop(g);
        assert_eq!(p.len(), 1);
        assert!(!p.complete(&CorrelationId::new(1, 2), b"late".to_vec()));
        drop(g3);
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn a_dropped_call_future_leaves_no_entry() {
        let p = Arc::new(Pending::default());
        let fut = {
            let p = p.clone();
            async move {
                let (_g, rx) = p.register(CorrelationId::new(2, 1));
                rx.await.ok()
            }
        };
        let task = tokio::spawn(fut);
        while p.len() == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        assert_eq!(p.len(), 0, "cancellation removed the entry");
    }

    #[test]
    fn the_timeout_decision_denies_with_the_request() {
        let s = crate::loadgen::subject("t", 0);
        let req = crate::loadgen::request(&s, "r-1".into(), crate::loadgen::TAGGED_MODEL);
        let d = timeout_decision(&req);
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.reasons, vec!["timeout"]);
        assert_eq!(d.request_id, "r-1");
        assert_eq!(d.engine_instance, "client");
        assert_eq!(d.inputs.as_ref().unwrap().request, req);
        assert!(d.versions.policy_id.is_empty() && d.versions.policy_version.is_empty());
        // A decision like any other on the wire.
        let back: Decision = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert!(crate::vocab::reason::DENY.contains(&"timeout"));
    }

    #[test]
    fn client_settings_take_the_operators_properties() {
        let mut o = ClientOptions::default();
        o.kafka
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        o.kafka
            .properties
            .insert("delivery.timeout.ms".into(), "5000".into());
        o.linger_ms = 2;
        let p = producer_config(&o);
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(p.get("linger.ms"), Some("2"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("message.timeout.ms"), None, "its alias is set");
        let c = consumer_config(&o);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert!(c.get("group.id").is_some());
        let d = ClientOptions::default();
        assert_eq!(
            (d.max_in_flight, d.linger_ms, d.reply_partition),
            (10_000, 0, Some(0))
        );
    }

    #[test]
    fn hints() {
        assert_eq!(ClientError::Closed.retry_hint(), RetryHint::Fatal);
        assert_eq!(
            ClientError::Send(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                .retry_hint(),
            RetryHint::Retryable
        );
        assert_eq!(
            ClientError::Delivery(KafkaError::MessageProduction(
                RDKafkaErrorCode::TopicAuthorizationFailed
            ))
            .retry_hint(),
            RetryHint::Fatal
        );
    }
}
