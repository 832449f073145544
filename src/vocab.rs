//! The vocabulary of decisions: reason codes, obligations and the rule ids
//! of built-in checks. It sits below both `policy` (whose rule
//! kinds name the reason they give) and `decide` (which gives
//! them), so neither depends on the other for it. No I/O, no logic.
//!
//! The codes are `&str` constants ([`reason`], [`obligation`]), used by the
//! decision code and the policy files, and enums ([`Reason`],
//! [`Obligation`]) with the same values, from which the JSON Schemas list
//! them; a test keeps the two in step.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Stable reason codes (lower snake case). They are bounded metric labels
/// and part of the decision record: never rename one.
pub mod reason {
    // Allow reasons.
    /// Allow: the subject is a U.S. person (citizen, LPR, protected
    /// individual), so no nationality rule applies.
    pub const US_PERSON: &str = "us_person";
    /// Allow: a foreign person whose derived country is not restricted.
    pub const NATIONALITY_NOT_RESTRICTED: &str = "nationality_not_restricted";
    /// Allow: an untagged model, allowed by `default_allow_untagged`.
    pub const UNRESTRICTED_MODEL: &str = "unrestricted_model";
    /// Allow: an authorization on the organization lifted every deny.
    pub const AUTHORIZED: &str = "authorized";

    // Deny reasons.
    /// Deny: the model is not in the policy's catalog (fail closed).
    pub const UNKNOWN_MODEL: &str = "unknown_model";
    /// Deny: the engine's eligibility data is older than its staleness
    /// bound; controlled models only.
    pub const STALE_DATA: &str = "stale_data";
    /// Deny: the request comes from a sanctioned country or region.
    pub const SANCTIONED_LOCATION: &str = "sanctioned_location";
    /// Deny: the request comes from a subdivision only partly inside a
    /// sanctioned region, and no usable postal code says which part (fail
    /// closed; for every model the `location_in` rule covers).
    pub const REGION_UNDETERMINED: &str = "region_undetermined";
    /// Deny: the subject's access was revoked.
    pub const SUBJECT_REVOKED: &str = "subject_revoked";
    /// Deny: the organization is a confirmed listed party.
    pub const LISTED_PARTY_CONFIRMED: &str = "listed_party_confirmed";
    /// Deny: no eligibility record for the subject.
    pub const UNKNOWN_SUBJECT: &str = "unknown_subject";
    /// Deny: a foreign person whose derived country is restricted.
    pub const RESTRICTED_NATIONALITY: &str = "restricted_nationality";
    /// Deny (with the deny it did not lift): a matching authorization has
    /// expired.
    pub const AUTHORIZATION_EXPIRED: &str = "authorization_expired";
    /// Deny: restricted-jurisdiction owners hold, summed, at least the
    /// threshold (50% rule).
    pub const RESTRICTED_OWNERSHIP: &str = "restricted_ownership";
    /// Deny: owners that cannot be judged (no known headquarters, an owner
    /// organization without a record, a chain deeper than the rule
    /// follows) could bring the restricted share to the threshold (fail
    /// closed).
    pub const OWNERSHIP_UNKNOWN: &str = "ownership_unknown";
    /// Deny: an unresolved potential restricted-party match (with the
    /// `manual_review` obligation; `rule_ids` name the list as `list:<name>`).
    pub const LISTED_PARTY_POTENTIAL: &str = "listed_party_potential";
    /// Deny: the subject's U.S. person status is unknown.
    pub const US_PERSON_STATUS_UNKNOWN: &str = "us_person_status_unknown";
    /// Deny: a foreign person with no citizenship nor granted residency on
    /// record, so no country can be derived.
    pub const NATIONALITY_UNKNOWN: &str = "nationality_unknown";
    /// Deny: the request or subject names an organization the engine has
    /// no record of.
    pub const UNKNOWN_ORGANIZATION: &str = "unknown_organization";
    /// Deny: identity verification missing, pending, failed, expired or
    /// too old (with the `reverify` obligation).
    pub const VERIFICATION_STALE: &str = "verification_stale";
    /// Deny: no geolocation, VPN, hosting provider or low confidence.
    pub const UNVERIFIABLE_LOCATION: &str = "unverifiable_location";
    /// Deny: no deny applied but no allow rule fired either, and the model
    /// is not covered by `default_allow_untagged`.
    pub const NO_ALLOW_RULE: &str = "no_allow_rule";
    /// Deny (pipeline): the request could not be decoded.
    pub const MALFORMED_REQUEST: &str = "malformed_request";
    /// Deny (client): no decision came back within the caller's timeout, so
    /// the request/reply client (`clearance::client`) denied it itself (fail
    /// closed). Never published by the engine; the engine may still decide
    /// the request later.
    pub const TIMEOUT: &str = "timeout";

