//! `clearance explain`: the derivation of one recorded decision.
//!
//! The trace comes from [`decide_traced`], the very code that decided (with
//! a [`Trace`](crate::decide::Trace) that keeps the steps instead of
//! [`decide`](crate::decide::decide)'s compiled-away one), applied to the
//! decision's recorded inputs and the policy text it names. An explanation
//! therefore cannot tell another story than the decision: if re-deriving
//! gives another outcome, reasons or rule ids than the record, the record
//! was not made from these inputs with this policy (tampered, or a policy
//! text that is not the one recorded), and [`Explanation::differences`]
//! says so.
//!
//! [`explain`] is pure; [`find_decision`] reads the decisions topic.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Config;
use crate::decide::{decide_traced, reason, Eligibility, RuleVerdict, Step, Verdict};
use crate::event::{Decision, Outcome};
use crate::policy::CompiledPolicy;

/// Why a decision could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The decision carries no inputs (a malformed request's deny).
    #[error("decision {0} has no recorded inputs (a malformed request is denied before any rule)")]
    NoInputs(String),
    /// The decision names another policy than the one given: what was
    /// recorded and what was given (id, version, digest).
    #[error("decision was made with policy {0}, not with the one given ({1})")]
    OtherPolicy(String, String),
    /// Reading the decisions topic failed (retryable: the broker may be
    /// down).
    #[error(transparent)]
    Read(#[from] crate::replay::ReplayError),
}

/// The derivation of one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The request.
    pub request_id: String,
    /// The decision as recorded.
    pub recorded: Decision,
    /// Every step, in order, ending with the re-derived verdict.
    pub steps: Vec<Step>,
    /// The re-derived verdict.
    pub verdict: Verdict,
    /// How the re-derived verdict differs from the record (empty: it is
    /// the record's outcome, reasons, rule ids, legal bases, obligations
    /// and versions).
    pub differences: Vec<String>,
}

/// Explain `d` with `policy`, which must be the policy the decision names
/// (id, version and digest; a decision recorded before digests were is
/// matched by id and version).
pub fn explain(policy: &CompiledPolicy, d: &Decision) -> Result<Explanation, ExplainError> {
    let v = &d.versions;
    let same = v.policy_id == policy.id
        && v.policy_version == policy.version
        && (v.policy_digest.is_empty() || v.policy_digest == policy.digest);
    if !same {
        return Err(ExplainError::OtherPolicy(
            format!(
                "{} {} (digest {})",
                v.policy_id, v.policy_version, v.policy_digest
            ),
            format!(
                "{} {} (digest {})",
                policy.id, policy.version, policy.digest
            ),
        ));
    }
    let inputs = d
        .inputs
        .as_ref()
        .ok_or_else(|| ExplainError::NoInputs(d.request_id.clone()))?;
    let elig = Eligibility {
        subject: inputs.subject.as_deref(),
        organization: inputs.organization.as_deref(),
        // The engine's staleness is not an input of the record: it shows
        // as the `stale_data` reason, which only stale data gives.
        data_stale: d.reasons.iter().any(|r| r == reason::STALE_DATA),
        owners: &inputs.owners,
    };
    let mut steps: Vec<Step> = Vec::new();
    let verdict = decide_traced(policy, &elig, &inputs.request, &mut steps);
    let differences = compare(d, &verdict);
    Ok(Explanation {
        request_id: d.request_id.clone(),
        recorded: d.clone(),
        steps,
        verdict,
        differences,
    })
}

/// How a re-derived verdict differs from a recorded decision, field by
/// field (empty when it does not).
pub fn compare(d: &Decision, v: &Verdict) -> Vec<String> {
    let mut out = Vec::new();
    if d.outcome != v.outcome {
        out.push(format!(
            "outcome: recorded {}, derived {}",
            d.outcome.as_str(),
            v.outcome.as_str()
        ));
    }
    let strs = |x: &[&'static str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let fields: [(&str, &Vec<String>, Vec<String>); 4] = [
        ("reasons", &d.reasons, strs(&v.reasons)),
        ("rule_ids", &d.rule_ids, v.rule_ids.clone()),
        ("legal_basis", &d.legal_basis, v.legal_basis.clone()),
        ("obligations", &d.obligations, strs(&v.obligations)),
    ];
    for (name, recorded, derived) in fields {
        if *recorded != derived {
            out.push(format!(
                "{name}: recorded {recorded:?}, derived {derived:?}"
            ));
        }
    }
    if d.versions != v.versions {
        out.push(format!(
            "versions: recorded {:?}, derived {:?}",
            d.versions, v.versions
        ));
    }
    out
}

