//! Shared by the benchmarks: a deterministic 1,000,000-user eligibility
//! store, 8,192 requests against it, and the lookup-then-decide path.

// Each bench target compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::sync::Arc;

use time::macros::datetime;

use clearance::decide::{decide, Eligibility, Verdict};
use clearance::eligibility::Store;
use clearance::event::{
    AccessRequest, Authorization, Citizenship, EligibilityRecord, Geolocation, OrgRecord, Owner,
    PermanentResidency, Relationship, ResidencyStatus, ScreeningHit, ScreeningStatus,
    UsPersonStatus, UserRecord, Verification, VerificationStatus,
};
use clearance::policy::CompiledPolicy;

pub const USERS: u64 = 1_000_000;
pub const ORGS: u64 = 1_000;
pub const REQUESTS: usize = 8_192;

/// A subject and organization fetched from the store.
pub type Fetched = (Option<Arc<UserRecord>>, Option<Arc<OrgRecord>>);

/// A small deterministic generator (no external RNG crate).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn user(i: u64, g: &mut Lcg) -> UserRecord {
    let roll = g.below(100);
    let (status, nat, pr) = match roll {
        0..=39 => (UsPersonStatus::Citizen, "US", None),
        40..=49 => (UsPersonStatus::ForeignPerson, "CN", None),
        50..=54 => (
            UsPersonStatus::LawfulPermanentResident,
            "CN",
            Some(ResidencyStatus::Granted),
        ),
        55..=57 => (
            UsPersonStatus::ForeignPerson,
            "CN",
            Some(ResidencyStatus::Pending),
        ),
        58..=65 => (UsPersonStatus::ForeignPerson, "RU", None),
        66..=77 => (UsPersonStatus::ForeignPerson, "IN", None),
        78..=87 => (UsPersonStatus::ForeignPerson, "GB", None),
        88..=90 => (UsPersonStatus::ForeignPerson, "MO", None),
        91..=95 => (UsPersonStatus::ForeignPerson, "SG", None),
        96..=97 => (UsPersonStatus::ProtectedIndividual, "IR", None),
        _ => (UsPersonStatus::Unknown, "DE", None),
    };
    let mut citizenships = vec![Citizenship {
        country: nat.into(),
        acquired_on: Some("1990-01-01".into()),
    }];
    if g.below(20) == 0 {
        citizenships.push(Citizenship {
            country: "GB".into(),
            acquired_on: Some("2015-06-01".into()),
        });
    }
    let in_org = g.below(3) == 0;
    UserRecord {
        id: format!("u{i}"),
        version: 1 + g.below(5),
        updated_at: None,
        us_person_status: status,
        citizenships,
        permanent_residencies: pr
            .map(|status| PermanentResidency {
                country: "US".into(),
                status,
                acquired_on: Some("2019-01-01".into()),
            })
            .into_iter()
            .collect(),
        organization_id: in_org.then(|| format!("o{}", g.below(ORGS))),
        relationship: in_org.then_some(Relationship::Employee),
        verification: Some(Verification {
            status: if g.below(20) == 0 {
                VerificationStatus::Expired
            } else {
                VerificationStatus::Verified
            },
            verified_at: Some(datetime!(2026-01-01 0:00 UTC)),
            expires_at: Some(datetime!(2028-01-01 0:00 UTC)),
        }),
        revocation: None,
    }
}

fn org(i: u64, g: &mut Lcg) -> OrgRecord {
    let mut o = OrgRecord {
        id: format!("o{i}"),
        version: 1,
        updated_at: None,
        name: None,
        headquarters: Some("US".into()),
        owners: vec![],
        screening_hits: vec![],
        authorizations: vec![],
    };
    match g.below(10) {
        0 => {
            o.owners = vec![
                Owner {
                    kind: None,
                    id: "p1".into(),
                    headquarters: Some("CN".into()),
                    percent: 30.0,
                },
                Owner {
                    kind: None,
                    id: "p2".into(),
                    headquarters: Some("CN".into()),
                    percent: 25.0,
                },
            ]
        }
        1 => o.authorizations.push(Authorization {
            id: format!("LIC-{i}"),
            legal_basis: Some("order-2026-11".into()),
            model_tags: vec!["order-2026-11".into()],
            nationalities: vec!["CN".into(), "RU".into()],
            subjects: vec![],
            relationships: vec![Relationship::Employee],
            valid_from: Some("2026-01-01".into()),
            valid_until: Some("2026-12-31".into()),
        }),
        2 => o.screening_hits.push(ScreeningHit {
            list: "entity_list".into(),
            status: ScreeningStatus::Potential,
            entry: None,
        }),
        _ => {}
    }
    o
}