    /// Every reason code an allow can carry.
    pub const ALLOW: &[&str] = &[
        US_PERSON,
        NATIONALITY_NOT_RESTRICTED,
        UNRESTRICTED_MODEL,
        AUTHORIZED,
    ];

    /// Every reason code a deny can carry.
    pub const DENY: &[&str] = &[
        UNKNOWN_MODEL,
        STALE_DATA,
        SANCTIONED_LOCATION,
        REGION_UNDETERMINED,
        SUBJECT_REVOKED,
        LISTED_PARTY_CONFIRMED,
        UNKNOWN_SUBJECT,
        RESTRICTED_NATIONALITY,
        AUTHORIZATION_EXPIRED,
        RESTRICTED_OWNERSHIP,
        OWNERSHIP_UNKNOWN,
        LISTED_PARTY_POTENTIAL,
        US_PERSON_STATUS_UNKNOWN,
        NATIONALITY_UNKNOWN,
        UNKNOWN_ORGANIZATION,
        VERIFICATION_STALE,
        UNVERIFIABLE_LOCATION,
        NO_ALLOW_RULE,
        MALFORMED_REQUEST,
        TIMEOUT,
    ];

    /// The `&'static str` of a reason code, if it is one.
    pub fn lookup(code: &str) -> Option<&'static str> {
        ALLOW
            .iter()
            .chain(DENY.iter())
            .find(|c| **c == code)
            .copied()
    }
}

/// Obligations a deny can carry: what must happen before the subject can
/// be allowed.
pub mod obligation {
    /// The subject must verify their identity again.
    pub const REVERIFY: &str = "reverify";
    /// A human must review the case (unresolved potential listed party).
    pub const MANUAL_REVIEW: &str = "manual_review";
    /// Every obligation.
    pub const ALL: &[&str] = &[REVERIFY, MANUAL_REVIEW];
}

/// A reason code, as a type: the values of [`reason`], one variant each
/// (serialized as the same snake-case string). The decision schema's
/// `reasons` list these values; `Decision.reasons` stays a list of strings
/// in Rust, so a reader of old records never fails on a code.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[schemars(
    description = "A stable reason code of a decision (lower snake case, never renamed; also a metric label)."
)]
pub enum Reason {
    /// Allow: the subject is a U.S. person (citizen, LPR, protected
    /// individual), so no nationality rule applies.
    UsPerson,
    /// Allow: a foreign person whose derived country is not restricted.
    NationalityNotRestricted,
    /// Allow: an untagged model, allowed by `default_allow_untagged`.
    UnrestrictedModel,
    /// Allow: an authorization on the organization lifted every deny.
    Authorized,
    /// Deny: the model is not in the policy's catalog (fail closed).
    UnknownModel,
    /// Deny: the engine's eligibility data is older than its staleness
    /// bound; controlled models only.
    StaleData,
    /// Deny: the request comes from a sanctioned country or region.
    SanctionedLocation,
    /// Deny: the request comes from a subdivision only partly inside a
    /// sanctioned region, and no usable postal code says which part (fail
    /// closed; for every model the `location_in` rule covers).
    RegionUndetermined,
    /// Deny: the subject's access was revoked.
    SubjectRevoked,
    /// Deny: the organization is a confirmed listed party.
    ListedPartyConfirmed,
    /// Deny: no eligibility record for the subject.
    UnknownSubject,
    /// Deny: a foreign person whose derived country is restricted.
    RestrictedNationality,
    /// Deny (with the deny it did not lift): a matching authorization has
    /// expired.
    AuthorizationExpired,
    /// Deny: restricted-jurisdiction owners hold, summed, at least the
    /// threshold (50% rule).
    RestrictedOwnership,
    /// Deny: owners that cannot be judged (no known headquarters, an owner
    /// organization without a record, a chain deeper than the rule
    /// follows) could bring the restricted share to the threshold (fail
    /// closed).
    OwnershipUnknown,
    /// Deny: an unresolved potential restricted-party match (with the
    /// `manual_review` obligation; `rule_ids` name the list as `list:<name>`).
    ListedPartyPotential,
    /// Deny: the subject's U.S. person status is unknown.
    UsPersonStatusUnknown,
    /// Deny: a foreign person with no citizenship nor granted residency on
    /// record, so no country can be derived.
    NationalityUnknown,
    /// Deny: the request or subject names an organization the engine has
    /// no record of.
    UnknownOrganization,
    /// Deny: identity verification missing, pending, failed, expired or
    /// too old (with the `reverify` obligation).
    VerificationStale,
    /// Deny: no geolocation, VPN, hosting provider or low confidence.
    UnverifiableLocation,
    /// Deny: no deny applied but no allow rule fired either, and the model
    /// is not covered by `default_allow_untagged`.
    NoAllowRule,
    /// Deny (pipeline): the request could not be decoded.
    MalformedRequest,
    /// Deny (client): no decision came back within the caller's timeout, so
    /// the request/reply client (`clearance::client`) denied it itself (fail
    /// closed). Never published by the engine; the engine may still decide
    /// the request later.
    Timeout,
}

