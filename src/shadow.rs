//! Shadow mode: a candidate policy evaluated beside the active one on live
//! traffic. The decision published uses only the active policy; where the
//! candidate decides otherwise (outcome or reasons), a [`ShadowDifference`]
//! goes to `topics.shadow` and `clearance_shadow_differences_total{from,to,
//! model}` counts it. The candidate is decided from the very inputs the
//! active decision used (the same records, the same staleness flag), by the
//! same `decide`. No I/O here: the pipeline publishes the records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::decide::{decide, Eligibility, OrgLookup, Verdict};
use crate::event::{Decision, ShadowDifference, ShadowSide};
use crate::metrics as m;
use crate::policy::{CompiledPolicy, PolicyError};
use crate::vocab::reason;

/// The candidate policy and its counts.
#[derive(Debug)]
pub struct Shadow {
    policy: Arc<CompiledPolicy>,
    evaluated: AtomicU64,
    differences: AtomicU64,
}

/// What `/status` shows of shadow mode.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowInfo {
    /// Candidate policy id.
    pub id: String,
    /// Candidate policy version.
    pub version: String,
    /// SHA-256 of its text.
    pub digest: String,
    /// Requests evaluated with it.
    pub evaluated: u64,
    /// Requests on which it decided otherwise.
    pub differences: u64,
}

impl Shadow {
    /// Shadow mode with `policy` as the candidate.
    pub fn new(policy: CompiledPolicy) -> Self {
        Shadow {
            policy: Arc::new(policy),
            evaluated: AtomicU64::new(0),
            differences: AtomicU64::new(0),
        }
    }

    /// Load `policy.shadow_file`, if configured.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Option<Shadow>, PolicyError> {
        cfg.policy
            .shadow_file
            .as_deref()
            .map(|p| CompiledPolicy::load_file(p).map(Shadow::new))
            .transpose()
    }

    /// The candidate policy.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// Its counts, for `/status`.
    pub fn info(&self) -> ShadowInfo {
        ShadowInfo {
            id: self.policy.id.clone(),
            version: self.policy.version.clone(),
            digest: self.policy.digest.clone(),
            evaluated: self.evaluated.load(Ordering::Relaxed),
            differences: self.differences.load(Ordering::Relaxed),
        }
    }

    /// Decide `active`'s request with the candidate, from the inputs it
    /// recorded (owner records through `owners`, as live), and return the
    /// difference, if the outcome or the reasons differ.
    pub fn compare(
        &self,
        active: &Decision,
        owners: &dyn OrgLookup,
        data_stale: bool,
    ) -> Option<ShadowDifference> {
        let inputs = active.inputs.as_ref()?;
        self.evaluated.fetch_add(1, Ordering::Relaxed);
        let elig = Eligibility {
            subject: inputs.subject.as_deref(),
            organization: inputs.organization.as_deref(),
            data_stale,
            owners,
        };
        let v = decide(&self.policy, &elig, &inputs.request);
        let same = v.outcome == active.outcome
            && v.reasons.len() == active.reasons.len()
            && v.reasons.iter().zip(&active.reasons).all(|(a, b)| *a == b);
        if same {
            return None;
        }
        self.differences.fetch_add(1, Ordering::Relaxed);
        let unknown = |rs: &[String]| rs.iter().any(|r| r == reason::UNKNOWN_MODEL);
        let model = if unknown(&active.reasons) || v.reasons.contains(&reason::UNKNOWN_MODEL) {
            "unknown".to_string()
        } else {
            inputs.request.model.clone()
        };
        metrics::counter!(
            m::SHADOW_DIFFERENCES_TOTAL,
            "from" => active.outcome.as_str(),
            "to" => v.outcome.as_str(),
            "model" => model
        )
        .increment(1);
        Some(ShadowDifference {
            request_id: active.request_id.clone(),
            subject_id: inputs.request.subject_id.clone(),
            model: inputs.request.model.clone(),
            active: ShadowSide {
                outcome: active.outcome,
                reasons: active.reasons.clone(),
                rule_ids: active.rule_ids.clone(),
                policy_id: active.versions.policy_id.clone(),
                policy_version: active.versions.policy_version.clone(),
                policy_digest: active.versions.policy_digest.clone(),
            },
            shadow: side(&v),
            decided_at: active.decided_at,
            source: active.source.clone(),
        })
    }
}

