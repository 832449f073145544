//! Kafka client configuration and topic administration. No business logic.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{KafkaConfig, TopicsConfig};

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
}

impl KafkaBoundaryError {
    /// Whether retrying can help.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            KafkaBoundaryError::Client { .. } => RetryHint::Fatal,
            KafkaBoundaryError::Topic { hint, .. } => *hint,
            KafkaBoundaryError::Metadata { .. } => RetryHint::Retryable,
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

/// The base client configuration: bootstrap servers and the pass-through
/// properties (security settings among them).
pub fn base_config(k: &KafkaConfig, client_suffix: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers)
        .set("client.id", format!("{}-{}", k.client_id, client_suffix));
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
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
/// topic does not exist.
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
        base_config(k, "admin")
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
            e => tracing::warn!(client = self.what, error = %e, reason, "kafka client error"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofAwareContext {}
