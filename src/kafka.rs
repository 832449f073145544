//! Kafka client configuration and topic administration. No business logic.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{Config, KafkaConfig, TopicsConfig};

/// Whether retrying an operation can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// A transient condition (broker down, timeout, full queue): retry.
    Retryable,
    /// Retrying will not help (bad config, authorization, invalid topic).
    Fatal,
}

/// Errors at the Kafka boundary.
#[derive(Debug, thiserror::Error)]
pub enum KafkaBoundaryError {
    /// A client could not be created from the configuration.
    #[error("cannot create Kafka {what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// The cause.
        source: KafkaError,
    },
    /// Topic administration failed.
    #[error("topic {topic}: {message}")]
    Topic {
        /// The topic.
        topic: String,
        /// What failed.
        message: String,
        /// Whether a retry can help.
        hint: RetryHint,
    },
    /// Metadata or watermarks could not be fetched.
    #[error("cannot fetch metadata for {topic}: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The cause.
        source: KafkaError,
    },
    /// The brokers refused the credentials, or the TLS handshake failed
    /// (see [`AuthFailure`]). Fatal at startup.
    #[error("{0}")]
    Auth(AuthFailure),
}

impl KafkaBoundaryError {
    /// Whether retrying can help.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            KafkaBoundaryError::Client { .. } => RetryHint::Fatal,
            KafkaBoundaryError::Topic { hint, .. } => *hint,
            KafkaBoundaryError::Metadata { .. } => RetryHint::Retryable,
            KafkaBoundaryError::Auth(_) => RetryHint::Fatal,
        }
    }
}

/// Whether a librdkafka error code is worth retrying.
pub fn hint_for(code: RDKafkaErrorCode) -> RetryHint {
    use RDKafkaErrorCode::*;
    match code {
        TopicAuthorizationFailed
        | GroupAuthorizationFailed
        | ClusterAuthorizationFailed
        | InvalidConfig
        | InvalidTopic
        | MessageSizeTooLarge
        | InvalidRecord
        | UnsupportedVersion
        | InvalidPartitions
        | InvalidReplicationFactor
        | PolicyViolation => RetryHint::Fatal,
        _ => RetryHint::Retryable,
    }
}

/// The base client configuration: bootstrap servers, client id and the
/// operator's `kafka.properties` (security settings among them). For the
/// engine's own clients use the per-role functions below
/// ([`producer_config`], [`request_consumer_config`], ...), which apply the
/// one rule of [`layered`].
pub fn base_config(k: &KafkaConfig, client_suffix: &str) -> ClientConfig {
    layered(k, client_suffix, &[], &[])
}

pub use crate::config::{protected, refused_properties, Protected, PROTECTED};

/// Every clearance client's first default: Nagle's algorithm off. Kafka
/// requests are small writes; with Nagle on, a small produce or fetch
/// request can wait for the ACK of the previous segment, which delayed ACKs
/// hold back for up to 40 ms on Linux: measured here as a 40 ms median
/// round trip at 2,000 requests/s (BENCHMARKS.md, "Latency").
pub const CLIENT_DEFAULTS: &[(&str, &str)] = &[("socket.nagle.disable", "true")];

/// Defaults of every clearance consumer (request workers, the change feed,
/// tools that read whole topics), below the operator's `kafka.properties`.
///
/// `fetch.queue.backoff.ms`: once `queued.min.messages` (100,000) are
/// prefetched, librdkafka postpones the next fetch of that partition by
/// this long, 1,000 ms by default; a consumer that drains its queue faster
/// than that then idles, waiting for the backoff. Issue 12 reports, on the
/// 2-core machine, a pass-through pipe going from about 139,000 to 565,000
/// records/s with 20 ms, and the engine from 106,000 to 127,500
/// decisions/s; the drain benchmark's own trials on a loaded machine could
/// not tell 20 ms from the default apart (BENCHMARKS.md, "The batched
/// profile: what was tried"). Not for the request consumers in
/// exactly-once mode (see [`request_consumer_config`]).
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[("fetch.queue.backoff.ms", "20")];

