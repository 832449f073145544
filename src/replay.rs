//! Replay of the decision log (`clearance replay`): decide again, from the
//! inputs each decision recorded, every decision of a window, and report
//! every difference.
//!
//! - **Fidelity** ([`Mode::Fidelity`]): each decision is decided again with
//!   the very policy text it names (`versions.policy_id`, `policy_version`,
//!   `policy_digest`, looked up in the [`PolicyHistory`]), from its recorded
//!   request, subject, organization and owner records (`inputs.owners` is the
//!   owner lookup), with `data_stale` set exactly when its reasons contain
//!   `stale_data`. Outcome, reasons, rule ids, legal bases, obligations and
//!   versions must all come out the same.
//! - **What-if** ([`Mode::WhatIf`]): each decision is decided again with a
//!   candidate policy; every decision whose outcome, reasons, rule ids,
//!   legal bases or obligations change is reported, and summarized
//!   ([`WhatIfSummary`]): by model, by old → new outcome, by reason, by
//!   derived country, by organization, with the subjects who lose access
//!   (allow → deny) and those who gain it (deny → allow).
//! - **No work** ([`Mode::NoWork`]): read the window and decode nothing, to
//!   measure the rate at which the decisions can be read at all.
//!
//! Input: a window of the decisions topic, by time ([`Window::Times`],
//! resolved with `offsets_for_times` on every partition, the end exclusive)
//! or by offsets ([`Window::Offsets`]), read by [`read_ranges`] (streaming)
//! or [`read_window`] (into memory); or a JSONL export ([`read_jsonl`]).
//! Records are decided by [`Replayer`] (one thread) or [`replay_source`]
//! (a reader and `jobs` deciding threads); each yields a [`Report`].
//!
//! Records that cannot be replayed are counted and listed, never skipped
//! silently ([`BadKind`]). Decisions of malformed requests (`inputs: null`,
//! reason `malformed_request`) are expected: they are counted apart, as not
//! replayable, and are not differences.
//!
//! Replay is pure computation on the recorded inputs ([`crate::decide`]),
//! like every other tool: no clock, no store, no eligibility feed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Config;
use crate::decide::{self, reason, Eligibility, Verdict};
use crate::event::{Decision, DecisionInputs, Outcome};
use crate::kafka::{base_config, EofAwareContext};
use crate::policy::{CompiledPolicy, HistoryMiss, PolicyHistory};

/// Errors of a replay (anything but a difference or a bad record).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A command-line argument is invalid.
    #[error("{0}")]
    Args(String),
    /// Kafka failed (the broker may be unreachable).
    #[error("kafka: {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The error.
        source: KafkaError,
    },
    /// The window could not be read to its end in time.
    #[error("topic {topic}: partitions {missing:?} not read to the end of the window in time")]
    Incomplete {
        /// The topic.
        topic: String,
        /// Partitions not read to their end.
        missing: Vec<i32>,
    },
    /// Reading the input or writing an output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> ReplayError {
    let what = what.into();
    move |source| ReplayError::Kafka { what, source }
}

// ---------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------

/// The offsets `[start, end)` of one partition of the decisions topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionRange {
    /// Partition.
    pub partition: i32,
    /// First offset of the window.
    pub start: i64,
    /// First offset after the window (exclusive).
    pub end: i64,
}

impl PartitionRange {
    /// Number of offsets in the range.
    pub fn len(&self) -> u64 {
        u64::try_from(self.end - self.start).unwrap_or(0)
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// A window of the decisions topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// Decisions whose record timestamp is at or after `from` and before
    /// `to` (the current end of the topic when `to` is `None`), found on
    /// every partition with `offsets_for_times`.
    Times {
        /// Start (inclusive).
        from: OffsetDateTime,
        /// End (exclusive); `None`: the current end.
        to: Option<OffsetDateTime>,
    },
    /// Explicit offsets, `[start, end)` per partition.
    Offsets(Vec<PartitionRange>),
}

/// Parse `P:START-END,...` (END exclusive) into ranges.
pub fn parse_offsets(s: &str) -> Result<Vec<PartitionRange>, ReplayError> {
    let bad = |item: &str, why: &str| {
        ReplayError::Args(format!(
            "--offsets: {item:?} {why} (expected P:START-END,..., END exclusive)"
        ))
    };
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (p, range) = item
            .split_once(':')
            .ok_or_else(|| bad(item, "has no ':'"))?;
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| bad(item, "has no '-'"))?;
        let partition: i32 = p.trim().parse().map_err(|_| bad(item, "bad partition"))?;
        let start: i64 = a.trim().parse().map_err(|_| bad(item, "bad start"))?;
        let end: i64 = b.trim().parse().map_err(|_| bad(item, "bad end"))?;
        if partition < 0 || start < 0 || end < start {
            return Err(bad(item, "is not a partition and a range START <= END"));
        }
        out.push(PartitionRange {
            partition,
            start,
            end,
        });
    }
    if out.is_empty() {
        return Err(ReplayError::Args("--offsets: no range given".into()));
    }
    Ok(out)
}

/// Parse an RFC 3339 time (`2026-11-03T14:00:00Z`).
pub fn parse_time(s: &str) -> Result<OffsetDateTime, ReplayError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| ReplayError::Args(format!("{s:?} is not an RFC 3339 time: {e}")))
}

const TIMEOUT: Duration = Duration::from_secs(10);

type Reader = BaseConsumer<EofAwareContext>;

