//! Wire types: the access request, the eligibility records of the change
//! feed, the decision and the dead-letter record, with decoding that returns
//! typed errors.
//!
//! All types ignore unknown fields (forward compatibility). The JSON Schemas
//! in `schemas/` are generated from these types (the `schema` module: the
//! `JsonSchema` derives and their `#[schemars(...)]` attributes); tests
//! check that the checked-in files are the generated ones, and that they
//! agree with serde and the decoders.
//!
//! This module does no I/O.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::schema::types::{self as schema, CountryCode as Country, Date, DateTime};
use crate::shape::{objects, opt_object, MapOnly, ObjectOnly};

/// An ISO 3166-1 alpha-2 country code, upper case (`"US"`, `"CN"`).
pub type CountryCode = String;

// ---------------------------------------------------------------------------
// Access request
// ---------------------------------------------------------------------------

/// A request to use a model, as published by an API frontend on
/// `access.requests`. The record key is the subject id (so one subject's
/// requests stay in order); the value is this document as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccessRequest {
    /// Unique id of the request, chosen by the frontend. The engine decides
    /// every record and does not deduplicate: a `request_id` produced twice
    /// gets two decisions, one per record, which may differ (each is decided
    /// with the data and policy of its own moment). Retry with the same
    /// `request_id` and `event_time`, and take the latest decision for the
    /// id.
    #[schemars(length(min = 1))]
    pub request_id: String,
    /// When the frontend received the request (RFC 3339). The policy is
    /// evaluated "as of" this instant, which keeps decisions replayable.
    /// The engine rejects years outside 2000..=2200.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "DateTime")]
    pub event_time: OffsetDateTime,
    /// The user making the request.
    #[schemars(length(min = 1))]
    pub subject_id: String,
    /// The organization the user acts for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// The model id requested (`"fable-5"`).
    #[schemars(length(min = 1))]
    pub model: String,
    /// Where the request comes from, as far as the frontend could tell.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_object"
    )]
    pub geo: Option<Geolocation>,
}

/// The geolocation of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Geolocation {
    /// Country of the request's origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Country>")]
    pub country: Option<CountryCode>,
    /// ISO 3166-2 subdivision (`"UA-43"` for Crimea).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z]{2}-[A-Z0-9]{1,3}$"))]
    pub subdivision: Option<String>,
    /// Postal code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// Confidence of the geolocation, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1))]
    pub confidence: Option<f64>,
    /// The address belongs to a known VPN.
    #[serde(default)]
    pub vpn: bool,
    /// The address belongs to a hosting provider.
    #[serde(default)]
    pub hosting: bool,
}

// ---------------------------------------------------------------------------
// Eligibility records (change feed)
// ---------------------------------------------------------------------------

/// A value of the compacted `eligibility.changes` topic: a user or an
/// organization, told apart by `kind`. The record key is `user:<id>` or
/// `organization:<id>` and must match the document's kind and id. A null
/// Kafka value (no document at all) is a tombstone: it deletes the key's
/// record. Per key, a record with an older `version` never replaces a newer
/// one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EligibilityRecord {
    /// A user (subject): `kind` `"user"`, keyed `user:<id>`.
    User(UserRecord),
    /// An organization: `kind` `"organization"`, keyed `organization:<id>`.
    Organization(OrgRecord),
}

impl EligibilityRecord {
    /// The store key of this record: `user:<id>` or `organization:<id>`.
    pub fn key(&self) -> String {
        match self {
            EligibilityRecord::User(u) => format!("user:{}", u.id),
            EligibilityRecord::Organization(o) => format!("organization:{}", o.id),
        }
    }

    /// The per-key version of this record.
    pub fn version(&self) -> u64 {
        match self {
            EligibilityRecord::User(u) => u.version,
            EligibilityRecord::Organization(o) => o.version,
        }
    }
}

/// U.S. person status (deemed-export rule, 15 CFR 734.13 and 8 U.S.C. 1324b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsPersonStatus {
    /// U.S. citizen.
    Citizen,
    /// Lawful permanent resident (green card granted).
    LawfulPermanentResident,
    /// Refugee or asylee (protected individual).
    ProtectedIndividual,
    /// Anyone else: visa holders, pending applications, and so on.
    ForeignPerson,
    /// Not established.
    Unknown,
}

