//! The shared broker harness: one real Apache Kafka broker per test run,
//! started by `scripts/kafka up` (or the broker named by
//! `KAFKA_BOOTSTRAP_SERVERS`), and helpers for topics, engines and records.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clearance::config::Config;
use clearance::engine::{self, EngineHandle};
use clearance::event::{Decision, EligibilityRecord};
use clearance::loadgen::DataProducer;
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

static BROKER: OnceLock<Result<String, String>> = OnceLock::new();

/// The bootstrap address of the test broker. Panics with instructions when
/// no broker can be had.
pub fn bootstrap() -> String {
    BROKER
        .get_or_init(|| {
            if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
                if !b.trim().is_empty() {
                    return Ok(b);
                }
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka");
            let out = Command::new("bash")
                .arg(script)
                .arg("up")
                .arg("--owner-pid")
                .arg(std::process::id().to_string())
                .output()
                .map_err(|e| format!("cannot run {script}: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().last().unwrap_or("").trim().to_string();
            if !out.status.success() || line.is_empty() {
                return Err(format!(
                    "{script} up failed ({}):\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            eprintln!("test broker: {line}");
            Ok(line)
        })
        .clone()
        .unwrap_or_else(|e| {
            panic!(
                "no Kafka broker for the integration tests.\n{e}\n\
                 The tests start a real Apache Kafka 4.x broker with scripts/kafka, which needs \
                 Java 17+ and Maven (Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven). \
                 Or point them at a running broker: KAFKA_BOOTSTRAP_SERVERS=host:port cargo test"
            )
        })
}

/// A name unique to this run.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{prefix}-{n:016x}")
}

/// A configuration for one test: its own topics, group and admin port.
pub fn test_config(name: &str) -> Config {
    let mut cfg = Config::default();
    let id = unique(name);
    cfg.kafka.bootstrap_servers = bootstrap();
    cfg.kafka.group_id = format!("g-{id}");
    cfg.topics.requests = format!("{id}.requests");
    cfg.topics.eligibility = format!("{id}.eligibility");
    cfg.topics.decisions = format!("{id}.decisions");
    cfg.topics.deadletter = format!("{id}.deadletter");
    cfg.topics.policy = format!("{id}.policy");
    cfg.topics.shadow = format!("{id}.shadow");
    cfg.topics.partitions = 3;
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.engine.commit_interval_ms = 200;
    cfg.engine.instance_id = id;
    cfg
}

/// Create the topics of `cfg`.
pub async fn create_topics(cfg: &Config) {
    clearance::kafka::create_topics(&cfg.kafka, &cfg.topics)
        .await
        .expect("create topics");
}

/// Cancels the engine when dropped, so that a failing test stops its
/// engine (whose threads would otherwise keep the test runtime alive).
pub struct StopGuard(CancellationToken);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Start an in-process engine.
pub async fn start_engine(cfg: &Config) -> (EngineHandle, StopGuard) {
    init_test_logging();
    let stop = CancellationToken::new();
    let h = engine::start(cfg.clone(), stop.clone())
        .await
        .expect("engine starts");
    (h, StopGuard(stop))
}

/// In-process engines log into the test's captured output, which libtest
/// prints when the test fails: a failure comes with the engine's side of
/// the story. `CLEARANCE_TEST_LOG` overrides the filter (default
/// `clearance=info`; librdkafka's own threads are not captured, so its
/// logs stay off).
pub fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter =
            std::env::var("CLEARANCE_TEST_LOG").unwrap_or_else(|_| "clearance=info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// Stop an in-process engine and check it stopped cleanly.
pub async fn stop_engine(h: EngineHandle, stop: StopGuard) {
    stop.0.cancel();
    tokio::time::timeout(Duration::from_secs(60), h.join)
        .await
        .expect("engine stops within 60 s")
        .expect("engine task")
        .expect("engine stopped without error");
}

/// A producer for test input.
pub fn producer() -> DataProducer {
    clearance::loadgen::data_producer(&bootstrap()).expect("producer")
}

/// Publish eligibility records and confirm their delivery.
pub fn publish_records(p: &DataProducer, cfg: &Config, recs: &[EligibilityRecord]) {
    clearance::loadgen::publish_eligibility(p, &cfg.topics.eligibility, recs).expect("publish");
}

/// Publish raw request payloads (key = subject) and confirm their delivery.
pub fn publish_raw(p: &DataProducer, topic: &str, items: &[(Vec<u8>, Vec<u8>)]) {
    for (k, v) in items {
        clearance::loadgen::send_blocking(p, topic, k, Some(v)).expect("send");
        p.poll(Duration::ZERO);
    }
    clearance::loadgen::confirm_delivery(p).expect("delivered");
}

/// A consumer reading every partition of `topic` from the beginning.
pub fn reader(topic: &str) -> BaseConsumer {
    reader_with_isolation(topic, "read_uncommitted")
}

/// A `read_committed` reader of every partition of `topic`, from the
/// beginning (what exactly-once promises is judged by such a reader).
pub fn committed_reader(topic: &str) -> BaseConsumer {
    reader_with_isolation(topic, "read_committed")
}

/// A reader of every partition of `topic` on the broker at `bootstrap`
/// (a test's private broker), from the beginning.
pub fn reader_at(bootstrap: &str, topic: &str) -> BaseConsumer {
    reader_on(bootstrap, topic, "read_uncommitted")
}

fn reader_with_isolation(topic: &str, isolation: &str) -> BaseConsumer {
    reader_on(&bootstrap(), topic, isolation)
}

fn reader_on(bootstrap: &str, topic: &str, isolation: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Should a fetch position ever be out of range (a broker restart),
        // read again from the start rather than skip to the end.
        .set("auto.offset.reset", "earliest")
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("tpl");
        }
    }
    c.assign(&tpl).expect("assign");
    c
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
}

/// Read from `c` until `done(records so far)` or the timeout.
pub fn read_until(
    c: &BaseConsumer,
    timeout: Duration,
    mut done: impl FnMut(&[Read]) -> bool,
) -> Vec<Read> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| k.to_vec()),
                payload: m.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    out
}

/// Read until `n` distinct keys are seen (or `timeout`): where a
/// rebalance may decide a request twice (at-least-once), a count of
/// records reaches `n` before every key is there.
pub fn read_until_keys(c: &BaseConsumer, timeout: Duration, n: usize) -> Vec<Read> {
    let mut keys: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut counted = 0;
    read_until(c, timeout, |r| {
        for read in &r[counted..] {
            keys.insert(read.key.clone().unwrap_or_default());
        }
        counted = r.len();
        keys.len() >= n
    })
}

/// Decode decisions; panics on a record that is not a decision.
pub fn decisions(reads: &[Read]) -> Vec<Decision> {
    reads
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("decision JSON"))
        .collect()
}