fn consumer_defaults() -> impl Iterator<Item = (&'static str, String)> {
    CONSUMER_DEFAULTS.iter().map(|(k, v)| (*k, v.to_string()))
}

/// The one rule of client configuration, for every client:
/// [`CLIENT_DEFAULTS`], then clearance's `defaults` for that client, then the operator's `kafka.properties` (which win over
/// the defaults), then the `protected` settings (see [`PROTECTED`]). Config
/// validation refuses a protected setting in `kafka.properties`; one in a
/// configuration that was not validated is ignored with a warning.
pub fn layered(
    k: &KafkaConfig,
    client_suffix: &str,
    defaults: &[(&str, String)],
    protected: &[(&str, String)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (key, value) in CLIENT_DEFAULTS {
        c.set(*key, *value);
    }
    for (key, value) in defaults {
        c.set(*key, value);
    }
    for (key, value) in &k.properties {
        if self::protected(key).is_some() {
            // Refused by config validation; a configuration built in code
            // without it still never reaches a client with one.
            tracing::warn!(property = %key, "kafka.properties: protected setting ignored");
            continue;
        }
        c.set(key, value);
    }
    c.set("bootstrap.servers", &k.bootstrap_servers)
        .set("client.id", format!("{}-{}", k.client_id, client_suffix));
    for (key, value) in protected {
        c.set(*key, value);
    }
    c
}

/// Group settings of the request consumers, chosen by measurement (README,
/// "Crash recovery"): cooperative-sticky (only moved partitions are
/// revoked), the broker's minimum session timeout (6 s by default), a
/// 500 ms heartbeat (a survivor learns of a rebalance within it; run
/// alone, the exactly-once takeover of a crashed two-worker instance took
/// 6.3-8.0 s against its 8 s bound at 1 s, 6.4-7.2 s at 500 ms), and a
/// 30 s bound on a stuck rebalance.
pub const GROUP_DEFAULTS: &[(&str, &str)] = &[
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "500"),
    ("max.poll.interval.ms", "30000"),
];

pub use crate::config::TRANSACTION_TIMEOUT_MS;

/// The producer settings every engine producer shares (defaults), with
/// its linger.
fn producer_defaults(cfg: &Config, linger_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("linger.ms", linger_ms.to_string()),
        (
            "queue.buffering.max.messages",
            cfg.engine.producer_queue_max_messages.to_string(),
        ),
        ("compression.type", "lz4".into()),
    ]
}

fn producer_protected() -> Vec<(&'static str, String)> {
    vec![
        ("enable.idempotence", "true".into()),
        ("acks", "all".into()),
    ]
}

/// The engine's shared producer: idempotent, `acks=all`, and by default
/// no delivery time limit (`message.timeout.ms=0`: decisions wait for the
/// brokers rather than fail).
pub fn producer_config(cfg: &Config) -> ClientConfig {
    let mut d = producer_defaults(cfg, cfg.engine.producer_linger_ms);
    d.push(("message.timeout.ms", "0".into()));
    layered(&cfg.kafka, "producer", &d, &producer_protected())
}

/// The reply producer (request/reply in at-least-once mode): the engine's
/// producer settings with `engine.reply_linger_ms`, and a 10 s delivery
/// bound (`message.timeout.ms`): a reply is of use only within its
/// client's timeout, and one that cannot be delivered is counted
/// (`clearance_reply_failures_total`) rather than queued without end.
pub fn reply_producer_config(cfg: &Config) -> ClientConfig {
    let mut d = producer_defaults(cfg, cfg.engine.reply_linger_ms);
    d.push(("message.timeout.ms", REPLY_TIMEOUT_MS.to_string()));
    layered(
        &cfg.kafka,
        "reply",
        &d,
        &[("enable.idempotence", "false".into()), ("acks", "1".into())],
    )
}

/// The reply producer's delivery bound ([`reply_producer_config`]).
pub const REPLY_TIMEOUT_MS: u64 = 10_000;