impl UsPersonStatus {
    /// Citizens, green-card holders and protected individuals are U.S. persons.
    pub fn is_us_person(self) -> bool {
        matches!(
            self,
            UsPersonStatus::Citizen
                | UsPersonStatus::LawfulPermanentResident
                | UsPersonStatus::ProtectedIndividual
        )
    }
}

/// A citizenship, with the date it was acquired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Citizenship {
    /// Country of citizenship.
    #[schemars(with = "Country")]
    pub country: CountryCode,
    /// When it was acquired (`YYYY-MM-DD`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Date>")]
    pub acquired_on: Option<String>,
}

/// Status of a permanent residency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResidencyStatus {
    /// Granted.
    Granted,
    /// Applied for, not granted: does not count.
    Pending,
    /// Revoked or abandoned.
    Revoked,
}

/// A permanent residency (in any country, including the U.S.).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PermanentResidency {
    /// Country of residency.
    #[schemars(with = "Country")]
    pub country: CountryCode,
    /// Status of the residency.
    pub status: ResidencyStatus,
    /// When it was granted (`YYYY-MM-DD`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Date>")]
    pub acquired_on: Option<String>,
}

/// Relationship of a user to their organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Relationship {
    /// Employee.
    Employee,
    /// Contractor.
    Contractor,
    /// Visitor.
    Visitor,
    /// Customer or other.
    Other,
}

/// Identity verification status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    /// Verified and (unless `expires_at` has passed) current.
    Verified,
    /// Started, not finished.
    Pending,
    /// Failed.
    Failed,
    /// Expired.
    Expired,
}

/// Identity verification of a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Verification {
    /// Status.
    pub status: VerificationStatus,
    /// When the verification was done.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DateTime>")]
    pub verified_at: Option<OffsetDateTime>,
    /// When the verification stops being valid.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DateTime>")]
    pub expires_at: Option<OffsetDateTime>,
}

/// A revocation of a subject's access, published by the compliance team.
/// It takes effect on arrival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Revocation {
    /// When the access was revoked.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "DateTime")]
    pub revoked_at: OffsetDateTime,
    /// Free-text reason, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The eligibility data of one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserRecord {
    /// User id (the request's `subject_id`).
    #[schemars(length(min = 1))]
    pub id: String,
    /// Per-key version; an older version never replaces a newer one.
    pub version: u64,
    /// When this version was written.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DateTime>")]
    pub updated_at: Option<OffsetDateTime>,
    /// U.S. person status.
    pub us_person_status: UsPersonStatus,
    /// Citizenships, with their dates.
    #[serde(default, deserialize_with = "objects")]
    pub citizenships: Vec<Citizenship>,
    /// Permanent residencies, with their dates and status.
    #[serde(default, deserialize_with = "objects")]
    pub permanent_residencies: Vec<PermanentResidency>,
    /// The organization the user belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// Relationship to that organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationship: Option<Relationship>,
    /// Identity verification.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_object"
    )]
    pub verification: Option<Verification>,
    /// Set when the subject's access has been revoked.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_object"
    )]
    pub revocation: Option<Revocation>,
}

/// What kind of party an owner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    /// An organization: its own record (`organization:<id>`) is followed
    /// when the store has it, and a missing record is missing data.
    Organization,
    /// A natural person: never looked up; `headquarters` is their country.
    Person,
}

/// A direct owner of an organization, with its share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Owner {
    /// Owner id: an organization id (the key of its own record) or a person.
    pub id: String,
    /// Organization or person. When absent, the owner is followed if the
    /// store has an organization record with this id, and otherwise judged
    /// by `headquarters` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<OwnerKind>,
    /// Where the owner is headquartered (or of which country a person is).
    /// The owner's own record, when followed, takes precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Country>")]
    pub headquarters: Option<CountryCode>,
    /// Direct share of ownership, in percent (0–100). Indirect ownership is
    /// computed by following owner records (OFAC's 50% rule), not entered
    /// here.
    #[schemars(range(min = 0, max = 100))]
    pub percent: f64,
}

/// Status of a restricted-party screening hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScreeningStatus {
    /// Confirmed: the party is listed.
    Confirmed,
    /// Potential match, unresolved: needs human review.
    Potential,
    /// Reviewed and found to be a false positive.
    Cleared,
}

