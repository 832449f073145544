//! `clearance loadgen --latency`: the latency a frontend sees.
//!
//! - **Round trip**, through [`crate::client::Client`]: from a request's
//!   *scheduled* send time to its decision received on the client's reply
//!   partition, on one monotonic clock (so the clocks of different
//!   processes do not matter).
//! - **Open loop**: requests are sent at a fixed rate whatever the answers
//!   do, and latency counts from each request's scheduled time, so a slow
//!   answer cannot hide the requests it delays (no coordinated omission).
//! - **Echo baseline** (`--echo`): the same load through a no-work echo on
//!   the same broker: consume with the engine's request-consumer settings,
//!   produce the same bytes to the reply partition with the engine's
//!   reply-producer settings. What Kafka alone costs on this machine; the
//!   engine's figures are also given as ratios to it. Engine and echo
//!   phases alternate (`--rounds`), so both see the same machine.
//! - **Freshness** (`--freshness`): during the engine phases, a hot subject
//!   gets a new eligibility record version every [`UPDATE_EVERY`] while
//!   every 10th request is for it. Freshness is the time from an update
//!   being produced to the first decision received that used its version
//!   (or a later one).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::client::{Client, ClientOptions};
use crate::config::Config;
use crate::event::EligibilityRecord;
use crate::loadgen::{self, LoadgenError, Subject};
use crate::pipeline::reply;

/// How often the freshness run updates the hot subject's record.
pub const UPDATE_EVERY: Duration = Duration::from_millis(5);
/// Every this many requests, one is for the hot subject (`--freshness`).
pub const HOT_EVERY: usize = 10;

/// What to measure.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// The engine's configuration: topics, client settings, and the
    /// reply producer's settings (`engine.reply_linger_ms`), which the
    /// echo's producer uses too.
    pub cfg: Config,
    /// Requests per second (open loop).
    pub rate: u64,
    /// Measured time per phase (after a warm-up of a fifth of it, at most
    /// 2 s, at the same rate).
    pub duration: Duration,
    /// Synthetic subjects.
    pub subjects: usize,
    /// Subject id prefix (as `loadgen`).
    pub run_id: String,
    /// Publish the subjects' eligibility records first.
    pub seed: bool,
    /// The client's producer linger.
    pub linger_ms: u64,
    /// Also measure the echo baseline.
    pub echo: bool,
    /// Also measure freshness.
    pub freshness: bool,
    /// Engine (and echo) phases, alternating.
    pub rounds: usize,
    /// The client's timeout per call.
    pub call_timeout: Duration,
    /// Engine admin address, to wait for the seeded feed and the group.
    pub admin: Option<SocketAddr>,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.count
        )
    }
}

/// What a phase talked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The engine.
    Engine,
    /// The no-work echo.
    Echo,
}

/// One measured phase.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Engine or echo.
    pub target: Target,
    /// Round number (from 1).
    pub round: usize,
    /// Requests sent (measured window).
    pub sent: usize,
    /// Round trips completed.
    pub answered: usize,
    /// Calls that timed out (fail-closed denies).
    pub timeouts: usize,
    /// Client errors.
    pub errors: usize,
    /// Decisions whose outcome differs from the subject's expected one.
    pub mismatches: usize,
    /// Round-trip latency from the scheduled send time.
    pub round_trip: Percentiles,
    /// Freshness (engine phases with `--freshness`).
    pub freshness: Option<Percentiles>,
    /// Updates produced whose version no decision was seen using.
    pub unobserved_updates: usize,
    /// How late the pacer started its latest request (a loaded machine).
    pub pacer_lag_max_us: u64,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// Requests per second.
    pub rate: u64,
    /// Phases in the order run.
    pub phases: Vec<Phase>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