/// The transactional producer of lane `lane` (0 or 1) of exactly-once
/// worker `worker`: a worker alternates two transactions, one committing
/// while the next is filled (`pipeline::exactly_once`). Its
/// `transactional.id` derives from the group, `instance_id`, the worker and
/// the lane: `<group>-<instance>-w<worker>` for lane 0 (the id a worker
/// had before it had lanes, so a restarted instance still fences an older
/// predecessor) and `...-w<worker>-b` for lane 1.
pub fn transactional_producer_config(
    cfg: &Config,
    instance_id: &str,
    worker: usize,
    lane: usize,
) -> ClientConfig {
    let mut d = producer_defaults(cfg, cfg.engine.producer_linger_ms);
    d.push(("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string()));
    let mut p = producer_protected();
    let lane = if lane == 0 { "" } else { "-b" };
    p.push((
        "transactional.id",
        format!("{}-{instance_id}-w{worker}{lane}", cfg.kafka.group_id),
    ));
    layered(&cfg.kafka, &format!("txn-{worker}{lane}"), &d, &p)
}

/// The consumer of request worker `worker`, in the group `kafka.group_id`.
/// With a configured (stable) `engine.instance_id` it is a static member
/// (`group.instance.id` = instance and worker), so that an instance
/// restarted after a crash takes its partitions back at once instead of
/// after the session timeout. With `group.protocol=consumer` (KIP-848) in
/// `kafka.properties`, the classic group settings are left to the broker.
pub fn request_consumer_config(cfg: &Config, worker: usize) -> ClientConfig {
    let k = &cfg.kafka;
    let kip848 = k
        .properties
        .get("group.protocol")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("consumer"));
    let mut d: Vec<(&str, String)> = vec![(
        "statistics.interval.ms",
        k.statistics_interval_ms.to_string(),
    )];
    // Not in exactly-once mode: there it made the pipeline collapse on
    // this machine (request/reply at 5,000 requests/s: 0 of 40,000
    // answered within 2 s, against 39,015 with librdkafka's 1,000 ms;
    // about a tenth of the transactions committed), for a reason not yet
    // understood (BENCHMARKS.md, "Exactly-once against at-least-once").
    // On 2026-12-02, on a fresh broker, the 1,000 ms default collapsed the
    // same way (0 of 40,000; BENCHMARKS.md, "Exactly-once commits"), so
    // this exception rests on one day's runs and may not be needed.
    if cfg.engine.delivery != crate::config::DeliveryMode::ExactlyOnce {
        d.extend(consumer_defaults());
    }
    if !kip848 {
        d.extend(GROUP_DEFAULTS.iter().map(|(k, v)| (*k, v.to_string())));
    }
    let mut p: Vec<(&str, String)> = vec![
        ("group.id", k.group_id.clone()),
        // The worker commits what it stored itself (promptly after an
        // assignment, then every engine.commit_interval_ms); exactly-once
        // commits in the transaction.
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("auto.offset.reset", "earliest".into()),
        ("isolation.level", "read_committed".into()),
    ];
    if !cfg.engine.instance_id.trim().is_empty() {
        p.push((
            "group.instance.id",
            format!("{}-w{worker}", cfg.engine.instance_id.trim()),
        ));
    }
    layered(k, &format!("worker-{worker}"), &d, &p)
}

/// The change-feed consumer: every partition assigned by hand, no group
/// commits, end-of-partition events; on `kafka.feed_bootstrap_servers` when
/// set.
pub fn feed_consumer_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut d = vec![(
        "statistics.interval.ms",
        k.statistics_interval_ms.to_string(),
    )];
    d.extend(consumer_defaults());
    let mut p: Vec<(&str, String)> = vec![
        ("group.id", format!("{}-feed-unused", k.group_id)),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("enable.partition.eof", "true".into()),
        ("auto.offset.reset", "earliest".into()),
    ];
    if let Some(b) = &k.feed_bootstrap_servers {
        p.push(("bootstrap.servers", b.clone()));
    }
    layered(k, "feed", &d, &p)
}

