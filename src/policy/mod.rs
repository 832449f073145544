//! The policy: a TOML file of versioned country sets, regions, a model
//! catalog, settings and rules; its validation; and its compilation into a
//! [`CompiledPolicy`] that the decision core (`decide::decide`) evaluates.
//!
//! The format is documented in `docs/policy.md`; the shipped example
//! (`policies/example.toml`) encodes the example directive, and its tests
//! live next to it (`policies/example.tests.toml`, run by [`run_tests`]).
//!
//! No I/O but reading the files it is given.

pub mod active;
mod compile;
pub mod country;
pub mod diff;
pub mod history;
mod raw;
pub mod signing;
pub mod testing;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

pub use active::ActivePolicy;
pub use country::CountrySet;
pub use diff::{diff, diff_files, PolicyDiff};
pub use history::{history_key, HistoryMiss, PolicyHistory};
pub use testing::{run_tests, TestFailure, TestReport};

use crate::event::ScreeningStatus;

/// The example policy shipped with the project.
pub const EXAMPLE_POLICY: &str = include_str!("../../policies/example.toml");

/// How a foreign person's country is derived (15 CFR 734.13(b)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NationalityMode {
    /// The most recent of the subject's citizenships and *granted*
    /// permanent residencies, by `acquired_on` (`"most_recent"`). When the
    /// dates do not single one out, every candidate that could be the most
    /// recent counts (fail closed).
    #[default]
    MostRecent,
    /// Every citizenship counts, as well as the most recent country
    /// (`"any_citizenship"`): the stricter reading.
    AnyCitizenship,
}

impl NationalityMode {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            NationalityMode::MostRecent => "most_recent",
            NationalityMode::AnyCitizenship => "any_citizenship",
        }
    }

    /// Parse the name used in policy files.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "most_recent" => Some(NationalityMode::MostRecent),
            "any_citizenship" => Some(NationalityMode::AnyCitizenship),
            _ => None,
        }
    }
}

/// Policy-wide settings (`[settings]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How a foreign person's country is derived. Default `most_recent`.
    pub nationality_mode: NationalityMode,
    /// Minimum geolocation confidence for a location to be verifiable
    /// (rules of kind `location_verifiable` may override it). Default 0.8.
    pub min_geo_confidence: f64,
    /// Allow models without tags when no deny applies and no allow rule
    /// fired. Default `false` (fail closed); the example sets `true`.
    pub default_allow_untagged: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nationality_mode: NationalityMode::MostRecent,
            min_geo_confidence: 0.8,
            default_allow_untagged: false,
        }
    }
}

/// Allow or deny, for a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The rule, when it fires, gives a reason to allow.
    Allow,
    /// The rule, when it fires, denies.
    Deny,
}

/// What a deny rule does when the data it needs is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMissing {
    /// Deny, with the missing-data reason (`unknown_subject`,
    /// `unknown_organization`, `nationality_unknown`, ...). The default.
    #[default]
    Deny,
    /// The rule does not fire.
    Skip,
}

/// Which models a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every model, including models the policy does not know.
    All,
    /// Models carrying at least one of these tags.
    Tags(Vec<String>),
}

/// A named sanctioned region inside a country (`[regions.<name>]`).
///
/// A request is in the region when its subdivision is one of
/// `subdivisions`, or when its postal code (in `country`) is in the
/// region's postal prefixes or ranges, whatever its subdivision. In one of
/// `partial_subdivisions`, a usable postal code decides; without one the
/// request cannot be placed and is denied (`region_undetermined`).
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Region name (`"crimea"`).
    pub name: String,
    /// The country it lies in (`"UA"`).
    pub country: String,
    /// ISO 3166-2 subdivisions wholly inside the region (`"UA-43"`).
    pub subdivisions: Vec<String>,
    /// ISO 3166-2 subdivisions only partly inside the region (`"UA-14"`):
    /// the postal code decides.
    pub partial_subdivisions: Vec<String>,
    /// Postal-code prefixes of the region (within `country`), upper case.
    pub postal_prefixes: Vec<String>,
    /// Inclusive postal-code ranges of the region (within `country`), upper
    /// case, both ends of one length, the same for every range.
    pub postal_ranges: Vec<(String, String)>,
}

