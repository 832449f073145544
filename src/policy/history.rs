//! The policy history: every policy text published, retrievable by
//! (id, version) and checked by digest, so that a decision can be decided
//! again with the very text it names (`versions.policy_digest`).
//!
//! The policy topic is keyed `<id>@<version>` ([`history_key`]): compaction
//! keeps the latest record of each key, so every version survives it, for
//! as long as the topic is kept (compacted topics have no time-based
//! deletion; see `docs/incident-analysis.md` for the 5- and 10-year
//! recordkeeping settings). Reading the topic is the rollout module's job
//! (`rollout::read_history`); this module does no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{CompiledPolicy, PolicyError};

/// The key of a policy on the policy topic: `<id>@<version>`.
pub fn history_key(id: &str, version: &str) -> String {
    format!("{id}@{version}")
}

/// One published text of a policy version.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The compiled policy (its `digest` is the text's).
    pub policy: Arc<CompiledPolicy>,
    /// Where it was read (`topic[partition]@offset`).
    pub source: String,
}

/// Why a decision's policy could not be found in the history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryMiss {
    /// No text of this (id, version) was ever read.
    #[error("policy {id} version {version} is not in the policy history")]
    Missing {
        /// Policy id.
        id: String,
        /// Policy version.
        version: String,
    },
    /// Texts of this version exist, but none has the recorded digest.
    #[error("policy {id} version {version}: no text with digest {digest} in the history (found {found:?})")]
    DigestMismatch {
        /// Policy id.
        id: String,
        /// Policy version.
        version: String,
        /// The digest the decision recorded.
        digest: String,
        /// The digests found.
        found: Vec<String>,
    },
}

/// Every valid policy text read from the policy topic, by (id, version).
#[derive(Debug, Clone, Default)]
pub struct PolicyHistory {
    entries: BTreeMap<(String, String), Vec<HistoryEntry>>,
    /// Records of the topic that were not valid policies: (source, error).
    pub invalid: Vec<(String, String)>,
}

impl PolicyHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a published text read at `source`. An invalid text is kept in
    /// [`PolicyHistory::invalid`], not silently dropped; the same text read
    /// twice is kept once.
    pub fn add_text(&mut self, text: &str, source: &str) {
        match CompiledPolicy::from_toml_str(text, source) {
            Ok(p) => self.add(p, source),
            Err(e) => self.invalid.push((source.to_string(), error_line(&e))),
        }
    }

    /// Add a compiled policy.
    pub fn add(&mut self, p: CompiledPolicy, source: &str) {
        let list = self
            .entries
            .entry((p.id.clone(), p.version.clone()))
            .or_default();
        if list.iter().all(|e| e.policy.digest != p.digest) {
            list.push(HistoryEntry {
                policy: Arc::new(p),
                source: source.to_string(),
            });
        }
    }

    /// The policy of (`id`, `version`) whose text has `digest`. An empty
    /// `digest` (a decision recorded before digests were) takes the only
    /// text of that version, if there is exactly one.
    pub fn get(
        &self,
        id: &str,
        version: &str,
        digest: &str,
    ) -> Result<&Arc<CompiledPolicy>, HistoryMiss> {
        let list = self
            .entries
            .get(&(id.to_string(), version.to_string()))
            .filter(|l| !l.is_empty())
            .ok_or_else(|| HistoryMiss::Missing {
                id: id.to_string(),
                version: version.to_string(),
            })?;
        let found = if digest.is_empty() && list.len() == 1 {
            list.first()
        } else {
            list.iter().find(|e| e.policy.digest == digest)
        };
        found
            .map(|e| &e.policy)
            .ok_or_else(|| HistoryMiss::DigestMismatch {
                id: id.to_string(),
                version: version.to_string(),
                digest: digest.to_string(),
                found: list.iter().map(|e| e.policy.digest.clone()).collect(),
            })
    }

    /// Every (id, version) in the history, with how many texts each has.
    pub fn versions(&self) -> Vec<(String, String, usize)> {
        self.entries
            .iter()
            .map(|((id, v), l)| (id.clone(), v.clone(), l.len()))
            .collect()
    }

    /// Number of (id, version) pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the history is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn error_line(e: &PolicyError) -> String {
    e.to_string().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::EXAMPLE_POLICY;

    #[test]
    fn versions_are_found_by_id_version_and_digest() {
        let mut h = PolicyHistory::new();
        let v2 = EXAMPLE_POLICY.replace("version = \"2026.12.1\"", "version = \"2026.12.2\"");
        h.add_text(EXAMPLE_POLICY, "t[0]@0");
        h.add_text(&v2, "t[0]@1");
        h.add_text(&v2, "t[0]@2"); // the same text again: kept once
        h.add_text("not a policy", "t[0]@3");
        assert_eq!(h.len(), 2);
        assert_eq!(h.invalid.len(), 1);
        let d1 = crate::policy::digest(EXAMPLE_POLICY);
        let p = h.get("example", "2026.12.1", &d1).unwrap();
        assert_eq!(p.digest, d1);
        assert_eq!(h.get("example", "2026.12.1", "").unwrap().digest, d1);
        assert!(matches!(
            h.get("example", "2026.12.2", &d1),
            Err(HistoryMiss::DigestMismatch { .. })
        ));
        assert!(matches!(
            h.get("example", "2027.1.1", &d1),
            Err(HistoryMiss::Missing { .. })
        ));
        // Two texts under one version: the digest decides, "" is ambiguous.
        let other = format!("{v2}\n# an edit\n");
        h.add_text(&other, "t[0]@4");
        let d = crate::policy::digest(&other);
        assert_eq!(h.get("example", "2026.12.2", &d).unwrap().digest, d);
        assert!(h.get("example", "2026.12.2", "").is_err());
        assert_eq!(h.versions()[1], ("example".into(), "2026.12.2".into(), 2));
    }
}
