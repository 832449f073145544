//! At-least-once delivery: decide each request as it comes; an offset is
//! stored only once its records are delivered and every earlier offset's
//! are ([`Tracker`]), and the stored offsets are committed on a schedule
//! ([`CommitSchedule`]) and at shutdown, after a bounded drain.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use super::{
    poll_one, process, store_done, Output, PipelineError, SendError, Shared, Tracker, WorkerContext,
};

/// When the at-least-once worker commits the offsets it stored: at once
/// when a partition gets its first stored offset since the last assignment
/// (start, restart, rebalance), otherwise after 50 ms and at doubling
/// intervals up to `engine.commit_interval_ms` (reset by every
/// assignment). A crash re-decides what was decided since the last commit:
/// at most about the commit interval times the rate, and about half the
/// time since the assignment shortly after one (an instance killed again
/// and again right after its restarts still makes progress).
#[derive(Debug)]
struct CommitSchedule {
    interval: Duration,
    gap: Duration,
    last: Instant,
    stored: bool,
    /// Partitions with an offset stored since the last assignment.
    started: BTreeSet<i32>,
}

impl CommitSchedule {
    const FIRST_GAP: Duration = Duration::from_millis(50);

    fn new(interval: Duration) -> Self {
        Self {
            interval,
            gap: Duration::ZERO,
            last: Instant::now(),
            stored: false,
            started: BTreeSet::new(),
        }
    }

    /// Partitions were assigned: commit the first offsets of each at once,
    /// then at short intervals again.
    fn assigned(&mut self) {
        self.gap = Duration::ZERO;
        self.started.clear();
    }

    /// Whether to commit now, given the partitions whose offsets were just
    /// stored.
    fn due(&mut self, stored: &[i32], now: Instant) -> bool {
        let mut first = false;
        for p in stored {
            first |= self.started.insert(*p);
        }
        self.stored |= !stored.is_empty();
        if !self.stored || (!first && now.duration_since(self.last) < self.gap) {
            return false;
        }
        self.stored = false;
        self.last = now;
        self.gap = (self.gap * 2).clamp(Self::FIRST_GAP.min(self.interval), self.interval);
        true
    }
}

fn send_failure(e: SendError) -> Option<PipelineError> {
    match e {
        SendError::Shutdown => None,
        SendError::Refused(e) => Some(PipelineError::Delivery(e.to_string())),
        SendError::Encode(e) => Some(PipelineError::Encode(e)),
    }
}

/// The at-least-once worker loop (module doc).
pub(super) fn run(
    shared: &Shared,
    consumer: &BaseConsumer<WorkerContext>,
    tracker: &Arc<Tracker>,
    shutdown: &CancellationToken,
) -> Result<(), PipelineError> {
    let topic = &shared.cfg.topics.requests;
    let out = Output {
        producer: &shared.producer,
        replies: shared.reply_producer.as_ref(),
        deadletters: &shared.deadletters,
        tracker: Some(tracker),
    };
    let mut result = Ok(());
    let mut schedule =
        CommitSchedule::new(Duration::from_millis(shared.cfg.engine.commit_interval_ms));
    while !shutdown.is_cancelled() {
        if let Some(f) = tracker.failure() {
            result = Err(PipelineError::Delivery(f));
            break;
        }
        match poll_one(consumer, Duration::from_millis(100)) {
            Ok(None) => {}
            Ok(Some(msg)) => {
                if let Err(e) = process(shared, &out, &msg, shutdown) {
                    if let Some(f) = send_failure(e) {
                        result = Err(f);
                    }
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        if consumer
            .context()
            .assigned_since_commit
            .swap(false, Ordering::AcqRel)
        {
            schedule.assigned();
        }
        let stored = store_done(consumer, topic, tracker);
        if schedule.due(&stored, Instant::now()) {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                tracing::debug!(error = %e, "commit (nothing stored?)");
            }
        }
    }

    // Drain: wait for what is in flight, store its offsets, commit.
    let deadline = Instant::now() + Duration::from_millis(shared.cfg.engine.shutdown_timeout_ms);
    while tracker.pending() > 0 && Instant::now() < deadline && tracker.failure().is_none() {
        let _ = shared.producer.flush(Duration::from_millis(100));
        store_done(consumer, topic, tracker);
    }
    store_done(consumer, topic, tracker);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit (nothing stored?)");
    }
    let left = tracker.pending();
    if left > 0 {
        tracing::warn!(
            left,
            "shutdown bound reached with deliveries pending; those requests will be decided again"
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_offsets_are_committed_at_once_then_at_growing_intervals() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = CommitSchedule::new(Duration::from_millis(1000));
        s.last = t0;
        s.assigned();
        assert!(!s.due(&[], ms(0)), "nothing stored, nothing to commit");
        assert!(s.due(&[0], ms(1)), "the first stored offset at once");
        assert!(!s.due(&[0], ms(30)));
        assert!(s.due(&[1], ms(31)), "partition 1's first: at once");
        assert!(
            !s.due(&[0], ms(60)),
            "then every commit doubles the gap: 100 ms"
        );
        assert!(s.due(&[], ms(131)), "stored earlier, due after 100 ms");
        assert!(!s.due(&[0], ms(150)));
        assert!(s.due(&[], ms(331)), "then 200 ms");
        let mut at = 331;
        for _ in 0..6 {
            at += 1000;
            assert!(s.due(&[1], ms(at)));
        }
        assert!(!s.due(&[0], ms(at + 999)), "capped at the commit interval");
        assert!(s.due(&[], ms(at + 1000)));
        s.assigned();
        assert!(
            s.due(&[0], ms(at + 1001)),
            "a new assignment: at once again"
        );
    }
}
