//! `clearance bench cache`: the eligibility cache at scale, in one process,
//! without Kafka (BENCHMARKS.md, "The cache at scale").
//!
//! 1. **Memory.** Fills a [`Store`] with one record per subject, the load
//!    generator's (`loadgen::subject`; the tenth of its subjects that has
//!    none gets the next subject's record under its own id), and reads the
//!    process's resident set (`VmRSS`) before and after: bytes of RSS per
//!    subject.
//! 2. **Lookup plus decide** on that store, with a compiled policy, for
//!    requests of random subjects: *batched*, a loop over independent
//!    requests (the CPU may overlap their memory accesses), and *single*,
//!    a chain in which the next request depends on the previous verdict (no
//!    overlap: one decision's latency).
//! 3. **The DRAM probe**, in the same run: a dependent random walk (a
//!    single cycle through a shuffled array of `u64` indices) over as much
//!    memory as the store took. One step is one dependent access to memory
//!    that is not in any cache: the floor that one lookup pays.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use crate::decide::{decide, Eligibility};
use crate::eligibility::Store;
use crate::event::{AccessRequest, EligibilityRecord, UserRecord};
use crate::loadgen;
use crate::policy::CompiledPolicy;

/// What to measure.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Subjects, each with a record.
    pub subjects: usize,
    /// Decisions per lookup measurement (0: no lookup measurement).
    pub lookups: usize,
    /// Run the DRAM probe (it allocates as much memory again as the store).
    pub probe: bool,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    /// Subjects of the population.
    pub subjects: usize,
    /// User records the store holds (one per subject).
    pub records: i64,
    /// Seconds to build and apply every record.
    pub fill_secs: f64,
    /// Resident set before the fill, bytes.
    pub rss_before: u64,
    /// Resident set after the fill, bytes.
    pub rss_after: u64,
    /// `(rss_after - rss_before) / records`: bytes of RSS per subject.
    pub bytes_per_record: f64,
    /// Lookup plus decide, independent requests: ns per decision.
    pub batched_ns: Option<f64>,
    /// Lookup plus decide, each request depending on the previous verdict:
    /// ns per decision.
    pub single_ns: Option<f64>,
    /// One dependent random access over as much memory as the store took:
    /// ns per access.
    pub probe_ns: Option<f64>,
    /// Bytes the probe walked over.
    pub probe_bytes: Option<u64>,
}

/// Resident set of this process (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// A small, fast generator (the measurement must not depend on `rand`'s
/// cost).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The record of subject `i`: the load generator's, or for a subject it
/// gives none, the next subject's under id `u{i}`.
pub fn record(i: usize) -> UserRecord {
    match loadgen::subject("", i).record {
        Some(rec) => rec,
        None => {
            let mut rec = record(i + 1);
            rec.id = format!("u{i}");
            rec
        }
    }
}

/// Fill a store with the records of `subjects` subjects.
pub fn fill(subjects: usize) -> Store {
    let store = Store::new();
    for i in 0..subjects {
        store.apply(EligibilityRecord::User(record(i)));
    }
    store
}

/// Look the request's subject (and organization) up, then decide: the
/// pipeline's lookups ([`Store::records_for`]) without its record.
pub fn lookup_and_decide(policy: &CompiledPolicy, store: &Store, req: &AccessRequest) -> bool {
    let (subject, organization) = store.records_for(req);
    let elig = Eligibility {
        subject: subject.as_deref(),
        organization: organization.as_deref(),
        data_stale: false,
        owners: store,
    };
    let v = decide(policy, &elig, req);
    v.outcome == crate::event::Outcome::Allow
}

/// Requests of `n` random subjects out of `subjects`.
fn requests(subjects: usize, n: usize, g: &mut SplitMix) -> Vec<AccessRequest> {
    (0..n)
        .map(|k| {
            let i = g.below(subjects);
            let s = loadgen::subject("", i);
            loadgen::request(&s, format!("r{k}"), loadgen::model_for(i))
        })
        .collect()
}

/// `len` indices forming one random cycle (Sattolo's shuffle): from any
/// slot, following `next` visits every slot before coming back.
fn cycle(len: usize, g: &mut SplitMix) -> Vec<u64> {
    let mut next: Vec<u64> = (0..len as u64).collect();
    for i in (1..len).rev() {
        let j = g.below(i);
        next.swap(i, j);
    }
    next
}