/// The policy watcher: the policy topic's partitions assigned by hand, no
/// commits, end-of-partition events.
pub fn policy_watcher_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let p: Vec<(&str, String)> = vec![
        ("group.id", format!("{}-policy-unused", k.group_id)),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("enable.partition.eof", "true".into()),
        ("auto.offset.reset", "earliest".into()),
    ];
    layered(k, "policy-watcher", &[], &p)
}

/// The policy publisher (`clearance policy publish`).
pub fn policy_publisher_config(cfg: &Config) -> ClientConfig {
    layered(&cfg.kafka, "policy-publisher", &[], &producer_protected())
}

/// A tool's reader of whole topics by manual assignment (the policy
/// history, `explain`, `replay`): a group id that never joins, no commits,
/// from the earliest offset.
pub fn reader_config(k: &KafkaConfig, client_suffix: &str) -> ClientConfig {
    let p: Vec<(&str, String)> = vec![
        ("group.id", format!("{}-{client_suffix}-unused", k.group_id)),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("auto.offset.reset", "earliest".into()),
    ];
    let d: Vec<(&str, String)> = consumer_defaults().collect();
    layered(k, client_suffix, &d, &p)
}

/// The admin client (topic creation).
pub fn admin_config(k: &KafkaConfig) -> ClientConfig {
    layered(k, "admin", &[], &[])
}

/// Whether a librdkafka property holds a secret (never printed or logged).
pub fn is_secret_key(k: &str) -> bool {
    ["password", "secret", "key", "token", "jaas"]
        .iter()
        .any(|s| k.contains(s))
}

/// Describe a client config for logs, with every secret-looking value
/// replaced by `***`.
pub fn redacted(c: &ClientConfig) -> String {
    let mut pairs: Vec<String> = c
        .config_map()
        .iter()
        .map(|(k, v)| format!("{k}={}", if is_secret_key(k) { "***" } else { v }))
        .collect();
    pairs.sort();
    pairs.join(" ")
}

/// How long a topic the brokers say does not exist is asked for again
/// before that is taken as final (metadata propagation after creation).
pub const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(10);