impl Reason {
    /// Every reason code: the allow reasons, then the deny reasons, in the
    /// order of [`reason::ALLOW`] and [`reason::DENY`].
    pub const ALL: &'static [Reason] = &[
        Reason::UsPerson,
        Reason::NationalityNotRestricted,
        Reason::UnrestrictedModel,
        Reason::Authorized,
        Reason::UnknownModel,
        Reason::StaleData,
        Reason::SanctionedLocation,
        Reason::RegionUndetermined,
        Reason::SubjectRevoked,
        Reason::ListedPartyConfirmed,
        Reason::UnknownSubject,
        Reason::RestrictedNationality,
        Reason::AuthorizationExpired,
        Reason::RestrictedOwnership,
        Reason::OwnershipUnknown,
        Reason::ListedPartyPotential,
        Reason::UsPersonStatusUnknown,
        Reason::NationalityUnknown,
        Reason::UnknownOrganization,
        Reason::VerificationStale,
        Reason::UnverifiableLocation,
        Reason::NoAllowRule,
        Reason::MalformedRequest,
        Reason::Timeout,
    ];

    /// The code, as on the wire (`"us_person"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::UsPerson => reason::US_PERSON,
            Reason::NationalityNotRestricted => reason::NATIONALITY_NOT_RESTRICTED,
            Reason::UnrestrictedModel => reason::UNRESTRICTED_MODEL,
            Reason::Authorized => reason::AUTHORIZED,
            Reason::UnknownModel => reason::UNKNOWN_MODEL,
            Reason::StaleData => reason::STALE_DATA,
            Reason::SanctionedLocation => reason::SANCTIONED_LOCATION,
            Reason::RegionUndetermined => reason::REGION_UNDETERMINED,
            Reason::SubjectRevoked => reason::SUBJECT_REVOKED,
            Reason::ListedPartyConfirmed => reason::LISTED_PARTY_CONFIRMED,
            Reason::UnknownSubject => reason::UNKNOWN_SUBJECT,
            Reason::RestrictedNationality => reason::RESTRICTED_NATIONALITY,
            Reason::AuthorizationExpired => reason::AUTHORIZATION_EXPIRED,
            Reason::RestrictedOwnership => reason::RESTRICTED_OWNERSHIP,
            Reason::OwnershipUnknown => reason::OWNERSHIP_UNKNOWN,
            Reason::ListedPartyPotential => reason::LISTED_PARTY_POTENTIAL,
            Reason::UsPersonStatusUnknown => reason::US_PERSON_STATUS_UNKNOWN,
            Reason::NationalityUnknown => reason::NATIONALITY_UNKNOWN,
            Reason::UnknownOrganization => reason::UNKNOWN_ORGANIZATION,
            Reason::VerificationStale => reason::VERIFICATION_STALE,
            Reason::UnverifiableLocation => reason::UNVERIFIABLE_LOCATION,
            Reason::NoAllowRule => reason::NO_ALLOW_RULE,
            Reason::MalformedRequest => reason::MALFORMED_REQUEST,
            Reason::Timeout => reason::TIMEOUT,
        }
    }

    /// The reason with this code, if it is one.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == code)
    }
}