impl Region {
    /// The postal code normalised for this region (spaces and dashes
    /// removed, upper case), if it is usable here: only ASCII letters and
    /// digits, of the ranges' length (or, with prefixes only, at least as
    /// long as the longest prefix). `None` for a missing, malformed or
    /// truncated code, or when the region has no postal data.
    pub fn usable_postal_code(&self, code: Option<&str>) -> Option<String> {
        let code = code?;
        let mut out = String::with_capacity(code.len());
        for c in code.trim().chars() {
            match c {
                ' ' | '-' => {}
                c if c.is_ascii_alphanumeric() => out.push(c.to_ascii_uppercase()),
                _ => return None,
            }
        }
        let len_ok = match self.postal_ranges.first() {
            Some((lo, _)) => out.len() == lo.len(),
            None => {
                let longest = self.postal_prefixes.iter().map(String::len).max()?;
                out.len() >= longest
            }
        };
        (len_ok && !out.is_empty()).then_some(out)
    }

    /// Whether a normalised, usable postal code lies in the region.
    pub fn contains_postal_code(&self, code: &str) -> bool {
        self.postal_prefixes
            .iter()
            .any(|p| code.starts_with(p.as_str()))
            || self.postal_ranges.iter().any(|(lo, hi)| {
                code.len() == lo.len() && lo.as_str() <= code && code <= hi.as_str()
            })
    }
}

/// The predicate of a rule: a fixed set of kinds, parameterised by sets
/// and thresholds. Each kind has one effect and one stable reason code.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// Deny when there is no subject record (`unknown_subject`).
    SubjectKnown,
    /// Deny when the subject record carries a revocation (`subject_revoked`).
    SubjectRevoked,
    /// Deny when the subject's U.S. person status is `unknown`
    /// (`us_person_status_unknown`).
    UsPersonStatusKnown,
    /// Deny unless identity verification is `verified` and not expired at
    /// the event time (`verification_stale`).
    VerificationCurrent {
        /// If set, `verified_at` must also be at most this many days old.
        max_age_days: Option<u32>,
    },
    /// Deny unless the request's location is verifiable: geolocation with a
    /// country, no VPN, no hosting provider, confidence at or above the
    /// threshold (`unverifiable_location`).
    LocationVerifiable {
        /// Overrides `settings.min_geo_confidence`.
        min_confidence: Option<f64>,
    },
    /// Deny when the request comes from a country in the set or from one of
    /// the regions (`sanctioned_location`).
    LocationIn {
        /// Countries (may be empty).
        countries: CountrySet,
        /// Regions.
        regions: Vec<Region>,
    },
    /// Deny a *foreign* person whose derived country is in the set
    /// (`restricted_nationality`). U.S. persons are never denied by it.
    NationalityIn {
        /// The restricted countries.
        set: CountrySet,
    },
    /// Deny when restricted parties own, in aggregate, directly or
    /// indirectly, at least `threshold_percent` of the organization
    /// (`restricted_ownership`; OFAC's 50% rule). An owner is restricted
    /// when it is headquartered in the set, or when it is an organization
    /// itself owned at least `threshold_percent` by restricted parties;
    /// then its share counts in full. Owner organizations' records are
    /// followed up to `max_depth` levels, cycle-safe.
    OwnershipIn {
        /// The restricted countries.
        set: CountrySet,
        /// The threshold, in percent (50 for the 50% rule).
        threshold_percent: f64,
        /// How many levels of owner records are followed above the
        /// organization (default 10); an owner organization beyond it
        /// counts as unknown unless its headquarters is restricted.
        max_depth: u32,
    },
    /// Deny when the organization has a screening hit of this status on
    /// one of the lists (`listed_party_confirmed` / `listed_party_potential`).
    ListedParty {
        /// Confirmed or potential.
        status: ScreeningStatus,
        /// The lists that count (empty: any).
        lists: Vec<String>,
    },
    /// Allow reason: the subject is a U.S. person (`us_person`).
    UsPerson,
    /// Allow reason: a foreign person whose derived country is known and
    /// not in the set (`nationality_not_restricted`).
    NationalityNotIn {
        /// The restricted countries.
        set: CountrySet,
    },
}