/// The partitions of `topic`, retried while the brokers are unreachable.
/// `Ok(None)` when `shutdown` is cancelled meanwhile; an error when the
/// topic does not exist, or when a client reported an authentication or
/// TLS failure ([`auth_failure`]).
pub fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<Vec<i32>>, KafkaBoundaryError> {
    use rdkafka::consumer::Consumer;
    // A topic created a moment ago may not be in every broker's metadata
    // yet: "unknown topic" is retried for a while before it is final.
    let unknown_until = std::time::Instant::now() + UNKNOWN_TOPIC_GRACE;
    loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => {
                let parts: Vec<i32> = md
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if parts.is_empty() && std::time::Instant::now() < unknown_until {
                    if shutdown.is_cancelled() {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                if parts.is_empty() {
                    return Err(KafkaBoundaryError::Topic {
                        topic: topic.to_string(),
                        message: "does not exist (run `clearance topics create`)".into(),
                        hint: RetryHint::Fatal,
                    });
                }
                return Ok(Some(parts));
            }
            Err(e) => {
                if shutdown.is_cancelled() {
                    return Ok(None);
                }
                if let Some(f) = auth_failure() {
                    return Err(KafkaBoundaryError::Auth(f));
                }
                tracing::warn!(%topic, error = %e, "metadata not available yet; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// A topic to create: `(name, partitions, configs)`.
pub type TopicSpec = (String, i32, Vec<(&'static str, &'static str)>);

/// The topics with their configs.
pub fn topic_specs(t: &TopicsConfig) -> Vec<TopicSpec> {
    vec![
        (t.requests.clone(), t.partitions, vec![]),
        (
            t.eligibility.clone(),
            t.partitions,
            vec![
                ("cleanup.policy", "compact"),
                ("min.compaction.lag.ms", "0"),
                ("segment.ms", "600000"),
            ],
        ),
        (t.decisions.clone(), t.partitions, vec![]),
        (t.deadletter.clone(), t.partitions.min(3), vec![]),
        (
            t.policy.clone(),
            1,
            vec![
                ("cleanup.policy", "compact"),
                ("min.compaction.lag.ms", "0"),
            ],
        ),
        (t.shadow.clone(), t.partitions.min(3), vec![]),
    ]
}

/// Create every missing topic; existing topics are left alone.
/// Returns the names created.
pub async fn create_topics(
    k: &KafkaConfig,
    t: &TopicsConfig,
) -> Result<Vec<String>, KafkaBoundaryError> {
    let admin: AdminClient<DefaultClientContext> =
        admin_config(k)
            .create()
            .map_err(|source| KafkaBoundaryError::Client {
                what: "admin client",
                source,
            })?;
    let specs = topic_specs(t);
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(name, parts, cfgs)| {
            let mut nt = NewTopic::new(name, *parts, TopicReplication::Fixed(t.replication_factor));
            for (ck, cv) in cfgs {
                nt = nt.set(ck, cv);
            }
            nt
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|e| KafkaBoundaryError::Topic {
                topic: specs
                    .iter()
                    .map(|s| s.0.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                message: e.to_string(),
                hint: RetryHint::Retryable,
            })?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaBoundaryError::Topic {
                    topic: name,
                    message: code.to_string(),
                    hint: hint_for(code),
                })
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let mut k = KafkaConfig::default();
        k.properties
            .insert("sasl.password".into(), "hunter2".into());
        k.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let s = redacted(&base_config(&k, "x"));
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("security.protocol=SASL_SSL"));
        assert!(s.contains("sasl.password=***"));
    }

    fn get<'a>(c: &'a ClientConfig, key: &str) -> Option<&'a str> {
        c.get(key)
    }

    /// Every client of every role, with `cfg`.
    fn every_role(cfg: &Config) -> Vec<(&'static str, ClientConfig)> {
        vec![
            ("admin", admin_config(&cfg.kafka)),
            ("producer", producer_config(cfg)),
            (
                "transactional producer",
                transactional_producer_config(cfg, "i", 0, 0),
            ),
            ("reply producer", reply_producer_config(cfg)),
            ("request consumer", request_consumer_config(cfg, 0)),
            ("feed consumer", feed_consumer_config(cfg)),
            ("policy watcher", policy_watcher_config(cfg)),
            ("policy publisher", policy_publisher_config(cfg)),
        ]
    }

    #[test]
    fn operator_properties_reach_every_client_and_win_over_defaults() {
        let mut cfg = Config::default();
        let props = [
            ("security.protocol", "SASL_SSL"),
            // Defaults clearance sets for some roles: the operator wins.
            ("linger.ms", "42"),
            ("compression.type", "zstd"),
            ("message.timeout.ms", "120000"),
            ("transaction.timeout.ms", "9000"),
            ("session.timeout.ms", "7000"),
            ("partition.assignment.strategy", "range"),
            ("statistics.interval.ms", "5000"),
            ("fetch.queue.backoff.ms", "1000"),
        ];
        for (k, v) in props {
            cfg.kafka.properties.insert(k.into(), v.into());
        }
        for (role, c) in every_role(&cfg) {
            for (k, v) in props {
                assert_eq!(get(&c, k), Some(v), "{role}: {k}");
            }
        }
    }

    #[test]
    fn replies_and_the_decision_log_have_their_own_linger() {
        let mut cfg = Config::default();
        assert_eq!(get(&producer_config(&cfg), "linger.ms"), Some("5"));
        assert_eq!(get(&reply_producer_config(&cfg), "linger.ms"), Some("1"));
        cfg.engine.producer_linger_ms = 20;
        cfg.engine.reply_linger_ms = 0;
        assert_eq!(get(&producer_config(&cfg), "linger.ms"), Some("20"));
        assert_eq!(get(&reply_producer_config(&cfg), "linger.ms"), Some("0"));
        assert_eq!(
            get(&transactional_producer_config(&cfg, "i", 0, 0), "linger.ms"),
            Some("20"),
            "exactly-once: one producer, the log's linger"
        );
        let reply = reply_producer_config(&cfg);
        assert_eq!(get(&reply, "message.timeout.ms"), Some("10000"));
        assert_eq!(get(&reply, "client.id"), Some("clearance-reply"));
        assert_eq!(get(&producer_config(&cfg), "message.timeout.ms"), Some("0"));
    }

    #[test]
    fn consumers_do_not_idle_a_second_after_a_full_prefetch_queue() {
        let cfg = Config::default();
        for c in [
            request_consumer_config(&cfg, 0),
            feed_consumer_config(&cfg),
            reader_config(&cfg.kafka, "replay"),
        ] {
            assert_eq!(get(&c, "fetch.queue.backoff.ms"), Some("20"));
        }
        let mut eos = Config::default();
        eos.engine.delivery = crate::config::DeliveryMode::ExactlyOnce;
        assert_eq!(
            get(&request_consumer_config(&eos, 0), "fetch.queue.backoff.ms"),
            None,
            "exactly-once keeps librdkafka's default"
        );
        assert_eq!(
            get(&feed_consumer_config(&eos), "fetch.queue.backoff.ms"),
            Some("20")
        );
    }

    #[test]
    fn protected_settings_are_clearances_for_every_role() {
        let mut cfg = Config::default();
        cfg.engine.instance_id = "east-1".into();
        for p in PROTECTED {
            cfg.kafka.properties.insert(p.key.into(), "operator".into());
        }
        for (role, c) in every_role(&cfg) {
            for p in PROTECTED {
                assert_ne!(get(&c, p.key), Some("operator"), "{role}: {}", p.key);
            }
        }
        let roles = every_role(&cfg);
        let of = |r: &str| &roles.iter().find(|(n, _)| *n == r).unwrap().1;
        let rc = of("request consumer");
        assert_eq!(get(rc, "enable.auto.offset.store"), Some("false"));
        assert_eq!(get(rc, "enable.auto.commit"), Some("false"));
        assert_eq!(get(rc, "isolation.level"), Some("read_committed"));
        assert_eq!(get(rc, "group.id"), Some("clearance"));
        assert_eq!(get(rc, "group.instance.id"), Some("east-1-w0"));
        assert_eq!(
            get(of("transactional producer"), "transactional.id"),
            Some("clearance-i-w0")
        );
        for r in ["feed consumer", "policy watcher"] {
            assert_eq!(get(of(r), "enable.auto.commit"), Some("false"), "{r}");
            assert_eq!(get(of(r), "enable.partition.eof"), Some("true"), "{r}");
        }
        for r in ["producer", "transactional producer", "policy publisher"] {
            assert_eq!(get(of(r), "acks"), Some("all"), "{r}");
            assert_eq!(get(of(r), "enable.idempotence"), Some("true"), "{r}");
        }
        // Replies are notifications (the decision log is the evidence):
        // neither idempotent (an idempotent reply producer collapsed under
        // load: BENCHMARKS.md, "Where the tail comes from") nor waiting
        // for every replica.
        let reply = of("reply producer");
        assert_eq!(get(reply, "acks"), Some("1"));
        assert_eq!(get(reply, "enable.idempotence"), Some("false"));
        // And config validation refuses each of them, saying why.
        let refused = refused_properties(&cfg.kafka.properties);
        assert_eq!(refused.len(), PROTECTED.len());
        assert!(refused
            .iter()
            .any(|(k, m)| k == "enable.auto.offset.store" && m.contains("cannot be overridden")));
    }

    #[test]
    fn group_defaults_and_static_membership() {
        let mut cfg = Config::default();
        let c = request_consumer_config(&cfg, 1);
        assert_eq!(
            get(&c, "partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(get(&c, "session.timeout.ms"), Some("6000"));
        assert_eq!(get(&c, "heartbeat.interval.ms"), Some("500"));
        assert_eq!(get(&c, "max.poll.interval.ms"), Some("30000"));
        assert_eq!(
            get(&c, "group.instance.id"),
            None,
            "no stable instance id: dynamic"
        );
        cfg.engine.instance_id = "east-1".into();
        let c = request_consumer_config(&cfg, 1);
        assert_eq!(get(&c, "group.instance.id"), Some("east-1-w1"));
        // KIP-848: the broker owns the session and the assignment.
        cfg.kafka
            .properties
            .insert("group.protocol".into(), "consumer".into());
        let c = request_consumer_config(&cfg, 1);
        assert_eq!(get(&c, "session.timeout.ms"), None);
        assert_eq!(get(&c, "partition.assignment.strategy"), None);
        let t = transactional_producer_config(&Config::default(), "i", 0, 0);
        assert_eq!(get(&t, "transaction.timeout.ms"), Some("5000"));
    }

    #[test]
    fn each_lane_of_a_worker_has_its_own_transactional_id() {
        let cfg = Config::default();
        let id = |worker, lane| {
            get(
                &transactional_producer_config(&cfg, "east-1", worker, lane),
                "transactional.id",
            )
            .map(str::to_string)
        };
        let g = &cfg.kafka.group_id;
        // Lane 0 keeps the id of a worker without lanes, so a restart
        // after an upgrade still fences the predecessor's transactions.
        assert_eq!(id(0, 0), Some(format!("{g}-east-1-w0")));
        assert_eq!(id(0, 1), Some(format!("{g}-east-1-w0-b")));
        assert_eq!(id(1, 1), Some(format!("{g}-east-1-w1-b")));
        assert_ne!(
            get(
                &transactional_producer_config(&cfg, "east-1", 0, 0),
                "client.id"
            ),
            get(
                &transactional_producer_config(&cfg, "east-1", 0, 1),
                "client.id"
            ),
        );
    }

    #[test]
    fn eligibility_topic_is_compacted() {
        let specs = topic_specs(&TopicsConfig::default());
        let elig = specs.iter().find(|s| s.0 == "eligibility.changes").unwrap();
        assert!(elig.2.contains(&("cleanup.policy", "compact")));
    }
}

/// A consumer context for readers that ask for end-of-partition events
/// (`enable.partition.eof`): reaching the end is progress, not an error, so
/// it is not logged; every other client error is logged as a warning
/// (librdkafka retries them).
#[derive(Debug, Clone, Copy)]
pub struct EofAwareContext {
    /// Which client, for the log line.
    pub what: &'static str,
}

impl rdkafka::ClientContext for EofAwareContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            e => {
                report_client_error(self.what, &e, reason);
                tracing::warn!(client = self.what, error = %e, reason, "kafka client error")
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofAwareContext {}

/// What kind of failure a client reported in [`AuthFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailureKind {
    /// SASL: the brokers refused the credentials (wrong password, unknown
    /// or deleted user, wrong mechanism).
    Authentication,
    /// TLS: the brokers' certificate could not be verified against
    /// `ssl.ca.location` (or the host name did not match).
    CertificateVerify,
    /// Another TLS handshake failure.
    Tls,
}

impl AuthFailureKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailureKind::Authentication => "authentication",
            AuthFailureKind::CertificateVerify => "certificate",
            AuthFailureKind::Tls => "tls",
        }
    }
}