fn side(v: &Verdict) -> ShadowSide {
    ShadowSide {
        outcome: v.outcome,
        reasons: v.reasons.iter().map(|s| s.to_string()).collect(),
        rule_ids: v.rule_ids.clone(),
        policy_id: v.versions.policy_id.clone(),
        policy_version: v.versions.policy_version.clone(),
        policy_digest: v.versions.policy_digest.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::NoOrgs;
    use crate::event::{AccessRequest, DecisionInputs, Outcome, SourceCoordinates, UserRecord};
    use crate::policy::EXAMPLE_POLICY;

    fn cn_user() -> UserRecord {
        serde_json::from_value(serde_json::json!({
            "id": "u", "version": 1, "us_person_status": "foreign_person",
            "citizenships": [{"country": "CN"}],
            "verification": {"status": "verified", "expires_at": "2030-01-01T00:00:00Z"}
        }))
        .unwrap()
    }

    fn decided(policy: &CompiledPolicy, model: &str) -> Decision {
        let u = cn_user();
        let req: AccessRequest = serde_json::from_value(serde_json::json!({
            "request_id": "r", "event_time": "2026-12-01T00:00:00Z", "subject_id": "u",
            "model": model, "geo": {"country": "US", "confidence": 0.9}
        }))
        .unwrap();
        let v = decide(
            policy,
            &Eligibility {
                subject: Some(&u),
                ..Eligibility::default()
            },
            &req,
        );
        Decision {
            request_id: "r".into(),
            outcome: v.outcome,
            reasons: v.reasons.iter().map(|s| s.to_string()).collect(),
            rule_ids: v.rule_ids,
            legal_basis: v.legal_basis,
            obligations: vec![],
            versions: v.versions,
            inputs: Some(DecisionInputs {
                request: req,
                subject: Some(Arc::new(u)),
                organization: None,
                owners: vec![],
            }),
            decided_at: time::OffsetDateTime::UNIX_EPOCH,
            source: Some(SourceCoordinates {
                topic: "t".into(),
                partition: 0,
                offset: 7,
            }),
            engine_instance: "i".into(),
        }
    }

    #[test]
    fn a_candidate_that_controls_another_model_differs_only_there() {
        let active = CompiledPolicy::example();
        let candidate = CompiledPolicy::from_toml_str(
            &EXAMPLE_POLICY
                .replace("version = \"2026.12.1\"", "version = \"2026.12.2\"")
                .replace(
                    "\"haiku-4\" = { tags = [] }",
                    "\"haiku-4\" = { tags = [\"order-2026-11\"] }",
                ),
            "candidate.toml",
        )
        .unwrap();
        let shadow = Shadow::new(candidate);
        // fable-5: both deny a Chinese national the same way.
        assert!(shadow
            .compare(&decided(&active, "fable-5"), &NoOrgs, false)
            .is_none());
        // haiku-4: allowed by the active policy, denied by the candidate.
        let d = shadow
            .compare(&decided(&active, "haiku-4"), &NoOrgs, false)
            .expect("a difference");
        assert_eq!(d.active.outcome, Outcome::Allow);
        assert_eq!(d.shadow.outcome, Outcome::Deny);
        assert_eq!(d.shadow.reasons, ["restricted_nationality"]);
        assert_eq!(d.active.policy_version, "2026.12.1");
        assert_eq!(d.shadow.policy_version, "2026.12.2");
        assert_eq!(d.source.as_ref().map(|s| s.offset), Some(7));
        let info = shadow.info();
        assert_eq!((info.evaluated, info.differences), (2, 1));
    }
}