impl LatencyReport {
    /// The median over the phases of `target` of `f`.
    pub fn median_of(&self, target: Target, f: impl Fn(&Phase) -> Option<f64>) -> Option<f64> {
        median(
            self.phases
                .iter()
                .filter(|p| p.target == target)
                .filter_map(f)
                .collect(),
        )
    }

    /// The median over rounds of engine `f` / echo `f` within each round.
    pub fn ratio(&self, f: impl Fn(&Phase) -> Option<f64>) -> Option<f64> {
        let rounds = self.phases.iter().map(|p| p.round).max().unwrap_or(0);
        median(
            (1..=rounds)
                .filter_map(|r| {
                    let of = |t| self.phases.iter().find(|p| p.round == r && p.target == t);
                    let (e, x) = (f(of(Target::Engine)?)?, f(of(Target::Echo)?)?);
                    (x > 0.0).then(|| e / x)
                })
                .collect(),
        )
    }
}

impl std::fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "open loop at {} requests/s", self.rate)?;
        for p in &self.phases {
            let what = match p.target {
                Target::Engine => "engine",
                Target::Echo => "echo  ",
            };
            writeln!(
                f,
                "round {} {what}: round trip {} | sent {}, answered {}, timeouts {}, errors {}, mismatches {}, pacer lag max {:.2} ms",
                p.round,
                p.round_trip,
                p.sent,
                p.answered,
                p.timeouts,
                p.errors,
                p.mismatches,
                p.pacer_lag_max_us as f64 / 1000.0
            )?;
            if let Some(fr) = &p.freshness {
                writeln!(
                    f,
                    "round {} freshness: {fr} | updates never seen used: {}",
                    p.round, p.unobserved_updates
                )?;
            }
        }
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2} ms", v / 1000.0));
        let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
        let rt = |q: fn(&Percentiles) -> u64| move |p: &Phase| Some(q(&p.round_trip) as f64);
        let p50 = |p: &Percentiles| p.p50_us;
        let p99 = |p: &Percentiles| p.p99_us;
        let p999 = |p: &Percentiles| p.p999_us;
        writeln!(
            f,
            "median engine round trip: p50 {}, p99 {}, p99.9 {}",
            ms(self.median_of(Target::Engine, rt(p50))),
            ms(self.median_of(Target::Engine, rt(p99))),
            ms(self.median_of(Target::Engine, rt(p999))),
        )?;
        if self.phases.iter().any(|p| p.target == Target::Echo) {
            writeln!(
                f,
                "median echo round trip:   p50 {}, p99 {}, p99.9 {}",
                ms(self.median_of(Target::Echo, rt(p50))),
                ms(self.median_of(Target::Echo, rt(p99))),
                ms(self.median_of(Target::Echo, rt(p999))),
            )?;
            writeln!(
                f,
                "engine/echo (median of per-round ratios): p50 {}, p99 {}, p99.9 {}",
                x(self.ratio(rt(p50))),
                x(self.ratio(rt(p99))),
                x(self.ratio(rt(p999))),
            )?;
        }
        let fresh = |q: fn(&Percentiles) -> u64| move |p: &Phase| p.freshness.map(|f| q(&f) as f64);
        if self.phases.iter().any(|p| p.freshness.is_some()) {
            write!(
                f,
                "median freshness: p50 {}, p99 {}",
                ms(self.median_of(Target::Engine, fresh(p50))),
                ms(self.median_of(Target::Engine, fresh(p99))),
            )?;
            // Freshness p99 of each round against that round's echo p99.
            let rounds = self.phases.iter().map(|p| p.round).max().unwrap_or(0);
            let r = median(
                (1..=rounds)
                    .filter_map(|r| {
                        let of = |t| self.phases.iter().find(|p| p.round == r && p.target == t);
                        let fr = of(Target::Engine)?.freshness?.p99_us as f64;
                        let echo = of(Target::Echo)?.round_trip.p99_us as f64;
                        (echo > 0.0).then(|| fr / echo)
                    })
                    .collect(),
            );
            if r.is_some() {
                write!(f, "; freshness p99 / echo round-trip p99: {}", x(r))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The reply topic the load generator's clients use
/// (`<requests>.loadgen.replies`: partition 0 for the engine's client, 1 for
/// the echo's).
pub fn reply_topic(cfg: &Config) -> String {
    format!("{}.loadgen.replies", cfg.topics.requests)
}

/// Create `name` with `partitions` if it does not exist.
async fn ensure_topic(cfg: &Config, name: &str, partitions: i32) -> Result<(), LoadgenError> {
    if loadgen::high_watermarks_for(&cfg.kafka, name).is_ok_and(|h| !h.is_empty()) {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::admin_config(&cfg.kafka).create()?;
    let t = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(cfg.topics.replication_factor),
    );
    let res = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .map_err(LoadgenError::Kafka)?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => {
                return Err(LoadgenError::Setup(format!("cannot create topic {t}: {e}")))
            }
        }
    }
    Ok(())
}