impl RuleKind {
    /// The name used in policy files.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::SubjectKnown => "subject_known",
            RuleKind::SubjectRevoked => "subject_revoked",
            RuleKind::UsPersonStatusKnown => "us_person_status_known",
            RuleKind::VerificationCurrent { .. } => "verification_current",
            RuleKind::LocationVerifiable { .. } => "location_verifiable",
            RuleKind::LocationIn { .. } => "location_in",
            RuleKind::NationalityIn { .. } => "nationality_in",
            RuleKind::OwnershipIn { .. } => "ownership_in",
            RuleKind::ListedParty { .. } => "listed_party",
            RuleKind::UsPerson => "us_person",
            RuleKind::NationalityNotIn { .. } => "nationality_not_in",
        }
    }

    /// The one effect this kind may have.
    pub fn effect(&self) -> Effect {
        match self {
            RuleKind::UsPerson | RuleKind::NationalityNotIn { .. } => Effect::Allow,
            _ => Effect::Deny,
        }
    }

    /// The stable reason code the rule gives when it fires.
    pub fn reason(&self) -> &'static str {
        use crate::vocab::reason as r;
        match self {
            RuleKind::SubjectKnown => r::UNKNOWN_SUBJECT,
            RuleKind::SubjectRevoked => r::SUBJECT_REVOKED,
            RuleKind::UsPersonStatusKnown => r::US_PERSON_STATUS_UNKNOWN,
            RuleKind::VerificationCurrent { .. } => r::VERIFICATION_STALE,
            RuleKind::LocationVerifiable { .. } => r::UNVERIFIABLE_LOCATION,
            RuleKind::LocationIn { .. } => r::SANCTIONED_LOCATION,
            RuleKind::NationalityIn { .. } => r::RESTRICTED_NATIONALITY,
            RuleKind::OwnershipIn { .. } => r::RESTRICTED_OWNERSHIP,
            RuleKind::ListedParty {
                status: ScreeningStatus::Confirmed,
                ..
            } => r::LISTED_PARTY_CONFIRMED,
            RuleKind::ListedParty { .. } => r::LISTED_PARTY_POTENTIAL,
            RuleKind::UsPerson => r::US_PERSON,
            RuleKind::NationalityNotIn { .. } => r::NATIONALITY_NOT_RESTRICTED,
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique rule id, cited in decisions.
    pub id: String,
    /// Free text.
    pub description: Option<String>,
    /// The legal basis, cited in decisions; authorizations lift a deny
    /// only under the same legal basis.
    pub legal_basis: String,
    /// Allow or deny.
    pub effect: Effect,
    /// The models it applies to.
    pub scope: Scope,
    /// The predicate.
    pub kind: RuleKind,
    /// The name of the rule's `set` parameter as written (`"d5_or_macau"`),
    /// for kinds that take one; `kind` holds the resolved countries.
    pub set_name: Option<String>,
    /// What a deny rule does when its data is missing.
    pub on_missing: OnMissing,
    /// Obligations attached to the deny (`reverify`, `manual_review`).
    pub obligations: Vec<&'static str>,
    /// Whether a matching authorization on the organization lifts the deny
    /// (only `nationality_in` and `ownership_in`).
    pub liftable: bool,
}

/// A model of the catalog, with its precomputed rule list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// Its tags. A model with at least one tag is *controlled*.
    pub tags: Vec<String>,
    /// Indexes into [`CompiledPolicy::rules`] of the rules that apply to
    /// it, in policy order.
    pub rules: Vec<usize>,
}

/// A validated, compiled policy, ready for the decision core (`decide::decide`).
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// Policy id.
    pub id: String,
    /// Policy version.
    pub version: String,
    /// Data (country list) version.
    pub data_version: String,
    /// Where the policy was read from (a path or `"<example>"`).
    pub source: String,
    /// SHA-256 of the policy text, lower-case hex ([`digest`]): recorded in
    /// every decision, so a replay proves it evaluates the very same text.
    pub digest: String,
    /// When the policy takes effect (top-level `effective_from`, RFC 3339).
    /// `None`: as soon as it is loaded. The engine schedules a policy whose
    /// `effective_from` is in the future; the decision core itself
    /// ignores it.
    pub effective_from: Option<time::OffsetDateTime>,
    /// Settings.
    pub settings: Settings,
    /// Named country sets, resolved (unions expanded).
    pub sets: BTreeMap<String, CountrySet>,
    /// Named regions.
    pub regions: BTreeMap<String, Region>,
    /// Rules, in policy order (most important first).
    pub rules: Vec<Rule>,
    /// Declared tags.
    pub tags: Vec<String>,
    pub(crate) models: HashMap<String, ModelEntry>,
    pub(crate) all_scope_rules: Vec<usize>,
}

