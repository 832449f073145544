//! The decision core: one pure function, [`decide`] (no I/O, no clock, no
//! randomness). The policy is evaluated "as of" the request's `event_time`,
//! so a decision can be replayed from its record.
//!
//! # Evaluation
//! 1. A model the policy does not know is denied (`unknown_model`); only
//!    the rules scoped to `all` are evaluated besides.
//! 2. A controlled (tagged) model is denied when the eligibility data is
//!    stale (`stale_data`).
//! 3. Every rule that applies to the model is evaluated, in policy order
//!    (most important first). A deny rule that fires adds its reason; a
//!    deny rule whose data is missing adds the missing-data reason
//!    (`unknown_subject`, `unknown_organization`, `nationality_unknown`,
//!    `ownership_unknown`, `unverifiable_location`) unless it says
//!    `on_missing_data = "skip"`. Allow rules that fire add allow reasons.
//! 4. Denies of rules marked `liftable_by_authorization` are lifted by a
//!    matching, valid authorization on the organization; a matching but
//!    expired one adds `authorization_expired`.
//! 5. Any remaining deny → deny, with *all* deny reasons. Otherwise allow
//!    with the allow reasons; with none, an untagged known model is allowed
//!    (`unrestricted_model`) when `default_allow_untagged` is set, and
//!    anything else is denied (`no_allow_rule`).

use std::sync::Arc;

use time::{Date, OffsetDateTime, UtcOffset};

use crate::event::{
    AccessRequest, Geolocation, OrgRecord, Outcome, Owner, OwnerKind, RecordVersion,
    ResidencyStatus, UserRecord, VerificationStatus, Versions,
};
use crate::policy::{
    CompiledPolicy, CountrySet, Effect, NationalityMode, OnMissing, Region, Rule, RuleKind, Scope,
};

pub use crate::vocab::{builtin, obligation, reason};

/// Where [`decide`] finds the records of owner organizations when an
/// ownership rule follows a chain (OFAC's 50% rule). The store implements
/// it for the pipeline; a slice of records (a decision's recorded
/// `inputs.owners`) implements it for replay.
pub trait OrgLookup: std::fmt::Debug {
    /// The record of organization `id`, if there is one.
    fn organization(&self, id: &str) -> Option<Arc<OrgRecord>>;
}

/// No owner records: nothing is followed (an owner organization declared
/// as such counts as missing data).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOrgs;

impl OrgLookup for NoOrgs {
    fn organization(&self, _id: &str) -> Option<Arc<OrgRecord>> {
        None
    }
}

impl OrgLookup for [Arc<OrgRecord>] {
    fn organization(&self, id: &str) -> Option<Arc<OrgRecord>> {
        self.iter().find(|o| o.id == id).cloned()
    }
}

impl OrgLookup for Vec<Arc<OrgRecord>> {
    fn organization(&self, id: &str) -> Option<Arc<OrgRecord>> {
        self.as_slice().organization(id)
    }
}

impl OrgLookup for std::collections::BTreeMap<String, Arc<OrgRecord>> {
    fn organization(&self, id: &str) -> Option<Arc<OrgRecord>> {
        self.get(id).cloned()
    }
}

/// The eligibility snapshot a decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct Eligibility<'a> {
    /// The subject's record, if the store has one.
    pub subject: Option<&'a UserRecord>,
    /// The organization's record, if the store has one: the request's
    /// `organization_id` if present, else the subject's `organization_id`.
    pub organization: Option<&'a OrgRecord>,
    /// The engine's eligibility data is older than its staleness bound:
    /// controlled models are denied (`stale_data`), untagged ones served.
    pub data_stale: bool,
    /// Owner organizations' records, followed by ownership rules.
    pub owners: &'a dyn OrgLookup,
}

impl Default for Eligibility<'_> {
    fn default() -> Self {
        Eligibility {
            subject: None,
            organization: None,
            data_stale: false,
            owners: &NoOrgs,
        }
    }
}

/// The pure part of a decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    /// Allow or deny.
    pub outcome: Outcome,
    /// Stable reason codes ([`reason`]), most important first.
    pub reasons: Vec<&'static str>,
    /// Ids of the rules that decided, plus citations: `authorization:<id>`
    /// for an authorization used (or expired), `list:<name>` for a
    /// screening list hit.
    pub rule_ids: Vec<String>,
    /// Legal bases of the rules that decided.
    pub legal_basis: Vec<String>,
    /// Obligations ([`obligation`]) attached to a deny.
    pub obligations: Vec<&'static str>,
    /// Versions of the policy, its data and the records used.
    pub versions: Versions,
    /// The owner organizations' records an ownership rule followed (their
    /// versions are in `versions.owners`): part of the decision's inputs.
    #[serde(skip)]
    pub owner_records: Vec<Arc<OrgRecord>>,
}