/// An authentication or TLS failure a Kafka client reported through its
/// error callback. Its message never holds a secret: librdkafka's reason
/// names the broker, the mechanism and the state, not the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// What failed.
    pub kind: AuthFailureKind,
    /// The client that saw it first (`producer`, `change feed`, ...).
    pub client: &'static str,
    /// librdkafka's reason.
    pub reason: String,
    /// When it was last reported.
    pub at: std::time::Instant,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            AuthFailureKind::Authentication => {
                "Kafka authentication failed (check sasl.username, sasl.password and sasl.mechanism)"
            }
            AuthFailureKind::CertificateVerify => {
                "Kafka TLS certificate verify failed (check ssl.ca.location and the brokers' host names)"
            }
            AuthFailureKind::Tls => "Kafka TLS handshake failed (check security.protocol and ssl.*)",
        };
        write!(f, "{what}; {} client: {}", self.client, self.reason)
    }
}

/// The last authentication or TLS failure any client of this process
/// reported, until [`auth_recovered`] or [`reset_auth_failures`]. Process
/// wide: the clients of one engine share one set of credentials, and
/// `clearance run` runs one engine per process.
static AUTH_FAILURE: std::sync::Mutex<Option<AuthFailure>> = std::sync::Mutex::new(None);

fn auth_slot() -> std::sync::MutexGuard<'static, Option<AuthFailure>> {
    AUTH_FAILURE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Classify a client error: an authentication or TLS failure is recorded