/// A restricted-party screening hit (Entity List, SDN, Unverified List, MEU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScreeningHit {
    /// The list (`"entity_list"`, `"sdn"`, `"unverified_list"`, `"meu"`).
    #[schemars(example = &"entity_list", example = &"sdn", example = &"unverified_list", example = &"meu")]
    pub list: String,
    /// Confirmed, potential or cleared.
    pub status: ScreeningStatus,
    /// The list entry matched, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

/// A license, license exception or government authorization held by an
/// organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = authorization_dates_required)]
pub struct Authorization {
    /// Authorization id (license number).
    pub id: String,
    /// The legal basis it is granted under (`"EAR 734.13"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<String>,
    /// Model tags it covers.
    #[serde(default)]
    pub model_tags: Vec<String>,
    /// Nationalities it covers (empty: any).
    #[serde(default)]
    #[schemars(with = "Vec<Country>")]
    pub nationalities: Vec<CountryCode>,
    /// Subjects it covers (empty: any member of the organization).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Relationships it covers (empty: any).
    #[serde(default)]
    pub relationships: Vec<Relationship>,
    /// First day of validity (`YYYY-MM-DD`, inclusive). Required: a record
    /// with a missing or unreadable date is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Date")]
    pub valid_from: Option<String>,
    /// Last day of validity (`YYYY-MM-DD`, inclusive, not before
    /// `valid_from`). Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Date")]
    pub valid_until: Option<String>,
}

/// The decoder requires both validity dates of an authorization (see
/// `check_dates`); serde alone would take them as optional.
fn authorization_dates_required(schema: &mut schemars::Schema) {
    schema::require(schema, &["valid_from", "valid_until"]);
}

/// The eligibility data of one organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrgRecord {
    /// Organization id.
    #[schemars(length(min = 1))]
    pub id: String,
    /// Per-key version; an older version never replaces a newer one.
    pub version: u64,
    /// When this version was written.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<DateTime>")]
    pub updated_at: Option<OffsetDateTime>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Country of the headquarters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Country>")]
    pub headquarters: Option<CountryCode>,
    /// Owners with their (direct plus indirect) percentages.
    #[serde(default, deserialize_with = "objects")]
    pub owners: Vec<Owner>,
    /// Restricted-party screening hits.
    #[serde(default, deserialize_with = "objects")]
    pub screening_hits: Vec<ScreeningHit>,
    /// Authorizations held.
    #[serde(default, deserialize_with = "objects")]
    pub authorizations: Vec<Authorization>,
}

// ---------------------------------------------------------------------------
// Decision
// ---------------------------------------------------------------------------

/// Allow or deny.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The subject may use the model.
    Allow,
    /// The subject may not use the model.
    Deny,
}

impl Outcome {
    /// `"allow"` or `"deny"`, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

/// The version of one eligibility record a decision used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordVersion {
    /// Record id.
    pub id: String,
    /// Record version.
    pub version: u64,
}

/// The versions a decision was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Versions {
    /// Policy id.
    pub policy_id: String,
    /// Policy version.
    pub policy_version: String,
    /// Version of the country lists and tables the policy carries.
    pub data_version: String,
    /// SHA-256 (lower-case hex) of the policy text the decision was made with: replay
    /// takes the text of (`policy_id`, `policy_version`) from the policy
    /// history and checks it has this digest. Empty only in decisions
    /// recorded before digests were.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9a-f]{64}(\+.*)?)?$"))]
    pub policy_digest: String,
    /// The subject record used, if there was one.
    pub subject: Option<RecordVersion>,
    /// The organization record used, if there was one.
    pub organization: Option<RecordVersion>,
    /// The owner organizations' records followed for ownership (the chain
    /// above `organization`), in the order they were read. Absent when
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<RecordVersion>,
}

/// The exact inputs of a decision: enough to decide again without the
/// change feed's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DecisionInputs {
    /// The request, as decoded.
    pub request: AccessRequest,
    // Shared with the store: a decision does not copy the records it used.
    /// The subject's eligibility record at decision time.
    pub subject: Option<Arc<UserRecord>>,
    /// The organization's eligibility record at decision time.
    pub organization: Option<Arc<OrgRecord>>,
    /// The owner organizations' records followed for ownership, as in
    /// `versions.owners`: replay decides from these alone. Absent when
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<Arc<OrgRecord>>,
}