/// The explanation as text: inputs, the derived country, every rule with
/// its verdict, authorizations, the ownership computation, the outcome.
pub fn render(e: &Explanation) -> String {
    let mut o = String::new();
    let d = &e.recorded;
    let _ = writeln!(o, "request {}", e.request_id);
    let _ = writeln!(
        o,
        "  recorded: {} {:?} (policy {} {}, data {})",
        d.outcome.as_str(),
        d.reasons,
        d.versions.policy_id,
        d.versions.policy_version,
        d.versions.data_version
    );
    if let Some(i) = &d.inputs {
        let r = &i.request;
        let _ = writeln!(o, "inputs");
        let _ = writeln!(
            o,
            "  request: subject {} model {} at {} org {}",
            r.subject_id,
            r.model,
            r.event_time,
            r.organization_id.as_deref().unwrap_or("-")
        );
        match &r.geo {
            Some(g) => {
                let _ = writeln!(
                    o,
                    "  geo: country {} subdivision {} postal code {} confidence {} vpn {} hosting {}",
                    g.country.as_deref().unwrap_or("-"),
                    g.subdivision.as_deref().unwrap_or("-"),
                    g.postal_code.as_deref().unwrap_or("-"),
                    g.confidence.map_or("-".to_string(), |c| c.to_string()),
                    g.vpn,
                    g.hosting
                );
            }
            None => {
                let _ = writeln!(o, "  geo: none");
            }
        }
        match &i.subject {
            Some(s) => {
                let _ = writeln!(
                    o,
                    "  subject record: {} version {} us_person_status {}",
                    s.id,
                    s.version,
                    serde_json::to_value(s.us_person_status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                );
            }
            None => {
                let _ = writeln!(o, "  subject record: none");
            }
        }
        if let Some(org) = &i.organization {
            let _ = writeln!(
                o,
                "  organization record: {} version {}",
                org.id, org.version
            );
        }
        for org in &i.owners {
            let _ = writeln!(o, "  owner record: {} version {}", org.id, org.version);
        }
    }
    let _ = writeln!(o, "derivation");
    for s in &e.steps {
        match s {
            Step::Model { model, known, tags } => {
                let _ = writeln!(
                    o,
                    "  model {model}: {}",
                    if !known {
                        "not in the catalog".to_string()
                    } else if tags.is_empty() {
                        "known, untagged (not controlled)".to_string()
                    } else {
                        format!("controlled, tags {tags:?}")
                    }
                );
            }
            Step::Country {
                mode,
                us_person,
                candidates,
                derived,
            } => {
                let _ = writeln!(
                    o,
                    "  derived country ({mode}): {derived:?}{}",
                    if *us_person {
                        " (a U.S. person: no nationality rule applies)"
                    } else {
                        ""
                    }
                );
                for c in candidates {
                    let _ = writeln!(
                        o,
                        "    {} {} acquired {}{}",
                        c.source,
                        c.country,
                        c.acquired_on.as_deref().unwrap_or("(date unknown)"),
                        if c.counts { "  <- counts" } else { "" }
                    );
                }
            }
            Step::Builtin { id, reason } => {
                let _ = writeln!(o, "  {id}: deny {reason}");
            }
            Step::Rule {
                id,
                kind,
                effect,
                verdict,
                citations,
            } => {
                let what = match verdict {
                    RuleVerdict::Matched { reason } => format!(
                        "MATCHED -> {} {reason}",
                        match effect {
                            crate::policy::Effect::Allow => "allow",
                            crate::policy::Effect::Deny => "deny",
                        }
                    ),
                    RuleVerdict::NotMatched => "not matched".to_string(),
                    RuleVerdict::MissingData { reason } => {
                        format!("MISSING DATA -> deny {reason}")
                    }
                    RuleVerdict::SkippedMissingData { reason } => {
                        format!("skipped: missing data ({reason}), on_missing_data = skip")
                    }
                };
                let cites = if citations.is_empty() {
                    String::new()
                } else {
                    format!(" {citations:?}")
                };
                let _ = writeln!(o, "  rule {id} ({kind}): {what}{cites}");
            }
            Step::Ownership(t) => {
                let _ = writeln!(
                    o,
                    "    ownership (threshold {}%, restricted parties' shares summed; a restricted owner counts in full):",
                    t.threshold_percent
                );
                for n in &t.nodes {
                    let _ = writeln!(
                        o,
                        "      {}{}: {}",
                        n.id,
                        n.version.map_or(String::new(), |v| format!(" v{v}")),
                        if n.restricted {
                            "restricted"
                        } else if n.possibly_restricted {
                            "possibly restricted (missing data)"
                        } else {
                            "not restricted"
                        }
                    );
                    for (id, p, judged) in &n.owners {
                        let _ = writeln!(o, "        owner {id} {p}%: {judged}");
                    }
                }
            }
            Step::Authorization {
                rule,
                authorization,
                lifted,
            } => {
                let _ = writeln!(
                    o,
                    "  authorization {authorization} on rule {rule}: {}",
                    if *lifted {
                        "valid on the event date -> deny lifted"
                    } else {
                        "matches but has expired -> deny stays (authorization_expired)"
                    }
                );
            }
            Step::Outcome(v) => {
                let _ = writeln!(
                    o,
                    "outcome: {} {:?} rule_ids {:?}",
                    v.outcome.as_str(),
                    v.reasons,
                    v.rule_ids
                );
            }
        }
    }
    if e.differences.is_empty() {
        let _ = writeln!(o, "the derivation gives the recorded decision");
    } else {
        let _ = writeln!(o, "THE DERIVATION DIFFERS FROM THE RECORD:");
        for x in &e.differences {
            let _ = writeln!(o, "  {x}");
        }
    }
    o
}

/// Find the decision of `request_id` on the decisions topic, among the
/// records whose timestamps lie in [`from`, `to`) (each partition's range
/// resolved with `offsets_for_times`, as `clearance replay` does: the same
/// window code, [`crate::replay::resolve`]; absent bounds: the start and
/// the current end). The last decision of that id in the window, if
/// several.
pub fn find_decision(
    cfg: &Config,
    request_id: &str,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    timeout: Duration,
) -> Result<Option<Decision>, ExplainError> {
    let window = crate::replay::Window::Times {
        from: from.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        to,
    };
    let (ranges, _notes) = crate::replay::resolve(cfg, &window)?;
    let mut found: Option<Decision> = None;
    // Decode only the records that hold this id as a JSON string.
    let needle = serde_json::Value::from(request_id).to_string();
    crate::replay::read_ranges(cfg, &ranges, timeout, |_, bytes| {
        if !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return;
        }
        if let Ok(d) = serde_json::from_slice::<Decision>(bytes) {
            if d.request_id == request_id {
                found = Some(d);
            }
        }
    })?;
    Ok(found)
}

