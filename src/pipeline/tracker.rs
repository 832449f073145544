//! The offset tracker: an offset is stored only once every record produced
//! for it is confirmed delivered, and every earlier offset of its partition
//! too.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct PartitionTrack {
    /// In consumption order: (offset, deliveries still awaited).
    pending: VecDeque<(i64, u8)>,
    /// Highest offset whose records, and all earlier ones, are delivered,
    /// not yet stored.
    done: Option<i64>,
}

/// Per-partition tracking of deliveries, so that an offset is stored only
/// after its own records and those of every earlier offset are delivered.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: Mutex<HashMap<i32, PartitionTrack>>,
    dirty: AtomicBool,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, PartitionTrack>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register an offset that awaits `deliveries` confirmations.
    pub fn begin(&self, partition: i32, offset: i64, deliveries: u8) {
        let mut g = self.lock();
        let t = g.entry(partition).or_default();
        if deliveries == 0 {
            t.pending.push_back((offset, 0));
            Self::advance(t);
            self.dirty.store(true, Ordering::Release);
        } else {
            t.pending.push_back((offset, deliveries));
        }
    }

    /// One delivery of `offset` is confirmed.
    pub fn ack(&self, partition: i32, offset: i64) {
        let mut g = self.lock();
        let Some(t) = g.get_mut(&partition) else {
            return; // partition revoked meanwhile
        };
        // Offsets are pushed in increasing order.
        let idx = match t.pending.binary_search_by_key(&offset, |e| e.0) {
            Ok(i) => i,
            Err(_) => return,
        };
        let e = &mut t.pending[idx];
        e.1 = e.1.saturating_sub(1);
        if idx == 0 && Self::advance(t) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn advance(t: &mut PartitionTrack) -> bool {
        let mut moved = false;
        while let Some(&(off, 0)) = t.pending.front() {
            t.pending.pop_front();
            t.done = Some(off);
            moved = true;
        }
        moved
    }

    /// Record a permanent delivery failure: the worker stops.
    pub fn fail(&self, message: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(message);
        self.failed.store(true, Ordering::Release);
    }

    /// The first permanent failure, if any.
    pub fn failure(&self) -> Option<String> {
        // The worker asks after every message: no lock until one happened.
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Offsets ready to be stored: `(partition, offset of the last done message)`.
    pub fn take_done(&self) -> Vec<(i32, i64)> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut g = self.lock();
        g.iter_mut()
            .filter_map(|(p, t)| t.done.take().map(|o| (*p, o)))
            .collect()
    }

    /// Forget partitions (after a revocation).
    pub fn forget(&self, partitions: &[i32]) {
        let mut g = self.lock();
        for p in partitions {
            g.remove(p);
        }
    }

    /// Offsets registered and not yet fully delivered, across partitions.
    pub fn pending(&self) -> usize {
        self.lock().values().map(|t| t.pending.len()).sum()
    }

    /// Wait (sleeping 1 ms at a time) until every offset registered in
    /// `partitions` is delivered, a delivery has failed, or `timeout` is up;
    /// returns the offsets still awaiting delivery there. Deliveries are
    /// acknowledged from the producer's own thread, so nothing needs
    /// polling meanwhile; the shared producer is not flushed.
    pub fn wait_delivered(&self, partitions: &[i32], timeout: std::time::Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = self.pending_in(partitions);
            if left == 0 || self.failure().is_some() || std::time::Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Offsets registered and not yet fully delivered in `partitions`.
    pub fn pending_in(&self, partitions: &[i32]) -> usize {
        let g = self.lock();
        partitions
            .iter()
            .filter_map(|p| g.get(p))
            .map(|t| t.pending.len())
            .sum()
    }
}

// ---------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_released_only_in_order() {
        let t = Tracker::default();
        t.begin(0, 10, 1);
        t.begin(0, 11, 2);
        t.begin(0, 13, 1);
        t.ack(0, 13);
        assert!(t.take_done().is_empty(), "13 done but 10 and 11 are not");
        t.ack(0, 10);
        assert_eq!(t.take_done(), vec![(0, 10)]);
        t.ack(0, 11);
        assert!(t.take_done().is_empty(), "11 awaits a second delivery");
        t.ack(0, 11);
        assert_eq!(t.take_done(), vec![(0, 13)]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn pending_counts_by_partition() {
        let t = Tracker::default();
        t.begin(0, 10, 1);
        t.begin(0, 11, 2);
        t.begin(1, 5, 1);
        assert_eq!(t.pending_in(&[0]), 2);
        assert_eq!(t.pending_in(&[1, 7]), 1);
        t.ack(0, 10);
        t.ack(0, 11);
        assert_eq!(t.pending_in(&[0]), 1, "offset 11 awaits a second delivery");
        t.ack(0, 11);
        assert_eq!(t.pending_in(&[0]), 0);
        assert_eq!(t.wait_delivered(&[0], std::time::Duration::ZERO), 0);
        assert_eq!(
            t.wait_delivered(&[1], std::time::Duration::from_millis(5)),
            1,
            "partition 1's offset is never delivered: the wait ends at the timeout"
        );
        assert_eq!(t.pending(), 1);
        assert!(t.failure().is_none());
        t.fail("x".into());
        assert_eq!(t.failure().as_deref(), Some("x"));
    }

    #[test]
    fn partitions_are_independent_and_forgettable() {
        let t = Tracker::default();
        t.begin(0, 5, 1);
        t.begin(1, 7, 1);
        t.ack(1, 7);
        assert_eq!(t.take_done(), vec![(1, 7)]);
        t.forget(&[0]);
        t.ack(0, 5); // late ack of a revoked partition: ignored
        assert!(t.take_done().is_empty());
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn zero_delivery_offsets_are_done_at_once() {
        let t = Tracker::default();
        t.begin(2, 1, 0);
        assert_eq!(t.take_done(), vec![(2, 1)]);
    }
}