fn consumer(cfg: &Config) -> Result<Reader, ReplayError> {
    let mut c = base_config(&cfg.kafka, "replay");
    // librdkafka postpones the next fetch of a partition by this much when
    // its local queue is over its thresholds (default 1000 ms): a reader
    // that decides as it reads fills the queue, and would then stand idle
    // most of the time. Configured properties win.
    if !cfg.kafka.properties.contains_key("fetch.queue.backoff.ms") {
        c.set("fetch.queue.backoff.ms", "10");
    }
    c.set("group.id", format!("{}-replay-unused", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create_with_context(EofAwareContext { what: "replay" })
        .map_err(kafka("replay consumer"))
}

fn partitions(c: &Reader, topic: &str) -> Result<Vec<i32>, ReplayError> {
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(kafka(format!("metadata of {topic}")))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| ReplayError::Args(format!("topic {topic} not found")))?;
    if let Some(e) = t.error() {
        return Err(ReplayError::Args(format!("topic {topic}: {e:?}")));
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if ps.is_empty() {
        return Err(ReplayError::Args(format!(
            "topic {topic} does not exist (no partitions)"
        )));
    }
    ps.sort_unstable();
    Ok(ps)
}

/// Check that the brokers answer and `topic` exists (a short timeout:
/// an unreachable broker is an error, not a wait).
pub fn probe(cfg: &Config, topic: &str) -> Result<(), ReplayError> {
    partitions(&consumer(cfg)?, topic).map(|_| ())
}

/// The ranges of `window` on the decisions topic of `cfg`: times resolved
/// with `offsets_for_times` on every partition; every range clamped to the
/// partition's current watermarks. A range start below the log start
/// (records deleted by retention) is reported in the returned notes.
pub fn resolve(
    cfg: &Config,
    window: &Window,
) -> Result<(Vec<PartitionRange>, Vec<String>), ReplayError> {
    let topic = &cfg.topics.decisions;
    let c = consumer(cfg)?;
    let parts = partitions(&c, topic)?;
    let mut marks = BTreeMap::new();
    for p in &parts {
        let wm = c
            .fetch_watermarks(topic, *p, TIMEOUT)
            .map_err(kafka(format!("watermarks of {topic}[{p}]")))?;
        marks.insert(*p, wm);
    }
    let at = |t: OffsetDateTime| -> Result<BTreeMap<i32, Option<i64>>, ReplayError> {
        let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| ReplayError::Args(format!("{t} is out of range")))?;
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ms))
                .map_err(kafka("offsets_for_times"))?;
        }
        let found = c
            .offsets_for_times(tpl, TIMEOUT)
            .map_err(kafka(format!("offsets_for_times on {topic}")))?;
        Ok(found
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), Some(o)),
                _ => (e.partition(), None), // no record at or after t
            })
            .collect())
    };
    let mut notes = Vec::new();
    let wanted: Vec<PartitionRange> = match window {
        Window::Times { from, to } => {
            let starts = at(*from)?;
            let ends = match to {
                Some(t) => Some(at(*t)?),
                None => None,
            };
            parts
                .iter()
                .map(|p| {
                    let high = marks[p].1;
                    let start = starts.get(p).copied().flatten().unwrap_or(high);
                    let end = ends
                        .as_ref()
                        .and_then(|e| e.get(p).copied().flatten())
                        .unwrap_or(high);
                    PartitionRange {
                        partition: *p,
                        start,
                        end,
                    }
                })
                .collect()
        }
        Window::Offsets(ranges) => {
            for r in ranges {
                if !marks.contains_key(&r.partition) {
                    return Err(ReplayError::Args(format!(
                        "--offsets: topic {topic} has no partition {}",
                        r.partition
                    )));
                }
            }
            ranges.clone()
        }
    };
    let mut out = Vec::new();
    for mut r in wanted {
        let (low, high) = marks[&r.partition];
        if r.start < low {
            notes.push(format!(
                "partition {}: offsets {}..{} are no longer on the broker (log start {low}: retention)",
                r.partition,
                r.start,
                low.min(r.end)
            ));
            r.start = low;
        }
        if r.end > high {
            notes.push(format!(
                "partition {}: the window ends at {}, past the end of the partition ({high})",
                r.partition, r.end
            ));
            r.end = high;
        }
        r.end = r.end.max(r.start);
        out.push(r);
    }
    Ok((out, notes))
}

/// Where a record of the window was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A Kafka record of the decisions topic.
    Kafka {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// Line of a JSONL export (1-based).
    Line(u64),
    /// Position in a list of decisions given to the library (0-based).
    Index(u64),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Kafka { partition, offset } => write!(f, "{partition}@{offset}"),
            Origin::Line(n) => write!(f, "line {n}"),
            Origin::Index(i) => write!(f, "#{i}"),
        }
    }
}

/// Read every record of `ranges` of the decisions topic, in offset order
/// within each partition, calling `f` with its origin and value (a record
/// without a value gets an empty slice). Returns when every range has been
/// read, or fails after `timeout` without progress.
pub fn read_ranges(
    cfg: &Config,
    ranges: &[PartitionRange],
    timeout: Duration,
    mut f: impl FnMut(Origin, &[u8]),
) -> Result<(), ReplayError> {
    let topic = &cfg.topics.decisions;
    let c = consumer(cfg)?;
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for r in ranges.iter().filter(|r| !r.is_empty()) {
        ends.insert(r.partition, r.end);
        tpl.add_partition_offset(topic, r.partition, Offset::Offset(r.start))
            .map_err(kafka("assignment"))?;
    }
    if ends.is_empty() {
        return Ok(());
    }
    c.assign(&tpl).map_err(kafka("assignment"))?;
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // The end of what can be read (with read_committed, the last
                // stable offset): nothing more of this partition is readable.
                if let Some(end) = ends.get(&p).copied() {
                    let pos = c
                        .position()
                        .ok()
                        .and_then(|tpl| tpl.find_partition(topic, p).map(|e| e.offset()));
                    if let Some(Offset::Offset(o)) = pos {
                        if o >= end {
                            ends.remove(&p);
                        }
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "replay: consumer error"),
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let (p, off) = (m.partition(), m.offset());
                let Some(end) = ends.get(&p).copied() else {
                    continue;
                };
                if off >= end {
                    ends.remove(&p);
                    continue;
                }
                f(
                    Origin::Kafka {
                        partition: p,
                        offset: off,
                    },
                    m.payload().unwrap_or_default(),
                );
                if off + 1 >= end {
                    ends.remove(&p);
                }
            }
        }
        if !ends.is_empty() && last_progress.elapsed() > timeout {
            return Err(ReplayError::Incomplete {
                topic: topic.clone(),
                missing: ends.keys().copied().collect(),
            });
        }
    }
    Ok(())
}

/// A record of the window, as read.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Where it was read.
    pub origin: Origin,
    /// Its value (a decision as JSON, if all is well).
    pub bytes: Vec<u8>,
}

impl RawRecord {
    /// Decode the decision.
    pub fn decode(&self) -> Result<Decision, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }
}

/// Read a whole window into memory (tests and small windows; the CLI
/// streams with [`read_ranges`]).
pub fn read_window(cfg: &Config, window: &Window) -> Result<Vec<RawRecord>, ReplayError> {
    let (ranges, _) = resolve(cfg, window)?;
    let mut out = Vec::with_capacity(ranges.iter().map(|r| r.len() as usize).sum());
    read_ranges(cfg, &ranges, Duration::from_secs(30), |origin, b| {
        out.push(RawRecord {
            origin,
            bytes: b.to_vec(),
        })
    })?;
    Ok(out)
}