/// (see [`auth_failure`]), counted in
/// `clearance_kafka_auth_failures_total{client,kind}` and returned.
/// Every other error is left to the caller (librdkafka retries it).
pub fn report_client_error(
    client: &'static str,
    error: &KafkaError,
    reason: &str,
) -> Option<AuthFailureKind> {
    let code = match error {
        KafkaError::Global(code) => *code,
        _ => return None,
    };
    let kind = match code {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            AuthFailureKind::Authentication
        }
        RDKafkaErrorCode::SSL if reason.contains("certificate verify failed") => {
            AuthFailureKind::CertificateVerify
        }
        RDKafkaErrorCode::SSL => AuthFailureKind::Tls,
        _ => return None,
    };
    metrics::counter!(crate::metrics::KAFKA_AUTH_FAILURES_TOTAL, "client" => client, "kind" => kind.label())
        .increment(1);
    let mut slot = auth_slot();
    match slot.as_mut() {
        Some(f) if f.kind == kind => f.at = std::time::Instant::now(),
        _ => {
            *slot = Some(AuthFailure {
                kind,
                client,
                reason: reason.to_string(),
                at: std::time::Instant::now(),
            })
        }
    }
    Some(kind)
}

/// The recorded authentication or TLS failure, if any: fatal at startup,
/// unready afterwards.
pub fn auth_failure() -> Option<AuthFailure> {
    auth_slot().clone()
}