/// Where a record came from in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SourceCoordinates {
    /// Topic.
    #[schemars(length(min = 1))]
    pub topic: String,
    /// Partition.
    #[schemars(range(min = 0))]
    pub partition: i32,
    /// Offset.
    #[schemars(range(min = 0))]
    pub offset: i64,
}

/// An allow or deny decision, published on `access.decisions` keyed by
/// `request_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    /// The request decided.
    pub request_id: String,
    /// Allow or deny.
    pub outcome: Outcome,
    /// Stable reason codes (`vocab::Reason`), most important first.
    #[schemars(with = "Vec<crate::vocab::Reason>")]
    pub reasons: Vec<String>,
    /// Ids of the policy rules that matched.
    pub rule_ids: Vec<String>,
    /// Legal bases of the rules that matched.
    #[serde(default)]
    pub legal_basis: Vec<String>,
    /// Obligations attached to a deny (`"reverify"`, `"manual_review"`).
    #[serde(default)]
    #[schemars(with = "Vec<crate::vocab::Obligation>")]
    pub obligations: Vec<String>,
    /// Versions of the policy and records used.
    pub versions: Versions,
    /// The exact inputs; null only for malformed requests.
    pub inputs: Option<DecisionInputs>,
    /// When the engine decided (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "DateTime")]
    pub decided_at: OffsetDateTime,
    /// Where the request was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceCoordinates>,
    /// The engine instance that decided.
    #[serde(default)]
    pub engine_instance: String,
}

// ---------------------------------------------------------------------------
// Shadow difference
// ---------------------------------------------------------------------------

/// One side of a shadow difference: what a policy decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShadowSide {
    /// Allow or deny.
    pub outcome: Outcome,
    /// Reason codes, most important first.
    #[schemars(with = "Vec<crate::vocab::Reason>")]
    pub reasons: Vec<String>,
    /// Rule ids and citations.
    pub rule_ids: Vec<String>,
    /// Policy id.
    pub policy_id: String,
    /// Policy version.
    pub policy_version: String,
    /// SHA-256 (lower-case hex) of the policy text.
    #[schemars(regex(pattern = r"^([0-9a-f]{64}(\+.*)?)?$"))]
    pub policy_digest: String,
}

/// A request on which a shadow (candidate) policy decided otherwise than the
/// active one, published on `access.shadow` keyed by `request_id`. The
/// decision itself (on `access.decisions`) used the active policy only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShadowDifference {
    /// The request.
    pub request_id: String,
    /// The subject.
    pub subject_id: String,
    /// The model requested.
    pub model: String,
    /// What the active policy decided (the decision published).
    pub active: ShadowSide,
    /// What the shadow policy would have decided.
    pub shadow: ShadowSide,
    /// When the engine decided (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "DateTime")]
    pub decided_at: OffsetDateTime,
    /// Where the request was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceCoordinates>,
}

// ---------------------------------------------------------------------------
// Dead letter
// ---------------------------------------------------------------------------

/// A record that could not be processed, published on `access.deadletter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetter {
    /// Stable error code (`"invalid_json"`, `"missing_field"`, ...).
    #[schemars(example = &"empty", example = &"too_large", example = &"not_utf8", example = &"invalid_json", example = &"invalid_document", example = &"missing_field", example = &"invalid_field")]
    pub error_kind: String,
    /// Human-readable error.
    pub error: String,
    /// Where the record was read from.
    pub source: SourceCoordinates,
    /// The record key, lossily decoded as UTF-8, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The original bytes, base64 (standard alphabet, padded), truncated to
    /// the configured limit.
    #[schemars(regex(pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"), extend("contentEncoding" = "base64"))]
    pub payload_base64: String,
    /// Size of the original payload in bytes.
    pub payload_size: usize,
    /// Whether `payload_base64` holds fewer bytes than the original.
    pub truncated: bool,
    /// The request id, if one could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When the engine dead-lettered it.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "DateTime")]
    pub at: OffsetDateTime,
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The record has no value.
    #[error("record has no value")]
    Empty,
    /// The record is larger than the configured limit.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not UTF-8.
    #[error("payload is not valid UTF-8: {0}")]
    NotUtf8(String),
    /// The bytes are not JSON.
    #[error("payload is not JSON: {0}")]
    InvalidJson(String),
    /// JSON, but not a valid document of the expected type.
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    /// A required field is missing.
    #[error("missing field: {0}")]
    MissingField(String),
    /// A field has a value that is not allowed.
    #[error("invalid field {field}: {message}")]
    InvalidField {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl DecodeError {
    /// Stable error code, used in dead letters and as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotUtf8(_) => "not_utf8",
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::InvalidDocument(_) => "invalid_document",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
        }
    }
}

