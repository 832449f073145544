//! Live policy rollout.
//!
//! `clearance policy publish FILE` validates a policy and publishes its text
//! to the compacted policy topic. Every engine instance watches that topic
//! ([`run`]): a valid policy is swapped in whole (decisions take one `Arc`
//! of the policy each, so none sees half of one); a policy whose
//! `effective_from` lies in the future is scheduled, not applied early; an
//! invalid one is rejected with a log line and a metric, and the previous
//! policy stays active.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::{base_config, EofAwareContext, KafkaBoundaryError};
use crate::metrics as m;
use crate::pipeline::ActivePolicy;
use crate::policy::{CompiledPolicy, PolicyError};

/// Errors of publishing or watching policies.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The policy is invalid (nothing was published).
    #[error("invalid policy: {0}")]
    Invalid(#[from] PolicyError),
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaBoundaryError),
    /// Publishing failed (retryable: the broker may be down).
    #[error("publishing failed: {0}")]
    Publish(KafkaError),
}

/// Where a published policy landed.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Policy id.
    pub id: String,
    /// Policy version.
    pub version: String,
    /// When it takes effect, if scheduled.
    pub effective_from: Option<String>,
    /// Partition and offset on the policy topic.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Validate `path` and publish it to the policy topic (key: the policy id).
pub async fn publish(cfg: &Config, path: &Path) -> Result<Published, RolloutError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    publish_text(cfg, &text, &path.display().to_string()).await
}

/// Validate `text` and publish it to the policy topic.
pub async fn publish_text(
    cfg: &Config,
    text: &str,
    source: &str,
) -> Result<Published, RolloutError> {
    let policy = CompiledPolicy::from_toml_str(text, source)?;
    let (partition, offset) = publish_unchecked(cfg, &policy.id, text.as_bytes()).await?;
    Ok(Published {
        id: policy.id.clone(),
        version: policy.version.clone(),
        effective_from: policy.effective_from.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
        partition,
        offset,
    })
}

/// Publish bytes to the policy topic without validating them (tests use it
/// to check that engines reject invalid policies).
pub async fn publish_unchecked(
    cfg: &Config,
    key: &str,
    bytes: &[u8],
) -> Result<(i32, i64), RolloutError> {
    let producer: FutureProducer = base_config(&cfg.kafka, "policy-publisher")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(|source| KafkaBoundaryError::Client {
            what: "policy publisher",
            source,
        })?;
    let delivery = producer
        .send(
            FutureRecord::to(&cfg.topics.policy).key(key).payload(bytes),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| RolloutError::Publish(e))?;
    Ok((delivery.partition, delivery.offset))
}

/// The rollout state, shared with the admin API.
#[derive(Debug, Default)]
pub struct RolloutState {
    ready: AtomicBool,
    inner: Mutex<RolloutInfo>,
}

/// What `/status` shows of the rollout.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RolloutInfo {
    /// Where the active policy came from.
    pub active_source: String,
    /// Activations since start.
    pub activations: u64,
    /// Rejected policies since start.
    pub rejected: u64,
    /// The last rejection's error.
    pub last_rejection: Option<String>,
    /// Scheduled policies: (effective_from, version).
    pub scheduled: Vec<(String, String)>,
    /// Next offset of the policy topic, per partition.
    pub positions: BTreeMap<i32, i64>,
}