/// Read a JSONL export (one decision per line; blank lines are ignored),
/// calling `f` with each line's number and bytes.
pub fn read_jsonl(
    mut input: impl BufRead,
    mut f: impl FnMut(Origin, &[u8]),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut line = 0u64;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        line += 1;
        let text = buf.trim_ascii();
        if !text.is_empty() {
            f(Origin::Line(line), text);
        }
    }
}

// ---------------------------------------------------------------------------
// Replaying
// ---------------------------------------------------------------------------

/// What to decide with.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Each decision with the policy text it recorded, from this history.
    Fidelity(Arc<PolicyHistory>),
    /// Each decision with this candidate policy.
    WhatIf(Arc<CompiledPolicy>),
    /// Read only: decode nothing, decide nothing (to measure reading).
    NoWork,
}

impl Mode {
    /// `"fidelity"`, `"what-if"` or `"no-work"`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Fidelity(_) => "fidelity",
            Mode::WhatIf(_) => "what-if",
            Mode::NoWork => "no-work",
        }
    }
}

/// Why a record of the window could not be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadKind {
    /// Not JSON, or not a decision.
    MalformedJson,
    /// A decision without inputs that is not a malformed-request deny.
    NoInputs,
    /// Its policy version is not in the policy history.
    PolicyMissing,
    /// Its policy version is in the history, but no text has its digest.
    DigestMismatch,
}

impl BadKind {
    /// Every kind, in report order.
    pub const ALL: [BadKind; 4] = [
        BadKind::MalformedJson,
        BadKind::NoInputs,
        BadKind::PolicyMissing,
        BadKind::DigestMismatch,
    ];

    /// A label for the summary.
    pub fn label(self) -> &'static str {
        match self {
            BadKind::MalformedJson => "malformed JSON / not a decision",
            BadKind::NoInputs => "decision without inputs",
            BadKind::PolicyMissing => "policy version not in the history",
            BadKind::DigestMismatch => "policy digest mismatch",
        }
    }
}

/// A record that could not be replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRecord {
    /// Where it was read.
    pub origin: Origin,
    /// Why it could not be replayed.
    pub kind: BadKind,
    /// The request id, if it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The error.
    pub message: String,
}

/// The decided part of a decision, as recorded or as replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decided {
    /// Allow or deny.
    pub outcome: Outcome,
    /// Reason codes.
    pub reasons: Vec<String>,
    /// Rule ids.
    pub rule_ids: Vec<String>,
    /// Legal bases.
    pub legal_basis: Vec<String>,
    /// Obligations.
    pub obligations: Vec<String>,
    /// Policy id and version (`id@version`).
    pub policy: String,
}

/// A decision that came out differently.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Where it was read.
    pub origin: Origin,
    /// Request id.
    pub request_id: String,
    /// Subject id.
    pub subject_id: String,
    /// Model.
    pub model: String,
    /// Organization the request was made for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// Which fields differ (`outcome`, `reasons`, `rule_ids`,
    /// `legal_basis`, `obligations`, `versions`).
    pub fields: Vec<&'static str>,
    /// As recorded.
    pub recorded: Decided,
    /// As decided again.
    pub replayed: Decided,
}

/// The what-if summaries of the changed decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WhatIfSummary {
    /// Changed decisions by model.
    pub by_model: BTreeMap<String, u64>,
    /// Changed decisions by old → new outcome (`allow -> deny`).
    pub by_outcome: BTreeMap<String, u64>,
    /// Changed decisions by the new decision's first reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Changed decisions by the subject's derived country (under the
    /// candidate's nationality mode; a subject with several counts under
    /// each; `(no record)` / `(none)` when there is none).
    pub by_country: BTreeMap<String, u64>,
    /// Changed decisions by organization (`(none)` without one).
    pub by_organization: BTreeMap<String, u64>,
    /// Distinct subjects with an allow turned into a deny.
    pub lose_access: BTreeSet<String>,
    /// Distinct subjects with a deny turned into an allow.
    pub gain_access: BTreeSet<String>,
}

/// What the decisions of the window recorded: "what did we decide?".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recorded {
    /// Allows.
    pub allow: u64,
    /// Denies.
    pub deny: u64,
    /// Decisions by model (`-` without inputs).
    pub by_model: BTreeMap<String, u64>,
    /// Decisions by outcome and first reason (`deny restricted_nationality`).
    pub by_reason: BTreeMap<String, u64>,
}

impl Recorded {
    fn count(&mut self, d: &DecisionView<'_>, inputs: Option<&DecisionInputs>) {
        match d.outcome {
            Outcome::Allow => self.allow += 1,
            Outcome::Deny => self.deny += 1,
        }
        let model = inputs.map_or("-", |i| i.request.model.as_str());
        bump(&mut self.by_model, model);
        let first = d.reasons.first().map_or("-", |r| &**r);
        let prefix = match d.outcome {
            Outcome::Allow => "allow ",
            Outcome::Deny => "deny ",
        };
        match self
            .by_reason
            .iter_mut()
            .find(|(k, _)| k.strip_prefix(prefix) == Some(first))
        {
            Some((_, n)) => *n += 1,
            None => {
                self.by_reason.insert(format!("{prefix}{first}"), 1);
            }
        }
    }

    fn merge(&mut self, o: Recorded) {
        self.allow += o.allow;
        self.deny += o.deny;
        for (k, v) in o.by_model {
            *self.by_model.entry(k).or_default() += v;
        }
        for (k, v) in o.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
    }
}

/// The result of a replay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `fidelity`, `what-if` or `no-work`.
    pub mode: &'static str,
    /// Records read.
    pub read: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Decisions decided again.
    pub replayed: u64,
    /// Decided again identically.
    pub identical: u64,
    /// Decided again differently (listed in `changes`).
    pub different: u64,
    /// Decisions of malformed requests (`inputs: null`): expected, not
    /// replayable, not differences.
    pub not_replayable_malformed: u64,
    /// Records that could not be replayed, every one.
    pub bad: Vec<BadRecord>,
    /// Every decision that came out differently, by origin.
    pub changes: Vec<Change>,
    /// Replayed decisions by the policy they recorded (`id@version`).
    pub by_policy: BTreeMap<String, u64>,
    /// What the window recorded (every decoded decision, replayable or not).
    pub recorded: Recorded,
    /// What-if summaries (what-if mode).
    pub what_if: WhatIfSummary,
    /// Notes about the window (records lost to retention...).
    pub notes: Vec<String>,
    /// Wall time of the replay.
    #[serde(skip)]
    pub elapsed: Duration,
}

