//! The dead-letter sink: bad input (a request or a change-feed record that
//! cannot be decoded) is published with its reason, original bytes and
//! source coordinates, never dropped. Used by the request pipeline and by
//! the change feed.

use std::sync::Arc;

use rdkafka::producer::BaseRecord;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::event::{salvage_request_id, DeadLetter, DecodeError, SourceCoordinates};
use crate::metrics as m;
use crate::pipeline::producer::{send_with_backpressure, Ack, EngineProducer, SendError};
use crate::pipeline::tracker::Tracker;

/// Which input a dead letter came from (a metric label).
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// `access.requests`.
    Requests,
    /// `eligibility.changes`.
    Eligibility,
}

/// Where a dead-lettered record was read from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<&'a [u8]>,
}

/// Publishes dead-letter records.
#[derive(Clone)]
pub struct DeadLetterSink {
    producer: EngineProducer,
    topic: String,
    max_payload_bytes: usize,
    shutdown: CancellationToken,
}

impl DeadLetterSink {
    /// A sink on `topic` through `producer`.
    pub fn new(
        producer: EngineProducer,
        topic: String,
        max_payload_bytes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            producer,
            topic,
            max_payload_bytes,
            shutdown,
        }
    }

    /// Build the dead-letter record for a payload.
    pub fn record(
        &self,
        error: &DecodeError,
        origin: &Origin<'_>,
        payload: &[u8],
        request_id: Option<String>,
    ) -> DeadLetter {
        let Origin {
            topic,
            partition,
            offset,
            key,
        } = *origin;
        use base64::Engine as _;
        let kept = &payload[..payload.len().min(self.max_payload_bytes)];
        DeadLetter {
            error_kind: error.kind().to_string(),
            error: error.to_string(),
            source: SourceCoordinates {
                topic: topic.to_string(),
                partition,
                offset,
            },
            key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(kept),
            payload_size: payload.len(),
            truncated: kept.len() < payload.len(),
            request_id,
            at: OffsetDateTime::now_utc(),
        }
    }

    /// Publish a dead letter (the tracker is told on delivery, when given).
    pub fn send(
        &self,
        source: Source,
        error: &DecodeError,
        origin: &Origin<'_>,
        payload: &[u8],
        tracker: Option<Arc<Tracker>>,
    ) -> Result<(), SendError> {
        let (topic, partition, offset) = (origin.topic, origin.partition, origin.offset);
        let src = match source {
            Source::Requests => "requests",
            Source::Eligibility => "eligibility",
        };
        metrics::counter!(m::DEADLETTERS_TOTAL, "source" => src, "error" => error.kind())
            .increment(1);
        let dl = self.record(error, origin, payload, salvage_request_id(payload));
        let body = serde_json::to_vec(&dl).map_err(|e| SendError::Encode(e.to_string()))?;
        let dl_key = format!("{topic}/{partition}/{offset}");
        let rec = BaseRecord::with_opaque_to(
            &self.topic,
            Box::new(Ack {
                tracker,
                partition,
                offset,
                reply: None,
            }),
        )
        .key(dl_key.as_bytes())
        .payload(body.as_slice());
        send_with_backpressure(&self.producer, rec, &self.shutdown)
    }
}

// ---------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------