fn requests(g: &mut Lcg) -> Vec<AccessRequest> {
    const MODELS: &[&str] = &[
        "fable-5", "mythos-5", "haiku-4", "sonnet-4", "opus-4", "gpt-x",
    ];
    const GEOS: &[&str] = &["US", "US", "US", "US", "GB", "IN", "UA", "IR", "SG", "DE"];
    (0..REQUESTS)
        .map(|n| {
            // 2% of the subjects are unknown to the store.
            let subject = g.below(USERS + USERS / 50);
            let country = GEOS[g.below(GEOS.len() as u64) as usize];
            AccessRequest {
                request_id: format!("r{n}"),
                event_time: datetime!(2026-11-28 12:00 UTC),
                subject_id: format!("u{subject}"),
                organization_id: None,
                model: MODELS[g.below(MODELS.len() as u64) as usize].into(),
                geo: Some(Geolocation {
                    country: Some(country.into()),
                    subdivision: (country == "UA")
                        .then(|| ["UA-30", "UA-43"][g.below(2) as usize].into()),
                    postal_code: None,
                    confidence: Some(0.5 + (g.below(50) as f64) / 100.0),
                    vpn: g.below(50) == 0,
                    hosting: false,
                }),
            }
        })
        .collect()
}

/// The store (1,000,000 users, 1,000 organizations) and the requests.
pub fn setup() -> (Store, Vec<AccessRequest>) {
    let store = Store::new();
    let mut g = Lcg(42);
    for i in 0..ORGS {
        store.apply(EligibilityRecord::Organization(org(i, &mut g)));
    }
    for i in 0..USERS {
        store.apply(EligibilityRecord::User(user(i, &mut g)));
    }
    let reqs = requests(&mut g);
    (store, reqs)
}

/// The records of each request, fetched once (for the `*decide_only`
/// benchmarks).
pub fn prefetch(store: &Store, reqs: &[AccessRequest]) -> Vec<Fetched> {
    reqs.iter()
        .map(|r| {
            let s = store.user(&r.subject_id);
            let o = s
                .as_deref()
                .and_then(|s| s.organization_id.as_deref())
                .and_then(|id| store.organization(id));
            (s, o)
        })
        .collect()
}

/// The example directive's main rules only (`benches/cedar/directive_core.toml`).
pub fn core_policy() -> CompiledPolicy {
    match CompiledPolicy::from_toml_str(
        include_str!("../cedar/directive_core.toml"),
        "benches/cedar/directive_core.toml",
    ) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// `decide` on pre-fetched records.
pub fn decide_fetched(policy: &CompiledPolicy, f: &Fetched, req: &AccessRequest) -> Verdict {
    let elig = Eligibility {
        subject: f.0.as_deref(),
        organization: f.1.as_deref(),
        data_stale: false,
        owners: &clearance::decide::NoOrgs,
    };
    decide(policy, &elig, req)
}

/// Look the subject (and its organization) up, then decide.
pub fn lookup_and_decide(policy: &CompiledPolicy, store: &Store, req: &AccessRequest) -> Verdict {
    let subject: Option<Arc<UserRecord>> = store.user(&req.subject_id);
    let org_id = req.organization_id.as_deref().or_else(|| {
        subject
            .as_deref()
            .and_then(|s| s.organization_id.as_deref())
    });
    let organization: Option<Arc<OrgRecord>> = org_id.and_then(|id| store.organization(id));
    let elig = Eligibility {
        subject: subject.as_deref(),
        organization: organization.as_deref(),
        data_stale: false,
        owners: store,
    };
    decide(policy, &elig, req)
}