impl RolloutState {
    /// Whether the policy topic has been read up to its startup end.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A copy of the state.
    pub fn info(&self) -> RolloutInfo {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RolloutInfo> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Make `p` the active policy, and say so in the metrics.
pub fn activate(active: &ActivePolicy, state: &RolloutState, p: CompiledPolicy, source: String) {
    let old = active.current();
    metrics::gauge!(m::POLICY_INFO, "policy_id" => old.id.clone(), "policy_version" => old.version.clone()).set(0.0);
    metrics::gauge!(m::POLICY_INFO, "policy_id" => p.id.clone(), "policy_version" => p.version.clone()).set(1.0);
    metrics::counter!(m::POLICY_ACTIVATIONS_TOTAL).increment(1);
    tracing::info!(policy_id = %p.id, policy_version = %p.version, %source, "policy activated");
    active.swap(p);
    let mut g = state.lock();
    g.activations += 1;
    g.active_source = source;
}

fn reject(state: &RolloutState, source: &str, e: &PolicyError) {
    metrics::counter!(m::POLICY_REJECTED_TOTAL).increment(1);
    tracing::error!(%source, error = %e, "published policy rejected; the previous policy stays active");
    let mut g = state.lock();
    g.rejected += 1;
    g.last_rejection = Some(format!("{source}: {e}"));
}

/// Watch the policy topic until `shutdown`. Blocking: run it on its own
/// thread. Ready once the topic has been read to its end as of startup.
pub fn run(
    cfg: &Config,
    active: Arc<ActivePolicy>,
    state: Arc<RolloutState>,
    shutdown: CancellationToken,
) -> Result<(), RolloutError> {
    let topic = cfg.topics.policy.clone();
    let consumer: BaseConsumer<EofAwareContext> = base_config(&cfg.kafka, "policy-watcher")
        .set("group.id", format!("{}-policy-unused", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(EofAwareContext {
            what: "policy watcher",
        })
        .map_err(|source| KafkaBoundaryError::Client {
            what: "policy watcher",
            source,
        })?;
    let Some(partitions) = crate::kafka::topic_partitions(&consumer, &topic, &shutdown)? else {
        return Ok(());
    };
    let mut targets = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(&topic, *p, Duration::from_secs(10))
            .map_err(|e| KafkaBoundaryError::Metadata {
                topic: topic.clone(),
                source: e,
            })?;
        targets.insert(*p, high);
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)
            .map_err(|source| KafkaBoundaryError::Client {
                what: "policy assignment",
                source,
            })?;
    }
    consumer
        .assign(&tpl)
        .map_err(|source| KafkaBoundaryError::Client {
            what: "policy assignment",
            source,
        })?;
    let mut caught: BTreeMap<i32, bool> = targets.iter().map(|(p, h)| (*p, *h == 0)).collect();
    let mut scheduled: Vec<(OffsetDateTime, CompiledPolicy, String)> = Vec::new();

    while !shutdown.is_cancelled() {
        if !state.is_ready() && caught.values().all(|c| *c) {
            state.ready.store(true, Ordering::Release);
            tracing::info!("policy topic caught up");
        }
        // Scheduled policies whose time has come, in time order.
        let now = OffsetDateTime::now_utc();
        scheduled.sort_by_key(|(t, _, _)| *t);
        while scheduled.first().is_some_and(|(t, _, _)| *t <= now) {
            let (_, p, src) = scheduled.remove(0);
            activate(&active, &state, p, src);
        }
        state.lock().scheduled = scheduled
            .iter()
            .map(|(t, p, _)| (t.to_string(), p.version.clone()))
            .collect();

        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                caught.insert(p, true);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "policy watcher: consumer error"),
            Some(Ok(msg)) => {
                let (p, off) = (msg.partition(), msg.offset());
                state.lock().positions.insert(p, off + 1);
                if targets.get(&p).is_some_and(|t| off + 1 >= *t) {
                    caught.insert(p, true);
                }
                let source = format!("{topic}[{p}]@{off}");
                let Some(bytes) = msg.payload() else {
                    continue; // a tombstone retires a policy id; the active one stays
                };
                let parsed = std::str::from_utf8(bytes)
                    .map_err(|e| PolicyError::Io {
                        path: source.clone(),
                        message: format!("not UTF-8: {e}"),
                    })
                    .and_then(|text| CompiledPolicy::from_toml_str(text, &source));
                match parsed {
                    Err(e) => reject(&state, &source, &e),
                    Ok(p) => match p.effective_from {
                        Some(t) if t > OffsetDateTime::now_utc() => {
                            tracing::info!(policy_version = %p.version, effective_from = %t, "policy scheduled");
                            metrics::counter!(m::POLICY_SCHEDULED_TOTAL).increment(1);
                            scheduled.push((t, p, source));
                        }
                        _ => activate(&active, &state, p, source),
                    },
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_swaps_whole_policy_and_counts() {
        let active = ActivePolicy::new(CompiledPolicy::example());
        let state = RolloutState::default();
        let mut p = CompiledPolicy::example();
        p.version = "next".into();
        let before = active.current();
        activate(&active, &state, p, "test".into());
        assert_eq!(
            before.version,
            CompiledPolicy::example().version,
            "old Arc unchanged"
        );
        assert_eq!(active.current().version, "next");
        assert_eq!(state.info().activations, 1);
        assert_eq!(state.info().active_source, "test");
    }

    #[test]
    fn rejection_is_recorded() {
        let state = RolloutState::default();
        let e = CompiledPolicy::from_toml_str("not = [valid", "x.toml").unwrap_err();
        reject(&state, "x.toml", &e);
        let info = state.info();
        assert_eq!(info.rejected, 1);
        assert!(info.last_rejection.unwrap().starts_with("x.toml"));
    }
}
