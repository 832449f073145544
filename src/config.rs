//! The typed configuration, layered: built-in defaults, then a TOML file,
//! then `CLEARANCE_<SECTION>__<FIELD>` environment variables (for example
//! `CLEARANCE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092`).
//!
//! Unknown fields are errors, and loading reports *every* invalid field,
//! not just the first.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topic names and layout.
    pub topics: TopicsConfig,
    /// The request pipeline.
    pub engine: EngineConfig,
    /// The admin HTTP server.
    pub admin: AdminConfig,
    /// The policy.
    pub policy: PolicyConfig,
}

/// Kafka connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group of the request pipeline.
    pub group_id: String,
    /// Client id prefix.
    pub client_id: String,
    /// Extra librdkafka properties passed through as they are, e.g.
    /// `"security.protocol" = "SASL_SSL"`. Values are never logged.
    pub properties: BTreeMap<String, String>,
    /// librdkafka statistics interval, which drives the lag metrics.
    pub statistics_interval_ms: u64,
    /// Brokers of the change feed, when it lives on another cluster
    /// (default: `bootstrap_servers`).
    pub feed_bootstrap_servers: Option<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "clearance".into(),
            client_id: "clearance".into(),
            properties: BTreeMap::new(),
            statistics_interval_ms: 1000,
            feed_bootstrap_servers: None,
        }
    }
}

/// Topic names, partition counts and creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Access requests (input).
    pub requests: String,
    /// Eligibility change feed (compacted).
    pub eligibility: String,
    /// Decisions (output).
    pub decisions: String,
    /// Dead letters (output).
    pub deadletter: String,
    /// Published policies (compacted, one partition).
    pub policy: String,
    /// Shadow differences: where a shadow policy's verdict differs from the
    /// active one's (`policy.shadow_file`).
    pub shadow: String,
    /// Partitions of each topic when created.
    pub partitions: i32,
    /// Replication factor when created.
    pub replication_factor: i32,
    /// Create missing topics at startup.
    pub create_missing: bool,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            requests: "access.requests".into(),
            eligibility: "eligibility.changes".into(),
            decisions: "access.decisions".into(),
            deadletter: "access.deadletter".into(),
            policy: "clearance.policy".into(),
            shadow: "access.shadow".into(),
            partitions: 6,
            replication_factor: 1,
            create_missing: true,
        }
    }
}

/// Delivery guarantee of the request pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Offsets committed after confirmed delivery; a crash may decide a
    /// request twice.
    #[default]
    AtLeastOnce,
    /// Kafka transactions: decisions and offsets commit together; each
    /// request yields exactly one committed decision for `read_committed`
    /// readers.
    ExactlyOnce,
}

