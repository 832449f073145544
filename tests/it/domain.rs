//! End-to-end domain cases through the real broker: regions placed by
//! subdivision and postal code, ownership followed through owner records
//! (OFAC's 50% rule), and records whose dates cannot be read.

use std::time::Duration;

use clearance::decide::{decide, Eligibility};
use clearance::event::{
    AccessRequest, DeadLetter, Decision, EligibilityRecord, Geolocation, OrgRecord, Outcome, Owner,
    OwnerKind, RecordVersion, UserRecord,
};
use clearance::policy::CompiledPolicy;
use time::macros::datetime;

use crate::harness::*;
use crate::schemas;

fn us_citizen(id: &str) -> UserRecord {
    serde_json::from_value(serde_json::json!({
        "id": id, "version": 1, "us_person_status": "citizen",
        "citizenships": [{"country": "US", "acquired_on": "1990-01-01"}],
        "verification": {"status": "verified", "verified_at": "2026-01-01T00:00:00Z", "expires_at": "2028-01-01T00:00:00Z"}
    }))
    .expect("user")
}

fn request(id: &str, subject: &str, model: &str, geo: Geolocation) -> (Vec<u8>, Vec<u8>) {
    let r = AccessRequest {
        request_id: id.into(),
        event_time: datetime!(2026-11-28 12:00 UTC),
        subject_id: subject.into(),
        organization_id: None,
        model: model.into(),
        geo: Some(geo),
    };
    (
        subject.as_bytes().to_vec(),
        serde_json::to_vec(&r).expect("request JSON"),
    )
}

fn geo(country: Option<&str>, sub: Option<&str>, postal: Option<&str>) -> Geolocation {
    Geolocation {
        country: country.map(Into::into),
        subdivision: sub.map(Into::into),
        postal_code: postal.map(Into::into),
        confidence: Some(0.95),
        ..Geolocation::default()
    }
}

/// Read `n` decisions of `cfg`'s decision topic, by request id.
fn read_decisions(
    cfg: &clearance::config::Config,
    n: usize,
) -> std::collections::BTreeMap<String, Decision> {
    let c = reader(&cfg.topics.decisions);
    let reads = read_until(&c, Duration::from_secs(120), |r| r.len() >= n);
    for r in &reads {
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
        schemas::validate("decision", &doc).expect("decision valid against its schema");
    }
    first_by_request(&decisions(&reads))
}

/// The fail-open of a DNR postal code without a subdivision, the oblast
/// outside the DNR, and a partly sanctioned oblast without a postal code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_are_placed_by_postal_code_within_the_oblast() {
    let cfg = test_config("regions");
    create_topics(&cfg).await;
    let p = producer();
    publish_records(&p, &cfg, &[EligibilityRecord::User(us_citizen("u-us"))]);
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;

    // (request id, model, geolocation, outcome, reasons)
    let cases: Vec<(&str, &str, Geolocation, Outcome, &[&str])> = vec![
        (
            "dnr-postal-no-subdivision",
            "haiku-4",
            geo(Some("UA"), None, Some("83001")),
            Outcome::Deny,
            &["sanctioned_location"],
        ),
        (
            "dnr-postal-no-subdivision-model-r",
            "fable-5",
            geo(Some("UA"), None, Some("83001")),
            Outcome::Deny,
            &["sanctioned_location"],
        ),
        (
            "lnr-postal-with-subdivision",
            "haiku-4",
            geo(Some("UA"), Some("UA-09"), Some("94200")),
            Outcome::Deny,
            &["sanctioned_location"],
        ),
        (
            "donetsk-oblast-outside-dnr",
            "fable-5",
            geo(Some("UA"), Some("UA-14"), Some("84300")),
            Outcome::Allow,
            &["us_person"],
        ),
        (
            "donetsk-oblast-no-postal",
            "haiku-4",
            geo(Some("UA"), Some("UA-14"), None),
            Outcome::Deny,
            &["region_undetermined"],
        ),
        (
            "kyiv",
            "haiku-4",
            geo(Some("UA"), Some("UA-30"), Some("01001")),
            Outcome::Allow,
            &["unrestricted_model"],
        ),
    ];
    let batch: Vec<_> = cases
        .iter()
        .map(|(id, model, g, _, _)| request(id, "u-us", model, g.clone()))
        .collect();
    publish_raw(&p, &cfg.topics.requests, &batch);
    let got = tokio::task::block_in_place(|| read_decisions(&cfg, cases.len()));
    for (id, _, _, outcome, reasons) in &cases {
        let d = got
            .get(*id)
            .unwrap_or_else(|| panic!("no decision for {id}"));
        assert_eq!(d.outcome, *outcome, "{id}: {:?}", d.reasons);
        assert_eq!(d.reasons, *reasons, "{id}");
        if *outcome == Outcome::Deny {
            assert_eq!(d.rule_ids, ["ofac-sanctioned-location"], "{id}");
        }
    }
    stop_engine(h, stop).await;
}

fn org(id: &str, version: u64, owners: Vec<Owner>) -> OrgRecord {
    OrgRecord {
        id: id.into(),
        version,
        updated_at: None,
        name: None,
        headquarters: Some("SG".into()),
        owners,
        screening_hits: vec![],
        authorizations: vec![],
    }
}

fn owner(id: &str, kind: OwnerKind, hq: Option<&str>, percent: f64) -> Owner {
    Owner {
        id: id.into(),
        kind: Some(kind),
        headquarters: hq.map(Into::into),
        percent,
    }
}

