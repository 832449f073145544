//! The vocabulary of decisions: reason codes, obligations and the rule ids
//! of built-in checks. It sits below both `policy` (whose rule
//! kinds name the reason they give) and `decide` (which gives
//! them), so neither depends on the other for it. No I/O, no logic.

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
}
