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
    loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => {
                let parts: Vec<i32> = md
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
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