/// The no-work echo: consume `topic` with the engine's request-consumer
/// settings and produce every record's bytes to its reply topic and
/// partition (the request/reply headers), with the engine's reply-producer
/// settings (`kafka::reply_producer_config`). Stops when dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Echo {
    /// Start the echo on `topic`; returns once its consumer has its
    /// partitions assigned.
    pub fn start(cfg: &Config, topic: &str, group: &str) -> Result<Echo, LoadgenError> {
        let mut ecfg = cfg.clone();
        ecfg.kafka.group_id = group.to_string();
        ecfg.engine.instance_id = String::new();
        let consumer: BaseConsumer = crate::kafka::request_consumer_config(&ecfg, 0)
            .set("auto.offset.reset", "latest")
            // The engine's statistics feed its lag gauges; the echo has no
            // use for them (and the default context would log each one).
            .set("statistics.interval.ms", "0")
            .create()?;
        consumer.subscribe(&[topic])?;
        let producer: ThreadedProducer<DefaultProducerContext> =
            crate::kafka::reply_producer_config(&ecfg).create()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumer.assignment().map_or(true, |a| a.count() == 0) {
            if Instant::now() > deadline {
                return Err(LoadgenError::Timeout(format!(
                    "echo consumer got no partition of {topic}"
                )));
            }
            let _ = consumer.poll(Duration::from_millis(50));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let Ok(Some(to)) = reply::from_message(m.headers()) else {
                        continue;
                    };
                    let payload = m.payload().unwrap_or_default();
                    let key = m.key().unwrap_or_default();
                    let mut rec: BaseRecord<'_, [u8], [u8]> =
                        BaseRecord::to(&to.topic).key(key).payload(payload);
                    if let Some(p) = to.partition {
                        rec = rec.partition(p);
                    }
                    if let Some(h) = to.headers() {
                        rec = rec.headers(h);
                    }
                    loop {
                        match producer.send(rec) {
                            Ok(()) => break,
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                b,
                            )) => {
                                rec = b;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err(_) => break,
                        }
                    }
                }
                let _ = producer.flush(Duration::from_secs(5));
            })
            .map_err(|e| LoadgenError::Setup(format!("cannot start the echo thread: {e}")))?;
        Ok(Echo {
            stop,
            thread: Some(thread),
        })
    }
}

/// What one call gave.
enum Call {
    Reply { latency_us: u64, mismatch: bool },
    Timeout,
    Error,
}

#[derive(Default)]
struct Tally {
    answered: usize,
    timeouts: usize,
    errors: usize,
    mismatches: usize,
}

