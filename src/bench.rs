//! The drain benchmark's pieces (`clearance bench ...`, driven by
//! `scripts/bench`; BENCHMARKS.md, "Drain"): a no-work pass-through pipe, a
//! watcher that measures one contender draining a backlog, the outcome
//! comparison of two decision topics, the input loader, and the Markdown
//! report.
//!
//! - [`passthrough`]: consume a topic and produce the same bytes (key and
//!   value) to another, storing each offset only after its record is
//!   delivered, like the engine's at-least-once path: the engine's own
//!   producer, delivery context and offset tracker
//!   ([`crate::pipeline::producer`], [`crate::pipeline::Tracker`]), a
//!   `BaseConsumer` per worker with the request consumers' settings
//!   ([`crate::kafka::request_consumer_config`]). [`Profile::Engine`] is
//!   exactly clearance's client settings; [`Profile::Batched`] the best
//!   batching settings found.
//! - [`watch`]: polls the output topic's high watermarks, starts the clock
//!   at the first output record, stops it at the expected count, and
//!   samples the CPU time of the contender (its process tree) and of the
//!   broker over exactly that window; the peak RSS from `VmHWM`.
//! - [`compare`]: `request_id` and `outcome` of every record of two topics.
//! - [`load`]: the eligibility feed and the requests, published once.
//! - [`render`]: the Markdown table, medians of the runs and ratios taken
//!   within each run.
//! - [`cache`]: the eligibility cache at scale, in process: RSS per
//!   record, lookup plus decide, and the DRAM probe beside them.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub mod cache;

use crate::config::{Config, KafkaConfig};
use crate::kafka::KafkaBoundaryError;
use crate::loadgen::LoadgenError;
use crate::pipeline::producer::{create_producer, send_with_backpressure, Ack, SendError};
use crate::pipeline::{store_done, EngineProducer, Tracker};

/// Errors of the benchmark tools.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A client could not be created, or a topic administered.
    #[error(transparent)]
    Boundary(#[from] KafkaBoundaryError),
    /// A Kafka call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Publishing the input failed.
    #[error(transparent)]
    Load(#[from] LoadgenError),
    /// A record could not be delivered (its offset was not stored).
    #[error("pass-through delivery failed: {0}")]
    Delivery(String),
    /// The watched process is gone, or its `/proc` files unreadable.
    #[error("process {pid}: {message}")]
    Process {
        /// The process.
        pid: u32,
        /// What happened.
        message: String,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Bad input (an option, a results line, a document without markers).
    #[error("{0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------
// Client profiles
// ---------------------------------------------------------------------------

/// The batched profile's producer linger (`engine.producer_linger_ms`).
pub const BATCHED_LINGER_MS: u64 = 20;

/// The batched profile's librdkafka properties (set unless the operator's
/// `kafka.properties` set them). Measured on the 2-core development machine
/// (BENCHMARKS.md, "Drain": what was tried).
pub const BATCHED_PROPERTIES: &[(&str, &str)] = &[
    // librdkafka's default, 1 s, stalls the prefetch once
    // `queued.min.messages` are queued: the cap of the engine profile.
    ("fetch.queue.backoff.ms", "20"),
    ("batch.size", "1000000"),
];

/// Which client settings a pass-through uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Exactly clearance's: the request consumers' and the producer's
    /// settings of [`crate::kafka`] with the configuration as given.
    Engine,
    /// Clearance's, plus [`BATCHED_PROPERTIES`] and a
    /// [`BATCHED_LINGER_MS`] linger: the ceiling.
    Batched,
}

impl Profile {
    /// Apply the profile to a configuration. Properties the configuration
    /// already sets win.
    pub fn apply(self, cfg: &mut Config) {
        if self == Profile::Batched {
            cfg.engine.producer_linger_ms = BATCHED_LINGER_MS;
            for (k, v) in BATCHED_PROPERTIES {
                cfg.kafka
                    .properties
                    .entry((*k).to_string())
                    .or_insert_with(|| (*v).to_string());
            }
        }
    }

    /// The profile's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Engine => "engine",
            Profile::Batched => "batched",
        }
    }
}