// Every document and every nested object is read through
// [`crate::shape::ObjectOnly`], which refuses serde's positional (array)
// form of a struct.

fn classify(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => DecodeError::InvalidJson(msg),
        Category::Data => {
            if let Some(rest) = msg.strip_prefix("missing field `") {
                let field = rest.split('`').next().unwrap_or("").to_string();
                DecodeError::MissingField(field)
            } else {
                DecodeError::InvalidDocument(msg)
            }
        }
    }
}

/// Oldest and newest event times accepted (years 2000 to 2200): anything
/// outside is a broken clock or a hostile input.
const MIN_EVENT_YEAR: i32 = 2000;
const MAX_EVENT_YEAR: i32 = 2200;

/// Decode an access request, checking the fields the schema requires.
pub fn decode_request(bytes: &[u8]) -> Result<AccessRequest, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.to_string()))?;
    let MapOnly(req): ObjectOnly<AccessRequest> = serde_json::from_str(text).map_err(classify)?;
    if req.request_id.is_empty() {
        return Err(DecodeError::InvalidField {
            field: "request_id".into(),
            message: "must not be empty".into(),
        });
    }
    if req.subject_id.is_empty() {
        return Err(DecodeError::InvalidField {
            field: "subject_id".into(),
            message: "must not be empty".into(),
        });
    }
    if req.model.is_empty() {
        return Err(DecodeError::InvalidField {
            field: "model".into(),
            message: "must not be empty".into(),
        });
    }
    let year = req.event_time.year();
    if !(MIN_EVENT_YEAR..=MAX_EVENT_YEAR).contains(&year) {
        return Err(DecodeError::InvalidField {
            field: "event_time".into(),
            message: format!("year {year} is outside {MIN_EVENT_YEAR}..={MAX_EVENT_YEAR}"),
        });
    }
    if let Some(c) = req.geo.as_ref().and_then(|g| g.confidence) {
        if !(0.0..=1.0).contains(&c) {
            return Err(DecodeError::InvalidField {
                field: "geo.confidence".into(),
                message: format!("{c} is outside 0.0..=1.0"),
            });
        }
    }
    Ok(req)
}

/// Parse a `YYYY-MM-DD` date (surrounding spaces allowed); `None` if it is
/// anything else or not a real calendar date. Every date field of an
/// eligibility record is checked with it at decode, so the decision core
/// never meets a date it cannot read.
pub fn parse_date(s: &str) -> Option<time::Date> {
    let b = s.trim().as_bytes();
    let num = |r: &[u8]| {
        r.iter().try_fold(0u16, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u16::from(d - b'0'))
        })
    };
    match b {
        [y @ .., b'-', m1, m2, b'-', d1, d2] if y.len() == 4 => {
            let month = time::Month::try_from(u8::try_from(num(&[*m1, *m2])?).ok()?).ok()?;
            let day = u8::try_from(num(&[*d1, *d2])?).ok()?;
            time::Date::from_calendar_date(i32::from(num(y)?), month, day).ok()
        }
        _ => None,
    }
}