impl Report {
    /// Bad records of `kind`.
    pub fn bad_count(&self, kind: BadKind) -> usize {
        self.bad.iter().filter(|b| b.kind == kind).count()
    }

    /// Whether the window replayed clean: no difference, no bad record.
    pub fn clean(&self) -> bool {
        self.different == 0 && self.bad.is_empty()
    }

    /// Add another (partial) report's counts and lists.
    pub fn merge(&mut self, o: Report) {
        self.read += o.read;
        self.bytes += o.bytes;
        self.replayed += o.replayed;
        self.identical += o.identical;
        self.different += o.different;
        self.not_replayable_malformed += o.not_replayable_malformed;
        self.bad.extend(o.bad);
        self.changes.extend(o.changes);
        self.recorded.merge(o.recorded);
        for (k, v) in o.by_policy {
            *self.by_policy.entry(k).or_default() += v;
        }
        let w = &mut self.what_if;
        for (mine, theirs) in [
            (&mut w.by_model, o.what_if.by_model),
            (&mut w.by_outcome, o.what_if.by_outcome),
            (&mut w.by_reason, o.what_if.by_reason),
            (&mut w.by_country, o.what_if.by_country),
            (&mut w.by_organization, o.what_if.by_organization),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        w.lose_access.extend(o.what_if.lose_access);
        w.gain_access.extend(o.what_if.gain_access);
        self.notes.extend(o.notes);
    }

    /// Sort the lists by origin (parallel replays finish out of order).
    pub fn sort(&mut self) {
        self.bad.sort_by_key(|b| b.origin);
        self.changes.sort_by_key(|c| c.origin);
    }

    /// Decisions replayed per second.
    pub fn rate(&self) -> f64 {
        self.read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A string of a decision as decoded for replay: borrowed from the input
/// unless it had escapes.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(transparent)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'a> Str<'a> {
    fn of(s: &'a str) -> Self {
        Str(Cow::Borrowed(s))
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

fn strs<'a>(v: &'a [String]) -> Vec<Str<'a>> {
    v.iter().map(|s| Str::of(s)).collect()
}

#[derive(Debug, serde::Deserialize)]
struct RecordVersionView<'a> {
    #[serde(borrow)]
    id: Str<'a>,
    version: u64,
}

impl PartialEq<crate::event::RecordVersion> for RecordVersionView<'_> {
    fn eq(&self, o: &crate::event::RecordVersion) -> bool {
        self.version == o.version && *self.id == o.id
    }
}

#[derive(Debug, serde::Deserialize)]
struct VersionsView<'a> {
    #[serde(borrow)]
    policy_id: Str<'a>,
    #[serde(borrow)]
    policy_version: Str<'a>,
    #[serde(borrow)]
    data_version: Str<'a>,
    #[serde(default, borrow)]
    policy_digest: Str<'a>,
    #[serde(borrow)]
    subject: Option<RecordVersionView<'a>>,
    #[serde(borrow)]
    organization: Option<RecordVersionView<'a>>,
    #[serde(default, borrow)]
    owners: Vec<RecordVersionView<'a>>,
}

impl PartialEq<crate::event::Versions> for VersionsView<'_> {
    fn eq(&self, o: &crate::event::Versions) -> bool {
        fn opt(a: &Option<RecordVersionView<'_>>, b: &Option<crate::event::RecordVersion>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        }
        *self.policy_id == o.policy_id
            && *self.policy_version == o.policy_version
            && *self.data_version == o.data_version
            && *self.policy_digest == o.policy_digest
            && opt(&self.subject, &o.subject)
            && opt(&self.organization, &o.organization)
            && self.owners.len() == o.owners.len()
            && self.owners.iter().zip(&o.owners).all(|(a, b)| a == b)
    }
}

/// What replay reads of a decision: the decided fields borrowed from the
/// input (no allocation for the reasons, rule ids and versions), the inputs
/// decoded as the decision core needs them; `decided_at`, `source` and
/// `engine_instance` are not decoded (replay does not use them).
#[derive(Debug, serde::Deserialize)]
struct DecisionView<'a> {
    #[serde(borrow)]
    request_id: Str<'a>,
    outcome: Outcome,
    #[serde(borrow)]
    reasons: Vec<Str<'a>>,
    #[serde(borrow)]
    rule_ids: Vec<Str<'a>>,
    #[serde(default, borrow)]
    legal_basis: Vec<Str<'a>>,
    #[serde(default, borrow)]
    obligations: Vec<Str<'a>>,
    #[serde(borrow)]
    versions: VersionsView<'a>,
    /// Decoded here when read from bytes; `None` (and passed apart) when
    /// the view borrows a [`Decision`].
    #[serde(default)]
    inputs: Option<DecisionInputs>,
}

impl<'a> DecisionView<'a> {
    /// A view of `d` without its inputs (they are passed apart).
    fn of(d: &'a Decision) -> Self {
        let rv = |r: &'a crate::event::RecordVersion| RecordVersionView {
            id: Str::of(&r.id),
            version: r.version,
        };
        let v = &d.versions;
        DecisionView {
            request_id: Str::of(&d.request_id),
            outcome: d.outcome,
            reasons: strs(&d.reasons),
            rule_ids: strs(&d.rule_ids),
            legal_basis: strs(&d.legal_basis),
            obligations: strs(&d.obligations),
            versions: VersionsView {
                policy_id: Str::of(&v.policy_id),
                policy_version: Str::of(&v.policy_version),
                data_version: Str::of(&v.data_version),
                policy_digest: Str::of(&v.policy_digest),
                subject: v.subject.as_ref().map(rv),
                organization: v.organization.as_ref().map(rv),
                owners: v.owners.iter().map(rv).collect(),
            },
            inputs: None,
        }
    }
}