/// An obligation, as a type: the values of [`obligation`], one variant
/// each (serialized as the same snake-case string).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[schemars(
    description = "An obligation a deny carries: what must happen before the subject can be allowed."
)]
pub enum Obligation {
    /// The subject must verify their identity again.
    Reverify,
    /// A human must review the case (unresolved potential listed party).
    ManualReview,
}

impl Obligation {
    /// Every obligation, in the order of [`obligation::ALL`].
    pub const ALL: &'static [Obligation] = &[Obligation::Reverify, Obligation::ManualReview];

    /// The obligation as on the wire (`"reverify"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Obligation::Reverify => obligation::REVERIFY,
            Obligation::ManualReview => obligation::MANUAL_REVIEW,
        }
    }

    /// The obligation with this name, if it is one.
    pub fn from_code(code: &str) -> Option<Obligation> {
        Obligation::ALL.iter().copied().find(|o| o.as_str() == code)
    }
}

/// Rule ids of the built-in checks, cited in `rule_ids`.
pub mod builtin {
    /// The model is not in the catalog.
    pub const UNKNOWN_MODEL: &str = "builtin:unknown_model";
    /// The eligibility data is stale.
    pub const STALE_DATA: &str = "builtin:stale_data";
    /// No allow rule fired.
    pub const NO_ALLOW_RULE: &str = "builtin:no_allow_rule";
    /// `settings.default_allow_untagged` allowed an untagged model.
    pub const DEFAULT_ALLOW_UNTAGGED: &str = "setting:default_allow_untagged";
    /// The request/reply client denied a request whose decision did not
    /// come back in time (reason `timeout`).
    pub const CLIENT_TIMEOUT: &str = "client:timeout";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason constant has a variant and every variant a constant,
    /// with serde's name equal to the constant, in the same order.
    #[test]
    fn reason_enum_and_constants_agree() {
        let constants: Vec<&str> = reason::ALLOW.iter().chain(reason::DENY).copied().collect();
        let variants: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(variants, constants);
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            let back: Reason = serde_json::from_value(r.as_str().into()).unwrap();
            assert_eq!(back, *r);
            assert_eq!(Reason::from_code(r.as_str()), Some(*r));
            assert_eq!(reason::lookup(r.as_str()), Some(r.as_str()));
        }
        assert_eq!(Reason::from_code("nope"), None);
        assert!(serde_json::from_value::<Reason>("nope".into()).is_err());
    }

    /// The same for obligations.
    #[test]
    fn obligation_enum_and_constants_agree() {
        let variants: Vec<&str> = Obligation::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(variants, obligation::ALL);
        for o in Obligation::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            let back: Obligation = serde_json::from_value(o.as_str().into()).unwrap();
            assert_eq!(back, *o);
            assert_eq!(Obligation::from_code(o.as_str()), Some(*o));
        }
        assert_eq!(Obligation::from_code("nope"), None);
    }

    /// `ALL` holds every variant: the derived schema names every variant
    /// (as `const`s or an `enum`), and those are exactly `ALL`'s codes.
    #[test]
    fn all_lists_every_variant() {
        fn names(schema: &serde_json::Value) -> Vec<String> {
            let mut out = Vec::new();
            if let Some(values) = schema.get("enum").and_then(|v| v.as_array()) {
                out.extend(values.iter().filter_map(|v| v.as_str()).map(String::from));
            }
            if let Some(alts) = schema.get("oneOf").and_then(|v| v.as_array()) {
                out.extend(
                    alts.iter()
                        .filter_map(|a| a.get("const").and_then(|c| c.as_str()))
                        .map(String::from),
                );
            }
            out.sort();
            out
        }
        let mut reasons: Vec<String> = Reason::ALL.iter().map(|r| r.as_str().into()).collect();
        reasons.sort();
        assert_eq!(names(&schemars::schema_for!(Reason).to_value()), reasons);
        let mut obligations: Vec<String> =
            Obligation::ALL.iter().map(|o| o.as_str().into()).collect();
        obligations.sort();
        assert_eq!(
            names(&schemars::schema_for!(Obligation).to_value()),
            obligations
        );
    }
}