/// A three-level chain, decided live from the store; a new version of the
/// middle record changes the outcome; the recorded inputs decide the same
/// again; a record with an unreadable date is dead-lettered and the
/// previous version stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_is_followed_through_owner_records() {
    let cfg = test_config("chains");
    create_topics(&cfg).await;
    let p = producer();
    // A (MO party 50%) -> B (A 50%) -> C (B 50%) -> member u-sg.
    let a = org(
        "org-a",
        7,
        vec![
            owner("p-mo", OwnerKind::Person, Some("MO"), 50.0),
            owner("p-sg", OwnerKind::Person, Some("SG"), 50.0),
        ],
    );
    let b = org(
        "org-b",
        4,
        vec![
            owner("org-a", OwnerKind::Organization, None, 50.0),
            owner("p-jp", OwnerKind::Person, Some("JP"), 50.0),
        ],
    );
    let c = org(
        "org-c",
        1,
        vec![
            owner("org-b", OwnerKind::Organization, None, 50.0),
            owner("p-jp", OwnerKind::Person, Some("JP"), 50.0),
        ],
    );
    let member: UserRecord = serde_json::from_value(serde_json::json!({
        "id": "u-sg", "version": 1, "us_person_status": "foreign_person",
        "citizenships": [{"country": "SG", "acquired_on": "1990-01-01"}],
        "organization_id": "org-c", "relationship": "employee",
        "verification": {"status": "verified", "verified_at": "2026-01-01T00:00:00Z", "expires_at": "2028-01-01T00:00:00Z"}
    }))
    .expect("user");
    publish_records(
        &p,
        &cfg,
        &[
            EligibilityRecord::Organization(a.clone()),
            EligibilityRecord::Organization(b.clone()),
            EligibilityRecord::Organization(c.clone()),
            EligibilityRecord::User(member.clone()),
        ],
    );
    let (h, stop) = start_engine(&cfg).await;
    wait_feed_applied(&h, &cfg).await;
    let us = geo(Some("US"), Some("US-CA"), None);
    publish_raw(
        &p,
        &cfg.topics.requests,
        &[request("chain-1", "u-sg", "fable-5", us.clone())],
    );
    let got = tokio::task::block_in_place(|| read_decisions(&cfg, 1));
    let d = &got["chain-1"];
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert_eq!(d.reasons, ["restricted_ownership"]);
    assert_eq!(d.rule_ids, ["restricted-ownership", "owner:org-b"]);
    let rv = |id: &str, version: u64| RecordVersion {
        id: id.into(),
        version,
    };
    assert_eq!(d.versions.owners, [rv("org-b", 4), rv("org-a", 7)]);
    let inputs = d.inputs.as_ref().expect("inputs");
    let recorded: Vec<OrgRecord> = inputs.owners.iter().map(|o| (**o).clone()).collect();
    assert_eq!(recorded, [b.clone(), a.clone()]);

    // Replay: the recorded inputs alone give the same verdict.
    let replayed = decide(
        &CompiledPolicy::example(),
        &Eligibility {
            subject: inputs.subject.as_deref(),
            organization: inputs.organization.as_deref(),
            data_stale: false,
            owners: &inputs.owners,
        },
        &inputs.request,
    );
    assert_eq!(replayed.outcome, d.outcome);
    assert_eq!(replayed.reasons, d.reasons);
    assert_eq!(replayed.rule_ids, d.rule_ids);
    assert_eq!(replayed.versions, d.versions);

    // The MO party sells down to 40% of A: A, then B, then C are clear.
    let mut a2 = a.clone();
    a2.version = 8;
    a2.owners[0].percent = 40.0;
    a2.owners[1].percent = 60.0;
    // A record with an unreadable date: dead-lettered, B stays at version 4.
    let bad_b = serde_json::json!({
        "kind": "organization", "id": "org-b", "version": 5, "headquarters": "SG",
        "authorizations": [{"id": "LIC-7", "legal_basis": "order-2026-11", "model_tags": ["order-2026-11"],
                            "valid_from": "2026-01-01", "valid_until": "2026-12-31T23:59:59Z"}]
    });
    publish_records(&p, &cfg, &[EligibilityRecord::Organization(a2)]);
    publish_raw(
        &p,
        &cfg.topics.eligibility,
        &[(
            b"organization:org-b".to_vec(),
            serde_json::to_vec(&bad_b).expect("JSON"),
        )],
    );
    wait_feed_applied(&h, &cfg).await;
    publish_raw(
        &p,
        &cfg.topics.requests,
        &[request("chain-2", "u-sg", "fable-5", us)],
    );
    let got = tokio::task::block_in_place(|| read_decisions(&cfg, 2));
    let d = &got["chain-2"];
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(d.reasons, ["nationality_not_restricted"]);
    assert_eq!(
        d.versions.owners,
        [rv("org-b", 4), rv("org-a", 8)],
        "org-b's version 5 was dead-lettered; version 4 stays"
    );

    let dl = reader(&cfg.topics.deadletter);
    let reads =
        tokio::task::block_in_place(|| read_until(&dl, Duration::from_secs(60), |r| !r.is_empty()));
    let letters: Vec<DeadLetter> = reads
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("dead letter"))
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].error_kind, "invalid_field");
    assert!(
        letters[0].error.contains(
            "authorizations[0].valid_until: \"2026-12-31T23:59:59Z\" is not a calendar date"
        ),
        "{}",
        letters[0].error
    );
    assert_eq!(letters[0].key.as_deref(), Some("organization:org-b"));
    stop_engine(h, stop).await;
}