impl CompiledPolicy {
    /// Parse, validate and compile a policy. `source` names the text in
    /// errors (a path, usually).
    pub fn from_toml_str(text: &str, source: &str) -> Result<CompiledPolicy, PolicyError> {
        compile::compile(text, source)
    }

    /// Read, validate and compile a policy file.
    pub fn load_file(path: &Path) -> Result<CompiledPolicy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// The example policy shipped in `policies/example.toml`.
    ///
    /// # Panics
    /// Only if the shipped file is invalid, which the crate's tests rule out.
    pub fn example() -> CompiledPolicy {
        match Self::from_toml_str(EXAMPLE_POLICY, "policies/example.toml") {
            Ok(p) => p,
            Err(e) => panic!("the shipped example policy is invalid: {e}"),
        }
    }

    /// The catalog entry of a model, if the policy knows it.
    #[inline]
    pub fn model(&self, id: &str) -> Option<&ModelEntry> {
        self.models.get(id)
    }

    /// The ids of the models in the catalog, sorted.
    pub fn model_ids(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.models.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Indexes of the rules scoped to `all` (they also apply to unknown
    /// models).
    #[inline]
    pub fn all_scope_rules(&self) -> &[usize] {
        &self.all_scope_rules
    }

    /// A copy of this policy with another nationality mode (policy tests).
    /// It is no longer the text its digest names, so the digest says so.
    pub fn with_nationality_mode(&self, mode: NationalityMode) -> CompiledPolicy {
        let mut p = self.clone();
        p.settings.nationality_mode = mode;
        if mode != self.settings.nationality_mode {
            p.digest = format!("{}+nationality_mode={}", self.digest, mode.as_str());
        }
        p
    }

    /// Warnings about a valid policy: rules that can never apply, rules
    /// that duplicate an earlier one, unused sets, controlled models no
    /// allow rule can ever allow.
    pub fn warnings(&self) -> Vec<String> {
        compile::warnings(self)
    }
}

/// The SHA-256 of a policy text, lower-case hex: the identity of the exact
/// text a decision was made with.
pub fn digest(text: &str) -> String {
    digest_bytes(text.as_bytes())
}

/// The SHA-256 of bytes, lower-case hex.
pub fn digest_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in d {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// Validate a policy text: `Ok(warnings)` when it compiles, or the error
/// listing every invalid entry.
pub fn validate(text: &str, source: &str) -> Result<Vec<String>, PolicyError> {
    CompiledPolicy::from_toml_str(text, source).map(|p| p.warnings())
}

/// One invalid entry of a policy or tests file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, as a path (`sets."D:5".countries[3]`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}: {}",
            self.line, self.column, self.field, self.message
        )
    }
}

/// A list of [`Issue`]s, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Issues(pub Vec<Issue>);

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.0 {
            write!(f, "\n  {i}")?;
        }
        Ok(())
    }
}

/// Why a policy (or policy tests) file could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{path}: cannot read: {message}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// Not TOML, or not the expected structure (unknown field, wrong type).
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// Well-formed, but some entries are invalid; all of them are listed.
    #[error("{file}: {count} invalid entr{plural}:{issues}", count = issues.0.len(), plural = if issues.0.len() == 1 { "y" } else { "ies" })]
    Invalid {
        /// The file.
        file: String,
        /// Every invalid entry.
        issues: Issues,
    },
}

/// 1-based line and column of a byte offset in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Turn a TOML error into a [`PolicyError::Parse`] with line and column.
pub(crate) fn parse_error(text: &str, file: &str, e: &toml::de::Error) -> PolicyError {
    let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
    PolicyError::Parse {
        file: file.to_string(),
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests;
