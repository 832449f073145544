//! "A policy is swapped whole" (ARCHITECTURE.md): every field of a decision
//! comes from one policy, even when a rollout lands between two loads of
//! the active policy. The rollout is made deterministic by an
//! [`ActivePolicy`] that swaps itself on every load.

use std::collections::BTreeSet;

use super::*;
use crate::event::EligibilityRecord;
use crate::loadgen;

const EXAMPLE: &str = include_str!("../../policies/example.toml");

/// The example policy (v1), and a v2 with another id, version and data
/// version, in which `haiku-4` is controlled too.
fn two_policies() -> (CompiledPolicy, CompiledPolicy) {
    let v1 = CompiledPolicy::from_toml_str(EXAMPLE, "v1.toml").expect("v1");
    let text = EXAMPLE
        .replacen("id = \"example\"", "id = \"example-b\"", 1)
        .replacen("version = \"2026.12.1\"", "version = \"2026.12.9\"", 1)
        .replacen(
            "\"haiku-4\" = { tags = [] }",
            "\"haiku-4\" = { tags = [\"order-2026-11\"] }",
            1,
        )
        .replacen(
            "version = \"ear-sup1-740@2025-09;",
            "version = \"ear-sup1-740@2026-01;",
            1,
        );
    let v2 = CompiledPolicy::from_toml_str(&text, "v2.toml").expect("v2");
    assert_ne!(v1.id, v2.id);
    assert_ne!(v1.version, v2.version);
    assert_ne!(v1.data_version, v2.data_version);
    (v1, v2)
}

#[test]
fn every_field_of_a_decision_comes_from_one_policy() {
    let (v1, v2) = two_policies();
    // A Chinese national on an H-1B visa asks for haiku-4: open under v1,
    // controlled (denied) under v2.
    let subject = loadgen::subject("wp", 1);
    assert_eq!(subject.category, loadgen::Category::ChineseH1b);
    let store = Store::new();
    store.apply(EligibilityRecord::User(subject.record.clone().unwrap()));
    let feed = crate::eligibility::feed::FeedState::default();
    let req = loadgen::request(&subject, "wp-1".into(), loadgen::UNTAGGED_MODEL);
    let elig = Eligibility {
        subject: subject.record.as_ref(),
        ..Eligibility::default()
    };
    let (d1, d2) = (decide(&v1, &elig, &req), decide(&v2, &elig, &req));
    assert_eq!(d1.outcome, Outcome::Allow, "{:?}", d1.reasons);
    assert_eq!(d2.outcome, Outcome::Deny, "{:?}", d2.reasons);
    assert_ne!(d1.reasons, d2.reasons);

    let active = ActivePolicy::swapping_on_every_load(v1.clone(), v2.clone());
    let mut named = BTreeSet::new();
    for i in 0..6 {
        let source = SourceCoordinates {
            topic: "requests".into(),
            partition: 0,
            offset: i,
        };
        let d = decide_request(&active, &store, &feed, "test", req.clone(), source);
        let policy = [&v1, &v2]
            .into_iter()
            .find(|p| p.version == d.versions.policy_version)
            .unwrap_or_else(|| panic!("unknown version {}", d.versions.policy_version));
        named.insert(policy.version.clone());
        let inputs = d.inputs.as_ref().expect("inputs");
        let again = decide(
            policy,
            &Eligibility {
                subject: inputs.subject.as_deref(),
                organization: inputs.organization.as_deref(),
                data_stale: false,
                owners: &inputs.owners,
            },
            &inputs.request,
        );
        let what = format!("decision {i}, naming {}", policy.version);
        assert_eq!(d.outcome, again.outcome, "{what}: outcome");
        let reasons: Vec<String> = again.reasons.iter().map(|r| r.to_string()).collect();
        assert_eq!(d.reasons, reasons, "{what}: reasons");
        assert_eq!(d.rule_ids, again.rule_ids, "{what}: rule ids");
        assert_eq!(d.legal_basis, again.legal_basis, "{what}: legal basis");
        assert_eq!(d.versions.policy_id, policy.id, "{what}: policy id");
        assert_eq!(
            d.versions.data_version, policy.data_version,
            "{what}: data version"
        );
    }
    // One load per decision: the self-swapping policy alternates, so both
    // versions decide.
    assert_eq!(
        named.len(),
        2,
        "one load of the policy per decision: both versions decide in turn, got {named:?}"
    );
}