/// First decision per request id.
pub fn first_by_request(ds: &[Decision]) -> BTreeMap<String, Decision> {
    let mut m = BTreeMap::new();
    for d in ds {
        m.entry(d.request_id.clone()).or_insert_with(|| d.clone());
    }
    m
}

/// Wait until the engine reports the feed applied up to the current end of
/// the eligibility topic.
pub async fn wait_feed_applied(h: &EngineHandle, cfg: &Config) {
    let targets =
        clearance::loadgen::high_watermarks(&bootstrap(), &cfg.topics.eligibility).expect("hw");
    clearance::loadgen::wait_for_feed(h.admin_addr, &targets, Duration::from_secs(120))
        .await
        .expect("feed applied");
}

/// A broker of a test's own (for faults that must not disturb the shared
/// one): `scripts/kafka up --dir`, with `stop` and `start` keeping its data
/// and ports. Removed on drop.
pub struct PrivateBroker {
    dir: std::path::PathBuf,
    /// Its bootstrap address.
    pub bootstrap: String,
}

fn kafka_script(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run scripts/kafka");
    assert!(
        out.status.success(),
        "scripts/kafka {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl PrivateBroker {
    /// Start one (it needs Java and Maven, like the shared broker).
    pub fn up() -> Self {
        let dir = std::env::temp_dir().join(unique("clearance-private-broker"));
        let pid = std::process::id().to_string();
        let d = dir.to_string_lossy().to_string();
        let bootstrap = kafka_script(&["up", "--dir", &d, "--owner-pid", &pid]);
        PrivateBroker { dir, bootstrap }
    }

    /// Stop the broker, keeping its data.
    pub fn stop(&self) {
        kafka_script(&["stop", "--dir", &self.dir.to_string_lossy()]);
    }

    /// Start it again on the same ports with the same data.
    pub fn start(&self) {
        let b = kafka_script(&["start", "--dir", &self.dir.to_string_lossy()]);
        assert_eq!(b, self.bootstrap, "same address after a restart");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .args(["down", "--dir", &self.dir.to_string_lossy()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `clearance run` child process, killed when dropped (so that a failing
/// test leaves no engine behind).
pub struct EngineProcess(std::process::Child);

impl std::ops::Deref for EngineProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for EngineProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `clearance run` as a child process with `cfg` written to
/// `dir/NAME.toml`.
pub fn spawn_engine(cfg: &Config, dir: &std::path::Path, name: &str) -> EngineProcess {
    spawn_engine_bin(env!("CARGO_BIN_EXE_clearance").as_ref(), cfg, dir, name)
}

/// [`spawn_engine`] with another build of the binary (to measure an older
/// one, say).
pub fn spawn_engine_bin(
    bin: &std::path::Path,
    cfg: &Config,
    dir: &std::path::Path,
    name: &str,
) -> EngineProcess {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    EngineProcess(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            // CLEARANCE_TEST_LOG is for the test process: a child would
            // read it as a configuration variable, and refuse it.
            .env_remove("CLEARANCE_TEST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn clearance run"),
    )
}

/// Publish the eligibility records of synthetic subjects (unknown subjects
/// have none).
pub fn seed(p: &DataProducer, cfg: &Config, subjects: &[clearance::loadgen::Subject]) {
    let recs: Vec<EligibilityRecord> = subjects
        .iter()
        .filter_map(|s| s.record.clone().map(EligibilityRecord::User))
        .collect();
    publish_records(p, cfg, &recs);
}

/// Requests `PREFIX-i` for `i` in `range`, round-robin over `subjects`,
/// with the load generator's model mix; keyed by subject.
pub fn request_batch(
    subjects: &[clearance::loadgen::Subject],
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    range
        .map(|i| {
            let s = &subjects[i % subjects.len()];
            let r = clearance::loadgen::request(
                s,
                format!("{prefix}-{i}"),
                clearance::loadgen::model_for(i),
            );
            (s.id.as_bytes().to_vec(), serde_json::to_vec(&r).unwrap())
        })
        .collect()
}

/// The engine's `/status` document.
pub async fn engine_status(h: &EngineHandle) -> serde_json::Value {
    let (_, body) = clearance::admin::get(h.admin_addr, "/status")
        .await
        .expect("GET /status");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// Poll the engine's `/status` until `ok` holds, or fail after `timeout`
/// naming `what` and the last status.
pub async fn wait_status(
    h: &EngineHandle,
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = engine_status(h).await;
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback address for a child engine's admin port.
pub fn free_admin_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// Like [`spawn_engine`], on an admin port of its own: returns the child
/// and the address of its `/status`.
pub fn spawn_engine_with_admin(
    cfg: &Config,
    dir: &std::path::Path,
    name: &str,
) -> (EngineProcess, std::net::SocketAddr) {
    let addr = free_admin_addr();
    let mut cfg = cfg.clone();
    cfg.admin.listen = addr.to_string();
    (spawn_engine(&cfg, dir, name), addr)
}

/// Wait until the engine at `admin` is ready and has applied the change
/// feed on `bootstrap` up to its current end.
pub async fn wait_applied_at(admin: std::net::SocketAddr, bootstrap: &str, cfg: &Config) {
    let targets =
        clearance::loadgen::high_watermarks(bootstrap, &cfg.topics.eligibility).expect("hw");
    clearance::loadgen::wait_for_feed(admin, &targets, Duration::from_secs(120))
        .await
        .expect("feed applied");
}

/// Version 2 of a synthetic subject's record, revoked now.
pub fn revocation_of(subject: &clearance::loadgen::Subject) -> EligibilityRecord {
    let mut rec = subject.record.clone().expect("a subject with a record");
    rec.version = 2;
    rec.revocation = Some(clearance::event::Revocation {
        revoked_at: time::OffsetDateTime::now_utc(),
        reason: Some("test".into()),
    });
    EligibilityRecord::User(rec)
}

/// The "no allow after a revocation was applied" check of the fault tests.
///
/// The probe is a U.S. citizen, allowed the controlled model until revoked.
/// A test mixes the probe's requests (`PREFIX-rv-i`, controlled model) into
/// its load, revokes the probe with [`RevocationProbe::revoke`], waits until
/// the engine reports the revocation applied, and only then sends the
/// requests from [`RevocationProbe::after`] on. [`RevocationProbe::check`]
/// then asserts that every one of those was denied, and that every decision
/// made with the revoked record was a deny.
pub struct RevocationProbe {
    /// The subject.
    pub subject: clearance::loadgen::Subject,
    prefix: String,
    after: usize,
}

impl RevocationProbe {
    /// A probe for request ids `PREFIX-rv-i`; requests with `i >= after`
    /// are the ones sent after the revocation was applied.
    pub fn new(prefix: &str, after: usize) -> Self {
        let subject = clearance::loadgen::subject(&format!("{prefix}rv"), 0);
        assert_eq!(
            subject.record.as_ref().map(|r| r.us_person_status),
            Some(clearance::event::UsPersonStatus::Citizen),
            "the probe is a U.S. citizen"
        );
        RevocationProbe {
            subject,
            prefix: prefix.to_string(),
            after,
        }
    }

    /// Its eligibility record (version 1, not revoked), to seed the feed.
    pub fn record(&self) -> EligibilityRecord {
        EligibilityRecord::User(self.subject.record.clone().expect("record"))
    }

    /// The revocation: version 2 of its record.
    pub fn revocation(&self) -> EligibilityRecord {
        revocation_of(&self.subject)
    }

    /// Publish the revocation through `p`.
    pub fn revoke(&self, p: &DataProducer, cfg: &Config) {
        publish_records(p, cfg, &[self.revocation()]);
    }

    /// The id of the probe's request `i`.
    pub fn id(&self, i: usize) -> String {
        format!("{}-rv-{i}", self.prefix)
    }

    /// The probe's requests `PREFIX-rv-i` for `i` in `range`.
    pub fn requests(&self, range: std::ops::Range<usize>) -> Vec<(Vec<u8>, Vec<u8>)> {
        range
            .map(|i| {
                let r = clearance::loadgen::request(
                    &self.subject,
                    self.id(i),
                    clearance::loadgen::TAGGED_MODEL,
                );
                (
                    self.subject.id.as_bytes().to_vec(),
                    serde_json::to_vec(&r).unwrap(),
                )
            })
            .collect()
    }

    /// Whether `d` allowed one of the probe's requests sent before the
    /// revocation: a test waits for one before it revokes, so that
    /// [`RevocationProbe::check`] has a baseline.
    pub fn allowed_before(&self, d: &Decision) -> bool {
        d.request_id
            .strip_prefix(&format!("{}-rv-", self.prefix))
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i < self.after)
            && d.outcome == clearance::event::Outcome::Allow
    }

    /// Assert, over all decisions `ds` read back: every probe request sent
    /// after the revocation was applied was denied as revoked; every
    /// decision made with the revoked record is a deny; at least one probe
    /// request sent before was allowed (the probe is not denied anyway);
    /// and every probe request in `0..sent` has a decision.
    pub fn check(&self, ds: &[Decision], sent: usize) {
        let marker = format!("{}-rv-", self.prefix);
        let mut decided = std::collections::BTreeSet::new();
        let mut allowed_before = 0;
        for d in ds.iter().filter(|d| d.request_id.starts_with(&marker)) {
            let i: usize = d.request_id[marker.len()..].parse().expect("probe index");
            decided.insert(i);
            let revoked_record = d.versions.subject.as_ref().is_some_and(|v| v.version >= 2);
            if revoked_record || i >= self.after {
                assert_eq!(
                    d.outcome,
                    clearance::event::Outcome::Deny,
                    "{} allowed after the revocation was applied: {:?}",
                    d.request_id,
                    d.reasons
                );
            }
            if i >= self.after {
                assert!(
                    d.reasons
                        .iter()
                        .any(|r| r == "subject_revoked" || r == "stale_data"),
                    "{} denied for the revocation: {:?}",
                    d.request_id,
                    d.reasons
                );
            }
            if i < self.after && d.outcome == clearance::event::Outcome::Allow {
                allowed_before += 1;
            }
        }
        assert!(
            allowed_before > 0,
            "the probe was allowed before its revocation (otherwise the check proves nothing)"
        );
        let missing: Vec<usize> = (0..sent)
            .filter(|i| !decided.contains(i))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "probe requests without a decision: {missing:?}"
        );
    }
}

/// Held for their whole run by the tests that run engine processes or a
/// private broker under load and assert time bounds (`group`, and the
/// heavy ones of `faults`): side by side on the 2-core CI machine they
/// measured each other's load (a crash takeover of 12.8 s against an 8 s
/// bound while `faults::instances_joining_and_leaving_lose_nothing` ran).
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