/// Whether an outcome is an allow, for callers' summaries.
pub fn allowed(o: Outcome) -> bool {
    o == Outcome::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::decide;
    use crate::event::{Decision, DecisionInputs};
    use crate::policy::{testing::load_tests, CompiledPolicy};
    use std::sync::Arc;

    fn example_cases() -> Vec<crate::policy::testing::TestCase> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/example.tests.toml");
        let text = std::fs::read_to_string(path).expect("tests file");
        load_tests(&text, path).expect("valid tests")
    }

    /// A decision as the pipeline records it, from a policy test case.
    fn recorded(policy: &CompiledPolicy, c: &crate::policy::testing::TestCase) -> Decision {
        let owners: Vec<Arc<crate::event::OrgRecord>> =
            c.owner_organizations.values().cloned().collect();
        let elig = Eligibility {
            subject: c.subject.as_ref(),
            organization: c.organization.as_ref(),
            data_stale: c.data_stale,
            owners: &owners,
        };
        let v = decide(policy, &elig, &c.request);
        Decision {
            request_id: c.request.request_id.clone(),
            outcome: v.outcome,
            reasons: v.reasons.iter().map(|s| s.to_string()).collect(),
            rule_ids: v.rule_ids.clone(),
            legal_basis: v.legal_basis.clone(),
            obligations: v.obligations.iter().map(|s| s.to_string()).collect(),
            versions: v.versions.clone(),
            inputs: Some(DecisionInputs {
                request: c.request.clone(),
                subject: c.subject.clone().map(Arc::new),
                organization: c.organization.clone().map(Arc::new),
                owners: v.owner_records.clone(),
            }),
            decided_at: OffsetDateTime::UNIX_EPOCH,
            source: None,
            engine_instance: "test".into(),
        }
    }

    #[test]
    fn the_traced_outcome_is_the_decision_for_every_policy_test_case() {
        let example = CompiledPolicy::example();
        let cases = example_cases();
        assert!(cases.len() >= 50, "{} cases", cases.len());
        for c in &cases {
            let policy = match c.nationality_mode {
                Some(m) => example.with_nationality_mode(m),
                None => example.clone(),
            };
            let d = recorded(&policy, c);
            let e = explain(&policy, &d).expect("explains");
            assert!(e.differences.is_empty(), "{}: {:?}", c.name, e.differences);
            assert_eq!(e.verdict.outcome, c.expect, "{}", c.name);
            assert_eq!(e.verdict.reasons, c.reasons, "{}", c.name);
            assert!(
                matches!(e.steps.last(), Some(Step::Outcome(v)) if **v == e.verdict),
                "{}: the trace ends with the verdict",
                c.name
            );
        }
    }

    fn scenario(n: &str) -> String {
        let example = CompiledPolicy::example();
        let c = example_cases()
            .into_iter()
            .find(|c| c.scenario.as_deref() == Some(n))
            .expect("scenario case");
        render(&explain(&example, &recorded(&example, &c)).expect("explains"))
    }

    #[test]
    fn scenarios_2_10_13_14_name_their_rule_path() {
        let s2 = scenario("2");
        assert!(
            s2.contains("derived country (most_recent): [\"CN\"]"),
            "{s2}"
        );
        assert!(
            s2.contains("citizenship CN acquired 1992-07-15  <- counts"),
            "{s2}"
        );
        assert!(
            s2.contains("rule us-person-status-known (us_person_status_known): not matched"),
            "{s2}"
        );
        assert!(
            s2.contains("rule deemed-export-nationality (nationality_in): MATCHED -> deny restricted_nationality"),
            "{s2}"
        );
        assert!(
            s2.contains("outcome: deny [\"restricted_nationality\"]"),
            "{s2}"
        );

        let s10 = scenario("10");
        assert!(
            s10.contains(
                "rule restricted-ownership (ownership_in): MATCHED -> deny restricted_ownership"
            ),
            "{s10}"
        );
        assert!(
            s10.contains("owner parent-a 30%: restricted (headquarters)"),
            "{s10}"
        );
        assert!(
            s10.contains("owner founders 45%: not restricted (headquarters)"),
            "{s10}"
        );

        let s13 = scenario("13");
        assert!(
            s13.contains("rule deemed-export-nationality (nationality_in): MATCHED -> deny restricted_nationality"),
            "{s13}"
        );
        assert!(
            s13.contains("authorization LIC-1 on rule deemed-export-nationality: valid on the event date -> deny lifted"),
            "{s13}"
        );
        assert!(s13.contains("outcome: allow [\"authorized\"]"), "{s13}");

        let s14 = scenario("14");
        assert!(
            s14.contains(
                "authorization LIC-1 on rule deemed-export-nationality: matches but has expired"
            ),
            "{s14}"
        );
        assert!(s14.contains("outcome: deny"), "{s14}");
        for s in [&s2, &s10, &s13, &s14] {
            assert!(
                s.contains("the derivation gives the recorded decision"),
                "{s}"
            );
        }
    }

    #[test]
    fn a_tampered_record_and_another_policy_are_told() {
        let example = CompiledPolicy::example();
        let c = example_cases()
            .into_iter()
            .find(|c| c.scenario.as_deref() == Some("2"))
            .expect("scenario 2");
        let mut d = recorded(&example, &c);
        d.outcome = Outcome::Allow;
        let e = explain(&example, &d).expect("explains");
        assert_eq!(e.differences, ["outcome: recorded allow, derived deny"]);
        assert!(render(&e).contains("THE DERIVATION DIFFERS FROM THE RECORD"));
        let mut other = example.clone();
        other.version = "9".into();
        assert!(matches!(
            explain(&other, &d),
            Err(ExplainError::OtherPolicy(..))
        ));
        d.inputs = None;
        assert!(matches!(
            explain(&example, &d),
            Err(ExplainError::NoInputs(_))
        ));
    }
}