/// Run `n` calls at `rate`, each started at its scheduled time by a pacer
/// thread, and wait for all of them. `record` says whether a call's
/// result counts (warm-up calls don't).
async fn open_loop<F, Fut>(
    rate: u64,
    n: usize,
    measured_from: usize,
    call: F,
) -> (Histogram<u64>, Tally, u64)
where
    F: Fn(usize, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Call> + Send + 'static,
{
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let handle = tokio::runtime::Handle::current();
    let call = Arc::new(call);
    let pacer = {
        let (hist, tally, done) = (hist.clone(), tally.clone(), done.clone());
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || {
                let start = Instant::now() + Duration::from_millis(5);
                let mut lag_max = 0u64;
                for i in 0..n {
                    let due = start
                        + Duration::from_nanos((i as u128 * 1_000_000_000 / rate as u128) as u64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else if i >= measured_from {
                        lag_max = lag_max.max((now - due).as_micros() as u64);
                    }
                    let (call, hist, tally, done) =
                        (call.clone(), hist.clone(), tally.clone(), done.clone());
                    handle.spawn(async move {
                        let r = call(i, due).await;
                        if i >= measured_from {
                            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                            match r {
                                Call::Reply {
                                    latency_us,
                                    mismatch,
                                } => {
                                    t.answered += 1;
                                    t.mismatches += usize::from(mismatch);
                                    let _ = hist
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .record(latency_us.clamp(1, 600_000_000));
                                }
                                Call::Timeout => t.timeouts += 1,
                                Call::Error => t.errors += 1,
                            }
                        }
                        done.fetch_add(1, Ordering::Release);
                    });
                }
                lag_max
            })
            .expect("pacer thread")
    };
    let lag = tokio::task::spawn_blocking(move || pacer.join().unwrap_or(0))
        .await
        .unwrap_or(0);
    while done.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = hist.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    (h, t, lag)
}

/// The run's synthetic subjects (as `loadgen`: at least one per category).
fn population(opts: &LatencyOptions) -> Arc<Vec<Subject>> {
    Arc::new(
        (0..opts.subjects.max(10))
            .map(|i| loadgen::subject(&opts.run_id, i))
            .collect(),
    )
}

/// A client sending to `requests_topic` and reading its replies on
/// partition `partition` of [`reply_topic`] (made off the async threads:
/// `Client::new` blocks on metadata).
fn start_client(
    opts: &LatencyOptions,
    requests_topic: &str,
    partition: i32,
    max_in_flight: usize,
) -> Result<Arc<Client>, LoadgenError> {
    let o = ClientOptions {
        kafka: opts.cfg.kafka.clone(),
        requests_topic: requests_topic.to_string(),
        reply_topic: reply_topic(&opts.cfg),
        reply_partition: Some(partition),
        max_in_flight,
        linger_ms: opts.linger_ms,
    };
    tokio::task::block_in_place(|| Client::new(o))
        .map(Arc::new)
        .map_err(|e| LoadgenError::Setup(format!("client of {requests_topic}: {e}")))
}

/// The most round trips per second the engine gives through the client on
/// this machine: `concurrency` calls kept in flight (closed loop) for
/// `duration` after a warm-up of a fifth of it; the rate the open-loop
/// loads are fractions of. The client and the broker share the machine,
/// so this is the whole system's request/reply maximum, not the engine's
/// drain rate of a backlog (which `loadgen` without `--latency` gives).
pub async fn saturate(
    opts: &LatencyOptions,
    concurrency: usize,
) -> Result<(f64, usize), LoadgenError> {
    let cfg = &opts.cfg;
    let subjects = population(opts);
    if let Some(admin) = opts.admin {
        loadgen::wait_for_assignment(admin, Duration::from_secs(120)).await?;
    }
    ensure_topic(cfg, &reply_topic(cfg), 2).await?;
    let client = start_client(opts, &cfg.topics.requests, 0, concurrency.max(1))?;
    let warm = (opts.duration / 5).min(Duration::from_secs(2));
    let start = Instant::now();
    let measure_from = start + warm;
    let end = measure_from + opts.duration;
    let counted = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let seq = Arc::new(AtomicUsize::new(0));
    let tag = format!("{}sat{:x}-", opts.run_id, std::process::id());
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, subjects, counted, failed, seq, tag) = (
            client.clone(),
            subjects.clone(),
            counted.clone(),
            failed.clone(),
            seq.clone(),
            tag.clone(),
        );
        let timeout = opts.call_timeout;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let k = seq.fetch_add(1, Ordering::Relaxed);
                let s = &subjects[k % subjects.len()];
                let req = loadgen::request(s, format!("{tag}{k}"), loadgen::model_for(k));
                let ok = matches!(client.decide(&req, timeout).await,
                    Ok(d) if d.reasons.first().map(String::as_str) != Some(crate::vocab::reason::TIMEOUT));
                let now = Instant::now();
                if now >= measure_from && now < end {
                    if ok {
                        counted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        counted.load(Ordering::Relaxed) as f64 / opts.duration.as_secs_f64(),
        failed.load(Ordering::Relaxed),
    ))
}