/// Forget a recorded failure once a client shows an authenticated broker
/// connection (a broker `UP` in its statistics) at least `quiet` after the
/// failure was last reported.
pub fn auth_recovered(quiet: Duration) {
    let mut slot = auth_slot();
    if slot.as_ref().is_some_and(|f| f.at.elapsed() >= quiet) {
        tracing::info!("kafka authentication works again");
        *slot = None;
    }
}

/// Forget any recorded failure (an engine starting).
pub fn reset_auth_failures() {
    *auth_slot() = None;
}

/// Resolves with the error once a failure is recorded (checked every 100 ms).
pub async fn auth_failed() -> KafkaBoundaryError {
    loop {
        if let Some(f) = auth_failure() {
            return KafkaBoundaryError::Auth(f);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    #[test]
    fn authentication_and_certificate_failures_are_classified() {
        let sasl = "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512";
        assert_eq!(
            report_client_error(
                "test",
                &KafkaError::Global(RDKafkaErrorCode::Authentication),
                sasl
            ),
            Some(AuthFailureKind::Authentication)
        );
        let f = auth_failure().expect("recorded");
        assert!(f.to_string().contains("authentication failed"), "{f}");
        reset_auth_failures();
        let tls = "ssl://127.0.0.1:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed";
        assert_eq!(
            report_client_error("test", &KafkaError::Global(RDKafkaErrorCode::SSL), tls),
            Some(AuthFailureKind::CertificateVerify)
        );
        assert!(auth_failure()
            .unwrap()
            .to_string()
            .contains("certificate verify failed"));
        auth_recovered(Duration::from_secs(3600));
        assert!(auth_failure().is_some(), "too soon to forget it");
        auth_recovered(Duration::ZERO);
        assert!(auth_failure().is_none());
        assert_eq!(
            report_client_error(
                "test",
                &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
                "down"
            ),
            None
        );
        assert!(auth_failure().is_none());
    }
}