fn same<A: AsRef<str>>(a: &[A], b: &[Str<'_>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.as_ref() == &**y)
}

fn owned(v: &[Str<'_>]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// One policy version as the history answered for it.
struct Cached {
    id: String,
    version: String,
    digest: String,
    policy: Result<Arc<CompiledPolicy>, HistoryMiss>,
    /// Decisions replayed with it.
    replayed: u64,
}

/// Replays decisions one by one on the calling thread, into a [`Report`].
/// Parsed policies are shared (`Arc`), looked up once per (id, version,
/// digest).
pub struct Replayer {
    mode: Mode,
    cache: Vec<Cached>,
    last: usize,
    report: Report,
}

const FIELDS: [&str; 6] = [
    "outcome",
    "reasons",
    "rule_ids",
    "legal_basis",
    "obligations",
    "versions",
];

impl Replayer {
    /// A replayer in `mode`.
    pub fn new(mode: Mode) -> Self {
        let report = Report {
            mode: mode.name(),
            ..Report::default()
        };
        Replayer {
            mode,
            cache: Vec::new(),
            last: 0,
            report,
        }
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The report.
    pub fn finish(mut self) -> Report {
        for c in &self.cache {
            if c.replayed > 0 {
                *self
                    .report
                    .by_policy
                    .entry(format!("{}@{}", c.id, c.version))
                    .or_default() += c.replayed;
            }
        }
        self.report.sort();
        self.report
    }

    /// Replay one record of the window (its value as read).
    pub fn replay_bytes(&mut self, origin: Origin, bytes: &[u8]) {
        self.report.bytes += bytes.len() as u64;
        if matches!(self.mode, Mode::NoWork) {
            self.report.read += 1;
            return;
        }
        // One UTF-8 check of the whole record, then a parser that does not
        // check each string again.
        let decoded = std::str::from_utf8(bytes)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|text| {
                serde_json::from_str::<DecisionView<'_>>(text).map_err(|e| e.to_string())
            });
        match decoded {
            Ok(d) => self.replay_view(origin, &d, d.inputs.as_ref()),
            Err(message) => {
                self.report.read += 1;
                self.report.bad.push(BadRecord {
                    origin,
                    kind: BadKind::MalformedJson,
                    request_id: crate::event::salvage_request_id(bytes),
                    message,
                });
            }
        }
    }

    /// Replay one decision.
    pub fn replay(&mut self, origin: Origin, d: &Decision) {
        self.replay_view(origin, &DecisionView::of(d), d.inputs.as_ref());
    }

    fn policy(&mut self, v: &VersionsView<'_>) -> Result<Arc<CompiledPolicy>, HistoryMiss> {
        let history = match &self.mode {
            Mode::WhatIf(p) => return Ok(p.clone()),
            Mode::Fidelity(h) => h,
            Mode::NoWork => unreachable!("no-work decides nothing"),
        };
        let hit = |c: &Cached| {
            c.digest == *v.policy_digest && c.version == *v.policy_version && c.id == *v.policy_id
        };
        if let Some(c) = self.cache.get(self.last).filter(|c| hit(c)) {
            return c.policy.clone();
        }
        if let Some(i) = self.cache.iter().position(hit) {
            self.last = i;
            return self.cache[i].policy.clone();
        }
        let policy = history
            .get(&v.policy_id, &v.policy_version, &v.policy_digest)
            .cloned();
        self.cache.push(Cached {
            id: v.policy_id.to_string(),
            version: v.policy_version.to_string(),
            digest: v.policy_digest.to_string(),
            policy: policy.clone(),
            replayed: 0,
        });
        self.last = self.cache.len() - 1;
        policy
    }

    fn replay_view(
        &mut self,
        origin: Origin,
        d: &DecisionView<'_>,
        inputs: Option<&DecisionInputs>,
    ) {
        self.report.read += 1;
        if matches!(self.mode, Mode::NoWork) {
            return;
        }
        self.report.recorded.count(d, inputs);
        let Some(inputs) = inputs else {
            if d.reasons.iter().any(|r| &**r == reason::MALFORMED_REQUEST) {
                self.report.not_replayable_malformed += 1;
            } else {
                self.report.bad.push(BadRecord {
                    origin,
                    kind: BadKind::NoInputs,
                    request_id: Some(d.request_id.to_string()),
                    message: format!("reasons {:?}", owned(&d.reasons)),
                });
            }
            return;
        };
        let policy = match self.policy(&d.versions) {
            Ok(p) => p,
            Err(miss) => {
                let kind = match miss {
                    HistoryMiss::Missing { .. } => BadKind::PolicyMissing,
                    HistoryMiss::DigestMismatch { .. } => BadKind::DigestMismatch,
                };
                self.report.bad.push(BadRecord {
                    origin,
                    kind,
                    request_id: Some(d.request_id.to_string()),
                    message: miss.to_string(),
                });
                return;
            }
        };
        let elig = Eligibility {
            subject: inputs.subject.as_deref(),
            organization: inputs.organization.as_deref(),
            data_stale: d.reasons.iter().any(|r| &**r == reason::STALE_DATA),
            owners: &inputs.owners,
        };
        let v = decide::decide(&policy, &elig, &inputs.request);
        self.report.replayed += 1;
        if let Some(c) = self.cache.get_mut(self.last) {
            c.replayed += 1;
        }
        let compare_versions = matches!(self.mode, Mode::Fidelity(_));
        let diffs = [
            v.outcome != d.outcome,
            !same(&v.reasons, &d.reasons),
            !same(&v.rule_ids, &d.rule_ids),
            !same(&v.legal_basis, &d.legal_basis),
            !same(&v.obligations, &d.obligations),
            compare_versions && d.versions != v.versions,
        ];
        if !diffs.iter().any(|x| *x) {
            self.report.identical += 1;
            return;
        }
        self.report.different += 1;
        let fields = FIELDS
            .iter()
            .zip(diffs)
            .filter_map(|(f, x)| x.then_some(*f))
            .collect();
        if let Mode::WhatIf(p) = &self.mode {
            summarize(&mut self.report.what_if, p, d.outcome, inputs, &v);
        }
        self.report
            .changes
            .push(change(origin, d, inputs, &v, fields));
    }
}

fn change(
    origin: Origin,
    d: &DecisionView<'_>,
    inputs: &DecisionInputs,
    v: &Verdict,
    fields: Vec<&'static str>,
) -> Change {
    let req = &inputs.request;
    let strs = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
    Change {
        origin,
        request_id: d.request_id.to_string(),
        subject_id: req.subject_id.clone(),
        model: req.model.clone(),
        organization_id: req.organization_id.clone(),
        fields,
        recorded: Decided {
            outcome: d.outcome,
            reasons: owned(&d.reasons),
            rule_ids: owned(&d.rule_ids),
            legal_basis: owned(&d.legal_basis),
            obligations: owned(&d.obligations),
            policy: format!("{}@{}", &*d.versions.policy_id, &*d.versions.policy_version),
        },
        replayed: Decided {
            outcome: v.outcome,
            reasons: strs(&v.reasons),
            rule_ids: v.rule_ids.clone(),
            legal_basis: v.legal_basis.clone(),
            obligations: strs(&v.obligations),
            policy: format!("{}@{}", v.versions.policy_id, v.versions.policy_version),
        },
    }
}

fn bump(m: &mut BTreeMap<String, u64>, k: &str) {
    match m.get_mut(k) {
        Some(n) => *n += 1,
        None => {
            m.insert(k.to_string(), 1);
        }
    }
}

fn summarize(
    w: &mut WhatIfSummary,
    p: &CompiledPolicy,
    recorded: Outcome,
    inputs: &DecisionInputs,
    v: &Verdict,
) {
    let req = &inputs.request;
    bump(&mut w.by_model, &req.model);
    bump(
        &mut w.by_outcome,
        &format!("{} -> {}", recorded.as_str(), v.outcome.as_str()),
    );
    bump(&mut w.by_reason, v.reasons.first().copied().unwrap_or("-"));
    match &inputs.subject {
        None => bump(&mut w.by_country, "(no record)"),
        Some(u) => {
            let cs = decide::derived_countries(u, p.settings.nationality_mode);
            if cs.is_empty() {
                bump(&mut w.by_country, "(none)");
            }
            for c in cs {
                bump(&mut w.by_country, &c);
            }
        }
    }
    let org = req
        .organization_id
        .as_deref()
        .or(inputs.organization.as_ref().map(|o| o.id.as_str()))
        .unwrap_or("(none)");
    bump(&mut w.by_organization, org);
    match (recorded, v.outcome) {
        (Outcome::Allow, Outcome::Deny) => {
            w.lose_access.insert(req.subject_id.clone());
        }
        (Outcome::Deny, Outcome::Allow) => {
            w.gain_access.insert(req.subject_id.clone());
        }
        _ => {}
    }
}

/// Replay a list of decisions on the calling thread (their origins are
/// their positions).
pub fn replay_all<'a>(mode: Mode, decisions: impl IntoIterator<Item = &'a Decision>) -> Report {
    let start = Instant::now();
    let mut r = Replayer::new(mode);
    for (i, d) in decisions.into_iter().enumerate() {
        r.replay(Origin::Index(i as u64), d);
    }
    let mut report = r.finish();
    report.elapsed = start.elapsed();
    report
}

/// A batch of records handed from the reader to a deciding thread: one
/// buffer for the values, and each record's origin and extent in it.
struct Batch {
    data: Vec<u8>,
    items: Vec<(Origin, usize, usize)>,
}

const BATCH: usize = 512;

/// Replay the records that `source` produces: `source` is called once with
/// a sink and feeds it every record (origin and value), e.g. through
/// [`read_ranges`] or [`read_jsonl`]. With `jobs` > 1 (and a mode that
/// decides), the records are decided on `jobs` threads while `source`
/// reads on the calling thread; otherwise on the calling thread, with no
/// copy. `progress` is called from the calling thread with the number of
/// records read since its last call.
pub fn replay_source<E>(
    mode: Mode,
    jobs: usize,
    progress: &mut dyn FnMut(u64),
    source: impl FnOnce(&mut dyn FnMut(Origin, &[u8])) -> Result<(), E>,
) -> Result<Report, E> {
    let start = Instant::now();
    let mut pending = 0u64;
    if jobs <= 1 || matches!(mode, Mode::NoWork) {
        let mut r = Replayer::new(mode);
        source(&mut |origin, bytes| {
            r.replay_bytes(origin, bytes);
            pending += 1;
            if pending == BATCH as u64 {
                progress(pending);
                pending = 0;
            }
        })?;
        progress(pending);
        let mut report = r.finish();
        report.elapsed = start.elapsed();
        return Ok(report);
    }
    let (tx, rx) = mpsc::sync_channel::<Batch>(jobs * 4);
    let rx = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let rx = rx.clone();
            let mode = mode.clone();
            std::thread::spawn(move || {
                let mut r = Replayer::new(mode);
                loop {
                    let batch = match rx.lock() {
                        Ok(g) => g.recv(),
                        Err(_) => break,
                    };
                    let Ok(b) = batch else { break };
                    for (origin, s, e) in &b.items {
                        r.replay_bytes(*origin, &b.data[*s..*e]);
                    }
                }
                r.finish()
            })
        })
        .collect();
    let fresh = || Batch {
        data: Vec::with_capacity(BATCH * 2048),
        items: Vec::with_capacity(BATCH),
    };
    let mut batch = fresh();
    let result = source(&mut |origin, bytes| {
        let s = batch.data.len();
        batch.data.extend_from_slice(bytes);
        batch.items.push((origin, s, batch.data.len()));
        if batch.items.len() == BATCH {
            progress(BATCH as u64);
            let full = std::mem::replace(&mut batch, fresh());
            let _ = tx.send(full);
        }
    });
    progress(batch.items.len() as u64);
    if !batch.items.is_empty() {
        let _ = tx.send(batch);
    }
    drop(tx);
    let mut report = Report {
        mode: mode.name(),
        ..Report::default()
    };
    for w in workers {
        match w.join() {
            Ok(r) => report.merge(r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    result?;
    report.sort();
    report.elapsed = start.elapsed();
    Ok(report)
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// Output format of the changed decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line ([`Change`]).
    Jsonl,
    /// CSV with a header line.
    Csv,
}

impl Format {
    /// The format named `s` (`jsonl`, `json`, `csv`).
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "json" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// The format of a file by its extension (JSONL unless `.csv`).
    pub fn of_path(path: &std::path::Path) -> Format {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Format::parse)
            .unwrap_or(Format::Jsonl)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Write every change as JSONL or CSV.
pub fn write_changes(
    out: &mut dyn Write,
    changes: &[Change],
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Jsonl => {
            for c in changes {
                serde_json::to_writer(&mut *out, c)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            writeln!(out, "origin,request_id,subject_id,model,organization_id,fields,old_outcome,new_outcome,old_reasons,new_reasons,old_rule_ids,new_rule_ids,old_policy,new_policy")?;
            for c in changes {
                let row = [
                    c.origin.to_string(),
                    c.request_id.clone(),
                    c.subject_id.clone(),
                    c.model.clone(),
                    c.organization_id.clone().unwrap_or_default(),
                    c.fields.join(";"),
                    c.recorded.outcome.as_str().to_string(),
                    c.replayed.outcome.as_str().to_string(),
                    c.recorded.reasons.join(";"),
                    c.replayed.reasons.join(";"),
                    c.recorded.rule_ids.join(";"),
                    c.replayed.rule_ids.join(";"),
                    c.recorded.policy.clone(),
                    c.replayed.policy.clone(),
                ];
                let line: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
                writeln!(out, "{}", line.join(","))?;
            }
        }
    }
    Ok(())
}

/// How many bad records and changes the summary lists (all are counted;
/// `--out` and `--bad-out` list every one).
pub const LISTED: usize = 20;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: u64| writeln!(f, "  {k:<44} {v:>10}");
        writeln!(f, "replay ({})", self.mode)?;
        row(f, "read", self.read)?;
        if self.mode == "no-work" {
            row(f, "bytes", self.bytes)?;
        } else {
            row(f, "replayed", self.replayed)?;
            row(f, "identical", self.identical)?;
            row(f, "different", self.different)?;
            row(
                f,
                "not replayable (malformed request)",
                self.not_replayable_malformed,
            )?;
            row(f, "bad records", self.bad.len() as u64)?;
            for k in BadKind::ALL {
                row(f, &format!("  {}", k.label()), self.bad_count(k) as u64)?;
            }
        }
        writeln!(
            f,
            "  {:<44} {:>10.0} ({:.2} s)",
            "decisions/s",
            self.rate(),
            self.elapsed.as_secs_f64()
        )?;
        let rec = &self.recorded;
        if rec.allow + rec.deny > 0 {
            writeln!(f, "recorded decisions:")?;
            row(f, "allow", rec.allow)?;
            row(f, "deny", rec.deny)?;
            writeln!(f, "recorded decisions by model:")?;
            for (k, v) in &rec.by_model {
                row(f, k, *v)?;
            }
            writeln!(f, "recorded decisions by outcome and first reason:")?;
            for (k, v) in &rec.by_reason {
                row(f, k, *v)?;
            }
        }
        if !self.by_policy.is_empty() {
            writeln!(f, "policy versions recorded in the window:")?;
            for (k, v) in &self.by_policy {
                row(f, k, *v)?;
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        if !self.bad.is_empty() {
            writeln!(f, "bad records:")?;
            for b in self.bad.iter().take(LISTED) {
                writeln!(
                    f,
                    "  {} {:?} {}: {}",
                    b.origin,
                    b.kind,
                    b.request_id.as_deref().unwrap_or("-"),
                    b.message
                )?;
            }
            if self.bad.len() > LISTED {
                writeln!(f, "  ... and {} more", self.bad.len() - LISTED)?;
            }
        }
        if self.mode == "what-if" && !self.changes.is_empty() {
            let w = &self.what_if;
            for (title, m) in [
                ("changed decisions by model", &w.by_model),
                ("by outcome (recorded -> candidate)", &w.by_outcome),
                ("by reason (candidate's first reason)", &w.by_reason),
                ("by derived country", &w.by_country),
                ("by organization", &w.by_organization),
            ] {
                writeln!(f, "{title}:")?;
                for (k, v) in m {
                    row(f, k, *v)?;
                }
            }
            let list = |f: &mut fmt::Formatter<'_>, title: &str, s: &BTreeSet<String>| {
                writeln!(f, "{title}: {}", s.len())?;
                for (i, id) in s.iter().enumerate() {
                    if i == 100 {
                        writeln!(f, "  ... and {} more (every changed decision, with its subject, is in --out)", s.len() - 100)?;
                        break;
                    }
                    writeln!(f, "  {id}")?;
                }
                Ok(())
            };
            list(
                f,
                "subjects who lose access (allow -> deny)",
                &w.lose_access,
            )?;
            list(
                f,
                "subjects who gain access (deny -> allow)",
                &w.gain_access,
            )?;
        } else if !self.changes.is_empty() {
            writeln!(f, "differences:")?;
            for c in self.changes.iter().take(LISTED) {
                writeln!(
                    f,
                    "  {} {} [{}]: {} {:?} {:?} -> {} {:?} {:?}",
                    c.origin,
                    c.request_id,
                    c.fields.join(","),
                    c.recorded.outcome.as_str(),
                    c.recorded.reasons,
                    c.recorded.rule_ids,
                    c.replayed.outcome.as_str(),
                    c.replayed.reasons,
                    c.replayed.rule_ids
                )?;
            }
            if self.changes.len() > LISTED {
                writeln!(
                    f,
                    "  ... and {} more (see --out)",
                    self.changes.len() - LISTED
                )?;
            }
        }
        match self.mode {
            "fidelity" if self.clean() => writeln!(
                f,
                "result: {} of {} replayable decisions identical (100%): outcome, reasons, rule ids, legal basis, obligations, versions",
                self.identical, self.replayed
            ),
            "fidelity" => writeln!(
                f,
                "result: NOT identical: {} different, {} bad records",
                self.different,
                self.bad.len()
            ),
            "what-if" => writeln!(
                f,
                "result: {} of {} decisions change under the candidate policy; {} bad records",
                self.different,
                self.replayed,
                self.bad.len()
            ),
            _ => writeln!(f, "result: read only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AccessRequest, DecisionInputs};
    use crate::loadgen;

    fn decision(policy: &CompiledPolicy, s: &loadgen::Subject, i: usize, model: &str) -> Decision {
        let req: AccessRequest = loadgen::request(s, format!("r{i}"), model);
        let subject = s.record.clone().map(Arc::new);
        let v = decide::decide(
            policy,
            &Eligibility {
                subject: subject.as_deref(),
                ..Eligibility::default()
            },
            &req,
        );
        Decision {
            request_id: req.request_id.clone(),
            outcome: v.outcome,
            reasons: v.reasons.iter().map(|s| s.to_string()).collect(),
            rule_ids: v.rule_ids.clone(),
            legal_basis: v.legal_basis.clone(),
            obligations: v.obligations.iter().map(|s| s.to_string()).collect(),
            versions: v.versions.clone(),
            inputs: Some(DecisionInputs {
                request: req,
                subject,
                organization: None,
                owners: v.owner_records.clone(),
            }),
            decided_at: OffsetDateTime::now_utc(),
            source: None,
            engine_instance: "t".into(),
        }
    }

    #[test]
    fn the_view_borrows_the_decided_fields() {
        let d = decision(
            &CompiledPolicy::example(),
            &loadgen::subject("b", 1),
            1,
            "fable-5",
        );
        let bytes = serde_json::to_vec(&d).unwrap();
        let v: DecisionView<'_> = serde_json::from_slice(&bytes).unwrap();
        assert!(matches!(v.reasons[0].0, Cow::Borrowed(_)));
        assert!(matches!(v.versions.policy_digest.0, Cow::Borrowed(_)));
        assert!(v.versions == d.versions);
        assert_eq!(v.inputs, d.inputs);
        // A string with an escape cannot be borrowed: it is owned.
        let text = String::from_utf8(bytes).unwrap().replacen(
            "\"request_id\":\"r1\"",
            "\"request_id\":\"r\\\"1\"",
            1,
        );
        let escaped: DecisionView<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(&*escaped.request_id, "r\"1");
    }

    #[test]
    fn offsets_parse_and_reject_nonsense() {
        assert_eq!(
            parse_offsets("0:10-20, 2:0-5").unwrap(),
            vec![
                PartitionRange {
                    partition: 0,
                    start: 10,
                    end: 20
                },
                PartitionRange {
                    partition: 2,
                    start: 0,
                    end: 5
                }
            ]
        );
        for bad in ["", "0", "0:5", "a:1-2", "0:5-1", "-1:0-1"] {
            assert!(parse_offsets(bad).is_err(), "{bad}");
        }
        assert!(parse_time("2026-11-03T14:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn fidelity_finds_tampering_and_counts_bad_records() {
        let p = CompiledPolicy::example();
        let mut h = PolicyHistory::new();
        h.add(CompiledPolicy::example(), "file");
        let ds: Vec<Decision> = (0..40)
            .map(|i| decision(&p, &loadgen::subject("t", i), i, loadgen::model_for(i * 10)))
            .collect();
        let r = replay_all(Mode::Fidelity(Arc::new(h.clone())), &ds);
        assert_eq!((r.replayed, r.identical, r.different), (40, 40, 0), "{r}");
        assert!(r.clean());

        let mut tampered = ds.clone();
        tampered[3].outcome = match tampered[3].outcome {
            Outcome::Allow => Outcome::Deny,
            Outcome::Deny => Outcome::Allow,
        };
        tampered[5].versions.policy_digest = "0".repeat(64);
        tampered[6].versions.policy_version = "1999.1.1".into();
        tampered[7].inputs = None;
        let mut malformed = tampered[8].clone();
        malformed.inputs = None;
        malformed.reasons = vec![reason::MALFORMED_REQUEST.into()];
        tampered.push(malformed);
        let mut rp = Replayer::new(Mode::Fidelity(Arc::new(h)));
        for (i, d) in tampered.iter().enumerate() {
            rp.replay_bytes(Origin::Line(i as u64 + 1), &serde_json::to_vec(d).unwrap());
        }
        rp.replay_bytes(Origin::Line(99), b"{not json");
        let r = rp.finish();
        assert_eq!(r.read, 42);
        assert_eq!(r.different, 1, "{r}");
        assert_eq!(r.changes[0].fields, vec!["outcome"]);
        assert_eq!(r.changes[0].origin, Origin::Line(4));
        assert_eq!(r.not_replayable_malformed, 1);
        assert_eq!(r.bad_count(BadKind::DigestMismatch), 1);
        assert_eq!(r.bad_count(BadKind::PolicyMissing), 1);
        assert_eq!(r.bad_count(BadKind::NoInputs), 1);
        assert_eq!(r.bad_count(BadKind::MalformedJson), 1);
        assert!(!r.clean());
        let text = r.to_string();
        assert!(text.contains("NOT identical"), "{text}");
    }

    #[test]
    fn what_if_summarizes_and_parallel_agrees_with_serial() {
        let p = CompiledPolicy::example();
        let ds: Vec<Decision> = (0..2000)
            .map(|i| {
                decision(
                    &p,
                    &loadgen::subject("w", i % 100),
                    i,
                    loadgen::model_for(i),
                )
            })
            .collect();
        let text = crate::policy::EXAMPLE_POLICY
            .replace("version = \"2026.12.1\"", "version = \"2026.12.9\"")
            .replace(
                "\"haiku-4\" = { tags = [] }",
                "\"haiku-4\" = { tags = [\"order-2026-11\"] }",
            );
        let cand = Arc::new(CompiledPolicy::from_toml_str(&text, "cand").unwrap());
        let serial = replay_all(Mode::WhatIf(cand.clone()), &ds);
        assert!(serial.different > 0);
        // Those who asked for haiku-4, allowed an untagged model and denied
        // a controlled one (the categories' hand-written expectations).
        let expect: BTreeSet<String> = (0..2000)
            .filter(|i| loadgen::model_for(*i) == loadgen::UNTAGGED_MODEL)
            .map(|i| loadgen::subject("w", i % 100))
            .filter(|s| {
                s.category.expected(loadgen::UNTAGGED_MODEL) == Outcome::Allow
                    && s.category.expected(loadgen::TAGGED_MODEL) == Outcome::Deny
            })
            .map(|s| s.id)
            .collect();
        assert_eq!(serial.what_if.lose_access, expect);
        assert!(serial.what_if.gain_access.is_empty());
        assert_eq!(
            serial.what_if.by_model.keys().collect::<Vec<_>>(),
            ["haiku-4"]
        );
        let bytes: Vec<Vec<u8>> = ds.iter().map(|d| serde_json::to_vec(d).unwrap()).collect();
        let mut seen = 0;
        let par = replay_source::<()>(Mode::WhatIf(cand), 2, &mut |n| seen += n, |sink| {
            for (i, b) in bytes.iter().enumerate() {
                sink(Origin::Index(i as u64), b);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 2000);
        assert_eq!(par.changes, serial.changes);
        assert_eq!(par.what_if, serial.what_if);
        let mut csv = Vec::new();
        write_changes(&mut csv, &par.changes, Format::Csv).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap().lines().count(),
            par.changes.len() + 1
        );
    }
}
