//! What the status page shows of recent decisions: counts of the decisions
//! made by this process, by outcome and model, and the last
//! [`RECENT_DENIALS`] denials as request id and reasons only (no subject,
//! no organization, no inputs).
//!
//! The pipeline calls [`record`] once per decision it publishes. The log is
//! one per process, like the Prometheus recorder.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::event::{Decision, Outcome};
use crate::vocab::reason;

/// How many denials the log keeps.
pub const RECENT_DENIALS: usize = 20;

/// Models kept apart in the counts; decisions on any further model count
/// under `other` (the label stays bounded whatever requests name).
pub const MAX_MODELS: usize = 64;

/// One denial, as the status page shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Denial {
    /// When it was decided (RFC 3339).
    pub at: String,
    /// The request id.
    pub request_id: String,
    /// The reason codes.
    pub reasons: Vec<String>,
}

/// Decisions by outcome, the same by model, and the recent denials.
#[derive(Debug, Default)]
pub struct DecisionLog {
    allow: AtomicU64,
    deny: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_model: BTreeMap<String, [u64; 2]>,
    /// Formatted when read (the status page), not per denial.
    denials: VecDeque<(time::OffsetDateTime, String, Vec<String>)>,
}

/// Counts by outcome.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Decisions that allowed.
    pub allow: u64,
    /// Decisions that denied.
    pub deny: u64,
}

impl DecisionLog {
    /// An empty log.
    pub const fn new() -> Self {
        DecisionLog {
            allow: AtomicU64::new(0),
            deny: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                by_model: BTreeMap::new(),
                denials: VecDeque::new(),
            }),
        }
    }

    /// Count `d` and, if it denied, keep its id and reasons.
    pub fn record(&self, d: &Decision) {
        let deny = d.outcome == Outcome::Deny;
        if deny {
            self.deny.fetch_add(1, Ordering::Relaxed);
        } else {
            self.allow.fetch_add(1, Ordering::Relaxed);
        }
        let model = match d.inputs.as_ref() {
            _ if d.reasons.iter().any(|r| r == reason::UNKNOWN_MODEL) => "unknown",
            Some(i) => i.request.model.as_str(),
            None => "unknown",
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = if g.by_model.contains_key(model) || g.by_model.len() < MAX_MODELS {
            model
        } else {
            "other"
        };
        if let Some(c) = g.by_model.get_mut(key) {
            c[usize::from(deny)] += 1;
        } else {
            let mut c = [0, 0];
            c[usize::from(deny)] = 1;
            g.by_model.insert(key.to_string(), c);
        }
        if deny {
            if g.denials.len() == RECENT_DENIALS {
                g.denials.pop_front();
            }
            g.denials
                .push_back((d.decided_at, d.request_id.clone(), d.reasons.clone()));
        }
    }

    /// Decisions by outcome.
    pub fn counts(&self) -> Counts {
        Counts {
            allow: self.allow.load(Ordering::Relaxed),
            deny: self.deny.load(Ordering::Relaxed),
        }
    }

    /// Decisions by model and outcome.
    pub fn by_model(&self) -> BTreeMap<String, Counts> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.by_model
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    Counts {
                        allow: c[0],
                        deny: c[1],
                    },
                )
            })
            .collect()
    }

    /// The recent denials, newest first.
    pub fn denials(&self) -> Vec<Denial> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.denials
            .iter()
            .rev()
            .map(|(at, request_id, reasons)| Denial {
                at: at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                request_id: request_id.clone(),
                reasons: reasons.clone(),
            })
            .collect()
    }
}

static LOG: DecisionLog = DecisionLog::new();

/// The process's log.
pub fn log() -> &'static DecisionLog {
    &LOG
}

/// Record a decision this process publishes, in [`log`]: the pipeline's
/// hook.
pub fn record(d: &Decision) {
    LOG.record(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Decision {
        let text = match name {
            "allow" => include_str!("../../schemas/examples/decision-allow.json"),
            _ => include_str!("../../schemas/examples/decision-deny.json"),
        };
        serde_json::from_str(text).expect("example decision")
    }

    #[test]
    fn keeps_the_last_denials_newest_first_and_counts_by_model() {
        let log = DecisionLog::new();
        let allow = example("allow");
        let mut deny = example("deny");
        assert_eq!(deny.outcome, Outcome::Deny);
        log.record(&allow);
        for i in 0..RECENT_DENIALS + 5 {
            deny.request_id = format!("d-{i}");
            log.record(&deny);
        }
        assert_eq!(
            log.counts(),
            Counts {
                allow: 1,
                deny: RECENT_DENIALS as u64 + 5
            }
        );
        let ds = log.denials();
        assert_eq!(ds.len(), RECENT_DENIALS);
        assert_eq!(ds[0].request_id, format!("d-{}", RECENT_DENIALS + 4));
        assert_eq!(ds[RECENT_DENIALS - 1].request_id, "d-5");
        assert_eq!(ds[0].reasons, deny.reasons);
        let model = deny.inputs.as_ref().unwrap().request.model.clone();
        assert_eq!(log.by_model()[&model].deny, RECENT_DENIALS as u64 + 5);
    }

    #[test]
    fn models_beyond_the_bound_count_as_other() {
        let log = DecisionLog::new();
        let mut d = example("allow");
        for i in 0..MAX_MODELS + 10 {
            d.inputs.as_mut().unwrap().request.model = format!("m{i}");
            log.record(&d);
        }
        let by = log.by_model();
        assert_eq!(by.len(), MAX_MODELS + 1);
        assert_eq!(by["other"].allow, 10);
    }
}