/// Freshness: updates produced (version, when), matched to the first
/// decision seen using that version or a later one.
struct Freshness {
    pending: Mutex<VecDeque<(u64, Instant)>>,
    hist: Mutex<Histogram<u64>>,
    measuring: AtomicBool,
}

impl Freshness {
    fn new() -> Self {
        Freshness {
            pending: Mutex::new(VecDeque::new()),
            hist: Mutex::new(
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            ),
            measuring: AtomicBool::new(false),
        }
    }

    fn produced(&self, version: u64, at: Instant) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((version, at));
    }

    fn observed(&self, version: u64, at: Instant) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while p.front().is_some_and(|(v, _)| *v <= version) {
            let (_, produced) = p.pop_front().expect("front");
            if self.measuring.load(Ordering::Relaxed) {
                let us = at.saturating_duration_since(produced).as_micros() as u64;
                let _ = self
                    .hist
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(us.clamp(1, 600_000_000));
            }
        }
    }

    /// The histogram so far, and the updates not yet seen used; resets.
    fn take(&self) -> (Histogram<u64>, usize) {
        let mut h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        let out = h.clone();
        h.reset();
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let left = p.len();
        p.clear();
        (out, left)
    }
}

/// Run the measurement.
pub async fn run(opts: LatencyOptions) -> Result<LatencyReport, LoadgenError> {
    let cfg = &opts.cfg;
    if opts.rate == 0 || opts.rounds == 0 {
        return Err(LoadgenError::Setup(
            "rate and rounds must be positive".into(),
        ));
    }
    let subjects = population(&opts);
    if opts.seed {
        loadgen::run(loadgen::LoadOptions {
            kafka: cfg.kafka.clone(),
            requests_topic: cfg.topics.requests.clone(),
            decisions_topic: cfg.topics.decisions.clone(),
            eligibility_topic: cfg.topics.eligibility.clone(),
            requests: 0,
            rate: None,
            subjects: subjects.len(),
            seed: true,
            send: false,
            admin: opts.admin,
            timeout: Duration::from_secs(120),
            run_id: opts.run_id.clone(),
        })
        .await?;
    }
    if let Some(admin) = opts.admin {
        loadgen::wait_for_assignment(admin, Duration::from_secs(120)).await?;
    }
    let echo_topic = format!("{}.loadgen.echo", cfg.topics.requests);
    ensure_topic(cfg, &reply_topic(cfg), 2).await?;
    let engine = start_client(&opts, &cfg.topics.requests, 0, 100_000)?;
    let echo = if opts.echo {
        let parts = loadgen::high_watermarks_for(&cfg.kafka, &cfg.topics.requests)?.len();
        ensure_topic(cfg, &echo_topic, parts.max(1) as i32).await?;
        let group = format!("{}-echo-{}", cfg.kafka.group_id, opts.run_id);
        let e = tokio::task::block_in_place(|| Echo::start(cfg, &echo_topic, &group))?;
        let c = start_client(&opts, &echo_topic, 1, 100_000)?;
        Some((e, c))
    } else {
        None
    };

    let fresh = Arc::new(Freshness::new());
    let hot = subjects[0].clone();
    let updater = if opts.freshness {
        let Some(base) = hot.record.clone() else {
            return Err(LoadgenError::Setup("the hot subject has no record".into()));
        };
        let producer: ThreadedProducer<DefaultProducerContext> =
            crate::kafka::base_config(&cfg.kafka, "loadgen-freshness")
                .set("linger.ms", "0")
                .create()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, topic) = (stop.clone(), fresh.clone(), cfg.topics.eligibility.clone());
        let t = std::thread::spawn(move || {
            let mut version = base.version + 1_000_000;
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                version += 1;
                let mut r = base.clone();
                r.version = version;
                let rec = EligibilityRecord::User(r);
                let body = serde_json::to_vec(&rec).unwrap_or_default();
                let key = rec.key();
                let at = Instant::now();
                f.produced(version, at);
                let _ = producer
                    .send::<str, [u8]>(BaseRecord::to(&topic).key(key.as_str()).payload(&body[..]));
                next += UPDATE_EVERY;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            let _ = producer.flush(Duration::from_secs(5));
        });
        Some((stop, t))
    } else {
        None
    };

    let n_measured = (opts.rate as f64 * opts.duration.as_secs_f64()).ceil() as usize;
    let warm =
        ((opts.rate as f64 * (opts.duration.as_secs_f64() / 5.0).min(2.0)).ceil() as usize).max(1);
    let mut phases = Vec::new();
    let mut seq = 0usize;
    let tag = format!("{}lat{:x}-", opts.run_id, std::process::id());
    for round in 1..=opts.rounds {
        let mut targets = vec![Target::Engine];
        if echo.is_some() {
            targets.push(Target::Echo);
        }
        for target in targets {
            let n = warm + n_measured;
            let base = seq;
            seq += n;
            let (subjects, timeout, prefix) = (subjects.clone(), opts.call_timeout, tag.clone());
            let (hist, tally, lag) = match target {
                Target::Engine => {
                    let (client, fresh, hot) = (engine.clone(), fresh.clone(), hot.clone());
                    let freshness = opts.freshness;
                    fresh.measuring.store(false, Ordering::Relaxed);
                    let f2 = fresh.clone();
                    let marker = tokio::spawn(async move {
                        // Freshness counts updates produced after the warm-up.
                        tokio::time::sleep(Duration::from_secs_f64(warm as f64 / opts.rate as f64))
                            .await;
                        f2.take();
                        f2.measuring.store(true, Ordering::Relaxed);
                    });
                    let r = open_loop(opts.rate, n, warm, move |i, due| {
                        let (client, fresh, hot) = (client.clone(), fresh.clone(), hot.clone());
                        let k = base + i;
                        let s = if freshness && k.is_multiple_of(HOT_EVERY) {
                            hot.clone()
                        } else {
                            subjects[k % subjects.len()].clone()
                        };
                        let model = loadgen::model_for(k);
                        let req = loadgen::request(&s, format!("{prefix}{k}"), model);
                        async move {
                            match client.decide(&req, timeout).await {
                                Ok(d)
                                    if d.reasons.first().map(String::as_str)
                                        == Some(crate::vocab::reason::TIMEOUT) =>
                                {
                                    Call::Timeout
                                }
                                Ok(d) => {
                                    let at = Instant::now();
                                    if freshness && s.id == hot.id {
                                        if let Some(v) = &d.versions.subject {
                                            fresh.observed(v.version, at);
                                        }
                                    }
                                    Call::Reply {
                                        latency_us: at.saturating_duration_since(due).as_micros()
                                            as u64,
                                        mismatch: d.outcome != s.category.expected(model),
                                    }
                                }
                                Err(_) => Call::Error,
                            }
                        }
                    })
                    .await;
                    let _ = marker.await;
                    r
                }
                Target::Echo => {
                    let client = echo.as_ref().expect("echo").1.clone();
                    open_loop(opts.rate, n, warm, move |i, due| {
                        let client = client.clone();
                        let k = base + i;
                        let s = &subjects[k % subjects.len()];
                        let req =
                            loadgen::request(s, format!("{prefix}{k}"), loadgen::model_for(k));
                        let body = serde_json::to_vec(&req).unwrap_or_default();
                        let key = s.id.clone();
                        async move {
                            match client.call_raw(key.as_bytes(), &body, timeout).await {
                                Ok(Some(_)) => Call::Reply {
                                    latency_us: Instant::now()
                                        .saturating_duration_since(due)
                                        .as_micros()
                                        as u64,
                                    mismatch: false,
                                },
                                Ok(None) => Call::Timeout,
                                Err(_) => Call::Error,
                            }
                        }
                    })
                    .await
                }
            };
            let (freshness, unobserved) = if target == Target::Engine && opts.freshness {
                fresh.measuring.store(false, Ordering::Relaxed);
                let (h, left) = fresh.take();
                (Some(Percentiles::of(&h)), left)
            } else {
                (None, 0)
            };
            phases.push(Phase {
                target,
                round,
                sent: n_measured,
                answered: tally.answered,
                timeouts: tally.timeouts,
                errors: tally.errors,
                mismatches: tally.mismatches,
                round_trip: Percentiles::of(&hist),
                freshness,
                unobserved_updates: unobserved,
                pacer_lag_max_us: lag,
            });
        }
    }
    if let Some((stop, t)) = updater {
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    drop(echo);
    Ok(LatencyReport {
        rate: opts.rate,
        phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(target: Target, round: usize, p99: u64) -> Phase {
        Phase {
            target,
            round,
            sent: 1,
            answered: 1,
            timeouts: 0,
            errors: 0,
            mismatches: 0,
            round_trip: Percentiles {
                count: 1,
                p50_us: p99 / 2,
                p99_us: p99,
                p999_us: p99,
                max_us: p99,
            },
            freshness: None,
            unobserved_updates: 0,
            pacer_lag_max_us: 0,
        }
    }

    #[test]
    fn ratios_are_taken_within_a_round_then_the_median() {
        let r = LatencyReport {
            rate: 1,
            phases: vec![
                phase(Target::Engine, 1, 200),
                phase(Target::Echo, 1, 100),
                phase(Target::Engine, 2, 900),
                phase(Target::Echo, 2, 300),
                phase(Target::Engine, 3, 100),
                phase(Target::Echo, 3, 100),
            ],
        };
        let p99 = |p: &Phase| Some(p.round_trip.p99_us as f64);
        assert_eq!(r.ratio(p99), Some(2.0), "ratios 2, 3, 1: median 2");
        assert_eq!(r.median_of(Target::Echo, p99), Some(100.0));
        let text = r.to_string();
        assert!(
            text.contains("engine/echo (median of per-round ratios): p50 2.00x, p99 2.00x"),
            "{text}"
        );
    }

    #[test]
    fn freshness_matches_an_update_to_the_first_decision_using_it_or_later() {
        let f = Freshness::new();
        f.measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        f.produced(1, t0);
        f.produced(2, t0 + Duration::from_millis(10));
        f.produced(3, t0 + Duration::from_millis(20));
        f.observed(0, t0 + Duration::from_millis(1));
        f.observed(2, t0 + Duration::from_millis(15));
        f.observed(2, t0 + Duration::from_millis(16));
        let (h, left) = f.take();
        assert_eq!(h.len(), 2, "versions 1 and 2, once each");
        assert_eq!(left, 1, "version 3 not seen used");
        assert!(h.max() >= 14_900 && h.max() <= 15_100, "{}", h.max());
    }
}