/// Check every date of an eligibility record: each is a real `YYYY-MM-DD`
/// date, and an authorization has both validity dates, in order. A date
/// that cannot be read would otherwise be ignored by the decision core (a
/// licence that silently never applies, a citizenship that never counts
/// as the most recent).
fn check_dates(rec: &EligibilityRecord) -> Result<(), DecodeError> {
    fn date(
        field: String,
        v: Option<&str>,
        required: bool,
    ) -> Result<Option<time::Date>, DecodeError> {
        match v {
            None if required => Err(DecodeError::InvalidField {
                field,
                message: "required: an authorization without it would never apply".into(),
            }),
            None => Ok(None),
            Some(v) => parse_date(v)
                .map(Some)
                .ok_or_else(|| DecodeError::InvalidField {
                    field,
                    message: format!("{v:?} is not a calendar date YYYY-MM-DD"),
                }),
        }
    }
    match rec {
        EligibilityRecord::User(u) => {
            for (i, c) in u.citizenships.iter().enumerate() {
                date(
                    format!("citizenships[{i}].acquired_on"),
                    c.acquired_on.as_deref(),
                    false,
                )?;
            }
            for (i, r) in u.permanent_residencies.iter().enumerate() {
                date(
                    format!("permanent_residencies[{i}].acquired_on"),
                    r.acquired_on.as_deref(),
                    false,
                )?;
            }
        }
        EligibilityRecord::Organization(o) => {
            for (i, a) in o.authorizations.iter().enumerate() {
                let from = date(
                    format!("authorizations[{i}].valid_from"),
                    a.valid_from.as_deref(),
                    true,
                )?;
                let until = date(
                    format!("authorizations[{i}].valid_until"),
                    a.valid_until.as_deref(),
                    true,
                )?;
                if let (Some(from), Some(until)) = (from, until) {
                    if from > until {
                        return Err(DecodeError::InvalidField {
                            field: format!("authorizations[{i}].valid_until"),
                            message: format!("{until} is before valid_from {from}"),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reject a payload above `limit` bytes before decoding it.
pub fn check_size(bytes: &[u8], limit: usize) -> Result<(), DecodeError> {
    if bytes.len() > limit {
        Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        })
    } else {
        Ok(())
    }
}

/// Best effort: the `request_id` of a payload that failed to decode, so
/// that a deny decision can still be published for it.
pub fn salvage_request_id(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Partial {
        request_id: String,
    }
    let p: Partial = serde_json::from_slice(bytes).ok()?;
    (!p.request_id.is_empty()).then_some(p.request_id)
}

/// Decode a change-feed value. The key must match the record's kind and id.
pub fn decode_eligibility(key: &[u8], bytes: &[u8]) -> Result<EligibilityRecord, DecodeError> {
    decode_eligibility_by(key, bytes, true)
}

/// [`decode_eligibility`] without its fast path (the tests compare them).
#[cfg(test)]
pub(crate) fn decode_eligibility_general(
    key: &[u8],
    bytes: &[u8],
) -> Result<EligibilityRecord, DecodeError> {
    decode_eligibility_by(key, bytes, false)
}

fn decode_eligibility_by(
    key: &[u8],
    bytes: &[u8],
    fast: bool,
) -> Result<EligibilityRecord, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.to_string()))?;
    let rec = match fast.then(|| user_kind_first(key, text)).flatten() {
        Some(u) => EligibilityRecord::User(u),
        None => {
            let MapOnly(rec): ObjectOnly<EligibilityRecord> =
                serde_json::from_str(text).map_err(classify)?;
            rec
        }
    };
    check_dates(&rec)?;
    let expected = rec.key();
    if key != expected.as_bytes() {
        return Err(DecodeError::InvalidField {
            field: "key".into(),
            message: format!(
                "record key {:?} does not match the document ({expected:?})",
                String::from_utf8_lossy(key)
            ),
        });
    }
    Ok(rec)
}

/// The change feed's fast path: a user document that starts with
/// `"kind": "user"` (as clearance's serializer writes it) and names `kind`
/// nowhere else is read in one pass, where the general path (serde's
/// internally tagged enum) first buffers the whole document to find the
/// tag. `None` for anything else, and for any error: the general path
/// then decides, and its result and errors are the reference. The two
/// agree on every document the fast path takes (tested): the fields after
/// `kind` are the same, and a second `kind` (which the general path
/// refuses) sends the document there.
fn user_kind_first(key: &[u8], text: &str) -> Option<UserRecord> {
    use serde::de::{Error, MapAccess, Visitor};
    struct KindFirst;
    impl<'de> Visitor<'de> for KindFirst {
        type Value = UserRecord;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a user document starting with its kind")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserRecord, A::Error> {
            if map.next_key::<&'de str>()? != Some("kind")
                || map.next_value::<&'de str>()? != "user"
            {
                return Err(A::Error::custom("not kind-first"));
            }
            UserRecord::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    if !key.starts_with(b"user:") || text.matches("\"kind\"").count() != 1 {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let u = serde::Deserializer::deserialize_map(&mut de, KindFirst).ok()?;
    de.end().ok()?;
    Some(u)
}

/// The kind of a change-feed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `user:<id>`.
    User,
    /// `organization:<id>`.
    Organization,
}

/// Parse a change-feed key into its kind and id.
pub fn parse_eligibility_key(key: &[u8]) -> Result<(KeyKind, &str), DecodeError> {
    let text = std::str::from_utf8(key).map_err(|e| DecodeError::NotUtf8(e.to_string()))?;
    if let Some(id) = text.strip_prefix("user:") {
        if !id.is_empty() {
            return Ok((KeyKind::User, id));
        }
    }
    if let Some(id) = text.strip_prefix("organization:") {
        if !id.is_empty() {
            return Ok((KeyKind::Organization, id));
        }
    }
    Err(DecodeError::InvalidField {
        field: "key".into(),
        message: format!("{text:?} is not `user:<id>` or `organization:<id>`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = r#"{"request_id":"r1","event_time":"2026-11-28T12:00:00Z","subject_id":"u1","model":"fable-5","geo":{"country":"US","confidence":0.9},"future_field":1}"#;

    #[test]
    fn request_decodes_and_ignores_unknown_fields() {
        let r = decode_request(REQ.as_bytes()).unwrap();
        assert_eq!(r.request_id, "r1");
        assert_eq!(r.geo.unwrap().country.as_deref(), Some("US"));
    }

    #[test]
    fn not_json_is_invalid_json() {
        let e = decode_request(b"hello").unwrap_err();
        assert_eq!(e.kind(), "invalid_json");
        assert_eq!(salvage_request_id(b"hello"), None);
    }

    #[test]
    fn missing_subject_is_reported_and_request_id_salvaged() {
        let doc = br#"{"request_id":"r9","event_time":"2026-11-28T12:00:00Z","model":"m"}"#;
        let e = decode_request(doc).unwrap_err();
        assert_eq!(e, DecodeError::MissingField("subject_id".into()));
        assert_eq!(salvage_request_id(doc).as_deref(), Some("r9"));
    }

    #[test]
    fn invalid_utf8_and_absurd_time_are_rejected() {
        assert_eq!(
            decode_request(&[0xff, 0xfe]).unwrap_err().kind(),
            "not_utf8"
        );
        let doc = REQ.replace("2026-11-28", "1969-01-01");
        assert_eq!(
            decode_request(doc.as_bytes()).unwrap_err().kind(),
            "invalid_field"
        );
    }

    #[test]
    fn eligibility_key_must_match() {
        let doc = br#"{"kind":"user","id":"u1","version":2,"us_person_status":"citizen"}"#;
        assert!(decode_eligibility(b"user:u1", doc).is_ok());
        assert_eq!(
            decode_eligibility(b"user:u2", doc).unwrap_err().kind(),
            "invalid_field"
        );
        assert_eq!(
            parse_eligibility_key(b"organization:o1").unwrap(),
            (KeyKind::Organization, "o1")
        );
        assert!(parse_eligibility_key(b"bogus").is_err());
    }

    #[test]
    fn every_date_of_a_record_is_checked_at_decode() {
        let org = |auth: &str| {
            format!(r#"{{"kind":"organization","id":"o1","version":3,"authorizations":[{{"id":"LIC-1","model_tags":["t"]}},{auth}]}}"#)
                .replace(r#"{"id":"LIC-1","model_tags":["t"]}"#, r#"{"id":"LIC-0","valid_from":"2026-01-01","valid_until":"2026-12-31"}"#)
        };
        let field_of = |doc: &str| match decode_eligibility(b"organization:o1", doc.as_bytes()) {
            Err(DecodeError::InvalidField { field, message }) => format!("{field}: {message}"),
            other => panic!("{doc}: {other:?}"),
        };
        // The reported case: an RFC 3339 timestamp where a date belongs.
        let e = field_of(&org(
            r#"{"id":"LIC-1","valid_from":"2026-01-01","valid_until":"2026-12-31T23:59:59Z"}"#,
        ));
        assert!(
            e.starts_with(
                "authorizations[1].valid_until: \"2026-12-31T23:59:59Z\" is not a calendar date"
            ),
            "{e}"
        );
        let e = field_of(&org(
            r#"{"id":"LIC-1","valid_from":"2026-02-30","valid_until":"2026-12-31"}"#,
        ));
        assert!(e.starts_with("authorizations[1].valid_from"), "{e}");
        let e = field_of(&org(r#"{"id":"LIC-1","valid_from":"2026-01-01"}"#));
        assert!(
            e.starts_with("authorizations[1].valid_until: required"),
            "{e}"
        );
        let e = field_of(&org(
            r#"{"id":"LIC-1","valid_from":"2027-01-01","valid_until":"2026-12-31"}"#,
        ));
        assert!(e.contains("before valid_from"), "{e}");
        assert!(decode_eligibility(
            b"organization:o1",
            org(r#"{"id":"LIC-1","valid_from":" 2026-01-01 ","valid_until":"2026-12-31"}"#)
                .as_bytes()
        )
        .is_ok());

        let user = |cits: &str, prs: &str| {
            format!(
                r#"{{"kind":"user","id":"u1","version":2,"us_person_status":"foreign_person","citizenships":{cits},"permanent_residencies":{prs}}}"#
            )
        };
        let e = decode_eligibility(b"user:u1", user(r#"[{"country":"CN","acquired_on":"1990-01-01"},{"country":"GB","acquired_on":"2015-06-01T00:00:00Z"}]"#, "[]").as_bytes()).unwrap_err();
        assert_eq!(e.kind(), "invalid_field");
        assert!(e.to_string().contains("citizenships[1].acquired_on"), "{e}");
        let e = decode_eligibility(
            b"user:u1",
            user(
                "[]",
                r#"[{"country":"US","status":"granted","acquired_on":"05/01/2018"}]"#,
            )
            .as_bytes(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("permanent_residencies[0].acquired_on"),
            "{e}"
        );
        assert!(
            decode_eligibility(b"user:u1", user(r#"[{"country":"CN"}]"#, "[]").as_bytes()).is_ok()
        );
    }

    /// Found by fuzzing: serde's derive also reads a struct from a JSON
    /// array of its fields, which the salvage path (and the schema) do not.
    #[test]
    fn documents_and_nested_objects_must_be_objects() {
        let positional = br#"["r1", "2026-11-28T12:00:00Z", "u1", null, "m"]"#;
        let e = decode_request(positional).unwrap_err();
        assert_eq!(e.kind(), "invalid_document", "{e}");
        assert!(e.to_string().contains("JSON object"), "{e}");

        let geo_array = REQ.replace(r#"{"country":"US","confidence":0.9}"#, r#"["US"]"#);
        assert_eq!(
            decode_request(geo_array.as_bytes()).unwrap_err().kind(),
            "invalid_document"
        );
        assert!(decode_request(
            REQ.replace(
                r#""geo":{"country":"US","confidence":0.9},"#,
                r#""geo":null,"#
            )
            .as_bytes()
        )
        .unwrap()
        .geo
        .is_none());

        let tagged_array = br#"["user", "u1", 2, null, "citizen"]"#;
        assert_eq!(
            decode_eligibility(b"user:u1", tagged_array)
                .unwrap_err()
                .kind(),
            "invalid_document"
        );
        let nested = br#"{"kind":"user","id":"u1","version":2,"us_person_status":"citizen","citizenships":[["US",null]]}"#;
        assert_eq!(
            decode_eligibility(b"user:u1", nested).unwrap_err().kind(),
            "invalid_document"
        );
        let ok = br#"{"kind":"user","id":"u1","version":2,"us_person_status":"citizen","citizenships":[{"country":"US"}],"revocation":{"revoked_at":"2026-11-28T12:00:00Z"}}"#;
        let rec = decode_eligibility(b"user:u1", ok).unwrap();
        let EligibilityRecord::User(u) = rec else {
            panic!("a user")
        };
        assert_eq!(u.citizenships[0].country, "US");
        assert!(u.revocation.is_some());
    }
}