/// The DRAM probe: a random cycle of `len` `u64`s, walked `steps` times.
/// Returns ns per step.
fn probe(len: usize, steps: usize, g: &mut SplitMix) -> f64 {
    let next = cycle(len.max(2), g);
    let mut at = 0usize;
    let t = Instant::now();
    for _ in 0..steps {
        at = next[at] as usize;
    }
    let ns = t.elapsed().as_nanos() as f64 / steps as f64;
    black_box(at);
    ns
}

/// Run the measurements.
pub fn cache(opts: &CacheOptions, policy: &CompiledPolicy) -> CacheReport {
    let mut g = SplitMix(0x5EED);
    let rss_before = rss_bytes();
    let t = Instant::now();
    let store = fill(opts.subjects);
    let fill_secs = t.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let records = store.user_count();
    let grown = rss_after.saturating_sub(rss_before);
    let mut report = CacheReport {
        subjects: opts.subjects,
        records,
        fill_secs,
        rss_before,
        rss_after,
        bytes_per_record: grown as f64 / records.max(1) as f64,
        batched_ns: None,
        single_ns: None,
        probe_ns: None,
        probe_bytes: None,
    };
    if opts.lookups > 0 && opts.subjects > 0 {
        // Fewer distinct requests than decisions: the requests stay small
        // beside the store, and each is used in random order.
        let reqs = requests(opts.subjects, opts.lookups.min(200_000), &mut g);
        let order: Vec<u32> = (0..opts.lookups)
            .map(|_| g.below(reqs.len()) as u32)
            .collect();
        // Warm the code paths.
        for r in reqs.iter().take(10_000) {
            black_box(lookup_and_decide(policy, &store, r));
        }
        let t = Instant::now();
        let mut allowed = 0usize;
        for &k in &order {
            allowed += usize::from(lookup_and_decide(policy, &store, &reqs[k as usize]));
        }
        report.batched_ns = Some(t.elapsed().as_nanos() as f64 / opts.lookups as f64);
        black_box(allowed);
        // Single: the next request's index depends on this verdict.
        let t = Instant::now();
        let mut k = 0usize;
        for &o in &order {
            let allow = lookup_and_decide(policy, &store, &reqs[k]);
            k = (o as usize + usize::from(allow)) % reqs.len();
        }
        report.single_ns = Some(t.elapsed().as_nanos() as f64 / opts.lookups as f64);
        black_box(k);
    }
    if opts.probe {
        let len = (grown as usize / 8).max(1 << 20);
        report.probe_bytes = Some(len as u64 * 8);
        report.probe_ns = Some(probe(len, opts.lookups.max(1_000_000), &mut g));
    }
    drop(store);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fill_holds_one_record_per_subject() {
        assert!(rss_bytes() > 0, "VmRSS is readable");
        let store = fill(1_000);
        assert_eq!(store.user_count(), 1_000);
        let mut borrowed = 0;
        for i in 0..1_000 {
            let id = format!("u{i}");
            let got = store.user(&id).expect("every subject has a record");
            assert_eq!(got.id, id);
            // (The timestamps are the generator's `now`: compare the rest.)
            let want = match loadgen::subject("", i).record {
                Some(own) => own,
                None => {
                    borrowed += 1;
                    loadgen::subject("", i + 1)
                        .record
                        .expect("the next has one")
                }
            };
            assert_eq!(got.us_person_status, want.us_person_status);
            assert_eq!(got.citizenships, want.citizenships);
            assert_eq!(got.permanent_residencies, want.permanent_residencies);
        }
        assert_eq!(borrowed, 100, "the load generator gives a tenth no record");
    }

    #[test]
    fn the_probe_visits_every_slot_once_per_cycle() {
        // Sattolo's shuffle gives a single cycle: walking len steps from 0
        // comes back to 0 and not before.
        let len = 1000;
        let next = cycle(len, &mut SplitMix(1));
        let mut at = 0usize;
        for step in 1..=len {
            at = next[at] as usize;
            if at == 0 {
                assert_eq!(step, len, "a cycle shorter than the array");
            }
        }
        assert_eq!(at, 0);
    }
}