/// Result of evaluating one rule.
enum Eval {
    /// The predicate holds: the rule fires.
    Fire,
    /// The rule fires with another reason than its kind's (a location
    /// that cannot be placed: `region_undetermined`).
    FireWith(&'static str),
    /// It does not hold.
    Pass,
    /// The data it needs is missing; the reason code to deny with.
    Missing(&'static str),
}

/// A deny collected during evaluation.
struct Deny<'p> {
    reason: &'static str,
    /// The rule, or `None` for a built-in check.
    rule: Option<&'p Rule>,
    builtin_id: &'static str,
    /// Whether the rule itself fired (as opposed to missing data).
    fired: bool,
    citations: Vec<String>,
}

/// Decide whether the request may be served, from the policy and the
/// eligibility snapshot alone.
pub fn decide(policy: &CompiledPolicy, elig: &Eligibility<'_>, req: &AccessRequest) -> Verdict {
    decide_traced(policy, elig, req, &mut NoTrace)
}

/// [`decide`], telling `trace` every step of the derivation: the model, the
/// built-in checks, each rule's verdict, authorizations, the derived
/// country, the ownership computation and the outcome. It is the same code
/// as [`decide`] (which calls it with [`NoTrace`], whose `ON = false` lets
/// the compiler remove every trace call): an explanation can never differ
/// from the decision.
pub fn decide_traced<T: Trace>(
    policy: &CompiledPolicy,
    elig: &Eligibility<'_>,
    req: &AccessRequest,
    trace: &mut T,
) -> Verdict {
    let versions = Versions {
        policy_id: policy.id.clone(),
        policy_version: policy.version.clone(),
        data_version: policy.data_version.clone(),
        policy_digest: policy.digest.clone(),
        subject: elig.subject.map(|u| RecordVersion {
            id: u.id.clone(),
            version: u.version,
        }),
        organization: elig.organization.map(|o| RecordVersion {
            id: o.id.clone(),
            version: o.version,
        }),
        owners: Vec::new(),
    };
    let model = policy.model(&req.model);
    let (rule_idx, model_tags): (&[usize], &[String]) = match model {
        Some(m) => (&m.rules, &m.tags),
        None => (policy.all_scope_rules(), &[]),
    };
    let controlled = !model_tags.is_empty();
    let mut cx = Cx::new(policy, elig, req);
    cx.tracing = T::ON;
    if T::ON {
        trace.step(Step::Model {
            model: req.model.clone(),
            known: model.is_some(),
            tags: model_tags.to_vec(),
        });
        if let Some(u) = elig.subject {
            trace.step(country_step(u, policy.settings.nationality_mode));
        }
    }

    let mut denies: Vec<Deny<'_>> = Vec::new();
    let mut allows: Vec<&Rule> = Vec::new();
    if model.is_none() {
        if T::ON {
            trace.step(Step::Builtin {
                id: builtin::UNKNOWN_MODEL,
                reason: reason::UNKNOWN_MODEL,
            });
        }
        denies.push(Deny {
            reason: reason::UNKNOWN_MODEL,
            rule: None,
            builtin_id: builtin::UNKNOWN_MODEL,
            fired: true,
            citations: Vec::new(),
        });
    }
    if controlled && elig.data_stale {
        if T::ON {
            trace.step(Step::Builtin {
                id: builtin::STALE_DATA,
                reason: reason::STALE_DATA,
            });
        }
        denies.push(Deny {
            reason: reason::STALE_DATA,
            rule: None,
            builtin_id: builtin::STALE_DATA,
            fired: true,
            citations: Vec::new(),
        });
    }
    for &i in rule_idx {
        let Some(rule) = policy.rules.get(i) else {
            continue;
        };
        let mut citations = Vec::new();
        let eval = cx.eval(rule, &mut citations);
        if T::ON {
            let verdict = match (&eval, rule.effect) {
                (Eval::Fire, _) => RuleVerdict::Matched {
                    reason: rule.kind.reason(),
                },
                (Eval::FireWith(r), _) => RuleVerdict::Matched { reason: r },
                (Eval::Pass, _) => RuleVerdict::NotMatched,
                (Eval::Missing(r), Effect::Deny) if rule.on_missing == OnMissing::Deny => {
                    RuleVerdict::MissingData { reason: r }
                }
                (Eval::Missing(r), _) => RuleVerdict::SkippedMissingData { reason: r },
            };
            trace.step(Step::Rule {
                id: rule.id.clone(),
                kind: rule.kind.name(),
                effect: rule.effect,
                verdict,
                citations: citations.clone(),
            });
            for o in cx.ownership_trace.borrow_mut().drain(..) {
                trace.step(Step::Ownership(o));
            }
        }
        match (eval, rule.effect) {
            (Eval::Fire, Effect::Deny) => denies.push(Deny {
                reason: rule.kind.reason(),
                rule: Some(rule),
                builtin_id: "",
                fired: true,
                citations,
            }),
            (Eval::FireWith(r), Effect::Deny) => denies.push(Deny {
                reason: r,
                rule: Some(rule),
                builtin_id: "",
                fired: true,
                citations,
            }),
            (Eval::Missing(r), Effect::Deny) if rule.on_missing == OnMissing::Deny => {
                denies.push(Deny {
                    reason: r,
                    rule: Some(rule),
                    builtin_id: "",
                    fired: false,
                    citations,
                })
            }
            (Eval::Fire | Eval::FireWith(_), Effect::Allow) => allows.push(rule),
            _ => {}
        }
    }

    // Authorizations lift liftable denies; an expired one is cited.
    let mut lifted: Vec<(&Rule, String)> = Vec::new();
    let mut kept: Vec<Deny<'_>> = Vec::with_capacity(denies.len());
    for mut d in denies {
        if let (Some(rule), true) = (d.rule, d.fired) {
            if rule.liftable {
                let found = cx.authorization(rule, model_tags);
                if T::ON {
                    match &found {
                        AuthMatch::Valid(id) => trace.step(Step::Authorization {
                            rule: rule.id.clone(),
                            authorization: id.clone(),
                            lifted: true,
                        }),
                        AuthMatch::Expired(id) => trace.step(Step::Authorization {
                            rule: rule.id.clone(),
                            authorization: id.clone(),
                            lifted: false,
                        }),
                        AuthMatch::None => {}
                    }
                }
                match found {
                    AuthMatch::Valid(id) => {
                        lifted.push((rule, id));
                        continue;
                    }
                    AuthMatch::Expired(id) => {
                        d.citations.push(format!("authorization:{id}"));
                        kept.push(d);
                        kept.push(Deny {
                            reason: reason::AUTHORIZATION_EXPIRED,
                            rule: Some(rule),
                            builtin_id: "",
                            fired: false,
                            citations: Vec::new(),
                        });
                        continue;
                    }
                    AuthMatch::None => {}
                }
            }
        }
        kept.push(d);
    }

    let owner_records = cx.followed.into_inner();
    let mut versions = versions;
    versions.owners = owner_records
        .iter()
        .map(|o| RecordVersion {
            id: o.id.clone(),
            version: o.version,
        })
        .collect();
    let mut v = Verdict {
        outcome: Outcome::Deny,
        reasons: Vec::new(),
        rule_ids: Vec::new(),
        legal_basis: Vec::new(),
        obligations: Vec::new(),
        versions,
        owner_records,
    };
    if !kept.is_empty() {
        for d in kept {
            push_unique(&mut v.reasons, d.reason);
            match d.rule {
                Some(rule) => {
                    push_unique_string(&mut v.rule_ids, &rule.id);
                    push_unique_string(&mut v.legal_basis, &rule.legal_basis);
                    for o in &rule.obligations {
                        push_unique(&mut v.obligations, o);
                    }
                }
                None => push_unique_string(&mut v.rule_ids, d.builtin_id),
            }
            for c in d.citations {
                push_unique_string(&mut v.rule_ids, &c);
            }
        }
        if T::ON {
            trace.step(Step::Outcome(Box::new(v.clone())));
        }
        return v;
    }

    if !lifted.is_empty() {
        v.reasons.push(reason::AUTHORIZED);
        for (rule, auth) in &lifted {
            push_unique_string(&mut v.rule_ids, &rule.id);
            push_unique_string(&mut v.rule_ids, &format!("authorization:{auth}"));
            push_unique_string(&mut v.legal_basis, &rule.legal_basis);
        }
    }
    for rule in &allows {
        push_unique(&mut v.reasons, rule.kind.reason());
        push_unique_string(&mut v.rule_ids, &rule.id);
        push_unique_string(&mut v.legal_basis, &rule.legal_basis);
    }
    if v.reasons.is_empty() {
        if model.is_some() && !controlled && policy.settings.default_allow_untagged {
            v.reasons.push(reason::UNRESTRICTED_MODEL);
            v.rule_ids.push(builtin::DEFAULT_ALLOW_UNTAGGED.to_string());
        } else {
            v.reasons.push(reason::NO_ALLOW_RULE);
            v.rule_ids.push(builtin::NO_ALLOW_RULE.to_string());
            if T::ON {
                trace.step(Step::Outcome(Box::new(v.clone())));
            }
            return v;
        }
    }
    v.outcome = Outcome::Allow;
    if T::ON {
        trace.step(Step::Outcome(Box::new(v.clone())));
    }
    v
}

/// Where [`decide_traced`] tells the steps of a derivation.
pub trait Trace {
    /// Whether steps are built at all: `false` removes them at compile time.
    const ON: bool;
    /// One step of the derivation, in order.
    fn step(&mut self, step: Step);
}

/// No trace: [`decide`]'s fast path.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTrace;

impl Trace for NoTrace {
    const ON: bool = false;
    #[inline(always)]
    fn step(&mut self, _step: Step) {}
}

/// Every step, kept in order (what `clearance explain` prints).
impl Trace for Vec<Step> {
    const ON: bool = true;
    fn step(&mut self, step: Step) {
        self.push(step);
    }
}

/// What a rule's evaluation gave.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum RuleVerdict {
    /// The predicate held: a deny rule denies, an allow rule allows.
    Matched {
        /// The reason it gives.
        reason: &'static str,
    },
    /// The predicate did not hold.
    NotMatched,
    /// The data it needs is missing: the rule denies with this reason.
    MissingData {
        /// The missing-data reason.
        reason: &'static str,
    },
    /// The data it needs is missing and the rule says
    /// `on_missing_data = "skip"` (or it is an allow rule): no effect.
    SkippedMissingData {
        /// The missing-data reason it would have given.
        reason: &'static str,
    },
}

/// One candidate of the derived-country computation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CountryCandidate {
    /// The country as recorded.
    pub country: String,
    /// `"citizenship"`, or `"permanent_residency (granted)"` etc.
    pub source: String,
    /// Its `acquired_on`, if recorded.
    pub acquired_on: Option<String>,
    /// Whether it counts toward the derived country.
    pub counts: bool,
}

/// One organization of an ownership computation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OwnershipNode {
    /// Organization id.
    pub id: String,
    /// Its record version (`None` for the organization decided for, whose
    /// version is in `versions.organization`).
    pub version: Option<u64>,
    /// Restricted, counting every owner that cannot be judged as clear.
    pub restricted: bool,
    /// Restricted, counting every owner that cannot be judged as
    /// restricted (the fail-closed bound).
    pub possibly_restricted: bool,
    /// Its owners: (owner id, percent, how it was judged).
    pub owners: Vec<(String, f64, String)>,
}

/// The ownership computation of one `ownership_in` rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OwnershipTrace {
    /// The threshold, in percent.
    pub threshold_percent: f64,
    /// The organizations, the one decided for first, then the owner
    /// records in the order they were followed.
    pub nodes: Vec<OwnershipNode>,
}

/// One step of a derivation, as [`decide_traced`] tells it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The model requested and its catalog entry.
    Model {
        /// The model id.
        model: String,
        /// Whether the catalog has it.
        known: bool,
        /// Its tags (controlled when any).
        tags: Vec<String>,
    },
    /// The derived country of the subject.
    Country {
        /// The nationality mode.
        mode: &'static str,
        /// Whether the subject is a U.S. person (then no nationality rule
        /// applies).
        us_person: bool,
        /// Every citizenship and residency, and whether it counts.
        candidates: Vec<CountryCandidate>,
        /// The derived countries (`"??"` for one that is not a code).
        derived: Vec<String>,
    },
    /// A built-in check denied.
    Builtin {
        /// Its id.
        id: &'static str,
        /// The reason.
        reason: &'static str,
    },
    /// A rule, in policy order.
    Rule {
        /// Rule id.
        id: String,
        /// Rule kind.
        kind: &'static str,
        /// Allow or deny.
        #[serde(serialize_with = "effect_name")]
        effect: Effect,
        /// What it gave.
        #[serde(flatten)]
        verdict: RuleVerdict,
        /// Citations (`list:...`, `owner:...`).
        citations: Vec<String>,
    },
    /// The ownership computation of the rule just before.
    Ownership(OwnershipTrace),
    /// An authorization was searched for a liftable deny.
    Authorization {
        /// The rule whose deny it concerns.
        rule: String,
        /// The authorization.
        authorization: String,
        /// `true`: valid, the deny is lifted; `false`: it matched but has
        /// expired, the deny stays.
        lifted: bool,
    },
    /// The verdict.
    Outcome(Box<Verdict>),
}

fn effect_name<S: serde::Serializer>(e: &Effect, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match e {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
    })
}

/// The derived-country step for `user`: the same [`candidates`] the rules
/// use, with every record entry and whether it counts.
fn country_step(user: &UserRecord, mode: NationalityMode) -> Step {
    let derived = derived_countries(user, mode);
    let counts = |c: &str| derived.iter().any(|d| d.eq_ignore_ascii_case(c.trim()));
    let mut candidates: Vec<CountryCandidate> = user
        .citizenships
        .iter()
        .map(|c| CountryCandidate {
            country: c.country.clone(),
            source: "citizenship".into(),
            acquired_on: c.acquired_on.clone(),
            counts: counts(&c.country),
        })
        .collect();
    candidates.extend(user.permanent_residencies.iter().map(|r| {
        let status = match r.status {
            ResidencyStatus::Granted => "granted",
            ResidencyStatus::Pending => "pending",
            ResidencyStatus::Revoked => "revoked",
        };
        CountryCandidate {
            country: r.country.clone(),
            source: format!("permanent_residency ({status})"),
            acquired_on: r.acquired_on.clone(),
            counts: r.status == ResidencyStatus::Granted && counts(&r.country),
        }
    }));
    Step::Country {
        mode: mode.as_str(),
        us_person: user.us_person_status.is_us_person(),
        candidates,
        derived,
    }
}