impl FromStr for Profile {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "engine" => Ok(Profile::Engine),
            "batched" => Ok(Profile::Batched),
            _ => Err(BenchError::Invalid(format!(
                "unknown profile {s:?} (engine or batched)"
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------

/// Create `name` with `partitions` and `configs` (replication from
/// `topics.replication_factor` is not needed here: 1). An existing topic is
/// left alone.
pub async fn create_topic(
    k: &KafkaConfig,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), BenchError> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::admin_config(k)
            .create()
            .map_err(|source| KafkaBoundaryError::Client {
                what: "admin client",
                source,
            })?;
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (ck, cv) in configs {
        t = t.set(ck, cv);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics([&t], &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => {
                return Err(BenchError::Invalid(format!("cannot create topic {t}: {e}")))
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Pass-through
// ---------------------------------------------------------------------------

/// What a pass-through is to do.
#[derive(Debug, Clone)]
pub struct PassthroughOptions {
    /// Client settings (apply a [`Profile`] first) and
    /// `kafka.group_id`, `engine.commit_interval_ms`,
    /// `engine.shutdown_timeout_ms`.
    pub cfg: Config,
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Consumer threads (each a member of the group), sharing one producer.
    pub threads: usize,
}

struct PassContext {
    topic: String,
    tracker: Arc<Tracker>,
    flush_timeout: Duration,
    assigned: Arc<AtomicUsize>,
}

impl ClientContext for PassContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "pass-through consumer client error");
    }

    // The engine's request consumers read their statistics (lag gauges);
    // so does this one, at the same interval, and drops them.
    fn stats(&self, _: Statistics) {}
}

impl ConsumerContext for PassContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // As the engine: wait for the revoked partitions' own
                // deliveries, not for the shared producer's.
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let left = self.tracker.wait_delivered(&parts, self.flush_timeout);
                if left > 0 {
                    tracing::warn!(left, "revoked partitions' deliveries did not all finish");
                }
                store_done(consumer, &self.topic, &self.tracker);
                let _ = consumer.commit_consumer_state(CommitMode::Sync);
                self.tracker.forget(&parts);
                self.assigned.fetch_sub(parts.len(), Ordering::AcqRel);
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                self.tracker.forget(&parts);
                self.assigned.fetch_add(parts.len(), Ordering::AcqRel);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Run the pass-through until `shutdown`, then drain its deliveries and
/// commit. Calls `ready` once the group has assigned a partition. Returns
/// the records passed. Blocking.
pub fn passthrough(
    opts: &PassthroughOptions,
    ready: impl FnOnce(),
    shutdown: &CancellationToken,
) -> Result<u64, BenchError> {
    let producer = create_producer(&opts.cfg)?;
    let assigned = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..opts.threads.max(1))
            .map(|w| {
                let (producer, assigned) = (producer.clone(), Arc::clone(&assigned));
                std::thread::Builder::new()
                    .name(format!("pass-{w}"))
                    .spawn_scoped(s, move || {
                        let r = pass_worker(opts, w, producer, assigned, shutdown);
                        if r.is_err() {
                            shutdown.cancel();
                        }
                        r
                    })
                    .map_err(|e| BenchError::Invalid(format!("cannot start a thread: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mut ready = Some(ready);
        while !shutdown.is_cancelled() && ready.is_some() {
            if assigned.load(Ordering::Acquire) > 0 {
                if let Some(f) = ready.take() {
                    f();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut total = 0;
        let mut first_err = None;
        for w in workers {
            match w.join() {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(BenchError::Invalid("a worker panicked".into()));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    })
}

fn pass_worker(
    opts: &PassthroughOptions,
    worker: usize,
    producer: EngineProducer,
    assigned: Arc<AtomicUsize>,
    shutdown: &CancellationToken,
) -> Result<u64, BenchError> {
    let cfg = &opts.cfg;
    let tracker = Arc::new(Tracker::default());
    let flush_timeout = Duration::from_millis(cfg.engine.shutdown_timeout_ms);
    let consumer: BaseConsumer<PassContext> = crate::kafka::request_consumer_config(cfg, worker)
        .create_with_context(PassContext {
            topic: opts.input.clone(),
            tracker: Arc::clone(&tracker),
            flush_timeout,
            assigned,
        })
        .map_err(|source| KafkaBoundaryError::Client {
            what: "pass-through consumer",
            source,
        })?;
    consumer.subscribe(&[&opts.input])?;
    let interval = Duration::from_millis(cfg.engine.commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut stored = false;
    let mut n = 0u64;
    let mut result = Ok(());
    while !shutdown.is_cancelled() {
        if let Some(f) = tracker.failure() {
            result = Err(BenchError::Delivery(f));
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let (partition, offset) = (m.partition(), m.offset());
                tracker.begin(partition, offset, 1);
                let ack = Ack::tracked(Some(Arc::clone(&tracker)), partition, offset);
                let mut rec: BaseRecord<'_, [u8], [u8], Box<Ack>> =
                    BaseRecord::with_opaque_to(&opts.output, ack);
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(p) = m.payload() {
                    rec = rec.payload(p);
                }
                match send_with_backpressure(&producer, rec, shutdown) {
                    Ok(()) => n += 1,
                    Err(SendError::Shutdown) => break,
                    Err(e) => {
                        result = Err(BenchError::Delivery(e.to_string()));
                        break;
                    }
                }
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                result = Err(KafkaError::MessageConsumptionFatal(code).into());
                break;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error (librdkafka retries)"),
        }
        stored |= !store_done(&consumer, &opts.input, &tracker).is_empty();
        if stored && last_commit.elapsed() >= interval {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            stored = false;
            last_commit = Instant::now();
        }
    }
    let deadline = Instant::now() + flush_timeout;
    while tracker.pending() > 0 && Instant::now() < deadline && tracker.failure().is_none() {
        let _ = producer.flush(Duration::from_millis(100));
        store_done(&consumer, &opts.input, &tracker);
    }
    store_done(&consumer, &opts.input, &tracker);
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    consumer.unsubscribe();
    result.map(|()| n)
}

// ---------------------------------------------------------------------------
// Read: the no-work consumer
// ---------------------------------------------------------------------------

/// What [`read_all`] read.
#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    /// Records read.
    pub records: u64,
    /// Bytes of keys and values read.
    pub bytes: u64,
    /// Seconds from creating the consumer to the last record.
    pub secs: f64,
}

/// The no-work consumer of `clearance bench read`: read every partition of
/// `topic` from its beginning to its high watermark at the start, with the
/// change feed's consumer settings ([`crate::kafka::feed_consumer_config`]),
/// and do nothing with the records. What a cold start costs without the
/// engine's own work (`scripts/measure-start`).
pub fn read_all(cfg: &Config, topic: &str, timeout: Duration) -> Result<ReadReport, BenchError> {
    let t0 = Instant::now();
    let consumer: BaseConsumer =
        crate::kafka::feed_consumer_config(cfg)
            .create()
            .map_err(|source| KafkaBoundaryError::Client {
                what: "reader",
                source,
            })?;
    let never = CancellationToken::new();
    let partitions = crate::kafka::topic_partitions(&consumer, topic, &never)?
        .ok_or_else(|| BenchError::Invalid(format!("topic {topic}: no partitions")))?;
    let mut tpl = TopicPartitionList::new();
    let mut left: HashMap<i32, i64> = HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            left.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    while !left.is_empty() {
        if t0.elapsed() > timeout {
            return Err(BenchError::Timeout(format!(
                "{topic}: {records} records read, {} partitions unfinished",
                left.len()
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            // The end, at or past the start's high watermark (a compacted
            // partition may have no record at high - 1).
            Some(Err(KafkaError::PartitionEOF(p))) => {
                left.remove(&p);
            }
            Some(Ok(m)) => {
                records += 1;
                bytes += (m.key_len() + m.payload_len()) as u64;
                if left
                    .get(&m.partition())
                    .is_some_and(|h| m.offset() + 1 >= *h)
                {
                    left.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok(ReadReport {
        records,
        bytes,
        secs: t0.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`: 100 on
/// every Linux architecture clearance runs on).
pub const CLOCK_TICKS_PER_SEC: u64 = 100;

/// The fields of `/proc/PID/stat` the watcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Parent process id.
    pub ppid: u32,
    /// User plus system CPU time, in clock ticks, of every thread.
    pub cpu_ticks: u64,
}

/// Parse `/proc/PID/stat`. The command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself: the fields after it start
/// after its last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: u32::try_from(num(1)?).ok()?,
        cpu_ticks: num(11)? + num(12)?,
    })
}

/// `VmHWM` (peak resident set size) of `/proc/PID/status`, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid` and its descendants, found by scanning `/proc` (a contender may be
/// a script that starts the real process).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(st) = read_stat(p) {
                children.entry(st.ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds (user plus system) of `pid` and its descendants.
pub fn tree_cpu_secs(pid: u32) -> Result<f64, BenchError> {
    let own = read_stat(pid).ok_or_else(|| BenchError::Process {
        pid,
        message: "is gone (no /proc entry)".into(),
    })?;
    let others: u64 = process_tree(pid)
        .into_iter()
        .skip(1)
        .filter_map(read_stat)
        .map(|s| s.cpu_ticks)
        .sum();
    Ok((own.cpu_ticks + others) as f64 / CLOCK_TICKS_PER_SEC as f64)
}

/// Peak RSS of `pid` and its descendants (the sum of their `VmHWM`), in
/// bytes.
pub fn tree_peak_rss(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| parse_vm_hwm(&s))
        .sum()
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Client settings.
    pub kafka: KafkaConfig,
    /// The contender's output topic.
    pub topic: String,
    /// Records to wait for (the sum of the high watermarks).
    pub count: u64,
    /// The contender's process (its descendants count too).
    pub pid: Option<u32>,
    /// The broker's process.
    pub broker_pid: Option<u32>,
    /// Between two looks at the watermarks.
    pub interval: Duration,
    /// Give up after this long, first record or not.
    pub timeout: Duration,
}

/// What one drain measured (one JSON line of `clearance bench watch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// The output topic.
    pub topic: String,
    /// Records on it at the end (sum of the high watermarks).
    pub count: u64,
    /// Records produced within the measured window.
    pub records: u64,
    /// The window: from the first look that saw an output record to the
    /// first that saw `count`.
    pub secs: f64,
    /// `records / secs`.
    pub per_sec: f64,
    /// CPU seconds of the contender's process tree within the window.
    pub process_cpu_secs: Option<f64>,
    /// Of the broker.
    pub broker_cpu_secs: Option<f64>,
    /// Process CPU-µs per record.
    pub process_cpu_us_per_record: Option<f64>,
    /// Broker CPU-µs per record.
    pub broker_cpu_us_per_record: Option<f64>,
    /// Peak RSS of the contender's process tree at the end, bytes.
    pub peak_rss_bytes: Option<u64>,
}

struct Look {
    at: Instant,
    sum: u64,
    process: Option<f64>,
    broker: Option<f64>,
}

/// Watch a contender drain: see [`WatchOptions`] and [`DrainReport`].
/// Fails when the contender's process goes away, or on the timeout.
/// Blocking.
pub fn watch(opts: &WatchOptions) -> Result<DrainReport, BenchError> {
    let consumer: BaseConsumer = crate::kafka::reader_config(&opts.kafka, "bench-watch")
        .create()
        .map_err(|source| KafkaBoundaryError::Client {
            what: "watcher",
            source,
        })?;
    let parts = crate::kafka::topic_partitions(&consumer, &opts.topic, &CancellationToken::new())?
        .unwrap_or_default();
    let started = Instant::now();
    let look = || -> Result<Look, BenchError> {
        let mut sum = 0u64;
        for p in &parts {
            let (_, high) = consumer.fetch_watermarks(&opts.topic, *p, Duration::from_secs(5))?;
            sum += u64::try_from(high).unwrap_or(0);
        }
        let at = Instant::now();
        let process = opts.pid.map(tree_cpu_secs).transpose()?;
        let broker = match opts.broker_pid {
            Some(b) => Some(tree_cpu_secs(b).map_err(|e| BenchError::Process {
                pid: b,
                message: format!("broker: {e}"),
            })?),
            None => None,
        };
        Ok(Look {
            at,
            sum,
            process,
            broker,
        })
    };
    let mut first: Option<Look> = None;
    let end = loop {
        let l = look()?;
        if first.is_none() && l.sum > 0 {
            first = Some(look_copy(&l));
        }
        if l.sum >= opts.count {
            break l;
        }
        if started.elapsed() > opts.timeout {
            return Err(BenchError::Timeout(format!(
                "{} of {} records on {} after {:?}",
                l.sum, opts.count, opts.topic, opts.timeout
            )));
        }
        std::thread::sleep(opts.interval);
    };
    let first = first.unwrap_or_else(|| look_copy(&end));
    let records = end.sum - first.sum;
    let secs = end.at.duration_since(first.at).as_secs_f64();
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let per_record = |a: Option<f64>, b: Option<f64>| {
        let d = diff(a, b)?;
        Some(if records > 0 {
            d * 1e6 / records as f64
        } else {
            0.0
        })
    };
    Ok(DrainReport {
        topic: opts.topic.clone(),
        count: end.sum,
        records,
        secs,
        per_sec: if secs > 0.0 {
            records as f64 / secs
        } else {
            0.0
        },
        process_cpu_secs: diff(first.process, end.process),
        broker_cpu_secs: diff(first.broker, end.broker),
        process_cpu_us_per_record: per_record(first.process, end.process),
        broker_cpu_us_per_record: per_record(first.broker, end.broker),
        peak_rss_bytes: opts.pid.map(tree_peak_rss),
    })
}

fn look_copy(l: &Look) -> Look {
    Look {
        at: l.at,
        sum: l.sum,
        process: l.process,
        broker: l.broker,
    }
}

// ---------------------------------------------------------------------------
// Compare
// ---------------------------------------------------------------------------

/// Two decision topics compared by `request_id` and `outcome`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// Records read from `a`.
    pub a_records: u64,
    /// From `b`.
    pub b_records: u64,
    /// Distinct request ids in both with the same outcome.
    pub agreed: u64,
    /// In both, with different outcomes.
    pub disagreed: u64,
    /// Only in `a`.
    pub only_a: u64,
    /// Only in `b`.
    pub only_b: u64,
    /// Records whose value has no `request_id` and `outcome`.
    pub unreadable: u64,
    /// A few differences, for the log.
    pub examples: Vec<String>,
}

impl CompareReport {
    /// Every request in both, with the same outcome, and nothing else.
    pub fn all_agree(&self) -> bool {
        self.disagreed == 0
            && self.only_a == 0
            && self.only_b == 0
            && self.unreadable == 0
            && self.agreed > 0
    }
}

#[derive(Deserialize)]
struct Outcomeish<'a> {
    #[serde(borrow)]
    request_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    outcome: std::borrow::Cow<'a, str>,
}

/// `request_id` and `outcome` of a decision value (JSON), if it has both.
pub fn outcome_of(value: &[u8]) -> Option<(String, bool)> {
    let o: Outcomeish<'_> = serde_json::from_slice(value).ok()?;
    let allow = match o.outcome.as_ref() {
        "allow" => true,
        "deny" => false,
        _ => return None,
    };
    Some((o.request_id.into_owned(), allow))
}

/// Every record of `topic` up to its current end: request id → outcome
/// (the first record of a request wins), records, unreadable records.
fn read_outcomes(
    k: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<(HashMap<String, bool>, u64, u64), BenchError> {
    let c: BaseConsumer = crate::kafka::reader_config(k, "bench-compare")
        .create()
        .map_err(|source| KafkaBoundaryError::Client {
            what: "compare reader",
            source,
        })?;
    let parts =
        crate::kafka::topic_partitions(&c, topic, &CancellationToken::new())?.unwrap_or_default();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    let (mut map, mut n, mut bad) = (HashMap::new(), 0u64, 0u64);
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "reading {topic}: {n} records read, partitions {:?} not at their end",
                ends.keys().collect::<Vec<_>>()
            )));
        }
        let Some(r) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = r?;
        n += 1;
        match m.payload().and_then(outcome_of) {
            Some((id, allow)) => {
                map.entry(id).or_insert(allow);
            }
            None => bad += 1,
        }
        if ends
            .get(&m.partition())
            .is_some_and(|e| m.offset() + 1 >= *e)
        {
            ends.remove(&m.partition());
        }
    }
    Ok((map, n, bad))
}

/// Compare the decisions of two topics: [`CompareReport`]. Blocking.
pub fn compare(
    k: &KafkaConfig,
    a: &str,
    b: &str,
    timeout: Duration,
) -> Result<CompareReport, BenchError> {
    let (ma, na, bad_a) = read_outcomes(k, a, timeout)?;
    let (mb, nb, bad_b) = read_outcomes(k, b, timeout)?;
    Ok(compare_maps(&ma, &mb, na, nb, bad_a + bad_b))
}

fn compare_maps(
    a: &HashMap<String, bool>,
    b: &HashMap<String, bool>,
    na: u64,
    nb: u64,
    unreadable: u64,
) -> CompareReport {
    let word = |x: bool| if x { "allow" } else { "deny" };
    let mut r = CompareReport {
        a_records: na,
        b_records: nb,
        unreadable,
        ..CompareReport::default()
    };
    for (id, oa) in a {
        match b.get(id) {
            Some(ob) if ob == oa => r.agreed += 1,
            Some(ob) => {
                r.disagreed += 1;
                if r.examples.len() < 5 {
                    r.examples
                        .push(format!("{id}: {} against {}", word(*oa), word(*ob)));
                }
            }
            None => {
                r.only_a += 1;
                if r.examples.len() < 5 {
                    r.examples.push(format!("{id}: only in a"));
                }
            }
        }
    }
    for id in b.keys() {
        if !a.contains_key(id) {
            r.only_b += 1;
            if r.examples.len() < 5 {
                r.examples.push(format!("{id}: only in b"));
            }
        }
    }
    r
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// The input of a drain benchmark.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Client settings.
    pub kafka: KafkaConfig,
    /// Requests topic (created with `partitions` if missing).
    pub requests_topic: String,
    /// Change-feed topic (created compacted with `partitions` if missing).
    pub feed_topic: String,
    /// Partitions of both.
    pub partitions: i32,
    /// Requests.
    pub requests: usize,
    /// Subjects (the load generator's population, [`crate::loadgen::subject`]).
    pub subjects: usize,
    /// Prefix of subject and request ids.
    pub run_id: String,
}

/// What [`load`] published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Eligibility records.
    pub records: usize,
    /// Requests.
    pub requests: usize,
    /// Bytes of request values.
    pub request_bytes: u64,
}

/// Publish the subjects' eligibility records, then the requests (the load
/// generator's mix: [`crate::loadgen::request`], [`crate::loadgen::model_for`]),
/// each confirmed delivered. Request ids are `RUN_ID-r<i>`.
pub async fn load(opts: &LoadOptions) -> Result<Loaded, BenchError> {
    use crate::event::EligibilityRecord;
    use crate::loadgen as lg;
    let feed_cfg: Vec<(&str, &str)> = crate::kafka::topic_specs(&Default::default())
        .into_iter()
        .find(|s| s.0 == crate::config::TopicsConfig::default().eligibility)
        .map(|s| s.2)
        .unwrap_or_default();
    create_topic(&opts.kafka, &opts.requests_topic, opts.partitions, &[]).await?;
    create_topic(&opts.kafka, &opts.feed_topic, opts.partitions, &feed_cfg).await?;
    let subjects: Vec<lg::Subject> = (0..opts.subjects.max(1))
        .map(|i| lg::subject(&format!("{}-", opts.run_id), i))
        .collect();
    let p = lg::data_producer_for(&opts.kafka)?;
    tokio::task::block_in_place(|| {
        let recs: Vec<EligibilityRecord> = subjects
            .iter()
            .filter_map(|s| s.record.clone().map(EligibilityRecord::User))
            .collect();
        lg::publish_eligibility(&p, &opts.feed_topic, &recs)?;
        let mut bytes = 0u64;
        for i in 0..opts.requests {
            let s = &subjects[i % subjects.len()];
            let req = lg::request(s, format!("{}-r{i}", opts.run_id), lg::model_for(i));
            let body = serde_json::to_vec(&req).unwrap_or_default();
            bytes += body.len() as u64;
            lg::send_blocking(&p, &opts.requests_topic, s.id.as_bytes(), Some(&body))?;
            if i % 1024 == 0 {
                p.poll(Duration::ZERO);
                if let Some(e) = p.context().take_failure() {
                    return Err(e.into());
                }
            }
        }
        lg::confirm_delivery(&p)?;
        Ok(Loaded {
            records: recs.len(),
            requests: opts.requests,
            request_bytes: bytes,
        })
    })
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// One line of a results file (JSON lines, written by `scripts/bench`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResultLine {
    /// A contender's drain in one run.
    Drain {
        /// The run (1-based).
        run: u32,
        /// The contender.
        contender: String,
        /// What it measured.
        #[serde(flatten)]
        drain: DrainReport,
    },
    /// Two contenders' outcomes compared in one run.
    Agreement {
        /// The run.
        run: u32,
        /// The first contender.
        a: String,
        /// The second.
        b: String,
        /// What the comparison found.
        #[serde(flatten)]
        report: CompareReport,
    },
    /// A contender that could not be measured in one run, and why.
    Failure {
        /// The run.
        run: u32,
        /// The contender.
        contender: String,
        /// Why.
        message: String,
    },
}

/// Parse a results file; a bad line is an error naming it.
pub fn parse_results(text: &str) -> Result<Vec<ResultLine>, BenchError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| BenchError::Invalid(format!("results line {}: {e}", i + 1)))
        })
        .collect()
}

/// The median (the mean of the middle two for an even count); `None` when
/// empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

/// The contender names `scripts/bench` uses, in the table's order.
pub const CONTENDERS: &[&str] = &[
    "clearance",
    "clearance-eos",
    "passthrough-engine",
    "passthrough-batched",
    "streams",
];

/// What the report says about how it was made.
#[derive(Debug, Clone, Default)]
pub struct ReportMeta {
    /// The command that produced the results.
    pub command: String,
    /// Date (UTC).
    pub date: String,
    /// Machine: CPUs, memory, CPU model.
    pub machine: String,
    /// The input (requests, subjects, request bytes...).
    pub input: String,
}

/// The machine, from `/proc`: `N CPUs (model), M GB RAM`.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cpus} CPUs ({model}), {:.1} GB RAM",
        mem_kb as f64 / 1024.0 / 1024.0
    )
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "n/a".into(), f)
}

fn mb(bytes: f64) -> String {
    format!("{:.0} MB", bytes / 1e6)
}

fn ratio(x: Option<f64>) -> String {
    opt(x, |r| format!("{r:.2}x"))
}

fn order(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names.into_iter().collect();
    v.sort_by_key(|n| {
        (
            CONTENDERS.iter().position(|c| c == n).unwrap_or(usize::MAX),
            n.clone(),
        )
    });
    v.dedup();
    v
}

/// The Markdown report of a results file: the table (medians of the runs),
/// the ratios (each taken within a run, then the median), the outcome
/// agreement, every failure, and the raw figures of every run.
pub fn render(results: &[ResultLine], meta: &ReportMeta) -> String {
    use std::fmt::Write;
    let mut drains: BTreeMap<(u32, String), &DrainReport> = BTreeMap::new();
    for r in results {
        if let ResultLine::Drain {
            run,
            contender,
            drain,
        } = r
        {
            drains.insert((*run, contender.clone()), drain);
        }
    }
    let contenders = order(drains.keys().map(|k| k.1.clone()));
    let runs: Vec<u32> = {
        let mut r: Vec<u32> = results
            .iter()
            .map(|l| match l {
                ResultLine::Drain { run, .. }
                | ResultLine::Agreement { run, .. }
                | ResultLine::Failure { run, .. } => *run,
            })
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    };
    let mut s = String::new();
    let _ = writeln!(s, "Command: `{}`  ", meta.command);
    let _ = writeln!(s, "Date: {}; machine: {}  ", meta.date, meta.machine);
    if !meta.input.is_empty() {
        let _ = writeln!(s, "Input: {}  ", meta.input);
    }
    let _ = writeln!(s, "Runs: {}\n", runs.len());
    s.push_str("| contender | decisions/s | process CPU-µs per record | broker CPU-µs per record | peak RSS | runs |\n");
    s.push_str("|---|---|---|---|---|---|\n");
    for c in &contenders {
        let of = |f: &dyn Fn(&DrainReport) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = drains
                .iter()
                .filter(|(k, _)| &k.1 == c)
                .filter_map(|(_, d)| f(d))
                .collect();
            median(&v)
        };
        let n = drains.keys().filter(|k| &k.1 == c).count();
        let _ = writeln!(
            s,
            "| {c} | {} | {} | {} | {} | {n} |",
            opt(of(&|d| Some(d.per_sec)), thousands),
            opt(of(&|d| d.process_cpu_us_per_record), |x| format!("{x:.2}")),
            opt(of(&|d| d.broker_cpu_us_per_record), |x| format!("{x:.2}")),
            opt(of(&|d| d.peak_rss_bytes.map(|b| b as f64)), mb),
        );
    }
    // Ratios within each run.
    type Metric = fn(&DrainReport) -> Option<f64>;
    let metrics: [(&str, Metric); 3] = [
        ("decisions/s", |d| Some(d.per_sec)),
        ("process CPU per record", |d| d.process_cpu_us_per_record),
        ("broker CPU per record", |d| d.broker_cpu_us_per_record),
    ];
    let best_named = |run: u32| -> Option<(&str, &DrainReport)> {
        drains
            .iter()
            .filter(|(k, _)| k.0 == run && k.1.starts_with("passthrough"))
            .map(|(k, d)| (k.1.as_str(), *d))
            .max_by(|a, b| a.1.per_sec.total_cmp(&b.1.per_sec))
    };
    let best_passthrough = |run: u32| best_named(run).map(|(_, d)| d);
    let streams = |run: u32| drains.get(&(run, "streams".to_string())).copied();
    s.push_str(
        "\n| ratio (median of per-run ratios) | decisions/s | process CPU per record | broker CPU per record |\n|---|---|---|---|\n",
    );
    let at_least_once = |run: u32| drains.get(&(run, "clearance".to_string())).copied();
    let eos = contenders.iter().any(|c| c == "clearance-eos");
    for name in [
        "clearance / best pass-through",
        "clearance / Kafka Streams",
        "clearance exactly-once / at-least-once",
    ] {
        let exactly_once = name.contains("exactly-once");
        if exactly_once && !eos {
            continue;
        }
        let subject = if exactly_once {
            "clearance-eos"
        } else {
            "clearance"
        };
        let peer = |run: u32| {
            if exactly_once {
                at_least_once(run)
            } else if name.ends_with("pass-through") {
                best_passthrough(run)
            } else {
                streams(run)
            }
        };
        let mut cells = Vec::new();
        for (_, f) in &metrics {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|run| {
                    let c = drains.get(&(*run, subject.to_string()))?;
                    let p = peer(*run)?;
                    let (x, y) = (f(c)?, f(p)?);
                    (y > 0.0).then(|| x / y)
                })
                .collect();
            cells.push(ratio(median(&v)));
        }
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    }
    let best: Vec<String> = runs
        .iter()
        .filter_map(|r| best_named(*r).map(|(name, _)| format!("run {r}: {name}")))
        .collect();
    if !best.is_empty() {
        let _ = writeln!(s, "\nBest pass-through by run: {}.", best.join(", "));
    }
    let agreements: Vec<&ResultLine> = results
        .iter()
        .filter(|r| matches!(r, ResultLine::Agreement { .. }))
        .collect();
    if !agreements.is_empty() {
        s.push_str("\nOutcome agreement:\n\n");
        for r in agreements {
            if let ResultLine::Agreement { run, a, b, report } = r {
                let _ = writeln!(
                    s,
                    "- run {run}, {a} against {b}: {} agree, {} disagree, {} only in {a}, {} only in {b}, {} unreadable ({} and {} records){}",
                    thousands(report.agreed as f64),
                    thousands(report.disagreed as f64),
                    thousands(report.only_a as f64),
                    thousands(report.only_b as f64),
                    thousands(report.unreadable as f64),
                    thousands(report.a_records as f64),
                    thousands(report.b_records as f64),
                    if report.all_agree() { "" } else { ": **NOT IN AGREEMENT**" }
                );
            }
        }
    }
    let partial: Vec<String> = drains
        .iter()
        .filter(|(_, d)| (d.records as f64) < 0.9 * d.count as f64)
        .map(|(k, d)| format!("run {}, {}: {} of {}", k.0, k.1, d.records, d.count))
        .collect();
    if !partial.is_empty() {
        let _ = writeln!(
            s,
            "\n**Too short to measure**: less than 90% of the records were produced within the window (the watcher's first look came late: a drain of a few watcher intervals), so these figures say little: {}.",
            partial.join("; ")
        );
    }
    let failures: Vec<&ResultLine> = results
        .iter()
        .filter(|r| matches!(r, ResultLine::Failure { .. }))
        .collect();
    if !failures.is_empty() {
        s.push_str("\nNot measured:\n\n");
        for r in failures {
            if let ResultLine::Failure {
                run,
                contender,
                message,
            } = r
            {
                let _ = writeln!(s, "- run {run}, {contender}: {message}");
            }
        }
    }
    s.push_str("\nEvery run:\n\n| run | contender | records | seconds | decisions/s | process CPU-s | process CPU-µs/record | broker CPU-s | broker CPU-µs/record | peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for run in &runs {
        for c in &contenders {
            if let Some(d) = drains.get(&(*run, c.clone())) {
                let _ = writeln!(
                    s,
                    "| {run} | {c} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
                    thousands(d.records as f64),
                    d.secs,
                    thousands(d.per_sec),
                    opt(d.process_cpu_secs, |x| format!("{x:.2}")),
                    opt(d.process_cpu_us_per_record, |x| format!("{x:.2}")),
                    opt(d.broker_cpu_secs, |x| format!("{x:.2}")),
                    opt(d.broker_cpu_us_per_record, |x| format!("{x:.2}")),
                    opt(d.peak_rss_bytes.map(|b| b as f64), mb),
                );
            }
        }
    }
    s
}

/// The section markers of BENCHMARKS.md that [`replace_section`] writes
/// between.
pub const SECTION_MARKERS: (&str, &str) = ("<!-- bench:begin -->", "<!-- bench:end -->");

/// `doc` with the text between the markers ([`SECTION_MARKERS`]) replaced
/// by `section`; an error when the markers are missing or out of order.
pub fn replace_section(doc: &str, section: &str) -> Result<String, BenchError> {
    let (begin, end) = SECTION_MARKERS;
    let (Some(b), Some(e)) = (doc.find(begin), doc.find(end)) else {
        return Err(BenchError::Invalid(format!(
            "the document has no {begin} ... {end} section"
        )));
    };
    if e < b {
        return Err(BenchError::Invalid(format!("{end} comes before {begin}")));
    }
    let head = &doc[..b + begin.len()];
    let tail = &doc[e..];
    Ok(format!("{head}\n{}\n{tail}", section.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command_name() {
        // A command name with spaces and a parenthesis.
        let line = "4242 (java (main) x) S 17 4242 4242 0 -1 4194560 1000 0 0 0 250 75 3 4 20 0 42 0 100 1000000 2000 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.ppid, 17);
        assert_eq!(s.cpu_ticks, 325, "utime 250 + stime 75");
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn this_process_is_in_proc() {
        let pid = std::process::id();
        let own = read_stat(pid).expect("own stat");
        assert!(own.ppid > 0);
        assert!(tree_cpu_secs(pid).unwrap() >= 0.0);
        assert!(tree_peak_rss(pid) > 1_000_000);
        assert!(process_tree(pid).contains(&pid));
        assert!(tree_cpu_secs(u32::MAX).is_err());
    }

    #[test]
    fn vm_hwm_in_bytes() {
        let status =
            "Name:\tclearance\nVmPeak:\t  300000 kB\nVmHWM:\t  266000 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(266_000 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn outcomes_are_read_from_decisions_and_peer_records() {
        let decision = br#"{"request_id":"r-1","outcome":"deny","reasons":["x"],"inputs":{"request":{"request_id":"no"}}}"#;
        assert_eq!(outcome_of(decision), Some(("r-1".into(), false)));
        assert_eq!(
            outcome_of(br#"{"outcome":"allow","request_id":"r\"2"}"#),
            Some(("r\"2".into(), true))
        );
        assert_eq!(outcome_of(br#"{"request_id":"r","outcome":"maybe"}"#), None);
        assert_eq!(outcome_of(b"not json"), None);
    }

    #[test]
    fn comparison_counts_every_kind_of_difference() {
        let m = |v: &[(&str, bool)]| -> HashMap<String, bool> {
            v.iter().map(|(k, o)| (k.to_string(), *o)).collect()
        };
        let a = m(&[("1", true), ("2", false), ("3", true)]);
        let b = m(&[("1", true), ("2", true), ("4", true)]);
        let r = compare_maps(&a, &b, 3, 3, 0);
        assert_eq!((r.agreed, r.disagreed, r.only_a, r.only_b), (1, 1, 1, 1));
        assert!(!r.all_agree());
        assert!(
            r.examples.iter().any(|e| e == "2: deny against allow"),
            "{:?}",
            r.examples
        );
        let r = compare_maps(&a, &a, 4, 3, 0);
        assert!(r.all_agree(), "duplicates do not matter");
        assert!(!compare_maps(&a, &a, 3, 3, 1).all_agree());
    }

    #[test]
    fn profiles() {
        let mut cfg = Config::default();
        cfg.kafka
            .properties
            .insert("batch.size".into(), "42".into());
        Profile::Engine.apply(&mut cfg);
        assert_eq!(cfg.kafka.properties.len(), 1);
        Profile::Batched.apply(&mut cfg);
        assert_eq!(
            cfg.kafka.properties["batch.size"], "42",
            "the operator's wins"
        );
        assert_eq!(cfg.kafka.properties["fetch.queue.backoff.ms"], "20");
        assert_eq!(cfg.engine.producer_linger_ms, BATCHED_LINGER_MS);
        let p = crate::kafka::producer_config(&cfg);
        assert_eq!(p.get("linger.ms"), Some("20"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!("batched".parse::<Profile>().unwrap(), Profile::Batched);
        assert!("fast".parse::<Profile>().is_err());
    }

    fn drain(per_sec: f64, proc_us: f64, broker_us: f64) -> DrainReport {
        DrainReport {
            topic: "t".into(),
            count: 1000,
            records: 1000,
            secs: 1000.0 / per_sec,
            per_sec,
            process_cpu_secs: Some(proc_us * 1000.0 / 1e6),
            broker_cpu_secs: Some(broker_us * 1000.0 / 1e6),
            process_cpu_us_per_record: Some(proc_us),
            broker_cpu_us_per_record: Some(broker_us),
            peak_rss_bytes: Some(100_000_000),
        }
    }

    #[test]
    fn results_lines_round_trip() {
        let lines = vec![
            ResultLine::Drain {
                run: 1,
                contender: "clearance".into(),
                drain: drain(100.0, 8.0, 4.0),
            },
            ResultLine::Agreement {
                run: 1,
                a: "clearance".into(),
                b: "streams".into(),
                report: CompareReport {
                    agreed: 10,
                    ..Default::default()
                },
            },
            ResultLine::Failure {
                run: 1,
                contender: "streams".into(),
                message: "no peer".into(),
            },
        ];
        let text: String = lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        assert!(
            text.starts_with(r#"{"kind":"drain","run":1,"contender":"clearance","topic""#),
            "{text}"
        );
        assert_eq!(parse_results(&text).unwrap(), lines);
        let err = parse_results("{}\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn the_table_takes_medians_and_ratios_within_each_run() {
        let mut results = Vec::new();
        // Three runs; the best pass-through changes between runs.
        let figures = [
            (1, 100.0, 400.0, 500.0, 50.0),
            (2, 120.0, 600.0, 300.0, 40.0),
            (3, 90.0, 300.0, 450.0, 60.0),
        ];
        for (run, cl, pe, pb, st) in figures {
            for (c, r) in [
                ("streams", st),
                ("passthrough-batched", pb),
                ("clearance", cl),
                ("passthrough-engine", pe),
            ] {
                results.push(ResultLine::Drain {
                    run,
                    contender: c.into(),
                    drain: drain(r, 1e6 / r / 100.0, 2.0),
                });
            }
        }
        results.push(ResultLine::Failure {
            run: 3,
            contender: "other".into(),
            message: "it broke".into(),
        });
        let md = render(
            &results,
            &ReportMeta {
                command: "scripts/bench".into(),
                date: "2026-12-01".into(),
                machine: "2 CPUs".into(),
                input: String::new(),
            },
        );
        let row = |name: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {name} |")))
                .unwrap_or_else(|| panic!("{name} row in\n{md}"))
                .to_string()
        };
        assert!(row("clearance").starts_with("| clearance | 100 |"), "{md}");
        assert!(row("passthrough-engine").starts_with("| passthrough-engine | 400 |"));
        // The table lists the contenders in CONTENDERS' order.
        let pos = |n: &str| md.find(&format!("| {n} |")).unwrap();
        assert!(pos("clearance") < pos("passthrough-engine"));
        assert!(pos("passthrough-batched") < pos("streams"));
        // Per run: 100/500, 120/600, 90/450 = 0.2 each; against the
        // medians of each column (100/450) it would be 0.22.
        assert!(
            row("clearance / best pass-through")
                .starts_with("| clearance / best pass-through | 0.20x |"),
            "{md}"
        );
        // Streams: 2.0, 3.0, 1.5: median 2.0.
        assert!(
            row("clearance / Kafka Streams").starts_with("| clearance / Kafka Streams | 2.00x |")
        );
        assert!(
            md.contains("run 1: passthrough-batched, run 2: passthrough-engine"),
            "{md}"
        );
        assert!(md.contains("- run 3, other: it broke"), "{md}");
        assert!(!md.contains("Too short"), "{md}");
        assert!(
            !md.contains("exactly-once / at-least-once"),
            "no eos runs: {md}"
        );
        // Exactly-once against at-least-once, within each run: 50/100,
        // 84/120, 72/90: median 0.7.
        for (run, cl) in [(1, 50.0), (2, 84.0), (3, 72.0)] {
            results.push(ResultLine::Drain {
                run,
                contender: "clearance-eos".into(),
                drain: drain(cl, 1.0, 1.0),
            });
        }
        let md = render(&results, &ReportMeta::default());
        let eos_row = md
            .lines()
            .find(|l| l.starts_with("| clearance exactly-once / at-least-once |"))
            .unwrap_or_else(|| panic!("{md}"));
        assert!(
            eos_row.starts_with("| clearance exactly-once / at-least-once | 0.70x |"),
            "{md}"
        );
        assert!(md.find("| clearance |").unwrap() < md.find("| clearance-eos |").unwrap());
        let mut short = drain(100.0, 1.0, 1.0);
        short.records = 442;
        let short_md = render(
            &[ResultLine::Drain {
                run: 1,
                contender: "passthrough-engine".into(),
                drain: short,
            }],
            &ReportMeta::default(),
        );
        assert!(
            short_md.contains("run 1, passthrough-engine: 442 of 1000"),
            "{short_md}"
        );
        assert!(md.contains("| 2 | passthrough-engine | 1,000 |"), "{md}");
        assert!(
            md.contains("| streams | 50 |")
                && md.contains("\n\n| ratio (median of per-run ratios) |"),
            "a table of its own: {md}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(565_000.0), "565,000");
        assert_eq!(thousands(2_000_000.0), "2,000,000");
    }

    #[test]
    fn the_marked_section_is_replaced() {
        let doc = "# B\n\nintro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nafter\n";
        let out = replace_section(doc, "new table\n").unwrap();
        assert_eq!(
            out,
            "# B\n\nintro\n<!-- bench:begin -->\nnew table\n<!-- bench:end -->\nafter\n"
        );
        assert_eq!(
            replace_section(&out, "new table").unwrap(),
            out,
            "idempotent"
        );
        assert!(replace_section("no markers", "x").is_err());
        assert!(replace_section("<!-- bench:end --> <!-- bench:begin -->", "x").is_err());
    }
}