/// Exactly-once: how long a killed producer's open transaction can hold
/// the decisions back from `read_committed` readers (plus the broker's
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms`), when the
/// instance does not come back. 5 s, below the 6 s session timeout: the
/// broker has aborted a crashed instance's transaction by about the time
/// its partitions move, so their new owner does not wait on it. A
/// transaction lives at most `engine.transaction_max_ms` plus its commit
/// (config validation keeps `transaction_max_ms` within half of it).
pub const TRANSACTION_TIMEOUT_MS: u64 = 5000;

/// The request pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `at-least-once` or `exactly-once`.
    pub delivery: DeliveryMode,
    /// Exactly-once: most requests per transaction. Under light load a
    /// transaction closes after `transaction_max_ms`; this bound only
    /// matters when requests queue up. 10,000 (it was 1,000): on the 2-core
    /// machine's drain benchmark exactly-once went from 0.14x to 0.62x the
    /// at-least-once throughput (BENCHMARKS.md, "Exactly-once against
    /// at-least-once"), and 100,000 gave no more (0.51x).
    pub transaction_max_messages: usize,
    /// Exactly-once: longest a transaction stays open collecting requests.
    /// At most half of `transaction.timeout.ms` (5,000 ms unless
    /// `kafka.properties` sets it): the broker aborts a longer transaction.
    pub transaction_max_ms: u64,
    /// Deny controlled models when the change feed has not been confirmed
    /// caught up for this long (0: never).
    pub staleness_bound_secs: u64,
    /// Name of this instance, written into every decision. Empty: the host
    /// name plus the process id.
    pub instance_id: String,
    /// Consumer threads in this process (each owns the partitions the group
    /// gives it, in order within each partition). 0, the default: one per
    /// core (`std::thread::available_parallelism`), at most 64.
    pub workers: usize,
    /// Maximum messages in the producer's local queue before backpressure.
    pub producer_queue_max_messages: u32,
    /// Producer linger (batching delay) of the decision log (decisions,
    /// dead letters, shadow differences). In exactly-once mode the
    /// transactional producers (two per worker) carry replies too, with
    /// this linger. No frontend waits for the log in at-least-once mode (replies
    /// have their own producer, `reply_linger_ms`), so the default batches
    /// it: fewer, larger requests spare the broker the CPU that the
    /// replies' round trip competes for (BENCHMARKS.md, "Latency"). For
    /// batch work (replay into a topic, backfill) 5-20 ms with
    /// `kafka.properties` `batch.size` raised gives fewer, larger requests
    /// (README, "Throughput profile"). At most 900,000 (librdkafka's range).
    pub producer_linger_ms: u64,
    /// Producer linger of replies (request/reply, at-least-once mode),
    /// which have a producer of their own so that they never wait behind
    /// the decision log's batches. The default, 1 ms, favours latency: a
    /// frontend waiting for its reply pays at most 1 ms of batching, and
    /// under load the batches it forms spare the broker, where 0 ms sends a
    /// request per reply (BENCHMARKS.md, "Latency"). At most 900,000.
    pub reply_linger_ms: u64,
    /// How often stored offsets are committed.
    pub commit_interval_ms: u64,
    /// Bound on a graceful shutdown (drain, commit, flush), and on the
    /// final snapshot write (past it, the previous snapshot stays).
    pub shutdown_timeout_ms: u64,
    /// Dead letters keep at most this many bytes of the original payload.
    pub deadletter_max_payload_bytes: usize,
    /// Snapshot file of the eligibility cache, for a warm restart (none:
    /// every start replays the whole change feed).
    pub snapshot_path: Option<PathBuf>,
    /// How often the snapshot is written, on a thread of its own while the
    /// feed goes on (also on shutdown, within `shutdown_timeout_ms`).
    pub snapshot_interval_secs: u64,
    /// Requests and change-feed records above this size are dead-lettered
    /// (`too_large`) without being decoded.
    pub max_input_bytes: usize,
    /// Give up waiting for the change feed to catch up after this long at
    /// startup (0: wait forever).
    pub feed_catchup_timeout_secs: u64,
    /// Most deletion markers held (keys a tombstone deleted, with the
    /// version it deleted, so that a late older record stays stale). Beyond
    /// it the oldest marker is evicted, and a very late older record of
    /// that key would be applied again. At least 1.
    pub deletion_markers_max: usize,
}

/// The largest producer linger librdkafka accepts (`linger.ms`).
pub const MAX_LINGER_MS: u64 = 900_000;

impl EngineConfig {
    /// The worker threads to run: `workers`, or one per core when it is 0.
    pub fn effective_workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(64),
            n => n,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            delivery: DeliveryMode::AtLeastOnce,
            transaction_max_messages: 10_000,
            transaction_max_ms: 100,
            staleness_bound_secs: 300,
            instance_id: String::new(),
            workers: 0,
            producer_queue_max_messages: 100_000,
            producer_linger_ms: 5,
            reply_linger_ms: 1,
            commit_interval_ms: 1000,
            shutdown_timeout_ms: 10_000,
            deadletter_max_payload_bytes: 64 * 1024,
            max_input_bytes: 256 * 1024,
            snapshot_path: None,
            snapshot_interval_secs: 60,
            feed_catchup_timeout_secs: 0,
            deletion_markers_max: crate::eligibility::DEFAULT_DELETION_MARKERS_MAX,
        }
    }
}

/// The admin HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; loopback by default. Port 0 picks a free port.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// The policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Policy file. Empty: the example policy shipped with clearance.
    pub file: Option<PathBuf>,
    /// Public keys (base64 ed25519) whose signatures the engine accepts on
    /// published policies. When any is listed, an unsigned, tampered or
    /// otherwise-signed policy on the policy topic is rejected and the
    /// previous one stays. Two keys at once allow a rotation. From the
    /// environment: a comma-separated list.
    #[serde(deserialize_with = "list_or_csv")]
    pub trusted_keys: Vec<String>,
    /// A candidate policy evaluated beside the active one on live traffic
    /// (shadow mode). Decisions use only the active policy; each difference
    /// goes to `topics.shadow` and `clearance_shadow_differences_total`.
    pub shadow_file: Option<PathBuf>,
}

/// A list, or a comma-separated string (how an environment variable gives
/// one).
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(l) => l,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path (`engine.workers`).
    pub field: String,
    /// Where the value came from (file path, env var, default).
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.field, self.origin, self.message)
    }
}

/// Configuration could not be loaded. Never retryable: fix the input.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// One or more fields are invalid; all of them are listed.
    #[error("invalid configuration ({} error(s)):\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<FieldError>),
}

const SECTIONS: &[&str] = &["kafka", "topics", "engine", "admin", "policy"];
const ENV_PREFIX: &str = "CLEARANCE_";

/// Load the configuration: defaults, then `file` (if any), then the
/// `CLEARANCE_*` variables of `env`.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut root = toml::Table::new();
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    let mut errors = Vec::new();

    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        root = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        for (section, value) in &root {
            if let toml::Value::Table(t) = value {
                for k in t.keys() {
                    origins.insert(format!("{section}.{k}"), path.display().to_string());
                }
            }
            origins.insert(section.clone(), path.display().to_string());
        }
    }

    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, field)) = rest.split_once("__") else {
            errors.push(FieldError {
                field: rest.to_lowercase(),
                origin: name.clone(),
                message: "expected CLEARANCE_<SECTION>__<FIELD>".into(),
            });
            continue;
        };
        let (section, field) = (section.to_lowercase(), field.to_lowercase());
        let value = parse_env_value(&raw);
        let entry = root
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                // Nested maps (kafka.properties) use a further `__`.
                if let Some((map, key)) = field.split_once("__") {
                    let sub = t
                        .entry(map.to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(st) = sub {
                        // librdkafka property names use dots.
                        st.insert(key.replace('_', "."), toml::Value::String(raw.clone()));
                    }
                    origins.insert(format!("{section}.{map}"), name.clone());
                    origins.insert(
                        format!("{section}.{map}.{}", key.replace('_', ".")),
                        name.clone(),
                    );
                } else {
                    t.insert(field.clone(), value);
                    origins.insert(format!("{section}.{field}"), name.clone());
                }
            }
            _ => errors.push(FieldError {
                field: section.clone(),
                origin: name.clone(),
                message: "is not a section".into(),
            }),
        }
    }

    // The origin of a field, else of its nearest parent (a key of
    // kafka.properties set in the file has the map's origin).
    let origin_of = |path: &str| {
        let mut p = path;
        loop {
            if let Some(o) = origins.get(p) {
                return o.clone();
            }
            match p.rsplit_once('.') {
                Some((parent, _)) => p = parent,
                None => return "default".into(),
            }
        }
    };

    // Check each field on its own, so that every error is reported.
    let mut cfg = Config::default();
    for (section, value) in &root {
        if !SECTIONS.contains(&section.as_str()) {
            errors.push(FieldError {
                field: section.clone(),
                origin: origin_of(section),
                message: format!("unknown section; expected one of {}", SECTIONS.join(", ")),
            });
            continue;
        }
        let toml::Value::Table(table) = value else {
            errors.push(FieldError {
                field: section.clone(),
                origin: origin_of(section),
                message: "must be a table".into(),
            });
            continue;
        };
        match section.as_str() {
            "kafka" => cfg.kafka = section_fields(section, table, &origin_of, &mut errors),
            "topics" => cfg.topics = section_fields(section, table, &origin_of, &mut errors),
            "engine" => cfg.engine = section_fields(section, table, &origin_of, &mut errors),
            "admin" => cfg.admin = section_fields(section, table, &origin_of, &mut errors),
            "policy" => cfg.policy = section_fields(section, table, &origin_of, &mut errors),
            _ => unreachable!("checked against SECTIONS"),
        }
    }

    validate(&cfg, &origin_of, &mut errors);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

/// Deserialize a section field by field: each invalid or unknown field adds
/// an error, and the valid ones are kept.
fn section_fields<T: DeserializeOwned + Default + Serialize>(
    section: &str,
    table: &toml::Table,
    origin_of: &impl Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> T {
    let mut good = toml::Table::new();
    for (k, v) in table {
        let mut one = toml::Table::new();
        one.insert(k.clone(), v.clone());
        match T::deserialize(toml::Value::Table(one)) {
            Ok(_) => {
                good.insert(k.clone(), v.clone());
            }
            Err(e) => {
                let path = format!("{section}.{k}");
                errors.push(FieldError {
                    origin: origin_of(&path),
                    field: path,
                    message: e.message().trim().to_string(),
                });
            }
        }
    }
    T::deserialize(toml::Value::Table(good)).unwrap_or_default()
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Numbers and booleans as such; everything else as a string.
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    toml::Value::String(raw.to_string())
}

fn validate(cfg: &Config, origin_of: &impl Fn(&str) -> String, errors: &mut Vec<FieldError>) {
    let mut bad = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            origin: origin_of(field),
            message,
        })
    };
    if cfg.kafka.bootstrap_servers.trim().is_empty() {
        bad("kafka.bootstrap_servers", "must not be empty".into());
    }
    if cfg.kafka.group_id.trim().is_empty() {
        bad("kafka.group_id", "must not be empty".into());
    }
    for (key, message) in refused_properties(&cfg.kafka.properties) {
        bad(&format!("kafka.properties.{key}"), message);
    }
    for (name, topic) in [
        ("topics.requests", &cfg.topics.requests),
        ("topics.eligibility", &cfg.topics.eligibility),
        ("topics.decisions", &cfg.topics.decisions),
        ("topics.deadletter", &cfg.topics.deadletter),
        ("topics.policy", &cfg.topics.policy),
        ("topics.shadow", &cfg.topics.shadow),
    ] {
        if topic.is_empty()
            || topic.len() > 249
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            bad(name, format!("{topic:?} is not a valid Kafka topic name"));
        }
    }
    if cfg.topics.partitions < 1 {
        bad("topics.partitions", "must be at least 1".into());
    }
    if cfg.topics.replication_factor < 1 {
        bad("topics.replication_factor", "must be at least 1".into());
    }
    if cfg.engine.workers > 64 {
        bad(
            "engine.workers",
            "must be between 1 and 64, or 0 for one per core".into(),
        );
    }
    if cfg.engine.producer_queue_max_messages < 1 {
        bad(
            "engine.producer_queue_max_messages",
            "must be at least 1".into(),
        );
    }
    // librdkafka's range for linger.ms: a larger value would fail at
    // client creation, after the configuration was accepted.
    for (field, v) in [
        ("engine.producer_linger_ms", cfg.engine.producer_linger_ms),
        ("engine.reply_linger_ms", cfg.engine.reply_linger_ms),
    ] {
        if v > MAX_LINGER_MS {
            bad(
                field,
                format!("must be at most {MAX_LINGER_MS} (librdkafka's linger.ms range)"),
            );
        }
    }
    if cfg.engine.transaction_max_messages < 1 {
        bad(
            "engine.transaction_max_messages",
            "must be at least 1".into(),
        );
    }
    if cfg.engine.transaction_max_ms < 1 {
        bad("engine.transaction_max_ms", "must be at least 1".into());
    }
    // A transaction open longer than transaction.timeout.ms is aborted by
    // the broker: keep the collecting time within half of it, the rest
    // for the commit.
    let txn_timeout_ms = cfg
        .kafka
        .properties
        .get("transaction.timeout.ms")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(TRANSACTION_TIMEOUT_MS);
    if cfg.engine.delivery == DeliveryMode::ExactlyOnce
        && cfg.engine.transaction_max_ms > txn_timeout_ms / 2
    {
        bad(
            "engine.transaction_max_ms",
            format!(
                "must be at most {} (half of transaction.timeout.ms, {txn_timeout_ms}): a longer transaction would be aborted by the broker",
                txn_timeout_ms / 2
            ),
        );
    }
    if cfg.engine.commit_interval_ms < 1 {
        bad("engine.commit_interval_ms", "must be at least 1".into());
    }
    if cfg.engine.snapshot_interval_secs < 1 {
        bad("engine.snapshot_interval_secs", "must be at least 1".into());
    }
    if cfg.engine.deletion_markers_max < 1 {
        bad(
            "engine.deletion_markers_max",
            "must be at least 1 (a deleted record could come back without markers)".into(),
        );
    }
    if cfg.engine.max_input_bytes < 256 {
        bad("engine.max_input_bytes", "must be at least 256".into());
    }
    if cfg.engine.deadletter_max_payload_bytes < 16 {
        bad(
            "engine.deadletter_max_payload_bytes",
            "must be at least 16".into(),
        );
    }
    if let Err(keys) = crate::policy::signing::TrustedKeys::parse(&cfg.policy.trusted_keys) {
        for e in keys {
            bad("policy.trusted_keys", e.to_string());
        }
    }
    if cfg.admin.listen.parse::<SocketAddr>().is_err() {
        bad(
            "admin.listen",
            format!(
                "{:?} is not an address like 127.0.0.1:9464",
                cfg.admin.listen
            ),
        );
    }
    if let Some(p) = &cfg.policy.file {
        if !p.is_file() {
            bad("policy.file", format!("{} does not exist", p.display()));
        }
    }
}

// The librdkafka settings an operator cannot override (the rule itself,
// applied to every client, is `kafka::layered`).

/// A setting the engine's correctness depends on: clearance sets it (for
/// the clients that need it) and refuses it in `kafka.properties`.
#[derive(Debug, Clone, Copy)]
pub struct Protected {
    /// The librdkafka property.
    pub key: &'static str,
    /// Why it cannot be overridden (shown in the configuration error).
    pub why: &'static str,
}

/// The settings an operator cannot override through `kafka.properties`
/// (config validation refuses them, naming the reason). Every other
/// librdkafka property is the operator's: it wins over clearance's
/// defaults, for every client.
pub const PROTECTED: &[Protected] = &[
    Protected {
        key: "bootstrap.servers",
        why: "set it with kafka.bootstrap_servers (kafka.feed_bootstrap_servers for the change feed)",
    },
    Protected {
        key: "client.id",
        why: "set its prefix with kafka.client_id",
    },
    Protected {
        key: "group.id",
        why: "set it with kafka.group_id (the change feed and the policy watcher derive theirs)",
    },
    Protected {
        key: "group.instance.id",
        why: "derived from engine.instance_id and the worker (static membership)",
    },
    Protected {
        key: "enable.auto.offset.store",
        why: "an offset is stored only after its decision is delivered (false)",
    },
    Protected {
        key: "enable.auto.commit",
        why: "clearance commits the offsets it stored itself (at-least-once), in the transaction (exactly-once), or never (change feed, policy watcher)",
    },
    Protected {
        key: "auto.offset.reset",
        why: "earliest: a new group or a lost position must not skip requests, change-feed records or policies",
    },
    Protected {
        key: "isolation.level",
        why: "read_committed: aborted transactions are never decided",
    },
    Protected {
        key: "enable.partition.eof",
        why: "the change feed and the policy watcher detect that they caught up by it",
    },
    Protected {
        key: "transactional.id",
        why: "derived from kafka.group_id, engine.instance_id and the worker, so that a restart fences its killed predecessor",
    },
    Protected {
        key: "enable.idempotence",
        why: "decisions are produced once and in order per partition (true; replies, which are notifications, are not idempotent)",
    },
    Protected {
        key: "acks",
        why: "a delivery is confirmed only once every in-sync replica has the record (all; replies: 1)",
    },
];

/// The protected setting named `key`, if it is one.
pub fn protected(key: &str) -> Option<&'static Protected> {
    PROTECTED.iter().find(|p| p.key == key.trim())
}

/// Config validation: every protected key in `properties`, with the
/// message to show (`kafka.properties."KEY": ...`).
pub fn refused_properties(
    properties: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    properties
        .keys()
        .filter_map(|key| {
            protected(key).map(|p| {
                (
                    key.clone(),
                    format!(
                        "{key:?} is set by clearance and cannot be overridden: {}",
                        p.why
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.admin.listen, "127.0.0.1:9464");
    }

    #[test]
    fn file_then_env_layering() {
        let dir = std::env::temp_dir().join(format!("clearance-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[kafka]\nbootstrap_servers = \"file:1\"\ngroup_id = \"g\"\n[engine]\nworkers = 2\n",
        )
        .unwrap();
        let c = load(
            Some(&f),
            env(&[
                ("CLEARANCE_KAFKA__BOOTSTRAP_SERVERS", "env:2"),
                ("CLEARANCE_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SSL"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "env:2");
        assert_eq!(c.kafka.group_id, "g");
        assert_eq!(c.engine.workers, 2);
        assert_eq!(c.kafka.properties["security.protocol"], "SSL");
    }

    #[test]
    fn deletion_markers_max_defaults_layers_and_rejects_zero() {
        assert_eq!(Config::default().engine.deletion_markers_max, 1_000_000);
        let c = load(
            None,
            env(&[("CLEARANCE_ENGINE__DELETION_MARKERS_MAX", "5000")]),
        )
        .unwrap();
        assert_eq!(c.engine.deletion_markers_max, 5000);
        let err = load(
            None,
            env(&[("CLEARANCE_ENGINE__DELETION_MARKERS_MAX", "0")]),
        )
        .unwrap_err();
        let ConfigError::Invalid(errs) = err else {
            panic!("expected Invalid, got {err}")
        };
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "engine.deletion_markers_max");
        assert_eq!(errs[0].origin, "CLEARANCE_ENGINE__DELETION_MARKERS_MAX");
    }

    #[test]
    fn protected_kafka_properties_are_refused_with_the_reason() {
        let err = load(
            None,
            env(&[
                (
                    "CLEARANCE_KAFKA__PROPERTIES__ENABLE_AUTO_OFFSET_STORE",
                    "true",
                ),
                ("CLEARANCE_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SSL"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kafka.properties"), "{err}");
        assert!(
            err.contains("\"enable.auto.offset.store\" is set by clearance"),
            "{err}"
        );
        assert!(
            err.contains("CLEARANCE_KAFKA__PROPERTIES__ENABLE_AUTO_OFFSET_STORE"),
            "{err}"
        );
        assert!(!err.contains("security.protocol"), "{err}");
    }

    #[test]
    fn workers_default_to_one_per_core() {
        let mut e = EngineConfig::default();
        assert_eq!(e.workers, 0);
        let cores = std::thread::available_parallelism().unwrap().get().min(64);
        assert_eq!(e.effective_workers(), cores);
        e.workers = 3;
        assert_eq!(e.effective_workers(), 3);
        let mut c = Config::default();
        c.engine.workers = 65;
        let mut errors = Vec::new();
        validate(&c, &|_: &str| String::new(), &mut errors);
        assert!(
            errors.iter().any(|e| e.field == "engine.workers"),
            "{errors:?}"
        );
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let dir = std::env::temp_dir().join(format!("clearance-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[engine]\nworkers = \"many\"\nbogus_ms = 3\n[admin]\nlisten = \"nowhere\"\n[nope]\nx = 1\n",
        )
        .unwrap();
        let err = load(Some(&f), env(&[("CLEARANCE_TOPICS__PARTITIONS", "0")])).unwrap_err();
        let ConfigError::Invalid(errs) = err else {
            panic!("expected Invalid, got {err}")
        };
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "engine.workers",
            "engine.bogus_ms",
            "admin.listen",
            "nope",
            "topics.partitions",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        let partitions = errs
            .iter()
            .find(|e| e.field == "topics.partitions")
            .unwrap();
        assert_eq!(partitions.origin, "CLEARANCE_TOPICS__PARTITIONS");
    }

    #[test]
    fn exactly_once_transactions_stay_within_half_the_transaction_timeout() {
        let vars = |ms: &str, timeout: Option<&str>| {
            let mut v = vec![
                ("CLEARANCE_ENGINE__DELIVERY", "exactly-once".to_string()),
                ("CLEARANCE_ENGINE__TRANSACTION_MAX_MS", ms.to_string()),
            ];
            if let Some(t) = timeout {
                v.push((
                    "CLEARANCE_KAFKA__PROPERTIES__TRANSACTION_TIMEOUT_MS",
                    t.to_string(),
                ));
            }
            v
        };
        let run = |v: Vec<(&str, String)>| {
            let v: Vec<(&str, &str)> = v.iter().map(|(k, x)| (*k, x.as_str())).collect();
            load(None, env(&v))
        };
        assert!(run(vars("2500", None)).is_ok());
        let err = run(vars("2501", None)).unwrap_err();
        let ConfigError::Invalid(errs) = err else {
            panic!("expected Invalid, got {err}")
        };
        assert_eq!(errs[0].field, "engine.transaction_max_ms");
        assert!(
            errs[0].message.contains("at most 2500"),
            "{}",
            errs[0].message
        );
        // The operator's transaction.timeout.ms moves the bound.
        assert!(run(vars("4000", Some("9000"))).is_ok());
        // At-least-once has no transactions: no bound.
        assert!(load(
            None,
            env(&[("CLEARANCE_ENGINE__TRANSACTION_MAX_MS", "60000")])
        )
        .is_ok());
    }

    #[test]
    fn lingers_beyond_librdkafkas_range_are_refused_both_at_once() {
        assert!(load(
            None,
            env(&[
                ("CLEARANCE_ENGINE__PRODUCER_LINGER_MS", "900000"),
                ("CLEARANCE_ENGINE__REPLY_LINGER_MS", "0"),
            ])
        )
        .is_ok());
        let err = load(
            None,
            env(&[
                ("CLEARANCE_ENGINE__PRODUCER_LINGER_MS", "900001"),
                ("CLEARANCE_ENGINE__REPLY_LINGER_MS", "1000000"),
            ]),
        )
        .unwrap_err();
        let ConfigError::Invalid(errs) = err else {
            panic!("expected Invalid, got {err}")
        };
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["engine.producer_linger_ms", "engine.reply_linger_ms"]
        );
        assert!(
            errs[1].message.contains("at most 900000"),
            "{}",
            errs[1].message
        );
    }
}