fn push_unique(v: &mut Vec<&'static str>, s: &'static str) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn push_unique_string(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

pub use crate::event::parse_date;

/// At most this many owner records are followed for one decision.
pub const MAX_OWNERSHIP_NODES: usize = 256;

/// The UTC calendar date of an instant, if representable.
fn utc_date(t: OffsetDateTime) -> Option<Date> {
    t.checked_to_offset(UtcOffset::UTC).map(|t| t.date())
}

/// A derived-country candidate: an upper-case alpha-2 code, or `None` when
/// the record holds something that is not a two-letter code (which can
/// then never be shown unrestricted: fail closed).
type Candidate = Option<[u8; 2]>;

fn candidate(code: &str) -> Candidate {
    match code.trim().as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

fn code_str(c: &[u8; 2]) -> &str {
    std::str::from_utf8(c).unwrap_or("")
}

fn candidates(user: &UserRecord, mode: NationalityMode) -> Vec<Candidate> {
    let all = user
        .citizenships
        .iter()
        .map(|c| (c.country.as_str(), c.acquired_on.as_deref()))
        .chain(
            user.permanent_residencies
                .iter()
                .filter(|r| r.status == ResidencyStatus::Granted)
                .map(|r| (r.country.as_str(), r.acquired_on.as_deref())),
        )
        .map(|(c, d)| (c, d.and_then(parse_date)));
    let latest = all.clone().filter_map(|(_, d)| d).max();
    let mut out: Vec<Candidate> = Vec::with_capacity(2);
    let mut add = |c: &str| {
        let c = candidate(c);
        if !out.contains(&c) {
            out.push(c);
        }
    };
    for (c, d) in all {
        if d.is_none() || d == latest {
            add(c);
        }
    }
    if mode == NationalityMode::AnyCitizenship {
        for c in &user.citizenships {
            add(&c.country);
        }
    }
    out
}

/// The countries a foreign person's export is deemed to go to, under
/// `mode`, upper case, without duplicates; an entry that is not a
/// two-letter code is shown as `"??"` (and blocks any "not restricted"
/// conclusion). Empty when nothing is on record.
///
/// Under `most_recent`, the candidates are the citizenships and *granted*
/// permanent residencies; the one with the latest `acquired_on` wins. When
/// dates are missing or unparsable, or tie, every candidate that could be
/// the most recent is returned (fail closed: a rule fires if any of them is
/// restricted). Under `any_citizenship`, every citizenship is added.
pub fn derived_countries(user: &UserRecord, mode: NationalityMode) -> Vec<String> {
    candidates(user, mode)
        .iter()
        .map(|c| c.as_ref().map_or("??", code_str).to_string())
        .collect()
}

/// What an authorization search found.
enum AuthMatch {
    /// A valid authorization lifts the deny.
    Valid(String),
    /// One would match but has expired.
    Expired(String),
    /// None matches.
    None,
}

/// Per-decision context: the inputs and facts derived once.
struct Cx<'a> {
    policy: &'a CompiledPolicy,
    subject: Option<&'a UserRecord>,
    org: Option<&'a OrgRecord>,
    /// The organization id the request is made for, if any is known.
    org_id: Option<&'a str>,
    req: &'a AccessRequest,
    countries: std::cell::OnceCell<Vec<Candidate>>,
    /// Owner organizations' records.
    owners: &'a dyn OrgLookup,
    /// The owner records followed so far (evidence), without duplicates.
    followed: std::cell::RefCell<Vec<Arc<OrgRecord>>>,
    /// Whether a trace is being kept ([`Trace::ON`]).
    tracing: bool,
    /// Ownership computations not yet told to the trace.
    ownership_trace: std::cell::RefCell<Vec<OwnershipTrace>>,
}

impl<'a> Cx<'a> {
    fn new(policy: &'a CompiledPolicy, elig: &Eligibility<'a>, req: &'a AccessRequest) -> Self {
        let org_id = req
            .organization_id
            .as_deref()
            .or_else(|| elig.subject.and_then(|s| s.organization_id.as_deref()))
            .or_else(|| elig.organization.map(|o| o.id.as_str()));
        Cx {
            policy,
            subject: elig.subject,
            org: elig.organization,
            org_id,
            req,
            countries: std::cell::OnceCell::new(),
            owners: elig.owners,
            followed: std::cell::RefCell::new(Vec::new()),
            tracing: false,
            ownership_trace: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// The subject's derived countries (empty without a subject).
    fn countries(&self) -> &[Candidate] {
        self.countries.get_or_init(|| {
            self.subject
                .map(|u| candidates(u, self.policy.settings.nationality_mode))
                .unwrap_or_default()
        })
    }

    /// The organization record, or the missing-data reason when one is
    /// expected but absent; `Ok(None)` when the subject has no organization.
    fn org(&self) -> Result<Option<&'a OrgRecord>, &'static str> {
        match (self.org, self.org_id, self.subject) {
            (Some(o), _, _) => Ok(Some(o)),
            (None, Some(_), _) => Err(reason::UNKNOWN_ORGANIZATION),
            (None, None, None) => Err(reason::UNKNOWN_SUBJECT),
            (None, None, Some(_)) => Ok(None),
        }
    }

    fn eval(&self, rule: &Rule, citations: &mut Vec<String>) -> Eval {
        let fire = |b: bool| if b { Eval::Fire } else { Eval::Pass };
        match &rule.kind {
            RuleKind::SubjectKnown => fire(self.subject.is_none()),
            RuleKind::SubjectRevoked => fire(self.subject.is_some_and(|s| s.revocation.is_some())),
            RuleKind::UsPersonStatusKnown => match self.subject {
                None => Eval::Missing(reason::UNKNOWN_SUBJECT),
                Some(s) => fire(s.us_person_status == crate::event::UsPersonStatus::Unknown),
            },
            RuleKind::UsPerson => fire(
                self.subject
                    .is_some_and(|s| s.us_person_status.is_us_person()),
            ),
            RuleKind::VerificationCurrent { max_age_days } => match self.subject {
                None => Eval::Missing(reason::UNKNOWN_SUBJECT),
                Some(s) => fire(!self.verification_current(s, *max_age_days)),
            },
            RuleKind::LocationVerifiable { min_confidence } => {
                let min = min_confidence.unwrap_or(self.policy.settings.min_geo_confidence);
                fire(!location_verifiable(self.req.geo.as_ref(), min))
            }
            RuleKind::LocationIn { countries, regions } => {
                location_in(self.req.geo.as_ref(), countries, regions)
            }
            RuleKind::NationalityIn { set } => match self.subject {
                None => Eval::Missing(reason::UNKNOWN_SUBJECT),
                Some(s) if s.us_person_status.is_us_person() => Eval::Pass,
                Some(_) => {
                    let cs = self.countries();
                    if cs.iter().flatten().any(|c| set.contains(code_str(c))) {
                        Eval::Fire
                    } else if cs.is_empty() || cs.contains(&None) {
                        Eval::Missing(reason::NATIONALITY_UNKNOWN)
                    } else {
                        Eval::Pass
                    }
                }
            },
            RuleKind::NationalityNotIn { set } => match self.subject {
                Some(s) if !s.us_person_status.is_us_person() => {
                    let cs = self.countries();
                    fire(
                        !cs.is_empty()
                            && cs
                                .iter()
                                .all(|c| c.is_some_and(|c| !set.contains(code_str(&c)))),
                    )
                }
                _ => Eval::Pass,
            },
            RuleKind::OwnershipIn {
                set,
                threshold_percent,
                max_depth,
            } => match self.org() {
                Err(r) => Eval::Missing(r),
                Ok(None) => Eval::Pass,
                Ok(Some(o)) => self.ownership(o, set, *threshold_percent, *max_depth, citations),
            },
            RuleKind::ListedParty { status, lists } => match self.org() {
                Err(r) => Eval::Missing(r),
                Ok(None) => Eval::Pass,
                Ok(Some(o)) => {
                    for h in &o.screening_hits {
                        if h.status == *status
                            && (lists.is_empty()
                                || lists.iter().any(|l| l.eq_ignore_ascii_case(&h.list)))
                        {
                            let c = format!("list:{}", h.list);
                            if !citations.contains(&c) {
                                citations.push(c);
                            }
                        }
                    }
                    fire(!citations.is_empty())
                }
            },
        }
    }

    /// OFAC's 50% rule over the ownership graph above `root`: owner
    /// organizations with records are followed (breadth first, at most
    /// `max_depth` levels and [`MAX_OWNERSHIP_NODES`] records, each once,
    /// so cycles end), and every record followed is kept as evidence.
    ///
    /// An organization other than `root` is restricted when its
    /// headquarters is in `set`, or when restricted parties own at least
    /// `threshold` percent of it, summed; a restricted owner's share counts
    /// in full. That is a least fixpoint, computed twice: once with every
    /// owner that cannot be judged counted as clear, once as restricted.
    /// Restricted in the first: `Fire`; only in the second:
    /// `ownership_unknown`; in neither: `Pass`.
    fn ownership(
        &self,
        root: &OrgRecord,
        set: &CountrySet,
        threshold: f64,
        max_depth: u32,
        citations: &mut Vec<String>,
    ) -> Eval {
        if root.owners.is_empty() {
            return Eval::Pass;
        }
        /// What an owner that is not followed is.
        #[derive(Clone, Copy, PartialEq)]
        enum Leaf {
            Restricted,
            Clear,
            Unknown,
        }
        let judge = |hq: Option<&str>| match hq.map(str::trim) {
            Some(c) if c.len() == 2 => {
                if set.contains(c) {
                    Leaf::Restricted
                } else {
                    Leaf::Clear
                }
            }
            _ => Leaf::Unknown,
        };
        let share = |o: &Owner| {
            if o.percent.is_finite() {
                o.percent.clamp(0.0, 100.0)
            } else {
                0.0
            }
        };
        // Node 0 is `root`; node i > 0 is the owner record records[i - 1].
        let mut records: Vec<Arc<OrgRecord>> = Vec::new();
        let mut own: Vec<Leaf> = vec![Leaf::Clear];
        let mut edges: Vec<Vec<(Result<usize, Leaf>, f64)>> = vec![Vec::new()];
        let mut queue = std::collections::VecDeque::from([(0usize, 0u32)]);
        while let Some((i, depth)) = queue.pop_front() {
            let node = (i > 0).then(|| Arc::clone(&records[i - 1]));
            let node_owners = node.as_ref().map_or(&root.owners, |r| &r.owners);
            let mut out = Vec::with_capacity(node_owners.len());
            for owner in node_owners {
                let p = share(owner);
                let hq = owner.headquarters.as_deref();
                if owner.kind == Some(OwnerKind::Person) {
                    out.push((Err(judge(hq)), p));
                    continue;
                }
                let known = if owner.id == root.id {
                    Some(0)
                } else {
                    records.iter().position(|r| r.id == owner.id).map(|j| j + 1)
                };
                if let Some(j) = known {
                    out.push((Ok(j), p));
                    continue;
                }
                if depth >= max_depth || records.len() >= MAX_OWNERSHIP_NODES {
                    // Not followed: only a restricted headquarters is known.
                    let leaf = match judge(hq) {
                        Leaf::Restricted => Leaf::Restricted,
                        _ => Leaf::Unknown,
                    };
                    out.push((Err(leaf), p));
                    continue;
                }
                match self.owners.organization(&owner.id) {
                    Some(rec) => {
                        let leaf = judge(rec.headquarters.as_deref().or(hq));
                        records.push(rec);
                        own.push(leaf);
                        edges.push(Vec::new());
                        queue.push_back((records.len(), depth + 1));
                        out.push((Ok(records.len()), p));
                    }
                    None if owner.kind == Some(OwnerKind::Organization) => {
                        // A declared organization without a record: missing
                        // data, unless its headquarters alone restricts it.
                        let leaf = match judge(hq) {
                            Leaf::Restricted => Leaf::Restricted,
                            _ => Leaf::Unknown,
                        };
                        out.push((Err(leaf), p));
                    }
                    None => out.push((Err(judge(hq)), p)),
                }
            }
            edges[i] = out;
        }
        let solve = |unknown_restricted: bool| -> Vec<bool> {
            let counts =
                |l: Leaf| l == Leaf::Restricted || (unknown_restricted && l == Leaf::Unknown);
            let mut r: Vec<bool> = own
                .iter()
                .enumerate()
                .map(|(i, l)| i > 0 && counts(*l))
                .collect();
            loop {
                let mut changed = false;
                for i in 0..r.len() {
                    if r[i] {
                        continue;
                    }
                    let sum: f64 = edges[i]
                        .iter()
                        .map(|(e, p)| match e {
                            Ok(j) if r[*j] => *p,
                            Err(l) if counts(*l) => *p,
                            _ => 0.0,
                        })
                        .sum();
                    if sum >= threshold {
                        r[i] = true;
                        changed = true;
                    }
                }
                if !changed {
                    return r;
                }
            }
        };
        let low = solve(false);
        if self.tracing {
            let up = solve(true);
            let judged = |e: &Result<usize, Leaf>| match e {
                Ok(0) => format!("organization {} (the one decided for)", root.id),
                Ok(j) => format!(
                    "organization record, {}",
                    if low[*j] {
                        "restricted"
                    } else if up[*j] {
                        "possibly restricted"
                    } else {
                        "not restricted"
                    }
                ),
                Err(Leaf::Restricted) => "restricted (headquarters)".into(),
                Err(Leaf::Clear) => "not restricted (headquarters)".into(),
                Err(Leaf::Unknown) => {
                    "unknown (no usable headquarters, or record missing or not followed)".into()
                }
            };
            let nodes = edges
                .iter()
                .enumerate()
                .map(|(i, out)| {
                    let (id, version, owners) = if i == 0 {
                        (root.id.clone(), None, &root.owners)
                    } else {
                        let r = &records[i - 1];
                        (r.id.clone(), Some(r.version), &r.owners)
                    };
                    OwnershipNode {
                        id,
                        version,
                        restricted: low[i],
                        possibly_restricted: up[i],
                        owners: out
                            .iter()
                            .zip(owners)
                            .map(|((e, p), o)| (o.id.clone(), *p, judged(e)))
                            .collect(),
                    }
                })
                .collect();
            self.ownership_trace.borrow_mut().push(OwnershipTrace {
                threshold_percent: threshold,
                nodes,
            });
        }
        let verdict = if low[0] {
            for ((e, _), owner) in edges[0].iter().zip(&root.owners) {
                let counted = match e {
                    Ok(j) => low[*j],
                    Err(l) => *l == Leaf::Restricted,
                };
                let c = format!("owner:{}", owner.id);
                if counted && !citations.contains(&c) {
                    citations.push(c);
                }
            }
            Eval::Fire
        } else if solve(true)[0] {
            Eval::Missing(reason::OWNERSHIP_UNKNOWN)
        } else {
            Eval::Pass
        };
        let mut followed = self.followed.borrow_mut();
        for r in records {
            if !followed.iter().any(|f| f.id == r.id) {
                followed.push(r);
            }
        }
        verdict
    }

    fn verification_current(&self, s: &UserRecord, max_age_days: Option<u32>) -> bool {
        let Some(v) = &s.verification else {
            return false;
        };
        if v.status != VerificationStatus::Verified {
            return false;
        }
        let now = self.req.event_time;
        if v.expires_at.is_some_and(|e| e <= now) {
            return false;
        }
        if let Some(days) = max_age_days {
            let fresh = v.verified_at.is_some_and(|at| {
                at.checked_add(time::Duration::days(i64::from(days)))
                    .is_some_and(|until| until > now)
            });
            if !fresh {
                return false;
            }
        }
        true
    }

    /// Search the organization's authorizations for one lifting `rule`.
    fn authorization(&self, rule: &Rule, model_tags: &[String]) -> AuthMatch {
        let (Some(s), Some(o)) = (self.subject, self.org) else {
            return AuthMatch::None;
        };
        let Some(today) = utc_date(self.req.event_time) else {
            return AuthMatch::None;
        };
        // The countries the authorization must cover: the restricted ones
        // for a nationality deny, all derived ones otherwise.
        let countries: Vec<Candidate> = match &rule.kind {
            RuleKind::NationalityIn { set } => self
                .countries()
                .iter()
                .filter(|c| c.is_some_and(|c| set.contains(code_str(&c))))
                .copied()
                .collect(),
            _ => self.countries().to_vec(),
        };
        let member = s.organization_id.as_deref() == Some(o.id.as_str());
        let mut expired = None;
        for a in &o.authorizations {
            if a.legal_basis.as_deref().map(str::trim) != Some(rule.legal_basis.trim()) {
                continue;
            }
            let covers_tag = a.model_tags.iter().any(|t| {
                model_tags.contains(t)
                    && match &rule.scope {
                        Scope::All => true,
                        Scope::Tags(ts) => ts.contains(t),
                    }
            });
            if !covers_tag {
                continue;
            }
            if !a.nationalities.is_empty()
                && (countries.is_empty()
                    || !countries.iter().all(|c| {
                        c.is_some_and(|c| {
                            a.nationalities
                                .iter()
                                .any(|n| n.trim().eq_ignore_ascii_case(code_str(&c)))
                        })
                    }))
            {
                continue;
            }
            let named = a.subjects.contains(&s.id);
            if !a.subjects.is_empty() && !named {
                continue;
            }
            if !member && !named {
                continue;
            }
            if !a.relationships.is_empty()
                && !s.relationship.is_some_and(|r| a.relationships.contains(&r))
            {
                continue;
            }
            let from = a.valid_from.as_deref().and_then(parse_date);
            let until = a.valid_until.as_deref().and_then(parse_date);
            let (Some(from), Some(until)) = (from, until) else {
                continue;
            };
            if from <= today && today <= until {
                return AuthMatch::Valid(a.id.clone());
            }
            if today > until && expired.is_none() {
                expired = Some(a.id.clone());
            }
        }
        expired.map_or(AuthMatch::None, AuthMatch::Expired)
    }
}

fn location_verifiable(geo: Option<&Geolocation>, min_confidence: f64) -> bool {
    let Some(g) = geo else {
        return false;
    };
    g.country.as_deref().is_some_and(|c| !c.trim().is_empty())
        && !g.vpn
        && !g.hosting
        && g.confidence.is_some_and(|c| c >= min_confidence)
}

/// Where a request lies with respect to a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    In,
    Out,
    /// In a partly covered subdivision, without a usable postal code.
    Undetermined,
}

fn region_place(g: &Geolocation, country: Option<&str>, r: &Region) -> Place {
    let sub = g
        .subdivision
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let listed =
        |list: &[String]| sub.is_some_and(|s| list.iter().any(|x| x.eq_ignore_ascii_case(s)));
    if listed(&r.subdivisions) {
        return Place::In;
    }
    // A subdivision names its country too ("UA-14").
    let country = country.or_else(|| sub.and_then(|s| s.get(..2)));
    let postal = if country.is_some_and(|c| c.eq_ignore_ascii_case(&r.country)) {
        r.usable_postal_code(g.postal_code.as_deref())
    } else {
        None
    };
    if postal
        .as_deref()
        .is_some_and(|pc| r.contains_postal_code(pc))
    {
        return Place::In;
    }
    if listed(&r.partial_subdivisions) {
        return if postal.is_some() {
            Place::Out
        } else {
            Place::Undetermined
        };
    }
    Place::Out
}

fn location_in(geo: Option<&Geolocation>, countries: &CountrySet, regions: &[Region]) -> Eval {
    let Some(g) = geo else {
        return Eval::Missing(reason::UNVERIFIABLE_LOCATION);
    };
    let country = g
        .country
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if country.is_some_and(|c| countries.contains(c)) {
        return Eval::Fire;
    }
    let mut undetermined = false;
    for r in regions {
        match region_place(g, country, r) {
            Place::In => return Eval::Fire,
            Place::Undetermined => undetermined = true,
            Place::Out => {}
        }
    }
    // A subdivision names its country too ("UA-43").
    let sub_country = g
        .subdivision
        .as_deref()
        .and_then(|s| s.trim().get(..2))
        .filter(|c| countries.contains(c));
    if sub_country.is_some() {
        return Eval::Fire;
    }
    if undetermined {
        return Eval::FireWith(reason::REGION_UNDETERMINED);
    }
    if country.is_none() {
        return Eval::Missing(reason::UNVERIFIABLE_LOCATION);
    }
    Eval::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        Authorization, Citizenship, Owner, PermanentResidency, Relationship, Revocation,
        ScreeningHit, ScreeningStatus, UsPersonStatus, Verification,
    };
    use crate::policy::EXAMPLE_POLICY;
    use proptest::prelude::*;
    use std::sync::OnceLock;
    use time::macros::datetime;

    fn policy() -> &'static CompiledPolicy {
        static P: OnceLock<CompiledPolicy> = OnceLock::new();
        P.get_or_init(CompiledPolicy::example)
    }

    const R: &str = "fable-5";
    const U: &str = "haiku-4";

    fn req(model: &str, country: &str) -> AccessRequest {
        AccessRequest {
            request_id: "r".into(),
            event_time: datetime!(2026-11-28 12:00 UTC),
            subject_id: "u".into(),
            organization_id: None,
            model: model.into(),
            geo: Some(Geolocation {
                country: Some(country.into()),
                confidence: Some(0.95),
                ..Geolocation::default()
            }),
        }
    }

    fn user(status: UsPersonStatus, citizenships: &[(&str, Option<&str>)]) -> UserRecord {
        UserRecord {
            id: "u".into(),
            version: 7,
            updated_at: None,
            us_person_status: status,
            citizenships: citizenships
                .iter()
                .map(|(c, d)| Citizenship {
                    country: (*c).into(),
                    acquired_on: d.map(Into::into),
                })
                .collect(),
            permanent_residencies: vec![],
            organization_id: None,
            relationship: None,
            verification: Some(Verification {
                status: VerificationStatus::Verified,
                verified_at: Some(datetime!(2026-01-01 0:00 UTC)),
                expires_at: Some(datetime!(2028-01-01 0:00 UTC)),
            }),
            revocation: None,
        }
    }

    fn org(id: &str) -> OrgRecord {
        OrgRecord {
            id: id.into(),
            version: 3,
            updated_at: None,
            name: None,
            headquarters: Some("US".into()),
            owners: vec![],
            screening_hits: vec![],
            authorizations: vec![],
        }
    }

    fn lic1() -> Authorization {
        Authorization {
            id: "LIC-1".into(),
            legal_basis: Some("order-2026-11".into()),
            model_tags: vec!["order-2026-11".into()],
            nationalities: vec!["CN".into()],
            subjects: vec![],
            relationships: vec![Relationship::Employee],
            valid_from: Some("2026-01-01".into()),
            valid_until: Some("2026-12-31".into()),
        }
    }

    fn run(u: Option<&UserRecord>, o: Option<&OrgRecord>, r: &AccessRequest) -> Verdict {
        decide(
            policy(),
            &Eligibility {
                subject: u,
                organization: o,
                data_stale: false,
                owners: &NoOrgs,
            },
            r,
        )
    }

    #[track_caller]
    fn check(v: &Verdict, outcome: Outcome, reasons: &[&str]) {
        assert_eq!(
            (v.outcome, v.reasons.as_slice()),
            (outcome, reasons),
            "{v:#?}"
        );
    }

    fn us() -> UserRecord {
        user(UsPersonStatus::Citizen, &[("US", Some("1990-01-01"))])
    }
    fn cn() -> UserRecord {
        user(UsPersonStatus::ForeignPerson, &[("CN", Some("1990-01-01"))])
    }

    #[test]
    fn s01_us_citizen_model_r_allowed_with_versions() {
        let v = run(Some(&us()), None, &req(R, "US"));
        check(&v, Outcome::Allow, &[reason::US_PERSON]);
        assert_eq!(v.versions.policy_id, "example");
        assert_eq!(v.versions.data_version, policy().data_version);
        assert_eq!(
            v.versions.subject,
            Some(RecordVersion {
                id: "u".into(),
                version: 7
            })
        );
        assert_eq!(v.versions.organization, None);
        assert!(v.obligations.is_empty());
    }

    #[test]
    fn s02_s03_chinese_h1b() {
        let v = run(Some(&cn()), None, &req(R, "US"));
        check(&v, Outcome::Deny, &[reason::RESTRICTED_NATIONALITY]);
        assert_eq!(v.rule_ids, vec!["deemed-export-nationality"]);
        assert_eq!(v.legal_basis, vec!["order-2026-11"]);
        check(
            &run(Some(&cn()), None, &req(U, "US")),
            Outcome::Allow,
            &[reason::UNRESTRICTED_MODEL],
        );
    }

    #[test]
    fn s04_s05_green_card_granted_or_pending() {
        let mut lpr = cn();
        lpr.us_person_status = UsPersonStatus::LawfulPermanentResident;
        check(
            &run(Some(&lpr), None, &req(R, "US")),
            Outcome::Allow,
            &[reason::US_PERSON],
        );
        let mut pending = cn();
        pending.permanent_residencies.push(PermanentResidency {
            country: "US".into(),
            status: ResidencyStatus::Pending,
            acquired_on: Some("2026-01-01".into()),
        });
        check(
            &run(Some(&pending), None, &req(R, "US")),
            Outcome::Deny,
            &[reason::RESTRICTED_NATIONALITY],
        );
    }

    #[test]
    fn s06_most_recent_vs_any_citizenship() {
        let u = user(
            UsPersonStatus::ForeignPerson,
            &[("CN", Some("1980-01-01")), ("GB", Some("2015-01-01"))],
        );
        let r = req(R, "US");
        check(
            &run(Some(&u), None, &r),
            Outcome::Allow,
            &[reason::NATIONALITY_NOT_RESTRICTED],
        );
        let strict = policy().with_nationality_mode(NationalityMode::AnyCitizenship);
        let v = decide(
            &strict,
            &Eligibility {
                subject: Some(&u),
                ..Eligibility::default()
            },
            &r,
        );
        check(&v, Outcome::Deny, &[reason::RESTRICTED_NATIONALITY]);
        // Missing date under most_recent: fail closed.
        let amb = user(
            UsPersonStatus::ForeignPerson,
            &[("CN", None), ("GB", Some("2015-01-01"))],
        );
        check(
            &run(Some(&amb), None, &r),
            Outcome::Deny,
            &[reason::RESTRICTED_NATIONALITY],
        );
        assert_eq!(
            derived_countries(&amb, NationalityMode::MostRecent),
            vec!["CN", "GB"]
        );
        assert_eq!(
            derived_countries(&u, NationalityMode::MostRecent),
            vec!["GB"]
        );
        assert_eq!(
            derived_countries(&u, NationalityMode::AnyCitizenship),
            vec!["GB", "CN"]
        );
    }

    #[test]
    fn s07_us_citizen_in_iran_denied_for_every_model() {
        for m in [R, U, "mythos-5", "opus-4"] {
            check(
                &run(Some(&us()), None, &req(m, "IR")),
                Outcome::Deny,
                &[reason::SANCTIONED_LOCATION],
            );
        }
    }

    #[test]
    fn s08_crimea_denied_kyiv_allowed() {
        let mut r = req(U, "UA");
        if let Some(g) = r.geo.as_mut() {
            g.subdivision = Some("UA-43".into());
        }
        check(
            &run(Some(&us()), None, &r),
            Outcome::Deny,
            &[reason::SANCTIONED_LOCATION],
        );
        if let Some(g) = r.geo.as_mut() {
            g.subdivision = Some("UA-30".into());
        }
        check(
            &run(Some(&us()), None, &r),
            Outcome::Allow,
            &[reason::UNRESTRICTED_MODEL],
        );
        r.model = R.into();
        check(
            &run(Some(&us()), None, &r),
            Outcome::Allow,
            &[reason::US_PERSON],
        );
        if let Some(g) = r.geo.as_mut() {
            g.subdivision = None;
            g.postal_code = Some("99 011".into()); // Sevastopol
        }
        check(
            &run(Some(&us()), None, &r),
            Outcome::Deny,
            &[reason::SANCTIONED_LOCATION],
        );
    }

    #[test]
    fn s09_macau_national_denied() {
        let u = user(UsPersonStatus::ForeignPerson, &[("MO", None)]);
        check(
            &run(Some(&u), None, &req(R, "US")),
            Outcome::Deny,
            &[reason::RESTRICTED_NATIONALITY],
        );
    }

    #[test]
    fn s10_fifty_percent_rule_sums_owners() {
        let mut u = user(UsPersonStatus::ForeignPerson, &[("SG", None)]);
        u.organization_id = Some("sg".into());
        let mut o = org("sg");
        o.owners = vec![
            Owner {
                id: "a".into(),
                kind: None,
                headquarters: Some("CN".into()),
                percent: 30.0,
            },
            Owner {
                id: "b".into(),
                kind: None,
                headquarters: Some("CN".into()),
                percent: 25.0,
            },
        ];
        let v = run(Some(&u), Some(&o), &req(R, "US"));
        check(&v, Outcome::Deny, &[reason::RESTRICTED_OWNERSHIP]);
        assert_eq!(
            v.versions.organization,
            Some(RecordVersion {
                id: "sg".into(),
                version: 3
            })
        );
        o.owners[1].percent = 19.9;
        check(
            &run(Some(&u), Some(&o), &req(R, "US")),
            Outcome::Allow,
            &[reason::NATIONALITY_NOT_RESTRICTED],
        );
    }

    #[test]
    fn s11_unknown_subject() {
        let v = run(None, None, &req(R, "US"));
        check(&v, Outcome::Deny, &[reason::UNKNOWN_SUBJECT]);
        assert_eq!(v.versions.subject, None);
        check(
            &run(None, None, &req(U, "US")),
            Outcome::Allow,
            &[reason::UNRESTRICTED_MODEL],
        );
    }

    #[test]
    fn s12_unknown_model() {
        let v = run(Some(&us()), None, &req("gpt-x", "US"));
        check(&v, Outcome::Deny, &[reason::UNKNOWN_MODEL]);
        assert_eq!(v.rule_ids, vec![builtin::UNKNOWN_MODEL]);
    }

    #[test]
    fn s13_s14_authorization_valid_until_last_day_inclusive() {
        let mut u = cn();
        u.organization_id = Some("acme".into());
        u.relationship = Some(Relationship::Employee);
        let mut o = org("acme");
        o.authorizations.push(lic1());
        let mut r = req(R, "US");
        r.event_time = datetime!(2026-12-31 23:59:59 UTC);
        let v = run(Some(&u), Some(&o), &r);
        check(&v, Outcome::Allow, &[reason::AUTHORIZED]);
        assert!(
            v.rule_ids.contains(&"authorization:LIC-1".to_string()),
            "{v:?}"
        );
        // The UTC date counts, not the local one.
        r.event_time = datetime!(2026-12-31 20:00 -05:00);
        check(
            &run(Some(&u), Some(&o), &r),
            Outcome::Deny,
            &[
                reason::RESTRICTED_NATIONALITY,
                reason::AUTHORIZATION_EXPIRED,
            ],
        );
        r.event_time = datetime!(2027-01-01 0:00 UTC);
        let v = run(Some(&u), Some(&o), &r);
        check(
            &v,
            Outcome::Deny,
            &[
                reason::RESTRICTED_NATIONALITY,
                reason::AUTHORIZATION_EXPIRED,
            ],
        );
        assert!(
            v.rule_ids.contains(&"authorization:LIC-1".to_string()),
            "{v:?}"
        );
        // A second, current authorization wins over the expired one.
        let mut lic2 = lic1();
        lic2.id = "LIC-2".into();
        lic2.valid_until = Some("2027-06-30".into());
        o.authorizations.push(lic2);
        let v = run(Some(&u), Some(&o), &r);
        check(&v, Outcome::Allow, &[reason::AUTHORIZED]);
        assert!(v.rule_ids.contains(&"authorization:LIC-2".to_string()));
        // Not a member of the organization and not named: no lift.
        u.organization_id = Some("other".into());
        check(
            &run(Some(&u), Some(&o), &r),
            Outcome::Deny,
            &[reason::RESTRICTED_NATIONALITY],
        );
    }

    #[test]
    fn s15_revocation_denies_every_model_whatever_its_time() {
        let mut u = us();
        check(
            &run(Some(&u), None, &req(R, "US")),
            Outcome::Allow,
            &[reason::US_PERSON],
        );
        u.version = 8;
        u.revocation = Some(Revocation {
            revoked_at: datetime!(2099-01-01 0:00 UTC),
            reason: None,
        });
        for m in [R, U] {
            check(
                &run(Some(&u), None, &req(m, "US")),
                Outcome::Deny,
                &[reason::SUBJECT_REVOKED],
            );
        }
    }

    #[test]
    fn s16_verification_expired() {
        let mut u = us();
        if let Some(v) = u.verification.as_mut() {
            v.expires_at = Some(datetime!(2026-11-28 12:00 UTC)); // expires exactly now
        }
        let v = run(Some(&u), None, &req(R, "US"));
        check(&v, Outcome::Deny, &[reason::VERIFICATION_STALE]);
        assert_eq!(v.obligations, vec![obligation::REVERIFY]);
        check(
            &run(Some(&u), None, &req(U, "US")),
            Outcome::Allow,
            &[reason::UNRESTRICTED_MODEL],
        );
        u.verification = None;
        check(
            &run(Some(&u), None, &req(R, "US")),
            Outcome::Deny,
            &[reason::VERIFICATION_STALE],
        );
    }

    #[test]
    fn s17_potential_match_held_for_review_naming_the_list() {
        let mut u = us();
        u.organization_id = Some("o".into());
        let mut o = org("o");
        o.screening_hits.push(ScreeningHit {
            list: "entity_list".into(),
            status: ScreeningStatus::Potential,
            entry: None,
        });
        let v = run(Some(&u), Some(&o), &req(R, "US"));
        check(&v, Outcome::Deny, &[reason::LISTED_PARTY_POTENTIAL]);
        assert_eq!(v.obligations, vec![obligation::MANUAL_REVIEW]);
        assert!(
            v.rule_ids.contains(&"list:entity_list".to_string()),
            "{v:?}"
        );
        o.screening_hits[0].status = ScreeningStatus::Cleared;
        check(
            &run(Some(&u), Some(&o), &req(R, "US")),
            Outcome::Allow,
            &[reason::US_PERSON],
        );
    }

    fn owner(id: &str, kind: Option<OwnerKind>, hq: Option<&str>, percent: f64) -> Owner {
        Owner {
            id: id.into(),
            kind,
            headquarters: hq.map(Into::into),
            percent,
        }
    }

    /// A member of `root`, deciding model R with `store` as owner records.
    fn chain_verdict(
        p: &CompiledPolicy,
        root: &OrgRecord,
        store: &std::collections::BTreeMap<String, Arc<OrgRecord>>,
    ) -> Verdict {
        let mut u = user(UsPersonStatus::ForeignPerson, &[("SG", None)]);
        u.organization_id = Some(root.id.clone());
        decide(
            p,
            &Eligibility {
                subject: Some(&u),
                organization: Some(root),
                data_stale: false,
                owners: store,
            },
            &req(R, "US"),
        )
    }

    /// org-0 owned 100% by org-1, ..., org-(n-1) owned 60% by a CN party.
    fn linear_chain(
        n: usize,
    ) -> (
        OrgRecord,
        std::collections::BTreeMap<String, Arc<OrgRecord>>,
    ) {
        let mut store = std::collections::BTreeMap::new();
        let mut root = None;
        for i in 0..n {
            let mut o = org(&format!("org-{i}"));
            o.headquarters = Some("SG".into());
            o.owners = if i + 1 < n {
                vec![owner(
                    &format!("org-{}", i + 1),
                    Some(OwnerKind::Organization),
                    None,
                    100.0,
                )]
            } else {
                vec![owner("p", Some(OwnerKind::Person), Some("CN"), 60.0)]
            };
            if i == 0 {
                root = Some(o);
            } else {
                store.insert(o.id.clone(), Arc::new(o));
            }
        }
        (root.unwrap_or_else(|| org("org-0")), store)
    }

    #[test]
    fn ownership_chain_is_followed_to_its_depth_bound_and_no_further() {
        // 11 records above the root: one more than the default depth.
        let (root, store) = linear_chain(12);
        let v = chain_verdict(policy(), &root, &store);
        check(&v, Outcome::Deny, &[reason::OWNERSHIP_UNKNOWN]);
        assert_eq!(v.versions.owners.len(), 10, "{:?}", v.versions.owners);
        // With max_depth = 11 the restricted party is reached.
        let deeper = CompiledPolicy::from_toml_str(
            &EXAMPLE_POLICY.replace(
                "threshold_percent = 50.0",
                "threshold_percent = 50.0\nmax_depth = 11",
            ),
            "deeper.toml",
        )
        .unwrap();
        let v = chain_verdict(&deeper, &root, &store);
        check(&v, Outcome::Deny, &[reason::RESTRICTED_OWNERSHIP]);
        assert_eq!(v.rule_ids, ["restricted-ownership", "owner:org-1"]);
        assert_eq!(v.versions.owners.len(), 11);
        assert_eq!(v.owner_records.len(), 11);
        // Without owner records nothing is followed: org-1 is a declared
        // organization without a record.
        let v = chain_verdict(policy(), &root, &std::collections::BTreeMap::new());
        check(&v, Outcome::Deny, &[reason::OWNERSHIP_UNKNOWN]);
        assert!(v.versions.owners.is_empty());
    }

    #[test]
    fn ownership_cycle_through_the_root_ends() {
        let mut root = org("a");
        root.owners = vec![
            owner("b", None, None, 50.0),
            owner("p", Some(OwnerKind::Person), Some("CN"), 20.0),
        ];
        let mut b = org("b");
        b.owners = vec![owner("a", None, None, 100.0)];
        let store = std::collections::BTreeMap::from([("b".to_string(), Arc::new(b))]);
        let v = chain_verdict(policy(), &root, &store);
        check(&v, Outcome::Allow, &[reason::NATIONALITY_NOT_RESTRICTED]);
        assert_eq!(
            v.versions.owners,
            [RecordVersion {
                id: "b".into(),
                version: 3
            }]
        );
    }

    #[test]
    fn replay_from_the_recorded_owner_records_decides_the_same() {
        let (root, store) = linear_chain(4);
        let live = chain_verdict(policy(), &root, &store);
        check(&live, Outcome::Deny, &[reason::RESTRICTED_OWNERSHIP]);
        let recorded: std::collections::BTreeMap<String, Arc<OrgRecord>> = live
            .owner_records
            .iter()
            .map(|o| (o.id.clone(), Arc::clone(o)))
            .collect();
        assert_eq!(chain_verdict(policy(), &root, &recorded), live);
        let as_slice = live.owner_records.clone();
        let mut u = user(UsPersonStatus::ForeignPerson, &[("SG", None)]);
        u.organization_id = Some(root.id.clone());
        let again = decide(
            policy(),
            &Eligibility {
                subject: Some(&u),
                organization: Some(&root),
                data_stale: false,
                owners: &as_slice,
            },
            &req(R, "US"),
        );
        assert_eq!(again, live);
    }

    fn geo_req(
        model: &str,
        country: Option<&str>,
        sub: Option<&str>,
        postal: Option<&str>,
    ) -> AccessRequest {
        let mut r = req(model, "US");
        r.geo = Some(Geolocation {
            country: country.map(Into::into),
            subdivision: sub.map(Into::into),
            postal_code: postal.map(Into::into),
            confidence: Some(0.95),
            ..Geolocation::default()
        });
        r
    }

    #[test]
    fn regions_by_subdivision_and_postal_code() {
        let us = user(UsPersonStatus::Citizen, &[("US", None)]);
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            &'a [&'a str],
        );
        let cases: &[Case<'_>] = &[
            // The fail-open: a DNR postal code without a subdivision.
            (
                Some("UA"),
                None,
                Some("83001"),
                &[reason::SANCTIONED_LOCATION],
            ),
            (
                None,
                Some("UA-14"),
                Some("83-001"),
                &[reason::SANCTIONED_LOCATION],
            ),
            (
                Some("UA"),
                Some("UA-09"),
                Some("94200"),
                &[reason::SANCTIONED_LOCATION],
            ),
            // The oblast outside the DNR: the postal code decides.
            (
                Some("UA"),
                Some("UA-14"),
                Some("84300"),
                &[reason::UNRESTRICTED_MODEL],
            ),
            // No usable postal code in a partly sanctioned subdivision.
            (
                Some("UA"),
                Some("UA-14"),
                None,
                &[reason::REGION_UNDETERMINED],
            ),
            (
                Some("UA"),
                Some("ua-14"),
                Some("N/A"),
                &[reason::REGION_UNDETERMINED],
            ),
            (
                Some("UA"),
                Some("UA-09"),
                Some("830012"),
                &[reason::REGION_UNDETERMINED],
            ),
            (
                Some("UA"),
                Some("UA-09"),
                Some(""),
                &[reason::REGION_UNDETERMINED],
            ),
            // Elsewhere in Ukraine; a DNR-like code in another country.
            (
                Some("UA"),
                Some("UA-30"),
                Some("01001"),
                &[reason::UNRESTRICTED_MODEL],
            ),
            (Some("UA"), None, None, &[reason::UNRESTRICTED_MODEL]),
            (
                Some("DE"),
                None,
                Some("83001"),
                &[reason::UNRESTRICTED_MODEL],
            ),
            // Crimea stays whole; its prefixes match too.
            (
                Some("UA"),
                Some("UA-43"),
                Some("01001"),
                &[reason::SANCTIONED_LOCATION],
            ),
            (
                Some("UA"),
                None,
                Some("95 000"),
                &[reason::SANCTIONED_LOCATION],
            ),
        ];
        for (country, sub, postal, want) in cases {
            let v = run(Some(&us), None, &geo_req(U, *country, *sub, *postal));
            assert_eq!(v.reasons, *want, "{country:?} {sub:?} {postal:?}: {v:?}");
        }
    }

    #[test]
    fn stale_data_denies_controlled_models_only() {
        let e = Eligibility {
            subject: None,
            organization: None,
            data_stale: true,
            owners: &NoOrgs,
        };
        let v = decide(policy(), &e, &req(R, "US"));
        check(
            &v,
            Outcome::Deny,
            &[reason::STALE_DATA, reason::UNKNOWN_SUBJECT],
        );
        check(
            &decide(policy(), &e, &req(U, "US")),
            Outcome::Allow,
            &[reason::UNRESTRICTED_MODEL],
        );
    }

    #[test]
    fn dates_parse_strictly() {
        assert_eq!(
            parse_date("2026-12-31"),
            Some(time::macros::date!(2026 - 12 - 31))
        );
        assert_eq!(
            parse_date(" 2026-01-01 "),
            Some(time::macros::date!(2026 - 01 - 01))
        );
        for bad in [
            "2026-02-30",
            "2026-1-01",
            "+2026-01-01",
            "2026-13-01",
            "abcd-01-01",
            "",
            "2026-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_country_that_is_not_a_code_is_never_unrestricted() {
        let r = req(R, "US");
        let u = user(UsPersonStatus::ForeignPerson, &[("China", None)]);
        check(
            &run(Some(&u), None, &r),
            Outcome::Deny,
            &[reason::NATIONALITY_UNKNOWN],
        );
        let u = user(
            UsPersonStatus::ForeignPerson,
            &[("GB", Some("2015-01-01")), ("Macau", None)],
        );
        check(
            &run(Some(&u), None, &r),
            Outcome::Deny,
            &[reason::NATIONALITY_UNKNOWN],
        );
        assert_eq!(
            derived_countries(&u, NationalityMode::MostRecent),
            vec!["GB", "??"]
        );
        let u = user(
            UsPersonStatus::ForeignPerson,
            &[("cn", None), ("Macau", None)],
        );
        check(
            &run(Some(&u), None, &r),
            Outcome::Deny,
            &[reason::RESTRICTED_NATIONALITY],
        );
    }

    #[test]
    fn reason_codes_are_lower_snake_case_and_unique() {
        let all: Vec<&str> = reason::ALLOW.iter().chain(reason::DENY).copied().collect();
        for c in &all {
            assert!(
                c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c}"
            );
            assert_eq!(reason::lookup(c), Some(*c));
        }
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        assert_eq!(reason::lookup("nope"), None);
        assert_eq!(reason::MALFORMED_REQUEST, "malformed_request");
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let mut u = user(
            UsPersonStatus::ForeignPerson,
            &[
                ("??", Some("not a date")),
                ("", None),
                ("ÇN", Some("2020-02-30")),
            ],
        );
        u.organization_id = Some("o".into());
        let mut o = org("o");
        o.owners.push(Owner {
            id: "x".into(),
            kind: None,
            headquarters: Some("CN".into()),
            percent: f64::NAN,
        });
        o.owners.push(Owner {
            id: "y".into(),
            kind: None,
            headquarters: Some("C".into()),
            percent: f64::INFINITY,
        });
        o.authorizations.push(Authorization {
            valid_from: Some("x".into()),
            valid_until: None,
            ..lic1()
        });
        let mut r = req(R, "ZZZ");
        r.event_time = datetime!(-9999-01-01 0:00 +23:59);
        if let Some(g) = r.geo.as_mut() {
            g.confidence = Some(f64::NAN);
            g.subdivision = Some("Ü".into());
            g.postal_code = Some("💥".into());
        }
        let v = run(Some(&u), Some(&o), &r);
        assert_eq!(v.outcome, Outcome::Deny);
        assert!(v.reasons.contains(&reason::UNVERIFIABLE_LOCATION));
    }

    // ---- Property tests ---------------------------------------------------

    const COUNTRIES: &[&str] = &[
        "US", "CN", "RU", "IN", "GB", "MO", "SG", "IR", "CU", "UA", "DE", "KP",
    ];

    fn country() -> impl Strategy<Value = String> {
        proptest::sample::select(COUNTRIES).prop_map(String::from)
    }

    fn date() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            (1970i32..2030, 1u8..13, 1u8..29)
                .prop_map(|(y, m, d)| Some(format!("{y:04}-{m:02}-{d:02}"))),
            Just(Some("garbage".to_string())),
        ]
    }

    fn status() -> impl Strategy<Value = UsPersonStatus> {
        proptest::sample::select(vec![
            UsPersonStatus::Citizen,
            UsPersonStatus::LawfulPermanentResident,
            UsPersonStatus::ProtectedIndividual,
            UsPersonStatus::ForeignPerson,
            UsPersonStatus::Unknown,
        ])
    }

    prop_compose! {
        fn arb_user()(
            st in status(),
            cits in proptest::collection::vec((country(), date()), 0..3),
            prs in proptest::collection::vec((country(), 0u8..3, date()), 0..2),
            in_org in any::<bool>(),
            rel in proptest::option::of(proptest::sample::select(vec![Relationship::Employee, Relationship::Contractor, Relationship::Visitor, Relationship::Other])),
            ver in 0u8..5,
            revoked in proptest::bool::weighted(0.1),
        ) -> UserRecord {
            let mut u = user(st, &[]);
            u.citizenships = cits.into_iter().map(|(country, acquired_on)| Citizenship { country, acquired_on }).collect();
            u.permanent_residencies = prs.into_iter().map(|(country, s, acquired_on)| PermanentResidency {
                country,
                status: [ResidencyStatus::Granted, ResidencyStatus::Pending, ResidencyStatus::Revoked][usize::from(s)],
                acquired_on,
            }).collect();
            u.organization_id = in_org.then(|| "o".to_string());
            u.relationship = rel;
            match ver {
                0 => u.verification = None,
                1 => if let Some(v) = u.verification.as_mut() { v.status = VerificationStatus::Pending },
                2 => if let Some(v) = u.verification.as_mut() { v.expires_at = Some(datetime!(2020-01-01 0:00 UTC)) },
                _ => {}
            }
            if revoked {
                u.revocation = Some(Revocation { revoked_at: datetime!(2026-01-01 0:00 UTC), reason: None });
            }
            u
        }
    }

    prop_compose! {
        fn arb_auth()(
            basis in proptest::sample::select(vec!["order-2026-11", "other"]),
            nats in proptest::collection::vec(country(), 0..2),
            from in date(),
            until in date(),
            all_tags in any::<bool>(),
        ) -> Authorization {
            Authorization {
                id: "A".into(),
                legal_basis: Some(basis.into()),
                model_tags: if all_tags { vec!["order-2026-11".into()] } else { vec![] },
                nationalities: nats,
                subjects: vec![],
                relationships: vec![],
                valid_from: from,
                valid_until: until,
            }
        }
    }

    prop_compose! {
        fn arb_org()(
            owners in proptest::collection::vec((proptest::option::of(country()), 0.0f64..60.0), 0..3),
            hits in proptest::collection::vec((0u8..3, proptest::sample::select(vec!["entity_list", "sdn"])), 0..2),
            auths in proptest::collection::vec(arb_auth(), 0..3),
        ) -> OrgRecord {
            let mut o = org("o");
            o.owners = owners.into_iter().enumerate().map(|(i, (headquarters, percent))| Owner { id: i.to_string(), kind: None, headquarters, percent }).collect();
            o.screening_hits = hits.into_iter().map(|(s, l)| ScreeningHit {
                list: l.into(),
                status: [ScreeningStatus::Confirmed, ScreeningStatus::Potential, ScreeningStatus::Cleared][usize::from(s)],
                entry: None,
            }).collect();
            o.authorizations = auths;
            o
        }
    }

    prop_compose! {
        fn arb_req()(
            model in proptest::sample::select(vec![R, "mythos-5", U, "sonnet-4", "gpt-x"]),
            geo in proptest::option::of((
                proptest::option::of(country()),
                proptest::option::of(proptest::sample::select(vec!["UA-43", "UA-30", "UA-14", "US-CA"])),
                proptest::option::of(0.0f64..1.0),
                proptest::bool::weighted(0.1),
            )),
            day in 0i64..800,
            org_in_req in any::<bool>(),
        ) -> AccessRequest {
            let mut r = req(model, "US");
            r.event_time = datetime!(2026-01-01 12:00 UTC) + time::Duration::days(day);
            r.geo = geo.map(|(country, sub, confidence, vpn)| Geolocation {
                country,
                subdivision: sub.map(String::from),
                postal_code: None,
                confidence,
                vpn,
                hosting: false,
            });
            r.organization_id = org_in_req.then(|| "o".to_string());
            r
        }
    }

    fn nationality_rule_ids(p: &CompiledPolicy) -> Vec<String> {
        p.rules
            .iter()
            .filter(|r| matches!(r.kind, RuleKind::NationalityIn { .. }))
            .map(|r| r.id.clone())
            .collect()
    }

    fn mode() -> impl Strategy<Value = NationalityMode> {
        proptest::sample::select(vec![
            NationalityMode::MostRecent,
            NationalityMode::AnyCitizenship,
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn us_person_is_never_denied_by_a_nationality_rule(
            mut u in arb_user(), o in proptest::option::of(arb_org()), r in arb_req(), m in mode(),
            st in proptest::sample::select(vec![UsPersonStatus::Citizen, UsPersonStatus::LawfulPermanentResident, UsPersonStatus::ProtectedIndividual]),
        ) {
            u.us_person_status = st;
            let p = policy().with_nationality_mode(m);
            let v = decide(&p, &Eligibility { subject: Some(&u), organization: o.as_ref(), data_stale: false, owners: &NoOrgs }, &r);
            prop_assert!(!v.reasons.contains(&reason::RESTRICTED_NATIONALITY), "{v:?}");
            prop_assert!(!v.reasons.contains(&reason::NATIONALITY_UNKNOWN), "{v:?}");
            if v.outcome == Outcome::Deny {
                for id in nationality_rule_ids(&p) {
                    prop_assert!(!v.rule_ids.contains(&id), "{v:?}");
                }
            }
        }

        #[test]
        fn decisions_are_deterministic_and_well_formed(
            u in proptest::option::of(arb_user()), o in proptest::option::of(arb_org()), r in arb_req(), stale in any::<bool>(),
        ) {
            let e = Eligibility { subject: u.as_ref(), organization: o.as_ref(), data_stale: stale, owners: &NoOrgs };
            let a = decide(policy(), &e, &r);
            let (u2, o2, r2) = (u.clone(), o.clone(), r.clone());
            let b = decide(policy(), &Eligibility { subject: u2.as_ref(), organization: o2.as_ref(), data_stale: stale, owners: &NoOrgs }, &r2);
            prop_assert_eq!(&a, &b);
            prop_assert!(!a.reasons.is_empty());
            let allowed = match a.outcome { Outcome::Allow => reason::ALLOW, Outcome::Deny => reason::DENY };
            for c in &a.reasons {
                prop_assert!(allowed.contains(c), "{:?} in {:?}", c, a);
            }
            if a.outcome == Outcome::Allow {
                prop_assert!(a.obligations.is_empty());
                prop_assert!(u.as_ref().is_none_or(|u| u.revocation.is_none()));
            }
            prop_assert_eq!(a.versions.subject.map(|s| s.version), u.map(|u| u.version));
        }

        #[test]
        fn no_authorization_lifts_a_sanctioned_location(
            mut u in arb_user(), mut o in arb_org(), mut r in arb_req(),
            place in proptest::sample::select(vec![("IR", None), ("CU", None), ("KP", None), ("UA", Some("UA-43")), ("UA", Some("UA-09"))]),
        ) {
            // The broadest authorization there is, valid on the event date.
            o.authorizations.push(Authorization {
                id: "BROAD".into(),
                legal_basis: Some("order-2026-11".into()),
                model_tags: vec!["order-2026-11".into()],
                nationalities: vec![],
                subjects: vec![u.id.clone()],
                relationships: vec![],
                valid_from: Some("2000-01-01".into()),
                valid_until: Some("2100-01-01".into()),
            });
            u.organization_id = Some(o.id.clone());
            r.geo = Some(Geolocation {
                country: Some(place.0.into()),
                subdivision: place.1.map(String::from),
                confidence: Some(0.99),
                ..Geolocation::default()
            });
            let v = run(Some(&u), Some(&o), &r);
            prop_assert_eq!(v.outcome, Outcome::Deny);
            // In UA-09 without a postal code the request cannot be placed
            // inside or outside the LNR: denied all the same.
            let located = if place.1 == Some("UA-09") { reason::REGION_UNDETERMINED } else { reason::SANCTIONED_LOCATION };
            prop_assert!(v.reasons.contains(&located), "{:?}", v);
        }

        #[test]
        fn adding_restricted_ownership_anywhere_in_a_chain_never_turns_a_deny_into_an_allow(
            n in 1usize..6,
            raw_edges in proptest::collection::vec((0usize..6, 0usize..8, 0.0f64..70.0, 0u8..4), 0..14),
            add_at in 0usize..6, add_percent in 1.0f64..60.0, person in any::<bool>(),
        ) {
            // Organizations o0 (the root) .. o(n-1); an edge (i, j, p, hq)
            // gives o(i) an owner: o(j) when j < n, else a leaf party whose
            // headquarters is CN, SG, MO or unknown.
            let build = |extra: Option<(usize, f64)>| {
                let mut orgs: Vec<OrgRecord> = (0..n).map(|i| {
                    let mut o = org(&format!("o{i}"));
                    o.headquarters = Some("SG".into());
                    o
                }).collect();
                for (i, j, p, hq) in &raw_edges {
                    let Some(o) = orgs.get_mut(i % n) else { continue };
                    if *j < n {
                        o.owners.push(owner(&format!("o{j}"), Some(OwnerKind::Organization), None, *p));
                    } else {
                        let hq = ["CN", "SG", "MO"].get(usize::from(*hq));
                        o.owners.push(owner(&format!("leaf{j}"), None, hq.copied(), *p));
                    }
                }
                if let Some((at, p)) = extra {
                    let kind = if person { Some(OwnerKind::Person) } else { None };
                    orgs[at % n].owners.push(owner("added", kind, Some("CN"), p));
                }
                let root = orgs.remove(0);
                let store: std::collections::BTreeMap<String, Arc<OrgRecord>> =
                    orgs.into_iter().map(|o| (o.id.clone(), Arc::new(o))).collect();
                (root, store)
            };
            let (root, store) = build(None);
            let before = chain_verdict(policy(), &root, &store);
            let (root2, store2) = build(Some((add_at, add_percent)));
            let after = chain_verdict(policy(), &root2, &store2);
            if before.outcome == Outcome::Deny {
                prop_assert_eq!(after.outcome, Outcome::Deny, "{:?} then {:?}", before, after);
            }
            if before.reasons.contains(&reason::RESTRICTED_OWNERSHIP) {
                prop_assert!(after.reasons.contains(&reason::RESTRICTED_OWNERSHIP));
            }
            // Replay from the recorded owner records decides the same.
            let recorded = before.owner_records.clone();
            let mut u = user(UsPersonStatus::ForeignPerson, &[("SG", None)]);
            u.organization_id = Some(root.id.clone());
            let replayed = decide(policy(), &Eligibility { subject: Some(&u), organization: Some(&root), data_stale: false, owners: &recorded }, &req(R, "US"));
            prop_assert_eq!(replayed, before);
        }

        #[test]
        fn adding_a_deny_rule_never_turns_a_deny_into_an_allow(
            u in proptest::option::of(arb_user()), o in proptest::option::of(arb_org()), r in arb_req(),
            extra in proptest::sample::select(vec![
                "kind = \"nationality_in\"\nset = \"D:1\"\nliftable_by_authorization = true",
                "kind = \"ownership_in\"\nset = \"E:1\"\nthreshold_percent = 10.0",
                "kind = \"location_in\"\nset = \"D:5\"\non_missing_data = \"skip\"",
                "kind = \"listed_party\"\nstatus = \"potential\"",
                "kind = \"verification_current\"\nmax_age_days = 200",
                "kind = \"subject_known\"",
            ]),
            scope in proptest::sample::select(vec!["\"all\"", "[\"order-2026-11\"]"]),
            basis in proptest::sample::select(vec!["order-2026-11", "extra-basis"]),
        ) {
            let text = format!(
                "{EXAMPLE_POLICY}\n[[rules]]\nid = \"extra\"\nlegal_basis = \"{basis}\"\neffect = \"deny\"\nscope = {scope}\n{extra}\n"
            );
            let stricter = CompiledPolicy::from_toml_str(&text, "stricter.toml").map_err(|e| TestCaseError::fail(e.to_string()))?;
            let e = Eligibility { subject: u.as_ref(), organization: o.as_ref(), data_stale: false, owners: &NoOrgs };
            let base = decide(policy(), &e, &r);
            let more = decide(&stricter, &e, &r);
            if base.outcome == Outcome::Deny {
                prop_assert_eq!(more.outcome, Outcome::Deny, "{:?} -> {:?}", base, more);
            }
        }
    }
}
